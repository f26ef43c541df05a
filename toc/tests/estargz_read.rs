//! Reading eStargz blobs built here by the layout of the spec (no eStargz
//! writer is packaged in Debian to test against).

mod common;

use common::sha;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use strata_toc::estargz::{TOC_DIGEST_ANNOTATION, footer, read_estargz, read_estargz_with};
use strata_toc::{Entry, Error, Toc};

fn member(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

fn tar_header(name: &str, size: usize, kind: tar::EntryType) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("path");
    h.set_size(size as u64);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn pad(n: usize) -> Vec<u8> {
    vec![0; n.next_multiple_of(512) - n]
}

/// A blob with a directory and a file in two chunks, then the TOC and the
/// footer. `edit` changes the JSON before it is written.
fn build(edit: impl FnOnce(&mut String)) -> (Vec<u8>, Vec<u8>, BTreeMap<String, String>) {
    let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let (first, second) = content.split_at(4096);
    let mut blob = member(&tar_header("dir/", 0, tar::EntryType::Directory));
    let mut plain = tar_header("dir/", 0, tar::EntryType::Directory);
    blob.extend(member(&tar_header(
        "dir/file",
        content.len(),
        tar::EntryType::Regular,
    )));
    plain.extend(tar_header(
        "dir/file",
        content.len(),
        tar::EntryType::Regular,
    ));
    let first_offset = blob.len();
    blob.extend(member(first));
    let second_offset = blob.len();
    let mut tail = second.to_vec();
    tail.extend(pad(content.len()));
    blob.extend(member(&tail));
    plain.extend_from_slice(&content);
    plain.extend(pad(content.len()));

    let toc = Toc {
        version: 1,
        entries: vec![
            Entry {
                kind: "dir".into(),
                name: "dir/".into(),
                mode: 0o40755,
                ..Entry::default()
            },
            Entry {
                kind: "reg".into(),
                name: "dir/file".into(),
                size: content.len() as i64,
                offset: first_offset as i64,
                digest: sha(&content),
                chunk_size: 4096,
                chunk_digest: sha(first),
                ..Entry::default()
            },
            Entry {
                kind: "chunk".into(),
                name: "dir/file".into(),
                offset: second_offset as i64,
                chunk_offset: 4096,
                chunk_digest: sha(second),
                ..Entry::default()
            },
        ],
        ..Toc::default()
    };
    let mut json = serde_json::to_string_pretty(&toc).expect("json");
    edit(&mut json);
    let toc_offset = blob.len() as u64;
    let mut toc_member = tar_header("stargz.index.json", json.len(), tar::EntryType::Regular);
    toc_member.extend_from_slice(json.as_bytes());
    toc_member.extend(pad(json.len()));
    toc_member.extend_from_slice(&[0; 1024]);
    plain.extend_from_slice(&toc_member);
    blob.extend(member(&toc_member));
    blob.extend_from_slice(&footer(toc_offset));
    let annotations = BTreeMap::from([(TOC_DIGEST_ANNOTATION.to_string(), sha(json.as_bytes()))]);
    (blob, plain, annotations)
}

#[test]
fn reads_the_toc_and_the_chunks() {
    let (blob, plain, annotations) = build(|_| {});
    let read = read_estargz(&blob, Some(&annotations)).expect("valid eStargz");
    assert!(read.verified);
    assert_eq!(read.toc.entries.len(), 3);
    let pieces = read.toc.pieces(1).expect("pieces");
    assert_eq!(
        pieces.iter().map(|p| p.len).collect::<Vec<_>>(),
        vec![4096, 10_000 - 4096]
    );
    for p in &pieces {
        let mut data = vec![0u8; p.len as usize];
        flate2::read::GzDecoder::new(&blob[p.offset as usize..])
            .read_exact(&mut data)
            .expect("chunk");
        assert_eq!(Some(sha(&data)), p.digest);
    }
    // The whole blob gunzips to the tar, TOC entry included.
    let mut all = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut all)
        .expect("gunzip");
    assert_eq!(all, plain);
}

#[test]
fn digest_mismatch() {
    let (blob, _, mut annotations) = build(|_| {});
    annotations.insert(
        TOC_DIGEST_ANNOTATION.into(),
        format!("sha256:{}", "0".repeat(64)),
    );
    assert!(matches!(
        read_estargz(&blob, Some(&annotations)),
        Err(Error::DigestMismatch { .. })
    ));
}

#[test]
fn lies_and_truncation() {
    let (blob, _, annotations) = build(|_| {});
    assert!(matches!(
        read_estargz(&blob[..blob.len() - 1], Some(&annotations)),
        Err(Error::BadFooter(_))
    ));
    let mut bad_offset = blob.clone();
    let n = bad_offset.len();
    bad_offset[n - 51..].copy_from_slice(&footer(n as u64 * 2));
    assert!(matches!(
        read_estargz(&bad_offset, None),
        Err(Error::OutOfBounds { .. })
    ));
    let (blob, _, annotations) =
        build(|json| *json = json.replace("\"offset\": 1", "\"offset\": 999999"));
    assert!(
        read_estargz(&blob, Some(&annotations)).is_err(),
        "chunk offset past the TOC"
    );
    let (blob, _, annotations) =
        build(|json| *json = json.replace("\"chunkOffset\": 4096", "\"chunkOffset\": 4000"));
    assert!(
        matches!(
            read_estargz(&blob, Some(&annotations)),
            Err(Error::InvalidEntry { .. })
        ),
        "overlapping chunks"
    );
}

/// Streamed, the TOC gives the same entries, item by item, and the same
/// tar end, decompressed as it is read.
#[test]
fn the_streamed_toc_is_the_whole_one() {
    let (blob, plain, annotations) = build(|_| {});
    let whole = read_estargz(&blob, Some(&annotations)).expect("whole");
    let mut entries = Vec::new();
    let info = read_estargz_with(&blob, Some(&annotations), |item| {
        entries.push(item.entry);
        entries.extend(item.chunks);
        Ok(())
    })
    .expect("streamed");
    assert_eq!(entries, whole.toc.entries);
    assert_eq!((info.toc_digest.as_str(), info.verified, info.toc_offset), (whole.toc_digest.as_str(), true, whole.toc_offset));
    let mut tar_end = Vec::new();
    info.into_tar_end().read_to_end(&mut tar_end).expect("tar end");
    assert_eq!(tar_end, whole.tar_end);
    assert!(plain.ends_with(&tar_end));
}

/// A TOC changed on the way parses badly; its digest says why, and the
/// items seen before the error are the caller's to drop.
#[test]
fn a_changed_toc_is_a_digest_mismatch_even_when_it_does_not_parse() {
    let (blob, _, annotations) = build(|_| {});
    let (broken, _, _) = build(|json| *json = json.replacen('}', "!", 2));
    // The annotation of the good TOC, on the blob of the bad one.
    assert!(matches!(
        read_estargz_with(&broken, Some(&annotations), |_| Ok(())),
        Err(Error::DigestMismatch { .. })
    ));
    let unannotated = read_estargz_with(&broken, None, |_| Ok(()));
    assert!(unannotated.is_err() && !matches!(unannotated, Err(Error::DigestMismatch { .. })), "{unannotated:?}");
    // The visitor's own error comes back as it was.
    let stopped = read_estargz_with(&blob, Some(&annotations), |_| Err(Error::InvalidToc("stop".into())));
    assert!(matches!(&stopped, Err(Error::InvalidToc(m)) if m == "stop"), "{stopped:?}");
}
