//! Analytics counts equal the requests made, by outcome (`docs/analytics.md`): per key, per
//! account and deployment-wide, in minute, hour and day buckets, whichever way a request
//! came (verify, self-service), on SQLite and on PostgreSQL.

mod common;

use common::{spawn_app, TestApp, T0};
use reqwest::Method;
use serde_json::{json, Value};

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
        json!({ "valid": 5, "rate_limit_exceeded": 2 }),
        "{r}"
    );
    assert_eq!(r["total"], 7);
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
        json!({ "valid": 7, "rate_limit_exceeded": 2, "insufficient_scope": 2, "invalid_api_key": 3 }),
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
}

#[tokio::test]
async fn analytics_counts_equal_requests_on_sqlite() {
    let app = spawn_app().await;
    counts_equal_requests(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn analytics_counts_equal_requests_on_postgres() {
    let Some(pg) = common::pg::spawn_pg_app().await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    counts_equal_requests(&pg.app).await;
    pg.stop().await;
}
