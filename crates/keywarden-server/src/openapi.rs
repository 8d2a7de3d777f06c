//! `/openapi.json` (`docs/concepts.md#listeners`): the OpenAPI 3.1 description of both listeners, derived from
//! the handlers' `#[utoipa::path]` attributes and the request and response types.
//!
//! One document describes everything ([`ApiDoc`]); each listener serves its own part of it
//! ([`document`]): the public listener the self-service API (tag `self-service`), the admin
//! listener the admin API, verify and forward-auth (tags `admin`, `verify`); both
//! `/healthz`, `/readyz` and `/openapi.json` (tag `service`). The served document follows
//! the running configuration:
//!
//! - self-service paths carry the configured `server.base_path` (the attributes say `/v1`,
//!   the default);
//! - the self-service security schemes are the configured `auth.sources`, in order (by
//!   default `api_key`, `Authorization: Bearer`, and `api_key_header`, `X-API-Key`);
//! - error responses show the body of the configured `errors.style` only.
//!
//! The document never needs a credential, on either listener.
//!
//! The response bodies are the types of [`crate::views`], which the handlers return: what
//! is documented is what is sent.

use crate::errors::ErrorStyle;
use crate::routes::{
    admin, apps, forward_auth, health, leaks, metrics, self_service, verify, webhooks,
};
use crate::settings::{KeySource, Settings};
use crate::state::AppState;
use crate::views;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use utoipa::{OpenApi, ToResponse};

/// The path the self-service attributes are written under; replaced by the configured
/// base path when served.
pub const DEFAULT_BASE_PATH: &str = "/v1";

/// Tag of the self-service API (public listener).
pub const TAG_SELF_SERVICE: &str = "self-service";
/// Tag of the admin API (admin listener).
pub const TAG_ADMIN: &str = "admin";
/// Tag of verify and forward-auth (admin listener).
pub const TAG_VERIFY: &str = "verify";
/// Tag of the secret-scanning reports (public listener).
pub const TAG_SECRET_SCANNING: &str = "secret-scanning";
/// Tag of health checks and this document (both listeners).
pub const TAG_SERVICE: &str = "service";

const INFO_DESCRIPTION: &str = "\
Keywarden issues API keys to a provider's customers and checks every request made with them.

Two listeners serve different parts of this API:

- **public**: the self-service API, where an account manages itself and its keys with one of \
its own secret keys (security `api_key`, or another configured key source). Its paths start \
with the configured `server.base_path` (default `/v1`). In gateway mode it also forwards \
every other request to the provider's upstream API; those paths are not described here.
- **admin**: the admin API (security `root_key`: `Authorization: Bearer <root key>`), \
`POST /v1/verify` (a root key or the `verify_token`) and `/v1/forward-auth` (open, or the \
`verify_token` in `X-Keywarden-Verify-Token` when one is configured). Keep it private.

Both serve `/healthz`, `/readyz` and `/openapi.json` without a credential; each listener's \
`/openapi.json` describes that listener.

Secrets appear only in the answer that makes them (`api_key` of a key, `secrets` or \
`secret` of an application), and again only through the reveal of a recoverable test key; \
no answer ever contains a stored hash (`key_hash` is a public fingerprint).

Every answer carries `X-Request-Id: req_<ULID>`. Errors have the shape chosen by \
`errors.style`: `envelope` (default, `ErrorEnvelope`), `problem` (RFC 9457 \
`application/problem+json`, `ProblemDetails`) or `detail` (`DetailError`). Bad input \
(malformed JSON, unknown fields, wrong types, over-long strings, the NUL character U+0000 in \
any string, path id or query parameter) is answered with 400 naming the field, bodies over \
64 KiB with 413; neither changes anything.";

