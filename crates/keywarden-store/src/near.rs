//! Each thread's own copies of the cache entries it has read last, in front of a shared cache.
//!
//! A hit in a shared map takes its shard's read lock and clones the value, and both write
//! memory every other thread uses too (the lock's reader count, an `Arc`'s reference
//! count): when the serving threads read one busy key, those lines move between their
//! cores on every request. A thread's near entry is read and written by that thread only.
//!
//! A near entry is trusted while the cache's generation is the one it was read at and its
//! time-to-live (the shared entry's) has not run out. The shared cache moves its
//! generation after every removal of an entry that may be out of date, so a copy taken
//! before the removal is not used once it is done. An entry read often is copied deeply
//! (its `Arc`s made anew, [`Near::new`]'s `copy`) so that its reference counts are the
//! thread's own too; one read once is kept as the shared map's clone.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash};
use thread_local::ThreadLocal;

/// Entries per thread, direct-mapped by the key's hash.
const SLOTS: usize = 64;

/// Hits after which an entry is copied deeply.
const COPY_AFTER: u32 = 8;

/// The near entries of every thread, for one shared cache and its clones.
pub(crate) struct Near<K: Send, V: Send> {
    threads: ThreadLocal<RefCell<Slots<K, V>>>,
    copy: fn(&V) -> V,
    hasher: foldhash::fast::FixedState,
}

/// One thread's entries, by slot.
type Slots<K, V> = Vec<Option<Entry<K, V>>>;

struct Entry<K, V> {
    key: K,
    value: V,
    /// The shared entry's expiry, on the cache's own clock.
    until: u64,
    /// The cache's generation when the shared entry was read.
    generation: u64,
    /// Hits since it was put here, up to [`COPY_AFTER`].
    hits: u32,
}

impl<K: Hash + Eq + Send, V: Clone + Send> Near<K, V> {
    /// Near entries whose values, once read often, are copied with `copy`.
    pub(crate) fn new(copy: fn(&V) -> V) -> Self {
        Near {
            threads: ThreadLocal::new(),
            copy,
            hasher: foldhash::fast::FixedState::with_seed(0x6b77_6e65_6172),
        }
    }

    fn slot<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) >> 58) as usize % SLOTS
    }

    /// This thread's value for `key`, if it holds one read at `generation` that is still
    /// alive at `now`.
    pub(crate) fn get<Q>(&self, key: &Q, now: u64, generation: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.slot(key);
        let mut entries = self.threads.get()?.borrow_mut();
        let e = entries.get_mut(slot)?.as_mut()?;
        if e.generation != generation || now >= e.until || e.key.borrow() != key {
            return None;
        }
        if e.hits < COPY_AFTER {
            e.hits += 1;
            if e.hits == COPY_AFTER {
                e.value = (self.copy)(&e.value);
            }
        }
        Some(e.value.clone())
    }

    /// Keeps `value`, read from the shared cache at `generation`, for this thread.
    pub(crate) fn put(&self, key: K, value: &V, until: u64, generation: u64) {
        let slot = self.slot(&key);
        let cell = self
            .threads
            .get_or(|| RefCell::new((0..SLOTS).map(|_| None).collect()));
        cell.borrow_mut()[slot] = Some(Entry {
            key,
            value: value.clone(),
            until,
            generation,
            hits: 0,
        });
    }
}

impl<K: Send, V: Send> std::fmt::Debug for Near<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near").finish_non_exhaustive()
    }
}
