//! Fixtures for tests that need the real reference tools: a
//! `docker-registry` on 127.0.0.1, OCI layouts, and a loopback proxy that
//! imitates registries of the wild.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod guest;

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (loudly) when `tools` are missing, unless CI demands them
/// (`STRATA_REQUIRE_TOOLS`).
pub fn tools_or_skip(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("STRATA_REQUIRE_TOOLS").is_some() {
        panic!("missing {missing:?} (see .ci/run for the packages)");
    }
    eprintln!("SKIPPED: {missing:?} not installed (see .ci/run for the packages)");
    false
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A docker-registry on 127.0.0.1, stopped on drop.
#[derive(Debug)]
pub struct RegistryServer {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl RegistryServer {
    pub fn start() -> RegistryServer {
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

    /// The size of the biggest blob the registry stores (an image's layer,
    /// for the one-layer images of the benchmarks).
    pub fn biggest_blob(&self) -> u64 {
        fn walk(dir: &Path, biggest: &mut u64) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    walk(&e.path(), biggest);
                } else if e.file_name() == "data" {
                    *biggest = (*biggest).max(meta.len());
                }
            }
        }
        let mut biggest = 0;
        walk(&self._dir.path().join("data/docker/registry/v2/blobs"), &mut biggest);
        biggest
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an OCI layout holding one image (tag `v1`) whose only layer is
/// `layer`, as an uncompressed tar layer.
pub fn layout_with_layer(dir: &Path, layer: &[u8]) -> (String, String) {
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
pub enum Mode {
    Pass,
    /// Multi-range requests refused with this status.
    RefuseMulti(u16),
    /// Range dropped: the registry answers 200 with the whole blob.
    IgnoreRange,
    /// Blob bodies cut short.
    Truncate,
    /// One byte of every blob body flipped (the 1000th, or the last when
    /// shorter).
    WrongBytes,
    /// The multipart boundary in Content-Type is not the body's.
    BadBoundary,
    /// Bearer token required, served by the proxy itself.
    Token,
    /// Blob uploads (PUT to an upload URL) answered with 500 after the
    /// body is read.
    RejectUploads,
    /// Every second PATCH to an upload URL answered with 503 after its
    /// body is read (a transient failure: sending it again succeeds).
    FlakyPatches,
}

/// A one-request-per-connection HTTP proxy in front of the registry that
/// counts the body bytes it passes back.
#[derive(Debug)]
pub struct Proxy {
    pub addr: String,
    pub body_bytes: Arc<AtomicU64>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

/// A link of limited bandwidth that every connection through a proxy
/// shares: bytes leave in order, no faster than the rate, and an idle link
/// saves up no credit.
#[derive(Debug)]
struct Pacer {
    bytes_per_second: u64,
    /// When the link is free again.
    free_at: Mutex<Instant>,
}

impl Pacer {
    fn wait(&self, n: usize) {
        let done = {
            let mut free_at = self.free_at.lock().expect("lock");
            let start = (*free_at).max(Instant::now());
            *free_at = start + Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
            *free_at
        };
        let now = Instant::now();
        if done > now {
            std::thread::sleep(done - now);
        }
    }
}

impl Proxy {
    pub fn start(upstream: &str, mode: Mode) -> Proxy {
        Proxy::launch(upstream, mode, None)
    }

    /// A proxy whose answers share a link of `bits_per_second` (1 Gbit/s,
    /// 50 Mbit/s: what a pull meets outside a data centre).
    pub fn start_paced(upstream: &str, mode: Mode, bits_per_second: u64) -> Proxy {
        let pacer = Pacer {
            bytes_per_second: (bits_per_second / 8).max(1),
            free_at: Mutex::new(Instant::now()),
        };
        Proxy::launch(upstream, mode, Some(Arc::new(pacer)))
    }

    fn launch(upstream: &str, mode: Mode, pacer: Option<Arc<Pacer>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let body_bytes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (upstream, counter, log, me) = (upstream.to_owned(), body_bytes.clone(), requests.clone(), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (upstream, counter, log, me) = (upstream.clone(), counter.clone(), log.clone(), me.clone());
                let pacer = pacer.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, mode, &counter, &log, &me, pacer.as_deref());
                });
            }
        });
        Proxy { addr, body_bytes, requests }
    }

    pub fn ranged_requests(&self) -> usize {
        self.requests.lock().expect("lock").iter().filter(|r| r.contains("range:")).count()
    }
}

