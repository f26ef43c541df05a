//! `strata export IMAGE oci:DIR[:TAG]`: a stored image as an OCI layout.

use strata::chunkfetch::Reference;
use strata::{ExportOptions, LayerCompression};

use crate::store::StoreArgs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image: ID, name or unique ID prefix.
    image: String,
    /// oci:DIR[:TAG]
    destination: String,
    /// Layer compression: none, gzip, zstd or zstd:chunked.
    #[arg(long, default_value = "gzip")]
    compress: String,
    /// With zstd:chunked: also write the TOC annotation keys podman 4.3 reads.
    #[arg(long)]
    legacy_annotations: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store_args: &StoreArgs, args: Args) -> Result<(), BoxError> {
    let compression = LayerCompression::parse(&args.compress)
        .ok_or_else(|| format!("--compress {}: expected none, gzip, zstd or zstd:chunked", args.compress))?;
    let (dir, tag) = match Reference::parse(&args.destination)? {
        Reference::Layout { dir, tag } => (dir, tag),
        Reference::Registry(_) => return Err("export writes an OCI layout (oci:DIR[:TAG]); pushing to a registry is not built yet".into()),
    };
    let store = store_args.open()?;
    let report = strata::export_to_layout(
        &store,
        &args.image,
        &dir,
        tag.as_deref(),
        &ExportOptions {
            compression,
            legacy_annotations: args.legacy_annotations,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for l in &report.layers {
            eprintln!("{} -> {} ({} bytes)", l.diff_id, l.digest, l.size);
        }
        println!("{}", report.manifest_digest);
    }
    Ok(())
}
