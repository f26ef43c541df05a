//! The nydus data-blob envelope: sections each followed (not preceded) by a
//! 512-byte tar-like header, data unpadded, and a table of 128-byte entries
//! at the tail (`rafs.blob.toc`). Find a section by that table, or, for old
//! blobs without one, by walking the headers back from the end.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::read_at::{ReadAt, read_range};

const HEADER: u64 = 512;
const ENTRY: usize = 128;
pub const TOC_NAME: &str = "rafs.blob.toc";
/// Largest TOC section read (nydus-snapshotter's limit).
const MAX_TOC: u64 = 1 << 20;

pub const COMPRESSOR_NONE: u32 = 0x1;
pub const COMPRESSOR_ZSTD: u32 = 0x2;
pub const COMPRESSOR_LZ4: u32 = 0x4;
const COMPRESSOR_MASK: u32 = 0xf;

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidToc(format!("nydus: {}", reason.into()))
}

/// One 128-byte TOC entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    pub flags: u32,
    pub name: String,
    pub uncompressed_digest: [u8; 32],
    pub compressed_offset: u64,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

impl TocEntry {
    fn parse(b: &[u8]) -> Result<TocEntry> {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let flags = u32_at(0);
        if flags & !COMPRESSOR_MASK != 0 || (flags & COMPRESSOR_MASK).count_ones() > 1 {
            return Err(invalid(format!("unknown TOC entry flags {flags:#x}")));
        }
        let raw_name = &b[8..24];
        let name_len = raw_name.iter().position(|&c| c == 0).unwrap_or(16);
        let name = std::str::from_utf8(&raw_name[..name_len])
            .map_err(|_| invalid("TOC entry name is not text"))?;
        let mut uncompressed_digest = [0u8; 32];
        uncompressed_digest.copy_from_slice(&b[24..56]);
        // Bytes 80..128 are reserved; blobs in the wild carry garbage there.
        Ok(TocEntry {
            flags,
            name: name.to_string(),
            uncompressed_digest,
            compressed_offset: u64_at(56),
            compressed_size: u64_at(64),
            uncompressed_size: u64_at(72),
        })
    }

    fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[0..4].copy_from_slice(&self.flags.to_le_bytes());
        let name = self.name.as_bytes();
        b[8..8 + name.len().min(16)].copy_from_slice(&name[..name.len().min(16)]);
        b[24..56].copy_from_slice(&self.uncompressed_digest);
        b[56..64].copy_from_slice(&self.compressed_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.compressed_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.uncompressed_size.to_le_bytes());
        b
    }
}

/// The header nydus writes after a section: `tar::Header::new_gnu()` with
/// only name, type and size set, reproduced byte for byte.
pub fn header(name: &str, size: u64) -> [u8; HEADER as usize] {
    let mut b = [0u8; HEADER as usize];
    let n = name.as_bytes();
    b[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    if size < 1 << 33 {
        b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        b[124] = 0x80;
        b[128..136].copy_from_slice(&size.to_be_bytes());
    }
    b[136..148].copy_from_slice(b"00000000000\0");
    b[156] = b'0';
    b[257..265].copy_from_slice(b"ustar  \0");
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:07o}\0").as_bytes());
    b
}

/// A header's section name and size, after checking its checksum.
pub fn parse_header(b: &[u8]) -> Result<(String, u64)> {
    if b.len() != HEADER as usize {
        return Err(invalid("short header"));
    }
    let field = &b[148..156];
    let stored = std::str::from_utf8(field)
        .ok()
        .map(|s| s.trim_matches(|c| c == ' ' || c == '\0'))
        .and_then(|s| u32::from_str_radix(s, 8).ok())
        .ok_or_else(|| invalid("header checksum is not octal"))?;
    let sum: u32 = b
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(x)
            }
        })
        .sum();
    if stored != sum {
        return Err(invalid("header checksum mismatch"));
    }
    if !matches!(b[156], b'0' | 0) {
        return Err(invalid("header is not a regular entry"));
    }
    let name_end = b[..100].iter().position(|&c| c == 0).unwrap_or(100);
    let name = String::from_utf8_lossy(&b[..name_end]).into_owned();
    let size = if b[124] & 0x80 != 0 {
        if b[124..128].iter().skip(1).any(|&x| x != 0) {
            return Err(invalid("header size too large"));
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[128..136]);
        u64::from_be_bytes(w)
    } else {
        let text =
            std::str::from_utf8(&b[124..136]).map_err(|_| invalid("header size is not octal"))?;
        let text = text.trim_matches(|c| c == ' ' || c == '\0');
        if text.is_empty() {
            0
        } else {
            u64::from_str_radix(text, 8).map_err(|_| invalid("header size is not octal"))?
        }
    };
    Ok((name, size))
}

