//! A hand-built archive with every kind of entry real layers contain, and
//! the block-level writer that builds it. For demos and tests: the odd
//! headers here (sparse maps, GNU long names, PAX records, trailing record
//! padding) are ones the `tar` crate cannot write.

use std::fmt::Write as _;

const BLOCK: usize = 512;

/// Writes tar blocks one by one, with full control over every field.
#[derive(Debug, Default, Clone)]
pub struct RawTar {
    bytes: Vec<u8>,
    extensions: usize,
}

/// Header fields for [`RawTar::header`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    pub name: &'a [u8],
    pub typeflag: u8,
    pub size: u64,
    pub linkname: &'a [u8],
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub devmajor: u32,
    pub devminor: u32,
    /// GNU magic (`ustar  \0`) instead of POSIX (`ustar\000`).
    pub gnu: bool,
}

impl<'a> Fields<'a> {
    pub fn new(name: &'a [u8], typeflag: u8, size: u64) -> Self {
        Fields {
            name,
            typeflag,
            size,
            linkname: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            devmajor: 0,
            devminor: 0,
            gnu: false,
        }
    }
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn set_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

impl RawTar {
    pub fn new() -> Self {
        RawTar::default()
    }

    /// Appends one header block. Names and link names longer than their
    /// fields are cut; use [`RawTar::gnu_long_name`] or [`RawTar::pax`].
    pub fn header(&mut self, f: &Fields<'_>) -> &mut Self {
        let block = self.block_with(f, |_| {});
        self.bytes.extend_from_slice(&block);
        self
    }

    fn block_with(&self, f: &Fields<'_>, edit: impl FnOnce(&mut [u8])) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        let name = &f.name[..f.name.len().min(100)];
        b[..name.len()].copy_from_slice(name);
        octal(&mut b[100..108], u64::from(f.mode));
        octal(&mut b[108..116], u64::from(f.uid));
        octal(&mut b[116..124], u64::from(f.gid));
        octal(&mut b[124..136], f.size);
        octal(&mut b[136..148], f.mtime);
        b[156] = f.typeflag;
        let link = &f.linkname[..f.linkname.len().min(100)];
        b[157..157 + link.len()].copy_from_slice(link);
        if f.gnu {
            b[257..265].copy_from_slice(b"ustar  \0");
        } else {
            b[257..265].copy_from_slice(b"ustar\x0000");
        }
        b[265..269].copy_from_slice(b"root");
        b[297..301].copy_from_slice(b"root");
        octal(&mut b[329..337], u64::from(f.devmajor));
        octal(&mut b[337..345], u64::from(f.devminor));
        edit(&mut b);
        set_checksum(&mut b);
        b
    }

    /// Appends bytes as they are.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Appends data and pads it to a whole block.
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        self.bytes
            .resize(self.bytes.len().next_multiple_of(BLOCK), 0);
        self
    }

    /// A regular file with its content.
    pub fn file(&mut self, name: &[u8], content: &[u8]) -> &mut Self {
        self.header(&Fields::new(name, b'0', content.len() as u64))
            .data(content)
    }

    /// A GNU `L` (long name) or `K` (long link) extension.
    pub fn gnu_long(&mut self, typeflag: u8, value: &[u8]) -> &mut Self {
        let mut data = value.to_vec();
        data.push(0);
        let mut f = Fields::new(b"././@LongLink", typeflag, data.len() as u64);
        f.gnu = true;
        self.header(&f).data(&data)
    }

    /// A GNU long name extension.
    pub fn gnu_long_name(&mut self, name: &[u8]) -> &mut Self {
        self.gnu_long(b'L', name)
    }

