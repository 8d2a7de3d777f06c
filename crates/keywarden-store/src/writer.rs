//! The background writer that keeps database writes off the request path (`docs/operations.md#what-is-recorded`, `docs/operations.md#storage`).
//!
//! The request path hands what it must remember to a [`Writer`] with calls that neither wait
//! nor fail: key uses (`last_used_at` / `last_used_ip`), activity rows, usage increments and
//! request-path audit events such as `key.ip_denied`. Two tasks started by [`Writer::spawn`]
//! write them, each batch as one [`Store::write_batch`] transaction:
//! - the usage lane writes usage increments every `usage_flush_interval` (100 ms by
//!   default), apart from everything else, so a backlog of activity never holds usage
//!   back;
//! - the main lane writes key uses, activity and events every `flush_interval` (at most one
//!   second).
//!
//! Either lane writes sooner once `max_batch` of its records are waiting.
//!
//! What is kept while waiting:
//! - key uses coalesce per key (the latest use wins) and usage increments coalesce per
//!   account, mode, unit and period (amounts are summed), so neither grows with traffic, only
//!   with the number of distinct keys and counters, and neither is ever dropped;
//! - audit events are kept until written, however many;
//! - activity rows go to a bounded queue: when it is full, new rows are dropped and counted
//!   ([`Writer::dropped_activity`]), because activity is a convenience and memory is not.
//!
//! A failed write keeps its batch and is retried with a growing delay (capped at
//! [`MAX_BACKOFF`]); the request path is unaffected and keeps queueing. A write that failed
//! after its transaction had in fact committed (a connection lost on commit) is written again
//! on retry, so delivery is at least once.
//!
//! Durability of usage (see `docs/usage-durability.md`):
//! - [`UsageDurability::Batched`]: after a crash (or a kill), at most one
//!   `usage_flush_interval` of usage increments may be missing, plus the time one usage
//!   write takes; key uses, activity and request-path events, at most one `flush_interval`.
//!   While the database refuses writes, that is everything queued since it began to, which
//!   [`Writer::pending`] shows.
//! - [`UsageDurability::Strict`]: [`Writer::charge`] returns only once the increments are
//!   committed. Requests that arrive while a write is under way are committed together in
//!   the next one (a group commit), so a busy service pays one transaction per write, not per
//!   request. A charge that cannot be committed fails, and its increments are not retried.
//!
//! [`WriterHandle::shutdown`] writes everything pending before it returns, so a graceful
//! restart loses nothing in either mode.

use crate::cache::duplicate;
use crate::store::{
    DecisionCount, Granularity, KeyTouch, Store, StoreError, StoreResult, UsageDelta, WriteBatch,
};
use keywarden_core::model::{Activity, AuditEvent, Millis, Mode};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use thread_local::ThreadLocal;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest flush interval accepted: `last_used_at` is promised at most a second late, and
/// the interval bounds what a crash can lose.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How often usage increments are written unless configured otherwise: what a crash can
/// lose of them in the batched mode.
pub const DEFAULT_USAGE_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// When a usage increment is durable (`store.usage_durability`; see
/// `docs/usage-durability.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UsageDurability {
    /// Written within `usage_flush_interval`, off the request path: a crash loses at most
    /// that window's worth.
    #[default]
    Batched,
    /// Committed before the request that consumed it is answered.
    Strict,
}

impl UsageDurability {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageDurability::Batched => "batched",
            UsageDurability::Strict => "strict",
        }
    }
}

impl std::str::FromStr for UsageDurability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "batched" => Ok(UsageDurability::Batched),
            "strict" => Ok(UsageDurability::Strict),
            other => Err(format!("{other:?} is not \"batched\" or \"strict\"")),
        }
    }
}

/// First delay before retrying a failed write; it doubles on each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest delay between retries of a failed write, so a recovered database is used again
/// within seconds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How the writer batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// How often pending key uses, activity and events are written. Values above
    /// [`MAX_FLUSH_INTERVAL`] are lowered to it: this interval bounds both how stale
    /// `last_used_at` is and what a crash can lose of them.
    pub flush_interval: Duration,
    /// How often pending usage increments are written, apart from the rest; values above
    /// [`MAX_FLUSH_INTERVAL`] are lowered to it. In the batched mode this is what a crash
    /// can lose of usage.
    pub usage_flush_interval: Duration,
    /// Whether [`Writer::charge`] waits for the commit.
    pub usage_durability: UsageDurability,
    /// Most records per transaction; reaching it also triggers a flush before the interval
    /// ends, so a burst is written promptly in bounded transactions.
    pub max_batch: usize,
    /// Most activity rows queued for the next flush; further rows are dropped and counted,
    /// so a database outage cannot grow memory through activity.
    pub activity_queue: usize,
    /// Newest activity rows kept per key; older ones are trimmed as new ones are written.
    pub activity_retain_per_key: u32,
    /// How long [`WriterHandle::shutdown`] keeps retrying a failing write before it gives up
    /// and reports what is lost, so a dead database cannot hang a shutdown forever.
    pub shutdown_grace: Duration,
    /// How long decision counts are kept, per granularity (minute, hour, day), counted
    /// back from the newest decision written (`docs/analytics.md`).
    pub decision_retention: [Duration; 3],
}

