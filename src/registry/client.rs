//! The HTTP side of a [`Registry`](super::Registry): schemes per host, authentication,
//! retries. Blocking (ureq): the store is sync, and a blocking client cannot deadlock or
//! panic inside a caller's async runtime.
//!
//! Retried: connection errors, timeouts and 408/429/500/502/503/504, up to
//! [`RetryPolicy::attempts`] attempts with exponential backoff and jitter; a `Retry-After`
//! (seconds or an HTTP date) is honoured, capped at [`RetryPolicy::max_wait`]. A 401 fetches
//! a token (or sends basic credentials) and retries once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use ureq::http::{self, Response};

use super::auth::{Credential, Credentials, basic_header, parse_challenges};
use super::proxy::Proxies;
use crate::error::{Error, Result};

/// How failed requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 5).
    pub attempts: u32,
    /// The first backoff (default 200 ms); doubled each attempt, with jitter.
    pub base: Duration,
    /// The longest single wait, `Retry-After` included (default 30 s).
    pub max_wait: Duration,
    /// No attempt of a request starts once this long has passed since its first (default
    /// 45 s): a registry that never answers fails a request in about this long, not in
    /// `attempts` times the timeout.
    pub deadline: Duration,
}

/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a response's head once the request is sent.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(200),
            max_wait: Duration::from_secs(30),
            deadline: Duration::from_secs(45),
        }
    }
}

/// What a request is about: names the host, repository and object in every error, and gives
/// the token scope.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    /// The registry host as the user names it (`docker.io`, `127.0.0.1:5000`).
    pub host: &'a str,
    /// The repository within it (`library/alpine`).
    pub repository: &'a str,
    /// `pull`, `pull,push` or `delete`, for the token scope.
    pub actions: &'a str,
    /// What was asked, for messages ("manifest latest", "blob sha256:…").
    pub what: String,
    /// Another repository the token must let us pull from (a mount's source).
    pub also_pull: Option<&'a str>,
    /// Attempts already made elsewhere, which count against the retry budget (a failed
    /// GET read around the client, [`super::direct`], which the caller has waited after).
    pub spent: u32,
}

impl Target<'_> {
    pub(crate) fn describe(&self) -> String {
        format!("{}/{}: {}", self.host, self.repository, self.what)
    }
}

/// A request body that can be made again for a retry.
pub(crate) enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// A file, re-opened for each attempt (streamed, never held in memory).
    File(&'a std::path::Path),
}

/// One place requests for a host go: a mirror or the server, with its own TLS settings.
pub(crate) struct Endpoint {
    /// The API root, `http://127.0.0.1:5000/v2`.
    pub(crate) api: String,
    /// `scheme://authority`, to resolve relative `Location` and `Link` URLs against.
    pub(crate) origin: String,
    /// Whose credentials to present: the registry's name for its server, the mirror's
    /// authority for a mirror.
    pub(crate) cred_host: String,
    /// A mirror (pulls only) rather than the server.
    pub(crate) mirror: bool,
    /// What it may serve: `pull`, `resolve`, `push`.
    pub(crate) capabilities: Vec<String>,
    /// Plain HTTP only because the host is loopback (no hosts.toml, no `--plain-http`): a
    /// server that turns out to speak TLS is asked again over HTTPS.
    auto_http: bool,
    /// A mirror that failed (not a miss): skipped for the rest of this client's life.
    pub(crate) failed: std::sync::atomic::AtomicBool,
    /// Large blob GETs may go around ureq ([`super::direct`]): plain HTTP, no proxy, and no
    /// answer yet that the direct path could not read.
    pub(crate) direct: std::sync::atomic::AtomicBool,
    agent: ureq::Agent,
}

pub(crate) struct Client {
    credentials: Credentials,
    plain_http: bool,
    retry: RetryPolicy,
    timeout: Duration,
    /// When the command's registry work must end, and its length ([`RegistryOptions::deadline`]).
    deadline: Option<(std::time::Instant, Duration)>,
    hosts_dirs: Vec<PathBuf>,
    /// Which proxy each host is reached through.
    proxies: Proxies,
    /// Agents by TLS settings (CA files, skip_verify) and proxy; the default one under
    /// `([], false, None)`.
    #[allow(clippy::type_complexity)]
    agents: Mutex<HashMap<(Vec<PathBuf>, bool, Option<String>, Option<Duration>), ureq::Agent>>,
    /// Endpoints by registry host, mirrors first, the server last.
    endpoints: Mutex<HashMap<String, Arc<Vec<Arc<Endpoint>>>>>,
    /// `Authorization` values by (credential host, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
    /// Loopback hosts found to speak TLS.
    tls_loopback: Mutex<std::collections::HashSet<String>>,
}

