//! Route rules (`docs/concepts.md#scopes-and-routes`, `[[routes]]` in `docs/configuration.md`): which scopes a request needs, decided from
//! its method and path, for forward-auth and the gateway.
//!
//! The rules are compiled once by [`RouteTable::compile`]: path globs are split into
//! segments, methods upper-cased, and every static scope checked against the catalog and
//! turned into a [`ScopeSet`]. [`RouteTable::resolve`] then walks the routes in order
//! (first match wins) without allocating, except to hand back the matched route's scope
//! names, and to build a scope name from a path capture for `method_scopes` templates.
//!
//! A request path is first brought to one canonical form by [`canonical_path`], and only
//! that form is matched — and, in gateway mode, forwarded — so the path that is decided
//! and the path the upstream serves are the same string (`docs/routes.md`):
//! - escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded and other
//!   escapes written with upper-case hex, so `/%61dmin` is `/admin`;
//! - empty segments are dropped (`//` is `/`, as nginx's `merge_slashes` does), then `.`
//!   and `..` segments resolved, encoded or not, so `/public/%2e%2e/admin` is `/admin`;
//! - a path servers could read in different ways is refused rather than guessed at
//!   ([`PathError`]): a `;` (path parameters, which Tomcat, Jetty and Spring strip before
//!   routing), an encoded `/`, `\` or `;`, a raw `\`, a malformed escape, a control
//!   character, raw non-ASCII, an escape that is not UTF-8 or that stands for a look-alike
//!   of `.`, `/` or `\` (fullwidth forms and the like), or a `..` above the root;
//! - the query string and fragment are not part of the path.
//!
//! Literal segments then match ignoring ASCII case, as case-insensitive upstreams route
//! them, unless the table is made [`case_sensitive`](RouteTable::case_sensitive): a rule
//! is never weaker than the upstream it fronts.
//!
//! A `HEAD` request is matched like a `GET` when a route lists `GET` but not `HEAD` (and
//! uses the `GET` entry of `method_scopes`), because servers answer `HEAD` from the `GET`
//! handler: otherwise `HEAD` would reveal what `GET` protects.

use crate::scopes::{InvalidScopes, ScopeCatalog, ScopeName, ScopeSet};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// One `[[routes]]` entry of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The HTTP methods the rule applies to, case-insensitive; empty (or `"*"`) means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The path glob: `*` is one segment, `**` (last only) the rest, `{name}` captures one.
    pub path: String,
    /// Scopes that are all required, like a route-level `scopes` check of the verify API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Method → scope-name template (`{name}` is replaced by that path capture); `*` is the
    /// fallback for methods not listed. A method with no entry is denied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub method_scopes: BTreeMap<String, String>,
    /// `"none"` makes the route public: no key is needed at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// What a request that matches no route needs (`default_route`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultRoute {
    /// Any valid key, with no particular scope: the friendly default for simple setups.
    #[default]
    Authenticated,
    /// Nothing gets through: for deployments that list every allowed route.
    Deny,
}

/// What a request needs, as decided by the route table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// The route has `auth = "none"`: no key is needed.
    Public,
    /// A valid key is needed, with no particular scope.
    Authenticated,
    /// No request may pass: `default_route = "deny"`, a method with no `method_scopes`
    /// entry, or a path servers could read in different ways.
    Deny,
    /// A valid key holding every scope of `set` is needed.
    Require {
        /// The required scopes, ready for [`ScopeSet::contains_all`].
        set: ScopeSet,
        /// The names as configured (or as built from the path), for error messages.
        names: Vec<String>,
    },
    /// A `method_scopes` template produced a name that is not in the catalog. No key can
    /// hold it, so the caller answers `insufficient_scope`.
    Unsatisfiable {
        /// The scope names that were built.
        names: Vec<String>,
    },
}

/// Why a `[[routes]]` entry cannot be compiled, naming the route and the field so the
/// operator can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routes[{index}].{field}: {kind}")]
pub struct RouteError {
    /// The route's position in `[[routes]]`, counting from 0.
    pub index: usize,
    /// The offending field, e.g. `path` or `method_scopes.GET`.
    pub field: String,
    /// What is wrong.
    pub kind: RouteErrorKind,
}

/// What is wrong with a route field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteErrorKind {
    /// The path glob does not start with `/`.
    #[error("the path must start with '/'")]
    PathNotAbsolute,
    /// The path glob holds a character that never matches a decoded path segment.
    #[error(
        "the path may not contain {ch:?} (query strings, fragments and escapes are never matched)"
    )]
    PathInvalidChar {
        /// The offending character.
        ch: char,
    },
    /// `**` is not the last segment.
    #[error("`**` may only be the last segment")]
    DoubleStarNotLast,
    /// A segment mixes a wildcard or capture with other text, or is `.` or `..`.
    #[error("segment {segment:?} is invalid: `*`, `**` and `{{name}}` must be whole segments, and `.` or `..` never match")]
    InvalidSegment {
        /// The segment as written.
        segment: String,
    },
    /// A capture name is not an identifier.
    #[error("capture name {name:?} must be letters, digits and '_', not starting with a digit")]
    InvalidCaptureName {
        /// The name between the braces.
        name: String,
    },
    /// Two captures share a name, so a template could not tell them apart.
    #[error("capture {{{name}}} appears twice")]
    DuplicateCapture {
        /// The repeated name.
        name: String,
    },
    /// A method is not an HTTP token.
    #[error("{method:?} is not an HTTP method")]
    InvalidMethod {
        /// The method as written.
        method: String,
    },
    /// A method appears twice in `method_scopes`, differing only in case.
    #[error("method {method} has more than one entry")]
    DuplicateMethod {
        /// The upper-cased method.
        method: String,
    },
    /// More than one of `scopes`, `method_scopes` and `auth` is set.
    #[error("set only one of `scopes`, `method_scopes` and `auth = \"none\"`")]
    ConflictingRequirements,
    /// `auth` has a value other than `none`.
    #[error("{value:?} is not supported; the only value is \"none\"")]
    InvalidAuth {
        /// The value as written.
        value: String,
    },
    /// Static scope names that are not in the catalog.
    #[error("{0}")]
    UnknownScopes(#[from] InvalidScopes),
    /// A template refers to a capture the path does not have.
    #[error("the template uses {{{name}}}, which the path does not capture")]
    UnknownCapture {
        /// The capture name used.
        name: String,
    },
    /// A template cannot produce a valid scope name (bad characters, wildcards, braces).
    #[error("template {template:?} cannot produce a scope name: {reason}")]
    InvalidTemplate {
        /// The template as written.
        template: String,
        /// Why not.
        reason: String,
    },
    /// A method listed in `methods` has no `method_scopes` entry and there is no `*`
    /// fallback, so the route would deny it: almost certainly an oversight.
    #[error("method {method} is listed in `methods` but has no `method_scopes` entry (add one, or a `*` fallback)")]
    MethodWithoutScope {
        /// The upper-cased method.
        method: String,
    },
    /// A `method_scopes` entry names a method that `methods` excludes, so it never applies.
    #[error("method {method} is not in `methods`, so this entry never applies")]
    UnreachableMethodScope {
        /// The upper-cased method.
        method: String,
    },
}

