//! Sending webhooks (`docs/webhooks.md`): the delivery worker that drains the store's
//! outbox, the HTTP sender with its address guard, and the scanner that raises the derived
//! events (`key.expiring`, `key.expired`, `key.rotation_grace_ending`, `quota.threshold`).
//!
//! Each due delivery is claimed for a lease, sent in a task of its own (at most
//! `webhooks.concurrency` at once, and at most `webhooks.per_endpoint_concurrency` to one
//! endpoint), and its outcome recorded; a slow endpoint holds only its own tasks, never
//! all of them. Times (due dates, leases, the `webhook-timestamp` header) come from the
//! service's clock, so tests move them.

use crate::config::WebhooksConfig;
use crate::state::AppState;
use keywarden_core::model::{new_id, AuditEvent, Millis, Mode};
use keywarden_core::webhooks::{forbidden_address, jitter, retry_delay_ms, signature_header};
use keywarden_store::webhooks::{AttemptOutcome, DueDelivery, NextStep, WebhookAttempt};
use keywarden_store::Page;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Attempts answered 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed and will be retried.
    pub retried: AtomicU64,
    /// Deliveries given up (schedule spent, endpoint gone or disabled).
    pub failed: AtomicU64,
    /// Endpoints disabled by Keywarden.
    pub disabled: AtomicU64,
    /// Derived events raised.
    pub derived: AtomicU64,
}

/// Why a URL may not be sent to.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not an absolute http(s) URL with a host.
    #[error("{0}")]
    Invalid(String),
    /// It is, or resolves only to, an address endpoints may not reach.
    #[error("{0}")]
    Forbidden(String),
}

/// Checks an endpoint URL: `http` or `https`, a host, no credentials; and unless private
/// networks are allowed, a host that is not and does not resolve to a loopback, private,
/// link-local or metadata address. The sender checks again on every attempt (a name may
/// resolve elsewhere later).
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), UrlError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| UrlError::Invalid(format!("url: not an absolute URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlError::Invalid("url: must be http or https".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlError::Invalid(
            "url: must not carry credentials; verify the signature instead".into(),
        ));
    }
    let Some(host) = parsed.host() else {
        return Err(UrlError::Invalid("url: has no host".into()));
    };
    if url.len() > 2_048 {
        return Err(UrlError::Invalid("url: at most 2048 characters".into()));
    }
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    match host {
        url::Host::Ipv4(ip) => literal(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => literal(IpAddr::V6(ip)),
        url::Host::Domain(name) => resolve_allowed(name, port)
            .await
            .map(drop)
            .map_err(UrlError::Forbidden),
    }
}

fn literal(ip: IpAddr) -> Result<(), UrlError> {
    if forbidden_address(ip) {
        Err(UrlError::Forbidden(format!(
            "url: {ip} is a loopback, private, link-local or metadata address \
             (webhooks.allow_private_networks is false)"
        )))
    } else {
        Ok(())
    }
}

/// How long a name may take to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `name` and keeps only allowed addresses; an error when none is left.
async fn resolve_allowed(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((name, port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(DNS_TIMEOUT, lookup)
        .await
        .map_err(|_| format!("url: {name} did not resolve within {DNS_TIMEOUT:?}"))?
        .map_err(|e| format!("url: {name} does not resolve ({e})"))?
        .collect();
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !forbidden_address(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "url: {name} resolves only to loopback, private, link-local or metadata \
             addresses (webhooks.allow_private_networks is false)"
        ));
    }
    Ok(allowed)
}

/// The resolver of the sending client: connections go only to allowed addresses.
#[derive(Debug)]
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_allowed(&name, 0).await.map_err(|e| {
                Box::new(std::io::Error::other(e)) as Box<dyn std::error::Error + Send + Sync>
            })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Sends one delivery at a time over a shared client.
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    max_body: usize,
}

