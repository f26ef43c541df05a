//! `cargo xtask`: whole-command benchmarks against the reference tools, and
//! fuzz runs.
//!
//! ```text
//! cargo xtask bench tar-split [--runs N] [--tar FILE]
//! cargo xtask bench fsverity [--runs N]
//! cargo xtask bench overlay-diff [--runs N]
//! cargo xtask bench convert [--runs N]
//! cargo xtask bench apply [--runs N]
//! cargo xtask bench pull [--runs N]
//! cargo xtask bench planner [--runs N]   # partial-pull range planning: merge gap and ranges per request
//! cargo xtask bench push [--runs N] [--compress none|gzip|zstd|zstd:chunked]
//! cargo xtask fuzz [--seconds N]
//! cargo xtask soak [--kills N] [--seconds N]
//! cargo xtask example-image        # rewrites examples/app, the layout the README pulls
//! ```

mod example;
mod pull_bench;
mod push_bench;
mod scratch_fs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("example-image") => example::example_image(&workspace_root().join("examples/app")),
        _ => Err("usage: cargo xtask bench NAME [--runs N] | cargo xtask fuzz [--seconds N] | cargo xtask soak [--kills N]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn run(cmd: &mut Command) -> Result<(), Error> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}").into());
    }
    Ok(())
}

fn require(tool: &str, package: &str) -> Result<(), Error> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()?;
    if !found.success() {
        return Err(format!("{tool} is not installed: apt-get install -y {package}").into());
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        Some("tar-split") => bench_tar_split(&args[1..]),
        Some("fsverity") => bench_fsverity(&args[1..]),
        Some("overlay-diff") => bench_overlay_diff(&args[1..]),
        Some("convert") => bench_convert(&args[1..]),
        Some("apply") => bench_apply(&args[1..]),
        Some("pull") => pull_bench::bench_pull(&args[1..]),
        Some("planner") => pull_bench::bench_planner(&args[1..]),
        Some("push") => push_bench::bench_push(&args[1..]),
        other => Err(format!(
            "unknown benchmark {other:?}; available: tar-split, fsverity, overlay-diff, convert, apply, pull, planner, push"
        )
        .into()),
    }
}

