//! The TOC JSON of a zstd:chunked layer: typed entries, read as leniently
//! as containers-storage reads them (keys in any case, unknown keys
//! skipped, nothing after the object) and checked strictly before use.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::annotations::valid_digest;
use crate::error::{Error, Result};

/// A table of contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Toc {
    pub version: i64,
    pub entries: Vec<Entry>,
    /// `sha256:` of the compressed tar-split (c/storage ≥ 1.54).
    #[serde(rename = "tarSplitDigest", skip_serializing_if = "String::is_empty")]
    pub tar_split_digest: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One TOC entry, with the JSON names containers-storage writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Entry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(rename = "modtime", skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(rename = "accesstime", skip_serializing_if = "String::is_empty")]
    pub access_time: String,
    #[serde(rename = "changetime", skip_serializing_if = "String::is_empty")]
    pub change_time: String,
    #[serde(rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// xattr name → base64 of the raw value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(rename = "endOffset", skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    #[serde(rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(rename = "chunkDigest", skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    #[serde(rename = "chunkType", skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
    /// eStargz only: bytes to skip after decompressing from `offset`.
    #[serde(rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
}

/// The digest of empty content, which an empty `reg` entry may omit.
pub const EMPTY_DIGEST: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const KINDS: [&str; 8] = [
    "reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk",
];

/// A file's payload as pieces of the blob: one per chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Blob offset of the piece's first zstd frame.
    pub offset: u64,
    /// Offset within the file.
    pub file_offset: u64,
    pub len: u64,
    /// `sha256:` of the piece, when the file has more than one.
    pub digest: Option<String>,
    pub zeros: bool,
}

impl Toc {
    /// Parses TOC JSON. Only whitespace may follow the object.
    pub fn parse(json: &[u8]) -> Result<Toc> {
        let mut entries = Vec::new();
        let header = stream_items(json, |item| {
            entries.push(item.entry);
            entries.extend(item.chunks);
            Ok(())
        })?;
        Ok(Toc {
            version: header.version,
            entries,
            tar_split_digest: header.tar_split_digest,
        })
    }

    /// Checks every entry before a byte of the TOC is trusted: known types,
    /// well-formed digests, chunks directly after their file and adding up
    /// to its size, payload offsets ordered and inside `[0, data_end)`.
    pub fn validate(&self, data_end: u64) -> Result<()> {
        check_header(self.version, &self.tar_split_digest)?;
        let mut i = 0;
        while i < self.entries.len() {
            let chunks = self.entries[i + 1..]
                .iter()
                .take_while(|c| c.kind == "chunk")
                .count();
            let item = TocItemRef {
                index: i,
                entry: &self.entries[i],
                chunks: &self.entries[i + 1..i + 1 + chunks],
            };
            item.validate(data_end)?;
            i += 1 + chunks;
        }
        Ok(())
    }

    /// The payload pieces of the `reg` entry at `index`.
    pub fn pieces(&self, index: usize) -> Result<Vec<Piece>, String> {
        let chunks = self.entries[index + 1..]
            .iter()
            .take_while(|c| c.kind == "chunk")
            .count();
        pieces_of(&self.entries[index], &self.entries[index + 1..index + 1 + chunks])
    }
}

/// Checks what the TOC says besides its entries.
pub(crate) fn check_header(version: i64, tar_split_digest: &str) -> Result<()> {
    if version != 1 {
        return Err(Error::InvalidToc(format!("version {version}, expected 1")));
    }
    if !tar_split_digest.is_empty() && !valid_digest(tar_split_digest) {
        return Err(Error::InvalidToc(format!(
            "tarSplitDigest {tar_split_digest:?} is not a sha256 digest"
        )));
    }
    Ok(())
}

/// One entry of a TOC with the `chunk` entries that follow it (for a
/// `reg` entry with a chunked payload): the unit a TOC is streamed in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TocItem {
    /// Position of `entry` in the TOC's entry list.
    pub index: usize,
    pub entry: Entry,
    pub chunks: Vec<Entry>,
}

impl TocItem {
    /// The payload pieces of a `reg` entry: one per chunk.
    pub fn pieces(&self) -> Result<Vec<Piece>, String> {
        pieces_of(&self.entry, &self.chunks)
    }

    /// The checks of [`Toc::validate`] that concern this item.
    pub fn validate(&self, data_end: u64) -> Result<()> {
        TocItemRef {
            index: self.index,
            entry: &self.entry,
            chunks: &self.chunks,
        }
        .validate(data_end)
    }
}

