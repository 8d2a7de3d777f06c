//! Shared by verify and forward-auth: turning a request's facts into a verification and
//! its outcome into headers.

use crate::state::AppState;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use keywarden_core::routes::RouteDecision;
use keywarden_core::scopes::ScopeSet;
use keywarden_store::verifier::VerifyOutcome;

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

/// Resolves the route rules for a method and path.
pub fn route_needs(state: &AppState, method: &str, path: &str) -> Needs {
    match state.settings.routes.resolve(method, path) {
        RouteDecision::Public => Needs::Public,
        RouteDecision::Authenticated => Needs::Key,
        RouteDecision::Deny => Needs::Impossible,
        RouteDecision::Require { set, .. } => Needs::Scopes(set),
        RouteDecision::Unsatisfiable { .. } => Needs::Impossible,
    }
}

/// Adds the IETF rate-limit headers (draft 11) when a rate limit applied.
pub fn rate_limit_headers(headers: &mut HeaderMap, out: &VerifyOutcome) {
    if let (Some(limit), Some(rate)) = (&out.rate_limit, &out.rate) {
        let pairs = [
            ("ratelimit-policy", limit.policy_header()),
            ("ratelimit", rate.header()),
        ];
        for (name, value) in pairs {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

/// The identity headers of an allowed request.
pub fn identity_headers(state: &AppState, headers: &mut HeaderMap, out: &VerifyOutcome) {
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    if let Some(k) = &out.key {
        set("x-keywarden-key-id", k.id());
        set("x-keywarden-account-id", k.account_id());
        set("x-keywarden-mode", k.mode.as_str());
        let names = state.settings.catalog.names(&k.scopes).join(" ");
        set("x-keywarden-scopes", &names);
    } else if out.global {
        set("x-keywarden-key-id", "global");
        set("x-keywarden-scopes", "*");
    }
}
