//! The input side of disassembly: a buffered reader that copies every byte
//! it reads to a pass-through writer, keeps the non-payload bytes it hands
//! to the header parser, and serves payload bytes in place.

use std::io::{self, Read, Write};

use crate::error::{Error, Result};
use crate::tar::Source;

const BUFFER: usize = 128 << 10;

/// Largest run of non-payload bytes between two payloads. Real archives stay
/// far below (a PAX header is at most 1 MiB); this keeps memory bounded.
const MAX_RAW: usize = 64 << 20;

pub(crate) struct TeeStream<R, W> {
    input: R,
    tee: W,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    offset: u64,
    eof: bool,
    raw: Vec<u8>,
}

impl<R: Read, W: Write> TeeStream<R, W> {
    pub(crate) fn new(input: R, tee: W) -> Self {
        TeeStream {
            input,
            tee,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
            raw: Vec::with_capacity(4096),
        }
    }

    /// Buffered bytes, reading more when none are left. Empty at the end.
    pub(crate) fn chunk(&mut self) -> io::Result<&[u8]> {
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

    pub(crate) fn advance(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
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
        self.tee.flush()
    }

    fn account(&mut self, n: usize) -> Result<()> {
        if self.raw.len() + n > MAX_RAW {
            return Err(Error::InvalidTar {
                offset: self.offset,
                reason: "more than 64 MiB of header and padding bytes in a row",
            });
        }
        let (start, end) = (self.start, self.start + n);
        self.raw.extend_from_slice(&self.buf[start..end]);
        self.advance(n);
        Ok(())
    }
}

impl<R: Read, W: Write> Source for TeeStream<R, W> {
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
