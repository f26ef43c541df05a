//! Export a pulled image to an OCI layout with each compression; skopeo
//! reads the result, its config keeps the diffIDs, and pulling it back
//! gives the same layers bit for bit.

use std::process::Command;

use strata::chunkfetch::Reference;
use strata::{ExportOptions, How, LayerCompression, PullOptions, export_to_layout, pull};
mod common;

use common::{diff, example, store};
use strata_test_support::{tools_or_skip, tree_snapshot};

#[test]
fn exported_layouts_pull_back_bit_for_bit_with_every_compression() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = store(&dir.path().join("a"));
    let pulled = pull(&Reference::parse(&format!("oci:{}:v2", example().display())).expect("ref"), &source, &PullOptions::default())
        .expect("pull");
    let skopeo = tools_or_skip(&["skopeo"]);
    for (i, compression) in [LayerCompression::None, LayerCompression::Gzip, LayerCompression::Zstd, LayerCompression::ZstdChunked]
        .into_iter()
        .enumerate()
    {
        let out = dir.path().join(format!("out{i}"));
        let report = export_to_layout(&source, "localhost/app:v2", &out, Some("v2"), &ExportOptions { compression, ..ExportOptions::default() })
            .unwrap_or_else(|e| panic!("{compression:?}: {e}"));
        assert_eq!(report.image_id, pulled.image_id, "the config is unchanged");
        if skopeo {
            let copy = dir.path().join(format!("copy{i}"));
            let status = Command::new("skopeo")
                .args(["copy", "--quiet"])
                .arg(format!("oci:{}:v2", out.display()))
                .arg(format!("oci:{}:v2", copy.display()))
                .status()
                .expect("skopeo");
            assert!(status.success(), "{compression:?}: skopeo copy accepts the layout");
            let inspected = Command::new("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("oci:{}:v2", out.display()))
                .output()
                .expect("skopeo inspect");
            let config: serde_json::Value = serde_json::from_slice(&inspected.stdout).expect("config json");
            let diff_ids: Vec<String> = pulled.layers.iter().map(|l| l.diff_id.clone()).collect();
            assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids), "{compression:?}");
        }
        // Back into a fresh store: the same layers, bit for bit.
        let again = store(&dir.path().join(format!("b{i}")));
        // Partial even into an empty store, to show the TOCs work.
        let partial = PullOptions {
            full_fetch_share: 2.0,
            ..PullOptions::default()
        };
        let back = pull(&Reference::parse(&format!("oci:{}:v2", out.display())).expect("ref"), &again, &partial)
            .unwrap_or_else(|e| panic!("{compression:?}: pull back: {e}"));
        assert_eq!(back.image_id, pulled.image_id);
        for (a, b) in pulled.layers.iter().zip(&back.layers) {
            assert_eq!(a.layer_id, b.layer_id, "{compression:?}: same chain IDs");
            assert_eq!(diff(&source, &a.layer_id), diff(&again, &b.layer_id), "{compression:?}");
        }
        if compression == LayerCompression::ZstdChunked {
            assert!(back.layers.iter().all(|l| l.how == How::Partial), "{:?}", back.layers);
        }
    }
}

#[test]
fn umoci_unpacks_an_export_to_the_tree_strata_mounts() {
    if !tools_or_skip(&["umoci"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = store(&dir.path().join("a"));
    let pulled = pull(&Reference::parse(&format!("oci:{}:v2", example().display())).expect("ref"), &source, &PullOptions::default())
        .expect("pull");
    let out = dir.path().join("out");
    export_to_layout(&source, &pulled.image_id, &out, Some("v2"), &ExportOptions { compression: LayerCompression::Gzip, ..ExportOptions::default() })
        .expect("export");
    let bundle = dir.path().join("bundle");
    let status = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v2", out.display()))
        .arg(&bundle)
        .status()
        .expect("umoci");
    assert!(status.success(), "umoci unpack");
    let top = &pulled.layers.last().expect("layers").layer_id;
    let mounted = source.mount(top, true).expect("mount");
    let (ours, theirs) = (tree_snapshot(&mounted), tree_snapshot(&bundle.join("rootfs")));
    source.unmount(top, false).expect("unmount");
    assert!(ours.len() > 10, "{} paths", ours.len());
    for (path, desc) in &theirs {
        assert_eq!(ours.get(path), Some(desc), "{path}");
    }
    assert_eq!(ours.len(), theirs.len(), "paths only strata has: {:?}", ours.keys().filter(|k| !theirs.contains_key(*k)).collect::<Vec<_>>());
}
