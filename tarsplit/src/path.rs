//! Lexical path handling for entry names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Go's `filepath.Clean` on raw bytes: the key tar-split uses to detect
/// duplicate entries.
pub(crate) fn go_clean(name: &[u8]) -> Vec<u8> {
    let rooted = name.first() == Some(&b'/');
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match parts.last() {
                Some(&last) if last != b".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(part),
            },
            _ => parts.push(part),
        }
    }
    let mut out = Vec::with_capacity(name.len());
    if rooted {
        out.push(b'/');
    }
    out.extend_from_slice(&parts.join(&b'/'));
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// The path of an entry below a root directory, or why it has none: an
/// absolute name, or one whose `..` components climb out of the root.
pub(crate) fn below_root(name: &[u8]) -> Result<PathBuf, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("path climbs out of the root with ..");
                }
            }
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("path names the root itself");
    }
    Ok(PathBuf::from(OsStr::from_bytes(&parts.join(&b'/'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_like_go() {
        for (input, want) in [
            (&b"./a/b/"[..], &b"a/b"[..]),
            (b"a//b/./c/..", b"a/b"),
            (b"/../a", b"/a"),
            (b"../../a", b"../../a"),
            (b"", b"."),
            (b"/", b"/"),
            (b"a/..", b"."),
        ] {
            assert_eq!(
                go_clean(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn root_relative() {
        assert_eq!(
            below_root(b"./usr/bin/x").expect("ok"),
            PathBuf::from("usr/bin/x")
        );
        assert_eq!(below_root(b"a/../b").expect("ok"), PathBuf::from("b"));
        assert!(below_root(b"../etc/passwd").is_err());
        assert!(below_root(b"a/../../b").is_err());
        assert!(below_root(b"/etc/passwd").is_err());
        assert!(below_root(b"./").is_err());
    }
}
