//! Properties of scope catalogs, checked on randomly generated catalogs and aliases:
//! alias expansion agrees with a naive model and is idempotent (compiling the names of a
//! compiled set gives the same set), compiling is a union, and subset is a partial order.
//! Also builds Falco's catalog and aliases as its reference document states them.

use keywarden_core::scopes::{
    is_subset, CatalogEntry, ScopeCatalog, ScopeName, ScopeSet, BUILTIN_SCOPES,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// A generated `[scopes]` section, plus every name a key could be granted under it.
#[derive(Clone, Debug)]
struct Config {
    /// The catalog entries.
    entries: Vec<CatalogEntry>,
    /// The aliases.
    aliases: BTreeMap<String, Vec<String>>,
    /// Unit names, alias names, matching `prefix:*` patterns and `*`.
    grantable: Vec<String>,
}

/// One generated alias member: a kind, an index into that kind, and whether to add `?`.
type MemberSeed = (u8, usize, bool);

/// Turns raw random numbers into a valid, acyclic configuration.
///
/// Units are `g<i % 3>:s<i>`, so they share three prefixes. Alias `k` is named `a<k>`, or
/// takes the name of unit `n - 1 - k` (making that name both a unit and an alias) when
/// `both` says so. Its members refer only to aliases made before it (or to itself as a
/// unit), which keeps the graph acyclic; it always lists unit 0, so it is never empty.
fn make_config(units: usize, aliases: Vec<(bool, Vec<MemberSeed>)>) -> Config {
    let unit_names: Vec<String> = (0..units).map(|i| format!("g{}:s{i}", i % 3)).collect();
    let mut alias_names: Vec<String> = Vec::new();
    for (k, (both, _)) in aliases.iter().enumerate() {
        let unit = units.checked_sub(1 + k).filter(|u| *both && *u > 0);
        alias_names.push(match unit {
            Some(u) => unit_names[u].clone(),
            None => format!("a{k}"),
        });
    }
    let prefix_matches = |p: usize| (0..units).any(|i| i % 3 == p);
    let mut alias_map = BTreeMap::new();
    for (k, (_, seeds)) in aliases.iter().enumerate() {
        let mut members = vec![unit_names[0].clone()];
        for (kind, index, optional) in seeds {
            let mark = if *optional { "?" } else { "" };
            let member = match kind % 4 {
                // A unit, unless that unit is also a later alias (which could close a loop).
                0 => {
                    let name = &unit_names[index % units];
                    let later = alias_names[k + 1..].contains(name);
                    (!later).then(|| format!("{name}{mark}"))
                }
                1 if k > 0 => Some(format!("{}{mark}", alias_names[index % k])),
                2 => {
                    let p = index % 3;
                    let mark = if prefix_matches(p) { mark } else { "?" };
                    Some(format!("g{p}:*{mark}"))
                }
                3 => Some(format!("missing:m{index}?")),
                _ => None,
            };
            members.extend(member);
        }
        alias_map.insert(alias_names[k].clone(), members);
    }
    let entries = unit_names
        .iter()
        .enumerate()
        .map(|(i, name)| CatalogEntry {
            name: name.clone(),
            description: format!("Scope {i}."),
            public: i % 2 == 0,
        })
        .collect();
    let mut grantable: Vec<String> = unit_names.clone();
    grantable.extend(BUILTIN_SCOPES.iter().map(|(n, _)| n.to_string()));
    grantable.extend(alias_names);
    grantable.extend(
        (0..3)
            .filter(|p| prefix_matches(*p))
            .map(|p| format!("g{p}:*")),
    );
    grantable.push("api_keys:*".into());
    grantable.push("*".into());
    grantable.sort();
    grantable.dedup();
    Config {
        entries,
        aliases: alias_map,
        grantable,
    }
}

/// A random configuration.
fn config() -> impl Strategy<Value = Config> {
    let member = (0u8..4, 0usize..32, any::<bool>());
    let alias = (any::<bool>(), prop::collection::vec(member, 0..5));
    (1usize..14, prop::collection::vec(alias, 0..8))
        .prop_map(|(units, aliases)| make_config(units, aliases))
}

/// Picks grants from `grantable` by the given indices.
fn pick(config: &Config, indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|i| config.grantable[i % config.grantable.len()].clone())
        .collect()
}

