//! The CRC-64 tar-split stores for each payload: Go's `hash/crc64` with the
//! ISO table, stored big-endian.

use crc_fast::{CrcAlgorithm, Digest};

/// A running CRC-64/GO-ISO, carry-less-multiply accelerated where the CPU
/// has it (payload checksumming is most of tar-split's work).
pub(crate) struct Crc64(Digest);

impl Crc64 {
    pub(crate) fn new() -> Self {
        Crc64(Digest::new(CrcAlgorithm::Crc64GoIso))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The 8 bytes tar-split stores.
    pub(crate) fn finish(self) -> [u8; 8] {
        self.0.finalize().to_be_bytes()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(hex(&c.finish()), "b90956c775a41001");
        let mut c = Crc64::new();
        c.update(b"hel");
        c.update(b"lo\n");
        assert_eq!(hex(&c.finish()), "614c3eeee2d81000");
        assert_eq!(Crc64::new().finish(), [0; 8]);
    }
}
