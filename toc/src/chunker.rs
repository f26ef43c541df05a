//! Content-defined chunking of a file's payload, with the rolling sum and
//! thresholds containers-storage's compressor uses, so chunk boundaries (and
//! so chunk digests) match the reference writer's.

const WINDOW: usize = 64;
const CHAR_OFFSET: u32 = 31;
const SPLIT_MASK: u32 = 0xffff;
/// Runs of zeros at least this long become chunks of their own.
pub const HOLE_THRESHOLD: usize = 1024;

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
///
/// The sum is bup/rsync-style over the last 64 bytes. The reference defers
/// zeros to tell holes from short runs; here every byte is rolled as it
/// comes (a hole's state is the same either way) and only the split points
/// inside a zero run are held until the run's length decides between them
/// and a hole. The byte leaving the window is read from the input itself,
/// or from the last 64 bytes of the previous piece, so no ring is written
/// per byte.
#[derive(Clone, Debug)]
pub struct Chunker {
    s1: u32,
    s2: u32,
    /// The 64 bytes before the next piece (zeros before the payload).
    tail: [u8; WINDOW],
    /// Bytes consumed so far.
    pos: u64,
    /// Start of the data chunk in progress.
    start: u64,
    /// Length of the zero run ending at `pos`.
    zeros: u64,
    /// Split points inside a zero run shorter than a hole so far.
    splits_in_run: Vec<u64>,
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker {
            s1: WINDOW as u32 * CHAR_OFFSET,
            s2: WINDOW as u32 * (WINDOW as u32 - 1) * CHAR_OFFSET,
            tail: [0; WINDOW],
            pos: 0,
            start: 0,
            zeros: 0,
            splits_in_run: Vec::new(),
        }
    }
}

impl Chunker {
    pub fn new() -> Self {
        Chunker::default()
    }

    /// Feeds bytes; calls `emit` for every chunk completed by them.
    pub fn update(&mut self, bytes: &[u8], mut emit: impl FnMut(Chunk)) {
        let head = bytes.len().min(WINDOW);
        let tail = self.tail;
        if self.may_hold_a_hole(bytes) {
            self.run(bytes, 0..head, |i| tail[i], &mut emit);
            self.run(bytes, head..bytes.len(), |i| bytes[i - WINDOW], &mut emit);
        } else {
            self.run_without_holes(bytes, &mut emit);
        }
        if bytes.len() >= WINDOW {
            self.tail.copy_from_slice(&bytes[bytes.len() - WINDOW..]);
        } else {
            self.tail.copy_within(bytes.len().., 0);
            self.tail[WINDOW - bytes.len()..].copy_from_slice(bytes);
        }
    }

    /// Whether a zero run of hole length may end or lie in `bytes`. A run
    /// of 1024 zeros inside them covers a whole 512-byte block aligned to
    /// their start; one that began before them continues from their first
    /// byte.
    fn may_hold_a_hole(&self, bytes: &[u8]) -> bool {
        let leading = bytes.iter().take_while(|&&b| b == 0).count() as u64;
        self.zeros + leading >= HOLE_THRESHOLD as u64
            || bytes
                .chunks_exact(HOLE_THRESHOLD / 2)
                .any(|block| block.iter().all(|&b| b == 0))
    }

