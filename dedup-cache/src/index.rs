//! A layer's index: which file and chunk digests it holds, where. Stored
//! with the layer in a compact binary form:
//!
//! ```text
//! "STRATADC" | version u32 = 1 | count u32
//! count × ( kind u8 (0 file, 1 chunk) | sha256 [32] | offset u64 | length u64 | path_len u16 | path )
//! ```
//! little-endian. Every count and length is checked against the input
//! before it is used.

use std::io::Read;

use sha2::{Digest, Sha256};
use strata_toc::Toc;

const MAGIC: &[u8; 8] = b"STRATADC";
const VERSION: u32 = 1;
/// Fixed part of an entry: kind, digest, offset, length, path length.
const ENTRY_FIXED: usize = 1 + 32 + 8 + 8 + 2;
const MAX_PATH: usize = u16::MAX as usize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("dedup index: {0}")]
    Corrupt(String),
    #[error("dedup index entry: {0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Chunk,
}

/// One file or chunk of a layer, as its index holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry<'a> {
    pub kind: Kind,
    pub digest: &'a [u8; 32],
    pub path: &'a str,
    pub offset: u64,
    pub length: u64,
}

/// The files and chunks of one layer, kept as they are stored (header,
/// then the entries' bytes one after the other, and where each starts):
/// about 65 bytes an entry, where a vector of owned entries took twice
/// that, and a pull holds two layers' worth of 600 000 entries. Neither
/// loading nor storing it copies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerIndex {
    /// The stored form, its count kept current.
    data: Vec<u8>,
    starts: Vec<u32>,
}

impl Default for LayerIndex {
    fn default() -> Self {
        let mut data = Vec::with_capacity(16);
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&VERSION.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        LayerIndex { data, starts: Vec::new() }
    }
}

