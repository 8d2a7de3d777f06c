//! The invoices example: a small axum API whose routes are protected by Keywarden in
//! process. `examples/invoices.rs` serves it; `tests/layer.rs` drives the same router.
//!
//! - `GET /` is public.
//! - `GET /me` needs any valid key and answers with the caller's [`Principal`].
//! - `GET /invoices` needs `invoices:read`; `POST /invoices` needs `invoices:write`, an
//!   alias that also grants `invoices:read`.
//!
//! Invoices live in memory, per account and mode, as a real API would keep them apart.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use keywarden_core::hashing::fingerprint;
use keywarden_core::model::{
    new_id, Account, AccountStatus, AuditEvent, KeyRecord, KeyType, Mode, RateLimitSpec, Role,
};
use keywarden_core::scopes::{CatalogEntry, InvalidScopes};
use keywarden_core::Secret;
use keywarden_tower::{BuildError, Keywarden, KeywardenLayer, Principal, RequireScopes};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::error::Error;
use std::sync::{Arc, Mutex};

/// The example's scope catalog and aliases: holding `invoices:write` implies
/// `invoices:read`.
pub fn scopes() -> (Vec<CatalogEntry>, BTreeMap<String, Vec<String>>) {
    let entry = |name: &str, description: &str| CatalogEntry {
        name: name.into(),
        description: description.into(),
        public: false,
    };
    let catalog = vec![
        entry("invoices:read", "List and read invoices"),
        entry("invoices:write", "Create invoices"),
    ];
    let aliases = BTreeMap::from([(
        "invoices:write".to_string(),
        vec!["invoices:write".to_string(), "invoices:read".to_string()],
    )]);
    (catalog, aliases)
}

/// The engine on `database_url`, with the example's catalog and the server's defaults.
pub async fn keywarden(database_url: &str) -> Result<Keywarden, BuildError> {
    let (catalog, aliases) = scopes();
    Keywarden::builder()
        .database_url(database_url)
        .catalog(catalog, aliases)
        .build()
        .await
}

/// The router: the public route, and the protected ones behind a [`KeywardenLayer`].
pub fn app(kw: &Keywarden) -> Result<Router, InvalidScopes> {
    let read = RequireScopes::new(kw, &["invoices:read"])?;
    let write = RequireScopes::new(kw, &["invoices:write"])?;
    let protected = Router::new()
        .route("/me", get(me))
        .route(
            "/invoices",
            get(list_invoices)
                .route_layer(read)
                .merge(axum::routing::post(create_invoice).route_layer(write)),
        )
        .with_state(Invoices::default())
        .layer(KeywardenLayer::new(kw.clone()));
    Ok(Router::new().route("/", get(home)).merge(protected))
}

async fn home() -> &'static str {
    "Keywarden invoices example: GET /invoices with an API key in `Authorization: Bearer`.\n"
}

async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

/// An invoice of one account and mode.
#[derive(Clone, Debug, Serialize)]
struct Invoice {
    /// `inv_` + ULID.
    id: String,
    /// Who is billed.
    customer: String,
    /// The amount, in cents.
    amount_cents: u64,
    /// The key that created it.
    created_by: String,
}

/// The body of `POST /invoices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInvoice {
    /// Who is billed.
    customer: String,
    /// The amount, in cents.
    amount_cents: u64,
}

/// Whose invoices: an account in one mode (a global key has neither).
type Tenant = (Option<String>, Option<Mode>);

/// The invoices, kept apart per tenant.
#[derive(Clone, Default)]
struct Invoices(Arc<Mutex<BTreeMap<Tenant, Vec<Invoice>>>>);

fn tenant(p: &Principal) -> Tenant {
    (p.account_id.clone(), p.mode)
}

async fn list_invoices(
    State(invoices): State<Invoices>,
    principal: Principal,
) -> Json<serde_json::Value> {
    let all = invoices.0.lock().unwrap_or_else(|p| p.into_inner());
    let data = all.get(&tenant(&principal)).cloned().unwrap_or_default();
    Json(json!({ "data": data }))
}

async fn create_invoice(
    State(invoices): State<Invoices>,
    principal: Principal,
    Json(new): Json<NewInvoice>,
) -> (StatusCode, Json<Invoice>) {
    let invoice = Invoice {
        id: new_id("inv"),
        customer: new.customer,
        amount_cents: new.amount_cents,
        created_by: principal.key_id.clone(),
    };
    let mut all = invoices.0.lock().unwrap_or_else(|p| p.into_inner());
    all.entry(tenant(&principal))
        .or_default()
        .push(invoice.clone());
    (StatusCode::CREATED, Json(invoice))
}

