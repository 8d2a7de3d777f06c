//! The embedded store: one SQLite file in WAL mode (`docs/operations.md#storage`).
//!
//! Writes go through a pool of exactly one connection, and every write transaction starts
//! with `BEGIN IMMEDIATE`. Writers in this process therefore queue in the pool instead of
//! racing for SQLite's lock, so they never see `SQLITE_BUSY`; a writer in another process
//! (the CLI next to a running server) is waited for by the busy timeout. Reads use a
//! separate pool: in WAL mode readers never block the writer nor wait for it.
//!
//! `synchronous=FULL` makes a commit durable once it returns, which is what lets the batched
//! writer promise that acknowledged usage is never lost.

use crate::rows::{sqlx_driver, Backend};
use crate::store::{StoreError, StoreResult};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

sqlx_driver!(
    Sqlite,
    SqliteConnection,
    sqlx::sqlite::SqliteRow,
    crate::rows::Placeholders::Anonymous
);

/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most read connections; WAL readers run in parallel, so a few help under load.
const MAX_READERS: usize = 8;

/// Keywarden's store on a SQLite file (or, for tests, an in-memory database).
pub struct SqliteStore {
    /// Serves reads; the same pool as `writer` for an in-memory database.
    reader: SqlitePool,
    /// Exactly one connection, so writers in this process queue instead of contending.
    writer: SqlitePool,
    /// The database file, for messages; `None` in memory.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Where a SQLite URL points: a file, or memory. Accepts `sqlite://path`, `sqlite:path`
/// and `sqlite::memory:` (and sqlx's `mode=memory` query parameter).
pub(crate) enum SqliteTarget {
    /// A database file.
    File(PathBuf),
    /// A private in-memory database that lives as long as the store.
    Memory,
}

impl SqliteTarget {
    /// Parses a `sqlite:` URL; `None` when the URL is not one.
    pub(crate) fn parse(url: &str) -> Option<StoreResult<Self>> {
        let rest = url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (database, query) = rest.split_once('?').unwrap_or((rest, ""));
        let in_memory = database.is_empty()
            || database == ":memory:"
            || query.split('&').any(|kv| kv == "mode=memory");
        if in_memory {
            return Some(Ok(SqliteTarget::Memory));
        }
        Some(
            SqliteConnectOptions::from_str(url)
                .map(|o| SqliteTarget::File(o.get_filename().to_path_buf()))
                .map_err(|e| StoreError::Database(format!("invalid SQLite URL: {e}"))),
        )
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database a `sqlite:` URL names, and brings its
    /// schema up to date.
    pub async fn open(database_url: &str) -> StoreResult<Self> {
        match SqliteTarget::parse(database_url) {
            Some(Ok(SqliteTarget::File(path))) => Self::open_file(&path).await,
            Some(Ok(SqliteTarget::Memory)) => Self::open_memory().await,
            Some(Err(e)) => Err(e),
            None => Err(StoreError::Database(
                "a SQLite URL starts with sqlite: (sqlite://path or sqlite::memory:)".into(),
            )),
        }
    }

    /// Opens (creating it if missing) the database file at `path`, and brings its schema
    /// up to date.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        let options = Self::options(SqliteConnectOptions::new().filename(path));
        let cannot = |e: sqlx::Error| {
            StoreError::Database(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        };
        create_private(path).map_err(|e| {
            StoreError::Database(format!(
                "cannot create SQLite database {}: {e}",
                path.display()
            ))
        })?;
        // The writer connects first: it switches the file to WAL, which is a property of the
        // file that every later connection then shares.
        let writer = Self::pool(1)
            .connect_with(options.clone())
            .await
            .map_err(cannot)?;
        run_migrations(&writer).await?;
        let readers = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(2, MAX_READERS);
        let reader = Self::pool(u32::try_from(readers).unwrap_or(2))
            .connect_with(options)
            .await
            .map_err(cannot)?;
        Ok(Self {
            reader,
            writer,
            path: Some(path.to_path_buf()),
        })
    }

    /// Opens a fresh in-memory database. It has a single connection shared by readers and
    /// the writer (each SQLite connection to `:memory:` would otherwise see its own empty
    /// database), kept open for the life of the store.
    pub async fn open_memory() -> StoreResult<Self> {
        let options = Self::options(
            SqliteConnectOptions::from_str("sqlite::memory:")
                .map_err(|e| StoreError::Database(format!("cannot open in-memory SQLite: {e}")))?,
        );
        let pool = Self::pool(1)
            .min_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database(format!("cannot open in-memory SQLite: {e}")))?;
        run_migrations(&pool).await?;
        Ok(Self {
            reader: pool.clone(),
            writer: pool,
            path: None,
        })
    }