/// The TOC at the tail of a blob; `None` for a blob without one.
pub fn read_toc<R: ReadAt + ?Sized>(blob: &R) -> Result<Option<Vec<TocEntry>>> {
    let blob_len = blob.size()?;
    if blob_len < HEADER {
        return Err(invalid("blob shorter than one header"));
    }
    let (name, size) = parse_header(&read_range(
        blob,
        "nydus header",
        blob_len - HEADER,
        HEADER,
        blob_len,
        u64::MAX,
    )?)?;
    if name != TOC_NAME {
        return Ok(None);
    }
    if size > MAX_TOC {
        return Err(Error::TooLarge {
            what: "nydus TOC",
            len: size,
            limit: MAX_TOC,
        });
    }
    if !size.is_multiple_of(ENTRY as u64) {
        return Err(invalid(format!(
            "TOC of {size} bytes is not a multiple of 128"
        )));
    }
    let start = (blob_len - HEADER)
        .checked_sub(size)
        .ok_or_else(|| invalid("TOC larger than the blob"))?;
    let data = read_range(blob, "nydus TOC", start, size, blob_len, u64::MAX)?;
    data.chunks_exact(ENTRY)
        .map(TocEntry::parse)
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Finds a section by walking headers back from the end of the blob (how
/// blobs without a TOC are read). Returns `(offset, size)` of its data.
pub fn find_by_walk<R: ReadAt + ?Sized>(blob: &R, name: &str) -> Result<Option<(u64, u64)>> {
    let blob_len = blob.size()?;
    let mut cur = blob_len
        .checked_sub(HEADER)
        .ok_or_else(|| invalid("blob shorter than one header"))?;
    loop {
        let (found, size) = parse_header(&read_range(
            blob,
            "nydus header",
            cur,
            HEADER,
            blob_len,
            u64::MAX,
        )?)?;
        let start = cur
            .checked_sub(size)
            .ok_or_else(|| invalid(format!("section {found:?} is larger than what precedes it")))?;
        if found == name {
            return Ok(Some((start, size)));
        }
        match start.checked_sub(HEADER) {
            Some(next) => cur = next,
            None => return Ok(None),
        }
    }
}

/// Writes a section's content to `out`: found by the TOC (decompressed and
/// checked against its size and digest), else by walking the headers.
/// Returns the bytes written, or `None` when the blob has no such section.
/// The content is streamed: on an error `out` may hold part of it.
pub fn unpack<R: ReadAt + ?Sized, W: Write>(
    blob: &R,
    name: &str,
    mut out: W,
) -> Result<Option<u64>> {
    let blob_len = blob.size()?;
    if let Some(entry) = read_toc(blob)?.and_then(|toc| toc.into_iter().find(|e| e.name == name)) {
        // The image.blob entry's offset is unreliable in real blobs, and its
        // digest covers its header too: locate it by the header walk.
        if name != "image.blob" {
            let data = read_range(
                blob,
                "nydus section",
                entry.compressed_offset,
                entry.compressed_size,
                blob_len,
                u64::MAX,
            )?;
            // Streamed: a declared size is a claim, never an allocation.
            let mut reader: Box<dyn Read + '_> = match entry.flags & COMPRESSOR_MASK {
                COMPRESSOR_ZSTD => Box::new(zstd::stream::read::Decoder::new(&data[..]).map_err(|e| {
                    Error::Decompress {
                        what: "nydus section",
                        reason: e.to_string(),
                    }
                })?),
                COMPRESSOR_NONE | 0 => Box::new(&data[..]),
                other => {
                    return Err(invalid(format!(
                        "section {name:?} uses unsupported compressor {other:#x}"
                    )));
                }
            };
            let mut hasher = Sha256::new();
            let mut written = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Error::Decompress {
                            what: "nydus section",
                            reason: e.to_string(),
                        });
                    }
                };
                written += n as u64;
                if written > entry.uncompressed_size {
                    return Err(invalid(format!(
                        "section {name:?} is larger than the {} bytes the TOC says",
                        entry.uncompressed_size
                    )));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            if written != entry.uncompressed_size {
                return Err(invalid(format!(
                    "section {name:?} is {written} bytes, the TOC says {}",
                    entry.uncompressed_size
                )));
            }
            let digest: [u8; 32] = hasher.finalize().into();
            if entry.uncompressed_digest != [0; 32] && digest != entry.uncompressed_digest {
                return Err(Error::DigestMismatch {
                    what: "nydus section",
                    expected: hex(&entry.uncompressed_digest),
                    actual: hex(&digest),
                });
            }
            return Ok(Some(written));
        }
    }
    let Some((offset, size)) = find_by_walk(blob, name)? else {
        return Ok(None);
    };
    let data = read_range(blob, "nydus section", offset, size, blob_len, u64::MAX)?;
    out.write_all(&data)?;
    Ok(Some(size))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes sections in the envelope, then (optionally) the TOC.
