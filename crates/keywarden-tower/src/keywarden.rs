//! [`Keywarden`]: the verification engine of `keywarden-store`, built for an embedding
//! service from a few settings whose defaults are the server's, so an application and a
//! `keywarden serve` pointed at the same database accept the same keys.

use http::HeaderName;
use keywarden_core::hashing::{generate_pepper, SecretHasher};
use keywarden_core::limits::Lockout;
use keywarden_core::model::HashScheme;
use keywarden_core::scopes::{CatalogEntry, ScopeCatalog};
use keywarden_core::template::{KeyTemplate, TemplateTags};
use keywarden_core::{Clock, Secret, SystemClock};
use keywarden_store::cache::{CacheConfig, KeyCache};
use keywarden_store::pepper::{load_or_create_pepper_file, pepper_path_for};
use keywarden_store::verifier::{
    PlanLimits, Verifier, VerifierConfig, VerifyOutcome, VerifyRequest,
};
use keywarden_store::writer::{Writer, WriterConfig, WriterHandle};
use keywarden_store::{Limiter, LocalLimiter, RedisConfig, RedisLimiter, Store, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server's default key template.
pub const DEFAULT_TEMPLATE: &str = keywarden_store::defaults::TEMPLATE;

/// The server's default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = keywarden_store::defaults::DATABASE_URL;

/// The name of the plan the builder starts with, and of the default plan.
pub const DEFAULT_PLAN: &str = keywarden_store::defaults::PLAN;

/// A shared handle on the verification engine. Cheap to clone; every clone verifies
/// against the same caches and limits.
#[derive(Clone, Debug)]
pub struct Keywarden {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The engine.
    verifier: Arc<Verifier>,
    /// Where an application's secret is read, when keys bound to one need it.
    app_secret_header: Option<HeaderName>,
    /// The writer this handle started, if it started one, taken by [`Keywarden::shutdown`].
    writer: Mutex<Option<WriterHandle>>,
}

impl Keywarden {
    /// Starts building a handle with the server's defaults.
    pub fn builder() -> KeywardenBuilder {
        KeywardenBuilder::default()
    }

    /// Wraps a verifier assembled by the caller. If its configuration requires application
    /// secrets, name their header with [`Keywarden::with_app_secret_header`]: without it,
    /// keys bound to an application are refused with `invalid_app_secret`. The caller keeps
    /// the verifier's writer handle and flushes it on shutdown.
    pub fn from_parts(verifier: Arc<Verifier>) -> Self {
        Keywarden {
            inner: Arc::new(Inner {
                verifier,
                app_secret_header: None,
                writer: Mutex::new(None),
            }),
        }
    }

    /// Names the header application secrets are read from (a handle made by
    /// [`Keywarden::from_parts`]; the builder sets it with
    /// [`KeywardenBuilder::app_secret_header`]).
    pub fn with_app_secret_header(self, header: HeaderName) -> Self {
        let writer = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        Keywarden {
            inner: Arc::new(Inner {
                verifier: self.inner.verifier.clone(),
                app_secret_header: Some(header),
                writer: Mutex::new(writer),
            }),
        }
    }

    /// The engine, for what the layer does not cover (the store, the limiter, invalidation
    /// after writes made outside the server).
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.inner.verifier
    }

    /// The scope catalog keys are checked against.
    pub fn catalog(&self) -> &Arc<ScopeCatalog> {
        &self.inner.verifier.config().catalog
    }

    /// The header application secrets are read from, if any.
    pub fn app_secret_header(&self) -> Option<&HeaderName> {
        self.inner.app_secret_header.as_ref()
    }

    /// Verifies one request directly, without the layer (`docs/decision.md`, the whole decision).
    pub async fn verify(&self, req: &VerifyRequest<'_>) -> VerifyOutcome {
        self.inner.verifier.verify(req).await
    }

    /// Writes what is still pending (last use, activity, usage) and stops the background
    /// writer this handle started. Call it once the server has stopped taking requests;
    /// without it, up to one flush interval (one second) of those records may be lost.
    /// Later calls, and calls on a handle made by [`Keywarden::from_parts`], do nothing.
    pub async fn shutdown(&self) {
        let handle = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            h.shutdown().await;
        }
    }
}

