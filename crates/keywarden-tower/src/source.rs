//! Reading a request: where its key is presented (`docs/concepts.md#presenting-a-key`) and which client sent it (`docs/decision.md`).
//!
//! The key is borrowed from the request whenever possible, so it is never copied into a
//! buffer that outlives the verification; only a percent-encoded query value is decoded
//! into a new string.

use http::{Extensions, HeaderMap};
use keywarden_core::ip::{normalize, ClientAddr, TrustedProxies};
use std::net::{IpAddr, SocketAddr};

use keywarden_store::request::forwarded_client;
pub use keywarden_store::request::{InvalidKeySource, KeySource};

/// The client address, set by the application when it knows better than the socket (for
/// example behind a proxy protocol). When present in the request extensions it is used as
/// is: no `X-Forwarded-For` walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client a decision is made with: [`ClientIp`] when the application set one, else
/// the peer (axum's `ConnectInfo<SocketAddr>`, or a plain `SocketAddr` extension), read
/// through `X-Forwarded-For` only when the peer is a trusted proxy. A trusted hop that is
/// not an address (a header value that is not text included) makes the client unknown,
/// never the proxy.
pub(crate) fn client_ip(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Option<ClientAddr> {
    if let Some(ClientIp(ip)) = extensions.get::<ClientIp>() {
        return Some(ClientAddr::Ip(normalize(*ip)));
    }
    let peer = peer_ip(extensions)?;
    if trusted.is_empty() {
        return Some(ClientAddr::Ip(normalize(peer)));
    }
    Some(forwarded_client(peer, headers, trusted))
}

fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_client_ip_comes_from_trusted_hops_only() {
        let mut ext = Extensions::new();
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        assert_eq!(client_ip(&ext, &h, &TrustedProxies::default()), None);
        ext.insert("10.0.0.1:4000".parse::<SocketAddr>().unwrap());
        let none = TrustedProxies::default();
        let ip = |s: &str| Some(ClientAddr::Ip(s.parse().unwrap()));
        assert_eq!(client_ip(&ext, &h, &none), ip("10.0.0.1"));
        let trusted = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        assert_eq!(client_ip(&ext, &h, &trusted), ip("203.0.113.9"));
        // A trusted hop that is no address: the client is unknown, not the proxy.
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, unknown")]);
        assert_eq!(
            client_ip(&ext, &garbage, &trusted),
            Some(ClientAddr::Unknown)
        );
        let mut raw = HeaderMap::new();
        raw.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(client_ip(&ext, &raw, &trusted), Some(ClientAddr::Unknown));
        ext.insert(ClientIp("192.0.2.7".parse().unwrap()));
        assert_eq!(client_ip(&ext, &h, &trusted), ip("192.0.2.7"));
    }
}
