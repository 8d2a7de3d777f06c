//! Key templates (`docs/concepts.md#key-format-and-templates`): what a deployment's API keys look like, how new ones are made
//! and how a presented token is taken apart again.
//!
//! A template such as `kw_{type}_{mode}_{random:32}{checksum}` is compiled once, at startup.
//! Once a mode and a key type are chosen every part of it has a fixed length, so each
//! mode/type combination describes tokens of one length in which every position allows a
//! fixed set of characters. Compilation uses that to prove that no token can be read as two
//! different combinations; parsing uses it to check a token with a few byte comparisons and
//! one CRC, without allocating, before anything in the token is believed.

use crate::model::{KeyType, Mode};
use crate::secret::Secret;
use std::fmt;
use zeroize::Zeroizing;

/// The fewest bits of randomness a template may carry (`docs/concepts.md#key-format-and-templates`).
pub const MIN_RANDOM_BITS: f64 = 112.0;

/// The longest random part a template may ask for. Past this a token gains nothing but
/// length, which every header it travels in pays for.
pub const MAX_RANDOM_LEN: usize = 256;

/// How many characters `{checksum}` takes: CRC32 written in base62, zero-padded.
pub const CHECKSUM_LEN: usize = 6;

/// How many random characters [`ParsedToken::start`] shows.
const START_LEN: usize = 4;

/// How many random characters [`ParsedToken::lookup_segment`] returns.
const LOOKUP_LEN: usize = 8;

/// Digits of base62, in value order; also the checksum's digits.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Lower-case hexadecimal digits.
const HEX: &[u8; 16] = b"0123456789abcdef";
/// The RFC 4648 base32 alphabet in lower case.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A set of ASCII characters as a bit mask: bit `b` is set when byte `b` belongs to the set.
/// Every character a template can produce is ASCII, so one `u128` describes any position.
type CharClass = u128;

const fn class_of(chars: &[u8]) -> CharClass {
    let mut class = 0;
    let mut i = 0;
    while i < chars.len() {
        class |= 1 << chars[i];
        i += 1;
    }
    class
}

const BASE62_CLASS: CharClass = class_of(BASE62);
const HEX_CLASS: CharClass = class_of(HEX);
const BASE32_CLASS: CharClass = class_of(BASE32);

/// Whether `b` is in `0-9A-Za-z`, as arithmetic the compiler can vectorise.
#[inline(always)]
fn is_base62(b: u8) -> bool {
    (b.wrapping_sub(b'0') < 10) | ((b | 0x20).wrapping_sub(b'a') < 26)
}

/// Whether `b` is in `0-9a-f`.
#[inline(always)]
fn is_hex(b: u8) -> bool {
    (b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6)
}

/// Whether `b` is in `a-z2-7`.
#[inline(always)]
fn is_base32(b: u8) -> bool {
    (b.wrapping_sub(b'a') < 26) | (b.wrapping_sub(b'2') < 6)
}

/// Whether two short byte strings are equal, compared inline: the fixed parts of a token
/// are a few bytes long, too short to be worth a call to `memcmp`.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Whether every byte of `bytes` passes `test`. It never stops early, so the loop has no
/// branches and the compiler turns it into a few vector instructions.
#[inline(always)]
fn all_bytes(bytes: &[u8], test: impl Fn(u8) -> bool) -> bool {
    bytes.iter().fold(0u8, |bad, &b| bad | u8::from(!test(b))) == 0
}

/// The characters a random part is drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alphabet {
    /// `0-9A-Za-z`, the default: the densest alphabet that survives URLs, headers and
    /// double-click selection.
    Base62,
    /// `0-9a-f`, for systems whose keys are hex strings.
    Hex,
    /// `a-z2-7` (RFC 4648 in lower case), for keys that must be case-insensitive.
    Base32,
}

impl Alphabet {
    /// The characters, in value order.
    pub fn chars(self) -> &'static [u8] {
        match self {
            Alphabet::Base62 => BASE62,
            Alphabet::Hex => HEX,
            Alphabet::Base32 => BASE32,
        }
    }

    /// How many bits of randomness one uniformly drawn character carries.
    pub fn bits_per_char(self) -> f64 {
        (self.chars().len() as f64).log2()
    }

    /// The name used in a template, as in `{random:32:hex}`.
    pub fn name(self) -> &'static str {
        match self {
            Alphabet::Base62 => "base62",
            Alphabet::Hex => "hex",
            Alphabet::Base32 => "base32",
        }
    }

    fn class(self) -> CharClass {
        match self {
            Alphabet::Base62 => BASE62_CLASS,
            Alphabet::Hex => HEX_CLASS,
            Alphabet::Base32 => BASE32_CLASS,
        }
    }

    /// Whether every byte of `bytes` belongs to the alphabet: the hot-path form of
    /// [`Alphabet::chars`].
    #[inline(always)]
    fn contains_all(self, bytes: &[u8]) -> bool {
        match self {
            Alphabet::Base62 => all_bytes(bytes, is_base62),
            Alphabet::Hex => all_bytes(bytes, is_hex),
            Alphabet::Base32 => all_bytes(bytes, is_base32),
        }
    }
}

/// The text `{mode}` and `{type}` stand for. The tags are configurable because the systems
/// Keywarden reproduces spell them differently (`live`/`test`, `l`/`t`, `sk`/`pk`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateTags {
    /// What `{mode}` becomes in a live key.
    pub live: String,
    /// What `{mode}` becomes in a test key.
    pub test: String,
    /// What `{type}` becomes in a secret key.
    pub secret: String,
    /// What `{type}` becomes in a publishable key.
    pub publishable: String,
}

impl Default for TemplateTags {
    fn default() -> Self {
        Self {
            live: "live".into(),
            test: "test".into(),
            secret: "sk".into(),
            publishable: "pk".into(),
        }
    }
}

impl TemplateTags {
    /// The tag `{mode}` becomes for `mode`.
    pub fn mode(&self, mode: Mode) -> &str {
        match mode {
            Mode::Live => &self.live,
            Mode::Test => &self.test,
        }
    }

    /// The tag `{type}` becomes for `key_type`.
    pub fn key_type(&self, key_type: KeyType) -> &str {
        match key_type {
            KeyType::Secret => &self.secret,
            KeyType::Publishable => &self.publishable,
        }
    }

