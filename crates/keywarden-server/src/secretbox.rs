//! Recoverable test secrets (`keys.recoverable_test_secrets`): AES-256-GCM under a master
//! key of its own, never the pepper. Each secret is sealed with a fresh random 96-bit nonce
//! and bound to the key's id (as associated data), so a sealed value copied onto another key
//! does not open. Live secrets are never sealed.
//!
//! A sealed value reads `v1.` + base64(nonce ‖ ciphertext ‖ tag).

use crate::config::{ConfigError, KeysConfig};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use keywarden_core::Secret;
use std::fmt;
use zeroize::Zeroizing;

/// The version tag of sealed values.
const VERSION: &str = "v1.";
/// AES-GCM's standard nonce length in bytes (96 bits).
const NONCE_LEN: usize = 12;
/// The authentication tag's length in bytes.
const TAG_LEN: usize = 16;
/// The master key's length in bytes (AES-256).
pub const MASTER_KEY_LEN: usize = 32;

/// Seals a new secret for later recovery when `keys.recoverable_test_secrets` is on (a
/// `secretbox` is configured) and the key is a test key; live secrets are never sealed,
/// whatever the configuration.
pub fn seal_recoverable(
    secretbox: Option<&SecretBox>,
    mode: keywarden_core::model::Mode,
    key_id: &str,
    token: &Secret,
) -> Result<Option<String>, crate::errors::ApiError> {
    match (secretbox, mode) {
        (Some(b), keywarden_core::model::Mode::Test) => {
            b.seal(token, key_id).map(Some).map_err(|_| {
                tracing::error!(key_id, "a test secret could not be sealed");
                crate::errors::ApiError::new(keywarden_core::codes::Code::InternalError)
            })
        }
        _ => Ok(None),
    }
}

/// Why sealing or opening failed. The messages are fixed: nothing derived from a secret or
/// from the master key ever reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The OS random source or the cipher failed while sealing.
    #[error("the secret could not be sealed")]
    Seal,
    /// The sealed value is malformed, was made under another master key, or belongs to
    /// another key.
    #[error("the sealed secret cannot be opened with the configured master key")]
    Open,
}

/// Seals and opens recoverable secrets with the master key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    /// A box from 32 bytes of key material.
    pub fn new(key: &[u8; MASTER_KEY_LEN]) -> Self {
        SecretBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    /// Parses a master key written as 64 hex characters or as base64 (standard or URL-safe,
    /// padded or not) of exactly 32 bytes. Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let key = decode_key(text)?;
        Ok(SecretBox::new(&key))
    }

    /// Seals `secret` for the key `key_id`.
    pub fn seal(&self, secret: &Secret, key_id: &str) -> Result<String, SealError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        raw.extend_from_slice(nonce.as_slice());
        raw.extend_from_slice(&ciphertext);
        Ok(format!("{VERSION}{}", STANDARD.encode(raw)))
    }

    /// Opens a value sealed for the key `key_id`.
    pub fn open(&self, sealed: &str, key_id: &str) -> Result<Secret, SealError> {
        let body = sealed.strip_prefix(VERSION).ok_or(SealError::Open)?;
        let raw = STANDARD.decode(body).map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: key_id.as_bytes(),
                    },
                )
                .map_err(|_| SealError::Open)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| SealError::Open)?;
        Ok(Secret::new(text))
    }
}

/// Decodes 32 bytes of key material from hex or base64.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; MASTER_KEY_LEN]>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the master key is empty".into());
    }
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    if text.len() == 2 * MASTER_KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex_decode(text, &mut key);
        return Ok(key);
    }
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(bytes) = engine.decode(text) {
            let bytes = Zeroizing::new(bytes);
            if bytes.len() == MASTER_KEY_LEN {
                key.copy_from_slice(&bytes);
                return Ok(key);
            }
            return Err(format!(
                "the master key must be {MASTER_KEY_LEN} bytes; this one decodes to {}",
                bytes.len()
            ));
        }
    }
    Err(format!(
        "the master key must be {MASTER_KEY_LEN} bytes written as {} hex characters or as base64",
        2 * MASTER_KEY_LEN
    ))
}

fn hex_decode(text: &str, out: &mut [u8; MASTER_KEY_LEN]) {
    let nibble = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
}

/// The box `keys.recoverable_test_secrets` needs, from `keys.master_key_file` when set, else
/// from the environment variable `keys.master_key_env` names. `None` when recoverable test
/// secrets are off. The master key must differ from the pepper.
pub fn from_config(
    keys: &KeysConfig,
    pepper: Option<&Secret>,
) -> Result<Option<SecretBox>, ConfigError> {
    from_config_with(keys, pepper, |name| std::env::var(name).ok())
}

