//! Content-defined chunking of a file's payload, with the rolling sum and
//! thresholds containers-storage's compressor uses, so chunk boundaries (and
//! so chunk digests) match the reference writer's.

const WINDOW: usize = 64;
const CHAR_OFFSET: u32 = 31;
const SPLIT_MASK: u32 = 0xffff;
/// Runs of zeros at least this long become chunks of their own.
pub const HOLE_THRESHOLD: usize = 1024;

/// bup/rsync-style rolling sum over the last 64 bytes.
#[derive(Clone, Debug)]
struct Rollsum {
    s1: u32,
    s2: u32,
    window: [u8; WINDOW],
    at: usize,
}

impl Rollsum {
    fn new() -> Self {
        Rollsum {
            s1: WINDOW as u32 * CHAR_OFFSET,
            s2: WINDOW as u32 * (WINDOW as u32 - 1) * CHAR_OFFSET,
            window: [0; WINDOW],
            at: 0,
        }
    }

    fn roll(&mut self, byte: u8) {
        let drop = u32::from(self.window[self.at]);
        self.s1 = self.s1.wrapping_add(u32::from(byte)).wrapping_sub(drop);
        self.s2 = self
            .s2
            .wrapping_add(self.s1)
            .wrapping_sub((WINDOW as u32).wrapping_mul(drop + CHAR_OFFSET));
        self.window[self.at] = byte;
        self.at = (self.at + 1) & (WINDOW - 1);
    }

    fn on_split(&self) -> bool {
        self.s2 & SPLIT_MASK == SPLIT_MASK
    }
}

/// What a chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Data,
    /// At least [`HOLE_THRESHOLD`] zero bytes.
    Zeros,
}

/// A chunk of a payload: `len` bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub kind: ChunkKind,
}

/// Splits a payload fed in pieces of any size. Chunks come out as soon as
/// they are complete; memory does not grow with the payload.
#[derive(Clone, Debug)]
pub struct Chunker {
    sum: Rollsum,
    /// Bytes consumed so far.
    pos: u64,
    /// Start of the data chunk in progress.
    start: u64,
    /// Length of the zero run in progress (bytes not yet rolled).
    zeros: u64,
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker {
            sum: Rollsum::new(),
            pos: 0,
            start: 0,
            zeros: 0,
        }
    }
}

impl Chunker {
    pub fn new() -> Self {
        Chunker::default()
    }

    /// Feeds bytes; calls `emit` for every chunk completed by them.
    pub fn update(&mut self, bytes: &[u8], mut emit: impl FnMut(Chunk)) {
        for &b in bytes {
            if b == 0 {
                self.zeros += 1;
                self.pos += 1;
                continue;
            }
            self.end_zero_run(&mut emit);
            self.sum.roll(b);
            self.pos += 1;
            if self.sum.on_split() {
                emit(Chunk {
                    offset: self.start,
                    len: self.pos - self.start,
                    kind: ChunkKind::Data,
                });
                self.start = self.pos;
            }
        }
    }

    /// A zero run ended (or the payload did): a long run is a chunk of its
    /// own; a short one is ordinary data, rolled and split-checked byte by
    /// byte.
    fn end_zero_run(&mut self, emit: &mut impl FnMut(Chunk)) {
        if self.zeros == 0 {
            return;
        }
        let run_start = self.pos - self.zeros;
        if self.zeros >= HOLE_THRESHOLD as u64 {
            if run_start > self.start {
                emit(Chunk {
                    offset: self.start,
                    len: run_start - self.start,
                    kind: ChunkKind::Data,
                });
            }
            for _ in 0..self.zeros.min(WINDOW as u64 * 2) {
                // Rolling zeros past one window repeats the same state
                // transitions; the sum after N ≥ 64 zeros depends only on
                // the window contents, which are then all zero.
                self.sum.roll(0);
            }
            if self.zeros > WINDOW as u64 * 2 {
                self.roll_zeros_rest(self.zeros - WINDOW as u64 * 2);
            }
            emit(Chunk {
                offset: run_start,
                len: self.zeros,
                kind: ChunkKind::Zeros,
            });
            self.start = self.pos;
        } else {
            for i in 0..self.zeros {
                self.sum.roll(0);
                if self.sum.on_split() {
                    let end = run_start + i + 1;
                    emit(Chunk {
                        offset: self.start,
                        len: end - self.start,
                        kind: ChunkKind::Data,
                    });
                    self.start = end;
                }
            }
        }
        self.zeros = 0;
    }

