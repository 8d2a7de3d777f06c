//! Leaked-key reports (docs/leaked-keys.md): GitHub's secret-scanning partner endpoint and
//! GitLab's token revocation API on the public listener, `POST /v1/admin/leaks` on the admin
//! listener. All three classify with [`Leaks::classify`] and act through [`Leaks::act`].

use crate::auth::Admin;
use crate::bodies::{GithubMatch, GitlabRevocation, LeakReport};
use crate::errors::ApiError;
use crate::extract::{client_ip, parse_json, peer_ip, JsonBody, MAX_BODY_BYTES};
use crate::leaks::{Classified, Label, Leak, Leaks, Reporter};
use crate::manage::Actor;
use crate::routes::Reply;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use keywarden_core::codes::Code;
use keywarden_core::ct_eq;
use keywarden_core::hashing::sha256;
use keywarden_core::ip::ClientAddr;
use keywarden_core::limits::RateLimit;
use serde::Serialize;
use utoipa::ToSchema;

/// The most tokens one report may carry.
pub const MAX_TOKENS: usize = 1000;
/// The longest `source`, `url` or `location` kept.
pub const MAX_SOURCE: usize = 2048;
/// GitLab's calls per client IP and minute.
const GITLAB_RATE: RateLimit = RateLimit {
    limit: 60,
    window_ms: 60_000,
};

/// GitHub's answer for one match.
#[derive(Debug, Serialize, ToSchema)]
pub struct GithubVerdict {
    /// Lower-case hex SHA-256 of the token.
    pub token_hash: String,
    /// The type the match was reported as.
    pub token_type: String,
    /// `true_positive` when the token is an active key of this deployment.
    pub label: Label,
}

/// `POST /v1/secret-scanning/github`.
#[utoipa::path(post, path = "/v1/secret-scanning/github", request_body = Vec<GithubMatch>, params(("Github-Public-Key-Identifier" = String, Header, description = "The key GitHub signed with"), ("Github-Public-Key-Signature" = String, Header, description = "Base64 DER ECDSA P-256 signature over SHA-256 of the raw body")),
    responses((status = 200, description = "One verdict per match, in order; true positives are then revoked or notified as `leaks.action_live`/`leaks.action_test` say", body = Vec<GithubVerdict>), (status = 401, response = crate::openapi::ReportUnauthorized), (status = 503, response = crate::openapi::Unavailable)),
    security(("github_signature" = [])), tag = "secret-scanning")]
pub async fn github_report(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Reply<Vec<GithubVerdict>> {
    let body = body.map_err(body_error)?;
    let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    state
        .github_keys
        .verify(
            h("github-public-key-identifier"),
            h("github-public-key-signature"),
            &body,
        )
        .map_err(|e| ApiError::with(Code::InvalidSignature, e.to_string()))?;
    let matches: Vec<GithubMatch> = parse_json(&body)?;
    check_count(matches.len())?;
    let leaks_svc = Leaks::new(&state);
    let mut verdicts = Vec::with_capacity(matches.len());
    let mut leaks = Vec::new();
    for m in &matches {
        let found = if leaks_svc.accepts_type(&m.kind) {
            leaks_svc.classify(&m.token).await?
        } else {
            Classified::not_a_key(&m.token)
        };
        verdicts.push(GithubVerdict {
            token_hash: found.sha256.clone(),
            token_type: m.kind.clone(),
            label: found.label(),
        });
        if let Some(key) = found.key {
            leaks.push(Leak {
                key,
                source: clip(m.url.as_deref().or(m.source.as_deref())),
            });
        }
    }
    // GitHub waits only briefly for the answer: revoking and recording happen after it.
    if !leaks.is_empty() {
        let actor = actor_for(&state, &parts);
        tokio::spawn(async move {
            if let Err(e) = leaks_svc.act(&actor, Reporter::Github, leaks).await {
                tracing::error!(code = %e.code, detail = e.detail.as_deref().unwrap_or_default(), "acting on a GitHub leak report failed");
            }
        });
    }
    Ok(Json(verdicts))
}

/// `GET /v1/revocable_token_types`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocableTokenTypes {
    /// The token type names this deployment revokes (`leaks.token_types`).
    pub types: Vec<String>,
}

/// `GET /v1/revocable_token_types` (GitLab's token revocation API).
#[utoipa::path(get, path = "/v1/revocable_token_types",
    responses((status = 200, description = "The token types GitLab may send", body = RevocableTokenTypes), (status = 401, response = crate::openapi::ReportUnauthorized), (status = 429, response = crate::openapi::TooManyRequests)),
    security(("gitlab_token" = [])), tag = "secret-scanning")]
pub async fn gitlab_token_types(
    State(state): State<AppState>,
    parts: Parts,
) -> Reply<RevocableTokenTypes> {
    gitlab_guard(&state, &parts).await?;
    Ok(Json(RevocableTokenTypes {
        types: Leaks::new(&state).token_types(),
    }))
}

/// `POST /v1/revoke_tokens` (GitLab's token revocation API).
#[utoipa::path(post, path = "/v1/revoke_tokens", request_body = Vec<GitlabRevocation>,
    responses((status = 204, description = "Taken: each token that is an active key of this deployment is revoked or notified as the policy says; anything else changes nothing. Sending the same tokens again changes nothing more."), (status = 401, response = crate::openapi::ReportUnauthorized), (status = 429, response = crate::openapi::TooManyRequests), (status = 503, response = crate::openapi::Unavailable)),
    security(("gitlab_token" = [])), tag = "secret-scanning")]
