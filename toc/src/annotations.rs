//! The layer-descriptor annotations that mark a zstd:chunked layer and
//! locate its TOC and tar-split.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

pub const PREFIX: &str = "io.github.containers.zstd-chunked.";
/// What containers-storage ≤ 1.43 (podman 4.3) reads.
pub const LEGACY_PREFIX: &str = "io.containers.zstd-chunked.";
pub const MANIFEST_CHECKSUM: &str = "manifest-checksum";
pub const MANIFEST_POSITION: &str = "manifest-position";
pub const TARSPLIT_POSITION: &str = "tarsplit-position";
/// eStargz's TOC digest: a layer carrying both is refused, as c/storage does.
pub const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// What the annotations say about a zstd:chunked layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// `sha256:HEX` of the compressed TOC: the digest the manifest commits to.
    pub toc_digest: String,
    pub toc_offset: u64,
    pub toc_compressed_len: u64,
    pub toc_len: u64,
    pub tar_split: Option<(u64, u64, u64)>,
}

fn numbers<const N: usize>(key: &str, value: &str) -> Result<[u64; N]> {
    let bad = |reason: &str| Error::BadAnnotation {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != N {
        return Err(bad(&format!("expected {N} numbers separated by ':'")));
    }
    let mut out = [0u64; N];
    for (slot, part) in out.iter_mut().zip(parts) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("not a decimal number"));
        }
        *slot = part.parse().map_err(|_| bad("number too large"))?;
    }
    Ok(out)
}

fn get<'a>(annotations: &'a BTreeMap<String, String>, name: &str) -> Option<(String, &'a str)> {
    [PREFIX, LEGACY_PREFIX].iter().find_map(|p| {
        let key = format!("{p}{name}");
        annotations.get(&key).map(|v| (key, v.as_str()))
    })
}

/// The zstd:chunked location in a descriptor's annotations; `None` when the
/// layer is not zstd:chunked.
pub fn location(annotations: &BTreeMap<String, String>) -> Result<Option<Location>> {
    let Some((digest_key, digest)) = get(annotations, MANIFEST_CHECKSUM) else {
        return Ok(None);
    };
    if annotations.contains_key(ESTARGZ_TOC_DIGEST) {
        return Err(Error::BadAnnotation {
            key: digest_key,
            reason: "both zstd:chunked and eStargz TOCs are declared".into(),
        });
    }
    if !valid_digest(digest) {
        return Err(Error::BadAnnotation {
            key: digest_key,
            reason: format!("{digest:?} is not a sha256 digest"),
        });
    }
    let (key, position) =
        get(annotations, MANIFEST_POSITION).ok_or_else(|| Error::BadAnnotation {
            key: digest_key.clone(),
            reason: "no manifest-position annotation".into(),
        })?;
    let [toc_offset, toc_compressed_len, toc_len, kind] = numbers::<4>(&key, position)?;
    if kind != 1 {
        return Err(Error::BadAnnotation {
            key,
            reason: format!("manifest type {kind}, expected 1"),
        });
    }
    let tar_split = match get(annotations, TARSPLIT_POSITION) {
        Some((key, v)) => {
            let [o, c, u] = numbers::<3>(&key, v)?;
            Some((o, c, u))
        }
        None => None,
    };
    Ok(Some(Location {
        toc_digest: digest.to_string(),
        toc_offset,
        toc_compressed_len,
        toc_len,
        tar_split,
    }))
}

/// The annotations for a location, under the current keys, and under the
/// legacy keys too when `legacy` is set (for containers-storage ≤ 1.43).
pub fn annotations(loc: &Location, legacy: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let prefixes: &[&str] = if legacy {
        &[PREFIX, LEGACY_PREFIX]
    } else {
        &[PREFIX]
    };
    for p in prefixes {
        out.insert(format!("{p}{MANIFEST_CHECKSUM}"), loc.toc_digest.clone());
        out.insert(
            format!("{p}{MANIFEST_POSITION}"),
            format!(
                "{}:{}:{}:1",
                loc.toc_offset, loc.toc_compressed_len, loc.toc_len
            ),
        );
    }
    if let Some((o, c, u)) = loc.tar_split {
        out.insert(
            format!("{PREFIX}{TARSPLIT_POSITION}"),
            format!("{o}:{c}:{u}"),
        );
    }
    out
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const D: &str = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    #[test]
    fn parses_current_and_legacy_keys() {
        let current = map(&[
            ("io.github.containers.zstd-chunked.manifest-checksum", D),
            (
                "io.github.containers.zstd-chunked.manifest-position",
                "100:20:80:1",
            ),
            (
                "io.github.containers.zstd-chunked.tarsplit-position",
                "128:10:300",
            ),
        ]);
        let loc = location(&current).expect("valid").expect("chunked");
        assert_eq!((loc.toc_offset, loc.tar_split), (100, Some((128, 10, 300))));
        assert_eq!(annotations(&loc, false), current);
        let legacy = map(&[
            ("io.containers.zstd-chunked.manifest-checksum", D),
            (
                "io.containers.zstd-chunked.manifest-position",
                "100:20:80:1",
            ),
        ]);
        assert_eq!(
            location(&legacy)
                .expect("valid")
                .expect("chunked")
                .tar_split,
            None
        );
        assert_eq!(annotations(&loc, true).len(), 5);
        assert_eq!(location(&map(&[])).expect("valid"), None);
    }

    #[test]
    fn refuses_bad_values() {
        for (k, v) in [
            ("manifest-position", "100:20:80:2"),
            ("manifest-position", "100:20:80"),
            ("manifest-position", "-1:20:80:1"),
            ("manifest-position", "1:2:3:99999999999999999999999"),
        ] {
            let m = map(&[
                ("io.github.containers.zstd-chunked.manifest-checksum", D),
                (&format!("{PREFIX}{k}"), v),
            ]);
            assert!(location(&m).is_err(), "{v}");
        }
        let m = map(&[(&format!("{PREFIX}{MANIFEST_CHECKSUM}"), "sha256:xyz")]);
        assert!(location(&m).is_err());
        let m = map(&[
            (&format!("{PREFIX}{MANIFEST_CHECKSUM}"), D),
            (ESTARGZ_TOC_DIGEST, D),
        ]);
        assert!(location(&m).is_err());
    }
}
