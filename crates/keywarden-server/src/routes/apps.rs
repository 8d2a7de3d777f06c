//! Delegated access over HTTP: applications and grants in the admin API (root key), grants
//! in the self-service API (the account's own owner key), and revealing recoverable test
//! secrets (root key).

use crate::auth::{
    AccountRead, Admin, AdminEdit, GrantManager, SelfServiceCaller, WithBody, WithQuery,
};
use crate::bodies::{
    AdminCreateGrant, CreateApplication, CreateGrantBody, ListQuery, PatchApplication,
};
use crate::errors::ApiError;
use crate::extract::Id;
use crate::manage_apps::{AppManager, AppPatch, NewApp};
use crate::routes::{AccountPath, ApplicationPath, GrantPath, KeyPath, Reply};
use crate::state::AppState;
use crate::views::{self, ApiKeyWithSecret, Application, Grant, IssuedGrant};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keywarden_core::codes::Code;
use keywarden_core::model::{AppEnvironment, Mode};

/// The admin routes of this module (the caller adds the root-key guard).
pub fn admin_routes() -> Router<AppState> {
    let apps = post(create_application).get(list_applications);
    let app = get(get_application).patch(patch_application);
    let rotate = post(rotate_application_secret);
    let grants = post(admin_create_grant).get(admin_list_grants);
    let grant = get(admin_get_grant).delete(admin_delete_grant);
    Router::new()
        .route("/v1/admin/applications", apps)
        .route("/v1/admin/applications/{id}", app)
        .route(
            "/v1/admin/applications/{id}/secrets/{environment}/rotate",
            rotate,
        )
        .route("/v1/admin/accounts/{id}/grants", grants)
        .route("/v1/admin/grants/{id}", grant)
        .route("/v1/admin/keys/{id}/reveal", post(reveal_key))
}

/// The self-service routes of this module, relative to the base path.
pub fn self_service_routes() -> Router<AppState> {
    Router::new()
        .route("/grants", post(create_grant).get(list_grants))
        .route("/grants/{id}", get(get_grant).delete(delete_grant))
}

// ---- applications (admin) ----

/// `POST /v1/admin/applications`: the production and sandbox secrets are shown once.
#[utoipa::path(post, path = "/v1/admin/applications", request_body = CreateApplication,
    responses((status = 201, description = "The application with `secrets: {production, sandbox}`, shown once", body = crate::views::CreatedApplication)))]
