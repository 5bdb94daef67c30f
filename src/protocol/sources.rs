//! One whole file from several listeners at once (docs/protocol.md, "Several
//! sources"): the first valid hash list in the sources' order decides the
//! file, every source serving that file takes batches of its chunks from one
//! queue as it finishes the last, and a source that fails gives its unfinished
//! chunks back for the others.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures_util::future::join_all;
use iroh::{EndpointAddr, EndpointId};
use tokio::sync::Notify;

use super::client;
use super::coding::Compress;
use super::pool::Pool;
use super::stripes::link_stripes;
use super::transfer::{Progress, Received, SharedFile, Sink, Traffic};
use super::wire::{CHUNK_SIZE, Offer, hash_hex};

/// The most chunks one request takes: small batches leave a failed source
/// little to give back, and no source a long tail.
const MAX_BATCH: usize = 8;

/// What one source did for a file.
#[derive(Debug)]
pub struct SourceReport {
    pub peer: EndpointId,
    /// File bytes it delivered, checked, and in how many chunks.
    pub bytes: u64,
    pub chunks: u64,
    pub elapsed: Duration,
    /// Why it was retired, or not used at all.
    pub error: Option<anyhow::Error>,
}

/// A file fetched from several sources, or why it was not, and what each
/// source did either way.
pub struct Fetched {
    pub received: Result<Received>,
    pub sources: Vec<SourceReport>,
}

/// Fetches the whole file `name` of `size` bytes (as the catalogs say) from
/// `sources`, into the sink `accept` gives for the first valid source's offer.
/// `patience` is how long this side waits on a silent source. Fails before
/// any chunk is asked for where no source gives a valid hash list.
// Each argument is one independent input from the pull; a struct bundling
// them would only be unpacked again here.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_from_all<F>(
    pool: &Pool,
    sources: &[EndpointAddr],
    name: &str,
    size: u64,
    compress: Compress,
    patience: Duration,
    progress: &Progress,
    accept: F,
) -> Result<Fetched>
where
    F: AsyncFnOnce(&Offer) -> Result<Box<dyn Sink>>,
{
    let started = Instant::now();
    let lists = join_all(
        sources
            .iter()
            .map(|addr| client::hash_list(pool, addr, name, size)),
    )
    .await;
    let Some((offer, list)) = lists.iter().find_map(|list| list.as_ref().ok()).cloned() else {
        let first = lists.into_iter().find_map(Result::err);
        return Err(first.unwrap_or_else(|| anyhow!("no source serves {name}")));
    };
    let mut offer = offer;
    offer.first_chunk = list.chunks.first().map(hash_hex);
    offer.patience_secs = patience.as_secs().max(1);
    let list = Arc::new(list);
    let mut reports: Vec<SourceReport> = Vec::new();
    let mut serving = Vec::new();
    for (addr, answer) in sources.iter().zip(lists) {
        let unused = match answer {
            Ok((_, theirs)) if theirs.file == list.file => None,
            Ok(_) => Some(anyhow!("its {name} is another file (another BLAKE3 hash)")),
            Err(err) => Some(err),
        };
        if unused.is_none() {
            serving.push(reports.len());
        }
        reports.push(SourceReport {
            peer: addr.id,
            bytes: 0,
            chunks: 0,
            elapsed: Duration::ZERO,
            error: unused,
        });
    }
    let file = SharedFile::new(accept(&offer).await?, offer.clone(), list.clone());
    let held = file.held();
    let wanted: VecDeque<u32> = (0..offer.chunks() as u32)
        .filter(|index| !held.contains(index))
        .collect();
    for &index in &held {
        progress.add(chunk_len(size, index), 0);
    }
    let mut requests = Vec::new();
    for &source in &serving {
        let streams = match pool.connection(&sources[source]).await {
            Ok(connection) => link_stripes(&connection),
            Err(_) => 1,
        };
        requests.push((source, streams as usize));
    }
    let queue = WorkQueue::new(wanted, requests.iter().map(|(_, n)| n).sum());
    let tallies: Vec<Mutex<Tally>> = reports.iter().map(|_| Mutex::default()).collect();
    let job = Job {
        pool,
        name,
        file: &file,
        compress,
        progress,
        queue: &queue,
    };
    let workers = requests.iter().flat_map(|&(source, streams)| {
        let (job, addr, tally) = (&job, &sources[source], &tallies[source]);
        (0..streams).map(move |_| job.work(addr, tally, streams))
    });
    let taken_over = file.cancelled();
    tokio::select! {
        _ = join_all(workers) => {}
        _ = taken_over.cancelled() => {
            queue.stop(anyhow!("a newer transfer of the same file took over"), false);
        }
    }
    let mut traffic = Traffic::default();
    for (report, tally) in reports.iter_mut().zip(tallies) {
        let tally = tally.into_inner().expect("tally lock");
        report.bytes = tally.bytes;
        report.chunks = tally.chunks;
        report.elapsed = started.elapsed();
        traffic.data_bytes += tally.traffic.data_bytes;
        traffic.wire_bytes += tally.traffic.wire_bytes;
        if report.error.is_none() {
            report.error = tally.error;
        }
    }
    let received = match queue.unfinished() {
        Some(failure) => {
            file.abandon(!failure.fatal);
            Err(failure.error)
        }
        None => file.commit().await.map(|committed| Received {
            offer,
            stored_as: committed.name,
            replaced: committed.replaced,
            hash: hash_hex(&list.file),
            traffic,
        }),
    };
    Ok(Fetched {
        received,
        sources: reports,
    })
}

