//! The entities Keywarden remembers (`docs/concepts.md#objects`), shared by the store and the server.
//!
//! Timestamps are Unix milliseconds (`i64`, UTC) everywhere below the HTTP edge: they
//! compare and store cheaply in both SQLite and PostgreSQL, and the server renders them
//! as RFC 3339.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Unix time in milliseconds, UTC.
pub type Millis = i64;

/// Declares a small string-backed enum with `as_str`, `FromStr`, `Display` and serde in
/// lower case, so the wire form, the database form and the config form are one spelling.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical lower-case spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant {
                        kind: stringify!($name),
                        value: s.chars().take(64).collect(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A string that names no variant of one of the enums below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of {expected:?}")]
pub struct UnknownVariant {
    /// Which enum was being parsed.
    pub kind: &'static str,
    /// The offending input, truncated to 64 characters.
    pub value: String,
    /// The accepted spellings.
    pub expected: &'static [&'static str],
}

string_enum!(
    /// Every key, event and usage record lives in exactly one mode.
    Mode { Live = "live", Test = "test" }
);
string_enum!(
    /// Secret keys act on an account; publishable keys only identify it (public scopes only).
    KeyType { Secret = "secret", Publishable = "publishable" }
);
string_enum!(
    /// What a key may manage through the self-service API.
    Role { Owner = "owner", Admin = "admin", Developer = "developer", Member = "member" }
);
string_enum!(
    /// Live keys work only for `active` accounts; test keys work unless `suspended`.
    AccountStatus { Pending = "pending", Active = "active", Suspended = "suspended" }
);
string_enum!(
    /// How a secret is stored (`docs/concepts.md#secret-storage`).
    HashScheme { HmacSha256 = "hmac-sha256", Sha256 = "sha256", Bcrypt = "bcrypt", Argon2id = "argon2id" }
);
string_enum!(
    /// The two secrets of an application: production goes with live keys, sandbox with test.
    AppEnvironment { Production = "production", Sandbox = "sandbox" }
);

impl Mode {
    /// The application environment whose secret must accompany a key of this mode.
    pub fn app_environment(self) -> AppEnvironment {
        match self {
            Mode::Live => AppEnvironment::Production,
            Mode::Test => AppEnvironment::Sandbox,
        }
    }
}

impl Role {
    /// Roles that may create, rotate and revoke keys through the self-service API.
    pub fn can_manage_keys(self) -> bool {
        matches!(self, Role::Owner | Role::Admin | Role::Developer)
    }

    /// The order of roles, highest first: `owner` > `admin` > `developer` > `member`.
    pub fn rank(self) -> u8 {
        match self {
            Role::Owner => 3,
            Role::Admin => 2,
            Role::Developer => 1,
            Role::Member => 0,
        }
    }
}

/// Makes a new identifier: `prefix` + `_` + a ULID (`key_01J…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

/// A secret as the store keeps it: never the secret itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// How `hash` was made.
    pub scheme: HashScheme,
    /// The indexed value a presented token is looked up by: the hex digest itself for
    /// `hmac-sha256` and `sha256`, the plain lookup segment for slow hashes.
    pub lookup: String,
    /// The slow hash (PHC string) for `bcrypt` and `argon2id`; empty for the fast schemes,
    /// whose `lookup` already is the digest.
    pub hash: String,
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digests are not secrets, but there is no reason to spread them through logs.
        f.debug_struct("StoredSecret")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// The secret a key had before its last rotation, valid until `valid_until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The old secret's stored form.
    pub secret: StoredSecret,
    /// The old token's public fingerprint (`sha256_…`).
    pub key_hash: String,
    /// End of the grace period; at and after this instant the old secret is refused.
    pub valid_until: Millis,
}

/// A per-key rate-limit override: `requests` per `per_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests admitted per window (also the burst size).
    pub requests: u32,
    /// The window length in seconds.
    pub per_seconds: u32,
}

/// A customer organisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// `acc_` + ULID.
    pub id: String,
    /// Display name, 1–100 characters.
    pub name: String,
    /// Name of a plan tier from config.
    pub plan: String,
    /// Lifecycle state; gates live keys.
    pub status: AccountStatus,
    /// Free-form JSON object, at most 4 KiB serialized.
    pub metadata: serde_json::Value,
    /// Creation time.
    pub created_at: Millis,
}

