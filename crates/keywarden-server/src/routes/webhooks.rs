//! Webhook endpoints over HTTP (`docs/webhooks.md`): the operator's under
//! `/v1/admin/webhooks` (every account's, or one account's), and an account's own under
//! `/v1/webhooks` (its events, of the calling key's mode). Both go through
//! [`WebhookManager`], as the CLI does.

use crate::auth::{
    Admin, AdminEdit, SelfServiceCaller, WebhooksDelete, WebhooksRead, WebhooksWrite, WithBody,
    WithQuery,
};
use crate::bodies::{CreateOwnWebhook, CreateWebhook, DeliveriesQuery, PatchWebhook};
use crate::errors::ApiError;
use crate::extract::{ApiQuery, Id, JsonBody};
use crate::manage_webhooks::{NewWebhook, Owner, WebhookManager, WebhookPatch};
use crate::routes::{EndpointPath, Reply};
use crate::state::AppState;
use crate::views::{Delivery, Webhook, WebhookWithSecret};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

/// The admin API's webhook routes.
pub fn admin_routes() -> Router<AppState> {
    let endpoint = get(admin_get).patch(admin_patch).delete(admin_delete);
    let redeliver = post(admin_redeliver);
    Router::new()
        .route("/v1/admin/webhooks", post(admin_create).get(admin_list))
        .route("/v1/admin/webhooks/{id}", endpoint)
        .route("/v1/admin/webhooks/{id}/rotate-secret", post(admin_rotate))
        .route("/v1/admin/webhooks/{id}/deliveries", get(admin_deliveries))
        .route(
            "/v1/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            redeliver,
        )
        .route("/v1/admin/webhooks/{id}/test", post(admin_test))
}

/// The self-service API's webhook routes (under the base path).
pub fn self_service_routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks", post(create).get(list))
        .route("/webhooks/{id}", get(show).patch(patch).delete(delete))
        .route("/webhooks/{id}/rotate-secret", post(rotate))
        .route("/webhooks/{id}/deliveries", get(deliveries))
        .route(
            "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
        .route("/webhooks/{id}/test", post(test))
}

impl From<PatchWebhook> for WebhookPatch {
    fn from(b: PatchWebhook) -> Self {
        WebhookPatch {
            url: b.url,
            events: b.events,
            enabled: b.enabled,
            description: b.description,
        }
    }
}

fn with_secret(e: &keywarden_store::webhooks::WebhookEndpoint) -> WebhookWithSecret {
    WebhookWithSecret::from(e)
}

// ---- admin ----

/// `POST /v1/admin/webhooks`.
#[utoipa::path(post, path = "/v1/admin/webhooks", request_body = CreateWebhook,
    responses((status = 201, description = "The endpoint with its signing `secret`, shown once", body = crate::views::WebhookWithSecret)))]
pub async fn admin_create(
    WithBody(admin, b): WithBody<Admin, CreateWebhook>,
) -> Result<Response, ApiError> {
    let e = admin
        .webhooks()
        .create(
            &admin.actor,
            &Owner::Root,
            NewWebhook {
                url: b.url,
                events: b.events,
                account_id: b.account_id,
                mode: b.mode,
                description: b.description,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(with_secret(&e))).into_response())
}

/// `GET /v1/admin/webhooks`.
#[utoipa::path(get, path = "/v1/admin/webhooks",
    responses((status = 200, description = "Every endpoint, by id", body = Vec<crate::views::Webhook>)))]
pub async fn admin_list(admin: Admin) -> Reply<Vec<Webhook>> {
    let list = admin.webhooks().list(&Owner::Root).await?;
    Ok(Json(list.iter().map(Webhook::from).collect()))
}

/// `GET /v1/admin/webhooks/{id}`.
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}", params(EndpointPath),
    responses((status = 200, description = "The endpoint", body = crate::views::Webhook)))]
pub async fn admin_get(admin: Admin, Id(id): Id) -> Reply<Webhook> {
    let e = admin.webhooks().get(&Owner::Root, &id).await?;
    Ok(Json(Webhook::from(&e)))
}

/// `PATCH /v1/admin/webhooks/{id}`.
#[utoipa::path(patch, path = "/v1/admin/webhooks/{id}", params(EndpointPath), request_body = PatchWebhook,
    responses((status = 200, description = "The endpoint", body = crate::views::Webhook), (status = 409, response = crate::openapi::Conflict)))]
pub async fn admin_patch(
    AdminEdit { admin, id, body: b }: AdminEdit<PatchWebhook>,
) -> Reply<Webhook> {
    let e = admin
        .webhooks()
        .update(&admin.actor, &Owner::Root, &id, b.into())
        .await?;
    Ok(Json(Webhook::from(&e)))
}

