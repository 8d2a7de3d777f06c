//! Delegated access over HTTP: applications and grants in the admin API (root key), grants
//! in the self-service API (the account's own owner key), and revealing recoverable test
//! secrets (root key).

use crate::auth::{require_root, self_service, Caller, RoleNeed};
use crate::errors::ApiError;
use crate::extract::{client_ip, peer_ip, JsonBody};
use crate::manage::{Actor, Manager};
use crate::manage_apps::{AppManager, AppPatch, IssuedGrant, IssuedKey, NewApp};
use crate::routes::decide::rate_limit_headers;
use crate::routes::self_service::{page_limit, ListQuery};
use crate::state::AppState;
use crate::views;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keywarden_core::codes::Code;
use keywarden_core::model::{Account, AppEnvironment, Mode};
use keywarden_store::Page;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

/// The admin routes of this module (the caller adds the root-key guard).
pub fn admin_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/applications",
            post(create_application).get(list_applications),
        )
        .route(
            "/v1/admin/applications/{id}",
            get(get_application).patch(patch_application),
        )
        .route(
            "/v1/admin/applications/{id}/secrets/{environment}/rotate",
            post(rotate_application_secret),
        )
        .route(
            "/v1/admin/accounts/{id}/grants",
            post(admin_create_grant).get(admin_list_grants),
        )
        .route(
            "/v1/admin/grants/{id}",
            get(admin_get_grant).delete(admin_delete_grant),
        )
        .route("/v1/admin/keys/{id}/reveal", post(reveal_key))
}

/// The self-service routes of this module, relative to the base path.
pub fn self_service_routes() -> Router<AppState> {
    Router::new()
        .route("/grants", post(create_grant).get(list_grants))
        .route("/grants/{id}", get(get_grant).delete(delete_grant))
}

/// Checks the root key and returns the audit actor.
fn root(state: &AppState, parts: &Parts) -> Result<Actor, ApiError> {
    require_root(state, &parts.headers)?;
    let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions));
    Ok(Actor::root(ip.and_then(|c| c.ip()).map(|i| i.to_string())))
}

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

/// Distinguishes an absent field from an explicit `null` in PATCH bodies.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A grant with the key made under it (its secret shown once, as `api_key`).
fn issued_grant_body(g: &IssuedGrant) -> Value {
    let mut v = views::grant(&g.grant);
    let mut key = views::key(&g.key);
    key["api_key"] = json!(g.api_key.expose());
    v["key"] = key;
    v
}

/// An account, with the keys of its default set just made (each `api_key` shown once)
/// under `keys` when there are any.
pub fn account_with_keys(a: &Account, keys: &[IssuedKey]) -> Value {
    let mut v = views::account(a);
    if !keys.is_empty() {
        v["keys"] = keys
            .iter()
            .map(|(rec, token)| {
                let mut k = views::key(rec);
                k["api_key"] = json!(token.expose());
                k
            })
            .collect();
    }
    v
}

// ---- applications (admin) ----

/// Body of `POST /v1/admin/applications`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApplication {
    /// 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Short description of the integration, ≤ 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// Public page about the integration (`http://` or `https://`).
    pub url: Option<String>,
    /// The scopes the application requests (catalog names or aliases); grants are subsets.
    pub scopes: Vec<String>,
}

