//! Pulls of an image whose v2 shares most files with v1: from an OCI
//! layout, and from a real docker-registry (skopeo-pushed) behind a
//! counting proxy. Only what changed is fetched; every layer's diffID is
//! checked; each stored layer diffs back to its original tar.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use strata::chunkfetch::{Reference, RegistryOptions};
use strata::{How, PullEvent, PullOptions, pull};
mod common;

use common::{diff, noise, store};
use strata_test_support::{LayerBlob, Mode, Proxy, RegistryServer, add_image, skopeo_copy, tools_or_skip};

/// A layer tar: `files` files of 4–60 KiB, a 4 MiB file, a dir, a
/// symlink and a hard link. `changed` files get new content, and the big
/// file changes in one place.
fn layer_tar(files: u64, changed: &[u64], big_edit: bool) -> Vec<u8> {
    layer_tar_by(files, changed, big_edit, "")
}

/// The same with files owned by user name `user` (which no zstd:chunked
/// TOC records).
fn layer_tar_by(files: u64, changed: &[u64], big_edit: bool, user: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_username(user).expect("user name");
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).expect("append");
    };
    for i in 0..files {
        let seed = if changed.contains(&i) { 1_000_000 + i } else { i };
        add(&format!("usr/share/f{i:04}"), &noise(seed, 4096 + (i as usize * 797) % 57_000), 0o644);
    }
    let mut big = noise(42, 4 << 20);
    if big_edit {
        big[2_000_000..2_000_100].fill(0xee);
    }
    add("usr/lib/big.so", &big, 0o755);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(1_700_000_000);
    b.append_link(&mut h, "usr/lib/big.so.1", "big.so").expect("symlink");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_link(&mut h, "usr/share/hardlink", "usr/share/f0001").expect("hardlink");
    b.into_inner().expect("tar")
}

fn chunked(tar: &[u8]) -> (LayerBlob, u64) {
    let mut blob = Vec::new();
    let written = strata::toc::write_zstd_chunked(
        tar,
        &mut blob,
        &strata::toc::WriteOptions { level: 3, legacy_annotations: false, ..Default::default() },
    )
    .expect("convert");
    let size = blob.len() as u64;
    (
        LayerBlob {
            blob,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            annotations: written.annotations.into_iter().collect(),
            diff_id: written.diff_id,
        },
        size,
    )
}

fn gzipped(tar: &[u8]) -> LayerBlob {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).expect("gzip");
    LayerBlob {
        blob: gz.finish().expect("gzip"),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        annotations: Vec::new(),
        diff_id: format!("sha256:{}", hex(&Sha256::digest(tar))),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// v1 and v2 of an image: a gzip base layer both share, then a
/// zstd:chunked layer where v2 changes 8 of 150 files and 100 bytes of the
/// big file. Returns the layout and the two app-layer tars.
fn two_versions(dir: &Path) -> (Vec<u8>, Vec<u8>, u64) {
    let base = layer_tar(20, &[], false);
    let v1 = layer_tar(150, &[], false);
    let v2 = layer_tar(150, &[3, 17, 40, 41, 42, 90, 120, 149], true);
    let base_blob = gzipped(&base);
    let (v1_blob, _) = chunked(&v1);
    let (v2_blob, v2_size) = chunked(&v2);
    add_image(dir, "v1", &[base_blob.clone(), v1_blob]);
    add_image(dir, "v2", &[base_blob, v2_blob]);
    (v1, v2, v2_size)
}

#[test]
fn v2_from_an_oci_layout_reuses_what_v1_brought() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (v1_tar, v2_tar, v2_size) = two_versions(&layout);
    let store = store(dir.path());

    let r1 = pull(&Reference::parse(&format!("oci:{}:v1", layout.display())).expect("ref"), &store, &PullOptions::default()).expect("pull v1");
    assert_eq!(r1.layers.iter().map(|l| l.how).collect::<Vec<_>>(), [How::Full, How::Partial]);
    assert_eq!(diff(&store, &r1.layers[1].layer_id), v1_tar, "v1's app layer diffs to its tar");

    // Progress: the present layer is told; the partial one starts, its
    // fetched bytes grow, and it ends.
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let progress: strata::Progress = std::sync::Arc::new(move |e: PullEvent<'_>| {
        let what = match e {
            PullEvent::Fetching { expected, partial, .. } => format!("fetching {expected} partial={partial}"),
            PullEvent::Fetched { bytes, .. } => format!("fetched {bytes}"),
            PullEvent::FilesDone { done, files, .. } => format!("files {done}/{files}"),
            PullEvent::Layer(l) => format!("layer {:?}", l.how),
        };
        seen.lock().expect("lock").push(what);
    });
    let options = PullOptions { progress: Some(progress), ..PullOptions::default() };
    let r2 = pull(&Reference::parse(&format!("oci:{}:v2", layout.display())).expect("ref"), &store, &options).expect("pull v2");
    assert_eq!(r2.layers.iter().map(|l| l.how).collect::<Vec<_>>(), [How::Present, How::Partial]);
    let events = events.lock().expect("lock").clone();
    assert_eq!(events.first().map(String::as_str), Some("layer Present"), "{events:?}");
    assert!(events[1].starts_with("fetching ") && events[1].ends_with(" partial=true"), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("layer Partial"), "{events:?}");
    // Files done count up to all of the layer's files with content.
    let files: Vec<&String> = events.iter().filter(|e| e.starts_with("files ")).collect();
    assert_eq!(files.first().map(|s| s.as_str()), Some("files 1/151"), "{events:?}");
    assert_eq!(files.last().map(|s| s.as_str()), Some("files 151/151"), "{events:?}");
    assert_eq!(files.len(), 151);
    let counts: Vec<u64> = events.iter().filter_map(|e| e.strip_prefix("fetched ")?.parse().ok()).collect();
    assert!(!counts.is_empty() && counts.windows(2).all(|w| w[0] <= w[1]), "{events:?}");
    assert!(counts.last().is_some_and(|&n| n > 0 && n <= r2.layers[1].bytes_fetched), "{events:?}");
    let app = &r2.layers[1];
    assert_eq!(diff(&store, &app.layer_id), v2_tar, "v2's app layer diffs to its tar");
    assert!(app.files_reused >= 140, "{app:?}");
    assert!(app.bytes_fetched < v2_size / 5, "fetched {} of a {v2_size}-byte blob", app.bytes_fetched);
    eprintln!("v2 from a layout: fetched {} of {v2_size} bytes, reused {} bytes", app.bytes_fetched, app.bytes_reused);

    let image = store.image(&r2.image_id).expect("image");
    assert_eq!(image.names, ["localhost/layout:v2"]);
    let manifest = store.image_big_data(&r2.image_id, "manifest").expect("manifest");
    assert_eq!(format!("sha256:{}", hex(&Sha256::digest(&manifest))), r2.manifest_digest);

    // Pulling again fetches nothing.
    let again = pull(&Reference::parse(&format!("oci:{}:v2", layout.display())).expect("ref"), &store, &PullOptions::default()).expect("again");
    assert!(again.layers.iter().all(|l| l.how == How::Present));
}

