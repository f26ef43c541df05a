//! The streaming chunker equals a literal, byte-at-a-time transcription of
//! the reference algorithm, however the input is fed.

use proptest::prelude::*;
use strata_toc::chunker::{Chunk, ChunkKind, Chunker};

/// The reference: roll every byte; zero runs ≥ 1024 are chunks of their
/// own, rolled without split checks.
fn reference(data: &[u8]) -> Vec<Chunk> {
    let (mut s1, mut s2): (u32, u32) = (64 * 31, 64 * 63 * 31);
    let mut window = [0u8; 64];
    let mut at = 0usize;
    let mut roll = |b: u8, s1: &mut u32, s2: &mut u32| {
        let drop = u32::from(window[at]);
        *s1 = s1.wrapping_add(u32::from(b)).wrapping_sub(drop);
        *s2 = s2.wrapping_add(*s1).wrapping_sub(64 * (drop + 31));
        window[at] = b;
        at = (at + 1) & 63;
    };
    let mut out = Vec::new();
    let (mut i, mut start) = (0usize, 0usize);
    while i < data.len() {
        let run = data[i..].iter().take_while(|&&b| b == 0).count();
        if run >= 1024 {
            if i > start {
                out.push(Chunk {
                    offset: start as u64,
                    len: (i - start) as u64,
                    kind: ChunkKind::Data,
                });
            }
            for _ in 0..run {
                roll(0, &mut s1, &mut s2);
            }
            out.push(Chunk {
                offset: i as u64,
                len: run as u64,
                kind: ChunkKind::Zeros,
            });
            i += run;
            start = i;
            continue;
        }
        roll(data[i], &mut s1, &mut s2);
        i += 1;
        if s2 & 0xffff == 0xffff {
            out.push(Chunk {
                offset: start as u64,
                len: (i - start) as u64,
                kind: ChunkKind::Data,
            });
            start = i;
        }
    }
    if i > start {
        out.push(Chunk {
            offset: start as u64,
            len: (i - start) as u64,
            kind: ChunkKind::Data,
        });
    }
    out
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => (any::<u64>(), 1usize..40_000).prop_map(|(seed, n)| {
                let mut x = seed | 1;
                (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect::<Vec<u8>>()
            }),
            1 => (0usize..5000).prop_map(|n| vec![0u8; n]),
            1 => (1020usize..1030).prop_map(|n| vec![0u8; n]),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn streaming_equals_reference(data in payload(), cuts in prop::collection::vec(0usize..20_000, 0..10)) {
        let mut got = Vec::new();
        let mut c = Chunker::new();
        let mut rest = &data[..];
        for cut in cuts {
            let (now, later) = rest.split_at(cut.min(rest.len()));
            c.update(now, |ch| got.push(ch));
            rest = later;
        }
        c.update(rest, |ch| got.push(ch));
        c.finish(|ch| got.push(ch));
        prop_assert_eq!(got, reference(&data));
    }
}
