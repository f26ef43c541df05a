//! A zstd:chunked layer rebuilt from its TOC: [`plan_layer`] finds which
//! files and chunks local layers already hold and which pieces of the blob
//! must be fetched; [`fetch_pieces`] fetches those in blob order and
//! decompresses them; [`TocGetter`] hands tar-split assembly each file's
//! bytes, checking every file's digest before it counts as done. The
//! assembled tar then goes through the store's ordinary extraction, so a
//! partial pull is extracted and verified (diffID included) exactly like a
//! full one.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use strata_dedup_cache::{ChunkCache, Found};
use strata_toc::{Toc, TocItem};

use crate::local_headers::{LocalHeaders, Span, pad};
use crate::pieces::{PieceReceiver, PieceSender};
use crate::{ByteRange, Error, FetchStats, Planner, RangeSource, Result};

/// A piece of the blob to fetch: compressed `range`, decompressing to
/// `length` bytes, with the SHA-256 of those bytes when the TOC gives one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceNeed {
    pub range: ByteRange,
    /// What it decompresses to: exactly, or for `headers` at most.
    pub length: u64,
    pub digest: Option<[u8; 32]>,
    /// The tar's headers and padding between two payloads (the frames a
    /// blob without tar-split holds them in): their size is known only
    /// once decompressed, and an empty block follows their bytes.
    pub headers: bool,
    /// gzip members (eStargz), not zstd frames.
    pub gzip: bool,
    /// Uncompressed bytes passed over before the headers: a payload
    /// reused from a local layer, whose member holds the headers after it.
    pub skip: u64,
    /// After the payload, the rest of its gzip member holds the next run
    /// of headers (at most this many bytes): sent as header frames are.
    pub trailing_headers: Option<u64>,
}

/// How a blob's payloads are compressed, and so where its headers lie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frames {
    /// zstd frames (zstd:chunked): the headers between two payloads are
    /// frames of their own.
    #[default]
    Zstd,
    /// gzip members (eStargz): the headers after a payload share its last
    /// member, up to the next payload's.
    Gzip,
}

/// What the plan reuses and fetches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Regular files with content.
    pub files: u64,
    /// Files found whole in local layers.
    pub files_reused: u64,
    /// Uncompressed bytes taken from local layers (whole files and chunks).
    pub bytes_reused: u64,
    /// Uncompressed bytes of all-zero chunks, written without fetching.
    pub bytes_zero: u64,
    /// Compressed bytes of the pieces to fetch.
    pub bytes_to_fetch: u64,
    /// Of those, header frames (a blob rebuilt without its tar-split).
    pub header_bytes_to_fetch: u64,
    /// Runs of headers between payloads taken from a local layer's
    /// tar-split instead of fetched (see [`LayerPlanner::predicting`]).
    pub headers_local: u64,
    /// Uncompressed bytes those pieces hold.
    pub bytes_fetched_uncompressed: u64,
}

enum Part {
    Zeros(u64),
    Local(LocalPart),
    Fetch(u64),
}

/// `length` bytes at `offset` of a local file: its layer root and path
/// are kept once per plan (see [`Places`]), not with every part.
#[derive(Clone, Copy, Debug)]
struct LocalPart {
    root: u32,
    path_start: u32,
    path_len: u32,
    offset: u64,
    length: u64,
}

/// The local layers and file paths a plan's parts point into: 200 000
/// reused files cost their paths' bytes here, where each owned `Found`
/// cost a root handle, a path allocation and a vector of parts.
#[derive(Default)]
struct Places {
    roots: Vec<Arc<cap_std::fs::Dir>>,
    paths: String,
}

impl Places {
    fn add(&mut self, found: Found) -> Result<LocalPart> {
        let root = match self.roots.iter().rposition(|r| Arc::ptr_eq(r, &found.root)) {
            Some(i) => i,
            None => {
                self.roots.push(found.root);
                self.roots.len() - 1
            }
        };
        let too_many = || Error::Invalid {
            what: "the TOC".into(),
            reason: "it reuses more than 4 GiB of local paths".into(),
        };
        let path_start = u32::try_from(self.paths.len()).map_err(|_| too_many())?;
        let path_len = u32::try_from(found.path.len()).map_err(|_| too_many())?;
        path_start.checked_add(path_len).ok_or_else(too_many)?;
        self.paths.push_str(&found.path);
        Ok(LocalPart {
            root: root as u32,
            path_start,
            path_len,
            offset: found.offset,
            length: found.length,
        })
    }

    fn root(&self, part: &LocalPart) -> &Arc<cap_std::fs::Dir> {
        &self.roots[part.root as usize]
    }

    fn path(&self, part: &LocalPart) -> &str {
        &self.paths[part.path_start as usize..(part.path_start + part.path_len) as usize]
    }
}

/// A file to rebuild, in TOC order: files come to the assembly in the
/// tar's order, which is the TOC's, so no name needs keeping but a hash to
/// check the two agree (and, when the tar's headers come from the blob,
/// the name itself, as the extractor will meet it).
struct PlannedFile {
    name_hash: u64,
    name: Option<Box<[u8]>>,
    digest: [u8; 32],
    /// How many of the plan's parts, in order, are this file's.
    parts: u32,
    /// Its content is one fetched piece, whose digest (the file's) the
    /// fetch checks: the assembly need not hash it again.
    checked_by_fetch: bool,
    /// What comes before it when the tar is rebuilt without tar-split.
    headers_before: Before,
}

