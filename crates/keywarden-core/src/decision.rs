//! The decision of `docs/decision.md`: a pure function from what was found (the key record, its
//! account, the request's facts) and the time to a verdict. The checks run in the spec's
//! order and the first failure wins, so the code a client sees never depends on anything
//! but that order.
//!
//! Finding the key (a store or cache lookup) and checking a slow hash are I/O and happen
//! before; consuming rate-limit, concurrency and quota budget happens after, and only for
//! a request that passed every other check ([`limit_verdict`]), so failed attempts never
//! eat a customer's budget.

use crate::codes::Code;
use crate::hashing::SecretHasher;
use crate::ip::IpAllowlist;
use crate::limits::{QuotaOutcome, RateOutcome};
use crate::model::{
    AccountStatus, Application, KeyRecord, KeyType, Millis, Mode, RateLimitSpec, Role, StoredSecret,
};
use crate::scopes::{ScopeCatalog, ScopeSet};
use std::net::IpAddr;

/// A key ready for the hot path: what the decision reads and what an answer about the key
/// shows, compiled once from its record and packed small, because a million of them may
/// sit in the key cache (`docs/operations.md#storage`). What it leaves out (description, owner, scope names as
/// written, usage and revocation details, the lookups) is in the store's [`KeyRecord`].
#[derive(Clone, Debug)]
pub struct CompiledKey {
    /// `id`, `account_id`, `app_id`, `grant_id`, `name`, `start`, then `prefix` and
    /// `key_hash` when they cannot be derived (see `prefix_len`, `key_hash`), back to back.
    text: Box<str>,
    /// Where each piece of `text` ends.
    ends: [u16; TEXT_PIECES],
    /// `prefix` is this many bytes of `start` (always so for keys this service issues);
    /// `None` when it is kept in `text`.
    prefix_len: Option<u8>,
    /// Live or test.
    pub mode: Mode,
    /// Secret or publishable.
    pub key_type: KeyType,
    /// What the key may manage through the self-service API.
    pub role: Role,
    /// Whether the key is enabled.
    pub enabled: bool,
    /// When the key expires.
    pub expires_at: Option<Millis>,
    /// When the key was revoked.
    pub revoked_at: Option<Millis>,
    /// The key's own rate limit, overriding its plan's.
    pub rate_limit: Option<RateLimitSpec>,
    /// The SHA-256 in `key_hash` (`sha256_` + hex), when it has that form.
    key_hash: Option<[u8; 32]>,
    /// The current secret's stored form when it is a slow hash (bcrypt, argon2id), to check
    /// a token against; `None` for the fast schemes, whose lookup value is the digest
    /// itself, so finding the key by it is the match.
    pub slow_secret: Option<Box<StoredSecret>>,
    /// The secret before the last rotation, while it is kept.
    pub previous: Option<Box<CompiledPrevious>>,
    /// The key's metadata; `None` for an empty object.
    metadata: Option<Box<serde_json::Value>>,
    /// Effective scopes as a bitset (aliases expanded; publishable keys limited to public).
    pub scopes: ScopeSet,
    /// The parsed IP allowlist.
    pub allowlist: IpAllowlist,
}

/// The part of a rotated-out secret the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPrevious {
    /// End of the grace period.
    pub valid_until: Millis,
    /// Its stored form when it is a slow hash (see [`CompiledKey::slow_secret`]).
    pub slow_secret: Option<Box<StoredSecret>>,
}

/// The pieces of [`CompiledKey`]'s text, in order.
const ID: usize = 0;
const ACCOUNT_ID: usize = 1;
const APP_ID: usize = 2;
const GRANT_ID: usize = 3;
const NAME: usize = 4;
const START: usize = 5;
const PREFIX: usize = 6;
const KEY_HASH: usize = 7;
const TEXT_PIECES: usize = 8;

