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
    /// Blobs the registry mounted from another of its repositories, where
    /// this store had pushed them before.
    pub blobs_mounted: usize,
    pub bytes_uploaded: u64,
    pub layers: Vec<ExportedLayer>,
}

const BLOCK: usize = 256 << 10;

/// What the store remembers of a layer it pushed, in one compression: the
/// blob, and the repositories (`host/name`) that hold it, newest first, so
/// a push to another repository of the same registry can mount it.
#[derive(serde::Serialize, serde::Deserialize)]
struct PushedBlob {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default, rename = "strataRepositories", skip_serializing_if = "Vec::is_empty")]
    repositories: Vec<String>,
}

/// Repositories remembered per pushed blob.
const REMEMBERED_REPOSITORIES: usize = 8;

impl PushedBlob {
    fn seen_in(&mut self, repository: &str) {
        self.repositories.retain(|r| r != repository);
        self.repositories.insert(0, repository.to_owned());
        self.repositories.truncate(REMEMBERED_REPOSITORIES);
    }

    /// Repositories of `host` other than `here` that had the blob.
    fn mount_sources<'a>(&'a self, host: &'a str, here: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.repositories
            .iter()
            .filter(move |r| r.as_str() != here)
            .filter_map(move |r| r.strip_prefix(host)?.strip_prefix('/'))
    }
}

/// Where a blob the push need not send is.
enum Found {
    /// The repository has it.
    There,
    /// The registry mounted it from this repository.
    MountedFrom(String),
}

/// Finds the blob in `repository`, or has the registry mount it from a
/// repository it was pushed to before; `None` when it must be sent.
fn find_or_mount(registry: &Registry, repository: &str, digest: &str, sources: &[String]) -> Result<Option<Found>> {
    if registry.has_blob(repository, digest)? {
        return Ok(Some(Found::There));
    }
    for from in sources {
        // A source that no longer has the blob: try the next. A registry
        // that fails the request is asked nothing more: the blob is sent.
        match registry.mount_blob(repository, digest, from) {
            Ok(true) => return Ok(Some(Found::MountedFrom(from.clone()))),
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(%digest, from, error = %e, "cross-repository mount failed");
                return Ok(None);
            }
        }
    }
    Ok(None)
}

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
        blobs_mounted: 0,
        bytes_uploaded: 0,
        layers: Vec::new(),
    };
    let host = destination.api_host();
    let here = format!("{host}/{repository}");
    // Where layers were mounted from holds the config too, most likely.
    let mut config_sources: Vec<String> = Vec::new();
    let mut descriptors = Vec::new();
    let media_type = options.export.compression.media_type().to_owned();
    for (id, diff_id) in &parts.layers {
        // A blob this store pushed before, in this compression, is known by
        // digest: when the repository has it, or the registry can mount it
        // from where it went before, nothing is produced.
        let legacy = options.export.legacy_annotations && options.export.compression == crate::LayerCompression::ZstdChunked;
        let memo_key = format!("strata-pushed-{:?}{}", options.export.compression, if legacy { "-legacy" } else { "" });
        let memo = store
            .layer_big_data(id, &memo_key)
            .ok()
            .and_then(|b| serde_json::from_slice::<PushedBlob>(&b).ok());
        if let Some(mut known) = memo {
            let sources: Vec<String> = known.mount_sources(host, &here).map(str::to_owned).collect();
            if let Some(found) = find_or_mount(&registry, repository, &known.descriptor.digest, &sources)? {
                match found {
                    Found::There => report.blobs_present += 1,
                    Found::MountedFrom(from) => {
                        report.blobs_mounted += 1;
                        if !config_sources.contains(&from) {
                            config_sources.push(from);
                        }
                    }
                }
                if known.repositories.first() != Some(&here) {
                    known.seen_in(&here);
                    remember(store, id, &memo_key, &known);
                }
                report.layers.push(ExportedLayer {
                    layer_id: id.clone(),
                    diff_id: diff_id.clone(),
                    digest: known.descriptor.digest.clone(),
                    size: known.descriptor.size,
                    media_type: media_type.clone(),
                });
                tell_layer(&options.export, &report);
                descriptors.push(known.descriptor);
                continue;
            }
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
                let mut pushed = PushedBlob {
                    descriptor: descriptor.clone(),
                    repositories: Vec::new(),
                };
                pushed.seen_in(&here);
                remember(store, id, &memo_key, &pushed);
                descriptors.push(descriptor);
                report.layers.push(ExportedLayer {
                    layer_id: id.clone(),
                    diff_id: diff_id.clone(),
                    digest,
                    size,
                    media_type: media_type.clone(),
                });
                tell_layer(&options.export, &report);
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
    match find_or_mount(&registry, repository, &config_digest, &config_sources)? {
        Some(Found::There) => report.blobs_present += 1,
        Some(Found::MountedFrom(_)) => report.blobs_mounted += 1,
        None => {
            let bytes = parts.config_bytes.clone();
            registry.upload_blob(repository, &config_digest, config_size, &|| {
                Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>)
            })?;
            report.blobs_uploaded += 1;
            report.bytes_uploaded += config_size;
        }
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

fn tell_layer(options: &ExportOptions, report: &PushReport) {
    if let (Some(progress), Some(layer)) = (&options.progress, report.layers.last()) {
        progress(crate::TransferEvent::Layer(layer));
    }
}

/// Best effort: a read-only store just cannot remember.
fn remember(store: &Store, id: &str, key: &str, pushed: &PushedBlob) {
    if let Ok(memo) = serde_json::to_vec(pushed) {
        let _ = store.set_layer_big_data(id, key, &memo);
    }
}

fn is_broken_pipe(e: &Error) -> bool {
    match e {
        Error::Store(strata_layerstore::Error::Io { source, .. }) => source.kind() == io::ErrorKind::BrokenPipe,
        Error::Invalid { reason, .. } => reason.contains("the upload stopped"),
        _ => false,
    }
}
