//! Parameters and rows, independent of the driver: binding values, reading columns, and
//! the `Exec` interface each driver implements.

use super::*;

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
pub(super) fn corrupt(col: &str, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("column {col}: {e}"))
}

/// A NULL where the schema allows none.
pub(super) fn null_column(col: &str) -> StoreError {
    corrupt(col, "unexpected NULL")
}

/// Parses one of the model's string enums out of a column.
pub(super) fn parse_column<T>(col: &str, s: &str) -> StoreResult<T>
where
    T: FromStr,
    T::Err: Display,
{
    s.parse().map_err(|e| corrupt(col, e))
}

/// Fits a stored integer into the model's narrower type.
pub(super) fn narrow<T: TryFrom<i64>>(col: &str, v: i64) -> StoreResult<T> {
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
pub(super) fn unavailable(d: &dyn sqlx::error::DatabaseError) -> bool {
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
pub(super) fn conflict_target(d: &dyn sqlx::error::DatabaseError) -> String {
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
pub(super) async fn all<C, T>(
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
pub(super) async fn first<C, T>(
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
pub(super) async fn count<C: Exec + ?Sized>(
    c: &mut C,
    sql: &str,
    params: &[Param],
) -> StoreResult<i64> {
    first(c, sql, params, |r| r.int("n"))
        .await?
        .ok_or_else(|| StoreError::Database("a count returned no row".into()))
}
