//! The fs-verity file digest, computed in user space: the value
//! `FS_IOC_MEASURE_VERITY` reports once verity is enabled, and what
//! `fsverity digest` prints.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

const HASH_LEN: usize = 32;
/// SHA-256's compression block: the salt is padded to a multiple of it.
const SHA256_BLOCK: usize = 64;
const MAX_SALT: usize = 32;
/// `FS_VERITY_HASH_ALG_SHA256`.
pub(crate) const ALG_SHA256: u8 = 1;
/// Deepest tree: a 2^64-byte file with 1 KiB blocks and 32 hashes a block.
const MAX_LEVELS: usize = 12;

/// A SHA-256 fs-verity file digest. Shown as `sha256:HEX`, like
/// fsverity-utils.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; HASH_LEN]);

impl Digest {
    /// Lowercase hex, without the algorithm prefix (as containers-storage
    /// records it).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a digest string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 fs-verity digest: {0:?}")]
pub struct ParseDigestError(String);

impl FromStr for Digest {
    type Err = ParseDigestError;

    /// Accepts `sha256:HEX` or bare `HEX` (64 hex digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        let bad = || ParseDigestError(s.to_string());
        if hex.len() != 2 * HASH_LEN {
            return Err(bad());
        }
        let mut out = [0u8; HASH_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Digest(out))
    }
}

/// Merkle tree parameters. The default is what the kernel, fsverity-utils and
/// containers-storage use: 4096-byte blocks, no salt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    block_size: usize,
    salt: Vec<u8>,
}

/// Parameters the kernel would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("block size {0} is not a power of two between 1024 and 65536")]
    BlockSize(usize),
    #[error("salt is {0} bytes; fs-verity allows at most 32")]
    Salt(usize),
}

impl Default for Params {
    fn default() -> Self {
        Params {
            block_size: 4096,
            salt: Vec::new(),
        }
    }
}

impl Params {
    pub fn new(block_size: usize, salt: &[u8]) -> Result<Self, ParamsError> {
        if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
            return Err(ParamsError::BlockSize(block_size));
        }
        if salt.len() > MAX_SALT {
            return Err(ParamsError::Salt(salt.len()));
        }
        Ok(Params {
            block_size,
            salt: salt.to_vec(),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
}

/// One level of the tree being built: the block being filled with hashes of
/// the level below, and how many blocks this level has hashed so far.
#[derive(Clone)]
struct Level {
    pending: Vec<u8>,
    blocks: u64,
}

/// Computes the digest of a stream fed in pieces of any size. Memory is a
/// block per tree level, whatever the file's size.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    /// SHA-256 with the padded salt already absorbed.
    seeded: Sha256,
    /// Data not yet making a whole block.
    data: Vec<u8>,
    data_size: u64,
    levels: Vec<Level>,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .field("data_size", &self.data_size)
            .finish()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new(&Params::default())
    }
}

impl Hasher {
    pub fn new(params: &Params) -> Self {
        let mut seeded = Sha256::new();
        if !params.salt.is_empty() {
            let mut padded = params.salt.clone();
            padded.resize(params.salt.len().next_multiple_of(SHA256_BLOCK), 0);
            seeded.update(&padded);
        }
        Hasher {
            params: params.clone(),
            seeded,
            data: Vec::with_capacity(params.block_size),
            data_size: 0,
            levels: Vec::new(),
        }
    }

    fn hash_block(&self, block: &[u8]) -> [u8; HASH_LEN] {
        let mut h = self.seeded.clone();
        h.update(block);
        if block.len() < self.params.block_size {
            h.update(&ZEROS[..self.params.block_size - block.len()]);
        }
        h.finalize().into()
    }

