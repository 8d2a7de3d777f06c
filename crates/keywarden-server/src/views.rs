//! How stored objects look on the wire: one `#[derive(Serialize, ToSchema)]` type per
//! response body, built from the model, so the OpenAPI document describes exactly what the
//! handlers send. Timestamps are RFC 3339 in UTC, marked `Z` or `+00:00` as configured
//! (`docs/configuration.md`); no view ever includes a stored hash (only the public
//! `key_hash` fingerprint), and a secret only in the answer that makes it.

use keywarden_core::decision::CompiledKey;
use keywarden_core::limits::QuotaOutcome;
use keywarden_core::model::{
    self, AccountStatus, AppEnvironment, KeyType, Millis, Mode, RateLimitSpec, Role,
};
use keywarden_core::Secret;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// How timestamps are written (`server.timestamp_offset` and `server.timestamp_precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimestampStyle {
    /// `+00:00` instead of `Z`.
    pub offset: bool,
    /// Whole seconds only (milliseconds dropped).
    pub seconds: bool,
}

impl TimestampStyle {
    /// Reads the two settings, naming the field on a bad value.
    pub fn parse(offset: &str, precision: &str) -> Result<Self, (&'static str, String)> {
        let offset = match offset {
            "Z" => false,
            "+00:00" => true,
            other => {
                return Err((
                    "server.timestamp_offset",
                    format!("{other:?} is neither \"Z\" nor \"+00:00\""),
                ))
            }
        };
        let seconds = match precision {
            "ms" => false,
            "s" => true,
            other => {
                return Err((
                    "server.timestamp_precision",
                    format!("{other:?} is neither \"ms\" nor \"s\""),
                ))
            }
        };
        Ok(Self { offset, seconds })
    }

    /// Renders Unix milliseconds in this style.
    pub fn format(self, ms: Millis) -> String {
        let ms = if self.seconds {
            ms.div_euclid(1000) * 1000
        } else {
            ms
        };
        let text = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        match (self.offset, text.strip_suffix('Z')) {
            (true, Some(head)) => format!("{head}+00:00"),
            _ => text,
        }
    }
}

tokio::task_local! {
    /// The style of the request being answered (set by the request middleware).
    static STYLE: TimestampStyle;
}

/// Runs `fut` (a request's handling) with timestamps written in `style`.
pub async fn with_timestamp_style<F: std::future::Future>(
    style: TimestampStyle,
    fut: F,
) -> F::Output {
    STYLE.scope(style, fut).await
}

/// Renders Unix milliseconds as RFC 3339 (`2026-03-20T10:00:00.123Z`), in the configured
/// style when called while answering a request.
pub fn ts(ms: Millis) -> String {
    STYLE.try_with(|s| *s).unwrap_or_default().format(ms)
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_ts(s: &str) -> Result<Millis, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as Millis)
        .map_err(|_| format!("{s:?} is not an RFC 3339 timestamp like 2026-01-31T12:00:00Z"))
}

/// An optional RFC 3339 field of a request (`field`, for the error), in milliseconds.
pub fn opt_ts(field: &str, s: Option<&str>) -> Result<Option<Millis>, crate::errors::ApiError> {
    s.map(parse_ts)
        .transpose()
        .map_err(|e| crate::errors::ApiError::invalid(format!("{field}: {e}")))
}

// ---------------------------------------------------------------------------------------
// Shared value types.

/// An instant in RFC 3339, UTC, with milliseconds.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-03-20T10:00:00.123Z")]
pub struct Timestamp(String);

impl Timestamp {
    /// The RFC 3339 text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Millis> for Timestamp {
    fn from(ms: Millis) -> Self {
        Timestamp(ts(ms))
    }
}

fn ts_opt(ms: Option<Millis>) -> Option<Timestamp> {
    ms.map(Timestamp::from)
}

/// A JSON object.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct JsonObject(Value);

/// A per-key rate limit.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RateLimit {
    /// Requests admitted per window (also the burst size).
    pub requests: u32,
    /// The window length in seconds.
    pub per_seconds: u32,
}

