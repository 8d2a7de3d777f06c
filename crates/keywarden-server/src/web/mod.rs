//! Web pages (`docs/console.md`): the operator console at `/console` on the admin listener
//! and the customer portal at `/portal` on the public listener. Server-rendered from
//! templates compiled into the binary; every change goes through the same managers as the
//! JSON APIs (`manage.rs`, `manage_apps.rs`), so a page can do nothing an API call could
//! not.
//!
//! Sessions: a random 256-bit id in an `HttpOnly` cookie (`Secure` with
//! `server.secure_cookies`), `SameSite=Strict` for the console and `Lax` for the portal,
//! whose links are opened from the operator's own site; the store keeps only its SHA-256. Each session's CSRF token is
//! derived from its id, and every POST must carry it. Every page is sent with a strict
//! Content-Security-Policy (scripts and styles from this origin only, no framing) and
//! `Cache-Control: no-store`, so a page that showed a secret is not kept by the browser.

pub mod console;
mod i18n;
pub mod portal;

use crate::errors::ApiError;
use crate::state::AppState;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, SameSite};
use keywarden_core::codes::Locale;
use keywarden_core::hashing::sha256_hex;
use keywarden_core::model::Millis;
use minijinja::Environment;
use std::sync::LazyLock;

/// Every page template embedded in the binary, by name.
pub(crate) const SOURCES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("new_card.html", include_str!("templates/new_card.html")),
    ("error.html", include_str!("templates/error.html")),
    ("secret.html", include_str!("templates/secret.html")),
    ("keys_table.html", include_str!("templates/keys_table.html")),
    ("key_form.html", include_str!("templates/key_form.html")),
    ("activity.html", include_str!("templates/activity.html")),
    ("usage.html", include_str!("templates/usage.html")),
    ("chart.html", include_str!("templates/chart.html")),
    ("key_detail.html", include_str!("templates/key_detail.html")),
    ("login.html", include_str!("templates/login.html")),
    ("accounts.html", include_str!("templates/accounts.html")),
    ("account.html", include_str!("templates/account.html")),
    ("key.html", include_str!("templates/key.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("overview.html", include_str!("templates/overview.html")),
    (
        "applications.html",
        include_str!("templates/applications.html"),
    ),
    (
        "app_secrets.html",
        include_str!("templates/app_secrets.html"),
    ),
    ("portal.html", include_str!("templates/portal.html")),
    (
        "portal_start.html",
        include_str!("templates/portal_start.html"),
    ),
    ("portal_key.html", include_str!("templates/portal_key.html")),
    ("authorize.html", include_str!("templates/authorize.html")),
    ("new_keys.html", include_str!("templates/new_keys.html")),
];

/// The templates, parsed once. Names ending in `.html` are escaped automatically.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for &(name, source) in SOURCES {
        if let Err(e) = env.add_template(name, source) {
            panic!("embedded template {name} does not parse: {e}");
        }
    }
    env.add_filter("ts", |ms: i64| crate::views::ts(ms));
    // An event's data as JSON text (escaped like any other text of the page).
    env.add_filter("tojson", |v: minijinja::Value| {
        serde_json::to_string(&v).map_err(|e| {
            minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
        })
    });
    env.add_function("t", |text: &str| tr(text));
    env
});

/// The stylesheet and the script, served from the listener itself.
const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The Content-Security-Policy of every page: nothing from another origin, no inline
/// script or style, no framing, forms posting only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

tokio::task_local! {
    /// The language of the page being rendered (the request's, as for API errors).
    static LANG: Locale;
    /// Which pages are being served: `console` or `portal` (their stylesheet, header and
    /// links, error pages included).
    static AREA: &'static str;
    /// The signed-in session's navigation, once its extractor has accepted it: an error
    /// page shown to that session has the area's navigation bar too.
    static NAV: std::cell::RefCell<Option<Nav>>;
}

