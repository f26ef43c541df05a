//! Applying a layer blob to a staged tree in one pass: the compressed bytes
//! are hashed, decompressed and hashed again on one thread while another
//! splits the tar (writing the tar-split metadata) and extracts it.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, mpsc};

use sha2::{Digest, Sha256};
use strata_overlaydiff::Extractor;
use strata_tarsplit::{HeaderInfo, Payload, SplitSink};

use crate::backend::Staged;
use crate::files::hex;
use crate::{Error, Result};

/// The compression of a layer blob, with containers-storage's codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Bzip2,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// Detects it from the first bytes.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }

    /// The number `layers.json` records.
    pub fn code(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Bzip2 => 1,
            Compression::Gzip => 2,
            Compression::Xz => 3,
            Compression::Zstd => 4,
        }
    }
}

/// What a new layer is to be.
#[derive(Clone, Debug, Default)]
pub struct LayerOptions {
    /// The ID; when absent, the chain ID with `chain_id`, else random.
    pub id: Option<String>,
    /// Name the layer as containers/image does, by content: the diffID's
    /// hex for a base layer, else sha256(parent ID + "+" + diffID hex), so
    /// podman reuses the layer when it pulls an image that has it.
    pub chain_id: bool,
    /// The parent layer (ID, name or unique prefix).
    pub parent: Option<String>,
    pub names: Vec<String>,
    /// The diffID the image config declares: a mismatch fails the apply
    /// and nothing is kept.
    pub expected_diff_id: Option<String>,
    /// The blob digest the manifest declares, checked the same way.
    pub expected_compressed_digest: Option<String>,
    pub metadata: Option<String>,
    /// Start from this layer's content (a copy) instead of empty.
    pub template: Option<String>,
    /// The blob the layer came from. For a layer written by
    /// [`Store::put_layer_from`](crate::Store::put_layer_from) (a tar
    /// rebuilt from the blob's TOC, tar-split and local files), its digest,
    /// size and compression are recorded as given (and checked against
    /// `expected_compressed_digest`); for a blob applied as is, they must
    /// match what was read. Its TOC digest is recorded either way. The
    /// diffID is always computed from the stream.
    pub source_blob: Option<SourceBlob>,
    /// Files whose content entries of the tar repeat, announced by the
    /// tar's writer (see [`strata_overlaydiff::KnownContent`]): cloned or
    /// hard-linked instead of written.
    pub known_content: Option<strata_overlaydiff::KnownContent>,
    /// Have the layer's files on disk before its record says it is
    /// complete (one `syncfs` of the filesystem it is staged on). Without
    /// it, as with GNU tar and containers-storage, a layer survives its
    /// writer being killed at any moment, but a power loss within the
    /// kernel's writeback delay (30 s by default) can leave it listed with
    /// files that lost their data; `fsck --digests` finds such a layer.
    pub sync: bool,
    /// Told the layer's tar-split records as they are written, on the
    /// thread that writes them: what a caller keeps of the tar besides
    /// the store (a pull keeps the tar headers, to guess the next
    /// version's) comes without reading the tar-split back.
    pub split_observer: Option<SplitObserverHandle>,
    /// Big data made from the layer (a dedup index, say), stored with its
    /// complete record, as are those the `split_observer` makes.
    ///
    /// Written without a sync of its own, for what it costs at the end of
    /// a pull: a power loss can leave such an item short or empty, so it
    /// must be data its readers check and can do without.
    pub cached_big_data: Vec<(String, Vec<u8>)>,
    /// For [`Store::put_layer_from`](crate::Store::put_layer_from) only:
    /// record `expected_diff_id` without hashing the tar. For a caller
    /// that checked the tar's parts another way (a partial pull checks
    /// every file against its TOC digest) and a user who accepts that the
    /// whole is not checked, as containers-storage's partial pulls do:
    /// saves a SHA-256 pass over the layer. The record carries the flag
    /// [`DIFF_ID_UNCHECKED`]; exports, which hash what they write, still
    /// catch a tar that does not match it.
    pub trust_expected_diff_id: bool,
    /// fs-verity on the layer's regular files, enabled once they are
    /// written and before the layer is complete (`Required`: a filesystem
    /// that cannot fails the layer, and nothing is kept). Their digests
    /// are kept as the big data [`FS_VERITY_DIGESTS`](crate::FS_VERITY_DIGESTS).
    /// For layers made from a tar or blob.
    pub fs_verity: strata_fsverity::Policy,
}

