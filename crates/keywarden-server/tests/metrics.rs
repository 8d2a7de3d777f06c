//! `/metrics` on the admin listener: open like the health checks, Prometheus text, no
//! secret or identifier in it.

mod common;

use common::spawn_app;
use reqwest::Method;

#[tokio::test]
async fn metrics_are_open_and_carry_no_identifiers() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    let res = app.public(Method::GET, "/v1/account", &token, None).await;
    assert_eq!(res.status(), 200);

    let res = app
        .client
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let body = res.text().await.unwrap();
    for name in [
        "keywarden_writer_pending",
        "keywarden_writer_dropped_activity_total",
        "keywarden_cache_keys",
        "keywarden_limiter_rate_entries",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert!(!body.contains(&acc), "an account id leaked into metrics");
    assert!(!body.contains(&token), "a key leaked into metrics");
    // The public listener does not expose it.
    let res = app
        .client
        .get(format!("{}/metrics", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
