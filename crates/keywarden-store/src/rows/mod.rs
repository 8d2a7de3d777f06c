//! What the SQLite and PostgreSQL stores share: how each entity maps to table rows and
//! back, the statements themselves, and the one [`Store`] implementation written over them.
//!
//! Both schemas have the same tables and columns, and both drivers accept `$N`
//! placeholders, so every statement below runs unchanged on either database. A backend
//! only supplies its pools, the statement that opens a write transaction and, where it
//! needs one, a per-account lock (see [`Backend`]). Keeping a single implementation is
//! what makes "same behaviour, same tests" (`docs/operations.md#storage`) true by construction.
//!
//! The parts: `binding.rs` (parameters, reading columns, the driver interface), `sql.rs`
//! (tables and the statements generated from them), `codec.rs` (entities to parameters and
//! back), `batch.rs` (multi-row statements for the batched writes), and here the
//! [`Backend`] interface and the [`Store`] implementation.

use crate::store::{
    Census, DecisionCount, DecisionQuery, ErasureCounts, EventFilter, EventsOf, Granularity,
    Invalidation, KeyTouch, Page, Store, StoreError, StoreResult, UsageDelta, WriteBatch,
};
use crate::webhooks::{
    payload, AttemptOutcome, DeliveryStatus, DueDelivery, NextStep, UsageRow, WebhookAttempt,
    WebhookDelivery, WebhookEndpoint, WebhookFilter,
};
use async_trait::async_trait;
use keywarden_core::model::{
    Account, Activity, Application, AuditEvent, Grant, KeyRecord, Millis, Mode, PreviousSecret,
    RateLimitSpec, StoredSecret, WebSession,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool, Transaction};
use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::str::FromStr;
use std::sync::LazyLock;

#[macro_use]
mod binding;
mod batch;
mod codec;
mod sql;

use batch::*;
use binding::*;
pub(crate) use binding::{db_error, query, sqlx_driver, Exec, Param, Placeholders, RowGet};
use codec::*;
#[cfg(test)]
pub(crate) use sql::key_by_lookup_sql;
use sql::*;

/// What a SQL backend provides; everything else is shared.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The sqlx driver.
    type Db: Database<Connection = Self::Conn>;
    /// One connection of that driver.
    type Conn: Exec + sqlx::Connection<Database = Self::Db>;
    /// The statement that opens a write transaction. SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a transaction that reads then writes can never fail to
    /// upgrade its lock halfway.
    const BEGIN_WRITE: &'static str;
    /// A statement (bound to an account id) that serialises writers on one account until
    /// the transaction ends, when the write transaction alone does not already do so.
    const LOCK_ACCOUNT: Option<&'static str>;
    /// A statement (bound to a payload) that tells every process on the database what a
    /// write changed, delivered when the transaction commits; `None` when no other process
    /// shares the database.
    const NOTIFY: Option<&'static str>;
    /// What ends the query that chooses deliveries to claim, so that concurrent claims skip
    /// each other's rows instead of waiting for them (empty when writers are serialised).
    const SKIP_LOCKED: &'static str;
    /// The pool reads are served from.
    fn reader(&self) -> &Pool<Self::Db>;
    /// The pool writes go through.
    fn writer(&self) -> &Pool<Self::Db>;
    /// The feed of [`Backend::NOTIFY`] payloads, decoded.
    fn feed(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }
}

/// Tells the other processes on the database what a write changed (see
/// [`Backend::NOTIFY`]). `changed` is only called when the database is shared, so an
/// unshared one pays nothing, not even the reads that list what changed.
async fn notify<B, F>(c: &mut B::Conn, changed: F) -> StoreResult<()>
where
    B: Backend,
    F: AsyncFnOnce(&mut B::Conn) -> StoreResult<Vec<Invalidation>>,
{
    let Some(sql) = B::NOTIFY else {
        return Ok(());
    };
    let items = changed(&mut *c).await?;
    if !items.is_empty() {
        let payload = Invalidation::encode(&items);
        c.run(sql, &params![payload.as_str()]).await?;
    }
    Ok(())
}

/// The lookups under which a key may be cached, as invalidations.
fn key_lookups(key: &KeyRecord) -> impl Iterator<Item = Invalidation> + '_ {
    std::iter::once(&key.secret)
        .chain(key.previous.as_ref().map(|p| &p.secret))
        .map(|s| Invalidation::Lookup(s.lookup.clone()))
}

