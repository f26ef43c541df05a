#![doc = include_str!("../README.md")]

use std::io::{self, Read};

const START: usize = 64 << 10;

/// A stream of JSON values; see the crate's documentation.
pub struct Values<R> {
    input: R,
    buf: Vec<u8>,
    /// The first byte not consumed.
    start: usize,
    /// The end of what was read.
    end: usize,
    eof: bool,
    /// Bytes consumed before `buf[0]`.
    base: u64,
}

impl<R> std::fmt::Debug for Values<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values").field("offset", &(self.base + self.start as u64)).finish_non_exhaustive()
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where a scalar (number, `true`, `null`, or anything malformed) ends.
fn ends_scalar(b: u8) -> bool {
    is_space(b) || matches!(b, b',' | b':' | b'[' | b']' | b'{' | b'}' | b'"')
}

/// How far a value has been scanned, kept across refills.
#[derive(Clone, Copy)]
enum Scan {
    /// Inside brackets: the depth, and whether inside a string there.
    Nested { depth: usize, in_string: bool },
    /// A top-level string.
    String,
    Scalar,
}

impl<R: Read> Values<R> {
    pub fn new(input: R) -> Self {
        Values {
            input,
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            base: 0,
        }
    }

    /// Bytes consumed so far: where the next value (or whitespace) starts.
    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Reads more behind what is buffered; false at the end of the input.
    /// Moves the unconsumed bytes to the front first, so positions
    /// relative to `start` stay valid.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.base += self.start as u64;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).max(START);
            self.buf.resize(grown, 0);
        }
        loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next byte that is not whitespace, whitespace before it
    /// consumed; `None` at the end of the input.
    pub fn peek(&mut self) -> io::Result<Option<u8>> {
        loop {
            while self.start < self.end {
                let b = self.buf[self.start];
                if !is_space(b) {
                    return Ok(Some(b));
                }
                self.start += 1;
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Consumes the byte [`peek`](Self::peek) returned.
    pub fn advance(&mut self) {
        if self.start < self.end {
            self.start += 1;
        }
    }

    /// The next value, whitespace before it skipped; `None` at the end of
    /// the input. A value the input cuts short is returned as far as it
    /// goes, for the parser to refuse. A stray `]`, `}`, `,` or `:` is
    /// returned alone, likewise.
    pub fn next_value(&mut self) -> io::Result<Option<&[u8]>> {
        let Some(first) = self.peek()? else {
            return Ok(None);
        };
        let mut scan = match first {
            b'{' | b'[' => Scan::Nested {
                depth: 0,
                in_string: false,
            },
            b'"' => Scan::String,
            b']' | b'}' | b',' | b':' => {
                self.start += 1;
                return Ok(Some(&self.buf[self.start - 1..self.start]));
            }
            _ => Scan::Scalar,
        };
        // Offset from `start` of the next byte to look at.
        let mut at = 0;
        let len = loop {
            let window = &self.buf[self.start + at..self.end];
            match scan_window(window, &mut scan, at == 0) {
                Ok(n) => break at + n,
                Err(looked) => at += looked,
            }
            if !self.fill()? {
                // Cut short (or a scalar at the very end): all of it.
                break self.end - self.start;
            }
        };
        let value = self.start..self.start + len;
        self.start += len;
        Ok(Some(&self.buf[value]))
    }
}

/// Scans `window` (the first byte of the value when `first`): `Ok(n)` when
/// the value ends `n` bytes into it, else `Err(window.len())`.
fn scan_window(window: &[u8], scan: &mut Scan, first: bool) -> Result<usize, usize> {
    match scan {
        Scan::Scalar => window.iter().position(|&b| ends_scalar(b)).ok_or(window.len()),
        Scan::String => {
            // The opening quote, then the first unescaped quote.
            let from = usize::from(first);
            string_end(&window[from..]).map(|n| from + n).map_err(|safe| from + safe)
        }
        Scan::Nested { depth, in_string } => {
            let mut i = 0;
            while i < window.len() {
                if *in_string {
                    match string_end(&window[i..]) {
                        Ok(n) => {
                            *in_string = false;
                            i += n;
                        }
                        Err(safe) => return Err(i + safe),
                    }
                    continue;
                }
                match window[i] {
                    b'"' => *in_string = true,
                    b'{' | b'[' => *depth += 1,
                    b'}' | b']' => {
                        *depth -= 1;
                        if *depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            Err(window.len())
        }
    }
}

/// The length up to and including the first unescaped `"` in `s`, which
/// starts inside a string. When `s` ends first, `Err` with how much of it
/// was scanned: all of it, but for a backslash at its very end, whose
/// escaped byte is still to come.
fn string_end(s: &[u8]) -> Result<usize, usize> {
    let mut i = 0;
    loop {
        match memchr::memchr2(b'"', b'\\', &s[i..]) {
            None => return Err(s.len()),
            Some(k) => {
                let p = i + k;
                if s[p] == b'"' {
                    return Ok(p + 1);
                }
                if p + 1 >= s.len() {
                    return Err(p);
                }
                i = p + 2;
            }
        }
    }
}
