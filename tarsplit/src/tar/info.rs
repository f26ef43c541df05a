//! Everything a tar header says about an entry, resolved the way Go's
//! archive/tar resolves it (PAX records over header fields, GNU long names
//! and links): what a TOC writer or an extractor needs.

use super::header::{Block, Format, TYPE_PAX_GLOBAL};
use super::numbers::{c_string, parse_go_int, parse_numeric};
use super::pax::Records;

/// A point in time with nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// A resolved tar header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The type flag, with legacy `\0` turned into `'0'` or `'5'`.
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub link_name: Vec<u8>,
    /// The logical size (what tar-split records).
    pub size: i64,
    /// The raw mode field (may carry file-type bits).
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub mtime: Time,
    pub atime: Option<Time>,
    pub ctime: Option<Time>,
    pub dev_major: i64,
    pub dev_minor: i64,
    /// `SCHILY.xattr.*` records: name and raw value, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// `secs[.frac]` as PAX writes times.
fn pax_time(v: &[u8]) -> Option<Time> {
    let (secs, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &[][..]),
    };
    let secs = parse_go_int(secs)?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    // "-1.5" is 1.5 seconds before the epoch.
    if v.first() == Some(&b'-') && nanos > 0 {
        return Some(Time {
            secs: secs - 1,
            nanos: 1_000_000_000 - nanos,
        });
    }
    Some(Time { secs, nanos })
}

fn field(block: &Block, start: usize, len: usize) -> i64 {
    parse_numeric(&block[start..start + len]).unwrap_or(0)
}

/// Builds the resolved header of an entry whose name, size and type flag
/// were already resolved.
pub(crate) fn resolve(
    block: &Block,
    format: Format,
    typeflag: u8,
    name: Vec<u8>,
    size: i64,
    pax: Option<&Records>,
    long_link: Option<Vec<u8>>,
) -> HeaderInfo {
    let get = |key: &[u8]| pax.and_then(|r| r.get(key)).filter(|v| !v.is_empty());
    let mut info = HeaderInfo {
        typeflag,
        name,
        size,
        mode: field(block, 100, 8),
        uid: field(block, 108, 8),
        gid: field(block, 116, 8),
        mtime: Time {
            secs: field(block, 136, 12),
            nanos: 0,
        },
        ..HeaderInfo::default()
    };
    info.link_name = c_string(&block[157..257]).to_vec();
    if format != Format::V7 {
        info.dev_major = field(block, 329, 8);
        info.dev_minor = field(block, 337, 8);
    }
    match format {
        Format::Gnu => {
            for (start, slot) in [(345, &mut info.atime), (357, &mut info.ctime)] {
                if block[start] != 0
                    && let Some(secs) = parse_numeric(&block[start..start + 12])
                {
                    *slot = Some(Time { secs, nanos: 0 });
                }
            }
        }
        Format::Star => {
            info.atime = Some(Time {
                secs: field(block, 476, 12),
                nanos: 0,
            });
            info.ctime = Some(Time {
                secs: field(block, 488, 12),
                nanos: 0,
            });
        }
        _ => {}
    }
    if let Some(v) = get(b"linkpath") {
        info.link_name.clone_from(v);
    }
    if let Some(v) = long_link.filter(|l| !l.is_empty()) {
        info.link_name = v;
    }
    for (key, slot) in [(&b"uid"[..], &mut info.uid), (b"gid", &mut info.gid)] {
        if let Some(v) = get(key).and_then(|v| parse_go_int(v)) {
            *slot = v;
        }
    }
    if let Some(t) = get(b"mtime").and_then(|v| pax_time(v)) {
        info.mtime = t;
    }
    if let Some(t) = get(b"atime").and_then(|v| pax_time(v)) {
        info.atime = Some(t);
    }
    if let Some(t) = get(b"ctime").and_then(|v| pax_time(v)) {
        info.ctime = Some(t);
    }
    if let Some(records) = pax {
        let mut xattrs: Vec<(String, Vec<u8>)> = records
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(b"SCHILY.xattr.")
                    .map(|n| (String::from_utf8_lossy(n).into_owned(), v.clone()))
            })
            .collect();
        xattrs.sort();
        info.xattrs = xattrs;
    }
    if typeflag == TYPE_PAX_GLOBAL {
        info.size = 0;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some(Time {
                secs: 1_700_000_000,
                nanos: 500_000_000
            })
        );
        assert_eq!(pax_time(b"12"), Some(Time { secs: 12, nanos: 0 }));
        assert_eq!(
            pax_time(b"-1.25"),
            Some(Time {
                secs: -2,
                nanos: 750_000_000
            })
        );
        assert_eq!(
            pax_time(b"1.1234567891"),
            Some(Time {
                secs: 1,
                nanos: 123_456_789
            })
        );
        assert_eq!(pax_time(b"1.x"), None);
    }
}