/// The default retention of decision counts: minute buckets two days, hour buckets 31
/// days, day buckets 400 days.
pub const DEFAULT_DECISION_RETENTION: [Duration; 3] = [
    Duration::from_secs(2 * 86_400),
    Duration::from_secs(31 * 86_400),
    Duration::from_secs(400 * 86_400),
];

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            flush_interval: MAX_FLUSH_INTERVAL,
            usage_flush_interval: DEFAULT_USAGE_FLUSH_INTERVAL,
            usage_durability: UsageDurability::Batched,
            max_batch: 5_000,
            activity_queue: 100_000,
            activity_retain_per_key: 1_000,
            shutdown_grace: Duration::from_secs(10),
            decision_retention: DEFAULT_DECISION_RETENTION,
        }
    }
}

/// Identifies one usage counter, under which increments are summed while waiting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct UsageKey {
    account_id: String,
    mode: Mode,
    unit: String,
    period_start: Millis,
}

/// A map by key id, hashed with a seeded hasher faster than the standard one: each request
/// updates three of them.
type IdMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Records accepted from the request path and not yet handed to the flusher: one thread's
/// share, or all of them merged.
#[derive(Default)]
struct Pending {
    /// Latest use per key id: when and from where.
    touches: IdMap<(Millis, Option<String>)>,
    /// Activity rows per key id, oldest first, at most `activity_retain_per_key` each.
    activity: IdMap<KeyActivity>,
    /// Activity rows held in `activity`.
    activity_len: usize,
    /// Decision counts per key id: its account and mode, and `(minute, code, count)`.
    decisions: IdMap<KeyTally>,
    /// Decision counts of no known key: `(minute, code, count)`.
    unknown: Vec<(Millis, &'static str, u64)>,
    /// Tallies held in `decisions` and `unknown`.
    decisions_len: usize,
}

/// A key's decision counts waiting for the next flush.
struct KeyTally {
    account_id: String,
    mode: Mode,
    counts: Vec<(Millis, &'static str, u64)>,
}

/// Adds `n` decisions to a list of `(minute, code, count)`; true when it made a new entry.
fn tally(
    counts: &mut Vec<(Millis, &'static str, u64)>,
    minute: Millis,
    code: &'static str,
    n: u64,
) -> bool {
    match counts
        .iter_mut()
        .find(|(m, c, _)| *m == minute && *c == code)
    {
        Some(entry) => {
            entry.2 += n;
            false
        }
        None => {
            counts.push((minute, code, n));
            true
        }
    }
}

impl Pending {
    fn len(&self) -> usize {
        self.touches.len() + self.activity_len + self.decisions_len
    }

    /// Keeps a key's latest use (`at`, client IP): an earlier one is ignored.
    fn touch(&mut self, key_id: &str, at: Millis, ip: Option<&str>) {
        match self.touches.get_mut(key_id) {
            Some(latest) if latest.0 > at => {}
            Some(latest) => {
                latest.0 = at;
                set_opt(&mut latest.1, ip);
            }
            None => {
                self.touches
                    .insert(key_id.to_owned(), (at, ip.map(str::to_owned)));
            }
        }
    }

    /// Queues a key's activity row, saying `said`; false when the queue is full and the
    /// row is dropped. A key's queued rows never outnumber the rows kept per key (`retain`;
    /// 0: no such bound): once it holds that many, a new row takes the place of its oldest,
    /// which the next write would have trimmed anyway. Otherwise the row is added if `room`
    /// grants it a place in the whole queue.
    fn add_activity(
        &mut self,
        key_id: &str,
        at: Millis,
        said: Said<'_>,
        retain: usize,
        room: impl FnOnce() -> bool,
    ) -> bool {
        match self.activity.get_mut(key_id) {
            Some(queued) => {
                let full = retain > 0 && queued.rows.len() >= retain;
                if !full {
                    if !room() {
                        return false;
                    }
                    self.activity_len += 1;
                }
                queued.push(at, said);
                if full {
                    queued.drop_oldest();
                }
            }
            None => {
                if !room() {
                    return false;
                }
                self.activity_len += 1;
                let mut queued = KeyActivity::default();
                queued.push(at, said);
                self.activity.insert(key_id.to_owned(), queued);
            }
        }
        true
    }

    /// Adds another thread's records to these, coalescing as each thread does: the latest
    /// use per key, decision counts summed, and a key's activity rows cut to its newest
    /// `retain` (0: all kept).
    fn merge(&mut self, other: Pending, retain: usize) {
        use std::collections::hash_map::Entry;
        for (key_id, (at, ip)) in other.touches {
            match self.touches.entry(key_id) {
                Entry::Occupied(e) if e.get().0 > at => {}
                Entry::Occupied(mut e) => {
                    e.insert((at, ip));
                }
                Entry::Vacant(e) => {
                    e.insert((at, ip));
                }
            }
        }
        for (key_id, theirs) in other.activity {
            self.activity_len += theirs.rows.len();
            match self.activity.entry(key_id) {
                Entry::Occupied(mut e) => {
                    self.activity_len -= e.get_mut().absorb(theirs, retain);
                }
                Entry::Vacant(e) => {
                    e.insert(theirs);
                }
            }
        }
        for (key_id, theirs) in other.decisions {
            match self.decisions.entry(key_id) {
                Entry::Occupied(mut e) => {
                    let ours = &mut e.get_mut().counts;
                    for (minute, code, n) in theirs.counts {
                        if tally(ours, minute, code, n) {
                            self.decisions_len += 1;
                        }
                    }
                }
                Entry::Vacant(e) => {
                    self.decisions_len += theirs.counts.len();
                    e.insert(theirs);
                }
            }
        }
        for (minute, code, n) in other.unknown {
            if tally(&mut self.unknown, minute, code, n) {
                self.decisions_len += 1;
            }
        }
    }
}

/// What an activity row says besides its key and time.
#[derive(Clone, Copy)]
struct Said<'a> {
    ip: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    code: &'a str,
}

impl Said<'_> {
    fn of(row: &Activity) -> Said<'_> {
        Said {
            ip: row.ip.as_deref(),
            method: &row.method,
            path: &row.path,
            status: row.status,
            code: &row.code,
        }
    }

