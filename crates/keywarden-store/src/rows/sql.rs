//! Tables: column lists and the statements generated from them.

use super::*;

/// A table's columns in the order its encoder produces values. INSERT, UPDATE and SELECT
/// statements are generated from this one list, so a column cannot be bound in the wrong
/// position.
pub(super) struct Table {
    /// The table name.
    pub(super) name: &'static str,
    /// Every column; the first is the primary key.
    pub(super) columns: &'static [&'static str],
    /// Columns an update must leave as they are (besides the primary key).
    pub(super) fixed: &'static [&'static str],
}

impl Table {
    /// `SELECT <every column> FROM <table>`, to be followed by a WHERE clause.
    pub(super) fn select(&self) -> String {
        format!("SELECT {} FROM {}", self.columns.join(", "), self.name)
    }

    /// `INSERT` of one row, parameters in column order.
    pub(super) fn insert(&self) -> String {
        let slots: Vec<String> = (1..=self.columns.len()).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.name,
            self.columns.join(", "),
            slots.join(", ")
        )
    }

    /// Whether an update sets this column.
    pub(super) fn updatable(&self, col: &str) -> bool {
        col != self.columns[0] && !self.fixed.contains(&col)
    }

    /// `UPDATE` of the mutable columns by primary key; takes [`Table::update_params`].
    pub(super) fn update(&self) -> String {
        let sets: Vec<String> = self
            .columns
            .iter()
            .filter(|c| self.updatable(c))
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 2))
            .collect();
        format!(
            "UPDATE {} SET {} WHERE {} = $1",
            self.name,
            sets.join(", "),
            self.columns[0]
        )
    }

    /// The parameter number of a mutable column in [`Table::update`].
    pub(super) fn param_of(&self, col: &str) -> usize {
        let at = self
            .columns
            .iter()
            .filter(|c| self.updatable(c))
            .position(|c| *c == col);
        at.map_or(0, |i| i + 2)
    }

    /// How many parameters [`Table::update`] takes.
    pub(super) fn update_params_len(&self) -> usize {
        1 + self.columns.iter().filter(|c| self.updatable(c)).count()
    }

    /// Narrows a full row of values to the primary key followed by the mutable columns.
    pub(super) fn update_params(&self, values: Vec<Param>) -> Vec<Param> {
        debug_assert_eq!(values.len(), self.columns.len());
        values
            .into_iter()
            .zip(self.columns)
            .enumerate()
            .filter(|(i, (_, c))| *i == 0 || self.updatable(c))
            .map(|(_, (v, _))| v)
            .collect()
    }
}

pub(super) const ACCOUNTS: Table = Table {
    name: "accounts",
    columns: &["id", "name", "plan", "status", "metadata", "created_at"],
    fixed: &["created_at"],
};

pub(super) const KEYS: Table = Table {
    name: "api_keys",
    columns: &[
        "id",
        "account_id",
        "mode",
        "key_type",
        "name",
        "description",
        "owner",
        "role",
        "scopes",
        "expires_at",
        "ip_allowlist",
        "rate_requests",
        "rate_per_seconds",
        "enabled",
        "metadata",
        "app_id",
        "grant_id",
        "prefix",
        "start",
        "key_hash",
        "scheme",
        "lookup",
        "hash",
        "prev_scheme",
        "prev_lookup",
        "prev_hash",
        "prev_key_hash",
        "prev_valid_until",
        "created_at",
        "last_used_at",
        "last_used_ip",
        "revoked_at",
        "revoked_reason",
        "recoverable",
    ],
    fixed: &["account_id", "mode", "key_type", "created_at"],
};

pub(super) const APPS: Table = Table {
    name: "applications",
    columns: &[
        "id",
        "name",
        "description",
        "url",
        "scopes",
        "production_scheme",
        "production_lookup",
        "production_hash",
        "sandbox_scheme",
        "sandbox_lookup",
        "sandbox_hash",
        "created_at",
    ],
    fixed: &["created_at"],
};

