//! The configuration file (`docs/configuration.md`): its schema, environment overrides, validation
//! messages that name the field, and the redacted view `keywarden config check` prints.
//!
//! Loading happens in three steps: read the TOML file (or nothing), overlay every
//! `KEYWARDEN_<SECTION>__<FIELD>` variable and the short forms (`KEYWARDEN_ROOT_KEY`, …),
//! then deserialize with unknown fields refused. [`crate::settings::Settings::from_config`]
//! then compiles what the request path needs (template, catalog, routes, plans).

use keywarden_core::limits::QuotaSpec;
use keywarden_core::model::Role;
use keywarden_core::routes::{DefaultRoute, RouteConfig};
use keywarden_core::scopes::CatalogEntry;
use keywarden_store::defaults;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and network trust.
    pub server: ServerConfig,
    /// Where state lives.
    pub store: StoreConfig,
    /// How keys are presented and how failures are punished.
    pub auth: AuthConfig,
    /// Key format and hashing.
    pub keys: KeysConfig,
    /// The scope catalog and aliases.
    pub scopes: ScopesConfig,
    /// How errors look.
    pub errors: ErrorsConfig,
    /// Plans and their limits.
    pub plans: PlansConfig,
    /// Route rules for forward-auth and the gateway, first match wins.
    pub routes: Vec<RouteConfig>,
    /// What an unmatched request needs: a valid key (`authenticated`) or nothing (`deny`).
    pub default_route: DefaultRoute,
    /// Whether route paths match case-sensitively; by default `/ADMIN/x` matches a rule
    /// for `/admin/**`, as a case-insensitive upstream would serve it (`docs/routes.md`).
    pub case_sensitive_paths: bool,
    /// Gateway mode.
    pub gateway: GatewayConfig,
    /// Which proxy asks `/v1/forward-auth`, and so which headers describe the request.
    pub forward_auth: ForwardAuthConfig,
    /// Leaked keys: secret-scanning reports and what they do (docs/leaked-keys.md).
    pub leaks: LeaksConfig,
    /// New accounts.
    pub accounts: AccountsConfig,
    /// Which self-service endpoints are served and how some of their fields read.
    pub self_service: SelfServiceConfig,
    /// Webhooks: signed notifications of events (docs/webhooks.md).
    pub webhooks: WebhooksConfig,
}

