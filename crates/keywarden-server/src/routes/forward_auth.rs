//! `ANY /v1/forward-auth`: nginx `auth_request`, Traefik ForwardAuth and Envoy ext_authz
//! ask about each request. The client's own headers carry the credential; the original
//! method and path are read the way `forward_auth.convention` says, and only that way:
//! `X-Original-Method`/`X-Original-URI` (nginx, the default), `X-Forwarded-Method`/
//! `X-Forwarded-Uri` (Traefik), or this request's own method and its path after
//! `/v1/forward-auth` (Envoy's `path_prefix`). Another proxy's headers are ignored, since a
//! client may send them. An original request that is missing or cannot be read exactly is
//! refused with 400 and nothing is decided (see [`original_target`]); it is never replaced
//! by another path. Allowed → 200 with identity headers; denied → the decision's status and
//! error body. `X-Keywarden-Status` always carries the real status and `X-Keywarden-Code`
//! the wire code, because nginx's auth_request passes on only 401 and 403 and never a body;
//! with `X-Keywarden-Render` the endpoint renders such an earlier denial instead of deciding
//! again (see [`render`]). The conventions are described in `docs/integrations/README.md`.

use crate::auth::require_forward_auth_token;
use crate::config::ProxyConvention;
use crate::errors::ApiError;
use crate::extract::{client_ip, credentials, peer_ip};
use crate::middleware::DecisionCode;
use crate::routes::needs::{identity_headers, rate_limit_headers, route_needs, Needs};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use keywarden_core::codes::Code;
use keywarden_store::verifier::VerifyRequest;
use std::borrow::Cow;

/// The first of `names` present with a non-empty value (names fixed at compile time, so a
/// request pays no name parsing).
fn header_of<'a>(headers: &'a HeaderMap, names: &[HeaderName]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(n).and_then(|v| v.to_str().ok()))
        .filter(|v| !v.is_empty())
}

const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const RENDER: HeaderName = HeaderName::from_static(RENDER_HEADER);
const STATUS: HeaderName = HeaderName::from_static("x-keywarden-status");
const CODE: HeaderName = HeaderName::from_static("x-keywarden-code");
const RETRY_AFTER: HeaderName = HeaderName::from_static("x-keywarden-retry-after");

/// The path this endpoint is served at; Envoy's `path_prefix` puts the original path after it.
pub const FORWARD_AUTH_PATH: &str = "/v1/forward-auth";

/// The original request target (path and query) as a proxy gave it, parsed exactly: the
/// answer's path is `raw` up to its first `?` and its query the rest, byte for byte, or the
/// target is refused with the reason (to follow the header's name in a 400). Only the
/// origin form is accepted, in visible ASCII, without a fragment and with every character
/// a URI may carry unencoded where it stands: raw UTF-8, spaces, `<`, `>`, a backtick in
/// the path and the like must come percent-encoded, as a well-behaved client sends them. A target that does not parse
/// is never replaced by another (such as `/`): that would decide about a request nobody
/// made.
pub fn original_target(raw: &[u8]) -> Result<Uri, String> {
    let Some(&first) = raw.first() else {
        return Err("is empty".into());
    };
    if first != b'/' {
        return Err("must be a path starting with /".into());
    }
    if let Some(&b) = raw.iter().find(|b| !(0x21..=0x7e).contains(*b)) {
        return Err(if b >= 0x80 {
            "holds a byte that is not ASCII (raw UTF-8?); it must be percent-encoded".into()
        } else {
            "holds a space or a control character".into()
        });
    }
    if raw.contains(&b'#') {
        return Err("holds a fragment (#), which a request never sends".into());
    }
    let uri = Uri::try_from(raw).map_err(|e| {
        format!("is not a valid request target ({e}): characters such as < > ` and \" must be percent-encoded")
    })?;
    // The parser keeps an origin-form target as given; held to that, so that what is
    // decided is exactly what the proxy forwards.
    let exact = uri.scheme().is_none()
        && uri.authority().is_none()
        && uri.path_and_query().map(|pq| pq.as_str().as_bytes()) == Some(raw);
    if !exact {
        return Err("is not a valid request target".into());
    }
    Ok(uri)
}