impl From<RateLimitSpec> for RateLimit {
    fn from(r: RateLimitSpec) -> Self {
        RateLimit {
            requests: r.requests,
            per_seconds: r.per_seconds,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Accounts.

/// An account as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    /// `acc_` + ULID.
    #[schema(example = "acc_01JQ2Z5V7X9Y0ABCDEFGHJKMNP")]
    pub id: String,
    /// Display name, 1–100 characters.
    pub name: String,
    /// A configured plan.
    pub plan: String,
    /// Lifecycle state; gates live keys.
    #[schema(value_type = keywarden_core::model::AccountStatus)]
    pub status: AccountStatus,
    /// Free-form JSON object, at most 4 KiB.
    pub metadata: JsonObject,
    /// Creation time.
    pub created_at: Timestamp,
}

impl From<&model::Account> for Account {
    fn from(a: &model::Account) -> Self {
        Account {
            id: a.id.clone(),
            name: a.name.clone(),
            plan: a.plan.clone(),
            status: a.status,
            metadata: JsonObject(a.metadata.clone()),
            created_at: a.created_at.into(),
        }
    }
}

/// The account as `PATCH /v1/account` and `PATCH /v1/account/plan` return it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountSummary {
    /// `acc_` + ULID.
    pub account_id: String,
    /// Display name.
    pub account_name: String,
    /// The plan, in effect at once.
    pub plan: String,
    /// The calling key's role, as `GET /v1/account` shows it.
    #[schema(value_type = keywarden_core::model::Role)]
    pub role: Role,
    /// Lifecycle state.
    #[schema(value_type = keywarden_core::model::AccountStatus)]
    pub status: AccountStatus,
    /// Creation time.
    pub created_at: Timestamp,
}

impl AccountSummary {
    /// The account as a caller with `role` sees it.
    pub fn new(a: &model::Account, role: Role) -> Self {
        AccountSummary {
            account_id: a.id.clone(),
            account_name: a.name.clone(),
            plan: a.plan.clone(),
            role,
            status: a.status,
            created_at: a.created_at.into(),
        }
    }
}

/// `GET /v1/account`: the caller's account and the calling key. Never a secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallerAccount {
    /// `acc_` + ULID.
    pub account_id: String,
    /// Display name.
    pub account_name: String,
    /// The account's plan.
    pub plan: String,
    /// The calling key's role.
    #[schema(value_type = keywarden_core::model::Role)]
    pub role: Role,
    /// The calling key's mode.
    #[schema(value_type = keywarden_core::model::Mode)]
    pub mode: Mode,
    /// The account's status.
    #[schema(value_type = keywarden_core::model::AccountStatus)]
    pub status: AccountStatus,
    /// The calling key.
    pub key: CallerKey,
}

/// The calling key, as `GET /v1/account` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallerKey {
    /// `key_` + ULID.
    pub id: String,
    /// Label.
    pub name: String,
    /// The fixed start of the token (`kw_sk_live_`).
    pub prefix: String,
    /// `prefix` + the first random characters: safe to display.
    pub start: String,
    /// Granted scopes, expanded.
    pub scopes: Vec<String>,
    /// The account's plan.
    pub tier: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last successful use (written in batches, up to a second late).
    #[schema(required = true)]
    pub last_used_at: Option<Timestamp>,
    /// Expiry, if any.
    #[schema(required = true)]
    pub expires_at: Option<Timestamp>,
}

impl CallerAccount {
    /// The account, and the calling key as stored with its scopes expanded.
    pub fn new(account: &model::Account, key: &model::KeyRecord, scopes: Vec<String>) -> Self {
        CallerAccount {
            account_id: account.id.clone(),
            account_name: account.name.clone(),
            plan: account.plan.clone(),
            role: key.role,
            mode: key.mode,
            status: account.status,
            key: CallerKey {
                id: key.id.clone(),
                name: key.name.clone(),
                prefix: key.prefix.clone(),
                start: key.start.clone(),
                scopes,
                tier: account.plan.clone(),
                created_at: key.created_at.into(),
                last_used_at: ts_opt(key.last_used_at),
                expires_at: ts_opt(key.expires_at),
            },
        }
    }
}

/// What an account erasure removed, per kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureCounts {
    /// Accounts deleted (0 or 1).
    pub deleted_accounts: u64,
    /// Keys deleted.
    pub deleted_api_keys: u64,
    /// Audit events deleted.
    pub deleted_events: u64,
    /// Activity rows deleted.
    pub deleted_activity: u64,
    /// Usage counters deleted.
    pub deleted_usage: u64,
    /// Grants deleted.
    pub deleted_grants: u64,
}

