//! The holder's side: offering a file, sending its chunks on one stream or
//! several, and waiting for the receiver's verdict.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use futures_util::future::try_join_all;
use tokio::sync::mpsc;

use crate::protocol::errors::PeerError;
use crate::protocol::hashing::file_hash;
use crate::protocol::liveness::{Liveness, Stalled};
use crate::protocol::stream::{FrameReader, FrameWriter};
use crate::protocol::stripes::{
    Joining, StripeLink, collect_stripes, open_stripes, stripe_chunks, usable_stripes,
};
use crate::protocol::wire::{
    Hash, HeldChunk, Message, Offer, end_frame, hash_hex, kept_frame, parse_hash,
    stored_block_header,
};
use crate::protocol::{CODE_SOURCE_CHANGED, CODE_SOURCE_UNREADABLE};

use super::source::{PIECE, Piece, PiecePool, Source, read_chunks};
use super::{Progress, REASON_WAIT, Sent, StripeDone, Traffic, merge_hashes};

/// Pieces read ahead of the network by one stream's reader: the most, and the
/// least when a file is on many streams (bounds the sender's memory per file).
const READ_AHEAD: usize = 4;
const READ_AHEAD_MIN: usize = 2;
/// Pieces read ahead for the whole of a striped file, shared by its streams.
const READ_AHEAD_PER_FILE: usize = 16;

/// Sends `source`, after `request` where the stream starts with one, and waits
/// for the receiver's verdict; `link` says how a striped transfer gets its
/// extra streams.
pub async fn send_file(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    request: Option<&Message>,
    source: &Source,
    link: StripeLink<'_>,
    progress: &Progress,
) -> Result<Sent> {
    // Written together with the data where no answer is awaited in between:
    // a small file then costs the receiver one wake-up, not one per frame.
    let mut opening: Vec<Bytes> = request
        .map(|request| Bytes::from(request.encode()))
        .into_iter()
        .collect();
    let (offer, mut joining) = offer_to_send(source, link, writer.liveness().stall()).await?;
    let offered_stripes = offer.stripes.max(1);
    opening.push(Bytes::from(Message::Offer(offer).encode()));
    let ready = if source.offer.eager {
        Ready::eager()
    } else {
        writer.write_all(&mut std::mem::take(&mut opening)).await?;
        await_ready(reader, offered_stripes).await?
    };

    let sent = if source.offer.size <= PIECE as u64 {
        send_small_inline(writer, opening, source, &ready.held, progress).await
    } else {
        if !opening.is_empty() {
            writer.write_all(&mut opening).await?;
        }
        let extra = extra_writers(writer.liveness(), link, &mut joining, &ready).await?;
        send_striped(writer, extra, source, &ready, progress).await
    };
    let (sent, hash) = match sent {
        Ok(sent) => sent,
        Err(failed) => return Err(stopped(writer, reader, source, failed).await),
    };
    writer.finish();
    await_verdict(reader, &hash, &sent).await
}

/// The offer as sent: with the sender's patience, the first chunk's hash for a
/// file of several, and the streams this side offers to carry it on. A listener
/// registers the transfer here, for the dialer's extra streams to join.
async fn offer_to_send(
    source: &Source,
    link: StripeLink<'_>,
    patience: Duration,
) -> Result<(Offer, Option<Joining>)> {
    let mut offer = source.offer.clone();
    offer.patience_secs = patience.as_secs().max(1);
    if !offer.eager {
        offer.first_chunk = Some(hash_hex(&source.first_chunk_hash().await?));
    }
    let mut joining = None;
    offer.stripes = match link {
        StripeLink::Dialer { stripes, .. } => stripes,
        StripeLink::Listener { registry, stripes } if !offer.eager => {
            joining = registry.join(usable_stripes(stripes, offer.chunks()));
            offer.transfer = joining.as_ref().map_or(0, |joining| joining.transfer);
            joining.as_ref().map_or(1, |joining| joining.stripes)
        }
        StripeLink::Listener { .. } => 1,
    };
    Ok((offer, joining))
}

