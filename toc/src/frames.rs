//! The zstd frames of a zstd:chunked blob: filled on the caller's thread,
//! compressed on worker threads in batches, written in order.
//!
//! Every frame is compressed alone by a context of the same level, so a
//! frame's bytes do not depend on which thread made them, nor on how many
//! threads there are: the blob is the same for any thread count.
//! Frames are numbered in order; their blob offsets (and the digests of the
//! frames that are chunks) are known once they are written, so callers keep
//! frame numbers and ask for offsets at the end.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use sha2::{Digest, Sha256};

use crate::hash_thread::HashThread;
use zstd::stream::raw::{CParameter, Encoder as RawEncoder, InBuffer, Operation, OutBuffer};

/// Small frames travel to the workers together, to pay for the hand-over.
const BATCH_BYTES: usize = 512 << 10;
const BATCH_FRAMES: usize = 256;

/// Counts and hashes what passes through.
pub(crate) struct Counting<'scope, W> {
    pub inner: W,
    pub pos: u64,
    pub hasher: HashThread<'scope>,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.write_all(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn encoder(level: i32) -> io::Result<RawEncoder<'static>> {
    let mut encoder = RawEncoder::new(level)?;
    encoder.set_parameter(CParameter::ChecksumFlag(true))?;
    Ok(encoder)
}

/// Feeds `input` to an open frame, appending what comes out to `out`.
fn run(encoder: &mut RawEncoder<'static>, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut input = InBuffer::around(input);
    while input.pos() < input.src.len() {
        out.reserve(zstd::zstd_safe::compress_bound(input.src.len() - input.pos()).max(4096));
        let mut output = OutBuffer::around_pos(out, out.len());
        encoder.run(&mut input, &mut output)?;
        // The vector's length follows what zstd wrote into its capacity.
        debug_assert_eq!(output.pos(), output.as_slice().len());
    }
    Ok(())
}

/// Ends the open frame into `out` and readies the context for the next one.
fn end(encoder: &mut RawEncoder<'static>, out: &mut Vec<u8>) -> io::Result<()> {
    loop {
        out.reserve(4096);
        let remaining = {
            let mut output = OutBuffer::around_pos(out, out.len());
            encoder.finish(&mut output, true)?
        };
        if remaining == 0 {
            break;
        }
    }
    encoder.reinit()?;
    Ok(())
}

/// Frames to compress: their bytes back to back.
struct Batch {
    first: u64,
    content: Vec<u8>,
    /// End of each frame in `content`, and whether its digest is wanted.
    frames: Vec<(usize, bool)>,
}

/// A compressed batch.
struct Done {
    first: u64,
    compressed: Vec<u8>,
    /// Compressed length of each frame, and its content's digest if asked.
    frames: Vec<(usize, Option<[u8; 32]>)>,
    /// The batch's buffers, for reuse.
    content: Vec<u8>,
}

fn compress_batch(encoder: &mut RawEncoder<'static>, batch: Batch, out: Vec<u8>) -> io::Result<Done> {
    let mut compressed = out;
    compressed.clear();
    let mut frames = Vec::with_capacity(batch.frames.len());
    let mut from = 0;
    for &(to, hash) in &batch.frames {
        let bytes = &batch.content[from..to];
        let before = compressed.len();
        run(encoder, bytes, &mut compressed)?;
        end(encoder, &mut compressed)?;
        let digest = hash.then(|| Sha256::digest(bytes).into());
        frames.push((compressed.len() - before, digest));
        from = to;
    }
    Ok(Done {
        first: batch.first,
        compressed,
        frames,
        content: batch.content,
    })
}

struct Pool {
    jobs: Option<SyncSender<Batch>>,
    done: Receiver<io::Result<Done>>,
    in_flight: usize,
    max_in_flight: usize,
    arrived: BTreeMap<u64, Done>,
    spare: Vec<Vec<u8>>,
}

/// A frame outgrew a batch: it is compressed here as it is filled, and
/// written as it is compressed (every frame before it is out already).
struct Streaming {
    encoder: RawEncoder<'static>,
    hasher: Sha256,
    start: u64,
    buf: Vec<u8>,
}