/// `[accounts]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsConfig {
    /// The status of accounts created without one: `active`, or `pending` when accounts
    /// wait for the operator's approval (`POST /v1/admin/accounts/{id}/approve`) before
    /// they may have live keys.
    pub default_status: keywarden_core::model::AccountStatus,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            default_status: keywarden_core::model::AccountStatus::Active,
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The public listener (self-service API, gateway traffic).
    pub public_listen: String,
    /// The admin listener (admin API, verify, forward-auth, metrics); keep it private.
    pub admin_listen: String,
    /// CIDRs whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Switch the whole API off (every verification answers `api_disabled`).
    pub api_enabled: bool,
    /// Base path of the self-service API.
    pub base_path: String,
    /// Root keys. Usually from `KEYWARDEN_ROOT_KEY` (comma-separated), never logged.
    pub root_keys: Vec<String>,
    /// A request's head must arrive within this many ms of the connection opening or of its
    /// previous response (so an HTTP/1.1 keep-alive connection idle this long is closed).
    pub header_read_timeout_ms: u64,
    /// A connection handling no request that moves no byte for this many ms is closed
    /// (HTTP/2 included).
    pub idle_timeout_ms: u64,
    /// At most this many open connections on the public listener; more are closed at once.
    pub max_connections: usize,
    /// At most this many open connections on the admin listener, counted apart, so a flood
    /// of the public listener leaves the admin one serving.
    pub admin_max_connections: usize,
    /// How timestamps in answers mark UTC: `"Z"` (`2026-03-20T10:00:00Z`) or `"+00:00"`.
    pub timestamp_offset: String,
    /// `"ms"`: milliseconds shown when there are any; `"s"`: whole seconds always.
    pub timestamp_precision: String,
    /// How customers reach the public listener, for portal links (`docs/console.md`);
    /// empty: `http://` + `public_listen`.
    pub public_url: String,
    /// Mark the console's and the portal's session cookies `Secure` (set it when a TLS
    /// proxy serves them).
    pub secure_cookies: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            public_listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            trusted_proxies: Vec::new(),
            api_enabled: true,
            base_path: "/v1".into(),
            root_keys: Vec::new(),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            admin_max_connections: 1_000,
            timestamp_offset: "Z".into(),
            timestamp_precision: "ms".into(),
            public_url: String::new(),
            secure_cookies: false,
        }
    }
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://keywarden.db` (default, in the working directory) or `postgres://…`.
    pub database_url: String,
    /// Optional Redis for limits shared by every replica.
    pub redis_url: String,
    /// The start of every Redis key name, so several deployments can share one server.
    pub redis_prefix: String,
    /// The longest a limit check waits for Redis before deciding in process, in ms.
    pub redis_timeout_ms: u64,
    /// The HMAC pepper. Usually from `KEYWARDEN_PEPPER`; never logged.
    pub pepper: String,
    /// A file holding the pepper. With the embedded store and no pepper configured, one is
    /// generated beside the database on first start.
    pub pepper_file: String,
    /// Earlier peppers, tried on a miss; a hit is re-hashed under the current pepper.
    pub previous_peppers: Vec<String>,
    /// Verified key records are cached at most this long (a backstop: local writes
    /// invalidate at once).
    pub cache_ttl_seconds: u64,
    /// At most this many cached key records.
    pub cache_max_keys: u64,
    /// Keep at most this many activity rows per key.
    pub activity_retain_per_key: u32,
    /// The longest a call waits for the database, in ms: each statement, the wait for a
    /// connection, and the whole call (ten times this for calls that write many rows).
    /// Past it the caller gets 503 `service_unavailable`.
    pub timeout_ms: u64,
    /// Usage is written at least this often, in ms (1 to 1000): in the batched mode, the
    /// most a crash can lose of it (`docs/usage-durability.md`).
    pub usage_flush_ms: u64,
    /// `batched` (default): usage is written within `usage_flush_ms`, off the request path.
    /// `strict`: a request that consumes quota is answered only once its usage is committed.
    pub usage_durability: String,
    /// Days of daily decision counts kept for analytics (`docs/analytics.md`); minute
    /// buckets are kept two days and hourly ones 31, neither longer than this.
    pub analytics_retention_days: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: defaults::DATABASE_URL.into(),
            redis_url: String::new(),
            redis_prefix: "kw".into(),
            redis_timeout_ms: 250,
            pepper: String::new(),
            pepper_file: String::new(),
            previous_peppers: Vec::new(),
            cache_ttl_seconds: 60,
            cache_max_keys: 1_000_000,
            activity_retain_per_key: 1000,
            timeout_ms: 2_000,
            usage_flush_ms: 100,
            usage_durability: "batched".into(),
            analytics_retention_days: 400,
        }
    }
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Where a key may be presented, in order: `bearer`, `header:NAME`, `query:NAME`.
    pub sources: Vec<String>,
    /// When set, keys bound to an application also need its secret in this header.
    pub app_secret_header: String,
    /// The environment variable holding full-access global keys (comma-separated).
    pub global_keys_env: String,
    /// The environment variable holding the token that `POST /v1/verify` and forward-auth
    /// accept in place of a root key.
    pub verify_token_env: String,
    /// Per-IP lockout after repeated failures.
    pub lockout: LockoutConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            sources: vec!["bearer".into(), "header:X-API-Key".into()],
            app_secret_header: String::new(),
            global_keys_env: String::new(),
            verify_token_env: String::new(),
            lockout: LockoutConfig::default(),
        }
    }
}

/// `[auth.lockout]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutConfig {
    /// Failures that lock an IP (0 switches the lockout off).
    pub max_failures: u32,
    /// Within this many seconds.
    pub window_seconds: u64,
    /// For this many seconds.
    pub lock_seconds: u64,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            max_failures: 20,
            window_seconds: 300,
            lock_seconds: 300,
        }
    }
}

/// `[keys]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// The template new keys are made from.
    pub template: String,
    /// Templates still accepted on verify.
    pub legacy_templates: Vec<String>,
    /// Tags `{mode}` expands to.
    pub mode_tags: ModeTags,
    /// Tags `{type}` expands to.
    pub type_tags: TypeTags,
    /// `hmac-sha256`, `sha256`, `bcrypt` or `argon2id`.
    pub hash: String,
    /// bcrypt's cost factor.
    pub bcrypt_cost: u32,
    /// How long a successful slow-hash check is remembered in memory.
    pub slow_hash_cache_ttl_seconds: u64,
    /// How many slow-hash checks may run at once.
    pub slow_hash_concurrency: usize,
    /// Scopes a key gets when created without any.
    pub default_scopes: Vec<String>,
    /// The longest grace period a rotation may ask for.
    pub max_grace_period_seconds: u64,
    /// Creating an account makes a publishable + secret test pair; approving it, the live pair.
    pub default_sets: bool,
    /// Store test secrets encrypted so they can be revealed again.
    pub recoverable_test_secrets: bool,
    /// The environment variable holding the master key that seals recoverable test
    /// secrets (32 bytes as 64 hex characters or base64; never the pepper).
    pub master_key_env: String,
    /// A file holding that master key instead (takes precedence over the variable).
    pub master_key_file: String,
    /// Every key must belong to an application: a key made without `app_id` is refused,
    /// and a key bound to none fails verification with `invalid_api_key`.
    pub require_app: bool,
    /// What a key given an empty scope list holds: `none` (nothing), or `default`
    /// (`default_scopes`, its type's defaults), so clearing a key's restrictions makes it
    /// unrestricted again when the defaults are `["*"]`.
    pub empty_scopes: EmptyScopes,
    /// The roles a secret key may be given; creating, importing or changing a key to any
    /// other is refused. Must include `owner`, the role of a key made without one.
    pub allowed_roles: Vec<Role>,
}

