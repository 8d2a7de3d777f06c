//! What the SQLite and PostgreSQL stores share: how each entity maps to table rows and
//! back, the statements themselves, and the one [`Store`] implementation written over them.
//!
//! Both schemas have the same tables and columns, and both drivers accept `$N`
//! placeholders, so every statement below runs unchanged on either database. A backend
//! only supplies its pools, the statement that opens a write transaction and, where it
//! needs one, a per-account lock (see [`Backend`]). Keeping a single implementation is
//! what makes "same behaviour, same tests" (`docs/operations.md#storage`) true by construction.

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

// ---------------------------------------------------------------------------------------
// Parameters and rows, independent of the driver.
// ---------------------------------------------------------------------------------------

/// One bind parameter. Every column is text, an integer or a boolean, so three cases cover
/// the whole schema and the shared code never needs to know which driver binds them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Param {
    /// A text value or NULL.
    Text(Option<String>),
    /// A 64-bit integer or NULL.
    Int(Option<i64>),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_owned()))
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Param::Text(v.map(str::to_owned))
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl From<bool> for Param {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}

/// Builds an array of [`Param`]s from values of mixed types.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        [$($crate::rows::Param::from($value)),*]
    };
}

/// Reads columns of a result row by name; implemented for each driver's row type.
pub(crate) trait RowGet {
    /// A text column that may be NULL.
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    /// An integer column that may be NULL.
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    /// A boolean column.
    fn flag(&self, col: &str) -> StoreResult<bool>;

    /// A text column that must not be NULL.
    fn text(&self, col: &str) -> StoreResult<String> {
        self.opt_text(col)?.ok_or_else(|| null_column(col))
    }

    /// An integer column that must not be NULL.
    fn int(&self, col: &str) -> StoreResult<i64> {
        self.opt_int(col)?.ok_or_else(|| null_column(col))
    }

    /// A text column holding one of the model's string enums.
    fn parse<T>(&self, col: &str) -> StoreResult<T>
    where
        T: FromStr,
        T::Err: Display,
        Self: Sized,
    {
        parse_column(col, &self.text(col)?)
    }

    /// A text column holding JSON.
    fn json<T: DeserializeOwned>(&self, col: &str) -> StoreResult<T>
    where
        Self: Sized,
    {
        serde_json::from_str(&self.text(col)?).map_err(|e| corrupt(col, e))
    }

    /// An integer column that must fit the narrower type `T`.
    fn narrow<T: TryFrom<i64>>(&self, col: &str) -> StoreResult<T>
    where
        Self: Sized,
    {
        narrow(col, self.int(col)?)
    }
}

/// A stored value that does not decode, naming its column.
fn corrupt(col: &str, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("column {col}: {e}"))
}

/// A NULL where the schema allows none.
fn null_column(col: &str) -> StoreError {
    corrupt(col, "unexpected NULL")
}

/// Parses one of the model's string enums out of a column.
fn parse_column<T>(col: &str, s: &str) -> StoreResult<T>
where
    T: FromStr,
    T::Err: Display,
{
    s.parse().map_err(|e| corrupt(col, e))
}

/// Fits a stored integer into the model's narrower type.
fn narrow<T: TryFrom<i64>>(col: &str, v: i64) -> StoreResult<T> {
    T::try_from(v).map_err(|_| corrupt(col, format!("{v} is out of range")))
}

/// Runs statements on one connection (inside a transaction or not).
#[async_trait]
pub(crate) trait Exec: Send {
    /// The driver's row type.
    type Row: RowGet + Send;
    /// How the driver's multi-row statements write their placeholders.
    const PLACEHOLDERS: Placeholders;
    /// Runs a statement and returns how many rows it changed.
    async fn run(&mut self, sql: &str, params: &[Param]) -> StoreResult<u64>;
    /// Runs a query and returns every row.
    async fn rows(&mut self, sql: &str, params: &[Param]) -> StoreResult<Vec<Self::Row>>;
}

/// A statement with its parameters bound, for any driver that can bind the three kinds.
pub(crate) fn query<'q, DB>(
    sql: &'q str,
    params: &'q [Param],
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    params.iter().fold(sqlx::query::<DB>(sql), |q, p| match p {
        Param::Text(v) => q.bind(v.as_deref()),
        Param::Int(v) => q.bind(*v),
        Param::Bool(v) => q.bind(*v),
    })
}

/// How a multi-row `VALUES` list writes its placeholders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placeholders {
    /// `$1, $2, …` (PostgreSQL).
    Numbered,
    /// `?, ?, …`, numbered by position (SQLite). SQLite keeps named and numbered
    /// placeholders in a list that sqlx searches once per parameter when it binds, so a
    /// statement of n `$N` placeholders costs n² steps to bind; anonymous ones cost none.
    Anonymous,
}

/// Implements [`Exec`] and [`RowGet`] for one sqlx driver. The bodies are identical for
/// every driver; only the concrete types differ, and sqlx's executor traits are far
/// simpler to satisfy on concrete types than generically.
macro_rules! sqlx_driver {
    ($db:ty, $conn:ty, $row:ty, $placeholders:expr) => {
        #[async_trait::async_trait]
        impl $crate::rows::Exec for $conn {
            type Row = $row;
            const PLACEHOLDERS: $crate::rows::Placeholders = $placeholders;

            async fn run(
                &mut self,
                sql: &str,
                params: &[$crate::rows::Param],
            ) -> $crate::StoreResult<u64> {
                let done = $crate::rows::query::<$db>(sql, params)
                    .execute(&mut *self)
                    .await
                    .map_err($crate::rows::db_error)?;
                Ok(done.rows_affected())
            }

            async fn rows(
                &mut self,
                sql: &str,
                params: &[$crate::rows::Param],
            ) -> $crate::StoreResult<Vec<$row>> {
                $crate::rows::query::<$db>(sql, params)
                    .fetch_all(&mut *self)
                    .await
                    .map_err($crate::rows::db_error)
            }
        }

        impl $crate::rows::RowGet for $row {
            fn opt_text(&self, col: &str) -> $crate::StoreResult<Option<String>> {
                sqlx::Row::try_get(self, col).map_err($crate::rows::db_error)
            }

            fn opt_int(&self, col: &str) -> $crate::StoreResult<Option<i64>> {
                sqlx::Row::try_get(self, col).map_err($crate::rows::db_error)
            }

            fn flag(&self, col: &str) -> $crate::StoreResult<bool> {
                sqlx::Row::try_get(self, col).map_err($crate::rows::db_error)
            }
        }
    };
}
pub(crate) use sqlx_driver;

/// Translates a driver error: uniqueness violations become `Conflict`, references to a
/// missing parent (a key for an unknown account) become `NotFound`, undecodable values
/// become `Corrupt`. Bound values never appear in sqlx's messages, so no secret can leak
/// through them.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(format!("{} already exists", conflict_target(d.as_ref())))
        }
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
        sqlx::Error::Database(d) if unavailable(d.as_ref()) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::Decode(_) => StoreError::Corrupt(e.to_string()),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

