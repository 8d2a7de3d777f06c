//! `lookup`: what a key-cache miss costs, and whether it grows with the number of keys.
//!
//! A miss is one `find_keys_by_lookup` call on a random existing lookup value. It is measured
//! with 1 000 keys and with 1 000 000 (100 000 in quick mode: `--quick` or
//! `KEYWARDEN_BENCH_QUICK=1`) in a SQLite file, and in a fresh PostgreSQL database per size
//! when `KEYWARDEN_TEST_DATABASE_URL` names a server. The lookup is one indexed query, so the
//! ratio between the two sizes should stay near 1 (a B-tree is a level or two deeper).
//! Cache hits are measured too, to set the miss against what the request path usually pays.
//!
//! Keys are bulk-loaded in SQL: the store creates one real key, and the database copies it
//! row by row with a fresh id, fingerprint and random lookup value, in one transaction.
//! Every figure is printed as a `BENCH <name> <value> <unit>` line for scripts.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keywarden_core::model::{
    new_id, Account, AccountStatus, HashScheme, KeyRecord, KeyType, Mode, Role, StoredSecret,
};
use keywarden_store::{open, CacheConfig, KeyCache, KeyResolver, Lookup, Store};
use sqlx::{Connection, Executor, PgConnection, Postgres, Row, Sqlite};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// How many existing lookup values the benchmark draws from at random.
const SAMPLE: i64 = 20_000;

/// Rows inserted per statement while bulk-loading.
const CHUNK: i64 = 100_000;

/// The value cached per lookup, as in the server: the matching records, shared.
type Keys = Arc<Vec<KeyRecord>>;

/// A database filled with `n` keys, and a random sample of their lookup values.
struct Loaded {
    store: Arc<dyn Store>,
    lookups: Vec<String>,
}

/// Which database a figure is for.
#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

fn quick() -> bool {
    std::env::var("KEYWARDEN_BENCH_QUICK").is_ok_and(|v| v == "1")
        || std::env::args().any(|a| a == "--quick")
}