/// What the receiver's `Ready` settles: the chunks it holds, and the streams
/// the file goes on.
struct Ready {
    held: Arc<HashMap<u32, Hash>>,
    stripes: u32,
    transfer: u64,
}

impl Ready {
    /// An eager file awaits no answer: it goes whole, on the offer's stream.
    fn eager() -> Ready {
        Ready {
            held: Arc::default(),
            stripes: 1,
            transfer: 0,
        }
    }
}

/// Waits for the receiver's answer to the offer; it takes at most the
/// `offered_stripes`.
async fn await_ready(reader: &mut FrameReader, offered_stripes: u32) -> Result<Ready> {
    match reader.message().await? {
        Message::Ready {
            held,
            stripes,
            transfer,
        } => Ok(Ready {
            held: Arc::new(held_map(&held)?),
            stripes: stripes.clamp(1, offered_stripes),
            transfer,
        }),
        Message::Refused { code, reason } => Err(PeerError { code, reason }.into()),
        other => bail!("unexpected answer to an offer: {other:?}"),
    }
}

fn held_map(held: &[HeldChunk]) -> Result<HashMap<u32, Hash>> {
    held.iter()
        .map(|chunk| Ok((chunk.index, parse_hash(&chunk.hash)?)))
        .collect()
}

/// Sends a small file read inline: a thread hand-off would cost more than the
/// read. Its frames follow `opening` in one write.
async fn send_small_inline(
    writer: &mut FrameWriter,
    mut opening: Vec<Bytes>,
    source: &Source,
    held: &HashMap<u32, Hash>,
    progress: &Progress,
) -> Result<(Vec<StripeDone>, Hash), StripeFailed> {
    let mut traffic = Traffic::default();
    let connection = writer.liveness().connection().clone();
    let all: Vec<u64> = (0..source.offer.chunks()).collect();
    let hashes = read_chunks(source, held, &PiecePool::default(), &all, &mut |piece| {
        let coded = match &piece {
            Piece::Data { bytes, offset } if source.coding.should_code(Some(&connection)) => {
                source.coding.code(bytes, *offset, &source.layout)
            }
            _ => None,
        };
        opening.extend(traffic.on_wire(piece, coded, source, progress));
        Ok(())
    })
    .map_err(|err| StripeFailed::Read(err.into()))?;
    if !source.unchanged() {
        return Err(StripeFailed::Changed);
    }
    let hash = file_hash(source.offer.size, &hashes);
    opening.push(Bytes::copy_from_slice(&end_frame(&hash)));
    writer
        .write_all(&mut opening)
        .await
        .map_err(StripeFailed::Write)?;
    Ok((vec![StripeDone { hashes, traffic }], hash))
}

/// The writers of the extra streams the receiver took: opened by this side as
/// the dialer, or collected as they join the listener's transfer.
async fn extra_writers(
    liveness: &Liveness,
    link: StripeLink<'_>,
    joining: &mut Option<Joining>,
    ready: &Ready,
) -> Result<Vec<FrameWriter>> {
    let stripes = ready.stripes;
    let extra = match (link, joining) {
        _ if stripes <= 1 => Vec::new(),
        (StripeLink::Dialer { connection, .. }, _) => {
            open_stripes(connection, ready.transfer, stripes, liveness).await?
        }
        (StripeLink::Listener { .. }, Some(joining)) => {
            collect_stripes(joining, stripes, liveness).await?
        }
        _ => bail!("protocol violation: {stripes} streams where one was offered"),
    };
    // The receiver never writes on an extra stream.
    Ok(extra.into_iter().map(|stream| stream.writer).collect())
}

