//! Large blob bodies from a plain-HTTP endpoint, read from the socket straight into the
//! caller's buffer.
//!
//! ureq receives a body into its own buffer and copies it into the caller's: for the bench's
//! 200 MiB pull from a loopback registry that copy (a `memmove` under ureq-proto's body
//! reader) was 7.5% of both cores' time in `perf`, the largest cost a pull has that an import
//! of the same image does not. Over plain HTTP with no proxy, a GET of a blob of at least
//! [`DIRECT_MIN`] bytes therefore goes over a connection of its own: the request written
//! here, the response head parsed with `httparse`, and the body read by `recv` into the
//! ingest's buffer, where the hash reads it.
//!
//! Only the plain answer is read this way: a 200, or a 206 for the range asked, with a
//! `Content-Length` and neither a transfer nor a content coding. Anything else drops the
//! connection and [`get`] says why ([`Declined`]): the request is then sent through the client
//! as every other one is, which authenticates, follows, retries and names what went wrong. A
//! failed attempt here (no connection, a 503) counts against the client's retry budget; a
//! redirect, a coding or a head that does not parse turns the path off for the endpoint; a
//! 401 (a token not yet fetched, or expired) costs the one request. TLS endpoints and
//! proxied ones never come here (rustls decrypts into a buffer of its own, so there is no
//! copy to save; a proxy is the client's business).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Blobs smaller than this go through the client (its pooled connections): a connection of
/// their own would cost more than the copy saves.
pub(crate) const DIRECT_MIN: u64 = 1 << 20;

/// The longest response head read before giving up on it (the client then asks again).
const HEAD_MAX: usize = 64 << 10;

/// A plain 200 or 206 answer, its body not yet read.
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// The `Content-Range` header of a 206.
    pub(crate) content_range: Option<String>,
    pub(crate) body: Body,
}

/// Why [`get`] did not give an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Declined {
    /// An answer the client handles, after which this module may be asked again: an
    /// authentication challenge, a missing blob, a range refused.
    Retry,
    /// A failed attempt, which the client's retry budget counts: no connection, or a status
    /// worth retrying (with its `Retry-After`, if any). `why` says which, for an error.
    Failed {
        why: String,
        retry_after: Option<String>,
    },
    /// This endpoint answers in ways this module does not read (redirects, codings, heads
    /// that do not parse): not to be asked again.
    Never,
}

/// Sends `GET url` with `headers` (plus `Host`, `Connection: close` and `User-Agent`) and
/// reads the response head; see the module docs for what comes back.
pub(crate) fn get(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Answer, Declined> {
    let (authority, path) = split_url(url).ok_or(Declined::Never)?;
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ocistore/{}\r\n\
         Accept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        if v.contains(['\r', '\n']) {
            return Err(Declined::Never);
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = connect(authority, timeout).map_err(|e| {
        tracing::debug!(%url, error = %e, "direct GET: no connection");
        Declined::Failed {
            why: format!("connection failed: {e}"),
            retry_after: None,
        }
    })?;
    stream
        .write_all(head.as_bytes())
        .map_err(|e| Declined::Failed {
            why: format!("network failure: {e}"),
            retry_after: None,
        })?;
    read_answer(stream).inspect_err(|d| tracing::debug!(%url, declined = ?d, "direct GET"))
}

/// `(authority, path)` of an `http://` URL.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    (!authority.is_empty() && !authority.contains('@')).then_some((authority, path))
}

/// A connection to `authority` (`host`, `host:port`, `[v6]` or `[v6]:port`; port 80 when
/// none), with `timeout` for connecting, each read and each write.
fn connect(authority: &str, timeout: Duration) -> io::Result<TcpStream> {
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in with_port.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads the response head from `stream` and judges it.
fn read_answer(mut stream: TcpStream) -> Result<Answer, Declined> {
    let mut buf = vec![0u8; 8 << 10];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= HEAD_MAX {
                return Err(Declined::Never);
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Closed or reset before a whole head: a failed attempt like any other.
            Ok(0) => {
                return Err(Declined::Failed {
                    why: "network failure: the connection closed before an answer".into(),
                    retry_after: None,
                });
            }
            Err(e) => {
                return Err(Declined::Failed {
                    why: format!("network failure: {e}"),
                    retry_after: None,
                });
            }
            Ok(n) => n,
        };
        filled += n;
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let len = match resp.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err(Declined::Never),
        };
        let status = resp.code.unwrap_or(0);
        let field = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim)
        };
        match status {
            200 | 206 => {}
            401 | 404 | 416 => return Err(Declined::Retry),
            408 | 429 | 500 | 502 | 503 | 504 => {
                let retry_after = field("retry-after").map(str::to_owned);
                return Err(Declined::Failed {
                    why: format!("HTTP {status}"),
                    retry_after,
                });
            }
            _ => return Err(Declined::Never),
        }
        if field("transfer-encoding").is_some()
            || field("content-encoding").is_some_and(|c| !c.eq_ignore_ascii_case("identity"))
        {
            return Err(Declined::Never);
        }
        let length = field("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(Declined::Never)?;
        let content_range = field("content-range").map(str::to_owned);
        buf.truncate(filled);
        let early = buf.split_off(len);
        return Ok(Answer {
            status,
            content_range,
            body: Body {
                stream,
                early,
                taken: 0,
                left: length,
            },
        });
    }
}

