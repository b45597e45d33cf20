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

use super::auth::Credentials;
use super::headers::retry_after;
use super::proxy::Proxies;
use super::token::scope;
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
    pub(super) auto_http: bool,
    /// A mirror that failed (not a miss): skipped for the rest of this client's life.
    pub(crate) failed: std::sync::atomic::AtomicBool,
    /// Large blob GETs may go around ureq ([`super::direct`]): plain HTTP, no proxy, and no
    /// answer yet that the direct path could not read.
    pub(crate) direct: std::sync::atomic::AtomicBool,
    pub(super) agent: ureq::Agent,
}

pub(crate) struct Client {
    pub(super) credentials: Credentials,
    pub(super) plain_http: bool,
    retry: RetryPolicy,
    pub(super) timeout: Duration,
    /// When the command's registry work must end, and its length ([`RegistryOptions::deadline`]).
    deadline: Option<(std::time::Instant, Duration)>,
    pub(super) hosts_dirs: Vec<PathBuf>,
    /// Which proxy each host is reached through.
    pub(super) proxies: Proxies,
    /// Agents by TLS settings (CA files, skip_verify) and proxy; the default one under
    /// `([], false, None)`.
    #[allow(clippy::type_complexity)]
    pub(super) agents:
        Mutex<HashMap<(Vec<PathBuf>, bool, Option<String>, Option<Duration>), ureq::Agent>>,
    /// Endpoints by registry host, mirrors first, the server last.
    pub(super) endpoints: Mutex<HashMap<String, Arc<Vec<Arc<Endpoint>>>>>,
    /// `Authorization` values by (credential host, scope).
    pub(super) tokens: Mutex<HashMap<(String, String), String>>,
    /// Loopback hosts found to speak TLS.
    pub(super) tls_loopback: Mutex<std::collections::HashSet<String>>,
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

#[cfg(test)]
mod tests {
    #[test]
    fn response_bodies_are_not_traced_byte_by_byte() {
        // ureq-proto calls `log::trace!` once per 16 bytes of every body it reads; with the
        // static level capped (Cargo.toml) those calls compile to nothing.
        assert!(log::STATIC_MAX_LEVEL <= log::LevelFilter::Debug);
    }
}
