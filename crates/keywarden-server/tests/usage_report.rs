//! `POST /v1/admin/accounts/{id}/usage` with amounts at the edge of what a usage counter
//! holds: an amount past it is refused naming `amount` and counts nothing; counters that
//! would pass it stay at the most they hold, on SQLite and PostgreSQL alike, instead of
//! failing with 500.

mod common;

use common::api::Answer;
use common::pg::spawn_pg_app_with;
use common::{spawn_app_with, TestApp};
use keywarden_core::limits::Period;
use keywarden_core::model::Mode;
use reqwest::Method;
use serde_json::json;

const PLAN: &str = r#"
[plans.tiers.default]
quotas = [{ unit = "requests", limit = 1000, period = "month" }]
"#;

async fn report(app: &TestApp, acc: &str, amount: u64) -> Answer {
    let res = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{acc}/usage"),
            Some(json!({"unit": "requests", "amount": amount})),
        )
        .await;
    Answer::of(res).await
}

async fn usage_saturates(app: &TestApp) {
    let acc = app.account("Acme").await;
    // Past what a counter holds: refused, nothing counted.
    let a = report(app, &acc, u64::MAX).await.invalid("amount");
    assert!(a.message().starts_with("amount: "), "{}", a.message());
    let used = report(app, &acc, 1).await.ok(200)["requests_used"].clone();
    assert_eq!(used, json!(1));
    // Two large reports: the counter stays at the most it holds.
    let big = i64::MAX as u64 - 1;
    report(app, &acc, big).await.ok(200);
    let v = report(app, &acc, big).await.ok(200);
    assert_eq!(v["requests_remaining"], json!(0));
    // The store's counter holds the most it can (a restart reads it back).
    let month = Period::Month.bounds(app.state.clock.now_ms()).0;
    let stored = app
        .state
        .store
        .get_usage(&acc, Mode::Live, "requests", month)
        .await
        .unwrap();
    assert_eq!(stored, i64::MAX as u64);
}

#[tokio::test]
async fn usage_reports_past_a_counters_range_on_sqlite() {
    let app = spawn_app_with(PLAN).await;
    usage_saturates(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn usage_reports_past_a_counters_range_on_postgres() {
    let Some(pg) = spawn_pg_app_with(PLAN).await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    usage_saturates(&pg.app).await;
    pg.stop().await;
}