    /// Rolls bytes that hold no hole: only the splits in a trailing zero
    /// run can still be undone (by the run growing into a hole in the next
    /// piece), so only those wait.
    fn run_without_holes(&mut self, bytes: &[u8], emit: &mut impl FnMut(Chunk)) {
        let n = bytes.len();
        let trailing = bytes.iter().rev().take_while(|&&b| b == 0).count();
        let all_zero = trailing == n;
        if !all_zero && !self.splits_in_run.is_empty() {
            // The run carried in ends in these bytes, short of a hole.
            for end in std::mem::take(&mut self.splits_in_run) {
                emit(Chunk {
                    offset: self.start,
                    len: end - self.start,
                    kind: ChunkKind::Data,
                });
                self.start = end;
            }
        }
        let waits_from = n - trailing;
        let base = self.pos;
        let (mut s1, mut s2) = (self.s1, self.s2);
        let mut roll = |i: usize, out: u8, this: &mut Self| {
            let out = u32::from(out);
            s1 = s1.wrapping_add(u32::from(bytes[i])).wrapping_sub(out);
            s2 = s2
                .wrapping_add(s1)
                .wrapping_sub((WINDOW as u32).wrapping_mul(out + CHAR_OFFSET));
            if s2 & SPLIT_MASK == SPLIT_MASK {
                let pos = base + i as u64 + 1;
                if i >= waits_from {
                    this.splits_in_run.push(pos);
                } else {
                    emit(Chunk {
                        offset: this.start,
                        len: pos - this.start,
                        kind: ChunkKind::Data,
                    });
                    this.start = pos;
                }
            }
        };
        let head = n.min(WINDOW);
        for i in 0..head {
            roll(i, self.tail[i], self);
        }
        for i in head..n {
            roll(i, bytes[i - WINDOW], self);
        }
        (self.s1, self.s2) = (s1, s2);
        self.pos = base + n as u64;
        self.zeros = if all_zero {
            self.zeros + n as u64
        } else {
            trailing as u64
        };
    }

    /// Rolls `bytes[range]`; `leaving(i)` is the byte that leaves the window
    /// when `bytes[i]` enters it. Every byte is rolled the same way, zero or
    /// not, and the only branches taken per byte are rarely taken: binary
    /// files mix zeros and other bytes unpredictably, and a branch on each
    /// byte's zeroness cost more than the sum itself.
    #[inline(always)]
    fn run(
        &mut self,
        bytes: &[u8],
        range: std::ops::Range<usize>,
        leaving: impl Fn(usize) -> u8,
        emit: &mut impl FnMut(Chunk),
    ) {
        // Stream offset of bytes[0].
        let base = self.pos - range.start as u64;
        let end = range.end as u64;
        let (mut s1, mut s2, mut zeros) = (self.s1, self.s2, self.zeros);
        let mut run_pending = self.run_pending();
        for i in range {
            let byte = bytes[i];
            let is_zero = byte == 0;
            if !is_zero && run_pending {
                self.pos = base + i as u64;
                self.zeros = zeros;
                self.end_zero_run(emit);
                run_pending = false;
            }
            let out = u32::from(leaving(i));
            s1 = s1.wrapping_add(u32::from(byte)).wrapping_sub(out);
            s2 = s2
                .wrapping_add(s1)
                .wrapping_sub((WINDOW as u32).wrapping_mul(out + CHAR_OFFSET));
            zeros = if is_zero { zeros + 1 } else { 0 };
            run_pending |= zeros >= HOLE_THRESHOLD as u64;
            if s2 & SPLIT_MASK == SPLIT_MASK {
                let pos = base + i as u64 + 1;
                if !is_zero {
                    emit(Chunk {
                        offset: self.start,
                        len: pos - self.start,
                        kind: ChunkKind::Data,
                    });
                    self.start = pos;
                } else if zeros < HOLE_THRESHOLD as u64 {
                    // Stands only if the run stays shorter than a hole.
                    self.splits_in_run.push(pos);
                    run_pending = true;
                }
            }
        }
        (self.s1, self.s2, self.zeros) = (s1, s2, zeros);
        self.pos = base + end;
    }

    /// Whether the zero run in progress needs handling when it ends.
    fn run_pending(&self) -> bool {
        self.zeros >= HOLE_THRESHOLD as u64 || !self.splits_in_run.is_empty()
    }

    /// A zero run ended (or the payload did) at `pos`: a long run is a
    /// chunk of its own; in a short one the splits found in it stand.
    #[cold]
    fn end_zero_run(&mut self, emit: &mut impl FnMut(Chunk)) {
        if self.zeros >= HOLE_THRESHOLD as u64 {
            let run_start = self.pos - self.zeros;
            if run_start > self.start {
                emit(Chunk {
                    offset: self.start,
                    len: run_start - self.start,
                    kind: ChunkKind::Data,
                });
            }
            emit(Chunk {
                offset: run_start,
                len: self.zeros,
                kind: ChunkKind::Zeros,
            });
            self.start = self.pos;
        } else {
            for &end in &self.splits_in_run {
                emit(Chunk {
                    offset: self.start,
                    len: end - self.start,
                    kind: ChunkKind::Data,
                });
                self.start = end;
            }
        }
        self.splits_in_run.clear();
        self.zeros = 0;
    }

