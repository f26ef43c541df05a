//! Range reads from a real `docker-registry` (Debian's distribution 2.8) on
//! 127.0.0.1, with images pushed by skopeo, through a loopback proxy that
//! imitates registries of the wild: multi-range refused with 400 (GCR), 501
//! (GHCR) or 416 (zot), Range ignored (S3, minio), token auth, and broken
//! answers (truncated bodies, a wrong multipart boundary).

use std::io::Read;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_chunkfetch::{ByteRange, Error, Planner, RangeSource, Registry, RegistryOptions};
use strata_test_support::{Mode, Proxy, RegistryServer, digest, layout_with_layer};

fn tools_or_skip() -> bool {
    strata_test_support::tools_or_skip(&["docker-registry", "skopeo"])
}

/// A registry holding one image (`test/app:v1`) whose layer is `layer`.
fn registry_with(layer: &[u8]) -> (RegistryServer, String, String) {
    let server = RegistryServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (layer_digest, manifest_digest) = layout_with_layer(dir.path(), layer);
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", dir.path().display()))
        .arg(format!("docker://{}/test/app:v1", server.addr))
        .status()
        .expect("skopeo");
    assert!(status.success(), "skopeo copy to the registry failed");
    (server, layer_digest, manifest_digest)
}

fn plain(addr: &str) -> Registry {
    Registry::new(
        addr,
        RegistryOptions {
            tls_verify: false,
            max_attempts: 2,
            retry_delay: Duration::from_millis(10),
            ..RegistryOptions::default()
        },
    )
    .expect("client")
}

fn sample_layer() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// 200 scattered pieces of the blob.
fn pieces(len: u64) -> Vec<ByteRange> {
    (0..200).map(|i| ByteRange::new(i * (len / 200) + (i % 7) * 13, 1000 + (i % 5) * 300)).collect()
}

fn fetch_all(blob: &dyn RangeSource, pieces: &[ByteRange], planner: Planner) -> Result<(Vec<Vec<u8>>, strata_chunkfetch::FetchStats), Error> {
    let mut got = vec![Vec::new(); pieces.len()];
    let stats = planner.fetch(blob, pieces, &mut |i, r| r.read_to_end(&mut got[i]).map(drop))?;
    Ok((got, stats))
}

fn check(layer: &[u8], pieces: &[ByteRange], got: &[Vec<u8>]) {
    for (p, g) in pieces.iter().zip(got) {
        assert_eq!(g.as_slice(), &layer[p.offset as usize..(p.offset + p.length) as usize], "piece at {}", p.offset);
    }
}

#[test]
fn manifests_and_multi_range_reads_from_a_real_registry() {
    if !tools_or_skip() {
        return;
    }
    let layer = sample_layer();
    let (server, layer_digest, manifest_digest) = registry_with(&layer);
    let proxy = Proxy::start(&server.addr, Mode::Pass);
    let registry = plain(&proxy.addr);

    let by_tag = registry.manifest("test/app", "v1").expect("manifest by tag");
    assert_eq!(by_tag.digest, manifest_digest);
    assert_eq!(by_tag.media_type, "application/vnd.oci.image.manifest.v1+json");
    let by_digest = registry.manifest("test/app", &manifest_digest).expect("manifest by digest");
    assert_eq!(by_digest.bytes, by_tag.bytes);
    let missing = registry.manifest("test/app", "v9").expect_err("no such tag");
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");

    let blob = registry.blob("test/app", &layer_digest, None).expect("blob");
    assert_eq!(blob.size().expect("HEAD"), layer.len() as u64);
    let wanted = pieces(layer.len() as u64);
    let before = proxy.body_bytes.load(Ordering::Relaxed);
    let (got, stats) = fetch_all(&blob, &wanted, Planner::default()).expect("fetch");
    check(&layer, &wanted, &got);
    assert_eq!(stats.requests, 1, "one multi-range request");
    let wanted_bytes: u64 = wanted.iter().map(|p| p.length).sum();
    let moved = proxy.body_bytes.load(Ordering::Relaxed) - before;
    // The multipart framing costs about 150 bytes a part.
    assert!(moved < wanted_bytes + 200 * 200, "{moved} bytes for {wanted_bytes} wanted");
    assert!(moved >= wanted_bytes);

    let whole = {
        let mut v = Vec::new();
        blob.open().expect("GET").read_to_end(&mut v).expect("read");
        v
    };
    assert_eq!(digest(&whole), layer_digest);
    let unknown = registry.blob("test/app", &digest(b"nothing"), Some(5)).expect("blob");
    let err = fetch_all(&unknown, &[ByteRange::new(0, 2)], Planner::default()).expect_err("unknown blob");
    assert!(err.to_string().contains("BLOB_UNKNOWN"), "{err}");
}

