//! Recognising leaked keys (docs/leaked-keys.md): which token types a secret-scanning
//! report may name, and finding the deployment's keys in arbitrary text, offline.
//!
//! A key is found in two steps: the templates' regular expression proposes a candidate,
//! then the template's own parser checks its shape and CRC32 checksum. Text that merely
//! looks like a key (a changed character, a truncated copy, an example in documentation
//! with a made-up checksum) is dropped by the second step, so what is reported is almost
//! surely a key this deployment made.

use crate::model::Mode;
use crate::secret::Secret;
use crate::template::KeyTemplate;
use std::fmt;

/// Whether `kind`, a token type named by a report, is one of the configured `types`.
/// Case is ignored: scanners are not consistent about it.
pub fn accepts_type(types: &[String], kind: &str) -> bool {
    types.iter().any(|t| t.eq_ignore_ascii_case(kind))
}

/// A key found in text.
#[derive(Clone)]
pub struct Found {
    /// Byte offset of its first character.
    pub offset: usize,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in bytes.
    pub column: usize,
    /// Its display start (prefix and the first random characters): safe to print.
    pub start: String,
    /// Its mode, when the template carries one.
    pub mode: Option<Mode>,
    /// The whole token, for reporting it; never printed.
    pub token: Secret,
}

impl fmt::Debug for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Found")
            .field("line", &self.line)
            .field("column", &self.column)
            .field("start", &self.start)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Finds keys of a set of templates (the configured one first, then the legacy ones) in
/// text. Built once; [`KeyFinder::find`] can run on many threads at once.
#[derive(Clone, Debug)]
pub struct KeyFinder {
    templates: Vec<KeyTemplate>,
    candidates: regex::bytes::Regex,
}

impl KeyFinder {
    /// A finder for keys of any of `templates`.
    ///
    /// # Panics
    ///
    /// Never for compiled templates, whose expressions are always valid.
    pub fn new(templates: Vec<KeyTemplate>) -> KeyFinder {
        let pattern = templates
            .iter()
            .map(KeyTemplate::regex)
            .collect::<Vec<_>>()
            .join("|");
        let candidates = regex::bytes::RegexBuilder::new(&pattern)
            .unicode(false)
            .build()
            .expect("a compiled template's expression is valid");
        KeyFinder {
            templates,
            candidates,
        }
    }

    /// The templates searched for.
    pub fn templates(&self) -> &[KeyTemplate] {
        &self.templates
    }

    /// Every key in `text`, in order, each verified by its template's checksum.
    pub fn find(&self, text: &[u8]) -> Vec<Found> {
        let mut out = Vec::new();
        let mut at = 0;
        let (mut line, mut line_start, mut counted) = (1, 0, 0);
        while let Some(m) = self.candidates.find_at(text, at) {
            let parsed = std::str::from_utf8(m.as_bytes())
                .ok()
                .and_then(|token| self.templates.iter().find_map(|t| t.parse(token).ok()));
            let Some(parsed) = parsed else {
                // Not a key: the real one may start inside this match (a key glued to
                // text of its own alphabet), so look again one byte further.
                at = m.start() + 1;
                continue;
            };
            for (i, &b) in text[counted..m.start()].iter().enumerate() {
                if b == b'\n' {
                    line += 1;
                    line_start = counted + i + 1;
                }
            }
            counted = m.start();
            out.push(Found {
                offset: m.start(),
                line,
                column: m.start() - line_start + 1,
                start: parsed.start(),
                mode: parsed.mode,
                token: Secret::new(String::from_utf8_lossy(m.as_bytes()).into_owned()),
            });
            at = m.end();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KeyType;
    use crate::template::TemplateTags;

    fn template(src: &str) -> KeyTemplate {
        KeyTemplate::compile(src, &TemplateTags::default()).unwrap()
    }

    fn default_template() -> KeyTemplate {
        template("kw_{type}_{mode}_{random:32}{checksum}")
    }

    /// `token` with its last checksum character changed.
    fn broken(token: &str) -> String {
        let mut s = token.to_string();
        let last = s.pop().unwrap();
        s.push(if last == 'a' { 'b' } else { 'a' });
        s
    }

    #[test]
    fn the_pattern_matches_every_combination_and_escapes_the_fixed_text() {
        let t = default_template();
        let re = regex::Regex::new(&format!("^{}$", t.regex())).unwrap();
        for mode in [Mode::Live, Mode::Test] {
            for kind in [KeyType::Secret, KeyType::Publishable] {
                let token = t.generate(mode, kind);
                assert!(re.is_match(token.expose()), "{mode} {kind}");
            }
        }
        assert!(!re.is_match("kw_sk_prod_0123456789abcdef0123456789abcdef012345"));
        assert_eq!(
            template("sk.{random:32:hex}").regex(),
            r"(?:sk\.[0-9a-f]{32})"
        );
    }

    #[test]
    fn finds_real_keys_with_their_lines_and_drops_look_alikes() {
        let t = default_template();
        let live = t.generate(Mode::Live, KeyType::Secret);
        let test = t.generate(Mode::Test, KeyType::Publishable);
        let fake = broken(live.expose());
        let text = format!(
            "first line\nAPI_KEY={}\n# example: {fake}\n  key: \"{}\" trailing\n",
            live.expose(),
            test.expose()
        );
        let found = KeyFinder::new(vec![t]).find(text.as_bytes());
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (2, 9));
        assert_eq!(found[0].token.expose(), live.expose());
        assert_eq!(found[0].start, live.expose()[..15]);
        assert_eq!(found[0].mode, Some(Mode::Live));
        assert_eq!((found[1].line, found[1].column), (4, 9));
        assert_eq!(found[1].mode, Some(Mode::Test));
        // Nothing of the secret in a debug print.
        assert!(!format!("{found:?}").contains(&live.expose()[15..]));
    }

    #[test]
    fn a_key_glued_to_text_of_its_alphabet_is_still_found() {
        let t = template("{random:32}{checksum}");
        let key = t.generate(Mode::Live, KeyType::Secret);
        let text = format!("xyz{}", key.expose());
        let found = KeyFinder::new(vec![t]).find(text.as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].offset, 3);
    }

    #[test]
    fn legacy_templates_are_searched_too() {
        let current = default_template();
        let legacy = template("old_{random:40}{checksum}");
        let old = legacy.generate(Mode::Live, KeyType::Secret);
        let found = KeyFinder::new(vec![current, legacy]).find(old.expose().as_bytes());
        assert_eq!(found.len(), 1);
        assert!(found[0].start.starts_with("old_"));
    }

    #[test]
    fn token_types_match_without_regard_to_case() {
        let types = vec!["keywarden_api_key".to_string()];
        assert!(accepts_type(&types, "Keywarden_API_Key"));
        assert!(!accepts_type(&types, "other_token"));
    }
}
