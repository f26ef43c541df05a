//! Writing eStargz: every payload chunk opens a gzip member, headers and
//! padding go into the member open at the time, and the TOC entry
//! `stargz.index.json` closes the tar in a member of its own, followed by
//! the footer (`../shared/spec/estargz.md` §8). The input's headers are
//! kept byte for byte (as stargz-snapshotter's `AppendTarLossLess` does),
//! so the blob's tar is the input's with the TOC entry appended.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest, Sha256};
use strata_tarsplit::{HeaderInfo, MetadataWriter, Payload, SplitSink, Time};

use crate::error::{Error, Result};
use crate::estargz::{TOC_DIGEST_ANNOTATION, TOC_NAME, UNCOMPRESSED_SIZE_ANNOTATION, footer};
use crate::toc::{Entry, Toc};
use crate::writer::{entry_from_header, rfc3339};

/// How an eStargz blob is written.
#[derive(Clone, Debug)]
pub struct EstargzOptions {
    /// gzip level (0–9).
    pub level: u32,
    /// Payload bytes per chunk (a gzip member each); the last may be short.
    pub chunk_size: u64,
}

impl Default for EstargzOptions {
    fn default() -> Self {
        EstargzOptions {
            level: 6,
            chunk_size: 4 << 20,
        }
    }
}