/// Whether a database's error says it cannot serve now rather than that the statement is
/// wrong: on PostgreSQL a lost or refused connection (class 08), a cancelled statement
/// (the statement timeout), a server shutting down or out of connections, a lock not
/// available; on SQLite a busy or locked database, an I/O error, a full disk, a file that
/// cannot be opened.
fn unavailable(d: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(code, "57014" | "57P01" | "57P02" | "57P03" | "55P03");
    }
    if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Extended result codes keep the primary code in their low byte.
        let primary = d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        // BUSY, LOCKED, IOERR, FULL, CANTOPEN.
        return matches!(primary, Some(5 | 6 | 10 | 13 | 14));
    }
    false
}

/// Names what a uniqueness violation was about as `table.column`: SQLite says it in the
/// message, PostgreSQL names the constraint (`accounts_pkey`, or one of our indexes).
fn conflict_target(d: &dyn sqlx::error::DatabaseError) -> String {
    if let Some((_, cols)) = d.message().split_once("constraint failed: ") {
        return cols.to_owned();
    }
    match (d.table(), d.constraint()) {
        (Some(table), Some(c)) if c.ends_with("_pkey") => format!("{table}.id"),
        (Some(table), Some(c)) => match c.strip_prefix(table).and_then(|s| s.strip_prefix('_')) {
            Some(col) => format!("{table}.{col}"),
            None => c.to_owned(),
        },
        (_, Some(c)) => c.to_owned(),
        _ => "a unique value".to_owned(),
    }
}

/// Every row a query returns, decoded.
async fn all<C, T>(
    c: &mut C,
    sql: &str,
    params: &[Param],
    decode: fn(&C::Row) -> StoreResult<T>,
) -> StoreResult<Vec<T>>
where
    C: Exec + ?Sized,
{
    c.rows(sql, params).await?.iter().map(decode).collect()
}

/// The first row a query returns, decoded.
async fn first<C, T>(
    c: &mut C,
    sql: &str,
    params: &[Param],
    decode: fn(&C::Row) -> StoreResult<T>,
) -> StoreResult<Option<T>>
where
    C: Exec + ?Sized,
{
    c.rows(sql, params).await?.first().map(decode).transpose()
}

/// A query whose single row has a single integer column `n`.
async fn count<C: Exec + ?Sized>(c: &mut C, sql: &str, params: &[Param]) -> StoreResult<i64> {
    first(c, sql, params, |r| r.int("n"))
        .await?
        .ok_or_else(|| StoreError::Database("a count returned no row".into()))
}

// ---------------------------------------------------------------------------------------
// Tables: column lists and the statements generated from them.
// ---------------------------------------------------------------------------------------

/// A table's columns in the order its encoder produces values. INSERT, UPDATE and SELECT
/// statements are generated from this one list, so a column cannot be bound in the wrong
/// position.
struct Table {
    /// The table name.
    name: &'static str,
    /// Every column; the first is the primary key.
    columns: &'static [&'static str],
    /// Columns an update must leave as they are (besides the primary key).
    fixed: &'static [&'static str],
}

impl Table {
    /// `SELECT <every column> FROM <table>`, to be followed by a WHERE clause.
    fn select(&self) -> String {
        format!("SELECT {} FROM {}", self.columns.join(", "), self.name)
    }

    /// `INSERT` of one row, parameters in column order.
    fn insert(&self) -> String {
        let slots: Vec<String> = (1..=self.columns.len()).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.name,
            self.columns.join(", "),
            slots.join(", ")
        )
    }

    /// Whether an update sets this column.
    fn updatable(&self, col: &str) -> bool {
        col != self.columns[0] && !self.fixed.contains(&col)
    }

    /// `UPDATE` of the mutable columns by primary key; takes [`Table::update_params`].
    fn update(&self) -> String {
        let sets: Vec<String> = self
            .columns
            .iter()
            .filter(|c| self.updatable(c))
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 2))
            .collect();
        format!(
            "UPDATE {} SET {} WHERE {} = $1",
            self.name,
            sets.join(", "),
            self.columns[0]
        )
    }

    /// Narrows a full row of values to the primary key followed by the mutable columns.
    fn update_params(&self, values: Vec<Param>) -> Vec<Param> {
        debug_assert_eq!(values.len(), self.columns.len());
        values
            .into_iter()
            .zip(self.columns)
            .enumerate()
            .filter(|(i, (_, c))| *i == 0 || self.updatable(c))
            .map(|(_, (v, _))| v)
            .collect()
    }
}

const ACCOUNTS: Table = Table {
    name: "accounts",
    columns: &["id", "name", "plan", "status", "metadata", "created_at"],
    fixed: &["created_at"],
};

const KEYS: Table = Table {
    name: "api_keys",
    columns: &[
        "id",
        "account_id",
        "mode",
        "key_type",
        "name",
        "description",
        "owner",
        "role",
        "scopes",
        "expires_at",
        "ip_allowlist",
        "rate_requests",
        "rate_per_seconds",
        "enabled",
        "metadata",
        "app_id",
        "grant_id",
        "prefix",
        "start",
        "key_hash",
        "scheme",
        "lookup",
        "hash",
        "prev_scheme",
        "prev_lookup",
        "prev_hash",
        "prev_key_hash",
        "prev_valid_until",
        "created_at",
        "last_used_at",
        "last_used_ip",
        "revoked_at",
        "revoked_reason",
        "recoverable",
    ],
    fixed: &["account_id", "mode", "key_type", "created_at"],
};

const APPS: Table = Table {
    name: "applications",
    columns: &[
        "id",
        "name",
        "description",
        "url",
        "scopes",
        "production_scheme",
        "production_lookup",
        "production_hash",
        "sandbox_scheme",
        "sandbox_lookup",
        "sandbox_hash",
        "created_at",
    ],
    fixed: &["created_at"],
};

const GRANTS: Table = Table {
    name: "grants",
    columns: &["id", "account_id", "app_id", "scopes", "created_at"],
    fixed: &["account_id", "app_id", "created_at"],
};

const EVENTS: Table = Table {
    name: "audit_events",
    columns: &[
        "id",
        "account_id",
        "mode",
        "kind",
        "actor",
        "ip",
        "at",
        "data",
    ],
    fixed: &[],
};

const WEBHOOKS: Table = Table {
    name: "webhook_endpoints",
    columns: &[
        "id",
        "url",
        "events",
        "account_id",
        "mode",
        "description",
        "enabled",
        "secret",
        "prev_secret",
        "prev_secret_until",
        "failing_since",
        "disabled_reason",
        "created_at",
        "updated_at",
    ],
    fixed: &["account_id", "mode", "created_at"],
};