/// `strata layers apply` / `layers diff` against GNU tar extracting and
/// creating the same tree, on a real root filesystem tar, per driver.
fn bench_apply(args: &[String]) -> Result<(), Error> {
    let runs: usize = flag(args, "--runs").map_or(Ok(5), str::parse)?;
    require("tar", "tar")?;
    let root = workspace_root();
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "strata-cli"])
        .current_dir(&root))?;
    let strata = root.join("target/release/strata");
    let work = root.join("target/bench/apply");
    std::fs::create_dir_all(&work)?;
    let tar = work.join("rootfs.tar");
    if !tar.exists() {
        eprintln!("making {} from /etc, /usr/bin, /usr/share/doc, /usr/lib/python3.11", tar.display());
        let partial = work.join("rootfs.tar.partial");
        let status = Command::new("tar")
            .args(["--format=gnu", "-C", "/", "-cf"])
            .arg(&partial)
            .args(["etc", "usr/bin", "usr/share/doc", "usr/lib/python3.11"])
            .status()?;
        if status.code().is_none_or(|c| c > 1) {
            return Err("tar failed".into());
        }
        std::fs::rename(&partial, &tar)?;
    }
    let size = std::fs::metadata(&tar)?.len();
    // Every run extracts into a directory of its own on a fresh
    // filesystem, gone at the end (see scratch_fs: nothing is deleted
    // between runs).
    // Six extractions of the tar per run (GNU tar, with syncfs, two
    // drivers, each with --sync too).
    let fs = scratch_fs::ScratchFs::new(&work, ((size * 6 * runs as u64) >> 30) + 4)?;
    let scratch = fs.path().to_path_buf();
    let mut n = 0;
    let mut fresh = |what: &str| {
        n += 1;
        scratch.join(format!("{what}-{n}"))
    };
    let mut drivers = vec!["vfs"];
    if Path::new("/proc/filesystems").exists() && std::fs::read_to_string("/proc/filesystems")?.contains("overlay") {
        drivers.push("overlay");
    }
    let strata_cmd = |store: &Path, driver: &str| {
        let mut c = Command::new(&strata);
        c.arg("--root").arg(store.join("graph")).arg("--runroot").arg(store.join("run")).args(["--driver", driver]);
        c
    };
    // GNU tar and each driver take turns, run after run, so that all meet
    // the filesystem in the same state: it slows down as gigabytes are
    // written into it, and timing one tool's runs after the other's would
    // time that.
    let mut tar_x = Vec::new();
    let mut applies: Vec<Vec<Duration>> = vec![Vec::new(); drivers.len()];
    let mut synced: Vec<Vec<Duration>> = vec![Vec::new(); drivers.len()];
    let mut stores: Vec<Option<std::path::PathBuf>> = vec![None; drivers.len()];
    let mut out = None;
    for _ in 0..runs {
        let dir = fresh("tar");
        sync();
        std::fs::create_dir_all(&dir)?;
        // GNU tar, same tree, same ownership handling.
        tar_x.push(timed(Command::new("tar").args(["--same-owner", "-p", "-xf"]).arg(&tar).arg("-C").arg(&dir))?);
        out = Some(dir);
        for (k, driver) in drivers.iter().enumerate() {
            let store = fresh(driver);
            sync();
            applies[k].push(timed(strata_cmd(&store, driver).args(["layers", "apply"]).arg(&tar))?);
            stores[k] = Some(store);
            let store = fresh(driver);
            sync();
            synced[k].push(timed(strata_cmd(&store, driver).args(["layers", "apply", "--sync"]).arg(&tar))?);
        }
    }
    let tar_x = median(tar_x);
    let out = out.ok_or("no run")?;
    // GNU tar returns with the data still in memory, as `layers apply`
    // does; `layers apply --sync` waits for it to be on disk, as GNU tar
    // followed by syncfs does.
    let tar_x_sync = time_median(runs, || {
        let out = fresh("tar-sync");
        sync();
        let _ = std::fs::create_dir_all(&out);
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "tar --same-owner -p -xf '{}' -C '{}' && sync -f '{}'",
            tar.display(),
            out.display(),
            out.display()
        ));
        c
    })?;
    // Into a pipe: GNU tar skips reading file contents when its archive
    // is /dev/null, which would time nothing.
    let tar_c = time_median(runs, || {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("tar --format=gnu -cf - -C '{}' . | cat > /dev/null", out.display()));
        c
    })?;
    println!(
        "rootfs tar: {:.0} MiB, on a fresh ext4 (loop device); GNU tar -x {:.3} s, tar -x then syncfs {:.3} s, tar -c {:.3} s (median of {runs})",
        mib(size),
        tar_x.as_secs_f64(),
        tar_x_sync.as_secs_f64(),
        tar_c.as_secs_f64()
    );
    for (((driver, times), synced), store) in drivers.iter().zip(applies).zip(synced).zip(stores) {
        let apply = median(times);
        let synced = median(synced);
        let store = store.ok_or("no run")?;
        let listed = strata_cmd(&store, driver).args(["layers", "list"]).output()?;
        let id = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .ok_or("no layer listed")?
            .to_string();
        let diff = time_median(runs, || {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!(
                "'{}' --root '{}' --runroot '{}' --driver {driver} layers diff {id} | cat > /dev/null",
                strata.display(),
                store.join("graph").display(),
                store.join("run").display()
            ));
            c
        })?;
        println!(
            "{driver:>7}: layers apply {:.3} s = {:.2}x tar -x (target <= 1.2); layers apply --sync {:.3} s = {:.2}x tar -x + syncfs; layers diff {:.3} s = {:.2}x tar -c (target <= 1.0)",
            apply.as_secs_f64(),
            apply.as_secs_f64() / tar_x.as_secs_f64(),
            synced.as_secs_f64(),
            synced.as_secs_f64() / tar_x_sync.as_secs_f64(),
            diff.as_secs_f64(),
            diff.as_secs_f64() / tar_c.as_secs_f64(),
        );
    }
    drop(fs);
    Ok(())
}

