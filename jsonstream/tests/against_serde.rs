//! `Values` + `serde_json::from_slice` must read any input exactly as
//! serde_json's own stream reader does: the same values, and a failure at
//! the same value, whatever sizes the input arrives in.

use std::io::Read;

use proptest::prelude::*;
use serde_json::Value;
use strata_jsonstream::Values;

/// Hands out its input in pieces of the given sizes, in turn.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The values read, and whether reading ended in a failure.
fn with_serde(data: &[u8]) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_slice(data).into_iter::<Value>() {
        match v {
            Ok(v) => out.push(v),
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn with_values(data: &[u8], sizes: Vec<usize>) -> (Vec<Value>, bool) {
    let mut values = Values::new(Pieces { data, sizes, turn: 0 });
    let mut out = Vec::new();
    while let Some(v) = values.next_value().expect("reading from memory") {
        match serde_json::from_slice(v) {
            Ok(v) => out.push(v),
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        // Quotes, backslashes, brackets and control bytes inside strings.
        "[\"\\\\{}\\[\\],: a-z\u{1}-\u{1f}é]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"\\\\]{0,4}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON text of some values, with whitespace between them (or none), then
/// perhaps damaged: bytes dropped, replaced or inserted.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let values = prop::collection::vec((json_value(), prop::sample::select(vec!["", " ", "\n", "\t\r\n  "])), 0..6);
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 0..3);
    (values, edits).prop_map(|(values, edits)| {
        let mut text = Vec::new();
        for (v, space) in values {
            text.extend_from_slice(serde_json::to_string(&v).expect("serializes").as_bytes());
            text.extend_from_slice(space.as_bytes());
        }
        for (at, kind, byte) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            let byte = *b"{}[]\",:\\ 1a".get(usize::from(byte) % 12).unwrap_or(&byte);
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
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn reads_as_serde_does(text in stream(), sizes in prop::collection::vec(1usize..9, 1..4)) {
        prop_assert_eq!(with_values(&text, sizes), with_serde(&text));
    }

    #[test]
    fn any_bytes_read_as_serde_does(text in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(with_values(&text, vec![3]), with_serde(&text));
    }
}

#[test]
fn values_are_cut_where_they_end() {
    let text = br#"  {"a\"}": "\\", "b": [1, {"c": "]"}]}[]"x\"y" 12 true,null"#;
    for size in 1..text.len() {
        let mut values = Values::new(Pieces { data: text, sizes: vec![size], turn: 0 });
        let mut got = Vec::new();
        while let Some(v) = values.next_value().expect("in memory") {
            got.push(String::from_utf8(v.to_vec()).expect("utf-8"));
        }
        assert_eq!(
            got,
            [r#"{"a\"}": "\\", "b": [1, {"c": "]"}]}"#, "[]", r#""x\"y""#, "12", "true", ",", "null"],
            "pieces of {size}"
        );
    }
}

#[test]
fn a_value_cut_short_is_returned_as_far_as_it_goes() {
    let mut values = Values::new(&br#"{"a": [1, "b\"#[..]);
    assert_eq!(values.next_value().expect("in memory"), Some(&br#"{"a": [1, "b\"#[..]));
    assert_eq!(values.next_value().expect("in memory"), None);
}

#[test]
fn peek_and_advance_walk_the_structure() {
    let mut values = Values::new(&b" [ 1 , 2 ] "[..]);
    assert_eq!(values.peek().expect("in memory"), Some(b'['));
    values.advance();
    assert_eq!(values.next_value().expect("in memory"), Some(&b"1"[..]));
    assert_eq!(values.peek().expect("in memory"), Some(b','));
    values.advance();
    assert_eq!(values.next_value().expect("in memory"), Some(&b"2"[..]));
    assert_eq!(values.peek().expect("in memory"), Some(b']'));
    values.advance();
    assert_eq!(values.offset(), 10);
    assert_eq!(values.peek().expect("in memory"), None);
}
