//! Who is calling: root keys for the admin API, the verify token, and customers' own keys
//! for the self-service API. Every comparison with a configured secret is constant-time.

use crate::errors::ApiError;
use crate::extract::{client_ip, peer_ip, presented_key};
use crate::state::AppState;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use keywarden_core::codes::Code;
use keywarden_core::decision::CompiledKey;
use keywarden_core::model::{Account, KeyRecord, KeyType, Role};
use keywarden_core::{ct_eq, Secret};
use keywarden_store::verifier::{VerifyOutcome, VerifyRequest};
use std::net::IpAddr;
use std::sync::Arc;

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
}

fn matches_any(token: &str, secrets: &[Secret]) -> bool {
    // Every configured secret is compared, so timing does not reveal which one matched.
    secrets.iter().fold(false, |hit, s| {
        ct_eq(s.expose().as_bytes(), token.as_bytes()) | hit
    })
}

/// Whether `token` is one of the configured root keys (the console's sign-in).
pub fn root_key_matches(state: &AppState, token: &str) -> bool {
    !token.is_empty() && matches_any(token, &state.settings.root_keys)
}

/// Admits the operator: a configured root key as bearer.
pub fn require_root(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let roots = &state.settings.root_keys;
    if roots.is_empty() {
        return Err(ApiError::new(Code::AdminDisabled));
    }
    match bearer(headers) {
        Some(t) if matches_any(t, roots) => Ok(()),
        _ => Err(ApiError::new(Code::RootKeyRequired)),
    }
}

/// Admits a caller of `POST /v1/verify`: a root key or the verify token as bearer.
pub fn require_verifier(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let (Some(t), Some(vt)) = (bearer(headers), &state.settings.verify_token) {
        if ct_eq(t.as_bytes(), vt.expose().as_bytes()) {
            return Ok(());
        }
    }
    require_root(state, headers)
}

/// Forward-auth is open unless a verify token is configured; then it must come in
/// `X-Keywarden-Verify-Token`.
pub fn require_forward_auth_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(vt) = &state.settings.verify_token else {
        return Ok(());
    };
    let presented = headers
        .get("x-keywarden-verify-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct_eq(presented.as_bytes(), vt.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::with(
            Code::RootKeyRequired,
            "forward-auth needs the verify token in X-Keywarden-Verify-Token",
        ))
    }
}

/// What a self-service endpoint needs from its caller's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleNeed {
    /// Any role.
    Any,
    /// `owner`, `admin` or `developer` (key management).
    KeyManager,
    /// `owner` only.
    Owner,
}

/// A customer authenticated by one of its own secret keys.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The calling key.
    pub key: Arc<CompiledKey>,
    /// Its account.
    pub account: Arc<Account>,
    /// The full verification outcome (rate-limit figures for headers).
    pub outcome: VerifyOutcome,
    /// The client IP (`None` when unknown).
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// The audit actor for this caller.
    pub fn actor(&self) -> crate::manage::Actor {
        crate::manage::Actor::key(self.key.id(), self.ip.map(|i| i.to_string()))
    }

    /// The calling key's whole stored record, read fresh: the verified key carries only
    /// what the decision and a verify answer need. A key erased since it was verified is
    /// refused like an unknown one.
    pub async fn record(&self, state: &AppState) -> Result<KeyRecord, ApiError> {
        state
            .store
            .get_key(self.key.id())
            .await?
            .ok_or_else(|| ApiError::new(Code::InvalidApiKey))
    }
}

/// Authenticates a self-service request: the key must be valid, hold `scope` (when
/// given), be a secret key, and have the role asked for.
pub async fn self_service(
    state: &AppState,
    parts: &Parts,
    scope: Option<&str>,
    role: RoleNeed,
) -> Result<Caller, ApiError> {
    let token = presented_key(&state.settings, &parts.headers, &parts.uri);
    let app_secret = state
        .settings
        .app_secret_header
        .as_deref()
        .and_then(|h| parts.headers.get(h))
        .and_then(|v| v.to_str().ok());
    let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions));
    // The path as the client sent it: the router strips the base path before the handler.
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(parts.uri.path(), |o| o.0.path());
    let required = match scope {
        Some(s) => Some(
            state
                .settings
                .catalog
                .required(&[s])
                .map_err(|_| ApiError::new(Code::InternalError))?,
        ),
        None => None,
    };
    let outcome = state
        .verifier
        .verify(&VerifyRequest {
            token: token.as_deref(),
            app_secret,
            client_ip: ip,
            scopes_all: required.as_ref(),
            method: parts.method.as_str(),
            path,
            ..VerifyRequest::default()
        })
        .await;
    if outcome.global {
        return Err(ApiError::with(
            Code::InsufficientScope,
            "global keys belong to no account and cannot use the self-service API",
        ));
    }
    if !outcome.is_valid() {
        let mut headers = HeaderMap::new();
        crate::routes::decide::rate_limit_headers(&mut headers, &outcome);
        return Err(ApiError::new(outcome.code)
            .retry_after(outcome.retry_after)
            .with_headers(headers));
    }
    let (Some(key), Some(account)) = (outcome.key.clone(), outcome.account.clone()) else {
        return Err(ApiError::new(Code::InvalidApiKey));
    };
    if key.key_type == KeyType::Publishable {
        return Err(ApiError::with(
            Code::InsufficientScope,
            "publishable keys cannot use the self-service API",
        ));
    }
    let allowed = match role {
        RoleNeed::Any => true,
        RoleNeed::KeyManager => key.role.can_manage_keys(),
        RoleNeed::Owner => key.role == Role::Owner,
    };
    if !allowed {
        return Err(ApiError::with(
            Code::InsufficientRole,
            format!(
                "this needs a key with role {}",
                match role {
                    RoleNeed::Owner => "owner",
                    _ => "owner, admin or developer",
                }
            ),
        ));
    }
    Ok(Caller {
        key,
        account,
        outcome,
        ip: ip.and_then(|c| c.ip()),
    })
}
