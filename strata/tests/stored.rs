//! Serving stored images: blobs by digest, manifests by instance, layer
//! infos, signatures; a multi-arch index, an image with history entries
//! that made no layer, layers that share a diffID.

mod common;

use std::process::Command;

use common::{diff, example, store};
use serde_json::json;
use sha2::{Digest, Sha256};
use strata::chunkfetch::oci::Descriptor;
use strata::chunkfetch::{LayoutWriter, Reference};
use strata::layerstore::ImageOptions;
use strata::{BlobKind, ExportOptions, PullOptions, StoredImage, export_to_layout, pull};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, name, content.as_bytes()).expect("append");
    }
    b.into_inner().expect("tar")
}

/// Writes an image of plain tar layers into `layout`; returns the
/// manifest's descriptor (untagged).
fn write_image(layout: &LayoutWriter, arch: &str, layers: &[Vec<u8>], history: serde_json::Value) -> Descriptor {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let blob = layout.put_blob(tar).expect("layer");
        diff_ids.push(blob.digest.clone());
        descriptors.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob.digest, "size": blob.size}));
    }
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2026-11-30T00:00:00Z",
        "history": history,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = layout.put_blob(config.to_string().as_bytes()).expect("config");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
        "layers": descriptors,
    });
    let manifest = layout.put_blob(manifest.to_string().as_bytes()).expect("manifest");
    Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: manifest.digest,
        size: manifest.size,
        ..Descriptor::default()
    }
}

fn skopeo_accepts(layout: &std::path::Path, tag: &str, copy: &std::path::Path) -> bool {
    if !strata_test_support::tools_or_skip(&["skopeo"]) {
        return true;
    }
    Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("oci:{}:{tag}", copy.display()))
        .status()
        .expect("skopeo")
        .success()
}

#[test]
fn a_stored_image_serves_its_layers_config_and_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let pulled = pull(&Reference::parse(&format!("oci:{}:v2", example().display())).expect("ref"), &store, &PullOptions::default())
        .expect("pull");
    let image = StoredImage::open(&store, &pulled.names[0]).expect("open by name");
    assert_eq!(image.id(), pulled.image_id);

    let (manifest, digest) = image.manifest(None).expect("manifest");
    assert_eq!(digest, pulled.manifest_digest);
    assert_eq!(sha(&manifest), digest);
    assert_eq!(image.manifest(Some(&digest)).expect("by instance").0, manifest);
    assert!(image.manifest(Some(&format!("sha256:{}", "0".repeat(64)))).is_err());

    let infos = image.layer_infos().expect("layer infos");
    let diff_ids: Vec<&str> = pulled.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(infos.iter().map(|i| i.digest.as_str()).collect::<Vec<_>>(), diff_ids);
    for (info, layer) in infos.iter().zip(&pulled.layers) {
        let mut tar = Vec::new();
        let (kind, n) = image.write_blob(&info.digest, &mut tar).expect("layer blob");
        assert_eq!(kind, BlobKind::Layer);
        assert_eq!((n, n as i64), (tar.len() as u64, info.size));
        assert_eq!(sha(&tar), info.digest, "the tar hashes to its diffID");
        assert_eq!(tar, diff(&store, &layer.layer_id));
    }
    let config_digest = format!("sha256:{}", pulled.image_id);
    let mut config = Vec::new();
    assert_eq!(image.write_blob(&config_digest, &mut config).expect("config").0, BlobKind::BigData);
    assert_eq!(sha(&config), config_digest);
    let mut empty = Vec::new();
    assert_eq!(image.write_blob(strata::GZIPPED_EMPTY_LAYER_DIGEST, &mut empty).expect("empty").0, BlobKind::EmptyLayer);
    let err = image.write_blob(&format!("sha256:{}", "1".repeat(64)), &mut Vec::new()).expect_err("unknown blob");
    assert!(err.to_string().contains("no blob"), "{err}");
    let layer_bytes: i64 = infos.iter().map(|i| i.size).sum();
    assert!(image.size() > layer_bytes);
}

#[test]
fn signatures_are_split_by_their_recorded_lengths_and_bad_lengths_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let pulled = pull(&Reference::parse(&format!("oci:{}:v1", example().display())).expect("ref"), &store, &PullOptions::default())
        .expect("pull");
    let top = pulled.layers.last().expect("layers").layer_id.clone();
    let manifest = store.image_big_data(&pulled.image_id, "manifest").expect("manifest");
    let digest = sha(&manifest);
    let hex = &digest[7..];
    let signed = |id: &str, metadata: serde_json::Value| {
        store
            .create_image(&ImageOptions {
                id: Some(id.repeat(64)),
                names: vec![format!("localhost/signed-{id}:v1")],
                top_layer: Some(top.clone()),
                metadata: Some(metadata.to_string()),
                digest: Some(digest.clone()),
                ..ImageOptions::default()
            })
            .expect("image");
        store.set_image_big_data(&id.repeat(64), "manifest", &manifest).expect("manifest");
        store.set_image_big_data(&id.repeat(64), &format!("manifest-{digest}"), &manifest).expect("manifest");
        store.set_image_big_data(&id.repeat(64), "signatures", b"legacy-one").expect("legacy");
        store.set_image_big_data(&id.repeat(64), &format!("signature-{hex}"), b"firstsecond!").expect("per instance");
    };
    signed("a", json!({"signature-sizes": [6, 4], "signatures-sizes": {&digest: [5, 7]}}));
    let image = StoredImage::open(&store, "localhost/signed-a:v1").expect("open");
    assert_eq!(image.signatures(Some(&digest)).expect("instance"), [b"first".to_vec(), b"second!".to_vec()]);
    assert_eq!(
        image.signatures(None).expect("all"),
        [b"legacy".to_vec(), b"-one".to_vec(), b"first".to_vec(), b"second!".to_vec()]
    );

    signed("b", json!({"signatures-sizes": {&digest: [5, 9]}}));
    let image = StoredImage::open(&store, "localhost/signed-b:v1").expect("open");
    let err = image.signatures(Some(&digest)).expect_err("lengths past the end");
    assert!(err.to_string().contains("add up to 14 bytes, the item holds 12"), "{err}");
}

