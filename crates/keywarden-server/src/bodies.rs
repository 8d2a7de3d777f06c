//! What the HTTP API reads: every request body and query string, parsed strictly
//! (`crate::extract`), and documented for the API documents by the same types. The answers
//! are in `crate::views`.

use crate::errors::ApiError;
use keywarden_core::model::{AccountStatus, KeyType, Mode, RateLimitSpec, Role};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Distinguishes an absent field from an explicit `null` in PATCH bodies.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

// The admin API (`/v1/admin/…`): accounts, keys, usage and events.

/// Body of `POST /v1/admin/accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// A configured plan (default: `plans.default`).
    pub plan: Option<String>,
    /// `pending`, `active` (default) or `suspended`.
    #[schema(value_type = Option<keywarden_core::model::AccountStatus>)]
    pub status: Option<AccountStatus>,
    /// A JSON object ≤ 4 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Body of `PATCH /v1/admin/accounts/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAccount {
    /// New name, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// New plan (takes effect at once).
    pub plan: Option<String>,
    /// New status.
    #[schema(value_type = Option<keywarden_core::model::AccountStatus>)]
    pub status: Option<AccountStatus>,
    /// New metadata, a JSON object ≤ 4 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Body of `POST /v1/admin/accounts/{id}/portal-sessions`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePortalSession {
    /// Where the portal's "back" link and sign-out lead: an absolute http(s) URL.
    #[schema(max_length = 2000)]
    pub return_url: Option<String>,
    /// Confine the session to `live` or `test` keys (default: both, live first).
    #[schema(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// The highest role the session acts with (default `owner`).
    #[schema(value_type = Option<keywarden_core::model::Role>)]
    pub role: Option<Role>,
}

/// Body of `POST /v1/admin/accounts/{id}/keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `live` or `test`.
    #[schema(value_type = keywarden_core::model::Mode)]
    pub mode: Mode,
    /// `secret` (default) or `publishable`.
    #[serde(rename = "type")]
    #[schema(value_type = Option<keywarden_core::model::KeyType>)]
    pub key_type: Option<KeyType>,
    /// 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Where the key is stored, ≤ 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// The person responsible, ≤ 200 characters.
    #[schema(max_length = 200)]
    pub owner: Option<String>,
    /// `owner` (default), `admin`, `developer` or `member`.
    #[schema(value_type = Option<keywarden_core::model::Role>)]
    pub role: Option<Role>,
    /// Scopes (default: `keys.default_scopes`).
    pub scopes: Option<Vec<String>>,
    /// RFC 3339 expiry.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// IPs and CIDRs.
    pub ip_allowlist: Option<Vec<String>>,
    /// Per-key rate limit `{requests, per_seconds}`.
    #[schema(value_type = Option<crate::views::RateLimit>)]
    pub rate_limit: Option<RateLimitSpec>,
    /// A JSON object ≤ 4 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The application the key is bound to.
    pub app_id: Option<String>,
}

/// Query of `GET /v1/admin/accounts/{id}/keys`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeysQuery {
    /// Only keys of this mode.
    #[param(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// Page size 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Keys after this id.
    pub starting_after: Option<String>,
}

/// Body of `PATCH /v1/admin/keys/{id}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchKey {
    /// New label, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// New description, ≤ 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// New owner, ≤ 200 characters.
    #[schema(max_length = 200)]
    pub owner: Option<String>,
    /// New role.
    #[schema(value_type = Option<keywarden_core::model::Role>)]
    pub role: Option<Role>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New expiry (RFC 3339), or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// New allowlist.
    pub ip_allowlist: Option<Vec<String>>,
    /// New rate limit, or `null` to use the plan's.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<crate::views::RateLimit>)]
    pub rate_limit: Option<Option<RateLimitSpec>>,
    /// Enable or disable the key.
    pub enabled: Option<bool>,
    /// New metadata, a JSON object ≤ 4 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Body of `POST /v1/admin/keys/{id}/revoke`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// Why (≤ 200 characters).
    #[schema(max_length = 200)]
    pub reason: Option<String>,
}

/// Body of `POST /v1/admin/keys/import`: an existing key by its hash, without its secret.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKey {
    /// The account.
    pub account_id: String,
    /// `live` or `test`.
    #[schema(value_type = keywarden_core::model::Mode)]
    pub mode: Mode,
    /// `secret` (default) or `publishable`.
    #[serde(rename = "type")]
    #[schema(value_type = Option<keywarden_core::model::KeyType>)]
    pub key_type: Option<KeyType>,
    /// Label, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// `sha256`, `bcrypt`, `argon2id` or `hmac-sha256` (under the current pepper).
    pub scheme: String,
    /// The hash: hex digest for sha256/hmac, PHC/bcrypt string for slow schemes.
    pub hash: String,
    /// The lookup segment (first 8 random characters) for slow schemes.
    pub lookup: Option<String>,
    /// The fixed start of the tokens (for display).
    pub prefix: Option<String>,
    /// The public `sha256_…` fingerprint, when known.
    pub key_hash: Option<String>,
    /// Scopes (default: `keys.default_scopes`).
    pub scopes: Option<Vec<String>>,
    /// Role (default owner).
    #[schema(value_type = Option<keywarden_core::model::Role>)]
    pub role: Option<Role>,
}

/// Body of `POST /v1/admin/accounts/{id}/usage`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportUsage {
    /// The unit.
    pub unit: String,
    /// How much was consumed, at most 2⁶³ − 1 (what a usage counter can hold).
    #[schema(maximum = 9_223_372_036_854_775_807_i64)]
    pub amount: u64,
    /// `live` (default) or `test`.
    #[schema(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
}