/// One compiled path segment.
#[derive(Clone, Debug)]
enum Segment {
    /// Matches exactly this (percent-decoded) text.
    Literal(String),
    /// `*` or `{name}`: any one non-empty segment. Captures are read back by position.
    Any,
}

/// The scopes a route (or one of its methods) requires, precompiled.
#[derive(Clone, Debug)]
struct Requirement {
    /// The required set.
    set: ScopeSet,
    /// The names as configured.
    names: Vec<String>,
}

impl Requirement {
    /// The decision requiring these scopes.
    fn decision(&self) -> RouteDecision {
        RouteDecision::Require {
            set: self.set.clone(),
            names: self.names.clone(),
        }
    }
}

/// One piece of a scope-name template.
#[derive(Clone, Debug)]
enum Part {
    /// Text copied as is.
    Literal(String),
    /// The request's path segment at this position (counting non-empty segments from 0).
    Capture(usize),
}

/// A compiled `method_scopes` value.
#[derive(Clone, Debug)]
enum Template {
    /// No capture: checked and compiled at startup.
    Static(Requirement),
    /// Built from the path on each request, then looked up in the catalog.
    Dynamic(Vec<Part>),
}

/// What a matching route demands.
#[derive(Clone, Debug)]
enum Action {
    /// `auth = "none"`.
    Public,
    /// Neither scopes nor `auth`: any valid key.
    Authenticated,
    /// `scopes = [...]`.
    Require(Requirement),
    /// `method_scopes = {...}`.
    PerMethod {
        /// Upper-cased method → template.
        entries: Vec<(String, Template)>,
        /// The `*` entry.
        fallback: Option<Template>,
    },
}

/// One compiled route.
#[derive(Clone, Debug)]
struct Route {
    /// Upper-cased methods; empty means any.
    methods: Vec<String>,
    /// The path glob without its `**`.
    segments: Vec<Segment>,
    /// Whether the glob ends in `**`.
    tail: bool,
    /// What a match demands.
    action: Action,
}

/// The compiled `[[routes]]` and `default_route`.
#[derive(Clone, Debug)]
pub struct RouteTable {
    /// The routes in configuration order; the first match wins.
    routes: Vec<Route>,
    /// What an unmatched request needs.
    default: DefaultRoute,
    /// The catalog, to look up scope names built from path captures.
    catalog: ScopeCatalog,
    /// Whether literal segments must match in case too.
    case_sensitive: bool,
}

/// A request path brought to its canonical form and decided: what [`RouteTable::route`]
/// returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed<'a> {
    /// What the request needs.
    pub decision: RouteDecision,
    /// The canonical path the decision was made on: the one to forward.
    pub path: Cow<'a, str>,
}

impl RouteTable {
    /// Compiles the routes against `catalog`. Every static scope must be in the catalog,
    /// and every template must refer only to captures its path has.
    pub fn compile(
        routes: &[RouteConfig],
        default: DefaultRoute,
        catalog: &ScopeCatalog,
    ) -> Result<Self, RouteError> {
        let routes = routes
            .iter()
            .enumerate()
            .map(|(index, config)| {
                compile_route(config, catalog).map_err(|(field, kind)| RouteError {
                    index,
                    field,
                    kind,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            routes,
            default,
            catalog: catalog.clone(),
            case_sensitive: false,
        })
    }

    /// Makes literal segments match in case too (`case_sensitive_paths`); by default
    /// `/ADMIN` matches a rule for `/admin`.
    #[must_use]
    pub fn case_sensitive(mut self, yes: bool) -> Self {
        self.case_sensitive = yes;
        self
    }

    /// Decides what a request needs. `path` may carry a query string, which is ignored; a
    /// path that has no canonical form ([`canonical_path`]) is denied.
    ///
    /// A route with static scopes costs no allocation beyond cloning its `names`; the
    /// set itself is inline. A `method_scopes` template with a capture builds its name.
    pub fn resolve(&self, method: &str, path: &str) -> RouteDecision {
        let path = path.find(['?', '#']).map_or(path, |end| &path[..end]);
        match self.route(method, path) {
            Ok(routed) => routed.decision,
            Err(_) => RouteDecision::Deny,
        }
    }

    /// Brings `path` (without its query string) to its canonical form and decides on it;
    /// the canonical path is the one to forward. A path that has none is an error for the
    /// caller to refuse (400).
    pub fn route<'a>(&self, method: &str, path: &'a str) -> Result<Routed<'a>, PathError> {
        let path = canonical_path(path)?;
        let decision = self.resolve_canonical(method, &path);
        Ok(Routed { decision, path })
    }

    /// Decides about a path already in canonical form.
    fn resolve_canonical(&self, method: &str, path: &str) -> RouteDecision {
        for route in &self.routes {
            if route.matches_method(method) && route.matches_path(path, self.case_sensitive) {
                return route.decide(method, path, &self.catalog);
            }
        }
        match self.default {
            DefaultRoute::Authenticated => RouteDecision::Authenticated,
            DefaultRoute::Deny => RouteDecision::Deny,
        }
    }

    /// Whether literal segments match in case too.
    pub fn is_case_sensitive(&self) -> bool {
        self.case_sensitive
    }