/// `POST /v1/admin/applications`: the production and sandbox secrets are shown once.
#[utoipa::path(
    post, path = "/v1/admin/applications", request_body = CreateApplication,
    responses(
        (status = 201, description = "The application with `secrets: {production, sandbox}`, shown once", body = crate::openapi::CreatedApplication),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn create_application(
    State(state): State<AppState>,
    parts: Parts,
    JsonBody(b): JsonBody<CreateApplication>,
) -> Result<Response, ApiError> {
    let actor = root(&state, &parts)?;
    let new = NewApp {
        name: b.name,
        description: b.description.unwrap_or_default(),
        url: b.url,
        scopes: b.scopes,
    };
    let (app, secrets) = AppManager::new(&state).create_app(&actor, new).await?;
    let mut v = views::application(&app);
    v["secrets"] = json!({
        "production": secrets.production.expose(),
        "sandbox": secrets.sandbox.expose(),
    });
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /v1/admin/applications`.
#[utoipa::path(
    get, path = "/v1/admin/applications", params(ListQuery),
    responses(
        (status = 200, description = "Applications by id, never a secret", body = Vec<crate::openapi::Application>),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn list_applications(
    State(state): State<AppState>,
    parts: Parts,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    root(&state, &parts)?;
    let q = query(q)?;
    let apps = AppManager::new(&state)
        .list_apps(&Page {
            after_id: q.starting_after,
            limit: page_limit(q.limit)?,
        })
        .await?;
    Ok(Json(Value::Array(
        apps.iter().map(views::application).collect(),
    )))
}

/// `GET /v1/admin/applications/{id}`.
#[utoipa::path(
    get, path = "/v1/admin/applications/{id}", params(("id" = String, Path, description = "Application id")),
    responses(
        (status = 200, description = "The application, never a secret", body = crate::openapi::Application),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn get_application(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    root(&state, &parts)?;
    let app = AppManager::new(&state).app(&id).await?;
    Ok(Json(views::application(&app)))
}

/// Body of `PATCH /v1/admin/applications/{id}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchApplication {
    /// New name, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// New description, ≤ 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// New URL, or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub url: Option<Option<String>>,
    /// New requested scopes; existing grants keep what they were given.
    pub scopes: Option<Vec<String>>,
}

/// `PATCH /v1/admin/applications/{id}`.
#[utoipa::path(
    patch, path = "/v1/admin/applications/{id}", request_body = PatchApplication, params(("id" = String, Path, description = "Application id")),
    responses(
        (status = 200, description = "The application", body = crate::openapi::Application),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn patch_application(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PatchApplication>,
) -> Result<Json<Value>, ApiError> {
    let actor = root(&state, &parts)?;
    let patch = AppPatch {
        name: b.name,
        description: b.description,
        url: b.url,
        scopes: b.scopes,
    };
    let app = AppManager::new(&state)
        .update_app(&actor, &id, patch)
        .await?;
    Ok(Json(views::application(&app)))
}

/// `POST /v1/admin/applications/{id}/secrets/{production|sandbox}/rotate`: the new secret
/// is shown once; the old one stops working at once.
#[utoipa::path(
    post, path = "/v1/admin/applications/{id}/secrets/{environment}/rotate", params(("id" = String, Path, description = "Application id"), ("environment" = crate::openapi::AppEnvironment, Path, description = "`production` or `sandbox`")),
    responses(
        (status = 200, description = "The application with `environment` and its new `secret`, shown once", body = crate::openapi::RotatedApplicationSecret),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn rotate_application_secret(
    State(state): State<AppState>,
    parts: Parts,
    Path((id, environment)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let actor = root(&state, &parts)?;
    let env: AppEnvironment = environment.parse().map_err(|_| {
        ApiError::with(
            Code::NotFound,
            "an application's secrets are `production` and `sandbox`",
        )
    })?;
    let (app, secret) = AppManager::new(&state)
        .rotate_app_secret(&actor, &id, env)
        .await?;
    let mut v = views::application(&app);
    v["environment"] = json!(env);
    v["secret"] = json!(secret.expose());
    Ok(Json(v))
}

// ---- grants (admin) ----

/// Body of `POST /v1/admin/accounts/{id}/grants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateGrant {
    /// The application.
    pub app_id: String,
    /// The granted scopes, within what the application requested (default: all of them).
    pub scopes: Option<Vec<String>>,
    /// The mode of the key made under the grant: `live` (default) or `test`.
    #[schema(value_type = Option<crate::openapi::Mode>)]
    pub mode: Option<Mode>,
}

/// `POST /v1/admin/accounts/{id}/grants`: the grant and the key made under it (its
/// `api_key` shown once).
#[utoipa::path(
    post, path = "/v1/admin/accounts/{id}/grants", request_body = AdminCreateGrant, params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 201, description = "The grant with `key` (and its `api_key`, shown once)", body = crate::openapi::IssuedGrant),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn admin_create_grant(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<AdminCreateGrant>,
) -> Result<Response, ApiError> {
    let actor = root(&state, &parts)?;
    let account = Manager::new(&state).account(&id).await?;
    let issued = AppManager::new(&state)
        .create_grant(
            &actor,
            &account,
            &b.app_id,
            b.scopes,
            b.mode.unwrap_or(Mode::Live),
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(issued_grant_body(&issued))).into_response())
}

/// `GET /v1/admin/accounts/{id}/grants`.
#[utoipa::path(
    get, path = "/v1/admin/accounts/{id}/grants", params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account's grants", body = Vec<crate::openapi::Grant>),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn admin_list_grants(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    root(&state, &parts)?;
    Manager::new(&state).account(&id).await?;
    let grants = AppManager::new(&state).list_grants(&id).await?;
    Ok(Json(Value::Array(
        grants.iter().map(views::grant).collect(),
    )))
}

/// `GET /v1/admin/grants/{id}`.
#[utoipa::path(
    get, path = "/v1/admin/grants/{id}", params(("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "The grant", body = crate::openapi::Grant),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn admin_get_grant(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    root(&state, &parts)?;
    let g = AppManager::new(&state).grant(None, &id).await?;
    Ok(Json(views::grant(&g)))
}

/// `DELETE /v1/admin/grants/{id}`: every key made under the grant is revoked at once.
#[utoipa::path(
    delete, path = "/v1/admin/grants/{id}", params(("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "The deleted grant with `revoked_keys`", body = crate::openapi::DeletedGrant),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn admin_delete_grant(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let actor = root(&state, &parts)?;
    let m = AppManager::new(&state);
    let g = m.grant(None, &id).await?;
    let keys = m.delete_grant(&actor, &g).await?;
    let mut v = views::grant(&g);
    v["deleted"] = json!(true);
    v["revoked_keys"] = json!(keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>());
    Ok(Json(v))
}

// ---- recoverable test secrets (admin) ----

/// `POST /v1/admin/keys/{id}/reveal`: a test key's secret again, when
/// `keys.recoverable_test_secrets` is on. Live secrets are never recoverable (409).
#[utoipa::path(
    post, path = "/v1/admin/keys/{id}/reveal", params(("id" = String, Path, description = "Key id or key_hash")), description = "Only test keys, and only when `keys.recoverable_test_secrets` is on; a live key, a revoked key, or recoverable secrets switched off answer `conflict`.",
    responses(
        (status = 200, description = "Key metadata with `api_key`", body = crate::openapi::ApiKeyWithSecret),
        (status = 401, response = crate::openapi::RootKeyRequired),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("root_key" = [])),
    tag = "admin"
)]
pub async fn reveal_key(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let actor = root(&state, &parts)?;
    let k = Manager::new(&state).key_of(None, None, &id).await?;
    let secret = AppManager::new(&state).reveal(&actor, &k).await?;
    let mut v = views::key(&k);
    v["api_key"] = json!(secret.expose());
    Ok(Json(v))
}

// ---- grants (self-service) ----

/// Wraps a handler's result with the caller's rate-limit headers.
fn with_limits(caller: &Caller, res: impl IntoResponse) -> Response {
    let mut res = res.into_response();
    rate_limit_headers(res.headers_mut(), &caller.outcome);
    res
}

/// An owner key of the account itself, not one an application holds: an application never
/// manages grants, its own or another's.
async fn grant_manager(state: &AppState, parts: &Parts) -> Result<Caller, ApiError> {
    let c = self_service(state, parts, None, RoleNeed::Owner).await?;
    if c.key.app_id().is_some() {
        return Err(ApiError::with(
            Code::InsufficientRole,
            "keys of an application cannot manage grants",
        ));
    }
    Ok(c)
}

/// Body of `POST /v1/grants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrantBody {
    /// The application to authorise.
    pub app_id: String,
    /// The granted scopes, within what the application requested and what the calling key
    /// holds (default: everything the application requested).
    pub scopes: Option<Vec<String>>,
}