/// The tar's bytes between a payload and the one before it.
enum Before {
    /// None (tar-split gives them).
    Nothing,
    /// The blob's header frames, fetched.
    Fetched,
    /// Zeros (the padding of the payload before), then headers a local
    /// layer has.
    Local { padding: u16, headers: Box<[Span]> },
    /// The same, then the end of the archive as the local layer's ends:
    /// 1 KiB of zeros and zeros up to a multiple of `record` bytes.
    LocalEnd { padding: u16, headers: Box<[Span]>, record: u32 },
}

/// Which bytes of a layer come from where.
pub struct LayerPlan {
    files: VecDeque<PlannedFile>,
    /// The files' parts, one after the other.
    parts: VecDeque<Part>,
    places: Places,
    pub needs: Vec<PieceNeed>,
    pub stats: PlanStats,
    /// What follows the last file.
    tail: Before,
    /// The tar's last bytes, known already (eStargz: the TOC's member).
    tar_end: Option<Box<dyn Read + Send>>,
    /// Where `Before::Local` headers lie.
    local_headers: Option<Arc<LocalHeaders>>,
    /// Headers of local entries rewritten to fit changed ones.
    patched: Vec<u8>,
}

impl LayerPlan {
    /// Drops the header frames and local headers from a plan made
    /// [`fetching_headers`](LayerPlanner::fetching_headers): the tar is to
    /// be rebuilt from its tar-split after all.
    pub fn without_headers(&mut self) {
        self.needs.retain(|n| !n.headers);
        self.stats.bytes_to_fetch -= self.stats.header_bytes_to_fetch;
        self.stats.header_bytes_to_fetch = 0;
        self.stats.headers_local = 0;
        for file in &mut self.files {
            file.headers_before = Before::Nothing;
        }
        self.tail = Before::Nothing;
        self.local_headers = None;
        self.patched = Vec::new();
    }

    /// Bytes the rebuilt tar ends with, after the last headers (an eStargz
    /// blob's TOC member, decompressed), read when the rest is written.
    pub fn set_tar_end(&mut self, bytes: impl Read + Send + 'static) {
        self.tar_end = Some(Box::new(bytes));
    }
}

impl std::fmt::Debug for LayerPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerPlan").field("needs", &self.needs.len()).field("stats", &self.stats).finish()
    }
}

/// A tar or TOC name as a lookup key: no leading `./` or `/`, no
/// trailing `/`, hashed.
pub(crate) fn name_hash(name: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for part in name.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".") {
        part.hash(&mut h);
    }
    h.finish()
}

fn digest_bytes(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Plans a layer from its TOC items as they stream by (see
/// [`strata_toc::read_zstd_chunked_with`]): the TOC need never be held.
pub struct LayerPlanner<'c> {
    cache: &'c dyn ChunkCache,
    data_end: u64,
    plan: LayerPlan,
    /// The last piece to fetch, whose end is the next payload's offset.
    open: Option<usize>,
    last_end: u64,
    /// Where the next header frames start, when they are to be fetched.
    headers_from: Option<u64>,
    /// TOC entries since the last payload: their headers lie ahead.
    entries_since: u64,
    /// Local headers of those entries, while every one of them has some.
    local_run: Option<Vec<Span>>,
    /// Padding after the last payload (it opens the next header frames).
    padding: u64,
    frames: Frames,
    /// The last payload's last piece: its member's offset and length, and
    /// its need when fetched (gzip: the headers after it are in it).
    last_piece: Option<(u64, u64, Option<usize>)>,
}

/// Room for the headers of one tar entry (a PAX header with long names and
/// xattrs included): header frames may decompress to this much per entry
/// they cover, plus `HEADER_ROOM_BASE` (the tar's end and its padding).
const HEADER_ROOM_PER_ENTRY: u64 = 160 << 10;
const HEADER_ROOM_BASE: u64 = 1 << 20;

impl std::fmt::Debug for LayerPlanner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerPlanner").field("plan", &self.plan).finish()
    }
}

impl<'c> LayerPlanner<'c> {
    /// `data_end` is where the payload frames end (the TOC's offset).
    pub fn new(data_end: u64, cache: &'c dyn ChunkCache) -> Self {
        LayerPlanner {
            cache,
            data_end,
            plan: LayerPlan {
                files: VecDeque::new(),
                parts: VecDeque::new(),
                places: Places::default(),
                needs: Vec::new(),
                stats: PlanStats::default(),
                tail: Before::Nothing,
                tar_end: None,
                local_headers: None,
                patched: Vec::new(),
            },
            open: None,
            last_end: 0,
            headers_from: None,
            entries_since: 0,
            local_run: Some(Vec::new()),
            padding: 0,
            frames: Frames::Zstd,
            last_piece: None,
        }
    }

    /// For an eStargz blob (implies [`fetching_headers`](Self::fetching_headers)):
    /// payloads are gzip members, and the headers after a payload lie in
    /// its last member. A file's payload ends at its `endOffset` or, as
    /// eStargz TOCs leave it out, where the next payload starts (or the
    /// TOC): the TOC can stream by with no look ahead.
    pub fn gzip_members(mut self) -> Self {
        self.frames = Frames::Gzip;
        self.headers_from = Some(0);
        self
    }

    /// With [`fetching_headers`](Self::fetching_headers): the headers
    /// between two payloads are taken from `local` when it has every entry
    /// there, described exactly as the TOC describes it, instead of
    /// fetched. Whether the guess was right shows in the diffID only.
    pub fn predicting(mut self, local: Arc<LocalHeaders>) -> Self {
        self.plan.local_headers = Some(local);
        self
    }

