//! What a registry sends back, as arbitrary bytes: multipart bodies,
//! Content-Type and Content-Range values, WWW-Authenticate challenges and
//! image references. Errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_chunkfetch::registry::auth::parse_challenges;
use strata_chunkfetch::{Reference, fuzzing};

fuzz_target!(|data: &[u8]| {
    fuzzing::multipart(data);
    let text = String::from_utf8_lossy(data);
    let _ = parse_challenges(&text);
    let _ = Reference::parse(&text);
    let _ = serde_json::from_slice::<strata_chunkfetch::oci::Manifest>(data);
});
