//! Secret hashing (`docs/concepts.md#secret-storage`): how a token becomes the value the store keeps, which values the
//! store is searched with, and how a presented token is checked against what was found.
//!
//! Four schemes exist:
//! - `hmac-sha256` (the default): the lower-case hex HMAC-SHA256 of the token under the
//!   pepper is both the indexed lookup and the proof; `hash` stays empty. Digests made under a
//!   previous pepper still verify and are reported so the caller can re-store them.
//! - `sha256`: the lower-case hex SHA-256 of the token, for keys imported from systems that
//!   used a plain digest.
//! - `bcrypt` and `argon2id`: slow salted hashes. They cannot be indexed, so the key is found
//!   by its lookup segment (the first 8 random characters of the token, stored plain) and the
//!   slow hash is checked afterwards.
//!
//! The pepper is used as an HMAC key byte for byte, exactly as configured (it is not
//! hex-decoded), so any string of at least [`MIN_PEPPER_BYTES`] bytes works and a pepper made
//! by [`generate_pepper`] behaves like any other.
//!
//! No token and no pepper ever appears in an error or in `Debug` output.

use crate::model::{HashScheme, StoredSecret};
use crate::secret::{ct_eq, Secret};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroize;

/// HMAC-SHA256, the keyed digest of the default scheme.
type HmacSha256 = Hmac<Sha256>;

/// The shortest pepper accepted, in bytes: a shorter key would make the HMAC digests of
/// low-entropy secrets guessable by anyone who obtains the database.
pub const MIN_PEPPER_BYTES: usize = 16;

/// The smallest bcrypt cost the bcrypt algorithm defines; useful only in tests.
pub const BCRYPT_MIN_COST: u32 = 4;

/// The largest bcrypt cost the bcrypt algorithm defines.
pub const BCRYPT_MAX_COST: u32 = 31;

/// The bcrypt cost `docs/concepts.md#secret-storage` prescribes when the configuration names none.
pub const DEFAULT_BCRYPT_COST: u32 = 12;

/// The longest token bcrypt can hash without losing part of it: bcrypt reads at most 72
/// bytes of key material, so a longer token is refused instead of being silently cut.
pub const BCRYPT_MAX_TOKEN_BYTES: usize = 72;

/// Length in characters of a hex-encoded SHA-256 or HMAC-SHA256 digest.
const DIGEST_HEX_LEN: usize = 64;

/// Length in bytes of the random salt given to argon2id, the length its authors recommend.
const ARGON2_SALT_BYTES: usize = 16;

/// Length in bytes of the randomness in a generated pepper: 256 bits, as much as an
/// HMAC-SHA256 key can use.
const PEPPER_RANDOM_BYTES: usize = 32;

/// Why a [`SecretHasher`] could not be built from the configuration. Every variant names the
/// setting to fix, never a pepper's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashConfigError {
    /// `hmac-sha256` was chosen but no pepper was configured, so there is no HMAC key.
    #[error("hash scheme hmac-sha256 needs a pepper (KEYWARDEN_PEPPER or pepper_file)")]
    MissingPepper,
    /// A pepper is shorter than [`MIN_PEPPER_BYTES`], too weak to protect the digests.
    #[error("the {which} is {len} bytes long; a pepper needs at least {min} bytes")]
    PepperTooShort {
        /// Which pepper: `pepper` or `previous_peppers[i]`, so the operator knows which one.
        which: String,
        /// Its length in bytes (the length only, never the value).
        len: usize,
        /// The required minimum, [`MIN_PEPPER_BYTES`].
        min: usize,
    },
    /// A pepper could not be turned into an HMAC key.
    #[error("the {which} cannot be used as an HMAC key")]
    InvalidPepper {
        /// Which pepper: `pepper` or `previous_peppers[i]`.
        which: String,
    },
    /// `bcrypt_cost` lies outside the range the bcrypt algorithm defines.
    #[error("bcrypt cost {0} is outside {BCRYPT_MIN_COST}..={BCRYPT_MAX_COST}")]
    BcryptCost(u32),
}

/// Why a token could not be turned into its stored form. No variant carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The token is longer than the scheme can hash in full (bcrypt: 72 bytes).
    #[error("{scheme} cannot hash a token of {len} bytes; the limit is {max} bytes")]
    TokenTooLong {
        /// The scheme that refused the token.
        scheme: HashScheme,
        /// The token's length in bytes.
        len: usize,
        /// The scheme's limit in bytes.
        max: usize,
    },
    /// A slow scheme was asked to store a token without the lookup segment the key would be
    /// found by later; storing it anyway would make the key unfindable.
    #[error("{0} needs a lookup segment to find the key by, and none was given")]
    MissingLookupSegment(HashScheme),
    /// The hashing library or the OS random source failed.
    #[error("{scheme} hashing failed: {reason}")]
    Backend {
        /// The scheme whose hashing failed.
        scheme: HashScheme,
        /// A fixed description of the failure; library messages are not passed through, so
        /// nothing derived from the input can leak.
        reason: &'static str,
    },
}

/// The outcome of checking a presented token against a stored secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The token does not match the stored secret (or the secret cannot be checked here, such
    /// as an `hmac-sha256` digest when no pepper is configured).
    Mismatch,
    /// The token matches and the stored form needs no change.
    Match,
    /// The token matches an `hmac-sha256` digest made under a previous pepper; the caller
    /// re-stores it under the current pepper so the old pepper can be retired.
    MatchPreviousPepper,
}

