//! The store: layer and image records in containers-storage's files, kept
//! consistent across processes by its lock files, and the layer operations.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cap_std::fs::Dir;

use crate::IdMap;
use crate::apply::{self, Applied, LayerOptions};
use crate::backend::{self, Overlay, StoreBackend, Vfs};
use crate::files::{big_data_file_name, random_id, write_atomic};
use crate::index::{DigestKind, Index};
use crate::lock::{LockGuard, LockKind, TOKEN_LEN, Token};
use crate::records::{LayerRecord, MountRecord};
use crate::{Error, Result, mounts};

/// The type of a tar writer for layers that have none.
type NoTar = fn(&mut dyn apply::TarOutput) -> std::io::Result<()>;

/// A storage driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Vfs,
    Overlay,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Vfs => "vfs",
            Driver::Overlay => "overlay",
        }
    }

    pub fn parse(s: &str) -> Option<Driver> {
        match s {
            "vfs" => Some(Driver::Vfs),
            "overlay" | "overlay2" => Some(Driver::Overlay),
            _ => None,
        }
    }
}

/// Where a store lives and how it is used.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Persistent data (containers-storage's graphroot).
    pub graphroot: PathBuf,
    /// Run-time state, mount counts (containers-storage's runroot).
    pub runroot: PathBuf,
    /// The driver; when absent, the one the store already uses, else
    /// overlay where the kernel supports it, else vfs.
    pub driver: Option<Driver>,
    /// Read-only stores are never written (not even lock tokens).
    pub read_only: bool,
    /// Other stores' graphroots whose layers are visible here, read-only.
    pub additional_stores: Vec<PathBuf>,
    /// The user-namespace ID maps new layers are stored under
    /// (containers-storage's `remap-uids` / `remap-gids`): a tar's owner
    /// `c` is stored as the host ID its map gives, and the maps are
    /// recorded with the layer. Empty: IDs as they are.
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
}

impl StoreOptions {
    pub fn new(graphroot: impl Into<PathBuf>, runroot: impl Into<PathBuf>) -> Self {
        StoreOptions {
            graphroot: graphroot.into(),
            runroot: runroot.into(),
            driver: None,
            read_only: false,
            additional_stores: Vec::new(),
            uid_map: Vec::new(),
            gid_map: Vec::new(),
        }
    }
}

