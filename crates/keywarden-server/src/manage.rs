//! Account and key management, shared by the admin API, the self-service API and the CLI,
//! so every path enforces the same rules: field limits, the catalog, plan limits, modes,
//! no privilege escalation, an audit event for every change, and cache invalidation after
//! every write to a key or account.

use crate::config::EmptyScopes;
use crate::errors::ApiError;
use crate::settings::Settings;
use keywarden_core::codes::Code;
use keywarden_core::decision::CompiledKey;
use keywarden_core::hashing::fingerprint;
use keywarden_core::ip::IpAllowlist;
use keywarden_core::limits::RateLimit;
use keywarden_core::model::{
    new_id, Account, AccountStatus, AuditEvent, KeyRecord, KeyType, Millis, Mode, PreviousSecret,
    RateLimitSpec, Role,
};
use keywarden_core::scopes::ScopeSet;
use keywarden_core::Secret;
use keywarden_store::verifier::Verifier;
use keywarden_store::{ErasureCounts, Store};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, PoisonError};

/// Who made a change, for the audit trail.
/// What an account update changes; a field left `None` stays as it is.
#[derive(Debug, Default)]
pub struct AccountPatch {
    /// New name, 1–100 characters.
    pub name: Option<String>,
    /// New plan (takes effect at once).
    pub plan: Option<String>,
    /// New status.
    pub status: Option<AccountStatus>,
    /// New metadata, a JSON object ≤ 4 KiB.
    pub metadata: Option<Value>,
}

#[derive(Clone, Debug)]
pub struct Actor {
    /// `root`, a key id, or `system`.
    pub name: String,
    /// The client IP of the request, if any.
    pub ip: Option<String>,
}

impl Actor {
    /// The operator (root key or CLI).
    pub fn root(ip: Option<String>) -> Self {
        Actor {
            name: "root".into(),
            ip,
        }
    }
    /// Keywarden itself.
    pub fn system() -> Self {
        Actor {
            name: "system".into(),
            ip: None,
        }
    }
    /// A customer's key.
    pub fn key(id: &str, ip: Option<String>) -> Self {
        Actor {
            name: id.to_string(),
            ip,
        }
    }
}

/// The longest account and key names.
pub const MAX_NAME: usize = 100;
/// The longest key description.
pub const MAX_DESCRIPTION: usize = 500;
/// The longest free-text field otherwise (owner, revocation reason).
pub const MAX_TEXT: usize = 200;
/// The largest metadata object, serialized.
pub const MAX_METADATA_BYTES: usize = 4096;
/// The most IP allowlist entries per key.
pub const MAX_ALLOWLIST: usize = 100;

/// Checks a name: 1–`MAX_NAME` characters after trimming.
pub fn check_name(field: &str, name: &str) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() {
        return Err(ApiError::invalid(format!("{field}: must not be empty")));
    }
    check_len(field, n, MAX_NAME)?;
    Ok(n.to_string())
}

/// Checks a string's length in characters.
pub fn check_len(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n > max {
        return Err(ApiError::invalid(format!(
            "{field}: {n} characters is too long (at most {max})"
        )));
    }
    Ok(())
}

/// Checks metadata: a JSON object of at most 4 KiB.
pub fn check_metadata(field: &str, v: Option<Value>) -> Result<Value, ApiError> {
    let v = v.unwrap_or_else(|| json!({}));
    if !v.is_object() {
        return Err(ApiError::invalid(format!("{field}: must be a JSON object")));
    }
    let n = v.to_string().len();
    if n > MAX_METADATA_BYTES {
        return Err(ApiError::invalid(format!(
            "{field}: {n} bytes is too large (at most {MAX_METADATA_BYTES})"
        )));
    }
    Ok(v)
}

/// What a key may reach and give through the self-service API: its own role, effective
/// scopes and restrictions. It sees and manages only the keys it could have made, and
/// itself; a key it makes or changes stays within it (docs/self-service.md).
#[derive(Clone, Debug)]
pub struct Ceiling {
    /// The calling key.
    key: Arc<CompiledKey>,
    /// The rate limit of its account's plan, which holds every key without its own.
    plan_rate: Option<RateLimit>,
}

impl Ceiling {
    /// The bounds of `key`, a key of an account on a plan with `plan_rate`.
    pub fn new(key: Arc<CompiledKey>, plan_rate: Option<RateLimit>) -> Self {
        Ceiling { key, plan_rate }
    }

