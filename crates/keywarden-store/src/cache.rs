//! The in-memory key cache that keeps database reads off the request path (`docs/concepts.md#secret-storage`, `docs/operations.md#storage`).
//!
//! [`KeyCache`] maps a lookup value (the indexed form of a presented token: an HMAC or SHA-256
//! digest, or a slow-hash lookup segment) to whatever the caller builds from the matching key
//! records, and remembers lookups that matched nothing in a separate, smaller negative cache,
//! so a client retrying an unknown key does not reach the database on every request either.
//! Both caches are bounded in entries and carry a time-to-live: invalidation on every write is
//! the primary way entries go stale, and the TTL is the backstop for writes made by another
//! replica whose notification was missed.
//!
//! [`KeyResolver`] is the whole read path: a hit answers from memory without calling the
//! store, and concurrent misses for one lookup share a single store call.

use crate::near::Near;
use crate::store::{Store, StoreError};
use keywarden_core::clock::{coarse_between, coarse_nanos};
use keywarden_core::hashing::sha256;
use keywarden_core::model::KeyRecord;
use quick_cache::sync::Cache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Sizes and lifetimes of the key cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most lookups cached with their keys; the least useful go first when it is full, so
    /// memory stays bounded whatever the number of keys in the database.
    pub max_keys: u64,
    /// Longest time a cached key is trusted without being re-read. Writes invalidate at
    /// once; this only bounds how long a missed invalidation (another replica's write) lasts.
    pub ttl: Duration,
    /// Most lookups remembered as unknown. Kept apart from `max_keys` so a flood of random
    /// tokens can only evict other unknown lookups, never the working set of real keys.
    pub negative_max: u64,
    /// How long a lookup stays known to be unknown. Short, because a key created on another
    /// replica must start working soon even if its notification was missed.
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_keys: 1_000_000,
            ttl: Duration::from_secs(60),
            negative_max: 100_000,
            negative_ttl: Duration::from_secs(5),
        }
    }
}

/// What the cache knows about one lookup value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<V> {
    /// The lookup is cached with this value.
    Hit(V),
    /// The lookup was recently found to match no key.
    KnownMissing,
    /// The cache knows nothing: ask the store.
    Miss,
}

/// A lookup value as the cache holds it: 32 bytes. The fast schemes' lookups are hex
/// digests and are kept as the digest's bytes; anything else (a slow-hash lookup segment)
/// as its SHA-256. Both are one-to-one in practice, so two lookups never share an entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupKey([u8; 32]);

impl LookupKey {
    /// The cache key of a lookup value.
    pub fn of(lookup: &str) -> Self {
        lower_hex_digest(lookup).map_or_else(|| LookupKey(sha256(lookup.as_bytes())), LookupKey)
    }

    /// The cache key of a fast scheme's digest: what [`LookupKey::of`] makes of its hex.
    pub fn of_digest(digest: [u8; 32]) -> Self {
        LookupKey(digest)
    }
}

/// The 32 bytes a 64-digit lower-case hex string spells, read in one pass (every request
/// reads one); `None` for anything else.
fn lower_hex_digest(text: &str) -> Option<[u8; 32]> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let text: &[u8; 64] = text.as_bytes().try_into().ok()?;
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(bytes)
}

impl std::fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest of a secret: never printed.
        f.write_str("LookupKey(..)")
    }
}

/// A bounded cache of records by id (accounts, applications) with a time-to-live, checked
/// on every read. Clones share the same entries. Each thread keeps its own copies of the
/// entries it has read last, trusted until the next change to the cache (`near`).
pub struct RecordCache<V: Clone + Send + Sync + 'static> {
    /// Value and expiry (milliseconds since `epoch`) by id.
    entries: Arc<Cache<String, (V, u64)>>,
    ttl_ms: u64,
    /// When it was made, on the coarse clock ([`coarse_nanos`]): an entry's age is read on
    /// every request, and a few milliseconds either way do not matter to it.
    epoch: u64,
    /// Moved after every insertion and removal: a thread's near copy read before it is not
    /// used.
    generation: Arc<AtomicU64>,
    near: Arc<Near<String, V>>,
}

