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
//! `receive_set` takes chunk sets of one file from several sources into one
//! sink, each chunk checked against the file's hash list.

mod checker;
mod failure;
mod receive;
mod receive_chunks;
mod receive_set;
mod send;
mod sink;
mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::stripes::stripe_chunks;
use crate::protocol::wire::{Hash, Offer};

pub use receive::receive_file;
pub use receive_set::{SetFailed, SharedFile};
pub use send::{send_chunk_set, send_file};
pub use sink::{Committed, ExpectedHashes, ReadBack, Sink};
pub use source::{Conversion, Segment, Source, file_offer};

/// How long a failing side waits for the other's reason or acknowledgement.
const REASON_WAIT: Duration = Duration::from_secs(2);
/// Stream error code for a receiver that gave up on a file.
pub const CODE_FAILED: u32 = 1;

/// Counts a file's bytes as they cross the network (decoded, for progress
/// displays) and the bytes on the wire; a child counter (one file) also adds
/// to its parent (all files).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    counts: Arc<Counts>,
    parent: Option<Arc<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    bytes: AtomicU64,
    wire: AtomicU64,
}

impl Counts {
    fn add(&self, bytes: u64, wire: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.wire.fetch_add(wire, Ordering::Relaxed);
    }
}

impl Progress {
    pub fn child(&self) -> Progress {
        Progress {
            counts: Arc::default(),
            parent: Some(self.counts.clone()),
        }
    }

    /// `bytes` of a file moved, in `wire` bytes on the network.
    pub fn add(&self, bytes: u64, wire: u64) {
        self.counts.add(bytes, wire);
        if let Some(parent) = &self.parent {
            parent.add(bytes, wire);
        }
    }

    /// The file bytes moved so far.
    pub fn get(&self) -> u64 {
        self.counts.bytes.load(Ordering::Relaxed)
    }

    /// The bytes they took on the wire.
    pub fn wire(&self) -> u64 {
        self.counts.wire.load(Ordering::Relaxed)
    }
}

/// The data a file's transfer put on the network: fewer bytes than the file
/// after a resume, and fewer still on the wire where chunks were coded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// File bytes that crossed the network, as decoded.
    pub data_bytes: u64,
    /// The bytes they took on the wire.
    pub wire_bytes: u64,
}

impl Traffic {
    fn add(&mut self, wire: u64, data: u64, progress: &Progress) {
        self.wire_bytes += wire;
        self.data_bytes += data;
        progress.add(data, wire);
    }

    fn total(stripes: &[StripeDone]) -> Traffic {
        stripes
            .iter()
            .fold(Traffic::default(), |sum, stripe| Traffic {
                data_bytes: sum.data_bytes + stripe.traffic.data_bytes,
                wire_bytes: sum.wire_bytes + stripe.traffic.wire_bytes,
            })
    }

    /// File bytes per wire byte: 1 where nothing was coded (or nothing moved).
    pub fn compression(&self) -> f64 {
        if self.wire_bytes == 0 {
            1.0
        } else {
            self.data_bytes as f64 / self.wire_bytes as f64
        }
    }
}

/// What the sender learns when the receiver stored a file.
#[derive(Debug, Clone)]
pub struct Sent {
    pub stored_as: String,
    pub hash: String,
    pub traffic: Traffic,
}

/// What a receiver reports about a stored file.
#[derive(Debug, Clone)]
pub struct Received {
    pub offer: Offer,
    pub stored_as: String,
    pub replaced: bool,
    pub hash: String,
    pub traffic: Traffic,
}

/// What one stream of a transfer carried: the hashes of its chunks, in order,
/// and the data that crossed the network.
struct StripeDone {
    hashes: Vec<Hash>,
    traffic: Traffic,
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
