//! The listeners' workers: one thread per CPU, each with its own single-threaded runtime
//! serving both listeners, and one acceptor per listener that hands each new connection to
//! the next worker in turn.
//!
//! A connection lives on one thread from its first byte to its last, and so does the
//! gateway's pool of upstream connections that thread uses: a proxied request wakes no
//! other thread, where a work-stealing runtime moves the client side, the upstream side
//! and the pool's connection task between threads (SPEC §1; `BENCHMARKS.md` has the
//! figures), and a forward-auth or verify call is answered on the thread that read it.
//! The background tasks — the writer, cache invalidations, the limiter's reconnections —
//! stay on the main runtime; the workers share the service state.

use axum::serve::{Listener, ListenerExt};
use axum::Router;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

/// An accepted connection on its way to a worker.
type Handoff = (std::net::TcpStream, SocketAddr);

/// How many workers to run: one per CPU the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// A listener and how to build the router that serves it (once per worker).
pub type Site<'a> = (TcpListener, &'a dyn Fn() -> Router);

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
            for (site, (listener, router)) in sites.iter().enumerate() {
                let (queue, incoming) = unbounded_channel();
                queues[site].push(queue);
                let conns = Connections {
                    incoming,
                    local: listener.local_addr()?,
                };
                let app = router().into_make_service_with_connect_info::<SocketAddr>();
                served.push((conns, app, stop()));
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
                                    .map(|(conns, app, stop)| {
                                        tokio::spawn(
                                            axum::serve(conns.tap_io(|_| ()), app)
                                                .with_graceful_shutdown(stop)
                                                .into_future(),
                                        )
                                    })
                                    .collect();
                                for task in tasks {
                                    task.await.map_err(io::Error::other)??;
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
            .map(|((listener, _), queues)| tokio::spawn(accept(listener, queues, stop())))
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
/// worker that has gone is skipped).
async fn accept(listener: TcpListener, queues: Vec<UnboundedSender<Handoff>>, stop: impl Future) {
    tokio::pin!(stop);
    let mut next = 0usize;
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
        // Responses go out as soon as they are written.
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let mut handoff = (stream, peer);
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
    tracing::error!(error = %e, "accepting a public connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One worker's side of the acceptor: connections handed over to this thread.
struct Connections {
    incoming: UnboundedReceiver<Handoff>,
    local: SocketAddr,
}

impl Listener for Connections {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.incoming.recv().await {
                // Registered with this thread's runtime from here on.
                Some((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(s) => return (s, peer),
                    Err(e) => tracing::warn!(error = %e, "a handed-over connection was lost"),
                },
                // The acceptor has stopped: so does the service, by its stop signal.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
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
        let workers = Workers::start(vec![(listener, &router)], 3, stop).unwrap();

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