/// An update's unchanged entries keep their tar headers, so those are
/// taken from the stored earlier version instead of fetched (the blob's
/// tar-split is not fetched at all); when the earlier version's headers
/// differ in what the TOC does not record (the user name here), the
/// diffID shows it and the layer is rebuilt from the blob's own headers.
#[test]
fn headers_of_unchanged_entries_come_from_the_earlier_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (v1_tar, v2_tar, v2_size) = two_versions(&layout);
    // v1 again, its entries owned by another user name.
    let renamed = layer_tar_by(150, &[], false, "alice");
    add_image(&layout, "v1-alice", &[gzipped(&layer_tar(20, &[], false)), chunked(&renamed).0]);
    let at = |tag: &str| Reference::parse(&format!("oci:{}:{tag}", layout.display())).expect("ref");

    let mut fetched = Vec::new();
    for (v1_tag, v1_name) in [("v1", "localhost/layout:v1"), ("v1", "elsewhere/other:v1"), ("v1-alice", "localhost/layout:v1-alice")] {
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = store(store_dir.path());
        let first = PullOptions { names: vec![v1_name.into()], ..PullOptions::default() };
        let r1 = pull(&at(v1_tag), &store, &first).expect("pull v1");
        let expected_v1 = if v1_tag == "v1" { &v1_tar } else { &renamed };
        assert_eq!(&diff(&store, &r1.layers[1].layer_id), expected_v1);
        let r2 = pull(&at("v2"), &store, &PullOptions::default()).expect("pull v2");
        let app = &r2.layers[1];
        assert_eq!(app.how, How::Partial, "{app:?}");
        assert_eq!(diff(&store, &app.layer_id), v2_tar, "{v1_name}: v2's layer diffs to its tar");
        let note = app.note.clone().unwrap_or_default();
        match v1_name {
            "localhost/layout:v1" => assert!(note.contains("headers came from layer"), "{note}"),
            "elsewhere/other:v1" => assert!(!note.contains("headers"), "another repository is no earlier version: {note}"),
            _ => assert!(note.contains("were wrong"), "{note}"),
        }
        eprintln!("{v1_name}: fetched {} of {v2_size} ({note})", app.bytes_fetched);
        fetched.push(app.bytes_fetched);
    }
    let tar_split_len = {
        let annotations = chunked(&v2_tar).0.annotations.into_iter().collect();
        let location = strata::toc::annotations::location(&annotations).expect("annotations").expect("TOC");
        location.tar_split.expect("tar-split").1
    };
    assert!(
        fetched[0] + tar_split_len / 2 < fetched[1],
        "guessing saves the tar-split ({tar_split_len} bytes): {fetched:?}"
    );
    assert!(fetched[2] > fetched[1], "a wrong guess costs a second fetch: {fetched:?}");
}

/// A pull keeps each new layer's tar headers beside it, recorded as the
/// store wrote its tar-split: they read as that tar-split does, and the
/// next version's pull guesses from them. Kept headers gone bad are read
/// past: the tar-split serves instead.
#[test]
fn kept_tar_headers_match_the_tar_split_and_serve_the_next_pull() {
    use strata::chunkfetch::LocalHeaders;
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (_, v2_tar, _) = two_versions(&layout);
    let at = |tag: &str| Reference::parse(&format!("oci:{}:{tag}", layout.display())).expect("ref");
    for damaged in [false, true] {
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = store(store_dir.path());
        let r1 = pull(&at("v1"), &store, &PullOptions::default()).expect("pull v1");
        // One layer came whole (gzip), one partially: both keep headers.
        for layer in &r1.layers {
            let kept = store.layer_big_data(&layer.layer_id, strata::TAR_HEADERS).expect("kept headers");
            let split = store.layer_tar_split(&layer.layer_id).expect("tar-split").expect("has one");
            let read = LocalHeaders::from_tar_split(split).expect("reads");
            assert_eq!(kept, read.to_stored(), "{:?} layer", layer.how);
            assert_eq!(LocalHeaders::from_stored(&kept).expect("reads back").len(), read.len());
        }
        let app = &r1.layers[1].layer_id;
        if damaged {
            store.set_layer_big_data(app, strata::TAR_HEADERS, b"strhdrs\x01 gone bad").expect("damage");
        }
        let r2 = pull(&at("v2"), &store, &PullOptions::default()).expect("pull v2");
        let layer = &r2.layers[1];
        assert_eq!(layer.how, How::Partial, "{layer:?}");
        assert!(layer.note.as_deref().unwrap_or_default().contains("headers came from layer"), "damaged={damaged}: {layer:?}");
        assert_eq!(diff(&store, &layer.layer_id), v2_tar);
    }
}

fn estargz(tar: &[u8]) -> (LayerBlob, strata::toc::estargz::EstargzWritten) {
    let mut blob = Vec::new();
    let options = strata::toc::estargz::EstargzOptions { chunk_size: 1 << 20, ..Default::default() };
    let written = strata::toc::estargz::write_estargz(tar, &mut blob, &options).expect("eStargz");
    let layer = LayerBlob {
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        annotations: written.annotations.clone().into_iter().collect(),
        diff_id: written.diff_id.clone(),
    };
    (layer, written)
}

