//! Turning the pieces a pull is missing into range requests: neighbours
//! closer than a gap threshold are merged (one range, the gap read and
//! dropped), then the smallest gaps are merged until the request holds no
//! more ranges than the limit. A request the server refuses is retried
//! with half as many ranges, as containers-storage does.

use std::io::Read;

use crate::serve::{ExactReader, sink_error, skip};
use crate::{ByteRange, Error, RangeSink, RangeSource, Result, check_ranges};

/// How missing pieces become requests. The defaults are containers-storage's.
#[derive(Clone, Copy, Debug)]
pub struct Planner {
    /// Gaps up to this many bytes are always fetched through.
    pub merge_gap: u64,
    /// Most ranges in one request.
    pub max_ranges: usize,
    /// The most requests the pieces are spread over when they need more
    /// than `max_ranges` ranges (neighbours merge beyond), and, once a
    /// server has refused even two ranges in one request (GCR, GHCR, zot),
    /// the most single-range requests to send instead; merged ranges fill
    /// the gaps between them. containers-storage sends one range spanning
    /// everything then, which can be the whole blob.
    pub max_single_requests: usize,
}

impl Default for Planner {
    fn default() -> Self {
        Planner {
            merge_gap: 1024,
            max_ranges: 1024,
            max_single_requests: 32,
        }
    }
}

/// What a planned fetch cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Requests sent that the server answered with data.
    pub requests: u64,
    /// Requests the server refused as too big.
    pub refused: u64,
    /// Bytes of the ranges requested (pieces plus the gaps merged in).
    pub bytes_requested: u64,
    /// Bytes of the pieces themselves.
    pub bytes_wanted: u64,
}

/// Consecutive pieces fetched as one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub range: ByteRange,
    /// Index of the group's first piece.
    pub first: usize,
    /// Number of pieces in it.
    pub count: usize,
}