/// Sends a stripe of the file on the offer's stream and on each of `extra`,
/// then the file hash on the offer's stream.
async fn send_striped(
    writer: &mut FrameWriter,
    mut extra: Vec<FrameWriter>,
    source: &Source,
    ready: &Ready,
    progress: &Progress,
) -> Result<(Vec<StripeDone>, Hash), StripeFailed> {
    let pool = PiecePool::default();
    let sending = std::iter::once(&mut *writer)
        .chain(extra.iter_mut())
        .zip(0..)
        .map(|(writer, stripe)| {
            let indices = stripe_chunks(stripe, ready.stripes, source.offer.chunks()).collect();
            let read_ahead =
                (READ_AHEAD_PER_FILE / ready.stripes as usize).clamp(READ_AHEAD_MIN, READ_AHEAD);
            send_chunks(
                writer,
                source,
                &ready.held,
                &pool,
                indices,
                read_ahead,
                progress,
            )
        });
    let sent = match try_join_all(sending).await {
        Ok(_) if !source.unchanged() => Err(StripeFailed::Changed),
        sent => sent,
    };
    // The receiver learns why on whichever stream it reads first.
    let reset = sent
        .as_ref()
        .err()
        .and_then(|failed| failed.reset_code(source));
    for writer in &mut extra {
        match reset {
            Some(code) => writer.reset(code),
            None => writer.finish(),
        }
    }
    let sent = sent?;
    let hash = file_hash(
        source.offer.size,
        &merge_hashes(source.offer.chunks(), &sent),
    );
    writer
        .write(Bytes::copy_from_slice(&end_frame(&hash)))
        .await
        .map_err(StripeFailed::Write)?;
    Ok((sent, hash))
}

/// Reads, hashes and writes the chunks `indices` (one stripe's): the reading
/// on a blocking thread, `read_ahead` pieces ahead of the network.
async fn send_chunks(
    writer: &mut FrameWriter,
    source: &Source,
    held: &Arc<HashMap<u32, Hash>>,
    pool: &PiecePool,
    indices: Vec<u64>,
    read_ahead: usize,
    progress: &Progress,
) -> Result<StripeDone, StripeFailed> {
    let (tx, mut rx) = mpsc::channel(read_ahead);
    let reading = {
        let (source, held, pool) = (source.clone(), held.clone(), pool.clone());
        tokio::task::spawn_blocking(move || {
            read_chunks(&source, &held, &pool, &indices, &mut |piece| {
                tx.blocking_send(piece)
                    .map_err(|_| std::io::Error::other("stream closed"))
            })
        })
    };
    let mut traffic = Traffic::default();
    let mut written = Ok(());
    while let Some(piece) = rx.recv().await {
        let coded = code_on_the_way(&piece, source, writer.liveness()).await;
        written = writer
            .write_all(&mut traffic.on_wire(piece, coded, source, progress))
            .await;
        if written.is_err() {
            break;
        }
    }
    drop(rx);
    let read = reading
        .await
        .map_err(|_| StripeFailed::Read(anyhow!("the reading task failed")))?;
    written.map_err(StripeFailed::Write)?;
    let hashes = read.map_err(|err| StripeFailed::Read(err.into()))?;
    Ok(StripeDone { hashes, traffic })
}

/// Sends the chunks `indices` of `source` on `writer`, in that order, for a
/// puller fetching the file from several sources; then ends the stream, or
/// resets it where the file could not be read or changed meanwhile. No `END`
/// and no verdict: the puller checks each chunk against the file's hash list.
pub async fn send_chunk_set(
    writer: &mut FrameWriter,
    source: &Source,
    indices: Vec<u64>,
    progress: &Progress,
) -> Result<Traffic> {
    let sent = send_chunks(
        writer,
        source,
        &Arc::default(),
        &PiecePool::default(),
        indices,
        READ_AHEAD,
        progress,
    )
    .await;
    let sent = match sent {
        Ok(_) if !source.unchanged() => Err(StripeFailed::Changed),
        sent => sent,
    };
    match sent {
        Ok(done) => {
            writer.finish_and_flush().await;
            Ok(done.traffic)
        }
        Err(failed) => {
            if let Some(code) = failed.reset_code(source) {
                writer.reset(code);
            }
            Err(match failed {
                StripeFailed::Write(err) => err,
                StripeFailed::Read(err) => {
                    err.context(format!("cannot read {}", source.offer.name))
                }
                StripeFailed::Changed => anyhow!(
                    "{} changed on disk while it was being sent",
                    source.offer.name
                ),
            })
        }
    }
}

