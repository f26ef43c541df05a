//! tar stream → metadata records + payloads.

use std::io::{self, Read, Write};

use crate::error::{Error, Name, Result};
use crate::files::FilePutter;
use crate::metadata::MetadataWriter;
use crate::payload::{ChunkSource, Payload};
use crate::stream::{Buffered, InPlace, Input, TeeStream};
use crate::tar;
use crate::tar::info::HeaderInfo;

/// Data after the end-of-archive marker is stored in segments of this size.
const TRAILING_CHUNK: usize = 1 << 20;

/// What a disassembly saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Bytes in the tar stream.
    pub tar_size: u64,
    /// Tar entries (every header but extension headers).
    pub entries: u64,
    /// Bytes of file payload (logical, holes included).
    pub payload_size: u64,
}

impl<I: Input> ChunkSource for TeeStream<I> {
    fn chunk(&mut self) -> io::Result<&[u8]> {
        TeeStream::chunk(self)
    }

    fn advance(&mut self, n: usize) {
        TeeStream::advance(self, n);
    }
}

/// Receives a tar stream split into its parts, in stream order, while
/// [`split`] reads it: what a converter (tar → zstd:chunked) or an extractor
/// needs, with the full header of every entry next to its raw bytes.
pub trait SplitSink {
    /// Bytes that are not file payload: headers, padding, the end-of-archive
    /// marker, data after it.
    fn raw(&mut self, bytes: &[u8]) -> Result<()>;
    /// One entry, after the raw bytes of its headers. `payload` is given
    /// when the entry's size is positive; what the sink leaves unread is
    /// still checksummed.
    fn entry(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> io::Result<()>;
}

/// Adapts a [`FilePutter`]: payloads only.
struct PutterSink<'p, P: ?Sized>(&'p mut P);

impl<P: FilePutter + ?Sized> SplitSink for PutterSink<'_, P> {
    fn raw(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }

    fn entry(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> io::Result<()> {
        match payload {
            Some(p) => self.0.put(&header.name, p),
            None => Ok(()),
        }
    }
}

/// Reads a tar stream, copies every byte of it to `passthrough`, writes its
/// metadata records to `metadata`, and hands each payload to `putter`.
///
/// Memory stays bounded whatever the archive's size. Names, sizes and record
/// boundaries are those tar-split's Go code produces, so either tool can
/// reassemble the other's metadata.
///
/// Sparse entries are the one deliberate difference: tar-split drops the
/// GNU 1.0 sparse map and writes expanded data on reassembly, so it cannot
/// reproduce them; strata keeps the map in the preceding segment and its
/// [`assemble`](crate::assemble) writes back only the stored fragments.
pub fn disassemble<R, T, M, P>(
    input: R,
    passthrough: T,
    metadata: &mut MetadataWriter<M>,
    putter: &mut P,
) -> Result<Summary>
where
    R: Read,
    T: Write,
    M: Write,
    P: FilePutter + ?Sized,
{
    split(input, passthrough, metadata, &mut PutterSink(putter))
}

/// [`disassemble`], handing `sink` every raw segment and every entry's
/// resolved header as well as the payloads.
pub fn split<R, T, M, S>(
    input: R,
    passthrough: T,
    metadata: &mut MetadataWriter<M>,
    sink: &mut S,
) -> Result<Summary>
where
    R: Read,
    T: Write,
    M: Write,
    S: SplitSink + ?Sized,
{
    split_stream(TeeStream::new(Buffered::new(input, passthrough)), metadata, sink)
}

/// [`split`] of a buffered reader, its buffer parsed in place: no copy of
/// the stream is made (a layer arriving in blocks of a channel, say).
pub fn split_buffered<B, M, S>(input: B, metadata: &mut MetadataWriter<M>, sink: &mut S) -> Result<Summary>
where
    B: std::io::BufRead,
    M: Write,
    S: SplitSink + ?Sized,
{
    split_stream(TeeStream::new(InPlace(input)), metadata, sink)
}

fn split_stream<I, M, S>(mut stream: TeeStream<I>, metadata: &mut MetadataWriter<M>, sink: &mut S) -> Result<Summary>
where
    I: Input,
    M: Write,
    S: SplitSink + ?Sized,
{
    let mut summary = Summary::default();
    let (mut unread, mut padding) = (0u64, 0u64);
    while let Some(entry) = tar::next_entry(&mut stream, unread, padding)? {
        let raw = stream.take_raw();
        metadata.segment(&raw)?;
        sink.raw(&raw)?;
        metadata.claim_name(&entry.info.name)?;
        let mut crc = None;
        unread = entry.data_len;
        if entry.info.size > 0 {
            // Go's reader serves a plain entry's data area, whatever its
            // size field said; a sparse entry expands to its logical size.
            let (len, stored) = match &entry.sparse {
                Some(map) => (map.size, map.stored_len()),
                None => (entry.data_len, entry.data_len),
            };
            if stored != entry.data_len {
                return Err(Error::InvalidTar {
                    offset: stream_offset(&stream),
                    reason: "sparse map does not match the stored data size",
                });
            }
            crc = Some(put_payload(&mut stream, &entry, len, sink)?);
            unread = 0;
            summary.payload_size += len;
        } else {
            sink.entry(&entry.info, None).map_err(|source| Error::Put {
                name: Name::from(entry.info.name.as_slice()),
                source,
            })?;
        }
        metadata.file(&entry.info.name, entry.info.size, crc)?;
        let raw = stream.take_raw();
        if !raw.is_empty() {
            metadata.segment(&raw)?;
            sink.raw(&raw)?;
        }
        padding = entry.padding;
        summary.entries += 1;
    }
    let raw = stream.take_raw();
    metadata.segment(&raw)?;
    sink.raw(&raw)?;

    // Whatever follows the end-of-archive marker (record padding, usually)
    // is kept too, then closed with an empty segment as tar-split 0.11 does.
    let mut trailing = Vec::with_capacity(TRAILING_CHUNK);
    loop {
        trailing.clear();
        stream.read_trailing(&mut trailing, TRAILING_CHUNK)?;
        if !trailing.is_empty() {
            metadata.segment(&trailing)?;
            sink.raw(&trailing)?;
        }
        if trailing.len() < TRAILING_CHUNK {
            break;
        }
    }
    metadata.segment(&[])?;
    stream.flush()?;
    summary.tar_size = stream_offset(&stream);
    Ok(summary)
}

fn stream_offset<I: Input>(stream: &TeeStream<I>) -> u64 {
    crate::tar::Source::offset(stream)
}

fn put_payload<I: Input, S: SplitSink + ?Sized>(
    stream: &mut TeeStream<I>,
    entry: &tar::Entry,
    len: u64,
    sink: &mut S,
) -> Result<[u8; 8]> {
    enum Failure {
        Input(Option<io::Error>),
        Put(io::Error),
    }
    let result = {
        let mut payload = Payload::new(stream, len, entry.sparse.as_ref());
        let put = sink.entry(&entry.info, Some(&mut payload));
        if payload.input_failed() {
            Err(Failure::Input(put.err()))
        } else if let Err(e) = put {
            Err(Failure::Put(e))
        } else {
            payload.finish().map_err(|e| Failure::Input(Some(e)))
        }
    };
    result.map_err(|failure| match failure {
        Failure::Put(source) => Error::Put {
            name: Name::from(entry.info.name.as_slice()),
            source,
        },
        Failure::Input(Some(e)) if e.kind() != io::ErrorKind::UnexpectedEof => Error::Io(e),
        Failure::Input(_) => Error::Truncated {
            offset: stream_offset(stream),
            what: "file data",
        },
    })
}
