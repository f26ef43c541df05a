//! `cargo xtask bench pull`: strata and podman (containers-storage 1.43,
//! partial pulls on) pull v1 (cold) and then v2 (an update) of the same
//! zstd:chunked image from a local docker-registry, each through its own
//! counting proxy; v2 changes about 1 % of v1's files and adds three
//! packages' worth of new ones (31 MB of real files). Prints the time and
//! the bytes the registry served for each, and the ratios. Then strata's
//! update is timed partial and fetched whole (`--no-partial`), on loopback
//! and through proxies that limit the link to 1 Gbit/s and 50 Mbit/s: a
//! partial pull must never be the slower one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_test_support::{LayerBlob, Mode, Proxy, RegistryServer, add_image, skopeo_copy};

use crate::{Error, flag, require, run, sync, timed, workspace_root};

/// Trees v2 adds, as an upgrade that installs packages would: the host's
/// perl-base, gconv modules and i18n data (about 31 MB).
const ADDED: [&str; 3] = ["usr/lib/x86_64-linux-gnu/perl-base", "usr/lib/x86_64-linux-gnu/gconv", "usr/share/i18n"];

/// A tree of real files, and a copy where every 97th file changed and
/// [`ADDED`] was added. Trees and images made before v2 had its additions
/// are made again.
fn make_trees(work: &Path) -> Result<(), Error> {
    let v1 = work.join("v1");
    let marker = work.join("v2-has-packages-added");
    if v1.join("usr").exists() && marker.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(&marker);
    for old in ["v1", "v2", "layout"] {
        if work.join(old).exists() {
            std::fs::remove_dir_all(work.join(old))?;
        }
    }
    std::fs::create_dir_all(&v1)?;
    eprintln!("copying /usr/lib/python3.11, /usr/share/doc and /etc into {}", v1.display());
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C / -cf - usr/lib/python3.11 usr/share/doc etc 2>/dev/null | tar -C '{}' -xf -",
            v1.display()
        ))
        .status()?;
    if !status.success() {
        return Err("copying the tree failed".into());
    }
    let v2 = work.join("v2");
    run(Command::new("cp").arg("-a").arg(&v1).arg(&v2))?;
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && find . -type f -size +1k | sort", v2.display()))
        .output()?;
    let files: Vec<String> = String::from_utf8_lossy(&listing.stdout).lines().map(str::to_owned).collect();
    let mut changed = 0;
    for (i, f) in files.iter().enumerate() {
        if i.is_multiple_of(97) {
            let p = v2.join(f);
            let mut bytes = std::fs::read(&p)?;
            bytes.extend_from_slice(format!("\n# changed in v2 ({i})\n").as_bytes());
            std::fs::write(&p, bytes)?;
            changed += 1;
        }
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C / -cf - {} 2>/dev/null | tar -C '{}' -xf -", ADDED.join(" "), v2.display()))
        .status()?;
    if !status.success() {
        return Err("adding the packages' trees failed".into());
    }
    eprintln!("v2 changes {changed} of {} files and adds {}", files.len(), ADDED.join(", "));
    std::fs::write(&marker, b"")?;
    Ok(())
}

