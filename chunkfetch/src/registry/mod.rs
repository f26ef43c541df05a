//! An OCI distribution registry client: manifests, whole blobs and byte
//! ranges of blobs, with token auth, bounded retries and every way real
//! registries answer a multi-range request (see ../shared/spec/registry-ranges.md).

pub mod auth;

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use ureq::http::Response;
use ureq::{Agent, Body};

use crate::multipart::{ContentRange, Parts, boundary};
use crate::oci::{self, MANIFEST_MEDIA_TYPES, MAX_MANIFEST, valid_digest};
use crate::serve::serve_segment;
use crate::{ByteRange, Error, RangeSink, RangeSource, Result, check_ranges};
use auth::{Challenge, TokenAnswer, parse_challenges};

/// How to talk to a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// HTTPS with certificate checks; `false` talks plain HTTP (a local
    /// registry, skopeo's `--tls-verify=false`).
    pub tls_verify: bool,
    /// User name and password for Basic auth and token requests.
    pub credentials: Option<(String, String)>,
    /// Tries per request on connection errors, 429 and 5xx.
    pub max_attempts: u32,
    /// First delay between tries; doubles each time, at most 60 s.
    pub retry_delay: Duration,
    pub connect_timeout: Duration,
    /// Upload produced blobs in PATCH requests of this many bytes (the OCI
    /// chunked upload): a chunk that fails on a transient error is sent
    /// again, and registries that cap request sizes take the blob. `None`
    /// sends a blob in one streamed PATCH, which is faster.
    pub upload_chunk_size: Option<usize>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: true,
            credentials: None,
            max_attempts: 5,
            retry_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            upload_chunk_size: None,
        }
    }
}

/// A manifest or index as the registry sent it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// `sha256:` of `bytes`.
    pub digest: String,
}

/// A registry at one host. Cheap to clone; clones share connections and
/// tokens.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    agent: Agent,
    base: String,
    options: RegistryOptions,
    /// Tokens by scope, with when they stop being good.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// The last challenge the registry sent (reused where a registry sends
    /// 401 without one, as gcr.io does on resource URLs).
    challenge: Mutex<Option<Challenge>>,
}

enum Method {
    Get,
    Head,
}

