//! Disassembly and assembly throughput on an in-memory archive shaped like
//! a container layer: many small files, some large ones.

use std::hint::black_box;
use std::io;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_tarsplit::{
    DiscardPutter, MemoryFiles, MetadataReader, MetadataWriter, assemble, disassemble,
};

fn layer_like_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..4000 {
        let size = match i % 100 {
            0 => 4 << 20,
            1..=9 => 64 << 10,
            _ => (next() % 8192) as usize,
        };
        let data: Vec<u8> = (0..size).map(|_| next() as u8).collect();
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("usr/lib/pkg{}/file{i}.so", i % 37),
                &data[..],
            )
            .expect("append");
    }
    builder.into_inner().expect("finish")
}

fn bench(c: &mut Criterion) {
    let tar = layer_like_tar();
    let mut metadata = MetadataWriter::new(Vec::new());
    let mut files = MemoryFiles::default();
    disassemble(&tar[..], io::sink(), &mut metadata, &mut files).expect("disassemble");
    let metadata = metadata.finish().expect("metadata");

    let mut group = c.benchmark_group("tar-split");
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.sample_size(20);
    group.bench_function("disassemble", |b| {
        b.iter(|| {
            let mut m = MetadataWriter::new(io::sink());
            disassemble(black_box(&tar[..]), io::sink(), &mut m, &mut DiscardPutter)
                .expect("disassemble")
        })
    });
    group.bench_function("assemble", |b| {
        b.iter(|| {
            assemble(
                MetadataReader::new(black_box(&metadata[..])),
                &mut files,
                io::sink(),
            )
            .expect("assemble")
        })
    });
    group.finish();

    // Reading the records alone: an update reads its predecessor's.
    let mut group = c.benchmark_group("tar-split metadata");
    group.throughput(Throughput::Bytes(metadata.len() as u64));
    group.bench_function("read", |b| {
        b.iter(|| {
            MetadataReader::new(black_box(&metadata[..]))
                .try_fold(0usize, |n, e| e.map(|_| n + 1))
                .expect("records")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
