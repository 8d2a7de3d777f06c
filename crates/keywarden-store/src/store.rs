//! The one interface to everything Keywarden remembers (`docs/concepts.md#objects`, `docs/operations.md#what-is-recorded`).
//!
//! Two implementations live beside it: [`crate::sqlite::SqliteStore`] (the embedded
//! default) and [`crate::postgres::PgStore`]. Both pass the same behavioural suite.
//! The request path never calls a method that writes: writes on that path go through the
//! batched [`crate::writer`], and reads are served by the [`crate::cache`] whenever possible.

use async_trait::async_trait;
use keywarden_core::model::{
    Account, Activity, Application, AuditEvent, Grant, KeyRecord, Millis, Mode, WebSession,
};
use serde::Serialize;

use crate::webhooks::{
    AttemptOutcome, DueDelivery, UsageRow, WebhookAttempt, WebhookDelivery, WebhookEndpoint,
    WebhookFilter,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken (e.g. an id or lookup value already exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The account already has `max_active` active keys.
    #[error("the plan allows at most {max_active} active keys")]
    LimitReached {
        /// The limit that was hit.
        max_active: u64,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The database could not be reached or did not answer in time (connection refused or
    /// lost, no connection free within the bound, statement timed out, file locked): the
    /// call may succeed when retried later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded (corrupt row or unknown enum value).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which audit events to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this account's events.
    pub account_id: Option<String>,
    /// Only events of this mode (events without a mode are included for any mode filter
    /// only when `include_modeless` is set).
    pub mode: Option<Mode>,
    /// Also return account-level events that have no mode.
    pub include_modeless: bool,
    /// Only events of this type (`key.created`), or of this family when it ends with `.*`.
    pub kind: Option<String>,
    /// Only events at or after this instant.
    pub since: Option<Millis>,
    /// Only events with an id lexically smaller than this (paging: pass the last id seen).
    pub before_id: Option<String>,
    /// At most this many (the caller caps it).
    pub limit: u32,
}

/// Paging through keys or accounts, ordered by id ascending (ids are ULIDs, so by age).
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Only ids strictly greater than this.
    pub after_id: Option<String>,
    /// At most this many.
    pub limit: u32,
}

/// A usage increment for one account, mode, unit and period.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct UsageDelta {
    /// The consuming account.
    pub account_id: String,
    /// Live or test usage are counted apart.
    pub mode: Mode,
    /// The unit (`requests`, `words`, …).
    pub unit: String,
    /// Start of the period (UTC day or month) in Unix milliseconds.
    pub period_start: Millis,
    /// How much was consumed.
    pub amount: u64,
}

/// Decisions with one outcome in one minute, for analytics: a known key's (with its
/// account and mode), or of no known key (deployment-wide totals only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionCount {
    /// Start of the minute, Unix milliseconds.
    pub minute: Millis,
    /// The key and its account and mode; `None` when no key was recognised.
    pub key: Option<(String, String, Mode)>,
    /// The decision code.
    pub code: String,
    /// How many.
    pub count: u64,
}

/// The size of an analytics bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Its name, as stored and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// The length of one bucket in milliseconds.
    pub fn millis(self) -> Millis {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `at`.
    pub fn bucket(self, at: Millis) -> Millis {
        at.div_euclid(self.millis()) * self.millis()
    }
}

/// Which decision counts to read: an account's or a key's (or, with neither, the
/// deployment's), in one mode or all, from `from` (inclusive) to `to` (exclusive).
#[derive(Clone, Debug)]
pub struct DecisionQuery {
    /// Bucket size.
    pub granularity: Granularity,
    /// Only this account's decisions.
    pub account_id: Option<String>,
    /// Only this key's decisions (with its account).
    pub key_id: Option<String>,
    /// Only this mode.
    pub mode: Option<Mode>,
    /// First bucket start.
    pub from: Millis,
    /// End, exclusive.
    pub to: Millis,
}

/// The size of the deployment, for the console's overview.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    /// Accounts.
    pub accounts: u64,
    /// Live keys that verify now: enabled, unexpired and unrevoked.
    pub live_keys: u64,
    /// Test keys that verify now: enabled, unexpired and unrevoked.
    pub test_keys: u64,
}