/// What the navigation bar of a signed-in session needs: the sign-out form's CSRF token
/// and, in the portal, where "Back" leads.
#[derive(Clone, Debug)]
pub struct Nav {
    csrf: String,
    return_url: Option<String>,
}

/// Notes the session the request is served to, for the navigation bar of an error page.
pub fn note_signed_in(csrf: &str, return_url: Option<&str>) {
    let _ = NAV.try_with(|nav| {
        *nav.borrow_mut() = Some(Nav {
            csrf: csrf.to_string(),
            return_url: return_url.map(str::to_string),
        })
    });
}

/// The area of the page being rendered.
fn area() -> &'static str {
    AREA.try_with(|a| *a).unwrap_or("portal")
}

/// The language of the request being served (English outside a page request).
pub fn lang() -> Locale {
    LANG.try_with(|l| *l).unwrap_or(Locale::En)
}

/// `text` in the page's language: the Spanish of the catalog, else as written.
pub fn tr(text: &str) -> String {
    match lang() {
        Locale::Es => i18n::spanish(text).unwrap_or(text).to_string(),
        _ => text.to_string(),
    }
}

/// Renders a template in the request's language; a template error is a bug, answered 500
/// without detail.
pub fn render(name: &str, ctx: minijinja::Value) -> Response {
    let code = match lang() {
        Locale::Es => "es",
        _ => "en",
    };
    let ctx = minijinja::context! { lang => code, area => area(), ..ctx };
    match TEMPLATES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// Adds the security headers to every page and asset of the console and the portal.
pub async fn page_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let locale = req
        .extensions()
        .get::<Locale>()
        .copied()
        .unwrap_or(Locale::En);
    let area = if req.uri().path().starts_with("/console") {
        "console"
    } else {
        "portal"
    };
    let page = NAV.scope(std::cell::RefCell::new(None), next.run(req));
    let mut res = LANG.scope(locale, AREA.scope(area, page)).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// `GET …/assets/{name}`: the embedded stylesheet and script.
pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// An error shown as a page: the API's status and message, never a secret.
#[derive(Debug)]
pub struct WebError {
    status: StatusCode,
    message: String,
    back: String,
    /// The API's error code, when the refusal is one (`plan_limit_reached`, …).
    code: Option<&'static str>,
}

impl WebError {
    /// A page-level error with a link back to `back`.
    pub fn new(status: StatusCode, message: impl Into<String>, back: &str) -> Self {
        WebError {
            status,
            message: message.into(),
            back: back.to_string(),
            code: None,
        }
    }

    /// The refusal of a form without the session's CSRF token: nothing was changed.
    pub fn csrf(back: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this page; nothing was changed. Reload the page and try again.",
            back,
        )
    }

    /// Sets where the page's "back" link leads.
    pub fn back(mut self, back: &str) -> Self {
        self.back = back.to_string();
        self
    }
}

/// `.back(url)` on a result: its error becomes a page whose "back" link leads to `url`.
pub trait OrBack<T> {
    /// Maps the error to a [`WebError`] leading back to `back`.
    fn back(self, back: &str) -> Result<T, WebError>;
}

impl<T, E: Into<WebError>> OrBack<T> for Result<T, E> {
    fn back(self, back: &str) -> Result<T, WebError> {
        self.map_err(|e| e.into().back(back))
    }
}

/// The `after` of a page link: a key id, or nothing (anything else is ignored).
pub fn after_field(s: &str) -> Option<String> {
    opt_field(s)
        .filter(|a| a.len() <= 64 && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(str::to_string)
}

/// Keys listed on one page of the console or the portal.
pub const KEYS_PER_PAGE: u32 = 100;

/// A page of keys out of at most [`KEYS_PER_PAGE`] + 1 read: the ones shown, and the link
/// to the next page (`{base}after={last shown id}`) when there are more.
pub fn keys_page(
    mut keys: Vec<keywarden_core::model::KeyRecord>,
    base: &str,
) -> (Vec<minijinja::Value>, Option<String>) {
    let more = keys.len() > KEYS_PER_PAGE as usize;
    keys.truncate(KEYS_PER_PAGE as usize);
    let next = more
        .then(|| keys.last().map(|k| format!("{base}after={}", k.id)))
        .flatten();
    (keys.iter().map(key_view).collect(), next)
}

/// What a page listing keys shows with them: the keys after a given one (a later page), or
/// the first page with the key form that was refused, as it was typed and what was wrong.
pub enum Shown<'a> {
    /// The keys after this one (from the first when `None`).
    After(Option<String>),
    /// The key form refused, and why.
    Refused(&'a console::KeyForm, &'a WebError),
}

