//! Checking and writing a received file's data one batch behind the network.
//!
//! Hashing and disk writes run on a blocking thread while the receiving task
//! reads the next batch, so the stream keeps flowing while the disk works. A
//! file of one batch is checked in place, where a thread hand-off would cost
//! more than the work.

use anyhow::anyhow;
use tokio::task::JoinHandle;

use super::hashing::ChunkHasher;
use super::transfer::{Failure, Sink};
use super::wire::Hash;

/// Bytes hashed and written at a time: large enough for BLAKE3's wide SIMD path
/// and few syscalls, small enough to bound memory per stream (two batches).
pub const BATCH: usize = 1 << 20;

/// Where a batch's data starts: a page boundary, which lets a sink hand it to
/// the disk without copying it into the page cache (`O_DIRECT`).
const PAGE: usize = 4096;

/// A buffer for one batch whose data starts on a page boundary. The bytes
/// before `start` only pad the allocation up to the boundary.
pub struct BatchBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl BatchBuf {
    fn with_capacity(capacity: usize) -> BatchBuf {
        let bytes = Vec::<u8>::with_capacity(capacity + PAGE);
        let start = bytes.as_ptr().align_offset(PAGE).min(PAGE);
        let mut buf = BatchBuf { bytes, start };
        buf.clear();
        buf
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.bytes.resize(self.start, 0);
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// The buffer to append data to; it never grows past its capacity, so the
    /// data stays where it starts.
    pub fn appender(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

/// One batch of a chunk's data, and the sender's hash when it ends the chunk.
pub struct Batch {
    pub data: BatchBuf,
    pub chunk: u64,
    pub offset: u64,
    pub claimed: Option<Hash>,
}

pub struct Checker {
    state: State,
    in_place: bool,
    batch_capacity: usize,
    spare: Vec<BatchBuf>,
}

enum State {
    Idle(Box<Work>),
    Busy(JoinHandle<Box<Work>>),
    /// The blocking thread panicked and took the sink with it.
    Lost,
}

struct Work {
    sink: Box<dyn Sink>,
    chunks: u64,
    hasher: Option<(u64, ChunkHasher)>,
    failure: Option<Failure>,
    done_with: Option<BatchBuf>,
}

impl Work {
    fn run(&mut self, mut batch: Batch) {
        if self.failure.is_none() {
            self.failure = self.check_and_write(&batch).err();
        }
        batch.data.clear();
        self.done_with = Some(batch.data);
    }

    fn check_and_write(&mut self, batch: &Batch) -> Result<(), Failure> {
        let hasher = match &mut self.hasher {
            Some((chunk, hasher)) if *chunk == batch.chunk => hasher,
            slot => {
                &mut slot
                    .insert((batch.chunk, ChunkHasher::new(batch.chunk, self.chunks)))
                    .1
            }
        };
        hasher.update(batch.data.data());
        self.sink
            .write(batch.offset, batch.data.data())
            .map_err(Failure::dropped)?;
        if let Some(claimed) = batch.claimed {
            let (_, hasher) = self.hasher.take().expect("a hasher for the chunk");
            if hasher.finalize() != claimed {
                return Err(Failure::kept(anyhow!(
                    "chunk {} does not match its hash; the data was corrupted on the way",
                    batch.chunk
                )));
            }
            self.sink
                .chunk_checked(batch.chunk as u32, &claimed)
                .map_err(Failure::dropped)?;
        }
        Ok(())
    }
}

/// The blocking thread panicked, and the sink went with it.
fn lost() -> Failure {
    Failure::kept(anyhow!("writing the file failed unexpectedly"))
}

impl Checker {
    /// A checker for a file of `size` bytes in `chunks` chunks, written to `sink`.
    pub fn new(sink: Box<dyn Sink>, size: u64, chunks: u64) -> Checker {
        Checker {
            state: State::Idle(Box::new(Work {
                sink,
                chunks,
                hasher: None,
                failure: None,
                done_with: None,
            })),
            in_place: size <= BATCH as u64,
            batch_capacity: size.min(BATCH as u64) as usize,
            spare: Vec::new(),
        }
    }

    /// An empty buffer for the next batch, reused from an earlier one.
    pub fn buffer(&mut self) -> BatchBuf {
        self.spare
            .pop()
            .unwrap_or_else(|| BatchBuf::with_capacity(self.batch_capacity))
    }

    /// Hands `batch` over once the previous one is done; fails with the first
    /// failure of an earlier batch.
    pub async fn submit(&mut self, batch: Batch) -> Result<(), Failure> {
        let mut work = self.finished().await?;
        if self.in_place {
            work.run(batch);
            self.recycle(&mut work);
            let failure = work.failure.take();
            self.state = State::Idle(work);
            return failure.map_or(Ok(()), Err);
        }
        self.state = State::Busy(tokio::task::spawn_blocking(move || {
            work.run(batch);
            work
        }));
        Ok(())
    }

    /// Waits until every batch is checked and written.
    pub async fn drain(&mut self) -> Result<(), Failure> {
        let mut work = self.finished().await?;
        let failure = work.failure.take();
        self.state = State::Idle(work);
        failure.map_or(Ok(()), Err)
    }

    /// Waits for the last batch and gives the sink back.
    pub async fn into_sink(mut self) -> Result<Box<dyn Sink>, Failure> {
        self.wait().await;
        match self.state {
            State::Idle(work) => Ok(work.sink),
            _ => Err(lost()),
        }
    }

    async fn finished(&mut self) -> Result<Box<Work>, Failure> {
        self.wait().await;
        match std::mem::replace(&mut self.state, State::Lost) {
            State::Idle(mut work) => {
                self.recycle(&mut work);
                if let Some(failure) = work.failure.take() {
                    self.state = State::Idle(work);
                    return Err(failure);
                }
                Ok(work)
            }
            _ => Err(lost()),
        }
    }

    async fn wait(&mut self) {
        if let State::Busy(job) = &mut self.state {
            self.state = match job.await {
                Ok(work) => State::Idle(work),
                Err(_) => State::Lost,
            };
        }
    }

    fn recycle(&mut self, work: &mut Work) {
        if let Some(buffer) = work.done_with.take() {
            self.spare.push(buffer);
        }
    }
}