impl Registry {
    /// A client for `host` (`name` or `name:port`).
    pub fn new(host: &str, options: RegistryOptions) -> Result<Registry> {
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(Error::Reference {
                reference: host.to_owned(),
                reason: "not a registry host".into(),
            });
        }
        let scheme = if options.tls_verify { "https" } else { "http" };
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(options.connect_timeout))
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .max_redirects(10)
            .build()
            .into();
        Ok(Registry {
            inner: Arc::new(Inner {
                agent,
                base: format!("{scheme}://{host}"),
                options,
                tokens: Mutex::new(HashMap::new()),
                challenge: Mutex::new(None),
            }),
        })
    }

    /// `scheme://host`.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// A manifest or index by tag or digest; a digest is checked against
    /// the bytes received.
    pub fn manifest(&self, repository: &str, reference: &str) -> Result<FetchedManifest> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.inner.base);
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let resp = self.send(Method::Get, &url, repository, &[("Accept", &accept)])?;
        let resp = ok_or_error(&url, resp, &format!("manifest {reference} of {repository}"))?;
        let header_type = header(&resp, "content-type").map(|t| t.split(';').next().unwrap_or("").trim().to_owned());
        let bytes = resp
            .into_body()
            .into_with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| transport(&url, e))?;
        let digest = oci::sha256_digest(&bytes);
        if valid_digest(reference) && digest != reference {
            return Err(Error::DigestMismatch {
                what: format!("manifest {reference} from {url}"),
                expected: reference.to_owned(),
                actual: digest,
            });
        }
        let media_type = match header_type {
            Some(t) if MANIFEST_MEDIA_TYPES.contains(&t.as_str()) => t,
            _ => oci::sniff_media_type(&bytes),
        };
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// A blob of `repository` as a range source. `size` from the
    /// descriptor saves a HEAD request.
    pub fn blob(&self, repository: &str, digest: &str, size: Option<u64>) -> Result<RegistryBlob> {
        if !valid_digest(digest) {
            return Err(Error::Invalid {
                what: format!("digest {digest:?}"),
                reason: "not a sha256 digest".into(),
            });
        }
        let size_cell = OnceLock::new();
        if let Some(s) = size {
            let _ = size_cell.set(s);
        }
        Ok(RegistryBlob {
            registry: self.clone(),
            repository: repository.to_owned(),
            url: format!("{}/v2/{repository}/blobs/{digest}", self.inner.base),
            size: size_cell,
            whole_only: AtomicBool::new(false),
            spool: Mutex::new(None),
            digest: digest.to_owned(),
            received: Arc::new(AtomicU64::new(0)),
            requests: AtomicU64::new(0),
        })
    }

    fn auth_header(&self, scope: &str) -> Option<String> {
        let tokens = self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, until)) = tokens.get(scope)
            && Instant::now() < *until
        {
            return Some(format!("Bearer {token}"));
        }
        drop(tokens);
        let challenge = self.inner.challenge.lock().unwrap_or_else(|p| p.into_inner());
        match (challenge.as_ref(), &self.inner.options.credentials) {
            (Some(c), Some((user, pass))) if c.scheme == "basic" => Some(basic(user, pass)),
            _ => None,
        }
    }

    /// Answers a 401: fetches a token for `scope` from the challenge's
    /// realm (or settles on Basic auth). False when nothing can be done.
    fn authenticate(&self, resp: &Response<Body>, scope: &str) -> Result<bool> {
        let scope = scope.to_owned();
        let fresh = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .find(|c| c.scheme == "bearer" || c.scheme == "basic");
        let challenge = {
            let mut stored = self.inner.challenge.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = fresh {
                *stored = Some(c);
            }
            stored.clone()
        };
        let Some(challenge) = challenge else { return Ok(false) };
        if challenge.scheme == "basic" {
            return Ok(self.inner.options.credentials.is_some());
        }
        let realm = challenge
            .param("realm")
            .ok_or_else(|| Error::protocol(&self.inner.base, "a Bearer challenge without a realm"))?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(Error::protocol(&self.inner.base, format!("token realm {realm:?} is not an HTTP URL")));
        }
        let mut req = self.inner.agent.get(realm).query("scope", &scope);
        if let Some(service) = challenge.param("service") {
            req = req.query("service", service);
        }
        if let Some((user, pass)) = &self.inner.options.credentials {
            req = req.query("account", user).header("Authorization", basic(user, pass));
        }
        let answer = req.call().map_err(|e| transport(realm, e))?;
        let answer = ok_or_error(realm, answer, "token")?;
        let answer: TokenAnswer = answer
            .into_body()
            .into_with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| transport(realm, e))
            .and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| Error::protocol(realm, format!("unusable token answer: {e}")))
            })?;
        let token = answer
            .token()
            .ok_or_else(|| Error::protocol(realm, "the token answer holds no token"))?
            .to_owned();
        // Renew a little early rather than send an expired token.
        let until = Instant::now() + Duration::from_secs(answer.lifetime().saturating_sub(10));
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope, (token, until));
        Ok(true)
    }

    /// Sends a request with auth, retrying on connection errors, 429 and
    /// 5xx (not 501) with a doubling delay; re-authenticates once on 401.
    fn send(&self, method: Method, url: &str, repository: &str, headers: &[(&str, &str)]) -> Result<Response<Body>> {
        self.execute(url, repository, Access::Pull, &mut |auth| {
            let mut req = match method {
                Method::Get => self.inner.agent.get(url),
                Method::Head => self.inner.agent.head(url),
            };
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.call()
        })
    }

    /// Runs `attempt` (which builds and sends one request, given the
    /// Authorization value) with auth and bounded retries.
    fn execute(
        &self,
        url: &str,
        repository: &str,
        access: Access,
        attempt_once: &mut dyn FnMut(Option<String>) -> std::result::Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>> {
        let scope = access.scope(repository);
        let options = &self.inner.options;
        let mut delay = options.retry_delay;
        let mut authenticated = false;
        let mut attempt = 1;
        loop {
            let result = attempt_once(self.auth_header(&scope));
            let retry_after = match &result {
                Ok(resp) if resp.status() == 401 && !authenticated => {
                    authenticated = true;
                    if self.authenticate(resp, &scope)? {
                        continue;
                    }
                    None
                }
                Ok(resp) if matches!(resp.status().as_u16(), 429 | 500 | 502 | 503 | 504) => {
                    Some(retry_after(resp).unwrap_or(delay))
                }
                Ok(_) => None,
                Err(_) => Some(delay),
            };
            match (retry_after, result) {
                (Some(wait), result) if attempt < options.max_attempts => {
                    tracing::debug!(url, attempt, ?wait, "retrying");
                    drop(result);
                    std::thread::sleep(wait.min(Duration::from_secs(60)));
                    delay = (delay * 2).min(Duration::from_secs(60));
                    attempt += 1;
                }
                (_, Ok(resp)) => return Ok(resp),
                (_, Err(e)) => return Err(transport(url, e)),
            }
        }
    }

    /// True when the repository has the blob (HEAD).
    pub fn has_blob(&self, repository: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.inner.base);
        let resp = self.execute(&url, repository, Access::Push, &mut |auth| {
            let mut req = self.inner.agent.head(&url);
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.call()
        })?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => ok_or_error(&url, resp, "blob").map(|_| true),
        }
    }

    /// Asks the registry to mount a blob it holds in `from` into
    /// `repository`; false when it did not (then upload it).
    pub fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<bool> {
        let url = format!("{}/v2/{repository}/blobs/uploads/?mount={digest}&from={from}", self.inner.base);
        let resp = self.execute(&url, repository, Access::Push, &mut |auth| {
            let mut req = self.inner.agent.post(&url).header("Content-Length", "0");
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.send_empty()
        })?;
        Ok(resp.status() == 201)
    }

    /// Uploads a blob monolithically (POST, then PUT with the digest).
    /// `open` gives the content and may be called again for a retry.
    pub fn upload_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        open: &dyn Fn() -> std::io::Result<Box<dyn Read + Send>>,
    ) -> Result<()> {
        let location = self.start_upload(repository)?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let length = size.to_string();
        let resp = self.execute(&put, repository, Access::Push, &mut |auth| {
            let mut body = open().map_err(ureq::Error::Io)?;
            let mut req = self
                .inner
                .agent
                .put(&put)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", &length);
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.send(ureq::SendBody::from_reader(&mut body))
        })?;
        ok_or_error(&put, resp, &format!("upload of blob {digest}")).map(drop)
    }

    /// Uploads a blob as it is produced, in one streamed PATCH, and
    /// returns its digest and size (computed on the way; the final PUT
    /// names the digest, so the registry checks it too). A stream cannot
    /// be replayed: a failure midway is an error, not a retry.
    pub fn upload_blob_stream(&self, repository: &str, body: &mut dyn Read) -> Result<(String, u64)> {
        use sha2::{Digest, Sha256};
        if let Some(chunk) = self.inner.options.upload_chunk_size {
            return self.upload_blob_chunked(repository, body, chunk.max(1));
        }
        let location = self.start_upload(repository)?;
        struct Hashing<'a> {
            inner: &'a mut dyn Read,
            hash: Sha256,
            size: u64,
        }
        impl Read for Hashing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.inner.read(buf)?;
                self.hash.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
        }
        let mut hashing = Hashing {
            inner: body,
            hash: Sha256::new(),
            size: 0,
        };
        let auth = self.auth_header(&Access::Push.scope(repository));
        let mut req = self.inner.agent.patch(&location).header("Content-Type", "application/octet-stream");
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        let resp = req
            .send(ureq::SendBody::from_reader(&mut hashing))
            .map_err(|e| transport(&location, e))?;
        let resp = ok_or_error(&location, resp, "blob upload")?;
        let next = self.absolute(header(&resp, "location"), &location)?;
        let digest = self.close_upload(repository, &next, hashing.hash)?;
        Ok((digest, hashing.size))
    }

    /// Uploads a blob as it is produced, `chunk` bytes per PATCH, each with
    /// its Content-Range; each chunk is retried like any request, and the
    /// registry's answer must acknowledge exactly the bytes sent so far.
    fn upload_blob_chunked(&self, repository: &str, body: &mut dyn Read, chunk: usize) -> Result<(String, u64)> {
        use sha2::{Digest, Sha256};
        let mut location = self.start_upload(repository)?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut buf = Vec::with_capacity(chunk);
        loop {
            buf.clear();
            body.take(chunk as u64)
                .read_to_end(&mut buf)
                .map_err(Error::Sink)?;
            if buf.is_empty() {
                break;
            }
            let end = size + buf.len() as u64 - 1;
            let range = format!("{size}-{end}");
            let length = buf.len().to_string();
            let resp = self.execute(&location, repository, Access::Push, &mut |auth| {
                let mut req = self
                    .inner
                    .agent
                    .patch(&location)
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", &range)
                    .header("Content-Length", &length);
                if let Some(auth) = auth {
                    req = req.header("Authorization", auth);
                }
                req.send(&buf[..])
            })?;
            let resp = ok_or_error(&location, resp, "blob upload")?;
            // The registry says what it holds: "0-END" (some omit the "0-").
            if let Some(held) = header(&resp, "range")
                && held.rsplit('-').next().and_then(|e| e.trim().parse::<u64>().ok()) != Some(end)
            {
                return Err(Error::protocol(
                    &location,
                    format!("the registry holds bytes {held} of the upload after receiving {range}"),
                ));
            }
            location = self.absolute(header(&resp, "location"), &location)?;
            hash.update(&buf);
            size += buf.len() as u64;
            if buf.len() < chunk {
                break;
            }
        }
        let digest = self.close_upload(repository, &location, hash)?;
        Ok((digest, size))
    }

    /// Ends an upload session with the PUT that names the blob's digest
    /// (the registry checks it); returns the digest.
    fn close_upload(&self, repository: &str, location: &str, hash: sha2::Sha256) -> Result<String> {
        use sha2::Digest;
        let digest = format!("sha256:{}", hash.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>());
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let resp = self.execute(&put, repository, Access::Push, &mut |auth| {
            let mut req = self.inner.agent.put(&put).header("Content-Length", "0");
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.send_empty()
        })?;
        ok_or_error(&put, resp, &format!("upload of blob {digest}"))?;
        Ok(digest)
    }

    /// Opens an upload session (POST); returns its absolute URL.
    fn start_upload(&self, repository: &str) -> Result<String> {
        let start = format!("{}/v2/{repository}/blobs/uploads/", self.inner.base);
        let resp = self.execute(&start, repository, Access::Push, &mut |auth| {
            let mut req = self.inner.agent.post(&start).header("Content-Length", "0");
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.send_empty()
        })?;
        let resp = ok_or_error(&start, resp, "blob upload")?;
        self.absolute(header(&resp, "location"), &start)
    }

    /// A Location header as an absolute URL.
    fn absolute(&self, location: Option<&str>, url: &str) -> Result<String> {
        let location = location.ok_or_else(|| Error::protocol(url, "an upload answer without Location"))?;
        Ok(if location.starts_with('/') { format!("{}{location}", self.inner.base) } else { location.to_owned() })
    }

    /// Puts a manifest under `reference` (a tag or its digest); returns the
    /// digest the registry gives it, checked against the bytes sent.
    pub fn put_manifest(&self, repository: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Result<String> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.inner.base);
        let resp = self.execute(&url, repository, Access::Push, &mut |auth| {
            let mut req = self.inner.agent.put(&url).header("Content-Type", media_type);
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.send(bytes)
        })?;
        let resp = ok_or_error(&url, resp, "manifest upload")?;
        let digest = oci::sha256_digest(bytes);
        if let Some(said) = header(&resp, "docker-content-digest")
            && said != digest
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest stored at {url}"),
                expected: digest,
                actual: said.to_owned(),
            });
        }
        Ok(digest)
    }
}

