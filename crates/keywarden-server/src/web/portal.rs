//! The customer portal (`/portal`, public listener; `docs/console.md#the-customer-portal`).
//! The operator's backend asks for a single-use link for one account
//! (`POST /v1/admin/accounts/{id}/portal-sessions`); the link opens a page whose button
//! exchanges it for a session cookie for that account only. The session acts like a key
//! of the account with the link's role and every scope: it reaches exactly the keys such a
//! key could have made, through the same rules as the self-service API
//! (`Manager::key_within`, `Ceiling`).

use super::console::KeyForm;
use super::{csrf_token, id_hash, new_session_id, render};
use super::{session_cookie, KeyChanger, NoFields, OrBack, Posted, Shown, SignedIn, WebError};
use crate::errors::ApiError;
use crate::extract::{client_ip, peer_ip};
use crate::manage::{Actor, Ceiling, Manager, NewKey};
use crate::manage_apps::AppManager;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::CookieJar;
use keywarden_core::codes::Code;
use keywarden_core::decision::CompiledKey;
use keywarden_core::model::{
    Account, AccountStatus, KeyRecord, KeyType, Millis, Mode, Role, WebSession, WebSessionKind,
};
use minijinja::context;
use serde::Deserialize;
use std::sync::Arc;

/// The portal's session cookie.
pub const COOKIE: &str = "keywarden_portal";
/// How long a portal link stays usable.
pub const LINK_SECS: i64 = 5 * 60;
/// How long a portal session lasts.
pub const SESSION_SECS: i64 = 3600;

/// The portal's routes, on the public listener.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/portal", get(home))
        .route("/portal/start", get(start_page).post(start))
        .route("/portal/keys/{id}", get(key))
        .merge(super::shared_routes::<Customer>())
        .route("/portal/logout", post(logout))
        .route("/portal/account", post(change_account))
        .route("/portal/plan", post(change_account))
        .route("/portal/keys", post(create_key))
        .route("/portal/authorize", get(consent).post(authorize))
        .layer(axum::middleware::from_fn(super::page_headers))
}

/// A new portal link for `account`: the URL to give the customer, and when it expires.
/// Used by `POST /v1/admin/accounts/{id}/portal-sessions`, made with `root_key`: the link,
/// and the session it opens, count only while that root key is configured.
pub async fn create_link(
    state: &AppState,
    actor: &Actor,
    root_key: &keywarden_core::Secret,
    account: &Account,
    mode: Option<Mode>,
    role: Role,
    return_url: Option<String>,
) -> Result<(String, Millis), ApiError> {
    if let Some(u) = &return_url {
        crate::manage::check_len("return_url", u, 2000)?;
        // It becomes a `Location` header at sign-out: no spaces or control characters.
        if !(u.starts_with("https://") || u.starts_with("http://"))
            || u.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ApiError::invalid(
                "return_url: must be an absolute http:// or https:// URL without spaces or control characters",
            ));
        }
    }
    Manager::new(state).check_role(role)?;
    if account.status == AccountStatus::Suspended {
        return Err(ApiError::with(
            Code::AccountInactive,
            "a suspended account cannot open the portal",
        ));
    }
    let token = new_session_id().map_err(|_| ApiError::new(Code::InternalError))?;
    let now = state.clock.now_ms();
    let link = WebSession {
        id_hash: id_hash(&token),
        kind: WebSessionKind::PortalLink,
        account_id: Some(account.id.clone()),
        mode,
        role: Some(role),
        return_url,
        created_at: now,
        expires_at: now + LINK_SECS * 1000,
        root_key: Some(super::root_fingerprint(root_key, &token)),
    };
    let created = Manager::new(state).event(
        actor,
        "portal.link_created",
        Some(&account.id),
        mode,
        serde_json::json!({ "role": role, "expires_in_seconds": LINK_SECS }),
    );
    state
        .store
        .create_web_session(&link, now, &[created])
        .await?;
    let base = public_url(state);
    Ok((
        format!("{base}/portal/start?token={token}"),
        link.expires_at,
    ))
}

