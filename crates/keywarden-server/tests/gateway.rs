//! Gateway mode: the public listener decides each request by the route rules and proxies
//! allowed ones to a real upstream (an in-test HTTP server that records what it gets).

mod common;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use common::upstream::{spawn_upstream, spawn_upstream_with, Upstream};
use common::{spawn_app_with, TestApp};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest::Method;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, Semaphore};

/// The memory test measures the whole process, so it runs alone.
static SERIAL: RwLock<()> = RwLock::const_new(());

const MIB: usize = 1024 * 1024;

/// A gateway to `upstream` (under `/base`) with route rules and every key source on.
fn config(upstream: &str, timeout: u64, extra: &str) -> String {
    format!(
        r#"
[gateway]
upstream = "{upstream}/base"
timeout_seconds = {timeout}
connect_timeout_seconds = 1

[auth]
sources = ["bearer", "header:X-API-Key", "query:api_key"]
app_secret_header = "X-App-Secret"

[scopes]
catalog = [{{ name = "invoices:read", description = "Read invoices" }}]

[[routes]]
path = "/public/**"
auth = "none"

[[routes]]
methods = ["GET"]
path = "/invoices/**"
scopes = ["invoices:read"]

{extra}
"#
    )
}

async fn gateway(up: &Upstream, timeout: u64, extra: &str) -> TestApp {
    spawn_app_with(&config(&up.url(), timeout, extra)).await
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `GET path`, answered 504 once the gateway's one-second timeout has run, not before and
/// not long after.
async fn times_out(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    let started = Instant::now();
    let res = app.public(Method::GET, path, token, None).await;
    let took = started.elapsed();
    assert_eq!(res.status(), 504);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    res
}

async fn scoped_key(app: &TestApp, account: &str, scopes: &[&str]) -> String {
    let v = app
        .key(
            account,
            json!({ "mode": "live", "name": "scoped", "scopes": scopes }),
        )
        .await;
    v["api_key"].as_str().unwrap().to_string()
}

/// No header and no part of the URI the upstream saw carries `token`.
fn assert_no_credential(seen: &common::upstream::Seen, token: &str) {
    assert!(!seen.uri.contains(token), "{}", seen.uri);
    for name in ["authorization", "x-api-key", "x-app-secret"] {
        assert!(seen.header(name).is_none(), "{name} reached the upstream");
    }
    for (name, value) in &seen.headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(token),
            "the credential reached the upstream in {name}"
        );
    }
}

#[tokio::test]
async fn allowed_requests_reach_the_upstream_with_identity_and_without_credential() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream().await;
    let app = gateway(&up, 5, "").await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;

    // The key in every source at once, and the app-secret header: none goes up.
    let res = app
        .client
        .get(format!("{}/invoices/7?a=1&api_key={token}&b=2", app.public))
        .bearer_auth(&token)
        .header("X-API-Key", &token)
        .header("X-App-Secret", "app-secret-value")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-upstream"), Some("yes"));
    assert!(
        header(&res, "ratelimit").is_some(),
        "RateLimit on proxied answers"
    );
    assert!(header(&res, "ratelimit-policy").is_some());
    let request_id = header(&res, "x-request-id").unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["uri"], "/base/invoices/7?a=1&b=2");

    let seen = up.last();
    assert_no_credential(&seen, &token);
    assert!(seen.header("x-app-secret").is_none());
    assert_eq!(seen.header("x-keywarden-key-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-keywarden-account-id"), Some(acc.as_str()));
    assert_eq!(seen.header("x-keywarden-mode"), Some("live"));
    assert!(seen
        .header("x-keywarden-scopes")
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(seen.header("x-request-id"), Some(request_id.as_str()));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(app.public.trim_start_matches("http://"))
    );
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));

    // The key in the query string only.
    let res = app
        .client
        .post(format!("{}/orders?api_key={token}", app.public))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/base/orders");
    assert_no_credential(&seen, &token);
    assert_eq!(seen.header("x-keywarden-key-id"), Some(id.as_str()));
    app.stop().await;
}