/// For `guessed_headers`' styled headers: a directory's headers as GNU tar
/// `--format=pax` writes them (an extended header with its time to the
/// nanosecond), then a plain block for the entry "a".
fn time_header_style_seed() -> Result<Vec<u8>, Error> {
    let block = |path: &str, kind: tar::EntryType, size: u64, mode: u32| -> Result<Vec<u8>, Error> {
        let mut h = tar::Header::new_ustar();
        // Raw: the tar crate would drop the leading "./".
        h.as_mut_bytes()[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_704_164_645);
        h.set_cksum();
        Ok(h.as_bytes().to_vec())
    };
    let record = b"30 mtime=1704164645.123456789\n";
    let mut seed = block("./PaxHeaders/d", tar::EntryType::XHeader, record.len() as u64, 0o644)?;
    seed.extend_from_slice(record);
    seed.resize(1024, 0);
    seed.extend(block("./d/", tar::EntryType::Directory, 0, 0o755)?);
    seed.extend(block("a", tar::EntryType::Regular, 5, 0o644)?);
    Ok(seed)
}

/// Runs a command once (its stdout dropped) and returns how long it took.
fn timed(cmd: &mut Command) -> Result<Duration, Error> {
    cmd.stdout(Stdio::null());
    let start = Instant::now();
    run(cmd)?;
    Ok(start.elapsed())
}

/// Lets the previous run's writeback finish so it does not slow the next,
/// then readies memory for the next run's page cache.
///
/// In a VM, memory the guest has not touched lately (or handed back to the
/// host) costs a host fault on first touch: here writing into such pages
/// runs at a third of the speed, so a run that fills the page cache from
/// cold memory measured the host, and runs got slower as a benchmark went
/// on (GNU tar -x from 0.4 s to 1.8 s). Touching 2 GiB in /dev/shm and
/// freeing it just before each run gives every run warm pages.
fn sync() {
    let _ = Command::new("sync").status();
    let warm = Path::new("/dev/shm/strata-bench-warm");
    if let Ok(mut f) = std::fs::File::create(warm) {
        let block = vec![0u8; 1 << 20];
        for _ in 0..2048 {
            if std::io::Write::write_all(&mut f, &block).is_err() {
                break;
            }
        }
        drop(f);
        let _ = std::fs::remove_file(warm);
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Times one command `runs` times and returns the median.
fn time_median(runs: usize, mut make: impl FnMut() -> Command) -> Result<Duration, Error> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut cmd = make();
        cmd.stdout(Stdio::null());
        let start = Instant::now();
        run(&mut cmd)?;
        times.push(start.elapsed());
    }
    Ok(median(times))
}

