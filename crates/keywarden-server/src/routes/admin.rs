//! The admin API (`docs/api.md#admin-api`) on the admin listener: the operator, with a root key, manages
//! every account and key.

use crate::auth::{Admin, AdminEdit, RootCaller, WithBody, WithQuery};
use crate::bodies::page_limit;
use crate::bodies::{
    CreateAccount, CreateKey, CreatePortalSession, EventsQuery, ImportKey, KeysQuery, ListQuery,
    PatchAccount, PatchKey, ReportUsage, RevokeBody, RotateBody,
};
use crate::errors::ApiError;
use crate::extract::{Id, JsonBody};
use crate::manage::{AccountPatch, KeyPatch, NewKey};
use crate::routes::self_service::usage_body;
use crate::routes::{AccountPath, KeyPath, Reply};
use crate::state::AppState;
use crate::views::{self, AccountWithKeys, ApiKey, ApiKeyWithSecret};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keywarden_core::model::{AccountStatus, HashScheme, KeyType, Mode, Role, StoredSecret};
use keywarden_store::limiter::QuotaKey;
use keywarden_store::{EventFilter, UsageDelta};

/// Refuses an admin call without a root key before its body or query is read, and hands
/// the admitted [`RootCaller`] to the handler.
pub async fn root_guard(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    match RootCaller::authenticate(&state, &parts) {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/admin/accounts`.
#[utoipa::path(post, path = "/v1/admin/accounts", request_body = CreateAccount,
    responses((status = 201, description = "The account, with its default keys when `keys.default_sets` made some", body = crate::views::AccountWithKeys)))]
pub async fn create_account(
    WithBody(admin, b): WithBody<Admin, CreateAccount>,
) -> Result<Response, ApiError> {
    // With `keys.default_sets`, the account's default keys come with it.
    let (a, keys) = admin
        .apps()
        .create_account(&admin.actor, &b.name, b.plan, b.status, b.metadata)
        .await?;
    Ok((StatusCode::CREATED, Json(AccountWithKeys::new(&a, &keys))).into_response())
}

/// `GET /v1/admin/accounts`.
#[utoipa::path(get, path = "/v1/admin/accounts", params(ListQuery),
    responses((status = 200, description = "Accounts by id", body = Vec<crate::views::Account>), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn list_accounts(
    WithQuery(admin, q): WithQuery<Admin, ListQuery>,
) -> Reply<Vec<views::Account>> {
    let list = admin.state.store.list_accounts(&q.page()?).await?;
    Ok(Json(views::list(&list)))
}

/// `GET /v1/admin/accounts/{id}`.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}", params(AccountPath),
    responses((status = 200, description = "The account", body = crate::views::Account)))]
pub async fn get_account(admin: Admin, Id(id): Id) -> Reply<views::Account> {
    Ok(Json(views::Account::from(
        &admin.keys().account(&id).await?,
    )))
}

/// `PATCH /v1/admin/accounts/{id}`.
#[utoipa::path(patch, path = "/v1/admin/accounts/{id}", request_body = PatchAccount, params(AccountPath),
    responses((status = 200, description = "The account, with its live default keys when this made it active", body = crate::views::AccountWithKeys)))]
pub async fn patch_account(
    AdminEdit { admin, id, body: b }: AdminEdit<PatchAccount>,
) -> Reply<AccountWithKeys> {
    let a = admin
        .keys()
        .update_account(
            &admin.actor,
            &id,
            AccountPatch {
                name: b.name,
                plan: b.plan,
                status: b.status,
                metadata: b.metadata,
            },
        )
        .await?;
    // An account made active here is approved: its live default keys, if any, come now.
    let keys = admin
        .apps()
        .default_set(&admin.actor, &a, Mode::Live)
        .await?;
    Ok(Json(AccountWithKeys::new(&a, &keys)))
}

/// `DELETE /v1/admin/accounts/{id}`: erases the account and everything of it.
#[utoipa::path(delete, path = "/v1/admin/accounts/{id}", params(AccountPath),
    responses((status = 200, description = "What was deleted, per kind", body = crate::views::ErasureCounts)))]
pub async fn erase_account(admin: Admin, Id(id): Id) -> Reply<views::ErasureCounts> {
    let counts = admin.keys().erase_account(&admin.actor, &id).await?;
    Ok(Json(counts.into()))
}

/// `POST /v1/admin/accounts/{id}/approve`: status `active`.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/approve", params(AccountPath),
    responses((status = 200, description = "The account, now `active`, with its live default keys when that made some", body = crate::views::AccountWithKeys)))]
pub async fn approve_account(admin: Admin, Id(id): Id) -> Reply<AccountWithKeys> {
    let (a, keys) = admin
        .apps()
        .set_status(&admin.actor, &id, AccountStatus::Active)
        .await?;
    Ok(Json(AccountWithKeys::new(&a, &keys)))
}

/// `POST /v1/admin/accounts/{id}/portal-sessions`: a single-use link to the customer
/// portal for this account (`docs/console.md#the-customer-portal`).
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/portal-sessions", request_body = CreatePortalSession, params(AccountPath),
    responses((status = 201, description = "The link, usable once until `expires_at`", body = crate::views::PortalSession), (status = 403, response = crate::openapi::Forbidden)))]