/// `hash` when it is `sha256_` and 64 lower-case hex digits.
fn fingerprint_bytes(hash: &str) -> Option<[u8; 32]> {
    let hex_part = hash.strip_prefix("sha256_")?;
    if hex_part.len() != 64
        || !hex_part
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

fn slow_secret(secret: &StoredSecret) -> Option<Box<StoredSecret>> {
    (!secret.hash.is_empty()).then(|| Box::new(secret.clone()))
}

impl CompiledKey {
    /// Compiles a record against the catalog. Scopes that left the catalog since the key
    /// was made are ignored (they grant nothing), and an allowlist entry that no longer
    /// parses denies every address rather than allowing any.
    pub fn compile(record: KeyRecord, catalog: &ScopeCatalog) -> Self {
        let mut scopes = match catalog.compile(&record.scopes) {
            Ok(set) => set,
            Err(_) => {
                let known: Vec<&String> = record
                    .scopes
                    .iter()
                    .filter(|s| catalog.compile(&[s.as_str()]).is_ok())
                    .collect();
                catalog.compile(&known).unwrap_or_default()
            }
        };
        if record.key_type == KeyType::Publishable {
            scopes = scopes.intersection(catalog.public_scopes());
        }
        let allowlist = IpAllowlist::parse(&record.ip_allowlist).unwrap_or_else(|_| {
            // An unparseable stored entry must fail closed: allow nothing.
            IpAllowlist::parse(&["255.255.255.255/32"]).unwrap_or_default()
        });
        let prefix_len = u8::try_from(record.prefix.len())
            .ok()
            .filter(|_| record.start.starts_with(&record.prefix));
        let key_hash = fingerprint_bytes(&record.key_hash);
        let mut pieces: [&str; TEXT_PIECES] = [""; TEXT_PIECES];
        pieces[ID] = &record.id;
        pieces[ACCOUNT_ID] = &record.account_id;
        pieces[APP_ID] = record.app_id.as_deref().unwrap_or("");
        pieces[GRANT_ID] = record.grant_id.as_deref().unwrap_or("");
        pieces[NAME] = &record.name;
        pieces[START] = &record.start;
        if prefix_len.is_none() {
            pieces[PREFIX] = &record.prefix;
        }
        if key_hash.is_none() {
            pieces[KEY_HASH] = &record.key_hash;
        }
        let mut text = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
        let mut ends = [0u16; TEXT_PIECES];
        for (end, piece) in ends.iter_mut().zip(pieces) {
            // Stored fields are bounded far below 64 KiB (names: 100 characters); a piece
            // that would not fit is left out rather than allowed to corrupt the others.
            if text.len() + piece.len() <= usize::from(u16::MAX) {
                text.push_str(piece);
            }
            *end = u16::try_from(text.len()).unwrap_or(u16::MAX);
        }
        let metadata = match record.metadata {
            serde_json::Value::Object(ref m) if m.is_empty() => None,
            other => Some(Box::new(other)),
        };
        CompiledKey {
            text: text.into_boxed_str(),
            ends,
            prefix_len,
            mode: record.mode,
            key_type: record.key_type,
            role: record.role,
            enabled: record.enabled,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            rate_limit: record.rate_limit,
            key_hash,
            slow_secret: slow_secret(&record.secret),
            previous: record.previous.as_ref().map(|p| {
                Box::new(CompiledPrevious {
                    valid_until: p.valid_until,
                    slow_secret: slow_secret(&p.secret),
                })
            }),
            metadata,
            scopes,
            allowlist,
        }
    }

    fn piece(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text
            .get(usize::from(start)..usize::from(self.ends[i]))
            .unwrap_or("")
    }

    /// `key_` + ULID.
    pub fn id(&self) -> &str {
        self.piece(ID)
    }

    /// The owning account.
    pub fn account_id(&self) -> &str {
        self.piece(ACCOUNT_ID)
    }

    /// The application of a key made under a grant.
    pub fn app_id(&self) -> Option<&str> {
        Some(self.piece(APP_ID)).filter(|s| !s.is_empty())
    }

    /// The grant a key was made under.
    pub fn grant_id(&self) -> Option<&str> {
        Some(self.piece(GRANT_ID)).filter(|s| !s.is_empty())
    }

    /// The key's label.
    pub fn name(&self) -> &str {
        self.piece(NAME)
    }

    /// The displayable start of the token.
    pub fn start(&self) -> &str {
        self.piece(START)
    }

    /// The fixed start of the token (`kw_sk_live_`).
    pub fn prefix(&self) -> &str {
        match self.prefix_len {
            Some(n) => self.start().get(..usize::from(n)).unwrap_or(""),
            None => self.piece(PREFIX),
        }
    }

    /// The public fingerprint of the current token (`sha256_…`).
    pub fn key_hash(&self) -> String {
        match &self.key_hash {
            Some(bytes) => format!("sha256_{}", hex::encode(bytes)),
            None => self.piece(KEY_HASH).to_owned(),
        }
    }

    /// The key's metadata (an empty object when it has none).
    pub fn metadata(&self) -> serde_json::Value {
        match &self.metadata {
            Some(m) => (**m).clone(),
            None => serde_json::Value::Object(serde_json::Map::new()),
        }
    }
}

/// Which of a key's secrets the presented token matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretMatch {
    /// The current secret.
    Current,
    /// The secret before the last rotation (valid only during its grace).
    Previous,
}

