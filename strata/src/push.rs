//! Pushing a stored image to a registry: each layer's original tar is
//! rebuilt from its tar-split, compressed as asked and streamed into the
//! upload as it is produced (no temporary copy); then the config and the
//! manifest. A layer that cannot be produced aborts its upload rather
//! than ending it early, so the registry never gets a truncated blob.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use strata_chunkfetch::oci::{self, Descriptor};
use strata_chunkfetch::reference::RegistryRef;
use strata_chunkfetch::{Registry, RegistryOptions, WrittenBlob};
use strata_layerstore::Store;

use crate::export::{image_parts, manifest_for, write_layer};
use crate::{Error, ExportOptions, ExportedLayer, Result};

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    pub registry: RegistryOptions,
    pub export: ExportOptions,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PushReport {
    pub manifest_digest: String,
    pub blobs_uploaded: usize,
    pub blobs_present: usize,
    pub bytes_uploaded: u64,
    pub layers: Vec<ExportedLayer>,
}

const BLOCK: usize = 256 << 10;

/// The producing end of an in-process pipe. Dropped without `finish`, it
/// makes the reader fail instead of seeing an end.
struct ChannelWriter {
    tx: SyncSender<std::result::Result<Vec<u8>, ()>>,
    buf: Vec<u8>,
    finished: bool,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BLOCK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
            self.tx.send(Ok(block)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))?;
        }
        Ok(())
    }
}

impl ChannelWriter {
    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.tx.send(Err(()));
        }
    }
}

struct ChannelReader {
    rx: Receiver<std::result::Result<Vec<u8>, ()>>,
    block: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.block.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.block = block;
                    self.pos = 0;
                }
                Ok(Err(())) => return Err(io::Error::other("the layer could not be produced")),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.block.len() - self.pos);
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Pushes image `key` of `store` to `destination`.
pub fn push(store: &Store, key: &str, destination: &RegistryRef, options: &PushOptions) -> Result<PushReport> {
    if let Some(digest) = &destination.digest {
        return Err(Error::invalid(
            format!("destination {destination}"),
            format!("push to a tag, not a digest ({digest}): the manifest's digest is known only once it is written"),
        ));
    }
    let parts = image_parts(store, key)?;
    let registry = Registry::new(destination.api_host(), options.registry.clone())?;
    let repository = &destination.repository;
    let mut report = PushReport {
        manifest_digest: String::new(),
        blobs_uploaded: 0,
        blobs_present: 0,
        bytes_uploaded: 0,
        layers: Vec::new(),
    };
    let mut descriptors = Vec::new();
    let media_type = options.export.compression.media_type().to_owned();
    for (id, diff_id) in &parts.layers {
        // A blob this store pushed before, in this compression, is known by
        // digest: when the repository has it, nothing is produced.
        let legacy = options.export.legacy_annotations && options.export.compression == crate::LayerCompression::ZstdChunked;
        let memo_key = format!("strata-pushed-{:?}{}", options.export.compression, if legacy { "-legacy" } else { "" });
        if let Some(known) = store
            .layer_big_data(id, &memo_key)
            .ok()
            .and_then(|b| serde_json::from_slice::<Descriptor>(&b).ok())
            && registry.has_blob(repository, &known.digest)?
        {
            report.blobs_present += 1;
            report.layers.push(ExportedLayer {
                layer_id: id.clone(),
                diff_id: diff_id.clone(),
                digest: known.digest.clone(),
                size: known.size,
                media_type: media_type.clone(),
            });
            descriptors.push(known);
            continue;
        }
        let (tx, rx) = sync_channel(8);
        let mut reader = ChannelReader {
            rx,
            block: Vec::new(),
            pos: 0,
        };
        let (produced, uploaded) = std::thread::scope(|s| {
            let producer = s.spawn(move || {
                let mut writer = ChannelWriter {
                    tx,
                    buf: Vec::with_capacity(BLOCK),
                    finished: false,
                };
                let annotations = write_layer(store, id, diff_id, &options.export, &mut writer)?;
                writer.finish().map_err(|e| Error::invalid(format!("layer {id}"), e.to_string()))?;
                Ok::<_, Error>(annotations)
            });
            let uploaded = registry.upload_blob_stream(repository, &mut reader);
            drop(reader);
            (producer.join(), uploaded)
        });
        let produced = produced.map_err(|_| Error::invalid(format!("layer {id}"), "the producing thread panicked"))?;
        // The producer's failure explains an aborted upload; an upload that
        // failed on its own explains a producer that could not send more.
        let annotations = match (produced, uploaded) {
            (Ok(a), Ok((digest, size))) => {
                report.blobs_uploaded += 1;
                report.bytes_uploaded += size;
                let descriptor = Descriptor {
                    media_type: media_type.clone(),
                    digest: digest.clone(),
                    size,
                    annotations: a.clone(),
                    ..Descriptor::default()
                };
                // Best effort: a read-only store just cannot remember.
                if let Ok(memo) = serde_json::to_vec(&descriptor) {
                    let _ = store.set_layer_big_data(id, &memo_key, &memo);
                }
                descriptors.push(descriptor);
                report.layers.push(ExportedLayer {
                    layer_id: id.clone(),
                    diff_id: diff_id.clone(),
                    digest,
                    size,
                    media_type: media_type.clone(),
                });
                a
            }
            (Err(e), _) if !is_broken_pipe(&e) => return Err(e),
            (_, Err(e)) => return Err(e.into()),
            (Err(e), Ok(_)) => return Err(e),
        };
        drop(annotations);
    }
    let config_digest = parts.config_digest.clone();
    let config_size = parts.config_bytes.len() as u64;
    if registry.has_blob(repository, &config_digest)? {
        report.blobs_present += 1;
    } else {
        let bytes = parts.config_bytes.clone();
        registry.upload_blob(repository, &config_digest, config_size, &|| {
            Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>)
        })?;
        report.blobs_uploaded += 1;
        report.bytes_uploaded += config_size;
    }
    let config = WrittenBlob {
        digest: config_digest,
        size: config_size,
    };
    let manifest = manifest_for(&config, descriptors, parts.annotations);
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::invalid("manifest", e.to_string()))?;
    let reference = destination.tag.as_deref().unwrap_or("latest");
    report.manifest_digest = registry.put_manifest(repository, reference, oci::MEDIA_TYPE_OCI_MANIFEST, &bytes)?;
    Ok(report)
}

fn is_broken_pipe(e: &Error) -> bool {
    match e {
        Error::Store(strata_layerstore::Error::Io { source, .. }) => source.kind() == io::ErrorKind::BrokenPipe,
        Error::Invalid { reason, .. } => reason.contains("the upload stopped"),
        _ => false,
    }
}
