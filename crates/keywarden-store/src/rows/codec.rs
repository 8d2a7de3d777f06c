//! Entities to parameters and back.

use super::*;

pub(super) fn to_json<T: Serialize + ?Sized>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("unserializable value: {e}")))
}

pub(super) fn secret_params(s: &StoredSecret) -> [Param; 3] {
    [
        s.scheme.as_str().into(),
        s.lookup.as_str().into(),
        s.hash.as_str().into(),
    ]
}

/// A key found by a secret it rotated out for good: that secret as its current one, no
/// previous one, revoked at its revocation or else at its creation.
pub(super) fn decode_retired<R: RowGet>(r: &R) -> StoreResult<KeyRecord> {
    let mut key = decode_key(r)?;
    key.secret = decode_secret(r, "retired_")?;
    key.previous = None;
    key.revoked_at = Some(key.revoked_at.unwrap_or(key.created_at));
    Ok(key)
}

pub(super) fn decode_secret<R: RowGet>(r: &R, prefix: &str) -> StoreResult<StoredSecret> {
    Ok(StoredSecret {
        scheme: r.parse(&format!("{prefix}scheme"))?,
        lookup: r.text(&format!("{prefix}lookup"))?,
        hash: r.text(&format!("{prefix}hash"))?,
    })
}

pub(super) fn account_params(a: &Account) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        a.id.as_str(),
        a.name.as_str(),
        a.plan.as_str(),
        a.status.as_str(),
        to_json(&a.metadata)?,
        a.created_at,
    ]))
}

pub(super) fn decode_account<R: RowGet>(r: &R) -> StoreResult<Account> {
    Ok(Account {
        id: r.text("id")?,
        name: r.text("name")?,
        plan: r.text("plan")?,
        status: r.parse("status")?,
        metadata: r.json("metadata")?,
        created_at: r.int("created_at")?,
    })
}

pub(super) fn key_params(k: &KeyRecord) -> StoreResult<Vec<Param>> {
    let prev = k.previous.as_ref();
    let mut p = Vec::from(params![
        k.id.as_str(),
        k.account_id.as_str(),
        k.mode.as_str(),
        k.key_type.as_str(),
        k.name.as_str(),
        k.description.as_str(),
        k.owner.as_str(),
        k.role.as_str(),
        to_json(&k.scopes)?,
        k.expires_at,
        to_json(&k.ip_allowlist)?,
        k.rate_limit.map(|r| i64::from(r.requests)),
        k.rate_limit.map(|r| i64::from(r.per_seconds)),
        k.enabled,
        to_json(&k.metadata)?,
        k.app_id.as_deref(),
        k.grant_id.as_deref(),
        k.prefix.as_str(),
        k.start.as_str(),
        k.key_hash.as_str(),
    ]);
    p.extend(secret_params(&k.secret));
    p.extend(params![
        prev.map(|p| p.secret.scheme.as_str()),
        prev.map(|p| p.secret.lookup.as_str()),
        prev.map(|p| p.secret.hash.as_str()),
        prev.map(|p| p.key_hash.as_str()),
        prev.map(|p| p.valid_until),
        k.created_at,
        k.last_used_at,
        k.last_used_ip.as_deref(),
        k.revoked_at,
        k.revoked_reason.as_deref(),
        k.recoverable.as_deref(),
    ]);
    Ok(p)
}

