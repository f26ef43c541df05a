//! The TOC must describe the same entries as the tar-split, header for
//! header: a partial pull builds files from the TOC but rebuilds the tar
//! (and checks the diffID) from the tar-split, so a TOC that disagrees would
//! pass the diffID check with wrong metadata on disk. containers-storage
//! (≥ 1.55) checks the same fields.

use strata_tarsplit::{Entry as SplitEntry, MetadataReader, header_of};

use crate::error::{Error, Result};
use crate::toc::{Entry, TocItem};
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

/// The seconds and nanoseconds of a TOC time (RFC 3339); `None` when it
/// is unset (empty, the zero time or the epoch) or malformed.
pub fn toc_time(text: &str) -> Option<(i64, u32)> {
    instant(text).ok().flatten()
}

/// Whether `header` (a tar entry's resolved headers) is the entry the TOC
/// lists as `listed`, in every field the two are compared on when a pull
/// checks a TOC against its tar-split.
pub fn describes(listed: &Entry, header: &strata_tarsplit::HeaderInfo) -> bool {
    same_fields(listed, header, false).unwrap_or_else(|| describes_by_entry(listed, header, false))
}

/// [`describes`] for an eStargz TOC, which records the modification time
/// to the second and no access or change time.
pub fn describes_to_the_second(listed: &Entry, header: &strata_tarsplit::HeaderInfo) -> bool {
    same_fields(listed, header, true).unwrap_or_else(|| describes_by_entry(listed, header, true))
}

