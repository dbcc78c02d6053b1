//! livesession: sells and serves live remote browser sessions.
//!
//! [`launch`] runs the server on a listener until a shutdown future resolves; `main.rs`
//! only parses the command line. Layout: `router` lists every route; `handlers/` holds
//! them by resource; `desktops` maps sessions to desktops; `ws` holds the WebSocket close
//! codes shared by the control channel and the VNC proxy.

mod app;
mod auth;
mod cdp_relay;
mod cluster;
/// The benchmarks live in their own crate; `livesession bench` runs them.
pub use livesession_bench as bench;
pub mod cli;
pub mod config;
mod desktops;
pub mod doctor;
mod downloads;
mod error;
pub mod events;
mod handlers;
mod limits;
mod login_capture;
mod openapi;
mod metrics;
mod nodes;
pub mod logging;
pub mod proxy;
mod recording;
mod router;
mod saved_state;
mod secrets;
pub mod security;
mod serve;
mod session_files;
mod task_feed;
mod task_runners;
mod tls;
mod web;
mod ws;

pub use app::{App, AppState, StartupError, launch};
pub use auth::{Role, cookie_name};
pub use ws::CloseCode;
