//! The store under SIGKILL and under concurrent processes, driven through
//! the `strata` binary.
//!
//! `STRATA_CRASH_KILLS` sets the number of kills (200 by default; the
//! `cargo xtask soak` run uses 1000), `STRATA_STRESS_SECONDS` the length
//! of the concurrency run (30 by default).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use strata_layerstore::{DiffOptions, Driver, Store, StoreOptions};

fn strata(root: &Path, driver: Driver) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.arg("--root")
        .arg(root.join("graph"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--driver", driver.name()]);
    c
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A layer tar with many files, so that applying it takes a while.
fn layer_tar(seed: usize, files: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..files {
        let body = format!("layer {seed} file {i}\n").repeat(1 + (i * 7919 + seed) % 200);
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("d{}/f{i}", i % 16), body.as_bytes()).expect("entry");
    }
    b.into_inner().expect("tar")
}

fn state(root: &Path, driver: Driver) -> Store {
    let mut options = StoreOptions::new(root.join("graph"), root.join("run"));
    options.driver = Some(driver);
    Store::open(&options).expect("the store opens after a kill")
}

fn drivers() -> Vec<Driver> {
    let mut d = vec![Driver::Vfs];
    if strata_layerstore::overlay_supported() {
        d.push(Driver::Overlay);
    } else {
        eprintln!("SKIPPED: overlay half of the crash test (needs root and overlayfs)");
    }
    d
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom_fill(&mut b);
    u64::from_le_bytes(b) % n.max(1)
}

fn getrandom_fill(b: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(b)).expect("urandom");
}

#[test]
fn sigkill_at_random_moments_never_corrupts_the_store() {
    let kills: usize = std::env::var("STRATA_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().expect("tempdir");
    let tars: Vec<PathBuf> = (0..4)
        .map(|seed| {
            let p = tmp.path().join(format!("layer{seed}.tar"));
            std::fs::write(&p, layer_tar(seed, 1500)).expect("write");
            p
        })
        .collect();
    let digests: HashSet<String> = tars.iter().map(|p| sha(&std::fs::read(p).expect("read"))).collect();
    let drivers = drivers();
    let mut killed_mid_work = 0;
    for round in 0..kills {
        let driver = drivers[round % drivers.len()];
        let root = tmp.path().join(driver.name());
        let store = state(&root, driver);
        let layers = store.layers().expect("layers");
        let mut cmd = strata(&root, driver);
        if layers.len() >= 4 {
            let leaf = layers.iter().find(|l| !layers.iter().any(|c| c.parent == l.id)).expect("a leaf");
            cmd.args(["layers", "delete", &leaf.id]);
        } else {
            let tar = &tars[random_below(tars.len() as u64) as usize];
            cmd.args(["layers", "apply"]);
            if let Some(parent) = layers.last().filter(|_| random_below(2) == 0) {
                cmd.args(["--parent", &parent.id]);
            }
            cmd.arg(tar);
        }
        drop(store);
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        std::thread::sleep(Duration::from_micros(random_below(300_000)));
        if child.try_wait().expect("wait").is_none() {
            killed_mid_work += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        let store = state(&root, driver);
        let graph = root.join("graph");
        let json = std::fs::read_to_string(graph.join(format!("{}-layers/layers.json", driver.name()))).unwrap_or_default();
        assert!(!json.contains("incomplete"), "round {round}: an incomplete layer survived a writable open");
        for layer in store.layers().expect("layers") {
            assert!(digests.contains(&layer.diff_digest), "round {round}: layer {} has an unknown diffID", layer.id);
            let mut out = Vec::new();
            store
                .diff(&layer.id, &mut out, DiffOptions { verify: true, ..Default::default() })
                .unwrap_or_else(|e| panic!("round {round} ({driver:?}): layer {} does not diff: {e}", layer.id));
        }
        assert!(store.fsck(false).expect("fsck").is_empty(), "round {round}: fsck found problems");
        let leftovers = store.garbage_collect().expect("gc");
        assert!(
            leftovers.iter().all(|l| l.contains("staging")),
            "round {round}: files no record points to: {leftovers:?}"
        );
    }
    eprintln!("{kills} SIGKILLs, {killed_mid_work} while the child was still working");
    assert!(killed_mid_work > kills / 4, "too few kills landed mid-work to mean anything");
}

#[test]
fn concurrent_writers_and_readers_lose_nothing() {
    let seconds: u64 = std::env::var("STRATA_STRESS_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let driver = if strata_layerstore::overlay_supported() { Driver::Overlay } else { Driver::Vfs };
    drop(state(&root, driver));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let layers_json = root.join(format!("graph/{}-layers/layers.json", driver.name()));
    let (created, reads) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let root = root.clone();
                s.spawn(move || {
                    let mut ids = Vec::new();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        let tar = root.join(format!("w{w}-{n}.tar"));
                        std::fs::write(&tar, layer_tar(w * 100_000 + n, 20)).expect("write");
                        let out = strata(&root, driver)
                            .args(["layers", "apply", "--name", &format!("w{w}-{n}")])
                            .arg(&tar)
                            .output()
                            .expect("apply");
                        assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
                        ids.push(String::from_utf8(out.stdout).expect("utf8").trim().to_string());
                        let _ = std::fs::remove_file(&tar);
                        n += 1;
                    }
                    ids
                })
            })
            .collect();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                let layers_json = layers_json.clone();
                s.spawn(move || {
                    let mut reads = 0;
                    while Instant::now() < deadline {
                        let out = strata(&root, driver).args(["layers", "list", "--json"]).output().expect("list");
                        assert!(out.status.success(), "list failed: {}", String::from_utf8_lossy(&out.stderr));
                        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("list output is JSON");
                        let ids: HashSet<&str> = listed.iter().filter_map(|l| l["id"].as_str()).collect();
                        assert_eq!(ids.len(), listed.len(), "a layer listed twice");
                        // The file itself, read without any lock, is never torn.
                        let raw = match std::fs::read(&layers_json) {
                            Ok(raw) => raw,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                            Err(e) => panic!("read layers.json: {e}"),
                        };
                        if !raw.is_empty() {
                            let _: Vec<serde_json::Value> = serde_json::from_slice(&raw).expect("layers.json is never torn");
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let created: Vec<String> = writers.into_iter().flat_map(|w| w.join().expect("writer")).collect();
        let reads: usize = readers.into_iter().map(|r| r.join().expect("reader")).sum();
        (created, reads)
    });
    let store = state(&root, driver);
    let layers = store.layers().expect("layers");
    let listed: HashSet<&str> = layers.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(listed.len(), layers.len(), "a layer is listed twice");
    for id in &created {
        assert!(listed.contains(id.as_str()), "layer {id} was lost");
    }
    assert_eq!(layers.len(), created.len());
    for l in &layers {
        assert_eq!(l.names.len(), 1, "layer {} has names {:?}", l.id, l.names);
    }
    eprintln!("{seconds} s: {} layers created by 4 writers, {reads} listings by 4 readers", created.len());
}
