//! Tar headers a local layer already has, standing in for the header
//! frames of a blob being pulled.
//!
//! An updated image's layer repeats most of its predecessor's entries
//! unchanged, and a tar writer gives an unchanged entry the same header
//! bytes. So the headers of an entry the TOC describes exactly as a local
//! layer's tar-split does are taken from that tar-split instead of fetched.
//! A guess that is wrong in a byte the TOC does not record (a PAX record it
//! drops, a formatting choice) shows as a wrong diffID, and the layer is
//! then rebuilt from what the blob itself carries.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;

use strata_tarsplit::{Entry as SplitEntry, MetadataReader, header_of};
use strata_toc::Entry;

use crate::toc_layer::name_hash;

/// How many (encoded) header bytes are kept at most: beyond, entries are
/// left to the blob's frames. Encoded, a Debian layer's headers take
/// about 75 bytes each, so 32 MiB hold about 450 000 of them; a layer of
/// 200 000 files with PAX headers would hold 300 MB as they are, and a
/// pull must stay under 256 MiB.
const MAX_BYTES: usize = 32 << 20;

/// The header blocks of each entry of a local layer, by name.
#[derive(Default)]
pub struct LocalHeaders {
    arena: Vec<u8>,
    /// What the arena's blocks are encoded against: the first block added.
    template: Option<Box<[u8; 512]>>,
    by_name: HashMap<u64, Span>,
    /// How the layer's tar ends: 1 KiB of zeros, then zeros up to a
    /// multiple of this (512: none). `None` when it ends otherwise.
    end_record: Option<u32>,
    /// How the layer's writer gives an entry its time to the nanosecond,
    /// learned from an entry that has one.
    time_header: Option<TimeHeaderStyle>,
}

/// A PAX extended header that carries only the entry's time, in GNU tar's
/// `--format=pax` style: named `DIR/PaxHeaders/BASE` after its entry, with
/// the entry's time (to the second), everything else fixed. Learned from
/// an entry of the layer, so that a file whose time gains a fraction of a
/// second gets the extended header its writer would have given it.
#[derive(Clone, Debug)]
struct TimeHeaderStyle {
    /// The learned extended header block (its fixed fields).
    block: [u8; 512],
    /// The time record's value as it was written (for its digits).
    time: Vec<u8>,
}

/// Where one entry's header blocks lie: in the local layer's arena, or
/// (`patched`) in the plan's own, for a header changed to fit the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) offset: u32,
    pub(crate) len: u32,
    pub(crate) patched: bool,
}

/// Marks a name seen twice: neither copy is a safe guess.
const AMBIGUOUS: Span = Span {
    offset: u32::MAX,
    len: 0,
    patched: false,
};

impl std::fmt::Debug for LocalHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHeaders")
            .field("entries", &self.by_name.len())
            .field("bytes", &self.arena.len())
            .finish()
    }
}

impl LocalHeaders {
    /// Reads a layer's tar-split metadata (uncompressed records).
    pub fn from_tar_split<R: Read>(records: R) -> std::io::Result<LocalHeaders> {
        let mut builder = HeadersBuilder::default();
        for record in MetadataReader::new(records) {
            match record.map_err(std::io::Error::other)? {
                SplitEntry::Segment(bytes) => builder.segment(&bytes),
                SplitEntry::File(file) => builder.file(&file.name, file.size),
            }
        }
        Ok(builder.finish())
    }

    /// How the layer's tar ends after its last entry: 1 KiB of zeros, then
    /// zeros up to a multiple of this many bytes.
    pub(crate) fn end_record(&self) -> Option<u32> {
        self.end_record
    }

    fn add(&mut self, name: &[u8], blocks: &[u8]) {
        // Encoded, a block takes at most 8 bytes more.
        if blocks.is_empty() || !blocks.len().is_multiple_of(512) || self.arena.len() + blocks.len() / 512 * 520 > MAX_BYTES {
            return;
        }
        match self.by_name.entry(name_hash(name)) {
            std::collections::hash_map::Entry::Occupied(mut seen) => {
                seen.insert(AMBIGUOUS);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                let offset = self.arena.len();
                let template = self.template.get_or_insert_with(|| Box::new(blocks[..512].try_into().expect("a block")));
                encode_blocks(blocks, template, &mut self.arena);
                slot.insert(Span {
                    offset: offset as u32,
                    len: (self.arena.len() - offset) as u32,
                    patched: false,
                });
            }
        }
    }

    /// How many entries it knows.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The header blocks of the local entry of that name, when they say
    /// exactly what the TOC says of `listed`; or, for a file whose size or
    /// time changed, a copy of its single header block with those fields
    /// rewritten in the same style, appended to `patched`.
    ///
    /// `to_the_second`: the TOC records times to the second only (eStargz).
    pub(crate) fn find(&self, listed: &Entry, patched: &mut Vec<u8>, to_the_second: bool) -> Option<Span> {
        let span = *self.by_name.get(&name_hash(listed.name.as_bytes()))?;
        if span == AMBIGUOUS {
            return None;
        }
        let bytes = self.bytes(span)?;
        let header = header_of(&bytes)?;
        let same = if to_the_second { strata_toc::describes_to_the_second } else { strata_toc::describes };
        if same(listed, &header) {
            return Some(span);
        }
        if to_the_second {
            // A changed entry's time to the nanosecond is not known.
            return None;
        }
        let block = patch(&bytes, listed, self.time_header.as_ref())?;
        let fits = header_of(&block).is_some_and(|h| strata_toc::describes(listed, &h));
        if !fits || patched.len() + block.len() > MAX_BYTES {
            return None;
        }
        let span = Span {
            offset: patched.len() as u32,
            len: block.len() as u32,
            patched: true,
        };
        patched.extend_from_slice(&block);
        Some(span)
    }