    /// Notes the headers of one more entry in the run ahead of a payload.
    fn note_headers(&mut self, entry: &strata_toc::Entry) {
        let found = match (&self.plan.local_headers, &self.local_run) {
            (Some(local), Some(_)) => local.find(entry, &mut self.plan.patched, self.frames == Frames::Gzip),
            _ => None,
        };
        match (found, &mut self.local_run) {
            (Some(span), Some(run)) => run.push(span),
            _ => self.local_run = None,
        }
    }

    /// For a blob without tar-split: the frames between payloads, which
    /// hold the tar's headers and padding, are fetched too, so that the
    /// original tar can be rebuilt (and its diffID checked) from the blob
    /// itself. Every file with content must then have an `endOffset`.
    pub fn fetching_headers(mut self) -> Self {
        self.headers_from = Some(0);
        self
    }

    /// Plans the header frames from where the last payload ended up to
    /// `end`, covering the headers of `entries` entries.
    fn add_headers(&mut self, end: u64, what: &dyn Fn() -> String) -> Result<Before> {
        let Some(from) = self.headers_from else { return Ok(Before::Nothing) };
        if end < from || from < self.last_end {
            return Err(Error::Invalid {
                what: what(),
                reason: format!("its payload at {end} does not follow the one before, which ends at {from}"),
            });
        }
        let padding = std::mem::take(&mut self.padding);
        let run = self.local_run.replace(Vec::new());
        if end == from {
            return Ok(Before::Nothing);
        }
        if let Some(run) = run.filter(|r| !r.is_empty()) {
            self.plan.stats.headers_local += 1;
            self.last_end = end;
            self.entries_since = 0;
            return Ok(Before::Local {
                padding: padding as u16,
                headers: run.into(),
            });
        }
        self.plan.stats.header_bytes_to_fetch += end - from;
        self.plan.needs.push(PieceNeed {
            range: ByteRange::new(from, end - from),
            length: HEADER_ROOM_BASE + self.entries_since * HEADER_ROOM_PER_ENTRY,
            digest: None,
            headers: true,
            gzip: false,
            skip: 0,
            trailing_headers: None,
        });
        self.plan.stats.bytes_to_fetch += end - from;
        self.last_end = end;
        self.entries_since = 0;
        Ok(Before::Fetched)
    }

    /// gzip members: plans the run of headers before the payload at `end`
    /// (or the TOC): guessed from local headers, else read from the
    /// member of the payload before (fetched anyway, or fetched for them),
    /// or from the blob's start.
    fn add_gap(&mut self, end: u64) -> Result<Before> {
        let padding = std::mem::take(&mut self.padding);
        let run = self.local_run.replace(Vec::new());
        let room = HEADER_ROOM_BASE + std::mem::take(&mut self.entries_since) * HEADER_ROOM_PER_ENTRY;
        if let Some(run) = run {
            if run.is_empty() && padding == 0 {
                return Ok(Before::Nothing);
            }
            self.plan.stats.headers_local += 1;
            return Ok(Before::Local {
                padding: padding as u16,
                headers: run.into(),
            });
        }
        let (from, skip) = match self.last_piece {
            Some((_, _, Some(need))) => {
                self.plan.needs[need].trailing_headers = Some(room);
                return Ok(Before::Fetched);
            }
            Some((offset, len, None)) => (offset, len),
            None => (0, 0),
        };
        if from < self.last_end || end <= from {
            return Err(Error::Invalid {
                what: "the TOC".into(),
                reason: format!("the headers before the payload at {end} do not lie after {}", self.last_end),
            });
        }
        self.plan.stats.header_bytes_to_fetch += end - from;
        self.plan.stats.bytes_to_fetch += end - from;
        self.plan.needs.push(PieceNeed {
            range: ByteRange::new(from, end - from),
            length: room,
            digest: None,
            headers: true,
            gzip: true,
            skip,
            trailing_headers: None,
        });
        self.last_end = end;
        Ok(Before::Fetched)
    }

    fn close_open(&mut self, end: u64, name: &str) -> Result<()> {
        let Some(i) = self.open.take() else { return Ok(()) };
        let need = &mut self.plan.needs[i];
        if end <= need.range.offset || end > self.data_end {
            return Err(Error::Invalid {
                what: format!("TOC entry {name:?}"),
                reason: format!(
                    "the payload before it, at {}, does not end inside the blob's payload area in order",
                    need.range.offset
                ),
            });
        }
        need.range.length = end - need.range.offset;
        self.plan.stats.bytes_to_fetch += need.range.length;
        self.last_end = end;
        Ok(())
    }

