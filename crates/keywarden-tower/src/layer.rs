//! [`KeywardenLayer`]: verifies the key of every request it wraps, in process, and either
//! passes the request on with its [`Principal`] or answers the denial itself.

use crate::error::ErrorFormat;
use crate::principal::{Principal, RequestId};
use crate::scopes::{Needed, ScopeRequirement};
use crate::source::{client_ip, KeySource};
use crate::{Keywarden, KeywardenBody, REQUEST_ID_HEADER};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response};
use keywarden_core::codes::{Code, Locale};
use keywarden_core::ip::TrustedProxies;
use keywarden_core::scopes::InvalidScopes;
use keywarden_store::request::Credentials;
use keywarden_store::verifier::{VerifyOutcome, VerifyRequest};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// How a request should be answered when it is denied, as the layer saw it; put in the
/// request extensions so [`RequireScopes`](crate::RequireScopes) answers alike.
#[derive(Clone, Debug)]
pub(crate) struct Presentation {
    /// The error format of the layer.
    pub(crate) format: Arc<ErrorFormat>,
    /// The request's language.
    pub(crate) locale: Locale,
}

/// Verifies API keys with a [`Keywarden`] handle (`docs/decision.md`) before the wrapped service
/// runs.
///
/// An allowed request reaches the service with a [`Principal`] and a [`RequestId`] in its
/// extensions; a denied one is answered here in Keywarden's error format. Every response
/// carries `X-Request-Id`, and `RateLimit-Policy`/`RateLimit` when a rate limit applied.
///
/// Scopes can be required in two ways:
/// - on this layer with [`require_scopes`](Self::require_scopes), typically as an axum
///   `route_layer`: the scopes are part of the one decision, checked before the rate limit
///   as `docs/decision.md` orders, so a request refused for a scope costs no rate-limit budget;
/// - with [`RequireScopes`](crate::RequireScopes) inside a layer that requires none: a
///   check on the principal after the decision, which has then already counted the request
///   against the key's rate limit and quota.
#[derive(Clone, Debug)]
pub struct KeywardenLayer {
    shared: Arc<Shared>,
}

/// What every service made by one layer shares.
#[derive(Clone, Debug)]
struct Shared {
    /// The engine.
    kw: Keywarden,
    /// Where keys are read, in order.
    sources: Vec<KeySource>,
    /// Proxies whose `X-Forwarded-For` is believed.
    trusted: TrustedProxies,
    /// How denials look.
    format: Arc<ErrorFormat>,
    /// Scopes every request must hold.
    need: Option<Needed>,
}

impl KeywardenLayer {
    /// A layer that accepts any valid key, read from the server's default sources
    /// (`Authorization: Bearer`, then `X-API-Key`), with errors in the envelope style.
    pub fn new(kw: Keywarden) -> Self {
        KeywardenLayer {
            shared: Arc::new(Shared {
                kw,
                sources: KeySource::defaults(),
                trusted: TrustedProxies::default(),
                format: Arc::new(ErrorFormat::default()),
                need: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// Where keys are read, in order; the first present wins (`auth.sources`). An empty
    /// list reads no key at all, so every request is refused with `missing_api_key`.
    pub fn sources(self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        let sources = sources.into_iter().collect();
        self.edit(|s| s.sources = sources)
    }

    /// Proxies whose `X-Forwarded-For` is believed when finding the client IP
    /// (`server.trusted_proxies`). None by default: the peer is the client.
    pub fn trusted_proxies(self, trusted: TrustedProxies) -> Self {
        self.edit(|s| s.trusted = trusted)
    }

    /// How denials are rendered (`[errors]`).
    pub fn error_format(self, format: ErrorFormat) -> Self {
        self.edit(|s| s.format = Arc::new(format))
    }

    /// Requires every one of `scopes` (unit scopes or aliases) as part of the decision.
    /// Fails naming each scope the catalog does not know.
    pub fn require_scopes<S: AsRef<str>>(self, scopes: &[S]) -> Result<Self, InvalidScopes> {
        let need = ScopeRequirement::all(self.shared.kw.catalog(), scopes)?;
        Ok(self.edit(|s| s.need = Some(need.needed)))
    }

    /// Requires at least one of `scopes` as part of the decision (none when empty).
    pub fn require_any_scope<S: AsRef<str>>(self, scopes: &[S]) -> Result<Self, InvalidScopes> {
        let need = ScopeRequirement::any(self.shared.kw.catalog(), scopes)?;
        Ok(self.edit(|s| s.need = Some(need.needed)))
    }
}

impl<S> Layer<S> for KeywardenLayer {
    type Service = KeywardenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeywardenService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`KeywardenLayer`] makes.
#[derive(Clone, Debug)]
pub struct KeywardenService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The future of a [`KeywardenService`] or [`RequireScopesService`](crate::RequireScopesService).
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<KeywardenBody<B>>, E>> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KeywardenService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<KeywardenBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the service that `poll_ready` readied goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // The body stays aside while the head is borrowed across the verification: a body
        // need not be `Sync`.
        let (mut parts, body) = req.into_parts();
        Box::pin(async move {
            let request_id = parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_default();
            let locale = shared.format.locale_for(&parts.headers);
            let out = verify(&shared, &parts).await;
            let decided = if out.is_valid() {
                // An allowed outcome always names its key (or a global key).
                Principal::from_outcome(&out, shared.kw.catalog()).ok_or(Code::InternalError)
            } else {
                Err(out.code)
            };
            let principal = match decided {
                Ok(p) => p,
                Err(code) => {
                    tracing::debug!(
                        request_id = %request_id,
                        code = code.as_str(),
                        key_id = out.key.as_ref().map(|k| k.id()),
                        "request denied"
                    );
                    let mut res = crate::error::error_response(
                        &shared.format,
                        code,
                        out.retry_after,
                        locale,
                        request_id.as_str(),
                    )
                    .map(KeywardenBody::Right);
                    finish(res.headers_mut(), &request_id, &out);
                    return Ok(res);
                }
            };
            let ext = &mut parts.extensions;
            ext.insert(principal);
            ext.insert(request_id.clone());
            ext.insert(Presentation {
                format: shared.format.clone(),
                locale,
            });
            let req = Request::from_parts(parts, body);
            let mut res = inner.call(req).await?.map(KeywardenBody::Left);
            finish(res.headers_mut(), &request_id, &out);
            Ok(res)
        })
    }
}

/// Runs the decision for one request. Everything is borrowed from the request: the key is
/// never copied (unless it came percent-encoded in the query) and never logged.
async fn verify(shared: &Shared, req: &Parts) -> VerifyOutcome {
    let creds = Credentials::read(
        &shared.sources,
        shared.kw.app_secret_header().map(|h| h.as_str()),
        &req.headers,
        &req.uri,
    );
    let (all, any) = match &shared.need {
        Some(Needed::All(set)) => (Some(set), None),
        Some(Needed::Any(set)) => (None, Some(set)),
        None => (None, None),
    };
    shared
        .kw
        .verify(&VerifyRequest {
            client_ip: client_ip(&req.extensions, &req.headers, &shared.trusted),
            scopes_all: all,
            scopes_any: any,
            method: req.method.as_str(),
            // The path only: a query string may carry a key (`query:` sources).
            path: req.uri.path(),
            ..creds.request()
        })
        .await
}

/// Adds the headers every response through the layer carries.
fn finish(headers: &mut HeaderMap, request_id: &RequestId, out: &VerifyOutcome) {
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    keywarden_store::reply::rate_limit_headers(headers, out);
}