/// `keys.empty_scopes`: what an empty scope list on a key means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyScopes {
    /// No scope at all.
    #[default]
    None,
    /// The defaults a key gets when created without scopes.
    Default,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            template: defaults::TEMPLATE.into(),
            legacy_templates: Vec::new(),
            mode_tags: ModeTags::default(),
            type_tags: TypeTags::default(),
            hash: "hmac-sha256".into(),
            bcrypt_cost: 12,
            slow_hash_cache_ttl_seconds: 60,
            slow_hash_concurrency: 4,
            default_scopes: vec!["*".into()],
            max_grace_period_seconds: 604_800,
            default_sets: false,
            recoverable_test_secrets: false,
            master_key_env: "KEYWARDEN_MASTER_KEY".into(),
            master_key_file: String::new(),
            require_app: false,
            empty_scopes: EmptyScopes::None,
            allowed_roles: Role::ALL.to_vec(),
        }
    }
}

/// `[keys.mode_tags]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModeTags {
    /// Tag of live keys.
    pub live: String,
    /// Tag of test keys.
    pub test: String,
}

impl Default for ModeTags {
    fn default() -> Self {
        Self {
            live: "live".into(),
            test: "test".into(),
        }
    }
}

/// `[keys.type_tags]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TypeTags {
    /// Tag of secret keys.
    pub secret: String,
    /// Tag of publishable keys.
    pub publishable: String,
}

impl Default for TypeTags {
    fn default() -> Self {
        Self {
            secret: "sk".into(),
            publishable: "pk".into(),
        }
    }
}

/// `[scopes]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopesConfig {
    /// Whether `*` grants everything.
    pub allow_super_scope: bool,
    /// The closed catalog (built-in platform scopes are always added).
    pub catalog: Vec<CatalogEntry>,
    /// Alias → members (`?` marks an optional member).
    pub aliases: BTreeMap<String, Vec<String>>,
}

impl Default for ScopesConfig {
    fn default() -> Self {
        Self {
            allow_super_scope: true,
            catalog: Vec::new(),
            aliases: BTreeMap::new(),
        }
    }
}

/// `[errors]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `envelope`, `problem` or `detail`.
    pub style: String,
    /// A link template with `{code}`, added to error bodies.
    pub doc_url: String,
    /// `en` or `es`; `Accept-Language` chooses per request.
    pub locale: String,
    /// Code → new wire name.
    pub rename: BTreeMap<String, String>,
    /// Code → HTTP status.
    pub status: BTreeMap<String, u16>,
    /// Language → code → message, in place of the built-in message of that code.
    pub messages: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            style: "envelope".into(),
            doc_url: String::new(),
            locale: "en".into(),
            rename: BTreeMap::new(),
            status: BTreeMap::new(),
            messages: BTreeMap::new(),
        }
    }
}

/// `[plans]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlansConfig {
    /// The plan of accounts created without one.
    pub default: String,
    /// Plan name → plan.
    pub tiers: BTreeMap<String, PlanConfig>,
}

impl Default for PlansConfig {
    fn default() -> Self {
        // With no `[plans]` at all, one tier with the limits of the documented example.
        let default_tier = PlanConfig {
            max_keys: Some(defaults::PLAN_MAX_KEYS),
            requests_per_minute: Some(defaults::PLAN_REQUESTS_PER_MINUTE),
            concurrency: Some(defaults::PLAN_CONCURRENCY),
            quotas: Vec::new(),
            features: Vec::new(),
        };
        Self {
            default: defaults::PLAN.into(),
            tiers: BTreeMap::from([(defaults::PLAN.to_string(), default_tier)]),
        }
    }
}