    /// Adds one (validated) TOC item.
    pub fn add(&mut self, item: &TocItem) -> Result<()> {
        let e = &item.entry;
        let invalid = |reason: String| Error::Invalid {
            what: format!("TOC entry {:?}", e.name),
            reason,
        };
        self.entries_since += 1;
        if self.headers_from.is_some() {
            self.note_headers(e);
        }
        if e.offset > 0 && self.headers_from.is_none() {
            self.close_open(e.offset as u64, &e.name)?;
        }
        if e.kind != "reg" || e.size <= 0 {
            return Ok(());
        }
        if self.frames == Frames::Gzip && e.offset > 0 {
            // The payload before ends where this one starts.
            self.close_open(e.offset as u64, &e.name)?;
        }
        let headers_before = match self.headers_from {
            None => Before::Nothing,
            Some(_) if self.frames == Frames::Gzip && e.offset <= 0 => {
                return Err(invalid("it has no offset: the tar headers around it cannot be located".into()));
            }
            Some(_) if self.frames == Frames::Gzip => self.add_gap(e.offset as u64)?,
            Some(_) if e.end_offset <= 0 || e.offset <= 0 => {
                return Err(invalid("it has no endOffset: the tar headers around it cannot be located".into()));
            }
            Some(_) => self.add_headers(e.offset as u64, &|| format!("TOC entry {:?}", e.name))?,
        };
        self.plan.stats.files += 1;
        let size = e.size as u64;
        let digest_text = if e.digest.is_empty() { strata_toc::EMPTY_DIGEST } else { e.digest.as_str() };
        let digest = digest_bytes(digest_text).ok_or_else(|| invalid(format!("digest {digest_text:?}")))?;
        let parts_before = self.plan.parts.len();
        let needs_before = self.plan.needs.len();
        let pieces = item.pieces().map_err(invalid)?;
        let mut last_need = None;
        if let Some(found) = self.cache.file(digest_text).filter(|f| f.length == size && f.offset == 0) {
            self.plan.stats.files_reused += 1;
            self.plan.stats.bytes_reused += size;
            let local = self.plan.places.add(found)?;
            self.plan.parts.push_back(Part::Local(local));
        } else {
            for (k, p) in pieces.iter().enumerate() {
                if p.zeros {
                    self.plan.stats.bytes_zero += p.len;
                    self.plan.parts.push_back(Part::Zeros(p.len));
                    continue;
                }
                if let Some(found) = p.digest.as_deref().and_then(|d| self.cache.chunk(d)).filter(|f| f.length == p.len) {
                    self.plan.stats.bytes_reused += p.len;
                    let local = self.plan.places.add(found)?;
                    self.plan.parts.push_back(Part::Local(local));
                    continue;
                }
                if p.offset < self.last_end || self.open.is_some() {
                    return Err(invalid(format!("payload piece at {} is not after the one before it", p.offset)));
                }
                let end = pieces
                    .get(k + 1)
                    .map(|n| n.offset)
                    .or_else(|| (e.end_offset > 0).then_some(e.end_offset as u64));
                // A file without chunks is one piece whose digest is the file's.
                let piece_digest = match &p.digest {
                    Some(d) => Some(digest_bytes(d).ok_or_else(|| invalid(format!("chunk digest {d:?}")))?),
                    None => (pieces.len() == 1).then_some(digest),
                };
                self.plan.stats.bytes_fetched_uncompressed += p.len;
                self.plan.needs.push(PieceNeed {
                    range: ByteRange::new(p.offset, 0),
                    length: p.len,
                    digest: piece_digest,
                    headers: false,
                    gzip: self.frames == Frames::Gzip,
                    skip: 0,
                    trailing_headers: None,
                });
                self.open = Some(self.plan.needs.len() - 1);
                if k + 1 == pieces.len() {
                    last_need = self.open;
                }
                if let Some(end) = end {
                    self.close_open(end, &e.name)?;
                }
                self.plan.parts.push_back(Part::Fetch(p.len));
            }
        }
        if self.headers_from.is_some() {
            // The next header frames start where this payload ends (when
            // eStargz leaves that out, at the next payload).
            if e.end_offset > 0 || self.frames == Frames::Zstd {
                self.close_open(e.end_offset as u64, &e.name)?;
            }
            self.headers_from = Some(e.end_offset as u64);
            self.padding = pad(size);
            self.last_piece = pieces.last().map(|p| (p.offset, p.len, last_need));
        }
        self.plan.files.push_back(PlannedFile {
            name_hash: name_hash(e.name.as_bytes()),
            name: self.headers_from.map(|_| e.name.as_bytes().into()),
            digest,
            parts: u32::try_from(self.plan.parts.len() - parts_before).map_err(|_| invalid("more than 2^32 chunks".into()))?,
            checked_by_fetch: self.plan.parts.len() == parts_before + 1
                && self.plan.needs.len() == needs_before + 1
                && self.plan.needs[needs_before].digest == Some(digest)
                && self.plan.needs[needs_before].length == size,
            headers_before,
        });
        Ok(())
    }

    /// [`finish`](Self::finish), the payload area ending at `data_end`:
    /// for an eStargz blob, whose TOC offset is known only once its TOC
    /// has streamed by (the planner was made with `u64::MAX`).
    pub fn finish_at(mut self, data_end: u64) -> Result<LayerPlan> {
        if self.last_end > data_end {
            return Err(Error::Invalid {
                what: "the TOC".into(),
                reason: format!("a payload ends at {}, after the TOC at {data_end}", self.last_end),
            });
        }
        self.data_end = data_end;
        self.finish()
    }

    pub fn finish(mut self) -> Result<LayerPlan> {
        let end = self.data_end;
        if self.frames == Frames::Gzip {
            self.close_open(end, "(the last)")?;
            self.plan.tail = self.add_gap(end)?;
            return Ok(self.plan);
        }
        if self.headers_from.is_some() {
            // The tar's end lies before the TOC's skippable frame header.
            let frames_end = end.checked_sub(8).ok_or_else(|| Error::Invalid {
                what: "the TOC".into(),
                reason: format!("its offset {end} leaves no room for the tar"),
            })?;
            // The tar's end is the writer's choice (Go ends with 1 KiB of
            // zeros, GNU tar pads to 10 KiB): guessed as the local layer's,
            // else fetched.
            let record = self.plan.local_headers.as_ref().and_then(|l| l.end_record());
            if let (Some(record), Some(run)) = (record, self.local_run.take()) {
                self.plan.stats.headers_local += 1;
                self.plan.tail = Before::LocalEnd {
                    padding: std::mem::take(&mut self.padding) as u16,
                    headers: run.into(),
                    record,
                };
                return Ok(self.plan);
            }
            self.local_run = None;
            self.plan.tail = self.add_headers(frames_end, &|| "the tar's end".into())?;
            return Ok(self.plan);
        }
        self.close_open(end, "(the last)")?;
        Ok(self.plan)
    }
}