/// The comparison by definition: the header made into a TOC entry, both
/// made comparable.
fn describes_by_entry(listed: &Entry, header: &strata_tarsplit::HeaderInfo, to_the_second: bool) -> bool {
    let Ok(from_tar) = entry_from_header(header) else {
        return false;
    };
    match (comparable(listed), comparable(&from_tar)) {
        (Ok((a, ta)), Ok((b, tb))) if to_the_second => a == b && ta[0].map(|t| t.0) == tb[0].map(|t| t.0),
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// [`describes_by_entry`] field by field, without building an entry: a
/// pull asks it once per TOC entry. `None` for what only the full
/// comparison decides (non-UTF-8 or `..` in a name, xattrs, times outside
/// the years 1 to 9999).
fn same_fields(listed: &Entry, h: &strata_tarsplit::HeaderInfo, to_the_second: bool) -> Option<bool> {
    let Some(kind) = crate::writer::kind_of(h.typeflag) else {
        return Some(false);
    };
    if !h.xattrs.is_empty() || !listed.xattrs.is_empty() {
        return None;
    }
    let device = if matches!(kind, "char" | "block") { (h.dev_major, h.dev_minor) } else { (0, 0) };
    if listed.kind != kind
        || (listed.mode, listed.size, listed.uid, listed.gid) != (h.mode, h.size, h.uid, h.gid)
        || (listed.dev_major, listed.dev_minor) != device
        || listed.link_name.as_bytes() != h.link_name
    {
        // Names and link names compared as bytes: a non-UTF-8 one differs
        // from any TOC string as it would after a lossy conversion, unless
        // the TOC holds the replacement characters, which is left to the
        // full comparison below.
        return if std::str::from_utf8(&h.link_name).is_ok() { Some(false) } else { None };
    }
    let name = std::str::from_utf8(&h.name).ok()?;
    if !name_parts(&listed.name)?.eq(name_parts(name)?) {
        return Some(false);
    }
    let listed_times = [
        instant(&listed.mod_time),
        instant(&listed.access_time),
        instant(&listed.change_time),
    ];
    let Ok(listed_times) = listed_times.into_iter().collect::<Result<Vec<_>, _>>() else {
        return Some(false);
    };
    let header_times = [
        header_instant(Some(h.mtime))?,
        header_instant(h.atime)?,
        header_instant(h.ctime)?,
    ];
    Some(if to_the_second {
        listed_times[0].map(|t| t.0) == header_times[0].map(|t| t.0)
    } else {
        listed_times[..] == header_times[..]
    })
}

/// The components [`clean`] keeps of a name without `..`.
fn name_parts(name: &str) -> Option<impl Iterator<Item = &str>> {
    if name.split('/').any(|p| p == "..") {
        return None;
    }
    Some(name.split('/').filter(|p| !p.is_empty() && *p != "."))
}

/// What [`instant`] makes of a header time written out as RFC 3339 (the
/// zero time and the first 100 s of the year 1 being unset); `None` where
/// the text would not be plain RFC 3339.
fn header_instant(t: Option<strata_tarsplit::Time>) -> Option<Instant> {
    const YEAR_1: i64 = -62_135_596_800;
    const YEAR_10000: i64 = 253_402_300_800;
    let Some(t) = t else { return Some(None) };
    if !(YEAR_1..YEAR_10000).contains(&t.secs) || t.nanos >= 1_000_000_000 {
        return None;
    }
    Some(((t.secs, t.nanos) != (0, 0) && t.secs >= YEAR_1 + 100).then_some((t.secs, t.nanos)))
}

/// What the tar-split says about one entry, ready to compare: the fields
/// containers-storage compares (the name cleaned).
struct TarSide {
    entry: Entry,
    times: [Instant; 3],
}

/// The next file record of the tar-split, with the segment just before it
/// (its headers), made comparable; `None` at the end.
fn next_tar_side<R: std::io::Read>(records: &mut MetadataReader<R>) -> Result<Option<TarSide>> {
    let mut last_segment = Vec::new();
    for record in records {
        match record? {
            SplitEntry::Segment(bytes) => last_segment = bytes,
            SplitEntry::File(file) => {
                let header = header_of(&last_segment).ok_or_else(|| {
                    Error::InvalidToc(format!(
                        "tar-split has no header for {:?}",
                        String::from_utf8_lossy(&file.name)
                    ))
                })?;
                let from_tar = entry_from_header(&header).map_err(|e| Error::InvalidToc(e.to_string()))?;
                let (entry, times) = comparable(&from_tar).map_err(Error::InvalidToc)?;
                return Ok(Some(TarSide { entry, times }));
            }
        }
    }
    Ok(None)
}

/// Entries go across in batches: one channel operation per entry would
/// cost as much as comparing it.
const BATCH: usize = 128;

type Batch = Vec<Result<Option<TarSide>>>;

/// Checks TOC items against the tar-split's headers in step, one item per
/// tar entry in the tar's order (as every writer lists them), so neither
/// side is ever held whole. The tar-split is decoded on a thread of its own
/// (`run` in a scope), so the check costs the TOC's reader little time.
pub(crate) struct Lockstep {
    batches: std::sync::mpsc::Receiver<Batch>,
    current: std::vec::IntoIter<Result<Option<TarSide>>>,
    /// The tar-split's end (or failure) was seen.
    ended: bool,
}

impl Lockstep {
    /// Starts decoding `tar_split` on a thread of `scope`.
    pub(crate) fn spawn<'scope, R: std::io::Read + Send + 'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        tar_split: R,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(8);
        scope.spawn(move || {
            let mut records = MetadataReader::new(tar_split);
            loop {
                let mut batch = Vec::with_capacity(BATCH);
                let mut last = false;
                while batch.len() < BATCH {
                    let side = next_tar_side(&mut records);
                    last = !matches!(side, Ok(Some(_)));
                    batch.push(side);
                    if last {
                        break;
                    }
                }
                // A closed channel: the TOC's reader stopped, and so do we.
                if tx.send(batch).is_err() || last {
                    return;
                }
            }
        });
        Lockstep {
            batches: rx,
            current: Vec::new().into_iter(),
            ended: false,
        }
    }

    fn next_side(&mut self) -> Result<Option<TarSide>> {
        if self.ended {
            return Ok(None);
        }
        let next = match self.current.next() {
            Some(side) => side,
            None => {
                self.current = self
                    .batches
                    .recv()
                    .map_err(|_| Error::InvalidToc("the tar-split reader stopped".into()))?
                    .into_iter();
                self.current.next().unwrap_or(Ok(None))
            }
        };
        if !matches!(next, Ok(Some(_))) {
            self.ended = true;
        }
        next
    }

    pub(crate) fn check(&mut self, item: &TocItem) -> Result<()> {
        let listed = &item.entry;
        let name = clean(&listed.name);
        let Some(tar) = self.next_side()? else {
            return Err(Error::InvalidToc(format!(
                "the TOC lists {name:?} after the tar-split's last entry"
            )));
        };
        if tar.entry.name != name {
            return Err(Error::InvalidToc(format!(
                "the TOC lists {name:?} where the tar-split has {:?}",
                tar.entry.name
            )));
        }
        let (a, ta) = comparable(listed).map_err(Error::InvalidToc)?;
        if a != tar.entry || ta != tar.times {
            return Err(Error::InvalidToc(format!(
                "the TOC entry for {name:?} does not match its tar header"
            )));
        }
        Ok(())
    }

    /// Fails when the tar-split has entries the TOC did not list.
    pub(crate) fn finish(mut self) -> Result<()> {
        match self.next_side()? {
            None => Ok(()),
            Some(tar) => Err(Error::InvalidToc(format!(
                "the tar-split lists {:?}, which the TOC does not",
                tar.entry.name
            ))),
        }
    }
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

    use proptest::prelude::*;
    use strata_tarsplit::{HeaderInfo, Time};

    fn header() -> impl Strategy<Value = HeaderInfo> {
        let name = prop::sample::select(vec!["a", "./a", "a/", "b/../a", "/a//b", "a/b", "caf\u{e9}", ".."]);
        let bytes = prop_oneof![name.prop_map(|n| n.as_bytes().to_vec()), Just(vec![b'a', 0xff])];
        let time = prop_oneof![
            Just(Time { secs: 0, nanos: 0 }),
            Just(Time { secs: -62_135_596_800, nanos: 5 }),
            Just(Time { secs: -62_135_596_650, nanos: 0 }),
            Just(Time { secs: 253_402_300_800, nanos: 0 }),
            (0i64..3, prop::sample::select(vec![0u32, 1, 500_000_000, 999_999_999]))
                .prop_map(|(s, n)| Time { secs: 1_700_000_000 + s, nanos: n }),
        ];
        (
            prop::sample::select(vec![b'0', b'1', b'2', b'3', b'5', b'7', b'x']),
            bytes.clone(),
            bytes,
            (0i64..2, 0i64..2, 0i64..2),
            (time.clone(), prop::option::of(time.clone()), prop::option::of(time)),
            (0i64..2, 0i64..2),
            prop::option::of(Just(("user.a".to_owned(), vec![1u8, 2]))),
        )
            .prop_map(|(typeflag, name, link_name, (size, mode, uid), (mtime, atime, ctime), (dev_major, dev_minor), xattr)| HeaderInfo {
                typeflag,
                name,
                link_name,
                size,
                mode,
                uid,
                gid: 0,
                mtime,
                atime,
                ctime,
                dev_major,
                dev_minor,
                xattrs: xattr.into_iter().collect(),
            })
    }

    proptest! {
        /// The quick comparison agrees with the comparison by definition,
        /// between a header and the entry of the same header with at most
        /// one field taken from another.
        #[test]
        fn same_fields_agrees_with_the_full_comparison(
            a in header(),
            other in header(),
            which in 0..12usize,
            time_text in prop::option::of(prop::sample::select(vec!["", "garbage", "2023-11-14T22:13:20+01:00", "1970-01-01T00:00:00Z"])),
        ) {
            let mut b = a.clone();
            match which {
                0 => b.typeflag = other.typeflag,
                1 => b.name = other.name,
                2 => b.link_name = other.link_name,
                3 => b.size = other.size,
                4 => b.mode = other.mode,
                5 => b.uid = other.uid,
                6 => b.mtime = other.mtime,
                7 => b.atime = other.atime,
                8 => b.ctime = other.ctime,
                9 => (b.dev_major, b.dev_minor) = (other.dev_major, other.dev_minor),
                10 => b.xattrs = other.xattrs,
                _ => {}
            }
            let Ok(mut listed) = entry_from_header(&b) else { return Ok(()) };
            if let Some(t) = time_text.filter(|_| which == 11) {
                listed.mod_time = t.to_owned();
            }
            for to_the_second in [false, true] {
                let full = describes_by_entry(&listed, &a, to_the_second);
                if let Some(quick) = same_fields(&listed, &a, to_the_second) {
                    prop_assert_eq!(quick, full, "{:?} vs {:?}", listed, a);
                }
            }
        }
    }

    #[test]
    fn same_fields_decides_plain_entries() {
        let h = HeaderInfo {
            typeflag: b'0',
            name: b"./usr/bin/ls".to_vec(),
            size: 10,
            mode: 0o755,
            mtime: Time { secs: 1_700_000_000, nanos: 5 },
            ..HeaderInfo::default()
        };
        let entry = entry_from_header(&h).expect("a regular file has an entry");
        assert_eq!(same_fields(&entry, &h, false), Some(true));
        let other = HeaderInfo { mode: 0o644, ..h.clone() };
        assert_eq!(same_fields(&entry, &other, false), Some(false));
    }

    #[test]
    fn names() {
        assert_eq!(clean("./usr/bin/"), "/usr/bin");
        assert_eq!(clean("etc//passwd"), "/etc/passwd");
    }
}