    /// The bytes of a span (`patched` being the plan's arena).
    /// `None` for a span that does not decode (of stored headers gone bad).
    pub(crate) fn bytes_in<'a>(&'a self, span: Span, patched: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let range = span.offset as usize..(span.offset as usize).checked_add(span.len as usize)?;
        if span.patched {
            patched.get(range).map(Cow::Borrowed)
        } else {
            decode_blocks(self.arena.get(range)?, self.template.as_deref()?).map(Cow::Owned)
        }
    }

    pub(crate) fn bytes(&self, span: Span) -> Option<Cow<'_, [u8]>> {
        self.bytes_in(span, &[])
    }
}

/// The header blocks of an entry whose size or modification time changed,
/// rewritten to what `listed` gives in the style they had: a single ustar
/// or GNU block, or a PAX extended header (as GNU tar's `--format=pax`
/// writes them, the time as a record) and its block. A single block whose
/// time gains a fraction of a second gets the extended header `style`
/// says the layer's writer gives such entries. `None` where that cannot
/// be done faithfully: other extension headers, base-256 numbers, a value
/// that does not fit, a fraction and no style.
fn patch(bytes: &[u8], listed: &Entry, style: Option<&TimeHeaderStyle>) -> Option<Vec<u8>> {
    let (secs, nanos) = strata_toc::toc_time(&listed.mod_time).unwrap_or((0, 0));
    if secs < 0 || listed.size < 0 {
        return None;
    }
    let size = listed.size as u64;
    if bytes.len() == 512 {
        let mut block: [u8; 512] = bytes.try_into().ok()?;
        rewrite_octal(&mut block[124..136], size)?;
        rewrite_octal(&mut block[136..148], secs as u64)?;
        seal(&mut block)?;
        if nanos == 0 {
            return Some(block.to_vec());
        }
        let mut out = style?.header_for(&block, secs, nanos)?;
        out.extend_from_slice(&block);
        return Some(out);
    }
    // An extended header, its records, then the entry's block.
    let (first, rest) = bytes.split_at(512);
    let (records_blocks, last) = rest.split_at(rest.len() - 512);
    if first[156] != b'x' {
        return None;
    }
    let records_len = usize::try_from(octal(&first[124..136])?).ok()?;
    if records_blocks.len() != records_len.next_multiple_of(512) {
        return None;
    }
    let records = strata_tarsplit::parse_pax_records(&records_blocks[..records_len]).ok()?;
    let mut out_records = Vec::new();
    for (key, value) in records {
        let value = match key.as_slice() {
            b"mtime" => pax_time(&value, secs, nanos)?,
            b"size" => size.to_string().into_bytes(),
            // What the TOC does not record cannot be brought up to date.
            b"atime" | b"ctime" => return None,
            _ => value,
        };
        out_records.extend_from_slice(&pax_record(&key, &value));
    }
    let mut entry: [u8; 512] = last.try_into().ok()?;
    let mut ext: [u8; 512] = first.try_into().ok()?;
    // GNU tar gives the extended header the entry's time.
    let same_time = ext[136..148] == entry[136..148];
    rewrite_octal(&mut entry[124..136], if size >= 1 << 33 { 0 } else { size })?;
    rewrite_octal(&mut entry[136..148], secs as u64)?;
    seal(&mut entry)?;
    rewrite_octal(&mut ext[124..136], out_records.len() as u64)?;
    if same_time {
        rewrite_octal(&mut ext[136..148], secs as u64)?;
    }
    seal(&mut ext)?;
    let mut out = ext.to_vec();
    let padded = out_records.len().next_multiple_of(512);
    out.extend_from_slice(&out_records);
    out.resize(512 + padded, 0);
    out.extend_from_slice(&entry);
    Some(out)
}

/// Builds [`LocalHeaders`] from a layer's tar-split records as they come
/// (as an apply writes them), so that the next pull need not read the
/// tar-split back.
#[derive(Default)]
pub struct HeadersBuilder {
    headers: LocalHeaders,
    /// The segments since the last file record, up to `SEGMENT_MAX` bytes.
    segment: Vec<u8>,
    /// The bytes of those segments not kept, and whether all were zeros.
    dropped: u64,
    dropped_nonzero: bool,
    /// Padding of the payload before: it opens the next segment.
    padding: usize,
    tar_len: u64,
}

/// Segments are kept up to this many bytes between two files: no entry's
/// headers come near, and what follows a tar's end (zeros, or anything a
/// hostile blob puts there) is only counted.
const SEGMENT_MAX: usize = 1 << 20;

impl std::fmt::Debug for HeadersBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadersBuilder").field("headers", &self.headers).finish()
    }
}

impl HeadersBuilder {
    /// A segment record: raw tar bytes between payloads.
    pub fn segment(&mut self, bytes: &[u8]) {
        self.tar_len += bytes.len() as u64;
        let kept = bytes.len().min(SEGMENT_MAX - self.segment.len());
        self.segment.extend_from_slice(&bytes[..kept]);
        let dropped = &bytes[kept..];
        self.dropped += dropped.len() as u64;
        self.dropped_nonzero |= dropped.iter().any(|&b| b != 0);
    }

