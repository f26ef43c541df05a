//! `cargo xtask bench pull`: strata and podman (containers-storage 1.43,
//! partial pulls on) pull v1 and then v2 of the same zstd:chunked image
//! from a local docker-registry, each through its own counting proxy. v2
//! changes about 1 % of v1's files. Prints, for the v2 pull, the time and
//! the bytes the registry served, and the ratios.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use strata_test_support::{LayerBlob, Mode, Proxy, RegistryServer, add_image, skopeo_copy};

use crate::{Error, flag, require, run, timed, workspace_root};

/// A tree of real files, and a copy where every 97th file changed.
fn make_trees(work: &Path) -> Result<(), Error> {
    let v1 = work.join("v1");
    if v1.join("usr").exists() {
        return Ok(());
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
        if i % 97 == 0 {
            let p = v2.join(f);
            let mut bytes = std::fs::read(&p)?;
            bytes.extend_from_slice(format!("\n# changed in v2 ({i})\n").as_bytes());
            std::fs::write(&p, bytes)?;
            changed += 1;
        }
    }
    eprintln!("v2 changes {changed} of {} files", files.len());
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
            threads: None,
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

pub fn bench_pull(args: &[String]) -> Result<(), Error> {
    let runs: usize = flag(args, "--runs").map_or(Ok(3), str::parse)?;
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
    let mut v2_size = 0;
    if !layout.join("index.json").exists() {
        for tag in ["v1", "v2"] {
            let tar = tar_of(&work.join(tag))?;
            let (blob, size) = chunked(&tar)?;
            eprintln!("{tag}: {} MiB tar, {} MiB zstd:chunked", tar.len() >> 20, size >> 20);
            add_image(&layout, tag, &[blob]);
        }
    }
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))? {
        v2_size = v2_size.max(entry?.metadata()?.len());
    }
    let server = RegistryServer::start();
    for tag in ["v1", "v2"] {
        skopeo_copy(&format!("oci:{}:{tag}", layout.display()), &format!("docker://{}/bench:{tag}", server.addr));
    }

    let mut strata_times = Vec::new();
    let mut podman_times = Vec::new();
    let (mut strata_bytes, mut podman_bytes) = (0, 0);
    for _ in 0..runs {
        let scratch = tempfile::tempdir_in(&work)?;
        // podman: its own overlay store with partial pulls on.
        let proxy = Proxy::start(&server.addr, Mode::Pass);
        let conf = scratch.path().join("storage.conf");
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\"}}\n",
                scratch.path().join("podman/graph").display(),
                scratch.path().join("podman/run").display()
            ),
        )?;
        let podman = |tag: &str| {
            let mut c = Command::new("podman");
            c.env("CONTAINERS_STORAGE_CONF", &conf)
                .args(["--events-backend", "none", "pull", "--quiet", "--tls-verify=false"])
                .arg(format!("{}/bench:{tag}", proxy.addr));
            c
        };
        timed(&mut podman("v1"))?;
        let before = proxy.body_bytes.load(Ordering::Relaxed);
        podman_times.push(timed(&mut podman("v2"))?);
        podman_bytes = proxy.body_bytes.load(Ordering::Relaxed) - before;
        let _ = Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args(["--events-backend", "none", "system", "reset", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();

        // strata: an overlay store too.
        let proxy = Proxy::start(&server.addr, Mode::Pass);
        let graph = scratch.path().join("strata/graph");
        let run_dir = scratch.path().join("strata/run");
        let pull = |tag: &str| {
            let mut c = Command::new(&strata);
            c.arg("--root")
                .arg(&graph)
                .arg("--runroot")
                .arg(&run_dir)
                .args(["--driver", "overlay", "pull", "--tls-verify=false"])
                .arg(format!("docker://{}/bench:{tag}", proxy.addr));
            c
        };
        timed(&mut pull("v1"))?;
        let before = proxy.body_bytes.load(Ordering::Relaxed);
        strata_times.push(timed(&mut pull("v2"))?);
        strata_bytes = proxy.body_bytes.load(Ordering::Relaxed) - before;
        let _ = Command::new("umount").arg("-R").arg(graph.join("overlay")).stderr(Stdio::null()).status();
    }
    strata_times.sort();
    podman_times.sort();
    let (s, p) = (strata_times[runs / 2].as_secs_f64(), podman_times[runs / 2].as_secs_f64());
    println!("v2 blob {:.1} MiB; median of {runs}", v2_size as f64 / (1u64 << 20) as f64);
    println!("  podman pull v2: {p:.2} s, {podman_bytes} bytes served");
    println!("  strata pull v2: {s:.2} s, {strata_bytes} bytes served (diffID verified)");
    println!(
        "  strata is {:.2}x podman's speed; fetches {:.2}x podman's bytes",
        p / s,
        strata_bytes as f64 / podman_bytes.max(1) as f64
    );
    Ok(())
}
