//! Request smuggling and path tricks against the gateway, sent as raw bytes over a TCP
//! stream so that nothing between the test and the service tidies them up: a request never
//! reaches an upstream path its route would deny, the upstream never sees a request it was
//! not sent, and the path the upstream gets is the one that was decided.

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use common::upstream::{spawn_upstream_with, Upstream};
use common::{spawn_app_with, TestApp};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway to `upstream` (under `/base`): `/public/**` needs no key, `/admin/**` needs
/// `admin:write`, reading invoices needs `invoices:read`, deleting them `admin:write`, and
/// any other path any valid key.
/// `top` goes before the first table, `gateway` into `[gateway]`.
fn config(upstream: &str, top: &str, gateway: &str) -> String {
    format!(
        r#"
{top}

[gateway]
upstream = "{upstream}/base"
timeout_seconds = 5
connect_timeout_seconds = 1
{gateway}

[scopes]
catalog = [
  {{ name = "invoices:read", description = "Read invoices" }},
  {{ name = "admin:write", description = "Administer" }},
]

[[routes]]
path = "/public/**"
auth = "none"

[[routes]]
path = "/admin/**"
scopes = ["admin:write"]

[[routes]]
methods = ["GET"]
path = "/invoices/**"
scopes = ["invoices:read"]

[[routes]]
methods = ["DELETE"]
path = "/invoices/**"
scopes = ["admin:write"]
"#
    )
}

/// An upstream that records every request; `/base/echo/**` answers with the request body
/// it read (so the body has been read whole before the answer).
async fn upstream() -> Upstream {
    spawn_upstream_with(Router::new().route(
        "/base/public/echo",
        any(|body: Body| async move {
            match body.collect().await {
                Ok(b) => (StatusCode::OK, b.to_bytes()),
                Err(_) => (StatusCode::BAD_REQUEST, Bytes::from_static(b"bad body")),
            }
        }),
    ))
    .await
}

struct Setup {
    up: Upstream,
    app: TestApp,
    /// A key holding only `invoices:read`.
    reader: String,
    /// A key holding `admin:write` and `invoices:read`.
    admin: String,
}

async fn setup(top: &str) -> Setup {
    setup_with(top, "").await
}

async fn setup_with(top: &str, gateway: &str) -> Setup {
    setup_configured(|url| config(url, top, gateway)).await
}