pub async fn gitlab_revoke(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let actor = gitlab_guard(&state, &parts).await?;
    let body = body.map_err(body_error)?;
    let items: Vec<GitlabRevocation> = parse_json(&body)?;
    check_count(items.len())?;
    let svc = Leaks::new(&state);
    let mut leaks = Vec::new();
    for item in items.iter().filter(|i| svc.accepts_type(&i.kind)) {
        if let Some(key) = svc.classify(&item.token).await?.key {
            leaks.push(Leak {
                key,
                source: clip(item.location.as_deref()),
            });
        }
    }
    svc.act(&actor, Reporter::Gitlab, leaks).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer for one reported token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakVerdict {
    /// The token's fingerprint, `sha256_` + hex SHA-256: the `key_hash` of the key it is.
    pub token_hash: String,
    /// `true_positive` when the token was an active key of this deployment.
    pub label: Label,
}

/// `POST /v1/admin/leaks`.
#[utoipa::path(post, path = "/v1/admin/leaks", request_body = LeakReport,
    responses((status = 200, description = "One verdict per token, in the order given; true positives have been revoked or notified as the policy says", body = Vec<LeakVerdict>)))]
pub async fn admin_report(
    admin: Admin,
    JsonBody(b): JsonBody<LeakReport>,
) -> Reply<Vec<LeakVerdict>> {
    if b.tokens.is_empty() {
        return Err(ApiError::invalid("tokens: name at least one token"));
    }
    check_count(b.tokens.len())?;
    if b.source
        .as_ref()
        .is_some_and(|s| s.chars().count() > MAX_SOURCE)
    {
        return Err(ApiError::invalid(format!(
            "source: longer than {MAX_SOURCE} characters"
        )));
    }
    let found = Leaks::new(&admin.state)
        .report(
            &admin.actor,
            Reporter::Admin,
            &b.tokens,
            b.source.as_deref(),
        )
        .await?;
    Ok(Json(
        found
            .iter()
            .map(|c| LeakVerdict {
                token_hash: c.token_hash(),
                label: c.label(),
            })
            .collect(),
    ))
}

/// GitLab's caller: not locked out, within its rate, and presenting the token held in the
/// variable named by `leaks.gitlab_token_env`, as `Authorization: <token>` or
/// `Authorization: Bearer <token>`. A wrong token counts toward the per-IP lockout.
async fn gitlab_guard(state: &AppState, parts: &Parts) -> Result<Actor, ApiError> {
    let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions));
    let bucket = ip.map(ClientAddr::lockout_bucket);
    let limiter = state.verifier.limiter();
    let now = state.clock.now_ms();
    if let Some(b) = &bucket {
        if let Some(wait) = limiter.locked(b, now).await {
            return Err(ApiError::new(Code::TooManyAuthFailures).retry_after(Some(wait)));
        }
    }
    let rate_key = format!(
        "gitlab-revocation:{}",
        ip.map(|i| i.to_string()).unwrap_or_default()
    );
    let rate = limiter.rate(&rate_key, GITLAB_RATE, 1, now).await;
    if !rate.allowed {
        return Err(ApiError::new(Code::RateLimitExceeded).retry_after(Some(rate.retry_after_secs)));
    }
    let env = &state.settings.config.leaks.gitlab_token_env;
    let expected = (!env.is_empty())
        .then(|| std::env::var(env).ok())
        .flatten()
        .filter(|t| !t.is_empty());
    let presented = presented_gitlab_token(&parts.headers);
    let ok = match (&expected, presented) {
        (Some(e), Some(p)) => ct_eq(&sha256(e.as_bytes()), &sha256(p.as_bytes())),
        _ => false,
    };
    if !ok {
        if let Some(b) = &bucket {
            limiter.fail(b, now).await;
        }
        return Err(ApiError::new(Code::InvalidRevocationToken));
    }
    Ok(Actor {
        name: "system".into(),
        ip: ip.and_then(|c| c.ip()).map(|i| i.to_string()),
    })
}

/// `Authorization: <token>` as GitLab sends it, or `Authorization: Bearer <token>`.
fn presented_gitlab_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let token = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => v,
    };
    (!token.is_empty()).then_some(token)
}

fn actor_for(state: &AppState, parts: &Parts) -> Actor {
    let ip = client_ip(&state.settings, &parts.headers, peer_ip(&parts.extensions));
    Actor {
        name: "system".into(),
        ip: ip.and_then(|c| c.ip()).map(|i| i.to_string()),
    }
}

fn check_count(n: usize) -> Result<(), ApiError> {
    if n > MAX_TOKENS {
        return Err(ApiError::invalid(format!(
            "the report has {n} tokens; at most {MAX_TOKENS} are taken at once"
        )));
    }
    Ok(())
}

/// A reporter's location, cut to [`MAX_SOURCE`] characters.
fn clip(s: Option<&str>) -> Option<String> {
    s.map(|s| s.chars().take(MAX_SOURCE).collect())
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::with(
            Code::PayloadTooLarge,
            format!("the request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    } else {
        ApiError::invalid(format!("cannot read the request body: {e}"))
    }
}
