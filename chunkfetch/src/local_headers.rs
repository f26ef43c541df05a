//! Tar headers a local layer already has, standing in for the header
//! frames of a blob being pulled.
//!
//! An updated image's layer repeats most of its predecessor's entries
//! unchanged, and a tar writer gives an unchanged entry the same header
//! bytes. So the headers of an entry the TOC describes exactly as a local
//! layer's tar-split does are taken from that tar-split instead of fetched.
//! A guess that is wrong in a byte the TOC does not record (a PAX record it
//! drops, a formatting choice) shows as a wrong diffID, and the layer is
//! then rebuilt from what the blob itself carries.

use std::collections::HashMap;
use std::io::Read;

use strata_tarsplit::{Entry as SplitEntry, MetadataReader, header_of};
use strata_toc::Entry;

use crate::toc_layer::name_hash;

/// How many header bytes are kept at most: beyond, entries are left to
/// the blob's frames (a layer of 200 000 files with PAX headers would
/// otherwise hold 300 MB).
const MAX_BYTES: usize = 64 << 20;

/// The header blocks of each entry of a local layer, by name.
#[derive(Default)]
pub struct LocalHeaders {
    arena: Vec<u8>,
    by_name: HashMap<u64, Span>,
}

/// Where one entry's header blocks lie: in the local layer's arena, or
/// (`patched`) in the plan's own, for a header changed to fit the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) offset: u32,
    pub(crate) len: u32,
    pub(crate) patched: bool,
}

/// Marks a name seen twice: neither copy is a safe guess.
const AMBIGUOUS: Span = Span {
    offset: u32::MAX,
    len: 0,
    patched: false,
};

impl std::fmt::Debug for LocalHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHeaders")
            .field("entries", &self.by_name.len())
            .field("bytes", &self.arena.len())
            .finish()
    }
}

impl LocalHeaders {
    /// Reads a layer's tar-split metadata (uncompressed records).
    pub fn from_tar_split<R: Read>(records: R) -> std::io::Result<LocalHeaders> {
        let mut headers = LocalHeaders::default();
        let mut segment = Vec::new();
        // Padding of the payload before: it opens the next segment.
        let mut padding = 0usize;
        for record in MetadataReader::new(records) {
            match record.map_err(std::io::Error::other)? {
                SplitEntry::Segment(bytes) => segment.extend_from_slice(&bytes),
                SplitEntry::File(file) => {
                    let blocks = segment.get(padding..).filter(|_| segment[..padding].iter().all(|&b| b == 0));
                    if let Some(blocks) = blocks {
                        headers.add(&file.name, blocks);
                    }
                    segment.clear();
                    padding = pad(file.size.max(0) as u64) as usize;
                }
            }
        }
        Ok(headers)
    }

    fn add(&mut self, name: &[u8], blocks: &[u8]) {
        if blocks.is_empty() || !blocks.len().is_multiple_of(512) || self.arena.len() + blocks.len() > MAX_BYTES {
            return;
        }
        let span = Span {
            offset: self.arena.len() as u32,
            len: blocks.len() as u32,
            patched: false,
        };
        match self.by_name.entry(name_hash(name)) {
            std::collections::hash_map::Entry::Occupied(mut seen) => {
                seen.insert(AMBIGUOUS);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(span);
                self.arena.extend_from_slice(blocks);
            }
        }
    }

    /// How many entries it knows.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The header blocks of the local entry of that name, when they say
    /// exactly what the TOC says of `listed`; or, for a file whose size or
    /// time changed, a copy of its single header block with those fields
    /// rewritten in the same style, appended to `patched`.
    pub(crate) fn find(&self, listed: &Entry, patched: &mut Vec<u8>) -> Option<Span> {
        let span = *self.by_name.get(&name_hash(listed.name.as_bytes()))?;
        if span == AMBIGUOUS {
            return None;
        }
        let bytes = self.bytes(span);
        let header = header_of(bytes)?;
        if strata_toc::describes(listed, &header) {
            return Some(span);
        }
        let block = patch(bytes, listed)?;
        let fits = header_of(&block).is_some_and(|h| strata_toc::describes(listed, &h));
        if !fits || patched.len() + block.len() > MAX_BYTES {
            return None;
        }
        let span = Span {
            offset: patched.len() as u32,
            len: block.len() as u32,
            patched: true,
        };
        patched.extend_from_slice(&block);
        Some(span)
    }

    /// The bytes of a span (`patched` being the plan's arena).
    pub(crate) fn bytes_in<'a>(&'a self, span: Span, patched: &'a [u8]) -> &'a [u8] {
        let arena = if span.patched { patched } else { &self.arena };
        &arena[span.offset as usize..(span.offset + span.len) as usize]
    }

    pub(crate) fn bytes(&self, span: Span) -> &[u8] {
        self.bytes_in(span, &[])
    }
}

