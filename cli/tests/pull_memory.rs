//! Memory: a pull's peak RSS stays under 256 MiB whatever the layer. The
//! test layer is 2 GB of tar with 200 000 files: its TOC and tar-split
//! (hundreds of MB decompressed) are streamed, not held. In zstd:chunked,
//! pulled rebuilt from its TOC (every piece fetched, from an OCI layout)
//! and fetched whole, each in a fresh store; then a second version (one
//! file in 50 changed) pulled partially over the first, where the first's
//! dedup index and headers are held too. The same update in eStargz,
//! whose TOC has no offsets to end its payloads by. Set KEEP_LAYOUT=DIR
//! to keep the generated layout there between runs.

// wait4 is the one way to learn a child's own peak RSS; std has no safe
// wrapper for it, nor has rustix.
#![allow(unsafe_code)]

use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use strata_chunkfetch::LayoutWriter;
use strata_chunkfetch::oci::Descriptor;

const FILES: usize = 200_000;
const PER_DIR: usize = 500;
const LIMIT: u64 = 256 << 20;

/// A tar of `FILES` files of 4 to 16 KiB (2 GB in all), made as it is read.
struct GeneratedTar {
    /// 1, or 2 for the update: every 50th file differs.
    version: usize,
    next: usize,
    pool: Vec<u8>,
    buf: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl GeneratedTar {
    fn new(version: usize) -> Self {
        // Text-like bytes that compress about 3:1, as real files do.
        let words: Vec<&[u8]> = [&b"layer "[..], b"chunk ", b"table ", b"of ", b"contents ", b"zstd ", b"store\n", b"pull "]
            .to_vec();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut pool = Vec::with_capacity(1 << 20);
        while pool.len() < 1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pool.extend_from_slice(words[(x % 8) as usize]);
            pool.push(b'a' + (x >> 8) as u8 % 26);
        }
        GeneratedTar {
            version,
            next: 0,
            pool,
            buf: Vec::with_capacity(64 << 10),
            pos: 0,
            ended: false,
        }
    }

    fn header(&mut self, path: &str, kind: tar::EntryType, size: u64) {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).expect("path");
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
    }

    fn refill(&mut self) {
        self.buf.clear();
        self.pos = 0;
        if self.next == FILES {
            if !self.ended {
                self.buf.resize(1024, 0);
                self.ended = true;
            }
            return;
        }
        let i = self.next;
        if i.is_multiple_of(PER_DIR) {
            self.header(&format!("d{}/", i / PER_DIR), tar::EntryType::Directory, 0);
        }
        let size = 4096 + (i * 7919) % 12_288;
        self.header(&format!("d{}/f{i}", i / PER_DIR), tar::EntryType::Regular, size as u64);
        let start = (i * 104_729) % (self.pool.len() - size);
        let unique = if self.version > 1 && i.is_multiple_of(50) {
            format!("file {i}, version {}\n", self.version)
        } else {
            format!("file {i}\n")
        };
        self.buf.extend_from_slice(unique.as_bytes());
        self.buf.extend_from_slice(&self.pool[start..start + size - unique.len()]);
        self.buf.resize(self.buf.len().next_multiple_of(512), 0);
        self.next += 1;
    }
}

impl Read for GeneratedTar {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.refill();
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn write_layout(dir: &Path) {
    let layout = LayoutWriter::create(dir).expect("layout");
    for (version, tag, estargz) in [(1, "big", false), (2, "big2", false), (1, "gz", true), (2, "gz2", true)] {
        write_image(&layout, version, tag, estargz);
    }
}

fn write_image(layout: &LayoutWriter, version: usize, tag: &str, estargz: bool) {
    let mut written = None;
    let blob = layout
        .put_blob_with(|out| {
            written = Some(if estargz {
                let options = strata_toc::estargz::EstargzOptions { level: 1, ..Default::default() };
                let w = strata_toc::estargz::write_estargz(GeneratedTar::new(version), out, &options).map_err(io::Error::other)?;
                (w.diff_id, w.uncompressed_size, w.annotations)
            } else {
                let options = strata_toc::WriteOptions {
                    level: 1,
                    legacy_annotations: false,
                    ..Default::default()
                };
                let w = strata_toc::write_zstd_chunked(GeneratedTar::new(version), out, &options).map_err(io::Error::other)?;
                (w.diff_id, w.uncompressed_size, w.annotations)
            });
            Ok(())
        })
        .expect("write the blob");
    let (diff_id, uncompressed_size, annotations) = written.expect("written");
    eprintln!("{tag}: {} MB of tar, {} MB compressed", uncompressed_size >> 20, blob.size >> 20);
    assert!(uncompressed_size > 2_000_000_000);
    let config = serde_json::json!({
        "architecture": strata_chunkfetch::oci::host_architecture(),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = layout.put_blob(config.to_string().as_bytes()).expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
        "layers": [{
            "mediaType": if estargz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar+zstd" },
            "digest": blob.digest,
            "size": blob.size,
            "annotations": annotations,
        }],
    });
    let manifest = layout.put_blob(manifest.to_string().as_bytes()).expect("manifest");
    layout
        .tag(
            Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: manifest.digest,
                size: manifest.size,
                ..Descriptor::default()
            },
            Some(tag),
        )
        .expect("tag");
}

