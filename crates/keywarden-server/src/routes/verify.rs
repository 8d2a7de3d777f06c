//! `POST /v1/verify`: any backend asks whether a key may do something. Always 200; the
//! body's `status` is what a gateway should answer.

use crate::auth::require_verifier;
use crate::bodies::VerifyBody;
use crate::errors::ApiError;
use crate::extract::{credentials, JsonBody};
use crate::routes::needs::{route_needs, Needs};
use crate::state::AppState;
use crate::views::{self, RateLimitState, VerifyAccount, VerifyKey, VerifyResponse};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::Json;
use keywarden_core::codes::Code;
use keywarden_core::ip::ClientAddr;
use keywarden_store::verifier::VerifyRequest;
use std::net::IpAddr;

impl std::fmt::Debug for VerifyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |present: bool| present.then_some("[redacted]");
        f.debug_struct("VerifyBody")
            .field("key", &redacted(self.key.is_some()))
            .field("headers", &redacted(self.headers.is_some()))
            .field("app_secret", &redacted(self.app_secret.is_some()))
            .field("scopes", &self.scopes)
            .field("any_scopes", &self.any_scopes)
            .field("ip", &self.ip)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("cost", &self.cost)
            .finish()
    }
}

/// Verifies a key.
#[utoipa::path(
    post, path = "/v1/verify", request_body = VerifyBody,
    responses(
        (status = 200, description = "The decision, always with HTTP 200; `status` is what a gateway should answer", body = crate::views::VerifyResponse),
        crate::openapi::AdminErrors,
    ),
    security(("root_key" = []), ("verify_token" = [])),
    tag = "verify"
)]
pub async fn verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<VerifyBody>, ApiError>,
) -> Result<Json<VerifyResponse>, ApiError> {
    // The caller is checked before its input, so a stranger learns nothing about it.
    require_verifier(&state, &headers)?;
    let JsonBody(body) = body?;
    let s = &state.settings;
    let ip: Option<IpAddr> = match &body.ip {
        Some(raw) => Some(
            raw.parse()
                .map_err(|_| ApiError::invalid(format!("ip: {raw:?} is not an IP address")))?,
        ),
        None => None,
    };
    let mut original = HeaderMap::new();
    if let Some(h) = &body.headers {
        for (k, v) in h {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| ApiError::invalid(format!("headers: {k:?} is not a header name")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| ApiError::invalid(format!("headers.{k}: not a valid header value")))?;
            original.append(name, value);
        }
    }
    let raw_path = body.path.clone().unwrap_or_default();
    let uri: Uri = raw_path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    // Without its query string, which may hold a key (`query:NAME` sources): the path is
    // kept in the key's activity.
    let path = raw_path
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    // What the body names outright wins over what the original request presents.
    let creds = credentials(s, &original, &uri);
    let token = body.key.as_deref().or(creds.token.as_deref());
    let app_secret = body.app_secret.as_deref().or(creds.app_secret);
    let compile = |field: &str, names: &Option<Vec<String>>| {
        names
            .as_ref()
            .map(|n| {
                s.catalog
                    .required(n)
                    .map_err(|e| ApiError::with(Code::InvalidScope, format!("{field}: {e}")))
            })
            .transpose()
    };
    let all = compile("scopes", &body.scopes)?;
    let any = compile("any_scopes", &body.any_scopes)?;
    let method = body.method.clone().unwrap_or_else(|| "GET".into());
    let needs = if all.is_none() && any.is_none() && body.path.is_some() {
        route_needs(&state, &method, &path)
            .map_err(|e| ApiError::invalid(format!("path: {e}")))?
            .0
    } else {
        Needs::Key
    };
    if matches!(needs, Needs::Public) {
        return Ok(Json(VerifyResponse {
            valid: true,
            code: "valid".into(),
            status: 200,
            message: "This route needs no API key.".into(),
            key: None,
            account: None,
            ratelimit: None,
            quotas: None,
            retry_after: None,
        }));
    }
    let route_scopes = match &needs {
        Needs::Scopes(set) => Some(set),
        _ => None,
    };
    let cost: Vec<(String, u64)> = body.cost.clone().unwrap_or_default().into_iter().collect();
    let out = state
        .verifier
        .verify(&VerifyRequest {
            token,
            app_secret,
            client_ip: ip.map(ClientAddr::from),
            object_mode: body.mode,
            scopes_all: all.as_ref().or(route_scopes),
            scopes_any: any.as_ref(),
            impossible: matches!(needs, Needs::Impossible),
            cost: &cost,
            method: &method,
            path: &path,
            admit: None,
            self_service: None,
        })
        .await;

    let locale = s.renderer.locale_for(&headers);
    let presented = s.renderer.overrides.present(out.code);
    let mut resp = VerifyResponse {
        valid: out.is_valid(),
        code: presented.name.to_string(),
        status: presented.status,
        message: s.renderer.overrides.message(out.code, locale).to_string(),
        key: None,
        account: None,
        ratelimit: None,
        quotas: None,
        retry_after: out.retry_after,
    };
    if out.is_valid() || out.code.status() >= 403 {
        resp.key = out.key.as_deref().map(|k| {
            VerifyKey::new(
                k,
                s.catalog
                    .names(&k.scopes)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            )
        });
        resp.account = out.account.as_deref().map(VerifyAccount::from);
    }
    if out.global {
        resp.key = Some(VerifyKey::global());
    }
    if let (Some(limit), Some(rate)) = (&out.rate_limit, &out.rate) {
        resp.ratelimit = Some(RateLimitState {
            limit: u64::from(limit.limit),
            remaining: u64::from(rate.remaining),
            reset: rate.reset_secs,
            window: rate.window_secs,
        });
    }
    if !out.quotas.is_empty() {
        resp.quotas = Some(views::list(&out.quotas));
    }
    Ok(Json(resp))
}
