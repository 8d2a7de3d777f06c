//! What every entry point writes onto its answer (`docs/errors.md`): an error's status and
//! body in the configured style and the request's language, its `Content-Type`,
//! `WWW-Authenticate` on 401 and `Retry-After` when a retry hint is given; and the IETF
//! rate-limit headers of a decision. The server and the embedded layer both answer through
//! this, so an error looks the same whichever one sent it.
//!
//! Error bodies carry the code's message (or a detail written by Keywarden that names a
//! field), never anything copied from the request, so a presented key is never echoed.

use crate::verifier::VerifyOutcome;
use http::header::{ACCEPT_LANGUAGE, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use keywarden_core::codes::{Code, CodeOverrides, ErrorBody, ErrorStyle, Locale};
use keywarden_core::limits::RateLimit;
use std::cell::RefCell;

/// How errors are rendered: the `[errors]` section of the configuration.
#[derive(Clone, Debug, Default)]
pub struct ErrorFormat {
    /// The body shape.
    pub style: ErrorStyle,
    /// A link template with `{code}` (`errors.doc_url`); empty for no link.
    pub doc_url: String,
    /// The language used when `Accept-Language` names no supported one.
    pub locale: Locale,
    /// Profile renames, status changes and messages (`errors.rename`, `status`, `messages`).
    pub overrides: CodeOverrides,
}

/// An error as it is sent: its final status, wire code and body.
#[derive(Clone, Debug)]
pub struct RenderedError<'a> {
    /// The HTTP status after overrides.
    pub status: StatusCode,
    /// The code's wire name after renames.
    pub code: &'a str,
    /// The body in the configured style.
    pub body: ErrorBody,
}

impl RenderedError<'_> {
    /// The body as JSON text.
    pub fn body_json(&self) -> String {
        // Plain strings and numbers always serialize.
        serde_json::to_string(&self.body).unwrap_or_default()
    }
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

    /// Renders `code`, with `detail` (a specific message naming the field or values) in
    /// place of the table's message. A detail is English only: in another language the
    /// table's message is used, followed by the detail in parentheses, so the field is
    /// still named.
    pub fn render(
        &self,
        code: Code,
        detail: Option<&str>,
        locale: Locale,
        request_id: &str,
    ) -> RenderedError<'_> {
        let p = self.overrides.present(code);
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let table = self.overrides.message(code, locale);
        let message = match (detail, locale) {
            (Some(d), Locale::En) => d.to_string(),
            (Some(d), _) => format!("{table} ({d})"),
            (None, _) => table.to_string(),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let body = p.body(self.style, &message, request_id, &self.doc_url, title);
        RenderedError {
            status,
            code: p.name,
            body,
        }
    }

    /// The headers an error response carries besides the request id: `Content-Type` for
    /// the style, `Retry-After` (at least 1 s) when a retry hint is given, and
    /// `WWW-Authenticate` on 401.
    pub fn error_headers(
        &self,
        headers: &mut HeaderMap,
        status: StatusCode,
        retry_after: Option<u64>,
    ) {
        let content_type = match self.style {
            ErrorStyle::Problem => "application/problem+json",
            _ => "application/json",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(secs) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keywarden\""),
            );
        }
    }
}

