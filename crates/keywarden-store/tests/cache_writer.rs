//! The key cache and the background writer on the real SQLite store: a cache hit makes no
//! store call, invalidation and the TTL bring changes in, concurrent misses share one call,
//! and the writer coalesces, bounds and flushes what the request path hands it.

use keywarden_core::model::{
    new_id, Account, AccountStatus, Activity, AuditEvent, HashScheme, KeyRecord, KeyType, Millis,
    Mode, Role, StoredSecret,
};
use keywarden_store::{
    open, CacheConfig, CountingStore, DecisionQuery, EventFilter, Granularity, KeyCache,
    KeyResolver, KeyTouch, KeyUse, Lookup, RecordCache, Store, StoreError, UsageDelta,
    UsageDurability, Writer, WriterConfig, WriterHandle,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// What the tests cache per lookup: the matching records as loaded.
type Keys = Arc<Vec<KeyRecord>>;

/// A migrated SQLite database in its own directory, with one account.
struct Db {
    store: Arc<dyn Store>,
    account_id: String,
    /// Keeps the database directory alive for the test.
    _dir: TempDir,
}

async fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/kw.db", dir.path().display());
    let store = open(&url).await.unwrap();
    let account = Account {
        id: new_id("acc"),
        name: "Acme".into(),
        plan: "default".into(),
        status: AccountStatus::Active,
        metadata: serde_json::json!({}),
        created_at: 1,
    };
    store.create_account(&account, &[]).await.unwrap();
    Db {
        store,
        account_id: account.id,
        _dir: dir,
    }
}

/// A stored lookup value: 64 hex characters, like an HMAC digest.
fn lookup(n: u32) -> String {
    format!("{n:064x}")
}

impl Db {
    /// Inserts an enabled key whose secret has this lookup value.
    async fn key(&self, lookup: &str) -> KeyRecord {
        let id = new_id("key");
        let key = KeyRecord {
            name: "ci".into(),
            role: Role::Owner,
            scopes: vec!["*".into()],
            prefix: "kw_sk_live_".into(),
            start: "kw_sk_live_abcd".into(),
            key_hash: format!("sha256_{}", &lookup.replace('0', "f")),
            secret: StoredSecret {
                scheme: HashScheme::HmacSha256,
                lookup: lookup.into(),
                hash: String::new(),
            },
            ..KeyRecord::new(
                id.clone(),
                self.account_id.clone(),
                Mode::Live,
                KeyType::Secret,
                2,
            )
        };
        self.store.insert_key(&key, &[]).await.unwrap();
        key
    }

    /// A resolver over this database that counts its store calls.
    fn resolver(&self, cfg: CacheConfig) -> (KeyResolver<Keys>, Arc<CountingStore>) {
        let counting = Arc::new(CountingStore::new(self.store.clone()));
        let resolver = KeyResolver::new(counting.clone(), KeyCache::new(cfg));
        (resolver, counting)
    }
}

/// A database with one key, and a resolver over it that counts its store calls.
struct OneKey {
    db: Db,
    /// The key's lookup value.
    lookup: String,
    key: KeyRecord,
    resolver: KeyResolver<Keys>,
    counting: Arc<CountingStore>,
}

async fn one_key(cfg: CacheConfig) -> OneKey {
    let db = db().await;
    let lookup = lookup(1);
    let key = db.key(&lookup).await;
    let (resolver, counting) = db.resolver(cfg);
    OneKey {
        db,
        lookup,
        key,
        resolver,
        counting,
    }
}

fn build(records: Vec<KeyRecord>) -> Option<Keys> {
    Some(Arc::new(records))
}

/// Starts resolving `lookup` and polls it once: with the store paused, its store call (or
/// its wait on another request's call) is then certainly in flight.
async fn in_flight<'a>(
    resolver: &'a KeyResolver<Keys>,
    lookup: &'a str,
) -> Pin<Box<impl Future<Output = Result<Option<Keys>, StoreError>> + 'a>> {
    let mut resolution = Box::pin(resolver.resolve(lookup, build));
    assert!(
        futures::poll!(resolution.as_mut()).is_pending(),
        "the store answered while paused"
    );
    resolution
}

/// Resolves `lookup` and returns whether its first record is enabled (`None`: no key).
async fn enabled(resolver: &KeyResolver<Keys>, lookup: &str) -> Option<bool> {
    let keys = resolver.resolve(lookup, build).await.unwrap()?;
    Some(keys[0].enabled)
}

