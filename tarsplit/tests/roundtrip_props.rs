//! Property tests: any archive strata accepts comes back bit for bit.

use std::io;

use proptest::prelude::*;
use strata_tarsplit::sample::{Fields, RawTar, pattern};
use strata_tarsplit::{
    Entry, FileEntry, HeaderInfo, MemoryFiles, MetadataReader, MetadataWriter, Payload, SplitSink, assemble,
    disassemble, split_buffered,
};

/// Takes the entries and leaves the payloads unread (the split reads past).
struct Ignore;

impl SplitSink for Ignore {
    fn raw(&mut self, _: &[u8]) -> strata_tarsplit::Result<()> {
        Ok(())
    }
    fn entry(&mut self, _: &HeaderInfo, _: Option<&mut Payload<'_>>) -> io::Result<()> {
        Ok(())
    }
}

/// Disassembles, checks the pass-through, re-reads the metadata, checks its
/// encoding is stable, reassembles and returns the result.
fn round_trip(tar: &[u8]) -> Result<Vec<u8>, strata_tarsplit::Error> {
    let mut metadata = MetadataWriter::new(Vec::new());
    let mut files = MemoryFiles::default();
    let mut passthrough = Vec::new();
    // The same split, its input's buffer parsed in place (odd-sized, so
    // headers straddle refills).
    let mut in_place = MetadataWriter::new(Vec::new());
    let buffered = split_buffered(io::BufReader::with_capacity(777, tar), &mut in_place, &mut Ignore);
    let plain = disassemble(tar, &mut passthrough, &mut metadata, &mut files);
    assert_eq!(buffered.is_ok(), plain.is_ok(), "split_buffered: {buffered:?}, disassemble: {plain:?}");
    plain?;
    assert_eq!(passthrough, tar, "pass-through differs");
    let metadata = metadata.finish()?;
    assert_eq!(in_place.finish()?, metadata, "split_buffered writes the same metadata");
    let entries: Vec<Entry> = MetadataReader::new(&metadata[..])
        .collect::<Result<_, _>>()
        .expect("own metadata parses");
    let mut again = MetadataWriter::new(Vec::new());
    for e in &entries {
        again.entry(e).expect("re-encode");
    }
    assert_eq!(
        again.finish().expect("flush"),
        metadata,
        "metadata encoding is not stable"
    );
    let mut out = Vec::new();
    assemble(entries.into_iter().map(Ok), &mut files, &mut out)?;
    Ok(out)
}

#[derive(Debug, Clone)]
enum Kind {
    File(usize, u8),
    Dir,
    Symlink(String),
    HardLink,
    Char(u32, u32),
    Fifo,
    Xattr(usize, u8),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (0usize..5000, any::<u8>()).prop_map(|(n, s)| Kind::File(n, s)),
        1 => (0usize..200_000, any::<u8>()).prop_map(|(n, s)| Kind::File(n, s)),
        1 => Just(Kind::Dir),
        1 => "[a-z/._-]{1,150}".prop_map(Kind::Symlink),
        1 => Just(Kind::HardLink),
        1 => (0u32..300, 0u32..300).prop_map(|(a, b)| Kind::Char(a, b)),
        1 => Just(Kind::Fifo),
        1 => (0usize..3000, any::<u8>()).prop_map(|(n, s)| Kind::Xattr(n, s)),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Style {
    Gnu,
    Ustar,
    Old,
}

fn header(style: Style) -> tar::Header {
    match style {
        Style::Gnu => tar::Header::new_gnu(),
        Style::Ustar => tar::Header::new_ustar(),
        Style::Old => tar::Header::new_old(),
    }
}

/// An archive written by the `tar` crate.
fn tar_crate_archive(entries: &[(String, Kind)], style: Style, trailing: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut first_file: Option<String> = None;
    for (i, (base, kind)) in entries.iter().enumerate() {
        let name = format!("d{}/{base}-{i}", i % 3);
        let mut h = header(style);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000 + i as u64);
        let result = match kind {
            Kind::File(n, s) | Kind::Xattr(n, s) => {
                if let Kind::Xattr(..) = kind {
                    let value = pattern(*s as usize % 40, *s);
                    b.append_pax_extensions([("SCHILY.xattr.user.test", &value[..])])
                        .expect("pax");
                }
                h.set_size(*n as u64);
                h.set_entry_type(tar::EntryType::Regular);
                first_file.get_or_insert(name.clone());
                b.append_data(&mut h, &name, &pattern(*n, *s)[..])
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &name, io::empty())
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &name, target)
            }
            Kind::HardLink => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                let target = first_file.clone().unwrap_or_else(|| "missing".into());
                b.append_link(&mut h, &name, target)
            }
            Kind::Char(major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_size(0);
                // Old (V7) headers have no device fields.
                let _ = h.set_device_major(*major);
                let _ = h.set_device_minor(*minor);
                b.append_data(&mut h, &name, io::empty())
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                b.append_data(&mut h, &name, io::empty())
            }
        };
        if result.is_err() {
            // Old-style headers cannot hold every name; such entries are skipped.
            continue;
        }
    }
    let mut tar = b.into_inner().expect("finish");
    tar.extend(std::iter::repeat_n(0u8, trailing));
    tar
}

