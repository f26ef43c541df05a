//! Where payloads go during disassembly ([`FilePutter`]) and where they come
//! from during assembly ([`FileGetter`]).

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use rustix::fs::OFlags;
use sha2::{Digest, Sha256};

use crate::path::below_root;
use crate::payload::Payload;

/// Receives the payload of every entry with a size during disassembly.
///
/// What the putter does not read is still checksummed, so a putter may
/// ignore the payload.
pub trait FilePutter {
    fn put(&mut self, name: &[u8], payload: &mut Payload<'_>) -> io::Result<()>;
}

/// Supplies file payloads by name during assembly.
pub trait FileGetter {
    fn get(&mut self, name: &[u8]) -> io::Result<Box<dyn Read + '_>>;
}

impl<P: FilePutter + ?Sized> FilePutter for &mut P {
    fn put(&mut self, name: &[u8], payload: &mut Payload<'_>) -> io::Result<()> {
        (**self).put(name, payload)
    }
}

impl<G: FileGetter + ?Sized> FileGetter for &mut G {
    fn get(&mut self, name: &[u8]) -> io::Result<Box<dyn Read + '_>> {
        (**self).get(name)
    }
}

/// Keeps nothing; the metadata still gets each payload's checksum.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardPutter;

impl FilePutter for DiscardPutter {
    fn put(&mut self, _name: &[u8], _payload: &mut Payload<'_>) -> io::Result<()> {
        Ok(())
    }
}

fn unsafe_name(reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, reason)
}

/// Writes each payload to its name below a root directory. Names that are
/// absolute or climb out with `..` are refused, symlinks are not followed
/// out of the root, and an existing symlink at the name is not written
/// through.
#[derive(Debug)]
pub struct DirPutter {
    root: Dir,
}

impl DirPutter {
    pub fn new(root: Dir) -> Self {
        DirPutter { root }
    }
}

impl FilePutter for DirPutter {
    fn put(&mut self, name: &[u8], payload: &mut Payload<'_>) -> io::Result<()> {
        let path = below_root(name).map_err(unsafe_name)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.root.create_dir_all(parent)?;
        }
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32);
        let mut file = self.root.open_with(&path, &options)?;
        loop {
            let chunk = payload.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            file.write_all(chunk)?;
            payload.consume(n);
        }
        Ok(())
    }
}

/// Opens each payload by name below a root directory, as tar-split's path
/// getter does, but through cap-std: absolute names and names that climb out
/// of the root are errors, symlinks cannot lead out, and only regular files
/// are read (a FIFO planted at a name cannot stall assembly).
#[derive(Debug)]
pub struct DirGetter {
    roots: Vec<Dir>,
}

impl DirGetter {
    pub fn new(root: Dir) -> Self {
        DirGetter { roots: vec![root] }
    }

    /// Looks each name up in `roots` in turn and serves the first that has
    /// it (a layer's own directory, then those of the layers below it).
    pub fn chain(roots: Vec<Dir>) -> Self {
        DirGetter { roots }
    }
}

impl FileGetter for DirGetter {
    fn get(&mut self, name: &[u8]) -> io::Result<Box<dyn Read + '_>> {
        let path = below_root(name).map_err(unsafe_name)?;
        let mut options = OpenOptions::new();
        options
            .read(true)
            .custom_flags(OFlags::NONBLOCK.bits() as i32);
        let mut first_err = None;
        for root in &self.roots {
            match root.open_with(&path, &options) {
                Ok(file) => {
                    if !file.metadata()?.is_file() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "not a regular file",
                        ));
                    }
                    return Ok(Box::new(file));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no root directory")))
    }
}

/// Payloads kept in memory by raw name: a putter and a getter in one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryFiles {
    pub files: HashMap<Vec<u8>, Vec<u8>>,
}

impl FilePutter for MemoryFiles {
    fn put(&mut self, name: &[u8], payload: &mut Payload<'_>) -> io::Result<()> {
        let mut content = Vec::with_capacity(payload.len().min(1 << 20) as usize);
        payload.read_to_end(&mut content)?;
        self.files.insert(name.to_vec(), content);
        Ok(())
    }
}

impl FileGetter for MemoryFiles {
    fn get(&mut self, name: &[u8]) -> io::Result<Box<dyn Read + '_>> {
        match self.files.get(name) {
            Some(content) => Ok(Box::new(content.as_slice())),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such file in memory",
            )),
        }
    }
}

/// A payload's SHA-256 digest and size, as [`HashPutter`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedFile {
    pub name: Vec<u8>,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Records the SHA-256 of every payload, in archive order.
#[derive(Debug, Default, Clone)]
pub struct HashPutter {
    pub files: Vec<HashedFile>,
}

impl FilePutter for HashPutter {
    fn put(&mut self, name: &[u8], payload: &mut Payload<'_>) -> io::Result<()> {
        let mut hasher = Sha256::new();
        let size = payload.len();
        loop {
            let chunk = payload.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            hasher.update(chunk);
            payload.consume(n);
        }
        self.files.push(HashedFile {
            name: name.to_vec(),
            size,
            sha256: hasher.finalize().into(),
        });
        Ok(())
    }
}