    /// What an unmatched request needs.
    pub fn default_route(&self) -> &DefaultRoute {
        &self.default
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there is no route, so every request gets the default.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Route {
    /// Whether the route applies to `method` (case-insensitive; `HEAD` counts as `GET`).
    fn matches_method(&self, method: &str) -> bool {
        self.methods.is_empty()
            || listed(&self.methods, method)
            || (method.eq_ignore_ascii_case("HEAD") && listed(&self.methods, "GET"))
    }

    /// Whether the path glob matches `path` (canonical, without its query).
    fn matches_path(&self, path: &str, case_sensitive: bool) -> bool {
        let mut segments = segments(path);
        for pattern in &self.segments {
            let Some(segment) = segments.next() else {
                return false;
            };
            if let Segment::Literal(literal) = pattern {
                if !decoded_eq(segment, literal, case_sensitive) {
                    return false;
                }
            }
        }
        self.tail || segments.next().is_none()
    }

    /// The decision for a request this route matched.
    fn decide(&self, method: &str, path: &str, catalog: &ScopeCatalog) -> RouteDecision {
        match &self.action {
            Action::Public => RouteDecision::Public,
            Action::Authenticated => RouteDecision::Authenticated,
            Action::Require(requirement) => requirement.decision(),
            Action::PerMethod { entries, fallback } => {
                let find = |m: &str| {
                    entries
                        .iter()
                        .find(|(listed, _)| listed.eq_ignore_ascii_case(m))
                        .map(|(_, template)| template)
                };
                let template = find(method)
                    .or_else(|| {
                        if method.eq_ignore_ascii_case("HEAD") {
                            find("GET")
                        } else {
                            None
                        }
                    })
                    .or(fallback.as_ref());
                match template {
                    None => RouteDecision::Deny,
                    Some(Template::Static(requirement)) => requirement.decision(),
                    Some(Template::Dynamic(parts)) => substitute(parts, path, catalog),
                }
            }
        }
    }
}

/// Builds a scope name from a template and the path, and looks it up.
fn substitute(parts: &[Part], path: &str, catalog: &ScopeCatalog) -> RouteDecision {
    let mut name = String::new();
    // A capture must fill exactly one scope segment: `{resource}:read` with a path
    // segment `a:b` must not reach a scope the rule's author never had in mind.
    let mut single_segments = true;
    for part in parts {
        match part {
            Part::Literal(text) => name.push_str(text),
            Part::Capture(position) => {
                let raw = segments(path).nth(*position).unwrap_or_default();
                let value = decode(raw);
                single_segments &= !value.contains(':');
                name.push_str(&value);
            }
        }
    }
    match catalog.requirement_of(&name) {
        Some(set) if single_segments => RouteDecision::Require {
            set: set.clone(),
            names: vec![name],
        },
        _ => RouteDecision::Unsatisfiable { names: vec![name] },
    }
}

/// Whether `list` holds `method`, ignoring case.
fn listed(list: &[String], method: &str) -> bool {
    list.iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// The non-empty segments of a path.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The value of one hex digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XX` escape at `bytes[at]` stands for, if it is well formed.
fn escape_at(bytes: &[u8], at: usize) -> Option<u8> {
    let high = hex_value(*bytes.get(at + 1)?)?;
    let low = hex_value(*bytes.get(at + 2)?)?;
    Some(high << 4 | low)
}

/// The percent-decoded bytes of a segment. A malformed escape stays as written, though
/// a canonical path has none.
fn decoded_bytes(segment: &str) -> impl Iterator<Item = u8> + '_ {
    let bytes = segment.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        let byte = *bytes.get(at)?;
        if byte == b'%' {
            if let Some(decoded) = escape_at(bytes, at) {
                at += 3;
                return Some(decoded);
            }
        }
        at += 1;
        Some(byte)
    })
}

/// Whether a canonical segment decodes to `literal`, without allocating.
fn decoded_eq(segment: &str, literal: &str, case_sensitive: bool) -> bool {
    match (segment.contains('%'), case_sensitive) {
        (false, true) => segment == literal,
        (false, false) => segment.eq_ignore_ascii_case(literal),
        (true, true) => decoded_bytes(segment).eq(literal.bytes()),
        (true, false) => decoded_bytes(segment)
            .map(|b| b.to_ascii_lowercase())
            .eq(literal.bytes().map(|b| b.to_ascii_lowercase())),
    }
}

/// A segment percent-decoded (invalid UTF-8 replaced, which no scope name contains).
fn decode(segment: &str) -> Cow<'_, str> {
    if segment.contains('%') {
        let bytes: Vec<u8> = decoded_bytes(segment).collect();
        Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        Cow::Borrowed(segment)
    }
}

/// Why a request path has no canonical form: servers could read it in different ways, so
/// the request is refused (400) rather than decided on a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-escape")]
    MalformedEscape,
    /// `%2F` or `%5C`: a separator some servers decode and others do not.
    #[error("the path has an encoded '/' or '\\' (%2F, %5C)")]
    EncodedSeparator,
    /// A raw `\`, which some servers read as `/`.
    #[error("the path has a '\\'")]
    Backslash,
    /// A `;` (raw or `%3B`): path parameters, which some servers strip before routing.
    #[error("the path has a ';' (path parameters are not accepted)")]
    PathParameter,
    /// A control character (raw or encoded), a raw space, `?` or `#`, or raw non-ASCII.
    #[error(
        "the path has a control character, a raw space or raw non-ASCII text (percent-encode it)"
    )]
    InvalidChar,
    /// Escapes that are not UTF-8 (overlong forms of `.` and `/` among them) or that
    /// decode to a character read as `.`, `/` or `\` after normalisation.
    #[error("the path has an escape that is not UTF-8 or that stands for a look-alike of '.', '/' or '\\'")]
    Confusable,
    /// More `..` segments than there are segments to climb.
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
}

/// Whether `byte` is an unreserved character (RFC 3986 §2.3), which an escape never needs.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Whether `byte` may stand in a canonical path as itself: printable ASCII other than
/// `%`, `;`, `\`, `?` and `#`.
fn is_plain(byte: u8) -> bool {
    (0x21..0x7f).contains(&byte) && !matches!(byte, b'%' | b';' | b'\\' | b'?' | b'#')
}

/// Characters that Unicode normalisation (NFKC) or a legacy code page's best-fit mapping
/// turns into `.`, `/` or `\`.
const CONFUSABLES: [char; 11] = [
    '\u{2024}', // ONE DOT LEADER
    '\u{FE52}', // SMALL FULL STOP
    '\u{FF0E}', // FULLWIDTH FULL STOP
    '\u{2044}', // FRACTION SLASH
    '\u{2215}', // DIVISION SLASH
    '\u{29F8}', // BIG SOLIDUS
    '\u{FF0F}', // FULLWIDTH SOLIDUS
    '\u{2216}', // SET MINUS
    '\u{29F9}', // BIG REVERSE SOLIDUS
    '\u{FE68}', // SMALL REVERSE SOLIDUS
    '\u{FF3C}', // FULLWIDTH REVERSE SOLIDUS
];

