//! The sink of a fanned-out file: the receiver's own sink, with every chunk it
//! holds checked made readable for passing on, and the sender's hashes for the
//! receive path to check the parent's data against.

use std::sync::Arc;

use anyhow::Result;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::state::FanoutState;
use crate::protocol::transfer::{Committed, ExpectedHashes, ReadBack, Sink};
use crate::protocol::wire::Hash;

pub struct FanoutSink {
    inner: Box<dyn Sink>,
    state: Arc<FanoutState>,
    /// Fires when the inner sink's does, or when the sender moves this
    /// receiver to another parent.
    cancelled: CancellationToken,
    /// Ends the task that watches for either, with the sink.
    _watching: DropGuard,
}

impl FanoutSink {
    /// `detached` fires when the sender attaches this receiver to another parent.
    pub fn new(
        inner: Box<dyn Sink>,
        state: Arc<FanoutState>,
        detached: CancellationToken,
    ) -> FanoutSink {
        let cancelled = CancellationToken::new();
        let either = cancelled.clone();
        let taken_over = inner.cancelled();
        let gone = CancellationToken::new();
        let watching = gone.clone().drop_guard();
        tokio::spawn(async move {
            tokio::select! {
                _ = taken_over.cancelled() => either.cancel(),
                _ = detached.cancelled() => either.cancel(),
                _ = gone.cancelled() => {}
            }
        });
        // An eager file (one chunk) is never asked what it holds.
        state.attach(inner.read_back(), &[]);
        FanoutSink {
            inner,
            state,
            cancelled,
            _watching: watching,
        }
    }
}

impl Sink for FanoutSink {
    fn held(&mut self) -> Vec<(u32, Hash)> {
        let held = self.inner.held();
        self.state.attach(self.inner.read_back(), &held);
        held
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.write(offset, data)
    }

    fn chunk_checked(&mut self, index: u32, hash: &Hash) -> Result<()> {
        self.inner.chunk_checked(index, hash)?;
        self.state.checked(index);
        Ok(())
    }

    fn commit(self: Box<Self>, hash: &Hash) -> Result<Committed> {
        let FanoutSink { inner, .. } = *self;
        inner.commit(hash)
    }

    fn commit_blocks(&self) -> bool {
        self.inner.commit_blocks()
    }

    fn in_order_only(&self) -> bool {
        self.inner.in_order_only()
    }

    fn abandon(self: Box<Self>, keep: bool) {
        let FanoutSink { inner, .. } = *self;
        inner.abandon(keep)
    }

    fn cancelled(&self) -> CancellationToken {
        self.cancelled.clone()
    }

    fn read_back(&self) -> Option<Arc<dyn ReadBack>> {
        self.inner.read_back()
    }

    fn expected_hashes(&self) -> Option<Arc<dyn ExpectedHashes>> {
        Some(self.state.clone())
    }
}