    /// Closes every connection, checkpointing the WAL into the database file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    fn options(base: SqliteConnectOptions) -> SqliteConnectOptions {
        base.create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // A large page cache and memory-mapped reads keep index pages of a big key
            // table in memory, so a lookup costs the same with a million keys as with a
            // thousand.
            .pragma("cache_size", "-65536")
            .pragma("mmap_size", "1073741824")
    }

    /// Connections are kept for the life of the store: reopening costs more than an idle
    /// connection, and closing the last one of an in-memory database would drop it.
    fn pool(max: u32) -> SqlitePoolOptions {
        SqlitePoolOptions::new()
            .max_connections(max)
            .idle_timeout(None)
            .max_lifetime(None)
    }
}

/// Creates an empty database file readable and writable by its owner only (mode 0600,
/// whatever the umask), unless it exists. SQLite gives the WAL and shared-memory files it
/// creates beside a database the database file's mode, so they are private too; left to
/// itself, it would create all three 0644.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

async fn run_migrations(pool: &SqlitePool) -> StoreResult<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| StoreError::Database(format!("cannot migrate the SQLite schema: {e}")))
}

impl Backend for SqliteStore {
    type Db = Sqlite;
    type Conn = SqliteConnection;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    // `BEGIN IMMEDIATE` already serialises every writer on the whole database.
    const LOCK_ACCOUNT: Option<&'static str> = None;
    // One process serves a SQLite file: its own writes invalidate its own caches.
    const NOTIFY: Option<&'static str> = None;
    // `BEGIN IMMEDIATE` already keeps a claim's read and write together.
    const SKIP_LOCKED: &'static str = "";

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    fn target(url: &str) -> Option<PathBuf> {
        match SqliteTarget::parse(url)?.ok()? {
            SqliteTarget::File(p) => Some(p),
            SqliteTarget::Memory => None,
        }
    }

    #[test]
    fn urls_name_a_file_or_memory() {
        assert_eq!(target("sqlite://keywarden.db"), Some("keywarden.db".into()));
        assert_eq!(target("sqlite:keywarden.db"), Some("keywarden.db".into()));
        assert_eq!(
            target("sqlite:///var/lib/kw.db"),
            Some("/var/lib/kw.db".into())
        );
        assert_eq!(target("sqlite://kw.db?mode=rwc"), Some("kw.db".into()));
        assert_eq!(target("sqlite::memory:"), None);
        assert_eq!(target("sqlite://?mode=memory"), None);
        assert!(SqliteTarget::parse("postgres://x").is_none());
    }

    /// The database, its WAL and its shared-memory file hold every key's hash and the
    /// audit trail: only their owner may read them.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_its_wal_and_shm_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kw.db");
        let store = SqliteStore::open_file(&db).await.unwrap();
        sqlx::query("INSERT INTO accounts VALUES ('acc_1', 'a', 'default', 'active', '{}', 0)")
            .execute(&store.writer)
            .await
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("kw.db{suffix}"));
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
        }
        store.close().await;
    }

    /// The lookup query must be answered from the two lookup indexes, never by a scan.
    #[tokio::test]
    async fn lookup_uses_both_indexes() {
        let store = SqliteStore::open_memory().await.unwrap();
        let plan: Vec<String> = sqlx::query(&format!(
            "EXPLAIN QUERY PLAN {}",
            crate::rows::key_by_lookup_sql()
        ))
        .bind("abc")
        .fetch_all(&store.reader)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect();
        let plan = plan.join("\n");
        println!("{plan}");
        assert!(plan.contains("MULTI-INDEX OR"), "{plan}");
        assert!(
            plan.contains("USING INDEX api_keys_lookup (lookup=?)"),
            "{plan}"
        );
        assert!(
            plan.contains("USING INDEX api_keys_prev_lookup (prev_lookup=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN api_keys"), "{plan}");
    }
}