pub async fn create_application(
    WithBody(admin, b): WithBody<Admin, CreateApplication>,
) -> Result<Response, ApiError> {
    let new = NewApp {
        name: b.name,
        description: b.description.unwrap_or_default(),
        url: b.url,
        scopes: b.scopes,
    };
    let (app, secrets) = admin.apps().create_app(&admin.actor, new).await?;
    let body = views::CreatedApplication {
        application: (&app).into(),
        secrets: views::ApplicationSecrets {
            production: secrets.production.expose().to_string(),
            sandbox: secrets.sandbox.expose().to_string(),
        },
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/admin/applications`.
#[utoipa::path(get, path = "/v1/admin/applications", params(ListQuery),
    responses((status = 200, description = "Applications by id, never a secret", body = Vec<crate::views::Application>), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn list_applications(
    WithQuery(admin, q): WithQuery<Admin, ListQuery>,
) -> Reply<Vec<Application>> {
    let apps = admin.apps().list_apps(&q.page()?).await?;
    Ok(Json(views::list(&apps)))
}

/// `GET /v1/admin/applications/{id}`.
#[utoipa::path(get, path = "/v1/admin/applications/{id}", params(ApplicationPath),
    responses((status = 200, description = "The application, never a secret", body = crate::views::Application)))]
pub async fn get_application(admin: Admin, Id(id): Id) -> Reply<Application> {
    let app = admin.apps().app(&id).await?;
    Ok(Json((&app).into()))
}

/// `PATCH /v1/admin/applications/{id}`.
#[utoipa::path(patch, path = "/v1/admin/applications/{id}", request_body = PatchApplication, params(ApplicationPath),
    responses((status = 200, description = "The application", body = crate::views::Application)))]
pub async fn patch_application(
    AdminEdit { admin, id, body: b }: AdminEdit<PatchApplication>,
) -> Reply<Application> {
    let patch = AppPatch {
        name: b.name,
        description: b.description,
        url: b.url,
        scopes: b.scopes,
    };
    let app = admin.apps().update_app(&admin.actor, &id, patch).await?;
    Ok(Json((&app).into()))
}

/// `POST /v1/admin/applications/{id}/secrets/{production|sandbox}/rotate`: the new secret
/// is shown once; the old one stops working at once.
#[utoipa::path(post, path = "/v1/admin/applications/{id}/secrets/{environment}/rotate", params(ApplicationPath, ("environment" = keywarden_core::model::AppEnvironment, Path, description = "`production` or `sandbox`")),
    responses((status = 200, description = "The application with `environment` and its new `secret`, shown once", body = crate::views::RotatedApplicationSecret)))]
pub async fn rotate_application_secret(
    admin: Admin,
    Path((id, environment)): Path<(String, String)>,
) -> Reply<views::RotatedApplicationSecret> {
    let env: AppEnvironment = environment.parse().map_err(|_| {
        ApiError::with(
            Code::NotFound,
            "an application's secrets are `production` and `sandbox`",
        )
    })?;
    let (app, secret) = admin
        .apps()
        .rotate_app_secret(&admin.actor, &id, env)
        .await?;
    Ok(Json(views::RotatedApplicationSecret {
        application: (&app).into(),
        environment: env,
        secret: secret.expose().to_string(),
    }))
}

// ---- grants (admin) ----

/// `POST /v1/admin/accounts/{id}/grants`: the grant and the key made under it (its
/// `api_key` shown once).
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/grants", request_body = AdminCreateGrant, params(AccountPath),
    responses((status = 201, description = "The grant with `key` (and its `api_key`, shown once)", body = crate::views::IssuedGrant), (status = 403, response = crate::openapi::Forbidden)))]
pub async fn admin_create_grant(
    AdminEdit { admin, id, body: b }: AdminEdit<AdminCreateGrant>,
) -> Result<Response, ApiError> {
    let account = admin.keys().account(&id).await?;
    let issued = admin
        .apps()
        .create_grant(
            &admin.actor,
            &account,
            &b.app_id,
            b.scopes,
            b.mode.unwrap_or(Mode::Live),
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(IssuedGrant::from(&issued))).into_response())
}

/// `GET /v1/admin/accounts/{id}/grants`.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/grants", params(AccountPath),
    responses((status = 200, description = "The account's grants", body = Vec<crate::views::Grant>)))]
pub async fn admin_list_grants(admin: Admin, Id(id): Id) -> Reply<Vec<Grant>> {
    admin.keys().account(&id).await?;
    let grants = admin.apps().list_grants(&id).await?;
    Ok(Json(views::list(&grants)))
}

/// `GET /v1/admin/grants/{id}`.
#[utoipa::path(get, path = "/v1/admin/grants/{id}", params(GrantPath),
    responses((status = 200, description = "The grant", body = crate::views::Grant)))]
pub async fn admin_get_grant(admin: Admin, Id(id): Id) -> Reply<Grant> {
    let g = admin.apps().grant(None, &id).await?;
    Ok(Json((&g).into()))
}

/// `DELETE /v1/admin/grants/{id}`: every key made under the grant is revoked at once.
#[utoipa::path(delete, path = "/v1/admin/grants/{id}", params(GrantPath),
    responses((status = 200, description = "The deleted grant with `revoked_keys`", body = crate::views::DeletedGrant)))]
pub async fn admin_delete_grant(admin: Admin, Id(id): Id) -> Reply<views::DeletedGrant> {
    let m = admin.apps();
    let g = m.grant(None, &id).await?;
    let keys = m.delete_grant(&admin.actor, &g).await?;
    Ok(Json(views::DeletedGrant {
        grant: (&g).into(),
        deleted: true,
        revoked_keys: keys.iter().map(|k| k.id.clone()).collect(),
    }))
}

// ---- recoverable test secrets (admin) ----

/// `POST /v1/admin/keys/{id}/reveal`: a test key's secret again, when
/// `keys.recoverable_test_secrets` is on. Live secrets are never recoverable (409).
#[utoipa::path(post, path = "/v1/admin/keys/{id}/reveal", params(KeyPath), description = "Only test keys, and only when `keys.recoverable_test_secrets` is on; a live key, a revoked key, or recoverable secrets switched off answer `conflict`.",
    responses((status = 200, description = "Key metadata with `api_key`", body = crate::views::ApiKeyWithSecret), (status = 409, response = crate::openapi::Conflict)))]
pub async fn reveal_key(admin: Admin, Id(id): Id) -> Reply<ApiKeyWithSecret> {
    let k = admin.keys().key_of(None, None, &id).await?;
    let secret = admin.apps().reveal(&admin.actor, &k).await?;
    Ok(Json(ApiKeyWithSecret::new(&k, &secret)))
}

// ---- grants (self-service) ----

/// `POST /v1/grants` (owner): authorises an application; a key of the caller's mode is made
/// under the grant and its `api_key` shown once.
#[utoipa::path(post, path = "/v1/grants", security(("api_key" = [])), request_body = CreateGrantBody, description = "Needs a key with role `owner`. Keys of an application cannot manage grants. The grant stays within what the application requested and what the calling key holds.",
    responses((status = 201, description = "The grant with `key` (and its `api_key`, shown once)", body = crate::views::IssuedGrant)))]
pub async fn create_grant(
    WithBody(c, body): WithBody<SelfServiceCaller<GrantManager>, CreateGrantBody>,
) -> Result<Response, ApiError> {
    let issued = AppManager::new(&c.state)
        .create_grant(
            &c.actor(),
            &c.account,
            &body.app_id,
            body.scopes,
            c.key.mode,
            Some(&c.key.scopes),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        c.limits(),
        Json(IssuedGrant::from(&issued)),
    )
        .into_response())
}

/// `GET /v1/grants`: the account's grants.
#[utoipa::path(get, path = "/v1/grants", security(("api_key" = ["account:read"])),
    responses((status = 200, description = "The account's grants", body = Vec<crate::views::Grant>)))]
pub async fn list_grants(c: SelfServiceCaller<AccountRead>) -> Result<Response, ApiError> {
    let grants = AppManager::new(&c.state).list_grants(&c.account.id).await?;
    let items: Vec<Grant> = views::list(&grants);
    Ok((c.limits(), Json(items)).into_response())
}

/// `GET /v1/grants/{id}`.
#[utoipa::path(get, path = "/v1/grants/{id}", security(("api_key" = ["account:read"])), params(GrantPath),
    responses((status = 200, description = "The grant", body = crate::views::Grant)))]
pub async fn get_grant(
    c: SelfServiceCaller<AccountRead>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let g = AppManager::new(&c.state)
        .grant(Some(&c.account.id), &id)
        .await?;
    Ok((c.limits(), Json(Grant::from(&g))).into_response())
}

/// `DELETE /v1/grants/{id}` (owner): the keys made under the grant are revoked at once.
#[utoipa::path(delete, path = "/v1/grants/{id}", security(("api_key" = [])), params(GrantPath), description = "Needs a key with role `owner`. Keys of an application cannot manage grants.",
    responses((status = 204, description = "Deleted; the keys made under it are revoked at once")))]
pub async fn delete_grant(
    c: SelfServiceCaller<GrantManager>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let m = AppManager::new(&c.state);
    let g = m.grant(Some(&c.account.id), &id).await?;
    m.delete_grant(&c.actor(), &g).await?;
    Ok((StatusCode::NO_CONTENT, c.limits(), ()).into_response())
}