    /// Rejects empty tags, tags with characters a token may not contain, and two modes or
    /// two types sharing a tag: any of these would make the tag say nothing.
    fn validate(&self) -> Result<(), TemplateError> {
        let named = [
            ("live mode", &self.live),
            ("test mode", &self.test),
            ("secret type", &self.secret),
            ("publishable type", &self.publishable),
        ];
        for (tag, value) in named {
            if value.is_empty() {
                return Err(TemplateError::EmptyTag { tag });
            }
            if !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TemplateError::InvalidTag {
                    tag,
                    value: value.clone(),
                });
            }
        }
        if self.live == self.test {
            return Err(TemplateError::SameTags {
                kind: "mode",
                value: self.live.clone(),
            });
        }
        if self.secret == self.publishable {
            return Err(TemplateError::SameTags {
                kind: "type",
                value: self.secret.clone(),
            });
        }
        Ok(())
    }
}

/// Why a template was refused. Each message names the problem precisely, because it is shown
/// to the operator at startup as the reason the configuration does not load.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` with no `}` after it (or with another `{` before its `}`).
    #[error("the `{{` at byte {position} of the template is never closed")]
    UnclosedBrace {
        /// Byte offset of the `{` in the template.
        position: usize,
    },
    /// A `}` that closes nothing.
    #[error("the `}}` at byte {position} of the template has no matching `{{`")]
    UnmatchedCloseBrace {
        /// Byte offset of the `}` in the template.
        position: usize,
    },
    /// Something between braces that is not a placeholder Keywarden knows.
    #[error(
        "unknown placeholder `{{{placeholder}}}`; expected {{random:N}}, {{random:N:hex}}, \
         {{random:N:base32}}, {{mode}}, {{type}} or {{checksum}}"
    )]
    UnknownPlaceholder {
        /// The text between the braces.
        placeholder: String,
    },
    /// A `{random…}` whose length is missing, not a number, zero or too large.
    #[error("`{{{placeholder}}}` needs a length from 1 to {max}, as in {{random:32}}", max = MAX_RANDOM_LEN)]
    InvalidRandomLength {
        /// The text between the braces.
        placeholder: String,
    },
    /// A `{random:N:…}` naming an alphabet Keywarden does not have.
    #[error(
        "unknown alphabet `{alphabet}` in `{{{placeholder}}}`; expected base62, hex or base32"
    )]
    UnknownAlphabet {
        /// The text between the braces.
        placeholder: String,
        /// The alphabet it names.
        alphabet: String,
    },
    /// Literal text with a character a token should not contain: anything but printable,
    /// non-space ASCII breaks headers, copy-paste or the byte-wise parser.
    #[error(
        "the template has {ch:?} at byte {position}; literal text may only use printable \
         ASCII characters other than space"
    )]
    InvalidLiteral {
        /// The offending character.
        ch: char,
        /// Its byte offset in the template.
        position: usize,
    },
    /// `{mode}`, `{type}` or `{checksum}` written twice.
    #[error("`{{{placeholder}}}` appears more than once in the template")]
    DuplicatePlaceholder {
        /// The repeated placeholder's name.
        placeholder: &'static str,
    },
    /// No `{random:N}` at all: every key would be the same.
    #[error("the template has no {{random:N}} part; it needs exactly one")]
    NoRandom,
    /// More than one `{random:N}`: only one random part is supported, so that the lookup
    /// segment and the displayed start are well defined.
    #[error("the template has {count} {{random:N}} parts; it needs exactly one")]
    MultipleRandom {
        /// How many there are.
        count: usize,
    },
    /// `{checksum}` followed by something: the checksum covers everything before it, so
    /// anything after it would go unchecked.
    #[error("{{checksum}} must be the last part of the template")]
    ChecksumNotLast,
    /// Too short a random part to resist guessing (`docs/concepts.md#key-format-and-templates`).
    #[error(
        "template has {bits:.1} bits of randomness; at least {min} are required",
        min = MIN_RANDOM_BITS
    )]
    TooLittleRandomness {
        /// The template's randomness, rounded down to a tenth of a bit.
        bits: f64,
    },
    /// An empty mode or type tag.
    #[error("the {tag} tag is empty")]
    EmptyTag {
        /// Which tag: `live mode`, `test mode`, `secret type` or `publishable type`.
        tag: &'static str,
    },
    /// A tag with a character a token should not contain.
    #[error("the {tag} tag {value:?} may only use printable ASCII characters other than space")]
    InvalidTag {
        /// Which tag: `live mode`, `test mode`, `secret type` or `publishable type`.
        tag: &'static str,
        /// The tag as configured.
        value: String,
    },
    /// Both modes, or both types, share a tag, so the tag cannot tell them apart.
    #[error("both {kind}s use the tag {value:?}; the tags must differ")]
    SameTags {
        /// `mode` or `type`.
        kind: &'static str,
        /// The shared tag.
        value: String,
    },
    /// Some token reads as two different mode/type combinations.
    #[error(
        "the template is ambiguous: `{example}` parses both as {first} and as {second}; \
         make the tags or the text around them tell the keys apart"
    )]
    Ambiguous {
        /// A token that both combinations accept.
        example: String,
        /// The first combination, such as `live secret`.
        first: String,
        /// The second combination.
        second: String,
    },
}

/// Why a presented token was refused. Both become `invalid_api_key` on the wire; they are
/// kept apart for metrics. The messages never include the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    /// The token does not have the template's shape: wrong length, wrong fixed text, an
    /// unknown tag or a character outside its alphabet. Tokens of other templates end here.
    #[error("the token does not have the configured key format")]
    Malformed,
    /// The token has the right shape but its checksum does not match: a typo, a truncated
    /// copy or a guess.
    #[error("the token's checksum does not match")]
    BadChecksum,
}

/// The operating system could not supply random bytes, so no key can be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessUnavailable(getrandom::Error);

/// One part of a template, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Mode,
    Type,
    Random { len: usize, alphabet: Alphabet },
    Checksum,
}

/// The template specialised to one mode/type combination: fixed text, the random part,
/// fixed text, then the checksum if the template has one.
#[derive(Clone, Debug)]
struct Shape {
    mode: Option<Mode>,
    key_type: Option<KeyType>,
    /// Everything before the random part.
    prefix: String,
    /// Everything between the random part and the checksum (or the end).
    suffix: String,
    /// The length of every token of this combination.
    len: usize,
    /// The first (up to) eight bytes of `prefix` as a little-endian word: one comparison
    /// rules out most wrong combinations before any byte loop runs.
    head: u64,
    /// Selects the bytes of `head` that come from the prefix.
    head_mask: u64,
}

impl Shape {
    /// Whether `token` has this shape: length, fixed text and every character's class. The
    /// checksum is not verified here, only that its characters are base62. `head_word` is
    /// the token's first eight bytes as a little-endian word (anything when it is shorter,
    /// as the length check then fails first).
    #[inline(always)]
    fn matches(&self, token: &[u8], head_word: u64, random_len: usize, alphabet: Alphabet) -> bool {
        if token.len() != self.len || head_word & self.head_mask != self.head {
            return false;
        }
        let (head, rest) = token.split_at(self.prefix.len());
        if !same_bytes(head, self.prefix.as_bytes()) {
            return false;
        }
        let (random, rest) = rest.split_at(random_len);
        let (suffix, checksum) = rest.split_at(self.suffix.len());
        same_bytes(suffix, self.suffix.as_bytes())
            && alphabet.contains_all(random)
            && all_bytes(checksum, is_base62)
    }

