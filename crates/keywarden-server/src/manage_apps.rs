//! Delegated access and key sets, shared by the admin API, the self-service API and the CLI:
//! third-party applications and their two secrets, grants of an account to an application,
//! the default key sets made when an account is created or approved, and revealing
//! recoverable test secrets.
//!
//! Application secrets are stored as HMAC-SHA256 under the pepper, whatever `keys.hash`
//! says: they are checked on every request made with an application's key, where a slow
//! hash would cost too much. They are shown once, when made, and never again.

use crate::errors::ApiError;
use crate::manage::{check_len, check_name, Actor, Manager, NewKey, MAX_DESCRIPTION, MAX_NAME};
use crate::secretbox::SealError;
use crate::state::AppState;
use keywarden_core::codes::Code;
use keywarden_core::model::{
    new_id, Account, AccountStatus, AppEnvironment, Application, AuditEvent, Grant, KeyRecord,
    KeyType, Millis, Mode, Role, StoredSecret,
};
use keywarden_core::scopes::ScopeSet;
use keywarden_core::template::{KeyTemplate, TemplateTags};
use keywarden_core::Secret;
use keywarden_store::Page;
use serde_json::{json, Value};

/// The longest application URL.
pub const MAX_URL: usize = 2048;
/// The most scopes an application may request or a grant may hold.
pub const MAX_SCOPES: usize = 256;
/// The template of production secrets.
pub const PRODUCTION_SECRET_TEMPLATE: &str = "kwapp_prod_{random:32}";
/// The template of sandbox secrets.
pub const SANDBOX_SECRET_TEMPLATE: &str = "kwapp_sbx_{random:32}";
/// The reason recorded on keys revoked because their grant was deleted.
pub const GRANT_DELETED_REASON: &str = "grant deleted";
/// The metadata flag marking the keys of a default set.
pub const DEFAULT_SET_FLAG: &str = "default_set";

/// A new application.
#[derive(Clone, Debug, Default)]
pub struct NewApp {
    /// Display name, 1–100 characters.
    pub name: String,
    /// Short description, at most 500 characters.
    pub description: String,
    /// Public page about the integration (`http://` or `https://`).
    pub url: Option<String>,
    /// Requested scopes, from the catalog.
    pub scopes: Vec<String>,
}

/// Changes to an application; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct AppPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New URL (`Some(None)` removes it).
    pub url: Option<Option<String>>,
    /// New requested scopes. Existing grants and their keys keep what they were given.
    pub scopes: Option<Vec<String>>,
}

/// Both secrets of a new application, shown once.
#[derive(Debug)]
pub struct AppSecrets {
    /// Goes with live keys.
    pub production: Secret,
    /// Goes with test keys.
    pub sandbox: Secret,
}

/// A key just made, with its secret (shown once).
pub type IssuedKey = (KeyRecord, Secret);

/// A grant just made, with the key made under it.
#[derive(Debug)]
pub struct IssuedGrant {
    /// The grant.
    pub grant: Grant,
    /// Its key.
    pub key: KeyRecord,
    /// The key's secret, shown once.
    pub api_key: Secret,
}

/// Checks an application URL: empty means none.
fn check_url(url: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(u) = url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    check_len("url", &u, MAX_URL)?;
    let lower = u.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    if rest.is_none_or(str::is_empty) || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::invalid(
            "url: must be an http:// or https:// address without spaces",
        ));
    }
    Ok(Some(u))
}

