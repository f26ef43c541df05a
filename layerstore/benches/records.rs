//! Record lookup and JSON load at 10 000 layers (issue 6's figures).
//!
//! `cargo bench -p strata-layerstore --bench records`

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sha2::{Digest, Sha256};
use strata_layerstore::{Driver, Store, StoreOptions};

const LAYERS: usize = 10_000;

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A store whose layers.json holds `LAYERS` records shaped like podman's.
fn store_with_many_layers(dir: &std::path::Path) -> StoreOptions {
    let mut options = StoreOptions::new(dir.join("graph"), dir.join("run"));
    options.driver = Some(Driver::Vfs);
    drop(Store::open(&options).expect("create store"));
    let mut records = Vec::with_capacity(LAYERS);
    let mut parent: Option<String> = None;
    for i in 0..LAYERS {
        let id = hex(format!("layer {i}").as_bytes());
        let mut r = json!({
            "id": id,
            "names": [format!("name-{i}")],
            "created": "2026-11-29T10:00:00.123456789Z",
            "compressed-diff-digest": format!("sha256:{}", hex(format!("c{i}").as_bytes())),
            "compressed-size": 1234567,
            "diff-digest": format!("sha256:{}", hex(format!("d{i}").as_bytes())),
            "diff-size": 7654321,
            "compression": 2,
            "uidset": [0],
            "gidset": [0, 42],
        });
        if let Some(p) = &parent {
            r["parent"] = json!(p);
        }
        // Chains of ten, like images of ten layers.
        parent = if i % 10 == 9 { None } else { Some(id) };
        records.push(r);
    }
    let bytes = serde_json::to_vec(&records).expect("json");
    std::fs::write(dir.join("graph/vfs-layers/layers.json"), bytes).expect("write layers.json");
    options.read_only = true;
    options
}

fn records(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = store_with_many_layers(dir.path());
    let last = hex(format!("layer {}", LAYERS - 1).as_bytes());
    let diff = format!("sha256:{}", hex(format!("d{}", LAYERS / 2).as_bytes()));

    c.bench_function("open and load layers.json (10 000 layers)", |b| {
        b.iter(|| {
            let store = Store::open(&options).expect("open");
            store.layer(&last).expect("lookup")
        })
    });
    let store = Store::open(&options).expect("open");
    store.layers().expect("warm");
    c.bench_function("layer by id (10 000 layers, loaded)", |b| b.iter(|| store.layer(&last).expect("id")));
    c.bench_function("layer by name (10 000 layers, loaded)", |b| b.iter(|| store.layer("name-9999").expect("name")));
    c.bench_function("layer by id prefix (10 000 layers, loaded)", |b| {
        b.iter(|| store.layer(&last[..12]).expect("prefix"))
    });
    c.bench_function("layers by diffID (10 000 layers, loaded)", |b| {
        b.iter(|| store.layers_by_uncompressed_digest(&diff).expect("digest"))
    });
}

criterion_group!(benches, records);
criterion_main!(benches);
