//! Which proxy a registry is reached through: `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`,
//! read the way Go's `net/http` reads them (`golang.org/x/net/http/httpproxy`), so that a
//! machine set up for docker, containerd and skopeo is set up for ocistore too.
//!
//! - `https://` URLs go through `HTTPS_PROXY` (else `https_proxy`), `http://` URLs through
//!   `HTTP_PROXY` (else `http_proxy`). `ALL_PROXY` is not read (Go does not).
//! - `localhost` and loopback addresses are never proxied: a CI job with a company proxy in
//!   its environment still reaches the registry it started on `127.0.0.1`.
//! - `NO_PROXY` (else `no_proxy`) is a comma-separated list: `*` (nothing is proxied), an IP
//!   address, a CIDR block, or a domain name, which matches itself and every subdomain
//!   (`example.com` matches `example.com` and `r.example.com`; `.example.com` and
//!   `*.example.com` only the subdomains); an IP address or a domain may carry a port, and
//!   then only that port matches.
//!
//! ureq's own reading of the environment differs (it takes the first of `ALL_PROXY`,
//! `HTTPS_PROXY` and `HTTP_PROXY` for every URL, proxies loopback, and matches `NO_PROXY`
//! names exactly), so the client never lets ureq read it: each agent is given the proxy
//! decided here, or none.

use std::net::IpAddr;

/// The proxy settings: by default from the environment ([`Proxies::from_env`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    /// The proxy for `http://` URLs (`HTTP_PROXY`).
    pub http: Option<String>,
    /// The proxy for `https://` URLs (`HTTPS_PROXY`).
    pub https: Option<String>,
    /// Hosts reached without a proxy (`NO_PROXY`), as the module docs describe.
    pub no_proxy: String,
}

impl Proxies {
    /// No proxy for anything.
    pub fn none() -> Proxies {
        Proxies::default()
    }

    /// From `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` (each also lower-case; empty values
    /// count as unset).
    pub fn from_env() -> Proxies {
        Proxies::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Proxies {
        let first = |names: [&str; 2]| {
            names
                .iter()
                .filter_map(|n| var(n))
                .find(|v| !v.trim().is_empty())
        };
        Proxies {
            http: first(["HTTP_PROXY", "http_proxy"]),
            https: first(["HTTPS_PROXY", "https_proxy"]),
            no_proxy: first(["NO_PROXY", "no_proxy"]).unwrap_or_default(),
        }
    }

    /// The proxy URL for requests to `scheme://authority`, or `None` to connect directly.
    pub fn for_url(&self, scheme: &str, authority: &str) -> Option<&str> {
        let proxy = match scheme {
            "https" => self.https.as_deref(),
            "http" => self.http.as_deref(),
            _ => None,
        }?;
        let (host, port) = split_authority(authority, if scheme == "https" { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        if host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return None;
        }
        let bypass = self
            .no_proxy
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .any(|entry| bypasses(&entry.to_ascii_lowercase(), &host, port));
        (!bypass).then_some(proxy)
    }
}

/// `(host, port)` of `host`, `host:port`, `[v6]` or `[v6]:port`, with `default` for none.
fn split_authority(authority: &str, default: u16) -> (&str, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host, port.unwrap_or(default));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(default)),
        _ => (authority, default),
    }
}

/// Whether one `NO_PROXY` entry (lower-case) covers `host` (lower-case) at `port`.
fn bypasses(entry: &str, host: &str, port: u16) -> bool {
    if entry == "*" {
        return true;
    }
    if let Some((net, bits)) = entry.split_once('/') {
        let (Ok(net), Ok(bits), Ok(ip)) = (
            net.parse::<IpAddr>(),
            bits.parse::<u32>(),
            host.parse::<IpAddr>(),
        ) else {
            return false;
        };
        return in_block(ip, net, bits);
    }
    // An entry with a port matches only that port.
    let (name, want_port) = if entry.starts_with('[') || entry.matches(':').count() == 1 {
        let (n, p) = split_authority(entry, 0);
        (n, (p != 0).then_some(p))
    } else {
        (entry, None)
    };
    if want_port.is_some_and(|p| p != port) {
        return false;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return host.parse::<IpAddr>() == Ok(ip);
    }
    let name = name.strip_prefix('*').unwrap_or(name);
    match name.strip_prefix('.') {
        Some(domain) => host.len() > domain.len() && host.ends_with(name),
        None => host == name || host.strip_suffix(name).is_some_and(|h| h.ends_with('.')),
    }
}

/// Whether `ip` lies in `net/bits`.
fn in_block(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(no_proxy: &str) -> Proxies {
        Proxies {
            http: Some("http://proxy:3128".into()),
            https: Some("http://sproxy:3128".into()),
            no_proxy: no_proxy.into(),
        }
    }

    #[test]
    fn each_scheme_has_its_own_variable_and_all_proxy_is_not_read() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            Proxies::from_lookup(move |k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let p = env(&[("HTTPS_PROXY", "http://s:1"), ("http_proxy", "http://h:2")]);
        assert_eq!(p.for_url("https", "r.example.com"), Some("http://s:1"));
        assert_eq!(p.for_url("http", "r.example.com:5000"), Some("http://h:2"));
        let only_all = env(&[("ALL_PROXY", "http://a:3"), ("HTTP_PROXY", "")]);
        assert_eq!(only_all, Proxies::none());
        assert_eq!(only_all.for_url("https", "r.example.com"), None);
        let upper_first = env(&[("NO_PROXY", "a.com"), ("no_proxy", "b.com")]);
        assert_eq!(upper_first.no_proxy, "a.com");
    }

    #[test]
    fn loopback_is_never_proxied() {
        let p = with("");
        for host in [
            "localhost:5000",
            "LOCALHOST",
            "127.0.0.1:5000",
            "127.8.9.1",
            "[::1]:5000",
        ] {
            assert_eq!(p.for_url("http", host), None, "{host}");
            assert_eq!(p.for_url("https", host), None, "{host}");
        }
        assert_eq!(
            p.for_url("http", "10.0.0.1:5000"),
            Some("http://proxy:3128")
        );
    }

    #[test]
    fn no_proxy_entries_match_as_go_matches_them() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "r.example.com", true),
            ("example.com", "example.com", true),
            ("example.com", "r.example.com:443", true),
            ("example.com", "badexample.com", false),
            (".example.com", "example.com", false),
            (".example.com", "r.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", true),
            ("Example.COM", "R.example.com", true),
            ("10.1.2.3", "10.1.2.3:5000", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("10.0.0.0/8", "10.200.0.1:5000", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.0.0.0/8", "ten.example.com", false),
            ("fd00::/8", "[fd12::1]:5000", true),
            ("example.com:5000", "r.example.com:5000", true),
            ("example.com:5000", "r.example.com:443", false),
            ("10.1.2.3:5000", "10.1.2.3:5001", false),
            ("[fd12::1]:5000", "[fd12::1]:5000", true),
            ("other.org, example.com ,", "r.example.com", true),
            ("", "r.example.com", false),
        ];
        for (no_proxy, host, bypass) in cases {
            let got = with(no_proxy).for_url("https", host).is_none();
            assert_eq!(got, *bypass, "NO_PROXY={no_proxy:?} host {host}");
        }
    }
}
