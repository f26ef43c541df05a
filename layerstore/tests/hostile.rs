//! Hostile layer tars and damaged store files: a clear error, nothing
//! written outside the layer, no record lost.

use std::path::Path;

use strata_layerstore::{Driver, Error, LayerOptions, Store, StoreOptions};

fn open(dir: &Path, driver: Driver) -> Store {
    let mut options = StoreOptions::new(dir.join("graph"), dir.join("run"));
    options.driver = Some(driver);
    Store::open(&options).expect("open store")
}

fn drivers() -> Vec<Driver> {
    let mut d = vec![Driver::Vfs];
    if strata_layerstore::overlay_supported() {
        d.push(Driver::Overlay);
    }
    d
}

/// A raw tar entry: the tar crate refuses to write `..` names itself.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"14000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn tar_of(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        raw_entry(&mut out, name, *kind, link, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_tars_are_refused_and_touch_nothing_outside() {
    let canary_name = "canary-strata-hostile";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", tar_of(&[("../../../../../../tmp/canary-strata-hostile", b'0', "", b"pwned")])),
        ("absolute", tar_of(&[("/tmp/canary-strata-hostile", b'0', "", b"pwned")])),
        (
            "symlink to / then a file through it",
            tar_of(&[("evil", b'2', "/", b""), ("evil/tmp/canary-strata-hostile", b'0', "", b"pwned")]),
        ),
        (
            "symlink to .. then a file through it",
            tar_of(&[("up", b'2', "../../../../../../..", b""), ("up/tmp/canary-strata-hostile", b'0', "", b"pwned")]),
        ),
        ("hard link outside", tar_of(&[("h", b'1', "../../../../../../etc/passwd", b"")])),
        ("path through a file", tar_of(&[("f", b'0', "", b"x"), ("f/g", b'0', "", b"y")])),
    ];
    let tmp = tempfile::tempdir().expect("tempdir");
    let canary = Path::new("/tmp").join(canary_name);
    let _ = std::fs::remove_file(&canary);
    for driver in drivers() {
        let store = open(&tmp.path().join(driver.name()), driver);
        let good = store.put_layer(&LayerOptions::default(), &tar_of(&[("ok", b'0', "", b"fine")])[..]).expect("good layer");
        for (what, tar) in &cases {
            let err = store.put_layer(&LayerOptions::default(), &tar[..]).expect_err(what);
            let msg = err.to_string();
            assert!(
                matches!(err, Error::Layer(_) | Error::TarSplit(_)),
                "{driver:?} {what}: unexpected error kind: {msg}"
            );
            assert!(!canary.exists(), "{driver:?} {what}: wrote outside the store");
            eprintln!("{driver:?} {what}: {msg}");
        }
        let layers = store.layers().expect("layers");
        assert_eq!(layers.len(), 1, "{driver:?}: a refused layer left a record");
        assert_eq!(layers[0].id, good.id);
        assert!(store.garbage_collect().expect("gc").is_empty(), "{driver:?}: a refused layer left files");
    }
    let _ = std::fs::remove_file(&canary);
}

#[test]
fn a_device_node_without_privilege_is_a_clear_error() {
    if rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: running as root, device nodes are allowed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), Driver::Vfs);
    let err = store.put_layer(&LayerOptions::default(), &tar_of(&[("dev/null", b'3', "", b"")])[..]).expect_err("mknod");
    assert!(err.to_string().contains("dev/null"), "{err}");
}

#[test]
fn damaged_store_files_are_errors_naming_the_file_and_keep_the_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), Driver::Vfs);
    let a = store.put_layer(&LayerOptions::default(), &tar_of(&[("a", b'0', "", b"a")])[..]).expect("a");
    let b = store.put_layer(&LayerOptions::default(), &tar_of(&[("b", b'0', "", b"b")])[..]).expect("b");
    drop(store);
    let layers_json = tmp.path().join("graph/vfs-layers/layers.json");
    let intact = std::fs::read(&layers_json).expect("read");

    for (what, bytes) in [
        ("truncated", intact[..intact.len() / 2].to_vec()),
        ("garbage", b"\x00\xffnot json at all".to_vec()),
        ("wrong shape", br#"{"id":"x"}"#.to_vec()),
    ] {
        std::fs::write(&layers_json, &bytes).expect("damage");
        let mut options = StoreOptions::new(tmp.path().join("graph"), tmp.path().join("run"));
        options.driver = Some(Driver::Vfs);
        let err = Store::open(&options).expect_err(what);
        assert!(err.to_string().contains("layers.json"), "{what}: {err}");
        assert_eq!(std::fs::read(&layers_json).expect("read"), bytes, "{what}: the damaged file was rewritten");
    }
    std::fs::write(&layers_json, &intact).expect("restore");

    // A record whose directory vanished: fsck names it, the rest stays.
    std::fs::remove_dir_all(tmp.path().join("graph/vfs/dir").join(&a.id)).expect("rm");
    let store = open(tmp.path(), Driver::Vfs);
    let problems = store.fsck(true).expect("fsck");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].to_string().contains(&a.id) && problems[0].message.contains("missing"));
    store.repair(&problems).expect("repair");
    let left: Vec<String> = store.layers().expect("layers").into_iter().map(|l| l.id).collect();
    assert_eq!(left, std::slice::from_ref(&b.id));
    assert!(store.fsck(true).expect("fsck").is_empty());

    // A tar-split that lies about a file's content.
    let file = tmp.path().join("graph/vfs/dir").join(&b.id).join("b");
    std::fs::write(&file, b"B").expect("tamper");
    let problems = store.fsck(false).expect("fsck");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("does not reassemble"), "{}", problems[0]);
}

#[test]
fn incomplete_layers_are_removed_by_the_next_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), Driver::Vfs);
    let keep = store.put_layer(&LayerOptions::default(), &tar_of(&[("k", b'0', "", b"k")])[..]).expect("keep");
    drop(store);
    // What a process killed mid-apply leaves: a record flagged incomplete
    // and a half-made directory.
    let layers_json = tmp.path().join("graph/vfs-layers/layers.json");
    let mut records: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&layers_json).expect("read")).expect("json");
    let ghost = "ab".repeat(32);
    records.push(serde_json::json!({"id": ghost, "created": "2026-01-01T00:00:00Z", "flags": {"incomplete": true}}));
    std::fs::write(&layers_json, serde_json::to_vec(&records).expect("json")).expect("write");
    std::fs::create_dir_all(tmp.path().join("graph/vfs/dir").join(&ghost).join("half")).expect("mkdir");

    let store = open(tmp.path(), Driver::Vfs);
    let ids: Vec<String> = store.layers().expect("layers").into_iter().map(|l| l.id).collect();
    assert_eq!(ids, [keep.id]);
    assert!(!tmp.path().join("graph/vfs/dir").join(&ghost).exists());
    let on_disk = std::fs::read_to_string(&layers_json).expect("read");
    assert!(!on_disk.contains(&ghost), "{on_disk}");
}