/// The whole API. Each listener serves its part through [`document`].
#[derive(OpenApi)]
#[openapi(
    info(title = "Keywarden", description = INFO_DESCRIPTION),
    paths(
        health::healthz,
        health::readyz,
        openapi_json,
        self_service::get_account,
        self_service::patch_account,
        self_service::patch_plan,
        self_service::get_usage,
        self_service::erase,
        self_service::create_key,
        self_service::list_keys,
        self_service::get_key,
        self_service::delete_key,
        self_service::rotate_key,
        self_service::key_activity,
        self_service::events,
        self_service::analytics,
        apps::create_grant,
        apps::list_grants,
        apps::get_grant,
        apps::delete_grant,
        admin::create_account,
        admin::list_accounts,
        admin::get_account,
        admin::patch_account,
        admin::erase_account,
        admin::approve_account,
        admin::create_portal_session,
        admin::create_key,
        admin::list_keys,
        admin::report_usage,
        admin::import_key,
        admin::get_key,
        admin::patch_key,
        admin::rotate_key,
        admin::revoke_key,
        admin::key_activity,
        admin::events,
        admin::analytics,
        webhooks::admin_create,
        webhooks::admin_list,
        webhooks::admin_get,
        webhooks::admin_patch,
        webhooks::admin_delete,
        webhooks::admin_rotate,
        webhooks::admin_deliveries,
        webhooks::admin_redeliver,
        webhooks::admin_test,
        webhooks::create,
        webhooks::list,
        webhooks::show,
        webhooks::patch,
        webhooks::delete,
        webhooks::rotate,
        webhooks::deliveries,
        webhooks::redeliver,
        webhooks::test,
        leaks::admin_report,
        leaks::github_report,
        leaks::gitlab_token_types,
        leaks::gitlab_revoke,
        apps::create_application,
        apps::list_applications,
        apps::get_application,
        apps::patch_application,
        apps::rotate_application_secret,
        apps::admin_create_grant,
        apps::admin_list_grants,
        apps::admin_get_grant,
        apps::admin_delete_grant,
        apps::reveal_key,
        verify::verify,
        forward_auth::forward_auth,
        metrics::metrics,
    ),
    components(
        schemas(
            crate::bodies::AccountPatch,
            crate::bodies::PlanPatch,
            crate::bodies::CreateKeyBody,
            crate::bodies::RotateBody,
            crate::bodies::CreateAccount,
            crate::bodies::PatchAccount,
            crate::bodies::CreateKey,
            crate::bodies::PatchKey,
            crate::bodies::RevokeBody,
            crate::bodies::ImportKey,
            crate::bodies::ReportUsage,
            crate::bodies::CreateApplication,
            crate::bodies::PatchApplication,
            crate::bodies::AdminCreateGrant,
            crate::bodies::CreateGrantBody,
            crate::bodies::VerifyBody,
            crate::bodies::LeakReport,
            leaks::LeakVerdict,
            crate::bodies::GithubMatch,
            leaks::GithubVerdict,
            leaks::RevocableTokenTypes,
            crate::bodies::GitlabRevocation,
            crate::leaks::Label,
            keywarden_core::model::Mode,
            keywarden_core::model::KeyType,
            keywarden_core::model::Role,
            keywarden_core::model::AccountStatus,
            keywarden_core::model::AppEnvironment,
            ErrorType,
            views::Timestamp,
            views::JsonObject,
            views::RateLimit,
            views::Account,
            views::AccountWithKeys,
            views::AccountSummary,
            views::CallerAccount,
            views::CallerKey,
            views::ApiKey,
            views::CreatedApiKey,
            views::ApiKeyWithSecret,
            views::Application,
            views::ApplicationSecrets,
            views::CreatedApplication,
            views::RotatedApplicationSecret,
            views::Grant,
            views::IssuedGrant,
            views::DeletedGrant,
            views::Quota,
            views::UsageResponse,
            views::AuditEvent,
            views::Activity,
            views::ErasureCounts,
            views::VerifyResponse,
            views::VerifyKey,
            views::VerifyAccount,
            views::RateLimitState,
            views::HealthStatus,
            ErrorEnvelope,
            ErrorObject,
            ProblemDetails,
            DetailError,
            ErrorBody,
        ),
        responses(
            BadRequest,
            Unauthorized,
            RootKeyRequired,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            TooManyRequests,
            Unavailable,
            ReportUnauthorized,
        ),
    ),
    tags(
        (name = "self-service", description = "The self-service API (public listener): an account manages itself with its own secret keys. Paths start with the configured `server.base_path` (default `/v1`)."),
        (name = "admin", description = "The admin API (admin listener): the operator manages every account and key with a root key."),
        (name = "verify", description = "Verify and forward-auth (admin listener): backends and proxies ask whether a request may pass."),
        (name = "secret-scanning", description = "Leaked-key reports (public listener): GitHub's secret-scanning partner endpoint, signed by GitHub, and GitLab's token revocation API, authenticated by the token in the variable named by `leaks.gitlab_token_env`. See docs/leaked-keys.md."),
        (name = "service", description = "Health checks and this document (both listeners, no credential)."),
    ),
)]
pub struct ApiDoc;

