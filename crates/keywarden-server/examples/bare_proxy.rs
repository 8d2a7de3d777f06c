//! A bare HTTP/1.1 keep-alive proxy made of hyper's server and hyper's client and nothing
//! else: the floor `bench/run` measures the gateway against (`hyper_proxy_*`,
//! `gateway_vs_hyper`), not part of the product. Usage: `bare_proxy LISTEN_ADDR
//! UPSTREAM_ADDR [--up 'NAME: VALUE']... [--down 'NAME: VALUE']...`, e.g. `bare_proxy
//! 127.0.0.1:9000 127.0.0.1:8080`. Each `--up` header is set on every request sent
//! upstream and each `--down` one on every response: with the headers the gateway adds,
//! the proxy does the gateway's wire work (what the upstream and the client then read)
//! and none of its deciding (`hyper_headers_proxy_*`, `gateway_vs_hyper_headers`).
//!
//! Arranged as the gateway is: one thread per CPU, each with its own single-threaded
//! runtime and its own pool of keep-alive upstream connections, so a request lives on one
//! thread from first byte to last; the connections are dealt to the threads in turn. A
//! request goes upstream as it came (method, path and query, headers less the hop-by-hop
//! ones, body streamed) and so does the response; a failure is a 502 with an empty body.
//! Each upstream connection is driven by a task of its own (`tokio::spawn`, on this thread
//! since the runtime is single-threaded; no `LocalSet` needed, and no dearer here than
//! driving the connection from the request's own task as the gateway's pool does), and goes
//! back to the pool once its response body has ended: hyper's HTTP/1 client writes no
//! further request before that, so a request handed a connection at the response head
//! would wait behind the body, however long it streams.

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::net::TcpStream;

thread_local! {
    /// This thread's idle upstream connections, the most recently used last.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

/// Headers set on every request sent upstream (`up`) and on every response (`down`).
#[derive(Default)]
struct Added {
    up: Vec<(HeaderName, HeaderValue)>,
    down: Vec<(HeaderName, HeaderValue)>,
}

fn usage() -> ! {
    eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [--up 'NAME: VALUE']... [--down 'NAME: VALUE']...");
    std::process::exit(2);
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(Ok(upstream))) = (args.get(1), args.get(2).map(|a| a.parse())) else {
        usage();
    };
    let mut added = Added::default();
    let mut rest = args.iter().skip(3);
    while let Some(flag) = rest.next() {
        let side = match flag.as_str() {
            "--up" => &mut added.up,
            "--down" => &mut added.down,
            _ => usage(),
        };
        let header = rest
            .next()
            .and_then(|h| h.split_once(':'))
            .and_then(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                    HeaderValue::from_str(v.trim()).ok()?,
                ))
            });
        side.push(header.unwrap_or_else(|| usage()));
    }
    let added: &'static Added = Box::leak(Box::new(added));
    let listener = std::net::TcpListener::bind(listen)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (queues, workers): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| {
            let (queue, accepted) = tokio::sync::mpsc::unbounded_channel();
            let worker = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(serve(accepted, upstream, added))
            });
            (queue, worker)
        })
        .unzip();
    // Connections are dealt to the threads in turn, as the gateway's acceptor spreads them
    // over its workers: threads racing to accept would take them unevenly, and a run in
    // which one thread got most of them would measure that rather than the proxy.
    for (tcp, queue) in listener.incoming().zip(queues.iter().cycle()) {
        let Ok(tcp) = tcp else {
            // Out of file descriptors, say: pause rather than spin.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        // A connection that cannot be made non-blocking is dropped, not the proxy.
        if tcp.set_nonblocking(true).is_err() {
            continue;
        }
        if queue.send(tcp).is_err() {
            break;
        }
    }
    drop(queues);
    for worker in workers {
        worker.join().expect("a worker panicked")?;
    }
    Ok(())
}

async fn serve(
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    upstream: SocketAddr,
    added: &'static Added,
) -> std::io::Result<()> {
    while let Some(tcp) = accepted.recv().await {
        let tcp = TcpStream::from_std(tcp)?;
        let _ = tcp.set_nodelay(true);
        let service = hyper::service::service_fn(move |req| proxy(req, upstream, added));
        let conn = hyper::server::conn::http1::Builder::new();
        tokio::spawn(conn.serve_connection(TokioIo::new(tcp), service));
    }
    Ok(())
}

async fn proxy(
    mut req: Request<Incoming>,
    upstream: SocketAddr,
    added: &Added,
) -> Result<Response<Proxied>, std::convert::Infallible> {
    strip_hop_by_hop(req.headers_mut());
    for (name, value) in &added.up {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    loop {
        let idle = IDLE.with_borrow_mut(Vec::pop);
        let reused = idle.is_some();
        let Some(mut sender) = (match idle {
            Some(sender) => Some(sender),
            None => connect(upstream).await.ok(),
        }) else {
            return Ok(bad_gateway());
        };
        // An idle connection the upstream has closed fails before the request leaves (here
        // or in `try_send_request`): the request goes on the next one.
        let sent = match sender.ready().await {
            Ok(()) => sender.try_send_request(req).await,
            Err(_) if reused => continue,
            Err(_) => return Ok(bad_gateway()),
        };
        match sent {
            Ok(res) => {
                let (mut head, body) = res.into_parts();
                strip_hop_by_hop(&mut head.headers);
                for (name, value) in &added.down {
                    head.headers.insert(name.clone(), value.clone());
                }
                let mut body = Proxied {
                    body: Some(body),
                    sender: Some(sender),
                };
                // A body that has ended already (none at all) may never be polled.
                if body.is_end_stream() {
                    body.give_back();
                }
                return Ok(Response::from_parts(head, body));
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => req = unsent,
                _ => return Ok(bad_gateway()),
            },
        }
    }
}

async fn connect(
    upstream: SocketAddr,
) -> Result<SendRequest<Incoming>, Box<dyn std::error::Error>> {
    let tcp = TcpStream::connect(upstream).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn bad_gateway() -> Response<Proxied> {
    let mut res = Response::new(Proxied::default());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// Takes out the fields that concern one connection only (RFC 9110, section 7.6.1); hyper
/// writes each side's framing itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = (headers.get_all(CONNECTION).iter())
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let fixed = [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE];
    let named = ["keep-alive", "proxy-connection"].map(HeaderName::from_static);
    for name in listed.into_iter().chain(fixed).chain(named) {
        headers.remove(name);
    }
}

/// The upstream's response body, streamed. Its connection goes back to the pool as soon as
/// it has ended; one dropped before its end takes its connection with it, closed.
#[derive(Default)]
struct Proxied {
    body: Option<Incoming>,
    sender: Option<SendRequest<Incoming>>,
}

impl Proxied {
    fn give_back(&mut self) {
        if let Some(sender) = self.sender.take().filter(|s| !s.is_closed()) {
            IDLE.with_borrow_mut(|idle| idle.push(sender));
        }
    }
}

impl Body for Proxied {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
        if frame.is_none() || body.is_end_stream() {
            self.give_back();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}
