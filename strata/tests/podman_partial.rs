//! strata pulls v2 into the store where podman 4.3 (containers-storage
//! 1.43, partial pulls on) pulled v1: the files podman's layer holds are
//! found through the TOC containers-storage kept with it, and only what
//! changed is fetched. podman then lists the image strata stored.

use std::path::Path;
use std::process::Command;

use strata::chunkfetch::{Reference, RegistryOptions};
use strata::layerstore::{DiffOptions, Driver, Store, StoreOptions};
use strata::{How, PullOptions, pull};
use strata_test_support::{LayerBlob, RegistryServer, add_image, skopeo_copy, tools_or_skip};

mod common;
use common::noise;

/// 120 files of 4–60 KiB under their directories (containers-storage 1.43
/// cannot reuse files of a layer it pulled partially when the tar leaves
/// their directories implied); `changed` ones get other content.
fn layer_tar(changed: &[u64]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in ["usr/", "usr/share/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, d, &[][..]).expect("dir");
    }
    for i in 0..120u64 {
        let seed = if changed.contains(&i) { 1_000_000 + i } else { i };
        let data = noise(seed, 4096 + (i as usize * 797) % 57_000);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("usr/share/f{i:04}"), &data[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

/// A zstd:chunked blob with the annotation keys podman 4.3 reads.
fn chunked(tar: &[u8]) -> LayerBlob {
    let mut blob = Vec::new();
    let written = strata::toc::write_zstd_chunked(
        tar,
        &mut blob,
        &strata::toc::WriteOptions { level: 3, legacy_annotations: true, ..Default::default() },
    )
    .expect("convert");
    LayerBlob {
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        annotations: written.annotations.into_iter().collect(),
        diff_id: written.diff_id,
    }
}

fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .args(["--events-backend", "none", "--cgroup-manager", "cgroupfs"]);
    c
}

/// A private graphroot and runroot for podman (overlay, partial pulls
/// on) with its storage.conf, or `None` (said) where podman cannot run.
/// podman keeps a blob-info cache for the whole machine, which one test
/// removes and the other would read: they run one at a time.
static PODMAN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn podman_store() -> Option<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)> {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !strata::layerstore::overlay_supported() {
        eprintln!("SKIPPED: podman's overlay store needs root and overlayfs");
        return None;
    }
    if !tools_or_skip(&["podman", "skopeo", "docker-registry"]) {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (graph, run) = (dir.path().join("graph"), dir.path().join("run"));
    std::fs::write(
        dir.path().join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\"}}\n",
            graph.display(),
            run.display()
        ),
    )
    .expect("storage.conf");
    Some((dir, graph, run))
}

/// Empties podman's store and unmounts what it left mounted.
fn reset(dir: &Path, graph: &Path) {
    let _ = podman(dir).args(["system", "reset", "--force"]).output();
    let _ = Command::new("umount").arg("-l").arg(graph.join("overlay")).output();
}

#[test]
fn strata_reuses_the_files_of_a_layer_podman_pulled_partially() {
    let _one_at_a_time = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let Some((dir, graph, run)) = podman_store() else { return };
    let (v1, v2) = (layer_tar(&[]), layer_tar(&[5, 60, 61]));
    let layout = dir.path().join("layout");
    add_image(&layout, "v1", &[chunked(&v1)]);
    add_image(&layout, "v2", &[chunked(&v2)]);
    let server = RegistryServer::start();
    for tag in ["v1", "v2"] {
        skopeo_copy(&format!("oci:{}:{tag}", layout.display()), &format!("docker://{}/app:{tag}", server.addr));
    }
    // podman's blob-info cache is machine-wide: an earlier run's would
    // change what it does.
    let _ = std::fs::remove_dir_all("/var/lib/containers/cache");
    let pulled = podman(dir.path())
        .args(["pull", "--quiet", "--tls-verify=false"])
        .arg(format!("{}/app:v1", server.addr))
        .output()
        .expect("podman pull");
    assert!(pulled.status.success(), "podman pull: {}", String::from_utf8_lossy(&pulled.stderr));

    let mut options = StoreOptions::new(&graph, &run);
    options.driver = Some(Driver::Overlay);
    let store = Store::open(&options).expect("strata opens podman's store");
    let podmans = store.layers().expect("layers");
    assert!(
        podmans.iter().any(|l| l.big_data_names.iter().any(|n| n == "zstd-chunked-manifest")),
        "podman pulled v1 partially and kept its TOC: {podmans:?}"
    );
    let pull_options = PullOptions {
        registry: RegistryOptions { tls_verify: false, ..RegistryOptions::default() },
        ..PullOptions::default()
    };
    let reference = Reference::parse(&format!("docker://{}/app:v2", server.addr)).expect("ref");
    let report = pull(&reference, &store, &pull_options).expect("strata pulls v2");
    let layer = &report.layers[0];
    assert_eq!(layer.how, How::Partial, "{layer:?}");
    assert!(layer.files_reused >= 115, "found in podman's layer: {layer:?}");
    let mut out = Vec::new();
    store.diff(&layer.layer_id, &mut out, DiffOptions::default()).expect("diff");
    assert!(out == v2, "v2's layer diffs to its tar");

    let images = podman(dir.path()).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]).output().expect("podman images");
    let listed = String::from_utf8_lossy(&images.stdout);
    assert!(listed.contains("/app:v2"), "podman lists strata's image: {listed}");
    drop(store);
    reset(dir.path(), &graph);
}

