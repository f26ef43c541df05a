//! The lower layers as overlayfs merges them, looked up one path at a time
//! (the upperdir differ asks only about names the upperdir mentions).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use cap_std::fs::Dir;

use crate::meta::{self, Meta};
use crate::options::XattrNamespace;

/// Lower directories, top-most first. Each may itself hold overlay
/// whiteouts and opaque directories (as layer diff directories do).
#[derive(Debug)]
pub struct LowerView {
    layers: Vec<Dir>,
    xattrs: XattrNamespace,
}

impl LowerView {
    pub fn new(layers: Vec<Dir>, xattrs: XattrNamespace) -> Self {
        LowerView { layers, xattrs }
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// What the merged lower view has at `path` (components, no slashes
    /// inside them), or `None` when the name is absent or whited out.
    pub fn lookup(&self, path: &[&OsStr]) -> io::Result<Option<Meta>> {
        let opaque = self.xattrs.name("opaque");
        'layers: for layer in &self.layers {
            let mut dir: Option<Dir> = None;
            for (i, name) in path.iter().enumerate() {
                let parent = dir.as_ref().unwrap_or(layer);
                let Some(found) = meta::stat(parent, name)? else {
                    // Missing here: lower layers still count, unless a
                    // directory of this layer on the way is opaque.
                    if i > 0 && dir_is_opaque(parent, &opaque)? {
                        return Ok(None);
                    }
                    continue 'layers;
                };
                if found.is_whiteout() {
                    return Ok(None);
                }
                if i + 1 == path.len() {
                    return Ok(Some(found));
                }
                if !found.is_dir() {
                    // A non-directory hides everything below it.
                    return Ok(None);
                }
                dir = Some(meta::open_dir(parent, name)?);
            }
            return Ok(None);
        }
        Ok(None)
    }
}

fn dir_is_opaque(dir: &Dir, opaque: &str) -> io::Result<bool> {
    Ok(meta::read_xattrs(dir, OsStr::from_bytes(b"."))?
        .iter()
        .any(|(n, v)| n.as_bytes() == opaque.as_bytes() && v == b"y"))
}