/// What the key lookup found for the presented credential.
#[derive(Clone, Copy, Debug)]
pub enum KeyLookup<'a> {
    /// No credential was presented.
    Missing,
    /// Bad format or checksum, unknown, or hash mismatch: all the same to the client.
    Invalid,
    /// A key whose secret matched.
    Found {
        /// The key.
        key: &'a CompiledKey,
        /// Which secret matched.
        matched: SecretMatch,
    },
    /// A configured global key: full access, no account, no limits.
    Global,
}

/// The outcome of checking the application secret (`docs/concepts.md#presenting-a-key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppSecretCheck {
    /// No app secret is needed (no header configured, or the key has no application).
    NotRequired,
    /// The right secret for the key's mode was presented.
    Valid,
    /// It was needed and not presented.
    Missing,
    /// It matches neither of the application's secrets (or the application is gone).
    Wrong,
    /// It is the application's secret for the other environment.
    OtherEnvironment,
    /// The deployment binds every key to an application (`keys.require_app`) and this
    /// key has none: it is not a valid key here, whatever secret comes with it.
    Unbound,
}

/// Checks a presented application secret against the application's stored secrets: the
/// environment matching `mode` must match (production with live, sandbox with test).
pub fn check_app_secret(
    hasher: &SecretHasher,
    app: Option<&Application>,
    mode: Mode,
    presented: Option<&str>,
) -> AppSecretCheck {
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return AppSecretCheck::Missing;
    };
    let Some(app) = app else {
        return AppSecretCheck::Wrong;
    };
    let (right, other) = match mode {
        Mode::Live => (&app.production, &app.sandbox),
        Mode::Test => (&app.sandbox, &app.production),
    };
    if hasher.verify(presented, right) {
        AppSecretCheck::Valid
    } else if hasher.verify(presented, other) {
        AppSecretCheck::OtherEnvironment
    } else {
        AppSecretCheck::Wrong
    }
}

/// What the request needs in scopes.
#[derive(Clone, Copy, Debug)]
pub enum Requirement<'a> {
    /// A valid key is enough.
    None,
    /// Every scope of the set.
    All(&'a ScopeSet),
    /// At least one scope of the set.
    Any(&'a ScopeSet),
    /// Every scope of the first set, and at least one of the second (unless it is empty).
    AllAndAny(&'a ScopeSet, &'a ScopeSet),
    /// Something no key can have (a route denying by default, or a substituted scope
    /// outside the catalog).
    Impossible,
}

/// Everything the decision looks at, gathered by the caller.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// `server.api_enabled`.
    pub api_enabled: bool,
    /// `Some(retry_after_secs)` when the client IP is locked out.
    pub locked_out: Option<u64>,
    /// What the credential lookup found.
    pub key: KeyLookup<'a>,
    /// The status of the key's account (`None` when the account no longer exists).
    pub account_status: Option<AccountStatus>,
    /// The application-secret check.
    pub app_secret: AppSecretCheck,
    /// The client IP, if known.
    pub client_ip: Option<IpAddr>,
    /// The mode of the object the request touches, when it touches one.
    pub object_mode: Option<Mode>,
    /// The scopes the request needs.
    pub required: Requirement<'a>,
    /// The request is a call of the self-service API, which needs this role
    /// (`docs/self-service.md`): only an account's own secret keys make such calls.
    pub self_service: Option<RoleNeed>,
    /// The time of the decision.
    pub now_ms: Millis,
}

/// What a self-service call needs from the calling key's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleNeed {
    /// Any role.
    Any,
    /// `owner`, `admin` or `developer` (key management).
    KeyManager,
    /// `owner` only.
    Owner,
    /// `owner`, on a key of the account itself rather than one an application holds (an
    /// application never manages grants, its own or another's).
    AccountOwner,
}

impl RoleNeed {
    /// Whether a key of this role may make the call.
    pub fn admits(self, role: Role) -> bool {
        match self {
            RoleNeed::Any => true,
            RoleNeed::KeyManager => role.can_manage_keys(),
            RoleNeed::Owner | RoleNeed::AccountOwner => role == Role::Owner,
        }
    }

    /// The refusal of a key without the role.
    fn refusal(self) -> Denial {
        Denial::explained(
            Code::InsufficientRole,
            match self {
                RoleNeed::Owner | RoleNeed::AccountOwner => "this needs a key with role owner",
                _ => "this needs a key with role owner, admin or developer",
            },
        )
    }
}

/// A refusal: its code and, for 429s, when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Why.
    pub code: Code,
    /// Seconds until a retry may succeed (429s only), never 0.
    pub retry_after: Option<u64>,
    /// What the answer's message says instead of the code's own, when the code alone would
    /// not tell the caller what to change.
    pub detail: Option<&'static str>,
}

impl Denial {
    /// A denial without a retry hint.
    pub fn new(code: Code) -> Self {
        Denial {
            code,
            retry_after: None,
            detail: None,
        }
    }

