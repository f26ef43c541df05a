//! `strata overlay diff`: an overlay upperdir as an OCI layer tar.

use std::io::Write;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use clap::Subcommand;
use strata_overlaydiff::{
    Error, LowerView, ReadOnlyOverlay, TarSink, UpperDiffer, WalkDiffer, XattrNamespace, options,
};

use crate::output::{AtomicFile, BoxError, stdout_file};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the layer an overlay upperdir holds, as an OCI layer tar.
    Diff {
        /// Lower directories, top-most first, separated by `:`.
        #[arg(
            long,
            required_unless_present = "mount_options",
            conflicts_with = "mount_options"
        )]
        lower: Option<String>,
        /// The upperdir.
        #[arg(
            long,
            required_unless_present = "mount_options",
            conflicts_with = "mount_options"
        )]
        upper: Option<PathBuf>,
        /// The overlay mount options instead (`lowerdir=…,upperdir=…,workdir=…`).
        #[arg(long)]
        mount_options: Option<String>,
        /// Compare the full lower and merged views instead of reading the
        /// upperdir alone (needs root: both views are mounted read-only).
        #[arg(long)]
        walk: bool,
        /// Where to write the tar; stdout when absent or `-`.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn open(path: &Path) -> Result<Dir, BoxError> {
    Dir::open_ambient_dir(path, ambient_authority())
        .map_err(|e| format!("cannot open {}: {e}", path.display()).into())
}

pub fn run(cmd: Command) -> Result<(), BoxError> {
    let Command::Diff {
        lower,
        upper,
        mount_options,
        walk,
        output,
    } = cmd;
    let (lowers, upper, xattrs) = match mount_options {
        Some(text) => {
            let o = options::parse(&text)?;
            let upper = o
                .upper
                .clone()
                .ok_or("the mount options name no upperdir")?;
            if o.redirect_dir || o.metacopy {
                eprintln!("strata: note: redirect_dir/metacopy mounts are diffed by walking");
            }
            (o.lowers, upper, o.xattrs)
        }
        None => {
            let lowers = options::parse(&format!("lowerdir={}", lower.unwrap_or_default()))?.lowers;
            (
                lowers,
                upper.ok_or("--upper is required")?,
                XattrNamespace::Trusted,
            )
        }
    };
    match output.filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            let mut dest = AtomicFile::create(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            diff(&lowers, &upper, xattrs, walk, dest.file())?;
            dest.commit()?;
        }
        None => diff(
            &lowers,
            &upper,
            xattrs,
            walk,
            std::io::BufWriter::new(stdout_file()?),
        )?,
    }
    Ok(())
}

fn diff<W: Write>(
    lowers: &[PathBuf],
    upper: &Path,
    xattrs: XattrNamespace,
    walk: bool,
    out: W,
) -> Result<(), BoxError> {
    let mut sink = TarSink::new(out);
    if !walk {
        let lower_dirs = lowers
            .iter()
            .map(|p| open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let view = LowerView::new(lower_dirs, xattrs);
        let upper_dir = open(upper)?;
        let differ = UpperDiffer::new(&upper_dir, &view, xattrs);
        match differ.check() {
            Ok(()) => {
                differ.diff(&mut sink)?;
                sink.finish()?.flush()?;
                return Ok(());
            }
            Err(e @ Error::NeedsWalk { .. }) => eprintln!("strata: note: {e}; walking instead"),
            Err(e) => return Err(e.into()),
        }
    }
    // The lower view and the merged view, as read-only overlay mounts.
    let old = ReadOnlyOverlay::mount(lowers)?;
    let mut merged_layers = vec![upper.to_path_buf()];
    merged_layers.extend(lowers.iter().cloned());
    let new = ReadOnlyOverlay::mount(&merged_layers)?;
    WalkDiffer::new(&open(old.path())?, &open(new.path())?).diff(&mut sink)?;
    sink.finish()?.flush()?;
    Ok(())
}
