//! Where an image is pulled from: a registry or an OCI layout, behind one
//! small interface (manifests, small blobs read whole, layer blobs as
//! range sources).

use std::io::Read;

use strata_chunkfetch::oci::{Descriptor, MAX_MANIFEST};
use strata_chunkfetch::reference::RegistryRef;
use strata_chunkfetch::{ByteRange, FileSource, OciLayout, RangeSink, RangeSource, Reference, Registry, RegistryBlob, RegistryOptions};

use crate::{Error, Result};

/// Configs and other small blobs are read whole up to this size.
const MAX_SMALL_BLOB: u64 = 16 << 20;

pub(crate) enum ImageSource {
    Registry { registry: Registry, image: RegistryRef },
    Layout { layout: OciLayout, tag: Option<String> },
}

/// A layer blob from either source.
pub(crate) enum Blob {
    Registry(RegistryBlob),
    File(FileSource, std::path::PathBuf),
}

impl ImageSource {
    pub(crate) fn open(reference: &Reference, options: &RegistryOptions) -> Result<ImageSource> {
        Ok(match reference {
            Reference::Registry(image) => ImageSource::Registry {
                registry: Registry::new(image.api_host(), options.clone())?,
                image: image.clone(),
            },
            Reference::Layout { dir, tag } => ImageSource::Layout {
                layout: OciLayout::open(dir)?,
                tag: tag.clone(),
            },
        })
    }

    /// The manifest (or index) the reference names: bytes, media type, digest.
    pub(crate) fn top_manifest(&self) -> Result<(Vec<u8>, String, String)> {
        match self {
            ImageSource::Registry { registry, image } => {
                let m = registry.manifest(&image.repository, image.manifest_reference())?;
                Ok((m.bytes, m.media_type, m.digest))
            }
            ImageSource::Layout { layout, tag } => {
                let desc = layout.resolve(tag.as_deref())?;
                self.manifest(&desc)
            }
        }
    }

    /// A manifest by descriptor (an index entry).
    pub(crate) fn manifest(&self, desc: &Descriptor) -> Result<(Vec<u8>, String, String)> {
        let bytes = match self {
            ImageSource::Registry { registry, image } => registry.manifest(&image.repository, &desc.digest)?.bytes,
            ImageSource::Layout { layout, .. } => layout.read_blob(&desc.digest, MAX_MANIFEST)?,
        };
        let media_type = if desc.media_type.is_empty() {
            strata_chunkfetch::oci::sniff_media_type(&bytes)
        } else {
            desc.media_type.clone()
        };
        Ok((bytes, media_type, desc.digest.clone()))
    }

    /// A config or other small blob, read whole and checked.
    pub(crate) fn small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_SMALL_BLOB {
            return Err(Error::invalid(format!("blob {}", desc.digest), format!("{} bytes is too large for a config", desc.size)));
        }
        match self {
            ImageSource::Layout { layout, .. } => Ok(layout.read_blob(&desc.digest, desc.size)?),
            ImageSource::Registry { .. } => {
                let blob = self.blob(desc)?;
                let mut bytes = Vec::new();
                blob.open()?.take(desc.size + 1).read_to_end(&mut bytes).map_err(|e| {
                    Error::invalid(format!("blob {}", desc.digest), e.to_string())
                })?;
                let actual = sha256(&bytes);
                if bytes.len() as u64 != desc.size || actual != desc.digest {
                    return Err(Error::Fetch(strata_chunkfetch::Error::DigestMismatch {
                        what: format!("blob {}", desc.digest),
                        expected: format!("{} ({} bytes)", desc.digest, desc.size),
                        actual: format!("{actual} ({} bytes)", bytes.len()),
                    }));
                }
                Ok(bytes)
            }
        }
    }

    pub(crate) fn blob(&self, desc: &Descriptor) -> Result<Blob> {
        match self {
            ImageSource::Registry { registry, image } => {
                Ok(Blob::Registry(registry.blob(&image.repository, &desc.digest, Some(desc.size))?))
            }
            ImageSource::Layout { layout, .. } => {
                let source = layout.blob(&desc.digest)?;
                let path = layout.path().join("blobs/sha256").join(desc.digest.trim_start_matches("sha256:"));
                Ok(Blob::File(source, path))
            }
        }
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut s = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Blob {
    /// The whole blob, streamed.
    pub(crate) fn open(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Blob::Registry(b) => Ok(b.open()?),
            Blob::File(_, path) => {
                let f = std::fs::File::open(path)
                    .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
                Ok(Box::new(f))
            }
        }
    }

    /// Body bytes received from the network, when the blob is remote.
    pub(crate) fn received(&self) -> Option<u64> {
        match self {
            Blob::Registry(b) => Some(b.bytes_received()),
            Blob::File(..) => None,
        }
    }
}

impl RangeSource for Blob {
    fn size(&self) -> strata_chunkfetch::Result<u64> {
        match self {
            Blob::Registry(b) => b.size(),
            Blob::File(f, _) => f.size(),
        }
    }

    fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> strata_chunkfetch::Result<()> {
        match self {
            Blob::Registry(b) => b.fetch(ranges, sink),
            Blob::File(f, _) => f.fetch(ranges, sink),
        }
    }

    fn sends_whole_blob(&self) -> bool {
        match self {
            Blob::Registry(b) => b.sends_whole_blob(),
            Blob::File(..) => false,
        }
    }
}
