//! The tar-split metadata stream: one JSON object per line, written byte for
//! byte as tar-split's Go code writes it, read as leniently as Go reads it.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};

use base64::Engine;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::{Error, Name, Result};
use crate::path::go_clean;

/// Go's `base64.StdEncoding`: padded, and lenient about trailing bits.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

const SEGMENT_TYPE: i64 = 2;
const FILE_TYPE: i64 = 1;

/// One record of the metadata stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Raw tar bytes: headers, padding, the end-of-archive marker.
    Segment(Vec<u8>),
    /// A file whose payload comes from a [`FileGetter`](crate::FileGetter).
    File(FileEntry),
}

/// A file record: every tar entry has one, payload or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// The entry's name as raw bytes.
    pub name: Vec<u8>,
    /// The size tar-split recorded (`hdr.Size`).
    pub size: i64,
    /// CRC-64/GO-ISO of the payload, present when `size > 0`.
    pub crc: Option<[u8; 8]>,
}

/// Writes metadata records with tar-split's exact JSON encoding.
#[derive(Debug)]
pub struct MetadataWriter<W: Write> {
    out: io::BufWriter<W>,
    position: u64,
    seen: SeenNames,
    line: Vec<u8>,
}

impl<W: Write> MetadataWriter<W> {
    pub fn new(out: W) -> Self {
        MetadataWriter {
            out: io::BufWriter::with_capacity(64 << 10, out),
            position: 0,
            seen: SeenNames::default(),
            line: Vec::new(),
        }
    }

