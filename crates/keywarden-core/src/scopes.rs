//! Scopes (`docs/concepts.md#scopes-and-routes`): the closed catalog, aliases, wildcards and the bitsets the hot path
//! tests.
//!
//! Everything expensive happens once, in [`ScopeCatalog::build`]: names are validated,
//! aliases are expanded (nested ones included, cycles rejected with the cycle named), and
//! every name a key may be granted (unit scopes, aliases, `prefix:*`) is mapped to a
//! precomputed [`ScopeSet`]. After that, [`ScopeCatalog::compile`] is a union of stored
//! sets and a permission check is [`ScopeSet::contains_all`]: an AND-compare over a few
//! machine words, with no allocation and no hashing.
//!
//! A [`ScopeSet`] is only meaningful next to the catalog that made it: bit `i` is the
//! catalog's `i`-th scope. A configuration reload must therefore recompile stored grants
//! against the new catalog rather than reuse old sets.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

/// The longest scope name accepted, in bytes, so names stay readable in headers and logs.
pub const MAX_SCOPE_NAME_LEN: usize = 128;

/// The most scopes one catalog may hold (built-ins included). It fixes the width of a
/// [`ScopeSet`], which keeps sets small, allocation-free and cheap to copy into caches.
pub const MAX_SCOPES: usize = 512;

/// The number of 64-bit words in a [`ScopeSet`].
const WORDS: usize = MAX_SCOPES / 64;

/// The super-scope grant: every catalog scope, unless the deployment turned it off.
pub const SUPER_SCOPE: &str = "*";

/// The platform scopes the self-service API (`docs/api.md#self-service-api`) checks. They exist in every
/// catalog so that those endpoints work whatever the deployment configures.
pub const BUILTIN_SCOPES: &[(&str, &str)] = &[
    (
        "account:read",
        "Read the account: its name, plan, status and the calling key.",
    ),
    ("account:write", "Rename the account and change its plan."),
    (
        "api_keys:read",
        "List and read the account's API keys (never their secrets).",
    ),
    ("api_keys:write", "Create and rotate API keys."),
    ("api_keys:delete", "Revoke API keys."),
    (
        "usage:read",
        "Read the account's usage and remaining quotas.",
    ),
    (
        "webhooks:read",
        "List the account's webhook endpoints and their delivery logs.",
    ),
    (
        "webhooks:write",
        "Register and change webhook endpoints, rotate their secrets, redeliver.",
    ),
    ("webhooks:delete", "Delete webhook endpoints."),
];

/// A syntactically valid scope name: segments of `[a-z0-9_]+` joined by `:`, at most
/// [`MAX_SCOPE_NAME_LEN`] bytes. Holding one proves the grammar was checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScopeName(String);

impl ScopeName {
    /// Checks the grammar of `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, ScopeNameError> {
        validate_name(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unwraps the name without copying it.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for ScopeName {
    type Error = ScopeNameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate_name(&s)?;
        Ok(Self(s))
    }
}

impl From<ScopeName> for String {
    fn from(name: ScopeName) -> Self {
        name.0
    }
}

impl FromStr for ScopeName {
    type Err = ScopeNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for ScopeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScopeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not a scope name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeNameError {
    /// The name is empty.
    #[error("scope name is empty")]
    Empty,
    /// The name is longer than [`MAX_SCOPE_NAME_LEN`].
    #[error("scope name is {len} bytes long; at most {MAX_SCOPE_NAME_LEN} are allowed")]
    TooLong {
        /// The actual length in bytes, so the operator knows how much to cut.
        len: usize,
    },
    /// Two `:` in a row, or a `:` at either end.
    #[error("scope name has an empty segment (check for a leading, trailing or doubled ':')")]
    EmptySegment,
    /// A character outside `[a-z0-9_:]`.
    #[error("scope name contains {ch:?}; only a-z, 0-9, '_' and ':' are allowed")]
    InvalidChar {
        /// The first offending character.
        ch: char,
    },
}

/// Checks the scope-name grammar without allocating.
fn validate_name(s: &str) -> Result<(), ScopeNameError> {
    if s.is_empty() {
        return Err(ScopeNameError::Empty);
    }
    if s.len() > MAX_SCOPE_NAME_LEN {
        return Err(ScopeNameError::TooLong { len: s.len() });
    }
    for segment in s.split(':') {
        if segment.is_empty() {
            return Err(ScopeNameError::EmptySegment);
        }
        if let Some(ch) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_'))
        {
            return Err(ScopeNameError::InvalidChar { ch });
        }
    }
    Ok(())
}

/// One `[scopes] catalog` entry of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// The scope name; it must follow the [`ScopeName`] grammar.
    pub name: String,
    /// What the scope allows, shown to customers choosing scopes for a key. Empty keeps a
    /// built-in scope's own description when the entry redefines one.
    #[serde(default)]
    pub description: String,
    /// Whether publishable keys, which are meant to be exposed, may carry this scope.
    #[serde(default)]
    pub public: bool,
}

/// A set of catalog scopes as a fixed-width bitset: bit `i` is the catalog's `i`-th scope.
///
/// The fixed width keeps the set inline (no heap, cheap to clone into a cache entry) and
/// makes every operation a loop over [`MAX_SCOPES`]` / 64` words.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet {
    /// The bits, least significant first.
    words: [u64; WORDS],
}

impl ScopeSet {
    /// The set holding only catalog index `index`.
    fn single(index: usize) -> Self {
        let mut set = Self::default();
        set.insert(index);
        set
    }

    /// Whether catalog index `index` is in the set.
    fn has(&self, index: usize) -> bool {
        self.words[index / 64] & (1 << (index % 64)) != 0
    }

    /// Adds catalog index `index`.
    fn insert(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }

