//! `strata layers …`, `strata images …`, `strata fsck`: a containers-storage
//! store from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use strata_layerstore::{Compression, DiffOptions, Driver, IdMap, LayerOptions, Store, StoreOptions};

use crate::output::{AtomicFile, BoxError, stdout_file};

/// Where the store is; shared by every store command.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The store's root (containers-storage's graphroot). Default:
    /// $STRATA_ROOT, else /var/lib/strata as root, else $XDG_DATA_HOME/strata.
    #[arg(long, global = true, env = "STRATA_ROOT")]
    root: Option<PathBuf>,
    /// Run-time state such as mount counts (containers-storage's runroot).
    /// Default: $STRATA_RUNROOT, else /run/strata (or $XDG_RUNTIME_DIR/strata),
    /// with a subdirectory per non-default root.
    #[arg(long, global = true, env = "STRATA_RUNROOT")]
    runroot: Option<PathBuf>,
    /// The storage driver: overlay where the kernel supports it, else vfs.
    #[arg(long, global = true, value_enum)]
    driver: Option<DriverArg>,
    /// Store new layers' files under these user-namespace uids:
    /// CONTAINER:HOST:SIZE, repeatable (containers-storage's remap-uids).
    #[arg(long, global = true, value_name = "CONTAINER:HOST:SIZE", value_parser = parse_id_map)]
    uidmap: Vec<IdMap>,
    /// The same for gids (remap-gids).
    #[arg(long, global = true, value_name = "CONTAINER:HOST:SIZE", value_parser = parse_id_map)]
    gidmap: Vec<IdMap>,
}

fn parse_id_map(text: &str) -> Result<IdMap, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let [container, host, size] = parts[..] else {
        return Err(format!("{text:?} is not CONTAINER:HOST:SIZE"));
    };
    let number = |v: &str| v.parse::<u32>().map(i64::from).map_err(|_| format!("{v:?} in {text:?} is not a 32-bit ID"));
    Ok(IdMap {
        container_id: number(container)?,
        host_id: number(host)?,
        size: number(size)?,
    })
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DriverArg {
    Vfs,
    Overlay,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum CompressArg {
    None,
    Gzip,
    Zstd,
}

#[derive(Subcommand, Debug)]
pub enum LayersCommand {
    /// Apply a layer tar (plain, gzip or zstd) as a new layer; prints its ID.
    Apply {
        /// The layer to build on (ID, name or unique prefix).
        #[arg(long)]
        parent: Option<String>,
        /// Names for the new layer (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// The ID to give the layer (64 hex digits); random when absent.
        #[arg(long)]
        id: Option<String>,
        /// Fail unless the uncompressed tar has this digest.
        #[arg(long)]
        diff_id: Option<String>,
        /// Return only once the layer's files are on disk (syncfs), so that
        /// a power loss right after cannot leave it listed without its data.
        #[arg(long)]
        sync: bool,
        /// The layer tar; stdin when `-`.
        tar: PathBuf,
    },
    /// Write a layer's tar: the original bit for bit when it was applied from one.
    Diff {
        layer: String,
        /// Where to write it; stdout when absent or `-`.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "none")]
        compress: CompressArg,
        /// Check the tar's sha256 against the layer's diffID.
        #[arg(long)]
        verify: bool,
    },
    /// List layers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Mount a layer (overlay: a kernel overlay mount; vfs: its directory); prints the path.
    Mount {
        layer: String,
        #[arg(long)]
        read_only: bool,
    },
    /// Drop one mount of a layer; the last one unmounts.
    Unmount {
        layer: String,
        /// Drop every mount.
        #[arg(long)]
        force: bool,
    },
    /// Delete a layer (it must have no child layer and no image on it).
    Delete { layer: String },
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// List images.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete an image, and its layers that no other image or layer uses
    /// (as `podman rmi` does); prints the IDs of the deleted layers.
    Delete { image: String },
}

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Also reassemble every layer and check its diffID.
    #[arg(long)]
    digests: bool,
    /// Remove what cannot be trusted (and everything built on it).
    #[arg(long)]
    repair: bool,
}

fn default_base(root_user: bool, var: &str, system: &str, fallback: impl FnOnce() -> PathBuf) -> PathBuf {
    if root_user {
        PathBuf::from(system)
    } else {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(v).join("strata"))
            .unwrap_or_else(fallback)
    }
}

