//! Reading a request: where its key is presented (`docs/concepts.md#presenting-a-key`) and which client sent it (`docs/decision.md`).
//!
//! The key is borrowed from the request whenever possible, so it is never copied into a
//! buffer that outlives the verification; only a percent-encoded query value is decoded
//! into a new string.

use http::header::AUTHORIZATION;
use http::{Extensions, HeaderMap, HeaderName, Uri};
use keywarden_core::ip::{client_ip as walk_forwarded_for, normalize, ClientAddr, TrustedProxies};
use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// One place a request may present its key. A layer tries its sources in order and the
/// first one present wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `Authorization: Bearer <key>`. An `Authorization` header of another scheme is
    /// ignored, so Basic credentials meant for something else never count as a key.
    Bearer,
    /// A header carrying the key alone, such as `X-API-Key`.
    Header(HeaderName),
    /// A query parameter. Discouraged: URLs end up in access logs and browser history.
    Query(String),
}

impl KeySource {
    /// The server's default: `Authorization: Bearer`, then `X-API-Key`.
    pub fn defaults() -> Vec<KeySource> {
        vec![
            KeySource::Bearer,
            KeySource::Header(HeaderName::from_static("x-api-key")),
        ]
    }
}

/// A key source spelled wrongly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidKeySource(String);

impl FromStr for KeySource {
    type Err = InvalidKeySource;

    /// Parses the configuration spelling: `bearer`, `header:NAME` or `query:NAME`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "bearer" {
            return Ok(KeySource::Bearer);
        }
        if let Some(h) = s.strip_prefix("header:") {
            return HeaderName::try_from(h)
                .map(KeySource::Header)
                .map_err(|_| InvalidKeySource(format!("{h:?} is not a valid header name")));
        }
        if let Some(q) = s.strip_prefix("query:").filter(|q| !q.is_empty()) {
            return Ok(KeySource::Query(q.to_string()));
        }
        Err(InvalidKeySource(format!(
            "{s:?} is not a key source; use \"bearer\", \"header:NAME\" or \"query:NAME\""
        )))
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Bearer => f.write_str("bearer"),
            KeySource::Header(h) => write!(f, "header:{h}"),
            KeySource::Query(q) => write!(f, "query:{q}"),
        }
    }
}

/// The key presented with a request, from the first source that has a non-empty one.
pub(crate) fn presented_key<'r>(
    sources: &[KeySource],
    headers: &'r HeaderMap,
    uri: &'r Uri,
) -> Option<Cow<'r, str>> {
    sources.iter().find_map(|source| {
        let found: Option<Cow<'r, str>> = match source {
            KeySource::Bearer => headers
                .get_all(AUTHORIZATION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| Cow::Borrowed(rest.trim()))
                }),
            KeySource::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| Cow::Borrowed(v.trim())),
            KeySource::Query(name) => uri.query().and_then(|q| query_param(q, name)),
        };
        found.filter(|k| !k.is_empty())
    })
}

/// One query parameter's value, percent-decoded when it needs to be.
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => hex(bytes[i + 1])
                .zip(hex(bytes[i + 2]))
                .map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

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
    let mut joined = String::new();
    for v in headers.get_all("x-forwarded-for") {
        if !joined.is_empty() {
            joined.push(',');
        }
        match v.to_str() {
            Ok(text) => joined.push_str(text),
            Err(_) => joined.push_str(&String::from_utf8_lossy(v.as_bytes())),
        }
    }
    Some(walk_forwarded_for(
        peer,
        (!joined.is_empty()).then_some(joined.as_str()),
        trusted,
    ))
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

    fn found(
        sources: &[KeySource],
        pairs: &[(&'static str, &'static str)],
        uri: &str,
    ) -> Option<String> {
        let h = headers(pairs);
        let uri: Uri = uri.parse().unwrap();
        presented_key(sources, &h, &uri).map(Cow::into_owned)
    }

    #[test]
    fn sources_parse_and_print_back() {
        for s in ["bearer", "header:x-api-key", "query:api_key"] {
            assert_eq!(s.parse::<KeySource>().unwrap().to_string(), s);
        }
        assert!("header:bad header".parse::<KeySource>().is_err());
        assert!("query:".parse::<KeySource>().is_err());
        assert!("cookie:k".parse::<KeySource>().is_err());
    }

    #[test]
    fn the_first_present_source_wins() {
        let d = KeySource::defaults();
        assert_eq!(
            found(
                &d,
                &[("authorization", "Bearer  kw_a "), ("x-api-key", "kw_b")],
                "/"
            ),
            Some("kw_a".into())
        );
        assert_eq!(
            found(&d, &[("x-api-key", " kw_b ")], "/"),
            Some("kw_b".into())
        );
        assert_eq!(
            found(&d, &[("authorization", "bearer kw_c")], "/"),
            Some("kw_c".into())
        );
    }

    #[test]
    fn other_schemes_and_empty_values_are_ignored() {
        let d = KeySource::defaults();
        assert_eq!(
            found(&d, &[("authorization", "Basic dXNlcjpwdw==")], "/"),
            None
        );
        assert_eq!(
            found(
                &d,
                &[("authorization", "Basic x"), ("x-api-key", "kw_d")],
                "/"
            ),
            Some("kw_d".into())
        );
        assert_eq!(found(&d, &[("x-api-key", "  ")], "/"), None);
        assert_eq!(found(&d, &[], "/?api_key=kw_e"), None);
    }

    #[test]
    fn query_values_are_decoded() {
        let q = [KeySource::Query("api_key".into())];
        assert_eq!(found(&q, &[], "/x?a=1&api_key=kw%5Ff"), Some("kw_f".into()));
        assert_eq!(found(&q, &[], "/x?api_key="), None);
        assert_eq!(found(&q, &[], "/x?k=%zz&api_key=kw_g"), Some("kw_g".into()));
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