pub(super) fn decode_key<R: RowGet>(r: &R) -> StoreResult<KeyRecord> {
    let rate_limit = match (r.opt_int("rate_requests")?, r.opt_int("rate_per_seconds")?) {
        (Some(requests), Some(per_seconds)) => Some(RateLimitSpec {
            requests: narrow("rate_requests", requests)?,
            per_seconds: narrow("rate_per_seconds", per_seconds)?,
        }),
        (None, None) => None,
        _ => {
            return Err(corrupt(
                "rate_per_seconds",
                "half of a rate limit is missing",
            ))
        }
    };
    let previous = match r.opt_text("prev_scheme")? {
        None => None,
        Some(_) => Some(PreviousSecret {
            secret: decode_secret(r, "prev_")?,
            key_hash: r.text("prev_key_hash")?,
            valid_until: r.int("prev_valid_until")?,
        }),
    };
    Ok(KeyRecord {
        id: r.text("id")?,
        account_id: r.text("account_id")?,
        mode: r.parse("mode")?,
        key_type: r.parse("key_type")?,
        name: r.text("name")?,
        description: r.text("description")?,
        owner: r.text("owner")?,
        role: r.parse("role")?,
        scopes: r.json("scopes")?,
        expires_at: r.opt_int("expires_at")?,
        ip_allowlist: r.json("ip_allowlist")?,
        rate_limit,
        enabled: r.flag("enabled")?,
        metadata: r.json("metadata")?,
        app_id: r.opt_text("app_id")?,
        grant_id: r.opt_text("grant_id")?,
        prefix: r.text("prefix")?,
        start: r.text("start")?,
        key_hash: r.text("key_hash")?,
        secret: decode_secret(r, "")?,
        previous,
        created_at: r.int("created_at")?,
        last_used_at: r.opt_int("last_used_at")?,
        last_used_ip: r.opt_text("last_used_ip")?,
        revoked_at: r.opt_int("revoked_at")?,
        revoked_reason: r.opt_text("revoked_reason")?,
        recoverable: r.opt_text("recoverable")?,
    })
}

pub(super) fn app_params(a: &Application) -> StoreResult<Vec<Param>> {
    let mut p = Vec::from(params![
        a.id.as_str(),
        a.name.as_str(),
        a.description.as_str(),
        a.url.as_deref(),
        to_json(&a.scopes)?,
    ]);
    p.extend(secret_params(&a.production));
    p.extend(secret_params(&a.sandbox));
    p.push(a.created_at.into());
    Ok(p)
}

pub(super) fn decode_app<R: RowGet>(r: &R) -> StoreResult<Application> {
    Ok(Application {
        id: r.text("id")?,
        name: r.text("name")?,
        description: r.text("description")?,
        url: r.opt_text("url")?,
        scopes: r.json("scopes")?,
        production: decode_secret(r, "production_")?,
        sandbox: decode_secret(r, "sandbox_")?,
        created_at: r.int("created_at")?,
    })
}

pub(super) fn grant_params(g: &Grant) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        g.id.as_str(),
        g.account_id.as_str(),
        g.app_id.as_str(),
        to_json(&g.scopes)?,
        g.created_at,
    ]))
}

pub(super) fn decode_grant<R: RowGet>(r: &R) -> StoreResult<Grant> {
    Ok(Grant {
        id: r.text("id")?,
        account_id: r.text("account_id")?,
        app_id: r.text("app_id")?,
        scopes: r.json("scopes")?,
        created_at: r.int("created_at")?,
    })
}

pub(super) fn event_params(e: &AuditEvent) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        e.id.as_str(),
        e.account_id.as_deref(),
        e.mode.map(Mode::as_str),
        e.kind.as_str(),
        e.actor.as_str(),
        e.ip.as_deref(),
        e.at,
        to_json(&e.data)?,
    ]))
}

pub(super) fn decode_event<R: RowGet>(r: &R) -> StoreResult<AuditEvent> {
    Ok(AuditEvent {
        id: r.text("id")?,
        account_id: r.opt_text("account_id")?,
        mode: r
            .opt_text("mode")?
            .map(|m| parse_column("mode", &m))
            .transpose()?,
        kind: r.text("kind")?,
        actor: r.text("actor")?,
        ip: r.opt_text("ip")?,
        at: r.int("at")?,
        data: r.json("data")?,
    })
}

pub(super) fn webhook_params(w: &WebhookEndpoint) -> StoreResult<Vec<Param>> {
    let events = match &w.events {
        Some(e) => Some(to_json(e)?),
        None => None,
    };
    Ok(Vec::from(params![
        w.id.as_str(),
        w.url.as_str(),
        events,
        w.account_id.as_deref(),
        w.mode.map(Mode::as_str),
        w.description.as_str(),
        w.enabled,
        w.secret.as_str(),
        w.prev_secret.as_deref(),
        w.prev_secret_until,
        w.failing_since,
        w.disabled_reason.as_deref(),
        w.created_at,
        w.updated_at,
    ]))
}