impl Sender {
    /// A sender for this configuration: no redirects followed, every attempt bounded by
    /// `timeout_seconds`, addresses guarded unless private networks are allowed.
    pub fn new(cfg: &WebhooksConfig) -> Self {
        let timeout = Duration::from_secs(cfg.timeout_seconds.max(1));
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("Keywarden-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4)
            // Straight to the endpoint, never through a proxy from the environment: a proxy
            // would resolve the endpoint's name itself, past the address guard.
            .no_proxy();
        if !cfg.allow_private_networks {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Sender {
            client: builder.build().expect("the webhook HTTP client builds"),
            allow_private: cfg.allow_private_networks,
            max_body: cfg.max_response_bytes,
        }
    }

    /// Makes one attempt of `due` at `now` and reports it.
    pub async fn attempt(&self, due: &DueDelivery, now: Millis) -> WebhookAttempt {
        let started = Instant::now();
        let (status, response, error) = match self.post(due, now).await {
            Ok((status, body)) => (Some(status), body, None),
            Err(e) => (None, String::new(), Some(e)),
        };
        WebhookAttempt {
            at: now,
            status,
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            response,
            error,
        }
    }

    async fn post(&self, due: &DueDelivery, now: Millis) -> Result<(u16, String), String> {
        let url = &due.endpoint.url;
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid url: {e}"))?;
        if !self.allow_private {
            // Literal addresses never reach the resolver.
            match parsed.host() {
                Some(url::Host::Ipv4(ip)) if forbidden_address(IpAddr::V4(ip)) => {
                    return Err(format!("refused address {ip}"));
                }
                Some(url::Host::Ipv6(ip)) if forbidden_address(IpAddr::V6(ip)) => {
                    return Err(format!("refused address {ip}"));
                }
                _ => {}
            }
        }
        let id = &due.delivery.event_id;
        let timestamp = now.div_euclid(1000);
        let body = due.payload.as_bytes();
        let signature = signature_header(due.endpoint.signing_secrets(now), id, timestamp, body);
        let res = self
            .client
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(due.payload.clone())
            .send()
            .await
            .map_err(describe)?;
        let status = res.status().as_u16();
        Ok((status, self.read_bounded(res).await))
    }

    /// At most `max_body` bytes of the response, as text.
    async fn read_bounded(&self, mut res: reqwest::Response) -> String {
        let mut buf: Vec<u8> = Vec::new();
        while buf.len() < self.max_body {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.max_body - buf.len();
                    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                _ => break,
            }
        }
        bounded_text(&buf, self.max_body)
    }
}

/// The start of a body as text of at most `max` bytes: a character cut by the bound is
/// left out, and bytes that are not UTF-8 become U+FFFD (still within the bound).
fn bounded_text(buf: &[u8], max: usize) -> String {
    let whole = match std::str::from_utf8(buf) {
        Err(e) if e.error_len().is_none() => &buf[..e.valid_up_to()],
        _ => buf,
    };
    let mut text = String::from_utf8_lossy(whole).into_owned();
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A transport error in a few words, without the URL's query.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The mode an event was raised in, read from its body (`data.mode`).
fn payload_mode(payload: &str) -> Option<Mode> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    v["data"]["mode"].as_str()?.parse().ok()
}

/// Decides what follows an attempt: 2xx delivered; 410 disables the endpoint; otherwise a
/// retry on the mode's schedule, or giving up when it is spent, or disabling the endpoint
/// when it has failed for `webhooks.disable_after_failing_hours`.
pub fn outcome(
    cfg: &WebhooksConfig,
    due: &DueDelivery,
    attempt: WebhookAttempt,
    jitter_fraction: f64,
) -> AttemptOutcome {
    let now = attempt.at;
    let e = &due.endpoint;
    let disabled = |reason: &str| {
        vec![AuditEvent {
            id: new_id("evt"),
            account_id: e.account_id.clone(),
            mode: e.mode,
            kind: "webhook.disabled".into(),
            actor: "system".into(),
            ip: None,
            at: now,
            data: json!({ "webhook_id": e.id, "url": e.url, "reason": reason }),
        }]
    };
    let mut out = AttemptOutcome {
        delivery_id: due.delivery.id.clone(),
        endpoint_id: e.id.clone(),
        attempt,
        next: NextStep::GiveUp,
        disable: None,
        events: Vec::new(),
        lease_until: due.lease_until,
    };
    match out.attempt.status {
        Some(s) if (200..300).contains(&s) => {
            out.next = NextStep::Delivered;
            return out;
        }
        Some(410) => {
            out.disable = Some("gone".into());
            out.events = disabled("gone");
            return out;
        }
        _ => {}
    }
    let failing_since = e.failing_since.unwrap_or(now);
    let limit_ms = i64::try_from(cfg.disable_after_failing_hours)
        .unwrap_or(i64::MAX / 3_600_000)
        .saturating_mul(3_600_000);
    if cfg.disable_after_failing_hours > 0 && now.saturating_sub(failing_since) >= limit_ms {
        out.disable = Some("failing".into());
        out.events = disabled("failing");
        return out;
    }
    let schedule = match payload_mode(&due.payload) {
        Some(Mode::Test) => &cfg.retry_schedule_seconds_test,
        _ => &cfg.retry_schedule_seconds_live,
    };
    let failed = due.delivery.attempts.saturating_add(1);
    if let Some(delay) = retry_delay_ms(schedule, failed, jitter_fraction) {
        out.next = NextStep::RetryAt(now.saturating_add(delay));
    }
    out
}

/// The delivery worker and the derived-event scanner of one process.
#[derive(Debug)]
pub struct Webhooks {
    state: AppState,
    sender: Sender,
    permits: Arc<Semaphore>,
}

impl Webhooks {
    /// A worker over the service state.
    pub fn new(state: AppState) -> Arc<Self> {
        let cfg = &state.settings.config.webhooks;
        Arc::new(Webhooks {
            sender: Sender::new(cfg),
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            state,
        })
    }