fn bench_tar_split(args: &[String]) -> Result<(), Error> {
    let runs: usize = flag(args, "--runs").map_or(Ok(5), str::parse)?;
    require("tar-split", "tar-split")?;
    require("tar", "tar")?;
    let root = workspace_root();
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "strata-cli"])
        .current_dir(&root))?;
    let strata = root.join("target/release/strata");
    let work = root.join("target/bench/tar-split");
    std::fs::create_dir_all(&work)?;

    let tar = match flag(args, "--tar") {
        Some(path) => PathBuf::from(path),
        None => {
            let tar = work.join("usr.tar");
            if !tar.exists() {
                eprintln!("making {} from /usr (about 1 GiB)", tar.display());
                let partial = work.join("usr.tar.partial");
                run(Command::new("tar")
                    .args(["--format=gnu", "-cf"])
                    .arg(&partial)
                    .args([
                        "-C",
                        "/",
                        "usr/lib/x86_64-linux-gnu",
                        "usr/bin",
                        "usr/share/doc",
                    ]))?;
                std::fs::rename(&partial, &tar)?;
            }
            tar
        }
    };
    let extracted = work.join("root");
    if !extracted.exists() {
        let partial = work.join("root.partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        run(Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&partial))?;
        std::fs::rename(&partial, &extracted)?;
    }
    let size = std::fs::metadata(&tar)?.len();
    // Bring the tar and the extracted tree into the page cache for both tools alike.
    run(Command::new("cat").arg(&tar).stdout(Stdio::null()))?;
    run(Command::new("tar")
        .arg("-cf")
        .arg("/dev/null")
        .arg("-C")
        .arg(&extracted)
        .arg("."))?;

    let go_meta = work.join("go.json.gz");
    let strata_meta = work.join("strata.json.gz");
    let disasm_go = || {
        let mut c = Command::new("tar-split");
        c.arg("disasm")
            .arg("--output")
            .arg(&go_meta)
            .arg(&tar)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let disasm_strata = || {
        let mut c = Command::new(&strata);
        c.args(["tar-split", "disasm", "--output"])
            .arg(&strata_meta)
            .arg(&tar)
            .stdout(Stdio::null());
        c
    };
    let asm_go = |out: &Path| {
        let mut c = Command::new("tar-split");
        c.arg("asm")
            .arg("--input")
            .arg(&go_meta)
            .arg("--path")
            .arg(&extracted)
            .arg("--output")
            .arg(out);
        c.stderr(Stdio::null());
        c
    };
    let asm_strata = |out: &Path| {
        let mut c = Command::new(&strata);
        c.args(["tar-split", "asm", "--input"])
            .arg(&strata_meta)
            .arg("--path")
            .arg(&extracted)
            .arg("--output")
            .arg(out);
        c
    };

    // Check both outputs once before timing anything.
    run(&mut disasm_go())?;
    run(&mut disasm_strata())?;
    for (name, mut cmd) in [
        ("tar-split", asm_go(&work.join("go.tar"))),
        ("strata", asm_strata(&work.join("strata.tar"))),
    ] {
        run(&mut cmd)?;
        let out = work.join(if name == "strata" {
            "strata.tar"
        } else {
            "go.tar"
        });
        if !same_file(&out, &tar)? {
            return Err(format!("{name} asm did not reproduce {}", tar.display()).into());
        }
        std::fs::remove_file(out)?;
    }

    let null = Path::new("/dev/null");
    println!(
        "tar-split benchmark: {} ({:.0} MiB), median of {runs} runs, output to /dev/null",
        tar.display(),
        mib(size)
    );
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "command", "tar-split s", "MiB/s", "strata s", "MiB/s", "ratio"
    );
    for (label, go, ours) in [
        (
            "disasm",
            time_median(runs, disasm_go)?,
            time_median(runs, disasm_strata)?,
        ),
        (
            "asm",
            time_median(runs, || asm_go(null))?,
            time_median(runs, || asm_strata(null))?,
        ),
    ] {
        println!(
            "{label:<8} {:>12.3} {:>12.0} {:>12.3} {:>12.0} {:>7.2}x",
            go.as_secs_f64(),
            mib(size) / go.as_secs_f64(),
            ours.as_secs_f64(),
            mib(size) / ours.as_secs_f64(),
            go.as_secs_f64() / ours.as_secs_f64()
        );
    }
    Ok(())
}

