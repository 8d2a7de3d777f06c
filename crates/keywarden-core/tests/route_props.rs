//! Properties of route matching, over paths built from segments in every spelling a
//! client can choose (case, percent-escapes, `;` parameters, `.` and `..` raw or encoded,
//! encoded separators, `//`, look-alikes):
//! - the path that is decided and the path that is forwarded agree: the canonical path
//!   is its own canonical form and decides the same way;
//! - whatever a lenient upstream would make of the raw path (parameters stripped,
//!   everything decoded, dot segments resolved, case ignored), a path that is not refused
//!   is decided as that upstream's path would be;
//! - no spelling of a protected path is let through on weaker rules.

use keywarden_core::routes::{
    canonical_path, DefaultRoute, RouteConfig, RouteDecision, RouteTable,
};
use keywarden_core::scopes::{CatalogEntry, ScopeCatalog};
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;

fn table() -> RouteTable {
    let entries: Vec<CatalogEntry> = ["admin:write", "invoices:read", "invoices:write"]
        .iter()
        .map(|name| CatalogEntry {
            name: (*name).into(),
            description: String::new(),
            public: false,
        })
        .collect();
    let catalog = ScopeCatalog::build(&entries, &BTreeMap::new(), false).unwrap();
    let routes: Vec<RouteConfig> = serde_json::from_str(
        r#"[
            {"path": "/public/**", "auth": "none"},
            {"path": "/admin/**", "scopes": ["admin:write"]},
            {"methods": ["GET"], "path": "/invoices/{id}", "scopes": ["invoices:read"]},
            {"path": "/invoices/**", "scopes": ["invoices:write"]}
        ]"#,
    )
    .unwrap();
    RouteTable::compile(&routes, DefaultRoute::Authenticated, &catalog).unwrap()
}

/// Every escape decoded, lossily.
fn decode_all(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap();
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a lenient upstream serves for a raw path: `;` parameters stripped from each
/// segment (as Tomcat, Jetty and Spring do), every escape decoded (`%2F` included), `\`
/// read as `/`, empty segments dropped and dot segments resolved (never above the root),
/// and, for a case-insensitive upstream, case folded.
fn upstream_view(raw: &str, fold_case: bool) -> String {
    let stripped: Vec<&str> = raw
        .split('/')
        .map(|s| s.split(';').next().unwrap_or_default())
        .collect();
    let decoded = decode_all(&stripped.join("/")).replace('\\', "/");
    let mut kept: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let path = format!("/{}", kept.join("/"));
    if fold_case {
        path.to_lowercase()
    } else {
        path
    }
}

/// A served path written back as a request path: bytes that are not printable ASCII,
/// and `%`, percent-encoded.
fn encode(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `word` with each letter's case and spelling (as is, `%XX` or `%xx`) chosen by `flips`.
fn spell(word: &str, flips: &[(bool, bool, bool)]) -> String {
    let mut out = String::new();
    for (i, c) in word.chars().enumerate() {
        let (upper, encode, lower_hex) = flips[i % flips.len()];
        let c = if upper { c.to_ascii_uppercase() } else { c };
        if encode {
            let hex = format!("{:02X}", c as u32);
            out.push('%');
            out.push_str(&if lower_hex { hex.to_lowercase() } else { hex });
        } else {
            out.push(c);
        }
    }
    out
}

fn word_from(words: Vec<&'static str>) -> impl Strategy<Value = String> {
    (
        select(words),
        prop::collection::vec(
            (any::<bool>(), prop::bool::weighted(0.2), any::<bool>()),
            1..6,
        ),
    )
        .prop_map(|(w, flips)| spell(w, &flips))
}

fn word() -> impl Strategy<Value = String> {
    word_from(vec!["admin", "public", "invoices", "secret", "x", "1"])
}

/// One segment (or a few, joined by an encoded separator) of a generated path.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => word(),
        1 => Just(String::new()),
        2 => select(vec![".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2E.", "..."]).prop_map(String::from),
        1 => (word(), select(vec![";", ";x=1", ";jsessionid=a"])).prop_map(|(w, p)| w + p),
        1 => select(vec!["..;", ".;x", "%3b", "x%3By", "..%3b"]).prop_map(String::from),
        1 => (word(), select(vec!["%2f", "%2F", "%5c", "%5C", "\\"]), word())
            .prop_map(|(a, s, b)| format!("{a}{s}{b}")),
        1 => select(vec!["%c0%ae", "%c0%ae%c0%ae", "caf%c3%a9", "%ef%bc%8f", "%ef%bc%8e%ef%bc%8e", "%e2%88%95", "%00", "a%zz", "%2"])
            .prop_map(String::from),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(piece(), 0..8), any::<bool>()).prop_map(|(pieces, trailing)| {
        let mut p = format!("/{}", pieces.join("/"));
        if trailing {
            p.push('/');
        }
        p
    })
}