    /// Adds every member of `other` in place, so building sets does not copy.
    fn union_with(&mut self, other: &ScopeSet) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= b;
        }
    }

    /// The catalog indices in the set, ascending (which is catalog order).
    fn indices(&self) -> impl Iterator<Item = usize> {
        // The words are copied, so the iterator does not borrow the set.
        let words = self.words;
        words.into_iter().enumerate().flat_map(|(w, word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + bit)
            })
        })
    }

    /// Whether every scope of `required` is in this set: the "all of them" check of a route
    /// or of the verify API's `scopes`. An empty requirement is always met.
    pub fn contains_all(&self, required: &ScopeSet) -> bool {
        self.words
            .iter()
            .zip(required.words.iter())
            .fold(0, |missing, (have, need)| missing | (need & !have))
            == 0
    }

    /// Whether at least one scope of `wanted` is in this set: the verify API's
    /// `any_scopes`. An empty `wanted` is never met, since "one of nothing" cannot hold.
    pub fn contains_any(&self, wanted: &ScopeSet) -> bool {
        self.words
            .iter()
            .zip(wanted.words.iter())
            .any(|(have, want)| have & want != 0)
    }

    /// Whether this set is included in `other`, e.g. a new key's scopes in its creator's.
    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        other.contains_all(self)
    }

    /// The scopes in either set.
    pub fn union(&self, o: &ScopeSet) -> ScopeSet {
        let mut out = self.clone();
        out.union_with(o);
        out
    }

    /// The scopes in both sets, e.g. a publishable key's grants limited to public scopes.
    pub fn intersection(&self, o: &ScopeSet) -> ScopeSet {
        let mut out = self.clone();
        for (a, b) in out.words.iter_mut().zip(o.words.iter()) {
            *a &= b;
        }
        out
    }

    /// The scopes of this set missing from `o`: what a request needs and a key lacks,
    /// so an `insufficient_scope` message can name them.
    pub fn difference(&self, o: &ScopeSet) -> ScopeSet {
        let mut out = self.clone();
        for (a, b) in out.words.iter_mut().zip(o.words.iter()) {
            *a &= !b;
        }
        out
    }

    /// Whether the set holds no scope.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The number of scopes in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScopeSet")?;
        f.debug_set().entries(self.indices()).finish()
    }
}

/// Whether `a ⊆ b`: the escalation check before a key creates a key or an account grants
/// an application (the new scopes must be among the granting ones).
pub fn is_subset(a: &ScopeSet, b: &ScopeSet) -> bool {
    a.is_subset_of(b)
}

/// Scope names that are not in the catalog: the `invalid_scope` error (400), which must
/// name every offender so a client can fix its request in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidScopes {
    /// Each unknown name once, in the order first given.
    pub unknown: Vec<String>,
}

impl fmt::Display for InvalidScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = if self.unknown.len() == 1 {
            "scope"
        } else {
            "scopes"
        };
        write!(f, "unknown {noun}: ")?;
        for (i, name) in self.unknown.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if name.is_empty() {
                // An empty name would otherwise vanish from the message.
                f.write_str("\"\"")?;
            } else {
                f.write_str(name)?;
            }
        }
        Ok(())
    }
}

/// Why a `[scopes]` section cannot be turned into a catalog. Every variant names what to
/// fix, because the operator sees this at startup and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeConfigError {
    /// A catalog entry's name breaks the grammar.
    #[error("catalog scope {name:?} is not a valid scope name: {source}")]
    InvalidName {
        /// The name as configured.
        name: String,
        /// What is wrong with it.
        source: ScopeNameError,
    },
    /// A catalog entry is `*` or `prefix:*`, which are grants, not scopes.
    #[error(
        "catalog scope {name:?} is a wildcard; `*` and `prefix:*` are grants, not catalog scopes"
    )]
    WildcardInCatalog {
        /// The name as configured.
        name: String,
    },
    /// Two catalog entries have the same name (a built-in may be redefined once).
    #[error("catalog scope {name:?} is defined more than once")]
    DuplicateScope {
        /// The repeated name.
        name: String,
    },
    /// The catalog is larger than a [`ScopeSet`] can hold.
    #[error("the catalog has {count} scopes (built-ins included); at most {max} are supported")]
    TooManyScopes {
        /// How many scopes were configured, built-ins included.
        count: usize,
        /// [`MAX_SCOPES`].
        max: usize,
    },
    /// An alias name breaks the grammar.
    #[error("alias {alias:?} is not a valid scope name: {source}")]
    InvalidAliasName {
        /// The alias as configured.
        alias: String,
        /// What is wrong with it.
        source: ScopeNameError,
    },
    /// An alias member breaks the grammar (after removing a trailing `?`).
    #[error("alias {alias:?} has an invalid member {member:?}: {source}")]
    InvalidAliasMember {
        /// The alias that lists the member.
        alias: String,
        /// The member as configured.
        member: String,
        /// What is wrong with it.
        source: ScopeNameError,
    },
    /// An alias lists `*`, which would make it a second spelling of the super-scope and
    /// slip past `allow_super_scope = false`.
    #[error("alias {alias:?} lists `*`; grant `*` directly instead")]
    SuperScopeInAlias {
        /// The alias that lists `*`.
        alias: String,
    },
    /// A required (non-`?`) member is neither a catalog scope, an alias, nor a `prefix:*`
    /// matching some catalog scope.
    #[error("alias {alias:?} lists {member:?}, which is neither a catalog scope nor an alias (end it with `?` to make it optional)")]
    UnknownAliasMember {
        /// The alias that lists the member.
        alias: String,
        /// The member as configured.
        member: String,
    },
    /// Aliases refer to each other in a loop.
    #[error("alias cycle: {}", .cycle.join(" -> "))]
    AliasCycle {
        /// The aliases on the loop, the first repeated at the end (`a -> b -> a`).
        cycle: Vec<String>,
    },
    /// An alias grants nothing (no members, or only optional ones that are absent), so
    /// requiring it would require nothing: almost certainly a configuration mistake.
    #[error("alias {alias:?} expands to no catalog scope")]
    EmptyAlias {
        /// The empty alias.
        alias: String,
    },
}

/// What the catalog remembers about one unit scope.
#[derive(Clone, Debug)]
struct ScopeInfo {
    /// The scope name.
    name: String,
    /// What it allows.
    description: String,
    /// Whether publishable keys may carry it.
    public: bool,
}

