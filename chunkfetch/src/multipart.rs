//! `multipart/byteranges` answers (RFC 9110 §14.6). Every part must carry
//! its `Content-Range`, so a part's body is read by its length and the
//! boundary is only ever looked for where the protocol puts it: a binary
//! body that happens to contain the boundary cannot cut a part short.

use std::io::{BufRead, Read};

/// Longest header or delimiter line accepted.
const MAX_LINE: u64 = 8 << 10;
/// Most bytes skipped before the first delimiter (the preamble).
const MAX_PREAMBLE: usize = 64 << 10;
/// Most header lines in one part.
const MAX_HEADERS: usize = 64;

/// `bytes first-last/total` from a `Content-Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ContentRange {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) total: Option<u64>,
}

impl ContentRange {
    pub(crate) fn parse(value: &str) -> Result<ContentRange, String> {
        let bad = || format!("unusable Content-Range {value:?}");
        let rest = value.trim().strip_prefix("bytes").ok_or_else(bad)?.trim_start();
        let (span, total) = rest.split_once('/').ok_or_else(bad)?;
        let (first, last) = span.trim().split_once('-').ok_or_else(bad)?;
        let number = |s: &str| -> Result<u64, String> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        let first = number(first)?;
        let last = number(last)?;
        let total = match total.trim() {
            "*" => None,
            t => Some(number(t)?),
        };
        if last < first || total.is_some_and(|t| last >= t) {
            return Err(bad());
        }
        Ok(ContentRange { first, last, total })
    }

    pub(crate) fn len(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// The boundary of a `multipart/byteranges` content type, quoted or not.
/// Accepts the unquoted `:` that CloudFront sends, as containers/image does.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    let mut rest = params;
    while !rest.trim().is_empty() {
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end?;
            (value, &quoted[end..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        if name.trim().eq_ignore_ascii_case("boundary") {
            let ok = !value.is_empty()
                && value.len() <= 200
                && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && !value.ends_with(' ');
            return ok.then_some(value);
        }
        rest = tail.trim_start().strip_prefix(';').unwrap_or("");
    }
    None
}

/// Reads the parts of a multipart body one at a time.
pub(crate) struct Parts<R> {
    body: R,
    delimiter: Vec<u8>,
    started: bool,
    done: bool,
    /// Bytes of the current part's body not yet read.
    left: u64,
}

impl<R: BufRead> Parts<R> {
    pub(crate) fn new(body: R, boundary: &str) -> Self {
        Parts {
            body,
            delimiter: format!("--{boundary}").into_bytes(),
            started: false,
            done: false,
            left: 0,
        }
    }

    fn line(&mut self) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        (&mut self.body)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the multipart answer: {e}"))?;
        if line.is_empty() {
            return Err("the multipart answer ended before its closing boundary".into());
        }
        if line.len() as u64 > MAX_LINE {
            return Err("a line of the multipart answer is too long".into());
        }
        if line.last() != Some(&b'\n') {
            return Err("the multipart answer ended in the middle of a line".into());
        }
        while line.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            line.pop();
        }
        Ok(line)
    }

    /// `Some(false)` for `--B`, `Some(true)` for `--B--`, `None` otherwise.
    fn delimiter_kind(&self, line: &[u8]) -> Option<bool> {
        let rest = line.strip_prefix(self.delimiter.as_slice())?;
        let (closing, rest) = match rest.strip_prefix(b"--") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        // Transport padding.
        rest.iter().all(|b| matches!(b, b' ' | b'\t')).then_some(closing)
    }

    /// Moves to the next part and returns its range, or `None` after the
    /// closing delimiter.
    pub(crate) fn next_part(&mut self) -> Result<Option<ContentRange>, String> {
        if self.done {
            return Ok(None);
        }
        if self.left > 0 {
            let n = std::io::copy(&mut (&mut self.body).take(self.left), &mut std::io::sink())
                .map_err(|e| format!("reading the multipart answer: {e}"))?;
            if n < self.left {
                return Err(format!("a multipart part ended {} bytes early", self.left - n));
            }
            self.left = 0;
        }
        let closing = if self.started {
            // The body is followed by CRLF, then the delimiter.
            let line = self.line()?;
            if !line.is_empty() {
                return Err("a multipart part is longer than its Content-Range, or its boundary is wrong".into());
            }
            let line = self.line()?;
            self.delimiter_kind(&line)
                .ok_or("a multipart part is not followed by the boundary the answer declared")?
        } else {
            self.started = true;
            let mut skipped = 0usize;
            loop {
                let line = self.line()?;
                if let Some(kind) = self.delimiter_kind(&line) {
                    break kind;
                }
                skipped += line.len() + 2;
                if skipped > MAX_PREAMBLE {
                    return Err("the multipart answer does not contain the boundary it declared".into());
                }
            }
        };
        if closing {
            self.done = true;
            return Ok(None);
        }
        let mut range = None;
        for _ in 0..=MAX_HEADERS {
            let line = self.line()?;
            if line.is_empty() {
                let range: ContentRange = range.ok_or("a multipart part has no Content-Range")?;
                self.left = range.len();
                return Ok(Some(range));
            }
            let line = String::from_utf8_lossy(&line);
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-range")
            {
                range = Some(ContentRange::parse(value)?);
            }
        }
        Err("a multipart part has too many header lines".into())
    }

    /// The current part's body: exactly its Content-Range's length.
    pub(crate) fn body(&mut self) -> impl Read + '_ {
        PartBody { parts: self }
    }
}

