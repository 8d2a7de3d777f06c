//! The operator console (`/console`, admin listener; `docs/console.md`). A root key signs
//! in once and is exchanged for a session cookie; the key itself is never stored in the
//! browser nor in the database. Every action calls the manager the admin API calls.

use super::{
    console_id_hash, csrf_token, expiry_field, list_field, new_session_id, opt_field, rate_field,
    render, scope_choices, session_cookie, KeyChanger, NoFields, OrBack, Posted, Shown, SignedIn,
    WebError,
};
use crate::auth::matching_root_key;
use crate::errors::ApiError;
use crate::extract::{client_ip, peer_ip};
use crate::manage::{Actor, KeyPatch, Manager, NewKey};
use crate::manage_apps::AppManager;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::CookieJar;
use axum_extra::extract::Form;
use keywarden_core::model::{AccountStatus, KeyRecord, Mode, Role, WebSession, WebSessionKind};
use keywarden_store::{EventFilter, Page};
use minijinja::context;
use serde::Deserialize;

/// The console's session cookie.
pub const COOKIE: &str = "keywarden_console";
/// How long a console session lasts.
pub const SESSION_SECS: i64 = 8 * 3600;

/// The console's routes, merged into the admin listener outside the root-key guard: its
/// pages check their own session.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/accounts", get(accounts).post(create_account))
        .route("/console/accounts/{id}", get(account))
        .route("/console/accounts/{id}/status", post(set_status))
        .route("/console/accounts/{id}/plan", post(set_plan))
        .route("/console/accounts/{id}/erase", post(erase))
        .route("/console/accounts/{id}/keys", post(create_key))
        .route("/console/keys/{id}", get(key))
        .route("/console/keys/{id}/enabled", post(set_enabled))
        .route("/console/keys/{id}/reveal", post(reveal))
        .route(
            "/console/applications",
            get(applications).post(create_application),
        )
        .route(
            "/console/applications/{id}/secrets/{environment}/rotate",
            post(rotate_application_secret),
        )
        .route("/console/audit", get(audit))
        .merge(super::shared_routes::<Operator>())
        .layer(axum::middleware::from_fn(super::page_headers))
}

/// A signed-in operator: the session's CSRF token and the audit actor.
pub struct Operator {
    /// The service.
    pub state: AppState,
    session_id: String,
    /// What the store keeps of the session id (bound to its root key).
    stored_hash: String,
    csrf: String,
    actor: Actor,
}

super::signed_in!(Operator, "console");

impl KeyChanger for Operator {
    fn state(&self) -> &AppState {
        &self.state
    }

    fn actor(&self) -> Actor {
        self.actor.clone()
    }

    async fn key_to_change(&self, id: &str, back: &str) -> Result<KeyRecord, WebError> {
        Manager::new(&self.state)
            .key_of(None, None, id)
            .await
            .back(back)
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let jar = CookieJar::from_headers(&parts.headers);
        let to_login = || Redirect::to("/console/login").into_response();
        let Some(sid) = jar.get(COOKIE).map(|c| c.value().to_string()) else {
            return Err(to_login());
        };
        let now = state.clock.now_ms();
        // A session counts only while the root key that opened it is configured.
        for root in &state.settings.root_keys {
            let stored_hash = console_id_hash(&sid, root);
            let found = state
                .store
                .get_web_session(&stored_hash, now)
                .await
                .map_err(|e| WebError::from(e).into_response())?;
            if found.is_some_and(|s| s.kind == WebSessionKind::Console) {
                let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions));
                let csrf = csrf_token(&sid);
                super::note_signed_in(&csrf, None);
                return Ok(Operator {
                    state: state.clone(),
                    csrf,
                    session_id: sid,
                    stored_hash,
                    actor: Actor::root(ip.and_then(|c| c.ip()).map(|i| i.to_string())),
                });
            }
        }
        Err(to_login())
    }
}

fn ctx_base(op: &Operator, section: &str) -> minijinja::Value {
    context! { csrf => op.csrf, area => "console", section => section }
}