pub(crate) fn parse_digest(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A TOC or tar name as a path under the layer root: no leading `./` or
/// `/`, no `..`, no empty or `.` components.
fn clean_path(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    if name.contains('\0') {
        return None;
    }
    // Most names are clean already, or but for a leading `./` or `/`:
    // they are taken as they are, with no allocation per TOC entry.
    let mut name = name;
    while let Some(rest) = name.strip_prefix("./").or_else(|| name.strip_prefix('/')) {
        name = rest;
    }
    let (mut clean, mut any) = (true, false);
    for part in name.split('/') {
        match part {
            ".." => return None,
            "" | "." => clean = false,
            _ => any = true,
        }
    }
    if !any {
        return None;
    }
    if clean {
        return Some(std::borrow::Cow::Borrowed(name));
    }
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    Some(std::borrow::Cow::Owned(parts.join("/")))
}

/// The fixed part of a stored entry (`ENTRY_FIXED` bytes): its kind
/// byte, offset, length and path length.
fn fixed_fields(fixed: &[u8]) -> (u8, u64, u64, usize) {
    let u64_at = |at: usize| u64::from_le_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
    (fixed[0], u64_at(33), u64_at(41), usize::from(u16::from_le_bytes([fixed[49], fixed[50]])))
}

impl LayerIndex {
    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The entry at `i`.
    pub fn get(&self, i: usize) -> Option<IndexEntry<'_>> {
        let start = *self.starts.get(i)? as usize;
        let fixed = self.data.get(start..start + ENTRY_FIXED)?;
        let (kind, offset, length, path_len) = fixed_fields(fixed);
        let path = self.data.get(start + ENTRY_FIXED..start + ENTRY_FIXED + path_len)?;
        Some(IndexEntry {
            kind: if kind == 0 { Kind::File } else { Kind::Chunk },
            digest: fixed[1..33].try_into().ok()?,
            path: std::str::from_utf8(path).ok()?,
            offset,
            length,
        })
    }

    /// Its entries in order.
    pub fn entries(&self) -> impl Iterator<Item = IndexEntry<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    pub fn push(&mut self, kind: Kind, digest: &str, path: &str, offset: u64, length: u64) -> Result<(), Error> {
        let digest = parse_digest(digest).ok_or_else(|| Error::Invalid(format!("{digest:?} is not a sha256 digest")))?;
        let path = clean_path(path).ok_or_else(|| Error::Invalid(format!("{path:?} is not a path inside a layer")))?;
        self.push_clean(kind, &digest, &path, offset, length)
    }

    /// Appends an entry whose digest is parsed and path cleaned.
    fn push_clean(&mut self, kind: Kind, digest: &[u8; 32], path: &str, offset: u64, length: u64) -> Result<(), Error> {
        if path.len() > MAX_PATH {
            return Err(Error::Invalid(format!("path of {} bytes", path.len())));
        }
        let start = u32::try_from(self.data.len())
            .ok()
            .filter(|_| self.starts.len() < u32::MAX as usize)
            .ok_or_else(|| Error::Invalid("an index of 4 GiB".into()))?;
        self.starts.push(start);
        self.data.reserve(ENTRY_FIXED + path.len());
        self.data.push(match kind {
            Kind::File => 0,
            Kind::Chunk => 1,
        });
        self.data.extend_from_slice(digest);
        self.data.extend_from_slice(&offset.to_le_bytes());
        self.data.extend_from_slice(&length.to_le_bytes());
        self.data.extend_from_slice(&(path.len() as u16).to_le_bytes());
        self.data.extend_from_slice(path.as_bytes());
        let count = (self.starts.len() as u32).to_le_bytes();
        self.data[12..16].copy_from_slice(&count);
        Ok(())
    }

    /// The files and data chunks a zstd:chunked or eStargz TOC lists.
    /// Entries the index cannot hold (odd names, bad digests) are skipped:
    /// a cache entry is an optimization, never required.
    pub fn from_toc(toc: &Toc) -> LayerIndex {
        let mut index = LayerIndex::default();
        for (i, e) in toc.entries.iter().enumerate() {
            if e.kind != "reg" || e.size <= 0 {
                continue;
            }
            let _ = index.push(Kind::File, &e.digest, &e.name, 0, e.size as u64);
            if let Ok(pieces) = toc.pieces(i) {
                index.push_pieces(&e.name, &pieces);
            }
        }
        index
    }

    /// Adds what one TOC item holds, for a TOC read as a stream.
    pub fn push_toc_item(&mut self, item: &strata_toc::TocItem) {
        let e = &item.entry;
        if e.kind != "reg" || e.size <= 0 {
            return;
        }
        let _ = self.push(Kind::File, &e.digest, &e.name, 0, e.size as u64);
        // A file of one piece has no chunks to index.
        if !item.chunks.is_empty()
            && let Ok(pieces) = item.pieces()
        {
            self.push_pieces(&e.name, &pieces);
        }
    }

    /// The chunks of a file of several.
    fn push_pieces(&mut self, name: &str, pieces: &[strata_toc::Piece]) {
        if pieces.len() < 2 {
            return;
        }
        for p in pieces.iter().filter(|p| !p.zeros) {
            if let Some(d) = &p.digest {
                let _ = self.push(Kind::Chunk, d, name, p.file_offset, p.len);
            }
        }
    }

    /// The regular files under `root`, hashed (for layers that came from
    /// a plain tar and so have no TOC).
    pub fn from_dir(root: &cap_std::fs::Dir) -> Result<LayerIndex, Error> {
        LayerIndex::from_dir_with(root, false)
    }

    /// [`from_dir`](Self::from_dir), and with `chunks` also each file's
    /// chunks, cut as the zstd:chunked writers cut them: what a TOC would
    /// have given, so later partial pulls reuse parts of changed files too
    /// (containers-storage's `convert_images` serves the same end). Costs a
    /// second hash of every byte and the chunker's pass.
    pub fn from_dir_with(root: &cap_std::fs::Dir, chunks: bool) -> Result<LayerIndex, Error> {
        let mut index = LayerIndex::default();
        let mut stack = vec![String::new()];
        let mut buf = vec![0u8; 256 << 10];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                root.try_clone()
            } else {
                root.open_dir(&rel)
            }
            .map_err(|e| Error::Io { path: rel.clone(), source: e })?;
            for entry in dir.entries().map_err(|e| Error::Io { path: rel.clone(), source: e })? {
                let entry = entry.map_err(|e| Error::Io { path: rel.clone(), source: e })?;
                let Ok(name) = entry.file_name().into_string() else { continue };
                let path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let kind = entry.file_type().map_err(|e| Error::Io { path: path.clone(), source: e })?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let io = |e| Error::Io { path: path.clone(), source: e };
                    let mut file = entry.open().map_err(io)?;
                    let mut hash = Sha256::new();
                    let mut pieces = chunks.then(ChunkHasher::default);
                    let mut size = 0u64;
                    loop {
                        let n = file.read(&mut buf).map_err(io)?;
                        if n == 0 {
                            break;
                        }
                        hash.update(&buf[..n]);
                        if let Some(p) = &mut pieces {
                            p.update(&buf[..n]);
                        }
                        size += n as u64;
                    }
                    if size > 0 {
                        let digest: [u8; 32] = hash.finalize().into();
                        let found = pieces.map(ChunkHasher::finish).unwrap_or_default();
                        index.push_clean(Kind::File, &digest, &path, 0, size)?;
                        // A file of one chunk is found as a file.
                        if found.len() > 1 {
                            for (offset, length, digest) in found {
                                index.push_clean(Kind::Chunk, &digest, &path, offset, length)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(index)
    }

    /// Its stored form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    /// Its stored form, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<LayerIndex, Error> {
        LayerIndex::from_vec(bytes.to_vec())
    }

    /// [`from_bytes`](Self::from_bytes), keeping `bytes` as the index's
    /// own: loading a layer's index needs no second copy of it.
    pub fn from_vec(bytes: Vec<u8>) -> Result<LayerIndex, Error> {
        let starts = LayerIndex::parse(&bytes)?;
        Ok(LayerIndex { data: bytes, starts })
    }

    /// Checks a stored index and returns where each entry starts.
    fn parse(bytes: &[u8]) -> Result<Vec<u32>, Error> {
        let corrupt = |what: &str| Error::Corrupt(what.to_owned());
        let header = bytes.get(..16).ok_or_else(|| corrupt("shorter than its header"))?;
        if &header[..8] != MAGIC {
            return Err(corrupt("not a strata dedup index (bad magic)"));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != VERSION {
            return Err(Error::Corrupt(format!("version {version}, expected {VERSION}")));
        }
        let count = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
        // Each entry takes at least ENTRY_FIXED bytes: a lying count cannot
        // become a huge allocation.
        if count > (bytes.len() - 16) / ENTRY_FIXED {
            return Err(Error::Corrupt(format!("{count} entries cannot fit in {} bytes", bytes.len())));
        }
        let mut starts = Vec::with_capacity(count);
        let mut pos = 16;
        for i in 0..count {
            let fixed = bytes.get(pos..pos + ENTRY_FIXED).ok_or_else(|| Error::Corrupt(format!("entry {i} is cut short")))?;
            let (kind, offset, length, path_len) = fixed_fields(fixed);
            if kind > 1 {
                return Err(Error::Corrupt(format!("entry {i} has kind {kind}")));
            }
            pos += ENTRY_FIXED;
            let path = bytes.get(pos..pos + path_len).ok_or_else(|| Error::Corrupt(format!("entry {i}'s path is cut short")))?;
            let path = std::str::from_utf8(path).map_err(|_| Error::Corrupt(format!("entry {i}'s path is not UTF-8")))?;
            if clean_path(path).as_deref() != Some(path) {
                return Err(Error::Corrupt(format!("entry {i}'s path {path:?} is not a clean relative path")));
            }
            if offset.checked_add(length).is_none() {
                return Err(Error::Corrupt(format!("entry {i}'s offset and length overflow")));
            }
            starts.push(u32::try_from(pos - ENTRY_FIXED).map_err(|_| corrupt("larger than 4 GiB"))?);
            pos += path_len;
        }
        if pos != bytes.len() {
            return Err(Error::Corrupt(format!("{} bytes after the last entry", bytes.len() - pos)));
        }
        Ok(starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(clean_path("./etc//hosts/").as_deref(), Some("etc/hosts"));
        assert_eq!(clean_path("/abs"), Some("abs".into()));
        assert_eq!(clean_path("a/../b"), None);
        assert_eq!(clean_path("."), None);
    }

    #[test]
    fn corrupt_indexes_are_named() {
        let mut index = LayerIndex::default();
        index.push(Kind::File, &format!("sha256:{}", "ab".repeat(32)), "etc/x", 0, 5).expect("push");
        let bytes = index.to_bytes();
        assert_eq!(LayerIndex::from_bytes(&bytes).expect("read"), index);
        assert!(LayerIndex::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut lying = bytes.clone();
        lying[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(LayerIndex::from_bytes(&lying), Err(Error::Corrupt(_))));
        let mut escape = bytes.clone();
        let n = escape.len();
        escape[n - 5..].copy_from_slice(b"../xx");
        assert!(LayerIndex::from_bytes(&escape).is_err());
    }

    proptest::proptest! {
        #[test]
        fn indexes_round_trip(
            entries in proptest::collection::vec(
                (proptest::bool::ANY, proptest::array::uniform32(proptest::num::u8::ANY), "[a-z]{1,8}(/[a-z0-9_]{1,8}){0,3}", 0u64..1 << 40, 0u64..1 << 40),
                0..50,
            )
        ) {
            let mut index = LayerIndex::default();
            for (chunk, digest, path, offset, length) in entries {
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                index.push(if chunk { Kind::Chunk } else { Kind::File }, &format!("sha256:{hex}"), &path, offset, length).expect("push");
            }
            proptest::prop_assert_eq!(&LayerIndex::from_bytes(&index.to_bytes()).expect("read"), &index);
            proptest::prop_assert_eq!(&LayerIndex::from_vec(index.to_bytes()).expect("read"), &index);
            let copied = index.to_bytes();
            proptest::prop_assert_eq!(index.into_bytes(), copied);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut with_magic = b"STRATADC\x01\0\0\0".to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = LayerIndex::from_bytes(&bytes);
            let _ = LayerIndex::from_bytes(&with_magic);
        }
    }
}

/// Cuts a stream into chunks and hashes each data chunk, holding only the
/// bytes of chunks not yet closed.
#[derive(Default)]
struct ChunkHasher {
    chunker: strata_toc::chunker::Chunker,
    /// Bytes from `held_from` on, not yet in a closed chunk.
    held: Vec<u8>,
    held_from: u64,
    done: Vec<(u64, u64, [u8; 32])>,
}

impl ChunkHasher {
    fn update(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        let mut closed = Vec::new();
        self.chunker.update(bytes, |c| closed.push(c));
        self.take(closed);
    }

    fn take(&mut self, closed: Vec<strata_toc::chunker::Chunk>) {
        for c in closed {
            let start = (c.offset - self.held_from) as usize;
            let end = start + c.len as usize;
            if c.kind == strata_toc::chunker::ChunkKind::Data {
                let digest: [u8; 32] = Sha256::digest(&self.held[start..end]).into();
                self.done.push((c.offset, c.len, digest));
            }
            self.held.drain(..end);
            self.held_from = c.offset + c.len;
        }
    }

    fn finish(mut self) -> Vec<(u64, u64, [u8; 32])> {
        let mut closed = Vec::new();
        let chunker = std::mem::take(&mut self.chunker);
        chunker.finish(|c| closed.push(c));
        self.take(closed);
        self.done
    }
}