/// A successful use of a key, for `last_used_at` / `last_used_ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTouch {
    /// The key used.
    pub key_id: String,
    /// When.
    pub at: Millis,
    /// From where.
    pub ip: Option<String>,
}

/// Everything the background writer flushes at once, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Key uses (`last_used_at`, `last_used_ip`); unknown key ids are ignored.
    pub touches: Vec<KeyTouch>,
    /// Activity rows.
    pub activity: Vec<Activity>,
    /// Keep at most this many newest activity rows per key touched by `activity`.
    pub activity_retain_per_key: u32,
    /// Usage increments (added to existing counters).
    pub usage: Vec<UsageDelta>,
    /// Audit events raised on the request path (e.g. `key.ip_denied`).
    pub events: Vec<AuditEvent>,
    /// Decisions counted by outcome, per minute.
    pub decisions: Vec<DecisionCount>,
}

impl WriteBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.touches.is_empty()
            && self.activity.is_empty()
            && self.usage.is_empty()
            && self.events.is_empty()
            && self.decisions.is_empty()
    }
}

/// What an account erasure removed, per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErasureCounts {
    /// Accounts deleted (0 or 1).
    pub deleted_accounts: u64,
    /// Keys deleted.
    pub deleted_api_keys: u64,
    /// Audit events deleted.
    pub deleted_events: u64,
    /// Activity rows deleted.
    pub deleted_activity: u64,
    /// Usage counters deleted.
    pub deleted_usage: u64,
    /// Grants deleted.
    pub deleted_grants: u64,
}

/// A write another process made to the shared database, which this process's caches must
/// forget (`docs/operations.md#storage`: several replicas on one PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Whatever is cached under this key lookup value.
    Lookup(String),
    /// The cached account with this id.
    Account(String),
    /// The cached application with this id.
    App(String),
    /// Everything: the feed was interrupted, or the write touched too much to list.
    All,
}

impl Invalidation {
    /// The notification payload for a list of invalidations: one per line (`k <lookup>`,
    /// `a <account id>`, `p <app id>`), or `*` for everything when the list would not fit
    /// in one notification.
    pub fn encode(items: &[Invalidation]) -> String {
        const MAX_PAYLOAD: usize = 7_000;
        let mut out = String::new();
        for item in items {
            let line = match item {
                Invalidation::Lookup(l) => format!("k {l}"),
                Invalidation::Account(a) => format!("a {a}"),
                Invalidation::App(p) => format!("p {p}"),
                Invalidation::All => return "*".into(),
            };
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&line);
            if out.len() > MAX_PAYLOAD {
                return "*".into();
            }
        }
        out
    }

    /// Reads a payload written by [`Invalidation::encode`]. Anything it does not know
    /// forgets everything, which is always safe.
    pub fn decode(payload: &str) -> Vec<Invalidation> {
        let mut out = Vec::new();
        for line in payload.lines() {
            match line.split_once(' ') {
                Some(("k", l)) => out.push(Invalidation::Lookup(l.to_string())),
                Some(("a", a)) => out.push(Invalidation::Account(a.to_string())),
                Some(("p", p)) => out.push(Invalidation::App(p.to_string())),
                _ => return vec![Invalidation::All],
            }
        }
        out
    }
}

/// The audit events describing a change whose details only its own transaction knows (what
/// an erasure removed, which keys a grant's deletion revoked): made from that outcome, and
/// written in that transaction before it commits.
pub type EventsOf<'a, T> = &'a (dyn Fn(&T) -> Vec<AuditEvent> + Sync);