/// An API key as stored. `api_key` (the token) is never part of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `key_` + ULID.
    pub id: String,
    /// The owning account.
    pub account_id: String,
    /// Live or test; fixed at creation.
    pub mode: Mode,
    /// Secret or publishable; fixed at creation.
    pub key_type: KeyType,
    /// Label, 1–100 characters.
    pub name: String,
    /// Where this key is stored, at most 500 characters.
    pub description: String,
    /// The person responsible for the key (free text).
    pub owner: String,
    /// What the key may manage through the self-service API.
    pub role: Role,
    /// Granted scope names as written (aliases unexpanded); compiled on load.
    pub scopes: Vec<String>,
    /// After this instant the key is refused with `api_key_expired`.
    pub expires_at: Option<Millis>,
    /// IPs and CIDRs the key may be used from; empty means any.
    pub ip_allowlist: Vec<String>,
    /// Overrides the plan's `requests_per_minute` when set.
    pub rate_limit: Option<RateLimitSpec>,
    /// A disabled key is refused with `api_key_disabled` but can be enabled again.
    pub enabled: bool,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
    /// Set for keys made under a grant to a third-party application.
    pub app_id: Option<String>,
    /// The grant the key was made under, if any; deleting it revokes the key.
    pub grant_id: Option<String>,
    /// The fixed start of the token (`kw_sk_live_`).
    pub prefix: String,
    /// `prefix` + the first 4 random characters: safe to display.
    pub start: String,
    /// `sha256_` + hex SHA-256 of the whole token: a public fingerprint.
    pub key_hash: String,
    /// The current secret's stored form.
    pub secret: StoredSecret,
    /// The secret before the last rotation, while its grace lasts.
    pub previous: Option<PreviousSecret>,
    /// Creation time.
    pub created_at: Millis,
    /// Last successful use (written in batches, so up to a second late).
    pub last_used_at: Option<Millis>,
    /// Client IP of the last successful use.
    pub last_used_ip: Option<String>,
    /// Set when revoked; a revoked key never works again.
    pub revoked_at: Option<Millis>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// AES-256-GCM ciphertext of a test secret when recoverable test secrets are on.
    pub recoverable: Option<String>,
}

impl KeyRecord {
    /// A key of `account_id` with only what is fixed at creation set: enabled, with the
    /// `member` role and nothing else granted, no name, description, owner, expiry,
    /// allowlist, own rate limit, metadata (`{}`), application, secret, use or revocation.
    /// Callers fill in the rest with struct update syntax.
    pub fn new(
        id: String,
        account_id: String,
        mode: Mode,
        key_type: KeyType,
        created_at: Millis,
    ) -> Self {
        KeyRecord {
            id,
            account_id,
            mode,
            key_type,
            name: String::new(),
            description: String::new(),
            owner: String::new(),
            role: Role::Member,
            scopes: Vec::new(),
            expires_at: None,
            ip_allowlist: Vec::new(),
            rate_limit: None,
            enabled: true,
            metadata: serde_json::Value::Object(serde_json::Map::new()),
            app_id: None,
            grant_id: None,
            prefix: String::new(),
            start: String::new(),
            key_hash: String::new(),
            secret: StoredSecret {
                scheme: HashScheme::Sha256,
                lookup: String::new(),
                hash: String::new(),
            },
            previous: None,
            created_at,
            last_used_at: None,
            last_used_ip: None,
            revoked_at: None,
            revoked_reason: None,
            recoverable: None,
        }
    }

    /// Whether the key counts as active (not revoked) for plan limits and listings.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// A third-party integration that customers can authorise (Falco).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Application {
    /// `app_` + ULID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Short description of the integration.
    pub description: String,
    /// Public page about the integration.
    pub url: Option<String>,
    /// Scopes the application asks for; grants are subsets of these.
    pub scopes: Vec<String>,
    /// The production secret (goes with live keys).
    pub production: StoredSecret,
    /// The sandbox secret (goes with test keys).
    pub sandbox: StoredSecret,
    /// Creation time.
    pub created_at: Millis,
}

/// An account's authorisation of an application for some of its requested scopes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// `grt_` + ULID.
    pub id: String,
    /// The authorising account.
    pub account_id: String,
    /// The authorised application.
    pub app_id: String,
    /// Granted scopes, a subset of the application's requested scopes.
    pub scopes: Vec<String>,
    /// Creation time.
    pub created_at: Millis,
}

/// An append-only audit record (`docs/operations.md#what-is-recorded`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `evt_` + ULID.
    pub id: String,
    /// The account concerned, if any.
    pub account_id: Option<String>,
    /// The mode concerned, if any.
    pub mode: Option<Mode>,
    /// `key.created`, `account.erased`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `root`, a key id, or `system`.
    pub actor: String,
    /// Client IP of the request that caused it.
    pub ip: Option<String>,
    /// When it happened.
    pub at: Millis,
    /// Event-specific details; never a secret.
    pub data: serde_json::Value,
}

/// One request seen with a key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// The key used.
    pub key_id: String,
    /// When.
    pub at: Millis,
    /// Client IP.
    pub ip: Option<String>,
    /// HTTP method of the original request.
    pub method: String,
    /// Path of the original request.
    pub path: String,
    /// Status Keywarden answered.
    pub status: u16,
    /// Decision code.
    pub code: String,
}

string_enum!(
    /// What a web session opens (`docs/console.md`): the operator console, a portal link not
    /// yet used, or a customer's portal session.
    WebSessionKind { Console = "console", PortalLink = "portal_link", Portal = "portal" }
);

/// A web session or a portal link, as stored: only the SHA-256 of its random id is kept,
/// so the database never holds what the browser presents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebSession {
    /// Lowercase hex SHA-256 of the session id.
    pub id_hash: String,
    /// Console, portal link or portal session.
    pub kind: WebSessionKind,
    /// The account a portal link or session is for (`None` for the console).
    pub account_id: Option<String>,
    /// The mode a portal session starts in.
    pub mode: Option<Mode>,
    /// The highest role a portal session acts with.
    pub role: Option<Role>,
    /// Where the portal's "back" link leads.
    pub return_url: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// After this instant the session or link is refused.
    pub expires_at: Millis,
    /// The fingerprint of the root key that made a portal link (and so the session it
    /// opened): it counts only while that root key is configured.
    #[serde(default)]
    pub root_key: Option<String>,
}
