//! Cross-cutting request handling: the request id, error rendering in the request's
//! language, and one log line per request (never with a secret: only the id, route,
//! status, code and latency).

use crate::errors::{ApiError, PendingError};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The request's id (`req_<ULID>`), in request and response extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The decision code of a handled request, for the log line (set by handlers that decide).
#[derive(Clone, Copy, Debug)]
pub struct DecisionCode(pub &'static str);

/// Assigns the request id, renders pending errors, adds `X-Request-Id`, logs the request.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = format!("req_{}", ulid::Ulid::new());
    req.extensions_mut().insert(RequestId(id.clone()));
    let locale = state.settings.renderer.locale_for(req.headers());
    let method = req.method().clone();
    // The path without its query string: a query may carry a key (`query:NAME` sources).
    let path = req.uri().path().to_string();

    let mut res = next.run(req).await;

    let mut code: Option<String> = res
        .extensions()
        .get::<DecisionCode>()
        .map(|c| c.0.to_string());
    if let Some(PendingError(err)) = res.extensions_mut().remove::<PendingError>() {
        let rendered = state.settings.renderer.response(&err, locale, &id);
        code = Some(
            state
                .settings
                .renderer
                .overrides
                .present(err.code)
                .name
                .to_string(),
        );
        let mut new = rendered;
        // Keep headers a handler set on the error response (e.g. rate-limit figures).
        for (k, v) in res.headers() {
            if !new.headers().contains_key(k) {
                new.headers_mut().insert(k.clone(), v.clone());
            }
        }
        res = new;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        request_id = %id,
        method = %method,
        path = %path,
        status = res.status().as_u16(),
        code = code.as_deref().unwrap_or("-"),
        latency_us = started.elapsed().as_micros() as u64,
        "request"
    );
    res
}

/// The answer to any path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}