/// An eStargz blob written by strata.
fn estargz(tar: &[u8]) -> LayerBlob {
    let mut blob = Vec::new();
    let options = strata::toc::estargz::EstargzOptions { chunk_size: 16 << 10, ..Default::default() };
    let written = strata::toc::estargz::write_estargz(tar, &mut blob, &options).expect("eStargz");
    LayerBlob {
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        annotations: written.annotations.into_iter().collect(),
        diff_id: written.diff_id,
    }
}

/// The other direction: podman 4.3 (containers-storage 1.43, partial
/// pulls on) reads the eStargz blobs strata writes by their TOC, pulls v1
/// and then v2 partially, and its layers hold the right files; strata then
/// reads podman's layers from the shared store.
#[test]
fn podman_pulls_estargz_written_by_strata_partially() {
    let _one_at_a_time = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let Some((dir, graph, run)) = podman_store() else { return };
    let changed = [5, 60, 61];
    let layout = dir.path().join("layout");
    add_image(&layout, "v1", &[estargz(&layer_tar(&[]))]);
    add_image(&layout, "v2", &[estargz(&layer_tar(&changed))]);
    let server = RegistryServer::start();
    for tag in ["v1", "v2"] {
        skopeo_copy(&format!("oci:{}:{tag}", layout.display()), &format!("docker://{}/app:{tag}", server.addr));
    }
    let _ = std::fs::remove_dir_all("/var/lib/containers/cache");
    for tag in ["v1", "v2"] {
        let pulled = podman(dir.path())
            .args(["pull", "--quiet", "--tls-verify=false"])
            .arg(format!("{}/app:{tag}", server.addr))
            .output()
            .expect("podman pull");
        assert!(pulled.status.success(), "podman pull {tag}: {}", String::from_utf8_lossy(&pulled.stderr));
    }
    let mut options = StoreOptions::new(&graph, &run);
    options.driver = Some(Driver::Overlay);
    let store = Store::open(&options).expect("strata opens podman's store");
    let layers = store.layers().expect("layers");
    let partial: Vec<_> = layers.iter().filter(|l| l.big_data_names.iter().any(|n| n == "zstd-chunked-manifest")).collect();
    assert_eq!(partial.len(), 2, "podman pulled both eStargz layers by their TOC: {layers:?}");
    // Each of podman's layers holds its version's files.
    for version in [&[][..], &changed[..]] {
        let expected = layer_tar(version);
        let found = partial.iter().any(|layer| {
            let Ok(files) = store.layer_files(&layer.id) else { return false };
            let mut archive = tar::Archive::new(&expected[..]);
            archive.entries().expect("entries").all(|e| {
                let mut e = e.expect("entry");
                if e.header().entry_type() != tar::EntryType::Regular {
                    return true;
                }
                let path = e.path().expect("path").into_owned();
                let mut want = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut want).expect("read");
                files.read(&path).is_ok_and(|have| have == want)
            })
        });
        assert!(found, "a layer of podman's holds the files of the version changing {version:?}");
    }
    drop(store);
    reset(dir.path(), &graph);
}