/// Whether a path is canonical already, so it can be used as it is: every byte plain, and
/// no empty (but a last), `.` or `..` segment.
fn is_canonical(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if !rest.bytes().all(is_plain) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

/// Brings a request path (without its query string) to its canonical form, or says why it
/// has none; see the module documentation and `docs/routes.md`. The canonical form of a
/// canonical path is itself, and an already canonical path is returned without copying.
///
/// An empty path is `/`. A trailing `/` is kept (a last `.` or `..` segment leaves one),
/// since upstreams may tell `/a/` from `/a`; rules match either.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    if is_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    // Each kept segment in its canonical spelling, and whether a `/` ends the path.
    let mut kept: Vec<String> = Vec::new();
    let mut trailing = false;
    let mut decoded: Vec<u8> = Vec::new();
    for raw in rest.split('/') {
        let bytes = raw.as_bytes();
        let mut segment = String::with_capacity(raw.len());
        let mut non_ascii = false;
        decoded.clear();
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            if byte == b'%' {
                let value = escape_at(bytes, at).ok_or(PathError::MalformedEscape)?;
                at += 3;
                decoded.push(value);
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b';' => return Err(PathError::PathParameter),
                    0..=0x1f | 0x7f => return Err(PathError::InvalidChar),
                    v if is_unreserved(v) => segment.push(char::from(v)),
                    v => {
                        non_ascii |= v >= 0x80;
                        segment.push('%');
                        segment.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
                        segment.push(char::from(HEX_UPPER[usize::from(v & 0xf)]));
                    }
                }
                continue;
            }
            at += 1;
            decoded.push(byte);
            match byte {
                b';' => return Err(PathError::PathParameter),
                b'\\' => return Err(PathError::Backslash),
                b if is_plain(b) => segment.push(char::from(b)),
                _ => return Err(PathError::InvalidChar),
            }
        }
        if non_ascii {
            let text = std::str::from_utf8(&decoded).map_err(|_| PathError::Confusable)?;
            if text.contains(CONFUSABLES) {
                return Err(PathError::Confusable);
            }
        }
        trailing = matches!(segment.as_str(), "" | "." | "..");
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Upper-case hex digits, for the canonical spelling of an escape.
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Compiles one route, or names the field at fault.
fn compile_route(
    config: &RouteConfig,
    catalog: &ScopeCatalog,
) -> Result<Route, (String, RouteErrorKind)> {
    let at = |field: &str| {
        let field = field.to_owned();
        move |kind: RouteErrorKind| (field, kind)
    };

    let mut methods: Vec<String> = Vec::new();
    let mut any_method = config.methods.is_empty();
    for method in &config.methods {
        if method == "*" {
            any_method = true;
            continue;
        }
        let method = parse_method(method).map_err(at("methods"))?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    if any_method {
        methods.clear();
    }

    let ParsedPath {
        segments,
        tail,
        captures,
    } = parse_path(&config.path).map_err(at("path"))?;

    let public = match config.auth.as_deref() {
        None => false,
        Some("none") => true,
        Some(other) => {
            return Err((
                "auth".into(),
                RouteErrorKind::InvalidAuth {
                    value: other.to_owned(),
                },
            ))
        }
    };
    let chosen = [
        !config.scopes.is_empty(),
        !config.method_scopes.is_empty(),
        public,
    ];
    if chosen.iter().filter(|set| **set).count() > 1 {
        let field = if public { "auth" } else { "method_scopes" };
        return Err((field.into(), RouteErrorKind::ConflictingRequirements));
    }

    let action = if public {
        Action::Public
    } else if !config.scopes.is_empty() {
        let set = catalog
            .required(&config.scopes)
            .map_err(|e| ("scopes".to_owned(), RouteErrorKind::UnknownScopes(e)))?;
        Action::Require(Requirement {
            set,
            names: config.scopes.clone(),
        })
    } else if !config.method_scopes.is_empty() {
        compile_method_scopes(config, &methods, &captures, catalog)?
    } else {
        Action::Authenticated
    };

    Ok(Route {
        methods,
        segments,
        tail,
        action,
    })
}

/// Compiles `method_scopes`, checking it agrees with `methods`.
fn compile_method_scopes(
    config: &RouteConfig,
    methods: &[String],
    captures: &[(String, usize)],
    catalog: &ScopeCatalog,
) -> Result<Action, (String, RouteErrorKind)> {
    let mut entries: Vec<(String, Template)> = Vec::new();
    let mut fallback = None;
    for (key, template) in &config.method_scopes {
        let field = format!("method_scopes.{key}");
        let compiled =
            parse_template(template, captures, catalog).map_err(|kind| (field.clone(), kind))?;
        if key == "*" {
            fallback = Some(compiled);
            continue;
        }
        let method = parse_method(key).map_err(|kind| (field.clone(), kind))?;
        if listed_entry(&entries, &method) {
            return Err((field, RouteErrorKind::DuplicateMethod { method }));
        }
        let reachable = methods.is_empty()
            || methods.contains(&method)
            || (method == "HEAD" && methods.iter().any(|m| m == "GET"));
        if !reachable {
            return Err((field, RouteErrorKind::UnreachableMethodScope { method }));
        }
        entries.push((method, compiled));
    }
    if fallback.is_none() {
        for method in methods {
            let covered = listed_entry(&entries, method)
                || (method == "HEAD" && listed_entry(&entries, "GET"));
            if !covered {
                return Err((
                    "methods".into(),
                    RouteErrorKind::MethodWithoutScope {
                        method: method.clone(),
                    },
                ));
            }
        }
    }
    Ok(Action::PerMethod { entries, fallback })
}

/// Whether `entries` already has `method`.
fn listed_entry(entries: &[(String, Template)], method: &str) -> bool {
    entries.iter().any(|(m, _)| m == method)
}

/// Checks an HTTP method token (RFC 9110 `tchar`s) and upper-cases it.
fn parse_method(method: &str) -> Result<String, RouteErrorKind> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if method.is_empty() || !method.chars().all(is_tchar) {
        return Err(RouteErrorKind::InvalidMethod {
            method: method.to_owned(),
        });
    }
    Ok(method.to_ascii_uppercase())
}

