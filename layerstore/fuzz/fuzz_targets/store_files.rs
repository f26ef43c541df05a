//! Arbitrary bytes as a store's layers.json, images.json and
//! mountpoints.json: opening, listing, looking up and checking the store
//! must answer with records or a clear error, never panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strata_layerstore::{Driver, Store, StoreOptions};

fn store_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let mut options = StoreOptions::new(dir.join("graph"), dir.join("run"));
        options.driver = Some(Driver::Vfs);
        drop(Store::open(&options).expect("create store"));
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = store_dir();
    // One input feeds all three files, split at the first two NULs.
    let mut parts = data.splitn(3, |&b| b == 0);
    let layers = parts.next().unwrap_or_default();
    let images = parts.next().unwrap_or_default();
    let mounts = parts.next().unwrap_or_default();
    std::fs::write(dir.join("graph/vfs-layers/layers.json"), layers).expect("write");
    std::fs::write(dir.join("graph/vfs-images/images.json"), images).expect("write");
    std::fs::write(dir.join("run/vfs-layers/mountpoints.json"), mounts).expect("write");

    let mut options = StoreOptions::new(dir.join("graph"), dir.join("run"));
    options.driver = Some(Driver::Vfs);
    options.read_only = true;
    let Ok(store) = Store::open(&options) else { return };
    if let Ok(all) = store.layers() {
        for l in all.iter().take(8) {
            let _ = store.layer(&l.id);
            let _ = store.layers_by_uncompressed_digest(&l.diff_digest);
        }
    }
    let _ = store.layer("a");
    let _ = store.images();
    let _ = store.image("a");
    let _ = store.mounts();
    let _ = store.fsck(false);
});