    /// The class of every position of this combination's tokens, for the ambiguity check.
    fn pattern(&self, random_len: usize, alphabet: Alphabet, checksum: bool) -> Vec<CharClass> {
        let literal = |s: &String| s.bytes().map(|b| 1 << b).collect::<Vec<CharClass>>();
        let mut pattern = literal(&self.prefix);
        pattern.extend(std::iter::repeat_n(alphabet.class(), random_len));
        pattern.extend(literal(&self.suffix));
        if checksum {
            pattern.extend(std::iter::repeat_n(BASE62_CLASS, CHECKSUM_LEN));
        }
        pattern
    }

    /// A human name for the combination, such as `live secret`, `test` or `publishable`.
    fn label(&self) -> String {
        match (self.mode, self.key_type) {
            (Some(m), Some(t)) => format!("{m} {t}"),
            (Some(m), None) => m.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "the only combination".to_string(),
        }
    }
}

/// A compiled key template: makes new tokens and checks presented ones.
#[derive(Clone, Debug)]
pub struct KeyTemplate {
    source: String,
    alphabet: Alphabet,
    random_len: usize,
    checksum: bool,
    has_mode: bool,
    has_type: bool,
    /// One per distinct mode/type combination, modes outer and types inner, each in
    /// declaration order; a template without `{mode}` or `{type}` has fewer.
    shapes: Vec<Shape>,
}

impl KeyTemplate {
    /// Compiles `template` with `tags`, refusing any template that is weak, malformed or
    /// ambiguous (see [`TemplateError`] for every reason).
    pub fn compile(template: &str, tags: &TemplateTags) -> Result<KeyTemplate, TemplateError> {
        let parts = split(template)?;

        for (part, name) in [
            (Part::Mode, "mode"),
            (Part::Type, "type"),
            (Part::Checksum, "checksum"),
        ] {
            if parts.iter().filter(|p| **p == part).count() > 1 {
                return Err(TemplateError::DuplicatePlaceholder { placeholder: name });
            }
        }

        let randoms: Vec<(usize, Alphabet)> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Random { len, alphabet } => Some((*len, *alphabet)),
                _ => None,
            })
            .collect();
        let (random_len, alphabet) = match randoms.as_slice() {
            [] => return Err(TemplateError::NoRandom),
            [one] => *one,
            many => return Err(TemplateError::MultipleRandom { count: many.len() }),
        };

        let checksum_at = parts.iter().position(|p| *p == Part::Checksum);
        if checksum_at.is_some_and(|i| i + 1 != parts.len()) {
            return Err(TemplateError::ChecksumNotLast);
        }

        let bits = random_len as f64 * alphabet.bits_per_char();
        if bits < MIN_RANDOM_BITS {
            return Err(TemplateError::TooLittleRandomness {
                bits: (bits * 10.0).floor() / 10.0,
            });
        }

        tags.validate()?;

        let has_mode = parts.contains(&Part::Mode);
        let has_type = parts.contains(&Part::Type);
        let checksum = checksum_at.is_some();
        let modes: Vec<Option<Mode>> = if has_mode {
            Mode::ALL.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        let types: Vec<Option<KeyType>> = if has_type {
            KeyType::ALL.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        let mut shapes = Vec::with_capacity(modes.len() * types.len());
        for &mode in &modes {
            for &key_type in &types {
                shapes.push(shape_for(&parts, tags, mode, key_type, checksum));
            }
        }

        check_unambiguous(&shapes, random_len, alphabet, checksum)?;

        Ok(KeyTemplate {
            source: template.to_string(),
            alphabet,
            random_len,
            checksum,
            has_mode,
            has_type,
            shapes,
        })
    }

    /// The template as written, for display and for comparing configurations.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Makes a new token of `mode` and `key_type`, drawing the random part from the OS
    /// CSPRNG without bias.
    ///
    /// # Panics
    ///
    /// When the operating system cannot supply random bytes, which on a running system does
    /// not happen; use [`KeyTemplate::try_generate`] to handle it instead.
    pub fn generate(&self, mode: Mode, key_type: KeyType) -> Secret {
        match self.try_generate(mode, key_type) {
            Ok(token) => token,
            Err(e) => panic!("cannot make an API key: {e}"),
        }
    }

    /// Like [`KeyTemplate::generate`], but reports a failing random number generator
    /// instead of panicking.
    pub fn try_generate(
        &self,
        mode: Mode,
        key_type: KeyType,
    ) -> Result<Secret, RandomnessUnavailable> {
        let shape = self.shape(mode, key_type);
        // The exact capacity up front: a growing buffer would leave copies of the secret
        // behind in freed memory, where zeroizing cannot reach them.
        let mut token = Zeroizing::new(String::with_capacity(shape.len));
        token.push_str(&shape.prefix);
        push_random(&mut token, self.alphabet, self.random_len)?;
        token.push_str(&shape.suffix);
        if self.checksum {
            let sum = checksum_of(token.as_bytes());
            token.extend(sum.iter().map(|&b| char::from(b)));
        }
        debug_assert_eq!(token.len(), shape.len);
        Ok(Secret::new(std::mem::take(&mut *token)))
    }

    /// Takes a presented token apart. The shape is checked first (so tokens of another
    /// template are `Malformed`), then the checksum; nothing is returned before both pass.
    /// Allocates nothing.
    pub fn parse<'a>(&self, token: &'a str) -> Result<ParsedToken<'a>, TokenError> {
        let bytes = token.as_bytes();
        let head_word = bytes.first_chunk().map_or(0, |w| u64::from_le_bytes(*w));
        let shape = self
            .shapes
            .iter()
            .find(|s| s.matches(bytes, head_word, self.random_len, self.alphabet))
            .ok_or(TokenError::Malformed)?;
        if self.checksum {
            let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
            // Decoding the six digits needs no division and runs alongside the CRC, where
            // encoding the CRC would wait for it and then divide six times. Six base62 digits
            // hold more than 2^32 values, so equal numbers mean equal digits.
            if decode_checksum(sum) != u64::from(crc32fast::hash(body)) {
                return Err(TokenError::BadChecksum);
            }
        }
        // The shape check proved every byte ASCII, so these offsets are character
        // boundaries; `get` keeps even a broken invariant from panicking.
        let random_start = shape.prefix.len();
        let random_end = random_start + self.random_len;
        match (
            token.get(..random_start),
            token.get(random_start..random_end),
        ) {
            (Some(prefix), Some(random)) => Ok(ParsedToken {
                mode: shape.mode,
                key_type: shape.key_type,
                random,
                prefix,
            }),
            _ => Err(TokenError::Malformed),
        }
    }

    /// The fixed text before the random part of a `mode`/`key_type` token, such as
    /// `kw_sk_live_`: stored with the key so it can be shown and searched.
    pub fn prefix(&self, mode: Mode, key_type: KeyType) -> String {
        self.shape(mode, key_type).prefix.clone()
    }

    /// The bits of randomness in every token, for reporting the template's strength.
    pub fn random_bits(&self) -> f64 {
        self.random_len as f64 * self.alphabet.bits_per_char()
    }

    /// The number of random characters in every token.
    pub fn random_len(&self) -> usize {
        self.random_len
    }

    /// The alphabet the random part is drawn from.
    pub fn alphabet(&self) -> Alphabet {
        self.alphabet
    }

    /// Whether tokens carry their mode; when not, [`ParsedToken::mode`] is always `None`.
    pub fn has_mode(&self) -> bool {
        self.has_mode
    }

    /// Whether tokens carry their type; when not, [`ParsedToken::key_type`] is always `None`.
    pub fn has_type(&self) -> bool {
        self.has_type
    }

    /// Whether tokens end in a checksum, so typos are refused without a store lookup.
    pub fn has_checksum(&self) -> bool {
        self.checksum
    }

    /// The longest token this template makes, in bytes: bcrypt reads at most 72, so the
    /// configuration refuses bcrypt with templates longer than that.
    pub fn max_len(&self) -> usize {
        self.shapes.iter().map(|s| s.len).max().unwrap_or(0)
    }

    /// A regular expression that matches every token this template makes, and nothing
    /// of another shape: one alternative per mode/type combination, fixed text escaped,
    /// the random part as its alphabet's class, the checksum as six base62 characters. It
    /// is what secret-scanning programs are given (`keywarden keys pattern`) and what the
    /// offline scanner searches with before each match's checksum is verified. Its syntax
    /// (escapes, classes, counted repetition, non-capturing groups) is common to RE2,
    /// Hyperscan, PCRE and Rust's `regex`.
    pub fn regex(&self) -> String {
        let class = match self.alphabet {
            Alphabet::Base62 => "[0-9A-Za-z]",
            Alphabet::Hex => "[0-9a-f]",
            Alphabet::Base32 => "[a-z2-7]",
        };
        let alternatives: Vec<String> = self
            .shapes
            .iter()
            .map(|shape| {
                let mut re = escape_regex(&shape.prefix);
                re.push_str(&format!("{class}{{{}}}", self.random_len));
                re.push_str(&escape_regex(&shape.suffix));
                if self.checksum {
                    re.push_str(&format!("[0-9A-Za-z]{{{CHECKSUM_LEN}}}"));
                }
                re
            })
            .collect();
        format!("(?:{})", alternatives.join("|"))
    }

    fn shape(&self, mode: Mode, key_type: KeyType) -> &Shape {
        self.shapes
            .iter()
            .find(|s| s.mode.is_none_or(|m| m == mode) && s.key_type.is_none_or(|t| t == key_type))
            .expect("a compiled template has a shape for every mode and type")
    }
}

