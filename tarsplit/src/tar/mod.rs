//! Reading tar headers the way tar-split does: every byte that is not file
//! payload is accounted for by the [`Source`], and names and sizes resolve
//! exactly as in Go's `archive/tar`.

pub(crate) mod header;
pub(crate) mod info;
mod numbers;
pub(crate) mod pax;
pub(crate) mod sparse;

use header::{BLOCK, Block, ZERO_BLOCK};
use sparse::{Map1x0Error, SparseMap};

use crate::error::{Error, Result};

/// Where header bytes come from. Implementations account for every byte
/// they hand out (the disassembler keeps them as a raw segment).
pub(crate) trait Source {
    /// Reads until `buf` is full or the input ends; returns the count.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Consumes up to `n` bytes; returns how many there were.
    fn skip(&mut self, n: u64) -> Result<u64>;
    /// Bytes consumed so far, for error messages.
    fn offset(&self) -> u64;
}

/// A file entry as tar-split reports it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The resolved header; `info.size` is the size tar-split records (the
    /// logical size, 0 for a PAX global header).
    pub info: info::HeaderInfo,
    /// Bytes of data area still to read after the headers.
    pub data_len: u64,
    /// Padding after the data area.
    pub padding: u64,
    /// The layout of a sparse file.
    pub sparse: Option<SparseMap>,
}

/// Largest PAX or GNU long-name extension strata reads (Go's own limit).
const MAX_SPECIAL: u64 = 1 << 20;

fn invalid(offset: u64, reason: &'static str) -> Error {
    Error::InvalidTar { offset, reason }
}

fn truncated(offset: u64, what: &'static str) -> Error {
    Error::Truncated { offset, what }
}

/// Reads one header block. `None` at a clean end of input.
fn read_block<S: Source>(src: &mut S, block: &mut Block) -> Result<Option<()>> {
    let at = src.offset();
    match src.read_full(block)? {
        0 => Ok(None),
        BLOCK => Ok(Some(())),
        _ => Err(truncated(at, "a header block")),
    }
}

fn read_special<S: Source>(src: &mut S, len: u64, at: u64) -> Result<Vec<u8>> {
    if len > MAX_SPECIAL {
        return Err(invalid(at, "extended header is larger than 1 MiB"));
    }
    let mut data = vec![0; len as usize];
    if src.read_full(&mut data)? < data.len() {
        return Err(truncated(src.offset(), "an extended header"));
    }
    Ok(data)
}

/// Reads the headers of the next entry, after skipping `unread` bytes of the
/// previous entry's data and `padding`. Returns `None` at the end of the
/// archive (two zero blocks, or the end of input where Go accepts it).
pub(crate) fn next_entry<S: Source>(
    src: &mut S,
    unread: u64,
    padding: u64,
) -> Result<Option<Entry>> {
    let mut pax: Option<pax::Records> = None;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let (mut unread, mut padding) = (unread, padding);
    let mut block: Block = [0; BLOCK];
    loop {
        if src.skip(unread)? < unread {
            return Err(truncated(src.offset(), "file data"));
        }
        if src.skip(padding)? < padding {
            return Ok(None);
        }
        let at = src.offset();
        if read_block(src, &mut block)?.is_none() {
            return Ok(None);
        }
        if block == ZERO_BLOCK {
            if read_block(src, &mut block)?.is_none() || block == ZERO_BLOCK {
                return Ok(None);
            }
            return Err(invalid(
                at + BLOCK as u64,
                "a zero block is followed by a non-zero block",
            ));
        }
        let hdr = header::parse(&block).map_err(|reason| invalid(at, reason))?;
        let data_len =
            data_len(hdr.typeflag, hdr.size).ok_or_else(|| invalid(at, "negative size"))?;
        padding = header::padding(data_len);
        match hdr.typeflag {
            header::TYPE_PAX | header::TYPE_PAX_GLOBAL => {
                let data = read_special(src, data_len, at)?;
                unread = 0;
                let records = pax::parse(&data).map_err(|reason| invalid(at, reason))?;
                if hdr.typeflag == header::TYPE_PAX_GLOBAL {
                    let mut name = hdr.name;
                    if let Some(path) = records.get(pax::PATH).filter(|p| !p.is_empty()) {
                        name.clone_from(path);
                    }
                    let info = info::resolve(
                        &block,
                        hdr.format,
                        hdr.typeflag,
                        name,
                        0,
                        Some(&records),
                        None,
                    );
                    return Ok(Some(Entry {
                        info,
                        data_len: 0,
                        padding,
                        sparse: None,
                    }));
                }
                pax = Some(records);
            }
            header::TYPE_GNU_LONG_NAME | header::TYPE_GNU_LONG_LINK => {
                let data = read_special(src, data_len, at)?;
                unread = 0;
                if hdr.typeflag == header::TYPE_GNU_LONG_NAME {
                    long_name = Some(numbers::c_string(&data).to_vec());
                } else {
                    long_link = Some(numbers::c_string(&data).to_vec());
                }
            }
            _ => {
                return file_entry(src, hdr, &block, at, pax.as_ref(), long_name, long_link)
                    .map(Some);
            }
        }
    }
}

