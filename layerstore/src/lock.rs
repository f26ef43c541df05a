//! containers-storage's lock files: whole-file fcntl record locks plus the
//! 64-byte last-writer token at the start of the file.
//!
//! strata takes open-file-description (OFD) locks. They conflict with the
//! POSIX record locks podman takes, and, unlike POSIX locks, they belong to
//! the open file rather than to the process: each guard opens its own
//! descriptor, so threads of one process exclude each other as processes
//! do, and closing some other descriptor of the file releases nothing.
//! `flock(2)` would not do: it does not exclude fcntl lockers at all.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicU64, Ordering};

/// The length of the last-writer token.
pub const TOKEN_LEN: usize = 64;

/// The bytes of a last-writer token (all zero when the file has none yet).
pub type Token = [u8; TOKEN_LEN];

/// Which lock a guard holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// A held lock on one lock file. Dropping it closes the descriptor, which
/// releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
    kind: LockKind,
}

fn ofd_lock(file: &File, kind: libc::c_short, wait: bool) -> io::Result<()> {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0; // the whole file, however it grows
    let cmd = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    loop {
        // SAFETY: the descriptor is open for the call's duration and
        // `lock` is a valid, initialised `struct flock`.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &lock as *const libc::flock) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // containers-storage retries failed waits every 10 ms too.
            Some(libc::ENOLCK) if wait => std::thread::sleep(Duration::from_millis(10)),
            _ => return Err(err),
        }
    }
}

fn open_lock_file(path: &Path, writable: bool) -> io::Result<File> {
    if writable && let Some(parent) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .create(writable)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

use std::os::unix::fs::DirBuilderExt;

impl LockGuard {
    /// Waits for the lock on `path`, creating the file (and its directory)
    /// when `writable`. Read-only stores open it read-only and can take only
    /// shared locks.
    pub fn acquire(path: &Path, kind: LockKind, writable: bool) -> io::Result<LockGuard> {
        Self::lock(path, kind, writable, true).map(|g| g.expect("blocking lock"))
    }

    /// Takes the lock only if nobody holds a conflicting one.
    pub fn try_acquire(path: &Path, kind: LockKind, writable: bool) -> io::Result<Option<LockGuard>> {
        Self::lock(path, kind, writable, false)
    }

    fn lock(path: &Path, kind: LockKind, writable: bool, wait: bool) -> io::Result<Option<LockGuard>> {
        let file = open_lock_file(path, writable)?;
        let l_type = match kind {
            LockKind::Shared => libc::F_RDLCK,
            LockKind::Exclusive => libc::F_WRLCK,
        } as libc::c_short;
        match ofd_lock(&file, l_type, wait) {
            Ok(()) => Ok(Some(LockGuard {
                file,
                path: path.to_owned(),
                kind,
            })),
            Err(e) if !wait && matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(None),
            Err(e) => Err(with_path(path, e)),
        }
    }

    pub fn kind(&self) -> LockKind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current last-writer token, read through the locked descriptor.
    /// `None` while the file holds fewer than 64 bytes (never written).
    pub fn token(&self) -> io::Result<Option<Token>> {
        let mut token = [0u8; TOKEN_LEN];
        let mut filled = 0;
        while filled < TOKEN_LEN {
            match self.file.read_at(&mut token[filled..], filled as u64) {
                Ok(0) => return Ok(None),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(with_path(&self.path, e)),
            }
        }
        Ok(Some(token))
    }

    /// Records a write: a fresh token at offset 0, written in place as
    /// containers-storage does (no truncation, no rename).
    pub fn touch(&self) -> io::Result<Token> {
        assert_eq!(self.kind, LockKind::Exclusive, "touching a lock held shared");
        let token = new_token()?;
        self.file
            .write_all_at(&token, 0)
            .map_err(|e| with_path(&self.path, e))?;
        Ok(token)
    }

    /// The lock file's modification time (moves with every token).
    pub fn modified(&self) -> io::Result<SystemTime> {
        self.file.metadata()?.modified()
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

static TOKENS_MADE: AtomicU64 = AtomicU64::new(0);

/// A token laid out as containers-storage makes them: wall-clock
/// nanoseconds, a per-process counter, the pid, 44 random bytes. Only byte
/// equality matters to readers.
pub fn new_token() -> io::Result<Token> {
    let mut token = [0u8; TOKEN_LEN];
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let counter = TOKENS_MADE.fetch_add(1, Ordering::Relaxed) + 1;
    token[0..8].copy_from_slice(&nanos.to_le_bytes());
    token[8..16].copy_from_slice(&counter.to_le_bytes());
    token[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    getrandom::fill(&mut token[20..]).map_err(io::Error::other)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_locks_exclude_threads_of_one_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("layers.lock");
        let held = LockGuard::acquire(&path, LockKind::Exclusive, true).expect("lock");
        assert!(LockGuard::try_acquire(&path, LockKind::Shared, true).expect("try").is_none());
        assert!(LockGuard::try_acquire(&path, LockKind::Exclusive, true).expect("try").is_none());
        drop(held);
        let a = LockGuard::try_acquire(&path, LockKind::Shared, true).expect("try");
        let b = LockGuard::try_acquire(&path, LockKind::Shared, true).expect("try");
        assert!(a.is_some() && b.is_some(), "shared locks coexist");
        assert!(LockGuard::try_acquire(&path, LockKind::Exclusive, true).expect("try").is_none());
    }

    #[test]
    fn closing_another_descriptor_keeps_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images.lock");
        let _held = LockGuard::acquire(&path, LockKind::Exclusive, true).expect("lock");
        drop(std::fs::File::open(&path).expect("open"));
        assert!(LockGuard::try_acquire(&path, LockKind::Exclusive, true).expect("try").is_none());
    }

    #[test]
    fn token_is_64_bytes_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let guard = LockGuard::acquire(&path, LockKind::Exclusive, true).expect("lock");
        assert_eq!(guard.token().expect("token"), None, "an empty file has no token");
        let first = guard.touch().expect("touch");
        assert_eq!(guard.token().expect("token"), Some(first));
        let second = guard.touch().expect("touch");
        assert_ne!(first, second);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 64);
        assert_eq!(u32::from_le_bytes(second[16..20].try_into().expect("4")), std::process::id());
    }
}
