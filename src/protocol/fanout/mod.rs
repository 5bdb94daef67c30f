//! Fan-outs: one file sent to several listeners at the cost of about one upload.
//!
//! The sender arranges the receivers in a chain and uploads to the first;
//! each receiver checks every chunk against the hash the sender announced on
//! its own control stream, and passes checked chunks on to the next. A
//! receiver admits the parent the sender names for that fan-out only, so
//! `listen --allow <sender>` still works, and a parent can neither alter the
//! file nor deliver another.
//!
//! `distribute` is the sender's side, `node` a receiver's, `state` what a
//! receiver knows of the file, `sink` the sink that makes its chunks readable.

mod distribute;
mod node;
mod sink;
mod state;

pub use distribute::distribute;
pub use node::{Delivery, Fanout, FanoutNode};
pub use sink::FanoutSink;
