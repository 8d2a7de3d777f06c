//! axum extractors for what the layer puts in the request: `Principal` (and
//! `Option<Principal>`) and `RequestId`.

use crate::principal::{Principal, RequestId};
use crate::scopes::refuse;
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use keywarden_core::codes::Code;
use std::convert::Infallible;

/// The rejection of the [`Principal`] extractor when no [`KeywardenLayer`](crate::KeywardenLayer)
/// verified the request: 500 `internal_error` in Keywarden's error format, since a handler
/// that needs a caller must never run without one.
#[derive(Debug)]
pub struct MissingPrincipal(Response);

impl IntoResponse for MissingPrincipal {
    fn into_response(self) -> Response {
        self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = MissingPrincipal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        tracing::error!(
            "a handler asked for the Principal, but no KeywardenLayer verified the request"
        );
        // Renders from a bodiless copy of the request head, which is all `refuse` reads.
        let mut head = Request::new(());
        *head.headers_mut() = parts.headers.clone();
        *head.extensions_mut() = parts.extensions.clone();
        Err(MissingPrincipal(
            refuse(&head, Code::InternalError).into_response(),
        ))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    /// The id the layer assigned, or a fresh one outside the layer.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_default())
    }
}
