//! Any bytes as a nydus blob: reading the TOC, walking headers and
//! unpacking sections fail cleanly, never panic, and never read past the blob.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_toc::nydus::{find_by_walk, read_toc, unpack};

fuzz_target!(|data: &[u8]| {
    let _ = read_toc(data);
    for name in ["image.blob", "blob.meta", "image.boot", "absent"] {
        if let Ok(Some((offset, size))) = find_by_walk(data, name) {
            assert!(offset + size <= data.len() as u64);
        }
        let mut out = Vec::new();
        let _ = unpack(data, name, &mut out);
    }
});