// ---------------------------------------------------------------------------------------
// Errors (`docs/errors.md`): the bodies are the core's wire types.

use keywarden_core::codes::{
    DetailError, ErrorBody, ErrorEnvelope, ErrorObject, ErrorType, ProblemDetails,
};

/// Declares a reusable error response: the error body in each style, plus headers.
macro_rules! error_response {
    ($(#[$meta:meta])* $name:ident, $description:literal $(, ($header:literal, $header_desc:literal))* $(,)?) => {
        $(#[$meta])*
        #[derive(ToResponse)]
        #[response(
            description = $description,
            headers(
                ("X-Request-Id" = String, description = "The request's id (`req_<ULID>`)."),
                $(($header = String, description = $header_desc),)*
            ),
        )]
        pub enum $name {
            /// The envelope or detail style.
            Json(#[content("application/json")] ErrorBody),
            /// The problem style.
            Problem(#[content("application/problem+json")] ProblemDetails),
        }
    };
}

error_response!(
    /// 400.
    BadRequest,
    "The request is invalid and changed nothing: `invalid_request` (malformed JSON, an \
     unknown field, a wrong type, an out-of-range or over-long value; the message names the \
     field) or `invalid_scope` (a scope outside the catalog; each one is named)."
);
error_response!(
    /// 401 for a customer's key.
    Unauthorized,
    "No valid key: `missing_api_key`, `invalid_api_key`, `api_key_revoked`, \
     `api_key_expired`, `api_key_disabled`, `invalid_app_secret` or `ip_not_allowed`. These \
     count toward the per-IP lockout.",
    ("WWW-Authenticate", "`Bearer realm=\"keywarden\"`."),
);
error_response!(
    /// 401 for the operator's root key.
    RootKeyRequired,
    "`root_key_required`: no valid root key (`Authorization: Bearer <root key>`).",
    ("WWW-Authenticate", "`Bearer realm=\"keywarden\"`."),
);
error_response!(
    /// 401 for a leak report.
    ReportUnauthorized,
    "`invalid_signature` (GitHub: the signature is missing, malformed, made by another key \
     or over another body, or the key identifier is unknown) or `invalid_revocation_token` \
     (GitLab: the token is missing or wrong; counts toward the per-IP lockout). Nothing \
     changed.",
    ("WWW-Authenticate", "`Bearer realm=\"keywarden\"`."),
);
error_response!(
    /// 403.
    Forbidden,
    "The key is valid but may not do this: `api_disabled`, `account_inactive`, \
     `mode_mismatch`, `insufficient_scope`, `insufficient_role` or `plan_limit_reached`."
);
error_response!(
    /// 404.
    NotFound,
    "`not_found`: no such object for this caller (another account's object looks exactly \
     like a missing one)."
);
error_response!(
    /// 409.
    Conflict,
    "`conflict`: the request conflicts with the object's current state (e.g. rotating a \
     revoked key, importing a key that already exists, changing a webhook endpoint that \
     another change reached first: read it again and retry; redelivering to or testing a \
     disabled webhook endpoint, which would never be sent: enable it first)."
);
error_response!(
    /// 413.
    PayloadTooLarge,
    "`payload_too_large`: the body is over 64 KiB; nothing changed."
);
error_response!(
    /// 429.
    TooManyRequests,
    "Limited: `too_many_auth_failures` (the client IP is locked out), \
     `rate_limit_exceeded`, `concurrency_limit_exceeded` or `quota_exceeded`.",
    ("Retry-After", "Seconds to wait."),
    ("RateLimit-Policy", "The rate limit (IETF httpapi draft 11), when one applied."),
    ("RateLimit", "What is left of it (IETF httpapi draft 11), when one applied."),
);
error_response!(
    /// 503.
    Unavailable,
    "`admin_disabled` (no root key is configured) or `service_unavailable` (the store is not \
     reachable)."
);

/// The errors a root-key route can answer, whatever it does: no valid root key (401), no
/// root key configured or the store unreachable (503). Routes under `/v1/admin/` get them
/// from [`by_caller`]; `POST /v1/verify`, which takes a root key too, lists this.
#[derive(utoipa::IntoResponses)]
pub enum AdminErrors {
    /// 401.
    #[response(status = 401)]
    RootKeyRequired(#[ref_response] RootKeyRequired),
    /// 503.
    #[response(status = 503)]
    Unavailable(#[ref_response] Unavailable),
}

// ---------------------------------------------------------------------------------------
// Serving.

/// Which listener a document is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Self-service API.
    Public,
    /// Admin API, verify, forward-auth.
    Admin,
}

impl Listener {
    fn tags(self) -> &'static [&'static str] {
        match self {
            Listener::Public => &[TAG_SELF_SERVICE, TAG_SECRET_SCANNING, TAG_SERVICE],
            Listener::Admin => &[TAG_ADMIN, TAG_VERIFY, TAG_SERVICE],
        }
    }
}

/// The OpenAPI document of a listener.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi",
    responses((status = 200, description = "This listener's OpenAPI 3.1 document", body = views::JsonObject)),
    security(()), tag = "service")]