    /// Adds the hash of a block of level `at - 1` (level 0 is data) to tree
    /// level `at`, hashing that level's block upward when it fills.
    fn push_hash(&mut self, mut at: usize, mut hash: [u8; HASH_LEN]) {
        loop {
            if self.levels.len() <= at {
                self.levels.push(Level {
                    pending: Vec::with_capacity(self.params.block_size),
                    blocks: 0,
                });
            }
            let level = &mut self.levels[at];
            level.pending.extend_from_slice(&hash);
            if level.pending.len() < self.params.block_size {
                return;
            }
            level.blocks += 1;
            hash = self.hash_block(&self.levels[at].pending);
            self.levels[at].pending.clear();
            at += 1;
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        let b = self.params.block_size;
        self.data_size += bytes.len() as u64;
        if !self.data.is_empty() {
            let take = (b - self.data.len()).min(bytes.len());
            self.data.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.data.len() < b {
                return;
            }
            let hash = self.hash_block(&self.data);
            self.data.clear();
            self.push_hash(0, hash);
        }
        let whole = bytes.len() - bytes.len() % b;
        let (blocks, rest) = bytes.split_at(whole);
        let threads = hashing_threads();
        if threads > 1 && blocks.len() >= PARALLEL_MIN {
            // Data blocks hash independently: spread them over the cores,
            // then feed the hashes upward in order. The result is the same
            // whatever the thread count.
            let per_thread = (blocks.len() / b).div_ceil(threads) * b;
            let mut parts = blocks.chunks(per_thread);
            let first = parts.next().unwrap_or_default();
            let this = &*self;
            let hashed: Vec<Vec<[u8; HASH_LEN]>> = std::thread::scope(|scope| {
                let others: Vec<_> = parts
                    .map(|part| scope.spawn(move || this.hash_blocks(part)))
                    .collect();
                let mut all = vec![this.hash_blocks(first)];
                all.extend(
                    others
                        .into_iter()
                        .map(|h| h.join().expect("hashing thread panicked")),
                );
                all
            });
            for hash in hashed.into_iter().flatten() {
                self.push_hash(0, hash);
            }
        } else {
            for block in blocks.chunks_exact(b) {
                let hash = self.hash_block(block);
                self.push_hash(0, hash);
            }
        }
        self.data.extend_from_slice(rest);
    }

    fn hash_blocks(&self, blocks: &[u8]) -> Vec<[u8; HASH_LEN]> {
        blocks
            .chunks_exact(self.params.block_size)
            .map(|block| self.hash_block(block))
            .collect()
    }

    /// The digest of everything fed so far.
    pub fn finish(mut self) -> Digest {
        let root = self.root();
        let mut descriptor = [0u8; 256];
        descriptor[0] = 1;
        descriptor[1] = ALG_SHA256;
        descriptor[2] = self.params.block_size.trailing_zeros() as u8;
        descriptor[3] = self.params.salt.len() as u8;
        descriptor[8..16].copy_from_slice(&self.data_size.to_le_bytes());
        descriptor[16..16 + HASH_LEN].copy_from_slice(&root);
        descriptor[80..80 + self.params.salt.len()].copy_from_slice(&self.params.salt);
        Digest(Sha256::digest(descriptor).into())
    }

    /// The Merkle root: each level's last block is zero-padded and hashed
    /// upward until a level holds a single block.
    fn root(&mut self) -> [u8; HASH_LEN] {
        if self.data_size == 0 {
            return [0; HASH_LEN];
        }
        let data_blocks = self.data_size.div_ceil(self.params.block_size as u64);
        if !self.data.is_empty() {
            let hash = self.hash_block(&self.data);
            self.data.clear();
            self.push_hash(0, hash);
        }
        let mut blocks_below = data_blocks;
        let mut at = 0;
        loop {
            if blocks_below == 1 {
                let mut root = [0u8; HASH_LEN];
                root.copy_from_slice(&self.levels[at].pending[..HASH_LEN]);
                return root;
            }
            if !self.levels[at].pending.is_empty() {
                self.levels[at].blocks += 1;
                let hash = self.hash_block(&self.levels[at].pending);
                self.levels[at].pending.clear();
                self.push_hash(at + 1, hash);
            }
            blocks_below = self.levels[at].blocks;
            at += 1;
            debug_assert!(at < MAX_LEVELS);
        }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

static ZEROS: [u8; 65536] = [0; 65536];

/// Below this many bytes of whole blocks, one thread hashes them.
const PARALLEL_MIN: usize = 256 << 10;

/// How many threads hash data blocks: the machine's cores, at most 8.
fn hashing_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// The digest of everything `reader` yields, with default parameters.
pub fn digest<R: Read>(reader: R) -> io::Result<Digest> {
    digest_with(reader, &Params::default())
}

/// The digest of everything `reader` yields.
pub fn digest_with<R: Read>(mut reader: R, params: &Params) -> io::Result<Digest> {
    let mut hasher = Hasher::new(params);
    // Big enough to split across the hashing threads, small enough to stay
    // in cache between the copy and the hashing.
    let mut buf = vec![0u8; (128 << 10) * hashing_threads().max(8)];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fsverity-utils' test pattern.
    pub(crate) fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i % 11) + (i % 439) + (i % 1103)) as u8)
            .collect()
    }

    fn hex_of(data: &[u8], params: &Params) -> String {
        digest_with(data, params).expect("in memory").hex()
    }

    #[test]
    fn fsverity_utils_vectors() {
        let d = Params::default();
        let cases = [
            (
                1_000_000,
                d.clone(),
                "48df0c462329cd879661bd05b39aa81b05cc16afd27a7196a559da83531d39d9",
            ),
            (
                100_000,
                d.clone(),
                "f2096a36c5cdca4fa33ee8852833150bb324992e5417a9d571f1bffff73b9efc",
            ),
            (
                4096,
                d.clone(),
                "6ac39979016e3ddf3d39fff6cb984f7c118acdf1852919f5c100c4b142c1818e",
            ),
            (
                1,
                d.clone(),
                "b803429503d95915829b29fdbc8bbad142f3abfd11b1cadf5526582e685c0551",
            ),
            (
                0,
                d.clone(),
                "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
            ),
            (
                1_000_000,
                Params::new(4096, b"abcd").expect("params"),
                "917900b0d299454aa304d5debc6f39e4af7b5abe33bdbc568d5d8f1e5c4d8652",
            ),
            (
                1_000_000,
                Params::new(1024, b"").expect("params"),
                "e9df927c14fcb961d5f51c666d8ae4c14fe4ff98a374c733e898d00c9e74a8e3",
            ),
        ];
        for (n, params, want) in cases {
            assert_eq!(
                hex_of(&pattern(n), &params),
                want,
                "n={n} params={params:?}"
            );
        }
        assert_eq!(
            hex_of(b"hello\n", &d),
            "9c76eecc7b76fcb46199cb27b90cf59a660e10575bb0412128905129d5b1c2aa"
        );
    }

    #[test]
    fn digest_text_round_trips() {
        let d = digest(&b"hello\n"[..]).expect("digest");
        let text = d.to_string();
        assert!(text.starts_with("sha256:9c76ee"));
        assert_eq!(text.parse::<Digest>().expect("parse"), d);
        assert_eq!(d.hex().parse::<Digest>().expect("bare hex"), d);
        assert!("sha256:zz".parse::<Digest>().is_err());
        assert!("sha512:00".parse::<Digest>().is_err());
    }

    #[test]
    fn params_are_checked() {
        assert_eq!(Params::new(3000, b""), Err(ParamsError::BlockSize(3000)));
        assert_eq!(Params::new(512, b""), Err(ParamsError::BlockSize(512)));
        assert_eq!(Params::new(4096, &[0; 33]), Err(ParamsError::Salt(33)));
    }
}
