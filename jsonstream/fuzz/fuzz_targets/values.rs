//! Any bytes, arriving in pieces of any size: cutting them into values and
//! parsing each gives what serde_json's own stream reader gives, up to and
//! including the value where it fails.

#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use strata_jsonstream::Values;

struct Pieces<'a> {
    data: &'a [u8],
    size: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&size, data)) = input.split_first() else {
        return;
    };
    let mut expected = Vec::new();
    let mut expected_failure = false;
    for v in serde_json::Deserializer::from_slice(data).into_iter::<Value>() {
        match v {
            Ok(v) => expected.push(v),
            Err(_) => {
                expected_failure = true;
                break;
            }
        }
    }
    let mut values = Values::new(Pieces { data, size: usize::from(size % 16) + 1 });
    let mut got = Vec::new();
    let mut failure = false;
    while let Some(v) = values.next_value().expect("reading from memory") {
        match serde_json::from_slice::<Value>(v) {
            Ok(v) => got.push(v),
            Err(_) => {
                failure = true;
                break;
            }
        }
    }
    assert_eq!((got, failure), (expected, expected_failure));
});
