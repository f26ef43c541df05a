//! A blob in a local file, read with positioned reads (no shared cursor,
//! so one `FileSource` serves many threads).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{ByteRange, RangeSink, RangeSource, Result, check_ranges};

/// A blob held in a local file.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    size: u64,
    name: String,
}

impl FileSource {
    pub fn open(path: impl AsRef<Path>) -> Result<FileSource> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| crate::Error::io(path.display(), e))?;
        FileSource::from_file(file, path.display().to_string())
    }

    /// Serves an open file; `name` appears in errors.
    pub fn from_file(file: File, name: impl Into<String>) -> Result<FileSource> {
        let name = name.into();
        let size = file.metadata().map_err(|e| crate::Error::io(&name, e))?.len();
        Ok(FileSource { file, size, name })
    }
}

struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl RangeSource for FileSource {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> Result<()> {
        check_ranges(ranges, Some(self.size))?;
        let mut next = 0;
        for r in ranges {
            let mut at = At {
                file: &self.file,
                pos: r.offset,
                end: r.offset + r.length,
            };
            // The file may have shrunk since it was opened.
            crate::serve::serve_segment(&self.name, ranges, &mut next, r.offset, r.length, &mut at, sink)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        std::fs::write(&path, (0..=255u8).collect::<Vec<_>>()).expect("write");
        let src = FileSource::open(&path).expect("open");
        let mut got = Vec::new();
        src.fetch(&[ByteRange::new(1, 2), ByteRange::new(250, 6)], &mut |i, r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            got.push((i, v));
            Ok(())
        })
        .expect("fetch");
        assert_eq!(got, vec![(0, vec![1, 2]), (1, vec![250, 251, 252, 253, 254, 255])]);
        assert!(src.fetch(&[ByteRange::new(250, 7)], &mut |_, _| Ok(())).is_err());
    }
}
