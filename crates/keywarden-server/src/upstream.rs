//! Gateway mode's upstream, as `[gateway]` configures it and startup checks it
//! (`docs/gateway.md`).

use crate::config::{ConfigError, GatewayConfig, MethodOverride};
use axum::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use axum::http::HeaderValue;
use std::time::Duration;

/// The upstream of gateway mode, checked at startup.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub(crate) authority: Authority,
    /// The `Host` header every forwarded request carries: the upstream's authority.
    pub(crate) host: HeaderValue,
    /// The upstream URL's path without its trailing `/` (`""` for none); requests are
    /// forwarded below it.
    pub(crate) base_path: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) method_override: MethodOverride,
}

impl Upstream {
    /// Parses `[gateway]`; `None` when no upstream is configured (no gateway).
    pub fn from_config(c: &GatewayConfig) -> Result<Option<Upstream>, ConfigError> {
        let raw = c.upstream.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let err = |reason: &str| ConfigError::new("gateway.upstream", reason);
        let uri: Uri = raw
            .parse()
            .map_err(|_| err("not a URL like \"http://127.0.0.1:9000\""))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(s) if *s == Scheme::HTTPS => {
                return Err(err(
                    "https upstreams are not supported: use http:// to an upstream on a trusted network",
                ))
            }
            _ => return Err(err("must start with http://")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| err("names no host"))?;
        if authority.as_str().contains('@') {
            return Err(err("must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(err("must not have a query string"));
        }
        if c.timeout_seconds == 0 {
            return Err(ConfigError::new(
                "gateway.timeout_seconds",
                "must be at least 1",
            ));
        }
        if c.connect_timeout_seconds == 0 {
            return Err(ConfigError::new(
                "gateway.connect_timeout_seconds",
                "must be at least 1",
            ));
        }
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|_| err("names no valid host"))?;
        Ok(Some(Upstream {
            host,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            timeout: Duration::from_secs(c.timeout_seconds),
            connect_timeout: Duration::from_secs(c.connect_timeout_seconds),
            method_override: c.method_override,
        }))
    }

    /// The request target on the upstream (origin form) for a request path and (already
    /// filtered) query.
    pub(crate) fn target(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + 64);
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            pq.push('?');
            pq.push_str(q);
        }
        Some(Uri::from(PathAndQuery::try_from(pq).ok()?))
    }

    /// `http://authority/`, where connections go.
    pub(crate) fn origin(&self) -> Uri {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Result<Option<Upstream>, ConfigError> {
        Upstream::from_config(&GatewayConfig {
            upstream: url.into(),
            ..GatewayConfig::default()
        })
    }

    #[test]
    fn upstream_urls_are_checked() {
        assert!(upstream("").unwrap().is_none());
        let u = upstream("http://127.0.0.1:9000/api/").unwrap().unwrap();
        assert_eq!(
            u.target("/v1/x", Some("a=1")).unwrap().to_string(),
            "/api/v1/x?a=1"
        );
        let u = upstream("http://up:9000").unwrap().unwrap();
        assert_eq!(u.target("/", None).unwrap().to_string(), "/");
        assert_eq!(u.origin().to_string(), "http://up:9000/");
        for bad in [
            "https://up",
            "up:9000",
            "http://u:p@up",
            "http://up/?x=1",
            "::",
        ] {
            let e = upstream(bad).unwrap_err();
            assert_eq!(e.field, "gateway.upstream", "{bad}");
        }
    }
}