pub async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(document(Listener::Public, &state.settings))
}

/// `/openapi.json` on the admin listener.
pub async fn admin_openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(document(Listener::Admin, &state.settings))
}

/// HTTP methods as OpenAPI path items name them.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The whole API with the finishing touches that do not depend on the configuration.
static FULL: LazyLock<Value> = LazyLock::new(|| {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    finish(&mut doc);
    doc
});

/// The `self_service.endpoints` group of a self-service operation (`rest` is its path
/// after the base path); `None` for one that belongs to no group.
fn self_service_group(method: &str, rest: &str) -> Option<&'static str> {
    Some(match rest {
        "/account" if method == "get" => "account",
        "/account" | "/account/plan" => "account_write",
        "/account/usage" | "/analytics" => "usage",
        "/account/data" => "erase",
        "/events" => "events",
        r if r.starts_with("/api-keys") => "api_keys",
        r if r.starts_with("/grants") => "grants",
        r if r.starts_with("/webhooks") => "webhooks",
        _ => return None,
    })
}

/// The self-service answer (one of `SELF_SERVICE_ANSWERS`) whose fields `self_service.fields`
/// chooses that an operation answers with (`rest` is its path after the base path).
fn self_service_answer(method: &str, rest: &str) -> Option<&'static str> {
    Some(match (method, rest) {
        ("get", "/account") | ("patch", "/account") | ("patch", "/account/plan") => "account",
        ("get", "/api-keys") | ("get", "/api-keys/{id}") => "api_key",
        ("post", "/api-keys") => "created_api_key",
        _ => return None,
    })
}

/// The `$ref`s a self-service operation answers with when it succeeds (the item's, for a
/// list).
fn answer_refs(op: &mut Value) -> Vec<&mut Value> {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    responses
        .iter_mut()
        .filter(|(status, _)| status.starts_with('2'))
        .filter_map(|(_, res)| {
            let schema = res.pointer_mut("/content/application~1json/schema")?;
            let schema = if schema["type"] == "array" {
                schema.get_mut("items")?
            } else {
                schema
            };
            schema.get_mut("$ref").filter(|r| r.is_string())
        })
        .collect()
}

/// Keeps only the top-level fields `keep` of an object schema.
fn keep_fields(schema: &mut Value, keep: &BTreeSet<String>) {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.retain(|name, _| keep.contains(name));
    }
    if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
        required.retain(|n| n.as_str().is_some_and(|n| keep.contains(n)));
    }
}

/// Names the top-level fields of an object schema as `self_service.rename` does.
fn rename_fields(schema: &mut Value, renames: &BTreeMap<String, String>) {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (from, to) in renames {
            if let Some(p) = props.remove(from) {
                props.insert(to.clone(), p);
            }
        }
    }
    if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
        for name in required.iter_mut() {
            if let Some(to) = name.as_str().and_then(|n| renames.get(n)) {
                *name = Value::String(to.clone());
            }
        }
    }
}