/// The maps as the extractor takes them; a map that is not one is an
/// error naming it.
fn id_mapping(uids: &[IdMap], gids: &[IdMap]) -> Result<strata_overlaydiff::IdMapping> {
    let ranges = |maps: &[IdMap], what: &str| {
        maps.iter()
            .map(|m| {
                let range = (u32::try_from(m.container_id), u32::try_from(m.host_id), u32::try_from(m.size));
                match range {
                    (Ok(container), Ok(host), Ok(size)) if size > 0 && host.checked_add(size - 1).is_some() => {
                        Ok(strata_overlaydiff::IdRange { container, host, size })
                    }
                    _ => Err(Error::Unsupported(format!(
                        "{what} map {}:{}:{} is not a range of 32-bit IDs",
                        m.container_id, m.host_id, m.size
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()
    };
    Ok(strata_overlaydiff::IdMapping {
        uids: ranges(uids, "uid")?,
        gids: ranges(gids, "gid")?,
    })
}

/// Records as loaded, with the lock token and file time they were read
/// under: the cache is reused only while both are unchanged.
#[derive(Debug)]
pub(crate) struct Loaded<T> {
    pub(crate) records: Vec<T>,
    pub(crate) index: Index,
    /// IDs that came from (and go back to) the volatile file.
    pub(crate) volatile: HashSet<String>,
}

#[derive(Debug)]
pub(crate) struct Cached<T> {
    pub(crate) loaded: Arc<Loaded<T>>,
    token: Token,
    mtime: Option<SystemTime>,
}

/// A containers-storage store (vfs or overlay driver). `Send + Sync`: one
/// `Store` may serve many threads; many processes may open the same store.
#[derive(Debug)]
pub struct Store {
    pub(crate) graphroot: PathBuf,
    pub(crate) runroot: PathBuf,
    pub(crate) driver: Driver,
    pub(crate) backend: Box<dyn StoreBackend>,
    pub(crate) layers_path: PathBuf,
    pub(crate) layers_dir: Dir,
    pub(crate) images_path: PathBuf,
    pub(crate) images_dir: Dir,
    pub(crate) run_path: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) layer_cache: Mutex<Option<Cached<LayerRecord>>>,
    pub(crate) image_cache: Mutex<Option<Cached<crate::records::ImageRecord>>>,
    pub(crate) additional: Vec<Store>,
    pub(crate) uid_map: Vec<IdMap>,
    pub(crate) gid_map: Vec<IdMap>,
    pub(crate) ids: strata_overlaydiff::IdMapping,
}

/// A problem `fsck` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is affected: `layer ID`, `image ID` or a path.
    pub subject: String,
    pub message: String,
    /// Removing the subject is what `--repair` does about it.
    pub removable: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

fn open_dir(path: &Path) -> Result<Dir> {
    Dir::open_ambient_dir(path, cap_std::ambient_authority()).map_err(|e| Error::io(path, e))
}

fn detect_driver(graphroot: &Path) -> Option<Driver> {
    if graphroot.join("overlay-layers").is_dir() {
        Some(Driver::Overlay)
    } else if graphroot.join("vfs-layers").is_dir() {
        Some(Driver::Vfs)
    } else {
        None
    }
}

impl Store {
    /// Opens (creating it when writable and missing) the store at
    /// `options.graphroot`. A writable open removes what crashed processes
    /// left: incomplete layers and stale staging directories.
    pub fn open(options: &StoreOptions) -> Result<Store> {
        let graphroot = &options.graphroot;
        let driver = options
            .driver
            .or_else(|| detect_driver(graphroot))
            .unwrap_or(if crate::overlay_supported() { Driver::Overlay } else { Driver::Vfs });
        if driver == Driver::Overlay && !options.read_only && !crate::overlay_supported() {
            return Err(Error::Unsupported(
                "the overlay driver needs overlayfs in the kernel and root; use --driver vfs".into(),
            ));
        }
        let name = driver.name();
        let layers_path = graphroot.join(format!("{name}-layers"));
        let images_path = graphroot.join(format!("{name}-images"));
        let run_path = options.runroot.join(format!("{name}-layers"));
        let backend: Box<dyn StoreBackend> = if options.read_only {
            if !layers_path.is_dir() {
                return Err(Error::NotFound(format!("{name} store at {}", graphroot.display())));
            }
            match driver {
                Driver::Vfs => Box::new(Vfs::existing(graphroot)),
                Driver::Overlay => Box::new(Overlay::existing(graphroot)),
            }
        } else {
            crate::mkdir_mode(graphroot, 0o700)?;
            for lock in ["storage.lock", "userns.lock"] {
                let p = graphroot.join(lock);
                if !p.exists() {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&p)
                        .map_err(|e| Error::io(&p, e))?;
                }
            }
            for dir in [&layers_path, &images_path, &graphroot.join(format!("{name}-containers"))] {
                crate::mkdir_mode(dir, 0o700)?;
            }
            crate::mkdir_mode(&run_path, 0o700)?;
            match driver {
                Driver::Vfs => Box::new(Vfs::new(graphroot)?),
                Driver::Overlay => Box::new(Overlay::new(graphroot)?),
            }
        };
        let additional = options
            .additional_stores
            .iter()
            .map(|root| {
                Store::open(&StoreOptions {
                    graphroot: root.clone(),
                    runroot: options.runroot.clone(),
                    driver: Some(driver),
                    read_only: true,
                    ..StoreOptions::new(root.clone(), options.runroot.clone())
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let store = Store {
            layers_dir: open_dir(&layers_path)?,
            images_dir: if images_path.is_dir() { open_dir(&images_path)? } else { open_dir(&layers_path)? },
            graphroot: graphroot.clone(),
            runroot: options.runroot.clone(),
            driver,
            backend,
            layers_path,
            images_path,
            run_path,
            read_only: options.read_only,
            layer_cache: Mutex::new(None),
            image_cache: Mutex::new(None),
            additional,
            ids: id_mapping(&options.uid_map, &options.gid_map)?,
            uid_map: options.uid_map.clone(),
            gid_map: options.gid_map.clone(),
        };
        if !store.read_only {
            backend::clean_side_files(&store.layers_path, &store.staging_path())?;
            backend::clean_stale(&store.staging_path())?;
            drop(store.layers_write()?); // recovers incomplete layers
        }
        Ok(store)
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    pub fn graphroot(&self) -> &Path {
        &self.graphroot
    }

    pub fn runroot(&self) -> &Path {
        &self.runroot
    }

    pub(crate) fn staging_path(&self) -> PathBuf {
        self.graphroot.join(self.driver.name()).join(backend::STAGING_DIR)
    }

    pub(crate) fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly(self.graphroot.display().to_string()))
        } else {
            Ok(())
        }
    }

    pub(crate) fn lock_at(&self, path: PathBuf, kind: LockKind) -> Result<LockGuard> {
        LockGuard::acquire(&path, kind, !self.read_only).map_err(|e| Error::io(&path, e))
    }

    pub(crate) fn layers_lock(&self, kind: LockKind) -> Result<LockGuard> {
        self.lock_at(self.layers_path.join("layers.lock"), kind)
    }

    /// Loads `file` (and `volatile`) under `guard`, or reuses the cache.
    pub(crate) fn load<T>(
        &self,
        guard: &LockGuard,
        cache: &Mutex<Option<Cached<T>>>,
        dir: &Dir,
        dir_path: &Path,
        file: &str,
        volatile: Option<&str>,
    ) -> Result<Arc<Loaded<T>>>
    where
        T: serde::de::DeserializeOwned + crate::index::Keyed,
    {
        // A lock file no one has written yet reads as the all-zero token:
        // every writer replaces it with a random one, so it still tells
        // whether anything changed.
        let token = guard.token().map_err(|e| Error::io(guard.path(), e))?.unwrap_or([0; TOKEN_LEN]);
        let mtime = dir.metadata(file).ok().and_then(|m| m.modified().ok()).map(|t| t.into_std());
        let mut cached = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref()
            && c.token == token
            && c.mtime == mtime
        {
            return Ok(c.loaded.clone());
        }
        let mut records: Vec<T> = read_records(dir, dir_path, file)?;
        let mut volatile_ids = HashSet::new();
        if let Some(vfile) = volatile {
            let seen: HashSet<String> = records.iter().map(|r| r.id().to_owned()).collect();
            for r in read_records::<T>(dir, dir_path, vfile)? {
                if !seen.contains(r.id()) {
                    volatile_ids.insert(r.id().to_owned());
                    records.push(r);
                }
            }
        }
        let loaded = Arc::new(Loaded {
            index: Index::build(&records),
            records,
            volatile: volatile_ids,
        });
        *cached = Some(Cached {
            loaded: loaded.clone(),
            token,
            mtime,
        });
        Ok(loaded)
    }

    /// Writes records back (volatile ones to the volatile file), the token
    /// first so a crash between the two costs readers only a reload.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn save<T>(
        &self,
        guard: &LockGuard,
        cache: &Mutex<Option<Cached<T>>>,
        dir: &Dir,
        dir_path: &Path,
        file: &str,
        volatile: Option<&str>,
        loaded: Loaded<T>,
    ) -> Result<Arc<Loaded<T>>>
    where
        T: serde::Serialize + crate::index::Keyed,
    {
        self.writable()?;
        let token = guard.touch().map_err(|e| Error::io(guard.path(), e))?;
        let (stable, transient): (Vec<&T>, Vec<&T>) =
            loaded.records.iter().partition(|r| !loaded.volatile.contains(r.id()));
        let write = |name: &str, records: &[&T], volatile: bool| -> Result<()> {
            let bytes = crate::json::to_go_json(records).map_err(|e| Error::io(dir_path, e.into()))?;
            write_atomic(dir, name, &bytes, volatile).map_err(|e| Error::io(&dir_path.join(name), e))
        };
        write(file, &stable, false)?;
        if let Some(vfile) = volatile
            && (!transient.is_empty() || dir.exists(vfile))
        {
            write(vfile, &transient, true)?;
        }
        let mtime = dir.metadata(file).ok().and_then(|m| m.modified().ok()).map(|t| t.into_std());
        let loaded = Arc::new(Loaded {
            index: Index::build(&loaded.records),
            records: loaded.records,
            volatile: loaded.volatile,
        });
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            loaded: loaded.clone(),
            token,
            mtime,
        });
        Ok(loaded)
    }

    fn load_layers(&self, guard: &LockGuard) -> Result<Arc<Loaded<LayerRecord>>> {
        self.load(
            guard,
            &self.layer_cache,
            &self.layers_dir,
            &self.layers_path,
            "layers.json",
            Some("volatile-layers.json"),
        )
    }

    /// The layer records under a shared lock.
    pub(crate) fn layers_read(&self) -> Result<(LockGuard, Arc<Loaded<LayerRecord>>)> {
        let guard = self.layers_lock(LockKind::Shared)?;
        let loaded = self.load_layers(&guard)?;
        Ok((guard, loaded))
    }

    /// The layer records under the exclusive lock, as an owned copy to
    /// change. Incomplete layers (left by a crash) are removed first.
    pub(crate) fn layers_write(&self) -> Result<(LockGuard, Loaded<LayerRecord>)> {
        self.writable()?;
        let guard = self.layers_lock(LockKind::Exclusive)?;
        let loaded = self.load_layers(&guard)?;
        let mut loaded = owned(loaded);
        if loaded.records.iter().any(LayerRecord::incomplete) {
            let stale: Vec<String> = loaded.records.iter().filter(|r| r.incomplete()).map(|r| r.id.clone()).collect();
            for id in &stale {
                tracing::warn!("found incomplete layer {id}, deleting it");
                self.remove_layer_files(id)?;
            }
            loaded.records.retain(|r| !r.incomplete());
            loaded = owned(self.save_layers(&guard, loaded)?);
        }
        Ok((guard, loaded))
    }

    pub(crate) fn save_layers(&self, guard: &LockGuard, loaded: Loaded<LayerRecord>) -> Result<Arc<Loaded<LayerRecord>>> {
        self.save(
            guard,
            &self.layer_cache,
            &self.layers_dir,
            &self.layers_path,
            "layers.json",
            Some("volatile-layers.json"),
            loaded,
        )
    }

    /// The tar-split, big data and driver directory of a layer.
    fn remove_layer_files(&self, id: &str) -> Result<()> {
        self.remove_side_files(id)?;
        self.backend.remove(id)
    }

    /// The layer's tar-split and big data.
    fn remove_side_files(&self, id: &str) -> Result<()> {
        crate::check_id(id)?;
        let _ = self.layers_dir.remove_file(format!("{id}.tar-split.gz"));
        match self.layers_dir.remove_dir_all(id) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.layers_path.join(id), e)),
        }
    }

    // ---- layers: queries -------------------------------------------------

    /// Every complete layer, this store's first, then additional stores'.
    pub fn layers(&self) -> Result<Vec<LayerRecord>> {
        let (_guard, loaded) = self.layers_read()?;
        let mut out: Vec<LayerRecord> = loaded.records.iter().filter(|r| !r.incomplete()).cloned().collect();
        for extra in &self.additional {
            let seen: HashSet<String> = out.iter().map(|l| l.id.clone()).collect();
            out.extend(extra.layers()?.into_iter().filter(|l| !seen.contains(&l.id)));
        }
        Ok(out)
    }

    /// The directory holding the files of the layer's own tar (the
    /// overlay `diff` dir; for vfs, the layer's full tree), for finding
    /// content to reuse. Read it, never write it.
    pub fn layer_files(&self, key: &str) -> Result<Dir> {
        let layer = self.layer(key)?;
        let owner = if self.loaded_layer(&layer.id).is_ok() {
            self
        } else {
            self.additional
                .iter()
                .find(|s| s.loaded_layer(&layer.id).is_ok())
                .ok_or_else(|| Error::NotFound(format!("layer {key}")))?
        };
        owner
            .backend
            .content_dirs(&layer.id)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound(format!("files of layer {}", layer.id)))
    }

    /// A layer by ID, name or unique ID prefix.
    pub fn layer(&self, key: &str) -> Result<LayerRecord> {
        let (_guard, loaded) = self.layers_read()?;
        match loaded.index.find(&loaded.records, key, "layer") {
            Ok(i) => Ok(loaded.records[i].clone()),
            Err(Error::NotFound(what)) => {
                for extra in &self.additional {
                    if let Ok(l) = extra.layer(key) {
                        return Ok(l);
                    }
                }
                Err(Error::NotFound(what))
            }
            Err(e) => Err(e),
        }
    }

    fn layers_with(&self, kind: DigestKind, digest: &str) -> Result<Vec<LayerRecord>> {
        let mut out: Vec<LayerRecord> = {
            let (_guard, loaded) = self.layers_read()?;
            let hits = loaded.index.with_digest(&loaded.records, kind, digest);
            hits.into_iter().map(|i| loaded.records[i].clone()).collect()
        };
        for extra in &self.additional {
            for l in extra.layers_with(kind, digest)? {
                if !out.iter().any(|o| o.id == l.id) {
                    out.push(l);
                }
            }
        }
        Ok(out)
    }

    /// Layers whose compressed blob has this digest.
    pub fn layers_by_compressed_digest(&self, digest: &str) -> Result<Vec<LayerRecord>> {
        self.layers_with(DigestKind::Compressed, digest)
    }

    /// Layers whose uncompressed tar (diffID) has this digest.
    pub fn layers_by_uncompressed_digest(&self, digest: &str) -> Result<Vec<LayerRecord>> {
        self.layers_with(DigestKind::Uncompressed, digest)
    }

    /// Layers pulled from a blob whose TOC has this digest.
    pub fn layers_by_toc_digest(&self, digest: &str) -> Result<Vec<LayerRecord>> {
        self.layers_with(DigestKind::Toc, digest)
    }

    // ---- layers: creation -------------------------------------------------

    /// An empty layer (a container's writable layer, say) on `parent`.
    pub fn create_layer(&self, options: &LayerOptions) -> Result<LayerRecord> {
        self.new_layer(options, None::<apply::Input<&[u8], NoTar>>)
    }

    /// Creates a layer and applies `diff` (a plain, gzip or zstd layer
    /// tar) to it. The work happens in a staging directory without any
    /// store lock; only publishing takes the layers lock, briefly.
    pub fn put_layer<R: Read + Send>(&self, options: &LayerOptions, diff: R) -> Result<LayerRecord> {
        self.new_layer(options, Some(apply::Input::<R, NoTar>::Blob(diff)))
    }

    /// [`put_layer`](Self::put_layer) for a layer whose uncompressed tar
    /// `write_tar` produces, on a thread of its own while the store
    /// extracts and hashes what it writes: no pipe, no second copy. A
    /// tar rebuilt from tar-split metadata and other layers' files (a
    /// partial pull) comes in this way. An error `write_tar` returns
    /// fails the layer and nothing is kept. Record the blob the tar came
    /// from in [`LayerOptions::source_blob`].
    pub fn put_layer_from<F>(&self, options: &LayerOptions, write_tar: F) -> Result<LayerRecord>
    where
        F: FnOnce(&mut dyn apply::TarOutput) -> std::io::Result<()> + Send,
    {
        self.new_layer(options, Some(apply::Input::<&[u8], F>::Tar(write_tar)))
    }

    fn new_layer<R, F>(&self, options: &LayerOptions, diff: Option<apply::Input<R, F>>) -> Result<LayerRecord>
    where
        R: Read + Send,
        F: FnOnce(&mut dyn apply::TarOutput) -> std::io::Result<()> + Send,
    {
        self.writable()?;
        if let Some(id) = &options.id {
            crate::check_id(id)?;
        }
        let (parent, template) = {
            let (_g, loaded) = self.layers_read()?;
            let find = |key: &Option<String>| -> Result<Option<String>> {
                key.as_deref()
                    .map(|k| loaded.index.find(&loaded.records, k, "layer").map(|i| loaded.records[i].id.clone()))
                    .transpose()
            };
            (find(&options.parent)?, find(&options.template)?)
        };
        if let Some(p) = &parent {
            let below = self.layer(p)?;
            if below.uidmap != self.uid_map || below.gidmap != self.gid_map {
                return Err(Error::Unsupported(format!(
                    "layer {p} is stored under other ID maps than this store's"
                )));
            }
        }
        let staged = self.backend.stage(parent.as_deref(), template.as_deref())?;
        if !self.ids.is_identity() && rustix::process::geteuid().is_root() {
            // The layer's root belongs to the map's root, as
            // containers-storage makes it.
            let (uid, gid) = (self.ids.uid(0).unwrap_or(0), self.ids.gid(0).unwrap_or(0));
            rustix::fs::chownat(
                &staged.tree,
                "",
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::EMPTY_PATH,
            )
            .map_err(|e| Error::io(&staged.path, e.into()))?;
        }
        let split_tmp = backend::side_file_name(&staged.name, "tar-split.gz");
        // A tar rebuilt by a function is not the blob: its digest and size
        // come from `source_blob`. A blob applied as is is hashed, and
        // `source_blob` must agree with it.
        let rebuilt = matches!(diff, Some(apply::Input::Tar(_)));
        let applied = match diff {
            Some(diff) => {
                let mode = self.backend.apply_mode();
                let tree = staged.tree.try_clone().map_err(|e| Error::io(&staged.path, e))?;
                let mut extractor = strata_overlaydiff::Extractor::new(tree, mode.whiteouts)
                    .root_metadata(mode.root_metadata)
                    .id_mapping(self.ids.clone());
                if let Some(known) = &options.known_content {
                    extractor = extractor.known_content(known.clone());
                }
                let lowers = self.backend.lowers_for(parent.as_deref())?;
                if !lowers.is_empty() {
                    extractor = extractor.lowers(strata_overlaydiff::LowerView::new(
                        lowers,
                        strata_overlaydiff::XattrNamespace::Trusted,
                    ));
                }
                let trusted = options.expected_diff_id.as_deref().filter(|_| options.trust_expected_diff_id);
                let applied = apply::apply_blob(
                    diff,
                    &staged,
                    extractor,
                    &self.layers_dir,
                    &split_tmp,
                    options.split_observer.as_ref(),
                    trusted,
                );
                if applied.is_err() {
                    let _ = self.layers_dir.remove_file(&split_tmp);
                }
                let mut applied = applied?;
                if let Some(blob) = &options.source_blob
                    && rebuilt
                {
                    applied.compressed_digest = blob.digest.clone();
                    applied.compressed_size = blob.size;
                    applied.compression = blob.compression;
                }
                Some(applied)
            }
            None => None,
        };
        let _cleanup = SideFile(&self.layers_dir, &split_tmp);
        // Before the sync, which then has the Merkle trees on disk too.
        let verity = match &applied {
            Some(_) => crate::verity::enable_all(&staged.tree, options.fs_verity)?,
            None => Default::default(),
        };
        if options.sync {
            // Before the lock: a sync of a gigabyte takes seconds.
            // Through a descriptor of its own: the staged tree's may be
            // an O_PATH one, which syncfs refuses.
            let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
            rustix::fs::openat(&staged.tree, ".", flags, rustix::fs::Mode::empty())
                .and_then(|dir| rustix::fs::syncfs(&dir))
                .map_err(|e| Error::io(&staged.path, e.into()))?;
        }
        if let Some(a) = &applied {
            check_expected("diffID", options.expected_diff_id.as_deref(), &a.diff_digest)?;
            let blob_digest = options.source_blob.as_ref().map(|b| b.digest.as_str());
            check_expected("layer blob", blob_digest, &a.compressed_digest)?;
            check_expected("layer blob", options.expected_compressed_digest.as_deref(), &a.compressed_digest)?;
        }
        let template_split = match &template {
            Some(t) if applied.is_none() => self.layers_dir.read(format!("{t}.tar-split.gz")).ok(),
            _ => None,
        };
        let id = match (&options.id, &applied) {
            (Some(id), _) => id.clone(),
            (None, Some(a)) if options.chain_id => chain_id(parent.as_deref(), &a.diff_digest),
            _ => random_id().map_err(|e| Error::io(&self.graphroot, e))?,
        };

        let (guard, mut loaded) = self.layers_write()?;
        if let Some(p) = &parent
            && !loaded.records.iter().any(|r| r.id == *p && !r.incomplete())
        {
            return Err(Error::NotFound(format!("parent layer {p} (deleted meanwhile)")));
        }
        if loaded.records.iter().any(|r| r.id == id) {
            return Err(Error::Exists(format!("layer {id}")));
        }
        let mut record = LayerRecord {
            id: id.clone(),
            parent: parent.clone().unwrap_or_default(),
            created: crate::json::rfc3339(SystemTime::now()),
            metadata: options.metadata.clone().unwrap_or_default(),
            uidmap: self.uid_map.clone(),
            gidmap: self.gid_map.clone(),
            ..Default::default()
        };
        record.set_incomplete(true);
        for name in &options.names {
            for other in &mut loaded.records {
                other.names.retain(|n| n != name);
            }
        }
        record.names = dedup(options.names.clone());
        loaded.records.push(record.clone());
        let mut loaded = owned(self.save_layers(&guard, loaded)?);

        let published = (|| -> Result<()> {
            if applied.is_some() {
                self.layers_dir
                    .rename(&split_tmp, &self.layers_dir, format!("{id}.tar-split.gz"))
                    .map_err(|e| Error::io(&self.layers_path, e))?;
            } else if let Some(bytes) = &template_split {
                write_atomic(&self.layers_dir, &format!("{id}.tar-split.gz"), bytes, false)
                    .map_err(|e| Error::io(&self.layers_path, e))?;
            }
            self.backend.publish(staged, &id, parent.as_deref())
        })();
        let slot = loaded.records.iter().position(|r| r.id == id).expect("just added");
        if let Err(e) = published {
            let _ = self.remove_layer_files(&id);
            loaded.records.remove(slot);
            self.save_layers(&guard, loaded)?;
            return Err(e);
        }
        let cached = self.write_cached_big_data(&id, options, verity.listing());
        let record = &mut loaded.records[slot];
        record.big_data_names.extend(cached);
        if let Some(a) = applied {
            if a.diff_unchecked {
                record.flags.insert(apply::DIFF_ID_UNCHECKED.to_owned(), serde_json::Value::Bool(true));
            }
            fill_digests(record, a);
            if let Some(toc) = options.source_blob.as_ref().and_then(|b| b.toc_digest.clone()) {
                record.toc_digest = toc;
            }
        } else if let Some(t) = &template
            && let Some(tr) = loaded_record(&loaded, t)
        {
            let (cd, cs, dd, ds, c, u, g, toc) = (
                tr.compressed_digest.clone(),
                tr.compressed_size,
                tr.diff_digest.clone(),
                tr.diff_size,
                tr.compression,
                tr.uidset.clone(),
                tr.gidset.clone(),
                tr.toc_digest.clone(),
            );
            let record = &mut loaded.records[slot];
            (record.compressed_digest, record.compressed_size, record.diff_digest, record.diff_size) = (cd, cs, dd, ds);
            (record.compression, record.uidset, record.gidset, record.toc_digest) = (c, u, g, toc);
        }
        loaded.records[slot].set_incomplete(false);
        let done = loaded.records[slot].clone();
        self.save_layers(&guard, loaded)?;
        Ok(done)
    }

    /// Writes a new layer's cached big data (see
    /// [`LayerOptions::cached_big_data`]); returns the names written. An
    /// item that cannot be written is left out: the layer does without.
    fn write_cached_big_data(&self, id: &str, options: &LayerOptions, verity: Option<Vec<u8>>) -> Vec<String> {
        let mut observed = options
            .split_observer
            .as_ref()
            .and_then(|o| o.0.lock().ok())
            .map(|mut o| o.big_data())
            .unwrap_or_default();
        observed.extend(verity.map(|listing| (crate::FS_VERITY_DIGESTS.to_owned(), listing)));
        let items: Vec<(&str, &[u8])> = options
            .cached_big_data
            .iter()
            .chain(&observed)
            .map(|(name, data)| (name.as_str(), data.as_slice()))
            .collect();
        if items.is_empty() {
            return Vec::new();
        }
        let path = self.layers_path.join(id);
        let dir = crate::mkdir_mode(&path, 0o700).and_then(|()| self.layers_dir.open_dir(id).map_err(|e| Error::io(&path, e)));
        let dir = match dir {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(layer = %id, "its cached big data is not kept: {e}");
                return Vec::new();
            }
        };
        let mut written = Vec::new();
        for (name, data) in items {
            let kept = big_data_file_name(name)
                .ok_or_else(|| std::io::Error::other("empty big-data key"))
                .and_then(|file| write_atomic(&dir, &file, data, true));
            match kept {
                Ok(()) if !written.iter().any(|n| n == name) => written.push(name.to_owned()),
                Ok(()) => {}
                Err(e) => tracing::warn!(layer = %id, "its big data {name:?} is not kept: {e}"),
            }
        }
        written
    }

    // ---- layers: changes to records ----------------------------------------

    fn modify_layer(&self, key: &str, change: impl FnOnce(&mut Loaded<LayerRecord>, usize) -> Result<()>) -> Result<LayerRecord> {
        let (guard, mut loaded) = self.layers_write()?;
        let i = loaded.index.find(&loaded.records, key, "layer")?;
        change(&mut loaded, i)?;
        let record = loaded.records[i].clone();
        self.save_layers(&guard, loaded)?;
        Ok(record)
    }

    /// Adds names to a layer; a name another layer had moves here.
    pub fn add_layer_names(&self, key: &str, names: &[String]) -> Result<LayerRecord> {
        self.modify_layer(key, |loaded, i| {
            steal_names(&mut loaded.records, i, names);
            let mut all = names.to_vec();
            all.append(&mut loaded.records[i].names);
            loaded.records[i].names = dedup(all);
            Ok(())
        })
    }

    /// Replaces a layer's names.
    pub fn set_layer_names(&self, key: &str, names: &[String]) -> Result<LayerRecord> {
        self.modify_layer(key, |loaded, i| {
            steal_names(&mut loaded.records, i, names);
            loaded.records[i].names = dedup(names.to_vec());
            Ok(())
        })
    }

    pub fn remove_layer_names(&self, key: &str, names: &[String]) -> Result<LayerRecord> {
        self.modify_layer(key, |loaded, i| {
            loaded.records[i].names.retain(|n| !names.contains(n));
            Ok(())
        })
    }

    pub fn set_layer_metadata(&self, key: &str, metadata: &str) -> Result<LayerRecord> {
        self.modify_layer(key, |loaded, i| {
            loaded.records[i].metadata = metadata.to_owned();
            Ok(())
        })
    }

    /// Sets a flag (`incomplete` is the store's own and cannot be set).
    pub fn set_layer_flag(&self, key: &str, flag: &str, value: serde_json::Value) -> Result<LayerRecord> {
        if flag == crate::records::INCOMPLETE {
            return Err(Error::Invalid("the incomplete flag is managed by the store".into()));
        }
        self.modify_layer(key, |loaded, i| {
            loaded.records[i].flags.insert(flag.to_owned(), value);
            Ok(())
        })
    }

    pub fn clear_layer_flag(&self, key: &str, flag: &str) -> Result<LayerRecord> {
        if flag == crate::records::INCOMPLETE {
            return Err(Error::Invalid("the incomplete flag is managed by the store".into()));
        }
        self.modify_layer(key, |loaded, i| {
            loaded.records[i].flags.remove(flag);
            Ok(())
        })
    }

    /// Stores a big-data item of a layer (atomically).
    pub fn set_layer_big_data(&self, key: &str, name: &str, data: &[u8]) -> Result<()> {
        self.set_layer_big_data_items(key, &[(name, data)])
    }

    /// Sets several big-data items of a layer, with one write of the
    /// layers' records for them all.
    pub fn set_layer_big_data_items(&self, key: &str, items: &[(&str, &[u8])]) -> Result<()> {
        let files = items
            .iter()
            .map(|(name, _)| big_data_file_name(name).ok_or_else(|| Error::Invalid("empty big-data key".into())))
            .collect::<Result<Vec<_>>>()?;
        self.modify_layer(key, |loaded, i| {
            let id = loaded.records[i].id.clone();
            crate::mkdir_mode(&self.layers_path.join(&id), 0o700)?;
            let dir = self.layers_dir.open_dir(&id).map_err(|e| Error::io(&self.layers_path.join(&id), e))?;
            for ((name, data), file) in items.iter().zip(&files) {
                write_atomic(&dir, file, data, false).map_err(|e| Error::io(&self.layers_path.join(&id).join(file), e))?;
                if !loaded.records[i].big_data_names.iter().any(|n| n == name) {
                    loaded.records[i].big_data_names.push((*name).to_owned());
                }
            }
            Ok(())
        })
        .map(drop)
    }

    pub fn layer_big_data(&self, key: &str, name: &str) -> Result<Vec<u8>> {
        let layer = self.layer(key)?;
        if !layer.big_data_names.iter().any(|n| n == name) {
            return Err(Error::NotFound(format!("big data {name:?} of layer {}", layer.id)));
        }
        let file = big_data_file_name(name).ok_or_else(|| Error::Invalid("empty big-data key".into()))?;
        let path = self.layers_path.join(&layer.id).join(&file);
        self.layers_dir
            .open_dir(&layer.id)
            .and_then(|d| d.read(&file))
            .map_err(|e| Error::io(&path, e))
    }

    // ---- layers: deletion ------------------------------------------------

    /// Deletes a layer: unmounts it, marks it incomplete, removes its files,
    /// then its record. Refused while a layer or image builds on it.
    pub fn delete_layer(&self, key: &str) -> Result<()> {
        self.delete_layer_checked(key, true)
    }

    /// Deletes a layer even if others build on it (for repairs).
    pub(crate) fn force_delete_layer(&self, id: &str) -> Result<()> {
        self.delete_layer_checked(id, false)
    }

    fn delete_layer_checked(&self, key: &str, check: bool) -> Result<()> {
        let (guard, mut loaded) = self.layers_write()?;
        let i = loaded.index.find(&loaded.records, key, "layer")?;
        let id = loaded.records[i].id.clone();
        if check
            && let Some(child) = loaded.records.iter().find(|r| r.parent == id) {
            return Err(Error::InUse(format!("layer {id} has a child layer {}", child.id)));
        }
        if check
            && let Some(image) = self.images_using(&id)?
        {
            return Err(Error::InUse(format!("layer {id} is used by image {image}")));
        }
        self.unmount_all(&id)?;
        loaded.records[i].set_incomplete(true);
        let mut loaded = owned(self.save_layers(&guard, loaded)?);
        // The layer's tree is moved aside under the lock and deleted after
        // it: deleting a big layer takes seconds, and other processes wait
        // for nothing but the move. A crash meanwhile leaves a staging
        // directory whose lock nobody holds, which the next writer removes.
        let trash = backend::Staged::new(&self.staging_path(), 0o700)?;
        self.detach_layer_files(&id, &trash.tree_path())?;
        loaded.records.retain(|r| r.id != id);
        self.save_layers(&guard, loaded)?;
        drop(guard);
        drop(trash);
        Ok(())
    }

    /// [`remove_layer_files`](Self::remove_layer_files), but the driver's
    /// directory is moved to `into` instead of deleted.
    fn detach_layer_files(&self, id: &str, into: &Path) -> Result<()> {
        self.remove_side_files(id)?;
        self.backend.detach(id, into)
    }

    /// Deletes every image and layer.
    pub fn wipe(&self) -> Result<()> {
        for image in self.images()? {
            self.delete_image(&image.id)?;
        }
        loop {
            let layers = self.layers_write()?.1.records;
            let Some(leaf) = layers.iter().find(|l| !layers.iter().any(|c| c.parent == l.id)) else {
                return Ok(());
            };
            self.delete_layer(&leaf.id)?;
        }
    }

    /// Removes driver directories, tar-split files and big-data directories
    /// that no layer record points to, and stale staging directories.
    /// Returns what was removed.
    pub fn garbage_collect(&self) -> Result<Vec<String>> {
        let (_guard, loaded) = self.layers_write()?;
        let known: HashSet<&str> = loaded.records.iter().map(|r| r.id.as_str()).collect();
        let mut removed = Vec::new();
        for dir in self.backend.list()? {
            if !known.contains(dir.as_str()) && crate::check_id(&dir).is_ok() {
                self.backend.remove(&dir)?;
                removed.push(format!("{}/{dir}", self.driver.name()));
            }
        }
        for entry in std::fs::read_dir(&self.layers_path).map_err(|e| Error::io(&self.layers_path, e))? {
            let entry = entry.map_err(|e| Error::io(&self.layers_path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".tar-split.gz").unwrap_or(&name);
            let ours = name.ends_with(".tar-split.gz") || entry.file_type().is_ok_and(|t| t.is_dir());
            if ours && crate::valid_id(id) && !known.contains(id) {
                let path = entry.path();
                if path.is_dir() {
                    backend::remove_tree_pub(&path).map_err(|e| Error::io(&path, e))?;
                } else {
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
                removed.push(format!("{}-layers/{name}", self.driver.name()));
            }
        }
        let stale = backend::clean_side_files(&self.layers_path, &self.staging_path())?
            + backend::clean_stale(&self.staging_path())?;
        if stale > 0 {
            removed.push(format!("{stale} stale staging directories"));
        }
        Ok(removed)
    }

    // ---- mounts ------------------------------------------------------------

    fn mounts_lock(&self) -> Result<LockGuard> {
        self.lock_at(self.run_path.join("mountpoints.lock"), LockKind::Exclusive)
    }

    fn run_dir(&self) -> Result<Dir> {
        crate::mkdir_mode(&self.run_path, 0o700)?;
        open_dir(&self.run_path)
    }

    /// The mount counts of every mounted layer.
    pub fn mounts(&self) -> Result<Vec<MountRecord>> {
        let dir = self.run_dir()?;
        let _g = self.lock_at(self.run_path.join("mountpoints.lock"), LockKind::Shared)?;
        mounts::load(&dir, &self.run_path)
    }

    /// Mounts a layer (read-only when asked) and returns where; a layer
    /// already mounted gets its count raised and the same path.
    pub fn mount(&self, key: &str, read_only: bool) -> Result<PathBuf> {
        let _storage = self.lock_at(self.graphroot.join("storage.lock"), LockKind::Exclusive)?;
        let (_layers, loaded) = self.layers_write()?;
        let i = loaded.index.find(&loaded.records, key, "layer")?;
        let id = loaded.records[i].id.clone();
        let mlock = self.mounts_lock()?;
        let dir = self.run_dir()?;
        let mut records = mounts::load(&dir, &self.run_path)?;
        let slot = records.iter().position(|m| m.id == id);
        let path = match slot.map(|s| &mut records[s]) {
            Some(m) if m.count > 0 && (self.driver == Driver::Vfs || is_mounted(Path::new(&m.path))) => {
                m.count += 1;
                PathBuf::from(&m.path)
            }
            other => {
                let old = other.map_or(0, |m| m.count.max(0));
                let path = self.backend.mount(&id, read_only)?;
                records.retain(|m| m.id != id);
                records.push(MountRecord {
                    id: id.clone(),
                    path: path.display().to_string(),
                    count: old + 1,
                });
                path
            }
        };
        mlock.touch().map_err(|e| Error::io(mlock.path(), e))?;
        mounts::save(&dir, &self.run_path, &records)?;
        Ok(path)
    }

    /// Drops one mount of a layer (all of them with `force`); the last one
    /// unmounts. Returns the mounts that remain.
    pub fn unmount(&self, key: &str, force: bool) -> Result<i64> {
        let (_layers, loaded) = self.layers_write()?;
        let i = loaded.index.find(&loaded.records, key, "layer")?;
        let id = loaded.records[i].id.clone();
        self.unmount_locked(&id, force)
    }

    fn unmount_locked(&self, id: &str, force: bool) -> Result<i64> {
        let mlock = self.mounts_lock()?;
        let dir = self.run_dir()?;
        let mut records = mounts::load(&dir, &self.run_path)?;
        let Some(slot) = records.iter().position(|m| m.id == id && m.count > 0) else {
            return Err(Error::Invalid(format!("layer {id} is not mounted")));
        };
        if force {
            records[slot].count = 1;
        }
        let left = if records[slot].count > 1 {
            records[slot].count -= 1;
            records[slot].count
        } else {
            self.backend.unmount(id)?;
            records.remove(slot);
            0
        };
        mlock.touch().map_err(|e| Error::io(mlock.path(), e))?;
        mounts::save(&dir, &self.run_path, &records)?;
        if records.is_empty() {
            self.backend.release();
        }
        Ok(left)
    }

    fn unmount_all(&self, id: &str) -> Result<()> {
        let dir = self.run_dir()?;
        let mounted = {
            let _g = self.lock_at(self.run_path.join("mountpoints.lock"), LockKind::Shared)?;
            mounts::load(&dir, &self.run_path)?.iter().any(|m| m.id == id && m.count > 0)
        };
        if mounted {
            self.unmount_locked(id, true)?;
        }
        Ok(())
    }

    pub(crate) fn loaded_layer(&self, key: &str) -> Result<(LockGuard, LayerRecord)> {
        let (guard, loaded) = self.layers_read()?;
        let i = loaded.index.find(&loaded.records, key, "layer")?;
        Ok((guard, loaded.records[i].clone()))
    }
}

fn loaded_record<'a>(loaded: &'a Loaded<LayerRecord>, id: &str) -> Option<&'a LayerRecord> {
    loaded.records.iter().find(|r| r.id == id)
}

