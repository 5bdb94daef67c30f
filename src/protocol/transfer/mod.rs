//! Moving one file through a stream pair in checked chunks.
//!
//! The holder sends an [`Offer`](crate::protocol::wire::Offer); unless the offer is eager,
//! the receiver answers `Ready` with the chunks it already holds from an
//! interrupted transfer and the number of streams it takes. The holder then sends
//! every chunk in order, as data or as `KEPT` where the receiver's copy matches:
//! on the offer's stream alone, or striped over extra streams (see
//! [`stripes`](crate::protocol::stripes)). The offer's stream then carries `END` with the
//! file hash. The receiver checks each chunk's hash before it counts, commits
//! the file, and answers `Stored` or `Failed`: the verdict the holder waits for.
//!
//! `source` reads a file in pieces and `send` puts them on the streams;
//! `receive` answers the offer and `receive_chunks` takes the chunks off, each
//! stream's into a `checker` that hashes and writes them into a [`Sink`].

mod checker;
mod failure;
mod receive;
mod receive_chunks;
mod send;
mod sink;
mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::stripes::stripe_chunks;
use crate::protocol::wire::{Hash, Offer};

pub use receive::receive_file;
pub use send::send_file;
pub use sink::{Committed, Sink};
pub use source::{Segment, Source, file_offer};

/// How long a failing side waits for the other's reason or acknowledgement.
const REASON_WAIT: Duration = Duration::from_secs(2);
/// Stream error code for a receiver that gave up on a file.
pub const CODE_FAILED: u32 = 1;

/// Counts bytes as they cross the network, for progress displays; a child
/// counter (one file) also adds to its parent (all files).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    bytes: Arc<AtomicU64>,
    parent: Option<Arc<AtomicU64>>,
}

impl Progress {
    pub fn child(&self) -> Progress {
        Progress {
            bytes: Arc::default(),
            parent: Some(self.bytes.clone()),
        }
    }

    pub fn add(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            parent.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// What the sender learns when the receiver stored a file.
#[derive(Debug, Clone)]
pub struct Sent {
    pub stored_as: String,
    pub hash: String,
    /// Data bytes that crossed the network (less than the size after a resume).
    pub sent_bytes: u64,
}

/// What a receiver reports about a stored file.
#[derive(Debug, Clone)]
pub struct Received {
    pub offer: Offer,
    pub stored_as: String,
    pub replaced: bool,
    pub hash: String,
    pub received_bytes: u64,
}

/// What one stream of a transfer carried: the hashes of its chunks, in order,
/// and the data bytes that crossed the network.
struct StripeDone {
    hashes: Vec<Hash>,
    bytes: u64,
}

/// The hashes of all `chunks` chunks, in order, from those of each stripe.
fn merge_hashes(chunks: u64, done: &[StripeDone]) -> Vec<Hash> {
    let mut hashes = vec![[0u8; 32]; chunks as usize];
    let stripes = done.len() as u32;
    for (stripe, done) in (0..).zip(done) {
        for (index, hash) in stripe_chunks(stripe, stripes, chunks).zip(&done.hashes) {
            hashes[index as usize] = *hash;
        }
    }
    hashes
}
