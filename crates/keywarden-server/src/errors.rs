//! How errors leave the service (`docs/errors.md`): one [`ApiError`] type every handler returns,
//! rendered in the configured style (`envelope`, `problem`, `detail`), in the request's
//! language, with the code renamed as the profile asks, and always with the request id.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keywarden_core::codes::{Code, CodeOverrides, Locale};
use serde_json::Value;
use std::sync::Arc;

pub use keywarden_core::codes::ErrorStyle;

/// Everything needed to render an error, fixed at startup.
#[derive(Clone, Debug)]
pub struct ErrorRenderer {
    /// Body shape.
    pub style: ErrorStyle,
    /// Link template with `{code}`; empty = no link.
    pub doc_url: String,
    /// The default language.
    pub locale: Locale,
    /// Profile renames and status changes.
    pub overrides: CodeOverrides,
}

impl Default for ErrorRenderer {
    fn default() -> Self {
        Self {
            style: ErrorStyle::Envelope,
            doc_url: String::new(),
            locale: Locale::En,
            overrides: CodeOverrides::default(),
        }
    }
}

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

impl ErrorRenderer {
    /// The language for a request: its `Accept-Language` if it names a supported one.
    pub fn locale_for(&self, headers: &HeaderMap) -> Locale {
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(Locale::from_accept_language)
            .unwrap_or(self.locale)
    }

    /// The final status, wire code, and body of an error.
    pub fn body(
        &self,
        err: &ApiError,
        locale: Locale,
        request_id: &str,
    ) -> (StatusCode, String, Value) {
        let p = self.overrides.present(err.code);
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // A specific message is English only; in another language the table's message is
        // used, followed by the specifics so the field is still named.
        let message = match (&err.detail, locale) {
            (Some(d), Locale::En) => d.clone(),
            (Some(d), _) => format!("{} ({d})", self.overrides.message(err.code, locale)),
            (None, _) => self.overrides.message(err.code, locale).to_string(),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let body = p.body(self.style, &message, request_id, &self.doc_url, title);
        (status, p.name.to_string(), body)
    }

    /// Renders an error as a full response.
    pub fn response(&self, err: &ApiError, locale: Locale, request_id: &str) -> Response {
        let (status, _, body) = self.body(err, locale, request_id);
        let content_type = match self.style {
            ErrorStyle::Problem => "application/problem+json",
            _ => "application/json",
        };
        let mut res = (status, body.to_string()).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(secs) = err.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keywarden\""),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn renderer(style: ErrorStyle) -> ErrorRenderer {
        ErrorRenderer {
            style,
            doc_url: "https://docs.example.com/errors#{code}".into(),
            ..ErrorRenderer::default()
        }
    }

    #[test]
    fn envelope_has_every_field() {
        let r = renderer(ErrorStyle::Envelope);
        let (status, code, body) = r.body(&ApiError::new(Code::InvalidApiKey), Locale::En, "req_1");
        assert_eq!(status, 401);
        assert_eq!(code, "invalid_api_key");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["request_id"], "req_1");
        assert_eq!(
            body["error"]["doc_url"],
            "https://docs.example.com/errors#invalid_api_key"
        );
    }

    #[test]
    fn problem_and_detail_styles() {
        let r = renderer(ErrorStyle::Problem);
        let (_, _, b) = r.body(&ApiError::new(Code::InsufficientScope), Locale::Es, "req_2");
        assert_eq!(b["status"], 403);
        assert_eq!(b["code"], "insufficient_scope");
        assert_eq!(b["title"], "Forbidden");
        assert!(b["detail"].as_str().unwrap().contains("permiso"));
        let r = renderer(ErrorStyle::Detail);
        let (_, _, b) = r.body(&ApiError::invalid("name: too long"), Locale::En, "req_3");
        assert_eq!(b, json!({"detail": "name: too long"}));
    }

    #[test]
    fn renames_apply() {
        let mut r = renderer(ErrorStyle::Envelope);
        r.overrides = CodeOverrides::new(
            &BTreeMap::from([("api_key_expired".into(), "api_key_revoked".into())]),
            &BTreeMap::new(),
        )
        .unwrap();
        let (_, code, b) = r.body(&ApiError::new(Code::ApiKeyExpired), Locale::En, "req_4");
        assert_eq!(code, "api_key_revoked");
        assert_eq!(
            b["error"]["message"],
            Code::ApiKeyRevoked.message(Locale::En)
        );
    }
}
