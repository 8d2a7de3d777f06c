//! Who is calling: root keys for the admin API, the verify token, and customers' own keys
//! for the self-service API. Every comparison with a configured secret is constant-time.

use crate::errors::ApiError;
use crate::extract::{client_ip, credentials, peer_ip};
use crate::manage::Actor;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponseParts, ResponseParts};
use keywarden_core::codes::Code;
use keywarden_core::decision::CompiledKey;
use keywarden_core::model::{Account, KeyRecord};
use keywarden_core::scopes::{ScopeCatalog, ScopeSet};
use keywarden_core::{ct_eq, Secret};
use keywarden_store::verifier::{VerifyOutcome, VerifyRequest};
use std::marker::PhantomData;
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

/// The configured root key `token` is, if any (the console's sign-in). Every root key is
/// compared, so timing does not reveal which one matched.
pub fn matching_root_key<'s>(state: &'s AppState, token: &str) -> Option<&'s Secret> {
    if token.is_empty() {
        return None;
    }
    state.settings.root_keys.iter().fold(None, |hit, s| {
        match ct_eq(s.expose().as_bytes(), token.as_bytes()) {
            true => Some(s),
            false => hit,
        }
    })
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

pub use keywarden_core::decision::RoleNeed;

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

/// The rate-limit headers of a self-service caller's answer, as a response part:
/// `Ok((caller.limits(), Json(body)))`.
#[derive(Debug)]
pub struct RateLimitHeaders(HeaderMap);

impl IntoResponseParts for RateLimitHeaders {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.headers_mut().extend(self.0);
        Ok(res)
    }
}

impl Caller {
    /// The caller's rate-limit headers, for its answer.
    pub fn limits(&self) -> RateLimitHeaders {
        let mut headers = HeaderMap::new();
        crate::routes::needs::rate_limit_headers(&mut headers, &self.outcome);
        RateLimitHeaders(headers)
    }
}

/// What a self-service route needs from its caller's key, declared once per route as a
/// marker type: `SelfServiceCaller<KeysWrite>`.
pub trait Need: Send + Sync + 'static {
    /// The scope the calling key must hold, if any (compiled at startup, [`ScopeNeeds`]).
    const SCOPE: Option<&'static str>;
    /// The role it must have.
    const ROLE: RoleNeed;
    /// A further condition on the caller. It runs after the decision, when the call has
    /// already spent its rate budget: only for what the decision cannot know (a role or
    /// key type belongs in [`RoleNeed`]).
    fn check(_caller: &Caller) -> Result<(), ApiError> {
        Ok(())
    }
}