/// `[plans.tiers.NAME]`. A limit that is omitted is unlimited.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanConfig {
    /// Active keys allowed (0 = API keys not allowed; omitted = unlimited).
    pub max_keys: Option<u64>,
    /// Requests per minute per key (omitted = unlimited).
    pub requests_per_minute: Option<u32>,
    /// Requests in flight per key through the gateway (omitted = unlimited).
    pub concurrency: Option<u32>,
    /// Quotas per unit and period.
    pub quotas: Vec<QuotaSpec>,
    /// Feature flags, reported to callers.
    pub features: Vec<String>,
}

/// `[gateway]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The upstream base URL; empty = no gateway.
    pub upstream: String,
    /// How long the upstream may take to answer.
    pub timeout_seconds: u64,
    /// How long connecting to the upstream may take.
    pub connect_timeout_seconds: u64,
    /// What happens to method overrides (`X-HTTP-Method-Override`, `X-Method-Override`,
    /// `X-HTTP-Method`, `?_method=`): `strip` or `decide` (`docs/gateway.md`).
    pub method_override: MethodOverride,
}

/// `gateway.method_override`: what the gateway does with a request that names another
/// method than its own in a method-override header or a `_method` query parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Remove the overrides before forwarding, and decide on the request's own method.
    #[default]
    Strip,
    /// Decide on the method the overrides name (all must agree), and forward them as sent:
    /// for an upstream that honours every one of them.
    Decide,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            upstream: String::new(),
            timeout_seconds: 30,
            connect_timeout_seconds: 5,
            method_override: MethodOverride::Strip,
        }
    }
}

/// `[forward_auth]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// The proxy whose convention describes the original request; only its headers are
    /// read (see `docs/integrations/README.md`).
    pub convention: ProxyConvention,
}

/// How a proxy tells `/v1/forward-auth` which request it asks about. Each reads its own
/// headers only: another proxy's are ignored, since a client may send them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyConvention {
    /// nginx `auth_request`: `X-Original-Method` and `X-Original-URI` (the shipped recipe).
    #[default]
    Nginx,
    /// Traefik ForwardAuth: `X-Forwarded-Method` and `X-Forwarded-Uri`.
    Traefik,
    /// Envoy ext_authz (HTTP service): the request's own method, and its own path after
    /// `/v1/forward-auth` (`path_prefix`).
    Envoy,
}

/// `[leaks]` (docs/leaked-keys.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaksConfig {
    /// GitHub's secret-scanning public keys, in the shape of GitHub's meta endpoint
    /// (`{"public_keys": [{"key_identifier", "key", "is_current"}]}`); re-read within 5 s of
    /// a change. Empty = `POST /v1/secret-scanning/github` refuses every report.
    pub github_public_keys_file: String,
    /// The environment variable holding the token GitLab presents to
    /// `/v1/revocable_token_types` and `/v1/revoke_tokens`. Empty or unset = both refuse.
    pub gitlab_token_env: String,
    /// The token type names reports may use (registered with GitHub and GitLab).
    pub token_types: Vec<String>,
    /// What a leaked live key gets: `revoke` (with reason `leaked`) or `notify` (the
    /// `key.leaked` event only).
    pub action_live: LeakAction,
    /// What a leaked test key gets.
    pub action_test: LeakAction,
}

impl Default for LeaksConfig {
    fn default() -> Self {
        Self {
            github_public_keys_file: String::new(),
            gitlab_token_env: String::new(),
            token_types: vec!["keywarden_api_key".into()],
            action_live: LeakAction::Revoke,
            action_test: LeakAction::Revoke,
        }
    }
}