impl Verification {
    /// Whether the token matched, under whichever pepper.
    pub fn is_match(self) -> bool {
        !matches!(self, Verification::Mismatch)
    }
}

/// Turns tokens into their stored form and checks presented tokens, for one configuration
/// (scheme, peppers, bcrypt cost). Build it once at startup and share it: the HMAC key
/// schedule is computed in [`SecretHasher::new`] so that each check only clones a ready state.
#[derive(Clone)]
pub struct SecretHasher {
    /// The scheme new tokens are stored with.
    scheme: HashScheme,
    /// The HMAC state keyed with the current pepper, if a pepper is configured. Always present
    /// when `scheme` is `hmac-sha256` ([`SecretHasher::new`] enforces it).
    current: Option<HmacSha256>,
    /// The HMAC states keyed with the previous peppers, newest first as configured.
    previous: Vec<HmacSha256>,
    /// The bcrypt cost new bcrypt hashes are made with.
    bcrypt_cost: u32,
}

impl fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The HMAC states are key material: show only whether they exist and how many.
        f.debug_struct("SecretHasher")
            .field("scheme", &self.scheme)
            .field("pepper", &self.current.as_ref().map(|_| "***"))
            .field("previous_peppers", &self.previous.len())
            .field("bcrypt_cost", &self.bcrypt_cost)
            .finish()
    }
}

impl SecretHasher {
    /// Builds a hasher from the configuration and checks it, so that a bad setting stops the
    /// server at startup rather than failing on the first request.
    ///
    /// `hmac-sha256` requires `pepper`. A pepper given with another scheme is kept too, so
    /// that keys stored earlier under `hmac-sha256` keep verifying after a scheme change.
    /// Every pepper, current or previous, must have at least [`MIN_PEPPER_BYTES`] bytes, and
    /// `bcrypt_cost` must lie in `4..=31` whatever the scheme, so a typo is caught early.
    pub fn new(
        scheme: HashScheme,
        pepper: Option<Secret>,
        previous_peppers: Vec<Secret>,
        bcrypt_cost: u32,
    ) -> Result<Self, HashConfigError> {
        if !(BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&bcrypt_cost) {
            return Err(HashConfigError::BcryptCost(bcrypt_cost));
        }
        if scheme == HashScheme::HmacSha256 && pepper.is_none() {
            return Err(HashConfigError::MissingPepper);
        }
        let current = pepper
            .as_ref()
            .map(|p| hmac_key(p, || "pepper".to_owned()))
            .transpose()?;
        let previous = previous_peppers
            .iter()
            .enumerate()
            .map(|(i, p)| hmac_key(p, || format!("previous_peppers[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            scheme,
            current,
            previous,
            bcrypt_cost,
        })
    }

    /// The scheme new tokens are stored with.
    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }

    /// Whether the configured scheme is a slow hash (`bcrypt` or `argon2id`), whose checks
    /// the caller must cache and bound with a semaphore (`docs/concepts.md#secret-storage`).
    pub fn is_slow(&self) -> bool {
        is_slow(self.scheme)
    }

    /// The stored form of a new token under the configured scheme.
    ///
    /// `lookup_segment` is the token's first 8 random characters; only the slow schemes use
    /// it (stored plain as the lookup), and for them it must not be empty. `bcrypt` refuses
    /// tokens longer than [`BCRYPT_MAX_TOKEN_BYTES`] rather than truncating them.
    pub fn store(&self, token: &Secret, lookup_segment: &str) -> Result<StoredSecret, HashError> {
        let token = token.expose();
        let (lookup, hash) = match self.scheme {
            HashScheme::HmacSha256 | HashScheme::Sha256 => {
                (self.lookup(token, lookup_segment), String::new())
            }
            HashScheme::Bcrypt => {
                require_segment(self.scheme, lookup_segment)?;
                let hash = bcrypt_hash(token, self.bcrypt_cost)?;
                (lookup_segment.to_owned(), hash)
            }
            HashScheme::Argon2id => {
                require_segment(self.scheme, lookup_segment)?;
                (lookup_segment.to_owned(), argon2_hash(token)?)
            }
        };
        Ok(StoredSecret {
            scheme: self.scheme,
            lookup,
            hash,
        })
    }

    /// The values to search the store with for a presented token under the configured
    /// scheme: for `hmac-sha256` the digest under the current pepper first, then one per
    /// previous pepper in configured order, then the plain digest and the lookup segment
    /// (keys imported by their `sha256`, `bcrypt` or `argon2id` hash keep that scheme);
    /// for `sha256` the plain digest; for the slow schemes a single value, the lookup
    /// segment.
    pub fn lookups(&self, token: &str, lookup_segment: &str) -> Vec<String> {
        let mut out = Vec::with_capacity(3 + self.previous.len());
        out.push(self.lookup(token, lookup_segment));
        if self.scheme == HashScheme::HmacSha256 {
            out.extend(self.previous.iter().map(|mac| hmac_hex(mac, token)));
            out.push(sha256_hex(token.as_bytes()));
            if !lookup_segment.is_empty() {
                out.push(lookup_segment.to_owned());
            }
        }
        out
    }

