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

/// Writes blobs and tags into an OCI image layout (creating it). Blobs are
/// written to a temporary name and renamed once complete, so a reader
/// never sees half a blob; index.json is replaced atomically.
#[derive(Debug)]
pub struct LayoutWriter {
    dir: Dir,
    path: PathBuf,
}

/// A blob as written: its digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenBlob {
    pub digest: String,
    pub size: u64,
}

struct HashingFile {
    file: std::fs::File,
    hash: sha2::Sha256,
    size: u64,
}

impl std::io::Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl LayoutWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<LayoutWriter> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|e| Error::io(path.display(), e))?;
        let dir = Dir::open_ambient_dir(&path, ambient_authority()).map_err(|e| Error::io(path.display(), e))?;
        dir.create_dir_all("blobs/sha256").map_err(|e| Error::io(path.join("blobs/sha256").display(), e))?;
        if !dir.exists("oci-layout") {
            dir.write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| Error::io(path.join("oci-layout").display(), e))?;
        }
        Ok(LayoutWriter { dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a blob that `write` produces; returns its digest and size.
    pub fn put_blob_with(&self, write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> Result<WrittenBlob> {
        use sha2::Digest;
        let tmp = format!("blobs/sha256/.tmp-{}", std::process::id()) + &format!("-{:x}", rand_suffix());
        let file = self.dir.create(&tmp).map_err(|e| Error::io(self.path.join(&tmp).display(), e))?;
        let mut out = std::io::BufWriter::with_capacity(
            256 << 10,
            HashingFile {
                file: file.into_std(),
                hash: sha2::Sha256::new(),
                size: 0,
            },
        );
        let written = write(&mut out).and_then(|()| out.into_inner().map_err(|e| e.into_error()));
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = self.dir.remove_file(&tmp);
                return Err(Error::io(self.path.join(&tmp).display(), e));
            }
        };
        let digest = format!("sha256:{}", written.hash.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>());
        let name = format!("blobs/sha256/{}", &digest[7..]);
        self.dir
            .rename(&tmp, &self.dir, &name)
            .map_err(|e| Error::io(self.path.join(&name).display(), e))?;
        Ok(WrittenBlob {
            digest,
            size: written.size,
        })
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Result<WrittenBlob> {
        self.put_blob_with(|w| w.write_all(bytes))
    }

    /// Adds `manifest` to index.json under `tag` (replacing what had it).
    pub fn tag(&self, mut manifest: Descriptor, tag: Option<&str>) -> Result<()> {
        let mut index = match self.dir.read("index.json") {
            Ok(bytes) => serde_json::from_slice::<Index>(&bytes).map_err(|e| Error::Invalid {
                what: self.path.join("index.json").display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index {
                schema_version: 2,
                media_type: oci::MEDIA_TYPE_OCI_INDEX.to_owned(),
                ..Index::default()
            },
            Err(e) => return Err(Error::io(self.path.join("index.json").display(), e)),
        };
        if let Some(tag) = tag {
            index.manifests.retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
            manifest.annotations.insert(REF_NAME.to_owned(), tag.to_owned());
        } else {
            index.manifests.retain(|d| d.digest != manifest.digest || d.annotations.contains_key(REF_NAME));
        }
        index.manifests.push(manifest);
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::Invalid {
            what: "index.json".into(),
            reason: e.to_string(),
        })?;
        let tmp = format!(".index.json.tmp-{}", std::process::id());
        self.dir.write(&tmp, &bytes).map_err(|e| Error::io(self.path.join(&tmp).display(), e))?;
        self.dir
            .rename(&tmp, &self.dir, "index.json")
            .map_err(|e| Error::io(self.path.join("index.json").display(), e))
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}
