//! Route-level scope requirements: [`RequireScopes`] checks the [`Principal`] a
//! [`KeywardenLayer`](crate::KeywardenLayer) put in the request, and answers 403
//! `insufficient_scope` in the same error format when it lacks one.

use crate::error::{error_response, ErrorFormat};
use crate::layer::{Presentation, ResponseFuture};
use crate::principal::{Principal, RequestId};
use crate::{Keywarden, KeywardenBody};
use http::{Request, Response};
use keywarden_core::codes::Code;
use keywarden_core::scopes::{InvalidScopes, ScopeCatalog, ScopeSet};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A compiled requirement: which scopes, and whether all or one of them.
#[derive(Clone, Debug)]
pub(crate) enum Needed {
    /// Every scope of the set.
    All(ScopeSet),
    /// At least one scope of the set (nothing when the set is empty).
    Any(ScopeSet),
}

impl Needed {
    fn met_by(&self, held: &ScopeSet) -> bool {
        match self {
            Needed::All(set) => held.contains_all(set),
            Needed::Any(set) => set.is_empty() || held.contains_any(set),
        }
    }
}

/// Scope names checked against the catalog once, at startup.
#[derive(Clone, Debug)]
pub(crate) struct ScopeRequirement {
    /// The compiled sets.
    pub(crate) needed: Needed,
}

impl ScopeRequirement {
    pub(crate) fn all<S: AsRef<str>>(
        catalog: &ScopeCatalog,
        names: &[S],
    ) -> Result<Self, InvalidScopes> {
        Ok(ScopeRequirement {
            needed: Needed::All(catalog.required(names)?),
        })
    }

    pub(crate) fn any<S: AsRef<str>>(
        catalog: &ScopeCatalog,
        names: &[S],
    ) -> Result<Self, InvalidScopes> {
        Ok(ScopeRequirement {
            needed: Needed::Any(catalog.required(names)?),
        })
    }
}

/// Requires scopes of the [`Principal`] an outer [`KeywardenLayer`](crate::KeywardenLayer)
/// verified; use it as an axum `route_layer`. A principal without them gets 403
/// `insufficient_scope`, in the outer layer's error format and language, with the same
/// request id.
///
/// The outer layer has already counted the request against the key's rate limit when this
/// check runs; to require scopes within the decision itself, use
/// [`KeywardenLayer::require_scopes`](crate::KeywardenLayer::require_scopes) instead.
///
/// A request with no principal (the outer layer is missing) is refused with 500
/// `internal_error`: failing closed is the only safe answer to that mistake.
#[derive(Clone, Debug)]
pub struct RequireScopes {
    /// The catalog the principal's scope names are read against.
    catalog: Arc<ScopeCatalog>,
    /// What the principal must hold.
    need: Arc<ScopeRequirement>,
}

impl RequireScopes {
    /// Requires every one of `scopes` (unit scopes or aliases; an alias requires its whole
    /// expansion). Fails naming each scope `kw`'s catalog does not know.
    pub fn new<S: AsRef<str>>(kw: &Keywarden, scopes: &[S]) -> Result<Self, InvalidScopes> {
        Ok(RequireScopes {
            catalog: kw.catalog().clone(),
            need: Arc::new(ScopeRequirement::all(kw.catalog(), scopes)?),
        })
    }

    /// Requires at least one of `scopes` (nothing when empty).
    pub fn any<S: AsRef<str>>(kw: &Keywarden, scopes: &[S]) -> Result<Self, InvalidScopes> {
        Ok(RequireScopes {
            catalog: kw.catalog().clone(),
            need: Arc::new(ScopeRequirement::any(kw.catalog(), scopes)?),
        })
    }

    /// Whether `principal` holds what this requirement asks for.
    pub fn allows(&self, principal: &Principal) -> bool {
        // The principal lists its effective unit scopes, so compiling them gives back the
        // key's set; a name unknown to the catalog grants nothing.
        let held = self.catalog.compile(&principal.scopes).unwrap_or_else(|_| {
            let known: Vec<&String> = principal
                .scopes
                .iter()
                .filter(|s| self.catalog.contains(s))
                .collect();
            self.catalog.compile(&known).unwrap_or_default()
        });
        self.need.needed.met_by(&held)
    }
}

impl<S> Layer<S> for RequireScopes {
    type Service = RequireScopesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopesService {
            inner,
            check: self.clone(),
        }
    }
}

/// The service [`RequireScopes`] makes.
#[derive(Clone, Debug)]
pub struct RequireScopesService<S> {
    inner: S,
    check: RequireScopes,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScopesService<S>
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
        let refusal = match req.extensions().get::<Principal>() {
            Some(p) if self.check.allows(p) => None,
            Some(_) => Some(Code::InsufficientScope),
            None => {
                tracing::error!(
                    "RequireScopes found no principal: wrap the routes in a KeywardenLayer"
                );
                Some(Code::InternalError)
            }
        };
        let Some(code) = refusal else {
            let fut = self.inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(KeywardenBody::Left)) });
        };
        let res = refuse(&req, code).map(KeywardenBody::Right);
        Box::pin(async move { Ok(res) })
    }
}

/// Renders a refusal of `req` as the outer layer would have.
pub(crate) fn refuse<B>(
    req: &Request<B>,
    code: Code,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    let ext = req.extensions();
    let request_id = ext.get::<RequestId>().cloned().unwrap_or_default();
    match ext.get::<Presentation>() {
        Some(p) => error_response(&p.format, code, None, p.locale, request_id.as_str()),
        None => {
            let format = ErrorFormat::default();
            let locale = format.locale_for(req.headers());
            error_response(&format, code, None, locale, request_id.as_str())
        }
    }
}