/// The tar an eStargz blob holds.
fn gunzipped(blob: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(blob), &mut tar).expect("gunzip");
    tar
}

/// eStargz layers pulled from a real registry: v2 fetches the members of
/// what changed and rebuilds the rest of its tar from v1's (its diffID
/// checked, which containers-storage cannot do for eStargz); with v1
/// stored under other user names, the guess fails on the diffID and the
/// headers come from the blob's own members.
#[test]
fn estargz_v2_is_pulled_partially_with_its_diff_id_checked() {
    if !tools_or_skip(&["docker-registry", "skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let changed = [3, 17, 40, 41, 42, 90, 120, 149];
    let base = gzipped(&layer_tar(20, &[], false));
    let (v1, v1_written) = estargz(&layer_tar(150, &[], false));
    let (v2, v2_written) = estargz(&layer_tar(150, &changed, true));
    let (v1_alice, _) = estargz(&layer_tar_by(150, &[], false, "alice"));
    let v2_tar = gunzipped(&v2.blob);
    let v2_size = v2.blob.len() as u64;
    // What an ideal pull of v2 fetches: the members of the files that
    // changed (their chunks that changed) and the TOC's member.
    let v1_digests: std::collections::HashSet<String> = strata::toc::estargz::read_estargz(&v1.blob[..], None)
        .expect("v1 TOC")
        .toc
        .entries
        .iter()
        .flat_map(|e| [e.digest.clone(), e.chunk_digest.clone()])
        .collect();
    let v2_toc = strata::toc::estargz::read_estargz(&v2.blob[..], None).expect("v2 TOC");
    let mut starts: Vec<u64> = v2_toc.toc.entries.iter().filter(|e| e.offset > 0).map(|e| e.offset as u64).collect();
    starts.push(v2_toc.toc_offset);
    let mut ideal = v2_size - v2_toc.toc_offset;
    for e in v2_toc.toc.entries.iter().filter(|e| e.offset > 0) {
        let digest = if e.chunk_digest.is_empty() { &e.digest } else { &e.chunk_digest };
        if !v1_digests.contains(digest) {
            let end = starts.iter().find(|&&s| s > e.offset as u64).expect("next member");
            ideal += end - e.offset as u64;
        }
    }
    add_image(&layout, "v1", &[base.clone(), v1]);
    add_image(&layout, "v1-alice", &[base.clone(), v1_alice]);
    add_image(&layout, "v2", &[base, v2]);
    let server = RegistryServer::start();
    for tag in ["v1", "v1-alice", "v2"] {
        skopeo_copy(&format!("oci:{}:{tag}", layout.display()), &format!("docker://{}/app:{tag}", server.addr));
    }
    let proxy = Proxy::start(&server.addr, Mode::Pass);
    let options = PullOptions {
        registry: RegistryOptions { tls_verify: false, ..RegistryOptions::default() },
        ..PullOptions::default()
    };
    let at = |tag: &str| Reference::parse(&format!("docker://{}/app:{tag}", proxy.addr)).expect("ref");
    let mut served_v2 = Vec::new();
    for v1_tag in ["v1", "v1-alice"] {
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = store(store_dir.path());
        let r1 = pull(&at(v1_tag), &store, &options).expect("pull v1");
        assert_eq!(r1.layers[1].diff_id, if v1_tag == "v1" { v1_written.diff_id.clone() } else { r1.layers[1].diff_id.clone() });
        let before = proxy.body_bytes.load(Ordering::Relaxed);
        let r2 = pull(&at("v2"), &store, &options).expect("pull v2");
        let served = proxy.body_bytes.load(Ordering::Relaxed) - before;
        let app = &r2.layers[1];
        // After a wrong guess every header run is a member to fetch: the
        // blob comes whole.
        assert_eq!(app.how, if v1_tag == "v1" { How::Partial } else { How::Full }, "{app:?}");
        assert_eq!(app.diff_id, v2_written.diff_id);
        assert_eq!(diff(&store, &app.layer_id), v2_tar, "{v1_tag}: v2's layer diffs to its blob's tar");
        let note = app.note.clone().unwrap_or_default();
        eprintln!("after {v1_tag}: v2 served {served} bytes of a {v2_size}-byte blob; ideal {ideal}; {note}");
        if v1_tag == "v1" {
            assert!(note.contains("headers came from layer"), "{note}");
            assert!(served <= ideal + ideal / 10 + 8_000, "{served} bytes served, {ideal} ideal (+ manifest and config)");
        } else {
            assert!(note.contains("were wrong") && note.contains("fetched whole"), "{note}");
        }
        served_v2.push(served);
    }
    // Without a right guess, every header run lies in a member of its own
    // to fetch: the blob comes whole, once, after the failed attempt.
    assert!(served_v2[1] <= served_v2[0] + v2_size + 8_000, "{served_v2:?} for a {v2_size}-byte blob");
}

/// GNU tar's `--format=pax` tar of `tree`, names sorted.
fn gnu_pax_tar(tree: &Path) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .args(["--sort=name", "--format=pax", "--pax-option=delete=atime,delete=ctime", "-C"])
        .arg(tree)
        .args(["-cf", "-", "."])
        .output()
        .expect("GNU tar");
    assert!(out.status.success());
    out.stdout
}

/// eStargz records times to the second; GNU tar's PAX headers keep the
/// nanoseconds. The unchanged entries' headers are still taken from v1.
#[test]
fn estargz_of_gnu_tar_layers_takes_v1_headers_to_the_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("d")).expect("mkdir");
    for i in 0..40 {
        std::fs::write(tree.join(format!("d/f{i:02}")), noise(i, 3000 + i as usize * 400)).expect("write");
    }
    let touch = |name: &str, at: &str| {
        let done = std::process::Command::new("touch").args(["-d", at]).arg(tree.join(name)).status().expect("touch");
        assert!(done.success());
    };
    for i in 0..40 {
        touch(&format!("d/f{i:02}"), "2024-01-02 03:04:05.123456789");
    }
    touch("d", "2024-01-02 03:04:05.5");
    let v1 = gnu_pax_tar(&tree);
    std::fs::write(tree.join("d/f07"), noise(1007, 5000)).expect("write");
    touch("d/f07", "2024-05-06 07:08:09.987654321");
    touch("d", "2024-01-02 03:04:05.5");
    let v2 = gnu_pax_tar(&tree);
    let layout = dir.path().join("layout");
    let (v1_blob, _) = estargz(&v1);
    let (v2_blob, _) = estargz(&v2);
    let v2_tar = gunzipped(&v2_blob.blob);
    add_image(&layout, "v1", &[v1_blob]);
    add_image(&layout, "v2", &[v2_blob]);
    let store = store(dir.path());
    let at = |tag: &str| Reference::parse(&format!("oci:{}:{tag}", layout.display())).expect("ref");
    pull(&at("v1"), &store, &PullOptions::default()).expect("pull v1");
    let r2 = pull(&at("v2"), &store, &PullOptions::default()).expect("pull v2");
    let layer = &r2.layers[0];
    assert_eq!(layer.how, How::Partial, "{layer:?}");
    let note = layer.note.clone().unwrap_or_default();
    assert!(note.contains("headers came from layer"), "{note}");
    assert_eq!(diff(&store, &layer.layer_id), v2_tar);
}