/// The service configured by `configure`, given the upstream's URL, with the two keys.
async fn setup_configured(configure: impl FnOnce(&str) -> String) -> Setup {
    let up = upstream().await;
    let app = spawn_app_with(&configure(&up.url())).await;
    let acc = app.account("Acme").await;
    let key = |scopes: &[&str]| {
        let body = json!({ "mode": "live", "name": "k", "scopes": scopes });
        let app = &app;
        let acc = acc.clone();
        async move {
            app.key(&acc, body).await["api_key"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let reader = key(&["invoices:read"]).await;
    let admin = key(&["admin:write", "invoices:read"]).await;
    Setup {
        up,
        app,
        reader,
        admin,
    }
}

/// Sends `raw` on a fresh connection and reads until the service closes it (or 5 s pass).
async fn exchange(app: &TestApp, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(app.public.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of every response in `out`, in order.
fn statuses(out: &str) -> Vec<u16> {
    out.split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect()
}

/// The body of the last response in `out` (whole, when it is not chunked).
fn last_body(out: &str) -> &str {
    out.rsplit("\r\n\r\n").next().unwrap_or_default()
}

/// A `GET` of `target` with the key (if any) as bearer, closing the connection.
fn get(target: &str, key: Option<&str>) -> Vec<u8> {
    request("GET", target, key, "")
}

/// A request with extra header lines (each ending in CRLF), closing the connection.
fn request(method: &str, target: &str, key: Option<&str>, extra: &str) -> Vec<u8> {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!("{method} {target} HTTP/1.1\r\nHost: kw\r\n{auth}{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// The one status of a single request.
async fn status_of(app: &TestApp, raw: &[u8]) -> u16 {
    let out = exchange(app, raw).await;
    let s = statuses(&out);
    assert_eq!(s.len(), 1, "{out}");
    s[0]
}

/// No request the upstream saw was for `/admin` in any spelling.
fn assert_no_admin(up: &Upstream) {
    for seen in up.seen() {
        let uri = seen.uri.to_ascii_lowercase();
        assert!(
            !uri.contains("admin") && !uri.contains("%61dmin"),
            "the upstream was reached at {}",
            seen.uri
        );
    }
}

#[tokio::test]
async fn case_and_path_parameters_do_not_dodge_a_route() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    let r = Some(reader.as_str());
    // A key that may only read invoices, on paths an upstream serves as /admin/secret.
    for target in [
        "/ADMIN/secret",
        "/Admin/Secret",
        "/aDmIn/secret?x=1",
        "/%61dmin/secret",
        "/%41DMIN/secret",
    ] {
        assert_eq!(status_of(&app, &get(target, r)).await, 403, "{target}");
    }
    // Path parameters are refused, however they are spelled.
    for target in [
        "/admin;x=1/secret",
        "/admin;/secret",
        "/admin/secret;jsessionid=1",
        "/admin%3bx=1/secret",
        "/admin%3Bx=1/secret",
    ] {
        let out = exchange(&app, &get(target, r)).await;
        assert_eq!(statuses(&out), [400], "{target}: {out}");
        let body: Value = serde_json::from_str(last_body(&out)).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    assert_no_admin(&up);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    app.stop().await;
}

#[tokio::test]
async fn dot_segments_and_encoded_separators_do_not_leave_a_public_prefix() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    // No key at all: each of these is /admin/secret (or refused), never /public/**.
    for target in [
        "/public/../admin/secret",
        "/public/./../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/%2E%2e/ADMIN/secret",
        "/public/.%2e/admin/secret",
        "/public/x/../../admin/secret",
        "/public//../admin/secret",
        "//admin/secret",
        "/admin//secret",
        "/./admin/secret",
        "/admin/%2e/secret",
    ] {
        let out = exchange(&app, &get(target, None)).await;
        assert_eq!(statuses(&out), [401], "{target}: {out}");
        let out = exchange(&app, &get(target, Some(&reader))).await;
        assert_eq!(statuses(&out), [403], "{target}: {out}");
    }
    // Paths that cannot be read one way only are refused.
    for target in [
        "/public/..;/admin/secret",
        "/public/..;x=1/admin/secret",
        "/public%2f..%2fadmin/secret",
        "/public/..%2fadmin/secret",
        "/public/..%2Fadmin/secret",
        "/public/..%5cadmin/secret",
        "/public/%2e%2e%5cadmin/secret",
        "/public/%c0%ae%c0%ae/admin/secret",
        "/public/%ef%bc%8fadmin",
        "/public/%00/x",
        "/public/a%zz",
        "/public/a%2",
        "/../admin/secret",
        "/public/../../admin/secret",
    ] {
        let out = exchange(&app, &get(target, None)).await;
        assert_eq!(statuses(&out), [400], "{target}: {out}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    app.stop().await;
}

/// Each request target, sent with `key`, is answered 200 and reaches the upstream as
/// the target paired with it.
async fn assert_forwarded_as(
    app: &TestApp,
    up: &Upstream,
    key: Option<&str>,
    cases: &[(&str, &str)],
) {
    for (target, forwarded) in cases {
        let out = exchange(app, &get(target, key)).await;
        assert_eq!(statuses(&out), [200], "{target}: {out}");
        assert_eq!(up.last().uri, *forwarded, "{target}");
    }
}

#[tokio::test]
async fn the_upstream_gets_the_path_that_was_decided() {
    let Setup { up, app, admin, .. } = setup("").await;
    let a = Some(admin.as_str());
    let cases = [
        ("/ADMIN/secret", "/base/ADMIN/secret"),
        ("/public/../admin/secret", "/base/admin/secret"),
        ("/public/%2e%2e/admin/secret", "/base/admin/secret"),
        ("//admin//secret/", "/base/admin/secret/"),
        ("/%61dmin/%7Esecret", "/base/admin/~secret"),
        ("/admin/a%2db%5F", "/base/admin/a-b_"),
        ("/admin/%c3%a9t%c3%a9", "/base/admin/%C3%A9t%C3%A9"),
        ("/admin/./x?a=%2e%2e/../y", "/base/admin/x?a=%2e%2e/../y"),
        ("/public/docs/../index", "/base/public/index"),
    ];
    assert_forwarded_as(&app, &up, a, &cases).await;
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_without_a_base_path_gets_the_decided_path_too() {
    let Setup { up, app, admin, .. } =
        setup_configured(|url| config(url, "", "").replace("/base\"", "\"")).await;
    let a = Some(admin.as_str());
    let cases = [
        ("/admin/secret", "/admin/secret"),
        ("/admin/secret?a=1&b=2", "/admin/secret?a=1&b=2"),
        ("/ADMIN/secret", "/ADMIN/secret"),
        ("/public/../admin/secret", "/admin/secret"),
        ("/public/%2e%2e/admin/secret", "/admin/secret"),
        ("//admin//secret/", "/admin/secret/"),
        ("/%61dmin/%7Esecret", "/admin/~secret"),
        ("/admin/./x?a=%2e%2e/../y", "/admin/x?a=%2e%2e/../y"),
        ("http://example.com/admin/secret", "/admin/secret"),
        ("http://example.com/public/../admin/x?y=1", "/admin/x?y=1"),
    ];
    assert_forwarded_as(&app, &up, a, &cases).await;
    app.stop().await;
}

#[tokio::test]
async fn paths_can_be_matched_case_sensitively_when_configured() {
    let Setup {
        up, app, reader, ..
    } = setup("case_sensitive_paths = true").await;
    // `/ADMIN/secret` is then another path: the default route, any valid key.
    assert_eq!(
        status_of(&app, &get("/ADMIN/secret", Some(&reader))).await,
        200
    );
    assert_eq!(up.last().uri, "/base/ADMIN/secret");
    assert_eq!(
        status_of(&app, &get("/admin/secret", Some(&reader))).await,
        403
    );
    // Escapes of unreserved characters are still decoded.
    assert_eq!(
        status_of(&app, &get("/%61dmin/secret", Some(&reader))).await,
        403
    );
    app.stop().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    let smuggled =
        format!("GET /admin/secret HTTP/1.1\r\nHost: kw\r\nAuthorization: Bearer {reader}\r\n\r\n");
    let chunked = format!("0\r\n\r\n{smuggled}");
    for (first, second) in [
        (
            format!("Content-Length: {}", chunked.len()),
            "Transfer-Encoding: chunked".to_string(),
        ),
        (
            "Transfer-Encoding: chunked".to_string(),
            format!("Content-Length: {}", chunked.len()),
        ),
    ] {
        let raw =
            format!("POST /public/a HTTP/1.1\r\nHost: kw\r\n{first}\r\n{second}\r\n\r\n{chunked}");
        let out = exchange(&app, raw.as_bytes()).await;
        // One answer, and the connection closed before the bytes after the chunked body
        // could be read as a request.
        assert_eq!(statuses(&out), [200], "{out}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.uri, "/base/public/a");
        assert!(
            !(s.headers.contains_key("content-length")
                && s.headers.contains_key("transfer-encoding")),
            "{:?}",
            s.headers
        );
    }
    assert_no_admin(&up);
    app.stop().await;
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let Setup { up, app, .. } = setup("").await;
    let bad = [
        // Two lengths that disagree.
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nContent-Length: 5, 6\r\n\r\nhello!",
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nContent-Length: +5\r\n\r\nhello",
        // Codings that do not end in chunked, or that the gateway cannot pass on.
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        // obs-fold, on any header and on the framing ones.
        "GET /public/a HTTP/1.1\r\nHost: kw\r\nX-Note: one\r\n two\r\n\r\n",
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nContent-Length: 0\r\n\tContent-Length: 5\r\n\r\n",
        // A space before the colon.
        "POST /public/a HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ];
    for raw in bad {
        let out = exchange(&app, raw.as_bytes()).await;
        assert_eq!(statuses(&out), [400], "{raw:?}: {out}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // Two equal lengths are one length: the upstream gets exactly one.
    let raw = "POST /public/echo HTTP/1.1\r\nHost: kw\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let out = exchange(&app, raw.as_bytes()).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert_eq!(last_body(&out), "hello");
    let seen = up.last();
    assert_eq!(seen.headers.get_all("content-length").iter().count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_body_is_never_read_as_a_request() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    let inner =
        format!("GET /admin/secret HTTP/1.1\r\nHost: up\r\nAuthorization: Bearer {reader}\r\n\r\n");
    // As a sized body, then as a chunk, each followed by a pipelined request on the same
    // connection (the gateway's upstream connection is reused for it).
    let sized = format!(
        "POST /public/echo HTTP/1.1\r\nHost: kw\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let chunked = format!(
        "POST /public/echo HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    for first in [sized, chunked] {
        let mut raw = first.into_bytes();
        raw.extend(get("/public/next", None));
        let out = exchange(&app, &raw).await;
        assert_eq!(statuses(&out), [200, 200], "{out}");
        assert!(out.contains(&inner), "the body went up whole: {out}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let uris: Vec<String> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        uris,
        [
            "/base/public/echo",
            "/base/public/next",
            "/base/public/echo",
            "/base/public/next"
        ]
    );

    // Pipelined requests are each decided: the denied one in the middle never goes up.
    let mut raw = b"GET /public/one HTTP/1.1\r\nHost: kw\r\n\r\n".to_vec();
    raw.extend(
        format!("GET /admin/secret HTTP/1.1\r\nHost: kw\r\nAuthorization: Bearer {reader}\r\n\r\n")
            .as_bytes(),
    );
    raw.extend(get("/public/two", None));
    let out = exchange(&app, &raw).await;
    assert_eq!(statuses(&out), [200, 403, 200], "{out}");
    let uris: Vec<String> = up.seen().into_iter().skip(4).map(|s| s.uri).collect();
    assert_eq!(uris, ["/base/public/one", "/base/public/two"]);
    assert_no_admin(&up);
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_chunked_body_answers_400() {
    let Setup { app, up: _up, .. } = setup("").await;
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\nnot-a-size\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let raw = format!(
            "POST /public/echo HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let out = exchange(&app, raw.as_bytes()).await;
        assert_eq!(statuses(&out), [400], "{body:?}: {out}");
        let body: Value = serde_json::from_str(last_body(&out)).unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_body_of_a_chunked_get_goes_up() {
    let Setup { app, up: _up, .. } = setup("").await;
    let raw = "GET /public/echo HTTP/1.1\r\nHost: kw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let out = exchange(&app, raw.as_bytes()).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(out.ends_with("hello world"), "{out}");
    // A sized GET body too, and a GET without one still has none.
    let raw = "GET /public/echo HTTP/1.1\r\nHost: kw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert!(exchange(&app, raw.as_bytes())
        .await
        .ends_with("\r\n\r\nhello"));
    let out = exchange(&app, &get("/public/echo", None)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert_eq!(last_body(&out), "");
    app.stop().await;
}

#[tokio::test]
async fn the_body_of_an_http2_get_without_a_length_goes_up() {
    let Setup { app, up: _up, .. } = setup("").await;
    let stream = TcpStream::connect(app.public.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let frames = futures::stream::iter(["hello", " world"])
        .map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from_static(s.as_bytes()))));
    let req = hyper::Request::builder()
        .method("GET")
        .uri(format!("{}/public/echo", app.public))
        .body(StreamBody::new(frames))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello world");
    app.stop().await;
}

#[tokio::test]
async fn method_overrides_are_stripped_by_default() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    let overrides =
        "X-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\n";
    let raw = request(
        "POST",
        "/invoices/1?a=1&_method=DELETE&%5Fmethod=DELETE&_%6Dethod=DELETE&_METHOD=DELETE&b=2",
        Some(&reader),
        &format!("{overrides}Content-Length: 0\r\n"),
    );
    // Decided as the POST it is (the default route), and the upstream sees a POST only.
    assert_eq!(status_of(&app, &raw).await, 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/base/invoices/1?a=1&b=2");
    for name in [
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
    ] {
        assert!(seen.header(name).is_none(), "{name} reached the upstream");
    }
    // However the parameter's name is spelled.
    let raw = request(
        "POST",
        "/x?_%6D%65thod=DELETE",
        Some(&reader),
        "Content-Length: 0\r\n",
    );
    assert_eq!(status_of(&app, &raw).await, 200);
    assert_eq!(up.last().uri, "/base/x");
    app.stop().await;
}

#[tokio::test]
async fn method_overrides_can_be_decided_on_instead() {
    let Setup {
        up, app, reader, ..
    } = setup_with("", "method_override = \"decide\"").await;
    let post = |extra: &str, target: &str| {
        request(
            "POST",
            target,
            Some(&reader),
            &format!("{extra}Content-Length: 0\r\n"),
        )
    };
    // Decided as DELETE: the reader may not.
    for (extra, target) in [
        ("X-HTTP-Method-Override: DELETE\r\n", "/invoices/1"),
        ("X-Method-Override: delete\r\n", "/invoices/1"),
        ("X-HTTP-Method: DELETE\r\n", "/invoices/1"),
        ("", "/invoices/1?_method=DELETE"),
    ] {
        assert_eq!(
            status_of(&app, &post(extra, target)).await,
            403,
            "{extra}{target}"
        );
    }
    assert!(up.seen().is_empty());
    // Decided as GET, which the reader may do, and forwarded as sent.
    let raw = post("X-HTTP-Method-Override: GET\r\n", "/invoices/1?_method=GET");
    assert_eq!(status_of(&app, &raw).await, 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/base/invoices/1?_method=GET");
    assert_eq!(seen.header("x-http-method-override"), Some("GET"));
    // Overrides that disagree, or that are not methods, are refused.
    for (extra, target) in [
        (
            "X-HTTP-Method-Override: GET\r\n",
            "/invoices/1?_method=DELETE",
        ),
        (
            "X-HTTP-Method-Override: GET\r\nX-HTTP-Method: DELETE\r\n",
            "/invoices/1",
        ),
        ("X-HTTP-Method-Override: GET, DELETE\r\n", "/invoices/1"),
        ("X-HTTP-Method-Override: G(T\r\n", "/invoices/1"),
    ] {
        assert_eq!(
            status_of(&app, &post(extra, target)).await,
            400,
            "{extra}{target}"
        );
    }
    assert_eq!(up.seen().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn forward_auth_and_verify_decide_on_the_same_canonical_path() {
    let Setup {
        app, reader, admin, ..
    } = setup("").await;
    let ask = |uri: &str, key: &str| {
        app.client
            .get(format!("{}/v1/forward-auth", app.admin))
            .header("X-Original-Method", "GET")
            .header("X-Original-URI", uri)
            .bearer_auth(key)
            .send()
    };
    for uri in ["/ADMIN/secret", "/public/%2e%2e/admin/secret", "//admin/x"] {
        assert_eq!(ask(uri, &reader).await.unwrap().status(), 403, "{uri}");
        assert_eq!(ask(uri, &admin).await.unwrap().status(), 200, "{uri}");
    }
    for uri in [
        "/admin;x=1/secret",
        "/public/..;/admin/secret",
        "/public%2fx",
    ] {
        let res = ask(uri, &admin).await.unwrap();
        assert_eq!(res.status(), 400, "{uri}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }

    let verify = |path: &str| app.verify(json!({ "key": reader, "method": "GET", "path": path }));
    let v = verify("/ADMIN/secret").await;
    assert_eq!(v["code"], "insufficient_scope", "{v}");
    let res = app
        .admin(
            reqwest::Method::POST,
            "/v1/verify",
            Some(json!({ "key": reader, "method": "GET", "path": "/admin;x=1/secret" })),
        )
        .await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("path"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn paths_near_the_listeners_own_routes_are_decided_like_any_other() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    let r = Some(reader.as_str());
    // They begin like a health check or a self-service path, or spell one another way, and
    // lead to /admin: decided there, whichever way the request was taken in.
    for target in [
        "/healthz/../admin/secret",
        "/healthz/%2e%2e/admin/secret",
        "/v1/account/../../admin/secret",
        "/v1/api-keys/%2e%2e/%2e%2e/admin/secret",
        "/openapi.json/../admin/secret",
        "//v1/../admin/secret",
    ] {
        let out = exchange(&app, &get(target, None)).await;
        assert_eq!(statuses(&out), [401], "{target}: {out}");
        let out = exchange(&app, &get(target, r)).await;
        assert_eq!(statuses(&out), [403], "{target}: {out}");
    }
    for target in [
        "/healthz;x=1",
        "/v1/account;x=1",
        "/healthz%2f..%2fadmin/secret",
        "/v1/account/..%2f..%2fadmin/secret",
    ] {
        let out = exchange(&app, &get(target, r)).await;
        assert_eq!(statuses(&out), [400], "{target}: {out}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // The listener's own routes still answer themselves, not the upstream.
    let out = exchange(&app, &get("/healthz", None)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    let out = exchange(&app, &get("/openapi.json", None)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(out.contains(r#""openapi""#), "{out}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // A path that only looks like theirs goes up, decided by the rules.
    let out = exchange(&app, &get("/public/../public/healthz", None)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert_eq!(up.last().uri, "/base/public/healthz");
    app.stop().await;
}

#[tokio::test]
async fn a_refusal_is_rendered_in_the_asked_language_with_its_request_id() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    let raw = request(
        "GET",
        "/admin/secret",
        Some(&reader),
        "Accept-Language: es\r\n",
    );
    let out = exchange(&app, &raw).await;
    assert_eq!(statuses(&out), [403], "{out}");
    let head = out.split("\r\n\r\n").next().unwrap();
    let id = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            name.eq_ignore_ascii_case("x-request-id").then_some(value)
        })
        .expect("x-request-id")
        .to_string();
    let body: Value = serde_json::from_str(last_body(&out)).unwrap();
    assert_eq!(body["error"]["request_id"].as_str(), Some(id.as_str()));
    let english = exchange(&app, &get("/admin/secret", Some(&reader))).await;
    let english: Value = serde_json::from_str(last_body(&english)).unwrap();
    assert_eq!(body["error"]["code"], english["error"]["code"]);
    assert_ne!(body["error"]["message"], english["error"]["message"]);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    app.stop().await;
}

#[tokio::test]
async fn pipelined_requests_after_ambiguous_framing_never_go_up() {
    let Setup {
        up, app, reader, ..
    } = setup("").await;
    let smuggled =
        format!("GET /admin/secret HTTP/1.1\r\nHost: kw\r\nAuthorization: Bearer {reader}\r\n\r\n");
    // Each framing is refused, and the bytes after it are never read as a request (the
    // connection closes), on a connection that asked to stay open.
    for framing in [
        format!(
            "Content-Length: 3\r\nContent-Length: {}\r\n",
            smuggled.len()
        ),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n".to_string(),
        "X-Pad: a\r\n Transfer-Encoding: chunked\r\n".to_string(),
    ] {
        let raw = format!(
            "POST /public/echo HTTP/1.1\r\nHost: kw\r\n{framing}\r\n0\r\n\r\n{smuggled}{}",
            String::from_utf8(get("/public/next", None)).unwrap()
        );
        let out = exchange(&app, raw.as_bytes()).await;
        assert_eq!(statuses(&out), [400], "{framing:?}: {out}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    app.stop().await;
}
