//! Getting a layer back out: its original tar, bit for bit, from the
//! tar-split metadata and the stored files; or its changes.

use std::io::{self, BufRead, Read, Write};

use sha2::{Digest, Sha256};
use strata_overlaydiff::{ChangeSink, TarSink};
use strata_tarsplit::DirGetter;

use crate::apply::Compression;
use crate::files::hex;
use crate::store::Store;
use crate::{Error, Result};

/// How [`Store::diff`] writes a layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions {
    /// `None` (the tar itself), `Gzip` or `Zstd`.
    pub compression: Option<Compression>,
    /// Recompute the tar's sha256 and fail unless it is the layer's diffID.
    pub verify: bool,
}

struct HashingWriter<W> {
    inner: W,
    hash: Option<Sha256>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// libdeflate's level 1, on every core: on the 170 MB root filesystem of
/// `cargo xtask bench push` it makes 82.2 MB where containers/image's
/// default gzip makes 81.8 MB (level 2: 80.8 MB in a fifth more time).
const GZIP_LEVEL: i32 = 1;

/// The output, compressed as asked.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(crate::pgzip::ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn new(out: W, compression: Option<Compression>) -> Result<Self> {
        Ok(match compression.unwrap_or(Compression::None) {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(crate::pgzip::ParallelGzip::new(
                out,
                crate::pgzip::GzipLevel::Deflate(
                    libdeflater::CompressionLvl::new(GZIP_LEVEL).map_err(|e| Error::Unsupported(format!("gzip level: {e:?}")))?,
                ),
            )),
            Compression::Zstd => {
                let zstd_err = |e| Error::io(std::path::Path::new("<zstd>"), e);
                let mut encoder = zstd::stream::write::Encoder::new(out, 3).map_err(zstd_err)?;
                // zstd's worker threads: with one or more the output is the
                // same whatever their number (only zero workers differs).
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                encoder.multithread(threads as u32).map_err(zstd_err)?;
                Encoder::Zstd(encoder)
            }
            other => return Err(Error::Unsupported(format!("writing {other:?} is not supported"))),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

impl Store {
    /// Writes layer `key`'s tar to `out`: the original tar bit for bit when
    /// the layer has tar-split metadata (every layer made from a tar does),
    /// else a tar generated from its changes. Holds the layers lock shared
    /// until done, so the layer cannot be deleted meanwhile. Returns the
    /// number of uncompressed bytes.
    pub fn diff<W: Write>(&self, key: &str, out: W, options: DiffOptions) -> Result<u64> {
        let (guard, layer) = match self.loaded_layer(key) {
            Ok(found) => found,
            Err(Error::NotFound(what)) => {
                for extra in &self.additional {
                    if extra.layer(key).is_ok() {
                        return extra.diff(key, out, options);
                    }
                }
                return Err(Error::NotFound(what));
            }
            Err(e) => return Err(e),
        };
        let id = &layer.id;
        let split_name = format!("{id}.tar-split.gz");
        let split_path = self.layers_path.join(&split_name);
        let mut hashing = HashingWriter {
            inner: Encoder::new(out, options.compression)?,
            hash: options.verify.then(Sha256::new),
        };
        let written = match self.layers_dir.open(&split_name) {
            Ok(file) => {
                let metadata = strata_tarsplit::open_metadata(file.into_std()).map_err(|e| Error::io(&split_path, e))?;
                let dirs = self.backend.content_dirs(id)?;
                // With the tar-split and the layer's directories open, the
                // lock is no longer needed: a slow reader of the stream must
                // not hold up every writer of the store. (A layer deleted
                // meanwhile makes this diff fail, never the store.)
                drop(guard);
                let mut getter = DirGetter::chain(dirs);
                strata_tarsplit::assemble(metadata, &mut getter, &mut hashing)?.tar_size
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _guard = guard;
                let mut counter = CountingWriter { inner: &mut hashing, count: 0 };
                let mut sink = TarSink::new(&mut counter);
                self.backend.changes(id, non_empty(&layer.parent), &mut sink)?;
                sink.finish().map_err(|e| Error::io(&split_path, e))?;
                counter.count
            }
            Err(e) => return Err(Error::io(&split_path, e)),
        };
        if let Some(hash) = hashing.hash.take() {
            let actual = format!("sha256:{}", hex(&hash.finalize()));
            if !layer.diff_digest.is_empty() && actual != layer.diff_digest {
                return Err(Error::DigestMismatch {
                    what: format!("layer {id}"),
                    expected: layer.diff_digest.clone(),
                    actual,
                });
            }
        }
        let mut out = hashing.inner.finish().map_err(|e| Error::io(&split_path, e))?;
        out.flush().map_err(|e| Error::io(&split_path, e))?;
        Ok(written)
    }

    /// Layer `key`'s tar-split metadata, decompressed; `None` for a layer
    /// that has none (one made from a directory, or pulled by a store
    /// that keeps none).
    pub fn layer_tar_split(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let layer = self.layer(key)?;
        let split_name = format!("{}.tar-split.gz", layer.id);
        match self.layers_dir.open(&split_name) {
            Ok(file) => {
                let mut input = io::BufReader::new(file.into_std());
                let gzip = input
                    .fill_buf()
                    .map_err(|e| Error::io(&self.layers_path.join(&split_name), e))?
                    .starts_with(&[0x1f, 0x8b]);
                Ok(Some(if gzip {
                    Box::new(flate2::bufread::MultiGzDecoder::new(input))
                } else {
                    Box::new(input)
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&self.layers_path.join(&split_name), e)),
        }
    }

    /// Layer `key`'s changes against its parent.
    pub fn changes(&self, key: &str, sink: &mut dyn ChangeSink) -> Result<()> {
        let (_guard, layer) = self.loaded_layer(key)?;
        self.backend.changes(&layer.id, non_empty(&layer.parent), sink)
    }

    /// The size of the layer's tar: recorded, or measured by assembling it.
    pub fn diff_size(&self, key: &str) -> Result<u64> {
        let layer = self.layer(key)?;
        if !layer.diff_digest.is_empty() {
            return Ok(layer.diff_size as u64);
        }
        self.diff(key, io::sink(), DiffOptions::default())
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
