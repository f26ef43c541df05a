//! The TOC JSON of a zstd:chunked layer: typed entries, read as leniently
//! as containers-storage reads them (keys in any case, unknown keys
//! skipped, nothing after the object) and checked strictly before use.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use strata_jsonstream::Values;

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
    let mut pending: Option<TocItem> = None;
    let mut count = 0usize;
    let mut on_entry = |e: Entry| -> Result<()> {
        let index = count;
        count += 1;
        if e.kind == "chunk"
            && let Some(p) = &mut pending
            && p.entry.kind == "reg"
        {
            p.chunks.push(e);
            return Ok(());
        }
        if let Some(done) = pending.take() {
            visit(done)?;
        }
        pending = Some(TocItem {
            index,
            entry: e,
            chunks: Vec::new(),
        });
        Ok(())
    };
    let header = walk_top(&mut Values::new(json), &mut on_entry)?;
    if let Some(done) = pending.take() {
        visit(done)?;
    }
    Ok(TocHeader {
        entries: count as u64,
        ..header
    })
}

fn invalid(what: impl fmt::Display) -> Error {
    Error::InvalidToc(what.to_string())
}

/// Parses one value cut from the stream.
fn value<'a, T: Deserialize<'a>>(text: &'a [u8], what: impl FnOnce() -> String) -> Result<T> {
    serde_json::from_slice(text).map_err(|e| invalid(format!("{}: {e}", what())))
}

fn next<'v, R: std::io::Read>(values: &'v mut Values<R>, what: &str) -> Result<&'v [u8]> {
    values
        .next_value()
        .map_err(|e| invalid(format!("reading {what}: {e}")))?
        .ok_or_else(|| invalid(format!("the TOC ends before {what}")))
}

fn peek<R: std::io::Read>(values: &mut Values<R>) -> Result<Option<u8>> {
    values.peek().map_err(|e| invalid(format!("reading the TOC: {e}")))
}

/// Consumes `want`, the next byte that is not whitespace.
fn expect<R: std::io::Read>(values: &mut Values<R>, want: u8, what: &str) -> Result<()> {
    match peek(values)? {
        Some(b) if b == want => {
            values.advance();
            Ok(())
        }
        found => Err(invalid(format!(
            "expected {:?} {what} at byte {}, found {}",
            char::from(want),
            values.offset(),
            found.map_or("the end".into(), |b| format!("{:?}", char::from(b)))
        ))),
    }
}

/// Walks the top-level object: its keys and small values are parsed one by
/// one, and each entry of its list from a slice of its own, since a slice
/// parses twice as fast as a reader and the list is too big to hold.
fn walk_top<R: std::io::Read>(
    values: &mut Values<R>,
    on_entry: &mut dyn FnMut(Entry) -> Result<()>,
) -> Result<TocHeader> {
    let mut header = TocHeader::default();
    expect(values, b'{', "to open the TOC object")?;
    if peek(values)? == Some(b'}') {
        values.advance();
    } else {
        loop {
            let key: String = value(next(values, "a key")?, || "a key of the TOC object".into())?;
            expect(values, b':', "after a key")?;
            if key_is(&key, "entries") {
                walk_entries(values, on_entry)?;
            } else {
                let text = next(values, "a value")?;
                let what = || format!("the TOC's {key:?}");
                if key_is(&key, "version") {
                    header.version = value::<Option<i64>>(text, what)?.unwrap_or_default();
                } else if key_is(&key, "tarSplitDigest") {
                    header.tar_split_digest = value::<Option<String>>(text, what)?.unwrap_or_default();
                } else {
                    value::<IgnoredAny>(text, what)?;
                }
            }
            match peek(values)? {
                Some(b',') => values.advance(),
                Some(b'}') => {
                    values.advance();
                    break;
                }
                _ => expect(values, b'}', "to close the TOC object")?,
            }
        }
    }
    match peek(values)? {
        None => Ok(header),
        Some(_) => Err(invalid(format!("data after the TOC object, at byte {}", values.offset()))),
    }
}

/// The entry list (or `null`), each entry handed on as it is read.
fn walk_entries<R: std::io::Read>(
    values: &mut Values<R>,
    on_entry: &mut dyn FnMut(Entry) -> Result<()>,
) -> Result<()> {
    if peek(values)? != Some(b'[') {
        // Anything else must be null.
        return value::<()>(next(values, "the entries")?, || "the TOC's entries".into());
    }
    values.advance();
    if peek(values)? == Some(b']') {
        values.advance();
        return Ok(());
    }
    let mut n = 0u64;
    loop {
        let text = next(values, "an entry")?;
        let entry = match crate::canonical::entry(text) {
            Some(entry) => entry,
            None => value::<Entry>(text, || format!("TOC entry {n}"))?,
        };
        on_entry(entry)?;
        n += 1;
        match peek(values)? {
            Some(b',') => values.advance(),
            Some(b']') => {
                values.advance();
                return Ok(());
            }
            _ => expect(values, b']', "to close the entry list")?,
        }
    }
}