    fn is(&self, d: &Detail) -> bool {
        self.status == d.status
            && self.path == d.path
            && self.ip == d.ip.as_deref()
            && self.method == d.method
            && self.code == d.code
    }

    fn detail(&self) -> Detail {
        Detail {
            ip: self.ip.map(str::to_owned),
            method: self.method.to_owned(),
            path: self.path.to_owned(),
            status: self.status,
            code: self.code.to_owned(),
            rows: 0,
        }
    }

    /// Overwrites `d`, reusing its buffers.
    fn fill(&self, d: &mut Detail) {
        set_opt(&mut d.ip, self.ip);
        set(&mut d.method, self.method);
        set(&mut d.path, self.path);
        d.status = self.status;
        set(&mut d.code, self.code);
    }
}

/// What one or more queued rows of a key say besides their time.
struct Detail {
    ip: Option<String>,
    method: String,
    path: String,
    status: u16,
    code: String,
    /// Rows that say it; none: it is free for reuse.
    rows: u32,
}

/// A key's queued activity rows. A busy key's rows mostly say the same (one client, one
/// path), so each row is its time and the index of what it says, kept once: queueing a
/// row writes 16 bytes into a ring that stays in the cache, not a row's worth of strings
/// into the oldest of a thousand.
#[derive(Default)]
struct KeyActivity {
    /// Oldest first.
    rows: VecDeque<(Millis, u32)>,
    details: Vec<Detail>,
    /// Details no row says, for reuse.
    free: Vec<u32>,
    /// The detail the newest row says.
    last: u32,
}

impl KeyActivity {
    fn push(&mut self, at: Millis, said: Said<'_>) {
        let i = self.detail_for(said);
        self.rows.push_back((at, i));
    }

    fn detail_for(&mut self, said: Said<'_>) -> u32 {
        if let Some(d) = self.details.get_mut(self.last as usize) {
            if d.rows > 0 && said.is(d) {
                d.rows += 1;
                return self.last;
            }
        }
        let i = match self.free.pop() {
            Some(i) => {
                said.fill(&mut self.details[i as usize]);
                i
            }
            None => {
                self.details.push(said.detail());
                u32::try_from(self.details.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.details[i as usize].rows = 1;
        self.last = i;
        i
    }

    fn drop_oldest(&mut self) {
        if let Some((_, i)) = self.rows.pop_front() {
            let d = &mut self.details[i as usize];
            d.rows -= 1;
            if d.rows == 0 {
                self.free.push(i);
            }
        }
    }

    /// Takes in another thread's rows of the same key, then keeps the newest `retain` (0:
    /// all). Returns the number of rows cut.
    fn absorb(&mut self, other: KeyActivity, retain: usize) -> usize {
        let offset = u32::try_from(self.details.len()).unwrap_or(u32::MAX);
        self.details.extend(other.details);
        self.free.extend(other.free.into_iter().map(|i| i + offset));
        self.rows
            .extend(other.rows.into_iter().map(|(at, i)| (at, i + offset)));
        let mut cut = 0;
        if retain > 0 && self.rows.len() > retain {
            self.rows.make_contiguous().sort_by_key(|(at, _)| *at);
            while self.rows.len() > retain {
                self.drop_oldest();
                cut += 1;
            }
        }
        cut
    }

    /// The rows, oldest first, as written.
    fn into_rows(self, key_id: String) -> impl Iterator<Item = Activity> {
        let details = self.details;
        self.rows.into_iter().map(move |(at, i)| {
            let d = &details[i as usize];
            Activity {
                key_id: key_id.clone(),
                at,
                ip: d.ip.clone(),
                method: d.method.clone(),
                path: d.path.clone(),
                status: d.status,
                code: d.code.clone(),
            }
        })
    }
}

/// Usage increments accepted and not yet handed to the usage lane.
#[derive(Default)]
struct UsageQueue {
    /// Summed increments per counter, written within the usage interval.
    batched: HashMap<UsageKey, u64>,
    /// Summed increments of strict charges, written at once; their callers wait in
    /// `waiters`.
    strict: HashMap<UsageKey, u64>,
    waiters: Vec<oneshot::Sender<StoreResult<()>>>,
    /// The usage lane has stopped: a strict charge fails at once instead of waiting.
    stopped: bool,
}

impl UsageQueue {
    fn len(&self) -> usize {
        self.batched.len() + self.strict.len()
    }
}

/// Adds `delta` to its counter's sum in `sums`.
fn add_to(sums: &mut HashMap<UsageKey, u64>, delta: UsageDelta) {
    let UsageDelta {
        account_id,
        mode,
        unit,
        period_start,
        amount,
    } = delta;
    let key = UsageKey {
        account_id,
        mode,
        unit,
        period_start,
    };
    let sum = sums.entry(key).or_insert(0);
    *sum = sum.saturating_add(amount);
}

/// One thread's pending records, on cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
struct Lane(Mutex<Pending>);

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// State shared by every [`Writer`] clone and the flusher task.
struct Shared {
    /// The request path's records, in a lane per thread that adds them: serving threads
    /// neither wait for one another's lock nor pull one another's cache lines. The flusher
    /// takes every lane's.
    pending: ThreadLocal<Lane>,
    /// Audit events, in the order they came: they are few, and kept in one list.
    events: Mutex<Vec<AuditEvent>>,
    /// Records held in the lanes and `events` together. It changes only when a record is
    /// new (a busy key's records coalesce), so a busy key's request does not write it.
    pending_len: AtomicUsize,
    /// Activity rows held in the lanes, bounded by `activity_queue`.
    activity_len: AtomicUsize,
    usage: Mutex<UsageQueue>,
    /// Wakes the usage lane: a strict charge waits, or `max_batch` counters do.
    usage_due: Notify,
    /// Counters taken by the usage lane and not yet written.
    usage_in_flight: AtomicUsize,
    usage_durability: UsageDurability,
    /// Wakes the flusher when `max_batch` records are waiting.
    full: Notify,
    /// Records taken by the flusher and not yet written.
    in_flight: AtomicUsize,
    flushed_batches: AtomicU64,
    failed_flushes: AtomicU64,
    dropped_activity: AtomicU64,
    max_batch: usize,
    activity_queue: usize,
    /// `activity_retain_per_key` (0: no per-key bound).
    activity_retain: usize,
}

impl Shared {
    /// Runs `add` on this thread's pending records, then wakes the flusher if a batch is
    /// full.
    fn with_pending(&self, add: impl FnOnce(&mut Pending)) {
        let lane = self.pending.get_or_default();
        let mut p = lane.lock();
        let before = p.len();
        add(&mut p);
        let added = p.len().saturating_sub(before);
        // Counted under the lane's lock, which `take_all` holds as it subtracts the lane's.
        let full = added > 0 && self.counted(added);
        drop(p);
        if full {
            self.full.notify_one();
        }
    }

    /// Adds `added` new records to the pending count; true when a batch is full.
    fn counted(&self, added: usize) -> bool {
        self.pending_len.fetch_add(added, Ordering::SeqCst) + added >= self.max_batch
    }

    /// Takes a place in the activity queue for one row, if it has room.
    fn activity_room(&self) -> bool {
        self.activity_len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.activity_queue).then_some(n + 1)
            })
            .is_ok()
    }

