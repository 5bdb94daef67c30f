//! Moving one file through a stream pair in checked chunks.
//!
//! The holder sends an [`Offer`]; unless the offer is eager, the receiver answers
//! `Ready` with the chunks it already holds from an interrupted transfer. The
//! holder then sends every chunk in order, as data or as `KEPT` where the receiver's
//! copy matches, then `END` with the file hash. The receiver checks each chunk's
//! hash before it counts, commits the file, and answers `Stored` or `Failed`.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::future::try_join_all;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::file_version::FileVersion;

use super::checker::{BATCH, Batch, Checker, SharedSink, lost};
use super::hashing::{ChunkHasher, file_hash};
use super::liveness::{Liveness, Stalled};
use super::stream::{Frame, FrameReader, FrameWriter};
use super::stripes::{
    Joining, MAX_STRIPES, StripeLink, StripeStream, collect_stripes, open_stripes, stripe_chunks,
    unexpected_stripe, usable_stripes,
};
use super::wire::{
    CHUNK_SIZE, Hash, HeldChunk, Message, Offer, chunk_header, end_frame, hash_hex, kept_frame,
    parse_hash,
};
use super::{CODE_SOURCE_CHANGED, CODE_SOURCE_UNREADABLE};

/// Bytes read from disk and written to the stream at a time.
const PIECE: usize = 1 << 20;
/// Pieces read ahead of the network by one stream's reader: the most, and the
/// least when a file is on many streams (bounds the sender's memory per file).
const READ_AHEAD: usize = 4;
const READ_AHEAD_MIN: usize = 2;
/// Pieces read ahead for the whole of a striped file, shared by its streams.
const READ_AHEAD_PER_FILE: usize = 16;
/// Piece buffers kept for reuse once the network is done with them: about what
/// one stream has in flight, so steady sending allocates nothing.
const POOLED_PIECES: usize = 16;
/// How long a failing side waits for the other's reason or acknowledgement.
const REASON_WAIT: Duration = Duration::from_secs(2);
/// Stream error code for a receiver that gave up on a file.
pub const CODE_FAILED: u32 = 1;

/// Where the bytes of a file come from.
#[derive(Clone)]
pub enum Segment {
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    Bytes(Bytes),
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::File { len, .. } => *len,
            Segment::Bytes(bytes) => bytes.len() as u64,
        }
    }
}

/// A file to send: its offer and the segments its bytes are read from.
#[derive(Clone)]
pub struct Source {
    pub offer: Offer,
    segments: Vec<Segment>,
    /// Each file read from, as it was when the source was made.
    versions: Vec<(Arc<File>, Option<FileVersion>)>,
}

impl Source {
    /// See [`file_offer`] for `identity_header`.
    pub fn new(
        name: String,
        format: &str,
        tensors: u64,
        identity_header: &[u8],
        segments: Vec<Segment>,
    ) -> Source {
        let size = segments.iter().map(Segment::len).sum::<u64>();
        Source::with_offer(
            file_offer(name, format, tensors, identity_header, size),
            segments,
        )
    }

    /// A source whose offer was made beforehand; `segments` hold its size.
    pub fn with_offer(offer: Offer, segments: Vec<Segment>) -> Source {
        let mut versions: Vec<(Arc<File>, Option<FileVersion>)> = Vec::new();
        for segment in &segments {
            if let Segment::File { file, .. } = segment
                && !versions.iter().any(|(seen, _)| Arc::ptr_eq(seen, file))
            {
                versions.push((file.clone(), FileVersion::of(file)));
            }
        }
        Source {
            offer,
            segments,
            versions,
        }
    }

    /// Whether no file was written to since the source was made. Checked once
    /// everything is read: a file saved over while it was read would arrive as
    /// a mix of its two versions, each chunk matching its hash.
    fn unchanged(&self) -> bool {
        self.versions
            .iter()
            .all(|(file, version)| version.is_some() && FileVersion::of(file) == *version)
    }

