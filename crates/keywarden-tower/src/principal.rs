//! What a verified request carries into the application: who called ([`Principal`]) and
//! the request's id ([`RequestId`]), both in the request extensions.

use keywarden_core::model::{KeyType, Mode};
use keywarden_core::scopes::ScopeCatalog;
use keywarden_store::verifier::VerifyOutcome;
use serde::Serialize;
use std::fmt;

/// The caller of a request the layer allowed. Never holds the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The key's id (`key_…`), or `global` for a configured global key.
    pub key_id: String,
    /// The key's account (`acc_…`). `None` only for a global key, which belongs to no
    /// account.
    pub account_id: Option<String>,
    /// The key's mode: the application should show and touch only objects of this mode.
    /// `None` only for a global key.
    pub mode: Option<Mode>,
    /// Secret or publishable (global keys count as secret).
    pub key_type: KeyType,
    /// The key's effective unit scopes, aliases and wildcards expanded, in catalog order.
    pub scopes: Vec<String>,
    /// The application the key was granted to, for keys made under a grant.
    pub app_id: Option<String>,
}

impl Principal {
    /// The principal of an allowed outcome; `None` when the outcome names no caller.
    pub(crate) fn from_outcome(out: &VerifyOutcome, catalog: &ScopeCatalog) -> Option<Self> {
        if let Some(key) = &out.key {
            return Some(Principal {
                key_id: key.id().to_owned(),
                account_id: Some(key.account_id().to_owned()),
                mode: Some(key.mode),
                key_type: key.key_type,
                scopes: catalog.iter_names(&key.scopes).map(str::to_owned).collect(),
                app_id: key.app_id().map(str::to_owned),
            });
        }
        out.global.then(|| Principal {
            key_id: "global".into(),
            account_id: None,
            mode: None,
            key_type: KeyType::Secret,
            scopes: catalog
                .iter_names(catalog.all_scopes())
                .map(str::to_owned)
                .collect(),
            app_id: None,
        })
    }

    /// Whether this is a configured global key (full access, no account).
    pub fn is_global(&self) -> bool {
        self.account_id.is_none()
    }

    /// Whether the key holds the unit scope `name`. Aliases are not expanded here: use
    /// [`RequireScopes`](crate::RequireScopes) to require them.
    pub fn has_scope(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s == name)
    }
}

/// The id of a request that went through the layer (`req_<ULID>`), also sent back in
/// `X-Request-Id` and in error bodies. The layer keeps an id already in the extensions, so
/// an outer layer can assign it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh id.
    pub fn new() -> Self {
        RequestId(format!("req_{}", ulid::Ulid::new()))
    }

    /// Wraps an id assigned elsewhere.
    pub fn from_string(id: String) -> Self {
        RequestId(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
