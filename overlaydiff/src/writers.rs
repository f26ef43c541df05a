//! Regular files written on threads of their own, beside the parsing,
//! decompressing and hashing of the rest of the layer: their bytes, then
//! owner, xattrs, mode and times. In a directory the extraction made, a
//! writer creates the file too (no other name can be in the way there);
//! elsewhere the extracting thread creates it, to deal with what is in the
//! way, and hands it over. An entry that links to, removes or replaces a
//! file handed over waits for the writers first ([`FileWriters::sync`]).

use std::fs::File;
use std::io::{self, BufRead};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cap_std::fs::Dir;
use rustix::fs::{Mode, OFlags, Timestamps};
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
    /// A file the extractor created.
    Opened { file: File, path: Vec<u8> },
    /// A file to create as `name` in `dir`: a directory this extraction
    /// made, where nothing else creates that name meanwhile.
    Create { dir: Arc<Dir>, name: Vec<u8>, mode: u32, path: Vec<u8> },
    /// Bytes `start..end` of the batch's arena, written at `offset`.
    Data { offset: u64, start: usize, end: usize },
    Finish(FileMeta),
    /// Answered once every job before it is done.
    Sync(SyncSender<()>),
}

/// Jobs handed over together, with the bytes they write: many small
/// files share one buffer, as a buffer of its own for each would cost
/// more than writing it.
struct Batch {
    jobs: Vec<Job>,
    arena: Vec<u8>,
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

fn create(dir: &Dir, name: &[u8], mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        std::ffi::OsStr::from_bytes(name),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )?;
    Ok(File::from(fd))
}

fn work(batches: Receiver<Batch>, failure: Arc<Failure>, spare: Arc<Spare>) {
    let mut current: Option<(File, Vec<u8>)> = None;
    let mut written_end = 0u64;
    for Batch { jobs, arena } in batches {
        for job in jobs {
            if let Job::Sync(done) = job {
                let _ = done.send(());
                continue;
            }
            if failure.failed.load(Ordering::Acquire) {
                continue; // drained, so the extractor never blocks on a full queue
            }
            let mut failed_path = None;
            let result = match job {
                Job::Opened { file, path } => {
                    current = Some((file, path));
                    written_end = 0;
                    Ok(())
                }
                Job::Create { dir, name, mode, path } => match create(&dir, &name, mode) {
                    Ok(file) => {
                        current = Some((file, path));
                        written_end = 0;
                        Ok(())
                    }
                    Err(e) => {
                        failed_path = Some(path);
                        Err(e)
                    }
                },
                Job::Data { offset, start, end } => match &current {
                    Some((file, _)) => write_skipping_zeros(file, offset, &arena[start..end], written_end).map(|end| written_end = end),
                    None => Err(io::Error::other("data for no file")),
                },
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
                Job::Sync(_) => Ok(()),
            };
            if let Err(e) = result {
                let path = failed_path.or_else(|| current.as_ref().map(|(_, p)| p.clone())).unwrap_or_default();
                failure.set(&path, e);
            }
        }
        spare.put(arena);
    }
}

/// Arenas the writers are done with, for the extractor to fill again: a
/// fresh one is a new mapping, whose pages the kernel must fault in and
/// zero, which costs more than the writes.
#[derive(Default)]
struct Spare(Mutex<Vec<Vec<u8>>>);

impl Spare {
    /// More than the queues hold at once is never needed.
    const MAX: usize = 64;

    fn put(&self, mut bytes: Vec<u8>) {
        if bytes.capacity() != ARENA {
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
        spare.unwrap_or_else(|| Vec::with_capacity(ARENA))
    }
}

/// Threads that write the files the extractor creates or has them create.
pub(crate) struct FileWriters {
    queues: Vec<SyncSender<Batch>>,
    /// Jobs not yet handed over: they go in batches, as a thread woken
    /// for each of a small file's three jobs would cost more than writing
    /// the file.
    batch: Vec<Job>,
    arena: Vec<u8>,
    handles: Vec<JoinHandle<()>>,
    failure: Arc<Failure>,
    spare: Arc<Spare>,
    next: usize,
    /// The queue the file being handed over goes to.
    current: usize,
    /// Whether files were handed over since the last sync.
    pending: bool,
}

impl std::fmt::Debug for FileWriters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriters").field("threads", &self.queues.len()).finish()
    }
}

