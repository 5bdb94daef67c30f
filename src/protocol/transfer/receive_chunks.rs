//! Taking a file's chunks off its streams: each stream's data in batches into
//! its own checker, then the file hash, checked against the chunks' hashes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use futures_util::future::try_join_all;

use crate::protocol::errors::{ErrorCode, PeerError};
use crate::protocol::hashing::file_hash;
use crate::protocol::liveness::Liveness;
use crate::protocol::stream::{Block, Frame, FrameReader};
use crate::protocol::stripes::{
    Joining, StripeStream, collect_stripes, stripe_chunks, unexpected_stripe,
};
use crate::protocol::wire::{CHUNK_SIZE, CODED_BLOCK_HEADER, Hash, Message, Offer};

use super::checker::{BATCH, Batch, Checker, SharedSink};
use super::failure::{Failure, lost};
use super::sink::{ExpectedHashes, Sink};
use super::{Progress, StripeDone, Traffic, merge_hashes};

/// The extra streams of a striped transfer as a receiver has them: those it
/// opened, or those to arrive through the registry while the connection lives.
pub(super) struct ExtraStreams {
    pub(super) opened: Vec<StripeStream>,
    pub(super) joining: Option<Joining>,
    pub(super) liveness: Liveness,
}

/// Receives the file's data into `sink` through a checker per stream, and gives
/// the sink back with the file hash and the data bytes received. A sink whose
/// file failed is abandoned here, keeping its partial file where that is worth it.
pub(super) async fn receive_checked(
    reader: &mut FrameReader,
    sink: Box<dyn Sink>,
    extra: ExtraStreams,
    stripes: u32,
    offer: &Offer,
    held: &HashMap<u32, Hash>,
    progress: &Progress,
) -> Result<(Box<dyn Sink>, Hash, Traffic)> {
    let cancelled = sink.cancelled();
    let expected = sink.expected_hashes();
    let sink: SharedSink = Arc::new(Mutex::new(sink));
    let mut checkers: Vec<Checker> = (0..stripes)
        .map(|_| Checker::new(sink.clone(), offer.size, offer.chunks()))
        .collect();
    let outcome = tokio::select! {
        outcome = receive_chunks(reader, &mut checkers, extra, offer, held, expected.as_deref(), progress) => outcome,
        _ = cancelled.cancelled() => Err(Failure::kept(anyhow!("a newer transfer of the same file took over"))),
    };
    let mut drained = Ok(());
    for mut checker in checkers {
        let result = checker.drain().await;
        if drained.is_ok() {
            drained = result;
        }
    }
    let Ok(Ok(sink)) = Arc::try_unwrap(sink).map(Mutex::into_inner) else {
        return Err(lost().error);
    };
    match drained.and(outcome) {
        Ok((hash, traffic)) => Ok((sink, hash, traffic)),
        Err(failure) => {
            sink.abandon(failure.keep_partial);
            Err(failure.error)
        }
    }
}

/// Receives every chunk, on the offer's stream and on the extra streams of a
/// striped transfer, then the file hash; each stream's data is checked by its
/// own checker.
async fn receive_chunks(
    reader: &mut FrameReader,
    checkers: &mut [Checker],
    extra: ExtraStreams,
    offer: &Offer,
    held: &HashMap<u32, Hash>,
    expected: Option<&dyn ExpectedHashes>,
    progress: &Progress,
) -> Result<(Hash, Traffic), Failure> {
    let stripes = checkers.len() as u32;
    let ExtraStreams {
        opened,
        mut joining,
        liveness,
    } = extra;
    let streams = match &mut joining {
        Some(joining) => collect_stripes(joining, stripes, &liveness)
            .await
            .map_err(Failure::kept)?,
        None => opened,
    };
    // The receiver never writes on an extra stream.
    let mut extra_readers: Vec<FrameReader> = streams
        .into_iter()
        .map(|mut stream| {
            stream.writer.finish();
            stream.reader
        })
        .collect();
    let receiving = std::iter::once(&mut *reader)
        .chain(extra_readers.iter_mut())
        .zip(checkers.iter_mut())
        .zip(0..)
        .map(|((reader, checker), stripe)| {
            let chunks = Chunks {
                offer,
                held,
                expected,
            };
            receive_stripe(reader, checker, chunks, progress, stripe, stripes)
        });
    let done = tokio::select! {
        done = try_join_all(receiving) => done?,
        stream = next_stream(&mut joining) => {
            return Err(Failure::kept(unexpected_stripe(stream.stripe, stripes)));
        }
    };
    for checker in checkers.iter_mut() {
        checker.drain().await?;
    }
    let hash = file_hash_frame(reader, offer.chunks()).await?;
    if file_hash(offer.size, &merge_hashes(offer.chunks(), &done)) != hash {
        return Err(Failure::dropped(
            ErrorCode::Corrupt
                .error("the file hash does not match its chunks")
                .into(),
        ));
    }
    Ok((hash, Traffic::total(&done)))
}