/// A parsed path glob.
struct ParsedPath {
    /// The segments before any `**`.
    segments: Vec<Segment>,
    /// Whether the glob ends in `**`.
    tail: bool,
    /// Each capture's name and segment position, for templates to refer to.
    captures: Vec<(String, usize)>,
}

/// Parses a path glob, normalised like request paths (empty segments ignored).
fn parse_path(path: &str) -> Result<ParsedPath, RouteErrorKind> {
    if !path.starts_with('/') {
        return Err(RouteErrorKind::PathNotAbsolute);
    }
    if let Some(ch) = path
        .chars()
        .find(|c| matches!(c, '?' | '#' | '%' | '\\' | ';'))
    {
        return Err(RouteErrorKind::PathInvalidChar { ch });
    }
    let raw: Vec<&str> = segments(path).collect();
    let mut out = Vec::with_capacity(raw.len());
    let mut tail = false;
    let mut captures: Vec<(String, usize)> = Vec::new();
    for (position, segment) in raw.iter().enumerate() {
        let invalid = || RouteErrorKind::InvalidSegment {
            segment: (*segment).to_owned(),
        };
        match *segment {
            "**" if position + 1 == raw.len() => tail = true,
            "**" => return Err(RouteErrorKind::DoubleStarNotLast),
            "*" => out.push(Segment::Any),
            "." | ".." => return Err(invalid()),
            s if s.starts_with('{') && s.ends_with('}') && s.len() >= 2 => {
                let name = &s[1..s.len() - 1];
                let mut chars = name.chars();
                let valid = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(RouteErrorKind::InvalidCaptureName {
                        name: name.to_owned(),
                    });
                }
                if captures.iter().any(|(n, _)| n == name) {
                    return Err(RouteErrorKind::DuplicateCapture {
                        name: name.to_owned(),
                    });
                }
                captures.push((name.to_owned(), position));
                out.push(Segment::Any);
            }
            s if s.contains(['*', '{', '}']) => return Err(invalid()),
            s => out.push(Segment::Literal(s.to_owned())),
        }
    }
    Ok(ParsedPath {
        segments: out,
        tail,
        captures,
    })
}

/// Parses a `method_scopes` template. One without captures is checked against the
/// catalog now; one with captures must at least have the shape of a scope name.
fn parse_template(
    template: &str,
    captures: &[(String, usize)],
    catalog: &ScopeCatalog,
) -> Result<Template, RouteErrorKind> {
    let invalid = |reason: String| RouteErrorKind::InvalidTemplate {
        template: template.to_owned(),
        reason,
    };
    let mut parts: Vec<Part> = Vec::new();
    // The template with every capture replaced by a sample segment, to check its shape.
    let mut sample = String::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(Part::Literal(rest.to_owned()));
                sample.push_str(rest);
                rest = "";
            }
            Some(at) if rest.as_bytes()[at] == b'}' => {
                return Err(invalid("'}' without '{'".into()));
            }
            Some(open) => {
                let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                    return Err(invalid("'{' without '}'".into()));
                };
                if open > 0 {
                    parts.push(Part::Literal(rest[..open].to_owned()));
                    sample.push_str(&rest[..open]);
                }
                let name = &rest[open + 1..close];
                let Some((_, position)) = captures.iter().find(|(n, _)| n == name) else {
                    return Err(RouteErrorKind::UnknownCapture {
                        name: name.to_owned(),
                    });
                };
                parts.push(Part::Capture(*position));
                sample.push('x');
                rest = &rest[close + 1..];
            }
        }
    }
    ScopeName::parse(&sample).map_err(|e| invalid(e.to_string()))?;
    if parts.iter().any(|p| matches!(p, Part::Capture(_))) {
        return Ok(Template::Dynamic(parts));
    }
    let set = catalog
        .requirement_of(template)
        .ok_or_else(|| InvalidScopes {
            unknown: vec![template.to_owned()],
        })?
        .clone();
    Ok(Template::Static(Requirement {
        set,
        names: vec![template.to_owned()],
    }))
}

