//! Webhook handling beyond the signature (which the e2e tests hold against Stripe's own
//! library): what a verified event does to sessions when deliveries arrive out of order,
//! for other products, or refund only part of a payment.

use serde_json::{Value, json};

use crate::support::{ADMIN, TestServer};

pub(crate) const SECRET: &str = "whsec_integration";

pub(crate) async fn paid_server() -> TestServer {
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

pub(crate) async fn deliver(server: &TestServer, event: Value) -> u16 {
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

pub(crate) fn completed(cs: &str, pi: &str, amount: u64) -> Value {
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

// ---------------------------------------------------------------- the claim credential

/// The `name=value` of every Set-Cookie header.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect()
}

fn value_of<'a>(cookies: &'a [String], prefix: &str) -> &'a str {
    cookies
        .iter()
        .find(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("a {prefix}… cookie in {cookies:?}"))
        .split_once('=')
        .unwrap()
        .1
}

/// `POST /api/checkout/claim` from our own page, with an optional Cookie header.
async fn claim_checkout(server: &TestServer, cs: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = server
        .http
        .post(server.url("/api/checkout/claim"))
        .header("sec-fetch-site", "same-origin")
        .json(&json!({ "checkout_session_id": cs }));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

/// A viewer link of `id` made by the admin and claimed by a person: the `lsr_` value.
async fn link_refresh(server: &TestServer, id: &str, role: &str) -> (String, String) {
    let made: Value = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/links")))
        .bearer_auth(ADMIN)
        .json(&json!({ "role": role }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = made["url"]
        .as_str()
        .unwrap()
        .split_once("/join#")
        .unwrap()
        .1;
    let claimed = server
        .http
        .post(server.url("/api/links/claim"))
        .header("sec-fetch-site", "same-origin")
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status(), 200);
    let cookies = set_cookies(&claimed);
    (
        made["id"].as_str().unwrap().to_owned(),
        value_of(&cookies, &format!("lsr_{id}=")).to_owned(),
    )
}

#[tokio::test]
async fn a_viewer_links_credential_posted_as_the_claim_cookie_gets_nothing() {
    let server = paid_server().await;
    let cs = "cs_claimed_once";
    assert_eq!(
        deliver(&server, completed(cs, "pi_claimed_once", 100)).await,
        200
    );
    // The buyer's browser claims: the session's cookies and its claim cookie.
    let first = claim_checkout(&server, cs, None).await;
    assert_eq!(first.status(), 200);
    let cookies = set_cookies(&first);
    let body: Value = first.json().await.unwrap();
    let id = body["session_id"].as_str().unwrap().to_owned();
    let claim_value = value_of(&cookies, &format!("lsc_{id}=")).to_owned();
    let owner_refresh = value_of(&cookies, &format!("lsr_{id}=")).to_owned();
    let owner_access = value_of(&cookies, &format!("ls_{id}=")).to_owned();

    // Links handed out: view-only, interactive, and a view link revoked afterwards.
    let (_, view) = link_refresh(&server, &id, "view").await;
    let (_, interactive) = link_refresh(&server, &id, "interactive").await;
    let (revoked_id, revoked) = link_refresh(&server, &id, "view").await;
    let gone = server
        .http
        .delete(server.url(&format!("/api/sessions/{id}/links/{revoked_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);

    // None of them, nor the owner's own refresh or access token, is a claim credential:
    // posted as the claim cookie, each gets an error and not one cookie.
    for (what, value) in [
        ("a view-only link's refresh token", &view),
        ("an interactive link's refresh token", &interactive),
        ("a revoked link's refresh token", &revoked),
        ("the session's refresh token", &owner_refresh),
        ("the session's access token", &owner_access),
    ] {
        let refused = claim_checkout(&server, cs, Some(&format!("lsc_{id}={value}"))).await;
        assert!(set_cookies(&refused).is_empty(), "{what}: no cookie");
        assert_eq!(refused.status(), 409, "{what}");
        let error: Value = refused.json().await.unwrap();
        assert_eq!(error["error"]["code"], "already_claimed", "{what}");
    }

    // The browser that claimed it still claims again (a reload of the success page).
    let again = claim_checkout(&server, cs, Some(&format!("lsc_{id}={claim_value}"))).await;
    assert_eq!(again.status(), 200);
    let renewed = set_cookies(&again);
    assert!(
        renewed.iter().any(|c| c.starts_with(&format!("ls_{id}="))),
        "{renewed:?}"
    );

    // And the claim credential is nothing but that: no refresh, no WebSocket.
    let as_refresh = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/token")))
        .bearer_auth(&claim_value)
        .send()
        .await
        .unwrap();
    assert_eq!(as_refresh.status(), 401);
    let as_cookie = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/token")))
        .header("cookie", format!("lsr_{id}={claim_value}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(as_cookie.status(), 401);
    let mut ws = crate::support::ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={claim_value}"),
        &[],
    )
    .await;
    assert_eq!(
        crate::support::close_of(&mut ws, std::time::Duration::from_secs(5))
            .await
            .0,
        4002
    );
    server.stop().await;
}

// ---------------------------------------------------------------- unpaid checkouts

/// A stand-in for Stripe's `POST /v1/checkout/sessions`: answers `cs_fake_<n>`.
pub(crate) async fn fake_stripe() -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(1));
    let app = axum::Router::new().route(
        "/v1/checkout/sessions",
        axum::routing::post(move || {
            let n = next.fetch_add(1, Ordering::SeqCst);
            async move {
                axum::Json(json!({ "id": format!("cs_fake_{n}"), "url": format!("https://pay.invalid/cs_fake_{n}") }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn start_checkout(server: &TestServer) {
    let started = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(server.url("/api/checkout"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
}

fn expired(cs: &str) -> Value {
    json!({ "id": format!("evt_expired_{cs}"), "type": "checkout.session.expired", "data": { "object": {
        "id": cs, "object": "checkout.session", "status": "expired", "payment_status": "unpaid",
        "amount_total": 100, "currency": "usd", "metadata": { "livesession_ref": "x" }
    }}})
}

#[tokio::test]
async fn a_checkout_never_paid_is_deleted_after_its_time_and_a_late_payment_still_gets_a_session() {
    let stripe = fake_stripe().await;
    let server = TestServer::start(&[
        "--stripe-secret-key",
        "sk_test_x",
        "--stripe-webhook-secret",
        SECRET,
        "--stripe-api-base",
        &stripe,
        "--pending-checkout-ttl",
        "2",
    ])
    .await;
    // Two checkouts started; the second is paid at once.
    start_checkout(&server).await;
    start_checkout(&server).await;
    assert_eq!(
        sessions_for(&server, "cs_fake_1").await[0]["state"],
        "pending"
    );
    assert_eq!(
        deliver(&server, completed("cs_fake_2", "pi_fake_2", 100)).await,
        200
    );
    assert_eq!(
        sessions_for(&server, "cs_fake_2").await[0]["state"],
        "active"
    );
    // Stripe's "expired" event deletes a pending checkout at once.
    start_checkout(&server).await;
    assert_eq!(sessions_for(&server, "cs_fake_3").await.len(), 1);
    assert_eq!(deliver(&server, expired("cs_fake_3")).await, 200);
    assert!(sessions_for(&server, "cs_fake_3").await.is_empty());

    // Past the 2 s limit (the cleanup runs every second), the unpaid one is gone, the
    // paid one stays.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sessions_for(&server, "cs_fake_1").await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unpaid checkout was never deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        sessions_for(&server, "cs_fake_2").await[0]["state"],
        "active"
    );
    let logs = crate::support::logs();
    assert!(
        logs.contains("deleted checkouts that were never paid"),
        "the cleanup is logged"
    );

    // Webhooks for the deleted one behave: "expired" is acknowledged and changes nothing;
    // a payment Stripe still confirms makes its session, which the buyer can claim.
    assert_eq!(deliver(&server, expired("cs_fake_1")).await, 200);
    let mut late = completed("cs_fake_1", "pi_fake_1", 100);
    late["data"]["object"]["metadata"] = json!({ "livesession_ref": "ours" });
    assert_eq!(deliver(&server, late).await, 200);
    assert_eq!(
        sessions_for(&server, "cs_fake_1").await[0]["state"],
        "active"
    );
    assert_eq!(
        claim_checkout(&server, "cs_fake_1", None).await.status(),
        200
    );
    server.stop().await;
}
