//! Who may open a WebSocket from a browser page: the `Origin` check every socket gateway makes
//! before upgrading (browsers let any page open a socket to any host; only the server can
//! refuse).
//!
//! A request without `Origin` is not from a browser page (a native app, a server) and is let
//! through: browsers always send it on WebSocket upgrades. A page's origin passes when it is on
//! the configured allow-list, or when it is the gateway's own origin — and "own" is judged
//! against host names the operator configured, never against the request's own `Host` header
//! alone: a DNS-rebinding page (`evil.example` re-pointed at the gateway's address) sends a
//! `Host` and an `Origin` that match each other. Without configured host names only `localhost`
//! and IP literals count as the gateway's own (rebinding needs a domain name).
//!
//! It does not do CORS for HTTP requests: that is tower-http's `CorsLayer`, fed the same list.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};

/// The origin policy of one gateway. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Arc<Vec<HeaderValue>>,
    own_hosts: Option<Arc<Vec<String>>>,
}

impl OriginPolicy {
    /// Origins (`https://app.example.com`) on the allow-list; `own_hosts` is `None` when a
    /// page of the gateway's own origin must be on the list too (a gateway that serves no
    /// pages), or the host names (`app.example.com`, `app.example.com:8443`) the gateway is
    /// reached as (empty: `localhost` and IP literals only).
    pub fn new(allowed_origins: &[String], own_hosts: Option<&[String]>) -> anyhow::Result<Self> {
        let allowed = allowed_origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| anyhow::anyhow!("`{o}` is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            allowed: Arc::new(allowed),
            own_hosts: own_hosts
                .map(|h| Arc::new(h.iter().map(|h| h.to_ascii_lowercase()).collect())),
        })
    }

    /// The allow-list, for a CORS layer.
    pub fn allowed_origins(&self) -> &[HeaderValue] {
        &self.allowed
    }

    /// Whether a request with these headers may open a socket.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        if self.allowed.iter().any(|a| a == origin) {
            return true;
        }
        let Some(own_hosts) = &self.own_hosts else {
            return false;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://").map(|(_, rest)| rest));
        let (Some(host), Some(origin_host)) = (host, origin_host) else {
            return false;
        };
        if !host.eq_ignore_ascii_case(origin_host) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        if own_hosts.is_empty() {
            is_local(&host)
        } else {
            own_hosts.contains(&host)
        }
    }
}

/// `localhost` or an IP literal, with or without a port.
fn is_local(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name == "localhost" || name.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn own_origin_counts_only_for_configured_or_local_hosts() {
        let local = OriginPolicy::new(&[], Some(&[])).unwrap();
        assert!(local.allows(&headers("127.0.0.1:8080", Some("http://127.0.0.1:8080"))));
        assert!(local.allows(&headers("localhost:8080", Some("http://localhost:8080"))));
        assert!(local.allows(&headers("[::1]:8080", Some("http://[::1]:8080"))));
        // DNS rebinding: Host and Origin agree, but the name is nobody's we know.
        assert!(!local.allows(&headers(
            "evil.example:8080",
            Some("http://evil.example:8080")
        )));
        assert!(local.allows(&headers("evil.example:8080", None)));
        let named = OriginPolicy::new(&[], Some(&["App.Example.com".into()])).unwrap();
        assert!(named.allows(&headers("app.example.com", Some("https://app.example.com"))));
        assert!(!named.allows(&headers("evil.example", Some("https://evil.example"))));
        assert!(!named.allows(&headers("127.0.0.1", Some("http://127.0.0.1"))));
    }

    #[test]
    fn without_own_hosts_only_the_list_passes() {
        let p = OriginPolicy::new(&["https://a.example/".into()], None).unwrap();
        assert!(p.allows(&headers("gw", Some("https://a.example"))));
        assert!(!p.allows(&headers("127.0.0.1", Some("http://127.0.0.1"))));
        assert!(p.allows(&headers("gw", None)));
        assert!(OriginPolicy::new(&["bad\norigin".into()], None).is_err());
    }
}
