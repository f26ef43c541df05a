//! A layer's files indexed with their chunks give the chunk digests a
//! zstd:chunked writer would have put in the layer's TOC.

use std::collections::BTreeSet;

use strata_dedup_cache::{Kind, LayerIndex};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn chunks_from_files_are_the_writers_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut big = noise(3 << 20, 7);
    big[1_000_000..1_200_000].fill(0); // a hole: no chunk entry of its own
    std::fs::create_dir(dir.path().join("usr")).expect("mkdir");
    std::fs::write(dir.path().join("usr/big"), &big).expect("big");
    std::fs::write(dir.path().join("small"), noise(2000, 3)).expect("small");
    let root = cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).expect("open");

    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(big.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    builder.append_data(&mut h, "usr/big", &big[..]).expect("append");
    let tar = builder.into_inner().expect("tar");
    let mut blob = Vec::new();
    let written = strata_toc::write_zstd_chunked(&tar[..], &mut blob, &strata_toc::WriteOptions::default()).expect("write");
    let toc = strata_toc::read_zstd_chunked(&blob[..], Some(&written.annotations)).expect("read");
    let from_toc: BTreeSet<(u64, u64, String)> = toc
        .toc
        .entries
        .iter()
        .filter(|e| e.kind == "reg" || e.kind == "chunk")
        .filter(|e| !e.chunk_digest.is_empty() && e.chunk_type != "zeros")
        .map(|e| (e.chunk_offset as u64, e.chunk_size as u64, e.chunk_digest.clone()))
        .collect();
    assert!(from_toc.len() > 10, "the writer cut the file into chunks: {}", from_toc.len());

    let index = LayerIndex::from_dir_with(&root, true).expect("index");
    let chunks: BTreeSet<(u64, u64, String)> = index
        .entries()
        .filter(|e| e.kind == Kind::Chunk && e.path == "usr/big")
        .map(|e| (e.offset, e.length, format!("sha256:{}", e.digest.iter().map(|b| format!("{b:02x}")).collect::<String>())))
        .collect();
    // The last chunk of a file has no chunkSize in some TOCs; compare the
    // digests and offsets of all, sizes where given.
    let strip = |s: &BTreeSet<(u64, u64, String)>| s.iter().map(|(o, _, d)| (*o, d.clone())).collect::<BTreeSet<_>>();
    assert_eq!(strip(&chunks), strip(&from_toc));
    assert!(
        index.entries().filter(|e| e.path == "small").all(|e| e.kind == Kind::File),
        "a file of one chunk is indexed as a file"
    );
    let plain = LayerIndex::from_dir(&root).expect("index");
    assert!(plain.entries().all(|e| e.kind == Kind::File), "no chunks unless asked");
}
