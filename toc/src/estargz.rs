//! eStargz: gzip members, the TOC `stargz.index.json` as the last tar entry,
//! and a 51-byte footer (an empty gzip member whose extra field holds the TOC
//! offset). The TOC digest is the sha256 of the uncompressed JSON.

use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::read_at::{ReadAt, read_range};
use crate::toc::{Toc, TocHeader, TocItem, check_header, stream_items};
use crate::zstd_chunked::MAX_TOC;

pub use crate::estargz_writer::{EstargzOptions, EstargzWritten, write_estargz};

pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
pub const TOC_NAME: &str = "stargz.index.json";
pub const FOOTER_LEN: u64 = 51;
const LEGACY_FOOTER_LEN: u64 = 47;
const EMPTY_DEFLATE_AND_TRAILER: [u8; 13] = [0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];

/// Where the TOC member starts, and how long the footer is.
pub fn parse_footer(tail: &[u8]) -> Result<(u64, u64)> {
    let hex_offset = |hex: &[u8]| -> Result<u64> {
        let text = std::str::from_utf8(hex)
            .map_err(|_| Error::BadFooter("eStargz TOC offset is not hex"))?;
        u64::from_str_radix(text, 16).map_err(|_| Error::BadFooter("eStargz TOC offset is not hex"))
    };
    let gzip_extra = |f: &[u8]| f[..4] == [0x1f, 0x8b, 0x08, 0x04];
    if tail.len() as u64 >= FOOTER_LEN {
        let f = &tail[tail.len() - FOOTER_LEN as usize..];
        if gzip_extra(f)
            && f[10..16] == [26, 0, b'S', b'G', 22, 0]
            && &f[32..38] == b"STARGZ"
            && f[38..] == EMPTY_DEFLATE_AND_TRAILER
        {
            return Ok((hex_offset(&f[16..32])?, FOOTER_LEN));
        }
    }
    if tail.len() as u64 >= LEGACY_FOOTER_LEN {
        let f = &tail[tail.len() - LEGACY_FOOTER_LEN as usize..];
        if gzip_extra(f)
            && f[10..12] == [22, 0]
            && &f[28..34] == b"STARGZ"
            && f[34..] == EMPTY_DEFLATE_AND_TRAILER
        {
            return Ok((hex_offset(&f[12..28])?, LEGACY_FOOTER_LEN));
        }
    }
    Err(Error::BadFooter("no eStargz footer at the end of the blob"))
}

/// The 51-byte footer for a TOC member at `toc_offset`.
pub fn footer(toc_offset: u64) -> [u8; FOOTER_LEN as usize] {
    let mut f = [0u8; FOOTER_LEN as usize];
    f[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    f[10..16].copy_from_slice(&[26, 0, b'S', b'G', 22, 0]);
    f[16..32].copy_from_slice(format!("{toc_offset:016x}").as_bytes());
    f[32..38].copy_from_slice(b"STARGZ");
    f[38..].copy_from_slice(&EMPTY_DEFLATE_AND_TRAILER);
    f
}

/// An eStargz TOC and what it was checked against.
#[derive(Debug, Clone)]
pub struct EstargzToc {
    pub toc: Toc,
    /// `sha256:` of the uncompressed TOC JSON.
    pub toc_digest: String,
    /// True when the digest matched the layer annotation.
    pub verified: bool,
    pub toc_offset: u64,
    /// The TOC's member decompressed: the tar's last bytes (the TOC
    /// entry's header, the JSON, its padding and the end of the archive).
    pub tar_end: Vec<u8>,
}

/// What [`read_estargz_with`] learned besides the items it handed over.
#[derive(Clone)]
pub struct EstargzTocInfo {
    pub header: TocHeader,
    /// `sha256:` of the uncompressed TOC JSON.
    pub toc_digest: String,
    /// True when the digest matched the layer annotation.
    pub verified: bool,
    pub toc_offset: u64,
    /// The TOC's gzip member as the blob holds it.
    member: Vec<u8>,
}

impl std::fmt::Debug for EstargzTocInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EstargzTocInfo")
            .field("header", &self.header)
            .field("toc_digest", &self.toc_digest)
            .field("verified", &self.verified)
            .field("toc_offset", &self.toc_offset)
            .field("member", &self.member.len())
            .finish()
    }
}

impl EstargzTocInfo {
    /// The tar's last bytes (the TOC entry's header, the JSON, its padding
    /// and the end of the archive), decompressed as they are read: the
    /// TOC's member is kept compressed, a quarter of their size.
    pub fn into_tar_end(self) -> impl Read + Send {
        flate2::read::GzDecoder::new(std::io::Cursor::new(self.member)).take(MAX_TOC + 4096)
    }
}