/// Plans the layer a (validated) TOC describes; `data_end` is where the
/// payload frames end (the TOC's offset).
pub fn plan_layer(toc: &Toc, data_end: u64, cache: &dyn ChunkCache) -> Result<LayerPlan> {
    let mut planner = LayerPlanner::new(data_end, cache);
    let mut i = 0;
    while i < toc.entries.len() {
        let chunks = toc.entries[i + 1..].iter().take_while(|c| c.kind == "chunk").count();
        let item = TocItem {
            index: i,
            entry: toc.entries[i].clone(),
            chunks: toc.entries[i + 1..i + 1 + chunks].to_vec(),
        };
        planner.add(&item)?;
        i += 1 + chunks;
    }
    planner.finish()
}

const BLOCK: usize = 256 << 10;

/// Fetches `needs` from `source` and sends each piece's decompressed bytes
/// to `tx`, in order, exactly `length` bytes per piece, checking chunk
/// digests. On failure the error is also sent, so the reader learns why.
pub fn fetch_pieces(source: &dyn RangeSource, needs: &[PieceNeed], planner: &Planner, tx: &PieceSender) -> Result<FetchStats> {
    let ranges: Vec<ByteRange> = needs.iter().map(|n| n.range).collect();
    // One decompression context and input buffer serve every piece: made
    // per piece (a context is about 100 KiB to zero, the buffer a mapping
    // of its own), they cost more than decompressing a small file.
    let mut context = zstd::zstd_safe::DCtx::create();
    let mut input = vec![0u8; zstd::zstd_safe::DCtx::in_size()];
    let result = planner.fetch(source, &ranges, &mut |i, compressed| {
        let need = &needs[i];
        if need.gzip {
            return send_gzip(need, compressed, tx);
        }
        let mut decoder = zstd_decoder(&mut context, &mut input, compressed)?;
        if need.headers {
            return send_headers(need, &mut decoder, tx);
        }
        let what = piece_error(need.range.offset);
        let hash = send_piece(&mut decoder, need, &what, tx)?;
        // A frame that holds more than the TOC says is a lie too: its
        // bytes would belong to another piece.
        let mut more = [0u8; 1];
        if decoder.read(&mut more).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the piece at blob offset {} does not decompress: {e}", need.range.offset),
            )
        })? > 0
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the piece at blob offset {} decompresses to more than the {} bytes the TOC gives it",
                    need.range.offset, need.length
                ),
            ));
        }
        check_digest(hash, need, &what)
    });
    if let Err(e) = &result {
        let _ = tx.send(Err(e.to_string()));
    }
    result
}

/// Errors about the piece at blob offset `offset`.
fn piece_error(offset: u64) -> impl Fn(String) -> io::Error {
    move |reason| io::Error::new(io::ErrorKind::InvalidData, format!("the piece at blob offset {offset} {reason}"))
}

/// Sends a piece's `length` decompressed bytes on, hashing them when the
/// TOC gives their digest.
fn send_piece(decoder: &mut dyn Read, need: &PieceNeed, what: &dyn Fn(String) -> io::Error, tx: &PieceSender) -> io::Result<Option<Sha256>> {
    let mut hash = need.digest.as_ref().map(|_| Sha256::new());
    read_exactly(decoder, need.length, what, &mut |block| {
        if let Some(h) = &mut hash {
            h.update(&block);
        }
        tx.send(Ok(block)).map_err(|_| io::Error::other(ReceiverGone))
    })?;
    Ok(hash)
}

/// The piece's bytes, hashed by [`send_piece`], against the TOC's digest.
fn check_digest(hash: Option<Sha256>, need: &PieceNeed, what: &dyn Fn(String) -> io::Error) -> io::Result<()> {
    if let (Some(h), Some(expected)) = (hash, &need.digest) {
        let actual: [u8; 32] = h.finalize().into();
        if actual != *expected {
            return Err(what(format!("has digest {}, the TOC says {}", hex(&actual), hex(expected))));
        }
    }
    Ok(())
}