/// [`from_config`] with the environment given as a function (for tests).
pub fn from_config_with(
    keys: &KeysConfig,
    pepper: Option<&Secret>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<SecretBox>, ConfigError> {
    if !keys.recoverable_test_secrets {
        return Ok(None);
    }
    let (field, material) = if !keys.master_key_file.is_empty() {
        let text = std::fs::read_to_string(&keys.master_key_file).map_err(|e| {
            ConfigError::new(
                "keys.master_key_file",
                format!("cannot read {}: {}", keys.master_key_file, e.kind()),
            )
        })?;
        ("keys.master_key_file", Zeroizing::new(text))
    } else {
        let value = (!keys.master_key_env.is_empty())
            .then(|| env(&keys.master_key_env))
            .flatten()
            .filter(|v| !v.trim().is_empty());
        match value {
            Some(v) => ("keys.master_key_env", Zeroizing::new(v)),
            None => {
                return Err(ConfigError::new(
                    "keys.recoverable_test_secrets",
                    format!(
                        "recoverable test secrets need a master key: set the environment \
                         variable {} (keys.master_key_env) or keys.master_key_file to 32 \
                         random bytes as 64 hex characters or base64",
                        if keys.master_key_env.is_empty() {
                            "named by keys.master_key_env"
                        } else {
                            keys.master_key_env.as_str()
                        }
                    ),
                ))
            }
        }
    };
    let key = decode_key(&material).map_err(|reason| ConfigError::new(field, reason))?;
    if let Some(p) = pepper {
        let p = p.expose().trim();
        let same_text = p == material.trim();
        let same_bytes = decode_key(p).is_ok_and(|pk| *pk == *key);
        if same_text || same_bytes {
            return Err(ConfigError::new(
                field,
                "the master key must not be the pepper: use a separate random key",
            ));
        }
    }
    Ok(Some(SecretBox::new(&key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn keys(on: bool, env: &str, file: &str) -> KeysConfig {
        KeysConfig {
            recoverable_test_secrets: on,
            master_key_env: env.into(),
            master_key_file: file.into(),
            ..KeysConfig::default()
        }
    }

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let b = SecretBox::parse(HEX).unwrap();
        let s = Secret::new("kw_sk_test_abc");
        let one = b.seal(&s, "key_1").unwrap();
        let two = b.seal(&s, "key_1").unwrap();
        assert_ne!(one, two, "each seal draws its own nonce");
        assert!(one.starts_with("v1."));
        assert!(!one.contains("kw_sk_test_abc"));
        assert_eq!(b.open(&one, "key_1").unwrap().expose(), "kw_sk_test_abc");
        assert_eq!(b.open(&two, "key_1").unwrap().expose(), "kw_sk_test_abc");
    }

    #[test]
    fn refuses_another_key_id_another_master_key_and_tampering() {
        let b = SecretBox::parse(HEX).unwrap();
        let sealed = b.seal(&Secret::new("secret"), "key_1").unwrap();
        assert_eq!(b.open(&sealed, "key_2").unwrap_err(), SealError::Open);
        let other = SecretBox::new(&[7u8; 32]);
        assert_eq!(other.open(&sealed, "key_1").unwrap_err(), SealError::Open);
        let mut raw = STANDARD.decode(&sealed[3..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = format!("v1.{}", STANDARD.encode(raw));
        assert_eq!(b.open(&tampered, "key_1").unwrap_err(), SealError::Open);
        for bad in ["", "v1.", "v2.AAAA", "v1.!!!", "v1.AAAA"] {
            assert_eq!(b.open(bad, "key_1").unwrap_err(), SealError::Open, "{bad}");
        }
    }

    #[test]
    fn master_keys_are_hex_or_base64_of_32_bytes() {
        assert!(SecretBox::parse(HEX).is_ok());
        assert!(SecretBox::parse(&HEX.to_uppercase()).is_ok());
        assert!(SecretBox::parse(&format!("  {HEX}\n")).is_ok());
        let b64 = STANDARD.encode([9u8; 32]);
        assert!(SecretBox::parse(&b64).is_ok());
        assert!(SecretBox::parse(b64.trim_end_matches('=')).is_ok());
        assert!(SecretBox::parse(&URL_SAFE_NO_PAD.encode([0xfbu8; 32])).is_ok());
        let short = SecretBox::parse(&STANDARD.encode([1u8; 16])).unwrap_err();
        assert!(short.contains("16"), "{short}");
        assert!(SecretBox::parse("").is_err());
        assert!(SecretBox::parse("not a key at all").is_err());
        assert!(SecretBox::parse(&HEX[..62]).is_err());
    }

    #[test]
    fn config_names_the_field_of_each_problem() {
        let none = |_: &str| None::<String>;
        assert!(from_config_with(&keys(false, "", ""), None, none)
            .unwrap()
            .is_none());

        let e = from_config_with(&keys(true, "KW_MK", ""), None, none).unwrap_err();
        assert_eq!(e.field, "keys.recoverable_test_secrets");
        assert!(e.reason.contains("KW_MK"), "{e}");

        let e =
            from_config_with(&keys(true, "KW_MK", ""), None, |_| Some("short".into())).unwrap_err();
        assert_eq!(e.field, "keys.master_key_env");
        assert!(
            !e.reason.contains("short"),
            "the value is never echoed: {e}"
        );

        let e = from_config_with(&keys(true, "", "/nonexistent/mk"), None, none).unwrap_err();
        assert_eq!(e.field, "keys.master_key_file");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mk");
        std::fs::write(&path, format!("{HEX}\n")).unwrap();
        let file = path.display().to_string();
        assert!(from_config_with(&keys(true, "", &file), None, none)
            .unwrap()
            .is_some());
        assert!(
            from_config_with(&keys(true, "KW_MK", ""), None, |_| Some(HEX.into()))
                .unwrap()
                .is_some()
        );

        // Never the pepper.
        let pepper = Secret::new(HEX);
        let e = from_config_with(&keys(true, "", &file), Some(&pepper), none).unwrap_err();
        assert_eq!(e.field, "keys.master_key_file");
        assert!(e.reason.contains("pepper"), "{e}");
        let e = from_config_with(&keys(true, "KW_MK", ""), Some(&pepper), |_| {
            Some(STANDARD.encode(hex_bytes(HEX)))
        })
        .unwrap_err();
        assert!(e.reason.contains("pepper"), "{e}");
    }

    fn hex_bytes(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_decode(s, &mut out);
        out
    }
}