/// Reads and checks the TOC of an eStargz blob.
pub fn read_estargz<R: ReadAt + ?Sized>(
    blob: &R,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<EstargzToc> {
    let mut entries = Vec::new();
    let info = read_estargz_with(blob, annotations, |item| {
        entries.push(item.entry);
        entries.extend(item.chunks);
        Ok(())
    })?;
    let (toc_digest, verified, toc_offset) = (info.toc_digest.clone(), info.verified, info.toc_offset);
    let toc = Toc {
        version: info.header.version,
        entries,
        tar_split_digest: info.header.tar_split_digest.clone(),
    };
    let mut tar_end = Vec::new();
    info.into_tar_end().read_to_end(&mut tar_end).map_err(|e| Error::Decompress {
        what: "eStargz TOC",
        reason: e.to_string(),
    })?;
    Ok(EstargzToc {
        toc,
        toc_digest,
        verified,
        toc_offset,
        tar_end,
    })
}

/// Reads an eStargz blob's TOC item by item, each validated, handing each
/// to `visit` as it is parsed: a TOC of 200 000 files is never held whole
/// (its JSON is about 100 MB, its entries twice that).
///
/// The digest covers the whole JSON, so it is checked after the last item:
/// when this returns an error, what `visit` built from the items must be
/// dropped. A TOC that fails to parse and also mismatches its annotated
/// digest is reported as the mismatch.
pub fn read_estargz_with<R: ReadAt + ?Sized>(
    blob: &R,
    annotations: Option<&BTreeMap<String, String>>,
    mut visit: impl FnMut(TocItem) -> Result<()>,
) -> Result<EstargzTocInfo> {
    let blob_len = blob.size()?;
    let tail_len = blob_len.min(FOOTER_LEN);
    let mut tail = vec![0u8; tail_len as usize];
    blob.read_exact_at(&mut tail, blob_len - tail_len)?;
    let (toc_offset, footer_len) = parse_footer(&tail)?;
    let member_len = (blob_len - footer_len)
        .checked_sub(toc_offset)
        .ok_or(Error::OutOfBounds {
            what: "eStargz TOC",
            offset: toc_offset,
            len: 0,
            blob_len,
        })?;
    let member = read_range(
        blob,
        "eStargz TOC",
        toc_offset,
        member_len,
        blob_len,
        MAX_TOC,
    )?;

    // The member holds a tar header for stargz.index.json, the JSON, padding
    // and the end-of-archive blocks.
    let decompress_err = |e: std::io::Error| Error::Decompress {
        what: "eStargz TOC",
        reason: e.to_string(),
    };
    let mut gz = flate2::read::GzDecoder::new(&member[..]);
    let mut header = [0u8; 512];
    gz.read_exact(&mut header).map_err(decompress_err)?;
    let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
    if &header[..name_end] != TOC_NAME.as_bytes() {
        return Err(Error::InvalidToc(format!(
            "the TOC member holds {:?}, not {TOC_NAME}",
            String::from_utf8_lossy(&header[..name_end])
        )));
    }
    let size_text = std::str::from_utf8(&header[124..136])
        .unwrap_or_default()
        .trim_matches(|c| c == ' ' || c == '\0');
    let json_len = u64::from_str_radix(size_text, 8)
        .map_err(|_| Error::InvalidToc("TOC tar header has a bad size".into()))?;
    if json_len > MAX_TOC {
        return Err(Error::TooLarge {
            what: "eStargz TOC JSON",
            len: json_len,
            limit: MAX_TOC,
        });
    }
    let mut json = Hashing {
        inner: (&mut gz).take(json_len),
        hash: Sha256::new(),
        read: 0,
    };
    let parsed = stream_items(&mut json, |item| {
        item.validate(toc_offset)?;
        visit(item)
    });
    // The digest covers the JSON to its declared end, whitespace after
    // the object included, and says more than a parse error would.
    let drained = std::io::copy(&mut json, &mut std::io::sink());
    let digest = crate::writer::sha256_hex(json.hash);
    let expected = annotations.and_then(|a| a.get(TOC_DIGEST_ANNOTATION));
    if let Some(expected) = expected
        && *expected != digest
    {
        return Err(Error::DigestMismatch {
            what: "eStargz TOC",
            expected: expected.clone(),
            actual: digest,
        });
    }
    drained.map_err(decompress_err)?;
    if json.read != json_len {
        return Err(Error::Decompress {
            what: "eStargz TOC",
            reason: "the member ends inside the JSON".into(),
        });
    }
    let header = parsed?;
    check_header(header.version, &header.tar_split_digest)?;
    Ok(EstargzTocInfo {
        header,
        toc_digest: digest,
        verified: expected.is_some(),
        toc_offset,
        member,
    })
}

/// Hashes and counts what is read through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trips() {
        let f = footer(0x1234);
        assert_eq!(parse_footer(&f).expect("parse"), (0x1234, 51));
        // The footer is a valid, empty gzip member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert!(out.is_empty());
    }

    #[test]
    fn legacy_footer() {
        let mut f = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0];
        f.extend_from_slice(format!("{:016x}STARGZ", 99).as_bytes());
        f.extend_from_slice(&EMPTY_DEFLATE_AND_TRAILER);
        assert_eq!(parse_footer(&f).expect("parse"), (99, 47));
    }

    #[test]
    fn bad_footers() {
        let mut f = footer(1);
        f[33] = b'X';
        assert!(parse_footer(&f).is_err());
        let mut f = footer(1);
        f[20] = b'g';
        assert!(parse_footer(&f).is_err());
        assert!(parse_footer(&[0; 10]).is_err());
    }
}
