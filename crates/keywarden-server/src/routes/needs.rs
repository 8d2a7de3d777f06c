//! What verify, forward-auth and the gateway share: what a route needs, and the headers a
//! verification outcome sets (rate-limit figures, the caller's identity).

use crate::state::AppState;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use keywarden_core::decision::CompiledKey;
use keywarden_core::model::Mode;
use keywarden_core::routes::{PathError, RouteDecision};
use keywarden_core::scopes::{ScopeCatalog, ScopeSet};
use keywarden_store::verifier::VerifyOutcome;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

/// What a route requires, owned so it can be borrowed by a `VerifyRequest`.
#[derive(Debug)]
pub enum Needs {
    /// No key needed at all.
    Public,
    /// A valid key.
    Key,
    /// A valid key with all of these scopes.
    Scopes(ScopeSet),
    /// Nothing can pass (but a bad key still gets its own code).
    Impossible,
}

/// Resolves the route rules for a method and a request path (without its query string):
/// what the request needs, and the canonical path that was decided, which is the one to
/// forward. A path with no canonical form is an error, to be refused with 400
/// (`docs/routes.md`).
pub fn route_needs<'a>(
    state: &AppState,
    method: &str,
    path: &'a str,
) -> Result<(Needs, Cow<'a, str>), PathError> {
    let routed = state.settings.routes.route(method, path)?;
    let needs = match routed.decision {
        RouteDecision::Public => Needs::Public,
        RouteDecision::Authenticated => Needs::Key,
        RouteDecision::Deny => Needs::Impossible,
        RouteDecision::Require { set, .. } => Needs::Scopes(set),
        RouteDecision::Unsatisfiable { .. } => Needs::Impossible,
    };
    Ok((needs, routed.path))
}

pub use keywarden_store::reply::rate_limit_headers;

/// `X-Keywarden-Key-Id` (names checked at compile time, not per request).
const KEY_ID: HeaderName = HeaderName::from_static("x-keywarden-key-id");
/// `X-Keywarden-Account-Id`.
const ACCOUNT_ID: HeaderName = HeaderName::from_static("x-keywarden-account-id");
/// `X-Keywarden-Mode`.
const MODE: HeaderName = HeaderName::from_static("x-keywarden-mode");
/// `X-Keywarden-Scopes`.
const SCOPES: HeaderName = HeaderName::from_static("x-keywarden-scopes");

/// The identity headers of an allowed request.
pub fn identity_headers(state: &AppState, headers: &mut HeaderMap, out: &VerifyOutcome) {
    if let Some(k) = &out.key {
        const LIVE: HeaderValue = HeaderValue::from_static(Mode::Live.as_str());
        const TEST: HeaderValue = HeaderValue::from_static(Mode::Test.as_str());
        headers.insert(
            MODE,
            match k.mode {
                Mode::Live => LIVE,
                Mode::Test => TEST,
            },
        );
        with_key_identity(state, k, |values| {
            // A value that cannot be a header's (none of this service's making) is left out.
            for (name, value) in [KEY_ID, ACCOUNT_ID, SCOPES].into_iter().zip(values) {
                if let Some(value) = value {
                    headers.insert(name, value.clone());
                }
            }
        });
    } else if out.global {
        headers.insert(KEY_ID, HeaderValue::from_static("global"));
        headers.insert(SCOPES, HeaderValue::from_static("*"));
    }
}

/// A key's id, account id and scope names as header values. The values are kept per
/// thread, a slot per compiled key, and reused while the key and the catalog naming its
/// scopes are the ones they were made from: a busy key's requests then copy nothing. A
/// key whose record changes is compiled anew, so a kept key is never out of date.
fn with_key_identity(
    state: &AppState,
    k: &Arc<CompiledKey>,
    then: impl FnOnce(&[Option<HeaderValue>; 3]),
) {
    thread_local! {
        static SLOTS: RefCell<Vec<Option<IdentitySlot>>> = const { RefCell::new(Vec::new()) };
    }
    let catalog = &state.settings.catalog;
    // The key's address picks the slot (the slot holds the key, so the address is not
    // reused while it is kept).
    let at = Arc::as_ptr(k) as usize as u64;
    let slot = (at.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
    SLOTS.with_borrow_mut(|slots| {
        if slots.is_empty() {
            slots.resize_with(IDENTITY_SLOTS, || None);
        }
        match &slots[slot] {
            Some(kept) if Arc::ptr_eq(&kept.key, k) && Arc::ptr_eq(&kept.catalog, catalog) => {
                then(&kept.values);
            }
            _ => {
                let mut names = String::with_capacity(64);
                for name in catalog.iter_names(&k.scopes) {
                    if !names.is_empty() {
                        names.push(' ');
                    }
                    names.push_str(name);
                }
                let value = |text: &str| HeaderValue::from_str(text).ok();
                let kept = slots[slot].insert(IdentitySlot {
                    key: k.clone(),
                    catalog: catalog.clone(),
                    values: [value(k.id()), value(k.account_id()), value(&names)],
                });
                then(&kept.values);
            }
        }
    })
}

/// Slots in each thread's identity cache (a power of two: the top six bits of a hash).
const IDENTITY_SLOTS: usize = 64;

/// What [`key_identity`] keeps for one key.
struct IdentitySlot {
    key: Arc<CompiledKey>,
    catalog: Arc<ScopeCatalog>,
    values: [Option<HeaderValue>; 3],
}
