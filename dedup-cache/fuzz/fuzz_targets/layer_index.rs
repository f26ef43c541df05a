//! Any bytes as a stored layer index: an index or an error, never a panic
//! or a huge allocation; what parses writes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_dedup_cache::LayerIndex;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = LayerIndex::from_bytes(data) {
        assert_eq!(index.to_bytes(), data);
        assert_eq!(index.entries().count(), index.len(), "every entry reads back");
    }
});