/// A body of known length: the bytes that came with the head, then the socket's.
pub(crate) struct Body {
    stream: TcpStream,
    /// Body bytes read together with the head.
    early: Vec<u8>,
    /// How many of `early` were handed out.
    taken: usize,
    /// Bytes of the body not yet handed out.
    left: u64,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = if self.taken < self.early.len() {
            let n = want.min(self.early.len() - self.taken);
            buf[..n].copy_from_slice(&self.early[self.taken..self.taken + n]);
            self.taken += n;
            n
        } else {
            self.stream.read(&mut buf[..want])?
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the connection closed {} bytes before the end of the body",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection: reads the request head, answers `reply`, returns the request.
    fn serve_once(reply: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v2/r/blobs/x", listener.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0);
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(&reply).unwrap();
            String::from_utf8(req).unwrap()
        });
        (url, t)
    }

    fn read_all(body: &mut Body) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        body.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn a_plain_answer_is_read_to_its_length_and_no_further() {
        let (url, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA".to_vec());
        let mut a = get(
            &url,
            &[("Authorization", "Bearer t")],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|d| panic!("declined: {d:?}"));
        assert_eq!(a.status, 200);
        assert_eq!(read_all(&mut a.body).unwrap(), b"hello");
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /v2/r/blobs/x HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nAuthorization: Bearer t\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[test]
    fn a_body_cut_short_is_an_error_naming_what_is_missing() {
        let (url, server) =
            serve_once(b"HTTP/1.1 206 Partial\r\nContent-Length: 10\r\nContent-Range: bytes 5-14/15\r\n\r\nhel".to_vec());
        let mut a = get(&url, &[], Duration::from_secs(5)).unwrap_or_else(|d| panic!("{d:?}"));
        server.join().unwrap();
        assert_eq!(a.status, 206);
        assert_eq!(a.content_range.as_deref(), Some("bytes 5-14/15"));
        let mut got = [0u8; 3];
        a.body.read_exact(&mut got).unwrap();
        let e = a.body.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("7 bytes before the end"), "{e}");
    }

    #[test]
    fn answers_it_does_not_read_are_declined() {
        for (reply, want) in [
            (&b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"[..], Declined::Retry),
            (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://x/\r\n\r\n", Declined::Never),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Declined::Never),
            (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", Declined::Never),
            (b"HTTP/1.1 200 OK\r\n\r\nno length", Declined::Never),
            (b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n", Declined::Never),
            (b"\x16\x03\x01 not http at all\r\n\r\n", Declined::Never),
            (b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n", Declined::Failed { why: "HTTP 503".into(), retry_after: Some("2".into()) }),
        ] {
            let (url, server) = serve_once(reply.to_vec());
            let got = get(&url, &[], Duration::from_secs(5)).err();
            server.join().unwrap();
            assert_eq!(got, Some(want), "{}", String::from_utf8_lossy(reply));
        }
    }

    #[test]
    fn urls_it_cannot_send_and_hosts_it_cannot_reach_are_declined() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = get(&format!("http://{closed}/v2/"), &[], Duration::from_secs(1)).err();
        assert!(
            matches!(&refused, Some(Declined::Failed { why, retry_after: None }) if why.starts_with("connection failed")),
            "a refused connection is a failed attempt: {refused:?}"
        );
        for url in [
            "https://127.0.0.1:1/v2/",
            "http://127.0.0.1:1",
            "http://u@h/v2/",
        ] {
            assert_eq!(
                get(url, &[], Duration::from_secs(1)).err(),
                Some(Declined::Never),
                "{url}"
            );
        }
        assert_eq!(
            get(
                "http://127.0.0.1:9/v2/",
                &[("X", "a\r\nB: c")],
                Duration::from_secs(1)
            )
            .err(),
            Some(Declined::Never)
        );
    }
}
