//! The hand-built sample archive round-trips, and each odd entry kind is
//! recorded the way tar-split records it.

use std::io;

use strata_tarsplit::sample::{self, RawTar};
use strata_tarsplit::{Entry, MemoryFiles, MetadataReader, MetadataWriter, assemble, disassemble};

fn split(tar: &[u8]) -> (Vec<Entry>, MemoryFiles) {
    let mut metadata = MetadataWriter::new(Vec::new());
    let mut files = MemoryFiles::default();
    let mut passthrough = Vec::new();
    disassemble(tar, &mut passthrough, &mut metadata, &mut files).expect("disassemble");
    assert_eq!(
        passthrough, tar,
        "pass-through must copy the input unchanged"
    );
    let metadata = metadata.finish().expect("finish");
    let entries = MetadataReader::new(&metadata[..])
        .collect::<Result<Vec<_>, _>>()
        .expect("reparse");
    (entries, files)
}

fn rebuild(entries: &[Entry], files: &mut MemoryFiles) -> Vec<u8> {
    let mut out = Vec::new();
    assemble(entries.iter().cloned().map(Ok), files, &mut out).expect("assemble");
    out
}

fn file_names(entries: &[Entry]) -> Vec<(String, i64)> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::File(f) => Some((String::from_utf8_lossy(&f.name).into_owned(), f.size)),
            Entry::Segment(_) => None,
        })
        .collect()
}

#[test]
fn every_entry_kind_round_trips() {
    let tar = sample::every_entry_kind();
    let (entries, mut files) = split(&tar);
    assert_eq!(rebuild(&entries, &mut files), tar);
}

#[test]
fn sparse_files_expand_for_the_putter_and_shrink_back() {
    let tar = sample::every_entry_kind();
    let (entries, files) = split(&tar);
    let old = &files.files[&b"var/sparse-old"[..]];
    assert_eq!(old.len(), 1 << 20);
    assert_eq!(&old[..4], b"head");
    assert!(old[4..65536].iter().all(|&b| b == 0));
    assert_eq!(&old[(1 << 20) - 3..], b"end");
    let pax = &files.files[&b"var/sparse-pax"[..]];
    assert_eq!(pax.len(), 300_000);
    assert_eq!(&pax[200_000..200_004], b"tail");
    let names = file_names(&entries);
    assert!(names.contains(&("var/sparse-old".into(), 1 << 20)));
    assert!(names.contains(&("var/sparse-pax".into(), 300_000)));
}

#[test]
fn names_resolve_like_go() {
    let (entries, _) = split(&sample::every_entry_kind());
    let names: Vec<String> = file_names(&entries).into_iter().map(|(n, _)| n).collect();
    let long_name = format!(
        "usr/{}/file-with-a-long-name.txt",
        "very-long-directory-name-".repeat(5)
    );
    assert!(names.contains(&long_name));
    assert!(names.contains(&long_name.replace("file-", "pax-")));
    assert!(names.contains(&"usr/latin1-\u{fffd}t\u{fffd}".to_string()));
    // The PAX global header is an entry of its own with size 0.
    assert_eq!(names[0], "PaxHeaders.1/x");
}

#[test]
fn header_only_types_keep_their_size_field() {
    // A hard link whose size field says 5 but which stores no data: Go reads
    // no payload and records the size; the next header follows at once.
    let mut t = RawTar::new();
    t.file(b"a", b"hello");
    t.header(&sample::Fields {
        linkname: b"a",
        ..sample::Fields::new(b"b", b'1', 5)
    });
    t.file(b"c", b"after");
    let tar = t.finish(0);
    let (entries, mut files) = split(&tar);
    assert!(file_names(&entries).contains(&("b".into(), 5)));
    // As in Go, the putter is handed the (empty) data area.
    assert_eq!(files.files[&b"b"[..]], b"");
    // Assembly stores nothing for it either, without asking the getter.
    files.files.remove(&b"b"[..]);
    assert_eq!(rebuild(&entries, &mut files), tar);
}

#[test]
fn legacy_directory_with_trailing_slash() {
    // Typeflag NUL with a trailing slash is a directory: no data area.
    let mut t = RawTar::new();
    t.header(&sample::Fields::new(b"dir/", 0, 3));
    t.file(b"dir/x", b"x");
    let tar = t.finish(0);
    let (entries, mut files) = split(&tar);
    assert_eq!(rebuild(&entries, &mut files), tar);
}

#[test]
fn archive_ends_without_marker_or_in_padding() {
    let mut t = RawTar::new();
    t.file(b"a", b"abc");
    let full = t.finish(0);
    for cut in [512 + 512, 512 + 3, 512 + 100, 512 + 512 + 512] {
        let tar = &full[..cut];
        let (entries, mut files) = split(tar);
        assert_eq!(rebuild(&entries, &mut files), tar, "cut at {cut}");
    }
}

#[test]
fn trailing_data_is_kept_in_megabyte_segments() {
    let mut t = RawTar::new();
    t.file(b"a", b"abc");
    let mut tar = t.finish(0);
    tar.extend(std::iter::repeat_n(0u8, (2 << 20) + 5));
    let (entries, mut files) = split(&tar);
    let tail: Vec<usize> = entries
        .iter()
        .rev()
        .take(4)
        .map(|e| match e {
            Entry::Segment(b) => b.len(),
            Entry::File(_) => usize::MAX,
        })
        .collect();
    assert_eq!(tail, vec![0, 5, 1 << 20, 1 << 20]);
    assert_eq!(rebuild(&entries, &mut files), tar);
}

#[test]
fn stdout_style_writer_sees_everything() {
    let tar = sample::every_entry_kind();
    let mut metadata = MetadataWriter::new(io::sink());
    let mut passthrough = Vec::new();
    let summary = disassemble(
        &tar[..],
        &mut passthrough,
        &mut metadata,
        &mut strata_tarsplit::DiscardPutter,
    )
    .expect("disassemble");
    assert_eq!(summary.tar_size, tar.len() as u64);
    assert_eq!(passthrough, tar);
}
