//! metadata records + payloads → the original tar stream.

use std::io::{self, Read, Write};

use crate::crc64::{Crc64, hex};
use crate::error::{Error, Name, Result};
use crate::files::FileGetter;
use crate::metadata::{Entry, FileEntry};
use crate::tar::{self, SliceSource, header::BLOCK, sparse::SparseMap};

const COPY_BUFFER: usize = 128 << 10;

/// What an assembly wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssembleSummary {
    /// Bytes of tar written.
    pub tar_size: u64,
    /// Files whose payload came from the getter.
    pub files: u64,
}

/// How a file's payload is laid out in the tar, read back from the header
/// in the segment before it.
enum Layout {
    /// `n` bytes, as the getter returns them.
    Plain(u64),
    /// Only the data fragments of the file the getter returns.
    Sparse(SparseMap),
}

/// Writes the tar stream that `entries` describe, taking each payload from
/// `getter` and checking it against the recorded CRC-64. A payload that does
/// not match is an error naming the entry; the output then holds a partial
/// tar, so write to a temporary place and keep it only on success.
pub fn assemble<I, G, W>(entries: I, getter: &mut G, out: W) -> Result<AssembleSummary>
where
    I: IntoIterator<Item = Result<Entry>>,
    G: FileGetter + ?Sized,
    W: Write,
{
    let mut out = io::BufWriter::with_capacity(256 << 10, out);
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut summary = AssembleSummary::default();
    let mut last_segment: Vec<u8> = Vec::new();
    for entry in entries {
        match entry? {
            Entry::Segment(bytes) => {
                out.write_all(&bytes)?;
                summary.tar_size += bytes.len() as u64;
                last_segment = bytes;
            }
            Entry::File(file) => {
                if file.size > 0 {
                    let layout = layout_of(&last_segment, &file);
                    summary.tar_size += copy_payload(getter, &file, layout, &mut out, &mut buf)?;
                    summary.files += 1;
                }
                last_segment.clear();
            }
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Reads the header that precedes a file back out of its segment. Plain
/// entries need none of this, but sparse ones store fewer bytes than the
/// file has, and header-only types (links, devices) with a size field store
/// none; both must come out as they went in.
fn layout_of(segment: &[u8], file: &FileEntry) -> Layout {
    let fallback = Layout::Plain(file.size as u64);
    // A segment is the previous entry's padding, then whole blocks.
    let mut src = SliceSource {
        bytes: segment,
        pos: 0,
    };
    let Ok(Some(entry)) = tar::next_entry(&mut src, 0, (segment.len() % BLOCK) as u64) else {
        return fallback;
    };
    if entry.info.name != file.name || entry.info.size != file.size {
        return fallback;
    }
    match entry.sparse {
        Some(map) => Layout::Sparse(map),
        None => Layout::Plain(entry.data_len),
    }
}

fn copy_payload<G: FileGetter + ?Sized, W: Write>(
    getter: &mut G,
    file: &FileEntry,
    layout: Layout,
    out: &mut W,
    buf: &mut [u8],
) -> Result<u64> {
    let name = || Name::from(file.name.as_slice());
    let mut crc = Crc64::new();
    let mut written = 0u64;
    // Header-only entries store no data: the checksum is of nothing.
    if !matches!(layout, Layout::Plain(0)) {
        let mut input = getter.get(&file.name).map_err(|source| Error::Get {
            name: name(),
            source,
        })?;
        let want = match &layout {
            Layout::Plain(n) => *n,
            Layout::Sparse(map) => map.size,
        };
        let mut pos = 0u64;
        while pos < want {
            let len = (buf.len() as u64).min(want - pos) as usize;
            let n = read_some(&mut input, &mut buf[..len]).map_err(|source| Error::Get {
                name: name(),
                source,
            })?;
            if n == 0 {
                return Err(Error::SizeMismatch {
                    name: name(),
                    expected: want,
                    actual: format!("only {pos}"),
                });
            }
            let chunk = &buf[..n];
            crc.update(chunk);
            written += write_stored(out, chunk, pos, &layout)?;
            pos += n as u64;
        }
        let extra = read_some(&mut input, &mut buf[..1]).map_err(|source| Error::Get {
            name: name(),
            source,
        })?;
        if extra > 0 {
            return Err(Error::SizeMismatch {
                name: name(),
                expected: want,
                actual: "more".into(),
            });
        }
    }
    let actual = crc.finish();
    if file.crc != Some(actual) {
        return Err(Error::ChecksumMismatch {
            name: name(),
            expected: file.crc.map_or_else(|| "none".into(), |c| hex(&c)),
            actual: hex(&actual),
        });
    }
    Ok(written)
}

/// Writes the part of `chunk` (at logical offset `pos`) the tar stores.
fn write_stored<W: Write>(out: &mut W, chunk: &[u8], pos: u64, layout: &Layout) -> Result<u64> {
    let Layout::Sparse(map) = layout else {
        out.write_all(chunk)?;
        return Ok(chunk.len() as u64);
    };
    let end = pos + chunk.len() as u64;
    let mut written = 0;
    for &(offset, length) in &map.fragments {
        let (from, to) = (offset.max(pos), (offset + length).min(end));
        if from < to {
            out.write_all(&chunk[(from - pos) as usize..(to - pos) as usize])?;
            written += to - from;
        }
    }
    Ok(written)
}

fn read_some<R: Read + ?Sized>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
