//! A small upstream API for gateway and proxy tests: it records every request it gets
//! (method, URI, headers) and answers 200 with a JSON echo; extra routes can be merged in.

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::Router;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// The headers as received.
    pub headers: HeaderMap,
}

impl Seen {
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running upstream.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    /// Waits (up to 5 s) until the upstream has received `n` requests.
    pub async fn wait_for(&self, n: usize) {
        for _ in 0..500 {
            if self.seen.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the upstream did not receive {n} requests");
    }
}

/// An upstream that records and echoes every request.
pub async fn spawn_upstream() -> Upstream {
    spawn_upstream_with(Router::new()).await
}

/// Like [`spawn_upstream`], with `extra` routes answering their paths (still recorded).
pub async fn spawn_upstream_with(extra: Router) -> Upstream {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let app = extra
        .fallback(|req: Request| async move {
            let uri = req.uri().to_string();
            axum::Json(json!({ "upstream": true, "method": req.method().as_str(), "uri": uri }))
        })
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(Seen {
                        method: req.method().to_string(),
                        uri: req.uri().to_string(),
                        headers: req.headers().clone(),
                    });
                    let mut res = next.run(req).await;
                    res.headers_mut()
                        .insert("x-upstream", axum::http::HeaderValue::from_static("yes"));
                    res
                }
            },
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Upstream { addr, seen, task }
}
