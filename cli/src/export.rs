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
        Reference::Registry(_) => return Err("export writes an OCI layout (oci:DIR[:TAG]); `strata push` writes to a registry".into()),
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
            progress: Some(crate::progress::transfer(!args.json)),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.manifest_digest);
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The image: ID, name or unique ID prefix.
    image: String,
    /// docker://HOST[:PORT]/NAME[:TAG]
    destination: String,
    /// Layer compression: none, gzip, zstd or zstd:chunked.
    #[arg(long, default_value = "gzip")]
    compress: String,
    /// Check TLS certificates; `false` talks plain HTTP (a local registry).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// USER:PASSWORD for the registry.
    #[arg(long)]
    creds: Option<String>,
    /// With zstd:chunked: skip the TOC annotation keys podman 4.3 reads.
    #[arg(long)]
    no_legacy_annotations: bool,
    /// Upload layers in PATCH requests of this many bytes, each retried on
    /// a transient failure (default: one streamed request per layer).
    #[arg(long, value_name = "BYTES")]
    upload_chunk_size: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_push(store_args: &StoreArgs, args: PushArgs) -> Result<(), BoxError> {
    let compression = LayerCompression::parse(&args.compress)
        .ok_or_else(|| format!("--compress {}: expected none, gzip, zstd or zstd:chunked", args.compress))?;
    let destination = match Reference::parse(&args.destination)? {
        Reference::Registry(r) => r,
        Reference::Layout { .. } => return Err("push writes to a registry (docker://…); `strata export` writes an OCI layout".into()),
    };
    let credentials = match &args.creds {
        Some(c) => Some(c.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())).ok_or("--creds takes USER:PASSWORD")?),
        None => None,
    };
    let store = store_args.open()?;
    let report = strata::push(
        &store,
        &args.image,
        &destination,
        &strata::PushOptions {
            registry: strata::chunkfetch::RegistryOptions {
                tls_verify: args.tls_verify,
                credentials,
                upload_chunk_size: args.upload_chunk_size,
                ..Default::default()
            },
            export: ExportOptions {
                compression,
                legacy_annotations: !args.no_legacy_annotations,
                progress: Some(crate::progress::transfer(!args.json)),
            },
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} {}: {} blobs uploaded ({} bytes), {} already there, {} mounted from other repositories",
            destination, report.manifest_digest, report.blobs_uploaded, report.bytes_uploaded, report.blobs_present, report.blobs_mounted
        );
    }
    Ok(())
}