/// What a request needs the token to allow.
#[derive(Clone, Copy, Debug)]
enum Access {
    Pull,
    Push,
}

impl Access {
    fn scope(self, repository: &str) -> String {
        match self {
            Access::Pull => format!("repository:{repository}:pull"),
            Access::Push => format!("repository:{repository}:pull,push"),
        }
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn header<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    header(resp, "retry-after")?.trim().parse().ok().map(Duration::from_secs)
}

fn transport(url: &str, e: ureq::Error) -> Error {
    Error::Transport {
        url: url.to_owned(),
        reason: e.to_string(),
    }
}

/// The response when it is a success, else an error carrying the
/// registry's own messages (`{"errors":[{"code","message"}]}`).
fn ok_or_error(url: &str, resp: Response<Body>, what: &str) -> Result<Response<Body>> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let body = resp.into_body().into_with_config().limit(64 << 10).read_to_vec().unwrap_or_default();
    let message = registry_message(&body);
    if status == 404 {
        return Err(Error::NotFound {
            what: format!("{what} ({url}{})", if message.is_empty() { String::new() } else { format!(": {message}") }),
        });
    }
    Err(Error::Http {
        url: url.to_owned(),
        status,
        message,
    })
}

fn registry_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<serde_json::Value>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) => e
            .errors
            .iter()
            .map(|e| {
                let code = e.get("code").and_then(|v| v.as_str()).unwrap_or("");
                let msg = e.get("message").and_then(|v| v.as_str()).unwrap_or("");
                format!("{code} {msg}").trim().to_owned()
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned(),
    }
}