/// Copies a chunked request body, framing included, up to its last chunk.
fn relay_chunked(from: &mut impl BufRead, to: &mut dyn Write) -> std::io::Result<()> {
    loop {
        let mut line = String::new();
        if from.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all(line.as_bytes())?;
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if from.read_line(&mut t)? == 0 {
                    return Ok(());
                }
                to.write_all(t.as_bytes())?;
                if t.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        std::io::copy(&mut from.take(size + 2), to)?;
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

fn serve(
    conn: TcpStream,
    upstream: &str,
    mode: Mode,
    counter: &AtomicU64,
    log: &Mutex<Vec<String>>,
    me: &str,
    pacer: Option<&Pacer>,
) -> std::io::Result<()> {
    // Small header writes must not wait on delayed ACKs (Nagle): the proxy
    // would then time itself, not the client.
    conn.set_nodelay(true)?;
    let mut client = BufReader::new(conn.try_clone()?);
    let head = read_head(&mut client)?;
    let mut out = std::io::BufWriter::with_capacity(64 << 10, conn);
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
    let chunked = get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let length: u64 = get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    if mode == Mode::RejectUploads
        && (request_line.starts_with("PUT ") || request_line.starts_with("PATCH "))
        && request_line.contains("/blobs/uploads/")
    {
        if chunked {
            relay_chunked(&mut client, &mut std::io::sink())?;
        } else {
            std::io::copy(&mut (&mut client).take(length), &mut std::io::sink())?;
        }
        write!(out, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    if mode == Mode::FlakyPatches && request_line.starts_with("PATCH ") && request_line.contains("/blobs/uploads/") {
        let patches = log.lock().expect("lock").iter().filter(|l| l.starts_with("PATCH ")).count();
        if patches % 2 == 0 {
            if chunked {
                relay_chunked(&mut client, &mut std::io::sink())?;
            } else {
                std::io::copy(&mut (&mut client).take(length), &mut std::io::sink())?;
            }
            write!(out, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        }
    }
    if let (Mode::RefuseMulti(status), Some(r)) = (mode, &range)
        && r.contains(',')
    {
        write!(out, "HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let up = TcpStream::connect(upstream)?;
    up.set_nodelay(true)?;
    let mut up = std::io::BufWriter::new(up);
    write!(up, "{request_line}\r\n")?;
    for (k, v) in &headers {
        if k == "connection" || (k == "range" && mode == Mode::IgnoreRange) {
            continue;
        }
        write!(up, "{k}: {v}\r\n")?;
    }
    write!(up, "connection: close\r\n\r\n")?;
    // Request bodies (uploads), chunked or by their Content-Length.
    if chunked {
        relay_chunked(&mut client, &mut up)?;
    } else {
        std::io::copy(&mut (&mut client).take(length), &mut up)?;
    }
    let up = up.into_inner().map_err(|e| e.into_error())?;
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
    out.flush()?;
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
        if mode == Mode::WrongBytes && is_blob && sent <= 999 && sent + n as u64 > 999 {
            buf[(999 - sent) as usize] ^= 0x55;
        }
        if let Some(pacer) = pacer {
            // What is buffered leaves first: the pacing is of the wire.
            out.flush()?;
            pacer.wait(n);
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}


/// A layer for [`add_image`]: the blob, its media type, the annotations on
/// its descriptor and its diffID.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub blob: Vec<u8>,
    pub media_type: String,
    pub annotations: Vec<(String, String)>,
    pub diff_id: String,
}

/// Adds an image tagged `tag` with `layers` to the OCI layout at `dir`
/// (created if needed). Returns the manifest digest.
pub fn add_image(dir: &Path, tag: &str, layers: &[LayerBlob]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).expect("blob");
        d
    };
    let json = |s: &str| format!("{s:?}");
    let diff_ids: Vec<String> = layers.iter().map(|l| json(&l.diff_id)).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2026-11-29T00:00:00Z","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_digest = put(config.as_bytes());
    let descriptors: Vec<String> = layers
        .iter()
        .map(|l| {
            let d = put(&l.blob);
            let annotations: Vec<String> = l.annotations.iter().map(|(k, v)| format!("{}:{}", json(k), json(v))).collect();
            format!(
                r#"{{"mediaType":{},"digest":"{d}","size":{},"annotations":{{{}}}}}"#,
                json(&l.media_type),
                l.blob.len(),
                annotations.join(",")
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descriptors.join(",")
    );
    let manifest_digest = put(manifest.as_bytes());
    let entry = format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":{}}}}}"#,
        manifest.len(),
        json(tag)
    );
    let index_path = dir.join("index.json");
    let mut entries: Vec<String> = Vec::new();
    if let Ok(old) = std::fs::read_to_string(&index_path) {
        // Keep the other tags' entries (one per line, as written here).
        for line in old.lines().filter(|l| l.starts_with('{') && l.contains("\"digest\"") && !l.contains(&format!("\"org.opencontainers.image.ref.name\":{}", json(tag)))) {
            entries.push(line.trim_end_matches(',').to_owned());
        }
    }
    entries.push(entry);
    std::fs::write(&index_path, format!("{{\"schemaVersion\":2,\"manifests\":[\n{}\n]}}\n", entries.join(",\n"))).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    manifest_digest
}

/// Copies `from` to `to` with skopeo (digests preserved, plain HTTP).
pub fn skopeo_copy(from: &str, to: &str) {
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", from, to])
        .status()
        .expect("run skopeo");
    assert!(status.success(), "skopeo copy {from} {to} failed");
}

/// Every path below `root` with its type, mode, owner, size, content hash,
/// link target and (for non-directories) mtime: two trees extracted the
/// same way give equal maps.
pub fn tree_snapshot(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, rel: &str, out: &mut std::collections::BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(root.join(rel)).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
        names.sort();
        for name in names {
            let rel = if rel.is_empty() { name.to_string_lossy().into_owned() } else { format!("{rel}/{}", name.to_string_lossy()) };
            let path = root.join(&rel);
            let md = std::fs::symlink_metadata(&path).expect("stat");
            let kind = md.file_type();
            let mut desc = format!("mode={:o} uid={} gid={}", md.mode(), md.uid(), md.gid());
            if kind.is_symlink() {
                desc += &format!(" -> {}", std::fs::read_link(&path).expect("readlink").display());
            } else if kind.is_file() {
                let data = std::fs::read(&path).expect("read");
                desc += &format!(" {} {}", data.len(), digest(&data));
            }
            if !kind.is_dir() {
                desc += &format!(" mtime={}", md.mtime());
            }
            out.insert(rel.clone(), desc);
            if kind.is_dir() {
                walk(root, &rel, out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// Unmounts, retrying for a second while the mount is busy: a child that
/// another test thread forks holds the mount's descriptors for the instant
/// before it execs. As a last resort the mount is detached lazily.
pub fn unmount(point: &Path) {
    use rustix::mount::{unmount, UnmountFlags};
    for _ in 0..20 {
        match unmount(point, UnmountFlags::empty()) {
            Ok(()) => return,
            Err(rustix::io::Errno::BUSY) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("unmounting {}: {e}", point.display()),
        }
    }
    eprintln!("{} stayed busy for a second; detaching it", point.display());
    unmount(point, UnmountFlags::DETACH).expect("detach the mount");
}

/// A fresh filesystem of the given type (`ext4`, `xfs` with reflinks) on a
/// loop device, mounted in a temporary directory and gone on drop.
#[derive(Debug)]
pub struct LoopFs {
    dir: tempfile::TempDir,
}

impl LoopFs {
    /// `None` (said loudly) without root or the mkfs tool, unless CI
    /// demands them (`STRATA_REQUIRE_TOOLS`).
    pub fn new(kind: &str, mib: u64) -> Option<LoopFs> {
        LoopFs::with_features(kind, mib, &[])
    }

    /// The same, made with `mkfs` options besides the usual ones
    /// (`["-O", "verity"]`).
    pub fn with_features(kind: &str, mib: u64, mkfs_options: &[&str]) -> Option<LoopFs> {
        let mkfs = format!("mkfs.{kind}");
        if !tools_or_skip(&[&mkfs]) {
            return None;
        }
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            if std::env::var_os("STRATA_REQUIRE_TOOLS").is_some() {
                panic!("loop mounts need root");
            }
            eprintln!("SKIPPED: loop mounts need root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(mib << 20)).expect("image file");
        let mut make = Command::new(&mkfs);
        match kind {
            "xfs" => make.args(["-q", "-f", "-m", "reflink=1"]),
            _ => make.args(["-q", "-F"]),
        };
        let made = make.args(mkfs_options).arg(&image).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        assert!(made, "{mkfs} failed");
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).expect("mount point");
        let mounted = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&point).status();
        assert!(mounted.is_ok_and(|s| s.success()), "mounting the {kind} image failed");
        Some(LoopFs { dir })
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }

    /// KiB written to the device since the mount, as ext4 counts them
    /// (`/sys/fs/ext4/DEV/session_write_kbytes`).
    pub fn written_kib(&self) -> u64 {
        let out = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(self.path()).output().expect("findmnt");
        let source = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let device = source.rsplit('/').next().expect("a device name");
        let counter = format!("/sys/fs/ext4/{device}/session_write_kbytes");
        let text = std::fs::read_to_string(&counter).unwrap_or_else(|e| panic!("{counter}: {e}"));
        text.trim().parse().expect("a number")
    }

    /// Free bytes, as statvfs counts them.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(self.path()).output().expect("stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace().map(|v| v.parse::<u64>().expect("a number"));
        parts.next().expect("free blocks") * parts.next().expect("block size")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(self.path()).stderr(Stdio::null()).status();
    }
}
