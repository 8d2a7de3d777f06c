//! `/openapi.json` on both listeners: served without a credential, valid OpenAPI 3.x,
//! documenting every registered route with its method, request body, responses, errors and
//! security, following the configuration. The response bodies are the handlers' own types
//! (`src/views.rs`), so what they send is what is described; these tests check each
//! listener's cut of the document and how it follows the configuration.

mod common;

use common::{spawn_app, spawn_app_with, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every route of the public listener, as documented (default base path `/v1`).
const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/v1/account"),
    ("patch", "/v1/account"),
    ("patch", "/v1/account/plan"),
    ("get", "/v1/account/usage"),
    ("delete", "/v1/account/data"),
    ("post", "/v1/api-keys"),
    ("get", "/v1/api-keys"),
    ("get", "/v1/api-keys/{id}"),
    ("delete", "/v1/api-keys/{id}"),
    ("post", "/v1/api-keys/{id}/rotate"),
    ("get", "/v1/api-keys/{id}/activity"),
    ("get", "/v1/events"),
    ("get", "/v1/analytics"),
    ("post", "/v1/grants"),
    ("get", "/v1/grants"),
    ("get", "/v1/grants/{id}"),
    ("delete", "/v1/grants/{id}"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("get", "/v1/webhooks/{id}"),
    ("patch", "/v1/webhooks/{id}"),
    ("delete", "/v1/webhooks/{id}"),
    ("post", "/v1/webhooks/{id}/rotate-secret"),
    ("get", "/v1/webhooks/{id}/deliveries"),
    (
        "post",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    ),
    ("post", "/v1/webhooks/{id}/test"),
    ("post", "/v1/secret-scanning/github"),
    ("get", "/v1/revocable_token_types"),
    ("post", "/v1/revoke_tokens"),
];

/// Every route of the admin listener but forward-auth (which answers every method).
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
    ("post", "/v1/verify"),
    ("post", "/v1/admin/accounts"),
    ("get", "/v1/admin/accounts"),
    ("get", "/v1/admin/accounts/{id}"),
    ("patch", "/v1/admin/accounts/{id}"),
    ("delete", "/v1/admin/accounts/{id}"),
    ("post", "/v1/admin/accounts/{id}/approve"),
    ("post", "/v1/admin/accounts/{id}/keys"),
    ("get", "/v1/admin/accounts/{id}/keys"),
    ("post", "/v1/admin/accounts/{id}/usage"),
    ("post", "/v1/admin/accounts/{id}/portal-sessions"),
    ("post", "/v1/admin/keys/import"),
    ("get", "/v1/admin/keys/{id}"),
    ("patch", "/v1/admin/keys/{id}"),
    ("post", "/v1/admin/keys/{id}/rotate"),
    ("post", "/v1/admin/keys/{id}/revoke"),
    ("get", "/v1/admin/keys/{id}/activity"),
    ("post", "/v1/admin/keys/{id}/reveal"),
    ("get", "/v1/admin/events"),
    ("get", "/v1/admin/analytics"),
    ("post", "/v1/admin/leaks"),
    ("post", "/v1/admin/applications"),
    ("get", "/v1/admin/applications"),
    ("get", "/v1/admin/applications/{id}"),
    ("patch", "/v1/admin/applications/{id}"),
    (
        "post",
        "/v1/admin/applications/{id}/secrets/{environment}/rotate",
    ),
    ("post", "/v1/admin/accounts/{id}/grants"),
    ("get", "/v1/admin/accounts/{id}/grants"),
    ("get", "/v1/admin/grants/{id}"),
    ("delete", "/v1/admin/grants/{id}"),
    ("post", "/v1/admin/webhooks"),
    ("get", "/v1/admin/webhooks"),
    ("get", "/v1/admin/webhooks/{id}"),
    ("patch", "/v1/admin/webhooks/{id}"),
    ("delete", "/v1/admin/webhooks/{id}"),
    ("post", "/v1/admin/webhooks/{id}/rotate-secret"),
    ("get", "/v1/admin/webhooks/{id}/deliveries"),
    (
        "post",
        "/v1/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    ),
    ("post", "/v1/admin/webhooks/{id}/test"),
];

/// Forward-auth's paths; each answers every method.
const FORWARD_AUTH_PATHS: &[&str] = &[
    "/v1/forward-auth",
    "/v1/forward-auth/",
    "/v1/forward-auth/{original}",
];

/// The request body each body-taking operation documents.
const REQUEST_BODIES: &[(&str, &str, &str)] = &[
    ("patch", "/v1/account", "AccountPatch"),
    ("patch", "/v1/account/plan", "PlanPatch"),
    ("post", "/v1/api-keys", "CreateKeyBody"),
    ("post", "/v1/api-keys/{id}/rotate", "RotateBody"),
    ("post", "/v1/grants", "CreateGrantBody"),
    ("post", "/v1/webhooks", "CreateOwnWebhook"),
    ("patch", "/v1/webhooks/{id}", "PatchWebhook"),
    ("post", "/v1/admin/webhooks", "CreateWebhook"),
    ("patch", "/v1/admin/webhooks/{id}", "PatchWebhook"),
    ("post", "/v1/admin/accounts", "CreateAccount"),
    ("patch", "/v1/admin/accounts/{id}", "PatchAccount"),
    ("post", "/v1/admin/accounts/{id}/keys", "CreateKey"),
    ("post", "/v1/admin/accounts/{id}/usage", "ReportUsage"),
    (
        "post",
        "/v1/admin/accounts/{id}/portal-sessions",
        "CreatePortalSession",
    ),
    ("post", "/v1/admin/keys/import", "ImportKey"),
    ("patch", "/v1/admin/keys/{id}", "PatchKey"),
    ("post", "/v1/admin/keys/{id}/rotate", "RotateBody"),
    ("post", "/v1/admin/keys/{id}/revoke", "RevokeBody"),
    ("post", "/v1/admin/applications", "CreateApplication"),
    ("patch", "/v1/admin/applications/{id}", "PatchApplication"),
    ("post", "/v1/admin/accounts/{id}/grants", "AdminCreateGrant"),
    ("post", "/v1/verify", "VerifyBody"),
    ("post", "/v1/admin/leaks", "LeakReport"),
    // Arrays of the named object: the reporters' own formats.
    ("post", "/v1/secret-scanning/github", "GithubMatch"),
    ("post", "/v1/revoke_tokens", "GitlabRevocation"),
];

/// The operations whose success answer shows a secret once.
const SHOWS_SECRET: &[(&str, &str)] = &[
    ("post", "/v1/api-keys"),
    ("post", "/v1/api-keys/{id}/rotate"),
    ("post", "/v1/grants"),
    ("post", "/v1/webhooks"),
    ("post", "/v1/webhooks/{id}/rotate-secret"),
    ("post", "/v1/admin/webhooks"),
    ("post", "/v1/admin/webhooks/{id}/rotate-secret"),
    ("post", "/v1/admin/accounts"),
    ("patch", "/v1/admin/accounts/{id}"),
    ("post", "/v1/admin/accounts/{id}/approve"),
    ("post", "/v1/admin/accounts/{id}/keys"),
    ("post", "/v1/admin/keys/{id}/rotate"),
    ("post", "/v1/admin/keys/{id}/reveal"),
    ("post", "/v1/admin/accounts/{id}/grants"),
    ("post", "/v1/admin/applications"),
    (
        "post",
        "/v1/admin/applications/{id}/secrets/{environment}/rotate",
    ),
];

// ---------------------------------------------------------------------------------------
// Helpers.

async fn fetch_doc(base: &str) -> Value {
    let res = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(res.status(), 200, "GET {base}/openapi.json");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let text = res.text().await.unwrap();
    serde_json::from_str(&text).expect("the document is JSON")
}

async fn docs(app: &TestApp) -> (Value, Value) {
    (fetch_doc(&app.public).await, fetch_doc(&app.admin).await)
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

fn expected(routes: &[(&str, &str)], any_paths: &[&str]) -> BTreeSet<(String, String)> {
    let mut out: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    for p in any_paths {
        for m in METHODS {
            out.insert((m.to_string(), p.to_string()));
        }
    }
    out
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_string(), path.clone(), op));
            }
        }
    }
    out
}

