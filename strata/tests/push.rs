//! Push a pulled image to a real docker-registry with each compression:
//! skopeo reads it back, its config keeps the diffIDs, strata pulls it back
//! bit for bit (zstd:chunked partially), podman pulls the zstd:chunked push
//! partially; a second push uploads nothing; a registry that fails uploads
//! midway gives a clear error and the store does not change.

use std::process::Command;
use std::sync::{Arc, Mutex};

use strata::chunkfetch::reference::parse_registry;
use strata::chunkfetch::{Reference, RegistryOptions};
use strata::{ExportOptions, How, LayerCompression, PullOptions, PushOptions, TransferEvent, pull, push};
mod common;

use common::{diff, example, store};
use strata_test_support::{Mode, Proxy, RegistryServer, tools_or_skip};

fn plain() -> RegistryOptions {
    RegistryOptions { tls_verify: false, max_attempts: 2, ..RegistryOptions::default() }
}

#[test]
fn pushed_images_read_back_with_every_compression() {
    if !tools_or_skip(&["docker-registry", "skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = store(&dir.path().join("a"));
    let pulled = pull(&Reference::parse(&format!("oci:{}:v2", example().display())).expect("ref"), &source, &PullOptions::default())
        .expect("pull");
    let server = RegistryServer::start();
    let names = [("none", LayerCompression::None), ("gzip", LayerCompression::Gzip), ("zstd", LayerCompression::Zstd), ("chunked", LayerCompression::ZstdChunked)];
    for (name, compression) in names {
        let dest = parse_registry(&format!("{}/pushed/app-{name}:v2", server.addr)).expect("ref");
        // Progress: per layer, a start, growing byte counts, and the end.
        let events = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
        let seen = events.clone();
        let progress: strata::TransferProgress = Arc::new(move |e: TransferEvent<'_>| {
            let mut seen = seen.lock().expect("lock");
            match e {
                TransferEvent::Writing { layer_id, .. } => seen.push((format!("start {layer_id}"), 0)),
                TransferEvent::Written { layer_id, bytes } => seen.push((format!("bytes {layer_id}"), bytes)),
                TransferEvent::Layer(l) => seen.push((format!("done {}", l.layer_id), l.size)),
            }
        });
        let export = ExportOptions { compression, legacy_annotations: true, progress: Some(progress) };
        let options = PushOptions { registry: plain(), export };
        let report = push(&source, "localhost/app:v2", &dest, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.blobs_uploaded, 3, "{name}: two layers and the config");
        let events = events.lock().expect("lock").clone();
        for layer in &report.layers {
            let id = &layer.layer_id;
            let mine: Vec<&(String, u64)> = events.iter().filter(|(what, _)| what.ends_with(id.as_str())).collect();
            assert_eq!(mine.first().map(|e| e.0.clone()), Some(format!("start {id}")), "{name}: {mine:?}");
            assert_eq!(mine.last().copied(), Some(&(format!("done {id}"), layer.size)), "{name}");
            let counts: Vec<u64> = mine.iter().filter(|(w, _)| w.starts_with("bytes")).map(|e| e.1).collect();
            assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{name}: counts grow");
            assert_eq!(counts.last().copied(), Some(layer.size), "{name}: the last count is the blob's size");
        }

        let inspected = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--config"])
            .arg(format!("docker://{dest}"))
            .output()
            .expect("skopeo inspect");
        assert!(inspected.status.success(), "{name}: {}", String::from_utf8_lossy(&inspected.stderr));
        let config: serde_json::Value = serde_json::from_slice(&inspected.stdout).expect("json");
        let diff_ids: Vec<&str> = pulled.layers.iter().map(|l| l.diff_id.as_str()).collect();
        assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids), "{name}");
        let copy = dir.path().join(format!("copy-{name}"));
        let status = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{dest}"))
            .arg(format!("oci:{}:v2", copy.display()))
            .status()
            .expect("skopeo copy");
        assert!(status.success(), "{name}: skopeo copies the pushed image");

        let again = store(&dir.path().join(format!("b-{name}")));
        // Partial even into an empty store, to show the pushed TOCs work.
        let partial = PullOptions {
            registry: plain(),
            full_fetch_share: 2.0,
            ..PullOptions::default()
        };
        let back = pull(&Reference::Registry(dest.clone()), &again, &partial)
            .unwrap_or_else(|e| panic!("{name}: pull back: {e}"));
        for (a, b) in pulled.layers.iter().zip(&back.layers) {
            assert_eq!(diff(&source, &a.layer_id), diff(&again, &b.layer_id), "{name}");
        }
        if compression == LayerCompression::ZstdChunked {
            assert!(back.layers.iter().all(|l| l.how == How::Partial), "{:?}", back.layers);
        }
    }
    // Pushing again finds every blob there.
    let dest = parse_registry(&format!("{}/pushed/app-gzip:again", server.addr)).expect("ref");
    let report = push(&source, "localhost/app:v2", &dest, &PushOptions { registry: plain(), export: ExportOptions::default() })
        .expect("push again");
    assert_eq!((report.blobs_uploaded, report.blobs_present), (0, 3));

    // Another repository of the same registry: the registry mounts the
    // blobs from the one they were pushed to; nothing is sent again.
    let other = parse_registry(&format!("{}/elsewhere/app:v2", server.addr)).expect("ref");
    let report = push(&source, "localhost/app:v2", &other, &PushOptions { registry: plain(), export: ExportOptions::default() })
        .expect("push elsewhere");
    assert_eq!((report.blobs_uploaded, report.blobs_present, report.blobs_mounted), (0, 0, 3), "{report:?}");
    let inspected = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--config"])
        .arg(format!("docker://{other}"))
        .output()
        .expect("skopeo inspect");
    assert!(inspected.status.success(), "the mounted image reads back: {}", String::from_utf8_lossy(&inspected.stderr));
}