const DELIVERIES: Table = Table {
    name: "webhook_deliveries",
    columns: &[
        "id",
        "endpoint_id",
        "message_id",
        "kind",
        "status",
        "attempts",
        "next_attempt_at",
        "locked_until",
        "last_status",
        "last_duration_ms",
        "last_response",
        "last_error",
        "created_at",
        "delivered_at",
    ],
    fixed: &[],
};

/// Activity's `id` is assigned by the database, so it is not among the inserted columns.
const ACTIVITY: Table = Table {
    name: "activity",
    columns: &["key_id", "at", "ip", "method", "path", "status", "code"],
    fixed: &[],
};

/// Every statement, built once. They are plain strings so sqlx caches each as a prepared
/// statement per connection.
struct Statements {
    account_insert: String,
    account_get: String,
    account_list: String,
    account_update: String,
    key_insert: String,
    key_get: String,
    key_by_hash: String,
    key_by_lookup: String,
    key_by_retired: String,
    key_list: String,
    key_list_mode: String,
    key_by_grant: String,
    key_update: String,
    app_insert: String,
    app_get: String,
    app_list: String,
    app_update: String,
    grant_insert: String,
    grant_get: String,
    grant_list: String,
    event_select: String,
    activity_list: String,
    webhook_insert: String,
    webhook_get: String,
    webhook_update: String,
    webhooks_enabled: String,
    webhook_select: String,
    delivery_get: String,
    delivery_list: String,
    delivery_list_before: String,
    key_deadlines: String,
}