/// A registry blob read by byte ranges.
#[derive(Debug)]
pub struct RegistryBlob {
    registry: Registry,
    repository: String,
    url: String,
    size: OnceLock<u64>,
    /// The registry answered a ranged request with the whole blob.
    whole_only: AtomicBool,
    /// The whole blob, kept (and checked) after such an answer, so it is
    /// fetched at most once.
    spool: Mutex<Option<crate::FileSource>>,
    digest: String,
    received: Arc<AtomicU64>,
    requests: AtomicU64,
}

/// Counts body bytes as they arrive.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl RegistryBlob {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Body bytes received so far, over every request for this blob.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Requests sent for this blob's bytes.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The whole blob, streamed. The caller checks its digest.
    pub fn open(&self) -> Result<Box<dyn Read + Send>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self.registry.send(Method::Get, &self.url, &self.repository, &[])?;
        let resp = ok_or_error(&self.url, resp, "blob")?;
        Ok(Box::new(Counting {
            inner: resp.into_body().into_reader(),
            count: self.received.clone(),
        }))
    }

    /// One request for `ranges[*next..]`; serves what the answer holds and
    /// advances `*next`.
    fn fetch_some(&self, ranges: &[ByteRange], next: &mut usize, sink: &mut RangeSink<'_>) -> Result<()> {
        let want = &ranges[*next..];
        let whole = self.whole_only.load(Ordering::Relaxed);
        let range_header = range_header(want);
        let headers: Vec<(&str, &str)> = if whole { Vec::new() } else { vec![("Range", range_header.as_str())] };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self.registry.send(Method::Get, &self.url, &self.repository, &headers)?;
        let status = resp.status().as_u16();
        let url = self.url.as_str();
        match status {
            206 if !whole => {
                let content_type = header(&resp, "content-type").unwrap_or("").to_owned();
                let single = header(&resp, "content-range").map(ContentRange::parse);
                let length: Option<u64> = header(&resp, "content-length").and_then(|v| v.trim().parse().ok());
                let mut body = Counting {
                    inner: resp.into_body().into_reader(),
                    count: self.received.clone(),
                };
                if content_type.trim_start().to_ascii_lowercase().starts_with("multipart/byteranges") {
                    let boundary = boundary(&content_type).ok_or_else(|| {
                        Error::protocol(url, format!("could not find the boundary in Content-Type {content_type:?}"))
                    })?;
                    let mut parts = Parts::new(BufReader::with_capacity(256 << 10, body), &boundary);
                    let mut count = 0;
                    while *next < ranges.len() {
                        let Some(part) = parts.next_part().map_err(|e| Error::protocol(url, e))? else { break };
                        count += 1;
                        if count > want.len() {
                            return Err(Error::protocol(url, "more parts in the answer than ranges were asked for"));
                        }
                        self.check_total(part.total)?;
                        serve_segment(url, ranges, next, part.first, part.len(), &mut parts.body(), sink)?;
                    }
                    return Ok(());
                }
                let (first, len) = match single {
                    Some(Ok(r)) => {
                        self.check_total(r.total)?;
                        (r.first, r.len())
                    }
                    Some(Err(e)) => return Err(Error::protocol(url, e)),
                    // No Content-Range: only a one-range request can be
                    // placed, by its length.
                    None if want.len() == 1 && length == Some(want[0].length) => (want[0].offset, want[0].length),
                    None => return Err(Error::protocol(url, "a 206 answer without Content-Range")),
                };
                if length.is_some_and(|l| l != len) {
                    return Err(Error::protocol(url, "Content-Length and Content-Range disagree"));
                }
                serve_segment(url, ranges, next, first, len, &mut body, sink)
            }
            200 => {
                if !whole {
                    tracing::info!(url, "the registry ignores Range and sends whole blobs; keeping one copy");
                    self.whole_only.store(true, Ordering::Relaxed);
                }
                let length: Option<u64> = header(&resp, "content-length").and_then(|v| v.trim().parse().ok());
                if let (Some(l), Some(&s)) = (length, self.size.get())
                    && l != s
                {
                    return Err(Error::protocol(url, format!("the blob is {l} bytes, its descriptor says {s}")));
                }
                let body = Counting {
                    inner: resp.into_body().into_reader(),
                    count: self.received.clone(),
                };
                let spool = self.spool_whole(body)?;
                let first = *next;
                spool.fetch(&ranges[first..], &mut |i, r| sink(first + i, r))?;
                *next = ranges.len();
                *self.spool.lock().unwrap_or_else(|p| p.into_inner()) = Some(spool);
                Ok(())
            }
            400 | 416 | 501 if want.len() > 1 && !whole => Err(Error::RangesRefused {
                url: url.to_owned(),
                status,
                ranges: want.len(),
            }),
            400 | 501 if !whole => {
                // Even one range refused: take the blob whole, once.
                tracing::info!(url, status, "the registry refuses a single range; fetching whole");
                self.whole_only.store(true, Ordering::Relaxed);
                self.fetch_some(ranges, next, sink)
            }
            416 => Err(Error::Http {
                url: url.to_owned(),
                status,
                message: format!("range {} not satisfiable: the blob is shorter than expected", range_header),
            }),
            _ => ok_or_error(url, resp, "blob").and(Err(Error::protocol(url, format!("unexpected HTTP {status}")))),
        }
    }

    /// Copies a whole-blob answer to an unnamed temporary file, checking
    /// its size and digest on the way.
    fn spool_whole(&self, mut body: impl Read) -> Result<crate::FileSource> {
        use sha2::{Digest, Sha256};
        use std::io::Write;
        let tmp_err = |e: std::io::Error| Error::io("a temporary copy of the blob", e);
        let mut file = tempfile::tempfile().map_err(tmp_err)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = body.read(&mut buf).map_err(|e| Error::protocol(&self.url, format!("reading the blob: {e}")))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(tmp_err)?;
            total += n as u64;
        }
        if let Some(&size) = self.size.get()
            && size != total
        {
            return Err(Error::protocol(&self.url, format!("the blob is {total} bytes, its descriptor says {size}")));
        }
        let actual = format!("sha256:{}", hash.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>());
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                what: format!("blob from {}", self.url),
                expected: self.digest.clone(),
                actual,
            });
        }
        crate::FileSource::from_file(file, format!("{} (local copy)", self.url))
    }

    fn check_total(&self, total: Option<u64>) -> Result<()> {
        match (total, self.size.get()) {
            (Some(t), Some(&s)) if t != s => Err(Error::protocol(
                &self.url,
                format!("the server says the blob is {t} bytes, its descriptor says {s}"),
            )),
            _ => Ok(()),
        }
    }
}