    /// Ends the payload; emits what is pending.
    pub fn finish(mut self, mut emit: impl FnMut(Chunk)) {
        if self.run_pending() {
            self.end_zero_run(&mut emit);
        }
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

    /// The straightforward chunker (a ring of the last 64 bytes, zeros
    /// deferred), kept as the oracle the fast one must agree with.
    mod reference {
        use super::super::{CHAR_OFFSET, Chunk, ChunkKind, HOLE_THRESHOLD, SPLIT_MASK, WINDOW};

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

    fn fast(data: &[u8], cuts: &[usize]) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut c = Chunker::new();
        let mut at = 0;
        for &cut in cuts {
            let cut = cut.clamp(at, data.len());
            c.update(&data[at..cut], |ch| out.push(ch));
            at = cut;
        }
        c.update(&data[at..], |ch| out.push(ch));
        c.finish(|ch| out.push(ch));
        out
    }

    fn slow(data: &[u8]) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut c = reference::Chunker::new();
        c.update(data, |ch| out.push(ch));
        c.finish(|ch| out.push(ch));
        out
    }

    /// Random bytes with zero runs around the hole threshold, many splits.
    fn mixed(seed: u32, segments: &[(u16, u16)]) -> Vec<u8> {
        let mut s = seed | 1;
        let mut data = Vec::new();
        for &(random, zeros) in segments {
            data.extend(lcg(&mut s, usize::from(random) * 8));
            data.extend(std::iter::repeat_n(0, usize::from(zeros % 2100)));
        }
        data
    }

    #[test]
    fn agrees_with_the_reference_on_a_large_input() {
        let segments: Vec<(u16, u16)> = (0..400u16)
            .map(|i| (i.wrapping_mul(977) % 4000, 1000 + (i % 50)))
            .collect();
        let data = mixed(7, &segments);
        let want = slow(&data);
        assert!(want.iter().any(|c| c.kind == ChunkKind::Zeros));
        assert!(want.len() > 100);
        assert_eq!(fast(&data, &[]), want);
        let cuts: Vec<usize> = (1..2000).map(|i| i * 997).collect();
        assert_eq!(fast(&data, &cuts), want);
    }

    /// Splits that fall on a zero which then turns out to begin (or lie in)
    /// a hole, with the piece boundary at every place around them: the
    /// cases random data almost never reaches.
    #[test]
    fn splits_undone_by_a_hole_across_pieces() {
        let mut st = 3u32;
        let data: Vec<u8> = lcg(&mut st, 8 << 20)
            .into_iter()
            .map(|b| if b & 1 == 0 { 0 } else { b })
            .collect();
        let at_zeros: Vec<usize> = slow(&data)
            .iter()
            .map(|c| (c.offset + c.len) as usize)
            .filter(|&end| end < data.len() && data[end - 1] == 0)
            .take(4)
            .collect();
        assert_eq!(at_zeros.len(), 4, "no splits on zeros in the sample");
        for end in at_zeros {
            let mut run_start = end - 1;
            while run_start > 0 && data[run_start - 1] == 0 {
                run_start -= 1;
            }
            for hole in [HOLE_THRESHOLD - 1, HOLE_THRESHOLD, 3000] {
                let mut d = data[..end + 100_000].to_vec();
                let fill = (run_start + hole).max(end);
                d[end..fill].fill(0);
                if d[fill] == 0 {
                    d[fill] = 1;
                }
                let want = slow(&d);
                for cut in [run_start, run_start + 1, end - 1, end, end + 1, fill - 1, fill] {
                    assert_eq!(fast(&d, &[cut]), want, "cut {cut}, run {run_start}..{fill}");
                    assert_eq!(fast(&d, &[cut - 1, cut]), want, "cuts {cut}-1, {cut}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference(
            seed: u32,
            segments in proptest::collection::vec((0u16..2000, proptest::prelude::any::<u16>()), 0..40),
            cuts in proptest::collection::vec(0usize..400_000, 0..20),
        ) {
            let data = mixed(seed, &segments);
            let mut cuts = cuts;
            cuts.sort_unstable();
            proptest::prop_assert_eq!(fast(&data, &cuts), slow(&data));
        }
    }
}
