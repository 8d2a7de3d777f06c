//! Opening the configured store from `database_url` (`docs/configuration.md`, `docs/operations.md#storage`).

use crate::bounded::{BoundedStore, Bounds};
use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// The databases a URL can name.
enum Kind {
    /// `sqlite:` URLs: a file or memory.
    Sqlite,
    /// `postgres:` and `postgresql:` URLs.
    Postgres,
}

/// Picks the backend from the URL's scheme. The error names the scheme only: the rest of
/// the URL may hold a password.
fn kind(database_url: &str) -> Result<Kind, StoreError> {
    let scheme = database_url
        .split_once(':')
        .map_or("", |(scheme, _)| scheme);
    match scheme {
        "sqlite" => Ok(Kind::Sqlite),
        "postgres" | "postgresql" => Ok(Kind::Postgres),
        _ => Err(StoreError::Database(format!(
            "unsupported database URL scheme {scheme:?}: use sqlite://<file>, \
             sqlite::memory: or postgres://…"
        ))),
    }
}

/// Opens the store a URL names (`sqlite://path`, `sqlite:path`, `sqlite::memory:`,
/// `postgres://…` or `postgresql://…`) and brings its schema up to date, so a server can
/// start on an empty database with no separate step. Each call is bounded by two seconds;
/// [`open_with`] chooses the bound.
pub async fn open(database_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(database_url, Duration::from_secs(2)).await
}

/// Like [`open`], with every call bounded by `timeout` (the calls that may write many rows
/// by ten times that), so a database that stops answering costs a caller that long and a
/// [`StoreError::Unavailable`]; on PostgreSQL it is also each statement's timeout and the
/// longest wait for a connection.
pub async fn open_with(
    database_url: &str,
    timeout: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = match kind(database_url)? {
        Kind::Sqlite => Arc::new(SqliteStore::open(database_url).await?),
        Kind::Postgres => Arc::new(PgStore::open_with(database_url, timeout).await?),
    };
    Ok(Arc::new(BoundedStore::new(store, Bounds::new(timeout))))
}

/// Brings the schema of the database a URL names up to date and closes it again, for
/// `keywarden migrate`.
pub async fn migrate(database_url: &str) -> Result<(), StoreError> {
    match kind(database_url)? {
        Kind::Sqlite => SqliteStore::open(database_url).await?.close().await,
        Kind::Postgres => PgStore::open(database_url).await?.close().await,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_scheme_is_named_and_the_rest_is_not() {
        let err = open("mysql://root:hunter2@db/kw").await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"mysql\""), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(open("keywarden.db").await.is_err());
    }

    #[tokio::test]
    async fn memory_urls_open_a_working_store() {
        let store = open("sqlite::memory:").await.unwrap();
        store.ping().await.unwrap();
        migrate("sqlite::memory:").await.unwrap();
    }
}