/// Whether `host` (with or without a port) is a loopback address or `localhost`.
pub(crate) fn is_loopback(host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host that serves the API of `host`: Docker Hub's names live on another.
pub(crate) fn api_host(host: &str) -> &str {
    if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    }
}

impl Client {
    pub(crate) fn new(opts: super::RegistryOptions) -> Client {
        Client {
            credentials: opts.credentials,
            plain_http: opts.plain_http,
            retry: opts.retry,
            timeout: opts.timeout,
            deadline: opts.deadline.map(|d| (std::time::Instant::now() + d, d)),
            hosts_dirs: opts.hosts_dirs,
            proxies: opts.proxies,
            agents: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            tls_loopback: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The agent for a TLS setting: trusting `ca` (PEM files) instead of the webpki roots
    /// when given, or nothing at all with `skip_verify`.
    fn agent(
        &self,
        ca: &[PathBuf],
        skip_verify: bool,
        proxy: Option<&str>,
        dial_timeout: Option<Duration>,
    ) -> Result<ureq::Agent> {
        let key = (
            ca.to_vec(),
            skip_verify,
            proxy.map(str::to_owned),
            dial_timeout,
        );
        if let Some(a) = self.agents.lock().get(&key) {
            return Ok(a.clone());
        }
        let mut tls = ureq::tls::TlsConfig::builder().disable_verification(skip_verify);
        if !ca.is_empty() {
            let mut certs = Vec::new();
            for path in ca {
                let pem =
                    std::fs::read(path).map_err(|e| Error::io("read CA certificate", path, e))?;
                for item in ureq::tls::parse_pem(&pem) {
                    match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(Error::InvalidArgument(format!(
                                "CA certificate '{}': {e}",
                                path.display()
                            )));
                        }
                    }
                }
            }
            if certs.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "no PEM certificate in {}",
                    ca.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        // Never ureq's own reading of the environment: see proxy.rs.
        let proxy = proxy
            .map(|u| {
                ureq::Proxy::new(u).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "proxy {u:?} (from HTTP_PROXY / HTTPS_PROXY): {e}"
                    ))
                })
            })
            .transpose()?;
        let t = self.timeout;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(proxy)
            .http_status_as_error(false)
            .timeout_connect(Some(dial_timeout.unwrap_or(t.min(CONNECT_TIMEOUT))))
            .timeout_recv_response(Some(t.min(RESPONSE_TIMEOUT)))
            .timeout_per_read(Some(t))
            .user_agent(concat!("ocistore/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(16)
            // Blob bodies arrive in fewer, larger reads (128 KiB by default): about 10 ms less
            // CPU per 200 MiB pulled, for 1 MiB per connection.
            .input_buffer_size(1 << 20)
            .tls_config(tls.build())
            .build()
            .into();
        self.agents.lock().insert(key, agent.clone());
        Ok(agent)
    }

    /// Where requests for `host` go: its mirrors (from `hosts.toml`) in order, then its
    /// server. Loopback hosts and `--plain-http` use plain HTTP when no `hosts.toml` says
    /// otherwise.
    pub(crate) fn endpoints(&self, host: &str) -> Result<Arc<Vec<Arc<Endpoint>>>> {
        if let Some(e) = self.endpoints.lock().get(host) {
            return Ok(Arc::clone(e));
        }
        let config = super::hosts::load(&self.hosts_dirs, host)?.unwrap_or_default();
        let mut list = Vec::new();
        for m in &config.mirrors {
            list.push(Arc::new(self.endpoint(&m.url, m, true, None)?));
        }
        let auto_http = !self.plain_http
            && is_loopback(host)
            && !self.tls_loopback.lock().contains(host)
            && config.server.as_ref().is_none_or(|s| s.url.is_empty());
        let default_url = {
            let scheme = if self.plain_http || auto_http {
                "http"
            } else {
                "https"
            };
            format!("{scheme}://{}", api_host(host))
        };
        let server = match config.server {
            Some(mut s) => {
                if s.url.is_empty() {
                    s.url = default_url;
                }
                if self.plain_http {
                    s.url = s.url.replacen("https://", "http://", 1);
                }
                s
            }
            None => super::hosts::HostEntry {
                url: default_url,
                capabilities: ["pull", "resolve", "push"].map(String::from).to_vec(),
                ca: Vec::new(),
                skip_verify: false,
                dial_timeout: None,
            },
        };
        let mut server = self.endpoint(&server.url, &server, false, Some(host))?;
        server.auto_http = auto_http;
        list.push(Arc::new(server));
        let list = Arc::new(list);
        self.endpoints
            .lock()
            .insert(host.to_owned(), Arc::clone(&list));
        Ok(list)
    }

    fn endpoint(
        &self,
        url: &str,
        entry: &super::hosts::HostEntry,
        mirror: bool,
        registry: Option<&str>,
    ) -> Result<Endpoint> {
        let url = url.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
        let authority = rest.split('/').next().unwrap_or(rest);
        let api = if url.ends_with("/v2") {
            url.to_owned()
        } else {
            format!("{url}/v2")
        };
        let proxy = self.proxies.for_url(scheme, authority);
        let agent = self.agent(&entry.ca, entry.skip_verify, proxy, entry.dial_timeout)?;
        Ok(Endpoint {
            direct: std::sync::atomic::AtomicBool::new(scheme == "http" && proxy.is_none()),
            api,
            origin: format!("{scheme}://{authority}"),
            cred_host: registry.unwrap_or(authority).to_owned(),
            mirror,
            capabilities: entry.capabilities.clone(),
            auto_http: false,
            failed: std::sync::atomic::AtomicBool::new(false),
            agent,
        })
    }

    /// Sends a request, authenticating and retrying as the module docs say. Every status
    /// comes back as a response (callers judge 404 and friends); `Err` only when the
    /// attempts ran out or authentication failed.
    pub(crate) fn send(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Response<ureq::Body>> {
        let scope = scope(t);
        let key = (ep.cred_host.clone(), scope.clone());
        let mut reauthed = false;
        let mut attempt = t.spent;
        let began = std::time::Instant::now();
        // A mirror is tried once per request: on failure the next place is asked instead.
        let attempts = if ep.mirror { 1 } else { self.retry.attempts };
        loop {
            attempt += 1;
            self.check_deadline(t)?;
            let auth = self.tokens.lock().get(&key).cloned();
            let mut req = http::Request::builder().method(method.clone()).uri(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            // Credentials only to the endpoint itself: an absolute `Location` or `Link` may
            // name another host, or plain HTTP.
            let same_origin = url
                .strip_prefix(ep.origin.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if let Some(a) = auth.as_ref().filter(|_| same_origin) {
                req = req.header("Authorization", a);
            }
            // A redirect turns PUT, PATCH, POST and DELETE into GET (ureq follows 301-303
            // that way), whose 200 would pass for success: those are not followed.
            let follow = matches!(method, http::Method::GET | http::Method::HEAD);
            let result = match &body {
                Body::None => req.body(()).map(|r| run_on(&ep.agent, follow, r)),
                Body::Bytes(b) => req.body(*b).map(|r| run_on(&ep.agent, follow, r)),
                Body::File(path) => {
                    let file = std::fs::File::open(path)
                        .map_err(|e| Error::io("open for upload", path, e))?;
                    req.body(file).map(|r| run_on(&ep.agent, follow, r))
                }
            }
            .map_err(|e| Error::InvalidArgument(format!("{}: bad request: {e}", t.describe())))?;
            let wait = match result {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status == 400 && ep.auto_http && resp.headers().is_empty() {
                        // Go's TLS server answering plain HTTP (a bare "400 Bad Request",
                        // without a single header): ask again over HTTPS.
                        return self.upgrade_to_tls(t, ep, method, url, headers, body);
                    }
                    // Credentials are the registry's: a 401 from another host (one a
                    // redirect or a `Link` led to) gets none, not even for its token realm.
                    if status == 401 {
                        let answered = {
                            use ureq::ResponseExt;
                            let uri = resp.get_uri();
                            format!(
                                "{}://{}",
                                uri.scheme_str().unwrap_or(""),
                                uri.authority().map_or("", |a| a.as_str())
                            )
                        };
                        if !same_origin || answered != ep.origin {
                            return Err(Error::Unauthorized(format!(
                                "{}: {answered}, which is not the registry ({}), asks for \
                                 credentials (HTTP 401); the registry's are given to it alone",
                                t.describe(),
                                ep.origin
                            )));
                        }
                    }
                    if status == 401 && !reauthed {
                        reauthed = true;
                        let challenge = resp
                            .headers()
                            .get("www-authenticate")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let value = self.authenticate(t, ep, &challenge, &scope)?;
                        self.tokens.lock().insert(key.clone(), value);
                        attempt -= 1; // re-authentication is not a failed attempt
                        continue;
                    }
                    if status == 401 {
                        return Err(Error::Unauthorized(format!(
                            "{}: {} (HTTP 401 with the credentials{})",
                            t.describe(),
                            "the registry refused the credentials",
                            self.cred_source_hint(&ep.cred_host)
                        )));
                    }
                    if !matches!(status, 408 | 429 | 500 | 502 | 503 | 504) {
                        return Ok(resp);
                    }
                    if attempt >= attempts {
                        return Err(Error::Unavailable(format!(
                            "{}: HTTP {status} after {attempt} attempts",
                            t.describe()
                        )));
                    }
                    let wait = retry_after(&resp).unwrap_or_else(|| self.backoff(attempt));
                    (wait, format!("HTTP {status}"))
                }
                Err(e) => {
                    if attempt >= attempts || !transient(&e) {
                        return Err(network_error(t, &e, attempt));
                    }
                    let cause = match &e {
                        ureq::Error::Timeout(_) => "no answer in time".to_owned(),
                        e => e.to_string(),
                    };
                    (self.backoff(attempt), cause)
                }
            };
            let (wait, cause) = wait;
            let wait = wait.min(self.retry.max_wait);
            if let Some((at, limit)) = self.deadline
                && std::time::Instant::now() + wait >= at
            {
                return Err(Error::Unavailable(format!(
                    "{}: {cause}; the command's deadline of {} (--timeout) passes before a \
                     retry in {} s",
                    t.describe(),
                    humantime::format_duration(limit),
                    wait.as_secs()
                )));
            }
            let spent = began.elapsed();
            if spent + wait >= self.retry.deadline {
                return Err(Error::Unavailable(format!(
                    "{}: {cause}; gave up after {attempt} attempts in {:.0} s (the retry deadline \
                     is {} s)",
                    t.describe(),
                    spent.as_secs_f64(),
                    self.retry.deadline.as_secs()
                )));
            }
            if wait >= Duration::from_secs(5) {
                tracing::warn!(target = %t.describe(), attempt, "waiting {} s before trying again", wait.as_secs());
            } else {
                tracing::debug!(target = %t.describe(), attempt, ?wait, "retrying");
            }
            std::thread::sleep(wait);
        }
    }

    /// `Unavailable` naming `t` once the command's deadline has passed.
    pub(crate) fn check_deadline(&self, t: &Target<'_>) -> Result<()> {
        match self.deadline {
            Some((at, limit)) if std::time::Instant::now() >= at => {
                Err(Error::Unavailable(format!(
                    "{}: the command's deadline of {} passed (--timeout)",
                    t.describe(),
                    humantime::format_duration(limit)
                )))
            }
            _ => Ok(()),
        }
    }

    /// The command's deadline, for body readers ([`super::rate::RateGuard::until`]).
    pub(crate) fn deadline(&self) -> Option<(std::time::Instant, Duration)> {
        self.deadline
    }

    /// The `Authorization` value [`Client::send`] would present to `ep` for `t`, if it has
    /// one yet.
    pub(crate) fn authorization(&self, t: &Target<'_>, ep: &Endpoint) -> Option<String> {
        self.tokens
            .lock()
            .get(&(ep.cred_host.clone(), scope(t)))
            .cloned()
    }

    /// The timeout for connecting and for each read.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A loopback registry that speaks TLS: from now on its server is asked over HTTPS (with
    /// the webpki roots; a private CA goes in hosts.toml), starting with this request.
    fn upgrade_to_tls(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Response<ureq::Body>> {
        tracing::debug!(host = %ep.cred_host, "loopback registry speaks TLS; using https");
        self.tls_loopback.lock().insert(ep.cred_host.clone());
        self.endpoints.lock().remove(&ep.cred_host);
        let list = self.endpoints(&ep.cred_host)?;
        let https = list.last().expect("the server is always listed");
        let url = url.replacen(&ep.origin, &https.origin, 1);
        self.send(t, https, method, &url, headers, body)
    }

    /// Exponential backoff with jitter: base × 2^(attempt-1), ±50 %.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = self.retry.base.saturating_mul(1 << (attempt - 1).min(16));
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let jitter = 0.5 + f64::from(nanos % 1000) / 1000.0;
        base.mul_f64(jitter).min(self.retry.max_wait)
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    fn cred_source_hint(&self, host: &str) -> String {
        match self.credentials.lookup(host) {
            Ok(Some(_)) => " found for it".to_owned(),
            _ => format!(": none in config.json for {host}"),
        }
    }

    /// Answers a 401's challenge: the `Authorization` value to send from now on.
    fn authenticate(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        header: &str,
        scope: &str,
    ) -> Result<String> {
        let unauthorized = |why: String| Error::Unauthorized(format!("{}: {why}", t.describe()));
        if header.is_empty() {
            return Err(unauthorized(
                "HTTP 401 without a WWW-Authenticate challenge".into(),
            ));
        }
        let challenges = parse_challenges(header)?;
        let credential = self.credentials.lookup(&ep.cred_host)?;
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer
                .params
                .get("realm")
                .ok_or_else(|| unauthorized("Bearer challenge without a realm".into()))?;
            return self.fetch_token(
                t,
                ep,
                realm,
                bearer.params.get("service"),
                scope,
                credential,
            );
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match credential {
                Some(Credential::Basic { username, password }) => {
                    Ok(basic_header(&username, &password))
                }
                Some(Credential::IdentityToken(_)) => Err(unauthorized(
                    "the registry asks for basic auth; config.json holds only an identity token"
                        .into(),
                )),
                None => Err(unauthorized(format!(
                    "authentication required (HTTP 401): no credentials in config.json for {}",
                    ep.cred_host
                ))),
            };
        }
        Err(unauthorized(format!(
            "unsupported authentication scheme {:?}",
            challenges[0].scheme
        )))
    }

    /// Fetches a bearer token from `realm` for `scope`.
    fn fetch_token(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        realm: &str,
        service: Option<&String>,
        scope: &str,
        credential: Option<Credential>,
    ) -> Result<String> {
        let enc = |s: &str| percent_encode(s);
        let mut query = scope
            .split(' ')
            .map(|one| format!("scope={}", enc(one)))
            .collect::<Vec<_>>()
            .join("&");
        if let Some(s) = service {
            query.push_str(&format!("&service={}", enc(s)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let result = match &credential {
            Some(Credential::IdentityToken(token)) => {
                let form = format!(
                    "grant_type=refresh_token&refresh_token={}&client_id=ocistore&{query}",
                    enc(token)
                );
                let req = http::Request::post(realm)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.into_bytes());
                req.map(|r| ep.agent.run(r))
            }
            other => {
                let mut req = http::Request::get(format!("{realm}{sep}{query}"));
                if let Some(Credential::Basic { username, password }) = other {
                    req = req.header("Authorization", basic_header(username, password));
                }
                req.body(()).map(|r| ep.agent.run(r))
            }
        }
        .map_err(|e| Error::InvalidArgument(format!("token realm {realm:?}: {e}")))?;
        let mut resp = result.map_err(|e| network_error(t, &e, 1))?;
        let status = resp.status().as_u16();
        if matches!(status, 408 | 429 | 500 | 502 | 503 | 504) {
            return Err(Error::Unavailable(format!(
                "{}: the token server {realm} answered HTTP {status}; try again later",
                t.describe()
            )));
        }
        if status != 200 {
            let hint = if credential.is_none() {
                format!(" (no credentials in config.json for {})", ep.cred_host)
            } else {
                String::new()
            };
            return Err(Error::Unauthorized(format!(
                "{}: the token server {realm} answered HTTP {status}{hint}",
                t.describe()
            )));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| network_error(t, &e, 1))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::Unauthorized(format!(
                "{}: token server answered non-JSON: {e}",
                t.describe()
            ))
        })?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthorized(format!("{}: the token server sent no token", t.describe()))
            })?;
        Ok(format!("Bearer {token}"))
    }
}

