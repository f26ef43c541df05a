//! Reading the TOC (and tar-split) of a zstd:chunked blob: located from the
//! layer annotations (trusted) or from the footer, every size checked against
//! the blob and the limits before it is used, the digest checked before a
//! byte is decompressed.

use std::collections::BTreeMap;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::annotations::{self, Location};
use crate::error::{Error, Result};
use crate::footer;
use crate::read_at::{ReadAt, read_range};
use crate::consistency::Lockstep;
use crate::toc::{Toc, TocHeader, TocItem, check_header, stream_items};

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
    /// The tar-split, when the TOC names its digest: checked, and kept
    /// compressed (a layer of 200 000 files has hundreds of MB of it).
    pub tar_split: Option<TarSplit>,
}

/// A blob's tar-split metadata, digest-checked, still compressed.
#[derive(Clone)]
pub struct TarSplit {
    compressed: Vec<u8>,
    len: u64,
}

impl std::fmt::Debug for TarSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarSplit")
            .field("compressed", &self.compressed.len())
            .field("len", &self.len)
            .finish()
    }
}

impl TarSplit {
    /// Decompressed size, as the blob declares it.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its size in the blob.
    pub fn compressed_len(&self) -> u64 {
        self.compressed.len() as u64
    }

    /// The decompressed metadata, streamed; a stream that does not come to
    /// the declared size is an error.
    pub fn reader(&self) -> impl Read + Send + '_ {
        SizedDecoder::new("tar-split", &self.compressed, self.len)
    }

    /// The decompressed metadata, whole.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0).min(MAX_TAR_SPLIT as usize));
        self.reader()
            .read_to_end(&mut out)
            .map_err(|e| Error::Decompress {
                what: "tar-split",
                reason: e.to_string(),
            })?;
        Ok(out)
    }
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