#[tokio::test]
async fn the_identity_headers_follow_each_key_and_a_change_of_its_scopes() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream().await;
    let app = gateway(&up, 5, "").await;
    let acc = app.account("Acme").await;
    let other = app.account("Other").await;
    let scoped = scoped_key(&app, &acc, &["invoices:read"]).await;
    let (other_id, other_token) = app.live_key(&other).await;
    let seen_with = |token: String| {
        let (app, up) = (&app, &up);
        async move {
            let res = app
                .client
                .get(format!("{}/things", app.public))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            up.last()
        }
    };
    let header_of = |seen: &common::upstream::Seen, name: &str| {
        seen.header(name).map(str::to_string).unwrap_or_default()
    };

    // Two keys, one after the other, each sent up with its own identity, twice over.
    for _ in 0..2 {
        let seen = seen_with(scoped.clone()).await;
        assert_eq!(header_of(&seen, "x-keywarden-account-id"), acc);
        assert_eq!(header_of(&seen, "x-keywarden-scopes"), "invoices:read");
        let seen = seen_with(other_token.clone()).await;
        assert_eq!(header_of(&seen, "x-keywarden-key-id"), other_id);
        assert_eq!(header_of(&seen, "x-keywarden-account-id"), other);
        assert_ne!(header_of(&seen, "x-keywarden-scopes"), "invoices:read");
    }

    // The scoped key loses its scope: the next request goes up without it.
    let scoped_id = seen_with(scoped.clone())
        .await
        .header("x-keywarden-key-id")
        .unwrap()
        .to_string();
    let res = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/keys/{scoped_id}"),
            Some(json!({ "scopes": [] })),
        )
        .await;
    assert_eq!(res.status(), 200);
    let seen = seen_with(scoped).await;
    assert_eq!(header_of(&seen, "x-keywarden-key-id"), scoped_id);
    assert_eq!(header_of(&seen, "x-keywarden-scopes"), "");
    app.stop().await;
}

#[tokio::test]
async fn forged_keywarden_headers_never_reach_the_upstream() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream().await;
    let app = gateway(&up, 5, "").await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    let forged = [
        ("X-Keywarden-Key-Id", "key_forged"),
        ("X-Keywarden-Account-Id", "acc_forged"),
        ("X-Keywarden-Mode", "test"),
        ("X-Keywarden-Scopes", "*"),
        ("X-Keywarden-Status", "200"),
        ("X-Keywarden-Admin", "yes"),
        ("X-Request-Id", "req_forged"),
    ];

    let mut req = app
        .client
        .get(format!("{}/anything", app.public))
        .bearer_auth(&token);
    for (k, v) in forged {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-keywarden-key-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-keywarden-account-id"), Some(acc.as_str()));
    assert_eq!(seen.header("x-keywarden-mode"), Some("live"));
    assert_ne!(seen.header("x-keywarden-scopes"), Some("*"));
    assert!(seen.header("x-keywarden-status").is_none());
    assert!(seen.header("x-keywarden-admin").is_none());
    assert!(seen
        .header("x-request-id")
        .is_some_and(|r| r.starts_with("req_") && r != "req_forged"));
    for name in ["x-keywarden-key-id", "x-keywarden-account-id"] {
        assert_eq!(seen.headers.get_all(name).iter().count(), 1, "{name}");
    }

    // A public route: no identity at all, and still nothing forged.
    let mut req = app.client.get(format!("{}/public/docs", app.public));
    for (k, v) in forged {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/base/public/docs");
    assert!(
        seen.headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-keywarden-")),
        "{:?}",
        seen.headers
    );
    app.stop().await;
}

#[tokio::test]
async fn connection_and_forwarding_headers_are_rewritten_for_the_upstream() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream().await;
    // The test client is not a trusted proxy: its forwarding claims are replaced.
    let app = gateway(&up, 5, "").await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    let send = |app: &TestApp| {
        app.client
            .get(format!("{}/anything", app.public))
            .bearer_auth(&token)
            .header("Connection", "keep-alive, x-private")
            .header("X-Private", "hop")
            .header("TE", "trailers")
            .header("Expect", "nothing")
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "claimed.example")
            .header("Forwarded", "for=203.0.113.9")
            .header("X-Multi", "one")
            .header("X-Multi", "two")
            .header("Accept", "application/json")
    };
    assert_eq!(send(&app).send().await.unwrap().status(), 200);
    let seen = up.last();
    for gone in ["x-private", "te", "expect", "forwarded", "authorization"] {
        assert!(seen.header(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(app.public.trim_start_matches("http://"))
    );
    let multi: Vec<&str> = seen
        .headers
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    app.stop().await;

    // Behind a trusted proxy, its forwarding headers are kept and the chain extended.
    let app = spawn_app_with(&format!(
        "{}\n[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        config(&up.url(), 5, "")
    ))
    .await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    let res = app
        .client
        .get(format!("{}/anything", app.public))
        .bearer_auth(&token)
        .header("X-Forwarded-For", "203.0.113.9, 198.51.100.2")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "api.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 198.51.100.2, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example"));
    app.stop().await;
}