    /// A PAX extended header (`x`, or `g` for global) with the given records.
    pub fn pax(&mut self, typeflag: u8, records: &[(&str, &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        // Global headers are entries of their own: their names must differ.
        self.extensions += 1;
        let name = format!("PaxHeaders.{}/x", self.extensions);
        self.header(&Fields::new(name.as_bytes(), typeflag, data.len() as u64))
            .data(&data)
    }

    /// An old-GNU sparse file (`S`) with its map in the header (and in
    /// extension blocks past four fragments).
    pub fn old_gnu_sparse(
        &mut self,
        name: &[u8],
        size: u64,
        fragments: &[(u64, &[u8])],
    ) -> &mut Self {
        let stored: u64 = fragments.iter().map(|(_, d)| d.len() as u64).sum();
        let mut f = Fields::new(name, b'S', stored);
        f.gnu = true;
        let (head, rest) = fragments.split_at(fragments.len().min(4));
        let extension_blocks: Vec<&[(u64, &[u8])]> = rest.chunks(21).collect();
        let block = self.block_with(&f, |b| {
            for (i, (offset, data)) in head.iter().enumerate() {
                let at = 386 + i * 24;
                octal(&mut b[at..at + 12], *offset);
                octal(&mut b[at + 12..at + 24], data.len() as u64);
            }
            b[482] = u8::from(!extension_blocks.is_empty());
            octal(&mut b[483..495], size);
        });
        self.bytes.extend_from_slice(&block);
        for (n, chunk) in extension_blocks.iter().enumerate() {
            let mut ext = [0u8; BLOCK];
            for (i, (offset, data)) in chunk.iter().enumerate() {
                octal(&mut ext[i * 24..i * 24 + 12], *offset);
                octal(&mut ext[i * 24 + 12..i * 24 + 24], data.len() as u64);
            }
            ext[504] = u8::from(n + 1 < extension_blocks.len());
            self.bytes.extend_from_slice(&ext);
        }
        for (_, data) in fragments {
            self.bytes.extend_from_slice(data);
        }
        self.data(&[])
    }

    /// A GNU sparse file in PAX 1.0 form: the map precedes the data.
    pub fn pax_sparse_1x0(
        &mut self,
        name: &[u8],
        size: u64,
        fragments: &[(u64, &[u8])],
    ) -> &mut Self {
        let mut map = format!("{}\n", fragments.len());
        for (offset, data) in fragments {
            let _ = write!(map, "{offset}\n{}\n", data.len());
        }
        let mut body = map.into_bytes();
        body.resize(body.len().next_multiple_of(BLOCK), 0);
        for (_, data) in fragments {
            body.extend_from_slice(data);
        }
        let size_text = size.to_string();
        self.pax(
            b'x',
            &[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", name),
                ("GNU.sparse.realsize", size_text.as_bytes()),
            ],
        );
        self.header(&Fields::new(b"GNUSparseFile.0/x", b'0', body.len() as u64))
            .data(&body)
    }

    /// The end-of-archive marker, then zeros up to a multiple of `record`
    /// bytes (GNU tar's default record is 10240).
    pub fn finish(&mut self, record: usize) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0; 2 * BLOCK]);
        if record > 0 {
            self.bytes
                .resize(self.bytes.len().next_multiple_of(record), 0);
        }
        std::mem::take(&mut self.bytes)
    }
}

/// A deterministic byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// An archive with one of everything: directories, empty and non-empty
/// files, a GNU long name and long link, PAX paths and xattrs, a PAX global
/// header, hard links, symlinks, character and block devices, a FIFO, a
/// non-UTF-8 name, old-GNU and PAX 1.0 sparse files, and record padding.
pub fn every_entry_kind() -> Vec<u8> {
    let long_dir = "very-long-directory-name-".repeat(5);
    let long_name = format!("usr/{long_dir}/file-with-a-long-name.txt");
    let mut t = RawTar::new();
    t.pax(b'g', &[("comment", b"made by strata sample")]);
    t.header(&Fields {
        mode: 0o755,
        ..Fields::new(b"usr/", b'5', 0)
    });
    t.file(b"usr/hello.txt", b"hello\n");
    t.header(&Fields::new(b"usr/empty", b'0', 0));
    t.file(b"usr/big.bin", &pattern(200_000, 7));
    t.gnu_long_name(long_name.as_bytes())
        .file(&long_name.as_bytes()[..100], &pattern(1000, 1));
    t.gnu_long(b'K', long_name.as_bytes()).header(&Fields {
        linkname: b"ignored",
        ..Fields::new(b"usr/link-to-long", b'2', 0)
    });
    t.pax(
        b'x',
        &[
            ("path", long_name.replace("file-", "pax-").as_bytes()),
            ("SCHILY.xattr.user.k", b"v\0bin"),
        ],
    );
    t.file(b"usr/pax-placeholder", b"pax content");
    t.pax(
        b'x',
        &[(
            "SCHILY.xattr.security.capability",
            &[1, 0, 0, 2, 0, 0x20, 0, 0],
        )],
    );
    t.file(b"usr/bin/ping", &pattern(3000, 3));
    t.header(&Fields {
        linkname: b"usr/hello.txt",
        ..Fields::new(b"usr/hardlink", b'1', 0)
    });
    t.header(&Fields {
        linkname: b"hello.txt",
        ..Fields::new(b"usr/symlink", b'2', 0)
    });
    t.header(&Fields {
        devmajor: 1,
        devminor: 3,
        ..Fields::new(b"dev/null", b'3', 0)
    });
    t.header(&Fields {
        devmajor: 7,
        devminor: 0,
        ..Fields::new(b"dev/loop0", b'4', 0)
    });
    t.header(&Fields::new(b"run/fifo", b'6', 0));
    t.file(b"usr/latin1-\xe9t\xe9", b"non-UTF-8 name\n");
    t.file(b"usr/a&b<c>\"quoted\"", b"json escapes\n");
    t.old_gnu_sparse(
        b"var/sparse-old",
        1 << 20,
        &[
            (0, b"head"),
            (65536, &pattern(700, 9)),
            ((1 << 20) - 3, b"end"),
        ],
    );
    t.pax_sparse_1x0(
        b"var/sparse-pax",
        300_000,
        &[(4096, &pattern(5000, 11)), (200_000, b"tail")],
    );
    t.finish(10240)
}
