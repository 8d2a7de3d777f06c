//! What verify, forward-auth and the gateway share: what a route needs, and the headers a
//! verification outcome sets (rate-limit figures, the caller's identity).

use crate::state::AppState;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use keywarden_core::routes::{PathError, RouteDecision};
use keywarden_core::scopes::ScopeSet;
use keywarden_store::verifier::VerifyOutcome;
use std::borrow::Cow;

/// What a route requires, owned so it can be borrowed by a `VerifyRequest`.
#[derive(Debug)]
pub enum Needs {
    /// No key needed at all.
    Public,
    /// A valid key.
    Key,
    /// A valid key with all of these scopes.
    Scopes(ScopeSet),
    /// Nothing can pass (but a bad key still gets its own code).
    Impossible,
}

/// Resolves the route rules for a method and a request path (without its query string):
/// what the request needs, and the canonical path that was decided, which is the one to
/// forward. A path with no canonical form is an error, to be refused with 400
/// (`docs/routes.md`).
pub fn route_needs<'a>(
    state: &AppState,
    method: &str,
    path: &'a str,
) -> Result<(Needs, Cow<'a, str>), PathError> {
    let routed = state.settings.routes.route(method, path)?;
    let needs = match routed.decision {
        RouteDecision::Public => Needs::Public,
        RouteDecision::Authenticated => Needs::Key,
        RouteDecision::Deny => Needs::Impossible,
        RouteDecision::Require { set, .. } => Needs::Scopes(set),
        RouteDecision::Unsatisfiable { .. } => Needs::Impossible,
    };
    Ok((needs, routed.path))
}

pub use keywarden_store::reply::rate_limit_headers;

/// `X-Keywarden-Key-Id` (names checked at compile time, not per request).
const KEY_ID: HeaderName = HeaderName::from_static("x-keywarden-key-id");
/// `X-Keywarden-Account-Id`.
const ACCOUNT_ID: HeaderName = HeaderName::from_static("x-keywarden-account-id");
/// `X-Keywarden-Mode`.
const MODE: HeaderName = HeaderName::from_static("x-keywarden-mode");
/// `X-Keywarden-Scopes`.
const SCOPES: HeaderName = HeaderName::from_static("x-keywarden-scopes");

/// The identity headers of an allowed request.
pub fn identity_headers(state: &AppState, headers: &mut HeaderMap, out: &VerifyOutcome) {
    if let Some(k) = &out.key {
        headers.insert(MODE, HeaderValue::from_static(k.mode.as_str()));
    }
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    if let Some(k) = &out.key {
        set(KEY_ID, k.id());
        set(ACCOUNT_ID, k.account_id());
        let mut names = String::with_capacity(64);
        for name in state.settings.catalog.iter_names(&k.scopes) {
            if !names.is_empty() {
                names.push(' ');
            }
            names.push_str(name);
        }
        set(SCOPES, &names);
    } else if out.global {
        set(KEY_ID, "global");
        set(SCOPES, "*");
    }
}