/// Reads and checks the TOC of a zstd:chunked blob. With `annotations`, the
/// location and digest come from them and the TOC must match; without, the
/// footer locates it and `verified` is false.
pub fn read_zstd_chunked<R: ReadAt + ?Sized>(
    blob: &R,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<ChunkedToc> {
    let mut entries = Vec::new();
    let info = read_zstd_chunked_with(blob, annotations, |item| {
        entries.push(item.entry);
        entries.extend(item.chunks);
        Ok(())
    })?;
    Ok(ChunkedToc {
        toc: Toc {
            version: info.header.version,
            entries,
            tar_split_digest: info.header.tar_split_digest,
        },
        toc_digest: info.toc_digest,
        verified: info.verified,
        location: info.location,
        tar_split: info.tar_split,
    })
}

/// What [`read_zstd_chunked_with`] found besides the TOC's items.
#[derive(Debug, Clone)]
pub struct ChunkedTocInfo {
    pub header: TocHeader,
    /// `sha256:` of the compressed TOC.
    pub toc_digest: String,
    /// See [`ChunkedToc::verified`].
    pub verified: bool,
    pub location: Location,
    /// The tar-split, when the TOC names its digest: checked against it,
    /// and against the TOC entry by entry.
    pub tar_split: Option<TarSplit>,
}

/// [`read_zstd_chunked`] without holding the TOC: each item (an entry with
/// its chunks) is validated, compared with the tar-split's header for it,
/// and handed to `visit`, in order. Memory stays bounded by the compressed
/// TOC and tar-split, whatever the number of entries. `visit` may have
/// seen every item when the read fails at the end (a tar-split that does
/// not match its digest, say): act on the items only once this returns.
pub fn read_zstd_chunked_with<R: ReadAt + ?Sized>(
    blob: &R,
    annotations: Option<&BTreeMap<String, String>>,
    visit: impl FnMut(TocItem) -> Result<()>,
) -> Result<ChunkedTocInfo> {
    read_with(blob, annotations, true, visit)
}

/// [`read_zstd_chunked_with`] without the tar-split: neither fetched nor
/// compared (`tar_split` comes back `None`, and the location still says
/// where it lies). For a reader that rebuilds the tar's headers otherwise
/// and checks them by the diffID.
pub fn read_zstd_chunked_toc_with<R: ReadAt + ?Sized>(
    blob: &R,
    annotations: Option<&BTreeMap<String, String>>,
    visit: impl FnMut(TocItem) -> Result<()>,
) -> Result<ChunkedTocInfo> {
    read_with(blob, annotations, false, visit)
}

/// The tar-split a TOC read by [`read_zstd_chunked_toc_with`] names, read
/// on its own afterwards and checked against the TOC's digest for it.
pub fn read_tar_split<R: ReadAt + ?Sized>(blob: &R, info: &ChunkedTocInfo) -> Result<TarSplit> {
    let (offset, len, ulen) = info.location.tar_split.ok_or_else(|| {
        Error::InvalidToc("the TOC names a tar-split digest but its position is unknown".into())
    })?;
    if ulen > MAX_TAR_SPLIT {
        return Err(Error::TooLarge {
            what: "tar-split",
            len: ulen,
            limit: MAX_TAR_SPLIT,
        });
    }
    let compressed = read_range(blob, "tar-split", offset, len, blob.size()?, MAX_TAR_SPLIT)?;
    let actual = sha256(&compressed);
    if actual != info.header.tar_split_digest {
        return Err(Error::DigestMismatch {
            what: "tar-split",
            expected: info.header.tar_split_digest.clone(),
            actual,
        });
    }
    Ok(TarSplit { compressed, len: ulen })
}

fn read_with<R: ReadAt + ?Sized>(
    blob: &R,
    annotations: Option<&BTreeMap<String, String>>,
    with_tar_split: bool,
    mut visit: impl FnMut(TocItem) -> Result<()>,
) -> Result<ChunkedTocInfo> {
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
    // Every writer puts the tar-split right after the TOC: one read (one
    // request to a registry) brings both.
    let mut prefetched_split = None;
    let toc_end = location.toc_offset.checked_add(location.toc_compressed_len);
    let wanted_split = location.tar_split.filter(|_| with_tar_split);
    let compressed = match (wanted_split, toc_end) {
        (Some((offset, len, _)), Some(toc_end))
            if location.toc_compressed_len <= MAX_TOC
                && len <= MAX_TAR_SPLIT
                && offset >= toc_end
                && offset - toc_end <= 64
                && offset.checked_add(len).is_some_and(|end| end <= blob_len) =>
        {
            let span = offset + len - location.toc_offset;
            let mut both = read_range(blob, "TOC and tar-split", location.toc_offset, span, blob_len, span)?;
            prefetched_split = Some(both.split_off((offset - location.toc_offset) as usize));
            both.truncate(location.toc_compressed_len as usize);
            both
        }
        _ => read_range(
            blob,
            "TOC",
            location.toc_offset,
            location.toc_compressed_len,
            blob_len,
            MAX_TOC,
        )?,
    };
    let digest = sha256(&compressed);
    if verified && digest != location.toc_digest {
        return Err(Error::DigestMismatch {
            what: "TOC",
            expected: location.toc_digest.clone(),
            actual: digest,
        });
    }
    if location.toc_len > MAX_TOC {
        return Err(Error::TooLarge {
            what: "TOC",
            len: location.toc_len,
            limit: MAX_TOC,
        });
    }
    // The tar-split comes first, so that each TOC entry is compared with
    // its header as it is read; whether the tar-split is the one the TOC
    // names is known at the TOC's end.
    let tar_split = match wanted_split {
        Some((offset, len, ulen)) => {
            if ulen > MAX_TAR_SPLIT {
                return Err(Error::TooLarge {
                    what: "tar-split",
                    len: ulen,
                    limit: MAX_TAR_SPLIT,
                });
            }
            let compressed = match prefetched_split.take() {
                Some(bytes) => bytes,
                None => read_range(blob, "tar-split", offset, len, blob_len, MAX_TAR_SPLIT)?,
            };
            Some(TarSplit { compressed, len: ulen })
        }
        None => None,
    };
    let tar_split_digest = tar_split.as_ref().map(|t| sha256(&t.compressed));
    // Payload frames lie before the TOC's skippable frame header.
    let data_end = location.toc_offset.saturating_sub(8);
    let (header, rest) = std::thread::scope(|scope| {
        let mut lockstep = tar_split.as_ref().map(|t| Lockstep::spawn(scope, t.reader()));
        // A mismatch counts only if the tar-split turns out to be the TOC's.
        let mut inconsistency: Option<Error> = None;
        let mut json = SizedDecoder::new("TOC", &compressed, location.toc_len);
        let header = stream_items(&mut json, |item| {
            item.validate(data_end)?;
            if inconsistency.is_none()
                && let Some(l) = &mut lockstep
                && let Err(e) = l.check(&item)
            {
                inconsistency = Some(e);
            }
            visit(item)
        })
        .map_err(|e| match json.failure.take() {
            Some(reason) => Error::Decompress { what: "TOC", reason },
            None => e,
        })?;
        let rest = match (lockstep, inconsistency) {
            (Some(l), None) => l.finish(),
            (_, Some(e)) => Err(e),
            (None, None) => Ok(()),
        };
        Ok::<_, Error>((header, rest))
    })?;
    check_header(header.version, &header.tar_split_digest)?;
    let tar_split = if header.tar_split_digest.is_empty() || !with_tar_split {
        None
    } else {
        let tar_split = tar_split.ok_or_else(|| {
            Error::InvalidToc("the TOC names a tar-split digest but its position is unknown".into())
        })?;
        let actual = tar_split_digest.unwrap_or_default();
        if actual != header.tar_split_digest {
            return Err(Error::DigestMismatch {
                what: "tar-split",
                expected: header.tar_split_digest.clone(),
                actual,
            });
        }
        rest?;
        Some(tar_split)
    };
    let location = Location {
        toc_digest: digest.clone(),
        ..location
    };
    Ok(ChunkedTocInfo {
        header,
        toc_digest: digest,
        verified,
        location,
        tar_split,
    })
}

/// A zstd stream that must decompress to exactly its declared size.
struct SizedDecoder<'a> {
    what: &'static str,
    decoder: Option<zstd::stream::read::Decoder<'a, &'a [u8]>>,
    declared: u64,
    read: u64,
    /// Why decompressing failed, once it has.
    failure: Option<String>,
}

impl<'a> SizedDecoder<'a> {
    fn new(what: &'static str, compressed: &'a [u8], declared: u64) -> Self {
        SizedDecoder {
            what,
            decoder: zstd::stream::read::Decoder::with_buffer(compressed).ok(),
            declared,
            read: 0,
            failure: None,
        }
    }

    fn decode(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        let decoder = self.decoder.as_mut().ok_or("cannot start decompressing")?;
        let n = decoder.read(buf).map_err(|e| format!("does not decompress: {e}"))?;
        self.read += n as u64;
        if self.read > self.declared || (n == 0 && !buf.is_empty() && self.read != self.declared) {
            return Err(format!(
                "decompresses to {}{} bytes, the blob declared {}",
                if n == 0 { "" } else { "more than " },
                self.read,
                self.declared
            ));
        }
        Ok(n)
    }
}

impl Read for SizedDecoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decode(buf).map_err(|reason| {
            let e = io::Error::new(io::ErrorKind::InvalidData, format!("{}: {reason}", self.what));
            self.failure = Some(reason);
            e
        })
    }
}