    /// A file record: the entry the segments since the last one head.
    pub fn file(&mut self, name: &[u8], size: i64) {
        let size = size.max(0) as u64;
        self.tar_len += size;
        let segment = &self.segment;
        let blocks = segment
            .get(self.padding..)
            .filter(|_| self.dropped == 0 && segment[..self.padding].iter().all(|&b| b == 0));
        if let Some(blocks) = blocks {
            self.headers.add(name, blocks);
            if self.headers.time_header.is_none() {
                self.headers.time_header = TimeHeaderStyle::learn(blocks);
            }
        }
        self.segment.clear();
        (self.dropped, self.dropped_nonzero) = (0, false);
        self.padding = pad(size) as usize;
    }

    /// The headers, once every record is in.
    pub fn finish(mut self) -> LocalHeaders {
        let end = self.segment.get(self.padding..).unwrap_or_default();
        let end_len = end.len() as u64 + self.dropped;
        self.headers.end_record = match end_len {
            _ if self.dropped_nonzero || end.iter().any(|&b| b != 0) => None,
            1024 => Some(512),
            n if n > 1024 && self.tar_len.is_multiple_of(10240) => Some(10240),
            _ => None,
        };
        self.headers
    }
}

/// Opens the stored form of [`LocalHeaders`]; the last byte is its version.
const MAGIC: &[u8; 8] = b"strhdrs\x01";

/// Why stored headers were refused.
#[derive(Debug, thiserror::Error)]
#[error("stored tar headers: {0}")]
pub struct StoredHeadersError(&'static str);

impl LocalHeaders {
    /// The stored form, which [`LocalHeaders::from_stored`] reads back: a
    /// pull keeps it beside the layer, and the next reads it in a few
    /// milliseconds where reading the tar-split again takes tens.
    ///
    /// Little-endian: the magic; a flags byte (template, end record, time
    /// style); the template block; the end record (u32); the time style's
    /// block, the length of its time (u32) and the time; the number of
    /// names (u32), each a name hash (u64), arena offset and length (u32);
    /// the arena's length (u32) and the arena.
    pub fn to_stored(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 1024 + self.by_name.len() * 16 + self.arena.len());
        out.extend_from_slice(MAGIC);
        let flags = u8::from(self.template.is_some()) | u8::from(self.end_record.is_some()) << 1 | u8::from(self.time_header.is_some()) << 2;
        out.push(flags);
        if let Some(template) = &self.template {
            out.extend_from_slice(&template[..]);
        }
        if let Some(record) = self.end_record {
            out.extend_from_slice(&record.to_le_bytes());
        }
        if let Some(style) = &self.time_header {
            out.extend_from_slice(&style.block);
            out.extend_from_slice(&(style.time.len() as u32).to_le_bytes());
            out.extend_from_slice(&style.time);
        }
        out.extend_from_slice(&(self.by_name.len() as u32).to_le_bytes());
        // In hash order: the same headers are stored as the same bytes.
        let mut names: Vec<_> = self.by_name.iter().collect();
        names.sort_unstable_by_key(|(hash, _)| **hash);
        for (hash, span) in names {
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&span.offset.to_le_bytes());
            out.extend_from_slice(&span.len.to_le_bytes());
        }
        out.extend_from_slice(&(self.arena.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.arena);
        out
    }

    /// Reads [`LocalHeaders::to_stored`]'s form back. Whatever the bytes,
    /// the answer is headers or an error: every span lies inside the
    /// arena, and a span that does not decode is never guessed from.
    pub fn from_stored(bytes: &[u8]) -> Result<LocalHeaders, StoredHeadersError> {
        let mut input = Input(bytes);
        if input.take(MAGIC.len())? != MAGIC {
            return Err(StoredHeadersError("not strata's stored headers (or another version of them)"));
        }
        let flags = input.take(1)?[0];
        if flags & !0b111 != 0 {
            return Err(StoredHeadersError("unknown flags"));
        }
        let mut headers = LocalHeaders::default();
        if flags & 1 != 0 {
            headers.template = Some(Box::new(input.block()?));
        }
        if flags & 2 != 0 {
            headers.end_record = Some(input.u32()?);
        }
        if flags & 4 != 0 {
            let block = input.block()?;
            let len = input.u32()? as usize;
            if len > 64 {
                return Err(StoredHeadersError("a time style's time is too long"));
            }
            let time = input.take(len)?.to_vec();
            headers.time_header = Some(TimeHeaderStyle { block, time });
        }
        let names = input.u32()? as usize;
        if names > input.0.len() / 16 {
            return Err(StoredHeadersError("more names than bytes to hold them"));
        }
        let mut spans = Vec::with_capacity(names);
        for _ in 0..names {
            let hash = u64::from_le_bytes(input.take(8)?.try_into().expect("8 bytes"));
            let span = Span {
                offset: input.u32()?,
                len: input.u32()?,
                patched: false,
            };
            spans.push((hash, span));
        }
        let arena_len = input.u32()? as usize;
        if arena_len > MAX_BYTES + 520 {
            return Err(StoredHeadersError("an arena larger than any kept"));
        }
        headers.arena = input.take(arena_len)?.to_vec();
        if !input.0.is_empty() {
            return Err(StoredHeadersError("bytes after the arena"));
        }
        if headers.template.is_none() && !headers.arena.is_empty() {
            return Err(StoredHeadersError("an arena without its template"));
        }
        headers.by_name.reserve(spans.len());
        for (hash, span) in spans {
            let inside = span == AMBIGUOUS || (span.offset as usize).checked_add(span.len as usize).is_some_and(|end| end <= arena_len);
            if !inside {
                return Err(StoredHeadersError("a span outside the arena"));
            }
            if headers.by_name.insert(hash, span).is_some() {
                return Err(StoredHeadersError("a name hash listed twice"));
            }
        }
        Ok(headers)
    }
}

