//! Helpers for tests that drive the reference tools.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Whether `tool` can be run. Without it the test is skipped with a clear
/// message, unless `STRATA_REQUIRE_TOOLS=1` (set by CI), where a missing
/// tool fails the test instead.
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let msg = format!("{tool} not installed (apt-get install -y {package})");
        if std::env::var("STRATA_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{msg}, and STRATA_REQUIRE_TOOLS=1");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Runs a command and panics with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh scratch directory under cargo's target/tmp.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn gunzip(path: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).expect("open"))
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}