static SQL: LazyLock<Statements> = LazyLock::new(|| Statements {
    account_insert: ACCOUNTS.insert(),
    account_get: format!("{} WHERE id = $1", ACCOUNTS.select()),
    account_list: format!("{} WHERE id > $1 ORDER BY id LIMIT $2", ACCOUNTS.select()),
    account_update: ACCOUNTS.update(),
    key_insert: KEYS.insert(),
    key_get: format!("{} WHERE id = $1", KEYS.select()),
    key_by_hash: format!("{} WHERE key_hash = $1", KEYS.select()),
    // Both columns are indexed; SQLite answers with a MULTI-INDEX OR and PostgreSQL with a
    // BitmapOr of the two indexes (the suite checks both plans). A row matching on both
    // columns is returned once, which a UNION ALL would not guarantee.
    key_by_lookup: format!(
        "{} WHERE lookup = $1 OR prev_lookup = $1 ORDER BY id",
        KEYS.select()
    ),
    key_by_retired: format!(
        "SELECT {}, r.scheme AS retired_scheme, r.lookup AS retired_lookup, \
         r.hash AS retired_hash FROM retired_secrets r JOIN api_keys k ON k.id = r.key_id \
         WHERE r.lookup = $1 ORDER BY k.id",
        KEYS.columns
            .iter()
            .map(|c| format!("k.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ),
    key_list: format!(
        "{} WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        KEYS.select()
    ),
    key_list_mode: format!(
        "{} WHERE account_id = $1 AND mode = $4 AND id > $2 ORDER BY id LIMIT $3",
        KEYS.select()
    ),
    key_by_grant: format!("{} WHERE grant_id = $1 ORDER BY id", KEYS.select()),
    key_update: KEYS.update(),
    app_insert: APPS.insert(),
    app_get: format!("{} WHERE id = $1", APPS.select()),
    app_list: format!("{} WHERE id > $1 ORDER BY id LIMIT $2", APPS.select()),
    app_update: APPS.update(),
    grant_insert: GRANTS.insert(),
    grant_get: format!("{} WHERE id = $1", GRANTS.select()),
    grant_list: format!("{} WHERE account_id = $1 ORDER BY id", GRANTS.select()),
    event_select: EVENTS.select(),
    activity_list: format!(
        "{} WHERE key_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        ACTIVITY.select()
    ),
    webhook_insert: WEBHOOKS.insert(),
    webhook_get: format!("{} WHERE id = $1", WEBHOOKS.select()),
    webhook_update: WEBHOOKS.update(),
    webhooks_enabled: format!("{} WHERE enabled = $1 ORDER BY id", WEBHOOKS.select()),
    webhook_select: WEBHOOKS.select(),
    delivery_get: format!("{} WHERE id = $1", DELIVERIES.select()),
    delivery_list: format!(
        "{} WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2",
        DELIVERIES.select()
    ),
    delivery_list_before: format!(
        "{} WHERE endpoint_id = $1 AND id < $3 ORDER BY id DESC LIMIT $2",
        DELIVERIES.select()
    ),
    key_deadlines: format!(
        "{} WHERE revoked_at IS NULL AND ((expires_at >= $1 AND expires_at <= $2) \
         OR (prev_valid_until >= $1 AND prev_valid_until <= $2)) ORDER BY id LIMIT $3",
        KEYS.select()
    ),
});

/// The statement behind `find_keys_by_lookup`, for the plan checks in the tests.
#[cfg(test)]
pub(crate) fn key_by_lookup_sql() -> &'static str {
    &SQL.key_by_lookup
}

/// Keeps the stored previous secret of key `$1` as retired when the update replaces it:
/// the new previous secret (`$2`, empty for none) and the new current one (`$3`) differ.
const RETIRE_PREVIOUS: &str = "INSERT INTO retired_secrets (key_id, scheme, lookup, hash) \
     SELECT id, prev_scheme, prev_lookup, prev_hash FROM api_keys \
     WHERE id = $1 AND prev_lookup IS NOT NULL AND prev_lookup <> $2 AND prev_lookup <> $3";
const ACCOUNT_EXISTS: &str = "SELECT COUNT(*) AS n FROM accounts WHERE id = $1";
const COUNT_ACTIVE_KEYS: &str =
    "SELECT COUNT(*) AS n FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL";
const COUNT_ACCOUNTS: &str = "SELECT COUNT(*) AS n FROM accounts";
const COUNT_KEYS_OF_MODE: &str =
    "SELECT COUNT(*) AS n FROM api_keys WHERE mode = $1 AND revoked_at IS NULL";
const GRANT_EXISTS: &str = "SELECT COUNT(*) AS n FROM grants WHERE id = $1";
const REVOKE_GRANT_KEYS: &str = "UPDATE api_keys SET revoked_at = $2, revoked_reason = $3 \
     WHERE grant_id = $1 AND revoked_at IS NULL";
const DELETE_GRANT: &str = "DELETE FROM grants WHERE id = $1";
const GET_USAGE: &str = "SELECT used AS n FROM usage \
     WHERE account_id = $1 AND mode = $2 AND unit = $3 AND period_start = $4";

/// What erasing an account deletes, children first so foreign keys hold at every step.
const ERASE_ACTIVITY: &str =
    "DELETE FROM activity WHERE key_id IN (SELECT id FROM api_keys WHERE account_id = $1)";
const ERASE_EVENTS: &str = "DELETE FROM audit_events WHERE account_id = $1";
const ERASE_USAGE: &str = "DELETE FROM usage WHERE account_id = $1";
const ERASE_KEYS: &str = "DELETE FROM api_keys WHERE account_id = $1";
const ERASE_GRANTS: &str = "DELETE FROM grants WHERE account_id = $1";
const ERASE_ACCOUNT: &str = "DELETE FROM accounts WHERE id = $1";
const ERASE_SESSIONS: &str = "DELETE FROM web_sessions WHERE account_id = $1";
const ERASE_DECISIONS: &str = "DELETE FROM decision_counts WHERE account_id = $1";
/// An account's decision counts, once the account is gone (erased while they waited).
const ORPHAN_DECISIONS: &str = "DELETE FROM decision_counts WHERE account_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $1)";
const PRUNE_DECISIONS: &str = "DELETE FROM decision_counts WHERE granularity = $1 AND bucket < $2";
const SESSION_COLUMNS: &str =
    "id_hash, kind, account_id, mode, role, return_url, created_at, expires_at";
const SESSION_EXPIRED: &str = "DELETE FROM web_sessions WHERE expires_at <= $1";
const SESSION_GET: &str = "SELECT id_hash, kind, account_id, mode, role, return_url, \
     created_at, expires_at FROM web_sessions WHERE id_hash = $1 AND expires_at > $2";
const SESSION_TAKE: &str = "DELETE FROM web_sessions WHERE id_hash = $1 AND expires_at > $2 \
     RETURNING id_hash, kind, account_id, mode, role, return_url, created_at, expires_at";
/// Messages about the account (their deliveries go with them) and its once-only markers;
/// its own endpoints go with the account.
const ERASE_WEBHOOK_MESSAGES: &str = "DELETE FROM webhook_messages WHERE account_id = $1";
const ERASE_FIRED: &str = "DELETE FROM fired_events WHERE account_id = $1";
const ERASE_WEBHOOKS: &str = "DELETE FROM webhook_endpoints WHERE account_id = $1";

/// Deletes a key's activity older than its `$2 + 1`-th newest row. When the key has no
/// more rows than that, the subquery is empty, the comparison is NULL and nothing goes.
const TRIM_ACTIVITY: &str = "DELETE FROM activity WHERE key_id = $1 AND (at, id) < \
     (SELECT at, id FROM activity WHERE key_id = $1 ORDER BY at DESC, id DESC LIMIT 1 OFFSET $2)";

/// A key's activity, once the key is gone (erased while its rows waited in the writer).
const ORPHAN_ACTIVITY: &str = "DELETE FROM activity WHERE key_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)";
/// An account's usage, once the account is gone.
const ORPHAN_USAGE: &str = "DELETE FROM usage WHERE account_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $1)";
/// A request-path event of an account that is gone.
const ORPHAN_EVENT: &str = "DELETE FROM audit_events WHERE id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $2)";

/// The message of a request-path event of an account that is gone.
const ORPHAN_MESSAGE: &str = "DELETE FROM webhook_messages WHERE id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $2)";

const MESSAGE_INSERT: &str = "INSERT INTO webhook_messages (id, kind, account_id, payload, \
     created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING";
const MESSAGE_PAYLOAD: &str = "SELECT payload FROM webhook_messages WHERE id = $1";
const DELIVERY_INSERT: &str = "INSERT INTO webhook_deliveries (id, endpoint_id, message_id, \
     kind, status, attempts, next_attempt_at, created_at) \
     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) ON CONFLICT DO NOTHING";
const DELIVERY_FINISH: &str = "UPDATE webhook_deliveries SET status = $2, \
     attempts = attempts + 1, next_attempt_at = $3, locked_until = NULL, last_status = $4, \
     last_duration_ms = $5, last_response = $6, last_error = $7, delivered_at = $8 \
     WHERE id = $1";
const ATTEMPT_INSERT: &str = "INSERT INTO webhook_attempts (delivery_id, at, status, \
     duration_ms, response, error) VALUES ($1, $2, $3, $4, $5, $6)";
const ATTEMPT_LIST: &str = "SELECT at, status, duration_ms, response, error \
     FROM webhook_attempts WHERE delivery_id = $1 ORDER BY at, duration_ms";
const ENDPOINT_SUCCEEDED: &str = "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1";
const ENDPOINT_FAILED: &str = "UPDATE webhook_endpoints \
     SET failing_since = COALESCE(failing_since, $2) WHERE id = $1";
const ENDPOINT_DISABLE: &str = "UPDATE webhook_endpoints SET enabled = $4, \
     disabled_reason = $2, updated_at = $3 WHERE id = $1";
const ENDPOINT_EXISTS: &str = "SELECT COUNT(*) AS n FROM webhook_endpoints WHERE id = $1";
const DELETE_WEBHOOK: &str = "DELETE FROM webhook_endpoints WHERE id = $1";
const REDELIVER: &str = "UPDATE webhook_deliveries SET status = 'pending', \
     next_attempt_at = $3, locked_until = NULL WHERE id = $2 AND endpoint_id = $1";
const BACKLOG: &str = "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'pending'";
const FIRE_MARKER: &str = "INSERT INTO fired_events (marker, account_id, at) \
     VALUES ($1, $2, $3) ON CONFLICT (marker) DO NOTHING";
const USAGE_SINCE: &str = "SELECT u.account_id AS account_id, a.plan AS plan, u.mode AS mode, \
     u.unit AS unit, u.period_start AS period_start, u.used AS used \
     FROM usage u JOIN accounts a ON a.id = u.account_id WHERE u.period_start >= $1";

/// The reason `delete_grant` records on the keys it revokes.
const GRANT_DELETED: &str = "grant deleted";

// ---------------------------------------------------------------------------------------
// Entities to parameters and back.
// ---------------------------------------------------------------------------------------

fn to_json<T: Serialize + ?Sized>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("unserializable value: {e}")))
}

fn secret_params(s: &StoredSecret) -> [Param; 3] {
    [
        s.scheme.as_str().into(),
        s.lookup.as_str().into(),
        s.hash.as_str().into(),
    ]
}

/// A key found by a secret it rotated out for good: that secret as its current one, no
/// previous one, revoked at its revocation or else at its creation.
fn decode_retired<R: RowGet>(r: &R) -> StoreResult<KeyRecord> {
    let mut key = decode_key(r)?;
    key.secret = decode_secret(r, "retired_")?;
    key.previous = None;
    key.revoked_at = Some(key.revoked_at.unwrap_or(key.created_at));
    Ok(key)
}