/// The regular files of a vfs layer, by path below it.
fn layer_files(graph: &Path, id: &str) -> Vec<std::path::PathBuf> {
    let root = graph.join("vfs/dir").join(id);
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let t = e.file_type().expect("type");
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(&root).expect("below").to_owned());
            }
        }
    }
    out
}

#[test]
fn with_hard_links_v2_shares_the_files_v1_has_unchanged() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (_, v2_tar, _) = two_versions(&layout);
    let store = store(dir.path());
    let r1 = pull(&Reference::parse(&format!("oci:{}:v1", layout.display())).expect("ref"), &store, &PullOptions::default()).expect("pull v1");
    let options = PullOptions { hard_links: true, ..PullOptions::default() };
    let r2 = pull(&Reference::parse(&format!("oci:{}:v2", layout.display())).expect("ref"), &store, &options).expect("pull v2");
    let (base, v1, v2) = (&r1.layers[0].layer_id, &r1.layers[1].layer_id, &r2.layers[1].layer_id);
    assert_eq!(diff(&store, v2), v2_tar, "v2's app layer diffs to its tar");
    let graph = dir.path().join("graph");
    let ino = |id: &str, p: &Path| std::fs::metadata(graph.join("vfs/dir").join(id).join(p)).ok().map(|m| m.ino());
    let (mut shared, mut own) = (Vec::new(), Vec::new());
    for p in layer_files(&graph, v2).into_iter().filter(|p| p.starts_with("usr")) {
        // The base layer has the first 20 files too: either may be shared.
        if ino(v2, &p) == ino(v1, &p) || ino(v2, &p) == ino(base, &p) { shared.push(p) } else { own.push(p) }
    }
    own.sort();
    // The 8 changed files and the edited big file.
    let changed: Vec<std::path::PathBuf> = [3, 17, 40, 41, 42, 90, 120, 149]
        .iter()
        .map(|i| format!("usr/share/f{i:04}").into())
        .chain(["usr/lib/big.so".into()])
        .collect();
    for c in &changed {
        assert!(own.contains(c), "{c:?} changed, so it is v2's own: {own:?}");
    }
    assert!(shared.len() >= 140, "only {} files shared; v2's own: {own:?}", shared.len());
}

#[test]
fn on_xfs_v2_clones_the_files_v1_has_unchanged() {
    let Some(xfs) = strata_test_support::LoopFs::new("xfs", 512) else { return };
    if !tools_or_skip(&["filefrag"]) {
        return;
    }
    let dir = xfs.path();
    let layout = dir.join("layout");
    let (_, v2_tar, _) = two_versions(&layout);
    let store = store(&dir);
    pull(&Reference::parse(&format!("oci:{}:v1", layout.display())).expect("ref"), &store, &PullOptions::default()).expect("pull v1");
    let r2 = pull(&Reference::parse(&format!("oci:{}:v2", layout.display())).expect("ref"), &store, &PullOptions::default()).expect("pull v2");
    let v2 = &r2.layers[1].layer_id;
    assert_eq!(diff(&store, v2), v2_tar, "v2's app layer diffs to its tar");
    std::process::Command::new("sync").status().expect("sync");
    let root = dir.join("graph/vfs/dir").join(v2);
    let shares = |name: &str| {
        let out = std::process::Command::new("filefrag").arg("-v").arg(root.join(name)).output().expect("filefrag");
        String::from_utf8_lossy(&out.stdout).contains("shared")
    };
    assert!(shares("usr/share/f0010"), "an unchanged file is a clone of v1's");
    assert!(shares("usr/share/f0100"), "an unchanged file is a clone of v1's");
    assert!(!shares("usr/share/f0000"), "an unchanged file of 4 KiB is written: cheaper than a clone");
    assert!(!shares("usr/share/f0003"), "a changed file is written");
}

#[test]
fn a_layer_whose_content_lies_is_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let tar = layer_tar(10, &[], false);
    let (mut blob, _) = chunked(&tar);
    // The config claims another diffID: the rebuilt tar does not match it.
    blob.diff_id = format!("sha256:{}", "0".repeat(64));
    add_image(&layout, "bad", &[blob.clone()]);
    let store = store(dir.path());
    let err = pull(&Reference::parse(&format!("oci:{}:bad", layout.display())).expect("ref"), &store, &PullOptions::default())
        .expect_err("diffID mismatch");
    assert!(err.to_string().contains("diffID"), "{err}");
    assert!(store.layers().expect("layers").is_empty(), "no layer kept");

    // A TOC digest that does not match the annotation: refused before any file is written.
    let (mut blob, _) = chunked(&tar);
    for (k, v) in &mut blob.annotations {
        if k.ends_with("manifest-checksum") {
            *v = format!("sha256:{}", "1".repeat(64));
        }
    }
    add_image(&layout, "badtoc", &[blob]);
    let err = pull(&Reference::parse(&format!("oci:{}:badtoc", layout.display())).expect("ref"), &store, &PullOptions::default())
        .expect_err("TOC digest mismatch");
    assert!(err.to_string().to_lowercase().contains("toc"), "{err}");
    assert!(store.layers().expect("layers").is_empty(), "no layer kept");
}

