//! Image references as docker reads them (github.com/distribution/reference): `busybox` is
//! `docker.io/library/busybox:latest` when matched and `busybox:latest` when shown; a 64-digit
//! hex string or `sha256:<hex>` is an image id, never a name. The grammar is small enough to
//! check by hand, which keeps a regex engine out of the appliance.

use thiserror::Error;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a string is not an image reference; the texts are docker's, which scripts match.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceError {
    #[error("invalid reference format")]
    InvalidFormat,
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error("repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")]
    TooLong,
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    #[error("invalid tag format")]
    TagFormat,
}

/// A named reference, normalized: the domain is always explicit (`docker.io` for Docker Hub)
/// and official images carry their `library/` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// What a string given for an image names: an id (full digest) or a repository reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyReference {
    /// `sha256:<64 hex>`.
    Id(String),
    Named(Reference),
}

impl Reference {
    /// `docker.io/library/busybox`: the repository, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as docker shows it: `busybox`, `user/app`, `localhost/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.name()
        }
    }

    /// `busybox:latest`, as docker shows references (RepoTags, "Loaded image: ...").
    pub fn familiar(&self) -> String {
        self.suffixed(self.familiar_name())
    }

    /// `docker.io/library/busybox:latest`: the form tags are stored and compared in.
    pub fn full(&self) -> String {
        self.suffixed(self.name())
    }

    fn suffixed(&self, mut s: String) -> String {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The repository with `tag` as its tag (`docker tag`'s `repo` and `tag`).
    pub fn with_tag(mut self, tag: &str) -> Result<Self, ReferenceError> {
        if !is_tag(tag) {
            return Err(ReferenceError::TagFormat);
        }
        self.tag = Some(tag.to_string());
        Ok(self)
    }

    /// The reference without the tag when it has a digest as well: docker stores and looks
    /// up `name:tag@digest` as `name@digest` (the reference store's `favorDigest`).
    pub fn favor_digest(mut self) -> Self {
        if self.digest.is_some() {
            self.tag = None;
        }
        self
    }

    /// The reference with `latest` as its tag when it has neither tag nor digest.
    pub fn tag_name_only(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }
}

/// Parses a repository reference and normalizes it as docker's `ParseNormalizedNamed` does.
pub fn parse_normalized(s: &str) -> Result<Reference, ReferenceError> {
    if is_hex64(s) {
        return Err(ReferenceError::HexName(s.to_string()));
    }
    let (domain, remainder) = split_docker_domain(s);
    let remote_name = remainder.split(':').next().unwrap_or("");
    if remote_name.to_lowercase() != remote_name {
        return Err(ReferenceError::Uppercase(remote_name.to_string()));
    }
    let (name_tag, digest) = match remainder.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (remainder.as_str(), None),
    };
    // A colon after the last slash starts the tag (the domain, with its port, is split off).
    let (path, tag) = match name_tag.rfind(':') {
        Some(i) => (&name_tag[..i], Some(&name_tag[i + 1..])),
        None => (name_tag, None),
    };
    let valid = is_domain_and_port(&domain)
        && path.split('/').all(is_path_component)
        && tag.is_none_or(is_tag)
        && digest.is_none_or(is_digest);
    if !valid {
        return Err(ReferenceError::InvalidFormat);
    }
    if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::TooLong);
    }
    Ok(Reference {
        domain,
        path: path.to_string(),
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    })
}

/// An id (`<64 hex>` or `sha256:<64 hex>`) or a named reference, as `ParseAnyReference`.
pub fn parse_any(s: &str) -> Result<AnyReference, ReferenceError> {
    if is_hex64(s) {
        return Ok(AnyReference::Id(format!("sha256:{s}")));
    }
    if let Some(hex) = s.strip_prefix("sha256:") {
        if is_hex64(hex) {
            return Ok(AnyReference::Id(s.to_string()));
        }
    }
    parse_normalized(s).map(AnyReference::Named)
}

fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let run = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_alnum_lower(b[*i]) {
            *i += 1;
        }
        *i > start
    };
    if !run(&mut i) {
        return false;
    }
    while i < b.len() {
        match b[i] {
            b'.' => i += 1,
            b'_' if b.get(i + 1) == Some(&b'_') => i += 2,
            b'_' => i += 1,
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !run(&mut i) {
            return false;
        }
    }
    true
}

/// A host (`[a-zA-Z0-9]` components joined by dots, hyphens inside, or `[ipv6]`) with an
/// optional numeric port.
fn is_domain_and_port(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after.strip_prefix(':') {
            Some(p) => ("", Some(p)),
            None if after.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = s.starts_with('[')
        || host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        });
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}`
fn is_tag(s: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm:hex`, the hex at least 32 digits.
fn is_digest(s: &str) -> bool {
    let Some((alg, hex)) = s.split_once(':') else {
        return false;
    };
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|c| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    alg_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A malformed glob pattern (docker's reference filter uses Go's `path.Match`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("syntax error in pattern")]
pub struct BadPattern;

/// Go's `path.Match`: `*` is any run of non-`/` characters, `?` one of them, `[...]` a class
/// (`^` negates, `a-z` ranges), `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob(&p, &n)
}

