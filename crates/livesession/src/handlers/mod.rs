//! Request handlers, grouped by resource.

pub mod admin;
pub mod cdp;
pub mod checkout;
pub mod control;
pub mod health;
pub mod links;
pub mod pages;
pub mod sessions;
pub mod stripe;
pub mod tasks;
pub mod tokens;
pub mod vnc;
pub mod workers;

use serde::Deserialize;

/// The `token` query parameter of WebSocket requests (noVNC cannot set headers).
#[derive(Debug, Default, Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}
