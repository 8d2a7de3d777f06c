//! Gateway mode (`docs/concepts.md#ways-to-use-it`): with `gateway.upstream` set, every public request that no
//! self-service route matches is decided by the route rules and, when allowed, proxied to
//! the upstream.
//!
//! What the upstream receives: the client's request with the credential removed (the
//! `Authorization` header when the bearer source is on, each `header:NAME` source, the
//! application-secret header, each `query:NAME` parameter), every client-sent
//! `X-Keywarden-*` header removed, hop-by-hop headers dropped, and Keywarden's identity
//! headers (`X-Keywarden-Key-Id`, `-Account-Id`, `-Mode`, `-Scopes`) and `X-Request-Id`
//! added. Bodies are streamed both ways, never collected.
//!
//! What is decided is what is forwarded (`docs/gateway.md`): the path is brought to its
//! canonical form before the rules see it and forwarded in that form, a path that has none
//! is refused with 400; method overrides are stripped (or, with
//! `gateway.method_override = "decide"`, decided on); a request body goes up as the client
//! sent it, a `GET`'s included, and one that turns out malformed answers 400.
//!
//! Limits: the plan's `concurrency` caps the requests of one key in flight (a request
//! holds its slot until its response body has been sent or dropped); more are refused
//! with 429 `concurrency_limit_exceeded`. An upstream that cannot be reached gives 502
//! `upstream_unavailable`; one that takes longer than `connect_timeout_seconds` to connect
//! to, or makes no progress for `timeout_seconds` (no response headers, not reading the
//! request body, or not sending the response body), gives 504 `upstream_timeout`, or a
//! cut-off body once the response has started.

use crate::config::MethodOverride;
use crate::errors::ApiError;
use crate::extract::{client_ip, credentials, peer_ip, percent_decode};
use crate::in_flight::InFlight;
pub use crate::in_flight::InFlightTable;
use crate::middleware::{not_found, DecisionCode, RequestId};
use crate::routes::needs::{identity_headers, rate_limit_headers, route_needs, Needs};
use crate::settings::{KeySource, Settings};
use crate::state::AppState;
pub use crate::upstream::Upstream;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use keywarden_core::codes::Code;
use keywarden_core::decision::CompiledKey;
use keywarden_core::ip::{ip_text, IP_TEXT_MAX};
use keywarden_store::verifier::{Admit, VerifyOutcome, VerifyRequest};
use std::borrow::Cow;
use std::cell::RefCell;
use std::error::Error as StdError;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

mod pool;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Adds the public listener's fallback: `gateway` when in gateway mode (this worker's, which
/// its [`crate::front::Front`] shares), else 404. Routes of `router` (health, self-service) always match
/// first.
pub fn with_fallback(router: Router<AppState>, gateway: Option<Arc<Gateway>>) -> Router<AppState> {
    match gateway {
        None => router.fallback(not_found),
        Some(gateway) => router.fallback(move |State(state): State<AppState>, req: Request| {
            let gateway = gateway.clone();
            async move {
                let arrival = Arrival::of(req.extensions());
                let mut res = gateway.handle(&state, req, arrival).await;
                res.extensions_mut().insert(DecisionCode(PROXIED));
                res
            }
        }),
    }
}

/// Where a request came from and the id it was given. The router's requests carry both in
/// their extensions; the worker's front hands them over directly, so a proxied request
/// needs no extensions at all.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// The connection's peer, when served over a real socket.
    pub peer: Option<IpAddr>,
    /// The request's id.
    pub id: RequestId,
}

impl Arrival {
    /// What a request's extensions say of it.
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        Arrival {
            peer: peer_ip(extensions),
            id: extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or(RequestId(HeaderValue::from_static(""))),
        }
    }
}

/// The decision code of a request the gateway passed on (the upstream's answer is logged
/// under it whatever its status; a refusal is logged under its error's code).
pub const PROXIED: &str = "valid";

/// The proxy: a pool of HTTP/1.1 connections to the upstream and the per-key in-flight
/// counters. Each public worker builds its own (so its upstream connections are driven on
/// its own thread) around the service's one in-flight table.
#[derive(Debug)]
pub struct Gateway {
    upstream: Upstream,
    pool: Arc<pool::Pool>,
    in_flight: Arc<InFlightTable>,
}

impl Gateway {
    /// A gateway to `upstream` with a keep-alive connection pool.
    pub fn new(upstream: Upstream, in_flight: Arc<InFlightTable>) -> Self {
        let pool = pool::Pool::new(
            upstream.origin(),
            upstream.connect_timeout,
            Duration::from_secs(60),
        );
        Gateway {
            upstream,
            pool: Arc::new(pool),
            in_flight,
        }
    }

