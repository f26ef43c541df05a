//! `strata demo` and `strata pull` from the example OCI layout.

use std::path::PathBuf;
use std::process::Command;

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

/// `strata` on a vfs store under `dir`.
fn strata_in(dir: &std::path::Path) -> Command {
    let mut c = strata();
    c.arg("--root").arg(dir.join("graph")).arg("--runroot").arg(dir.join("run")).args(["--driver", "vfs"]);
    c
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/app")
}

#[test]
fn the_demo_pulls_v2_mostly_from_v1() {
    let out = strata().arg("demo").output().expect("run strata demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("already present"), "{stdout}");
    let saved_line = stdout.lines().rfind(|l| l.contains("% saved")).expect("summary");
    let saved: f64 = saved_line
        .split('(')
        .nth(2)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .expect("a percentage");
    assert!(saved > 80.0, "{saved_line}");
}

#[test]
fn pull_json_reports_every_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |tag: &str| {
        let out = strata_in(dir.path())
            .args(["pull", "--json"])
            .arg(format!("oci:{}:{tag}", example().display()))
            .output()
            .expect("run strata pull");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let v1 = run("v1");
    assert_eq!(v1["layers"].as_array().map(Vec::len), Some(2));
    let v2 = run("v2");
    assert_eq!(v2["layers"][0]["how"], "present");
    assert_eq!(v2["layers"][1]["how"], "partial");
    let fetched = v2["bytes_fetched"].as_u64().expect("bytes_fetched");
    let needed = v2["bytes_needed"].as_u64().expect("bytes_needed");
    assert!(fetched * 5 < needed, "fetched {fetched} of {needed}");
    // The store lists the image under its name, as podman would.
    let out = strata_in(dir.path())
        .args(["images", "list"])
        .output()
        .expect("images list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("localhost/app:v2") && listed.contains("localhost/app:v1"), "{listed}");
}

#[test]
fn two_processes_pulling_one_image_keep_one_copy_of_each_layer() {
    for round in 0..4 {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawn = || {
            strata_in(dir.path())
                .args(["pull", "--json"])
                .arg(format!("oci:{}:v2", example().display()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn strata pull")
        };
        let (a, b) = (spawn(), spawn());
        for child in [a, b] {
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = strata_in(dir.path())
            .args(["layers", "list", "--json"])
            .output()
            .expect("layers list");
        let layers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(layers.as_array().map(Vec::len), Some(2), "round {round}: {layers}");
    }
}

/// `--fs-verity`: a policy that does not parse is named; `required` on a
/// filesystem without fs-verity fails, names the file, and keeps nothing;
/// `if-supported` pulls without it. (The ext4 side is in the facade's
/// tests, in a guest where the kernel lacks fs-verity.)
#[test]
fn pull_fs_verity_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pull = |policy: &str| {
        strata_in(dir.path())
            .args(["pull", "--json"])
            .arg(format!("--fs-verity={policy}"))
            .arg(format!("oci:{}:v1", example().display()))
            .output()
            .expect("run strata pull")
    };
    let out = pull("sometimes");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fs-verity policy \"sometimes\""), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pull("required");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("fs-verity on /"), "{stderr}");
    let listed = strata_in(dir.path())
        .args(["layers", "list"])
        .output()
        .expect("layers list");
    let rows = String::from_utf8_lossy(&listed.stdout).lines().skip(1).count();
    assert!(listed.status.success() && rows == 0, "no layer kept: {listed:?}");
    let out = pull("if-supported");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["layers"].as_array().expect("layers").iter().all(|l| l.get("fs_verity").is_none()), "{report}");
}