/// The unread part of stored headers.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoredHeadersError> {
        if self.0.len() < n {
            return Err(StoredHeadersError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, StoredHeadersError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn block(&mut self) -> Result<[u8; 512], StoredHeadersError> {
        Ok(self.take(512)?.try_into().expect("512 bytes"))
    }
}

impl TimeHeaderStyle {
    /// The style of `blocks` (one entry's headers) when they are an
    /// extended header holding only a time record, named and timed after
    /// the entry as GNU tar does, then the entry's block.
    fn learn(blocks: &[u8]) -> Option<TimeHeaderStyle> {
        if blocks.len() != 3 * 512 || blocks[156] != b'x' {
            return None;
        }
        let ext: [u8; 512] = blocks[..512].try_into().ok()?;
        let entry: [u8; 512] = blocks[1024..].try_into().ok()?;
        let records_len = usize::try_from(octal(&ext[124..136])?).ok()?;
        if records_len > 512 || blocks[512 + records_len..1024].iter().any(|&b| b != 0) {
            return None;
        }
        let records = strata_tarsplit::parse_pax_records(&blocks[512..512 + records_len]).ok()?;
        let [(key, time)] = &records[..] else { return None };
        let style = TimeHeaderStyle {
            block: ext,
            time: time.clone(),
        };
        // It must be what this style makes for its own entry.
        let (secs, nanos) = parse_pax_time(time)?;
        let remade = style.header_for(&entry, secs, nanos)?;
        (key == b"mtime" && remade == blocks[..1024]).then_some(style)
    }

    /// The extended header (block and records) for the entry `block`
    /// (already bearing its new size and time) with this time.
    fn header_for(&self, block: &[u8; 512], secs: i64, nanos: u32) -> Option<Vec<u8>> {
        let entry_name = &block[..100];
        let entry_name = &entry_name[..entry_name.iter().position(|&b| b == 0).unwrap_or(100)];
        // A name split into the prefix field, or a long name: GNU tar's
        // naming of these is not followed here.
        if block[345] != 0 || entry_name.len() >= 100 {
            return None;
        }
        let name = pax_header_name(entry_name)?;
        if name.len() > 100 {
            return None;
        }
        let records = pax_record(b"mtime", &pax_time(&self.time, secs, nanos)?);
        let mut ext = self.block;
        ext[..100].fill(0);
        ext[..name.len()].copy_from_slice(&name);
        rewrite_octal(&mut ext[124..136], records.len() as u64)?;
        rewrite_octal(&mut ext[136..148], secs as u64)?;
        seal(&mut ext)?;
        let mut out = ext.to_vec();
        out.extend_from_slice(&records);
        out.resize(1024, 0);
        Some(out)
    }
}

/// GNU tar's name for an entry's extended header: `%d/PaxHeaders/%f`, the
/// directory and base name of the entry's (a directory's trailing slash
/// dropped first).
fn pax_header_name(name: &[u8]) -> Option<Vec<u8>> {
    let trimmed = match name.iter().rposition(|&b| b != b'/') {
        Some(last) => &name[..=last],
        None => return None,
    };
    let (dir, base) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&trimmed[..slash], &trimmed[slash + 1..]),
        None => (&b"."[..], trimmed),
    };
    if dir.is_empty() || base.is_empty() {
        // An absolute name: how GNU tar joins "/" is not followed here.
        return None;
    }
    let mut out = dir.to_vec();
    out.extend_from_slice(b"/PaxHeaders/");
    out.extend_from_slice(base);
    Some(out)
}

/// `secs.fraction` of a PAX time record.
fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = format!("{fraction:0<9}").parse().ok()?;
    Some((secs.parse().ok()?, nanos))
}

/// A PAX time in the style of `old`: seconds, then the nanoseconds with
/// trailing zeros dropped (GNU tar), or nine digits when `old` kept them.
fn pax_time(old: &[u8], secs: i64, nanos: u32) -> Option<Vec<u8>> {
    let fixed = old.iter().position(|&b| b == b'.').is_some_and(|dot| old.len() - dot - 1 == 9 && old.ends_with(b"0"));
    if nanos == 0 {
        // Whether the writer would have kept a record is not known.
        return None;
    }
    let digits = format!("{nanos:09}");
    let fraction = if fixed { digits.as_str() } else { digits.trim_end_matches('0') };
    Some(format!("{secs}.{fraction}").into_bytes())
}

/// `"%d %s=%s\n"`, the length counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// An octal field's value (digits, then NULs or spaces).
fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?.trim_matches(|c| c == ' ' || c == '\0');
    u64::from_str_radix(text, 8).ok()
}