#[tokio::test]
async fn denied_requests_get_keywarden_errors_and_never_reach_the_upstream() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream().await;
    let app = gateway(&up, 5, "").await;
    let acc = app.account("Acme").await;
    let narrow = scoped_key(&app, &acc, &["account:read"]).await;
    let url = format!("{}/invoices/1", app.public);

    let res = app.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(header(&res, "www-authenticate").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key", "{body}");

    let res = app
        .client
        .get(&url)
        .bearer_auth("kw_sk_live_not_a_real_key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");

    let res = app
        .client
        .get(&url)
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_scope", "{body}");

    assert!(up.seen().is_empty(), "denied requests reached the upstream");

    // The same key on a route it may use goes through.
    let res = app
        .client
        .get(format!("{}/reports", app.public))
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.seen().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn self_service_and_health_still_answer_on_the_gateway_listener() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream().await;
    let app = gateway(&up, 5, "").await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;

    let res = app.public(Method::GET, "/v1/account", &token, None).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["account_id"], acc.as_str());
    assert_eq!(body["key"]["id"], id.as_str());
    let res = app
        .client
        .get(format!("{}/healthz", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(up.seen().is_empty());

    // Other paths under the base path belong to the upstream.
    let res = app.public(Method::GET, "/v1/invoices", &token, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-upstream"), Some("yes"));
    assert_eq!(up.last().uri, "/base/v1/invoices");

    // A path that only begins like a self-service one goes through the router to its
    // fallback, and up from there with its body.
    let body = json!({ "n": 1 });
    let res = app
        .public(Method::POST, "/v1/accounting", &token, Some(body))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-upstream"), Some("yes"));
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/base/v1/accounting")
    );
    assert_eq!(seen.header("content-length"), Some("7"));
    assert_eq!(seen.header("authorization"), None);
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_refusing_connections_gives_502_in_the_configured_style() {
    let _s = SERIAL.read().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let app = spawn_app_with(&config(
        &format!("http://{addr}"),
        5,
        "[errors]\nstyle = \"problem\"\n",
    ))
    .await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;

    let started = Instant::now();
    let res = app
        .client
        .get(format!("{}/anything", app.public))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(res.status(), 502);
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    let request_id = header(&res, "x-request-id").unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable", "{body}");
    assert_eq!(body["status"], 502);
    assert_eq!(body["request_id"], request_id.as_str());
    app.stop().await;
}

#[tokio::test]
async fn a_stalling_upstream_gives_504_within_the_timeout() {
    let _s = SERIAL.read().await;
    // Accepts connections and never answers.
    let stall = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stall.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = stall.accept().await {
            held.push(sock);
        }
    });
    let app = spawn_app_with(&config(&format!("http://{addr}"), 1, "")).await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;

    let res = times_out(&app, &token, "/anything").await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
    holder.abort();
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_off_not_waited_for() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream_with(Router::new().route(
        "/base/stall",
        get(|| async {
            let first = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("start")) });
            Body::from_stream(first.chain(futures::stream::pending()))
        }),
    ))
    .await;
    let app = gateway(&up, 1, "").await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;

    let res = app
        .client
        .get(format!("{}/stall", app.public))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), res.bytes()).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "the body should fail, not hang or complete"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    app.stop().await;
}

