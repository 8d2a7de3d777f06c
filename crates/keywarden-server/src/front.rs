//! What a worker serves before its router (`workers.rs`): the requests that need none of
//! the router's matching or middleware are handled straight away, with the same request
//! id, error rendering, `X-Request-Id` and log line as there ([`RequestContext`]).
//!
//! - On the public listener in gateway mode, a request no route of the router can match is
//!   decided and proxied (the router's fallback is the same gateway).
//! - On the admin listener, `/v1/forward-auth` (nginx's and Traefik's conventions) is
//!   decided; its Envoy form `/v1/forward-auth/<path>` goes through the router.

use crate::gateway::{Arrival, Gateway, PROXIED};
use crate::middleware::RequestContext;
use crate::routes::forward_auth::{self, FORWARD_AUTH_PATH};
use crate::state::AppState;
use axum::response::Response;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// The requests a worker serves before its router, and how.
#[derive(Debug)]
pub struct Front {
    state: AppState,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// The gateway, taking what no route matches.
    Gateway {
        gateway: Arc<Gateway>,
        /// The beginnings of the public listener's own paths: a request whose path starts
        /// with none of them matches no route.
        routed: Vec<String>,
    },
    /// Forward-auth at its own path.
    ForwardAuth,
}

impl Front {
    /// The front of this worker's public listener, in gateway mode; `None` without it.
    pub fn for_public(state: &AppState) -> Option<Front> {
        let upstream = state.settings.gateway.clone()?;
        Some(Front {
            kind: Kind::Gateway {
                gateway: Arc::new(Gateway::new(upstream, state.in_flight.clone())),
                routed: routed_prefixes(state),
            },
            state: state.clone(),
        })
    }

    /// The front of this worker's admin listener: forward-auth.
    pub fn for_admin(state: &AppState) -> Front {
        Front {
            kind: Kind::ForwardAuth,
            state: state.clone(),
        }
    }

    /// This worker's gateway, for the router's fallback.
    pub fn gateway(&self) -> Option<Arc<Gateway>> {
        match &self.kind {
            Kind::Gateway { gateway, .. } => Some(gateway.clone()),
            Kind::ForwardAuth => None,
        }
    }

    /// Whether the request is this front's without asking the router (matched on the raw
    /// path, as the router does).
    pub fn takes<B>(&self, req: &hyper::Request<B>) -> bool {
        let path = req.uri().path();
        match &self.kind {
            Kind::Gateway { routed, .. } => !routed.iter().any(|p| path.starts_with(p.as_str())),
            Kind::ForwardAuth => path == FORWARD_AUTH_PATH,
        }
    }

    /// Serves a request it takes, from `peer`.
    pub async fn serve(&self, req: hyper::Request<Incoming>, peer: SocketAddr) -> Response {
        match &self.kind {
            Kind::Gateway { gateway, .. } => {
                // The gateway is handed the peer and the id: the request's extensions stay
                // empty, and cost nothing.
                let context = RequestContext::unmarked(&self.state, &req);
                let arrival = Arrival {
                    peer: Some(peer.ip()),
                    id: context.id().clone(),
                };
                let res = gateway.handle(&self.state, req, arrival).await;
                context.finish_decided(&self.state, res, Some(PROXIED))
            }
            Kind::ForwardAuth => {
                // As the gateway's: handed the peer directly, the request's extensions
                // stay empty, and the body is never read.
                let context = RequestContext::unmarked(&self.state, &req);
                let (parts, _body) = req.into_parts();
                let (res, allowed) =
                    forward_auth::answer(&self.state, &parts, Some(peer.ip())).await;
                context.finish_decided(&self.state, res, allowed)
            }
        }
    }
}

/// What the public router's paths start with: each path of the public listener's API
/// document (so a route added there is routed first) up to its first parameter, the
/// health checks, the document itself and the customer portal.
fn routed_prefixes(state: &AppState) -> Vec<String> {
    let doc = crate::openapi::document(crate::openapi::Listener::Public, &state.settings);
    let mut routed: Vec<String> = ["/healthz", "/readyz", "/openapi.json"]
        .into_iter()
        .map(String::from)
        .chain(
            doc["paths"]
                .as_object()
                .into_iter()
                .flat_map(|paths| paths.keys())
                .map(|p| p.split('{').next().unwrap_or(p).to_string()),
        )
        .collect();
    // The customer portal's pages are not in the document.
    if state.settings.self_service.serves("portal") {
        routed.push("/portal".into());
    }
    routed.sort();
    routed.dedup();
    // A prefix that another one starts with adds nothing.
    let mut kept: Vec<String> = Vec::new();
    for p in routed {
        if !kept.iter().any(|k| p.starts_with(k.as_str())) {
            kept.push(p);
        }
    }
    kept
}