/// `bytes=a-b,c-d` with inclusive ends.
fn range_header(ranges: &[ByteRange]) -> String {
    let mut s = String::with_capacity(6 + ranges.len() * 20);
    s.push_str("bytes=");
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{}-{}", r.offset, r.offset + r.length - 1));
    }
    s
}

impl RangeSource for RegistryBlob {
    fn size(&self) -> Result<u64> {
        if let Some(&s) = self.size.get() {
            return Ok(s);
        }
        let resp = self.registry.send(Method::Head, &self.url, &self.repository, &[])?;
        let resp = ok_or_error(&self.url, resp, "blob")?;
        let size = header(&resp, "content-length")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::protocol(&self.url, "HEAD answer without Content-Length"))?;
        Ok(*self.size.get_or_init(|| size))
    }

    fn fetch(&self, ranges: &[ByteRange], sink: &mut RangeSink<'_>) -> Result<()> {
        check_ranges(ranges, self.size.get().copied())?;
        if let Some(spool) = self.spool.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return spool.fetch(ranges, sink);
        }
        let mut next = 0;
        while next < ranges.len() {
            let before = next;
            self.fetch_some(ranges, &mut next, sink)?;
            if next == before {
                return Err(Error::protocol(&self.url, "the answer held none of the requested ranges"));
            }
        }
        Ok(())
    }

    fn sends_whole_blob(&self) -> bool {
        self.whole_only.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers_are_inclusive() {
        assert_eq!(range_header(&[ByteRange::new(0, 10), ByteRange::new(20, 1)]), "bytes=0-9,20-20");
    }

    #[test]
    fn registry_messages() {
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"x"}]}"#;
        assert_eq!(registry_message(body), "BLOB_UNKNOWN blob unknown to registry");
        assert_eq!(registry_message(b"plain text"), "plain text");
    }
}