#[test]
fn a_multi_arch_index_keeps_the_list_and_exports_the_platform_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("multi");
    let layout = LayoutWriter::create(&layout_dir).expect("layout");
    let host = strata::chunkfetch::oci::host_architecture();
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let mut entries = Vec::new();
    for arch in [other, host] {
        let mut desc = write_image(&layout, arch, &[layer_tar(&[("arch", arch)])], json!([{"created_by": "COPY arch"}]));
        desc.platform = Some(strata::chunkfetch::oci::Platform {
            architecture: arch.into(),
            os: "linux".into(),
            ..Default::default()
        });
        entries.push(desc);
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let index_blob = layout.put_blob(index.to_string().as_bytes()).expect("index");
    layout
        .tag(
            Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: index_blob.digest.clone(),
                size: index_blob.size,
                ..Descriptor::default()
            },
            Some("multi"),
        )
        .expect("tag");

    let store = store(&dir.path().join("store"));
    let pulled = pull(&Reference::parse(&format!("oci:{}:multi", layout_dir.display())).expect("ref"), &store, &PullOptions::default())
        .expect("pull the index");
    assert_eq!(diff(&store, &pulled.layers[0].layer_id), layer_tar(&[("arch", host)]), "the host's platform was chosen");
    // Found by the list's digest too, which serves the list itself.
    let image = StoredImage::open(&store, &index_blob.digest).expect("open by the list digest");
    assert_eq!(image.id(), pulled.image_id);
    assert_eq!(image.manifest(Some(&index_blob.digest)).expect("the list").1, index_blob.digest);
    assert_eq!(image.manifest(None).expect("default").1, pulled.manifest_digest);

    let out = dir.path().join("out");
    export_to_layout(&store, &pulled.image_id, &out, Some("v1"), &ExportOptions::default()).expect("export");
    assert!(skopeo_accepts(&out, "v1", &dir.path().join("copy")), "skopeo copies the exported platform image");
}

#[test]
fn history_entries_without_layers_and_layers_sharing_a_diff_id_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("layout");
    let layout = LayoutWriter::create(&layout_dir).expect("layout");
    let same = layer_tar(&[("etc/motd", "hello\n")]);
    // ENV and LABEL made no layer; the same tar applied twice made two.
    let history = json!([
        {"created_by": "ENV A=1", "empty_layer": true},
        {"created_by": "COPY motd"},
        {"created_by": "LABEL x=y", "empty_layer": true},
        {"created_by": "COPY motd again"},
    ]);
    let desc = write_image(&layout, strata::chunkfetch::oci::host_architecture(), &[same.clone(), same.clone()], history);
    layout.tag(desc, Some("v1")).expect("tag");

    let store = store(&dir.path().join("store"));
    let pulled = pull(&Reference::parse(&format!("oci:{}:v1", layout_dir.display())).expect("ref"), &store, &PullOptions::default())
        .expect("pull");
    assert_eq!(pulled.layers.len(), 2);
    assert_ne!(pulled.layers[0].layer_id, pulled.layers[1].layer_id, "two layers, one diffID");
    let image = StoredImage::open(&store, &pulled.image_id).expect("open");
    let infos = image.layer_infos().expect("infos");
    assert_eq!(infos.len(), 2);
    for _ in 0..3 {
        let mut tar = Vec::new();
        image.write_blob(&infos[0].digest, &mut tar).expect("served in turn");
        assert_eq!(tar, same);
    }

    let out = dir.path().join("out");
    let report = export_to_layout(&store, &pulled.image_id, &out, Some("v1"), &ExportOptions::default()).expect("export");
    assert_eq!(report.config_digest, format!("sha256:{}", pulled.image_id), "the config (history included) is kept byte for byte");
    assert!(skopeo_accepts(&out, "v1", &dir.path().join("copy")));
    let again = store_again(&dir.path().join("again"), &out);
    assert_eq!(again, pulled.image_id);
}

fn store_again(dir: &std::path::Path, layout: &std::path::Path) -> String {
    let store = store(dir);
    pull(&Reference::parse(&format!("oci:{}:v1", layout.display())).expect("ref"), &store, &PullOptions::default())
        .expect("pull the export back")
        .image_id
}
