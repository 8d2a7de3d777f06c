//! Webhook endpoint management (`docs/webhooks.md`), shared by the admin API, the
//! self-service API and the CLI: the URL and its address guard, the event types, who sees
//! which endpoint, secrets shown once and rotated with an overlap, the delivery log,
//! redelivery and test events. Every change writes an audit event (without the secret).

use crate::errors::ApiError;
use crate::manage::{check_len, Actor, Manager, MAX_DESCRIPTION};
use crate::state::AppState;
use crate::views::{Delivery, DeliveryAttempt};
use crate::webhooks::{check_url, UrlError};
use keywarden_core::codes::Code;
use keywarden_core::model::{new_id, AuditEvent, Millis, Mode};
use keywarden_core::webhooks::new_secret;
use keywarden_store::webhooks::{WebhookEndpoint, WebhookFilter};
use serde_json::json;

/// The event types an endpoint may subscribe to (families like `key.*` too).
pub const EVENT_TYPES: &[&str] = &[
    "account.created",
    "account.updated",
    "account.plan_changed",
    "account.erased",
    "key.created",
    "key.updated",
    "key.rotated",
    "key.revoked",
    "key.revealed",
    "key.ip_denied",
    "key.leaked",
    "key.expiring",
    "key.expired",
    "key.rotation_grace_ending",
    "application.created",
    "application.updated",
    "application.secret_rotated",
    "grant.created",
    "grant.deleted",
    "quota.threshold",
    "lockout.started",
    "webhook.created",
    "webhook.updated",
    "webhook.deleted",
    "webhook.secret_rotated",
    "webhook.disabled",
    "webhook.test",
];

/// The most event types one endpoint lists.
const MAX_EVENTS: usize = 50;
/// The most endpoints one account (or the operator) registers.
const MAX_ENDPOINTS: usize = 20;

/// Who is managing endpoints: the operator sees every endpoint; an account sees only its
/// own of its key's mode (others are 404).
#[derive(Clone, Debug)]
pub enum Owner {
    /// The operator (root key or CLI).
    Root,
    /// An account's key, in its mode.
    Account {
        /// The account.
        account_id: String,
        /// The calling key's mode.
        mode: Mode,
    },
}

/// What a new endpoint is made of.
#[derive(Clone, Debug, Default)]
pub struct NewWebhook {
    /// The URL.
    pub url: String,
    /// Event types; `None` for all.
    pub events: Option<Vec<String>>,
    /// Only this account's events (operator only; an account's are always its own).
    pub account_id: Option<String>,
    /// Only this mode (operator only; an account's are always its key's mode).
    pub mode: Option<Mode>,
    /// Free text.
    pub description: Option<String>,
}

/// A change to an endpoint; absent fields stay.
#[derive(Clone, Debug, Default)]
pub struct WebhookPatch {
    /// A new URL.
    pub url: Option<String>,
    /// New event types (`Some(None)`: every type).
    pub events: Option<Option<Vec<String>>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New description.
    pub description: Option<String>,
}

/// Endpoint management over the service state.
#[derive(Clone, Debug)]
pub struct WebhookManager {
    state: AppState,
}

fn store_err(e: keywarden_store::StoreError) -> ApiError {
    e.into()
}

impl WebhookManager {
    /// A manager over the service state.
    pub fn new(state: &AppState) -> Self {
        WebhookManager {
            state: state.clone(),
        }
    }

    fn now(&self) -> i64 {
        self.state.clock.now_ms()
    }

    async fn check_url(&self, url: &str) -> Result<String, ApiError> {
        let url = url.trim();
        let allow = self.state.settings.config.webhooks.allow_private_networks;
        match check_url(url, allow).await {
            Ok(()) => Ok(url.to_string()),
            Err(UrlError::Invalid(m) | UrlError::Forbidden(m)) => Err(ApiError::invalid(m)),
        }
    }

    fn check_events(events: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
        let Some(mut events) = events else {
            return Ok(None);
        };
        if events.is_empty() {
            return Err(ApiError::invalid(
                "events: must not be empty (leave it out to receive every type)",
            ));
        }
        if events.len() > MAX_EVENTS {
            return Err(ApiError::invalid(format!(
                "events: at most {MAX_EVENTS} types"
            )));
        }
        for e in &events {
            let known = match e.strip_suffix(".*") {
                Some(family) => EVENT_TYPES
                    .iter()
                    .any(|t| t.split_once('.').is_some_and(|(f, _)| f == family)),
                None => EVENT_TYPES.contains(&e.as_str()),
            };
            if !known {
                return Err(ApiError::invalid(format!(
                    "events: unknown event type {e:?} (see docs/webhooks.md for the list)"
                )));
            }
        }
        events.sort();
        events.dedup();
        Ok(Some(events))
    }