    /// The effective scopes of the bounding key.
    pub fn scopes(&self) -> &ScopeSet {
        &self.key.scopes
    }

    /// The rate limit a key is held to: its own, else its plan's (`None`: unlimited).
    fn rate_of(&self, own: Option<RateLimitSpec>) -> Option<RateLimit> {
        own.map(|r| RateLimit::new(r.requests, u64::from(r.per_seconds) * 1000))
            .or(self.plan_rate)
    }
}

/// Whether `inner` admits no more than `outer`: no larger burst and no faster rate. `None`
/// is unlimited.
fn rate_within(inner: Option<RateLimit>, outer: Option<RateLimit>) -> bool {
    match (inner, outer) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(i), Some(o)) => {
            i.limit <= o.limit
                && u128::from(i.limit) * u128::from(o.window_ms)
                    <= u128::from(o.limit) * u128::from(i.window_ms)
        }
    }
}

/// A rate limit in words, for errors.
fn rate_text(r: Option<RateLimit>) -> String {
    match r {
        None => "unlimited".into(),
        Some(r) => format!("{} per {} s", r.limit, r.window_ms.div_ceil(1000)),
    }
}

/// The management service.
#[derive(Clone, Debug)]
pub struct Manager {
    state: Arc<crate::state::Inner>,
}

/// A key to create.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Live or test.
    pub mode: Mode,
    /// Secret or publishable.
    pub key_type: KeyType,
    /// Label.
    pub name: String,
    /// Where the key is stored.
    pub description: String,
    /// The person responsible.
    pub owner: String,
    /// Self-service role.
    pub role: Role,
    /// Requested scopes (`None` = the defaults).
    pub scopes: Option<Vec<String>>,
    /// Expiry.
    pub expires_at: Option<Millis>,
    /// IPs and CIDRs.
    pub ip_allowlist: Vec<String>,
    /// Rate-limit override.
    pub rate_limit: Option<RateLimitSpec>,
    /// Metadata object.
    pub metadata: Option<Value>,
    /// The application the key is bound to.
    pub app_id: Option<String>,
    /// The grant it is made under.
    pub grant_id: Option<String>,
}

impl NewKey {
    /// A secret key of `mode` named `name` with every other field at its default.
    pub fn named(mode: Mode, name: &str) -> Self {
        NewKey {
            mode,
            key_type: KeyType::Secret,
            name: name.to_string(),
            description: String::new(),
            owner: String::new(),
            role: Role::Owner,
            scopes: None,
            expires_at: None,
            ip_allowlist: Vec::new(),
            rate_limit: None,
            metadata: None,
            app_id: None,
            grant_id: None,
        }
    }
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    /// New label.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New owner.
    pub owner: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New expiry (`Some(None)` removes it).
    pub expires_at: Option<Option<Millis>>,
    /// New allowlist.
    pub ip_allowlist: Option<Vec<String>>,
    /// New rate-limit override (`Some(None)` removes it).
    pub rate_limit: Option<Option<RateLimitSpec>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New metadata.
    pub metadata: Option<Value>,
}

impl Manager {
    /// A manager over the service state.
    pub fn new(state: &crate::state::AppState) -> Self {
        Manager {
            state: std::sync::Arc::clone(state_inner(state)),
        }
    }

    fn s(&self) -> &Settings {
        &self.state.settings
    }
    fn store(&self) -> &Arc<dyn Store> {
        &self.state.store
    }
    fn verifier(&self) -> &Verifier {
        &self.state.verifier
    }
    fn now(&self) -> Millis {
        self.state.clock.now_ms()
    }

    /// An audit event made now by `actor`. It is handed to the store call that makes the
    /// change it describes, which writes both in one transaction; an event describing no
    /// change of its own goes to `Store::append_events`.
    pub fn event(
        &self,
        actor: &Actor,
        kind: &str,
        account_id: Option<&str>,
        mode: Option<Mode>,
        data: Value,
    ) -> AuditEvent {
        AuditEvent {
            id: event_id(),
            account_id: account_id.map(str::to_string),
            mode,
            kind: kind.to_string(),
            actor: actor.name.clone(),
            ip: actor.ip.clone(),
            at: self.now(),
            data,
        }
    }

    /// The bounds of a self-service caller: its key, on its account's plan.
    pub fn ceiling(&self, key: Arc<CompiledKey>, account: &Account) -> Ceiling {
        Ceiling::new(key, self.verifier().plan(&account.plan).rate)
    }

