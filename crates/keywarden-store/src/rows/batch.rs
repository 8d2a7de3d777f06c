//! Multi-row statements for the batched writes.

use super::*;

/// Most rows written by one multi-row statement.
pub(super) const MAX_ROWS_PER_STATEMENT: usize = 256;

/// Splits `n` rows into statement sizes that are powers of two (at most
/// [`MAX_ROWS_PER_STATEMENT`]), so a flush of any size reuses a handful of prepared
/// statements instead of preparing a new one for every distinct row count.
pub(super) fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= MAX_ROWS_PER_STATEMENT {
            MAX_ROWS_PER_STATEMENT
        } else {
            1 << n.ilog2()
        };
        n -= size;
        Some(size)
    })
}

/// `($1, $2, $3), ($4, $5, $6)` (or `(?, ?, ?), (?, ?, ?)`) for `rows` rows of `width`
/// values. A statement built with it has no other placeholder.
pub(super) fn values_list(rows: usize, width: usize, style: Placeholders) -> String {
    let mut out = String::new();
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            let sep = if c == 0 { "" } else { ", " };
            match style {
                Placeholders::Numbered => {
                    let _ = write!(out, "{sep}${}", r * width + c + 1);
                }
                Placeholders::Anonymous => {
                    out.push_str(sep);
                    out.push('?');
                }
            }
        }
        out.push(')');
    }
    out
}

/// Runs `make(values_list)` once per chunk of `rows`, each row being `width` parameters.
pub(super) async fn run_chunked<C: Exec + ?Sized>(
    c: &mut C,
    width: usize,
    rows: Vec<Vec<Param>>,
    make: impl Fn(&str) -> String + Send + Sync,
) -> StoreResult<()> {
    let mut rows = rows.into_iter();
    for size in chunk_sizes(rows.len()) {
        let params: Vec<Param> = rows.by_ref().take(size).flatten().collect();
        debug_assert_eq!(params.len(), size * width);
        c.run(&make(&values_list(size, width, C::PLACEHOLDERS)), &params)
            .await?;
    }
    Ok(())
}

/// Records key uses; the newest use per key wins, and an older one never overwrites a
/// newer one already stored. Keys are written in id order so concurrent flushes from
/// several replicas lock rows in the same order.
pub(super) async fn write_touches<C: Exec + ?Sized>(
    c: &mut C,
    touches: &[KeyTouch],
) -> StoreResult<()> {
    let mut newest: BTreeMap<&str, &KeyTouch> = BTreeMap::new();
    for t in touches {
        let slot = newest.entry(t.key_id.as_str()).or_insert(t);
        if t.at >= slot.at {
            *slot = t;
        }
    }
    let rows = newest
        .values()
        .map(|t| Vec::from(params![t.key_id.as_str(), t.at, t.ip.as_deref()]))
        .collect();
    run_chunked(c, 3, rows, |values| {
        format!(
            "UPDATE api_keys SET last_used_at = v.column2, last_used_ip = v.column3 \
             FROM (VALUES {values}) AS v \
             WHERE api_keys.id = v.column1 \
             AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at <= v.column2)"
        )
    })
    .await
}

/// Appends activity rows, then trims every key they touched to its newest
/// `retain_per_key` rows. A retention of 0 means no trimming (it is what a batch built
/// with `..Default::default()` carries, and keeping nothing is never what a caller that
/// appends rows wants).
pub(super) async fn write_activity<C: Exec + ?Sized>(
    c: &mut C,
    rows: &[Activity],
    retain_per_key: u32,
) -> StoreResult<()> {
    let values = rows
        .iter()
        .map(activity_params)
        .collect::<StoreResult<_>>()?;
    let head = format!(
        "INSERT INTO activity ({}) VALUES ",
        ACTIVITY.columns.join(", ")
    );
    run_chunked(c, ACTIVITY.columns.len(), values, |v| format!("{head}{v}")).await?;
    if retain_per_key > 0 {
        let keys: std::collections::BTreeSet<&str> =
            rows.iter().map(|a| a.key_id.as_str()).collect();
        for key in keys {
            c.run(TRIM_ACTIVITY, &params![key, limit(retain_per_key - 1)])
                .await?;
        }
    }
    Ok(())
}