    /// Rolls `n` more zeros into a window that is already all zeros: s1 stays
    /// put and s2 moves by a fixed step each time.
    fn roll_zeros_rest(&mut self, n: u64) {
        let step = self.sum.s1.wrapping_sub(WINDOW as u32 * CHAR_OFFSET);
        self.sum.s2 = self.sum.s2.wrapping_add(step.wrapping_mul(n as u32));
        self.sum.at = (self.sum.at + (n % WINDOW as u64) as usize) & (WINDOW - 1);
    }

    /// Ends the payload; emits what is pending.
    pub fn finish(mut self, mut emit: impl FnMut(Chunk)) {
        self.end_zero_run(&mut emit);
        if self.pos > self.start {
            emit(Chunk {
                offset: self.start,
                len: self.pos - self.start,
                kind: ChunkKind::Data,
            });
        }
    }
}

/// All chunks of a payload held in memory.
pub fn chunks(payload: &[u8]) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut c = Chunker::new();
    c.update(payload, |ch| out.push(ch));
    c.finish(|ch| out.push(ch));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn lcg(state: &mut u32, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (*state >> 16) as u8
            })
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The vector from the spec, checked there against the Go chunker.
    #[test]
    fn matches_the_reference_chunker() {
        let mut s = 1u32;
        let mut data = lcg(&mut s, 200_000);
        data.extend(std::iter::repeat_n(0, 5000));
        data.extend(lcg(&mut s, 100_000));
        data.extend(std::iter::repeat_n(0, 500));
        data.extend(lcg(&mut s, 50_000));
        assert_eq!(
            hex(&Sha256::digest(&data)),
            "210e6ea75da4c272e7b859b5571563c01f821c57a45ee26e5b7fce218f5e91cd"
        );
        let want = [
            (
                0,
                49253,
                ChunkKind::Data,
                "f587f476846be1f1e1e2d71afe5a5d4be745860f5c623a15944c3d8489c2bb59",
            ),
            (
                49253,
                65256,
                ChunkKind::Data,
                "db7d98cd2527cbd63bcf2cd1da57053f08038496924120989a02b20e01c37e9a",
            ),
            (
                114509,
                41131,
                ChunkKind::Data,
                "361f918fee21a0ac8dcb62a1e889901df4ff1e920777df4b48be4cec6305bdd9",
            ),
            (
                155640,
                11963,
                ChunkKind::Data,
                "1ad558a7ffd8afff24f7e49843a9700a1b143f05945f5653066431aa87b5435f",
            ),
            (
                167603,
                32397,
                ChunkKind::Data,
                "22075e5b2f2693c911cf7ea01030d8e81cb2c843673ae1337eb8c6988641c87f",
            ),
            (
                200000,
                5000,
                ChunkKind::Zeros,
                "7ca5bd879f393d9dd05b14f38add9c0fc6b67928f7f2d261b2e47a32ee8219e3",
            ),
            (
                205000,
                45388,
                ChunkKind::Data,
                "5c0b7085e95b110651412eacf48f0cd63665068ef95c75afb799663858b1c5dd",
            ),
            (
                250388,
                18138,
                ChunkKind::Data,
                "a63067769393c5fafeffbbb5fa2ff5e153c1a3dc54707e86550b200dc9dfc417",
            ),
            (
                268526,
                75674,
                ChunkKind::Data,
                "c6b057abecb921028938b06e43482cef6e6f12196fb6b748a44dff5fd6960a45",
            ),
            (
                344200,
                11300,
                ChunkKind::Data,
                "c983390a9318b44e3099ab6217220aa2c85e4cc1f8f984fe3b307b7fdf499c19",
            ),
        ];
        let got = chunks(&data);
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (c, (off, len, kind, digest)) in got.iter().zip(want) {
            assert_eq!((c.offset, c.len, c.kind), (off, len, kind));
            let bytes = &data[c.offset as usize..(c.offset + c.len) as usize];
            assert_eq!(hex(&Sha256::digest(bytes)), digest);
        }
    }

    #[test]
    fn zero_run_edges() {
        assert_eq!(
            chunks(&[0; 1024]),
            vec![Chunk {
                offset: 0,
                len: 1024,
                kind: ChunkKind::Zeros
            }]
        );
        assert_eq!(
            chunks(&[0; 1023]),
            vec![Chunk {
                offset: 0,
                len: 1023,
                kind: ChunkKind::Data
            }]
        );
        assert!(chunks(&[]).is_empty());
    }
}