impl Planner {
    /// Groups `pieces` (sorted, disjoint) into at most `limit` ranges.
    pub fn merge(&self, pieces: &[ByteRange], limit: usize) -> Vec<Group> {
        let limit = limit.max(1);
        let mut groups: Vec<Group> = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if p.offset - (g.range.offset + g.range.length) <= self.merge_gap => {
                    g.range.length = p.offset + p.length - g.range.offset;
                    g.count += 1;
                }
                _ => groups.push(Group {
                    range: *p,
                    first: i,
                    count: 1,
                }),
            }
        }
        if groups.len() <= limit {
            return groups;
        }
        // Merge across the smallest gaps (ties: the earlier gap first).
        let mut gaps: Vec<(u64, usize)> = groups
            .windows(2)
            .enumerate()
            .map(|(i, w)| (w[1].range.offset - (w[0].range.offset + w[0].range.length), i))
            .collect();
        gaps.sort_unstable();
        let mut join_next = vec![false; groups.len()];
        for &(_, i) in gaps.iter().take(groups.len() - limit) {
            join_next[i] = true;
        }
        let mut merged: Vec<Group> = Vec::with_capacity(limit);
        for (i, g) in groups.iter().enumerate() {
            match merged.last_mut() {
                Some(m) if i > 0 && join_next[i - 1] => {
                    m.range.length = g.range.offset + g.range.length - m.range.offset;
                    m.count += g.count;
                }
                _ => merged.push(*g),
            }
        }
        merged
    }

    /// Fetches every piece from `source` and hands each to `sink` in order,
    /// once, with a reader of exactly its bytes.
    pub fn fetch(&self, source: &dyn RangeSource, pieces: &[ByteRange], sink: &mut RangeSink<'_>) -> Result<FetchStats> {
        check_ranges(pieces, None)?;
        let mut stats = FetchStats {
            bytes_wanted: pieces.iter().map(|p| p.length).sum(),
            ..FetchStats::default()
        };
        let mut limit = self.max_ranges.max(1);
        let mut single_ranges = false;
        let mut single_budget = self.max_single_requests.max(1);
        let mut done = 0usize;
        while done < pieces.len() {
            let rest = &pieces[done..];
            // A source that can only send the whole blob serves everything
            // left from one answer.
            let mut groups = if source.sends_whole_blob() {
                self.merge(rest, usize::MAX)
            } else if single_ranges {
                // Shrinking the budget each time bounds the requests.
                let groups = self.merge(rest, single_budget);
                single_budget = single_budget.saturating_sub(1).max(1);
                groups
            } else {
                // At most `limit` ranges go in one request, and the rest in
                // the next: merging across big gaps to fit one request
                // would fetch what lies between (tens of megabytes for a
                // few dozen pieces spread over a layer), where another
                // request costs a round trip.
                // Requests stay bounded too: past `max_single_requests` of
                // them, neighbours merge after all.
                let most = limit.saturating_mul(self.max_single_requests.max(1));
                let mut groups = self.merge(rest, most);
                groups.truncate(limit);
                groups
            };
            if single_ranges && !source.sends_whole_blob() {
                groups.truncate(1);
            }
            let ranges: Vec<ByteRange> = groups.iter().map(|g| g.range).collect();
            let before = done;
            let result = source.fetch(&ranges, &mut |gi, reader: &mut dyn Read| {
                let g = groups[gi];
                let mut pos = g.range.offset;
                for (k, &p) in rest.iter().enumerate().skip(g.first).take(g.count) {
                    skip(reader, p.offset - pos)?;
                    let mut piece = ExactReader::new(reader, p.length);
                    sink(before + k, &mut piece)?;
                    piece.drain()?;
                    pos = p.offset + p.length;
                    done = before + k + 1;
                }
                Ok(())
            });
            match result {
                Ok(()) if done < before + groups.iter().map(|g| g.count).sum::<usize>() => {
                    return Err(Error::protocol("blob", "the source ended its answer before the last range"));
                }
                Ok(()) => {
                    stats.requests += 1;
                    stats.bytes_requested += ranges.iter().map(|r| r.length).sum::<u64>();
                }
                Err(Error::RangesRefused { ranges: n, .. }) if n > 1 && done == before => {
                    stats.refused += 1;
                    limit = n / 2;
                    if limit <= 1 {
                        single_ranges = true;
                    }
                    tracing::debug!(ranges = n, limit, "ranges refused; merging");
                }
                // The piece readers' errors are the server's when the body
                // failed, the caller's otherwise.
                Err(Error::Sink(e)) => return Err(sink_error("blob", e)),
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn r(offset: u64, length: u64) -> ByteRange {
        ByteRange::new(offset, length)
    }

    #[test]
    fn close_neighbours_merge_then_the_smallest_gaps() {
        let p = Planner {
            merge_gap: 10,
            max_ranges: 100,
            max_single_requests: 1,
        };
        let pieces = [r(0, 5), r(10, 5), r(100, 5), r(1000, 5), r(1050, 5)];
        let groups = p.merge(&pieces, 100);
        assert_eq!(groups.iter().map(|g| g.range).collect::<Vec<_>>(), [r(0, 15), r(100, 5), r(1000, 5), r(1050, 5)]);
        let groups = p.merge(&pieces, 2);
        assert_eq!(groups.iter().map(|g| g.range).collect::<Vec<_>>(), [r(0, 105), r(1000, 55)]);
        assert_eq!(groups.iter().map(|g| (g.first, g.count)).collect::<Vec<_>>(), [(0, 3), (3, 2)]);
        assert_eq!(p.merge(&pieces, 1), [Group { range: r(0, 1055), first: 0, count: 5 }]);
    }

    /// A source over memory that refuses requests of more than `accept`
    /// ranges, and records what it was asked.
    struct Refusing {
        blob: Vec<u8>,
        accept: usize,
        asked: Mutex<Vec<usize>>,
    }

    impl RangeSource for Refusing {
        fn size(&self) -> Result<u64> {
            Ok(self.blob.len() as u64)
        }
        fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> Result<()> {
            self.asked.lock().expect("lock").push(ranges.len());
            if ranges.len() > self.accept {
                return Err(Error::RangesRefused { url: "mem".into(), status: 400, ranges: ranges.len() });
            }
            for (i, r) in ranges.iter().enumerate() {
                let mut bytes = &self.blob[r.offset as usize..(r.offset + r.length) as usize];
                sink(i, &mut bytes).map_err(Error::Sink)?;
            }
            Ok(())
        }
    }

    /// Fetches `pieces`, checking each against the blob; returns the stats
    /// and the pieces in the order they came.
    fn fetch_checked(planner: &Planner, source: &Refusing, pieces: &[ByteRange]) -> (FetchStats, Vec<usize>) {
        let mut seen = Vec::new();
        let stats = planner
            .fetch(source, pieces, &mut |i, rd| {
                let mut v = Vec::new();
                rd.read_to_end(&mut v)?;
                let p = pieces[i];
                assert_eq!(v, &source.blob[p.offset as usize..(p.offset + p.length) as usize]);
                seen.push(i);
                Ok(())
            })
            .expect("fetch");
        (stats, seen)
    }

    #[test]
    fn refusals_halve_the_ranges_and_every_piece_arrives_once() {
        let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<ByteRange> = (0..64).map(|i| r(i * 1500, 100)).collect();
        let source = Refusing { blob, accept: 5, asked: Mutex::new(Vec::new()) };
        let planner = Planner { merge_gap: 0, max_ranges: 64, max_single_requests: 32 };
        let (stats, seen) = fetch_checked(&planner, &source, &pieces);
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
        // Refused down to 4 ranges a request, then 16 requests of 4: no
        // byte between the pieces is fetched.
        let mut asked = vec![64, 32, 16, 8];
        asked.extend([4; 16]);
        assert_eq!(*source.asked.lock().expect("lock"), asked);
        assert_eq!((stats.requests, stats.refused), (16, 4));
        assert_eq!((stats.bytes_wanted, stats.bytes_requested), (6400, 6400));
    }

    #[test]
    fn a_server_that_takes_few_ranges_gets_a_bounded_number_of_requests() {
        let blob: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<ByteRange> = (0..1000).map(|i| r(i * 2000, 10)).collect();
        let source = Refusing { blob, accept: 2, asked: Mutex::new(Vec::new()) };
        let planner = Planner { merge_gap: 0, max_ranges: 2, max_single_requests: 8 };
        let (stats, seen) = fetch_checked(&planner, &source, &pieces);
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(stats.requests <= 8, "{stats:?}");
        assert_eq!(stats.refused, 0);
    }

    #[test]
    fn a_server_that_takes_one_range_gets_a_bounded_number_of_single_requests() {
        let blob = vec![7u8; 100_000];
        let pieces: Vec<ByteRange> = (0..64).map(|i| r(i * 1500, 100)).collect();
        let source = Refusing { blob, accept: 1, asked: Mutex::new(Vec::new()) };
        let planner = Planner { merge_gap: 0, max_ranges: 64, max_single_requests: 8 };
        let mut seen = 0;
        let stats = planner
            .fetch(&source, &pieces, &mut |_, rd| {
                seen += 1;
                rd.read_to_end(&mut Vec::new()).map(drop)
            })
            .expect("fetch");
        assert_eq!(seen, 64);
        let asked = source.asked.lock().expect("lock").clone();
        assert_eq!(&asked[..6], [64, 32, 16, 8, 4, 2]);
        assert!(asked[6..].iter().all(|&n| n == 1));
        assert!(stats.requests <= 8, "{stats:?}");
        assert!(stats.bytes_requested < 100_000, "{stats:?}");
    }

    proptest::proptest! {
        #[test]
        fn merging_keeps_every_piece_inside_one_group(
            lens in proptest::collection::vec((0u64..3000, 1u64..500), 1..200),
            limit in 1usize..50,
            gap in 0u64..2000,
        ) {
            let mut pieces = Vec::new();
            let mut off = 0;
            for (g, l) in lens {
                off += g;
                pieces.push(r(off, l));
                off += l;
            }
            let groups = Planner { merge_gap: gap, max_ranges: limit, max_single_requests: 1 }.merge(&pieces, limit);
            proptest::prop_assert!(groups.len() <= limit);
            let mut next = 0;
            for g in &groups {
                proptest::prop_assert_eq!(g.first, next);
                for p in &pieces[g.first..g.first + g.count] {
                    proptest::prop_assert!(p.offset >= g.range.offset && p.end() <= g.range.end());
                }
                next += g.count;
            }
            proptest::prop_assert_eq!(next, pieces.len());
        }
    }
}
