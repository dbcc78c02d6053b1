//! Billing: Stripe Checkout, spoken over its REST API with `reqwest`, and the check of
//! Stripe's webhook signatures. No SDK: the two calls we need are small and documented.

mod checkout;
mod webhook;

pub use checkout::{
    CheckoutClient, CheckoutError, CheckoutRequest, CreatedCheckout, install_tls_provider,
};
pub use webhook::{Event, SignatureError, signature_header, verify_signature};