pub(super) const GRANTS: Table = Table {
    name: "grants",
    columns: &["id", "account_id", "app_id", "scopes", "created_at"],
    fixed: &["account_id", "app_id", "created_at"],
};

pub(super) const EVENTS: Table = Table {
    name: "audit_events",
    columns: &[
        "id",
        "account_id",
        "mode",
        "kind",
        "actor",
        "ip",
        "at",
        "data",
    ],
    fixed: &[],
};

pub(super) const WEBHOOKS: Table = Table {
    name: "webhook_endpoints",
    columns: &[
        "id",
        "url",
        "events",
        "account_id",
        "mode",
        "description",
        "enabled",
        "secret",
        "prev_secret",
        "prev_secret_until",
        "failing_since",
        "disabled_reason",
        "created_at",
        "updated_at",
    ],
    // `failing_since` belongs to the delivery worker: an update leaves it, except that
    // enabling a disabled endpoint clears it (the statement below).
    fixed: &["account_id", "mode", "created_at", "failing_since"],
};

pub(super) const DELIVERIES: Table = Table {
    name: "webhook_deliveries",
    columns: &[
        "id",
        "endpoint_id",
        "message_id",
        "kind",
        "status",
        "attempts",
        "next_attempt_at",
        "locked_until",
        "last_status",
        "last_duration_ms",
        "last_response",
        "last_error",
        "created_at",
        "delivered_at",
    ],
    fixed: &[],
};

/// Activity's `id` is assigned by the database, so it is not among the inserted columns.
pub(super) const ACTIVITY: Table = Table {
    name: "activity",
    columns: &["key_id", "at", "ip", "method", "path", "status", "code"],
    fixed: &[],
};

/// Every statement, built once. They are plain strings so sqlx caches each as a prepared
/// statement per connection.
pub(super) struct Statements {
    pub(super) account_insert: String,
    pub(super) account_get: String,
    pub(super) account_list: String,
    pub(super) account_update: String,
    pub(super) key_insert: String,
    pub(super) key_get: String,
    pub(super) key_by_hash: String,
    pub(super) key_by_lookup: String,
    pub(super) key_by_retired: String,
    pub(super) key_list: String,
    pub(super) key_list_mode: String,
    pub(super) key_by_grant: String,
    pub(super) key_update: String,
    pub(super) app_insert: String,
    pub(super) app_get: String,
    pub(super) app_list: String,
    pub(super) app_update: String,
    pub(super) grant_insert: String,
    pub(super) grant_get: String,
    pub(super) grant_list: String,
    pub(super) event_select: String,
    pub(super) activity_list: String,
    pub(super) webhook_insert: String,
    pub(super) webhook_get: String,
    pub(super) webhook_update: String,
    pub(super) webhooks_enabled: String,
    pub(super) webhook_select: String,
    pub(super) delivery_get: String,
    pub(super) delivery_list: String,
    pub(super) delivery_list_before: String,
    pub(super) key_deadlines: String,
}

