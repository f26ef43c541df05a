//! Pulling an image into a store: layers the store has are skipped,
//! zstd:chunked layers are rebuilt from their TOC with only the missing
//! pieces fetched, other layers are fetched whole. Every layer's diffID is
//! checked against the image config before the layer is kept.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;

use serde::Deserialize;
use strata_chunkfetch::oci::{self, Descriptor, Index, Manifest};
use strata_chunkfetch::toc_layer::ReceiverGone;
use strata_chunkfetch::{
    ByteRange, HeadersBuilder, LayerPlan, LocalHeaders, Planner, RangeSink, RangeSource, Reference, RegistryOptions, SourceReadAt, TocGetter,
    fetch_pieces, piece_channel,
};
use strata_dedup_cache::{DiskCache, LayerIndex};
use strata_layerstore::{
    Compression, ImageOptions, KnownContent, KnownFile, LayerOptions, SourceBlob, SplitObserverHandle, Store, chain_id,
};

use crate::source::{Blob, ImageSource};
use crate::{Error, Result};

/// The layer big-data item that holds a layer's dedup index.
pub const DEDUP_INDEX: &str = "strata-dedup-index";

/// The layer big-data item that holds a layer's tar headers, in the form
/// [`LocalHeaders::to_stored`] writes.
pub const TAR_HEADERS: &str = "strata-tar-headers";

/// How a pull goes.
#[derive(Clone)]
pub struct PullOptions {
    pub registry: RegistryOptions,
    pub planner: Planner,
    /// Rebuild layers that have a TOC from local content and fetched
    /// pieces (default); otherwise every missing layer is fetched whole.
    pub partial: bool,
    /// A layer whose missing pieces make up at least this share of its
    /// payload is fetched whole instead: one streamed request, no
    /// rebuilding, and nearly the same bytes. Default 0.75.
    pub full_fetch_share: f64,
    /// In a partial pull, a file found whole in a local layer becomes a
    /// hard link to it when its owner, mode, times and xattrs are the
    /// entry's (containers-storage's `use_hard_links`): no copy, no space,
    /// but the two layers then share the inode. Off by default; without
    /// it, such files are cloned (reflinks) where the filesystem can, and
    /// copied where it cannot.
    pub hard_links: bool,
    /// A layer that comes whole without a TOC (gzip, say) is indexed with
    /// its files' chunks too, cut as zstd:chunked writers cut them, so a
    /// later partial pull reuses the unchanged parts of files that changed
    /// (the end containers-storage's `convert_images` serves). Costs a
    /// second hash of the layer's bytes. Off by default.
    pub index_chunks: bool,
    /// Hash every partially pulled layer's rebuilt tar and check it against
    /// the diffID the image config declares (default). Off, a layer whose
    /// tar comes from its blob's tar-split and files each checked against
    /// the TOC is recorded with the declared diffID unchecked, as
    /// containers-storage records partial pulls: one SHA-256 pass over the
    /// layer saved, at the price of trusting that the config and the TOC
    /// describe the same tar. Such a layer is flagged
    /// [`DIFF_ID_UNCHECKED`](strata_layerstore::DIFF_ID_UNCHECKED); an
    /// export still hashes it. Off, an update fetches the blob's tar-split
    /// rather than guess the tar's headers from the earlier version, as
    /// only the diffID could check guessed headers. A layer whose headers
    /// come from the blob's frames (no tar-split, eStargz) is checked
    /// either way: nothing else checks those headers.
    pub verify_diff_ids: bool,
    /// fs-verity on every regular file a pulled layer writes (reused
    /// files included), enabled before the layer counts as complete:
    /// `IfSupported` where the filesystem can, `Required` fails the layer
    /// where it cannot (nothing is kept). The digests are kept with the
    /// layer ([`FS_VERITY_DIGESTS`](strata_layerstore::FS_VERITY_DIGESTS)).
    /// Off by default, as in containers-storage.
    pub fs_verity: strata_layerstore::FsVerity,
    /// Platform to choose from an index.
    pub os: String,
    pub architecture: String,
    /// Names for the image; by default the reference.
    pub names: Vec<String>,
    /// Told what happens, as it happens (see [`PullEvent`]).
    pub progress: Option<Progress>,
}

/// A pull's progress callback. It is called from the pulling threads, so
/// it should be quick.
pub type Progress = Arc<dyn Fn(PullEvent<'_>) + Send + Sync>;

/// What a pull reports while it runs, layer by layer in manifest order.
#[derive(Debug)]
pub enum PullEvent<'a> {
    /// A missing layer starts coming: `expected` bytes, the whole blob or
    /// (when `partial`) the ranges the plan fetches.
    Fetching { digest: &'a str, expected: u64, partial: bool },
    /// `bytes` of that layer have arrived so far.
    Fetched { digest: &'a str, bytes: u64 },
    /// In a partial pull, `done` of the layer's `files` files with content
    /// are written and checked against their digests.
    FilesDone { digest: &'a str, done: u64, files: u64 },
    /// A layer is in the store (fetched, or there already).
    Layer(&'a LayerReport),
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("registry", &self.registry)
            .field("planner", &self.planner)
            .field("partial", &self.partial)
            .field("full_fetch_share", &self.full_fetch_share)
            .field("hard_links", &self.hard_links)
            .field("index_chunks", &self.index_chunks)
            .field("verify_diff_ids", &self.verify_diff_ids)
            .field("fs_verity", &self.fs_verity)
            .field("os", &self.os)
            .field("architecture", &self.architecture)
            .field("names", &self.names)
            .finish()
    }
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            registry: RegistryOptions::default(),
            planner: Planner::default(),
            partial: true,
            full_fetch_share: 0.75,
            hard_links: false,
            index_chunks: false,
            verify_diff_ids: true,
            fs_verity: strata_layerstore::FsVerity::Disabled,
            os: "linux".into(),
            architecture: oci::host_architecture().into(),
            names: Vec::new(),
            progress: None,
        }
    }
}

/// How a layer got into the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// The store had it already.
    Present,
    /// Rebuilt from its TOC: local content plus fetched pieces.
    Partial,
    /// Fetched whole.
    Full,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    pub digest: String,
    pub diff_id: String,
    pub layer_id: String,
    pub how: How,
    /// The blob's size.
    pub blob_size: u64,
    /// Bytes read from the source for this layer (TOC and tar-split
    /// included).
    pub bytes_fetched: u64,
    /// Uncompressed bytes taken from local layers instead.
    pub bytes_reused: u64,
    /// Files found whole in local layers, of the files with content.
    pub files_reused: u64,
    pub files: u64,
    /// Why a layer that could have been pulled partially was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The layer was recorded with the config's diffID, its tar not
    /// hashed (see [`PullOptions::verify_diff_ids`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub diff_id_unchecked: bool,
    /// fs-verity was enabled on the layer's files (see
    /// [`PullOptions::fs_verity`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fs_verity: bool,
}