    fn cfg(&self) -> &WebhooksConfig {
        &self.state.settings.config.webhooks
    }

    /// Runs both loops until `stop` resolves; attempts in flight are left to finish or
    /// to their lease (a delivery cut short is sent again: at least once).
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let poll = Duration::from_millis(self.cfg().poll_interval_ms.max(1));
        let scan_every = Duration::from_secs(self.cfg().scan_interval_seconds.max(1));
        let mut last_scan: Option<Instant> = None;
        tokio::pin!(stop);
        loop {
            if last_scan.is_none_or(|t| t.elapsed() >= scan_every) {
                last_scan = Some(Instant::now());
                if let Err(e) = self.scan().await {
                    tracing::warn!(error = %e, "webhook event scan failed");
                }
            }
            if let Err(e) = self.clone().dispatch().await {
                tracing::warn!(error = %e, "claiming webhook deliveries failed");
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Claims what is due and starts sending it; returns how many were started.
    pub async fn dispatch(self: Arc<Self>) -> Result<usize, keywarden_store::StoreError> {
        let free = self.permits.available_permits();
        if free == 0 {
            return Ok(0);
        }
        let now = self.state.clock.now_ms();
        // Long enough for one attempt to end, however it ends.
        let lease_ms = i64::try_from(self.cfg().timeout_seconds.saturating_add(30) * 1000)
            .unwrap_or(i64::MAX / 2);
        let limit = u32::try_from(free.min(100)).unwrap_or(100);
        let per_endpoint = u32::try_from(self.cfg().per_endpoint()).unwrap_or(u32::MAX);
        let due = self
            .state
            .store
            .claim_deliveries(now, now.saturating_add(lease_ms), limit, per_endpoint)
            .await?;
        let n = due.len();
        for d in due {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.send(d).await;
                drop(permit);
            });
        }
        Ok(n)
    }

    async fn send(&self, due: DueDelivery) {
        let now = self.state.clock.now_ms();
        let attempt = self.sender.attempt(&due, now).await;
        let o = outcome(self.cfg(), &due, attempt, jitter());
        let stats = &self.state.webhook_stats;
        match (&o.next, &o.disable) {
            (NextStep::Delivered, _) => stats.delivered.fetch_add(1, Ordering::Relaxed),
            (NextStep::RetryAt(_), _) => stats.retried.fetch_add(1, Ordering::Relaxed),
            (NextStep::GiveUp, _) => stats.failed.fetch_add(1, Ordering::Relaxed),
        };
        if o.disable.is_some() {
            stats.disabled.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(webhook_id = %due.endpoint.id, reason = ?o.disable, "webhook endpoint disabled");
        }
        // A failed write leaves the lease to run out; the delivery is then sent again.
        if let Err(e) = self.state.store.finish_delivery(&o).await {
            tracing::warn!(error = %e, delivery_id = %due.delivery.id, "recording a webhook attempt failed");
        }
    }

