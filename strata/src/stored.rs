//! An image in the store, served the way containers/image's storage source
//! serves one: blobs by digest (a layer's diffID streams its tar, rebuilt
//! bit for bit from its tar-split; any other digest is a big-data item),
//! manifests by instance, the layers to copy, signatures, the size. The
//! store is locked only while metadata is read, never while a blob streams.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use serde::Deserialize;
use strata_chunkfetch::oci::{self, Manifest};
use strata_layerstore::{DiffOptions, Image, Store};

use crate::source::sha256;
use crate::{Error, Result};

/// The gzip of an empty tar (two zero blocks), byte for byte the one
/// docker and containers/image use for history entries that made no layer
/// (docker schema 1 manifests list it).
pub const GZIPPED_EMPTY_LAYER: [u8; 32] = [
    31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 98, 24, 5, 163, 96, 20, 140, 88, 0, 8, 0, 0, 255, 255, 46, 175, 181, 239, 0, 4, 0, 0,
];
/// Its digest.
pub const GZIPPED_EMPTY_LAYER_DIGEST: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

/// A layer as [`StoredImage::layer_infos`] lists it for copying.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LayerInfo {
    /// The diffID (the uncompressed tar's digest), or the gzipped empty
    /// layer's digest for an `empty` one.
    pub digest: String,
    pub size: i64,
    pub media_type: String,
    /// A history entry without a layer (docker schema 1 lists those).
    pub empty: bool,
}

/// Where a served blob came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// A layer's tar, rebuilt from the store.
    Layer,
    /// A big-data item of the image (its config, say).
    BigData,
    /// The well-known gzipped empty layer.
    EmptyLayer,
}

struct ChainLayer {
    id: String,
    diff_id: String,
    size: i64,
}

/// An image of a store, opened for serving. Cheap to open: it reads the
/// image's record and its layer chain, nothing more.
pub struct StoredImage<'s> {
    store: &'s Store,
    image: Image,
    /// Base first.
    chain: Vec<ChainLayer>,
    /// For diffIDs that several layers share: which one serves next.
    next_of: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for StoredImage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredImage").field("id", &self.image.id).field("layers", &self.chain.len()).finish()
    }
}

/// The signature lengths containers/image keeps in the image's metadata.
#[derive(Deserialize, Default)]
struct SignatureSizes {
    #[serde(rename = "signature-sizes", default)]
    legacy: Vec<usize>,
    #[serde(rename = "signatures-sizes", default)]
    by_instance: HashMap<String, Vec<usize>>,
}

