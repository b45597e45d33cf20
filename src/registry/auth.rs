//! Credentials and authentication, by the ecosystem's conventions.
//!
//! Credentials come from docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`) and from `$REGISTRY_AUTH_FILE` (the containers `auth.json`,
//! same format): an `auths` entry with `auth` (base64 `user:password`) or `username` and
//! `password`, or an `identitytoken`; `credHelpers` (per host) and `credsStore` (default)
//! name a `docker-credential-<helper>` program that is asked with `get`.
//!
//! A registry says how it wants to be asked in its `WWW-Authenticate` challenge: `Basic`
//! (send the credentials) or `Bearer realm=...,service=...,scope=...` (fetch a token from
//! the realm, with the credentials when there are some, and send the token).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};

/// What to present to one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or personal access token).
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in config.json), exchanged at the token
    /// realm for access tokens.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

/// Where credentials come from: explicit ones first, then the config files.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    explicit: BTreeMap<String, Credential>,
    files: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl Credentials {
    /// No credentials at all (anonymous).
    pub fn none() -> Self {
        Self::default()
    }

    /// The environment's: `$REGISTRY_AUTH_FILE`, then `$DOCKER_CONFIG/config.json` (else
    /// `~/.docker/config.json`). Files that do not exist are skipped when read.
    pub fn from_env() -> Self {
        let mut files = Vec::new();
        if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
            files.push(PathBuf::from(f));
        }
        match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            Some(dir) => files.push(PathBuf::from(dir).join("config.json")),
            None => {
                if let Some(home) = std::env::var_os("HOME") {
                    files.push(PathBuf::from(home).join(".docker/config.json"));
                }
            }
        }
        Credentials {
            explicit: BTreeMap::new(),
            files,
        }
    }

    /// Adds a config file (docker `config.json` format) to read.
    pub fn with_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// Sets the credential for `host` (e.g. `127.0.0.1:5000`, `docker.io`), ahead of any file.
    pub fn with(mut self, host: &str, credential: Credential) -> Self {
        self.explicit.insert(host.to_owned(), credential);
        self
    }

    /// The credential for `host`, if any source has one. A config file that cannot be read
    /// or parsed, or a helper that fails, is an error naming it.
    pub fn lookup(&self, host: &str) -> Result<Option<Credential>> {
        if let Some(c) = self.explicit.get(host) {
            return Ok(Some(c.clone()));
        }
        for file in &self.files {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read credentials", file, e)),
            };
            if let Some(c) = lookup_in(&text, file, host)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

/// The keys under which a config file may hold `host`'s entry.
fn keys_for(host: &str) -> Vec<String> {
    let mut keys = vec![
        host.to_owned(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("https://{host}/v1/"),
        format!("https://{host}/v2/"),
    ];
    if host == "docker.io" {
        keys.extend([
            "https://index.docker.io/v1/".to_owned(),
            "index.docker.io".to_owned(),
            "registry-1.docker.io".to_owned(),
        ]);
    }
    keys
}

/// Where one config file says `host`'s credential is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// In the file itself.
    Credential(Credential),
    /// With the credential helper `docker-credential-<name>`.
    Helper(String),
}

/// The credential for `host` in one config file's text (`path` names it in errors), asking
/// a credential helper when the file names one.
pub fn lookup_in(text: &str, path: &Path, host: &str) -> Result<Option<Credential>> {
    match find_in(text, path, host)? {
        None => Ok(None),
        Some(Found::Credential(c)) => Ok(Some(c)),
        Some(Found::Helper(h)) => ask_helper(&h, host),
    }
}

/// Where one config file's text says `host`'s credential is, without running anything.
pub fn find_in(text: &str, path: &Path, host: &str) -> Result<Option<Found>> {
    let cfg: ConfigFile = serde_json::from_str(text).map_err(|e| {
        Error::InvalidArgument(format!("credentials file '{}': {e}", path.display()))
    })?;
    let keys = keys_for(host);
    if let Some(helper) = keys.iter().find_map(|k| cfg.cred_helpers.get(k)) {
        return Ok(Some(Found::Helper(helper.clone())));
    }
    for key in &keys {
        let Some(entry) = cfg.auths.get(key) else {
            continue;
        };
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Found::Credential(Credential::IdentityToken(
                token.clone(),
            ))));
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "credentials file '{}': the auth of {key:?} is not base64 of \
                         user:password",
                        path.display()
                    ))
                })?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "credentials file '{}': the auth of {key:?} has no ':'",
                    path.display()
                ))
            })?;
            return Ok(Some(Found::Credential(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            })));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Found::Credential(Credential::Basic {
                username: u.clone(),
                password: p.clone(),
            })));
        }
    }
    match &cfg.creds_store {
        Some(store) if !store.is_empty() => Ok(Some(Found::Helper(store.clone()))),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-<helper> get` with `host` on stdin. A helper that has nothing for
/// the host is `None`.
fn ask_helper(helper: &str, host: &str) -> Result<Option<Credential>> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("run the credential helper", &program, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("run the credential helper", &program, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The helpers' protocol: "credentials not found in native keychain".
        if stdout.contains("not found")
            || String::from_utf8_lossy(&out.stderr).contains("not found")
        {
            return Ok(None);
        }
        return Err(Error::Unavailable(format!(
            "credential helper {program} failed for {host}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let answer: HelperAnswer = serde_json::from_str(&stdout)
        .map_err(|e| Error::InvalidArgument(format!("credential helper {program} answered {e}")))?;
    Ok(Some(if answer.username == "<token>" {
        Credential::IdentityToken(answer.secret)
    } else {
        Credential::Basic {
            username: answer.username,
            password: answer.secret,
        }
    }))
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased (`basic`, `bearer`).
    pub scheme: String,
    /// Its parameters, keys lower-cased (`realm`, `service`, `scope`, `error`).
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` header value into its challenges (RFC 7235: several may be
/// comma-separated; parameter values may be quoted, with `\` escapes). Malformed input is
/// `InvalidArgument`; never panics.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>> {
    let bad =
        |why: &str| Error::InvalidArgument(format!("WWW-Authenticate header {header:?}: {why}"));
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < s.len() && !matches!(s[*i], b' ' | b'\t' | b',' | b'=' | b'"') {
            *i += 1;
        }
        String::from_utf8_lossy(&s[start..*i]).into_owned()
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        // Either a new scheme or a parameter of the current challenge.
        let start = i;
        let word = token(&mut i);
        if word.is_empty() {
            return Err(bad(&format!("unexpected character at byte {i}")));
        }
        let mut j = i;
        while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' && !out.is_empty() {
            // A parameter: key=value or key="value". (`token68` values end in '=' too, but
            // registries never send them.)
            i = j + 1;
            while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                loop {
                    match s.get(i) {
                        None => return Err(bad("unterminated quoted string")),
                        Some(b'\\') => {
                            let Some(&c) = s.get(i + 1) else {
                                return Err(bad("unterminated quoted string"));
                            };
                            v.push(c);
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            let last = out.last_mut().expect("checked non-empty");
            last.params.insert(word.to_ascii_lowercase(), value);
        } else {
            if s.get(j) == Some(&b'=') {
                return Err(bad(&format!("parameter before any scheme at byte {start}")));
            }
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    if out.is_empty() {
        return Err(bad("no challenge"));
    }
    Ok(out)
}

/// The `Authorization` value of basic credentials.
pub(crate) fn basic_header(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["scope"], "repository:library/alpine:pull,push");
        let c = parse_challenges(r#"Basic realm="a \"b\"", Bearer realm=x"#).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], "a \"b\"");
        assert_eq!(c[1].params["realm"], "x");
        for bad in ["", "realm=x", r#"Bearer realm="x"#, "Bearer realm=\"x\\"] {
            assert!(parse_challenges(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_json_entries() {
        let p = Path::new("config.json");
        let text = r#"{"auths":{
            "127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"username":"hub","password":"pw"},
            "ghcr.io":{"identitytoken":"tok"}}}"#;
        assert_eq!(
            lookup_in(text, p, "127.0.0.1:5000").unwrap(),
            Some(Credential::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            lookup_in(text, p, "docker.io").unwrap(),
            Some(Credential::Basic {
                username: "hub".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            lookup_in(text, p, "ghcr.io").unwrap(),
            Some(Credential::IdentityToken("tok".into()))
        );
        assert_eq!(lookup_in(text, p, "quay.io").unwrap(), None);
        assert!(lookup_in("{", p, "x").is_err());
        assert!(lookup_in(r#"{"auths":{"x":{"auth":"!!"}}}"#, p, "x").is_err());
    }
}