impl From<keywarden_store::ErasureCounts> for ErasureCounts {
    fn from(c: keywarden_store::ErasureCounts) -> Self {
        ErasureCounts {
            deleted_accounts: c.deleted_accounts,
            deleted_api_keys: c.deleted_api_keys,
            deleted_events: c.deleted_events,
            deleted_activity: c.deleted_activity,
            deleted_usage: c.deleted_usage,
            deleted_grants: c.deleted_grants,
        }
    }
}

/// An account as the admin API returns it after creating, changing or approving it: when
/// that made the account's default keys (`keys.default_sets`), they come with it, each with
/// its secret shown this once.
// No `Debug`: it holds a secret.
#[derive(Serialize, ToSchema)]
pub struct AccountWithKeys {
    /// The account.
    #[serde(flatten)]
    pub account: Account,
    /// The default keys just made, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub keys: Option<Vec<ApiKeyWithSecret>>,
}

impl AccountWithKeys {
    /// An account with the keys of its default set just made (none: no `keys`).
    pub fn new(a: &model::Account, keys: &[(model::KeyRecord, Secret)]) -> Self {
        AccountWithKeys {
            account: a.into(),
            keys: (!keys.is_empty()).then(|| {
                keys.iter()
                    .map(|(rec, token)| ApiKeyWithSecret::new(rec, token))
                    .collect()
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Keys.

/// A key's metadata. Never its secret; `key_hash` is a public fingerprint, not the stored hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    /// `key_` + ULID.
    #[schema(example = "key_01JQ2Z5V7X9Y0ABCDEFGHJKMNP")]
    pub id: String,
    /// The owning account.
    pub account_id: String,
    /// Live or test; fixed at creation.
    #[schema(value_type = keywarden_core::model::Mode)]
    pub mode: Mode,
    /// Secret or publishable; fixed at creation.
    #[serde(rename = "type")]
    #[schema(value_type = keywarden_core::model::KeyType)]
    pub key_type: KeyType,
    /// Label, 1–100 characters.
    pub name: String,
    /// Where the key is stored.
    pub description: String,
    /// The person responsible.
    pub owner: String,
    /// What the key may manage through the self-service API.
    #[schema(value_type = keywarden_core::model::Role)]
    pub role: Role,
    /// Granted scopes as written (aliases unexpanded).
    pub scopes: Vec<String>,
    /// After this instant the key is refused with `api_key_expired`.
    #[schema(required = true)]
    pub expires_at: Option<Timestamp>,
    /// IPs and CIDRs the key may be used from; empty means any.
    pub ip_allowlist: Vec<String>,
    /// Overrides the plan's rate limit when set.
    #[schema(required = true)]
    pub rate_limit: Option<RateLimit>,
    /// A disabled key is refused with `api_key_disabled` but can be enabled again.
    pub enabled: bool,
    /// Free-form JSON object.
    pub metadata: JsonObject,
    /// The application the key is bound to, if any.
    #[schema(required = true)]
    pub app_id: Option<String>,
    /// The fixed start of the token (`kw_sk_live_`).
    pub prefix: String,
    /// `prefix` + the first random characters: safe to display.
    pub start: String,
    /// `sha256_` + hex SHA-256 of the whole token: a public fingerprint; also accepted in
    /// place of the id.
    pub key_hash: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last successful use (written in batches, up to a second late).
    #[schema(required = true)]
    pub last_used_at: Option<Timestamp>,
    /// Client IP of the last successful use.
    #[schema(required = true)]
    pub last_used_ip: Option<String>,
    /// Set when revoked; a revoked key never works again.
    #[schema(required = true)]
    pub revoked_at: Option<Timestamp>,
    /// Why it was revoked.
    #[schema(required = true)]
    pub revoked_reason: Option<String>,
    /// Until when the secret before the last rotation keeps working.
    #[schema(required = true)]
    pub rotation_grace_until: Option<Timestamp>,
}

impl From<&model::KeyRecord> for ApiKey {
    fn from(k: &model::KeyRecord) -> Self {
        ApiKey {
            id: k.id.clone(),
            account_id: k.account_id.clone(),
            mode: k.mode,
            key_type: k.key_type,
            name: k.name.clone(),
            description: k.description.clone(),
            owner: k.owner.clone(),
            role: k.role,
            scopes: k.scopes.clone(),
            expires_at: ts_opt(k.expires_at),
            ip_allowlist: k.ip_allowlist.clone(),
            rate_limit: k.rate_limit.map(RateLimit::from),
            enabled: k.enabled,
            metadata: JsonObject(k.metadata.clone()),
            app_id: k.app_id.clone(),
            prefix: k.prefix.clone(),
            start: k.start.clone(),
            key_hash: k.key_hash.clone(),
            created_at: k.created_at.into(),
            last_used_at: ts_opt(k.last_used_at),
            last_used_ip: k.last_used_ip.clone(),
            revoked_at: ts_opt(k.revoked_at),
            revoked_reason: k.revoked_reason.clone(),
            rotation_grace_until: ts_opt(k.previous.as_ref().map(|p| p.valid_until)),
        }
    }
}

/// A key's metadata with its new secret (admin creation, rotation). The secret is shown
/// this once and cannot be retrieved again.
// No `Debug`: it holds a secret.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyWithSecret {
    /// The metadata.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The whole token. Store it now: it is never shown again.
    #[schema(example = "kw_sk_live_…")]
    pub api_key: String,
}

impl ApiKeyWithSecret {
    /// A key with its secret.
    pub fn new(k: &model::KeyRecord, token: &Secret) -> Self {
        ApiKeyWithSecret {
            key: k.into(),
            api_key: token.expose().to_string(),
        }
    }
}

/// `POST /v1/api-keys`: the new key, with its secret shown this once.
// No `Debug`: it holds a secret.
#[derive(Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The whole token. Store it now: it is never shown again.
    pub api_key: String,
    /// `key_` + ULID.
    pub id: String,
    /// Public fingerprint, also accepted in place of the id.
    pub key_hash: String,
    /// Label.
    pub name: String,
    /// The fixed start of the token.
    pub prefix: String,
    /// `prefix` + the first random characters.
    pub start: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The caller's mode.
    #[schema(value_type = keywarden_core::model::Mode)]
    pub mode: Mode,
    /// Creation time.
    pub created_at: Timestamp,
    /// Expiry, if any.
    #[schema(required = true)]
    pub expires_at: Option<Timestamp>,
}

impl CreatedApiKey {
    /// A key just made through the self-service API, with its secret.
    pub fn new(k: &model::KeyRecord, token: &Secret) -> Self {
        CreatedApiKey {
            api_key: token.expose().to_string(),
            id: k.id.clone(),
            key_hash: k.key_hash.clone(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            start: k.start.clone(),
            scopes: k.scopes.clone(),
            mode: k.mode,
            created_at: k.created_at.into(),
            expires_at: ts_opt(k.expires_at),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Applications and grants.

/// A third-party integration that accounts can authorise. Never its secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct Application {
    /// `app_` + ULID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Short description of the integration.
    pub description: String,
    /// Public page about the integration.
    #[schema(required = true)]
    pub url: Option<String>,
    /// The scopes the application requests; grants are subsets.
    pub scopes: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

impl From<&model::Application> for Application {
    fn from(a: &model::Application) -> Self {
        Application {
            id: a.id.clone(),
            name: a.name.clone(),
            description: a.description.clone(),
            url: a.url.clone(),
            scopes: a.scopes.clone(),
            created_at: a.created_at.into(),
        }
    }
}

/// An application's two secrets, shown once.
// No `Debug`: it holds a secret.
#[derive(Serialize, ToSchema)]
pub struct ApplicationSecrets {
    /// Goes with live keys.
    pub production: String,
    /// Goes with test keys.
    pub sandbox: String,
}

/// A new application with its secrets, shown this once.
// No `Debug`: it holds a secret.
#[derive(Serialize, ToSchema)]
pub struct CreatedApplication {
    /// The application.
    #[serde(flatten)]
    pub application: Application,
    /// Both secrets. Store them now: they are never shown again.
    pub secrets: ApplicationSecrets,
}

/// An application with the secret of one environment just replaced (shown this once); the
/// old secret stopped working.
// No `Debug`: it holds a secret.
#[derive(Serialize, ToSchema)]
pub struct RotatedApplicationSecret {
    /// The application.
    #[serde(flatten)]
    pub application: Application,
    /// Which secret was replaced.
    #[schema(value_type = keywarden_core::model::AppEnvironment)]
    pub environment: AppEnvironment,
    /// The new secret. Store it now: it is never shown again.
    pub secret: String,
}

/// An account's authorisation of an application for some of the scopes it requested.
#[derive(Debug, Serialize, ToSchema)]
pub struct Grant {
    /// `grt_` + ULID.
    pub id: String,
    /// The authorising account.
    pub account_id: String,
    /// The authorised application.
    pub app_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

impl From<&model::Grant> for Grant {
    fn from(g: &model::Grant) -> Self {
        Grant {
            id: g.id.clone(),
            account_id: g.account_id.clone(),
            app_id: g.app_id.clone(),
            scopes: g.scopes.clone(),
            created_at: g.created_at.into(),
        }
    }
}

/// A new grant with the key made under it (its secret shown this once).
// No `Debug`: it holds a secret.
#[derive(Serialize, ToSchema)]
pub struct IssuedGrant {
    /// The grant.
    #[serde(flatten)]
    pub grant: Grant,
    /// The key made under the grant, with `api_key`.
    pub key: ApiKeyWithSecret,
}

impl From<&crate::manage_apps::IssuedGrant> for IssuedGrant {
    fn from(g: &crate::manage_apps::IssuedGrant) -> Self {
        IssuedGrant {
            grant: (&g.grant).into(),
            key: ApiKeyWithSecret::new(&g.key, &g.api_key),
        }
    }
}

/// A deleted grant and the keys it revoked.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedGrant {
    /// The grant as it was.
    #[serde(flatten)]
    pub grant: Grant,
    /// Always `true`.
    pub deleted: bool,
    /// Ids of the keys made under the grant, revoked at once.
    pub revoked_keys: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Usage, audit, activity.

/// One quota: what a unit used in its current period.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quota {
    /// The unit (`requests`, …).
    pub unit: String,
    /// Consumed this period.
    pub used: u64,
    /// Allowed per period.
    pub limit: u64,
    /// `limit - used`, never below 0.
    pub remaining: u64,
    /// `minute`, `hour`, `day` or `month` (usage reports only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub period: Option<String>,
    /// Start of the current period.
    pub period_start: Timestamp,
    /// End of the current period.
    pub period_end: Timestamp,
}

impl From<&QuotaOutcome> for Quota {
    fn from(q: &QuotaOutcome) -> Self {
        Quota {
            unit: q.unit.clone(),
            used: q.used,
            limit: q.limit,
            remaining: q.remaining,
            period: None,
            period_start: q.period_start.into(),
            period_end: q.period_end.into(),
        }
    }
}

/// Usage of the current periods. For each quota unit there are also top-level
/// `<unit>_used`, `<unit>_limit` and `<unit>_remaining` integers.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    /// The account's plan.
    pub plan: String,
    /// The mode reported on.
    #[schema(value_type = keywarden_core::model::Mode)]
    pub mode: Mode,
    /// Start of the first quota's period (the month when the plan has no quota).
    pub period_start: Timestamp,
    /// End of that period.
    pub period_end: Timestamp,
    /// One entry per quota of the plan.
    pub quotas: Vec<Quota>,
    /// `<unit>_used`, `<unit>_limit`, `<unit>_remaining`.
    #[serde(flatten)]
    pub per_unit: BTreeMap<String, u64>,
}

/// An audit event (append-only).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    /// `evt_` + ULID.
    pub id: String,
    /// `account.created`, `key.rotated`, `key.ip_denied`, …
    #[serde(rename = "type")]
    #[schema(example = "key.created")]
    pub kind: String,
    /// The account concerned, if any.
    #[schema(required = true)]
    pub account_id: Option<String>,
    /// The mode concerned, if any.
    #[schema(required = true, value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// `root`, a key id, or `system`.
    pub actor: String,
    /// Client IP of the request that caused it.
    #[schema(required = true)]
    pub ip: Option<String>,
    /// When it happened.
    pub at: Timestamp,
    /// Event-specific details; never a secret.
    #[schema(value_type = Value)]
    pub data: Value,
}

impl From<&model::AuditEvent> for AuditEvent {
    fn from(e: &model::AuditEvent) -> Self {
        AuditEvent {
            id: e.id.clone(),
            kind: e.kind.clone(),
            account_id: e.account_id.clone(),
            mode: e.mode,
            actor: e.actor.clone(),
            ip: e.ip.clone(),
            at: e.at.into(),
            data: e.data.clone(),
        }
    }
}

/// One request seen with a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct Activity {
    /// When.
    pub at: Timestamp,
    /// Client IP.
    #[schema(required = true)]
    pub ip: Option<String>,
    /// Method of the original request.
    pub method: String,
    /// Path of the original request.
    pub path: String,
    /// Status Keywarden answered.
    pub status: u16,
    /// Decision code.
    pub code: String,
}

impl From<&model::Activity> for Activity {
    fn from(a: &model::Activity) -> Self {
        Activity {
            at: a.at.into(),
            ip: a.ip.clone(),
            method: a.method.clone(),
            path: a.path.clone(),
            status: a.status,
            code: a.code.clone(),
        }
    }
}

/// Each item of a list as its view.
pub fn list<'a, M: 'a, V: From<&'a M>>(items: impl IntoIterator<Item = &'a M>) -> Vec<V> {
    items.into_iter().map(V::from).collect()
}

// ---------------------------------------------------------------------------------------
// Webhooks (docs/webhooks.md).

/// An endpoint on the wire (never its secret).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Webhook {
    /// `whe_` + ULID.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Subscribed event types; `null` for every type.
    pub events: Option<Vec<String>>,
    /// Only this account's events; `null` for every account's.
    pub account_id: Option<String>,
    /// Only this mode's events (and events without a mode); `null` for both.
    #[schema(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// Free text.
    pub description: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why Keywarden disabled it: `gone` (the endpoint answered 410) or `failing`.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed.
    pub failing_since: Option<Timestamp>,
    /// When the previous secret stops signing, during a rotation's overlap.
    pub previous_secret_until: Option<Timestamp>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl From<&keywarden_store::webhooks::WebhookEndpoint> for Webhook {
    fn from(e: &keywarden_store::webhooks::WebhookEndpoint) -> Self {
        Webhook {
            id: e.id.clone(),
            url: e.url.clone(),
            events: e.events.clone(),
            account_id: e.account_id.clone(),
            mode: e.mode,
            description: e.description.clone(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            failing_since: ts_opt(e.failing_since),
            previous_secret_until: ts_opt(e.prev_secret.as_ref().and(e.prev_secret_until)),
            created_at: e.created_at.into(),
            updated_at: e.updated_at.into(),
        }
    }
}

/// An endpoint with its signing secret, shown once (creation, rotation). Its `Debug`
/// leaves the secret out.
#[derive(Clone, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: Webhook,
    /// `whsec_…`: the key for verifying signatures. Shown only now.
    pub secret: String,
}

impl std::fmt::Debug for WebhookWithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookWithSecret")
            .field("endpoint", &self.endpoint)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl From<&keywarden_store::webhooks::WebhookEndpoint> for WebhookWithSecret {
    fn from(e: &keywarden_store::webhooks::WebhookEndpoint) -> Self {
        WebhookWithSecret {
            endpoint: Webhook::from(e),
            secret: e.secret.clone(),
        }
    }
}

/// One attempt of a delivery.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    /// When it was made.
    pub at: Timestamp,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// How long it took.
    pub duration_ms: i64,
    /// The start of the response body (at most `webhooks.max_response_bytes`).
    pub response: String,
    /// Why it failed without a status (timeout, refused address, …).
    pub error: Option<String>,
}

impl From<&keywarden_store::webhooks::WebhookAttempt> for DeliveryAttempt {
    fn from(a: &keywarden_store::webhooks::WebhookAttempt) -> Self {
        DeliveryAttempt {
            at: a.at.into(),
            status: a.status,
            duration_ms: a.duration_ms,
            response: a.response.clone(),
            error: a.error.clone(),
        }
    }
}

/// A delivery in the log.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// `whd_` + ULID.
    pub id: String,
    /// The endpoint.
    pub webhook_id: String,
    /// The event (`evt_…`), sent as `webhook-id`.
    pub event_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: Option<Timestamp>,
    /// The last attempt's HTTP status.
    pub last_status: Option<u16>,
    /// The last attempt's duration.
    pub last_duration_ms: Option<i64>,
    /// The start of the last response body.
    pub last_response: Option<String>,
    /// Why the last attempt failed without a status.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
    /// Every attempt, oldest first (in the log of one endpoint only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<DeliveryAttempt>>,
}

