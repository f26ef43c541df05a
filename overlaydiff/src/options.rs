//! overlayfs mount options: which directories make the mount, and whether
//! its upperdir can be diffed by walking it alone.

use std::path::PathBuf;

/// The xattr namespace overlayfs keeps its own attributes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XattrNamespace {
    /// `trusted.overlay.*` (the default, needs CAP_SYS_ADMIN).
    #[default]
    Trusted,
    /// `user.overlay.*` (`userxattr`, rootless).
    User,
}

impl XattrNamespace {
    /// The full name of an overlay xattr, e.g. `trusted.overlay.opaque`.
    pub fn name(self, attr: &str) -> String {
        match self {
            XattrNamespace::Trusted => format!("trusted.overlay.{attr}"),
            XattrNamespace::User => format!("user.overlay.{attr}"),
        }
    }
}

/// Parsed overlay mount options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Lower directories, top-most first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub xattrs: XattrNamespace,
    /// `redirect_dir=on`: renamed directories carry `overlay.redirect`.
    pub redirect_dir: bool,
    /// `metacopy=on`: copied-up files may hold no data.
    pub metacopy: bool,
    /// Options that change nothing for diffing, kept for the record.
    pub other: Vec<String>,
}

fn escape(path: &std::path::Path, out: &mut String, colon: bool) {
    for c in path.to_string_lossy().chars() {
        if c == ',' || c == '\\' || (colon && c == ':') {
            out.push('\\');
        }
        out.push(c);
    }
}

impl std::fmt::Display for MountOptions {
    /// The options in the form [`parse`] reads, with `,` `:` `\` escaped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::from("lowerdir=");
        for (i, lower) in self.lowers.iter().enumerate() {
            if i > 0 {
                s.push(':');
            }
            escape(lower, &mut s, true);
        }
        for (key, path) in [("upperdir", &self.upper), ("workdir", &self.work)] {
            if let Some(p) = path {
                s.push_str(&format!(",{key}="));
                escape(p, &mut s, true);
            }
        }
        if self.xattrs == XattrNamespace::User {
            s.push_str(",userxattr");
        }
        if self.redirect_dir {
            s.push_str(",redirect_dir=on");
        }
        if self.metacopy {
            s.push_str(",metacopy=on");
        }
        for other in &self.other {
            s.push(',');
            s.push_str(other); // kept as given, escapes included
        }
        f.write_str(&s)
    }
}

/// Why mount options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("unknown overlay mount option {0:?}")]
    Unknown(String),
    #[error("invalid value in overlay mount option {0:?}")]
    BadValue(String),
    #[error("overlay mount option {0:?} is given twice")]
    Repeated(String),
    #[error("overlay mount options name no lowerdir")]
    NoLower,
    #[error("empty path in overlay mount option {0:?}")]
    EmptyPath(String),
}

/// Splits on `sep` where it is not escaped by a backslash; escapes stay in
/// the parts (the kernel splits options first, unescapes paths later).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let last = parts.last_mut().expect("never empty");
        match c {
            '\\' => {
                last.push('\\');
                if let Some(next) = chars.next() {
                    last.push(next);
                }
            }
            c if c == sep => parts.push(String::new()),
            c => last.push(c),
        }
    }
    parts
}

/// `\X` → `X`, as overlayfs unescapes paths.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn on_off(option: &str, value: &str) -> Result<bool, OptionsError> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(OptionsError::BadValue(option.to_string())),
    }
}

