//! PAX extended header records (`"%d %s=%s\n"`), parsed with Go's rules.

use std::collections::HashMap;

use super::header::Reason;
use super::numbers::parse_go_int;

pub(crate) type Records = HashMap<Vec<u8>, Vec<u8>>;

pub(crate) const PATH: &[u8] = b"path";
const LINKPATH: &[u8] = b"linkpath";
const UNAME: &[u8] = b"uname";
const GNAME: &[u8] = b"gname";
pub(crate) const SIZE: &[u8] = b"size";
pub(crate) const SPARSE_MAP: &[u8] = b"GNU.sparse.map";
pub(crate) const SPARSE_NUM_BLOCKS: &[u8] = b"GNU.sparse.numblocks";
pub(crate) const SPARSE_NAME: &[u8] = b"GNU.sparse.name";
pub(crate) const SPARSE_MAJOR: &[u8] = b"GNU.sparse.major";
pub(crate) const SPARSE_MINOR: &[u8] = b"GNU.sparse.minor";
pub(crate) const SPARSE_SIZE: &[u8] = b"GNU.sparse.size";
pub(crate) const SPARSE_REAL_SIZE: &[u8] = b"GNU.sparse.realsize";
const SPARSE_OFFSET: &[u8] = b"GNU.sparse.offset";
const SPARSE_NUM_BYTES: &[u8] = b"GNU.sparse.numbytes";

/// Parses the data of an `x` or `g` header. GNU sparse 0.0 offset/numbytes
/// pairs are folded into a `GNU.sparse.map` record, as Go does.
pub(crate) fn parse(mut data: &[u8]) -> Result<Records, Reason> {
    let mut records = Records::new();
    let mut sparse_map: Vec<&[u8]> = Vec::new();
    while !data.is_empty() {
        let (key, value, rest) = parse_record(data)?;
        data = rest;
        if key == SPARSE_OFFSET || key == SPARSE_NUM_BYTES {
            let want = if sparse_map.len().is_multiple_of(2) {
                SPARSE_OFFSET
            } else {
                SPARSE_NUM_BYTES
            };
            if key != want || value.contains(&b',') {
                return Err("GNU sparse 0.0 records out of order");
            }
            sparse_map.push(value);
        } else {
            records.insert(key.to_vec(), value.to_vec());
        }
    }
    if !sparse_map.is_empty() {
        records.insert(SPARSE_MAP.to_vec(), sparse_map.join(&b","[..]));
    }
    Ok(records)
}

/// A record's key and value, and the bytes after it.
type Record<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// A PAX record's key and value.
pub type PaxRecord = (Vec<u8>, Vec<u8>);

/// Every record of a PAX extended header, in order, without interpretation.
pub fn records(mut data: &[u8]) -> Result<Vec<PaxRecord>, Reason> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (key, value, rest) = parse_record(data)?;
        out.push((key.to_vec(), value.to_vec()));
        data = rest;
    }
    Ok(out)
}

fn parse_record(s: &[u8]) -> Result<Record<'_>, Reason> {
    const BAD: Reason = "malformed PAX record";
    let space = s.iter().position(|&b| b == b' ').ok_or(BAD)?;
    let declared = parse_go_int(&s[..space]).ok_or(BAD)?;
    if declared < 5 || declared > s.len() as i64 {
        return Err(BAD);
    }
    let n = declared - (space as i64 + 1);
    if n <= 0 {
        return Err(BAD);
    }
    let n = n as usize;
    let rest = &s[space + 1..];
    if rest[n - 1] != b'\n' {
        return Err(BAD);
    }
    let record = &rest[..n - 1];
    let eq = record.iter().position(|&b| b == b'=').ok_or(BAD)?;
    let (key, value) = (&record[..eq], &record[eq + 1..]);
    let valid = !key.is_empty()
        && match key {
            PATH | LINKPATH | UNAME | GNAME => !value.contains(&0),
            _ => !key.contains(&0),
        };
    if !valid {
        return Err(BAD);
    }
    Ok((key, value, &rest[n..]))
}

/// Go's `parsePAXTime` acceptance: decimal seconds, optional `.digits`.
fn valid_time(v: &[u8]) -> bool {
    let (secs, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &[][..]),
    };
    parse_go_int(secs).is_some() && frac.iter().all(u8::is_ascii_digit)
}

/// Applies records to a header's name and size, rejecting the values Go's
/// `mergePAX` rejects. Empty values keep the header's own field.
pub(crate) fn merge(records: &Records, name: &mut Vec<u8>, size: &mut i64) -> Result<(), Reason> {
    for (key, value) in records {
        if value.is_empty() {
            continue;
        }
        let ok = match key.as_slice() {
            PATH => {
                name.clone_from(value);
                true
            }
            SIZE => match parse_go_int(value) {
                Some(v) => {
                    *size = v;
                    true
                }
                None => false,
            },
            b"uid" | b"gid" => parse_go_int(value).is_some(),
            b"atime" | b"mtime" | b"ctime" => valid_time(value),
            _ => true,
        };
        if !ok {
            return Err("invalid value in PAX record");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_with_newlines() {
        let r = records(b"21 SCHILY.xattr.a=\n\n\n").expect("valid");
        assert_eq!(r, vec![(b"SCHILY.xattr.a".to_vec(), b"\n\n".to_vec())]);
    }

    #[test]
    fn records_map() {
        let r = parse(b"16 path=foo/bar\n11 size=12\n").expect("valid");
        assert_eq!(r[&b"path"[..]], b"foo/bar");
        assert_eq!(r[&b"size"[..]], b"12");
    }

    #[test]
    fn sparse_00_folds_into_map() {
        let r = parse(b"23 GNU.sparse.offset=0\n25 GNU.sparse.numbytes=5\n").expect("valid");
        assert_eq!(r[SPARSE_MAP], b"0,5");
        assert!(parse(b"25 GNU.sparse.numbytes=5\n").is_err());
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"5 a=b"[..],
            b"3 a=\n",
            b"99 path=x\n",
            b"8 path\n",
            b"6 =xy\n",
            b"x path=a\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn merge_rejects_bad_numbers() {
        let mut name = b"a".to_vec();
        let mut size = 0;
        let r = parse(b"11 size=1x\n").expect("syntax ok");
        assert!(merge(&r, &mut name, &mut size).is_err());
        let r = parse(b"15 mtime=1.5e3\n").expect("syntax ok");
        assert!(merge(&r, &mut name, &mut size).is_err());
    }
}