/// `1k`, `100k`, `1m`: the size as it appears in figure names.
fn label(n: i64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// Creates the account and the one key every bulk-loaded key is copied from, through the
/// store itself, so the copies are exactly what the store writes and reads back.
async fn seed(store: &dyn Store) -> String {
    let account = Account {
        id: new_id("acc"),
        name: "Bench".into(),
        plan: "default".into(),
        status: AccountStatus::Active,
        metadata: serde_json::json!({}),
        created_at: 1,
    };
    store
        .create_account(&account, &[])
        .await
        .expect("create account");
    let key = KeyRecord {
        name: "bench".into(),
        role: Role::Developer,
        scopes: vec!["invoices:read".into(), "customers:read".into()],
        prefix: "kw_sk_live_".into(),
        start: "kw_sk_live_Ab3x".into(),
        key_hash: format!("sha256_{}", "0".repeat(64)),
        secret: StoredSecret {
            scheme: HashScheme::HmacSha256,
            lookup: "f".repeat(64),
            hash: String::new(),
        },
        ..KeyRecord::new(new_id("key"), account.id, Mode::Live, KeyType::Secret, 2)
    };
    store
        .insert_key(&key, &[])
        .await
        .expect("insert the template key");
    key.id
}

/// What differs between the databases when bulk-loading: every statement the loader runs.
/// Each statement binds its parameters in the same order on both.
struct Dialect {
    /// Settings for the loading connection only (durability is pointless for a throwaway
    /// database).
    setup: &'static str,
    /// The columns of `api_keys`, in order, as one text column.
    columns: &'static str,
    /// Key `n.i`'s id: unique, and recognisable as bench data.
    id: &'static str,
    /// Key `n.i`'s fingerprint, which must be unique.
    key_hash: &'static str,
    /// Key `n.i`'s lookup value: 64 random hex digits, like an HMAC digest.
    lookup: &'static str,
    /// A clause before the `SELECT` that defines the rows `n(i)`, for `i` from the first to
    /// the second parameter, when the database needs one.
    with: &'static str,
    /// The `FROM` item that yields the rows `n(i)`.
    from: &'static str,
    /// The third parameter, the template key's id.
    template: &'static str,
    /// Run after the load, so reads see the database in its steady state.
    settle: &'static str,
    /// A random sample of lookup values, as many as the parameter says.
    sample: &'static str,
}

const SQLITE: Dialect = Dialect {
    setup: "PRAGMA synchronous = OFF; PRAGMA cache_size = -262144",
    columns: "SELECT name FROM pragma_table_info('api_keys')",
    id: "printf('key_bench%010d', n.i)",
    key_hash: "'sha256_' || lower(hex(randomblob(32)))",
    lookup: "lower(hex(randomblob(32)))",
    with: "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) ",
    from: "n",
    template: "?3",
    // A WAL holding the whole load would sit in front of every read.
    settle: "PRAGMA wal_checkpoint(TRUNCATE)",
    sample: "SELECT lookup FROM api_keys ORDER BY random() LIMIT ?1",
};

const POSTGRES: Dialect = Dialect {
    setup: "SET synchronous_commit = off",
    columns: "SELECT column_name::text FROM information_schema.columns \
              WHERE table_schema = current_schema() AND table_name = 'api_keys' \
              ORDER BY ordinal_position",
    id: "'key_bench' || lpad(n.i::text, 10, '0')",
    key_hash: "'sha256_' || md5(random()::text) || md5(n.i::text)",
    lookup: "md5(random()::text) || md5(random()::text)",
    with: "",
    from: "generate_series($1::bigint, $2::bigint) AS n(i)",
    template: "$3",
    // A production table is vacuumed and analysed by autovacuum. A table that has just
    // taken the whole load is due for both: done now, rather than by autovacuum while the
    // lookups are timed (on two cores, it then takes one of them), and its rows' first
    // reads do not each set their hint bits.
    settle: "VACUUM ANALYZE api_keys",
    sample: "SELECT lookup FROM api_keys ORDER BY random() LIMIT $1",
};

/// Opens the store on `url` (which migrates it), seeds it, then copies the template key
/// until the table holds `n` keys, in one transaction of multi-row `INSERT … SELECT`s.
async fn load<DB>(url: &str, dialect: &Dialect, n: i64) -> Loaded
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let store = open(url).await.expect("open the store");
    let template = seed(&*store).await;
    let mut conn = DB::Connection::connect(url).await.expect("connect");
    conn.execute(dialect.setup).await.expect("settings");
    let columns: Vec<String> = sqlx::query::<DB>(dialect.columns)
        .fetch_all(&mut conn)
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exprs: Vec<String> = columns
        .iter()
        .map(|c| match c.as_str() {
            "id" => dialect.id.to_owned(),
            "key_hash" => dialect.key_hash.to_owned(),
            "lookup" => dialect.lookup.to_owned(),
            other => format!("t.{other}"),
        })
        .collect();
    let insert = format!(
        "INSERT INTO api_keys ({}) {}SELECT {} FROM {} CROSS JOIN api_keys AS t WHERE t.id = {}",
        columns.join(", "),
        dialect.with,
        exprs.join(", "),
        dialect.from,
        dialect.template,
    );
    conn.execute("BEGIN").await.expect("begin");
    let mut first = 1;
    while first < n {
        let last = n.min(first + CHUNK) - 1;
        sqlx::query::<DB>(&insert)
            .bind(first)
            .bind(last)
            .bind(template.as_str())
            .execute(&mut conn)
            .await
            .expect("bulk insert");
        first = last + 1;
    }
    conn.execute("COMMIT").await.expect("commit");
    conn.execute(dialect.settle).await.expect("settle");
    let lookups = sqlx::query::<DB>(dialect.sample)
        .bind(SAMPLE)
        .fetch_all(&mut conn)
        .await
        .expect("sample")
        .iter()
        .map(|r| r.get(0))
        .collect();
    conn.close().await.expect("close");
    Loaded { store, lookups }
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let end = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{database}{query}", &base[..end])
}

/// Creates a fresh database next to the one `admin_url` names, and returns its URL.
async fn create_postgres(admin_url: &str, database: &str) -> String {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("connect to PostgreSQL");
    for sql in [
        format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        format!("CREATE DATABASE {database}"),
    ] {
        admin
            .execute(sql.as_str())
            .await
            .expect("recreate the bench database");
    }
    admin.close().await.expect("close");
    with_database(admin_url, database)
}

async fn drop_postgres(admin_url: &str, database: &str) {
    let mut admin = PgConnection::connect(admin_url).await.expect("connect");
    admin
        .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await
        .expect("drop the bench database");
}

/// A cheap, deterministic pseudo-random sequence (xorshift64) for picking lookups.
struct Picker(u64);

impl Picker {
    fn next(&mut self, len: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % len as u64) as usize
    }
}