    /// A denial whose message is `detail`.
    pub fn explained(code: Code, detail: &'static str) -> Self {
        Denial {
            detail: Some(detail),
            ..Denial::new(code)
        }
    }

    /// A denial with a retry hint (at least one second).
    pub fn retry(code: Code, secs: u64) -> Self {
        Denial {
            retry_after: Some(secs.max(1)),
            ..Denial::new(code)
        }
    }
}

/// Runs checks 1–12 of `docs/decision.md` (everything but the limits) in order.
pub fn authorize(f: &Facts<'_>) -> Result<(), Denial> {
    if !f.api_enabled {
        return Err(Denial::new(Code::ApiDisabled));
    }
    if let Some(secs) = f.locked_out {
        return Err(Denial::retry(Code::TooManyAuthFailures, secs));
    }
    let (key, matched) = match f.key {
        KeyLookup::Missing => return Err(Denial::new(Code::MissingApiKey)),
        KeyLookup::Invalid => return Err(Denial::new(Code::InvalidApiKey)),
        // A global key passes here with full access, but it belongs to no account.
        KeyLookup::Global if f.self_service.is_some() => {
            return Err(Denial::explained(
                Code::InsufficientScope,
                "global keys belong to no account and cannot use the self-service API",
            ))
        }
        KeyLookup::Global => return Ok(()),
        KeyLookup::Found { key, matched } => (key, matched),
    };
    let r = key;
    if r.revoked_at.is_some_and(|at| at <= f.now_ms) {
        return Err(Denial::new(Code::ApiKeyRevoked));
    }
    if matched == SecretMatch::Previous
        && r.previous
            .as_ref()
            .is_none_or(|p| f.now_ms >= p.valid_until)
    {
        return Err(Denial::new(Code::ApiKeyRevoked));
    }
    if r.expires_at.is_some_and(|at| f.now_ms >= at) {
        return Err(Denial::new(Code::ApiKeyExpired));
    }
    if !r.enabled {
        return Err(Denial::new(Code::ApiKeyDisabled));
    }
    match f.account_status {
        // A key whose account is gone is as good as unknown.
        None => return Err(Denial::new(Code::InvalidApiKey)),
        Some(AccountStatus::Suspended) => return Err(Denial::new(Code::AccountInactive)),
        Some(AccountStatus::Pending) if r.mode == Mode::Live => {
            return Err(Denial::new(Code::AccountInactive))
        }
        Some(_) => {}
    }
    match f.app_secret {
        AppSecretCheck::NotRequired | AppSecretCheck::Valid => {}
        AppSecretCheck::Missing | AppSecretCheck::Wrong | AppSecretCheck::OtherEnvironment => {
            return Err(Denial::new(Code::InvalidAppSecret))
        }
        AppSecretCheck::Unbound => return Err(Denial::new(Code::InvalidApiKey)),
    }
    if !key.allowlist.is_empty() {
        let allowed = f.client_ip.is_some_and(|ip| key.allowlist.allows(ip));
        if !allowed {
            return Err(Denial::new(Code::IpNotAllowed));
        }
    }
    if f.object_mode.is_some_and(|m| m != r.mode) {
        return Err(Denial::new(Code::ModeMismatch));
    }
    let scoped = match f.required {
        Requirement::None => true,
        Requirement::All(set) => key.scopes.contains_all(set),
        Requirement::Any(set) => set.is_empty() || key.scopes.contains_any(set),
        Requirement::AllAndAny(all, any) => {
            key.scopes.contains_all(all) && (any.is_empty() || key.scopes.contains_any(any))
        }
        Requirement::Impossible => false,
    };
    if !scoped {
        return Err(Denial::new(Code::InsufficientScope));
    }
    if let Some(role) = f.self_service {
        if r.key_type == KeyType::Publishable {
            return Err(Denial::explained(
                Code::InsufficientScope,
                "publishable keys cannot use the self-service API",
            ));
        }
        if !role.admits(r.role) {
            return Err(role.refusal());
        }
        if role == RoleNeed::AccountOwner && key.app_id().is_some() {
            return Err(Denial::explained(
                Code::InsufficientRole,
                "keys of an application cannot manage grants",
            ));
        }
    }
    Ok(())
}

