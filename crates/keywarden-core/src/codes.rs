//! Every outcome code Keywarden answers with, in one table: HTTP status, error type and
//! messages in each supported language. Profiles may rename a code or change its status
//! through [`CodeOverrides`]; nothing else spells these out.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The error families of `docs/errors.md`; clients switch on these before the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The request is allowed (used only with `valid`).
    None,
    /// The credential is missing, malformed, unknown or no longer valid.
    AuthenticationError,
    /// The credential is valid but not allowed to do this.
    AuthorizationError,
    /// Too many requests, failures or units.
    RateLimitError,
    /// The request itself is wrong.
    InvalidRequestError,
    /// The object does not exist for this caller.
    NotFoundError,
    /// Keywarden or something behind it failed.
    ApiError,
}

impl ErrorType {
    /// The families an error can have (every one but [`ErrorType::None`]).
    pub const ERRORS: [ErrorType; 6] = [
        ErrorType::AuthenticationError,
        ErrorType::AuthorizationError,
        ErrorType::RateLimitError,
        ErrorType::InvalidRequestError,
        ErrorType::NotFoundError,
        ErrorType::ApiError,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::None => "none",
            ErrorType::AuthenticationError => "authentication_error",
            ErrorType::AuthorizationError => "authorization_error",
            ErrorType::RateLimitError => "rate_limit_error",
            ErrorType::InvalidRequestError => "invalid_request_error",
            ErrorType::NotFoundError => "not_found_error",
            ErrorType::ApiError => "api_error",
        }
    }
}

/// A supported message language.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    /// English (the default).
    #[default]
    En,
    /// Spanish.
    Es,
}

impl Locale {
    /// Picks the first supported language of an `Accept-Language` header, honouring
    /// q-values; `None` when the header names no supported language.
    pub fn from_accept_language(header: &str) -> Option<Locale> {
        let mut best: Option<(f32, usize, Locale)> = None;
        for (pos, part) in header.split(',').enumerate() {
            let mut pieces = part.split(';');
            let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = pieces
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            let locale = match primary {
                "en" => Locale::En,
                "es" => Locale::Es,
                _ => continue,
            };
            if q <= 0.0 {
                continue;
            }
            // Higher q wins; on a tie the earlier entry wins.
            if best.is_none_or(|(bq, _, _)| q > bq) {
                best = Some((q, pos, locale));
            }
        }
        best.map(|(_, _, l)| l)
    }
}

impl FromStr for Locale {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "en" => Ok(Locale::En),
            "es" => Ok(Locale::Es),
            other => Err(format!(
                "unknown locale {other:?}; expected \"en\" or \"es\""
            )),
        }
    }
}

macro_rules! codes {
    ($($variant:ident = $text:literal, $status:literal, $etype:ident, $en:literal, $es:literal;)+) => {
        /// Every decision and error code. The first rows follow the order of the
        /// decision (`docs/decision.md`); the rest are request and service errors.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $(
            #[doc = $en]
            $variant
        ),+ }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// The canonical spelling (before any profile rename).
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $text),+ }
            }

            /// The default HTTP status.
            pub fn status(self) -> u16 {
                match self { $(Code::$variant => $status),+ }
            }

            /// The error family.
            pub fn error_type(self) -> ErrorType {
                match self { $(Code::$variant => ErrorType::$etype),+ }
            }

            /// The default message in `locale`.
            pub fn message(self, locale: Locale) -> &'static str {
                match (self, locale) {
                    $((Code::$variant, Locale::En) => $en,
                      (Code::$variant, Locale::Es) => $es,)+
                }
            }
        }

        impl FromStr for Code {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Code::$variant),)+
                    other => Err(format!("unknown code {other:?}")),
                }
            }
        }
    };
}

