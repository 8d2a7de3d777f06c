//! Leaked keys (docs/leaked-keys.md): telling a reported token that is one of this
//! deployment's active keys from anything else, and applying the leak policy to it.
//!
//! Every source of reports — GitHub's secret scanning, GitLab's token revocation API,
//! `POST /v1/admin/leaks` and `keywarden scan --report` — goes through [`Leaks`]:
//! [`Leaks::classify`] answers quickly whether a token is a true positive (it parses, its
//! checksum holds, and it is the current secret of a key that is not revoked), and
//! [`Leaks::act`] then revokes it (reason `leaked`) or only records the `key.leaked` event,
//! as `leaks.action_live` / `leaks.action_test` say. Revocation goes through the same
//! [`Manager::revoke_key`] the admin API uses, so every cache forgets the key at once.

use crate::config::{Config, ConfigError, LeakAction};
use crate::errors::ApiError;
use crate::manage::{Actor, Manager};
use crate::state::AppState;
use keywarden_core::hashing::{fingerprint, sha256_hex};
use keywarden_core::model::{KeyRecord, Mode};
use keywarden_core::template::{KeyTemplate, TemplateTags};
use keywarden_store::EventFilter;
use serde::Serialize;
use serde_json::json;
use std::collections::HashSet;

/// The audit event a leak is recorded as.
pub const LEAK_EVENT: &str = "key.leaked";

/// The revocation reason of a leaked key.
pub const LEAK_REASON: &str = "leaked";

/// How many earlier `key.leaked` events of an account are searched for a repeat report.
const DEDUP_WINDOW: u32 = 1000;

/// The configured template and the legacy ones, compiled from the configuration alone (no
/// pepper or store needed), for the offline scanner and `keywarden keys pattern`.
pub fn templates(config: &Config) -> Result<Vec<KeyTemplate>, ConfigError> {
    let k = &config.keys;
    let tags = TemplateTags {
        live: k.mode_tags.live.clone(),
        test: k.mode_tags.test.clone(),
        secret: k.type_tags.secret.clone(),
        publishable: k.type_tags.publishable.clone(),
    };
    let mut out = vec![KeyTemplate::compile(&k.template, &tags)
        .map_err(|e| ConfigError::new("keys.template", e.to_string()))?];
    for (i, t) in k.legacy_templates.iter().enumerate() {
        out.push(
            KeyTemplate::compile(t, &tags).map_err(|e| {
                ConfigError::new(format!("keys.legacy_templates[{i}]"), e.to_string())
            })?,
        );
    }
    Ok(out)
}

/// Whether a reported token is one of this deployment's active keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// The current secret of a key that is not revoked: the policy applies to it.
    TruePositive,
    /// Anything else: no key's format or checksum, no key, a revoked key, or a token type
    /// this deployment does not issue. Nothing changes.
    FalsePositive,
}

/// A reported token after classification.
#[derive(Clone, Debug)]
pub struct Classified {
    /// The key it is the secret of, when a true positive.
    pub key: Option<KeyRecord>,
    /// Lower-case hex SHA-256 of the token (GitHub's `token_hash`).
    pub sha256: String,
}

impl Classified {
    /// A token not even looked up (a token type this deployment does not issue).
    pub fn not_a_key(token: &str) -> Self {
        Classified {
            key: None,
            sha256: sha256_hex(token.as_bytes()),
        }
    }

    /// The label a reporter is answered with.
    pub fn label(&self) -> Label {
        match self.key {
            Some(_) => Label::TruePositive,
            None => Label::FalsePositive,
        }
    }

    /// The token's fingerprint as Keywarden writes it (`sha256_…`, a key's `key_hash`).
    pub fn token_hash(&self) -> String {
        format!("sha256_{}", self.sha256)
    }
}

/// A true positive to act on.
#[derive(Clone, Debug)]
pub struct Leak {
    /// The key as found.
    pub key: KeyRecord,
    /// Where the token was seen (a URL, a file), if the reporter said.
    pub source: Option<String>,
}

/// Who reported a leak, kept in the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// GitHub's secret scanning.
    Github,
    /// GitLab's secret detection.
    Gitlab,
    /// `POST /v1/admin/leaks`.
    Admin,
    /// `keywarden scan --report`.
    Scan,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Github => "github",
            Reporter::Gitlab => "gitlab",
            Reporter::Admin => "admin",
            Reporter::Scan => "scan",
        }
    }
}

/// The leak service over the service state.
#[derive(Clone, Debug)]
pub struct Leaks {
    state: AppState,
}

