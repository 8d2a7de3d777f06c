//! The listeners' workers: one thread per CPU, each with its own single-threaded runtime
//! serving both listeners, and one acceptor per listener that hands each new connection to
//! the next worker in turn.
//!
//! A connection lives on one thread from its first byte to its last, and so does the
//! gateway's pool of upstream connections that thread uses: a proxied request wakes no
//! other thread, where a work-stealing runtime moves the client side, the upstream side
//! and the pool's connection task between threads (`docs/concepts.md#ways-to-use-it`; `BENCHMARKS.md` has the
//! figures), and a forward-auth or verify call is answered on the thread that read it.
//! The background tasks — the writer, cache invalidations, the limiter's reconnections —
//! stay on the main runtime; the workers share the service state.

use crate::front::Front;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use keywarden_core::clock::coarse_nanos;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::Service;

/// An accepted connection on its way to a worker, with its place among the listener's
/// open connections (given back when the connection closes).
type Handoff = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// How many workers to run: one per CPU the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// How long a listener's connections may keep it waiting, and how many it holds at once
/// (`docs/faults.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// A request's head must arrive within this of the connection opening, or of the end
    /// of its previous response (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A connection that handles no request and moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many open connections; further ones are closed as soon as accepted.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// A listener, how to build what serves it (once per worker), and the bounds of its
/// connections.
pub type Site<'a> = (TcpListener, &'a dyn Fn() -> App, ConnLimits);

/// What serves a listener on one worker: its router, and the [`Front`] that takes some
/// requests before the router sees them (the gateway's on the public listener in gateway
/// mode, forward-auth's on the admin listener).
#[derive(Clone, Debug)]
pub struct App {
    router: Router,
    front: Option<Arc<Front>>,
}

impl App {
    /// `router`, with `front` before it.
    pub fn new(router: Router, front: Option<Front>) -> Self {
        App {
            router,
            front: front.map(Arc::new),
        }
    }
}

impl From<Router> for App {
    fn from(router: Router) -> Self {
        App::new(router, None)
    }
}

/// The workers, running until the shutdown signal each was given.
#[derive(Debug)]
pub struct Workers {
    acceptors: Vec<tokio::task::JoinHandle<()>>,
    done: Vec<oneshot::Receiver<io::Result<()>>>,
}

impl Workers {
    /// Starts `count` workers, each serving every site with its own copy of the site's
    /// router, and one acceptor per site on the current runtime feeding them. Each stops
    /// accepting when its `stop` future resolves and finishes its in-flight requests.
    pub fn start<S>(sites: Vec<Site<'_>>, count: usize, stop: impl Fn() -> S) -> io::Result<Workers>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let count = count.max(1);
        let mut queues: Vec<Vec<UnboundedSender<Handoff>>> = vec![Vec::new(); sites.len()];
        let mut done = Vec::new();
        for i in 0..count {
            let mut served = Vec::new();
            for (site, (_, router, limits)) in sites.iter().enumerate() {
                let (queue, incoming) = unbounded_channel();
                queues[site].push(queue);
                served.push((incoming, router(), *limits, stop()));
            }
            let (finished, finish) = oneshot::channel();
            std::thread::Builder::new()
                .name(format!("keywarden-worker-{i}"))
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .and_then(|rt| {
                            rt.block_on(async move {
                                let tasks: Vec<_> = served
                                    .into_iter()
                                    .map(|(incoming, app, limits, stop)| {
                                        tokio::spawn(serve(incoming, app, limits, stop))
                                    })
                                    .collect();
                                for task in tasks {
                                    task.await.map_err(io::Error::other)?;
                                }
                                Ok(())
                            })
                        });
                    let _ = finished.send(result);
                })?;
            done.push(finish);
        }
        let acceptors = sites
            .into_iter()
            .zip(queues)
            .map(|((listener, _, limits), queues)| {
                let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
                tokio::spawn(accept(listener, queues, slots, stop()))
            })
            .collect();
        Ok(Workers { acceptors, done })
    }

    /// Waits for the acceptors and every worker to finish (after their stop signal).
    pub async fn wait(self) -> io::Result<()> {
        for acceptor in self.acceptors {
            let _ = acceptor.await;
        }
        let mut result = Ok(());
        for finish in self.done {
            match finish.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a worker stopped unexpectedly")),
            }
        }
        result
    }
}

