//! The RFB framing and client messages the benchmark clients use (they live in the relay
//! crate, which the server's own RFB clients share).

pub use livesession_relay::rfb_wire::*;
