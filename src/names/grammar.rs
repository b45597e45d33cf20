//! Docker's reference grammar (`name[:tag]`), written out by hand.
//!
//! `oci-spec` parses references with one large regular expression that each process compiles
//! on first use — about 40 ms, longer than every CLI command's own work. This parser accepts
//! exactly what that expression accepts for ASCII input and normalises as `oci-spec` does
//! (fuzzed for equivalence: `testsuite::fuzzing::digest_reference`). Non-ASCII input, where
//! the expression's Unicode `\w` decides tags, is left to `oci-spec` by the caller.
//!
//! ```text
//! name      := [domain '/'] path
//! domain    := dcomp ('.' dcomp)* [':' [0-9]+]        dcomp := [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! path      := pcomp ('/' pcomp)*                    pcomp := [a-z0-9]+ (sep [a-z0-9]+)*
//! sep       := '.' | '_' | '__' | '-'*               (so: nothing, or one of those)
//! tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```

/// Docker Hub's name, and its legacy one.
const HUB: &str = "docker.io";
const HUB_LEGACY: &str = "index.docker.io";
/// The longest repository path accepted (after normalisation).
const MAX_REPOSITORY: usize = 255;

/// Why a reference was refused, in `oci-spec`'s words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Empty input.
    Empty,
    /// Does not match the grammar.
    Format,
    /// The repository path is longer than 255 bytes.
    TooLong,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Empty => "repository name must have at least one component",
            Refusal::Format => "invalid reference format",
            Refusal::TooLong => "repository name must not be more than 255 characters",
        })
    }
}

/// A parsed `name[:tag]`: registry, repository path, and the tag (`latest` when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/alpine`.
    pub repository: String,
    /// The tag; `latest` when the input had none.
    pub tag: String,
}

/// Parses and normalises `name[:tag]` (no digest); see the module docs.
pub fn parse(s: &str) -> Result<Parsed, Refusal> {
    if s.is_empty() {
        return Err(Refusal::Empty);
    }
    // A tag cannot hold '/', a path component cannot hold ':': the tag is whatever follows
    // a ':' after the last '/'.
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match s[last_slash..].find(':') {
        Some(i) => (&s[..last_slash + i], Some(&s[last_slash + i + 1..])),
        None => (s, None),
    };
    if let Some(t) = tag
        && !is_tag(t)
    {
        return Err(Refusal::Format);
    }
    if !is_name(name) {
        return Err(Refusal::Format);
    }
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => (HUB.to_owned(), name.to_owned()),
    };
    if registry == HUB_LEGACY {
        registry = HUB.to_owned();
    }
    if registry == HUB && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > MAX_REPOSITORY {
        return Err(Refusal::TooLong);
    }
    Ok(Parsed {
        registry,
        repository,
        tag: tag.unwrap_or("latest").to_owned(),
    })
}

/// `[domain '/'] path`: either the whole is a path, or its first segment is a domain and the
/// rest a path.
fn is_name(name: &str) -> bool {
    if is_path(name) {
        return true;
    }
    match name.split_once('/') {
        Some((domain, path)) => is_domain(domain) && is_path(path),
        None => false,
    }
}

fn is_path(path: &str) -> bool {
    path.split('/').all(is_path_component)
}

/// `[a-z0-9]+ (sep [a-z0-9]+)*` with `sep` one of nothing, `.`, `_`, `__`, `-`+.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run, between two alphanumerics (the ends are alphanumeric).
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `dcomp ('.' dcomp)* [':' [0-9]+]`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|x| x.is_ascii_digit()))
    {
        return false;
    }
    host.split('.').all(|c| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    })
}

/// `[A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}`.
pub(crate) fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, String, String) {
        let p = parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        (p.registry, p.repository, p.tag)
    }

    #[test]
    fn normalises_as_docker_does() {
        let t = |r: &str, p: &str, g: &str| (r.to_owned(), p.to_owned(), g.to_owned());
        assert_eq!(ok("busybox"), t("docker.io", "library/busybox", "latest"));
        assert_eq!(
            ok("test.com:tag"),
            t("docker.io", "library/test.com", "tag")
        );
        assert_eq!(ok("test.com:5000/x"), t("test.com:5000", "x", "latest"));
        assert_eq!(
            ok("index.docker.io/a"),
            t("docker.io", "library/a", "latest")
        );
        assert_eq!(ok("localhost/a/b:1"), t("localhost", "a/b", "1"));
        assert_eq!(
            ok("foo_bar.com:8080"),
            t("docker.io", "library/foo_bar.com", "8080")
        );
        // Matched as a path, split as a domain (it has a dot), as oci-spec and docker do.
        assert_eq!(ok("a--b__c.d/e"), t("a--b__c.d", "e", "latest"));
        assert_eq!(ok("a--b__c/e"), t("docker.io", "a--b__c/e", "latest"));
        assert_eq!(ok("UPPER.io/x:Tag_1.-"), t("UPPER.io", "x", "Tag_1.-"));
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "a:",
            "a:-x",
            "a..b",
            "a___b",
            "a_-b",
            "-a",
            "a-",
            "x.io:/a",
            "x.io:5a/b",
            "a/B",
            ":t",
            "a:b:c",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&"a".repeat(300)), Err(Refusal::TooLong));
    }

    /// Random short strings over the grammar's interesting characters agree with oci-spec
    /// (the fuzz target `digest_reference` does the same with coverage guidance).
    #[test]
    fn agrees_with_oci_spec_on_random_names() {
        let alphabet = b"ab09z.-_/:AZx";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 14) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((x >> (i * 4 % 60)) as usize + i) % alphabet.len()] as char)
                .collect();
            let ours = parse(&s).map(|p| (p.registry, p.repository, p.tag));
            let theirs = oci_spec::distribution::Reference::try_from(s.as_str()).map(|r| {
                (
                    r.registry().to_owned(),
                    r.repository().to_owned(),
                    r.tag().unwrap_or("latest").to_owned(),
                )
            });
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{s:?}: {ours:?} vs {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a, b, "{s:?}");
            }
        }
    }
}