/// `POST /v1/grants` (owner): authorises an application; a key of the caller's mode is made
/// under the grant and its `api_key` shown once.
#[utoipa::path(
    post, path = "/v1/grants", request_body = CreateGrantBody, description = "Needs a key with role `owner`. Keys of an application cannot manage grants. The grant stays within what the application requested and what the calling key holds.",
    responses(
        (status = 201, description = "The grant with `key` (and its `api_key`, shown once)", body = crate::openapi::IssuedGrant),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 429, response = crate::openapi::TooManyRequests),
    ),
    security(("api_key" = []), ("api_key_header" = [])),
    tag = "self-service"
)]
pub async fn create_grant(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<JsonBody<CreateGrantBody>, ApiError>,
) -> Result<Response, ApiError> {
    // The caller is checked before its input, so a stranger learns nothing about it.
    let c = grant_manager(&state, &parts).await?;
    let JsonBody(body) = body?;
    let issued = AppManager::new(&state)
        .create_grant(
            &c.actor(),
            &c.account,
            &body.app_id,
            body.scopes,
            c.key.mode,
            Some(&c.key.scopes),
        )
        .await?;
    Ok(with_limits(
        &c,
        (StatusCode::CREATED, Json(issued_grant_body(&issued))),
    ))
}

/// `GET /v1/grants`: the account's grants.
#[utoipa::path(
    get, path = "/v1/grants",
    responses(
        (status = 200, description = "The account's grants", body = Vec<crate::openapi::Grant>),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 429, response = crate::openapi::TooManyRequests),
    ),
    security(("api_key" = ["account:read"]), ("api_key_header" = ["account:read"])),
    tag = "self-service"
)]
pub async fn list_grants(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let c = self_service(&state, &parts, Some("account:read"), RoleNeed::Any).await?;
    let grants = AppManager::new(&state).list_grants(&c.account.id).await?;
    let items: Vec<Value> = grants.iter().map(views::grant).collect();
    Ok(with_limits(&c, Json(Value::Array(items))))
}

