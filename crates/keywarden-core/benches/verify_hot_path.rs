//! `verify_hot_path`: what the core does for every request with a valid key — parse the
//! token and check its checksum, compute its HMAC lookup value, compare it with the stored
//! digest in constant time, and run the decision with a scope check.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keywarden_core::decision::{
    authorize, AppSecretCheck, CompiledKey, Facts, KeyLookup, Requirement, SecretMatch,
};
use keywarden_core::hashing::SecretHasher;
use keywarden_core::model::{AccountStatus, HashScheme, KeyRecord, KeyType, Mode, Role};
use keywarden_core::scopes::{CatalogEntry, ScopeCatalog};
use keywarden_core::template::{KeyTemplate, TemplateTags};
use keywarden_core::{ct_eq, Secret};
use std::collections::BTreeMap;

fn bench(c: &mut Criterion) {
    let template = KeyTemplate::compile(
        "kw_{type}_{mode}_{random:32}{checksum}",
        &TemplateTags::default(),
    )
    .unwrap();
    let hasher = SecretHasher::new(
        HashScheme::HmacSha256,
        Some(Secret::new("bench-pepper-0123456789abcdef")),
        vec![],
        12,
    )
    .unwrap();
    let entries: Vec<CatalogEntry> = ["invoices:read", "invoices:write", "customers:read"]
        .iter()
        .map(|n| CatalogEntry {
            name: n.to_string(),
            description: String::new(),
            public: false,
        })
        .collect();
    let catalog = ScopeCatalog::build(&entries, &BTreeMap::new(), true).unwrap();
    let token = template.generate(Mode::Live, KeyType::Secret);
    let parsed = template.parse(token.expose()).unwrap();
    let stored = hasher.store(&token, parsed.lookup_segment()).unwrap();
    let record = KeyRecord {
        name: "bench".into(),
        role: Role::Owner,
        scopes: vec!["invoices:read".into(), "customers:read".into()],
        expires_at: Some(i64::MAX),
        prefix: "kw_sk_live_".into(),
        start: parsed.start(),
        key_hash: String::new(),
        secret: stored,
        ..KeyRecord::new(
            "key_1".into(),
            "acc_1".into(),
            Mode::Live,
            KeyType::Secret,
            0,
        )
    };
    // The cache finds the key by its lookup value; the comparison stands for that step.
    let stored_lookup = record.secret.lookup.clone();
    let key = CompiledKey::compile(record, &catalog);
    let required = catalog.required(&["invoices:read"]).unwrap();
    let now = 1_774_000_800_000;

    c.bench_function("verify_hot_path", |b| {
        b.iter(|| {
            let t = black_box(token.expose());
            let parsed = template.parse(t).expect("parses");
            let lookup = hasher.lookup(t, parsed.lookup_segment());
            let matched = ct_eq(lookup.as_bytes(), stored_lookup.as_bytes());
            assert!(matched);
            let facts = Facts {
                api_enabled: true,
                locked_out: None,
                key: KeyLookup::Found {
                    key: &key,
                    matched: SecretMatch::Current,
                },
                account_status: Some(AccountStatus::Active),
                app_secret: AppSecretCheck::NotRequired,
                client_ip: None,
                object_mode: Some(Mode::Live),
                required: Requirement::All(&required),
                self_service: None,
                now_ms: now,
            };
            black_box(authorize(&facts)).expect("allowed");
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
