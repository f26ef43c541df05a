//! `strata demo`: the main job on the example image that ships in the
//! repository (examples/app, an OCI layout): pull v1, then v2, into a
//! fresh store, and show how little of v2 had to be fetched.
//! `strata demo --tar-split [TAR]`: the tar-split round trip on an archive
//! the command builds (or one the user names), checked byte for byte.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};
use strata_tarsplit::{
    DirGetter, DirPutter, assemble, disassemble, gzip_metadata, open_metadata, sample,
};

use crate::output::BoxError;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show the tar-split round trip instead of a partial pull.
    #[arg(long)]
    tar_split: bool,
    /// With --tar-split: a tar to round-trip instead of the built-in sample.
    tar: Option<PathBuf>,
    /// Keep the store (or the tar-split metadata and payloads) in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// The OCI layout with tags v1 and v2 to pull (default: the example
    /// image of the source tree).
    #[arg(long)]
    layout: Option<PathBuf>,
}

/// Where the example image is in the source tree this binary was built from.
fn example_layout() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/app")
}

fn pull_demo(args: &Args) -> Result<(), BoxError> {
    use strata::chunkfetch::Reference;
    use strata_layerstore::{Driver, Store, StoreOptions};

    let layout = args.layout.clone().unwrap_or_else(example_layout);
    let layout = layout.canonicalize().unwrap_or(layout);
    if !layout.join("index.json").exists() {
        return Err(format!(
            "no example image at {} (run from a strata source tree, or pass --layout DIR with tags v1 and v2)",
            layout.display()
        )
        .into());
    }
    let temp;
    let root = match &args.keep {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut options = StoreOptions::new(root.join("graph"), root.join("run"));
    // vfs works anywhere, without privileges.
    options.driver = Some(Driver::Vfs);
    let store = Store::open(&options)?;
    println!("strata demo: partial pulls from an OCI layout into a store at {}", root.display());
    for tag in ["v1", "v2"] {
        let reference = Reference::parse(&format!("oci:{}:{tag}", layout.display()))?;
        println!("pull {reference}");
        let pull_options = strata::PullOptions {
            progress: Some(std::sync::Arc::new(|e: strata::PullEvent<'_>| {
                if let strata::PullEvent::Layer(l) = e {
                    println!("  {}", crate::pull::layer_line(l));
                }
            })),
            ..strata::PullOptions::default()
        };
        let report = strata::pull(&reference, &store, &pull_options)?;
        println!("  {}", crate::pull::summary(&report));
    }
    println!("every layer's diffID was checked against its image config");
    if args.keep.is_some() {
        println!("`strata --root {} --driver vfs layers list` shows the layers", root.join("graph").display());
    }
    Ok(())
}

/// Counts and hashes what is written through it.
struct Digester {
    hasher: Sha256,
    bytes: u64,
}

impl Digester {
    fn new() -> Self {
        Digester {
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn hex(self) -> String {
        self.hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Write for Digester {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn run(args: Args) -> Result<(), BoxError> {
    if !args.tar_split {
        if args.tar.is_some() {
            return Err("a TAR argument goes with --tar-split".into());
        }
        return pull_demo(&args);
    }
    let (input, what): (Box<dyn Read>, String) = match &args.tar {
        Some(path) => (
            Box::new(File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?),
            path.display().to_string(),
        ),
        None => (
            Box::new(io::Cursor::new(sample::every_entry_kind())),
            "built-in sample (GNU long names, PAX records and xattrs, hard links, symlinks, devices, a FIFO, \
             a non-UTF-8 name, old-GNU and PAX 1.0 sparse files, record padding)"
                .to_string(),
        ),
    };
    let temp;
    let work = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let files_dir = work.join("files");
    std::fs::create_dir_all(&files_dir)?;
    let metadata_path = work.join("tar-data.json.gz");

    println!("strata demo: tar-split round trip");
    println!("  archive   {what}");

    let files = Dir::open_ambient_dir(&files_dir, ambient_authority())?;
    let mut original = Digester::new();
    let mut metadata = gzip_metadata(File::create(&metadata_path)?);
    let split = disassemble(
        input,
        &mut original,
        &mut metadata,
        &mut DirPutter::new(files.try_clone()?),
    )?;
    metadata.finish()?.finish()?;
    let metadata_size = std::fs::metadata(&metadata_path)?.len();
    let (original_size, original_hash) = (original.bytes, original.hex());
    println!(
        "  disasm    {original_size} bytes, {} entries, sha256:{original_hash}",
        split.entries
    );
    println!(
        "            metadata {metadata_size} bytes gzip'd -> {}",
        metadata_path.display()
    );
    println!(
        "            payloads {} bytes -> {}",
        split.payload_size,
        files_dir.display()
    );

    let mut rebuilt = Digester::new();
    assemble(
        open_metadata(File::open(&metadata_path)?)?,
        &mut DirGetter::new(files),
        &mut rebuilt,
    )?;
    let (rebuilt_size, rebuilt_hash) = (rebuilt.bytes, rebuilt.hex());
    println!("  asm       {rebuilt_size} bytes, sha256:{rebuilt_hash}");
    if rebuilt_hash != original_hash || rebuilt_size != original_size {
        return Err("reassembled tar differs from the original".into());
    }
    println!("  result    identical");
    Ok(())
}