pub async fn create_portal_session(
    admin: Admin,
    headers: axum::http::HeaderMap,
    Id(id): Id,
    JsonBody(b): JsonBody<CreatePortalSession>,
) -> Result<(StatusCode, Json<views::PortalSession>), ApiError> {
    // The root key this call was admitted with: the link lives only while it is configured.
    let root_key = crate::auth::bearer(&headers)
        .and_then(|t| crate::auth::matching_root_key(&admin.state, t))
        .ok_or_else(|| ApiError::new(keywarden_core::codes::Code::RootKeyRequired))?;
    let a = admin.keys().account(&id).await?;
    let (url, expires_at) = crate::web::portal::create_link(
        &admin.state,
        &admin.actor,
        root_key,
        &a,
        b.mode,
        b.role.unwrap_or(Role::Owner),
        b.return_url,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(views::PortalSession {
            url,
            expires_at: expires_at.into(),
        }),
    ))
}

/// `POST /v1/admin/accounts/{id}/keys`: the secret is shown once, as `api_key`.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/keys", request_body = CreateKey, params(AccountPath),
    responses((status = 201, description = "The key with `api_key`, shown once", body = crate::views::ApiKeyWithSecret), (status = 403, response = crate::openapi::Forbidden)))]
pub async fn create_key(
    AdminEdit { admin, id, body: b }: AdminEdit<CreateKey>,
) -> Result<Response, ApiError> {
    let m = admin.keys();
    let account = m.account(&id).await?;
    let expires_at = views::opt_ts("expires_at", b.expires_at.as_deref())?;
    let mut new = NewKey {
        key_type: b.key_type.unwrap_or(KeyType::Secret),
        description: b.description.unwrap_or_default(),
        owner: b.owner.unwrap_or_default(),
        role: b.role.unwrap_or(Role::Owner),
        scopes: b.scopes,
        expires_at,
        ip_allowlist: b.ip_allowlist.unwrap_or_default(),
        rate_limit: b.rate_limit,
        metadata: b.metadata,
        ..NewKey::named(b.mode, &b.name)
    };
    // A key of an application is made under the account's grant to it, within its scopes.
    if let Some(app) = &b.app_id {
        admin.apps().bind_to_grant(&account, app, &mut new).await?;
    }
    let (rec, token) = m.create_key(&admin.actor, &account, new, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyWithSecret::new(&rec, &token)),
    )
        .into_response())
}

/// `GET /v1/admin/accounts/{id}/keys?mode=`.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/keys", params(AccountPath, KeysQuery),
    responses((status = 200, description = "Key metadata, never a secret", body = Vec<crate::views::ApiKey>), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn list_keys(
    WithQuery(admin, q): WithQuery<Admin, KeysQuery>,
    Id(id): Id,
) -> Reply<Vec<ApiKey>> {
    admin.keys().account(&id).await?;
    let keys = admin.state.store.list_keys(&id, q.mode, &q.page()?).await?;
    Ok(Json(views::list(&keys)))
}

/// `GET /v1/admin/keys/{id}`.
#[utoipa::path(get, path = "/v1/admin/keys/{id}", params(KeyPath),
    responses((status = 200, description = "Key metadata, never a secret", body = crate::views::ApiKey)))]
pub async fn get_key(admin: Admin, Id(id): Id) -> Reply<ApiKey> {
    let k = admin.keys().key_of(None, None, &id).await?;
    Ok(Json((&k).into()))
}

/// `PATCH /v1/admin/keys/{id}`.
#[utoipa::path(patch, path = "/v1/admin/keys/{id}", request_body = PatchKey, params(KeyPath),
    responses((status = 200, description = "Key metadata", body = crate::views::ApiKey)))]