struct TocItemRef<'a> {
    index: usize,
    entry: &'a Entry,
    chunks: &'a [Entry],
}

impl TocItemRef<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::InvalidEntry {
            index: self.index,
            name: self.entry.name.clone(),
            reason,
        }
    }

    fn validate(&self, data_end: u64) -> Result<()> {
        let e = self.entry;
        if !KINDS.contains(&e.kind.as_str()) {
            return Err(self.bad(format!("unknown type {:?}", e.kind)));
        }
        if e.kind == "chunk" {
            return Err(self.bad("chunk without a preceding reg entry".into()));
        }
        if e.name.is_empty() {
            return Err(self.bad("empty name".into()));
        }
        for (what, v) in [
            ("size", e.size),
            ("uid", e.uid),
            ("gid", e.gid),
            ("offset", e.offset),
            ("endOffset", e.end_offset),
        ] {
            if v < 0 {
                return Err(self.bad(format!("negative {what}")));
            }
        }
        if e.inner_offset != 0 {
            // Members shared between chunks (eStargz MinChunkSize): not
            // something containers-storage reads correctly either.
            return Err(self.bad("innerOffset is not supported".into()));
        }
        if e.kind == "hardlink" && e.link_name.is_empty() {
            return Err(self.bad("hardlink without linkName".into()));
        }
        if e.kind == "reg" {
            self.validate_payload(data_end)
        } else if !self.chunks.is_empty() {
            Err(self.bad(format!("{} entry followed by chunks", e.kind)))
        } else {
            Ok(())
        }
    }

    fn validate_payload(&self, data_end: u64) -> Result<()> {
        let e = self.entry;
        let bad = |reason: String| self.bad(reason);
        if e.size == 0 {
            if !self.chunks.is_empty() || e.offset != 0 {
                return Err(bad("empty file with a payload".into()));
            }
            if !e.digest.is_empty() && e.digest != EMPTY_DIGEST {
                return Err(bad("empty file with the digest of something".into()));
            }
            return Ok(());
        }
        if !valid_digest(&e.digest) {
            return Err(bad(format!("digest {:?} is not a sha256 digest", e.digest)));
        }
        let pieces = pieces_of(e, self.chunks).map_err(bad)?;
        let mut covered = 0u64;
        let mut last_offset = 0u64;
        for (k, p) in pieces.iter().enumerate() {
            if p.file_offset != covered {
                return Err(bad(format!(
                    "chunk {k} starts at {} instead of {covered}",
                    p.file_offset
                )));
            }
            if p.offset == 0 || p.offset >= data_end {
                return Err(bad(format!(
                    "chunk {k} offset {} outside the payload area (0, {data_end})",
                    p.offset
                )));
            }
            if k > 0 && p.offset <= last_offset {
                return Err(bad(format!(
                    "chunk {k} offset {} does not follow the previous chunk",
                    p.offset
                )));
            }
            if let Some(d) = &p.digest
                && !valid_digest(d)
            {
                return Err(bad(format!(
                    "chunk {k} digest {d:?} is not a sha256 digest"
                )));
            }
            last_offset = p.offset;
            covered = covered
                .checked_add(p.len)
                .ok_or_else(|| bad("chunk sizes overflow".into()))?;
        }
        if covered != e.size as u64 {
            return Err(bad(format!(
                "chunks cover {covered} bytes of a {}-byte file",
                e.size
            )));
        }
        let end = e.end_offset as u64;
        if end != 0 && (end <= last_offset || end > data_end) {
            return Err(bad(format!(
                "endOffset {end} is not after the last chunk and within {data_end}"
            )));
        }
        Ok(())
    }
}

/// The payload pieces of a `reg` entry followed by `chunks`.
fn pieces_of(e: &Entry, chunks: &[Entry]) -> Result<Vec<Piece>, String> {
    if chunks.is_empty() {
        return Ok(vec![Piece {
            offset: e.offset as u64,
            file_offset: 0,
            len: e.size as u64,
            digest: None,
            zeros: e.chunk_type == "zeros",
        }]);
    }
    let mut out = Vec::with_capacity(chunks.len() + 1);
    let mut remaining = e.size;
    for (k, c) in std::iter::once(e).chain(chunks.iter()).enumerate() {
        if c.name != e.name && k > 0 {
            return Err(format!("chunk {k} names {:?}", c.name));
        }
        if c.chunk_size < 0 || c.chunk_offset < 0 || c.offset < 0 {
            return Err(format!("chunk {k} has a negative field"));
        }
        // A last chunk without a size (eStargz) takes what is left.
        let len = if c.chunk_size == 0 && k == chunks.len() {
            remaining
        } else {
            c.chunk_size
        };
        if len <= 0 || len > remaining {
            return Err(format!(
                "chunk {k} size {len} does not fit the {remaining} bytes left"
            ));
        }
        remaining -= len;
        out.push(Piece {
            offset: c.offset as u64,
            file_offset: c.chunk_offset as u64,
            len: len as u64,
            digest: Some(c.chunk_digest.clone()).filter(|d| !d.is_empty()),
            zeros: c.chunk_type == "zeros",
        });
    }
    Ok(out)
}

