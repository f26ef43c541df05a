//! `strata fsverity`: same output as fsverity-utils, clear errors.

use std::process::Command;

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

#[test]
fn digest_prints_like_fsverity_utils() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hello");
    std::fs::write(&path, b"hello\n").expect("write");
    let out = strata()
        .args(["fsverity", "digest"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "sha256:9c76eecc7b76fcb46199cb27b90cf59a660e10575bb0412128905129d5b1c2aa {}\n",
            path.display()
        )
    );
    let has_tool = Command::new("fsverity")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_tool {
        for args in [vec![], vec!["--salt=0a0b0c", "--block-size=1024"]] {
            let ours = strata()
                .args(["fsverity", "digest"])
                .args(&args)
                .arg(&path)
                .output()
                .expect("run");
            let theirs = Command::new("fsverity")
                .arg("digest")
                .args(&args)
                .arg(&path)
                .output()
                .expect("run");
            assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
        }
    } else if std::env::var("STRATA_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("fsverity not installed, and STRATA_REQUIRE_TOOLS=1");
    } else {
        eprintln!("SKIPPED: fsverity not installed (apt-get install -y fsverity)");
    }
}

#[test]
fn errors_are_one_line() {
    let out = strata()
        .args(["fsverity", "digest", "/nonexistent/file"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot open /nonexistent/file"), "{err}");
    let out = strata()
        .args(["fsverity", "digest", "--block-size=3000", "/etc/hostname"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("block size 3000 is not a power of two"));
}

#[test]
fn measure_on_a_plain_file_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").expect("write");
    let out = strata()
        .args(["fsverity", "measure"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot measure")
            && (err.contains("not supported") || err.contains("not enabled")),
        "{err}"
    );
}
