//! What the libraries report along the way reaches the operator on stderr,
//! as much of it as `STRATA_LOG` asks for.

use std::path::Path;
use std::process::{Command, Output};

fn strata(root: &Path, log: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.arg("--root")
        .arg(root.join("graph"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--driver", "vfs"]);
    c.env_remove("STRATA_LOG");
    if let Some(log) = log {
        c.env("STRATA_LOG", log);
    }
    c
}

fn small_tar(dir: &Path) -> std::path::PathBuf {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "hello", &b"hello"[..]).expect("append");
    let path = dir.join("layer.tar");
    std::fs::write(&path, builder.into_inner().expect("tar")).expect("write tar");
    path
}

/// What a process killed while applying a layer leaves: its record
/// flagged incomplete.
fn leave_incomplete_layer(root: &Path, id: &str) {
    let layers_json = root.join("graph/vfs-layers/layers.json");
    let mut records: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&layers_json).expect("read")).expect("json");
    records.push(serde_json::json!({"id": id, "created": "2026-01-01T00:00:00Z", "flags": {"incomplete": true}}));
    std::fs::write(&layers_json, serde_json::to_vec(&records).expect("json")).expect("write");
}

fn apply(root: &Path, tar: &Path, log: Option<&str>) -> Output {
    let out = strata(root, log).args(["layers", "apply"]).arg(tar).output().expect("run strata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn a_crashed_layer_cleaned_up_is_reported_unless_the_log_is_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar = small_tar(tmp.path());
    let first = apply(tmp.path(), &tar, None);
    assert!(first.stderr.is_empty(), "{}", String::from_utf8_lossy(&first.stderr));

    let ghost = "ab".repeat(32);
    leave_incomplete_layer(tmp.path(), &ghost);
    let second = apply(tmp.path(), &tar, None);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("strata: warning: found incomplete layer {ghost}, deleting it")
    );

    let other = "cd".repeat(32);
    leave_incomplete_layer(tmp.path(), &other);
    let quiet = apply(tmp.path(), &tar, Some("off"));
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
    let listed = strata(tmp.path(), None).args(["layers", "list", "--json"]).output().expect("list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains(&ghost) && !listed.contains(&other), "{listed}");
}

#[test]
fn a_log_setting_that_does_not_parse_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = strata(tmp.path(), Some("strata=loud"))
        .args(["layers", "list"])
        .output()
        .expect("run strata");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("strata: error: STRATA_LOG=\"strata=loud\""), "{stderr}");
}
