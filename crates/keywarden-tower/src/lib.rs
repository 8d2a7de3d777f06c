//! Keywarden embedded (`docs/concepts.md#ways-to-use-it`, "Embedded"): a [`tower::Layer`] that verifies API keys in
//! process, on the same store, caches and decision as the Keywarden server, with no HTTP
//! hop.
//!
//! - [`Keywarden`] holds the verification engine; [`Keywarden::builder`] makes one with
//!   the server's defaults, so an application and `keywarden serve` on the same database
//!   accept the same keys (keys are managed through the server's admin API or CLI).
//! - [`KeywardenLayer`] verifies each request (`docs/decision.md`) and passes the caller on as a
//!   [`Principal`] in the request extensions, or answers the denial itself in Keywarden's
//!   error format (`docs/errors.md`) with `X-Request-Id`, `WWW-Authenticate` on 401, `Retry-After`
//!   on 429 and the rate-limit headers.
//! - [`RequireScopes`] requires scopes on a route, answering 403 `insufficient_scope`.
//!
#![cfg_attr(
    feature = "axum",
    doc = r#"
```no_run
use axum::{routing::get, Router};
use keywarden_core::scopes::CatalogEntry;
use keywarden_tower::{Keywarden, KeywardenLayer, Principal, RequireScopes};

async fn list(principal: Principal) -> String {
    format!("invoices of {:?}", principal.account_id)
}

# async fn run() -> Result<(), Box<dyn std::error::Error>> {
let read = CatalogEntry {
    name: "invoices:read".into(),
    description: "List and read invoices".into(),
    public: false,
};
let kw = Keywarden::builder()
    .database_url("sqlite://keywarden.db")
    .catalog(vec![read], Default::default())
    .build()
    .await?;
let app: Router = Router::new()
    .route(
        "/invoices",
        get(list).route_layer(RequireScopes::new(&kw, &["invoices:read"])?),
    )
    .layer(KeywardenLayer::new(kw.clone()));
# let _ = app;
kw.shutdown().await;
# Ok(())
# }
```
"#
)]
//!
//! This crate depends on `keywarden-core` and `keywarden-store` only, never on the server.

mod error;
#[cfg(feature = "axum")]
mod extract;
mod keywarden;
mod layer;
mod principal;
mod scopes;
mod source;

pub use error::{error_response, ErrorFormat, ErrorStyle};
#[cfg(feature = "axum")]
pub use extract::MissingPrincipal;
pub use keywarden::{
    BuildError, Keywarden, KeywardenBuilder, DEFAULT_DATABASE_URL, DEFAULT_PLAN, DEFAULT_TEMPLATE,
};
pub use layer::{KeywardenLayer, KeywardenService, ResponseFuture};
pub use principal::{Principal, RequestId};
pub use scopes::{RequireScopes, RequireScopesService};
pub use source::{ClientIp, InvalidKeySource, KeySource};

/// The body of a response through the layer: the wrapped service's own, or a denial's.
pub type KeywardenBody<B> = http_body_util::Either<B, http_body_util::Full<bytes::Bytes>>;

/// The header every response through the layer carries the request id in.
pub const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");
