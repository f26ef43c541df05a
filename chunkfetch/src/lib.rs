#![doc = include_str!("../README.md")]

mod error;
mod file;
pub(crate) mod local_headers;
pub mod layout;
pub mod oci;
mod multipart;
mod pieces;
pub mod plan;
pub mod reference;
pub mod registry;
mod serve;
pub mod toc_layer;

use std::io::{self, Read};

pub use error::{Error, Result};
pub use file::FileSource;
pub use local_headers::{HeadersBuilder, LocalHeaders, StoredHeadersError};
pub use layout::{LayoutWriter, OciLayout, WrittenBlob};
pub use pieces::{Disconnected, PieceMessage, PieceReceiver, PieceSender, piece_channel};
pub use plan::{FetchStats, Planner};
pub use reference::Reference;
pub use registry::{FetchedManifest, Registry, RegistryBlob, RegistryOptions};
pub use toc_layer::{CopyingSink, FileDone, Frames, LayerPlan, LayerPlanner, PieceNeed, PlanStats, SourceReadAt, TarSink, TocGetter, WholeLocal, fetch_pieces, plan_layer};

/// `length` bytes of a blob from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

impl ByteRange {
    pub fn new(offset: u64, length: u64) -> ByteRange {
        ByteRange { offset, length }
    }

    /// One past the last byte; `None` when it would overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }
}

/// Called once per requested range, in order, with a reader of exactly
/// that range's bytes. What it leaves unread is skipped.
pub type RangeSink<'a> = dyn FnMut(usize, &mut dyn Read) -> io::Result<()> + 'a;

/// Random access to one blob by byte ranges: a local file, a blob of an OCI
/// layout, or a registry blob fetched with HTTP range requests.
pub trait RangeSource: Send + Sync {
    /// The blob's length in bytes.
    fn size(&self) -> Result<u64>;

    /// Fetches `ranges` (sorted, non-overlapping, non-empty) as one request
    /// where the source can, and hands each range to `sink` in order. A
    /// server that refuses the request as too big answers
    /// [`Error::RangesRefused`] before `sink` was called, so the caller
    /// can merge ranges and retry (see [`Planner`]). An error from `sink`
    /// ends the fetch and comes back as [`Error::Sink`].
    fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> Result<()>;

    /// True once the source has seen that it can only send the whole blob
    /// (a registry that ignores `Range`): a caller then asks for everything
    /// it still needs in one request rather than fetching the blob again.
    fn sends_whole_blob(&self) -> bool {
        false
    }
}

impl<T: RangeSource + ?Sized> RangeSource for &T {
    fn size(&self) -> Result<u64> {
        (**self).size()
    }
    fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> Result<()> {
        (**self).fetch(ranges, sink)
    }
    fn sends_whole_blob(&self) -> bool {
        (**self).sends_whole_blob()
    }
}

impl<T: RangeSource + ?Sized> RangeSource for Box<T> {
    fn size(&self) -> Result<u64> {
        (**self).size()
    }
    fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> Result<()> {
        (**self).fetch(ranges, sink)
    }
    fn sends_whole_blob(&self) -> bool {
        (**self).sends_whole_blob()
    }
}

/// Entry points for the fuzz targets (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use std::io::Read;

    /// Parses `data` as a multipart/byteranges body with boundary `B`,
    /// reading every part, and `data` as a Content-Type and a
    /// Content-Range value.
    pub fn multipart(data: &[u8]) {
        let mut parts = crate::multipart::Parts::new(data, "B");
        while let Ok(Some(range)) = parts.next_part() {
            let mut body = Vec::new();
            if parts.body().read_to_end(&mut body).is_err() {
                break;
            }
            assert!(body.len() as u64 <= range.len());
        }
        let text = String::from_utf8_lossy(data);
        let _ = crate::multipart::boundary(&text);
        let _ = crate::multipart::ContentRange::parse(&text);
    }

    /// Reads `data` as a local layer's tar-split and as header blocks of
    /// its own, and guesses headers for entries from them (patching
    /// included): whatever a guess gives must describe the entry.
    pub fn local_headers(data: &[u8]) {
        let listed = [
            strata_toc::Entry {
                kind: "reg".into(),
                name: "a".into(),
                mode: 0o644,
                size: 7,
                mod_time: "2024-01-02T03:04:05.5Z".into(),
                ..Default::default()
            },
            strata_toc::Entry {
                kind: "dir".into(),
                name: "./d/".into(),
                mode: 0o755,
                ..Default::default()
            },
        ];
        let mut patched = Vec::new();
        let stored = crate::LocalHeaders::from_stored(data).ok();
        if let Some(headers) = &stored {
            // What reads back writes the same.
            assert_eq!(crate::LocalHeaders::from_stored(&headers.to_stored()).map(|h| h.len()).ok(), Some(headers.len()));
        }
        for headers in [
            stored.unwrap_or_default(),
            crate::LocalHeaders::from_tar_split(data).unwrap_or_default(),
            crate::local_headers::of_blocks(b"a", data),
            crate::local_headers::of_blocks_styled(b"a", data),
        ] {
            for entry in &listed {
                for to_the_second in [false, true] {
                    if let Some(span) = headers.find(entry, &mut patched, to_the_second) {
                        let bytes = headers.bytes_in(span, &patched).expect("a guess decodes");
                        let header = strata_tarsplit::header_of(&bytes).expect("a guess parses");
                        assert!(if to_the_second {
                            strata_toc::describes_to_the_second(entry, &header)
                        } else {
                            strata_toc::describes(entry, &header)
                        });
                    }
                }
            }
        }
    }
}

/// Reads one range whole into memory, for small things (a footer, a TOC)
/// whose length the caller has already bounded.
pub fn read_range(source: &dyn RangeSource, range: ByteRange) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    source.fetch(&[range], &mut |_, r| {
        out.clear();
        r.read_to_end(&mut out).map(drop)
    })?;
    Ok(out)
}

/// Checks what every source requires of `ranges`: each non-empty, sorted,
/// not overlapping, inside `size` when it is known.
pub(crate) fn check_ranges(ranges: &[ByteRange], size: Option<u64>) -> Result<()> {
    let mut previous_end = 0u64;
    for (i, r) in ranges.iter().enumerate() {
        let end = r.end().ok_or(Error::BadRanges(format!("range {i} overflows")))?;
        if r.length == 0 {
            return Err(Error::BadRanges(format!("range {i} is empty")));
        }
        if i > 0 && r.offset < previous_end {
            return Err(Error::BadRanges(format!(
                "range {i} at {} overlaps or precedes the one before (ending at {previous_end})",
                r.offset
            )));
        }
        if let Some(size) = size
            && end > size
        {
            return Err(Error::OutOfBounds {
                offset: r.offset,
                length: r.length,
                size,
            });
        }
        previous_end = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_sorted_disjoint_and_inside() {
        let r = ByteRange::new;
        assert!(check_ranges(&[r(0, 1), r(1, 2), r(10, 5)], Some(15)).is_ok());
        assert!(matches!(check_ranges(&[r(0, 2), r(1, 2)], None), Err(Error::BadRanges(_))));
        assert!(matches!(check_ranges(&[r(5, 1), r(0, 1)], None), Err(Error::BadRanges(_))));
        assert!(matches!(check_ranges(&[r(0, 0)], None), Err(Error::BadRanges(_))));
        assert!(matches!(check_ranges(&[r(u64::MAX, 2)], None), Err(Error::BadRanges(_))));
        assert!(matches!(check_ranges(&[r(10, 6)], Some(15)), Err(Error::OutOfBounds { .. })));
    }
}
