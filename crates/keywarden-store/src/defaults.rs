//! The defaults of a deployment, written once: the server's configuration
//! (`docs/configuration.md`) and the embedded layer's builder both start from these, so a
//! service and `keywarden serve` on one database accept the same keys. `keywarden init`
//! writes them into its commented template; a test checks that the three agree.

use crate::verifier::PlanLimits;
use keywarden_core::limits::RateLimit;

/// The key template: `kw_{type}_{mode}_{random:32}{checksum}`.
pub const TEMPLATE: &str = "kw_{type}_{mode}_{random:32}{checksum}";

/// The database: a SQLite file in the working directory.
pub const DATABASE_URL: &str = "sqlite://keywarden.db";

/// The name of the one plan there is when none is configured, and the default plan.
pub const PLAN: &str = "default";

/// That plan's active keys per account.
pub const PLAN_MAX_KEYS: u64 = 100;

/// That plan's rate limit per key.
pub const PLAN_REQUESTS_PER_MINUTE: u32 = 600;

/// That plan's gateway requests in flight per key.
pub const PLAN_CONCURRENCY: u32 = 50;

/// The limits of that plan.
pub fn plan_limits() -> PlanLimits {
    PlanLimits {
        max_keys: Some(PLAN_MAX_KEYS),
        rate: Some(RateLimit::per_minute(PLAN_REQUESTS_PER_MINUTE)),
        concurrency: Some(PLAN_CONCURRENCY),
        quotas: Vec::new(),
        features: Vec::new(),
    }
}
