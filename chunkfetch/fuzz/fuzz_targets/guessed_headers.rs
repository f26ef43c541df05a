//! A local layer's kept headers, tar-split and header blocks as
//! arbitrary bytes, from which tar headers are guessed (and patched) for
//! TOC entries. Errors or no guess, never a panic, and never a guess that
//! does not describe its entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_chunkfetch::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::local_headers(data);
});