/// Creates an active account directly in the store. Real deployments create accounts
/// through the server's admin API or CLI; the example bootstraps its own.
pub async fn create_account(kw: &Keywarden, name: &str) -> Result<Account, Box<dyn Error>> {
    let account = Account {
        id: new_id("acc"),
        name: name.into(),
        plan: keywarden_tower::DEFAULT_PLAN.into(),
        status: AccountStatus::Active,
        metadata: json!({}),
        created_at: kw.verifier().clock().now_ms(),
    };
    let created = event(
        kw,
        &account.id,
        None,
        "account.created",
        json!({ "name": name }),
    );
    kw.verifier()
        .store()
        .create_account(&account, &[created])
        .await?;
    Ok(account)
}

/// What [`issue_key`] makes.
pub struct NewKey {
    /// A label for the key.
    pub name: String,
    /// Live or test.
    pub mode: Mode,
    /// Secret or publishable.
    pub key_type: KeyType,
    /// Granted scopes (`*` when empty, as the server's `default_scopes`).
    pub scopes: Vec<String>,
    /// A per-key rate limit instead of the plan's.
    pub rate_limit: Option<RateLimitSpec>,
    /// IPs and CIDRs the key may be used from (empty: any).
    pub ip_allowlist: Vec<String>,
    /// The application the key acts for; with an app-secret header configured, its
    /// requests then also need that application's secret.
    pub app_id: Option<String>,
}

/// A key just made: its record and the token, which is shown this once.
pub struct IssuedKey {
    /// The stored record (no secret in it).
    pub record: KeyRecord,
    /// The key itself.
    pub token: Secret,
}

/// Issues a key directly in the store, as the server's admin API would: a token from the
/// template, its hash under the pepper, the cache told. Real deployments issue keys
/// through the server; the example bootstraps its own.
pub async fn issue_key(
    kw: &Keywarden,
    account: &Account,
    new: NewKey,
) -> Result<IssuedKey, Box<dyn Error>> {
    let cfg = kw.verifier().config();
    let scopes = if new.scopes.is_empty() {
        vec!["*".to_string()]
    } else {
        new.scopes
    };
    cfg.catalog.compile(&scopes)?;
    let token = cfg.template.generate(new.mode, new.key_type);
    let (start, secret) = {
        let parsed = cfg
            .template
            .parse(token.expose())
            .map_err(|_| "a freshly generated key does not parse")?;
        let secret = cfg.hasher.store(&token, parsed.lookup_segment())?;
        (parsed.start(), secret)
    };
    let record = KeyRecord {
        id: new_id("key"),
        account_id: account.id.clone(),
        mode: new.mode,
        key_type: new.key_type,
        name: new.name,
        description: String::new(),
        owner: String::new(),
        role: match new.key_type {
            KeyType::Secret => Role::Owner,
            KeyType::Publishable => Role::Member,
        },
        scopes,
        expires_at: None,
        ip_allowlist: new.ip_allowlist,
        rate_limit: new.rate_limit,
        enabled: true,
        metadata: json!({}),
        app_id: new.app_id,
        grant_id: None,
        prefix: cfg.template.prefix(new.mode, new.key_type),
        start,
        key_hash: fingerprint(token.expose()),
        secret,
        previous: None,
        created_at: kw.verifier().clock().now_ms(),
        last_used_at: None,
        last_used_ip: None,
        revoked_at: None,
        revoked_reason: None,
        recoverable: None,
    };
    let data = json!({ "key_id": record.id, "name": record.name, "scopes": record.scopes });
    let created = event(kw, &account.id, Some(record.mode), "key.created", data);
    kw.verifier()
        .store()
        .insert_key(&record, &[created])
        .await?;
    kw.verifier().invalidate_key(&record);
    Ok(IssuedKey { record, token })
}

/// The audit event of a change, written by the store in the change's own transaction.
fn event(
    kw: &Keywarden,
    account_id: &str,
    mode: Option<Mode>,
    kind: &str,
    data: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        id: new_id("evt"),
        account_id: Some(account_id.into()),
        mode,
        kind: kind.into(),
        actor: "system".into(),
        ip: None,
        at: kw.verifier().clock().now_ms(),
        data,
    }
}
