//! `strata`: container-image layer storage from the command line.

mod convert;
mod demo;
mod export;
mod fsverity;
mod log;
mod output;
mod overlay;
mod progress;
mod pull;
mod store;
mod tar_split;
mod toc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Container-image layer storage: tar-split, layers, partial pulls"
)]
struct Cli {
    #[command(flatten)]
    store: store::StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Split a tar stream into metadata and payloads, and put it back together bit for bit.
    #[command(subcommand, name = "tar-split")]
    TarSplit(tar_split::Command),
    /// Enable, measure and compute fs-verity digests.
    #[command(subcommand)]
    Fsverity(fsverity::Command),
    /// Convert a layer tar (plain, gzip or zstd) to zstd:chunked; prints the descriptor.
    Convert(convert::Args),
    /// Tables of contents of zstd:chunked layers.
    #[command(subcommand)]
    Toc(toc::Command),
    /// Overlay upperdirs as OCI layers.
    #[command(subcommand)]
    Overlay(overlay::Command),
    /// Layers in a containers-storage store (shared with podman).
    #[command(subcommand)]
    Layers(store::LayersCommand),
    /// Images in a containers-storage store.
    #[command(subcommand)]
    Images(store::ImagesCommand),
    /// Pull an image into the store: only what local layers lack is fetched.
    Pull(pull::Args),
    /// Write a stored image to an OCI layout, layers rebuilt bit for bit.
    Export(export::Args),
    /// Push a stored image to a registry, layers rebuilt bit for bit.
    Push(export::PushArgs),
    /// Check a store's records against the disk, one problem per line.
    Fsck(store::FsckArgs),
    /// Round-trip a tar through tar-split and check every byte comes back.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = log::init() {
        eprintln!("strata: error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::TarSplit(cmd) => tar_split::run(cmd),
        Command::Fsverity(cmd) => fsverity::run(cmd),
        Command::Overlay(cmd) => overlay::run(cmd),
        Command::Toc(cmd) => toc::run(cmd),
        Command::Convert(args) => convert::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Layers(cmd) => store::run_layers(&cli.store, cmd),
        Command::Images(cmd) => store::run_images(&cli.store, cmd),
        Command::Fsck(args) => store::run_fsck(&cli.store, args),
        Command::Pull(args) => pull::run(&cli.store, args),
        Command::Export(args) => export::run(&cli.store, args),
        Command::Push(args) => export::run_push(&cli.store, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`strata … | head`) is not an error worth a message.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("strata: error: {}", output::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
