//! Handing requested ranges to the sink out of whatever the server sent: a
//! multipart part, a single 206 body or the whole blob. Each is a segment
//! of the blob at a known offset; a segment serves the requested ranges it
//! wholly covers, in order, and the caller asks again for the rest.

use std::io::{self, Read};

use crate::{ByteRange, Error, RangeSink, Result};

/// An I/O error from the body itself (not from the sink), so a broken or
/// short answer is reported as the server's fault.
#[derive(Debug)]
pub(crate) struct BodyError(pub(crate) String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

/// Yields exactly `left` bytes of `inner`, or an error naming how many
/// were missing when `inner` ends early.
pub(crate) struct ExactReader<'a> {
    inner: &'a mut dyn Read,
    left: u64,
}

impl<'a> ExactReader<'a> {
    pub(crate) fn new(inner: &'a mut dyn Read, len: u64) -> Self {
        ExactReader { inner, left: len }
    }

    /// Reads and drops what the sink left unread.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(io::Error::other(BodyError(format!("reading the answer: {e}")))),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                BodyError(format!("the answer ended {} bytes early", self.left)),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Skips `n` bytes of `reader`.
pub(crate) fn skip(reader: &mut dyn Read, n: u64) -> io::Result<()> {
    ExactReader::new(reader, n).drain()
}

/// Turns an error out of a sink into the fetch's error: the body's own
/// failures are the server's, everything else is the sink's.
pub(crate) fn sink_error(url: &str, e: io::Error) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<BodyError>()) {
        Some(body) => Error::protocol(url, body.to_string()),
        None => Error::Sink(e),
    }
}

/// Serves, from a segment holding blob bytes `[start, start + len)`, every
/// range from `*next` on that the segment wholly covers; advances `*next`.
pub(crate) fn serve_segment(
    url: &str,
    ranges: &[ByteRange],
    next: &mut usize,
    start: u64,
    len: u64,
    segment: &mut dyn Read,
    sink: &mut RangeSink<'_>,
) -> Result<()> {
    let seg_end = start.saturating_add(len);
    let mut pos = start;
    let mut segment = ExactReader::new(segment, len);
    while let Some(r) = ranges.get(*next) {
        let Some(end) = r.end() else { break };
        if r.offset < pos || end > seg_end {
            break;
        }
        skip(&mut segment, r.offset - pos).map_err(|e| sink_error(url, e))?;
        let mut part = ExactReader::new(&mut segment, r.length);
        sink(*next, &mut part).map_err(|e| sink_error(url, e))?;
        part.drain().map_err(|e| sink_error(url, e))?;
        pos = end;
        *next += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(ranges: &[ByteRange], segments: &[(u64, &[u8])]) -> (usize, Vec<(usize, Vec<u8>)>) {
        let mut got = Vec::new();
        let mut next = 0;
        for (start, bytes) in segments {
            let mut r = *bytes;
            serve_segment("t", ranges, &mut next, *start, bytes.len() as u64, &mut r, &mut |i, rd| {
                let mut v = Vec::new();
                rd.read_to_end(&mut v)?;
                got.push((i, v));
                Ok(())
            })
            .expect("serve");
        }
        (next, got)
    }

    #[test]
    fn a_segment_serves_the_ranges_it_covers_in_order() {
        let blob: Vec<u8> = (0..100u8).collect();
        let ranges = [ByteRange::new(2, 3), ByteRange::new(10, 2), ByteRange::new(50, 10)];
        let (next, got) = collect(&ranges, &[(0, &blob)]);
        assert_eq!(next, 3);
        assert_eq!(got, vec![(0, vec![2, 3, 4]), (1, vec![10, 11]), (2, (50..60).collect())]);
        // A coalesced segment covering the first two only.
        let (next, got) = collect(&ranges, &[(2, &blob[2..12])]);
        assert_eq!(next, 2);
        assert_eq!(got.len(), 2);
        // A segment that starts past the first range serves nothing.
        let (next, _) = collect(&ranges, &[(3, &blob[3..])]);
        assert_eq!(next, 0);
    }

    #[test]
    fn a_short_body_is_the_servers_fault_not_the_sinks() {
        let ranges = [ByteRange::new(0, 10)];
        let mut next = 0;
        let mut short = &[1u8, 2, 3][..];
        let err = serve_segment("http://r/blob", &ranges, &mut next, 0, 10, &mut short, &mut |_, rd| {
            rd.read_to_end(&mut Vec::new()).map(drop)
        })
        .expect_err("short");
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("7 bytes early"), "{err}");
    }
}
