//! A zstd:chunked layer rebuilt with the tar headers of an earlier version
//! standing in for the blob's (patched where a file's size changed): only
//! the header frames no local header can stand in for are fetched, and the
//! rebuilt tar is the original, byte for byte.

use std::io::Write;
use std::sync::Arc;

use proptest::prelude::*;
use strata_chunkfetch::{FileSource, LayerPlan, LayerPlanner, LocalHeaders, Planner, SourceReadAt, TocGetter, CopyingSink, fetch_pieces, piece_channel};
use strata_dedup_cache::NoCache;

/// A tar of `(name, content, mode)` entries with a directory first.
fn tar_of(files: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "d/", &[][..]).expect("dir");
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, &data[..]).expect("file");
    }
    b.into_inner().expect("tar")
}

fn tar_split_of(tar: &[u8]) -> Vec<u8> {
    let mut meta = strata_tarsplit::MetadataWriter::new(Vec::new());
    strata_tarsplit::disassemble(tar, std::io::sink(), &mut meta, &mut strata_tarsplit::DiscardPutter).expect("split");
    meta.finish().expect("metadata")
}

/// The blob of `tar` in a file, and its plan with `local` headers.
fn plan(tar: &[u8], local: LocalHeaders) -> (tempfile::NamedTempFile, LayerPlan) {
    let mut file = tempfile::NamedTempFile::new().expect("temp");
    let written = strata_toc::write_zstd_chunked(tar, &mut file, &strata_toc::WriteOptions::default()).expect("write");
    file.flush().expect("flush");
    let source = FileSource::open(file.path()).expect("open");
    let annotations = written.annotations.into_iter().collect();
    let location = strata_toc::annotations::location(&annotations).expect("annotations").expect("TOC");
    let mut planner = LayerPlanner::new(location.toc_offset, &NoCache).fetching_headers().predicting(Arc::new(local));
    let mut failed = None;
    strata_toc::read_zstd_chunked_toc_with(&SourceReadAt(&source), Some(&annotations), |item| {
        if let Err(e) = planner.add(&item) {
            failed.get_or_insert(e);
        }
        Ok(())
    })
    .expect("TOC");
    assert!(failed.is_none(), "{failed:?}");
    (file, planner.finish().expect("plan"))
}

/// The tar as the getter writes it from the plan.
fn rebuilt(blob: &tempfile::NamedTempFile, plan: LayerPlan) -> Vec<u8> {
    let source = FileSource::open(blob.path()).expect("open");
    let needs = plan.needs.clone();
    let (tx, rx) = piece_channel(1 << 20);
    let mut out = Vec::new();
    std::thread::scope(|s| {
        let fetcher = s.spawn(|| fetch_pieces(&source, &needs, &Planner::default(), &tx));
        TocGetter::new(plan, rx).write_tar(&mut CopyingSink(&mut out)).expect("write tar");
        fetcher.join().expect("join").expect("fetch");
    });
    out
}

fn files(n: usize, changed: &[usize]) -> Vec<(String, Vec<u8>, u32)> {
    (0..n)
        .map(|i| {
            let len = 100 + i * 331 % 3000;
            let byte = if changed.contains(&i) { 0xee } else { i as u8 };
            (format!("d/f{i:03}"), vec![byte; len + usize::from(changed.contains(&i))], 0o644)
        })
        .collect()
}

#[test]
fn only_the_headers_no_local_one_can_stand_in_for_are_fetched() {
    let v1 = tar_of(&files(40, &[]));
    let v2 = tar_of(&files(40, &[3, 20]));
    let local = LocalHeaders::from_tar_split(&tar_split_of(&v1)[..]).expect("headers");
    let (blob, plan) = plan(&v2, local);
    // The changed files' old headers, patched with their new size, stand
    // in too, and the tar ends as v1's does: no header is fetched.
    let header_needs = plan.needs.iter().filter(|n| n.headers).count();
    assert_eq!(header_needs, 0);
    assert_eq!(plan.stats.headers_local, 41);
    assert_eq!(rebuilt(&blob, plan), v2);
}

#[test]
fn without_local_headers_every_run_is_fetched() {
    let v2 = tar_of(&files(10, &[]));
    let (blob, plan) = plan(&v2, LocalHeaders::default());
    assert_eq!(plan.stats.headers_local, 0);
    assert_eq!(plan.needs.iter().filter(|n| n.headers).count(), 11);
    assert_eq!(rebuilt(&blob, plan), v2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A layer's own headers predict it whole: no header is fetched, and
    /// the rebuilt tar is the layer's.
    #[test]
    fn a_layer_predicted_from_itself_rebuilds_exactly(
        entries in proptest::collection::vec(("[a-z]{1,12}", 1usize..5000, prop_oneof![Just(0o644u32), Just(0o755), Just(0o600)]), 1..12),
    ) {
        let mut seen = std::collections::HashSet::new();
        let files: Vec<(String, Vec<u8>, u32)> = entries
            .into_iter()
            .filter(|(name, _, _)| seen.insert(name.clone()))
            .enumerate()
            .map(|(i, (name, len, mode))| (format!("d/{name}"), vec![i as u8 + 1; len], mode))
            .collect();
        let tar = tar_of(&files);
        let local = LocalHeaders::from_tar_split(&tar_split_of(&tar)[..]).expect("headers");
        let (blob, plan) = plan(&tar, local);
        prop_assert_eq!(plan.needs.iter().filter(|n| n.headers).count(), 0);
        prop_assert_eq!(rebuilt(&blob, plan), tar);
    }
}
