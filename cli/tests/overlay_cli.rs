//! `strata overlay diff` on a real overlay mount: the upperdir differ and
//! `--walk` give layers that reproduce the merged view.

use std::fs;
use std::path::Path;
use std::process::Command;

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

fn can_mount() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: overlay mounts need root");
    }
    root
}

fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    assert!(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(merged)
            .status()
            .expect("mount")
            .success()
    );
}

use strata_test_support::unmount;

fn names(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .expect("entries")
        .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
        .collect()
}

#[test]
fn diff_from_dirs_and_from_mount_options() {
    if !can_mount() {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = base.path().join(d);
        fs::create_dir_all(&p).expect("mkdir");
        p
    });
    fs::create_dir_all(lower.join("etc")).expect("mkdir");
    fs::write(lower.join("etc/hosts"), b"127.0.0.1 localhost\n").expect("write");
    fs::write(lower.join("etc/gone"), b"x").expect("write");
    mount(&lower, &upper, &work, &merged);
    fs::write(merged.join("etc/hosts"), b"127.0.0.1 changed\n").expect("write");
    fs::remove_file(merged.join("etc/gone")).expect("rm");
    fs::write(merged.join("new"), b"new").expect("write");

    // --walk mounts the two views itself, read-only, next to the live mount.
    let walk = strata()
        .args(["overlay", "diff", "--walk", "--lower"])
        .arg(&lower)
        .arg("--upper")
        .arg(&upper)
        .output()
        .expect("run");
    assert!(
        walk.status.success(),
        "{}",
        String::from_utf8_lossy(&walk.stderr)
    );
    unmount(&merged);

    let out = base.path().join("layer.tar");
    let st = strata()
        .args(["overlay", "diff", "--lower"])
        .arg(&lower)
        .arg("--upper")
        .arg(&upper)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run");
    assert!(st.success());
    let upper_names = names(&fs::read(&out).expect("layer"));
    assert_eq!(upper_names, vec!["etc/.wh.gone", "etc/hosts", "new"]);
    assert_eq!(names(&walk.stdout), upper_names);

    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    let via_opts = strata()
        .args(["overlay", "diff", "--mount-options", &opts])
        .output()
        .expect("run");
    assert!(via_opts.status.success());
    assert_eq!(names(&via_opts.stdout), upper_names);

    let bad = strata()
        .args([
            "overlay",
            "diff",
            "--mount-options",
            "lowerdir=/x,upperdir=/y,frobnicate",
        ])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("unknown overlay mount option \"frobnicate\"")
    );
}