fn data_len(typeflag: u8, size: i64) -> Option<u64> {
    if header::is_header_only(typeflag) {
        Some(0)
    } else {
        u64::try_from(size).ok()
    }
}

fn file_entry<S: Source>(
    src: &mut S,
    hdr: header::Header,
    block: &Block,
    at: u64,
    pax: Option<&pax::Records>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
) -> Result<Entry> {
    let (mut name, mut size) = (hdr.name, hdr.size);
    if let Some(records) = pax {
        pax::merge(records, &mut name, &mut size).map_err(|reason| invalid(at, reason))?;
    }
    if let Some(long) = long_name.filter(|n| !n.is_empty()) {
        name = long;
    }
    let mut typeflag = hdr.typeflag;
    if typeflag == header::TYPE_REG_A {
        typeflag = if name.ends_with(b"/") {
            header::TYPE_DIR
        } else {
            header::TYPE_REG
        };
    }
    let mut data_len = data_len(typeflag, size).ok_or_else(|| invalid(at, "negative size"))?;
    let padding = header::padding(data_len);

    let entries = if typeflag == header::TYPE_GNU_SPARSE {
        if hdr.format != header::Format::Gnu {
            return Err(invalid(at, "sparse entry in a non-GNU header"));
        }
        size = header::gnu_real_size(block)
            .ok_or_else(|| invalid(at, "sparse real size is not a number"))?;
        let (mut entries, mut extended) =
            header::gnu_sparse_entries(block, true).map_err(|r| invalid(at, r))?;
        let mut ext: Block = [0; BLOCK];
        while extended {
            let ext_at = src.offset();
            if read_block(src, &mut ext)?.is_none() {
                return Err(truncated(ext_at, "a sparse extension block"));
            }
            let (more, again) =
                header::gnu_sparse_entries(&ext, false).map_err(|r| invalid(ext_at, r))?;
            entries.extend(more);
            extended = again;
        }
        Some(entries)
    } else if let Some(records) = pax {
        pax_sparse(src, records, &mut name, &mut size, &mut data_len, at)?
    } else {
        None
    };

    let sparse = match entries {
        None => None,
        Some(entries) => {
            if header::is_header_only(typeflag) {
                return Err(invalid(at, "sparse map on an entry without data"));
            }
            Some(SparseMap::new(&entries, size).map_err(|r| invalid(at, r))?)
        }
    };
    let info = info::resolve(block, hdr.format, typeflag, name, size, pax, long_link);
    Ok(Entry {
        info,
        data_len,
        padding,
        sparse,
    })
}

/// GNU sparse files in PAX form (0.0, 0.1, 1.0). Unknown versions are plain
/// files, as in Go.
fn pax_sparse<S: Source>(
    src: &mut S,
    records: &pax::Records,
    name: &mut Vec<u8>,
    size: &mut i64,
    data_len: &mut u64,
    at: u64,
) -> Result<Option<Vec<(i64, i64)>>> {
    let get = |k: &[u8]| records.get(k).map_or(&[][..], Vec::as_slice);
    let (major, minor) = (get(pax::SPARSE_MAJOR), get(pax::SPARSE_MINOR));
    let is_1x0 = match (major, minor) {
        (b"0", b"0" | b"1") => false,
        (b"1", b"0") => true,
        _ if !major.is_empty() || !minor.is_empty() => return Ok(None),
        _ if !get(pax::SPARSE_MAP).is_empty() => false,
        _ => return Ok(None),
    };
    if !get(pax::SPARSE_NAME).is_empty() {
        *name = get(pax::SPARSE_NAME).to_vec();
    }
    let real = if get(pax::SPARSE_SIZE).is_empty() {
        get(pax::SPARSE_REAL_SIZE)
    } else {
        get(pax::SPARSE_SIZE)
    };
    if !real.is_empty() {
        *size =
            numbers::parse_go_int(real).ok_or_else(|| invalid(at, "invalid GNU sparse size"))?;
    }
    if !is_1x0 {
        return sparse::map_0x1(records)
            .map(Some)
            .map_err(|r| invalid(at, r));
    }
    // The 1.0 map sits at the start of the data area, in whole blocks.
    let mut remaining = *data_len;
    let map = sparse::map_1x0(|| {
        let block_at = src.offset();
        let mut block: Block = [0; BLOCK];
        if remaining < BLOCK as u64 || src.read_full(&mut block)? < BLOCK {
            return Err(truncated(block_at, "a GNU sparse 1.0 map"));
        }
        remaining -= BLOCK as u64;
        Ok(block)
    });
    *data_len = remaining;
    match map {
        Ok(entries) => Ok(Some(entries)),
        Err(Map1x0Error::Invalid(reason)) => Err(invalid(at, reason)),
        Err(Map1x0Error::Read(e)) => Err(e),
    }
}

/// A [`Source`] over bytes already in memory (a stored segment).
pub(crate) struct SliceSource<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

impl Source for SliceSource<'_> {
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = buf.len().min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Result<u64> {
        let n = n.min((self.bytes.len() - self.pos) as u64);
        self.pos += n as usize;
        Ok(n)
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }
}
