//! `ANY /v1/forward-auth`: nginx `auth_request`, Traefik ForwardAuth and Envoy ext_authz
//! ask about each request. The client's own headers carry the credential; the original
//! method and path come from `X-Original-Method`/`X-Original-URI` (nginx, Envoy) or
//! `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik), or follow this endpoint's own path
//! (`/v1/forward-auth/<original path>`, Envoy's `path_prefix`). Allowed → 200 with identity
//! headers; denied → the decision's status and error body. `X-Keywarden-Status` always
//! carries the real status and `X-Keywarden-Code` the wire code, because nginx's
//! auth_request passes on only 401 and 403 and never a body; with `X-Keywarden-Render` the
//! endpoint renders such an earlier denial instead of deciding again (see [`render`]).

use crate::auth::require_forward_auth_token;
use crate::errors::ApiError;
use crate::extract::{client_ip, peer_ip, presented_key};
use crate::middleware::DecisionCode;
use crate::routes::decide::{identity_headers, rate_limit_headers, route_needs, Needs};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use keywarden_core::codes::Code;
use keywarden_store::verifier::VerifyRequest;

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

/// The original path and query when the proxy appended them to this endpoint's own path
/// (Envoy ext_authz with `path_prefix`); `/` when it did not.
fn original_from_path(uri: &Uri) -> String {
    let full = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| uri.path());
    match full.strip_prefix(FORWARD_AUTH_PATH) {
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        Some(rest) => format!("/{rest}"),
        None => full.to_string(),
    }
}

/// Decides about the original request described by the headers.
#[utoipa::path(
    method(get, post, put, delete, patch, head, options, trace), path = "/v1/forward-auth", description = "The client's own headers carry its credential; the original method and path come from X-Original-Method/X-Original-URI (nginx, Envoy) or X-Forwarded-Method/X-Forwarded-Uri (Traefik), or follow this endpoint's path (`/v1/forward-auth/<original path>`). A denial answers with the decision's status (a profile may change it) and the error body.",
    responses(
        (status = 200, description = "Allowed (or a route that needs no key); the identity is in the X-Keywarden-* headers", headers(("X-Keywarden-Status" = String, description = "The decision's real status (nginx passes only 401 and 403 on)"), ("X-Keywarden-Key-Id" = String, description = "The key's id (`global` for the global key)"), ("X-Keywarden-Account-Id" = String, description = "The key's account"), ("X-Keywarden-Mode" = String, description = "`live` or `test`"), ("X-Keywarden-Scopes" = String, description = "The key's effective scopes, space-separated"))),
        (status = 401, description = "No valid key (`missing_api_key`, `invalid_api_key`, …), or a configured verify token missing from X-Keywarden-Verify-Token (`root_key_required`)", headers(("X-Keywarden-Status" = String, description = "The decision's real status"), ("WWW-Authenticate" = String, description = "`Bearer realm=\"keywarden\"`")), content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemDetails = "application/problem+json"))),
        (status = 403, description = "The key may not make this request (`insufficient_scope`, `account_inactive`, …)", headers(("X-Keywarden-Status" = String, description = "The decision's real status")), content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemDetails = "application/problem+json"))),
        (status = 429, description = "Limited (`rate_limit_exceeded`, `quota_exceeded`, …)", headers(("X-Keywarden-Status" = String, description = "The decision's real status"), ("Retry-After" = String, description = "Seconds to wait"), ("RateLimit-Policy" = String, description = "The rate limit (IETF httpapi draft 11)"), ("RateLimit" = String, description = "What is left of it (IETF httpapi draft 11)")), content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemDetails = "application/problem+json"))),
    ),
    security((), ("forward_auth_token" = [])),
    tag = "verify"
)]
pub async fn forward_auth(State(state): State<AppState>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    if let Err(e) = require_forward_auth_token(&state, &parts.headers) {
        let presented = state.settings.renderer.overrides.present(e.code);
        let mut res = e.into_response();
        stamp(&mut res, presented.status, presented.name);
        return res;
    }
    let h = &parts.headers;
    if let Some(code) = header_of(h, &[RENDER]) {
        return render(&state, h, code);
    }
    let method =
        header_of(h, &[X_ORIGINAL_METHOD, X_FORWARDED_METHOD]).unwrap_or(parts.method.as_str());
    let method: std::borrow::Cow<'_, str> = if method.bytes().any(|b| b.is_ascii_lowercase()) {
        method.to_ascii_uppercase().into()
    } else {
        method.into()
    };
    let uri: Uri = match header_of(h, &[X_ORIGINAL_URI, X_FORWARDED_URI]) {
        Some(original) => original.parse(),
        None => original_from_path(&parts.uri).parse(),
    }
    .unwrap_or_else(|_| Uri::from_static("/"));
    // Decided on the canonical path; one that has none is refused, never guessed at.
    let (needs, path) = match route_needs(&state, &method, uri.path()) {
        Ok(routed) => routed,
        Err(e) => {
            let presented = state
                .settings
                .renderer
                .overrides
                .present(Code::InvalidRequest);
            let mut res = ApiError::invalid(e.to_string()).into_response();
            stamp(&mut res, presented.status, presented.name);
            return res;
        }
    };
    if matches!(needs, Needs::Public) {
        let mut res = ().into_response();
        stamp(&mut res, 200, "valid");
        res.extensions_mut().insert(DecisionCode("valid"));
        return res;
    }
    let s = &state.settings;
    // The credential may sit in the original query string when a `query:` source is on.
    let token = presented_key(s, h, &uri);
    let app_secret = s
        .app_secret_header
        .as_deref()
        .and_then(|n| h.get(n))
        .and_then(|v| v.to_str().ok());
    let ip = client_ip(s, h, peer_ip(&parts.extensions));
    let scopes = match &needs {
        Needs::Scopes(set) => Some(set),
        _ => None,
    };
    let out = state
        .verifier
        .verify(&VerifyRequest {
            token: token.as_deref(),
            app_secret,
            client_ip: ip,
            scopes_all: scopes,
            impossible: matches!(needs, Needs::Impossible),
            method: &method,
            path: &path,
            ..VerifyRequest::default()
        })
        .await;

    let presented = s.renderer.overrides.present(out.code);
    let mut res = if out.is_valid() {
        let mut res = ().into_response();
        identity_headers(&state, res.headers_mut(), &out);
        res.extensions_mut().insert(DecisionCode("valid"));
        res
    } else {
        ApiError::new(out.code)
            .retry_after(out.retry_after)
            .into_response()
    };
    rate_limit_headers(res.headers_mut(), &out);
    stamp(&mut res, presented.status, presented.name);
    res
}

/// Adds the decision's real status and wire code: `X-Keywarden-Status` and
/// `X-Keywarden-Code`.
fn stamp(res: &mut Response, status: u16, code: &str) {
    let h = res.headers_mut();
    h.insert(STATUS, HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert(CODE, v);
    }
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
