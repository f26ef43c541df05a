//! Helpers shared by the facade's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use strata::layerstore::{DiffOptions, Driver, Store, StoreOptions};

/// The example image of the source tree (tags v1 and v2).
pub fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/app")
}

/// A vfs store under `dir` (works without privileges).
pub fn store(dir: &Path) -> Store {
    let mut options = StoreOptions::new(dir.join("graph"), dir.join("run"));
    options.driver = Some(Driver::Vfs);
    Store::open(&options).expect("store")
}

/// A layer's tar as the store rebuilds it.
pub fn diff(store: &Store, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store.diff(id, &mut out, DiffOptions::default()).expect("diff");
    out
}

/// Pseudo-random bytes, half-compressible like real files.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) { b'a' } else { x as u8 }
        })
        .collect()
}

