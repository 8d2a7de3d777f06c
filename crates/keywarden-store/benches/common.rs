//! Shared set-up for the verifier and cache-memory benchmarks: a realistic key record.

use keywarden_core::model::{KeyRecord, KeyType, Mode, Role, StoredSecret};

/// A key record shaped like the ones the service stores.
pub fn record(id: usize, secret: StoredSecret, account_id: &str) -> KeyRecord {
    KeyRecord {
        name: "production backend".into(),
        role: Role::Owner,
        scopes: vec!["invoices:read".into()],
        prefix: "kw_sk_live_".into(),
        start: "kw_sk_live_AbCd".into(),
        key_hash: format!("sha256_{:064x}", id),
        secret,
        ..KeyRecord::new(
            format!("key_01JBENCH{id:017}"),
            account_id.to_string(),
            Mode::Live,
            KeyType::Secret,
            1_774_000_800_000,
        )
    }
}