/// The lookup values stored for the keys a statement selects (`lookup`, `prev_lookup`).
async fn stored_lookups<C: Exec + ?Sized>(
    c: &mut C,
    sql: &str,
    params: &[Param],
) -> StoreResult<Vec<Invalidation>> {
    let rows = c.rows(sql, params).await?;
    let mut out = Vec::new();
    for r in &rows {
        out.push(Invalidation::Lookup(r.text("lookup")?));
        if let Some(prev) = r.opt_text("prev_lookup")? {
            out.push(Invalidation::Lookup(prev));
        }
    }
    Ok(out)
}

const KEY_LOOKUPS: &str = "SELECT lookup, prev_lookup FROM api_keys WHERE id = $1";
const ACCOUNT_KEY_LOOKUPS: &str = "SELECT lookup, prev_lookup FROM api_keys WHERE account_id = $1";
/// The retired secrets of an account's keys, in the shape [`stored_lookups`] reads.
const ACCOUNT_RETIRED_LOOKUPS: &str = "SELECT r.lookup AS lookup, r.lookup AS prev_lookup \
     FROM retired_secrets r JOIN api_keys k ON k.id = r.key_id WHERE k.account_id = $1";

/// A connection for reads.
async fn read<B: Backend>(b: &B) -> StoreResult<PoolConnection<B::Db>> {
    b.reader().acquire().await.map_err(db_error)
}

/// A write transaction; dropping it without [`commit`] rolls it back.
async fn write<B: Backend>(b: &B) -> StoreResult<Transaction<'static, B::Db>> {
    b.writer()
        .begin_with(B::BEGIN_WRITE)
        .await
        .map_err(db_error)
}

async fn commit<DB: Database>(tx: Transaction<'static, DB>) -> StoreResult<()> {
    tx.commit().await.map_err(db_error)
}

/// Runs one statement in its own write transaction and returns the rows it changed.
async fn write_one<B: Backend>(b: &B, sql: &str, params: &[Param]) -> StoreResult<u64> {
    let mut tx = write(b).await?;
    let n = tx.run(sql, params).await?;
    commit(tx).await?;
    Ok(n)
}

/// Runs one statement and writes the audit events describing its change, in one write
/// transaction. `NotFound`, with nothing written, when the statement changed no row.
async fn change_one<B: Backend>(
    b: &B,
    sql: &str,
    params: &[Param],
    events: &[AuditEvent],
) -> StoreResult<()> {
    let mut tx = write(b).await?;
    found(tx.run(sql, params).await?)?;
    write_events(&mut *tx, events).await?;
    commit(tx).await
}