struct PartBody<'a, R> {
    parts: &'a mut Parts<R>,
}

impl<R: BufRead> Read for PartBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.parts.left;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.parts.body.read(&mut buf[..want])?;
        self.parts.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(boundary: &str, parts: &[(u64, &[u8])], total: u64) -> Vec<u8> {
        let mut out = b"preamble to ignore\r\n".to_vec();
        for (start, bytes) in parts {
            out.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/octet-stream\r\n").as_bytes());
            let last = start + bytes.len() as u64 - 1;
            out.extend_from_slice(format!("Content-Range: bytes {start}-{last}/{total}\r\n\r\n").as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\nepilogue").as_bytes());
        out
    }

    fn read_all(raw: &[u8], boundary: &str) -> Result<Vec<(ContentRange, Vec<u8>)>, String> {
        let mut parts = Parts::new(raw, boundary);
        let mut out = Vec::new();
        while let Some(range) = parts.next_part()? {
            let mut v = Vec::new();
            parts.body().read_to_end(&mut v).map_err(|e| e.to_string())?;
            out.push((range, v));
        }
        Ok(out)
    }

    #[test]
    fn parts_are_read_by_length_even_when_the_body_holds_the_boundary() {
        let tricky: &[u8] = b"ab\r\n--XYZ\r\nContent-Range: bytes 0-1/9\r\n\r\nzz";
        let raw = body("XYZ", &[(3, tricky), (100, b"tail")], 200);
        let got = read_all(&raw, "XYZ").expect("parse");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.first, 3);
        assert_eq!(got[0].1, tricky);
        assert_eq!(got[1].1, b"tail");
    }

    #[test]
    fn a_wrong_boundary_or_a_lying_content_range_is_an_error() {
        let raw = body("XYZ", &[(0, b"hello")], 10);
        assert!(read_all(&raw, "OTHER").is_err());
        let lying = String::from_utf8(raw.clone()).expect("utf8").replace("bytes 0-4/10", "bytes 0-2/10");
        assert!(read_all(lying.as_bytes(), "XYZ").is_err());
        let truncated = &raw[..raw.len() - 20];
        assert!(read_all(truncated, "XYZ").is_err());
    }

    #[test]
    fn boundaries_quoted_unquoted_and_cloudfront_style() {
        assert_eq!(boundary("multipart/byteranges; boundary=abc").as_deref(), Some("abc"));
        assert_eq!(boundary("multipart/byteranges; boundary=\"a b\\\"c\"").as_deref(), Some("a b\"c"));
        assert_eq!(boundary("Multipart/ByteRanges;charset=x; boundary=CloudFront:ABC-1").as_deref(), Some("CloudFront:ABC-1"));
        assert_eq!(boundary("multipart/byteranges"), None);
        assert_eq!(boundary("application/octet-stream; boundary=x"), None);
        assert_eq!(boundary("multipart/byteranges; boundary=\"open"), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(ContentRange::parse("bytes 0-99/100"), Ok(ContentRange { first: 0, last: 99, total: Some(100) }));
        assert_eq!(ContentRange::parse("bytes 5-5/*").map(|r| r.len()), Ok(1));
        for bad in ["bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes -1/2", "bytes 0-1", "bytes +1-2/3"] {
            assert!(ContentRange::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_parts_round_trip(
            boundary in "[A-Za-z0-9:-]{1,40}",
            parts in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..300), 0..8),
        ) {
            let mut offset = 0u64;
            let mut layout = Vec::new();
            for p in &parts {
                layout.push((offset, p.as_slice()));
                offset += p.len() as u64 + 7;
            }
            let raw = body(&boundary, &layout, offset + 1);
            let got = read_all(&raw, &boundary).expect("parse");
            proptest::prop_assert_eq!(got.len(), parts.len());
            for ((range, bytes), (start, want)) in got.iter().zip(&layout) {
                proptest::prop_assert_eq!(range.first, *start);
                proptest::prop_assert_eq!(bytes.as_slice(), *want);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let _ = read_all(&raw, "B");
        }
    }
}
