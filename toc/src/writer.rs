//! tar → zstd:chunked, streaming, in bounded memory: each file's payload in
//! its own zstd frames, split where containers-storage's compressor splits
//! it; headers and padding in the frames between; then the TOC, the
//! tar-split and the footer in skippable frames.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};

use base64::Engine;
use sha2::{Digest, Sha256};
use strata_tarsplit::{HeaderInfo, MetadataWriter, Payload, SplitSink, Time, split};

use crate::annotations::{self, Location};
use crate::chunker::{Chunk, ChunkKind, Chunker};
use crate::error::Result;
use crate::footer::{self, Dialect, Footer, SKIPPABLE_MAGIC};
use crate::frames::{Counting, Frames};
use crate::hash_thread::HashThread;
use crate::toc::{Entry, Toc};

/// How to write.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// zstd level for every frame.
    pub level: i32,
    /// Also write the `io.containers.` annotation keys that
    /// containers-storage ≤ 1.43 (podman 4.3) reads.
    pub legacy_annotations: bool,
    /// Threads compressing frames; 1 compresses on the calling thread. The
    /// blob is the same whatever the number.
    pub threads: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            level: 3,
            legacy_annotations: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A frame bigger than this (one chunk with no split point in it) is
/// compressed as it is read rather than handed to a worker.
const FRAME_LIMIT: usize = 8 << 20;

/// What a manifest needs about the written blob.
#[derive(Clone, Debug)]
pub struct Written {
    pub annotations: BTreeMap<String, String>,
    pub toc_digest: String,
    /// sha256 of the uncompressed tar (what the config's diff_ids list).
    pub diff_id: String,
    pub uncompressed_size: u64,
    pub blob_digest: String,
    pub blob_size: u64,
}

pub(crate) fn sha256_hex(h: Sha256) -> String {
    digest_string(&h.finalize().into())
}

/// `sha256:HEX`; called once per chunk, so without a format per byte.
fn digest_string(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for &b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// RFC 3339 in UTC with nanoseconds trimmed, as Go's time.MarshalJSON writes.
pub(crate) fn rfc3339(t: Time) -> String {
    let days = t.secs.div_euclid(86_400);
    let rem = t.secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if t.nanos > 0 {
        let frac = format!("{:09}", t.nanos);
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

pub(crate) fn kind_of(typeflag: u8) -> Option<&'static str> {
    Some(match typeflag {
        b'0' | 0 | b'7' => "reg",
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char",
        b'4' => "block",
        b'5' => "dir",
        b'6' => "fifo",
        _ => return None,
    })
}

/// The TOC fields a tar header determines (containers-storage compares
/// exactly these with the tar-split when it pulls).
pub(crate) fn entry_from_header(h: &HeaderInfo) -> io::Result<Entry> {
    let kind = kind_of(h.typeflag).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "tar entry type {:?} cannot be represented in zstd:chunked",
                char::from(h.typeflag)
            ),
        )
    })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Entry {
        kind: kind.into(),
        name: String::from_utf8_lossy(&h.name).into_owned(),
        link_name: String::from_utf8_lossy(&h.link_name).into_owned(),
        mode: h.mode,
        size: h.size,
        uid: h.uid,
        gid: h.gid,
        mod_time: rfc3339(h.mtime),
        access_time: h.atime.map(rfc3339).unwrap_or_default(),
        change_time: h.ctime.map(rfc3339).unwrap_or_default(),
        dev_major: if matches!(kind, "char" | "block") {
            h.dev_major
        } else {
            0
        },
        dev_minor: if matches!(kind, "char" | "block") {
            h.dev_minor
        } else {
            0
        },
        xattrs: h
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), b64.encode(v)))
            .collect(),
        ..Entry::default()
    })
}

/// One finished chunk of a payload, in the frame numbered `frame`.
struct Written1 {
    chunk: Chunk,
    frame: u64,
}

/// TOC fields that name frames until the frames are written: the entry's
/// offset (and end, for a file) are frame numbers, and its chunk digest is
/// that of a frame's content.
struct Pending {
    entry: usize,
    offset: Option<u64>,
    end: Option<u64>,
    chunk_digest: Option<u64>,
}

struct ChunkedSink<'scope, W: Write> {
    frames: Frames<'scope, W>,
    entries: Vec<Entry>,
    pending: Vec<Pending>,
}