impl LayerReport {
    fn new(desc: &Descriptor, diff_id: &str, layer_id: &str, how: How) -> LayerReport {
        LayerReport {
            digest: desc.digest.clone(),
            diff_id: diff_id.to_owned(),
            layer_id: layer_id.to_owned(),
            how,
            blob_size: desc.size,
            bytes_fetched: 0,
            bytes_reused: 0,
            files_reused: 0,
            files: 0,
            note: None,
            diff_id_unchecked: false,
            fs_verity: false,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PullReport {
    pub image_id: String,
    pub manifest_digest: String,
    pub names: Vec<String>,
    pub layers: Vec<LayerReport>,
}

impl PullReport {
    pub fn bytes_fetched(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes_fetched).sum()
    }
    pub fn bytes_reused(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes_reused).sum()
    }
    /// Compressed size of the layers that were not present.
    pub fn bytes_needed(&self) -> u64 {
        self.layers.iter().filter(|l| l.how != How::Present).map(|l| l.blob_size).sum()
    }
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    created: Option<String>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

fn default_names(reference: &Reference) -> Vec<String> {
    match reference {
        Reference::Registry(r) => match (&r.tag, &r.digest) {
            (Some(tag), _) => vec![format!("{}/{}:{tag}", r.host, r.repository)],
            (None, Some(d)) => vec![format!("{}/{}@{d}", r.host, r.repository)],
            (None, None) => vec![format!("{}/{}:latest", r.host, r.repository)],
        },
        Reference::Layout { dir, tag } => {
            let base: String = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
                .collect();
            let base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned();
            let base = if base.is_empty() { "image".to_owned() } else { base };
            vec![format!("localhost/{base}:{}", tag.as_deref().unwrap_or("latest"))]
        }
    }
}

/// Loads the dedup indexes of every layer in `store`.
fn load_cache(store: &Store) -> Result<DiskCache> {
    let mut cache = DiskCache::default();
    for layer in store.layers()? {
        let has = |key: &str| layer.big_data_names.iter().any(|n| n == key);
        if !has(DEDUP_INDEX) && !has(PODMAN_TOC) {
            continue;
        }
        let Ok(root) = store.layer_files(&layer.id) else {
            continue;
        };
        if has(DEDUP_INDEX) {
            match store.layer_big_data(&layer.id, DEDUP_INDEX).map(LayerIndex::from_vec) {
                Ok(Ok(index)) => cache.add_layer(Arc::new(root), index),
                Ok(Err(e)) => tracing::warn!(layer = %layer.id, "ignoring its dedup index: {e}"),
                Err(e) => tracing::warn!(layer = %layer.id, "cannot read its dedup index: {e}"),
            }
        } else if has(PODMAN_TOC) {
            // Pulled partially by containers-storage, which keeps the
            // layer's TOC: its files are found through it, and the index
            // made from it is kept for next time (where the store may be
            // written; an additional store is only read).
            match index_from_stored_toc(store, &layer.id) {
                Ok(index) => {
                    let _ = store.set_layer_big_data(&layer.id, DEDUP_INDEX, index.as_bytes());
                    cache.add_layer(Arc::new(root), index);
                }
                Err(e) => tracing::warn!(layer = %layer.id, "ignoring the TOC containers-storage kept: {e}"),
            }
        }
    }
    Ok(cache)
}

/// The layer big data in which containers-storage keeps the TOC of a layer
/// it pulled partially (the TOC's JSON).
const PODMAN_TOC: &str = "zstd-chunked-manifest";

fn index_from_stored_toc(store: &Store, id: &str) -> Result<LayerIndex> {
    let json = store.layer_big_data(id, PODMAN_TOC)?;
    let mut index = LayerIndex::default();
    strata_toc::stream_items(&json[..], |item| {
        index.push_toc_item(&item);
        Ok(())
    })
    .map_err(|e| Error::invalid("TOC", e.to_string()))?;
    Ok(index)
}

/// `host/repository` of an image name, without its tag or digest.
fn repository_of(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// A repository without its registry (`HOST[:PORT]/` when the first
/// component names one), so that a mirror's copy matches.
fn path_of(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((host, path)) if host.contains(['.', ':']) || host == "localhost" => path,
        _ => repository,
    }
}

/// The layers (bottom first) of the images the store has of the same
/// repositories as `names` (first those from the same registry, then from
/// others): the versions an update most likely follows.
fn previous_versions(store: &Store, names: &[String]) -> Vec<Vec<String>> {
    let wanted: Vec<&str> = names.iter().map(|n| repository_of(n)).collect();
    let Ok(images) = store.images() else { return Vec::new() };
    let wanted = &wanted;
    let same = |exact: bool| {
        images.iter().filter(move |image| {
            image.names.iter().any(|n| {
                let repository = repository_of(n);
                wanted.iter().any(|w| if exact { *w == repository } else { path_of(w) == path_of(repository) })
            })
        })
    };
    let mut seen = std::collections::HashSet::new();
    same(true)
        .chain(same(false))
        .filter(|image| seen.insert(image.id.clone()))
        .filter_map(|image| store.image_layers(&image.id).ok())
        .map(|mut chain| {
            chain.reverse();
            chain
        })
        .collect()
}

/// The tar headers of a local layer, to stand in for a blob's.
fn local_headers(store: &Store, id: &str) -> Option<Arc<LocalHeaders>> {
    let stored = store.layer_big_data(id, TAR_HEADERS).ok();
    stored_headers(stored, id).or_else(|| headers_of(store.layer_tar_split(id).ok()??, id))
}

/// [`local_headers`] from the form a pull kept them in (`stored`).
fn stored_headers(stored: Option<Vec<u8>>, id: &str) -> Option<Arc<LocalHeaders>> {
    match LocalHeaders::from_stored(&stored?) {
        Ok(headers) if !headers.is_empty() => Some(Arc::new(headers)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(layer = %id, "{e}: reading its tar-split instead");
            None
        }
    }
}

/// Records a new layer's tar headers as the store writes its tar-split.
/// Kept beside the layer, they spare the next version's pull reading the
/// tar-split back (tens of milliseconds for a root filesystem, where the
/// kept form reads in one or two).
#[derive(Clone, Default)]
struct HeadersKeeper(Arc<std::sync::Mutex<Recording>>);

#[derive(Default)]
struct Recording(HeadersBuilder);

impl strata_layerstore::SplitObserver for Recording {
    fn segment(&mut self, bytes: &[u8]) {
        self.0.segment(bytes);
    }

    fn file(&mut self, name: &[u8], size: i64) {
        self.0.file(name, size);
    }

    fn big_data(&mut self) -> Vec<(String, Vec<u8>)> {
        let headers = std::mem::take(&mut self.0).finish();
        if headers.is_empty() {
            return Vec::new();
        }
        vec![(TAR_HEADERS.to_owned(), headers.to_stored())]
    }
}

impl HeadersKeeper {
    /// The observer for the store, which keeps what it recorded as the
    /// layer's big data.
    fn observer(&self) -> SplitObserverHandle {
        SplitObserverHandle(self.0.clone())
    }
}

/// [`local_headers`] from layer `id`'s tar-split `records`.
fn headers_of(records: impl std::io::Read, id: &str) -> Option<Arc<LocalHeaders>> {
    match LocalHeaders::from_tar_split(records) {
        Ok(headers) if !headers.is_empty() => Some(Arc::new(headers)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(layer = %id, "its tar-split does not read: {e}");
            None
        }
    }
}

/// An earlier version's headers, read on a thread of their own from as
/// soon as the manifest names the layer likely to be pulled: the planner
/// waits for them, and reading them takes longer than fetching the config
/// and loading the dedup cache.
struct HeadersAhead {
    layer: String,
    reading: std::thread::JoinHandle<Option<Arc<LocalHeaders>>>,
}

/// Starts reading the headers of the layer an update of the first of
/// `layers` the store lacks (by blob or TOC digest) would follow: that
/// layer's position in the most likely earlier version, `previous`.
fn read_headers_ahead(store: &Store, layers: &[Descriptor], previous: &[Vec<String>]) -> Option<HeadersAhead> {
    let have = |d: &Descriptor| {
        store.layers_by_compressed_digest(&d.digest).is_ok_and(|l| !l.is_empty())
            || strata_toc::annotations::location(&d.annotations)
                .ok()
                .flatten()
                .map(|l| l.toc_digest)
                .or_else(|| d.annotations.get(strata_toc::annotations::ESTARGZ_TOC_DIGEST).cloned())
                .is_some_and(|toc| store.layers_by_toc_digest(&toc).is_ok_and(|l| !l.is_empty()))
    };
    let position = layers.iter().position(|d| !have(d))?;
    let layer = previous.iter().find_map(|chain| chain.get(position))?.clone();
    // Both are opened here, as the thread cannot reach the store: the
    // tar-split serves when the kept headers are missing or damaged.
    let stored = store.layer_big_data(&layer, TAR_HEADERS).ok();
    let records = store.layer_tar_split(&layer).ok().flatten();
    if stored.is_none() && records.is_none() {
        return None;
    }
    let id = layer.clone();
    let reading = std::thread::Builder::new()
        .spawn(move || stored_headers(stored, &id).or_else(|| headers_of(records?, &id)))
        .ok()?;
    Some(HeadersAhead { layer, reading })
}

/// Where the planner gets an earlier version's headers.
enum HeadersReading<'scope> {
    Ahead(std::thread::JoinHandle<Option<Arc<LocalHeaders>>>),
    Here(std::thread::ScopedJoinHandle<'scope, Option<Arc<LocalHeaders>>>),
}

impl HeadersReading<'_> {
    fn join(self) -> Option<Arc<LocalHeaders>> {
        let joined = match self {
            HeadersReading::Ahead(h) => h.join(),
            HeadersReading::Here(h) => h.join(),
        };
        joined.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// TOC items go to the planner in batches (a channel operation per item
/// would cost as much as planning it), and this many batches, each of a
/// few hundred bytes per item, may wait while it reads an earlier
/// version's headers.
const PLAN_BATCH: usize = 128;
const PLANNED_AHEAD: usize = 64;

/// Planned batches waiting to be indexed: indexing keeps up.
const INDEX_AHEAD: usize = 8;

/// Bytes of fetched pieces that may wait for the assembly. Each of these
/// bounds costs memory in the update of a 200 000-file layer (a TOC item
/// waiting takes about 1 KiB): 128 batches planned ahead cost 36 MB more
/// than 32, and a 16 MiB lead 21 MB more than none.
const PIECES_AHEAD: usize = 8 << 20;

/// A visitor of TOC items, as the TOC readers of strata-toc take one.
type VisitItem<'v> = &'v mut dyn FnMut(strata_toc::TocItem) -> strata_toc::Result<()>;

/// Three things at once, as each took a third of the time before the
/// first byte was fetched: `read` fetches and parses the TOC on this
/// thread, handing each item to the visitor it is given; another thread
/// reads the earlier version's headers (of `predecessor`); a third plans
/// with them, from batches of items, once they are in; a fourth puts each
/// planned item into `index`, and nothing else of it is kept. Returns what `read`
/// returned and the planner with every item added.
fn read_while_planning<'c, T>(
    store: &Store,
    predecessor: Option<&str>,
    ahead: &mut Option<HeadersAhead>,
    planner: strata_chunkfetch::LayerPlanner<'c>,
    index: &mut LayerIndex,
    read: impl FnOnce(VisitItem<'_>) -> strata_toc::Result<T>,
) -> (strata_toc::Result<T>, strata_chunkfetch::Result<strata_chunkfetch::LayerPlanner<'c>>) {
    std::thread::scope(|scope| {
        let ahead = ahead.take().filter(|a| Some(a.layer.as_str()) == predecessor);
        let local = predecessor.map(|p| match ahead {
            Some(a) => HeadersReading::Ahead(a.reading),
            None => HeadersReading::Here(scope.spawn(move || local_headers(store, p))),
        });
        let (items, planned_items) = sync_channel::<Vec<strata_toc::TocItem>>(PLANNED_AHEAD);
        // Planned batches go on to be indexed, on a thread of its own: the
        // reading thread sets the pace until the TOC is in.
        let (planned, to_index) = sync_channel::<Vec<strata_toc::TocItem>>(INDEX_AHEAD);
        let indexing = scope.spawn(move || {
            for batch in to_index {
                for item in &batch {
                    index.push_toc_item(item);
                }
            }
        });
        let planning = scope.spawn(move || {
            let mut planner = planner;
            if let Some(local) = local.and_then(HeadersReading::join) {
                planner = planner.predicting(local);
            }
            // A plan that failed still passes the items on: the index
            // serves a layer fetched whole too.
            let mut failed = None;
            for batch in planned_items {
                if failed.is_none()
                    && let Err(e) = batch.iter().try_for_each(|item| planner.add(item))
                {
                    failed = Some(e);
                }
                let _ = planned.send(batch);
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(planner),
            }
        });
        let mut batch = Vec::with_capacity(PLAN_BATCH);
        let read = read(&mut |item: strata_toc::TocItem| {
            batch.push(item);
            if batch.len() == PLAN_BATCH {
                // A planner that stopped has its error to tell.
                let _ = items.send(std::mem::replace(&mut batch, Vec::with_capacity(PLAN_BATCH)));
            }
            Ok(())
        });
        // The end of the items: the planner finishes.
        let _ = items.send(batch);
        drop(items);
        let planned = planning.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        indexing.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (read, planned)
    })
}

/// Pulls `reference` into `store`.
pub fn pull(reference: &Reference, store: &Store, options: &PullOptions) -> Result<PullReport> {
    // The dedup cache loads while the manifest and config come.
    std::thread::scope(|scope| {
        let cache = scope.spawn(|| load_cache(store));
        pull_with(reference, store, options, || cache.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

/// [`pull`], with the dedup cache `cache` gives.
fn pull_with(
    reference: &Reference,
    store: &Store,
    options: &PullOptions,
    cache: impl FnOnce() -> Result<DiskCache>,
) -> Result<PullReport> {
    let source = ImageSource::open(reference, &options.registry)?;
    let (mut bytes, mut media_type, mut manifest_digest) = source.top_manifest()?;
    // The manifest list, kept with the image as containers/image keeps it.
    let mut list: Option<(Vec<u8>, String)> = None;
    if oci::is_index(&media_type) {
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("index {manifest_digest}"), e.to_string()))?;
        let desc = oci::choose_platform(&index, &options.os, &options.architecture).ok_or_else(|| {
            Error::invalid(
                format!("index {manifest_digest}"),
                format!("no image for {}/{}", options.os, options.architecture),
            )
        })?;
        let (platform_bytes, platform_type, platform_digest) = source.manifest(desc)?;
        list = Some((std::mem::replace(&mut bytes, platform_bytes), std::mem::replace(&mut manifest_digest, platform_digest)));
        media_type = platform_type;
    }
    if oci::is_index(&media_type) {
        return Err(Error::invalid(format!("manifest {manifest_digest}"), "an index inside an index"));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("manifest {manifest_digest}"), e.to_string()))?;
    let names = if options.names.is_empty() { default_names(reference) } else { options.names.clone() };
    let previous = previous_versions(store, &names);
    let mut ahead = if options.partial { read_headers_ahead(store, &manifest.layers, &previous) } else { None };
    let config_bytes = source.small_blob(&manifest.config)?;
    let config: Config = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::invalid(format!("config {}", manifest.config.digest), e.to_string()))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(
            format!("image {manifest_digest}"),
            format!(
                "the manifest lists {} layers, the config {} diffIDs",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        ));
    }

    let mut cache = cache()?;
    let mut parent: Option<String> = None;
    let mut layers = Vec::new();
    for (position, (desc, diff_id)) in manifest.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
        if !oci::valid_digest(diff_id) {
            return Err(Error::invalid(format!("config {}", manifest.config.digest), format!("diffID {diff_id:?}")));
        }
        let id = chain_id(parent.as_deref(), diff_id);
        let report = match store.layer(&id) {
            Ok(_) => LayerReport::new(desc, diff_id, &id, How::Present),
            Err(strata_layerstore::Error::NotFound(_)) => {
                let layer = Target {
                    store,
                    id: &id,
                    parent: parent.as_deref(),
                    diff_id,
                    last: position + 1 == manifest.layers.len(),
                };
                let predecessor = previous.iter().find_map(|chain| chain.get(position)).map(String::as_str);
                match pull_layer(&source, &layer, desc, predecessor, &mut ahead, &mut cache, options) {
                    Ok(report) => report,
                    // Another process pulling the same image committed it
                    // first: one copy is kept, and it is as good as ours.
                    Err(Error::Store(strata_layerstore::Error::Exists(_))) if store.layer(&id).is_ok() => {
                        LayerReport::new(desc, diff_id, &id, How::Present)
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(progress) = &options.progress {
            progress(PullEvent::Layer(&report));
        }
        layers.push(report);
        parent = Some(id);
    }

    let image_id = manifest.config.digest.trim_start_matches("sha256:").to_owned();
    // As containers/image's storage destination names them.
    let mut big_data = vec![
        (manifest.config.digest.clone(), config_bytes),
        (format!("manifest-{manifest_digest}"), bytes.clone()),
        ("manifest".to_owned(), bytes),
    ];
    if let Some((list_bytes, list_digest)) = list {
        big_data.push((format!("manifest-{list_digest}"), list_bytes));
    }
    // A new record takes its big data with it: one update of images.json
    // (each is synced), not one per item.
    let image = ImageOptions {
        id: Some(image_id.clone()),
        names,
        top_layer: parent,
        metadata: None,
        digest: Some(manifest_digest.clone()),
        created: config.created.clone(),
        big_data,
    };
    let created = match store.image(&image_id) {
        Ok(_) => false,
        Err(strata_layerstore::Error::NotFound(_)) => match store.create_image(&image) {
            Ok(_) => true,
            // Created meanwhile by another process pulling it too.
            Err(strata_layerstore::Error::Exists(_)) => false,
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    if !created {
        store.add_image_names(&image_id, &image.names)?;
        for (name, data) in &image.big_data {
            store.set_image_big_data(&image_id, name, data)?;
        }
    }
    Ok(PullReport {
        image_id,
        manifest_digest,
        names: image.names,
        layers,
    })
}

fn pull_layer(
    source: &ImageSource,
    layer: &Target<'_>,
    desc: &Descriptor,
    predecessor: Option<&str>,
    ahead: &mut Option<HeadersAhead>,
    cache: &mut DiskCache,
    options: &PullOptions,
) -> Result<LayerReport> {
    let Target { store, id, parent, diff_id, .. } = *layer;
    let blob = source.blob(desc)?;
    let mut report = LayerReport::new(desc, diff_id, id, How::Full);
    if options.partial && !cache.is_empty() && is_estargz(desc) {
        match pull_estargz(layer, desc, predecessor, ahead, cache, options, &blob)? {
            Estargz::Pulled(report) => return Ok(report),
            Estargz::Whole(note) => report.note = Some(note),
        }
    }
    let toc_location = strata_toc::annotations::location(&desc.annotations).ok().flatten();
    // What the TOC gives a layer fetched whole: its digest for the record
    // and the dedup index, with no second pass over the files.
    let mut from_toc: Option<(String, LayerIndex)> = None;
    // Nothing local to reuse: the layer comes whole, and its TOC with it
    // (kept as the blob's tail passes) gives the dedup index afterwards,
    // so neither a second fetch of the TOC nor a wait for it comes first.
    let capture = toc_location
        .as_ref()
        .filter(|l| options.partial && options.full_fetch_share <= 1.0 && cache.is_empty() && l.tar_split.is_some())
        .filter(|l| desc.size.saturating_sub(l.toc_offset) <= MAX_CAPTURED_TAIL && l.toc_offset < desc.size)
        .cloned();
    let toc_location = if capture.is_some() { None } else { toc_location };
    if let Some(location) = toc_location.filter(|_| options.partial) {
        // Headers an earlier version of the layer has stand in for the
        // blob's: neither its tar-split nor its header frames are fetched
        // for the entries that did not change.
        let predecessor = predecessor.filter(|p| *p != id);
        let predicting = predecessor.is_some();
        // The TOC streams by once: each item goes into the dedup index and
        // the plan, and nothing else of it is kept.
        let mut index = LayerIndex::default();
        // Without tar-split (containers-storage ≤ 1.53 and skopeo ≤ 1.13
        // write none) the tar's headers come from the blob's frames between
        // payloads, so the original tar and its diffID can still be rebuilt.
        let headers_from_blob = location.tar_split.is_none();
        let mut planner = strata_chunkfetch::LayerPlanner::new(location.toc_offset, cache);
        if headers_from_blob || predicting {
            planner = planner.fetching_headers();
        }
        let (read, planned) = read_while_planning(store, predecessor, ahead, planner, &mut index, |visit| {
            if predicting {
                strata_toc::read_zstd_chunked_toc_with(&SourceReadAt(&blob), Some(&desc.annotations), visit)
            } else {
                strata_toc::read_zstd_chunked_with(&SourceReadAt(&blob), Some(&desc.annotations), visit)
            }
        });
        let plan = planned.and_then(|p| p.finish());
        let read = read.map_err(|e| Error::Toc {
            digest: desc.digest.clone(),
            source: e,
        })?;
        let toc_bytes = read.location.toc_compressed_len;
        let plan = match plan {
            Ok(plan) => Some(plan),
            // A TOC that cannot locate the headers: the tar-split can.
            Err(_) if predicting && !headers_from_blob => {
                let spent = blob.received().unwrap_or(toc_bytes);
                return retry_unpredicted(source, layer, desc, cache, options, spent);
            }
            // A TOC that cannot locate the headers is no reason to fail:
            // the layer comes whole.
            Err(e) if headers_from_blob => {
                report.note = Some(format!("its TOC comes without tar-split and {e}: fetched whole to check its diffID"));
                None
            }
            Err(e) => return Err(e.into()),
        };
        let names_tar_split = !read.header.tar_split_digest.is_empty();
        let rebuild = match (read.tar_split.clone(), plan) {
            (Some(tar_split), Some(plan)) => Some((Rebuild::TarSplit(tar_split), plan)),
            (None, Some(mut plan)) if predicting && names_tar_split => {
                // Fetching the headers that could not be guessed must cost
                // less than the tar-split that holds them all, and guessed
                // headers need the diffID check to be trusted.
                let split_len = read.location.tar_split.map_or(0, |t| t.1);
                if options.verify_diff_ids && plan.stats.header_bytes_to_fetch < split_len {
                    Some((Rebuild::Headers, plan))
                } else {
                    let tar_split = strata_toc::read_tar_split(&SourceReadAt(&blob), &read).map_err(|e| Error::Toc {
                        digest: desc.digest.clone(),
                        source: e,
                    })?;
                    plan.without_headers();
                    Some((Rebuild::TarSplit(tar_split), plan))
                }
            }
            (None, Some(plan)) if headers_from_blob => Some((Rebuild::Headers, plan)),
            (None, Some(_)) => {
                report.note = Some("its TOC names no tar-split: fetched whole to check its diffID".into());
                None
            }
            (_, None) => None,
        };
        let toc_digest = read.toc_digest;
        if let Some((rebuild, plan)) = rebuild {
            let payload_area = location.toc_offset.max(1);
            let share = plan.stats.bytes_to_fetch as f64 / payload_area as f64;
            if share < options.full_fetch_share {
                let toc_bytes = toc_bytes + if let Rebuild::TarSplit(t) = &rebuild { t.compressed_len() } else { 0 };
                let guessed = plan.stats.headers_local;
                let planned = toc_bytes + plan.stats.bytes_to_fetch;
                let headers = matches!(rebuild, Rebuild::Headers);
                if headers && headers_from_blob {
                    report.note = Some("no tar-split in the blob: the tar's headers were fetched from it".into());
                }
                let (stored, index) = stored_index(layer, index);
                // Only a tar whose every byte was checked another way: the
                // TOC's digest is the manifest's, the tar-split's is in
                // the TOC, each file's in its entry.
                let trust = !options.verify_diff_ids && read.verified && matches!(rebuild, Rebuild::TarSplit(_));
                let pulled = pull_partial(layer, &blob, desc, plan, rebuild, toc_digest, stored, trust, options, &mut report);
                match pulled {
                    // A guessed header was not the blob's: the diffID says so.
                    Err(Error::Store(strata_layerstore::Error::DigestMismatch { .. })) if guessed > 0 => {
                        tracing::info!(layer = %id, "headers taken from {predecessor:?} were not the blob's: rebuilding from the blob's own");
                        let spent = blob.received().unwrap_or(planned);
                        return retry_unpredicted(source, layer, desc, cache, options, spent);
                    }
                    other => other?,
                }
                if guessed > 0 {
                    report.note = Some(format!(
                        "the tar's headers came from layer {} where its entries are unchanged ({guessed} runs), from the blob elsewhere",
                        predecessor.unwrap_or_default()
                    ));
                }
                // A registry blob counts what it received, TOC included.
                report.bytes_fetched = blob.received().unwrap_or(report.bytes_fetched + toc_bytes);
                report.how = How::Partial;
                remember_index(layer, index, cache);
                return Ok(report);
            }
            report.note = Some(format!(
                "local layers hold too little of it ({:.0}% would be fetched): fetched whole, which is faster",
                share * 100.0
            ));
        }
        from_toc = Some((toc_digest, index));
    }
    let counter = Arc::new(AtomicU64::new(0));
    if let Some(progress) = &options.progress {
        progress(PullEvent::Fetching {
            digest: &desc.digest,
            expected: desc.size,
            partial: false,
        });
    }
    // Sized once: growing by doubling would hold twice the tail at worst.
    let tail_len = capture.as_ref().map_or(0, |l| desc.size - l.toc_offset);
    // The whole tail goes to a thread that reads the TOC into the dedup
    // index while the store is still finishing the layer (writers, sync,
    // records): done after it, that read was the last 10 % of a cold pull.
    let (tail_tx, tail_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let reader = Counting {
        inner: blob.open()?,
        count: counter.clone(),
        progress: options.progress.clone().map(|p| (p, desc.digest.clone())),
    };
    let reader = TailKeeper {
        inner: reader,
        pos: 0,
        location: capture.clone(),
        tail: Vec::with_capacity(tail_len as usize),
        tail_len,
        done: Some(tail_tx),
    };
    let toc_digest = match &capture {
        // Checked as the stream passes it: a mismatch fails the layer.
        Some(location) => Some(location.toc_digest.clone()),
        None => from_toc.as_ref().map(|(digest, _)| digest.clone()),
    };
    let headers = HeadersKeeper::default();
    let (stored, indexed) = std::thread::scope(|s| {
        let indexing = capture.as_ref().map(|location| {
            s.spawn(move || {
                // No tail when the store stopped reading early: it failed.
                let bytes = tail_rx.recv().ok()?;
                let blob_tail = BlobTail {
                    base: location.toc_offset,
                    bytes,
                    size: desc.size,
                };
                let mut index = LayerIndex::default();
                let read = strata_toc::read_zstd_chunked_with(&blob_tail, Some(&desc.annotations), |item| {
                    index.push_toc_item(&item);
                    Ok(())
                });
                Some(read.map(|_| index))
            })
        });
        let stored = store.put_layer(
            &LayerOptions {
                id: Some(id.to_owned()),
                parent: parent.map(str::to_owned),
                expected_diff_id: Some(diff_id.to_owned()),
                expected_compressed_digest: Some(desc.digest.clone()),
                source_blob: toc_digest.map(|toc| SourceBlob {
                    digest: desc.digest.clone(),
                    size: desc.size as i64,
                    compression: Compression::Zstd,
                    toc_digest: Some(toc),
                }),
                split_observer: Some(headers.observer()),
                fs_verity: options.fs_verity,
                ..LayerOptions::default()
            },
            reader,
        );
        let indexed = indexing.map(|h| h.join().map_err(|_| Error::invalid("index", "the indexing thread panicked")));
        (stored, indexed)
    });
    report.fs_verity = has_verity(&stored?);
    report.bytes_fetched = blob.received().unwrap_or_else(|| counter.load(Ordering::Relaxed));
    if let (Some(location), Some(indexed)) = (&capture, indexed) {
        match indexed? {
            Some(Ok(index)) => {
                report.note = Some("nothing in the store to reuse".into());
                from_toc = Some((location.toc_digest.clone(), index));
            }
            // The layer itself checked out (blob digest, diffID): only the
            // index must come from its files instead.
            Some(Err(e)) => tracing::warn!(layer = %id, "its TOC does not parse ({e}): indexing its files"),
            None => tracing::warn!(layer = %id, "the store did not read the blob's tail: indexing its files"),
        }
    }
    let index = match from_toc {
        // The TOC was checked against the manifest, and the files against
        // the diffID: the index can come from it.
        Some((_, index)) => Some(index),
        None => store.layer_files(id).ok().and_then(|root| {
            LayerIndex::from_dir_with(&root, options.index_chunks)
                .inspect_err(|e| tracing::warn!(layer = %id, "no dedup index: {e}"))
                .ok()
        }),
    };
    save_layer_index(layer, index, cache);
    Ok(report)
}

/// An eStargz layer: gzip, with its TOC digest annotated.
fn is_estargz(desc: &Descriptor) -> bool {
    desc.annotations.contains_key(strata_toc::estargz::TOC_DIGEST_ANNOTATION) && desc.media_type.ends_with("gzip")
}

/// What became of an eStargz layer: pulled partially, or to be fetched
/// whole, for the reason given.
enum Estargz {
    Pulled(LayerReport),
    Whole(String),
}

/// Pulls an eStargz layer partially. Its headers lie in the gzip members
/// of the payloads before them, so the tar (and its diffID) is rebuilt
/// from headers a stored earlier version has where its entries did not
/// change, from the members of fetched payloads, and from members fetched
/// for their headers alone.
fn pull_estargz(
    layer: &Target<'_>,
    desc: &Descriptor,
    predecessor: Option<&str>,
    ahead: &mut Option<HeadersAhead>,
    cache: &mut DiskCache,
    options: &PullOptions,
    blob: &Blob,
) -> Result<Estargz> {
    let Target { store, id, diff_id, .. } = *layer;
    // The TOC's offset is known once it has streamed by: the planner
    // checks it at the end.
    let planner = strata_chunkfetch::LayerPlanner::new(u64::MAX, cache).gzip_members();
    let mut index = LayerIndex::default();
    let predecessor = predecessor.filter(|p| *p != id);
    let (read, planned) = read_while_planning(store, predecessor, ahead, planner, &mut index, |visit| {
        strata_toc::estargz::read_estargz_with(&SourceReadAt(blob), Some(&desc.annotations), visit)
    });
    let toc = match read {
        Ok(toc) => toc,
        Err(e @ strata_toc::Error::DigestMismatch { .. }) => {
            return Err(Error::Toc {
                digest: desc.digest.clone(),
                source: e,
            });
        }
        Err(e) => return Ok(Estargz::Whole(format!("its eStargz TOC cannot be used ({e}): fetched whole"))),
    };
    let toc_bytes = desc.size.saturating_sub(toc.toc_offset);
    let guessing = predecessor.is_some();
    let mut plan = match planned.and_then(|p| p.finish_at(toc.toc_offset)) {
        Ok(plan) => plan,
        Err(e) => return Ok(Estargz::Whole(format!("its eStargz TOC cannot be planned ({e}): fetched whole"))),
    };
    let (toc_offset, toc_digest) = (toc.toc_offset, toc.toc_digest.clone());
    plan.set_tar_end(toc.into_tar_end());
    let share = plan.stats.bytes_to_fetch as f64 / toc_offset.max(1) as f64;
    if share >= options.full_fetch_share {
        return Ok(Estargz::Whole(format!(
            "local layers hold too little of it ({:.0}% would be fetched): fetched whole, which is faster",
            share * 100.0
        )));
    }
    let guessed = plan.stats.headers_local;
    let planned_bytes = toc_bytes + plan.stats.bytes_to_fetch;
    let mut report = LayerReport::new(desc, diff_id, id, How::Partial);
    let (stored, index) = stored_index(layer, index);
    match pull_partial(layer, blob, desc, plan, Rebuild::Headers, toc_digest, stored, false, options, &mut report) {
        // Without the guess, every run of headers is a member to fetch:
        // the blob comes whole (a registry blob counts both fetches).
        Err(Error::Store(strata_layerstore::Error::DigestMismatch { .. })) if guessing && guessed > 0 => {
            tracing::info!(layer = %id, "headers taken from {predecessor:?} were not the blob's: fetching it whole");
            return Ok(Estargz::Whole(format!(
                "the headers guessed from an earlier version were wrong ({planned_bytes} bytes fetched for nothing): fetched whole"
            )));
        }
        other => other?,
    };
    report.note = Some(if guessed > 0 {
        format!(
            "eStargz: the tar's headers came from layer {} where its entries are unchanged ({guessed} runs), from the blob elsewhere",
            predecessor.unwrap_or_default()
        )
    } else {
        "eStargz: the tar's headers came from the blob's members".into()
    });
    report.bytes_fetched = blob.received().unwrap_or(report.bytes_fetched + toc_bytes);
    remember_index(layer, index, cache);
    Ok(Estargz::Pulled(report))
}

/// Pulls a layer again without guessing its headers (the guess failed, or
/// could not be planned), counting what the first attempt fetched too.
fn retry_unpredicted(
    source: &ImageSource,
    layer: &Target<'_>,
    desc: &Descriptor,
    cache: &mut DiskCache,
    options: &PullOptions,
    spent: u64,
) -> Result<LayerReport> {
    let mut report = pull_layer(source, layer, desc, None, &mut None, cache, options)?;
    report.bytes_fetched += spent;
    report.note = Some(format!(
        "{}the headers guessed from an earlier version were wrong, so the blob's own were fetched",
        report.note.take().map(|n| format!("{n}; ")).unwrap_or_default()
    ));
    Ok(report)
}

/// Stores a layer's dedup index, and makes it visible to the rest of the
/// pull.
fn save_layer_index(layer: &Target<'_>, index: Option<LayerIndex>, cache: &mut DiskCache) {
    if let Some(index) = &index
        && let Err(e) = layer.store.set_layer_big_data(layer.id, DEDUP_INDEX, index.as_bytes())
    {
        tracing::warn!(layer = %layer.id, "could not store its dedup index: {e}");
    }
    remember_index(layer, index, cache);
}

/// A new layer's index in its stored form, and the index itself if the
/// rest of the pull needs it (the top layer's is not copied: for a layer
/// of 200 000 files it is some 20 MB, held while the layer is
/// written).
fn stored_index(layer: &Target<'_>, index: LayerIndex) -> (Vec<u8>, Option<LayerIndex>) {
    if layer.last {
        (index.into_bytes(), None)
    } else {
        (index.to_bytes(), Some(index))
    }
}

/// Makes a layer's dedup index visible to the rest of the pull, unless
/// no layer of it comes after.
fn remember_index(layer: &Target<'_>, index: Option<LayerIndex>, cache: &mut DiskCache) {
    let Some(index) = index.filter(|_| !layer.last) else {
        return;
    };
    if let Ok(root) = layer.store.layer_files(layer.id) {
        cache.add_layer(Arc::new(root), index);
    }
}

/// The layer a pull is making.
struct Target<'a> {
    store: &'a Store,
    id: &'a str,
    parent: Option<&'a str>,
    diff_id: &'a str,
    /// The image's top layer: no layer of this pull reuses its files.
    last: bool,
}

/// The store's tar output as the getter's sink: files read straight
/// into the store's buffers.
struct StoreSink<'a>(&'a mut dyn strata_layerstore::TarOutput);

impl std::io::Write for StoreSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl strata_chunkfetch::TarSink for StoreSink<'_> {
    fn read_from(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<u64> {
        self.0.read_from(input)
    }
}

/// How a partially pulled layer's original tar is rebuilt.
enum Rebuild {
    /// From the tar-split the blob carries.
    TarSplit(strata_toc::TarSplit),
    /// From the header frames between the blob's payloads.
    Headers,
}

#[allow(clippy::too_many_arguments)]
fn pull_partial(
    layer: &Target<'_>,
    blob: &Blob,
    desc: &Descriptor,
    plan: LayerPlan,
    rebuild: Rebuild,
    toc_digest: String,
    stored_index: Vec<u8>,
    trust_diff_id: bool,
    options: &PullOptions,
    report: &mut LayerReport,
) -> Result<()> {
    let Target { store, id, parent, diff_id, .. } = *layer;
    report.bytes_reused = plan.stats.bytes_reused;
    report.files_reused = plan.stats.files_reused;
    report.files = plan.stats.files;
    let needs = plan.needs.clone();
    // The fetch runs this far ahead of the assembly: with the lead, the
    // bytes an update fetches are mostly in by the time they are needed.
    let (tx, rx) = piece_channel(PIECES_AHEAD);
    // Files taken whole from local layers are cloned or linked by the
    // extractor when it can, as their bytes pass by for the diffID.
    let known = KnownContent::new(options.hard_links);
    let announce = known.clone();
    let headers = HeadersKeeper::default();
    let files = plan.stats.files;
    let mut getter = TocGetter::new(plan, rx);
    if let Some(progress) = options.progress.clone() {
        let digest = desc.digest.clone();
        getter = getter.on_file_done(Box::new(move |done| {
            progress(PullEvent::FilesDone {
                digest: &digest,
                done,
                files,
            })
        }));
    }
    let getter = getter.on_whole_local(Box::new(move |name, size, found| {
        if announce.wanted() {
            let file = KnownFile {
                root: found.root.clone(),
                path: found.path.clone(),
            };
            announce.announce(name, size, file);
        }
    }));
    report.diff_id_unchecked = trust_diff_id;
    let layer_options = LayerOptions {
        id: Some(id.to_owned()),
        parent: parent.map(str::to_owned),
        expected_diff_id: Some(diff_id.to_owned()),
        expected_compressed_digest: Some(desc.digest.clone()),
        source_blob: Some(SourceBlob {
            digest: desc.digest.clone(),
            size: desc.size as i64,
            compression: if is_estargz(desc) { Compression::Gzip } else { Compression::Zstd },
            toc_digest: Some(toc_digest),
        }),
        known_content: Some(known),
        split_observer: Some(headers.observer()),
        // Kept with the layer's record, unsynced: the index is checked
        // when loaded, and a layer whose index is lost is only not reused
        // from.
        cached_big_data: vec![(DEDUP_INDEX.to_owned(), stored_index)],
        trust_expected_diff_id: trust_diff_id,
        fs_verity: options.fs_verity,
        ..LayerOptions::default()
    };
    let layer_error = |reason: String| Error::Layer {
        digest: desc.digest.clone(),
        reason,
    };
    // Why the tar could not be rebuilt, in full; the store only sees that
    // its writer failed.
    let assembly_error = std::sync::Mutex::new(None::<String>);
    let (fetched, stored) = std::thread::scope(|s| {
        let fetcher = s.spawn(|| {
            let tx = tx;
            match &options.progress {
                Some(progress) => {
                    progress(PullEvent::Fetching {
                        digest: &desc.digest,
                        expected: needs.iter().map(|n| n.range.length).sum(),
                        partial: true,
                    });
                    let reporting = Reporting {
                        blob,
                        progress,
                        digest: &desc.digest,
                        count: AtomicU64::new(0),
                    };
                    fetch_pieces(&reporting, &needs, &options.planner, &tx)
                }
                None => fetch_pieces(blob, &needs, &options.planner, &tx),
            }
        });
        let stored = store.put_layer_from(&layer_options, |out| {
            let mut getter = getter;
            // The store stopped taking the tar (a full disk, say): its own
            // error says why, and this side's would only say it stopped.
            let store_stopped = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
            let failure = match &rebuild {
                Rebuild::TarSplit(tar_split) => {
                    let entries = strata_tarsplit::MetadataReader::new(tar_split.reader());
                    match strata_tarsplit::assemble(entries, &mut getter, out) {
                        Err(strata_tarsplit::Error::Io(e)) if store_stopped(&e) => return Err(e),
                        Err(e) => Some(format!("rebuilding the layer tar: {e}")),
                        Ok(_) => (getter.unused() > 0)
                            .then(|| format!("the TOC lists {} file(s) the tar-split never names", getter.unused())),
                    }
                }
                Rebuild::Headers => match getter.write_tar(&mut StoreSink(out)) {
                    Err(e) if store_stopped(&e) => return Err(e),
                    Err(e) => Some(format!("rebuilding the layer tar from the blob: {e}")),
                    Ok(()) => None,
                },
            };
            // Dropping the getter stops a fetch still sending.
            drop(getter);
            match failure {
                Some(reason) => {
                    let short = reason.clone();
                    *assembly_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                    Err(std::io::Error::other(short))
                }
                None => Ok(()),
            }
        });
        (fetcher.join(), stored)
    });
    let fetched = fetched.map_err(|_| Error::invalid("fetch", "the fetching thread panicked"))?;
    // The first failure explains the others: a bad piece stops the
    // assembly, which fails the layer.
    let stats = match fetched {
        Err(strata_chunkfetch::Error::Sink(e)) if e.get_ref().is_some_and(|i| i.is::<ReceiverGone>()) => None,
        Err(e) => {
            let _ = stored.as_ref().map(|_| store.delete_layer(id));
            return Err(Error::Fetch(e));
        }
        Ok(stats) => Some(stats),
    };
    if let Some(reason) = assembly_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        let _ = stored.as_ref().map(|_| store.delete_layer(id));
        return Err(layer_error(reason));
    }
    report.fs_verity = has_verity(&stored?);
    let stats = stats.ok_or_else(|| layer_error("the fetch stopped early".into()))?;
    report.bytes_fetched = stats.bytes_requested;
    Ok(())
}

fn has_verity(layer: &strata_layerstore::Layer) -> bool {
    layer.big_data_names.iter().any(|n| n == strata_layerstore::FS_VERITY_DIGESTS)
}

/// Counts what is read through it, telling the progress callback.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
    progress: Option<(Progress, String)>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let bytes = self.count.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if let Some((progress, digest)) = &self.progress
            && n > 0
        {
            progress(PullEvent::Fetched { digest, bytes });
        }
        Ok(n)
    }
}

/// A blob whose fetched ranges are counted for the progress callback.
struct Reporting<'a> {
    blob: &'a Blob,
    progress: &'a Progress,
    digest: &'a str,
    count: AtomicU64,
}

impl RangeSource for Reporting<'_> {
    fn size(&self) -> strata_chunkfetch::Result<u64> {
        self.blob.size()
    }

    fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> strata_chunkfetch::Result<()> {
        self.blob.fetch(ranges, &mut |i, range| {
            let mut counted = Counting {
                inner: range,
                count: Arc::new(AtomicU64::new(0)),
                progress: None,
            };
            let result = sink(i, &mut counted);
            let read = counted.count.load(Ordering::Relaxed);
            let bytes = self.count.fetch_add(read, Ordering::Relaxed) + read;
            (self.progress)(PullEvent::Fetched { digest: self.digest, bytes });
            result
        })
    }

    fn sends_whole_blob(&self) -> bool {
        self.blob.sends_whole_blob()
    }
}

/// The most of a blob's tail (TOC, tar-split, footer) a whole fetch keeps
/// in memory to index the layer from; a bigger one is fetched on its own.
const MAX_CAPTURED_TAIL: u64 = 32 << 20;

/// Passes a blob through, keeping its bytes from the TOC on, and checks the
/// TOC's digest against the annotation as soon as the TOC has passed. The
/// tail, once whole, is sent to `done`.
struct TailKeeper<R> {
    inner: R,
    pos: u64,
    location: Option<strata_toc::annotations::Location>,
    tail: Vec<u8>,
    /// The blob's size less the TOC's offset.
    tail_len: u64,
    done: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl<R: Read> Read for TailKeeper<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let Some(location) = &self.location else {
            return Ok(n);
        };
        let (start, end) = (self.pos, self.pos + n as u64);
        self.pos = end;
        if end <= location.toc_offset || self.done.is_none() {
            return Ok(n);
        }
        let from = location.toc_offset.saturating_sub(start) as usize;
        let had = self.tail.len() as u64;
        self.tail.extend_from_slice(&buf[from..n]);
        let toc_len = location.toc_compressed_len;
        if had < toc_len && self.tail.len() as u64 >= toc_len {
            let actual = crate::source::sha256(&self.tail[..toc_len as usize]);
            if actual != location.toc_digest {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the blob's TOC has digest {actual}, its annotation says {}", location.toc_digest),
                ));
            }
        }
        // A blob longer than its descriptor fails in the store; the tail
        // sent is the descriptor's.
        if self.tail.len() as u64 >= self.tail_len {
            self.tail.truncate(self.tail_len as usize);
            if let Some(done) = self.done.take() {
                let _ = done.send(std::mem::take(&mut self.tail));
            }
        }
        Ok(n)
    }
}

/// The kept tail of a blob, read at blob offsets.
struct BlobTail {
    base: u64,
    bytes: Vec<u8>,
    size: u64,
}

impl strata_toc::ReadAt for BlobTail {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.size)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let from = offset
            .checked_sub(self.base)
            .and_then(|f| usize::try_from(f).ok())
            .filter(|&f| f.checked_add(buf.len()).is_some_and(|end| end <= self.bytes.len()))
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "outside the kept tail of the blob"))?;
        buf.copy_from_slice(&self.bytes[from..from + buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_and_their_paths() {
        assert_eq!(repository_of("127.0.0.1:5000/bench:v1"), "127.0.0.1:5000/bench");
        assert_eq!(repository_of("docker.io/library/debian@sha256:ab"), "docker.io/library/debian");
        assert_eq!(repository_of("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(path_of("127.0.0.1:5000/bench"), "bench");
        assert_eq!(path_of("docker.io/library/debian"), "library/debian");
        assert_eq!(path_of("localhost/layout"), "layout");
        assert_eq!(path_of("library/debian"), "library/debian");
    }
}