/// `DELETE /v1/admin/webhooks/{id}`.
#[utoipa::path(delete, path = "/v1/admin/webhooks/{id}", params(EndpointPath),
    responses((status = 204, description = "Deleted, with its delivery log")))]
pub async fn admin_delete(admin: Admin, Id(id): Id) -> Result<StatusCode, ApiError> {
    admin
        .webhooks()
        .delete(&admin.actor, &Owner::Root, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/admin/webhooks/{id}/rotate-secret`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/rotate-secret", params(EndpointPath),
    responses((status = 200, description = "The endpoint with its new `secret`, shown once; the previous one signs too until `previous_secret_until`", body = crate::views::WebhookWithSecret), (status = 409, response = crate::openapi::Conflict)))]
pub async fn admin_rotate(admin: Admin, Id(id): Id) -> Reply<WebhookWithSecret> {
    let e = admin
        .webhooks()
        .rotate_secret(&admin.actor, &Owner::Root, &id)
        .await?;
    Ok(Json(with_secret(&e)))
}

/// `GET /v1/admin/webhooks/{id}/deliveries`.
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}/deliveries", params(EndpointPath, DeliveriesQuery),
    responses((status = 200, description = "The delivery log, newest first, each with its attempts", body = Vec<crate::views::Delivery>), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn admin_deliveries(
    admin: Admin,
    Id(id): Id,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Reply<Vec<Delivery>> {
    let list = admin
        .webhooks()
        .deliveries(
            &Owner::Root,
            &id,
            q.before.as_deref(),
            q.limit.unwrap_or(20),
        )
        .await?;
    Ok(Json(list))
}

/// `POST /v1/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver", description = "Refused with 409 `conflict` while the endpoint is disabled (nothing is sent to a disabled endpoint, so the delivery would never be sent: enable it first) and while the delivery is being sent.", params(EndpointPath, ("delivery_id" = String, Path, description = "Delivery id")),
    responses((status = 202, description = "The delivery, pending again and due now", body = crate::views::Delivery), (status = 409, response = crate::openapi::Conflict)))]
pub async fn admin_redeliver(
    admin: Admin,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = admin
        .webhooks()
        .redeliver(&Owner::Root, &id, &delivery_id)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(d)).into_response())
}

/// `POST /v1/admin/webhooks/{id}/test`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/test", params(EndpointPath), description = "Refused with 409 `conflict` while the endpoint is disabled: nothing is sent to a disabled endpoint, so the test event would never be sent; enable it first.",
    responses((status = 202, description = "A `webhook.test` event queued for this endpoint only", body = crate::views::Delivery), (status = 409, response = crate::openapi::Conflict)))]
pub async fn admin_test(admin: Admin, Id(id): Id) -> Result<Response, ApiError> {
    let d = admin.webhooks().send_test(&Owner::Root, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(d)).into_response())
}

// ---- self-service ----

fn owner(c: &crate::auth::Caller) -> Owner {
    Owner::Account {
        account_id: c.account.id.clone(),
        mode: c.key.mode,
    }
}

/// `POST /v1/webhooks`.
#[utoipa::path(post, path = "/v1/webhooks", security(("api_key" = ["webhooks:write"])), request_body = CreateOwnWebhook, description = "The endpoint receives the account's events of the calling key's mode, and the account's events without a mode.",
    responses((status = 201, description = "The endpoint with its signing `secret`, shown once", body = crate::views::WebhookWithSecret)))]
pub async fn create(
    WithBody(c, b): WithBody<SelfServiceCaller<WebhooksWrite>, CreateOwnWebhook>,
) -> Result<Response, ApiError> {
    let new = NewWebhook {
        url: b.url,
        events: b.events,
        description: b.description,
        ..NewWebhook::default()
    };
    let webhooks = WebhookManager::new(&c.state);
    let e = webhooks.create(&c.actor(), &owner(&c), new).await?;
    Ok((StatusCode::CREATED, c.limits(), Json(with_secret(&e))).into_response())
}

/// `GET /v1/webhooks`.
#[utoipa::path(get, path = "/v1/webhooks", security(("api_key" = ["webhooks:read"])),
    responses((status = 200, description = "The account's endpoints of the key's mode", body = Vec<crate::views::Webhook>)))]
pub async fn list(c: SelfServiceCaller<WebhooksRead>) -> Result<Response, ApiError> {
    let list = WebhookManager::new(&c.state).list(&owner(&c)).await?;
    let items: Vec<Webhook> = list.iter().map(Webhook::from).collect();
    Ok((c.limits(), Json(items)).into_response())
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(get, path = "/v1/webhooks/{id}", security(("api_key" = ["webhooks:read"])), params(EndpointPath),
    responses((status = 200, description = "The endpoint", body = crate::views::Webhook)))]