async fn login_page() -> Response {
    render("login.html", context! { area => "console" })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoginForm {
    root_key: String,
}

/// `POST /console/login`: a root key for a session cookie.
async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    if state.settings.root_keys.is_empty() {
        return WebError::new(
            StatusCode::FORBIDDEN,
            "No root key is configured, so the console is closed. Set KEYWARDEN_ROOT_KEY.",
            "/console/login",
        )
        .into_response();
    }
    let Some(root) = matching_root_key(&state, f.root_key.trim()) else {
        let mut res = render(
            "login.html",
            context! { area => "console", error => "That is not a root key of this deployment." },
        );
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return res;
    };
    let result = async {
        let sid = new_session_id()?;
        let now = state.clock.now_ms();
        let session = WebSession {
            id_hash: console_id_hash(&sid, root),
            kind: WebSessionKind::Console,
            account_id: None,
            mode: None,
            role: None,
            return_url: None,
            created_at: now,
            expires_at: now + SESSION_SECS * 1000,
            root_key: None,
        };
        state.store.create_web_session(&session, now, &[]).await?;
        Ok::<_, WebError>(sid)
    }
    .await;
    match result {
        Ok(sid) => {
            let jar = CookieJar::new().add(session_cookie(
                &state,
                COOKIE,
                sid,
                "/console",
                SESSION_SECS,
            ));
            (jar, Redirect::to("/console")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn logout(p: Posted<Operator, NoFields>) -> Result<Response, WebError> {
    let op = p.by;
    let jar = super::end_session(&op.state, &op.stored_hash, COOKIE, "/console").await?;
    Ok((jar, Redirect::to("/console/login")).into_response())
}

/// `GET /console`: the deployment at a glance: accounts, keys in use per mode (enabled,
/// unexpired, unrevoked), and the last 24 hours of decisions by outcome.
async fn overview(op: Operator) -> Result<Response, WebError> {
    let state = &op.state;
    let census = state.store.census(state.clock.now_ms()).await?;
    let chart = super::day_chart(state, None, None, None).await?;
    let ctx = context! { ..ctx_base(&op, "overview"), ..context! {
        census => census, chart => chart,
    }};
    Ok(render("overview.html", ctx))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AccountsQuery {
    q: String,
    after: String,
}

/// `GET /console/accounts`: accounts by id, searched by id or name.
async fn accounts(op: Operator, Query(q): Query<AccountsQuery>) -> Result<Response, WebError> {
    let state = &op.state;
    let needle = q.q.trim().to_lowercase();
    let mut found = Vec::new();
    let mut page = Page {
        after_id: opt_field(&q.after).map(str::to_string),
        limit: 500,
    };
    let mut next = None;
    // A search reads on through the accounts until a page of matches is full.
    'pages: loop {
        let batch = state.store.list_accounts(&page).await?;
        let done = batch.len() < page.limit as usize;
        page.after_id = batch.last().map(|a| a.id.clone());
        for a in batch {
            if needle.is_empty()
                || a.id.to_lowercase().contains(&needle)
                || a.name.to_lowercase().contains(&needle)
            {
                if found.len() == 50 {
                    next = found
                        .last()
                        .map(|a: &keywarden_core::model::Account| a.id.clone());
                    break 'pages;
                }
                found.push(a);
            }
        }
        if done {
            break;
        }
    }
    let list: Vec<_> = found.iter().map(crate::views::Account::from).collect();
    let plans: Vec<&String> = state.settings.plans.keys().collect();
    let mut ctx = ctx_base(&op, "accounts");
    ctx = context! { ..ctx, ..context! {
        accounts => list, q => q.q, next => next, plans => plans,
        default_plan => state.settings.default_plan,
    }};
    Ok(render("accounts.html", ctx))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateAccountForm {
    name: String,
    plan: String,
    status: String,
}

async fn create_account(p: Posted<Operator, CreateAccountForm>) -> Result<Response, WebError> {
    let (op, f, back) = (p.by, p.form, "/console/accounts");
    let status =
        match opt_field(&f.status) {
            Some(s) => Some(s.parse::<AccountStatus>().map_err(|e| {
                WebError::from(ApiError::invalid(format!("status: {e}"))).back(back)
            })?),
            None => None,
        };
    let (a, keys) = AppManager::new(&op.state)
        .create_account(
            &op.actor,
            &f.name,
            opt_field(&f.plan).map(str::to_string),
            status,
            None,
        )
        .await
        .back(back)?;
    Ok(account_done(&op, &a, &keys))
}

/// After an account is made or its status set: the account's page, or, when default key
/// sets (`keys.default_sets`) gave it keys, those keys' secrets, shown once.
fn account_done(
    op: &Operator,
    a: &keywarden_core::model::Account,
    keys: &[crate::manage_apps::IssuedKey],
) -> Response {
    let account_url = format!("/console/accounts/{}", a.id);
    if keys.is_empty() {
        return Redirect::to(&account_url).into_response();
    }
    let keys: Vec<_> = keys
        .iter()
        .map(|(k, token)| {
            context! {
                id => k.id, name => k.name, mode => k.mode.as_str(), type => k.key_type.as_str(),
                secret => token.expose(),
            }
        })
        .collect();
    let mut res = render(
        "new_keys.html",
        context! {
            area => "console", csrf => op.csrf, account => crate::views::Account::from(a),
            account_url => account_url, keys => keys,
        },
    );
    *res.status_mut() = StatusCode::CREATED;
    res
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ModeQuery {
    mode: String,
    /// The page of keys after this key id.
    after: String,
}

fn mode_of(s: &str) -> Mode {
    if s == "test" {
        Mode::Test
    } else {
        Mode::Live
    }
}

/// `GET /console/accounts/{id}`: the account, its keys of one mode and the forms.
async fn account(
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<ModeQuery>,
) -> Result<Response, WebError> {
    let shown = Shown::After(super::after_field(&q.after));
    account_page(&op, &id, mode_of(&q.mode), shown).await
}

/// An account's page in `mode`, its keys and its key form as `shown`.
async fn account_page(
    op: &Operator,
    id: &str,
    mode: Mode,
    shown: Shown<'_>,
) -> Result<Response, WebError> {
    let (state, after) = (&op.state, shown.after());
    let a = Manager::new(state)
        .account(id)
        .await
        .back("/console/accounts")?;
    let first_page = format!("/console/accounts/{}?mode={mode}", a.id);
    let page = Page {
        after_id: after.clone(),
        limit: super::KEYS_PER_PAGE + 1,
    };
    let keys = state.store.list_keys(&a.id, Some(mode), &page).await?;
    let (keys, next_page) = super::keys_page(keys, &format!("{first_page}&"));
    let usage = crate::routes::self_service::usage_body(state, &a, mode).await?;
    let chart = super::day_chart(state, Some(&a.id), None, Some(mode)).await?;
    let grants = AppManager::new(state).list_grants(&a.id).await?;
    let grants: Vec<_> = grants.iter().map(crate::views::Grant::from).collect();
    let plans: Vec<&String> = state.settings.plans.keys().collect();
    let ctx = context! { ..ctx_base(op, "accounts"), ..super::key_form_ctx(state, &shown), ..context! {
        chart => chart,
        grants => grants,
        account => crate::views::Account::from(&a),
        mode => mode.as_str(),
        keys => keys,
        next_page => next_page,
        first_page => after.is_some().then_some(first_page),
        usage => usage,
        plans => plans,
        roles => ["owner", "admin", "developer", "member"],
        key_base => "/console/keys",
        create_action => format!("/console/accounts/{}/keys", a.id),
    }};
    Ok(render("account.html", ctx))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StatusForm {
    status: String,
}

async fn set_status(p: Posted<Operator, StatusForm>) -> Result<Response, WebError> {
    let op = &p.by;
    let back = format!("/console/accounts/{}", p.id);
    let status = (p.form.status.parse::<AccountStatus>())
        .map_err(|e| WebError::from(ApiError::invalid(format!("status: {e}"))).back(&back))?;
    let (a, keys) = AppManager::new(&op.state)
        .set_status(&op.actor, &p.id, status)
        .await
        .back(&back)?;
    Ok(account_done(op, &a, &keys))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PlanForm {
    plan: String,
}

async fn set_plan(p: Posted<Operator, PlanForm>) -> Result<Response, WebError> {
    let back = format!("/console/accounts/{}", p.id);
    let patch = crate::manage::AccountPatch {
        plan: Some(p.form.plan),
        ..Default::default()
    };
    Manager::new(&p.by.state)
        .update_account(&p.by.actor, &p.id, patch)
        .await
        .back(&back)?;
    Ok(Redirect::to(&back).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EraseForm {
    confirm: String,
}

/// `POST /console/accounts/{id}/erase`: only when the account's name is typed to confirm.
async fn erase(p: Posted<Operator, EraseForm>) -> Result<Response, WebError> {
    let (op, id) = (&p.by, &p.id);
    let back = format!("/console/accounts/{id}");
    let m = Manager::new(&op.state);
    let a = m.account(id).await.back(&back)?;
    if p.form.confirm.trim() != a.name {
        return Err(WebError::new(
            StatusCode::BAD_REQUEST,
            "confirm: type the account's name exactly to erase it; nothing was erased",
            &back,
        ));
    }
    m.erase_account(&op.actor, id).await.back(&back)?;
    Ok(Redirect::to("/console/accounts").into_response())
}

/// The key form, shared with the portal.
#[derive(Default, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct KeyForm {
    pub(crate) mode: String,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) expires_at: String,
    pub(crate) ip_allowlist: String,
    pub(crate) rate_requests: String,
    pub(crate) rate_per_seconds: String,
    pub(crate) description: String,
}

impl KeyForm {
    /// The key it asks for.
    pub(crate) fn new_key(&self) -> Result<NewKey, ApiError> {
        let role = match opt_field(&self.role) {
            Some(r) => r
                .parse::<Role>()
                .map_err(|e| ApiError::invalid(format!("role: {e}")))?,
            None => Role::Owner,
        };
        Ok(NewKey {
            role,
            description: self.description.trim().to_string(),
            scopes: (!self.scopes.is_empty()).then(|| self.scopes.clone()),
            expires_at: expiry_field(&self.expires_at)?,
            ip_allowlist: list_field(&self.ip_allowlist),
            rate_limit: rate_field(&self.rate_requests, &self.rate_per_seconds)?,
            ..NewKey::named(mode_of(&self.mode), &self.name)
        })
    }
}

async fn create_key(p: Posted<Operator, KeyForm>) -> Result<Response, WebError> {
    let (op, id, f) = (&p.by, &p.id, &p.form);
    let mode = mode_of(&f.mode);
    let m = Manager::new(&op.state);
    let a = m
        .account(id)
        .await
        .back(&format!("/console/accounts/{id}?mode={mode}"))?;
    let made = async { m.create_key(&op.actor, &a, f.new_key()?, None).await }.await;
    // Refused: the account's page again, with the form as typed and what was wrong.
    super::answer_key_form(op, made, |e| async move {
        account_page(op, id, mode, Shown::Refused(f, &e)).await
    })
    .await
}

/// `GET /console/keys/{id}`: metadata, recent activity, the actions.
async fn key(op: Operator, Path(id): Path<String>) -> Result<Response, WebError> {
    let state = &op.state;
    let m = Manager::new(state);
    let k = m.key_of(None, None, &id).await.back("/console/accounts")?;
    let ctx = context! { ..ctx_base(&op, "accounts"), ..super::key_use(state, &k).await?, ..context! {
        recoverable => k.recoverable.is_some() && state.settings.secretbox.is_some(),
        back => format!("/console/accounts/{}?mode={}", k.account_id, k.mode),
    }};
    Ok(render("key.html", ctx))
}

#[derive(Deserialize)]
pub(crate) struct RotateForm {
    #[serde(default)]
    pub(crate) grace_seconds: String,
}

impl RotateForm {
    pub(crate) fn grace(&self) -> Result<u64, ApiError> {
        match opt_field(&self.grace_seconds) {
            None => Ok(0),
            Some(g) => g.parse().map_err(|_| {
                ApiError::invalid(format!("grace_period_seconds: {g:?} is not a whole number"))
            }),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    pub(crate) reason: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EnabledForm {
    enabled: String,
}

async fn set_enabled(p: Posted<Operator, EnabledForm>) -> Result<Response, WebError> {
    let (k, back) = p.by.changing(&p.id).await?;
    let op = &p.by;
    let patch = KeyPatch {
        enabled: Some(match p.form.enabled.as_str() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(
                    WebError::from(ApiError::invalid("enabled: must be true or false")).back(&back),
                )
            }
        }),
        ..KeyPatch::default()
    };
    (Manager::new(&op.state).update_key(&op.actor, k, patch, None))
        .await
        .back(&back)?;
    Ok(Redirect::to(&back).into_response())
}

/// `POST /console/keys/{id}/reveal`: a recoverable test secret, shown again (audited).
async fn reveal(p: Posted<Operator, NoFields>) -> Result<Response, WebError> {
    let op = &p.by;
    let (k, back) = op.changing(&p.id).await?;
    let token = AppManager::new(&op.state)
        .reveal(&op.actor, &k)
        .await
        .back(&back)?;
    Ok(op.secret_page(&k, &token, "revealed"))
}

/// `GET /console/applications`: third-party applications and the scopes they request.
async fn applications(op: Operator) -> Result<Response, WebError> {
    let state = &op.state;
    let apps = AppManager::new(state)
        .list_apps(&Page {
            after_id: None,
            limit: 500,
        })
        .await?;
    let apps: Vec<_> = apps.iter().map(crate::views::Application::from).collect();
    let ctx = context! { ..ctx_base(&op, "applications"), ..context! {
        apps => apps, scopes => scope_choices(state, None),
    }};
    Ok(render("applications.html", ctx))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AppForm {
    name: String,
    description: String,
    url: String,
    scopes: Vec<String>,
}

/// `POST /console/applications`: its production and sandbox secrets, shown once.
async fn create_application(p: Posted<Operator, AppForm>) -> Result<Response, WebError> {
    let (op, f, back) = (p.by, p.form, "/console/applications");
    let (app, secrets) = AppManager::new(&op.state)
        .create_app(
            &op.actor,
            crate::manage_apps::NewApp {
                name: f.name,
                description: f.description.trim().to_string(),
                url: opt_field(&f.url).map(str::to_string),
                scopes: f.scopes,
            },
        )
        .await
        .back(back)?;
    let mut res = render(
        "app_secrets.html",
        context! {
            area => "console", csrf => op.csrf, app => crate::views::Application::from(&app),
            secrets => [
                context! { environment => "production", secret => secrets.production.expose() },
                context! { environment => "sandbox", secret => secrets.sandbox.expose() },
            ],
        },
    );
    *res.status_mut() = StatusCode::CREATED;
    Ok(res)
}

/// `POST /console/applications/{id}/secrets/{environment}/rotate`: a new secret for one
/// environment, shown once; the old one stops at once.
async fn rotate_application_secret(
    Path((_, environment)): Path<(String, String)>,
    p: Posted<Operator, NoFields>,
) -> Result<Response, WebError> {
    let (op, id, back) = (&p.by, &p.id, "/console/applications");
    let env = environment
        .parse::<keywarden_core::model::AppEnvironment>()
        .map_err(|e| WebError::from(ApiError::invalid(format!("environment: {e}"))).back(back))?;
    let (app, secret) = AppManager::new(&op.state)
        .rotate_app_secret(&op.actor, id, env)
        .await
        .back(back)?;
    Ok(render(
        "app_secrets.html",
        context! {
            area => "console", csrf => op.csrf, app => crate::views::Application::from(&app),
            secrets => [context! { environment => env.as_str(), secret => secret.expose() }],
        },
    ))
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    account_id: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    since: String,
}

/// `GET /console/audit`: events, newest first, by account, type and time.
async fn audit(op: Operator, Query(q): Query<AuditQuery>) -> Result<Response, WebError> {
    let state = &op.state;
    let since = match opt_field(&q.since) {
        Some(s) => Some(
            crate::views::parse_ts(&if s.len() == 10 {
                format!("{s}T00:00:00Z")
            } else {
                s.to_string()
            })
            .map_err(|e| {
                WebError::new(
                    StatusCode::BAD_REQUEST,
                    format!("since: {e}"),
                    "/console/audit",
                )
            })?,
        ),
        None => None,
    };
    let events = state
        .store
        .list_events(&EventFilter {
            account_id: opt_field(&q.account_id).map(str::to_string),
            kind: opt_field(&q.kind).map(str::to_string),
            since,
            limit: 200,
            ..EventFilter::default()
        })
        .await?;
    let events: Vec<_> = events.iter().map(crate::views::AuditEvent::from).collect();
    let ctx = context! { ..ctx_base(&op, "audit"), ..context! {
        events => events, account_id => q.account_id, kind => q.kind, since => q.since,
    }};
    Ok(render("audit.html", ctx))
}