#[tokio::test]
async fn a_body_streaming_for_longer_than_the_header_read_timeout_is_not_cut_off() {
    let _s = SERIAL.read().await;
    // Ten chunks, 100 ms apart: a second in all, where a head is due within 300 ms.
    let up = spawn_upstream_with(Router::new().route(
        "/base/drip",
        get(|| async {
            let chunks = futures::stream::unfold(0u8, |i| async move {
                (i < 10).then_some(())?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((
                    Ok::<_, Infallible>(Bytes::from(format!("chunk {i};"))),
                    i + 1,
                ))
            });
            Body::from_stream(chunks)
        }),
    ))
    .await;
    let app = spawn_app_with(&format!(
        "[server]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 300\n{}",
        config(&up.url(), 5, "")
    ))
    .await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    for _ in 0..2 {
        let res = app
            .client
            .get(format!("{}/drip", app.public))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = res.text().await.unwrap();
        assert!(
            body.starts_with("chunk 0;") && body.ends_with("chunk 9;"),
            "{body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_timeout_runs_from_each_request_on_a_reused_upstream_connection() {
    let _s = SERIAL.read().await;
    // One upstream connection carries both: a quick answer, then a head that never comes.
    let up = spawn_upstream_with(
        Router::new()
            .route("/base/quick", get(|| async { "quick" }))
            .route("/base/never", get(futures::future::pending::<&'static str>)),
    )
    .await;
    let app = gateway(&up, 1, "").await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    for _ in 0..3 {
        let res = app.public(Method::GET, "/quick", &token, None).await;
        assert_eq!(res.text().await.unwrap(), "quick");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // More than the timeout has passed since the first request: the wait is still timed
    // from this one.
    times_out(&app, &token, "/never").await;
    // And the next request after it is answered in time.
    let res = app.public(Method::GET, "/quick", &token, None).await;
    assert_eq!(res.text().await.unwrap(), "quick");
    app.stop().await;
}

#[tokio::test]
async fn an_answer_arriving_in_pieces_is_waited_for_and_passed_on_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _s = SERIAL.read().await;
    // Each answer comes in three pieces with pauses between them: part of the head, the
    // rest of it, then the body.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        for piece in [
                            &b"HTTP/1.1 200 OK\r\ncontent-"[..],
                            b"length: 6\r\n\r\n",
                            b"pieces",
                        ] {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            if tcp.write_all(piece).await.is_err() {
                                return;
                            }
                        }
                    }
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    let app = spawn_app_with(&config(&format!("http://{addr}"), 5, "")).await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    for _ in 0..2 {
        let res = app.public(Method::GET, "/anything", &token, None).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "pieces");
    }
    server.abort();
    app.stop().await;
}

#[tokio::test]
async fn a_request_body_sent_for_longer_than_the_timeout_is_not_cut_off() {
    let _s = SERIAL.read().await;
    let up = spawn_upstream_with(Router::new().route(
        "/base/upload",
        post(|body: Body| async move {
            let bytes = body.collect().await.unwrap().to_bytes();
            format!("got {}", bytes.len())
        }),
    ))
    .await;
    let app = gateway(&up, 1, "").await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    // Eight chunks 250 ms apart: two seconds of steady progress, twice the timeout.
    let frames = Box::pin(futures::stream::unfold(0u8, |i| async move {
        (i < 8).then_some(())?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"0123456789"))),
            i + 1,
        ))
    }));
    let client: Client<_, StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build_http::<StreamBody<_>>();
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("{}/upload", app.public))
        .header("authorization", format!("Bearer {token}"))
        .body(StreamBody::new(frames))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"got 80");
    app.stop().await;
}