impl Shown<'_> {
    /// The key the list starts after.
    pub fn after(&self) -> Option<String> {
        match self {
            Shown::After(after) => after.clone(),
            Shown::Refused(..) => None,
        }
    }
}

/// The key form's part of a page: the scope choices and, when the form was refused, its
/// fields as they were typed and what was wrong, so nothing typed is lost.
pub fn key_form_ctx(state: &AppState, shown: &Shown<'_>) -> minijinja::Value {
    let refused = match shown {
        Shown::Refused(f, e) => Some((*f, *e)),
        Shown::After(_) => None,
    };
    let empty = console::KeyForm::default();
    let form = refused.map_or(&empty, |(f, _)| f);
    minijinja::context! {
        scopes => scope_choices(state, refused.map(|(f, _)| f.scopes.as_slice())),
        form => form,
        form_error => refused.map(|(_, e)| tr(&e.message)),
        form_error_code => refused.and_then(|(_, e)| e.code),
    }
}

/// The answer to a key form: the new secret, shown once, when the key was made; else the
/// form's page again (`page`, given what was wrong) with the refusal's status.
pub async fn answer_key_form<S, Page>(
    s: &S,
    made: Result<(keywarden_core::model::KeyRecord, keywarden_core::Secret), ApiError>,
    page: impl FnOnce(WebError) -> Page,
) -> Result<Response, WebError>
where
    S: SignedIn,
    Page: std::future::Future<Output = Result<Response, WebError>>,
{
    match made {
        Ok((k, token)) => Ok(s.secret_page(&k, &token, "created")),
        Err(e) => {
            let e = WebError::from(e);
            let status = e.status;
            let mut res = page(e).await?;
            *res.status_mut() = status;
            Ok(res)
        }
    }
}

/// A signed-in session that changes keys from their page (`/{area}/keys/{id}/…`).
pub trait KeyChanger: SignedIn + Sync {
    /// The service.
    fn state(&self) -> &AppState;

    /// Who the audit trail names.
    fn actor(&self) -> crate::manage::Actor;

    /// The key `id`, when this session may change it (else a page leading to `back`).
    fn key_to_change(
        &self,
        id: &str,
        back: &str,
    ) -> impl std::future::Future<Output = Result<keywarden_core::model::KeyRecord, WebError>> + Send;

    /// The key `id` a form posted from its page changes, when this session may change it,
    /// and that page's address to go back to.
    fn changing(
        &self,
        id: &str,
    ) -> impl std::future::Future<
        Output = Result<(keywarden_core::model::KeyRecord, String), WebError>,
    > + Send {
        async move {
            let back = format!("/{}/keys/{id}", Self::AREA);
            let k = self.key_to_change(id, &back).await?;
            Ok((k, back))
        }
    }
}

/// The routes both areas have under `/{area}`: the assets, and a key's rotation and
/// revocation from its page.
pub(crate) fn shared_routes<S>() -> axum::Router<AppState>
where
    S: KeyChanger
        + axum::extract::FromRequestParts<AppState, Rejection = Response>
        + Send
        + 'static,
{
    use axum::routing::{get, post};
    let area = S::AREA;
    axum::Router::new()
        .route(&format!("/{area}/assets/{{name}}"), get(asset))
        .route(&format!("/{area}/keys/{{id}}/rotate"), post(rotate::<S>))
        .route(&format!("/{area}/keys/{{id}}/revoke"), post(revoke::<S>))
}