/// A single ustar or GNU header block with the size and modification time
/// `listed` gives, each field written in the style it had (width, then
/// the same terminator), the checksum too. `None` where that cannot be
/// done faithfully: extension headers, base-256 numbers, a value that
/// does not fit, sub-second times.
fn patch(bytes: &[u8], listed: &Entry) -> Option<[u8; 512]> {
    let mut block: [u8; 512] = bytes.try_into().ok()?;
    let (secs, nanos) = strata_toc::toc_time(&listed.mod_time).unwrap_or((0, 0));
    if nanos != 0 || secs < 0 || listed.size < 0 {
        return None;
    }
    rewrite_octal(&mut block[124..136], listed.size as u64)?;
    rewrite_octal(&mut block[136..148], secs as u64)?;
    let old_sum = block[148..156].to_vec();
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    block[148..156].copy_from_slice(&old_sum);
    rewrite_octal(&mut block[148..156], sum)?;
    Some(block)
}

/// Rewrites the octal digits that open `field` (leading zeros included),
/// keeping their number and what follows them.
fn rewrite_octal(field: &mut [u8], value: u64) -> Option<()> {
    let digits = field.iter().take_while(|b| (b'0'..=b'7').contains(b)).count();
    if digits == 0 || field[digits..].iter().any(|&b| b != 0 && b != b' ') {
        return None;
    }
    let text = format!("{value:0digits$o}");
    if text.len() != digits {
        return None;
    }
    field[..digits].copy_from_slice(text.as_bytes());
    Some(())
}

/// Bytes of padding after a payload of `size` bytes.
pub(crate) fn pad(size: u64) -> u64 {
    (512 - size % 512) % 512
}

#[cfg(test)]
mod tests {
    use super::*;

    impl LocalHeaders {
        fn find_plain(&self, listed: &Entry) -> Option<Span> {
            self.find(listed, &mut Vec::new()).filter(|s| !s.patched)
        }
    }

    fn tar_split_of(tar: &[u8]) -> Vec<u8> {
        let mut meta = strata_tarsplit::MetadataWriter::new(Vec::new());
        strata_tarsplit::disassemble(tar, std::io::sink(), &mut meta, &mut strata_tarsplit::DiscardPutter).expect("split");
        meta.finish().expect("metadata")
    }

    fn tar(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn listed(name: &str, size: i64, mode: i64) -> Entry {
        Entry {
            kind: "reg".into(),
            name: name.into(),
            mode,
            size,
            mod_time: "2023-11-14T22:13:20Z".into(),
            ..Entry::default()
        }
    }

    #[test]
    fn finds_the_header_of_an_entry_described_alike() {
        let tar = tar(&[("a", b"hello", 0o644), ("dir/b", &[7u8; 600], 0o755)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        assert_eq!(headers.len(), 2);
        let span = headers.find_plain(&listed("a", 5, 0o644)).expect("a is known");
        assert_eq!(headers.bytes(span), &tar[..512]);
        let span = headers.find_plain(&listed("./dir/b", 600, 0o755)).expect("dir/b is known");
        // After a's 512-byte header, 5 bytes of payload and their padding.
        assert_eq!(headers.bytes(span), &tar[1024..1536]);
    }

    #[test]
    fn an_entry_described_otherwise_is_not_guessed() {
        let tar = tar(&[("a", b"hello", 0o644)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        assert_eq!(headers.find_plain(&listed("a", 6, 0o644)), None, "size");
        assert_eq!(headers.find_plain(&listed("a", 5, 0o600)), None, "mode");
        let mut later = listed("a", 5, 0o644);
        later.mod_time = "2023-11-14T22:13:21Z".into();
        assert_eq!(headers.find_plain(&later), None, "time");
        assert_eq!(headers.find_plain(&listed("b", 5, 0o644)), None, "name");
    }

    #[test]
    fn a_file_grown_and_touched_gets_its_old_header_patched() {
        let old = tar(&[("a", b"hello", 0o644)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&old)[..]).expect("headers");
        let mut grown = tar::Header::new_ustar();
        grown.set_size(6);
        grown.set_mode(0o644);
        grown.set_mtime(1_700_000_001);
        grown.set_path("a").expect("path");
        grown.set_cksum();
        let mut later = listed("a", 6, 0o644);
        later.mod_time = "2023-11-14T22:13:21Z".into();
        let mut patched = Vec::new();
        let span = headers.find(&later, &mut patched).expect("patched");
        assert!(span.patched);
        assert_eq!(headers.bytes_in(span, &patched), grown.as_bytes(), "the header the writer would have written");
        // What a header cannot be patched to say is not guessed.
        let mut other_mode = later.clone();
        other_mode.mode = 0o600;
        assert_eq!(headers.find(&other_mode, &mut patched), None);
        let mut sub_second = later;
        sub_second.mod_time = "2023-11-14T22:13:21.5Z".into();
        assert_eq!(headers.find(&sub_second, &mut patched), None);
    }

    #[test]
    fn a_name_seen_twice_is_not_guessed() {
        let tar = tar(&[("a", b"one", 0o644)]);
        let mut headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        assert!(headers.find_plain(&listed("a", 3, 0o644)).is_some());
        headers.add(b"./a", &tar[..512]);
        assert_eq!(headers.find_plain(&listed("a", 3, 0o644)), None);
    }
}
