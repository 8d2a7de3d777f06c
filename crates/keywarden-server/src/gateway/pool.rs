//! The gateway's keep-alive connections to its upstream.
//!
//! Each connection carries one request at a time. A request leases a connection (an idle
//! one, else a new one) and gives it back when its response body has ended; a response
//! abandoned before its end takes its connection with it, which is then closed. Each
//! public worker has its own pool, and a connection has no task of its own: the request
//! using it drives it (writes the request, reads the response) from the client
//! connection's task, so a proxied request wakes one task, not two, and a lease costs one
//! uncontended lock.
//! Each connection keeps one timer for the requests it carries, set again for each: a
//! deadline later than the last only moves a number, where a timer per request is put into
//! and taken out of the runtime's timer wheel.
//! Connections idle for `idle_timeout` are closed: by the next lease or return that meets
//! them, and otherwise by a reaper task that runs while the pool lives, so a burst of
//! traffic does not leave its connections open once it has passed.

use super::{Activity, RequestBody};
use axum::http::Uri;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use keywarden_core::clock::{coarse_between, coarse_nanos};
use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower::Service;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Connections kept idle, at most.
const MAX_IDLE: usize = 256;

/// The idle connections to one upstream, and how to open more.
#[derive(Debug)]
pub(super) struct Pool {
    connector: HttpConnector,
    /// `http://authority/`: where the connector connects.
    origin: Uri,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// Whether the reaper task has been started (on the first connection given back).
    reaping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    /// When it was given back ([`coarse_nanos`]).
    since: u64,
}

/// One keep-alive connection: the handle requests are sent on, and the connection itself,
/// which moves only when the task using it drives it ([`Conn::drive`]).
#[derive(Debug)]
struct Conn {
    sender: SendRequest<RequestBody>,
    driver: Connection<TokioIo<TcpStream>, RequestBody>,
    /// Whether the connection has ended (closed by either side, or failed).
    ended: bool,
    /// The wait for the upstream of the request using the connection: for its response's
    /// head, then for each chunk of its body.
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    /// Writes what is to be written and reads what has arrived, as far as the socket
    /// allows; `cx` is woken when it can go further.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if self.ended {
            return;
        }
        if let Poll::Ready(result) = Pin::new(&mut self.driver).poll(cx) {
            self.ended = true;
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        }
    }

    /// Whether the connection can take a request now (`Some(false)`: it has ended), looked
    /// at without registering any waker; `None` when it cannot tell yet.
    fn ready_now(&mut self) -> Option<bool> {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx);
        if self.ended {
            return Some(false);
        }
        match self.sender.poll_ready(&mut cx) {
            Poll::Ready(r) => Some(r.is_ok()),
            Poll::Pending => None,
        }
    }

    fn is_closed(&self) -> bool {
        self.ended || self.sender.is_closed()
    }
}

/// A connection one request is using; [`Lease::give_back`] returns it to its pool.
#[derive(Debug)]
pub(super) struct Lease {
    /// Boxed, so handing it on between the pool, the request and its body moves a pointer.
    conn: Box<Conn>,
    pool: Arc<Pool>,
}

impl Lease {
    /// Returns the connection for the next request (its response has been read whole).
    pub(super) fn give_back(self) {
        self.pool.put(self.conn);
    }

    /// Moves the connection along (the response body is read from it), waking `cx` when
    /// it can go further.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        self.conn.drive(cx);
    }

    /// The connection's timer, for the wait for the response's body.
    pub(super) fn timer(&mut self) -> Pin<&mut Sleep> {
        self.conn.timer.as_mut()
    }
}

/// Why no response came.
#[derive(Debug)]
pub(super) enum Failed {
    /// The upstream took longer than the timeout (from the request's sending, or from the
    /// last progress of its body) to answer, or to take a new connection.
    TimedOut,
    /// The connection or the exchange failed.
    Error(BoxError),
}

impl Pool {
    pub(super) fn new(origin: Uri, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        Pool {
            connector,
            origin,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
        }
    }