/// Deletes what a batch wrote for keys or accounts erased while it waited in the writer, in
/// the batch's transaction, so an erasure leaves nothing behind however requests race it.
pub(super) async fn drop_orphans<C: Exec + ?Sized>(
    c: &mut C,
    batch: &WriteBatch,
) -> StoreResult<()> {
    let keys: std::collections::BTreeSet<&str> =
        batch.activity.iter().map(|a| a.key_id.as_str()).collect();
    for key in keys {
        c.run(ORPHAN_ACTIVITY, &params![key]).await?;
    }
    let accounts: std::collections::BTreeSet<&str> =
        batch.usage.iter().map(|u| u.account_id.as_str()).collect();
    for account in accounts {
        c.run(ORPHAN_USAGE, &params![account]).await?;
    }
    for e in &batch.events {
        if let Some(account) = e.account_id.as_deref() {
            c.run(ORPHAN_EVENT, &params![e.id.as_str(), account])
                .await?;
            c.run(ORPHAN_MESSAGE, &params![e.id.as_str(), account])
                .await?;
        }
    }
    let accounts: std::collections::BTreeSet<&str> = batch
        .decisions
        .iter()
        .filter_map(|d| d.key.as_ref().map(|(_, a, _)| a.as_str()))
        .collect();
    for account in accounts {
        c.run(ORPHAN_DECISIONS, &params![account]).await?;
    }
    Ok(())
}

/// Adds decision counts: each count goes to its key's, its account's and the deployment's
/// rows (a decision of no known key to the deployment's only), in minute, hour and day
/// buckets. Summed first, so one statement never upserts a row twice.
pub(super) async fn write_decisions<C: Exec + ?Sized>(
    c: &mut C,
    counts: &[DecisionCount],
) -> StoreResult<()> {
    type Row<'a> = (&'static str, Millis, &'a str, &'a str, &'a str, &'a str);
    let mut sums: BTreeMap<Row<'_>, u64> = BTreeMap::new();
    for d in counts {
        let (key, account, mode) = match &d.key {
            Some((k, a, m)) => (k.as_str(), a.as_str(), m.as_str()),
            None => ("", "", ""),
        };
        for g in Granularity::ALL {
            let bucket = g.bucket(d.minute);
            // The deployment's row, then the account's and the key's when there is a key.
            let rows = [("", ""), (account, ""), (account, key)];
            let n = if account.is_empty() { 1 } else { 3 };
            for &(account, key) in &rows[..n] {
                let sum = sums
                    .entry((g.as_str(), bucket, account, key, mode, d.code.as_str()))
                    .or_insert(0);
                *sum = sum.saturating_add(d.count);
            }
        }
    }
    let rows = sums
        .into_iter()
        .map(|((g, bucket, account, key, mode, code), n)| {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            Vec::from(params![g, bucket, account, key, mode, code, n])
        })
        .collect();
    run_chunked(c, 7, rows, |values| {
        format!(
            "INSERT INTO decision_counts (granularity, bucket, account_id, key_id, mode, code, n) \
             VALUES {values} ON CONFLICT (granularity, account_id, key_id, bucket, mode, code) \
             DO UPDATE SET n = decision_counts.n + excluded.n"
        )
    })
    .await
}

/// The statement and parameters reading decision counts.
pub(super) fn decisions_query(q: &DecisionQuery) -> (String, Vec<Param>) {
    let mut p: Vec<Param> = params![
        q.granularity.as_str(),
        q.account_id.as_deref().unwrap_or(""),
        q.key_id.as_deref().unwrap_or(""),
        q.from,
        q.to,
    ]
    .to_vec();
    let mut sql = String::from(
        "SELECT bucket, code, CAST(SUM(n) AS BIGINT) AS n FROM decision_counts WHERE granularity = $1 \
         AND account_id = $2 AND key_id = $3 AND bucket >= $4 AND bucket < $5",
    );
    if let Some(m) = q.mode {
        p.push(m.as_str().into());
        sql.push_str(" AND mode = $6");
    }
    sql.push_str(" GROUP BY bucket, code ORDER BY bucket, code");
    (sql, p)
}

/// Adds usage increments. Deltas for the same counter are summed first: one statement may
/// not upsert a row twice (PostgreSQL refuses), and sorted counters lock in a fixed order.
pub(super) async fn write_usage<C: Exec + ?Sized>(
    c: &mut C,
    deltas: &[UsageDelta],
) -> StoreResult<()> {
    let mut sums: BTreeMap<(&str, Mode, &str, Millis), u64> = BTreeMap::new();
    for d in deltas {
        let key = (
            d.account_id.as_str(),
            d.mode,
            d.unit.as_str(),
            d.period_start,
        );
        let sum = sums.entry(key).or_insert(0);
        *sum = sum.saturating_add(d.amount);
    }
    // A counter saturates at what it can hold rather than failing the batch: a failed batch
    // is retried, so an overflowing one would hold up every later write.
    let rows = sums
        .into_iter()
        .map(|((account, mode, unit, start), amount)| {
            let amount = i64::try_from(amount).unwrap_or(i64::MAX);
            Vec::from(params![account, mode.as_str(), unit, start, amount])
        })
        .collect();
    run_chunked(c, 5, rows, |values| {
        format!(
            "INSERT INTO usage (account_id, mode, unit, period_start, used) VALUES {values} \
             ON CONFLICT (account_id, mode, unit, period_start) \
             DO UPDATE SET used = CASE WHEN usage.used > {max} - excluded.used \
             THEN {max} ELSE usage.used + excluded.used END",
            max = i64::MAX
        )
    })
    .await
}