/// What a TOC says besides its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TocHeader {
    pub version: i64,
    pub tar_split_digest: String,
    /// Entries read, chunk entries included.
    pub entries: u64,
}

/// Reads TOC JSON item by item, handing each to `visit`: the entries are
/// never all in memory, whatever their number. Items are not validated
/// here (see [`TocItem::validate`]); the header is checked at the end.
pub fn stream_items<R: std::io::Read>(
    json: R,
    mut visit: impl FnMut(TocItem) -> Result<()>,
) -> Result<TocHeader> {
    let mut failure: Option<Error> = None;
    let mut pending: Option<TocItem> = None;
    let mut count = 0usize;
    let header = {
        let mut on_entry = |e: Entry| -> std::result::Result<(), String> {
            let index = count;
            count += 1;
            if e.kind == "chunk"
                && let Some(p) = &mut pending
                && p.entry.kind == "reg"
            {
                p.chunks.push(e);
                return Ok(());
            }
            if let Some(done) = pending.take()
                && let Err(err) = visit(done)
            {
                failure = Some(err);
                return Err("stopped".into());
            }
            pending = Some(TocItem {
                index,
                entry: e,
                chunks: Vec::new(),
            });
            Ok(())
        };
        // serde_json reads byte by byte: buffered, or each byte is a call
        // into the decompressor.
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 << 10, json));
        let header = serde::de::DeserializeSeed::deserialize(TopSeed(&mut on_entry), &mut de)
            .and_then(|h| de.end().map(|()| h));
        match (header, failure.take()) {
            (_, Some(err)) => return Err(err),
            (Err(e), None) => return Err(Error::InvalidToc(e.to_string())),
            (Ok(h), None) => h,
        }
    };
    if let Some(done) = pending.take() {
        visit(done)?;
    }
    Ok(TocHeader {
        entries: count as u64,
        ..header
    })
}

/// The top-level object, handing entries to a callback as they come.
struct TopSeed<'f>(&'f mut dyn FnMut(Entry) -> std::result::Result<(), String>);

impl<'de> serde::de::DeserializeSeed<'de> for TopSeed<'_> {
    type Value = TocHeader;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<TocHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = TocHeader;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<TocHeader, A::Error> {
        let mut header = TocHeader::default();
        while let Some(key) = map.next_key::<String>()? {
            if key_is(&key, "version") {
                header.version = or_default(&mut map)?;
            } else if key_is(&key, "entries") {
                map.next_value_seed(EntriesSeed(&mut *self.0))?;
            } else if key_is(&key, "tarSplitDigest") {
                header.tar_split_digest = or_default(&mut map)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(header)
    }
}

/// The entry list (or `null`), each entry handed on as it is read.
struct EntriesSeed<'f>(&'f mut dyn FnMut(Entry) -> std::result::Result<(), String>);

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of TOC entries")
    }
    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(e) = seq.next_element::<Entry>()? {
            (self.0)(e).map_err(serde::de::Error::custom)?;
        }
        Ok(())
    }
}

// Deserialization: Go matches keys without regard to case and skips
// unknown ones; serde's derive does neither, hence the visitors.

fn key_is(key: &str, want: &str) -> bool {
    key.eq_ignore_ascii_case(want)
}