/// `strata fsverity digest` against `fsverity digest` on the same 1 GiB
/// file, and both against the machine's raw SHA-256 throughput (the bound).
fn bench_fsverity(args: &[String]) -> Result<(), Error> {
    use sha2::Digest as _;
    use std::io::Write as _;
    let runs: usize = flag(args, "--runs").map_or(Ok(5), str::parse)?;
    require("fsverity", "fsverity")?;
    let root = workspace_root();
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "strata-cli"])
        .current_dir(&root))?;
    let strata = root.join("target/release/strata");
    let work = root.join("target/bench/fsverity");
    std::fs::create_dir_all(&work)?;
    let file = work.join("1gib.bin");
    const SIZE: u64 = 1 << 30;
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(SIZE) {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..(SIZE >> 20) {
            for chunk in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            out.write_all(&block)?;
        }
        out.flush()?;
    }
    run(Command::new("cat").arg(&file).stdout(Stdio::null()))?;

    let ours = Command::new(&strata)
        .args(["fsverity", "digest"])
        .arg(&file)
        .output()?;
    let theirs = Command::new("fsverity").arg("digest").arg(&file).output()?;
    if !ours.status.success() || ours.stdout != theirs.stdout {
        return Err(format!(
            "digests differ: strata {:?}, fsverity {:?}",
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout)
        )
        .into());
    }

    let go = time_median(runs, || {
        let mut c = Command::new("fsverity");
        c.arg("digest").arg(&file);
        c
    })?;
    let us = time_median(runs, || {
        let mut c = Command::new(&strata);
        c.args(["fsverity", "digest"]).arg(&file);
        c
    })?;
    let sha256sum = time_median(runs, || {
        let mut c = Command::new("sha256sum");
        c.arg(&file);
        c
    })?;
    // In-process SHA-256 over a buffer already in memory: the ceiling.
    let buf = vec![0x5au8; 256 << 20];
    let mut raw = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        std::hint::black_box(sha2::Sha256::digest(&buf));
        raw.push(start.elapsed());
    }
    raw.sort();
    let raw_mibs = 256.0 / raw[raw.len() / 2].as_secs_f64();

    let rate = |d: Duration| mib(SIZE) / d.as_secs_f64();
    println!(
        "fs-verity digest benchmark: {} (1 GiB), median of {runs} runs",
        file.display()
    );
    println!(
        "  fsverity digest         {:>8.3} s {:>8.0} MiB/s",
        go.as_secs_f64(),
        rate(go)
    );
    println!(
        "  strata fsverity digest  {:>8.3} s {:>8.0} MiB/s   ratio {:.2}x",
        us.as_secs_f64(),
        rate(us),
        go.as_secs_f64() / us.as_secs_f64()
    );
    println!(
        "  sha256sum (same file)   {:>8.3} s {:>8.0} MiB/s",
        sha256sum.as_secs_f64(),
        rate(sha256sum)
    );
    println!(
        "  raw SHA-256 in memory            {raw_mibs:>8.0} MiB/s   strata at {:.0}% of it",
        100.0 * rate(us) / raw_mibs
    );
    Ok(())
}

/// The upperdir differ against the walking differ on a real root
/// filesystem lower with a small change set, both on the same mount.
fn bench_overlay_diff(args: &[String]) -> Result<(), Error> {
    use cap_std::{ambient_authority, fs::Dir};
    use strata_overlaydiff::{LowerView, TarSink, UpperDiffer, WalkDiffer, XattrNamespace};
    let runs: usize = flag(args, "--runs").map_or(Ok(5), str::parse)?;
    let work = workspace_root().join("target/bench/overlay-diff");
    let lower = work.join("lower");
    if !lower.exists() {
        let partial = work.join("lower.partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        eprintln!(
            "copying /usr/bin, /usr/share/doc and /usr/lib/python3.11 into {}",
            lower.display()
        );
        for src in ["usr/bin", "usr/share/doc", "usr/lib/python3.11"] {
            run(Command::new("cp")
                .arg("-a")
                .arg("--parents")
                .arg(src)
                .arg(&partial)
                .current_dir("/"))?;
        }
        std::fs::rename(&partial, &lower)?;
    }
    let (upper, workdir, merged) = (work.join("upper"), work.join("work"), work.join("merged"));
    let _ = Command::new("umount")
        .arg(&merged)
        .stderr(Stdio::null())
        .status();
    for d in [&upper, &workdir] {
        let _ = std::fs::remove_dir_all(d);
    }
    for d in [&upper, &workdir, &merged] {
        std::fs::create_dir_all(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        workdir.display()
    );
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged))?;
    let result = (|| -> Result<(Duration, Duration, u64, usize), Error> {
        // A small change set: edits, additions, deletions, a chmod, an rm -rf.
        let doc = merged.join("usr/share/doc");
        let mut names: Vec<_> = std::fs::read_dir(&doc)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for (i, dir) in names.iter().take(60).enumerate() {
            let copyright = dir.join("copyright");
            match i % 4 {
                0 if copyright.is_file() => std::fs::write(&copyright, b"changed\n")?,
                1 if copyright.is_file() => std::fs::remove_file(&copyright)?,
                2 => std::fs::write(dir.join("added"), vec![7u8; 10_000])?,
                _ => {}
            }
        }
        std::fs::remove_dir_all(&names[61])?;
        std::fs::create_dir(&names[61])?;
        run(Command::new("chmod").arg("700").arg(merged.join("usr/bin")))?;

        let files = Command::new("sh")
            .arg("-c")
            .arg(format!("find {} | wc -l", lower.display()))
            .output()?;
        let count: u64 = String::from_utf8_lossy(&files.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let open = |p: &Path| Dir::open_ambient_dir(p, ambient_authority());
        let (lower_dir, upper_dir, merged_dir) = (open(&lower)?, open(&upper)?, open(&merged)?);
        let view = LowerView::new(vec![open(&lower)?], XattrNamespace::Trusted);
        let mut entries = 0;
        let mut time = |f: &mut dyn FnMut() -> Result<usize, Error>| -> Result<Duration, Error> {
            let mut t = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                entries = f()?;
                t.push(start.elapsed());
            }
            t.sort();
            Ok(t[t.len() / 2])
        };
        let upper_time = time(&mut || {
            let mut sink = TarSink::new(CountingSink::default());
            UpperDiffer::new(&upper_dir, &view, XattrNamespace::Trusted).diff(&mut sink)?;
            Ok(sink.finish()?.0)
        })?;
        let walk_time = time(&mut || {
            let mut sink = TarSink::new(CountingSink::default());
            WalkDiffer::new(&lower_dir, &merged_dir).diff(&mut sink)?;
            Ok(sink.finish()?.0)
        })?;
        Ok((upper_time, walk_time, count, entries))
    })();
    let _ = Command::new("umount").arg(&merged).status();
    let (upper_time, walk_time, count, bytes) = result?;
    println!(
        "overlay diff benchmark: lower {} ({count} entries), small change set, median of {runs} runs",
        lower.display()
    );
    println!(
        "  walking differ   {:>10.3} ms",
        walk_time.as_secs_f64() * 1e3
    );
    println!(
        "  upperdir differ  {:>10.3} ms   ratio {:.0}x   (layer {bytes} bytes)",
        upper_time.as_secs_f64() * 1e3,
        walk_time.as_secs_f64() / upper_time.as_secs_f64()
    );
    Ok(())
}