/// Why a [`Keywarden`] could not be built. Each variant names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is invalid.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The builder method (and configuration field) at fault.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
}

fn invalid(setting: &'static str, reason: impl ToString) -> BuildError {
    BuildError::Invalid {
        setting,
        reason: reason.to_string(),
    }
}

/// Where the builder gets its store.
enum StoreChoice {
    /// Opened (and migrated) from a URL at build time.
    Url(String),
    /// Given ready-made.
    Given(Arc<dyn Store>),
}

/// Settings for a [`Keywarden`]. Every default is the server's (`keywarden serve` with no
/// configuration file), so the two agree on keys when they share a database.
pub struct KeywardenBuilder {
    /// The store, or the URL to open it from.
    store: StoreChoice,
    /// The HMAC pepper, when given explicitly.
    pepper: Option<Secret>,
    /// A file holding the pepper.
    pepper_file: Option<PathBuf>,
    /// Peppers tried on a miss.
    previous_peppers: Vec<Secret>,
    /// The template new keys use.
    template: String,
    /// Templates still accepted.
    legacy_templates: Vec<String>,
    /// What `{mode}` and `{type}` expand to.
    tags: TemplateTags,
    /// How secrets are stored.
    hash: HashScheme,
    /// The scope catalog's entries.
    catalog: Vec<CatalogEntry>,
    /// Scope aliases.
    aliases: BTreeMap<String, Vec<String>>,
    /// Whether `*` grants everything.
    allow_super_scope: bool,
    /// Plans by name.
    plans: BTreeMap<String, PlanLimits>,
    /// The plan of accounts whose plan is unknown.
    default_plan: String,
    /// The per-IP lockout.
    lockout: Option<Lockout>,
    /// The application-secret header (Falco).
    app_secret_header: Option<String>,
    /// Full-access tokens that belong to no account.
    global_keys: Vec<Secret>,
    /// `server.api_enabled`.
    api_enabled: bool,
    /// Key cache sizes and lifetimes.
    cache: CacheConfig,
    /// Limits shared through Redis, when set.
    redis: Option<RedisConfig>,
    writer: WriterConfig,
    /// The time source.
    clock: Arc<dyn Clock>,
}

/// The scheme of a URL only: the rest may hold a password.
fn scheme(url: &str) -> &str {
    url.split_once(':').map_or("?", |(scheme, _)| scheme)
}

impl std::fmt::Debug for KeywardenBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.store {
            StoreChoice::Url(url) => scheme(url),
            StoreChoice::Given(_) => "given",
        };
        f.debug_struct("KeywardenBuilder")
            .field("store", &store)
            .field("template", &self.template)
            .field("hash", &self.hash)
            .field("plans", &self.plans.keys().collect::<Vec<_>>())
            .field("default_plan", &self.default_plan)
            .field("app_secret_header", &self.app_secret_header)
            .field("redis", &self.redis.as_ref().map(|r| scheme(&r.url)))
            .finish_non_exhaustive()
    }
}

