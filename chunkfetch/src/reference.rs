//! Image references as skopeo writes them: `docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`
//! and `oci:DIR[:TAG]`, with Docker Hub's defaults for short names.

use std::fmt;
use std::path::PathBuf;

use crate::oci::valid_digest;
use crate::{Error, Result};

/// Where an image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Registry(RegistryRef),
    Layout { dir: PathBuf, tag: Option<String> },
}

/// An image in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host` or `host:port` as written (docker.io for short names).
    pub host: String,
    /// The repository path, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl RegistryRef {
    /// The tag or digest to ask the registry for (`latest` by default);
    /// the digest wins when both are given.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The host to talk HTTP to: Docker Hub's API host for docker.io.
    pub fn api_host(&self) -> &str {
        if self.host == "docker.io" { "registry-1.docker.io" } else { &self.host }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry(r) => write!(f, "docker://{r}"),
            Reference::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                match tag {
                    Some(t) => write!(f, ":{t}"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn error(reference: &str, reason: impl Into<String>) -> Error {
    Error::Reference {
        reference: reference.to_owned(),
        reason: reason.into(),
    }
}

/// distribution/reference's path component: lower-case alphanumerics
/// separated by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || h.starts_with('[') => (n, Some(p)),
        _ => (h, None),
    };
    let name_ok = if let Some(v6) = name.strip_prefix('[') {
        v6.strip_suffix(']').is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    name_ok && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a registry image name (no transport prefix).
pub fn parse_registry(reference: &str) -> Result<RegistryRef> {
    let original = reference;
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => {
            if !valid_digest(d) {
                return Err(error(original, format!("{d:?} is not a sha256 digest")));
            }
            (r, Some(d.to_owned()))
        }
        None => (reference, None),
    };
    // A tag follows the last ':' after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &rest[last_slash + i + 1..];
            if !valid_tag(tag) {
                return Err(error(original, format!("{tag:?} is not a valid tag")));
            }
            (&rest[..last_slash + i], Some(tag.to_owned()))
        }
        None => (rest, None),
    };
    let (host, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') => {
            (first.to_owned(), path.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    let repository = if host == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    if !valid_host(&host) {
        return Err(error(original, format!("{host:?} is not a registry host")));
    }
    if repository.len() > 255 || !repository.split('/').all(valid_component) {
        return Err(error(
            original,
            format!("{repository:?} is not a repository name (lower-case letters, digits and . _ - separators)"),
        ));
    }
    Ok(RegistryRef {
        host,
        repository,
        tag,
        digest,
    })
}

impl Reference {
    /// `docker://…` or `oci:DIR[:TAG]`.
    pub fn parse(reference: &str) -> Result<Reference> {
        if let Some(rest) = reference.strip_prefix("docker://") {
            return parse_registry(rest).map(Reference::Registry);
        }
        if let Some(rest) = reference.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(error(reference, "no directory"));
            }
            // As skopeo: the tag follows the last ':' when what follows it
            // is a valid tag (directories with ':' need a tag then).
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !d.is_empty() && valid_tag(t) => (d, Some(t.to_owned())),
                _ => (rest, None),
            };
            return Ok(Reference::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        Err(error(reference, "expected docker://HOST/NAME[:TAG|@DIGEST] or oci:DIR[:TAG]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match Reference::parse(s).expect(s) {
            Reference::Registry(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn registry_references() {
        let r = reg("docker://127.0.0.1:5000/app/web:v2");
        assert_eq!((r.host.as_str(), r.repository.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", "app/web", Some("v2")));
        assert_eq!(r.manifest_reference(), "v2");
        let r = reg("docker://busybox");
        assert_eq!((r.host.as_str(), r.repository.as_str(), r.manifest_reference()), ("docker.io", "library/busybox", "latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("docker://localhost/x@{d}"));
        assert_eq!((r.host.as_str(), r.digest.as_deref()), ("localhost", Some(d.as_str())));
        assert_eq!(r.to_string(), format!("localhost/x@{d}"));
        for bad in ["docker://Upper/x", "docker://h.io/UP", "docker://h.io/x:", "docker://h.io/x@sha256:12", "docker://h.io:99999x/a", "ftp://x"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layout_references() {
        assert_eq!(
            Reference::parse("oci:/tmp/img:v1").expect("parse"),
            Reference::Layout { dir: "/tmp/img".into(), tag: Some("v1".into()) }
        );
        assert_eq!(Reference::parse("oci:img").expect("parse"), Reference::Layout { dir: "img".into(), tag: None });
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Reference::parse(&s);
            let _ = parse_registry(&s);
        }

        #[test]
        fn valid_names_round_trip(
            host in "[a-z]{1,8}\\.[a-z]{2,4}(:[0-9]{1,5})?",
            path in "[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}",
            tag in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}",
        ) {
            let r = parse_registry(&format!("{host}/{path}:{tag}")).expect("valid");
            proptest::prop_assert_eq!(&r.host, &host);
            proptest::prop_assert_eq!(&r.repository, &path);
            proptest::prop_assert_eq!(r.tag.as_deref(), Some(tag.as_str()));
        }
    }
}
