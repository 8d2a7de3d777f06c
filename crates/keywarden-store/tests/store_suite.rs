//! The behavioural suite every [`Store`] must pass (`docs/operations.md#storage`: "same behaviour, same
//! tests"). Each case is written once against `Arc<dyn Store>` and runs on a fresh SQLite
//! file always, and on a fresh PostgreSQL database when `KEYWARDEN_TEST_DATABASE_URL` names
//! a server (each test creates its own database and drops it afterwards, so tests can run
//! in parallel).

use keywarden_core::model::{
    Account, AccountStatus, Activity, Application, AuditEvent, Grant, HashScheme, KeyRecord,
    KeyType, Mode, PreviousSecret, RateLimitSpec, Role, StoredSecret, WebSession, WebSessionKind,
};
use keywarden_store::webhooks::{
    AttemptOutcome, DeliveryStatus, NextStep, WebhookAttempt, WebhookEndpoint, WebhookFilter,
};
use keywarden_store::{
    DecisionCount, DecisionQuery, ErasureCounts, EventFilter, Granularity, KeyTouch, Page, PgStore,
    SqliteStore, Store, StoreError, UsageDelta, WriteBatch,
};
use serde_json::json;
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------------------

/// Ids in creation order. Plain ULIDs made within one millisecond sort randomly, and the
/// paging and ordering cases need to know which object came first.
fn new_id(prefix: &str) -> String {
    static IDS: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());
    let id = IDS.lock().unwrap().generate().unwrap();
    format!("{prefix}_{id}")
}

fn account(name: &str) -> Account {
    Account {
        id: new_id("acc"),
        name: name.into(),
        plan: "default".into(),
        status: AccountStatus::Active,
        metadata: json!({ "crm": { "id": 42, "tags": ["a", "b"] }, "note": "é ✓" }),
        created_at: 1_700_000_000_000,
    }
}

fn secret(tag: &str) -> StoredSecret {
    StoredSecret {
        scheme: HashScheme::HmacSha256,
        lookup: format!("lookup_{tag}_{}", ulid::Ulid::new()),
        hash: String::new(),
    }
}

/// A key with every optional field empty.
fn key(account_id: &str, mode: Mode) -> KeyRecord {
    let id = new_id("key");
    KeyRecord {
        name: "ci".into(),
        role: Role::Developer,
        scopes: vec!["invoices:read".into()],
        prefix: "kw_sk_live_".into(),
        start: "kw_sk_live_abcd".into(),
        key_hash: format!("sha256_{id}"),
        secret: secret("cur"),
        ..KeyRecord::new(
            id.clone(),
            account_id.into(),
            mode,
            KeyType::Secret,
            1_700_000_000_000,
        )
    }
}

/// A key with every optional field set.
fn full_key(account_id: &str) -> KeyRecord {
    KeyRecord {
        key_type: KeyType::Publishable,
        description: "stored in the CI vault".into(),
        owner: "ana@example.com".into(),
        role: Role::Owner,
        scopes: vec!["invoices:read".into(), "invoices:write".into()],
        expires_at: Some(1_800_000_000_000),
        ip_allowlist: vec!["10.0.0.0/8".into(), "2001:db8::1".into()],
        rate_limit: Some(RateLimitSpec {
            requests: 100,
            per_seconds: 60,
        }),
        enabled: false,
        metadata: json!({ "team": "billing", "n": 1.5, "list": [1, null, true] }),
        app_id: Some("app_x".into()),
        grant_id: Some("grt_x".into()),
        secret: StoredSecret {
            scheme: HashScheme::Argon2id,
            // An 8-character segment, like the slow schemes store; the ULID's random tail
            // keeps it distinct between keys.
            lookup: format!("Ab3{}", &ulid::Ulid::new().to_string()[21..]),
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        },
        previous: Some(PreviousSecret {
            secret: secret("prev"),
            key_hash: "sha256_previous".into(),
            valid_until: 1_700_000_600_000,
        }),
        last_used_at: Some(1_700_000_100_000),
        last_used_ip: Some("192.0.2.7".into()),
        revoked_at: Some(1_700_000_200_000),
        revoked_reason: Some("leaked".into()),
        recoverable: Some("nonce:ciphertext".into()),
        ..key(account_id, Mode::Test)
    }
}

fn app() -> Application {
    Application {
        id: new_id("app"),
        name: "Zapier".into(),
        description: "Automations".into(),
        url: Some("https://zapier.example".into()),
        scopes: vec!["invoices:read".into(), "clients:read".into()],
        production: secret("prod"),
        sandbox: StoredSecret {
            scheme: HashScheme::Bcrypt,
            lookup: "sandbox1".into(),
            hash: "$2b$12$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".into(),
        },
        created_at: 1_700_000_000_000,
    }
}

fn grant(account_id: &str, app_id: &str) -> Grant {
    Grant {
        id: new_id("grt"),
        account_id: account_id.into(),
        app_id: app_id.into(),
        scopes: vec!["invoices:read".into()],
        created_at: 1_700_000_000_000,
    }
}

fn event(account_id: Option<&str>, mode: Option<Mode>, kind: &str, at: i64) -> AuditEvent {
    AuditEvent {
        id: new_id("evt"),
        account_id: account_id.map(Into::into),
        mode,
        kind: kind.into(),
        actor: "root".into(),
        ip: Some("203.0.113.9".into()),
        at,
        data: json!({ "key_id": "key_1", "changes": ["name"] }),
    }
}

fn activity(key_id: &str, at: i64) -> Activity {
    Activity {
        key_id: key_id.into(),
        at,
        ip: Some("198.51.100.1".into()),
        method: "GET".into(),
        path: "/v1/invoices".into(),
        status: 200,
        code: "valid".into(),
    }
}

fn usage(account_id: &str, mode: Mode, unit: &str, period_start: i64, amount: u64) -> UsageDelta {
    UsageDelta {
        account_id: account_id.into(),
        mode,
        unit: unit.into(),
        period_start,
        amount,
    }
}

fn decision(key: Option<(&str, &str)>, code: &str, at: i64, count: u64) -> DecisionCount {
    DecisionCount {
        minute: at,
        key: key.map(|(k, a)| (k.to_string(), a.to_string(), Mode::Live)),
        code: code.into(),
        count,
    }
}

fn page(after_id: Option<&str>, limit: u32) -> Page {
    Page {
        after_id: after_id.map(Into::into),
        limit,
    }
}