    /// Decides about one request and proxies it when allowed. Its body comes straight from
    /// hyper (the worker's front) or through the router (its fallback).
    pub async fn handle<B: Into<ClientBody>>(
        &self,
        state: &AppState,
        req: axum::http::Request<B>,
        arrival: Arrival,
    ) -> Response {
        let Arrival {
            peer,
            id: request_id,
        } = arrival;
        let (mut parts, body) = req.into_parts();
        let body: ClientBody = body.into();
        let s = &state.settings;
        // A `Transfer-Encoding` comes only with a body of unknown length: hyper takes none
        // that does not end in `chunked`, and chunked framing leaves the length open.
        let framed_by_coding = body.size_hint().exact().is_none();
        let framing = if framed_by_coding {
            check_transfer_coding(&parts.headers)
        } else {
            Ok(())
        };
        if let Err(e) = framing {
            // The body's framing is in doubt: nothing more is read from this connection.
            let mut res = e.into_response();
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return res;
        }
        let strip_overrides = self.upstream.method_override == MethodOverride::Strip;
        let overridden = if strip_overrides {
            None
        } else {
            match overridden_method(&parts.headers, parts.uri.query()) {
                Ok(m) => m,
                Err(e) => return e.into_response(),
            }
        };
        let method = overridden.as_deref().unwrap_or(parts.method.as_str());
        // The canonical path is decided, and it is what the upstream gets.
        let (needs, path) = match route_needs(state, method, parts.uri.path()) {
            Ok(routed) => routed,
            Err(e) => return ApiError::invalid(e.to_string()).into_response(),
        };

        let mut outcome = None;
        let mut slot = None;
        if !matches!(needs, Needs::Public) {
            let creds = credentials(s, &parts.headers, &parts.uri);
            let scopes = match &needs {
                Needs::Scopes(set) => Some(set),
                _ => None,
            };
            // The key's in-flight slot is taken inside the decision, after the rate limit
            // and before the quota, so a refused request consumes no quota.
            let held: std::sync::Mutex<Option<InFlight>> = std::sync::Mutex::new(None);
            let admit =
                |key: &CompiledKey, limit: u32| match self.in_flight.try_acquire(key.id(), limit) {
                    Some(h) => {
                        *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
                        true
                    }
                    None => false,
                };
            let out = state
                .verifier
                .verify(&VerifyRequest {
                    client_ip: client_ip(s, &parts.headers, peer),
                    scopes_all: scopes,
                    impossible: matches!(needs, Needs::Impossible),
                    method,
                    path: &path,
                    admit: Some(Admit(&admit)),
                    ..creds.request()
                })
                .await;
            if !out.is_valid() {
                return denied(ApiError::new(out.code).retry_after(out.retry_after), &out);
            }
            slot = held.into_inner().unwrap_or_else(|e| e.into_inner());
            outcome = Some(out);
        }

        let query = parts
            .uri
            .query()
            .map(|q| strip_query(s, q, strip_overrides));
        // A path decided as sent, with no query, to an upstream without a base path goes
        // up as the client's own (shared, not copied).
        let as_sent = match (&path, &query) {
            (Cow::Borrowed(decided), None) if self.upstream.base_path.is_empty() => parts
                .uri
                .path_and_query()
                .filter(|sent| sent.path() == *decided && sent.query().is_none())
                .cloned()
                .map(Uri::from),
            _ => None,
        };
        let Some(uri) = as_sent.or_else(|| self.upstream.target(&path, query.as_deref())) else {
            return ApiError::invalid("the request path cannot be forwarded").into_response();
        };
        let client = std::mem::take(&mut parts.headers);
        let mut headers =
            self.upstream_headers(state, client, peer, outcome.as_ref(), strip_overrides);
        // A body of unknown length goes up chunked whatever the method: left to itself,
        // the client would send a GET's as empty.
        if !body.is_end_stream() && body.size_hint().exact().is_none() {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        headers.insert(X_REQUEST_ID, request_id.0.clone());
        headers.insert(header::HOST, self.upstream.host.clone());

        // Only a body's progress needs noting: without one, the upstream's time runs from
        // the request's sending.
        let activity = (!body.is_end_stream()).then(|| Arc::new(Activity::new()));
        let mut upstream_req = hyper::Request::new(RequestBody {
            inner: body,
            activity: activity.clone(),
        });
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = headers;

        let timeout = self.upstream.timeout;
        let sent = self
            .pool
            .send(upstream_req, timeout, activity.as_deref())
            .await;
        let (res, lease) = match sent {
            Ok(sent) => sent,
            Err(pool::Failed::TimedOut) => {
                tracing::warn!(request_id = %request_id.as_str(), "upstream timed out");
                return ApiError::new(Code::UpstreamTimeout).into_response();
            }
            Err(_) if activity.as_ref().is_some_and(|a| a.client_failed()) => {
                // The client's body broke off or was malformed (a bad chunk size): its
                // fault, not the upstream's.
                return ApiError::invalid("the request body is malformed or incomplete")
                    .into_response();
            }
            Err(pool::Failed::Error(e)) => {
                let code = if is_timeout(&*e) {
                    Code::UpstreamTimeout
                } else {
                    Code::UpstreamUnavailable
                };
                tracing::warn!(request_id = %request_id.as_str(), error = %error_chain(&*e), "upstream request failed");
                return ApiError::new(code).into_response();
            }
        };

        let (mut rparts, incoming) = res.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let body = ResponseBody {
            inner: incoming,
            idle: timeout,
            waiting: false,
            slot,
            lease: Some(lease),
            request_id,
        };
        let mut response = Response::from_parts(rparts, Body::new(body));
        if let Some(out) = &outcome {
            rate_limit_headers(response.headers_mut(), out);
        }
        response
    }

    /// Turns the client's headers into the upstream's, in place: hop-by-hop headers,
    /// credentials, `Host`, `Expect`, every `X-Keywarden-*` header, method overrides when
    /// `strip_overrides`, and (from a peer that is not a trusted proxy) the client's own
    /// forwarding claims stay behind; the forwarding and identity headers are added.
    fn upstream_headers(
        &self,
        state: &AppState,
        mut headers: HeaderMap,
        peer: Option<IpAddr>,
        outcome: Option<&VerifyOutcome>,
        strip_overrides: bool,
    ) -> HeaderMap {
        let s = &state.settings;
        // None when the peer is unknown: the client's forwarding headers then pass as sent.
        let trusted = peer.map(|p| s.trusted_proxies.contains(p));
        let stays_behind = |name: &HeaderName| {
            is_hop_by_hop(name)
                || name == header::EXPECT
                || is_credential(s, name)
                || name.as_str().starts_with("x-keywarden-")
                || (strip_overrides && METHOD_OVERRIDES.contains(name))
                // A client's own forwarding claims are not passed on.
                || (trusted == Some(false)
                    && (name == X_FORWARDED_PROTO
                        || name == X_FORWARDED_HOST
                        || name == header::FORWARDED))
        };
        remove_headers(&mut headers, stays_behind);
        // Room for the forwarding and identity headers, so the map grows once at most.
        headers.reserve(8);
        // The last `Host` the client sent becomes `X-Forwarded-Host`.
        let host = match headers.entry(header::HOST) {
            Entry::Occupied(e) => e.remove_entry_mult().1.last(),
            Entry::Vacant(_) => None,
        };

        if let Some(peer) = peer {
            // A trusted proxy's `X-Forwarded-For` is extended; anyone else's is replaced.
            let mut prior_for = String::new();
            if trusted == Some(true) {
                for v in headers.get_all(X_FORWARDED_FOR) {
                    if let Ok(v) = v.to_str() {
                        if !prior_for.is_empty() {
                            prior_for.push_str(", ");
                        }
                        prior_for.push_str(v);
                    }
                }
            }
            let value = if prior_for.is_empty() {
                Ok(peer_text(peer))
            } else {
                let mut buf = [0u8; IP_TEXT_MAX];
                let peer = ip_text(peer, &mut buf);
                HeaderValue::from_str(&format!("{prior_for}, {peer}"))
            };
            // Replacing every value the client sent.
            match value {
                Ok(v) => headers.insert(X_FORWARDED_FOR, v),
                Err(_) => headers.remove(X_FORWARDED_FOR),
            };
        }
        if let Some(h) = host {
            headers.entry(X_FORWARDED_HOST).or_insert(h);
        }
        headers
            .entry(X_FORWARDED_PROTO)
            .or_insert(HeaderValue::from_static("http"));
        if let Some(out) = outcome {
            identity_headers(state, &mut headers, out);
        }
        headers
    }
}

/// `peer` as a header value. The last one made on this thread is kept, since a
/// connection's requests, and often the next connection's, come from the same peer.
fn peer_text(peer: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, text)) if *ip == peer => text.clone(),
        _ => {
            let mut buf = [0u8; IP_TEXT_MAX];
            let text = HeaderValue::from_str(ip_text(peer, &mut buf))
                .unwrap_or(HeaderValue::from_static(""));
            *last = Some((peer, text.clone()));
            text
        }
    })
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `name` is a header a credential may be presented in.
fn is_credential(s: &Settings, name: &HeaderName) -> bool {
    let named = |h: &str| name.as_str() == h;
    s.sources.iter().any(|source| match source {
        KeySource::Bearer => name == header::AUTHORIZATION,
        KeySource::Header(h) => named(h),
        KeySource::Query(_) => false,
    }) || s.app_secret_header.as_deref().is_some_and(named)
}

