//! How stored objects look on the wire. Timestamps are RFC 3339 in UTC (`Z` or `+00:00`,
//! `docs/configuration.md`); no view ever
//! includes a secret or a stored hash (only the public `key_hash` fingerprint).

use keywarden_core::model::{Account, Activity, Application, AuditEvent, Grant, KeyRecord, Millis};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How timestamps are written (`server.timestamp_offset` and `server.timestamp_precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimestampStyle {
    /// `+00:00` instead of `Z`.
    pub offset: bool,
    /// Whole seconds only (milliseconds dropped).
    pub seconds: bool,
}

impl TimestampStyle {
    /// Reads the two settings, naming the field on a bad value.
    pub fn parse(offset: &str, precision: &str) -> Result<Self, (&'static str, String)> {
        let offset = match offset {
            "Z" => false,
            "+00:00" => true,
            other => {
                return Err((
                    "server.timestamp_offset",
                    format!("{other:?} is neither \"Z\" nor \"+00:00\""),
                ))
            }
        };
        let seconds = match precision {
            "ms" => false,
            "s" => true,
            other => {
                return Err((
                    "server.timestamp_precision",
                    format!("{other:?} is neither \"ms\" nor \"s\""),
                ))
            }
        };
        Ok(Self { offset, seconds })
    }

    /// Renders Unix milliseconds in this style.
    pub fn format(self, ms: Millis) -> String {
        let ms = if self.seconds {
            ms.div_euclid(1000) * 1000
        } else {
            ms
        };
        let text = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        match (self.offset, text.strip_suffix('Z')) {
            (true, Some(head)) => format!("{head}+00:00"),
            _ => text,
        }
    }
}

tokio::task_local! {
    /// The style of the request being answered (set by the request middleware).
    static STYLE: TimestampStyle;
}

/// Runs `fut` (a request's handling) with timestamps written in `style`.
pub async fn with_timestamp_style<F: std::future::Future>(
    style: TimestampStyle,
    fut: F,
) -> F::Output {
    STYLE.scope(style, fut).await
}

/// Renders Unix milliseconds as RFC 3339 (`2026-03-20T10:00:00.123Z`), in the configured
/// style when called while answering a request.
pub fn ts(ms: Millis) -> String {
    STYLE.try_with(|s| *s).unwrap_or_default().format(ms)
}

/// Renders an optional timestamp (`null` when absent).
pub fn ts_opt(ms: Option<Millis>) -> Value {
    ms.map(|m| Value::String(ts(m))).unwrap_or(Value::Null)
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_ts(s: &str) -> Result<Millis, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as Millis)
        .map_err(|_| format!("{s:?} is not an RFC 3339 timestamp like 2026-01-31T12:00:00Z"))
}

/// An account.
pub fn account(a: &Account) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "plan": a.plan,
        "status": a.status,
        "metadata": a.metadata,
        "created_at": ts(a.created_at),
    })
}

/// A key's metadata (never its secret).
pub fn key(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "account_id": k.account_id,
        "mode": k.mode,
        "type": k.key_type,
        "name": k.name,
        "description": k.description,
        "owner": k.owner,
        "role": k.role,
        "scopes": k.scopes,
        "expires_at": ts_opt(k.expires_at),
        "ip_allowlist": k.ip_allowlist,
        "rate_limit": k.rate_limit,
        "enabled": k.enabled,
        "metadata": k.metadata,
        "app_id": k.app_id,
        "prefix": k.prefix,
        "start": k.start,
        "key_hash": k.key_hash,
        "created_at": ts(k.created_at),
        "last_used_at": ts_opt(k.last_used_at),
        "last_used_ip": k.last_used_ip,
        "revoked_at": ts_opt(k.revoked_at),
        "revoked_reason": k.revoked_reason,
        "rotation_grace_until": ts_opt(k.previous.as_ref().map(|p| p.valid_until)),
    })
}

/// An audit event.
pub fn event(e: &AuditEvent) -> Value {
    json!({
        "id": e.id,
        "type": e.kind,
        "account_id": e.account_id,
        "mode": e.mode,
        "actor": e.actor,
        "ip": e.ip,
        "at": ts(e.at),
        "data": e.data,
    })
}

/// One activity row.
pub fn activity(a: &Activity) -> Value {
    json!({
        "at": ts(a.at),
        "ip": a.ip,
        "method": a.method,
        "path": a.path,
        "status": a.status,
        "code": a.code,
    })
}

/// An application (never its secrets).
pub fn application(a: &Application) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "description": a.description,
        "url": a.url,
        "scopes": a.scopes,
        "created_at": ts(a.created_at),
    })
}

/// A grant.
pub fn grant(g: &Grant) -> Value {
    json!({
        "id": g.id,
        "account_id": g.account_id,
        "app_id": g.app_id,
        "scopes": g.scopes,
        "created_at": ts(g.created_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ms = 1_774_000_800_123;
        let s = ts(ms);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_ts(&s).unwrap(), ms);
        assert!(parse_ts("yesterday").unwrap_err().contains("RFC 3339"));
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn styles_write_utc_as_configured() {
        let t = 1_774_000_800_123; // 2026-03-20T10:00:00.123Z
        let style = |o, p| TimestampStyle::parse(o, p).unwrap();
        assert_eq!(style("Z", "ms").format(t), "2026-03-20T10:00:00.123Z");
        assert_eq!(
            style("+00:00", "ms").format(t),
            "2026-03-20T10:00:00.123+00:00"
        );
        assert_eq!(style("+00:00", "s").format(t), "2026-03-20T10:00:00+00:00");
        assert_eq!(style("Z", "s").format(t), "2026-03-20T10:00:00Z");
        assert_eq!(ts(t), "2026-03-20T10:00:00.123Z");
        assert_eq!(
            TimestampStyle::parse("+01:00", "s").unwrap_err().0,
            "server.timestamp_offset"
        );
        assert_eq!(
            TimestampStyle::parse("Z", "us").unwrap_err().0,
            "server.timestamp_precision"
        );
    }

    #[tokio::test]
    async fn a_request_scope_sets_the_style() {
        let style = TimestampStyle {
            offset: true,
            seconds: true,
        };
        let inside = with_timestamp_style(style, async { ts(1_774_000_800_999) }).await;
        assert_eq!(inside, "2026-03-20T10:00:00+00:00");
    }
}