/// `null` reads as the zero value, as in Go.
fn or_default<'de, T: Deserialize<'de> + Default, A: MapAccess<'de>>(
    map: &mut A,
) -> Result<T, A::Error> {
    Ok(map.next_value::<Option<T>>()?.unwrap_or_default())
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOC entry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
                let mut e = Entry::default();
                while let Some(key) = map.next_key::<String>()? {
                    let k = key.as_str();
                    match () {
                        _ if key_is(k, "type") => e.kind = or_default(&mut map)?,
                        _ if key_is(k, "name") => e.name = or_default(&mut map)?,
                        _ if key_is(k, "linkName") => e.link_name = or_default(&mut map)?,
                        _ if key_is(k, "mode") => e.mode = or_default(&mut map)?,
                        _ if key_is(k, "size") => e.size = or_default(&mut map)?,
                        _ if key_is(k, "uid") => e.uid = or_default(&mut map)?,
                        _ if key_is(k, "gid") => e.gid = or_default(&mut map)?,
                        _ if key_is(k, "modtime") => e.mod_time = or_default(&mut map)?,
                        _ if key_is(k, "accesstime") => e.access_time = or_default(&mut map)?,
                        _ if key_is(k, "changetime") => e.change_time = or_default(&mut map)?,
                        _ if key_is(k, "devMajor") => e.dev_major = or_default(&mut map)?,
                        _ if key_is(k, "devMinor") => e.dev_minor = or_default(&mut map)?,
                        _ if key_is(k, "xattrs") => e.xattrs = or_default(&mut map)?,
                        _ if key_is(k, "digest") => e.digest = or_default(&mut map)?,
                        _ if key_is(k, "offset") => e.offset = or_default(&mut map)?,
                        _ if key_is(k, "endOffset") => e.end_offset = or_default(&mut map)?,
                        _ if key_is(k, "chunkSize") => e.chunk_size = or_default(&mut map)?,
                        _ if key_is(k, "chunkOffset") => e.chunk_offset = or_default(&mut map)?,
                        _ if key_is(k, "chunkDigest") => e.chunk_digest = or_default(&mut map)?,
                        _ if key_is(k, "chunkType") => e.chunk_type = or_default(&mut map)?,
                        _ if key_is(k, "innerOffset") => e.inner_offset = or_default(&mut map)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    fn reg(size: i64, offset: i64, end: i64) -> Entry {
        Entry {
            kind: "reg".into(),
            name: "f".into(),
            size,
            offset,
            end_offset: end,
            digest: D.into(),
            ..Entry::default()
        }
    }

    #[test]
    fn parses_leniently() {
        let json = format!(
            r#"{{"VERSION":1,"entries":[{{"Type":"reg","NAME":"etc/hosts","size":6,"digest":"{D}","offset":91,"endOffset":110,"unknown":[1,2]}},
            {{"type":"dir","name":"etc/","mode":493,"uid":null}}],"tarSplitDigest":"{D}","extra":{{}}}}  "#
        );
        let toc = Toc::parse(json.as_bytes()).expect("valid");
        assert_eq!(toc.entries[0].name, "etc/hosts");
        assert_eq!(toc.entries[1].mode, 493);
        toc.validate(1000).expect("consistent");
        assert!(
            Toc::parse(br#"{"version":1} {"version":1}"#).is_err(),
            "data after the TOC"
        );
    }

    #[test]
    fn chunk_rules() {
        let mut first = reg(300, 10, 90);
        first.chunk_size = 100;
        first.chunk_digest = D.into();
        let chunk = |offset, at, size| Entry {
            kind: "chunk".into(),
            name: "f".into(),
            offset,
            chunk_offset: at,
            chunk_size: size,
            chunk_digest: D.into(),
            ..Entry::default()
        };
        let ok = Toc {
            version: 1,
            entries: vec![first.clone(), chunk(40, 100, 150), chunk(60, 250, 50)],
            ..Toc::default()
        };
        ok.validate(100).expect("valid chunks");
        assert_eq!(ok.pieces(0).expect("pieces").len(), 3);
        for (entries, what) in [
            (
                vec![first.clone(), chunk(40, 100, 150)],
                "chunks short of the size",
            ),
            (
                vec![first.clone(), chunk(40, 100, 150), chunk(30, 250, 50)],
                "offsets going back",
            ),
            (
                vec![first.clone(), chunk(40, 90, 150), chunk(60, 240, 60)],
                "a gap in the file",
            ),
            (
                vec![first.clone(), chunk(40, 100, 150), chunk(200, 250, 50)],
                "offset past the data",
            ),
            (vec![chunk(40, 0, 10)], "orphan chunk"),
            (vec![reg(5, 0, 0)], "payload at offset 0"),
            (
                vec![Entry {
                    digest: "md5:x".into(),
                    ..reg(5, 10, 20)
                }],
                "bad digest",
            ),
            (
                vec![Entry {
                    kind: "socket".into(),
                    ..reg(0, 0, 0)
                }],
                "unknown type",
            ),
            (vec![reg(-1, 10, 20)], "negative size"),
        ] {
            let toc = Toc {
                version: 1,
                entries,
                ..Toc::default()
            };
            assert!(toc.validate(100).is_err(), "{what}");
        }
    }
}