/// A token that passed [`KeyTemplate::parse`]: its shape and checksum are right. Its
/// `Debug` hides the random part, which is the secret.
#[derive(Clone, Copy)]
pub struct ParsedToken<'a> {
    /// The mode the token's tag names, or `None` when the template has no `{mode}`.
    pub mode: Option<Mode>,
    /// The type the token's tag names, or `None` when the template has no `{type}`.
    pub key_type: Option<KeyType>,
    /// The random part: the secret itself, to be hashed and never shown.
    pub random: &'a str,
    /// The fixed text before the random part, such as `kw_sk_live_`.
    pub prefix: &'a str,
}

impl ParsedToken<'_> {
    /// The prefix and the first 4 random characters: enough for a person to recognise the
    /// key, too little to help guess it, so it is safe to display.
    pub fn start(&self) -> String {
        format!("{}{}", self.prefix, first_chars(self.random, START_LEN))
    }

    /// The first 8 random characters, stored in plain text so that a key with a slow hash
    /// can be found without hashing against every key (`docs/concepts.md#secret-storage`).
    pub fn lookup_segment(&self) -> &str {
        first_chars(self.random, LOOKUP_LEN)
    }
}

impl fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("mode", &self.mode)
            .field("key_type", &self.key_type)
            .field("prefix", &self.prefix)
            .field("random", &"***")
            .finish()
    }
}