/// Reads exactly `want` decompressed bytes into blocks of at most
/// `BLOCK`, handing each to `each`.
fn read_exactly(decoder: &mut dyn Read, mut want: u64, what: &dyn Fn(String) -> io::Error, each: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()> {
    while want > 0 {
        let n = BLOCK.min(usize::try_from(want).unwrap_or(BLOCK));
        let mut block = Vec::with_capacity(n);
        decoder
            .take(n as u64)
            .read_to_end(&mut block)
            .map_err(|e| what(format!("does not decompress: {e}")))?;
        if block.len() < n {
            return Err(what(format!("decompresses to {} bytes too few", want - block.len() as u64)));
        }
        want -= n as u64;
        each(block)?;
    }
    Ok(())
}

/// Sends what a decoder has left as a run of headers, at most `room`
/// bytes, then an empty block.
fn send_rest_as_headers(decoder: &mut dyn Read, room: u64, what: &dyn Fn(String) -> io::Error, tx: &PieceSender) -> io::Result<()> {
    // A run of headers is mostly a few KiB: read into a block of its own
    // room, each would cost that room zeroed and faulted in.
    let mut scratch = [0u8; 16 << 10];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < scratch.len() {
            match decoder.read(&mut scratch[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(what(format!("do not decompress: {e}"))),
            }
        }
        if filled == 0 {
            break;
        }
        let block = scratch[..filled].to_vec();
        total += block.len() as u64;
        if total > room {
            return Err(what(format!("decompress to more than the {room} bytes the entries there can take")));
        }
        tx.send(Ok(block)).map_err(|_| io::Error::other(ReceiverGone))?;
    }
    tx.send(Ok(Vec::new())).map_err(|_| io::Error::other(ReceiverGone))
}

/// A piece of an eStargz blob: gzip members from a payload's start up to
/// the next payload's. The payload (or, for headers, the `skip` bytes of a
/// reused one) comes first; what follows it is the next run of headers.
fn send_gzip(need: &PieceNeed, compressed: &mut dyn Read, tx: &PieceSender) -> io::Result<()> {
    let offset = need.range.offset;
    let mut decoder = flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(BLOCK, compressed));
    if need.headers {
        let what = |reason: String| io::Error::new(io::ErrorKind::InvalidData, format!("the gzip members at blob offset {offset} {reason}"));
        io::copy(&mut (&mut decoder).take(need.skip), &mut io::sink()).map_err(|e| what(format!("do not decompress: {e}")))?;
        return send_rest_as_headers(&mut decoder, need.length, &what, tx);
    }
    let what = piece_error(offset);
    let hash = send_piece(&mut decoder, need, &what, tx)?;
    check_digest(hash, need, &what)?;
    match need.trailing_headers {
        Some(room) => {
            let what = |reason: String| {
                io::Error::new(io::ErrorKind::InvalidData, format!("the tar headers after the piece at blob offset {offset} {reason}"))
            };
            send_rest_as_headers(&mut decoder, room, &what, tx)
        }
        None => Ok(()),
    }
}

/// Decompresses header frames, sending their bytes and then an empty block.
fn send_headers(need: &PieceNeed, decoder: &mut dyn Read, tx: &PieceSender) -> io::Result<()> {
    let bad = |reason: String| {
        io::Error::new(io::ErrorKind::InvalidData, format!("the tar headers at blob offset {} {reason}", need.range.offset))
    };
    send_rest_as_headers(decoder, need.length, &bad, tx)
}

/// A decoder of the zstd frames `compressed` holds, on a context and an
/// input buffer used again for the next piece.
fn zstd_decoder<'a>(
    context: &'a mut zstd::zstd_safe::DCtx<'static>,
    input: &'a mut [u8],
    compressed: &'a mut dyn Read,
) -> io::Result<zstd::stream::read::Decoder<'a, Buffered<'a>>> {
    context
        .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
        .map_err(|code| io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
    let buffered = Buffered {
        inner: compressed,
        buf: input,
        pos: 0,
        filled: 0,
    };
    Ok(zstd::stream::read::Decoder::with_context(buffered, context))
}

/// A reader buffered in a buffer it borrows.
struct Buffered<'a> {
    inner: &'a mut dyn Read,
    buf: &'a mut [u8],
    pos: usize,
    filled: usize,
}

impl Read for Buffered<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Buffered<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            self.filled = self.inner.read(self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }
}

/// The assembly stopped taking pieces (it failed, or the TOC lists content
/// the tar-split never asks for).
#[derive(Debug)]
pub struct ReceiverGone;

impl std::fmt::Display for ReceiverGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the layer assembly stopped taking fetched pieces")
    }
}

impl std::error::Error for ReceiverGone {}

fn hex(digest: &[u8; 32]) -> String {
    let mut s = String::from("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Gives tar-split assembly each file's content from local layers, zeros
/// and the fetched pieces, checking each file's digest.
pub struct TocGetter {
    files: VecDeque<PlannedFile>,
    parts: VecDeque<Part>,
    places: Places,
    rx: PieceReceiver,
    pending: Vec<u8>,
    pos: usize,
    whole_local: Option<WholeLocal>,
    tail: Before,
    tar_end: Option<Box<dyn Read + Send>>,
    local_headers: Option<Arc<LocalHeaders>>,
    patched: Vec<u8>,
    files_done: u64,
    on_file_done: Option<FileDone>,
}

/// Told, each time a file's content has been served whole and its digest
/// checked, how many files are done.
pub type FileDone = Box<dyn FnMut(u64) + Send>;

/// Counts what passes to `inner`.
struct CountingWrite<'a> {
    inner: &'a mut dyn TarSink,
    count: &'a mut u64,
}

impl Write for CountingWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl TarSink for CountingWrite<'_> {
    fn read_from(&mut self, input: &mut dyn Read) -> io::Result<u64> {
        let n = self.inner.read_from(input)?;
        *self.count += n;
        Ok(n)
    }
}

/// Where [`TocGetter::write_tar`] writes the tar. Files are most of its
/// bytes: a sink with buffers of its own reads them straight in
/// (`read_from`), one copy fewer than writing from a buffer of the
/// getter's. [`CopyingSink`] gives any writer this by copying.
pub trait TarSink: Write {
    /// Appends everything `input` holds; returns how many bytes that was.
    fn read_from(&mut self, input: &mut dyn Read) -> io::Result<u64>;
}

