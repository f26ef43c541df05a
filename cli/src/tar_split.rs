//! `strata tar-split disasm|asm`, shaped like the Go `tar-split` tool.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use clap::Subcommand;
use flate2::write::GzEncoder;
use strata_tarsplit::{
    DirGetter, DiscardPutter, MetadataWriter, assemble, disassemble, open_metadata,
};

use crate::output::{AtomicFile, BoxError, stdout_file};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read a tar, write its metadata, and copy the tar to stdout.
    #[command(alias = "d")]
    Disasm {
        /// Where to write the metadata (gzip'd JSON lines).
        #[arg(long, default_value = "tar-data.json.gz")]
        output: PathBuf,
        /// Do not copy the tar stream to stdout.
        #[arg(long)]
        no_stdout: bool,
        /// Write the metadata as plain JSON lines instead of gzip.
        #[arg(long)]
        no_gzip: bool,
        /// The tar to read; stdin when absent or `-`.
        tar: Option<PathBuf>,
    },
    /// Reassemble a tar from its metadata and the files under a directory.
    #[command(alias = "a")]
    Asm {
        /// The metadata to read (gzip'd or plain JSON lines).
        #[arg(long, default_value = "tar-data.json.gz")]
        input: PathBuf,
        /// The directory holding the extracted files.
        #[arg(long)]
        path: PathBuf,
        /// Where to write the tar; stdout when `-`.
        #[arg(long, default_value = "-")]
        output: PathBuf,
        /// Gzip the reassembled tar.
        #[arg(long)]
        compress: bool,
    },
}

pub fn run(cmd: Command) -> Result<(), BoxError> {
    match cmd {
        Command::Disasm {
            output,
            no_stdout,
            no_gzip,
            tar,
        } => disasm(output, no_stdout, no_gzip, tar),
        Command::Asm {
            input,
            path,
            output,
            compress,
        } => asm(input, path, output, compress),
    }
}

fn is_stdio(path: &Option<PathBuf>) -> bool {
    path.as_ref().is_none_or(|p| p.as_os_str() == "-")
}

fn disasm(
    output: PathBuf,
    no_stdout: bool,
    no_gzip: bool,
    tar: Option<PathBuf>,
) -> Result<(), BoxError> {
    let input: Box<dyn Read> = if is_stdio(&tar) {
        Box::new(io::stdin().lock())
    } else {
        let path = tar.as_deref().unwrap_or(std::path::Path::new("-"));
        Box::new(File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?)
    };
    let passthrough: Box<dyn Write> = if no_stdout {
        Box::new(io::sink())
    } else {
        Box::new(stdout_file()?)
    };
    let mut dest = AtomicFile::create(&output)
        .map_err(|e| format!("cannot create {}: {e}", output.display()))?;
    if no_gzip {
        let mut metadata = MetadataWriter::new(dest.file());
        disassemble(input, passthrough, &mut metadata, &mut DiscardPutter)?;
        metadata.finish()?;
    } else {
        let mut metadata =
            MetadataWriter::new(GzEncoder::new(dest.file(), flate2::Compression::default()));
        disassemble(input, passthrough, &mut metadata, &mut DiscardPutter)?;
        metadata.finish()?.finish()?;
    }
    dest.commit()?;
    Ok(())
}

fn asm(input: PathBuf, path: PathBuf, output: PathBuf, compress: bool) -> Result<(), BoxError> {
    let metadata =
        File::open(&input).map_err(|e| format!("cannot open {}: {e}", input.display()))?;
    let root = Dir::open_ambient_dir(&path, ambient_authority())
        .map_err(|e| format!("cannot open directory {}: {e}", path.display()))?;
    let mut getter = DirGetter::new(root);
    let entries = open_metadata(metadata)?;
    if output.as_os_str() == "-" {
        write_tar(entries, &mut getter, stdout_file()?, compress)
    } else {
        let mut dest = AtomicFile::create(&output)
            .map_err(|e| format!("cannot create {}: {e}", output.display()))?;
        write_tar(entries, &mut getter, dest.file(), compress)?;
        dest.commit()?;
        Ok(())
    }
}

fn write_tar<I, W>(
    entries: I,
    getter: &mut DirGetter,
    out: W,
    compress: bool,
) -> Result<(), BoxError>
where
    I: IntoIterator<Item = strata_tarsplit::Result<strata_tarsplit::Entry>>,
    W: Write,
{
    if compress {
        let mut gz = GzEncoder::new(out, flate2::Compression::default());
        assemble(entries, getter, &mut gz)?;
        gz.finish()?;
    } else {
        assemble(entries, getter, out)?;
    }
    Ok(())
}