/// Shapes the self-service answers' schemas as the deployment answers. An answer whose
/// fields `self_service.fields` chooses gets a component of its own (`ApiKey` becomes
/// `ApiKeyAnswer`: a copy with only those fields), so a schema it shared with another
/// answer (the rotated key's, say) keeps them all. Then every answer's top-level fields,
/// those of the schemas it is composed of (`allOf`) included, take their
/// `self_service.rename` names.
fn shape_answers(doc: &mut Value, settings: &Settings) {
    let self_service = &settings.self_service;
    let mut copies: BTreeMap<String, (String, &BTreeSet<String>)> = BTreeMap::new();
    let mut answers: BTreeSet<String> = BTreeSet::new();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(rest) = path.strip_prefix(&settings.base_path) else {
                continue;
            };
            let Some(ops) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in ops.iter_mut() {
                if !has_tag(op, &[TAG_SELF_SERVICE]) {
                    continue;
                }
                let chosen = self_service_answer(method, rest).and_then(|a| self_service.fields(a));
                for r in answer_refs(op) {
                    let Some(name) = r
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                        .map(str::to_string)
                    else {
                        continue;
                    };
                    let name = match chosen {
                        Some(keep) => {
                            let copy = format!("{name}Answer");
                            *r = Value::String(format!("#/components/schemas/{copy}"));
                            copies.insert(copy.clone(), (name, keep));
                            copy
                        }
                        None => name,
                    };
                    answers.insert(name);
                }
            }
        }
    }
    let Some(schemas) = doc["components"]["schemas"].as_object_mut() else {
        return;
    };
    for (copy, (from, keep)) in copies {
        if let Some(mut schema) = schemas.get(&from).cloned() {
            keep_fields(&mut schema, keep);
            schemas.insert(copy, schema);
        }
    }
    let renames = &self_service.rename;
    if renames.is_empty() {
        return;
    }
    let parts: Vec<String> = answers
        .iter()
        .filter_map(|a| schemas.get(a)?.get("allOf")?.as_array())
        .flatten()
        .filter_map(|p| p["$ref"].as_str()?.strip_prefix("#/components/schemas/"))
        .map(str::to_string)
        .collect();
    // Each schema once, whether an answer, a part of one, or both.
    let named: BTreeSet<String> = answers.into_iter().chain(parts).collect();
    for name in &named {
        if let Some(schema) = schemas.get_mut(name) {
            rename_fields(schema, renames);
        }
        // An allOf's own inline parts are its top level too.
        if let Some(inline) = schemas
            .get_mut(name)
            .and_then(|s| s.get_mut("allOf"))
            .and_then(Value::as_array_mut)
        {
            for part in inline.iter_mut().filter(|p| p.get("$ref").is_none()) {
                rename_fields(part, renames);
            }
        }
    }
}

