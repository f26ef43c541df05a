//! fs-verity on a new layer's files, per
//! [`LayerOptions::fs_verity`](crate::LayerOptions::fs_verity), once they
//! are written and before the layer counts as complete: a layer that must
//! have it and cannot is not kept. Its digests are kept with the layer as
//! big data, one line per file as `fsverity digest` prints them
//! (`sha256:HEX PATH`), except that a backslash or newline in a path is
//! written `\\` or `\n`: a name from the tar cannot add a line.

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use strata_fsverity::{Digest, Policy};

use crate::{Error, Result};

/// The big-data item holding a layer's fs-verity digests.
pub const FS_VERITY_DIGESTS: &str = "strata.fs-verity-digests";

/// The digests of the files verity was enabled on, in tree order.
#[derive(Debug, Default)]
pub(crate) struct Enabled(Vec<(String, Digest)>);

impl Enabled {
    /// The big-data item's bytes, or none when no file has verity.
    pub(crate) fn listing(&self) -> Option<Vec<u8>> {
        if self.0.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for (path, digest) in &self.0 {
            let path = path.replace('\\', "\\\\").replace('\n', "\\n");
            out.extend_from_slice(format!("{digest} {path}\n").as_bytes());
        }
        Some(out)
    }
}

/// Applies `policy` to every regular file under `tree`, which nothing
/// else writes meanwhile. `IfSupported` stops at the first file the
/// filesystem refuses: the rest are on the same filesystem.
pub(crate) fn enable_all(tree: &Dir, policy: Policy) -> Result<Enabled> {
    let mut enabled = Enabled::default();
    if policy == Policy::Disabled {
        return Ok(enabled);
    }
    let mut stack = vec![(tree.try_clone().map_err(|e| io("", e))?, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries: Vec<_> = dir
            .entries()
            .map_err(|e| io(&prefix, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| io(&prefix, e))?;
        entries.sort_by_key(|e| e.file_name());
        // Subdirectories after the files, and in name order when popped;
        // cap-std keeps every open inside the tree.
        let mut below = Vec::new();
        for entry in entries {
            let name = entry.file_name();
            let path = format!("{prefix}/{}", name.to_string_lossy());
            let kind = entry.file_type().map_err(|e| io(&path, e))?;
            if kind.is_dir() {
                below.push((dir.open_dir(&name).map_err(|e| io(&path, e))?, path));
            } else if kind.is_file() {
                let file = dir
                    .open_with(&name, OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32))
                    .map_err(|e| io(&path, e))?;
                match policy.apply(&file) {
                    Ok(Some(digest)) => enabled.0.push((path, digest)),
                    // The filesystem cannot: neither can it for the rest.
                    Ok(None) => return Ok(enabled),
                    Err(e) if e.is_not_supported() => return Err(Error::Unsupported(format!("fs-verity on {path}: {e}"))),
                    Err(e) => {
                        return Err(Error::Io {
                            path: format!("fs-verity on {path}"),
                            source: std::io::Error::other(e),
                        });
                    }
                }
            }
        }
        stack.extend(below.into_iter().rev());
    }
    Ok(enabled)
}

fn io(path: &str, source: std::io::Error) -> Error {
    Error::Io {
        path: if path.is_empty() { "/".into() } else { path.to_owned() },
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_cannot_add_a_line_to_the_listing() {
        let digest = strata_fsverity::digest(&b"x"[..]).expect("digest");
        let listing = Enabled(vec![
            ("/a b".into(), digest),
            (format!("/x\n{digest} /etc/passwd"), digest),
            ("/back\\slash".into(), digest),
        ])
        .listing()
        .expect("a listing");
        let text = String::from_utf8(listing).expect("text");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], format!("{digest} /a b"));
        assert_eq!(lines[1], format!("{digest} /x\\n{digest} /etc/passwd"));
        assert_eq!(lines[2], format!("{digest} /back\\\\slash"));
    }
}
