//! The self-service API (`docs/api.md#self-service-api`) on the public listener: customers manage their own
//! account and keys with one of their own secret keys. Everything is confined to the
//! caller's account and mode, and among keys to those the caller could have made and its
//! own (docs/self-service.md); any other is a 404, exactly like a missing one.

use crate::auth::{
    AccountOwner, AccountRead, AccountWrite, KeysDelete, KeysRead, KeysWrite, SelfServiceCaller,
    UsageRead, WithBody, WithQuery,
};
use crate::bodies::page_limit;
use crate::bodies::{AccountPatch, CreateKeyBody, ListQuery, PlanPatch, RotateBody};
use crate::errors::ApiError;
use crate::extract::{ApiQuery, Id, JsonBody};
use crate::manage::{AccountPatch as Patch, Manager, NewKey};
use crate::routes::{KeyPath, Reply};
use crate::state::AppState;
use crate::views::{self, AccountSummary, ApiKey, ApiKeyWithSecret, CreatedApiKey};
use axum::extract::OriginalUri;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keywarden_core::codes::Code;
use keywarden_core::limits::Period;
use keywarden_core::model::KeyType;
use keywarden_store::limiter::QuotaKey;
use keywarden_store::EventFilter;
use serde::Serialize;
use std::collections::BTreeMap;

/// `GET /v1/account`.
#[utoipa::path(get, path = "/v1/account", security(("api_key" = ["account:read"])),
    responses((status = 200, description = "The caller's account and the calling key", body = crate::views::CallerAccount)))]
pub async fn get_account(c: SelfServiceCaller<AccountRead>) -> Result<impl IntoResponse, ApiError> {
    // Read fresh: uses are recorded in the store off the request path, and the verified
    // key carries no usage.
    let k = c.record(&c.state).await?;
    let scopes = c.state.settings.catalog.names(&c.key.scopes);
    let body = views::CallerAccount::new(&c.account, &k, owned(scopes));
    Ok((c.limits(), shown(&c.state, "account", body)?))
}

fn owned(names: Vec<&str>) -> Vec<String> {
    names.into_iter().map(str::to_string).collect()
}

/// `body` as the answer `answer` (one of `SELF_SERVICE_ANSWERS`) shows it: every field, or
/// only the top-level fields `self_service.fields` names for it (in each item of a list).
fn shown<T: Serialize>(state: &AppState, answer: &str, body: T) -> Result<Response, ApiError> {
    let Some(keep) = state.settings.self_service.fields(answer) else {
        return Ok(Json(body).into_response());
    };
    let mut value = serde_json::to_value(&body).map_err(|_| ApiError::new(Code::InternalError))?;
    let only = |v: &mut serde_json::Value| {
        if let serde_json::Value::Object(map) = v {
            map.retain(|name, _| keep.contains(name));
        }
    };
    match &mut value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(only),
        other => only(other),
    }
    Ok(Json(value).into_response())
}

/// `PATCH /v1/account` (owner).
#[utoipa::path(patch, path = "/v1/account", security(("api_key" = ["account:write"])), request_body = AccountPatch, description = "Needs a key with role `owner`.",
    responses((status = 200, description = "The account", body = crate::views::AccountSummary)))]
pub async fn patch_account(
    WithBody(c, body): WithBody<SelfServiceCaller<AccountWrite>, AccountPatch>,
) -> Result<impl IntoResponse, ApiError> {
    // Checked here so the error names this endpoint's field.
    let name = crate::manage::check_name("account_name", &body.account_name)?;
    let patch = Patch {
        name: Some(name),
        ..Patch::default()
    };
    change_own_account(&c, patch).await
}

/// Applies an owner's change to its own account and answers the account as
/// `GET /v1/account` shows it.
async fn change_own_account(
    c: &SelfServiceCaller<AccountWrite>,
    patch: Patch,
) -> Result<Response, ApiError> {
    let a = Manager::new(&c.state)
        .update_account(&c.actor(), &c.account.id, patch)
        .await?;
    let body = AccountSummary::new(&a, c.key.role);
    Ok((c.limits(), shown(&c.state, "account", body)?).into_response())
}

/// `PATCH /v1/account/plan` (owner).
#[utoipa::path(patch, path = "/v1/account/plan", security(("api_key" = ["account:write"])), request_body = PlanPatch, description = "Needs a key with role `owner`.",
    responses((status = 200, description = "The account, on its new plan at once", body = crate::views::AccountSummary)))]
