//! The nydus envelope: what strata packs, it finds again by the TOC and by
//! the header walk; lies in the envelope are errors.

use strata_toc::Error;
use strata_toc::nydus::{Packer, find_by_walk, header, read_toc, unpack};

fn sample(with_toc: bool) -> Vec<u8> {
    let mut p = Packer::new(Vec::new());
    p.add("image.blob", &vec![0xabu8; 3000][..], false)
        .expect("add");
    p.add("blob.meta", &b"chunk info ".repeat(500)[..], true)
        .expect("add");
    p.add("blob.digest", &[7u8; 64][..], false).expect("add");
    p.add("image.boot", &b"bootstrap".repeat(100)[..], true)
        .expect("add");
    if with_toc {
        p.finish().expect("finish").0
    } else {
        p.finish_without_toc().expect("finish")
    }
}

fn get(blob: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    unpack(blob, name, &mut out).expect("unpack").map(|_| out)
}

#[test]
fn packed_sections_come_back() {
    for with_toc in [true, false] {
        let blob = sample(with_toc);
        assert_eq!(
            read_toc(&blob).expect("toc").map(|t| t.len()),
            with_toc.then_some(4)
        );
        assert_eq!(get(&blob, "image.blob"), Some(vec![0xab; 3000]));
        let boot = get(&blob, "image.boot").expect("found");
        if with_toc {
            assert_eq!(boot, b"bootstrap".repeat(100), "decompressed by the TOC");
        } else {
            // The header walk knows nothing of compression: the stored bytes.
            assert_eq!(
                zstd::bulk::decompress(&boot, 1000).expect("zstd"),
                b"bootstrap".repeat(100)
            );
        }
        assert_eq!(get(&blob, "blob.digest"), Some(vec![7; 64]));
        assert_eq!(get(&blob, "nothing"), None);
        if with_toc {
            assert_eq!(
                get(&blob, "blob.meta"),
                Some(b"chunk info ".repeat(500)),
                "decompressed by the TOC"
            );
        }
        let (offset, size) = find_by_walk(&blob, "image.blob")
            .expect("walk")
            .expect("found");
        assert_eq!((offset, size), (0, 3000));
    }
}

fn replace_tail(blob: &mut [u8], tail: &[u8]) {
    let n = blob.len();
    blob[n - tail.len()..].copy_from_slice(tail);
}

#[test]
fn lies_are_errors() {
    // A corrupt header checksum.
    let mut blob = sample(true);
    let n = blob.len();
    blob[n - 512] ^= 1;
    assert!(read_toc(&blob).is_err());

    // A section claiming more bytes than precede it.
    let mut blob = sample(false);
    replace_tail(&mut blob, &header("image.boot", 1 << 40));
    assert!(
        find_by_walk(&blob, "image.blob")
            .expect_err("too big")
            .to_string()
            .contains("larger than what precedes it")
    );

    // A TOC whose size is not a multiple of 128.
    let mut blob = sample(true);
    replace_tail(&mut blob, &header("rafs.blob.toc", 300));
    assert!(
        read_toc(&blob)
            .expect_err("bad size")
            .to_string()
            .contains("multiple of 128")
    );

    // An entry pointing past the end, a wrong digest, unknown flags.
    let toc_start = |blob: &[u8]| blob.len() - 512 - 4 * 128;
    let mut blob = sample(true);
    let at = toc_start(&blob) + 3 * 128 + 56;
    blob[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        unpack(&blob[..], "image.boot", Vec::new()),
        Err(Error::OutOfBounds { .. })
    ));

    let mut blob = sample(true);
    let at = toc_start(&blob) + 2 * 128 + 24;
    blob[at] ^= 0xff;
    assert!(matches!(
        unpack(&blob[..], "blob.digest", Vec::new()),
        Err(Error::DigestMismatch { .. })
    ));

    let mut blob = sample(true);
    let at = toc_start(&blob) + 128;
    blob[at..at + 4].copy_from_slice(&0x100u32.to_le_bytes());
    assert!(
        read_toc(&blob)
            .expect_err("flags")
            .to_string()
            .contains("unknown TOC entry flags")
    );

    // A blob too short to hold a header.
    assert!(read_toc(&vec![0u8; 100]).is_err());
}

/// Found by the fuzzer: a TOC entry declaring an uncompressed size near
/// 2^63 once made unpack allocate that much up front.
#[test]
fn a_declared_size_is_never_an_allocation() {
    let blob = include_bytes!("data/nydus-huge-declared-size.bin");
    for name in ["image.boot", "blob.meta", "image.blob"] {
        let mut out = Vec::new();
        let _ = strata_toc::nydus::unpack(&blob[..], name, &mut out);
        assert!(out.len() < 1 << 20, "{name}: {} bytes", out.len());
    }
}
