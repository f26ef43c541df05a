//! strata and Debian's podman 4.3 (containers-storage 1.43) on one store,
//! in both directions: podman pulls, strata lists and reproduces each
//! layer's tar; strata applies layers and records an image, podman lists,
//! mounts and runs it; both write the store at once and nothing is lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use strata_layerstore::{DiffOptions, Driver, ImageOptions, LayerOptions, Store, StoreOptions};

fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("STRATA_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{tool} not installed, and STRATA_REQUIRE_TOOLS=1");
        }
        eprintln!("SKIPPED: {tool} not installed (apt-get install -y {package})");
    }
    ok
}

fn ready() -> bool {
    if !rustix::process::geteuid().is_root() || !strata_layerstore::overlay_supported() {
        eprintln!("SKIPPED: podman's overlay store needs root and overlayfs");
        return false;
    }
    have("podman", "podman")
}

/// Removes a directory at the end of a test.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Podman {
    graph: PathBuf,
    run: PathBuf,
    tmp: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let p = Podman {
            graph: dir.join("graph"),
            run: dir.join("run"),
            tmp: dir.join("ptmp"),
        };
        std::fs::create_dir_all(&p.tmp).expect("mkdir");
        p
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.graph)
            .arg("--runroot")
            .arg(&self.run)
            .arg("--tmpdir")
            .arg(&self.tmp)
            .args(["--storage-driver", "overlay", "--events-backend", "none", "--cgroup-manager", "cgroupfs"]);
        c
    }

    fn store(&self) -> Store {
        let mut options = StoreOptions::new(&self.graph, &self.run);
        options.driver = Some(Driver::Overlay);
        Store::open(&options).expect("strata opens podman's store")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
        let _ = self.cmd().args(["system", "reset", "--force"]).output();
        let _ = Command::new("umount").arg("-l").arg(self.graph.join("overlay")).output();
    }
}

/// A small runnable root filesystem: `cat`, its libraries, os-release.
fn base_tar(dir: &Path) -> Vec<u8> {
    let path = dir.join("base.tar");
    run(Command::new("tar")
        .args(["-h", "--format=gnu", "-C", "/", "-cf"])
        .arg(&path)
        .args([
            "bin/cat",
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6",
            "etc/os-release",
            "usr/share/doc/tar",
        ]));
    std::fs::read(&path).expect("tar")
}

/// A second layer: a whiteout, an opaque directory, awkward names, links.
fn app_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        match link {
            Some(l) => b.append_link(&mut h, name, l).expect("link"),
            None => b.append_data(&mut h, name, data).expect("entry"),
        }
    };
    add("etc/.wh.issue", tar::EntryType::Regular, b"", None);
    add("usr/share/doc/tar/.wh..wh..opq", tar::EntryType::Regular, b"", None);
    add("usr/share/doc/tar/README.strata", tar::EntryType::Regular, b"from strata\n", None);
    add("app/caf\u{e9} & <b>.txt", tar::EntryType::Regular, b"non-ascii\n", None);
    add(&format!("app/{}", "n".repeat(150)), tar::EntryType::Regular, b"long\n", None);
    add("app/hard", tar::EntryType::Link, b"", Some("usr/share/doc/tar/README.strata"));
    add("app/soft", tar::EntryType::Symlink, b"", Some("../etc/os-release"));
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// An OCI layout holding one image of gzip layers; returns the layout dir.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) -> PathBuf {
    // podman names an `oci:` image after the path, which must be lowercase.
    let layout = dir.join("oci");
    let _ = dir;
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        std::fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes).expect("blob");
        d
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let blob = gzip(tar);
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&blob), "size": blob.len()}));
        diff_ids.push(sha(tar));
    }
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "created": "2024-01-01T00:00:00Z", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": descriptors}))
    .expect("manifest");
    let md = put(&manifest);
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
        .expect("index"),
    )
    .expect("index");
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    layout
}