/// What writing an eStargz blob gave.
#[derive(Clone, Debug)]
pub struct EstargzWritten {
    /// `sha256:` of the TOC JSON.
    pub toc_digest: String,
    /// `sha256:` of the blob's tar (the input's entries and the TOC entry).
    pub diff_id: String,
    /// Bytes of that tar.
    pub uncompressed_size: u64,
    /// Bytes of the blob.
    pub blob_size: u64,
    /// `sha256:` of the blob.
    pub blob_digest: String,
    /// The layer descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Entries a new eStargz blob must not carry over from its input.
const DROPPED: [&str; 3] = [TOC_NAME, ".prefetch.landmark", ".no.prefetch.landmark"];

/// Counts and hashes the blob.
struct Counting<W> {
    inner: W,
    count: u64,
    hash: Sha256,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct EstargzSink<W: Write> {
    /// The member being written; `out` while none is open.
    member: Option<GzEncoder<Counting<W>>>,
    out: Option<Counting<W>>,
    level: Compression,
    chunk_size: u64,
    /// The tar's bytes, hashed (the diffID) and counted.
    diff: Sha256,
    diff_len: u64,
    entries: Vec<Entry>,
    /// Raw bytes since the last payload: its padding, then headers.
    raw: Vec<u8>,
    /// Padding of the last payload, at the start of `raw`.
    padding: usize,
    /// That padding belongs to a dropped entry.
    drop_padding: bool,
}

fn name_of(header: &HeaderInfo) -> String {
    String::from_utf8_lossy(&header.name).into_owned()
}

fn dropped(name: &str) -> bool {
    let clean = name.trim_start_matches("./").trim_start_matches('/');
    DROPPED.contains(&clean)
}

fn sha(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl<W: Write> EstargzSink<W> {
    fn member(&mut self) -> io::Result<&mut GzEncoder<Counting<W>>> {
        if self.member.is_none() {
            let out = self.out.take().ok_or_else(|| io::Error::other("the blob's writer is gone"))?;
            self.member = Some(GzEncoder::new(out, self.level));
        }
        Ok(self.member.as_mut().expect("opened above"))
    }

    fn close_member(&mut self) -> io::Result<()> {
        if let Some(member) = self.member.take() {
            self.out = Some(member.finish()?);
        }
        Ok(())
    }

    /// Where the next member starts.
    fn offset(&mut self) -> io::Result<u64> {
        self.close_member()?;
        Ok(self.out.as_ref().map_or(0, |o| o.count))
    }

    /// Writes tar bytes into the open member.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.diff.update(bytes);
        self.diff_len += bytes.len() as u64;
        self.member()?.write_all(bytes)
    }

    /// The pending raw bytes: the last payload's padding (unless its entry
    /// was dropped) and, unless `keep_headers` is false, the headers after.
    fn flush_raw(&mut self, keep_headers: bool) -> io::Result<()> {
        let raw = std::mem::take(&mut self.raw);
        let padding = self.padding.min(raw.len());
        if !self.drop_padding {
            self.put(&raw[..padding])?;
        }
        if keep_headers {
            self.put(&raw[padding..])?;
        }
        Ok(())
    }

    fn entry(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> io::Result<()> {
        let name = name_of(header);
        let size = u64::try_from(header.size.max(0)).unwrap_or(0);
        let next_padding = ((512 - size % 512) % 512) as usize;
        if dropped(&name) {
            self.flush_raw(false)?;
            self.padding = next_padding;
            self.drop_padding = true;
            return Ok(());
        }
        self.flush_raw(true)?;
        self.padding = next_padding;
        self.drop_padding = false;
        let mut entry = entry_from_header(header)?;
        // Seconds only, as the Go writer records them; none for the epoch.
        entry.mod_time = if header.mtime.secs == 0 {
            String::new()
        } else {
            rfc3339(Time {
                secs: header.mtime.secs,
                nanos: 0,
            })
        };
        entry.access_time.clear();
        entry.change_time.clear();
        let Some(payload) = payload.filter(|_| entry.kind == "reg" && size > 0) else {
            self.entries.push(entry);
            return Ok(());
        };
        let first = self.entries.len();
        let mut file_hash = Sha256::new();
        let mut chunk_offset = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        while chunk_offset < size {
            let len = self.chunk_size.min(size - chunk_offset);
            let offset = self.offset()?;
            let mut chunk_hash = Sha256::new();
            let mut left = len;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = payload.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{name}: the payload ends early")));
                }
                chunk_hash.update(&buf[..n]);
                file_hash.update(&buf[..n]);
                self.put(&buf[..n])?;
                left -= n as u64;
            }
            let chunked = size > self.chunk_size;
            let mut e = if chunk_offset == 0 {
                std::mem::take(&mut entry)
            } else {
                Entry {
                    kind: "chunk".into(),
                    name: name.clone(),
                    chunk_offset: chunk_offset as i64,
                    ..Entry::default()
                }
            };
            e.offset = offset as i64;
            if chunked {
                // The last chunk's size is what is left.
                if chunk_offset + len < size {
                    e.chunk_size = len as i64;
                }
                e.chunk_digest = hex(&chunk_hash.finalize());
            }
            self.entries.push(e);
            chunk_offset += len;
        }
        self.entries[first].digest = hex(&file_hash.finalize());
        Ok(())
    }
}

impl<W: Write> SplitSink for EstargzSink<W> {
    fn raw(&mut self, bytes: &[u8]) -> strata_tarsplit::Result<()> {
        self.raw.extend_from_slice(bytes);
        Ok(())
    }