    /// The file's `len` bytes from `offset`: a slice where they lie in one
    /// in-memory segment, else a buffer from `pool` filled from the segments.
    fn piece(&self, mut offset: u64, len: usize, pool: &PiecePool) -> std::io::Result<Bytes> {
        let mut pooled = pool.take();
        let buf = &mut pooled.buf;
        for segment in &self.segments {
            if buf.len() == len {
                break;
            }
            let segment_len = segment.len();
            if offset >= segment_len {
                offset -= segment_len;
                continue;
            }
            let take = (segment_len - offset).min((len - buf.len()) as u64) as usize;
            match segment {
                Segment::Bytes(bytes) if take == len => {
                    return Ok(bytes.slice(offset as usize..offset as usize + take));
                }
                Segment::Bytes(bytes) => {
                    buf.extend_from_slice(&bytes[offset as usize..offset as usize + take])
                }
                Segment::File {
                    file,
                    offset: start,
                    ..
                } => {
                    buf.reserve_exact(len - buf.len());
                    read_exact_at(file, buf, take, start + offset)?;
                }
            }
            offset = 0;
        }
        if buf.len() < len {
            return Err(shrunk());
        }
        // The buffer comes back to the pool when the network drops its last copy.
        Ok(Bytes::from_owner(pooled))
    }
}

/// The offer for a file of `size` bytes. `identity_header` is hashed with the
/// size into the offer's identity, which a rerun must reproduce to resume a
/// partial file.
pub fn file_offer(
    name: String,
    format: &str,
    tensors: u64,
    identity_header: &[u8],
    size: u64,
) -> Offer {
    let mut identity = blake3::Hasher::new();
    identity.update(&size.to_le_bytes());
    identity.update(identity_header);
    Offer {
        name,
        format: format.to_string(),
        size,
        tensors,
        identity: identity.finalize().to_hex()[..32].to_string(),
        eager: size <= CHUNK_SIZE,
        discard: false,
        first_chunk: None,
        patience_secs: 0,
        files_in_send: 0,
        stripes: MAX_STRIPES,
        transfer: 0,
    }
}

/// Buffers for pieces read from files, reused once the network has sent them:
/// a fresh megabyte costs page faults on every read into it.
#[derive(Clone, Default)]
struct PiecePool(Arc<Mutex<Vec<Vec<u8>>>>);

impl PiecePool {
    fn take(&self) -> Pooled {
        let buf = self.0.lock().expect("pool lock").pop().unwrap_or_default();
        Pooled {
            buf,
            pool: self.clone(),
        }
    }
}

/// A buffer that goes back to its pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: PiecePool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Ok(mut spare) = self.pool.0.lock()
            && spare.len() < POOLED_PIECES
        {
            spare.push(buf);
        }
    }
}

fn shrunk() -> std::io::Error {
    std::io::Error::other("the file is shorter than when it was opened")
}

/// Appends `len` bytes of `file` from `offset` to `buf`, reading straight into
/// its spare capacity: zeroing a megabyte first would cost more than the read's
/// bookkeeping.
fn read_exact_at(file: &File, buf: &mut Vec<u8>, len: usize, offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    buf.reserve(len);
    let mut done = 0;
    while done < len {
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        // SAFETY: pread writes at most `spare.len()` bytes into memory that `buf`
        // owns and has reserved; `set_len` then covers only the bytes it wrote.
        let read = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match read {
            0 => {
                return Err(shrunk());
            }
            read if read < 0 => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            read => {
                // SAFETY: the `read` bytes after the old length were just written.
                unsafe { buf.set_len(buf.len() + read as usize) };
                done += read as usize;
            }
        }
    }
    Ok(())
}

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