impl<W: Write> ChunkedSink<'_, W> {
    /// Writes a payload's chunks, each into frames of its own. Returns them,
    /// the payload's digest and the number of the frame after them.
    fn payload(&mut self, p: &mut Payload<'_>) -> io::Result<(Vec<Written1>, String, u64)> {
        self.frames.close(false)?;
        let mut chunker = Chunker::new();
        let mut file_hash = Sha256::new();
        let mut state = ChunkState {
            written: 0,
            chunk_frame: None,
            done: Vec::new(),
        };
        let mut base = 0u64;
        let mut emitted = Vec::new();
        loop {
            let buf = p.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            file_hash.update(buf);
            chunker.update(buf, |c| emitted.push(c));
            for c in emitted.drain(..) {
                state.write_to(&mut self.frames, c.offset + c.len, base, buf)?;
                state.finish_chunk(&mut self.frames, c)?;
            }
            // Trailing zeros may yet become a chunk of their own: hold them,
            // with those held before when the whole piece is zeros.
            let zeros = buf.iter().rev().take_while(|&&b| b == 0).count() as u64;
            let keep_to = if zeros == n as u64 {
                state.written
            } else {
                (base + n as u64 - zeros).max(state.written)
            };
            state.write_to(&mut self.frames, keep_to, base, buf)?;
            base += n as u64;
            p.consume(n);
        }
        chunker.finish(|c| emitted.push(c));
        for c in emitted {
            state.write_to(&mut self.frames, c.offset + c.len, base, &[])?;
            state.finish_chunk(&mut self.frames, c)?;
        }
        let end = self.frames.position()?;
        Ok((state.done, sha256_hex(file_hash), end))
    }
}

struct ChunkState {
    /// Payload bytes already in frames.
    written: u64,
    /// The frame of the chunk in progress, once it has bytes.
    chunk_frame: Option<u64>,
    done: Vec<Written1>,
}

impl ChunkState {
    /// Writes payload bytes up to `to`: held-back zeros first, then from
    /// `buf` (which starts at payload offset `base`).
    fn write_to<W: Write>(
        &mut self,
        frames: &mut Frames<'_, W>,
        to: u64,
        base: u64,
        buf: &[u8],
    ) -> io::Result<()> {
        while self.written < to {
            let bytes: &[u8] = if self.written < base {
                &ZEROS[..(base.min(to) - self.written).min(ZEROS.len() as u64) as usize]
            } else {
                let from = (self.written - base) as usize;
                &buf[from..(to - base) as usize]
            };
            if self.chunk_frame.is_none() {
                self.chunk_frame = Some(frames.position()?);
            }
            frames.write(bytes)?;
            self.written += bytes.len() as u64;
        }
        Ok(())
    }

    fn finish_chunk<W: Write>(&mut self, frames: &mut Frames<'_, W>, chunk: Chunk) -> io::Result<()> {
        let frame = frames.close(true)?;
        if frame.is_none() || frame != self.chunk_frame.take() {
            return Err(io::Error::other("empty chunk"));
        }
        self.done.push(Written1 {
            chunk,
            frame: frame.unwrap_or_default(),
        });
        Ok(())
    }
}

impl<W: Write> SplitSink for ChunkedSink<'_, W> {
    fn raw(&mut self, bytes: &[u8]) -> strata_tarsplit::Result<()> {
        self.frames.write(bytes)?;
        Ok(())
    }

    fn entry(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> io::Result<()> {
        let mut entry = entry_from_header(header)?;
        let Some(p) = payload else {
            self.entries.push(entry);
            return Ok(());
        };
        let (chunks, digest, end) = self.payload(p)?;
        entry.digest = digest;
        let zeros = |c: &Written1| {
            if c.chunk.kind == ChunkKind::Zeros {
                "zeros".into()
            } else {
                String::new()
            }
        };
        let multi = chunks.len() > 1;
        if multi {
            entry.chunk_size = chunks[0].chunk.len as i64;
            entry.chunk_type = zeros(&chunks[0]);
        }
        let name = entry.name.clone();
        self.pending.push(Pending {
            entry: self.entries.len(),
            offset: chunks.first().map(|c| c.frame),
            end: Some(end),
            chunk_digest: multi.then(|| chunks[0].frame),
        });
        self.entries.push(entry);
        if multi {
            for c in &chunks[1..] {
                self.pending.push(Pending {
                    entry: self.entries.len(),
                    offset: Some(c.frame),
                    end: None,
                    chunk_digest: Some(c.frame),
                });
                self.entries.push(Entry {
                    kind: "chunk".into(),
                    name: name.clone(),
                    chunk_size: c.chunk.len as i64,
                    chunk_offset: c.chunk.offset as i64,
                    chunk_type: zeros(c),
                    ..Entry::default()
                });
            }
        }
        Ok(())
    }
}