/// With the diffID check off, a partial layer rebuilt from its blob's
/// tar-split is recorded with the config's diffID, flagged; the files are
/// still checked, and an export, which hashes what it writes, still finds
/// a config that lied. Headers guessed from an earlier version would only
/// be told right by the diffID, so an update takes the blob's tar-split
/// instead, and is unchecked too.
#[test]
fn unchecked_diff_ids_are_taken_from_the_config_flagged_and_caught_on_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (_, v2_tar, _) = two_versions(&layout);
    let base = gzipped(&layer_tar(20, &[], false));
    let (mut lying, _) = chunked(&v2_tar);
    let real_diff_id = lying.diff_id.clone();
    lying.diff_id = format!("sha256:{}", "0".repeat(64));
    add_image(&layout, "lying", &[base, lying]);
    let at = |tag: &str| Reference::parse(&format!("oci:{}:{tag}", layout.display())).expect("ref");
    // Named into another repository: no earlier version to guess from.
    let unchecked_as = |name: &str| PullOptions {
        verify_diff_ids: false,
        names: vec![name.to_owned()],
        ..PullOptions::default()
    };
    let with_v1 = |name: &str| {
        let store = common::store(&dir.path().join(name));
        pull(&at("v1"), &store, &PullOptions::default()).expect("pull v1");
        store
    };

    let store = with_v1("checked");
    let err = pull(&at("lying"), &store, &PullOptions::default()).expect_err("the default checks the diffID");
    assert!(err.to_string().contains("diffID"), "{err}");
    let update = pull(&at("v2"), &store, &PullOptions { verify_diff_ids: false, ..PullOptions::default() }).expect("v2");
    let app = &update.layers[1];
    assert_eq!((app.how, app.diff_id_unchecked), (How::Partial, true), "{app:?}");
    assert!(app.note.is_none(), "no header guessed from v1: {app:?}");
    let layer = store.layer(&app.layer_id).expect("layer");
    assert_eq!(layer.flags.get(strata::layerstore::DIFF_ID_UNCHECKED), Some(&serde_json::Value::Bool(true)));
    assert_eq!(layer.diff_digest, real_diff_id);
    assert_eq!(diff(&store, &app.layer_id), v2_tar);
    // Checked, the same update guesses them: fewer bytes, and the diffID
    // confirms the guesses.
    let store = with_v1("guessing");
    let guessed = pull(&at("v2"), &store, &PullOptions::default()).expect("v2");
    let app = &guessed.layers[1];
    assert!(!app.diff_id_unchecked && app.note.as_deref().is_some_and(|n| n.contains("headers came from layer")), "{app:?}");
    assert!(app.bytes_fetched < update.layers[1].bytes_fetched, "{app:?} against {:?}", update.layers[1]);

    // An honest image: the layer is the tar, its diffID the real one.
    let store = with_v1("honest");
    let r2 = pull(&at("v2"), &store, &unchecked_as("localhost/other:v2")).expect("pull v2 unchecked");
    let app = &r2.layers[1];
    assert_eq!((app.how, app.diff_id_unchecked), (How::Partial, true), "{app:?}");
    let layer = store.layer(&app.layer_id).expect("layer");
    assert_eq!(layer.diff_digest, real_diff_id);
    assert_eq!(layer.diff_size, v2_tar.len() as i64);
    assert_eq!(layer.flags.get(strata::layerstore::DIFF_ID_UNCHECKED), Some(&serde_json::Value::Bool(true)));
    assert_eq!(diff(&store, &app.layer_id), v2_tar);
    assert!(!r2.layers[0].diff_id_unchecked, "the base layer was there already");

    // A config that lies: taken on trust, and the export says so.
    let store = with_v1("lied-to");
    let r = pull(&at("lying"), &store, &unchecked_as("localhost/other:lying")).expect("pull on trust");
    let app = &r.layers[1];
    assert!(app.diff_id_unchecked, "{app:?}");
    let layer = store.layer(&app.layer_id).expect("layer");
    assert_eq!(layer.diff_digest, format!("sha256:{}", "0".repeat(64)));
    let err = store
        .diff(&app.layer_id, &mut std::io::sink(), strata::layerstore::DiffOptions { compression: None, verify: true })
        .expect_err("the export hashes the tar");
    assert!(err.to_string().contains(real_diff_id.trim_start_matches("sha256:")), "{err}");
}