    fn entry(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> io::Result<()> {
        EstargzSink::entry(self, header, payload)
    }
}

/// The ustar header of the TOC entry: only its name, type and size set.
fn toc_header(size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..TOC_NAME.len()].copy_from_slice(TOC_NAME.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let digits = field.len() - 1;
        field[..digits].copy_from_slice(format!("{v:0digits$o}").as_bytes());
    };
    octal(&mut h[100..108], 0);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// Converts the layer tar `input` into an eStargz blob written to `out`.
/// An existing TOC entry or landmark in the input is dropped.
pub fn write_estargz<R: Read, W: Write>(input: R, out: W, options: &EstargzOptions) -> Result<EstargzWritten> {
    if options.chunk_size == 0 {
        return Err(Error::Io(io::Error::new(io::ErrorKind::InvalidInput, "chunk size 0")));
    }
    let mut sink = EstargzSink {
        member: None,
        out: Some(Counting {
            inner: out,
            count: 0,
            hash: Sha256::new(),
        }),
        level: Compression::new(options.level.min(9)),
        chunk_size: options.chunk_size,
        diff: Sha256::new(),
        diff_len: 0,
        entries: Vec::new(),
        raw: Vec::new(),
        padding: 0,
        drop_padding: false,
    };
    let mut metadata = MetadataWriter::new(io::sink());
    strata_tarsplit::split(input, io::sink(), &mut metadata, &mut sink).map_err(|e| Error::Io(io::Error::other(e)))?;
    // What follows the last entry is its padding and the end of the
    // archive: the padding stays, the end comes after the TOC entry.
    sink.raw.truncate(sink.padding);
    sink.flush_raw(false)?;
    let toc = Toc {
        version: 1,
        entries: std::mem::take(&mut sink.entries),
        tar_split_digest: String::new(),
    };
    let mut json = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    toc.serialize(&mut serde_json::Serializer::with_formatter(&mut json, formatter))
        .map_err(|e| Error::Io(io::Error::other(e)))?;
    let toc_offset = sink.offset()?;
    let json_len = json.len() as u64;
    sink.put(&toc_header(json_len))?;
    sink.put(&json)?;
    let pad = ((512 - json_len % 512) % 512) as usize;
    sink.put(&[0u8; 512][..pad])?;
    sink.put(&[0u8; 1024])?;
    sink.close_member()?;
    let mut out = sink.out.take().ok_or_else(|| Error::Io(io::Error::other("the blob's writer is gone")))?;
    out.write_all(&footer(toc_offset))?;
    out.flush()?;
    let toc_digest = sha(&json);
    let diff_id = hex(&sink.diff.finalize());
    let annotations = BTreeMap::from([
        (TOC_DIGEST_ANNOTATION.to_owned(), toc_digest.clone()),
        (UNCOMPRESSED_SIZE_ANNOTATION.to_owned(), sink.diff_len.to_string()),
    ]);
    Ok(EstargzWritten {
        toc_digest,
        diff_id,
        uncompressed_size: sink.diff_len,
        blob_size: out.count,
        blob_digest: hex(&out.hash.finalize()),
        annotations,
    })
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::estargz::read_estargz;

    fn layer() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, name, data).expect("append");
        };
        add("a", b"hello");
        add("big", &(0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        add("empty", b"");
        add(".no.prefetch.landmark", b"v");
        add("z", b"last");
        b.into_inner().expect("tar")
    }

    #[test]
    fn the_blob_is_the_input_tar_with_the_toc_entry_appended() {
        let input = layer();
        let mut blob = Vec::new();
        let options = EstargzOptions {
            chunk_size: 100_000,
            ..EstargzOptions::default()
        };
        let written = write_estargz(&input[..], &mut blob, &options).expect("write");
        assert_eq!(written.blob_size, blob.len() as u64);
        assert_eq!(written.blob_digest, sha(&blob));
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut tar).expect("gunzip");
        assert_eq!(written.diff_id, sha(&tar));
        assert_eq!(written.uncompressed_size, tar.len() as u64);
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").display().to_string())
            .collect();
        assert_eq!(names, ["a", "big", "empty", "z", TOC_NAME]);
        // The entries before the TOC are the input's bytes.
        let landmark_at = 1024 + 512 + 300_000usize.next_multiple_of(512) + 512;
        assert!(tar[..landmark_at] == input[..landmark_at], "the entries before the landmark are the input's");

        let toc = read_estargz(&blob[..], Some(&written.annotations)).expect("read");
        let big: Vec<&Entry> = toc.toc.entries.iter().filter(|e| e.name == "big").collect();
        assert_eq!(big.len(), 3, "three chunks");
        assert_eq!(big[0].chunk_size, 100_000);
        assert_eq!(big[2].chunk_size, 0, "the last takes what is left");
        // Each chunk's member starts at its offset.
        for e in &big {
            let mut out = vec![0u8; 100];
            flate2::read::GzDecoder::new(&blob[e.offset as usize..]).read_exact(&mut out).expect("member");
            let at = e.chunk_offset as usize;
            let want: Vec<u8> = (at..at + 100).map(|i| (i % 251) as u8).collect();
            assert_eq!(out, want);
        }
    }
}