/// `GET /v1/grants/{id}`.
#[utoipa::path(
    get, path = "/v1/grants/{id}", params(("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "The grant", body = crate::openapi::Grant),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 429, response = crate::openapi::TooManyRequests),
    ),
    security(("api_key" = ["account:read"]), ("api_key_header" = ["account:read"])),
    tag = "self-service"
)]
pub async fn get_grant(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = self_service(&state, &parts, Some("account:read"), RoleNeed::Any).await?;
    let g = AppManager::new(&state)
        .grant(Some(&c.account.id), &id)
        .await?;
    Ok(with_limits(&c, Json(views::grant(&g))))
}

/// `DELETE /v1/grants/{id}` (owner): the keys made under the grant are revoked at once.
#[utoipa::path(
    delete, path = "/v1/grants/{id}", params(("id" = String, Path, description = "Grant id")), description = "Needs a key with role `owner`. Keys of an application cannot manage grants.",
    responses(
        (status = 204, description = "Deleted; the keys made under it are revoked at once"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 429, response = crate::openapi::TooManyRequests),
    ),
    security(("api_key" = []), ("api_key_header" = [])),
    tag = "self-service"
)]
pub async fn delete_grant(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = grant_manager(&state, &parts).await?;
    let m = AppManager::new(&state);
    let g = m.grant(Some(&c.account.id), &id).await?;
    m.delete_grant(&c.actor(), &g).await?;
    Ok(with_limits(&c, StatusCode::NO_CONTENT))
}
