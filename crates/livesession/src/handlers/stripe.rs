//! `POST /api/stripe/webhook`: Stripe's events, verified against the endpoint's signing
//! secret before anything is read from them. Processing is idempotent (a retried or
//! duplicated event changes nothing), and a store failure answers 500 so Stripe retries.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use livesession_billing::{Event, verify_signature};
use serde_json::{Value, json};

use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::metrics::WebhookResult;
use crate::proxy::ClientInfo;

#[utoipa::path(post, path = "/api/stripe/webhook", tag = "checkout",
    request_body(content = Object, description = "A Stripe event, signed in the `Stripe-Signature` header"),
    responses((status = 200, description = "`{\"received\": true}`", body = Object),
        (status = 404, description = "This server does not sell sessions", body = crate::error::ErrorBody)))]
pub async fn stripe_webhook(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // Every delivery is counted by its result (`/metrics`).
    let result = receive(&app, client, headers, body).await;
    app.metrics.webhook(match &result {
        Ok(true) => WebhookResult::Processed,
        Ok(false) => WebhookResult::Duplicate,
        Err(e) => WebhookResult::of_error(e),
    });
    result.map(|_| Json(json!({ "received": true })))
}

/// Verifies and handles one delivery; `Ok(false)` if its event was already recorded
/// (a retry or a duplicate, handled again, which changes nothing).
async fn receive(
    app: &App,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<bool, ApiError> {
    let Some(secret) = app
        .checkout
        .as_ref()
        .and(app.config.stripe.webhook_secret.as_deref())
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "checkout_off",
            "this server does not sell sessions",
        ));
    };
    let body = body?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(e) = verify_signature(
        &body,
        signature,
        secret,
        app.config.stripe.webhook_tolerance as i64,
        now,
    ) {
        // Only failures are counted: a correctly signed delivery is never limited, so an
        // attacker sharing Stripe's path cannot make us refuse Stripe.
        if let Err(refused) = app.limits.check(RateClass::WebhookFailure, client.ip) {
            return Err(ApiError::rate_limited(&refused));
        }
        tracing::warn!(reason = %e, client = %client.ip, "Stripe webhook refused");
        return Err(ApiError::bad_request("invalid_signature", e.to_string()));
    }
    let event: Event = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_event", format!("event body: {e}")))?;
    handle(app, &event).await?;
    // Recorded after it was handled: if handling fails, Stripe's retry is handled again.
    let new = app
        .sessions
        .store()
        .record_event(&event.id, &event.kind, time::OffsetDateTime::now_utc())
        .await?;
    Ok(new)
}

/// Whether a paid checkout bought a session: one the server started (our reference in
/// its metadata), or one at our price and currency (a Payment Link for the product).
/// Other purchases on the same Stripe account are not ours to turn into sessions.
fn sells_a_session(app: &App, event: &Event) -> bool {
    let object = &event.data.object;
    let ours = object["metadata"]["livesession_ref"]
        .as_str()
        .is_some_and(|r| !r.is_empty());
    let price = &app.config.stripe;
    let same_price = object["amount_total"].as_u64() == Some(price.price_cents)
        && object["currency"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case(&price.currency));
    ours || same_price
}

async fn handle(app: &App, event: &Event) -> Result<(), ApiError> {
    use tracing::Instrument;
    // Instrumented, not entered: an entered span's guard held across an await moved
    // between worker threads and broke the subscriber's span stack (a panic in a worker,
    // seen with 50 concurrent deliveries).
    let span = tracing::info_span!("stripe_event", event_id = %event.id, event_type = %event.kind);
    handle_in_span(app, event).instrument(span).await
}

async fn handle_in_span(app: &App, event: &Event) -> Result<(), ApiError> {
    match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let Some(checkout_id) = event.object_str("id") else {
                return Err(ApiError::bad_request(
                    "invalid_event",
                    "checkout session without an id",
                ));
            };
            // `completed` also fires for delayed payment methods before the money arrives;
            // those activate on `async_payment_succeeded`.
            if event.object_str("payment_status") != Some("paid") {
                tracing::info!(
                    checkout_session_id = checkout_id,
                    "checkout completed but not paid yet"
                );
                return Ok(());
            }
            if !sells_a_session(app, event) {
                tracing::info!(
                    checkout_session_id = checkout_id,
                    "paid checkout for something else on this Stripe account; ignored"
                );
                return Ok(());
            }
            let payment_intent = event.object_str("payment_intent");
            // Stripe does not order deliveries: a refund may have arrived first.
            if let Some(pi) = payment_intent
                && app.sessions.store().is_refunded(pi).await?
            {
                tracing::info!(
                    checkout_session_id = checkout_id,
                    "payment already refunded; no session"
                );
                return Ok(());
            }
            let ttl = time::Duration::seconds(app.config.session_ttl as i64);
            let activated = app
                .sessions
                .activate_checkout(checkout_id, payment_intent, &app.config.start_url, ttl)
                .await?;
            match activated {
                None => tracing::info!(
                    checkout_session_id = checkout_id,
                    "checkout already handled"
                ),
                // Activation happens once per checkout, so the goal's task starts once.
                Some(session) => {
                    if let Some(goal) = session.goal.as_deref()
                        && let Err(e) = crate::handlers::tasks::start_goal(app, &session, goal).await
                    {
                        // A retried delivery finds the checkout handled: say it here.
                        tracing::error!(session_id = %session.id, error = %e.message, "the paid goal's agent task could not be queued");
                    }
                }
            }
        }
        // Stripe gave up on a checkout never paid (24 h by default): its pending session
        // goes now rather than at the next cleanup. An already active or ended session is
        // left alone, and a checkout we never recorded (or already deleted) is acknowledged.
        "checkout.session.expired" => {
            if let Some(checkout_id) = event.object_str("id")
                && !app.sessions.forget_expired_checkout(checkout_id).await?
            {
                tracing::info!(
                    checkout_session_id = checkout_id,
                    "expired checkout without a pending session; nothing to delete"
                );
            }
        }
        "charge.refunded" => {
            let Some(payment_intent) = event.object_str("payment_intent") else {
                return Ok(());
            };
            // A partial refund leaves the purchase standing.
            if event.data.object.get("refunded").and_then(|v| v.as_bool()) != Some(true) {
                tracing::info!(payment_intent, "partial refund; session kept");
                return Ok(());
            }
            app.sessions
                .store()
                .record_refund(payment_intent, time::OffsetDateTime::now_utc())
                .await?;
            match app
                .sessions
                .store()
                .find_by_payment_intent(payment_intent)
                .await?
            {
                Some(session) => {
                    app.sessions.revoke(&session.id, "payment refunded").await?;
                    app.desktops.end_session(&session.id).await;
                }
                None => tracing::info!(
                    payment_intent,
                    "refund for a payment without a session (yet); recorded"
                ),
            }
        }
        _ => tracing::debug!("event type not used; acknowledged"),
    }
    Ok(())
}