/// The precomputed meaning of one name a key may be granted or a request may require.
#[derive(Clone, Debug)]
struct NameEntry {
    /// What granting the name gives: the unit, its alias expansion, or a prefix's scopes,
    /// always closed under "a unit that is also an alias brings its expansion".
    grant: ScopeSet,
    /// What requiring the name demands: the unit itself for a unit scope (even one that is
    /// also an alias), the whole expansion for an alias-only name, `None` for `prefix:*`.
    require: Option<ScopeSet>,
    /// Whether the name is a catalog (unit) scope.
    unit: bool,
    /// Whether the name is an alias (possibly also a unit scope).
    alias: bool,
}

/// The closed scope catalog of a deployment, with aliases and wildcards compiled.
#[derive(Clone, Debug)]
pub struct ScopeCatalog {
    /// The unit scopes in catalog order: built-ins first, then the configured entries.
    scopes: Vec<ScopeInfo>,
    /// Every grantable name (unit, alias, `prefix:*`) → its precomputed sets.
    lookup: HashMap<String, NameEntry>,
    /// Every catalog scope: what `*` grants.
    all: ScopeSet,
    /// The scopes marked `public = true`: all a publishable key may hold.
    public: ScopeSet,
    /// Whether `*` is a valid grant.
    allow_super_scope: bool,
}

/// A parsed alias member.
#[derive(Clone, Copy, Debug)]
enum Member<'a> {
    /// `*`.
    Super,
    /// `prefix:*`, kept whole because the lookup table is keyed that way.
    Prefix(&'a str),
    /// A unit scope or an alias.
    Name(&'a str),
}

/// Splits the optional `?` off an alias member and checks its grammar.
fn parse_member(member: &str) -> Result<(Member<'_>, bool), ScopeNameError> {
    let (body, optional) = match member.strip_suffix('?') {
        Some(body) => (body, true),
        None => (member, false),
    };
    if body == SUPER_SCOPE {
        return Ok((Member::Super, optional));
    }
    if let Some(prefix) = body.strip_suffix(":*") {
        validate_name(prefix)?;
        return Ok((Member::Prefix(body), optional));
    }
    validate_name(body)?;
    Ok((Member::Name(body), optional))
}

/// Expands aliases depth-first, remembering finished ones and the current path so a
/// loop is reported with its members in order.
struct AliasExpander<'a> {
    /// The configured aliases.
    aliases: &'a BTreeMap<String, Vec<String>>,
    /// Unit scope name → catalog index.
    index: &'a HashMap<String, usize>,
    /// `prefix:*` → the scopes it covers.
    prefixes: &'a HashMap<String, ScopeSet>,
    /// Aliases already expanded.
    done: HashMap<&'a str, ScopeSet>,
    /// Aliases being expanded, outermost first.
    path: Vec<&'a str>,
}

impl<'a> AliasExpander<'a> {
    /// The full grant of alias `name`: its own unit (when it is also a catalog scope) plus
    /// every member's grant.
    fn expand(
        &mut self,
        name: &'a str,
        members: &'a [String],
    ) -> Result<ScopeSet, ScopeConfigError> {
        if let Some(set) = self.done.get(name) {
            return Ok(set.clone());
        }
        if let Some(start) = self.path.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = self.path[start..].iter().map(|n| n.to_string()).collect();
            cycle.push(name.to_owned());
            return Err(ScopeConfigError::AliasCycle { cycle });
        }
        self.path.push(name);
        let own_unit = self.index.get(name).copied();
        let mut set = own_unit.map(ScopeSet::single).unwrap_or_default();
        for raw in members {
            let (member, optional) =
                parse_member(raw).map_err(|source| ScopeConfigError::InvalidAliasMember {
                    alias: name.to_owned(),
                    member: raw.clone(),
                    source,
                })?;
            let unknown = || ScopeConfigError::UnknownAliasMember {
                alias: name.to_owned(),
                member: raw.clone(),
            };
            match member {
                Member::Super => {
                    return Err(ScopeConfigError::SuperScopeInAlias {
                        alias: name.to_owned(),
                    })
                }
                Member::Prefix(pattern) => match self.prefixes.get(pattern) {
                    Some(covered) => set.union_with(covered),
                    None if optional => {}
                    None => return Err(unknown()),
                },
                // A name listing itself means its own unit scope, as in Falco's
                // `customers:write -> [customers:read, customers:write]`; it is not a loop.
                Member::Name(n) if n == name && own_unit.is_some() => {}
                Member::Name(n) => {
                    if let Some((key, nested)) = self.aliases.get_key_value(n) {
                        let nested = self.expand(key, nested)?;
                        set.union_with(&nested);
                    } else if let Some(&i) = self.index.get(n) {
                        set.insert(i);
                    } else if !optional {
                        return Err(unknown());
                    }
                }
            }
        }
        self.path.pop();
        if set.is_empty() {
            return Err(ScopeConfigError::EmptyAlias {
                alias: name.to_owned(),
            });
        }
        self.done.insert(name, set.clone());
        Ok(set)
    }
}

/// Grows each `(unit index, expansion)` pair until every expansion also holds the
/// expansions of the units it contains. A loop through `prefix:*` (an alias whose members
/// cover itself) is harmless here: the sets only grow, so this reaches a fixed point.
fn close_implications(mut implied: Vec<(usize, ScopeSet)>) -> Vec<(usize, ScopeSet)> {
    loop {
        let mut changed = false;
        for j in 0..implied.len() {
            let mut grown = implied[j].1.clone();
            for (i, expansion) in &implied {
                if grown.has(*i) {
                    grown.union_with(expansion);
                }
            }
            if grown != implied[j].1 {
                implied[j].1 = grown;
                changed = true;
            }
        }
        if !changed {
            return implied;
        }
    }
}

