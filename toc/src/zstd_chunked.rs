//! Reading the TOC (and tar-split) of a zstd:chunked blob: located from the
//! layer annotations (trusted) or from the footer, every size checked against
//! the blob and the limits before it is used, the digest checked before a
//! byte is decompressed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::annotations::{self, Location};
use crate::error::{Error, Result};
use crate::footer;
use crate::read_at::{ReadAt, read_range};
use crate::toc::Toc;

/// Largest TOC accepted, compressed or not (containers-storage's limit).
pub const MAX_TOC: u64 = 150 << 20;
/// Largest tar-split accepted, compressed or not.
pub const MAX_TAR_SPLIT: u64 = 1 << 30;

/// A blob's TOC, with what it was checked against.
#[derive(Debug, Clone)]
pub struct ChunkedToc {
    pub toc: Toc,
    /// `sha256:` of the compressed TOC.
    pub toc_digest: String,
    /// True when the digest was checked against the layer annotations;
    /// false when the TOC was found by the footer alone (nothing vouches
    /// for it then).
    pub verified: bool,
    pub location: Location,
    /// The decompressed tar-split, when the TOC names its digest.
    pub tar_split: Option<Vec<u8>>,
}

fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn decompress(what: &'static str, compressed: &[u8], declared: u64, limit: u64) -> Result<Vec<u8>> {
    if declared > limit {
        return Err(Error::TooLarge {
            what,
            len: declared,
            limit,
        });
    }
    let out =
        zstd::bulk::decompress(compressed, declared as usize).map_err(|e| Error::Decompress {
            what,
            reason: e.to_string(),
        })?;
    if out.len() as u64 != declared {
        return Err(Error::Decompress {
            what,
            reason: format!("{} bytes, the blob declared {declared}", out.len()),
        });
    }
    Ok(out)
}

/// Reads and checks the TOC of a zstd:chunked blob. With `annotations`, the
/// location and digest come from them and the TOC must match; without, the
/// footer locates it and `verified` is false.
pub fn read_zstd_chunked<R: ReadAt + ?Sized>(
    blob: &R,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<ChunkedToc> {
    let blob_len = blob.size()?;
    let from_annotations = match annotations {
        Some(a) => annotations::location(a)?,
        None => None,
    };
    let (location, verified) = match from_annotations {
        Some(loc) => (loc, true),
        None => {
            let tail_len = blob_len.min(footer::FOOTER_READ as u64);
            let tail = read_range(
                blob,
                "footer",
                blob_len - tail_len,
                tail_len,
                blob_len,
                footer::FOOTER_READ as u64,
            )?;
            let f = footer::parse(&tail)?;
            let loc = Location {
                toc_digest: String::new(),
                toc_offset: f.toc_offset,
                toc_compressed_len: f.toc_compressed_len,
                toc_len: f.toc_len,
                tar_split: f.tar_split,
            };
            (loc, false)
        }
    };
    let compressed = read_range(
        blob,
        "TOC",
        location.toc_offset,
        location.toc_compressed_len,
        blob_len,
        MAX_TOC,
    )?;
    let digest = sha256(&compressed);
    if verified && digest != location.toc_digest {
        return Err(Error::DigestMismatch {
            what: "TOC",
            expected: location.toc_digest.clone(),
            actual: digest,
        });
    }
    let json = decompress("TOC", &compressed, location.toc_len, MAX_TOC)?;
    let toc = Toc::parse(&json)?;
    // Payload frames lie before the TOC's skippable frame header.
    toc.validate(location.toc_offset.saturating_sub(8))?;

    let tar_split = if toc.tar_split_digest.is_empty() {
        None
    } else {
        let (offset, len, ulen) = location.tar_split.ok_or_else(|| {
            Error::InvalidToc("the TOC names a tar-split digest but its position is unknown".into())
        })?;
        let compressed = read_range(blob, "tar-split", offset, len, blob_len, MAX_TAR_SPLIT)?;
        let actual = sha256(&compressed);
        if actual != toc.tar_split_digest {
            return Err(Error::DigestMismatch {
                what: "tar-split",
                expected: toc.tar_split_digest.clone(),
                actual,
            });
        }
        let tar_split = decompress("tar-split", &compressed, ulen, MAX_TAR_SPLIT)?;
        crate::consistency::check(&toc, &tar_split)?;
        Some(tar_split)
    };
    let location = Location {
        toc_digest: digest.clone(),
        ..location
    };
    Ok(ChunkedToc {
        toc,
        toc_digest: digest,
        verified,
        location,
        tar_split,
    })
}