/// Puts blob offsets and digests where frame numbers stood.
fn resolve(entries: &mut [Entry], pending: &[Pending], starts: &[u64], end: u64, digests: &[[u8; 32]]) {
    let offset = |frame: u64| starts.get(frame as usize).copied().unwrap_or(end) as i64;
    for p in pending {
        let e = &mut entries[p.entry];
        if let Some(f) = p.offset {
            e.offset = offset(f);
        }
        if let Some(f) = p.end {
            e.end_offset = offset(f);
        }
        if let Some(f) = p.chunk_digest {
            e.chunk_digest = digest_string(&digests[f as usize]);
        }
    }
}

/// Counts the bytes written through it.
struct CountIn<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountIn<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn skippable<W: Write>(out: &mut W, payload: &[u8]) -> io::Result<()> {
    out.write_all(&SKIPPABLE_MAGIC)?;
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(payload)
}

/// Converts an uncompressed tar into a zstd:chunked blob.
pub fn write_zstd_chunked<R: Read, W: Write>(
    tar: R,
    out: W,
    options: &WriteOptions,
) -> Result<Written> {
    write_with_frame_limit(tar, out, options, FRAME_LIMIT)
}

pub(crate) fn write_with_frame_limit<R: Read, W: Write>(
    tar: R,
    out: W,
    options: &WriteOptions,
    frame_limit: usize,
) -> Result<Written> {
    std::thread::scope(|scope| {
        let counting = Counting {
            inner: out,
            pos: 0,
            hasher: HashThread::spawn(scope),
        };
        let encoder = zstd::stream::write::Encoder::new(Vec::new(), options.level)?;
        let mut tar_split = MetadataWriter::new(CountIn {
            inner: encoder,
            n: 0,
        });
        let mut tar_digest = HashThread::spawn(scope);
        let frames = Frames::new(
            counting,
            options.level,
            options.threads.max(1),
            frame_limit,
            scope,
        )?;
        let mut sink = ChunkedSink {
            frames,
            entries: Vec::new(),
            pending: Vec::new(),
        };
        split(tar, &mut tar_digest, &mut tar_split, &mut sink)?;
        let (out, starts, digests) = sink.frames.finish()?;
        let mut entries = sink.entries;
        resolve(&mut entries, &sink.pending, &starts, out.pos, &digests);
        drop((starts, digests, sink.pending));
        let (diff_id, uncompressed_size) = tar_digest.finish()?;
        finish_blob(out, entries, tar_split, options, diff_id, uncompressed_size)
    })
}

