//! Reading zstd:chunked blobs: a well-formed blob built here, and every way
//! a blob can lie.

mod common;

use common::sha;

use std::collections::BTreeMap;
use std::io::Read;

use strata_toc::annotations::{self, Location};
use strata_toc::footer::{self, Dialect, Footer};
use strata_toc::{Entry, Error, Toc, read_zstd_chunked};

fn skippable(payload: &[u8]) -> Vec<u8> {
    let mut out = footer::SKIPPABLE_MAGIC.to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A small blob: a header frame, one payload frame per file, the trailer
/// frame, then the TOC, tar-split and footer frames.
struct Built {
    blob: Vec<u8>,
    tar: Vec<u8>,
    toc: Toc,
    annotations: BTreeMap<String, String>,
}

fn build(edit_toc: impl FnOnce(&mut Toc)) -> Built {
    let files: [(&str, Vec<u8>); 2] = [
        ("etc/hosts", b"127.0.0.1 localhost\n".to_vec()),
        ("usr/lib/big", vec![42u8; 5000]),
    ];
    let mut blob = Vec::new();
    let mut tar = Vec::new();
    let mut toc = Toc {
        version: 1,
        ..Toc::default()
    };
    for (name, content) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).expect("path");
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        blob.extend(zstd::bulk::compress(h.as_bytes(), 3).expect("compress"));
        let offset = blob.len();
        blob.extend(zstd::bulk::compress(content, 3).expect("compress"));
        toc.entries.push(Entry {
            kind: "reg".into(),
            name: name.to_string(),
            mode: 0o644,
            size: content.len() as i64,
            digest: sha(content),
            offset: offset as i64,
            end_offset: blob.len() as i64,
            ..Entry::default()
        });
        tar.extend_from_slice(content);
        let pad = vec![0u8; content.len().next_multiple_of(512) - content.len()];
        tar.extend_from_slice(&pad);
        if !pad.is_empty() {
            blob.extend(zstd::bulk::compress(&pad, 3).expect("compress"));
        }
    }
    tar.extend_from_slice(&[0; 1024]);
    blob.extend(zstd::bulk::compress(&[0; 1024], 3).expect("compress"));

    let mut metadata = strata_tarsplit::MetadataWriter::new(Vec::new());
    strata_tarsplit::disassemble(
        &tar[..],
        std::io::sink(),
        &mut metadata,
        &mut strata_tarsplit::DiscardPutter,
    )
    .expect("tar-split");
    let tar_split = metadata.finish().expect("tar-split");
    let tar_split_c = zstd::bulk::compress(&tar_split, 3).expect("compress");
    toc.tar_split_digest = sha(&tar_split_c);
    edit_toc(&mut toc);
    let json = serde_json::to_vec(&toc).expect("json");
    let toc_c = zstd::bulk::compress(&json, 3).expect("compress");
    let toc_offset = blob.len() as u64 + 8;
    blob.extend(skippable(&toc_c));
    let ts_offset = blob.len() as u64 + 8;
    blob.extend(skippable(&tar_split_c));
    let f = Footer {
        dialect: Dialect::Current,
        toc_offset,
        toc_compressed_len: toc_c.len() as u64,
        toc_len: json.len() as u64,
        tar_split: Some((ts_offset, tar_split_c.len() as u64, tar_split.len() as u64)),
    };
    blob.extend_from_slice(&footer::encode(&f));
    let loc = Location {
        toc_digest: sha(&toc_c),
        toc_offset,
        toc_compressed_len: toc_c.len() as u64,
        toc_len: json.len() as u64,
        tar_split: f.tar_split,
    };
    Built {
        blob,
        tar,
        toc,
        annotations: annotations::annotations(&loc, false),
    }
}