/// `POST /{area}/keys/{id}/rotate`: a new secret, shown once; the old one is refused at once
/// or kept through the grace period asked for.
async fn rotate<S: KeyChanger>(p: Posted<S, console::RotateForm>) -> Result<Response, WebError> {
    let s = &p.by;
    let (k, back) = s.changing(&p.id).await?;
    let grace = p.form.grace().back(&back)?;
    let (k, token) = crate::manage::Manager::new(s.state())
        .rotate_key(&s.actor(), k, grace)
        .await
        .back(&back)?;
    Ok(s.secret_page(&k, &token, rotated(grace)))
}

/// `POST /{area}/keys/{id}/revoke`, with an optional reason; back to the key's page.
async fn revoke<S: KeyChanger>(p: Posted<S, console::RevokeForm>) -> Result<Response, WebError> {
    let s = &p.by;
    let (k, back) = s.changing(&p.id).await?;
    let reason = opt_field(&p.form.reason).map(str::to_string);
    crate::manage::Manager::new(s.state())
        .revoke_key(&s.actor(), k, reason)
        .await
        .back(&back)?;
    Ok(axum::response::Redirect::to(&back).into_response())
}

/// What a rotation shows: `rolled` (the old secret refused at once) or `rotated` (kept
/// through a grace period).
pub fn rotated(grace_seconds: u64) -> &'static str {
    if grace_seconds == 0 {
        "rolled"
    } else {
        "rotated"
    }
}

/// Implements [`SignedIn`] for a session type with `session_id` and `csrf` fields, whose
/// pages live under `/$area`.
macro_rules! signed_in {
    ($session:ty, $area:literal) => {
        impl $crate::web::SignedIn for $session {
            const AREA: &'static str = $area;

            fn session_id(&self) -> &str {
                &self.session_id
            }

            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    };
}
pub(crate) use signed_in;

/// A signed-in page session (the console's operator, the portal's customer): the forms it
/// posts carry its CSRF token.
pub trait SignedIn {
    /// The area its pages belong to (`console` or `portal`), the first segment of their path.
    const AREA: &'static str;

    /// The session id the CSRF token is derived from.
    fn session_id(&self) -> &str;

    /// The CSRF token its pages put in their forms.
    fn csrf(&self) -> &str;

    /// The page showing a secret (`what`: created, rolled, rotated, revealed, granted),
    /// once. The browser is told not to keep it, and its script puts the key's own page in
    /// the history in place of the form's answer.
    fn secret_page(
        &self,
        k: &keywarden_core::model::KeyRecord,
        token: &keywarden_core::Secret,
        what: &str,
    ) -> Response {
        let key_url = format!("/{}/keys/{}", Self::AREA, k.id);
        let mut res = render(
            "secret.html",
            minijinja::context! {
                area => Self::AREA, csrf => self.csrf(), key => key_view(k),
                secret => token.expose(), key_url => key_url, what => what,
            },
        );
        *res.status_mut() = StatusCode::CREATED;
        res
    }

    /// Refuses a form without this session's token, before anything is read or changed.
    fn check(&self, presented: &str, back: &str) -> Result<(), WebError> {
        if csrf_ok(self.session_id(), presented) {
            Ok(())
        } else {
            Err(WebError::csrf(back))
        }
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let message = e
            .detail
            .unwrap_or_else(|| e.code.message(lang()).to_string());
        WebError {
            status,
            message,
            back: String::new(),
            code: Some(e.code.as_str()),
        }
    }
}

impl From<keywarden_store::StoreError> for WebError {
    fn from(e: keywarden_store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let nav = NAV.try_with(|nav| nav.borrow().clone()).ok().flatten();
        let (csrf, return_url) = nav.map_or((None, None), |n| (Some(n.csrf), n.return_url));
        let mut res = render(
            "error.html",
            minijinja::context! {
                status => self.status.as_u16(), message => tr(&self.message), back => self.back,
                code => self.code, csrf => csrf, return_url => return_url,
            },
        );
        *res.status_mut() = self.status;
        res
    }
}

/// A new session id: 32 bytes from the OS random source, hex.
pub fn new_session_id() -> Result<String, WebError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| {
        WebError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the random source failed",
            "",
        )
    })?;
    Ok(hex::encode(bytes))
}

