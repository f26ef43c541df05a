//! Whole blocks of zeros in a payload become holes: the file reads the
//! same, takes less space, and the layer still rebuilds to its tar.

use std::os::unix::fs::MetadataExt;

use cap_std::fs::Dir;
use strata_overlaydiff::{Extractor, Whiteouts};
use strata_tarsplit::{DirGetter, MetadataReader, MetadataWriter, assemble, split};

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

#[test]
fn blocks_of_zeros_become_holes() {
    let mut sparse = vec![0u8; 8 << 20];
    sparse[3_000_000..3_000_010].copy_from_slice(b"0123456789");
    let mut tail_hole = vec![0u8; 1 << 20];
    tail_hole[..5].copy_from_slice(b"start");
    // Zeros not on block boundaries, and short files, are written.
    let mut odd = vec![7u8; 10_000];
    odd[100..6000].fill(0);
    let files: [(&str, &[u8]); 4] = [("sparse", &sparse), ("tail", &tail_hole), ("odd", &odd), ("zeros", &[0u8; 100])];
    let tar = tar_of(&files);
    // Written by the extracting thread, and by writer threads.
    for writers in [0, 3] {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = || Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).expect("open");
    let mut extractor = Extractor::new(root(), Whiteouts::Remove).file_writers(writers);
    let mut metadata = MetadataWriter::new(Vec::new());
    // Read in odd pieces, so blocks straddle the split's buffers.
    split(std::io::BufReader::with_capacity(5_000, &tar[..]), std::io::sink(), &mut metadata, &mut extractor).expect("extract");
    extractor.finish().expect("finish");
    for (name, data) in files {
        assert_eq!(std::fs::read(dir.path().join(name)).expect("read"), data, "{name}");
    }
    let allocated = |name: &str| std::fs::metadata(dir.path().join(name)).expect("stat").blocks() * 512;
    assert!(allocated("sparse") < 64 << 10, "8 MiB of mostly zeros take {} bytes", allocated("sparse"));
    assert!(allocated("tail") < 64 << 10, "a trailing hole takes {} bytes", allocated("tail"));
    assert_eq!(std::fs::metadata(dir.path().join("tail")).expect("stat").len(), 1 << 20, "a trailing hole keeps the size");
    let mut rebuilt = Vec::new();
    let metadata = metadata.finish().expect("metadata");
    assemble(MetadataReader::new(&metadata[..]), &mut DirGetter::new(root()), &mut rebuilt).expect("assemble");
    assert!(rebuilt == tar, "the layer rebuilds to its tar");
    }
}