    /// Checks that a key with this role and these restrictions stays within `c`: role not
    /// above, expiry not later, allowlist inside, rate limit not above (the plan's when the
    /// key has none of its own). Scopes are checked with the rest of their rules.
    fn check_bounds(
        &self,
        c: &Ceiling,
        role: Role,
        expires_at: Option<Millis>,
        ip_allowlist: &[String],
        rate_limit: Option<RateLimitSpec>,
    ) -> Result<(), ApiError> {
        let own = &c.key;
        if role.rank() > own.role.rank() {
            return Err(ApiError::with(
                Code::InsufficientRole,
                format!(
                    "role: a key cannot give a role above its own ({})",
                    own.role
                ),
            ));
        }
        if let Some(limit) = own.expires_at {
            let latest = crate::views::ts(limit);
            match expires_at {
                None => {
                    return Err(ApiError::invalid(format!(
                        "expires_at: must be set, at the latest to {latest}, when the calling key expires"
                    )))
                }
                Some(t) if t > limit => {
                    return Err(ApiError::invalid(format!(
                        "expires_at: {} is later than {latest}, when the calling key expires",
                        crate::views::ts(t)
                    )))
                }
                Some(_) => {}
            }
        }
        let list = IpAllowlist::parse(ip_allowlist)
            .map_err(|e| ApiError::invalid(format!("ip_allowlist: {:?}: {}", e.entry, e.reason)))?;
        if !list.is_within(&own.allowlist) {
            let allowed: Vec<String> = own
                .allowlist
                .networks()
                .iter()
                .map(|n| n.to_string())
                .collect();
            let outside: Vec<String> = list
                .outside(&own.allowlist)
                .map(|n| n.to_string())
                .collect();
            return Err(ApiError::invalid(if outside.is_empty() {
                format!(
                    "ip_allowlist: an empty list admits any address; the calling key admits only {}",
                    allowed.join(", ")
                )
            } else {
                format!(
                    "ip_allowlist: {} outside the calling key's own allowlist ({})",
                    outside.join(", ") + if outside.len() == 1 { " is" } else { " are" },
                    allowed.join(", ")
                )
            }));
        }
        let (rate, limit) = (c.rate_of(rate_limit), c.rate_of(own.rate_limit));
        if !rate_within(rate, limit) {
            return Err(ApiError::invalid(format!(
                "rate_limit: {} is above the calling key's own rate limit ({})",
                rate_text(rate),
                rate_text(limit)
            )));
        }
        Ok(())
    }

    /// Whether `c` reaches `k`: its own key, or one it could have made — of its account,
    /// mode and application, with role, effective scopes and restrictions within its own.
    pub fn reaches(&self, c: &Ceiling, k: &KeyRecord) -> bool {
        let own = &c.key;
        if k.id == own.id() {
            return true;
        }
        if k.account_id != own.account_id() || k.mode != own.mode {
            return false;
        }
        if own.app_id().is_some()
            && (k.app_id.as_deref() != own.app_id() || k.grant_id.as_deref() != own.grant_id())
        {
            return false;
        }
        // The scopes the key acts with, as the decision sees them.
        let scopes = CompiledKey::compile(k.clone(), &self.s().catalog).scopes;
        scopes.is_subset_of(&own.scopes)
            && self
                .check_bounds(c, k.role, k.expires_at, &k.ip_allowlist, k.rate_limit)
                .is_ok()
    }

    /// A key `c` reaches, by id or `key_hash`; any other is 404, like an unknown one.
    pub async fn key_within(&self, c: &Ceiling, id_or_hash: &str) -> Result<KeyRecord, ApiError> {
        let k = self
            .key_of(Some(c.key.account_id()), Some(c.key.mode), id_or_hash)
            .await?;
        if self.reaches(c, &k) {
            Ok(k)
        } else {
            Err(ApiError::not_found())
        }
    }