/// Everything Keywarden remembers, behind one async interface.
///
/// Implementations must make each method atomic; methods that read then write
/// (`insert_key_limited`, `delete_grant`, `erase_account`) run in one transaction that takes
/// the write lock up front (SQLite `BEGIN IMMEDIATE`).
///
/// Every method that makes an audited change takes the audit events describing it and
/// writes them, with their webhook outbox rows (the message and one delivery per enabled
/// endpoint each event reaches), in the change's own transaction, after the change: the
/// change and its events are committed together or not at all. A change refused
/// (`NotFound`, `Conflict`, `LimitReached`) writes none of its events.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Is the database reachable? Used by `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Writes to keys, accounts and applications committed by any process on this database
    /// (this one included), as they commit, for keeping caches in step across replicas.
    /// `None` when the store has no such feed (SQLite serves one process).
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }

    // ---- accounts ----

    /// Inserts a new account, with `events`. `Conflict` if the id exists.
    async fn create_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()>;
    /// The account with this id.
    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>>;
    /// Accounts by id ascending.
    async fn list_accounts(&self, page: &Page) -> StoreResult<Vec<Account>>;
    /// Replaces name, plan, status and metadata, with `events`. `NotFound` if absent.
    async fn update_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()>;
    /// Deletes the account and everything of it (keys, events, webhook messages and
    /// endpoints, activity, usage, decision counts, grants, sessions), in one transaction.
    /// The events `events` makes of what was deleted are written after the deletions, in
    /// that transaction, so they outlive the account's trail and reach the endpoints that
    /// remain. `NotFound` if absent.
    async fn erase_account(
        &self,
        id: &str,
        events: EventsOf<'_, ErasureCounts>,
    ) -> StoreResult<ErasureCounts>;

    // ---- keys ----

    /// Inserts a key, with `events`. `Conflict` if its id or lookup value exists.
    async fn insert_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()>;
    /// Inserts a key, with `events`, unless its account already has `max_active` or more
    /// active (not revoked) keys, counted and inserted in one transaction.
    async fn insert_key_limited(
        &self,
        key: &KeyRecord,
        max_active: u64,
        events: &[AuditEvent],
    ) -> StoreResult<()>;
    /// The key with this id.
    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    /// The key whose current fingerprint (`sha256_…`) is this.
    async fn get_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<KeyRecord>>;
    /// Keys whose current or previous (rotated-out) secret has this lookup value: one
    /// indexed query whatever the number of keys. Usually zero or one row; slow-hash lookup
    /// segments can in principle collide, so the caller verifies each.
    ///
    /// When no key has it now: the keys that rotated a secret with this lookup out for good
    /// (a later rotation replaced it as the previous secret), each with that secret as its
    /// current one, no previous one, and revoked (at its revocation, or else at its
    /// creation), so a retired secret is answered `api_key_revoked`. A second indexed query,
    /// paid only by lookups no key has.
    async fn find_keys_by_lookup(&self, lookup: &str) -> StoreResult<Vec<KeyRecord>>;
    /// An account's keys (of one mode, when given), by id ascending, revoked ones included.
    async fn list_keys(
        &self,
        account_id: &str,
        mode: Option<Mode>,
        page: &Page,
    ) -> StoreResult<Vec<KeyRecord>>;
    /// Number of active (not revoked) keys of the account, all modes.
    async fn count_active_keys(&self, account_id: &str) -> StoreResult<u64>;
    /// Replaces every mutable field of the key (everything but id, account, mode, type,
    /// created_at), with `events`. `NotFound` if absent.
    async fn update_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()>;
    /// Records successful uses (`last_used_at`, `last_used_ip`), in one transaction.
    /// Unknown key ids are ignored (the key may have been erased meanwhile).
    async fn touch_keys(&self, touches: &[KeyTouch]) -> StoreResult<()>;

    // ---- applications and grants ----

    /// Inserts an application, with `events`.
    async fn create_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()>;
    /// The application with this id.
    async fn get_app(&self, id: &str) -> StoreResult<Option<Application>>;
    /// Applications by id ascending.
    async fn list_apps(&self, page: &Page) -> StoreResult<Vec<Application>>;
    /// Replaces name, description, url, scopes and both stored secrets, with `events`.
    /// `NotFound` if absent.
    async fn update_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()>;
    /// Inserts a grant, with `events`.
    async fn create_grant(&self, grant: &Grant, events: &[AuditEvent]) -> StoreResult<()>;
    /// The grant with this id.
    async fn get_grant(&self, id: &str) -> StoreResult<Option<Grant>>;
    /// An account's grants.
    async fn list_grants(&self, account_id: &str) -> StoreResult<Vec<Grant>>;
    /// Deletes the grant and revokes (at `at`, reason "grant deleted") every key made under
    /// it, in one transaction, with the events `events` makes of those keys; returns the
    /// keys as they are after revocation so the caller can invalidate its caches.
    /// `NotFound` if absent.
    async fn delete_grant(
        &self,
        id: &str,
        at: Millis,
        events: EventsOf<'_, [KeyRecord]>,
    ) -> StoreResult<Vec<KeyRecord>>;

    // ---- audit, activity, usage ----

    /// Appends audit events (append-only), in one transaction: events that describe no
    /// change of their own (a secret revealed, a leak reported without revoking).
    async fn append_events(&self, events: &[AuditEvent]) -> StoreResult<()>;
    /// Audit events matching the filter, newest first.
    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<AuditEvent>>;
    /// Appends activity rows, in one transaction, keeping at most `retain_per_key` newest rows
    /// per key touched.
    async fn append_activity(&self, rows: &[Activity], retain_per_key: u32) -> StoreResult<()>;
    /// A key's most recent activity, newest first.
    async fn list_activity(&self, key_id: &str, limit: u32) -> StoreResult<Vec<Activity>>;
    /// Writes a whole batch (touches, activity, usage, events) in one transaction: either all
    /// of it lands or none of it does.
    async fn write_batch(&self, batch: &WriteBatch) -> StoreResult<()>;
    /// Adds usage increments (upsert-and-add), in one transaction.
    async fn add_usage(&self, deltas: &[UsageDelta]) -> StoreResult<()>;
    /// Usage of an account for one mode, unit and period start (0 when none).
    /// How many accounts there are, and how many keys of each mode (live, test) are in
    /// use at `now`: enabled, not expired, not revoked.
    async fn census(&self, now: Millis) -> StoreResult<Census>;
    /// Decision counts per bucket and code, in bucket order: `(bucket start, code, count)`.
    async fn decision_counts(&self, q: &DecisionQuery) -> StoreResult<Vec<(Millis, String, u64)>>;
    /// Deletes buckets of `granularity` that start before `before`.
    async fn prune_decision_counts(
        &self,
        granularity: Granularity,
        before: Millis,
    ) -> StoreResult<u64>;
    /// Stores a web session or portal link, with `events`, dropping every one expired
    /// before `now`.
    async fn create_web_session(
        &self,
        session: &WebSession,
        now: Millis,
        events: &[AuditEvent],
    ) -> StoreResult<()>;
    /// The session whose id hashes to `id_hash`, if it has not expired at `now`.
    async fn get_web_session(&self, id_hash: &str, now: Millis) -> StoreResult<Option<WebSession>>;
    /// Deletes and returns the session, if it has not expired at `now`: a portal link is
    /// used by exactly one caller, however many present it at once.
    async fn take_web_session(&self, id_hash: &str, now: Millis)
        -> StoreResult<Option<WebSession>>;
    /// Ends every session and link of an account (suspension, erasure).
    async fn end_web_sessions(&self, account_id: &str) -> StoreResult<u64>;
    async fn get_usage(
        &self,
        account_id: &str,
        mode: Mode,
        unit: &str,
        period_start: Millis,
    ) -> StoreResult<u64>;

    // ---- webhooks (docs/webhooks.md) ----
    //
    // Every method that writes audit events (`append_events`, `write_batch`, `fire_once`,
    // `finish_delivery`, and each change that takes its `events`) also writes, in the same
    // transaction, the message and one delivery per enabled endpoint the event reaches: the
    // transactional outbox. An endpoint's own change is written before its events, so they
    // reach it as it is after the change (a new or re-enabled endpoint receives its own
    // event, a disabled or deleted one does not).

    /// Inserts an endpoint, with `events`.
    async fn create_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        events: &[AuditEvent],
    ) -> StoreResult<()>;
    /// The endpoint with this id.
    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookEndpoint>>;
    /// Endpoints matching the filter, by id ascending.
    async fn list_webhooks(&self, filter: &WebhookFilter) -> StoreResult<Vec<WebhookEndpoint>>;
    /// Replaces every mutable field, with `events`, provided the endpoint is still as it was
    /// read (its `updated_at` is `read_at`): `Conflict` when it changed meanwhile (a
    /// rotation, an edit, Keywarden disabling it), `NotFound` if absent.
    async fn update_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        read_at: Millis,
        events: &[AuditEvent],
    ) -> StoreResult<()>;
    /// Deletes the endpoint and its deliveries, with `events`. `NotFound` if absent.
    async fn delete_webhook(&self, id: &str, events: &[AuditEvent]) -> StoreResult<()>;
    /// An endpoint's deliveries, newest first, ids below `before_id` when given.
    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        before_id: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<WebhookDelivery>>;
    /// The delivery with this id.
    async fn get_delivery(&self, id: &str) -> StoreResult<Option<WebhookDelivery>>;
    /// A delivery's attempts, oldest first.
    async fn list_attempts(&self, delivery_id: &str) -> StoreResult<Vec<WebhookAttempt>>;
    /// Claims up to `limit` pending deliveries due at `now` to enabled endpoints and not
    /// claimed by anyone else, oldest first, marking them claimed until `lease_until`. No
    /// endpoint is left with more than `per_endpoint` deliveries claimed at once (those
    /// claimed before, by any process, and not yet finished included), so one slow
    /// endpoint cannot take every attempt. On PostgreSQL the rows are chosen
    /// `FOR UPDATE SKIP LOCKED`, so several replicas never claim one delivery at once.
    async fn claim_deliveries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
        per_endpoint: u32,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Records an attempt and what follows it; disables the endpoint when asked, and
    /// writes the outcome's events, in one transaction. Writes nothing when the delivery
    /// no longer holds the lease it was claimed with (the lease ran out and another claim
    /// took it, or the endpoint was deleted), so an attempt is never recorded twice.
    async fn finish_delivery(&self, outcome: &AttemptOutcome) -> StoreResult<()>;
    /// Makes a delivery of this endpoint pending again, due at `at`. `NotFound` if absent;
    /// `Conflict` while a process holds it to send it (its lease has not run out).
    async fn redeliver(&self, endpoint_id: &str, delivery_id: &str, at: Millis) -> StoreResult<()>;
    /// Queues `event` for this endpoint only (a test event), not in the audit trail; returns
    /// the delivery id.
    async fn queue_for_endpoint(
        &self,
        endpoint_id: &str,
        event: &AuditEvent,
    ) -> StoreResult<String>;
    /// Pending deliveries of enabled endpoints (the outbox backlog: what the worker has
    /// to send).
    async fn webhook_backlog(&self) -> StoreResult<u64>;
    /// Writes each event whose marker was never written before, with its marker, in one
    /// transaction; returns how many were written. Events raised once (`key.expiring`,
    /// `quota.threshold`) go through here.
    async fn fire_once(&self, fired: &[(String, AuditEvent)]) -> StoreResult<u64>;
    /// Unrevoked keys that expire, or whose previous secret's grace ends, between `from`
    /// and `until` (inclusive), one page by id.
    async fn keys_with_deadlines(
        &self,
        from: Millis,
        until: Millis,
        page: &Page,
    ) -> StoreResult<Vec<KeyRecord>>;
    /// Usage counters of periods starting at or after `period_start`, with their account's
    /// plan.
    async fn usage_since(&self, period_start: Millis) -> StoreResult<Vec<UsageRow>>;
}

#[cfg(test)]
mod tests {
    use super::Invalidation;

    #[test]
    fn invalidations_survive_the_notification_payload() {
        let items = vec![
            Invalidation::Lookup("9f86d081884c7d65".into()),
            Invalidation::Account("acc_01J".into()),
            Invalidation::App("app_01J".into()),
        ];
        let payload = Invalidation::encode(&items);
        assert_eq!(payload, "k 9f86d081884c7d65\na acc_01J\np app_01J");
        assert_eq!(Invalidation::decode(&payload), items);
    }

    #[test]
    fn too_much_or_anything_unknown_means_everything() {
        let many: Vec<Invalidation> = (0..1_000)
            .map(|i| Invalidation::Lookup(format!("{i:064x}")))
            .collect();
        assert_eq!(Invalidation::encode(&many), "*");
        assert_eq!(Invalidation::decode("*"), vec![Invalidation::All]);
        assert_eq!(
            Invalidation::decode("k abc\nx what"),
            vec![Invalidation::All]
        );
        assert_eq!(Invalidation::encode(&[]), "");
    }
}