#[tokio::test]
async fn cached_resolutions_make_no_store_calls() {
    let db = db().await;
    let lookups: Vec<String> = (1..=10).map(lookup).collect();
    let mut ids = Vec::new();
    for l in &lookups {
        ids.push(db.key(l).await.id);
    }
    let (resolver, counting) = db.resolver(CacheConfig::default());

    let first = resolver.resolve(&lookups[0], build).await.unwrap().unwrap();
    assert_eq!(first[0].id, ids[0]);
    assert_eq!(
        counting.calls(),
        1,
        "the first resolution reads the store once"
    );

    for i in 0..10_000 {
        let keys = resolver
            .resolve(&lookups[0], |_| panic!("a cache hit builds nothing"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            Arc::ptr_eq(&keys, &first),
            "resolution {i} was not served from memory"
        );
    }
    assert_eq!(counting.calls(), 1, "10 000 cache hits made store calls");

    // Every other key costs exactly one call, then none.
    for l in &lookups[1..] {
        resolver.resolve(l, build).await.unwrap().unwrap();
    }
    assert_eq!(counting.calls(), 10);
    for _ in 0..100 {
        for (l, id) in lookups.iter().zip(&ids) {
            let keys = resolver.resolve(l, build).await.unwrap().unwrap();
            assert_eq!(&keys[0].id, id);
        }
    }
    assert_eq!(counting.calls(), 10);
    assert!(matches!(resolver.cache().get(&lookups[3]), Lookup::Hit(_)));
}

#[tokio::test]
async fn an_unknown_lookup_costs_one_store_call_then_none() {
    let db = db().await;
    let (resolver, counting) = db.resolver(CacheConfig::default());
    let unknown = lookup(404);

    assert_eq!(resolver.resolve(&unknown, build).await.unwrap(), None);
    assert_eq!(counting.calls(), 1);
    assert_eq!(resolver.cache().get(&unknown), Lookup::KnownMissing);
    for _ in 0..1_000 {
        assert_eq!(resolver.resolve(&unknown, build).await.unwrap(), None);
    }
    assert_eq!(
        counting.calls(),
        1,
        "repeated unknown lookups reached the store"
    );

    // A builder that finds nothing usable counts as unknown too.
    let known = lookup(1);
    db.key(&known).await;
    assert_eq!(resolver.resolve(&known, |_| None).await.unwrap(), None);
    assert_eq!(resolver.cache().get(&known), Lookup::KnownMissing);
    assert_eq!(counting.calls(), 2);
}

#[tokio::test]
async fn invalidation_makes_the_next_resolution_read_the_updated_record() {
    let OneKey {
        db,
        lookup: l,
        mut key,
        resolver,
        counting,
    } = one_key(CacheConfig::default()).await;
    assert_eq!(enabled(&resolver, &l).await, Some(true));

    key.enabled = false;
    db.store.update_key(&key, &[]).await.unwrap();
    assert_eq!(
        enabled(&resolver, &l).await,
        Some(true),
        "without invalidation the cached record is served"
    );
    assert_eq!(counting.calls(), 1);

    resolver.cache().invalidate(&[l.as_str(), "unrelated"]);
    assert_eq!(resolver.cache().get(&l), Lookup::Miss);
    assert_eq!(enabled(&resolver, &l).await, Some(false));
    assert_eq!(counting.calls(), 2);

    // Invalidation also clears a negative entry: a key created after a lookup was found
    // unknown works at once.
    let fresh = lookup(8);
    assert_eq!(enabled(&resolver, &fresh).await, None);
    db.key(&fresh).await;
    assert_eq!(
        enabled(&resolver, &fresh).await,
        None,
        "still known unknown"
    );
    resolver.cache().invalidate(&[fresh.as_str()]);
    assert_eq!(enabled(&resolver, &fresh).await, Some(true));

    resolver.cache().invalidate_all();
    assert_eq!(resolver.cache().get(&l), Lookup::Miss);
    assert_eq!(resolver.cache().get(&fresh), Lookup::Miss);
    let before = counting.calls();
    assert_eq!(enabled(&resolver, &l).await, Some(false));
    assert_eq!(counting.calls(), before + 1);
}

#[tokio::test]
async fn the_ttl_is_a_backstop_for_missed_invalidations() {
    let OneKey {
        db,
        lookup: l,
        mut key,
        resolver,
        counting,
    } = one_key(CacheConfig {
        ttl: Duration::from_millis(500),
        negative_ttl: Duration::from_millis(500),
        ..CacheConfig::default()
    })
    .await;
    let unknown = lookup(10);
    assert_eq!(enabled(&resolver, &l).await, Some(true));
    assert_eq!(enabled(&resolver, &unknown).await, None);

    // Changed behind the cache's back, as another replica would.
    key.enabled = false;
    db.store.update_key(&key, &[]).await.unwrap();
    db.key(&unknown).await;
    assert_eq!(enabled(&resolver, &l).await, Some(true));
    assert_eq!(enabled(&resolver, &unknown).await, None);
    assert_eq!(counting.calls(), 2);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(enabled(&resolver, &l).await, Some(false));
    assert_eq!(enabled(&resolver, &unknown).await, Some(true));
    assert_eq!(counting.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_share_one_store_call() {
    // The database directory lives as long as `_db`: binding it with `..` would delete it.
    let OneKey {
        db: _db,
        lookup: known,
        key,
        resolver,
        counting,
    } = one_key(CacheConfig::default()).await;
    let unknown = lookup(12);

    // All of them miss while the first store call is held back.
    let paused = counting.pause().await;
    let all = futures::future::join_all((0..64).map(|_| resolver.resolve(&known, build)));
    let mut all = Box::pin(all);
    assert!(futures::poll!(all.as_mut()).is_pending());
    drop(paused);
    let results = all.await;
    assert_eq!(
        counting.calls(),
        1,
        "64 concurrent misses made several store calls"
    );
    for r in results {
        assert_eq!(r.unwrap().unwrap()[0].id, key.id);
    }

    let results =
        futures::future::join_all((0..64).map(|_| resolver.resolve(&unknown, build))).await;
    assert_eq!(counting.calls(), 2);
    assert!(results.iter().all(|r| matches!(r, Ok(None))), "{results:?}");

    // Across tasks on several threads too.
    let shared = Arc::new(resolver);
    shared.cache().invalidate_all();
    let paused = counting.pause().await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let r = shared.clone();
            let l = known.clone();
            tokio::spawn(async move { r.resolve(&l, build).await.unwrap().is_some() })
        })
        .collect();
    // Give the tasks time to pile up on the held call; any that start later find the value
    // cached, so the count below holds whatever the timing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(paused);
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(counting.calls(), 3);
}

#[tokio::test]
async fn a_dropped_resolution_does_not_wedge_its_lookup() {
    let f = one_key(CacheConfig::default()).await;
    let (l, resolver, counting) = (&f.lookup, &f.resolver, &f.counting);

    // The request that started the store call goes away before it returns.
    let paused = counting.pause().await;
    drop(in_flight(resolver, l).await);
    drop(paused);
    assert_eq!(enabled(resolver, l).await, Some(true));
    assert_eq!(counting.calls(), 2);

    // When the request running the shared call goes away, a request waiting on it runs the
    // call itself instead of waiting forever.
    resolver.cache().invalidate_all();
    let paused = counting.pause().await;
    let leader = in_flight(resolver, l).await;
    let waiter = in_flight(resolver, l).await;
    assert_eq!(counting.calls(), 3, "the waiter joined the leader's call");
    drop(leader);
    drop(paused);
    assert!(waiter.await.unwrap().is_some());
    assert_eq!(counting.calls(), 4);
}

#[tokio::test]
async fn a_fill_racing_an_invalidation_is_not_cached() {
    let f = one_key(CacheConfig::default()).await;
    let (l, resolver, counting) = (&f.lookup, &f.resolver, &f.counting);

    let paused = counting.pause().await;
    let fill = in_flight(resolver, l).await;
    // A write lands and invalidates while the store call is in flight.
    resolver.cache().invalidate(&[l.as_str()]);
    drop(paused);
    let value = fill.await.unwrap();
    assert!(value.is_some(), "the caller still gets what was read");
    assert_eq!(
        resolver.cache().get(l),
        Lookup::Miss,
        "a value read before an invalidation was cached after it"
    );
    enabled(resolver, l).await;
    assert_eq!(counting.calls(), 2);
}

#[tokio::test]
async fn store_errors_reach_every_waiter_and_are_not_cached() {
    let f = one_key(CacheConfig::default()).await;
    let (l, resolver, counting) = (&f.lookup, &f.resolver, &f.counting);

    counting.set_unavailable(true);
    let results = futures::future::join_all((0..4).map(|_| resolver.resolve(l, build))).await;
    assert!(results.iter().all(Result::is_err));
    assert_eq!(resolver.cache().get(l), Lookup::Miss);

    counting.set_unavailable(false);
    assert_eq!(enabled(resolver, l).await, Some(true));
}

#[tokio::test]
async fn cache_bounds_are_enforced() {
    let cache: KeyCache<u32> = KeyCache::new(CacheConfig {
        max_keys: 100,
        negative_max: 10,
        ..CacheConfig::default()
    });
    for n in 0..1_000 {
        cache.insert(&lookup(n), n);
        cache.insert_missing(&lookup(100_000 + n));
    }
    assert!(cache.entry_count() <= 100, "{}", cache.entry_count());
    assert!(cache.negative_entry_count() <= 10);

    // A value replaces a negative entry and the other way round.
    cache.insert_missing(&lookup(5));
    assert_eq!(cache.get(&lookup(5)), Lookup::KnownMissing);
    cache.insert(&lookup(5), 5);
    assert_eq!(cache.get(&lookup(5)), Lookup::Hit(5));
}

// ---- the writer ----

fn usage(account_id: &str, unit: &str, amount: u64) -> UsageDelta {
    UsageDelta {
        account_id: account_id.into(),
        mode: Mode::Live,
        unit: unit.into(),
        period_start: 0,
        amount,
    }
}

fn activity(key_id: &str, n: i64) -> Activity {
    Activity {
        key_id: key_id.into(),
        at: n,
        ip: Some("192.0.2.1".into()),
        method: "GET".into(),
        path: format!("/v1/things/{n}"),
        status: 200,
        code: "valid".into(),
    }
}

fn event(account_id: &str) -> AuditEvent {
    AuditEvent {
        id: new_id("evt"),
        account_id: Some(account_id.into()),
        mode: Some(Mode::Live),
        kind: "key.ip_denied".into(),
        actor: "system".into(),
        ip: Some("198.51.100.7".into()),
        at: 5,
        data: serde_json::json!({}),
    }
}

/// A writer whose interval never fires during a test, so only explicit flushes write.
fn manual() -> WriterConfig {
    WriterConfig {
        flush_interval: Duration::from_secs(1),
        usage_flush_interval: Duration::from_secs(1),
        ..WriterConfig::default()
    }
}

/// A database with one key, and a writer over it.
async fn writing(cfg: WriterConfig) -> (Db, KeyRecord, Writer, WriterHandle) {
    let db = db().await;
    let key = db.key(&lookup(1)).await;
    let (writer, handle) = Writer::spawn(db.store.clone(), cfg);
    (db, key, writer, handle)
}

async fn events(db: &Db) -> Vec<AuditEvent> {
    db.store
        .list_events(&EventFilter {
            account_id: Some(db.account_id.clone()),
            limit: 100,
            ..EventFilter::default()
        })
        .await
        .unwrap()
}

async fn used(db: &Db, unit: &str) -> u64 {
    db.store
        .get_usage(&db.account_id, Mode::Live, unit, 0)
        .await
        .unwrap()
}

#[tokio::test]
async fn usage_coalesces_per_counter_and_lands_on_flush() {
    let (db, _, writer, handle) = writing(manual()).await;
    for _ in 0..1_000 {
        writer.usage(usage(&db.account_id, "requests", 1));
    }
    writer.usage(usage(&db.account_id, "words", 250));
    writer.usage(usage(&db.account_id, "words", 0));
    writer.usage(usage(&db.account_id, "words", 50));
    assert_eq!(writer.pending(), 2, "increments coalesce per counter");
    assert_eq!(
        used(&db, "requests").await,
        0,
        "nothing is written before a flush"
    );

    writer.flush_now().await.unwrap();
    assert_eq!(writer.pending(), 0);
    assert_eq!(writer.flushed_batches(), 1, "one flush is one transaction");
    assert_eq!(used(&db, "requests").await, 1_000);
    assert_eq!(used(&db, "words").await, 300);

    // A flush with nothing pending writes nothing.
    writer.flush_now().await.unwrap();
    assert_eq!(writer.flushed_batches(), 1);
    handle.shutdown().await;
}

#[tokio::test]
async fn the_interval_flushes_without_being_asked() {
    let (db, _, writer, handle) = writing(WriterConfig {
        flush_interval: Duration::from_millis(50),
        ..WriterConfig::default()
    })
    .await;
    writer.usage(usage(&db.account_id, "requests", 3));
    let deadline = Instant::now() + Duration::from_secs(5);
    while used(&db, "requests").await != 3 {
        assert!(Instant::now() < deadline, "the interval never flushed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn a_full_batch_flushes_before_the_interval() {
    let (db, _, writer, handle) = writing(WriterConfig {
        max_batch: 10,
        ..manual()
    })
    .await;
    // Let the flusher reach its wait, so the one-second interval starts now.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let start = Instant::now();
    for n in 0..10 {
        writer.usage(usage(&db.account_id, &format!("unit{n}"), 1));
    }
    while writer.flushed_batches() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "a full batch waited for the interval ({:?})",
        start.elapsed()
    );
    assert_eq!(used(&db, "unit9").await, 1);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_large_backlog_is_written_in_bounded_transactions() {
    let (db, key, writer, handle) = writing(WriterConfig {
        max_batch: 3,
        ..manual()
    })
    .await;
    // The flusher may start early once 3 records wait; however the 10 records are split,
    // no transaction holds more than 3 of them.
    for n in 0..4 {
        writer.usage(usage(&db.account_id, &format!("unit{n}"), 2));
    }
    for n in 0..5 {
        writer.activity(activity(&key.id, n));
    }
    writer.event(event(&db.account_id));
    writer.flush_now().await.unwrap();
    assert_eq!(writer.pending(), 0);
    assert!(
        writer.flushed_batches() >= 4,
        "10 records in batches of 3 take at least 4 transactions"
    );
    for n in 0..4 {
        assert_eq!(used(&db, &format!("unit{n}")).await, 2);
    }
    assert_eq!(db.store.list_activity(&key.id, 100).await.unwrap().len(), 5);
    handle.shutdown().await;
}

#[tokio::test]
async fn shutdown_writes_everything_pending() {
    let (db, key, writer, handle) = writing(manual()).await;
    writer.usage(usage(&db.account_id, "requests", 42));
    writer.event(event(&db.account_id));
    writer.touch(KeyTouch {
        key_id: key.id.clone(),
        at: 1_234,
        ip: Some("203.0.113.9".into()),
    });
    writer.activity(activity(&key.id, 1));
    assert_eq!(writer.pending(), 4);

    handle.shutdown().await;
    assert_eq!(writer.pending(), 0);
    assert_eq!(used(&db, "requests").await, 42);
    let events = events(&db).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "key.ip_denied");
    let stored = db.store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(1_234));
    assert_eq!(db.store.list_activity(&key.id, 10).await.unwrap().len(), 1);
    assert!(
        writer.flush_now().await.is_err(),
        "a stopped writer says so"
    );
}

#[tokio::test]
async fn a_full_activity_queue_drops_activity_but_keeps_all_usage() {
    let (db, key, writer, handle) = writing(WriterConfig {
        activity_queue: 10,
        ..manual()
    })
    .await;
    for n in 0..25 {
        writer.activity(activity(&key.id, n));
        writer.usage(usage(&db.account_id, "requests", 1));
        writer.event(event(&db.account_id));
    }
    assert_eq!(writer.dropped_activity(), 15);
    writer.flush_now().await.unwrap();
    assert_eq!(
        db.store.list_activity(&key.id, 100).await.unwrap().len(),
        10
    );
    assert_eq!(used(&db, "requests").await, 25, "usage is never dropped");
    assert_eq!(events(&db).await.len(), 25, "events are never dropped");

    // Once flushed, the queue has room again.
    writer.activity(activity(&key.id, 99));
    assert_eq!(writer.dropped_activity(), 15);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_busy_key_queues_only_the_activity_it_keeps() {
    let (db, key, writer, handle) = writing(WriterConfig {
        activity_queue: 10,
        activity_retain_per_key: 3,
        ..manual()
    })
    .await;
    let other = db.key(&lookup(2)).await;
    for n in 0..50 {
        writer.activity(activity(&key.id, n));
    }
    writer.activity(activity(&other.id, 7));
    // Older rows of the busy key give way to newer ones; nothing is dropped for lack of room.
    assert_eq!(writer.pending(), 4);
    assert_eq!(writer.dropped_activity(), 0);
    writer.flush_now().await.unwrap();
    let kept: Vec<i64> = db
        .store
        .list_activity(&key.id, 100)
        .await
        .unwrap()
        .iter()
        .map(|a| a.at)
        .collect();
    assert_eq!(kept, vec![49, 48, 47], "the newest rows, newest first");
    assert_eq!(
        db.store.list_activity(&other.id, 100).await.unwrap().len(),
        1
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn uses_from_the_request_path_keep_each_field_of_the_newest_rows() {
    let (db, key, writer, handle) = writing(WriterConfig {
        activity_retain_per_key: 2,
        ..manual()
    })
    .await;
    let long_path = format!("/{}é", "p".repeat(510));
    let ips: [std::net::IpAddr; 3] = [
        "192.0.2.1".parse().unwrap(),
        "2001:db8::ffff:1:2:3".parse().unwrap(),
        "198.51.100.7".parse().unwrap(),
    ];
    let uses = [
        (ips[0], "GET", "/a", 200, "valid", true),
        (
            ips[1],
            "OVERLONGMETHODNAME",
            long_path.as_str(),
            403,
            "ip_not_allowed",
            false,
        ),
        (ips[2], "POST", "/c", 429, "rate_limit_exceeded", false),
    ];
    for (n, (ip, method, path, status, code, success)) in uses.into_iter().enumerate() {
        let u = KeyUse {
            key_id: &key.id,
            at: 1_000 + n as i64,
            ip: Some(ip),
            method,
            path,
            status,
            code,
        };
        writer.used(&u, success);
    }
    writer.flush_now().await.unwrap();
    let rows = db.store.list_activity(&key.id, 10).await.unwrap();
    // The third use took the place of the first in the queue, reusing its buffers.
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].at, 1_002);
    assert_eq!(rows[0].ip.as_deref(), Some("198.51.100.7"));
    assert_eq!(
        (rows[0].method.as_str(), rows[0].path.as_str()),
        ("POST", "/c")
    );
    assert_eq!(
        (rows[0].status, rows[0].code.as_str()),
        (429, "rate_limit_exceeded")
    );
    assert_eq!(rows[1].ip.as_deref(), Some("2001:db8::ffff:1:2:3"));
    assert_eq!(rows[1].method, "OVERLONGMETHODNAM"[..16]);
    assert_eq!(
        rows[1].path.len(),
        511,
        "cut at 512 bytes, on a character boundary"
    );
    assert_eq!(
        (rows[1].status, rows[1].code.as_str()),
        (403, "ip_not_allowed")
    );
    // Only the successful use counts as the last use.
    let stored = db.store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(1_000));
    assert_eq!(stored.last_used_ip.as_deref(), Some("192.0.2.1"));
    handle.shutdown().await;
}

/// A busy key's rows that say the same share what they say; each row still reads back
/// as its own.
#[tokio::test]
async fn rows_that_say_the_same_and_rows_that_differ_keep_their_own_fields() {
    let (db, key, writer, handle) = writing(WriterConfig {
        activity_retain_per_key: 5,
        ..manual()
    })
    .await;
    let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let other: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    // Runs of one kind of use, then uses that alternate, wrapping the queue several times.
    let mut uses = vec![(ip, "/a", 200); 7];
    uses.extend([(other, "/b", 429), (ip, "/a", 200)].repeat(4));
    uses.extend([(other, "/c", 403); 2]);
    for (n, (ip, path, status)) in uses.iter().enumerate() {
        writer.used(
            &KeyUse {
                key_id: &key.id,
                at: n as i64,
                ip: Some(*ip),
                method: "GET",
                path,
                status: *status,
                code: if *status == 200 { "valid" } else { "denied" },
            },
            *status == 200,
        );
    }
    writer.flush_now().await.unwrap();
    let rows = db.store.list_activity(&key.id, 10).await.unwrap();
    let got: Vec<(i64, String, &str, u16)> = rows
        .iter()
        .map(|r| (r.at, r.ip.clone().unwrap(), r.path.as_str(), r.status))
        .collect();
    let want: Vec<(i64, String, &str, u16)> = (uses.len() - 5..uses.len())
        .rev()
        .map(|n| (n as i64, uses[n].0.to_string(), uses[n].1, uses[n].2))
        .collect();
    assert_eq!(got, want, "the newest five, newest first");
    handle.shutdown().await;
}

#[tokio::test]
async fn touches_keep_the_latest_use_per_key() {
    let (db, a, writer, handle) = writing(manual()).await;
    let b = db.key(&lookup(2)).await;
    let touch = |key: &KeyRecord, at: i64, ip: &str| KeyTouch {
        key_id: key.id.clone(),
        at,
        ip: Some(ip.into()),
    };
    writer.touch(touch(&a, 1_000, "192.0.2.1"));
    writer.touch(touch(&a, 3_000, "192.0.2.3"));
    writer.touch(touch(&a, 2_000, "192.0.2.2"));
    writer.touch(touch(&b, 500, "2001:db8::1"));
    writer.touch(KeyTouch {
        key_id: "key_erased_meanwhile".into(),
        at: 9,
        ip: None,
    });
    assert_eq!(writer.pending(), 3, "touches coalesce per key");
    writer.flush_now().await.unwrap();

    let a = db.store.get_key(&a.id).await.unwrap().unwrap();
    assert_eq!(a.last_used_at, Some(3_000));
    assert_eq!(a.last_used_ip.as_deref(), Some("192.0.2.3"));
    let b = db.store.get_key(&b.id).await.unwrap().unwrap();
    assert_eq!(b.last_used_at, Some(500));
    assert_eq!(b.last_used_ip.as_deref(), Some("2001:db8::1"));
    handle.shutdown().await;
}

/// Each thread records into a buffer of its own; a flush merges them as one thread's
/// records would have coalesced.
#[tokio::test]
async fn records_from_several_threads_coalesce_when_flushed() {
    let (db, key, writer, handle) = writing(WriterConfig {
        activity_queue: 20,
        activity_retain_per_key: 3,
        ..manual()
    })
    .await;
    let ip: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    let minute = 60_000 * 1_000;
    // The threads wait for one another before they end, so none takes over the buffer of
    // one that ended (a new thread may).
    let all_recorded = std::sync::Barrier::new(4);
    std::thread::scope(|scope| {
        for t in 0..4i64 {
            let (writer, key_id, all_recorded) = (&writer, key.id.as_str(), &all_recorded);
            let account_id = db.account_id.as_str();
            scope.spawn(move || {
                for n in 0..5 {
                    // Thread 2 holds the newest uses of all.
                    let at = minute + if t == 2 { 900 + n } else { t * 10 + n };
                    writer.used(
                        &KeyUse {
                            key_id,
                            at,
                            ip: Some(ip),
                            method: "GET",
                            path: "/p",
                            status: 200,
                            code: "valid",
                        },
                        true,
                    );
                    writer.decided(Some((key_id, account_id, Mode::Live)), "valid", at);
                }
                all_recorded.wait();
            });
        }
    });
    assert_eq!(
        writer.pending(),
        20,
        "each thread's use, 3 rows and count of the busy key"
    );
    std::thread::scope(|scope| {
        for t in 0..4 {
            let writer = &writer;
            // Keys of their own per thread: more rows than the queue takes in all.
            scope.spawn(move || {
                for n in 0..10 {
                    writer.activity(activity(&format!("key_{t}_{n}"), n));
                }
            });
        }
    });
    // Each thread's 3 rows of the busy key, and 20 - 12 = 8 of the 40 others.
    assert_eq!(
        writer.dropped_activity(),
        32,
        "the queue's bound holds across threads"
    );
    writer.flush_now().await.unwrap();
    assert_eq!(writer.pending(), 0, "nothing is left counted once written");

    let kept: Vec<i64> = db
        .store
        .list_activity(&key.id, 100)
        .await
        .unwrap()
        .iter()
        .map(|a| a.at - minute)
        .collect();
    assert_eq!(
        kept,
        vec![904, 903, 902],
        "the newest rows of every thread's"
    );
    let stored = db.store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(
        stored.last_used_at,
        Some(minute + 904),
        "the latest use wins"
    );
    let counts = db
        .store
        .decision_counts(&DecisionQuery {
            granularity: Granularity::Minute,
            account_id: Some(db.account_id.clone()),
            key_id: Some(key.id.clone()),
            mode: None,
            from: 0,
            to: Millis::MAX,
        })
        .await
        .unwrap();
    let total: u64 = counts.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, 20, "every decision counted once: {counts:?}");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_failed_flush_keeps_its_batch_and_is_retried() {
    let db = db().await;
    let counting = Arc::new(CountingStore::new(db.store.clone()));
    let (writer, handle) = Writer::spawn(counting.clone(), manual());
    writer.usage(usage(&db.account_id, "requests", 5));
    writer.event(event(&db.account_id));

    counting.set_unavailable(true);
    assert!(writer.flush_now().await.is_err());
    // Usage and the event are written apart, and both attempts failed.
    assert_eq!(writer.failed_flushes(), 2);
    assert_eq!(writer.pending(), 2, "the failed batch is still pending");
    writer.usage(usage(&db.account_id, "requests", 1));
    assert_eq!(writer.pending(), 3);

    counting.set_unavailable(false);
    // The retry writes the held batch, then what came meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.pending() > 0 {
        assert!(
            Instant::now() < deadline,
            "the failed batch was never retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(used(&db, "requests").await, 6, "written exactly once");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_strict_charge_returns_once_committed_and_a_failed_one_is_not_written() {
    let db = db().await;
    let counting = Arc::new(CountingStore::new(db.store.clone()));
    let (writer, handle) = Writer::spawn(
        counting.clone(),
        WriterConfig {
            usage_durability: UsageDurability::Strict,
            ..manual()
        },
    );
    // The intervals never fire here: only the charge itself can have written this.
    writer
        .charge(vec![usage(&db.account_id, "tokens", 7)])
        .await
        .unwrap();
    assert_eq!(
        used(&db, "tokens").await,
        7,
        "committed before charge returned"
    );

    counting.set_unavailable(true);
    assert!(writer
        .charge(vec![usage(&db.account_id, "tokens", 5)])
        .await
        .is_err());
    assert_eq!(writer.pending(), 0, "a failed strict charge is not kept");
    counting.set_unavailable(false);
    writer.flush_now().await.unwrap();
    assert_eq!(
        used(&db, "tokens").await,
        7,
        "its caller was told it failed: it is never written later"
    );

    // Batched usage queued meanwhile is written with the next strict charge.
    writer.usage(usage(&db.account_id, "tokens", 2));
    writer
        .charge(vec![usage(&db.account_id, "tokens", 1)])
        .await
        .unwrap();
    assert_eq!(used(&db, "tokens").await, 10);
    handle.shutdown().await;
    assert!(
        writer
            .charge(vec![usage(&db.account_id, "tokens", 1)])
            .await
            .is_err(),
        "a stopped writer refuses strict charges at once"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_a_dead_store_after_its_grace() {
    let db = db().await;
    let counting = Arc::new(CountingStore::new(db.store.clone()));
    counting.set_unavailable(true);
    let (writer, handle) = Writer::spawn(
        counting.clone(),
        WriterConfig {
            shutdown_grace: Duration::from_millis(300),
            ..manual()
        },
    );
    writer.usage(usage(&db.account_id, "requests", 1));
    let start = Instant::now();
    handle.shutdown().await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(writer.failed_flushes() >= 1);
    assert_eq!(
        writer.pending(),
        1,
        "what could not be written is still counted"
    );
}

#[tokio::test]
async fn recording_never_waits_for_the_flusher() {
    let db = db().await;
    let counting = Arc::new(CountingStore::new(db.store.clone()));
    counting.set_unavailable(true);
    let (writer, handle) = Writer::spawn(counting.clone(), manual());
    // With the database down, recording stays immediate: a plain function call, polled
    // nowhere.
    let start = Instant::now();
    for n in 0..10_000 {
        writer.usage(usage(&db.account_id, "requests", 1));
        writer.touch(KeyTouch {
            key_id: format!("key_{}", n % 10),
            at: n,
            ip: None,
        });
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(writer.pending(), 11);
    counting.set_unavailable(false);
    handle.shutdown().await;
    assert_eq!(used(&db, "requests").await, 10_000);
}

#[test]
fn cached_records_expire_and_are_forgotten_on_invalidation() {
    let cache: RecordCache<Arc<String>> = RecordCache::new(10, Duration::from_millis(30));
    cache.insert("acc_1", Arc::new("Acme".into()));
    cache.insert("acc_2", Arc::new("Globex".into()));
    assert_eq!(
        cache.get("acc_1").as_deref().map(String::as_str),
        Some("Acme")
    );
    cache.invalidate("acc_1");
    assert!(cache.get("acc_1").is_none());
    assert!(cache.get("acc_2").is_some());
    std::thread::sleep(Duration::from_millis(40));
    assert!(cache.get("acc_2").is_none(), "past its time-to-live");

    cache.insert("acc_3", Arc::new("Initech".into()));
    cache.invalidate_all();
    assert!(cache.get("acc_3").is_none());
    // Bounded: more records than it holds leave at most its capacity behind.
    for i in 0..100 {
        cache.insert(&format!("acc_{i}"), Arc::new(i.to_string()));
    }
    assert!(
        (0..100)
            .filter(|i| cache.get(&format!("acc_{i}")).is_some())
            .count()
            <= 10
    );
}

/// A thread that reads one entry of a cache when asked, and answers with the value and
/// the address of the `Arc` it got.
fn reader<F>(read: F) -> impl FnMut() -> Option<(String, usize)>
where
    F: Fn() -> Option<Arc<String>> + Send + 'static,
{
    let (ask, asked) = std::sync::mpsc::channel::<()>();
    let (answer, answers) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for () in asked {
            let got = read().map(|v| (String::clone(&v), Arc::as_ptr(&v) as usize));
            if answer.send(got).is_err() {
                return;
            }
        }
    });
    move || {
        ask.send(()).unwrap();
        answers.recv().unwrap()
    }
}

/// Each thread keeps its own copy of an entry it reads often; none outlives a change made
/// on another thread.
#[test]
fn a_threads_own_copies_never_outlive_a_change() {
    let copy = |v: &Arc<String>| Arc::new(String::clone(v));
    let keys: KeyCache<Arc<String>> = KeyCache::new(CacheConfig::default()).copied_with(copy);
    let records: RecordCache<Arc<String>> =
        RecordCache::new(10, Duration::from_secs(60)).copied_with(copy);
    let lookup = lookup(1);
    let shared = Arc::new("old".to_string());
    keys.insert(&lookup, shared.clone());
    records.insert("acc_1", shared.clone());

    let (k, l) = (keys.clone(), lookup.clone());
    let mut read_key = reader(move || match k.get(&l) {
        Lookup::Hit(v) => Some(v),
        _ => None,
    });
    let r = records.clone();
    let mut read_record = reader(move || r.get("acc_1"));
    for read in [&mut read_key as &mut dyn FnMut() -> _, &mut read_record] {
        let seen: Vec<_> = (0..20).map(|_| read().unwrap()).collect();
        assert!(seen.iter().all(|(v, _)| v == "old"));
        // Read often, the entry became the thread's own: an `Arc` not shared with the map.
        assert_eq!(seen[0].1, Arc::as_ptr(&shared) as usize);
        assert_ne!(seen[19].1, Arc::as_ptr(&shared) as usize);
    }

    keys.invalidate(&[&lookup]);
    records.invalidate("acc_1");
    assert_eq!(read_key(), None, "invalidated on another thread");
    assert_eq!(read_record(), None, "invalidated on another thread");

    keys.insert(&lookup, Arc::new("new".into()));
    records.insert("acc_1", Arc::new("new".into()));
    for _ in 0..20 {
        assert_eq!(read_key().unwrap().0, "new");
        assert_eq!(read_record().unwrap().0, "new");
    }
    // Replaced in place, without an invalidation first.
    keys.insert(&lookup, Arc::new("newer".into()));
    records.insert("acc_1", Arc::new("newer".into()));
    assert_eq!(read_key().unwrap().0, "newer");
    assert_eq!(read_record().unwrap().0, "newer");

    keys.invalidate_all();
    records.invalidate_all();
    assert_eq!(read_key(), None);
    assert_eq!(read_record(), None);
}

/// A thread's copy keeps the shared entry's time-to-live.
#[test]
fn a_threads_own_copy_expires_with_the_entry() {
    let records: RecordCache<Arc<String>> = RecordCache::new(10, Duration::from_millis(50));
    records.insert("acc_1", Arc::new("Acme".into()));
    for _ in 0..20 {
        assert!(records.get("acc_1").is_some());
    }
    std::thread::sleep(Duration::from_millis(80));
    assert!(records.get("acc_1").is_none(), "past its time-to-live");
}
