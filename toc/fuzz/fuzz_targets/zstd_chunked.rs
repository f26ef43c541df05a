//! Any bytes as a zstd:chunked or eStargz blob and as TOC JSON: errors,
//! never panics or huge allocations; a TOC that validates yields pieces
//! that cover each file exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_toc::{Toc, estargz::read_estargz, read_zstd_chunked};

fuzz_target!(|data: &[u8]| {
    let _ = read_zstd_chunked(data, None);
    let _ = read_estargz(data, None);
    if let Ok(toc) = Toc::parse(data) {
        if toc.validate(u64::MAX).is_ok() {
            for (i, e) in toc.entries.iter().enumerate() {
                if e.kind == "reg" && e.size > 0 {
                    let pieces = toc.pieces(i).expect("validated");
                    assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), e.size as u64);
                }
            }
        }
    }
});