pub async fn patch_plan(
    WithBody(c, body): WithBody<SelfServiceCaller<AccountWrite>, PlanPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let patch = Patch {
        plan: Some(body.plan),
        ..Patch::default()
    };
    change_own_account(&c, patch).await
}

/// `GET /v1/account/usage`.
#[utoipa::path(get, path = "/v1/account/usage", security(("api_key" = ["usage:read"])),
    responses((status = 200, description = "Usage of the current periods", body = crate::views::UsageResponse)))]
pub async fn get_usage(c: SelfServiceCaller<UsageRead>) -> Result<impl IntoResponse, ApiError> {
    let body = usage_body(&c.state, &c.account, c.key.mode).await?;
    Ok((c.limits(), Json(body)))
}

/// The usage report of an account for one mode.
pub async fn usage_body(
    state: &AppState,
    account: &keywarden_core::model::Account,
    mode: keywarden_core::model::Mode,
) -> Result<views::UsageResponse, ApiError> {
    let now = state.clock.now_ms();
    let plan = state.verifier.plan(&account.plan);
    // The next period's first instant, or this period's last whole second
    // (`self_service.period_end`).
    let shown_end = |e: i64| {
        if state.settings.self_service.period_end_last_second {
            e - 1000
        } else {
            e
        }
    };
    let mut quotas = Vec::new();
    let mut per_unit = BTreeMap::new();
    let (mut start, mut end) = Period::Month.bounds(now);
    for (i, spec) in plan.quotas.iter().enumerate() {
        let (s, e) = spec.period.bounds(now);
        if i == 0 {
            (start, end) = (s, e);
        }
        let qk = QuotaKey {
            account_id: account.id.clone(),
            mode,
            unit: spec.unit.clone(),
            period_start: s,
        };
        let used = state.verifier.quota_used(&qk, spec.period).await?;
        let remaining = spec.limit.saturating_sub(used);
        quotas.push(views::Quota {
            unit: spec.unit.clone(),
            used,
            limit: spec.limit,
            remaining,
            period: Some(spec.period.as_str().to_string()),
            period_start: s.into(),
            period_end: shown_end(e).into(),
        });
        per_unit.insert(format!("{}_used", spec.unit), used);
        per_unit.insert(format!("{}_limit", spec.unit), spec.limit);
        per_unit.insert(format!("{}_remaining", spec.unit), remaining);
    }
    Ok(views::UsageResponse {
        plan: account.plan.clone(),
        mode,
        period_start: start.into(),
        period_end: shown_end(end).into(),
        quotas,
        per_unit,
    })
}

/// `DELETE /v1/account/data` (owner): erases the account and everything of it.
#[utoipa::path(delete, path = "/v1/account/data", security(("api_key" = [])), description = "Needs a key with role `owner`. The account's keys fail at once.",
    responses((status = 200, description = "What was deleted, per kind", body = crate::views::ErasureCounts)))]
pub async fn erase(c: SelfServiceCaller<AccountOwner>) -> Reply<views::ErasureCounts> {
    let counts = Manager::new(&c.state)
        .erase_account(&c.actor(), &c.account.id)
        .await?;
    Ok(Json(counts.into()))
}

/// `POST /v1/api-keys`: a new key of the caller's mode with at most the caller's scopes.
#[utoipa::path(post, path = "/v1/api-keys", security(("api_key" = ["api_keys:write"])), request_body = CreateKeyBody, description = "Needs a key with role `owner`, `admin` or `developer`. The new key has the caller's mode, its role, and at most the caller's effective scopes (else `insufficient_scope`); it inherits the caller's `expires_at`, `ip_allowlist` and rate limit, and may narrow but not widen them (else `invalid_request` naming the field); the plan's `max_keys` counts active keys (else `plan_limit_reached`).",
    responses((status = 201, description = "The key, with `api_key` shown once", body = crate::views::CreatedApiKey)))]
