//! The PostgreSQL store, for several replicas sharing one database (`docs/operations.md#storage`).
//!
//! Transactions run at PostgreSQL's default isolation (read committed). Where a decision
//! depends on rows another transaction could be inserting at the same moment (counting an
//! account's active keys before adding one, or erasing the account), the transaction first
//! takes a per-account advisory lock, held until it ends.
//!
//! Replicas keep their caches in step through LISTEN/NOTIFY: every write to a key, an
//! account or an application notifies [`CHANNEL`] in its own transaction (so the
//! notification goes out exactly when the write commits), and the store's
//! `invalidations` feed brings what any replica wrote to this one's caches, well within a
//! second. When the listening connection drops, the feed says [`Invalidation::All`] once
//! it is back, since notifications may have been missed meanwhile; the caches' TTL remains
//! the backstop.

use crate::rows::{sqlx_driver, Backend};
use crate::store::{Invalidation, StoreError, StoreResult};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;

/// The notification channel, spelled once for both [`CHANNEL`] and the NOTIFY statement.
macro_rules! channel {
    () => {
        "keywarden_invalidate"
    };
}

/// The notification channel writes are announced on.
pub const CHANNEL: &str = channel!();

/// Invalidations buffered for a slow subscriber; past that it is told to forget everything.
const FEED_CAPACITY: usize = 4_096;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

sqlx_driver!(
    Postgres,
    PgConnection,
    sqlx::postgres::PgRow,
    crate::rows::Placeholders::Numbered
);

/// Most connections one process opens.
const MAX_CONNECTIONS: u32 = 16;

/// How long a statement may run, and a call wait for a free (or new) connection, unless
/// the caller says otherwise ([`PgStore::open_with`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Keywarden's store on PostgreSQL.
pub struct PgStore {
    /// Serves reads and writes alike: PostgreSQL handles concurrent writers itself.
    pool: PgPool,
    /// The invalidation feed, started by the first subscriber.
    feed: Mutex<Option<broadcast::Sender<Invalidation>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connect options hold the password; print nothing of them.
        f.debug_struct("PgStore")
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names and brings its schema up to date.
    /// Several replicas may do this at once: sqlx serialises migrations with a lock.
    pub async fn open(database_url: &str) -> StoreResult<Self> {
        Self::open_with(database_url, DEFAULT_TIMEOUT).await
    }