fn decode_secret<R: RowGet>(r: &R, prefix: &str) -> StoreResult<StoredSecret> {
    Ok(StoredSecret {
        scheme: r.parse(&format!("{prefix}scheme"))?,
        lookup: r.text(&format!("{prefix}lookup"))?,
        hash: r.text(&format!("{prefix}hash"))?,
    })
}

fn account_params(a: &Account) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        a.id.as_str(),
        a.name.as_str(),
        a.plan.as_str(),
        a.status.as_str(),
        to_json(&a.metadata)?,
        a.created_at,
    ]))
}

fn decode_account<R: RowGet>(r: &R) -> StoreResult<Account> {
    Ok(Account {
        id: r.text("id")?,
        name: r.text("name")?,
        plan: r.text("plan")?,
        status: r.parse("status")?,
        metadata: r.json("metadata")?,
        created_at: r.int("created_at")?,
    })
}

fn key_params(k: &KeyRecord) -> StoreResult<Vec<Param>> {
    let prev = k.previous.as_ref();
    let mut p = Vec::from(params![
        k.id.as_str(),
        k.account_id.as_str(),
        k.mode.as_str(),
        k.key_type.as_str(),
        k.name.as_str(),
        k.description.as_str(),
        k.owner.as_str(),
        k.role.as_str(),
        to_json(&k.scopes)?,
        k.expires_at,
        to_json(&k.ip_allowlist)?,
        k.rate_limit.map(|r| i64::from(r.requests)),
        k.rate_limit.map(|r| i64::from(r.per_seconds)),
        k.enabled,
        to_json(&k.metadata)?,
        k.app_id.as_deref(),
        k.grant_id.as_deref(),
        k.prefix.as_str(),
        k.start.as_str(),
        k.key_hash.as_str(),
    ]);
    p.extend(secret_params(&k.secret));
    p.extend(params![
        prev.map(|p| p.secret.scheme.as_str()),
        prev.map(|p| p.secret.lookup.as_str()),
        prev.map(|p| p.secret.hash.as_str()),
        prev.map(|p| p.key_hash.as_str()),
        prev.map(|p| p.valid_until),
        k.created_at,
        k.last_used_at,
        k.last_used_ip.as_deref(),
        k.revoked_at,
        k.revoked_reason.as_deref(),
        k.recoverable.as_deref(),
    ]);
    Ok(p)
}

fn decode_key<R: RowGet>(r: &R) -> StoreResult<KeyRecord> {
    let rate_limit = match (r.opt_int("rate_requests")?, r.opt_int("rate_per_seconds")?) {
        (Some(requests), Some(per_seconds)) => Some(RateLimitSpec {
            requests: narrow("rate_requests", requests)?,
            per_seconds: narrow("rate_per_seconds", per_seconds)?,
        }),
        (None, None) => None,
        _ => {
            return Err(corrupt(
                "rate_per_seconds",
                "half of a rate limit is missing",
            ))
        }
    };
    let previous = match r.opt_text("prev_scheme")? {
        None => None,
        Some(_) => Some(PreviousSecret {
            secret: decode_secret(r, "prev_")?,
            key_hash: r.text("prev_key_hash")?,
            valid_until: r.int("prev_valid_until")?,
        }),
    };
    Ok(KeyRecord {
        id: r.text("id")?,
        account_id: r.text("account_id")?,
        mode: r.parse("mode")?,
        key_type: r.parse("key_type")?,
        name: r.text("name")?,
        description: r.text("description")?,
        owner: r.text("owner")?,
        role: r.parse("role")?,
        scopes: r.json("scopes")?,
        expires_at: r.opt_int("expires_at")?,
        ip_allowlist: r.json("ip_allowlist")?,
        rate_limit,
        enabled: r.flag("enabled")?,
        metadata: r.json("metadata")?,
        app_id: r.opt_text("app_id")?,
        grant_id: r.opt_text("grant_id")?,
        prefix: r.text("prefix")?,
        start: r.text("start")?,
        key_hash: r.text("key_hash")?,
        secret: decode_secret(r, "")?,
        previous,
        created_at: r.int("created_at")?,
        last_used_at: r.opt_int("last_used_at")?,
        last_used_ip: r.opt_text("last_used_ip")?,
        revoked_at: r.opt_int("revoked_at")?,
        revoked_reason: r.opt_text("revoked_reason")?,
        recoverable: r.opt_text("recoverable")?,
    })
}

fn app_params(a: &Application) -> StoreResult<Vec<Param>> {
    let mut p = Vec::from(params![
        a.id.as_str(),
        a.name.as_str(),
        a.description.as_str(),
        a.url.as_deref(),
        to_json(&a.scopes)?,
    ]);
    p.extend(secret_params(&a.production));
    p.extend(secret_params(&a.sandbox));
    p.push(a.created_at.into());
    Ok(p)
}

fn decode_app<R: RowGet>(r: &R) -> StoreResult<Application> {
    Ok(Application {
        id: r.text("id")?,
        name: r.text("name")?,
        description: r.text("description")?,
        url: r.opt_text("url")?,
        scopes: r.json("scopes")?,
        production: decode_secret(r, "production_")?,
        sandbox: decode_secret(r, "sandbox_")?,
        created_at: r.int("created_at")?,
    })
}

fn grant_params(g: &Grant) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        g.id.as_str(),
        g.account_id.as_str(),
        g.app_id.as_str(),
        to_json(&g.scopes)?,
        g.created_at,
    ]))
}

fn decode_grant<R: RowGet>(r: &R) -> StoreResult<Grant> {
    Ok(Grant {
        id: r.text("id")?,
        account_id: r.text("account_id")?,
        app_id: r.text("app_id")?,
        scopes: r.json("scopes")?,
        created_at: r.int("created_at")?,
    })
}

fn event_params(e: &AuditEvent) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        e.id.as_str(),
        e.account_id.as_deref(),
        e.mode.map(Mode::as_str),
        e.kind.as_str(),
        e.actor.as_str(),
        e.ip.as_deref(),
        e.at,
        to_json(&e.data)?,
    ]))
}

fn decode_event<R: RowGet>(r: &R) -> StoreResult<AuditEvent> {
    Ok(AuditEvent {
        id: r.text("id")?,
        account_id: r.opt_text("account_id")?,
        mode: r
            .opt_text("mode")?
            .map(|m| parse_column("mode", &m))
            .transpose()?,
        kind: r.text("kind")?,
        actor: r.text("actor")?,
        ip: r.opt_text("ip")?,
        at: r.int("at")?,
        data: r.json("data")?,
    })
}

fn webhook_params(w: &WebhookEndpoint) -> StoreResult<Vec<Param>> {
    let events = match &w.events {
        Some(e) => Some(to_json(e)?),
        None => None,
    };
    Ok(Vec::from(params![
        w.id.as_str(),
        w.url.as_str(),
        events,
        w.account_id.as_deref(),
        w.mode.map(Mode::as_str),
        w.description.as_str(),
        w.enabled,
        w.secret.as_str(),
        w.prev_secret.as_deref(),
        w.prev_secret_until,
        w.failing_since,
        w.disabled_reason.as_deref(),
        w.created_at,
        w.updated_at,
    ]))
}

