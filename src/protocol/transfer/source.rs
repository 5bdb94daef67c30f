//! A file to send, read piece by piece: its segments on disk or in memory, the
//! buffers its pieces are read into, and the order in which a stripe's chunks
//! are read, hashed and handed on to be sent.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::codec::Layout;
use crate::file_version::FileVersion;
use crate::protocol::coding::Coding;
use crate::protocol::hashing::ChunkHasher;
use crate::protocol::stripes::MAX_STRIPES;
use crate::protocol::wire::{CHUNK_SIZE, Hash, Offer, chunk_header};

/// Bytes read from disk and written to the stream at a time.
pub(super) const PIECE: usize = 1 << 20;
/// Piece buffers kept for reuse once the network is done with them: about what
/// one stream has in flight, so steady sending allocates nothing.
const POOLED_PIECES: usize = 16;

/// Where the bytes of a file come from.
#[derive(Clone)]
pub enum Segment {
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    Bytes(Bytes),
    /// Bytes made from a file as they are read: a whole converted tensor
    /// would have to be held in memory.
    Converted(Arc<dyn Conversion>),
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::File { len, .. } => *len,
            Segment::Bytes(bytes) => bytes.len() as u64,
            Segment::Converted(conversion) => conversion.size(),
        }
    }

    fn file(&self) -> Option<&Arc<File>> {
        match self {
            Segment::File { file, .. } => Some(file),
            Segment::Bytes(_) => None,
            Segment::Converted(conversion) => conversion.file(),
        }
    }
}

/// The bytes of a file converted into another form, any range of which can be
/// read without the others: stripes read their chunks concurrently, and a
/// chunk is read again to hash it or to compare it with a puller's.
pub trait Conversion: Send + Sync {
    /// How many bytes the conversion makes.
    fn size(&self) -> u64;
    /// The file the bytes are made from, checked for changes like any other;
    /// `None` where the bytes are checked otherwise (a fan-out's, by hash).
    fn file(&self) -> Option<&Arc<File>>;
    /// Fills `buf` with the converted bytes from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// A file to send: its offer, the segments its bytes are read from, and how
/// its pieces are coded on the way.
#[derive(Clone)]
pub struct Source {
    pub offer: Offer,
    segments: Vec<Segment>,
    /// Each file read from, as it was when the source was made.
    versions: Vec<(Arc<File>, Option<FileVersion>)>,
    /// What the file's bytes hold, for coding them.
    pub(super) layout: Arc<Layout>,
    pub(super) coding: Coding,
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
            if let Some(file) = segment.file()
                && !versions.iter().any(|(seen, _)| Arc::ptr_eq(seen, file))
            {
                versions.push((file.clone(), FileVersion::of(file)));
            }
        }
        Source {
            offer,
            segments,
            versions,
            layout: Arc::default(),
            coding: Coding::off(),
        }
    }

    /// The source, its bytes described by `layout` for coding.
    pub fn with_layout(mut self, layout: Layout) -> Source {
        self.layout = Arc::new(layout);
        self
    }

    /// The source, its pieces coded by `coding` on the way.
    pub fn coded_by(mut self, coding: Coding) -> Source {
        self.coding = coding;
        self
    }

    /// Whether no file was written to since the source was made. Checked once
    /// everything is read: a file saved over while it was read would arrive as
    /// a mix of its two versions, each chunk matching its hash.
    pub(super) fn unchanged(&self) -> bool {
        self.versions
            .iter()
            .all(|(file, version)| version.is_some() && FileVersion::of(file) == *version)
    }

    /// The hash of the first chunk, which the offer of a file of several
    /// carries; read on a blocking thread.
    pub(super) async fn first_chunk_hash(&self) -> Result<Hash> {
        let name = self.offer.name.clone();
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
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
        .with_context(|| format!("cannot read {name}"))
    }

    /// Reads and hashes every chunk in order, handing each hash to `emit`: what
    /// a fan-out's sender announces, and a listener gives a puller fetching
    /// from several sources. Blocks; `emit` returning false stops it.
    pub fn hash_chunks(&self, emit: &mut dyn FnMut(u64, Hash) -> bool) -> Result<()> {
        let pool = PiecePool::default();
        let chunks = self.offer.chunks();
        for index in 0..chunks {
            let start = index * CHUNK_SIZE;
            let len = CHUNK_SIZE.min(self.offer.size - start);
            let hash = hash_chunk(self, &pool, index, chunks, start, len, &mut |_| Ok(()))
                .with_context(|| format!("cannot read {}", self.offer.name))?;
            if !emit(index, hash) {
                break;
            }
        }
        Ok(())
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
                Segment::Converted(conversion) => {
                    let filled = buf.len();
                    buf.resize(filled + take, 0);
                    conversion.read_at(offset, &mut buf[filled..])?;
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
pub(super) struct PiecePool(Arc<Mutex<Vec<Vec<u8>>>>);

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

/// What a stripe's reading hands on to be sent, in stream order.
pub(super) enum Piece {
    Header(Bytes),
    /// File bytes from `offset`: in a chunk sent as blocks, they become a
    /// block (coded or stored) on their way to the stream.
    Data {
        bytes: Bytes,
        offset: u64,
    },
    Hash(Hash),
    Kept(u32),
}

/// Reads and hashes the chunks `indices` (a stripe's, or those a puller asked
/// for), handing each piece to `emit`; runs on a blocking thread for all but
/// small files. Returns the chunks' hashes, or the read error that stopped it.
pub(super) fn read_chunks(
    source: &Source,
    held: &HashMap<u32, Hash>,
    pool: &PiecePool,
    indices: &[u64],
    emit: &mut dyn FnMut(Piece) -> std::io::Result<()>,
) -> std::io::Result<Vec<Hash>> {
    let size = source.offer.size;
    let chunks = source.offer.chunks();
    let mut hashes = Vec::new();
    for &index in indices {
        let start = index * CHUNK_SIZE;
        let len = CHUNK_SIZE.min(size - start);
        let header = Piece::Header(Bytes::copy_from_slice(&chunk_header(
            index as u32,
            len as u32,
            source.coding.in_blocks(),
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
        let offset = start + done;
        let bytes = source.piece(offset, take, pool)?;
        hasher.update(&bytes);
        done += take as u64;
        emit(Piece::Data { bytes, offset })?;
    }
    Ok(hasher.finalize())
}