/// `text` with every character that means something in a regular expression escaped. A
/// template's literal text is printable ASCII, so nothing else needs care.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The first `n` characters of `s` (all of it when shorter).
fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// Splits a template into its parts, refusing bad braces, unknown placeholders and literal
/// characters a token may not contain.
fn split(template: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = template.char_indices();
    while let Some((position, ch)) = chars.next() {
        match ch {
            '{' => {
                let mut end = None;
                for (p, c) in chars.by_ref() {
                    match c {
                        '}' => {
                            end = Some(p);
                            break;
                        }
                        '{' => break,
                        _ => {}
                    }
                }
                let end = end.ok_or(TemplateError::UnclosedBrace { position })?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(placeholder(&template[position + 1..end])?);
            }
            '}' => return Err(TemplateError::UnmatchedCloseBrace { position }),
            c if c.is_ascii_graphic() => literal.push(c),
            c => return Err(TemplateError::InvalidLiteral { ch: c, position }),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// Reads the text between a pair of braces.
fn placeholder(body: &str) -> Result<Part, TemplateError> {
    match body {
        "mode" => return Ok(Part::Mode),
        "type" => return Ok(Part::Type),
        "checksum" => return Ok(Part::Checksum),
        _ => {}
    }
    let spec = match body.strip_prefix("random") {
        Some("") => "",
        Some(rest) => match rest.strip_prefix(':') {
            Some(spec) => spec,
            None => {
                return Err(TemplateError::UnknownPlaceholder {
                    placeholder: body.to_string(),
                })
            }
        },
        None => {
            return Err(TemplateError::UnknownPlaceholder {
                placeholder: body.to_string(),
            })
        }
    };
    let (len, alphabet) = match spec.split_once(':') {
        Some((len, alphabet)) => (len, Some(alphabet)),
        None => (spec, None),
    };
    let alphabet = match alphabet {
        None | Some("base62") => Alphabet::Base62,
        Some("hex") => Alphabet::Hex,
        Some("base32") => Alphabet::Base32,
        Some(other) => {
            return Err(TemplateError::UnknownAlphabet {
                placeholder: body.to_string(),
                alphabet: other.to_string(),
            })
        }
    };
    // Only plain digits: `usize::from_str` would also take a leading `+`.
    let len = Some(len)
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&n| (1..=MAX_RANDOM_LEN).contains(&n))
        .ok_or_else(|| TemplateError::InvalidRandomLength {
            placeholder: body.to_string(),
        })?;
    Ok(Part::Random { len, alphabet })
}

/// Specialises the template's parts to one combination.
fn shape_for(
    parts: &[Part],
    tags: &TemplateTags,
    mode: Option<Mode>,
    key_type: Option<KeyType>,
    checksum: bool,
) -> Shape {
    let mut prefix = String::new();
    let mut suffix = String::new();
    let mut random_len = 0;
    for part in parts {
        let out = if random_len == 0 {
            &mut prefix
        } else {
            &mut suffix
        };
        match part {
            Part::Literal(text) => out.push_str(text),
            Part::Mode => out.push_str(mode.map_or("", |m| tags.mode(m))),
            Part::Type => out.push_str(key_type.map_or("", |t| tags.key_type(t))),
            Part::Random { len, .. } => random_len = *len,
            Part::Checksum => {}
        }
    }
    let len = prefix.len() + random_len + suffix.len() + if checksum { CHECKSUM_LEN } else { 0 };
    let head_len = prefix.len().min(8);
    let mut head = [0u8; 8];
    head[..head_len].copy_from_slice(&prefix.as_bytes()[..head_len]);
    Shape {
        mode,
        key_type,
        prefix,
        suffix,
        len,
        head: u64::from_le_bytes(head),
        head_mask: u64::MAX.checked_shr(8 * (8 - head_len as u32)).unwrap_or(0),
    }
}

/// Refuses the template when some token fits two combinations. Every position of a
/// combination's tokens has a fixed class, so two combinations overlap exactly when their
/// tokens have the same length and the classes intersect at every position; that is
/// checked for every pair. The checksum cannot separate them: it sits at the same offset in
/// both and covers the same bytes.
fn check_unambiguous(
    shapes: &[Shape],
    random_len: usize,
    alphabet: Alphabet,
    checksum: bool,
) -> Result<(), TemplateError> {
    let patterns: Vec<Vec<CharClass>> = shapes
        .iter()
        .map(|s| s.pattern(random_len, alphabet, checksum))
        .collect();
    for (i, a) in patterns.iter().enumerate() {
        for (j, b) in patterns.iter().enumerate().skip(i + 1) {
            if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x & y == 0) {
                continue;
            }
            // Build a token both accept: the lowest shared character at every position,
            // then a real checksum so that the example passes parsing in full.
            let body_len = a.len() - if checksum { CHECKSUM_LEN } else { 0 };
            let mut example: Vec<u8> = a
                .iter()
                .zip(b)
                .take(body_len)
                .map(|(x, y)| (x & y).trailing_zeros() as u8)
                .collect();
            if checksum {
                let sum = checksum_of(&example);
                example.extend_from_slice(&sum);
            }
            return Err(TemplateError::Ambiguous {
                example: example.iter().map(|&b| char::from(b)).collect(),
                first: shapes[i].label(),
                second: shapes[j].label(),
            });
        }
    }
    Ok(())
}

/// CRC32 of `body` as exactly six base62 digits, most significant first, zero-padded.
#[inline]
fn checksum_of(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    checksum_of_value(crc32fast::hash(body))
}

/// A CRC32 value as six base62 digits; 62^6 exceeds 2^32, so six always suffice.
#[inline]
fn checksum_of_value(mut value: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for digit in out.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// The number six base62 digits spell, most significant first. The caller has checked
/// that they are base62 digits.
#[inline(always)]
fn decode_checksum(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |value, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            _ => b.wrapping_sub(b'a').wrapping_add(36),
        };
        value * 62 + u64::from(digit)
    })
}

/// Appends `count` characters of `alphabet` drawn from the OS CSPRNG.
fn push_random(
    out: &mut String,
    alphabet: Alphabet,
    count: usize,
) -> Result<(), RandomnessUnavailable> {
    let chars = alphabet.chars();
    let mut pool = Zeroizing::new([0u8; 64]);
    let mut next = pool.len();
    let mut written = 0;
    while written < count {
        if next == pool.len() {
            getrandom::fill(&mut pool[..]).map_err(RandomnessUnavailable)?;
            next = 0;
        }
        let byte = pool[next];
        next += 1;
        if let Some(index) = symbol_for(byte, chars.len()) {
            out.push(char::from(chars[index]));
            written += 1;
        }
    }
    Ok(())
}