/// The layer flag (in `layers.json`) of a layer whose diffID was recorded
/// as declared, not computed (see [`LayerOptions::trust_expected_diff_id`]).
pub const DIFF_ID_UNCHECKED: &str = "strata.diff-id-unchecked";

/// Sees the records of a layer's tar-split in order, as
/// [`LayerOptions::split_observer`].
pub trait SplitObserver: Send {
    /// A segment: raw tar bytes (headers, padding) between payloads.
    fn segment(&mut self, bytes: &[u8]);
    /// A file: the entry the segments since the last file head.
    fn file(&mut self, name: &[u8], size: i64);
    /// Big data made of what was seen, stored with the layer as
    /// [`LayerOptions::cached_big_data`] is; asked once, when the layer
    /// is complete.
    fn big_data(&mut self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

/// A shared [`SplitObserver`], for [`LayerOptions`] (which is `Clone`):
/// the caller keeps a handle and takes what it observed afterwards.
#[derive(Clone)]
pub struct SplitObserverHandle(pub Arc<std::sync::Mutex<dyn SplitObserver>>);

impl std::fmt::Debug for SplitObserverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SplitObserverHandle")
    }
}

/// A layer blob's identity, for [`LayerOptions::source_blob`].
#[derive(Clone, Debug)]
pub struct SourceBlob {
    pub digest: String,
    pub size: i64,
    pub compression: Compression,
    /// `sha256:` of the blob's TOC (zstd:chunked, eStargz), if it has one.
    pub toc_digest: Option<String>,
}

/// The digests and sets recorded for an applied layer.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub compressed_digest: String,
    pub compressed_size: i64,
    pub diff_digest: String,
    /// `diff_digest` is the trusted one declared, the tar not hashed.
    pub diff_unchecked: bool,
    pub diff_size: i64,
    pub compression: Compression,
    pub uids: BTreeSet<u32>,
    pub gids: BTreeSet<u32>,
}


/// A block of the stream, shared by the extractor and the hashing thread.
type Block = Arc<Pooled>;

/// `CHUNK`-sized buffers, handed back when the extractor and the hasher
/// are both done with one. Fresh 1 MiB buffers are mapped anew by the
/// allocator and faulted in page by page: 256 faults a block, about 50 000
/// for an update's 190 MB tar.
#[derive(Default)]
struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Blocks the hashing thread and the extractor may each have waiting.
const HASH_AHEAD: usize = 16;
const EXTRACT_AHEAD: usize = 8;

/// More than this many idle buffers are freed: as many as can be in
/// flight (both queues, a block in each thread, the one being filled),
/// so that no buffer is freed only to be mapped and faulted in again.
const POOLED: usize = HASH_AHEAD + EXTRACT_AHEAD + 3;

impl BufferPool {
    fn recycled(&self) -> Vec<u8> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
    }

    /// An empty buffer with room for a `CHUNK`.
    fn take(&self) -> Vec<u8> {
        let mut buf = self.recycled();
        buf.clear();
        buf.reserve_exact(CHUNK);
        buf
    }

    /// A buffer of `CHUNK` bytes, to be read into in place: a recycled
    /// one is mostly initialized already, so nothing is zeroed again.
    fn take_full(&self) -> Vec<u8> {
        let mut buf = self.recycled();
        if buf.capacity() == 0 {
            // Zeroed by the allocator, which for a fresh mapping is free;
            // `resize` would write every byte.
            return vec![0; CHUNK];
        }
        buf.resize(CHUNK, 0);
        buf
    }

    fn block(self: &Arc<Self>, buf: Vec<u8>) -> Block {
        Arc::new(Pooled {
            buf,
            pool: Some(self.clone()),
        })
    }
}