fn tar_of(dir: &Path) -> Result<Vec<u8>, Error> {
    let out = Command::new("tar")
        .args(["--sort=name", "--format=pax", "--pax-option=delete=atime,delete=ctime", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .stderr(Stdio::null())
        .output()?;
    if out.stdout.is_empty() {
        return Err(format!("tar of {} failed", dir.display()).into());
    }
    Ok(out.stdout)
}

fn chunked(tar: &[u8]) -> Result<(LayerBlob, u64), Error> {
    let mut blob = Vec::new();
    let written = strata_toc::write_zstd_chunked(
        tar,
        &mut blob,
        &strata_toc::WriteOptions {
            level: 3,
            legacy_annotations: true,
            ..Default::default()
        },
    )?;
    let size = blob.len() as u64;
    Ok((
        LayerBlob {
            blob,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            annotations: written.annotations.into_iter().collect(),
            diff_id: written.diff_id,
        },
        size,
    ))
}

/// One store of each tool, kept until the bench ends: deleting thousands
/// of files just before a timed run slows the next creations down (ext4
/// skips recently freed inodes), which would time the disk, not the tool.
struct Stores {
    dir: tempfile::TempDir,
    n: usize,
}

impl Stores {
    fn next(&mut self) -> Result<std::path::PathBuf, Error> {
        self.n += 1;
        let p = self.dir.path().join(format!("s{}", self.n));
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}

fn podman_conf(scratch: &Path, hard_links: bool) -> Result<std::path::PathBuf, Error> {
    let conf = scratch.join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"{hard_links}\"}}\n",
            scratch.join("graph").display(),
            scratch.join("run").display()
        ),
    )?;
    Ok(conf)
}

fn podman_pull(conf: &Path, addr: &str, tag: &str) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_STORAGE_CONF", conf)
        .args(["--events-backend", "none", "pull", "--quiet", "--tls-verify=false"])
        .arg(format!("{addr}/bench:{tag}"));
    c
}

fn strata_pull(strata: &Path, scratch: &Path, addr: &str, tag: &str, partial: bool) -> Command {
    strata_pull_with(strata, scratch, addr, tag, partial, false)
}

fn strata_pull_with(strata: &Path, scratch: &Path, addr: &str, tag: &str, partial: bool, hard_links: bool) -> Command {
    strata_pull_checking(strata, scratch, addr, tag, partial, hard_links, true)
}

fn strata_pull_checking(
    strata: &Path,
    scratch: &Path,
    addr: &str,
    tag: &str,
    partial: bool,
    hard_links: bool,
    diff_ids: bool,
) -> Command {
    let mut c = Command::new(strata);
    c.arg("--root")
        .arg(scratch.join("graph"))
        .arg("--runroot")
        .arg(scratch.join("run"))
        .args(["--driver", "overlay", "pull", "--tls-verify=false"])
        .arg(format!("docker://{addr}/bench:{tag}"));
    if !partial {
        c.arg("--no-partial");
    }
    if hard_links {
        c.arg("--use-hard-links");
    }
    if !diff_ids {
        c.arg("--verify-diff-ids=false");
    }
    c
}

/// A counting proxy to the registry, limited to `bits` per second if given.
fn proxy_at(registry: &str, bits: Option<u64>) -> Proxy {
    match bits {
        Some(bits) => Proxy::start_paced(registry, Mode::Pass, bits),
        None => Proxy::start(registry, Mode::Pass),
    }
}

/// The CPU time (user + system) of this process's waited-for children so
/// far, and of their waited-for children: `cutime` and `cstime` of
/// /proc/self/stat, in the kernel's USER_HZ ticks (100 a second on Linux
/// whatever the kernel's own tick), so to 10 ms.
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is
    // field 3, cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = |n: usize| rest.split_whitespace().nth(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((field(16) + field(17)) * 10)
}

/// One timed run: wall time, CPU time and the bytes the proxy served.
struct Measured {
    wall: Duration,
    cpu: Duration,
    bytes: u64,
}

/// A timed command, its CPU time (both pulls do their work in the process
/// started, not in a daemon) and the bytes the proxy served it.
fn measured(proxy: &Proxy, cmd: &mut Command) -> Result<Measured, Error> {
    sync();
    let before = proxy.body_bytes.load(Ordering::Relaxed);
    let cpu = children_cpu();
    let wall = timed(cmd)?;
    Ok(Measured {
        wall,
        cpu: children_cpu().saturating_sub(cpu),
        bytes: proxy.body_bytes.load(Ordering::Relaxed) - before,
    })
}

#[derive(Default)]
struct Series {
    times: Vec<Duration>,
    cpu: Vec<Duration>,
    bytes: u64,
}

impl Series {
    fn add(&mut self, m: Measured) {
        self.times.push(m.wall);
        self.cpu.push(m.cpu);
        self.bytes = m.bytes;
    }