    /// Raises the derived events due at the clock's time, each once.
    pub async fn scan(&self) -> Result<u64, keywarden_store::StoreError> {
        let now = self.state.clock.now_ms();
        // Every key with a deadline in the window, a page at a time, each page's events
        // written in a transaction of its own.
        let mut n = 0;
        let mut page = Page {
            after_id: None,
            limit: DEADLINE_PAGE,
        };
        loop {
            let keys = self
                .state
                .store
                .keys_with_deadlines(now - LOOKBACK_MS, now + 7 * DAY_MS, &page)
                .await?;
            n += self
                .state
                .store
                .fire_once(&derived_key_events(&keys, now))
                .await?;
            match keys.last() {
                Some(last) if keys.len() == DEADLINE_PAGE as usize => {
                    page.after_id = Some(last.id.clone());
                }
                _ => break,
            }
        }
        // Every period that can be current now starts at or after the month's start.
        let month = keywarden_core::limits::Period::Month.bounds(now).0;
        let rows = self.state.store.usage_since(month).await?;
        n += self
            .state
            .store
            .fire_once(&quota_events(&self.state, &rows, now))
            .await?;
        self.state
            .webhook_stats
            .derived
            .fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

const DAY_MS: i64 = 86_400_000;
/// Keys read per query by the deadline scan.
const DEADLINE_PAGE: u32 = 1_000;
/// How far back an expiry or a grace's end is still announced (a process that was down).
const LOOKBACK_MS: i64 = 2 * DAY_MS;

fn system_event(
    kind: &str,
    account: &str,
    mode: Mode,
    at: Millis,
    data: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        id: new_id("evt"),
        account_id: Some(account.to_string()),
        mode: Some(mode),
        kind: kind.into(),
        actor: "system".into(),
        ip: None,
        at,
        data,
    }
}

/// `key.expiring` (7 days and 1 day before; only the nearer when both apply), `key.expired`
/// and `key.rotation_grace_ending` (within a day of the previous secret's end), each with
/// the marker that makes it once-only. A changed deadline is a new deadline.
pub fn derived_key_events(
    keys: &[keywarden_core::model::KeyRecord],
    now: Millis,
) -> Vec<(String, AuditEvent)> {
    let mut out = Vec::new();
    for k in keys {
        if let Some(exp) = k.expires_at {
            let data = |extra: serde_json::Value| {
                let mut d = json!({ "key_id": k.id, "name": k.name, "expires_at": exp });
                if let (Some(d), serde_json::Value::Object(e)) = (d.as_object_mut(), extra) {
                    d.extend(e);
                }
                d
            };
            if now >= exp {
                if now - exp <= LOOKBACK_MS {
                    out.push((
                        format!("key.expired:{}:{exp}", k.id),
                        system_event("key.expired", &k.account_id, k.mode, now, data(json!({}))),
                    ));
                }
            } else {
                let days = if exp - now <= DAY_MS {
                    Some(1)
                } else if exp - now <= 7 * DAY_MS {
                    Some(7)
                } else {
                    None
                };
                if let Some(days) = days {
                    out.push((
                        format!("key.expiring:{days}d:{}:{exp}", k.id),
                        system_event(
                            "key.expiring",
                            &k.account_id,
                            k.mode,
                            now,
                            data(json!({ "days": days })),
                        ),
                    ));
                }
            }
        }
        if let Some(prev) = &k.previous {
            let end = prev.valid_until;
            if now < end && end - now <= DAY_MS {
                out.push((
                    format!("key.rotation_grace_ending:{}:{end}", k.id),
                    system_event(
                        "key.rotation_grace_ending",
                        &k.account_id,
                        k.mode,
                        now,
                        json!({ "key_id": k.id, "name": k.name, "previous_valid_until": end }),
                    ),
                ));
            }
        }
    }
    out
}

/// `quota.threshold` at 80 % and 100 % of each quota of the account's plan in the current
/// period, once each.
fn quota_events(
    state: &AppState,
    rows: &[keywarden_store::webhooks::UsageRow],
    now: Millis,
) -> Vec<(String, AuditEvent)> {
    let mut out = Vec::new();
    for r in rows {
        let plan = state.verifier.plan(&r.plan);
        for q in plan.quotas.iter().filter(|q| q.unit == r.unit) {
            if q.limit == 0 || q.period.bounds(now).0 != r.period_start {
                continue;
            }
            for pct in [80u64, 100] {
                if u128::from(r.used) * 100 >= u128::from(q.limit) * u128::from(pct) {
                    out.push((
                        format!(
                            "quota.threshold:{}:{}:{}:{}:{pct}",
                            r.account_id,
                            r.mode.as_str(),
                            r.unit,
                            r.period_start
                        ),
                        system_event(
                            "quota.threshold",
                            &r.account_id,
                            r.mode,
                            now,
                            json!({
                                "unit": r.unit,
                                "threshold_percent": pct,
                                "used": r.used,
                                "limit": q.limit,
                                "period": q.period.as_str(),
                                "period_start": r.period_start,
                            }),
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keywarden_store::webhooks::{DeliveryStatus, WebhookDelivery, WebhookEndpoint};

    fn due(mode: &str, attempts: u32, failing_since: Option<Millis>) -> DueDelivery {
        DueDelivery {
            delivery: WebhookDelivery {
                id: "whd_1".into(),
                endpoint_id: "whe_1".into(),
                event_id: "evt_1".into(),
                kind: "key.created".into(),
                status: DeliveryStatus::Pending,
                attempts,
                next_attempt_at: Some(0),
                last_status: None,
                last_duration_ms: None,
                last_response: None,
                last_error: None,
                created_at: 0,
                delivered_at: None,
            },
            endpoint: WebhookEndpoint {
                id: "whe_1".into(),
                url: "https://example.com/".into(),
                events: None,
                account_id: None,
                mode: None,
                description: String::new(),
                enabled: true,
                secret: keywarden_core::webhooks::new_secret(),
                prev_secret: None,
                prev_secret_until: None,
                failing_since,
                disabled_reason: None,
                created_at: 0,
                updated_at: 0,
            },
            payload: json!({ "type": "key.created", "data": { "mode": mode } }).to_string(),
            lease_until: 30_000,
        }
    }

    fn attempt(at: Millis, status: Option<u16>) -> WebhookAttempt {
        WebhookAttempt {
            at,
            status,
            duration_ms: 1,
            response: String::new(),
            error: None,
        }
    }

    #[test]
    fn kept_bodies_stay_within_the_bound_as_whole_characters() {
        assert_eq!(bounded_text(b"hello", 5), "hello");
        // "é" is two bytes: one cut in half by the bound is left out.
        assert_eq!(bounded_text("ééé".as_bytes()[..5].as_ref(), 5), "éé");
        // A byte that is not UTF-8 becomes U+FFFD (three bytes), kept within the bound.
        let t = bounded_text(b"abc\xff", 4);
        assert!(t.len() <= 4 && t.starts_with("abc"), "{t:?}");
        assert_eq!(bounded_text(b"ab\xffcd", 8), "ab\u{fffd}cd");
    }

    #[test]
    fn outcomes_follow_the_status_and_the_modes_schedule() {
        let cfg = WebhooksConfig {
            retry_schedule_seconds_live: vec![5, 60],
            retry_schedule_seconds_test: vec![7],
            ..WebhooksConfig::default()
        };
        let t = 1_000_000;
        let o = outcome(&cfg, &due("live", 0, None), attempt(t, Some(204)), 0.0);
        assert_eq!((o.next, o.disable), (NextStep::Delivered, None));
        let o = outcome(&cfg, &due("live", 0, None), attempt(t, Some(500)), 0.0);
        assert_eq!(o.next, NextStep::RetryAt(t + 5_000));
        let o = outcome(&cfg, &due("live", 1, Some(t)), attempt(t, None), 0.2);
        assert_eq!(o.next, NextStep::RetryAt(t + 72_000));
        let o = outcome(&cfg, &due("live", 2, Some(t)), attempt(t, Some(302)), 0.0);
        assert_eq!(o.next, NextStep::GiveUp);
        assert!(o.disable.is_none() && o.events.is_empty());
        let o = outcome(&cfg, &due("test", 0, None), attempt(t, Some(500)), 0.0);
        assert_eq!(o.next, NextStep::RetryAt(t + 7_000));
        let o = outcome(&cfg, &due("test", 1, None), attempt(t, Some(500)), 0.0);
        assert_eq!(o.next, NextStep::GiveUp);
    }

    #[test]
    fn gone_and_long_failing_endpoints_are_disabled_with_an_event() {
        let cfg = WebhooksConfig::default();
        let t = 10 * DAY_MS;
        let o = outcome(&cfg, &due("live", 0, None), attempt(t, Some(410)), 0.0);
        assert_eq!(
            (o.next, o.disable.as_deref()),
            (NextStep::GiveUp, Some("gone"))
        );
        assert_eq!(o.events[0].kind, "webhook.disabled");
        assert_eq!(o.events[0].data["reason"], "gone");
        let since = t - 120 * 3_600_000;
        let o = outcome(
            &cfg,
            &due("live", 3, Some(since)),
            attempt(t, Some(503)),
            0.0,
        );
        assert_eq!(o.disable.as_deref(), Some("failing"));
        let o = outcome(
            &cfg,
            &due("live", 3, Some(since + 1)),
            attempt(t, Some(503)),
            0.0,
        );
        assert!(o.disable.is_none());
        assert!(matches!(o.next, NextStep::RetryAt(_)));
    }
}