    /// The digest [`SecretHasher::lookup`] is the hex of, for the fast schemes: the
    /// current-pepper HMAC or the plain SHA-256. `None` for the slow schemes (whose lookup
    /// is the lookup segment) and for an HMAC without a pepper.
    pub fn lookup_digest(&self, token: &str) -> Option<[u8; 32]> {
        match self.scheme {
            HashScheme::HmacSha256 => self.current.as_ref().map(|mac| {
                let mut mac = mac.clone();
                mac.update(token.as_bytes());
                mac.finalize().into_bytes().into()
            }),
            HashScheme::Sha256 => Some(sha256(token.as_bytes())),
            HashScheme::Bcrypt | HashScheme::Argon2id => None,
        }
    }

    /// The first of [`SecretHasher::lookups`]: the current-pepper digest, the plain digest or
    /// the lookup segment. This is the hot path, so it allocates only the returned string.
    pub fn lookup(&self, token: &str, lookup_segment: &str) -> String {
        match self.scheme {
            // `new` guarantees a pepper for hmac-sha256; an empty lookup matches no stored key.
            HashScheme::HmacSha256 => self
                .current
                .as_ref()
                .map(|mac| hmac_hex(mac, token))
                .unwrap_or_default(),
            HashScheme::Sha256 => sha256_hex(token.as_bytes()),
            HashScheme::Bcrypt | HashScheme::Argon2id => lookup_segment.to_owned(),
        }
    }

    /// Whether `token` matches `stored`, under whichever pepper. See [`SecretHasher::check`].
    pub fn verify(&self, token: &str, stored: &StoredSecret) -> bool {
        self.check(token, stored).is_match()
    }

    /// Whether `token` matches an `hmac-sha256` digest made under a previous pepper, so the
    /// caller re-stores it under the current one (`docs/concepts.md#secret-storage`).
    ///
    /// The token is needed: an HMAC digest reveals nothing about its key, so only recomputing
    /// it under each pepper tells which pepper made it. Callers that also need the match
    /// itself should call [`SecretHasher::check`] once instead of both functions.
    pub fn needs_rehash(&self, token: &str, stored: &StoredSecret) -> bool {
        self.check(token, stored) == Verification::MatchPreviousPepper
    }

    /// Checks `token` against `stored`, whatever scheme `stored` uses (imported keys may use
    /// another scheme than the configured one).
    ///
    /// The fast schemes compare digests in constant time and allocate nothing; `hmac-sha256`
    /// tries the current pepper, then each previous one. The slow schemes run the bcrypt or
    /// argon2 verification with the parameters recorded in the stored hash; a bcrypt check
    /// of a token longer than [`BCRYPT_MAX_TOKEN_BYTES`] fails rather than truncating it.
    pub fn check(&self, token: &str, stored: &StoredSecret) -> Verification {
        let matched = match stored.scheme {
            HashScheme::HmacSha256 => {
                if self
                    .current
                    .as_ref()
                    .is_some_and(|mac| hmac_matches(mac, token, &stored.lookup))
                {
                    return Verification::Match;
                }
                if self
                    .previous
                    .iter()
                    .any(|mac| hmac_matches(mac, token, &stored.lookup))
                {
                    return Verification::MatchPreviousPepper;
                }
                false
            }
            HashScheme::Sha256 => digest_matches(&Sha256::digest(token.as_bytes()), &stored.lookup),
            HashScheme::Bcrypt => bcrypt_verify(token, &stored.hash),
            HashScheme::Argon2id => argon2_verify(token, &stored.hash),
        };
        if matched {
            Verification::Match
        } else {
            Verification::Mismatch
        }
    }
}

/// Whether `scheme` is a slow hash that needs a lookup segment, a cache and a semaphore.
pub fn is_slow(scheme: HashScheme) -> bool {
    matches!(scheme, HashScheme::Bcrypt | HashScheme::Argon2id)
}

/// The public fingerprint of a token (the key's `key_hash`, `docs/concepts.md#objects`): `sha256_` followed by
/// the lower-case hex SHA-256 of the whole token. It identifies a key without revealing it.
pub fn fingerprint(token: &str) -> String {
    let mut out = String::with_capacity("sha256_".len() + DIGEST_HEX_LEN);
    out.push_str("sha256_");
    out.push_str(&sha256_hex(token.as_bytes()));
    out
}

/// The lower-case hex SHA-256 of `data`, the digest form used throughout the store.
pub fn sha256_hex(data: &[u8]) -> String {
    digest_hex(&Sha256::digest(data))
}

/// The SHA-256 of `data`, as bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A new pepper: 32 bytes from the OS CSPRNG, hex-encoded (64 characters), for the embedded
/// store's first start when no pepper is configured (`docs/concepts.md#secret-storage`).
///
/// # Panics
///
/// Panics if the OS random source fails, since without it no secret can be made safely;
/// use [`try_generate_pepper`] to handle that case instead.
pub fn generate_pepper() -> Secret {
    match try_generate_pepper() {
        Ok(pepper) => pepper,
        Err(e) => panic!("cannot generate a pepper: {e}"),
    }
}

