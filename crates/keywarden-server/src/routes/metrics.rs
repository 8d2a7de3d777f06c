//! `/metrics` on the admin listener: Prometheus text exposition of the figures an operator
//! watches — the writer's queue and drops, cache sizes, limiter state and the Redis link.
//! No label ever carries a key, an account or a secret.

use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;

/// Renders the metrics.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition (version 0.0.4) of the \
        writer, cache, limiter and Redis figures; no label carries a key, an account or a secret",
        content_type = "text/plain", body = String)),
    security(()), tag = "admin")]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let v = &state.verifier;
    let w = v.writer();
    let (keys, unknown) = v.cache_entries();
    let l = v.limiter().stats();
    let mut out = String::new();
    put(
        &mut out,
        "writer_pending",
        "gauge",
        "Records waiting for the next flush.",
        w.pending() as u64,
    );
    put(
        &mut out,
        "writer_flushed_batches_total",
        "counter",
        "Batches written.",
        w.flushed_batches(),
    );
    put(
        &mut out,
        "writer_failed_flushes_total",
        "counter",
        "Flushes that failed and were retried.",
        w.failed_flushes(),
    );
    put(
        &mut out,
        "writer_dropped_activity_total",
        "counter",
        "Activity rows dropped under overload.",
        w.dropped_activity(),
    );
    put(
        &mut out,
        "cache_keys",
        "gauge",
        "Key lookups cached as known keys.",
        keys,
    );
    put(
        &mut out,
        "cache_unknown_lookups",
        "gauge",
        "Lookups cached as unknown.",
        unknown,
    );
    put(
        &mut out,
        "limiter_rate_entries",
        "gauge",
        "Per-key rate-limit states held in this process.",
        l.rate_entries,
    );
    put(
        &mut out,
        "limiter_lockout_entries",
        "gauge",
        "Per-IP lockout states held in this process.",
        l.lockout_entries,
    );
    put(
        &mut out,
        "limiter_quota_entries",
        "gauge",
        "Quota counters held in this process.",
        l.quota_entries,
    );
    if let Some(r) = l.redis {
        put(
            &mut out,
            "redis_healthy",
            "gauge",
            "1 when the last call reached Redis.",
            u64::from(r.healthy),
        );
        put(
            &mut out,
            "redis_fallbacks_total",
            "counter",
            "Limit decisions made locally because Redis did not answer.",
            r.fallbacks,
        );
        put(
            &mut out,
            "redis_outages_total",
            "counter",
            "Redis outages seen.",
            r.outages,
        );
        put(
            &mut out,
            "redis_connects_total",
            "counter",
            "Connections opened to Redis.",
            r.connects,
        );
    }
    let h = &state.webhook_stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP keywarden_webhook_attempts_total Webhook attempts made by this process, by outcome."
    );
    let _ = writeln!(out, "# TYPE keywarden_webhook_attempts_total counter");
    for (outcome, n) in [
        ("delivered", load(&h.delivered)),
        ("retried", load(&h.retried)),
        ("failed", load(&h.failed)),
    ] {
        let _ = writeln!(
            out,
            "keywarden_webhook_attempts_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    put(
        &mut out,
        "webhook_endpoints_disabled_total",
        "counter",
        "Webhook endpoints this process disabled (410, or failing for too long).",
        load(&h.disabled),
    );
    put(
        &mut out,
        "webhook_derived_events_total",
        "counter",
        "Derived events raised by this process (key.expiring, quota.threshold, ...).",
        load(&h.derived),
    );
    // The backlog is read from the store; when it cannot answer, the line is left out.
    if let Ok(n) = state.store.webhook_backlog().await {
        put(
            &mut out,
            "webhook_backlog",
            "gauge",
            "Webhook deliveries waiting to be sent (all processes).",
            n,
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// One metric with its help and type lines, in the Prometheus text format.
fn put(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP keywarden_{name} {help}");
    let _ = writeln!(out, "# TYPE keywarden_{name} {kind}");
    let _ = writeln!(out, "keywarden_{name} {value}");
}
