//! The verification engine: finds the key for a presented token through the cache, checks
//! its secret, gathers the facts and runs the pure decision of `keywarden_core::decision`,
//! then the limits. The HTTP service and the tower layer both call [`Verifier::verify`], so
//! a key behaves the same wherever it is checked.
//!
//! On a cache hit nothing here touches the database: the key, its account and its
//! application come from memory, and what must be remembered (last use, activity, usage,
//! `key.ip_denied` incidents) goes to the batched [`Writer`].

use crate::cache::{KeyCache, KeyResolver, LookupKey, RecordCache};
use crate::limiter::{Limiter, QuotaKey};
use crate::store::{Invalidation, Store, StoreResult, UsageDelta};
use crate::writer::{KeyUse, Writer};
use keywarden_core::codes::Code;
use keywarden_core::decision::{
    authorize, check_app_secret, limit_verdict, AppSecretCheck, CompiledKey, Denial, Facts,
    KeyLookup, Requirement, RoleNeed, SecretMatch,
};
use keywarden_core::hashing::{sha256, SecretHasher};
use keywarden_core::ip::ClientAddr;
use keywarden_core::limits::{Period, QuotaOutcome, QuotaSpec, RateLimit, RateOutcome};
use keywarden_core::model::{
    new_id, Account, Application, AuditEvent, KeyRecord, Mode, StoredSecret,
};
use keywarden_core::scopes::{ScopeCatalog, ScopeSet};
use keywarden_core::template::{KeyTemplate, ParsedToken};
use keywarden_core::{ct_eq, Clock, Secret};
use moka::sync::Cache;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The limits of one plan, compiled from config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanLimits {
    /// Active keys allowed (`Some(0)` = no API keys; `None` = unlimited).
    pub max_keys: Option<u64>,
    /// Per-key rate limit unless the key overrides it.
    pub rate: Option<RateLimit>,
    /// Requests in flight per key through the gateway.
    pub concurrency: Option<u32>,
    /// Quotas per unit and period.
    pub quotas: Vec<QuotaSpec>,
    /// Feature flags.
    pub features: Vec<String>,
}

/// Everything the verifier needs, compiled once at startup.
#[derive(Debug)]
pub struct VerifierConfig {
    /// `server.api_enabled`.
    pub api_enabled: bool,
    /// The template new keys use; tried first on verify.
    pub template: KeyTemplate,
    /// Older templates still accepted on verify.
    pub legacy_templates: Vec<KeyTemplate>,
    /// Hashing of secrets.
    pub hasher: SecretHasher,
    /// The scope catalog.
    pub catalog: Arc<ScopeCatalog>,
    /// Whether keys bound to an application need its secret too.
    pub app_secret_required: bool,
    /// Every key must belong to an application (`keys.require_app`): a key bound to none
    /// is refused as `invalid_api_key`.
    pub app_required: bool,
    /// Full-access tokens that belong to no account.
    pub global_keys: Vec<Secret>,
    /// Plans by name.
    pub plans: BTreeMap<String, PlanLimits>,
    /// The plan of accounts whose plan is unknown.
    pub default_plan: String,
    /// How long a successful slow-hash check is remembered.
    pub slow_hash_ttl: Duration,
    /// How many slow-hash checks may run at once.
    pub slow_hash_concurrency: usize,
    /// How long accounts and applications are cached (local writes invalidate at once).
    pub record_ttl: Duration,
}

/// Admits a request by its key's concurrency limit, at its place in the decision (`docs/decision.md`:
/// after the rate limit, before the quota). Called with the key and its plan's
/// `concurrency`; `false` refuses the request with `concurrency_limit_exceeded` before any
/// quota is consumed. The caller keeps whatever slot it took until the request ends.
#[derive(Clone, Copy)]
pub struct Admit<'a>(pub &'a (dyn Fn(&CompiledKey, u32) -> bool + Send + Sync));

impl std::fmt::Debug for Admit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit")
    }
}