fn decode_webhook<R: RowGet>(r: &R) -> StoreResult<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: r.text("id")?,
        url: r.text("url")?,
        events: match r.opt_text("events")? {
            Some(e) => Some(serde_json::from_str(&e).map_err(|e| corrupt("events", e))?),
            None => None,
        },
        account_id: r.opt_text("account_id")?,
        mode: r
            .opt_text("mode")?
            .map(|m| parse_column("mode", &m))
            .transpose()?,
        description: r.text("description")?,
        enabled: r.flag("enabled")?,
        secret: r.text("secret")?,
        prev_secret: r.opt_text("prev_secret")?,
        prev_secret_until: r.opt_int("prev_secret_until")?,
        failing_since: r.opt_int("failing_since")?,
        disabled_reason: r.opt_text("disabled_reason")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

fn decode_delivery<R: RowGet>(r: &R) -> StoreResult<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: r.text("id")?,
        endpoint_id: r.text("endpoint_id")?,
        event_id: r.text("message_id")?,
        kind: r.text("kind")?,
        status: r.parse("status")?,
        attempts: r.narrow("attempts")?,
        next_attempt_at: r.opt_int("next_attempt_at")?,
        last_status: r
            .opt_int("last_status")?
            .map(|v| narrow("last_status", v))
            .transpose()?,
        last_duration_ms: r.opt_int("last_duration_ms")?,
        last_response: r.opt_text("last_response")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.int("created_at")?,
        delivered_at: r.opt_int("delivered_at")?,
    })
}

fn decode_attempt<R: RowGet>(r: &R) -> StoreResult<WebhookAttempt> {
    Ok(WebhookAttempt {
        at: r.int("at")?,
        status: r
            .opt_int("status")?
            .map(|v| narrow("status", v))
            .transpose()?,
        duration_ms: r.int("duration_ms")?,
        response: r.text("response")?,
        error: r.opt_text("error")?,
    })
}

fn decode_usage_row<R: RowGet>(r: &R) -> StoreResult<UsageRow> {
    Ok(UsageRow {
        account_id: r.text("account_id")?,
        plan: r.text("plan")?,
        mode: r.parse("mode")?,
        unit: r.text("unit")?,
        period_start: r.int("period_start")?,
        used: narrow("used", r.int("used")?)?,
    })
}

fn activity_params(a: &Activity) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        a.key_id.as_str(),
        a.at,
        a.ip.as_deref(),
        a.method.as_str(),
        a.path.as_str(),
        i64::from(a.status),
        a.code.as_str(),
    ]))
}

fn decode_activity<R: RowGet>(r: &R) -> StoreResult<Activity> {
    Ok(Activity {
        key_id: r.text("key_id")?,
        at: r.int("at")?,
        ip: r.opt_text("ip")?,
        method: r.text("method")?,
        path: r.text("path")?,
        status: r.narrow("status")?,
        code: r.text("code")?,
    })
}

/// A page's lower bound: the empty string sorts before every id.
fn session_params(w: &WebSession) -> Vec<Param> {
    params![
        w.id_hash.as_str(),
        w.kind.as_str(),
        w.account_id.as_deref(),
        w.mode.map(Mode::as_str),
        w.role.map(|r| r.as_str()),
        w.return_url.as_deref(),
        w.created_at,
        w.expires_at,
    ]
    .to_vec()
}

fn decode_session<R: RowGet>(r: &R) -> StoreResult<WebSession> {
    let opt = |col: &str| -> StoreResult<Option<String>> { r.opt_text(col) };
    Ok(WebSession {
        id_hash: r.text("id_hash")?,
        kind: r.parse("kind")?,
        account_id: opt("account_id")?,
        mode: opt("mode")?.map(|m| parse_column("mode", &m)).transpose()?,
        role: opt("role")?.map(|m| parse_column("role", &m)).transpose()?,
        return_url: opt("return_url")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
    })
}

fn after(page: &Page) -> &str {
    page.after_id.as_deref().unwrap_or("")
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

// ---------------------------------------------------------------------------------------
// Multi-row statements for the batched writes.
// ---------------------------------------------------------------------------------------

/// Most rows written by one multi-row statement.
const MAX_ROWS_PER_STATEMENT: usize = 256;

/// Splits `n` rows into statement sizes that are powers of two (at most
/// [`MAX_ROWS_PER_STATEMENT`]), so a flush of any size reuses a handful of prepared
/// statements instead of preparing a new one for every distinct row count.
fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= MAX_ROWS_PER_STATEMENT {
            MAX_ROWS_PER_STATEMENT
        } else {
            1 << n.ilog2()
        };
        n -= size;
        Some(size)
    })
}

/// `($1, $2, $3), ($4, $5, $6)` (or `(?, ?, ?), (?, ?, ?)`) for `rows` rows of `width`
/// values. A statement built with it has no other placeholder.
fn values_list(rows: usize, width: usize, style: Placeholders) -> String {
    let mut out = String::new();
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            let sep = if c == 0 { "" } else { ", " };
            match style {
                Placeholders::Numbered => {
                    let _ = write!(out, "{sep}${}", r * width + c + 1);
                }
                Placeholders::Anonymous => {
                    out.push_str(sep);
                    out.push('?');
                }
            }
        }
        out.push(')');
    }
    out
}

/// Runs `make(values_list)` once per chunk of `rows`, each row being `width` parameters.
async fn run_chunked<C: Exec + ?Sized>(
    c: &mut C,
    width: usize,
    rows: Vec<Vec<Param>>,
    make: impl Fn(&str) -> String + Send + Sync,
) -> StoreResult<()> {
    let mut rows = rows.into_iter();
    for size in chunk_sizes(rows.len()) {
        let params: Vec<Param> = rows.by_ref().take(size).flatten().collect();
        debug_assert_eq!(params.len(), size * width);
        c.run(&make(&values_list(size, width, C::PLACEHOLDERS)), &params)
            .await?;
    }
    Ok(())
}

/// Records key uses; the newest use per key wins, and an older one never overwrites a
/// newer one already stored. Keys are written in id order so concurrent flushes from
/// several replicas lock rows in the same order.
async fn write_touches<C: Exec + ?Sized>(c: &mut C, touches: &[KeyTouch]) -> StoreResult<()> {
    let mut newest: BTreeMap<&str, &KeyTouch> = BTreeMap::new();
    for t in touches {
        let slot = newest.entry(t.key_id.as_str()).or_insert(t);
        if t.at >= slot.at {
            *slot = t;
        }
    }
    let rows = newest
        .values()
        .map(|t| Vec::from(params![t.key_id.as_str(), t.at, t.ip.as_deref()]))
        .collect();
    run_chunked(c, 3, rows, |values| {
        format!(
            "UPDATE api_keys SET last_used_at = v.column2, last_used_ip = v.column3 \
             FROM (VALUES {values}) AS v \
             WHERE api_keys.id = v.column1 \
             AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at <= v.column2)"
        )
    })
    .await
}

