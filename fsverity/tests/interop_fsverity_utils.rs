//! User-space digests equal `fsverity digest` (Debian package fsverity).

mod common;

use std::io::Write;

use common::{fsverity_utils_digest, have_tool};
use proptest::prelude::*;
use strata_fsverity::{Params, digest_with};

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn check(data: &[u8], block_size: usize, salt: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(data).expect("write");
    file.flush().expect("flush");
    let params = Params::new(block_size, salt).expect("params");
    let ours =
        digest_with(std::fs::File::open(file.path()).expect("open"), &params).expect("digest");
    let theirs = fsverity_utils_digest(file.path(), block_size, salt);
    assert_eq!(
        ours.to_string(),
        theirs,
        "size {} block {block_size} salt {salt:?}",
        data.len()
    );
}

#[test]
fn boundary_sizes_match_fsverity_utils() {
    if !have_tool("fsverity", "fsverity") {
        return;
    }
    let sizes = [
        0,
        1,
        4095,
        4096,
        4097,
        (128 << 10) - 1,
        128 << 10,
        (128 << 10) + 1,
        (1 << 20) + 1,
        4096 * 128 * 128 + 1,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let data = pseudo_random(n, i as u64 + 1);
        check(&data, 4096, b"");
        check(&data, 4096, b"salty");
    }
}

#[test]
fn hundred_megabyte_file_matches_fsverity_utils() {
    if !have_tool("fsverity", "fsverity") {
        return;
    }
    let data = pseudo_random(100_000_000, 42);
    check(&data, 4096, b"");
    check(&data, 4096, &[0xab; 32]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_sizes_salts_and_block_sizes_match(
        n in prop_oneof![0usize..20_000, 0usize..3_000_000],
        seed in any::<u64>(),
        salt in prop::collection::vec(any::<u8>(), 0..=32),
        log_block in 10u32..=16,
    ) {
        if !have_tool("fsverity", "fsverity") {
            return Ok(());
        }
        check(&pseudo_random(n, seed), 1 << log_block, &salt);
    }
}
