//! The zstd:chunked writer: what it writes decompresses to the original tar,
//! its TOC reads back and matches the tar's headers, every piece holds what
//! the TOC says, and the embedded tar-split rebuilds the tar from the pieces
//! (the partial-pull path, offline).

mod common;

use common::sha;

use std::collections::HashMap;
use std::io::{self, Read};

use proptest::prelude::*;
use strata_tarsplit::{FileGetter, MetadataReader, assemble};
use strata_toc::chunker::chunks;
use strata_toc::{ChunkedToc, WriteOptions, read_zstd_chunked, write_zstd_chunked};

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sample_tar() -> (Vec<u8>, Vec<u8>) {
    let mut big = noise(300_000, 1);
    big.extend(vec![0u8; 50_000]);
    big.extend(noise(100_000, 2));
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(1_700_000_000);
    dir.set_size(0);
    b.append_data(&mut dir, "usr/", io::empty()).expect("dir");
    for (name, content) in [
        ("usr/small", b"hello\n".to_vec()),
        ("usr/big", big.clone()),
        ("usr/empty", Vec::new()),
        ("usr/zeros", vec![0u8; 5000]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_uid(1000);
        h.set_mtime(1_700_000_001);
        b.append_data(&mut h, name, &content[..]).expect("file");
    }
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v\nbinary\x00"[..])])
        .expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o4755);
    b.append_data(&mut h, "usr/with-xattr", &b"abc"[..])
        .expect("file");
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    b.append_link(&mut l, "usr/link", "small").expect("symlink");
    let mut hl = tar::Header::new_gnu();
    hl.set_entry_type(tar::EntryType::Link);
    hl.set_size(0);
    b.append_link(&mut hl, "usr/hard", "usr/small")
        .expect("hardlink");
    (b.into_inner().expect("tar"), big)
}

fn write(tar: &[u8]) -> (Vec<u8>, strata_toc::Written) {
    let mut blob = Vec::new();
    let written = write_zstd_chunked(tar, &mut blob, &WriteOptions::default()).expect("write");
    (blob, written)
}

/// Serves payloads the way a partial pull gets them: by decompressing the
/// blob's frames for each piece the TOC lists.
struct FromBlob<'a> {
    blob: &'a [u8],
    files: HashMap<Vec<u8>, usize>,
    toc: &'a ChunkedToc,
}

impl FileGetter for FromBlob<'_> {
    fn get(&mut self, name: &[u8]) -> io::Result<Box<dyn Read + '_>> {
        let index = *self.files.get(name).ok_or(io::ErrorKind::NotFound)?;
        let mut content = Vec::new();
        for piece in self.toc.toc.pieces(index).map_err(io::Error::other)? {
            let mut part = vec![0u8; piece.len as usize];
            zstd::stream::read::Decoder::new(&self.blob[piece.offset as usize..])?
                .read_exact(&mut part)?;
            if let Some(d) = &piece.digest {
                assert_eq!(&sha(&part), d, "chunk digest");
            }
            content.extend(part);
        }
        Ok(Box::new(io::Cursor::new(content)))
    }
}

fn check(tar: &[u8]) -> ChunkedToc {
    let (blob, written) = write(tar);
    assert_eq!(written.diff_id, sha(tar));
    assert_eq!(written.blob_digest, sha(&blob));
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(&blob[..])
        .expect("decoder")
        .read_to_end(&mut plain)
        .expect("decompress");
    assert!(plain == tar, "the blob decompresses to the original tar");

    let read = read_zstd_chunked(&blob, Some(&written.annotations)).expect("reads back");
    assert!(read.verified);
    let files: HashMap<Vec<u8>, usize> = read
        .toc
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == "reg" && e.size > 0)
        .map(|(i, e)| (e.name.clone().into_bytes(), i))
        .collect();
    let tar_split = read.tar_split.as_ref().expect("tar-split").to_vec().expect("tar-split decompresses");
    let mut getter = FromBlob {
        blob: &blob,
        files,
        toc: &read,
    };
    let mut rebuilt = Vec::new();
    assemble(
        MetadataReader::new(&tar_split[..]),
        &mut getter,
        &mut rebuilt,
    )
    .expect("assemble");
    assert!(rebuilt == tar, "tar-split + pieces rebuild the tar");
    read
}