    fn visible(owner: &Owner, e: &WebhookEndpoint) -> bool {
        match owner {
            Owner::Root => true,
            Owner::Account { account_id, mode } => {
                e.account_id.as_deref() == Some(account_id.as_str()) && e.mode == Some(*mode)
            }
        }
    }

    /// The endpoint, if `owner` may see it.
    pub async fn get(&self, owner: &Owner, id: &str) -> Result<WebhookEndpoint, ApiError> {
        match self.state.store.get_webhook(id).await.map_err(store_err)? {
            Some(e) if Self::visible(owner, &e) => Ok(e),
            _ => Err(ApiError::not_found()),
        }
    }

    /// The endpoints `owner` sees, by id.
    pub async fn list(&self, owner: &Owner) -> Result<Vec<WebhookEndpoint>, ApiError> {
        let filter = match owner {
            Owner::Root => WebhookFilter::default(),
            Owner::Account { account_id, mode } => WebhookFilter {
                account_id: Some(account_id.clone()),
                mode: Some(*mode),
            },
        };
        self.state
            .store
            .list_webhooks(&filter)
            .await
            .map_err(store_err)
    }

    /// The audit event of a change to `e`, written with the change.
    fn event(
        &self,
        actor: &Actor,
        kind: &str,
        e: &WebhookEndpoint,
        extra: serde_json::Value,
    ) -> AuditEvent {
        let mut data = json!({ "webhook_id": e.id, "url": e.url });
        if let (Some(d), serde_json::Value::Object(x)) = (data.as_object_mut(), extra) {
            d.extend(x);
        }
        Manager::new(&self.state).event(actor, kind, e.account_id.as_deref(), e.mode, data)
    }

