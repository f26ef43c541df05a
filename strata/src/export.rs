//! Exporting a stored image to an OCI image layout: each layer's original
//! tar is rebuilt from its tar-split (bit for bit, its diffID checked on the
//! way), compressed as asked, and written as a blob; the config comes from
//! the image's big data unchanged, so its diffIDs stay right whatever the
//! compression.

use std::sync::Arc;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use strata_chunkfetch::oci::{self, Descriptor, Manifest};
use strata_chunkfetch::{LayoutWriter, WrittenBlob};
use strata_layerstore::{Compression, DiffOptions, Store};

use crate::{Error, Result};

/// How layers are compressed on the way out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum LayerCompression {
    /// The tar itself.
    None,
    #[default]
    Gzip,
    Zstd,
    /// zstd:chunked with its TOC annotations, for partial pulls.
    ZstdChunked,
}

impl LayerCompression {
    pub fn parse(s: &str) -> Option<LayerCompression> {
        Some(match s {
            "none" => LayerCompression::None,
            "gzip" => LayerCompression::Gzip,
            "zstd" => LayerCompression::Zstd,
            "zstd:chunked" => LayerCompression::ZstdChunked,
            _ => return None,
        })
    }

    pub(crate) fn media_type(self) -> &'static str {
        match self {
            LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::Zstd | LayerCompression::ZstdChunked => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

#[derive(Clone, Default)]
pub struct ExportOptions {
    pub compression: LayerCompression,
    /// Also write the `io.containers.` TOC annotation keys podman 4.3 reads
    /// (zstd:chunked only).
    pub legacy_annotations: bool,
    /// Told of each layer blob as it is written (see [`TransferEvent`]).
    pub progress: Option<TransferProgress>,
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("compression", &self.compression)
            .field("legacy_annotations", &self.legacy_annotations)
            .finish_non_exhaustive()
    }
}

/// An export's or a push's progress callback, called from the threads
/// that write, so it should be quick.
pub type TransferProgress = Arc<dyn Fn(TransferEvent<'_>) + Send + Sync>;

/// What an export or a push reports while it runs, layer by layer.
#[derive(Debug)]
pub enum TransferEvent<'a> {
    /// A layer's blob starts being written. `size` is known ahead only for
    /// an uncompressed blob.
    Writing { layer_id: &'a str, size: Option<u64> },
    /// `bytes` of that blob are written so far.
    Written { layer_id: &'a str, bytes: u64 },
    /// A layer's blob is where it goes: written, or found there already.
    Layer(&'a ExportedLayer),
}

/// Counts a blob's bytes for the progress callback.
struct Reporting<'a> {
    out: &'a mut dyn Write,
    progress: &'a TransferProgress,
    layer_id: &'a str,
    bytes: u64,
}

impl Write for Reporting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        (self.progress)(TransferEvent::Written {
            layer_id: self.layer_id,
            bytes: self.bytes,
        });
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportedLayer {
    pub layer_id: String,
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    pub image_id: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<ExportedLayer>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The image's config as stored with it (containers/image keeps it under
/// its digest, which is the image ID).
fn config_of(store: &Store, image_id: &str) -> Result<(Vec<u8>, String)> {
    let key = format!("sha256:{image_id}");
    let bytes = store.image_big_data(image_id, &key)?;
    let actual = crate::source::sha256(&bytes);
    if actual != key {
        return Err(Error::invalid(format!("config of image {image_id}"), format!("its digest is {actual}")));
    }
    Ok((bytes, key))
}

/// What an exported image is made of.
pub(crate) struct ImageParts {
    pub(crate) image_id: String,
    pub(crate) config_bytes: Vec<u8>,
    pub(crate) config_digest: String,
    /// Layer IDs and diffIDs, base first.
    pub(crate) layers: Vec<(String, String)>,
    /// The stored manifest's annotations, kept on the new manifest.
    pub(crate) annotations: BTreeMap<String, String>,
}

/// Reads the image's config and layer chain and checks they agree.
pub(crate) fn image_parts(store: &Store, key: &str) -> Result<ImageParts> {
    let image = store.image(key)?;
    let (config_bytes, config_digest) = config_of(store, &image.id)?;
    let config: Config = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::invalid(format!("config {config_digest}"), e.to_string()))?;
    let mut layer_ids = store.image_layers(&image.id)?;
    layer_ids.reverse();
    if layer_ids.len() != config.rootfs.diff_ids.len() {
        return Err(Error::invalid(
            format!("image {}", image.id),
            format!("{} layers in the store, {} diffIDs in its config", layer_ids.len(), config.rootfs.diff_ids.len()),
        ));
    }
    for (id, diff_id) in layer_ids.iter().zip(&config.rootfs.diff_ids) {
        let layer = store.layer(id)?;
        if layer.diff_digest != *diff_id {
            return Err(Error::invalid(
                format!("layer {id} of image {}", image.id),
                format!("its diffID is {}, the config says {diff_id}", layer.diff_digest),
            ));
        }
    }
    let annotations = store
        .image_big_data(&image.id, "manifest")
        .ok()
        .and_then(|m| serde_json::from_slice::<Manifest>(&m).ok())
        .map(|m| m.annotations)
        .unwrap_or_default();
    Ok(ImageParts {
        image_id: image.id,
        config_bytes,
        config_digest,
        layers: layer_ids.into_iter().zip(config.rootfs.diff_ids).collect(),
        annotations,
    })
}

/// An OCI manifest for `config` and `layers`.
pub(crate) fn manifest_for(config: &WrittenBlob, layers: Vec<Descriptor>, annotations: BTreeMap<String, String>) -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: oci::MEDIA_TYPE_OCI_MANIFEST.to_owned(),
        config: Descriptor {
            media_type: "application/vnd.oci.image.config.v1+json".to_owned(),
            digest: config.digest.clone(),
            size: config.size,
            ..Descriptor::default()
        },
        layers,
        annotations,
    }
}

/// Writes image `key` of `store` into the OCI layout at `dir`, tagged `tag`.
pub fn export_to_layout(store: &Store, key: &str, dir: &Path, tag: Option<&str>, options: &ExportOptions) -> Result<ExportReport> {
    let parts = image_parts(store, key)?;
    let writer = LayoutWriter::create(dir)?;
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    for (id, diff_id) in &parts.layers {
        let (blob, annotations) = export_layer(store, id, diff_id, &writer, options)?;
        let media_type = options.compression.media_type().to_owned();
        descriptors.push(Descriptor {
            media_type: media_type.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            annotations,
            ..Descriptor::default()
        });
        let layer = ExportedLayer {
            layer_id: id.clone(),
            diff_id: diff_id.clone(),
            digest: blob.digest,
            size: blob.size,
            media_type,
        };
        if let Some(progress) = &options.progress {
            progress(TransferEvent::Layer(&layer));
        }
        layers.push(layer);
    }
    let config_blob = writer.put_blob(&parts.config_bytes)?;
    let manifest = manifest_for(&config_blob, descriptors, parts.annotations);
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| Error::invalid("manifest", e.to_string()))?;
    let manifest_blob = writer.put_blob(&manifest_bytes)?;
    writer.tag(
        Descriptor {
            media_type: oci::MEDIA_TYPE_OCI_MANIFEST.to_owned(),
            digest: manifest_blob.digest.clone(),
            size: manifest_blob.size,
            ..Descriptor::default()
        },
        tag,
    )?;
    Ok(ExportReport {
        image_id: parts.image_id,
        manifest_digest: manifest_blob.digest,
        config_digest: parts.config_digest,
        layers,
    })
}