/// Runs `strata pull` and returns its report and its peak RSS in bytes.
// Reaped by wait4 below, which std's wait would not let us do.
#[allow(clippy::zombie_processes)]
fn pull(root: &Path, layout: &Path, tag: &str, extra: &[&str]) -> (serde_json::Value, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--root")
        .arg(root.join("graph"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--driver", "vfs", "pull", "--json"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("strata");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let mut report = Vec::new();
    stdout.read_to_end(&mut report).expect("report");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 only writes to the
    // two out-parameters given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "strata pull failed: {status}");
    let report: serde_json::Value = serde_json::from_slice(&report).expect("JSON report");
    (report, usage.ru_maxrss as u64 * 1024)
}

const TEST: &str = "pulls_of_a_2_gb_layer_of_200_000_files_stay_under_256_mib";

/// The test layout (KEEP_LAYOUT, or under `dir`), written by another run
/// of this test when it is not there yet.
fn layout(dir: &Path) -> std::path::PathBuf {
    let layout = match std::env::var_os("KEEP_LAYOUT") {
        Some(p) => std::path::PathBuf::from(p),
        None => dir.join("layout"),
    };
    if !layout.join("index.json").exists() {
        let mut run = Command::new(std::env::current_exe().expect("this test"));
        run.args([TEST, "--exact", "--nocapture"]);
        let status = run.env("PULL_MEMORY_WRITE_LAYOUT", &layout).status().expect("write the layout");
        assert!(status.success() && layout.join("index.json").exists(), "writing the layout failed");
    }
    layout
}

/// Pulls `tag` into the store under `root` and checks how it came and its
/// peak RSS; returns the layer's report.
fn pull_checked(root: &Path, layout: &Path, tag: &str, extra: &[&str], how: &str, case: &str) -> serde_json::Value {
    let (report, rss) = pull(root, layout, tag, extra);
    let layer = report["layers"][0].clone();
    eprintln!("{case}: peak RSS {} MiB; {layer}", rss >> 20);
    assert_eq!(layer["how"], how, "{case}: {layer}");
    assert!(rss < LIMIT, "{case}: peak RSS {} MiB, the limit is {} MiB", rss >> 20, LIMIT >> 20);
    layer
}

#[test]
fn pulls_of_a_2_gb_layer_of_200_000_files_stay_under_256_mib() {
    // A child's peak RSS counts the memory it shares with its parent until
    // it execs: the layout is written by another run of this test, so this
    // process stays small when it starts the pulls.
    if let Some(dir) = std::env::var_os("PULL_MEMORY_WRITE_LAYOUT") {
        write_layout(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = layout(dir.path());
    let every_piece = ["--fetch-whole-at", "2"];
    // Each store costs 2 to 4 GB of disk: one at a time.
    let root = dir.path().join("zstd");
    let layer = pull_checked(&root, &layout, "big", &every_piece, "partial", "cold, rebuilt from the TOC");
    assert_eq!(layer["files"].as_u64(), Some(FILES as u64));
    let layer = pull_checked(&root, &layout, "big2", &every_piece, "partial", "update over the first version");
    assert_eq!(layer["files_reused"].as_u64(), Some((FILES - FILES / 50) as u64), "{layer}");
    std::fs::remove_dir_all(&root).expect("remove the store");
    let root = dir.path().join("whole");
    pull_checked(&root, &layout, "big", &[], "full", "cold, fetched whole");
    std::fs::remove_dir_all(&root).expect("remove the store");
    let root = dir.path().join("estargz");
    pull_checked(&root, &layout, "gz", &[], "full", "eStargz, cold");
    let layer = pull_checked(&root, &layout, "gz2", &every_piece, "partial", "eStargz, update over the first version");
    assert_eq!(layer["files_reused"].as_u64(), Some((FILES - FILES / 50) as u64), "{layer}");
}