/// Parses options as given to `mount -t overlay -o …`. Every option overlayfs
/// documents, and the generic VFS flags, are understood; anything else is
/// refused rather than guessed at.
pub fn parse(options: &str) -> Result<MountOptions, OptionsError> {
    let mut out = MountOptions::default();
    let mut seen: Vec<String> = Vec::new();
    // Commas separate options unless escaped; colons inside lowerdir are
    // split afterwards, so their escapes must survive the first pass.
    for raw in split_unescaped(options, ',') {
        if raw.is_empty() {
            continue;
        }
        let (key, value) = match raw.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (raw.clone(), None),
        };
        if !matches!(key.as_str(), "lowerdir+" | "datadir+") && seen.contains(&key) {
            return Err(OptionsError::Repeated(key));
        }
        seen.push(key.clone());
        let path = |v: &Option<String>| -> Result<PathBuf, OptionsError> {
            let v = unescape(
                v.as_deref()
                    .ok_or_else(|| OptionsError::BadValue(raw.clone()))?,
            );
            if v.is_empty() {
                return Err(OptionsError::EmptyPath(raw.clone()));
            }
            Ok(PathBuf::from(v))
        };
        match (key.as_str(), &value) {
            ("lowerdir", Some(v)) => {
                for part in split_unescaped(v, ':').iter().map(|p| unescape(p)) {
                    if part.is_empty() {
                        // `::` separates data-only lowers (metacopy); treat
                        // as unsupported rather than guess.
                        return Err(OptionsError::EmptyPath(raw.clone()));
                    }
                    out.lowers.push(PathBuf::from(part));
                }
            }
            ("lowerdir+", Some(_)) => out.lowers.push(path(&value)?),
            ("upperdir", Some(_)) => out.upper = Some(path(&value)?),
            ("workdir", Some(_)) => out.work = Some(path(&value)?),
            ("userxattr", None) => out.xattrs = XattrNamespace::User,
            ("redirect_dir", Some(v)) => {
                out.redirect_dir = match v.as_str() {
                    "on" => true,
                    "off" | "follow" | "nofollow" => false,
                    _ => return Err(OptionsError::BadValue(raw.clone())),
                }
            }
            ("metacopy", Some(v)) => out.metacopy = on_off(&raw, v)?,
            ("index" | "nfs_export" | "volatile_sync", Some(v)) => {
                on_off(&raw, v)?;
                out.other.push(raw.clone());
            }
            ("xino", Some(v)) if matches!(v.as_str(), "on" | "off" | "auto") => {
                out.other.push(raw.clone())
            }
            ("uuid", Some(v)) if matches!(v.as_str(), "on" | "off" | "null" | "auto") => {
                out.other.push(raw.clone())
            }
            ("verity", Some(v)) if matches!(v.as_str(), "on" | "off" | "require") => {
                out.other.push(raw.clone())
            }
            ("datadir+", Some(_)) => {
                return Err(OptionsError::Unknown(format!(
                    "{raw} (data-only lowers need metacopy)"
                )));
            }
            ("volatile" | "default_permissions", None) => out.other.push(raw.clone()),
            // Generic mount flags and SELinux labels.
            (
                "ro" | "rw" | "nodev" | "dev" | "nosuid" | "suid" | "noexec" | "exec" | "noatime"
                | "atime" | "relatime" | "norelatime" | "strictatime" | "nodiratime" | "diratime"
                | "sync" | "async" | "lazytime" | "nolazytime" | "silent" | "loud",
                None,
            ) => out.other.push(raw.clone()),
            ("context" | "fscontext" | "defcontext" | "rootcontext", Some(_)) => {
                out.other.push(raw.clone())
            }
            _ => return Err(OptionsError::Unknown(raw.clone())),
        }
    }
    if out.lowers.is_empty() {
        return Err(OptionsError::NoLower);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_podman_options() {
        let o = parse("lowerdir=/l/a:/l/b,upperdir=/u,workdir=/w,index=off,userxattr,context=\"system_u:object_r:container_file_t:s0\"")
            .expect("valid");
        assert_eq!(o.lowers, vec![PathBuf::from("/l/a"), PathBuf::from("/l/b")]);
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert_eq!(o.work, Some(PathBuf::from("/w")));
        assert_eq!(o.xattrs, XattrNamespace::User);
        assert!(!o.redirect_dir && !o.metacopy);
    }

    #[test]
    fn escapes() {
        let o = parse(r"lowerdir=/a\:b:/c\,d,upperdir=/u\,v").expect("valid");
        assert_eq!(o.lowers, vec![PathBuf::from("/a:b"), PathBuf::from("/c,d")]);
        assert_eq!(o.upper, Some(PathBuf::from("/u,v")));
    }

    #[test]
    fn display_round_trips() {
        let o = parse(r"lowerdir=/a\:b:/c\,d:/e\\f,upperdir=/u,workdir=/w,userxattr,index=off")
            .expect("valid");
        assert_eq!(o.lowers[2], PathBuf::from("/e\\f"));
        assert_eq!(parse(&o.to_string()).expect("reparse"), o);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(matches!(
            parse("lowerdir=/a,frobnicate"),
            Err(OptionsError::Unknown(_))
        ));
        assert!(matches!(
            parse("lowerdir=/a,index=maybe"),
            Err(OptionsError::BadValue(_))
        ));
        assert!(matches!(parse("upperdir=/u"), Err(OptionsError::NoLower)));
        assert!(matches!(
            parse("lowerdir=/a,lowerdir=/b"),
            Err(OptionsError::Repeated(_))
        ));
        assert!(matches!(
            parse("lowerdir=/a::/b"),
            Err(OptionsError::EmptyPath(_))
        ));
        assert!(
            parse("lowerdir=/a,redirect_dir=on")
                .expect("known")
                .redirect_dir
        );
        assert!(parse("lowerdir=/a,metacopy=on").expect("known").metacopy);
    }
}