// Deserialization: Go matches keys without regard to case and skips
// unknown ones; serde's derive does neither, hence the visitors.

/// Whether `key` names an entry field, in any case.
pub(crate) fn is_known_key(key: &str) -> bool {
    !matches!(Field::of(key), Field::Other)
}

fn key_is(key: &str, want: &str) -> bool {
    key.eq_ignore_ascii_case(want)
}

/// `null` reads as the zero value, as in Go.
fn or_default<'de, T: Deserialize<'de> + Default, A: MapAccess<'de>>(
    map: &mut A,
) -> Result<T, A::Error> {
    Ok(map.next_value::<Option<T>>()?.unwrap_or_default())
}

/// An entry's key: known without allocating it, in any case.
#[derive(Clone, Copy)]
enum Field {
    Type,
    Name,
    LinkName,
    Mode,
    Size,
    Uid,
    Gid,
    ModTime,
    AccessTime,
    ChangeTime,
    DevMajor,
    DevMinor,
    Xattrs,
    Digest,
    Offset,
    EndOffset,
    ChunkSize,
    ChunkOffset,
    ChunkDigest,
    ChunkType,
    InnerOffset,
    Other,
}

impl Field {
    fn of(key: &str) -> Field {
        let mut lower = [0u8; 12];
        let Some(lower) = lower.get_mut(..key.len()) else {
            return Field::Other;
        };
        for (l, k) in lower.iter_mut().zip(key.bytes()) {
            *l = k.to_ascii_lowercase();
        }
        match &*lower {
            b"type" => Field::Type,
            b"name" => Field::Name,
            b"linkname" => Field::LinkName,
            b"mode" => Field::Mode,
            b"size" => Field::Size,
            b"uid" => Field::Uid,
            b"gid" => Field::Gid,
            b"modtime" => Field::ModTime,
            b"accesstime" => Field::AccessTime,
            b"changetime" => Field::ChangeTime,
            b"devmajor" => Field::DevMajor,
            b"devminor" => Field::DevMinor,
            b"xattrs" => Field::Xattrs,
            b"digest" => Field::Digest,
            b"offset" => Field::Offset,
            b"endoffset" => Field::EndOffset,
            b"chunksize" => Field::ChunkSize,
            b"chunkoffset" => Field::ChunkOffset,
            b"chunkdigest" => Field::ChunkDigest,
            b"chunktype" => Field::ChunkType,
            b"inneroffset" => Field::InnerOffset,
            _ => Field::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOC entry key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(Field::of(key))
            }
        }
        d.deserialize_identifier(V)
    }
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
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Type => e.kind = or_default(&mut map)?,
                        Field::Name => e.name = or_default(&mut map)?,
                        Field::LinkName => e.link_name = or_default(&mut map)?,
                        Field::Mode => e.mode = or_default(&mut map)?,
                        Field::Size => e.size = or_default(&mut map)?,
                        Field::Uid => e.uid = or_default(&mut map)?,
                        Field::Gid => e.gid = or_default(&mut map)?,
                        Field::ModTime => e.mod_time = or_default(&mut map)?,
                        Field::AccessTime => e.access_time = or_default(&mut map)?,
                        Field::ChangeTime => e.change_time = or_default(&mut map)?,
                        Field::DevMajor => e.dev_major = or_default(&mut map)?,
                        Field::DevMinor => e.dev_minor = or_default(&mut map)?,
                        Field::Xattrs => e.xattrs = or_default(&mut map)?,
                        Field::Digest => e.digest = or_default(&mut map)?,
                        Field::Offset => e.offset = or_default(&mut map)?,
                        Field::EndOffset => e.end_offset = or_default(&mut map)?,
                        Field::ChunkSize => e.chunk_size = or_default(&mut map)?,
                        Field::ChunkOffset => e.chunk_offset = or_default(&mut map)?,
                        Field::ChunkDigest => e.chunk_digest = or_default(&mut map)?,
                        Field::ChunkType => e.chunk_type = or_default(&mut map)?,
                        Field::InnerOffset => e.inner_offset = or_default(&mut map)?,
                        Field::Other => {
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

#[cfg(test)]
#[path = "toc_oracle.rs"]
mod oracle;