/// The one value of header `name`, or why there is none to use.
fn single<'a>(h: &'a HeaderMap, name: &HeaderName, shown: &str) -> Result<&'a HeaderValue, String> {
    let mut values = h.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v),
        (None, _) => Err(format!("{shown} is missing")),
        (Some(_), Some(_)) => Err(format!("{shown} is sent more than once")),
    }
}

/// An original method as sent in header `shown`: an HTTP method token, upper-cased.
fn original_method<'a>(value: &'a HeaderValue, shown: &str) -> Result<Cow<'a, str>, String> {
    let not_a_method = || format!("{shown} is not an HTTP method");
    Method::from_bytes(value.as_bytes()).map_err(|_| not_a_method())?;
    let method = value.to_str().map_err(|_| not_a_method())?;
    Ok(upper(method))
}

/// `method` in upper case, borrowed when it already is.
fn upper(method: &str) -> Cow<'_, str> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        method.to_ascii_uppercase().into()
    } else {
        method.into()
    }
}

/// The original method and target of the request a proxy asks about, read the way
/// `convention` says and no other way; the error names what is missing or unreadable.
fn original(convention: ProxyConvention, parts: &Parts) -> Result<(Cow<'_, str>, Uri), String> {
    let h = &parts.headers;
    let (method_header, method_shown, uri_header, uri_shown) = match convention {
        ProxyConvention::Nginx => (
            X_ORIGINAL_METHOD,
            "X-Original-Method",
            X_ORIGINAL_URI,
            "X-Original-URI",
        ),
        ProxyConvention::Traefik => (
            X_FORWARDED_METHOD,
            "X-Forwarded-Method",
            X_FORWARDED_URI,
            "X-Forwarded-Uri",
        ),
        ProxyConvention::Envoy => {
            let full = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
            let rest = full
                .strip_prefix(FORWARD_AUTH_PATH)
                .filter(|rest| rest.starts_with('/'))
                .ok_or_else(|| {
                    format!(
                        "the original path must follow {FORWARD_AUTH_PATH} in the request's \
                         path (Envoy's path_prefix)"
                    )
                })?;
            let uri = original_target(rest.as_bytes())
                .map_err(|why| format!("the original path {why}"))?;
            return Ok((upper(parts.method.as_str()), uri));
        }
    };
    let method = original_method(single(h, &method_header, method_shown)?, method_shown)?;
    let raw = single(h, &uri_header, uri_shown)?;
    let uri = original_target(raw.as_bytes()).map_err(|why| format!("{uri_shown} {why}"))?;
    Ok((method, uri))
}

/// A refusal before any decision, with its status and code stamped for the proxy.
fn refuse(state: &AppState, e: ApiError) -> Response {
    let presented = state.settings.renderer.overrides.present(e.code);
    let mut res = e.into_response();
    stamp(&mut res, presented.status, presented.name);
    res
}