/// The bytes a batch carries at most: a large file goes in several, in
/// order.
const ARENA: usize = 1 << 20;

/// A batch is handed over when it holds this many jobs (or a full arena).
const BATCH_JOBS: usize = 192;

impl FileWriters {
    pub(crate) fn new(threads: usize) -> io::Result<FileWriters> {
        let failure = Arc::new(Failure::default());
        let spare = Arc::new(Spare::default());
        let mut queues = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            // A few batches in flight per thread: memory stays bounded.
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
            arena: spare.take(),
            spare,
            batch: Vec::new(),
            next: 0,
            current: 0,
            pending: false,
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

    fn stopped(&self) -> Error {
        self.failed().unwrap_or_else(|| Error::Io {
            path: "<layer>".into(),
            source: io::Error::other("a file writer stopped"),
        })
    }

    fn send(&mut self, job: Job) -> Result<()> {
        self.batch.push(job);
        if self.batch.len() >= BATCH_JOBS {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the batch over (to the thread writing its last file).
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            jobs: std::mem::take(&mut self.batch),
            arena: std::mem::replace(&mut self.arena, self.spare.take()),
        };
        self.queues[self.current].send(batch).map_err(|_| self.stopped())
    }

    /// The thread the next file goes to: a file's jobs all go to one
    /// thread, in order.
    fn pick(&mut self) {
        if self.batch.is_empty() {
            self.current = self.next;
            self.next = (self.next + 1) % self.queues.len();
        }
        self.pending = true;
    }

    /// Starts handing over `file`, created at `path`.
    pub(crate) fn start(&mut self, file: File, path: &[u8]) -> Result<()> {
        self.pick();
        self.send(Job::Opened { file, path: path.to_vec() })
    }

    /// Starts handing over a file a writer creates as `name` in `dir`,
    /// with the permission bits of `mode`: `dir` must be a directory this
    /// extraction made, and nothing else may create or remove `name` in it
    /// until [`FileWriters::sync`].
    pub(crate) fn create(&mut self, dir: Arc<Dir>, name: &[u8], mode: u32, path: &[u8]) -> Result<()> {
        self.pick();
        self.send(Job::Create {
            dir,
            name: name.to_vec(),
            mode,
            path: path.to_vec(),
        })
    }

    /// Hands over the bytes of the file being handed over (at `path`), all
    /// of them.
    pub(crate) fn data(&mut self, payload: &mut dyn BufRead, path: &[u8]) -> Result<()> {
        let mut offset = 0u64;
        loop {
            let chunk = payload.fill_buf().map_err(|source| Error::Io {
                path: String::from_utf8_lossy(path).into_owned(),
                source,
            })?;
            if chunk.is_empty() {
                return Ok(());
            }
            let room = ARENA - self.arena.len();
            let n = chunk.len().min(room);
            let start = self.arena.len();
            self.arena.extend_from_slice(&chunk[..n]);
            payload.consume(n);
            self.batch.push(Job::Data {
                offset,
                start,
                end: start + n,
            });
            offset += n as u64;
            if self.arena.len() == ARENA || self.batch.len() >= BATCH_JOBS {
                self.flush()?;
            }
        }
    }

    pub(crate) fn finish(&mut self, meta: FileMeta) -> Result<()> {
        self.send(Job::Finish(meta))
    }

    /// Whether files were handed over since the last [`sync`](Self::sync).
    pub(crate) fn pending(&self) -> bool {
        self.pending
    }

    /// Waits until every file handed over so far is written and closed.
    pub(crate) fn sync(&mut self) -> Result<()> {
        if !self.pending {
            return Ok(());
        }
        self.flush()?;
        let (tx, rx) = sync_channel(self.queues.len());
        for queue in &self.queues {
            let batch = Batch {
                jobs: vec![Job::Sync(tx.clone())],
                arena: Vec::new(),
            };
            queue.send(batch).map_err(|_| self.stopped())?;
        }
        drop(tx);
        for _ in 0..self.queues.len() {
            rx.recv().map_err(|_| self.stopped())?;
        }
        self.pending = false;
        match self.failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