/// Any writer as a [`TarSink`]: files are copied through a buffer.
#[derive(Debug)]
pub struct CopyingSink<W: Write>(pub W);

impl<W: Write> Write for CopyingSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> TarSink for CopyingSink<W> {
    fn read_from(&mut self, input: &mut dyn Read) -> io::Result<u64> {
        io::copy(input, &mut self.0)
    }
}

/// Told of each file taken whole from a local one: its name in the tar,
/// its size, and where it lies.
pub type WholeLocal = Box<dyn FnMut(&[u8], u64, &Found) + Send>;

impl std::fmt::Debug for TocGetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TocGetter").field("files", &self.files.len()).finish()
    }
}

impl TocGetter {
    pub fn new(plan: LayerPlan, rx: PieceReceiver) -> TocGetter {
        TocGetter {
            files: plan.files,
            parts: plan.parts,
            places: plan.places,
            rx,
            pending: Vec::new(),
            pos: 0,
            whole_local: None,
            tail: plan.tail,
            tar_end: plan.tar_end,
            local_headers: plan.local_headers,
            patched: plan.patched,
            files_done: 0,
            on_file_done: None,
        }
    }

    /// Calls `tell` with the number of files done as each one is.
    pub fn on_file_done(mut self, tell: FileDone) -> TocGetter {
        self.on_file_done = Some(tell);
        self
    }

    /// Calls `tell` for each file taken whole from a local file, before its
    /// bytes are read: the extractor can then clone or link that file
    /// instead of writing the bytes.
    pub fn on_whole_local(mut self, tell: WholeLocal) -> TocGetter {
        self.whole_local = Some(tell);
        self
    }

    /// How many files the TOC lists that the assembly never asked for.
    pub fn unused(&self) -> usize {
        self.files.len()
    }

    /// Writes the whole tar for a blob without tar-split, planned with
    /// [`LayerPlanner::fetching_headers`]: header frames and payloads in
    /// turn. Whatever the fetched headers say is checked by the tar's
    /// digest (the diffID) downstream.
    pub fn write_tar(&mut self, out: &mut dyn TarSink) -> io::Result<()> {
        let mut written = 0u64;
        let mut out = CountingWrite { inner: out, count: &mut written };
        while let Some(mut file) = self.files.pop_front() {
            let before = std::mem::replace(&mut file.headers_before, Before::Nothing);
            self.write_before(before, &mut out)?;
            let name = file.name.take().unwrap_or_default();
            out.read_from(&mut self.reader(file, &name))?;
        }
        let tail = std::mem::replace(&mut self.tail, Before::Nothing);
        if let Before::LocalEnd { padding, headers, record } = tail {
            self.write_before(Before::Local { padding, headers }, &mut out)?;
            let end = *out.count + 1024;
            let zeros = 1024 + (u64::from(record) - end % u64::from(record)) % u64::from(record);
            io::copy(&mut io::repeat(0).take(zeros), &mut out)?;
        } else {
            self.write_before(tail, &mut out)?;
        }
        match self.tar_end.take() {
            Some(mut end) => io::copy(&mut end, &mut out).map(drop),
            None => Ok(()),
        }
    }

    /// The tar's bytes before a payload (or after the last).
    fn write_before(&mut self, before: Before, out: &mut dyn Write) -> io::Result<()> {
        match before {
            Before::Nothing => Ok(()),
            Before::Fetched => self.copy_headers(out),
            Before::Local { padding, headers } | Before::LocalEnd { padding, headers, .. } => {
                out.write_all(&[0u8; 512][..padding as usize])?;
                let local = self.local_headers.as_ref().ok_or_else(|| io::Error::other("local headers went missing"))?;
                for span in headers {
                    // The plan decoded each span to choose it.
                    let bytes = local.bytes_in(span, &self.patched).ok_or_else(|| io::Error::other("local headers went bad"))?;
                    out.write_all(&bytes)?;
                }
                Ok(())
            }
        }
    }

    /// Copies one run of header frames: blocks up to an empty one.
    fn copy_headers(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if self.pos != self.pending.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a file's pieces hold more than the file"));
        }
        loop {
            match self.rx.recv() {
                Some(Ok(block)) if block.is_empty() => return Ok(()),
                Some(Ok(block)) => out.write_all(&block)?,
                Some(Err(reason)) => return Err(io::Error::other(reason)),
                None => return Err(io::Error::other("the fetch ended before the tar headers arrived")),
            }
        }
    }

    fn read_fetched(&mut self, buf: &mut [u8], left: u64) -> io::Result<usize> {
        if self.pos == self.pending.len() {
            self.pending = match self.rx.recv() {
                Some(Ok(block)) => block,
                Some(Err(reason)) => return Err(io::Error::other(reason)),
                None => return Err(io::Error::other("the fetch ended before this file's pieces arrived")),
            };
            self.pos = 0;
        }
        let n = buf.len().min(self.pending.len() - self.pos).min(usize::try_from(left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl strata_tarsplit::FileGetter for TocGetter {
    fn get(&mut self, name: &[u8]) -> io::Result<Box<dyn Read + '_>> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let file = match self.files.front() {
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{shown}: the tar-split names a file the TOC does not list"),
                ));
            }
            Some(f) if f.name_hash != name_hash(name) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{shown}: the tar-split names another file here than the TOC"),
                ));
            }
            Some(_) => self.files.pop_front().expect("checked"),
        };
        Ok(Box::new(self.reader(file, name)))
    }
}