#[test]
fn reads_by_annotations_and_by_footer() {
    let b = build(|_| {});
    let read = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect("valid blob");
    assert!(read.verified);
    assert_eq!(read.toc, b.toc);
    assert!(
        read.tar_split
            .as_ref()
            .map(|t| t.to_vec().expect("tar-split decompresses"))
            .is_some_and(|t| t.starts_with(br#"{"type":2,"payload":""#))
    );
    let by_footer = read_zstd_chunked(&b.blob, None).expect("valid footer");
    assert!(!by_footer.verified);
    assert_eq!(by_footer.toc_digest, read.toc_digest);
    // Any zstd decoder skips the skippable frames and yields the tar.
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(&b.blob[..])
        .expect("decoder")
        .read_to_end(&mut plain)
        .expect("decompress");
    assert_eq!(plain, b.tar);
    // Each file's frames decompress to exactly its payload.
    for e in &read.toc.entries {
        let frame = &b.blob[e.offset as usize..e.end_offset as usize];
        let content = zstd::bulk::decompress(frame, e.size as usize).expect("frame");
        assert_eq!(sha(&content), e.digest);
    }
}

#[test]
fn truncated_blob() {
    let b = build(|_| {});
    for cut in [b.blob.len() - 1, b.blob.len() - 80, 10, 0] {
        let err = read_zstd_chunked(&b.blob[..cut], None).expect_err("truncated");
        assert!(
            matches!(err, Error::BadFooter(_) | Error::OutOfBounds { .. }),
            "{cut}: {err}"
        );
        // The annotations locate the TOC without the footer, as in
        // containers-storage: only a cut into the TOC or tar-split matters.
        let with_annotations = read_zstd_chunked(&b.blob[..cut], Some(&b.annotations));
        if cut < b.blob.len() - footer::FOOTER_READ {
            let err = with_annotations.expect_err("truncated");
            assert!(matches!(err, Error::OutOfBounds { .. }), "{cut}: {err}");
        } else {
            with_annotations.expect("the footer is not needed");
        }
    }
}

#[test]
fn footer_with_wrong_magic() {
    let mut b = build(|_| {});
    let n = b.blob.len();
    b.blob[n - 1] = b'X';
    let err = read_zstd_chunked(&b.blob, None).expect_err("bad magic");
    assert!(err.to_string().contains("no zstd:chunked footer"), "{err}");
}

#[test]
fn toc_digest_mismatch() {
    let mut b = build(|_| {});
    let key = format!("{}{}", annotations::PREFIX, annotations::MANIFEST_CHECKSUM);
    b.annotations
        .insert(key, format!("sha256:{}", "0".repeat(64)));
    let err = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect_err("digest");
    assert!(
        matches!(err, Error::DigestMismatch { what: "TOC", .. }),
        "{err}"
    );
}

#[test]
fn tar_split_digest_mismatch() {
    let b = build(|toc| toc.tar_split_digest = format!("sha256:{}", "1".repeat(64)));
    let err = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect_err("digest");
    assert!(
        matches!(
            err,
            Error::DigestMismatch {
                what: "tar-split",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn positions_past_the_end() {
    let mut b = build(|_| {});
    let key = format!("{}{}", annotations::PREFIX, annotations::MANIFEST_POSITION);
    b.annotations
        .insert(key, format!("{}:100:100:1", b.blob.len() - 50));
    let err = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect_err("out of bounds");
    assert!(matches!(err, Error::OutOfBounds { .. }), "{err}");
    let key = format!("{}{}", annotations::PREFIX, annotations::MANIFEST_POSITION);
    b.annotations
        .insert(key, format!("0:{}:{}:1", 200 << 20, 200 << 20));
    let err = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect_err("too large");
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[test]
fn toc_that_disagrees_with_the_tar_split() {
    let b = build(|toc| toc.entries[0].mode = 0o4777);
    let err = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect_err("lying mode");
    assert!(
        err.to_string().contains("does not match its tar header"),
        "{err}"
    );
    let b = build(|toc| toc.entries[1].name = "usr/lib/other".into());
    let err = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect_err("renamed entry");
    assert!(err.to_string().contains("where the tar-split has"), "{err}");
    let b = build(|toc| {
        let extra = toc.entries[0].clone();
        toc.entries.push(Entry {
            name: "extra".into(),
            ..extra
        });
    });
    assert!(
        read_zstd_chunked(&b.blob, Some(&b.annotations)).is_err(),
        "an entry the tar lacks"
    );
}

#[test]
fn lying_entries() {
    // A payload offset past the TOC.
    let b = build(|toc| toc.entries[1].offset = 1 << 40);
    assert!(matches!(
        read_zstd_chunked(&b.blob, Some(&b.annotations)),
        Err(Error::InvalidEntry { .. })
    ));
    // Overlapping chunks: the second chunk starts before the first.
    let b = build(|toc| {
        let first = toc.entries[1].clone();
        toc.entries[1].chunk_size = 2500;
        toc.entries[1].chunk_digest = first.digest.clone();
        toc.entries.insert(
            2,
            Entry {
                kind: "chunk".into(),
                name: first.name.clone(),
                offset: first.offset - 1,
                chunk_offset: 2500,
                chunk_size: 2500,
                chunk_digest: first.digest.clone(),
                ..Entry::default()
            },
        );
    });
    let err = read_zstd_chunked(&b.blob, Some(&b.annotations)).expect_err("overlap");
    assert!(
        err.to_string()
            .contains("does not follow the previous chunk"),
        "{err}"
    );
    // A declared uncompressed size that is wrong.
    let mut b = build(|_| {});
    let loc = annotations::location(&b.annotations)
        .expect("valid")
        .expect("chunked");
    let key = format!("{}{}", annotations::PREFIX, annotations::MANIFEST_POSITION);
    b.annotations.insert(
        key,
        format!(
            "{}:{}:{}:1",
            loc.toc_offset,
            loc.toc_compressed_len,
            loc.toc_len + 1
        ),
    );
    assert!(matches!(
        read_zstd_chunked(&b.blob, Some(&b.annotations)),
        Err(Error::Decompress { .. })
    ));
}
