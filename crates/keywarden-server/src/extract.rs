//! Reading requests strictly: JSON bodies with unknown fields or wrong types refused with
//! the field named, bodies over 64 KiB refused with 413, the NUL character (U+0000) refused
//! in every string of a body, a path and a query with the field named (no store can keep it
//! alike: PostgreSQL refuses it in text), the presented key found in the configured
//! sources, and the client IP taken through trusted proxies only.

use crate::errors::ApiError;
use crate::settings::Settings;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use keywarden_core::codes::Code;
use keywarden_core::ip::ClientAddr;
use keywarden_store::request::{forwarded_client, Credentials};
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body parsed strictly. An empty body parses as `{}` so endpoints whose fields are
/// all optional accept a bare POST.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::with(
                    Code::PayloadTooLarge,
                    format!("the request body exceeds {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The `{id}` of a route (an account, key, application, grant or endpoint id), refused as
/// `invalid_request` when it cannot be read.
#[derive(Debug)]
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| Id(id))
            .map_err(|e| ApiError::invalid(e.body_text()))
    }
}

/// A query string parsed strictly, refused as `invalid_request` naming what is wrong.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::invalid(e.body_text()))
    }
}

/// Parses JSON strictly, naming the offending field on error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    refuse_nul_in_json(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let msg = inner.to_string();
        // serde_json appends " at line L column C"; the position helps with syntax errors
        // only.
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("malformed JSON: {msg}"))
        } else if path == "." {
            ApiError::invalid(strip_position(&msg))
        } else {
            ApiError::invalid(format!("{path}: {}", strip_position(&msg)))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// What a field holding U+0000 is told.
pub const NUL_REFUSED: &str = "must not contain the NUL character (U+0000)";

/// Refuses a JSON document with U+0000 in any string or object key, naming where. JSON can
/// only carry it escaped (`\u0000`), so a document without that escape costs one scan.
fn refuse_nul_in_json(bytes: &[u8]) -> Result<(), ApiError> {
    let escaped = bytes
        .windows(6)
        .any(|w| w[0] == b'\\' && &w[1..] == b"u0000");
    if !escaped {
        return Ok(());
    }
    // Malformed JSON is left to the strict parse, which names the problem.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    match nul_at(&value, String::new()) {
        Some(at) if at.is_empty() => Err(ApiError::invalid(format!("a field name {NUL_REFUSED}"))),
        Some(at) => Err(ApiError::invalid(format!("{at}: {NUL_REFUSED}"))),
        None => Ok(()),
    }
}

/// The path (`a.b[2]`, as serde_path_to_error writes it) of the first string holding
/// U+0000; for an object key holding it, the object's path.
fn nul_at(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0').then_some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{at}[{i}]"))),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                return Some(at);
            }
            map.iter().find_map(|(k, v)| {
                let inner = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                nul_at(v, inner)
            })
        }
        _ => None,
    }
}

/// Refuses, before the handler runs, a path parameter or query parameter holding U+0000
/// once percent-decoded (`%00`), or a path parameter that is not UTF-8 once decoded, naming
/// the parameter. Applied with `route_layer`, so the route's parameters are known.
pub async fn refuse_nul_in_uri(req: Request, next: axum::middleware::Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Err(e) = check_uri(&mut parts).await {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

async fn check_uri(parts: &mut axum::http::request::Parts) -> Result<(), ApiError> {
    match RawPathParams::from_request_parts(parts, &()).await {
        Ok(params) => {
            if let Some((name, _)) = params.iter().find(|(_, v)| v.contains('\0')) {
                return Err(ApiError::invalid(format!("{name}: {NUL_REFUSED}")));
            }
        }
        Err(axum::extract::rejection::RawPathParamsRejection::InvalidUtf8InPathParam(e)) => {
            return Err(ApiError::invalid(e.body_text()));
        }
        // A route without parameters.
        Err(_) => {}
    }
    if let Some(query) = parts.uri.query() {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(k);
            if name.contains('\0') {
                return Err(ApiError::invalid(format!(
                    "a query parameter name {NUL_REFUSED}"
                )));
            }
            if percent_decode(v).contains('\0') {
                return Err(ApiError::invalid(format!("{name}: {NUL_REFUSED}")));
            }
        }
    }
    Ok(())
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// What a request presents to be verified, read with the configured key sources and
/// application-secret header (`keywarden_store::request`, which the embedded layer reads
/// requests with too).
pub fn credentials<'r>(
    settings: &Settings,
    headers: &'r HeaderMap,
    uri: &'r Uri,
) -> Credentials<'r> {
    Credentials::read(
        &settings.sources,
        settings.app_secret_header.as_deref(),
        headers,
        uri,
    )
}

pub use keywarden_store::request::{percent_decode, query_param};

/// The client: the peer, or through `X-Forwarded-For` when the peer is trusted (see
/// [`forwarded_client`]). `None` without a peer address.
pub fn client_ip(
    settings: &Settings,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Option<ClientAddr> {
    Some(forwarded_client(peer?, headers, &settings.trusted_proxies))
}

/// The peer address of the connection, when served over a real socket.
pub fn peer_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        #[serde(default)]
        count: Option<u32>,
    }

    fn err(json: &str) -> String {
        parse_json::<Body>(json.as_bytes())
            .unwrap_err()
            .detail
            .unwrap_or_default()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"name":"a","extra":1}"#).contains("unknown field `extra`"));
        assert!(err(r#"{"name":5}"#).starts_with("name:"));
        assert!(err(r#"{"name":"a","count":"x"}"#).starts_with("count:"));
        assert!(err(r#"{"count":1}"#).contains("missing field `name`"));
        assert!(err(r#"{"name":"#).starts_with("malformed JSON"));
        assert!(err(r#"{"name":"a"} trailing"#).starts_with("malformed JSON"));
    }
}