#[test]
fn v2_from_a_real_registry_fetches_little_more_than_what_changed() {
    if !tools_or_skip(&["docker-registry", "skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (_, v2_tar, v2_size) = two_versions(&layout);
    let server = RegistryServer::start();
    for tag in ["v1", "v2"] {
        skopeo_copy(&format!("oci:{}:{tag}", layout.display()), &format!("docker://{}/app:{tag}", server.addr));
    }
    for mode in [Mode::Pass, Mode::RefuseMulti(400), Mode::IgnoreRange] {
        let proxy = Proxy::start(&server.addr, mode);
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = store(store_dir.path());
        let options = PullOptions {
            registry: RegistryOptions { tls_verify: false, ..RegistryOptions::default() },
            ..PullOptions::default()
        };
        // v1 fetched whole (share 0): indexed from its TOC all the same,
        // so the v2 pull below reuses it, and found by its TOC digest.
        let whole = PullOptions {
            full_fetch_share: 0.0,
            ..options.clone()
        };
        let r1 = pull(&Reference::parse(&format!("docker://{}/app:v1", proxy.addr)).expect("ref"), &store, &whole).expect("pull v1");
        let layer = &r1.layers[1];
        assert_eq!(layer.how, How::Full, "{mode:?}: {layer:?}");
        let record = store.layer(&layer.layer_id).expect("record");
        assert!(!record.toc_digest.is_empty(), "{mode:?}: the TOC digest is recorded");
        let found = store.layers_by_toc_digest(&record.toc_digest).expect("by TOC");
        assert!(found.iter().any(|l| l.id == layer.layer_id));
        let before = proxy.body_bytes.load(Ordering::Relaxed);
        let r2 = pull(&Reference::parse(&format!("docker://{}/app:v2", proxy.addr)).expect("ref"), &store, &options).expect("pull v2");
        let served = proxy.body_bytes.load(Ordering::Relaxed) - before;
        let app = &r2.layers[1];
        assert_eq!(app.how, How::Partial);
        assert_eq!(diff(&store, &app.layer_id), v2_tar);
        eprintln!("{mode:?}: v2 served {served} bytes (blob {v2_size}); strata counted {} fetched", app.bytes_fetched);
        if mode == Mode::IgnoreRange {
            assert!(served <= v2_size + 20_000, "{mode:?}: the whole blob at most once (and the manifest, config)");
            assert!(served >= v2_size);
        } else {
            assert!(served < v2_size / 4, "{mode:?}: {served} bytes served for a {v2_size}-byte blob");
        }
    }
}

#[test]
fn a_registry_that_sends_wrong_bytes_fails_the_pull_and_keeps_nothing() {
    if !tools_or_skip(&["docker-registry", "skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    two_versions(&layout);
    let server = RegistryServer::start();
    skopeo_copy(&format!("oci:{}:v2", layout.display()), &format!("docker://{}/app:v2", server.addr));
    // Into an empty store a layer is fetched whole (share 0.75, the
    // default); forced partial (share 2.0) it is rebuilt from pieces.
    for (mode, share) in [(Mode::WrongBytes, 0.75), (Mode::Truncate, 0.75), (Mode::WrongBytes, 2.0), (Mode::Truncate, 2.0)] {
        let proxy = Proxy::start(&server.addr, mode);
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = store(store_dir.path());
        let options = PullOptions {
            registry: RegistryOptions { tls_verify: false, max_attempts: 1, ..RegistryOptions::default() },
            full_fetch_share: share,
            ..PullOptions::default()
        };
        let err = pull(&Reference::parse(&format!("docker://{}/app:v2", proxy.addr)).expect("ref"), &store, &options)
            .expect_err("corrupted answers");
        eprintln!("{mode:?}, share {share}: {err}");
        assert!(store.layers().expect("layers").is_empty(), "{mode:?}: no layer kept");
        assert!(store.images().expect("images").is_empty(), "{mode:?}: no image kept");
    }
}

/// Pushes v1 and v2 of `layout` to `server` as skopeo converts them to
/// zstd:chunked (skopeo 1.9: no tar-split in the blobs).
fn push_as_skopeo_zstd_chunked(layout: &Path, server: &RegistryServer) {
    for tag in ["v1", "v2"] {
        let status = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-compress-format", "zstd:chunked"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/app:{tag}", server.addr))
            .status()
            .expect("skopeo");
        assert!(status.success(), "skopeo copy --dest-compress-format zstd:chunked");
    }
}

#[test]
fn zstd_chunked_blobs_written_by_skopeo_are_pulled_partially_and_verified() {
    if !tools_or_skip(&["docker-registry", "skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let v1 = layer_tar(60, &[], false);
    let v2 = layer_tar(60, &[5, 6], true);
    add_image(&layout, "v1", &[gzipped(&v1)]);
    add_image(&layout, "v2", &[gzipped(&v2)]);
    let server = RegistryServer::start();
    push_as_skopeo_zstd_chunked(&layout, &server);
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = store(store_dir.path());
    let options = PullOptions {
        registry: RegistryOptions { tls_verify: false, ..RegistryOptions::default() },
        ..PullOptions::default()
    };
    // skopeo 1.9 (containers/image 5.23) writes no tar-split into the
    // blob: the tar's headers come from the frames between payloads.
    let v1_report = pull(&Reference::parse(&format!("docker://{}/app:v1", server.addr)).expect("ref"), &store, &options)
        .expect("pull v1");
    assert_eq!(&diff(&store, &v1_report.layers[0].layer_id), &v1, "v1 diffs to its tar");

    // Header frames carry no digest of their own: bytes a registry got
    // wrong, or cut short, fail the layer (zstd's checksums, the diffID),
    // and nothing of v2 is kept.
    for mode in [Mode::WrongBytes, Mode::Truncate] {
        let proxy = Proxy::start(&server.addr, mode);
        let options = PullOptions {
            registry: RegistryOptions { tls_verify: false, max_attempts: 1, ..RegistryOptions::default() },
            ..PullOptions::default()
        };
        let err = pull(&Reference::parse(&format!("docker://{}/app:v2", proxy.addr)).expect("ref"), &store, &options)
            .expect_err("corrupted answers");
        eprintln!("v2 through {mode:?}: {err}");
        assert_eq!(store.layers().expect("layers").len(), 1, "{mode:?}: only v1's layer is kept");
    }

    let report = pull(&Reference::parse(&format!("docker://{}/app:v2", server.addr)).expect("ref"), &store, &options)
        .expect("pull v2");
    let layer = &report.layers[0];
    eprintln!("v2: {:?}, fetched {} of {}: {:?}", layer.how, layer.bytes_fetched, layer.blob_size, layer.note);
    assert_eq!(layer.how, How::Partial, "{layer:?}");
    assert!(layer.bytes_fetched < layer.blob_size / 10, "{layer:?}");
    assert_eq!(&diff(&store, &layer.layer_id), &v2, "v2 diffs to its tar");
}

/// v1 comes as gzip (whole, no TOC), v2 as zstd:chunked with 100 bytes of
/// its 4 MiB file changed: with chunks indexed, v2 fetches only the chunk
/// around the change; without, the whole file.
#[test]
fn chunks_indexed_from_a_gzip_layer_serve_the_next_partial_pull() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (v1, v2) = (layer_tar(40, &[], false), layer_tar(40, &[], true));
    add_image(&layout, "v1", &[gzipped(&v1)]);
    let (v2_blob, _) = chunked(&v2);
    add_image(&layout, "v2", &[v2_blob]);
    let mut fetched = Vec::new();
    for index_chunks in [false, true] {
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = store(store_dir.path());
        // Partial either way, to compare the bytes.
        let options = PullOptions { index_chunks, full_fetch_share: 2.0, ..PullOptions::default() };
        pull(&Reference::parse(&format!("oci:{}:v1", layout.display())).expect("ref"), &store, &options).expect("pull v1");
        let r2 = pull(&Reference::parse(&format!("oci:{}:v2", layout.display())).expect("ref"), &store, &options).expect("pull v2");
        let layer = &r2.layers[0];
        assert_eq!(layer.how, How::Partial, "{layer:?}");
        assert_eq!(diff(&store, &layer.layer_id), v2, "v2 diffs to its tar");
        eprintln!("index_chunks {index_chunks}: fetched {} of {}", layer.bytes_fetched, layer.blob_size);
        fetched.push(layer.bytes_fetched);
    }
    assert!(fetched[1] + (2 << 20) < fetched[0], "chunks indexed: {} bytes, else {}", fetched[1], fetched[0]);
}

/// A blob without tar-split whose header frames were damaged (the layout's
/// copy, read without its digest being checked, as partial pulls read): the
/// layer fails and nothing of it is kept.
#[test]
fn damaged_header_frames_fail_the_layer_and_keep_nothing() {
    if !tools_or_skip(&["docker-registry", "skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (v1, v2) = (layer_tar(60, &[], false), layer_tar(60, &[5, 6], true));
    add_image(&layout, "v1", &[gzipped(&v1)]);
    add_image(&layout, "v2", &[gzipped(&v2)]);
    let server = RegistryServer::start();
    push_as_skopeo_zstd_chunked(&layout, &server);
    // v2 back into a layout of its own, byte for byte.
    let damaged = dir.path().join("damaged");
    skopeo_copy(&format!("docker://{}/app:v2", server.addr), &format!("oci:{}:v2", damaged.display()));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(damaged.join("index.json")).expect("index")).expect("json");
    let blob_path = |digest: &str| damaged.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("manifest digest");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob_path(manifest_digest)).expect("manifest")).expect("json");
    let layer = &manifest["layers"][0];
    let annotations: std::collections::BTreeMap<String, String> =
        serde_json::from_value(layer["annotations"].clone()).expect("annotations");
    let path = blob_path(layer["digest"].as_str().expect("layer digest"));
    let mut blob = std::fs::read(&path).expect("blob");
    let toc = strata::toc::read_zstd_chunked(&blob[..], Some(&annotations)).expect("toc");
    assert!(toc.tar_split.is_none(), "skopeo 1.9 writes no tar-split");
    let first = toc.toc.entries.iter().find(|e| e.kind == "reg" && e.size > 0).expect("a file");
    // Inside the frames before the first payload: headers only.
    let at = first.offset as usize / 2;
    blob[at] ^= 0x55;
    std::fs::write(&path, &blob).expect("damage");

    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = store(store_dir.path());
    let options = PullOptions {
        registry: RegistryOptions { tls_verify: false, ..RegistryOptions::default() },
        ..PullOptions::default()
    };
    pull(&Reference::parse(&format!("docker://{}/app:v1", server.addr)).expect("ref"), &store, &options).expect("pull v1");
    let err = pull(&Reference::parse(&format!("oci:{}:v2", damaged.display())).expect("ref"), &store, &options)
        .expect_err("damaged header frames");
    eprintln!("damaged header frames: {err}");
    assert_eq!(store.layers().expect("layers").len(), 1, "only v1's layer is kept");
    assert_eq!(store.images().expect("images").len(), 1, "only v1's image is kept");
}

/// Into an empty store a zstd:chunked layer comes whole in one request,
/// and the TOC that passes with it is checked and indexes the layer: the
/// next version is pulled partially. A TOC that does not match its
/// annotation fails the layer and nothing is kept.
#[test]
fn a_first_layer_comes_whole_and_its_toc_indexes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let v1 = layer_tar(150, &[], false);
    let v2 = layer_tar(150, &[3, 17, 40], true);
    let (v1_blob, _) = chunked(&v1);
    let (v2_blob, _) = chunked(&v2);
    let toc_key = "io.github.containers.zstd-chunked.manifest-checksum";
    let toc_digest = v1_blob.annotations.iter().find(|(k, _)| k == toc_key).expect("TOC annotation").1.clone();
    let mut lying = v1_blob.clone();
    for (k, v) in &mut lying.annotations {
        if k == toc_key {
            *v = format!("sha256:{}", "0".repeat(64));
        }
    }
    add_image(&layout, "v1", &[v1_blob]);
    add_image(&layout, "v2", &[v2_blob]);
    add_image(&layout, "lying", &[lying]);
    let oci = |tag: &str| Reference::parse(&format!("oci:{}:{tag}", layout.display())).expect("ref");

    let bad = store(&dir.path().join("bad"));
    let err = pull(&oci("lying"), &bad, &PullOptions::default()).expect_err("a TOC that lies");
    assert!(err.to_string().contains("TOC"), "{err}");
    assert!(bad.layers().expect("layers").is_empty(), "nothing kept");

    let store = store(&dir.path().join("good"));
    let r1 = pull(&oci("v1"), &store, &PullOptions::default()).expect("pull v1");
    assert_eq!(r1.layers[0].how, How::Full);
    assert_eq!(r1.layers[0].note.as_deref(), Some("nothing in the store to reuse"));
    assert_eq!(store.layers_by_toc_digest(&toc_digest).expect("by TOC").len(), 1, "the TOC digest is recorded");
    assert_eq!(diff(&store, &r1.layers[0].layer_id), v1);
    let r2 = pull(&oci("v2"), &store, &PullOptions::default()).expect("pull v2");
    assert_eq!(r2.layers[0].how, How::Partial, "v1's index came from its TOC");
    assert!(r2.layers[0].files_reused >= 140, "{:?}", r2.layers[0]);
    assert_eq!(diff(&store, &r2.layers[0].layer_id), v2);
}

/// A disk that fills during a partial pull fails the layer with the
/// store's own error (the file it was writing, and why), not with the
/// rebuilding side's "the extractor stopped"; nothing of the layer is kept.
/// The layer (about 50 MB) is far larger than what the store buffers, so
/// the rebuilding side is still writing when the extraction fails.
#[test]
fn a_full_disk_is_named_and_the_partial_layer_is_not_kept() {
    let Some(fs) = strata_test_support::LoopFs::new("ext4", 192) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    add_image(&layout, "v1", &[chunked(&layer_tar(1500, &[], false)).0]);
    add_image(&layout, "v2", &[chunked(&layer_tar(1500, &[3, 700], true)).0]);
    // The overlay driver stages an empty directory: the disk fills while
    // the layer is extracted, not while its parent is copied.
    let mut options = strata::layerstore::StoreOptions::new(fs.path().join("graph"), fs.path().join("run"));
    options.driver = Some(strata::layerstore::Driver::Overlay);
    let store = strata::layerstore::Store::open(&options).expect("store");
    let at = |tag: &str| Reference::parse(&format!("oci:{}:{tag}", layout.display())).expect("ref");
    pull(&at("v1"), &store, &PullOptions::default()).expect("pull v1");
    let layers = store.layers().expect("layers").len();
    // All but 1 MiB taken.
    let mut filler = std::fs::File::create(fs.path().join("filler")).expect("filler");
    let block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while filler.write_all(&block).is_ok() {
        written += block.len() as u64;
    }
    filler.set_len(written.saturating_sub(1 << 20)).expect("free 1 MiB");
    filler.sync_all().expect("sync");

    let err = pull(&at("v2"), &store, &PullOptions::default()).expect_err("v2 cannot fit");
    let message = err.to_string();
    assert!(message.contains("No space left on device"), "{message}");
    assert!(!message.contains("extractor stopped"), "{message}");
    assert_eq!(store.layers().expect("layers").len(), layers, "no partial layer is kept");
}

/// The fs-verity digests a layer keeps, by path below its root.
fn kept_verity_digests(store: &strata::layerstore::Store, id: &str) -> std::collections::BTreeMap<std::path::PathBuf, String> {
    let listing = store.layer_big_data(id, strata::layerstore::FS_VERITY_DIGESTS).expect("the layer keeps its digests");
    String::from_utf8(listing)
        .expect("text")
        .lines()
        .map(|l| {
            let (digest, path) = l.split_once(' ').expect("DIGEST PATH");
            (path.trim_start_matches('/').into(), digest.to_owned())
        })
        .collect()
}

/// `--fs-verity`: every regular file a pull writes, reused ones included,
/// gets fs-verity before its layer is complete, with the digests kept;
/// where the filesystem cannot, `Required` fails the pull and keeps
/// nothing, and `IfSupported` pulls without. Where the host kernel has no
/// fs-verity, the ext4 part runs in a qemu guest.
#[test]
fn fs_verity_goes_on_every_file_a_pull_writes_or_nothing_is_kept() {
    use strata::fsverity::{Policy, digest, measure};
    let name = "fs_verity_goes_on_every_file_a_pull_writes_or_nothing_is_kept";
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let (v1_tar, v2_tar, _) = two_versions(&layout);
    let at = |tag: &str| Reference::parse(&format!("oci:{}:{tag}", layout.display())).expect("ref");
    let policy = |fs_verity: Policy| PullOptions { fs_verity, ..PullOptions::default() };

    // tmpfs or an ext4 without the feature: no fs-verity.
    let plain = store(&dir.path().join("plain"));
    let err = pull(&at("v1"), &plain, &policy(Policy::Required)).expect_err("no fs-verity here");
    assert!(err.to_string().contains("fs-verity on /"), "{err}");
    assert!(plain.layers().expect("layers").is_empty(), "nothing kept");
    let r = pull(&at("v1"), &plain, &policy(Policy::IfSupported)).expect("pulled without");
    assert!(r.layers.iter().all(|l| !l.fs_verity), "{r:?}");

    let Some(ext4) = strata_test_support::LoopFs::with_features("ext4", 256, &["-b", "4096", "-O", "verity"]) else { return };
    let store = store(&ext4.path());
    let r1 = match pull(&at("v1"), &store, &policy(Policy::Required)) {
        Err(e) if !strata_test_support::guest::in_guest() => {
            assert!(store.layers().expect("layers").is_empty(), "nothing kept after {e}");
            strata_test_support::guest::run_test_or_skip(name, &strata_test_support::guest::fs_verity(), &format!("{e}"));
            return;
        }
        other => other.expect("pull v1 onto ext4 -O verity"),
    };
    let r2 = pull(&at("v2"), &store, &policy(Policy::Required)).expect("pull v2");
    assert_eq!(r2.layers[1].how, How::Partial);
    let graph = ext4.path().join("graph");
    for (layer, tar) in [(&r1.layers[1], &v1_tar), (&r2.layers[1], &v2_tar), (&r1.layers[0], &Vec::new())] {
        assert!(layer.fs_verity, "{layer:?}");
        let kept = kept_verity_digests(&store, &layer.layer_id);
        let mut files = layer_files(&graph, &layer.layer_id);
        files.sort();
        assert_eq!(kept.keys().cloned().collect::<Vec<_>>(), files, "a digest for each file");
        for (path, listed) in &kept {
            let full = graph.join("vfs/dir").join(&layer.layer_id).join(path);
            let file = std::fs::File::open(&full).expect("open");
            let content = std::fs::read(&full).expect("read");
            assert_eq!(measure(&file).expect("verity on").to_string(), *listed, "{path:?}");
            assert_eq!(digest(&content[..]).expect("digest").to_string(), *listed, "{path:?}");
        }
        let writable = std::fs::OpenOptions::new().append(true).open(graph.join("vfs/dir").join(&layer.layer_id).join(kept.keys().next().expect("a file")));
        assert_eq!(writable.expect_err("verity files are read-only").raw_os_error(), Some(1), "EPERM");
        if !tar.is_empty() {
            assert_eq!(diff(&store, &layer.layer_id), **tar, "the layer still diffs to its tar");
        }
    }
    eprintln!("fs-verity on {} files of v2's layer", kept_verity_digests(&store, &r2.layers[1].layer_id).len());
}
