//! How errors leave the service (`docs/errors.md`): one [`ApiError`] type every handler returns,
//! rendered in the configured style (`envelope`, `problem`, `detail`), in the request's
//! language, with the code renamed as the profile asks, and always with the request id.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keywarden_core::codes::{Code, Locale};
use std::sync::Arc;

pub use keywarden_core::codes::ErrorStyle;

pub use keywarden_store::reply::ErrorFormat;

/// An error on its way out: a code, an optional specific message (naming the field or the
/// offending values) and a retry hint. Handlers return it; a middleware renders it with the
/// request's language and id, so handlers never need either.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The code.
    pub code: Code,
    /// A message more precise than the code's default (English); `None` uses the table.
    pub detail: Option<String>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Headers the response carries too (e.g. rate-limit figures).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the code's default message.
    pub fn new(code: Code) -> Self {
        Self {
            code,
            detail: None,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// An error with a precise message. It must never contain a secret.
    pub fn with(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: Some(detail.into()),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// 400 `invalid_request` naming what is wrong.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::with(Code::InvalidRequest, detail)
    }

    /// 404 `not_found`.
    pub fn not_found() -> Self {
        Self::new(Code::NotFound)
    }

    /// Adds a retry hint.
    pub fn retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after = secs;
        self
    }

    /// Adds headers the error response carries.
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        let mut last = None;
        for (name, value) in headers {
            // Repeated values of one header come with the name only on the first.
            last = name.or(last);
            if let Some(n) = &last {
                self.headers.push((n.clone(), value));
            }
        }
        self
    }
}

impl From<keywarden_store::StoreError> for ApiError {
    fn from(e: keywarden_store::StoreError) -> Self {
        use keywarden_store::StoreError as E;
        match e {
            E::NotFound => ApiError::not_found(),
            E::Conflict(m) => ApiError::with(Code::Conflict, m),
            E::LimitReached { max_active } => ApiError::with(
                Code::PlanLimitReached,
                format!("the plan allows at most {max_active} active API keys"),
            ),
            E::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                ApiError::with(Code::ServiceUnavailable, "the store is not reachable")
                    .retry_after(Some(1))
            }
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(Code::InternalError)
            }
        }
    }
}

/// Marker put in response extensions so the rendering middleware can find the error.
#[derive(Clone, Debug)]
pub struct PendingError(pub Arc<ApiError>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body is filled in by `render_errors`, which knows the style, language and
        // request id; the status is provisional until then.
        let mut res = StatusCode::from_u16(self.code.status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
        // Kept by the rendering middleware, which adds the body.
        for (name, value) in &self.headers {
            res.headers_mut().append(name.clone(), value.clone());
        }
        res.extensions_mut().insert(PendingError(Arc::new(self)));
        res
    }
}

/// Renders `err` as a full response in `format`, with its wire code (after renames).
pub fn render(
    format: &ErrorFormat,
    err: &ApiError,
    locale: Locale,
    request_id: &str,
) -> (Response, String) {
    let r = format.render(err.code, err.detail.as_deref(), locale, request_id);
    let mut res = (r.status, r.body_json()).into_response();
    format.error_headers(res.headers_mut(), r.status, err.retry_after);
    (res, r.code.to_string())
}