    /// Like [`PgStore::open`], with `timeout` bounding each statement (PostgreSQL's
    /// `statement_timeout`), the wait for a connection (connecting included), and the check
    /// that a connection given back still answers (a connection that does not is dropped,
    /// so a silent network does not hold the pool's connections).
    pub async fn open_with(database_url: &str, timeout: Duration) -> StoreResult<Self> {
        let cannot =
            |e: sqlx::Error| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}"));
        let base = PgConnectOptions::from_str(database_url)
            .map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?;
        // Migrations may legitimately take longer than one call: they run on a connection
        // of their own, without the statement timeout.
        let mut migrating = tokio::time::timeout(timeout, PgConnection::connect_with(&base))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL within {} ms",
                    timeout.as_millis()
                ))
            })?
            .map_err(cannot)?;
        migrate(&mut migrating).await?;
        let _ = migrating.close().await;
        let ms = timeout.as_millis().max(1).to_string();
        let options = base.options([("statement_timeout", ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(timeout)
            .after_release(move |conn, _| {
                Box::pin(async move {
                    match tokio::time::timeout(timeout, conn.ping()).await {
                        Ok(Ok(())) => Ok(true),
                        Ok(Err(e)) => Err(e),
                        // Dropped without a goodbye: the network may be silent.
                        Err(_) => Err(sqlx::Error::PoolTimedOut),
                    }
                })
            })
            .connect_with(options)
            .await
            .map_err(cannot)?;
        Ok(Self {
            pool,
            feed: Mutex::new(None),
        })
    }

    /// Uses an existing pool (its owner chose the size and timeouts) and brings the
    /// schema up to date.
    pub async fn with_pool(pool: PgPool) -> StoreResult<Self> {
        let mut conn = pool.acquire().await.map_err(crate::rows::db_error)?;
        migrate(&mut conn).await?;
        drop(conn);
        Ok(Self {
            pool,
            feed: Mutex::new(None),
        })
    }

    /// The connection pool, for what needs PostgreSQL itself rather than the [`Store`]
    /// interface (LISTEN/NOTIFY between replicas).
    ///
    /// [`Store`]: crate::Store
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Backend for PgStore {
    type Db = Postgres;
    type Conn = PgConnection;
    const BEGIN_WRITE: &'static str = "BEGIN";
    // The two-key form keeps Keywarden's locks apart from sqlx's migration lock, which uses
    // the one-key form. A hash collision only makes two accounts wait for each other.
    const LOCK_ACCOUNT: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(7301, hashtext($1))");
    const NOTIFY: Option<&'static str> = Some(concat!("SELECT pg_notify('", channel!(), "', $1)"));
    // Replicas claiming deliveries at once each take rows the others have not locked.
    const SKIP_LOCKED: &'static str = " FOR UPDATE OF d SKIP LOCKED";

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn feed(&self) -> Option<broadcast::Receiver<Invalidation>> {
        let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = feed.as_ref().filter(|tx| tx.receiver_count() > 0) {
            return Some(tx.subscribe());
        }
        // A listener stops once nobody subscribes, so a new subscriber after that gets a new
        // one; its first subscriber exists before it starts.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = broadcast::channel(FEED_CAPACITY);
        runtime.spawn(listen(self.pool.clone(), tx.clone()));
        *feed = Some(tx);
        Some(rx)
    }
}

/// Brings the schema up to date on one connection.
async fn migrate(conn: &mut PgConnection) -> StoreResult<()> {
    MIGRATOR
        .run(conn)
        .await
        .map_err(|e| StoreError::Database(format!("cannot migrate the PostgreSQL schema: {e}")))
}

/// Forwards the notifications of [`CHANNEL`] to `tx` until nobody subscribes any more or
/// the pool is closed. Reconnects after a failure, and then announces
/// [`Invalidation::All`]: what was written meanwhile is unknown.
async fn listen(pool: PgPool, tx: broadcast::Sender<Invalidation>) {
    let done = |tx: &broadcast::Sender<Invalidation>| tx.receiver_count() == 0 || pool.is_closed();
    let mut reconnect = false;
    while !done(&tx) {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' writes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                reconnect = true;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for other replicas' writes; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            reconnect = true;
            continue;
        }
        if reconnect {
            tracing::info!("listening for other replicas' writes again");
            let _ = tx.send(Invalidation::All);
        }
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        for item in Invalidation::decode(n.payload()) {
                            let _ = tx.send(item);
                        }
                    }
                    // The connection dropped. What was written meanwhile is forgotten once
                    // the feed is back, not now: while the database cannot be reached,
                    // cached keys keep verifying (docs/faults.md).
                    Ok(None) => {
                        tracing::warn!("lost the feed of other replicas' writes; reconnecting");
                        reconnect = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the feed of other replicas' writes");
                        reconnect = true;
                        break;
                    }
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if done(&tx) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use sqlx::Row;

    /// The lookup query must be answered from the two lookup indexes, never by a scan.
    /// Runs when `KEYWARDEN_TEST_DATABASE_URL` names a PostgreSQL database; it works in a
    /// schema of its own, dropped afterwards.
    #[tokio::test]
    async fn lookup_uses_both_indexes() {
        let Ok(url) = std::env::var("KEYWARDEN_TEST_DATABASE_URL") else {
            eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
            return;
        };
        let schema = format!("kw_plan_{}", ulid::Ulid::new().to_string().to_lowercase());
        let admin = PgPool::connect(&url).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let search_path = format!("SET search_path TO {schema}");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .after_connect(move |c, _| {
                let sql = search_path.clone();
                Box::pin(async move { sqlx::query(&sql).execute(c).await.map(drop) })
            })
            .connect(&url)
            .await
            .unwrap();
        let store = PgStore::with_pool(pool).await.unwrap();
        // Enough rows that a sequential scan is not the cheapest plan.
        sqlx::raw_sql(
            "INSERT INTO accounts VALUES ('acc_1', 'a', 'default', 'active', '{}', 0);
             INSERT INTO api_keys (id, account_id, mode, key_type, name, description, owner,
                 role, scopes, ip_allowlist, enabled, metadata, prefix, start, key_hash,
                 scheme, lookup, hash, created_at)
             SELECT 'key_' || i, 'acc_1', 'live', 'secret', 'k', '', '', 'owner', '[]', '[]',
                 true, '{}', 'kw_', 'kw_abcd', 'sha256_' || i, 'hmac-sha256', md5(i::text),
                 '', 0
             FROM generate_series(1, 5000) AS i;
             ANALYZE api_keys;",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let plan: Vec<String> =
            sqlx::query(&format!("EXPLAIN {}", crate::rows::key_by_lookup_sql()))
                .bind("abc")
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect();
        let plan = plan.join("\n");
        println!("{plan}");
        assert!(plan.contains("api_keys_lookup"), "{plan}");
        assert!(plan.contains("api_keys_prev_lookup"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(store.find_keys_by_lookup("abc").await.unwrap().is_empty());
        store.close().await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
    }
}