/// The next stream that names the transfer; never, without a registry. Once
/// every stripe has its stream, any other is a protocol violation.
async fn next_stream(joining: &mut Option<Joining>) -> StripeStream {
    match joining {
        Some(joining) => match joining.streams.recv().await {
            Some(stream) => stream,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The file hash that ends the offer's stream after its last chunk.
async fn file_hash_frame(reader: &mut FrameReader, chunks: u64) -> Result<Hash, Failure> {
    match reader.next().await.map_err(Failure::kept)? {
        Some(Frame::End { hash }) => Ok(hash),
        None => Err(Failure::kept(anyhow!(
            "the sender stopped after its last chunk, before the file hash"
        ))),
        Some(_) => Err(Failure::kept(violation(format!(
            "protocol violation: more than the offered {chunks} chunks"
        )))),
    }
}

/// Receives the chunks of `stripe` from `reader`, in order, into `checker`:
/// their hashes as the sender claimed them (the checker verifies each) and the
/// data bytes received. An extra stream ends there; the offer's stream (stripe
/// 0) goes on with the file hash.
async fn receive_stripe(
    reader: &mut FrameReader,
    checker: &mut Checker,
    chunks: Chunks<'_>,
    progress: &Progress,
    stripe: u32,
    stripes: u32,
) -> Result<StripeDone, Failure> {
    let mut hashes = Vec::new();
    let mut traffic = Traffic::default();
    for next in stripe_chunks(stripe, stripes, chunks.offer.chunks()) {
        let hash = receive_chunk(reader, checker, chunks, &mut traffic, progress, next).await?;
        hashes.push(hash);
    }
    if stripe != 0 && reader.next().await.map_err(Failure::kept)?.is_some() {
        return Err(Failure::kept(violation(format!(
            "protocol violation: more on stream {stripe} after its last chunk"
        ))));
    }
    Ok(StripeDone { hashes, traffic })
}

/// What a stripe's chunks are checked against: the offer, the chunks this side
/// held, and for a fanned-out file or one from several sources the hashes its
/// chunks must have (the sender's announced hashes, the file's hash list).
#[derive(Clone, Copy)]
pub(super) struct Chunks<'a> {
    pub(super) offer: &'a Offer,
    pub(super) held: &'a HashMap<u32, Hash>,
    pub(super) expected: Option<&'a dyn ExpectedHashes>,
}

impl Chunks<'_> {
    /// Fails a chunk whose claimed hash is not the one announced for it:
    /// checked before its last batch is, so a chunk that does not match never
    /// counts as checked here, nor is it passed on.
    async fn vouch(&self, index: u64, claimed: Hash) -> Result<Hash, Failure> {
        let Some(expected) = self.expected else {
            return Ok(claimed);
        };
        let announced = expected.expected(index).await.map_err(Failure::kept)?;
        if announced != claimed {
            return Err(Failure::kept(
                ErrorCode::Corrupt
                    .error(format!(
                        "chunk {index} is not the sender's: its hash differs from the one the sender announced"
                    ))
                    .into(),
            ));
        }
        Ok(claimed)
    }
}

/// Receives chunk `next`: as data (stored or in blocks) into `checker`, or as a
/// chunk this side holds (`KEPT`). Returns the chunk's hash, as claimed or
/// held; the data received is counted in `traffic`.
pub(super) async fn receive_chunk(
    reader: &mut FrameReader,
    checker: &mut Checker,
    chunks: Chunks<'_>,
    traffic: &mut Traffic,
    progress: &Progress,
    next: u64,
) -> Result<Hash, Failure> {
    let Chunks { offer, held, .. } = chunks;
    let chunks_in_file = offer.chunks();
    let start = next * CHUNK_SIZE;
    let expected_len = CHUNK_SIZE.min(offer.size - start);
    match reader.next().await.map_err(Failure::kept)? {
        Some(Frame::Chunk { index, len, coded }) => {
            if u64::from(index) != next || u64::from(len) != expected_len {
                return Err(Failure::kept(violation(format!(
                    "protocol violation: chunk {index} of {len} bytes where chunk {next} of {expected_len} belongs"
                ))));
            }
            let chunk = ChunkAt {
                index: next,
                start,
                len: expected_len,
            };
            if coded {
                receive_blocks(reader, checker, chunk, chunks, traffic, progress).await
            } else {
                receive_chunk_data(reader, checker, chunk, chunks, traffic, progress).await
            }
        }
        Some(Frame::Kept { index }) => {
            let hash = held.get(&index).filter(|_| u64::from(index) == next);
            let Some(hash) = hash else {
                return Err(Failure::kept(violation(format!(
                    "protocol violation: kept chunk {index} was not offered"
                ))));
            };
            progress.add(expected_len, 0);
            chunks.vouch(next, *hash).await
        }
        Some(Frame::End { .. }) => Err(Failure::kept(anyhow!(
            "the sender ended the file before chunk {next} of {chunks_in_file}"
        ))),
        Some(Frame::Message(Message::Refused { code, reason })) => {
            Err(Failure::kept(PeerError { code, reason }.into()))
        }
        Some(Frame::Message(message)) => Err(Failure::kept(violation(format!(
            "protocol violation: message {message:?} inside the data"
        )))),
        None => Err(Failure::kept(anyhow!(
            "the sender stopped before chunk {next} of {chunks_in_file}"
        ))),
    }
}

/// A chunk being received: its index, where it starts in the file, its length.
#[derive(Clone, Copy)]
struct ChunkAt {
    index: u64,
    start: u64,
    len: u64,
}

/// Receives the data bytes of `chunk` and the hash the sender claims for them
/// into `checker` batch by batch; returns the claimed hash.
async fn receive_chunk_data(
    reader: &mut FrameReader,
    checker: &mut Checker,
    chunk: ChunkAt,
    chunks: Chunks<'_>,
    traffic: &mut Traffic,
    progress: &Progress,
) -> Result<Hash, Failure> {
    let ChunkAt { index, start, len } = chunk;
    let mut read = 0u64;
    let mut batch = checker.buffer();
    loop {
        // Packets arrive a kilobyte at a time; the checker takes them in
        // batches so BLAKE3 can use its wide SIMD path and writes are few.
        let room = (BATCH - batch.len()).min((len - read) as usize);
        let got = reader
            .data_into(batch.appender(), room)
            .await
            .map_err(Failure::kept)? as u64;
        read += got;
        traffic.add(got, got, progress);
        let ended = read == len;
        if batch.len() == BATCH || ended {
            let claimed = if ended {
                let claimed = reader.hash().await.map_err(Failure::kept)?;
                Some(chunks.vouch(index, claimed).await?)
            } else {
                None
            };
            let offset = start + read - batch.len() as u64;
            let data = std::mem::replace(&mut batch, checker.buffer());
            checker
                .submit(Batch {
                    data,
                    coded: None,
                    chunk: index,
                    offset,
                    claimed,
                })
                .await?;
            if let Some(claimed) = claimed {
                return Ok(claimed);
            }
        }
    }
}

/// Receives `chunk` as blocks, each a batch for `checker` (a coded one is
/// decoded there), then the hash the sender claims for it; returns that hash.
async fn receive_blocks(
    reader: &mut FrameReader,
    checker: &mut Checker,
    chunk: ChunkAt,
    chunks: Chunks<'_>,
    traffic: &mut Traffic,
    progress: &Progress,
) -> Result<Hash, Failure> {
    let mut read = 0u64;
    while read < chunk.len {
        let block = reader.block().await.map_err(Failure::kept)?;
        let len = u64::from(block.decoded_len());
        if len > chunk.len - read {
            return Err(Failure::kept(violation(format!(
                "protocol violation: a block of {len} bytes where chunk {} has {} left",
                chunk.index,
                chunk.len - read
            ))));
        }
        let mut data = checker.buffer();
        let coded = match block {
            Block::Stored { .. } => {
                reader
                    .exact_into(data.appender(), len as usize)
                    .await
                    .map_err(Failure::kept)?;
                traffic.add(len, len, progress);
                None
            }
            Block::Coded { coded_len, .. } => {
                let mut coded = Vec::with_capacity(coded_len as usize);
                reader
                    .exact_into(&mut coded, coded_len as usize)
                    .await
                    .map_err(Failure::kept)?;
                traffic.add(CODED_BLOCK_HEADER + u64::from(coded_len), len, progress);
                Some((coded, len as usize))
            }
        };
        let offset = chunk.start + read;
        read += len;
        let claimed = if read == chunk.len {
            let claimed = reader.hash().await.map_err(Failure::kept)?;
            Some(chunks.vouch(chunk.index, claimed).await?)
        } else {
            None
        };
        checker
            .submit(Batch {
                data,
                coded,
                chunk: chunk.index,
                offset,
                claimed,
            })
            .await?;
        if let Some(claimed) = claimed {
            return Ok(claimed);
        }
    }
    Err(Failure::kept(violation(format!(
        "protocol violation: chunk {} of no data",
        chunk.index
    ))))
}

/// A peer's breach of the protocol, coded so.
fn violation(message: String) -> anyhow::Error {
    ErrorCode::ProtocolViolation.error(message).into()
}