/// `server.public_url`, else `http://` + `public_listen`, without a trailing slash.
pub fn public_url(state: &AppState) -> String {
    let server = &state.settings.config.server;
    let u = if server.public_url.trim().is_empty() {
        format!("http://{}", server.public_listen)
    } else {
        server.public_url.trim().to_string()
    };
    u.trim_end_matches('/').to_string()
}

/// A customer in the portal: its account (read fresh each request) and its bounds.
pub struct Customer {
    /// The service.
    pub state: AppState,
    session_id: String,
    csrf: String,
    account: Account,
    session: WebSession,
    ip: Option<String>,
}

impl FromRequestParts<AppState> for Customer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let jar = CookieJar::from_headers(&parts.headers);
        let ended = || {
            WebError::new(
                StatusCode::UNAUTHORIZED,
                "Your portal session has ended. Ask for a new portal link.",
                "",
            )
            .into_response()
        };
        let Some(sid) = jar.get(COOKIE).map(|c| c.value().to_string()) else {
            return Err(ended());
        };
        let now = state.clock.now_ms();
        let hash = id_hash(&sid);
        let session = match state.store.get_web_session(&hash, now).await {
            Ok(Some(s)) if s.kind == WebSessionKind::Portal => s,
            Ok(_) => return Err(ended()),
            Err(e) => return Err(WebError::from(e).into_response()),
        };
        // The root key that made its link was taken out of the configuration: it ends.
        if super::root_key_of(state, session.root_key.as_deref(), &sid).is_none() {
            let _ = state.store.take_web_session(&hash, now).await;
            return Err(ended());
        }
        let account = match &session.account_id {
            Some(id) => state.store.get_account(id).await,
            None => Ok(None),
        };
        let account = match account {
            Ok(Some(a)) if a.status != AccountStatus::Suspended => a,
            Ok(_) => {
                // Erased or suspended since: the session ends.
                let _ = state.store.take_web_session(&hash, now).await;
                return Err(ended());
            }
            Err(e) => return Err(WebError::from(e).into_response()),
        };
        let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions))
            .and_then(|c| c.ip())
            .map(|i| i.to_string());
        let csrf = csrf_token(&sid);
        super::note_signed_in(&csrf, session.return_url.as_deref());
        Ok(Customer {
            state: state.clone(),
            csrf,
            session_id: sid,
            account,
            session,
            ip,
        })
    }
}

super::signed_in!(Customer, "portal");

impl KeyChanger for Customer {
    fn state(&self) -> &AppState {
        &self.state
    }

    fn actor(&self) -> Actor {
        Customer::actor(self)
    }

    /// Only a role that manages keys changes one, and only a key this session reaches.
    async fn key_to_change(&self, id: &str, back: &str) -> Result<KeyRecord, WebError> {
        need_group(&self.state, "api_keys")?;
        need_manager(self, back)?;
        self.key(&self.state, id).await
    }
}

impl Customer {
    fn role(&self) -> Role {
        self.session.role.unwrap_or(Role::Member)
    }

    fn actor(&self) -> Actor {
        Actor {
            name: "portal".into(),
            ip: self.ip.clone(),
        }
    }

    /// The mode asked for, if this session may use it.
    fn mode(&self, asked: &str) -> Result<Mode, WebError> {
        let asked = match asked {
            "live" => Some(Mode::Live),
            "test" => Some(Mode::Test),
            _ => None,
        };
        match (self.session.mode, asked) {
            (Some(m), None) => Ok(m),
            (Some(m), Some(a)) if m == a => Ok(m),
            (Some(_), Some(_)) => Err(WebError::new(
                StatusCode::NOT_FOUND,
                "This portal session is for the other mode.",
                "/portal",
            )),
            (None, a) => Ok(a.unwrap_or(Mode::Live)),
        }
    }

    /// The session's bounds in `mode`: a key of the account with the session's role and
    /// every scope of the catalog, no expiry, no allowlist, the plan's rate.
    fn ceiling(&self, state: &AppState, mode: Mode) -> Ceiling {
        let catalog = &state.settings.catalog;
        let scopes = catalog
            .names(catalog.all_scopes())
            .into_iter()
            .map(str::to_string)
            .collect();
        let record = KeyRecord {
            name: "portal".into(),
            role: self.role(),
            scopes,
            ..KeyRecord::new(
                "portal".into(),
                self.account.id.clone(),
                mode,
                KeyType::Secret,
                0,
            )
        };
        Manager::new(state).ceiling(
            Arc::new(CompiledKey::compile(record, catalog)),
            &self.account,
        )
    }