    /// Adds an audit event, which is never dropped.
    fn push_event(&self, event: AuditEvent) {
        let full = {
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            events.push(event);
            self.counted(1)
        };
        if full {
            self.full.notify_one();
        }
    }

    /// Takes every pending record, counting them as in flight: the lanes' merged, and the
    /// events.
    fn take_all(&self) -> (Pending, Vec<AuditEvent>) {
        let mut all = Pending::default();
        let mut taken = 0;
        for lane in self.pending.iter() {
            let mut p = lane.lock();
            let n = p.len();
            if n == 0 {
                continue;
            }
            // In flight before no longer pending, so `Writer::pending` never misses them.
            self.in_flight.fetch_add(n, Ordering::SeqCst);
            self.pending_len.fetch_sub(n, Ordering::SeqCst);
            self.activity_len
                .fetch_sub(p.activity_len, Ordering::Relaxed);
            taken += n;
            all.merge(std::mem::take(&mut *p), self.activity_retain);
        }
        // Records of one key from several threads became one.
        self.in_flight
            .fetch_sub(taken - all.len(), Ordering::SeqCst);
        let events = {
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            self.in_flight.fetch_add(events.len(), Ordering::SeqCst);
            self.pending_len.fetch_sub(events.len(), Ordering::SeqCst);
            std::mem::take(&mut *events)
        };
        (all, events)
    }

    fn usage_queue(&self) -> std::sync::MutexGuard<'_, UsageQueue> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the flusher is asked to do besides its periodic flush.
enum Command {
    /// Write everything pending now and report how it went.
    Flush(oneshot::Sender<StoreResult<()>>),
    /// Write everything pending, then stop.
    Shutdown,
}

/// The request path's side of the writer: cheap to clone, and every method returns at once
/// without waiting for the database or failing.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    usage_commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("pending", &self.pending())
            .field("flushed_batches", &self.flushed_batches())
            .field("dropped_activity", &self.dropped_activity())
            .finish_non_exhaustive()
    }
}

/// The owner's side of the writer: stops it, writing everything pending first.
#[derive(Debug)]
pub struct WriterHandle {
    writer: Writer,
    task: JoinHandle<()>,
    usage_task: JoinHandle<()>,
}

