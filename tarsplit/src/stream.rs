//! The input side of disassembly: a buffered reader that copies every byte
//! it reads to a pass-through writer, keeps the non-payload bytes it hands
//! to the header parser, and serves payload bytes in place.

use std::io::{self, BufRead, Read, Write};

use crate::error::{Error, Result};
use crate::tar::Source;

const BUFFER: usize = 128 << 10;

/// Largest run of non-payload bytes between two payloads. Real archives stay
/// far below (a PAX header is at most 1 MiB); this keeps memory bounded.
const MAX_RAW: usize = 64 << 20;

/// Where the stream's bytes come from.
pub(crate) trait Input {
    /// Buffered bytes, reading more when none are left. Empty at the end.
    fn chunk(&mut self) -> io::Result<&[u8]>;
    /// Marks the first `n` bytes of the chunk as used.
    fn consume(&mut self, n: usize);
    fn flush(&mut self) -> io::Result<()>;
}

/// A reader and a buffer of ours; every byte read is also copied to `tee`.
pub(crate) struct Buffered<R, W> {
    input: R,
    tee: W,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R, W> Buffered<R, W> {
    pub(crate) fn new(input: R, tee: W) -> Self {
        Buffered {
            input,
            tee,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        }
    }
}

impl<R: Read, W: Write> Input for Buffered<R, W> {
    fn chunk(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end && !self.eof {
            let n = loop {
                match self.input.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.eof = true;
            } else {
                self.tee.write_all(&self.buf[..n])?;
            }
            (self.start, self.end) = (0, n);
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tee.flush()
    }
}

/// A buffered reader whose buffer is served in place: no copy of ours.
pub(crate) struct InPlace<B>(pub(crate) B);

impl<B: BufRead> Input for InPlace<B> {
    fn chunk(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.0.fill_buf() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                // The borrow checker cannot see that the loop ends here.
                Ok(_) => break,
            }
        }
        self.0.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.0.consume(n);
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The input side of disassembly: serves the input's chunks, keeps the
/// non-payload bytes it hands to the header parser, and counts the offset.
pub(crate) struct TeeStream<I> {
    input: I,
    offset: u64,
    raw: Vec<u8>,
}

impl<I: Input> TeeStream<I> {
    pub(crate) fn new(input: I) -> Self {
        TeeStream {
            input,
            offset: 0,
            raw: Vec::with_capacity(4096),
        }
    }

    /// Buffered bytes, reading more when none are left. Empty at the end.
    pub(crate) fn chunk(&mut self) -> io::Result<&[u8]> {
        self.input.chunk()
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.input.consume(n);
        self.offset += n as u64;
    }

    /// The non-payload bytes read since the last call.
    pub(crate) fn take_raw(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.raw, Vec::with_capacity(4096))
    }

    /// Reads up to `max` bytes that are neither header nor payload (data
    /// after the end-of-archive marker).
    pub(crate) fn read_trailing(&mut self, out: &mut Vec<u8>, max: usize) -> Result<()> {
        while out.len() < max {
            let chunk = self.chunk()?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len().min(max - out.len());
            out.extend_from_slice(&chunk[..n]);
            self.advance(n);
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.input.flush()
    }

    /// Keeps the next `n` bytes of the current chunk as raw bytes.
    fn account(&mut self, n: usize) -> Result<()> {
        if self.raw.len() + n > MAX_RAW {
            return Err(Error::InvalidTar {
                offset: self.offset,
                reason: "more than 64 MiB of header and padding bytes in a row",
            });
        }
        let chunk = self.input.chunk()?;
        self.raw.extend_from_slice(&chunk[..n]);
        self.advance(n);
        Ok(())
    }
}

impl<I: Input> Source for TeeStream<I> {
    fn read_full(&mut self, out: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < out.len() {
            let chunk = self.chunk()?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&chunk[..n]);
            self.account(n)?;
            done += n;
        }
        Ok(done)
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        let mut done = 0u64;
        while done < n {
            let chunk = self.chunk()?;
            if chunk.is_empty() {
                break;
            }
            let take = (chunk.len() as u64).min(n - done) as usize;
            self.account(take)?;
            done += take as u64;
        }
        Ok(done)
    }

    fn offset(&self) -> u64 {
        self.offset
    }
}
