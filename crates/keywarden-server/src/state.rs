//! The state every handler shares.

use crate::settings::Settings;
use keywarden_core::Clock;
use keywarden_store::verifier::Verifier;
use keywarden_store::Store;
use std::sync::Arc;

/// Shared, immutable-after-start state: settings, the verifier and the store.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Inner {
    /// The compiled configuration.
    pub settings: Settings,
    /// The verification engine (cache, limits, writer).
    pub verifier: Arc<Verifier>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The clock (movable in tests).
    pub clock: Arc<dyn Clock>,
    /// Gateway requests in flight per key (the plan's `concurrency`).
    pub in_flight: Arc<crate::in_flight::InFlightTable>,
    /// GitHub's secret-scanning public keys (`leaks.github_public_keys_file`).
    pub github_keys: crate::github_keys::GithubKeys,
    /// Webhook delivery counters.
    pub webhook_stats: Arc<crate::webhooks::WebhookStats>,
    /// The scopes self-service routes need, compiled against the catalog.
    pub needs: crate::auth::ScopeNeeds,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(settings: Settings, verifier: Arc<Verifier>, clock: Arc<dyn Clock>) -> Self {
        let store = verifier.store().clone();
        let github_keys =
            crate::github_keys::GithubKeys::new(&settings.config.leaks.github_public_keys_file);
        let needs = crate::auth::ScopeNeeds::compile(&settings.catalog);
        AppState(Arc::new(Inner {
            github_keys,
            needs,
            settings,
            verifier,
            store,
            clock,
            in_flight: Arc::default(),
            webhook_stats: Arc::default(),
        }))
    }
}

impl AppState {
    /// The shared inner state.
    pub fn inner(&self) -> &Arc<Inner> {
        &self.0
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