/// `[webhooks]` (docs/webhooks.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Whether this process sends deliveries and raises derived events (`key.expiring`,
    /// `quota.threshold`, …). Events are queued for endpoints whatever this says.
    pub enabled: bool,
    /// Allow endpoints on loopback, private, link-local and metadata addresses.
    pub allow_private_networks: bool,
    /// Delays in seconds before each retry of a live-mode event (and of events without a
    /// mode) after a failed attempt; each is stretched or shrunk by up to 20 % at random.
    pub retry_schedule_seconds_live: Vec<u64>,
    /// The same for test-mode events.
    pub retry_schedule_seconds_test: Vec<u64>,
    /// How long one attempt may take, connection included.
    pub timeout_seconds: u64,
    /// How much of a response body is read and kept in the delivery log.
    pub max_response_bytes: usize,
    /// How often the outbox is polled for due deliveries.
    pub poll_interval_ms: u64,
    /// Most attempts in flight at once in this process.
    pub concurrency: usize,
    /// Most attempts in flight to one endpoint at once, counted over every process on the
    /// database, so a slow endpoint leaves room for the others; `None` for a quarter of
    /// `concurrency` (at least 1). See [`WebhooksConfig::per_endpoint`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_endpoint_concurrency: Option<usize>,
    /// An endpoint whose every attempt has failed for this long is disabled (and a
    /// `webhook.disabled` event says so).
    pub disable_after_failing_hours: u64,
    /// How long the previous secret keeps signing after a rotation.
    pub secret_overlap_hours: u64,
    /// How often expiring keys and quota thresholds are looked for.
    pub scan_interval_seconds: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_private_networks: false,
            // About 72 hours in all.
            retry_schedule_seconds_live: vec![
                5, 300, 1_800, 7_200, 18_000, 36_000, 36_000, 36_000, 36_000, 36_000, 36_000,
                14_400,
            ],
            // Three attempts over about three hours.
            retry_schedule_seconds_test: vec![5, 10_800],
            timeout_seconds: 10,
            max_response_bytes: 4_096,
            poll_interval_ms: 1_000,
            concurrency: 32,
            per_endpoint_concurrency: None,
            disable_after_failing_hours: 120,
            secret_overlap_hours: 24,
            scan_interval_seconds: 60,
        }
    }
}

impl WebhooksConfig {
    /// Most attempts in flight to one endpoint at once: `per_endpoint_concurrency`, or a
    /// quarter of `concurrency` (at least 1); never more than `concurrency`.
    pub fn per_endpoint(&self) -> usize {
        let all = self.concurrency.max(1);
        self.per_endpoint_concurrency
            .unwrap_or(all / 4)
            .clamp(1, all)
    }
}

/// What happens to a key found leaked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Revoke it at once (reason `leaked`) and record `key.leaked`.
    #[default]
    Revoke,
    /// Only record `key.leaked`; the key keeps working.
    Notify,
}

/// `[self_service]` (docs/configuration.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfServiceConfig {
    /// The endpoint groups served under `server.base_path`: `account`, `account_write`,
    /// `usage` (with `/analytics`), `erase`, `api_keys`, `events`, `grants`, `webhooks`, `portal` (the
    /// customer portal's pages). A path of a group left out is not
    /// Keywarden's: in gateway mode it goes to the upstream, else it is 404.
    pub endpoints: Vec<String>,
    /// Top-level field name → the name self-service answers use instead
    /// (e.g. `deleted_api_keys = "deleted_api_key"`).
    pub rename: BTreeMap<String, String>,
    /// What `period_end` in usage answers shows: `next_start` (the first instant of the next
    /// period) or `last_second` (the period's last whole second).
    pub period_end: String,
    /// Answer (one of [`SELF_SERVICE_ANSWERS`]) → the only top-level fields it shows, by
    /// their names before `rename`; an answer not named shows every field.
    pub fields: BTreeMap<String, Vec<String>>,
}

/// The self-service answers whose fields `self_service.fields` can choose: `account`
/// (`GET /v1/account`, `PATCH /v1/account`, `PATCH /v1/account/plan`), `api_key` (each key
/// of `GET /v1/api-keys`, and `GET /v1/api-keys/{id}`) and `created_api_key`
/// (`POST /v1/api-keys`).
pub const SELF_SERVICE_ANSWERS: &[&str] = &["account", "api_key", "created_api_key"];

/// Every self-service endpoint group, in the order of `docs/self-service.md`.
pub const SELF_SERVICE_GROUPS: &[&str] = &[
    "account",
    "account_write",
    "usage",
    "erase",
    "api_keys",
    "events",
    "grants",
    "webhooks",
    "portal",
];

impl Default for SelfServiceConfig {
    fn default() -> Self {
        Self {
            endpoints: SELF_SERVICE_GROUPS.iter().map(|g| g.to_string()).collect(),
            rename: BTreeMap::new(),
            period_end: "next_start".into(),
            fields: BTreeMap::new(),
        }
    }
}

/// A configuration problem, naming the field and the reason.
#[derive(Debug, thiserror::Error)]
#[error("config error at {field}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field (`keys.template`), or the file.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Where the config file is: `--config`, else `KEYWARDEN_CONFIG`, else `keywarden.toml`
/// when it exists in the working directory, else none (defaults).
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("KEYWARDEN_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from("keywarden.toml");
    default.exists().then_some(default)
}