/// containers/image's layer ID for a layer with `diff_digest` on `parent`.
pub fn chain_id(parent: Option<&str>, diff_digest: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex_part = diff_digest.strip_prefix("sha256:").unwrap_or(diff_digest);
    match parent {
        None => hex_part.to_owned(),
        Some(p) => crate::files::hex(&Sha256::digest(format!("{p}+{hex_part}"))),
    }
}

fn fill_digests(record: &mut LayerRecord, a: Applied) {
    record.compressed_digest = a.compressed_digest;
    record.compressed_size = a.compressed_size;
    record.diff_digest = a.diff_digest;
    record.diff_size = a.diff_size;
    record.compression = a.compression.code();
    record.uidset = a.uids.into_iter().collect();
    record.gidset = a.gids.into_iter().collect();
}

fn check_expected(what: &str, expected: Option<&str>, actual: &str) -> Result<()> {
    match expected {
        Some(e) if e != actual => Err(Error::DigestMismatch {
            what: what.into(),
            expected: e.into(),
            actual: actual.into(),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn dedup(names: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    names.into_iter().filter(|n| seen.insert(n.clone())).collect()
}

fn steal_names(records: &mut [LayerRecord], keep: usize, names: &[String]) {
    for (i, r) in records.iter_mut().enumerate() {
        if i != keep {
            r.names.retain(|n| !names.contains(n));
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    backend::is_mount_point_pub(path)
}

fn read_records<T: serde::de::DeserializeOwned>(dir: &Dir, dir_path: &Path, file: &str) -> Result<Vec<T>> {
    let path = dir_path.join(file);
    let bytes = match dir.read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let records: Option<Vec<T>> = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        what: path.display().to_string(),
        reason: format!("{e} (the file was left as it is)"),
    })?;
    Ok(records.unwrap_or_default())
}


/// Removes a staged side file on every way out (a no-op once renamed).
struct SideFile<'a>(&'a Dir, &'a str);

impl Drop for SideFile<'_> {
    fn drop(&mut self) {
        let _ = self.0.remove_file(self.1);
    }
}

/// The records behind an `Arc`, cloned only when the cache shares them.
pub(crate) fn owned<T: Clone>(this: Arc<Loaded<T>>) -> Loaded<T> {
    Arc::try_unwrap(this).unwrap_or_else(|shared| Loaded {
        records: shared.records.clone(),
        index: shared.index.clone(),
        volatile: shared.volatile.clone(),
    })
}