    fn median(&self) -> f64 {
        middle(&self.times)
    }

    fn median_cpu(&self) -> f64 {
        middle(&self.cpu)
    }
}

fn middle(times: &[Duration]) -> f64 {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2].as_secs_f64()
}

/// The strata binary, and the bench image (v1, v2) in a fresh local
/// docker-registry; returns the v2 blob's size too.
fn bench_image() -> Result<(std::path::PathBuf, std::path::PathBuf, RegistryServer, u64), Error> {
    for (tool, package) in [("podman", "podman"), ("skopeo", "skopeo"), ("docker-registry", "docker-registry")] {
        require(tool, package)?;
    }
    let root = workspace_root();
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "strata-cli"])
        .current_dir(&root))?;
    let strata = root.join("target/release/strata");
    let work = root.join("target/bench/pull");
    make_trees(&work)?;
    let layout = work.join("layout");
    if !layout.join("index.json").exists() {
        for tag in ["v1", "v2"] {
            let tar = tar_of(&work.join(tag))?;
            let (blob, size) = chunked(&tar)?;
            eprintln!("{tag}: {} MiB tar, {} MiB zstd:chunked", tar.len() >> 20, size >> 20);
            add_image(&layout, tag, &[blob]);
        }
    }
    let mut v2_size = 0;
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))? {
        v2_size = v2_size.max(entry?.metadata()?.len());
    }
    let server = RegistryServer::start();
    for tag in ["v1", "v2"] {
        skopeo_copy(&format!("oci:{}:{tag}", layout.display()), &format!("docker://{}/bench:{tag}", server.addr));
    }
    Ok((strata, work, server, v2_size))
}

/// `cargo xtask bench planner`: strata's update v1 -> v2 with each merge
/// gap and range limit, on loopback and through proxies limited to
/// 1 Gbit/s and 50 Mbit/s, against the real registry: the bytes served, the
/// requests, and the time.
pub fn bench_planner(args: &[String]) -> Result<(), Error> {
    let runs: usize = flag(args, "--runs").map_or(Ok(1), str::parse)?;
    let (strata, work, server, _) = bench_image()?;
    let fs = crate::scratch_fs::ScratchFs::new(&work, 16)?;
    let mut stores = Stores {
        dir: tempfile::tempdir_in(fs.path())?,
        n: 0,
    };
    let settings: [(u64, usize); 6] = [(0, 1024), (1024, 1024), (16 << 10, 1024), (256 << 10, 1024), (1024, 64), (1024, 8)];
    let links = [("loopback", None), ("1 Gbit/s", Some(1_000_000_000u64)), ("50 Mbit/s", Some(50_000_000))];
    println!("strata's update v1 -> v2 (median of {runs}), by planner setting, against a local docker-registry:");
    println!("| merge gap | ranges per request | link | bytes served | requests | time |");
    println!("|---|---|---|---|---|---|");
    for (gap, max_ranges) in settings {
        for (label, bits) in links {
            let mut series = Series::default();
            let mut requests = 0;
            for _ in 0..runs {
                let scratch = stores.next()?;
                run(strata_pull(&strata, &scratch, &server.addr, "v1", true).stdout(Stdio::null()))?;
                let proxy = proxy_at(&server.addr, bits);
                let mut cmd = strata_pull(&strata, &scratch, &proxy.addr, "v2", true);
                cmd.arg(format!("--merge-gap={gap}")).arg(format!("--max-ranges={max_ranges}"));
                series.add(measured(&proxy, &mut cmd)?);
                requests = proxy.ranged_requests();
            }
            println!("| {gap} | {max_ranges} | {label} | {} | {requests} | {:.2} s |", series.bytes, series.median());
        }
    }
    for dir in 1..=stores.n {
        let _ = Command::new("umount").arg("-R").arg(stores.dir.path().join(format!("s{dir}/graph/overlay"))).stderr(Stdio::null()).status();
    }
    drop(fs);
    drop(stores);
    Ok(())
}