/// `strata convert --to zstd:chunked` against `skopeo copy
/// --dest-compress-format zstd:chunked` on the same real layer (from an OCI
/// layout, so skopeo reads the same uncompressed tar from disk).
fn bench_convert(args: &[String]) -> Result<(), Error> {
    use sha2::Digest as _;
    let runs: usize = flag(args, "--runs").map_or(Ok(3), str::parse)?;
    require("skopeo", "skopeo")?;
    let root = workspace_root();
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "strata-cli"])
        .current_dir(&root))?;
    let strata = root.join("target/release/strata");
    let work = root.join("target/bench/convert");
    std::fs::create_dir_all(&work)?;
    let tar = work.join("layer.tar");
    if !tar.exists() {
        let partial = work.join("layer.tar.partial");
        // umoci's docs make skopeo 1.9's zstd:chunked writer fail with
        // "short write" (a skopeo bug): left out, as CI installs umoci.
        run(Command::new("tar")
            .args(["--format=gnu", "--exclude=usr/share/doc/umoci", "-cf"])
            .arg(&partial)
            .args(["-C", "/", "usr/bin", "usr/share/doc"]))?;
        std::fs::rename(&partial, &tar)?;
    }
    let layer = std::fs::read(&tar)?;
    let hex = |b: &[u8]| {
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let src = work.join("oci-src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("blobs/sha256"))?;
    let layer_hex = hex(&layer);
    std::fs::copy(&tar, src.join("blobs/sha256").join(&layer_hex))?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{layer_hex}"]}},"config":{{}}}}"#
    );
    let config_hex = hex(config.as_bytes());
    std::fs::write(src.join("blobs/sha256").join(&config_hex), &config)?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer_hex}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_hex = hex(manifest.as_bytes());
    std::fs::write(src.join("blobs/sha256").join(&manifest_hex), &manifest)?;
    std::fs::write(
        src.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
            manifest.len()
        ),
    )?;
    std::fs::write(src.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    drop(layer);

    let dst = work.join("oci-dst");
    let skopeo = time_median(runs, || {
        let _ = std::fs::remove_dir_all(&dst);
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-compress-format", "zstd:chunked"])
            .arg(format!("oci:{}:latest", src.display()))
            .arg(format!("oci:{}:latest", dst.display()));
        c
    })?;
    let out = work.join("layer.zst");
    let ours = time_median(runs, || {
        let mut c = Command::new(&strata);
        c.arg("convert").arg(&tar).arg("-o").arg(&out);
        c
    })?;
    let size = std::fs::metadata(&tar)?.len();
    let out_size = std::fs::metadata(&out)?.len();
    println!(
        "convert benchmark: {} ({:.0} MiB uncompressed), median of {runs} runs",
        tar.display(),
        mib(size)
    );
    println!(
        "  skopeo copy --dest-compress-format zstd:chunked {:>8.3} s {:>7.0} MiB/s",
        skopeo.as_secs_f64(),
        mib(size) / skopeo.as_secs_f64()
    );
    println!(
        "  strata convert                                 {:>8.3} s {:>7.0} MiB/s   ratio {:.2}x   (blob {:.0} MiB)",
        ours.as_secs_f64(),
        mib(size) / ours.as_secs_f64(),
        skopeo.as_secs_f64() / ours.as_secs_f64(),
        mib(out_size)
    );
    Ok(())
}

