//! TOC parsing and tar → zstd:chunked conversion throughput.

use std::hint::black_box;
use std::io;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_toc::{Entry, Toc, WriteOptions, write_zstd_chunked};

fn big_toc() -> Vec<u8> {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let entries = (0..20_000)
        .map(|i| Entry {
            kind: "reg".into(),
            name: format!("usr/lib/pkg{}/file{i}.so", i % 97),
            mode: 0o644,
            size: 1000 + i,
            mod_time: "2024-01-02T03:04:05Z".into(),
            digest: digest.clone(),
            offset: 100 + i * 2000,
            end_offset: 100 + i * 2000 + 1500,
            ..Entry::default()
        })
        .collect();
    serde_json::to_vec(&Toc {
        version: 1,
        entries,
        tar_split_digest: digest,
    })
    .expect("json")
}

fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000 {
        let len = if i % 50 == 0 {
            1 << 20
        } else {
            4000 + (i % 13) * 700
        };
        // Text-like content: compressible, as real layers mostly are.
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghij klmnop\n"[(x % 18) as usize]
            })
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(len as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("usr/share/f{i}"), &data[..])
            .expect("append");
    }
    b.into_inner().expect("tar")
}

/// Real executables: short zero runs everywhere, as in most layers' bytes.
fn binaries() -> Vec<u8> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir("/usr/bin")
        .expect("/usr/bin")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for name in names {
        if out.len() > 32 << 20 {
            break;
        }
        if let Ok(bytes) = std::fs::read(&name) {
            out.extend_from_slice(&bytes);
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let data = binaries();
    let mut group = c.benchmark_group("chunker");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("rolling split of /usr/bin", |b| {
        b.iter(|| {
            let mut chunker = strata_toc::chunker::Chunker::new();
            let mut n = 0usize;
            for piece in black_box(&data[..]).chunks(128 << 10) {
                chunker.update(piece, |_| n += 1);
            }
            chunker.finish(|_| n += 1);
            n
        })
    });
    group.finish();

    let json = big_toc();
    let mut group = c.benchmark_group("toc");
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("parse+validate 20k entries", |b| {
        b.iter(|| {
            let toc = Toc::parse(black_box(&json)).expect("parse");
            toc.validate(u64::MAX).expect("valid");
            toc
        })
    });
    group.finish();

    let tar = layer();
    let mut group = c.benchmark_group("convert");
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.sample_size(10);
    group.bench_function("tar to zstd:chunked, level 3", |b| {
        b.iter(|| {
            write_zstd_chunked(black_box(&tar[..]), io::sink(), &WriteOptions::default())
                .expect("convert")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