    /// Registers an endpoint; the secret in the answer is shown only now.
    pub async fn create(
        &self,
        actor: &Actor,
        owner: &Owner,
        new: NewWebhook,
    ) -> Result<WebhookEndpoint, ApiError> {
        let url = self.check_url(&new.url).await?;
        let events = Self::check_events(new.events)?;
        let description = new.description.unwrap_or_default();
        check_len("description", &description, MAX_DESCRIPTION)?;
        let (account_id, mode) = match owner {
            Owner::Root => (new.account_id, new.mode),
            Owner::Account { account_id, mode } => (Some(account_id.clone()), Some(*mode)),
        };
        if let Some(a) = &account_id {
            if self
                .state
                .store
                .get_account(a)
                .await
                .map_err(store_err)?
                .is_none()
            {
                return Err(ApiError::invalid(format!("account_id: no account {a:?}")));
            }
        }
        let existing = self.list(owner).await?;
        let same_owner = existing
            .iter()
            .filter(|e| e.account_id == account_id)
            .count();
        if same_owner >= MAX_ENDPOINTS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_ENDPOINTS} webhook endpoints per account"
            )));
        }
        let now = self.now();
        let e = WebhookEndpoint {
            id: new_id("whe"),
            url,
            events,
            account_id,
            mode,
            description,
            enabled: true,
            secret: new_secret(),
            prev_secret: None,
            prev_secret_until: None,
            failing_since: None,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        };
        let created = self.event(actor, "webhook.created", &e, json!({}));
        self.state
            .store
            .create_webhook(&e, &[created])
            .await
            .map_err(store_err)?;
        Ok(e)
    }

    /// Changes an endpoint. Enabling one clears why it was disabled.
    pub async fn update(
        &self,
        actor: &Actor,
        owner: &Owner,
        id: &str,
        patch: WebhookPatch,
    ) -> Result<WebhookEndpoint, ApiError> {
        let mut e = self.get(owner, id).await?;
        let mut changed = Vec::new();
        if let Some(url) = patch.url {
            e.url = self.check_url(&url).await?;
            changed.push("url");
        }
        if let Some(events) = patch.events {
            e.events = Self::check_events(events)?;
            changed.push("events");
        }
        if let Some(d) = patch.description {
            check_len("description", &d, MAX_DESCRIPTION)?;
            e.description = d;
            changed.push("description");
        }
        if let Some(enabled) = patch.enabled {
            // Enabling a disabled endpoint restarts its failure clock (the store does the
            // same as it writes, so a failure recorded meanwhile is not lost otherwise).
            if enabled && !e.enabled {
                e.disabled_reason = None;
                e.failing_since = None;
            }
            e.enabled = enabled;
            changed.push("enabled");
        }
        let read_at = e.updated_at;
        e.updated_at = changed_at(read_at, self.now());
        let updated = self.event(actor, "webhook.updated", &e, json!({ "changes": changed }));
        self.state
            .store
            .update_webhook(&e, read_at, &[updated])
            .await
            .map_err(store_err)?;
        Ok(e)
    }

    /// Deletes an endpoint and its delivery log.
    pub async fn delete(&self, actor: &Actor, owner: &Owner, id: &str) -> Result<(), ApiError> {
        let e = self.get(owner, id).await?;
        let deleted = self.event(actor, "webhook.deleted", &e, json!({}));
        self.state
            .store
            .delete_webhook(&e.id, &[deleted])
            .await
            .map_err(store_err)
    }

    /// A new secret; the previous one keeps signing for `webhooks.secret_overlap_hours`
    /// (both signatures are sent meanwhile).
    pub async fn rotate_secret(
        &self,
        actor: &Actor,
        owner: &Owner,
        id: &str,
    ) -> Result<WebhookEndpoint, ApiError> {
        let mut e = self.get(owner, id).await?;
        let now = self.now();
        let overlap = self.state.settings.config.webhooks.secret_overlap_hours;
        let overlap_ms = i64::try_from(overlap.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
        e.prev_secret = Some(std::mem::replace(&mut e.secret, new_secret()));
        e.prev_secret_until = Some(now.saturating_add(overlap_ms));
        let read_at = e.updated_at;
        e.updated_at = changed_at(read_at, now);
        let rotated = self.event(actor, "webhook.secret_rotated", &e, json!({}));
        self.state
            .store
            .update_webhook(&e, read_at, &[rotated])
            .await
            .map_err(store_err)?;
        Ok(e)
    }

    /// The endpoint's deliveries, newest first, each with its attempts.
    pub async fn deliveries(
        &self,
        owner: &Owner,
        id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>, ApiError> {
        let e = self.get(owner, id).await?;
        let list = self
            .state
            .store
            .list_deliveries(&e.id, before, limit.clamp(1, 100))
            .await
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(list.len());
        for d in &list {
            let mut v = Delivery::from(d);
            let attempts = self
                .state
                .store
                .list_attempts(&d.id)
                .await
                .map_err(store_err)?;
            v.attempt_log = Some(attempts.iter().map(DeliveryAttempt::from).collect());
            out.push(v);
        }
        Ok(out)
    }

    /// Sends a delivery again, now. Refused (409) while the endpoint is disabled.
    pub async fn redeliver(
        &self,
        owner: &Owner,
        id: &str,
        delivery_id: &str,
    ) -> Result<Delivery, ApiError> {
        let e = self.get(owner, id).await?;
        sendable(&e)?;
        self.state
            .store
            .redeliver(&e.id, delivery_id, self.now())
            .await
            .map_err(store_err)?;
        let d = self
            .state
            .store
            .get_delivery(delivery_id)
            .await
            .map_err(store_err)?
            .ok_or_else(ApiError::not_found)?;
        Ok(Delivery::from(&d))
    }

    /// Queues a `webhook.test` event for this endpoint only. Refused (409) while the
    /// endpoint is disabled.
    pub async fn send_test(&self, owner: &Owner, id: &str) -> Result<Delivery, ApiError> {
        let e = self.get(owner, id).await?;
        sendable(&e)?;
        let event = AuditEvent {
            id: new_id("evt"),
            account_id: e.account_id.clone(),
            mode: e.mode,
            kind: "webhook.test".into(),
            actor: "system".into(),
            ip: None,
            at: self.now(),
            data: json!({ "webhook_id": e.id }),
        };
        let delivery_id = self
            .state
            .store
            .queue_for_endpoint(&e.id, &event)
            .await
            .map_err(store_err)?;
        let d = self
            .state
            .store
            .get_delivery(&delivery_id)
            .await
            .map_err(store_err)?
            .ok_or_else(ApiError::not_found)?;
        Ok(Delivery::from(&d))
    }
}

/// Refuses to queue anything for a disabled endpoint: nothing is sent to it, so the
/// delivery would wait unseen until the endpoint is enabled again.
fn sendable(e: &WebhookEndpoint) -> Result<(), ApiError> {
    if e.enabled {
        return Ok(());
    }
    let why = match e.disabled_reason.as_deref() {
        Some("gone") => " (Keywarden disabled it: it answered 410 Gone)",
        Some("failing") => " (Keywarden disabled it: its attempts failed for too long)",
        _ => "",
    };
    Err(ApiError::with(
        Code::Conflict,
        format!(
            "the webhook endpoint is disabled{why}, so the delivery would never be sent; \
             enable it first (\"enabled\": true)"
        ),
    ))
}

/// The `updated_at` a change writes: now, and always later than the version it replaces,
/// so a write over a row read before it (same millisecond included) is detected.
fn changed_at(read_at: Millis, now: Millis) -> Millis {
    now.max(read_at.saturating_add(1))
}
