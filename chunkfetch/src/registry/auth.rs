//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1) and the registry token
//! flow (distribution's `token.md`).

use std::collections::BTreeMap;

/// One challenge: its scheme (lower-cased) and parameters (names
/// lower-cased, values unquoted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value, which may hold several challenges:
/// `Bearer realm="https://auth/token",service="reg",scope="repository:a:pull", Basic realm="x"`.
/// Malformed trailing parts are dropped, not fatal: a registry's odd header
/// must not stop a pull that needs no auth.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut s = header.trim_start();
    while !s.is_empty() {
        // A token: either a new scheme or a parameter name.
        let end = s.find([' ', '\t', '=', ',']).unwrap_or(s.len());
        let token = &s[..end];
        let rest = s[end..].trim_start_matches([' ', '\t']);
        if token.is_empty() {
            s = rest.trim_start_matches([',', ' ', '\t']);
            if s.len() == rest.len() && rest.starts_with('=') {
                // "=" with no name: skip to the next comma.
                s = rest.find(',').map_or("", |i| &rest[i + 1..]);
            }
            continue;
        }
        if let Some(after_eq) = rest.strip_prefix('=')
            && let Some(current) = out.last_mut()
        {
            let after_eq = after_eq.trim_start_matches([' ', '\t']);
            let (value, tail) = if let Some(q) = after_eq.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let mut close = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            close = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                match close {
                    Some(i) => (value, &q[i..]),
                    None => (value, ""),
                }
            } else {
                let e = after_eq.find([',', ' ', '\t']).unwrap_or(after_eq.len());
                (after_eq[..e].to_owned(), &after_eq[e..])
            };
            current.params.insert(token.to_ascii_lowercase(), value);
            s = tail.trim_start_matches([',', ' ', '\t']);
            continue;
        }
        if rest.starts_with('=') {
            // A parameter before any scheme: ignore it.
            s = rest.find(',').map_or("", |i| &rest[i + 1..]).trim_start();
            continue;
        }
        out.push(Challenge {
            scheme: token.to_ascii_lowercase(),
            params: BTreeMap::new(),
        });
        s = rest.trim_start_matches([',', ' ', '\t']);
    }
    out
}

/// A token endpoint's answer.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    pub(crate) token: String,
    #[serde(default)]
    pub(crate) access_token: String,
    #[serde(default)]
    pub(crate) expires_in: u64,
}

impl TokenAnswer {
    pub(crate) fn token(&self) -> Option<&str> {
        [&self.token, &self.access_token].into_iter().find(|t| !t.is_empty()).map(String::as_str)
    }

    /// Seconds the token lives: at least 60, as the spec's default.
    pub(crate) fn lifetime(&self) -> u64 {
        self.expires_in.max(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push", Basic realm="Registry Realm""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull,push"));
        assert_eq!(c[1].scheme, "basic");
        assert_eq!(c[1].param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn unquoted_escaped_and_odd_spacing() {
        let c = parse_challenges(r#"Bearer   realm = https://a/t , service="a \"b\"",error=insufficient_scope"#);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("realm"), Some("https://a/t"));
        assert_eq!(c[0].param("service"), Some("a \"b\""));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic").len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn any_header_parses_without_panic(s in "\\PC{0,200}") {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn written_params_read_back(
            realm in "[ -~]{0,40}",
            service in "[a-z0-9.:-]{1,20}",
        ) {
            let quoted = realm.replace('\\', "\\\\").replace('"', "\\\"");
            let header = format!("Bearer realm=\"{quoted}\",service=\"{service}\"");
            let c = parse_challenges(&header);
            proptest::prop_assert_eq!(c.len(), 1);
            proptest::prop_assert_eq!(c[0].param("realm"), Some(realm.as_str()));
            proptest::prop_assert_eq!(c[0].param("service"), Some(service.as_str()));
        }
    }
}