enum Piece {
    Header(Bytes),
    Data(Bytes),
    Hash(Hash),
    Kept(u32),
}

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
    let offer = &source.offer;
    // Written together with the data where no answer is awaited in between:
    // a small file then costs the receiver one wake-up, not one per frame.
    let mut opening: Vec<Bytes> = request
        .map(|request| Bytes::from(request.encode()))
        .into_iter()
        .collect();
    let mut sent_offer = offer_to_send(source, writer.liveness().stall()).await?;
    let mut joining = None;
    sent_offer.stripes = match link {
        StripeLink::Dialer { stripes, .. } => stripes,
        StripeLink::Listener { registry, stripes } if !offer.eager => {
            joining = registry.join(usable_stripes(stripes, offer.chunks()));
            sent_offer.transfer = joining.as_ref().map_or(0, |joining| joining.transfer);
            joining.as_ref().map_or(1, |joining| joining.stripes)
        }
        StripeLink::Listener { .. } => 1,
    };
    let offered_stripes = sent_offer.stripes.max(1);
    opening.push(Bytes::from(Message::Offer(sent_offer).encode()));
    let (held, stripes, transfer) = if offer.eager {
        (HashMap::new(), 1, 0)
    } else {
        writer.write_all(&mut std::mem::take(&mut opening)).await?;
        match reader.message().await? {
            Message::Ready {
                held,
                stripes,
                transfer,
            } => (
                held_map(&held)?,
                stripes.clamp(1, offered_stripes),
                transfer,
            ),
            Message::Refused { reason } => bail!("{reason}"),
            other => bail!("unexpected answer to an offer: {other:?}"),
        }
    };
    let held = Arc::new(held);
    let pool = PiecePool::default();

    let sent = if offer.size <= PIECE as u64 {
        // A small file is read inline: a thread hand-off would cost more than the read.
        let mut sent_bytes = 0;
        let read = read_chunks(source, &held, &pool, 0, 1, &mut |piece| {
            opening.push(piece_bytes(piece, &mut sent_bytes, progress));
            Ok(())
        })
        .map_err(|err| StripeFailed::Read(err.into()))
        .and_then(|hashes| {
            source
                .unchanged()
                .then_some(hashes)
                .ok_or(StripeFailed::Changed)
        })
        .map(|hashes| {
            let hash = file_hash(offer.size, &hashes);
            opening.push(Bytes::copy_from_slice(&end_frame(&hash)));
            (
                vec![StripeDone {
                    hashes,
                    bytes: sent_bytes,
                }],
                hash,
            )
        });
        match read {
            Ok(read) => writer
                .write_all(&mut opening)
                .await
                .map(|()| read)
                .map_err(StripeFailed::Write),
            Err(failed) => Err(failed),
        }
    } else {
        if !opening.is_empty() {
            writer.write_all(&mut opening).await?;
        }
        let liveness = writer.liveness().clone();
        let extra = match (link, &mut joining) {
            _ if stripes <= 1 => Vec::new(),
            (StripeLink::Dialer { connection, .. }, _) => {
                open_stripes(connection, transfer, stripes, &liveness).await?
            }
            (StripeLink::Listener { .. }, Some(joining)) => {
                collect_stripes(joining, stripes, &liveness).await?
            }
            _ => bail!("protocol violation: {stripes} streams where one was offered"),
        };
        // The receiver never writes on an extra stream.
        let mut extra: Vec<FrameWriter> = extra.into_iter().map(|stream| stream.writer).collect();
        let sending = std::iter::once(&mut *writer)
            .chain(extra.iter_mut())
            .zip(0..)
            .map(|(writer, stripe)| {
                send_stripe(writer, source, &held, &pool, stripe, stripes, progress)
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
        match sent {
            Ok(sent) => {
                let hash = file_hash(offer.size, &merge_hashes(offer.chunks(), &sent));
                writer
                    .write(Bytes::copy_from_slice(&end_frame(&hash)))
                    .await
                    .map(|()| (sent, hash))
                    .map_err(StripeFailed::Write)
            }
            Err(failed) => Err(failed),
        }
    };
    let (sent, local_hash) = match sent {
        Ok(sent) => sent,
        Err(failed) => {
            if let Some(code) = failed.reset_code(source) {
                writer.reset(code);
            }
            match failed {
                StripeFailed::Write(err) => {
                    // A receiver that gives up stops the stream and says why on
                    // its side; a stalled one will say nothing.
                    if !err.is::<Stalled>()
                        && let Ok(Ok(Message::Failed { reason } | Message::Refused { reason })) =
                            tokio::time::timeout(REASON_WAIT, reader.message()).await
                    {
                        bail!("{reason}");
                    }
                    return Err(err);
                }
                StripeFailed::Read(err) => {
                    return Err(err.context(format!("cannot read {}", offer.name)));
                }
                StripeFailed::Changed => bail!(
                    "{} changed on disk while it was being sent, so nothing was stored; send it again once it is written",
                    offer.name
                ),
            }
        }
    };
    writer.finish();
    match reader.message().await? {
        Message::Stored { name, hash } => {
            if parse_hash(&hash)? != local_hash {
                bail!("the receiver reports hash {hash}, which is not this file's");
            }
            Ok(Sent {
                stored_as: name,
                hash,
                sent_bytes: sent.iter().map(|stripe| stripe.bytes).sum(),
            })
        }
        Message::Failed { reason } | Message::Refused { reason } => bail!("{reason}"),
        other => bail!("unexpected answer after the data: {other:?}"),
    }
}

/// What one stream of a transfer carried: the hashes of its chunks, in order,
/// and the data bytes that crossed the network.
struct StripeDone {
    hashes: Vec<Hash>,
    bytes: u64,
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

/// Reads, hashes and writes the chunks of one stripe: the reading on a blocking
/// thread, a few pieces ahead of the network.
async fn send_stripe(
    writer: &mut FrameWriter,
    source: &Source,
    held: &Arc<HashMap<u32, Hash>>,
    pool: &PiecePool,
    stripe: u32,
    stripes: u32,
    progress: &Progress,
) -> Result<StripeDone, StripeFailed> {
    let read_ahead = (READ_AHEAD_PER_FILE / stripes as usize).clamp(READ_AHEAD_MIN, READ_AHEAD);
    let (tx, mut rx) = mpsc::channel(read_ahead);
    let reading = {
        let (source, held, pool) = (source.clone(), held.clone(), pool.clone());
        tokio::task::spawn_blocking(move || {
            read_chunks(&source, &held, &pool, stripe, stripes, &mut |piece| {
                tx.blocking_send(piece)
                    .map_err(|_| std::io::Error::other("stream closed"))
            })
        })
    };
    let mut sent_bytes = 0;
    let mut written = Ok(());
    while let Some(piece) = rx.recv().await {
        written = writer
            .write(piece_bytes(piece, &mut sent_bytes, progress))
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
    Ok(StripeDone {
        hashes,
        bytes: sent_bytes,
    })
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

/// The offer as sent: with the sender's patience, and the first chunk's hash
/// for a file of several.
async fn offer_to_send(source: &Source, patience: Duration) -> Result<Offer> {
    let mut offer = source.offer.clone();
    offer.patience_secs = patience.as_secs().max(1);
    if !offer.eager {
        let source = source.clone();
        let first = tokio::task::spawn_blocking(move || {
            let chunks = source.offer.chunks();
            let len = CHUNK_SIZE.min(source.offer.size);
            hash_chunk(
                &source,
                &PiecePool::default(),
                0,
                chunks,
                0,
                len,
                &mut |_| Ok(()),
            )
        })
        .await
        .context("the reading task failed")?
        .with_context(|| format!("cannot read {}", offer.name))?;
        offer.first_chunk = Some(hash_hex(&first));
    }
    Ok(offer)
}

/// The bytes `piece` puts on the stream; its data is counted as sent.
fn piece_bytes(piece: Piece, sent_bytes: &mut u64, progress: &Progress) -> Bytes {
    match piece {
        Piece::Header(bytes) => bytes,
        Piece::Data(bytes) => {
            *sent_bytes += bytes.len() as u64;
            progress.add(bytes.len() as u64);
            bytes
        }
        Piece::Hash(hash) => Bytes::copy_from_slice(&hash),
        Piece::Kept(index) => Bytes::copy_from_slice(&kept_frame(index)),
    }
}

fn held_map(held: &[HeldChunk]) -> Result<HashMap<u32, Hash>> {
    held.iter()
        .map(|chunk| Ok((chunk.index, parse_hash(&chunk.hash)?)))
        .collect()
}

/// Reads and hashes the chunks of `stripe`, handing each piece to `emit`; runs
/// on a blocking thread for all but small files. Returns the chunks' hashes, or
/// the read error that stopped it.
fn read_chunks(
    source: &Source,
    held: &HashMap<u32, Hash>,
    pool: &PiecePool,
    stripe: u32,
    stripes: u32,
    emit: &mut dyn FnMut(Piece) -> std::io::Result<()>,
) -> std::io::Result<Vec<Hash>> {
    let size = source.offer.size;
    let chunks = source.offer.chunks();
    let mut hashes = Vec::new();
    for index in stripe_chunks(stripe, stripes, chunks) {
        let start = index * CHUNK_SIZE;
        let len = CHUNK_SIZE.min(size - start);
        let header = Piece::Header(Bytes::copy_from_slice(&chunk_header(
            index as u32,
            len as u32,
        )));
        let hash = if let Some(theirs) = held.get(&(index as u32)) {
            // Kept until compared, so a chunk that differs is not read twice.
            let mut pieces = Vec::new();
            let ours = hash_chunk(source, pool, index, chunks, start, len, &mut |piece| {
                pieces.push(piece);
                Ok(())
            })?;
            if ours == *theirs {
                hashes.push(ours);
                emit(Piece::Kept(index as u32))?;
                continue;
            }
            emit(header)?;
            pieces.into_iter().try_for_each(&mut *emit)?;
            ours
        } else {
            emit(header)?;
            hash_chunk(source, pool, index, chunks, start, len, emit)?
        };
        emit(Piece::Hash(hash))?;
        hashes.push(hash);
    }
    Ok(hashes)
}

/// Hashes one chunk, handing its data to `emit` piece by piece.
fn hash_chunk(
    source: &Source,
    pool: &PiecePool,
    index: u64,
    chunks: u64,
    start: u64,
    len: u64,
    emit: &mut dyn FnMut(Piece) -> std::io::Result<()>,
) -> std::io::Result<Hash> {
    let mut hasher = ChunkHasher::new(index, chunks);
    let mut done = 0;
    while done < len {
        let take = (len - done).min(PIECE as u64) as usize;
        let piece = source.piece(start + done, take, pool)?;
        hasher.update(&piece);
        done += take as u64;
        emit(Piece::Data(piece))?;
    }
    Ok(hasher.finalize())
}

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

/// What a receiver reports about a stored file.
#[derive(Debug, Clone)]
pub struct Received {
    pub offer: Offer,
    pub stored_as: String,
    pub replaced: bool,
    pub hash: String,
    pub received_bytes: u64,
}

/// Receives one offered file into the sink that `accept` gives for the offer (or
/// refuses it with the reason `accept` returns).
/// `link` says how a striped transfer gets its extra streams.
pub async fn receive_file<F>(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    link: StripeLink<'_>,
    progress: &Progress,
    accept: F,
) -> Result<Received>
where
    F: AsyncFnOnce(&Offer) -> Result<Box<dyn Sink>>,
{
    let offer = match reader.message().await {
        Ok(Message::Offer(offer)) => offer,
        Ok(Message::Refused { reason } | Message::Failed { reason }) => bail!("{reason}"),
        // An offer that breaks a bound is answered, so a sender learns why
        // instead of seeing the stream end.
        Ok(other) => {
            let reason = format!("expected a file offer, got a {} message", other.kind());
            refuse(writer, reader, &reason).await;
            bail!("{reason}");
        }
        Err(err) => {
            let reason = format!("{err:#}");
            refuse(writer, reader, &reason).await;
            bail!("refused an offer: {reason}");
        }
    };
    let mut sink = match accept(&offer).await {
        Ok(sink) => sink,
        Err(err) => {
            let reason = format!("{err:#}");
            refuse(writer, reader, &reason).await;
            bail!("refused {}: {reason}", offer.name);
        }
    };
    let striped = !offer.eager && !sink.in_order_only();
    let (joining, to_open) = match link {
        StripeLink::Listener { registry, stripes } if striped => (
            registry.join(usable_stripes(offer.stripes.min(stripes), offer.chunks())),
            None,
        ),
        StripeLink::Dialer {
            connection,
            stripes,
        } if striped && offer.transfer != 0 => (
            None,
            Some((
                connection,
                usable_stripes(offer.stripes.min(stripes), offer.chunks()),
            )),
        ),
        _ => (None, None),
    };
    let (stripe_count, transfer) = match (&joining, to_open) {
        (Some(joining), _) => (joining.stripes, joining.transfer),
        (None, Some((_, stripes))) => (stripes, offer.transfer),
        (None, None) => (1, 0),
    };
    let held: HashMap<u32, Hash> = if offer.eager {
        HashMap::new()
    } else {
        let held = sink.held();
        let message = Message::Ready {
            held: held
                .iter()
                .map(|(index, hash)| HeldChunk {
                    index: *index,
                    hash: hash_hex(hash),
                })
                .collect(),
            stripes: stripe_count,
            transfer,
        };
        if let Err(err) = writer.message(&message).await {
            sink.abandon(true);
            return Err(err);
        }
        held.into_iter().collect()
    };
    let liveness = writer.liveness().clone();
    let opened = match to_open {
        Some((connection, stripes)) if stripes > 1 => {
            match open_stripes(connection, transfer, stripes, &liveness).await {
                Ok(opened) => opened,
                Err(err) => {
                    sink.abandon(true);
                    return fail(writer, reader, &offer, err).await;
                }
            }
        }
        _ => Vec::new(),
    };

    let cancelled = sink.cancelled();
    let sink: SharedSink = Arc::new(Mutex::new(sink));
    let mut checkers: Vec<Checker> = (0..stripe_count)
        .map(|_| Checker::new(sink.clone(), offer.size, offer.chunks()))
        .collect();
    let extra = ExtraStreams {
        opened,
        joining,
        liveness,
    };
    let outcome = tokio::select! {
        outcome = receive_chunks(reader, &mut checkers, extra, &offer, &held, progress) => outcome,
        _ = cancelled.cancelled() => Err(Failure::kept(anyhow!("a newer transfer of the same file took over"))),
    };
    let mut drained = Ok(());
    for mut checker in checkers {
        let result = checker.drain().await;
        if drained.is_ok() {
            drained = result;
        }
    }
    let sink = match Arc::try_unwrap(sink).map(Mutex::into_inner) {
        Ok(Ok(sink)) => sink,
        _ => return fail(writer, reader, &offer, lost().error).await,
    };
    if let Err(failure) = drained {
        sink.abandon(failure.keep_partial);
        return fail(writer, reader, &offer, failure.error).await;
    }
    match outcome {
        Ok((hash, received_bytes)) => match commit(sink, hash).await {
            Ok(committed) => {
                let hash = hash_hex(&hash);
                writer
                    .message(&Message::Stored {
                        name: committed.name.clone(),
                        hash: hash.clone(),
                    })
                    .await?;
                writer.finish_and_flush().await;
                Ok(Received {
                    offer,
                    stored_as: committed.name,
                    replaced: committed.replaced,
                    hash,
                    received_bytes,
                })
            }
            Err(err) => fail(writer, reader, &offer, err).await,
        },
        Err(failure) => {
            sink.abandon(failure.keep_partial);
            fail(writer, reader, &offer, failure.error).await
        }
    }
}

/// Commits `sink`; on a blocking thread where that syncs the file and may
/// compare it with one stored before.
async fn commit(sink: Box<dyn Sink>, hash: Hash) -> Result<Committed> {
    if !sink.commit_blocks() {
        return sink.commit(&hash);
    }
    tokio::task::spawn_blocking(move || sink.commit(&hash))
        .await
        .unwrap_or_else(|_| Err(anyhow!("storing the file failed unexpectedly")))
}

async fn refuse(writer: &mut FrameWriter, reader: &mut FrameReader, reason: &str) {
    writer
        .message(&Message::Refused {
            reason: reason.to_string(),
        })
        .await
        .ok();
    writer.finish();
    reader.stop(CODE_FAILED);
}

async fn fail(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    offer: &Offer,
    err: anyhow::Error,
) -> Result<Received> {
    let err_stalled = err.is::<Stalled>();
    let reason = format!("{}: {err:#}", offer.name);
    writer
        .message(&Message::Failed {
            reason: reason.clone(),
        })
        .await
        .ok();
    reader.stop(CODE_FAILED);
    // The peer may be gone (that may be the failure): do not wait a stall for it.
    let wait = if err_stalled {
        Duration::ZERO
    } else {
        REASON_WAIT
    };
    writer.finish_and_flush_within(wait).await;
    Err(anyhow!(reason))
}

/// Why receiving stopped, and whether the partial file is worth keeping.
pub(super) struct Failure {
    error: anyhow::Error,
    keep_partial: bool,
}

impl Failure {
    pub(super) fn kept(error: anyhow::Error) -> Self {
        Failure {
            error,
            keep_partial: true,
        }
    }

    pub(super) fn dropped(error: anyhow::Error) -> Self {
        Failure {
            error,
            keep_partial: false,
        }
    }
}

/// Receives every chunk, on the offer's stream and on the extra streams of a
/// striped transfer (`opened` by this side, or joining through the registry),
/// then the file hash; each stream's data is checked by its own checker.
async fn receive_chunks(
    reader: &mut FrameReader,
    checkers: &mut [Checker],
    extra: ExtraStreams,
    offer: &Offer,
    held: &HashMap<u32, Hash>,
    progress: &Progress,
) -> Result<(Hash, u64), Failure> {
    let chunks = offer.chunks();
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
            receive_stripe(reader, checker, offer, held, progress, stripe, stripes)
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
    let hash = match reader.next().await.map_err(Failure::kept)? {
        Some(Frame::End { hash }) => hash,
        None => {
            return Err(Failure::kept(anyhow!(
                "the sender stopped after its last chunk, before the file hash"
            )));
        }
        Some(_) => {
            return Err(Failure::kept(anyhow!(
                "protocol violation: more than the offered {chunks} chunks"
            )));
        }
    };
    if file_hash(offer.size, &merge_hashes(chunks, &done)) != hash {
        return Err(Failure::dropped(anyhow!(
            "the file hash does not match its chunks"
        )));
    }
    Ok((hash, done.iter().map(|stripe| stripe.bytes).sum()))
}

/// The extra streams of a striped transfer as a receiver has them: those it
/// opened, or those to arrive through the registry while the connection lives.
struct ExtraStreams {
    opened: Vec<StripeStream>,
    joining: Option<Joining>,
    liveness: Liveness,
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

/// Receives the chunks of `stripe` from `reader`, in order, into `checker`:
/// their hashes as the sender claimed them (the checker verifies each) and the
/// data bytes received. An extra stream ends there; the offer's stream (stripe
/// 0) goes on with the file hash.
async fn receive_stripe(
    reader: &mut FrameReader,
    checker: &mut Checker,
    offer: &Offer,
    held: &HashMap<u32, Hash>,
    progress: &Progress,
    stripe: u32,
    stripes: u32,
) -> Result<StripeDone, Failure> {
    let chunks = offer.chunks();
    let mut hashes = Vec::new();
    let mut received = 0u64;
    for next in stripe_chunks(stripe, stripes, chunks) {
        match reader.next().await.map_err(Failure::kept)? {
            Some(Frame::Chunk { index, len }) => {
                let start = next * CHUNK_SIZE;
                let expected_len = CHUNK_SIZE.min(offer.size - start);
                if u64::from(index) != next || u64::from(len) != expected_len {
                    return Err(Failure::kept(anyhow!(
                        "protocol violation: chunk {index} of {len} bytes where chunk {next} of {expected_len} belongs"
                    )));
                }
                let mut read = 0u64;
                let mut batch = checker.buffer();
                while read < expected_len {
                    // Packets arrive a kilobyte at a time; the checker takes them in
                    // batches so BLAKE3 can use its wide SIMD path and writes are few.
                    let room = (BATCH - batch.len()).min((expected_len - read) as usize);
                    let got = reader
                        .data_into(batch.appender(), room)
                        .await
                        .map_err(Failure::kept)? as u64;
                    read += got;
                    received += got;
                    progress.add(got);
                    if batch.len() == BATCH || read == expected_len {
                        let claimed = if read == expected_len {
                            let claimed = reader.hash().await.map_err(Failure::kept)?;
                            hashes.push(claimed);
                            Some(claimed)
                        } else {
                            None
                        };
                        let offset = start + read - batch.len() as u64;
                        let data = std::mem::replace(&mut batch, checker.buffer());
                        checker
                            .submit(Batch {
                                data,
                                chunk: next,
                                offset,
                                claimed,
                            })
                            .await?;
                    }
                }
            }
            Some(Frame::Kept { index }) => {
                let hash = held.get(&index).filter(|_| u64::from(index) == next);
                let Some(hash) = hash else {
                    return Err(Failure::kept(anyhow!(
                        "protocol violation: kept chunk {index} was not offered"
                    )));
                };
                progress.add(CHUNK_SIZE.min(offer.size - next * CHUNK_SIZE));
                hashes.push(*hash);
            }
            Some(Frame::End { .. }) => {
                return Err(Failure::kept(anyhow!(
                    "the sender ended the file before chunk {next} of {chunks}"
                )));
            }
            Some(Frame::Message(message)) => {
                return Err(Failure::kept(anyhow!(
                    "protocol violation: message {message:?} inside the data"
                )));
            }
            None => {
                return Err(Failure::kept(anyhow!(
                    "the sender stopped before chunk {next} of {chunks}"
                )));
            }
        }
    }
    if stripe != 0 && reader.next().await.map_err(Failure::kept)?.is_some() {
        return Err(Failure::kept(anyhow!(
            "protocol violation: more on stream {stripe} after its last chunk"
        )));
    }
    Ok(StripeDone {
        hashes,
        bytes: received,
    })
}