fn glob(p: &[char], n: &[char]) -> Result<bool, BadPattern> {
    match p.first() {
        None => Ok(n.is_empty()),
        Some('*') => {
            // Try every split that keeps `/` out of the star's part; a bad rest is an error
            // even when nothing is left to match.
            for i in 0..=n.len() {
                if glob(&p[1..], &n[i..])? {
                    return Ok(true);
                }
                if i < n.len() && n[i] == '/' {
                    break;
                }
            }
            Ok(false)
        }
        Some('?') => match n.first() {
            Some(&c) if c != '/' => glob(&p[1..], &n[1..]),
            _ => Ok(false),
        },
        Some('[') => {
            let (matched, rest) = class(&p[1..], n.first().copied())?;
            match n.first() {
                Some(_) if matched => glob(rest, &n[1..]),
                _ => Ok(false),
            }
        }
        Some('\\') => match p.get(1) {
            None => Err(BadPattern),
            Some(&c) => Ok(n.first() == Some(&c) && glob(&p[2..], &n[1..])?),
        },
        Some(&c) => Ok(n.first() == Some(&c) && glob(&p[1..], &n[1..])?),
    }
}

/// A `[...]` class after its `[`: whether `c` is in it, and the pattern after its `]`.
fn class(p: &[char], c: Option<char>) -> Result<(bool, &[char]), BadPattern> {
    let (negated, mut i) = match p.first() {
        Some('^') => (true, 1),
        _ => (false, 0),
    };
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = match p.get(i) {
            None => return Err(BadPattern),
            Some(']') if !first => break,
            Some('\\') => {
                i += 1;
                *p.get(i).ok_or(BadPattern)?
            }
            Some('-') => return Err(BadPattern),
            Some(&x) => x,
        };
        first = false;
        i += 1;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&x| x != ']') {
            i += 1;
            let x = match p[i] {
                '\\' => {
                    i += 1;
                    *p.get(i).ok_or(BadPattern)?
                }
                x => x,
            };
            i += 1;
            x
        } else {
            lo
        };
        if let Some(c) = c {
            hit |= lo <= c && c <= hi;
        }
    }
    let inside = c.is_some_and(|c| c != '/') && hit != negated;
    Ok((inside, &p[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        parse_normalized(s).unwrap().tag_name_only().full()
    }

    #[test]
    fn names_normalize_as_dockers_do() {
        for (name, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("localhost/app:v1", "localhost/app:v1"),
            ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
            ("Registry.example/x", "Registry.example/x:latest"),
            ("[::1]:5000/x:y", "[::1]:5000/x:y"),
        ] {
            assert_eq!(norm(name), full, "{name}");
        }
        let r = parse_normalized("docker.io/library/busybox:latest").unwrap();
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.familiar_name(), "busybox");
        let r = parse_normalized("docker.io/library/a/b").unwrap();
        assert_eq!(r.familiar_name(), "library/a/b");
        let r = parse_normalized("localhost/tether-test:v1").unwrap();
        assert_eq!(r.familiar(), "localhost/tether-test:v1");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = parse_normalized(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.clone().tag_name_only().tag, None);
        let r = parse_normalized("app").unwrap().with_tag("v2").unwrap();
        assert_eq!(r.familiar(), "app:v2");
        let e = parse_normalized("app").unwrap().with_tag("-x").unwrap_err();
        assert_eq!(e.to_string(), "invalid tag format");
    }

    #[test]
    fn bad_names_get_dockers_messages() {
        let e = |s: &str| parse_normalized(s).unwrap_err().to_string();
        assert_eq!(
            e("Busybox"),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        let long_tag = format!("a:{}", "t".repeat(129));
        for bad in ["bus box", "", "a:", "a//b", "-a", &long_tag] {
            assert_eq!(e(bad), "invalid reference format", "{bad:?}");
        }
        assert!(e(&"a".repeat(64)).contains("64-byte hexadecimal"));
        assert_eq!(
            e(&format!("x/{}", "a".repeat(260))),
            "repository name must not be more than 255 characters"
        );
        for ok in ["a__b", "a-b", "a---b", "a.b", "a_b", "a1/b2.c-d"] {
            assert!(parse_normalized(ok).is_ok(), "{ok}");
        }
        for bad in ["a___b", "a..b", "a-", "_a", "a/b/", "a@sha256:12"] {
            assert!(parse_normalized(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_not_names() {
        let hex = "0123456789abcdef".repeat(4);
        let id = AnyReference::Id(format!("sha256:{hex}"));
        assert_eq!(parse_any(&hex).unwrap(), id);
        assert_eq!(parse_any(&format!("sha256:{hex}")).unwrap(), id);
        assert!(matches!(
            parse_any("0123ab").unwrap(),
            AnyReference::Named(_)
        ));
    }

    #[test]
    fn globs_match_like_go_path_match() {
        let m = |p: &str, n: &str| glob_match(p, n).unwrap();
        assert!(m("busybox", "busybox"));
        assert!(m("busy*", "busybox:latest"));
        assert!(m("*:latest", "busybox:latest"));
        assert!(!m("*", "localhost/app"));
        assert!(m("*/*", "localhost/app"));
        assert!(m("b?sybox", "busybox"));
        assert!(m("[a-c]usybox", "busybox"));
        assert!(!m("[^a-c]usybox", "busybox"));
        assert!(m("\\*", "*"));
        assert!(!m("busybox", "busybox:latest"));
        assert_eq!(glob_match("[", "a"), Err(BadPattern));
        assert_eq!(glob_match("a\\", "a"), Err(BadPattern));
    }
}