pub fn bench_pull(args: &[String]) -> Result<(), Error> {
    let runs: usize = flag(args, "--runs").map_or(Ok(3), str::parse)?;
    let (strata, work, server, v2_size) = bench_image()?;
    // Every store on a fresh filesystem, kept until the end (see
    // scratch_fs: nothing is deleted between timed pulls). A run keeps
    // eleven stores of up to 600 MB each; the image file is sparse.
    let fs = crate::scratch_fs::ScratchFs::new(&work, (7 * runs as u64 + 4).max(16))?;
    let mut stores = Stores {
        dir: tempfile::tempdir_in(fs.path())?,
        n: 0,
    };
    let mut dirs = Dirs::default();
    let main = both_tools(&server.addr, &strata, &mut stores, &mut dirs, runs, Variant::Main)?;
    let hard_links = both_tools(&server.addr, &strata, &mut stores, &mut dirs, runs, Variant::HardLinks)?;

    // Partial against whole, the update with v1 present, on loopback and
    // on slower links; all interleaved, so each meets the disk as it ages.
    let link_kinds = [("loopback", None), ("1 Gbit/s", Some(1_000_000_000u64)), ("50 Mbit/s", Some(50_000_000))];
    let mut links: Vec<(&str, Series, Series)> = link_kinds.iter().map(|(l, _)| (*l, Series::default(), Series::default())).collect();
    for _ in 0..runs {
        for ((_, bits), (_, partial, full)) in link_kinds.iter().zip(links.iter_mut()) {
            for (series, is_partial) in [(&mut *partial, true), (&mut *full, false)] {
                let scratch = stores.next()?;
                dirs.strata.push(scratch.clone());
                run(strata_pull(&strata, &scratch, &server.addr, "v1", true).stdout(Stdio::null()))?;
                let proxy = proxy_at(&server.addr, *bits);
                series.add(measured(&proxy, &mut strata_pull(&strata, &scratch, &proxy.addr, "v2", is_partial))?);
            }
        }
    }

    // The same on XFS, where both tools clone reused files (reflinks).
    let xfs = crate::scratch_fs::ScratchFs::with_kind(&work.join("xfs"), "xfs", 6)?;
    let mut xfs_stores = Stores {
        dir: tempfile::tempdir_in(xfs.path())?,
        n: 0,
    };
    let reflinks = both_tools(&server.addr, &strata, &mut xfs_stores, &mut dirs, runs, Variant::Reflinks)?;

    println!("v2 blob {:.1} MiB; median of {runs}; stores on a fresh loop-mounted ext4 (XFS where said), registry on 127.0.0.1", v2_size as f64 / (1u64 << 20) as f64);
    let rows = [
        ("cold v1", &main.podman_cold, &main.strata_cold),
        ("update v1 -> v2", &main.podman_update, &main.strata_update),
        (
            "update, diffID unchecked as podman (--verify-diff-ids=false)",
            &main.podman_update,
            &main.strata_unchecked,
        ),
        ("update, hard links (use_hard_links / --use-hard-links)", &hard_links.podman_update, &hard_links.strata_update),
        ("update on XFS (both clone)", &reflinks.podman_update, &reflinks.strata_update),
    ];
    println!("| pull | podman (partial on) | strata | strata / podman time | strata / podman bytes |");
    println!("|---|---|---|---|---|");
    for (what, p, s) in rows {
        println!(
            "| {what} | {:.2} s, {} B | {:.2} s, {} B | {:.2} | {:.2} |",
            p.median(),
            p.bytes,
            s.median(),
            s.bytes,
            s.median() / p.median(),
            s.bytes as f64 / p.bytes.max(1) as f64
        );
    }
    println!();
    println!("CPU time (user + system) of the same pulls, median:");
    println!("| pull | podman | strata | strata / podman |");
    println!("|---|---|---|---|");
    for (what, p, s) in rows {
        println!(
            "| {what} | {:.2} s | {:.2} s | {:.2} |",
            p.median_cpu(),
            s.median_cpu(),
            s.median_cpu() / p.median_cpu()
        );
    }
    println!();
    println!("strata's update v1 -> v2, partial against fetched whole (--no-partial):");
    println!("| link | partial | whole | partial / whole time |");
    println!("|---|---|---|---|");
    for (label, partial, full) in &links {
        println!(
            "| {label} | {:.2} s, {} B | {:.2} s, {} B | {:.2} |",
            partial.median(),
            partial.bytes,
            full.median(),
            full.bytes,
            partial.median() / full.median()
        );
    }

    for conf in &dirs.podman {
        let _ = Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", conf)
            .args(["--events-backend", "none", "system", "reset", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for dir in &dirs.strata {
        let _ = Command::new("umount").arg("-R").arg(dir.join("graph/overlay")).stderr(Stdio::null()).status();
    }
    // Unmounted first: the image goes whole, no file is deleted one by one.
    drop(fs);
    drop(stores);
    drop(xfs);
    drop(xfs_stores);
    Ok(())
}

/// Where each tool's stores went, for the cleanup.
#[derive(Default)]
struct Dirs {
    podman: Vec<std::path::PathBuf>,
    strata: Vec<std::path::PathBuf>,
}

struct BothTools {
    podman_cold: Series,
    podman_update: Series,
    strata_cold: Series,
    strata_update: Series,
    /// The update with the diffID taken on trust, as podman takes it
    /// (measured in the main variant only).
    strata_unchecked: Series,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// Reused files copied (ext4), and the unchecked update measured too.
    Main,
    HardLinks,
    /// On XFS, where both tools clone.
    Reflinks,
}

/// `runs` times, each tool pulls v1 then v2 into a store of its own.
fn both_tools(
    registry: &str,
    strata: &Path,
    stores: &mut Stores,
    dirs: &mut Dirs,
    runs: usize,
    variant: Variant,
) -> Result<BothTools, Error> {
    let hard_links = variant == Variant::HardLinks;
    let mut out = BothTools {
        podman_cold: Series::default(),
        podman_update: Series::default(),
        strata_cold: Series::default(),
        strata_update: Series::default(),
        strata_unchecked: Series::default(),
    };
    for _ in 0..runs {
        // podman: its own overlay store with partial pulls on, and no
        // blob-info cache from an earlier run.
        let _ = std::fs::remove_dir_all("/var/lib/containers/cache");
        let proxy = Proxy::start(registry, Mode::Pass);
        let scratch = stores.next()?;
        let conf = podman_conf(&scratch, hard_links)?;
        dirs.podman.push(conf.clone());
        out.podman_cold.add(measured(&proxy, &mut podman_pull(&conf, &proxy.addr, "v1"))?);
        out.podman_update.add(measured(&proxy, &mut podman_pull(&conf, &proxy.addr, "v2"))?);

        let proxy = Proxy::start(registry, Mode::Pass);
        let scratch = stores.next()?;
        dirs.strata.push(scratch.clone());
        out.strata_cold.add(measured(&proxy, &mut strata_pull(strata, &scratch, &proxy.addr, "v1", true))?);
        out.strata_update.add(measured(
            &proxy,
            &mut strata_pull_with(strata, &scratch, &proxy.addr, "v2", true, hard_links),
        )?);

        if variant == Variant::Main {
            let scratch = stores.next()?;
            dirs.strata.push(scratch.clone());
            run(strata_pull(strata, &scratch, registry, "v1", true).stdout(Stdio::null()))?;
            let mut unchecked = strata_pull_checking(strata, &scratch, &proxy.addr, "v2", true, false, false);
            out.strata_unchecked.add(measured(&proxy, &mut unchecked)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_counts_its_cpu_time() {
        let before = children_cpu();
        let status = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh");
        assert!(status.success());
        let spent = children_cpu() - before;
        assert!(spent >= Duration::from_millis(50), "{spent:?}");
    }
}