#[test]
fn strata_reproduces_every_layer_podman_pulled() {
    if !ready() {
        return;
    }
    let tmp = tempfile::Builder::new().prefix("strata-podman").tempdir().expect("tempdir");
    let lower = PathBuf::from(tmp.path().to_string_lossy().to_lowercase());
    std::fs::create_dir(&lower).ok();
    let _cleanup = Cleanup(lower.clone());
    let dir = lower.as_path();
    let tars = vec![base_tar(dir), app_tar()];
    let layout = oci_layout(dir, &tars);
    let podman = Podman::new(dir);
    run(podman.cmd().args(["pull", "-q"]).arg(format!("oci:{}:latest", layout.display())));

    let store = podman.store();
    let images = store.images().expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
    let chain = store.image_layers(&images[0].id).expect("layers");
    assert_eq!(chain.len(), 2);
    for (layer_id, tar) in chain.iter().rev().zip(&tars) {
        let layer = store.layer(layer_id).expect("layer");
        assert_eq!(layer.diff_digest, sha(tar));
        let mut out = Vec::new();
        store
            .diff(layer_id, &mut out, DiffOptions { verify: true, ..Default::default() })
            .expect("diff");
        assert!(out == *tar, "layer {layer_id} does not reassemble to the pulled tar");
    }
    let manifest = store.image_big_data(&images[0].id, "manifest").expect("manifest");
    assert_eq!(sha(&manifest), images[0].digest);
    // podman still reads the store after strata opened it.
    let listed = run(podman.cmd().args(["images", "--format", "{{.ID}}", "--no-trunc"]));
    assert!(listed.contains(&images[0].id[..12]), "{listed}");
}

fn strata_image(store: &Store, tars: &[Vec<u8>], name: &str) -> String {
    let mut parent: Option<String> = None;
    let mut diff_ids = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let blob = if i == 0 { gzip(tar) } else { tar.clone() };
        let layer = store
            .put_layer(
                &LayerOptions {
                    parent: parent.clone(),
                    chain_id: true,
                    expected_diff_id: Some(sha(tar)),
                    ..Default::default()
                },
                &blob[..],
            )
            .expect("put layer");
        diff_ids.push(layer.diff_digest.clone());
        parent = Some(layer.id);
    }
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "created": "2024-01-01T00:00:00Z", "config": {"Cmd": ["/bin/cat", "/etc/os-release"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
    .expect("config");
    let layer_descs: Vec<_> = diff_ids
        .iter()
        .map(|d| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 0}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": layer_descs}))
    .expect("manifest");
    let config_digest = sha(&config);
    let manifest_digest = sha(&manifest);
    let image = store
        .create_image(&ImageOptions {
            id: Some(config_digest[7..].to_owned()),
            names: vec![name.to_owned()],
            top_layer: parent,
            digest: Some(manifest_digest.clone()),
            created: Some("2024-01-01T00:00:00Z".into()),
            ..Default::default()
        })
        .expect("image");
    store.set_image_big_data(&image.id, &config_digest, &config).expect("config");
    store.set_image_big_data(&image.id, &format!("manifest-{manifest_digest}"), &manifest).expect("manifest");
    store.set_image_big_data(&image.id, "manifest", &manifest).expect("manifest");
    store.set_image_big_data(&image.id, &format!("signature-{}", &manifest_digest[7..]), b"").expect("sig");
    image.id
}

#[test]
fn podman_lists_mounts_and_runs_what_strata_stored() {
    if !ready() {
        return;
    }
    let tmp = tempfile::Builder::new().prefix("strata-podman").tempdir().expect("tempdir");
    let lower = PathBuf::from(tmp.path().to_string_lossy().to_lowercase());
    std::fs::create_dir(&lower).ok();
    let _cleanup = Cleanup(lower.clone());
    let dir = lower.as_path();
    let tars = vec![base_tar(dir), app_tar()];
    let podman = Podman::new(dir);
    let store = podman.store();
    let id = strata_image(&store, &tars, "localhost/strata-made:v1");

    let listed = run(podman.cmd().args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]));
    assert!(listed.contains(&format!("localhost/strata-made:v1 {}", &id[..12])), "{listed}");

    let mounted = run(podman.cmd().args(["image", "mount", "localhost/strata-made:v1"]));
    let root = PathBuf::from(mounted.trim());
    assert_eq!(std::fs::read(root.join("etc/os-release")).expect("os-release"), std::fs::read("/etc/os-release").expect("host"));
    assert!(!root.join("etc/issue").exists());
    let docs: Vec<_> = std::fs::read_dir(root.join("usr/share/doc/tar")).expect("ls").map(|e| e.expect("e").file_name()).collect();
    assert_eq!(docs, ["README.strata"], "the opaque directory hides the base layer's files");
    assert_eq!(std::fs::read(root.join("app/caf\u{e9} & <b>.txt")).expect("name"), b"non-ascii\n");
    run(podman.cmd().args(["image", "unmount", "localhost/strata-made:v1"]));

    if have("runc", "runc") {
        let out = run(podman.cmd().args([
            "run", "--rm", "--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "localhost/strata-made:v1", "/bin/cat", "/etc/os-release",
        ]));
        assert_eq!(out.as_bytes(), std::fs::read("/etc/os-release").expect("host"));
    }

    // podman exports the layers bit for bit from strata's tar-split.
    let saved = dir.join("saved");
    run(podman
        .cmd()
        .args(["save", "--format", "oci-dir", "--uncompressed", "-o"])
        .arg(&saved)
        .arg("localhost/strata-made:v1"));
    for tar in &tars {
        let blob = saved.join("blobs/sha256").join(&sha(tar)[7..]);
        assert!(blob.exists(), "podman save has no blob for diffID {}", sha(tar));
    }

    run(podman.cmd().args(["rmi", "localhost/strata-made:v1"]));
    assert!(store.images().expect("images").is_empty());
    assert!(store.layers().expect("layers").is_empty(), "podman removed strata's layers");
}

