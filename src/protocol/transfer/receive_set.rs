//! Receiving one file's chunks from several sources into one sink: each
//! request's chunks are checked against the file's hash list, whoever sent
//! them, and written into the one partial file a rerun resumes.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use tokio_util::sync::CancellationToken;

use crate::protocol::hashing::HashList;
use crate::protocol::stream::FrameReader;
use crate::protocol::wire::{Hash, Offer};

use super::checker::{Checker, SharedSink};
use super::receive_chunks::{Chunks, receive_chunk};
use super::sink::{Committed, ExpectedHashes, Sink};
use super::{Progress, Traffic};

impl ExpectedHashes for HashList {
    fn expected(&self, index: u64) -> Pin<Box<dyn Future<Output = Result<Hash>> + Send + '_>> {
        let hash = self
            .chunks
            .get(index as usize)
            .copied()
            .ok_or_else(|| anyhow!("the file has no chunk {index}"));
        Box::pin(std::future::ready(hash))
    }
}

/// A request's chunks stopped arriving: `fatal` where the file cannot go on
/// from any source (its sink failed: a full disk), not only this one.
pub struct SetFailed {
    pub error: anyhow::Error,
    pub fatal: bool,
}

/// One file's sink, shared by the requests that fill it from several sources.
pub struct SharedFile {
    sink: SharedSink,
    offer: Offer,
    list: Arc<HashList>,
    cancelled: CancellationToken,
}

impl SharedFile {
    pub fn new(sink: Box<dyn Sink>, offer: Offer, list: Arc<HashList>) -> SharedFile {
        SharedFile {
            cancelled: sink.cancelled(),
            sink: Arc::new(Mutex::new(sink)),
            offer,
            list,
        }
    }

    /// The file's BLAKE3 hash, as its hash list has it.
    pub fn hash(&self) -> Hash {
        self.list.file
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.offer.size
    }

    /// The chunks the sink already holds with the hash the list has (from an
    /// interrupted pull, or a file stored before): not to be fetched.
    pub fn held(&self) -> HashSet<u32> {
        let held = self.sink.lock().expect("sink lock").held();
        held.into_iter()
            .filter(|(index, hash)| self.list.chunks.get(*index as usize) == Some(hash))
            .map(|(index, _)| index)
            .collect()
    }

    /// Fires when the file must be let go (a rerun took it over).
    pub fn cancelled(&self) -> CancellationToken {
        self.cancelled.clone()
    }

    /// Receives `chunks`, in that order, from `reader`, then the end of the
    /// stream; calls `done` with each chunk once checked and written, and
    /// counts what arrived in `traffic`.
    pub async fn receive(
        &self,
        reader: &mut FrameReader,
        chunks: &[u32],
        progress: &Progress,
        traffic: &mut Traffic,
        done: &mut (dyn FnMut(u32) + Send),
    ) -> Result<(), SetFailed> {
        let mut checker = Checker::new(self.sink.clone(), self.offer.size, self.offer.chunks());
        let none_held = HashMap::new();
        let against = Chunks {
            offer: &self.offer,
            held: &none_held,
            expected: Some(self.list.as_ref()),
        };
        for &index in chunks {
            let received = receive_chunk(
                reader,
                &mut checker,
                against,
                traffic,
                progress,
                u64::from(index),
            )
            .await;
            // Drained also after a failure: its thread holds the sink.
            let checked = checker.drain().await;
            if let Err(failure) = received.and(checked) {
                return Err(SetFailed {
                    error: failure.error,
                    fatal: !failure.keep_partial,
                });
            }
            done(index);
        }
        match reader.next().await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(SetFailed {
                error: anyhow!(
                    "protocol violation: more than the {} chunks asked for",
                    chunks.len()
                ),
                fatal: false,
            }),
            Err(error) => Err(SetFailed {
                error,
                fatal: false,
            }),
        }
    }

    /// Commits the file, every chunk of which is checked; on a blocking
    /// thread, as it syncs the file.
    pub async fn commit(self) -> Result<Committed> {
        let sink = Arc::try_unwrap(self.sink)
            .map_err(|_| anyhow!("the file is still being written"))?
            .into_inner()
            .map_err(|_| anyhow!("writing the file failed unexpectedly"))?;
        let hash = self.list.file;
        tokio::task::spawn_blocking(move || sink.commit(&hash))
            .await
            .unwrap_or_else(|_| Err(anyhow!("storing the file failed unexpectedly")))
    }

    /// Gives up on the file, keeping its checked chunks for a rerun when `keep`.
    pub fn abandon(self, keep: bool) {
        if let Ok(Ok(sink)) = Arc::try_unwrap(self.sink).map(Mutex::into_inner) {
            sink.abandon(keep);
        }
    }
}
