//! Helpers shared by the toc integration tests.

use sha2::{Digest, Sha256};

/// `sha256:HEX` of some bytes.
pub fn sha(b: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}
