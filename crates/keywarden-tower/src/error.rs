//! Denied requests, answered the way the Keywarden server answers them (`docs/errors.md`): the
//! status from the code table (after profile overrides), a body in the configured style
//! and the request's language, `WWW-Authenticate` on 401 and `Retry-After` on 429.
//!
//! Error bodies carry the code's message from the table only, never anything from the
//! request, so a presented key can never be echoed back.

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Full;
use keywarden_core::codes::{Code, Locale};

pub use keywarden_core::codes::ErrorStyle;
pub use keywarden_store::reply::ErrorFormat;

/// A complete error response in `format`, as the layer sends it: status, body,
/// `Content-Type`, `WWW-Authenticate` on 401, `Retry-After` when a retry hint is given, and
/// `X-Request-Id`. For a handler that refuses a request itself, in the layer's format.
pub fn error_response(
    format: &ErrorFormat,
    code: Code,
    retry_after: Option<u64>,
    locale: Locale,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let r = format.render(code, None, locale, request_id);
    let mut res = Response::new(Full::new(Bytes::from(r.body_json())));
    *res.status_mut() = r.status;
    let h = res.headers_mut();
    format.error_headers(h, r.status, retry_after);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(crate::REQUEST_ID_HEADER, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};

    #[test]
    fn responses_carry_their_headers() {
        let f = ErrorFormat::default();
        let res = error_response(&f, Code::RateLimitExceeded, Some(0), Locale::En, "req_6");
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[RETRY_AFTER], "1");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()["x-request-id"], "req_6");
        assert!(!res.headers().contains_key(WWW_AUTHENTICATE));
        let problem = ErrorFormat {
            style: ErrorStyle::Problem,
            ..ErrorFormat::default()
        };
        let res = error_response(&problem, Code::MissingApiKey, None, Locale::En, "r");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"keywarden\""
        );
    }
}
