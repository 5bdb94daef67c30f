//! Striping: one file's chunks carried on several streams of a connection.
//!
//! A stream moves at most its receive window per round trip, and noq's window
//! (1.25 MB) cannot safely grow (see docs/performance.md, "Long links"): one stream holds
//! a file to 12 MB/s on a 100 ms link. So the sender offers to stripe (on more
//! streams the longer the link), the
//! receiver answers how many streams it takes and a transfer number, and the
//! dialer opens the extra streams, each naming the transfer and its stripe.
//! Chunk `i` travels on stripe `i % stripes`, in order within its stripe; the
//! offer's stream is stripe 0 and carries the file hash after every stripe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use iroh::endpoint::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::errors::connection_failed;
use super::liveness::Liveness;
use super::round_trip;
use super::stream::{FrameReader, FrameWriter};
use super::wire::Message;

/// The most streams one file is carried on: on a long link.
pub const MAX_STRIPES: u32 = 8;
/// Streams for one file on a short link, where four windows per round trip
/// already outrun the CPU (more only cost memory).
const SHORT_LINK_STRIPES: u32 = 4;
/// The round trip from which a link is long: four windows per round trip
/// are then about 500 MB/s or less.
const LONG_LINK_RTT: Duration = Duration::from_millis(10);

/// The streams one file may take on `connection`, as long as its link is.
pub fn link_stripes(connection: &Connection) -> u32 {
    match round_trip(connection) {
        Some(rtt) if rtt >= LONG_LINK_RTT => MAX_STRIPES,
        _ => SHORT_LINK_STRIPES,
    }
}

/// How many streams one hop of a fan-out takes. A receiver passes a chunk on
/// only once it is whole and checked, and chunks spread over several streams
/// become whole together, late: each hop would add that wait. So one stream,
/// unless the link is long enough that one stream's window would cap its rate.
pub fn fanout_stripes(connection: &Connection) -> u32 {
    match round_trip(connection) {
        Some(rtt) if rtt >= LONG_LINK_RTT => MAX_STRIPES,
        _ => 1,
    }
}

/// How many streams a dialer lets one file take.
#[derive(Clone, Copy, Debug)]
pub enum Striping {
    /// A share of what the link calls for, among this many files moving at once.
    SharedAmong(usize),
    /// One stream: a pipe needs chunks in file order.
    Single,
}

impl Striping {
    pub fn stripes(self, link: u32) -> u32 {
        match self {
            Striping::SharedAmong(files) => (link as usize / files.max(1)).max(1) as u32,
            Striping::Single => 1,
        }
    }
}

/// The chunks of a file of `chunks` chunks that travel on `stripe`, in order.
pub fn stripe_chunks(stripe: u32, stripes: u32, chunks: u64) -> impl Iterator<Item = u64> {
    (u64::from(stripe)..chunks).step_by(stripes.max(1) as usize)
}

/// How many stripes a file of `chunks` chunks can use of the `wanted`.
pub fn usable_stripes(wanted: u32, chunks: u64) -> u32 {
    wanted
        .min(MAX_STRIPES)
        .min(chunks.min(u64::from(MAX_STRIPES)) as u32)
        .max(1)
}

/// How a transfer gets its extra streams: the side that dialed the connection
/// opens them, the listening side receives them through its registry. In an
/// upload the dialer sends; in a pull it receives.
#[derive(Clone, Copy)]
pub enum StripeLink<'a> {
    /// This side dialed: it opens the extra streams, for `stripes` in all at most.
    Dialer {
        connection: &'a Connection,
        stripes: u32,
    },
    /// This side listens: the dialer's extra streams arrive through `registry`;
    /// a file takes at most `stripes` (see [`link_stripes`]).
    Listener {
        registry: &'a Arc<StripeRegistry>,
        stripes: u32,
    },
}

/// Opens the extra streams 1..`stripes` of `transfer`, each named by its first
/// message.
pub async fn open_stripes(
    connection: &Connection,
    transfer: u64,
    stripes: u32,
    liveness: &Liveness,
) -> Result<Vec<StripeStream>> {
    let mut streams = Vec::new();
    for stripe in 1..stripes {
        let (send, recv) = liveness
            .bound(connection.open_bi())
            .await?
            .map_err(|err| connection_failed(err, "cannot open a stream"))?;
        let mut writer = FrameWriter::new(send, liveness.clone());
        writer
            .message(&Message::Stripe { transfer, stripe })
            .await?;
        streams.push(StripeStream {
            stripe,
            writer,
            reader: FrameReader::new(recv, liveness.clone()),
        });
    }
    Ok(streams)
}