#[derive(Debug, Clone)]
enum Odd {
    OldSparse(u64, Vec<(u64, usize)>),
    PaxSparse1x0(u64, Vec<(u64, usize)>),
    PaxSparse0x1(u64, Vec<(u64, usize)>),
    LongName(Vec<u8>, usize),
    PaxPath(Vec<u8>, usize),
    Global(String),
    V7(usize),
    LongLink(Vec<u8>),
}

/// Fragments in order, not overlapping, inside `size`.
fn fragments(size: u64, raw: Vec<(u64, usize)>) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for (gap, len) in raw {
        let offset = at + gap;
        let len = len as u64;
        if offset + len > size {
            break;
        }
        out.push((offset, len as usize));
        at = offset + len;
    }
    out
}

fn odd() -> impl Strategy<Value = Odd> {
    let sparse = (
        1u64..400_000,
        prop::collection::vec((0u64..70_000, 0usize..3000), 0..30),
    );
    prop_oneof![
        sparse
            .clone()
            .prop_map(|(s, f)| Odd::OldSparse(s, fragments(s, f))),
        sparse
            .clone()
            .prop_map(|(s, f)| Odd::PaxSparse1x0(s, fragments(s, f))),
        sparse.prop_map(|(s, f)| Odd::PaxSparse0x1(s, fragments(s, f))),
        (prop::collection::vec(1u8..=255, 1..400), 0usize..2000)
            .prop_map(|(n, l)| Odd::LongName(n, l)),
        (prop::collection::vec(1u8..=255, 1..400), 0usize..2000)
            .prop_map(|(n, l)| Odd::PaxPath(n, l)),
        "[a-z ]{0,50}".prop_map(Odd::Global),
        (0usize..2000).prop_map(Odd::V7),
        prop::collection::vec(1u8..=255, 1..300).prop_map(Odd::LongLink),
    ]
}

/// Names that stay unique under Go's path cleaning.
fn unique(i: usize, name: &[u8]) -> Vec<u8> {
    let mut n: Vec<u8> = name
        .iter()
        .map(|&b| if b == b'/' { b'_' } else { b })
        .collect();
    n.extend_from_slice(format!("-{i}").as_bytes());
    n
}