/// An upstream whose `/base/slow` sends a first chunk at once and the rest when `gate` opens.
async fn slow_upstream(gate: Arc<Semaphore>) -> Upstream {
    spawn_upstream_with(Router::new().route(
        "/base/slow",
        get(move || {
            let gate = gate.clone();
            async move {
                let body = futures::stream::unfold(0u8, move |step| {
                    let gate = gate.clone();
                    async move {
                        match step {
                            0 => Some((Ok::<_, Infallible>(Bytes::from("start ")), 1)),
                            1 => {
                                gate.acquire().await.unwrap().forget();
                                Some((Ok(Bytes::from("end")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Body::from_stream(body)
            }
        }),
    ))
    .await
}

#[tokio::test]
async fn a_request_refused_for_concurrency_consumes_no_quota() {
    let _s = SERIAL.read().await;
    let gate = Arc::new(Semaphore::new(0));
    let up = slow_upstream(gate.clone()).await;
    let extra = "[plans]\ndefault = \"one\"\n[plans.tiers.one]\nconcurrency = 1\n\
                 quotas = [{ unit = \"requests\", limit = 2, period = \"day\" }]\n";
    let app = gateway(&up, 30, extra).await;
    let acc = app.account("Acme").await;
    let (_, key) = app.live_key(&acc).await;
    let get_with = |path: &str| {
        app.client
            .get(format!("{}{path}", app.public))
            .bearer_auth(&key)
            .send()
    };

    // The first request (quota 1 of 2) holds the only slot; the second is refused for it.
    let first = get_with("/slow").await.unwrap();
    assert_eq!(first.status(), 200);
    let refused = get_with("/fast").await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "concurrency_limit_exceeded");
    gate.add_permits(1);
    assert_eq!(first.text().await.unwrap(), "start end");

    // The refusal took no quota: one more request fits, then the quota is spent.
    assert_eq!(get_with("/fast").await.unwrap().status(), 200);
    let spent = get_with("/fast").await.unwrap();
    assert_eq!(spent.status(), 429);
    let body: Value = spent.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(
        up.seen().len(),
        2,
        "only admitted requests reach the upstream"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_plan_concurrency_limits_requests_in_flight_per_key() {
    let _s = SERIAL.read().await;
    let gate = Arc::new(Semaphore::new(0));
    let up = slow_upstream(gate.clone()).await;
    let extra = "[plans]\ndefault = \"one\"\n[plans.tiers.one]\nconcurrency = 1\n";
    let app = gateway(&up, 30, extra).await;
    let acc = app.account("Acme").await;
    let (_, k1) = app.live_key(&acc).await;
    let (_, k2) = app.live_key(&acc).await;
    let get_with = |path: &str, key: &str| {
        app.client
            .get(format!("{}{path}", app.public))
            .bearer_auth(key)
            .send()
    };

    // The first request holds the key's only slot while its body is still coming.
    let first = get_with("/slow", &k1).await.unwrap();
    assert_eq!(first.status(), 200);
    let res = get_with("/fast", &k1).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), Some("1"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "concurrency_limit_exceeded",
        "{body}"
    );
    assert_eq!(up.seen().len(), 1, "the refused request was not proxied");
    // Another key has its own slot.
    assert_eq!(get_with("/fast", &k2).await.unwrap().status(), 200);

    // The slot comes back when the body has been sent.
    gate.add_permits(1);
    assert_eq!(first.text().await.unwrap(), "start end");
    assert_eq!(get_with("/fast", &k1).await.unwrap().status(), 200);

    // ... and when the client goes away in the middle of it.
    let abandoned = get_with("/slow", &k1).await.unwrap();
    assert_eq!(abandoned.status(), 200);
    assert_eq!(get_with("/fast", &k1).await.unwrap().status(), 429);
    drop(abandoned);
    let mut freed = false;
    for _ in 0..100 {
        if get_with("/fast", &k1).await.unwrap().status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        freed,
        "the slot of an abandoned response was not given back"
    );
    app.stop().await;
}

/// The resident set size of this process, in bytes (Linux only).
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples the RSS every few milliseconds until stopped; returns the highest seen.
fn sample_rss() -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<usize>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(rss().unwrap_or(0));
            tokio::select! {
                _ = &mut rx => return peak,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    (tx, task)
}

const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 50 * MIB;

fn chunk(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; CHUNK])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_mib_stream_through_both_ways_in_constant_memory() {
    let _s = SERIAL.write().await;
    let up = spawn_upstream_with(
        Router::new()
            .route(
                "/base/upload",
                post(|body: Body| async move {
                    let mut stream = body.into_data_stream();
                    let (mut bytes, mut sum) = (0u64, 0u64);
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.unwrap();
                        bytes += chunk.len() as u64;
                        sum = chunk.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
                    }
                    axum::Json(json!({ "bytes": bytes, "sum": sum }))
                }),
            )
            .route(
                "/base/download",
                get(|| async {
                    let chunks = futures::stream::iter(0..TOTAL / CHUNK)
                        .map(|i| Ok::<_, Infallible>(chunk(i)));
                    Body::from_stream(chunks)
                }),
            ),
    )
    .await;
    let app = gateway(&up, 10, "").await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    let client: Client<_, StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build_http::<StreamBody<_>>();
    let request = |method: &str, path: &str, n: usize| {
        let frames =
            futures::stream::iter(0..n).map(|i| Ok::<_, Infallible>(Frame::data(chunk(i))));
        hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", app.public))
            .header("authorization", format!("Bearer {token}"))
            .body(StreamBody::new(frames))
            .unwrap()
    };
    // Warm up the pools and allocators with a small transfer.
    let res = client.request(request("POST", "/upload", 4)).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();

    let before = rss();
    let (stop, sampler) = sample_rss();

    let expected_sum: u64 = (0..TOTAL / CHUNK)
        .map(|i| (i % 251) as u64 * CHUNK as u64)
        .sum();
    let res = client
        .request(request("POST", "/upload", TOTAL / CHUNK))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(got["bytes"], TOTAL as u64, "{got}");
    assert_eq!(got["sum"], expected_sum, "{got}");

    let res = client
        .request(request("GET", "/download", 0))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, TOTAL);

    let _ = stop.send(());
    let peak = sampler.await.unwrap();
    if let Some(before) = before {
        let growth = peak.saturating_sub(before);
        eprintln!("RSS growth while streaming: {} KiB", growth / 1024);
        assert!(
            growth < 20 * MIB,
            "RSS grew by {} MiB while streaming 2 x 50 MiB",
            growth / MIB
        );
    }
    app.stop().await;
}
