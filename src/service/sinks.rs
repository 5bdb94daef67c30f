//! Where a listener puts uploads other than into its store: stdout, and
//! nowhere (bench data, checked and dropped).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::protocol::transfer::{Committed, Sink};
use crate::protocol::wire::{CHUNK_SIZE, Hash};

/// Checks bench data and keeps none of it.
#[derive(Default)]
pub struct DiscardSink {
    cancel: CancellationToken,
}

impl Sink for DiscardSink {
    fn held(&mut self) -> Vec<(u32, Hash)> {
        Vec::new()
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) -> Result<()> {
        Ok(())
    }
    fn chunk_checked(&mut self, _index: u32, _hash: &Hash) -> Result<()> {
        Ok(())
    }
    fn commit(self: Box<Self>, _hash: &Hash) -> Result<Committed> {
        Ok(Committed::new(""))
    }
    fn commit_blocks(&self) -> bool {
        false
    }
    fn abandon(self: Box<Self>, _keep: bool) {}
    fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Writes each chunk to stdout once its hash checked, so nothing unverified
/// reaches the reader of the pipe. What reached stdout cannot be taken back:
/// a file that fails after that sets `spoiled`.
pub struct StdoutSink<G: Send> {
    pending: Vec<u8>,
    wrote: bool,
    spoiled: Arc<AtomicBool>,
    _guard: G,
}

impl<G: Send> StdoutSink<G> {
    pub fn new(guard: G, spoiled: Arc<AtomicBool>) -> Self {
        StdoutSink {
            pending: Vec::with_capacity(CHUNK_SIZE as usize),
            wrote: false,
            spoiled,
            _guard: guard,
        }
    }
}

impl<G: Send> Sink for StdoutSink<G> {
    fn held(&mut self) -> Vec<(u32, Hash)> {
        Vec::new()
    }
    fn write(&mut self, _offset: u64, data: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(data);
        Ok(())
    }
    fn chunk_checked(&mut self, _index: u32, _hash: &Hash) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        self.wrote = true;
        stdout.write_all(&self.pending)?;
        stdout.flush()?;
        self.pending.clear();
        Ok(())
    }
    fn commit(self: Box<Self>, _hash: &Hash) -> Result<Committed> {
        Ok(Committed::new("<stdout>"))
    }
    fn in_order_only(&self) -> bool {
        true
    }
    fn abandon(self: Box<Self>, _keep: bool) {
        if self.wrote {
            self.spoiled.store(true, Ordering::Relaxed);
        }
    }
    fn cancelled(&self) -> CancellationToken {
        CancellationToken::new()
    }
}
