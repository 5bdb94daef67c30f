//! Serving a pull from several sources: a served file's chunk hashes, and any
//! set of its chunks, each checked by the puller against those hashes.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use iroh::EndpointId;
use tokio::sync::mpsc;

use super::{Event, NOTHING_SERVED, Service};
use crate::catalog::Catalog;
use crate::protocol::errors::{ErrorCode, code_of};
use crate::protocol::hashing::HashList;
use crate::protocol::stream::FrameWriter;
use crate::protocol::transfer::{Progress, Source, send_chunk_set};
use crate::protocol::wire::{CHUNK_SIZE, Hash, MAX_ANNOUNCED_HASHES, Message, hash_hex};
use crate::ui::errors::describe;

/// Hashes sent per `ChunkHashes` message while a file is hashed: 256 MiB of
/// it, so even a slow disk shows the puller progress well within its timeout.
const HASHES_PER_MESSAGE: usize = 32;

impl Service {
    /// Answers `FetchHashes`: the chunk hashes of the served file `name`, as
    /// they are made (or all at once, kept from before), then its offer and
    /// file hash; or a refusal.
    pub(super) async fn serve_hashes(
        &self,
        peer: EndpointId,
        name: &str,
        writer: &mut FrameWriter,
    ) -> Result<()> {
        let answered = match &self.catalog {
            Some(catalog) => send_hashes(catalog, name, writer).await,
            None => Err(ErrorCode::NothingServed.error(NOTHING_SERVED).into()),
        };
        if let Err(err) = answered {
            self.refuse(peer, writer, err).await?;
        }
        writer.finish();
        Ok(())
    }

    /// Answers `FetchChunks`: the named chunks of a served whole file, if it
    /// is still the file of the hash the puller has.
    pub(super) async fn serve_chunks(
        &self,
        peer: EndpointId,
        request: &Message,
        writer: &mut FrameWriter,
    ) -> Result<()> {
        let Message::FetchChunks {
            file,
            hash,
            chunks,
            compress,
        } = request
        else {
            unreachable!("serve_chunks is called for chunk requests");
        };
        let started = Instant::now();
        let source = match self.chunk_source(file, hash, chunks) {
            Ok(source) => source.coded_by(self.coding(*compress)),
            Err(err) => {
                self.refuse(peer, writer, err).await?;
                writer.finish();
                return Ok(());
            }
        };
        let size = source.offer.size;
        let bytes = chunks
            .iter()
            .map(|&index| CHUNK_SIZE.min(size - u64::from(index) * CHUNK_SIZE))
            .sum();
        let indices = chunks.iter().copied().map(u64::from).collect();
        let event = match send_chunk_set(writer, &source, indices, &Progress::default()).await {
            Ok(_) => Event::Served {
                peer,
                name: file.clone(),
                bytes,
                elapsed: started.elapsed(),
            },
            Err(err) => Event::ServeFailed {
                peer,
                error: describe(&err.context(file.clone())),
            },
        };
        self.events.send(event).ok();
        Ok(())
    }

    /// The whole-file source for a chunk request, refused where the file is
    /// not the one of `hash` any more or has no such chunks.
    fn chunk_source(&self, name: &str, hash: &str, chunks: &[u32]) -> Result<Source> {
        let Some(catalog) = &self.catalog else {
            bail!(ErrorCode::NothingServed.error(NOTHING_SERVED));
        };
        let (file, source) = catalog.whole(name)?;
        let current = catalog
            .hash_lists
            .get(name, file.version)
            .is_some_and(|list| hash_hex(&list.file) == hash);
        if !current {
            bail!(ErrorCode::SourceChanged.error(format!(
                "{name} changed on disk since its hashes were sent; pull again"
            )));
        }
        let count = source.offer.chunks();
        if let Some(missing) = chunks.iter().find(|&&index| u64::from(index) >= count) {
            bail!(ErrorCode::ProtocolViolation.error(format!(
                "{name} has {count} chunks; there is no chunk {missing}"
            )));
        }
        Ok(source)
    }

    /// Tells the peer why its request is refused, and reports it.
    async fn refuse(
        &self,
        peer: EndpointId,
        writer: &mut FrameWriter,
        err: anyhow::Error,
    ) -> Result<()> {
        let refused = Message::Refused {
            code: code_of(&err),
            reason: format!("{err:#}"),
        };
        self.events
            .send(Event::ServeFailed {
                peer,
                error: describe(&err),
            })
            .ok();
        writer.message(&refused).await
    }
}

/// Sends the chunk hashes of the served file `name` and then its offer and
/// file hash, hashing the file first unless its list was made before.
async fn send_hashes(catalog: &Catalog, name: &str, writer: &mut FrameWriter) -> Result<()> {
    let (file, source) = catalog.whole(name)?;
    let list = match catalog.hash_lists.get(name, file.version) {
        Some(list) => {
            for (first, hashes) in (0..)
                .step_by(MAX_ANNOUNCED_HASHES)
                .zip(list.chunks.chunks(MAX_ANNOUNCED_HASHES))
            {
                writer.message(&chunk_hashes(first, hashes)).await?;
            }
            list
        }
        None => {
            let list = Arc::new(hash_while_sending(&source, writer).await?);
            // Made from the file as validated, unless it changed meanwhile.
            if file.check_unchanged().is_err() {
                bail!(ErrorCode::SourceChanged.error(format!(
                    "{name} changed on disk while it was hashed; pull again once it is written"
                )));
            }
            catalog.hash_lists.keep(name, file.version, list.clone());
            list
        }
    };
    writer
        .message(&Message::FileHashes {
            offer: source.offer.clone(),
            hash: hash_hex(&list.file),
        })
        .await
}

/// Hashes `source` on a blocking thread, sending its chunk hashes as they are
/// made.
async fn hash_while_sending(source: &Source, writer: &mut FrameWriter) -> Result<HashList> {
    let (made, mut hashes) = mpsc::channel::<Hash>(HASHES_PER_MESSAGE);
    let hashing = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            source.hash_chunks(&mut |_, hash| made.blocking_send(hash).is_ok())
        })
    };
    let mut chunks = Vec::new();
    let mut unsent = 0;
    while let Some(hash) = hashes.recv().await {
        chunks.push(hash);
        unsent += 1;
        if unsent == HASHES_PER_MESSAGE {
            let first = chunks.len() - unsent;
            writer
                .message(&chunk_hashes(first as u64, &chunks[first..]))
                .await?;
            unsent = 0;
        }
    }
    hashing.await.context("the hashing task failed")??;
    if unsent > 0 {
        let first = chunks.len() - unsent;
        writer
            .message(&chunk_hashes(first as u64, &chunks[first..]))
            .await?;
    }
    Ok(HashList::new(source.offer.size, chunks))
}

fn chunk_hashes(first: u64, hashes: &[Hash]) -> Message {
    Message::ChunkHashes {
        first,
        hashes: hashes.iter().map(hash_hex).collect(),
    }
}
