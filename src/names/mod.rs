//! Image names: docker's reference normalisation (the grammar in [`grammar`], `oci-spec`'s
//! parser for non-ASCII input).
//!
//! `alpine` → `docker.io/library/alpine:latest`; `index.docker.io/x` → `docker.io/library/x`;
//! `localhost:5000/x` keeps its registry; a reference with a digest is keyed by the digest
//! (the digest wins over a tag, as in docker).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use oci_spec::distribution::Reference;
use oci_spec::image::{Arch, Descriptor, MediaType, Os, Platform, PlatformBuilder};

use crate::content::Labels;
use crate::digest::Digest;
use crate::error::{Error, Result};

pub mod grammar;

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name {
    /// The registry host as names spell it, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// The repository path within it, e.g. `library/alpine`.
    pub path: String,
    /// The tag, when the name has no digest.
    pub tag: Option<String>,
    /// The digest, when the name has one.
    pub digest: Option<Digest>,
}

impl Name {
    /// Parses and normalises `s` with docker's rules; `InvalidArgument` when it is not a
    /// reference.
    pub fn parse(s: &str) -> Result<Name> {
        if s.len() > MAX_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "reference of {} bytes is longer than {MAX_NAME_LEN}",
                s.len()
            )));
        }
        // oci-spec refuses blake3 digests; split the digest off and check it ourselves.
        let (base, digest) = match s.rsplit_once('@') {
            Some((b, d)) => (
                b,
                Some(
                    Digest::parse(d)
                        .map_err(|e| Error::InvalidArgument(format!("reference {s:?}: {e}")))?,
                ),
            ),
            None => (s, None),
        };
        // ASCII (every real name) by the hand-written grammar; the rest by oci-spec, whose
        // expression costs ~40 ms to compile in each process (see `reference`).
        let (registry, path, tag) = if base.is_ascii() {
            let p = crate::names::grammar::parse(base)
                .map_err(|e| Error::InvalidArgument(format!("reference {s:?}: {e}")))?;
            (p.registry, p.repository, Some(p.tag))
        } else {
            let r = Reference::try_from(base)
                .map_err(|e| Error::InvalidArgument(format!("reference {s:?}: {e}")))?;
            (
                r.registry().to_owned(),
                r.repository().to_owned(),
                r.tag().map(str::to_owned),
            )
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::InvalidArgument(format!(
                "reference {s:?}: repository name must be lowercase"
            )));
        }
        let name = Name {
            registry,
            path,
            tag: if digest.is_some() { None } else { tag },
            digest,
        };
        // Normalising adds a registry (and `library/`): the stored form must fit the limit
        // too, or a name would be accepted that its own key cannot be parsed back from.
        let stored = name.to_string().len();
        if stored > MAX_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "reference {s:?} is {stored} bytes once normalised, longer than {MAX_NAME_LEN}"
            )));
        }
        Ok(name)
    }

    /// The same repository with another tag.
    pub fn with_tag(&self, tag: &str) -> Result<Name> {
        Name::parse(&format!("{}:{tag}", self.repository()))
    }

    /// `registry/path`, e.g. `docker.io/library/alpine`: the name without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }
}

/// What an image method takes as a name: a string, parsed and normalised once where the
/// method starts, or a [`Name`] already parsed, taken as it is. So a caller that holds a
/// `Name` (a pull, a push, the CLI after checking its argument) never has it parsed again.
///
/// ```
/// use ocistore::{AsName, Name};
/// let parsed = Name::parse("alpine:3.20").unwrap();
/// assert_eq!(*"alpine:3.20".as_name().unwrap(), parsed);
/// assert_eq!(parsed.as_name().unwrap().to_string(), "docker.io/library/alpine:3.20");
/// assert!("UPPER/case".as_name().is_err());
/// ```
pub trait AsName {
    /// The name; `InvalidArgument` for a string that is not a reference.
    fn as_name(&self) -> Result<std::borrow::Cow<'_, Name>>;
}

impl AsName for str {
    fn as_name(&self) -> Result<std::borrow::Cow<'_, Name>> {
        Name::parse(self).map(std::borrow::Cow::Owned)
    }
}

impl AsName for String {
    fn as_name(&self) -> Result<std::borrow::Cow<'_, Name>> {
        self.as_str().as_name()
    }
}

impl AsName for Name {
    fn as_name(&self) -> Result<std::borrow::Cow<'_, Name>> {
        Ok(std::borrow::Cow::Borrowed(self))
    }
}

impl<T: AsName + ?Sized> AsName for &T {
    fn as_name(&self) -> Result<std::borrow::Cow<'_, Name>> {
        (**self).as_name()
    }
}