#[test]
fn strata_and_podman_write_one_store_at_once() {
    if !ready() {
        return;
    }
    let tmp = tempfile::Builder::new().prefix("strata-podman").tempdir().expect("tempdir");
    let lower = PathBuf::from(tmp.path().to_string_lossy().to_lowercase());
    std::fs::create_dir(&lower).ok();
    let _cleanup = Cleanup(lower.clone());
    let dir = lower.as_path();
    let tars = vec![base_tar(dir), app_tar()];
    let layout = oci_layout(dir, &tars);
    let podman = Podman::new(dir);
    run(podman.cmd().args(["pull", "-q"]).arg(format!("oci:{}:latest", layout.display())));
    let store = podman.store();
    let image_id = store.images().expect("images")[0].id.clone();
    let made: Vec<String> = std::thread::scope(|s| {
        let podman_side = s.spawn(|| {
            for i in 0..4 {
                run(podman.cmd().args(["pull", "-q"]).arg(format!("oci:{}:latest", layout.display())));
                run(podman.cmd().arg("tag").arg(&image_id).arg(format!("localhost/p{i}:v1")));
            }
        });
        let mut ids = Vec::new();
        for i in 0..12 {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            let body = format!("strata layer {i}\n");
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, format!("file{i}"), body.as_bytes()).expect("entry");
            let layer = store
                .put_layer(&LayerOptions { names: vec![format!("strata-{i}")], ..Default::default() }, &tar.into_inner().expect("tar")[..])
                .expect("put");
            ids.push(layer.id);
        }
        podman_side.join().expect("podman thread");
        ids
    });
    let layers = store.layers().expect("layers");
    for id in &made {
        assert!(layers.iter().any(|l| &l.id == id), "layer {id} was lost");
    }
    let listed = run(podman.cmd().args(["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    for i in 0..4 {
        assert!(listed.contains(&format!("localhost/p{i}:v1")), "{listed}");
    }
    // podman sees strata's layers too (its own fsck-like listing).
    let podman_layers = run(podman.cmd().args(["images", "-a", "-q"]));
    assert!(!podman_layers.is_empty());
}
