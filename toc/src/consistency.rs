//! The TOC must describe the same entries as the tar-split, header for
//! header: a partial pull builds files from the TOC but rebuilds the tar
//! (and checks the diffID) from the tar-split, so a TOC that disagrees would
//! pass the diffID check with wrong metadata on disk. containers-storage
//! (≥ 1.55) checks the same fields.

use std::collections::HashMap;

use strata_tarsplit::{Entry as SplitEntry, MetadataReader, header_of};

use crate::error::{Error, Result};
use crate::toc::{Entry, Toc};
use crate::writer::entry_from_header;

/// `Clean("/" + name)`, as containers-storage keys entries.
fn clean(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Seconds and nanoseconds of an RFC 3339 time; `None` for the zero time,
/// the epoch, or an empty string (all "unset" to containers-storage).
fn instant(text: &str) -> Result<Instant, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || format!("bad time {text:?}");
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| {
        text.get(r)
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        for i in 0..9 {
            nanos = nanos * 10
                + frac
                    .as_bytes()
                    .get(i)
                    .filter(|_| i < digits)
                    .map_or(0, |d| u32::from(d - b'0'));
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && matches!(&r[..1], "+" | "-") && &r[3..4] == ":" => {
            let h: i64 = r[1..3].parse().map_err(|_| bad())?;
            let m: i64 = r[4..6].parse().map_err(|_| bad())?;
            let sign = if &r[..1] == "-" { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    if (secs, nanos) == (0, 0) || year == 1 && month == 1 && day == 1 && secs < -62_135_596_700 {
        return Ok(None);
    }
    Ok(Some((secs, nanos)))
}

/// An instant as seconds and nanoseconds, `None` when unset.
type Instant = Option<(i64, u32)>;

/// The fields containers-storage compares, in comparable form.
fn comparable(e: &Entry) -> Result<(Entry, [Instant; 3]), String> {
    let times = [
        instant(&e.mod_time)?,
        instant(&e.access_time)?,
        instant(&e.change_time)?,
    ];
    let stripped = Entry {
        kind: e.kind.clone(),
        name: clean(&e.name),
        link_name: e.link_name.clone(),
        mode: e.mode,
        size: e.size,
        uid: e.uid,
        gid: e.gid,
        dev_major: e.dev_major,
        dev_minor: e.dev_minor,
        xattrs: e.xattrs.clone(),
        ..Entry::default()
    };
    Ok((stripped, times))
}

/// Checks the TOC against the decompressed tar-split.
pub fn check(toc: &Toc, tar_split: &[u8]) -> Result<()> {
    let mut by_name: HashMap<String, &Entry> = HashMap::new();
    for e in toc.entries.iter().filter(|e| e.kind != "chunk") {
        if by_name.insert(clean(&e.name), e).is_some() {
            return Err(Error::InvalidToc(format!(
                "the TOC lists {:?} twice",
                e.name
            )));
        }
    }
    let mut seen = 0usize;
    let mut last_segment: Vec<u8> = Vec::new();
    for record in MetadataReader::new(tar_split) {
        match record? {
            SplitEntry::Segment(bytes) => last_segment = bytes,
            SplitEntry::File(file) => {
                let header = header_of(&last_segment).ok_or_else(|| {
                    Error::InvalidToc(format!(
                        "tar-split has no header for {:?}",
                        String::from_utf8_lossy(&file.name)
                    ))
                })?;
                let from_tar =
                    entry_from_header(&header).map_err(|e| Error::InvalidToc(e.to_string()))?;
                let name = clean(&from_tar.name);
                let listed = by_name
                    .get(&name)
                    .ok_or_else(|| Error::InvalidToc(format!("the TOC does not list {name:?}")))?;
                let (a, ta) = comparable(listed).map_err(Error::InvalidToc)?;
                let (b, tb) = comparable(&from_tar).map_err(Error::InvalidToc)?;
                if a != b || ta != tb {
                    return Err(Error::InvalidToc(format!(
                        "the TOC entry for {name:?} does not match its tar header"
                    )));
                }
                seen += 1;
                last_segment.clear();
            }
        }
    }
    if seen != by_name.len() {
        return Err(Error::InvalidToc(format!(
            "the TOC lists {} entries, the tar-split {seen}",
            by_name.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            instant("2024-01-02T03:04:05Z"),
            Ok(Some((1_704_164_645, 0)))
        );
        assert_eq!(
            instant("2024-01-02T04:04:05.5+01:00"),
            Ok(Some((1_704_164_645, 500_000_000)))
        );
        assert_eq!(instant("1970-01-01T00:00:00Z"), Ok(None));
        assert_eq!(instant("0001-01-01T00:00:00Z"), Ok(None));
        assert_eq!(instant(""), Ok(None));
        assert!(instant("yesterday").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(clean("./usr/bin/"), "/usr/bin");
        assert_eq!(clean("etc//passwd"), "/etc/passwd");
    }
}