/// Maps a uniformly random byte to a uniformly random index below `n` (at most 256), or to
/// nothing when the byte falls in the incomplete last round of `n` values, which would
/// favour the low indexes; the caller then draws again (rejection sampling).
fn symbol_for(byte: u8, n: usize) -> Option<usize> {
    let byte = usize::from(byte);
    let limit = 256 - 256 % n;
    (byte < limit).then_some(byte % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "kw_{type}_{mode}_{random:32}{checksum}";
    const FALCO: &str = "f{type}k{mode}_{random:43}";

    fn tags(live: &str, test: &str, secret: &str, publishable: &str) -> TemplateTags {
        TemplateTags {
            live: live.into(),
            test: test.into(),
            secret: secret.into(),
            publishable: publishable.into(),
        }
    }

    /// The default tags: `live`, `test`, `sk`, `pk`.
    fn dt() -> TemplateTags {
        TemplateTags::default()
    }

    /// The tags of the Falco profile: `l`, `t`, `s`, `p`.
    fn falco() -> TemplateTags {
        tags("l", "t", "s", "p")
    }

    /// `body` followed by its checksum.
    fn with_sum(body: &str) -> String {
        let sum = checksum_of(body.as_bytes());
        format!("{body}{}", std::str::from_utf8(&sum).unwrap())
    }

    mod compile {
        use super::*;

        /// Compiles `template` with `tags`; `expected` is `Ok(bits of randomness)` or a
        /// fragment of the error message.
        fn check(template: &str, tags: &TemplateTags, expected: Result<f64, &str>) {
            match (KeyTemplate::compile(template, tags), expected) {
                (Ok(t), Ok(bits)) => {
                    let got = t.random_bits();
                    assert!((got - bits).abs() < 0.05, "{template}: {got} bits");
                    assert_eq!(t.source(), template);
                }
                (Err(e), Err(fragment)) => {
                    let message = e.to_string();
                    assert!(
                        message.contains(fragment),
                        "{template}: {message:?} lacks {fragment:?}"
                    );
                }
                (got, want) => panic!("{template}: got {got:?}, want {want:?}"),
            }
        }

        #[test]
        #[rustfmt::skip]
        fn accepted_templates() {
            check(DEFAULT,                          &dt(), Ok(190.5));
            check("fact_{mode}_{random:24}",        &dt(), Ok(142.9));
            check("fal_{random:24}",                &dt(), Ok(142.9));
            check("{random:20}",                    &dt(), Ok(119.1));
            check(FALCO,                            &falco(), Ok(256.0));
            check("{random:19}",                    &dt(), Ok(113.1));
            check("{random:28:hex}",                &dt(), Ok(112.0));
            check("{random:23:base32}",             &dt(), Ok(115.0));
            check("{random:32:base62}",             &dt(), Ok(190.5));
            check("{random:256}",                   &dt(), Ok(1524.3));
            check("{random:32}_{mode}{checksum}",   &dt(), Ok(190.5));
            check("{random:32}.{type}-{mode}",      &dt(), Ok(190.5));
            check("~!@#$%^&*()[]<>|\\/{random:32}", &dt(), Ok(190.5));
        }

        #[test]
        #[rustfmt::skip]
        fn syntax_errors() {
            check("{random:32",                      &dt(), Err("the `{` at byte 0 of the template is never closed"));
            check("kw_{mode{random:32}",             &dt(), Err("the `{` at byte 3 of the template is never closed"));
            check("kw_}{random:32}",                 &dt(), Err("the `}` at byte 3 of the template has no matching `{`"));
            check("{random:32}}",                    &dt(), Err("the `}` at byte 11 of the template"));
            check("{rand:32}",                       &dt(), Err("unknown placeholder `{rand:32}`; expected {random:N}"));
            check("{Mode}{random:32}",               &dt(), Err("unknown placeholder `{Mode}`"));
            check("{}{random:32}",                   &dt(), Err("unknown placeholder `{}`"));
            check("{ mode }{random:32}",             &dt(), Err("unknown placeholder `{ mode }`"));
            check("{randomly:32}",                   &dt(), Err("unknown placeholder `{randomly:32}`"));
            check("{random}",                        &dt(), Err("`{random}` needs a length from 1 to 256"));
            check("{random:}",                       &dt(), Err("`{random:}` needs a length"));
            check("{random:abc}",                    &dt(), Err("`{random:abc}` needs a length"));
            check("{random:0}",                      &dt(), Err("`{random:0}` needs a length"));
            check("{random:257}",                    &dt(), Err("`{random:257}` needs a length"));
            check("{random:+32}",                    &dt(), Err("`{random:+32}` needs a length"));
            check("{random:-32}",                    &dt(), Err("`{random:-32}` needs a length"));
            check("{random:99999999999999999999999}", &dt(), Err("needs a length"));
            check("{random:32:base64}",              &dt(), Err("unknown alphabet `base64` in `{random:32:base64}`"));
            check("{random:32:HEX}",                 &dt(), Err("unknown alphabet `HEX`"));
            check("{random:32:}",                    &dt(), Err("unknown alphabet `` in `{random:32:}`"));
            check("kw {random:32}",                  &dt(), Err("the template has ' ' at byte 2; literal text"));
            check("kw_é{random:32}",                 &dt(), Err("the template has 'é' at byte 3"));
            check("kw\t{random:32}",                 &dt(), Err("the template has '\\t' at byte 2"));
        }

        #[test]
        #[rustfmt::skip]
        fn structure_errors() {
            check("",                                    &dt(), Err("the template has no {random:N} part; it needs exactly one"));
            check("kw_{mode}_{type}{checksum}",          &dt(), Err("has no {random:N} part"));
            check("{random:32}{random:32}",              &dt(), Err("the template has 2 {random:N} parts; it needs exactly one"));
            check("{random:20}_{random:20}_{random:20}", &dt(), Err("has 3 {random:N} parts"));
            check("{mode}{mode}{random:32}",             &dt(), Err("`{mode}` appears more than once in the template"));
            check("{type}_{random:32}_{type}",           &dt(), Err("`{type}` appears more than once"));
            check("{random:32}{checksum}{checksum}",     &dt(), Err("`{checksum}` appears more than once"));
            check("kw_{random:32}{checksum}_",           &dt(), Err("{checksum} must be the last part of the template"));
            check("{checksum}{random:32}",               &dt(), Err("{checksum} must be the last part"));
            check("{random:32}{checksum}{mode}",         &dt(), Err("{checksum} must be the last part"));
        }

        #[test]
        #[rustfmt::skip]
        fn weak_templates() {
            check("{random:18}",             &dt(), Err("template has 107.1 bits of randomness; at least 112 are required"));
            check("{random:16}",             &dt(), Err("template has 95.2 bits of randomness"));
            check("kw_{random:1}{checksum}", &dt(), Err("template has 5.9 bits of randomness"));
            check("{random:27:hex}",         &dt(), Err("template has 108.0 bits of randomness"));
            check("{random:22:base32}",      &dt(), Err("template has 110.0 bits of randomness"));
        }

        #[test]
        #[rustfmt::skip]
        fn tag_errors() {
            check(DEFAULT, &tags("", "test", "sk", "pk"),      Err("the live mode tag is empty"));
            check(DEFAULT, &tags("live", "", "sk", "pk"),      Err("the test mode tag is empty"));
            check(DEFAULT, &tags("live", "test", "", "pk"),    Err("the secret type tag is empty"));
            check(DEFAULT, &tags("live", "test", "sk", ""),    Err("the publishable type tag is empty"));
            check(DEFAULT, &tags("li ve", "test", "sk", "pk"), Err("the live mode tag \"li ve\" may only use printable ASCII"));
            check(DEFAULT, &tags("live", "tést", "sk", "pk"),  Err("the test mode tag \"tést\""));
            check(DEFAULT, &tags("x", "x", "sk", "pk"),        Err("both modes use the tag \"x\"; the tags must differ"));
            check(DEFAULT, &tags("live", "test", "k", "k"),    Err("both types use the tag \"k\""));
        }

        #[test]
        #[rustfmt::skip]
        fn ambiguity() {
            // Same tokens from different tags: "a_b" + "_" + "c" against "a" + "_" + "b_c".
            check("{type}_{mode}_{random:24}",      &tags("c", "b_c", "a_b", "a"), Err("the template is ambiguous: `a_b_c_000000000000000000000000` parses both as live secret and as test publishable"));
            // A tag character that the random part of the other combination also allows.
            check("{mode}{random:22}{type}",        &tags("a", "ab", "xy", "y"),   Err("`ab000000000000000000000xy` parses both as live secret and as test publishable"));
            check("{mode}{random:24}{type}",        &tags("aa", "a", "s", "ps"),   Err("`aa00000000000000000000000ps` parses both as live secret and as test publishable"));
            check("{mode}{random:30:hex}{type}",    &tags("a", "ab", "cb", "b"),   Err("`ab00000000000000000000000000000cb` parses both"));
            check("{mode}{random:30:base32}{type}", &tags("a", "a2", "ss", "s"),   Err("`a222222222222222222222222222222ss` parses both"));
            // Near misses: one position that no character satisfies in both is enough.
            check("{mode}_{random:24}",             &tags("a_b", "a_0", "sk", "pk"), Ok(142.9));
            check("{mode}{random:24}",              &tags("a", "b", "sk", "pk"),     Ok(142.9));
            check("{mode}{random:24}{type}",        &tags("a", "b", "s", "p"),       Ok(142.9));
            check("{mode}{random:24}{type}",        &tags("a_", "a", "s", "ps"),     Ok(142.9));
            check("{mode}{random:30:hex}{type}",    &tags("a", "aa", "ss", "s"),     Ok(120.0));
            check("{mode}{random:30:hex}{type}",    &tags("a", "ag", "cb", "b"),     Ok(120.0));
            check("{mode}{random:30:base32}{type}", &tags("a", "a1", "ss", "s"),     Ok(150.0));
            // Different lengths never collide, even when one tag extends the other.
            check("{mode}{random:20}",              &tags("l", "lt", "sk", "pk"),    Ok(119.1));
            check("{mode}{random:22}{type}",        &tags("a", "ab", "xy", "z"),     Ok(131.0));
        }

        #[test]
        fn ambiguity_example_carries_a_valid_checksum() {
            let a = tags("c", "b_c", "a_b", "a");
            let e = KeyTemplate::compile("{type}_{mode}_{random:24}{checksum}", &a).unwrap_err();
            let TemplateError::Ambiguous {
                example,
                first,
                second,
            } = e
            else {
                panic!("not ambiguous: {e}");
            };
            assert_eq!(
                (first.as_str(), second.as_str()),
                ("live secret", "test publishable")
            );
            assert_eq!(example, with_sum("a_b_c_000000000000000000000000"));
        }

        #[test]
        #[rustfmt::skip]
        fn full_messages() {
            let err = |t: &str| KeyTemplate::compile(t, &dt()).unwrap_err().to_string();
            assert_eq!(err("{random:16}"), "template has 95.2 bits of randomness; at least 112 are required");
            assert_eq!(err("{nope}"), "unknown placeholder `{nope}`; expected {random:N}, {random:N:hex}, {random:N:base32}, {mode}, {type} or {checksum}");
            assert_eq!(err("{random:0}"), "`{random:0}` needs a length from 1 to 256, as in {random:32}");
        }
    }

    mod parse {
        use super::*;
        use KeyType::{Publishable as P, Secret as S};
        use Mode::{Live as L, Test as T};
        use TokenError::{BadChecksum, Malformed};

        type Expected<'e> = Result<(Option<Mode>, Option<KeyType>, &'e str, &'e str), TokenError>;

        /// Parses `token` with `template`; `expected` is `Ok((mode, type, prefix, random))`.
        fn check(template: &str, tags: &TemplateTags, token: &str, expected: Expected<'_>) {
            let t = KeyTemplate::compile(template, tags).unwrap();
            let got = t
                .parse(token)
                .map(|p| (p.mode, p.key_type, p.prefix, p.random));
            assert_eq!(got, expected, "{template} / {token:?}");
        }

        const R32: &str = "0123456789ABCDEFGHIJabcdefghijzZ";
        const R43: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg";
        const R24: &str = "8KqW3pXnR2VbY7TcA9eFmN5z";

        #[test]
        #[rustfmt::skip]
        fn default_template() {
            let ok = with_sum(&format!("kw_sk_live_{R32}"));
            let d = &dt();
            check(DEFAULT, d, &ok,                                        Ok((Some(L), Some(S), "kw_sk_live_", R32)));
            check(DEFAULT, d, &with_sum(&format!("kw_pk_test_{R32}")),    Ok((Some(T), Some(P), "kw_pk_test_", R32)));
            check(DEFAULT, d, &with_sum(&format!("kw_pk_live_{R32}")),    Ok((Some(L), Some(P), "kw_pk_live_", R32)));
            check(DEFAULT, d, &with_sum(&format!("kw_sk_test_{R32}")),    Ok((Some(T), Some(S), "kw_sk_test_", R32)));
            check(DEFAULT, d, &ok.replacen("sk", "pk", 1),                Err(BadChecksum));
            check(DEFAULT, d, &ok.replacen("live", "test", 1),            Err(BadChecksum));
            check(DEFAULT, d, &ok.replacen('0', "1", 1),                  Err(BadChecksum));
            check(DEFAULT, d, &format!("kw_sk_live_{R32}000000"),         Err(BadChecksum));
            check(DEFAULT, d, &ok.replacen('0', "-", 1),                  Err(Malformed));
            check(DEFAULT, d, &ok.replacen('0', "é", 1),                  Err(Malformed));
            check(DEFAULT, d, &ok.replacen("sk", "xk", 1),                Err(Malformed));
            check(DEFAULT, d, &ok.replacen("kw_", "kx_", 1),              Err(Malformed));
            check(DEFAULT, d, &ok.replacen("live", "LIVE", 1),            Err(Malformed));
            check(DEFAULT, d, &format!("{}!", &ok[..ok.len() - 1]),       Err(Malformed));
            check(DEFAULT, d, &format!("{ok}\n"),                         Err(Malformed));
            check(DEFAULT, d, &format!(" {ok}"),                          Err(Malformed));
            check(DEFAULT, d, &ok[..ok.len() - 1],                        Err(Malformed));
            check(DEFAULT, d, &format!("kw_sk_live_{R32}"),               Err(Malformed));
            check(DEFAULT, d, "",                                         Err(Malformed));
            check(DEFAULT, d, "kw_sk_live_",                              Err(Malformed));
            check(DEFAULT, d, &format!("fal_{R24}"),                      Err(Malformed));
            check(DEFAULT, d, &format!("fact_live_{R24}"),                Err(Malformed));
        }

        #[test]
        #[rustfmt::skip]
        fn other_templates() {
            let (d, f) = (&dt(), &falco());
            let fact = "fact_{mode}_{random:24}";
            check(fact, d, &format!("fact_live_{R24}"),                   Ok((Some(L), None, "fact_live_", R24)));
            check(fact, d, "fact_test_3pXnR2VbY7TcA9eFmN5z8KqW",          Ok((Some(T), None, "fact_test_", "3pXnR2VbY7TcA9eFmN5z8KqW")));
            check(fact, d, &format!("fact_prod_{R24}"),                   Err(Malformed));
            check(fact, d, &format!("fact_live_{R24}_"),                  Err(Malformed));
            check(fact, d, &format!("fact_live_{}", &R24[1..]),           Err(Malformed));
            check(fact, d, "fact_live_8KqW3pXnR2VbY7TcA9eFmN5_",          Err(Malformed));
            check("fal_{random:24}", d, &format!("fal_{R24}"),            Ok((None, None, "fal_", R24)));
            check("fal_{random:24}", d, &format!("fact_live_{R24}"),      Err(Malformed));
            check("{random:20}", d, "aB3dE5gH7jK9mN1pQ3sT",               Ok((None, None, "", "aB3dE5gH7jK9mN1pQ3sT")));
            check("{random:20}", d, "aB3dE5gH7jK9mN1pQ3s+",               Err(Malformed));
            check("{random:20}", d, "aB3dE5gH7jK9mN1pQ3s",                Err(Malformed));
            check(FALCO, f, &format!("fskl_{R43}"),                       Ok((Some(L), Some(S), "fskl_", R43)));
            check(FALCO, f, &format!("fpkt_{R43}"),                       Ok((Some(T), Some(P), "fpkt_", R43)));
            check(FALCO, f, &format!("fskx_{R43}"),                       Err(Malformed));
            check(FALCO, f, &format!("fskl{R43}"),                        Err(Malformed));
            check("kw_{random:32:hex}", d, "kw_0123456789abcdef0123456789abcdef", Ok((None, None, "kw_", "0123456789abcdef0123456789abcdef")));
            check("kw_{random:32:hex}", d, "kw_0123456789ABCDEF0123456789abcdef", Err(Malformed));
            check("{random:24:base32}", d, "abcdefghijklmnopqrstuvwx",    Ok((None, None, "", "abcdefghijklmnopqrstuvwx")));
            check("{random:24:base32}", d, "abcdefghijklmnopqrstuvw1",    Err(Malformed));
            check("{random:24}-{mode}", d, &format!("{R24}-test"),        Ok((Some(T), None, "", R24)));
            check("{random:24}-{mode}", d, &format!("{R24}-tst"),         Err(Malformed));
        }

        #[test]
        fn start_and_lookup_segment() {
            let t = KeyTemplate::compile(DEFAULT, &dt()).unwrap();
            let token = with_sum(&format!("kw_sk_live_{R32}"));
            let p = t.parse(&token).unwrap();
            assert_eq!(p.start(), "kw_sk_live_0123");
            assert_eq!(p.lookup_segment(), "01234567");
            let short = ParsedToken { random: "ab", ..p };
            assert_eq!(short.start(), "kw_sk_live_ab");
            assert_eq!(short.lookup_segment(), "ab");
            let wide = ParsedToken {
                random: "ééééééééé",
                ..p
            };
            assert_eq!(wide.lookup_segment(), "éééééééé");
        }

        #[test]
        fn debug_hides_the_random_part() {
            let t = KeyTemplate::compile(DEFAULT, &dt()).unwrap();
            let token = with_sum(&format!("kw_sk_live_{R32}"));
            let shown = format!("{:?}", t.parse(&token).unwrap());
            assert!(!shown.contains("0123"), "{shown}");
            assert!(shown.contains("kw_sk_live_"), "{shown}");
        }

        #[test]
        fn token_errors_do_not_echo_the_token() {
            for e in [Malformed, BadChecksum] {
                assert!(!e.to_string().contains("kw_"));
            }
        }
    }

    mod generate {
        use super::*;

        #[test]
        fn prefix_and_lengths() {
            let t = KeyTemplate::compile(DEFAULT, &dt()).unwrap();
            assert_eq!(t.prefix(Mode::Live, KeyType::Secret), "kw_sk_live_");
            assert_eq!(t.prefix(Mode::Test, KeyType::Publishable), "kw_pk_test_");
            assert_eq!(t.max_len(), 49);
            assert!(t.has_mode() && t.has_type() && t.has_checksum());
            let f = KeyTemplate::compile(FALCO, &falco()).unwrap();
            assert_eq!(f.prefix(Mode::Live, KeyType::Secret), "fskl_");
            assert_eq!(f.max_len(), 48);
            assert!(!f.has_checksum());
            let fal = KeyTemplate::compile("fal_{random:24}", &dt()).unwrap();
            assert_eq!(fal.prefix(Mode::Test, KeyType::Publishable), "fal_");
            assert!(!fal.has_mode() && !fal.has_type());
            let uneven =
                KeyTemplate::compile("{mode}{random:20}", &tags("l", "lt", "s", "p")).unwrap();
            assert_eq!(uneven.max_len(), 22);
        }

        #[test]
        fn generated_tokens_differ_and_parse() {
            let t = KeyTemplate::compile(DEFAULT, &dt()).unwrap();
            let a = t.generate(Mode::Live, KeyType::Secret);
            let b = t.generate(Mode::Live, KeyType::Secret);
            assert_ne!(a.expose(), b.expose());
            assert_eq!(a.len(), 49);
            assert!(a.expose().starts_with("kw_sk_live_"));
            let p = t.parse(a.expose()).unwrap();
            assert_eq!(
                (p.mode, p.key_type),
                (Some(Mode::Live), Some(KeyType::Secret))
            );
        }

        #[test]
        fn long_random_parts_refill_the_pool() {
            let t = KeyTemplate::compile("{random:256}", &dt()).unwrap();
            let token = t.generate(Mode::Test, KeyType::Secret);
            assert_eq!(t.parse(token.expose()).unwrap().random.len(), 256);
        }

        #[test]
        fn rejection_sampling_is_unbiased() {
            for n in [16, 32, 62] {
                let mut counts = vec![0u32; n];
                for byte in 0..=255u8 {
                    if let Some(i) = symbol_for(byte, n) {
                        counts[i] += 1;
                    }
                }
                assert!(
                    counts.iter().all(|&c| c == counts[0]),
                    "n = {n}: {counts:?}"
                );
                assert_eq!(counts[0] as usize, 256 / n);
            }
        }

        #[test]
        fn checksum_encoding() {
            assert_eq!(&checksum_of(b""), b"000000");
            // CRC32("123456789") is 0xCBF43926, which is 3jZRME in base62.
            assert_eq!(&checksum_of(b"123456789"), b"3jZRME");
            // The largest CRC still fits in six digits.
            assert_eq!(&checksum_of_value(u32::MAX), b"4gfFC3");
            for value in [0, 1, 61, 62, 0xCBF4_3926, u32::MAX] {
                assert_eq!(decode_checksum(&checksum_of_value(value)), u64::from(value));
            }
        }
    }
}