/// Accepts connections until `stop` resolves, handing them to the workers in turn (a
/// worker that has gone is skipped). A connection beyond the listener's bound is closed at
/// once, so a flood of one listener cannot take the file descriptors the other needs.
async fn accept(
    listener: TcpListener,
    queues: Vec<UnboundedSender<Handoff>>,
    slots: Arc<Semaphore>,
    stop: impl Future,
) {
    tokio::pin!(stop);
    let mut next = 0usize;
    let mut full = false;
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    pause_after(&e).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !full {
                full = true;
                tracing::warn!(
                    listener = ?local,
                    "too many open connections: closing new ones until some close"
                );
            }
            // A plain HTTP/1.1 client learns why; anything else sees the connection close.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
            drop(stream);
            continue;
        };
        if full {
            full = false;
            tracing::info!(listener = ?local, "accepting connections again");
        }
        // Responses go out as soon as they are written.
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let mut handoff = (stream, peer, slot);
        for _ in 0..queues.len() {
            let queue = &queues[next % queues.len()];
            next = next.wrapping_add(1);
            match queue.send(handoff) {
                Ok(()) => break,
                Err(back) => handoff = back.0,
            }
        }
    }
}

/// After a failed accept: nothing for a connection-level error (the client gave up),
/// a short pause for anything else (out of file descriptors, say) so the loop does not spin.
async fn pause_after(e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves the connections handed to this worker for one listener until `stop` resolves,
/// then lets each finish what it is doing and waits for them all.
async fn serve(
    mut incoming: UnboundedReceiver<Handoff>,
    app: App,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
) {
    let (stopping, stop_seen) = watch::channel(false);
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut stop = pin!(stop);
    loop {
        let (stream, peer, slot) = tokio::select! {
            () = &mut stop => break,
            handoff = incoming.recv() => match handoff {
                Some(h) => h,
                // The acceptor has stopped: so does the service, by its stop signal.
                None => {
                    stop.as_mut().await;
                    break;
                }
            },
        };
        // Registered with this thread's runtime from here on.
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "a handed-over connection was lost");
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            stop_seen.clone(),
            (slot, open.clone()),
        ));
    }
    let _ = stopping.send(true);
    drop(open);
    let _ = all_closed.recv().await;
}

/// What a connection's watchdog knows: when a byte last moved, how many requests are being
/// handled, since when none has been, and whether one has been received.
///
/// Its times are noted several times per request, so they are read off the coarse clock
/// ([`coarse_nanos`]): a few milliseconds either way do not matter to timeouts of seconds.
#[derive(Debug)]
struct Activity {
    /// When the connection was opened; `last` and `free_since` count from here.
    opened: Instant,
    /// `opened` on the coarse clock.
    opened_coarse: u64,
    /// Nanoseconds from `opened` to the last byte read or written, or the last response.
    last: AtomicU64,
    /// Nanoseconds from `opened` to when the last request's response ended (0: none yet).
    /// An HTTP/1.1 connection's next head must have come within the header-read timeout
    /// of this, however many bytes of it trickle in meanwhile.
    free_since: AtomicU64,
    /// Requests being handled: their handler has not answered yet.
    busy: AtomicUsize,
    /// Responses whose body is being sent: like any idle connection, one whose client
    /// takes nothing for the idle timeout is closed.
    sending: AtomicUsize,
    /// Whether a request was received.
    served: AtomicBool,
    /// Whether the connection speaks HTTP/2, where requests share the connection and only
    /// the idle timeout applies once one was received.
    h2: AtomicBool,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            opened_coarse: coarse_nanos(),
            last: AtomicU64::new(0),
            free_since: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
        })
    }

    fn nanos_now(&self) -> u64 {
        coarse_nanos().saturating_sub(self.opened_coarse)
    }

    fn touch(&self) {
        self.last.store(self.nanos_now(), Ordering::Relaxed);
    }

    fn at(&self, nanos: &AtomicU64) -> Instant {
        self.opened + Duration::from_nanos(nanos.load(Ordering::Relaxed))
    }

    /// When the connection may be closed unless a request is being handled: a whole head
    /// is due within the header-read timeout of the connection's opening, and on HTTP/1.1
    /// of its last response's end, however many of its bytes trickle in; once a request
    /// was received it is also closed after the idle timeout without a byte moving, and
    /// only then on HTTP/2 or while a response's body is being sent.
    fn deadline(&self, limits: ConnLimits) -> Instant {
        let idle = self.at(&self.last) + limits.idle_timeout;
        let head = self.at(&self.free_since) + limits.header_read_timeout;
        if !self.served.load(Ordering::Relaxed) {
            head
        } else if self.h2.load(Ordering::Relaxed) || self.sending.load(Ordering::Relaxed) > 0 {
            idle
        } else {
            head.min(idle)
        }
    }

    /// Notes that a request or its response has ended; the connection is free once none
    /// is left.
    fn ended(&self, count: &AtomicUsize) {
        let now = self.nanos_now();
        self.last.store(now, Ordering::Relaxed);
        count.fetch_sub(1, Ordering::Relaxed);
        if self.busy.load(Ordering::Relaxed) == 0 && self.sending.load(Ordering::Relaxed) == 0 {
            self.free_since.store(now, Ordering::Relaxed);
        }
    }

    /// When the watchdog should look again, from `now`; `None` once the connection may be
    /// closed ([`Activity::deadline`]) and no request is being handled.
    fn next_look(&self, limits: ConnLimits, now: Instant) -> Option<Instant> {
        let deadline = self.deadline(limits);
        if now < deadline {
            return Some(deadline);
        }
        if self.busy.load(Ordering::Relaxed) == 0 {
            return None;
        }
        // A handler is at work: look again once it may have finished.
        let allowed = if self.served.load(Ordering::Relaxed) {
            limits.idle_timeout.min(limits.header_read_timeout)
        } else {
            limits.header_read_timeout
        };
        Some(now + allowed)
    }
}

