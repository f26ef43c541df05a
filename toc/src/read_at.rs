//! Random access to a blob: a file, bytes in memory, or (in
//! strata-chunkfetch) a registry answering range requests.

use std::io;

use crate::error::{Error, Result};

/// Reads exact byte ranges of a blob of known size.
pub trait ReadAt {
    /// The blob's length.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; fewer bytes than asked is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// Reads `len` bytes at `offset` after checking them against the blob's
/// length and a size limit, so a lying length never becomes an allocation.
pub(crate) fn read_range<R: ReadAt + ?Sized>(
    blob: &R,
    what: &'static str,
    offset: u64,
    len: u64,
    blob_len: u64,
    limit: u64,
) -> Result<Vec<u8>> {
    if len > limit {
        return Err(Error::TooLarge { what, len, limit });
    }
    if offset.checked_add(len).is_none_or(|end| end > blob_len) {
        return Err(Error::OutOfBounds {
            what,
            offset,
            len,
            blob_len,
        });
    }
    let mut buf = vec![0u8; len as usize];
    blob.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