/// A block's bytes, back to their pool when dropped.
#[derive(Default)]
struct Pooled {
    buf: Vec<u8>,
    pool: Option<Arc<BufferPool>>,
}

impl std::ops::Deref for Pooled {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let mut free = pool.free.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < POOLED && self.buf.capacity() >= CHUNK {
                free.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// The uncompressed stream, arriving from the decompressing thread.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Block>>,
    buf: Block,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Block>>) -> Self {
        ChannelReader {
            rx,
            buf: Block::default(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let block = self.fill_buf()?;
        let n = out.len().min(block.len());
        out[..n].copy_from_slice(&block[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The blocks are served in place: the tar is parsed where it arrived.
impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(buf)) => {
                    self.buf = buf;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(&[]), // the sender finished: end of stream
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

/// SHA-256 of a stream on a thread of its own, fed the blocks as they
/// pass: hashing is the slowest step of an apply (about 1.4 GB/s here),
/// and beside reading or decompressing on one thread it would set the
/// pace alone.
struct HashThread<'scope> {
    tx: Option<mpsc::SyncSender<Block>>,
    handle: std::thread::ScopedJoinHandle<'scope, ([u8; 32], u64)>,
}

impl<'scope> HashThread<'scope> {
    fn spawn(scope: &'scope std::thread::Scope<'scope, '_>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Block>(HASH_AHEAD);
        let handle = scope.spawn(move || {
            let mut hash = Sha256::new();
            let mut size = 0u64;
            for block in rx {
                hash.update(&block[..]);
                size += block.len() as u64;
            }
            (hash.finalize().into(), size)
        });
        HashThread { tx: Some(tx), handle }
    }

    fn feed(&self, block: &Block) {
        if let Some(tx) = &self.tx {
            // The hasher only stops when this side is done with it.
            let _ = tx.send(block.clone());
        }
    }

    /// The digest and size of everything fed.
    fn finish(mut self) -> io::Result<([u8; 32], u64)> {
        drop(self.tx.take());
        self.handle.join().map_err(|_| io::Error::other("the hashing thread panicked"))
    }
}

/// Records uid/gid sets while the extractor works.
struct LayerSink<'o> {
    extractor: Extractor,
    observer: Option<std::sync::MutexGuard<'o, dyn SplitObserver + 'static>>,
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

impl SplitSink for LayerSink<'_> {
    fn raw(&mut self, bytes: &[u8]) -> strata_tarsplit::Result<()> {
        if let Some(observer) = &mut self.observer {
            observer.segment(bytes);
        }
        self.extractor.raw(bytes)
    }

    fn entry(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> io::Result<()> {
        // Before the payload is read: the record order is the tar-split's.
        if let Some(observer) = &mut self.observer {
            observer.file(&header.name, header.size);
        }
        let base = header.name.rsplit(|&b| b == b'/').find(|s| !s.is_empty()).unwrap_or_default();
        if !base.starts_with(b".wh.") {
            if let Ok(uid) = u32::try_from(header.uid) {
                self.uids.insert(uid);
            }
            if let Ok(gid) = u32::try_from(header.gid) {
                self.gids.insert(gid);
            }
        }
        self.extractor.entry(header, payload)
    }
}

/// The size of the blocks passed between the threads. Each block costs
/// a wakeup or two per thread, and on two cores the threads preempt each
/// other at every one: `cargo xtask bench apply` ran 8 % faster with 1 MiB
/// blocks than with 256 KiB (9 000 context switches fewer), and no faster
/// with 2 MiB. At most about 30 blocks are in flight.
const CHUNK: usize = 1 << 20;

/// Hands the uncompressed tar to the extractor in `CHUNK`-sized buffers,
/// and to a hashing thread (the diffID).
struct ChunkSender<'h, 'scope> {
    tx: mpsc::SyncSender<io::Result<Block>>,
    /// `CHUNK` bytes, of which the first `filled` are the stream's.
    buf: Vec<u8>,
    filled: usize,
    /// Bytes sent so far.
    sent: u64,
    hash: Option<&'h HashThread<'scope>>,
    pool: Arc<BufferPool>,
}

impl<'h, 'scope> ChunkSender<'h, 'scope> {
    fn new(tx: mpsc::SyncSender<io::Result<Block>>, hash: Option<&'h HashThread<'scope>>) -> Self {
        let pool = Arc::new(BufferPool::default());
        ChunkSender {
            tx,
            buf: pool.take_full(),
            filled: 0,
            sent: 0,
            hash,
            pool,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let mut full = std::mem::replace(&mut self.buf, self.pool.take_full());
        full.truncate(std::mem::take(&mut self.filled));
        self.sent += full.len() as u64;
        let block = self.pool.block(full);
        if let Some(hash) = self.hash {
            hash.feed(&block);
        }
        self.tx
            .send(Ok(block))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the extractor stopped"))
    }

    /// Reads `input` to its end straight into the buffers; returns how
    /// many bytes it held.
    fn read_all(&mut self, input: &mut dyn Read) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            if self.filled == CHUNK {
                self.send()?;
            }
            match input.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.filled += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends what is left; returns how many bytes were sent in all.
    fn finish(mut self) -> io::Result<u64> {
        self.send()?;
        Ok(self.sent)
    }
}

impl Write for ChunkSender<'_, '_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where [`Store::put_layer_from`](crate::Store::put_layer_from)'s
/// function writes the tar: a writer that also reads a source straight
/// into the store's buffers, so a file's bytes are copied once on their
/// way to the extractor and the hash, not twice.
pub trait TarOutput: Write {
    /// Appends everything `input` holds; returns how many bytes that was.
    fn read_from(&mut self, input: &mut dyn Read) -> io::Result<u64>;
}

impl TarOutput for ChunkSender<'_, '_> {
    fn read_from(&mut self, input: &mut dyn Read) -> io::Result<u64> {
        self.read_all(input)
    }
}

/// What a new layer is applied from.
pub(crate) enum Input<R, F> {
    /// A layer blob: plain, gzip or zstd, detected.
    Blob(R),
    /// A function that writes the uncompressed tar (a tar rebuilt from
    /// other sources, say); it runs on the store's producing thread.
    Tar(F),
}

/// What the producing thread found: compression, blob digest and size,
/// diffID (unless not asked for) and size.
type Produced = (Compression, Option<[u8; 32]>, u64, Option<[u8; 32]>, u64);

fn produce_tar<F>(write: F, tx: mpsc::SyncSender<io::Result<Block>>, hashed: bool) -> io::Result<Produced>
where
    F: FnOnce(&mut dyn TarOutput) -> io::Result<()>,
{
    std::thread::scope(|scope| {
        let hash = hashed.then(|| HashThread::spawn(scope));
        let mut sender = ChunkSender::new(tx, hash.as_ref());
        let written = write(&mut sender).and_then(|()| sender.finish());
        let (digest, size) = match hash {
            Some(hash) => {
                let (digest, size) = hash.finish()?;
                (Some(digest), size)
            }
            None => (None, written.as_ref().copied().unwrap_or(0)),
        };
        written?;
        Ok((Compression::None, digest, size, digest, size))
    })
}

/// Reads up to one `CHUNK` of `input` into `buf`.
fn read_block(input: &mut impl Read, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    // read_to_end fills the capacity without zeroing it first.
    input.take(CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Sends `first`, then the rest of `input` in `CHUNK`s, to `tx`, handing
/// each block to a hashing thread too: returns the digest and size of
/// all. A read error goes to `tx`, whose reader reports it.
fn read_ahead<R: Read>(first: Vec<u8>, mut input: R, tx: mpsc::SyncSender<io::Result<Block>>) -> io::Result<([u8; 32], u64)> {
    let pool = Arc::new(BufferPool::default());
    std::thread::scope(|scope| {
        let hash = HashThread::spawn(scope);
        let mut block = Ok(first);
        loop {
            let buf = match block {
                Ok(buf) => buf,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            };
            if buf.is_empty() {
                break;
            }
            let buf = pool.block(buf);
            hash.feed(&buf);
            if tx.send(Ok(buf)).is_err() {
                // The consumer stopped; its error says why.
                break;
            }
            block = read_block(&mut input, pool.take());
        }
        hash.finish()
    })
}

/// Decompresses and hashes `input`, sending the tar stream to `tx`.
/// Returns the compressed and uncompressed digests and sizes.
fn produce<R: Read + Send>(mut input: R, tx: mpsc::SyncSender<io::Result<Block>>) -> io::Result<Produced> {
    let first = read_block(&mut input, Vec::with_capacity(CHUNK))?;
    let compression = Compression::detect(&first);
    if compression == Compression::None {
        // A plain tar: this thread reads it and hands the blocks to the
        // extractor as they are; their digest is the diffID. (A thread
        // forwarding them cost a wakeup per block.)
        let (blob, size) = read_ahead(first, input, tx)?;
        return Ok((compression, Some(blob), size, Some(blob), size));
    }
    std::thread::scope(|scope| {
        // Reading (and hashing the blob) on a thread of its own, while
        // this one decompresses and hashes the tar: reading, both SHA-256
        // passes and the decompression then spread over the cores.
        let (raw_tx, raw_rx) = mpsc::sync_channel(4);
        let reader = scope.spawn(move || read_ahead(first, input, raw_tx));
        let join_reader = |reader: std::thread::ScopedJoinHandle<'_, io::Result<([u8; 32], u64)>>| {
            reader.join().map_err(|_| io::Error::other("the reading thread panicked"))?
        };
        let mut compressed = BufReader::with_capacity(CHUNK, ChannelReader::new(raw_rx));
        let hash = HashThread::spawn(scope);
        let produced = (|| {
            let mut decoder: Box<dyn Read + '_> = match compression {
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut compressed)),
                Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(&mut compressed)?),
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("{other:?} layers are not supported"),
                    ));
                }
            };
            let mut sender = ChunkSender::new(tx, Some(&hash));
            sender.read_all(&mut decoder)?;
            sender.finish()?;
            drop(decoder);
            // Whatever follows the compressed stream still belongs to the blob.
            io::copy(&mut compressed, &mut io::sink())?;
            Ok(())
        })();
        // Unblocks the reading thread whatever happened.
        drop(compressed);
        let (diff, diff_size) = hash.finish()?;
        let (blob, blob_size) = join_reader(reader)?;
        produced?;
        Ok((compression, Some(blob), blob_size, Some(diff), diff_size))
    })
}

