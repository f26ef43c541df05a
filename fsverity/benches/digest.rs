//! User-space fs-verity digest throughput, against plain SHA-256 of the
//! same bytes (the digest hashes every byte once, plus a 1/128 tree).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest as _, Sha256};

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..64usize << 20)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let mut group = c.benchmark_group("fsverity");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("digest 64 MiB", |b| {
        b.iter(|| strata_fsverity::digest(black_box(&data[..])).expect("digest"))
    });
    group.bench_function("raw sha256 64 MiB", |b| {
        b.iter(|| Sha256::digest(black_box(&data[..])))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