/// Decides about the original request described by the headers.
#[utoipa::path(
    method(get, post, put, delete, patch, head, options, trace), path = "/v1/forward-auth", description = "The client's own headers carry its credential. The original method and path are read as `forward_auth.convention` says, and only so: X-Original-Method and X-Original-URI (`nginx`, the default), X-Forwarded-Method and X-Forwarded-Uri (`traefik`), or this request's own method and its path after `/v1/forward-auth` (`envoy`, ext_authz's `path_prefix`). A missing or unreadable original request (a URI with raw UTF-8 or an unencoded `<`, for example) is refused with 400 and nothing is decided. A denial answers with the decision's status (a profile may change it) and the error body.",
    responses(
        (status = 200, description = "Allowed (or a route that needs no key); the identity is in the X-Keywarden-* headers", headers(("X-Keywarden-Status" = String, description = "The decision's real status (nginx passes only 401 and 403 on)"), ("X-Keywarden-Key-Id" = String, description = "The key's id (`global` for the global key)"), ("X-Keywarden-Account-Id" = String, description = "The key's account"), ("X-Keywarden-Mode" = String, description = "`live` or `test`"), ("X-Keywarden-Scopes" = String, description = "The key's effective scopes, space-separated"))),
        (status = 400, description = "The original method or URI is missing, sent twice or cannot be read exactly (`invalid_request`); nothing was decided", headers(("X-Keywarden-Status" = String, description = "400")), content((keywarden_core::codes::ErrorBody = "application/json"), (keywarden_core::codes::ProblemDetails = "application/problem+json"))),
        (status = 401, description = "No valid key (`missing_api_key`, `invalid_api_key`, …), or a configured verify token missing from X-Keywarden-Verify-Token (`root_key_required`)", headers(("X-Keywarden-Status" = String, description = "The decision's real status"), ("WWW-Authenticate" = String, description = "`Bearer realm=\"keywarden\"`")), content((keywarden_core::codes::ErrorBody = "application/json"), (keywarden_core::codes::ProblemDetails = "application/problem+json"))),
        (status = 403, description = "The key may not make this request (`insufficient_scope`, `account_inactive`, …)", headers(("X-Keywarden-Status" = String, description = "The decision's real status")), content((keywarden_core::codes::ErrorBody = "application/json"), (keywarden_core::codes::ProblemDetails = "application/problem+json"))),
        (status = 429, description = "Limited (`rate_limit_exceeded`, `quota_exceeded`, …)", headers(("X-Keywarden-Status" = String, description = "The decision's real status"), ("Retry-After" = String, description = "Seconds to wait"), ("RateLimit-Policy" = String, description = "The rate limit (IETF httpapi draft 11)"), ("RateLimit" = String, description = "What is left of it (IETF httpapi draft 11)")), content((keywarden_core::codes::ErrorBody = "application/json"), (keywarden_core::codes::ProblemDetails = "application/problem+json"))),
    ),
    security((), ("forward_auth_token" = [])),
    tag = "verify"
)]
pub async fn forward_auth(State(state): State<AppState>, req: Request) -> Response {
    let peer = peer_ip(req.extensions());
    let (parts, _body) = req.into_parts();
    let (mut res, allowed) = answer(&state, &parts, peer).await;
    if let Some(code) = allowed {
        res.extensions_mut().insert(DecisionCode(code));
    }
    res
}

/// Forward-auth's answer to the request `parts` from `peer`, and its decision code when
/// it allows (a refusal carries its own). The request's extensions are not read: the
/// listener's front calls this directly, with the peer, and leaves them empty.
pub async fn answer(
    state: &AppState,
    parts: &Parts,
    peer: Option<std::net::IpAddr>,
) -> (Response, Option<&'static str>) {
    if let Err(e) = require_forward_auth_token(state, &parts.headers) {
        return (refuse(state, e), None);
    }
    let h = &parts.headers;
    if let Some(code) = header_of(h, &[RENDER]) {
        return (render(state, h, code), None);
    }
    let (method, uri) = match original(state.settings.config.forward_auth.convention, parts) {
        Ok(found) => found,
        Err(why) => return (refuse(state, ApiError::invalid(why)), None),
    };
    // Decided on the canonical path; one that has none is refused, never guessed at.
    let (needs, path) = match route_needs(state, &method, uri.path()) {
        Ok(routed) => routed,
        Err(e) => return (refuse(state, ApiError::invalid(e.to_string())), None),
    };
    if matches!(needs, Needs::Public) {
        let mut res = ().into_response();
        stamp(&mut res, 200, "valid");
        return (res, Some("valid"));
    }
    let s = &state.settings;
    // The credential may sit in the original query string when a `query:` source is on.
    let creds = credentials(s, h, &uri);
    let ip = client_ip(s, h, peer);
    let scopes = match &needs {
        Needs::Scopes(set) => Some(set),
        _ => None,
    };
    let out = state
        .verifier
        .verify(&VerifyRequest {
            client_ip: ip,
            scopes_all: scopes,
            impossible: matches!(needs, Needs::Impossible),
            method: &method,
            path: &path,
            ..creds.request()
        })
        .await;

    let presented = s.renderer.overrides.present(out.code);
    let (mut res, allowed) = if out.is_valid() {
        let mut res = ().into_response();
        // Room for the identity headers, the two stamps and the request id at once, rather
        // than a map that grows twice on the way.
        res.headers_mut().reserve(8);
        identity_headers(state, res.headers_mut(), &out);
        (res, Some("valid"))
    } else {
        let refused = ApiError::new(out.code).retry_after(out.retry_after);
        (refused.into_response(), None)
    };
    rate_limit_headers(res.headers_mut(), &out);
    stamp(&mut res, presented.status, presented.name);
    (res, allowed)
}

