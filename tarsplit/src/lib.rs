#![doc = include_str!("../README.md")]

mod assemble;
mod canonical;
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
pub use disassemble::{SplitSink, Summary, disassemble, split, split_buffered};
pub use error::{Error, Name, Result};
pub use files::{
    DirGetter, DirPutter, DiscardPutter, FileGetter, FilePutter, HashPutter, HashedFile,
    MemoryFiles,
};
pub use metadata::{Entry, FileEntry, MetadataReader, MetadataWriter};
pub use payload::Payload;
pub use tar::info::{HeaderInfo, Time};

/// The resolved header of the entry whose headers end a metadata segment
/// (the segment written just before that entry's file record). `None` when
/// the segment does not end in a parseable header.
pub fn header_of(segment: &[u8]) -> Option<HeaderInfo> {
    let mut src = tar::SliceSource {
        bytes: segment,
        pos: 0,
    };
    match tar::next_entry(&mut src, 0, (segment.len() % 512) as u64) {
        Ok(Some(entry)) => Some(entry.info),
        _ => None,
    }
}

/// The records of a PAX extended header (`"%d key=value\n"` …), in order.
/// Values are raw bytes and may hold newlines (binary xattrs do).
pub fn parse_pax_records(data: &[u8]) -> Result<Vec<tar::pax::PaxRecord>, &'static str> {
    tar::pax::records(data)
}

/// Opens metadata that may be gzip-compressed (as `*.tar-split.gz` and the
/// Go tool's output are) or plain.
pub fn open_metadata<R>(input: R) -> std::io::Result<MetadataReader<Box<dyn std::io::Read + Send>>>
where
    R: std::io::Read + Send + 'static,
{
    use std::io::{BufRead, BufReader};
    let mut input = BufReader::new(input);
    let gzip = input.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn std::io::Read + Send> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    Ok(MetadataReader::new(reader))
}

/// Compresses metadata the way containers-storage stores it (gzip, fast).
pub fn gzip_metadata<W: std::io::Write>(out: W) -> MetadataWriter<flate2::write::GzEncoder<W>> {
    MetadataWriter::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::fast(),
    ))
}