    /// Sends `req` on an idle connection, or a new one, and waits for the response's head,
    /// driving the connection meanwhile. A request that never left because its idle
    /// connection had closed meanwhile goes on the next one. The upstream has `timeout`
    /// from now to answer, or from the last progress of the request's body (`progress`).
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: hyper::Request<RequestBody>,
        timeout: Duration,
        progress: Option<&Activity>,
    ) -> Result<(Response<Incoming>, Lease), Failed> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (mut conn, reused) = match self.take_idle().await {
                Some(c) => (c, true),
                None => match tokio::time::timeout_at(deadline, self.connect(deadline)).await {
                    Ok(made) => (made.map_err(Failed::Error)?, false),
                    Err(_) => return Err(Failed::TimedOut),
                },
            };
            conn.timer.as_mut().reset(deadline);
            let mut sent = pin!(conn.sender.try_send_request(req));
            let mut woken = false;
            let result = poll_fn(|cx| {
                let mut unwoken = Context::from_waker(Waker::noop());
                // Only the connection, driven here, answers: the answer is looked for after
                // each drive and needs no waker of its own (woken by the drive in this very
                // poll, it would only poll the task again for nothing).
                //
                // Once woken (most often by the answer's arrival), the connection is first
                // driven without the task's waker: what it registers while taking in the
                // answer (the response body's sender waiting for its reader) would wake
                // the task again for nothing as soon as the body is read. The body is read
                // by `ResponseBody`, which drives the connection with the task's waker
                // before it waits. Without an answer yet, the drive below registers the
                // task's waker for the socket.
                if woken {
                    conn.drive(&mut unwoken);
                    if let Poll::Ready(r) = sent.as_mut().poll(&mut unwoken) {
                        return Poll::Ready(Some(r));
                    }
                }
                woken = true;
                // Taken up by the connection as soon as it is driven.
                conn.drive(cx);
                if let Poll::Ready(r) = sent.as_mut().poll(&mut unwoken) {
                    return Poll::Ready(Some(r));
                }
                // Polled only while the head is awaited, so it holds this task's waker.
                while conn.timer.as_mut().poll(cx).is_ready() {
                    let now = tokio::time::Instant::now();
                    let until = progress.map_or(now, |a| (a.last() + timeout).into());
                    if until <= now {
                        return Poll::Ready(None);
                    }
                    conn.timer.as_mut().reset(until);
                }
                Poll::Pending
            })
            .await;
            match result {
                Some(Ok(res)) => {
                    let lease = Lease {
                        conn,
                        pool: self.clone(),
                    };
                    return Ok((res, lease));
                }
                Some(Err(mut e)) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(Failed::Error(Box::new(e.into_error()))),
                },
                None => return Err(Failed::TimedOut),
            }
        }
    }

    /// The most recently used idle connection that is still open and ready.
    async fn take_idle(&self) -> Option<Box<Conn>> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if conn.is_closed() || coarse_between(since, coarse_nanos()) >= self.idle_timeout {
                continue;
            }
            // Ready as soon as the connection has seen the previous response end; one the
            // upstream closed while it sat idle ends here, when it reads that. Looked at
            // first without the task's waker: the connection's wish for the next request,
            // signalled as this drive takes it, would otherwise wake the task for nothing.
            if let Some(ready) = conn.ready_now() {
                if ready {
                    return Some(conn);
                }
                continue;
            }
            let ready = poll_fn(|cx| {
                conn.drive(cx);
                if conn.ended {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, deadline: tokio::time::Instant) -> Result<Box<Conn>, BoxError> {
        let io = self.connector.clone().call(self.origin.clone()).await?;
        // A request's head and body are copied into one buffer and written with plain
        // writes (a small request in one): most requests a gateway forwards have no body
        // or a small one, and queueing the pieces for a vectored write costs more than
        // copying them.
        let (sender, driver) = http1::Builder::new()
            .writev(false)
            .handshake::<_, RequestBody>(io)
            .await?;
        Ok(Box::new(Conn {
            sender,
            driver,
            ended: false,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }))
    }

    fn put(self: &Arc<Self>, conn: Box<Conn>) {
        if conn.is_closed() {
            return;
        }
        let now = coarse_nanos();
        {
            let mut idle = self.lock();
            // The least recently used sit at the front: those idle too long are closed.
            let stale = idle
                .iter()
                .take_while(|i| coarse_between(i.since, now) >= self.idle_timeout)
                .count();
            idle.drain(..stale);
            if idle.len() < MAX_IDLE {
                idle.push(Idle { conn, since: now });
            }
        }
        if !self.reaping.load(Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Starts the task that closes connections left idle too long when no request comes
    /// to meet them. It holds the pool weakly and ends with it.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        // A connection is closed at most half a timeout late.
        let every = self.idle_timeout / 2;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap(coarse_nanos());
            }
        });
    }

    /// Closes the idle connections that have been idle for `idle_timeout` or have ended.
    fn reap(&self, now: u64) {
        self.lock()
            .retain(|i| !i.conn.is_closed() && coarse_between(i.since, now) < self.idle_timeout);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream answering each request with a 2-byte body; counts its connections and
    /// closes each one after `close_after` requests when set.
    async fn upstream(close_after: Option<usize>) -> (Uri, Arc<AtomicUsize>) {
        upstream_answering(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            close_after,
        )
        .await
    }

    /// Like [`upstream`], answering every request with `res`.
    async fn upstream_answering(
        res: &'static [u8],
        close_after: Option<usize>,
    ) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut served = 0;
                    let mut seen = Vec::new();
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if tcp.write_all(res).await.is_err() {
                                return;
                            }
                            served += 1;
                            if close_after == Some(served) {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/").parse().unwrap(), accepted)
    }

    fn pool(origin: Uri) -> Arc<Pool> {
        pool_idle_for(origin, Duration::from_secs(60))
    }

    /// A pool whose connections are closed after `idle` without a request.
    fn pool_idle_for(origin: Uri, idle: Duration) -> Arc<Pool> {
        Arc::new(Pool::new(origin, Duration::from_secs(1), idle))
    }

    fn get() -> hyper::Request<RequestBody> {
        let mut req = hyper::Request::new(RequestBody {
            inner: Body::empty().into(),
            activity: None,
        });
        *req.uri_mut() = Uri::from_static("/");
        req
    }

    /// Sends one request and reads its body to the end, giving the connection back.
    async fn round_trip(pool: &Arc<Pool>) -> Vec<u8> {
        let body = proxied(pool).await.collect().await.unwrap().to_bytes();
        body.to_vec()
    }

    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        let (origin, accepted) = upstream(None).await;
        let pool = pool(origin);
        for _ in 0..5 {
            assert_eq!(round_trip(&pool).await, b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_response_left_unread_takes_its_connection_with_it() {
        let (origin, accepted) = upstream(None).await;
        let pool = pool(origin);
        let (res, lease) = pool
            .send(get(), Duration::from_secs(5), None)
            .await
            .unwrap();
        drop((res, lease));
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(round_trip(&pool).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (origin, accepted) = upstream(Some(1)).await;
        let pool = pool(origin);
        assert_eq!(round_trip(&pool).await, b"ok");
        // The upstream has closed that connection while it sat idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(round_trip(&pool).await, b"ok");
        assert_eq!(round_trip(&pool).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_not_used() {
        let (origin, accepted) = upstream(None).await;
        let pool = pool_idle_for(origin, Duration::from_millis(20));
        assert_eq!(round_trip(&pool).await, b"ok");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(round_trip(&pool).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn connections_left_idle_are_closed_without_another_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        // The upstream answers one request, then reports when the client closes.
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            let _ = closed_tx.send(n);
        });
        let pool = pool_idle_for(origin, Duration::from_millis(40));
        assert_eq!(round_trip(&pool).await, b"ok");
        assert_eq!(pool.idle_count(), 1);
        let eof = tokio::time::timeout(Duration::from_secs(5), closed_rx)
            .await
            .expect("the idle connection is closed by the reaper")
            .unwrap();
        assert_eq!(
            eof, 0,
            "the upstream sees the connection end, not a request"
        );
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn the_reaper_ends_with_its_pool() {
        let (origin, _) = upstream(None).await;
        let pool = pool_idle_for(origin, Duration::from_millis(10));
        assert_eq!(round_trip(&pool).await, b"ok");
        let weak = Arc::downgrade(&pool);
        drop(pool);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            weak.upgrade().is_none(),
            "the reaper holds no strong reference"
        );
    }

    /// The body the gateway answers with, around an upstream response.
    async fn proxied(pool: &Arc<Pool>) -> crate::gateway::ResponseBody {
        let (res, lease) = pool
            .send(get(), Duration::from_secs(5), None)
            .await
            .unwrap();
        crate::gateway::ResponseBody {
            inner: res.into_body(),
            idle: Duration::from_secs(5),
            waiting: false,
            slot: None,
            lease: Some(lease),
            request_id: crate::middleware::RequestId(axum::http::HeaderValue::from_static("")),
        }
    }

    #[tokio::test]
    async fn a_proxied_body_gives_its_connection_back_when_read_to_its_end() {
        let (origin, accepted) = upstream(None).await;
        let pool = pool(origin);
        for _ in 0..3 {
            let body = proxied(&pool).await.collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(pool.idle_count(), 1);
        }
        // Dropped before it was read: that connection is not reused.
        drop(proxied(&pool).await);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(round_trip(&pool).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_empty_body_gives_its_connection_back_without_being_read() {
        let (origin, accepted) = upstream_answering(b"HTTP/1.1 204 No Content\r\n\r\n", None).await;
        let pool = pool(origin);
        for _ in 0..3 {
            // A server answering with no body never polls it: dropping it is its end.
            let body = proxied(&pool).await;
            assert!(hyper::body::Body::is_end_stream(&body.inner));
            drop(body);
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_upstream_refusing_connections_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = pool(format!("http://{addr}/").parse().unwrap());
        assert!(pool
            .send(get(), Duration::from_secs(5), None)
            .await
            .is_err());
        assert_eq!(pool.idle_count(), 0);
    }
}