/// Applies the layer blob `input` through `extractor` (into `staged`'s
/// tree) and writes its tar-split metadata next to it.
///
/// The metadata goes to `split_name` in `split_dir` (the layers directory:
/// it is renamed into place there, and the driver's staging directory may
/// be on another mount).
pub(crate) fn apply_blob<R, F>(
    input: Input<R, F>,
    staged: &Staged,
    extractor: Extractor,
    split_dir: &cap_std::fs::Dir,
    split_name: &str,
    observer: Option<&SplitObserverHandle>,
    trusted_diff_id: Option<&str>,
) -> Result<Applied>
where
    R: Read + Send,
    F: FnOnce(&mut dyn TarOutput) -> io::Result<()> + Send,
{
    let mut sink = LayerSink {
        extractor,
        // One that panicked before is told nothing more.
        observer: observer.and_then(|o| o.0.lock().ok()),
        uids: BTreeSet::new(),
        gids: BTreeSet::new(),
    };
    let (tx, rx) = mpsc::sync_channel(EXTRACT_AHEAD);
    let file = {
        use cap_std::fs::OpenOptionsExt;
        let mut options = cap_std::fs::OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        split_dir
            .open_with(split_name, &options)
            .map_err(|e| Error::io(std::path::Path::new(split_name), e))?
    };
    // gzip'd on other threads, in members (every tar-split reader, Go's
    // included, reads them as one stream): the extracting thread is the
    // busiest of an apply.
    let mut metadata = strata_tarsplit::MetadataWriter::new(crate::pgzip::ParallelGzip::new(
        io::BufWriter::with_capacity(CHUNK, file),
        crate::pgzip::GzipLevel::Quick,
    ));

    let (produced, split) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let err_tx = tx.clone();
            let result = match input {
                Input::Blob(blob) => produce(blob, tx),
                Input::Tar(write) => produce_tar(write, tx, trusted_diff_id.is_none()),
            };
            if let Err(e) = &result {
                let _ = err_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let reader = ChannelReader::new(rx);
        let split = strata_tarsplit::split_buffered(reader, &mut metadata, &mut sink);
        // Unblock a producer still sending (when the split failed).
        (producer.join(), split)
    });
    let produced = produced.map_err(|_| Error::Unsupported("the decompressing thread panicked".into()))?;
    // The extractor's own failure explains a producer that could not hand
    // it more data.
    let produced = match (produced, &split) {
        (Err(e), Err(_)) if e.kind() == io::ErrorKind::BrokenPipe => None,
        (p, _) => Some(p),
    };
    let produced = produced.map(|p| p.map_err(|e| Error::io(std::path::Path::new("<layer blob>"), e))).transpose()?;
    split.map_err(|e| match e {
        strata_tarsplit::Error::Put { name, source } => match source.downcast::<strata_overlaydiff::Error>() {
            Ok(inner) => Error::Layer(inner),
            Err(source) => Error::Io {
                path: name.to_string(),
                source,
            },
        },
        other => Error::TarSplit(other),
    })?;
    let (compression, blob_digest, blob_size, diff_digest, diff_size) =
        produced.ok_or_else(|| Error::Unsupported("the layer ended without an error from either side".into()))?;
    // The tar-split is complete: it is made durable while the extraction
    // finishes (writers, directory times). Its fsync commits the journal
    // holding the layer's new files too, the longest wait of a commit.
    let synced = std::thread::scope(|scope| {
        let synced = scope.spawn(move || -> Result<()> {
            let mut out = metadata.finish()?.finish().map_err(|e| Error::io(&staged.path, e))?;
            out.flush().map_err(|e| Error::io(&staged.path, e))?;
            let file = out.into_inner().map_err(|e| Error::io(&staged.path, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&staged.path, e))
        });
        let finished = sink.extractor.finish();
        let synced = synced.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        finished.map_err(Error::from).and(synced)
    });
    synced?;
    let digest = |d: Option<[u8; 32]>| match d {
        Some(d) => format!("sha256:{}", hex(&d)),
        // Only a rebuilt tar goes unhashed, and only with a trusted diffID
        // (which then stands for the blob too: the blob is that tar).
        None => trusted_diff_id.unwrap_or_default().to_owned(),
    };
    Ok(Applied {
        compressed_digest: digest(blob_digest),
        compressed_size: blob_size as i64,
        diff_unchecked: diff_digest.is_none(),
        diff_digest: digest(diff_digest),
        diff_size: diff_size as i64,
        compression,
        uids: sink.uids,
        gids: sink.gids,
    })
}