impl fmt::Display for DefaultRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefaultRoute::Authenticated => "authenticated",
            DefaultRoute::Deny => "deny",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scopes::CatalogEntry;

    /// A catalog with a name that is both a unit scope and an alias, and an alias-only name.
    fn catalog() -> ScopeCatalog {
        let entries: Vec<CatalogEntry> = [
            "invoices:read",
            "invoices:write",
            "invoices:delete",
            "invoices:attachments:read",
            "customers:read",
            "customers:write",
            "reports:read",
        ]
        .iter()
        .map(|name| CatalogEntry {
            name: (*name).into(),
            description: String::new(),
            public: false,
        })
        .collect();
        let aliases = BTreeMap::from([
            (
                "billing".to_owned(),
                vec!["invoices:write".to_owned(), "customers:read".to_owned()],
            ),
            (
                "invoices:write".to_owned(),
                vec!["invoices:read".to_owned(), "invoices:write".to_owned()],
            ),
        ]);
        ScopeCatalog::build(&entries, &aliases, true).unwrap()
    }

    /// Parses `[[routes]]` written as JSON, the same serde path as the TOML file.
    fn routes(json: &str) -> Vec<RouteConfig> {
        serde_json::from_str(json).unwrap()
    }

    /// Renders a decision as a short string, checking that a `Require` set is exactly what
    /// its names require.
    fn describe(decision: RouteDecision, catalog: &ScopeCatalog) -> String {
        match decision {
            RouteDecision::Public => "public".into(),
            RouteDecision::Authenticated => "authenticated".into(),
            RouteDecision::Deny => "deny".into(),
            RouteDecision::Require { set, names } => {
                assert_eq!(set, catalog.required(&names).unwrap(), "set of {names:?}");
                format!("require {}", names.join(" "))
            }
            RouteDecision::Unsatisfiable { names } => format!("unsatisfiable {}", names.join(" ")),
        }
    }

    /// Resolves each `(method, path, expected)` against a table.
    fn check(table: &RouteTable, cases: &[(&str, &str, &str)]) {
        let catalog = catalog();
        for (method, path, expected) in cases {
            let got = describe(table.resolve(method, path), &catalog);
            assert_eq!(got, *expected, "{method} {path}");
        }
    }

    const SAMPLE: &str = r#"[
        {"path": "/healthz", "auth": "none"},
        {"path": "/v1/public/**", "auth": "none"},
        {"methods": ["get"], "path": "/v1/invoices/{id}/attachments/*", "scopes": ["invoices:attachments:read"]},
        {"methods": ["GET"], "path": "/v1/invoices/**", "scopes": ["invoices:read"]},
        {"methods": ["POST", "PUT"], "path": "/v1/invoices/**", "scopes": ["invoices:write"]},
        {"path": "/v1/invoices/**", "scopes": ["invoices:delete"]},
        {"path": "/v1/{resource}/{id}", "method_scopes": {"GET": "{resource}:read", "post": "{resource}:write", "DELETE": "billing"}},
        {"path": "/v1/reports", "method_scopes": {"GET": "reports:read", "*": "billing"}},
        {"path": "/v1/me"},
        {"methods": ["GET"], "path": "/v1/{resource}", "method_scopes": {"GET": "{resource}:read"}},
        {"methods": ["*"], "path": "/v1/both", "scopes": ["customers:read", "reports:read"]},
        {"path": "/a/*/c"}
    ]"#;

    fn sample(default: DefaultRoute) -> RouteTable {
        RouteTable::compile(&routes(SAMPLE), default, &catalog()).unwrap()
    }

    #[test]
    fn resolve_rules() {
        let table = sample(DefaultRoute::Authenticated);
        assert_eq!(table.len(), 12);
        check(
            &table,
            &[
                // auth = "none", with the query string ignored.
                ("GET", "/healthz", "public"),
                ("POST", "/healthz?probe=1", "public"),
                ("GET", "/healthz/x", "authenticated"),
                ("POST", "/v1/public/a/b/c", "public"),
                ("GET", "/v1/public", "public"),
                // First match wins: the attachment rule comes before the `**` rules.
                (
                    "GET",
                    "/v1/invoices/in_1/attachments/at_1",
                    "require invoices:attachments:read",
                ),
                (
                    "GET",
                    "/v1/invoices/in_1/attachments",
                    "require invoices:read",
                ),
                (
                    "GET",
                    "/v1/invoices/in_1/attachments/at_1/raw",
                    "require invoices:read",
                ),
                // Methods are case-insensitive; `**` matches zero or more segments.
                ("get", "/v1/invoices", "require invoices:read"),
                (
                    "GET",
                    "/v1/invoices/in_1?expand=lines#top",
                    "require invoices:read",
                ),
                ("POST", "/v1/invoices", "require invoices:write"),
                ("put", "/v1/invoices/in_1", "require invoices:write"),
                ("DELETE", "/v1/invoices/in_1", "require invoices:delete"),
                ("PATCH", "/v1/invoices/in_1", "require invoices:delete"),
                // HEAD is matched like GET when only GET is listed.
                ("HEAD", "/v1/invoices/in_1", "require invoices:read"),
                (
                    "HEAD",
                    "/v1/invoices/in_1/attachments/at_1",
                    "require invoices:attachments:read",
                ),
                // method_scopes: substitution, a static alias, a method with no entry.
                ("GET", "/v1/customers/c_1", "require customers:read"),
                ("POST", "/v1/customers/c_1", "require customers:write"),
                ("DELETE", "/v1/customers/c_1", "require billing"),
                ("PATCH", "/v1/customers/c_1", "deny"),
                ("HEAD", "/v1/customers/c_1", "require customers:read"),
                ("GET", "/v1/widgets/w_1", "unsatisfiable widgets:read"),
                ("GET", "/v1/Customers/c_1", "unsatisfiable Customers:read"),
                ("GET", "/v1/%63ustomers/c_1", "require customers:read"),
                (
                    "GET",
                    "/v1/invoices:attachments/x",
                    "unsatisfiable invoices:attachments:read",
                ),
                ("GET", "/v1/reports", "require reports:read"),
                ("POST", "/v1/reports", "require billing"),
                ("GET", "/v1/customers", "require customers:read"),
                ("POST", "/v1/customers", "authenticated"),
                ("OPTIONS", "/v1/both", "require customers:read reports:read"),
                // A route with no requirement needs only a key; unmatched paths get the default.
                ("GET", "/v1/me", "authenticated"),
                ("GET", "/elsewhere", "authenticated"),
                ("GET", "/", "authenticated"),
                ("GET", "", "authenticated"),
                // `*` is exactly one non-empty segment.
                ("GET", "/a/b/c", "authenticated"),
                ("GET", "/a/c", "authenticated"),
                ("GET", "/a/b/b/c", "authenticated"),
            ],
        );
    }

    #[test]
    fn default_deny() {
        let table = sample(DefaultRoute::Deny);
        assert_eq!(table.default_route(), &DefaultRoute::Deny);
        check(
            &table,
            &[
                ("GET", "/healthz", "public"),
                ("GET", "/v1/me", "authenticated"),
                ("GET", "/v1/invoices/1", "require invoices:read"),
                ("GET", "/elsewhere", "deny"),
                ("POST", "/v1/customers", "deny"),
                ("GET", "/a/b/x", "deny"),
            ],
        );
        let empty = RouteTable::compile(&[], DefaultRoute::Deny, &catalog()).unwrap();
        assert!(empty.is_empty());
        check(&empty, &[("GET", "/anything", "deny")]);
    }

    #[test]
    fn path_normalisation() {
        let table = sample(DefaultRoute::Authenticated);
        check(
            &table,
            &[
                // Empty segments are ignored, as nginx's merge_slashes does.
                ("GET", "/v1/me/", "authenticated"),
                ("GET", "//v1//invoices/in_1", "require invoices:read"),
                ("GET", "/healthz/", "public"),
                // Segments are percent-decoded before comparison.
                ("GET", "/v1/%69nvoices/in_1", "require invoices:read"),
                ("GET", "/v1/invoice%73", "require invoices:read"),
                ("GET", "/v1/invoices/a.b", "require invoices:read"),
                ("GET", "/v1/invoices/...", "require invoices:read"),
                ("GET", "/v1/invoices/in%201", "require invoices:read"),
                // Dot segments are resolved, encoded or not, before the rules see the path.
                (
                    "GET",
                    "/v1/public/../invoices/in_1",
                    "require invoices:read",
                ),
                ("GET", "/v1/public/./x", "public"),
                ("GET", "/v1/public/%2e%2e/invoices", "require invoices:read"),
                ("GET", "/v1/public/.%2E/invoices", "require invoices:read"),
                ("GET", "/v1/public/%2E", "public"),
                ("GET", "/v1/public//../invoices", "require invoices:read"),
                // Case does not matter by default.
                ("GET", "/V1/INVOICES/in_1", "require invoices:read"),
                ("GET", "/Healthz", "public"),
                ("GET", "/v1/%49nvoices", "require invoices:read"),
                // Paths servers read differently are denied, whatever the rules say.
                ("GET", "/v1/public/..;/invoices", "deny"),
                ("GET", "/v1/public;x=1", "deny"),
                ("GET", "/v1/public%3Bx", "deny"),
                ("GET", "/v1/public/%c0%ae%c0%ae/invoices", "deny"),
                ("GET", "/v1/public/%EF%BC%8Finvoices", "deny"),
                ("GET", "/v1/public/%00", "deny"),
                ("GET", "/../v1/public", "deny"),
                ("GET", "/v1%2Finvoices/in_1", "deny"),
                ("GET", "/v1/public%2finvoices", "deny"),
                ("GET", "/v1/public%5Cx", "deny"),
                ("GET", "/v1\\public", "deny"),
                ("GET", "/v1/invoices/in_1%ZZ", "deny"),
                ("GET", "/v1/invoices/in_1%2", "deny"),
                // A query string is not part of the path, whatever it holds.
                ("GET", "/v1/public?next=/../x%2F", "public"),
            ],
        );
    }

    #[test]
    fn canonical_paths() {
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b//", "/a/b/"),
            ("/a/./b/.", "/a/b/"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a//../b", "/b"),
            ("/x/%2e%2E/", "/"),
            ("/x/.%2e/y", "/y"),
            ("/%61%62%2D%5f%7e%2E", "/ab-_~."),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%3fb%23c%20d", "/a%3Fb%23c%20d"),
            ("/ADMIN/Secret", "/ADMIN/Secret"),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
            ("/...", "/..."),
            ("/a..b/.c", "/a..b/.c"),
        ];
        for (raw, want) in ok {
            let got = canonical_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(got, *want, "{raw}");
            assert_eq!(canonical_path(&got).unwrap(), got, "{raw} is a fixed point");
        }
        assert!(matches!(canonical_path("/a/b"), Ok(Cow::Borrowed(_))));
        let bad: &[(&str, PathError)] = &[
            ("a/b", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2F..", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a;b", PathError::PathParameter),
            ("/..;/a", PathError::PathParameter),
            ("/a%3bb", PathError::PathParameter),
            ("/a%zz", PathError::MalformedEscape),
            ("/a%2", PathError::MalformedEscape),
            ("/a%", PathError::MalformedEscape),
            ("/a%00", PathError::InvalidChar),
            ("/a%0a", PathError::InvalidChar),
            ("/a%7F", PathError::InvalidChar),
            ("/a b", PathError::InvalidChar),
            ("/a?b", PathError::InvalidChar),
            ("/caf\u{e9}", PathError::InvalidChar),
            ("/%c0%ae%c0%ae/a", PathError::Confusable),
            ("/%ff", PathError::Confusable),
            ("/%ef%bc%8f", PathError::Confusable),
            ("/a%e2%88%95b", PathError::Confusable),
            ("/%ef%bc%8e%ef%bc%8e", PathError::Confusable),
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/a", PathError::AboveRoot),
        ];
        for (raw, want) in bad {
            assert_eq!(canonical_path(raw), Err(*want), "{raw}");
        }
    }

    /// The requests of an attack on a gateway in front of Express and Tomcat upstreams:
    /// each is `/admin/secret` to some upstream, so none may pass on weaker rules.
    #[test]
    fn no_spelling_of_a_protected_path_passes_on_weaker_rules() {
        let table = RouteTable::compile(
            &routes(
                r#"[
                    {"path": "/public/**", "auth": "none"},
                    {"path": "/admin/**", "scopes": ["reports:read"]}
                ]"#,
            ),
            DefaultRoute::Authenticated,
            &catalog(),
        )
        .unwrap();
        for path in [
            "/ADMIN/secret",
            "/Admin/secret",
            "/%41dmin/secret",
            "/public/../admin/secret",
            "/public/%2e%2e/Admin/secret",
            "//admin//secret",
        ] {
            let routed = table.route("GET", path).unwrap();
            assert_eq!(
                describe(routed.decision, &catalog()),
                "require reports:read",
                "{path}"
            );
            assert!(
                routed.path.eq_ignore_ascii_case("/admin/secret"),
                "{path} is forwarded as {}",
                routed.path
            );
        }
        for path in [
            "/admin;x=1/secret",
            "/public/..;/admin/secret",
            "/public/..%2fadmin/secret",
        ] {
            assert!(table.route("GET", path).is_err(), "{path}");
            assert_eq!(table.resolve("GET", path), RouteDecision::Deny, "{path}");
        }

        // Case-sensitive matching, when asked for: `/ADMIN` is then another path.
        let table = table.case_sensitive(true);
        assert!(table.is_case_sensitive());
        check(
            &table,
            &[
                ("GET", "/ADMIN/secret", "authenticated"),
                ("GET", "/admin/secret", "require reports:read"),
                ("GET", "/%61dmin/secret", "require reports:read"),
                ("GET", "/Public/x", "authenticated"),
            ],
        );
    }

    #[test]
    fn first_match_wins() {
        let table = RouteTable::compile(
            &routes(
                r#"[
                    {"path": "/v1/**", "auth": "none"},
                    {"path": "/v1/secret", "scopes": ["reports:read"]},
                    {"methods": ["POST"], "path": "/v2/x", "scopes": ["reports:read"]},
                    {"path": "/v2/x", "scopes": ["customers:read"]}
                ]"#,
            ),
            DefaultRoute::Deny,
            &catalog(),
        )
        .unwrap();
        check(
            &table,
            &[
                ("GET", "/v1/secret", "public"),
                ("POST", "/v2/x", "require reports:read"),
                ("GET", "/v2/x", "require customers:read"),
            ],
        );
    }

    #[test]
    fn compile_errors() {
        let cases: &[(&str, &str)] = &[
            (r#"[{"path": "v1"}]"#, "routes[0].path: the path must start with '/'"),
            (r#"[{"path": ""}]"#, "routes[0].path: the path must start with '/'"),
            (r#"[{"path": "/ok"}, {"path": "bad"}]"#, "routes[1].path: the path must start with '/'"),
            (r#"[{"path": "/a/**/b"}]"#, "routes[0].path: `**` may only be the last segment"),
            (r#"[{"path": "/a/b*"}]"#, "routes[0].path: segment \"b*\" is invalid"),
            (r#"[{"path": "/a/x{id}"}]"#, "routes[0].path: segment \"x{id}\" is invalid"),
            (r#"[{"path": "/a/../b"}]"#, "routes[0].path: segment \"..\" is invalid"),
            (r#"[{"path": "/a/{1x}"}]"#, "routes[0].path: capture name \"1x\" must be"),
            (r#"[{"path": "/a/{}"}]"#, "routes[0].path: capture name \"\" must be"),
            (r#"[{"path": "/a/{x}/{x}"}]"#, "routes[0].path: capture {x} appears twice"),
            (r#"[{"path": "/a?x=1"}]"#, "routes[0].path: the path may not contain '?'"),
            (r#"[{"path": "/a%20b"}]"#, "routes[0].path: the path may not contain '%'"),
            (r#"[{"path": "/a;b"}]"#, "routes[0].path: the path may not contain ';'"),
            (r#"[{"methods": ["GE T"], "path": "/a"}]"#, "routes[0].methods: \"GE T\" is not an HTTP method"),
            (r#"[{"methods": [""], "path": "/a"}]"#, "routes[0].methods: \"\" is not an HTTP method"),
            (r#"[{"path": "/a", "scopes": ["nope", "invoices:read", "zip"]}]"#, "routes[0].scopes: unknown scopes: nope, zip"),
            (r#"[{"path": "/a", "scopes": ["invoices:*"]}]"#, "routes[0].scopes: unknown scope: invoices:*"),
            (r#"[{"path": "/a", "scopes": ["invoices:read"], "auth": "none"}]"#, "routes[0].auth: set only one of"),
            (r#"[{"path": "/a", "scopes": ["invoices:read"], "method_scopes": {"GET": "invoices:read"}}]"#, "routes[0].method_scopes: set only one of"),
            (r#"[{"path": "/a", "auth": "basic"}]"#, "routes[0].auth: \"basic\" is not supported"),
            (r#"[{"path": "/a/{r}", "method_scopes": {"GET": "{resource}:read"}}]"#, "routes[0].method_scopes.GET: the template uses {resource}, which the path does not capture"),
            (r#"[{"path": "/a", "method_scopes": {"GET": "nope:read"}}]"#, "routes[0].method_scopes.GET: unknown scope: nope:read"),
            (r#"[{"path": "/a/{r}", "method_scopes": {"GET": "{r}:*"}}]"#, "routes[0].method_scopes.GET: template \"{r}:*\" cannot produce a scope name"),
            (r#"[{"path": "/a/{r}", "method_scopes": {"GET": "{r:read"}}]"#, "routes[0].method_scopes.GET: template \"{r:read\" cannot produce a scope name: '{' without '}'"),
            (r#"[{"path": "/a/{r}", "method_scopes": {"GET": "r}:read"}}]"#, "routes[0].method_scopes.GET: template \"r}:read\" cannot produce a scope name: '}' without '{'"),
            (r#"[{"path": "/a/{r}", "method_scopes": {"GET": "{r}:Read"}}]"#, "routes[0].method_scopes.GET: template \"{r}:Read\" cannot produce a scope name"),
            (r#"[{"path": "/a", "method_scopes": {"GET": "invoices:read", "get": "invoices:read"}}]"#, "routes[0].method_scopes.get: method GET has more than one entry"),
            (r#"[{"path": "/a", "method_scopes": {"G T": "invoices:read"}}]"#, "routes[0].method_scopes.G T: \"G T\" is not an HTTP method"),
            (r#"[{"methods": ["GET", "POST"], "path": "/a", "method_scopes": {"GET": "invoices:read"}}]"#, "routes[0].methods: method POST is listed in `methods` but has no `method_scopes` entry"),
            (r#"[{"methods": ["GET"], "path": "/a", "method_scopes": {"GET": "invoices:read", "POST": "billing"}}]"#, "routes[0].method_scopes.POST: method POST is not in `methods`"),
        ];
        for (json, message) in cases {
            let err = RouteTable::compile(&routes(json), DefaultRoute::Authenticated, &catalog())
                .expect_err(json);
            assert!(
                err.to_string().starts_with(message),
                "{json}\n got: {err}\nwant: {message}"
            );
        }
        let ok = &[
            r#"[{"methods": ["GET", "HEAD"], "path": "/a", "method_scopes": {"GET": "invoices:read"}}]"#,
            r#"[{"methods": ["GET", "POST"], "path": "/a", "method_scopes": {"GET": "invoices:read", "*": "billing"}}]"#,
            r#"[{"methods": ["GET"], "path": "/a", "method_scopes": {"HEAD": "invoices:read", "GET": "invoices:read"}}]"#,
            r#"[{"path": "/a/", "scopes": []}]"#,
            r#"[{"path": "/"}]"#,
        ];
        for json in ok {
            RouteTable::compile(&routes(json), DefaultRoute::Authenticated, &catalog())
                .expect(json);
        }
    }

    #[test]
    fn config_shape() {
        let unknown: Result<Vec<RouteConfig>, _> =
            serde_json::from_str(r#"[{"path": "/a", "scope": ["x"]}]"#);
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `scope`"));
        let missing: Result<Vec<RouteConfig>, _> =
            serde_json::from_str(r#"[{"methods": ["GET"]}]"#);
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("missing field `path`"));
        let cases: &[(&str, DefaultRoute)] = &[
            ("\"authenticated\"", DefaultRoute::Authenticated),
            ("\"deny\"", DefaultRoute::Deny),
        ];
        for (json, expected) in cases {
            assert_eq!(
                &serde_json::from_str::<DefaultRoute>(json).unwrap(),
                expected
            );
            assert_eq!(serde_json::to_string(expected).unwrap(), *json);
            assert_eq!(format!("\"{expected}\""), *json);
        }
        assert!(serde_json::from_str::<DefaultRoute>("\"allow\"").is_err());
        assert_eq!(DefaultRoute::default(), DefaultRoute::Authenticated);
        let route = RouteConfig {
            path: "/a".into(),
            ..RouteConfig::default()
        };
        assert_eq!(serde_json::to_string(&route).unwrap(), r#"{"path":"/a"}"#);
    }
}
