//! Where output goes: stdout without line buffering, or a file that only
//! appears, complete, once the command succeeds.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Standard output as a plain file: binary data goes straight to the
/// descriptor instead of through Rust's line-buffered `Stdout`.
pub fn stdout_file() -> io::Result<File> {
    let file = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    // A pipe of 64 KiB (the default) makes every large write wait for the
    // reader several times over; 1 MiB lets a tar stream flow. Not a pipe,
    // or not allowed: nothing changes.
    let _ = rustix::pipe::fcntl_setpipe_size(&file, 1 << 20);
    Ok(file)
}

/// An output file. A regular file is written under a temporary name beside
/// its destination and renamed into place by [`AtomicFile::commit`], so a
/// failed command leaves no partial file; dropped uncommitted, it vanishes.
/// Anything else that exists at the path (a device such as `/dev/null`, a
/// FIFO) is written directly.
pub enum AtomicFile {
    Temp { temp: NamedTempFile, dest: PathBuf },
    Direct(File),
}

impl AtomicFile {
    pub fn create(dest: &Path) -> io::Result<Self> {
        if std::fs::metadata(dest).is_ok_and(|m| !m.is_file()) {
            return Ok(AtomicFile::Direct(
                std::fs::OpenOptions::new().write(true).open(dest)?,
            ));
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".strata-")
            .tempfile_in(dir)?;
        Ok(AtomicFile::Temp {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn file(&mut self) -> &mut File {
        match self {
            AtomicFile::Temp { temp, .. } => temp.as_file_mut(),
            AtomicFile::Direct(file) => file,
        }
    }

    pub fn commit(self) -> io::Result<()> {
        match self {
            AtomicFile::Temp { temp, dest } => {
                temp.as_file().sync_all()?;
                temp.persist(&dest).map_err(|e| e.error)?;
                Ok(())
            }
            AtomicFile::Direct(mut file) => file.flush(),
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}