    /// A key this session reaches, else 404 like an unknown one.
    async fn key(&self, state: &AppState, id: &str) -> Result<KeyRecord, WebError> {
        let m = Manager::new(state);
        let not_found = || WebError::new(StatusCode::NOT_FOUND, "No such key.", "/portal");
        let k = m
            .key_of(Some(&self.account.id), None, id)
            .await
            .map_err(|_| not_found())?;
        if self.mode(k.mode.as_str()).is_err() || !m.reaches(&self.ceiling(state, k.mode), &k) {
            return Err(not_found());
        }
        Ok(k)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StartQuery {
    token: String,
}

/// The page a link that cannot be used (any more) leads to.
fn link_used() -> WebError {
    WebError::new(
        StatusCode::NOT_FOUND,
        "This portal link has already been used or has expired. Ask for a new one.",
        "",
    )
}

/// The portal link the store `found` for `token`, with the root key it was made under, if
/// it is one that can still be used.
fn usable_link<'s>(
    state: &'s AppState,
    token: &str,
    found: keywarden_store::StoreResult<Option<WebSession>>,
) -> Result<(WebSession, &'s keywarden_core::Secret), WebError> {
    let link = match found? {
        Some(l) if l.kind == WebSessionKind::PortalLink => l,
        _ => return Err(link_used()),
    };
    // A link made under a root key since taken out of the configuration is void.
    let root = super::root_key_of(state, link.root_key.as_deref(), token).ok_or_else(link_used)?;
    Ok((link, root))
}

/// `GET /portal/start?token=…`: the link's page, with the button that uses it. Opening
/// the link uses nothing: chat tools and mail scanners fetch the links they see, and a
/// single-use link opened by them would be gone before its customer clicked it.
async fn start_page(
    State(state): State<AppState>,
    Query(q): Query<StartQuery>,
) -> Result<Response, WebError> {
    let now = state.clock.now_ms();
    let token = q.token.trim();
    let found = state.store.get_web_session(&id_hash(token), now).await;
    let (link, _) = usable_link(&state, token, found)?;
    let account = match &link.account_id {
        Some(id) => state.store.get_account(id).await?,
        None => None,
    };
    let Some(account) = account.filter(|a| a.status != AccountStatus::Suspended) else {
        return Err(link_used());
    };
    Ok(render(
        "portal_start.html",
        context! {
            area => "portal",
            token => token,
            account => account.name,
            mode => link.mode.map(|m| m.as_str()),
        },
    ))
}

/// `POST /portal/start` (the link's token as the form's `token`): uses the link (once)
/// and opens a session.
async fn start(
    State(state): State<AppState>,
    Form(q): Form<StartQuery>,
) -> Result<Response, WebError> {
    let now = state.clock.now_ms();
    let token = q.token.trim();
    let found = state.store.take_web_session(&id_hash(token), now).await;
    let (link, root) = usable_link(&state, token, found)?;
    let sid = new_session_id()?;
    let session = WebSession {
        id_hash: id_hash(&sid),
        root_key: Some(super::root_fingerprint(root, &sid)),
        kind: WebSessionKind::Portal,
        created_at: now,
        expires_at: now + SESSION_SECS * 1000,
        ..link
    };
    state.store.create_web_session(&session, now, &[]).await?;
    let jar = CookieJar::new().add(session_cookie(&state, COOKIE, sid, "/portal", SESSION_SECS));
    Ok((jar, Redirect::to("/portal")).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ModeQuery {
    mode: String,
    /// The page of keys after this key id.
    after: String,
}

fn base_ctx(c: &Customer, mode: Mode) -> minijinja::Value {
    context! {
        area => "portal",
        csrf => c.csrf,
        account => crate::views::Account::from(&c.account),
        role => c.role().as_str(),
        mode => mode.as_str(),
        mode_fixed => c.session.mode.is_some(),
        return_url => c.session.return_url,
    }
}

/// `GET /portal`: the account, its keys of one mode, usage against the plan, the forms.
async fn home(c: Customer, Query(q): Query<ModeQuery>) -> Result<Response, WebError> {
    let mode = c.mode(&q.mode)?;
    home_page(&c, mode, Shown::After(super::after_field(&q.after))).await
}

/// The portal's page in `mode`, its keys and its key form as `shown`.
async fn home_page(c: &Customer, mode: Mode, shown: Shown<'_>) -> Result<Response, WebError> {
    let (state, after) = (&c.state, shown.after());
    let ceiling = c.ceiling(state, mode);
    let first_page = format!("/portal?mode={mode}");
    // The page shows only what the deployment's self-service API serves.
    let serves = |group| state.settings.self_service.serves(group);
    let (keys, next_page) = if serves("api_keys") {
        let keys = Manager::new(state)
            .keys_within(&ceiling, after.clone(), super::KEYS_PER_PAGE + 1)
            .await?;
        super::keys_page(keys, &format!("{first_page}&"))
    } else {
        (Vec::new(), None)
    };
    let (usage, chart) = if serves("usage") {
        (
            Some(crate::routes::self_service::usage_body(state, &c.account, mode).await?),
            Some(super::day_chart(state, Some(&c.account.id), None, Some(mode)).await?),
        )
    } else {
        (None, None)
    };
    let plans: Vec<&String> = state.settings.plans.keys().collect();
    let roles: Vec<&str> = ["owner", "admin", "developer", "member"]
        .into_iter()
        .filter(|r| {
            r.parse::<Role>().is_ok_and(|r| {
                r.rank() <= c.role().rank() && state.settings.config.keys.allowed_roles.contains(&r)
            })
        })
        .collect();
    let ctx = context! { ..base_ctx(c, mode), ..super::key_form_ctx(state, &shown), ..context! {
        chart => chart,
        keys => keys,
        next_page => next_page,
        first_page => after.is_some().then_some(first_page),
        usage => usage,
        plans => plans,
        roles => roles,
        can_manage => c.role().can_manage_keys(),
        is_owner => c.role() == Role::Owner,
        api_keys => serves("api_keys"),
        account_write => serves("account_write"),
        key_base => "/portal/keys",
        create_action => "/portal/keys",
    }};
    Ok(render("portal.html", ctx))
}

async fn logout(p: Posted<Customer, NoFields>) -> Result<Response, WebError> {
    let c = p.by;
    let jar = super::end_session(&c.state, &id_hash(&c.session_id), COOKIE, "/portal").await?;
    let to = c.session.return_url.clone();
    Ok(match to {
        Some(u) => (jar, Redirect::to(&u)).into_response(),
        None => (
            jar,
            WebError::new(StatusCode::OK, "You have signed out of the portal.", ""),
        )
            .into_response(),
    })
}

/// Refuses what the deployment's self-service API does not offer (`self_service.endpoints`):
/// the portal does no more than that API.
fn need_group(state: &AppState, group: &str) -> Result<(), WebError> {
    if state.settings.self_service.serves(group) {
        Ok(())
    } else {
        Err(WebError::new(
            StatusCode::NOT_FOUND,
            "This deployment does not offer that here.",
            "/portal",
        ))
    }
}

fn need_owner(c: &Customer) -> Result<(), WebError> {
    if c.role() == Role::Owner {
        Ok(())
    } else {
        Err(WebError::from(ApiError::with(
            Code::InsufficientRole,
            "this needs the owner role",
        ))
        .back("/portal"))
    }
}

fn need_manager(c: &Customer, back: &str) -> Result<(), WebError> {
    if c.role().can_manage_keys() {
        Ok(())
    } else {
        Err(WebError::from(ApiError::with(
            Code::InsufficientRole,
            "this needs the role owner, admin or developer",
        ))
        .back(back))
    }
}

/// The account forms' fields: a new name (`/portal/account`) or a new plan (`/portal/plan`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct AccountForm {
    name: Option<String>,
    plan: Option<String>,
}

/// An owner's change to the session's account: its name or its plan, one per form; back
/// to the portal's home page.
async fn change_account(p: Posted<Customer, AccountForm>) -> Result<Response, WebError> {
    let (c, f) = (p.by, p.form);
    let state = &c.state;
    need_owner(&c)?;
    need_group(state, "account_write")?;
    if f.name.is_some() == f.plan.is_some() {
        return Err(WebError::new(
            StatusCode::BAD_REQUEST,
            "The form must give either a new name or a new plan.",
            "/portal",
        ));
    }
    let patch = crate::manage::AccountPatch {
        name: f.name,
        plan: f.plan,
        ..Default::default()
    };
    Manager::new(state)
        .update_account(&c.actor(), &c.account.id, patch)
        .await
        .back("/portal")?;
    Ok(Redirect::to("/portal").into_response())
}

async fn create_key(p: Posted<Customer, KeyForm>) -> Result<Response, WebError> {
    let (c, f) = (&p.by, &p.form);
    let state = &c.state;
    let mode = c.mode(&f.mode)?;
    let back = format!("/portal?mode={mode}");
    need_group(state, "api_keys")?;
    need_manager(c, &back)?;
    // The key is made in the session's mode, whatever the form says.
    let made = async {
        let new = NewKey {
            mode,
            ..f.new_key()?
        };
        let ceiling = c.ceiling(state, mode);
        Manager::new(state)
            .create_key(&c.actor(), &c.account, new, Some(&ceiling))
            .await
    }
    .await;
    // Refused: the page again, with the form as typed and what was wrong.
    super::answer_key_form(c, made, |e| async move {
        home_page(c, mode, Shown::Refused(f, &e)).await
    })
    .await
}

/// `GET /portal/keys/{id}`: a key this session reaches, and its recent activity.
async fn key(c: Customer, Path(id): Path<String>) -> Result<Response, WebError> {
    let state = &c.state;
    need_group(state, "api_keys")?;
    let k = c.key(state, &id).await?;
    let mut key_use = super::key_use(state, &k).await?;
    if !state.settings.self_service.serves("usage") {
        key_use = context! { chart => (), ..key_use };
    }
    let ctx = context! { ..base_ctx(&c, k.mode), ..key_use, ..context! {
        back => format!("/portal?mode={}", k.mode),
        can_manage => c.role().can_manage_keys(),
    }};
    Ok(render("portal_key.html", ctx))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConsentQuery {
    app_id: String,
    scopes: String,
    mode: String,
}

fn scope_list(s: &str) -> Vec<String> {
    super::list_field(s)
}

/// `GET /portal/authorize?app_id=…&scopes=…`: what an application asks for, to approve.
async fn consent(c: Customer, Query(q): Query<ConsentQuery>) -> Result<Response, WebError> {
    let state = &c.state;
    let mode = c.mode(&q.mode)?;
    need_owner(&c)?;
    need_group(state, "grants")?;
    let app = AppManager::new(state)
        .app(q.app_id.trim())
        .await
        .map_err(|_| {
            WebError::new(
                StatusCode::NOT_FOUND,
                format!("app_id: no application {:?}", q.app_id),
                "/portal",
            )
        })?;
    let asked = scope_list(&q.scopes);
    let asked = if asked.is_empty() {
        app.scopes.clone()
    } else {
        asked
    };
    let ctx = context! { ..base_ctx(&c, mode), ..context! {
        app => crate::views::Application::from(&app),
        scopes => asked,
    }};
    Ok(render("authorize.html", ctx))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthorizeForm {
    app_id: String,
    scopes: Vec<String>,
    mode: String,
}

/// `POST /portal/authorize`: the owner grants the application the scopes; the key made
/// under the grant is shown once, for the application to receive.
async fn authorize(p: Posted<Customer, AuthorizeForm>) -> Result<Response, WebError> {
    let (c, f, back) = (p.by, p.form, "/portal");
    let state = &c.state;
    let mode = c.mode(&f.mode)?;
    need_owner(&c)?;
    need_group(state, "grants")?;
    let ceiling = c.ceiling(state, mode);
    let issued = AppManager::new(state)
        .create_grant(
            &c.actor(),
            &c.account,
            f.app_id.trim(),
            Some(f.scopes),
            mode,
            Some(&ceiling_scopes(&ceiling)),
        )
        .await
        .back(back)?;
    Ok(c.secret_page(&issued.key, &issued.api_key, "granted"))
}

fn ceiling_scopes(c: &Ceiling) -> keywarden_core::scopes::ScopeSet {
    c.scopes().clone()
}