pub async fn create_key(
    WithBody(c, body): WithBody<SelfServiceCaller<KeysWrite>, CreateKeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    let expires_at = views::opt_ts("expires_at", body.expires_at.as_deref())?;
    let mode = c.key.mode;
    let caller = c.record(&c.state).await?;
    // The new key is made within the caller (docs/self-service.md): what the body leaves
    // out it inherits, and what it asks for is checked against the caller's own.
    // Without explicit scopes the new key inherits the caller's own grants (as written,
    // aliases unexpanded), which can never exceed them.
    let scopes = body.scopes.or(Some(caller.scopes));
    let new = NewKey {
        scopes,
        expires_at: expires_at.or(caller.expires_at),
        ip_allowlist: body.ip_allowlist.unwrap_or(caller.ip_allowlist),
        rate_limit: caller.rate_limit,
        description: body.description.unwrap_or_default(),
        // A key never creates a key with a stronger role than its own.
        role: c.key.role,
        key_type: KeyType::Secret,
        // A key of an application makes keys of that application, under the same grant.
        app_id: caller.app_id,
        grant_id: caller.grant_id,
        ..NewKey::named(mode, &body.name)
    };
    let m = Manager::new(&c.state);
    let within = m.ceiling(c.key.clone(), &c.account);
    let (rec, token) = m
        .create_key(&c.actor(), &c.account, new, Some(&within))
        .await?;
    let out = CreatedApiKey::new(&rec, &token);
    let out = shown(&c.state, "created_api_key", out)?;
    Ok((StatusCode::CREATED, c.limits(), out))
}

/// `GET /v1/api-keys`: the caller's mode's keys, never a secret; `Link: rel="next"` pages.
#[utoipa::path(get, path = "/v1/api-keys", security(("api_key" = ["api_keys:read"])), params(ListQuery), description = "Needs a key with role `owner`, `admin` or `developer`.",
    responses((status = 200, description = "Metadata of the keys of the caller's mode that it could have made, and its own; never a secret", body = Vec<crate::views::ApiKey>, headers(("Link" = String, description = "`<…?limit=N&starting_after=ID>; rel=\"next\"` when there are more"))), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn list_keys(
    c: SelfServiceCaller<KeysRead>,
    OriginalUri(original): OriginalUri,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    // Only the keys the caller reaches are listed (docs/self-service.md).
    let m = Manager::new(&c.state);
    let keys = m
        .keys_within(
            &m.ceiling(c.key.clone(), &c.account),
            q.starting_after.clone(),
            limit + 1,
        )
        .await?;
    let more = keys.len() > limit as usize;
    let items: Vec<ApiKey> = views::list(keys.iter().take(limit as usize));
    let mut res = (c.limits(), shown(&c.state, "api_key", items)?).into_response();
    if more {
        if let Some(last) = keys.get(limit as usize - 1) {
            // The router strips the base path; the link must carry it.
            let path = original.path();
            let link = format!(
                "<{path}?limit={limit}&starting_after={}>; rel=\"next\"",
                last.id
            );
            if let Ok(v) = HeaderValue::from_str(&link) {
                res.headers_mut().insert("link", v);
            }
        }
    }
    Ok(res)
}

/// The key `id` names (an id or a `key_hash`) when it is within the caller's reach: one
/// it could have made, or itself. Any other is `not_found`.
async fn key_in_reach<N: crate::auth::Need>(
    c: &SelfServiceCaller<N>,
    id: &str,
) -> Result<(Manager, keywarden_core::model::KeyRecord), ApiError> {
    let m = Manager::new(&c.state);
    let k = m
        .key_within(&m.ceiling(c.key.clone(), &c.account), id)
        .await?;
    Ok((m, k))
}

/// `GET /v1/api-keys/{id or key_hash}`.
#[utoipa::path(get, path = "/v1/api-keys/{id}", security(("api_key" = ["api_keys:read"])), params(KeyPath), description = "Needs a key with role `owner`, `admin` or `developer`. Only a key the caller could have made (role, effective scopes and restrictions within its own) or the caller itself; any other answers `not_found`.",
    responses((status = 200, description = "Key metadata, never a secret", body = crate::views::ApiKey)))]
pub async fn get_key(
    c: SelfServiceCaller<KeysRead>,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let (_, k) = key_in_reach(&c, &id).await?;
    Ok((c.limits(), shown(&c.state, "api_key", ApiKey::from(&k))?))
}

/// `DELETE /v1/api-keys/{id or key_hash}`: revoked at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", security(("api_key" = ["api_keys:delete"])), params(KeyPath), description = "Needs a key with role `owner`, `admin` or `developer`. Only a key the caller could have made (role, effective scopes and restrictions within its own) or the caller itself; any other answers `not_found`.",
    responses((status = 204, description = "Revoked at once")))]
