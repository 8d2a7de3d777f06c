//! Reading a request the way every entry point does (`docs/concepts.md#presenting-a-key`):
//! where its key is presented, and the application secret beside it. The server's
//! handlers, its gateway and the embedded layer all read keys through this module.
//!
//! The key is borrowed from the request whenever possible, so it is never copied into a
//! buffer that outlives the verification; only a percent-encoded query value is decoded
//! into a new string.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, Uri};
use keywarden_core::ip::{ClientAddr, TrustedProxies};
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::verifier::VerifyRequest;

/// One place a request may present its key. A layer tries its sources in order and the
/// first one present wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `Authorization: Bearer <key>`. An `Authorization` header of another scheme is
    /// ignored, so Basic credentials meant for something else never count as a key.
    Bearer,
    /// A header carrying the key alone, such as `X-API-Key` (its name in lower case).
    Header(String),
    /// A query parameter. Discouraged: URLs end up in access logs and browser history.
    Query(String),
}

impl KeySource {
    /// The server's default: `Authorization: Bearer`, then `X-API-Key`.
    pub fn defaults() -> Vec<KeySource> {
        vec![KeySource::Bearer, KeySource::Header("x-api-key".into())]
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
                .map(|name| KeySource::Header(name.as_str().to_string()))
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
pub fn presented_key<'r>(
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
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| Cow::Borrowed(v.trim())),
            KeySource::Query(name) => uri.query().and_then(|q| query_param(q, name)),
        };
        found.filter(|k| !k.is_empty())
    })
}

/// One query parameter's value, percent-decoded when it needs to be.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

pub fn percent_decode(s: &str) -> Cow<'_, str> {
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

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The client behind `peer`, read through the request's `X-Forwarded-For` hops (joined in
/// order) as far as they are trusted; see [`keywarden_core::ip::client_ip`]. A header value
/// that is not text (raw bytes above ASCII) is read as a hop that is not an address, never
/// skipped: skipping it would make the proxy the client.
pub fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> ClientAddr {
    // An untrusted peer's header is not read at all.
    if !trusted.contains(keywarden_core::ip::normalize(peer)) {
        return keywarden_core::ip::client_ip(peer, None, trusted);
    }
    let mut joined = String::new();
    for v in headers.get_all(X_FORWARDED_FOR) {
        if !joined.is_empty() {
            joined.push(',');
        }
        match v.to_str() {
            Ok(text) => joined.push_str(text),
            Err(_) => joined.push_str(&String::from_utf8_lossy(v.as_bytes())),
        }
    }
    keywarden_core::ip::client_ip(
        peer,
        (!joined.is_empty()).then_some(joined.as_str()),
        trusted,
    )
}

/// What a request presents to be verified: its key, from the first source that has one,
/// and the application secret from the configured header. Every entry point (the
/// server's handlers and gateway, the embedded layer) reads a request through this, then
/// adds what it knows of the request (`..credentials.request()`). Its `Debug` never shows
/// either secret.
#[derive(Clone, Default)]
pub struct Credentials<'r> {
    /// The presented key, borrowed unless it came percent-encoded in the query.
    pub token: Option<Cow<'r, str>>,
    /// The presented application secret.
    pub app_secret: Option<&'r str>,
}

impl<'r> Credentials<'r> {
    /// Reads the key from `sources`, in order, and the application secret from
    /// `app_secret_header` (when one is configured).
    pub fn read(
        sources: &[KeySource],
        app_secret_header: Option<&str>,
        headers: &'r HeaderMap,
        uri: &'r Uri,
    ) -> Self {
        Credentials {
            token: presented_key(sources, headers, uri),
            app_secret: app_secret_header
                .and_then(|h| headers.get(h))
                .and_then(|v| v.to_str().ok()),
        }
    }

    /// A verification request with these credentials and nothing else.
    pub fn request(&self) -> VerifyRequest<'_> {
        VerifyRequest {
            token: self.token.as_deref(),
            app_secret: self.app_secret,
            ..VerifyRequest::default()
        }
    }
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |present: bool| present.then_some("[redacted]");
        f.debug_struct("Credentials")
            .field("token", &redacted(self.token.is_some()))
            .field("app_secret", &redacted(self.app_secret.is_some()))
            .finish()
    }
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
    fn credentials_never_show_their_secrets() {
        let h = headers(&[
            ("authorization", "Bearer kw_sk_live_secret"),
            ("x-app-secret", "app_secret_value"),
        ]);
        let uri: Uri = "/".parse().unwrap();
        let c = Credentials::read(&[KeySource::Bearer], Some("x-app-secret"), &h, &uri);
        assert_eq!(c.token.as_deref(), Some("kw_sk_live_secret"));
        assert_eq!(c.app_secret, Some("app_secret_value"));
        let req = c.request();
        for shown in [format!("{c:?}"), format!("{req:?}")] {
            assert!(!shown.contains("secret_value"), "{shown}");
            assert!(!shown.contains("kw_sk_live"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
    }
}