/// Appends activity rows, then trims every key they touched to its newest
/// `retain_per_key` rows. A retention of 0 means no trimming (it is what a batch built
/// with `..Default::default()` carries, and keeping nothing is never what a caller that
/// appends rows wants).
async fn write_activity<C: Exec + ?Sized>(
    c: &mut C,
    rows: &[Activity],
    retain_per_key: u32,
) -> StoreResult<()> {
    let values = rows
        .iter()
        .map(activity_params)
        .collect::<StoreResult<_>>()?;
    let head = format!(
        "INSERT INTO activity ({}) VALUES ",
        ACTIVITY.columns.join(", ")
    );
    run_chunked(c, ACTIVITY.columns.len(), values, |v| format!("{head}{v}")).await?;
    if retain_per_key > 0 {
        let keys: std::collections::BTreeSet<&str> =
            rows.iter().map(|a| a.key_id.as_str()).collect();
        for key in keys {
            c.run(TRIM_ACTIVITY, &params![key, limit(retain_per_key - 1)])
                .await?;
        }
    }
    Ok(())
}

/// Deletes what a batch wrote for keys or accounts erased while it waited in the writer, in
/// the batch's transaction, so an erasure leaves nothing behind however requests race it.
async fn drop_orphans<C: Exec + ?Sized>(c: &mut C, batch: &WriteBatch) -> StoreResult<()> {
    let keys: std::collections::BTreeSet<&str> =
        batch.activity.iter().map(|a| a.key_id.as_str()).collect();
    for key in keys {
        c.run(ORPHAN_ACTIVITY, &params![key]).await?;
    }
    let accounts: std::collections::BTreeSet<&str> =
        batch.usage.iter().map(|u| u.account_id.as_str()).collect();
    for account in accounts {
        c.run(ORPHAN_USAGE, &params![account]).await?;
    }
    for e in &batch.events {
        if let Some(account) = e.account_id.as_deref() {
            c.run(ORPHAN_EVENT, &params![e.id.as_str(), account])
                .await?;
            c.run(ORPHAN_MESSAGE, &params![e.id.as_str(), account])
                .await?;
        }
    }
    let accounts: std::collections::BTreeSet<&str> = batch
        .decisions
        .iter()
        .filter_map(|d| d.key.as_ref().map(|(_, a, _)| a.as_str()))
        .collect();
    for account in accounts {
        c.run(ORPHAN_DECISIONS, &params![account]).await?;
    }
    Ok(())
}

/// Adds decision counts: each count goes to its key's, its account's and the deployment's
/// rows (a decision of no known key to the deployment's only), in minute, hour and day
/// buckets. Summed first, so one statement never upserts a row twice.
async fn write_decisions<C: Exec + ?Sized>(c: &mut C, counts: &[DecisionCount]) -> StoreResult<()> {
    type Row<'a> = (&'static str, Millis, &'a str, &'a str, &'a str, &'a str);
    let mut sums: BTreeMap<Row<'_>, u64> = BTreeMap::new();
    for d in counts {
        let (key, account, mode) = match &d.key {
            Some((k, a, m)) => (k.as_str(), a.as_str(), m.as_str()),
            None => ("", "", ""),
        };
        for g in Granularity::ALL {
            let bucket = g.bucket(d.minute);
            // The deployment's row, then the account's and the key's when there is a key.
            let rows = [("", ""), (account, ""), (account, key)];
            let n = if account.is_empty() { 1 } else { 3 };
            for &(account, key) in &rows[..n] {
                let sum = sums
                    .entry((g.as_str(), bucket, account, key, mode, d.code.as_str()))
                    .or_insert(0);
                *sum = sum.saturating_add(d.count);
            }
        }
    }
    let rows = sums
        .into_iter()
        .map(|((g, bucket, account, key, mode, code), n)| {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            Vec::from(params![g, bucket, account, key, mode, code, n])
        })
        .collect();
    run_chunked(c, 7, rows, |values| {
        format!(
            "INSERT INTO decision_counts (granularity, bucket, account_id, key_id, mode, code, n) \
             VALUES {values} ON CONFLICT (granularity, account_id, key_id, bucket, mode, code) \
             DO UPDATE SET n = decision_counts.n + excluded.n"
        )
    })
    .await
}

/// The statement and parameters reading decision counts.
fn decisions_query(q: &DecisionQuery) -> (String, Vec<Param>) {
    let mut p: Vec<Param> = params![
        q.granularity.as_str(),
        q.account_id.as_deref().unwrap_or(""),
        q.key_id.as_deref().unwrap_or(""),
        q.from,
        q.to,
    ]
    .to_vec();
    let mut sql = String::from(
        "SELECT bucket, code, CAST(SUM(n) AS BIGINT) AS n FROM decision_counts WHERE granularity = $1 \
         AND account_id = $2 AND key_id = $3 AND bucket >= $4 AND bucket < $5",
    );
    if let Some(m) = q.mode {
        p.push(m.as_str().into());
        sql.push_str(" AND mode = $6");
    }
    sql.push_str(" GROUP BY bucket, code ORDER BY bucket, code");
    (sql, p)
}

/// Adds usage increments. Deltas for the same counter are summed first: one statement may
/// not upsert a row twice (PostgreSQL refuses), and sorted counters lock in a fixed order.
async fn write_usage<C: Exec + ?Sized>(c: &mut C, deltas: &[UsageDelta]) -> StoreResult<()> {
    let mut sums: BTreeMap<(&str, Mode, &str, Millis), u64> = BTreeMap::new();
    for d in deltas {
        let key = (
            d.account_id.as_str(),
            d.mode,
            d.unit.as_str(),
            d.period_start,
        );
        let sum = sums.entry(key).or_insert(0);
        *sum = sum.saturating_add(d.amount);
    }
    // A counter saturates at what it can hold rather than failing the batch: a failed batch
    // is retried, so an overflowing one would hold up every later write.
    let rows = sums
        .into_iter()
        .map(|((account, mode, unit, start), amount)| {
            let amount = i64::try_from(amount).unwrap_or(i64::MAX);
            Vec::from(params![account, mode.as_str(), unit, start, amount])
        })
        .collect();
    run_chunked(c, 5, rows, |values| {
        format!(
            "INSERT INTO usage (account_id, mode, unit, period_start, used) VALUES {values} \
             ON CONFLICT (account_id, mode, unit, period_start) \
             DO UPDATE SET used = CASE WHEN usage.used > {max} - excluded.used \
             THEN {max} ELSE usage.used + excluded.used END",
            max = i64::MAX
        )
    })
    .await
}

