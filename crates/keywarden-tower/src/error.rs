//! Denied requests, answered the way the Keywarden server answers them (`docs/errors.md`): the
//! status from the code table (after profile overrides), a body in the configured style
//! and the request's language, `WWW-Authenticate` on 401 and `Retry-After` on 429.
//!
//! Error bodies carry the code's message from the table only, never anything from the
//! request, so a presented key can never be echoed back.

use bytes::Bytes;
use http::header::{ACCEPT_LANGUAGE, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use keywarden_core::codes::{Code, CodeOverrides, Locale};
use serde_json::Value;

pub use keywarden_core::codes::ErrorStyle;

/// How denials are rendered: the `[errors]` section of the server's configuration.
#[derive(Clone, Debug, Default)]
pub struct ErrorFormat {
    /// The body shape.
    pub style: ErrorStyle,
    /// A link template with `{code}` (`errors.doc_url`); empty for no link.
    pub doc_url: String,
    /// The language used when `Accept-Language` names no supported one.
    pub locale: Locale,
    /// Profile renames and status changes (`errors.rename`, `errors.status`).
    pub overrides: CodeOverrides,
}

impl ErrorFormat {
    /// The language for a request: the first supported one its `Accept-Language` names,
    /// else the configured default.
    pub fn locale_for(&self, headers: &HeaderMap) -> Locale {
        headers
            .get(ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(Locale::from_accept_language)
            .unwrap_or(self.locale)
    }

    /// The body of an error as the configured style shapes it, with its final status.
    pub fn body(&self, code: Code, locale: Locale, request_id: &str) -> (StatusCode, Value) {
        let p = self.overrides.present(code);
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = p.message_code.message(locale);
        let title = status.canonical_reason().unwrap_or("Error");
        let body = p.body(self.style, message, request_id, &self.doc_url, title);
        (status, body)
    }

    /// A complete error response: status, body, `Content-Type`, `WWW-Authenticate` on
    /// 401, `Retry-After` when a retry hint is given, and `X-Request-Id`.
    pub fn response(
        &self,
        code: Code,
        retry_after: Option<u64>,
        locale: Locale,
        request_id: &str,
    ) -> Response<Full<Bytes>> {
        let (status, body) = self.body(code, locale, request_id);
        let content_type = match self.style {
            ErrorStyle::Problem => "application/problem+json",
            _ => "application/json",
        };
        let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(secs) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keywarden\""),
            );
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(crate::REQUEST_ID_HEADER, v);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn format(style: ErrorStyle) -> ErrorFormat {
        ErrorFormat {
            style,
            doc_url: "https://docs.example.com/errors#{code}".into(),
            ..ErrorFormat::default()
        }
    }

    #[test]
    fn the_envelope_has_every_field() {
        let (status, b) =
            format(ErrorStyle::Envelope).body(Code::InvalidApiKey, Locale::En, "req_1");
        assert_eq!(status, 401);
        assert_eq!(b["error"]["type"], "authentication_error");
        assert_eq!(b["error"]["code"], "invalid_api_key");
        assert_eq!(b["error"]["message"], "The API key is invalid.");
        assert_eq!(b["error"]["request_id"], "req_1");
        assert_eq!(
            b["error"]["doc_url"],
            "https://docs.example.com/errors#invalid_api_key"
        );
    }

    #[test]
    fn problem_and_detail_styles() {
        let (_, b) = format(ErrorStyle::Problem).body(Code::InsufficientScope, Locale::Es, "req_2");
        assert_eq!(b["status"], 403);
        assert_eq!(b["title"], "Forbidden");
        assert_eq!(b["code"], "insufficient_scope");
        assert_eq!(b["request_id"], "req_2");
        assert!(b["detail"].as_str().unwrap().contains("permiso"));
        let (_, b) = format(ErrorStyle::Detail).body(Code::MissingApiKey, Locale::En, "req_3");
        assert_eq!(b, json!({ "detail": "No API key was provided." }));
    }

    #[test]
    fn renames_change_the_code_status_and_message() {
        let mut f = format(ErrorStyle::Envelope);
        f.overrides = CodeOverrides::new(
            &BTreeMap::from([("api_key_expired".into(), "api_key_revoked".into())]),
            &BTreeMap::from([("insufficient_scope".into(), 401)]),
        )
        .unwrap();
        let (_, b) = f.body(Code::ApiKeyExpired, Locale::En, "req_4");
        assert_eq!(b["error"]["code"], "api_key_revoked");
        assert_eq!(b["error"]["message"], "The API key has been revoked.");
        let res = f.response(Code::InsufficientScope, None, Locale::En, "req_5");
        assert_eq!(res.status(), 401);
        assert!(res.headers().contains_key(WWW_AUTHENTICATE));
    }

    #[test]
    fn responses_carry_their_headers() {
        let f = ErrorFormat::default();
        let res = f.response(Code::RateLimitExceeded, Some(0), Locale::En, "req_6");
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[RETRY_AFTER], "1");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()["x-request-id"], "req_6");
        assert!(!res.headers().contains_key(WWW_AUTHENTICATE));
        let res = format(ErrorStyle::Problem).response(Code::MissingApiKey, None, Locale::En, "r");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"keywarden\""
        );
    }

    #[test]
    fn accept_language_picks_the_language() {
        let f = ErrorFormat::default();
        let mut h = HeaderMap::new();
        assert_eq!(f.locale_for(&h), Locale::En);
        h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static("es-ES,es;q=0.9"));
        assert_eq!(f.locale_for(&h), Locale::Es);
        h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        assert_eq!(f.locale_for(&h), Locale::En);
    }
}