codes! {
    Valid = "valid", 200, None,
        "The API key is valid.", "La clave de API es válida.";
    ApiDisabled = "api_disabled", 403, AuthorizationError,
        "API access is switched off.", "El acceso a la API está desactivado.";
    TooManyAuthFailures = "too_many_auth_failures", 429, RateLimitError,
        "Too many failed authentication attempts from this address; try again later.",
        "Demasiados intentos de autenticación fallidos desde esta dirección; inténtalo más tarde.";
    MissingApiKey = "missing_api_key", 401, AuthenticationError,
        "No API key was provided.", "No se ha proporcionado ninguna clave de API.";
    InvalidApiKey = "invalid_api_key", 401, AuthenticationError,
        "The API key is invalid.", "La clave de API no es válida.";
    ApiKeyRevoked = "api_key_revoked", 401, AuthenticationError,
        "The API key has been revoked.", "La clave de API ha sido revocada.";
    ApiKeyExpired = "api_key_expired", 401, AuthenticationError,
        "The API key has expired.", "La clave de API ha caducado.";
    ApiKeyDisabled = "api_key_disabled", 401, AuthenticationError,
        "The API key is disabled.", "La clave de API está desactivada.";
    AccountInactive = "account_inactive", 403, AuthorizationError,
        "The account is not active.", "La cuenta no está activa.";
    InvalidAppSecret = "invalid_app_secret", 401, AuthenticationError,
        "The application secret is missing, wrong, or of the other environment.",
        "El secreto de la aplicación falta, es incorrecto o es del otro entorno.";
    IpNotAllowed = "ip_not_allowed", 401, AuthenticationError,
        "Requests from this IP address are not allowed for this API key.",
        "Esta clave de API no admite peticiones desde esta dirección IP.";
    ModeMismatch = "mode_mismatch", 403, AuthorizationError,
        "The API key's mode does not match the object's mode.",
        "El modo de la clave de API no coincide con el del objeto.";
    InsufficientScope = "insufficient_scope", 403, AuthorizationError,
        "The API key lacks a scope this request needs.",
        "A la clave de API le falta un permiso que esta petición necesita.";
    RateLimitExceeded = "rate_limit_exceeded", 429, RateLimitError,
        "Rate limit exceeded; slow down and retry later.",
        "Se ha superado el límite de peticiones; reduce el ritmo y vuelve a intentarlo.";
    ConcurrencyLimitExceeded = "concurrency_limit_exceeded", 429, RateLimitError,
        "Too many requests in flight for this API key.",
        "Hay demasiadas peticiones en curso para esta clave de API.";
    QuotaExceeded = "quota_exceeded", 429, RateLimitError,
        "The quota for this period has been used up.",
        "Se ha agotado la cuota de este periodo.";
    InvalidRequest = "invalid_request", 400, InvalidRequestError,
        "The request is invalid.", "La petición no es válida.";
    InvalidScope = "invalid_scope", 400, InvalidRequestError,
        "One or more scopes are unknown.", "Uno o más permisos son desconocidos.";
    PayloadTooLarge = "payload_too_large", 413, InvalidRequestError,
        "The request body is too large.", "El cuerpo de la petición es demasiado grande.";
    PlanLimitReached = "plan_limit_reached", 403, AuthorizationError,
        "The plan does not allow more API keys.", "El plan no permite más claves de API.";
    InsufficientRole = "insufficient_role", 403, AuthorizationError,
        "The API key's role does not allow this action.",
        "El rol de la clave de API no permite esta acción.";
    RootKeyRequired = "root_key_required", 401, AuthenticationError,
        "This endpoint needs a valid root key.", "Este punto de acceso necesita una clave raíz válida.";
    InvalidSignature = "invalid_signature", 401, AuthenticationError,
        "The report's signature is missing or does not verify against the named public key.",
        "La firma del informe falta o no se verifica con la clave pública indicada.";
    InvalidRevocationToken = "invalid_revocation_token", 401, AuthenticationError,
        "The revocation token is missing or wrong.",
        "El token de revocación falta o es incorrecto.";
    AdminDisabled = "admin_disabled", 503, ApiError,
        "No root key is configured; set KEYWARDEN_ROOT_KEY to use the admin API.",
        "No hay ninguna clave raíz configurada; define KEYWARDEN_ROOT_KEY para usar la API de administración.";
    NotFound = "not_found", 404, NotFoundError,
        "No such object.", "El objeto no existe.";
    MethodNotAllowed = "method_not_allowed", 405, InvalidRequestError,
        "This method is not allowed here.", "Este método no está permitido aquí.";
    Conflict = "conflict", 409, InvalidRequestError,
        "The request conflicts with the object's current state.",
        "La petición entra en conflicto con el estado actual del objeto.";
    UpstreamUnavailable = "upstream_unavailable", 502, ApiError,
        "The upstream service could not be reached.", "No se ha podido contactar con el servicio de destino.";
    UpstreamTimeout = "upstream_timeout", 504, ApiError,
        "The upstream service did not answer in time.", "El servicio de destino no ha respondido a tiempo.";
    ServiceUnavailable = "service_unavailable", 503, ApiError,
        "The service is temporarily unavailable.", "El servicio no está disponible temporalmente.";
    InternalError = "internal_error", 500, ApiError,
        "Something went wrong on our side.", "Algo ha fallado por nuestra parte.";
}

