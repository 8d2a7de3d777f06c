//! What the store keeps for webhooks (`docs/webhooks.md`): endpoints, the outbox of
//! messages and deliveries written with their audit events, the attempts made, and the
//! body an event is sent as.

use keywarden_core::model::{AuditEvent, Millis, Mode};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// A registered endpoint. Its signing secrets never appear in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// `whe_` + ULID.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it receives (`key.created`, `key.*`); `None` for every type.
    pub events: Option<Vec<String>>,
    /// Only this account's events; `None` for every account's (operator endpoints only).
    pub account_id: Option<String>,
    /// Only events of this mode (and events without one); `None` for both modes.
    pub mode: Option<Mode>,
    /// Free text.
    pub description: String,
    /// Whether deliveries are made to it.
    pub enabled: bool,
    /// The signing secret, `whsec_…`.
    pub secret: String,
    /// The secret before the last rotation, still signed with until `prev_secret_until`.
    pub prev_secret: Option<String>,
    /// When the previous secret stops being sent.
    pub prev_secret_until: Option<Millis>,
    /// Since when every attempt has failed (`None` after a success).
    pub failing_since: Option<Millis>,
    /// Why Keywarden disabled it (`gone`, `failing`), when it did.
    pub disabled_reason: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("account_id", &self.account_id)
            .field("mode", &self.mode)
            .field("enabled", &self.enabled)
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl WebhookEndpoint {
    /// The secrets to sign with at `now`: the current one, then the previous one while its
    /// overlap lasts.
    pub fn signing_secrets(&self, now: Millis) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) = (&self.prev_secret, self.prev_secret_until) {
            if now < until {
                out.push(prev.as_str());
            }
        }
        out
    }
}

/// Which endpoints to list.
#[derive(Clone, Debug, Default)]
pub struct WebhookFilter {
    /// Only this account's endpoints.
    pub account_id: Option<String>,
    /// Only endpoints of this mode.
    pub mode: Option<Mode>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt was answered 2xx.
    Delivered,
    /// Every attempt of the schedule failed, or the endpoint is gone.
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "failed" => Ok(DeliveryStatus::Failed),
            _ => Err(format!("unknown delivery status {s}")),
        }
    }
}

/// One event on its way to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookDelivery {
    /// `whd_` + ULID.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event (`evt_…`), sent as `webhook-id`.
    pub event_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<Millis>,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status: Option<u16>,
    /// How long the last attempt took.
    pub last_duration_ms: Option<i64>,
    /// The start of the last response's body.
    pub last_response: Option<String>,
    /// Why the last attempt failed without a status (timeout, refused address, …).
    pub last_error: Option<String>,
    /// When the event was queued.
    pub created_at: Millis,
    /// When an attempt succeeded.
    pub delivered_at: Option<Millis>,
}

/// One attempt of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookAttempt {
    /// When it started.
    pub at: Millis,
    /// The HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// How long it took.
    pub duration_ms: i64,
    /// The start of the response body.
    pub response: String,
    /// Why it failed without a status.
    pub error: Option<String>,
}

/// A delivery claimed for sending, with what sending needs.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    /// The delivery.
    pub delivery: WebhookDelivery,
    /// Its endpoint as it is now.
    pub endpoint: WebhookEndpoint,
    /// The body to send.
    pub payload: String,
    /// The end of this claim's lease: the attempt is recorded only while the delivery
    /// still holds it.
    pub lease_until: Millis,
}

/// What happens to a delivery after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// It was answered 2xx.
    Delivered,
    /// It is tried again at this time.
    RetryAt(Millis),
    /// No more attempts.
    GiveUp,
}

/// The result of one attempt, recorded by [`crate::Store::finish_delivery`].
#[derive(Clone, Debug)]
pub struct AttemptOutcome {
    /// The delivery.
    pub delivery_id: String,
    /// Its endpoint.
    pub endpoint_id: String,
    /// The attempt.
    pub attempt: WebhookAttempt,
    /// What comes next.
    pub next: NextStep,
    /// Disable the endpoint, for this reason (`gone`, `failing`).
    pub disable: Option<String>,
    /// Events to record with it (the endpoint's disabling), in the same transaction.
    pub events: Vec<AuditEvent>,
    /// The lease the delivery was claimed with ([`DueDelivery::lease_until`]).
    pub lease_until: Millis,
}

/// A usage counter with its account's plan, for quota thresholds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// The account.
    pub account_id: String,
    /// Its plan.
    pub plan: String,
    /// The mode counted.
    pub mode: Mode,
    /// The unit.
    pub unit: String,
    /// The period's start.
    pub period_start: Millis,
    /// How much was used.
    pub used: u64,
}

/// The body an event is sent as: `{"type", "timestamp", "data"}`, `data` holding the
/// event's id, account, mode, actor and time and then its own fields.
pub fn payload(e: &AuditEvent) -> String {
    let mut data = Map::new();
    if let Value::Object(fields) = &e.data {
        for (k, v) in fields {
            data.insert(k.clone(), v.clone());
        }
    } else if !e.data.is_null() {
        data.insert("details".into(), e.data.clone());
    }
    data.insert("id".into(), json!(e.id));
    data.insert("account_id".into(), json!(e.account_id));
    data.insert("mode".into(), json!(e.mode.map(Mode::as_str)));
    data.insert("actor".into(), json!(e.actor));
    data.insert("at".into(), json!(rfc3339(e.at)));
    json!({ "type": e.kind, "timestamp": rfc3339(e.at), "data": data }).to_string()
}

/// A time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: Millis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_holds_the_event_and_its_fields() {
        let e = AuditEvent {
            id: "evt_1".into(),
            account_id: Some("acc_1".into()),
            mode: Some(Mode::Live),
            kind: "key.revoked".into(),
            actor: "root".into(),
            ip: Some("10.0.0.1".into()),
            at: 1_774_000_800_000,
            data: json!({ "key_id": "key_1", "id": "spoofed" }),
        };
        let v: Value = serde_json::from_str(&payload(&e)).unwrap();
        assert_eq!(v["type"], "key.revoked");
        assert_eq!(v["timestamp"], "2026-03-20T10:00:00.000Z");
        assert_eq!(v["data"]["id"], "evt_1");
        assert_eq!(v["data"]["key_id"], "key_1");
        assert_eq!(v["data"]["mode"], "live");
        assert_eq!(v["data"]["account_id"], "acc_1");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let e = WebhookEndpoint {
            id: "whe_1".into(),
            url: "https://x".into(),
            events: None,
            account_id: None,
            mode: None,
            description: String::new(),
            enabled: true,
            secret: "whsec_c2VjcmV0".into(),
            prev_secret: Some("whsec_b2xk".into()),
            prev_secret_until: Some(10),
            failing_since: None,
            disabled_reason: None,
            created_at: 0,
            updated_at: 0,
        };
        let d = format!("{e:?}");
        assert!(!d.contains("c2VjcmV0") && !d.contains("b2xk"));
        assert_eq!(e.signing_secrets(5).len(), 2);
        assert_eq!(e.signing_secrets(10).len(), 1);
    }
}