fn odd_archive(entries: &[Odd], record: usize) -> Vec<u8> {
    let mut t = RawTar::new();
    for (i, e) in entries.iter().enumerate() {
        match e {
            Odd::OldSparse(size, frags)
            | Odd::PaxSparse1x0(size, frags)
            | Odd::PaxSparse0x1(size, frags) => {
                let data: Vec<(u64, Vec<u8>)> = frags
                    .iter()
                    .map(|&(o, l)| (o, pattern(l, i as u8)))
                    .collect();
                let refs: Vec<(u64, &[u8])> =
                    data.iter().map(|(o, d)| (*o, d.as_slice())).collect();
                let name = format!("sparse-{i}");
                match e {
                    Odd::OldSparse(..) => t.old_gnu_sparse(name.as_bytes(), *size, &refs),
                    Odd::PaxSparse1x0(..) => t.pax_sparse_1x0(name.as_bytes(), *size, &refs),
                    _ => {
                        let map: Vec<String> = refs
                            .iter()
                            .flat_map(|(o, d)| [o.to_string(), d.len().to_string()])
                            .collect();
                        let (count, map, real) =
                            (refs.len().to_string(), map.join(","), size.to_string());
                        t.pax(
                            b'x',
                            &[
                                ("GNU.sparse.numblocks", count.as_bytes()),
                                ("GNU.sparse.map", map.as_bytes()),
                                ("GNU.sparse.name", name.as_bytes()),
                                ("GNU.sparse.realsize", real.as_bytes()),
                            ],
                        );
                        let stored: Vec<u8> =
                            refs.iter().flat_map(|(_, d)| d.iter().copied()).collect();
                        t.file(format!("GNUSparseFile/{i}").as_bytes(), &stored)
                    }
                };
            }
            Odd::LongName(name, len) => {
                let name = unique(i, name);
                t.gnu_long_name(&name)
                    .file(&name[..name.len().min(100)], &pattern(*len, 3));
            }
            Odd::PaxPath(name, len) => {
                let name = unique(i, name);
                t.pax(b'x', &[("path", &name)])
                    .file(format!("placeholder-{i}").as_bytes(), &pattern(*len, 5));
            }
            Odd::Global(comment) => {
                t.pax(b'g', &[("comment", comment.as_bytes())]);
            }
            Odd::V7(len) => {
                let content = pattern(*len, 9);
                let name = format!("v7-{i}");
                let f = Fields::new(name.as_bytes(), b'0', *len as u64);
                let mut block_tar = RawTar::new();
                block_tar.header(&f);
                let mut block = block_tar.finish(0);
                block.truncate(512);
                block[257..265].fill(0);
                block[265..345].fill(0);
                // Recompute the checksum over the V7 block.
                block[148..156].fill(b' ');
                let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
                block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
                t.raw(&block).data(&content);
            }
            Odd::LongLink(target) => {
                t.gnu_long(b'K', target).header(&Fields {
                    linkname: b"short",
                    ..Fields::new(format!("link-{i}").as_bytes(), b'2', 0)
                });
            }
        }
    }
    t.finish(record)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn tar_crate_archives_round_trip(
        entries in prop::collection::vec(("[a-zA-Z0-9 ._é-]{1,120}", kind()), 0..40),
        style in prop_oneof![Just(Style::Gnu), Just(Style::Ustar), Just(Style::Old)],
        trailing in prop_oneof![Just(0usize), 0usize..20_000],
    ) {
        let tar = tar_crate_archive(&entries, style, trailing);
        prop_assert_eq!(round_trip(&tar).expect("valid archive"), tar);
    }

    #[test]
    fn odd_archives_round_trip(
        entries in prop::collection::vec(odd(), 0..12),
        record in prop_oneof![Just(0usize), Just(10240usize), Just(512usize)],
    ) {
        let tar = odd_archive(&entries, record);
        prop_assert_eq!(round_trip(&tar).expect("valid archive"), tar);
    }

    /// Damage anywhere: strata either refuses the archive with an error or
    /// reproduces exactly the bytes it was given. It never panics and never
    /// returns something else.
    #[test]
    fn damaged_archives_fail_cleanly_or_round_trip(
        entries in prop::collection::vec(odd(), 1..6),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut tar = odd_archive(&entries, 0);
        for (at, byte) in edits {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        if truncate {
            tar.truncate(cut.index(tar.len() + 1));
        }
        if let Ok(out) = round_trip(&tar) {
            prop_assert_eq!(out, tar);
        }
    }

    #[test]
    fn metadata_records_survive_encoding(
        records in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..600).prop_map(Entry::Segment),
                (prop::collection::vec(any::<u8>(), 0..80), -3i64..100_000, any::<[u8; 8]>()).prop_map(|(name, size, crc)| {
                    Entry::File(FileEntry { name, size, crc: (size > 0).then_some(crc) })
                }),
            ],
            0..30,
        )
    ) {
        // Names must be unique after cleaning; make them so.
        let records: Vec<Entry> = records.into_iter().enumerate().map(|(i, e)| match e {
            Entry::File(mut f) => {
                f.name.extend_from_slice(format!("/unique-{i}").as_bytes());
                Entry::File(f)
            }
            s => s,
        }).collect();
        let mut w = MetadataWriter::new(Vec::new());
        for r in &records {
            w.entry(r).expect("encode");
        }
        let bytes = w.finish().expect("flush");
        let back: Vec<Entry> = MetadataReader::new(&bytes[..]).collect::<Result<_, _>>().expect("decode");
        prop_assert_eq!(back, records);
    }

    #[test]
    fn metadata_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        for entry in MetadataReader::new(&bytes[..]) {
            if entry.is_err() {
                break;
            }
        }
    }
}