fn resolve<'a>(doc: &'a Value, r: &str) -> &'a Value {
    doc.pointer(r.strip_prefix('#').unwrap_or(r))
        .unwrap_or_else(|| panic!("$ref {r} does not resolve"))
}

fn all_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| all_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

/// Every property name reachable from a schema, following `$ref`s.
fn property_names(
    doc: &Value,
    schema: &Value,
    seen: &mut BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    match schema {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                if seen.insert(r.clone()) {
                    property_names(doc, resolve(doc, r), seen, out);
                }
            }
            if let Some(Value::Object(props)) = m.get("properties") {
                out.extend(props.keys().cloned());
            }
            m.values().for_each(|v| property_names(doc, v, seen, out));
        }
        Value::Array(a) => a.iter().for_each(|v| property_names(doc, v, seen, out)),
        _ => {}
    }
}

/// A response object, resolved when it is a `$ref`.
fn response<'a>(doc: &'a Value, r: &'a Value) -> &'a Value {
    match r.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve(doc, reference),
        None => r,
    }
}

/// Checks `value` against a schema of the document: required properties present, no
/// undocumented property, types and enums respected, recursively. Returns the mismatches.
fn mismatches(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r),
        None => schema,
    };
    if let Some(Value::Array(options)) = schema.get("oneOf") {
        if options
            .iter()
            .any(|o| mismatches(doc, o, value, at).is_empty())
        {
            return errs;
        }
        errs.push(format!("{at}: {value} matches no option of {schema}"));
        return errs;
    }
    if let Some(Value::Array(parts)) = schema.get("allOf") {
        // Merge the parts into one object schema.
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        for p in parts {
            let p = match p.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(doc, r),
                None => p,
            };
            if let Some(Value::Object(ps)) = p.get("properties") {
                props.extend(ps.clone());
            }
            if let Some(Value::Array(rs)) = p.get("required") {
                required.extend(rs.iter().cloned());
            }
        }
        let merged = json!({"type": "object", "properties": props, "required": required});
        return mismatches(doc, &merged, value, at);
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.is_empty() {
        return errs; // any value
    }
    let fits = |t: &str| match t {
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => false,
    };
    if !types.iter().any(|t| fits(t)) {
        errs.push(format!("{at}: {value} is not of type {types:?}"));
        return errs;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !value.is_null() && !allowed.contains(value) {
            errs.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    match value {
        Value::Object(obj) => {
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: required `{r}` is missing"));
                }
            }
            let extra = schema.get("additionalProperties");
            for (k, v) in obj {
                match props.get(k) {
                    Some(p) => errs.extend(mismatches(doc, p, v, &format!("{at}.{k}"))),
                    None => match extra {
                        Some(Value::Bool(false)) | None if !props.is_empty() => {
                            errs.push(format!("{at}: `{k}` is not documented"))
                        }
                        Some(s @ Value::Object(_)) => {
                            errs.extend(mismatches(doc, s, v, &format!("{at}.{k}")))
                        }
                        _ => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    errs.extend(mismatches(doc, item_schema, v, &format!("{at}[{i}]")));
                }
            }
        }
        _ => {}
    }
    errs
}