/// Like [`generate_pepper`], but reports a failing OS random source as an error so that the
/// caller can refuse to start with a clear message.
pub fn try_generate_pepper() -> Result<Secret, HashError> {
    let mut bytes = [0u8; PEPPER_RANDOM_BYTES];
    let filled = getrandom::fill(&mut bytes);
    let pepper = filled.map(|()| Secret::new(hex::encode(bytes.as_slice())));
    bytes.zeroize();
    pepper.map_err(|_| HashError::Backend {
        scheme: HashScheme::HmacSha256,
        reason: "the OS random source failed",
    })
}

/// Keys an HMAC state with `pepper` after checking its length; `which` names the pepper in
/// the error and is only built when there is one.
fn hmac_key(
    pepper: &Secret,
    which: impl FnOnce() -> String,
) -> Result<HmacSha256, HashConfigError> {
    if pepper.len() < MIN_PEPPER_BYTES {
        return Err(HashConfigError::PepperTooShort {
            which: which(),
            len: pepper.len(),
            min: MIN_PEPPER_BYTES,
        });
    }
    HmacSha256::new_from_slice(pepper.expose().as_bytes())
        .map_err(|_| HashConfigError::InvalidPepper { which: which() })
}

/// The lower-case hex HMAC of `token` under a pre-keyed state.
fn hmac_hex(mac: &HmacSha256, token: &str) -> String {
    let mut mac = mac.clone();
    mac.update(token.as_bytes());
    digest_hex(&mac.finalize().into_bytes())
}

/// Lower-case hex of a 32-byte digest, encoded on the stack so that the returned string is
/// the only allocation.
fn digest_hex(digest: &[u8]) -> String {
    let mut buf = [0u8; DIGEST_HEX_LEN];
    match hex::encode_to_slice(digest, &mut buf) {
        // Hex digits are ASCII: always UTF-8.
        Ok(()) => std::str::from_utf8(&buf).map_or_else(|_| hex::encode(digest), String::from),
        Err(_) => hex::encode(digest),
    }
}

/// Whether the HMAC of `token` under a pre-keyed state equals the hex digest `expected`.
fn hmac_matches(mac: &HmacSha256, token: &str, expected: &str) -> bool {
    let mut mac = mac.clone();
    mac.update(token.as_bytes());
    digest_matches(&mac.finalize().into_bytes(), expected)
}

/// Compares a raw digest with a stored lower-case hex digest in constant time, encoding into
/// a stack buffer so that the check allocates nothing.
fn digest_matches(digest: &[u8], expected_hex: &str) -> bool {
    let mut buf = [0u8; DIGEST_HEX_LEN];
    hex::encode_to_slice(digest, &mut buf).is_ok() && ct_eq(&buf, expected_hex.as_bytes())
}

/// Refuses an empty lookup segment for a slow scheme.
fn require_segment(scheme: HashScheme, lookup_segment: &str) -> Result<(), HashError> {
    if lookup_segment.is_empty() {
        Err(HashError::MissingLookupSegment(scheme))
    } else {
        Ok(())
    }
}

/// Hashes `token` with bcrypt at `cost`, refusing tokens bcrypt would truncate.
///
/// The bcrypt crate appends a NUL terminator before applying its 72-byte limit, so its
/// non-truncating functions refuse a token of exactly 72 bytes although bcrypt uses all 72
/// of them. Such a token goes through the ordinary function, which then drops only the
/// terminator; this gives the same hash as other bcrypt implementations (OpenBSD, PHP).
fn bcrypt_hash(token: &str, cost: u32) -> Result<String, HashError> {
    let result = match token.len() {
        len if len > BCRYPT_MAX_TOKEN_BYTES => {
            return Err(HashError::TokenTooLong {
                scheme: HashScheme::Bcrypt,
                len,
                max: BCRYPT_MAX_TOKEN_BYTES,
            })
        }
        BCRYPT_MAX_TOKEN_BYTES => bcrypt::hash(token, cost),
        _ => bcrypt::non_truncating_hash(token, cost),
    };
    result.map_err(|e| HashError::Backend {
        scheme: HashScheme::Bcrypt,
        reason: match e {
            bcrypt::BcryptError::Rand(_) => "the OS random source failed",
            _ => "the bcrypt library refused the input",
        },
    })
}

/// Checks `token` against a bcrypt hash string; see [`bcrypt_hash`] for the 72-byte rule.
/// A malformed hash is a mismatch, not an error, so that a corrupt row cannot be used.
fn bcrypt_verify(token: &str, hash: &str) -> bool {
    let result = match token.len() {
        len if len > BCRYPT_MAX_TOKEN_BYTES => return false,
        BCRYPT_MAX_TOKEN_BYTES => bcrypt::verify(token, hash),
        _ => bcrypt::non_truncating_verify(token, hash),
    };
    result.unwrap_or(false)
}

/// Hashes `token` with argon2id and the argon2 crate's default parameters (the OWASP
/// baseline: 19 MiB, 2 passes, 1 lane) and a fresh salt, as a PHC string.
fn argon2_hash(token: &str) -> Result<String, HashError> {
    let backend = |reason| HashError::Backend {
        scheme: HashScheme::Argon2id,
        reason,
    };
    let mut salt = [0u8; ARGON2_SALT_BYTES];
    getrandom::fill(&mut salt).map_err(|_| backend("the OS random source failed"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| backend("the salt cannot be encoded"))?;
    Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| backend("the argon2 library refused the input"))
}