/// Rewrites a header block's checksum in the style it had.
fn seal(block: &mut [u8; 512]) -> Option<()> {
    let old_sum = block[148..156].to_vec();
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    block[148..156].copy_from_slice(&old_sum);
    rewrite_octal(&mut block[148..156], sum)
}

/// Rewrites the octal digits that open `field` (leading zeros included),
/// keeping their number and what follows them.
fn rewrite_octal(field: &mut [u8], value: u64) -> Option<()> {
    let digits = field.iter().take_while(|b| (b'0'..=b'7').contains(b)).count();
    if digits == 0 || field[digits..].iter().any(|&b| b != 0 && b != b' ') {
        return None;
    }
    let text = format!("{value:0digits$o}");
    if text.len() != digits {
        return None;
    }
    field[..digits].copy_from_slice(text.as_bytes());
    Some(())
}

/// Headers knowing one entry, `name`, with `blocks` as its headers.
pub(crate) fn of_blocks(name: &[u8], blocks: &[u8]) -> LocalHeaders {
    let mut headers = LocalHeaders::default();
    headers.add(name, &blocks[..blocks.len() / 512 * 512]);
    headers
}

/// [`of_blocks`] for what follows the first three blocks of `data`, with
/// the time header style those teach (for fuzzing).
pub(crate) fn of_blocks_styled(name: &[u8], data: &[u8]) -> LocalHeaders {
    let (style, blocks) = data.split_at(data.len().min(3 * 512));
    let mut headers = of_blocks(name, blocks);
    headers.time_header = TimeHeaderStyle::learn(style);
    headers
}

/// Header blocks are kept as their differences from a template block
/// (the layer's first): a layer's headers share their magic, owners,
/// modes and most of their times, and differ in names, sizes and
/// checksums. Each block is a list of runs, each the count of bytes equal
/// to the template's (one byte), the count of bytes that follow as they
/// are (one byte), then those; a run of two zeros ends the block, whose
/// rest is the template's. A Debian layer's headers take about 15 % of
/// their blocks' size (9 065 entries: 676 KB for 4.6 MB), where dropping
/// their zeros alone kept 40 %.
fn encode_blocks(blocks: &[u8], template: &[u8; 512], out: &mut Vec<u8>) {
    // How many bytes from `at` on equal the template's, eight at a time:
    // a pull records every header of a layer it writes.
    let equal_from = |block: &[u8], at: usize| {
        let (a, b) = (&block[at..], &template[at..]);
        let mut n = 0;
        while n + 8 <= a.len() {
            let word = |s: &[u8]| u64::from_le_bytes(s[n..n + 8].try_into().expect("8 bytes"));
            let differ = word(a) ^ word(b);
            if differ != 0 {
                return n + (differ.trailing_zeros() / 8) as usize;
            }
            n += 8;
        }
        n + a[n..].iter().zip(&b[n..]).take_while(|(x, y)| x == y).count()
    };
    for block in blocks.chunks_exact(512) {
        let mut at = 0;
        loop {
            let same = equal_from(block, at);
            if at + same == 512 {
                break;
            }
            let skip = same.min(255);
            at += skip;
            if skip == 255 {
                out.extend_from_slice(&[255, 0]);
                continue;
            }
            // Bytes that differ, and short equal stretches inside them
            // (a run costs two bytes).
            let mut end = at;
            while end < 512 && end - at < 255 {
                if block[end] != template[end] {
                    end += 1;
                    continue;
                }
                let equal = equal_from(block, end);
                if equal > 2 || end + equal == 512 || end + equal - at > 255 {
                    break;
                }
                end += equal;
            }
            out.extend_from_slice(&[skip as u8, (end - at) as u8]);
            out.extend_from_slice(&block[at..end]);
            at = end;
        }
        out.extend_from_slice(&[0, 0]);
    }
}

/// The blocks [`encode_blocks`] kept.
fn decode_blocks(mut encoded: &[u8], template: &[u8; 512]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512 * 2);
    while !encoded.is_empty() {
        let start = out.len();
        out.extend_from_slice(template);
        let mut at = 0;
        loop {
            let [skip, len, more @ ..] = encoded else {
                // A block must end with its two zeros.
                return None;
            };
            let (skip, len) = (usize::from(*skip), usize::from(*len));
            encoded = more;
            if skip == 0 && len == 0 {
                break;
            }
            at += skip;
            if at + len > 512 || len > encoded.len() {
                return None;
            }
            let (bytes, more) = encoded.split_at(len);
            out[start + at..start + at + len].copy_from_slice(bytes);
            at += len;
            encoded = more;
        }
    }
    Some(out)
}

/// Bytes of padding after a payload of `size` bytes.
pub(crate) fn pad(size: u64) -> u64 {
    (512 - size % 512) % 512
}

#[cfg(test)]
mod tests {
    use super::*;

    impl LocalHeaders {
        fn find_plain(&self, listed: &Entry) -> Option<Span> {
            self.find(listed, &mut Vec::new(), false).filter(|s| !s.patched)
        }
    }

    fn tar_split_of(tar: &[u8]) -> Vec<u8> {
        let mut meta = strata_tarsplit::MetadataWriter::new(Vec::new());
        strata_tarsplit::disassemble(tar, std::io::sink(), &mut meta, &mut strata_tarsplit::DiscardPutter).expect("split");
        meta.finish().expect("metadata")
    }

