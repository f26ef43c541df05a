//! GNU sparse files: the three map encodings and the logical layout they
//! describe. A sparse entry's data area holds only its data fragments; the
//! holes between them read as zeros.

use super::header::{BLOCK, Block, Reason};
use super::numbers::parse_go_int;
use super::pax::{Records, SPARSE_MAP, SPARSE_NUM_BLOCKS};

/// Largest GNU 1.0 sparse map strata reads, in bytes. Go's reader has no
/// limit; without one a hostile map could take unbounded memory.
pub(crate) const MAX_MAP_1X0: usize = 16 << 20;

/// A validated sparse layout: data fragments `(offset, length)` in logical
/// order, none empty, none adjacent, all inside `size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SparseMap {
    pub fragments: Vec<(u64, u64)>,
    pub size: u64,
}

impl SparseMap {
    /// Checks entries the way Go's `validateSparseEntries` does, then
    /// normalizes them.
    pub(crate) fn new(entries: &[(i64, i64)], size: i64) -> Result<Self, Reason> {
        const BAD: Reason = "invalid sparse map";
        if size < 0 {
            return Err(BAD);
        }
        let mut fragments: Vec<(u64, u64)> = Vec::with_capacity(entries.len());
        let mut previous_end = 0i64;
        for &(offset, length) in entries {
            if offset < 0 || length < 0 || offset > i64::MAX - length {
                return Err(BAD);
            }
            let end = offset + length;
            if end > size || previous_end > offset {
                return Err(BAD);
            }
            previous_end = end;
            if length == 0 {
                continue;
            }
            match fragments.last_mut() {
                Some(last) if last.0 + last.1 == offset as u64 => last.1 += length as u64,
                _ => fragments.push((offset as u64, length as u64)),
            }
        }
        Ok(SparseMap {
            fragments,
            size: size as u64,
        })
    }

    /// Bytes of data the archive stores for this file.
    pub(crate) fn stored_len(&self) -> u64 {
        self.fragments.iter().map(|f| f.1).sum()
    }
}

/// The map of a PAX 0.0 or 0.1 sparse file, from its records.
pub(crate) fn map_0x1(records: &Records) -> Result<Vec<(i64, i64)>, Reason> {
    const BAD: Reason = "invalid GNU sparse 0.1 map";
    let count = records
        .get(SPARSE_NUM_BLOCKS)
        .and_then(|v| parse_go_int(v))
        .ok_or(BAD)?;
    if count < 0 || count.checked_mul(2).is_none() {
        return Err(BAD);
    }
    let map = records.get(SPARSE_MAP).map_or(&[][..], Vec::as_slice);
    let numbers: Vec<&[u8]> = if map.is_empty() {
        Vec::new()
    } else {
        map.split(|&b| b == b',').collect()
    };
    if numbers.len() as i64 != 2 * count {
        return Err(BAD);
    }
    numbers
        .chunks_exact(2)
        .map(|pair| {
            Ok((
                parse_go_int(pair[0]).ok_or(BAD)?,
                parse_go_int(pair[1]).ok_or(BAD)?,
            ))
        })
        .collect()
}

/// Why reading a 1.0 map failed.
pub(crate) enum Map1x0Error<E> {
    Invalid(Reason),
    Read(E),
}

/// The map of a PAX 1.0 sparse file, which precedes its data as decimal
/// lines padded to whole blocks. `next_block` yields those blocks; exactly
/// as many are read as Go's reader reads.
pub(crate) fn map_1x0<E>(
    mut next_block: impl FnMut() -> Result<Block, E>,
) -> Result<Vec<(i64, i64)>, Map1x0Error<E>> {
    const BAD: Reason = "invalid GNU sparse 1.0 map";
    let mut text: Vec<u8> = Vec::new();
    let mut consumed = 0usize;
    let mut newlines = 0i64;
    let mut feed =
        |text: &mut Vec<u8>, newlines: &mut i64, want: i64| -> Result<(), Map1x0Error<E>> {
            while *newlines < want {
                if text.len() + BLOCK > MAX_MAP_1X0 {
                    return Err(Map1x0Error::Invalid(
                        "GNU sparse 1.0 map is larger than 16 MiB",
                    ));
                }
                let block = next_block().map_err(Map1x0Error::Read)?;
                *newlines += block.iter().filter(|&&b| b == b'\n').count() as i64;
                text.extend_from_slice(&block);
            }
            Ok(())
        };
    let token = |text: &Vec<u8>, consumed: &mut usize, newlines: &mut i64| -> Option<i64> {
        *newlines -= 1;
        let rest = &text[*consumed..];
        let end = rest.iter().position(|&b| b == b'\n')?;
        *consumed += end + 1;
        parse_go_int(&rest[..end])
    };
    feed(&mut text, &mut newlines, 1)?;
    let count = token(&text, &mut consumed, &mut newlines).ok_or(Map1x0Error::Invalid(BAD))?;
    if count < 0 || count.checked_mul(2).is_none() {
        return Err(Map1x0Error::Invalid(BAD));
    }
    feed(&mut text, &mut newlines, 2 * count)?;
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let offset = token(&text, &mut consumed, &mut newlines);
        let length = token(&text, &mut consumed, &mut newlines);
        match (offset, length) {
            (Some(o), Some(l)) => entries.push((o, l)),
            _ => return Err(Map1x0Error::Invalid(BAD)),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let m = SparseMap::new(&[(0, 5), (5, 3), (10, 0), (20, 2)], 30).expect("valid");
        assert_eq!(m.fragments, vec![(0, 8), (20, 2)]);
        assert_eq!(m.stored_len(), 10);
    }

    #[test]
    fn rejects_overlap_and_overflow() {
        assert!(SparseMap::new(&[(0, 5), (4, 3)], 30).is_err());
        assert!(SparseMap::new(&[(0, 31)], 30).is_err());
        assert!(SparseMap::new(&[(i64::MAX, 1)], i64::MAX).is_err());
        assert!(SparseMap::new(&[(-1, 1)], 30).is_err());
    }

    #[test]
    fn reads_1x0_map() {
        let mut block = [0u8; BLOCK];
        block[..10].copy_from_slice(b"2\n0\n5\n9\n1\n");
        let mut blocks = vec![block].into_iter();
        let entries = match map_1x0(|| blocks.next().ok_or(())) {
            Ok(e) => e,
            Err(_) => panic!("map should parse"),
        };
        assert_eq!(entries, vec![(0, 5), (9, 1)]);
    }
}