/// What a caller asks about one request. Its `Debug` never shows the presented token or
/// application secret.
#[derive(Clone, Default)]
pub struct VerifyRequest<'a> {
    /// The presented token, if any.
    pub token: Option<&'a str>,
    /// The presented application secret, if any.
    pub app_secret: Option<&'a str>,
    /// The client: `None` when the request came without a peer address (the CLI, an
    /// embedder's in-process call), which is neither matched by an allowlist nor locked out;
    /// [`ClientAddr::Unknown`] when a trusted proxy forwarded it for a client it could not
    /// name, which is matched by no allowlist and locked out in a bucket of its own.
    pub client_ip: Option<ClientAddr>,
    /// The mode of the object touched, if the request touches one.
    pub object_mode: Option<Mode>,
    /// Scopes that are all required.
    pub scopes_all: Option<&'a ScopeSet>,
    /// Scopes of which one is required.
    pub scopes_any: Option<&'a ScopeSet>,
    /// The request can never be allowed (a denying route).
    pub impossible: bool,
    /// Quota consumption by unit.
    pub cost: &'a [(String, u64)],
    /// Original method, for the activity log.
    pub method: &'a str,
    /// Original path, for the activity log.
    pub path: &'a str,
    /// The concurrency check, for callers that hold requests in flight (the gateway);
    /// without it the plan's `concurrency` is not checked here.
    pub admit: Option<Admit<'a>>,
    /// A call of the self-service API, needing this role: refused before any limit is
    /// spent to a global key, a publishable key or a key without the role.
    pub self_service: Option<RoleNeed>,
}

impl std::fmt::Debug for VerifyRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: Option<&str>| v.map(|_| "[redacted]");
        f.debug_struct("VerifyRequest")
            .field("token", &redacted(self.token))
            .field("app_secret", &redacted(self.app_secret))
            .field("client_ip", &self.client_ip)
            .field("object_mode", &self.object_mode)
            .field("scopes_all", &self.scopes_all)
            .field("scopes_any", &self.scopes_any)
            .field("impossible", &self.impossible)
            .field("cost", &self.cost)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("admit", &self.admit)
            .field("self_service", &self.self_service)
            .finish()
    }
}

/// The verdict and what a caller needs to act on it.
#[derive(Clone, Debug)]
pub struct VerifyOutcome {
    /// `valid` or why not.
    pub code: Code,
    /// Seconds until a retry may succeed (429s).
    pub retry_after: Option<u64>,
    /// The key, when one was found and its secret matched.
    pub key: Option<Arc<CompiledKey>>,
    /// Its account.
    pub account: Option<Arc<Account>>,
    /// Rate-limit figures, when a rate limit applies.
    pub rate: Option<RateOutcome>,
    /// The rate limit that applied.
    pub rate_limit: Option<RateLimit>,
    /// Quota figures for each unit consumed.
    pub quotas: Vec<QuotaOutcome>,
    /// The request used a configured global key (full access, no account).
    pub global: bool,
    /// What the answer's message should say instead of the code's own, if anything.
    pub detail: Option<&'static str>,
}

impl VerifyOutcome {
    fn deny(d: Denial) -> Self {
        VerifyOutcome {
            code: d.code,
            retry_after: d.retry_after,
            detail: d.detail,
            key: None,
            account: None,
            rate: None,
            rate_limit: None,
            quotas: Vec::new(),
            global: false,
        }
    }

    /// Whether the request is allowed.
    pub fn is_valid(&self) -> bool {
        self.code == Code::Valid
    }
}

/// A key a lookup value found, and which of its secrets that lookup belongs to.
pub type Candidate = (Arc<CompiledKey>, SecretMatch);

/// What the key cache holds for one lookup value: the keys it found (one, unless slow-hash
/// lookup segments collide), each with the secret the lookup belongs to. Sixteen bytes.
#[derive(Clone, Debug)]
pub enum Candidates {
    /// The usual case.
    One(Candidate),
    /// Several keys share the lookup.
    Many(Arc<Vec<Candidate>>),
}

