//! `/healthz` (the process is up) and `/readyz` (the store answers).

use crate::errors::ApiError;
use crate::state::AppState;
use crate::views::HealthStatus;
use axum::extract::State;
use axum::Json;
use keywarden_core::codes::Code;

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up", body = crate::views::HealthStatus, example = json!({"status": "ok"}))), security(()), tag = "service")]
pub async fn healthz() -> Json<HealthStatus> {
    Json(HealthStatus { status: "ok" })
}

/// The store is reachable.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "The store is reachable", body = crate::views::HealthStatus, example = json!({"status": "ready"})), (status = 503, response = crate::openapi::Unavailable)), security(()), tag = "service")]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthStatus>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "store not ready");
        ApiError::with(Code::ServiceUnavailable, "the store is not reachable")
    })?;
    Ok(Json(HealthStatus { status: "ready" }))
}