/// The document a listener serves under `settings`.
pub fn document(listener: Listener, settings: &Settings) -> Value {
    let mut doc = FULL.clone();
    let tags = listener.tags();
    let public_schemes = self_service_schemes(&settings.sources);

    let paths = take_object(&mut doc, "paths");
    let mut kept = Map::new();
    for (path, mut item) in paths {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        ops.retain(|method, op| !METHODS.contains(&method.as_str()) || has_tag(op, tags));
        if !ops.keys().any(|m| METHODS.contains(&m.as_str())) {
            continue;
        }
        let self_service = ops.values().any(|op| has_tag(op, &[TAG_SELF_SERVICE]));
        // Only the self-service endpoint groups the deployment serves.
        if let Some(rest) = path
            .strip_prefix(DEFAULT_BASE_PATH)
            .filter(|_| self_service)
        {
            ops.retain(|method, _| {
                !METHODS.contains(&method.as_str())
                    || self_service_group(method, rest)
                        .is_none_or(|g| settings.self_service.serves(g))
            });
            if !ops.keys().any(|m| METHODS.contains(&m.as_str())) {
                continue;
            }
        }
        if self_service {
            for op in ops.values_mut() {
                if let Some(sec) = op.get_mut("security") {
                    *sec = self_service_security(sec, &public_schemes);
                }
            }
        }
        let path = match path.strip_prefix(DEFAULT_BASE_PATH) {
            Some(rest) if self_service => format!("{}{rest}", settings.base_path),
            _ => path,
        };
        kept.insert(path, item);
    }
    doc["paths"] = Value::Object(kept);
    shape_answers(&mut doc, settings);

    // Security schemes: the listener's own.
    let mut schemes = Map::new();
    match listener {
        Listener::Public => {
            for (name, scheme) in &public_schemes {
                schemes.insert(name.clone(), scheme.clone());
            }
            schemes.insert(
                "github_signature".into(),
                json!({"type": "apiKey", "in": "header", "name": "Github-Public-Key-Signature",
                       "description": "GitHub's ECDSA P-256 signature over the raw body, checked against the key named in `Github-Public-Key-Identifier` from `leaks.github_public_keys_file`."}),
            );
            schemes.insert(
                "gitlab_token".into(),
                json!({"type": "apiKey", "in": "header", "name": "Authorization",
                       "description": "The token held in the variable named by `leaks.gitlab_token_env`, as `Authorization: <token>` or `Authorization: Bearer <token>`."}),
            );
        }
        Listener::Admin => {
            schemes.insert(
                "root_key".into(),
                json!({"type": "http", "scheme": "bearer",
                       "description": "A root key: `Authorization: Bearer <root key>`."}),
            );
            schemes.insert(
                "verify_token".into(),
                json!({"type": "http", "scheme": "bearer",
                       "description": "The configured `verify_token`, accepted by `POST /v1/verify` in place of a root key."}),
            );
            schemes.insert(
                "forward_auth_token".into(),
                json!({"type": "apiKey", "in": "header", "name": "X-Keywarden-Verify-Token",
                       "description": "The configured `verify_token`; forward-auth requires it only when one is configured."}),
            );
        }
    }
    doc["components"]["securitySchemes"] = Value::Object(schemes);

    apply_error_style(&mut doc, settings.renderer.style);
    apply_plans(&mut doc, settings);
    if let Some(list) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        list.retain(|t| t["name"].as_str().is_some_and(|n| tags.contains(&n)));
    }
    doc["info"]["x-keywarden-listener"] = json!(match listener {
        Listener::Public => "public",
        Listener::Admin => "admin",
    });
    prune_components(&mut doc);
    doc
}

fn take_object(doc: &mut Value, key: &str) -> Map<String, Value> {
    match doc.get_mut(key).map(Value::take) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn has_tag(op: &Value, tags: &[&str]) -> bool {
    op["tags"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t.as_str().is_some_and(|t| tags.contains(&t)))
    })
}