impl Config {
    /// Loads the file at `path` (if any) with the process environment laid over it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| {
                ConfigError::new(p.display().to_string(), format!("cannot read: {e}"))
            })?,
            None => String::new(),
        };
        Config::from_parts(&text, &vars)
    }

    /// Parses TOML text (a built-in profile, say) with the process environment laid over
    /// it, as [`Config::load`] does for a file.
    pub fn load_text(text: &str) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Config::from_parts(text, &vars)
    }

    /// Parses TOML text with `vars` (environment pairs) laid over it.
    pub fn from_parts(text: &str, vars: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut root: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::new("config file", e.message().to_string()))?;
        apply_env(&mut root, vars)?;
        let de = toml::Value::Table(root);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let reason = e.inner().message().to_string();
            ConfigError::new(if field == "." { "config".into() } else { field }, reason)
        })
    }

    /// The effective config as TOML with every secret replaced by `"<redacted>"`.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        let redact = |s: &mut String| {
            if !s.is_empty() {
                *s = "<redacted>".into();
            }
        };
        c.server.root_keys.iter_mut().for_each(redact);
        redact(&mut c.store.pepper);
        c.store.previous_peppers.iter_mut().for_each(redact);
        c.store.database_url = redact_url_password(&c.store.database_url);
        c.store.redis_url = redact_url_password(&c.store.redis_url);
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Hides the password of a `scheme://user:password@host/...` URL.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

/// Lays environment variables over the parsed file. `KEYWARDEN_A__B__C=v` sets `a.b.c`;
/// the value is read as a TOML value when it parses as one (`true`, `8080`, `["x"]`) and
/// as a string otherwise. The short forms of `docs/configuration.md` map onto their fields.
fn apply_env(root: &mut toml::Table, vars: &[(String, String)]) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let path: Vec<String> = match name.as_str() {
            "KEYWARDEN_ROOT_KEY" | "KEYWARDEN_ROOT_KEYS" => {
                let keys: Vec<toml::Value> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| toml::Value::String(k.to_string()))
                    .collect();
                set_path(
                    root,
                    &["server", "root_keys"],
                    toml::Value::Array(keys),
                    name,
                )?;
                continue;
            }
            // These are always strings: a pepper of digits only is still a pepper.
            "KEYWARDEN_DATABASE_URL" | "KEYWARDEN_REDIS_URL" | "KEYWARDEN_PEPPER" => {
                let field = match name.as_str() {
                    "KEYWARDEN_DATABASE_URL" => "database_url",
                    "KEYWARDEN_REDIS_URL" => "redis_url",
                    _ => "pepper",
                };
                let value = toml::Value::String(value.clone());
                set_path(root, &["store", field], value, name)?;
                continue;
            }
            _ => match name.strip_prefix("KEYWARDEN_") {
                Some(rest) if rest.contains("__") => {
                    rest.split("__").map(|s| s.to_ascii_lowercase()).collect()
                }
                _ => continue,
            },
        };
        let parsed = parse_env_value(value);
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        set_path(root, &refs, parsed, name)?;
    }
    Ok(())
}

fn parse_env_value(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

fn set_path(
    root: &mut toml::Table,
    path: &[&str],
    value: toml::Value,
    var: &str,
) -> Result<(), ConfigError> {
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| ConfigError::new(var, "empty path"))?;
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| {
            ConfigError::new(
                var,
                format!("{p} is not a table, so it has no fields to set"),
            )
        })?;
    }
    // A string override of a field the file holds as a number or bool keeps the type the
    // schema expects; serde reports a mismatch with the field named.
    table.insert(last.to_string(), value);
    Ok(())
}

