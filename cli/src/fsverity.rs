//! `strata fsverity digest|enable|measure`, with fsverity-utils' output.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use strata_fsverity::{Params, digest_with, enable_with, measure};

use crate::output::BoxError;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compute the fs-verity digest of files in user space (as `fsverity digest`).
    Digest {
        /// Merkle tree block size.
        #[arg(long, default_value_t = 4096)]
        block_size: usize,
        /// Salt, as hex.
        #[arg(long, value_parser = parse_hex)]
        salt: Option<Hex>,
        /// Print only the hex digest.
        #[arg(long)]
        compact: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Enable fs-verity on files (SHA-256); already-enabled files are fine.
    Enable {
        #[arg(long, default_value_t = 4096)]
        block_size: usize,
        #[arg(long, value_parser = parse_hex)]
        salt: Option<Hex>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the fs-verity digest the kernel holds for files (as `fsverity measure`).
    Measure {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Bytes given as hex on the command line.
#[derive(Clone, Debug)]
pub struct Hex(Vec<u8>);

fn parse_hex(s: &str) -> Result<Hex, String> {
    if !s.len().is_multiple_of(2) {
        return Err("hex needs an even number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("not hex: {s:?}")))
        .collect::<Result<_, _>>()
        .map(Hex)
}

fn open(path: &PathBuf) -> Result<File, BoxError> {
    File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()).into())
}

pub fn run(cmd: Command) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::Digest {
            block_size,
            salt,
            compact,
            files,
        } => {
            let params = Params::new(block_size, salt.as_ref().map_or(&[][..], |h| &h.0))?;
            for path in &files {
                let d = digest_with(open(path)?, &params)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if compact {
                    writeln!(out, "{}", d.hex())?;
                } else {
                    writeln!(out, "{d} {}", path.display())?;
                }
            }
        }
        Command::Enable {
            block_size,
            salt,
            files,
        } => {
            let params = Params::new(block_size, salt.as_ref().map_or(&[][..], |h| &h.0))?;
            for path in &files {
                enable_with(open(path)?, &params)
                    .map_err(|e| format!("cannot enable fs-verity on {}: {e}", path.display()))?;
            }
        }
        Command::Measure { files } => {
            for path in &files {
                let d = measure(open(path)?)
                    .map_err(|e| format!("cannot measure {}: {e}", path.display()))?;
                writeln!(out, "{d} {}", path.display())?;
            }
        }
    }
    Ok(())
}