impl<V: Clone + Send + Sync + 'static> Clone for RecordCache<V> {
    fn clone(&self) -> Self {
        RecordCache {
            entries: self.entries.clone(),
            ttl_ms: self.ttl_ms,
            epoch: self.epoch,
            generation: self.generation.clone(),
            near: self.near.clone(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> std::fmt::Debug for RecordCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCache")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl<V: Clone + Send + Sync + 'static> RecordCache<V> {
    /// An empty cache of at most `max` records, each trusted for `ttl`.
    pub fn new(max: u64, ttl: Duration) -> Self {
        RecordCache {
            entries: Arc::new(Cache::new(
                usize::try_from(max.max(1)).unwrap_or(usize::MAX),
            )),
            ttl_ms: millis(ttl),
            epoch: coarse_nanos(),
            generation: Arc::new(AtomicU64::new(0)),
            near: Arc::new(Near::new(V::clone)),
        }
    }

    /// The same cache, whose threads copy a value they read often with `copy` (for an
    /// `Arc`, a new one around a clone of its content), so that its reference count is
    /// their own. Clones made before keep their own near entries, copied as before.
    pub fn copied_with(mut self, copy: fn(&V) -> V) -> Self {
        self.near = Arc::new(Near::new(copy));
        self
    }

    fn now_ms(&self) -> u64 {
        millis(coarse_between(self.epoch, coarse_nanos()))
    }

    /// The record cached under `id`, unless it has expired.
    pub fn get(&self, id: &str) -> Option<V> {
        let now = self.now_ms();
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(v) = self.near.get(id, now, generation) {
            return Some(v);
        }
        let (v, until) = self.entries.get(id)?;
        if now < until {
            self.near.put(id.to_owned(), &v, until, generation);
            return Some(v);
        }
        self.entries.remove_if(id, |(_, u)| *u <= now);
        None
    }

    /// Caches `v` under `id` for the time-to-live.
    pub fn insert(&self, id: &str, v: V) {
        let until = self.now_ms().saturating_add(self.ttl_ms);
        self.entries.insert(id.to_owned(), (v, until));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets `id`.
    pub fn invalidate(&self, id: &str) {
        self.entries.remove(id);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.entries.clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// One store call in progress for a lookup, shared by every request that misses on it
/// meanwhile. The cell holds the outcome: the value (or `None` for no key) or the error.
type Flight<V> = Arc<OnceCell<Result<Option<V>, Arc<StoreError>>>>;

/// A bounded cache of lookup values to built key values, with a negative cache of lookups
/// known to match nothing. Clones share the same entries.
///
/// Both maps are `quick_cache` maps (a few dozen bytes of overhead per entry, so a million
/// cached keys stay small); each entry carries the instant it stops being trusted, checked
/// on every read. In front of the positive map, each thread keeps its own copies of the
/// entries it has read last, trusted until the generation moves.
pub struct KeyCache<V: Clone + Send + Sync + 'static> {
    /// Value and expiry (milliseconds since `epoch`) by lookup.
    positive: Arc<Cache<LookupKey, (V, u64)>>,
    /// Expiry by lookup known to match nothing.
    negative: Arc<Cache<LookupKey, u64>>,
    ttl_ms: u64,
    negative_ttl_ms: u64,
    /// When it was made, on the coarse clock ([`coarse_nanos`]).
    epoch: u64,
    /// Bumped by every invalidation, before entries are dropped and again after. A fill
    /// that started before an invalidation may carry a record read before the write it
    /// reflects; comparing generations lets the fill drop what it cached instead of keeping
    /// a stale key until the TTL. A thread's near copy is used only at the generation it
    /// was read at.
    generation: Arc<AtomicU64>,
    near: Arc<Near<LookupKey, V>>,
    /// Store calls in progress, by lookup, so concurrent misses make one call.
    flights: Arc<Mutex<HashMap<LookupKey, Flight<V>>>>,
}

impl<V: Clone + Send + Sync + 'static> Clone for KeyCache<V> {
    fn clone(&self) -> Self {
        KeyCache {
            positive: self.positive.clone(),
            negative: self.negative.clone(),
            ttl_ms: self.ttl_ms,
            negative_ttl_ms: self.negative_ttl_ms,
            epoch: self.epoch,
            generation: self.generation.clone(),
            near: self.near.clone(),
            flights: self.flights.clone(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> std::fmt::Debug for KeyCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Lookup values are digests of secrets: count entries, never print them.
        f.debug_struct("KeyCache")
            .field("entries", &self.positive.len())
            .field("negative_entries", &self.negative.len())
            .finish_non_exhaustive()
    }
}

impl<V: Clone + Send + Sync + 'static> Default for KeyCache<V> {
    fn default() -> Self {
        KeyCache::new(CacheConfig::default())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<V: Clone + Send + Sync + 'static> KeyCache<V> {
    /// Makes an empty cache with these bounds.
    pub fn new(cfg: CacheConfig) -> Self {
        let capacity = |n: u64| usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        KeyCache {
            positive: Arc::new(Cache::new(capacity(cfg.max_keys))),
            negative: Arc::new(Cache::new(capacity(cfg.negative_max))),
            ttl_ms: millis(cfg.ttl),
            negative_ttl_ms: millis(cfg.negative_ttl),
            epoch: coarse_nanos(),
            generation: Arc::new(AtomicU64::new(0)),
            near: Arc::new(Near::new(V::clone)),
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same cache, whose threads copy a value they read often with `copy` (one that
    /// holds `Arc`s makes new ones around clones of their contents), so that its reference
    /// counts are their own. Clones made before keep their own near entries, copied as
    /// before.
    pub fn copied_with(mut self, copy: fn(&V) -> V) -> Self {
        self.near = Arc::new(Near::new(copy));
        self
    }

    fn now_ms(&self) -> u64 {
        millis(coarse_between(self.epoch, coarse_nanos()))
    }

    /// What the cache knows about `lookup`, without touching the store. A hit allocates
    /// nothing: it is a probe of the concurrent map and a clone of `V` (an `Arc` for the
    /// server). An expired entry is dropped and reads as a miss.
    pub fn get(&self, lookup: &str) -> Lookup<V> {
        self.get_key(&LookupKey::of(lookup))
    }

    fn get_key(&self, key: &LookupKey) -> Lookup<V> {
        let now = self.now_ms();
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(v) = self.near.get(key, now, generation) {
            return Lookup::Hit(v);
        }
        if let Some((v, until)) = self.positive.get(key) {
            if now < until {
                self.near.put(*key, &v, until, generation);
                return Lookup::Hit(v);
            }
            self.positive.remove_if(key, |(_, u)| *u <= now);
        } else if let Some(until) = self.negative.get(key) {
            if now < until {
                return Lookup::KnownMissing;
            }
            self.negative.remove_if(key, |u| *u <= now);
        }
        Lookup::Miss
    }

    /// Caches `v` under `lookup`, replacing any entry and any negative entry.
    pub fn insert(&self, lookup: &str, v: V) {
        self.insert_key(LookupKey::of(lookup), v);
        // A thread's near copy of the value it replaces is not used.
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn insert_key(&self, key: LookupKey, v: V) {
        self.negative.remove(&key);
        let until = self.now_ms().saturating_add(self.ttl_ms);
        self.positive.insert(key, (v, until));
    }

    /// Remembers that `lookup` matches no key, replacing any cached value.
    pub fn insert_missing(&self, lookup: &str) {
        self.insert_missing_key(LookupKey::of(lookup));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn insert_missing_key(&self, key: LookupKey) {
        self.positive.remove(&key);
        let until = self.now_ms().saturating_add(self.negative_ttl_ms);
        self.negative.insert(key, until);
    }

    /// Forgets everything about these lookups (cached values and negative entries alike),
    /// so the next resolution reads the store. Call it after any write to a key, with the
    /// lookups of its current and previous secrets, before and after the write.
    pub fn invalidate(&self, lookups: &[&str]) {
        // The generation moves first: a fill that checks it after this point drops its own
        // entry, and one that checked it before inserted before the removals below.
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        for lookup in lookups {
            let key = LookupKey::of(lookup);
            // A store call already in flight may have read the old record: later requests
            // must start their own instead of joining it.
            flights.remove(&key);
            self.positive.remove(&key);
            self.negative.remove(&key);
        }
        // And again: a thread's near copy read before the removals is not used.
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets every entry (after an erasure or anything else that touches many keys).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.positive.clear();
        self.negative.clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Number of cached lookups with a value, for metrics (expired entries count until a
    /// read or an eviction drops them).
    pub fn entry_count(&self) -> u64 {
        self.positive.len() as u64
    }

    /// Number of lookups remembered as unknown, for metrics; counted like
    /// [`entry_count`](Self::entry_count).
    pub fn negative_entry_count(&self) -> u64 {
        self.negative.len() as u64
    }

    /// The flight for `key`, joining the one in progress or starting one.
    fn flight(&self, key: LookupKey) -> Flight<V> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        flights.entry(key).or_default().clone()
    }

    /// Caches the outcome of a fill that started at generation `started`, unless an
    /// invalidation happened since.
    fn fill(&self, key: LookupKey, outcome: &Option<V>, started: u64) {
        if self.generation.load(Ordering::SeqCst) != started {
            return;
        }
        match outcome {
            Some(v) => self.insert_key(key, v.clone()),
            None => self.insert_missing_key(key),
        }
        // An invalidation between the check above and the insert did not see the new entry;
        // it moved the generation before its removals, so looking again catches it.
        if self.generation.load(Ordering::SeqCst) != started {
            self.positive.remove(&key);
            self.negative.remove(&key);
            // A thread may have copied the entry meanwhile.
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Removes a flight from the table when the store call that fills it ends, whether it
/// completes or its request is dropped midway; a later miss then starts afresh.
struct Landing<'a, V: Clone + Send + Sync + 'static> {
    cache: &'a KeyCache<V>,
    key: LookupKey,
    flight: &'a Flight<V>,
}

impl<V: Clone + Send + Sync + 'static> Drop for Landing<'_, V> {
    fn drop(&mut self) {
        let mut flights = self
            .cache
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The table may already hold a newer flight (after an invalidation): leave that one.
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

/// The read path for keys: the cache first, the store on a miss, with concurrent misses for
/// one lookup sharing a single store call.
pub struct KeyResolver<V: Clone + Send + Sync + 'static> {
    store: Arc<dyn Store>,
    cache: KeyCache<V>,
}

impl<V: Clone + Send + Sync + 'static> Clone for KeyResolver<V> {
    fn clone(&self) -> Self {
        KeyResolver {
            store: self.store.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> std::fmt::Debug for KeyResolver<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyResolver")
            .field("store", &self.store)
            .field("cache", &self.cache)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> KeyResolver<V> {
    /// Reads keys from `store` through `cache`.
    pub fn new(store: Arc<dyn Store>, cache: KeyCache<V>) -> Self {
        KeyResolver { store, cache }
    }

    /// The cache, to invalidate entries after writes.
    pub fn cache(&self) -> &KeyCache<V> {
        &self.cache
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The value for `lookup`: from memory on a hit (cached value or known to be unknown),
    /// with no store call; otherwise from one `find_keys_by_lookup` call shared with every
    /// concurrent miss on the same lookup, whose records `build` turns into the value.
    ///
    /// `build` is called only with a non-empty list (a lookup can match several records:
    /// a previous secret's lookup, or colliding slow-hash segments). `None` from it, like no
    /// record at all, is remembered as a known-unknown lookup. Store errors are not cached:
    /// the requests waiting on the failed call get the error, and the next miss tries again.
    pub async fn resolve(
        &self,
        lookup: &str,
        build: impl FnOnce(Vec<KeyRecord>) -> Option<V>,
    ) -> Result<Option<V>, StoreError> {
        self.resolve_key(
            LookupKey::of(lookup),
            || lookup.into(),
            |_, records| build(records),
        )
        .await
    }

    /// [`KeyCache::resolve`] by the lookup's cache key, the lookup value itself made by
    /// `lookup` only on a miss (a hit needs no text); `build` gets it with the records.
    pub async fn resolve_key<'l>(
        &self,
        key: LookupKey,
        lookup: impl FnOnce() -> std::borrow::Cow<'l, str>,
        build: impl FnOnce(&str, Vec<KeyRecord>) -> Option<V>,
    ) -> Result<Option<V>, StoreError> {
        match self.cache.get_key(&key) {
            Lookup::Hit(v) => return Ok(Some(v)),
            Lookup::KnownMissing => return Ok(None),
            Lookup::Miss => {}
        }
        let flight = self.cache.flight(key);
        let (cache, store, joined) = (&self.cache, &self.store, &flight);
        let outcome = flight
            .get_or_init(move || async move {
                // Whoever runs this is the one request that calls the store; if it is
                // dropped midway, a waiting request runs its own copy instead.
                let _landing = Landing {
                    cache,
                    key,
                    flight: joined,
                };
                let started = cache.generation.load(Ordering::SeqCst);
                let lookup = lookup();
                match store.find_keys_by_lookup(&lookup).await {
                    Ok(records) => {
                        let value = if records.is_empty() {
                            None
                        } else {
                            build(&lookup, records)
                        };
                        cache.fill(key, &value, started);
                        Ok(value)
                    }
                    Err(e) => Err(Arc::new(e)),
                }
            })
            .await;
        match outcome {
            Ok(v) => Ok(v.clone()),
            Err(e) => Err(duplicate(e)),
        }
    }
}

/// A copy of a store error, for each of several callers waiting on one failed call.
pub(crate) fn duplicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::LimitReached { max_active } => StoreError::LimitReached {
            max_active: *max_active,
        },
        StoreError::Database(m) => StoreError::Database(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_case_hex_digest_is_kept_as_its_bytes_and_anything_else_as_its_hash() {
        let digest: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
        let text = hex::encode(digest);
        assert_eq!(LookupKey::of(&text), LookupKey(digest));
        for other in [
            text.to_uppercase(),
            text[..62].to_string(),
            format!("{text}0"),
            format!("{}g", &text[..63]),
            "abc_segment".to_string(),
            String::new(),
        ] {
            assert_eq!(
                LookupKey::of(&other),
                LookupKey(sha256(other.as_bytes())),
                "{other}"
            );
        }
    }
}