#[test]
fn registries_that_refuse_or_ignore_multi_range_still_serve_every_piece() {
    if !tools_or_skip() {
        return;
    }
    let layer = sample_layer();
    let (server, layer_digest, _) = registry_with(&layer);
    let wanted = pieces(layer.len() as u64);
    for mode in [Mode::RefuseMulti(400), Mode::RefuseMulti(501), Mode::RefuseMulti(416), Mode::IgnoreRange] {
        let proxy = Proxy::start(&server.addr, mode);
        let registry = plain(&proxy.addr);
        let blob = registry.blob("test/app", &layer_digest, Some(layer.len() as u64)).expect("blob");
        let (got, stats) = fetch_all(&blob, &wanted, Planner::default()).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        check(&layer, &wanted, &got);
        let moved = proxy.body_bytes.load(Ordering::Relaxed);
        assert!(moved <= layer.len() as u64, "{mode:?}: {moved} bytes moved for a {} byte blob", layer.len());
        if let Mode::RefuseMulti(_) = mode {
            // Single ranges with merged neighbours, not the whole span.
            assert!(moved < layer.len() as u64 - 100_000, "{mode:?}: {moved} bytes");
            assert!(stats.requests <= 32, "{mode:?}: {stats:?}");
        }
        eprintln!("{mode:?}: {} requests, {} refused, {moved} bytes", stats.requests, stats.refused);
        if mode == Mode::IgnoreRange {
            assert!(blob.sends_whole_blob());
            assert_eq!(proxy.ranged_requests(), 1, "{mode:?}: the whole blob once");
        }
    }
}

#[test]
fn broken_answers_are_clear_errors() {
    if !tools_or_skip() {
        return;
    }
    let layer = sample_layer();
    let (server, layer_digest, _) = registry_with(&layer);
    let wanted = pieces(layer.len() as u64);
    for mode in [Mode::Truncate, Mode::BadBoundary] {
        let proxy = Proxy::start(&server.addr, mode);
        let blob = plain(&proxy.addr).blob("test/app", &layer_digest, Some(layer.len() as u64)).expect("blob");
        let err = fetch_all(&blob, &wanted, Planner::default()).expect_err("broken answer");
        assert!(matches!(err, Error::Protocol { .. }), "{mode:?}: {err}");
        eprintln!("{mode:?}: {err}");
    }
    // A range past the end of the blob: the registry's 416, named.
    let proxy = Proxy::start(&server.addr, Mode::Pass);
    let blob = plain(&proxy.addr).blob("test/app", &layer_digest, None).expect("blob");
    let err = fetch_all(&blob, &[ByteRange::new(layer.len() as u64 + 10, 5)], Planner::default()).expect_err("416");
    assert!(err.to_string().contains("416"), "{err}");
}

#[test]
fn bearer_tokens_are_fetched_from_the_challenge_realm() {
    if !tools_or_skip() {
        return;
    }
    let layer = sample_layer();
    let (server, layer_digest, manifest_digest) = registry_with(&layer);
    let proxy = Proxy::start(&server.addr, Mode::Token);
    let registry = plain(&proxy.addr);
    assert_eq!(registry.manifest("test/app", "v1").expect("manifest").digest, manifest_digest);
    let blob = registry.blob("test/app", &layer_digest, Some(layer.len() as u64)).expect("blob");
    let wanted = pieces(layer.len() as u64);
    let (got, _) = fetch_all(&blob, &wanted, Planner::default()).expect("fetch with a token");
    check(&layer, &wanted, &got);
    let log = proxy.requests.lock().expect("lock").clone();
    assert_eq!(log.iter().filter(|r| r.starts_with("GET /token")).count(), 1, "one token, reused: {log:?}");
}

#[test]
fn an_oci_layout_serves_the_same_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = sample_layer();
    let (layer_digest, manifest_digest) = layout_with_layer(dir.path(), &layer);
    let layout = strata_chunkfetch::OciLayout::open(dir.path()).expect("layout");
    let desc = layout.resolve(Some("v1")).expect("v1");
    assert_eq!(desc.digest, manifest_digest);
    assert!(layout.resolve(Some("v2")).is_err());
    layout.read_blob(&manifest_digest, 1 << 20).expect("manifest");
    let blob = layout.blob(&layer_digest).expect("blob");
    let wanted = pieces(layer.len() as u64);
    let (got, _) = fetch_all(&blob, &wanted, Planner::default()).expect("fetch");
    check(&layer, &wanted, &got);
    let escape = layout.blob("sha256:../../etc/passwd");
    assert!(escape.is_err());
}
