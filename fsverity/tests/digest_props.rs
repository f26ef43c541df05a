//! The streaming digest equals a direct transcription of the definition,
//! however the input is split.

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use strata_fsverity::{Hasher, Params};

/// The fs-verity digest exactly as the kernel documentation defines it,
/// holding every level in memory.
fn reference(data: &[u8], block: usize, salt: &[u8]) -> [u8; 32] {
    let padded_salt = if salt.is_empty() {
        Vec::new()
    } else {
        let mut s = salt.to_vec();
        s.resize(salt.len().next_multiple_of(64), 0);
        s
    };
    let root = if data.is_empty() {
        vec![0u8; 32]
    } else {
        let mut level = data.to_vec();
        loop {
            let blocks: Vec<&[u8]> = level.chunks(block).collect();
            let mut hashes = Vec::new();
            for b in &blocks {
                let mut h = Sha256::new();
                h.update(&padded_salt);
                h.update(b);
                h.update(vec![0u8; block - b.len()]);
                hashes.extend_from_slice(&h.finalize());
            }
            if blocks.len() == 1 {
                break hashes;
            }
            level = hashes;
        }
    };
    let mut d = vec![
        1u8,
        1,
        block.trailing_zeros() as u8,
        salt.len() as u8,
        0,
        0,
        0,
        0,
    ];
    d.extend_from_slice(&(data.len() as u64).to_le_bytes());
    d.extend_from_slice(&root);
    d.resize(80, 0);
    d.extend_from_slice(salt);
    d.resize(256, 0);
    Sha256::digest(&d).into()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn streaming_equals_definition(
        len in prop_oneof![0usize..10_000, 0usize..600_000],
        seed in any::<u8>(),
        cuts in prop::collection::vec(0usize..70_000, 0..12),
        salt in prop::collection::vec(any::<u8>(), 0..=32),
        log_block in 10u32..=13,
    ) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1) ^ (i >> 9) as u8).collect();
        let block = 1usize << log_block;
        let mut hasher = Hasher::new(&Params::new(block, &salt).expect("params"));
        let mut rest = &data[..];
        for cut in cuts {
            let (now, later) = rest.split_at(cut.min(rest.len()));
            hasher.update(now);
            rest = later;
        }
        hasher.update(rest);
        prop_assert_eq!(hasher.finish().0, reference(&data, block, &salt));
    }
}