#[test]
fn chunked_uploads_send_a_failed_chunk_again() {
    if !tools_or_skip(&["docker-registry"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = store(&dir.path().join("a"));
    let pulled = pull(&Reference::parse(&format!("oci:{}:v2", example().display())).expect("ref"), &source, &PullOptions::default())
        .expect("pull");
    let server = RegistryServer::start();
    let proxy = Proxy::start(&server.addr, Mode::FlakyPatches);
    let dest = parse_registry(&format!("{}/chunked/app:v2", proxy.addr)).expect("ref");
    let registry = RegistryOptions {
        upload_chunk_size: Some(64 << 10),
        retry_delay: std::time::Duration::from_millis(10),
        ..plain()
    };
    let report = push(&source, "localhost/app:v2", &dest, &PushOptions { registry, export: ExportOptions::default() })
        .expect("a chunked push through a flaky link");
    assert_eq!(report.blobs_uploaded, 3);
    let patches = proxy.requests.lock().expect("lock").iter().filter(|r| r.starts_with("PATCH ")).count();
    let chunks: u64 = report.layers.iter().map(|l| l.size.div_ceil(64 << 10)).sum();
    assert!(chunks >= 4, "the layers make several chunks: {report:?}");
    assert!(patches as u64 >= 2 * chunks - 2, "every second PATCH failed and was sent again: {patches} PATCHes for {chunks} chunks");

    // What the registry holds is the image, bit for bit.
    let again = store(&dir.path().join("b"));
    let direct = parse_registry(&format!("{}/chunked/app:v2", server.addr)).expect("ref");
    let back = pull(&Reference::Registry(direct), &again, &PullOptions { registry: plain(), ..PullOptions::default() }).expect("pull back");
    for (a, b) in pulled.layers.iter().zip(&back.layers) {
        assert_eq!(diff(&source, &a.layer_id), diff(&again, &b.layer_id));
    }
}

#[test]
fn a_registry_that_fails_uploads_midway_gives_a_clear_error_and_the_store_does_not_change() {
    if !tools_or_skip(&["docker-registry"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = store(&dir.path().join("a"));
    pull(&Reference::parse(&format!("oci:{}:v1", example().display())).expect("ref"), &source, &PullOptions::default()).expect("pull");
    let before = (source.layers().expect("layers"), source.images().expect("images"));
    let server = RegistryServer::start();
    let proxy = Proxy::start(&server.addr, Mode::RejectUploads);
    let dest = parse_registry(&format!("{}/broken/app:v1", proxy.addr)).expect("ref");
    let options = PushOptions {
        registry: RegistryOptions { tls_verify: false, max_attempts: 1, ..RegistryOptions::default() },
        export: ExportOptions::default(),
    };
    let err = push(&source, "localhost/app:v1", &dest, &options).expect_err("uploads fail");
    assert!(err.to_string().contains("500"), "{err}");
    let after = (source.layers().expect("layers"), source.images().expect("images"));
    assert_eq!(format!("{before:?}"), format!("{after:?}"), "the store did not change");
}

#[test]
fn podman_pulls_a_zstd_chunked_push_partially() {
    if !tools_or_skip(&["docker-registry", "podman"]) || !strata::layerstore::overlay_supported() {
        eprintln!("SKIPPED: podman's overlay storage needs podman, overlayfs and root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = store(&dir.path().join("a"));
    let pulled = pull(&Reference::parse(&format!("oci:{}:v2", example().display())).expect("ref"), &source, &PullOptions::default())
        .expect("pull");
    let server = RegistryServer::start();
    let dest = parse_registry(&format!("{}/pushed/chunked:v2", server.addr)).expect("ref");
    let report = push(
        &source,
        "localhost/app:v2",
        &dest,
        &PushOptions {
            registry: plain(),
            export: ExportOptions { compression: LayerCompression::ZstdChunked, legacy_annotations: true, progress: None },
        },
    )
    .expect("push");
    let conf = dir.path().join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\"}}\n",
            dir.path().join("podman/graph").display(),
            dir.path().join("podman/run").display()
        ),
    )
    .expect("storage.conf");
    let podman = || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", &conf).args(["--events-backend", "none"]);
        c
    };
    let out = podman().args(["--log-level", "debug", "pull", "--tls-verify=false"]).arg(dest.to_string()).output().expect("podman pull");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for layer in &report.layers {
        assert!(log.contains(&format!("Retrieved partial blob {}", layer.digest)), "podman did not pull {} partially:\n{log}", layer.digest);
    }
    let layers = podman().args(["image", "inspect", "--format", "{{json .RootFS.Layers}}"]).arg(dest.to_string()).output().expect("inspect");
    let listed: Vec<String> = serde_json::from_slice(&layers.stdout).expect("layers json");
    let expected: Vec<String> = pulled.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(listed, expected, "podman's layers have the original diffIDs");
    let _ = podman().args(["system", "reset", "--force"]).output();
}
