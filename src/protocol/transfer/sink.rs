//! Where a received file goes. The disk sink is the store's; the listener has
//! sinks for stdout and for bench data it discards.

use std::pin::Pin;
use std::sync::Arc;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::protocol::wire::Hash;

/// Where a receiver puts a file: a partial file on disk, stdout, or nowhere.
/// Its methods block (disk I/O): writes and the commit run on blocking threads.
pub trait Sink: Send {
    /// Chunks already held and checked: from an interrupted transfer, or from
    /// an identical file stored before.
    fn held(&mut self) -> Vec<(u32, Hash)>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// The chunk's data was written and its hash matched.
    fn chunk_checked(&mut self, index: u32, hash: &Hash) -> Result<()>;
    /// Makes the whole, checked file visible.
    fn commit(self: Box<Self>, hash: &Hash) -> Result<Committed>;
    /// Whether `commit` touches the disk, and so needs a blocking thread; a
    /// thread hand-off is most of a small file's round trip otherwise.
    fn commit_blocks(&self) -> bool {
        true
    }
    /// Whether chunks must be checked in file order (a pipe): such a sink takes
    /// a file on one stream.
    fn in_order_only(&self) -> bool {
        false
    }
    /// Gives up, keeping checked chunks for a rerun when `keep` holds.
    fn abandon(self: Box<Self>, keep: bool);
    /// Fires when the sink must let go of its file (a rerun took it over).
    fn cancelled(&self) -> CancellationToken;
    /// Reads back the chunks this sink holds checked, for a fan-out to pass them
    /// on; `None` where it keeps nothing (stdout, bench).
    fn read_back(&self) -> Option<Arc<dyn ReadBack>> {
        None
    }
    /// The hashes the file's chunks must have, where they come from someone
    /// other than the peer sending the data (a fan-out's sender).
    fn expected_hashes(&self) -> Option<Arc<dyn ExpectedHashes>> {
        None
    }
}

/// Reads a sink's checked chunks back.
pub trait ReadBack: Send + Sync {
    /// Fills `buf` from `offset`, within one chunk: `held` says whether the
    /// chunk was held when the transfer began rather than received in it.
    fn read_at(&self, offset: u64, buf: &mut [u8], held: bool) -> std::io::Result<()>;
}

/// The hashes a file's chunks must have, as a fan-out's sender announced them
/// or as the verified hash list of a file from several sources has them.
pub trait ExpectedHashes: Send + Sync {
    /// Chunk `index`'s hash, once announced.
    fn expected(&self, index: u64) -> Pin<Box<dyn Future<Output = Result<Hash>> + Send + '_>>;
}

/// Where a sink put a committed file.
#[derive(Debug, Clone)]
pub struct Committed {
    pub name: String,
    /// It took the place of a file stored under that name before (`--force`).
    pub replaced: bool,
}

impl Committed {
    pub fn new(name: impl Into<String>) -> Committed {
        Committed {
            name: name.into(),
            replaced: false,
        }
    }
}