/// Asserts that a live answer matches what the document says the operation answers.
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let r = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path} does not document {status}"));
    let r = response(doc, r);
    let schema = &r["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} has no JSON schema: {r}"
    );
    let errs = mismatches(doc, schema, body, "body");
    assert!(
        errs.is_empty(),
        "{method} {path} {status} differs from its documentation:\n{}\nbody: {body:#}",
        errs.join("\n")
    );
}

/// The routes registered in the router source (`routes/mod.rs`, and the functions of
/// `routes/apps.rs` it merges), as (listener, method, OpenAPI path). The routes of
/// `fn open_routes` count for each listener that calls it.
fn registered_routes() -> BTreeSet<(&'static str, String, String)> {
    let source = include_str!("../src/routes/mod.rs");
    let open_at = source.find("fn open_routes").expect("fn open_routes");
    let open_len = source[open_at..].find("\n}\n").expect("end of open_routes");
    let open_src = &source[open_at..open_at + open_len];
    let mod_rs = &source.replace(open_src, "");
    let apps_rs: &[(&str, &str)] = &[
        ("apps::", include_str!("../src/routes/apps.rs")),
        ("webhooks::", include_str!("../src/routes/webhooks.rs")),
    ];
    let public_at = mod_rs.find("pub fn public_router").expect("public_router");
    let admin_at = mod_rs.find("pub fn admin_router").expect("admin_router");
    let (public_src, admin_src) = if public_at < admin_at {
        (&mod_rs[public_at..admin_at], &mod_rs[admin_at..])
    } else {
        (&mod_rs[public_at..], &mod_rs[admin_at..public_at])
    };
    let mut out = BTreeSet::new();
    // The public self-service routes are built from `let mut api` (each group that is
    // served) up to `let serves_any`, and nested under the base path.
    let api_start = public_src.find("let mut api").expect("let mut api");
    let api_len = public_src[api_start..]
        .find("let serves_any")
        .expect("end of api");
    let (nested, rest) = (
        &public_src[api_start..api_start + api_len],
        [&public_src[..api_start], &public_src[api_start + api_len..]].concat(),
    );
    for (m, p) in routes_in(nested, apps_rs) {
        out.insert(("public", m, format!("/v1{p}")));
    }
    for (m, p) in routes_in(&rest, apps_rs) {
        out.insert(("public", m, p));
    }
    for (m, p) in routes_in(admin_src, apps_rs) {
        out.insert(("admin", m, p));
    }
    for (listener, src) in [("public", &rest[..]), ("admin", admin_src)] {
        if src.contains("open_routes(") {
            for (m, p) in routes_in(open_src, apps_rs) {
                out.insert((listener, m, p));
            }
        }
    }
    out
}

/// `.route("path", method(handler)...)` calls in `src`, following `.merge(apps::f())` and
/// `.merge(webhooks::f())` into `modules` (each module's prefix and text).
fn routes_in(src: &str, modules: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(") {
        let args = balanced(&rest[i + ".route(".len()..]);
        let path = args
            .split('"')
            .nth(1)
            .expect("route path")
            .replace("{*", "{");
        let mut router = &args[args.find(',').expect("method router")..];
        // A method router named beforehand: `let name = get(..)...;`.
        let named = router.trim_matches(|c: char| c == ',' || c.is_whitespace());
        if !named.is_empty() && named.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            let at = src
                .find(&format!("let {named} = "))
                .unwrap_or_else(|| panic!("no `let {named} =` before its route"));
            router = &src[at..at + src[at..].find(';').expect("end of let")];
        }
        for m in methods_in(router) {
            out.push((m, path.clone()));
        }
        rest = &rest[i + ".route(".len() + args.len()..];
    }
    let mut rest = src;
    while let Some(i) = rest.find(".merge(") {
        let after = &rest[i + ".merge(".len()..];
        rest = after;
        let Some((after, module)) = modules
            .iter()
            .find_map(|(prefix, text)| after.strip_prefix(prefix).map(|a| (a, *text)))
        else {
            continue;
        };
        let name = &after[..after.find('(').unwrap()];
        let f = module
            .find(&format!("pub fn {name}("))
            .unwrap_or_else(|| panic!("{name} not found"));
        let body_start = f + module[f..].find('{').unwrap();
        let body = balanced_braces(&module[body_start..]);
        out.extend(routes_in(body, modules));
        rest = after;
    }
    out
}

/// The text up to the `)` closing an opening already consumed.
fn balanced(s: &str) -> &str {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses")
}

/// The text of a `{ … }` block starting at `s`.
fn balanced_braces(s: &str) -> &str {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..=i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces")
}

