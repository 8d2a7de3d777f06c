//! Webhooks end to end (docs/webhooks.md): a real HTTP receiver verifies every signature
//! with the `standardwebhooks` crate; retries follow the schedules on the service's clock;
//! 410 disables; a slow endpoint holds neither the others nor requests; two instances on
//! one PostgreSQL send each delivery once; derived events fire once; the address guard.

mod common;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use common::{spawn_app_with, spawn_config, TestApp, ROOT};
use keywarden_core::model::{KeyRecord, Mode};
use keywarden_server::config::Config;
use keywarden_server::webhooks::{check_url, UrlError, Webhooks};
use keywarden_store::webhooks::{DeliveryStatus, WebhookEndpoint};
use keywarden_store::EventFilter;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the receiver got, and the signal that lets `/held` answer.
#[derive(Clone)]
struct Seen {
    got: Arc<Mutex<Vec<Received>>>,
    release: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The body `/big` answers with: 5,000 two-byte characters.
const BIG_CHAR: &str = "é";

/// A webhook receiver: `/ok` answers 204, `/gone` 410, `/fail` 500, `/slow` never,
/// `/held` 204 once the test releases it, `/redirect` 302 to `/target` (204), `/big` 200
/// with 10,000 bytes.
struct Receiver {
    url: String,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(seen): State<Seen>,
    Path(what): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.got.lock().unwrap().push(Received {
        path: what.clone(),
        headers,
        body,
    });
    match what.as_str() {
        "ok" | "target" => StatusCode::NO_CONTENT.into_response(),
        "gone" => StatusCode::GONE.into_response(),
        "slow" => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
        "held" => {
            let mut released = seen.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
            StatusCode::NO_CONTENT.into_response()
        }
        "redirect" => (StatusCode::FOUND, [(LOCATION, "/target")]).into_response(),
        "big" => (StatusCode::OK, BIG_CHAR.repeat(5_000)).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn receiver() -> Receiver {
    let seen = Seen {
        got: Arc::default(),
        release: Arc::new(tokio::sync::watch::Sender::new(false)),
    };
    let app = Router::new()
        .route("/{what}", post(receive))
        .with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Receiver { url, seen, task }
}

impl Receiver {
    /// Lets every request `/held` is holding, and every later one, be answered.
    fn release(&self) {
        self.seen.release.send_replace(true);
    }

    fn seen(&self, path: &str) -> Vec<Received> {
        self.seen
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits (up to 20 s) until `path` got at least `n` requests.
    async fn wait(&self, path: &str, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            let s = self.seen(path);
            if s.len() >= n {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{path} got {} requests, expected {n}",
            self.seen(path).len()
        );
    }
}

/// Fast polling, private addresses allowed (the receiver is on 127.0.0.1).
const FAST: &str = "[webhooks]\nallow_private_networks = true\npoll_interval_ms = 20\n";

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Registers an endpoint directly in the store.
async fn endpoint(
    app: &TestApp,
    url: String,
    account: Option<&str>,
    mode: Option<Mode>,
    events: Option<&[&str]>,
) -> WebhookEndpoint {
    let now = app.clock.now_ms();
    let e = WebhookEndpoint {
        id: keywarden_core::model::new_id("whe"),
        url,
        events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
        account_id: account.map(Into::into),
        mode,
        description: String::new(),
        enabled: true,
        secret: keywarden_core::webhooks::new_secret(),
        prev_secret: None,
        prev_secret_until: None,
        failing_since: None,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    };
    app.state.store.create_webhook(&e, &[]).await.unwrap();
    e
}

use keywarden_core::Clock as _;

/// Waits (up to 20 s) until `check` holds for the endpoint's deliveries.
async fn until_deliveries(
    app: &TestApp,
    endpoint: &str,
    check: impl Fn(&[keywarden_store::webhooks::WebhookDelivery]) -> bool,
) -> Vec<keywarden_store::webhooks::WebhookDelivery> {
    for _ in 0..400 {
        let d = app
            .state
            .store
            .list_deliveries(endpoint, None, 100)
            .await
            .unwrap();
        if check(&d) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deliveries never reached the expected state");
}

/// Everything a receiver got verifies with the `standardwebhooks` crate, and is the event.
async fn signed_deliveries_verify(app: &TestApp) {
    app.clock.set_ms(now_ms());
    let r = receiver().await;
    let e = endpoint(app, format!("{}/ok", r.url), None, None, None).await;
    let account = app.account("Acme").await;
    let (key_id, token) = app.live_key(&account).await;
    let got = r.wait("ok", 2).await;
    let wh = standardwebhooks::Webhook::new(&e.secret).unwrap();
    for req in &got {
        wh.verify(&req.body, &req.headers)
            .expect("the signature verifies");
        let body = req.json();
        assert_eq!(req.header("webhook-id"), body["data"]["id"]);
        assert!(body["timestamp"].is_string());
        assert_eq!(body["data"]["account_id"], account.as_str());
        assert!(!String::from_utf8_lossy(&req.body).contains(&token));
    }
    let kinds: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"account.created".to_string()), "{kinds:?}");
    let created = got
        .iter()
        .find(|r| r.json()["type"] == "key.created")
        .unwrap()
        .json();
    assert_eq!(created["data"]["mode"], "live");
    assert!(created.to_string().contains(&key_id));
    // Tampering is caught by the same library.
    let mut body = got[0].body.to_vec();
    body.push(b' ');
    assert!(wh.verify(&body, &got[0].headers).is_err());
    let d = until_deliveries(app, &e.id, |d| {
        d.len() >= 2 && d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    assert!(d
        .iter()
        .all(|d| d.last_status == Some(204) && d.attempts == 1));
    // The metrics count them.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("keywarden_webhook_attempts_total{outcome=\"delivered\"}"));
    assert!(metrics.contains("keywarden_webhook_backlog 0"));
}

#[tokio::test]
async fn signed_deliveries_verify_on_sqlite() {
    let app = spawn_app_with(FAST).await;
    signed_deliveries_verify(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn signed_deliveries_verify_on_postgres() {
    let Some(pg) = common::pg::spawn_pg_app_with(FAST).await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    signed_deliveries_verify(&pg.app).await;
    pg.stop().await;
}

/// Moves the clock to a delivery's next attempt and waits for that attempt.
async fn next_attempt(app: &TestApp, r: &Receiver, endpoint: &str, attempts: u32) {
    let d = until_deliveries(app, endpoint, |d| d.len() == 1 && d[0].attempts == attempts).await;
    app.clock.set_ms(d[0].next_attempt_at.unwrap());
    r.wait("fail", attempts as usize + 1).await;
}

#[tokio::test]
async fn retries_follow_each_modes_schedule_on_the_clock() {
    let app = spawn_app_with(&format!(
        "{FAST}retry_schedule_seconds_live = [5, 60]\nretry_schedule_seconds_test = [5]\n"
    ))
    .await;
    let r = receiver().await;
    let account = app.account("Acme").await;
    let live = endpoint(
        &app,
        format!("{}/fail", r.url),
        Some(&account),
        Some(Mode::Live),
        Some(&["key.created"]),
    )
    .await;
    let t0 = app.clock.now_ms();
    app.live_key(&account).await;
    r.wait("fail", 1).await;
    let d = until_deliveries(&app, &live.id, |d| d.len() == 1 && d[0].attempts == 1).await;
    // The first retry about 5 s later (±20 %), then about 60 s after the second failure.
    let due = d[0].next_attempt_at.unwrap() - t0;
    assert!((4_000..=6_000).contains(&due), "{due}");
    assert_eq!(d[0].status, DeliveryStatus::Pending);
    assert_eq!(d[0].last_status, Some(500));
    next_attempt(&app, &r, &live.id, 1).await;
    let d = until_deliveries(&app, &live.id, |d| d[0].attempts == 2).await;
    let t1 = app.clock.now_ms();
    let due = d[0].next_attempt_at.unwrap() - t1;
    assert!((48_000..=72_000).contains(&due), "{due}");
    next_attempt(&app, &r, &live.id, 2).await;
    let d = until_deliveries(&app, &live.id, |d| d[0].attempts == 3).await;
    assert_eq!(d[0].status, DeliveryStatus::Failed);
    assert_eq!(d[0].next_attempt_at, None);
    // Every attempt of the same event carries the same webhook-id.
    let ids: Vec<String> = r
        .seen("fail")
        .iter()
        .map(|x| x.header("webhook-id").to_string())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let attempts = app.state.store.list_attempts(&d[0].id).await.unwrap();
    assert_eq!(attempts.len(), 3);

    // Test mode: one retry, then it gives up.
    let test = endpoint(
        &app,
        format!("{}/fail", r.url),
        Some(&account),
        Some(Mode::Test),
        Some(&["key.created"]),
    )
    .await;
    app.key(&account, json!({ "mode": "test", "name": "t" }))
        .await;
    r.wait("fail", 4).await;
    let d = until_deliveries(&app, &test.id, |d| d.len() == 1 && d[0].attempts == 1).await;
    app.clock.set_ms(d[0].next_attempt_at.unwrap());
    r.wait("fail", 5).await;
    let d = until_deliveries(&app, &test.id, |d| d[0].attempts == 2).await;
    assert_eq!(d[0].status, DeliveryStatus::Failed);
    app.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_says_so() {
    let app = spawn_app_with(FAST).await;
    let r = receiver().await;
    let gone = endpoint(
        &app,
        format!("{}/gone", r.url),
        None,
        None,
        Some(&["account.created"]),
    )
    .await;
    let watcher = endpoint(
        &app,
        format!("{}/ok", r.url),
        None,
        None,
        Some(&["webhook.disabled"]),
    )
    .await;
    app.account("Acme").await;
    r.wait("gone", 1).await;
    let got = r.wait("ok", 1).await;
    assert_eq!(got[0].json()["type"], "webhook.disabled");
    assert_eq!(got[0].json()["data"]["webhook_id"], gone.id.as_str());
    assert_eq!(got[0].json()["data"]["reason"], "gone");
    let e = app
        .state
        .store
        .get_webhook(&gone.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!e.enabled);
    assert_eq!(e.disabled_reason.as_deref(), Some("gone"));
    // Nothing more goes to it, and what would only wait is refused, saying why.
    app.account("Other").await;
    let m = keywarden_server::manage_webhooks::WebhookManager::new(&app.state);
    let root = keywarden_server::manage_webhooks::Owner::Root;
    let err = m.send_test(&root, &gone.id).await.unwrap_err();
    assert_eq!(err.code.status(), 409);
    let why = err.detail.unwrap();
    assert!(why.contains("disabled") && why.contains("410"), "{why}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.seen("gone").len(), 1);
    let _ = watcher;
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_days_is_disabled() {
    let app = spawn_app_with(&format!(
        "{FAST}retry_schedule_seconds_live = [86400, 86400, 86400, 86400, 86400, 86400]\ndisable_after_failing_hours = 48\n"
    ))
    .await;
    let r = receiver().await;
    let e = endpoint(
        &app,
        format!("{}/fail", r.url),
        None,
        None,
        Some(&["account.created"]),
    )
    .await;
    let t0 = app.clock.now_ms();
    app.account("Acme").await;
    // Retries a day apart (±20 %) until the endpoint has failed for 48 hours.
    let mut n = 1;
    loop {
        let d = until_deliveries(&app, &e.id, |d| d.len() == 1 && d[0].attempts == n).await;
        if d[0].status == DeliveryStatus::Failed {
            break;
        }
        assert!(app.clock.now_ms() - t0 < 48 * 3_600_000);
        app.clock.set_ms(d[0].next_attempt_at.unwrap());
        n += 1;
    }
    assert!(app.clock.now_ms() - t0 >= 48 * 3_600_000);
    assert!((3..=4).contains(&n), "{n}");
    let stored = app.state.store.get_webhook(&e.id).await.unwrap().unwrap();
    assert!(!stored.enabled);
    assert_eq!(stored.disabled_reason.as_deref(), Some("failing"));
    let f = EventFilter {
        kind: Some("webhook.disabled".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(app.state.store.list_events(&f).await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_holds_neither_the_others_nor_requests() {
    let app = spawn_app_with(&format!("{FAST}timeout_seconds = 120\n")).await;
    let r = receiver().await;
    let slow = endpoint(&app, format!("{}/slow", r.url), None, None, None).await;
    let fast = endpoint(&app, format!("{}/ok", r.url), None, None, None).await;
    let account = app.account("Acme").await;
    r.wait("slow", 1).await;
    // While the slow endpoint holds its first request, the other gets every event and the
    // API keeps answering.
    for i in 0..5 {
        app.key(&account, json!({ "mode": "live", "name": format!("k{i}") }))
            .await;
    }
    r.wait("ok", 6).await;
    let d = app
        .state
        .store
        .list_deliveries(&slow.id, None, 100)
        .await
        .unwrap();
    assert!(d.iter().all(|d| d.status == DeliveryStatus::Pending));
    until_deliveries(&app, &fast.id, |d| {
        d.len() == 6 && d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    app.stop().await;
}

/// Two attempts in flight at most, so one to an endpoint (a quarter, at least one).
const TWO_AT_A_TIME: &str = "timeout_seconds = 120\nconcurrency = 2\n";

/// The oldest due deliveries all go to an endpoint that answers only when released; with
/// two attempts in flight at most, it holds one and the other endpoint gets every
/// delivery through the other, before the held ones end.
async fn a_slow_endpoint_gets_only_its_share(app: &TestApp) {
    let r = receiver().await;
    let held = endpoint(
        app,
        format!("{}/held", r.url),
        None,
        None,
        Some(&["account.created"]),
    )
    .await;
    let fast = endpoint(
        app,
        format!("{}/ok", r.url),
        None,
        None,
        Some(&["key.created"]),
    )
    .await;
    let mut accounts = Vec::new();
    for i in 0..4 {
        accounts.push(app.account(&format!("Held {i}")).await);
    }
    r.wait("held", 1).await;
    let started = std::time::Instant::now();
    for i in 0..3 {
        app.key(
            &accounts[0],
            json!({ "mode": "live", "name": format!("k{i}") }),
        )
        .await;
    }
    let queued = until_deliveries(app, &fast.id, |d| d.len() >= 3)
        .await
        .len();
    r.wait("ok", queued).await;
    let waited = started.elapsed();
    until_deliveries(app, &fast.id, |d| {
        d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    // Meanwhile the held endpoint had one attempt in flight, never more, and its other
    // deliveries are still waiting.
    assert_eq!(r.seen("held").len(), 1);
    let d = app
        .state
        .store
        .list_deliveries(&held.id, None, 10)
        .await
        .unwrap();
    assert_eq!(d.len(), 4);
    assert!(d
        .iter()
        .all(|d| d.status == DeliveryStatus::Pending && d.attempts == 0));
    eprintln!(
        "the fast endpoint got its {queued} deliveries {} ms after the events, \
         while the held endpoint kept one attempt waiting",
        waited.as_millis()
    );
    // Released, the held endpoint gets the rest, one at a time.
    r.release();
    r.wait("held", 4).await;
    until_deliveries(app, &held.id, |d| {
        d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    assert_eq!(r.seen("held").len(), 4);
}

#[tokio::test]
async fn a_slow_endpoint_gets_only_its_share_on_sqlite() {
    let app = spawn_app_with(&format!("{FAST}{TWO_AT_A_TIME}")).await;
    a_slow_endpoint_gets_only_its_share(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_gets_only_its_share_on_postgres() {
    let Some(pg) = common::pg::spawn_pg_app_with(&format!("{FAST}{TWO_AT_A_TIME}")).await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    a_slow_endpoint_gets_only_its_share(&pg.app).await;
    pg.stop().await;
}

#[tokio::test]
async fn a_rotation_grace_ending_is_announced_once() {
    let app = spawn_app_with(&format!("{FAST}scan_interval_seconds = 3600\n")).await;
    let r = receiver().await;
    let e = endpoint(
        &app,
        format!("{}/ok", r.url),
        None,
        None,
        Some(&["key.rotation_grace_ending"]),
    )
    .await;
    let account = app.account("Acme").await;
    let (key_id, _) = app.live_key(&account).await;
    let day = 86_400_000;
    let rotate = |grace_days: i64| {
        let app = &app;
        let key_id = key_id.clone();
        async move {
            let res = app
                .admin(
                    reqwest::Method::POST,
                    &format!("/v1/admin/keys/{key_id}/rotate"),
                    Some(json!({ "grace_period_seconds": grace_days * 86_400 })),
                )
                .await;
            assert_eq!(res.status(), 200);
            let k: KeyRecord = app.state.store.get_key(&key_id).await.unwrap().unwrap();
            k.previous
                .expect("a previous secret in its grace")
                .valid_until
        }
    };
    let end = rotate(3).await;
    let hooks = Webhooks::new(app.state.clone());
    // Nothing while more than a day is left, once within the last day, then nothing more,
    // nor after the grace is over.
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(end - day - 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(end - day + 1);
    assert_eq!(hooks.scan().await.unwrap(), 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(end - 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(end + 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    let got = r.wait("ok", 1).await;
    // Signed as at the moved clock's time (which a library would find too old).
    let ts: i64 = got[0].header("webhook-timestamp").parse().unwrap();
    let signed =
        keywarden_core::webhooks::sign(&e.secret, got[0].header("webhook-id"), ts, &got[0].body);
    assert_eq!(got[0].header("webhook-signature"), signed.unwrap());
    let body = got[0].json();
    assert_eq!(body["type"], "key.rotation_grace_ending");
    assert_eq!(body["data"]["key_id"], key_id.as_str());
    assert_eq!(body["data"]["account_id"], account.as_str());
    assert_eq!(body["data"]["mode"], "live");
    assert_eq!(body["data"]["previous_valid_until"], end);
    until_deliveries(&app, &e.id, |d| {
        d.len() == 1 && d[0].status == DeliveryStatus::Delivered
    })
    .await;
    assert_eq!(r.seen("ok").len(), 1);

    // A new rotation is a new grace, announced once too.
    let end2 = rotate(2).await;
    assert!(end2 > end);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(end2 - day + 1);
    assert_eq!(hooks.scan().await.unwrap(), 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    let got = r.wait("ok", 2).await;
    assert_eq!(got[1].json()["data"]["previous_valid_until"], end2);
    until_deliveries(&app, &e.id, |d| {
        d.len() == 2 && d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    assert_eq!(r.seen("ok").len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn redirects_are_failed_attempts_and_bodies_are_kept_up_to_the_bound() {
    let app = spawn_app_with(&format!(
        "{FAST}retry_schedule_seconds_live = [60]\nmax_response_bytes = 101\n"
    ))
    .await;
    let r = receiver().await;
    let redirect = endpoint(
        &app,
        format!("{}/redirect", r.url),
        None,
        None,
        Some(&["account.created"]),
    )
    .await;
    let big = endpoint(
        &app,
        format!("{}/big", r.url),
        None,
        None,
        Some(&["account.created"]),
    )
    .await;
    app.account("Acme").await;
    // The 302 is a failed attempt, retried on the schedule; its target is never asked.
    let d = until_deliveries(&app, &redirect.id, |d| d.len() == 1 && d[0].attempts == 1).await;
    assert_eq!(
        (d[0].status, d[0].last_status),
        (DeliveryStatus::Pending, Some(302))
    );
    let retry_in = d[0].next_attempt_at.unwrap() - app.clock.now_ms();
    assert!((48_000..=72_000).contains(&retry_in), "{retry_in}");
    app.clock.set_ms(d[0].next_attempt_at.unwrap());
    let d = until_deliveries(&app, &redirect.id, |d| d[0].attempts == 2).await;
    assert_eq!(
        (d[0].status, d[0].last_status),
        (DeliveryStatus::Failed, Some(302))
    );
    assert_eq!(r.seen("redirect").len(), 2);
    assert!(r.seen("target").is_empty());

    // Of a 10,000-byte answer, at most 101 bytes are kept, as whole characters.
    let d = until_deliveries(&app, &big.id, |d| {
        d.len() == 1 && d[0].status == DeliveryStatus::Delivered
    })
    .await;
    let kept = d[0].last_response.clone().unwrap();
    assert_eq!(kept, BIG_CHAR.repeat(50));
    assert_eq!(kept.len(), 100);
    let attempts = app.state.store.list_attempts(&d[0].id).await.unwrap();
    assert_eq!(attempts[0].response, kept);
    app.stop().await;
}

#[tokio::test]
async fn a_denied_ip_is_announced_to_a_subscribed_endpoint() {
    let app = spawn_app_with(FAST).await;
    app.clock.set_ms(now_ms());
    let r = receiver().await;
    let account = app.account("Acme").await;
    let e = endpoint(
        &app,
        format!("{}/ok", r.url),
        Some(&account),
        None,
        Some(&["key.ip_denied"]),
    )
    .await;
    let key = app
        .key(
            &account,
            json!({ "mode": "live", "name": "office", "ip_allowlist": ["10.0.0.0/8"] }),
        )
        .await;
    let key_id = key["id"].as_str().unwrap();
    let token = key["api_key"].as_str().unwrap();
    // Allowed, then from elsewhere: asked about by a backend, and calling the public API
    // from 127.0.0.1.
    let ok = app.verify(json!({ "key": token, "ip": "10.1.2.3" })).await;
    assert_eq!(ok["valid"], true, "{ok}");
    let denied = app
        .verify(json!({ "key": token, "ip": "192.168.1.1" }))
        .await;
    assert_eq!(denied["code"], "ip_not_allowed", "{denied}");
    let res = app
        .public(reqwest::Method::GET, "/v1/account", token, None)
        .await;
    assert!(res.status().is_client_error(), "{}", res.status());
    app.state.verifier.writer().flush_now().await.unwrap();
    let d = until_deliveries(&app, &e.id, |d| {
        d.len() == 2 && d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    assert!(d.iter().all(|d| d.kind == "key.ip_denied"));
    let got = r.wait("ok", 2).await;
    let wh = standardwebhooks::Webhook::new(&e.secret).unwrap();
    for req in &got {
        wh.verify(&req.body, &req.headers)
            .expect("the signature verifies");
        let body = req.json();
        assert_eq!(body["type"], "key.ip_denied");
        assert_eq!(body["data"]["key_id"], key_id);
        assert_eq!(body["data"]["account_id"], account.as_str());
        assert_eq!(body["data"]["mode"], "live");
        assert_eq!(body["data"]["actor"], key_id);
        assert!(!String::from_utf8_lossy(&req.body).contains(token));
    }
    assert_eq!(r.seen("ok").len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn expiring_keys_and_quota_thresholds_fire_once_each() {
    let app = spawn_app_with(&format!(
        "{FAST}scan_interval_seconds = 3600\n\
         [plans]\ndefault = \"free\"\n\
         [plans.tiers.free]\nquotas = [{{ unit = \"requests\", limit = 10, period = \"month\" }}]\n"
    ))
    .await;
    let r = receiver().await;
    endpoint(
        &app,
        format!("{}/ok", r.url),
        None,
        None,
        Some(&["key.expiring", "key.expired", "quota.threshold"]),
    )
    .await;
    let account = app.account("Acme").await;
    let t0 = app.clock.now_ms();
    let day = 86_400_000;
    let expires = t0 + 10 * day;
    let key = app
        .key(&account, json!({ "mode": "live", "name": "k", "expires_at": keywarden_server::views::ts(expires) }))
        .await;
    let key_id = key["id"].as_str().unwrap().to_string();
    let stored: KeyRecord = app.state.store.get_key(&key_id).await.unwrap().unwrap();
    let expires = stored.expires_at.expect("the key expires");
    let hooks = Webhooks::new(app.state.clone());
    let count = |kind: &'static str| {
        let store = app.state.store.clone();
        async move {
            let f = EventFilter {
                kind: Some(kind.into()),
                limit: 100,
                ..Default::default()
            };
            store.list_events(&f).await.unwrap().len()
        }
    };
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(expires - 7 * day + 1);
    assert_eq!(hooks.scan().await.unwrap(), 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(expires - 3 * day);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(expires - day + 1);
    assert_eq!(hooks.scan().await.unwrap(), 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.clock.set_ms(expires);
    assert_eq!(hooks.scan().await.unwrap(), 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    assert_eq!(count("key.expiring").await, 2);
    assert_eq!(count("key.expired").await, 1);

    // Quota: nothing at 70 %, once at 80 %, once at 100 %.
    let now = app.clock.now_ms();
    let month = keywarden_core::limits::Period::Month.bounds(now).0;
    let add = |n: u64| keywarden_store::UsageDelta {
        account_id: account.clone(),
        mode: Mode::Live,
        unit: "requests".into(),
        period_start: month,
        amount: n,
    };
    app.state.store.add_usage(&[add(7)]).await.unwrap();
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.state.store.add_usage(&[add(1)]).await.unwrap();
    assert_eq!(hooks.scan().await.unwrap(), 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    app.state.store.add_usage(&[add(2)]).await.unwrap();
    assert_eq!(hooks.scan().await.unwrap(), 1);
    assert_eq!(hooks.scan().await.unwrap(), 0);
    let got = r.wait("ok", 5).await;
    let thresholds: Vec<u64> = got
        .iter()
        .map(Received::json)
        .filter(|b| b["type"] == "quota.threshold")
        .map(|b| b["data"]["threshold_percent"].as_u64().unwrap())
        .collect();
    assert_eq!(thresholds, [80, 100]);
    let expiring: Vec<u64> = got
        .iter()
        .map(Received::json)
        .filter(|b| b["type"] == "key.expiring")
        .map(|b| b["data"]["days"].as_u64().unwrap())
        .collect();
    assert_eq!(expiring, [7, 1]);
    app.stop().await;
}

#[tokio::test]
async fn the_address_guard_refuses_private_networks() {
    for url in [
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://localhost/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ] {
        assert!(
            matches!(check_url(url, false).await, Err(UrlError::Forbidden(_))),
            "{url}"
        );
        assert!(check_url(url, true).await.is_ok(), "{url}");
    }
    for url in [
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "/relative",
    ] {
        assert!(
            matches!(check_url(url, false).await, Err(UrlError::Invalid(_))),
            "{url}"
        );
    }
    assert!(check_url("https://93.184.216.34/hook", false).await.is_ok());

    // The sender refuses them too, by literal address and through a name resolving there,
    // and the receiver hears nothing.
    let app = spawn_app_with("[webhooks]\npoll_interval_ms = 20\n").await;
    let r = receiver().await;
    let port = r.url.rsplit(':').next().unwrap().to_string();
    let by_ip = endpoint(
        &app,
        format!("{}/ok", r.url),
        None,
        None,
        Some(&["account.created"]),
    )
    .await;
    let by_name = endpoint(
        &app,
        format!("http://localhost:{port}/ok"),
        None,
        None,
        Some(&["account.created"]),
    )
    .await;
    app.account("Acme").await;
    for e in [&by_ip, &by_name] {
        let d = until_deliveries(&app, &e.id, |d| d.len() == 1 && d[0].attempts == 1).await;
        assert_eq!(d[0].last_status, None);
        assert!(d[0].last_error.is_some(), "{:?}", d[0]);
    }
    assert!(r.seen("ok").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn two_instances_on_one_postgres_send_each_delivery_once() {
    let Some(pg) = common::pg::spawn_pg_app_with(FAST).await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    let a = &pg.app;
    // A second instance on the same database.
    let url = a.state.settings.config.store.database_url.clone();
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
        ("KEYWARDEN_DATABASE_URL".to_string(), url),
        ("KEYWARDEN_PEPPER".to_string(), "ab".repeat(32)),
    ];
    let mut config = Config::from_parts(FAST, &vars).unwrap();
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    let b = spawn_config(config, tempfile::tempdir().unwrap()).await;
    let r = receiver().await;
    endpoint(a, format!("{}/ok", r.url), None, None, None).await;
    let account = a.account("Acme").await;
    for i in 0..20 {
        let app = if i % 2 == 0 { a } else { &b };
        app.key(&account, json!({ "mode": "live", "name": format!("k{i}") }))
            .await;
    }
    let got = r.wait("ok", 21).await;
    // Give both instances time to send anything twice, then count by webhook-id.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids: Vec<String> = r
        .seen("ok")
        .iter()
        .map(|x| x.header("webhook-id").to_string())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((n, ids.len()), (21, 21), "{}", got.len());
    b.stop().await;
    pg.stop().await;
}

mod management {
    use super::*;
    use keywarden_server::manage::Actor;
    use keywarden_server::manage_webhooks::{NewWebhook, Owner, WebhookManager, WebhookPatch};

    fn new(url: String) -> NewWebhook {
        NewWebhook {
            url,
            ..NewWebhook::default()
        }
    }

    #[tokio::test]
    async fn a_rotated_secret_signs_beside_the_old_one_for_the_overlap() {
        let app = spawn_app_with(FAST).await;
        app.clock.set_ms(now_ms());
        let r = receiver().await;
        let m = WebhookManager::new(&app.state);
        let root = Actor::root(None);
        let mut body = new(format!("{}/ok", r.url));
        body.events = Some(vec!["account.*".into()]);
        let e = m.create(&root, &Owner::Root, body).await.unwrap();
        let old = e.secret.clone();
        let rotated = m.rotate_secret(&root, &Owner::Root, &e.id).await.unwrap();
        assert_ne!(rotated.secret, old);
        app.account("Acme").await;
        let got = r.wait("ok", 1).await;
        assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
        for secret in [&old, &rotated.secret] {
            standardwebhooks::Webhook::new(secret)
                .unwrap()
                .verify(&got[0].body, &got[0].headers)
                .expect("both secrets verify during the overlap");
        }
        // After the overlap only the new secret signs.
        app.clock.advance_secs(24 * 3600 + 1);
        app.account("Other").await;
        let got = r.wait("ok", 2).await;
        let sig = got[1].header("webhook-signature");
        let ts: i64 = got[1].header("webhook-timestamp").parse().unwrap();
        let expected = keywarden_core::webhooks::sign(
            &rotated.secret,
            got[1].header("webhook-id"),
            ts,
            &got[1].body,
        )
        .unwrap();
        assert_eq!(sig, expected);
        app.stop().await;
    }

    #[tokio::test]
    async fn endpoints_are_checked_and_kept_to_their_owner() {
        let app = spawn_app_with("").await;
        let m = WebhookManager::new(&app.state);
        let root = Actor::root(None);
        // The address guard holds at registration, names the setting, and changes nothing.
        for url in [
            "http://127.0.0.1/x",
            "http://169.254.169.254/",
            "http://[::1]/",
            "http://10.0.0.1/",
            "http://localhost:8080/x",
        ] {
            let err = m
                .create(&root, &Owner::Root, new(url.into()))
                .await
                .unwrap_err();
            assert!(
                err.detail
                    .as_deref()
                    .unwrap()
                    .contains("allow_private_networks"),
                "{url}"
            );
        }
        let mut bad = new("https://93.184.216.34/hook".into());
        bad.events = Some(vec!["key.nope".into()]);
        let err = m.create(&root, &Owner::Root, bad).await.unwrap_err();
        assert!(err.detail.as_deref().unwrap().contains("key.nope"));
        assert!(m.list(&Owner::Root).await.unwrap().is_empty());

        let a = app.account("A").await;
        let b = app.account("B").await;
        let owner_a = Owner::Account {
            account_id: a.clone(),
            mode: Mode::Live,
        };
        let owner_a_test = Owner::Account {
            account_id: a.clone(),
            mode: Mode::Test,
        };
        let owner_b = Owner::Account {
            account_id: b.clone(),
            mode: Mode::Live,
        };
        let mut body = new("https://93.184.216.34/hook".into());
        // An account cannot widen its endpoint to other accounts or modes.
        body.account_id = Some(b.clone());
        body.mode = None;
        let e = m
            .create(&Actor::key("key_x", None), &owner_a, body)
            .await
            .unwrap();
        assert_eq!(
            (e.account_id.as_deref(), e.mode),
            (Some(a.as_str()), Some(Mode::Live))
        );
        assert!(m.get(&owner_a, &e.id).await.is_ok());
        for other in [&owner_b, &owner_a_test] {
            assert_eq!(m.get(other, &e.id).await.unwrap_err().code.status(), 404);
            assert!(m.list(other).await.unwrap().is_empty());
            assert!(m.delete(&root, other, &e.id).await.is_err());
        }
        assert_eq!(m.list(&Owner::Root).await.unwrap().len(), 1);
        let patched = m
            .update(
                &root,
                &owner_a,
                &e.id,
                WebhookPatch {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(!patched.enabled);
        // The audit trail has the changes, never the secret.
        let f = EventFilter {
            kind: Some("webhook.*".into()),
            limit: 10,
            ..Default::default()
        };
        let evs = app.state.store.list_events(&f).await.unwrap();
        assert_eq!(evs.len(), 2);
        assert!(evs.iter().all(|ev| !ev.data.to_string().contains("whsec_")));
        m.delete(&root, &owner_a, &e.id).await.unwrap();
        assert!(m.list(&Owner::Root).await.unwrap().is_empty());
        app.stop().await;
    }

    #[tokio::test]
    async fn the_log_shows_attempts_and_redelivery_and_tests_send_again() {
        let app = spawn_app_with(&format!("{FAST}retry_schedule_seconds_live = []\n")).await;
        let r = receiver().await;
        let m = WebhookManager::new(&app.state);
        let root = Actor::root(None);
        let mut body = new(format!("{}/fail", r.url));
        body.events = Some(vec!["account.created".into()]);
        let e = m.create(&root, &Owner::Root, body).await.unwrap();
        app.account("Acme").await;
        r.wait("fail", 1).await;
        until_deliveries(&app, &e.id, |d| {
            d.len() == 1 && d[0].status == DeliveryStatus::Failed
        })
        .await;
        let log = m.deliveries(&Owner::Root, &e.id, None, 10).await.unwrap();
        let attempts = log[0].attempt_log.as_ref().unwrap();
        assert_eq!((attempts.len(), attempts[0].status), (1, Some(500)));
        let again = m.redeliver(&Owner::Root, &e.id, &log[0].id).await.unwrap();
        assert_eq!(again.status, "pending");
        r.wait("fail", 2).await;
        let got = r.seen("fail");
        assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
        let test = m.send_test(&Owner::Root, &e.id).await.unwrap();
        assert_eq!(test.kind, "webhook.test");
        let got = r.wait("fail", 3).await;
        assert_eq!(got[2].json()["type"], "webhook.test");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_lockout_is_announced_once_to_the_operator() {
    let app = spawn_app_with(&format!(
        "{FAST}[auth]\nlockout = {{ max_failures = 3, window_seconds = 300, lock_seconds = 300 }}\n"
    ))
    .await;
    let r = receiver().await;
    endpoint(
        &app,
        format!("{}/ok", r.url),
        None,
        None,
        Some(&["lockout.*"]),
    )
    .await;
    let account = app.account("Acme").await;
    // An account's own endpoint does not hear of a network's lockout.
    let own = endpoint(&app, format!("{}/fail", r.url), Some(&account), None, None).await;
    for _ in 0..6 {
        app.verify(json!({ "key": "sk_live_nope", "ip": "203.0.113.7" }))
            .await;
    }
    let got = r.wait("ok", 1).await;
    let body = got[0].json();
    assert_eq!(body["type"], "lockout.started");
    assert_eq!(body["data"]["network"], "203.0.113.7/32");
    assert_eq!(body["data"]["account_id"], Value::Null);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(r.seen("ok").len(), 1);
    assert!(app
        .state
        .store
        .list_deliveries(&own.id, None, 10)
        .await
        .unwrap()
        .iter()
        .all(|d| d.kind != "lockout.started"));
    app.stop().await;
}

mod http {
    use super::*;
    use common::Answer;
    use reqwest::Method;

    #[tokio::test]
    async fn the_admin_api_manages_endpoints() {
        let app = spawn_app_with(FAST).await;
        app.clock.set_ms(now_ms());
        let r = receiver().await;
        let account = app.account("Acme").await;
        let res = app
            .admin(
                Method::POST,
                "/v1/admin/webhooks",
                Some(json!({ "url": format!("{}/ok", r.url), "events": ["key.*"], "account_id": account, "description": "ops" })),
            )
            .await;
        assert_eq!(res.status(), 201);
        let created: Value = res.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("whe_"));
        let secret = created["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("whsec_"));
        // The secret is shown only once.
        let shown: Value = app
            .admin(Method::GET, &format!("/v1/admin/webhooks/{id}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(shown["url"], created["url"]);
        assert!(shown.get("secret").is_none());
        let list: Value = app
            .admin(Method::GET, "/v1/admin/webhooks", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert!(!list.to_string().contains("whsec_"));

        app.live_key(&account).await;
        let got = r.wait("ok", 1).await;
        standardwebhooks::Webhook::new(&secret)
            .unwrap()
            .verify(&got[0].body, &got[0].headers)
            .unwrap();
        let log: Value = app
            .admin(
                Method::GET,
                &format!("/v1/admin/webhooks/{id}/deliveries?limit=5"),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        let delivery = log[0]["id"].as_str().unwrap().to_string();
        assert_eq!(log[0]["event_id"], got[0].header("webhook-id"));
        let res = app
            .admin(
                Method::POST,
                &format!("/v1/admin/webhooks/{id}/deliveries/{delivery}/redeliver"),
                None,
            )
            .await;
        assert_eq!(res.status(), 202);
        r.wait("ok", 2).await;
        let res = app
            .admin(Method::POST, &format!("/v1/admin/webhooks/{id}/test"), None)
            .await;
        assert_eq!(res.status(), 202);
        let res = app
            .admin(
                Method::POST,
                &format!("/v1/admin/webhooks/{id}/rotate-secret"),
                None,
            )
            .await;
        assert_eq!(res.status(), 200);
        let rotated: Value = res.json().await.unwrap();
        assert_ne!(rotated["secret"], created["secret"]);
        assert!(rotated["previous_secret_until"].is_string());
        let res = app
            .admin(
                Method::PATCH,
                &format!("/v1/admin/webhooks/{id}"),
                Some(json!({ "enabled": false, "events": null })),
            )
            .await;
        let patched: Value = res.json().await.unwrap();
        assert_eq!(
            (patched["enabled"].clone(), patched["events"].clone()),
            (json!(false), Value::Null)
        );
        // Bad input is named.
        let res = app
            .admin(
                Method::POST,
                "/v1/admin/webhooks",
                Some(json!({ "url": "ftp://x" })),
            )
            .await;
        assert_eq!(res.status(), 400);
        let res = app
            .admin(
                Method::POST,
                "/v1/admin/webhooks",
                Some(json!({ "url": "https://93.184.216.34/", "events": ["nope"] })),
            )
            .await;
        assert_eq!(res.status(), 400);
        let res = app
            .admin(Method::DELETE, &format!("/v1/admin/webhooks/{id}"), None)
            .await;
        assert_eq!(res.status(), 204);
        let res = app
            .admin(Method::GET, &format!("/v1/admin/webhooks/{id}"), None)
            .await;
        assert_eq!(res.status(), 404);
        app.stop().await;
    }

    async fn backlog(app: &TestApp) -> u64 {
        let metrics = app
            .client
            .get(format!("{}/metrics", app.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("keywarden_webhook_backlog "))
            .unwrap_or_else(|| panic!("no backlog in:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_disabled_endpoint_refuses_redelivery_and_tests_and_leaves_the_backlog() {
        // No worker: deliveries stay pending, so the backlog shows them.
        let app = spawn_app_with("[webhooks]\nenabled = false\n").await;
        let res = app
            .admin(
                Method::POST,
                "/v1/admin/webhooks",
                Some(json!({ "url": "https://93.184.216.34/hook" })),
            )
            .await;
        assert_eq!(res.status(), 201);
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        // Its own webhook.created waits to be sent.
        assert_eq!(backlog(&app).await, 1);
        let log: Value = app
            .admin(
                Method::GET,
                &format!("/v1/admin/webhooks/{id}/deliveries"),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        let delivery = log[0]["id"].as_str().unwrap().to_string();
        let res = app
            .admin(
                Method::PATCH,
                &format!("/v1/admin/webhooks/{id}"),
                Some(json!({ "enabled": false })),
            )
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(backlog(&app).await, 0);
        for path in [
            format!("/v1/admin/webhooks/{id}/test"),
            format!("/v1/admin/webhooks/{id}/deliveries/{delivery}/redeliver"),
        ] {
            let a = Answer::of(app.admin(Method::POST, &path, None).await)
                .await
                .err(409, "conflict");
            assert!(
                a.message().contains("disabled") && a.message().contains("never be sent"),
                "{path}: {}",
                a.message()
            );
        }
        // Nothing was queued by the refused test.
        let log: Value = app
            .admin(
                Method::GET,
                &format!("/v1/admin/webhooks/{id}/deliveries"),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(log.as_array().unwrap().len(), 1);
        // Enabled again: its pending delivery counts again, with the change's own event.
        let res = app
            .admin(
                Method::PATCH,
                &format!("/v1/admin/webhooks/{id}"),
                Some(json!({ "enabled": true })),
            )
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(backlog(&app).await, 2);
        let res = app
            .admin(Method::POST, &format!("/v1/admin/webhooks/{id}/test"), None)
            .await;
        assert_eq!(res.status(), 202);
        assert_eq!(backlog(&app).await, 3);

        // The API documents say so, for the operator's routes and the accounts' own.
        for (base, prefix) in [(&app.admin, "/v1/admin"), (&app.public, "/v1")] {
            let doc: Value = app
                .client
                .get(format!("{base}/openapi.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for path in [
                format!("{prefix}/webhooks/{{id}}/test"),
                format!("{prefix}/webhooks/{{id}}/deliveries/{{delivery_id}}/redeliver"),
            ] {
                let op = &doc["paths"][&path]["post"];
                assert!(op["responses"].get("409").is_some(), "{path}: {op}");
                let said = op["description"].as_str().unwrap_or_default();
                assert!(said.contains("disabled"), "{path}: {said}");
            }
        }
        app.stop().await;
    }

    #[tokio::test]
    async fn an_account_changes_tests_and_redelivers_its_own_endpoint() {
        let app = spawn_app_with(FAST).await;
        app.clock.set_ms(now_ms());
        let r = receiver().await;
        let a = app.account("A").await;
        let (_, key) = app.live_key(&a).await;
        let created = Answer::of(
            app.public(
                Method::POST,
                "/v1/webhooks",
                &key,
                Some(json!({ "url": format!("{}/ok", r.url), "events": ["key.created"] })),
            )
            .await,
        )
        .await
        .ok(201);
        let id = created["id"].as_str().unwrap().to_string();
        let first_secret = created["secret"].as_str().unwrap().to_string();
        let call = |method: Method, path: String, key: &str, body: Option<Value>| {
            let app = &app;
            let key = key.to_string();
            async move { Answer::of(app.public(method, &path, &key, body).await).await }
        };

        // PATCH: new events and description; the secret is never shown again.
        let patched = call(
            Method::PATCH,
            format!("/v1/webhooks/{id}"),
            &key,
            Some(json!({ "events": ["key.*"], "description": "billing" })),
        )
        .await
        .ok(200);
        assert_eq!(
            (patched["events"].clone(), patched["description"].clone()),
            (json!(["key.*"]), json!("billing"))
        );
        assert!(patched.get("secret").is_none());

        // rotate-secret: a new secret, shown once; both sign during the overlap.
        let rotated = call(
            Method::POST,
            format!("/v1/webhooks/{id}/rotate-secret"),
            &key,
            None,
        )
        .await
        .ok(200);
        let secret = rotated["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("whsec_") && secret != first_secret);
        assert!(rotated["previous_secret_until"].is_string());
        let shown = call(Method::GET, format!("/v1/webhooks/{id}"), &key, None)
            .await
            .ok(200);
        assert!(!shown.to_string().contains("whsec_"));

        let (key_id, _) = app.live_key(&a).await;
        let got = r.wait("ok", 1).await;
        assert_eq!(got[0].json()["data"]["key_id"], key_id.as_str());
        for s in [&first_secret, &secret] {
            standardwebhooks::Webhook::new(s)
                .unwrap()
                .verify(&got[0].body, &got[0].headers)
                .unwrap();
        }

        // deliveries: the log with its attempt; redeliver sends the same event again.
        let log = call(
            Method::GET,
            format!("/v1/webhooks/{id}/deliveries?limit=10"),
            &key,
            None,
        )
        .await
        .ok(200);
        let sent = log
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event_id"] == got[0].header("webhook-id"))
            .unwrap_or_else(|| panic!("the delivery is in the log: {log}"));
        assert_eq!(sent["attempt_log"][0]["status"], 204);
        let delivery = sent["id"].as_str().unwrap();
        let again = call(
            Method::POST,
            format!("/v1/webhooks/{id}/deliveries/{delivery}/redeliver"),
            &key,
            None,
        )
        .await
        .ok(202);
        assert_eq!(again["status"], "pending");
        let got = r.wait("ok", 2).await;
        assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));

        // test: a webhook.test event for this endpoint.
        let test = call(Method::POST, format!("/v1/webhooks/{id}/test"), &key, None)
            .await
            .ok(202);
        assert_eq!(test["type"], "webhook.test");
        let got = r.wait("ok", 3).await;
        assert_eq!(got[2].json()["type"], "webhook.test");
        assert_eq!(got[2].json()["data"]["webhook_id"], id.as_str());

        // Disabled, the endpoint refuses tests and redeliveries, saying why.
        call(
            Method::PATCH,
            format!("/v1/webhooks/{id}"),
            &key,
            Some(json!({ "enabled": false })),
        )
        .await
        .ok(200);
        for path in [
            format!("/v1/webhooks/{id}/test"),
            format!("/v1/webhooks/{id}/deliveries/{delivery}/redeliver"),
        ] {
            let a = call(Method::POST, path, &key, None)
                .await
                .err(409, "conflict");
            assert!(a.message().contains("disabled"), "{}", a.message());
        }

        // A key that may write but not delete endpoints cannot delete one.
        let writer = app
            .key(
                &a,
                json!({ "mode": "live", "name": "w", "scopes": ["webhooks:read", "webhooks:write"] }),
            )
            .await;
        let writer = writer["api_key"].as_str().unwrap();
        call(
            Method::PATCH,
            format!("/v1/webhooks/{id}"),
            writer,
            Some(json!({ "enabled": true })),
        )
        .await
        .ok(200);
        call(Method::DELETE, format!("/v1/webhooks/{id}"), writer, None)
            .await
            .err(403, "insufficient_scope");

        // A test-mode key of the same account does not see the live endpoint at all.
        let test_key = app.key(&a, json!({ "mode": "test", "name": "t" })).await;
        let test_key = test_key["api_key"].as_str().unwrap();
        for (method, path) in [
            (Method::GET, format!("/v1/webhooks/{id}")),
            (Method::PATCH, format!("/v1/webhooks/{id}")),
            (Method::DELETE, format!("/v1/webhooks/{id}")),
            (Method::POST, format!("/v1/webhooks/{id}/rotate-secret")),
            (Method::GET, format!("/v1/webhooks/{id}/deliveries")),
            (
                Method::POST,
                format!("/v1/webhooks/{id}/deliveries/{delivery}/redeliver"),
            ),
            (Method::POST, format!("/v1/webhooks/{id}/test")),
        ] {
            let body = (method == Method::PATCH).then(|| json!({ "description": "x" }));
            call(method, path, test_key, body)
                .await
                .err(404, "not_found");
        }
        let list = call(Method::GET, "/v1/webhooks".into(), test_key, None)
            .await
            .ok(200);
        assert_eq!(list, json!([]));
        // Still there, unchanged by the refused calls; its owner deletes it.
        let shown = call(Method::GET, format!("/v1/webhooks/{id}"), &key, None)
            .await
            .ok(200);
        assert_eq!(shown["description"], "billing");
        assert_eq!(
            call(Method::DELETE, format!("/v1/webhooks/{id}"), &key, None)
                .await
                .status,
            204
        );
        app.stop().await;
    }

    #[tokio::test]
    async fn an_account_manages_its_own_endpoints_only() {
        let app = spawn_app_with(FAST).await;
        let r = receiver().await;
        let a = app.account("A").await;
        let b = app.account("B").await;
        let (_, key_a) = app.live_key(&a).await;
        let (_, key_b) = app.live_key(&b).await;
        let res = app
            .public(
                Method::POST,
                "/v1/webhooks",
                &key_a,
                Some(json!({ "url": format!("{}/ok", r.url), "events": ["key.created"] })),
            )
            .await;
        assert_eq!(res.status(), 201);
        let created: Value = res.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["account_id"], a.as_str());
        assert_eq!(created["mode"], "live");
        // Another account sees nothing of it.
        for (method, path) in [
            (Method::GET, format!("/v1/webhooks/{id}")),
            (Method::DELETE, format!("/v1/webhooks/{id}")),
            (Method::POST, format!("/v1/webhooks/{id}/test")),
        ] {
            let res = app.public(method, &path, &key_b, None).await;
            assert_eq!(res.status(), 404, "{path}");
        }
        let list: Value = app
            .public(Method::GET, "/v1/webhooks", &key_b, None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list, json!([]));
        // Its own key events only; the other account's do not reach it.
        app.live_key(&b).await;
        app.key(&a, json!({ "mode": "live", "name": "second" }))
            .await;
        let got = r.wait("ok", 1).await;
        assert_eq!(got[0].json()["data"]["account_id"], a.as_str());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.seen("ok").len(), 1);
        // A key without the webhooks scopes is refused.
        let narrow = app
            .key(
                &a,
                json!({ "mode": "live", "name": "narrow", "scopes": ["usage:read"] }),
            )
            .await;
        let narrow = narrow["api_key"].as_str().unwrap();
        let res = app.public(Method::GET, "/v1/webhooks", narrow, None).await;
        assert_eq!(res.status(), 403);
        let res = app
            .public(Method::DELETE, &format!("/v1/webhooks/{id}"), &key_a, None)
            .await;
        assert_eq!(res.status(), 204);
        app.stop().await;
    }
}
