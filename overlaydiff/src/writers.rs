//! Regular files written on threads of their own. The extracting thread
//! creates each file (so every name appears in the tar's order, and links,
//! renames and whiteouts see it) and hands its bytes and metadata over;
//! writing them, and the owner, xattrs, mode and times after, run beside
//! the parsing, decompressing and hashing of the rest of the layer.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::fs::{Mode, Timestamps};
use strata_tarsplit::Time;

use crate::{Error, Result};

/// Filesystem blocks of zeros are skipped, not written: they become holes
/// (a new file reads zeros there), as zero chunks do in containers-storage.
pub(crate) const HOLE_BLOCK: u64 = 4096;

/// What a file gets once its bytes are written.
#[derive(Debug)]
pub(crate) struct FileMeta {
    pub size: u64,
    pub owner: Option<(u32, u32)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Set explicitly (set-ID bits, or bits the umask took).
    pub mode: Option<u32>,
    pub mtime: Time,
}

enum Job {
    Start { file: File, path: Vec<u8> },
    Data { offset: u64, bytes: Vec<u8> },
    Finish(FileMeta),
}

/// Writes `bytes` at `offset` into a new file, leaving blocks of zeros
/// unwritten. Returns where the last write ended (or `written_end`).
pub(crate) fn write_skipping_zeros(out: &File, offset: u64, bytes: &[u8], mut written_end: u64) -> io::Result<u64> {
    let n = bytes.len();
    // Segments end at block boundaries; a run of segments holding data
    // goes out in one write.
    let mut run: Option<usize> = None;
    let mut start = 0;
    while start < n {
        let at = offset + start as u64;
        let len = ((HOLE_BLOCK - at % HOLE_BLOCK) as usize).min(n - start);
        let zeros = bytes[start..start + len].iter().all(|&b| b == 0);
        match (zeros, run) {
            (true, Some(from)) => {
                out.write_all_at(&bytes[from..start], offset + from as u64)?;
                written_end = at;
                run = None;
            }
            (false, None) => run = Some(start),
            _ => {}
        }
        start += len;
    }
    if let Some(from) = run {
        out.write_all_at(&bytes[from..], offset + from as u64)?;
        written_end = offset + n as u64;
    }
    Ok(written_end)
}

/// Gives a file written so far its size (it may end in a hole) and
/// metadata, through its descriptor.
pub(crate) fn finish_file(file: &File, written_end: u64, meta: &FileMeta) -> io::Result<()> {
    if written_end < meta.size {
        file.set_len(meta.size)?;
    }
    if let Some((uid, gid)) = meta.owner {
        rustix::fs::fchown(file, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    for (attr, value) in &meta.xattrs {
        rustix::fs::fsetxattr(file, attr.as_str(), value, rustix::fs::XattrFlags::empty())?;
    }
    // After chown, which clears set-ID bits.
    if let Some(mode) = meta.mode {
        rustix::fs::fchmod(file, Mode::from_raw_mode(mode))?;
    }
    let t = rustix::fs::Timespec {
        tv_sec: meta.mtime.secs,
        tv_nsec: meta.mtime.nanos.into(),
    };
    rustix::fs::futimens(
        file,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
    )?;
    Ok(())
}

/// The first failure of any writer, with the file it concerns.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Failure {
    fn set(&self, path: &[u8], source: io::Error) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Error::Io {
                path: String::from_utf8_lossy(path).into_owned(),
                source,
            });
        }
        self.failed.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<Error> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

fn work(batches: Receiver<Vec<Job>>, failure: Arc<Failure>, spare: Arc<Spare>) {
    let mut current: Option<(File, Vec<u8>)> = None;
    let mut written_end = 0u64;
    for job in batches.into_iter().flatten() {
        if failure.failed.load(Ordering::Acquire) {
            continue; // drained, so the extractor never blocks on a full queue
        }
        let result = match job {
            Job::Start { file, path } => {
                current = Some((file, path));
                written_end = 0;
                Ok(())
            }
            Job::Data { offset, bytes } => {
                let written = match &current {
                    Some((file, _)) => write_skipping_zeros(file, offset, &bytes, written_end).map(|end| written_end = end),
                    None => Err(io::Error::other("data for no file")),
                };
                spare.put(bytes);
                written
            }
            Job::Finish(meta) => match &current {
                Some((file, _)) => {
                    let done = finish_file(file, written_end, &meta);
                    if done.is_ok() {
                        current = None; // closes it
                    }
                    done
                }
                None => Err(io::Error::other("metadata for no file")),
            },
        };
        if let Err(e) = result {
            let path = current.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
            failure.set(&path, e);
        }
    }
}

