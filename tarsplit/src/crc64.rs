//! The CRC-64 tar-split stores for each payload: Go's `hash/crc64` with the
//! ISO table, stored big-endian.

use crc::{CRC_64_GO_ISO, Crc, Table};

static ISO: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_GO_ISO);

/// A running CRC-64/GO-ISO.
pub(crate) struct Crc64(crc::Digest<'static, u64, Table<16>>);

impl Crc64 {
    pub(crate) fn new() -> Self {
        Crc64(ISO.digest())
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