/// Query of `GET /v1/admin/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this account's events.
    pub account_id: Option<String>,
    /// Only this type, or a family like `key.*`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Events older than this event id.
    pub starting_after: Option<String>,
}

// Applications and grants.

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

/// Body of `POST /v1/admin/accounts/{id}/grants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateGrant {
    /// The application.
    pub app_id: String,
    /// The granted scopes, within what the application requested (default: all of them).
    pub scopes: Option<Vec<String>>,
    /// The mode of the key made under the grant: `live` (default) or `test`.
    #[schema(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
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

// Leaked-key reports (GitHub, GitLab, the admin API).

/// One match of a GitHub secret-scanning report. The format is GitHub's, which has grown
/// fields before (`source`), so fields it may add later are ignored rather than refused:
/// refusing them would drop real leaks.
#[derive(Deserialize, ToSchema)]
pub struct GithubMatch {
    /// The token found.
    pub token: String,
    /// The token type, one of `leaks.token_types`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it was found.
    #[serde(default)]
    pub url: Option<String>,
    /// What kind of place (`content`, `commit`, `issue_comment`, …).
    #[serde(default)]
    pub source: Option<String>,
}

/// One token GitLab asks to revoke. GitLab's format: fields it may add later are ignored.
#[derive(Deserialize, ToSchema)]
pub struct GitlabRevocation {
    /// One of the types from `GET /v1/revocable_token_types`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The token found.
    pub token: String,
    /// Where it was found.
    #[serde(default)]
    pub location: Option<String>,
}

/// Body of `POST /v1/admin/leaks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakReport {
    /// The tokens found (1–1000).
    pub tokens: Vec<String>,
    /// Where they were found (a URL, a file; ≤ 2048 characters), kept in `key.leaked`.
    pub source: Option<String>,
}

// The self-service API.

/// Body of `PATCH /v1/account`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    /// The new name, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub account_name: String,
}

/// Body of `PATCH /v1/account/plan`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPatch {
    /// The new plan; takes effect at once.
    pub plan: String,
}

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// Label, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Scopes (default: the caller's own effective scopes are the ceiling; `default_scopes`
    /// when omitted, capped to the caller's).
    pub scopes: Option<Vec<String>>,
    /// RFC 3339 expiry, no later than the caller's own (default: the caller's).
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// IPs and CIDRs, each inside one of the caller's own networks when it has an
    /// allowlist (default: the caller's).
    pub ip_allowlist: Option<Vec<String>>,
    /// Where the key will be stored, ≤ 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// Validates a page size.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(20),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(format!("limit: {n} is outside 1–100"))),
    }
}

/// The page a list query asks for.
fn page(
    limit: Option<u32>,
    starting_after: &Option<String>,
) -> Result<keywarden_store::Page, ApiError> {
    Ok(keywarden_store::Page {
        after_id: starting_after.clone(),
        limit: page_limit(limit)?,
    })
}

impl ListQuery {
    /// The page asked for.
    pub fn page(&self) -> Result<keywarden_store::Page, ApiError> {
        page(self.limit, &self.starting_after)
    }
}

impl KeysQuery {
    /// The page asked for.
    pub fn page(&self) -> Result<keywarden_store::Page, ApiError> {
        page(self.limit, &self.starting_after)
    }
}

/// Paging of lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Return items after this id.
    pub starting_after: Option<String>,
}

/// Body of a rotation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old secret keeps working, 0–604800 s (default 0).
    #[schema(maximum = 604800)]
    pub grace_period_seconds: Option<u64>,
}

// `POST /v1/verify`.

/// The verify request body. Its `Debug` never shows the key, the application secret or the
/// original headers (which may carry either).
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// The key to check.
    pub key: Option<String>,
    /// Or the original request's headers, read with the configured key sources.
    pub headers: Option<BTreeMap<String, String>>,
    /// The application secret, for keys bound to an application.
    pub app_secret: Option<String>,
    /// Scopes that are all required.
    pub scopes: Option<Vec<String>>,
    /// Scopes of which one is required.
    pub any_scopes: Option<Vec<String>>,
    /// The client's IP, for allowlists and the lockout.
    pub ip: Option<String>,
    /// The original method (with `path`, route rules apply when no scopes are given).
    pub method: Option<String>,
    /// The original path.
    pub path: Option<String>,
    /// The mode of the object the request touches.
    #[schema(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// Quota units consumed by the request.
    pub cost: Option<BTreeMap<String, u64>>,
}

// Webhook endpoints.

/// Body of `POST /v1/admin/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An absolute `http` or `https` URL, not on a private network unless
    /// `webhooks.allow_private_networks`.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types (`key.created`) or families (`key.*`); absent = every type.
    pub events: Option<Vec<String>>,
    /// Only this account's events; absent = every account's.
    pub account_id: Option<String>,
    /// Only this mode's events; absent = both.
    #[schema(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// Free text, at most 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// Body of `POST /v1/webhooks`: the endpoint is the account's, of the key's mode.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOwnWebhook {
    /// An absolute `http` or `https` URL, not on a private network unless
    /// `webhooks.allow_private_networks`.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types (`key.created`) or families (`key.*`); absent = every type.
    pub events: Option<Vec<String>>,
    /// Free text, at most 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// Body of `PATCH .../webhooks/{id}`; absent fields stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchWebhook {
    /// A new URL.
    pub url: Option<String>,
    /// New event types; `null` = every type.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    pub events: Option<Option<Vec<String>>>,
    /// Enable (which clears why it was disabled) or disable.
    pub enabled: Option<bool>,
    /// A new description.
    pub description: Option<String>,
}

/// Query of the delivery log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many (1–100, default 20).
    pub limit: Option<u32>,
    /// Only deliveries older than this one (paging: the last id seen).
    pub before: Option<String>,
}
