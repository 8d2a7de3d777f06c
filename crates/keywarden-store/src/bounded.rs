//! A store wrapper that bounds how long any call may take, so a database that stops
//! answering (a network that drops packets silently, a server that hangs) costs callers a
//! bounded wait and a [`StoreError::Unavailable`], never a hang. The database's own
//! timeouts (PostgreSQL's statement timeout, the pool's acquire timeout, SQLite's busy
//! timeout) usually answer first; this bound is for when nothing answers at all.
//!
//! Calls that may write many rows (erasing an account, the background writer's batches,
//! deleting a grant with its keys) get [`Bounds::long`] instead of [`Bounds::call`].

use crate::store::{
    Census, DecisionQuery, ErasureCounts, EventFilter, EventsOf, Granularity, Invalidation,
    KeyTouch, Page, Store, StoreError, StoreResult, UsageDelta, WriteBatch,
};
use crate::webhooks::{
    AttemptOutcome, DueDelivery, UsageRow, WebhookAttempt, WebhookDelivery, WebhookEndpoint,
    WebhookFilter,
};
use async_trait::async_trait;
use keywarden_core::model::{
    Account, Activity, Application, AuditEvent, Grant, KeyRecord, Millis, Mode, WebSession,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long calls may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Any single call.
    pub call: Duration,
    /// Calls that may write many rows.
    pub long: Duration,
}

impl Bounds {
    /// `call` for every call, ten times that for the calls that may write many rows.
    pub fn new(call: Duration) -> Self {
        Bounds {
            call,
            long: call.saturating_mul(10),
        }
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::new(Duration::from_secs(2))
    }
}

/// Delegates every [`Store`] method to another store, each bounded in time.
#[derive(Debug)]
pub struct BoundedStore {
    inner: Arc<dyn Store>,
    bounds: Bounds,
}

impl BoundedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, bounds: Bounds) -> Self {
        BoundedStore { inner, bounds }
    }
}

/// `call`, or [`StoreError::Unavailable`] once `limit` has passed. Dropping the call on
/// expiry cancels it: its transaction, if any, is rolled back.
async fn bounded<T>(limit: Duration, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "the database did not answer within {} ms",
            limit.as_millis()
        ))),
    }
}

/// Writes the `Store` implementation: each method calls the same method of the wrapped
/// store, bounded by the named field of [`Bounds`].
macro_rules! delegate {
    ($($bound:ident fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)+) => {
        #[async_trait]
        impl Store for BoundedStore {
            fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
                self.inner.invalidations()
            }

            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    bounded(self.bounds.$bound, self.inner.$name($($arg),*)).await
                }
            )+
        }
    };
}

