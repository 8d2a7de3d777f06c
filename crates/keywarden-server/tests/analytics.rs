//! Analytics counts equal the requests made, by outcome (`docs/analytics.md`): per key, per
//! account and deployment-wide, in minute, hour and day buckets, whichever way a request
//! came (verify, forward-auth, the gateway, self-service), on SQLite and on PostgreSQL.

mod common;

use common::upstream::{spawn_upstream, Upstream};
use common::{spawn_app_with, TestApp, T0};
use reqwest::Method;
use serde_json::{json, Value};

/// Gateway mode in front of `up`, with a route any key may take and one that needs
/// `usage:read`; forward-auth decides by the same routes.
fn config(up: &Upstream) -> String {
    format!(
        r#"
[gateway]
upstream = "{}/base"

[[routes]]
path = "/api/**"

[[routes]]
path = "/reports/**"
scopes = ["usage:read"]
"#,
        up.url()
    )
}

/// A proxy's forward-auth subrequest (nginx's convention) for `GET uri` with `token`.
async fn forward_auth(app: &TestApp, uri: &str, token: &str) -> u16 {
    app.client
        .get(format!("{}/v1/forward-auth", app.admin))
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", uri)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `GET path` through the gateway with `token`.
async fn through_gateway(app: &TestApp, path: &str, token: &str) -> u16 {
    app.client
        .get(format!("{}{path}", app.public))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ts(ms: i64) -> String {
    keywarden_server::views::ts(ms)
}

async fn report(app: &TestApp, query: &str) -> Value {
    app.admin_call(Method::GET, &format!("/v1/admin/analytics?{query}"), None)
        .await
        .ok(200)
}

async fn counts_equal_requests(app: &TestApp) {
    let hour = 3_600_000;
    let range = format!("from={}&to={}", ts(T0 - hour), ts(T0 + hour));
    let a = app.account("Counted").await;
    let b = app.account("Other").await;
    let (k1, t1) = app
        .key_pair(
            &a,
            json!({ "mode": "live", "name": "limited",
                    "rate_limit": { "requests": 3, "per_seconds": 60 } }),
        )
        .await;
    let (_, t2) = app.test_key(&a).await;
    let (kb, tb) = app
        .key_pair(
            &b,
            json!({ "mode": "live", "name": "narrow", "scopes": ["account:read"] }),
        )
        .await;
    let (kp, tp) = app
        .key_pair(
            &a,
            json!({ "mode": "live", "name": "proxied", "scopes": ["account:read"] }),
        )
        .await;

    // A's live key: 3 allowed, then 2 over its rate limit.
    for _ in 0..5 {
        app.verify(json!({ "key": t1 })).await;
    }
    // A's test key, through the self-service API: 2 allowed.
    for _ in 0..2 {
        app.assert_key_works(&t2).await;
    }
    // B's key: 2 refused for scope, 1 allowed, then 1 allowed an hour later.
    for _ in 0..2 {
        app.verify(json!({ "key": tb, "scopes": ["usage:read"] }))
            .await;
    }
    app.verify(json!({ "key": tb })).await;
    // A's proxied key: through forward-auth and through the gateway, 2 allowed and 1
    // refused for scope each.
    for _ in 0..2 {
        assert_eq!(forward_auth(app, "/api/orders", &tp).await, 200);
        assert_eq!(through_gateway(app, "/api/orders", &tp).await, 200);
    }
    assert_eq!(forward_auth(app, "/reports/monthly", &tp).await, 403);
    assert_eq!(through_gateway(app, "/reports/monthly", &tp).await, 403);
    // Keys nobody knows: deployment-wide totals only.
    for _ in 0..3 {
        app.verify(json!({ "key": "kw_sk_live_notakeynotakeynotakeynotakey00" }))
            .await;
    }
    app.clock.advance_ms(hour);
    app.verify(json!({ "key": tb })).await;
    app.flush_writer().await;

    let r = report(app, &format!("account_id={a}&granularity=hour&{range}")).await;
    assert_eq!(
        r["totals"],
        json!({ "valid": 9, "rate_limit_exceeded": 2, "insufficient_scope": 2 }),
        "{r}"
    );
    assert_eq!(r["total"], 13);
    assert_eq!(r["buckets"].as_array().unwrap().len(), 3, "{r}");

    let r = report(app, &format!("key_id={k1}&granularity=minute&{range}")).await;
    assert_eq!(r["account_id"], json!(a));
    assert_eq!(
        r["totals"],
        json!({ "valid": 3, "rate_limit_exceeded": 2 }),
        "{r}"
    );
    let busy: Vec<&Value> = r["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["total"] != 0)
        .collect();
    assert_eq!(busy.len(), 1, "one minute holds them all: {r}");
    assert_eq!(busy[0]["start"], json!(ts(T0)));

    let r = report(
        app,
        &format!("account_id={a}&mode=test&granularity=day&{range}"),
    )
    .await;
    assert_eq!(r["totals"], json!({ "valid": 2 }), "{r}");

    let r = report(app, &format!("key_id={kp}&granularity=minute&{range}")).await;
    assert_eq!(
        r["totals"],
        json!({ "valid": 4, "insufficient_scope": 2 }),
        "forward-auth and the gateway count for their key: {r}"
    );

    let r = report(app, &format!("key_id={kb}&granularity=hour&{range}")).await;
    let by_hour: Vec<(Value, Value)> = r["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["total"] != 0)
        .map(|b| (b["start"].clone(), b["counts"].clone()))
        .collect();
    assert_eq!(
        by_hour,
        vec![
            (
                json!(ts(T0)),
                json!({ "valid": 1, "insufficient_scope": 2 })
            ),
            (json!(ts(T0 + hour)), json!({ "valid": 1 })),
        ],
        "{r}"
    );

    // The deployment: every decision, known key or not.
    let r = report(app, &format!("granularity=day&{range}")).await;
    assert_eq!(
        r["totals"],
        json!({ "valid": 11, "rate_limit_exceeded": 2, "insufficient_scope": 4, "invalid_api_key": 3 }),
        "{r}"
    );

    // Self-service: the caller's account and mode only.
    let mine = app
        .call(
            Method::GET,
            &format!("/v1/analytics?granularity=hour&{range}"),
            &t2,
            None,
        )
        .await
        .ok(200);
    assert_eq!(mine["account_id"], json!(a));
    assert_eq!(mine["mode"], "test");
    assert_eq!(mine["totals"], json!({ "valid": 2 }), "{mine}");
    // Another mode's key, or another account's, is not found.
    app.call(
        Method::GET,
        &format!("/v1/analytics?key_id={k1}"),
        &t2,
        None,
    )
    .await
    .err(404, "not_found");
    app.call(
        Method::GET,
        &format!("/v1/analytics?key_id={kb}"),
        &t2,
        None,
    )
    .await
    .err(404, "not_found");
    // Bad input names the field.
    app.admin_call(Method::GET, "/v1/admin/analytics?granularity=week", None)
        .await
        .invalid("granularity");
    app.admin_call(
        Method::GET,
        &format!(
            "/v1/admin/analytics?granularity=minute&from={}&to={}",
            ts(T0 - 30 * 86_400_000),
            ts(T0)
        ),
        None,
    )
    .await
    .invalid("from");

    // A key without `usage:read` reads no analytics, not even its own.
    app.call(
        Method::GET,
        &format!("/v1/analytics?key_id={kb}"),
        &tb,
        None,
    )
    .await
    .err(403, "insufficient_scope");
    app.call(Method::GET, "/v1/analytics", &tb, None)
        .await
        .err(403, "insufficient_scope");
}

#[tokio::test]
async fn analytics_counts_equal_requests_on_sqlite() {
    let up = spawn_upstream().await;
    let app = spawn_app_with(&config(&up)).await;
    counts_equal_requests(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn analytics_counts_equal_requests_on_postgres() {
    let up = spawn_upstream().await;
    let Some(pg) = common::pg::spawn_pg_app_with(&config(&up)).await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    counts_equal_requests(&pg.app).await;
    pg.stop().await;
}