impl StoreArgs {
    fn options(&self) -> StoreOptions {
        let root_user = rustix::process::geteuid().is_root();
        let default_root = default_base(root_user, "XDG_DATA_HOME", "/var/lib/strata", || {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".local/share/strata"))
                .unwrap_or_else(|| PathBuf::from(".strata"))
        });
        let root = self.root.clone().unwrap_or_else(|| default_root.clone());
        let runroot = self.runroot.clone().unwrap_or_else(|| {
            let base = default_base(root_user, "XDG_RUNTIME_DIR", "/run/strata", || {
                std::env::temp_dir().join(format!("strata-run-{}", rustix::process::geteuid().as_raw()))
            });
            // Stores must not share mount counts: one runroot per root.
            if root == default_root {
                base
            } else {
                let absolute = std::path::absolute(&root).unwrap_or_else(|_| root.clone());
                base.join("roots").join(short_hash(&absolute))
            }
        });
        let mut options = StoreOptions::new(root, runroot);
        options.driver = self.driver.map(|d| match d {
            DriverArg::Vfs => Driver::Vfs,
            DriverArg::Overlay => Driver::Overlay,
        });
        options.uid_map = self.uidmap.clone();
        options.gid_map = self.gidmap.clone();
        options
    }

    pub fn open(&self) -> Result<Store, BoxError> {
        Ok(Store::open(&self.options())?)
    }
}

fn short_hash(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(path.as_os_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn input(path: &Path) -> Result<Box<dyn std::io::Read + Send>, BoxError> {
    if path == Path::new("-") {
        Ok(Box::new(std::io::stdin()))
    } else {
        Ok(Box::new(
            std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
        ))
    }
}

pub fn run_layers(args: &StoreArgs, cmd: LayersCommand) -> Result<(), BoxError> {
    let store = args.open()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        LayersCommand::Apply {
            parent,
            names,
            id,
            diff_id,
            sync,
            tar,
        } => {
            let options = LayerOptions {
                id,
                parent,
                names,
                expected_diff_id: diff_id,
                sync,
                ..Default::default()
            };
            let layer = store.put_layer(&options, input(&tar)?)?;
            writeln!(out, "{}", layer.id)?;
        }
        LayersCommand::Diff {
            layer,
            output,
            compress,
            verify,
        } => {
            let options = DiffOptions {
                compression: match compress {
                    CompressArg::None => None,
                    CompressArg::Gzip => Some(Compression::Gzip),
                    CompressArg::Zstd => Some(Compression::Zstd),
                },
                verify,
            };
            match output.filter(|p| p != Path::new("-")) {
                Some(path) => {
                    let mut file = AtomicFile::create(&path)?;
                    store.diff(&layer, std::io::BufWriter::new(file.file()), options)?;
                    file.commit()?;
                }
                None => {
                    store.diff(&layer, stdout_file()?, options)?;
                }
            }
        }
        LayersCommand::List { json } => {
            let layers = store.layers()?;
            if json {
                serde_json::to_writer_pretty(&mut out, &layers)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:<64}  {:>12}  {:<30}  NAMES", "ID", "SIZE", "CREATED")?;
                for l in layers {
                    let size = if l.diff_digest.is_empty() { "-".to_string() } else { l.diff_size.to_string() };
                    writeln!(out, "{:<64}  {:>12}  {:<30}  {}", l.id, size, l.created, l.names.join(","))?;
                }
            }
        }
        LayersCommand::Mount { layer, read_only } => {
            let path = store.mount(&layer, read_only)?;
            writeln!(out, "{}", path.display())?;
        }
        LayersCommand::Unmount { layer, force } => {
            store.unmount(&layer, force)?;
        }
        LayersCommand::Delete { layer } => store.delete_layer(&layer)?,
    }
    Ok(())
}

pub fn run_images(args: &StoreArgs, cmd: ImagesCommand) -> Result<(), BoxError> {
    let store = args.open()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ImagesCommand::List { json } => {
            let images = store.images()?;
            if json {
                serde_json::to_writer_pretty(&mut out, &images)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:<64}  {:<64}  NAMES", "ID", "TOP LAYER")?;
                for i in images {
                    writeln!(out, "{:<64}  {:<64}  {}", i.id, i.layer, i.names.join(","))?;
                }
            }
        }
        ImagesCommand::Delete { image } => {
            for layer in store.delete_image_and_layers(&image)? {
                writeln!(out, "{layer}")?;
            }
        }
    }
    Ok(())
}

pub fn run_fsck(args: &StoreArgs, fsck: FsckArgs) -> Result<(), BoxError> {
    let store = args.open()?;
    let problems = store.fsck(fsck.digests)?;
    let mut out = std::io::stdout().lock();
    for p in &problems {
        writeln!(out, "{p}")?;
    }
    if fsck.repair {
        for removed in store.repair(&problems)? {
            writeln!(out, "removed {removed}")?;
        }
        return Ok(());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} problems found", problems.len()).into())
    }
}
