//! `strata convert --to zstd:chunked INPUT -o OUTPUT`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use strata_toc::{WriteOptions, write_zstd_chunked};

use crate::output::{AtomicFile, BoxError};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The target format: `zstd:chunked` or `estargz`.
    #[arg(long, default_value = "zstd:chunked")]
    to: String,
    /// A layer tar: plain, gzip or zstd (detected).
    input: PathBuf,
    /// Where to write the blob.
    #[arg(short, long)]
    output: PathBuf,
    /// Compression level (zstd; for eStargz, gzip's 0–9, default 6).
    #[arg(long)]
    level: Option<i32>,
    /// Also write the legacy `io.containers.` annotation keys (podman 4.3).
    #[arg(long)]
    legacy_annotations: bool,
    /// Threads compressing (default: one per core). The blob is the same
    /// whatever the number.
    #[arg(long)]
    threads: Option<usize>,
}

/// The input, decompressed if it is gzip or zstd.
fn open_layer(path: &PathBuf) -> Result<Box<dyn Read>, BoxError> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut input = BufReader::with_capacity(128 << 10, file);
    let head = input.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
    } else {
        Box::new(input)
    })
}

pub fn run(args: Args) -> Result<(), BoxError> {
    if !matches!(args.to.as_str(), "zstd:chunked" | "estargz") {
        return Err(format!(
            "unsupported target format {:?} (supported: zstd:chunked, estargz)",
            args.to
        )
        .into());
    }
    let input = open_layer(&args.input)?;
    let mut dest = AtomicFile::create(&args.output)
        .map_err(|e| format!("cannot create {}: {e}", args.output.display()))?;
    if args.to == "estargz" {
        let options = strata_toc::estargz::EstargzOptions {
            level: args.level.map_or(6, |l| l.clamp(0, 9) as u32),
            ..Default::default()
        };
        let written = strata_toc::estargz::write_estargz(
            input,
            std::io::BufWriter::with_capacity(1 << 20, dest.file()),
            &options,
        )
        .map_err(|e| format!("{}: {e}", args.input.display()))?;
        dest.commit()?;
        return print_report(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": written.blob_digest,
            "size": written.blob_size,
            "annotations": written.annotations,
            "diffID": written.diff_id,
            "uncompressedSize": written.uncompressed_size,
        }));
    }
    let options = WriteOptions {
        level: args.level.unwrap_or(3),
        legacy_annotations: args.legacy_annotations,
        threads: args.threads.unwrap_or(WriteOptions::default().threads),
    };
    let written = write_zstd_chunked(
        input,
        std::io::BufWriter::with_capacity(1 << 20, dest.file()),
        &options,
    )
    .map_err(|e| format!("{}: {e}", args.input.display()))?;
    dest.commit()?;
    let report = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
        "digest": written.blob_digest,
        "size": written.blob_size,
        "annotations": written.annotations,
        "diffID": written.diff_id,
        "uncompressedSize": written.uncompressed_size,
    });
    print_report(report)
}

fn print_report(report: serde_json::Value) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report)?;
    writeln!(out)?;
    Ok(())
}