impl TocGetter {
    /// The content of `file` (named `name` in the tar).
    fn reader(&mut self, file: PlannedFile, name: &[u8]) -> FileReader<'_> {
        // Fetched bytes are checked against the TOC here. Bytes reused from
        // local layers are not hashed again: the assembly checks each file
        // against the tar-split's CRC-64, and the store checks the diffID.
        let count = file.parts as usize;
        if let (Some(tell), 1, Some(Part::Local(local))) = (&mut self.whole_local, count, self.parts.front())
            && local.offset == 0
        {
            let found = Found {
                root: self.places.root(local).clone(),
                path: self.places.path(local).to_owned(),
                offset: 0,
                length: local.length,
            };
            tell(name, local.length, &found);
        }
        let fetched = !file.checked_by_fetch && self.parts.iter().take(count).any(|p| matches!(p, Part::Fetch(_)));
        FileReader {
            getter: self,
            digest: file.digest,
            name: String::from_utf8_lossy(name).into_owned(),
            parts_left: file.parts,
            current: None,
            hash: fetched.then(Sha256::new),
            done: false,
        }
    }
}

enum Current {
    Zeros(u64),
    Local(io::Take<std::fs::File>),
    Fetch(u64),
}

struct FileReader<'a> {
    getter: &'a mut TocGetter,
    name: String,
    digest: [u8; 32],
    /// How many of the getter's next parts are still this file's.
    parts_left: u32,
    current: Option<Current>,
    hash: Option<Sha256>,
    done: bool,
}

impl FileReader<'_> {
    fn open_local(&self, local: &LocalPart) -> io::Result<Current> {
        let places = &self.getter.places;
        let path = places.path(local);
        let mut file = open_unread(places.root(local), path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: reusing {path}: {e}", self.name)))?
            .into_std();
        // Most parts are whole files: a new descriptor is at 0 already.
        if local.offset > 0 {
            file.seek(SeekFrom::Start(local.offset))?;
        }
        Ok(Current::Local(file.take(local.length)))
    }

    fn next_part(&mut self) -> Option<Part> {
        self.parts_left = self.parts_left.checked_sub(1)?;
        self.getter.parts.pop_front()
    }
}

impl Drop for FileReader<'_> {
    /// The next file's parts follow this one's: a reader left early (on
    /// an error) still takes its own off the queue.
    fn drop(&mut self) {
        while self.next_part().is_some() {}
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = match &mut self.current {
                None => match self.next_part() {
                    Some(Part::Zeros(n)) => {
                        self.current = Some(Current::Zeros(n));
                        continue;
                    }
                    Some(Part::Local(local)) => {
                        self.current = Some(self.open_local(&local)?);
                        continue;
                    }
                    Some(Part::Fetch(n)) => {
                        self.current = Some(Current::Fetch(n));
                        continue;
                    }
                    None => {
                        if let Some(hash) = self.hash.take() {
                            let actual: [u8; 32] = hash.finalize().into();
                            if actual != self.digest {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("{}: content digest {}, the TOC says {}", self.name, hex(&actual), hex(&self.digest)),
                                ));
                            }
                        }
                        if !self.done {
                            self.done = true;
                            self.getter.files_done += 1;
                            let done = self.getter.files_done;
                            if let Some(tell) = &mut self.getter.on_file_done {
                                tell(done);
                            }
                        }
                        return Ok(0);
                    }
                },
                Some(Current::Zeros(0)) | Some(Current::Fetch(0)) => {
                    self.current = None;
                    continue;
                }
                Some(Current::Zeros(left)) => {
                    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    buf[..n].fill(0);
                    *left -= n as u64;
                    n
                }
                Some(Current::Fetch(left)) => {
                    let want = *left;
                    let n = self.getter.read_fetched(buf, want)?;
                    if let Some(Current::Fetch(left)) = &mut self.current {
                        *left -= n as u64;
                    }
                    n
                }
                Some(Current::Local(r)) => {
                    let n = r.read(buf)?;
                    if n == 0 {
                        if r.limit() > 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("{}: the local copy is {} bytes short", self.name, r.limit()),
                            ));
                        }
                        self.current = None;
                        continue;
                    }
                    n
                }
            };
            if let Some(h) = &mut self.hash {
                h.update(&buf[..n]);
            }
            return Ok(n);
        }
    }
}

/// Opens a local file to read without updating its access time: the
/// files a layer reuses were mostly extracted moments ago, with old times
/// from their tar, so each read would otherwise dirty its inode. Only the
/// owner (or root) may ask; anyone else reads it the ordinary way.
fn open_unread(root: &cap_std::fs::Dir, path: &str) -> io::Result<cap_std::fs::File> {
    use cap_std::fs::OpenOptionsExt;
    let mut options = cap_std::fs::OpenOptions::new();
    options.read(true).custom_flags(rustix::fs::OFlags::NOATIME.bits() as i32);
    match root.open_with(path, &options) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => root.open(path),
        other => other,
    }
}

/// A range source read through strata-toc's `ReadAt`, to read a blob's
/// footer, TOC and tar-split.
pub struct SourceReadAt<'a>(pub &'a dyn RangeSource);

impl std::fmt::Debug for SourceReadAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceReadAt")
    }
}

impl strata_toc::ReadAt for SourceReadAt<'_> {
    fn size(&self) -> io::Result<u64> {
        self.0.size().map_err(io::Error::other)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.0
            .fetch(&[ByteRange::new(offset, buf.len() as u64)], &mut |_, r| r.read_exact(buf))
            .map_err(io::Error::other)
    }
}