/// The HTTP methods a method-router expression routes (`get(..).patch(..)`, `any(..)`).
fn methods_in(router: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = router.as_bytes();
    for name in METHODS.iter().copied().chain(["any"]) {
        let mut from = 0;
        while let Some(j) = router[from..].find(&format!("{name}(")) {
            let at = from + j;
            let before = at.checked_sub(1).map(|k| bytes[k] as char);
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                if name == "any" {
                    out.extend(METHODS.iter().map(|m| m.to_string()));
                } else {
                    out.push(name.to_string());
                }
            }
            from = at + name.len();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn both_listeners_serve_an_openapi_3_document_without_a_credential() {
    let app = spawn_app().await;
    for base in [&app.public, &app.admin] {
        // No Authorization header at all, on the admin listener too.
        let res = app
            .client
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{base}");
        assert!(res.headers().contains_key("x-request-id"));
        let doc: Value = res.json().await.unwrap();
        let version = doc["openapi"].as_str().expect("openapi version");
        assert!(version.starts_with("3."), "openapi = {version}");
        assert_eq!(doc["info"]["title"], "Keywarden");
        assert!(doc["info"]["version"].is_string());
        assert!(!doc["paths"].as_object().unwrap().is_empty());
        // A wrong root key does not matter either.
        let res = app
            .client
            .get(format!("{base}/openapi.json"))
            .bearer_auth("not-a-root-key-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let (public, admin) = docs(&app).await;
    assert_eq!(public["info"]["x-keywarden-listener"], "public");
    assert_eq!(admin["info"]["x-keywarden-listener"], "admin");
    app.stop().await;
}

#[tokio::test]
async fn every_registered_route_is_documented_with_its_method() {
    // The expected lists above are the routes the routers register.
    let registered = registered_routes();
    assert!(registered.len() > 40, "the route scan found {registered:?}");
    let listed: BTreeSet<(&str, String, String)> = expected(PUBLIC_ROUTES, &[])
        .into_iter()
        .map(|(m, p)| ("public", m, p))
        .chain(
            expected(ADMIN_ROUTES, FORWARD_AUTH_PATHS)
                .into_iter()
                .map(|(m, p)| ("admin", m, p)),
        )
        .collect();
    let missing: Vec<_> = registered.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&registered).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "routes/mod.rs and this test disagree (document a new route, then list it here):\n\
         registered but not listed: {missing:?}\nlisted but not registered: {gone:?}"
    );

    // Each listener documents exactly its own routes.
    let app = spawn_app().await;
    let (public, admin) = docs(&app).await;
    for (name, doc, want) in [
        ("public", &public, expected(PUBLIC_ROUTES, &[])),
        ("admin", &admin, expected(ADMIN_ROUTES, FORWARD_AUTH_PATHS)),
    ] {
        let have = documented(doc);
        let undocumented: Vec<_> = want.difference(&have).collect();
        let extra: Vec<_> = have.difference(&want).collect();
        assert!(
            undocumented.is_empty(),
            "{name}: routes without documentation: {undocumented:?}"
        );
        assert!(
            extra.is_empty(),
            "{name}: documented but not served here: {extra:?}"
        );
        // Operation ids are unique; every operation has a tag, a summary and a success.
        let mut ids = BTreeSet::new();
        for (m, p, op) in operations(doc) {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(
                !id.is_empty() && ids.insert(id.clone()),
                "{m} {p}: operationId {id:?}"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{m} {p}"
            );
            assert!(op["summary"].is_string(), "{m} {p} has no summary");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{m} {p} documents no success"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn documented_routes_are_served_and_admin_ones_guarded() {
    // Without a credential every documented route is either open or refuses the caller; none
    // falls through to the not-found or method-not-allowed answers. The lockout is off: the
    // walk makes more keyless calls from one IP than it allows.
    let app = spawn_app_with(
        r#"
[auth]
lockout = { max_failures = 0, window_seconds = 60, lock_seconds = 60 }
"#,
    )
    .await;
    let (public, admin) = docs(&app).await;
    for (base, doc) in [(&app.public, &public), (&app.admin, &admin)] {
        for (m, p, _) in operations(doc) {
            if m == "head" || m == "options" || m == "trace" {
                continue;
            }
            let url = format!(
                "{base}{}",
                p.replace("{environment}", "sandbox")
                    .replace("{original}", "x")
                    .replace('{', "x_")
                    .replace('}', "")
            );
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let res = app.client.request(method, &url).send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or_default();
            assert!(status != 404 && status != 405, "{m} {p}: {status} {body}");
            let open = doc["paths"][&p][&m]["security"] == json!([{}]);
            if open {
                assert_eq!(status, 200, "{m} {p}: {body}");
            } else if p.starts_with("/v1/admin/") || p == "/v1/verify" {
                assert_eq!((status, code), (401, "root_key_required"), "{m} {p}");
            } else if p.starts_with("/v1/forward-auth") {
                // Without the proxy's description of the original request nothing is decided.
                assert_eq!((status, code), (400, "invalid_request"), "{m} {p}");
            } else if p == "/v1/secret-scanning/github" {
                assert_eq!((status, code), (401, "invalid_signature"), "{m} {p}");
            } else if p == "/v1/revocable_token_types" || p == "/v1/revoke_tokens" {
                assert_eq!((status, code), (401, "invalid_revocation_token"), "{m} {p}");
            } else {
                assert_eq!((status, code), (401, "missing_api_key"), "{m} {p}");
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn request_bodies_and_every_reference_resolve() {
    let app = spawn_app().await;
    let (public, admin) = docs(&app).await;
    let want: BTreeMap<(String, String), &str> = REQUEST_BODIES
        .iter()
        .map(|(m, p, s)| ((m.to_string(), p.to_string()), *s))
        .collect();
    let mut seen = BTreeSet::new();
    for doc in [&public, &admin] {
        // No dangling reference anywhere.
        let mut refs = Vec::new();
        all_refs(doc, &mut refs);
        assert!(!refs.is_empty());
        for r in &refs {
            assert!(r.starts_with("#/components/"), "{r}");
            resolve(doc, r);
        }
        for (m, p, op) in operations(doc) {
            let key = (m.clone(), p.clone());
            match (op.get("requestBody"), want.get(&key)) {
                (Some(body), Some(name)) => {
                    let mut schema = &body["content"]["application/json"]["schema"];
                    if schema["type"] == "array" {
                        schema = &schema["items"];
                    }
                    let r = schema["$ref"].as_str().unwrap_or_else(|| {
                        panic!("{m} {p}: request body is not a component: {body}")
                    });
                    assert_eq!(r, format!("#/components/schemas/{name}"), "{m} {p}");
                    let target = resolve(doc, r);
                    assert_eq!(target["type"], "object", "{name}");
                    assert!(
                        target["properties"]
                            .as_object()
                            .is_some_and(|p| !p.is_empty()),
                        "{name} documents no field"
                    );
                    seen.insert(key);
                }
                (None, None) => {}
                (Some(b), None) => panic!("{m} {p} documents an unexpected body {b}"),
                (None, Some(name)) => panic!("{m} {p} does not document its body {name}"),
            }
        }
    }
    assert_eq!(
        seen.len(),
        want.len(),
        "bodies not found: {want:?} vs {seen:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn error_responses_use_the_documented_error_shapes() {
    let app = spawn_app().await;
    let (public, admin) = docs(&app).await;
    for doc in [&public, &admin] {
        let schemas = &doc["components"]["schemas"];
        let envelope = &schemas["ErrorEnvelope"];
        assert_eq!(envelope["type"], "object");
        assert_eq!(envelope["required"], json!(["error"]));
        let inner = resolve(
            doc,
            envelope["properties"]["error"]["$ref"].as_str().unwrap(),
        );
        for field in ["type", "code", "message", "request_id"] {
            assert!(
                inner["required"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(field)),
                "ErrorObject.{field}"
            );
        }
        assert!(inner["properties"]["doc_url"].is_object());
        let types = resolve(doc, inner["properties"]["type"]["$ref"].as_str().unwrap());
        assert_eq!(
            types["enum"],
            json!([
                "authentication_error",
                "authorization_error",
                "rate_limit_error",
                "invalid_request_error",
                "not_found_error",
                "api_error"
            ])
        );
        for (m, p, op) in operations(doc) {
            let responses = op["responses"].as_object().unwrap();
            let secured = op["security"] != json!([{}]);
            let forward_auth = p.starts_with("/v1/forward-auth");
            if secured && !forward_auth {
                assert!(responses.contains_key("401"), "{m} {p} documents no 401");
            }
            if op.get("requestBody").is_some() {
                for s in ["400", "413"] {
                    assert!(responses.contains_key(s), "{m} {p} documents no {s}");
                }
            }
            if p.contains("{id}") {
                assert!(responses.contains_key("404"), "{m} {p} documents no 404");
            }
            if m != "head" && op["tags"][0] == "self-service" {
                assert!(responses.contains_key("429"), "{m} {p} documents no 429");
                assert!(responses.contains_key("403"), "{m} {p} documents no 403");
            }
            for (status, r) in responses {
                let r = response(doc, r);
                assert!(r["headers"]["X-Request-Id"].is_object(), "{m} {p} {status}");
                if status.starts_with('2') {
                    continue;
                }
                // The default style: the envelope, as application/json.
                let content = r["content"].as_object().unwrap();
                assert_eq!(content.len(), 1, "{m} {p} {status}: {content:?}");
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorEnvelope",
                    "{m} {p} {status}"
                );
                if status == "429" {
                    assert!(r["headers"]["Retry-After"].is_object(), "{m} {p}");
                }
                if status == "401" {
                    assert!(r["headers"]["WWW-Authenticate"].is_object(), "{m} {p}");
                }
            }
        }
    }
    // The live error matches the schema.
    let res = app
        .client
        .get(format!("{}/v1/account", app.public))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_documented(&public, "get", "/v1/account", 401, &body);
    let res = app
        .client
        .get(format!("{}/v1/admin/accounts", app.admin))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_documented(&admin, "get", "/v1/admin/accounts", 401, &body);
    app.stop().await;
}

#[tokio::test]
async fn responses_never_document_a_stored_hash_and_secrets_only_where_shown_once() {
    let app = spawn_app().await;
    let (public, admin) = docs(&app).await;
    let forbidden = [
        "hash",
        "secret_hash",
        "lookup",
        "pepper",
        "recoverable",
        "previous",
    ];
    let shows_secret: BTreeSet<(String, String)> = SHOWS_SECRET
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let mut found_secret = BTreeSet::new();
    for doc in [&public, &admin] {
        for (m, p, op) in operations(doc) {
            for (status, r) in op["responses"].as_object().unwrap() {
                let r = response(doc, r);
                let mut names = BTreeSet::new();
                property_names(doc, &r["content"], &mut BTreeSet::new(), &mut names);
                for n in &names {
                    // `token_hash` is a reported token's public fingerprint (GitHub's name
                    // for it), like `key_hash`; neither is a stored hash.
                    assert!(
                        !n.contains("hash") || n == "key_hash" || n == "token_hash",
                        "{m} {p} {status} documents `{n}`"
                    );
                    assert!(
                        !forbidden.contains(&n.as_str()),
                        "{m} {p} {status} documents `{n}`"
                    );
                }
                let secret = ["api_key", "secret", "secrets"]
                    .iter()
                    .any(|s| names.contains(*s));
                if secret && status.starts_with('2') {
                    found_secret.insert((m.clone(), p.clone()));
                }
            }
        }
    }
    assert_eq!(found_secret, shows_secret);
    app.stop().await;
}

#[tokio::test]
async fn security_schemes_match_each_listener() {
    let app = spawn_app().await;
    let (public, admin) = docs(&app).await;

    let schemes = &public["components"]["securitySchemes"];
    assert_eq!(
        schemes["api_key"],
        json!({"type": "http", "scheme": "bearer",
               "description": schemes["api_key"]["description"]})
    );
    assert_eq!(schemes["api_key_header"]["type"], "apiKey");
    assert_eq!(schemes["api_key_header"]["in"], "header");
    assert_eq!(schemes["api_key_header"]["name"], "X-API-Key");
    assert!(schemes.get("root_key").is_none());

    let schemes = &admin["components"]["securitySchemes"];
    assert_eq!(schemes["root_key"]["type"], "http");
    assert_eq!(schemes["root_key"]["scheme"], "bearer");
    assert_eq!(schemes["verify_token"]["scheme"], "bearer");
    assert_eq!(
        schemes["forward_auth_token"]["name"],
        "X-Keywarden-Verify-Token"
    );
    assert!(schemes.get("api_key").is_none());

    for (m, p, op) in operations(&public).into_iter().chain(operations(&admin)) {
        let security = &op["security"];
        let tag = op["tags"][0].as_str().unwrap();
        match tag {
            "service" => assert_eq!(security, &json!([{}]), "{m} {p}"),
            // Scraped by a monitoring system on the private admin listener; no figure in it
            // names a key, an account or a secret.
            "admin" if p == "/metrics" => assert_eq!(security, &json!([{}]), "{m} {p}"),
            "admin" => assert_eq!(security, &json!([{"root_key": []}]), "{m} {p}"),
            "self-service" => {
                let alts = security.as_array().unwrap();
                assert_eq!(alts.len(), 2, "{m} {p}");
                assert!(alts[0]["api_key"].is_array(), "{m} {p}");
                assert_eq!(alts[0]["api_key"], alts[1]["api_key_header"], "{m} {p}");
            }
            "secret-scanning" if p == "/v1/secret-scanning/github" => {
                assert_eq!(security, &json!([{"github_signature": []}]), "{m} {p}")
            }
            "secret-scanning" => assert_eq!(security, &json!([{"gitlab_token": []}]), "{m} {p}"),
            "verify" if p == "/v1/verify" => assert_eq!(
                security,
                &json!([{"root_key": []}, {"verify_token": []}]),
                "{m} {p}"
            ),
            "verify" => assert_eq!(
                security,
                &json!([{}, {"forward_auth_token": []}]),
                "{m} {p}"
            ),
            other => panic!("{m} {p}: unknown tag {other}"),
        }
    }
    // The scope each self-service operation needs is listed with its scheme.
    assert_eq!(
        public["paths"]["/v1/api-keys"]["post"]["security"][0]["api_key"],
        json!(["api_keys:write"])
    );
    app.stop().await;
}

#[tokio::test]
async fn the_served_document_follows_the_configuration() {
    let app = spawn_app_with(
        r#"
[server]
base_path = "/api/v2"

[auth]
sources = ["header:X-Custom-Key", "bearer"]

[errors]
style = "problem"
"#,
    )
    .await;
    let (public, admin) = docs(&app).await;
    let paths: Vec<&String> = public["paths"].as_object().unwrap().keys().collect();
    assert!(
        public["paths"]["/api/v2/account"]["get"].is_object(),
        "{paths:?}"
    );
    assert!(public["paths"]["/api/v2/api-keys/{id}/rotate"]["post"].is_object());
    // The reporters' endpoints keep the paths GitHub and GitLab are registered with.
    let reporters = [
        "/v1/secret-scanning/github",
        "/v1/revocable_token_types",
        "/v1/revoke_tokens",
    ];
    assert!(
        paths.iter().all(|p| p.starts_with("/api/v2/")
            || !p.starts_with("/v1")
            || reporters.contains(&p.as_str())),
        "{paths:?}"
    );
    // The documented path is the served one.
    let res = app
        .client
        .get(format!("{}/api/v2/account", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let schemes = &public["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["name"], "X-Custom-Key");
    assert_eq!(schemes["api_key_bearer"]["scheme"], "bearer");
    assert!(schemes.get("api_key_header").is_none());
    assert_eq!(
        public["paths"]["/api/v2/account"]["get"]["security"],
        json!([{"api_key": ["account:read"]}, {"api_key_bearer": ["account:read"]}])
    );

    // Errors are documented in the configured style only.
    for doc in [&public, &admin] {
        for (m, p, op) in operations(doc) {
            for (status, r) in op["responses"].as_object().unwrap() {
                if status.starts_with('2') {
                    continue;
                }
                let r = response(doc, r);
                assert_eq!(
                    r["content"],
                    json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}),
                    "{m} {p} {status}"
                );
            }
        }
        assert!(doc["components"]["schemas"]["ProblemDetails"].is_object());
    }
    let res = app
        .client
        .get(format!("{}/api/v2/account", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = res.json().await.unwrap();
    let schema = json!({"$ref": "#/components/schemas/ProblemDetails"});
    let errs = mismatches(&public, &schema, &body, "body");
    assert!(errs.is_empty(), "{errs:?}");
    app.stop().await;
}

/// The values an enum schema allows, through `$ref`s and a nullable `oneOf`.
fn enum_values(doc: &Value, schema: &Value) -> Option<Vec<String>> {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r),
        None => schema,
    };
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        );
    }
    schema
        .get("oneOf")
        .and_then(Value::as_array)?
        .iter()
        .find_map(|o| enum_values(doc, o))
}

/// A request body's properties, by name.
fn body_properties<'a>(
    doc: &'a Value,
    op: &'a Value,
) -> Option<&'a serde_json::Map<String, Value>> {
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r),
        None => schema,
    };
    schema["properties"].as_object()
}

#[tokio::test]
async fn parameters_are_where_the_handlers_read_them() {
    let app = spawn_app().await;
    let (public, admin) = docs(&app).await;
    let mut query_params = BTreeSet::new();
    for doc in [&public, &admin] {
        for (m, p, op) in operations(doc) {
            let in_path: BTreeSet<String> = p
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_string)
                .collect();
            let mut declared = BTreeSet::new();
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap().to_string();
                match param["in"].as_str().unwrap() {
                    "path" => {
                        assert!(
                            in_path.contains(&name),
                            "{m} {p}: `{name}` is not in the path"
                        );
                        assert_eq!(param["required"], json!(true), "{m} {p} {name}");
                        declared.insert(name);
                    }
                    "query" => {
                        assert_ne!(param["required"], json!(true), "{m} {p} {name}");
                        let types = &param["schema"]["type"];
                        assert!(
                            !types.as_array().is_some_and(|t| t.contains(&json!("null"))),
                            "{m} {p}: query parameter {name} cannot be null"
                        );
                        query_params.insert(name);
                    }
                    // Headers are read by the handler that names them (GitHub's signature).
                    "header" => {}
                    other => panic!("{m} {p} {name}: unexpected `in: {other}`"),
                }
            }
            assert_eq!(declared, in_path, "{m} {p}: path parameters");
        }
    }
    for name in [
        "limit",
        "starting_after",
        "mode",
        "account_id",
        "type",
        "since",
    ] {
        assert!(
            query_params.contains(name),
            "query parameter {name} is documented"
        );
    }
    let limit = admin["paths"]["/v1/admin/accounts"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(
        (
            limit["schema"]["minimum"].clone(),
            limit["schema"]["maximum"].clone()
        ),
        (json!(1), json!(100))
    );

    // The documented query parameters are served as query parameters.
    let acc = app.account("Acme").await;
    for path in [
        "/v1/admin/accounts?limit=1&starting_after=acc_0".to_string(),
        format!("/v1/admin/accounts/{acc}/keys?mode=test&limit=2&starting_after=key_0"),
        format!("/v1/admin/events?account_id={acc}&type=key.*&since=2026-01-01T00:00:00Z&limit=3&starting_after=evt_z"),
    ] {
        let res = app.admin(Method::GET, &path, None).await;
        assert_eq!(res.status(), 200, "{path}: {}", res.text().await.unwrap());
    }
    let keys_mode = admin["paths"]["/v1/admin/accounts/{id}/keys"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mode")
        .unwrap()
        .clone();
    assert_eq!(
        enum_values(&admin, &keys_mode["schema"]),
        Some(vec!["live".into(), "test".into()])
    );
    app.stop().await;
}

#[tokio::test]
async fn request_fields_state_their_enums_and_lengths() {
    let app = spawn_app().await;
    let (public, admin) = docs(&app).await;
    let expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("status", vec!["pending", "active", "suspended"]),
        ("mode", vec!["live", "test"]),
        ("role", vec!["owner", "admin", "developer", "member"]),
        ("type", vec!["secret", "publishable"]),
    ]);
    let mut seen = BTreeSet::new();
    for doc in [&public, &admin] {
        for (m, p, op) in operations(doc) {
            let Some(props) = body_properties(doc, op) else {
                continue;
            };
            for (field, schema) in props {
                if let Some(values) = expected.get(field.as_str()) {
                    let got = enum_values(doc, schema)
                        .unwrap_or_else(|| panic!("{m} {p}: `{field}` has no enum"));
                    assert_eq!(&got, values, "{m} {p} {field}");
                    seen.insert(field.clone());
                }
                if field == "name" || field == "account_name" {
                    assert_eq!(
                        (schema["minLength"].clone(), schema["maxLength"].clone()),
                        (json!(1), json!(100)),
                        "{m} {p} {field}"
                    );
                    seen.insert(field.clone());
                }
            }
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    // Plans are the configured ones; metadata is an object.
    let schemas = &admin["components"]["schemas"];
    assert_eq!(
        schemas["CreateAccount"]["properties"]["plan"]["enum"],
        json!(["default", null])
    );
    assert_eq!(
        public["components"]["schemas"]["PlanPatch"]["properties"]["plan"]["enum"],
        json!(["default"])
    );
    for schema in ["CreateAccount", "PatchAccount", "CreateKey", "PatchKey"] {
        assert_eq!(
            schemas[schema]["properties"]["metadata"]["type"],
            json!(["object", "null"]),
            "{schema}"
        );
    }

    // Every documented value is accepted, and one outside them is refused naming the field.
    for status in &expected["status"] {
        let res = app
            .admin(
                Method::POST,
                "/v1/admin/accounts",
                Some(json!({"name": "A", "status": status})),
            )
            .await;
        assert_eq!(res.status(), 201, "status {status}");
    }
    let acc = app.account("Acme").await;
    for role in &expected["role"] {
        for kind in &expected["type"] {
            let v = app
                .key(
                    &acc,
                    json!({"mode": "test", "name": "k", "role": role, "type": kind, "scopes": []}),
                )
                .await;
            assert_eq!(v["type"].as_str(), Some(*kind));
            // A publishable key only identifies its account: it is always a member.
            let role = if *kind == "publishable" {
                "member"
            } else {
                role
            };
            assert_eq!(v["role"].as_str(), Some(role));
        }
    }
    let res = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"name": "A", "status": "closed"})),
        )
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("status"));
    let res = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(res.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn only_the_self_service_groups_served_are_documented() {
    let app = spawn_app_with("[self_service]\nendpoints = [\"account\", \"usage\"]\n").await;
    let (public, _) = docs(&app).await;
    let ops = documented(&public);
    assert!(
        ops.contains(&("get".into(), "/v1/account".into())),
        "{ops:?}"
    );
    assert!(ops.contains(&("get".into(), "/v1/account/usage".into())));
    for (m, p) in [
        ("patch", "/v1/account"),
        ("patch", "/v1/account/plan"),
        ("delete", "/v1/account/data"),
        ("get", "/v1/api-keys"),
        ("get", "/v1/events"),
        ("get", "/v1/grants"),
    ] {
        assert!(
            !ops.contains(&(m.into(), p.into())),
            "{m} {p} is documented"
        );
    }
    app.stop().await;
}

/// The properties a served answer's schema documents (the item's, for a list).
fn answer_properties(doc: &Value, method: &str, path: &str, status: &str) -> BTreeSet<String> {
    let r = response(doc, &doc["paths"][path][method]["responses"][status]);
    let mut schema = &r["content"]["application/json"]["schema"];
    if schema["type"] == "array" {
        schema = &schema["items"];
    }
    let schema = resolve(doc, schema["$ref"].as_str().expect("a named schema"));
    schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_document_shows_the_answers_as_chosen_fields_and_renames_shape_them() {
    let app = spawn_app_with(
        "[self_service]\n\
         endpoints = [\"account\", \"account_write\", \"usage\", \"erase\", \"api_keys\"]\n\
         rename = { deleted_api_keys = \"deleted_api_key\", account_name = \"name\" }\n\
         fields.account = [\"account_id\", \"account_name\", \"plan\", \"mode\"]\n\
         fields.api_key = [\"id\", \"name\", \"created_at\"]\n\
         fields.created_api_key = [\"api_key\", \"id\", \"name\"]\n",
    )
    .await;
    let (public, _) = docs(&app).await;
    let acc = app.account("Shaped").await;
    let owner = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "owner", "role": "owner" }),
        )
        .await;
    let token = owner["api_key"].as_str().unwrap();
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();

    // Each answer matches its documentation, and the documentation lists exactly the
    // fields the answer has: the chosen ones, under their new names.
    let check = |method: Method, path: &str, doc_path: &str, status: u16, body: Option<Value>| {
        let app = &app;
        let public = &public;
        let method_name = method.as_str().to_lowercase();
        let path = path.to_string();
        let doc_path = doc_path.to_string();
        async move {
            let res = app.public(method, &path, token, body).await;
            assert_eq!(res.status().as_u16(), status, "{path}");
            let body: Value = res.json().await.unwrap();
            assert_documented(public, &method_name, &doc_path, status, &body);
            let item = if body.is_array() { &body[0] } else { &body };
            let answered: BTreeSet<String> = item.as_object().unwrap().keys().cloned().collect();
            let documented =
                answer_properties(public, &method_name, &doc_path, &status.to_string());
            (answered, documented)
        }
    };
    let (answered, documented) = check(Method::GET, "/v1/account", "/v1/account", 200, None).await;
    assert_eq!(answered, set(&["account_id", "name", "plan", "mode"]));
    assert_eq!(documented, answered, "GET /v1/account");
    let (answered, documented) = check(
        Method::PATCH,
        "/v1/account",
        "/v1/account",
        200,
        Some(json!({ "account_name": "Reshaped" })),
    )
    .await;
    assert_eq!(documented, answered, "PATCH /v1/account");
    let (answered, documented) = check(
        Method::POST,
        "/v1/api-keys",
        "/v1/api-keys",
        201,
        Some(json!({ "name": "made" })),
    )
    .await;
    assert_eq!(answered, set(&["api_key", "id", "name"]));
    assert_eq!(documented, answered, "POST /v1/api-keys");
    let (answered, documented) =
        check(Method::GET, "/v1/api-keys", "/v1/api-keys", 200, None).await;
    assert_eq!(answered, set(&["id", "name", "created_at"]));
    assert_eq!(documented, answered, "GET /v1/api-keys");
    let id = owner["id"].as_str().unwrap();
    let (answered, documented) = check(
        Method::GET,
        &format!("/v1/api-keys/{id}"),
        "/v1/api-keys/{id}",
        200,
        None,
    )
    .await;
    assert_eq!(documented, answered, "GET /v1/api-keys/{{id}}");
    // A rotated key's answer is not cut: it keeps every field of a key.
    let other = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "other", "role": "member" }),
        )
        .await;
    let other = other["id"].as_str().unwrap();
    let rotated = app
        .public(
            Method::POST,
            &format!("/v1/api-keys/{other}/rotate"),
            token,
            Some(json!({})),
        )
        .await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    assert!(rotated.get("mode").is_some() && rotated.get("api_key").is_some());
    assert_documented(&public, "post", "/v1/api-keys/{id}/rotate", 200, &rotated);
    // An answer whose fields are not chosen keeps them all; a rename still applies.
    let (answered, documented) = check(
        Method::DELETE,
        "/v1/account/data",
        "/v1/account/data",
        200,
        None,
    )
    .await;
    assert!(answered.contains("deleted_api_key"), "{answered:?}");
    assert_eq!(documented, answered, "DELETE /v1/account/data");
    // Each answer whose fields are chosen has a schema of its own, named by its answers
    // alone; the schema it was cut from keeps every field for the others.
    let mut refs = Vec::new();
    all_refs(&public, &mut refs);
    for (name, answers) in [
        ("CallerAccountAnswer", 1),
        ("AccountSummaryAnswer", 2),
        ("ApiKeyAnswer", 2),
        ("CreatedApiKeyAnswer", 1),
    ] {
        let to = format!("#/components/schemas/{name}");
        assert_eq!(
            refs.iter().filter(|r| **r == to).count(),
            answers,
            "{name} is named elsewhere too, or not by all its answers"
        );
    }
    // Required fields are among those shown.
    let r = resolve(&public, "#/components/schemas/CallerAccountAnswer");
    for name in r["required"].as_array().into_iter().flatten() {
        assert!(
            ["account_id", "name", "plan", "mode"].contains(&name.as_str().unwrap()),
            "{name} is required but never shown"
        );
    }
    app.stop().await;
}
