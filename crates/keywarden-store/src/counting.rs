//! A store wrapper that counts calls, so tests can prove that a path does no store I/O
//! (`docs/operations.md#storage`: no database read on a cache hit) instead of inferring it from timings. It can
//! also play an unreachable database, or hold calls back, so tests can show what callers do
//! when the database fails or is slow, without depending on timing.

use crate::store::StoreError;
use crate::store::{
    Census, DecisionQuery, ErasureCounts, EventFilter, EventsOf, Granularity, KeyTouch, Page,
    Store, StoreResult, UsageDelta, WriteBatch,
};
use crate::webhooks::{
    AttemptOutcome, DueDelivery, UsageRow, WebhookAttempt, WebhookDelivery, WebhookEndpoint,
    WebhookFilter,
};
use async_trait::async_trait;
use keywarden_core::model::{
    Account, Activity, Application, AuditEvent, Grant, KeyRecord, Millis, Mode, WebSession,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

/// Delegates every [`Store`] method to another store and counts the calls.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
    unavailable: AtomicBool,
    /// Calls wait for a read lock; a [`Pause`] holds the write lock.
    gate: Arc<RwLock<()>>,
}

/// While it lives, calls to the [`CountingStore`] that made it are counted on arrival and
/// then wait; dropping it lets them through.
#[derive(Debug)]
pub struct Pause {
    _held: OwnedRwLockWriteGuard<()>,
}

impl CountingStore {
    /// Wraps `inner`, starting the count at zero.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        CountingStore {
            inner,
            calls: AtomicU64::new(0),
            unavailable: AtomicBool::new(false),
            gate: Arc::new(RwLock::new(())),
        }
    }

    /// Holds back every call until the returned [`Pause`] is dropped, so a test can act while
    /// a call is certainly in flight. Calls already let through are not waited for; only
    /// those arriving after this returns wait.
    pub async fn pause(&self) -> Pause {
        Pause {
            _held: self.gate.clone().write_owned().await,
        }
    }

    /// While set, every call is counted but fails with [`StoreError::Unavailable`] without
    /// reaching the wrapped store, as if the database could not be reached.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Counts a call, waits while paused, and refuses it while the store plays unavailable.
    async fn enter(&self) -> StoreResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.read().await);
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the database is unavailable".into(),
            ));
        }
        Ok(())
    }

    /// How many store methods were called so far, all methods together.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The wrapped store, for setting up data without counting it.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

/// Writes the `Store` implementation: each method counts the call, then calls the same
/// method of the wrapped store with the same arguments.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)+) => {
        #[async_trait]
        impl Store for CountingStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.enter().await?;
                    self.inner.$name($($arg),*).await
                }
            )+
        }
    };
}