/// A refusal, with the rate-limit figures when a limit applied.
fn denied(err: ApiError, out: &VerifyOutcome) -> Response {
    let mut res = err.into_response();
    rate_limit_headers(res.headers_mut(), out);
    res
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The header names one value of a `Connection` header lists (hop-by-hop as well).
fn connection_named(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        // The usual options, not header names.
        .filter(|n| !n.eq_ignore_ascii_case(b"keep-alive") && !n.eq_ignore_ascii_case(b"close"))
        .filter_map(|n| HeaderName::from_bytes(n).ok())
}

/// Removes the headers `goes` picks and those a `Connection` header names. The map is
/// read once; only the names that go are looked up again.
fn remove_headers(headers: &mut HeaderMap, goes: impl Fn(&HeaderName) -> bool) {
    // Most messages lose a header or two: their names are kept on the stack.
    let mut few: [Option<HeaderName>; 4] = Default::default();
    let mut more = Vec::new();
    let mut last: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        if *name == header::CONNECTION {
            more.extend(connection_named(value));
        }
        // A name with several values comes once per value, one after the other.
        if last == Some(name) || !goes(name) {
            continue;
        }
        last = Some(name);
        match few.iter_mut().find(|f| f.is_none()) {
            Some(free) => *free = Some(name.clone()),
            None => more.push(name.clone()),
        }
    }
    for name in few.into_iter().flatten().chain(more) {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_headers(headers, is_hop_by_hop);
}

/// The query string without the parameters of `query:NAME` sources and, when
/// `strip_overrides`, without `_method` parameters (however their name is encoded).
fn strip_query(s: &Settings, query: &str, strip_overrides: bool) -> String {
    let names: Vec<&str> = s
        .sources
        .iter()
        .filter_map(|src| match src {
            KeySource::Query(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let may_override = strip_overrides
        && (query.contains('%')
            || query
                .as_bytes()
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"_method")));
    if names.is_empty() && !may_override {
        return query.to_string();
    }
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let stripped = strip_overrides && is_method_param(name);
            !(names.contains(&name) || stripped)
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The headers that ask an upstream framework to take the request for another method.
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-http-method"),
];

/// Whether a query parameter's (raw) name is `_method`, in any encoding or case.
fn is_method_param(raw: &str) -> bool {
    raw.len() >= 7 && percent_decode(raw).eq_ignore_ascii_case("_method")
}

/// The method a request's overrides name, upper-cased; `None` when it has none. Every
/// override must name one and the same method.
fn overridden_method(headers: &HeaderMap, query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut found: Option<String> = None;
    let mut add = |what: &str, value: &str| {
        let value = value.trim();
        let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if value.is_empty() || !value.chars().all(is_tchar) {
            return Err(ApiError::invalid(format!("{what}: not an HTTP method")));
        }
        let value = value.to_ascii_uppercase();
        match &found {
            Some(f) if *f != value => Err(ApiError::invalid(
                "the method overrides name different methods",
            )),
            Some(_) => Ok(()),
            None => {
                found = Some(value);
                Ok(())
            }
        }
    };
    for name in &METHOD_OVERRIDES {
        for value in headers.get_all(name) {
            add(name.as_str(), value.to_str().unwrap_or_default())?;
        }
    }
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if is_method_param(k) {
            add("_method", &percent_decode(v))?;
        }
    }
    Ok(found)
}

/// Refuses a `Transfer-Encoding` other than a single `chunked`: the header does not go up
/// (it is hop-by-hop), so any other coding would reach the upstream undeclared.
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ApiError::invalid(
            "Transfer-Encoding: only \"chunked\" is accepted",
        )),
    }
}