impl Code {
    /// Whether a failure with this code counts toward the per-IP lockout (`docs/decision.md`: the rows
    /// `missing_api_key` through `invalid_app_secret`).
    pub fn counts_toward_lockout(self) -> bool {
        matches!(
            self,
            Code::MissingApiKey
                | Code::InvalidApiKey
                | Code::ApiKeyRevoked
                | Code::ApiKeyExpired
                | Code::ApiKeyDisabled
                | Code::AccountInactive
                | Code::InvalidAppSecret
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One profile override: a new wire name and/or a new status for a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeOverride {
    /// The code as it appears on the wire.
    pub name: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// Renames, status changes and messages a deployment applies to codes (`[errors] rename`,
/// `status` and `messages`).
///
/// A rename to another known code takes that code's status, type and message too, so
/// `api_key_expired = "api_key_revoked"` makes an expired key indistinguishable from a
/// revoked one, which is what the profile asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeOverrides {
    renames: BTreeMap<Code, (String, Option<Code>)>,
    statuses: BTreeMap<Code, u16>,
    messages: BTreeMap<(Code, Locale), String>,
}

/// What a caller shows for a code after overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The wire name.
    pub name: &'a str,
    /// The HTTP status.
    pub status: u16,
    /// The error family.
    pub error_type: ErrorType,
    /// The code whose message is shown.
    pub message_code: Code,
}

/// The error family as an error body names it: one of [`ErrorType::ERRORS`].
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ErrorType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "The error family; clients switch on it before the code.",
            ))
            .enum_values(Some(ErrorType::ERRORS.iter().map(|t| t.as_str())))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ErrorType {}

/// An error body as it is sent, in the configured style (`errors.style`,
/// `docs/errors.md`). The envelope and the detail style are `application/json`, the problem
/// style `application/problem+json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ErrorBody {
    /// `errors.style = "envelope"` (the default).
    Envelope(ErrorEnvelope),
    /// `errors.style = "problem"`.
    Problem(ProblemDetails),
    /// `errors.style = "detail"`.
    Detail(DetailError),
}

/// `errors.style = "envelope"` (default).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"error": {
    "type": "authentication_error",
    "code": "invalid_api_key",
    "message": "The API key is invalid.",
    "request_id": "req_01JQ2Z5V7X9Y0ABCDEFGHJKMNP",
}})))]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorObject,
}

