//! Cached verification of a bcrypt-12 key against an HMAC key, through the whole
//! `Verifier::verify` path, and what an uncached bcrypt-12 check costs (what a design
//! without the verified-secret cache pays on every request).
//!
//! Prints `BENCH hmac_cached_verify_ns`, `BENCH bcrypt_cached_verify_ns`,
//! `BENCH bcrypt_cached_ratio` and `BENCH bcrypt12_uncached_ms`.

mod common;

use keywarden_core::hashing::SecretHasher;
use keywarden_core::model::{Account, AccountStatus, HashScheme, KeyType, Mode};
use keywarden_core::scopes::{CatalogEntry, ScopeCatalog};
use keywarden_core::template::{KeyTemplate, TemplateTags};
use keywarden_core::{Secret, SystemClock};
use keywarden_store::limiter::LocalLimiter;
use keywarden_store::verifier::{PlanLimits, Verifier, VerifierConfig, VerifyRequest};
use keywarden_store::{CacheConfig, KeyCache, Store, Writer, WriterConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn verifier_for(scheme: HashScheme, store: Arc<dyn Store>) -> (Verifier, String) {
    let template = KeyTemplate::compile(
        "kw_{type}_{mode}_{random:32}{checksum}",
        &TemplateTags::default(),
    )
    .unwrap();
    let hasher = SecretHasher::new(
        scheme,
        Some(Secret::new("bench-pepper-0123456789abcdef")),
        vec![],
        12,
    )
    .unwrap();
    let catalog = Arc::new(
        ScopeCatalog::build(
            &[CatalogEntry {
                name: "invoices:read".into(),
                description: String::new(),
                public: false,
            }],
            &BTreeMap::new(),
            true,
        )
        .unwrap(),
    );
    let account = Account {
        id: format!("acc_bench_{}", scheme.as_str()),
        name: "bench".into(),
        plan: "bench".into(),
        status: AccountStatus::Active,
        metadata: serde_json::json!({}),
        created_at: 0,
    };
    store.create_account(&account, &[]).await.unwrap();
    let token = template.generate(Mode::Live, KeyType::Secret);
    let parsed = template.parse(token.expose()).unwrap();
    let secret = hasher.store(&token, parsed.lookup_segment()).unwrap();
    let id = if scheme == HashScheme::Bcrypt { 1 } else { 2 };
    store
        .insert_key(&common::record(id, secret, &account.id), &[])
        .await
        .unwrap();
    let cfg = VerifierConfig {
        api_enabled: true,
        template,
        legacy_templates: vec![],
        hasher,
        catalog,
        app_secret_required: false,
        app_required: false,
        global_keys: vec![],
        plans: BTreeMap::from([("bench".to_string(), PlanLimits::default())]),
        default_plan: "bench".into(),
        slow_hash_ttl: Duration::from_secs(600),
        slow_hash_concurrency: 2,
        record_ttl: Duration::from_secs(600),
    };
    let (writer, _handle) = Writer::spawn(store.clone(), WriterConfig::default());
    std::mem::forget(_handle);
    let v = Verifier::new(
        cfg,
        store,
        KeyCache::new(CacheConfig::default()),
        LocalLimiter::new(None),
        writer,
        Arc::new(SystemClock),
    );
    (v, token.expose().to_string())
}

async fn per_call_ns(v: &Verifier, token: &str, iterations: u32) -> f64 {
    let req = VerifyRequest {
        token: Some(token),
        method: "GET",
        path: "/bench",
        ..VerifyRequest::default()
    };
    assert!(v.verify(&req).await.is_valid(), "warm-up must succeed");
    let start = Instant::now();
    for _ in 0..iterations {
        let out = v.verify(&req).await;
        assert!(out.is_valid());
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    let quick = std::env::var("KEYWARDEN_BENCH_QUICK").is_ok_and(|v| v == "1");
    let iterations = if quick { 20_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store =
            keywarden_store::open(&format!("sqlite://{}", dir.path().join("b.db").display()))
                .await
                .unwrap();
        let (hmac, hmac_token) = verifier_for(HashScheme::HmacSha256, store.clone()).await;
        let (bcrypt, bcrypt_token) = verifier_for(HashScheme::Bcrypt, store.clone()).await;
        let h = per_call_ns(&hmac, &hmac_token, iterations).await;
        let b = per_call_ns(&bcrypt, &bcrypt_token, iterations).await;
        println!("BENCH hmac_cached_verify_ns {h:.0} ns");
        println!("BENCH bcrypt_cached_verify_ns {b:.0} ns");
        println!("BENCH bcrypt_cached_ratio {:.2} ratio", b / h);

        let hasher = bcrypt.config().hasher.clone();
        let stored = store
            .find_keys_by_lookup(&hasher.lookup(&bcrypt_token, &bcrypt_token[11..19]))
            .await
            .unwrap();
        let secret = stored[0].secret.clone();
        let n = 5;
        let start = Instant::now();
        for _ in 0..n {
            assert!(hasher.verify(&bcrypt_token, &secret));
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
        println!("BENCH bcrypt12_uncached_ms {ms:.1} ms");
    });
}
