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
        serde_json::from_slice(json).map_err(|e| Error::InvalidToc(e.to_string()))
    }

    /// Checks every entry before a byte of the TOC is trusted: known types,
    /// well-formed digests, chunks directly after their file and adding up
    /// to its size, payload offsets ordered and inside `[0, data_end)`.
    pub fn validate(&self, data_end: u64) -> Result<()> {
        if self.version != 1 {
            return Err(Error::InvalidToc(format!(
                "version {}, expected 1",
                self.version
            )));
        }
        if !self.tar_split_digest.is_empty() && !valid_digest(&self.tar_split_digest) {
            return Err(Error::InvalidToc(format!(
                "tarSplitDigest {:?} is not a sha256 digest",
                self.tar_split_digest
            )));
        }
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            let bad = |reason: String| Error::InvalidEntry {
                index: i,
                name: e.name.clone(),
                reason,
            };
            if !KINDS.contains(&e.kind.as_str()) {
                return Err(bad(format!("unknown type {:?}", e.kind)));
            }
            if e.kind == "chunk" {
                return Err(bad("chunk without a preceding reg entry".into()));
            }
            if e.name.is_empty() {
                return Err(bad("empty name".into()));
            }
            for (what, v) in [
                ("size", e.size),
                ("uid", e.uid),
                ("gid", e.gid),
                ("offset", e.offset),
                ("endOffset", e.end_offset),
            ] {
                if v < 0 {
                    return Err(bad(format!("negative {what}")));
                }
            }
            if e.inner_offset != 0 {
                // Members shared between chunks (eStargz MinChunkSize): not
                // something containers-storage reads correctly either.
                return Err(bad("innerOffset is not supported".into()));
            }
            if e.kind == "hardlink" && e.link_name.is_empty() {
                return Err(bad("hardlink without linkName".into()));
            }
            let chunks = self.entries[i + 1..]
                .iter()
                .take_while(|c| c.kind == "chunk")
                .count();
            if e.kind == "reg" {
                self.validate_payload(i, chunks, data_end)?;
            } else if chunks > 0 {
                return Err(bad(format!("{} entry followed by chunks", e.kind)));
            }
            i += 1 + chunks;
        }
        Ok(())
    }

    fn validate_payload(&self, i: usize, chunks: usize, data_end: u64) -> Result<()> {
        let e = &self.entries[i];
        let bad = |reason: String| Error::InvalidEntry {
            index: i,
            name: e.name.clone(),
            reason,
        };
        if e.size == 0 {
            if chunks > 0 || e.offset != 0 {
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
        let pieces = self.pieces(i).map_err(bad)?;
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

    /// The payload pieces of the `reg` entry at `index`.
    pub fn pieces(&self, index: usize) -> Result<Vec<Piece>, String> {
        let e = &self.entries[index];
        let chunks: Vec<&Entry> = self.entries[index + 1..]
            .iter()
            .take_while(|c| c.kind == "chunk")
            .collect();
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
        for (k, c) in std::iter::once(e).chain(chunks.iter().copied()).enumerate() {
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

impl<'de> Deserialize<'de> for Toc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Toc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOC object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Toc, A::Error> {
                let mut toc = Toc::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key_is(&key, "version") {
                        toc.version = or_default(&mut map)?;
                    } else if key_is(&key, "entries") {
                        toc.entries = map
                            .next_value::<Option<Entries>>()?
                            .map(|e| e.0)
                            .unwrap_or_default();
                    } else if key_is(&key, "tarSplitDigest") {
                        toc.tar_split_digest = or_default(&mut map)?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(toc)
            }
        }
        d.deserialize_map(V)
    }
}

/// The entry list, read without preallocating from a hostile size hint.
struct Entries(Vec<Entry>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of TOC entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<Entry>()? {
                    out.push(e);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_seq(V)
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