/// The token scope of `t`: space-separated scopes; a mount also needs pull on its source
/// repository.
fn scope(t: &Target<'_>) -> String {
    let mut scope = format!("repository:{}:{}", t.repository, t.actions);
    if let Some(from) = t.also_pull {
        scope.push_str(&format!(" repository:{from}:pull"));
    }
    scope
}

/// Runs `r`, following redirects only when `follow`.
fn run_on<B: ureq::AsSendBody>(
    agent: &ureq::Agent,
    follow: bool,
    r: http::Request<B>,
) -> std::result::Result<Response<ureq::Body>, ureq::Error> {
    if follow {
        agent.run(r)
    } else {
        agent.run(agent.configure_request(r).max_redirects(0).build())
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a transport error is worth another attempt.
fn transient(e: &ureq::Error) -> bool {
    // A certificate the client refuses is refused again: no retry.
    !is_tls_refusal(e)
        && matches!(
            e,
            ureq::Error::Io(_)
                | ureq::Error::Timeout(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::Protocol(_)
        )
}

fn is_tls_refusal(e: &ureq::Error) -> bool {
    let text = e.to_string();
    text.contains("certificate") || text.contains("UnknownIssuer")
}

/// A transport error as the library's: names host, repository and what was asked.
pub(crate) fn network_error(t: &Target<'_>, e: &ureq::Error, attempts: u32) -> Error {
    let what = match e {
        _ if is_tls_refusal(e) => "TLS failure",
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS failure",
        ureq::Error::HostNotFound => "host not found",
        ureq::Error::ConnectionFailed => "connection failed",
        ureq::Error::Timeout(_) => "timed out",
        _ => "network failure",
    };
    let tries = if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    };
    let text = e.to_string();
    let hint = if text.contains("UnknownIssuer")
        || text.contains("unknown issuer")
        || text.contains("CaUsedAsEndEntity")
        || text.contains("invalid peer certificate")
    {
        format!(
            " (certificate signed by an unknown authority: name its CA as `ca` in \
             $OCISTORE_HOSTS_DIR/{}/hosts.toml, or set skip_verify there)",
            t.host
        )
    } else if text.contains("NotValidForName") {
        " (the certificate is not valid for this host name)".to_owned()
    } else {
        String::new()
    };
    Error::Unavailable(format!("{}: {what}{tries}: {text}{hint}", t.describe()))
}

/// The wait a `Retry-After` header asks for (seconds, or an HTTP date).
fn retry_after(resp: &Response<ureq::Body>) -> Option<Duration> {
    parse_retry_after(resp.headers().get("retry-after")?.to_str().ok()?)
}

/// A `Retry-After` value (seconds or an HTTP date) as a wait from now.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form servers send.
fn httpdate_parse(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: u64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    let days = days.checked_sub(719_468)?;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The URL of the `rel="next"` entry of a `Link` header, resolved against `base`
/// (`http://host`); `None` when there is none. Malformed input gives `None`.
pub fn parse_link_next(header: &str, base: &str) -> Option<String> {
    for part in header.split(',') {
        let part = part.trim();
        let (target, params) = part.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if is_next {
            return Some(
                if target.starts_with("http://") || target.starts_with("https://") {
                    target.to_owned()
                } else if target.starts_with('/') {
                    format!("{base}{target}")
                } else {
                    return None;
                },
            );
        }
    }
    None
}

/// A `Content-Range: bytes START-END/TOTAL` header: (start, end inclusive, total if known).
/// Malformed input gives `None`.
pub fn parse_content_range(header: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = header.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end >= t {
                return None;
            }
            Some(t)
        }
    };
    Some((start, end, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_bodies_are_not_traced_byte_by_byte() {
        // ureq-proto calls `log::trace!` once per 16 bytes of every body it reads; with the
        // static level capped (Cargo.toml) those calls compile to nothing.
        assert!(log::STATIC_MAX_LEVEL <= log::LevelFilter::Debug);
    }

    #[test]
    fn blob_bodies_are_read_around_ureq_only_without_a_proxy() {
        use crate::registry::{Proxies, RegistryOptions};
        let direct = |proxies: Proxies, host: &str| {
            let client = Client::new(RegistryOptions {
                credentials: Credentials::none(),
                plain_http: true,
                hosts_dirs: Vec::new(),
                proxies,
                ..Default::default()
            });
            let list = client.endpoints(host).unwrap();
            list.last()
                .unwrap()
                .direct
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let proxied = Proxies {
            http: Some("http://proxy.example:3128".into()),
            ..Default::default()
        };
        assert!(direct(Proxies::none(), "r.example.com:5000"));
        assert!(!direct(proxied.clone(), "r.example.com:5000"));
        assert!(
            direct(proxied.clone(), "127.0.0.1:5000"),
            "loopback is never proxied"
        );
        let bypassed = Proxies {
            no_proxy: "example.com".into(),
            ..proxied
        };
        assert!(direct(bypassed, "r.example.com:5000"));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "ghcr.io",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_link_next(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#, "http://h").as_deref(),
            Some("http://h/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(parse_link_next("garbage", "http://h"), None);
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, 99, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, 99, None)));
        for bad in [
            "bytes 10-9/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes x-1/2",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
        assert_eq!(
            httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(httpdate_parse("yesterday"), None);
    }
}
