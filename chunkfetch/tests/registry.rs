//! Range reads from a real `docker-registry` (Debian's distribution 2.8) on
//! 127.0.0.1, with images pushed by skopeo, through a loopback proxy that
//! imitates registries of the wild: multi-range refused with 400 (GCR), 501
//! (GHCR) or 416 (zot), Range ignored (S3, minio), token auth, and broken
//! answers (truncated bodies, a wrong multipart boundary).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use strata_chunkfetch::{ByteRange, Error, Planner, RangeSource, Registry, RegistryOptions};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (loudly) when the tools are missing, unless CI demands them.
fn tools_or_skip() -> bool {
    let missing: Vec<&str> = ["docker-registry", "skopeo"].into_iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("STRATA_REQUIRE_TOOLS").is_some() {
        panic!("missing {missing:?} (apt-get install -y docker-registry skopeo)");
    }
    eprintln!("SKIPPED: {missing:?} not installed (apt-get install -y docker-registry skopeo)");
    false
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A docker-registry on 127.0.0.1, stopped on drop.
struct RegistryServer {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl RegistryServer {
    fn start() -> RegistryServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        RegistryServer { child, addr, _dir: dir }
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an OCI layout holding one image whose only layer is `layer`.
fn layout_with_layer(dir: &Path, layer: &[u8]) -> (String, String) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).expect("blob");
        d
    };
    let layer_digest = put(layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = put(manifest.as_bytes());
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
            manifest.len()
        ),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    (layer_digest, manifest_digest)
}

/// How the proxy misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Multi-range requests refused with this status.
    RefuseMulti(u16),
    /// Range dropped: the registry answers 200 with the whole blob.
    IgnoreRange,
    /// Blob bodies cut short.
    Truncate,
    /// The multipart boundary in Content-Type is not the body's.
    BadBoundary,
    /// Bearer token required, served by the proxy itself.
    Token,
}

/// A one-request-per-connection HTTP proxy in front of the registry that
/// counts the body bytes it passes back.
struct Proxy {
    addr: String,
    body_bytes: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: &str, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let body_bytes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (upstream, counter, log, me) = (upstream.to_owned(), body_bytes.clone(), requests.clone(), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (upstream, counter, log, me) = (upstream.clone(), counter.clone(), log.clone(), me.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, mode, &counter, &log, &me);
                });
            }
        });
        Proxy { addr, body_bytes, requests }
    }

    fn ranged_requests(&self) -> usize {
        self.requests.lock().expect("lock").iter().filter(|r| r.contains("range:")).count()
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn serve(conn: TcpStream, upstream: &str, mode: Mode, counter: &AtomicU64, log: &Mutex<Vec<String>>, me: &str) -> std::io::Result<()> {
    let mut client = BufReader::new(conn.try_clone()?);
    let head = read_head(&mut client)?;
    let mut out = conn;
    let request_line = head.first().cloned().unwrap_or_default();
    let headers: Vec<(String, String)> = head[1..]
        .iter()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect();
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let range = get("range");
    log.lock().expect("lock").push(format!("{request_line} range:{}", range.clone().unwrap_or_default()).replace("range:", if range.is_some() { "range:" } else { "" }));

    if mode == Mode::Token {
        if request_line.starts_with("GET /token") {
            let body = r#"{"token":"let-me-in","expires_in":300}"#;
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
            return Ok(());
        }
        if get("authorization").as_deref() != Some("Bearer let-me-in") {
            write!(
                out,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
    }
    if let (Mode::RefuseMulti(status), Some(r)) = (mode, &range)
        && r.contains(',')
    {
        write!(out, "HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    write!(up, "{request_line}\r\n")?;
    for (k, v) in &headers {
        if k == "connection" || (k == "range" && mode == Mode::IgnoreRange) {
            continue;
        }
        write!(up, "{k}: {v}\r\n")?;
    }
    write!(up, "connection: close\r\n\r\n")?;
    let mut upr = BufReader::new(up);
    let mut resp = read_head(&mut upr)?;
    if mode == Mode::BadBoundary {
        for l in &mut resp {
            if l.to_ascii_lowercase().starts_with("content-type: multipart/byteranges") {
                *l = "Content-Type: multipart/byteranges; boundary=not-the-real-one".into();
            }
        }
    }
    for l in &resp {
        write!(out, "{l}\r\n")?;
    }
    write!(out, "\r\n")?;
    let is_blob = request_line.contains("/blobs/");
    let mut buf = [0u8; 16 << 10];
    let mut sent = 0u64;
    loop {
        let n = upr.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let n = if mode == Mode::Truncate && is_blob { n.min(100usize.saturating_sub(sent as usize)) } else { n };
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
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
    let _ = PathBuf::new();
}