pub async fn delete_key(
    c: SelfServiceCaller<KeysDelete>,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let (m, k) = key_in_reach(&c, &id).await?;
    m.revoke_key(&c.actor(), k, Some("revoked through the API".into()))
        .await?;
    Ok((StatusCode::NO_CONTENT, c.limits(), ()))
}

/// `POST /v1/api-keys/{id or key_hash}/rotate`.
#[utoipa::path(post, path = "/v1/api-keys/{id}/rotate", security(("api_key" = ["api_keys:write"])), request_body = RotateBody, params(KeyPath), description = "Needs a key with role `owner`, `admin` or `developer`. Only a key the caller could have made (role, effective scopes and restrictions within its own) or the caller itself; any other answers `not_found`.",
    responses((status = 200, description = "The key with its new `api_key`, shown once; the old secret works until the grace ends", body = crate::views::ApiKeyWithSecret), (status = 409, response = crate::openapi::Conflict)))]
pub async fn rotate_key(
    c: SelfServiceCaller<KeysWrite>,
    Id(id): Id,
    JsonBody(body): JsonBody<RotateBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (m, k) = key_in_reach(&c, &id).await?;
    let (rec, token) = m
        .rotate_key(&c.actor(), k, body.grace_period_seconds.unwrap_or(0))
        .await?;
    Ok((c.limits(), Json(ApiKeyWithSecret::new(&rec, &token))))
}

/// `GET /v1/api-keys/{id}/activity`.
#[utoipa::path(get, path = "/v1/api-keys/{id}/activity", security(("api_key" = ["api_keys:read"])), params(KeyPath), description = "Needs a key with role `owner`, `admin` or `developer`. Only a key the caller could have made (role, effective scopes and restrictions within its own) or the caller itself; any other answers `not_found`.",
    responses((status = 200, description = "Recent requests made with the key, newest first", body = Vec<crate::views::Activity>)))]
pub async fn key_activity(
    c: SelfServiceCaller<KeysRead>,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let (_, k) = key_in_reach(&c, &id).await?;
    let rows = c.state.store.list_activity(&k.id, 100).await?;
    let items: Vec<views::Activity> = views::list(&rows);
    Ok((c.limits(), Json(items)))
}

/// `GET /v1/events`: the account's audit events of the caller's mode.
#[utoipa::path(get, path = "/v1/events", security(("api_key" = ["account:read"])), params(ListQuery),
    responses((status = 200, description = "The account's audit events of the caller's mode, newest first", body = Vec<crate::views::AuditEvent>), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn events(
    WithQuery(c, q): WithQuery<SelfServiceCaller<AccountRead>, ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let evs = c
        .state
        .store
        .list_events(&EventFilter {
            account_id: Some(c.account.id.clone()),
            mode: Some(c.key.mode),
            include_modeless: true,
            before_id: q.starting_after,
            limit: page_limit(q.limit)?,
            ..EventFilter::default()
        })
        .await?;
    let items: Vec<views::AuditEvent> = views::list(&evs);
    Ok((c.limits(), Json(items)))
}

/// `GET /v1/analytics`: the caller's account's decisions by outcome over time, in its mode,
/// or one key's it reaches (`docs/analytics.md`).
#[utoipa::path(get, path = "/v1/analytics", security(("api_key" = ["usage:read"])), params(crate::analytics::SelfAnalyticsQuery),
    responses((status = 200, description = "Decision counts per bucket and outcome code", body = crate::views::AnalyticsReport), (status = 400, response = crate::openapi::BadRequest), (status = 404, response = crate::openapi::NotFound)))]
pub async fn analytics(
    WithQuery(c, q): WithQuery<SelfServiceCaller<UsageRead>, crate::analytics::SelfAnalyticsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let range = crate::analytics::range(&c.state, &q.from, &q.to, q.granularity.as_deref())?;
    let key_id = match q.key_id.filter(|k| !k.is_empty()) {
        Some(k) => {
            let m = Manager::new(&c.state);
            let ceiling = m.ceiling(c.key.clone(), &c.account);
            Some(m.key_within(&ceiling, &k).await?.id)
        }
        None => None,
    };
    let r = crate::analytics::report(
        &c.state,
        range,
        Some(c.account.id.clone()),
        key_id,
        Some(c.key.mode),
    )
    .await?;
    Ok((c.limits(), Json(r)))
}