pub async fn patch_key(AdminEdit { admin, id, body: b }: AdminEdit<PatchKey>) -> Reply<ApiKey> {
    let m = admin.keys();
    let k = m.key_of(None, None, &id).await?;
    if let Some(scopes) = &b.scopes {
        admin.apps().check_within_grant(&k, scopes).await?;
    }
    let expires_at = match b.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(s)) => {
            Some(Some(views::parse_ts(&s).map_err(|e| {
                ApiError::invalid(format!("expires_at: {e}"))
            })?))
        }
    };
    let patch = KeyPatch {
        name: b.name,
        description: b.description,
        owner: b.owner,
        role: b.role,
        scopes: b.scopes,
        expires_at,
        ip_allowlist: b.ip_allowlist,
        rate_limit: b.rate_limit,
        enabled: b.enabled,
        metadata: b.metadata,
    };
    let k = m.update_key(&admin.actor, k, patch, None).await?;
    Ok(Json((&k).into()))
}

/// `POST /v1/admin/keys/{id}/rotate`.
#[utoipa::path(post, path = "/v1/admin/keys/{id}/rotate", request_body = RotateBody, params(KeyPath),
    responses((status = 200, description = "The key with its new `api_key`, shown once; the old secret works until the grace ends", body = crate::views::ApiKeyWithSecret), (status = 409, response = crate::openapi::Conflict)))]
pub async fn rotate_key(
    AdminEdit { admin, id, body: b }: AdminEdit<RotateBody>,
) -> Reply<ApiKeyWithSecret> {
    let m = admin.keys();
    let k = m.key_of(None, None, &id).await?;
    let (rec, token) = m
        .rotate_key(&admin.actor, k, b.grace_period_seconds.unwrap_or(0))
        .await?;
    Ok(Json(ApiKeyWithSecret::new(&rec, &token)))
}

/// `POST /v1/admin/keys/{id}/revoke`.
#[utoipa::path(post, path = "/v1/admin/keys/{id}/revoke", request_body = RevokeBody, params(KeyPath),
    responses((status = 200, description = "Key metadata, revoked", body = crate::views::ApiKey)))]
pub async fn revoke_key(AdminEdit { admin, id, body: b }: AdminEdit<RevokeBody>) -> Reply<ApiKey> {
    let m = admin.keys();
    let k = m.key_of(None, None, &id).await?;
    let k = m.revoke_key(&admin.actor, k, b.reason).await?;
    Ok(Json((&k).into()))
}

/// `GET /v1/admin/keys/{id}/activity`.
#[utoipa::path(get, path = "/v1/admin/keys/{id}/activity", params(KeyPath),
    responses((status = 200, description = "Recent requests made with the key, newest first", body = Vec<crate::views::Activity>)))]
pub async fn key_activity(admin: Admin, Id(id): Id) -> Reply<Vec<views::Activity>> {
    let k = admin.keys().key_of(None, None, &id).await?;
    let rows = admin.state.store.list_activity(&k.id, 100).await?;
    Ok(Json(views::list(&rows)))
}

/// `POST /v1/admin/keys/import`.
#[utoipa::path(post, path = "/v1/admin/keys/import", request_body = ImportKey,
    responses((status = 201, description = "Key metadata (there is no secret to show)", body = crate::views::ApiKey), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound), (status = 409, response = crate::openapi::Conflict)))]
pub async fn import_key(
    WithBody(admin, b): WithBody<Admin, ImportKey>,
) -> Result<Response, ApiError> {
    let m = admin.keys();
    let account = m.account(&b.account_id).await?;
    let scheme: HashScheme =
        b.scheme
            .parse()
            .map_err(|e: keywarden_core::model::UnknownVariant| {
                ApiError::invalid(format!("scheme: {e}"))
            })?;
    let slow = matches!(scheme, HashScheme::Bcrypt | HashScheme::Argon2id);
    let secret = if slow {
        let lookup =
            b.lookup.clone().filter(|l| !l.is_empty()).ok_or_else(|| {
                ApiError::invalid("lookup: required for bcrypt and argon2id imports")
            })?;
        StoredSecret {
            scheme,
            lookup,
            hash: b.hash.clone(),
        }
    } else {
        let h = b.hash.to_ascii_lowercase();
        if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::invalid(
                "hash: must be 64 hex characters for this scheme",
            ));
        }
        StoredSecret {
            scheme,
            lookup: h,
            hash: String::new(),
        }
    };
    // A plain SHA-256 import is its own public fingerprint.
    let key_hash = b.key_hash.clone().unwrap_or_else(|| match scheme {
        HashScheme::Sha256 => format!("sha256_{}", secret.lookup),
        _ => format!("sha256_imported_{}", ulid::Ulid::new()),
    });
    let (rec, _) = m
        .import_key(
            &admin.actor,
            &account,
            b.mode,
            b.key_type.unwrap_or(KeyType::Secret),
            &b.name,
            b.scopes,
            b.role.unwrap_or(Role::Owner),
            secret,
            b.prefix.unwrap_or_default(),
            key_hash,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(ApiKey::from(&rec))).into_response())
}