/// What every operation of a kind of caller shares, stated once here instead of in each
/// route: an admin route (`/v1/admin/…`) is tagged `admin`, takes a root key and can answer
/// 401 and 503 whatever it does; a self-service route (one that takes an account's key) is
/// tagged `self-service` and can answer 401, 403 and 429; a route
/// that reads a JSON body can answer 400 and 413; a route about one object (`{id}`) can
/// answer 404. A route that documents one of these statuses itself keeps its own.
fn by_caller(path: &str, op: &mut Value) {
    // A self-service operation is one a key of an account may call.
    let self_service = op["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
    let Some(o) = op.as_object_mut() else {
        return;
    };
    // A handler's `Path` extractor lists each `{x}` bare; the route's `params(…Path)` names it
    // again with its description. Keep the described one.
    if let Some(Value::Array(params)) = o.get_mut("parameters") {
        let described: Vec<String> = params
            .iter()
            .filter(|p| p["in"] == "path" && p.get("description").is_some())
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        params.retain(|p| {
            p["in"] != "path"
                || p.get("description").is_some()
                || !p["name"]
                    .as_str()
                    .is_some_and(|n| described.iter().any(|d| d == n))
        });
    }
    let mut shared: Vec<(&str, &str)> = Vec::new();
    if path.starts_with("/v1/admin/") {
        // Without a tag of its own an operation is tagged with its module's name.
        o.insert("tags".into(), json!([TAG_ADMIN]));
        o.entry("security")
            .or_insert_with(|| json!([{"root_key": []}]));
        shared.extend([("401", "RootKeyRequired"), ("503", "Unavailable")]);
    }
    if self_service {
        o.insert("tags".into(), json!([TAG_SELF_SERVICE]));
        shared.extend([
            ("401", "Unauthorized"),
            ("403", "Forbidden"),
            ("429", "TooManyRequests"),
        ]);
    }
    if o.contains_key("requestBody") {
        shared.extend([("400", "BadRequest"), ("413", "PayloadTooLarge")]);
    }
    if path.contains("{id}") {
        shared.push(("404", "NotFound"));
    }
    if let Some(Value::Object(responses)) = o.get_mut("responses") {
        for (status, name) in shared {
            responses
                .entry(status)
                .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
        }
    }
}

/// Touches that hold for every configuration: the request id on every answer, the
/// rate-limit headers on self-service answers, forward-auth under its own path too, and
/// one operation id per method.
fn finish(doc: &mut Value) {
    let request_id = json!({
        "description": "The request's id (`req_<ULID>`).",
        "schema": {"type": "string"},
    });
    let rate_headers = [
        (
            "RateLimit-Policy",
            "The rate limit (IETF httpapi draft 11), when one applied.",
        ),
        (
            "RateLimit",
            "What is left of it (IETF httpapi draft 11), when one applied.",
        ),
    ];
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        let several = ops.keys().filter(|m| METHODS.contains(&m.as_str())).count() > 1;
        for (method, op) in ops.iter_mut() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            by_caller(path, op);
            let self_service = has_tag(op, &[TAG_SELF_SERVICE]);
            if several {
                // `method(...)` gives every method one operation id; ids must be unique.
                if let Some(id) = op["operationId"].as_str().map(str::to_string) {
                    if !id.ends_with(&format!("_{method}")) {
                        op["operationId"] = json!(format!("{id}_{method}"));
                    }
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                // Shared error responses carry their own headers.
                if response.get("$ref").is_some() {
                    continue;
                }
                let headers = response
                    .as_object_mut()
                    .map(|r| r.entry("headers").or_insert_with(|| json!({})));
                let Some(Value::Object(headers)) = headers else {
                    continue;
                };
                headers
                    .entry("X-Request-Id")
                    .or_insert_with(|| request_id.clone());
                if self_service && status.starts_with('2') {
                    for (name, description) in rate_headers {
                        headers.entry(name).or_insert_with(
                            || json!({"description": description, "schema": {"type": "string"}}),
                        );
                    }
                }
            }
        }
    }

    // `/v1/forward-auth/<original path>` (Envoy's `path_prefix`) is the same endpoint, and
    // so is `/v1/forward-auth/`, which Envoy asks for the original path `/`.
    let base = forward_auth::FORWARD_AUTH_PATH;
    // The path item at `base`, each operation's id ending in `suffix`.
    let renamed = |suffix: &str| {
        let mut item = paths.get(base).cloned()?;
        let ops = item.as_object_mut()?;
        for (method, op) in ops.iter_mut() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            if let Some(id) = op["operationId"].as_str().map(str::to_string) {
                op["operationId"] = json!(format!("{id}{suffix}"));
            }
        }
        Some(item)
    };
    let at_root = renamed("_at_root");
    let with_path = renamed("_with_path");
    if let Some(root) = at_root {
        paths.insert(format!("{base}/"), root);
    }
    if let Some(mut item) = with_path {
        if let Some(ops) = item.as_object_mut() {
            for (method, op) in ops.iter_mut() {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let params = op
                    .as_object_mut()
                    .map(|o| o.entry("parameters").or_insert_with(|| json!([])));
                if let Some(Value::Array(params)) = params {
                    params.push(json!({
                        "name": "original",
                        "in": "path",
                        "required": true,
                        "description": "The original request's path and query (may contain `/`), \
                                        read with `forward_auth.convention = \"envoy\"` only.",
                        "schema": {"type": "string"},
                    }));
                }
            }
        }
        paths.insert(format!("{base}/{{original}}"), item);
    }
}