    /// Writes a segment record.
    pub fn segment(&mut self, bytes: &[u8]) -> Result<()> {
        self.line.clear();
        self.line.extend_from_slice(br#"{"type":2,"payload":""#);
        push_base64(&mut self.line, bytes);
        self.line.extend_from_slice(b"\",");
        self.end_line()
    }

    /// Claims a name for a file record; a second claim of the same cleaned
    /// name is an error, because tar-split cannot represent it.
    pub fn claim_name(&mut self, name: &[u8]) -> Result<()> {
        if !self.seen.insert(&go_clean(name)) {
            return Err(Error::DuplicatePath {
                name: Name::from(name),
            });
        }
        Ok(())
    }

    /// Writes a file record. The name must have been claimed.
    pub fn file(&mut self, name: &[u8], size: i64, crc: Option<[u8; 8]>) -> Result<()> {
        self.line.clear();
        self.line.extend_from_slice(br#"{"type":1,"#);
        if !name.is_empty() {
            match std::str::from_utf8(name) {
                Ok(text) => {
                    self.line.extend_from_slice(br#""name":""#);
                    escape_go_string(text, &mut self.line);
                }
                Err(_) => {
                    self.line.extend_from_slice(br#""name_raw":""#);
                    push_base64(&mut self.line, name);
                }
            }
            self.line.extend_from_slice(b"\",");
        }
        if size != 0 {
            self.line
                .extend_from_slice(format!("\"size\":{size},").as_bytes());
        }
        match crc {
            Some(crc) => {
                self.line.extend_from_slice(br#""payload":""#);
                push_base64(&mut self.line, &crc);
                self.line.extend_from_slice(b"\",");
            }
            None => self.line.extend_from_slice(br#""payload":null,"#),
        }
        self.end_line()
    }

    /// Writes any record.
    pub fn entry(&mut self, entry: &Entry) -> Result<()> {
        match entry {
            Entry::Segment(bytes) => self.segment(bytes),
            Entry::File(f) => {
                self.claim_name(&f.name)?;
                self.file(&f.name, f.size, f.crc)
            }
        }
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(self) -> Result<W> {
        self.out.into_inner().map_err(|e| Error::Io(e.into_error()))
    }

    fn end_line(&mut self) -> Result<()> {
        self.line
            .extend_from_slice(format!("\"position\":{}}}\n", self.position).as_bytes());
        self.position += 1;
        self.out.write_all(&self.line)?;
        Ok(())
    }
}

fn push_base64(out: &mut Vec<u8>, input: &[u8]) {
    let start = out.len();
    out.resize(start + input.len().div_ceil(3) * 4, 0);
    let written = BASE64.encode_slice(input, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

/// Go's `encoding/json` string escaping with HTML escaping on (the default),
/// as in Go 1.19: `<`, `>`, `&`, U+2028 and U+2029 become `\u` escapes, and
/// control characters other than `\n`, `\r`, `\t` become `\u00XX`.
fn escape_go_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..0x20 | b'<' | b'>' | b'&' => None,
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                None
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => {
                out.extend_from_slice(e);
                i += 1;
            }
            None if b == 0xe2 => {
                out.extend_from_slice(b"\\u202");
                out.push(HEX[usize::from(bytes[i + 2] & 0xf)]);
                i += 3;
            }
            None => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                i += 1;
            }
        }
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The names seen so far, as keyed 64-bit hashes: a layer of 200 000
/// files would otherwise keep every name twice more. The keys are random,
/// so no input can aim for a collision; one by chance (about 1 in 10^9 at
/// 200 000 names) refuses a layer as if it named a file twice, and lets
/// nothing through.
#[derive(Default, Debug)]
struct SeenNames {
    keys: std::collections::hash_map::RandomState,
    hashes: HashSet<u64, std::hash::BuildHasherDefault<IdentityHasher>>,
}

impl SeenNames {
    fn insert(&mut self, name: &[u8]) -> bool {
        self.hashes.insert(self.keys.hash_one(name))
    }
}

/// The set's values are hashes already.
#[derive(Default, Debug)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Reads metadata records, accepting what Go's `json.Decoder` accepts:
/// keys in any case, unknown keys, `null` for numbers, any whitespace
/// between objects. A repeated name is an error, as in tar-split.
pub struct MetadataReader<R: Read> {
    // Cut into records first: serde_json parses a slice twice as fast as
    // a reader.
    records: strata_jsonstream::Values<R>,
    index: u64,
    seen: SeenNames,
    done: bool,
}

impl<R: Read> std::fmt::Debug for MetadataReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataReader")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<R: Read> MetadataReader<R> {
    pub fn new(input: R) -> Self {
        MetadataReader {
            records: strata_jsonstream::Values::new(input),
            index: 0,
            seen: SeenNames::default(),
            done: false,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidMetadata {
            index: self.index,
            reason: reason.into(),
        }
    }

    fn convert(&mut self, wire: WireEntry) -> Result<Entry> {
        match wire.kind {
            SEGMENT_TYPE => Ok(Entry::Segment(wire.payload.unwrap_or_default())),
            FILE_TYPE => {
                let name = match wire.name_raw {
                    Some(raw) if !raw.is_empty() => raw,
                    _ => wire.name.unwrap_or_default().into_bytes(),
                };
                let crc = match wire.payload {
                    None => None,
                    Some(p) => Some(<[u8; 8]>::try_from(p.as_slice()).map_err(|_| {
                        self.invalid(format!("file checksum is {} bytes, not 8", p.len()))
                    })?),
                };
                if wire.size > 0 && crc.is_none() {
                    return Err(
                        self.invalid(format!("file {} has a size but no checksum", Name(name)))
                    );
                }
                if !self.seen.insert(&go_clean(&name)) {
                    return Err(Error::DuplicatePath { name: Name(name) });
                }
                Ok(Entry::File(FileEntry {
                    name,
                    size: wire.size,
                    crc,
                }))
            }
            other => Err(self.invalid(format!("unknown entry type {other}"))),
        }
    }
}

impl<R: Read> Iterator for MetadataReader<R> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.records.next_value() {
            Ok(None) => return None,
            Ok(Some(record)) => match crate::canonical::parse(record).map_or_else(|| serde_json::from_slice::<WireEntry>(record), Ok) {
                Ok(wire) => self.convert(wire),
                Err(e) => Err(self.invalid(e.to_string())),
            },
            Err(e) => Err(Error::Io(e)),
        };
        self.index += 1;
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

/// A record as it appears on the wire, before validation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WireEntry {
    pub(crate) kind: i64,
    pub(crate) name: Option<String>,
    pub(crate) name_raw: Option<Vec<u8>>,
    pub(crate) size: i64,
    pub(crate) payload: Option<Vec<u8>>,
}

enum Field {
    Type,
    Name,
    NameRaw,
    Size,
    Payload,
    Position,
    Other,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                // Go matches JSON keys to struct fields without regard to case.
                let is = |want: &str| key.eq_ignore_ascii_case(want);
                Ok(if is("type") {
                    Field::Type
                } else if is("name") {
                    Field::Name
                } else if is("name_raw") {
                    Field::NameRaw
                } else if is("size") {
                    Field::Size
                } else if is("payload") {
                    Field::Payload
                } else if is("position") {
                    Field::Position
                } else {
                    Field::Other
                })
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

/// A base64 string (Go's encoding of `[]byte`), or `null`.
struct Bytes(Option<Vec<u8>>);

impl<'de> de::Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Decoded from the text where it lies, never copied into a String.
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string or null")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Bytes, E> {
                BASE64.decode(text.as_bytes()).map(|b| Bytes(Some(b))).map_err(E::custom)
            }
            fn visit_none<E: de::Error>(self) -> Result<Bytes, E> {
                Ok(Bytes(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Bytes, E> {
                Ok(Bytes(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Bytes, D::Error> {
                d.deserialize_str(self)
            }
        }
        d.deserialize_option(BytesVisitor)
    }
}

impl<'de> de::Deserialize<'de> for WireEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = WireEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a tar-split entry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireEntry, A::Error> {
                let mut e = WireEntry {
                    kind: 0,
                    name: None,
                    name_raw: None,
                    size: 0,
                    payload: None,
                };
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Type => e.kind = map.next_value::<Option<i64>>()?.unwrap_or(0),
                        Field::Name => e.name = map.next_value()?,
                        Field::NameRaw => e.name_raw = map.next_value::<Bytes>()?.0,
                        Field::Size => e.size = map.next_value::<Option<i64>>()?.unwrap_or(0),
                        Field::Payload => e.payload = map.next_value::<Bytes>()?.0,
                        Field::Position => {
                            map.next_value::<Option<i64>>()?;
                        }
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(EntryVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut MetadataWriter<&mut Vec<u8>>) -> Result<()>) -> String {
        let mut out = Vec::new();
        let mut w = MetadataWriter::new(&mut out);
        f(&mut w).expect("write");
        w.finish().expect("flush");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn encodes_like_go() {
        let text = written(|w| {
            w.segment(b"")?;
            w.claim_name(b"d/")?;
            w.file(b"d/", 0, None)?;
            w.claim_name(b"hello.txt")?;
            w.file(
                b"hello.txt",
                6,
                Some([0x61, 0x4c, 0x3e, 0xee, 0xe2, 0xd8, 0x10, 0x00]),
            )?;
            w.claim_name(b"d/a&b<c>")?;
            w.file(b"d/a&b<c>", 0, None)?;
            w.claim_name(b"d/\xff\xfe")?;
            w.file(b"d/\xff\xfe", 1, Some(*b"#\x10\0\0\0\0\0\0"))
        });
        let want = concat!(
            "{\"type\":2,\"payload\":\"\",\"position\":0}\n",
            "{\"type\":1,\"name\":\"d/\",\"payload\":null,\"position\":1}\n",
            "{\"type\":1,\"name\":\"hello.txt\",\"size\":6,\"payload\":\"YUw+7uLYEAA=\",\"position\":2}\n",
            "{\"type\":1,\"name\":\"d/a\\u0026b\\u003cc\\u003e\",\"payload\":null,\"position\":3}\n",
            "{\"type\":1,\"name_raw\":\"ZC///g==\",\"size\":1,\"payload\":\"IxAAAAAAAAA=\",\"position\":4}\n",
        );
        assert_eq!(text, want);
    }

    #[test]
    fn escapes_controls_and_separators() {
        let mut out = Vec::new();
        escape_go_string("a\"\\\n\r\t\u{1}\u{8}\u{7f}é\u{2028}\u{2029}z", &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "a\\\"\\\\\\n\\r\\t\\u0001\\u0008\u{7f}é\\u2028\\u2029z"
        );
    }

    #[test]
    fn reads_leniently() {
        let input = br#"{"TYPE":2,"Payload":"AAE=","position":0,"extra":[1,{"x":null}]}
  {"type":1,"name":"a","size":null,"payload":null}{"type":1,"name_raw":"/w==","size":1,"payload":"IxAAAAAAAAA="}"#;
        let got: Vec<Entry> = MetadataReader::new(&input[..])
            .collect::<Result<_>>()
            .expect("valid");
        assert_eq!(got[0], Entry::Segment(vec![0, 1]));
        assert_eq!(
            got[1],
            Entry::File(FileEntry {
                name: b"a".to_vec(),
                size: 0,
                crc: None
            })
        );
        assert_eq!(
            got[2],
            Entry::File(FileEntry {
                name: vec![0xff],
                size: 1,
                crc: Some(*b"#\x10\0\0\0\0\0\0")
            })
        );
    }

    #[test]
    fn rejects_bad_records() {
        let cases: [&[u8]; 6] = [
            br#"{"type":3,"payload":null}"#,
            br#"{"type":1,"name":"a","size":1,"payload":"AAE="}"#,
            br#"{"type":1,"name":"a","size":1,"payload":null}"#,
            br#"{"type":2,"payload":"!!"}"#,
            br#"{"type":1,"name":"a"}{"type":1,"name":"./a/"}"#,
            br#"{"type":2,"payload":"AA=="#,
        ];
        for input in cases {
            let result: Result<Vec<Entry>> = MetadataReader::new(input).collect();
            assert!(result.is_err(), "{}", String::from_utf8_lossy(input));
        }
    }
}