/// One layer as a blob in the layout.
fn export_layer(
    store: &Store,
    id: &str,
    diff_id: &str,
    writer: &LayoutWriter,
    options: &ExportOptions,
) -> Result<(WrittenBlob, BTreeMap<String, String>)> {
    let mut failure = None;
    let mut annotations = BTreeMap::new();
    let blob = writer.put_blob_with(|w| match write_layer(store, id, diff_id, options, w) {
        Ok(a) => {
            annotations = a;
            Ok(())
        }
        Err(e) => {
            let message = e.to_string();
            failure = Some(e);
            Err(std::io::Error::other(message))
        }
    });
    match (blob, failure) {
        (Ok(blob), _) => Ok((blob, annotations)),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

/// Writes layer `id` to `out` compressed as `options` say; returns the
/// annotations its descriptor needs. The store checks the rebuilt tar
/// against the diffID on the way.
pub(crate) fn write_layer(
    store: &Store,
    id: &str,
    diff_id: &str,
    options: &ExportOptions,
    out: &mut dyn Write,
) -> Result<BTreeMap<String, String>> {
    let Some(progress) = &options.progress else {
        return write_layer_to(store, id, diff_id, options, out);
    };
    let size = match options.compression {
        LayerCompression::None => store.layer(id).ok().and_then(|l| u64::try_from(l.diff_size).ok()),
        _ => None,
    };
    progress(TransferEvent::Writing { layer_id: id, size });
    let mut reporting = Reporting {
        out,
        progress,
        layer_id: id,
        bytes: 0,
    };
    write_layer_to(store, id, diff_id, options, &mut reporting)
}

fn write_layer_to(
    store: &Store,
    id: &str,
    diff_id: &str,
    options: &ExportOptions,
    out: &mut dyn Write,
) -> Result<BTreeMap<String, String>> {
    let direct = |compression: Option<Compression>, out: &mut dyn Write| -> Result<BTreeMap<String, String>> {
        store.diff(id, out, DiffOptions { compression, verify: true })?;
        Ok(BTreeMap::new())
    };
    match options.compression {
        LayerCompression::None => direct(None, out),
        LayerCompression::Gzip => direct(Some(Compression::Gzip), out),
        LayerCompression::Zstd => direct(Some(Compression::Zstd), out),
        LayerCompression::ZstdChunked => {
            let (pipe_r, pipe_w) = std::io::pipe().map_err(|e| Error::invalid("pipe", e.to_string()))?;
            let (diffed, written) = std::thread::scope(|s| {
                let differ = s.spawn(move || {
                    let mut pipe_w = pipe_w;
                    store.diff(id, &mut pipe_w, DiffOptions { compression: None, verify: true })
                });
                let written = strata_toc::write_zstd_chunked(
                    pipe_r,
                    out,
                    &strata_toc::WriteOptions {
                        level: 3,
                        legacy_annotations: options.legacy_annotations,
                        ..Default::default()
                    },
                );
                (differ.join(), written)
            });
            // The store's error explains a converter that saw the tar end early.
            diffed.map_err(|_| Error::invalid(format!("layer {id}"), "the diff thread panicked"))??;
            let written = written.map_err(|e| Error::invalid(format!("layer {id}"), format!("converting to zstd:chunked: {e}")))?;
            if written.diff_id != diff_id {
                return Err(Error::invalid(
                    format!("layer {id}"),
                    format!("converted tar has diffID {}, expected {diff_id}", written.diff_id),
                ));
            }
            Ok(written.annotations)
        }
    }
}