macro_rules! needs {
    ($($(#[$meta:meta])* $name:ident = ($scope:expr, $role:expr);)*) => {
        $(
            $(#[$meta])*
            #[derive(Debug)]
            pub struct $name;
            impl Need for $name {
                const SCOPE: Option<&'static str> = $scope;
                const ROLE: RoleNeed = $role;
            }
        )*
        /// Every scope a self-service route needs.
        const NEEDED_SCOPES: &[Option<&str>] = &[$($scope,)*];
    };
}

needs! {
    /// Reads the account, its events and grants: `account:read`, any role.
    AccountRead = (Some("account:read"), RoleNeed::Any);
    /// Changes the account: `account:write`, role `owner`.
    AccountWrite = (Some("account:write"), RoleNeed::Owner);
    /// Erases the account: role `owner`.
    AccountOwner = (None, RoleNeed::Owner);
    /// Reads usage: `usage:read`, any role.
    UsageRead = (Some("usage:read"), RoleNeed::Any);
    /// Reads keys: `api_keys:read`, a key manager (a `member` views no keys).
    KeysRead = (Some("api_keys:read"), RoleNeed::KeyManager);
    /// Makes and rotates keys: `api_keys:write`, a key manager.
    KeysWrite = (Some("api_keys:write"), RoleNeed::KeyManager);
    /// Revokes keys: `api_keys:delete`, a key manager.
    KeysDelete = (Some("api_keys:delete"), RoleNeed::KeyManager);
    /// Manages grants: an owner key of the account itself, not one an application holds.
    GrantManager = (None, RoleNeed::AccountOwner);
    /// Reads the account's webhook endpoints and their logs: `webhooks:read`, any role.
    WebhooksRead = (Some("webhooks:read"), RoleNeed::Any);
    /// Registers and changes webhook endpoints: `webhooks:write`, a key manager.
    WebhooksWrite = (Some("webhooks:write"), RoleNeed::KeyManager);
    /// Deletes webhook endpoints: `webhooks:delete`, a key manager.
    WebhooksDelete = (Some("webhooks:delete"), RoleNeed::KeyManager);
}

/// The scopes of every [`Need`], compiled once against the configured catalog.
#[derive(Debug, Default)]
pub struct ScopeNeeds(Vec<(&'static str, ScopeSet)>);

impl ScopeNeeds {
    /// Compiles every needed scope the catalog knows.
    pub fn compile(catalog: &ScopeCatalog) -> Self {
        let mut out: Vec<(&'static str, ScopeSet)> = Vec::new();
        for s in NEEDED_SCOPES.iter().flatten() {
            if out.iter().any(|(n, _)| n == s) {
                continue;
            }
            if let Ok(set) = catalog.required(&[*s]) {
                out.push((s, set));
            }
        }
        ScopeNeeds(out)
    }

    /// The compiled set of one needed scope.
    pub fn get(&self, scope: &str) -> Option<&ScopeSet> {
        self.0.iter().find(|(n, _)| *n == scope).map(|(_, s)| s)
    }
}

/// A self-service caller that meets the route's [`Need`]: authenticated (and its rate
/// budget spent) before anything else of the request is read, so a stranger learns nothing
/// from its input.
#[derive(Debug)]
pub struct SelfServiceCaller<N: Need> {
    caller: Caller,
    /// The service.
    pub state: AppState,
    need: PhantomData<N>,
}

impl<N: Need> std::ops::Deref for SelfServiceCaller<N> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<N: Need> FromRequestParts<AppState> for SelfServiceCaller<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = self_service(state, parts, N::SCOPE, N::ROLE).await?;
        N::check(&caller)?;
        Ok(SelfServiceCaller {
            caller,
            state: state.clone(),
            need: PhantomData,
        })
    }
}

/// The operator, admitted by a root key; carries the audit actor.
#[derive(Clone, Debug)]
pub struct RootCaller {
    /// The audit actor (`root`, with the client IP).
    pub actor: Actor,
}

impl RootCaller {
    /// Checks the root key of a request.
    pub fn authenticate(state: &AppState, parts: &Parts) -> Result<Self, ApiError> {
        require_root(state, &parts.headers)?;
        let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions));
        Ok(RootCaller {
            actor: Actor::root(ip.and_then(|c| c.ip()).map(|i| i.to_string())),
        })
    }
}

impl FromRequestParts<AppState> for RootCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The admin router's guard has already admitted the caller before anything else
        // was read; a route outside it authenticates here.
        match parts.extensions.get::<RootCaller>() {
            Some(c) => Ok(c.clone()),
            None => RootCaller::authenticate(state, parts),
        }
    }
}

/// An admin call as its handler sees it: the service and the admitted operator. Every
/// admin handler takes this one extractor instead of `State` and [`RootCaller`] apart.
#[derive(Clone)]
pub struct Admin {
    /// The service.
    pub state: AppState,
    /// The audit actor (`root`, with the client IP).
    pub actor: Actor,
}

impl Admin {
    /// Key and account management as this operator.
    pub fn keys(&self) -> crate::manage::Manager {
        crate::manage::Manager::new(&self.state)
    }

