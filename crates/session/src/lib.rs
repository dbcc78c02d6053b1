//! The session domain: what a session is, how it ends, where it is kept.
//!
//! Data flows one way: the gateway asks [`Sessions`] to create or end a session, the
//! store records it, and every live connection of that session holds a subscription to
//! its end signal, so ending a session is one event rather than a search for sockets.

pub mod control;
pub mod fanout;
mod lifecycle;
mod model;
pub mod nodes;
pub mod store;

pub use control::{AgentPresence, ControlBoard, ControlError, ControlState, Holder};
pub use lifecycle::{EndSignal, LinkSignal, Sessions};
pub use model::{
    LinkRole, NewSession, ProfileUse, Session, SessionEnd, SessionSource, SessionState, ViewerLink,
    link_secret_hash, new_link_secret, new_session_id,
};
pub use nodes::Node;
pub use store::{CheckoutActivation, SessionCounts, SessionStore, StoreError};