impl Candidates {
    /// Compiles the records `lookup` found; `None` when none of their secrets has it.
    pub fn build(lookup: &str, records: Vec<KeyRecord>, catalog: &ScopeCatalog) -> Option<Self> {
        let mut found: Vec<Candidate> = records
            .into_iter()
            .filter_map(|r| {
                let which = if r.secret.lookup == lookup {
                    SecretMatch::Current
                } else if r
                    .previous
                    .as_ref()
                    .is_some_and(|p| p.secret.lookup == lookup)
                {
                    SecretMatch::Previous
                } else {
                    return None;
                };
                Some((Arc::new(CompiledKey::compile(r, catalog)), which))
            })
            .collect();
        match found.len() {
            0 => None,
            1 => found.pop().map(Candidates::One),
            _ => Some(Candidates::Many(Arc::new(found))),
        }
    }

    /// A copy that shares no reference count with this one (several candidates, rare,
    /// are shared).
    pub fn local_copy(&self) -> Self {
        match self {
            Candidates::One((key, which)) => {
                Candidates::One((Arc::new(CompiledKey::clone(key)), *which))
            }
            Candidates::Many(all) => Candidates::Many(all.clone()),
        }
    }

    /// The candidates, in the store's order.
    pub fn as_slice(&self) -> &[Candidate] {
        match self {
            Candidates::One(c) => std::slice::from_ref(c),
            Candidates::Many(v) => v.as_slice(),
        }
    }
}

/// The verification engine. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Verifier {
    cfg: VerifierConfig,
    store: Arc<dyn Store>,
    keys: KeyResolver<Candidates>,
    accounts: RecordCache<Arc<Account>>,
    apps: RecordCache<Arc<Application>>,
    /// SHA-256 of a token → the slow hash it was verified against.
    slow_ok: Cache<[u8; 32], Arc<str>>,
    slow_gate: Arc<Semaphore>,
    limiter: Limiter,
    writer: Writer,
    clock: Arc<dyn Clock>,
    /// Applies other replicas' writes to the caches; stopped when the verifier goes.
    _follower: Option<AbortOnDrop>,
}

