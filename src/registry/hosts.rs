//! Per-host settings in containerd's `certs.d` layout: `<dir>/<host>/hosts.toml`, where
//! `<dir>` is `$OCISTORE_HOSTS_DIR`, else `~/.config/ocistore/certs.d`, else
//! `/etc/containerd/certs.d` (the first that has a directory for the host wins).
//!
//! ```toml
//! server = "https://registry.example.com"   # default: the host itself
//! ca = "/etc/ssl/private-ca.pem"            # or a list; relative to the host's directory
//! skip_verify = false
//! dial_timeout = "3s"                       # connecting; default 10 s
//!
//! [host."http://127.0.0.1:5001"]            # mirrors, tried in file order before the server
//!   capabilities = ["pull", "resolve"]      # default: pull, resolve, push
//!   ca = "mirror-ca.pem"
//!   skip_verify = true
//! ```
//!
//! A URL's scheme decides plain HTTP or TLS. Mirrors serve pulls only: a push, a mount, a
//! delete and a tag listing always go to the server.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One place to send requests for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The URL as written (`https://mirror.example.com`, `http://127.0.0.1:5001/v2`).
    pub url: String,
    /// `pull`, `resolve`, `push`.
    pub capabilities: Vec<String>,
    /// CA certificates (PEM files) that sign this endpoint's certificate.
    pub ca: Vec<PathBuf>,
    /// Accept any certificate.
    pub skip_verify: bool,
    /// How long connecting may take (`dial_timeout = "3s"`, as containerd reads it);
    /// default: [`super::CONNECT_TIMEOUT`].
    pub dial_timeout: Option<std::time::Duration>,
}

impl HostEntry {
    /// Whether this entry may serve `capability`.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// A host's `hosts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// The server, when `server` (or server-level `ca`/`skip_verify`) is given.
    pub server: Option<HostEntry>,
    /// Mirrors, in file order.
    pub mirrors: Vec<HostEntry>,
}

const ALL: [&str; 3] = ["pull", "resolve", "push"];

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("OCISTORE_HOSTS_DIR").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".config/ocistore/certs.d"));
    }
    dirs.push(PathBuf::from("/etc/containerd/certs.d"));
    dirs
}

/// The configuration of `host` from the first of `dirs` that has `<host>/hosts.toml`;
/// `None` when none has. A file that does not parse is `InvalidArgument` naming it.
pub fn load(dirs: &[PathBuf], host: &str) -> Result<Option<HostConfig>> {
    for dir in dirs {
        let path = dir.join(host).join("hosts.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse(&text, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => return Err(Error::io("read host settings", &path, e)),
        }
    }
    Ok(None)
}