/// Checks `token` against an argon2 PHC string, using the algorithm, version and parameters
/// the string records (so imports made with other parameters verify). A malformed string is
/// a mismatch.
fn argon2_verify(token: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Debug;

    /// Asserts one table row, naming the case when it fails.
    fn check<T: PartialEq + Debug>(case: &str, got: T, want: T) {
        assert_eq!(got, want, "case: {case}");
    }

    const PEPPER_A: &str = "pepper-a-0123456789abcdef";
    const PEPPER_B: &str = "pepper-b-0123456789abcdef";
    const PEPPER_C: &str = "pepper-c-0123456789abcdef";
    const TOKEN: &str = "kw_sk_live_4eC39HqLyjWDarjtT1zdp7dcABCDEF";
    const OTHER: &str = "kw_sk_live_4eC39HqLyjWDarjtT1zdp7dcABCDEG";
    const SEGMENT: &str = "4eC39HqL";

    /// The hasher configurations the tables refer to.
    #[derive(Clone, Copy, Debug)]
    enum H {
        /// The hmac-sha256 scheme under pepper A.
        Hmac,
        /// The hmac-sha256 scheme under pepper B, with A as a previous pepper, as after a rotation.
        Rotated,
        /// The hmac-sha256 scheme under pepper C, which is unrelated to A and B.
        Unrelated,
        /// The sha256 scheme with no pepper at all.
        Sha,
        /// The bcrypt scheme at cost 4 with no pepper.
        Bcrypt,
        /// The bcrypt scheme at cost 4, keeping pepper B and previous pepper A for older hmac keys.
        BcryptPeppered,
        /// The argon2id scheme with no pepper.
        Argon,
        /// The hmac-sha256 scheme keyed as in RFC 4231 test case 1, with twenty 0x0b bytes.
        Rfc4231,
    }

    fn hasher(h: H) -> SecretHasher {
        let s = |p: &str| Some(Secret::new(p));
        let (scheme, pepper, previous) = match h {
            H::Hmac => (HashScheme::HmacSha256, s(PEPPER_A), vec![]),
            H::Rotated => (HashScheme::HmacSha256, s(PEPPER_B), vec![PEPPER_A]),
            H::Unrelated => (HashScheme::HmacSha256, s(PEPPER_C), vec![]),
            H::Sha => (HashScheme::Sha256, None, vec![]),
            H::Bcrypt => (HashScheme::Bcrypt, None, vec![]),
            H::BcryptPeppered => (HashScheme::Bcrypt, s(PEPPER_B), vec![PEPPER_A]),
            H::Argon => (HashScheme::Argon2id, None, vec![]),
            H::Rfc4231 => (HashScheme::HmacSha256, s(&"\x0b".repeat(20)), vec![]),
        };
        let previous = previous.into_iter().map(Secret::new).collect();
        SecretHasher::new(scheme, pepper, previous, BCRYPT_MIN_COST).unwrap()
    }

    fn store(h: H, token: &str) -> StoredSecret {
        hasher(h).store(&Secret::new(token), SEGMENT).unwrap()
    }

    #[test]
    fn a_lookup_digest_is_the_bytes_of_the_lookup() {
        for h in [H::Hmac, H::Rotated, H::Sha, H::Rfc4231] {
            let hasher = hasher(h);
            let digest = hasher
                .lookup_digest(TOKEN)
                .expect("a fast scheme has a digest");
            check(
                &format!("{h:?}"),
                hex::encode(digest),
                hasher.lookup(TOKEN, SEGMENT),
            );
        }
        for h in [H::Bcrypt, H::BcryptPeppered, H::Argon] {
            check(&format!("{h:?}"), hasher(h).lookup_digest(TOKEN), None);
        }
    }

    #[test]
    fn verify_and_needs_rehash() {
        use Verification::{Match, MatchPreviousPepper as Previous, Mismatch};
        let long72 = "x".repeat(72);
        #[rustfmt::skip]
        let cases = [
            // Each row holds the case, the hasher that stores, the stored token, the hasher that
            // checks, the presented token and the expected outcome.
            ("hmac round trip", H::Hmac, TOKEN, H::Hmac, TOKEN, Match),
            ("hmac wrong token", H::Hmac, TOKEN, H::Hmac, OTHER, Mismatch),
            ("hmac empty token", H::Hmac, TOKEN, H::Hmac, "", Mismatch),
            ("hmac token prefix", H::Hmac, TOKEN, H::Hmac, &TOKEN[..20], Mismatch),
            ("hmac under an unrelated pepper", H::Hmac, TOKEN, H::Unrelated, TOKEN, Mismatch),
            ("hmac under a previous pepper", H::Hmac, TOKEN, H::Rotated, TOKEN, Previous),
            ("previous pepper, wrong token", H::Hmac, TOKEN, H::Rotated, OTHER, Mismatch),
            ("hmac under the current pepper after rotation", H::Rotated, TOKEN, H::Rotated, TOKEN, Match),
            ("new-pepper digest with the old pepper only", H::Rotated, TOKEN, H::Hmac, TOKEN, Mismatch),
            ("hmac checked with no pepper configured", H::Hmac, TOKEN, H::Sha, TOKEN, Mismatch),
            ("hmac checked by a bcrypt deployment", H::Rotated, TOKEN, H::BcryptPeppered, TOKEN, Match),
            ("old hmac checked by a bcrypt deployment", H::Hmac, TOKEN, H::BcryptPeppered, TOKEN, Previous),
            ("sha256 round trip", H::Sha, TOKEN, H::Sha, TOKEN, Match),
            ("sha256 wrong token", H::Sha, TOKEN, H::Sha, OTHER, Mismatch),
            ("sha256 import under hmac", H::Sha, TOKEN, H::Hmac, TOKEN, Match),
            ("bcrypt round trip", H::Bcrypt, TOKEN, H::Bcrypt, TOKEN, Match),
            ("bcrypt wrong token", H::Bcrypt, TOKEN, H::Bcrypt, OTHER, Mismatch),
            ("bcrypt import under hmac", H::Bcrypt, TOKEN, H::Hmac, TOKEN, Match),
            ("bcrypt 72-byte token", H::Bcrypt, &long72, H::Bcrypt, &long72, Match),
            ("bcrypt 72-byte token, last byte differs", H::Bcrypt, &long72, H::Bcrypt, &format!("{}y", &long72[..71]), Mismatch),
            ("bcrypt 73-byte token is never truncated", H::Bcrypt, &long72, H::Bcrypt, &format!("{long72}x"), Mismatch),
            ("argon2id round trip", H::Argon, TOKEN, H::Argon, TOKEN, Match),
            ("argon2id wrong token", H::Argon, TOKEN, H::Argon, OTHER, Mismatch),
            ("argon2id import under hmac", H::Argon, TOKEN, H::Hmac, TOKEN, Match),
        ];
        for (case, by, stored_token, checker, presented, want) in cases {
            let stored = store(by, stored_token);
            let h = hasher(checker);
            check(case, h.check(presented, &stored), want);
            check(case, h.verify(presented, &stored), want.is_match());
            check(case, h.needs_rehash(presented, &stored), want == Previous);
        }
    }

    #[test]
    fn verify_imported_and_malformed_hashes() {
        // These are an argon2id hash made with small parameters, as another system might make
        // it, and a bcrypt hash of "x" * 100 from Python's bcrypt, which truncates to 72 bytes.
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let small = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(TOKEN.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let python = "$2a$05$......................YgIDy4hFBdVlc/6LHnD9mX488r9cLd2";
        let x72 = "x".repeat(72);
        let x100 = "x".repeat(100);
        let slow = |scheme, hash: &str| StoredSecret {
            scheme,
            lookup: SEGMENT.to_owned(),
            hash: hash.to_owned(),
        };
        let fast = |scheme, lookup: &str| StoredSecret {
            scheme,
            lookup: lookup.to_owned(),
            hash: String::new(),
        };
        let h = hasher(H::Hmac);
        let sha = sha256_hex(TOKEN.as_bytes());
        #[rustfmt::skip]
        let cases = [
            ("argon2id with other parameters", slow(HashScheme::Argon2id, &small), TOKEN, true),
            ("argon2id with other parameters, wrong token", slow(HashScheme::Argon2id, &small), OTHER, false),
            ("argon2id malformed hash", slow(HashScheme::Argon2id, "$argon2id$garbage"), TOKEN, false),
            ("argon2id empty hash", slow(HashScheme::Argon2id, ""), TOKEN, false),
            ("argon2 hash under the bcrypt scheme", slow(HashScheme::Bcrypt, &small), TOKEN, false),
            ("bcrypt truncated import, 72-byte prefix", slow(HashScheme::Bcrypt, python), &x72, true),
            ("bcrypt truncated import, long token refused", slow(HashScheme::Bcrypt, python), &x100, false),
            ("bcrypt malformed hash", slow(HashScheme::Bcrypt, "$2b$04$short"), TOKEN, false),
            ("sha256 digest", fast(HashScheme::Sha256, &sha), TOKEN, true),
            ("sha256 upper-case digest is not the canonical form", fast(HashScheme::Sha256, &sha.to_uppercase()), TOKEN, false),
            ("sha256 digest truncated", fast(HashScheme::Sha256, &sha[..63]), TOKEN, false),
            ("sha256 empty digest", fast(HashScheme::Sha256, ""), TOKEN, false),
            ("hmac empty digest", fast(HashScheme::HmacSha256, ""), TOKEN, false),
            ("hmac given the sha256 digest", fast(HashScheme::HmacSha256, &sha), TOKEN, false),
        ];
        for (case, stored, token, want) in cases {
            check(case, h.verify(token, &stored), want);
        }
    }

    #[test]
    fn store_forms() {
        let too_long = |len| {
            Err(HashError::TokenTooLong {
                scheme: HashScheme::Bcrypt,
                len,
                max: BCRYPT_MAX_TOKEN_BYTES,
            })
        };
        let sha = sha256_hex(TOKEN.as_bytes());
        // This is RFC 4231, test case 1: HMAC-SHA256 of "Hi There" under twenty 0x0b bytes.
        let rfc = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7";
        let argon_prefix = "$argon2id$v=19$m=19456,t=2,p=1$";
        let (x71, x72, x73) = ("x".repeat(71), "x".repeat(72), "x".repeat(73));
        #[rustfmt::skip]
        let cases = [
            // Each row holds the case, the hasher, the token, the lookup segment, and either the
            // expected scheme, lookup and start of the hash, or the expected error.
            ("hmac known answer", H::Rfc4231, "Hi There", SEGMENT, Ok((HashScheme::HmacSha256, rfc, ""))),
            ("hmac ignores the segment", H::Rfc4231, "Hi There", "", Ok((HashScheme::HmacSha256, rfc, ""))),
            ("sha256 digest", H::Sha, TOKEN, SEGMENT, Ok((HashScheme::Sha256, &sha, ""))),
            ("bcrypt keeps the segment plain", H::Bcrypt, TOKEN, SEGMENT, Ok((HashScheme::Bcrypt, SEGMENT, "$2b$04$"))),
            ("bcrypt 71 bytes", H::Bcrypt, &x71, SEGMENT, Ok((HashScheme::Bcrypt, SEGMENT, "$2b$04$"))),
            ("bcrypt 72 bytes", H::Bcrypt, &x72, SEGMENT, Ok((HashScheme::Bcrypt, SEGMENT, "$2b$04$"))),
            ("bcrypt 73 bytes refused", H::Bcrypt, &x73, SEGMENT, too_long(73)),
            ("bcrypt 200 bytes refused", H::Bcrypt, &"x".repeat(200), SEGMENT, too_long(200)),
            ("bcrypt needs a segment", H::Bcrypt, TOKEN, "", Err(HashError::MissingLookupSegment(HashScheme::Bcrypt))),
            ("argon2id keeps the segment plain", H::Argon, TOKEN, SEGMENT, Ok((HashScheme::Argon2id, SEGMENT, argon_prefix))),
            ("argon2id needs a segment", H::Argon, TOKEN, "", Err(HashError::MissingLookupSegment(HashScheme::Argon2id))),
        ];
        for (case, h, token, segment, want) in cases {
            let got = hasher(h).store(&Secret::new(token), segment);
            let got = got.as_ref().map(|s| {
                let start = want.as_ref().map_or(0, |w| w.2.len()).min(s.hash.len());
                (s.scheme, s.lookup.as_str(), &s.hash[..start])
            });
            check(case, got.map_err(Clone::clone), want);
        }
    }

    #[test]
    fn slow_hashes_are_salted() {
        #[rustfmt::skip]
        let cases = [
            ("bcrypt", H::Bcrypt),
            ("argon2id", H::Argon),
        ];
        for (case, h) in cases {
            check(case, store(h, TOKEN).hash == store(h, TOKEN).hash, false);
        }
    }

    #[test]
    fn lookups_order_and_hot_path() {
        let digest = |h: H| hasher(h).lookup(TOKEN, SEGMENT);
        let (a, b) = (digest(H::Hmac), digest(H::Rotated));
        let sha = sha256_hex(TOKEN.as_bytes());
        #[rustfmt::skip]
        let cases = [
            ("hmac, current pepper, then imported schemes", H::Hmac, vec![a.clone(), sha.clone(), SEGMENT.to_owned()]),
            ("hmac, current pepper first, then previous", H::Rotated, vec![b.clone(), a.clone(), sha.clone(), SEGMENT.to_owned()]),
            ("sha256, the plain digest", H::Sha, vec![sha256_hex(TOKEN.as_bytes())]),
            ("bcrypt, the segment only", H::Bcrypt, vec![SEGMENT.to_owned()]),
            ("bcrypt with peppers, the segment only", H::BcryptPeppered, vec![SEGMENT.to_owned()]),
            ("argon2id, the segment only", H::Argon, vec![SEGMENT.to_owned()]),
        ];
        for (case, h, want) in cases {
            let h = hasher(h);
            check(case, h.lookups(TOKEN, SEGMENT), want.clone());
            check(case, h.lookup(TOKEN, SEGMENT), want[0].clone());
        }
        check("distinct peppers, distinct digests", a == b, false);
        check(
            "hmac lookup is lower-case hex",
            a.len() == 64 && a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            true,
        );
    }

    #[test]
    fn lookup_matches_stored_lookup() {
        #[rustfmt::skip]
        let cases = [
            ("hmac", H::Hmac),
            ("hmac rotated", H::Rotated),
            ("sha256", H::Sha),
            ("bcrypt", H::Bcrypt),
        ];
        for (case, h) in cases {
            check(
                case,
                hasher(h).lookup(TOKEN, SEGMENT),
                store(h, TOKEN).lookup,
            );
        }
    }

    #[test]
    fn configuration() {
        use HashScheme::{Argon2id, Bcrypt, HmacSha256, Sha256};
        let short = |which: &str, len| {
            Err(HashConfigError::PepperTooShort {
                which: which.to_owned(),
                len,
                min: MIN_PEPPER_BYTES,
            })
        };
        let p16 = "0123456789abcdef";
        #[rustfmt::skip]
        let cases = [
            // Each row holds the case, the scheme, the pepper, the previous peppers, the bcrypt
            // cost and the expected outcome.
            ("hmac with a pepper", HmacSha256, Some(PEPPER_A), vec![], 12, Ok(())),
            ("hmac pepper of exactly 16 bytes", HmacSha256, Some(p16), vec![], 12, Ok(())),
            ("hmac without a pepper", HmacSha256, None, vec![], 12, Err(HashConfigError::MissingPepper)),
            ("hmac with only previous peppers", HmacSha256, None, vec![PEPPER_A], 12, Err(HashConfigError::MissingPepper)),
            ("hmac pepper of 15 bytes", HmacSha256, Some(&p16[..15]), vec![], 12, short("pepper", 15)),
            ("hmac empty pepper", HmacSha256, Some(""), vec![], 12, short("pepper", 0)),
            ("short previous pepper named by index", HmacSha256, Some(PEPPER_A), vec![PEPPER_B, "short"], 12, short("previous_peppers[1]", 5)),
            ("sha256 needs no pepper", Sha256, None, vec![], 12, Ok(())),
            ("bcrypt needs no pepper", Bcrypt, None, vec![], 12, Ok(())),
            ("argon2id keeps an optional pepper", Argon2id, Some(PEPPER_A), vec![PEPPER_B], 12, Ok(())),
            ("optional pepper is still checked", Sha256, Some("short"), vec![], 12, short("pepper", 5)),
            ("bcrypt cost 4", Bcrypt, None, vec![], 4, Ok(())),
            ("bcrypt cost 31", Bcrypt, None, vec![], 31, Ok(())),
            ("bcrypt cost 3", Bcrypt, None, vec![], 3, Err(HashConfigError::BcryptCost(3))),
            ("bcrypt cost 32", Bcrypt, None, vec![], 32, Err(HashConfigError::BcryptCost(32))),
            ("cost checked under any scheme", HmacSha256, Some(PEPPER_A), vec![], 0, Err(HashConfigError::BcryptCost(0))),
        ];
        for (case, scheme, pepper, previous, cost, want) in cases {
            let previous = previous.into_iter().map(Secret::new).collect();
            let got = SecretHasher::new(scheme, pepper.map(Secret::new), previous, cost);
            check(case, got.map(|_| ()), want);
        }
    }

    #[test]
    fn scheme_and_slowness() {
        #[rustfmt::skip]
        let cases = [
            ("hmac", H::Hmac, HashScheme::HmacSha256, false),
            ("sha256", H::Sha, HashScheme::Sha256, false),
            ("bcrypt", H::Bcrypt, HashScheme::Bcrypt, true),
            ("argon2id", H::Argon, HashScheme::Argon2id, true),
        ];
        for (case, h, scheme, slow) in cases {
            let h = hasher(h);
            check(
                case,
                (h.scheme(), h.is_slow(), is_slow(scheme)),
                (scheme, slow, slow),
            );
        }
    }

    #[test]
    fn digests_known_answers() {
        #[rustfmt::skip]
        let cases = [
            // The first two are FIPS 180-2 examples; the token's digest was computed with `sha256sum`.
            ("empty", "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ("abc", "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ("token", TOKEN, "1a486af09223b312e75bd5ccd5c2d8f26e658a21f607f23b6640a56f300f5a90"),
        ];
        for (case, input, hex) in cases {
            check(case, sha256_hex(input.as_bytes()), hex.to_owned());
            check(case, fingerprint(input), format!("sha256_{hex}"));
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let long = format!("{TOKEN}{}", "z".repeat(80));
        let rendered = [
            ("hmac hasher", format!("{:?}", hasher(H::Hmac))),
            ("rotated hasher", format!("{:?}", hasher(H::Rotated))),
            (
                "bcrypt hasher with peppers",
                format!("{:?}", hasher(H::BcryptPeppered)),
            ),
            (
                "too long",
                hasher(H::Bcrypt)
                    .store(&Secret::new(long.as_str()), SEGMENT)
                    .unwrap_err()
                    .to_string(),
            ),
            (
                "short pepper",
                SecretHasher::new(
                    HashScheme::HmacSha256,
                    Some(Secret::new("short-pepper")),
                    vec![],
                    4,
                )
                .unwrap_err()
                .to_string(),
            ),
        ];
        for (case, text) in &rendered {
            for secret in [
                PEPPER_A,
                PEPPER_B,
                "pepper-a",
                "pepper-b",
                "short-pepper",
                TOKEN,
                "zzzz",
            ] {
                check(case, text.contains(secret), false);
            }
        }
        #[rustfmt::skip]
        let cases = [
            ("no pepper", H::Sha, "SecretHasher { scheme: Sha256, pepper: None, previous_peppers: 0, bcrypt_cost: 4 }"),
            ("rotated", H::Rotated, "SecretHasher { scheme: HmacSha256, pepper: Some(\"***\"), previous_peppers: 1, bcrypt_cost: 4 }"),
        ];
        for (case, h, want) in cases {
            check(case, format!("{:?}", hasher(h)), want.to_owned());
        }
    }

    #[test]
    fn generated_peppers() {
        let (p, q) = (generate_pepper(), generate_pepper());
        let hex = |s: &Secret| {
            s.expose()
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        };
        #[rustfmt::skip]
        let cases = [
            ("64 characters", p.len() == 64, true),
            ("lower-case hex", hex(&p), true),
            ("fresh each time", p == q, false),
            ("accepted as a pepper", SecretHasher::new(HashScheme::HmacSha256, Some(p.clone()), vec![q.clone()], 4).is_ok(), true),
            ("fallible form works", try_generate_pepper().is_ok_and(|s| s.len() == 64), true),
        ];
        for (case, got, want) in cases {
            check(case, got, want);
        }
    }
}