    fn tar(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn listed(name: &str, size: i64, mode: i64) -> Entry {
        Entry {
            kind: "reg".into(),
            name: name.into(),
            mode,
            size,
            mod_time: "2023-11-14T22:13:20Z".into(),
            ..Entry::default()
        }
    }

    #[test]
    fn finds_the_header_of_an_entry_described_alike() {
        let tar = tar(&[("a", b"hello", 0o644), ("dir/b", &[7u8; 600], 0o755)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        assert_eq!(headers.len(), 2);
        let span = headers.find_plain(&listed("a", 5, 0o644)).expect("a is known");
        assert_eq!(headers.bytes(span).expect("decodes"), &tar[..512]);
        let span = headers.find_plain(&listed("./dir/b", 600, 0o755)).expect("dir/b is known");
        // After a's 512-byte header, 5 bytes of payload and their padding.
        assert_eq!(headers.bytes(span).expect("decodes"), &tar[1024..1536]);
    }

    #[test]
    fn an_entry_described_otherwise_is_not_guessed() {
        let tar = tar(&[("a", b"hello", 0o644)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        assert_eq!(headers.find_plain(&listed("a", 6, 0o644)), None, "size");
        assert_eq!(headers.find_plain(&listed("a", 5, 0o600)), None, "mode");
        let mut later = listed("a", 5, 0o644);
        later.mod_time = "2023-11-14T22:13:21Z".into();
        assert_eq!(headers.find_plain(&later), None, "time");
        assert_eq!(headers.find_plain(&listed("b", 5, 0o644)), None, "name");
    }

    #[test]
    fn a_file_grown_and_touched_gets_its_old_header_patched() {
        let old = tar(&[("a", b"hello", 0o644)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&old)[..]).expect("headers");
        let mut grown = tar::Header::new_ustar();
        grown.set_size(6);
        grown.set_mode(0o644);
        grown.set_mtime(1_700_000_001);
        grown.set_path("a").expect("path");
        grown.set_cksum();
        let mut later = listed("a", 6, 0o644);
        later.mod_time = "2023-11-14T22:13:21Z".into();
        let mut patched = Vec::new();
        let span = headers.find(&later, &mut patched, false).expect("patched");
        assert!(span.patched);
        assert_eq!(&headers.bytes_in(span, &patched).expect("decodes")[..], grown.as_bytes(), "the header the writer would have written");
        // What a header cannot be patched to say is not guessed.
        let mut other_mode = later.clone();
        other_mode.mode = 0o600;
        assert_eq!(headers.find(&other_mode, &mut patched, false), None);
        let mut sub_second = later;
        sub_second.mod_time = "2023-11-14T22:13:21.5Z".into();
        assert_eq!(headers.find(&sub_second, &mut patched, false), None);
    }

    /// GNU tar `--format=pax` (no access or change times) of `member`
    /// under `tree`, after each `(path, time)` is touched to that time.
    fn gnu_pax_tar(tree: &std::path::Path, member: &str, touch: &[(&std::path::Path, &str)]) -> Vec<u8> {
        for (path, when) in touch {
            let touched = std::process::Command::new("touch").args(["-d", when]).arg(path).status().expect("touch");
            assert!(touched.success());
        }
        let out = std::process::Command::new("tar")
            .args(["--sort=name", "--format=pax", "--pax-option=delete=atime,delete=ctime", "-C"])
            .arg(tree)
            .args(["-cf", "-", member])
            .output()
            .expect("GNU tar");
        assert!(out.status.success());
        out.stdout
    }

    /// The TOC entry, once `tar` is written as zstd:chunked, whose name
    /// ends with `suffix`.
    fn toc_entry(tar: &[u8], suffix: &str) -> Entry {
        let mut blob = Vec::new();
        strata_toc::write_zstd_chunked(tar, &mut blob, &strata_toc::WriteOptions::default()).expect("zstd:chunked");
        let toc = strata_toc::read_zstd_chunked(&blob[..], None).expect("TOC");
        toc.toc.entries.into_iter().find(|e| e.name.ends_with(suffix)).expect("the entry")
    }

    /// GNU tar's `--format=pax` headers (an extended header with the time
    /// to the nanosecond, then the ustar block) are patched to exactly what
    /// GNU tar writes for the changed file.
    #[test]
    fn gnu_tar_pax_headers_are_patched_as_gnu_tar_writes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("d")).expect("mkdir");
        let file = tree.join("d/f");
        let gnu_tar = |content: &str, at: &str| {
            std::fs::write(&file, content).expect("write");
            gnu_pax_tar(&tree, "d", &[(&file, at)])
        };
        let v1 = gnu_tar("hello", "2024-01-02 03:04:05.123456789");
        let v2 = gnu_tar("hello, and more", "2024-02-03 04:05:06.5");
        let listed = toc_entry(&v2, "d/f");
        let old = LocalHeaders::from_tar_split(&tar_split_of(&v1)[..]).expect("v1 headers");
        let new = LocalHeaders::from_tar_split(&tar_split_of(&v2)[..]).expect("v2 headers");
        let mut patched = Vec::new();
        let span = old.find(&listed, &mut patched, false).expect("patched");
        assert!(span.patched);
        let want = new.find_plain(&listed).expect("v2 knows its own");
        assert_eq!(old.bytes_in(span, &patched).expect("decodes"), new.bytes(want).expect("decodes"), "GNU tar's own header for v2's file");
        assert_eq!(old.bytes_in(span, &patched).expect("decodes").len(), 1536);
    }

    /// A file whose time gains a fraction of a second gets, from GNU tar
    /// `--format=pax`, an extended header it had not: made in the style
    /// learned from another entry of the layer (here its directory's).
    #[test]
    fn a_time_header_is_added_as_gnu_tar_adds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("some/dir")).expect("mkdir");
        let (file, dir_path) = (tree.join("some/dir/file.txt"), tree.join("some/dir"));
        let gnu_tar = |content: &str, at: &str| {
            std::fs::write(&file, content).expect("write");
            gnu_pax_tar(&tree, "./some", &[(&file, at), (&dir_path, "2024-01-01 00:00:00.25")])
        };
        let v1 = gnu_tar("hello", "2024-01-02 03:04:05");
        let v2 = gnu_tar("hello, and more", "2024-02-03 04:05:06.123");
        let file_entry = |tar: &[u8]| toc_entry(tar, "file.txt");
        let listed = file_entry(&v2);
        let old = LocalHeaders::from_tar_split(&tar_split_of(&v1)[..]).expect("v1 headers");
        assert!(old.time_header.is_some(), "the directory's extended header teaches the style");
        let new = LocalHeaders::from_tar_split(&tar_split_of(&v2)[..]).expect("v2 headers");
        let mut patched = Vec::new();
        let span = old.find(&listed, &mut patched, false).expect("patched");
        let want = new.find_plain(&listed).expect("v2 knows its own");
        assert_eq!(new.bytes(want).expect("decodes").len(), 1536, "GNU tar added an extended header");
        assert_eq!(old.bytes_in(span, &patched).expect("decodes"), new.bytes(want).expect("decodes"), "GNU tar's own headers for v2's file");
        // Without a style learned, no guess.
        let v1_file = old.find_plain(&file_entry(&v1)).expect("v1's file");
        let unlearned = of_blocks(b"./some/dir/file.txt", &old.bytes(v1_file).expect("decodes"));
        assert!(unlearned.time_header.is_none());
        assert_eq!(unlearned.find(&listed, &mut patched, false), None);
    }

    /// The blocks `cargo xtask fuzz` seeds `guessed_headers` with: a
    /// style is learned from them, and "a" gets an extended header.
    #[test]
    fn the_fuzz_seed_teaches_a_style() {
        let block = |path: &str, kind: tar::EntryType, size: u64, mode: u32| {
            let mut h = tar::Header::new_ustar();
            // Raw: the tar crate would drop the leading "./".
            h.as_mut_bytes()[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(1_704_164_645);
            h.set_cksum();
            h.as_bytes().to_vec()
        };
        let record = b"30 mtime=1704164645.123456789\n";
        let mut seed = block("./PaxHeaders/d", tar::EntryType::XHeader, record.len() as u64, 0o644);
        seed.extend_from_slice(record);
        seed.resize(1024, 0);
        seed.extend(block("./d/", tar::EntryType::Directory, 0, 0o755));
        seed.extend(block("a", tar::EntryType::Regular, 5, 0o644));
        let headers = of_blocks_styled(b"a", &seed);
        assert!(headers.time_header.is_some());
        let mut later = listed("a", 7, 0o644);
        later.mod_time = "2024-01-02T03:04:05.5Z".into();
        let mut patched = Vec::new();
        let span = headers.find(&later, &mut patched, false).expect("patched");
        let bytes = headers.bytes_in(span, &patched).expect("decodes");
        assert_eq!(bytes.len(), 1536);
        assert_eq!(&bytes[..14], b"./PaxHeaders/a");
        assert!(bytes[512..1024].starts_with(b"22 mtime=1704164645.5\n"));
    }

    proptest::proptest! {
        /// Blocks come back from their encoding exactly: blocks like the
        /// template in places, and blocks of any bytes at all.
        #[test]
        fn blocks_round_trip_their_encoding(
            template in proptest::collection::vec(proptest::prelude::any::<u8>(), 512),
            edits in proptest::collection::vec(
                proptest::collection::vec((0..512usize, proptest::prelude::any::<u8>(), 1..300usize), 0..12),
                1..4,
            ),
            wild in proptest::collection::vec(proptest::prelude::any::<u8>(), 512),
        ) {
            let template: [u8; 512] = template.try_into().expect("512 bytes");
            let mut raw = Vec::new();
            for block_edits in edits {
                let mut block = template;
                for (at, byte, len) in block_edits {
                    let end = (at + len).min(512);
                    block[at..end].fill(byte);
                }
                raw.extend_from_slice(&block);
            }
            raw.extend_from_slice(&wild);
            let mut encoded = Vec::new();
            encode_blocks(&raw, &template, &mut encoded);
            proptest::prop_assert_eq!(decode_blocks(&encoded, &template), Some(raw.clone()));
            proptest::prop_assert!(encoded.len() <= raw.len() / 512 * 520);
            let mut alone = Vec::new();
            encode_blocks(&template, &template, &mut alone);
            proptest::prop_assert_eq!(alone, vec![0, 0]);
        }
    }

    #[test]
    fn pax_header_names_follow_gnu_tar() {
        assert_eq!(pax_header_name(b"./etc/x.conf").as_deref(), Some(&b"./etc/PaxHeaders/x.conf"[..]));
        assert_eq!(pax_header_name(b"./usr/").as_deref(), Some(&b"./PaxHeaders/usr"[..]));
        assert_eq!(pax_header_name(b"./").as_deref(), Some(&b"./PaxHeaders/."[..]));
        assert_eq!(pax_header_name(b"x").as_deref(), Some(&b"./PaxHeaders/x"[..]));
        assert_eq!(pax_header_name(b"/x"), None);
    }

    #[test]
    fn a_name_seen_twice_is_not_guessed() {
        let tar = tar(&[("a", b"one", 0o644)]);
        let mut headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        assert!(headers.find_plain(&listed("a", 3, 0o644)).is_some());
        headers.add(b"./a", &tar[..512]);
        assert_eq!(headers.find_plain(&listed("a", 3, 0o644)), None);
    }

    #[test]
    fn stored_headers_read_back_as_they_were() {
        let tar = tar(&[("a", b"hello", 0o644), ("dir/b", &[7u8; 600], 0o755)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        let back = LocalHeaders::from_stored(&headers.to_stored()).expect("reads back");
        assert_eq!(back.len(), 2);
        assert_eq!(back.end_record(), headers.end_record());
        let span = back.find_plain(&listed("./dir/b", 600, 0o755)).expect("dir/b is known");
        assert_eq!(back.bytes(span).expect("decodes"), &tar[1024..1536]);
        assert_eq!(back.to_stored(), headers.to_stored());
        let empty = LocalHeaders::from_stored(&LocalHeaders::default().to_stored()).expect("reads back");
        assert!(empty.is_empty());
    }

    #[test]
    fn a_builder_fed_records_as_they_come_reads_as_the_tar_split() {
        let tar = tar(&[("a", b"hello", 0o644), ("dir/b", &[7u8; 600], 0o755)]);
        let mut builder = HeadersBuilder::default();
        for record in MetadataReader::new(&tar_split_of(&tar)[..]) {
            match record.expect("record") {
                SplitEntry::Segment(bytes) => builder.segment(&bytes),
                SplitEntry::File(file) => builder.file(&file.name, file.size),
            }
        }
        let built = builder.finish();
        let read = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        assert_eq!(built.to_stored(), read.to_stored());
    }

    /// What follows a tar's end is counted, not kept, however long.
    #[test]
    fn a_long_end_is_counted_not_kept() {
        let tar = tar(&[("a", b"", 0o644)]);
        for nonzero_far_on in [false, true] {
            let mut builder = HeadersBuilder::default();
            builder.segment(&tar[..512]);
            builder.file(b"a", 0);
            let mut end = vec![0u8; 10240 * 300 - 512];
            if nonzero_far_on {
                end[SEGMENT_MAX + 7] = 1;
            }
            for piece in end.chunks(64 << 10) {
                builder.segment(piece);
            }
            assert!(builder.segment.len() <= SEGMENT_MAX);
            let headers = builder.finish();
            assert_eq!(headers.len(), 1);
            assert_eq!(headers.end_record(), if nonzero_far_on { None } else { Some(10240) });
        }
    }

    #[test]
    fn stored_headers_gone_bad_are_refused_or_never_guessed_from() {
        let tar = tar(&[("a", b"hello", 0o644)]);
        let headers = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        let stored = headers.to_stored();
        assert!(LocalHeaders::from_stored(&stored[..stored.len() - 1]).is_err(), "truncated");
        assert!(LocalHeaders::from_stored(&[&stored[..], &[0]].concat()).is_err(), "a byte too many");
        assert!(LocalHeaders::from_stored(b"strhdrs\x02").is_err(), "another version");
        let mut outside = LocalHeaders::from_stored(&stored).expect("reads back");
        for span in outside.by_name.values_mut() {
            span.offset = 1 << 30;
        }
        assert!(LocalHeaders::from_stored(&outside.to_stored()).is_err(), "a span outside the arena");
        // An arena of runs that overrun their block: read, never guessed from.
        let mut garbled = LocalHeaders::from_stored(&stored).expect("reads back");
        garbled.arena.fill(255);
        let garbled = LocalHeaders::from_stored(&garbled.to_stored()).expect("spans inside the arena");
        assert_eq!(garbled.find_plain(&listed("a", 5, 0o644)), None);
    }

    proptest::proptest! {
        /// Any one byte of stored headers changed: refused, or read and
        /// then every guess still describes its entry.
        #[test]
        fn a_stored_byte_changed_never_gives_a_wrong_guess(at in 0usize..4096, byte in proptest::prelude::any::<u8>()) {
            let tar = tar(&[("a", b"hello", 0o644), ("dir/b", &[7u8; 600], 0o755)]);
            let mut stored = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers").to_stored();
            let at = at % stored.len();
            stored[at] = byte;
            if let Ok(headers) = LocalHeaders::from_stored(&stored) {
                for entry in [listed("a", 5, 0o644), listed("./dir/b", 600, 0o755), listed("a", 6, 0o644)] {
                    let mut patched = Vec::new();
                    if let Some(span) = headers.find(&entry, &mut patched, false) {
                        let bytes = headers.bytes_in(span, &patched).expect("a guess decodes");
                        let header = header_of(&bytes).expect("a guess parses");
                        proptest::prop_assert!(strata_toc::describes(&entry, &header));
                    }
                }
            }
        }
    }
}