/// A connection's watchdog: resolves once the connection may be closed and no request is
/// being handled. It looks at the connection's [`Activity`] only when its timer goes off;
/// on the task's other wakes (a request's bytes wake it several times) it only checks
/// that the timer has not, which keeps the waker the timer was given (the connection's
/// task, the only one to poll it).
struct Watchdog {
    activity: Arc<Activity>,
    limits: ConnLimits,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Whether the timer holds the task's waker.
    armed: bool,
}

impl Watchdog {
    fn new(activity: Arc<Activity>, limits: ConnLimits) -> Self {
        let first = activity.opened + limits.header_read_timeout;
        Watchdog {
            activity,
            limits,
            timer: Box::pin(tokio::time::sleep_until(first)),
            armed: false,
        }
    }
}

impl Future for Watchdog {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.armed && !this.timer.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                this.armed = true;
                return Poll::Pending;
            }
            match this.activity.next_look(this.limits, Instant::now()) {
                None => return Poll::Ready(()),
                Some(at) => this.timer.as_mut().reset(at),
            }
        }
    }
}

/// Counts a request as being handled while it lives; [`Busy::sending`] turns it into its
/// response being sent.
struct Busy(Option<Arc<Activity>>);

impl Busy {
    fn enter(activity: &Arc<Activity>, version: hyper::Version) -> Busy {
        activity.served.store(true, Ordering::Relaxed);
        if version == hyper::Version::HTTP_2 {
            activity.h2.store(true, Ordering::Relaxed);
        }
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Some(activity.clone()))
    }

    /// The handler has answered: its response's body is being sent from now on. The
    /// connection stays taken, so nothing else is noted (its bytes note their own times).
    fn sending(mut self) -> Option<Sending> {
        let activity = self.0.take()?;
        activity.sending.fetch_add(1, Ordering::Relaxed);
        activity.busy.fetch_sub(1, Ordering::Relaxed);
        Some(Sending(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(activity) = &self.0 {
            activity.ended(&activity.busy);
        }
    }
}

/// Counts a response's body as being sent while it lives.
struct Sending(Arc<Activity>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.ended(&self.0.sending);
    }
}

