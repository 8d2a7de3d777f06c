//! The configuration compiled into what the service runs on. Every problem found here is
//! reported with the field it comes from, and the process refuses to start.

use crate::config::{Config, ConfigError};
use crate::errors::{ErrorFormat, ErrorStyle};
use crate::secretbox::SecretBox;
use keywarden_core::codes::{CodeOverrides, Locale};
use keywarden_core::hashing::SecretHasher;
use keywarden_core::ip::TrustedProxies;
use keywarden_core::limits::{Lockout, RateLimit};
use keywarden_core::model::{HashScheme, Role};
use keywarden_core::routes::RouteTable;
use keywarden_core::scopes::ScopeCatalog;
use keywarden_core::template::{KeyTemplate, TemplateTags};
use keywarden_core::Secret;
use keywarden_store::verifier::{PlanLimits, VerifierConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use keywarden_store::request::KeySource;

/// A configured plan as the verifier holds it.
pub fn plan_limits(p: &crate::config::PlanConfig) -> PlanLimits {
    PlanLimits {
        max_keys: p.max_keys,
        rate: p.requests_per_minute.map(RateLimit::per_minute),
        concurrency: p.concurrency,
        quotas: p.quotas.clone(),
        features: p.features.clone(),
    }
}

/// The compiled configuration.
#[derive(Debug)]
pub struct Settings {
    /// The configuration as loaded (for `config check` and the few plain fields).
    pub config: Config,
    /// The public listener's address.
    pub public_listen: SocketAddr,
    /// The admin listener's address.
    pub admin_listen: SocketAddr,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Root keys (may be empty: the admin API then refuses everything).
    pub root_keys: Vec<Secret>,
    /// The token verify and forward-auth accept in place of a root key.
    pub verify_token: Option<Secret>,
    /// Where keys may be presented, in order.
    pub sources: Vec<KeySource>,
    /// The application-secret header, lower case, if configured.
    pub app_secret_header: Option<String>,
    /// Route rules.
    pub routes: RouteTable,
    /// How errors look.
    pub renderer: ErrorFormat,
    /// The self-service base path (`/v1`).
    pub base_path: String,
    /// The catalog (shared with the verifier).
    pub catalog: Arc<ScopeCatalog>,
    /// The template new keys use.
    pub template: KeyTemplate,
    /// The hasher new keys are stored with.
    pub hasher: SecretHasher,
    /// Plans by name.
    pub plans: BTreeMap<String, PlanLimits>,
    /// The plan of new accounts.
    pub default_plan: String,
    /// The per-IP lockout, if on.
    pub lockout: Option<Lockout>,
    /// Stores application secrets: HMAC-SHA256 under the pepper whatever `keys.hash` is,
    /// since they are checked on every request (`None` without a pepper).
    pub app_hasher: Option<SecretHasher>,
    /// Seals recoverable test secrets (`keys.recoverable_test_secrets`), when on.
    pub secretbox: Option<SecretBox>,
    /// Gateway mode's upstream, if configured.
    pub gateway: Option<crate::upstream::Upstream>,
    /// How timestamps are written.
    pub timestamps: crate::views::TimestampStyle,
    /// Which self-service endpoints are served, and how their answers read.
    pub self_service: SelfService,
}

/// The compiled `[self_service]` section.
#[derive(Clone, Debug, Default)]
pub struct SelfService {
    /// The endpoint groups served.
    pub endpoints: std::collections::BTreeSet<String>,
    /// Top-level field renames of the answers.
    pub rename: BTreeMap<String, String>,
    /// `period_end` is the period's last whole second (else the next period's start).
    pub period_end_last_second: bool,
    /// Answer → the only top-level fields it shows (`self_service.fields`).
    pub fields: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl SelfService {
    /// Whether the endpoint group `group` is served.
    pub fn serves(&self, group: &str) -> bool {
        self.endpoints.contains(group)
    }

    /// The only top-level fields the answer `answer` shows, when `self_service.fields`
    /// names it.
    pub fn fields(&self, answer: &str) -> Option<&std::collections::BTreeSet<String>> {
        self.fields.get(answer)
    }

    /// Compiles `[self_service]`, naming the field of a bad entry.
    fn compile(c: &crate::config::SelfServiceConfig) -> Result<Self, ConfigError> {
        let mut endpoints = std::collections::BTreeSet::new();
        for (i, g) in c.endpoints.iter().enumerate() {
            if !crate::config::SELF_SERVICE_GROUPS.contains(&g.as_str()) {
                return Err(ConfigError::new(
                    format!("self_service.endpoints[{i}]"),
                    format!(
                        "{g:?} is not an endpoint group; expected one of {}",
                        crate::config::SELF_SERVICE_GROUPS.join(", ")
                    ),
                ));
            }
            endpoints.insert(g.clone());
        }
        for (from, to) in &c.rename {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            };
            if !ok(from) || !ok(to) {
                return Err(ConfigError::new(
                    format!("self_service.rename.{from}"),
                    "field names are 1-64 characters of a-z, 0-9 and _",
                ));
            }
        }
        let period_end_last_second = match c.period_end.as_str() {
            "next_start" => false,
            "last_second" => true,
            other => {
                return Err(ConfigError::new(
                    "self_service.period_end",
                    format!("{other:?} is neither \"next_start\" nor \"last_second\""),
                ))
            }
        };
        let mut fields = BTreeMap::new();
        for (answer, names) in &c.fields {
            let field = format!("self_service.fields.{answer}");
            if !crate::config::SELF_SERVICE_ANSWERS.contains(&answer.as_str()) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "not an answer whose fields can be chosen; expected one of {}",
                        crate::config::SELF_SERVICE_ANSWERS.join(", ")
                    ),
                ));
            }
            if names.is_empty() {
                return Err(ConfigError::new(field, "at least one field"));
            }
            let known = answer_fields(answer);
            if let Some(bad) = names.iter().find(|n| !known.contains(n)) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{bad:?} is not a field of this answer; expected some of {}",
                        known.join(", ")
                    ),
                ));
            }
            if answer == "created_api_key" && !names.iter().any(|n| n == "api_key") {
                return Err(ConfigError::new(
                    field,
                    "must include api_key: the new key's secret is shown in this answer only",
                ));
            }
            fields.insert(answer.clone(), names.iter().cloned().collect());
        }
        Ok(Self {
            endpoints,
            rename: c.rename.clone(),
            period_end_last_second,
            fields,
        })
    }
}