pub async fn show(c: SelfServiceCaller<WebhooksRead>, Id(id): Id) -> Result<Response, ApiError> {
    let e = WebhookManager::new(&c.state).get(&owner(&c), &id).await?;
    Ok((c.limits(), Json(Webhook::from(&e))).into_response())
}

/// `PATCH /v1/webhooks/{id}`.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", security(("api_key" = ["webhooks:write"])), params(EndpointPath), request_body = PatchWebhook,
    responses((status = 200, description = "The endpoint", body = crate::views::Webhook), (status = 409, response = crate::openapi::Conflict)))]
pub async fn patch(
    c: SelfServiceCaller<WebhooksWrite>,
    Id(id): Id,
    JsonBody(b): JsonBody<PatchWebhook>,
) -> Result<Response, ApiError> {
    let e = WebhookManager::new(&c.state)
        .update(&c.actor(), &owner(&c), &id, b.into())
        .await?;
    Ok((c.limits(), Json(Webhook::from(&e))).into_response())
}

/// `DELETE /v1/webhooks/{id}`.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", security(("api_key" = ["webhooks:delete"])), params(EndpointPath),
    responses((status = 204, description = "Deleted, with its delivery log")))]
pub async fn delete(
    c: SelfServiceCaller<WebhooksDelete>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    WebhookManager::new(&c.state)
        .delete(&c.actor(), &owner(&c), &id)
        .await?;
    Ok((StatusCode::NO_CONTENT, c.limits(), ()).into_response())
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", security(("api_key" = ["webhooks:write"])), params(EndpointPath),
    responses((status = 200, description = "The endpoint with its new `secret`, shown once; the previous one signs too until `previous_secret_until`", body = crate::views::WebhookWithSecret), (status = 409, response = crate::openapi::Conflict)))]
pub async fn rotate(c: SelfServiceCaller<WebhooksWrite>, Id(id): Id) -> Result<Response, ApiError> {
    let e = WebhookManager::new(&c.state)
        .rotate_secret(&c.actor(), &owner(&c), &id)
        .await?;
    Ok((c.limits(), Json(with_secret(&e))).into_response())
}

/// `GET /v1/webhooks/{id}/deliveries`.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", security(("api_key" = ["webhooks:read"])), params(EndpointPath, DeliveriesQuery),
    responses((status = 200, description = "The delivery log, newest first, each with its attempts", body = Vec<crate::views::Delivery>), (status = 400, response = crate::openapi::BadRequest)))]
pub async fn deliveries(
    WithQuery(c, q): WithQuery<SelfServiceCaller<WebhooksRead>, DeliveriesQuery>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let list = WebhookManager::new(&c.state)
        .deliveries(&owner(&c), &id, q.before.as_deref(), q.limit.unwrap_or(20))
        .await?;
    Ok((c.limits(), Json(list)).into_response())
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", security(("api_key" = ["webhooks:write"])), description = "Refused with 409 `conflict` while the endpoint is disabled (nothing is sent to a disabled endpoint, so the delivery would never be sent: enable it first) and while the delivery is being sent.", params(EndpointPath, ("delivery_id" = String, Path, description = "Delivery id")),
    responses((status = 202, description = "The delivery, pending again and due now", body = crate::views::Delivery), (status = 409, response = crate::openapi::Conflict)))]
pub async fn redeliver(
    c: SelfServiceCaller<WebhooksWrite>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = WebhookManager::new(&c.state)
        .redeliver(&owner(&c), &id, &delivery_id)
        .await?;
    Ok((StatusCode::ACCEPTED, c.limits(), Json(d)).into_response())
}

/// `POST /v1/webhooks/{id}/test`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", security(("api_key" = ["webhooks:write"])), params(EndpointPath), description = "Refused with 409 `conflict` while the endpoint is disabled: nothing is sent to a disabled endpoint, so the test event would never be sent; enable it first.",
    responses((status = 202, description = "A `webhook.test` event queued for this endpoint only", body = crate::views::Delivery), (status = 409, response = crate::openapi::Conflict)))]
pub async fn test(c: SelfServiceCaller<WebhooksWrite>, Id(id): Id) -> Result<Response, ApiError> {
    let d = WebhookManager::new(&c.state)
        .send_test(&owner(&c), &id)
        .await?;
    Ok((StatusCode::ACCEPTED, c.limits(), Json(d)).into_response())
}