#[test]
fn sample_round_trips() {
    let (tar, big) = sample_tar();
    let read = check(&tar);
    let names: Vec<(&str, &str)> = read
        .toc
        .entries
        .iter()
        .filter(|e| e.kind != "chunk")
        .map(|e| (e.kind.as_str(), e.name.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("dir", "usr/"),
            ("reg", "usr/small"),
            ("reg", "usr/big"),
            ("reg", "usr/empty"),
            ("reg", "usr/zeros"),
            ("reg", "usr/with-xattr"),
            ("symlink", "usr/link"),
            ("hardlink", "usr/hard"),
        ]
    );
    let e = |name: &str| {
        read.toc
            .entries
            .iter()
            .find(|e| e.name == name && e.kind != "chunk")
            .expect("entry")
    };
    assert_eq!(e("usr/small").mod_time, "2023-11-14T22:13:21Z");
    assert_eq!((e("usr/small").uid, e("usr/small").mode), (1000, 0o644));
    assert_eq!(
        e("usr/with-xattr").xattrs.get("user.k").map(String::as_str),
        Some("dgpiaW5hcnkA")
    );
    assert_eq!(e("usr/link").link_name, "small");
    assert_eq!(
        e("usr/zeros").chunk_size,
        0,
        "a single chunk has no chunk fields"
    );
    // The big file's chunks are the reference chunker's.
    let index = read
        .toc
        .entries
        .iter()
        .position(|e| e.name == "usr/big")
        .expect("big");
    let pieces = read.toc.pieces(index).expect("pieces");
    let want = chunks(&big);
    assert_eq!(pieces.len(), want.len());
    for (p, c) in pieces.iter().zip(&want) {
        assert_eq!((p.file_offset, p.len), (c.offset, c.len));
        assert_eq!(p.zeros, c.kind == strata_toc::chunker::ChunkKind::Zeros);
    }
    assert!(
        pieces.iter().any(|p| p.zeros),
        "the zero run is a chunk of its own"
    );
}

#[test]
fn global_headers_are_refused_like_the_reference() {
    let tar = strata_tarsplit::sample::every_entry_kind();
    let err =
        write_zstd_chunked(&tar[..], io::sink(), &WriteOptions::default()).expect_err("g header");
    assert!(
        err.to_string()
            .contains("cannot be represented in zstd:chunked"),
        "{err}"
    );
}

#[test]
fn legacy_annotations_on_request() {
    let (tar, _) = sample_tar();
    let w = write_zstd_chunked(
        &tar[..],
        io::sink(),
        &WriteOptions {
            legacy_annotations: true,
            ..WriteOptions::default()
        },
    )
    .expect("write");
    assert!(
        w.annotations
            .contains_key("io.containers.zstd-chunked.manifest-checksum")
    );
    assert!(
        w.annotations
            .contains_key("io.github.containers.zstd-chunked.manifest-checksum")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_tars_round_trip(files in prop::collection::vec((0usize..150_000, any::<u64>(), 0usize..3000), 0..12)) {
        let mut b = tar::Builder::new(Vec::new());
        for (i, (len, seed, zeros)) in files.iter().enumerate() {
            let mut content = noise(*len, *seed);
            content.extend(vec![0u8; *zeros]);
            content.extend(noise(len / 3, seed.wrapping_add(1)));
            let mut h = tar::Header::new_ustar();
            h.set_size(content.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, format!("d/f{i}"), &content[..]).expect("append");
        }
        let tar = b.into_inner().expect("tar");
        let read = check(&tar);
        prop_assert_eq!(read.toc.entries.iter().filter(|e| e.kind == "reg").count(), files.len());
    }
}

/// Counts the reads a TOC read makes: each is a request to a registry.
struct CountingReads<'a> {
    blob: &'a [u8],
    reads: std::cell::Cell<usize>,
}

impl strata_toc::ReadAt for CountingReads<'_> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.blob.len() as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads.set(self.reads.get() + 1);
        self.blob.read_exact_at(buf, offset)
    }
}

#[test]
fn the_toc_and_the_tar_split_come_in_one_read() {
    let (tar, _) = sample_tar();
    let (blob, written) = write(&tar);
    let counting = CountingReads { blob: &blob, reads: std::cell::Cell::new(0) };
    let read = strata_toc::read_zstd_chunked_with(&counting, Some(&written.annotations), |_| Ok(())).expect("reads");
    assert!(read.tar_split.is_some());
    assert_eq!(counting.reads.get(), 1, "TOC and tar-split in one read");
    let counting = CountingReads { blob: &blob, reads: std::cell::Cell::new(0) };
    strata_toc::read_zstd_chunked_with(&counting, None, |_| Ok(())).expect("reads from the footer");
    assert_eq!(counting.reads.get(), 2, "the footer, then TOC and tar-split");
}