/// Runs checks 13–15 of `docs/decision.md` on outcomes the caller computed after [`authorize`]
/// passed: the rate limit, then the concurrency limit, then each quota.
pub fn limit_verdict(
    rate: Option<&RateOutcome>,
    concurrency_ok: bool,
    quotas: &[QuotaOutcome],
) -> Result<(), Denial> {
    if let Some(r) = rate.filter(|r| !r.allowed) {
        return Err(Denial::retry(Code::RateLimitExceeded, r.retry_after_secs));
    }
    if !concurrency_ok {
        return Err(Denial::retry(Code::ConcurrencyLimitExceeded, 1));
    }
    if let Some(q) = quotas.iter().find(|q| !q.allowed) {
        return Err(Denial::retry(Code::QuotaExceeded, q.retry_after_secs));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{check_quota, Period, QuotaSpec, RateLimit};
    use crate::model::{PreviousSecret, Role, StoredSecret};
    use crate::scopes::CatalogEntry;
    use std::collections::BTreeMap;

    const NOW: Millis = 1_774_000_800_000;

    fn catalog() -> ScopeCatalog {
        let entries = vec![
            CatalogEntry {
                name: "invoices:read".into(),
                description: String::new(),
                public: true,
            },
            CatalogEntry {
                name: "invoices:write".into(),
                description: String::new(),
                public: false,
            },
        ];
        ScopeCatalog::build(&entries, &BTreeMap::new(), true).unwrap()
    }

    fn record() -> KeyRecord {
        let secret = StoredSecret {
            scheme: crate::model::HashScheme::HmacSha256,
            lookup: "aa".into(),
            hash: String::new(),
        };
        KeyRecord {
            name: "k".into(),
            role: Role::Owner,
            scopes: vec!["invoices:read".into()],
            prefix: "kw_sk_live_".into(),
            start: "kw_sk_live_abcd".into(),
            key_hash: "sha256_x".into(),
            secret: secret.clone(),
            previous: Some(PreviousSecret {
                secret,
                key_hash: "sha256_y".into(),
                valid_until: NOW + 1000,
            }),
            ..KeyRecord::new(
                "key_1".into(),
                "acc_1".into(),
                Mode::Live,
                KeyType::Secret,
                NOW - 1,
            )
        }
    }

    /// One case: tweak the record and the facts, expect a code.
    fn check(
        edit_record: impl Fn(&mut KeyRecord),
        edit_facts: impl for<'a> Fn(&mut Facts<'a>),
        matched: SecretMatch,
        want: Code,
    ) {
        let cat = catalog();
        let mut r = record();
        edit_record(&mut r);
        let key = CompiledKey::compile(r, &cat);
        let read = cat.required(&["invoices:read"]).unwrap();
        let mut f = Facts {
            api_enabled: true,
            locked_out: None,
            key: KeyLookup::Found { key: &key, matched },
            account_status: Some(AccountStatus::Active),
            app_secret: AppSecretCheck::NotRequired,
            client_ip: Some("203.0.113.9".parse().unwrap()),
            object_mode: None,
            required: Requirement::All(&read),
            self_service: None,
            now_ms: NOW,
        };
        edit_facts(&mut f);
        let got = authorize(&f).err().map(|d| d.code).unwrap_or(Code::Valid);
        assert_eq!(got, want);
    }

    const CUR: SecretMatch = SecretMatch::Current;
    const PREV: SecretMatch = SecretMatch::Previous;

    #[test]
    fn every_code_path_in_order() {
        let none = |_: &mut KeyRecord| {};
        let same = |_: &mut Facts<'_>| {};
        check(none, same, CUR, Code::Valid);
        check(none, |f| f.api_enabled = false, CUR, Code::ApiDisabled);
        check(
            none,
            |f| f.locked_out = Some(30),
            CUR,
            Code::TooManyAuthFailures,
        );
        check(
            none,
            |f| f.key = KeyLookup::Missing,
            CUR,
            Code::MissingApiKey,
        );
        check(
            none,
            |f| f.key = KeyLookup::Invalid,
            CUR,
            Code::InvalidApiKey,
        );
        check(
            |r| r.revoked_at = Some(NOW - 1),
            same,
            CUR,
            Code::ApiKeyRevoked,
        );
        check(none, same, PREV, Code::Valid);
        check(none, |f| f.now_ms = NOW + 1000, PREV, Code::ApiKeyRevoked);
        check(|r| r.previous = None, same, PREV, Code::ApiKeyRevoked);
        check(|r| r.expires_at = Some(NOW), same, CUR, Code::ApiKeyExpired);
        check(|r| r.expires_at = Some(NOW + 1), same, CUR, Code::Valid);
        check(|r| r.enabled = false, same, CUR, Code::ApiKeyDisabled);
        check(
            none,
            |f| f.account_status = Some(AccountStatus::Suspended),
            CUR,
            Code::AccountInactive,
        );
        check(
            none,
            |f| f.account_status = Some(AccountStatus::Pending),
            CUR,
            Code::AccountInactive,
        );
        check(
            |r| r.mode = Mode::Test,
            |f| f.account_status = Some(AccountStatus::Pending),
            CUR,
            Code::Valid,
        );
        check(
            |r| r.mode = Mode::Test,
            |f| f.account_status = Some(AccountStatus::Suspended),
            CUR,
            Code::AccountInactive,
        );
        check(none, |f| f.account_status = None, CUR, Code::InvalidApiKey);
        check(
            none,
            |f| f.app_secret = AppSecretCheck::Missing,
            CUR,
            Code::InvalidAppSecret,
        );
        check(
            none,
            |f| f.app_secret = AppSecretCheck::Wrong,
            CUR,
            Code::InvalidAppSecret,
        );
        check(
            none,
            |f| f.app_secret = AppSecretCheck::OtherEnvironment,
            CUR,
            Code::InvalidAppSecret,
        );
        check(
            none,
            |f| f.app_secret = AppSecretCheck::Valid,
            CUR,
            Code::Valid,
        );
        check(
            none,
            |f| f.app_secret = AppSecretCheck::Unbound,
            CUR,
            Code::InvalidApiKey,
        );
        check(
            |r| r.ip_allowlist = vec!["10.0.0.0/8".into()],
            same,
            CUR,
            Code::IpNotAllowed,
        );
        check(
            |r| r.ip_allowlist = vec!["10.0.0.0/8".into()],
            |f| f.client_ip = None,
            CUR,
            Code::IpNotAllowed,
        );
        check(
            |r| r.ip_allowlist = vec!["203.0.113.0/24".into()],
            same,
            CUR,
            Code::Valid,
        );
        check(
            none,
            |f| f.object_mode = Some(Mode::Test),
            CUR,
            Code::ModeMismatch,
        );
        check(none, |f| f.object_mode = Some(Mode::Live), CUR, Code::Valid);
        check(
            |r| r.scopes = vec!["invoices:write".into()],
            same,
            CUR,
            Code::InsufficientScope,
        );
        check(
            none,
            |f| f.required = Requirement::Impossible,
            CUR,
            Code::InsufficientScope,
        );
        check(
            |r| r.scopes = vec![],
            |f| f.required = Requirement::None,
            CUR,
            Code::Valid,
        );
        check(|r| r.scopes = vec!["*".into()], same, CUR, Code::Valid);
    }

    #[test]
    fn self_service_calls_admit_only_secret_keys_of_an_account_with_the_role() {
        let none = |_: &mut KeyRecord| {};
        let owner = |f: &mut Facts<'_>| f.self_service = Some(RoleNeed::Owner);
        let manager = |f: &mut Facts<'_>| f.self_service = Some(RoleNeed::KeyManager);
        let any = |f: &mut Facts<'_>| f.self_service = Some(RoleNeed::Any);
        check(none, owner, CUR, Code::Valid);
        check(|r| r.role = Role::Admin, owner, CUR, Code::InsufficientRole);
        check(|r| r.role = Role::Developer, manager, CUR, Code::Valid);
        check(
            |r| r.role = Role::Member,
            manager,
            CUR,
            Code::InsufficientRole,
        );
        check(|r| r.role = Role::Member, any, CUR, Code::Valid);
        let grants = |f: &mut Facts<'_>| f.self_service = Some(RoleNeed::AccountOwner);
        check(none, grants, CUR, Code::Valid);
        check(
            |r| r.role = Role::Admin,
            grants,
            CUR,
            Code::InsufficientRole,
        );
        check(
            |r| r.app_id = Some("app_1".into()),
            grants,
            CUR,
            Code::InsufficientRole,
        );
        check(|r| r.app_id = Some("app_1".into()), owner, CUR, Code::Valid);
        check(
            |r| r.key_type = KeyType::Publishable,
            any,
            CUR,
            Code::InsufficientScope,
        );
        // Global keys pass elsewhere, but belong to no account.
        check(none, |f| f.key = KeyLookup::Global, CUR, Code::Valid);
        check(
            none,
            |f| {
                f.key = KeyLookup::Global;
                f.self_service = Some(RoleNeed::Any);
            },
            CUR,
            Code::InsufficientScope,
        );
        check(
            none,
            |f| {
                f.key = KeyLookup::Global;
                f.locked_out = Some(5);
            },
            CUR,
            Code::TooManyAuthFailures,
        );
        // The scope check comes first: a publishable key without the scope is refused for it.
        check(
            |r| {
                r.key_type = KeyType::Publishable;
                r.role = Role::Member;
            },
            owner,
            CUR,
            Code::InsufficientScope,
        );
        // A role refusal says which roles would do.
        let cat = catalog();
        let mut r = record();
        r.role = Role::Member;
        let key = CompiledKey::compile(r, &cat);
        let f = Facts {
            api_enabled: true,
            locked_out: None,
            key: KeyLookup::Found {
                key: &key,
                matched: CUR,
            },
            account_status: Some(AccountStatus::Active),
            app_secret: AppSecretCheck::NotRequired,
            client_ip: None,
            object_mode: None,
            required: Requirement::None,
            self_service: Some(RoleNeed::KeyManager),
            now_ms: NOW,
        };
        let d = authorize(&f).unwrap_err();
        assert_eq!(d.code, Code::InsufficientRole);
        assert_eq!(
            d.detail,
            Some("this needs a key with role owner, admin or developer")
        );
    }

    #[test]
    fn all_and_any_scopes_are_both_checked() {
        let cat = catalog();
        let read = cat.required(&["invoices:read"]).unwrap();
        let write = cat.required(&["invoices:write"]).unwrap();
        let both = cat.required(&["invoices:read", "invoices:write"]).unwrap();
        let empty = ScopeSet::default();
        let key = CompiledKey::compile(record(), &cat);
        let decide = |required| {
            authorize(&Facts {
                api_enabled: true,
                locked_out: None,
                key: KeyLookup::Found {
                    key: &key,
                    matched: CUR,
                },
                account_status: Some(AccountStatus::Active),
                app_secret: AppSecretCheck::NotRequired,
                client_ip: None,
                object_mode: None,
                required,
                self_service: None,
                now_ms: NOW,
            })
            .err()
            .map_or(Code::Valid, |d| d.code)
        };
        assert_eq!(decide(Requirement::AllAndAny(&read, &both)), Code::Valid);
        assert_eq!(decide(Requirement::AllAndAny(&read, &empty)), Code::Valid);
        assert_eq!(
            decide(Requirement::AllAndAny(&read, &write)),
            Code::InsufficientScope
        );
        assert_eq!(
            decide(Requirement::AllAndAny(&write, &read)),
            Code::InsufficientScope
        );
    }

    #[test]
    fn earlier_checks_win() {
        // Revoked and expired and disabled: revoked is reported.
        check(
            |r| {
                r.revoked_at = Some(NOW - 5);
                r.expires_at = Some(NOW - 5);
                r.enabled = false;
            },
            |f| f.account_status = Some(AccountStatus::Suspended),
            CUR,
            Code::ApiKeyRevoked,
        );
        // Disabled API beats everything, including a missing key.
        check(
            |_| {},
            |f| {
                f.api_enabled = false;
                f.key = KeyLookup::Missing;
            },
            CUR,
            Code::ApiDisabled,
        );
        // A wrong IP is reported before a missing scope.
        check(
            |r| {
                r.ip_allowlist = vec!["10.0.0.1".into()];
                r.scopes = vec![];
            },
            |_| {},
            CUR,
            Code::IpNotAllowed,
        );
    }

    #[test]
    fn any_scope_requirement() {
        let cat = catalog();
        let key = CompiledKey::compile(record(), &cat);
        let any = cat.required(&["invoices:read", "invoices:write"]).unwrap();
        let f = Facts {
            api_enabled: true,
            locked_out: None,
            key: KeyLookup::Found {
                key: &key,
                matched: CUR,
            },
            account_status: Some(AccountStatus::Active),
            app_secret: AppSecretCheck::NotRequired,
            client_ip: None,
            object_mode: None,
            required: Requirement::Any(&any),
            self_service: None,
            now_ms: NOW,
        };
        assert!(authorize(&f).is_ok());
        let f = Facts {
            required: Requirement::All(&any),
            self_service: None,
            ..f
        };
        assert_eq!(authorize(&f).unwrap_err().code, Code::InsufficientScope);
    }

    #[test]
    fn a_compiled_key_answers_with_its_records_fields() {
        let cat = catalog();
        let mut r = record();
        r.app_id = Some("app_1".into());
        r.grant_id = Some("grt_1".into());
        r.name = "Zahlungsdienst – Ünïcode".into();
        r.key_hash = format!("sha256_{}", "ab".repeat(32));
        r.metadata = serde_json::json!({"team": "billing"});
        r.rate_limit = Some(crate::model::RateLimitSpec {
            requests: 5,
            per_seconds: 60,
        });
        let k = CompiledKey::compile(r.clone(), &cat);
        assert_eq!(k.id(), "key_1");
        assert_eq!(k.account_id(), "acc_1");
        assert_eq!(k.app_id(), Some("app_1"));
        assert_eq!(k.grant_id(), Some("grt_1"));
        assert_eq!(k.name(), r.name);
        assert_eq!(k.start(), "kw_sk_live_abcd");
        assert_eq!(k.prefix(), "kw_sk_live_");
        assert_eq!(k.key_hash(), r.key_hash);
        assert_eq!(k.metadata(), r.metadata);
        assert_eq!(k.rate_limit, r.rate_limit);
        assert_eq!(k.previous.as_ref().map(|p| p.valid_until), Some(NOW + 1000));
        assert_eq!(k.slow_secret, None);

        // Fields that cannot be derived are kept as they are.
        let mut odd = record();
        odd.prefix = "other_".into();
        odd.key_hash = "sha256_x".into();
        odd.metadata = serde_json::json!({});
        odd.secret.hash = "$2b$12$abc".into();
        let k = CompiledKey::compile(odd, &cat);
        assert_eq!(k.prefix(), "other_");
        assert_eq!(k.start(), "kw_sk_live_abcd");
        assert_eq!(k.key_hash(), "sha256_x");
        assert_eq!(k.app_id(), None);
        assert_eq!(k.grant_id(), None);
        assert_eq!(k.metadata(), serde_json::json!({}));
        assert_eq!(
            k.slow_secret.as_ref().map(|s| s.hash.as_str()),
            Some("$2b$12$abc")
        );
    }

    #[test]
    fn publishable_keys_keep_only_public_scopes() {
        let cat = catalog();
        let mut r = record();
        r.key_type = KeyType::Publishable;
        r.scopes = vec!["*".into()];
        let key = CompiledKey::compile(r, &cat);
        assert_eq!(cat.names(&key.scopes), vec!["invoices:read"]);
    }

    #[test]
    fn unknown_stored_scopes_grant_nothing_and_bad_allowlists_fail_closed() {
        let cat = catalog();
        let mut r = record();
        r.scopes = vec!["gone:scope".into(), "invoices:read".into()];
        r.ip_allowlist = vec!["not an ip".into()];
        let key = CompiledKey::compile(r, &cat);
        assert_eq!(cat.names(&key.scopes), vec!["invoices:read"]);
        assert!(!key.allowlist.allows("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn limits_in_order() {
        let rl = RateLimit {
            limit: 1,
            window_ms: 60_000,
        };
        let mut st = Default::default();
        let ok = rl.check(&mut st, NOW, 1);
        let refused = rl.check(&mut st, NOW, 1);
        let q = QuotaSpec {
            unit: "words".into(),
            limit: 10,
            period: Period::Month,
        };
        let q_ok = check_quota(&q, 0, 5, NOW);
        let q_no = check_quota(&q, 8, 5, NOW);
        assert!(limit_verdict(Some(&ok), true, std::slice::from_ref(&q_ok)).is_ok());
        let d = limit_verdict(Some(&refused), false, std::slice::from_ref(&q_no)).unwrap_err();
        assert_eq!(d.code, Code::RateLimitExceeded);
        assert!(d.retry_after.unwrap() >= 1);
        let d = limit_verdict(Some(&ok), false, std::slice::from_ref(&q_no)).unwrap_err();
        assert_eq!(d.code, Code::ConcurrencyLimitExceeded);
        let d = limit_verdict(None, true, std::slice::from_ref(&q_no)).unwrap_err();
        assert_eq!(d.code, Code::QuotaExceeded);
        assert!(d.retry_after.unwrap() >= 1);
    }

    #[test]
    fn app_secret_environments() {
        let hasher = SecretHasher::new(
            crate::model::HashScheme::HmacSha256,
            Some(crate::Secret::new("pepper-pepper-pepper-0123")),
            vec![],
            4,
        )
        .unwrap();
        let prod = hasher
            .store(&crate::Secret::new("prod-secret"), "")
            .unwrap();
        let sand = hasher
            .store(&crate::Secret::new("sandbox-secret"), "")
            .unwrap();
        let app = Application {
            id: "app_1".into(),
            name: "a".into(),
            description: String::new(),
            url: None,
            scopes: vec![],
            production: prod,
            sandbox: sand,
            created_at: NOW,
        };
        let check = |mode, presented: Option<&str>, want| {
            assert_eq!(check_app_secret(&hasher, Some(&app), mode, presented), want);
        };
        check(Mode::Live, Some("prod-secret"), AppSecretCheck::Valid);
        check(Mode::Test, Some("sandbox-secret"), AppSecretCheck::Valid);
        check(
            Mode::Live,
            Some("sandbox-secret"),
            AppSecretCheck::OtherEnvironment,
        );
        check(
            Mode::Test,
            Some("prod-secret"),
            AppSecretCheck::OtherEnvironment,
        );
        check(Mode::Live, Some("nope"), AppSecretCheck::Wrong);
        check(Mode::Live, None, AppSecretCheck::Missing);
        check(Mode::Live, Some(""), AppSecretCheck::Missing);
        assert_eq!(
            check_app_secret(&hasher, None, Mode::Live, Some("x")),
            AppSecretCheck::Wrong
        );
    }
}