/// The error inside an [`ErrorEnvelope`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorObject {
    /// The family.
    #[serde(rename = "type")]
    pub error_type: ErrorType,
    /// The code (`docs/decision.md`, `docs/errors.md`), as the profile names it.
    #[cfg_attr(feature = "openapi", schema(example = "invalid_api_key"))]
    pub code: String,
    /// Human-readable, in the request's language; names the offending field for bad input.
    pub message: String,
    /// The request's id, also in `X-Request-Id`.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "req_01JQ2Z5V7X9Y0ABCDEFGHJKMNP")
    )]
    pub request_id: String,
    /// A link about the code, when `errors.doc_url` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub doc_url: Option<String>,
}

/// `errors.style = "problem"`: RFC 9457, sent as `application/problem+json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProblemDetails {
    /// The `errors.doc_url` link for the code, or `about:blank`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(example = "about:blank"))]
    pub problem_type: String,
    /// The status's reason phrase.
    #[cfg_attr(feature = "openapi", schema(example = "Unauthorized"))]
    pub title: String,
    /// The HTTP status.
    #[cfg_attr(feature = "openapi", schema(example = 401))]
    pub status: u16,
    /// Human-readable, in the request's language.
    pub detail: String,
    /// The code, as the profile names it.
    #[cfg_attr(feature = "openapi", schema(example = "invalid_api_key"))]
    pub code: String,
    /// The request's id.
    pub request_id: String,
}

/// `errors.style = "detail"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DetailError {
    /// Human-readable, in the request's language.
    #[cfg_attr(feature = "openapi", schema(example = "The API key is invalid."))]
    pub detail: String,
}

/// The shape of error bodies (`errors.style`, `docs/errors.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"error": {"type", "code", "message", "request_id", "doc_url"?}}` (the default).
    #[default]
    Envelope,
    /// RFC 9457 `application/problem+json`, plus `code` and `request_id`.
    Problem,
    /// `{"detail": "…"}`.
    Detail,
}

impl FromStr for ErrorStyle {
    type Err = String;

    /// Parses the configuration spelling: `envelope`, `problem` or `detail`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "envelope" => Ok(ErrorStyle::Envelope),
            "problem" => Ok(ErrorStyle::Problem),
            "detail" => Ok(ErrorStyle::Detail),
            other => Err(format!(
                "unknown error style {other:?}; expected envelope, problem or detail"
            )),
        }
    }
}

impl Presented<'_> {
    /// The error body in `style`: `message` in the request's language, the request's id,
    /// the `doc_url` template with `{code}` filled in (empty for none) and, for the problem
    /// style, `title`, the status's reason phrase.
    pub fn body(
        &self,
        style: ErrorStyle,
        message: &str,
        request_id: &str,
        doc_url: &str,
        title: &str,
    ) -> ErrorBody {
        let doc_url = (!doc_url.is_empty()).then(|| doc_url.replace("{code}", self.name));
        match style {
            ErrorStyle::Envelope => ErrorBody::Envelope(ErrorEnvelope {
                error: ErrorObject {
                    error_type: self.error_type,
                    code: self.name.to_string(),
                    message: message.to_string(),
                    request_id: request_id.to_string(),
                    doc_url,
                },
            }),
            ErrorStyle::Problem => ErrorBody::Problem(ProblemDetails {
                problem_type: doc_url.unwrap_or_else(|| "about:blank".into()),
                title: title.to_string(),
                status: self.status,
                detail: message.to_string(),
                code: self.name.to_string(),
                request_id: request_id.to_string(),
            }),
            ErrorStyle::Detail => ErrorBody::Detail(DetailError {
                detail: message.to_string(),
            }),
        }
    }
}

