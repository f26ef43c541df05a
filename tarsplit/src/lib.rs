//! Split a tar stream into metadata and file payloads, and put it back
//! together bit for bit.
//!
//! The metadata is [tar-split]'s JSON-lines format, byte for byte, so it
//! interoperates with containers-storage's `*.tar-split.gz` files, with the
//! tar-split embedded in zstd:chunked layers and with the Go `tar-split`
//! tool.
//!
//! ```
//! use strata_tarsplit::{assemble, disassemble, MemoryFiles, MetadataReader, MetadataWriter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut builder = tar::Builder::new(Vec::new());
//! let mut header = tar::Header::new_gnu();
//! header.set_size(6);
//! header.set_cksum();
//! builder.append_data(&mut header, "hello.txt", &b"hello\n"[..])?;
//! let original = builder.into_inner()?;
//!
//! // Split: the metadata goes one way, the payloads another.
//! let mut metadata = MetadataWriter::new(Vec::new());
//! let mut files = MemoryFiles::default();
//! disassemble(&original[..], std::io::sink(), &mut metadata, &mut files)?;
//! let metadata = metadata.finish()?;
//!
//! // Reassemble: the same bytes come back.
//! let mut rebuilt = Vec::new();
//! assemble(MetadataReader::new(&metadata[..]), &mut files, &mut rebuilt)?;
//! assert_eq!(rebuilt, original);
//! # Ok(())
//! # }
//! ```
//!
//! [tar-split]: https://github.com/vbatts/tar-split

mod assemble;
mod crc64;
mod disassemble;
mod error;
mod files;
mod metadata;
mod path;
mod payload;
#[cfg(feature = "sample")]
pub mod sample;
mod stream;
mod tar;

pub use assemble::{AssembleSummary, assemble};
pub use disassemble::{Summary, disassemble};
pub use error::{Error, Name, Result};
pub use files::{DirGetter, DirPutter, DiscardPutter, FileGetter, FilePutter, HashPutter, HashedFile, MemoryFiles};
pub use metadata::{Entry, FileEntry, MetadataReader, MetadataWriter};
pub use payload::Payload;

/// Opens metadata that may be gzip-compressed (as `*.tar-split.gz` and the
/// Go tool's output are) or plain.
pub fn open_metadata<R: std::io::Read>(input: R) -> std::io::Result<MetadataReader<Box<dyn std::io::Read + Send>>>
where
    R: Send + 'static,
{
    use std::io::{BufRead, BufReader};
    let mut input = BufReader::new(input);
    let gzip = input.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn std::io::Read + Send> =
        if gzip { Box::new(flate2::bufread::MultiGzDecoder::new(input)) } else { Box::new(input) };
    Ok(MetadataReader::new(reader))
}

/// Compresses metadata the way containers-storage stores it (gzip, fast).
pub fn gzip_metadata<W: std::io::Write>(out: W) -> MetadataWriter<flate2::write::GzEncoder<W>> {
    MetadataWriter::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast()))
}