/// What the store keeps of a session id.
pub fn id_hash(session_id: &str) -> String {
    sha256_hex(session_id.as_bytes())
}

/// What the store keeps of a console session id: bound to the root key that opened it, so
/// a root key taken out of the configuration ends the sessions it opened.
pub fn console_id_hash(session_id: &str, root_key: &keywarden_core::Secret) -> String {
    let root = sha256_hex(root_key.expose().as_bytes());
    sha256_hex(format!("keywarden-console\0{root}\0{session_id}").as_bytes())
}

/// What a portal link or portal session keeps of the root key that made the link: a hash
/// of that key together with the link's or session's own id, which the store never holds,
/// so a copy of the database gives nothing to test guesses of a root key against.
pub fn root_fingerprint(root_key: &keywarden_core::Secret, session_id: &str) -> String {
    let root = sha256_hex(root_key.expose().as_bytes());
    sha256_hex(format!("keywarden-root-key\0{root}\0{session_id}").as_bytes())
}

/// The configured root key whose fingerprint with `session_id` is `fingerprint`: `None` for
/// a portal link or session made under a root key since taken out of the configuration.
pub fn root_key_of<'s>(
    state: &'s AppState,
    fingerprint: Option<&str>,
    session_id: &str,
) -> Option<&'s keywarden_core::Secret> {
    let fp = fingerprint?;
    // Every configured key is compared, so timing does not tell which one matched.
    state.settings.root_keys.iter().fold(None, |hit, root| {
        match keywarden_core::ct_eq(root_fingerprint(root, session_id).as_bytes(), fp.as_bytes()) {
            true => Some(root),
            false => hit,
        }
    })
}

/// The CSRF token of a session: derived from its id, so it needs no storage and tells
/// nothing of the id.
pub fn csrf_token(session_id: &str) -> String {
    sha256_hex(format!("keywarden-csrf\0{session_id}").as_bytes())
}

/// Whether a form's token is its session's, compared in constant time.
pub fn csrf_ok(session_id: &str, presented: &str) -> bool {
    keywarden_core::ct_eq(csrf_token(session_id).as_bytes(), presented.as_bytes())
}

/// A session cookie for `path`, living `max_age_secs` (0: removal). The portal's is
/// `SameSite=Lax`: a portal link is opened from another site (the operator's application,
/// a mail), and a `Strict` cookie would not come with the first page after it. Its forms
/// stay safe through their CSRF token; the console's cookie is `Strict`.
pub fn session_cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    path: &'static str,
    max_age_secs: i64,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(if path == "/portal" {
            SameSite::Lax
        } else {
            SameSite::Strict
        })
        .secure(state.settings.config.server.secure_cookies)
        .max_age(time::Duration::seconds(max_age_secs))
        .build()
}

/// The CSRF token of a posted form, read apart from its other fields.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct CsrfOnly {
    csrf: String,
}

/// A form with no field besides its CSRF token (sign-out and one-button forms).
#[derive(serde::Deserialize)]
pub struct NoFields {}

/// A form posted by a signed-in session `S`, read in this order: the session (so a visitor
/// without one learns nothing about the form), the path's `{id}`, the CSRF token, and only
/// then the form's own fields `F`. A form without the session's token is refused before
/// anything else is read or changed, with a link to the area's home page.
pub struct Posted<S, F> {
    /// Who posted it.
    pub by: S,
    /// The path's `{id}` (empty on a path without one).
    pub id: String,
    /// The form's fields besides the token.
    pub form: F,
}