/// `NotFound` when a statement changed nothing.
fn found(changed: u64) -> StoreResult<()> {
    if changed == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

async fn lock_account<B: Backend>(tx: &mut B::Conn, account_id: &str) -> StoreResult<()> {
    if let Some(sql) = B::LOCK_ACCOUNT {
        tx.run(sql, &params![account_id]).await?;
    }
    Ok(())
}

/// Inserts a key with its events, first checking the account's active keys against
/// `max_active` when given. Both paths take the account lock, so a key cannot slip in while
/// its account is being erased (the erasure would then fail on the new key's reference).
async fn insert_key<B: Backend>(
    b: &B,
    key: &KeyRecord,
    max_active: Option<u64>,
    events: &[AuditEvent],
) -> StoreResult<()> {
    let values = key_params(key)?;
    let mut tx = write(b).await?;
    lock_account::<B>(&mut tx, &key.account_id).await?;
    if let Some(max_active) = max_active {
        let p = params![key.account_id.as_str()];
        let active = count(&mut *tx, COUNT_ACTIVE_KEYS, &p).await?;
        if u64::try_from(active).unwrap_or(0) >= max_active {
            return Err(StoreError::LimitReached { max_active });
        }
    }
    tx.run(&SQL.key_insert, &values).await?;
    // Other replicas may remember this lookup as unknown.
    notify::<B, _>(&mut tx, async |_| Ok(key_lookups(key).collect())).await?;
    write_events(&mut *tx, events).await?;
    commit(tx).await
}

#[async_trait]
impl<B: Backend> Store for B {
    async fn ping(&self) -> StoreResult<()> {
        read(self).await?.run("SELECT 1", &[]).await.map(drop)
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        self.feed()
    }

    async fn create_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()> {
        change_one(self, &SQL.account_insert, &account_params(account)?, events).await
    }

    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>> {
        let mut c = read(self).await?;
        first(&mut *c, &SQL.account_get, &params![id], decode_account).await
    }

    async fn list_accounts(&self, page: &Page) -> StoreResult<Vec<Account>> {
        let mut c = read(self).await?;
        let p = params![after(page), limit(page.limit)];
        all(&mut *c, &SQL.account_list, &p, decode_account).await
    }

    async fn update_account(&self, account: &Account, events: &[AuditEvent]) -> StoreResult<()> {
        let p = ACCOUNTS.update_params(account_params(account)?);
        let mut tx = write(self).await?;
        found(tx.run(&SQL.account_update, &p).await?)?;
        notify::<B, _>(&mut tx, async |_| {
            Ok(vec![Invalidation::Account(account.id.clone())])
        })
        .await?;
        write_events(&mut *tx, events).await?;
        commit(tx).await
    }

    async fn erase_account(
        &self,
        id: &str,
        events: EventsOf<'_, ErasureCounts>,
    ) -> StoreResult<ErasureCounts> {
        let mut tx = write(self).await?;
        lock_account::<B>(&mut tx, id).await?;
        let p = params![id];
        if count(&mut *tx, ACCOUNT_EXISTS, &p).await? == 0 {
            return Err(StoreError::NotFound);
        }
        notify::<B, _>(&mut tx, async |c| {
            let mut gone = stored_lookups(c, ACCOUNT_KEY_LOOKUPS, &p).await?;
            gone.extend(stored_lookups(c, ACCOUNT_RETIRED_LOOKUPS, &p).await?);
            gone.push(Invalidation::Account(id.to_string()));
            Ok(gone)
        })
        .await?;
        tx.run(ERASE_WEBHOOK_MESSAGES, &p).await?;
        tx.run(ERASE_FIRED, &p).await?;
        tx.run(ERASE_WEBHOOKS, &p).await?;
        let counts = ErasureCounts {
            deleted_activity: tx.run(ERASE_ACTIVITY, &p).await?,
            deleted_events: tx.run(ERASE_EVENTS, &p).await?,
            deleted_usage: tx.run(ERASE_USAGE, &p).await?,
            deleted_api_keys: tx.run(ERASE_KEYS, &p).await?,
            deleted_grants: tx.run(ERASE_GRANTS, &p).await?,
            deleted_accounts: tx.run(ERASE_ACCOUNT, &p).await?,
        };
        tx.run(ERASE_SESSIONS, &p).await?;
        tx.run(ERASE_DECISIONS, &p).await?;
        // After every deletion: the erasure's own record survives it.
        write_events(&mut *tx, &events(&counts)).await?;
        commit(tx).await?;
        Ok(counts)
    }

    async fn insert_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()> {
        insert_key(self, key, None, events).await
    }

    async fn insert_key_limited(
        &self,
        key: &KeyRecord,
        max_active: u64,
        events: &[AuditEvent],
    ) -> StoreResult<()> {
        insert_key(self, key, Some(max_active), events).await
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let mut c = read(self).await?;
        first(&mut *c, &SQL.key_get, &params![id], decode_key).await
    }

    async fn get_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<KeyRecord>> {
        let mut c = read(self).await?;
        first(&mut *c, &SQL.key_by_hash, &params![key_hash], decode_key).await
    }

    async fn find_keys_by_lookup(&self, lookup: &str) -> StoreResult<Vec<KeyRecord>> {
        let mut c = read(self).await?;
        let found = all(&mut *c, &SQL.key_by_lookup, &params![lookup], decode_key).await?;
        if !found.is_empty() {
            return Ok(found);
        }
        // No key has this secret now; a key may have rotated it out for good.
        all(
            &mut *c,
            &SQL.key_by_retired,
            &params![lookup],
            decode_retired,
        )
        .await
    }

    async fn list_keys(
        &self,
        account_id: &str,
        mode: Option<Mode>,
        page: &Page,
    ) -> StoreResult<Vec<KeyRecord>> {
        let mut c = read(self).await?;
        let mut p = Vec::from(params![account_id, after(page), limit(page.limit)]);
        let sql = match mode {
            Some(m) => {
                p.push(m.as_str().into());
                &SQL.key_list_mode
            }
            None => &SQL.key_list,
        };
        all(&mut *c, sql, &p, decode_key).await
    }

    async fn count_active_keys(&self, account_id: &str) -> StoreResult<u64> {
        let mut c = read(self).await?;
        let n = count(&mut *c, COUNT_ACTIVE_KEYS, &params![account_id]).await?;
        narrow("n", n)
    }

    async fn update_key(&self, key: &KeyRecord, events: &[AuditEvent]) -> StoreResult<()> {
        let p = KEYS.update_params(key_params(key)?);
        let previous = key
            .previous
            .as_ref()
            .map_or("", |p| p.secret.lookup.as_str());
        let mut tx = write(self).await?;
        // What other replicas may have cached under the key's lookups before and after.
        notify::<B, _>(&mut tx, async |c| {
            let mut changed = stored_lookups(c, KEY_LOOKUPS, &params![key.id.as_str()]).await?;
            changed.extend(key_lookups(key));
            Ok(changed)
        })
        .await?;
        tx.run(
            RETIRE_PREVIOUS,
            &params![key.id.as_str(), previous, key.secret.lookup.as_str()],
        )
        .await?;
        found(tx.run(&SQL.key_update, &p).await?)?;
        write_events(&mut *tx, events).await?;
        commit(tx).await
    }

    async fn touch_keys(&self, touches: &[KeyTouch]) -> StoreResult<()> {
        if touches.is_empty() {
            return Ok(());
        }
        let mut tx = write(self).await?;
        write_touches(&mut *tx, touches).await?;
        commit(tx).await
    }

    async fn create_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()> {
        change_one(self, &SQL.app_insert, &app_params(app)?, events).await
    }

    async fn get_app(&self, id: &str) -> StoreResult<Option<Application>> {
        let mut c = read(self).await?;
        first(&mut *c, &SQL.app_get, &params![id], decode_app).await
    }

    async fn list_apps(&self, page: &Page) -> StoreResult<Vec<Application>> {
        let mut c = read(self).await?;
        let p = params![after(page), limit(page.limit)];
        all(&mut *c, &SQL.app_list, &p, decode_app).await
    }

    async fn update_app(&self, app: &Application, events: &[AuditEvent]) -> StoreResult<()> {
        let p = APPS.update_params(app_params(app)?);
        let mut tx = write(self).await?;
        found(tx.run(&SQL.app_update, &p).await?)?;
        notify::<B, _>(&mut tx, async |_| {
            Ok(vec![Invalidation::App(app.id.clone())])
        })
        .await?;
        write_events(&mut *tx, events).await?;
        commit(tx).await
    }

    async fn create_grant(&self, grant: &Grant, events: &[AuditEvent]) -> StoreResult<()> {
        change_one(self, &SQL.grant_insert, &grant_params(grant)?, events).await
    }

    async fn get_grant(&self, id: &str) -> StoreResult<Option<Grant>> {
        let mut c = read(self).await?;
        first(&mut *c, &SQL.grant_get, &params![id], decode_grant).await
    }

    async fn list_grants(&self, account_id: &str) -> StoreResult<Vec<Grant>> {
        let mut c = read(self).await?;
        all(&mut *c, &SQL.grant_list, &params![account_id], decode_grant).await
    }

    async fn delete_grant(
        &self,
        id: &str,
        at: Millis,
        events: EventsOf<'_, [KeyRecord]>,
    ) -> StoreResult<Vec<KeyRecord>> {
        let mut tx = write(self).await?;
        if count(&mut *tx, GRANT_EXISTS, &params![id]).await? == 0 {
            return Err(StoreError::NotFound);
        }
        tx.run(REVOKE_GRANT_KEYS, &params![id, at, GRANT_DELETED])
            .await?;
        let keys = all(&mut *tx, &SQL.key_by_grant, &params![id], decode_key).await?;
        notify::<B, _>(&mut tx, async |_| {
            Ok(keys.iter().flat_map(key_lookups).collect())
        })
        .await?;
        tx.run(DELETE_GRANT, &params![id]).await?;
        write_events(&mut *tx, &events(&keys)).await?;
        commit(tx).await?;
        Ok(keys)
    }

    async fn append_events(&self, events: &[AuditEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = write(self).await?;
        write_events(&mut *tx, events).await?;
        commit(tx).await
    }

    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<AuditEvent>> {
        let (sql, p) = events_query(filter);
        let mut c = read(self).await?;
        all(&mut *c, &sql, &p, decode_event).await
    }

    async fn append_activity(&self, rows: &[Activity], retain_per_key: u32) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = write(self).await?;
        write_activity(&mut *tx, rows, retain_per_key).await?;
        commit(tx).await
    }

    async fn list_activity(&self, key_id: &str, limit: u32) -> StoreResult<Vec<Activity>> {
        let mut c = read(self).await?;
        let p = params![key_id, i64::from(limit)];
        all(&mut *c, &SQL.activity_list, &p, decode_activity).await
    }

    async fn write_batch(&self, batch: &WriteBatch) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = write(self).await?;
        write_touches(&mut *tx, &batch.touches).await?;
        write_activity(&mut *tx, &batch.activity, batch.activity_retain_per_key).await?;
        write_usage(&mut *tx, &batch.usage).await?;
        write_events(&mut *tx, &batch.events).await?;
        write_decisions(&mut *tx, &batch.decisions).await?;
        drop_orphans(&mut *tx, batch).await?;
        commit(tx).await
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> StoreResult<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = write(self).await?;
        write_usage(&mut *tx, deltas).await?;
        commit(tx).await
    }

    async fn census(&self, now: Millis) -> StoreResult<Census> {
        let mut c = read(self).await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let in_use = |mode: &'static str| params![mode, true, now];
        Ok(Census {
            accounts: n(count(&mut *c, COUNT_ACCOUNTS, &[]).await?),
            live_keys: n(count(&mut *c, COUNT_KEYS_OF_MODE, &in_use("live")).await?),
            test_keys: n(count(&mut *c, COUNT_KEYS_OF_MODE, &in_use("test")).await?),
        })
    }

    async fn decision_counts(&self, q: &DecisionQuery) -> StoreResult<Vec<(Millis, String, u64)>> {
        let (sql, p) = decisions_query(q);
        let mut c = read(self).await?;
        all(&mut *c, &sql, &p, |r| {
            Ok((r.int("bucket")?, r.text("code")?, narrow("n", r.int("n")?)?))
        })
        .await
    }

    async fn prune_decision_counts(
        &self,
        granularity: Granularity,
        before: Millis,
    ) -> StoreResult<u64> {
        write_one(
            self,
            PRUNE_DECISIONS,
            &params![granularity.as_str(), before],
        )
        .await
    }

    async fn create_web_session(
        &self,
        session: &WebSession,
        now: Millis,
        events: &[AuditEvent],
    ) -> StoreResult<()> {
        let mut tx = write(self).await?;
        tx.run(SESSION_EXPIRED, &params![now]).await?;
        let sql = format!(
            "INSERT INTO web_sessions ({SESSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        tx.run(&sql, &session_params(session)).await?;
        write_events(&mut *tx, events).await?;
        commit(tx).await
    }

    async fn get_web_session(&self, id_hash: &str, now: Millis) -> StoreResult<Option<WebSession>> {
        let mut c = read(self).await?;
        first(&mut *c, SESSION_GET, &params![id_hash, now], decode_session).await
    }

    async fn take_web_session(
        &self,
        id_hash: &str,
        now: Millis,
    ) -> StoreResult<Option<WebSession>> {
        let mut tx = write(self).await?;
        let got = first(
            &mut *tx,
            SESSION_TAKE,
            &params![id_hash, now],
            decode_session,
        )
        .await?;
        commit(tx).await?;
        Ok(got)
    }

    async fn end_web_sessions(&self, account_id: &str) -> StoreResult<u64> {
        write_one(self, ERASE_SESSIONS, &params![account_id]).await
    }

    async fn get_usage(
        &self,
        account_id: &str,
        mode: Mode,
        unit: &str,
        period_start: Millis,
    ) -> StoreResult<u64> {
        let mut c = read(self).await?;
        let p = params![account_id, mode.as_str(), unit, period_start];
        match first(&mut *c, GET_USAGE, &p, |r| r.int("n")).await? {
            Some(n) => narrow("used", n),
            None => Ok(0),
        }
    }

    async fn create_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        events: &[AuditEvent],
    ) -> StoreResult<()> {
        // The endpoint first: its own event reaches it, as any later one would.
        change_one(
            self,
            &SQL.webhook_insert,
            &webhook_params(endpoint)?,
            events,
        )
        .await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookEndpoint>> {
        let mut c = read(self).await?;
        first(&mut *c, &SQL.webhook_get, &params![id], decode_webhook).await
    }

    async fn list_webhooks(&self, filter: &WebhookFilter) -> StoreResult<Vec<WebhookEndpoint>> {
        let mut sql = format!("{} WHERE 1 = 1", SQL.webhook_select);
        let mut p: Vec<Param> = Vec::new();
        if let Some(a) = &filter.account_id {
            p.push(a.as_str().into());
            let _ = write!(sql, " AND account_id = ${}", p.len());
        }
        if let Some(m) = filter.mode {
            p.push(m.as_str().into());
            let _ = write!(sql, " AND mode = ${}", p.len());
        }
        sql.push_str(" ORDER BY id");
        let mut c = read(self).await?;
        all(&mut *c, &sql, &p, decode_webhook).await
    }

    async fn update_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        read_at: Millis,
        events: &[AuditEvent],
    ) -> StoreResult<()> {
        let mut p = WEBHOOKS.update_params(webhook_params(endpoint)?);
        p.extend(params![read_at]);
        let mut tx = write(self).await?;
        // The change first: the events reach the endpoint as it now is (enabled or not).
        if tx.run(&SQL.webhook_update, &p).await? == 0 {
            let exists = count(&mut *tx, ENDPOINT_EXISTS, &params![endpoint.id.as_str()]).await?;
            return Err(if exists == 0 {
                StoreError::NotFound
            } else {
                StoreError::Conflict("the webhook endpoint changed since it was read".into())
            });
        }
        write_events(&mut *tx, events).await?;
        commit(tx).await
    }

    async fn delete_webhook(&self, id: &str, events: &[AuditEvent]) -> StoreResult<()> {
        // The deletion first (its deliveries go with it): the events are not queued for the
        // endpoint they report gone.
        change_one(self, DELETE_WEBHOOK, &params![id], events).await
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        before_id: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<WebhookDelivery>> {
        let mut c = read(self).await?;
        match before_id {
            Some(b) => {
                let p = params![endpoint_id, i64::from(limit), b];
                all(&mut *c, &SQL.delivery_list_before, &p, decode_delivery).await
            }
            None => {
                let p = params![endpoint_id, i64::from(limit)];
                all(&mut *c, &SQL.delivery_list, &p, decode_delivery).await
            }
        }
    }

    async fn get_delivery(&self, id: &str) -> StoreResult<Option<WebhookDelivery>> {
        let mut c = read(self).await?;
        first(&mut *c, &SQL.delivery_get, &params![id], decode_delivery).await
    }

    async fn list_attempts(&self, delivery_id: &str) -> StoreResult<Vec<WebhookAttempt>> {
        let mut c = read(self).await?;
        all(&mut *c, ATTEMPT_LIST, &params![delivery_id], decode_attempt).await
    }

    async fn claim_deliveries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
        per_endpoint: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        // Each endpoint's due deliveries are numbered, those being sent first: a delivery
        // keeps its `next_attempt_at` while it is claimed, so they are among the due ones.
        // Only the free ones within the first `per_endpoint` places are claimed, the oldest
        // first. The rows are then locked apart from the numbering (PostgreSQL locks no
        // rows of a query with window functions), and checked again as they are locked.
        let claim = format!(
            "UPDATE webhook_deliveries SET locked_until = $2 WHERE id IN (\
             SELECT d.id FROM webhook_deliveries d WHERE d.id IN (\
             SELECT r.id FROM (SELECT w.id, w.next_attempt_at, w.locked_until, \
             ROW_NUMBER() OVER (PARTITION BY w.endpoint_id ORDER BY \
             CASE WHEN w.locked_until > $1 THEN 0 ELSE 1 END, w.next_attempt_at, w.id) AS place \
             FROM webhook_deliveries w JOIN webhook_endpoints e ON e.id = w.endpoint_id \
             WHERE w.status = 'pending' AND w.next_attempt_at <= $1 AND e.enabled = $4) r \
             WHERE r.place <= $5 AND (r.locked_until IS NULL OR r.locked_until <= $1) \
             ORDER BY r.next_attempt_at, r.id LIMIT $3) \
             AND d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until <= $1)\
             {}) RETURNING id",
            B::SKIP_LOCKED
        );
        let mut tx = write(self).await?;
        let p = params![
            now,
            lease_until,
            i64::from(limit),
            true,
            i64::from(per_endpoint.max(1))
        ];
        let mut ids = all(&mut *tx, &claim, &p, |r| r.text("id")).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        let mut endpoints: BTreeMap<String, WebhookEndpoint> = BTreeMap::new();
        for id in ids {
            let Some(delivery) = first(
                &mut *tx,
                &SQL.delivery_get,
                &params![id.as_str()],
                decode_delivery,
            )
            .await?
            else {
                continue;
            };
            if !endpoints.contains_key(&delivery.endpoint_id) {
                let p = params![delivery.endpoint_id.as_str()];
                if let Some(e) = first(&mut *tx, &SQL.webhook_get, &p, decode_webhook).await? {
                    endpoints.insert(e.id.clone(), e);
                }
            }
            let Some(endpoint) = endpoints.get(&delivery.endpoint_id).cloned() else {
                continue;
            };
            let p = params![delivery.event_id.as_str()];
            let Some(payload) = first(&mut *tx, MESSAGE_PAYLOAD, &p, |r| r.text("payload")).await?
            else {
                continue;
            };
            out.push(DueDelivery {
                delivery,
                endpoint,
                payload,
                lease_until,
            });
        }
        commit(tx).await?;
        Ok(out)
    }

    async fn finish_delivery(&self, o: &AttemptOutcome) -> StoreResult<()> {
        let a = &o.attempt;
        let (status, next_at, delivered_at) = match o.next {
            NextStep::Delivered => (DeliveryStatus::Delivered, None, Some(a.at)),
            NextStep::RetryAt(t) => (DeliveryStatus::Pending, Some(t), None),
            NextStep::GiveUp => (DeliveryStatus::Failed, None, None),
        };
        let http_status = a.status.map(i64::from);
        let mut tx = write(self).await?;
        let p = params![
            o.delivery_id.as_str(),
            status.as_str(),
            next_at,
            http_status,
            a.duration_ms,
            a.response.as_str(),
            a.error.as_deref(),
            delivered_at,
            o.lease_until,
        ];
        if tx.run(DELIVERY_FINISH, &p).await? == 0 {
            // The endpoint was deleted while the attempt was made, or the lease ran out
            // and another claim has the delivery now: that claim records its own attempt.
            return Ok(());
        }
        let p = params![
            o.delivery_id.as_str(),
            a.at,
            http_status,
            a.duration_ms,
            a.response.as_str(),
            a.error.as_deref(),
        ];
        tx.run(ATTEMPT_INSERT, &p).await?;
        let endpoint = o.endpoint_id.as_str();
        if o.next == NextStep::Delivered {
            tx.run(ENDPOINT_SUCCEEDED, &params![endpoint]).await?;
        } else {
            tx.run(ENDPOINT_FAILED, &params![endpoint, a.at]).await?;
        }
        // An endpoint changed while the attempt was made is left as it now is, and its
        // disabling is not reported.
        let report = match &o.disable {
            Some(reason) => {
                let p = params![endpoint, reason.as_str(), a.at, false];
                tx.run(ENDPOINT_DISABLE, &p).await? > 0
            }
            None => true,
        };
        if report {
            write_events(&mut *tx, &o.events).await?;
        }
        commit(tx).await
    }

    async fn redeliver(&self, endpoint_id: &str, delivery_id: &str, at: Millis) -> StoreResult<()> {
        let p = params![endpoint_id, delivery_id, at];
        if write_one(self, REDELIVER, &p).await? > 0 {
            return Ok(());
        }
        let mut c = read(self).await?;
        if count(&mut *c, DELIVERY_OF_ENDPOINT, &p[..2]).await? == 0 {
            return Err(StoreError::NotFound);
        }
        Err(StoreError::Conflict(
            "the delivery is being sent now; ask again once this attempt is recorded".into(),
        ))
    }

    async fn queue_for_endpoint(
        &self,
        endpoint_id: &str,
        event: &AuditEvent,
    ) -> StoreResult<String> {
        let mut tx = write(self).await?;
        if count(&mut *tx, ENDPOINT_EXISTS, &params![endpoint_id]).await? == 0 {
            return Err(StoreError::NotFound);
        }
        queue_message(&mut *tx, event).await?;
        let id = queue_delivery(&mut *tx, endpoint_id, event).await?;
        commit(tx).await?;
        Ok(id)
    }

    async fn webhook_backlog(&self) -> StoreResult<u64> {
        let mut c = read(self).await?;
        narrow("n", count(&mut *c, BACKLOG, &params![true]).await?)
    }

    async fn fire_once(&self, fired: &[(String, AuditEvent)]) -> StoreResult<u64> {
        if fired.is_empty() {
            return Ok(0);
        }
        let mut tx = write(self).await?;
        let mut written = 0;
        for (marker, e) in fired {
            let p = params![marker.as_str(), e.account_id.as_deref(), e.at];
            if tx.run(FIRE_MARKER, &p).await? == 1 {
                write_events(&mut *tx, std::slice::from_ref(e)).await?;
                written += 1;
            }
        }
        commit(tx).await?;
        Ok(written)
    }

    async fn keys_with_deadlines(
        &self,
        from: Millis,
        until: Millis,
        page: &Page,
    ) -> StoreResult<Vec<KeyRecord>> {
        let mut c = read(self).await?;
        let p = params![from, until, after(page), limit(page.limit)];
        all(&mut *c, &SQL.key_deadlines, &p, decode_key).await
    }

    async fn usage_since(&self, period_start: Millis) -> StoreResult<Vec<UsageRow>> {
        let mut c = read(self).await?;
        all(
            &mut *c,
            USAGE_SINCE,
            &params![period_start],
            decode_usage_row,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_and_cover_every_row() {
        for n in 0..1000 {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes
                .iter()
                .all(|s| s.is_power_of_two() && *s <= MAX_ROWS_PER_STATEMENT));
        }
    }

    #[test]
    fn values_lists_number_parameters_row_by_row() {
        assert_eq!(
            values_list(2, 3, Placeholders::Numbered),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(
            values_list(2, 3, Placeholders::Anonymous),
            "(?, ?, ?), (?, ?, ?)"
        );
    }

    #[test]
    fn updates_bind_the_key_then_the_mutable_columns() {
        assert_eq!(
            ACCOUNTS.update(),
            "UPDATE accounts SET name = $2, plan = $3, status = $4, metadata = $5 WHERE id = $1"
        );
        let p = ACCOUNTS.update_params(params!["a", "n", "p", "s", "{}", 1_i64].into());
        assert_eq!(p, params!["a", "n", "p", "s", "{}"]);
        // Every placeholder an update names has a parameter, and none is left over.
        for table in [&ACCOUNTS, &KEYS, &APPS] {
            let n = table.columns.iter().filter(|c| table.updatable(c)).count() + 1;
            assert!(table.update().contains(&format!("${n} ")));
            assert!(!table.update().contains(&format!("${}", n + 1)));
        }
    }

    #[test]
    fn event_filters_number_their_placeholders_in_order() {
        let f = EventFilter {
            account_id: Some("acc_1".into()),
            mode: Some(Mode::Test),
            include_modeless: true,
            kind: Some("key.*".into()),
            since: Some(5),
            before_id: Some("evt_9".into()),
            limit: 10,
        };
        let (sql, p) = events_query(&f);
        assert!(sql.contains("account_id = $1"));
        assert!(sql.contains("(mode = $2 OR mode IS NULL)"));
        assert!(sql.contains("substr(kind, 1, length($3)) = $3"));
        assert!(sql.contains("at >= $4"));
        assert!(sql.contains("id < $5"));
        assert!(sql.ends_with("LIMIT $6"));
        assert_eq!(p, params!["acc_1", "test", "key.", 5_i64, "evt_9", 10_i64]);
    }
}
