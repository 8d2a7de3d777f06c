//! Cross-cutting request handling: the request id, error rendering in the request's
//! language, and one log line per request (never with a secret: only the id, route,
//! status, code and latency).

use crate::errors::{render, ApiError, PendingError};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keywarden_core::codes::Locale;
use std::time::Instant;

/// The request's id (`req_<ULID>`) in request extensions, as the header value it is sent
/// in (upstream and to the client), so it is encoded once.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Made from a `req_<ULID>` string: always visible ASCII.
        self.0.to_str().unwrap_or_default()
    }
}

/// The decision code of a handled request, for the log line (set by handlers that decide).
#[derive(Clone, Copy, Debug)]
pub struct DecisionCode(pub &'static str);

/// Assigns the request id, renders pending errors, adds `X-Request-Id`, logs the request.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let context = RequestContext::begin(&state, &mut req);
    // The web pages speak the same language as the errors.
    req.extensions_mut().insert(context.locale);
    let style = state.settings.timestamps;
    let res = crate::views::with_timestamp_style(style, next.run(req)).await;
    context.finish(&state, res)
}

/// What [`request_context`] does before and after a request, for a service that answers
/// without the router (the gateway's and forward-auth's requests, `crate::front::Front`).
#[derive(Debug)]
pub struct RequestContext {
    id: RequestId,
    locale: Locale,
    /// When it began, its method and its path, when its log line will be written.
    logged: Option<(Instant, Method, String)>,
}

impl RequestContext {
    /// Assigns the request its id ([`RequestId`] in its extensions) and notes what the
    /// log line and an error's rendering will need.
    pub fn begin<B>(state: &AppState, req: &mut axum::http::Request<B>) -> Self {
        let context = Self::unmarked(state, req);
        req.extensions_mut().insert(context.id.clone());
        context
    }

    /// [`RequestContext::begin`] for a request whose handler is given the id directly
    /// ([`RequestContext::id`]): its extensions are left as they are.
    pub fn unmarked<B>(state: &AppState, req: &axum::http::Request<B>) -> Self {
        let id = request_id();
        let locale = state.settings.renderer.locale_for(req.headers());
        // The path without its query string: a query may carry a key (`query:NAME` sources).
        let logged = tracing::enabled!(tracing::Level::INFO).then(|| {
            (
                Instant::now(),
                req.method().clone(),
                req.uri().path().to_string(),
            )
        });
        RequestContext { id, locale, logged }
    }

    /// The request's id.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// Renders a pending error, adds `X-Request-Id` and writes the log line.
    pub fn finish(self, state: &AppState, res: Response) -> Response {
        self.finish_decided(state, res, None)
    }

    /// [`RequestContext::finish`] for a response whose decision code, unless it carries
    /// one ([`DecisionCode`]) or is an error, is `decided`: the caller knows it, and the
    /// response's extensions need not be made for it.
    pub fn finish_decided(
        self,
        state: &AppState,
        mut res: Response,
        decided: Option<&'static str>,
    ) -> Response {
        let RequestContext { id, locale, logged } = self;
        let mut code: Option<std::borrow::Cow<'static, str>> = res
            .extensions()
            .get::<DecisionCode>()
            .map(|c| c.0)
            .or(decided)
            .map(Into::into);
        if let Some(PendingError(err)) = res.extensions_mut().remove::<PendingError>() {
            let (mut new, wire) = render(&state.settings.renderer, &err, locale, id.as_str());
            code = Some(wire.into());
            // Keep headers a handler set on the error response (e.g. rate-limit figures).
            for (k, v) in res.headers() {
                if !new.headers().contains_key(k) {
                    new.headers_mut().insert(k.clone(), v.clone());
                }
            }
            res = new;
        }
        res.headers_mut().insert(X_REQUEST_ID, id.0.clone());
        if let Some((started, method, path)) = logged {
            tracing::info!(
                request_id = %id.as_str(),
                method = %method,
                path = %path,
                status = res.status().as_u16(),
                code = code.as_deref().unwrap_or("-"),
                latency_us = started.elapsed().as_micros() as u64,
                "request"
            );
        }
        res
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A new request id, `req_<ULID>`.
fn request_id() -> RequestId {
    let mut id = [0u8; 4 + ulid::ULID_LEN];
    id[..4].copy_from_slice(b"req_");
    let mut buf = [0u8; ulid::ULID_LEN];
    let ulid = ulid::Ulid::new();
    id[4..].copy_from_slice(ulid.array_to_str(&mut buf).as_bytes());
    // Letters, digits and `_`: a valid header value. Held by its owner, so the copies the
    // request's log line, upstream and answer take share one allocation from the start.
    RequestId(
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
            .unwrap_or(HeaderValue::from_static("req_")),
    )
}

/// The answer to any path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Renames the top-level fields of a self-service JSON answer (and of the objects of a
/// top-level array) as `self_service.rename` asks (docs/configuration.md).
pub async fn rename_fields(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let renames = &state.settings.self_service.rename;
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if renames.is_empty() || !is_json || res.extensions().get::<PendingError>().is_some() {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, crate::extract::MAX_BODY_BYTES * 64).await else {
        return ApiError::new(keywarden_core::codes::Code::InternalError).into_response();
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let rename = |v: &mut serde_json::Value| {
        if let serde_json::Value::Object(map) = v {
            for (from, to) in renames {
                if let Some(x) = map.remove(from) {
                    map.insert(to.clone(), x);
                }
            }
        }
    };
    match &mut value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(rename),
        other => rename(other),
    }
    let out = value.to_string();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}