/// A commented starting config, written by `keywarden init`.
pub const INIT_TEMPLATE: &str = include_str!("init_template.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// How many attempts a delivery that always fails gets on `schedule`, and how long after
    /// the first its last one is made, each delay shrunk or stretched by `jitter`.
    fn attempts_and_span_hours(schedule: &[u64], jitter: f64) -> (u32, f64) {
        let mut attempts = 1;
        let mut span_ms = 0_i64;
        while let Some(d) = keywarden_core::webhooks::retry_delay_ms(schedule, attempts, jitter) {
            span_ms += d;
            attempts += 1;
        }
        (attempts, span_ms as f64 / 3_600_000.0)
    }

    #[test]
    fn default_retries_last_about_72_hours_live_and_3_attempts_over_hours_in_test() {
        let w = Config::from_parts("", &[]).unwrap().webhooks;
        // Live: the first retry about 5 s after a failure, the last about 72 h after the
        // first attempt, whatever the jitter draws.
        assert_eq!(w.retry_schedule_seconds_live[0], 5);
        let (attempts, hours) = attempts_and_span_hours(&w.retry_schedule_seconds_live, 0.0);
        assert_eq!(attempts, 13);
        assert!((70.0..=74.0).contains(&hours), "{hours} h");
        let (_, short) = attempts_and_span_hours(&w.retry_schedule_seconds_live, -0.2);
        let (_, long) = attempts_and_span_hours(&w.retry_schedule_seconds_live, 0.2);
        assert!(short >= 57.0 && long <= 87.0, "{short} h to {long} h");
        // Test: three attempts in all, over a few hours.
        assert_eq!(w.retry_schedule_seconds_test[0], 5);
        let (attempts, hours) = attempts_and_span_hours(&w.retry_schedule_seconds_test, 0.0);
        assert_eq!(attempts, 3);
        assert!((2.0..=4.0).contains(&hours), "{hours} h");
        let (_, long) = attempts_and_span_hours(&w.retry_schedule_seconds_test, 0.2);
        assert!(long <= 4.0, "{long} h");
    }

    #[test]
    fn one_endpoint_may_use_a_quarter_of_the_attempts_unless_set() {
        let w = |toml: &str| Config::from_parts(toml, &[]).unwrap().webhooks;
        assert_eq!(w("").per_endpoint(), 8);
        assert_eq!(w("[webhooks]\nconcurrency = 2\n").per_endpoint(), 1);
        assert_eq!(w("[webhooks]\nconcurrency = 10\n").per_endpoint(), 2);
        let set = w("[webhooks]\nconcurrency = 10\nper_endpoint_concurrency = 10\n");
        assert_eq!(set.per_endpoint(), 10);
        let c = Config::from_parts(
            "",
            &env(&[("KEYWARDEN_WEBHOOKS__PER_ENDPOINT_CONCURRENCY", "3")]),
        )
        .unwrap();
        assert_eq!(c.webhooks.per_endpoint(), 3);
    }

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::from_parts("", &[]).unwrap();
        assert_eq!(c.server.public_listen, "127.0.0.1:8080");
        assert_eq!(c.store.database_url, "sqlite://keywarden.db");
        assert_eq!(c.keys.template, "kw_{type}_{mode}_{random:32}{checksum}");
        assert_eq!(c.auth.lockout.max_failures, 20);
    }

    #[test]
    fn env_overrides_and_short_forms() {
        let c = Config::from_parts(
            "[server]\npublic_listen = \"0.0.0.0:1\"\n",
            &env(&[
                ("KEYWARDEN_SERVER__PUBLIC_LISTEN", "127.0.0.1:9999"),
                ("KEYWARDEN_ROOT_KEY", "root-one, root-two"),
                ("KEYWARDEN_DATABASE_URL", "postgres://u:p@h/db"),
                ("KEYWARDEN_AUTH__LOCKOUT__MAX_FAILURES", "5"),
                ("KEYWARDEN_SERVER__API_ENABLED", "false"),
                ("KEYWARDEN_AUTH__SOURCES", "[\"header:X-Auth-Token\"]"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.public_listen, "127.0.0.1:9999");
        assert_eq!(c.server.root_keys, vec!["root-one", "root-two"]);
        assert_eq!(c.store.database_url, "postgres://u:p@h/db");
        assert_eq!(c.auth.lockout.max_failures, 5);
        assert!(!c.server.api_enabled);
        assert_eq!(c.auth.sources, vec!["header:X-Auth-Token"]);
    }

    #[test]
    fn short_forms_are_strings_even_when_they_look_like_numbers() {
        let c = Config::from_parts("", &env(&[("KEYWARDEN_PEPPER", "1234567890123456")])).unwrap();
        assert_eq!(c.store.pepper, "1234567890123456");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_parts("[server]\npublic_lisen = \"x\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("public_lisen"), "{e}");
        let e = Config::from_parts("[auth.lockout]\nmax_failures = \"many\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "auth.lockout.max_failures", "{e}");
        let e =
            Config::from_parts("", &env(&[("KEYWARDEN_KEYS__BCRYPT_COST", "high")])).unwrap_err();
        assert_eq!(e.field, "keys.bcrypt_cost", "{e}");
    }

    #[test]
    fn omitted_plan_limits_are_unlimited() {
        let c = Config::from_parts("[plans.tiers.free]\nmax_keys = 0\n", &[]).unwrap();
        let free = &c.plans.tiers["free"];
        assert_eq!(free.max_keys, Some(0));
        assert_eq!(free.requests_per_minute, None);
        assert_eq!(free.concurrency, None);
        let c = Config::from_parts("", &[]).unwrap();
        assert_eq!(c.plans.tiers["default"].requests_per_minute, Some(600));
    }

    #[test]
    fn redaction_hides_every_secret() {
        let c = Config::from_parts(
            "",
            &env(&[
                ("KEYWARDEN_ROOT_KEY", "rootsecret"),
                ("KEYWARDEN_PEPPER", "peppersecret"),
                ("KEYWARDEN_DATABASE_URL", "postgres://user:dbsecret@host/db"),
            ]),
        )
        .unwrap();
        let out = c.redacted_toml();
        for s in ["rootsecret", "peppersecret", "dbsecret"] {
            assert!(!out.contains(s), "{s} leaked:\n{out}");
        }
        assert!(out.contains("<redacted>"));
    }

    #[test]
    fn route_matching_and_method_override_options() {
        let c = Config::from_parts("", &[]).unwrap();
        assert!(!c.case_sensitive_paths);
        assert_eq!(c.gateway.method_override, MethodOverride::Strip);
        let c = Config::from_parts(
            "case_sensitive_paths = true\n[gateway]\nmethod_override = \"decide\"\n",
            &env(&[]),
        )
        .unwrap();
        assert!(c.case_sensitive_paths);
        assert_eq!(c.gateway.method_override, MethodOverride::Decide);
        let c = Config::from_parts(
            "",
            &env(&[("KEYWARDEN_GATEWAY__METHOD_OVERRIDE", "decide")]),
        )
        .unwrap();
        assert_eq!(c.gateway.method_override, MethodOverride::Decide);
        let e = Config::from_parts("[gateway]\nmethod_override = \"honour\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "gateway.method_override", "{e}");
    }

    #[test]
    fn new_accounts_status_and_required_applications() {
        let c = Config::from_parts("", &[]).unwrap();
        assert_eq!(
            c.accounts.default_status,
            keywarden_core::model::AccountStatus::Active
        );
        assert!(!c.keys.require_app);
        let c = Config::from_parts(
            "[accounts]\ndefault_status = \"pending\"\n[keys]\nrequire_app = true\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.accounts.default_status,
            keywarden_core::model::AccountStatus::Pending
        );
        assert!(c.keys.require_app);
        let c = Config::from_parts(
            "",
            &env(&[("KEYWARDEN_ACCOUNTS__DEFAULT_STATUS", "suspended")]),
        )
        .unwrap();
        assert_eq!(
            c.accounts.default_status,
            keywarden_core::model::AccountStatus::Suspended
        );
        let e = Config::from_parts("[accounts]\ndefault_status = \"waiting\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "accounts.default_status", "{e}");
    }

    #[test]
    fn init_template_parses() {
        Config::from_parts(INIT_TEMPLATE, &[]).unwrap();
    }

    /// `keywarden init` writes what a configuration without those lines would mean, and the
    /// embedded layer's builder starts from the same: one set of defaults.
    #[test]
    fn init_template_config_defaults_and_the_builder_agree() {
        let written = Config::from_parts(INIT_TEMPLATE, &[]).unwrap();
        let omitted = Config::default();
        for c in [&written, &omitted] {
            assert_eq!(c.store.database_url, defaults::DATABASE_URL);
            assert_eq!(c.keys.template, defaults::TEMPLATE);
            assert_eq!(c.plans.default, defaults::PLAN);
            let tier = &c.plans.tiers[defaults::PLAN];
            assert_eq!(tier.max_keys, Some(defaults::PLAN_MAX_KEYS));
            assert_eq!(
                tier.requests_per_minute,
                Some(defaults::PLAN_REQUESTS_PER_MINUTE)
            );
            assert_eq!(tier.concurrency, Some(defaults::PLAN_CONCURRENCY));
            assert!(tier.quotas.is_empty() && tier.features.is_empty());
        }
        assert_eq!(written.plans.tiers.len(), omitted.plans.tiers.len());
        // Every other setting `keywarden init` writes is its default too, but for the
        // example scope catalog it shows.
        let without_scopes = |c: &Config| {
            let mut v = serde_json::to_value(c).unwrap();
            v.as_object_mut().unwrap().remove("scopes");
            v
        };
        assert_eq!(
            without_scopes(&written),
            without_scopes(&omitted),
            "the init template and the defaults differ"
        );
        assert_eq!(keywarden_tower::DEFAULT_TEMPLATE, omitted.keys.template);
        assert_eq!(
            keywarden_tower::DEFAULT_DATABASE_URL,
            omitted.store.database_url
        );
        assert_eq!(keywarden_tower::DEFAULT_PLAN, omitted.plans.default);
        // The builder's plan is the server's compiled default tier.
        let tier = &omitted.plans.tiers[defaults::PLAN];
        assert_eq!(
            crate::settings::plan_limits(tier),
            defaults::plan_limits(),
            "the server compiles its default tier to the builder's plan"
        );
    }
}