/// The naive meaning of granting `name`, straight from the configuration: the unit
/// scopes reachable from it, where an alias leads to its members, `prefix:*` to the units
/// under the prefix, and a unit that is also an alias to that alias's members.
fn model(config: &Config, name: &str) -> BTreeSet<String> {
    let units: Vec<String> = BUILTIN_SCOPES
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(config.entries.iter().map(|e| e.name.clone()))
        .collect();
    if name == "*" {
        return units.into_iter().collect();
    }
    let next = |node: &str| -> Vec<String> {
        if let Some(prefix) = node.strip_suffix('*') {
            return units
                .iter()
                .filter(|u| u.starts_with(prefix))
                .cloned()
                .collect();
        }
        let members = config.aliases.get(node).into_iter().flatten();
        members
            .map(|m| m.trim_end_matches('?').to_owned())
            .collect()
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut pending = vec![name.to_owned()];
    while let Some(node) = pending.pop() {
        if seen.insert(node.clone()) {
            pending.extend(next(&node));
        }
    }
    seen.into_iter().filter(|n| units.contains(n)).collect()
}

/// Builds the catalog of a generated configuration.
fn build(config: &Config) -> ScopeCatalog {
    ScopeCatalog::build(&config.entries, &config.aliases, true)
        .unwrap_or_else(|e| panic!("{config:?}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The bitset expansion of every grantable name matches the naive model.
    #[test]
    fn expansion_matches_the_model(config in config()) {
        let catalog = build(&config);
        for name in &config.grantable {
            let set = catalog.compile(&[name]).unwrap();
            let got: BTreeSet<String> = catalog.names(&set).into_iter().map(String::from).collect();
            prop_assert_eq!(got, model(&config, name), "granting {}", name);
        }
    }

    /// Compiling the unit names of a compiled set gives the same set back, and so does
    /// requiring them: expansion is idempotent.
    #[test]
    fn expansion_is_idempotent(config in config(), indices in prop::collection::vec(any::<usize>(), 0..8)) {
        let catalog = build(&config);
        let set = catalog.compile(&pick(&config, &indices)).unwrap();
        let names = catalog.names(&set);
        prop_assert_eq!(&catalog.compile(&names).unwrap(), &set);
        prop_assert_eq!(&catalog.required(&names).unwrap(), &set);
        prop_assert_eq!(names.len(), set.len());
    }

    /// Compiling a list is the union of compiling its parts, so more grants never give less.
    #[test]
    fn compile_is_a_union(
        config in config(),
        a in prop::collection::vec(any::<usize>(), 0..6),
        b in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let catalog = build(&config);
        let (a, b) = (pick(&config, &a), pick(&config, &b));
        let both: Vec<String> = a.iter().chain(&b).cloned().collect();
        let (sa, sb, sboth) = (
            catalog.compile(&a).unwrap(),
            catalog.compile(&b).unwrap(),
            catalog.compile(&both).unwrap(),
        );
        prop_assert_eq!(&sa.union(&sb), &sboth);
        prop_assert!(is_subset(&sa, &sboth));
        prop_assert!(sboth.contains_all(&sb));
        prop_assert_eq!(sa.intersection(&sboth), sa.clone());
        prop_assert!(sboth.difference(&sa).is_subset_of(&sb));
    }

    /// Subset is reflexive, antisymmetric and transitive, on constructed chains and on
    /// arbitrary triples.
    #[test]
    fn subset_is_a_partial_order(
        config in config(),
        a in prop::collection::vec(any::<usize>(), 0..6),
        b in prop::collection::vec(any::<usize>(), 0..6),
        c in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let catalog = build(&config);
        let set = |i: &[usize]| catalog.compile(&pick(&config, i)).unwrap();
        let (sa, sb, sc) = (set(&a), set(&b), set(&c));
        for s in [&sa, &sb, &sc] {
            prop_assert!(is_subset(s, s));
        }
        // A chain a ⊆ a∪b ⊆ a∪b∪c.
        let ab = sa.union(&sb);
        let abc = ab.union(&sc);
        prop_assert!(is_subset(&sa, &ab) && is_subset(&ab, &abc));
        prop_assert!(is_subset(&sa, &abc));
        // Any triple.
        if is_subset(&sa, &sb) && is_subset(&sb, &sc) {
            prop_assert!(is_subset(&sa, &sc));
        }
        if is_subset(&sa, &sb) && is_subset(&sb, &sa) {
            prop_assert_eq!(&sa, &sb);
        }
        prop_assert!(is_subset(&ScopeSet::default(), &sa));
        prop_assert!(is_subset(&sa, catalog.all_scopes()));
    }

    /// The name grammar: accepted exactly when every `:`-separated segment is non-empty
    /// `[a-z0-9_]` and the whole is at most 128 bytes.
    #[test]
    fn name_grammar(s in "[a-z0-9_:A-Z*?-]{0,12}|[a-z:]{120,136}") {
        let valid = !s.is_empty()
            && s.len() <= 128
            && s.split(':').all(|seg| {
                !seg.is_empty() && seg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        prop_assert_eq!(ScopeName::parse(&s).is_ok(), valid, "{:?}", s);
    }
}

/// Falco's unit scopes, from its authentication reference.
const FALCO_SCOPES: &[(&str, &str)] = &[
    ("customers:read", "Read/search/list customers and fetch a single customer's details."),
    ("customers:write", "Create or update customers (names, identifiers, addresses, contacts, etc.)."),
    ("customers:delete", "Delete a customer record (soft delete if supported)."),
    ("articles:read", "Read/search/list articles (products/services) and fetch a single article's details."),
    ("articles:write", "Create or update articles (reference, description, pricing, VAT rate, etc.)."),
    ("invoices:read", "Read/search/list invoices and fetch a single invoice (metadata, lines, totals, status)."),
    ("invoices:write", "Create or update invoices (including rows, VAT, payment info)."),
    ("invoices:attachments:read", "List/download attachments associated with an invoice."),
    ("invoices:attachments:write", "Upload/replace/delete attachments on an invoice."),
    ("invoices:send", "Dispatch an invoice (e.g., submit over Peppol / mark as sent)."),
    ("invoices:ingest:ubl", "Upload a pre-built UBL invoice for validation/storage and optional sending."),
    ("invoices:ingest:pdf", "Upload a PDF invoice with required metadata so Falco generates a valid UBL, then optionally send."),
    ("peppol:participants:read", "Check whether a recipient is registered on Peppol (participant lookup)."),
];

/// Falco's aggregate scopes; `invoices:delete` is only added "if enabled", so optional.
const FALCO_ALIASES: &[(&str, &[&str])] = &[
    ("customers:write", &["customers:read", "customers:write"]),
    ("articles:write", &["articles:read", "articles:write"]),
    (
        "invoices:write",
        &[
            "invoices:read",
            "invoices:write",
            "invoices:attachments:read",
            "invoices:attachments:write",
            "invoices:delete?",
        ],
    ),
    (
        "invoices:attachments:write",
        &["invoices:attachments:read", "invoices:attachments:write"],
    ),
];

/// Builds Falco's catalog, optionally with `invoices:delete` enabled.
fn falco(with_delete: bool) -> ScopeCatalog {
    let mut entries: Vec<CatalogEntry> = FALCO_SCOPES
        .iter()
        .map(|(name, description)| CatalogEntry {
            name: (*name).into(),
            description: (*description).into(),
            public: false,
        })
        .collect();
    if with_delete {
        entries.push(CatalogEntry {
            name: "invoices:delete".into(),
            description: "Delete an invoice.".into(),
            public: false,
        });
    }
    let aliases = FALCO_ALIASES
        .iter()
        .map(|(a, m)| (a.to_string(), m.iter().map(|s| s.to_string()).collect()))
        .collect();
    ScopeCatalog::build(&entries, &aliases, true).unwrap()
}

#[test]
fn falco_catalog_from_the_reference() {
    let catalog = falco(false);
    assert_eq!(catalog.len(), BUILTIN_SCOPES.len() + FALCO_SCOPES.len());
    let listed: Vec<(&str, &str)> = catalog
        .entries()
        .skip(BUILTIN_SCOPES.len())
        .map(|(n, d, _)| (n, d))
        .collect();
    assert_eq!(listed, FALCO_SCOPES);

    // (grant, effective unit scopes in catalog order)
    let cases: &[(&str, &[&str])] = &[
        ("customers:read", &["customers:read"]),
        ("customers:write", &["customers:read", "customers:write"]),
        ("articles:write", &["articles:read", "articles:write"]),
        (
            "invoices:attachments:write",
            &["invoices:attachments:read", "invoices:attachments:write"],
        ),
        (
            "invoices:write",
            &[
                "invoices:read",
                "invoices:write",
                "invoices:attachments:read",
                "invoices:attachments:write",
            ],
        ),
        (
            "invoices:ingest:*",
            &["invoices:ingest:ubl", "invoices:ingest:pdf"],
        ),
        ("peppol:participants:read", &["peppol:participants:read"]),
    ];
    for (grant, expected) in cases {
        let set = catalog.compile(&[grant]).unwrap();
        assert_eq!(catalog.names(&set), *expected, "granting {grant}");
    }

    // A route needing `customers:write` needs the unit only: the aggregate is a grant.
    let need = catalog.required(&["customers:write"]).unwrap();
    assert_eq!(catalog.names(&need), ["customers:write"]);
    let reader = catalog.compile(&["customers:read"]).unwrap();
    assert!(!reader.contains_all(&need));
    assert!(catalog
        .compile(&["customers:write"])
        .unwrap()
        .contains_all(&need));

    // `invoices:delete` is not in Falco's catalog, so it is neither grantable nor implied.
    let err = catalog
        .compile(&["invoices:delete", "invoices:void"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown scopes: invoices:delete, invoices:void"
    );

    // An application granted a subset of what it requested.
    let requested = catalog
        .compile(&["invoices:write", "customers:read"])
        .unwrap();
    let granted = catalog.compile(&["invoices:attachments:write"]).unwrap();
    assert!(is_subset(&granted, &requested));
    assert!(!is_subset(&requested, &granted));
}

#[test]
fn falco_invoices_write_includes_delete_when_enabled() {
    let catalog = falco(true);
    let set = catalog.compile(&["invoices:write"]).unwrap();
    assert_eq!(
        catalog.names(&set),
        [
            "invoices:read",
            "invoices:write",
            "invoices:attachments:read",
            "invoices:attachments:write",
            "invoices:delete"
        ]
    );
}
