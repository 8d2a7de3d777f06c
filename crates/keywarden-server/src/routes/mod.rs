//! The HTTP surface: which paths each listener serves.

pub mod admin;
pub mod apps;
pub mod forward_auth;
pub mod health;
pub mod leaks;
pub mod metrics;
pub mod needs;
pub mod self_service;
pub mod verify;
pub mod webhooks;

use crate::extract::{refuse_nul_in_uri, MAX_BODY_BYTES};
use crate::middleware::{not_found, request_context};
use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, patch, post};
use axum::Router;

/// What a handler answers: a JSON body, or the error in the deployment's format.
pub type Reply<T> = Result<axum::Json<T>, crate::errors::ApiError>;

/// Declares, for the documents, what `{id}` names on a kind of route.
macro_rules! path_id {
    ($($name:ident => $what:literal),* $(,)?) => {$(
        #[doc = concat!("Documents a route's `{id}`: ", $what, ".")]
        #[derive(utoipa::IntoParams)]
        #[into_params(parameter_in = Path)]
        pub struct $name {
            #[doc = $what]
            #[allow(dead_code)]
            id: String,
        }
    )*};
}

path_id! {
    AccountPath => "Account id",
    ApplicationPath => "Application id",
    EndpointPath => "Endpoint id",
    GrantPath => "Grant id",
    KeyPath => "Key id or key_hash",
}

/// The public listener: self-service API, health and, in gateway mode, the proxy (`gateway`,
/// the worker's own).
pub fn public_router(
    state: AppState,
    gateway: Option<std::sync::Arc<crate::gateway::Gateway>>,
) -> Router {
    // Only the endpoint groups the deployment serves (`self_service.endpoints`); any other
    // path falls through to the gateway or the 404 below.
    let ss = &state.settings.self_service;
    let mut api = Router::new();
    match (ss.serves("account"), ss.serves("account_write")) {
        (true, true) => {
            api = api.route(
                "/account",
                get(self_service::get_account).patch(self_service::patch_account),
            )
        }
        (true, false) => api = api.route("/account", get(self_service::get_account)),
        (false, true) => api = api.route("/account", patch(self_service::patch_account)),
        (false, false) => {}
    }
    if ss.serves("account_write") {
        api = api.route("/account/plan", patch(self_service::patch_plan));
    }
    if ss.serves("usage") {
        api = api.route("/account/usage", get(self_service::get_usage));
    }
    if ss.serves("erase") {
        api = api.route("/account/data", axum::routing::delete(self_service::erase));
    }
    if ss.serves("api_keys") {
        api = api
            .route(
                "/api-keys",
                post(self_service::create_key).get(self_service::list_keys),
            )
            .route(
                "/api-keys/{id}",
                get(self_service::get_key).delete(self_service::delete_key),
            )
            .route("/api-keys/{id}/rotate", post(self_service::rotate_key))
            .route("/api-keys/{id}/activity", get(self_service::key_activity));
    }
    if ss.serves("events") {
        api = api.route("/events", get(self_service::events));
    }
    if ss.serves("usage") {
        api = api.route("/analytics", get(self_service::analytics));
    }
    if ss.serves("grants") {
        api = api.merge(apps::self_service_routes());
    }
    if ss.serves("webhooks") {
        api = api.merge(webhooks::self_service_routes());
    }
    let serves_any = !ss.endpoints.is_empty();
    if serves_any {
        api = api
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::middleware::rename_fields,
            ))
            .route_layer(axum::middleware::from_fn(refuse_nul_in_uri));
    }
    let routes = open_routes(crate::openapi::openapi_json)
        .route("/v1/secret-scanning/github", post(leaks::github_report))
        .route("/v1/revocable_token_types", get(leaks::gitlab_token_types))
        .route("/v1/revoke_tokens", post(leaks::gitlab_revoke));
    let routes = if ss.serves("portal") {
        routes.merge(crate::web::portal::routes())
    } else {
        routes
    };
    let routes = if serves_any {
        routes.nest(&state.settings.base_path.clone(), api)
    } else {
        routes
    };
    // Gateway mode: what no route above matches goes to the upstream (else 404).
    finish(crate::gateway::with_fallback(routes, gateway), state)
}

/// What both listeners serve to anyone: the health checks and the listener's API document
/// (`openapi`).
fn open_routes<H, T>(openapi: H) -> Router<AppState>
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi))
}

/// What both listeners' routers end with: 405 for a known path with another method, the
/// body limit, and the request context (request id, language, log line, error rendering).
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// The admin listener: admin API, verify, forward-auth, health.
pub fn admin_router(state: AppState) -> Router {
    // The root key is checked before a body is read, so an unauthenticated caller learns
    // nothing about the admin API's input.
    let accounts = post(admin::create_account).get(admin::list_accounts);
    let account = get(admin::get_account)
        .patch(admin::patch_account)
        .delete(admin::erase_account);
    let account_keys = post(admin::create_key).get(admin::list_keys);
    let portal_sessions = post(admin::create_portal_session);
    let key = get(admin::get_key).patch(admin::patch_key);
    let admin_api = Router::new()
        .route("/v1/admin/accounts", accounts)
        .route("/v1/admin/accounts/{id}", account)
        .route(
            "/v1/admin/accounts/{id}/approve",
            post(admin::approve_account),
        )
        .route("/v1/admin/accounts/{id}/keys", account_keys)
        .route("/v1/admin/accounts/{id}/usage", post(admin::report_usage))
        .route("/v1/admin/accounts/{id}/portal-sessions", portal_sessions)
        .route("/v1/admin/keys/import", post(admin::import_key))
        .route("/v1/admin/keys/{id}", key)
        .route("/v1/admin/keys/{id}/rotate", post(admin::rotate_key))
        .route("/v1/admin/keys/{id}/revoke", post(admin::revoke_key))
        .route("/v1/admin/keys/{id}/activity", get(admin::key_activity))
        .route("/v1/admin/events", get(admin::events))
        .route("/v1/admin/analytics", get(admin::analytics))
        .route("/v1/admin/leaks", post(leaks::admin_report))
        .merge(apps::admin_routes())
        .merge(webhooks::admin_routes())
        // Inside the root-key guard: a caller without a root key learns nothing of input.
        .route_layer(axum::middleware::from_fn(refuse_nul_in_uri))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::root_guard,
        ));
    // The document is open like the health checks (`docs/concepts.md#listeners`): outside
    // the root-key guard.
    let routes = open_routes(crate::openapi::admin_openapi_json)
        .route("/metrics", get(metrics::metrics))
        .route("/v1/verify", post(verify::verify))
        .route("/v1/forward-auth", any(forward_auth::forward_auth))
        // Envoy's path_prefix puts the original path after this one: `/` itself too, which
        // the catch-all below does not match.
        .route("/v1/forward-auth/", any(forward_auth::forward_auth))
        .route(
            "/v1/forward-auth/{*original}",
            any(forward_auth::forward_auth),
        )
        .merge(admin_api)
        .merge(crate::web::console::routes())
        .fallback(not_found);
    finish(routes, state)
}

async fn method_not_allowed() -> crate::errors::ApiError {
    crate::errors::ApiError::new(keywarden_core::codes::Code::MethodNotAllowed)
}