/// `POST /v1/admin/accounts/{id}/usage`: reports consumption after the fact.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/usage", request_body = ReportUsage, params(AccountPath),
    responses((status = 200, description = "The account's usage after the report", body = crate::views::UsageResponse)))]
pub async fn report_usage(
    AdminEdit { admin, id, body: b }: AdminEdit<ReportUsage>,
) -> Reply<views::UsageResponse> {
    if i64::try_from(b.amount).is_err() {
        return Err(ApiError::invalid(format!(
            "amount: {} is more than a usage counter holds (at most {})",
            b.amount,
            i64::MAX
        )));
    }
    let account = admin.keys().account(&id).await?;
    let mode = b.mode.unwrap_or(Mode::Live);
    let plan = admin.state.verifier.plan(&account.plan);
    let Some(spec) = plan.quotas.iter().find(|q| q.unit == b.unit) else {
        return Err(ApiError::invalid(format!(
            "unit: the {} plan has no quota for {:?}",
            account.plan, b.unit
        )));
    };
    let now = admin.state.clock.now_ms();
    let (start, _) = spec.period.bounds(now);
    let qk = QuotaKey {
        account_id: id.clone(),
        mode,
        unit: b.unit.clone(),
        period_start: start,
    };
    admin
        .state
        .verifier
        .add_usage(&qk, spec.period, b.amount)
        .await?;
    admin
        .state
        .store
        .add_usage(&[UsageDelta {
            account_id: id,
            mode,
            unit: b.unit,
            period_start: start,
            amount: b.amount,
        }])
        .await?;
    Ok(Json(usage_body(&admin.state, &account, mode).await?))
}

/// `GET /v1/admin/events`.
#[utoipa::path(get, path = "/v1/admin/events", params(EventsQuery),
    responses((status = 200, description = "Audit events, newest first", body = Vec<crate::views::AuditEvent>), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn events(
    WithQuery(admin, q): WithQuery<Admin, EventsQuery>,
) -> Reply<Vec<views::AuditEvent>> {
    let since = views::opt_ts("since", q.since.as_deref())?;
    let evs = admin
        .state
        .store
        .list_events(&EventFilter {
            account_id: q.account_id,
            kind: q.kind,
            since,
            before_id: q.starting_after,
            limit: page_limit(q.limit)?,
            include_modeless: true,
            ..EventFilter::default()
        })
        .await?;
    Ok(Json(views::list(&evs)))
}

/// `GET /v1/admin/analytics`: decisions by outcome over time, of an account, a key or the
/// whole deployment (`docs/analytics.md`).
#[utoipa::path(get, path = "/v1/admin/analytics", params(crate::analytics::AnalyticsQuery),
    responses((status = 200, description = "Decision counts per bucket and outcome code", body = crate::views::AnalyticsReport), (status = 400, response = crate::openapi::BadRequest), (status = 404, response = crate::openapi::NotFound)))]
pub async fn analytics(
    WithQuery(admin, q): WithQuery<Admin, crate::analytics::AnalyticsQuery>,
) -> Reply<views::AnalyticsReport> {
    let range = crate::analytics::range(&admin.state, &q.from, &q.to, q.granularity.as_deref())?;
    let mode = crate::analytics::mode_param(q.mode.as_deref())?;
    let m = admin.keys();
    let mut account_id = q.account_id.filter(|a| !a.is_empty());
    if let Some(a) = &account_id {
        m.account(a).await?;
    }
    let key_id = match q.key_id.filter(|k| !k.is_empty()) {
        Some(k) => {
            let key = m.key_of(account_id.as_deref(), None, &k).await?;
            account_id = Some(key.account_id.clone());
            Some(key.id)
        }
        None => None,
    };
    let r = crate::analytics::report(&admin.state, range, account_id, key_id, mode).await?;
    Ok(Json(r))
}