    /// Applications, grants and accounts with their default keys, as this operator.
    pub fn apps(&self) -> crate::manage_apps::AppManager {
        crate::manage_apps::AppManager::new(&self.state)
    }

    /// Webhook endpoints, as this operator.
    pub fn webhooks(&self) -> crate::manage_webhooks::WebhookManager {
        crate::manage_webhooks::WebhookManager::new(&self.state)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let root = RootCaller::from_request_parts(parts, state).await?;
        Ok(Admin {
            state: state.clone(),
            actor: root.actor,
        })
    }
}

/// An admin call that changes one resource: the [`Admin`], the route's `{id}` and the
/// JSON body, read in that order (so a stranger learns nothing about the body's form).
pub struct AdminEdit<T> {
    /// The service and the operator.
    pub admin: Admin,
    /// The route's `{id}`.
    pub id: String,
    /// The request body.
    pub body: T,
}

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for AdminEdit<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let admin = Admin::from_request_parts(&mut parts, state).await?;
        let crate::extract::Id(id) =
            crate::extract::Id::from_request_parts(&mut parts, state).await?;
        let req = axum::extract::Request::from_parts(parts, body);
        let crate::extract::JsonBody(body) =
            crate::extract::JsonBody::from_request(req, state).await?;
        Ok(AdminEdit { admin, id, body })
    }
}

/// A call with a JSON body: its caller `C` (an [`Admin`] or a [`SelfServiceCaller`]),
/// admitted first so a stranger learns nothing about the body's form, then the body `T`.
pub struct WithBody<C, T>(pub C, pub T);

impl<C, T> axum::extract::FromRequest<AppState> for WithBody<C, T>
where
    C: FromRequestParts<AppState, Rejection = ApiError> + Send,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let caller = C::from_request_parts(&mut parts, state).await?;
        let req = axum::extract::Request::from_parts(parts, body);
        let crate::extract::JsonBody(body) =
            crate::extract::JsonBody::from_request(req, state).await?;
        Ok(WithBody(caller, body))
    }
}

/// A call with a query string: its caller `C`, admitted first, then the query `Q`.
pub struct WithQuery<C, Q>(pub C, pub Q);

impl<C, Q> FromRequestParts<AppState> for WithQuery<C, Q>
where
    C: FromRequestParts<AppState, Rejection = ApiError> + Send,
    Q: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = C::from_request_parts(parts, state).await?;
        let crate::extract::ApiQuery(query) =
            crate::extract::ApiQuery::from_request_parts(parts, state).await?;
        Ok(WithQuery(caller, query))
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
    let creds = credentials(&state.settings, &parts.headers, &parts.uri);
    let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions));
    // The path as the client sent it: the router strips the base path before the handler.
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(parts.uri.path(), |o| o.0.path());
    let required = match scope {
        Some(s) => Some(
            state
                .needs
                .get(s)
                .ok_or_else(|| ApiError::new(Code::InternalError))?,
        ),
        None => None,
    };
    // The decision refuses global keys, publishable keys and keys without the role before
    // any limit is spent (`docs/self-service.md`).
    let outcome = state
        .verifier
        .verify(&VerifyRequest {
            client_ip: ip,
            scopes_all: required,
            method: parts.method.as_str(),
            path,
            self_service: Some(role),
            ..creds.request()
        })
        .await;
    if !outcome.is_valid() {
        let mut headers = HeaderMap::new();
        crate::routes::needs::rate_limit_headers(&mut headers, &outcome);
        let error = match outcome.detail {
            Some(detail) => ApiError::with(outcome.code, detail),
            None => ApiError::new(outcome.code),
        };
        return Err(error.retry_after(outcome.retry_after).with_headers(headers));
    }
    let (Some(key), Some(account)) = (outcome.key.clone(), outcome.account.clone()) else {
        return Err(ApiError::new(Code::InvalidApiKey));
    };
    Ok(Caller {
        key,
        account,
        outcome,
        ip: ip.and_then(|c| c.ip()),
    })
}