impl CodeOverrides {
    /// Builds the overrides from config maps: `rename` (code → new name) and `status`
    /// (code → HTTP status). Unknown source codes and out-of-range statuses are errors.
    pub fn new(
        rename: &BTreeMap<String, String>,
        status: &BTreeMap<String, u16>,
    ) -> Result<Self, String> {
        let mut out = CodeOverrides::default();
        for (from, to) in rename {
            let code: Code = from.parse().map_err(|e| format!("errors.rename: {e}"))?;
            if to.is_empty()
                || to.len() > 64
                || !to
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!(
                    "errors.rename.{from}: {to:?} is not a valid code name (a-z, 0-9, _; 1-64 chars)"
                ));
            }
            out.renames
                .insert(code, (to.clone(), to.parse::<Code>().ok()));
        }
        for (from, st) in status {
            let code: Code = from.parse().map_err(|e| format!("errors.status: {e}"))?;
            if !(200..=599).contains(st) {
                return Err(format!("errors.status.{from}: {st} is not an HTTP status"));
            }
            out.statuses.insert(code, *st);
        }
        Ok(out)
    }

    /// Adds messages per language and code (`[errors.messages.LANG] CODE = "…"`). Unknown
    /// languages and codes, and empty messages, are errors naming the entry.
    pub fn with_messages(
        mut self,
        messages: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<Self, String> {
        for (lang, table) in messages {
            let locale: Locale = lang
                .parse()
                .map_err(|e| format!("errors.messages.{lang}: {e}"))?;
            for (code, text) in table {
                let c: Code = code
                    .parse()
                    .map_err(|e| format!("errors.messages.{lang}: {e}"))?;
                if text.trim().is_empty() || text.chars().count() > 500 {
                    return Err(format!(
                        "errors.messages.{lang}.{code}: a message is 1-500 characters"
                    ));
                }
                self.messages.insert((c, locale), text.clone());
            }
        }
        Ok(self)
    }

    /// The message shown for `code` in `locale`: the deployment's own for the code, else its
    /// own for the code it is renamed to, else the table's message of that code.
    pub fn message(&self, code: Code, locale: Locale) -> &str {
        let target = self.present(code).message_code;
        self.messages
            .get(&(code, locale))
            .or_else(|| self.messages.get(&(target, locale)))
            .map_or_else(|| target.message(locale), String::as_str)
    }

    /// How `code` is presented after overrides.
    pub fn present(&self, code: Code) -> Presented<'_> {
        let (name, target) = match self.renames.get(&code) {
            Some((name, target)) => (name.as_str(), target.unwrap_or(code)),
            None => (code.as_str(), code),
        };
        let status = self
            .statuses
            .get(&code)
            .copied()
            .unwrap_or_else(|| target.status());
        Presented {
            name,
            status,
            error_type: target.error_type(),
            message_code: target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_has_both_languages() {
        for &c in Code::ALL {
            assert_eq!(c.as_str().parse::<Code>(), Ok(c));
            assert!(!c.message(Locale::En).is_empty());
            assert!(!c.message(Locale::Es).is_empty());
            assert_ne!(c.message(Locale::En), c.message(Locale::Es), "{c}");
        }
    }

    #[test]
    fn statuses_follow_the_spec_table() {
        let table = [
            ("api_disabled", 403),
            ("too_many_auth_failures", 429),
            ("missing_api_key", 401),
            ("invalid_api_key", 401),
            ("api_key_revoked", 401),
            ("api_key_expired", 401),
            ("api_key_disabled", 401),
            ("account_inactive", 403),
            ("invalid_app_secret", 401),
            ("ip_not_allowed", 401),
            ("mode_mismatch", 403),
            ("insufficient_scope", 403),
            ("rate_limit_exceeded", 429),
            ("concurrency_limit_exceeded", 429),
            ("quota_exceeded", 429),
            ("valid", 200),
        ];
        for (name, status) in table {
            let code: Code = name.parse().unwrap();
            assert_eq!(code.status(), status, "{name}");
        }
    }

    #[test]
    fn accept_language_picks_a_supported_language() {
        let check = |h: &str, want: Option<Locale>| {
            assert_eq!(Locale::from_accept_language(h), want, "{h}");
        };
        check("es-ES,es;q=0.9,en;q=0.8", Some(Locale::Es));
        check("fr-FR, en;q=0.5, es;q=0.7", Some(Locale::Es));
        check("en-GB", Some(Locale::En));
        check("de, fr", None);
        check("es;q=0, en", Some(Locale::En));
        check("", None);
    }

    #[test]
    fn rename_to_a_known_code_takes_its_status_and_message() {
        let rename =
            BTreeMap::from([("api_key_expired".to_string(), "api_key_revoked".to_string())]);
        let o = CodeOverrides::new(&rename, &BTreeMap::new()).unwrap();
        let p = o.present(Code::ApiKeyExpired);
        assert_eq!(p.name, "api_key_revoked");
        assert_eq!(p.status, 401);
        assert_eq!(p.message_code, Code::ApiKeyRevoked);
        assert_eq!(o.present(Code::InvalidApiKey).name, "invalid_api_key");
    }

    #[test]
    fn rename_to_a_new_name_and_status_override() {
        let rename = BTreeMap::from([("invalid_api_key".to_string(), "unauthorized".to_string())]);
        let status = BTreeMap::from([("insufficient_scope".to_string(), 401u16)]);
        let o = CodeOverrides::new(&rename, &status).unwrap();
        assert_eq!(o.present(Code::InvalidApiKey).name, "unauthorized");
        assert_eq!(o.present(Code::InvalidApiKey).status, 401);
        assert_eq!(o.present(Code::InsufficientScope).status, 401);
    }

    #[test]
    fn messages_replace_the_table_per_language_and_follow_renames() {
        let rename =
            BTreeMap::from([("api_key_expired".to_string(), "api_key_revoked".to_string())]);
        let messages = BTreeMap::from([(
            "es".to_string(),
            BTreeMap::from([
                ("invalid_api_key".to_string(), "Clave mala.".to_string()),
                ("api_key_revoked".to_string(), "Revocada.".to_string()),
            ]),
        )]);
        let o = CodeOverrides::new(&rename, &BTreeMap::new())
            .unwrap()
            .with_messages(&messages)
            .unwrap();
        assert_eq!(o.message(Code::InvalidApiKey, Locale::Es), "Clave mala.");
        assert_eq!(
            o.message(Code::InvalidApiKey, Locale::En),
            Code::InvalidApiKey.message(Locale::En)
        );
        assert_eq!(o.message(Code::ApiKeyExpired, Locale::Es), "Revocada.");
        assert_eq!(
            o.message(Code::MissingApiKey, Locale::Es),
            Code::MissingApiKey.message(Locale::Es)
        );
        let bad = |lang: &str, code: &str, text: &str| {
            let m = BTreeMap::from([(
                lang.to_string(),
                BTreeMap::from([(code.to_string(), text.to_string())]),
            )]);
            CodeOverrides::default().with_messages(&m).unwrap_err()
        };
        assert!(bad("fr", "invalid_api_key", "x").contains("errors.messages.fr"));
        assert!(bad("es", "nope", "x").contains("nope"));
        assert!(bad("es", "invalid_api_key", " ").contains("errors.messages.es.invalid_api_key"));
        // Counted in characters, not bytes: 500 accented letters are 1000 bytes.
        let long = |n: usize| {
            BTreeMap::from([(
                "es".to_string(),
                BTreeMap::from([("invalid_api_key".to_string(), "é".repeat(n))]),
            )])
        };
        assert!(CodeOverrides::default().with_messages(&long(500)).is_ok());
        assert!(CodeOverrides::default().with_messages(&long(501)).is_err());
    }

    #[test]
    fn bad_overrides_name_the_field() {
        let rename = BTreeMap::from([("nope".to_string(), "x".to_string())]);
        let err = CodeOverrides::new(&rename, &BTreeMap::new()).unwrap_err();
        assert!(
            err.contains("errors.rename") && err.contains("nope"),
            "{err}"
        );
        let rename = BTreeMap::from([("valid".to_string(), "Bad Name".to_string())]);
        let err = CodeOverrides::new(&rename, &BTreeMap::new()).unwrap_err();
        assert!(err.contains("errors.rename.valid"), "{err}");
    }
}
