//! Any byte string as metadata: parsing never panics; what parses
//! re-encodes to metadata that parses to the same records; assembling it
//! fails cleanly when payloads are missing.

#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use strata_tarsplit::{Entry, MemoryFiles, MetadataReader, MetadataWriter, assemble};

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = MetadataReader::new(data).collect::<Result<Vec<Entry>, _>>() else {
        return;
    };
    let mut writer = MetadataWriter::new(Vec::new());
    for entry in &entries {
        writer.entry(entry).expect("parsed records re-encode");
    }
    let bytes = writer.finish().expect("in memory");
    let again: Vec<Entry> = MetadataReader::new(&bytes[..]).collect::<Result<_, _>>().expect("re-encoded metadata parses");
    assert_eq!(again, entries);
    let _ = assemble(entries.into_iter().map(Ok), &mut MemoryFiles::default(), io::sink());
});