/// Writes the TOC, the tar-split and the footer after the frames.
fn finish_blob<W: Write>(
    mut out: Counting<'_, W>,
    entries: Vec<Entry>,
    tar_split: MetadataWriter<CountIn<zstd::stream::write::Encoder<'static, Vec<u8>>>>,
    options: &WriteOptions,
    diff_id: [u8; 32],
    uncompressed_size: u64,
) -> Result<Written> {
    let counted = tar_split.finish()?;
    let tar_split_len = counted.n;
    let tar_split = counted.inner.finish()?;

    let tar_split_digest = {
        let mut h = Sha256::new();
        h.update(&tar_split);
        sha256_hex(h)
    };
    let toc = Toc {
        version: 1,
        entries,
        tar_split_digest: tar_split_digest.clone(),
    };
    let json = serde_json::to_vec(&toc).map_err(io::Error::other)?;
    let toc_compressed = zstd::bulk::compress(&json, options.level)?;
    let toc_offset = out.pos + 8;
    skippable(&mut out, &toc_compressed)?;
    let tar_split_offset = out.pos + 8;
    skippable(&mut out, &tar_split)?;
    let tar_split_pos = (tar_split_offset, tar_split.len() as u64, tar_split_len);
    let footer = Footer {
        dialect: Dialect::Current,
        toc_offset,
        toc_compressed_len: toc_compressed.len() as u64,
        toc_len: json.len() as u64,
        tar_split: Some(tar_split_pos),
    };
    out.write_all(&footer::encode(&footer))?;
    out.flush()?;
    let toc_digest = {
        let mut h = Sha256::new();
        h.update(&toc_compressed);
        sha256_hex(h)
    };
    let location = Location {
        toc_digest: toc_digest.clone(),
        toc_offset,
        toc_compressed_len: toc_compressed.len() as u64,
        toc_len: json.len() as u64,
        tar_split: Some(tar_split_pos),
    };
    let blob_size = out.pos;
    let (blob_digest, _) = out.hasher.finish()?;
    Ok(Written {
        annotations: annotations::annotations(&location, options.legacy_annotations),
        toc_digest,
        diff_id: digest_string(&diff_id),
        uncompressed_size,
        blob_digest: digest_string(&blob_digest),
        blob_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and big files, chunked ones, holes, and one file of 12 MiB
    /// with no split point at all (one chunk bigger than a batch).
    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        };
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).expect("append");
        };
        for i in 0..300 {
            add(&format!("small/{i}"), &noise(i * 37));
        }
        let mut holes = noise(300_000);
        holes[100_000..200_000].fill(0);
        add("holes", &holes);
        add("big", &noise(3 << 20));
        add("flat", &vec![1u8; 12 << 20]);
        add("empty", &[]);
        b.into_inner().expect("tar")
    }

    fn convert(tar: &[u8], threads: usize, frame_limit: usize) -> (Vec<u8>, Written) {
        let mut blob = Vec::new();
        let options = WriteOptions {
            threads,
            ..WriteOptions::default()
        };
        let written = write_with_frame_limit(tar, &mut blob, &options, frame_limit).expect("write");
        (blob, written)
    }

    #[test]
    fn the_blob_does_not_depend_on_threads_or_where_frames_are_compressed() {
        let tar = sample_tar();
        let (want, written) = convert(&tar, 1, FRAME_LIMIT);
        let flat_chunks = crate::chunker::chunks(&[1u8; 64 << 10]);
        assert_eq!(flat_chunks.len(), 1, "the flat file must be one chunk");
        assert_eq!(zstd::decode_all(&want[..]).expect("plain zstd"), tar);
        assert_eq!(written.blob_size, want.len() as u64);
        for (threads, limit) in [(2, FRAME_LIMIT), (3, FRAME_LIMIT), (7, FRAME_LIMIT), (1, 1024), (3, 1024), (2, 1)] {
            let (blob, w) = convert(&tar, threads, limit);
            assert!(blob == want, "{threads} threads, frame limit {limit}: another blob");
            assert_eq!((w.toc_digest.as_str(), w.blob_digest.as_str()), (written.toc_digest.as_str(), written.blob_digest.as_str()));
        }
    }

    /// Hands out at most `piece` bytes per read, as a pipe does.
    struct Pieces<'a> {
        data: &'a [u8],
        piece: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.piece).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Holes and short zero runs that span many reads: each chunk's frames
    /// hold exactly its bytes, however the input arrives.
    #[test]
    fn chunks_do_not_depend_on_how_the_input_is_read() {
        let mut b = tar::Builder::new(Vec::new());
        let mut data = Vec::new();
        for (i, zeros) in [50_000usize, 700, 3000, 200_000, 1023, 1024, 1025].iter().enumerate() {
            data.extend((0..5000).map(|j| ((i * 7919 + j * 31) % 251 + 1) as u8));
            data.extend(std::iter::repeat_n(0u8, *zeros));
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "sparse", &data[..]).expect("append");
        let tar = b.into_inner().expect("tar");
        let options = WriteOptions::default();
        let mut want = Vec::new();
        let written = write_zstd_chunked(&tar[..], &mut want, &options).expect("write");
        let toc = crate::read_zstd_chunked(&want[..], Some(&written.annotations)).expect("read");
        let file = toc.toc.entries.iter().position(|e| e.name == "sparse").expect("entry");
        let pieces = toc.toc.pieces(file).expect("pieces");
        assert!(pieces.iter().filter(|p| p.zeros).count() >= 3, "{pieces:?}");
        for (k, p) in pieces.iter().enumerate() {
            let end = pieces.get(k + 1).map_or(toc.toc.entries[file].end_offset as u64, |n| n.offset);
            let bytes = zstd::decode_all(&want[p.offset as usize..end as usize]).expect("frame");
            let expected = &data[p.file_offset as usize..(p.file_offset + p.len) as usize];
            assert!(bytes == expected, "piece {k} ({p:?}) holds {} bytes of other content", bytes.len());
        }
        for piece in [1, 7, 512, 1000, 4096, 65_536] {
            let mut blob = Vec::new();
            write_zstd_chunked(Pieces { data: &tar, piece }, &mut blob, &options).expect("write");
            assert!(blob == want, "reads of {piece} bytes give another blob");
        }
    }

    #[test]
    fn times_like_go() {
        assert_eq!(rfc3339(Time { secs: 0, nanos: 0 }), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Time {
                secs: 1_704_164_645,
                nanos: 0
            }),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            rfc3339(Time {
                secs: 1_704_164_645,
                nanos: 500_000_000
            }),
            "2024-01-02T03:04:05.5Z"
        );
        assert_eq!(rfc3339(Time { secs: -1, nanos: 0 }), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(Time {
                secs: 951_782_400,
                nanos: 0
            }),
            "2000-02-29T00:00:00Z"
        );
    }
}
