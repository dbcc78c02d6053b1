//! Creating a Checkout Session: `POST /v1/checkout/sessions`, form-encoded, with the
//! secret key as a bearer token and an `Idempotency-Key`, as Stripe's API reference
//! documents. The API base is configurable so tests can point it at a local server.

use std::time::Duration;

use serde::Deserialize;

/// What we sell in one Checkout Session.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    /// Our reference for this purchase: `client_reference_id`, `metadata[livesession_ref]`
    /// and the idempotency key, so a retried request cannot create a second checkout.
    pub reference: String,
    pub amount_cents: u64,
    pub currency: String,
    pub product_name: String,
    /// Must contain `{CHECKOUT_SESSION_ID}`, which Stripe fills in.
    pub success_url: String,
    pub cancel_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatedCheckout {
    /// `cs_…`
    pub id: String,
    /// Stripe's hosted payment page.
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("could not reach Stripe: {0}")]
    Unreachable(String),
    #[error("Stripe refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from Stripe: {0}")]
    Unexpected(String),
}

pub struct CheckoutClient {
    api_base: String,
    secret_key: String,
    http: reqwest::Client,
}

/// Installs the TLS crypto provider (ring) for outgoing HTTPS. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl CheckoutClient {
    pub fn new(api_base: &str, secret_key: &str) -> Self {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client with the installed TLS provider");
        Self {
            api_base: api_base.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
            http,
        }
    }

    pub fn form(request: &CheckoutRequest) -> Vec<(&'static str, String)> {
        vec![
            ("mode", "payment".into()),
            ("line_items[0][quantity]", "1".into()),
            (
                "line_items[0][price_data][currency]",
                request.currency.clone(),
            ),
            (
                "line_items[0][price_data][unit_amount]",
                request.amount_cents.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]",
                request.product_name.clone(),
            ),
            ("success_url", request.success_url.clone()),
            ("cancel_url", request.cancel_url.clone()),
            ("client_reference_id", request.reference.clone()),
            ("metadata[livesession_ref]", request.reference.clone()),
        ]
    }

    pub async fn create(
        &self,
        request: &CheckoutRequest,
    ) -> Result<CreatedCheckout, CheckoutError> {
        let response = self
            .http
            .post(format!("{}/v1/checkout/sessions", self.api_base))
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", &request.reference)
            .form(&Self::form(request))
            .send()
            .await
            // Without the URL: errors are logged, and the URL names our Stripe endpoint only,
            // but keep request details out of messages on principle.
            .map_err(|e| CheckoutError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| CheckoutError::Unexpected(e.without_url().to_string()))?;
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned();
            return Err(CheckoutError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_value(body).map_err(|e| CheckoutError::Unexpected(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_has_stripes_documented_fields() {
        let form = CheckoutClient::form(&CheckoutRequest {
            reference: "ref1".into(),
            amount_cents: 100,
            currency: "usd".into(),
            product_name: "Session".into(),
            success_url: "http://x/checkout/success?session_id={CHECKOUT_SESSION_ID}".into(),
            cancel_url: "http://x/?checkout=cancelled".into(),
        });
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("mode"), Some("payment"));
        assert_eq!(get("line_items[0][price_data][unit_amount]"), Some("100"));
        assert_eq!(get("metadata[livesession_ref]"), Some("ref1"));
        assert!(
            get("success_url")
                .unwrap()
                .contains("{CHECKOUT_SESSION_ID}")
        );
    }
}
