//! The other side of interoperability: podman (containers-storage 1.43,
//! Debian's podman 4.3) pulls a layer written by `strata convert` from a real
//! docker-registry on 127.0.0.1 along the partial-pull path, and ends with
//! the same diffID and the same files as the original tar.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A docker-registry on a free loopback port, stopped on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.join("data").display()),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn put(layout: &Path, bytes: &[u8]) -> String {
    let d = sha(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes).expect("blob");
    d
}

#[test]
fn podman_pulls_strata_zstd_chunked_partially() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: podman's overlay storage needs root here");
        return;
    }
    if !(have("podman", "podman")
        && have("docker-registry", "docker-registry")
        && have("skopeo", "skopeo"))
    {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path();
    let tar = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--format=gnu", "-cf"])
        .arg(&tar)
        .args(["-C", "/usr/share/doc", "bash", "coreutils", "tar"]));
    let blob_path = dir.join("layer.zst");
    let descriptor: serde_json::Value =
        serde_json::from_str(&run(Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["convert", "--legacy-annotations"])
            .arg(&tar)
            .arg("-o")
            .arg(&blob_path)
            .stderr(Stdio::null())))
        .expect("descriptor");
    let diff_id = descriptor["diffID"].as_str().expect("diffID").to_string();
    assert_eq!(diff_id, sha(&std::fs::read(&tar).expect("tar")));

    // An OCI layout with the one layer, pushed to the registry by skopeo.
    let layout = dir.join("oci");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    let blob_digest = put(&layout, &std::fs::read(&blob_path).expect("blob"));
    assert_eq!(descriptor["digest"].as_str(), Some(blob_digest.as_str()));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .expect("config");
    let config_digest = put(&layout, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": descriptor["mediaType"], "digest": blob_digest, "size": descriptor["size"], "annotations": descriptor["annotations"]}],
    }))
    .expect("manifest");
    let manifest_digest = put(&layout, &manifest);
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
        .expect("index"),
    )
    .expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("layout");

    let registry = Registry::start(dir);
    let image = format!("127.0.0.1:{}/strata/partial:latest", registry.port);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{image}")));

    // podman with its own overlay store and partial pulls on.
    let storage = dir.join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\"}}\n",
            dir.join("graph").display(),
            dir.join("run").display()
        ),
    )
    .expect("storage.conf");
    let podman = || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", &storage);
        c
    };
    let log = run(podman()
        .args(["--log-level", "debug", "pull", "--tls-verify=false"])
        .arg(&image));
    assert!(
        log.contains(&format!("Retrieved partial blob {blob_digest}")),
        "podman did not take the partial path:\n{log}"
    );
    let layers = run(podman()
        .args(["image", "inspect", "--format", "{{.RootFS.Layers}}"])
        .arg(&image));
    assert!(layers.contains(&diff_id), "{layers}");

    let mounted = run(podman().args(["image", "mount"]).arg(&image));
    let mountpoint = mounted
        .lines()
        .next()
        .expect("mount point")
        .trim()
        .to_string();
    let reference = dir.join("reference");
    std::fs::create_dir(&reference).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&reference));
    let same = Command::new("diff")
        .arg("-r")
        .arg(&reference)
        .arg(&mountpoint)
        .status()
        .expect("diff");
    let _ = podman().args(["image", "unmount"]).arg(&image).output();
    let _ = podman().args(["rmi", "--force"]).arg(&image).output();
    assert!(
        same.success(),
        "podman's partially pulled tree differs from the tar"
    );
}
