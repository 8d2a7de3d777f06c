//! Analytics (`docs/analytics.md`): decisions counted by outcome code in minute, hour and
//! day buckets, per key, per account and deployment-wide. The batched writer counts them
//! off the request path; this reads them for the admin API, the self-service API and the
//! console's charts.

use crate::errors::ApiError;
use crate::state::AppState;
use crate::views;
use crate::views::{AnalyticsBucket, AnalyticsReport};
use keywarden_core::model::{Millis, Mode};
use keywarden_store::{DecisionQuery, Granularity};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The most buckets one report holds.
pub const MAX_BUCKETS: i64 = 1440;

/// The query of `GET /v1/admin/analytics`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// Only this account's decisions (default: the whole deployment's).
    pub account_id: Option<String>,
    /// Only this key's decisions.
    pub key_id: Option<String>,
    /// Only `live` or `test` decisions (default: both).
    #[param(value_type = Option<keywarden_core::model::Mode>)]
    pub mode: Option<String>,
    /// Start, RFC 3339 (default: 24 buckets before `to`).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End, RFC 3339 (default: now); the bucket holding it is included.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `minute`, `hour` (default) or `day`.
    pub granularity: Option<String>,
}

/// The query of `GET /v1/analytics`: the caller's account and mode.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SelfAnalyticsQuery {
    /// Only this key's decisions (one the calling key reaches).
    pub key_id: Option<String>,
    /// Start, RFC 3339 (default: 24 buckets before `to`).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End, RFC 3339 (default: now); the bucket holding it is included.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `minute`, `hour` (default) or `day`.
    pub granularity: Option<String>,
}

/// A validated query, ready for the store.
#[derive(Debug, Clone)]
pub struct Range {
    /// Bucket size.
    pub granularity: Granularity,
    /// First bucket start.
    pub from: Millis,
    /// End, exclusive, on a bucket boundary.
    pub to: Millis,
}

/// Reads the range and granularity of a query, naming any bad field.
pub fn range(
    state: &AppState,
    from: &Option<String>,
    to: &Option<String>,
    granularity: Option<&str>,
) -> Result<Range, ApiError> {
    let granularity = match granularity {
        None | Some("") => Granularity::Hour,
        Some(g) => Granularity::parse(g).ok_or_else(|| {
            ApiError::invalid(format!(
                "granularity: {g:?} is not one of minute, hour, day"
            ))
        })?,
    };
    let size = granularity.millis();
    let ts = |field: &str, v: &Option<String>| -> Result<Option<Millis>, ApiError> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| views::parse_ts(s).map_err(|e| ApiError::invalid(format!("{field}: {e}"))))
            .transpose()
    };
    let to = ts("to", to)?.unwrap_or_else(|| state.clock.now_ms());
    // The bucket holding `to` is included, so the current minute, hour or day shows.
    let to = granularity.bucket(to) + size;
    let from = match ts("from", from)? {
        Some(f) => granularity.bucket(f),
        None => to - 24 * size,
    };
    if from >= to {
        return Err(ApiError::invalid("from: must be before to"));
    }
    if (to - from) / size > MAX_BUCKETS {
        return Err(ApiError::invalid(format!(
            "from: at most {MAX_BUCKETS} {} buckets per report; narrow the range or use a coarser granularity",
            granularity.as_str()
        )));
    }
    Ok(Range {
        granularity,
        from,
        to,
    })
}

/// Reads a mode parameter.
pub fn mode_param(v: Option<&str>) -> Result<Option<Mode>, ApiError> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(m) => m
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("mode: {m:?} is not one of live, test"))),
    }
}

/// The report of an account's or a key's decisions (or the deployment's, with neither).
pub async fn report(
    state: &AppState,
    range: Range,
    account_id: Option<String>,
    key_id: Option<String>,
    mode: Option<Mode>,
) -> Result<AnalyticsReport, ApiError> {
    let rows = state
        .store
        .decision_counts(&DecisionQuery {
            granularity: range.granularity,
            account_id: account_id.clone(),
            key_id: key_id.clone(),
            mode,
            from: range.from,
            to: range.to,
        })
        .await?;
    let size = range.granularity.millis();
    let mut buckets: BTreeMap<Millis, BTreeMap<String, u64>> = BTreeMap::new();
    let mut start = range.from;
    while start < range.to {
        buckets.insert(start, BTreeMap::new());
        start += size;
    }
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for (bucket, code, n) in rows {
        *buckets
            .entry(bucket)
            .or_default()
            .entry(code.clone())
            .or_insert(0) += n;
        *totals.entry(code).or_insert(0) += n;
    }
    Ok(AnalyticsReport {
        granularity: range.granularity.as_str(),
        from: range.from.into(),
        to: range.to.into(),
        account_id,
        key_id,
        mode,
        total: totals.values().sum(),
        totals,
        buckets: buckets
            .into_iter()
            .map(|(start, counts)| AnalyticsBucket {
                start: start.into(),
                total: counts.values().sum(),
                counts,
            })
            .collect(),
    })
}

/// A bar chart of a report for a page: one bar per bucket, its allowed part and its
/// refused part, scaled to the busiest bucket. Drawn by the template as inline SVG.
pub fn chart(r: &AnalyticsReport) -> minijinja::Value {
    let max = r.buckets.iter().map(|b| b.total).max().unwrap_or(0).max(1);
    let width = 100.0 / r.buckets.len().max(1) as f64;
    let bars: Vec<minijinja::Value> = r
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let valid = b.counts.get("valid").copied().unwrap_or(0);
            let refused = b.total - valid;
            let h = |n: u64| n as f64 * 100.0 / max as f64;
            minijinja::context! {
                x => format!("{:.3}", i as f64 * width),
                w => format!("{:.3}", (width * 0.8).max(0.1)),
                valid_h => format!("{:.3}", h(valid)),
                valid_y => format!("{:.3}", 100.0 - h(valid)),
                refused_h => format!("{:.3}", h(refused)),
                refused_y => format!("{:.3}", 100.0 - h(valid) - h(refused)),
                label => format!("{}: {} / {}", b.start.as_str(), valid, refused),
            }
        })
        .collect();
    minijinja::context! {
        bars => bars, max => max, total => r.total, totals => r.totals,
        from => r.from.as_str(), to => r.to.as_str(), granularity => r.granularity,
    }
}