/// Appends audit events. An event whose id is already stored is skipped: ids are fresh
/// ULIDs, so a repeated id means the same event delivered again (the batched writer
/// retries a batch whose commit it could not confirm), and failing on it would wedge that
/// retry forever.
pub(super) async fn write_events<C: Exec + ?Sized>(
    c: &mut C,
    events: &[AuditEvent],
) -> StoreResult<()> {
    let values = events
        .iter()
        .map(event_params)
        .collect::<StoreResult<_>>()?;
    let head = format!(
        "INSERT INTO audit_events ({}) VALUES ",
        EVENTS.columns.join(", ")
    );
    run_chunked(c, EVENTS.columns.len(), values, |v| {
        format!("{head}{v} ON CONFLICT (id) DO NOTHING")
    })
    .await?;
    enqueue(c, events).await
}

/// The transactional outbox: for each event, its message and one delivery per enabled
/// endpoint it reaches, in the caller's transaction (`docs/webhooks.md`). A repeated event
/// (a batch retried) finds its rows already there and adds none.
pub(super) async fn enqueue<C: Exec + ?Sized>(c: &mut C, events: &[AuditEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let endpoints = all(c, &SQL.webhooks_enabled, &params![true], decode_webhook).await?;
    if endpoints.is_empty() {
        return Ok(());
    }
    for e in events {
        let targets: Vec<&WebhookEndpoint> = endpoints
            .iter()
            .filter(|w| {
                keywarden_core::webhooks::reaches(
                    w.account_id.as_deref(),
                    w.mode,
                    e.account_id.as_deref(),
                    e.mode,
                ) && keywarden_core::webhooks::subscribed(w.events.as_deref(), &e.kind)
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        queue_message(c, e).await?;
        for w in targets {
            queue_delivery(c, &w.id, e).await?;
        }
    }
    Ok(())
}

pub(super) async fn queue_message<C: Exec + ?Sized>(c: &mut C, e: &AuditEvent) -> StoreResult<()> {
    let p = params![
        e.id.as_str(),
        e.kind.as_str(),
        e.account_id.as_deref(),
        payload(e),
        e.at
    ];
    c.run(MESSAGE_INSERT, &p).await.map(drop)
}

pub(super) async fn queue_delivery<C: Exec + ?Sized>(
    c: &mut C,
    endpoint_id: &str,
    e: &AuditEvent,
) -> StoreResult<String> {
    let id = keywarden_core::model::new_id("whd");
    let p = params![
        id.as_str(),
        endpoint_id,
        e.id.as_str(),
        e.kind.as_str(),
        e.at
    ];
    c.run(DELIVERY_INSERT, &p).await?;
    Ok(id)
}

/// The statement and parameters for an event listing, with only the clauses the filter
/// needs so each shape uses the best index.
pub(super) fn events_query(f: &EventFilter) -> (String, Vec<Param>) {
    let mut sql = format!("{} WHERE 1 = 1", SQL.event_select);
    let mut params: Vec<Param> = Vec::new();
    // Adds a parameter and returns its placeholder.
    let mut bind = |value: Param| {
        params.push(value);
        format!("${}", params.len())
    };
    if let Some(account) = &f.account_id {
        let _ = write!(sql, " AND account_id = {}", bind(account.as_str().into()));
    }
    if let Some(mode) = f.mode {
        let p = bind(mode.as_str().into());
        if f.include_modeless {
            let _ = write!(sql, " AND (mode = {p} OR mode IS NULL)");
        } else {
            let _ = write!(sql, " AND mode = {p}");
        }
    }
    if let Some(kind) = &f.kind {
        match kind
            .strip_suffix('*')
            .filter(|family| family.ends_with('.'))
        {
            // `key.*` matches `key.created` but not `keys.x`: the family keeps its dot. A
            // prefix comparison (rather than LIKE) needs no escaping and is case-sensitive
            // on both databases.
            Some(family) => {
                let p = bind(family.into());
                let _ = write!(sql, " AND substr(kind, 1, length({p})) = {p}");
            }
            None => {
                let _ = write!(sql, " AND kind = {}", bind(kind.as_str().into()));
            }
        }
    }
    if let Some(since) = f.since {
        let _ = write!(sql, " AND at >= {}", bind(since.into()));
    }
    if let Some(before) = &f.before_id {
        let _ = write!(sql, " AND id < {}", bind(before.as_str().into()));
    }
    let _ = write!(
        sql,
        " ORDER BY id DESC LIMIT {}",
        bind(limit(f.limit).into())
    );
    (sql, params)
}
