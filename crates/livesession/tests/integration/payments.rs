//! Webhook handling beyond the signature (which the e2e tests hold against Stripe's own
//! library): what a verified event does to sessions when deliveries arrive out of order,
//! for other products, or refund only part of a payment.

use serde_json::{Value, json};

use crate::support::{ADMIN, TestServer};

const SECRET: &str = "whsec_integration";

async fn paid_server() -> TestServer {
    // The API base is never called in these tests (no checkout is created here).
    TestServer::start(&[
        "--stripe-secret-key",
        "sk_test_x",
        "--stripe-webhook-secret",
        SECRET,
        "--stripe-api-base",
        "http://127.0.0.1:9",
    ])
    .await
}

async fn deliver(server: &TestServer, event: Value) -> u16 {
    let body = event.to_string();
    let header = livesession_billing::signature_header(
        body.as_bytes(),
        SECRET,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    let response = server
        .http
        .post(server.url("/api/stripe/webhook"))
        .header("stripe-signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

fn completed(cs: &str, pi: &str, amount: u64) -> Value {
    json!({ "id": format!("evt_{cs}_{amount}"), "type": "checkout.session.completed", "data": { "object": {
        "id": cs, "object": "checkout.session", "payment_status": "paid", "payment_intent": pi,
        "amount_total": amount, "currency": "usd", "metadata": {}
    }}})
}

fn refunded(pi: &str, full: bool) -> Value {
    json!({ "id": format!("evt_refund_{pi}_{full}"), "type": "charge.refunded", "data": { "object": {
        "id": format!("ch_{pi}"), "object": "charge", "payment_intent": pi, "refunded": full,
        "amount": 100, "amount_refunded": if full { 100 } else { 40 }
    }}})
}

async fn sessions_for(server: &TestServer, cs: &str) -> Vec<Value> {
    let list: Value = server
        .http
        .get(server.url(&format!("/api/sessions?checkout_session_id={cs}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["sessions"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_refund_that_arrives_before_the_payment_prevents_the_session() {
    let server = paid_server().await;
    assert_eq!(deliver(&server, refunded("pi_early", true)).await, 200);
    assert_eq!(
        deliver(&server, completed("cs_early", "pi_early", 100)).await,
        200
    );
    assert!(sessions_for(&server, "cs_early").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn only_full_refunds_revoke_and_other_products_make_no_session() {
    let server = paid_server().await;
    assert_eq!(
        deliver(&server, completed("cs_partial", "pi_partial", 100)).await,
        200
    );
    assert_eq!(deliver(&server, refunded("pi_partial", false)).await, 200);
    assert_eq!(
        sessions_for(&server, "cs_partial").await[0]["state"],
        "active"
    );
    assert_eq!(deliver(&server, refunded("pi_partial", true)).await, 200);
    assert_eq!(
        sessions_for(&server, "cs_partial").await[0]["state"],
        "revoked"
    );

    // Something else sold on the same Stripe account, at another price.
    assert_eq!(
        deliver(&server, completed("cs_other", "pi_other", 4900)).await,
        200
    );
    assert!(sessions_for(&server, "cs_other").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_paid_session_is_not_revived_by_a_redelivery() {
    let server = paid_server().await;
    assert_eq!(
        deliver(&server, completed("cs_first", "pi_first", 100)).await,
        200
    );
    let id = sessions_for(&server, "cs_first").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.revoke(&id).await;
    // A redelivery (another event id) changes nothing.
    let mut again = completed("cs_first", "pi_first", 100);
    again["id"] = json!("evt_again");
    assert_eq!(deliver(&server, again).await, 200);
    assert_eq!(
        sessions_for(&server, "cs_first").await[0]["state"],
        "revoked"
    );
    server.stop().await;
}