/// Removes repeated scope names, keeping the first of each.
fn dedup(scopes: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    scopes
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// The application and grant rules.
#[derive(Clone, Debug)]
pub struct AppManager {
    state: AppState,
}

impl AppManager {
    /// A manager over the service state.
    pub fn new(state: &AppState) -> Self {
        AppManager {
            state: state.clone(),
        }
    }

    fn keys(&self) -> Manager {
        Manager::new(&self.state)
    }

    fn now(&self) -> Millis {
        self.state.clock.now_ms()
    }

    /// Checks requested or granted scopes against the catalog: 1–256 names, each known.
    fn check_scopes(
        &self,
        field: &str,
        scopes: Vec<String>,
    ) -> Result<(Vec<String>, ScopeSet), ApiError> {
        let scopes = dedup(scopes);
        if scopes.is_empty() {
            return Err(ApiError::with(
                Code::InvalidScope,
                format!("{field}: at least one scope is needed"),
            ));
        }
        if scopes.len() > MAX_SCOPES {
            return Err(ApiError::invalid(format!(
                "{field}: at most {MAX_SCOPES} entries"
            )));
        }
        let set = self
            .state
            .settings
            .catalog
            .compile(&scopes)
            .map_err(|e| ApiError::with(Code::InvalidScope, format!("{field}: {e}")))?;
        Ok((scopes, set))
    }

    /// A new secret of `env`: (token, its stored form).
    fn mint_app_secret(&self, env: AppEnvironment) -> Result<(Secret, StoredSecret), ApiError> {
        let source = match env {
            AppEnvironment::Production => PRODUCTION_SECRET_TEMPLATE,
            AppEnvironment::Sandbox => SANDBOX_SECRET_TEMPLATE,
        };
        let internal = |what: &str| {
            tracing::error!("cannot make an application secret: {what}");
            ApiError::new(Code::InternalError)
        };
        let template = KeyTemplate::compile(source, &TemplateTags::default())
            .map_err(|_| internal("bad template"))?;
        let token = template
            .try_generate(Mode::Live, KeyType::Secret)
            .map_err(|_| internal("no randomness"))?;
        let hasher = self
            .state
            .settings
            .app_hasher
            .as_ref()
            .ok_or_else(|| internal("no pepper is configured"))?;
        let stored = hasher
            .store(&token, "")
            .map_err(|_| internal("hashing failed"))?;
        Ok((token, stored))
    }

    // ---- applications ----

    /// Creates an application; its two secrets are returned once.
    pub async fn create_app(
        &self,
        actor: &Actor,
        new: NewApp,
    ) -> Result<(Application, AppSecrets), ApiError> {
        let name = check_name("name", &new.name)?;
        check_len("description", &new.description, MAX_DESCRIPTION)?;
        let url = check_url(new.url)?;
        let (scopes, _) = self.check_scopes("scopes", new.scopes)?;
        let (production, production_stored) = self.mint_app_secret(AppEnvironment::Production)?;
        let (sandbox, sandbox_stored) = self.mint_app_secret(AppEnvironment::Sandbox)?;
        let app = Application {
            id: new_id("app"),
            name,
            description: new.description,
            url,
            scopes,
            production: production_stored,
            sandbox: sandbox_stored,
            created_at: self.now(),
        };
        let created = self.keys().event(
            actor,
            "application.created",
            None,
            None,
            json!({ "app_id": app.id, "name": app.name, "scopes": app.scopes }),
        );
        self.state.store.create_app(&app, &[created]).await?;
        self.state.verifier.invalidate_app(&app.id);
        Ok((
            app,
            AppSecrets {
                production,
                sandbox,
            },
        ))
    }

    /// The application, or 404.
    pub async fn app(&self, id: &str) -> Result<Application, ApiError> {
        self.state
            .store
            .get_app(id)
            .await?
            .ok_or_else(ApiError::not_found)
    }

    /// Applications by id.
    pub async fn list_apps(&self, page: &Page) -> Result<Vec<Application>, ApiError> {
        Ok(self.state.store.list_apps(page).await?)
    }

    /// Updates an application's name, description, URL or requested scopes.
    pub async fn update_app(
        &self,
        actor: &Actor,
        id: &str,
        patch: AppPatch,
    ) -> Result<Application, ApiError> {
        let mut app = self.app(id).await?;
        let mut changed = Vec::new();
        if let Some(n) = patch.name {
            app.name = check_name("name", &n)?;
            changed.push("name");
        }
        if let Some(d) = patch.description {
            check_len("description", &d, MAX_DESCRIPTION)?;
            app.description = d;
            changed.push("description");
        }
        if let Some(u) = patch.url {
            app.url = check_url(u)?;
            changed.push("url");
        }
        if let Some(s) = patch.scopes {
            app.scopes = self.check_scopes("scopes", s)?.0;
            changed.push("scopes");
        }
        let updated = self.keys().event(
            actor,
            "application.updated",
            None,
            None,
            json!({ "app_id": app.id, "changed": changed }),
        );
        self.state.store.update_app(&app, &[updated]).await?;
        self.state.verifier.invalidate_app(&app.id);
        Ok(app)
    }

    /// Replaces one of an application's secrets; the old one stops working at once. The new
    /// secret is returned once.
    pub async fn rotate_app_secret(
        &self,
        actor: &Actor,
        id: &str,
        env: AppEnvironment,
    ) -> Result<(Application, Secret), ApiError> {
        let mut app = self.app(id).await?;
        let (token, stored) = self.mint_app_secret(env)?;
        match env {
            AppEnvironment::Production => app.production = stored,
            AppEnvironment::Sandbox => app.sandbox = stored,
        }
        let rotated = self.keys().event(
            actor,
            "application.secret_rotated",
            None,
            None,
            json!({ "app_id": app.id, "environment": env }),
        );
        self.state.store.update_app(&app, &[rotated]).await?;
        self.state.verifier.invalidate_app(&app.id);
        Ok((app, token))
    }

    // ---- grants ----

    /// Checks granted scopes: known, and within what the application requested
    /// (`invalid_scope` naming each one beyond it).
    fn check_granted(
        &self,
        app: &Application,
        scopes: Option<Vec<String>>,
    ) -> Result<(Vec<String>, ScopeSet), ApiError> {
        let catalog = &self.state.settings.catalog;
        let (scopes, set) =
            self.check_scopes("scopes", scopes.unwrap_or_else(|| app.scopes.clone()))?;
        // The application's own request, as the catalog reads it today.
        let requested = catalog.compile(&app.scopes).unwrap_or_default();
        if !set.is_subset_of(&requested) {
            let beyond: Vec<&str> = scopes
                .iter()
                .filter(|s| {
                    catalog
                        .compile(&[s.as_str()])
                        .map(|one| !one.is_subset_of(&requested))
                        .unwrap_or(true)
                })
                .map(String::as_str)
                .collect();
            return Err(ApiError::with(
                Code::InvalidScope,
                format!(
                    "scopes: beyond what the application requested: {}",
                    beyond.join(", ")
                ),
            ));
        }
        Ok((scopes, set))
    }

    /// An account grants an application some of its requested scopes; a key of `mode` is
    /// made under the grant and returned once. `limit_to` is the granting key's effective
    /// scopes (self-service): a grant never exceeds them.
    pub async fn create_grant(
        &self,
        actor: &Actor,
        account: &Account,
        app_id: &str,
        scopes: Option<Vec<String>>,
        mode: Mode,
        limit_to: Option<&ScopeSet>,
    ) -> Result<IssuedGrant, ApiError> {
        let app = self
            .state
            .store
            .get_app(app_id)
            .await?
            .ok_or_else(|| ApiError::invalid(format!("app_id: no application {app_id:?}")))?;
        let (scopes, set) = self.check_granted(&app, scopes)?;
        if let Some(limit) = limit_to {
            if !set.is_subset_of(limit) {
                return Err(ApiError::with(
                    Code::InsufficientScope,
                    "a key cannot grant scopes beyond its own",
                ));
            }
        }
        // Refused before anything is written, so a refusal leaves no grant behind.
        if mode == Mode::Live && account.status != AccountStatus::Active {
            return Err(ApiError::with(
                Code::AccountInactive,
                format!(
                    "live keys need an active account; this account is {}",
                    account.status
                ),
            ));
        }
        if self.state.verifier.plan(&account.plan).max_keys == Some(0) {
            return Err(ApiError::with(
                Code::PlanLimitReached,
                format!("the {} plan does not include API keys", account.plan),
            ));
        }
        let grant = Grant {
            id: new_id("grt"),
            account_id: account.id.clone(),
            app_id: app.id.clone(),
            scopes: scopes.clone(),
            created_at: self.now(),
        };
        let m = self.keys();
        let created = m.event(
            actor,
            "grant.created",
            Some(&account.id),
            None,
            json!({ "grant_id": grant.id, "app_id": app.id, "scopes": grant.scopes }),
        );
        self.state.store.create_grant(&grant, &[created]).await?;
        let new = Self::grant_key(&app, &grant, mode);
        match m.create_key(actor, account, new, None).await {
            Ok((key, api_key)) => Ok(IssuedGrant {
                grant,
                key,
                api_key,
            }),
            Err(e) => {
                // No grant without its key: undo it, and say so in the trail.
                let undone = |_: &[KeyRecord]| {
                    vec![m.event(
                        actor,
                        "grant.deleted",
                        Some(&account.id),
                        None,
                        json!({ "grant_id": grant.id, "app_id": app.id, "reason": "its key could not be made", "revoked_keys": [] }),
                    )]
                };
                let _ = self
                    .state
                    .store
                    .delete_grant(&grant.id, self.now(), &undone)
                    .await;
                Err(e)
            }
        }
    }

    /// The key made under a grant: a secret key bound to the application, with the granted
    /// scopes and role `member`, so an application never manages the account's keys or
    /// grants.
    fn grant_key(app: &Application, grant: &Grant, mode: Mode) -> NewKey {
        let name: String = app.name.chars().take(MAX_NAME).collect();
        let description: String = format!("Granted to the application {}", app.name)
            .chars()
            .take(MAX_DESCRIPTION)
            .collect();
        NewKey {
            key_type: KeyType::Secret,
            role: Role::Member,
            description,
            scopes: Some(grant.scopes.clone()),
            app_id: Some(app.id.clone()),
            grant_id: Some(grant.id.clone()),
            ..NewKey::named(mode, &name)
        }
    }

    /// Binds a key the operator makes with `app_id` to the account's grant for that
    /// application (the most recent one): the key carries the grant, and its scopes default
    /// to and may not exceed the granted ones. Without a grant the request is refused.
    pub async fn bind_to_grant(
        &self,
        account: &Account,
        app_id: &str,
        new: &mut NewKey,
    ) -> Result<(), ApiError> {
        let app = self
            .state
            .store
            .get_app(app_id)
            .await?
            .ok_or_else(|| ApiError::invalid(format!("app_id: no application {app_id:?}")))?;
        let grant = self
            .state
            .store
            .list_grants(&account.id)
            .await?
            .into_iter()
            .rev()
            .find(|g| g.app_id == app.id)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "app_id: the account has not granted the application {app_id:?}; create a grant first"
                ))
            })?;
        let catalog = &self.state.settings.catalog;
        let granted = catalog.compile(&grant.scopes).unwrap_or_default();
        let scopes = new.scopes.clone().unwrap_or_else(|| grant.scopes.clone());
        let (scopes, set) = self.check_scopes("scopes", scopes)?;
        if !set.is_subset_of(&granted) {
            return Err(ApiError::with(
                Code::InvalidScope,
                format!(
                    "scopes: a key of the application may hold at most the granted scopes ({})",
                    grant.scopes.join(", ")
                ),
            ));
        }
        new.scopes = Some(scopes);
        new.app_id = Some(app.id);
        new.grant_id = Some(grant.id);
        Ok(())
    }

    /// Checks new scopes for a key made under a grant: they may not exceed the granted ones.
    /// Keys of no grant pass unchecked.
    pub async fn check_within_grant(
        &self,
        key: &KeyRecord,
        scopes: &[String],
    ) -> Result<(), ApiError> {
        let Some(grant_id) = &key.grant_id else {
            return Ok(());
        };
        let Some(grant) = self.state.store.get_grant(grant_id).await? else {
            return Err(ApiError::with(
                Code::Conflict,
                "the grant this key was made under is deleted",
            ));
        };
        let catalog = &self.state.settings.catalog;
        let granted = catalog.compile(&grant.scopes).unwrap_or_default();
        let set = catalog
            .compile(scopes)
            .map_err(|e| ApiError::with(Code::InvalidScope, format!("scopes: {e}")))?;
        if !set.is_subset_of(&granted) {
            return Err(ApiError::with(
                Code::InvalidScope,
                format!(
                    "scopes: a key of the application may hold at most the granted scopes ({})",
                    grant.scopes.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The grant, or 404 (also when it belongs to another account than `account_id`).
    pub async fn grant(&self, account_id: Option<&str>, id: &str) -> Result<Grant, ApiError> {
        self.state
            .store
            .get_grant(id)
            .await?
            .filter(|g| account_id.is_none_or(|a| a == g.account_id))
            .ok_or_else(ApiError::not_found)
    }

    /// An account's grants.
    pub async fn list_grants(&self, account_id: &str) -> Result<Vec<Grant>, ApiError> {
        Ok(self.state.store.list_grants(account_id).await?)
    }

    /// Deletes a grant; every key made under it is revoked at once. Returns those keys.
    pub async fn delete_grant(
        &self,
        actor: &Actor,
        grant: &Grant,
    ) -> Result<Vec<KeyRecord>, ApiError> {
        let now = self.now();
        let m = self.keys();
        // The keys this deletion revokes are known only in its transaction: their events
        // are made there, one `key.revoked` each, then the grant's own.
        let events = |keys: &[KeyRecord]| {
            let revoked: Vec<&KeyRecord> = keys
                .iter()
                .filter(|k| {
                    k.revoked_at == Some(now)
                        && k.revoked_reason.as_deref() == Some(GRANT_DELETED_REASON)
                })
                .collect();
            let mut events: Vec<AuditEvent> = revoked
                .iter()
                .map(|k| {
                    m.event(
                        actor,
                        "key.revoked",
                        Some(&k.account_id),
                        Some(k.mode),
                        json!({ "key_id": k.id, "reason": GRANT_DELETED_REASON, "grant_id": grant.id }),
                    )
                })
                .collect();
            let ids: Vec<&str> = revoked.iter().map(|k| k.id.as_str()).collect();
            events.push(m.event(
                actor,
                "grant.deleted",
                Some(&grant.account_id),
                None,
                json!({ "grant_id": grant.id, "app_id": grant.app_id, "revoked_keys": ids }),
            ));
            events
        };
        let keys = self
            .state
            .store
            .delete_grant(&grant.id, now, &events)
            .await?;
        for k in &keys {
            self.state.verifier.invalidate_key(k);
        }
        Ok(keys)
    }

    // ---- accounts and default key sets ----

    /// Creates an account, then, with `keys.default_sets`, its test key pair (and its live
    /// pair when it is created active, which is an approval in itself).
    pub async fn create_account(
        &self,
        actor: &Actor,
        name: &str,
        plan: Option<String>,
        status: Option<AccountStatus>,
        metadata: Option<Value>,
    ) -> Result<(Account, Vec<IssuedKey>), ApiError> {
        let account = self
            .keys()
            .insert_account(actor, name, plan, status, metadata)
            .await?;
        let mut keys = self.default_set(actor, &account, Mode::Test).await?;
        keys.extend(self.default_set(actor, &account, Mode::Live).await?);
        Ok((account, keys))
    }

    /// Sets an account's status (approval is `active`); an account that becomes active gets
    /// its live key pair with `keys.default_sets`, once.
    pub async fn set_status(
        &self,
        actor: &Actor,
        id: &str,
        status: AccountStatus,
    ) -> Result<(Account, Vec<IssuedKey>), ApiError> {
        let account = self
            .keys()
            .update_account(
                actor,
                id,
                crate::manage::AccountPatch {
                    status: Some(status),
                    ..Default::default()
                },
            )
            .await?;
        let keys = self.default_set(actor, &account, Mode::Live).await?;
        Ok((account, keys))
    }

    /// Makes the default pair of `mode` (a publishable key with the public scopes and a
    /// secret key with `keys.default_scopes`) unless default sets are off, the account
    /// already had that pair, live keys are not yet allowed, or the plan has no API keys.
    pub async fn default_set(
        &self,
        actor: &Actor,
        account: &Account,
        mode: Mode,
    ) -> Result<Vec<IssuedKey>, ApiError> {
        if !self.state.settings.config.keys.default_sets
            || (mode == Mode::Live && account.status != AccountStatus::Active)
            || self.state.verifier.plan(&account.plan).max_keys == Some(0)
            || self.has_default_set(&account.id, mode).await?
        {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (key_type, name) in [
            (KeyType::Publishable, "Default publishable key"),
            (KeyType::Secret, "Default secret key"),
        ] {
            let new = NewKey {
                key_type,
                metadata: Some(json!({ DEFAULT_SET_FLAG: true })),
                ..NewKey::named(mode, name)
            };
            match self.keys().create_key(actor, account, new, None).await {
                Ok(k) => out.push(k),
                // A plan that allows fewer keys gets what fits.
                Err(e) if e.code == Code::PlanLimitReached => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Whether the account ever had a default pair of `mode` (revoked ones included, so a
    /// suspended and re-approved account is not handed new keys unasked).
    async fn has_default_set(&self, account_id: &str, mode: Mode) -> Result<bool, ApiError> {
        let mut page = Page {
            after_id: None,
            limit: 1000,
        };
        loop {
            let batch = self
                .state
                .store
                .list_keys(account_id, Some(mode), &page)
                .await?;
            if batch
                .iter()
                .any(|k| k.metadata.get(DEFAULT_SET_FLAG) == Some(&Value::Bool(true)))
            {
                return Ok(true);
            }
            if batch.len() < page.limit as usize {
                return Ok(false);
            }
            page.after_id = batch.last().map(|k| k.id.clone());
        }
    }

    // ---- recoverable test secrets ----

    /// Shows a test key's secret again (`keys.recoverable_test_secrets`). Live secrets are
    /// never recoverable, whatever the configuration.
    pub async fn reveal(&self, actor: &Actor, key: &KeyRecord) -> Result<Secret, ApiError> {
        if key.mode == Mode::Live {
            return Err(ApiError::with(
                Code::Conflict,
                "live secrets are shown once and are never recoverable; roll the key to get a new one",
            ));
        }
        let Some(secretbox) = &self.state.settings.secretbox else {
            return Err(ApiError::with(
                Code::Conflict,
                "test secrets are not recoverable here (keys.recoverable_test_secrets is off)",
            ));
        };
        if key.revoked_at.is_some() {
            return Err(ApiError::with(
                Code::Conflict,
                "the key is revoked; its secret is gone",
            ));
        }
        let Some(sealed) = &key.recoverable else {
            return Err(ApiError::with(
                Code::Conflict,
                "this key's secret was not kept recoverable (it was made before recoverable test secrets were on); roll the key to get a new one",
            ));
        };
        let secret = secretbox.open(sealed, &key.id).map_err(|e: SealError| {
            tracing::error!(key_id = %key.id, error = %e, "a recoverable secret could not be opened");
            ApiError::new(Code::InternalError)
        })?;
        // Revealing changes nothing: its event is written by itself.
        let revealed = self.keys().event(
            actor,
            "key.revealed",
            Some(&key.account_id),
            Some(key.mode),
            json!({ "key_id": key.id }),
        );
        self.state.store.append_events(&[revealed]).await?;
        Ok(secret)
    }
}
