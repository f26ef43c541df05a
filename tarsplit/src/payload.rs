//! A file's content as the disassembler hands it to a [`FilePutter`].

use std::io::{self, BufRead, Read};

use crate::crc64::Crc64;
use crate::tar::sparse::SparseMap;

/// Where payload bytes come from (the disassembler's input buffer).
pub(crate) trait ChunkSource {
    fn chunk(&mut self) -> io::Result<&[u8]>;
    fn advance(&mut self, n: usize);
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    Data,
    Hole,
}

/// The content of one file entry, as stored in the tar. For a sparse entry
/// the holes read as zeros, so a putter always sees the whole file.
///
/// It is a [`BufRead`]: a putter that writes the bytes somewhere reads
/// them straight from the disassembler's buffer. Whatever the putter leaves
/// unread is still checksummed.
pub struct Payload<'a> {
    src: &'a mut dyn ChunkSource,
    crc: Crc64,
    len: u64,
    pos: u64,
    sparse: Option<&'a SparseMap>,
    fragment: usize,
    region: Region,
    failed: bool,
}

impl std::fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.len)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl<'a> Payload<'a> {
    pub(crate) fn new(
        src: &'a mut dyn ChunkSource,
        len: u64,
        sparse: Option<&'a SparseMap>,
    ) -> Self {
        Payload {
            src,
            crc: Crc64::new(),
            len,
            pos: 0,
            sparse,
            fragment: 0,
            region: Region::Data,
            failed: false,
        }
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// Reads the rest, then returns the checksum of everything.
    pub(crate) fn finish(mut self) -> io::Result<[u8; 8]> {
        while self.remaining() > 0 {
            let n = self.fill_buf()?.len();
            self.consume(n);
        }
        Ok(self.crc.finish())
    }

    /// True when reading failed because the input ended or broke, rather
    /// than because of the putter.
    pub(crate) fn input_failed(&self) -> bool {
        self.failed
    }

    fn region_end(&mut self) -> (Region, u64) {
        let Some(map) = self.sparse else {
            return (Region::Data, self.len);
        };
        match map.fragments.get(self.fragment) {
            Some(&(offset, length)) if self.pos >= offset => (Region::Data, offset + length),
            Some(&(offset, _)) => (Region::Hole, offset),
            None => (Region::Hole, self.len),
        }
    }
}

impl BufRead for Payload<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            return Ok(&[]);
        }
        let (region, end) = self.region_end();
        self.region = region;
        let want = end - self.pos;
        match region {
            Region::Hole => Ok(&ZEROS[..want.min(ZEROS.len() as u64) as usize]),
            Region::Data => {
                let chunk = match self.src.chunk() {
                    Ok(c) if !c.is_empty() => c,
                    Ok(_) => {
                        self.failed = true;
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tar stream ends inside file data",
                        ));
                    }
                    Err(e) => {
                        self.failed = true;
                        return Err(e);
                    }
                };
                let n = (chunk.len() as u64).min(want) as usize;
                Ok(&chunk[..n])
            }
        }
    }

    fn consume(&mut self, amt: usize) {
        if amt == 0 {
            return;
        }
        match self.region {
            Region::Hole => self.crc.update(&ZEROS[..amt]),
            Region::Data => {
                // fill_buf already buffered these bytes; this cannot read.
                if let Ok(chunk) = self.src.chunk() {
                    self.crc.update(&chunk[..amt]);
                }
                self.src.advance(amt);
            }
        }
        self.pos += amt as u64;
        if let Some(map) = self.sparse
            && let Some(&(offset, length)) = map.fragments.get(self.fragment)
            && self.pos == offset + length
        {
            self.fragment += 1;
        }
    }
}

impl Read for Payload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.fill_buf()?;
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}