/// Something a client may put before a real segment without changing what a lenient
/// upstream serves: nothing, `//`, `/./`, or a detour that climbs back.
fn noise() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec![String::new()]),
        1 => select(vec![".", "%2e", "%2E"]).prop_map(|d| vec![d.to_string()]),
        2 => (word(), select(vec!["..", "%2e%2e", ".%2E", "%2E."]))
            .prop_map(|(w, up)| vec![w, up.to_string()]),
        1 => (word(), word()).prop_map(|(a, b)| vec![a, String::new(), b, "..".into(), "..".into()]),
    ]
}

/// A spelling of `/admin/secret`: each real segment in any case and escapes, noise
/// before each, and maybe a `;` parameter or an encoded separator between them.
fn admin_variant() -> impl Strategy<Value = String> {
    (
        noise(),
        word_from(vec!["admin"]),
        noise(),
        word_from(vec!["secret"]),
        select(vec!["", "", "", ";", ";x=1"]),
        select(vec!["/", "/", "/", "%2f", "%2F"]),
        any::<bool>(),
    )
        .prop_map(|(n1, admin, n2, secret, param, sep, trailing)| {
            let mut p = String::new();
            for n in &n1 {
                p.push('/');
                p.push_str(n);
            }
            p.push('/');
            p.push_str(&admin);
            if sep == "/" {
                // (A parameter before an encoded separator would swallow it.)
                p.push_str(param);
                for n in &n2 {
                    p.push('/');
                    p.push_str(n);
                }
            }
            p.push_str(sep);
            p.push_str(&secret);
            if trailing {
                p.push('/');
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_decided_path_is_the_forwarded_path(raw in path()) {
        let table = table();
        for method in ["GET", "POST", "DELETE"] {
            if let Ok(routed) = table.route(method, &raw) {
                // What is forwarded is canonical and decides the same way again.
                let again = table.route(method, &routed.path).unwrap();
                prop_assert_eq!(&again.path, &routed.path, "{}", raw);
                prop_assert_eq!(&again.decision, &routed.decision, "{}", raw);
                prop_assert_eq!(canonical_path(&routed.path).unwrap(), routed.path.clone());
                prop_assert!(!routed.path.contains("//") && !routed.path.contains(';'));
                // A lenient upstream serves, for the raw path and for the forwarded one,
                // a path the rules decide the same way.
                let served = upstream_view(&raw, true);
                prop_assert_eq!(upstream_view(&routed.path, true), served.clone(), "{}", raw);
                prop_assert_eq!(
                    table.resolve(method, &encode(&served)), routed.decision.clone(),
                    "{} is served as {}", raw, served
                );
            } else {
                prop_assert_eq!(table.resolve(method, &raw), RouteDecision::Deny);
            }
        }
    }

    #[test]
    fn case_sensitive_matching_agrees_with_a_case_sensitive_upstream(raw in path()) {
        let table = table().case_sensitive(true);
        if let Ok(routed) = table.route("GET", &raw) {
            let served = upstream_view(&raw, false);
            prop_assert_eq!(table.resolve("GET", &encode(&served)), routed.decision, "{}", raw);
        }
    }

    #[test]
    fn no_spelling_of_a_protected_path_is_allowed(raw in admin_variant()) {
        prop_assert_eq!(upstream_view(&raw, true), "/admin/secret", "{}", raw);
        let table = table();
        for method in ["GET", "POST", "HEAD"] {
            match table.route(method, &raw) {
                Err(_) => {}
                Ok(routed) => {
                    match &routed.decision {
                        RouteDecision::Require { names, .. } => {
                            prop_assert_eq!(names, &vec!["admin:write".to_string()], "{}", raw);
                        }
                        other => prop_assert!(false, "{} is decided as {:?}", raw, other),
                    }
                    prop_assert!(routed.path.eq_ignore_ascii_case("/admin/secret")
                        || routed.path.eq_ignore_ascii_case("/admin/secret/"), "{}", routed.path);
                }
            }
        }
    }
}
