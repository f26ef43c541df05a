//! `strata pull REF`: an image into the store, partially where its layers
//! carry a TOC.

use strata::chunkfetch::{Reference, RegistryOptions};
use strata::{How, LayerReport, PullOptions};

use crate::store::StoreArgs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// docker://HOST[:PORT]/NAME[:TAG|@DIGEST] or oci:DIR[:TAG]
    reference: String,
    /// Check TLS certificates; `false` talks plain HTTP (a local registry).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// USER:PASSWORD for the registry.
    #[arg(long)]
    creds: Option<String>,
    /// Fetch every missing layer whole, even when it has a TOC.
    #[arg(long)]
    no_partial: bool,
    /// Fetch a layer whole when local layers lack at least this share of
    /// its payload: one streamed request beats many ranges then. Above 1:
    /// never.
    #[arg(long, value_name = "SHARE", default_value_t = 0.75)]
    fetch_whole_at: f64,
    /// Hard-link files found whole in local layers when their metadata
    /// matches, instead of cloning or copying them (containers-storage's
    /// `use_hard_links`): the layers then share those inodes.
    #[arg(long)]
    use_hard_links: bool,
    /// Index the chunks of layers that come whole without a TOC (gzip), so
    /// later partial pulls reuse the unchanged parts of changed files (as
    /// containers-storage's `convert_images` allows); costs a second hash.
    #[arg(long)]
    index_chunks: bool,
    /// Hash each partially pulled layer's tar against the config's diffID;
    /// `false` trusts it where the TOC, the tar-split and every file were
    /// checked (containers-storage's behaviour), saving a SHA-256 pass.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    verify_diff_ids: bool,
    /// fs-verity on every file the pull writes: `disabled`, `if-supported`
    /// (where the filesystem can) or `required` (a layer whose filesystem
    /// cannot fails, and is not kept).
    #[arg(long, value_name = "POLICY", default_value = "disabled")]
    fs_verity: strata::layerstore::FsVerity,
    /// Missing pieces closer than this many bytes are fetched as one range,
    /// the bytes between included.
    #[arg(long, value_name = "BYTES", default_value_t = strata::chunkfetch::Planner::default().merge_gap)]
    merge_gap: u64,
    /// Most ranges in one request (a registry refusing as many gets fewer).
    #[arg(long, value_name = "N", default_value_t = strata::chunkfetch::Planner::default().max_ranges)]
    max_ranges: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

pub(crate) fn layer_line(l: &LayerReport) -> String {
    let short = l.digest.trim_start_matches("sha256:").get(..12).unwrap_or(&l.digest);
    let line = match l.how {
        How::Present => format!("{short}: already present"),
        How::Full => match &l.note {
            Some(note) => format!("{short}: fetched whole, {} ({note})", size(l.bytes_fetched)),
            None => format!("{short}: fetched whole, {}", size(l.bytes_fetched)),
        },
        How::Partial => format!(
            "{short}: partial, fetched {} of {}, reused {} ({}/{} files){}",
            size(l.bytes_fetched),
            size(l.blob_size),
            size(l.bytes_reused),
            l.files_reused,
            l.files,
            if l.diff_id_unchecked { ", diffID taken on trust" } else { "" }
        ),
    };
    if l.fs_verity { format!("{line}, fs-verity on") } else { line }
}

pub fn run(store_args: &StoreArgs, args: Args) -> Result<(), BoxError> {
    let reference = Reference::parse(&args.reference)?;
    let store = store_args.open()?;
    let credentials = match &args.creds {
        Some(c) => Some(
            c.split_once(':')
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
                .ok_or("--creds takes USER:PASSWORD")?,
        ),
        None => None,
    };
    let options = PullOptions {
        registry: RegistryOptions {
            tls_verify: args.tls_verify,
            credentials,
            ..RegistryOptions::default()
        },
        partial: !args.no_partial,
        full_fetch_share: args.fetch_whole_at,
        hard_links: args.use_hard_links,
        index_chunks: args.index_chunks,
        verify_diff_ids: args.verify_diff_ids,
        fs_verity: args.fs_verity,
        planner: strata::chunkfetch::Planner {
            merge_gap: args.merge_gap,
            max_ranges: args.max_ranges.max(1),
            ..strata::chunkfetch::Planner::default()
        },
        progress: Some(crate::progress::pull((!args.json).then_some(layer_line as fn(&LayerReport) -> String))),
        ..PullOptions::default()
    };
    let report = strata::pull(&reference, &store, &options)?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["bytes_fetched"] = report.bytes_fetched().into();
        value["bytes_reused"] = report.bytes_reused().into();
        value["bytes_needed"] = report.bytes_needed().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", summary(&report));
    }
    Ok(())
}

/// One line: what was fetched of what the missing layers weigh.
pub(crate) fn summary(report: &strata::PullReport) -> String {
    let needed = report.bytes_needed();
    let fetched = report.bytes_fetched();
    let saved = if needed > 0 { 100.0 * (1.0 - fetched as f64 / needed as f64) } else { 100.0 };
    format!(
        "{} ({}): fetched {} of {} ({saved:.1}% saved), reused {} from local layers",
        report.names.first().map(String::as_str).unwrap_or("image"),
        &report.image_id[..12.min(report.image_id.len())],
        size(fetched),
        size(needed),
        size(report.bytes_reused())
    )
}