impl<S, F> axum::extract::FromRequest<AppState> for Posted<S, F>
where
    S: SignedIn + axum::extract::FromRequestParts<AppState, Rejection = Response> + Send,
    F: serde::de::DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Response> {
        use axum::extract::{FromRequestParts, RawPathParams};
        let (mut parts, body) = req.into_parts();
        let by = S::from_request_parts(&mut parts, state).await?;
        let id = match RawPathParams::from_request_parts(&mut parts, state).await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| *k == "id")
                .map(|(_, v)| v.to_string()),
            Err(_) => None,
        };
        let req = axum::extract::Request::from_parts(parts, body);
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let home = format!("/{}", S::AREA);
        let token: CsrfOnly = serde_html_form::from_bytes(&bytes).unwrap_or_default();
        by.check(&token.csrf, &home)
            .map_err(IntoResponse::into_response)?;
        let fields = serde_html_form::Deserializer::from_bytes(&bytes);
        let form = serde_path_to_error::deserialize(fields).map_err(|e| {
            let message = format!(
                "The form could not be read ({}: {}); nothing was changed.",
                e.path(),
                e.inner()
            );
            WebError::new(StatusCode::BAD_REQUEST, message, &home).into_response()
        })?;
        Ok(Posted {
            by,
            id: id.unwrap_or_default(),
            form,
        })
    }
}

/// Ends the session `session_id` and returns the jar that clears its cookie `name` (set on
/// `path`).
pub async fn end_session(
    state: &AppState,
    stored_hash: &str,
    name: &'static str,
    path: &'static str,
) -> Result<axum_extra::extract::cookie::CookieJar, WebError> {
    let now = state.clock.now_ms();
    state.store.take_web_session(stored_hash, now).await?;
    Ok(
        axum_extra::extract::cookie::CookieJar::new().add(session_cookie(
            state,
            name,
            String::new(),
            path,
            0,
        )),
    )
}

/// Milliseconds from now.
pub fn after_secs(state: &AppState, secs: i64) -> Millis {
    state.clock.now_ms() + secs * 1000
}

/// Splits a text field of IPs and CIDRs on commas, spaces and newlines.
pub fn list_field(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// An optional form field: empty is absent.
pub fn opt_field(s: &str) -> Option<&str> {
    let t = s.trim();
    (!t.is_empty()).then_some(t)
}

/// An expiry from a date (`YYYY-MM-DD`, end of that day UTC) or an RFC 3339 instant.
pub fn expiry_field(s: &str) -> Result<Option<Millis>, ApiError> {
    let Some(t) = opt_field(s) else {
        return Ok(None);
    };
    let full = if t.len() == 10 {
        format!("{t}T23:59:59Z")
    } else {
        t.to_string()
    };
    crate::views::parse_ts(&full)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("expires_at: {e}")))
}

/// A rate-limit override from two optional number fields: both or neither.
pub fn rate_field(
    requests: &str,
    per_seconds: &str,
) -> Result<Option<keywarden_core::model::RateLimitSpec>, ApiError> {
    match (opt_field(requests), opt_field(per_seconds)) {
        (None, None) => Ok(None),
        (Some(r), Some(p)) => {
            let num = |f: &str, v: &str| {
                v.parse::<u32>()
                    .map_err(|_| ApiError::invalid(format!("{f}: {v:?} is not a whole number")))
            };
            Ok(Some(keywarden_core::model::RateLimitSpec {
                requests: num("rate_limit.requests", r)?,
                per_seconds: num("rate_limit.per_seconds", p)?,
            }))
        }
        _ => Err(ApiError::invalid(
            "rate_limit: give both the number of requests and the window in seconds, or neither",
        )),
    }
}