impl ScopeCatalog {
    /// Builds the catalog from the `[scopes]` configuration: the built-ins, then `entries`
    /// in order (an entry naming a built-in redefines its description and `public` flag),
    /// then `aliases` expanded once into bitsets.
    ///
    /// Alias members may be unit scopes, other aliases, or `prefix:*`; a trailing `?`
    /// makes a member optional (dropped when absent). An alias may share its name with a
    /// unit scope: granting the name then grants the unit plus the expansion, and an alias
    /// listing its own name means that unit. Such a unit brings its expansion however it is
    /// granted, including through `prefix:*`, so `prefix:*` means exactly "every catalog
    /// scope under `prefix`, each granted by name".
    pub fn build(
        entries: &[CatalogEntry],
        aliases: &BTreeMap<String, Vec<String>>,
        allow_super_scope: bool,
    ) -> Result<Self, ScopeConfigError> {
        let mut scopes: Vec<ScopeInfo> = BUILTIN_SCOPES
            .iter()
            .map(|(name, description)| ScopeInfo {
                name: (*name).to_owned(),
                description: (*description).to_owned(),
                public: false,
            })
            .collect();
        let mut redefined = [false; BUILTIN_SCOPES.len()];
        let mut positions: HashMap<String, usize> = scopes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        for entry in entries {
            let name = entry.name.as_str();
            if name == SUPER_SCOPE || name.ends_with(":*") {
                return Err(ScopeConfigError::WildcardInCatalog {
                    name: name.to_owned(),
                });
            }
            validate_name(name).map_err(|source| ScopeConfigError::InvalidName {
                name: name.to_owned(),
                source,
            })?;
            match positions.get(name) {
                Some(&i) if i < BUILTIN_SCOPES.len() && !redefined[i] => {
                    redefined[i] = true;
                    if !entry.description.is_empty() {
                        scopes[i].description = entry.description.clone();
                    }
                    scopes[i].public = entry.public;
                }
                Some(_) => {
                    return Err(ScopeConfigError::DuplicateScope {
                        name: name.to_owned(),
                    })
                }
                None => {
                    positions.insert(name.to_owned(), scopes.len());
                    scopes.push(ScopeInfo {
                        name: name.to_owned(),
                        description: entry.description.clone(),
                        public: entry.public,
                    });
                }
            }
        }
        if scopes.len() > MAX_SCOPES {
            return Err(ScopeConfigError::TooManyScopes {
                count: scopes.len(),
                max: MAX_SCOPES,
            });
        }

        let mut all = ScopeSet::default();
        let mut public = ScopeSet::default();
        let mut prefixes: HashMap<String, ScopeSet> = HashMap::new();
        for (i, scope) in scopes.iter().enumerate() {
            all.insert(i);
            if scope.public {
                public.insert(i);
            }
            // `a:b:c` is covered by `a:*` and `a:b:*`.
            for (pos, _) in scope.name.match_indices(':') {
                let pattern = format!("{}:*", &scope.name[..pos]);
                prefixes.entry(pattern).or_default().insert(i);
            }
        }

        // Check every alias name and member first, so a grammar error is reported as such
        // even when the alias also sits on a cycle.
        for (alias, members) in aliases {
            validate_name(alias).map_err(|source| ScopeConfigError::InvalidAliasName {
                alias: alias.clone(),
                source,
            })?;
            for member in members {
                parse_member(member).map_err(|source| ScopeConfigError::InvalidAliasMember {
                    alias: alias.clone(),
                    member: member.clone(),
                    source,
                })?;
            }
        }
        let mut expander = AliasExpander {
            aliases,
            index: &positions,
            prefixes: &prefixes,
            done: HashMap::new(),
            path: Vec::new(),
        };
        for (alias, members) in aliases {
            expander.expand(alias, members)?;
        }
        let mut expansions = expander.done;

        // Holding a unit scope that is also an alias implies its expansion, however the
        // unit was obtained (by name, through another alias, or through `prefix:*`). Closing
        // every grant set under that rule makes a compiled set self-describing: compiling
        // its unit names again gives the same set, so listing a key's effective scopes and
        // granting them to a new key can never widen them.
        let implied = close_implications(
            scopes
                .iter()
                .enumerate()
                .filter_map(|(i, s)| expansions.get(s.name.as_str()).map(|e| (i, e.clone())))
                .collect(),
        );
        let close = |set: ScopeSet| {
            let mut closed = set.clone();
            for (i, expansion) in &implied {
                if set.has(*i) {
                    closed.union_with(expansion);
                }
            }
            closed
        };

        let mut lookup: HashMap<String, NameEntry> = HashMap::new();
        for (i, scope) in scopes.iter().enumerate() {
            let unit = ScopeSet::single(i);
            let alias = expansions.remove(scope.name.as_str()).is_some();
            lookup.insert(
                scope.name.clone(),
                NameEntry {
                    grant: close(unit.clone()),
                    require: Some(unit),
                    unit: true,
                    alias,
                },
            );
        }
        for (name, expansion) in expansions {
            let expansion = close(expansion);
            lookup.insert(
                name.to_owned(),
                NameEntry {
                    grant: expansion.clone(),
                    require: Some(expansion),
                    unit: false,
                    alias: true,
                },
            );
        }
        for (pattern, covered) in prefixes {
            lookup.insert(
                pattern,
                NameEntry {
                    grant: close(covered),
                    require: None,
                    unit: false,
                    alias: false,
                },
            );
        }

        Ok(Self {
            scopes,
            lookup,
            all,
            public,
            allow_super_scope,
        })
    }

    /// Turns a key's stored grants (unit scopes, aliases, `*`, `prefix:*`) into its
    /// effective set. Fails naming every grant the catalog does not know, which is the
    /// `invalid_scope` check when a key is created or updated.
    pub fn compile<S: AsRef<str>>(&self, grants: &[S]) -> Result<ScopeSet, InvalidScopes> {
        self.union_of(grants, |name| {
            if name == SUPER_SCOPE {
                return self.allow_super_scope.then_some(&self.all);
            }
            self.lookup.get(name).map(|e| &e.grant)
        })
    }

    /// Turns the names a request needs (a route's `scopes`, the verify API's `scopes`)
    /// into a set to test with [`ScopeSet::contains_all`]. A unit scope requires itself
    /// (even when it is also an alias); an alias-only name requires its whole expansion.
    /// Wildcards are grants, not requirements, and count as unknown here.
    pub fn required<S: AsRef<str>>(&self, names: &[S]) -> Result<ScopeSet, InvalidScopes> {
        self.union_of(names, |name| self.requirement_of(name))
    }