/// Whether a file of `size` bytes gains from several sources: it must have
/// two chunks or more to divide.
pub fn worth_several_sources(size: u64) -> bool {
    size > CHUNK_SIZE
}

fn chunk_len(size: u64, index: u32) -> u64 {
    CHUNK_SIZE.min(size - u64::from(index) * CHUNK_SIZE)
}

/// What one source did so far.
#[derive(Default)]
struct Tally {
    bytes: u64,
    chunks: u64,
    traffic: Traffic,
    /// Why the source was retired.
    error: Option<anyhow::Error>,
}

/// What every request of one file shares.
struct Job<'a> {
    pool: &'a Pool,
    name: &'a str,
    file: &'a SharedFile,
    compress: Compress,
    progress: &'a Progress,
    queue: &'a WorkQueue,
}

impl Job<'_> {
    /// One of a source's requests in flight: takes batches until the queue is
    /// empty or the source fails; a failure retires the source (its
    /// `streams` requests) and gives the unfinished chunks back.
    async fn work(&self, addr: &EndpointAddr, tally: &Mutex<Tally>, streams: usize) {
        while let Some(batch) = self.queue.take().await {
            if tally.lock().expect("tally lock").error.is_some() {
                self.queue.give_back(batch, 0);
                return;
            }
            let mut done = Vec::new();
            let mut traffic = Traffic::default();
            let result = client::fetch_chunks(
                self.pool,
                addr,
                self.name,
                self.file,
                &batch,
                self.compress,
                self.progress,
                &mut traffic,
                &mut |index| done.push(index),
            )
            .await;
            let size = self.file.size();
            let mut tally = tally.lock().expect("tally lock");
            tally.chunks += done.len() as u64;
            tally.bytes += done
                .iter()
                .map(|&index| chunk_len(size, index))
                .sum::<u64>();
            tally.traffic.data_bytes += traffic.data_bytes;
            tally.traffic.wire_bytes += traffic.wire_bytes;
            let unfinished: Vec<u32> = batch
                .into_iter()
                .filter(|index| !done.contains(index))
                .collect();
            match result {
                Ok(()) => self.queue.finished(done.len()),
                Err(failed) => {
                    self.queue.finished(done.len());
                    if failed.fatal {
                        // This side failed (its disk), not the source.
                        drop(tally);
                        self.queue.give_back(unfinished, 0);
                        self.queue.stop(failed.error, true);
                    } else {
                        let retiring = tally.error.is_none();
                        tally.error.get_or_insert(failed.error);
                        drop(tally);
                        self.queue
                            .give_back(unfinished, if retiring { streams } else { 0 });
                    }
                    return;
                }
            }
        }
    }
}

/// Why a file did not finish.
struct Unfinished {
    error: anyhow::Error,
    fatal: bool,
}

/// The chunks still to fetch, handed out in batches from the front.
struct WorkQueue {
    state: Mutex<QueueState>,
    changed: Notify,
}

struct QueueState {
    queued: VecDeque<u32>,
    /// Chunks handed out and neither done nor given back.
    in_flight: usize,
    /// Requests of sources not retired: the batch size divides among them.
    requests: usize,
    /// Why the file stopped for all sources.
    stopped: Option<Unfinished>,
}

impl WorkQueue {
    fn new(queued: VecDeque<u32>, requests: usize) -> WorkQueue {
        WorkQueue {
            state: Mutex::new(QueueState {
                queued,
                in_flight: 0,
                requests,
                stopped: None,
            }),
            changed: Notify::new(),
        }
    }

    /// The next batch: the queued chunks divided by twice the requests in
    /// flight, from 1 to [`MAX_BATCH`]. Waits while the queue is empty but
    /// chunks in flight may come back; `None` once there is nothing left to
    /// do, or no source left to do it.
    async fn take(&self) -> Option<Vec<u32>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                if state.stopped.is_some() || state.requests == 0 {
                    return None;
                }
                if !state.queued.is_empty() {
                    let size = (state.queued.len() / (2 * state.requests)).clamp(1, MAX_BATCH);
                    let size = size.min(state.queued.len());
                    state.in_flight += size;
                    return Some(state.queued.drain(..size).collect());
                }
                if state.in_flight == 0 {
                    return None;
                }
            }
            changed.await;
        }
    }

    /// `count` chunks handed out are done.
    fn finished(&self, count: usize) {
        let mut state = self.state.lock().expect("queue lock");
        state.in_flight -= count;
        drop(state);
        self.changed.notify_waiters();
    }

    /// Puts `chunks` back at the front, in order, for other sources, and
    /// takes `retired` requests out of the count.
    fn give_back(&self, chunks: Vec<u32>, retired: usize) {
        let mut state = self.state.lock().expect("queue lock");
        state.in_flight -= chunks.len();
        state.requests -= retired.min(state.requests);
        for index in chunks.into_iter().rev() {
            state.queued.push_front(index);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Stops the file for every source: `fatal` where its partial file is
    /// not worth keeping.
    fn stop(&self, error: anyhow::Error, fatal: bool) {
        self.state.lock().expect("queue lock").stopped = Some(Unfinished { error, fatal });
        self.changed.notify_waiters();
    }

    /// Why chunks are left, if any are.
    fn unfinished(&self) -> Option<Unfinished> {
        let mut state = self.state.lock().expect("queue lock");
        if let Some(stopped) = state.stopped.take() {
            return Some(stopped);
        }
        if state.queued.is_empty() && state.in_flight == 0 {
            return None;
        }
        // Why each source failed is in its report.
        Some(Unfinished {
            error: anyhow!("every source failed before the file was complete"),
            fatal: false,
        })
    }
}