/// Appends audit events. An event whose id is already stored is skipped: ids are fresh
/// ULIDs, so a repeated id means the same event delivered again (the batched writer
/// retries a batch whose commit it could not confirm), and failing on it would wedge that
/// retry forever.
async fn write_events<C: Exec + ?Sized>(c: &mut C, events: &[AuditEvent]) -> StoreResult<()> {
    let values = events
        .iter()
        .map(event_params)
        .collect::<StoreResult<_>>()?;
    let head = format!(
        "INSERT INTO audit_events ({}) VALUES ",
        EVENTS.columns.join(", ")
    );
    run_chunked(c, EVENTS.columns.len(), values, |v| {
        format!("{head}{v} ON CONFLICT (id) DO NOTHING")
    })
    .await?;
    enqueue(c, events).await
}

/// The transactional outbox: for each event, its message and one delivery per enabled
/// endpoint it reaches, in the caller's transaction (`docs/webhooks.md`). A repeated event
/// (a batch retried) finds its rows already there and adds none.
async fn enqueue<C: Exec + ?Sized>(c: &mut C, events: &[AuditEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let endpoints = all(c, &SQL.webhooks_enabled, &params![true], decode_webhook).await?;
    if endpoints.is_empty() {
        return Ok(());
    }
    for e in events {
        let targets: Vec<&WebhookEndpoint> = endpoints
            .iter()
            .filter(|w| {
                keywarden_core::webhooks::reaches(
                    w.account_id.as_deref(),
                    w.mode,
                    e.account_id.as_deref(),
                    e.mode,
                ) && keywarden_core::webhooks::subscribed(w.events.as_deref(), &e.kind)
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        queue_message(c, e).await?;
        for w in targets {
            queue_delivery(c, &w.id, e).await?;
        }
    }
    Ok(())
}

async fn queue_message<C: Exec + ?Sized>(c: &mut C, e: &AuditEvent) -> StoreResult<()> {
    let p = params![
        e.id.as_str(),
        e.kind.as_str(),
        e.account_id.as_deref(),
        payload(e),
        e.at
    ];
    c.run(MESSAGE_INSERT, &p).await.map(drop)
}

async fn queue_delivery<C: Exec + ?Sized>(
    c: &mut C,
    endpoint_id: &str,
    e: &AuditEvent,
) -> StoreResult<String> {
    let id = keywarden_core::model::new_id("whd");
    let p = params![
        id.as_str(),
        endpoint_id,
        e.id.as_str(),
        e.kind.as_str(),
        e.at
    ];
    c.run(DELIVERY_INSERT, &p).await?;
    Ok(id)
}

/// The statement and parameters for an event listing, with only the clauses the filter
/// needs so each shape uses the best index.
fn events_query(f: &EventFilter) -> (String, Vec<Param>) {
    let mut sql = format!("{} WHERE 1 = 1", SQL.event_select);
    let mut params: Vec<Param> = Vec::new();
    // Adds a parameter and returns its placeholder.
    let mut bind = |value: Param| {
        params.push(value);
        format!("${}", params.len())
    };
    if let Some(account) = &f.account_id {
        let _ = write!(sql, " AND account_id = {}", bind(account.as_str().into()));
    }
    if let Some(mode) = f.mode {
        let p = bind(mode.as_str().into());
        if f.include_modeless {
            let _ = write!(sql, " AND (mode = {p} OR mode IS NULL)");
        } else {
            let _ = write!(sql, " AND mode = {p}");
        }
    }
    if let Some(kind) = &f.kind {
        match kind
            .strip_suffix('*')
            .filter(|family| family.ends_with('.'))
        {
            // `key.*` matches `key.created` but not `keys.x`: the family keeps its dot. A
            // prefix comparison (rather than LIKE) needs no escaping and is case-sensitive
            // on both databases.
            Some(family) => {
                let p = bind(family.into());
                let _ = write!(sql, " AND substr(kind, 1, length({p})) = {p}");
            }
            None => {
                let _ = write!(sql, " AND kind = {}", bind(kind.as_str().into()));
            }
        }
    }
    if let Some(since) = f.since {
        let _ = write!(sql, " AND at >= {}", bind(since.into()));
    }
    if let Some(before) = &f.before_id {
        let _ = write!(sql, " AND id < {}", bind(before.as_str().into()));
    }
    let _ = write!(
        sql,
        " ORDER BY id DESC LIMIT {}",
        bind(limit(f.limit).into())
    );
    (sql, params)
}

// ---------------------------------------------------------------------------------------
// The backend interface and the shared Store implementation.
// ---------------------------------------------------------------------------------------

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

    async fn census(&self) -> StoreResult<Census> {
        let mut c = read(self).await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Census {
            accounts: n(count(&mut *c, COUNT_ACCOUNTS, &[]).await?),
            live_keys: n(count(&mut *c, COUNT_KEYS_OF_MODE, &params!["live"]).await?),
            test_keys: n(count(&mut *c, COUNT_KEYS_OF_MODE, &params!["test"]).await?),
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
            "INSERT INTO web_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
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
        events: &[AuditEvent],
    ) -> StoreResult<()> {
        // The change first: the events reach the endpoint as it now is (enabled or not).
        let p = WEBHOOKS.update_params(webhook_params(endpoint)?);
        change_one(self, &SQL.webhook_update, &p, events).await
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
    ) -> StoreResult<Vec<DueDelivery>> {
        let claim = format!(
            "UPDATE webhook_deliveries SET locked_until = $2 WHERE id IN (\
             SELECT d.id FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
             AND (d.locked_until IS NULL OR d.locked_until <= $1) AND e.enabled = $4 \
             ORDER BY d.next_attempt_at, d.id LIMIT $3{}) RETURNING id",
            B::SKIP_LOCKED
        );
        let mut tx = write(self).await?;
        let p = params![now, lease_until, i64::from(limit), true];
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
        ];
        if tx.run(DELIVERY_FINISH, &p).await? == 0 {
            // The endpoint was deleted while the attempt was made.
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
        if let Some(reason) = &o.disable {
            let p = params![endpoint, reason.as_str(), a.at, false];
            tx.run(ENDPOINT_DISABLE, &p).await?;
        }
        write_events(&mut *tx, &o.events).await?;
        commit(tx).await
    }

    async fn redeliver(&self, endpoint_id: &str, delivery_id: &str, at: Millis) -> StoreResult<()> {
        found(write_one(self, REDELIVER, &params![endpoint_id, delivery_id, at]).await?)
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
        narrow("n", count(&mut *c, BACKLOG, &[]).await?)
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
        limit: u32,
    ) -> StoreResult<Vec<KeyRecord>> {
        let mut c = read(self).await?;
        let p = params![from, until, i64::from(limit)];
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