impl Default for KeywardenBuilder {
    fn default() -> Self {
        let default_plan = keywarden_store::defaults::plan_limits();
        KeywardenBuilder {
            store: StoreChoice::Url(DEFAULT_DATABASE_URL.into()),
            pepper: None,
            pepper_file: None,
            previous_peppers: Vec::new(),
            template: DEFAULT_TEMPLATE.into(),
            legacy_templates: Vec::new(),
            tags: TemplateTags::default(),
            hash: HashScheme::HmacSha256,
            catalog: Vec::new(),
            aliases: BTreeMap::new(),
            allow_super_scope: true,
            plans: BTreeMap::from([(DEFAULT_PLAN.to_string(), default_plan)]),
            default_plan: DEFAULT_PLAN.into(),
            lockout: Some(Lockout::default()),
            app_secret_header: None,
            global_keys: Vec::new(),
            api_enabled: true,
            cache: CacheConfig::default(),
            redis: None,
            writer: WriterConfig::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl KeywardenBuilder {
    /// The database: `sqlite://file`, `sqlite::memory:` or `postgres://…` (default
    /// `sqlite://keywarden.db`). Its schema is brought up to date at build time.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.store = StoreChoice::Url(url.into());
        self
    }

    /// A store opened by the caller, instead of a URL. With `hmac-sha256` it needs an
    /// explicit [`pepper`](Self::pepper) or [`pepper_file`](Self::pepper_file).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = StoreChoice::Given(store);
        self
    }

    /// The HMAC pepper (the server's `KEYWARDEN_PEPPER`). Without one, the pepper file
    /// beside a SQLite database is read, or created on first use as the server does.
    pub fn pepper(mut self, pepper: Secret) -> Self {
        self.pepper = Some(pepper);
        self
    }

    /// A file holding the pepper (`store.pepper_file`); created, mode 0600, if missing.
    pub fn pepper_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pepper_file = Some(path.into());
        self
    }

    /// Earlier peppers, tried when a key is not found under the current one.
    pub fn previous_peppers(mut self, peppers: Vec<Secret>) -> Self {
        self.previous_peppers = peppers;
        self
    }

