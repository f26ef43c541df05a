//! `strata toc inspect`: a zstd:chunked blob's TOC as JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use strata_toc::estargz::{TOC_DIGEST_ANNOTATION, read_estargz};
use strata_toc::{Error, read_zstd_chunked};

use crate::output::BoxError;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the TOC of a zstd:chunked or eStargz blob as JSON, after checking it.
    Inspect {
        blob: PathBuf,
        /// The layer descriptor's annotations (a JSON object, or a
        /// descriptor with an `annotations` field): the TOC is then located
        /// by them and its digest checked. Without, the footer locates it.
        #[arg(long)]
        annotations: Option<String>,
    },
}

fn parse_annotations(text: &str) -> Result<BTreeMap<String, String>, BoxError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("--annotations is not JSON: {e}"))?;
    let object = value.get("annotations").unwrap_or(&value);
    Ok(serde_json::from_value(object.clone())
        .map_err(|e| format!("--annotations is not a string map: {e}"))?)
}

pub fn run(cmd: Command) -> Result<(), BoxError> {
    let Command::Inspect { blob, annotations } = cmd;
    let file =
        std::fs::File::open(&blob).map_err(|e| format!("cannot open {}: {e}", blob.display()))?;
    let annotations = annotations.as_deref().map(parse_annotations).transpose()?;
    let estargz_declared = annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(TOC_DIGEST_ANNOTATION));
    let chunked = if estargz_declared {
        Err(Error::BadFooter("declared eStargz"))
    } else {
        read_zstd_chunked(&file, annotations.as_ref())
    };
    let read = match chunked {
        Ok(read) => read,
        // No zstd:chunked footer: an eStargz blob, perhaps.
        Err(Error::BadFooter(_)) => {
            let e = read_estargz(&file, annotations.as_ref()).map_err(|e| match e {
                Error::BadFooter(_) => {
                    format!(
                        "{}: neither a zstd:chunked nor an eStargz blob (no footer)",
                        blob.display()
                    )
                }
                e => format!("{}: {e}", blob.display()),
            })?;
            return print(&Report {
                format: "estargz",
                toc_digest: &e.toc_digest,
                verified: e.verified,
                tar_split_bytes: None,
                toc: &e.toc,
            });
        }
        Err(e) => return Err(format!("{}: {e}", blob.display()).into()),
    };
    print(&Report {
        format: "zstd:chunked",
        toc_digest: &read.toc_digest,
        verified: read.verified,
        tar_split_bytes: read.tar_split.as_ref().map(|t| t.len()),
        toc: &read.toc,
    })
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    format: &'static str,
    toc_digest: &'a str,
    verified: bool,
    tar_split_bytes: Option<u64>,
    toc: &'a strata_toc::Toc,
}

fn print(report: &Report<'_>) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, report)?;
    writeln!(out)?;
    Ok(())
}