pub(super) fn decode_webhook<R: RowGet>(r: &R) -> StoreResult<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: r.text("id")?,
        url: r.text("url")?,
        events: match r.opt_text("events")? {
            Some(e) => Some(serde_json::from_str(&e).map_err(|e| corrupt("events", e))?),
            None => None,
        },
        account_id: r.opt_text("account_id")?,
        mode: r
            .opt_text("mode")?
            .map(|m| parse_column("mode", &m))
            .transpose()?,
        description: r.text("description")?,
        enabled: r.flag("enabled")?,
        secret: r.text("secret")?,
        prev_secret: r.opt_text("prev_secret")?,
        prev_secret_until: r.opt_int("prev_secret_until")?,
        failing_since: r.opt_int("failing_since")?,
        disabled_reason: r.opt_text("disabled_reason")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(super) fn decode_delivery<R: RowGet>(r: &R) -> StoreResult<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: r.text("id")?,
        endpoint_id: r.text("endpoint_id")?,
        event_id: r.text("message_id")?,
        kind: r.text("kind")?,
        status: r.parse("status")?,
        attempts: r.narrow("attempts")?,
        next_attempt_at: r.opt_int("next_attempt_at")?,
        last_status: r
            .opt_int("last_status")?
            .map(|v| narrow("last_status", v))
            .transpose()?,
        last_duration_ms: r.opt_int("last_duration_ms")?,
        last_response: r.opt_text("last_response")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.int("created_at")?,
        delivered_at: r.opt_int("delivered_at")?,
    })
}

pub(super) fn decode_attempt<R: RowGet>(r: &R) -> StoreResult<WebhookAttempt> {
    Ok(WebhookAttempt {
        at: r.int("at")?,
        status: r
            .opt_int("status")?
            .map(|v| narrow("status", v))
            .transpose()?,
        duration_ms: r.int("duration_ms")?,
        response: r.text("response")?,
        error: r.opt_text("error")?,
    })
}

pub(super) fn decode_usage_row<R: RowGet>(r: &R) -> StoreResult<UsageRow> {
    Ok(UsageRow {
        account_id: r.text("account_id")?,
        plan: r.text("plan")?,
        mode: r.parse("mode")?,
        unit: r.text("unit")?,
        period_start: r.int("period_start")?,
        used: narrow("used", r.int("used")?)?,
    })
}

pub(super) fn activity_params(a: &Activity) -> StoreResult<Vec<Param>> {
    Ok(Vec::from(params![
        a.key_id.as_str(),
        a.at,
        a.ip.as_deref(),
        a.method.as_str(),
        a.path.as_str(),
        i64::from(a.status),
        a.code.as_str(),
    ]))
}

pub(super) fn decode_activity<R: RowGet>(r: &R) -> StoreResult<Activity> {
    Ok(Activity {
        key_id: r.text("key_id")?,
        at: r.int("at")?,
        ip: r.opt_text("ip")?,
        method: r.text("method")?,
        path: r.text("path")?,
        status: r.narrow("status")?,
        code: r.text("code")?,
    })
}

/// A page's lower bound: the empty string sorts before every id.
pub(super) fn session_params(w: &WebSession) -> Vec<Param> {
    params![
        w.id_hash.as_str(),
        w.kind.as_str(),
        w.account_id.as_deref(),
        w.mode.map(Mode::as_str),
        w.role.map(|r| r.as_str()),
        w.return_url.as_deref(),
        w.created_at,
        w.expires_at,
        w.root_key.as_deref(),
    ]
    .to_vec()
}

pub(super) fn decode_session<R: RowGet>(r: &R) -> StoreResult<WebSession> {
    let opt = |col: &str| -> StoreResult<Option<String>> { r.opt_text(col) };
    Ok(WebSession {
        id_hash: r.text("id_hash")?,
        kind: r.parse("kind")?,
        account_id: opt("account_id")?,
        mode: opt("mode")?.map(|m| parse_column("mode", &m)).transpose()?,
        role: opt("role")?.map(|m| parse_column("role", &m)).transpose()?,
        return_url: opt("return_url")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        root_key: opt("root_key")?,
    })
}

pub(super) fn after(page: &Page) -> &str {
    page.after_id.as_deref().unwrap_or("")
}

pub(super) fn limit(n: u32) -> i64 {
    i64::from(n)
}