/// A response's body, holding its [`Sending`] until it has been sent or dropped.
struct Tracked {
    body: axum::body::Body,
    _sending: Option<Sending>,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves one connection: HTTP/1.1 (head read within the header-read timeout) or HTTP/2,
/// closed by its watchdog once idle too long, shut down gracefully when the service stops.
/// `held` is given back when it ends: its place among the listener's open connections,
/// and the worker's count of open connections.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: App,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    held: (OwnedSemaphorePermit, tokio::sync::mpsc::Sender<()>),
) {
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::enter(&seen, req.version());
        // The front's requests need no router (nor a copy of it).
        let front = app.front.as_ref().filter(|f| f.takes(&req)).cloned();
        let by = match front {
            Some(front) => By::Front(front),
            None => By::Router(app.router.clone()),
        };
        async move {
            let res = match by {
                By::Front(front) => front.serve(req, peer).await,
                By::Router(mut router) => {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut().insert(ConnectInfo(peer));
                    match router.call(req).await {
                        Ok(res) => res,
                        Err(never) => match never {},
                    }
                }
            };
            let sending = busy.sending();
            Ok::<_, std::convert::Infallible>(res.map(|body| Tracked {
                body,
                _sending: sending,
            }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // The header-read timeout is the watchdog's (`Activity::deadline`), timed per
    // connection rather than by a timer per request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    // CONNECT protocol, for HTTP/2 websockets.
    builder.http2().enable_connect_protocol();
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
    let mut expired = pin!(Watchdog::new(activity.clone(), limits));
    let mut stopping = false;
    // The stop is looked for, like the watchdog's timer, only once it may have come: the
    // wait, registered on its first poll, keeps the task's waker meanwhile.
    let probe = stop.clone();
    let mut stop_wait = pin!(stop.wait_for(|s| *s));
    let mut stop_armed = false;
    let mut stopped = std::future::poll_fn(|cx| {
        if stop_armed && !probe.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        stop_armed = true;
        stop_wait.as_mut().poll(cx).map(|changed| changed.is_ok())
    });
    loop {
        tokio::select! {
            // The connection first: it is what wakes the task, request after request.
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = &mut expired => {
                tracing::debug!(%peer, "closing an idle connection");
                break;
            }
            changed = &mut stopped, if !stopping => {
                stopping = true;
                if changed {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    drop(held);
}

/// What serves one request of a connection.
enum By {
    Front(Arc<Front>),
    Router(Router),
}

/// A connection's socket, noting in its [`Activity`] each time a byte moves.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open-file limit of this process (its soft limit), when the system says.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection bounds of the public and admin listeners, lowered when the process may
/// not open enough files for them (a proxied public connection also holds one to the
/// upstream; a few hundred are kept for the database, logs and the like), so the
/// listeners refuse connections before the process runs out of file descriptors.
pub fn fit_open_files(public: usize, admin: usize) -> (usize, usize) {
    const RESERVED: usize = 256;
    let Some(limit) = open_files_limit() else {
        return (public, admin);
    };
    if public
        .saturating_mul(2)
        .saturating_add(admin)
        .saturating_add(RESERVED)
        <= limit
    {
        return (public, admin);
    }
    let admin_fit = admin.min((limit / 8).max(1));
    let public_fit = public.min((limit.saturating_sub(RESERVED + admin_fit) / 2).max(1));
    tracing::warn!(
        open_files = limit,
        public = public_fit,
        admin = admin_fit,
        "the open-file limit is too low for server.max_connections and \
         server.admin_max_connections: the listeners hold at most this many connections \
         (raise the limit, e.g. LimitNOFILE in a systemd unit)"
    );
    (public_fit, admin_fit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::collections::BTreeSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The body of `GET /` on a fresh connection.
    async fn get_root(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn connections_are_spread_over_the_workers_and_shutdown_waits_for_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let router = || {
            Router::new().route(
                "/",
                get(|| async {
                    std::thread::current()
                        .name()
                        .unwrap_or_default()
                        .to_string()
                }),
            )
        };
        let stop = || {
            let mut rx = tx.subscribe();
            async move {
                let _ = rx.recv().await;
            }
        };
        let app = || App::from(router());
        let workers =
            Workers::start(vec![(listener, &app, ConnLimits::default())], 3, stop).unwrap();

        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            seen.insert(get_root(addr).await);
        }
        let want: BTreeSet<String> = (0..3).map(|i| format!("keywarden-worker-{i}")).collect();
        assert_eq!(seen, want, "each worker serves its turn");

        tx.send(()).unwrap();
        workers.wait().await.unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once the workers have stopped"
        );
    }
}
