//! What one receiver of a fan-out knows about the file: the chunk hashes its
//! sender announced, which chunks it holds checked, and where to read them
//! back to pass them on.
//!
//! Receiving (async) and passing on (reads on blocking threads) both wait on
//! it, so it wakes async waiters through a watch channel and blocking ones
//! through a condition variable.

use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use anyhow::{Result, anyhow, bail};
use tokio::sync::watch;

use crate::protocol::transfer::{Conversion, ExpectedHashes, ReadBack};
use crate::protocol::wire::{CHUNK_SIZE, Hash, Offer};

pub struct FanoutState {
    size: u64,
    inner: Mutex<Inner>,
    blocking: Condvar,
    /// Bumped on every change, for async waiters.
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    /// The sender's hash of each chunk, once announced.
    announced: Vec<Option<Hash>>,
    /// Chunks this receiver held when its current transfer began, with their hashes.
    held: Vec<Option<Hash>>,
    /// Chunks checked into the current transfer's file.
    checked: Vec<bool>,
    /// Reads back the current transfer's chunks.
    reader: Option<Arc<dyn ReadBack>>,
    /// Why nothing more will become readable: the fan-out ended.
    closed: Option<String>,
}

impl Inner {
    /// Whether chunk `index` can be read back, and whether from what was held.
    fn readable(&self, index: usize) -> Option<bool> {
        if self.checked[index] {
            return Some(false);
        }
        match (self.held[index], self.announced[index]) {
            (Some(held), Some(announced)) if held == announced => Some(true),
            _ => None,
        }
    }
}

impl FanoutState {
    pub fn new(offer: &Offer) -> Arc<FanoutState> {
        let chunks = offer.chunks() as usize;
        Arc::new(FanoutState {
            size: offer.size,
            inner: Mutex::new(Inner {
                announced: vec![None; chunks],
                held: vec![None; chunks],
                checked: vec![false; chunks],
                ..Inner::default()
            }),
            blocking: Condvar::new(),
            changes: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.blocking.notify_all();
        self.changes.send_modify(|version| *version += 1);
    }

    /// Records the sender's hashes of chunks `first`, `first + 1`, ...
    pub fn announce(&self, first: u64, hashes: &[Hash]) -> Result<()> {
        let mut inner = self.lock();
        let end = first.saturating_add(hashes.len() as u64);
        if end > inner.announced.len() as u64 {
            bail!(
                "the sender announced chunks up to {end}, but the file has {}",
                inner.announced.len()
            );
        }
        for (slot, hash) in inner.announced[first as usize..end as usize]
            .iter_mut()
            .zip(hashes)
        {
            *slot = Some(*hash);
        }
        drop(inner);
        self.changed();
        Ok(())
    }

    /// A new transfer of the file began here, holding `held` from before and
    /// read back through `reader`.
    pub fn attach(&self, reader: Option<Arc<dyn ReadBack>>, held: &[(u32, Hash)]) {
        let mut inner = self.lock();
        inner.held.fill(None);
        inner.checked.fill(false);
        for (index, hash) in held {
            if let Some(slot) = inner.held.get_mut(*index as usize) {
                *slot = Some(*hash);
            }
        }
        inner.reader = reader;
        drop(inner);
        self.changed();
    }

    pub fn checked(&self, index: u32) {
        if let Some(slot) = self.lock().checked.get_mut(index as usize) {
            *slot = true;
        }
        self.changed();
    }

    /// Nothing more will arrive: readers waiting for chunks give up with `why`.
    pub fn close(&self, why: &str) {
        self.lock().closed.get_or_insert_with(|| why.to_string());
        self.changed();
    }

    /// The file bytes this receiver can pass on.
    pub fn bytes_held(&self) -> u64 {
        let inner = self.lock();
        (0..inner.checked.len())
            .filter(|&index| inner.readable(index).is_some())
            .map(|index| chunk_len(self.size, index))
            .sum()
    }

    /// Waits until every chunk can be read back.
    pub async fn whole(&self) -> Result<()> {
        let mut changes = self.changes.subscribe();
        loop {
            {
                let inner = self.lock();
                if let Some(why) = &inner.closed {
                    bail!("{why}");
                }
                if (0..inner.checked.len()).all(|index| inner.readable(index).is_some()) {
                    return Ok(());
                }
            }
            changes.changed().await?;
        }
    }

    /// Reads the file's bytes from `offset` into `buf`, waiting (on a blocking
    /// thread) until the chunks they lie in are checked here.
    fn read_checked(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = (at / CHUNK_SIZE) as usize;
            let take = ((index as u64 + 1) * CHUNK_SIZE - at).min((buf.len() - done) as u64);
            let (reader, from_held) = self.wait_readable(index)?;
            reader.read_at(at, &mut buf[done..done + take as usize], from_held)?;
            done += take as usize;
        }
        Ok(())
    }

    fn wait_readable(&self, index: usize) -> std::io::Result<(Arc<dyn ReadBack>, bool)> {
        let mut inner = self.lock();
        loop {
            if let Some(why) = &inner.closed {
                return Err(std::io::Error::other(why.clone()));
            }
            if index >= inner.checked.len() {
                return Err(std::io::Error::other(
                    "a read past the fanned-out file's end",
                ));
            }
            if let (Some(from_held), Some(reader)) = (inner.readable(index), &inner.reader) {
                return Ok((reader.clone(), from_held));
            }
            inner = self
                .blocking
                .wait(inner)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

fn chunk_len(size: u64, index: usize) -> u64 {
    CHUNK_SIZE.min(size - index as u64 * CHUNK_SIZE)
}

impl ExpectedHashes for FanoutState {
    fn expected(&self, index: u64) -> Pin<Box<dyn Future<Output = Result<Hash>> + Send + '_>> {
        Box::pin(async move {
            let mut changes = self.changes.subscribe();
            loop {
                {
                    let inner = self.lock();
                    match inner.announced.get(index as usize) {
                        None => return Err(anyhow!("chunk {index} is not in the fanned-out file")),
                        Some(Some(hash)) => return Ok(*hash),
                        Some(None) => {}
                    }
                    if let Some(why) = &inner.closed {
                        bail!("{why}");
                    }
                }
                changes.changed().await?;
            }
        })
    }
}

/// The fanned-out file as this receiver holds it, read as its chunks are checked:
/// the source of what it passes on.
pub struct Forwarding(pub Arc<FanoutState>);

impl Conversion for Forwarding {
    fn size(&self) -> u64 {
        self.0.size
    }

    fn file(&self) -> Option<&Arc<std::fs::File>> {
        // Its chunks are checked against the sender's hashes as they arrive;
        // the partial file changes by design while it is read.
        None
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_checked(offset, buf)
    }
}
