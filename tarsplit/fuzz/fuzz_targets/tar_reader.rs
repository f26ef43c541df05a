//! Any byte string: disassembly either fails with an error, or its metadata
//! and payloads reassemble to exactly the same bytes.

#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use strata_tarsplit::{FilePutter, MemoryFiles, MetadataReader, MetadataWriter, Payload, assemble, disassemble};

/// Keeps payloads in memory, refusing files whose (sparse) logical size
/// would make a tiny input expand without bound.
struct Capped(MemoryFiles);

impl FilePutter for Capped {
    fn put(&mut self, name: &[u8], payload: &mut Payload<'_>) -> io::Result<()> {
        if payload.len() > 16 << 20 {
            return Err(io::Error::other("too large for the fuzzer"));
        }
        self.0.put(name, payload)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut metadata = MetadataWriter::new(Vec::new());
    let mut files = Capped(MemoryFiles::default());
    let mut passthrough = Vec::new();
    if disassemble(data, &mut passthrough, &mut metadata, &mut files).is_err() {
        return;
    }
    assert_eq!(passthrough, data);
    let metadata = metadata.finish().expect("metadata in memory");
    let mut out = Vec::new();
    assemble(MetadataReader::new(&metadata[..]), &mut files.0, &mut out).expect("own metadata reassembles");
    assert_eq!(out, data);
});