pub(super) static SQL: LazyLock<Statements> = LazyLock::new(|| Statements {
    account_insert: ACCOUNTS.insert(),
    account_get: format!("{} WHERE id = $1", ACCOUNTS.select()),
    account_list: format!("{} WHERE id > $1 ORDER BY id LIMIT $2", ACCOUNTS.select()),
    account_update: ACCOUNTS.update(),
    key_insert: KEYS.insert(),
    key_get: format!("{} WHERE id = $1", KEYS.select()),
    key_by_hash: format!("{} WHERE key_hash = $1", KEYS.select()),
    // Both columns are indexed; SQLite answers with a MULTI-INDEX OR and PostgreSQL with a
    // BitmapOr of the two indexes (the suite checks both plans). A row matching on both
    // columns is returned once, which a UNION ALL would not guarantee.
    key_by_lookup: format!(
        "{} WHERE lookup = $1 OR prev_lookup = $1 ORDER BY id",
        KEYS.select()
    ),
    key_by_retired: format!(
        "SELECT {}, r.scheme AS retired_scheme, r.lookup AS retired_lookup, \
         r.hash AS retired_hash FROM retired_secrets r JOIN api_keys k ON k.id = r.key_id \
         WHERE r.lookup = $1 ORDER BY k.id",
        KEYS.columns
            .iter()
            .map(|c| format!("k.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ),
    key_list: format!(
        "{} WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        KEYS.select()
    ),
    key_list_mode: format!(
        "{} WHERE account_id = $1 AND mode = $4 AND id > $2 ORDER BY id LIMIT $3",
        KEYS.select()
    ),
    key_by_grant: format!("{} WHERE grant_id = $1 ORDER BY id", KEYS.select()),
    key_update: KEYS.update(),
    app_insert: APPS.insert(),
    app_get: format!("{} WHERE id = $1", APPS.select()),
    app_list: format!("{} WHERE id > $1 ORDER BY id LIMIT $2", APPS.select()),
    app_update: APPS.update(),
    grant_insert: GRANTS.insert(),
    grant_get: format!("{} WHERE id = $1", GRANTS.select()),
    grant_list: format!("{} WHERE account_id = $1 ORDER BY id", GRANTS.select()),
    event_select: EVENTS.select(),
    activity_list: format!(
        "{} WHERE key_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        ACTIVITY.select()
    ),
    webhook_insert: WEBHOOKS.insert(),
    webhook_get: format!("{} WHERE id = $1", WEBHOOKS.select()),
    // Only over the row as it was read: `updated_at` is the last parameter. (In a SET
    // clause `enabled` is the row's value before the update.)
    webhook_update: format!(
        "{} WHERE id = $1 AND updated_at = ${}",
        WEBHOOKS.update().replace(" WHERE id = $1", "").replacen(
            " SET ",
            &format!(
                " SET failing_since = CASE WHEN NOT enabled AND ${} THEN NULL \
                     ELSE failing_since END, ",
                WEBHOOKS.param_of("enabled")
            ),
            1
        ),
        WEBHOOKS.update_params_len() + 1
    ),
    webhooks_enabled: format!("{} WHERE enabled = $1 ORDER BY id", WEBHOOKS.select()),
    webhook_select: WEBHOOKS.select(),
    delivery_get: format!("{} WHERE id = $1", DELIVERIES.select()),
    delivery_list: format!(
        "{} WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2",
        DELIVERIES.select()
    ),
    delivery_list_before: format!(
        "{} WHERE endpoint_id = $1 AND id < $3 ORDER BY id DESC LIMIT $2",
        DELIVERIES.select()
    ),
    key_deadlines: format!(
        "{} WHERE id > $3 AND revoked_at IS NULL AND ((expires_at >= $1 AND expires_at <= $2) \
         OR (prev_valid_until >= $1 AND prev_valid_until <= $2)) ORDER BY id LIMIT $4",
        KEYS.select()
    ),
});

/// The statement behind `find_keys_by_lookup`, for the plan checks in the tests.
#[cfg(test)]
pub(crate) fn key_by_lookup_sql() -> &'static str {
    &SQL.key_by_lookup
}

/// Keeps the stored previous secret of key `$1` as retired when the update replaces it:
/// the new previous secret (`$2`, empty for none) and the new current one (`$3`) differ.
pub(super) const RETIRE_PREVIOUS: &str =
    "INSERT INTO retired_secrets (key_id, scheme, lookup, hash) \
     SELECT id, prev_scheme, prev_lookup, prev_hash FROM api_keys \
     WHERE id = $1 AND prev_lookup IS NOT NULL AND prev_lookup <> $2 AND prev_lookup <> $3";
pub(super) const ACCOUNT_EXISTS: &str = "SELECT COUNT(*) AS n FROM accounts WHERE id = $1";
pub(super) const COUNT_ACTIVE_KEYS: &str =
    "SELECT COUNT(*) AS n FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL";
pub(super) const COUNT_ACCOUNTS: &str = "SELECT COUNT(*) AS n FROM accounts";
/// Keys of mode `$1` in use at `$3`: enabled (`$2` is true), not expired, not revoked.
pub(super) const COUNT_KEYS_OF_MODE: &str = "SELECT COUNT(*) AS n FROM api_keys \
     WHERE mode = $1 AND enabled = $2 AND revoked_at IS NULL \
     AND (expires_at IS NULL OR expires_at > $3)";
pub(super) const GRANT_EXISTS: &str = "SELECT COUNT(*) AS n FROM grants WHERE id = $1";
pub(super) const REVOKE_GRANT_KEYS: &str =
    "UPDATE api_keys SET revoked_at = $2, revoked_reason = $3 \
     WHERE grant_id = $1 AND revoked_at IS NULL";
pub(super) const DELETE_GRANT: &str = "DELETE FROM grants WHERE id = $1";
pub(super) const GET_USAGE: &str = "SELECT used AS n FROM usage \
     WHERE account_id = $1 AND mode = $2 AND unit = $3 AND period_start = $4";

/// What erasing an account deletes, children first so foreign keys hold at every step.
pub(super) const ERASE_ACTIVITY: &str =
    "DELETE FROM activity WHERE key_id IN (SELECT id FROM api_keys WHERE account_id = $1)";
pub(super) const ERASE_EVENTS: &str = "DELETE FROM audit_events WHERE account_id = $1";
pub(super) const ERASE_USAGE: &str = "DELETE FROM usage WHERE account_id = $1";
pub(super) const ERASE_KEYS: &str = "DELETE FROM api_keys WHERE account_id = $1";
pub(super) const ERASE_GRANTS: &str = "DELETE FROM grants WHERE account_id = $1";
pub(super) const ERASE_ACCOUNT: &str = "DELETE FROM accounts WHERE id = $1";
pub(super) const ERASE_SESSIONS: &str = "DELETE FROM web_sessions WHERE account_id = $1";
pub(super) const ERASE_DECISIONS: &str = "DELETE FROM decision_counts WHERE account_id = $1";
/// An account's decision counts, once the account is gone (erased while they waited).
pub(super) const ORPHAN_DECISIONS: &str = "DELETE FROM decision_counts WHERE account_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $1)";
pub(super) const PRUNE_DECISIONS: &str =
    "DELETE FROM decision_counts WHERE granularity = $1 AND bucket < $2";
pub(super) const SESSION_COLUMNS: &str =
    "id_hash, kind, account_id, mode, role, return_url, created_at, expires_at, root_key";
pub(super) const SESSION_EXPIRED: &str = "DELETE FROM web_sessions WHERE expires_at <= $1";
pub(super) const SESSION_GET: &str = "SELECT id_hash, kind, account_id, mode, role, return_url, \
     created_at, expires_at, root_key FROM web_sessions WHERE id_hash = $1 AND expires_at > $2";
pub(super) const SESSION_TAKE: &str = "DELETE FROM web_sessions \
     WHERE id_hash = $1 AND expires_at > $2 RETURNING id_hash, kind, account_id, mode, role, \
     return_url, created_at, expires_at, root_key";
/// Messages about the account (their deliveries go with them) and its once-only markers;
/// its own endpoints go with the account.
pub(super) const ERASE_WEBHOOK_MESSAGES: &str =
    "DELETE FROM webhook_messages WHERE account_id = $1";
pub(super) const ERASE_FIRED: &str = "DELETE FROM fired_events WHERE account_id = $1";
pub(super) const ERASE_WEBHOOKS: &str = "DELETE FROM webhook_endpoints WHERE account_id = $1";

/// Deletes a key's activity older than its `$2 + 1`-th newest row. When the key has no
/// more rows than that, the subquery is empty, the comparison is NULL and nothing goes.
pub(super) const TRIM_ACTIVITY: &str = "DELETE FROM activity WHERE key_id = $1 AND (at, id) < \
     (SELECT at, id FROM activity WHERE key_id = $1 ORDER BY at DESC, id DESC LIMIT 1 OFFSET $2)";

/// A key's activity, once the key is gone (erased while its rows waited in the writer).
pub(super) const ORPHAN_ACTIVITY: &str = "DELETE FROM activity WHERE key_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)";
/// An account's usage, once the account is gone.
pub(super) const ORPHAN_USAGE: &str = "DELETE FROM usage WHERE account_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $1)";
/// A request-path event of an account that is gone.
pub(super) const ORPHAN_EVENT: &str = "DELETE FROM audit_events WHERE id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $2)";

/// The message of a request-path event of an account that is gone.
pub(super) const ORPHAN_MESSAGE: &str = "DELETE FROM webhook_messages WHERE id = $1 \
     AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = $2)";

pub(super) const MESSAGE_INSERT: &str =
    "INSERT INTO webhook_messages (id, kind, account_id, payload, \
     created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING";
pub(super) const MESSAGE_PAYLOAD: &str = "SELECT payload FROM webhook_messages WHERE id = $1";
pub(super) const DELIVERY_INSERT: &str =
    "INSERT INTO webhook_deliveries (id, endpoint_id, message_id, \
     kind, status, attempts, next_attempt_at, created_at) \
     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) ON CONFLICT DO NOTHING";
pub(super) const DELIVERY_FINISH: &str = "UPDATE webhook_deliveries SET status = $2, \
     attempts = attempts + 1, next_attempt_at = $3, locked_until = NULL, last_status = $4, \
     last_duration_ms = $5, last_response = $6, last_error = $7, delivered_at = $8 \
     WHERE id = $1 AND locked_until = $9";
pub(super) const ATTEMPT_INSERT: &str = "INSERT INTO webhook_attempts (delivery_id, at, status, \
     duration_ms, response, error) VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const ATTEMPT_LIST: &str = "SELECT at, status, duration_ms, response, error \
     FROM webhook_attempts WHERE delivery_id = $1 ORDER BY at, duration_ms";
pub(super) const ENDPOINT_SUCCEEDED: &str =
    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1";
pub(super) const ENDPOINT_FAILED: &str = "UPDATE webhook_endpoints \
     SET failing_since = COALESCE(failing_since, $2) WHERE id = $1";
/// Disables an endpoint after an attempt made at `$3`, unless it was changed since (its
/// `updated_at` is later): its `updated_at` moves forward, so an update over the row as it
/// was read before is refused.
pub(super) const ENDPOINT_DISABLE: &str = "UPDATE webhook_endpoints SET enabled = $4, \
     disabled_reason = $2, \
     updated_at = CASE WHEN updated_at >= $3 THEN updated_at + 1 ELSE $3 END \
     WHERE id = $1 AND updated_at <= $3";
pub(super) const ENDPOINT_EXISTS: &str =
    "SELECT COUNT(*) AS n FROM webhook_endpoints WHERE id = $1";
pub(super) const DELETE_WEBHOOK: &str = "DELETE FROM webhook_endpoints WHERE id = $1";
/// Only a delivery no process is sending now: one being sent keeps its lease.
pub(super) const REDELIVER: &str = "UPDATE webhook_deliveries SET status = 'pending', \
     next_attempt_at = $3, locked_until = NULL WHERE id = $2 AND endpoint_id = $1 \
     AND (locked_until IS NULL OR locked_until <= $3)";
pub(super) const DELIVERY_OF_ENDPOINT: &str =
    "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE id = $2 AND endpoint_id = $1";
/// Pending deliveries of enabled endpoints (`$1` is true): a disabled endpoint's wait for
/// it to be enabled again, and are no work for the worker until then.
pub(super) const BACKLOG: &str = "SELECT COUNT(*) AS n FROM webhook_deliveries d \
     JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.status = 'pending' AND e.enabled = $1";
pub(super) const FIRE_MARKER: &str = "INSERT INTO fired_events (marker, account_id, at) \
     VALUES ($1, $2, $3) ON CONFLICT (marker) DO NOTHING";
pub(super) const USAGE_SINCE: &str =
    "SELECT u.account_id AS account_id, a.plan AS plan, u.mode AS mode, \
     u.unit AS unit, u.period_start AS period_start, u.used AS used \
     FROM usage u JOIN accounts a ON a.id = u.account_id WHERE u.period_start >= $1";

/// The reason `delete_grant` records on the keys it revokes.
pub(super) const GRANT_DELETED: &str = "grant deleted";