/// Parses one `hosts.toml` (`path` names it in errors and anchors relative CA paths).
pub fn parse(text: &str, path: &Path) -> Result<HostConfig> {
    let bad = |why: String| Error::InvalidArgument(format!("'{}': {why}", path.display()));
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let entry = |url: &str, t: &toml::Table, default_caps: bool| -> Result<HostEntry> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(format!("{url:?} is not an http:// or https:// URL")));
        }
        let capabilities = match t.get("capabilities") {
            None if default_caps => ALL.iter().map(|c| (*c).to_owned()).collect(),
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| match v.as_str() {
                    Some(c) if ALL.contains(&c) => Ok(c.to_owned()),
                    _ => Err(bad(format!(
                        "capability {v} of {url:?}: expected pull, resolve or push"
                    ))),
                })
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(bad(format!(
                    "capabilities of {url:?}: expected a list, got {v}"
                )));
            }
        };
        let ca = match t.get("ca") {
            None => Vec::new(),
            Some(toml::Value::String(s)) => vec![base.join(s)],
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(|s| base.join(s))
                        .ok_or_else(|| bad(format!("ca of {url:?}: expected paths")))
                })
                .collect::<Result<_>>()?,
            Some(v) => return Err(bad(format!("ca of {url:?}: expected a path, got {v}"))),
        };
        let skip_verify = match t.get("skip_verify") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                return Err(bad(format!(
                    "skip_verify of {url:?}: expected true or false, got {v}"
                )));
            }
        };
        let dial_timeout = match t.get("dial_timeout") {
            None => None,
            Some(toml::Value::String(d)) => Some(
                humantime::parse_duration(d)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        bad(format!(
                            "dial_timeout of {url:?}: expected a duration such as \"3s\", got {d:?}"
                        ))
                    })?,
            ),
            Some(v) => {
                return Err(bad(format!(
                    "dial_timeout of {url:?}: expected a duration such as \"3s\", got {v}"
                )));
            }
        };
        Ok(HostEntry {
            url: url.trim_end_matches('/').to_owned(),
            capabilities,
            ca,
            skip_verify,
            dial_timeout,
        })
    };
    let server = match doc.get("server") {
        Some(toml::Value::String(url)) => Some(entry(url, &doc, true)?),
        Some(v) => return Err(bad(format!("server: expected a URL, got {v}"))),
        None => None,
    };
    let server = match server {
        Some(s) => Some(s),
        // Server-level TLS settings without a server URL: they apply to the default one.
        None if doc.contains_key("ca")
            || doc.contains_key("skip_verify")
            || doc.contains_key("dial_timeout") =>
        {
            let mut e = entry("https://default", &doc, true)?;
            e.url.clear();
            Some(e)
        }
        None => None,
    };
    let mut mirrors = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| bad("host: expected [host.\"<url>\"] tables".into()))?;
        for (url, t) in hosts {
            let t = t
                .as_table()
                .ok_or_else(|| bad(format!("host {url:?}: expected a table")))?;
            mirrors.push(entry(url, t, true)?);
        }
    }
    Ok(HostConfig { server, mirrors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_timeout_is_read_per_host() {
        let path = Path::new("/etc/containerd/certs.d/h/hosts.toml");
        let c = parse(
            "server = \"https://h\"\ndial_timeout = \"3s\"\n[host.\"http://m\"]\ndial_timeout = \"500ms\"\n",
            path,
        )
        .unwrap();
        assert_eq!(
            c.server.unwrap().dial_timeout,
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(
            c.mirrors[0].dial_timeout,
            Some(std::time::Duration::from_millis(500))
        );
        for bad in [
            "dial_timeout = 3",
            "dial_timeout = \"soon\"",
            "dial_timeout = \"0s\"",
        ] {
            let err = parse(bad, path).unwrap_err();
            assert!(err.to_string().contains("dial_timeout"), "{err}");
        }
    }

    #[test]
    fn parses_containerd_layout() {
        let p = Path::new("/certs.d/reg:5000/hosts.toml");
        let c = parse(
            r#"
server = "https://reg:5000"
ca = "ca.pem"
[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
[host."https://mirror.example.com/v2"]
  ca = ["/abs/a.pem", "b.pem"]
"#,
            p,
        )
        .unwrap();
        let server = c.server.unwrap();
        assert_eq!(server.url, "https://reg:5000");
        assert_eq!(server.ca, vec![PathBuf::from("/certs.d/reg:5000/ca.pem")]);
        assert!(server.can("push"));
        assert_eq!(c.mirrors.len(), 2);
        assert_eq!(c.mirrors[0].url, "http://127.0.0.1:5001");
        assert!(c.mirrors[0].can("pull") && !c.mirrors[0].can("push"));
        assert!(c.mirrors[0].skip_verify);
        assert_eq!(c.mirrors[1].url, "https://mirror.example.com/v2");
        assert_eq!(
            c.mirrors[1].ca,
            vec![
                PathBuf::from("/abs/a.pem"),
                PathBuf::from("/certs.d/reg:5000/b.pem")
            ]
        );
        for bad in [
            "server = 3",
            "server = \"ftp://x\"",
            "[host.\"http://m\"]\ncapabilities = [\"fly\"]",
            "skip_verify = \"yes\"",
            "not toml =",
        ] {
            assert!(parse(bad, p).is_err(), "{bad}");
        }
        let tls_only = parse("skip_verify = true", p).unwrap();
        assert!(tls_only.server.unwrap().skip_verify);
    }
}