pub(crate) struct Frames<'scope, W: Write> {
    out: Counting<'scope, W>,
    level: i32,
    /// Frames closed but not yet handed over, then the open one's bytes.
    batch: Batch,
    /// Where the open frame starts in `batch.content`.
    open_from: usize,
    /// Past this, a frame is compressed on this thread as it is filled, so
    /// memory stays bounded whatever one chunk's size.
    frame_limit: usize,
    streaming: Option<Streaming>,
    next: u64,
    starts: Vec<u64>,
    digests: Vec<[u8; 32]>,
    pool: Option<Pool>,
    local: RawEncoder<'static>,
}

impl<'scope, W: Write> Frames<'scope, W> {
    /// Frames compressed by `threads` workers spawned in `scope` (none when
    /// `threads` is 1: then all is done on the caller's thread).
    pub(crate) fn new<'env>(
        out: Counting<'scope, W>,
        level: i32,
        threads: usize,
        frame_limit: usize,
        scope: &'scope Scope<'scope, 'env>,
    ) -> io::Result<Self> {
        let pool = if threads > 1 {
            let (jobs, job_rx) = sync_channel::<Batch>(threads * 2);
            let (done_tx, done) = sync_channel(threads * 4);
            let job_rx = Arc::new(Mutex::new(job_rx));
            for _ in 0..threads {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                let mut encoder = encoder(level)?;
                scope.spawn(move || {
                    loop {
                        let next = job_rx.lock().map(|rx| rx.recv());
                        let Ok(Ok(batch)) = next else { break };
                        let out = Vec::with_capacity(batch.content.len() / 2);
                        if done_tx.send(compress_batch(&mut encoder, batch, out)).is_err() {
                            break;
                        }
                    }
                });
            }
            Some(Pool {
                jobs: Some(jobs),
                done,
                in_flight: 0,
                max_in_flight: threads * 3,
                arrived: BTreeMap::new(),
                spare: Vec::new(),
            })
        } else {
            None
        };
        Ok(Frames {
            out,
            level,
            batch: Batch {
                first: 0,
                content: Vec::new(),
                frames: Vec::new(),
            },
            open_from: 0,
            frame_limit,
            streaming: None,
            next: 0,
            starts: Vec::new(),
            digests: Vec::new(),
            pool,
            local: encoder(level)?,
        })
    }

    /// Adds bytes to the open frame, opening one if none is.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(s) = &mut self.streaming {
            s.hasher.update(bytes);
            run(&mut s.encoder, bytes, &mut s.buf)?;
            self.out.write_all(&s.buf)?;
            s.buf.clear();
            return Ok(());
        }
        self.batch.content.extend_from_slice(bytes);
        if self.batch.content.len() - self.open_from > self.frame_limit {
            self.start_streaming()?;
        }
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.streaming.is_some() || self.batch.content.len() > self.open_from
    }

    /// The number the next frame will have (the open one is closed first).
    pub(crate) fn position(&mut self) -> io::Result<u64> {
        self.close(false)?;
        Ok(self.next)
    }

    /// Closes the open frame, if any; with `digest`, its content's digest
    /// will be known by its number. Returns the frame's number.
    pub(crate) fn close(&mut self, digest: bool) -> io::Result<Option<u64>> {
        if !self.is_open() {
            return Ok(None);
        }
        let seq = self.next;
        self.next += 1;
        if let Some(mut s) = self.streaming.take() {
            end(&mut s.encoder, &mut s.buf)?;
            self.out.write_all(&s.buf)?;
            self.starts.push(s.start);
            self.digests.push(if digest { s.hasher.finalize().into() } else { [0; 32] });
            self.batch.first = self.next;
            return Ok(Some(seq));
        }
        self.batch.frames.push((self.batch.content.len(), digest));
        self.open_from = self.batch.content.len();
        if self.batch.content.len() >= BATCH_BYTES || self.batch.frames.len() >= BATCH_FRAMES {
            self.hand_over()?;
        }
        Ok(Some(seq))
    }

    /// Sends the closed frames of the batch to be compressed (or compresses
    /// them here without workers).
    fn hand_over(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.open_from, self.batch.content.len());
        if self.batch.frames.is_empty() {
            return Ok(());
        }
        let spare = self.pool.as_mut().and_then(|p| p.spare.pop()).unwrap_or_default();
        let fresh = Batch {
            first: self.next,
            content: spare,
            frames: Vec::with_capacity(BATCH_FRAMES),
        };
        let batch = std::mem::replace(&mut self.batch, fresh);
        self.open_from = 0;
        if self.pool.is_none() {
            let done = compress_batch(&mut self.local, batch, Vec::new())?;
            return self.write_done(done);
        }
        while self.pool.as_ref().is_some_and(|p| p.in_flight >= p.max_in_flight) {
            self.receive_one()?;
        }
        let pool = self.pool.as_mut().expect("pool");
        pool.jobs
            .as_ref()
            .expect("workers")
            .send(batch)
            .map_err(|_| io::Error::other("a compression thread stopped"))?;
        pool.in_flight += 1;
        self.write_arrived()
    }

    /// Waits for one batch from the workers and writes what is in order.
    fn receive_one(&mut self) -> io::Result<()> {
        let pool = self.pool.as_mut().expect("pool");
        let done = pool
            .done
            .recv()
            .map_err(|_| io::Error::other("a compression thread stopped"))??;
        pool.in_flight -= 1;
        pool.arrived.insert(done.first, done);
        self.write_arrived()
    }

    /// Writes the batches that arrived and whose turn it is.
    fn write_arrived(&mut self) -> io::Result<()> {
        loop {
            let written = self.starts.len() as u64;
            let pool = self.pool.as_mut().expect("pool");
            while let Ok(done) = pool.done.try_recv() {
                let done = done?;
                pool.in_flight -= 1;
                pool.arrived.insert(done.first, done);
            }
            let Some(done) = pool.arrived.remove(&written) else {
                return Ok(());
            };
            self.write_done(done)?;
        }
    }

    fn write_done(&mut self, done: Done) -> io::Result<()> {
        debug_assert_eq!(done.first, self.starts.len() as u64);
        let mut at = 0;
        for &(len, digest) in &done.frames {
            self.starts.push(self.out.pos + at as u64);
            self.digests.push(digest.unwrap_or([0; 32]));
            at += len;
        }
        self.out.write_all(&done.compressed)?;
        if let Some(pool) = &mut self.pool {
            let mut content = done.content;
            content.clear();
            pool.spare.push(content);
        }
        Ok(())
    }

    /// Writes every frame handed over so far.
    fn drain(&mut self) -> io::Result<()> {
        while self.pool.as_ref().is_some_and(|p| p.in_flight > 0) {
            self.receive_one()?;
        }
        Ok(())
    }

    /// The open frame is too big for a batch: every frame before it is
    /// written, then it is compressed here from now on.
    fn start_streaming(&mut self) -> io::Result<()> {
        let open = self.batch.content.split_off(self.open_from);
        self.hand_over()?;
        self.drain()?;
        let mut encoder = encoder(self.level)?;
        let mut hasher = Sha256::new();
        hasher.update(&open);
        let mut buf = Vec::new();
        run(&mut encoder, &open, &mut buf)?;
        let start = self.out.pos;
        self.out.write_all(&buf)?;
        buf.clear();
        self.streaming = Some(Streaming {
            encoder,
            hasher,
            start,
            buf,
        });
        Ok(())
    }

    /// Every frame written; returns the output, each frame's start offset and
    /// each frame's digest (zeros for frames closed without one).
    #[allow(clippy::type_complexity)]
    pub(crate) fn finish(mut self) -> io::Result<(Counting<'scope, W>, Vec<u64>, Vec<[u8; 32]>)> {
        self.close(false)?;
        self.hand_over()?;
        if let Some(pool) = &mut self.pool {
            pool.jobs = None;
        }
        self.drain()?;
        Ok((self.out, self.starts, self.digests))
    }
}