async fn new_account(store: &Arc<dyn Store>) -> Account {
    let a = account("Acme");
    store.create_account(&a, &[]).await.unwrap();
    a
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| id(i).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------------------

async fn case_ping(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
}

async fn case_account_round_trip(store: Arc<dyn Store>) {
    let mut a = account("Acme");
    store.create_account(&a, &[]).await.unwrap();
    assert_eq!(store.get_account(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_account("acc_missing").await.unwrap(), None);

    a.name = "Acme Corp".into();
    a.plan = "pro".into();
    a.status = AccountStatus::Suspended;
    a.metadata = json!({ "changed": true });
    store.update_account(&a, &[]).await.unwrap();
    assert_eq!(store.get_account(&a.id).await.unwrap(), Some(a.clone()));

    // `created_at` is fixed at creation.
    let mut moved = a.clone();
    moved.created_at = 1;
    store.update_account(&moved, &[]).await.unwrap();
    assert_eq!(
        store.get_account(&a.id).await.unwrap().unwrap().created_at,
        a.created_at
    );

    let missing = account("Nobody");
    assert!(matches!(
        store.update_account(&missing, &[]).await,
        Err(StoreError::NotFound)
    ));
}

async fn case_accounts_page_by_id(store: Arc<dyn Store>) {
    let mut made = Vec::new();
    for i in 0..5 {
        let a = account(&format!("A{i}"));
        store.create_account(&a, &[]).await.unwrap();
        made.push(a.id);
    }
    let first = store.list_accounts(&page(None, 2)).await.unwrap();
    assert_eq!(ids(&first, |a| &a.id), made[..2]);
    let rest = store
        .list_accounts(&page(Some(&made[1]), 10))
        .await
        .unwrap();
    assert_eq!(ids(&rest, |a| &a.id), made[2..]);
    assert!(store
        .list_accounts(&page(None, 0))
        .await
        .unwrap()
        .is_empty());
}

async fn case_duplicate_ids_conflict(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    assert!(matches!(
        store.create_account(&a, &[]).await,
        Err(StoreError::Conflict(_))
    ));

    let k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();
    let mut same_id = key(&a.id, Mode::Live);
    same_id.id = k.id.clone();
    assert!(matches!(
        store.insert_key(&same_id, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    // The fingerprint identifies a token, so it is unique too.
    let mut same_hash = key(&a.id, Mode::Live);
    same_hash.key_hash = k.key_hash.clone();
    match store.insert_key(&same_hash, &[]).await {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("key_hash"), "{msg}"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    let p = app();
    store.create_app(&p, &[]).await.unwrap();
    assert!(matches!(
        store.create_app(&p, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    let g = grant(&a.id, &p.id);
    store.create_grant(&g, &[]).await.unwrap();
    assert!(matches!(
        store.create_grant(&g, &[]).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn case_events_delivered_twice_are_stored_once(store: Arc<dyn Store>) {
    // The batched writer retries a batch whose commit it could not confirm; the events in
    // it must not fail the retry, nor be stored twice.
    let a = new_account(&store).await;
    let e = event(Some(&a.id), None, "account.created", 1);
    let batch = WriteBatch {
        events: vec![e.clone(), e.clone()],
        usage: vec![usage(&a.id, Mode::Live, "requests", 0, 1)],
        ..WriteBatch::default()
    };
    store.write_batch(&batch).await.unwrap();
    store.write_batch(&batch).await.unwrap();
    store.append_events(std::slice::from_ref(&e)).await.unwrap();
    let filter = EventFilter {
        account_id: Some(a.id.clone()),
        limit: 10,
        ..EventFilter::default()
    };
    assert_eq!(store.list_events(&filter).await.unwrap(), vec![e]);
}

async fn case_keys_need_their_account(store: Arc<dyn Store>) {
    let k = key("acc_missing", Mode::Live);
    assert!(matches!(
        store.insert_key(&k, &[]).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.get_key(&k.id).await.unwrap().is_none());
}

async fn case_key_round_trip(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let plain = key(&a.id, Mode::Live);
    let full = full_key(&a.id);
    store.insert_key(&plain, &[]).await.unwrap();
    store.insert_key(&full, &[]).await.unwrap();
    for k in [&plain, &full] {
        assert_eq!(store.get_key(&k.id).await.unwrap().as_ref(), Some(k));
        assert_eq!(
            store.get_key_by_hash(&k.key_hash).await.unwrap().as_ref(),
            Some(k)
        );
    }
    assert!(store.get_key("key_missing").await.unwrap().is_none());
    assert!(store
        .get_key_by_hash("sha256_missing")
        .await
        .unwrap()
        .is_none());
    // The previous secret's fingerprint is not the key's fingerprint.
    assert!(store
        .get_key_by_hash("sha256_previous")
        .await
        .unwrap()
        .is_none());
}

async fn case_update_key_replaces_mutable_fields(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();

    // Turn the plain key into the fully populated one, keeping what may not change.
    let mut changed = KeyRecord {
        id: k.id.clone(),
        account_id: k.account_id.clone(),
        mode: k.mode,
        key_type: k.key_type,
        created_at: k.created_at,
        ..full_key(&a.id)
    };
    store.update_key(&changed, &[]).await.unwrap();
    assert_eq!(store.get_key(&k.id).await.unwrap(), Some(changed.clone()));

    // And back to empty optionals: every `Some` can become `None` again.
    changed = KeyRecord {
        id: k.id.clone(),
        key_hash: changed.key_hash.clone(),
        ..k.clone()
    };
    store.update_key(&changed, &[]).await.unwrap();
    assert_eq!(store.get_key(&k.id).await.unwrap(), Some(changed.clone()));

    // Identity fields are fixed at creation.
    let mut moved = changed.clone();
    moved.mode = Mode::Test;
    moved.key_type = KeyType::Publishable;
    moved.created_at = 5;
    store.update_key(&moved, &[]).await.unwrap();
    assert_eq!(store.get_key(&k.id).await.unwrap(), Some(changed));

    assert!(matches!(
        store.update_key(&key(&a.id, Mode::Live), &[]).await,
        Err(StoreError::NotFound)
    ));
}

async fn case_revocation_persists(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let mut k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();
    assert_eq!(store.count_active_keys(&a.id).await.unwrap(), 1);
    k.revoked_at = Some(1_700_000_999_000);
    k.revoked_reason = Some("rotated by hand".into());
    store.update_key(&k, &[]).await.unwrap();
    let back = store.get_key(&k.id).await.unwrap().unwrap();
    assert_eq!(back.revoked_at, k.revoked_at);
    assert_eq!(back.revoked_reason, k.revoked_reason);
    assert!(!back.is_active());
    assert_eq!(store.count_active_keys(&a.id).await.unwrap(), 0);
}

async fn case_lookup_by_current_and_previous(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let mut k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();
    let other = key(&a.id, Mode::Live);
    store.insert_key(&other, &[]).await.unwrap();

    let found = store.find_keys_by_lookup(&k.secret.lookup).await.unwrap();
    assert_eq!(found, vec![k.clone()]);
    assert!(store
        .find_keys_by_lookup("nothing")
        .await
        .unwrap()
        .is_empty());

    // Rotate: the old secret becomes the previous one and stays findable.
    let old = k.secret.clone();
    k.previous = Some(PreviousSecret {
        secret: old.clone(),
        key_hash: k.key_hash.clone(),
        valid_until: 1_700_000_600_000,
    });
    k.secret = secret("rotated");
    k.key_hash = format!("sha256_rotated_{}", k.id);
    store.update_key(&k, &[]).await.unwrap();
    assert_eq!(
        store.find_keys_by_lookup(&k.secret.lookup).await.unwrap(),
        vec![k.clone()]
    );
    assert_eq!(
        store.find_keys_by_lookup(&old.lookup).await.unwrap(),
        vec![k.clone()]
    );
    assert!(store.get_key_by_hash(&k.key_hash).await.unwrap().is_some());
}

async fn case_secrets_rotated_out_for_good_are_found_as_revoked(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let mut k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();
    let rotate = |k: &mut KeyRecord, tag: &str| {
        let old = std::mem::replace(&mut k.secret, secret(tag));
        k.previous = Some(PreviousSecret {
            secret: old,
            key_hash: k.key_hash.clone(),
            valid_until: 1_700_000_600_000,
        });
    };
    let first = k.secret.clone();
    rotate(&mut k, "second");
    store.update_key(&k, &[]).await.unwrap();
    // Still the previous secret: found as such.
    assert_eq!(
        store.find_keys_by_lookup(&first.lookup).await.unwrap(),
        vec![k.clone()]
    );

    // A second rotation replaces it: it is retired, and its key shows it as revoked.
    let second = k.secret.clone();
    rotate(&mut k, "third");
    store.update_key(&k, &[]).await.unwrap();
    let retired = store.find_keys_by_lookup(&first.lookup).await.unwrap();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].id, k.id);
    assert_eq!(retired[0].secret, first);
    assert_eq!(retired[0].previous, None);
    assert_eq!(retired[0].revoked_at, Some(k.created_at));
    // Updates that keep the previous secret retire nothing; the live secrets are the key's.
    k.name = "renamed".into();
    store.update_key(&k, &[]).await.unwrap();
    for live in [&second.lookup, &k.secret.lookup] {
        assert_eq!(
            store.find_keys_by_lookup(live).await.unwrap(),
            vec![k.clone()]
        );
    }
    // A revoked key shows its revocation time.
    k.revoked_at = Some(1_700_000_900_000);
    store.update_key(&k, &[]).await.unwrap();
    let retired = store.find_keys_by_lookup(&first.lookup).await.unwrap();
    assert_eq!(retired[0].revoked_at, Some(1_700_000_900_000));
    // Erasure takes them along.
    store.erase_account(&a.id, &|_| Vec::new()).await.unwrap();
    assert!(store
        .find_keys_by_lookup(&first.lookup)
        .await
        .unwrap()
        .is_empty());
}

async fn case_slow_hash_lookups_may_collide(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let mut first = key(&a.id, Mode::Live);
    first.secret = StoredSecret {
        scheme: HashScheme::Bcrypt,
        lookup: "AbCd1234".into(),
        hash: "$2b$12$first".into(),
    };
    let mut second = key(&a.id, Mode::Live);
    second.secret = StoredSecret {
        hash: "$2b$12$second".into(),
        ..first.secret.clone()
    };
    // A key whose previous secret has the same segment is found once, not twice.
    let mut third = key(&a.id, Mode::Test);
    third.secret = first.secret.clone();
    third.previous = Some(PreviousSecret {
        secret: first.secret.clone(),
        key_hash: "sha256_third_old".into(),
        valid_until: 9,
    });
    for k in [&first, &second, &third] {
        store.insert_key(k, &[]).await.unwrap();
    }
    let found = store.find_keys_by_lookup("AbCd1234").await.unwrap();
    let mut want = vec![first.id, second.id, third.id];
    want.sort();
    assert_eq!(ids(&found, |k| &k.id), want);
}

async fn case_list_keys_pages_by_mode(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let b = new_account(&store).await;
    let mut live = Vec::new();
    let mut all = Vec::new();
    for i in 0..6 {
        let mode = if i % 2 == 0 { Mode::Live } else { Mode::Test };
        let mut k = key(&a.id, mode);
        if i == 4 {
            k.revoked_at = Some(1);
        }
        store.insert_key(&k, &[]).await.unwrap();
        if mode == Mode::Live {
            live.push(k.id.clone());
        }
        all.push(k.id);
    }
    store
        .insert_key(&key(&b.id, Mode::Live), &[])
        .await
        .unwrap();

    let everything = store
        .list_keys(&a.id, None, &page(None, 100))
        .await
        .unwrap();
    assert_eq!(ids(&everything, |k| &k.id), all);
    let live_keys = store
        .list_keys(&a.id, Some(Mode::Live), &page(None, 100))
        .await
        .unwrap();
    // Revoked keys are listed too.
    assert_eq!(ids(&live_keys, |k| &k.id), live);

    let p1 = store.list_keys(&a.id, None, &page(None, 4)).await.unwrap();
    let p2 = store
        .list_keys(&a.id, None, &page(Some(&p1[3].id), 4))
        .await
        .unwrap();
    assert_eq!(ids(&p1, |k| &k.id), all[..4]);
    assert_eq!(ids(&p2, |k| &k.id), all[4..]);
    let t = store
        .list_keys(&a.id, Some(Mode::Test), &page(Some(&all[1]), 1))
        .await
        .unwrap();
    assert_eq!(ids(&t, |k| &k.id), vec![all[3].clone()]);

    assert_eq!(store.count_active_keys(&a.id).await.unwrap(), 5);
    assert_eq!(store.count_active_keys(&b.id).await.unwrap(), 1);
    assert_eq!(store.count_active_keys("acc_missing").await.unwrap(), 0);
}

async fn case_insert_key_limited_at_the_limit(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let other = new_account(&store).await;
    store
        .insert_key(&key(&other.id, Mode::Live), &[])
        .await
        .unwrap();
    let mut revoked = key(&a.id, Mode::Live);
    revoked.revoked_at = Some(1);
    store.insert_key(&revoked, &[]).await.unwrap();

    store
        .insert_key_limited(&key(&a.id, Mode::Live), 2, &[])
        .await
        .unwrap();
    store
        .insert_key_limited(&key(&a.id, Mode::Test), 2, &[])
        .await
        .unwrap();
    let refused = key(&a.id, Mode::Live);
    assert!(matches!(
        store.insert_key_limited(&refused, 2, &[]).await,
        Err(StoreError::LimitReached { max_active: 2 })
    ));
    assert!(store.get_key(&refused.id).await.unwrap().is_none());
    assert!(matches!(
        store
            .insert_key_limited(&key(&a.id, Mode::Live), 0, &[])
            .await,
        Err(StoreError::LimitReached { max_active: 0 })
    ));
    // Revoked keys and other accounts' keys never counted.
    assert_eq!(store.count_active_keys(&a.id).await.unwrap(), 2);
}

async fn case_insert_key_limited_under_concurrency(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            let k = key(&a.id, Mode::Live);
            tokio::spawn(async move { store.insert_key_limited(&k, 3, &[]).await })
        })
        .collect();
    let mut landed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => landed += 1,
            Err(StoreError::LimitReached { max_active: 3 }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(landed, 3);
    assert_eq!(store.count_active_keys(&a.id).await.unwrap(), 3);
}

async fn case_concurrent_writers_never_fail(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            let account_id = a.id.clone();
            tokio::spawn(async move {
                let k = key(&account_id, Mode::Live);
                store.insert_key(&k, &[]).await?;
                store
                    .write_batch(&WriteBatch {
                        touches: vec![KeyTouch {
                            key_id: k.id.clone(),
                            at: i,
                            ip: None,
                        }],
                        activity: vec![activity(&k.id, i)],
                        activity_retain_per_key: 10,
                        usage: vec![usage(&account_id, Mode::Live, "requests", 0, 1)],
                        events: vec![event(Some(&account_id), None, "key.created", i)],
                        decisions: vec![],
                    })
                    .await?;
                store.get_key(&k.id).await.map(drop)
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        store
            .get_usage(&a.id, Mode::Live, "requests", 0)
            .await
            .unwrap(),
        40
    );
}

async fn case_touches_move_forward_only(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();
    let touch = |at: i64, ip: Option<&str>| KeyTouch {
        key_id: k.id.clone(),
        at,
        ip: ip.map(Into::into),
    };
    store
        .touch_keys(&[
            touch(200, Some("192.0.2.2")),
            touch(100, Some("192.0.2.1")),
            KeyTouch {
                key_id: "key_erased_meanwhile".into(),
                at: 300,
                ip: None,
            },
        ])
        .await
        .unwrap();
    let back = store.get_key(&k.id).await.unwrap().unwrap();
    assert_eq!(back.last_used_at, Some(200));
    assert_eq!(back.last_used_ip.as_deref(), Some("192.0.2.2"));

    store
        .touch_keys(&[touch(150, Some("192.0.2.9"))])
        .await
        .unwrap();
    assert_eq!(
        store.get_key(&k.id).await.unwrap().unwrap().last_used_at,
        Some(200)
    );
    store.touch_keys(&[touch(250, None)]).await.unwrap();
    let back = store.get_key(&k.id).await.unwrap().unwrap();
    assert_eq!((back.last_used_at, back.last_used_ip), (Some(250), None));
    store.touch_keys(&[]).await.unwrap();
}

async fn case_app_round_trip(store: Arc<dyn Store>) {
    let mut p = app();
    store.create_app(&p, &[]).await.unwrap();
    assert_eq!(store.get_app(&p.id).await.unwrap(), Some(p.clone()));
    assert_eq!(store.get_app("app_missing").await.unwrap(), None);

    p.name = "Zapier 2".into();
    p.description = String::new();
    p.url = None;
    p.scopes = vec![];
    p.production = secret("prod2");
    p.sandbox = secret("sandbox2");
    store.update_app(&p, &[]).await.unwrap();
    assert_eq!(store.get_app(&p.id).await.unwrap(), Some(p.clone()));

    let second = app();
    store.create_app(&second, &[]).await.unwrap();
    let listed = store.list_apps(&page(None, 10)).await.unwrap();
    assert_eq!(
        ids(&listed, |a| &a.id),
        vec![p.id.clone(), second.id.clone()]
    );
    let after = store.list_apps(&page(Some(&p.id), 10)).await.unwrap();
    assert_eq!(ids(&after, |a| &a.id), vec![second.id]);
    assert!(matches!(
        store.update_app(&app(), &[]).await,
        Err(StoreError::NotFound)
    ));
}

async fn case_grant_round_trip(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let b = new_account(&store).await;
    let p = app();
    store.create_app(&p, &[]).await.unwrap();
    let g1 = grant(&a.id, &p.id);
    let g2 = grant(&a.id, &p.id);
    let gb = grant(&b.id, &p.id);
    for g in [&g1, &g2, &gb] {
        store.create_grant(g, &[]).await.unwrap();
    }
    assert_eq!(store.get_grant(&g1.id).await.unwrap(), Some(g1.clone()));
    assert_eq!(store.get_grant("grt_missing").await.unwrap(), None);
    assert_eq!(store.list_grants(&a.id).await.unwrap(), vec![g1, g2]);
    assert!(store.list_grants("acc_missing").await.unwrap().is_empty());
    // A grant needs both its account and its application.
    assert!(matches!(
        store.create_grant(&grant(&a.id, "app_missing"), &[]).await,
        Err(StoreError::NotFound)
    ));
}

async fn case_delete_grant_revokes_its_keys(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let p = app();
    store.create_app(&p, &[]).await.unwrap();
    let g = grant(&a.id, &p.id);
    let kept = grant(&a.id, &p.id);
    store.create_grant(&g, &[]).await.unwrap();
    store.create_grant(&kept, &[]).await.unwrap();

    let under = |grant_id: &str| {
        let mut k = key(&a.id, Mode::Live);
        k.app_id = Some(p.id.clone());
        k.grant_id = Some(grant_id.into());
        k
    };
    let k1 = under(&g.id);
    let k2 = under(&g.id);
    let mut already = under(&g.id);
    already.revoked_at = Some(5);
    already.revoked_reason = Some("earlier".into());
    let other = under(&kept.id);
    let plain = key(&a.id, Mode::Live);
    for k in [&k1, &k2, &already, &other, &plain] {
        store.insert_key(k, &[]).await.unwrap();
    }

    let revoked = store
        .delete_grant(&g.id, 1_700_000_500_000, &|_| Vec::new())
        .await
        .unwrap();
    let mut want = vec![k1.id.clone(), k2.id.clone(), already.id.clone()];
    want.sort();
    assert_eq!(ids(&revoked, |k| &k.id), want);
    for k in &revoked {
        assert_eq!(store.get_key(&k.id).await.unwrap().as_ref(), Some(k));
        assert!(!k.is_active());
    }
    let k1_back = store.get_key(&k1.id).await.unwrap().unwrap();
    assert_eq!(k1_back.revoked_at, Some(1_700_000_500_000));
    assert_eq!(k1_back.revoked_reason.as_deref(), Some("grant deleted"));
    // An earlier revocation is not rewritten.
    let already_back = store.get_key(&already.id).await.unwrap().unwrap();
    assert_eq!(already_back.revoked_at, Some(5));
    assert_eq!(already_back.revoked_reason.as_deref(), Some("earlier"));
    // Keys of other grants, and keys without a grant, are untouched.
    assert_eq!(store.get_key(&other.id).await.unwrap(), Some(other));
    assert_eq!(store.get_key(&plain.id).await.unwrap(), Some(plain));

    assert_eq!(store.get_grant(&g.id).await.unwrap(), None);
    assert_eq!(store.list_grants(&a.id).await.unwrap(), vec![kept]);
    assert!(matches!(
        store.delete_grant(&g.id, 1, &|_| Vec::new()).await,
        Err(StoreError::NotFound)
    ));
}

async fn case_event_filters(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let b = new_account(&store).await;
    let evs = vec![
        event(Some(&a.id), None, "account.created", 100),
        event(Some(&a.id), Some(Mode::Live), "key.created", 200),
        event(Some(&a.id), Some(Mode::Test), "key.created", 300),
        event(Some(&a.id), Some(Mode::Live), "key.revoked", 400),
        event(Some(&a.id), Some(Mode::Live), "keys.other", 450),
        event(Some(&b.id), Some(Mode::Live), "key.created", 500),
        event(None, None, "application.created", 600),
    ];
    store.append_events(&evs).await.unwrap();
    store.append_events(&[]).await.unwrap();
    let list = |f: EventFilter| {
        let store = store.clone();
        async move {
            let got = store.list_events(&f).await.unwrap();
            got.iter().map(|e| e.at).collect::<Vec<_>>()
        }
    };
    let base = EventFilter {
        limit: 100,
        ..EventFilter::default()
    };

    // Newest first, every field back as written.
    let everything = store.list_events(&base).await.unwrap();
    let mut newest_first = evs.clone();
    newest_first.reverse();
    assert_eq!(everything, newest_first);

    let of_a = EventFilter {
        account_id: Some(a.id.clone()),
        ..base.clone()
    };
    assert_eq!(list(of_a.clone()).await, vec![450, 400, 300, 200, 100]);
    let live = EventFilter {
        mode: Some(Mode::Live),
        ..of_a.clone()
    };
    assert_eq!(list(live.clone()).await, vec![450, 400, 200]);
    let live_and_modeless = EventFilter {
        include_modeless: true,
        ..live.clone()
    };
    assert_eq!(list(live_and_modeless).await, vec![450, 400, 200, 100]);
    let exact = EventFilter {
        kind: Some("key.created".into()),
        ..of_a.clone()
    };
    assert_eq!(list(exact).await, vec![300, 200]);
    let family = EventFilter {
        kind: Some("key.*".into()),
        ..of_a.clone()
    };
    assert_eq!(list(family.clone()).await, vec![400, 300, 200]);
    let upper = EventFilter {
        kind: Some("KEY.*".into()),
        ..of_a.clone()
    };
    assert!(list(upper).await.is_empty());
    let since = EventFilter {
        since: Some(300),
        ..family.clone()
    };
    assert_eq!(list(since).await, vec![400, 300]);
    let limited = EventFilter {
        limit: 2,
        ..of_a.clone()
    };
    let first_page = store.list_events(&limited).await.unwrap();
    assert_eq!(
        first_page.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![450, 400]
    );
    let next = EventFilter {
        before_id: Some(first_page[1].id.clone()),
        ..limited
    };
    assert_eq!(list(next).await, vec![300, 200]);
    let nothing = EventFilter { limit: 0, ..of_a };
    assert!(list(nothing).await.is_empty());
}

async fn case_activity_retention(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let k1 = key(&a.id, Mode::Live);
    let k2 = key(&a.id, Mode::Live);
    store.insert_key(&k1, &[]).await.unwrap();
    store.insert_key(&k2, &[]).await.unwrap();

    let rows: Vec<Activity> = (1..=8).map(|at| activity(&k1.id, at)).collect();
    store.append_activity(&rows, 5).await.unwrap();
    store
        .append_activity(&[activity(&k2.id, 1)], 5)
        .await
        .unwrap();
    let got = store.list_activity(&k1.id, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.at).collect::<Vec<_>>(),
        vec![8, 7, 6, 5, 4]
    );
    assert_eq!(got[0], rows[7]);

    // Rows arriving out of order are ranked by time, and equal times keep the later row.
    let mut late = activity(&k1.id, 2);
    late.status = 429;
    late.code = "rate_limited".into();
    let mut tie = activity(&k1.id, 8);
    tie.path = "/v1/tie".into();
    store
        .append_activity(&[late, tie.clone()], 5)
        .await
        .unwrap();
    let got = store.list_activity(&k1.id, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.at).collect::<Vec<_>>(),
        vec![8, 8, 7, 6, 5]
    );
    assert_eq!(got[0], tie);

    assert_eq!(store.list_activity(&k1.id, 2).await.unwrap().len(), 2);
    // Other keys keep their own rows.
    assert_eq!(store.list_activity(&k2.id, 100).await.unwrap().len(), 1);

    // A retention of 0 trims nothing.
    store
        .append_activity(&[activity(&k2.id, 2), activity(&k2.id, 3)], 0)
        .await
        .unwrap();
    assert_eq!(store.list_activity(&k2.id, 100).await.unwrap().len(), 3);
    store.append_activity(&[], 1).await.unwrap();
}

async fn case_usage_accumulates_per_counter(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let day = 1_700_006_400_000;
    store
        .add_usage(&[
            usage(&a.id, Mode::Live, "requests", day, 3),
            usage(&a.id, Mode::Live, "requests", day, 4),
            usage(&a.id, Mode::Test, "requests", day, 10),
            usage(&a.id, Mode::Live, "words", day, 1000),
            usage(&a.id, Mode::Live, "requests", day + 86_400_000, 1),
        ])
        .await
        .unwrap();
    store
        .add_usage(&[usage(&a.id, Mode::Live, "requests", day, 5)])
        .await
        .unwrap();
    store.add_usage(&[]).await.unwrap();
    let get = |mode, unit: &'static str, start| {
        let store = store.clone();
        let id = a.id.clone();
        async move { store.get_usage(&id, mode, unit, start).await.unwrap() }
    };
    assert_eq!(get(Mode::Live, "requests", day).await, 12);
    assert_eq!(get(Mode::Test, "requests", day).await, 10);
    assert_eq!(get(Mode::Live, "words", day).await, 1000);
    assert_eq!(get(Mode::Live, "requests", day + 86_400_000).await, 1);
    assert_eq!(get(Mode::Test, "words", day).await, 0);
    assert_eq!(get(Mode::Live, "requests", 0).await, 0);

    // Big counters keep every unit.
    let big = u64::from(u32::MAX) * 4;
    store
        .add_usage(&[usage(&a.id, Mode::Live, "bytes", day, big)])
        .await
        .unwrap();
    assert_eq!(get(Mode::Live, "bytes", day).await, big);
}

async fn case_a_batch_for_an_erased_account_leaves_nothing(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();
    let kept = new_account(&store).await;
    let kept_key = key(&kept.id, Mode::Live);
    store.insert_key(&kept_key, &[]).await.unwrap();
    store.erase_account(&a.id, &|_| Vec::new()).await.unwrap();

    // Requests that raced the erasure still had records waiting in the writer.
    let batch = WriteBatch {
        touches: vec![KeyTouch {
            key_id: k.id.clone(),
            at: 10,
            ip: Some("192.0.2.1".into()),
        }],
        activity: vec![activity(&k.id, 1), activity(&kept_key.id, 2)],
        activity_retain_per_key: 200,
        usage: vec![
            usage(&a.id, Mode::Live, "requests", 0, 2),
            usage(&kept.id, Mode::Live, "requests", 0, 3),
        ],
        events: vec![
            event(Some(&a.id), Some(Mode::Live), "key.ip_denied", 10),
            event(Some(&kept.id), Some(Mode::Live), "key.ip_denied", 11),
        ],
        decisions: vec![
            decision(Some((&k.id, &a.id)), "valid", 60_000, 2),
            decision(Some((&kept_key.id, &kept.id)), "valid", 60_000, 3),
        ],
    };
    store.write_batch(&batch).await.unwrap();
    let counts = |account: &str| DecisionQuery {
        granularity: Granularity::Day,
        account_id: Some(account.to_string()),
        key_id: None,
        mode: None,
        from: 0,
        to: 86_400_000,
    };
    assert!(store
        .decision_counts(&counts(&a.id))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.decision_counts(&counts(&kept.id)).await.unwrap(),
        vec![(0, "valid".to_string(), 3)]
    );
    let events = |account: &str| EventFilter {
        account_id: Some(account.to_string()),
        limit: 10,
        ..EventFilter::default()
    };
    assert!(store.list_activity(&k.id, 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .get_usage(&a.id, Mode::Live, "requests", 0)
            .await
            .unwrap(),
        0
    );
    assert!(store.list_events(&events(&a.id)).await.unwrap().is_empty());
    // The other account's records landed.
    assert_eq!(
        store.list_activity(&kept_key.id, 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        store
            .get_usage(&kept.id, Mode::Live, "requests", 0)
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.list_events(&events(&kept.id)).await.unwrap().len(), 1);
}

async fn case_write_batch_lands_whole(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let k = key(&a.id, Mode::Live);
    store.insert_key(&k, &[]).await.unwrap();
    let ev = event(Some(&a.id), Some(Mode::Live), "key.ip_denied", 10);
    let batch = WriteBatch {
        touches: vec![KeyTouch {
            key_id: k.id.clone(),
            at: 10,
            ip: Some("192.0.2.1".into()),
        }],
        activity: (0..300).map(|i| activity(&k.id, i)).collect(),
        activity_retain_per_key: 200,
        usage: vec![usage(&a.id, Mode::Live, "requests", 0, 2)],
        events: vec![ev.clone()],
        decisions: vec![],
    };
    store.write_batch(&batch).await.unwrap();
    assert_eq!(
        store.get_key(&k.id).await.unwrap().unwrap().last_used_at,
        Some(10)
    );
    let recent = store.list_activity(&k.id, 1000).await.unwrap();
    assert_eq!(recent.len(), 200);
    assert_eq!(recent[0].at, 299);
    assert_eq!(recent[199].at, 100);
    assert_eq!(
        store
            .get_usage(&a.id, Mode::Live, "requests", 0)
            .await
            .unwrap(),
        2
    );
    let filter = EventFilter {
        account_id: Some(a.id.clone()),
        limit: 10,
        ..EventFilter::default()
    };
    assert_eq!(store.list_events(&filter).await.unwrap(), vec![ev.clone()]);

    // A usage total beyond what a counter can hold saturates at the largest value instead of
    // failing the batch (a failing batch would be retried forever and hold up every later
    // write); the batch's other parts land with it.
    let huge = WriteBatch {
        touches: vec![KeyTouch {
            key_id: k.id.clone(),
            at: 20,
            ip: None,
        }],
        activity: vec![],
        activity_retain_per_key: 200,
        usage: vec![
            usage(&a.id, Mode::Live, "requests", 0, 5),
            usage(&a.id, Mode::Live, "words", 0, u64::MAX),
        ],
        events: vec![],
        decisions: vec![],
    };
    store.write_batch(&huge).await.unwrap();
    store.write_batch(&huge).await.unwrap();
    assert_eq!(
        store.get_key(&k.id).await.unwrap().unwrap().last_used_at,
        Some(20)
    );
    assert_eq!(
        store
            .get_usage(&a.id, Mode::Live, "requests", 0)
            .await
            .unwrap(),
        12
    );
    assert_eq!(
        store
            .get_usage(&a.id, Mode::Live, "words", 0)
            .await
            .unwrap(),
        i64::MAX as u64
    );
    assert_eq!(store.list_events(&filter).await.unwrap(), vec![ev]);
    store.write_batch(&WriteBatch::default()).await.unwrap();
}

async fn case_erase_account_removes_everything_of_it(store: Arc<dyn Store>) {
    let p = app();
    store.create_app(&p, &[]).await.unwrap();
    // Two accounts with the same kinds of data; only the first is erased.
    let mut made = Vec::new();
    for _ in 0..2 {
        let a = new_account(&store).await;
        let g = grant(&a.id, &p.id);
        store.create_grant(&g, &[]).await.unwrap();
        let keys = [
            key(&a.id, Mode::Live),
            key(&a.id, Mode::Test),
            full_key(&a.id),
        ];
        for k in &keys {
            store.insert_key(k, &[]).await.unwrap();
        }
        store
            .write_batch(&WriteBatch {
                touches: vec![],
                activity: vec![
                    activity(&keys[0].id, 1),
                    activity(&keys[0].id, 2),
                    activity(&keys[1].id, 3),
                ],
                activity_retain_per_key: 10,
                usage: vec![
                    usage(&a.id, Mode::Live, "requests", 0, 1),
                    usage(&a.id, Mode::Test, "requests", 0, 1),
                ],
                events: vec![
                    event(Some(&a.id), None, "account.created", 1),
                    event(Some(&a.id), Some(Mode::Live), "key.created", 2),
                    event(Some(&a.id), Some(Mode::Test), "key.created", 3),
                    event(Some(&a.id), Some(Mode::Live), "key.ip_denied", 4),
                ],
                decisions: vec![decision(Some((&keys[0].id, &a.id)), "valid", 0, 1)],
            })
            .await
            .unwrap();
        made.push((a, g, keys));
    }
    let (gone, gone_grant, gone_keys) = &made[0];
    let (kept, kept_grant, kept_keys) = &made[1];

    let counts = store
        .erase_account(&gone.id, &|_| Vec::new())
        .await
        .unwrap();
    assert_eq!(
        counts,
        ErasureCounts {
            deleted_accounts: 1,
            deleted_api_keys: 3,
            deleted_events: 4,
            deleted_activity: 3,
            deleted_usage: 2,
            deleted_grants: 1,
        }
    );

    assert_eq!(store.get_account(&gone.id).await.unwrap(), None);
    assert!(store
        .list_keys(&gone.id, None, &page(None, 100))
        .await
        .unwrap()
        .is_empty());
    for k in gone_keys {
        assert_eq!(store.get_key(&k.id).await.unwrap(), None);
        assert_eq!(store.get_key_by_hash(&k.key_hash).await.unwrap(), None);
        assert!(store
            .find_keys_by_lookup(&k.secret.lookup)
            .await
            .unwrap()
            .is_empty());
        assert!(store.list_activity(&k.id, 100).await.unwrap().is_empty());
    }
    assert_eq!(store.get_grant(&gone_grant.id).await.unwrap(), None);
    assert!(store.list_grants(&gone.id).await.unwrap().is_empty());
    let decisions_of = |id: &str| DecisionQuery {
        granularity: Granularity::Day,
        account_id: Some(id.into()),
        key_id: None,
        mode: None,
        from: 0,
        to: 86_400_000,
    };
    assert!(store
        .decision_counts(&decisions_of(&gone.id))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .decision_counts(&decisions_of(&kept.id))
            .await
            .unwrap()
            .len(),
        1
    );
    let events_of = |id: &str| EventFilter {
        account_id: Some(id.into()),
        limit: 100,
        ..EventFilter::default()
    };
    assert!(store
        .list_events(&events_of(&gone.id))
        .await
        .unwrap()
        .is_empty());
    for mode in [Mode::Live, Mode::Test] {
        assert_eq!(
            store
                .get_usage(&gone.id, mode, "requests", 0)
                .await
                .unwrap(),
            0
        );
    }

    // The other account is untouched.
    assert_eq!(
        store.get_account(&kept.id).await.unwrap(),
        Some(kept.clone())
    );
    let listed = store
        .list_keys(&kept.id, None, &page(None, 100))
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    for k in kept_keys {
        assert_eq!(store.get_key(&k.id).await.unwrap().as_ref(), Some(k));
    }
    assert_eq!(
        store
            .list_activity(&kept_keys[0].id, 100)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store.list_grants(&kept.id).await.unwrap(),
        vec![kept_grant.clone()]
    );
    assert_eq!(
        store.list_events(&events_of(&kept.id)).await.unwrap().len(),
        4
    );
    assert_eq!(
        store
            .get_usage(&kept.id, Mode::Test, "requests", 0)
            .await
            .unwrap(),
        1
    );
    assert!(store.get_app(&p.id).await.unwrap().is_some());

    assert!(matches!(
        store.erase_account(&gone.id, &|_| Vec::new()).await,
        Err(StoreError::NotFound)
    ));
}

fn endpoint(
    account_id: Option<&str>,
    mode: Option<Mode>,
    events: Option<&[&str]>,
) -> WebhookEndpoint {
    WebhookEndpoint {
        id: new_id("whe"),
        url: "https://hooks.example.com/in".into(),
        events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
        account_id: account_id.map(Into::into),
        mode,
        description: "d".into(),
        enabled: true,
        secret: keywarden_core::webhooks::new_secret(),
        prev_secret: None,
        prev_secret_until: None,
        failing_since: None,
        disabled_reason: None,
        created_at: 1_700_000_000_000,
        updated_at: 1_700_000_000_000,
    }
}

fn attempt(at: i64, status: Option<u16>) -> WebhookAttempt {
    WebhookAttempt {
        at,
        status,
        duration_ms: 12,
        response: "ok".into(),
        error: None,
    }
}

async fn case_events_queue_their_deliveries_in_the_same_write(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let own = endpoint(
        Some(&a.id),
        Some(Mode::Live),
        Some(&["key.*", "account.updated"]),
    );
    let all = endpoint(None, None, None);
    let off = WebhookEndpoint {
        enabled: false,
        ..endpoint(None, None, None)
    };
    for e in [&own, &all, &off] {
        store.create_webhook(e, &[]).await.unwrap();
    }
    let t = 1_700_000_000_000;
    let events = vec![
        event(Some(&a.id), Some(Mode::Live), "key.created", t),
        event(Some(&a.id), None, "account.updated", t),
        event(Some(&a.id), Some(Mode::Test), "key.created", t),
        event(Some(&a.id), Some(Mode::Live), "grant.created", t),
    ];
    store.append_events(&events).await.unwrap();
    // The same events again (a retried batch) queue nothing more.
    store
        .write_batch(&WriteBatch {
            events: events.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(store.webhook_backlog().await.unwrap(), 6);
    let mine = store.list_deliveries(&own.id, None, 10).await.unwrap();
    let mut kinds: Vec<&str> = mine.iter().map(|d| d.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["account.updated", "key.created"]);
    assert_eq!(
        store
            .list_deliveries(&all.id, None, 10)
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(store
        .list_deliveries(&off.id, None, 10)
        .await
        .unwrap()
        .is_empty());

    // Nothing is due before its time; claimed ones are not claimed again within the lease.
    assert!(store
        .claim_deliveries(t - 1, t + 10, 100, 100)
        .await
        .unwrap()
        .is_empty());
    let due = store
        .claim_deliveries(t, t + 10_000, 100, 100)
        .await
        .unwrap();
    assert_eq!(due.len(), 6);
    assert!(store
        .claim_deliveries(t + 1, t + 10_000, 100, 100)
        .await
        .unwrap()
        .is_empty());
    let first = &due[0];
    let body: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
    assert_eq!(body["data"]["id"], first.delivery.event_id.as_str());
    assert!(!first.payload.contains("whsec_"));

    // Success, a retry and giving up.
    let outcome = |i: usize, status, next| AttemptOutcome {
        delivery_id: due[i].delivery.id.clone(),
        endpoint_id: due[i].endpoint.id.clone(),
        attempt: attempt(t + 5, status),
        next,
        disable: None,
        events: vec![],
        lease_until: due[i].lease_until,
    };
    store
        .finish_delivery(&outcome(0, Some(200), NextStep::Delivered))
        .await
        .unwrap();
    store
        .finish_delivery(&outcome(1, Some(500), NextStep::RetryAt(t + 60_000)))
        .await
        .unwrap();
    store
        .finish_delivery(&outcome(2, None, NextStep::GiveUp))
        .await
        .unwrap();
    let d0 = store
        .get_delivery(&due[0].delivery.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d0.status, d0.attempts, d0.last_status),
        (DeliveryStatus::Delivered, 1, Some(200))
    );
    let d1 = store
        .get_delivery(&due[1].delivery.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d1.status, d1.next_attempt_at),
        (DeliveryStatus::Pending, Some(t + 60_000))
    );
    assert_eq!(store.list_attempts(&d1.id).await.unwrap().len(), 1);
    let d2 = store
        .get_delivery(&due[2].delivery.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d2.status, DeliveryStatus::Failed);
    assert_eq!(store.webhook_backlog().await.unwrap(), 4);
    // The retry is due at its time, once the lease is over.
    let again = store
        .claim_deliveries(t + 60_000, t + 70_000, 100, 100)
        .await
        .unwrap();
    assert!(again.iter().any(|d| d.delivery.id == d1.id));
    // A redelivery makes a failed one pending again.
    store
        .redeliver(&d2.endpoint_id, &d2.id, t + 1)
        .await
        .unwrap();
    assert_eq!(
        store.get_delivery(&d2.id).await.unwrap().unwrap().status,
        DeliveryStatus::Pending
    );
    assert!(matches!(
        store.redeliver("whe_nope", &d2.id, t).await,
        Err(StoreError::NotFound)
    ));
    // A delivery being sent (claimed above, leased until t + 70 000) is not made pending
    // again under its sender: that would send it twice at once.
    assert!(matches!(
        store.redeliver(&d1.endpoint_id, &d1.id, t + 60_001).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .redeliver(&d1.endpoint_id, &d1.id, t + 70_000)
        .await
        .unwrap();
}

async fn case_disabling_an_endpoint_records_its_event(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let failing = endpoint(None, None, Some(&["key.created"]));
    let watcher = endpoint(None, None, Some(&["webhook.disabled"]));
    store.create_webhook(&failing, &[]).await.unwrap();
    store.create_webhook(&watcher, &[]).await.unwrap();
    let t = 1_700_000_000_000;
    store
        .append_events(&[event(Some(&a.id), Some(Mode::Live), "key.created", t)])
        .await
        .unwrap();
    let due = store.claim_deliveries(t, t + 1, 10, 100).await.unwrap();
    assert_eq!(due.len(), 1);
    store
        .finish_delivery(&AttemptOutcome {
            delivery_id: due[0].delivery.id.clone(),
            endpoint_id: failing.id.clone(),
            attempt: attempt(t, Some(410)),
            next: NextStep::GiveUp,
            disable: Some("gone".into()),
            events: vec![event(None, None, "webhook.disabled", t)],
            lease_until: due[0].lease_until,
        })
        .await
        .unwrap();
    let e = store.get_webhook(&failing.id).await.unwrap().unwrap();
    assert!(!e.enabled);
    assert_eq!(e.disabled_reason.as_deref(), Some("gone"));
    assert_eq!(e.failing_since, Some(t));
    assert_eq!(
        store
            .list_deliveries(&watcher.id, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // Nothing more is queued for a disabled endpoint.
    store
        .append_events(&[event(Some(&a.id), Some(Mode::Live), "key.created", t)])
        .await
        .unwrap();
    assert_eq!(
        store
            .list_deliveries(&failing.id, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let listed = store
        .list_webhooks(&WebhookFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    store.delete_webhook(&watcher.id, &[]).await.unwrap();
    assert!(store
        .get_delivery(&due[0].delivery.id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.webhook_backlog().await.unwrap(), 0);
}

async fn case_endpoint_updates_and_the_delivery_worker_do_not_undo_each_other(
    store: Arc<dyn Store>,
) {
    let e = endpoint(None, None, Some(&["key.created"]));
    store.create_webhook(&e, &[]).await.unwrap();
    let t = 1_700_000_000_000;
    let fail = |store: Arc<dyn Store>, at: i64, status: u16, disable: Option<&str>| {
        let endpoint_id = e.id.clone();
        let disable = disable.map(str::to_string);
        async move {
            store
                .append_events(&[event(None, None, "key.created", at)])
                .await
                .unwrap();
            let due = store.claim_deliveries(at, at + 1, 10, 100).await.unwrap();
            let events = disable
                .iter()
                .map(|_| event(None, None, "webhook.disabled", at))
                .collect();
            store
                .finish_delivery(&AttemptOutcome {
                    delivery_id: due[0].delivery.id.clone(),
                    endpoint_id,
                    attempt: attempt(at, Some(status)),
                    next: NextStep::GiveUp,
                    disable,
                    events,
                    lease_until: due[0].lease_until,
                })
                .await
                .unwrap();
        }
    };
    // An edit read before a failure does not wipe the failure clock the worker started.
    let read = store.get_webhook(&e.id).await.unwrap().unwrap();
    fail(store.clone(), t + 10, 500, None).await;
    let mut edit = read.clone();
    edit.description = "edited".into();
    edit.updated_at = read.updated_at + 1;
    store
        .update_webhook(&edit, read.updated_at, &[])
        .await
        .unwrap();
    let now = store.get_webhook(&e.id).await.unwrap().unwrap();
    assert_eq!(
        (now.description.as_str(), now.failing_since),
        ("edited", Some(t + 10))
    );

    // The worker disabling it moves `updated_at` forward: an edit over the row as it was
    // read before (same millisecond included) is refused and does not re-enable it.
    let read = now;
    fail(store.clone(), read.updated_at, 410, Some("gone")).await;
    let disabled = store.get_webhook(&e.id).await.unwrap().unwrap();
    assert!(!disabled.enabled && disabled.updated_at > read.updated_at);
    let mut stale = read.clone();
    stale.description = "stale".into();
    stale.updated_at = read.updated_at + 1;
    assert!(matches!(
        store.update_webhook(&stale, read.updated_at, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!store.get_webhook(&e.id).await.unwrap().unwrap().enabled);

    // Enabling it again (from a fresh read) restarts the failure clock.
    let mut on = disabled.clone();
    on.enabled = true;
    on.disabled_reason = None;
    on.updated_at = disabled.updated_at + 1;
    store
        .update_webhook(&on, disabled.updated_at, &[])
        .await
        .unwrap();
    let on = store.get_webhook(&e.id).await.unwrap().unwrap();
    assert!(on.enabled && on.failing_since.is_none());

    // An attempt begun before a later change does not disable the endpoint, nor say so.
    let watcher = endpoint(None, None, Some(&["webhook.disabled"]));
    store.create_webhook(&watcher, &[]).await.unwrap();
    fail(store.clone(), on.updated_at - 5, 410, Some("gone")).await;
    assert!(store.get_webhook(&e.id).await.unwrap().unwrap().enabled);
    assert!(store
        .list_deliveries(&watcher.id, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn case_concurrent_claims_take_each_delivery_once(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    store
        .create_webhook(&endpoint(None, None, None), &[])
        .await
        .unwrap();
    let t = 1_700_000_000_000;
    let events: Vec<AuditEvent> = (0..60)
        .map(|_| event(Some(&a.id), Some(Mode::Live), "key.updated", t))
        .collect();
    store.append_events(&events).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let due = store.claim_deliveries(t, t + 60_000, 4, 100).await.unwrap();
                if due.is_empty() {
                    break got;
                }
                got.extend(due.into_iter().map(|d| d.delivery.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (60, 60));
}

/// An attempt that outlives its lease is not recorded: the delivery was claimed again, and
/// only that claim's attempt counts, once.
async fn case_an_attempt_past_its_lease_is_not_recorded(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let e = endpoint(None, None, Some(&["key.created"]));
    store.create_webhook(&e, &[]).await.unwrap();
    let t = 1_700_000_000_000;
    store
        .append_events(&[event(Some(&a.id), Some(Mode::Live), "key.created", t)])
        .await
        .unwrap();
    let late = store.claim_deliveries(t, t + 1_000, 10, 100).await.unwrap();
    assert_eq!(late.len(), 1);
    // The first lease runs out; another process claims the delivery.
    let again = store
        .claim_deliveries(t + 2_000, t + 3_000, 10, 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.id, late[0].delivery.id);
    let finish = |due: &keywarden_store::webhooks::DueDelivery, at, next| AttemptOutcome {
        delivery_id: due.delivery.id.clone(),
        endpoint_id: e.id.clone(),
        attempt: attempt(at, Some(200)),
        next,
        disable: None,
        events: vec![],
        lease_until: due.lease_until,
    };
    // The first attempt ends late: nothing is written.
    store
        .finish_delivery(&finish(&late[0], t + 2_500, NextStep::Delivered))
        .await
        .unwrap();
    let id = &late[0].delivery.id;
    let d = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Pending, 0));
    assert!(store.list_attempts(id).await.unwrap().is_empty());
    // The second claim's attempt is recorded, once.
    store
        .finish_delivery(&finish(&again[0], t + 2_600, NextStep::Delivered))
        .await
        .unwrap();
    let d = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Delivered, 1));
    assert_eq!(store.list_attempts(id).await.unwrap().len(), 1);
    // Finishing it again with the same lease changes nothing.
    store
        .finish_delivery(&finish(&again[0], t + 2_700, NextStep::Delivered))
        .await
        .unwrap();
    assert_eq!(store.list_attempts(id).await.unwrap().len(), 1);
}

/// A claim leaves no endpoint more than its share of deliveries in flight, counting those
/// claimed before and not finished, so the deliveries of others are claimed beside the
/// oldest ones.
async fn case_claims_leave_each_endpoint_its_share(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let slow = endpoint(None, None, Some(&["key.updated"]));
    let other = endpoint(None, None, Some(&["key.created"]));
    store.create_webhook(&slow, &[]).await.unwrap();
    store.create_webhook(&other, &[]).await.unwrap();
    let t = 1_700_000_000_000;
    // The slow endpoint's five deliveries are older than the other's two.
    let mut events: Vec<AuditEvent> = (0..5)
        .map(|i| event(Some(&a.id), Some(Mode::Live), "key.updated", t + i))
        .collect();
    events.extend((0..2).map(|i| event(Some(&a.id), Some(Mode::Live), "key.created", t + 10 + i)));
    store.append_events(&events).await.unwrap();
    let now = t + 100;
    let lease = now + 60_000;
    let of = |due: &[keywarden_store::webhooks::DueDelivery], e: &WebhookEndpoint| {
        due.iter().filter(|d| d.endpoint.id == e.id).count()
    };
    // Two each at most: the slow endpoint's two oldest and the other's two.
    let first = store.claim_deliveries(now, lease, 10, 2).await.unwrap();
    assert_eq!((of(&first, &slow), of(&first, &other)), (2, 2));
    let mut oldest: Vec<i64> = first
        .iter()
        .filter(|d| d.endpoint.id == slow.id)
        .map(|d| d.delivery.created_at)
        .collect();
    oldest.sort();
    assert_eq!(oldest, [t, t + 1]);
    // Both endpoints have their share in flight: nothing more until one ends.
    assert!(store
        .claim_deliveries(now, lease, 10, 2)
        .await
        .unwrap()
        .is_empty());
    let done = first.iter().find(|d| d.delivery.created_at == t).unwrap();
    store
        .finish_delivery(&AttemptOutcome {
            delivery_id: done.delivery.id.clone(),
            endpoint_id: slow.id.clone(),
            attempt: attempt(now, Some(200)),
            next: NextStep::Delivered,
            disable: None,
            events: vec![],
            lease_until: done.lease_until,
        })
        .await
        .unwrap();
    let next = store.claim_deliveries(now, lease, 10, 2).await.unwrap();
    assert_eq!(of(&next, &slow), 1);
    assert_eq!(
        next.len(),
        1,
        "the other endpoint has nothing left to claim"
    );
    assert_eq!(next[0].delivery.created_at, t + 2);
    // Leases that ran out free their places: each endpoint's oldest unsent again.
    let later = store
        .claim_deliveries(lease, lease + 60_000, 10, 2)
        .await
        .unwrap();
    assert_eq!((of(&later, &slow), of(&later, &other)), (2, 2));
    let mut oldest: Vec<i64> = later
        .iter()
        .filter(|d| d.endpoint.id == slow.id)
        .map(|d| d.delivery.created_at)
        .collect();
    oldest.sort();
    assert_eq!(oldest, [t + 1, t + 2]);
    // Within the limit, the oldest of all come first.
    let one = store
        .claim_deliveries(lease + 60_000, lease + 120_000, 1, 2)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].delivery.created_at, t + 1);
}

async fn case_events_fired_once_are_written_once(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    store
        .create_webhook(&endpoint(None, None, None), &[])
        .await
        .unwrap();
    let t = 1_700_000_000_000;
    let fired = |kind: &str| {
        (
            format!("{kind}:{}", a.id),
            event(Some(&a.id), Some(Mode::Live), kind, t),
        )
    };
    assert_eq!(store.fire_once(&[fired("key.expiring")]).await.unwrap(), 1);
    assert_eq!(
        store
            .fire_once(&[fired("key.expiring"), fired("quota.threshold")])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.webhook_backlog().await.unwrap(), 2);
    let f = EventFilter {
        account_id: Some(a.id.clone()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_events(&f).await.unwrap().len(), 2);
    // Erasure forgets the account's messages, markers and endpoints.
    store
        .create_webhook(&endpoint(Some(&a.id), None, None), &[])
        .await
        .unwrap();
    store.erase_account(&a.id, &|_| Vec::new()).await.unwrap();
    assert_eq!(store.webhook_backlog().await.unwrap(), 0);
    let own = WebhookFilter {
        account_id: Some(a.id.clone()),
        ..Default::default()
    };
    assert!(store.list_webhooks(&own).await.unwrap().is_empty());
    store.create_account(&a, &[]).await.unwrap();
    assert_eq!(store.fire_once(&[fired("key.expiring")]).await.unwrap(), 1);
}

async fn case_deadlines_and_usage_for_derived_events(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let mut soon = key(&a.id, Mode::Live);
    soon.expires_at = Some(5_000);
    let mut later = key(&a.id, Mode::Live);
    later.expires_at = Some(50_000);
    let mut revoked = key(&a.id, Mode::Live);
    revoked.expires_at = Some(5_000);
    revoked.revoked_at = Some(1);
    let mut grace = key(&a.id, Mode::Test);
    grace.previous = Some(PreviousSecret {
        secret: secret("prev"),
        key_hash: format!("sha256_prev_{}", grace.id),
        valid_until: 9_000,
    });
    for k in [&soon, &later, &revoked, &grace] {
        store.insert_key(k, &[]).await.unwrap();
    }
    let page = |after_id: Option<String>, limit| Page { after_id, limit };
    let found = store
        .keys_with_deadlines(0, 10_000, &page(None, 100))
        .await
        .unwrap();
    let mut due = vec![soon.id.clone(), grace.id.clone()];
    due.sort();
    assert_eq!(ids(&found, |k| &k.id), due);
    // Paged by id: the second page starts after the first one's last key.
    let first = store
        .keys_with_deadlines(0, 10_000, &page(None, 1))
        .await
        .unwrap();
    assert_eq!(ids(&first, |k| &k.id), due[..1]);
    let second = store
        .keys_with_deadlines(0, 10_000, &page(Some(first[0].id.clone()), 1))
        .await
        .unwrap();
    assert_eq!(ids(&second, |k| &k.id), due[1..]);
    store
        .add_usage(&[
            usage(&a.id, Mode::Live, "requests", 1_000, 7),
            usage(&a.id, Mode::Live, "requests", 10, 3),
        ])
        .await
        .unwrap();
    let rows = store.usage_since(1_000).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].used, rows[0].plan.as_str()), (7, a.plan.as_str()));
}

// ---------------------------------------------------------------------------------------
// Changes and their audit events: one transaction.
// ---------------------------------------------------------------------------------------

/// An event of `kind` about `account_id`, naming `key_id` in its data.
fn event_about(account_id: Option<&str>, kind: &str, key_id: &str) -> AuditEvent {
    AuditEvent {
        data: json!({ "key_id": key_id }),
        ..event(account_id, None, kind, 1_700_000_000_000)
    }
}

/// The ids of the events an endpoint has deliveries of, oldest first.
async fn delivered(store: &Arc<dyn Store>, endpoint_id: &str) -> Vec<String> {
    let mut got: Vec<String> = store
        .list_deliveries(endpoint_id, None, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    got.sort();
    got
}

/// Every event in the trail, newest first.
async fn trail(store: &Arc<dyn Store>) -> Vec<AuditEvent> {
    let all = EventFilter {
        limit: 1_000,
        ..Default::default()
    };
    store.list_events(&all).await.unwrap()
}

/// A change the store refuses writes neither itself nor any of its events, nor their
/// messages and deliveries.
async fn case_a_refused_change_writes_none_of_its_events(store: Arc<dyn Store>) {
    let hook = endpoint(None, None, None);
    store.create_webhook(&hook, &[]).await.unwrap();
    let a = new_account(&store).await;
    let ev = |kind: &str| vec![event_about(Some(&a.id), kind, "key_x")];

    let mut missing = account("Nobody");
    assert!(matches!(
        store.update_account(&missing, &ev("account.updated")).await,
        Err(StoreError::NotFound)
    ));
    missing.id = a.id.clone();
    missing.name = "Taken".into();
    assert!(matches!(
        store.create_account(&missing, &ev("account.created")).await,
        Err(StoreError::Conflict(_))
    ));

    store
        .insert_key_limited(&key(&a.id, Mode::Live), 1, &[])
        .await
        .unwrap();
    let over = key(&a.id, Mode::Live);
    assert!(matches!(
        store.insert_key_limited(&over, 1, &ev("key.created")).await,
        Err(StoreError::LimitReached { max_active: 1 })
    ));
    assert!(matches!(
        store
            .insert_key(&key("acc_missing", Mode::Live), &ev("key.created"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.update_key(&over, &ev("key.updated")).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.update_app(&app(), &ev("application.updated")).await,
        Err(StoreError::NotFound)
    ));
    let never = |_: &[KeyRecord]| -> Vec<AuditEvent> { panic!("no grant, no events") };
    assert!(matches!(
        store.delete_grant("grt_missing", 1, &never).await,
        Err(StoreError::NotFound)
    ));
    let never = |_: &ErasureCounts| -> Vec<AuditEvent> { panic!("no account, no events") };
    assert!(matches!(
        store.erase_account("acc_missing", &never).await,
        Err(StoreError::NotFound)
    ));
    let unknown = endpoint(None, None, None);
    assert!(matches!(
        store
            .update_webhook(&unknown, unknown.updated_at, &ev("webhook.updated"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .delete_webhook(&unknown.id, &ev("webhook.deleted"))
            .await,
        Err(StoreError::NotFound)
    ));

    assert_eq!(store.get_key(&over.id).await.unwrap(), None);
    assert_eq!(store.get_account(&a.id).await.unwrap(), Some(a.clone()));
    assert!(trail(&store).await.is_empty());
    assert!(delivered(&store, &hook.id).await.is_empty());
    assert_eq!(store.webhook_backlog().await.unwrap(), 0);
}

/// Each change writes the events handed to it, and a delivery of each to every enabled
/// endpoint it reaches, in its own transaction: a reader that sees the change sees them.
async fn case_a_change_and_its_events_commit_together(store: Arc<dyn Store>) {
    let hook = endpoint(None, None, None);
    store.create_webhook(&hook, &[]).await.unwrap();
    let mut made = Vec::new();
    let mut ev = |account_id: Option<&str>, kind: &str, about: &str| {
        let e = event_about(account_id, kind, about);
        made.push(e.clone());
        vec![e]
    };

    let mut a = account("Acme");
    store
        .create_account(&a, &ev(Some(&a.id), "account.created", ""))
        .await
        .unwrap();
    a.plan = "pro".into();
    let mut both = ev(Some(&a.id), "account.updated", "");
    both.extend(ev(Some(&a.id), "account.plan_changed", ""));
    store.update_account(&a, &both).await.unwrap();
    let mut k = key(&a.id, Mode::Live);
    store
        .insert_key_limited(&k, 5, &ev(Some(&a.id), "key.created", &k.id))
        .await
        .unwrap();
    k.name = "renamed".into();
    store
        .update_key(&k, &ev(Some(&a.id), "key.updated", &k.id))
        .await
        .unwrap();
    let mut p = app();
    store
        .create_app(&p, &ev(None, "application.created", &p.id))
        .await
        .unwrap();
    p.name = "Renamed".into();
    store
        .update_app(&p, &ev(None, "application.updated", &p.id))
        .await
        .unwrap();
    let g = grant(&a.id, &p.id);
    store
        .create_grant(&g, &ev(Some(&a.id), "grant.created", &g.id))
        .await
        .unwrap();
    let granted = KeyRecord {
        grant_id: Some(g.id.clone()),
        ..key(&a.id, Mode::Live)
    };
    store
        .insert_key(&granted, &ev(Some(&a.id), "key.created", &granted.id))
        .await
        .unwrap();
    let link = WebSession {
        id_hash: "link".into(),
        kind: WebSessionKind::PortalLink,
        account_id: Some(a.id.clone()),
        mode: Some(Mode::Live),
        role: Some(Role::Owner),
        return_url: None,
        created_at: 1_000,
        expires_at: 10_000,
        root_key: None,
    };
    store
        .create_web_session(&link, 1_000, &ev(Some(&a.id), "portal.link_created", ""))
        .await
        .unwrap();
    // The grant's events are made from the keys its deletion revoked, in its transaction.
    let revoked_events = |keys: &[KeyRecord]| -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = keys
            .iter()
            .map(|k| event_about(Some(&k.account_id), "key.revoked", &k.id))
            .collect();
        events.push(event_about(Some(&a.id), "grant.deleted", &g.id));
        events
    };
    store
        .delete_grant(&g.id, 1_700_000_500_000, &revoked_events)
        .await
        .unwrap();

    let listed = trail(&store).await;
    let kinds: Vec<&str> = listed.iter().rev().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "account.created",
            "account.updated",
            "account.plan_changed",
            "key.created",
            "key.updated",
            "application.created",
            "application.updated",
            "grant.created",
            "key.created",
            "portal.link_created",
            "key.revoked",
            "grant.deleted",
        ]
    );
    assert_eq!(
        listed
            .iter()
            .rev()
            .take(made.len())
            .cloned()
            .collect::<Vec<_>>(),
        made
    );
    assert_eq!(listed[1].data["key_id"], granted.id.as_str());
    let mut ids = ids(&listed, |e| &e.id);
    ids.sort();
    assert_eq!(delivered(&store, &hook.id).await, ids);

    // A reader never sees a key without its event and the event's delivery.
    let keys: Vec<KeyRecord> = (0..20).map(|_| key(&a.id, Mode::Test)).collect();
    let writer = {
        let (store, keys) = (store.clone(), keys.clone());
        tokio::spawn(async move {
            for k in &keys {
                let created = event_about(Some(&k.account_id), "key.created", &k.id);
                store.insert_key(k, &[created]).await.unwrap();
            }
        })
    };
    let created = EventFilter {
        account_id: Some(a.id.clone()),
        kind: Some("key.created".into()),
        limit: 1_000,
        ..Default::default()
    };
    loop {
        let mut seen = 0;
        for k in &keys {
            if store.get_key(&k.id).await.unwrap().is_none() {
                continue;
            }
            seen += 1;
            let event = store
                .list_events(&created)
                .await
                .unwrap()
                .into_iter()
                .find(|e| e.data["key_id"] == k.id.as_str())
                .unwrap_or_else(|| panic!("{} is visible without its event", k.id));
            assert!(
                delivered(&store, &hook.id).await.contains(&event.id),
                "{} is visible without its delivery",
                k.id
            );
        }
        if seen == keys.len() {
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
}

/// An endpoint's own change is written before its event: a new or re-enabled endpoint
/// receives its own event, a disabled one does not, and a deleted one takes its deliveries
/// with it while the others receive its deletion.
async fn case_endpoint_changes_reach_endpoints_as_changed(store: Arc<dyn Store>) {
    let watcher = endpoint(None, None, None);
    store.create_webhook(&watcher, &[]).await.unwrap();
    let ev = |kind: &str, e: &WebhookEndpoint| event_about(None, kind, &e.id);

    let mut e = endpoint(None, None, None);
    let created = ev("webhook.created", &e);
    store
        .create_webhook(&e, std::slice::from_ref(&created))
        .await
        .unwrap();
    assert_eq!(delivered(&store, &e.id).await, [created.id.as_str()]);

    let read_at = e.updated_at;
    e.enabled = false;
    e.updated_at += 1;
    let disabled = ev("webhook.updated", &e);
    store
        .update_webhook(&e, read_at, std::slice::from_ref(&disabled))
        .await
        .unwrap();
    assert_eq!(delivered(&store, &e.id).await, [created.id.as_str()]);

    // A write over the endpoint as it was before that change is refused and writes nothing.
    let mut stale = e.clone();
    stale.enabled = true;
    stale.description = "stale".into();
    let refused = ev("webhook.updated", &stale);
    assert!(matches!(
        store
            .update_webhook(&stale, read_at, std::slice::from_ref(&refused))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let now = store.get_webhook(&e.id).await.unwrap().unwrap();
    assert!(!now.enabled && now.description != "stale");
    assert_eq!(delivered(&store, &e.id).await, [created.id.as_str()]);

    let read_at = e.updated_at;
    e.enabled = true;
    e.updated_at += 1;
    let enabled = ev("webhook.updated", &e);
    store
        .update_webhook(&e, read_at, std::slice::from_ref(&enabled))
        .await
        .unwrap();
    assert_eq!(
        delivered(&store, &e.id).await,
        [created.id.as_str(), enabled.id.as_str()]
    );

    let own = store.list_deliveries(&e.id, None, 10).await.unwrap();
    let deleted = ev("webhook.deleted", &e);
    store
        .delete_webhook(&e.id, std::slice::from_ref(&deleted))
        .await
        .unwrap();
    assert_eq!(store.get_webhook(&e.id).await.unwrap(), None);
    for d in &own {
        assert_eq!(store.get_delivery(&d.id).await.unwrap(), None);
    }
    assert!(delivered(&store, &e.id).await.is_empty());
    assert_eq!(
        delivered(&store, &watcher.id).await,
        [created.id, disabled.id, enabled.id, deleted.id]
    );
    assert_eq!(store.webhook_backlog().await.unwrap(), 4);
}

/// An erasure deletes the account's trail and messages, then writes its own events in the
/// same transaction: they survive it and are delivered to the endpoints that remain.
async fn case_erasure_records_itself_after_its_deletions(store: Arc<dyn Store>) {
    let operator = endpoint(None, None, None);
    store.create_webhook(&operator, &[]).await.unwrap();
    let a = account("Acme");
    store
        .create_account(&a, &[event_about(Some(&a.id), "account.created", "")])
        .await
        .unwrap();
    let own = endpoint(Some(&a.id), None, None);
    store.create_webhook(&own, &[]).await.unwrap();
    let k = key(&a.id, Mode::Live);
    store
        .insert_key(&k, &[event_about(Some(&a.id), "key.created", &k.id)])
        .await
        .unwrap();
    assert_eq!(delivered(&store, &operator.id).await.len(), 2);
    assert_eq!(delivered(&store, &own.id).await.len(), 1);

    let erased = |counts: &ErasureCounts| {
        vec![AuditEvent {
            data: json!({ "account_id": a.id, "counts": counts }),
            ..event(Some(&a.id), None, "account.erased", 1_700_000_000_000)
        }]
    };
    let counts = store.erase_account(&a.id, &erased).await.unwrap();
    assert_eq!((counts.deleted_events, counts.deleted_api_keys), (2, 1));

    let listed = trail(&store).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].kind, "account.erased");
    assert_eq!(listed[0].account_id.as_deref(), Some(a.id.as_str()));
    assert_eq!(listed[0].data["counts"]["deleted_events"], 2);
    assert_eq!(
        delivered(&store, &operator.id).await,
        [listed[0].id.as_str()]
    );
    assert_eq!(store.get_webhook(&own.id).await.unwrap(), None);
    assert_eq!(store.webhook_backlog().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------
// Backends.
// ---------------------------------------------------------------------------------------

/// A fresh SQLite file store; the directory lives as long as the returned guard.
/// Decision counts land per key, per account and deployment-wide, in minute, hour and day
/// buckets, add up across batches, and old buckets are pruned per granularity.
async fn case_decision_counts_roll_up(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let (k1, k2) = (key(&a.id, Mode::Live), key(&a.id, Mode::Live));
    store.insert_key(&k1, &[]).await.unwrap();
    store.insert_key(&k2, &[]).await.unwrap();
    let hour = 3_600_000;
    let batch = |decisions| WriteBatch {
        decisions,
        ..WriteBatch::default()
    };
    store
        .write_batch(&batch(vec![
            decision(Some((&k1.id, &a.id)), "valid", 0, 3),
            decision(Some((&k1.id, &a.id)), "rate_limited", 60_000, 1),
            decision(Some((&k2.id, &a.id)), "valid", hour, 2),
            decision(None, "invalid_api_key", 0, 5),
        ]))
        .await
        .unwrap();
    store
        .write_batch(&batch(vec![decision(Some((&k1.id, &a.id)), "valid", 0, 1)]))
        .await
        .unwrap();
    let q = |g, account: Option<&str>, key: Option<&str>| DecisionQuery {
        granularity: g,
        account_id: account.map(str::to_string),
        key_id: key.map(str::to_string),
        mode: None,
        from: 0,
        to: 2 * hour,
    };
    let rows = |v: &[(i64, &str, u64)]| -> Vec<(i64, String, u64)> {
        v.iter().map(|(b, c, n)| (*b, c.to_string(), *n)).collect()
    };
    assert_eq!(
        store
            .decision_counts(&q(Granularity::Minute, Some(&a.id), Some(&k1.id)))
            .await
            .unwrap(),
        rows(&[(0, "valid", 4), (60_000, "rate_limited", 1)])
    );
    assert_eq!(
        store
            .decision_counts(&q(Granularity::Hour, Some(&a.id), None))
            .await
            .unwrap(),
        rows(&[(0, "rate_limited", 1), (0, "valid", 4), (hour, "valid", 2)])
    );
    assert_eq!(
        store
            .decision_counts(&q(Granularity::Day, None, None))
            .await
            .unwrap(),
        rows(&[
            (0, "invalid_api_key", 5),
            (0, "rate_limited", 1),
            (0, "valid", 6)
        ])
    );
    let test_only = DecisionQuery {
        mode: Some(Mode::Test),
        ..q(Granularity::Day, Some(&a.id), None)
    };
    assert!(store.decision_counts(&test_only).await.unwrap().is_empty());
    assert_eq!(
        store
            .prune_decision_counts(Granularity::Minute, hour)
            .await
            .unwrap(),
        // Minute rows before the hour: k1's two, the account's two, the deployment's three.
        7
    );
    assert!(store
        .decision_counts(&q(Granularity::Minute, None, None))
        .await
        .unwrap()
        .iter()
        .all(|(b, _, _)| *b >= hour));
    assert_eq!(
        store
            .decision_counts(&q(Granularity::Day, None, None))
            .await
            .unwrap()
            .len(),
        3,
        "coarser buckets stay"
    );
}

/// A portal link is used by exactly one of many concurrent callers; sessions are found by
/// their id's hash until they expire; suspension and erasure end an account's sessions.
async fn case_web_sessions(store: Arc<dyn Store>) {
    let a = new_account(&store).await;
    let session = |hash: &str, kind, expires_at| WebSession {
        id_hash: hash.into(),
        kind,
        account_id: Some(a.id.clone()),
        mode: Some(Mode::Live),
        role: Some(Role::Admin),
        return_url: Some("https://example.com/back".into()),
        created_at: 1_000,
        expires_at,
        root_key: Some("root-fingerprint".into()),
    };
    let link = session("link", WebSessionKind::PortalLink, 10_000);
    store.create_web_session(&link, 1_000, &[]).await.unwrap();
    assert_eq!(
        store.get_web_session("link", 2_000).await.unwrap(),
        Some(link.clone())
    );
    assert_eq!(
        store.get_web_session("link", 10_000).await.unwrap(),
        None,
        "expired"
    );
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_web_session("link", 2_000).await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for t in takers {
        taken.extend(t.await.unwrap());
    }
    assert_eq!(taken, vec![link], "exactly one caller uses the link");
    assert_eq!(store.get_web_session("link", 2_000).await.unwrap(), None);

    // Expired sessions go when the next one is made.
    let old = session("old", WebSessionKind::Portal, 5_000);
    store.create_web_session(&old, 1_000, &[]).await.unwrap();
    let new = session("new", WebSessionKind::Portal, 90_000);
    store.create_web_session(&new, 6_000, &[]).await.unwrap();
    assert_eq!(store.take_web_session("old", 0).await.unwrap(), None);
    assert_eq!(store.end_web_sessions(&a.id).await.unwrap(), 1);
    assert_eq!(store.get_web_session("new", 7_000).await.unwrap(), None);

    let console = WebSession {
        account_id: None,
        mode: None,
        role: None,
        return_url: None,
        root_key: None,
        ..session("console", WebSessionKind::Console, 90_000)
    };
    store
        .create_web_session(&console, 7_000, &[])
        .await
        .unwrap();
    assert_eq!(
        store.get_web_session("console", 8_000).await.unwrap(),
        Some(console)
    );
    let kept = session("kept", WebSessionKind::Portal, 90_000);
    store.create_web_session(&kept, 7_000, &[]).await.unwrap();
    store.erase_account(&a.id, &|_| Vec::new()).await.unwrap();
    assert_eq!(
        store.get_web_session("kept", 8_000).await.unwrap(),
        None,
        "erased with its account"
    );
}

async fn sqlite_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_file(&dir.path().join("keywarden.db"))
        .await
        .unwrap();
    (Arc::new(store), dir)
}

/// A PostgreSQL database created for one test and dropped when the guard goes, even when
/// the test fails.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // The test's runtime may be shutting down; a runtime of its own always works.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let pool = sqlx::PgPool::connect(&admin_url).await?;
                    sqlx::query(&sql).execute(&pool).await?;
                    pool.close().await;
                    Ok::<_, sqlx::Error>(())
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// The same server URL with another database name.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A store on a fresh PostgreSQL database, or `None` when no server is configured.
async fn pg_store() -> Option<(Arc<dyn Store>, PgDatabase)> {
    let admin_url = std::env::var("KEYWARDEN_TEST_DATABASE_URL").ok()?;
    let name = format!("kw_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let guard = PgDatabase {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let store = PgStore::open(&with_database(&admin_url, &name))
        .await
        .unwrap();
    Some((Arc::new(store), guard))
}

/// Runs every case on both backends, one `#[tokio::test]` per case and backend.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$case(store).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some((store, _db)) = super::pg_store().await else {
                        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
                        return;
                    };
                    super::$case(store).await;
                }
            )*
        }
    };
}

suite!(
    case_ping,
    case_account_round_trip,
    case_accounts_page_by_id,
    case_duplicate_ids_conflict,
    case_events_delivered_twice_are_stored_once,
    case_keys_need_their_account,
    case_key_round_trip,
    case_update_key_replaces_mutable_fields,
    case_revocation_persists,
    case_lookup_by_current_and_previous,
    case_secrets_rotated_out_for_good_are_found_as_revoked,
    case_slow_hash_lookups_may_collide,
    case_list_keys_pages_by_mode,
    case_insert_key_limited_at_the_limit,
    case_insert_key_limited_under_concurrency,
    case_concurrent_writers_never_fail,
    case_touches_move_forward_only,
    case_app_round_trip,
    case_grant_round_trip,
    case_delete_grant_revokes_its_keys,
    case_event_filters,
    case_activity_retention,
    case_usage_accumulates_per_counter,
    case_write_batch_lands_whole,
    case_a_batch_for_an_erased_account_leaves_nothing,
    case_erase_account_removes_everything_of_it,
    case_web_sessions,
    case_decision_counts_roll_up,
    case_events_queue_their_deliveries_in_the_same_write,
    case_disabling_an_endpoint_records_its_event,
    case_endpoint_updates_and_the_delivery_worker_do_not_undo_each_other,
    case_concurrent_claims_take_each_delivery_once,
    case_claims_leave_each_endpoint_its_share,
    case_an_attempt_past_its_lease_is_not_recorded,
    case_events_fired_once_are_written_once,
    case_deadlines_and_usage_for_derived_events,
    case_a_refused_change_writes_none_of_its_events,
    case_a_change_and_its_events_commit_together,
    case_endpoint_changes_reach_endpoints_as_changed,
    case_erasure_records_itself_after_its_deletions,
);

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "kw_x"),
        "postgres://postgres@127.0.0.1:5432/kw_x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "kw_x"),
        "postgres://u:p@h/kw_x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "kw_x"), "postgres://h/kw_x");
}