impl fmt::Display for Name {
    /// `repository:tag` or `repository@digest`: the key a name is stored under.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.digest, &self.tag) {
            (Some(d), _) => write!(f, "{}/{}@{d}", self.registry, self.path),
            (None, Some(t)) => write!(f, "{}/{}:{t}", self.registry, self.path),
            (None, None) => write!(f, "{}/{}", self.registry, self.path),
        }
    }
}

/// An image: a name and the descriptor it points at.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The normalised name (`repository:tag` or `repository@digest`).
    pub name: String,
    /// The manifest or index the name points at.
    pub target: Descriptor,
    /// When the name was first written.
    pub created_at: SystemTime,
    /// When the name last changed.
    pub updated_at: SystemTime,
    /// The name's labels.
    pub labels: Labels,
}

impl Image {
    /// The target's digest.
    pub fn digest(&self) -> Result<Digest> {
        descriptor_digest(&self.target)
    }
}

/// The digest of an oci-spec descriptor, as ours.
pub fn descriptor_digest(d: &Descriptor) -> Result<Digest> {
    Digest::parse(d.digest().as_ref())
}

/// A descriptor for `digest` with `media_type` and `size`.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Result<Descriptor> {
    let oci_digest = oci_spec::image::Digest::from_str(&digest.to_string())
        .map_err(|e| Error::InvalidArgument(format!("digest {digest}: {e}")))?;
    Ok(Descriptor::new(
        MediaType::from(media_type),
        size,
        oci_digest,
    ))
}

/// Parses `os/arch[/variant]` (e.g. `linux/arm64/v8`); `InvalidArgument` otherwise.
pub fn parse_platform(s: &str) -> Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    let bad = || Error::InvalidArgument(format!("platform {s:?} is not os/arch[/variant]"));
    if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let mut b = PlatformBuilder::default()
        .os(Os::from(parts[0]))
        .architecture(Arch::from(parts[1]));
    if let Some(v) = parts.get(2) {
        b = b.variant((*v).to_owned());
    }
    b.build().map_err(|_| bad())
}

/// `os/arch[/variant]`.
pub fn platform_string(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// Whether `candidate` serves `wanted`: same os and architecture, and the same variant when
/// `wanted` names one (arm64 without a variant means v8).
pub fn platform_matches(wanted: &Platform, candidate: &Platform) -> bool {
    let norm = |p: &Platform| -> Option<String> {
        match (
            p.architecture().to_string().as_str(),
            p.variant().as_deref(),
        ) {
            ("arm64", None) => Some("v8".into()),
            (_, v) => v.map(str::to_owned),
        }
    };
    wanted.os() == candidate.os()
        && wanted.architecture() == candidate.architecture()
        && (wanted.variant().is_none() || norm(wanted) == norm(candidate))
}

/// The platform of this machine, as OCI names it.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    parse_platform(&format!("{}/{arch}", std::env::consts::OS)).expect("host platform parses")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn the_limit_holds_for_the_normalised_name() {
        // A 983-byte registry: 1,020 bytes as typed, past 1,024 once `:latest` is added.
        let registry = vec!["a".repeat(40); 24].join(".");
        let long = format!("{registry}/{}", "b".repeat(36));
        assert_eq!(long.len(), 1020);
        let err = Name::parse(&long).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("once normalised"), "{err}");
        let fits = format!("{registry}/{}", "b".repeat(20));
        let n = Name::parse(&fits).unwrap();
        assert_eq!(Name::parse(&n.to_string()).unwrap(), n);
    }

    fn n(s: &str) -> String {
        Name::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(n("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(n("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(
            n("index.docker.io/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(n("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(n("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(n("ghcr.io/o/r:t"), "ghcr.io/o/r:t");
        let d = crate::digest::Algorithm::Sha256.digest(b"m");
        assert_eq!(
            n(&format!("alpine:3@{d}")),
            format!("docker.io/library/alpine@{d}")
        );
        let b3 = crate::digest::Algorithm::Blake3.digest(b"m");
        assert_eq!(n(&format!("x@{b3}")), format!("docker.io/library/x@{b3}"));
        assert_eq!(
            Name::parse("alpine")
                .unwrap()
                .with_tag("edge")
                .unwrap()
                .to_string(),
            "docker.io/library/alpine:edge"
        );
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "UPPER/case",
            ":tag",
            "a b",
            "x@sha256:abc",
            "x@sha256:../../x",
            &"a".repeat(2000),
        ] {
            assert_eq!(
                Name::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }
}