impl<'s> StoredImage<'s> {
    /// Opens image `key`: an ID, a name, a unique ID prefix, or a
    /// manifest digest one image has.
    pub fn open(store: &'s Store, key: &str) -> Result<StoredImage<'s>> {
        let image = match store.image(key) {
            Err(strata_layerstore::Error::NotFound(what)) if oci::valid_digest(key) => {
                let mut found = store.images_by_digest(key)?;
                match found.len() {
                    1 => found.remove(0),
                    0 => return Err(strata_layerstore::Error::NotFound(what).into()),
                    n => return Err(Error::invalid(format!("image {key}"), format!("{n} images have this digest"))),
                }
            }
            other => other?,
        };
        let mut ids = store.image_layers(&image.id)?;
        ids.reverse();
        let mut chain = Vec::with_capacity(ids.len());
        for id in ids {
            let layer = store.layer(&id)?;
            chain.push(ChainLayer {
                id,
                diff_id: layer.diff_digest,
                size: layer.diff_size,
            });
        }
        Ok(StoredImage {
            store,
            image,
            chain,
            next_of: Mutex::new(HashMap::new()),
        })
    }

    pub fn id(&self) -> &str {
        &self.image.id
    }

    pub fn record(&self) -> &Image {
        &self.image
    }

    fn big_data(&self, name: &str) -> Result<Vec<u8>> {
        Ok(self.store.image_big_data(&self.image.id, name)?)
    }

    fn has_big_data(&self, name: &str) -> bool {
        self.image.big_data_names.iter().any(|n| n == name)
    }

    /// The manifest for `instance` (a manifest digest: a platform's, or a
    /// manifest list's when the image was pulled through one); without
    /// one, the manifest of the image's own digest, else the default.
    /// Returns the bytes and their digest.
    pub fn manifest(&self, instance: Option<&str>) -> Result<(Vec<u8>, String)> {
        let key = match instance {
            Some(digest) => {
                let key = format!("manifest-{digest}");
                if !self.has_big_data(&key) {
                    return Err(Error::invalid(
                        format!("image {}", self.image.id),
                        format!("no manifest with digest {digest} is stored with it"),
                    ));
                }
                key
            }
            None if !self.image.digest.is_empty() && self.has_big_data(&format!("manifest-{}", self.image.digest)) => {
                format!("manifest-{}", self.image.digest)
            }
            None => "manifest".to_owned(),
        };
        let bytes = self.big_data(&key)?;
        let digest = sha256(&bytes);
        Ok((bytes, digest))
    }

    /// The layers to copy, in the manifest's order: each one's diffID and
    /// uncompressed size (copies recompress as they like), and the gzipped
    /// empty layer where the manifest lists one that has no layer in the
    /// store. A manifest that lists more or fewer layers than the image
    /// has is an error.
    pub fn layer_infos(&self) -> Result<Vec<LayerInfo>> {
        let (bytes, digest) = self.manifest(None)?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("manifest {digest}"), e.to_string()))?;
        let docker = manifest.media_type.contains("docker") || manifest.config.media_type.contains("docker");
        let tar_type = if docker { "application/vnd.docker.image.rootfs.diff.tar" } else { "application/vnd.oci.image.layer.v1.tar" };
        let mut chain = self.chain.iter().peekable();
        let mut out = Vec::with_capacity(manifest.layers.len());
        for (i, desc) in manifest.layers.iter().enumerate() {
            let left_in_manifest = manifest.layers.len() - i;
            let left_in_chain = chain.len();
            if desc.digest == GZIPPED_EMPTY_LAYER_DIGEST && left_in_chain < left_in_manifest {
                out.push(LayerInfo {
                    digest: GZIPPED_EMPTY_LAYER_DIGEST.to_owned(),
                    size: GZIPPED_EMPTY_LAYER.len() as i64,
                    media_type: desc.media_type.clone(),
                    empty: true,
                });
                continue;
            }
            let Some(layer) = chain.next() else { break };
            out.push(LayerInfo {
                digest: layer.diff_id.clone(),
                size: layer.size,
                media_type: tar_type.to_owned(),
                empty: false,
            });
        }
        if out.len() != manifest.layers.len() || chain.peek().is_some() {
            return Err(Error::invalid(
                format!("image {}", self.image.id),
                format!("its manifest {digest} lists {} layers, the store holds {}", manifest.layers.len(), self.chain.len()),
            ));
        }
        Ok(out)
    }

    /// Writes the blob with `digest` to `out`: a layer's tar (rebuilt bit
    /// for bit; layers that share a diffID serve in turn), the gzipped
    /// empty layer, or a big-data item of that name (the config). The
    /// store's lock is not held while `out` takes the bytes.
    pub fn write_blob(&self, digest: &str, out: &mut dyn Write) -> Result<(BlobKind, u64)> {
        if digest == GZIPPED_EMPTY_LAYER_DIGEST {
            out.write_all(&GZIPPED_EMPTY_LAYER).map_err(|e| Error::invalid("blob output", e.to_string()))?;
            return Ok((BlobKind::EmptyLayer, GZIPPED_EMPTY_LAYER.len() as u64));
        }
        let sharing: Vec<&ChainLayer> = self.chain.iter().filter(|l| l.diff_id == digest).collect();
        if !sharing.is_empty() {
            let turn = {
                let mut next = self.next_of.lock().unwrap_or_else(|e| e.into_inner());
                let n = next.entry(digest.to_owned()).or_insert(0);
                let turn = *n % sharing.len();
                *n += 1;
                turn
            };
            let written = self.store.diff(
                &sharing[turn].id,
                out,
                DiffOptions {
                    verify: true,
                    ..DiffOptions::default()
                },
            )?;
            return Ok((BlobKind::Layer, written));
        }
        if oci::valid_digest(digest) && self.has_big_data(digest) {
            let bytes = self.big_data(digest)?;
            let actual = sha256(&bytes);
            if actual != digest {
                return Err(Error::invalid(format!("big data {digest} of image {}", self.image.id), format!("its digest is {actual}")));
            }
            out.write_all(&bytes).map_err(|e| Error::invalid("blob output", e.to_string()))?;
            return Ok((BlobKind::BigData, bytes.len() as u64));
        }
        Err(Error::invalid(format!("image {}", self.image.id), format!("it has no blob {digest}")))
    }

    /// The signatures stored for `instance` (a manifest digest), or without
    /// one the legacy ones followed by those of the image's own manifest,
    /// each split out by the lengths recorded in the image's metadata.
    pub fn signatures(&self, instance: Option<&str>) -> Result<Vec<Vec<u8>>> {
        let sizes: SignatureSizes = if self.image.metadata.is_empty() {
            SignatureSizes::default()
        } else {
            serde_json::from_str(&self.image.metadata).unwrap_or_default()
        };
        let mut items: Vec<(String, Vec<usize>)> = Vec::new();
        match instance {
            Some(d) => items.push((signature_key(d), sizes.by_instance.get(d).cloned().unwrap_or_default())),
            None => {
                items.push(("signatures".to_owned(), sizes.legacy.clone()));
                if !self.image.digest.is_empty() {
                    let d = &self.image.digest;
                    items.push((signature_key(d), sizes.by_instance.get(d).cloned().unwrap_or_default()));
                }
            }
        }
        let mut out = Vec::new();
        for (key, lengths) in items {
            let blob = if self.has_big_data(&key) { self.big_data(&key)? } else { Vec::new() };
            let total: usize = lengths.iter().sum();
            if total != blob.len() {
                return Err(Error::invalid(
                    format!("signatures {key} of image {}", self.image.id),
                    format!("the recorded lengths add up to {total} bytes, the item holds {}", blob.len()),
                ));
            }
            let mut at = 0;
            for n in lengths {
                out.push(blob[at..at + n].to_vec());
                at += n;
            }
        }
        Ok(out)
    }

    /// Bytes the image takes: its layers' uncompressed sizes and its
    /// big-data items.
    pub fn size(&self) -> i64 {
        self.chain.iter().map(|l| l.size.max(0)).sum::<i64>() + self.image.big_data_sizes.values().map(|s| (*s).max(0)).sum::<i64>()
    }
}

/// `signature-<hex>`: containers/image drops the algorithm from the key.
fn signature_key(digest: &str) -> String {
    format!("signature-{}", digest.split_once(':').map_or(digest, |(_, hex)| hex))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn the_gzipped_empty_layer_is_an_empty_tar_with_the_well_known_digest() {
        assert_eq!(sha256(&GZIPPED_EMPTY_LAYER), GZIPPED_EMPTY_LAYER_DIGEST);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&GZIPPED_EMPTY_LAYER[..]).read_to_end(&mut tar).expect("gzip");
        assert_eq!(tar, vec![0u8; 1024]);
    }

    #[test]
    fn signature_keys_drop_the_algorithm() {
        assert_eq!(signature_key("sha256:abc"), "signature-abc");
    }
}
