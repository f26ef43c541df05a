//! Metadata records in the one form Go's tar-split (and
//! [`MetadataWriter`](crate::MetadataWriter)) writes them, read without
//! serde.
//!
//! Go's `encoding/json` writes a record's fields in its struct's order,
//! with no whitespace: `{"type":T,"name":"N","size":S,"payload":"P",
//! "position":I}`, the name and size left out when empty. Reading that
//! form by matching it byte for byte takes a third of serde's time, and
//! reading an earlier layer's tar-split lies on an update's critical path.
//! Anything else (other key order or case, escapes, whitespace, unknown
//! keys, odd numbers) is not matched, and goes to serde, which reads what
//! Go's decoder reads.

use super::metadata::{BASE64, WireEntry};
use base64::Engine;

/// The record, when it is in the canonical form and serde would read it
/// as the same `WireEntry`; `None` otherwise (to be read by serde).
pub(crate) fn parse(record: &[u8]) -> Option<WireEntry> {
    let mut r = Cursor { rest: record };
    r.literal(b"{\"type\":")?;
    let kind = r.int()?;
    let mut entry = WireEntry {
        kind,
        name: None,
        name_raw: None,
        size: 0,
        payload: None,
    };
    r.literal(b",")?;
    if r.eat(b"\"name\":\"") {
        let text = r.plain_string()?;
        entry.name = Some(std::str::from_utf8(text).ok()?.to_owned());
        r.literal(b",")?;
    }
    if r.eat(b"\"name_raw\":\"") {
        entry.name_raw = Some(BASE64.decode(r.plain_string()?).ok()?);
        r.literal(b",")?;
    }
    if r.eat(b"\"size\":") {
        entry.size = r.int()?;
        r.literal(b",")?;
    }
    r.literal(b"\"payload\":")?;
    if !r.eat(b"null") {
        r.literal(b"\"")?;
        entry.payload = Some(BASE64.decode(r.plain_string()?).ok()?);
    }
    r.literal(b",\"position\":")?;
    r.int()?;
    r.literal(b"}")?;
    r.rest.is_empty().then_some(entry)
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn eat(&mut self, prefix: &[u8]) -> bool {
        match self.rest.strip_prefix(prefix) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn literal(&mut self, prefix: &[u8]) -> Option<()> {
        self.eat(prefix).then_some(())
    }

    /// A JSON integer that fits an `i64`, written without a leading zero
    /// or `-0`: the form Go writes. Other forms are left to serde.
    fn int(&mut self) -> Option<i64> {
        let negative = self.eat(b"-");
        let digits = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (text, rest) = self.rest.split_at(digits);
        if text.is_empty() || (text[0] == b'0' && (digits > 1 || negative)) {
            return None;
        }
        let mut value: i64 = 0;
        for &d in text {
            let d = i64::from(d - b'0');
            value = value.checked_mul(10)?;
            value = if negative { value.checked_sub(d)? } else { value.checked_add(d)? };
        }
        self.rest = rest;
        Some(value)
    }

    /// The text of a string up to its closing quote (consumed), when it
    /// holds no escape and no control character.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        let end = memchr::memchr2(b'"', b'\\', self.rest)?;
        let text = &self.rest[..end];
        // A fold, not a search: it runs a vector at a time.
        if self.rest[end] != b'"' || text.iter().fold(false, |control, &b| control | (b < 0x20)) {
            return None;
        }
        self.rest = &self.rest[end + 1..];
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(record: &[u8]) -> Option<WireEntry> {
        serde_json::from_slice(record).ok()
    }

    #[test]
    fn reads_what_go_writes() {
        for record in [
            &br#"{"type":2,"payload":"AAAA","position":0}"#[..],
            br#"{"type":1,"name":"etc/hosts","size":12,"payload":"AQIDBAUGBwg=","position":1}"#,
            br#"{"type":1,"name":"etc/","payload":null,"position":2}"#,
            br#"{"type":1,"name_raw":"/w==","payload":null,"position":3}"#,
            br#"{"type":2,"payload":"","position":4}"#,
        ] {
            let fast = parse(record);
            assert!(fast.is_some(), "{}", String::from_utf8_lossy(record));
            assert_eq!(fast, serde(record));
        }
    }

    #[test]
    fn leaves_other_forms_to_serde() {
        for record in [
            &br#"{ "type":2,"payload":"AAAA","position":0}"#[..],
            br#"{"Type":2,"payload":"AAAA","position":0}"#,
            br#"{"type":2,"position":0,"payload":"AAAA"}"#,
            br#"{"type":1,"name":"a\"b","payload":null,"position":0}"#,
            br#"{"type":1,"name":"a\u0041","payload":null,"position":0}"#,
            br#"{"type":02,"payload":null,"position":0}"#,
            br#"{"type":-0,"payload":null,"position":0}"#,
            br#"{"type":1,"size":99999999999999999999,"payload":null,"position":0}"#,
            br#"{"type":1,"size":1.5,"payload":null,"position":0}"#,
            br#"{"type":2,"payload":"AAA","position":0}"#,
            br#"{"type":2,"payload":"AAAA","position":0,"x":1}"#,
            br#"{"type":2,"payload":"AAAA","position":0} "#,
            b"{\"type\":1,\"name\":\"a\tb\",\"payload\":null,\"position\":0}",
            b"{\"type\":1,\"name\":\"\xff\",\"payload\":null,\"position\":0}",
        ] {
            assert_eq!(parse(record), None, "{}", String::from_utf8_lossy(record));
        }
    }

    proptest::proptest! {
        /// Whatever it reads, serde reads the same.
        #[test]
        fn agrees_with_serde(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            if let Some(fast) = parse(&bytes) {
                proptest::prop_assert_eq!(Some(fast), serde(&bytes));
            }
        }

        /// A canonical record with one byte changed: read alike, or left
        /// to serde.
        #[test]
        fn changed_records_agree(at in 0usize..80, byte in proptest::prelude::any::<u8>()) {
            let mut record = br#"{"type":1,"name":"usr/bin/a","size":10,"payload":"AQIDBAUGBwg=","position":7}"#.to_vec();
            let at = at % record.len();
            record[at] = byte;
            if let Some(fast) = parse(&record) {
                proptest::prop_assert_eq!(Some(fast), serde(&record));
            }
        }

        /// Records in the canonical form, with any name, size and payload.
        #[test]
        fn canonical_records_agree(
            kind in -3i64..4,
            name in proptest::option::of(".{0,12}"),
            size in proptest::prelude::any::<i64>(),
            payload in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)),
            position in 0i64..1000,
        ) {
            let mut record = format!("{{\"type\":{kind},");
            if let Some(name) = &name {
                record.push_str(&format!("\"name\":{},", serde_json::to_string(name).expect("a string encodes")));
            }
            if size != 0 {
                record.push_str(&format!("\"size\":{size},"));
            }
            match &payload {
                Some(p) => record.push_str(&format!("\"payload\":\"{}\",", BASE64.encode(p))),
                None => record.push_str("\"payload\":null,"),
            }
            record.push_str(&format!("\"position\":{position}}}"));
            let slow = serde(record.as_bytes());
            proptest::prop_assert!(slow.is_some());
            if let Some(fast) = parse(record.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), slow);
            } else {
                // Only names that need escapes leave the fast path.
                proptest::prop_assert!(name.is_some_and(|n| n.chars().any(|c| c < ' ' || c == '"' || c == '\\')));
            }
        }
    }
}
