//! GitHub's secret-scanning public keys and the check of a report's signature
//! (docs/leaked-keys.md).
//!
//! GitHub signs each report with ECDSA P-256 over SHA-256 of the raw body, names the key in
//! `Github-Public-Key-Identifier` and sends the DER signature, base64-encoded, in
//! `Github-Public-Key-Signature`. The keys come from `leaks.github_public_keys_file`, in the
//! shape GitHub's meta endpoint serves; the file is looked at again at most once a second,
//! when a report arrives, and re-read when its modification time or length changed, so a
//! new key is in use within seconds of the file being replaced.

use base64::Engine;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often the file's metadata is looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// The file as GitHub's meta endpoint serves it.
#[derive(Debug, Deserialize)]
struct KeysFile {
    public_keys: Vec<PublicKeyEntry>,
}

/// One key of it. `is_current` says which key GitHub signs new reports with; an older key
/// still verifies the reports signed with it.
#[derive(Debug, Deserialize)]
struct PublicKeyEntry {
    key_identifier: String,
    key: String,
    #[serde(default)]
    #[allow(dead_code)]
    is_current: bool,
}

/// The loaded keys and what the file looked like when they were read.
#[derive(Debug, Default)]
struct Loaded {
    keys: HashMap<String, VerifyingKey>,
    stamp: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
}

/// GitHub's public keys, reloaded when their file changes.
#[derive(Debug)]
pub struct GithubKeys {
    path: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

/// Why a report's signature was refused. The messages name no secret.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No keys file is configured.
    #[error("no GitHub public keys are configured (leaks.github_public_keys_file)")]
    NotConfigured,
    /// A header is missing.
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// The identifier names no key of the file.
    #[error("the public key identifier is unknown")]
    UnknownKey,
    /// The signature is not base64 DER, or does not verify.
    #[error("the signature does not verify")]
    BadSignature,
}

impl GithubKeys {
    /// Keys from `path` (empty = none configured).
    pub fn new(path: &str) -> Self {
        GithubKeys {
            path: (!path.is_empty()).then(|| PathBuf::from(path)),
            loaded: Mutex::default(),
        }
    }

    /// Checks `signature` (base64 DER) over `body` against the key named `identifier`.
    pub fn verify(
        &self,
        identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let path = self.path.as_ref().ok_or(SignatureError::NotConfigured)?;
        let identifier = identifier
            .map(str::trim)
            .ok_or(SignatureError::MissingHeader(
                "Github-Public-Key-Identifier",
            ))?;
        let signature = signature
            .map(str::trim)
            .ok_or(SignatureError::MissingHeader("Github-Public-Key-Signature"))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| SignatureError::BadSignature)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::BadSignature)?;
        let key = {
            let mut loaded = self
                .loaded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            refresh(path, &mut loaded);
            *loaded
                .keys
                .get(identifier)
                .ok_or(SignatureError::UnknownKey)?
        };
        key.verify(body, &signature)
            .map_err(|_| SignatureError::BadSignature)
    }
}

/// Re-reads the file when it changed, at most once per [`RECHECK`]. A file that cannot be
/// read or parsed leaves the keys as they were, with a warning.
fn refresh(path: &PathBuf, loaded: &mut Loaded) {
    let now = Instant::now();
    if loaded
        .checked
        .is_some_and(|t| now.duration_since(t) < RECHECK)
    {
        return;
    }
    loaded.checked = Some(now);
    let stamp = std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    if stamp.is_none() || stamp == loaded.stamp {
        if stamp.is_none() {
            tracing::warn!(path = %path.display(), "cannot read the GitHub public keys file");
        }
        return;
    }
    match read_keys(path) {
        Ok(keys) => {
            tracing::info!(path = %path.display(), keys = keys.len(), "GitHub public keys loaded");
            loaded.keys = keys;
            loaded.stamp = stamp;
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "GitHub public keys file refused")
        }
    }
}

fn read_keys(path: &PathBuf) -> Result<HashMap<String, VerifyingKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file: KeysFile = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    file.public_keys
        .into_iter()
        .map(|k| {
            VerifyingKey::from_public_key_pem(&k.key)
                .map(|v| (k.key_identifier.clone(), v))
                .map_err(|e| format!("public_keys[{}]: {e}", k.key_identifier))
        })
        .collect()
}