delegate! {
    fn ping(&self) -> StoreResult<()>;
    fn create_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()>;
    fn get_account(&self, id: &str) -> StoreResult<Option<Account>>;
    fn list_accounts(&self, page: &Page) -> StoreResult<Vec<Account>>;
    fn update_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()>;
    fn erase_account(&self, id: &str, events: EventsOf<'_, ErasureCounts>)
        -> StoreResult<ErasureCounts>;
    fn insert_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()>;
    fn insert_key_limited(&self, key: &KeyRecord, max_active: u64, events: &[AuditEvent])
        -> StoreResult<()>;
    fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    fn get_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<KeyRecord>>;
    fn find_keys_by_lookup(&self, lookup: &str) -> StoreResult<Vec<KeyRecord>>;
    fn list_keys(&self, account_id: &str, mode: Option<Mode>, page: &Page)
        -> StoreResult<Vec<KeyRecord>>;
    fn count_active_keys(&self, account_id: &str) -> StoreResult<u64>;
    fn update_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()>;
    fn touch_keys(&self, touches: &[KeyTouch]) -> StoreResult<()>;
    fn create_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()>;
    fn get_app(&self, id: &str) -> StoreResult<Option<Application>>;
    fn list_apps(&self, page: &Page) -> StoreResult<Vec<Application>>;
    fn update_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()>;
    fn create_grant(&self, grant: &Grant, events: &[AuditEvent]) -> StoreResult<()>;
    fn get_grant(&self, id: &str) -> StoreResult<Option<Grant>>;
    fn list_grants(&self, account_id: &str) -> StoreResult<Vec<Grant>>;
    fn delete_grant(&self, id: &str, at: Millis, events: EventsOf<'_, [KeyRecord]>)
        -> StoreResult<Vec<KeyRecord>>;
    fn append_events(&self, events: &[AuditEvent]) -> StoreResult<()>;
    fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<AuditEvent>>;
    fn append_activity(&self, rows: &[Activity], retain_per_key: u32) -> StoreResult<()>;
    fn list_activity(&self, key_id: &str, limit: u32) -> StoreResult<Vec<Activity>>;
    fn write_batch(&self, batch: &WriteBatch) -> StoreResult<()>;
    fn add_usage(&self, deltas: &[UsageDelta]) -> StoreResult<()>;
    fn create_web_session(&self, session: &WebSession, now: Millis, events: &[AuditEvent])
        -> StoreResult<()>;
    fn get_web_session(&self, id_hash: &str, now: Millis) -> StoreResult<Option<WebSession>>;
    fn take_web_session(&self, id_hash: &str, now: Millis) -> StoreResult<Option<WebSession>>;
    fn end_web_sessions(&self, account_id: &str) -> StoreResult<u64>;
    fn decision_counts(&self, q: &DecisionQuery) -> StoreResult<Vec<(Millis, String, u64)>>;
    fn prune_decision_counts(&self, granularity: Granularity, before: Millis) -> StoreResult<u64>;
    fn census(&self, now: Millis) -> StoreResult<Census>;
    fn get_usage(&self, account_id: &str, mode: Mode, unit: &str, period_start: Millis)
        -> StoreResult<u64>;
    fn create_webhook(&self, endpoint: &WebhookEndpoint, events: &[AuditEvent])
        -> StoreResult<()>;
    fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookEndpoint>>;
    fn list_webhooks(&self, filter: &WebhookFilter) -> StoreResult<Vec<WebhookEndpoint>>;
    fn update_webhook(&self, endpoint: &WebhookEndpoint, read_at: Millis, events: &[AuditEvent])
        -> StoreResult<()>;
    fn delete_webhook(&self, id: &str, events: &[AuditEvent]) -> StoreResult<()>;
    fn list_deliveries(&self, endpoint_id: &str, before_id: Option<&str>, limit: u32)
        -> StoreResult<Vec<WebhookDelivery>>;
    fn get_delivery(&self, id: &str) -> StoreResult<Option<WebhookDelivery>>;
    fn list_attempts(&self, delivery_id: &str) -> StoreResult<Vec<WebhookAttempt>>;
    fn claim_deliveries(&self, now: Millis, lease_until: Millis, limit: u32, per_endpoint: u32)
        -> StoreResult<Vec<DueDelivery>>;
    fn finish_delivery(&self, outcome: &AttemptOutcome) -> StoreResult<()>;
    fn redeliver(&self, endpoint_id: &str, delivery_id: &str, at: Millis) -> StoreResult<()>;
    fn queue_for_endpoint(&self, endpoint_id: &str, event: &AuditEvent) -> StoreResult<String>;
    fn webhook_backlog(&self) -> StoreResult<u64>;
    fn fire_once(&self, fired: &[(String, AuditEvent)]) -> StoreResult<u64>;
    fn keys_with_deadlines(&self, from: Millis, until: Millis, page: &Page)
        -> StoreResult<Vec<KeyRecord>>;
    fn usage_since(&self, period_start: Millis) -> StoreResult<Vec<UsageRow>>;
}