impl From<&keywarden_store::webhooks::WebhookDelivery> for Delivery {
    fn from(d: &keywarden_store::webhooks::WebhookDelivery) -> Self {
        Delivery {
            id: d.id.clone(),
            webhook_id: d.endpoint_id.clone(),
            event_id: d.event_id.clone(),
            kind: d.kind.clone(),
            status: d.status.as_str().into(),
            attempts: d.attempts,
            next_attempt_at: ts_opt(d.next_attempt_at),
            last_status: d.last_status,
            last_duration_ms: d.last_duration_ms,
            last_response: d.last_response.clone(),
            last_error: d.last_error.clone(),
            created_at: d.created_at.into(),
            delivered_at: ts_opt(d.delivered_at),
            attempt_log: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verify.

/// The decision. Always sent with HTTP 200; `status` is what a gateway should answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse {
    /// Whether the request may pass.
    pub valid: bool,
    /// `valid` or the failure code (`docs/decision.md`), as the profile names it.
    #[schema(example = "valid")]
    pub code: String,
    /// The HTTP status a gateway should answer with.
    #[schema(example = 200)]
    pub status: u16,
    /// Human-readable, in the request's language.
    pub message: String,
    /// The key (valid decisions and denials after authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key: Option<VerifyKey>,
    /// The key's account.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account: Option<VerifyAccount>,
    /// The rate limit that applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub ratelimit: Option<RateLimitState>,
    /// The quotas that applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub quotas: Option<Vec<Quota>>,
    /// Seconds to wait before retrying (limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub retry_after: Option<u64>,
}

/// The key of a decision. The configured global key shows only `id` (`global`) and `scopes`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct VerifyKey {
    /// `key_` + ULID, or `global`.
    pub id: String,
    /// Effective scopes.
    pub scopes: Vec<String>,
    /// Label.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// Live or test.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// Secret or publishable.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<keywarden_core::model::KeyType>)]
    pub key_type: Option<KeyType>,
    /// Role.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<keywarden_core::model::Role>)]
    pub role: Option<Role>,
    /// The fixed start of the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub prefix: Option<String>,
    /// `prefix` + the first random characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub start: Option<String>,
    /// Public fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key_hash: Option<String>,
    /// The application the key is bound to (may be `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub app_id: Option<Option<String>>,
    /// Expiry (may be `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Timestamp>)]
    pub expires_at: Option<Option<Timestamp>>,
    /// The key's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub metadata: Option<JsonObject>,
}

impl VerifyKey {
    /// A stored key of a decision, with its effective scopes.
    pub fn new(k: &CompiledKey, scopes: Vec<String>) -> Self {
        VerifyKey {
            id: k.id().to_string(),
            scopes,
            name: Some(k.name().to_string()),
            mode: Some(k.mode),
            key_type: Some(k.key_type),
            role: Some(k.role),
            prefix: Some(k.prefix().to_string()),
            start: Some(k.start().to_string()),
            key_hash: Some(k.key_hash()),
            app_id: Some(k.app_id().map(str::to_string)),
            expires_at: Some(ts_opt(k.expires_at)),
            metadata: Some(JsonObject(k.metadata())),
        }
    }

