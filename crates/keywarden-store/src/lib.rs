//! Keywarden's persistence: one [`Store`] trait with SQLite and PostgreSQL implementations,
//! the in-memory key cache that keeps the request path free of database reads, and the
//! batched writer that keeps it free of database writes.

pub mod store;

pub use store::{
    Census, DecisionCount, DecisionQuery, ErasureCounts, EventFilter, EventsOf, Granularity,
    Invalidation, KeyTouch, Page, Store, StoreError, StoreResult, UsageDelta, WriteBatch,
};

pub mod bounded;
mod open;
pub mod pepper;
pub mod postgres;
mod rows;
pub mod sqlite;

pub use bounded::{BoundedStore, Bounds};
pub use open::{migrate, open, open_with};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

pub mod cache;
pub mod counting;
mod near;
pub mod writer;

pub use cache::{CacheConfig, KeyCache, KeyResolver, Lookup, LookupKey, RecordCache};
pub use counting::{CountingStore, Pause};
pub use writer::{KeyUse, UsageDurability, Writer, WriterConfig, WriterHandle};

pub mod defaults;
pub mod limiter;
pub mod reply;
pub mod request;
pub mod verifier;
pub mod webhooks;

pub use limiter::redis::{RedisConfig, RedisLimiter, RedisStats};
pub use limiter::{Limiter, LimiterStats, LocalBounds, LocalLimiter, QuotaKey};