/// Waits for the extra streams 1..`stripes` of `joining`, in stripe order.
pub async fn collect_stripes(
    joining: &mut Joining,
    stripes: u32,
    liveness: &Liveness,
) -> Result<Vec<StripeStream>> {
    let mut arrived: Vec<Option<StripeStream>> = (1..stripes).map(|_| None).collect();
    while arrived.iter().any(Option::is_none) {
        let stream = liveness
            .bound(joining.streams.recv())
            .await
            .with_context(|| {
                format!(
                    "the peer opened {} of the transfer's {} extra streams",
                    arrived.iter().filter(|s| s.is_some()).count(),
                    stripes - 1,
                )
            })?
            .ok_or_else(|| anyhow!("the transfer's extra streams stopped arriving"))?;
        let stripe = stream.stripe;
        match (stripe as usize)
            .checked_sub(1)
            .and_then(|at| arrived.get_mut(at))
        {
            Some(slot @ None) => *slot = Some(stream),
            _ => return Err(unexpected_stripe(stripe, stripes)),
        }
    }
    Ok(arrived.into_iter().flatten().collect())
}

/// A stream for a stripe the transfer does not have, or has already.
pub fn unexpected_stripe(stripe: u32, stripes: u32) -> anyhow::Error {
    anyhow!("protocol violation: a stream for stripe {stripe} of {stripes}, or a second one")
}

/// An extra stream of a striped transfer.
pub struct StripeStream {
    pub stripe: u32,
    pub writer: FrameWriter,
    pub reader: FrameReader,
}

/// A listener's striped transfers on one connection, waiting for their extra
/// streams.
pub struct StripeRegistry {
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<StripeStream>>>,
    next: AtomicU64,
    /// Extra streams the whole listener takes at once: each holds a few MiB of
    /// buffers, so many concurrent senders fall back to one stream each.
    budget: Arc<Semaphore>,
}

/// A striped transfer's claim on its extra streams; ends the wait when dropped.
pub struct Joining {
    pub transfer: u64,
    pub stripes: u32,
    pub streams: mpsc::UnboundedReceiver<StripeStream>,
    registry: Arc<StripeRegistry>,
    _extra_streams: OwnedSemaphorePermit,
}

impl Drop for Joining {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.registry.waiting.lock() {
            waiting.remove(&self.transfer);
        }
    }
}

impl StripeRegistry {
    pub fn new(budget: Arc<Semaphore>) -> Arc<StripeRegistry> {
        Arc::new(StripeRegistry {
            waiting: Mutex::default(),
            next: AtomicU64::new(1),
            budget,
        })
    }

    /// A new transfer on up to `stripes` streams, fewer while the listener's
    /// extra streams are taken; `None` for one stream.
    pub fn join(self: &Arc<Self>, stripes: u32) -> Option<Joining> {
        let mut extra = stripes.min(MAX_STRIPES).saturating_sub(1);
        let permit = loop {
            if extra == 0 {
                return None;
            }
            match self.budget.clone().try_acquire_many_owned(extra) {
                Ok(permit) => break permit,
                Err(_) => extra -= 1,
            }
        };
        let transfer = self.next.fetch_add(1, Ordering::Relaxed);
        let (deliver, streams) = mpsc::unbounded_channel();
        self.waiting.lock().ok()?.insert(transfer, deliver);
        Some(Joining {
            transfer,
            stripes: extra + 1,
            streams,
            registry: self.clone(),
            _extra_streams: permit,
        })
    }

    /// Hands an extra stream to the transfer it names.
    pub fn deliver(&self, transfer: u64, stream: StripeStream) -> Result<()> {
        let waiting = self
            .waiting
            .lock()
            .map_err(|_| anyhow!("the stripe registry failed"))?;
        let deliver = waiting
            .get(&transfer)
            .ok_or_else(|| anyhow!("a stream for transfer {transfer}, which is not waiting"))?;
        deliver
            .send(stream)
            .map_err(|_| anyhow!("transfer {transfer} ended"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_travels_on_exactly_one_stripe() {
        for chunks in [1u64, 2, 5, 8, 9] {
            for stripes in 1..=4 {
                let mut seen: Vec<u64> = (0..stripes)
                    .flat_map(|stripe| stripe_chunks(stripe, stripes, chunks))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..chunks).collect::<Vec<_>>());
            }
        }
        assert_eq!(usable_stripes(4, 2), 2);
        assert_eq!(usable_stripes(9, 100), MAX_STRIPES);
        assert_eq!(usable_stripes(0, 100), 1);
        assert_eq!(Striping::SharedAmong(1).stripes(4), 4);
        assert_eq!(Striping::SharedAmong(2).stripes(8), 4);
        assert_eq!(Striping::SharedAmong(200).stripes(8), 1);
        assert_eq!(Striping::Single.stripes(8), 1);
    }

    #[test]
    fn the_listener_budget_bounds_extra_streams() {
        let registry = StripeRegistry::new(Arc::new(Semaphore::new(4)));
        let first = registry.join(4).expect("room for three extra streams");
        assert_eq!(first.stripes, 4);
        let second = registry.join(4).expect("room for one more");
        assert_eq!(second.stripes, 2);
        assert!(registry.join(4).is_none(), "no extra stream left");
        drop(first);
        assert_eq!(registry.join(2).map(|j| j.stripes), Some(2));
    }
}
