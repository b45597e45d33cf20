//! Test doubles: tiny loopback servers that stand in where the real parts cannot do what a
//! test needs (each one's comment says why). Every one runs on a [`Server`], which stops it
//! when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Reg, RegOpts, need, openssl_req};

// ================================================================ the shared server

/// A loopback server on a background thread that stops on drop: it accepts connections on a
/// free port of 127.0.0.1 and hands each to `serve`, one after the other, until dropped.
pub struct Server {
    pub port: u16,
    /// `127.0.0.1:PORT`.
    pub host: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(mut serve: impl FnMut(TcpStream) + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    serve(conn);
                }
            }
        });
        Server {
            port,
            host: format!("127.0.0.1:{port}"),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    /// Raises the stop flag, wakes the accept loop with a connection of its own (which it does
    /// not serve) and joins the thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The head of the one HTTP request a connection carries.
struct Head {
    /// The request line, without its CRLF.
    line: String,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
}

impl Head {
    /// Reads the head off `conn` (with a read timeout of `timeout`): `None` when the connection
    /// closes before its end. The reader holds whatever body follows.
    fn read(
        conn: &TcpStream,
        timeout: Duration,
    ) -> std::io::Result<Option<(Head, BufReader<TcpStream>)>> {
        conn.set_read_timeout(Some(timeout))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(None);
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let uri = parts.next().unwrap_or("").to_owned();
        let head = Head {
            line,
            method,
            uri,
            headers,
        };
        Ok(Some((head, reader)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The URI's path and query (empty when none).
    fn path_query(&self) -> (&str, &str) {
        self.uri.split_once('?').unwrap_or((&self.uri, ""))
    }
}

const JSON_TYPE: &str = "Content-Type: application/json\r\n";

/// Writes a whole answer: the status line, `extra` header lines (each ending in CRLF), the
/// body's `Content-Length`, `Connection: close` and the body.
fn respond(conn: &mut TcpStream, status: &str, extra: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

// ================================================================ a registry of documents

/// A test double for a registry that serves documents no real registry would take (a
/// manifest naming a layer of 2^63 bytes): `GET /v2/` answers 200, `GET|HEAD
/// /v2/<repo>/manifests/<tag>` answers `manifest` as `media_type`, and everything else 404.
/// Records every request line.
pub struct Documents {
    pub server: Server,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Documents {
    pub fn start(
        repo: &'static str,
        tag: &'static str,
        media_type: &'static str,
        manifest: String,
    ) -> Documents {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let server = Server::start(move |mut conn| {
            let Ok(Some((head, _))) = Head::read(&conn, Duration::from_secs(10)) else {
                return;
            };
            s.lock().unwrap().push(head.line.clone());
            let (path, _) = head.path_query();
            let _ = if path == "/v2/" {
                respond(&mut conn, "200 OK", JSON_TYPE, "{}")
            } else if path == format!("/v2/{repo}/manifests/{tag}") {
                let ct = format!("Content-Type: {media_type}\r\n");
                if head.method == "HEAD" {
                    write!(
                        conn,
                        "HTTP/1.1 200 OK\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        manifest.len()
                    )
                } else {
                    respond(&mut conn, "200 OK", &ct, &manifest)
                }
            } else {
                respond(&mut conn, "404 Not Found", JSON_TYPE, "{}")
            };
        });
        Documents { server, seen }
    }

    /// The request lines so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A test double answering fixed bodies by path (`GET /v2/` always 200), 404 otherwise:
/// for what no real registry sends, such as a 60 MiB tag list page or tags holding control
/// characters.
pub struct Routes {
    pub server: Server,
}

impl Routes {
    pub fn start(routes: Vec<(String, String)>) -> Routes {
        let routes = Arc::new(routes);
        let server = Server::start(move |mut conn| {
            let Ok(Some((head, _))) = Head::read(&conn, Duration::from_secs(10)) else {
                return;
            };
            let (path, _) = head.path_query();
            let body = if path == "/v2/" {
                Some("{}")
            } else {
                routes
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, b)| b.as_str())
            };
            let _ = match body {
                Some(b) => respond(&mut conn, "200 OK", JSON_TYPE, b),
                None => respond(&mut conn, "404 Not Found", JSON_TYPE, "{}"),
            };
        });
        Routes { server }
    }
}

// ================================================================ paging tag lists

/// A test double for a registry that pages tag lists, as distribution 2.8 (the real registry
/// of these tests) does not: it ignores `n` and `last` and sends no `Link`. Serves only
/// `GET /v2/<repo>/tags/list`: at most `n` tags (2 when not asked) after `last`, in lexical
/// order, with a `Link` to the next page. Records each request's URI. Stops when dropped.
pub struct PagingTags {
    pub server: Server,
    uris: Arc<Mutex<Vec<String>>>,
}

impl PagingTags {
    pub fn start(repo: &'static str, tags: &'static [&'static str]) -> PagingTags {
        let uris = Arc::new(Mutex::new(Vec::new()));
        let u = uris.clone();
        let server = Server::start(move |mut conn| {
            let _ = Self::answer(&mut conn, repo, tags, &u);
        });
        PagingTags { server, uris }
    }

    fn answer(
        conn: &mut TcpStream,
        repo: &str,
        tags: &[&str],
        uris: &Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        let Some((head, _)) = Head::read(conn, Duration::from_secs(10))? else {
            return Ok(());
        };
        uris.lock().unwrap().push(head.uri.clone());
        let (path, query) = head.path_query();
        if path != format!("/v2/{repo}/tags/list") {
            return respond(conn, "404 Not Found", "", "");
        }
        let mut n = 2usize;
        let mut last = "";
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("n", v)) => n = v.parse().unwrap_or(2),
                Some(("last", v)) => last = v,
                _ => {}
            }
        }
        let page: Vec<&str> = tags.iter().copied().filter(|t| *t > last).take(n).collect();
        let more = page.last().is_some_and(|l| tags.iter().any(|t| t > l));
        let link = match page.last() {
            Some(l) if more => {
                format!("Link: </v2/{repo}/tags/list?last={l}&n={n}>; rel=\"next\"\r\n")
            }
            _ => String::new(),
        };
        let body = json!({"name": repo, "tags": page}).to_string();
        respond(conn, "200 OK", &format!("{JSON_TYPE}{link}"), &body)
    }

    pub fn uris(&self) -> Vec<String> {
        self.uris.lock().unwrap().clone()
    }
}

// ================================================================ a broken mirror

/// A test double for a broken mirror (no real registry can be made to fail on every
/// connection): accepts connections and closes them at once, counting them, so that a test can
/// tell how often the mirror is tried. Stops when dropped.
pub struct Slammer {
    pub server: Server,
    pub accepts: Arc<AtomicUsize>,
}

impl Slammer {
    pub fn start() -> Slammer {
        let accepts = Arc::new(AtomicUsize::new(0));
        let a = accepts.clone();
        let server = Server::start(move |conn| {
            a.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        });
        Slammer { server, accepts }
    }
}

// ================================================================ the fault proxy

/// What the fault proxy does to a request that matches a [`Rule`].
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Sends the answer's head (its `Content-Length` unchanged) and the first half of its
    /// body, then closes the connection.
    CutHalf,
    /// Forwards the request without its `Range` header: the registry answers 200 with the
    /// whole blob.
    StripRange,
    /// Answers this status, with these extra header lines (each ending in CRLF), without
    /// asking the registry.
    Status(u16, &'static str),
    /// Flips one byte in the middle of the body.
    FlipByte,
    /// Appends this many bytes to the body, with a `Content-Length` to match.
    Append(usize),
    /// Waits this long before forwarding.
    Delay(Duration),
    /// Sends the answer's head and the first half of its body, waits this long, then sends
    /// the rest: a transfer caught in the middle.
    #[allow(dead_code)] // tests/it/containerd.rs
    StallHalf(Duration),
}

/// Which requests a fault applies to, and how often.
#[derive(Debug, Clone)]
pub struct Rule {
    method: &'static str,
    /// A substring of the request URI.
    uri: String,
    /// Only requests carrying a `Range` header.
    ranged: bool,
    fault: Fault,
    /// How many more times it applies; `None`: every time.
    times: Option<usize>,
}

impl Rule {
    pub fn new(method: &'static str, uri: &str, fault: Fault) -> Rule {
        Rule {
            method,
            uri: uri.to_owned(),
            ranged: false,
            fault,
            times: None,
        }
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    pub fn ranged(mut self) -> Rule {
        self.ranged = true;
        self
    }

    fn matches(&self, method: &str, uri: &str, range: bool) -> bool {
        self.method == method
            && uri.contains(&self.uri)
            && (range || !self.ranged)
            && self.times != Some(0)
    }
}

/// A request the fault proxy handled.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    pub uri: String,
    /// Its `Range` header.
    pub range: Option<String>,
    /// The fault applied to it.
    pub fault: Option<Fault>,
    /// The status answered: the registry's, or the fault's own.
    pub status: u16,
}

impl Seen {
    /// N of a `Range: bytes=N-` header.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

pub fn seen_list(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            format!(
                "{} {} range={:?} fault={:?} -> {}",
                s.method, s.uri, s.range, s.fault, s.status
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A test double: a loopback HTTP proxy in front of a real registry that injects faults, as
/// no real part can cut a connection mid-blob, answer 429 or flip a byte on demand. For each
/// request matching a [`Rule`] it applies the rule's [`Fault`]; every other request passes
/// unchanged. One request per connection: the request goes upstream with
/// `Connection: close`, the answer is read to its end, transformed, written back, and the
/// connection closed. Clients name `127.0.0.1:PORT` as the registry host (loopback: plain
/// HTTP). Records every request ([`Seen`]). Stops when dropped.
pub struct FaultProxy {
    pub server: Server,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FaultProxy {
    pub fn start(upstream: u16, rules: Vec<Rule>) -> FaultProxy {
        let rules = Arc::new(Mutex::new(rules));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sn = seen.clone();
        let server = Server::start(move |conn| {
            let (r, sn) = (rules.clone(), sn.clone());
            std::thread::spawn(move || {
                if let Err(e) = Self::serve(conn, upstream, &r, &sn) {
                    eprintln!("fault proxy: {e}");
                }
            });
        });
        FaultProxy { server, seen }
    }

    fn serve(
        mut client: TcpStream,
        upstream: u16,
        rules: &Mutex<Vec<Rule>>,
        seen: &Mutex<Vec<Seen>>,
    ) -> std::io::Result<()> {
        let Some((request, mut reader)) = Head::read(&client, Duration::from_secs(60))? else {
            return Ok(());
        };
        let at = Instant::now();
        assert!(
            request.header("transfer-encoding").is_none(),
            "the fault proxy forwards only requests with a Content-Length body"
        );
        let length = request
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let Head { method, uri, .. } = &request;
        let range = request.header("range").map(str::to_owned);
        let fault = {
            let mut rules = rules.lock().unwrap();
            rules
                .iter_mut()
                .find(|r| r.matches(method, uri, range.is_some()))
                .map(|r| {
                    if let Some(n) = &mut r.times {
                        *n -= 1;
                    }
                    r.fault.clone()
                })
        };
        let record = |status: u16| {
            seen.lock().unwrap().push(Seen {
                at,
                method: method.clone(),
                uri: uri.clone(),
                range: range.clone(),
                fault: fault.clone(),
                status,
            });
        };
        if let Some(Fault::Status(code, extra)) = &fault {
            record(*code);
            respond(&mut client, &format!("{code} Injected"), extra, "")?;
            return client.shutdown(Shutdown::Both);
        }
        if let Some(Fault::Delay(d)) = &fault {
            std::thread::sleep(*d);
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        let mut head = format!("{}\r\n", request.line);
        for (k, v) in &request.headers {
            let drop = k.eq_ignore_ascii_case("connection")
                || k.eq_ignore_ascii_case("keep-alive")
                || (fault == Some(Fault::StripRange) && k.eq_ignore_ascii_case("range"));
            if !drop {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        up.write_all(head.as_bytes())?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        let mut head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let mut body = answer[split..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body_fault = method == "GET"
            && matches!(status, 200 | 206)
            && !body.is_empty()
            && !head.to_ascii_lowercase().contains("transfer-encoding");
        record(status);
        match &fault {
            Some(Fault::CutHalf) if body_fault => {
                client.write_all(head.as_bytes())?;
                client.write_all(&body[..body.len() / 2])?;
                client.flush()?;
                return client.shutdown(Shutdown::Both);
            }
            Some(Fault::StallHalf(d)) if body_fault => {
                client.write_all(head.as_bytes())?;
                client.write_all(&body[..body.len() / 2])?;
                client.flush()?;
                std::thread::sleep(*d);
                client.write_all(&body[body.len() / 2..])?;
                client.flush()?;
                return client.shutdown(Shutdown::Both);
            }
            Some(Fault::FlipByte) if body_fault => {
                let i = body.len() / 2;
                body[i] ^= 0x5a;
            }
            Some(Fault::Append(n)) if body_fault => {
                body.extend(std::iter::repeat_n(b'!', *n));
                head = head
                    .split("\r\n")
                    .map(|line| {
                        if line.to_ascii_lowercase().starts_with("content-length:") {
                            format!("Content-Length: {}", body.len())
                        } else {
                            line.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\r\n");
            }
            _ => {}
        }
        client.write_all(head.as_bytes())?;
        client.write_all(&body)?;
        client.flush()?;
        client.shutdown(Shutdown::Both)
    }

    /// The requests so far that `keep` keeps, in order of arrival.
    pub fn seen_where(&self, keep: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut all: Vec<Seen> = self.seen.lock().unwrap().iter().cloned().collect();
        all.retain(keep);
        all.sort_by_key(|s| s.at);
        all
    }

    /// Every request so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen_where(|_| true)
    }

    /// The requests for manifests, in order of arrival.
    pub fn manifests(&self) -> Vec<Seen> {
        self.seen_where(|s| s.uri.contains("/manifests/"))
    }

    /// The GETs of blob `digest`, in order of arrival.
    pub fn blob_gets(&self, digest: &str) -> Vec<Seen> {
        let tail = format!("/blobs/{digest}");
        self.seen_where(|s| s.method == "GET" && s.uri.ends_with(&tail))
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.server.host)
    }
}

// ================================================================ an HTTP proxy

/// A forward proxy: answers `CONNECT host:port` with a tunnel to the registry on
/// 127.0.0.1:`upstream`, whatever host was named, and counts what it relays. A test double
/// because no real proxy can do this here: every test server listens on loopback only, and
/// loopback is never proxied (the rule the client follows, as Go's `net/http` does), so the
/// registry must be named by a host that does not resolve, which only a proxy that maps it
/// can reach.
pub struct ConnectProxy {
    pub server: Server,
    /// The `CONNECT` targets asked, in order.
    targets: Arc<Mutex<Vec<String>>>,
    /// Bytes relayed from the registry to the clients.
    relayed: Arc<AtomicU64>,
}

impl ConnectProxy {
    pub fn start(upstream: u16) -> ConnectProxy {
        let targets = Arc::new(Mutex::new(Vec::new()));
        let relayed = Arc::new(AtomicU64::new(0));
        let (t, r) = (targets.clone(), relayed.clone());
        let server = Server::start(move |client| {
            let (t, r) = (t.clone(), r.clone());
            std::thread::spawn(move || {
                let _ = Self::tunnel(client, upstream, &t, &r);
            });
        });
        ConnectProxy {
            server,
            targets,
            relayed,
        }
    }

    /// `http://127.0.0.1:PORT`, for `HTTP_PROXY` / `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.host)
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }

    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::SeqCst)
    }

    fn tunnel(
        client: TcpStream,
        upstream: u16,
        targets: &Mutex<Vec<String>>,
        relayed: &AtomicU64,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(client.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
        }
        let mut words = line.split_whitespace();
        let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
            (&client).write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        };
        targets.lock().unwrap().push(target.to_owned());
        let up = TcpStream::connect(("127.0.0.1", upstream))?;
        (&client).write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        let mut to_up = up.try_clone()?;
        to_up.write_all(reader.buffer())?;
        let mut from_client = reader.into_inner();
        let forward = std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_up);
            let _ = to_up.shutdown(Shutdown::Write);
        });
        let (mut from_up, mut to_client) = (up, client);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from_up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to_client.write_all(&buf[..n]).is_err() {
                break;
            }
            relayed.fetch_add(n as u64, Ordering::SeqCst);
        }
        let _ = to_client.shutdown(Shutdown::Both);
        let _ = forward.join();
        Ok(())
    }
}

// ================================================================ the token server

pub const TOKEN_SERVICE: &str = "test-registry";
pub const TOKEN_ISSUER: &str = "test-issuer";

/// A token request the token server answered.
#[derive(Debug, Clone)]
pub struct TokenReq {
    pub scopes: Vec<String>,
    /// The basic-auth user presented, if any.
    pub user: Option<String>,
    /// Whether a token was issued.
    pub granted: bool,
    agent: String,
}

/// How the token server answers.
struct TokenPolicy {
    /// Basic credentials it demands (`None`: anyone gets a token).
    require: Option<(String, String)>,
    /// Seconds from now to each token's `exp`. distribution accepts a token until 60 s
    /// (its leeway for clock skew) after its `exp`: -57 makes tokens that live about 3 s.
    exp_in: i64,
}

/// A test double for a token server (nothing real issues tokens on loopback): what
/// distribution's token auth sends clients to. `GET /token?scope=...&service=...` answers
/// `{"token": JWT}` granting every scope asked, the JWT signed RS256 by `openssl dgst`
/// (spawned per token) with a key whose self-signed certificate (`cert`, the registry's
/// `rootcertbundle`) travels in the header's `x5c`. Checks basic credentials when told to.
/// Stops when dropped.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    realm: String,
    cert: PathBuf,
    policy: Arc<Mutex<TokenPolicy>>,
    requests: Arc<Mutex<Vec<TokenReq>>>,
    // Declared before the directory holding the key, so that it stops first.
    _server: Server,
    _dir: tempfile::TempDir,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenServer {
    pub fn start(require: Option<(&str, &str)>) -> TokenServer {
        need("openssl");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        openssl_req(&["rsa:2048"], &key, &cert, "/CN=token", true);
        // The PEM body is the base64 of the DER.
        let x5c: String = std::fs::read_to_string(&cert)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let policy = Arc::new(Mutex::new(TokenPolicy {
            require: require.map(|(u, p)| (u.to_owned(), p.to_owned())),
            exp_in: 300,
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (pol, reqs) = (policy.clone(), requests.clone());
        let server = Server::start(move |mut conn| {
            if let Err(e) = Self::answer(&mut conn, &x5c, &key, &pol, &reqs) {
                eprintln!("token server: {e}");
            }
        });
        TokenServer {
            realm: format!("http://{}/token", server.host),
            cert,
            policy,
            requests,
            _server: server,
            _dir: dir,
        }
    }

    fn answer(
        conn: &mut TcpStream,
        x5c: &str,
        key: &Path,
        policy: &Mutex<TokenPolicy>,
        requests: &Mutex<Vec<TokenReq>>,
    ) -> std::io::Result<()> {
        use base64::Engine;
        let Some((head, _)) = Head::read(conn, Duration::from_secs(10))? else {
            return Ok(());
        };
        let user_pass = head
            .header("authorization")
            .and_then(|v| v.strip_prefix("Basic "))
            .map(|b| {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .unwrap_or_default();
                String::from_utf8_lossy(&decoded).into_owned()
            })
            .and_then(|text| {
                text.split_once(':')
                    .map(|(u, p)| (u.to_owned(), p.to_owned()))
            });
        let (path, query) = head.path_query();
        let scopes: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "scope")
            .flat_map(|(_, v)| {
                percent_decode(v)
                    .split(' ')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect();
        let (require, exp_in) = {
            let p = policy.lock().unwrap();
            (p.require.clone(), p.exp_in)
        };
        let allowed = path == "/token" && require.is_none_or(|r| user_pass.as_ref() == Some(&r));
        requests.lock().unwrap().push(TokenReq {
            scopes: scopes.clone(),
            user: user_pass.as_ref().map(|(u, _)| u.clone()),
            granted: allowed,
            agent: head.header("user-agent").unwrap_or("").to_owned(),
        });
        if !allowed {
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
            return respond(conn, "401 Unauthorized", JSON_TYPE, body);
        }
        let user = user_pass.as_ref().map_or("", |(u, _)| u.as_str());
        let jwt = Self::jwt(x5c, key, user, &scopes, exp_in)?;
        let body =
            json!({"token": jwt, "expires_in": exp_in.max(1), "issued_at": null}).to_string();
        respond(conn, "200 OK", JSON_TYPE, &body)
    }

    /// A JWT for `user` granting `scopes`, expiring `exp_in` seconds from now, signed with
    /// `key` by `openssl dgst`.
    fn jwt(
        x5c: &str,
        key: &Path,
        user: &str,
        scopes: &[String],
        exp_in: i64,
    ) -> std::io::Result<String> {
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        static JTI: AtomicU64 = AtomicU64::new(0);
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": TOKEN_SERVICE,
            "exp": now + exp_in,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("t{}-{now}", JTI.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut openssl = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        openssl.stdin.take().unwrap().write_all(input.as_bytes())?;
        let signed = openssl.wait_with_output()?;
        assert!(
            signed.status.success(),
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&signed.stderr)
        );
        Ok(format!("{input}.{}", b64url(&signed.stdout)))
    }

    /// ocistore's token requests (user agent `ocistore/…`), in order.
    pub fn ours(&self) -> Vec<TokenReq> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|r| r.agent.starts_with("ocistore/"))
            .cloned()
            .collect()
    }

    pub fn set_exp_in(&self, secs: i64) {
        self.policy.lock().unwrap().exp_in = secs;
    }

    /// A registry whose auth is this token server.
    pub fn registry(&self) -> Reg {
        Reg::start(RegOpts {
            token: Some((self.realm.clone(), self.cert.clone())),
            ..RegOpts::default()
        })
    }
}

// ================================================================ a registry with the referrers API

/// How the [`ReferrersRegistry`] double answers a referrers listing asked with
/// `?artifactType=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFilter {
    /// Filters, and says so with `OCI-Filters-Applied: artifactType` (a conforming registry).
    Honour,
    /// Neither filters nor says so (a registry that does not filter: the client must).
    Ignore,
    /// Says `OCI-Filters-Applied: artifactType` but answers every entry: shows whether a
    /// client told that the server filtered filters again.
    Claim,
}

/// What the [`ReferrersRegistry`] double holds and how it answers.
struct Holding {
    /// Manifests by repository and digest: (media type, bytes).
    manifests: std::collections::BTreeMap<(String, String), (String, Vec<u8>)>,
    /// (repository, tag) → digest.
    tags: std::collections::BTreeMap<(String, String), String>,
    /// Blobs by repository and digest.
    blobs: std::collections::BTreeMap<(String, String), Vec<u8>>,
    /// Uploads in progress, by id.
    uploads: std::collections::BTreeMap<String, Vec<u8>>,
    /// Referrers API answers set by the test (by subject digest), in place of those that
    /// follow from the manifests' `subject`s.
    listings: std::collections::BTreeMap<String, Arc<Vec<Value>>>,
    /// Entries per referrers API page.
    page_size: usize,
    filter: TypeFilter,
    /// Whether a PUT of a manifest with a subject is answered with `OCI-Subject`.
    subject_header: bool,
    next_upload: u64,
}

/// A test double for a registry with the referrers API of distribution-spec 1.1, which
/// distribution 2.8 (the real registry of these tests) lacks: a registry in memory
/// (repositories made on first write; manifests by tag or digest, blobs, monolithic and
/// chunked uploads, no mounts) that answers `GET /v2/<repo>/referrers/<digest>` with the
/// manifests whose `subject` is that digest (or a listing the test sets: a hostile one),
/// `page_size` entries a page with `Link: <…>; rel="next"`, filtered by `artifactType` as
/// [`TypeFilter`] says, and answers a manifest PUT naming a subject with `OCI-Subject`.
/// Records every request line. Each connection on a thread of its own. Stops when dropped.
pub struct ReferrersRegistry {
    pub server: Server,
    holding: Arc<Mutex<Holding>>,
    seen: Arc<Mutex<Vec<String>>>,
}

/// The referrers API's descriptor of manifest `bytes` (`digest`, `media_type`): its
/// `artifactType` (else its config's media type) and annotations.
pub fn referrer_descriptor(digest: &str, media_type: &str, bytes: &[u8]) -> Value {
    let doc: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let mut d = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
    let artifact_type = doc
        .get("artifactType")
        .or_else(|| doc.get("config")?.get("mediaType"))
        .cloned();
    if let Some(t) = artifact_type {
        d["artifactType"] = t;
    }
    if let Some(a) = doc
        .get("annotations")
        .filter(|a| a.as_object().is_some_and(|m| !m.is_empty()))
    {
        d["annotations"] = a.clone();
    }
    d
}

impl ReferrersRegistry {
    pub fn start() -> ReferrersRegistry {
        let holding = Arc::new(Mutex::new(Holding {
            manifests: Default::default(),
            tags: Default::default(),
            blobs: Default::default(),
            uploads: Default::default(),
            listings: Default::default(),
            page_size: 100,
            filter: TypeFilter::Honour,
            subject_header: true,
            next_upload: 0,
        }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (holding.clone(), seen.clone());
        let server = Server::start(move |conn| {
            let (h, s) = (h.clone(), s.clone());
            std::thread::spawn(move || {
                report_unless_hung_up("referrers registry", Self::answer(conn, &h, &s))
            });
        });
        ReferrersRegistry {
            server,
            holding,
            seen,
        }
    }

    /// `127.0.0.1:PORT/<repo_tag>`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.server.host)
    }

    /// Stores a blob in `repo`: its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let d = crate::harness::sha256(bytes);
        self.holding
            .lock()
            .unwrap()
            .blobs
            .insert((repo.to_owned(), d.clone()), bytes.to_vec());
        d
    }

    /// Stores a manifest in `repo` (under `tag` too, when given): its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let d = crate::harness::sha256(bytes);
        let mut h = self.holding.lock().unwrap();
        h.manifests.insert(
            (repo.to_owned(), d.clone()),
            (media_type.to_owned(), bytes.to_vec()),
        );
        if let Some(t) = tag {
            h.tags.insert((repo.to_owned(), t.to_owned()), d.clone());
        }
        d
    }

    /// The tags of every repository, as `repo:tag`.
    pub fn tags(&self) -> Vec<String> {
        let h = self.holding.lock().unwrap();
        h.tags.keys().map(|(r, t)| format!("{r}:{t}")).collect()
    }

    /// Answers the referrers of `subject` with `entries` from now on.
    pub fn set_listing(&self, subject: &str, entries: Vec<Value>) {
        self.holding
            .lock()
            .unwrap()
            .listings
            .insert(subject.to_owned(), Arc::new(entries));
    }

    pub fn set_page_size(&self, n: usize) {
        self.holding.lock().unwrap().page_size = n.max(1);
    }

    pub fn set_filter(&self, f: TypeFilter) {
        self.holding.lock().unwrap().filter = f;
    }

    /// The request lines so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn answer(
        mut conn: TcpStream,
        holding: &Mutex<Holding>,
        seen: &Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        let Some((head, mut reader)) = Head::read(&conn, Duration::from_secs(30))? else {
            return Ok(());
        };
        seen.lock().unwrap().push(head.line.clone());
        let body = Self::body(&head, &mut reader)?;
        let (path, query) = head.path_query();
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| percent_decode(v))
        };
        let method = head.method.as_str();
        let not_found = |conn: &mut TcpStream| {
            respond(
                conn,
                "404 Not Found",
                JSON_TYPE,
                r#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#,
            )
        };
        if path == "/v2/" || path == "/v2" {
            return respond(&mut conn, "200 OK", JSON_TYPE, "{}");
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return not_found(&mut conn);
        };
        let split = ["/referrers/", "/manifests/", "/blobs/uploads/", "/blobs/"]
            .iter()
            .filter_map(|m| rest.rfind(m).map(|i| (i, *m)))
            .max_by_key(|(i, m)| (*i, m.len()));
        let Some((at, kind)) = split else {
            return not_found(&mut conn);
        };
        let (repo, arg) = (&rest[..at], &rest[at + kind.len()..]);
        let mut h = holding.lock().unwrap();
        match (method, kind) {
            ("GET", "/referrers/") => {
                let entries: Arc<Vec<Value>> = match h.listings.get(arg) {
                    Some(l) => l.clone(),
                    None => Arc::new(
                        h.manifests
                            .iter()
                            .filter(|((r, _), _)| r == repo)
                            .filter(|(_, (_, b))| {
                                serde_json::from_slice::<Value>(b)
                                    .ok()
                                    .is_some_and(|v| v["subject"]["digest"].as_str() == Some(arg))
                            })
                            .map(|((_, d), (mt, b))| referrer_descriptor(d, mt, b))
                            .collect(),
                    ),
                };
                let (page_size, filter) = (h.page_size, h.filter);
                drop(h);
                let artifact_type = param("artifactType");
                let kept: Vec<&Value> = entries
                    .iter()
                    .filter(|e| {
                        filter != TypeFilter::Honour
                            || artifact_type
                                .as_deref()
                                .is_none_or(|t| e["artifactType"].as_str() == Some(t))
                    })
                    .collect();
                let page: usize = param("page").and_then(|p| p.parse().ok()).unwrap_or(0);
                let from = page.saturating_mul(page_size).min(kept.len());
                let to = from.saturating_add(page_size).min(kept.len());
                let mut extra =
                    String::from("Content-Type: application/vnd.oci.image.index.v1+json\r\n");
                if artifact_type.is_some() && filter != TypeFilter::Ignore {
                    extra.push_str("OCI-Filters-Applied: artifactType\r\n");
                }
                if to < kept.len() {
                    let at = query
                        .split('&')
                        .filter(|kv| kv.starts_with("artifactType="))
                        .map(|kv| format!("&{kv}"))
                        .collect::<String>();
                    extra.push_str(&format!(
                        "Link: </v2/{repo}/referrers/{arg}?page={}{at}>; rel=\"next\"\r\n",
                        page + 1
                    ));
                }
                let doc = json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": &kept[from..to],
                });
                respond(&mut conn, "200 OK", &extra, &doc.to_string())
            }
            ("GET" | "HEAD", "/manifests/") => {
                let digest = h
                    .tags
                    .get(&(repo.to_owned(), arg.to_owned()))
                    .cloned()
                    .unwrap_or_else(|| arg.to_owned());
                let Some((mt, bytes)) =
                    h.manifests.get(&(repo.to_owned(), digest.clone())).cloned()
                else {
                    drop(h);
                    return not_found(&mut conn);
                };
                drop(h);
                let extra = format!("Content-Type: {mt}\r\nDocker-Content-Digest: {digest}\r\n");
                Self::content(&mut conn, method, &extra, &bytes)
            }
            ("PUT", "/manifests/") => {
                let digest = crate::harness::sha256(&body);
                let mt = head
                    .header("content-type")
                    .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                    .to_owned();
                if arg.starts_with("sha256:") && arg != digest {
                    drop(h);
                    return respond(
                        &mut conn,
                        "400 Bad Request",
                        JSON_TYPE,
                        r#"{"errors":[{"code":"DIGEST_INVALID"}]}"#,
                    );
                }
                let subject = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["subject"]["digest"].as_str().map(str::to_owned));
                h.manifests
                    .insert((repo.to_owned(), digest.clone()), (mt, body));
                if !arg.starts_with("sha256:") {
                    h.tags
                        .insert((repo.to_owned(), arg.to_owned()), digest.clone());
                }
                let mut extra = format!(
                    "Location: /v2/{repo}/manifests/{digest}\r\nDocker-Content-Digest: {digest}\r\n"
                );
                if let Some(s) = subject.filter(|_| h.subject_header) {
                    extra.push_str(&format!("OCI-Subject: {s}\r\n"));
                }
                drop(h);
                respond(&mut conn, "201 Created", &extra, "")
            }
            ("GET" | "HEAD", "/blobs/") => {
                let Some(bytes) = h.blobs.get(&(repo.to_owned(), arg.to_owned())).cloned() else {
                    drop(h);
                    return not_found(&mut conn);
                };
                drop(h);
                let extra = format!(
                    "Content-Type: application/octet-stream\r\nDocker-Content-Digest: {arg}\r\n"
                );
                Self::content(&mut conn, method, &extra, &bytes)
            }
            ("POST", "/blobs/uploads/") => {
                if let Some(d) = param("digest") {
                    h.blobs.insert((repo.to_owned(), d.clone()), body);
                    drop(h);
                    let extra =
                        format!("Location: /v2/{repo}/blobs/{d}\r\nDocker-Content-Digest: {d}\r\n");
                    return respond(&mut conn, "201 Created", &extra, "");
                }
                h.next_upload += 1;
                let id = format!("u{}", h.next_upload);
                h.uploads.insert(id.clone(), body);
                drop(h);
                let extra = format!(
                    "Location: /v2/{repo}/blobs/uploads/{id}\r\nDocker-Upload-UUID: {id}\r\nRange: 0-0\r\n"
                );
                respond(&mut conn, "202 Accepted", &extra, "")
            }
            ("PATCH" | "PUT" | "DELETE", "/blobs/uploads/") => {
                let Some(upload) = h.uploads.get_mut(arg) else {
                    drop(h);
                    return not_found(&mut conn);
                };
                upload.extend_from_slice(&body);
                let len = upload.len();
                if method == "PATCH" {
                    drop(h);
                    let extra = format!(
                        "Location: /v2/{repo}/blobs/uploads/{arg}\r\nDocker-Upload-UUID: {arg}\r\nRange: 0-{}\r\n",
                        len.saturating_sub(1)
                    );
                    return respond(&mut conn, "202 Accepted", &extra, "");
                }
                let bytes = h.uploads.remove(arg).unwrap();
                if method == "DELETE" {
                    drop(h);
                    return respond(&mut conn, "204 No Content", "", "");
                }
                let d = crate::harness::sha256(&bytes);
                if param("digest").as_deref() != Some(d.as_str()) {
                    drop(h);
                    return respond(
                        &mut conn,
                        "400 Bad Request",
                        JSON_TYPE,
                        r#"{"errors":[{"code":"DIGEST_INVALID"}]}"#,
                    );
                }
                h.blobs.insert((repo.to_owned(), d.clone()), bytes);
                drop(h);
                let extra =
                    format!("Location: /v2/{repo}/blobs/{d}\r\nDocker-Content-Digest: {d}\r\n");
                respond(&mut conn, "201 Created", &extra, "")
            }
            _ => {
                drop(h);
                respond(&mut conn, "405 Method Not Allowed", JSON_TYPE, "{}")
            }
        }
    }

    /// The request's body: `Content-Length` bytes, or a chunked body decoded.
    fn body(head: &Head, reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        if head
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(std::io::Error::other)?;
                let mut chunk = vec![0u8; n + 2];
                reader.read_exact(&mut chunk)?;
                if n == 0 {
                    return Ok(body);
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let n = head
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap_or(0));
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
        Ok(body)
    }

    /// A 200 with `bytes` (no body to a HEAD, its `Content-Length` all the same).
    fn content(
        conn: &mut TcpStream,
        method: &str,
        extra: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        write!(
            conn,
            "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            bytes.len()
        )?;
        if method != "HEAD" {
            conn.write_all(bytes)?;
        }
        conn.flush()
    }
}

