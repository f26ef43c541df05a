//! `cargo xtask bench push`: the same image (a real root-filesystem tree,
//! 170 MB of tar, the one `bench pull` builds) pushed to a local
//! docker-registry by `strata push` and by `skopeo copy`, both from the
//! same store (strata's store is a containers-storage store, which skopeo
//! reads as `containers-storage:[vfs@GRAPH+RUN]`), per layer compression,
//! each to a fresh registry. Both rebuild the layer from its tar-split and
//! compress it. Prints the times and the ratio (skopeo's time / strata's).
//! (From the OCI layout, skopeo would copy the zstd blob as it is for
//! `none` and `zstd`: no work to compare.)

use std::process::Command;

use strata_test_support::RegistryServer;

use crate::{Error, flag, require, run, timed, workspace_root};

pub fn bench_push(args: &[String]) -> Result<(), Error> {
    let runs: usize = flag(args, "--runs").map_or(Ok(3), str::parse)?;
    let only = flag(args, "--compress");
    for (tool, package) in [("skopeo", "skopeo"), ("docker-registry", "docker-registry")] {
        require(tool, package)?;
    }
    let root = workspace_root();
    let layout = root.join("target/bench/pull/layout");
    if !layout.join("index.json").exists() {
        return Err("run `cargo xtask bench pull` first: it builds the image this benchmark pushes".into());
    }
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "strata-cli"])
        .current_dir(&root))?;
    let strata = root.join("target/release/strata");
    let work = root.join("target/bench/push");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let store = |c: &mut Command| {
        c.arg("--root").arg(work.join("graph")).arg("--runroot").arg(work.join("run")).args(["--driver", "vfs"]);
    };
    let mut pull = Command::new(&strata);
    store(&mut pull);
    run(pull.arg("pull").arg(format!("oci:{}:v1", layout.display())))?;
    println!("push of one 170 MB layer from one store to a fresh local docker-registry each time; median of {runs}");
    let source = format!("containers-storage:[vfs@{}+{}]localhost/layout:v1", work.join("graph").display(), work.join("run").display());
    for (compress, skopeo_args) in [
        // skopeo 1.9 gzips layers it sends to a registry even when asked
        // to decompress: this row compares strata's plain upload with that.
        ("none", vec!["--dest-decompress"]),
        ("gzip", vec!["--dest-compress", "--dest-compress-format", "gzip"]),
        ("zstd", vec!["--dest-compress", "--dest-compress-format", "zstd"]),
        ("zstd:chunked", vec!["--dest-compress", "--dest-compress-format", "zstd:chunked"]),
    ] {
        if only.is_some_and(|c| c != compress) {
            continue;
        }
        let repo = compress.replace(':', "-");
        let mut strata_times = Vec::new();
        let mut skopeo_times = Vec::new();
        let (mut strata_size, mut skopeo_size) = (0, 0);
        for i in 0..runs {
            // A registry of its own for every push: nothing is already
            // there, and skopeo's blob-info cache knows no copy to mount.
            let server = RegistryServer::start();
            let mut push = Command::new(&strata);
            store(&mut push);
            push.args(["push", "localhost/layout:v1"])
                .arg(format!("docker://{}/strata-{repo}-{i}:v1", server.addr))
                .args(["--tls-verify=false", "--compress", compress]);
            strata_times.push(timed(&mut push)?);
            strata_size = server.biggest_blob();
            drop(server);
            let server = RegistryServer::start();
            let _ = std::fs::remove_dir_all("/var/lib/containers/cache");
            let mut copy = Command::new("skopeo");
            copy.args(["copy", "--quiet", "--dest-tls-verify=false"])
                .args(&skopeo_args)
                .arg(&source)
                .arg(format!("docker://{}/skopeo-{repo}-{i}:v1", server.addr));
            skopeo_times.push(timed(&mut copy)?);
            skopeo_size = server.biggest_blob();
        }
        strata_times.sort();
        skopeo_times.sort();
        let (s, k) = (strata_times[runs / 2].as_secs_f64(), skopeo_times[runs / 2].as_secs_f64());
        println!(
            "  {compress:>12}: strata push {s:.2} s, skopeo copy {k:.2} s: strata at {:.2}x skopeo's throughput (target >= 1.5); layer blob {:.1} MB vs {:.1} MB",
            k / s,
            strata_size as f64 / 1e6,
            skopeo_size as f64 / 1e6
        );
    }
    Ok(())
}
