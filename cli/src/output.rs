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
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

/// A file written under a temporary name beside its destination and renamed
/// into place by [`AtomicFile::commit`]; dropped uncommitted, it vanishes.
pub struct AtomicFile {
    temp: NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new().prefix(".strata-").tempfile_in(dir)?;
        Ok(AtomicFile { temp, dest: dest.to_path_buf() })
    }

    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    pub fn commit(self) -> io::Result<()> {
        self.temp.as_file().sync_all()?;
        self.temp.persist(&self.dest).map_err(|e| e.error)?;
        Ok(())
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