/// The self-service security schemes for the configured key sources, in order: the first
/// is `api_key`, then `api_key_bearer`, `api_key_header`, `api_key_query` (numbered when a
/// kind repeats).
pub fn self_service_schemes(sources: &[KeySource]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut used = BTreeSet::new();
    for (i, source) in sources.iter().enumerate() {
        let (kind, scheme) = match source {
            KeySource::Bearer => (
                "bearer",
                json!({"type": "http", "scheme": "bearer",
                       "description": "One of the account's secret keys: `Authorization: Bearer <key>`."}),
            ),
            KeySource::Header(name) => (
                "header",
                json!({"type": "apiKey", "in": "header", "name": display_header(name),
                       "description": "One of the account's secret keys, in this header."}),
            ),
            KeySource::Query(name) => (
                "query",
                json!({"type": "apiKey", "in": "query", "name": name,
                       "description": "One of the account's secret keys, in this query parameter (discouraged: it ends up in access logs)."}),
            ),
        };
        let base = if i == 0 {
            "api_key".to_string()
        } else {
            format!("api_key_{kind}")
        };
        let mut name = base.clone();
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        out.push((name, scheme));
    }
    out
}

/// `x-api-key` → `X-API-Key`: header names are case-insensitive; this is how people write it.
fn display_header(name: &str) -> String {
    name.split('-')
        .map(|part| match part {
            "api" | "id" | "ip" => part.to_ascii_uppercase(),
            _ => {
                let mut c = part.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// An operation's security with the documented `api_key` alternatives replaced by the
/// configured sources, keeping the scopes they list.
fn self_service_security(current: &Value, schemes: &[(String, Value)]) -> Value {
    let scopes = current
        .as_array()
        .and_then(|alts| alts.iter().find_map(|a| a.get("api_key").cloned()))
        .unwrap_or_else(|| json!([]));
    Value::Array(
        schemes
            .iter()
            .map(|(name, _)| json!({ name.clone(): scopes.clone() }))
            .collect(),
    )
}

/// The request fields naming a plan: the configured plans are their values.
const PLAN_FIELDS: [(&str, &str); 3] = [
    ("CreateAccount", "plan"),
    ("PatchAccount", "plan"),
    ("PlanPatch", "plan"),
];

/// Lists the configured plans as the values of every field that names one.
fn apply_plans(doc: &mut Value, settings: &Settings) {
    for (schema, field) in PLAN_FIELDS {
        let Some(prop) = doc["components"]["schemas"][schema]["properties"]
            .get_mut(field)
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let nullable = prop["type"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("null")));
        let mut values: Vec<Value> = settings.plans.keys().map(|p| json!(p)).collect();
        if nullable {
            values.push(Value::Null);
        }
        prop.insert("enum".into(), Value::Array(values));
    }
}

/// Keeps, in every error response, only the body of the configured style.
fn apply_error_style(doc: &mut Value, style: ErrorStyle) {
    let (media, schema) = match style {
        ErrorStyle::Envelope => ("application/json", "ErrorEnvelope"),
        ErrorStyle::Problem => ("application/problem+json", "ProblemDetails"),
        ErrorStyle::Detail => ("application/json", "DetailError"),
    };
    let body = json!({ media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}} });
    let error_body = "#/components/schemas/ErrorBody";
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                let is_error = m
                    .get("content")
                    .and_then(|c| c.get("application/json"))
                    .and_then(|j| j["schema"]["$ref"].as_str())
                    == Some(error_body);
                if is_error {
                    m.insert("content".into(), body.clone());
                }
                stack.extend(m.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
}

/// Drops component schemas and responses nothing in the document refers to.
fn prune_components(doc: &mut Value) {
    let mut reachable: BTreeSet<String> = BTreeSet::new();
    let mut pending: Vec<Value> = vec![doc["paths"].clone()];
    while let Some(v) = pending.pop() {
        for r in refs(&v) {
            if reachable.insert(r.clone()) {
                if let Some(target) = resolve(doc, &r) {
                    pending.push(target.clone());
                }
            }
        }
    }
    for section in ["schemas", "responses"] {
        if let Some(m) = doc["components"]
            .get_mut(section)
            .and_then(Value::as_object_mut)
        {
            m.retain(|name, _| reachable.contains(&format!("#/components/{section}/{name}")));
        }
    }
}

/// Every `$ref` inside a value.
pub fn refs(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
    out
}

/// What a local `$ref` (`#/components/...`) points to.
pub fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}