    /// The key template (default [`DEFAULT_TEMPLATE`]).
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = template.into();
        self
    }

    /// Older templates still accepted on verify.
    pub fn legacy_templates(mut self, templates: Vec<String>) -> Self {
        self.legacy_templates = templates;
        self
    }

    /// What `{mode}` and `{type}` expand to (default `live`/`test`, `sk`/`pk`).
    pub fn template_tags(mut self, tags: TemplateTags) -> Self {
        self.tags = tags;
        self
    }

    /// How secrets are stored (default `hmac-sha256`).
    pub fn hash(mut self, scheme: HashScheme) -> Self {
        self.hash = scheme;
        self
    }

    /// The scope catalog and its aliases (`[scopes] catalog` and `aliases`). The built-in
    /// platform scopes are always present.
    pub fn catalog(
        mut self,
        entries: Vec<CatalogEntry>,
        aliases: BTreeMap<String, Vec<String>>,
    ) -> Self {
        self.catalog = entries;
        self.aliases = aliases;
        self
    }

    /// Whether `*` grants every scope (default true).
    pub fn allow_super_scope(mut self, allow: bool) -> Self {
        self.allow_super_scope = allow;
        self
    }

    /// Adds or replaces a plan. The builder starts with the server's `default` plan: 600
    /// requests per minute per key, 100 keys, 50 in flight.
    pub fn plan(mut self, name: impl Into<String>, limits: PlanLimits) -> Self {
        self.plans.insert(name.into(), limits);
        self
    }

    /// The plan used for accounts whose plan is unknown (default `default`).
    pub fn default_plan(mut self, name: impl Into<String>) -> Self {
        self.default_plan = name.into();
        self
    }

    /// The per-IP lockout after repeated failures (default 20 in 5 min lock for 5 min);
    /// `None` turns it off.
    pub fn lockout(mut self, lockout: Option<Lockout>) -> Self {
        self.lockout = lockout;
        self
    }

    /// Keys bound to an application also need its secret, of their mode's environment, in
    /// this header (`auth.app_secret_header`, e.g. `X-Falco-App-Secret`).
    pub fn app_secret_header(mut self, header: impl Into<String>) -> Self {
        self.app_secret_header = Some(header.into());
        self
    }

    /// Full-access tokens that belong to no account (FacturaScripts' global keys).
    pub fn global_keys(mut self, keys: Vec<Secret>) -> Self {
        self.global_keys = keys;
        self
    }

    /// `false` refuses every request with `api_disabled` (default true).
    pub fn api_enabled(mut self, enabled: bool) -> Self {
        self.api_enabled = enabled;
        self
    }

    /// Key cache sizes and lifetimes (default: a million keys for 60 s).
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// Shares rate limits, lockouts and quotas through Redis (`store.redis_url`) with the
    /// server's key prefix `kw`, so the application and the server count the same budget.
    pub fn redis_url(self, url: impl Into<String>) -> Self {
        self.redis(RedisConfig::new(url, "kw"))
    }

    /// Shares limits through Redis with full control of the connection.
    pub fn redis(mut self, cfg: RedisConfig) -> Self {
        self.redis = Some(cfg);
        self
    }

    /// How the background writer batches, and when usage is durable (default: as the
    /// server's defaults, usage written every 100 ms; `usage_durability: Strict` commits a
    /// request's usage before it is answered).
    pub fn writer(mut self, cfg: WriterConfig) -> Self {
        self.writer = cfg;
        self
    }

    /// The time source (default the system clock); tests pass a manual one.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks every setting, opens the store, and starts the background writer (so it must
    /// run inside a Tokio runtime). A bad setting fails before anything is created on disk.
    pub async fn build(self) -> Result<Keywarden, BuildError> {
        let template =
            KeyTemplate::compile(&self.template, &self.tags).map_err(|e| invalid("template", e))?;
        let legacy_templates = self
            .legacy_templates
            .iter()
            .map(|t| KeyTemplate::compile(t, &self.tags))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("legacy_templates", e))?;
        if self.hash == HashScheme::Bcrypt && template.max_len() > 72 {
            return Err(invalid(
                "hash",
                format!(
                    "bcrypt takes at most 72 bytes but the template makes tokens of up to {} bytes",
                    template.max_len()
                ),
            ));
        }
        let catalog = ScopeCatalog::build(&self.catalog, &self.aliases, self.allow_super_scope)
            .map_err(|e| invalid("catalog", e))?;
        if !self.plans.contains_key(&self.default_plan) {
            return Err(invalid(
                "default_plan",
                format!("no plan named {:?}", self.default_plan),
            ));
        }
        if let Some((name, _)) = self
            .plans
            .iter()
            .find(|(_, p)| p.rate.is_some_and(|r| r.limit == 0))
        {
            return Err(invalid(
                "plan",
                format!("plan {name:?}: a rate limit must admit at least 1 request"),
            ));
        }
        let app_secret_header = self
            .app_secret_header
            .as_deref()
            .map(|h| {
                HeaderName::try_from(h)
                    .map_err(|_| invalid("app_secret_header", "not a valid header name"))
            })
            .transpose()?;

        let pepper = self.resolve_pepper()?;
        let hasher = SecretHasher::new(self.hash, pepper, self.previous_peppers, 12)
            .map_err(|e| invalid("pepper", e))?;
        let store = match self.store {
            StoreChoice::Url(url) => keywarden_store::open(&url).await?,
            StoreChoice::Given(store) => store,
        };
        let local = LocalLimiter::new(self.lockout);
        let limiter = match self.redis {
            None => Limiter::local(local),
            Some(cfg) => {
                let redis = RedisLimiter::connect(cfg)
                    .await
                    .map_err(|e| invalid("redis_url", e))?;
                Limiter::shared(local, redis)
            }
        };
        let config = VerifierConfig {
            api_enabled: self.api_enabled,
            template,
            legacy_templates,
            hasher,
            catalog: Arc::new(catalog),
            app_secret_required: app_secret_header.is_some(),
            app_required: false,
            global_keys: self.global_keys,
            plans: self.plans,
            default_plan: self.default_plan,
            slow_hash_ttl: Duration::from_secs(60),
            slow_hash_concurrency: 4,
            record_ttl: self.cache.ttl.max(Duration::from_secs(1)),
        };
        let (writer, handle) = Writer::spawn(store.clone(), self.writer);
        let verifier = Verifier::new(
            config,
            store,
            KeyCache::new(self.cache),
            limiter,
            writer,
            self.clock,
        );
        Ok(Keywarden {
            inner: Arc::new(Inner {
                verifier: Arc::new(verifier),
                app_secret_header,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The pepper, resolved as the server resolves it: given; from `pepper_file`; generated
    /// for an in-memory database; or read from (or created in) the file beside a SQLite
    /// database. A store given ready-made, or PostgreSQL, needs one set explicitly.
    fn resolve_pepper(&self) -> Result<Option<Secret>, BuildError> {
        if let Some(p) = &self.pepper {
            return Ok(Some(p.clone()));
        }
        let load = |path: &std::path::Path| {
            load_or_create_pepper_file(path)
                .map(|(p, created)| {
                    if created {
                        tracing::info!(path = %path.display(), "generated a new pepper file (mode 0600); back it up with the database");
                    }
                    Some(p)
                })
                .map_err(|e| invalid("pepper_file", e))
        };
        if let Some(path) = &self.pepper_file {
            return load(path);
        }
        let needs = self.hash == HashScheme::HmacSha256 || self.app_secret_header.is_some();
        match &self.store {
            StoreChoice::Url(url) if url.contains(":memory:") => Ok(Some(generate_pepper())),
            StoreChoice::Url(url) => match pepper_path_for(url) {
                Some(path) => load(&path),
                None if needs => Err(invalid(
                    "pepper",
                    "hmac-sha256 with PostgreSQL needs a pepper: set one, or a pepper_file",
                )),
                None => Ok(None),
            },
            StoreChoice::Given(_) if needs => Err(invalid(
                "pepper",
                "hmac-sha256 with a store given ready-made needs a pepper: set one, or a pepper_file",
            )),
            StoreChoice::Given(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<Keywarden, BuildError>) -> String {
        match r {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn bad_settings_are_named() {
        let memory = || Keywarden::builder().database_url("sqlite::memory:");
        let bad_template = memory().template("kw_{random:4}").build().await;
        assert!(reason(bad_template).starts_with("template:"));
        let no_plan = memory().default_plan("gold").build().await;
        assert!(reason(no_plan).contains("no plan named \"gold\""));
        let bad_header = memory().app_secret_header("bad header").build().await;
        assert!(reason(bad_header).starts_with("app_secret_header:"));
        let cycle = memory()
            .catalog(
                Vec::new(),
                BTreeMap::from([
                    ("a".to_string(), vec!["b".to_string()]),
                    ("b".to_string(), vec!["a".to_string()]),
                ]),
            )
            .build()
            .await;
        assert!(reason(cycle).starts_with("catalog:"));
        let pg = Keywarden::builder()
            .database_url("postgres://kw:hunter2@db/kw")
            .build()
            .await;
        let msg = reason(pg);
        assert!(msg.starts_with("pepper:"), "{msg}");
        assert!(!msg.contains("hunter2"));
    }

    #[test]
    fn the_builder_never_prints_a_password() {
        let b = Keywarden::builder()
            .database_url("postgres://kw:hunter2@db/kw")
            .redis_url("redis://:hunter3@cache:6379")
            .pepper(Secret::new("pepper-0123456789abcdef-0123456789"));
        let printed = format!("{b:?}");
        assert!(printed.contains("postgres"), "{printed}");
        for secret in ["hunter2", "hunter3", "pepper-0123"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[tokio::test]
    async fn a_sqlite_file_gets_its_pepper_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kw.db").display());
        let kw = Keywarden::builder()
            .database_url(&url)
            .build()
            .await
            .unwrap();
        assert!(dir.path().join("kw.db.pepper").exists());
        assert!(kw.catalog().contains("account:read"));
        kw.shutdown().await;
        kw.shutdown().await;
    }
}