/// Counts the bytes of tar written.
#[derive(Default)]
struct CountingSink(usize);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn same_file(a: &Path, b: &Path) -> Result<bool, Error> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// The store's crash and concurrency tests, longer than CI runs them:
/// 1000 SIGKILLs at random moments, then 4 writers and 4 readers for
/// `--seconds` (default 120).
fn soak(args: &[String]) -> Result<(), Error> {
    let kills: u64 = flag(args, "--kills").map_or(Ok(1000), str::parse)?;
    let seconds: u64 = flag(args, "--seconds").map_or(Ok(120), str::parse)?;
    run(Command::new(env!("CARGO"))
        .args(["test", "--release", "-p", "strata-cli", "--test", "store_stress", "--", "--nocapture", "--test-threads=1"])
        .env("STRATA_CRASH_KILLS", kills.to_string())
        .env("STRATA_STRESS_SECONDS", seconds.to_string())
        .current_dir(workspace_root()))
}

/// Runs every fuzz target for a while (needs a nightly toolchain and
/// cargo-fuzz; installs cargo-fuzz when missing).
fn fuzz(args: &[String]) -> Result<(), Error> {
    let seconds: u64 = flag(args, "--seconds").map_or(Ok(60), str::parse)?;
    let root = workspace_root();
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !has_fuzz.is_ok_and(|s| s.success()) {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let all: [(&str, &[&str]); 7] = [
        ("jsonstream", &["values"]),
        ("tarsplit", &["tar_reader", "metadata"]),
        ("toc", &["zstd_chunked", "nydus"]),
        ("overlaydiff", &["mount_options"]),
        ("layerstore", &["store_files"]),
        ("chunkfetch", &["registry_answers", "guessed_headers"]),
        ("dedup-cache", &["layer_index"]),
    ];
    for (dir, targets) in all {
        for &target in targets {
            eprintln!("fuzzing {dir}/{target} for {seconds}s");
            let corpus = root.join(dir).join("fuzz/corpus").join(target);
            std::fs::create_dir_all(&corpus)?;
            seed_corpus(dir, target, &corpus)?;
            run(Command::new("cargo")
                .args(["+nightly", "fuzz", "run", target])
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .current_dir(root.join(dir)))?;
        }
    }
    Ok(())
}

/// A small layer tar of what both TOC formats can list: a directory, a
/// file of several chunks, a symlink and a hard link.
fn toc_seed_tar() -> Result<Vec<u8>, Error> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h
    };
    b.append_data(&mut header(tar::EntryType::Directory, 0), "etc/", &[][..])?;
    let content: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    b.append_data(&mut header(tar::EntryType::Regular, content.len() as u64), "etc/data", &content[..])?;
    b.append_link(&mut header(tar::EntryType::Symlink, 0), "etc/link", "data")?;
    b.append_link(&mut header(tar::EntryType::Link, 0), "etc/same", "etc/data")?;
    Ok(b.into_inner()?)
}