    /// Up to `limit` keys `c` reaches, in id order after `after_id`.
    pub async fn keys_within(
        &self,
        c: &Ceiling,
        after_id: Option<String>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, ApiError> {
        let mut out = Vec::new();
        let mut page = keywarden_store::Page {
            after_id,
            limit: limit.max(100),
        };
        loop {
            let batch = self
                .store()
                .list_keys(c.key.account_id(), Some(c.key.mode), &page)
                .await?;
            let done = batch.len() < page.limit as usize;
            page.after_id = batch.last().map(|k| k.id.clone());
            for k in batch {
                if self.reaches(c, &k) {
                    out.push(k);
                    if out.len() == limit as usize {
                        return Ok(out);
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// Checks a plan name against the configured tiers.
    pub fn check_plan(&self, field: &str, plan: &str) -> Result<(), ApiError> {
        if self.s().plans.contains_key(plan) {
            return Ok(());
        }
        let known: Vec<&str> = self.s().plans.keys().map(String::as_str).collect();
        Err(ApiError::invalid(format!(
            "{field}: unknown plan {plan:?}; configured plans: {}",
            known.join(", ")
        )))
    }

    /// Inserts a new account (checked, with its `account.created` event) and nothing else;
    /// creating an account is `AppManager::create_account`, which adds the default key
    /// sets the configuration asks for.
    pub(crate) async fn insert_account(
        &self,
        actor: &Actor,
        name: &str,
        plan: Option<String>,
        status: Option<AccountStatus>,
        metadata: Option<Value>,
    ) -> Result<Account, ApiError> {
        let name = check_name("name", name)?;
        let plan = plan.unwrap_or_else(|| self.s().default_plan.clone());
        self.check_plan("plan", &plan)?;
        let account = Account {
            id: new_id("acc"),
            name,
            plan,
            status: status.unwrap_or(self.s().config.accounts.default_status),
            metadata: check_metadata("metadata", metadata)?,
            created_at: self.now(),
        };
        let created = self.event(
            actor,
            "account.created",
            Some(&account.id),
            None,
            json!({ "name": account.name, "plan": account.plan, "status": account.status }),
        );
        self.store().create_account(&account, &[created]).await?;
        Ok(account)
    }

    /// The account, or 404.
    pub async fn account(&self, id: &str) -> Result<Account, ApiError> {
        self.store()
            .get_account(id)
            .await?
            .ok_or_else(ApiError::not_found)
    }

    /// Updates an account's name, plan, status or metadata.
    pub async fn update_account(
        &self,
        actor: &Actor,
        id: &str,
        patch: AccountPatch,
    ) -> Result<Account, ApiError> {
        let AccountPatch {
            name,
            plan,
            status,
            metadata,
        } = patch;
        let mut a = self.account(id).await?;
        let mut changed = serde_json::Map::new();
        if let Some(n) = name {
            a.name = check_name("name", &n)?;
            changed.insert("name".into(), json!(a.name));
        }
        let mut plan_changed = None;
        if let Some(p) = plan {
            self.check_plan("plan", &p)?;
            if p != a.plan {
                plan_changed = Some((a.plan.clone(), p.clone()));
            }
            a.plan = p;
        }
        if let Some(s) = status {
            a.status = s;
            changed.insert("status".into(), json!(s));
        }
        if metadata.is_some() {
            a.metadata = check_metadata("metadata", metadata)?;
            changed.insert("metadata".into(), json!(true));
        }
        let mut events = Vec::new();
        if !changed.is_empty() {
            events.push(self.event(
                actor,
                "account.updated",
                Some(&a.id),
                None,
                Value::Object(changed),
            ));
        }
        if let Some((from, to)) = plan_changed {
            events.push(self.event(
                actor,
                "account.plan_changed",
                Some(&a.id),
                None,
                json!({ "from": from, "to": to }),
            ));
        }
        self.store().update_account(&a, &events).await?;
        self.verifier().invalidate_account(&a.id);
        if a.status == AccountStatus::Suspended {
            // A suspended account's portal sessions and unused portal links end now.
            self.store().end_web_sessions(&a.id).await?;
        }
        Ok(a)
    }

    /// Erases an account and everything of it; its keys fail at once.
    pub async fn erase_account(&self, actor: &Actor, id: &str) -> Result<ErasureCounts, ApiError> {
        // Collect the keys first so their cache entries can be dropped precisely.
        let keys = self.all_keys(id).await?;
        // The account's own trail is gone; the erasure itself is recorded under its id, in
        // the erasure's transaction after the deletions, so the operator still finds it by
        // account.
        let erased = |counts: &ErasureCounts| {
            vec![self.event(
                actor,
                "account.erased",
                Some(id),
                None,
                json!({ "account_id": id, "counts": counts }),
            )]
        };
        let counts = self.store().erase_account(id, &erased).await?;
        for k in &keys {
            self.verifier().invalidate_key(k);
        }
        self.verifier().invalidate_account(id);
        self.verifier().limiter().forget_account(id);
        Ok(counts)
    }

    async fn all_keys(&self, account_id: &str) -> Result<Vec<KeyRecord>, ApiError> {
        let mut out = Vec::new();
        let mut page = keywarden_store::Page {
            after_id: None,
            limit: 1000,
        };
        loop {
            let batch = self.store().list_keys(account_id, None, &page).await?;
            let done = batch.len() < page.limit as usize;
            page.after_id = batch.last().map(|k| k.id.clone());
            out.extend(batch);
            if done {
                return Ok(out);
            }
        }
    }

    /// Validates scopes for a new or updated key and returns them as stored.
    fn check_scopes(
        &self,
        key_type: KeyType,
        scopes: Option<Vec<String>>,
        limit_to: Option<&ScopeSet>,
    ) -> Result<Vec<String>, ApiError> {
        let catalog = &self.s().catalog;
        // An empty list is the defaults when the deployment says so (clearing a key's
        // permissions makes it unrestricted again).
        let scopes = scopes
            .filter(|s| !s.is_empty() || self.s().config.keys.empty_scopes != EmptyScopes::Default);
        let scopes = match (scopes, key_type) {
            (Some(s), _) => s,
            (None, KeyType::Publishable) => catalog
                .names(catalog.public_scopes())
                .into_iter()
                .map(str::to_string)
                .collect(),
            (None, KeyType::Secret) => self.s().config.keys.default_scopes.clone(),
        };
        if scopes.len() > 256 {
            return Err(ApiError::invalid("scopes: at most 256 entries"));
        }
        let set = catalog
            .compile(&scopes)
            .map_err(|e| ApiError::with(Code::InvalidScope, e.to_string()))?;
        if key_type == KeyType::Publishable && !set.is_subset_of(catalog.public_scopes()) {
            let public = catalog.public_scopes();
            let offenders: Vec<&str> = scopes
                .iter()
                .filter(|s| {
                    catalog
                        .compile(&[s.as_str()])
                        .map(|one| !one.is_subset_of(public))
                        .unwrap_or(true)
                })
                .map(String::as_str)
                .collect();
            return Err(ApiError::with(
                Code::InvalidScope,
                format!(
                    "publishable keys may hold only public scopes; not public: {}",
                    offenders.join(", ")
                ),
            ));
        }
        if let Some(limit) = limit_to {
            if !set.is_subset_of(limit) {
                return Err(ApiError::with(
                    Code::InsufficientScope,
                    "a key cannot grant scopes beyond its own",
                ));
            }
        }
        Ok(scopes)
    }

    fn check_allowlist(entries: &[String]) -> Result<(), ApiError> {
        if entries.len() > MAX_ALLOWLIST {
            return Err(ApiError::invalid(format!(
                "ip_allowlist: at most {MAX_ALLOWLIST} entries"
            )));
        }
        IpAllowlist::parse(entries)
            .map(|_| ())
            .map_err(|e| ApiError::invalid(format!("ip_allowlist: {:?}: {}", e.entry, e.reason)))
    }

    fn check_rate_limit(r: Option<RateLimitSpec>) -> Result<(), ApiError> {
        if let Some(r) = r {
            if r.requests == 0 || r.per_seconds == 0 || r.per_seconds > 86_400 {
                return Err(ApiError::invalid(
                    "rate_limit: requests must be ≥ 1 and per_seconds 1–86400",
                ));
            }
        }
        Ok(())
    }

    /// Refuses a role this deployment does not give (`keys.allowed_roles`).
    pub(crate) fn check_role(&self, role: Role) -> Result<(), ApiError> {
        let allowed = &self.s().config.keys.allowed_roles;
        if allowed.contains(&role) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        Err(ApiError::invalid(format!(
            "role: {role} is not a role keys may have here; expected one of {}",
            names.join(", ")
        )))
    }

    fn check_expiry(&self, at: Option<Millis>) -> Result<(), ApiError> {
        if at.is_some_and(|t| t <= self.now()) {
            return Err(ApiError::invalid("expires_at: must be in the future"));
        }
        Ok(())
    }

    /// Makes a new token for `mode`/`key_type`: (token, stored secret, prefix, start,
    /// fingerprint). A slow hash (bcrypt, argon2id: tenths of a second) runs on the
    /// blocking pool, so the thread serving other connections never waits for it.
    async fn mint(
        &self,
        mode: Mode,
        key_type: KeyType,
    ) -> Result<
        (
            Secret,
            keywarden_core::model::StoredSecret,
            String,
            String,
            String,
        ),
        ApiError,
    > {
        let s = self.s();
        let token = s.template.generate(mode, key_type);
        let parsed = s
            .template
            .parse(token.expose())
            .map_err(|_| ApiError::new(Code::InternalError))?;
        let prefix = s.template.prefix(mode, key_type);
        let start = parsed.start();
        let segment = parsed.lookup_segment().to_owned();
        let stored = if s.hasher.is_slow() {
            let (hasher, copy) = (s.hasher.clone(), token.clone());
            tokio::task::spawn_blocking(move || hasher.store(&copy, &segment))
                .await
                .map_err(|_| ApiError::new(Code::InternalError))?
        } else {
            s.hasher.store(&token, &segment)
        }
        .map_err(|_| ApiError::new(Code::InternalError))?;
        let fp = fingerprint(token.expose());
        Ok((token, stored, prefix, start, fp))
    }

    /// Creates a key for `account`. `within` is the creating key's bounds (self-service):
    /// the new key may not exceed its role, effective scopes or restrictions.
    pub async fn create_key(
        &self,
        actor: &Actor,
        account: &Account,
        new: NewKey,
        within: Option<&Ceiling>,
    ) -> Result<(KeyRecord, Secret), ApiError> {
        let name = check_name("name", &new.name)?;
        check_len("description", &new.description, MAX_DESCRIPTION)?;
        check_len("owner", &new.owner, MAX_TEXT)?;
        // A publishable key, and a key made under an application's grant, is always
        // `member`, whatever was asked.
        if new.key_type == KeyType::Secret && new.grant_id.is_none() {
            self.check_role(new.role)?;
        }
        let scopes = self.check_scopes(new.key_type, new.scopes, within.map(|c| &c.key.scopes))?;
        Self::check_allowlist(&new.ip_allowlist)?;
        Self::check_rate_limit(new.rate_limit)?;
        self.check_expiry(new.expires_at)?;
        if let Some(c) = within {
            self.check_bounds(
                c,
                new.role,
                new.expires_at,
                &new.ip_allowlist,
                new.rate_limit,
            )?;
            if c.key.app_id().is_some()
                && (new.app_id.as_deref() != c.key.app_id()
                    || new.grant_id.as_deref() != c.key.grant_id())
            {
                return Err(ApiError::with(
                    Code::InsufficientScope,
                    "a key of an application makes keys of that application only",
                ));
            }
        }
        if self.s().config.keys.require_app && new.app_id.is_none() {
            return Err(ApiError::invalid(
                "app_id: every key here belongs to an application; name the application the account has granted",
            ));
        }
        let metadata = check_metadata("metadata", new.metadata)?;
        if new.mode == Mode::Live && account.status != AccountStatus::Active {
            return Err(ApiError::with(
                Code::AccountInactive,
                format!(
                    "live keys need an active account; this account is {}",
                    account.status
                ),
            ));
        }
        let plan = self.verifier().plan(&account.plan);
        if plan.max_keys == Some(0) {
            return Err(ApiError::with(
                Code::PlanLimitReached,
                format!("the {} plan does not include API keys", account.plan),
            ));
        }
        let (token, secret, prefix, start, key_hash) = self.mint(new.mode, new.key_type).await?;
        let id = new_id("key");
        let recoverable =
            crate::secretbox::seal_recoverable(self.s().secretbox.as_ref(), new.mode, &id, &token)?;
        let rec = KeyRecord {
            name,
            description: new.description,
            owner: new.owner,
            role: if new.key_type == KeyType::Publishable {
                Role::Member
            } else {
                new.role
            },
            scopes,
            expires_at: new.expires_at,
            ip_allowlist: new.ip_allowlist,
            rate_limit: new.rate_limit,
            metadata,
            app_id: new.app_id,
            grant_id: new.grant_id,
            prefix,
            start,
            key_hash,
            secret,
            recoverable,
            ..KeyRecord::new(id, account.id.clone(), new.mode, new.key_type, self.now())
        };
        let created = [self.event(
            actor,
            "key.created",
            Some(&rec.account_id),
            Some(rec.mode),
            json!({ "key_id": rec.id, "name": rec.name, "type": rec.key_type, "scopes": rec.scopes }),
        )];
        match plan.max_keys {
            Some(max) => self.store().insert_key_limited(&rec, max, &created).await?,
            None => self.store().insert_key(&rec, &created).await?,
        }
        self.verifier().invalidate_key(&rec);
        Ok((rec, token))
    }

    /// Finds a key by id or `key_hash` within an account (and mode, when given); another
    /// account's key is 404, like an unknown one.
    pub async fn key_of(
        &self,
        account_id: Option<&str>,
        mode: Option<Mode>,
        id_or_hash: &str,
    ) -> Result<KeyRecord, ApiError> {
        let found = if id_or_hash.starts_with("sha256_") {
            self.store().get_key_by_hash(id_or_hash).await?
        } else {
            self.store().get_key(id_or_hash).await?
        };
        found
            .filter(|k| account_id.is_none_or(|a| a == k.account_id))
            .filter(|k| mode.is_none_or(|m| m == k.mode))
            .ok_or_else(ApiError::not_found)
    }

    /// Rotates a key: a new secret now; the old one keeps working for `grace_secs` (0 = a
    /// roll: the old one stops at once). A rotation during a grace ends that grace.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        mut key: KeyRecord,
        grace_secs: u64,
    ) -> Result<(KeyRecord, Secret), ApiError> {
        let max = self.s().config.keys.max_grace_period_seconds;
        if grace_secs > max {
            return Err(ApiError::invalid(format!(
                "grace_period_seconds: {grace_secs} is more than the allowed {max}"
            )));
        }
        if key.revoked_at.is_some() {
            return Err(ApiError::with(
                Code::Conflict,
                "a revoked key cannot be rotated",
            ));
        }
        let before = key.clone();
        let (token, secret, prefix, start, key_hash) = self.mint(key.mode, key.key_type).await?;
        // The grace starts once the new secret exists: a slow hash takes its time.
        let now = self.now();
        // The rotated-out secret is kept even with no grace (it ends now), so presenting it
        // answers `api_key_revoked` rather than `invalid_api_key`.
        key.previous = Some(PreviousSecret {
            secret: key.secret.clone(),
            key_hash: key.key_hash.clone(),
            valid_until: now + (grace_secs as i64) * 1000,
        });
        key.secret = secret;
        key.prefix = prefix;
        key.start = start;
        key.key_hash = key_hash;
        key.recoverable = crate::secretbox::seal_recoverable(
            self.s().secretbox.as_ref(),
            key.mode,
            &key.id,
            &token,
        )?;
        let rotated = self.event(
            actor,
            "key.rotated",
            Some(&key.account_id),
            Some(key.mode),
            json!({
                "key_id": key.id,
                "grace_period_seconds": grace_secs,
                "previous_grace_ended": before.previous.as_ref().is_some_and(|p| p.valid_until > now),
            }),
        );
        self.store().update_key(&key, &[rotated]).await?;
        self.verifier().invalidate_key(&before);
        self.verifier().invalidate_key(&key);
        Ok((key, token))
    }

    /// Revokes a key at once.
    pub async fn revoke_key(
        &self,
        actor: &Actor,
        key: KeyRecord,
        reason: Option<String>,
    ) -> Result<KeyRecord, ApiError> {
        self.revoke_key_with(actor, key, reason, |_| Vec::new())
            .await
    }

    /// Revokes a key at once, writing with its `key.revoked` event the events `then` makes
    /// of the revoked key, in the revocation's transaction. A key already revoked is left
    /// as it is, and `then`'s events are written by themselves.
    pub async fn revoke_key_with(
        &self,
        actor: &Actor,
        mut key: KeyRecord,
        reason: Option<String>,
        then: impl FnOnce(&KeyRecord) -> Vec<AuditEvent> + Send,
    ) -> Result<KeyRecord, ApiError> {
        if let Some(r) = &reason {
            check_len("reason", r, MAX_TEXT)?;
        }
        if key.revoked_at.is_none() {
            key.revoked_at = Some(self.now());
            key.revoked_reason = reason;
            key.previous = None;
            key.recoverable = None;
            let mut events = vec![self.event(
                actor,
                "key.revoked",
                Some(&key.account_id),
                Some(key.mode),
                json!({ "key_id": key.id, "reason": key.revoked_reason }),
            )];
            events.extend(then(&key));
            self.store().update_key(&key, &events).await?;
            self.verifier().invalidate_key(&key);
        } else {
            let events = then(&key);
            if !events.is_empty() {
                self.store().append_events(&events).await?;
            }
        }
        Ok(key)
    }

    /// Updates a key's mutable fields. `within` is the changing key's bounds (self-service):
    /// the key must stay within them.
    pub async fn update_key(
        &self,
        actor: &Actor,
        mut key: KeyRecord,
        patch: KeyPatch,
        within: Option<&Ceiling>,
    ) -> Result<KeyRecord, ApiError> {
        let mut changed = Vec::new();
        if let Some(n) = patch.name {
            key.name = check_name("name", &n)?;
            changed.push("name");
        }
        if let Some(d) = patch.description {
            check_len("description", &d, MAX_DESCRIPTION)?;
            key.description = d;
            changed.push("description");
        }
        if let Some(o) = patch.owner {
            check_len("owner", &o, MAX_TEXT)?;
            key.owner = o;
            changed.push("owner");
        }
        if let Some(r) = patch.role {
            self.check_role(r)?;
            key.role = r;
            changed.push("role");
        }
        if let Some(s) = patch.scopes {
            key.scopes = self.check_scopes(key.key_type, Some(s), within.map(|c| &c.key.scopes))?;
            changed.push("scopes");
        }
        if let Some(e) = patch.expires_at {
            self.check_expiry(e)?;
            key.expires_at = e;
            changed.push("expires_at");
        }
        if let Some(l) = patch.ip_allowlist {
            Self::check_allowlist(&l)?;
            key.ip_allowlist = l;
            changed.push("ip_allowlist");
        }
        if let Some(r) = patch.rate_limit {
            Self::check_rate_limit(r)?;
            key.rate_limit = r;
            changed.push("rate_limit");
        }
        if let Some(e) = patch.enabled {
            key.enabled = e;
            changed.push("enabled");
        }
        if patch.metadata.is_some() {
            key.metadata = check_metadata("metadata", patch.metadata)?;
            changed.push("metadata");
        }
        if let Some(c) = within {
            self.check_bounds(
                c,
                key.role,
                key.expires_at,
                &key.ip_allowlist,
                key.rate_limit,
            )?;
        }
        let updated = self.event(
            actor,
            "key.updated",
            Some(&key.account_id),
            Some(key.mode),
            json!({ "key_id": key.id, "changed": changed }),
        );
        self.store().update_key(&key, &[updated]).await?;
        self.verifier().invalidate_key(&key);
        Ok(key)
    }
}

impl Manager {
    /// Imports an existing key by its stored hash (no secret is ever seen).
    #[allow(clippy::too_many_arguments)]
    pub async fn import_key(
        &self,
        actor: &Actor,
        account: &Account,
        mode: Mode,
        key_type: KeyType,
        name: &str,
        scopes: Option<Vec<String>>,
        role: Role,
        secret: keywarden_core::model::StoredSecret,
        prefix: String,
        key_hash: String,
    ) -> Result<(KeyRecord, ()), ApiError> {
        let name = check_name("name", name)?;
        self.check_role(role)?;
        if self.s().config.keys.require_app {
            return Err(ApiError::invalid(
                "every key here belongs to an application, and imported keys belong to none",
            ));
        }
        let scopes = self.check_scopes(key_type, scopes, None)?;
        let rec = KeyRecord {
            name,
            role,
            scopes,
            start: prefix.clone(),
            prefix,
            key_hash,
            secret,
            ..KeyRecord::new(
                new_id("key"),
                account.id.clone(),
                mode,
                key_type,
                self.now(),
            )
        };
        let created = self.event(
            actor,
            "key.created",
            Some(&rec.account_id),
            Some(rec.mode),
            json!({ "key_id": rec.id, "name": rec.name, "imported": true, "scheme": rec.secret.scheme }),
        );
        self.store().insert_key(&rec, &[created]).await?;
        self.verifier().invalidate_key(&rec);
        Ok((rec, ()))
    }
}

/// A new event id. Ids are ULIDs and the trail is listed by id, so the ids this process
/// makes increase strictly: the events of one operation, made within a millisecond, are
/// listed in the order they were made.
fn event_id() -> String {
    static IDS: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());
    let next = IDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .generate();
    // The random part overflows only after 2^80 ids in one millisecond.
    format!("evt_{}", next.unwrap_or_else(|_| ulid::Ulid::new()))
}

fn state_inner(state: &crate::state::AppState) -> &Arc<crate::state::Inner> {
    state.inner()
}
