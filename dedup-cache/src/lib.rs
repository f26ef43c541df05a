#![doc = include_str!("../README.md")]

mod index;

use std::collections::HashMap;
use std::sync::Arc;

use cap_std::fs::Dir;

pub use index::{Error, IndexEntry, Kind, LayerIndex};

/// Where content already is: `length` bytes at `offset` of the file `path`
/// under `root`.
#[derive(Clone, Debug)]
pub struct Found {
    pub root: Arc<Dir>,
    pub path: String,
    pub offset: u64,
    pub length: u64,
}

/// Finds content by digest (`sha256:<hex>`) in local layers.
pub trait ChunkCache: Send + Sync {
    /// A whole file with this content digest.
    fn file(&self, digest: &str) -> Option<Found>;
    /// A chunk (part of a file) with this digest.
    fn chunk(&self, digest: &str) -> Option<Found>;
}

/// A cache that knows nothing: every byte is fetched.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCache;

impl ChunkCache for NoCache {
    fn file(&self, _: &str) -> Option<Found> {
        None
    }
    fn chunk(&self, _: &str) -> Option<Found> {
        None
    }
}

/// Layer indexes loaded into hash maps: one lookup per file or chunk,
/// whatever the number of layers.
#[derive(Debug, Default)]
pub struct DiskCache {
    layers: Vec<(Arc<Dir>, LayerIndex)>,
    /// Keyed by the digest's first 8 bytes: the entry holds the whole
    /// digest, which a lookup compares. Two digests alike in those bytes
    /// (found on purpose, at 2^32 tries) only cost the second its reuse.
    files: HashMap<u64, (u32, u32)>,
    chunks: HashMap<u64, (u32, u32)>,
}

fn short_key(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

impl DiskCache {
    /// Adds a layer whose files are under `root`. Earlier layers win when
    /// several hold the same content.
    pub fn add_layer(&mut self, root: Arc<Dir>, index: LayerIndex) {
        let layer = u32::try_from(self.layers.len()).unwrap_or(u32::MAX);
        for (i, e) in index.entries().enumerate() {
            let at = (layer, u32::try_from(i).unwrap_or(u32::MAX));
            let map = match e.kind {
                Kind::File => &mut self.files,
                Kind::Chunk => &mut self.chunks,
            };
            map.entry(short_key(e.digest)).or_insert(at);
        }
        self.layers.push((root, index));
    }

    /// Entries across all layers.
    pub fn len(&self) -> usize {
        self.files.len() + self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, map: &HashMap<u64, (u32, u32)>, digest: &str) -> Option<Found> {
        let key = index::parse_digest(digest)?;
        let &(layer, entry) = map.get(&short_key(&key))?;
        let (root, index) = self.layers.get(layer as usize)?;
        let e = index.get(entry as usize).filter(|e| *e.digest == key)?;
        Some(Found {
            root: root.clone(),
            path: e.path.to_owned(),
            offset: e.offset,
            length: e.length,
        })
    }
}

impl ChunkCache for DiskCache {
    fn file(&self, digest: &str) -> Option<Found> {
        self.lookup(&self.files, digest)
    }
    fn chunk(&self, digest: &str) -> Option<Found> {
        self.lookup(&self.chunks, digest)
            .or_else(|| self.lookup(&self.files, digest))
    }
}

impl<T: ChunkCache + ?Sized> ChunkCache for &T {
    fn file(&self, digest: &str) -> Option<Found> {
        (**self).file(digest)
    }
    fn chunk(&self, digest: &str) -> Option<Found> {
        (**self).chunk(digest)
    }
}

impl<T: ChunkCache + ?Sized> ChunkCache for Arc<T> {
    fn file(&self, digest: &str) -> Option<Found> {
        (**self).file(digest)
    }
    fn chunk(&self, digest: &str) -> Option<Found> {
        (**self).chunk(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests alike in their first 8 bytes share a map slot: the second
    /// is not found (a missed reuse), and never answered with the first.
    #[test]
    fn a_digest_sharing_the_short_key_is_not_mistaken() {
        let dir = Arc::new(Dir::open_ambient_dir("/", cap_std::ambient_authority()).expect("root"));
        let first = format!("sha256:{}{}", "ab".repeat(8), "01".repeat(24));
        let second = format!("sha256:{}{}", "ab".repeat(8), "02".repeat(24));
        let mut index = LayerIndex::default();
        index.push(Kind::File, &first, "one", 0, 1).expect("push");
        index.push(Kind::File, &second, "two", 0, 1).expect("push");
        let mut cache = DiskCache::default();
        cache.add_layer(dir, index);
        assert_eq!(cache.file(&first).map(|f| f.path), Some("one".to_owned()));
        assert_eq!(cache.file(&second).map(|f| f.path), None);
        assert!(cache.chunk(&second).is_none());
    }
}