/// Starts each corpus from real inputs so the fuzzer begins past the
/// header checksums.
fn seed_corpus(dir: &str, target: &str, corpus: &Path) -> Result<(), Error> {
    if dir == "toc" && target == "nydus" {
        let mut p = strata_toc::nydus::Packer::new(Vec::new());
        p.add("image.blob", &b"data"[..], false)?;
        p.add("image.boot", &b"boot"[..], true)?;
        std::fs::write(corpus.join("sample"), p.finish()?.0)?;
        return Ok(());
    }
    if dir == "jsonstream" {
        std::fs::write(corpus.join("records"), b"\x07{\"type\":2,\"payload\":\"dXN0YXI=\"}\n[1, \"a\\\"]\"] null")?;
        return Ok(());
    }
    if dir == "toc" {
        let seed = br#"{"version":1,"entries":[{"type":"reg","name":"f","size":3,"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","offset":10,"endOffset":20}]}"#;
        std::fs::write(corpus.join("toc.json"), seed)?;
        // Whole blobs, so that the readers get past their footers.
        let tar = toc_seed_tar()?;
        let mut blob = Vec::new();
        strata_toc::write_zstd_chunked(&tar[..], &mut blob, &strata_toc::WriteOptions::default())?;
        std::fs::write(corpus.join("zstd_chunked"), &blob)?;
        blob.clear();
        strata_toc::estargz::write_estargz(&tar[..], &mut blob, &strata_toc::estargz::EstargzOptions::default())?;
        std::fs::write(corpus.join("estargz"), &blob)?;
        return Ok(());
    }
    if dir == "dedup-cache" {
        let mut index = strata_dedup_cache::LayerIndex::default();
        index.push(strata_dedup_cache::Kind::File, &format!("sha256:{}", "ab".repeat(32)), "etc/hosts", 0, 10)?;
        std::fs::write(corpus.join("sample"), index.to_bytes())?;
        return Ok(());
    }
    if dir == "chunkfetch" && target == "guessed_headers" {
        std::fs::write(corpus.join("time_header_style"), time_header_style_seed()?)?;
        let split = tar_split_of(&strata_tarsplit::sample::every_entry_kind())?;
        let stored = strata_chunkfetch::LocalHeaders::from_tar_split(&split[..])?.to_stored();
        std::fs::write(corpus.join("stored_headers"), stored)?;
        // Falls through to the tar-split of a sample tar.
    } else if dir == "chunkfetch" {
        let seed = "--B\r\nContent-Range: bytes 0-4/10\r\n\r\nhello\r\n--B--\r\n";
        std::fs::write(corpus.join("multipart"), seed)?;
        std::fs::write(corpus.join("challenge"), r#"Bearer realm="https://a/token",service="r",scope="repository:x:pull""#)?;
        return Ok(());
    }
    if dir == "layerstore" {
        let seed = concat!(
            r#"[{"id":"aa","names":["n"],"created":"2026-01-01T00:00:00Z","diff-digest":"sha256:00","flags":{"incomplete":true}},"#,
            r#"{"id":"bb","parent":"aa","created":"2026-01-01T00:00:00Z"}]"#,
            "\0",
            r#"[{"id":"cc","layer":"bb","names":["img"],"big-data-names":["manifest"],"created":"2026-01-01T00:00:00Z"}]"#,
            "\0",
            r#"[{"id":"bb","path":"/m","count":2}]"#,
        );
        std::fs::write(corpus.join("sample"), seed)?;
        return Ok(());
    }
    if dir == "overlaydiff" {
        let seed = r"lowerdir=/l/a\:b:/l/c,upperdir=/u,workdir=/w,index=off,userxattr,redirect_dir=off,metacopy=off";
        std::fs::write(corpus.join("sample"), seed)?;
        return Ok(());
    }
    let tar = strata_tarsplit::sample::every_entry_kind();
    let seed = match target {
        "tar_reader" => tar,
        _ => tar_split_of(&tar)?,
    };
    std::fs::write(corpus.join("sample"), seed)?;
    Ok(())
}

/// The tar-split metadata of `tar`.
fn tar_split_of(tar: &[u8]) -> Result<Vec<u8>, Error> {
    let mut meta = strata_tarsplit::MetadataWriter::new(Vec::new());
    strata_tarsplit::disassemble(tar, std::io::sink(), &mut meta, &mut strata_tarsplit::DiscardPutter)?;
    Ok(meta.finish()?)
}
