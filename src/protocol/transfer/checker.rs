//! Checking and writing a received file's data behind the network.
//!
//! Hashing and disk writes run on a blocking thread fed through a short queue,
//! so the stream keeps flowing while the disk works or the thread waits for a
//! core. A file of one batch is checked in place, where a thread hand-off would
//! cost more than the work. The streams of a striped transfer each have a
//! checker; they share the file's sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::protocol::coding;
use crate::protocol::errors::ErrorCode;
use crate::protocol::hashing::ChunkHasher;
use crate::protocol::wire::Hash;

use super::failure::{Failure, lost};
use super::sink::Sink;

/// Bytes hashed and written at a time: large enough for BLAKE3's wide SIMD path
/// and few syscalls, small enough to bound memory per stream (two batches).
pub const BATCH: usize = 1 << 20;

/// Where a batch's data starts: a page boundary, which lets a sink hand it to
/// the disk without copying it into the page cache (`O_DIRECT`).
const PAGE: usize = 4096;

/// Batches queued for the blocking thread: enough to ride out its waits for a
/// core (a few milliseconds on a busy machine) without stopping the stream.
const QUEUED: usize = 4;

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
    /// The batch's data; empty where it arrived coded, until decoded.
    pub data: BatchBuf,
    /// A coded block and the length it decodes to: decoded here, on the
    /// checking thread, before it is hashed.
    pub coded: Option<(Vec<u8>, usize)>,
    pub chunk: u64,
    pub offset: u64,
    pub claimed: Option<Hash>,
}

pub struct Checker {
    /// The work, while no thread holds it.
    work: Option<Box<Work>>,
    worker: Option<Worker>,
    in_place: bool,
    batch_capacity: usize,
    spare: Vec<BatchBuf>,
}

/// The blocking thread that checks and writes queued batches.
struct Worker {
    batches: mpsc::Sender<Batch>,
    done_with: std::sync::mpsc::Receiver<BatchBuf>,
    failed: Arc<AtomicBool>,
    thread: JoinHandle<Box<Work>>,
}

/// A file's sink, shared by the checkers of its streams.
pub type SharedSink = Arc<Mutex<Box<dyn Sink>>>;

struct Work {
    sink: SharedSink,
    chunks: u64,
    hasher: Option<(u64, ChunkHasher)>,
    failure: Option<Failure>,
}

impl Work {
    /// Checks and writes `batch` unless an earlier one failed; gives its buffer back.
    fn run(&mut self, mut batch: Batch) -> BatchBuf {
        if self.failure.is_none() {
            self.failure = decode(&mut batch)
                .and_then(|()| self.check_and_write(&batch))
                .err();
        }
        batch.data.clear();
        batch.data
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
        let mut sink = self.sink.lock().map_err(|_| lost())?;
        sink.write(batch.offset, batch.data.data())
            .map_err(Failure::dropped)?;
        if let Some(claimed) = batch.claimed {
            let (_, hasher) = self.hasher.take().expect("a hasher for the chunk");
            if hasher.finalize() != claimed {
                return Err(Failure::kept(
                    ErrorCode::Corrupt
                        .error(format!(
                            "chunk {} does not match its hash; the data was corrupted on the way",
                            batch.chunk
                        ))
                        .into(),
                ));
            }
            sink.chunk_checked(batch.chunk as u32, &claimed)
                .map_err(Failure::dropped)?;
        }
        Ok(())
    }
}

/// Decodes a coded batch into its data buffer. A block that does not decode
/// fails the file like a chunk that does not match its hash.
fn decode(batch: &mut Batch) -> Result<(), Failure> {
    let Some((coded, len)) = batch.coded.take() else {
        return Ok(());
    };
    coding::decode(&coded, len, batch.data.appender()).map_err(|err| {
        Failure::kept(
            ErrorCode::Corrupt
                .error(format!(
                    "chunk {} does not decode ({err}); the data was corrupted on the way",
                    batch.chunk
                ))
                .into(),
        )
    })
}

impl Checker {
    /// A checker for a file of `size` bytes in `chunks` chunks, written to `sink`.
    pub fn new(sink: SharedSink, size: u64, chunks: u64) -> Checker {
        Checker {
            work: Some(Box::new(Work {
                sink,
                chunks,
                hasher: None,
                failure: None,
            })),
            worker: None,
            in_place: size <= BATCH as u64,
            batch_capacity: size.min(BATCH as u64) as usize,
            spare: Vec::new(),
        }
    }

    /// An empty buffer for the next batch, reused from an earlier one.
    pub fn buffer(&mut self) -> BatchBuf {
        if let Some(worker) = &self.worker {
            self.spare.extend(worker.done_with.try_iter());
        }
        self.spare
            .pop()
            .unwrap_or_else(|| BatchBuf::with_capacity(self.batch_capacity))
    }

    /// Queues `batch`, waiting while [`QUEUED`] batches are ahead of it; fails
    /// with the first failure of an earlier batch.
    pub async fn submit(&mut self, batch: Batch) -> Result<(), Failure> {
        if self.in_place {
            let Some(work) = &mut self.work else {
                return Err(lost());
            };
            self.spare.push(work.run(batch));
            return work.failure.take().map_or(Ok(()), Err);
        }
        let worker = match &mut self.worker {
            Some(worker) => worker,
            None => {
                let work = self.work.take().ok_or_else(lost)?;
                self.worker.insert(Worker::start(work))
            }
        };
        if worker.failed.load(Ordering::Acquire) || worker.batches.send(batch).await.is_err() {
            return self.drain().await;
        }
        Ok(())
    }

    /// Waits until every batch is checked and written.
    pub async fn drain(&mut self) -> Result<(), Failure> {
        if let Some(worker) = self.worker.take() {
            drop(worker.batches);
            self.work = worker.thread.await.ok();
        }
        let work = self.work.as_mut().ok_or_else(lost)?;
        work.failure.take().map_or(Ok(()), Err)
    }
}

impl Worker {
    fn start(mut work: Box<Work>) -> Worker {
        let (batches, mut queued) = mpsc::channel::<Batch>(QUEUED);
        let (give_back, done_with) = std::sync::mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let failed = failed.clone();
            tokio::task::spawn_blocking(move || {
                while let Some(batch) = queued.blocking_recv() {
                    give_back.send(work.run(batch)).ok();
                    if work.failure.is_some() {
                        failed.store(true, Ordering::Release);
                    }
                }
                work
            })
        };
        Worker {
            batches,
            done_with,
            failed,
            thread,
        }
    }
}