/// Piece buffers the writers are done with, for the extractor to fill
/// again: a fresh one of `PIECE` bytes is a new mapping, whose pages the
/// kernel must fault in and zero, which costs more than the write.
#[derive(Default)]
struct Spare(Mutex<Vec<Vec<u8>>>);

impl Spare {
    /// More than the queues hold at once is never needed.
    const MAX: usize = 64;

    fn put(&self, mut bytes: Vec<u8>) {
        if bytes.capacity() != PIECE {
            return;
        }
        bytes.clear();
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < Self::MAX {
            spare.push(bytes);
        }
    }

    fn take(&self) -> Vec<u8> {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| Vec::with_capacity(PIECE))
    }
}

/// Threads that write the files the extractor creates.
pub(crate) struct FileWriters {
    queues: Vec<SyncSender<Vec<Job>>>,
    /// Jobs not yet handed over: they go in batches, as a thread woken
    /// for each of a small file's three jobs would cost more than writing
    /// the file.
    batch: Vec<Job>,
    batch_bytes: usize,
    handles: Vec<JoinHandle<()>>,
    failure: Arc<Failure>,
    spare: Arc<Spare>,
    next: usize,
    /// The queue the file being handed over goes to.
    current: usize,
}

impl std::fmt::Debug for FileWriters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriters").field("threads", &self.queues.len()).finish()
    }
}

/// Bytes handed over per job: a large file goes in pieces, in order.
pub(crate) const PIECE: usize = 256 << 10;

/// A batch is handed over when it holds this many jobs or bytes.
const BATCH_JOBS: usize = 192;
const BATCH_BYTES: usize = 1 << 20;

impl FileWriters {
    pub(crate) fn new(threads: usize) -> io::Result<FileWriters> {
        let failure = Arc::new(Failure::default());
        let spare = Arc::new(Spare::default());
        let mut queues = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            // A few pieces in flight per thread: memory stays bounded.
            let (tx, rx) = sync_channel(8);
            let (failure, spare) = (failure.clone(), spare.clone());
            let worker = move || work(rx, failure, spare);
            handles.push(std::thread::Builder::new().name(format!("strata-write-{i}")).spawn(worker)?);
            queues.push(tx);
        }
        Ok(FileWriters {
            queues,
            handles,
            failure,
            spare,
            batch: Vec::new(),
            batch_bytes: 0,
            next: 0,
            current: 0,
        })
    }

    /// A writer's failure, if one failed.
    pub(crate) fn failed(&self) -> Option<Error> {
        if self.failure.failed.load(Ordering::Acquire) {
            return Some(self.failure.take().unwrap_or_else(|| Error::Io {
                path: "<layer>".into(),
                source: io::Error::other("a file writer failed"),
            }));
        }
        None
    }

    fn send(&mut self, job: Job) -> Result<()> {
        if let Job::Data { bytes, .. } = &job {
            self.batch_bytes += bytes.len();
        }
        self.batch.push(job);
        if self.batch.len() >= BATCH_JOBS || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the batch over (to the thread writing its last file).
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        if self.queues[self.current].send(batch).is_err() {
            return Err(self.failed().unwrap_or_else(|| Error::Io {
                path: "<layer>".into(),
                source: io::Error::other("a file writer stopped"),
            }));
        }
        Ok(())
    }

    /// Starts handing over `file`, created at `path`.
    pub(crate) fn start(&mut self, file: File, path: &[u8]) -> Result<()> {
        // A file's jobs all go to one thread, in order.
        if self.batch.is_empty() {
            self.current = self.next;
            self.next = (self.next + 1) % self.queues.len();
        }
        self.send(Job::Start { file, path: path.to_vec() })
    }

    /// An empty buffer of `PIECE` bytes' capacity to hand the next piece
    /// over in.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.spare.take()
    }

    /// Returns a buffer `buffer` gave that went unused.
    pub(crate) fn unused(&self, bytes: Vec<u8>) {
        self.spare.put(bytes);
    }

    pub(crate) fn data(&mut self, offset: u64, bytes: Vec<u8>) -> Result<()> {
        self.send(Job::Data { offset, bytes })
    }

    pub(crate) fn finish(&mut self, meta: FileMeta) -> Result<()> {
        self.send(Job::Finish(meta))
    }

    /// Waits for every file to be written; the first failure, if any.
    pub(crate) fn join(mut self) -> Result<()> {
        let flushed = self.flush();
        self.stop();
        match self.failure.take() {
            Some(e) => Err(e),
            None => flushed,
        }
    }

    fn stop(&mut self) {
        self.queues.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for FileWriters {
    /// No writer outlives the extraction (its directory may be removed
    /// next).
    fn drop(&mut self) {
        self.stop();
    }
}