    /// Unions the sets `find` gives for `names`, collecting every name it does not know.
    fn union_of<'s, S: AsRef<str>>(
        &'s self,
        names: &[S],
        find: impl Fn(&str) -> Option<&'s ScopeSet>,
    ) -> Result<ScopeSet, InvalidScopes> {
        let mut set = ScopeSet::default();
        let mut unknown: Vec<String> = Vec::new();
        for name in names {
            let name = name.as_ref();
            match find(name) {
                Some(found) => set.union_with(found),
                None => {
                    if !unknown.iter().any(|u| u == name) {
                        unknown.push(name.to_owned());
                    }
                }
            }
        }
        if unknown.is_empty() {
            Ok(set)
        } else {
            Err(InvalidScopes { unknown })
        }
    }

    /// What granting the single name `name` gives, or `None` when it is not a valid grant.
    pub fn grant_of(&self, name: &str) -> Option<&ScopeSet> {
        if name == SUPER_SCOPE {
            return self.allow_super_scope.then_some(&self.all);
        }
        self.lookup.get(name).map(|e| &e.grant)
    }

    /// What requiring the single name `name` demands (see [`ScopeCatalog::required`]),
    /// without allocating, or `None` when it cannot be required. Routes use it for scope
    /// names built from path captures.
    pub fn requirement_of(&self, name: &str) -> Option<&ScopeSet> {
        self.lookup.get(name).and_then(|e| e.require.as_ref())
    }

    /// The catalog scopes marked `public = true`. A publishable key may hold only these:
    /// the caller intersects its grants with this set, or rejects the extra ones.
    pub fn public_scopes(&self) -> &ScopeSet {
        &self.public
    }

    /// Every catalog scope: what `*` grants, and what a full-access global key holds.
    pub fn all_scopes(&self) -> &ScopeSet {
        &self.all
    }

    /// Whether `*` is accepted as a grant (`allow_super_scope`).
    pub fn allows_super_scope(&self) -> bool {
        self.allow_super_scope
    }

    /// The unit scope names in `set`, in catalog order, for responses and identity headers.
    pub fn names(&self, set: &ScopeSet) -> Vec<&str> {
        self.iter_names(set).collect()
    }

    /// Like [`ScopeCatalog::names`] without collecting, for writing straight into a buffer.
    pub fn iter_names<'a>(&'a self, set: &ScopeSet) -> impl Iterator<Item = &'a str> + 'a {
        set.indices()
            .filter_map(|i| self.scopes.get(i).map(|s| s.name.as_str()))
    }

    /// Whether `name` is a unit scope of the catalog (aliases and wildcards are not).
    pub fn contains(&self, name: &str) -> bool {
        self.lookup.get(name).is_some_and(|e| e.unit)
    }

    /// Whether `name` is an alias (it may also be a unit scope).
    pub fn is_alias(&self, name: &str) -> bool {
        self.lookup.get(name).is_some_and(|e| e.alias)
    }

    /// The number of unit scopes, built-ins included.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// Whether the catalog has no scope; never true, since the built-ins are always there,
    /// but provided alongside [`ScopeCatalog::len`].
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// The unit scopes as `(name, description, public)`, in catalog order, for listing
    /// them to customers and in `keywarden config check`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, bool)> + '_ {
        self.scopes
            .iter()
            .map(|s| (s.name.as_str(), s.description.as_str(), s.public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a case expects: unit names in catalog order, or an error message.
    type Expected<'a> = Result<&'a [&'a str], &'a str>;

    /// Names to compile or require, and what that should give.
    type Case<'a> = (&'a [&'a str], Expected<'a>);

    /// Aliases as `(alias, members)`.
    type Aliases<'a> = &'a [(&'a str, &'a [&'a str])];

    /// Builds a catalog from `"name"` / `"name public"` entries and `(alias, members)`.
    fn build(
        entries: &[&str],
        aliases: Aliases,
        allow_super_scope: bool,
    ) -> Result<ScopeCatalog, ScopeConfigError> {
        let entries: Vec<CatalogEntry> = entries
            .iter()
            .map(|e| {
                let (name, public) = match e.strip_suffix(" public") {
                    Some(name) => (name, true),
                    None => (*e, false),
                };
                CatalogEntry {
                    name: name.to_owned(),
                    description: format!("Allows {name}."),
                    public,
                }
            })
            .collect();
        let aliases: BTreeMap<String, Vec<String>> = aliases
            .iter()
            .map(|(a, m)| (a.to_string(), m.iter().map(|s| s.to_string()).collect()))
            .collect();
        ScopeCatalog::build(&entries, &aliases, allow_super_scope)
    }

    /// The catalog most cases use: nested aliases, a name that is both a unit scope and an
    /// alias, optional members and a prefix member.
    fn sample(allow_super_scope: bool) -> ScopeCatalog {
        build(
            &[
                "invoices:read public",
                "invoices:write",
                "invoices:delete",
                "invoices:attachments:read",
                "invoices:attachments:write",
                "customers:read",
                "customers:write",
                "reports:read",
            ],
            &[
                ("billing", &["invoices:write", "customers:read"]),
                (
                    "invoices:write",
                    &[
                        "invoices:read",
                        "invoices:write",
                        "invoices:attachments:write",
                        "invoices:send?",
                    ],
                ),
                (
                    "invoices:attachments:write",
                    &["invoices:attachments:read", "invoices:attachments:write"],
                ),
                (
                    "ro",
                    &["invoices:read", "customers:read", "reports:read", "gone:x?"],
                ),
                ("admin", &["billing", "ro", "api_keys:*", "gone:*?"]),
            ],
            allow_super_scope,
        )
        .unwrap()
    }

    /// Compiles `grants` (or requires them, with `required = true`) and compares the
    /// effective unit names in catalog order, or the error message.
    fn check(cat: &ScopeCatalog, required: bool, grants: &[&str], expected: Expected) {
        let got = if required {
            cat.required(grants)
        } else {
            cat.compile(grants)
        };
        match (got, expected) {
            (Ok(set), Ok(names)) => assert_eq!(cat.names(&set), names, "grants {grants:?}"),
            (Err(e), Err(message)) => assert_eq!(e.to_string(), message, "grants {grants:?}"),
            (got, expected) => panic!("grants {grants:?}: got {got:?}, expected {expected:?}"),
        }
    }

    const INVOICES_WRITE: &[&str] = &[
        "invoices:read",
        "invoices:write",
        "invoices:attachments:read",
        "invoices:attachments:write",
    ];

    #[test]
    fn scope_name_grammar() {
        use ScopeNameError::*;
        let long = "a".repeat(MAX_SCOPE_NAME_LEN);
        let too_long = "a".repeat(MAX_SCOPE_NAME_LEN + 1);
        let cases: &[(&str, Result<(), ScopeNameError>)] = &[
            ("a", Ok(())),
            ("invoices:attachments:read", Ok(())),
            ("api_keys:write", Ok(())),
            ("v2:x9_y", Ok(())),
            (&long, Ok(())),
            (&too_long, Err(TooLong { len: 129 })),
            ("", Err(Empty)),
            ("a::b", Err(EmptySegment)),
            (":a", Err(EmptySegment)),
            ("a:", Err(EmptySegment)),
            ("Invoices:read", Err(InvalidChar { ch: 'I' })),
            ("invoices-read", Err(InvalidChar { ch: '-' })),
            ("invoices read", Err(InvalidChar { ch: ' ' })),
            ("invoices:*", Err(InvalidChar { ch: '*' })),
            ("invoices?", Err(InvalidChar { ch: '?' })),
            ("factura:año", Err(InvalidChar { ch: 'ñ' })),
        ];
        for (input, expected) in cases {
            let got = ScopeName::parse(input).map(|n| assert_eq!(n.as_str(), *input));
            assert_eq!(&got, expected, "{input:?}");
        }
        let json: Result<ScopeName, _> = serde_json::from_str("\"Bad\"");
        assert!(json.is_err(), "deserializing checks the grammar too");
    }

    #[test]
    fn builtins_are_always_present_and_redefinable() {
        let empty = build(&[], &[], true).unwrap();
        let names: Vec<&str> = empty.entries().map(|(n, _, _)| n).collect();
        let builtins: Vec<&str> = BUILTIN_SCOPES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, builtins);
        assert_eq!(empty.len(), 9);
        assert!(!empty.is_empty());
        assert!(empty
            .entries()
            .all(|(_, d, public)| !d.is_empty() && !public));
        check(&empty, false, &["*"], Ok(&builtins));
        check(
            &empty,
            false,
            &["api_keys:*"],
            Ok(&["api_keys:read", "api_keys:write", "api_keys:delete"]),
        );

        let entries = [
            CatalogEntry {
                name: "usage:read".into(),
                description: "Usage, quotas.".into(),
                public: true,
            },
            CatalogEntry {
                name: "account:read".into(),
                description: String::new(),
                public: false,
            },
        ];
        let cat = ScopeCatalog::build(&entries, &BTreeMap::new(), true).unwrap();
        assert_eq!(cat.len(), 9, "redefining adds nothing");
        let usage = cat.entries().find(|(n, _, _)| *n == "usage:read").unwrap();
        assert_eq!(usage, ("usage:read", "Usage, quotas.", true));
        let account = cat.entries().next().unwrap();
        assert_eq!(
            account,
            ("account:read", BUILTIN_SCOPES[0].1, false),
            "an empty description keeps the built-in one"
        );
        assert_eq!(cat.names(cat.public_scopes()), ["usage:read"]);
    }

    #[test]
    fn compile_grants() {
        let cat = sample(true);
        let cases: &[Case] = &[
            (&[], Ok(&[])),
            (&["invoices:read"], Ok(&["invoices:read"])),
            (
                &["reports:read", "customers:read"],
                Ok(&["customers:read", "reports:read"]),
            ),
            (
                &["customers:read", "customers:read"],
                Ok(&["customers:read"]),
            ),
            // A unit scope that is also an alias grants the unit plus the expansion; the
            // optional `invoices:send?` is absent and silently dropped.
            (&["invoices:write"], Ok(INVOICES_WRITE)),
            (
                &["invoices:attachments:write"],
                Ok(&["invoices:attachments:read", "invoices:attachments:write"]),
            ),
            // Nested: billing -> invoices:write -> invoices:attachments:write.
            (
                &["billing"],
                Ok(&[
                    "invoices:read",
                    "invoices:write",
                    "invoices:attachments:read",
                    "invoices:attachments:write",
                    "customers:read",
                ]),
            ),
            (
                &["admin"],
                Ok(&[
                    "api_keys:read",
                    "api_keys:write",
                    "api_keys:delete",
                    "invoices:read",
                    "invoices:write",
                    "invoices:attachments:read",
                    "invoices:attachments:write",
                    "customers:read",
                    "reports:read",
                ]),
            ),
            (
                &["ro", "billing"],
                Ok(&[
                    "invoices:read",
                    "invoices:write",
                    "invoices:attachments:read",
                    "invoices:attachments:write",
                    "customers:read",
                    "reports:read",
                ]),
            ),
            // Wildcards.
            (
                &["invoices:*"],
                Ok(&[
                    "invoices:read",
                    "invoices:write",
                    "invoices:delete",
                    "invoices:attachments:read",
                    "invoices:attachments:write",
                ]),
            ),
            (
                &["invoices:attachments:*"],
                Ok(&["invoices:attachments:read", "invoices:attachments:write"]),
            ),
            (
                &["account:*", "usage:*"],
                Ok(&["account:read", "account:write", "usage:read"]),
            ),
            (&["nope:*"], Err("unknown scope: nope:*")),
            (&["invoices:read:*"], Err("unknown scope: invoices:read:*")),
            (&["inv*"], Err("unknown scope: inv*")),
            (&[":*"], Err("unknown scope: :*")),
            // Unknown names: every offender is named once, in order.
            (&["nope"], Err("unknown scope: nope")),
            (
                &["foo:bar", "invoices:read", "baz", "foo:bar"],
                Err("unknown scopes: foo:bar, baz"),
            ),
            (&["Invoices:read"], Err("unknown scope: Invoices:read")),
            (&["invoices:send"], Err("unknown scope: invoices:send")),
            (&["invoices:send?"], Err("unknown scope: invoices:send?")),
            (&["invoices:read?"], Err("unknown scope: invoices:read?")),
            (&["gone:x"], Err("unknown scope: gone:x")),
            (&[""], Err("unknown scope: \"\"")),
            (&[" invoices:read"], Err("unknown scope:  invoices:read")),
        ];
        for (grants, expected) in cases {
            check(&cat, false, grants, *expected);
        }
    }

    #[test]
    fn super_scope_on_and_off() {
        let full = sample(true);
        let all: Vec<&str> = full.entries().map(|(n, _, _)| n).collect();
        let cases: &[(bool, &[&str], Expected)] = &[
            (true, &["*"], Ok(&all)),
            (true, &["*", "invoices:read"], Ok(&all)),
            (false, &["*"], Err("unknown scope: *")),
            (false, &["*", "nope"], Err("unknown scopes: *, nope")),
            (
                false,
                &["invoices:attachments:*"],
                Ok(&["invoices:attachments:read", "invoices:attachments:write"]),
            ),
            (
                false,
                &["admin"],
                Ok(&[
                    "api_keys:read",
                    "api_keys:write",
                    "api_keys:delete",
                    "invoices:read",
                    "invoices:write",
                    "invoices:attachments:read",
                    "invoices:attachments:write",
                    "customers:read",
                    "reports:read",
                ]),
            ),
        ];
        for (allow, grants, expected) in cases {
            let cat = sample(*allow);
            assert_eq!(cat.allows_super_scope(), *allow);
            check(&cat, false, grants, *expected);
        }
        assert_eq!(sample(true).grant_of("*"), Some(sample(true).all_scopes()));
        assert_eq!(sample(false).grant_of("*"), None);
    }

    #[test]
    fn required_names() {
        let cat = sample(true);
        let cases: &[Case] = &[
            (&[], Ok(&[])),
            (&["invoices:read"], Ok(&["invoices:read"])),
            // A unit scope that is also an alias requires only the unit.
            (&["invoices:write"], Ok(&["invoices:write"])),
            (
                &["invoices:attachments:write"],
                Ok(&["invoices:attachments:write"]),
            ),
            // An alias-only name requires its whole expansion.
            (
                &["billing"],
                Ok(&[
                    "invoices:read",
                    "invoices:write",
                    "invoices:attachments:read",
                    "invoices:attachments:write",
                    "customers:read",
                ]),
            ),
            (
                &["ro", "usage:read"],
                Ok(&[
                    "usage:read",
                    "invoices:read",
                    "customers:read",
                    "reports:read",
                ]),
            ),
            // Wildcards are grants, never requirements.
            (&["*"], Err("unknown scope: *")),
            (&["invoices:*"], Err("unknown scope: invoices:*")),
            (
                &["nope", "invoices:read", "zip"],
                Err("unknown scopes: nope, zip"),
            ),
        ];
        for (names, expected) in cases {
            check(&cat, true, names, *expected);
        }
    }

    #[test]
    fn checks_between_grants_and_requirements() {
        let cat = sample(true);
        let grant = |g: &[&str]| cat.compile(g).unwrap();
        let need = |n: &[&str]| cat.required(n).unwrap();
        // (key grants, required, contains_all, contains_any)
        let cases: &[(&[&str], &[&str], bool, bool)] = &[
            (&["invoices:read"], &["invoices:read"], true, true),
            (&["invoices:read"], &["invoices:write"], false, false),
            (
                &["invoices:write"],
                &["invoices:read", "invoices:attachments:read"],
                true,
                true,
            ),
            (
                &["invoices:read"],
                &["invoices:read", "customers:read"],
                false,
                true,
            ),
            (&["billing"], &["billing"], true, true),
            (&["invoices:write"], &["billing"], false, true),
            (&["*"], &["billing", "usage:read"], true, true),
            (&["invoices:*"], &["invoices:delete"], true, true),
            (&[], &["usage:read"], false, false),
            (&["usage:read"], &[], true, false),
            (&[], &[], true, false),
        ];
        for (grants, required, all, any) in cases {
            let (g, r) = (grant(grants), need(required));
            assert_eq!(g.contains_all(&r), *all, "{grants:?} all of {required:?}");
            assert_eq!(g.contains_any(&r), *any, "{grants:?} any of {required:?}");
            assert_eq!(r.is_subset_of(&g), *all, "{required:?} ⊆ {grants:?}");
            assert_eq!(is_subset(&r, &g), *all);
        }
        let missing = need(&["billing"]).difference(&grant(&["invoices:write"]));
        assert_eq!(cat.names(&missing), ["customers:read"]);
    }

    #[test]
    fn subset_for_escalation_checks() {
        let cat = sample(true);
        let set = |g: &[&str]| cat.compile(g).unwrap();
        // (a, b, a ⊆ b)
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&[], &[], true),
            (&[], &["invoices:read"], true),
            (&["invoices:read"], &["invoices:write"], true),
            (&["invoices:write"], &["invoices:read"], false),
            (&["invoices:write"], &["billing"], true),
            (&["billing"], &["admin"], true),
            (&["admin"], &["billing"], false),
            (&["admin"], &["*"], true),
            (&["*"], &["admin"], false),
            (
                &["invoices:attachments:*"],
                &["invoices:attachments:write"],
                true,
            ),
            (&["invoices:*"], &["invoices:write"], false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(is_subset(&set(a), &set(b)), *expected, "{a:?} ⊆ {b:?}");
        }
    }

    #[test]
    fn public_scopes_for_publishable_keys() {
        let cat = sample(true);
        assert_eq!(cat.names(cat.public_scopes()), ["invoices:read"]);
        let key = cat.compile(&["invoices:write"]).unwrap();
        let limited = key.intersection(cat.public_scopes());
        assert_eq!(cat.names(&limited), ["invoices:read"]);
        assert!(
            !key.is_subset_of(cat.public_scopes()),
            "a publishable key may not hold it as is"
        );
    }

    #[test]
    fn lookups() {
        let cat = sample(true);
        // (name, contains, is_alias, grantable, requirable)
        let cases: &[(&str, bool, bool, bool, bool)] = &[
            ("invoices:read", true, false, true, true),
            ("invoices:write", true, true, true, true),
            ("billing", false, true, true, true),
            ("account:read", true, false, true, true),
            ("invoices:*", false, false, true, false),
            ("*", false, false, true, false),
            ("invoices:send", false, false, false, false),
            ("nope", false, false, false, false),
        ];
        for (name, contains, alias, grantable, requirable) in cases {
            assert_eq!(cat.contains(name), *contains, "contains {name}");
            assert_eq!(cat.is_alias(name), *alias, "is_alias {name}");
            assert_eq!(cat.grant_of(name).is_some(), *grantable, "grant_of {name}");
            assert_eq!(
                cat.requirement_of(name).is_some(),
                *requirable,
                "requirement_of {name}"
            );
        }
        assert_eq!(cat.len(), 17);
        let set = cat.compile(&["billing"]).unwrap();
        assert_eq!(set.len(), 5);
        assert!(!set.is_empty());
        assert!(ScopeSet::default().is_empty());
        assert_eq!(cat.iter_names(&set).count(), 5);
        assert_eq!(
            format!(
                "{:?}",
                cat.compile(&["account:write", "usage:read"]).unwrap()
            ),
            "ScopeSet{1, 5}"
        );
    }

    #[test]
    fn a_unit_that_is_an_alias_brings_its_expansion_however_granted() {
        let cat = build(
            &["x:a", "x:b", "y:c", "z:d"],
            &[
                ("x:a", &["x:a", "y:c"]),
                ("z:d", &["x:*"]),
                ("w", &["x:b", "x:a?"]),
            ],
            true,
        )
        .unwrap();
        let cases: &[Case] = &[
            (&["x:a"], Ok(&["x:a", "y:c"])),
            (&["x:*"], Ok(&["x:a", "x:b", "y:c"])),
            (&["w"], Ok(&["x:a", "x:b", "y:c"])),
            // `z:d` lists `x:*`, which brings `x:a` and therefore `x:a`'s expansion.
            (&["z:d"], Ok(&["x:a", "x:b", "y:c", "z:d"])),
            (&["z:*"], Ok(&["x:a", "x:b", "y:c", "z:d"])),
        ];
        for (grants, expected) in cases {
            check(&cat, false, grants, *expected);
        }
        check(&cat, true, &["x:a", "z:d"], Ok(&["x:a", "z:d"]));
        // An alias whose prefix member covers the alias's own unit is not a cycle.
        let looped = build(&["g:a", "g:b"], &[("g:a", &["g:*"])], true).unwrap();
        check(&looped, false, &["g:a"], Ok(&["g:a", "g:b"]));
    }

    #[test]
    fn build_errors() {
        let many: Vec<String> = (0..MAX_SCOPES - BUILTIN_SCOPES.len() + 1)
            .map(|i| format!("s{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let fits = &many[1..];
        assert_eq!(build(fits, &[], true).unwrap().len(), MAX_SCOPES);
        let cases: &[(&[&str], Aliases, &str)] = &[
            (&["a"], &[("x", &["y"]), ("y", &["x"])], "alias cycle: x -> y -> x"),
            (&[], &[("x", &["x"])], "alias cycle: x -> x"),
            (&[], &[("a", &["b"]), ("b", &["c"]), ("c", &["a"])], "alias cycle: a -> b -> c -> a"),
            (&["a"], &[("k", &["a", "m"]), ("m", &["n"]), ("n", &["m"])], "alias cycle: m -> n -> m"),
            (&["a"], &[("x", &["y?"]), ("y", &["x"])], "alias cycle: x -> y -> x"),
            // A name that is both a unit and an alias may list itself, but not loop back
            // to itself through another alias.
            (&["x", "y"], &[("x", &["y"]), ("y", &["x"])], "alias cycle: x -> y -> x"),
            (&["a"], &[("x", &["a", "nope"])], "alias \"x\" lists \"nope\", which is neither a catalog scope nor an alias (end it with `?` to make it optional)"),
            (&["a"], &[("x", &["a", "nope:*"])], "alias \"x\" lists \"nope:*\""),
            (&["a"], &[("x", &["a", "*"])], "alias \"x\" lists `*`; grant `*` directly instead"),
            (&["a"], &[("x", &[])], "alias \"x\" expands to no catalog scope"),
            (&["a"], &[("x", &["gone?", "gone:*?"])], "alias \"x\" expands to no catalog scope"),
            (&["a"], &[("X", &["a"])], "alias \"X\" is not a valid scope name: scope name contains 'X'"),
            (&["a"], &[("x:*", &["a"])], "alias \"x:*\" is not a valid scope name"),
            (&["a"], &[("x", &["a b"])], "alias \"x\" has an invalid member \"a b\": scope name contains ' '"),
            (&["a"], &[("x", &["a??"])], "alias \"x\" has an invalid member \"a??\""),
            (&["*"], &[], "catalog scope \"*\" is a wildcard"),
            (&["invoices:*"], &[], "catalog scope \"invoices:*\" is a wildcard"),
            (&["Invoices"], &[], "catalog scope \"Invoices\" is not a valid scope name: scope name contains 'I'"),
            (&["a::b"], &[], "catalog scope \"a::b\" is not a valid scope name: scope name has an empty segment"),
            (&["a", "b", "a"], &[], "catalog scope \"a\" is defined more than once"),
            (&["usage:read", "usage:read"], &[], "catalog scope \"usage:read\" is defined more than once"),
            (&many, &[], "the catalog has 513 scopes (built-ins included); at most 512 are supported"),
        ];
        for (entries, aliases, message) in cases {
            let err = build(entries, aliases, true).expect_err(message);
            assert!(
                err.to_string().starts_with(message),
                "got {err}, expected {message}"
            );
        }
        let ok: &[(&[&str], Aliases)] = &[
            (&["a"], &[("a", &["a"])]),
            (&["a", "b"], &[("a", &["a", "b"]), ("b", &["b"])]),
            (&["a"], &[("x", &["a", "gone?", "gone:*?"])]),
            (&["a:b"], &[("x", &["a:*"])]),
        ];
        for (entries, aliases) in ok {
            assert!(
                build(entries, aliases, true).is_ok(),
                "{entries:?} {aliases:?}"
            );
        }
    }
}