/// The coded block for `piece` where it is data, its chunk goes as blocks
/// and coding pays now: decided as the piece goes out, so that `auto` judges
/// by the pace of the network, and coded on a blocking thread.
async fn code_on_the_way(piece: &Piece, source: &Source, liveness: &Liveness) -> Option<Bytes> {
    let Piece::Data { bytes, offset } = piece else {
        return None;
    };
    if !source.coding.should_code(Some(liveness.connection())) {
        return None;
    }
    let layout = source.layout.clone();
    source
        .coding
        .code_elsewhere(bytes.clone(), *offset, layout)
        .await
}

impl Traffic {
    /// The bytes `piece` puts on the stream, its data counted as sent: in a
    /// chunk sent as blocks, `coded` where it was coded, else a stored block.
    fn on_wire(
        &mut self,
        piece: Piece,
        coded: Option<Bytes>,
        source: &Source,
        progress: &Progress,
    ) -> Vec<Bytes> {
        match piece {
            Piece::Header(bytes) => vec![bytes],
            Piece::Data { bytes, .. } => {
                let len = bytes.len() as u64;
                match coded {
                    Some(block) => {
                        self.add(block.len() as u64, len, progress);
                        vec![block]
                    }
                    None if source.coding.in_blocks() => {
                        self.add(len, len, progress);
                        let header = stored_block_header(len as u32);
                        vec![Bytes::copy_from_slice(&header), bytes]
                    }
                    None => {
                        self.add(len, len, progress);
                        vec![bytes]
                    }
                }
            }
            Piece::Hash(hash) => vec![Bytes::copy_from_slice(&hash)],
            Piece::Kept(index) => vec![Bytes::copy_from_slice(&kept_frame(index))],
        }
    }
}

/// Why a transfer stopped: the network (the receiver may say why), the file,
/// or a write to the file while it was read.
enum StripeFailed {
    Write(anyhow::Error),
    Read(anyhow::Error),
    Changed,
}

impl StripeFailed {
    /// The code the streams are reset with, so the receiver can say why; none
    /// for a network failure, which the receiver sees for itself.
    fn reset_code(&self, source: &Source) -> Option<u32> {
        match self {
            StripeFailed::Write(_) => None,
            StripeFailed::Read(_) if source.unchanged() => Some(CODE_SOURCE_UNREADABLE),
            StripeFailed::Read(_) | StripeFailed::Changed => Some(CODE_SOURCE_CHANGED),
        }
    }
}

/// Resets the offer's stream where the receiver should learn why sending
/// stopped, and says why to this side's user: for a network failure, in the
/// receiver's words when it gives them.
async fn stopped(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    source: &Source,
    failed: StripeFailed,
) -> anyhow::Error {
    if let Some(code) = failed.reset_code(source) {
        writer.reset(code);
    }
    let name = &source.offer.name;
    match failed {
        StripeFailed::Write(err) => {
            // A receiver that gives up stops the stream and says why on its
            // side; a stalled one will say nothing.
            if !err.is::<Stalled>()
                && let Ok(Ok(Message::Failed { code, reason } | Message::Refused { code, reason })) =
                    tokio::time::timeout(REASON_WAIT, reader.message()).await
            {
                return PeerError { code, reason }.into();
            }
            err
        }
        StripeFailed::Read(err) => err.context(format!("cannot read {name}")),
        StripeFailed::Changed => anyhow!(
            "{name} changed on disk while it was being sent, so nothing was stored; send it again once it is written"
        ),
    }
}

/// Waits for the receiver's verdict on a file whose hash this side computed
/// as `local_hash`.
async fn await_verdict(
    reader: &mut FrameReader,
    local_hash: &Hash,
    sent: &[StripeDone],
) -> Result<Sent> {
    match reader.message().await? {
        Message::Stored { name, hash } => {
            if parse_hash(&hash)? != *local_hash {
                bail!("the receiver reports hash {hash}, which is not this file's");
            }
            Ok(Sent {
                stored_as: name,
                hash,
                traffic: Traffic::total(sent),
            })
        }
        Message::Failed { code, reason } | Message::Refused { code, reason } => {
            Err(PeerError { code, reason }.into())
        }
        other => bail!("unexpected answer after the data: {other:?}"),
    }
}