impl Writer {
    /// Starts the flusher task on the current Tokio runtime (so it must be called inside
    /// one) and returns the request path's handle and the owner's handle.
    pub fn spawn(store: Arc<dyn Store>, cfg: WriterConfig) -> (Writer, WriterHandle) {
        let cfg = WriterConfig {
            flush_interval: cfg
                .flush_interval
                .clamp(Duration::from_millis(1), MAX_FLUSH_INTERVAL),
            usage_flush_interval: cfg
                .usage_flush_interval
                .clamp(Duration::from_millis(1), MAX_FLUSH_INTERVAL),
            max_batch: cfg.max_batch.max(1),
            ..cfg
        };
        let shared = Arc::new(Shared {
            pending: ThreadLocal::new(),
            events: Mutex::new(Vec::new()),
            pending_len: AtomicUsize::new(0),
            activity_len: AtomicUsize::new(0),
            usage: Mutex::new(UsageQueue::default()),
            usage_due: Notify::new(),
            usage_in_flight: AtomicUsize::new(0),
            usage_durability: cfg.usage_durability,
            full: Notify::new(),
            in_flight: AtomicUsize::new(0),
            flushed_batches: AtomicU64::new(0),
            failed_flushes: AtomicU64::new(0),
            dropped_activity: AtomicU64::new(0),
            max_batch: cfg.max_batch,
            activity_queue: cfg.activity_queue,
            activity_retain: cfg.activity_retain_per_key as usize,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (usage_tx, usage_rx) = mpsc::unbounded_channel();
        let lane = UsageLane {
            shared: shared.clone(),
            store: store.clone(),
            cfg,
            commands: usage_rx,
            held: HashMap::new(),
        };
        let usage_task = tokio::spawn(lane.run());
        let flusher = Flusher {
            shared: shared.clone(),
            store,
            cfg,
            commands: rx,
            backlog: Backlog::default(),
            held: None,
            newest_decision: Millis::MIN,
            pruned_at: Millis::MIN,
        };
        let task = tokio::spawn(flusher.run());
        let writer = Writer {
            shared,
            commands: tx,
            usage_commands: usage_tx,
        };
        let handle = WriterHandle {
            writer: writer.clone(),
            task,
            usage_task,
        };
        (writer, handle)
    }

    /// Records one use of a key from the request path: its activity row, and its last use
    /// when `success`. One lock for both; a busy key's row that says what its previous one
    /// said is its time and an index, so a request allocates nothing here once its key is
    /// in the queue.
    pub fn used(&self, u: &KeyUse<'_>, success: bool) {
        let retain = self.shared.activity_retain;
        let mut ip_buf = [0u8; keywarden_core::ip::IP_TEXT_MAX];
        let ip = u.ip.map(|ip| last_ip_text(ip, &mut ip_buf));
        let said = Said {
            ip,
            method: prefix(u.method, METHOD_MAX),
            path: prefix(u.path, PATH_MAX),
            status: u.status,
            code: u.code,
        };
        let mut dropped = false;
        self.shared.with_pending(|p| {
            if success {
                p.touch(u.key_id, u.at, ip);
            }
            dropped = !p.add_activity(u.key_id, u.at, said, retain, || self.shared.activity_room());
        });
        if dropped {
            self.shared.dropped_activity.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one decision for analytics: under its key, account and mode when a key was
    /// recognised, else in the deployment's totals only. Counts of one key, minute and code
    /// add up until the next flush, so a busy key allocates nothing here.
    pub fn decided(&self, key: Option<(&str, &str, Mode)>, code: &'static str, at: Millis) {
        let minute = Granularity::Minute.bucket(at);
        self.shared.with_pending(|p| {
            let added = match key {
                Some((key_id, account_id, mode)) => match p.decisions.get_mut(key_id) {
                    Some(t) => tally(&mut t.counts, minute, code, 1),
                    None => {
                        p.decisions.insert(
                            key_id.to_owned(),
                            KeyTally {
                                account_id: account_id.to_owned(),
                                mode,
                                counts: vec![(minute, code, 1)],
                            },
                        );
                        true
                    }
                },
                None => tally(&mut p.unknown, minute, code, 1),
            };
            if added {
                p.decisions_len += 1;
            }
        });
    }

    /// Records a successful use of a key. Uses of one key coalesce until the next flush:
    /// the one with the latest `at` is written.
    pub fn touch(&self, touch: KeyTouch) {
        self.shared
            .with_pending(|p| p.touch(&touch.key_id, touch.at, touch.ip.as_deref()));
    }

    /// Queues an activity row, or drops and counts it when the activity queue is full.
    ///
    /// A key's queued rows never outnumber the rows kept per key: a newer row replaces the
    /// key's oldest queued one. So a busy key costs at most `activity_retain_per_key` rows
    /// per flush, whatever its traffic.
    pub fn activity(&self, row: Activity) {
        let retain = self.shared.activity_retain;
        let mut dropped = false;
        self.shared.with_pending(|p| {
            dropped = !p.add_activity(&row.key_id, row.at, Said::of(&row), retain, || {
                self.shared.activity_room()
            });
        });
        if dropped {
            self.shared.dropped_activity.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a usage increment, written within the usage interval whatever the durability
    /// mode. Increments of one counter are summed until the next write; none is ever
    /// dropped.
    pub fn usage(&self, delta: UsageDelta) {
        if delta.amount == 0 {
            return;
        }
        let len = {
            let mut q = self.shared.usage_queue();
            add_to(&mut q.batched, delta);
            q.len()
        };
        if len >= self.shared.max_batch {
            self.shared.usage_due.notify_one();
        }
    }

    /// The usage durability this writer was started with.
    pub fn usage_durability(&self) -> UsageDurability {
        self.shared.usage_durability
    }

    /// Records the usage a request consumed, as the durability mode says: batched, it is
    /// queued like [`Writer::usage`] and this returns at once; strict, this returns once the
    /// increments are committed, together with those of every other charge that came
    /// meanwhile. A strict charge that fails is not retried: its caller should give the units
    /// back and answer that the request could not be counted.
    pub async fn charge(&self, deltas: Vec<UsageDelta>) -> StoreResult<()> {
        let deltas = deltas.into_iter().filter(|d| d.amount > 0);
        if self.shared.usage_durability == UsageDurability::Batched {
            deltas.for_each(|d| self.usage(d));
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.usage_queue();
            if q.stopped {
                return Err(stopped());
            }
            let mut any = false;
            for d in deltas {
                add_to(&mut q.strict, d);
                any = true;
            }
            if !any {
                return Ok(());
            }
            q.waiters.push(tx);
        }
        self.shared.usage_due.notify_one();
        rx.await.map_err(|_| stopped())?
    }

    /// Queues an audit event raised on the request path; it is never dropped.
    pub fn event(&self, event: AuditEvent) {
        self.shared.push_event(event);
    }

    /// Writes everything pending now and waits for it: for tests, and for callers that must
    /// read their own writes. Fails with the store's error when the write fails (the batch is
    /// kept and retried later) or when the writer has stopped.
    pub async fn flush_now(&self) -> StoreResult<()> {
        let ask = |commands: &mpsc::UnboundedSender<Command>| {
            let (tx, rx) = oneshot::channel();
            let sent = commands.send(Command::Flush(tx));
            async move {
                sent.map_err(|_| stopped())?;
                rx.await.map_err(|_| stopped())?
            }
        };
        let (usage, rest) = tokio::join!(ask(&self.usage_commands), ask(&self.commands));
        usage.and(rest)
    }

    /// Records accepted and not yet written (including a batch being written or retried).
    /// Coalesced uses count once per key and thread that recorded them, increments once per
    /// counter.
    pub fn pending(&self) -> usize {
        let queued = self.shared.pending_len.load(Ordering::SeqCst);
        let usage = self.shared.usage_queue().len();
        queued
            + usage
            + self.shared.in_flight.load(Ordering::SeqCst)
            + self.shared.usage_in_flight.load(Ordering::SeqCst)
    }

    /// Batches written successfully since the start.
    pub fn flushed_batches(&self) -> u64 {
        self.shared.flushed_batches.load(Ordering::SeqCst)
    }

    /// Failed write attempts since the start (each is retried).
    pub fn failed_flushes(&self) -> u64 {
        self.shared.failed_flushes.load(Ordering::SeqCst)
    }

    /// Activity rows dropped because the activity queue was full.
    pub fn dropped_activity(&self) -> u64 {
        self.shared.dropped_activity.load(Ordering::Relaxed)
    }
}

impl WriterHandle {
    /// The request path's handle of the same writer.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Writes everything pending and stops the flusher, for a graceful shutdown. A failing
    /// write is retried for up to `shutdown_grace`; what still could not be written then is
    /// reported in an error log. Records handed to a [`Writer`] afterwards are not written.
    pub async fn shutdown(self) {
        // A send error means the flusher already stopped; waiting for it is still right.
        let _ = self.writer.commands.send(Command::Shutdown);
        let _ = self.writer.usage_commands.send(Command::Shutdown);
        for task in [self.task, self.usage_task] {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the background writer ended abnormally");
            }
        }
    }
}

/// Records taken from [`Pending`] and waiting to be written, in chunks of `max_batch`.
#[derive(Default)]
struct Backlog {
    events: Vec<AuditEvent>,
    touches: Vec<KeyTouch>,
    activity: Vec<Activity>,
    decisions: Vec<DecisionCount>,
}

impl Backlog {
    fn from_pending((p, events): (Pending, Vec<AuditEvent>)) -> Self {
        let count = |key: Option<(String, String, Mode)>| {
            move |(minute, code, count): (Millis, &'static str, u64)| DecisionCount {
                minute,
                key: key.clone(),
                code: code.to_owned(),
                count,
            }
        };
        let mut decisions: Vec<DecisionCount> = p.unknown.into_iter().map(count(None)).collect();
        for (key_id, t) in p.decisions {
            let key = Some((key_id, t.account_id, t.mode));
            decisions.extend(t.counts.into_iter().map(count(key)));
        }
        Backlog {
            decisions,
            events,
            touches: p
                .touches
                .into_iter()
                .map(|(key_id, (at, ip))| KeyTouch { key_id, at, ip })
                .collect(),
            activity: p
                .activity
                .into_iter()
                .flat_map(|(key_id, queued)| queued.into_rows(key_id))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.touches.is_empty()
            && self.activity.is_empty()
            && self.decisions.is_empty()
    }

    /// Splits off at most `max` records as one batch: events first, as the records that
    /// matter most. Taken from the tail, so each chunk costs only its own size.
    fn chunk(&mut self, max: usize, retain: u32) -> (WriteBatch, usize) {
        let mut room = max;
        let batch = WriteBatch {
            usage: Vec::new(),
            events: tail(&mut self.events, &mut room),
            touches: tail(&mut self.touches, &mut room),
            activity: tail(&mut self.activity, &mut room),
            decisions: tail(&mut self.decisions, &mut room),
            activity_retain_per_key: retain,
        };
        (batch, max - room)
    }
}

/// Splits off the last `room` items of `v` (or all of them), deducting them from `room`.
fn tail<T>(v: &mut Vec<T>, room: &mut usize) -> Vec<T> {
    let n = (*room).min(v.len());
    *room -= n;
    v.split_off(v.len() - n)
}

/// The task that writes batches.
struct Flusher {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Records taken from the request path, written chunk by chunk.
    backlog: Backlog,
    /// The chunk being written, kept across failures until it lands, with its size.
    held: Option<(WriteBatch, usize)>,
    /// The newest minute of a decision count written; retention counts back from it, so
    /// it follows the service's clock.
    newest_decision: Millis,
    /// `newest_decision` when old decision buckets were last pruned.
    pruned_at: Millis,
}

/// Old decision buckets are pruned at most once per this many milliseconds of decisions.
const PRUNE_EVERY_MS: Millis = 10 * 60_000;

impl Flusher {
    /// Deletes decision buckets past their retention, at most every [`PRUNE_EVERY_MS`].
    async fn prune_decisions(&mut self) {
        if self.newest_decision == Millis::MIN
            || self.newest_decision.saturating_sub(self.pruned_at) < PRUNE_EVERY_MS
        {
            return;
        }
        self.pruned_at = self.newest_decision;
        for (g, keep) in Granularity::ALL
            .into_iter()
            .zip(self.cfg.decision_retention)
        {
            let keep = Millis::try_from(keep.as_millis()).unwrap_or(Millis::MAX);
            let before = self.newest_decision.saturating_sub(keep);
            if let Err(e) = self.store.prune_decision_counts(g, before).await {
                tracing::warn!(error = %e, "pruning old decision counts failed; retried later");
            }
        }
    }

    async fn run(mut self) {
        let mut backoff: Option<Duration> = None;
        let mut next = Instant::now() + self.cfg.flush_interval;
        loop {
            let command = tokio::select! {
                c = self.commands.recv() => Some(c),
                () = tokio::time::sleep_until(next) => None,
                // A full batch flushes early, but never cuts a retry delay short.
                () = self.shared.full.notified(), if backoff.is_none() => None,
            };
            let result = match command {
                None => self.flush().await,
                Some(Some(Command::Flush(reply))) => {
                    let result = self.flush().await;
                    // The asker may have given up waiting; the flush happened anyway.
                    let _ = reply.send(result.as_ref().map_err(duplicate).copied());
                    result
                }
                Some(Some(Command::Shutdown) | None) => {
                    self.drain_for_shutdown().await;
                    return;
                }
            };
            backoff = backoff_after(backoff, result.is_ok());
            next = Instant::now() + backoff.unwrap_or(self.cfg.flush_interval);
        }
    }

    /// Writes everything pending when it starts, one chunk of at most `max_batch` records
    /// per transaction. On failure the failed chunk and the rest stay for the next attempt.
    async fn flush(&mut self) -> StoreResult<()> {
        if self.held.is_none() && self.backlog.is_empty() {
            self.backlog = Backlog::from_pending(self.shared.take_all());
        }
        loop {
            let (batch, records) = match self.held.take() {
                Some(held) => held,
                None if self.backlog.is_empty() => {
                    self.prune_decisions().await;
                    return Ok(());
                }
                None => self
                    .backlog
                    .chunk(self.cfg.max_batch, self.cfg.activity_retain_per_key),
            };
            match self.store.write_batch(&batch).await {
                Ok(()) => {
                    self.shared.in_flight.fetch_sub(records, Ordering::SeqCst);
                    self.shared.flushed_batches.fetch_add(1, Ordering::SeqCst);
                    if let Some(m) = batch.decisions.iter().map(|d| d.minute).max() {
                        self.newest_decision = self.newest_decision.max(m);
                    }
                }
                Err(e) => {
                    self.shared.failed_flushes.fetch_add(1, Ordering::SeqCst);
                    // The error comes from the database and names no record content.
                    tracing::warn!(
                        error = %e,
                        records,
                        "writing a batch of key uses, activity and events failed; \
                         it is kept and retried"
                    );
                    self.held = Some((batch, records));
                    return Err(e);
                }
            }
        }
    }

    /// Writes until nothing is pending, retrying failures until `shutdown_grace` runs out.
    async fn drain_for_shutdown(&mut self) {
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.flush().await {
                Ok(()) if self.pending_len() == 0 => return,
                // More arrived while writing: write it too, without waiting.
                Ok(()) => continue,
                Err(_) => {}
            }
            if Instant::now() + backoff > deadline {
                tracing::error!(
                    records = self.shared.in_flight.load(Ordering::SeqCst) + self.pending_len(),
                    "the background writer is stopping with records it could not write"
                );
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn pending_len(&self) -> usize {
        self.shared.pending_len.load(Ordering::SeqCst)
    }
}

/// The error of a call to a writer that has stopped.
fn stopped() -> StoreError {
    StoreError::Database("the background writer has stopped".into())
}

/// The task that writes usage increments, apart from everything else (see the module
/// documentation).
struct UsageLane {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Batched increments whose write failed, summed with later ones until one lands.
    held: HashMap<UsageKey, u64>,
}

impl UsageLane {
    async fn run(mut self) {
        let mut backoff: Option<Duration> = None;
        let mut next = Instant::now() + self.cfg.usage_flush_interval;
        loop {
            let command = tokio::select! {
                c = self.commands.recv() => Some(c),
                () = tokio::time::sleep_until(next) => None,
                () = self.shared.usage_due.notified() => None,
            };
            let result = match command {
                None => {
                    // During a retry delay only a strict charge (its caller waits) is worth
                    // an early attempt; a full batch waits for the delay to end.
                    if backoff.is_some() && Instant::now() < next && !self.strict_waiting() {
                        continue;
                    }
                    self.write().await
                }
                Some(Some(Command::Flush(reply))) => {
                    let result = self.write().await;
                    let _ = reply.send(result.as_ref().map_err(duplicate).copied());
                    result
                }
                Some(Some(Command::Shutdown) | None) => {
                    self.drain_for_shutdown().await;
                    return;
                }
            };
            backoff = backoff_after(backoff, result.is_ok());
            next = Instant::now() + backoff.unwrap_or(self.cfg.usage_flush_interval);
        }
    }

    fn strict_waiting(&self) -> bool {
        !self.shared.usage_queue().waiters.is_empty()
    }

    /// Writes the increments held from a failed write and everything queued, strict charges
    /// first, in transactions of at most `max_batch` counters. Strict callers learn whether
    /// their increments were committed; batched increments that were not are held for the
    /// next attempt.
    async fn write(&mut self) -> StoreResult<()> {
        let (batched, strict, waiters) = {
            let mut q = self.shared.usage_queue();
            let taken = (
                std::mem::take(&mut q.batched),
                std::mem::take(&mut q.strict),
                std::mem::take(&mut q.waiters),
            );
            // Counted in flight while still under the lock, so `pending` never misses them.
            self.shared.usage_in_flight.store(
                self.held.len() + taken.0.len() + taken.1.len(),
                Ordering::SeqCst,
            );
            taken
        };
        for (k, n) in batched {
            let sum = self.held.entry(k).or_insert(0);
            *sum = sum.saturating_add(n);
        }
        let strict_len = strict.len();
        let rows: Vec<(UsageKey, u64)> = strict
            .into_iter()
            .chain(std::mem::take(&mut self.held))
            .collect();
        let delta = |(k, amount): &(UsageKey, u64)| UsageDelta {
            account_id: k.account_id.clone(),
            mode: k.mode,
            unit: k.unit.clone(),
            period_start: k.period_start,
            amount: *amount,
        };
        let mut written = 0;
        let mut failure = None;
        for chunk in rows.chunks(self.cfg.max_batch) {
            let batch = WriteBatch {
                usage: chunk.iter().map(delta).collect(),
                activity_retain_per_key: self.cfg.activity_retain_per_key,
                ..WriteBatch::default()
            };
            match self.store.write_batch(&batch).await {
                Ok(()) => {
                    written += chunk.len();
                    self.shared.flushed_batches.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    self.shared.failed_flushes.fetch_add(1, Ordering::SeqCst);
                    // The error comes from the database and names no record content.
                    tracing::warn!(
                        error = %e,
                        counters = rows.len() - written,
                        "writing usage failed; batched usage is kept and retried"
                    );
                    failure = Some(e);
                    break;
                }
            }
        }
        // What was not written: batched increments wait for the next attempt; strict ones
        // are given up, their callers told.
        let strict_result = match &failure {
            Some(e) if written < strict_len => Err(duplicate(e)),
            _ => Ok(()),
        };
        for (k, n) in rows.into_iter().skip(written.max(strict_len)) {
            self.held.insert(k, n);
        }
        self.shared
            .usage_in_flight
            .store(self.held.len(), Ordering::SeqCst);
        for w in waiters {
            let _ = w.send(strict_result.as_ref().map_err(duplicate).copied());
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes until nothing is queued or held, retrying failures until `shutdown_grace`
    /// runs out; then refuses further strict charges.
    async fn drain_for_shutdown(&mut self) {
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let ok = self.write().await.is_ok();
            let left = self.held.len() + self.shared.usage_queue().len();
            if left == 0 {
                break;
            }
            if ok {
                // More arrived while writing: write it too, without waiting.
                continue;
            }
            if Instant::now() + backoff > deadline {
                tracing::error!(
                    counters = left,
                    "the background writer is stopping with usage it could not write"
                );
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let waiters = {
            let mut q = self.shared.usage_queue();
            q.stopped = true;
            std::mem::take(&mut q.waiters)
        };
        for w in waiters {
            let _ = w.send(Err(stopped()));
        }
    }
}

/// One use of a key, borrowed from the request (see [`Writer::used`]).
#[derive(Clone, Copy, Debug)]
pub struct KeyUse<'a> {
    /// The key used.
    pub key_id: &'a str,
    /// When.
    pub at: Millis,
    /// The client IP, if known.
    pub ip: Option<std::net::IpAddr>,
    /// The original request's method (the first 16 bytes are kept).
    pub method: &'a str,
    /// The original request's path (the first 512 bytes are kept).
    pub path: &'a str,
    /// The status answered.
    pub status: u16,
    /// The decision code.
    pub code: &'a str,
}

/// Longest method and path an activity row keeps.
const METHOD_MAX: usize = 16;
const PATH_MAX: usize = 512;

/// `ip` as text, written into `buf`. The last address written on this thread is kept: a
/// busy client's requests, one after another, then copy its text instead of writing it.
fn last_ip_text(ip: std::net::IpAddr, buf: &mut [u8; keywarden_core::ip::IP_TEXT_MAX]) -> &str {
    type Kept = Option<(
        std::net::IpAddr,
        [u8; keywarden_core::ip::IP_TEXT_MAX],
        usize,
    )>;
    thread_local! {
        static LAST: std::cell::Cell<Kept> = const { std::cell::Cell::new(None) };
    }
    let len = match LAST.get() {
        Some((kept, text, len)) if kept == ip => {
            *buf = text;
            len
        }
        _ => {
            let len = keywarden_core::ip::ip_text(ip, buf).len();
            LAST.set(Some((ip, *buf, len)));
            len
        }
    };
    // Written by `ip_text`: ASCII.
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn set(buf: &mut String, value: &str) {
    buf.clear();
    buf.push_str(value);
}

fn set_opt(buf: &mut Option<String>, value: Option<&str>) {
    match (buf.as_mut(), value) {
        (Some(b), Some(v)) => set(b, v),
        (_, v) => *buf = v.map(str::to_owned),
    }
}

/// The retry delay after a write: none after a success, else doubled from the last one (from
/// `FIRST_BACKOFF`, up to `MAX_BACKOFF`).
fn backoff_after(last: Option<Duration>, ok: bool) -> Option<Duration> {
    if ok {
        None
    } else {
        Some(last.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_written_as_itself_whichever_came_before() {
        let addresses = [
            "203.0.113.7",
            "2001:db8::1",
            "203.0.113.7",
            "10.0.0.1",
            "10.0.0.1",
        ];
        for text in addresses {
            let mut buf = [0u8; keywarden_core::ip::IP_TEXT_MAX];
            assert_eq!(last_ip_text(text.parse().unwrap(), &mut buf), text);
        }
    }
}