/// Serialises acting on leaks in this process, so two reports of one token racing each
/// other record one event.
static ACTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Leaks {
    /// The service over `state`.
    pub fn new(state: &AppState) -> Self {
        Leaks {
            state: state.clone(),
        }
    }

    /// Whether reports may name `kind` (`leaks.token_types`, case ignored).
    pub fn accepts_type(&self, kind: &str) -> bool {
        keywarden_core::leaks::accepts_type(&self.state.settings.config.leaks.token_types, kind)
    }

    /// The configured token type names.
    pub fn token_types(&self) -> Vec<String> {
        self.state.settings.config.leaks.token_types.clone()
    }

    /// Classifies one token: parsed with the configured and legacy templates (checksum
    /// included, so a look-alike never reaches the store), then found by its fingerprint
    /// with one indexed read.
    pub async fn classify(&self, token: &str) -> Result<Classified, ApiError> {
        let sha256 = sha256_hex(token.as_bytes());
        let key = if self.state.verifier.parse(token).is_some() {
            self.state
                .store
                .get_key_by_hash(&fingerprint(token))
                .await?
                .filter(|k| k.revoked_at.is_none())
        } else {
            None
        };
        Ok(Classified { key, sha256 })
    }

    /// Classifies each token, in order.
    pub async fn classify_all<'a>(
        &self,
        tokens: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Classified>, ApiError> {
        let mut out = Vec::new();
        for t in tokens {
            out.push(self.classify(t).await?);
        }
        Ok(out)
    }

    /// What the policy says for a key of `mode`.
    pub fn action(&self, mode: Mode) -> LeakAction {
        let l = &self.state.settings.config.leaks;
        match mode {
            Mode::Live => l.action_live,
            Mode::Test => l.action_test,
        }
    }

    /// Applies the policy to each leak: the key is read again, and one already revoked,
    /// rotated since, or (under `notify`) already reported is left alone, so repeated and
    /// concurrent reports of a token record one `key.leaked` event. Returns how many
    /// leaks were acted on.
    pub async fn act(
        &self,
        actor: &Actor,
        reporter: Reporter,
        leaks: Vec<Leak>,
    ) -> Result<usize, ApiError> {
        let _one_at_a_time = ACTING.lock().await;
        let m = Manager::new(&self.state);
        let mut seen = HashSet::new();
        let mut acted = 0;
        for leak in leaks {
            if !seen.insert(leak.key.key_hash.clone()) {
                continue;
            }
            let Some(key) = self.state.store.get_key(&leak.key.id).await? else {
                continue;
            };
            if key.revoked_at.is_some() || key.key_hash != leak.key.key_hash {
                continue;
            }
            let action = self.action(key.mode);
            if action == LeakAction::Notify && self.already_reported(&key).await? {
                continue;
            }
            let leaked = |key: &KeyRecord| {
                m.event(
                    actor,
                    LEAK_EVENT,
                    Some(&key.account_id),
                    Some(key.mode),
                    json!({
                        "key_id": key.id,
                        "key_hash": leak.key.key_hash,
                        "start": key.start,
                        "source": leak.source,
                        "reporter": reporter.as_str(),
                        "action": match action {
                            LeakAction::Revoke => "revoked",
                            LeakAction::Notify => "notified",
                        },
                    }),
                )
            };
            match action {
                // The leak is recorded with the revocation, after its `key.revoked`.
                LeakAction::Revoke => {
                    m.revoke_key_with(actor, key, Some(LEAK_REASON.into()), |k| vec![leaked(k)])
                        .await?;
                }
                // Nothing changes: the report is an event of its own.
                LeakAction::Notify => self.state.store.append_events(&[leaked(&key)]).await?,
            }
            acted += 1;
        }
        Ok(acted)
    }

    /// Classifies `tokens` and acts on the true positives now; the answer per token, in
    /// order.
    pub async fn report(
        &self,
        actor: &Actor,
        reporter: Reporter,
        tokens: &[String],
        source: Option<&str>,
    ) -> Result<Vec<Classified>, ApiError> {
        let found = self.classify_all(tokens.iter().map(String::as_str)).await?;
        let leaks = found
            .iter()
            .filter_map(|c| c.key.clone())
            .map(|key| Leak {
                key,
                source: source.map(str::to_string),
            })
            .collect();
        self.act(actor, reporter, leaks).await?;
        Ok(found)
    }

    /// Whether a `key.leaked` event already names this secret of the key.
    async fn already_reported(&self, key: &KeyRecord) -> Result<bool, ApiError> {
        let earlier = self
            .state
            .store
            .list_events(&EventFilter {
                account_id: Some(key.account_id.clone()),
                kind: Some(LEAK_EVENT.into()),
                limit: DEDUP_WINDOW,
                ..EventFilter::default()
            })
            .await?;
        Ok(earlier
            .iter()
            .any(|e| e.data["key_hash"].as_str() == Some(key.key_hash.as_str())))
    }
}
