//! The footer at the end of a zstd:chunked blob, in each of its dialects.

use crate::error::{Error, Result};

/// Magic of a zstd skippable frame (0x184D2A50, little-endian).
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const MAGIC_CURRENT: &[u8; 8] = b"GNUlInUx";
const MAGIC_LEGACY: &[u8; 8] = b"GnUlInUx";
/// Bytes to read from the end of a blob to find any footer.
pub const FOOTER_READ: usize = 8 + 64;

/// Which containers-storage release wrote the footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// 64 bytes, `GNUlInUx`, with tar-split (c/storage ≥ 1.50).
    Current,
    /// 56 bytes with the legacy magic and 16 zero bytes (c/storage 1.47–1.49).
    Buggy56,
    /// 40 bytes, `GnUlInUx`, no tar-split (c/storage ≤ 1.46).
    Legacy40,
}

/// Where the TOC (and the tar-split) sit in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub dialect: Dialect,
    pub toc_offset: u64,
    pub toc_compressed_len: u64,
    pub toc_len: u64,
    /// `(offset, compressed length, length)` of the tar-split.
    pub tar_split: Option<(u64, u64, u64)>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Parses the footer from the last bytes of a blob (at least
/// [`FOOTER_READ`] of them, or the whole blob if shorter).
pub fn parse(tail: &[u8]) -> Result<Footer> {
    let frame = |payload_len: usize| -> Option<&[u8]> {
        let start = tail.len().checked_sub(8 + payload_len)?;
        let header = &tail[start..start + 8];
        (header[..4] == SKIPPABLE_MAGIC
            && u64::from(u32::from_le_bytes([
                header[4], header[5], header[6], header[7],
            ])) == payload_len as u64)
            .then(|| &tail[start + 8..])
    };
    let (dialect, payload) = if let Some(p) = frame(64).filter(|p| &p[56..64] == MAGIC_CURRENT) {
        (Dialect::Current, p)
    } else if let Some(p) =
        frame(56).filter(|p| &p[32..40] == MAGIC_LEGACY && p[40..56].iter().all(|&b| b == 0))
    {
        (Dialect::Buggy56, p)
    } else if let Some(p) = frame(40).filter(|p| &p[32..40] == MAGIC_LEGACY) {
        (Dialect::Legacy40, p)
    } else {
        return Err(Error::BadFooter(
            "no zstd:chunked footer (magic GNUlInUx or GnUlInUx) at the end of the blob",
        ));
    };
    if u64_at(payload, 24) != 1 {
        return Err(Error::BadFooter("footer manifest type is not 1"));
    }
    let tar_split = (dialect == Dialect::Current)
        .then(|| {
            (
                u64_at(payload, 32),
                u64_at(payload, 40),
                u64_at(payload, 48),
            )
        })
        .filter(|&(offset, len, _)| offset != 0 || len != 0);
    Ok(Footer {
        dialect,
        toc_offset: u64_at(payload, 0),
        toc_compressed_len: u64_at(payload, 8),
        toc_len: u64_at(payload, 16),
        tar_split,
    })
}

/// The 72 bytes (frame header + 64-byte footer) a current writer appends.
pub fn encode(f: &Footer) -> [u8; FOOTER_READ] {
    let mut out = [0u8; FOOTER_READ];
    out[..4].copy_from_slice(&SKIPPABLE_MAGIC);
    out[4..8].copy_from_slice(&64u32.to_le_bytes());
    let (ts_offset, ts_len, ts_ulen) = f.tar_split.unwrap_or((0, 0, 0));
    for (i, v) in [
        f.toc_offset,
        f.toc_compressed_len,
        f.toc_len,
        1,
        ts_offset,
        ts_len,
        ts_ulen,
    ]
    .into_iter()
    .enumerate()
    {
        out[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    out[64..72].copy_from_slice(MAGIC_CURRENT);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_round_trips() {
        let f = Footer {
            dialect: Dialect::Current,
            toc_offset: 100,
            toc_compressed_len: 20,
            toc_len: 80,
            tar_split: Some((128, 10, 300)),
        };
        let bytes = encode(&f);
        assert_eq!(parse(&bytes).expect("parse"), f);
        let mut longer = vec![0xaa; 1000];
        longer.extend_from_slice(&bytes);
        assert_eq!(parse(&longer).expect("parse"), f);
    }

    #[test]
    fn legacy_dialects() {
        let mut legacy = Vec::new();
        legacy.extend_from_slice(&SKIPPABLE_MAGIC);
        legacy.extend_from_slice(&40u32.to_le_bytes());
        for v in [7u64, 8, 9, 1] {
            legacy.extend_from_slice(&v.to_le_bytes());
        }
        legacy.extend_from_slice(MAGIC_LEGACY);
        let f = parse(&legacy).expect("40-byte footer");
        assert_eq!(
            (
                f.dialect,
                f.toc_offset,
                f.toc_compressed_len,
                f.toc_len,
                f.tar_split
            ),
            (Dialect::Legacy40, 7, 8, 9, None)
        );

        let mut buggy = Vec::new();
        buggy.extend_from_slice(&SKIPPABLE_MAGIC);
        buggy.extend_from_slice(&56u32.to_le_bytes());
        for v in [7u64, 8, 9, 1] {
            buggy.extend_from_slice(&v.to_le_bytes());
        }
        buggy.extend_from_slice(MAGIC_LEGACY);
        buggy.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse(&buggy).expect("56-byte footer").dialect,
            Dialect::Buggy56
        );
    }

    #[test]
    fn wrong_magic_is_refused() {
        let f = Footer {
            dialect: Dialect::Current,
            toc_offset: 1,
            toc_compressed_len: 1,
            toc_len: 1,
            tar_split: None,
        };
        let mut bytes = encode(&f);
        bytes[71] ^= 1;
        assert!(matches!(parse(&bytes), Err(Error::BadFooter(_))));
        assert!(parse(&bytes[..10]).is_err());
    }
}