/// Adds the IETF rate-limit headers (`RateLimit-Policy`, `RateLimit`; draft 11) when a
/// rate limit applied to the decision.
pub fn rate_limit_headers(headers: &mut HeaderMap, out: &VerifyOutcome) {
    if let (Some(limit), Some(rate)) = (&out.rate_limit, &out.rate) {
        headers.insert(RATELIMIT_POLICY, policy_value(limit));
        if let Ok(v) = HeaderValue::from_str(rate.header_value().as_str()) {
            headers.insert(RATELIMIT, v);
        }
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The `RateLimit-Policy` value of a policy. The last one made on this thread is kept: a
/// deployment has few policies, and a busy key asks for the same one request after request.
fn policy_value(policy: &RateLimit) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(RateLimit, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((kept, value)) if kept == policy => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&policy.policy_header())
                .unwrap_or(HeaderValue::from_static(""));
            *last = Some((*policy, value.clone()));
            value
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn v(body: &ErrorBody) -> Value {
        serde_json::to_value(body).unwrap()
    }
    use std::collections::BTreeMap;

    fn format(style: ErrorStyle) -> ErrorFormat {
        ErrorFormat {
            style,
            doc_url: "https://docs.example.com/errors#{code}".into(),
            ..ErrorFormat::default()
        }
    }

    #[test]
    fn the_rate_limit_headers_are_the_outcomes_own() {
        use keywarden_core::limits::GcraState;
        for (limit, window_ms) in [(50, 60_000), (7, 1_000), (1_000_000, 3_600_000), (3, 1_500)] {
            let policy = RateLimit { limit, window_ms };
            let mut state = GcraState::default();
            for spent in 0..3 {
                let rate = policy.check(&mut state, 1_000 * spent, 1);
                let out = VerifyOutcome {
                    code: Code::Valid,
                    retry_after: None,
                    key: None,
                    account: None,
                    rate: Some(rate),
                    rate_limit: Some(policy),
                    quotas: Vec::new(),
                    global: false,
                    detail: None,
                };
                let mut headers = HeaderMap::new();
                rate_limit_headers(&mut headers, &out);
                assert_eq!(headers["ratelimit"], rate.header().as_str());
                assert_eq!(headers["ratelimit-policy"], policy.policy_header().as_str());
            }
        }
    }

    #[test]
    fn the_envelope_has_every_field() {
        let f = format(ErrorStyle::Envelope);
        let r = f.render(Code::InvalidApiKey, None, Locale::En, "req_1");
        assert_eq!(r.status, 401);
        assert_eq!(r.code, "invalid_api_key");
        assert_eq!(v(&r.body)["error"]["type"], "authentication_error");
        assert_eq!(v(&r.body)["error"]["code"], "invalid_api_key");
        assert_eq!(v(&r.body)["error"]["message"], "The API key is invalid.");
        assert_eq!(v(&r.body)["error"]["request_id"], "req_1");
        assert_eq!(
            v(&r.body)["error"]["doc_url"],
            "https://docs.example.com/errors#invalid_api_key"
        );
    }

    #[test]
    fn problem_and_detail_styles() {
        let f = format(ErrorStyle::Problem);
        let p = f.render(Code::InsufficientScope, None, Locale::Es, "r2");
        assert_eq!(p.status, 403);
        assert_eq!(v(&p.body)["status"], 403);
        assert_eq!(v(&p.body)["title"], "Forbidden");
        assert_eq!(v(&p.body)["code"], "insufficient_scope");
        assert_eq!(v(&p.body)["request_id"], "r2");
        assert!(v(&p.body)["detail"].as_str().unwrap().contains("permiso"));
        let f = format(ErrorStyle::Detail);
        let d = f.render(Code::MissingApiKey, None, Locale::En, "r3");
        assert_eq!(v(&d.body), json!({ "detail": "No API key was provided." }));
        let f = format(ErrorStyle::Detail);
        let d = f.render(
            Code::InvalidRequest,
            Some("name: too long"),
            Locale::En,
            "r",
        );
        assert_eq!(v(&d.body), json!({ "detail": "name: too long" }));
    }

    #[test]
    fn a_detail_is_english_and_named_in_other_languages() {
        let f = format(ErrorStyle::Envelope);
        let en = f.render(
            Code::InvalidRequest,
            Some("`name` is required"),
            Locale::En,
            "r",
        );
        assert_eq!(v(&en.body)["error"]["message"], "`name` is required");
        let es = f.render(
            Code::InvalidRequest,
            Some("`name` is required"),
            Locale::Es,
            "r",
        );
        let body = v(&es.body);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(Code::InvalidRequest.message(Locale::Es)));
        assert!(message.ends_with("(`name` is required)"));
    }

    #[test]
    fn renames_change_the_code_status_and_message() {
        let mut f = format(ErrorStyle::Envelope);
        f.overrides = CodeOverrides::new(
            &BTreeMap::from([("api_key_expired".into(), "api_key_revoked".into())]),
            &BTreeMap::from([("insufficient_scope".into(), 401)]),
        )
        .unwrap();
        let r = f.render(Code::ApiKeyExpired, None, Locale::En, "r4");
        assert_eq!(r.code, "api_key_revoked");
        assert_eq!(v(&r.body)["error"]["code"], "api_key_revoked");
        assert_eq!(
            v(&r.body)["error"]["message"],
            "The API key has been revoked."
        );
        assert_eq!(
            f.render(Code::InsufficientScope, None, Locale::En, "r")
                .status,
            401
        );
    }

    #[test]
    fn error_headers_follow_the_status_and_style() {
        let mut h = HeaderMap::new();
        format(ErrorStyle::Problem).error_headers(&mut h, StatusCode::UNAUTHORIZED, Some(0));
        assert_eq!(h[CONTENT_TYPE], "application/problem+json");
        assert_eq!(h[RETRY_AFTER], "1");
        assert_eq!(h[WWW_AUTHENTICATE], "Bearer realm=\"keywarden\"");
        let mut h = HeaderMap::new();
        format(ErrorStyle::Envelope).error_headers(&mut h, StatusCode::FORBIDDEN, None);
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert!(h.get(RETRY_AFTER).is_none() && h.get(WWW_AUTHENTICATE).is_none());
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