// ================================================================ a scripted registry that records headers

/// A request a [`Scripted`] double heard: its method, URI and every header.
#[derive(Debug, Clone)]
pub struct Heard {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Heard {
    /// The URI's path.
    pub fn path(&self) -> &str {
        self.uri
            .split_once('?')
            .map_or(self.uri.as_str(), |(p, _)| p)
    }

    /// The URI's query (empty when none).
    pub fn query(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, q)| q)
    }

    /// The value of the query parameter `name`, if given.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// The value of header `name` (any case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for Heard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.uri)?;
        for (k, v) in &self.headers {
            write!(f, " | {k}: {v}")?;
        }
        Ok(())
    }
}

/// The body of a [`Reply`].
pub enum ReplyBody {
    /// Sent whole, with its `Content-Length`.
    Bytes(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked`, no length announced, a chunk per item, made
    /// as it is sent (a body larger than anything the double holds).
    Chunked(Box<dyn Iterator<Item = Vec<u8>> + Send>),
}

/// What a [`Scripted`] double answers to one request.
pub struct Reply {
    pub status: u16,
    /// Header lines besides `Content-Length` / `Transfer-Encoding` and `Connection`.
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
}

impl Reply {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Bytes(Vec::new()),
        }
    }

    /// A 200 with `body` as `content_type`.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(200)
            .header("Content-Type", content_type)
            .with_body(body)
    }

    /// A 404 with distribution's error document.
    pub fn not_found() -> Reply {
        Reply::status(404)
            .header("Content-Type", "application/json")
            .with_body(r#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#)
    }

    /// A 200 whose body is `chunks`, chunked.
    pub fn chunked(
        content_type: &str,
        chunks: impl Iterator<Item = Vec<u8>> + Send + 'static,
    ) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: ReplyBody::Chunked(Box::new(chunks)),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = ReplyBody::Bytes(body.into());
        self
    }
}

/// What a test's script answers: a function of the request heard.
type Script = dyn Fn(&Heard) -> Reply + Send + Sync;

/// A test double for what no real registry can be made to send on demand (documents without
/// a media type served as `application/json`, a million tags generated page by page, a tag
/// page of 60 MiB with no length, a thousand manifests of 4 MiB made as they are asked for,
/// a `Link` or a redirect to another host, a 401 from a host that is not the registry): each
/// request's answer comes from the test's script. Records every request with all its
/// headers (to tell which host saw an `Authorization`). One connection per request
/// (`Connection: close`), each on a thread of its own; a HEAD gets the head of what a GET
/// would. Stops when dropped.
pub struct Scripted {
    pub server: Server,
    heard: Arc<Mutex<Vec<Heard>>>,
}

impl Scripted {
    pub fn start(script: impl Fn(&Heard) -> Reply + Send + Sync + 'static) -> Scripted {
        let script: Arc<Script> = Arc::new(script);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let server = Server::start(move |conn| {
            let (script, h) = (script.clone(), h.clone());
            std::thread::spawn(move || {
                report_unless_hung_up("scripted registry", Self::answer(conn, &*script, &h))
            });
        });
        Scripted { server, heard }
    }

    fn answer(conn: TcpStream, script: &Script, heard: &Mutex<Vec<Heard>>) -> std::io::Result<()> {
        let Some((head, _)) = Head::read(&conn, Duration::from_secs(30))? else {
            return Ok(());
        };
        let request = Heard {
            method: head.method,
            uri: head.uri,
            headers: head.headers,
        };
        heard.lock().unwrap().push(request.clone());
        let reply = script(&request);
        let reason = match reply.status {
            200 => "OK",
            307 => "Temporary Redirect",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Scripted",
        };
        let mut out = std::io::BufWriter::with_capacity(256 << 10, conn.try_clone()?);
        write!(out, "HTTP/1.1 {} {reason}\r\n", reply.status)?;
        for (k, v) in &reply.headers {
            write!(out, "{k}: {v}\r\n")?;
        }
        let head_only = request.method == "HEAD";
        match reply.body {
            ReplyBody::Bytes(b) => {
                write!(
                    out,
                    "Content-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                )?;
                if !head_only {
                    out.write_all(&b)?;
                }
            }
            ReplyBody::Chunked(chunks) => {
                write!(
                    out,
                    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                )?;
                if !head_only {
                    for c in chunks.filter(|c| !c.is_empty()) {
                        write!(out, "{:x}\r\n", c.len())?;
                        out.write_all(&c)?;
                        out.write_all(b"\r\n")?;
                    }
                    out.write_all(b"0\r\n\r\n")?;
                }
            }
        }
        out.flush()?;
        drop(out);
        let _ = conn.shutdown(Shutdown::Write);
        Ok(())
    }

    /// Every request so far, in order of arrival.
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.heard.lock().unwrap().len()
    }

    /// The requests so far that carried an `Authorization` header.
    pub fn authorized(&self) -> Vec<Heard> {
        let all = self.heard.lock().unwrap();
        all.iter()
            .filter(|h| h.header("authorization").is_some())
            .cloned()
            .collect()
    }

    /// The GETs of blobs (`/v2/<repo>/blobs/<digest>`) so far.
    pub fn blob_gets(&self) -> Vec<Heard> {
        let all = self.heard.lock().unwrap();
        all.iter()
            .filter(|h| h.method == "GET" && h.path().contains("/blobs/"))
            .cloned()
            .collect()
    }

    /// `127.0.0.1:PORT/<repo_tag>`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.server.host)
    }
}

/// Documents a [`Scripted`] registry serves by path: (path, Content-Type, bytes).
pub type Served = Vec<(String, String, Vec<u8>)>;

/// A [`Scripted`] registry of fixed documents (shared with the test, which may add to them
/// as it goes): `GET|HEAD /v2/` answers 200, a path in `docs` its bytes as its Content-Type
/// (a manifest by tag and by digest are two entries), anything else 404.
pub fn document_registry(docs: Arc<Mutex<Served>>) -> Scripted {
    Scripted::start(move |h| {
        if h.path() == "/v2/" || h.path() == "/v2" {
            return Reply::ok("application/json", "{}");
        }
        let docs = docs.lock().unwrap();
        match docs.iter().find(|(p, _, _)| p == h.path()) {
            Some((_, ct, bytes)) => Reply::ok(ct, bytes.clone()),
            None => Reply::not_found(),
        }
    })
}

/// Reports a double's failed answer on stderr, unless the client hung up: a client that
/// stops reading (a body over its limit, a refused document) is what the tests provoke.
fn report_unless_hung_up(who: &str, answered: std::io::Result<()>) {
    match answered {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) => {}
        Err(e) => eprintln!("{who}: {e}"),
        Ok(()) => {}
    }
}
