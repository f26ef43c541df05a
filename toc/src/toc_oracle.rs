//! The TOC reader as it was before entries were cut from the stream (one
//! serde pass over a reader), kept as the oracle the new reader must agree
//! with on any input.

use std::fmt;

use proptest::prelude::*;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use super::{Entry, Toc, key_is, or_default};

struct TopSeed<'f>(&'f mut Vec<Entry>);

impl<'de> serde::de::DeserializeSeed<'de> for TopSeed<'_> {
    type Value = (i64, String);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = (i64, String);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut header = (0, String::new());
        while let Some(key) = map.next_key::<String>()? {
            if key_is(&key, "version") {
                header.0 = or_default(&mut map)?;
            } else if key_is(&key, "entries") {
                map.next_value_seed(EntriesSeed(&mut *self.0))?;
            } else if key_is(&key, "tarSplitDigest") {
                header.1 = or_default(&mut map)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(header)
    }
}

struct EntriesSeed<'f>(&'f mut Vec<Entry>);

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of TOC entries")
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<Entry>()? {
            self.0.push(e);
        }
        Ok(())
    }
}

fn oracle(json: &[u8]) -> Option<Toc> {
    let mut entries = Vec::new();
    let mut de = serde_json::Deserializer::from_reader(json);
    let (version, tar_split_digest) =
        serde::de::DeserializeSeed::deserialize(TopSeed(&mut entries), &mut de).ok()?;
    de.end().ok()?;
    Some(Toc {
        version,
        entries,
        tar_split_digest,
    })
}

/// A key as some writer might spell it.
fn spelled(key: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(key.to_owned()),
        Just(key.to_ascii_uppercase()),
        Just(key.to_ascii_lowercase()),
    ]
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i32>().prop_map(Value::from),
        "[a-z/.\"\\\\]{0,6}".prop_map(Value::from),
        Just(json!({"user.x": "eA=="})),
        Just(json!([1, {"a": "]"}])),
    ]
}

fn entry() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "type", "name", "linkName", "mode", "size", "uid", "gid", "modtime", "devMajor", "xattrs", "digest",
        "offset", "endOffset", "chunkSize", "chunkDigest", "chunkType", "innerOffset", "whatever", "chunkOffsetX",
    ]);
    prop::collection::vec((keys.prop_flat_map(spelled), field_value()), 0..6)
        .prop_map(|fields| Value::Object(fields.into_iter().collect()))
}

fn toc_text() -> impl Strategy<Value = Vec<u8>> {
    let top = prop::collection::vec(
        prop_oneof![
            (spelled("version"), field_value()),
            (spelled("entries"), prop_oneof![Just(Value::Null), prop::collection::vec(entry(), 0..5).prop_map(Value::Array)]),
            (spelled("tarSplitDigest"), field_value()),
            (Just("extra".to_owned()), field_value()),
        ],
        0..5,
    );
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, 0usize..10), 0..3);
    (top, any::<bool>(), edits).prop_map(|(fields, pretty, edits)| {
        // Keys may repeat: written by hand, as a map would keep one.
        let mut text = String::from("{");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let v = if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) };
            text += &format!("{}:{}", serde_json::to_string(k).expect("a string"), v.expect("serializes"));
        }
        text.push_str("} ");
        let mut text = text.into_bytes();
        for (at, kind, byte) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            let byte = b"{}[]\",:\\ 1"[byte];
            match kind {
                0 => {
                    text.remove(i);
                }
                1 => text[i] = byte,
                _ => text.insert(i, byte),
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn reads_as_the_serde_reader_did(text in toc_text()) {
        prop_assert_eq!(Toc::parse(&text).ok(), oracle(&text));
    }
}