fn is_timeout(e: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
}

fn error_chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// When the upstream last made progress taking the request, and whether the client's
/// body failed on the way.
#[derive(Debug)]
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    client_failed: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            client_failed: AtomicBool::new(false),
        }
    }

    fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The client's request body as the gateway got it: straight from hyper, or boxed by the
/// router. Kept as it came, so the front's requests are not boxed again.
#[derive(Debug)]
pub enum ClientBody {
    /// From the worker's front.
    Incoming(Incoming),
    /// Through the router.
    Routed(Body),
}

impl From<Incoming> for ClientBody {
    fn from(b: Incoming) -> Self {
        ClientBody::Incoming(b)
    }
}

impl From<Body> for ClientBody {
    fn from(b: Body) -> Self {
        ClientBody::Routed(b)
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut() {
            ClientBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(axum::Error::new),
            ClientBody::Routed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Incoming(b) => b.is_end_stream(),
            ClientBody::Routed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Incoming(b) => b.size_hint(),
            ClientBody::Routed(b) => b.size_hint(),
        }
    }
}

/// The client's body on its way up, noting each chunk the upstream takes (in `activity`,
/// when there is a body at all).
#[derive(Debug)]
pub struct RequestBody {
    inner: ClientBody,
    activity: Option<Arc<Activity>>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(activity) = &this.activity else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        // Being asked for more is progress: the upstream is taking the body.
        activity.touch();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => activity.touch(),
            Poll::Ready(Some(Err(_))) => activity.client_failed.store(true, Ordering::Relaxed),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's body on its way down: drives its connection, holds the key's in-flight
/// slot until it ends or is dropped, gives up when the upstream sends nothing for the
/// timeout, and gives the connection back to the pool once the body has been read to its
/// end.
struct ResponseBody {
    inner: Incoming,
    idle: Duration,
    /// Whether the upstream keeps the body waiting (the lease's timer is then set).
    waiting: bool,
    slot: Option<InFlight>,
    lease: Option<pool::Lease>,
    request_id: RequestId,
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body not read to its end leaves its connection unusable: it closes with it.
        if let Some(lease) = self.lease.take() {
            if self.inner.is_end_stream() {
                lease.give_back();
            }
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            // The connection reads the body only when driven, here, on the client's task.
            if let Some(lease) = &mut this.lease {
                lease.drive(cx);
                polled = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.slot = None;
                if let Some(lease) = this.lease.take() {
                    lease.give_back();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.slot = None;
                tracing::warn!(request_id = %this.request_id.as_str(), error = %e, "upstream response body failed");
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                // The clock runs only while waiting for the upstream, not while the client
                // is slow to take what was already sent; a chunk already at hand starts no
                // clock at all.
                let Some(lease) = &mut this.lease else {
                    return Poll::Pending;
                };
                if !this.waiting {
                    this.waiting = true;
                    lease.timer().reset(tokio::time::Instant::now() + this.idle);
                }
                if lease.timer().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.slot = None;
                tracing::warn!(request_id = %this.request_id.as_str(), "upstream stopped sending the response body");
                Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the upstream stopped sending the response body",
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn every_hop_by_hop_header_goes_however_many_there_are() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-a, keep-alive"),
            ("connection", "X-B"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("te", "gzip"),
            ("trailer", "x-c"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-b", "3"),
            ("x-c", "4"),
            ("accept", "*/*"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-c"], "only end-to-end headers stay");
        assert_eq!(h.get_all("x-c").iter().count(), 1);
    }

    #[test]
    fn method_overrides_are_found_and_must_agree() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let none = HeaderMap::new();
        assert_eq!(overridden_method(&none, None).unwrap(), None);
        assert_eq!(
            overridden_method(&none, Some("a=1&method=x")).unwrap(),
            None
        );
        let h = headers(&[("x-http-method-override", "delete")]);
        assert_eq!(
            overridden_method(&h, Some("_method=DELETE"))
                .unwrap()
                .as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            overridden_method(&none, Some("a=1&%5Fmethod=put"))
                .unwrap()
                .as_deref(),
            Some("PUT")
        );
        for (h, q) in [
            (
                headers(&[("x-method-override", "GET")]),
                Some("_method=DELETE"),
            ),
            (
                headers(&[("x-http-method", "GET"), ("x-http-method", "PUT")]),
                None,
            ),
            (headers(&[("x-http-method-override", "GET, PUT")]), None),
            (headers(&[("x-http-method-override", "")]), None),
            (none.clone(), Some("_method=")),
        ] {
            assert!(overridden_method(&h, q).is_err(), "{h:?} {q:?}");
        }
    }

    #[test]
    fn only_a_single_chunked_coding_is_accepted() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            check_transfer_coding(&h).is_ok()
        };
        assert!(with(&[]));
        assert!(with(&["chunked"]));
        assert!(with(&[" Chunked "]));
        assert!(!with(&["gzip, chunked"]));
        assert!(!with(&["chunked", "chunked"]));
        assert!(!with(&["identity"]));
    }
}