/// A task that ends with its owner.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Verifier {
    /// Assembles a verifier.
    pub fn new(
        cfg: VerifierConfig,
        store: Arc<dyn Store>,
        cache: KeyCache<Candidates>,
        limiter: impl Into<Limiter>,
        writer: Writer,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let limiter = limiter.into();
        let ttl = cfg.record_ttl;
        // Each serving thread's copies of the keys and records it reads often are its own,
        // reference counts included.
        let cache = cache.copied_with(Candidates::local_copy);
        let accounts = RecordCache::new(1_000_000, ttl)
            .copied_with(|a: &Arc<Account>| Arc::new(Account::clone(a)));
        let apps = RecordCache::new(100_000, ttl)
            .copied_with(|a: &Arc<Application>| Arc::new(Application::clone(a)));
        let follower = match (store.invalidations(), tokio::runtime::Handle::try_current()) {
            (Some(feed), Ok(runtime)) => Some(AbortOnDrop(runtime.spawn(follow(
                feed,
                cache.clone(),
                accounts.clone(),
                apps.clone(),
            )))),
            _ => None,
        };
        Verifier {
            keys: KeyResolver::new(store.clone(), cache),
            accounts,
            apps,
            _follower: follower,
            slow_ok: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(cfg.slow_hash_ttl)
                .build(),
            slow_gate: Arc::new(Semaphore::new(cfg.slow_hash_concurrency.max(1))),
            cfg,
            store,
            limiter,
            writer,
            clock,
        }
    }

    /// The compiled configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.cfg
    }

    /// The store behind the verifier.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The batched writer.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The limiter (shared through Redis when configured).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Cached key lookups: (known keys, known-unknown lookups).
    pub fn cache_entries(&self) -> (u64, u64) {
        let c = self.keys.cache();
        (c.entry_count(), c.negative_entry_count())
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The plan limits of `plan` (the default plan's when unknown).
    pub fn plan(&self, plan: &str) -> &PlanLimits {
        /// What an account gets when not even the default plan is configured.
        static UNLIMITED: PlanLimits = PlanLimits {
            max_keys: None,
            rate: None,
            concurrency: None,
            quotas: Vec::new(),
            features: Vec::new(),
        };
        self.cfg
            .plans
            .get(plan)
            .or_else(|| self.cfg.plans.get(&self.cfg.default_plan))
            .unwrap_or(&UNLIMITED)
    }

    /// Drops every cached trace of a key (call after any write to it).
    pub fn invalidate_key(&self, key: &KeyRecord) {
        let mut lookups: Vec<&str> = vec![key.secret.lookup.as_str()];
        if let Some(p) = &key.previous {
            lookups.push(p.secret.lookup.as_str());
        }
        self.keys.cache().invalidate(&lookups);
    }

    /// Drops the cached account (call after any write to it).
    pub fn invalidate_account(&self, account_id: &str) {
        self.accounts.invalidate(account_id);
    }

    /// Drops the cached application (call after any write to it).
    pub fn invalidate_app(&self, app_id: &str) {
        self.apps.invalidate(app_id);
    }

    /// Drops every cached key (after an account erasure, which may touch many keys).
    pub fn invalidate_all_keys(&self) {
        self.keys.cache().invalidate_all();
    }

    /// The account, from memory when cached.
    pub async fn account(&self, id: &str) -> StoreResult<Option<Arc<Account>>> {
        if let Some(a) = self.accounts.get(id) {
            return Ok(Some(a));
        }
        let found = self.store.get_account(id).await?.map(Arc::new);
        if let Some(a) = &found {
            self.accounts.insert(id, a.clone());
        }
        Ok(found)
    }

    async fn app(&self, id: &str) -> StoreResult<Option<Arc<Application>>> {
        if let Some(a) = self.apps.get(id) {
            return Ok(Some(a));
        }
        let found = self.store.get_app(id).await?.map(Arc::new);
        if let Some(a) = &found {
            self.apps.insert(id, a.clone());
        }
        Ok(found)
    }

    /// Parses a token with the current template, then the legacy ones.
    pub fn parse<'t>(&self, token: &'t str) -> Option<ParsedToken<'t>> {
        std::iter::once(&self.cfg.template)
            .chain(self.cfg.legacy_templates.iter())
            .find_map(|t| t.parse(token).ok())
    }

    /// Finds the key a token belongs to and which of its secrets matched.
    async fn find(
        &self,
        token: &str,
        parsed: &ParsedToken<'_>,
    ) -> StoreResult<Option<(Arc<CompiledKey>, SecretMatch)>> {
        let segment = parsed.lookup_segment();
        let catalog = &self.cfg.catalog;
        let build = |lookup: &str, records| Candidates::build(lookup, records, catalog);
        // A fast scheme's digest is the cache's key as it is; its hex, the stored lookup,
        // is written out only when the cache misses.
        let resolved = match self.cfg.hasher.lookup_digest(token) {
            Some(digest) => {
                let lookup = || hex::encode(digest).into();
                self.keys
                    .resolve_key(LookupKey::of_digest(digest), lookup, build)
                    .await?
            }
            None => {
                let current = self.cfg.hasher.lookup(token, segment);
                let lookup = || current.as_str().into();
                self.keys
                    .resolve_key(LookupKey::of(&current), lookup, build)
                    .await?
            }
        };
        if let Some(cands) = resolved {
            if let Some(hit) = self.match_secret(token, &cands).await {
                return Ok(Some(hit));
            }
            return Ok(None);
        }
        if self.cfg.hasher.is_slow() {
            return Ok(None);
        }
        // A miss under the current pepper: try the previous ones, and re-hash a hit.
        for old in self.cfg.hasher.lookups(token, segment).into_iter().skip(1) {
            let build = |records| Candidates::build(&old, records, catalog);
            if let Some(cands) = self.keys.resolve(&old, build).await? {
                if let Some(hit) = self.match_secret(token, &cands).await {
                    // A revoked key (or a retired secret) is never re-hashed: it must not
                    // come back as a key's current secret.
                    if hit.0.revoked_at.is_none() {
                        self.rehash_later(token, parsed, hit.0.id(), hit.1);
                    }
                    return Ok(Some(hit));
                }
            }
        }
        Ok(None)
    }

    /// Re-hashes a secret found under a previous pepper, off the request path.
    fn rehash_later(&self, token: &str, parsed: &ParsedToken<'_>, key_id: &str, m: SecretMatch) {
        let Ok(stored) = self
            .cfg
            .hasher
            .store(&Secret::new(token), parsed.lookup_segment())
        else {
            return;
        };
        let store = self.store.clone();
        let id = key_id.to_owned();
        let cache = self.keys.cache().clone();
        tokio::spawn(async move {
            let Ok(Some(mut fresh)) = store.get_key(&id).await else {
                return;
            };
            // The new lookup too: the request that found the key missed it and cached the
            // miss.
            let old_lookups: Vec<String> = std::iter::once(fresh.secret.lookup.clone())
                .chain(fresh.previous.as_ref().map(|p| p.secret.lookup.clone()))
                .chain(std::iter::once(stored.lookup.clone()))
                .collect();
            match m {
                SecretMatch::Current => fresh.secret = stored,
                SecretMatch::Previous => match fresh.previous.as_mut() {
                    Some(p) => p.secret = stored,
                    None => return,
                },
            }
            if store.update_key(&fresh, &[]).await.is_ok() {
                let refs: Vec<&str> = old_lookups.iter().map(String::as_str).collect();
                cache.invalidate(&refs);
            }
        });
    }

    /// The first candidate whose secret the token matches. Finding a key by a fast
    /// scheme's lookup value already is the match (the value is the digest); a slow hash is
    /// checked.
    async fn match_secret(&self, token: &str, cands: &Candidates) -> Option<Candidate> {
        for (key, which) in cands.as_slice() {
            let slow = match which {
                SecretMatch::Current => key.slow_secret.as_deref(),
                SecretMatch::Previous => {
                    key.previous.as_ref().and_then(|p| p.slow_secret.as_deref())
                }
            };
            let matched = match slow {
                None => true,
                Some(stored) => self.slow_secret_matches(token, stored).await,
            };
            if matched {
                return Some((key.clone(), *which));
            }
        }
        None
    }

    async fn slow_secret_matches(&self, token: &str, stored: &StoredSecret) -> bool {
        let digest = sha256(token.as_bytes());
        if let Some(h) = self.slow_ok.get(&digest) {
            if ct_eq(h.as_bytes(), stored.hash.as_bytes()) {
                return true;
            }
        }
        let Ok(_permit) = self.slow_gate.acquire().await else {
            return false;
        };
        let hasher = self.cfg.hasher.clone();
        let token_owned = Secret::new(token);
        let stored_owned = stored.clone();
        let ok =
            tokio::task::spawn_blocking(move || hasher.verify(token_owned.expose(), &stored_owned))
                .await
                .unwrap_or(false);
        if ok {
            self.slow_ok.insert(digest, Arc::from(stored.hash.as_str()));
        }
        ok
    }

    /// Verifies one request: the whole of `docs/decision.md`. Every decision is counted
    /// for analytics by the batched writer: under its key and account when a key was
    /// recognised, else in the deployment's totals only (`docs/analytics.md`).
    pub async fn verify(&self, req: &VerifyRequest<'_>) -> VerifyOutcome {
        // One reading of the clock: the decision is counted in the minute it was made.
        let now = self.clock.now_ms();
        let out = self.decide(req, now).await;
        let key = out.key.as_ref().map(|k| (k.id(), k.account_id(), k.mode));
        self.writer.decided(key, out.code.as_str(), now);
        out
    }

    async fn decide(&self, req: &VerifyRequest<'_>, now: i64) -> VerifyOutcome {
        let bucket = req.client_ip.map(ClientAddr::lockout_bucket);
        let locked_out = match &bucket {
            Some(b) => self.limiter.locked(b, now).await,
            None => None,
        };

        // Global keys: full access, no account, no limits, checked in constant time.
        let global = req.token.is_some_and(|token| {
            self.cfg.global_keys.iter().fold(false, |hit, g| {
                ct_eq(g.expose().as_bytes(), token.as_bytes()) | hit
            })
        });
        if global {
            let facts = Facts {
                api_enabled: self.cfg.api_enabled,
                locked_out,
                key: KeyLookup::Global,
                account_status: None,
                app_secret: AppSecretCheck::NotRequired,
                client_ip: req.client_ip.and_then(ClientAddr::ip),
                object_mode: req.object_mode,
                required: Requirement::None,
                self_service: req.self_service,
                now_ms: now,
            };
            let mut out =
                VerifyOutcome::deny(authorize(&facts).err().unwrap_or(Denial::new(Code::Valid)));
            out.global = out.is_valid();
            return out;
        }

        let found = match req.token.filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(token) => match self.parse(token) {
                None => Ok(None),
                Some(parsed) => match self.find(token, &parsed).await {
                    Ok(Some((key, m))) if tags_match(&parsed, &key) => Ok(Some((key, m))),
                    Ok(_) => Ok(None),
                    Err(e) => Err(e),
                },
            },
        };
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed");
                return VerifyOutcome::deny(Denial::new(Code::ServiceUnavailable));
            }
        };
        let key_lookup = match (&found, req.token.filter(|t| !t.is_empty())) {
            (_, None) => KeyLookup::Missing,
            (None, Some(_)) => KeyLookup::Invalid,
            (Some((k, m)), Some(_)) => KeyLookup::Found {
                key: k,
                matched: *m,
            },
        };

        let mut account = None;
        let mut app_check = AppSecretCheck::NotRequired;
        if let Some((key, _)) = &found {
            match self.account(key.account_id()).await {
                Ok(a) => account = a,
                Err(e) => {
                    tracing::error!(error = %e, "account lookup failed");
                    return VerifyOutcome::deny(Denial::new(Code::ServiceUnavailable));
                }
            }
            if self.cfg.app_required && key.app_id().is_none() {
                app_check = AppSecretCheck::Unbound;
            } else if self.cfg.app_secret_required {
                if let Some(app_id) = key.app_id() {
                    // Like the account: a lookup that fails is not a wrong secret.
                    let app = match self.app(app_id).await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::error!(error = %e, "application lookup failed");
                            return VerifyOutcome::deny(Denial::new(Code::ServiceUnavailable));
                        }
                    };
                    app_check = check_app_secret(
                        &self.cfg.hasher,
                        app.as_deref(),
                        key.mode,
                        req.app_secret,
                    );
                }
            }
        }

        let required = match (req.impossible, req.scopes_all, req.scopes_any) {
            (true, _, _) => Requirement::Impossible,
            (false, Some(all), Some(any)) => Requirement::AllAndAny(all, any),
            (false, Some(all), None) => Requirement::All(all),
            (false, None, Some(any)) => Requirement::Any(any),
            (false, None, None) => Requirement::None,
        };
        let facts = Facts {
            api_enabled: self.cfg.api_enabled,
            locked_out,
            key: key_lookup,
            account_status: account.as_ref().map(|a| a.status),
            app_secret: app_check,
            client_ip: req.client_ip.and_then(ClientAddr::ip),
            object_mode: req.object_mode,
            required,
            self_service: req.self_service,
            now_ms: now,
        };
        let verdict = authorize(&facts);

        if let Err(denial) = verdict {
            if denial.code.counts_toward_lockout() {
                if let Some(b) = bucket {
                    // The failure that locks the network out is announced once
                    // (`lockout.started`, docs/webhooks.md).
                    let started = self.limiter.fail(&b, now).await;
                    if let (Some(retry_after), None) = (started, locked_out) {
                        self.writer.event(AuditEvent {
                            id: new_id("evt"),
                            account_id: None,
                            mode: None,
                            kind: "lockout.started".into(),
                            actor: "system".into(),
                            ip: req
                                .client_ip
                                .and_then(ClientAddr::ip)
                                .map(|i| i.to_string()),
                            at: now,
                            data: serde_json::json!({
                                "network": b.to_string(),
                                "retry_after_seconds": retry_after,
                            }),
                        });
                    }
                }
            }
            let mut out = VerifyOutcome::deny(denial);
            if let Some((key, _)) = found {
                self.record_use(key.id(), req, &out, now, false);
                if denial.code == Code::IpNotAllowed {
                    self.writer.event(AuditEvent {
                        id: new_id("evt"),
                        account_id: Some(key.account_id().to_owned()),
                        mode: Some(key.mode),
                        kind: "key.ip_denied".into(),
                        actor: key.id().to_owned(),
                        ip: req
                            .client_ip
                            .and_then(ClientAddr::ip)
                            .map(|i| i.to_string()),
                        at: now,
                        data: serde_json::json!({ "key_id": key.id() }),
                    });
                }
                out.key = Some(key);
                out.account = account;
            }
            return out;
        }

        let Some((key, _)) = found else {
            return VerifyOutcome::deny(Denial::new(Code::InvalidApiKey));
        };
        let Some(account) = account else {
            return VerifyOutcome::deny(Denial::new(Code::InvalidApiKey));
        };
        let plan = self.plan(&account.plan);
        let rate_limit = key
            .rate_limit
            .map(|r| RateLimit {
                limit: r.requests,
                window_ms: u64::from(r.per_seconds) * 1000,
            })
            .or(plan.rate);
        // One bucket per key and policy: a plan change (or a new override) starts the key on
        // the new policy's own bucket at once, so an upgrade lifts a limit already hit
        // rather than waiting for the old policy's backlog to drain.
        let rate = match rate_limit {
            Some(l) => {
                let bucket = format!("{}/{}/{}", key.id(), l.limit, l.window_ms);
                Some(self.limiter.rate(&bucket, l, 1, now).await)
            }
            None => None,
        };
        let mut quotas = Vec::new();
        let mut admitted = true;
        if rate.as_ref().is_none_or(|r| r.allowed) {
            if let (Some(admit), Some(limit)) = (req.admit, plan.concurrency) {
                admitted = (admit.0)(&key, limit);
            }
        }
        if admitted && rate.as_ref().is_none_or(|r| r.allowed) {
            match self
                .consume_quotas(&account, key.mode, plan, req.cost, now)
                .await
            {
                Ok(q) => quotas = q,
                Err(e) => {
                    tracing::error!(error = %e, "quota lookup or usage write failed");
                    return VerifyOutcome::deny(Denial::new(Code::ServiceUnavailable));
                }
            }
        }
        let verdict = limit_verdict(rate.as_ref(), admitted, &quotas);
        let mut out = match verdict {
            Ok(()) => VerifyOutcome::deny(Denial::new(Code::Valid)),
            Err(d) => VerifyOutcome::deny(d),
        };
        out.rate = rate;
        out.rate_limit = rate_limit;
        out.quotas = quotas;
        self.record_use(key.id(), req, &out, now, out.is_valid());
        out.key = Some(key);
        out.account = Some(account);
        out
    }

    /// Consumes quota for the request: the explicit `cost` units, and one `requests` unit
    /// when the plan has a `requests` quota. Nothing is consumed unless all allow it.
    async fn consume_quotas(
        &self,
        account: &Account,
        mode: Mode,
        plan: &PlanLimits,
        cost: &[(String, u64)],
        now: i64,
    ) -> StoreResult<Vec<QuotaOutcome>> {
        let mut items: Vec<(QuotaKey, &QuotaSpec, u64)> = Vec::new();
        for spec in &plan.quotas {
            let explicit = cost.iter().find(|(u, _)| *u == spec.unit).map(|(_, n)| *n);
            let amount = match explicit {
                Some(n) => n,
                None if spec.unit == "requests" => 1,
                None => continue,
            };
            let (start, _) = spec.period.bounds(now);
            let qk = QuotaKey {
                account_id: account.id.clone(),
                mode,
                unit: spec.unit.clone(),
                period_start: start,
            };
            items.push((qk, spec, amount));
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self
            .limiter
            .consume_quotas(self.store.as_ref(), &items, now)
            .await?;
        if outcomes.iter().all(|o| o.allowed) {
            let deltas = items
                .iter()
                .map(|(qk, _, amount)| UsageDelta {
                    account_id: qk.account_id.clone(),
                    mode: qk.mode,
                    unit: qk.unit.clone(),
                    period_start: qk.period_start,
                    amount: *amount,
                })
                .collect();
            // Batched: queued at once. Strict: committed before the request is answered; if
            // that fails, the units are given back and the request is not answered as
            // allowed (see docs/usage-durability.md).
            if let Err(e) = self.writer.charge(deltas).await {
                let taken: Vec<(QuotaKey, u64)> =
                    items.into_iter().map(|(qk, _, n)| (qk, n)).collect();
                self.limiter.give_back(&taken).await;
                return Err(e);
            }
        }
        Ok(outcomes)
    }

    /// Loads a quota counter's stored value into the in-process state the first time it is
    /// used in this process.
    pub async fn ensure_quota_loaded(&self, qk: &QuotaKey) -> StoreResult<()> {
        self.limiter.load_local(self.store.as_ref(), qk).await
    }

    /// The units used so far in a quota counter's period (shared through Redis when
    /// configured).
    pub async fn quota_used(&self, qk: &QuotaKey, period: Period) -> StoreResult<u64> {
        let now = self.clock.now_ms();
        self.limiter
            .quota_used(self.store.as_ref(), qk, period, now)
            .await
    }

    /// Counts usage reported after the fact against a quota counter (never refused). The
    /// caller persists it in the store afterwards.
    pub async fn add_usage(&self, qk: &QuotaKey, period: Period, amount: u64) -> StoreResult<()> {
        let now = self.clock.now_ms();
        self.limiter
            .add_usage(self.store.as_ref(), qk, period, amount, now)
            .await
    }

    fn record_use(
        &self,
        key_id: &str,
        req: &VerifyRequest<'_>,
        out: &VerifyOutcome,
        now: i64,
        success: bool,
    ) {
        self.writer.used(
            &KeyUse {
                key_id,
                at: now,
                ip: req.client_ip.and_then(ClientAddr::ip),
                method: req.method,
                path: req.path,
                status: out.code.status(),
                code: out.code.as_str(),
            },
            success,
        );
    }
}

/// The template's mode and type tags, when present, must agree with the record: a token
/// re-tagged by hand is not the key that was issued.
fn tags_match(parsed: &ParsedToken<'_>, rec: &CompiledKey) -> bool {
    parsed.mode.is_none_or(|m| m == rec.mode) && parsed.key_type.is_none_or(|t| t == rec.key_type)
}

/// Applies the writes other replicas commit (the store's invalidation feed) to this
/// process's caches, until the feed ends. A lagging follower forgets everything.
async fn follow(
    mut feed: tokio::sync::broadcast::Receiver<Invalidation>,
    keys: KeyCache<Candidates>,
    accounts: RecordCache<Arc<Account>>,
    apps: RecordCache<Arc<Application>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match feed.recv().await {
            Ok(Invalidation::Lookup(l)) => keys.invalidate(&[l.as_str()]),
            Ok(Invalidation::Account(id)) => accounts.invalidate(&id),
            Ok(Invalidation::App(id)) => apps.invalidate(&id),
            Ok(Invalidation::All) | Err(RecvError::Lagged(_)) => {
                keys.invalidate_all();
                accounts.invalidate_all();
                apps.invalidate_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}
