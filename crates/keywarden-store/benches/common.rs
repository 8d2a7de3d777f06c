//! Shared set-up for the verifier and cache-memory benchmarks: a realistic key record.

use keywarden_core::model::{KeyRecord, KeyType, Mode, Role, StoredSecret};

/// A key record shaped like the ones the service stores.
pub fn record(id: usize, secret: StoredSecret, account_id: &str) -> KeyRecord {
    KeyRecord {
        id: format!("key_01JBENCH{id:017}"),
        account_id: account_id.to_string(),
        mode: Mode::Live,
        key_type: KeyType::Secret,
        name: "production backend".into(),
        description: String::new(),
        owner: String::new(),
        role: Role::Owner,
        scopes: vec!["invoices:read".into()],
        expires_at: None,
        ip_allowlist: vec![],
        rate_limit: None,
        enabled: true,
        metadata: serde_json::json!({}),
        app_id: None,
        grant_id: None,
        prefix: "kw_sk_live_".into(),
        start: "kw_sk_live_AbCd".into(),
        key_hash: format!("sha256_{:064x}", id),
        secret,
        previous: None,
        created_at: 1_774_000_800_000,
        last_used_at: None,
        last_used_ip: None,
        revoked_at: None,
        revoked_reason: None,
        recoverable: None,
    }
}