#[derive(Debug)]
pub struct Packer<W: Write> {
    out: W,
    pos: u64,
    entries: Vec<TocEntry>,
}

impl<W: Write> Packer<W> {
    pub fn new(out: W) -> Self {
        Packer {
            out,
            pos: 0,
            entries: Vec::new(),
        }
    }

    /// Appends a section, stored as given (`zstd` compresses it first).
    pub fn add<R: Read>(&mut self, name: &str, mut content: R, zstd: bool) -> Result<()> {
        if name.len() > 16 {
            return Err(invalid(format!(
                "section name {name:?} is longer than 16 bytes"
            )));
        }
        let mut data = Vec::new();
        content.read_to_end(&mut data)?;
        let digest: [u8; 32] = Sha256::digest(&data).into();
        let uncompressed_size = data.len() as u64;
        let (flags, stored) = if zstd {
            (
                COMPRESSOR_ZSTD,
                zstd::bulk::compress(&data, 3).map_err(Error::Io)?,
            )
        } else {
            (COMPRESSOR_NONE, data)
        };
        self.out.write_all(&stored)?;
        self.out.write_all(&header(name, stored.len() as u64))?;
        self.entries.push(TocEntry {
            flags,
            name: name.to_string(),
            uncompressed_digest: digest,
            compressed_offset: self.pos,
            compressed_size: stored.len() as u64,
            uncompressed_size,
        });
        self.pos += stored.len() as u64 + HEADER;
        Ok(())
    }

    /// Writes the TOC section and returns the writer and the TOC digest
    /// (sha256 of entries and their header, as the Rust builder records it).
    pub fn finish(mut self) -> Result<(W, [u8; 32])> {
        let mut toc = Vec::with_capacity(self.entries.len() * ENTRY + HEADER as usize);
        for e in &self.entries {
            toc.extend_from_slice(&e.encode());
        }
        toc.extend_from_slice(&header(TOC_NAME, (self.entries.len() * ENTRY) as u64));
        self.out.write_all(&toc)?;
        Ok((self.out, Sha256::digest(&toc).into()))
    }

    /// Ends without a TOC (as old builders did).
    pub fn finish_without_toc(self) -> io::Result<W> {
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_the_tar_crate() {
        for (name, size) in [
            ("image.blob", 2829u64),
            ("rafs.blob.toc", 640),
            ("blob.meta", 0),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).expect("path");
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_cksum();
            assert_eq!(&header(name, size)[..], h.as_bytes(), "{name}");
            assert_eq!(
                parse_header(&header(name, size)).expect("parse"),
                (name.to_string(), size)
            );
        }
    }
}