/// The scope picker: the configured aliases, then every catalog scope, each checked when
/// it is one of `keys.default_scopes`.
pub fn scope_choices(state: &AppState, picked: Option<&[String]>) -> Vec<minijinja::Value> {
    let defaults = &state.settings.config.keys.default_scopes;
    let checked = |name: &str| picked.unwrap_or(defaults).iter().any(|d| d == name);
    let aliases = state
        .settings
        .config
        .scopes
        .aliases
        .iter()
        .map(|(name, members)| {
            minijinja::context! {
                name => name,
                description => format!("alias: {}", members.join(", ")),
                checked => checked(name),
            }
        });
    let units = state
        .settings
        .catalog
        .entries()
        .map(|(name, description, _)| {
            minijinja::context! { name => name, description => description, checked => checked(name) }
        });
    aliases.chain(units).collect()
}

/// What a key's page shows of its use: the recent activity (newest first) and the traffic
/// over the last day.
pub async fn key_use(
    state: &AppState,
    k: &keywarden_core::model::KeyRecord,
) -> Result<minijinja::Value, WebError> {
    let activity = state.store.list_activity(&k.id, 50).await?;
    let activity: Vec<_> = activity.iter().map(crate::views::Activity::from).collect();
    let chart = day_chart(state, Some(&k.account_id), Some(&k.id), None).await?;
    Ok(minijinja::context! {
        chart => chart,
        key => key_view(k),
        activity => activity,
        action_base => format!("/{}/keys/{}", area(), k.id),
        max_grace => state.settings.config.keys.max_grace_period_seconds,
    })
}

/// The chart of the last 24 hours of an account's or a key's decisions (or, with neither,
/// the deployment's), by hour.
pub async fn day_chart(
    state: &AppState,
    account_id: Option<&str>,
    key_id: Option<&str>,
    mode: Option<keywarden_core::model::Mode>,
) -> Result<minijinja::Value, ApiError> {
    let range = crate::analytics::range(state, &None, &None, Some("hour"))?;
    let r = crate::analytics::report(
        state,
        range,
        account_id.map(str::to_string),
        key_id.map(str::to_string),
        mode,
    )
    .await?;
    Ok(crate::analytics::chart(&r))
}

/// A key as a page shows it: metadata, never a secret.
pub fn key_view(k: &keywarden_core::model::KeyRecord) -> minijinja::Value {
    minijinja::Value::from_serialize(crate::views::ApiKey::from(k))
}

#[cfg(test)]
mod tests {
    /// Every tag of `html` named `tag`, from `<tag` to its `>`.
    fn tags<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
        let open = format!("<{tag}");
        html.match_indices(&open)
            .map(|(at, _)| &html[at..at + html[at..].find('>').map_or(0, |end| end + 1)])
            .collect()
    }

    #[test]
    fn a_root_fingerprint_is_bound_to_its_session_and_never_the_keys_own_hash() {
        let root = keywarden_core::Secret::new("kw_root_0123456789abcdefghij");
        let a = super::root_fingerprint(&root, "session-a");
        assert_ne!(a, super::root_fingerprint(&root, "session-b"));
        assert_eq!(a, super::root_fingerprint(&root, "session-a"));
        assert_ne!(a, super::sha256_hex(root.expose().as_bytes()));
        assert!(!a.contains(root.expose()));
    }

    #[test]
    fn no_embedded_page_loads_anything_from_another_origin() {
        for (name, source) in super::SOURCES {
            for tag in [
                "link", "script", "img", "iframe", "style", "object", "embed",
            ] {
                for t in tags(source, tag) {
                    let lower = t.to_ascii_lowercase();
                    for far in ["http:", "https:", "//", "data:"] {
                        assert!(
                            !lower.contains(&format!("=\"{far}")),
                            "{name}: {t} loads from another origin"
                        );
                    }
                }
            }
            for inline in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
                assert!(!source.contains(inline), "{name}: {inline} is inline");
            }
        }
        for (name, asset) in [("app.css", super::APP_CSS), ("app.js", super::APP_JS)] {
            for far in ["http:", "https:", "url(//", "@import"] {
                assert!(!asset.contains(far), "{name} reaches out: {far}");
            }
        }
    }
}