/// Runs one benchmark whose routine times `iters` operations itself, and returns the median
/// of its samples in nanoseconds per operation.
fn measure(c: &mut Criterion, id: &str, mut routine: impl FnMut(u64) -> Duration) -> f64 {
    let mut per_op = Vec::new();
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let elapsed = routine(iters);
            per_op.push(elapsed.as_nanos() as f64 / iters.max(1) as f64);
            elapsed
        })
    });
    per_op.sort_by(f64::total_cmp);
    per_op.get(per_op.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Cache-miss lookups on random existing lookup values; returns ns per lookup.
fn bench_miss(c: &mut Criterion, rt: &Runtime, id: &str, loaded: &Loaded) -> f64 {
    let mut pick = Picker(0x9E37_79B9_7F4A_7C15);
    measure(c, id, |iters| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let lookup = &loaded.lookups[pick.next(loaded.lookups.len())];
                let found = loaded
                    .store
                    .find_keys_by_lookup(black_box(lookup))
                    .await
                    .expect("lookup");
                assert_eq!(black_box(found).len(), 1, "a sampled lookup was not found");
            }
            start.elapsed()
        })
    })
}

/// Cache hits: on one lookup over and over (the fixed cost, everything in CPU caches), on
/// the sampled lookups at random through the cache alone, and the same through the resolver
/// (the request path); prints the three figures.
fn bench_hits(c: &mut Criterion, rt: &Runtime, loaded: &Loaded) {
    let resolver: KeyResolver<Keys> =
        KeyResolver::new(loaded.store.clone(), KeyCache::new(CacheConfig::default()));
    let build = |records: Vec<KeyRecord>| Some(Arc::new(records));
    rt.block_on(async {
        for l in &loaded.lookups {
            resolver.resolve(l, build).await.expect("fill the cache");
        }
    });
    let cache = resolver.cache();
    let hot = &loaded.lookups[0];
    let hot_get = measure(c, "cache_hit/hot_get", |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            assert!(matches!(cache.get(black_box(hot)), Lookup::Hit(_)));
        }
        start.elapsed()
    });
    println!("BENCH cache_hit_hot_get_ns {hot_get:.1} ns");
    let mut pick = Picker(0x2545_F491_4F6C_DD1D);
    let get = measure(c, "cache_hit/get", |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let lookup = &loaded.lookups[pick.next(loaded.lookups.len())];
            match cache.get(black_box(lookup)) {
                Lookup::Hit(v) => {
                    black_box(v);
                }
                _ => panic!("a filled lookup missed"),
            }
        }
        start.elapsed()
    });
    println!("BENCH cache_hit_get_ns {get:.1} ns");
    let resolve = measure(c, "cache_hit/resolve", |iters| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let lookup = &loaded.lookups[pick.next(loaded.lookups.len())];
                let v = resolver
                    .resolve(black_box(lookup), |_| panic!("a filled lookup missed"))
                    .await
                    .expect("resolve");
                black_box(v);
            }
            start.elapsed()
        })
    });
    println!("BENCH cache_hit_resolve_ns {resolve:.1} ns");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let large: i64 = if quick() { 100_000 } else { 1_000_000 };
    let sizes = [1_000, large];
    let postgres = std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"));
    let mut backends = vec![Backend::Sqlite];
    if postgres.is_some() {
        backends.push(Backend::Postgres);
    }
    for backend in backends {
        let mut figures = Vec::new();
        for n in sizes {
            let size = label(n);
            let dir = tempfile::tempdir().expect("temp dir");
            let database = format!("kw_bench_{}_{size}", std::process::id());
            let started = Instant::now();
            let loaded = rt.block_on(async {
                match (backend, &postgres) {
                    (Backend::Postgres, Some(admin)) => {
                        let url = create_postgres(admin, &database).await;
                        load::<Postgres>(&url, &POSTGRES, n).await
                    }
                    _ => {
                        let url = format!("sqlite://{}/kw.db", dir.path().display());
                        load::<Sqlite>(&url, &SQLITE, n).await
                    }
                }
            });
            eprintln!(
                "loaded {n} keys into {} in {:.1} s",
                backend.name(),
                started.elapsed().as_secs_f64()
            );
            let name = format!("lookup_miss_{}_{size}_ns", backend.name());
            let id = format!("lookup_miss/{}/{size}", backend.name());
            let ns = bench_miss(c, &rt, &id, &loaded);
            println!("BENCH {name} {ns:.0} ns");
            figures.push(ns);
            if matches!(backend, Backend::Sqlite) && n == large {
                bench_hits(c, &rt, &loaded);
            }
            drop(loaded);
            if let (Backend::Postgres, Some(url)) = (backend, &postgres) {
                rt.block_on(drop_postgres(url, &database));
            }
        }
        println!(
            "BENCH lookup_scale_ratio_{} {:.2} ratio",
            backend.name(),
            figures[1] / figures[0]
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
