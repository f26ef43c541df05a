#![allow(dead_code)] // each test binary uses a different subset

use std::process::{Command, Stdio};

/// Whether `tool` can be run; skipped with a message when not, unless
/// `STRATA_REQUIRE_TOOLS=1` (CI), where it fails.
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

/// `fsverity digest` of a file, as `sha256:HEX`.
pub fn fsverity_utils_digest(path: &std::path::Path, block_size: usize, salt: &[u8]) -> String {
    let mut cmd = Command::new("fsverity");
    cmd.arg("digest")
        .arg("--compact")
        .arg(format!("--block-size={block_size}"));
    if !salt.is_empty() {
        let hex: String = salt.iter().map(|b| format!("{b:02x}")).collect();
        cmd.arg(format!("--salt={hex}"));
    }
    let out = cmd.arg(path).output().expect("run fsverity");
    assert!(
        out.status.success(),
        "fsverity digest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim())
}