    /// The configured global key: only `id` and `scopes`.
    pub fn global() -> Self {
        VerifyKey {
            id: "global".into(),
            scopes: vec!["*".into()],
            ..VerifyKey::default()
        }
    }
}

/// The account of a decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyAccount {
    /// `acc_` + ULID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Plan.
    pub plan: String,
    /// Status.
    #[schema(value_type = keywarden_core::model::AccountStatus)]
    pub status: AccountStatus,
}

impl From<&model::Account> for VerifyAccount {
    fn from(a: &model::Account) -> Self {
        VerifyAccount {
            id: a.id.clone(),
            name: a.name.clone(),
            plan: a.plan.clone(),
            status: a.status,
        }
    }
}

/// The rate limit of a decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitState {
    /// Requests per window.
    pub limit: u64,
    /// Requests left now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// The window in seconds.
    pub window: u64,
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok` (process up) or `ready` (store reachable).
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ms = 1_774_000_800_123;
        let s = ts(ms);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_ts(&s).unwrap(), ms);
        assert!(parse_ts("yesterday").unwrap_err().contains("RFC 3339"));
    }

    /// The values a documented enum lists.
    fn documented<T: utoipa::PartialSchema>() -> Vec<String> {
        let schema = serde_json::to_value(T::schema()).unwrap();
        schema["enum"]
            .as_array()
            .expect("an enum schema")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// The values the model's enum sends.
    fn sent<T: serde::Serialize>(all: &[T]) -> Vec<String> {
        all.iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn documented_enums_list_what_the_model_sends() {
        assert_eq!(documented::<Mode>(), sent(Mode::ALL));
        assert_eq!(documented::<KeyType>(), sent(KeyType::ALL));
        assert_eq!(documented::<Role>(), sent(Role::ALL));
        assert_eq!(documented::<AccountStatus>(), sent(AccountStatus::ALL));
        assert_eq!(documented::<AppEnvironment>(), sent(AppEnvironment::ALL));
    }
}

/// Decision counts by outcome over time (`docs/analytics.md`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsReport {
    /// `minute`, `hour` or `day`.
    pub granularity: &'static str,
    /// The first bucket's start.
    pub from: Timestamp,
    /// The end of the last bucket.
    pub to: Timestamp,
    /// The account counted (none: the whole deployment).
    #[schema(required = true)]
    pub account_id: Option<String>,
    /// The key counted (none: every key of the account, or the deployment).
    #[schema(required = true)]
    pub key_id: Option<String>,
    /// The mode counted (none: both).
    #[schema(required = true, value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<Mode>,
    /// Each bucket from `from` to `to`, empty ones included.
    pub buckets: Vec<AnalyticsBucket>,
    /// Counts per outcome code over the whole range.
    pub totals: BTreeMap<String, u64>,
    /// All decisions over the whole range.
    pub total: u64,
}

/// One bucket of an [`AnalyticsReport`].
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsBucket {
    /// The bucket's start.
    pub start: Timestamp,
    /// Decisions per outcome code (`valid`, `rate_limit_exceeded`, …); codes with none are
    /// left out.
    pub counts: BTreeMap<String, u64>,
    /// All decisions in the bucket.
    pub total: u64,
}

/// A single-use portal link (`docs/console.md#the-customer-portal`).
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalSession {
    /// Open it once, within minutes, to start a portal session for the account.
    pub url: String,
    /// After this instant the link is refused.
    pub expires_at: Timestamp,
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn styles_write_utc_as_configured() {
        let t = 1_774_000_800_123; // 2026-03-20T10:00:00.123Z
        let style = |o, p| TimestampStyle::parse(o, p).unwrap();
        assert_eq!(style("Z", "ms").format(t), "2026-03-20T10:00:00.123Z");
        assert_eq!(
            style("+00:00", "ms").format(t),
            "2026-03-20T10:00:00.123+00:00"
        );
        assert_eq!(style("+00:00", "s").format(t), "2026-03-20T10:00:00+00:00");
        assert_eq!(style("Z", "s").format(t), "2026-03-20T10:00:00Z");
        assert_eq!(ts(t), "2026-03-20T10:00:00.123Z");
        assert_eq!(
            TimestampStyle::parse("+01:00", "s").unwrap_err().0,
            "server.timestamp_offset"
        );
        assert_eq!(
            TimestampStyle::parse("Z", "us").unwrap_err().0,
            "server.timestamp_precision"
        );
    }

    #[tokio::test]
    async fn a_request_scope_sets_the_style() {
        let style = TimestampStyle {
            offset: true,
            seconds: true,
        };
        let inside = with_timestamp_style(style, async { ts(1_774_000_800_999) }).await;
        assert_eq!(inside, "2026-03-20T10:00:00+00:00");
    }
}
