//! Resident memory per cached key: fills the key cache with what the verifier caches for
//! records shaped like the service's (built by the verifier's own code) and measures the
//! growth of the process's resident set. The allocator is the service binary's (mimalloc).
//!
//! Prints `BENCH cache_bytes_per_key <bytes> bytes` (1 000 000 keys; 100 000 with
//! `KEYWARDEN_BENCH_QUICK=1`).

mod common;

use keywarden_core::model::{HashScheme, StoredSecret};
use keywarden_core::scopes::{CatalogEntry, ScopeCatalog};
use keywarden_store::verifier::Candidates;
use keywarden_store::{CacheConfig, KeyCache};
use std::collections::BTreeMap;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    let quick = std::env::var("KEYWARDEN_BENCH_QUICK").is_ok_and(|v| v == "1");
    let n: usize = if quick { 100_000 } else { 1_000_000 };
    let catalog = ScopeCatalog::build(
        &[CatalogEntry {
            name: "invoices:read".into(),
            description: String::new(),
            public: false,
        }],
        &BTreeMap::new(),
        true,
    )
    .unwrap();
    let cache: KeyCache<Candidates> = KeyCache::new(CacheConfig {
        max_keys: n as u64 * 2,
        ttl: Duration::from_secs(3600),
        ..CacheConfig::default()
    });
    let before = rss_bytes();
    for i in 0..n {
        let lookup = format!("{:064x}", i as u128 * 0x9E37_79B9_7F4A_7C15);
        let secret = StoredSecret {
            scheme: HashScheme::HmacSha256,
            lookup: lookup.clone(),
            hash: String::new(),
        };
        let rec = common::record(i, secret, "acc_01JBENCHACCOUNT000000000000");
        let built = Candidates::build(&lookup, vec![rec], &catalog).expect("the lookup is its own");
        cache.insert(&lookup, built);
    }
    let after = rss_bytes();
    assert_eq!(cache.entry_count(), n as u64);
    let per_key = after.saturating_sub(before) as f64 / n as f64;
    println!("BENCH cache_keys {n} keys");
    println!("BENCH cache_bytes_per_key {per_key:.0} bytes");
}