delegate! {
    call fn ping(&self) -> StoreResult<()>;
    call fn create_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()>;
    call fn get_account(&self, id: &str) -> StoreResult<Option<Account>>;
    call fn list_accounts(&self, page: &Page) -> StoreResult<Vec<Account>>;
    call fn update_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()>;
    long fn erase_account(&self, id: &str, events: EventsOf<'_, ErasureCounts>)
        -> StoreResult<ErasureCounts>;
    call fn insert_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()>;
    call fn insert_key_limited(&self, key: &KeyRecord, max_active: u64, events: &[AuditEvent])
        -> StoreResult<()>;
    call fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    call fn get_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<KeyRecord>>;
    call fn find_keys_by_lookup(&self, lookup: &str) -> StoreResult<Vec<KeyRecord>>;
    call fn list_keys(&self, account_id: &str, mode: Option<Mode>, page: &Page)
        -> StoreResult<Vec<KeyRecord>>;
    call fn count_active_keys(&self, account_id: &str) -> StoreResult<u64>;
    call fn update_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()>;
    long fn touch_keys(&self, touches: &[KeyTouch]) -> StoreResult<()>;
    call fn create_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()>;
    call fn get_app(&self, id: &str) -> StoreResult<Option<Application>>;
    call fn list_apps(&self, page: &Page) -> StoreResult<Vec<Application>>;
    call fn update_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()>;
    call fn create_grant(&self, grant: &Grant, events: &[AuditEvent]) -> StoreResult<()>;
    call fn get_grant(&self, id: &str) -> StoreResult<Option<Grant>>;
    call fn list_grants(&self, account_id: &str) -> StoreResult<Vec<Grant>>;
    long fn delete_grant(&self, id: &str, at: Millis, events: EventsOf<'_, [KeyRecord]>)
        -> StoreResult<Vec<KeyRecord>>;
    long fn append_events(&self, events: &[AuditEvent]) -> StoreResult<()>;
    call fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<AuditEvent>>;
    long fn append_activity(&self, rows: &[Activity], retain_per_key: u32) -> StoreResult<()>;
    call fn list_activity(&self, key_id: &str, limit: u32) -> StoreResult<Vec<Activity>>;
    long fn write_batch(&self, batch: &WriteBatch) -> StoreResult<()>;
    long fn add_usage(&self, deltas: &[UsageDelta]) -> StoreResult<()>;
    call fn create_web_session(&self, session: &WebSession, now: Millis, events: &[AuditEvent])
        -> StoreResult<()>;
    call fn get_web_session(&self, id_hash: &str, now: Millis) -> StoreResult<Option<WebSession>>;
    call fn take_web_session(&self, id_hash: &str, now: Millis) -> StoreResult<Option<WebSession>>;
    call fn end_web_sessions(&self, account_id: &str) -> StoreResult<u64>;
    call fn decision_counts(&self, q: &DecisionQuery) -> StoreResult<Vec<(Millis, String, u64)>>;
    call fn prune_decision_counts(&self, granularity: Granularity, before: Millis) -> StoreResult<u64>;
    call fn census(&self, now: Millis) -> StoreResult<Census>;
    call fn get_usage(&self, account_id: &str, mode: Mode, unit: &str, period_start: Millis)
        -> StoreResult<u64>;
    call fn create_webhook(&self, endpoint: &WebhookEndpoint, events: &[AuditEvent])
        -> StoreResult<()>;
    call fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookEndpoint>>;
    call fn list_webhooks(&self, filter: &WebhookFilter) -> StoreResult<Vec<WebhookEndpoint>>;
    call fn update_webhook(&self, endpoint: &WebhookEndpoint, read_at: Millis, events: &[AuditEvent])
        -> StoreResult<()>;
    long fn delete_webhook(&self, id: &str, events: &[AuditEvent]) -> StoreResult<()>;
    call fn list_deliveries(&self, endpoint_id: &str, before_id: Option<&str>, limit: u32)
        -> StoreResult<Vec<WebhookDelivery>>;
    call fn get_delivery(&self, id: &str) -> StoreResult<Option<WebhookDelivery>>;
    call fn list_attempts(&self, delivery_id: &str) -> StoreResult<Vec<WebhookAttempt>>;
    long fn claim_deliveries(&self, now: Millis, lease_until: Millis, limit: u32, per_endpoint: u32)
        -> StoreResult<Vec<DueDelivery>>;
    long fn finish_delivery(&self, outcome: &AttemptOutcome) -> StoreResult<()>;
    call fn redeliver(&self, endpoint_id: &str, delivery_id: &str, at: Millis) -> StoreResult<()>;
    call fn queue_for_endpoint(&self, endpoint_id: &str, event: &AuditEvent) -> StoreResult<String>;
    call fn webhook_backlog(&self) -> StoreResult<u64>;
    long fn fire_once(&self, fired: &[(String, AuditEvent)]) -> StoreResult<u64>;
    long fn keys_with_deadlines(&self, from: Millis, until: Millis, page: &Page)
        -> StoreResult<Vec<KeyRecord>>;
    long fn usage_since(&self, period_start: Millis) -> StoreResult<Vec<UsageRow>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counting::CountingStore;

    #[tokio::test]
    async fn a_call_that_never_answers_is_unavailable_at_the_bound() {
        let inner = Arc::new(CountingStore::new(Arc::new(
            crate::SqliteStore::open_memory().await.unwrap(),
        )));
        let store = BoundedStore::new(inner.clone(), Bounds::new(Duration::from_millis(500)));
        let held = inner.pause().await;
        let started = std::time::Instant::now();
        let err = store.get_account("acc_1").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        drop(held);
        assert_eq!(store.get_account("acc_1").await.unwrap(), None);
    }
}