/// The top-level fields of the self-service answer `answer` (one of
/// `SELF_SERVICE_ANSWERS`), as its wire types write them.
fn answer_fields(answer: &str) -> Vec<String> {
    fn props<T: utoipa::PartialSchema>() -> Vec<String> {
        serde_json::to_value(T::schema())
            .ok()
            .and_then(|s| {
                s.get("properties")
                    .and_then(serde_json::Value::as_object)
                    .map(|p| p.keys().cloned().collect())
            })
            .unwrap_or_default()
    }
    use crate::views::{AccountSummary, ApiKey, CallerAccount, CreatedApiKey};
    match answer {
        "account" => {
            let mut all = props::<CallerAccount>();
            all.extend(props::<AccountSummary>());
            all.sort();
            all.dedup();
            all
        }
        "api_key" => props::<ApiKey>(),
        "created_api_key" => props::<CreatedApiKey>(),
        _ => Vec::new(),
    }
}

fn field_err(field: &str) -> impl Fn(String) -> ConfigError + '_ {
    move |reason| ConfigError::new(field, reason)
}

fn addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("{s:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

/// The timeouts and connection bounds: each at least 1 (a timeout of 0 would close every
/// connection or fail every call), the timeouts at most an hour.
fn check_bounds(c: &Config) -> Result<(), ConfigError> {
    let timeouts = [
        (
            "server.header_read_timeout_ms",
            c.server.header_read_timeout_ms,
        ),
        ("server.idle_timeout_ms", c.server.idle_timeout_ms),
        ("store.timeout_ms", c.store.timeout_ms),
    ];
    for (field, ms) in timeouts {
        if !(1..=3_600_000).contains(&ms) {
            return Err(ConfigError::new(
                field,
                format!("{ms} is out of range: a timeout is 1 to 3600000 ms"),
            ));
        }
    }
    let bounds = [
        ("server.max_connections", c.server.max_connections),
        (
            "server.admin_max_connections",
            c.server.admin_max_connections,
        ),
    ];
    for (field, n) in bounds {
        if n == 0 {
            return Err(ConfigError::new(
                field,
                "0 would refuse every connection: at least 1",
            ));
        }
    }
    Ok(())
}

/// The writer's usage settings from `[store]`, each checked.
pub fn usage_writer(
    st: &crate::config::StoreConfig,
) -> Result<(Duration, keywarden_store::UsageDurability), ConfigError> {
    let max = keywarden_store::writer::MAX_FLUSH_INTERVAL.as_millis();
    if st.usage_flush_ms == 0 || u128::from(st.usage_flush_ms) > max {
        return Err(ConfigError::new(
            "store.usage_flush_ms",
            format!("{} is not between 1 and {max}", st.usage_flush_ms),
        ));
    }
    let durability = st
        .usage_durability
        .parse()
        .map_err(|e| ConfigError::new("store.usage_durability", e))?;
    Ok((Duration::from_millis(st.usage_flush_ms), durability))
}

/// Checks `[webhooks]`: times within sensible bounds, at least one attempt in flight.
fn check_webhooks(w: &crate::config::WebhooksConfig) -> Result<(), ConfigError> {
    for (field, schedule) in [
        (
            "webhooks.retry_schedule_seconds_live",
            &w.retry_schedule_seconds_live,
        ),
        (
            "webhooks.retry_schedule_seconds_test",
            &w.retry_schedule_seconds_test,
        ),
    ] {
        if schedule.len() > 50 {
            return Err(ConfigError::new(field, "at most 50 retries"));
        }
        if let Some(d) = schedule.iter().find(|d| **d > 7 * 86_400) {
            return Err(ConfigError::new(
                field,
                format!("{d} s is more than a week between two attempts"),
            ));
        }
    }
    if !(1..=300).contains(&w.timeout_seconds) {
        return Err(ConfigError::new(
            "webhooks.timeout_seconds",
            "must be between 1 and 300",
        ));
    }
    if !(1..=60_000).contains(&w.poll_interval_ms) {
        return Err(ConfigError::new(
            "webhooks.poll_interval_ms",
            "must be between 1 and 60000",
        ));
    }
    if !(1..=1_024).contains(&w.concurrency) {
        return Err(ConfigError::new(
            "webhooks.concurrency",
            "must be between 1 and 1024",
        ));
    }
    if let Some(n) = w.per_endpoint_concurrency {
        if !(1..=w.concurrency).contains(&n) {
            return Err(ConfigError::new(
                "webhooks.per_endpoint_concurrency",
                format!(
                    "must be between 1 and webhooks.concurrency ({})",
                    w.concurrency
                ),
            ));
        }
    }
    if w.max_response_bytes > 65_536 {
        return Err(ConfigError::new(
            "webhooks.max_response_bytes",
            "at most 65536",
        ));
    }
    if w.scan_interval_seconds == 0 {
        return Err(ConfigError::new(
            "webhooks.scan_interval_seconds",
            "must be at least 1",
        ));
    }
    Ok(())
}

impl Settings {
    /// Compiles `config`; `pepper` is the resolved pepper (from config, env or file).
    /// Returns the settings and the verifier's part of them.
    pub fn from_config(
        config: Config,
        pepper: Option<Secret>,
    ) -> Result<(Settings, VerifierConfig), ConfigError> {
        let c = &config;
        usage_writer(&c.store)?;
        let public_listen = addr("server.public_listen", &c.server.public_listen)?;
        let admin_listen = addr("server.admin_listen", &c.server.admin_listen)?;
        let trusted_proxies = TrustedProxies::parse(&c.server.trusted_proxies).map_err(|e| {
            ConfigError::new(
                "server.trusted_proxies",
                format!("{:?}: {}", e.entry, e.reason),
            )
        })?;
        check_bounds(c)?;
        check_webhooks(&c.webhooks)?;
        let root_keys: Vec<Secret> = c
            .server
            .root_keys
            .iter()
            .filter(|k| !k.is_empty())
            .map(|k| Secret::new(k.as_str()))
            .collect();
        // Counted in characters, as the message says, not in bytes.
        let chars = |k: &Secret| k.expose().chars().count();
        if let Some(short) = root_keys.iter().map(chars).find(|&n| n < 16) {
            return Err(ConfigError::new(
                "server.root_keys",
                format!("a root key must be at least 16 characters (one has {short})"),
            ));
        }
        let base_path = c.server.base_path.trim_end_matches('/').to_string();
        if !base_path.starts_with('/') {
            let why = if c.server.base_path.starts_with('/') {
                "must be a path below the root, e.g. \"/v1\": the self-service API cannot be mounted at \"/\", where the health checks and (in gateway mode) the upstream's paths are"
            } else {
                "must start with '/', e.g. \"/v1\""
            };
            return Err(ConfigError::new("server.base_path", why));
        }

        let sources = c
            .auth
            .sources
            .iter()
            .map(|s| s.parse::<KeySource>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(field_err("auth.sources"))?;
        if sources.is_empty() {
            return Err(ConfigError::new(
                "auth.sources",
                "at least one source is needed",
            ));
        }
        let app_secret_header = if c.auth.app_secret_header.is_empty() {
            None
        } else {
            axum::http::HeaderName::try_from(c.auth.app_secret_header.as_str()).map_err(|_| {
                ConfigError::new("auth.app_secret_header", "not a valid header name")
            })?;
            Some(c.auth.app_secret_header.to_ascii_lowercase())
        };
        let env_secrets = |field: &str, var: &str| -> Result<Vec<Secret>, ConfigError> {
            if var.is_empty() {
                return Ok(Vec::new());
            }
            let v = std::env::var(var).map_err(|_| {
                ConfigError::new(field, format!("environment variable {var} is not set"))
            })?;
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Secret::new)
                .collect())
        };
        // Global keys are optional even when the variable is named: unset means none (a
        // profile names the variable so that setting it is all a deployment does).
        let global_keys = match std::env::var_os(&c.auth.global_keys_env) {
            Some(_) => env_secrets("auth.global_keys_env", &c.auth.global_keys_env)?,
            None => Vec::new(),
        };
        let verify_token = env_secrets("auth.verify_token_env", &c.auth.verify_token_env)?
            .into_iter()
            .next();
        if !c.keys.allowed_roles.contains(&Role::Owner) {
            return Err(ConfigError::new(
                "keys.allowed_roles",
                "must include owner, the role of a key made without one",
            ));
        }
        if c.keys.require_app && c.keys.default_sets {
            return Err(ConfigError::new(
                "keys.default_sets",
                "default key sets belong to no application, so they cannot be made with keys.require_app",
            ));
        }
        let l = &c.auth.lockout;
        let lockout = (l.max_failures > 0).then_some(Lockout {
            max_failures: l.max_failures,
            window_ms: l.window_seconds.max(1) * 1000,
            lock_ms: l.lock_seconds.max(1) * 1000,
        });

        let tags = TemplateTags {
            live: c.keys.mode_tags.live.clone(),
            test: c.keys.mode_tags.test.clone(),
            secret: c.keys.type_tags.secret.clone(),
            publishable: c.keys.type_tags.publishable.clone(),
        };
        let template = KeyTemplate::compile(&c.keys.template, &tags)
            .map_err(|e| ConfigError::new("keys.template", e.to_string()))?;
        let legacy_templates = c
            .keys
            .legacy_templates
            .iter()
            .enumerate()
            .map(|(i, t)| {
                KeyTemplate::compile(t, &tags).map_err(|e| {
                    ConfigError::new(format!("keys.legacy_templates[{i}]"), e.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scheme: HashScheme =
            c.keys
                .hash
                .parse()
                .map_err(|e: keywarden_core::model::UnknownVariant| {
                    ConfigError::new("keys.hash", e.to_string())
                })?;
        if matches!(scheme, HashScheme::Bcrypt) && template.max_len() > 72 {
            return Err(ConfigError::new(
                "keys.hash",
                format!(
                    "bcrypt takes at most 72 bytes but keys.template makes tokens of up to {} bytes",
                    template.max_len()
                ),
            ));
        }
        let previous: Vec<Secret> = c
            .store
            .previous_peppers
            .iter()
            .map(|p| Secret::new(p.as_str()))
            .collect();
        let secretbox = crate::secretbox::from_config(&c.keys, pepper.as_ref())?;
        let app_hasher = match &pepper {
            Some(p) => Some(
                SecretHasher::new(
                    HashScheme::HmacSha256,
                    Some(p.clone()),
                    previous.clone(),
                    c.keys.bcrypt_cost,
                )
                .map_err(|e| ConfigError::new("store.pepper", e.to_string()))?,
            ),
            None => None,
        };
        let hasher = SecretHasher::new(scheme, pepper, previous, c.keys.bcrypt_cost)
            .map_err(|e| ConfigError::new("store.pepper", e.to_string()))?;

        let catalog = Arc::new(
            ScopeCatalog::build(
                &c.scopes.catalog,
                &c.scopes.aliases,
                c.scopes.allow_super_scope,
            )
            .map_err(|e| ConfigError::new("scopes", e.to_string()))?,
        );
        if let Err(e) = catalog.compile(&c.keys.default_scopes) {
            return Err(ConfigError::new("keys.default_scopes", e.to_string()));
        }
        let routes = RouteTable::compile(&c.routes, c.default_route.clone(), &catalog)
            .map_err(|e| ConfigError::new("routes", e.to_string()))?
            .case_sensitive(c.case_sensitive_paths);

        let gateway = crate::upstream::Upstream::from_config(&c.gateway)?;

        let style: ErrorStyle = c.errors.style.parse().map_err(field_err("errors.style"))?;
        let locale: Locale = c
            .errors
            .locale
            .parse()
            .map_err(field_err("errors.locale"))?;
        let overrides = CodeOverrides::new(&c.errors.rename, &c.errors.status)
            .and_then(|o| o.with_messages(&c.errors.messages))
            .map_err(|e| ConfigError::new("errors", e))?;
        let timestamps = crate::views::TimestampStyle::parse(
            &c.server.timestamp_offset,
            &c.server.timestamp_precision,
        )
        .map_err(|(field, reason)| ConfigError::new(field, reason))?;
        let self_service = SelfService::compile(&c.self_service)?;
        let renderer = ErrorFormat {
            style,
            doc_url: c.errors.doc_url.clone(),
            locale,
            overrides,
        };

        let mut plans = BTreeMap::new();
        for (name, p) in &c.plans.tiers {
            let field = format!("plans.tiers.{name}");
            if p.requests_per_minute == Some(0) {
                return Err(ConfigError::new(
                    format!("{field}.requests_per_minute"),
                    "must be at least 1 (omit it for no limit)",
                ));
            }
            for (i, q) in p.quotas.iter().enumerate() {
                if q.unit.is_empty() || q.unit.len() > 64 {
                    return Err(ConfigError::new(
                        format!("{field}.quotas[{i}].unit"),
                        "must be 1-64 characters",
                    ));
                }
                // A unit's usage is counted per period start, so two quotas of one unit
                // (a day and a month) would share a counter on the first of the month.
                if p.quotas[..i].iter().any(|earlier| earlier.unit == q.unit) {
                    return Err(ConfigError::new(
                        format!("{field}.quotas[{i}].unit"),
                        format!("{:?} has a quota already: one quota per unit", q.unit),
                    ));
                }
            }
            plans.insert(name.clone(), plan_limits(p));
        }
        if !plans.contains_key(&c.plans.default) {
            return Err(ConfigError::new(
                "plans.default",
                format!("no tier named {:?} in [plans.tiers]", c.plans.default),
            ));
        }
        let verifier = VerifierConfig {
            api_enabled: c.server.api_enabled,
            template: template.clone(),
            legacy_templates,
            hasher: hasher.clone(),
            catalog: catalog.clone(),
            app_secret_required: app_secret_header.is_some(),
            app_required: c.keys.require_app,
            global_keys,
            plans: plans.clone(),
            default_plan: c.plans.default.clone(),
            slow_hash_ttl: Duration::from_secs(c.keys.slow_hash_cache_ttl_seconds.max(1)),
            slow_hash_concurrency: c.keys.slow_hash_concurrency.max(1),
            record_ttl: Duration::from_secs(c.store.cache_ttl_seconds.max(1)),
        };
        let settings = Settings {
            public_listen,
            admin_listen,
            trusted_proxies,
            root_keys,
            verify_token,
            sources,
            app_secret_header,
            routes,
            renderer,
            base_path,
            catalog,
            template,
            hasher,
            default_plan: c.plans.default.clone(),
            plans,
            lockout,
            app_hasher,
            secretbox,
            gateway,
            timestamps,
            self_service,
            config,
        };
        Ok((settings, verifier))
    }
}

#[cfg(test)]
mod usage_writer_tests {
    use super::*;
    use crate::config::StoreConfig;

    #[test]
    fn usage_settings_are_checked_naming_the_field() {
        let ok = usage_writer(&StoreConfig::default()).unwrap();
        assert_eq!(
            ok,
            (
                Duration::from_millis(100),
                keywarden_store::UsageDurability::Batched
            )
        );
        for ms in [0, 1_001] {
            let st = StoreConfig {
                usage_flush_ms: ms,
                ..StoreConfig::default()
            };
            let e = usage_writer(&st).unwrap_err().to_string();
            assert!(e.contains("store.usage_flush_ms"), "{e}");
        }
        let st = StoreConfig {
            usage_durability: "eventually".into(),
            ..StoreConfig::default()
        };
        let e = usage_writer(&st).unwrap_err().to_string();
        assert!(
            e.contains("store.usage_durability") && e.contains("eventually"),
            "{e}"
        );
        let st = StoreConfig {
            usage_durability: "strict".into(),
            usage_flush_ms: 1_000,
            ..StoreConfig::default()
        };
        assert_eq!(
            usage_writer(&st).unwrap().1,
            keywarden_store::UsageDurability::Strict
        );
    }
}

#[cfg(test)]
mod webhooks_tests {
    use super::*;
    use crate::config::WebhooksConfig;

    #[test]
    fn a_per_endpoint_limit_above_the_whole_is_refused_naming_the_field() {
        let w = |per_endpoint| WebhooksConfig {
            concurrency: 4,
            per_endpoint_concurrency: per_endpoint,
            ..WebhooksConfig::default()
        };
        for ok in [None, Some(1), Some(4)] {
            check_webhooks(&w(ok)).unwrap();
        }
        for bad in [0, 5] {
            let e = check_webhooks(&w(Some(bad))).unwrap_err().to_string();
            assert!(
                e.contains("webhooks.per_endpoint_concurrency") && e.contains("(4)"),
                "{e}"
            );
        }
    }
}

#[cfg(test)]
mod compile_tests {
    use super::*;

    fn compile(toml: &str) -> Result<Settings, ConfigError> {
        let config = Config::from_parts(toml, &[]).unwrap();
        Settings::from_config(
            config,
            Some(Secret::new("a-pepper-of-32-bytes-or-more-0123456789")),
        )
        .map(|(s, _)| s)
    }

    #[test]
    fn a_base_path_is_a_path_below_the_root() {
        assert_eq!(
            compile("[server]\nbase_path = \"/api/\"\n")
                .unwrap()
                .base_path,
            "/api"
        );
        for (path, says) in [
            ("/", "below the root"),
            ("//", "below the root"),
            ("v1", "start with '/'"),
        ] {
            let e = compile(&format!("[server]\nbase_path = \"{path}\"\n")).unwrap_err();
            assert_eq!(e.field, "server.base_path", "{e}");
            assert!(e.reason.contains(says), "{path}: {e}");
        }
    }

    #[test]
    fn a_root_key_has_at_least_16_characters() {
        let roots = |keys: &[&str]| {
            let list = keys.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>();
            compile(&format!("[server]\nroot_keys = [{}]\n", list.join(", ")))
        };
        assert_eq!(roots(&["0123456789abcdef"]).unwrap().root_keys.len(), 1);
        assert_eq!(roots(&["ñandú-ñandú-ñandú"]).unwrap().root_keys.len(), 1);
        // Fifteen characters are one too few, even when they are thirty bytes.
        for short in ["0123456789abcde", "ééééééééééééééé"] {
            let e = roots(&["0123456789abcdef", short]).unwrap_err();
            assert_eq!(e.field, "server.root_keys", "{e}");
            assert!(e.reason.contains("(one has 15)"), "{short}: {e}");
        }
    }

    #[test]
    fn chosen_fields_are_fields_of_their_answer() {
        let s = compile(
            "[self_service]\nfields = { account = [\"account_id\", \"role\"], api_key = [\"key_hash\", \"type\"], created_api_key = [\"api_key\", \"name\"] }\n",
        )
        .unwrap();
        let account = s.self_service.fields("account").unwrap();
        assert_eq!(account.iter().collect::<Vec<_>>(), ["account_id", "role"]);
        assert!(compile("")
            .unwrap()
            .self_service
            .fields("account")
            .is_none());
        for (toml, field, says) in [
            (
                "fields = { usage = [\"plan\"] }",
                "self_service.fields.usage",
                "expected one of",
            ),
            (
                "fields = { account = [] }",
                "self_service.fields.account",
                "at least one",
            ),
            (
                "fields = { account = [\"nme\"] }",
                "self_service.fields.account",
                "\"nme\"",
            ),
            (
                "fields = { api_key = [\"secret\"] }",
                "self_service.fields.api_key",
                "key_hash",
            ),
            (
                "fields = { created_api_key = [\"name\"] }",
                "self_service.fields.created_api_key",
                "api_key",
            ),
        ] {
            let e = compile(&format!("[self_service]\n{toml}\n")).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(says), "{e}");
        }
    }

    #[test]
    fn allowed_roles_must_include_owner() {
        let s = compile("[keys]\nallowed_roles = [\"owner\", \"member\"]\n").unwrap();
        assert_eq!(s.config.keys.allowed_roles, [Role::Owner, Role::Member]);
        assert_eq!(compile("").unwrap().config.keys.allowed_roles, Role::ALL);
        for bad in ["[]", "[\"member\"]"] {
            let e = compile(&format!("[keys]\nallowed_roles = {bad}\n")).unwrap_err();
            assert_eq!(e.field, "keys.allowed_roles", "{e}");
        }
        let e = Config::from_parts("[keys]\nallowed_roles = [\"boss\"]\n", &[]).unwrap_err();
        assert!(e.field.starts_with("keys.allowed_roles"), "{e}");
    }
}
