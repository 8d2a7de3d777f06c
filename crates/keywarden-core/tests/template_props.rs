//! Properties of key templates: every generated token parses back to what it was made as,
//! and any single-character change to a checksummed token is refused.

use keywarden_core::model::{KeyType, Mode};
use keywarden_core::template::{KeyTemplate, TemplateTags, TokenError};
use proptest::prelude::*;
use std::sync::LazyLock;

/// The templates of `docs/concepts.md#key-format-and-templates` and of the profiles, with the tags each is used with.
static TEMPLATES: LazyLock<Vec<KeyTemplate>> = LazyLock::new(|| {
    let falco = TemplateTags {
        live: "l".into(),
        test: "t".into(),
        secret: "s".into(),
        publishable: "p".into(),
    };
    let default = TemplateTags::default();
    [
        ("kw_{type}_{mode}_{random:32}{checksum}", &default),
        ("fact_{mode}_{random:24}", &default),
        ("fal_{random:24}", &default),
        ("{random:20}", &default),
        ("f{type}k{mode}_{random:43}", &falco),
    ]
    .into_iter()
    .map(|(source, tags)| KeyTemplate::compile(source, tags).unwrap())
    .collect()
});

fn default_template() -> &'static KeyTemplate {
    &TEMPLATES[0]
}

/// Generates a token and checks everything `parse` says about it.
fn round_trip(t: &KeyTemplate, mode: Mode, key_type: KeyType) -> Result<(), TestCaseError> {
    let token = t.generate(mode, key_type);
    let parsed = t.parse(token.expose());
    prop_assert!(parsed.is_ok(), "{}: {:?}", t.source(), parsed);
    let parsed = parsed.unwrap();
    prop_assert_eq!(parsed.mode, t.has_mode().then_some(mode));
    prop_assert_eq!(parsed.key_type, t.has_type().then_some(key_type));
    prop_assert_eq!(parsed.random.len(), t.random_len());
    prop_assert!(parsed
        .random
        .bytes()
        .all(|b| t.alphabet().chars().contains(&b)));
    prop_assert_eq!(parsed.prefix, t.prefix(mode, key_type));
    prop_assert!(token.expose().starts_with(&t.prefix(mode, key_type)));
    prop_assert!(parsed.start().starts_with(parsed.prefix));
    prop_assert_eq!(parsed.start().len(), parsed.prefix.len() + 4);
    prop_assert_eq!(parsed.lookup_segment(), &parsed.random[..8]);
    prop_assert!(token.len() <= t.max_len());
    Ok(())
}

#[test]
fn every_template_mode_and_type_round_trips() {
    for t in TEMPLATES.iter() {
        for &mode in Mode::ALL {
            for &key_type in KeyType::ALL {
                round_trip(t, mode, key_type).unwrap();
            }
        }
    }
}

/// An independent CRC32-in-base62 encoder, to hold the module to the spec.
fn spec_checksum(body: &str) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut out = Vec::new();
    for _ in 0..6 {
        out.push(DIGITS[(value % 62) as usize]);
        value /= 62;
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

proptest! {
    #[test]
    fn generated_tokens_round_trip(
        index in 0..5usize,
        mode in prop::sample::select(Mode::ALL),
        key_type in prop::sample::select(KeyType::ALL),
    ) {
        round_trip(&TEMPLATES[index], mode, key_type)?;
    }

    #[test]
    fn hand_assembled_tokens_parse_to_their_parts(
        random in "[0-9A-Za-z]{32}",
        mode in prop::sample::select(Mode::ALL),
        key_type in prop::sample::select(KeyType::ALL),
    ) {
        let t = default_template();
        let body = format!("{}{random}", t.prefix(mode, key_type));
        let token = format!("{body}{}", spec_checksum(&body));
        let parsed = t.parse(&token).unwrap();
        prop_assert_eq!(parsed.random, random.as_str());
        prop_assert_eq!((parsed.mode, parsed.key_type), (Some(mode), Some(key_type)));
    }

    #[test]
    fn any_single_character_change_is_refused(
        mode in prop::sample::select(Mode::ALL),
        key_type in prop::sample::select(KeyType::ALL),
        position in any::<prop::sample::Index>(),
        replacement in prop_oneof![proptest::char::range('!', '~'), any::<char>()],
    ) {
        let t = default_template();
        let token = t.generate(mode, key_type);
        let original: Vec<char> = token.expose().chars().collect();
        let at = position.index(original.len());
        prop_assume!(original[at] != replacement);
        let mut changed = original.clone();
        changed[at] = replacement;
        let changed: String = changed.into_iter().collect();
        let result = t.parse(&changed).map(|p| (p.mode, p.key_type));
        prop_assert!(result.is_err(), "accepted a change at {}: {:?}", at, result);
        let prefix_len = t.prefix(mode, key_type).len();
        if at >= prefix_len && replacement.is_ascii_alphanumeric() {
            // Same shape, different bytes: only the checksum can catch it.
            prop_assert_eq!(result, Err(TokenError::BadChecksum));
        }
    }

    #[test]
    fn arbitrary_input_never_panics(input in any::<String>()) {
        for t in TEMPLATES.iter() {
            if let Ok(p) = t.parse(&input) {
                prop_assert!(input.starts_with(p.prefix));
            }
        }
    }

    #[test]
    fn truncated_or_extended_tokens_are_malformed(cut in 1..49usize, extra in "[0-9A-Za-z_]{1,4}") {
        let t = default_template();
        let token = t.generate(Mode::Live, KeyType::Secret);
        let exposed = token.expose();
        prop_assert_eq!(t.parse(&exposed[..exposed.len() - cut]).err(), Some(TokenError::Malformed));
        prop_assert_eq!(t.parse(&format!("{exposed}{extra}")).err(), Some(TokenError::Malformed));
    }
}
