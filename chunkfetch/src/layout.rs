//! An OCI image layout directory (image-spec `image-layout.md`): index.json,
//! blobs/<algorithm>/<hex>. Blobs are opened under the layout root with
//! cap-std, so a hostile index cannot name a file outside it.

use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::oci::{self, Descriptor, Index, MAX_MANIFEST, valid_digest};
use crate::{Error, FileSource, Result};

/// The annotation that names a manifest in a layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout on disk.
#[derive(Debug)]
pub struct OciLayout {
    dir: Dir,
    path: PathBuf,
}

impl OciLayout {
    pub fn open(path: impl AsRef<Path>) -> Result<OciLayout> {
        let path = path.as_ref().to_path_buf();
        let dir = Dir::open_ambient_dir(&path, ambient_authority()).map_err(|e| Error::io(path.display(), e))?;
        let layout = dir
            .read_to_string("oci-layout")
            .map_err(|e| Error::io(path.join("oci-layout").display(), e))?;
        let version: serde_json::Value = serde_json::from_str(&layout).map_err(|e| Error::Invalid {
            what: path.join("oci-layout").display().to_string(),
            reason: e.to_string(),
        })?;
        if version.get("imageLayoutVersion").and_then(|v| v.as_str()).is_none() {
            return Err(Error::Invalid {
                what: path.join("oci-layout").display().to_string(),
                reason: "no imageLayoutVersion".into(),
            });
        }
        Ok(OciLayout { dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layout's index.json.
    pub fn index(&self) -> Result<Index> {
        let bytes = self.read_limited("index.json", MAX_MANIFEST)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            what: self.path.join("index.json").display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The manifest (or nested index) descriptor for `tag`: the entry whose
    /// ref-name annotation is `tag`, or with no tag the only entry.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let found: Vec<&Descriptor> = match tag {
            Some(tag) => index
                .manifests
                .iter()
                .filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
                .collect(),
            None => index.manifests.iter().collect(),
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NotFound {
                what: format!("{} in {}", tag.unwrap_or("an image"), self.path.display()),
            }),
            _ => Err(Error::Invalid {
                what: self.path.display().to_string(),
                reason: format!(
                    "{} images match{}; name one with :TAG",
                    found.len(),
                    tag.map(|t| format!(" {t}")).unwrap_or_default()
                ),
            }),
        }
    }

    fn blob_path(digest: &str) -> Result<String> {
        if !valid_digest(digest) {
            return Err(Error::Invalid {
                what: format!("digest {digest:?}"),
                reason: "not a sha256 digest".into(),
            });
        }
        Ok(format!("blobs/sha256/{}", &digest[7..]))
    }

    /// A blob as a range source.
    pub fn blob(&self, digest: &str) -> Result<FileSource> {
        let rel = Self::blob_path(digest)?;
        let file = self.dir.open(&rel).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: format!("blob {digest} in {}", self.path.display()),
            },
            _ => Error::io(self.path.join(&rel).display(), e),
        })?;
        FileSource::from_file(file.into_std(), self.path.join(&rel).display().to_string())
    }

    /// A small blob (manifest, config) read whole, its digest checked.
    pub fn read_blob(&self, digest: &str, limit: u64) -> Result<Vec<u8>> {
        let rel = Self::blob_path(digest)?;
        let bytes = self.read_limited(&rel, limit)?;
        let actual = oci::sha256_digest(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: self.path.join(&rel).display().to_string(),
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn read_limited(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let what = self.path.join(rel);
        let file = self.dir.open(rel).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: what.display().to_string(),
            },
            _ => Error::io(what.display(), e),
        })?;
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(what.display(), e))?;
        if bytes.len() as u64 > limit {
            return Err(Error::Invalid {
                what: what.display().to_string(),
                reason: format!("larger than {limit} bytes"),
            });
        }
        Ok(bytes)
    }
}