/// Adds the decision's real status and wire code: `X-Keywarden-Status` and
/// `X-Keywarden-Code`.
fn stamp(res: &mut Response, status: u16, code: &str) {
    let h = res.headers_mut();
    h.insert(STATUS, status_value(status));
    // A code under its own name is written from its static text; only a renamed one is
    // copied into a value of its own.
    let value = match code.parse::<Code>() {
        Ok(c) if c.as_str() == code => Ok(HeaderValue::from_static(c.as_str())),
        _ => HeaderValue::from_str(code),
    };
    if let Ok(v) = value {
        h.insert(CODE, v);
    }
}

/// A status as a header value, without an allocation for the statuses decisions give.
fn status_value(status: u16) -> HeaderValue {
    let text = match status {
        200 => "200",
        400 => "400",
        401 => "401",
        402 => "402",
        403 => "403",
        404 => "404",
        429 => "429",
        _ => return HeaderValue::from(status),
    };
    HeaderValue::from_static(text)
}

/// The request header that asks forward-auth to render a denial instead of deciding.
pub const RENDER_HEADER: &str = "x-keywarden-render";

/// Renders a denial an earlier forward-auth call made, from its `X-Keywarden-Code` (sent
/// back in `X-Keywarden-Render`), `X-Keywarden-Status` and `Retry-After` (sent back in
/// `X-Keywarden-Retry-After`): the status, error body in the configured style and the
/// client's language, `WWW-Authenticate` and `Retry-After`. Nothing is verified or counted,
/// so a denied request costs no second rate-limit token or lockout failure. nginx needs it
/// because auth_request cannot pass the subrequest's body on (see
/// `docs/integrations/nginx.conf`).
fn render(state: &AppState, h: &HeaderMap, wire: &str) -> Response {
    let overrides = &state.settings.renderer.overrides;
    let status: Option<u16> = header_of(h, &[STATUS]).and_then(|v| v.parse().ok());
    // Two codes may share a wire name after a rename; they then render alike, and the
    // status tells them apart when an override changed one's.
    let code = Code::ALL.iter().copied().find(|&c| {
        let p = overrides.present(c);
        c != Code::Valid && p.name == wire && status.is_none_or(|s| s == p.status)
    });
    let Some(code) = code else {
        return ApiError::invalid("X-Keywarden-Render does not name an error code").into_response();
    };
    let retry_after = header_of(h, &[RETRY_AFTER]).and_then(|v| v.parse().ok());
    let presented = overrides.present(code);
    let mut res = ApiError::new(code).retry_after(retry_after).into_response();
    stamp(&mut res, presented.status, presented.name);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The path and query `raw` names, split at its first `?`, when it is text.
    fn split(raw: &[u8]) -> Option<(&str, Option<&str>)> {
        let text = std::str::from_utf8(raw).ok()?;
        Some(match text.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (text, None),
        })
    }

    /// `original_target` either refuses `raw` or keeps exactly its path and query.
    fn exact_or_refused(raw: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(uri) = original_target(raw) {
            let (path, query) = split(raw).expect("an accepted target is text");
            prop_assert_eq!(uri.path(), path);
            prop_assert_eq!(uri.query(), query);
            prop_assert_eq!(
                uri.path_and_query().map(|pq| pq.as_str().as_bytes()),
                Some(raw)
            );
        }
        Ok(())
    }

    #[test]
    fn targets_are_taken_exactly_or_refused() {
        #[rustfmt::skip]
        let cases: &[(&[u8], bool)] = &[
            // Each row holds the target and whether it is accepted.
            (b"/", true),
            (b"/admin/secret", true),
            (b"/admin/secret?q=%3Cx%3E", true),
            (b"/v1/invoices/42?expand=lines&x", true),
            (b"/a;b=c/..;/d", true),
            (b"//double//slashes", true),
            (b"/%2e%2e/x", true),
            (b"/q?a=1?b=2", true),
            (b"/admin/secret?q=<x>", false),
            (b"/admin/<x>", false),
            (b"/admin/`x", false),
            ("/admin/é".as_bytes(), false),
            ("/admin/secret?q=é".as_bytes(), false),
            (b"/admin/\xff", false),
            (b"/a b", false),
            (b"/a\tb", false),
            (b"/public/x#/../../admin", false),
            (b"", false),
            (b"admin/secret", false),
            (b"*", false),
            (b"http://example.com/admin", false),
            (b"example.com:443", false),
        ];
        for &(raw, ok) in cases {
            let got = original_target(raw);
            assert_eq!(
                got.is_ok(),
                ok,
                "{:?}: {got:?}",
                String::from_utf8_lossy(raw)
            );
            exact_or_refused(raw).unwrap();
        }
    }

    /// A request to this endpoint as a proxy of `convention` would send it, with another
    /// proxy's headers added by the client.
    fn asked(uri: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut req = axum::http::Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            req = req.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn each_convention_reads_its_own_headers_only() {
        let all: &[(&str, &[u8])] = &[
            ("x-original-method", b"GET"),
            ("x-original-uri", b"/nginx/path"),
            ("x-forwarded-method", b"delete"),
            ("x-forwarded-uri", b"/traefik/path?x=1"),
        ];
        let parts = asked("/v1/forward-auth/envoy/path?y=2", all);
        let read = |c| original(c, &parts).map(|(m, u)| (m.into_owned(), u.to_string()));
        assert_eq!(
            read(ProxyConvention::Nginx),
            Ok(("GET".into(), "/nginx/path".into()))
        );
        assert_eq!(
            read(ProxyConvention::Traefik),
            Ok(("DELETE".into(), "/traefik/path?x=1".into()))
        );
        assert_eq!(
            read(ProxyConvention::Envoy),
            Ok(("POST".into(), "/envoy/path?y=2".into()))
        );

        // A header of the chosen family missing: named, and no other family stands in.
        let only_traefik = asked("/v1/forward-auth", &all[2..]);
        assert_eq!(
            original(ProxyConvention::Nginx, &only_traefik).unwrap_err(),
            "X-Original-Method is missing"
        );
        let only_nginx = asked("/v1/forward-auth", &all[..2]);
        assert_eq!(
            original(ProxyConvention::Traefik, &only_nginx).unwrap_err(),
            "X-Forwarded-Method is missing"
        );
        let no_uri = asked("/v1/forward-auth", &[("x-original-method", b"GET")]);
        assert_eq!(
            original(ProxyConvention::Nginx, &no_uri).unwrap_err(),
            "X-Original-URI is missing"
        );
        assert!(original(ProxyConvention::Envoy, &only_nginx)
            .unwrap_err()
            .contains("must follow /v1/forward-auth"));
        for bad in ["/v1/forward-auth?x=1", "/v1/forward-authx"] {
            assert!(
                original(ProxyConvention::Envoy, &asked(bad, &[])).is_err(),
                "{bad}"
            );
        }

        // Sent twice, or not a method: refused, naming the header.
        let twice = asked(
            "/v1/forward-auth",
            &[
                ("x-original-method", b"GET"),
                ("x-original-uri", b"/public/x"),
                ("x-original-uri", b"/admin"),
            ],
        );
        assert_eq!(
            original(ProxyConvention::Nginx, &twice).unwrap_err(),
            "X-Original-URI is sent more than once"
        );
        let bad_method = asked(
            "/v1/forward-auth",
            &[("x-original-method", b"G E T"), ("x-original-uri", b"/x")],
        );
        assert_eq!(
            original(ProxyConvention::Nginx, &bad_method).unwrap_err(),
            "X-Original-Method is not an HTTP method"
        );
        let unreadable = asked(
            "/v1/forward-auth",
            &[
                ("x-original-method", b"GET"),
                ("x-original-uri", b"/admin?q=<x>"),
            ],
        );
        assert!(original(ProxyConvention::Nginx, &unreadable)
            .unwrap_err()
            .starts_with("X-Original-URI is not a valid request target"));
    }

    /// Bytes a proxy may put in a header, biased towards what makes paths interesting.
    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        let interesting = prop::sample::select(
            b"/?#%.;=&<>`\"{}|\\^ azAZ09~-_:@!$'()*+,\t\x7f\x80\xc3\xa9\xff".to_vec(),
        );
        let byte = prop_oneof![3 => interesting, 1 => any::<u8>()];
        (any::<bool>(), prop::collection::vec(byte, 0..48)).prop_map(|(slash, mut rest)| {
            if slash {
                rest.insert(0, b'/');
            }
            rest
        })
    }

    /// [`header_bytes`] without what no header value may hold (NUL, CR, LF, other controls).
    fn header_value_bytes() -> impl Strategy<Value = Vec<u8>> {
        header_bytes().prop_map(|mut v| {
            v.retain(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
            v
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// For any bytes, a target is refused or taken exactly: never another path.
        #[test]
        fn any_bytes_are_refused_or_taken_exactly(raw in header_bytes()) {
            exact_or_refused(&raw)?;
        }

        /// A well-formed target (the characters RFC 3986 lets a path and query carry) is
        /// always taken, exactly.
        #[test]
        fn well_formed_targets_are_taken(
            raw in "/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,40}(%[0-9A-F]{2})?(\\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,20})?"
        ) {
            prop_assert!(original_target(raw.as_bytes()).is_ok(), "{}", raw);
            exact_or_refused(raw.as_bytes())?;
        }

        /// Through the headers of each convention: the decided path is the one the chosen
        /// family gave, exactly, whatever the other families say; or the request is refused.
        #[test]
        fn the_chosen_family_alone_gives_the_path(
            mine in header_value_bytes(),
            other in header_value_bytes(),
            traefik in any::<bool>(),
        ) {
            let (ours, theirs) = if traefik {
                (["x-forwarded-method", "x-forwarded-uri"], ["x-original-method", "x-original-uri"])
            } else {
                (["x-original-method", "x-original-uri"], ["x-forwarded-method", "x-forwarded-uri"])
            };
            let parts = asked("/v1/forward-auth/from/the/path", &[
                (ours[0], b"GET"),
                (ours[1], &mine),
                (theirs[0], b"POST"),
                (theirs[1], &other),
            ]);
            let convention = if traefik { ProxyConvention::Traefik } else { ProxyConvention::Nginx };
            match original(convention, &parts) {
                Ok((method, uri)) => {
                    prop_assert_eq!(method.as_ref(), "GET");
                    let (path, query) = split(&mine).expect("an accepted target is text");
                    prop_assert_eq!(uri.path(), path);
                    prop_assert_eq!(uri.query(), query);
                }
                Err(why) => prop_assert!(original_target(&mine).is_err(), "{}", why),
            }
        }
    }
}
