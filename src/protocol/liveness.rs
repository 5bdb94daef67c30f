//! When a peer counts as gone: its connection made no progress at all for the
//! stall timeout while this side waited on it.
//!
//! No single read or write is timed. A slow uplink moves a 1 MiB piece in
//! seconds, and a stream of a striped file may wait behind its siblings for
//! longer than any timeout; both keep the connection as a whole moving, so
//! neither may look like a dead peer. What does is a connection on which,
//! for the whole timeout, the peer sent no stream data, granted no flow-control
//! credit and acknowledged none of the data this side kept sending.

use std::time::Duration;

use iroh::endpoint::{Connection, ConnectionStats};
use tokio::time::Instant;

/// How often a long wait looks at the connection's statistics, as a share of
/// the stall timeout, and the bounds on it.
const CHECKS_PER_STALL: u32 = 8;
const MIN_CHECK: Duration = Duration::from_millis(100);
const MAX_CHECK: Duration = Duration::from_secs(1);

/// A peer whose connection made no progress for the whole stall timeout: it is
/// gone, stuck, or the link is down, so waiting on it any further is pointless.
#[derive(Debug)]
pub struct Stalled(Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the peer made no progress for {} s (sent nothing, acknowledged nothing): it is gone, stuck, or the link is down",
            self.0.as_secs_f32().round()
        )
    }
}

impl std::error::Error for Stalled {}

/// Bounds waits on the streams of one connection by the connection's progress.
#[derive(Clone)]
pub struct Liveness {
    connection: Connection,
    stall: Duration,
}

impl Liveness {
    pub fn new(connection: Connection, stall: Duration) -> Liveness {
        Liveness { connection, stall }
    }

    /// The connection whose progress bounds the waits.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// How long the connection may stand still before its peer counts as gone.
    pub fn stall(&self) -> Duration {
        self.stall
    }

    /// Waits for `op`, or fails with [`Stalled`] once the connection has shown
    /// no progress for the stall timeout. A wait that ends quickly never
    /// looks at the statistics.
    pub async fn bound<T>(&self, op: impl Future<Output = T>) -> Result<T, Stalled> {
        let mut op = std::pin::pin!(op);
        let check = (self.stall / CHECKS_PER_STALL).clamp(MIN_CHECK, MAX_CHECK);
        let mut seen: Option<Marks> = None;
        let mut since = Instant::now();
        loop {
            if let Ok(output) = tokio::time::timeout(check, &mut op).await {
                return Ok(output);
            }
            let now = Marks::of(&self.connection.stats());
            match &seen {
                Some(before) if !now.moved_since(before) => {
                    if since.elapsed() >= self.stall {
                        return Err(Stalled(self.stall));
                    }
                }
                _ => {
                    seen = Some(now);
                    since = Instant::now();
                }
            }
        }
    }
}

/// Runs `op` and says whether `connection` made progress meanwhile: the peer
/// sent stream data or credit, or acknowledged data this side sent.
pub async fn with_progress<T>(connection: &Connection, op: impl Future<Output = T>) -> (T, bool) {
    let before = Marks::of(&connection.stats());
    let output = op.await;
    let moved = Marks::of(&connection.stats()).moved_since(&before);
    (output, moved)
}

/// The counters of a connection that only move while its peer takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    /// Stream data, flow-control credit, resets and stops from the peer: its
    /// application is reading and writing.
    from_peer: [u64; 5],
    /// Acknowledgements from the peer, which count only while this side is
    /// still sending stream data: a peer whose application is stuck keeps
    /// acknowledging keep-alive pings.
    acks: u64,
    stream_frames_sent: u64,
}

impl Marks {
    fn of(stats: &ConnectionStats) -> Marks {
        let rx = &stats.frame_rx;
        Marks {
            from_peer: [
                rx.stream,
                rx.max_data,
                rx.max_stream_data,
                rx.reset_stream,
                rx.stop_sending,
            ],
            acks: rx.acks,
            stream_frames_sent: stats.frame_tx.stream,
        }
    }

    fn moved_since(&self, before: &Marks) -> bool {
        self.from_peer != before.from_peer
            || (self.acks != before.acks && self.stream_frames_sent != before.stream_frames_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(from_peer: u64, acks: u64, sent: u64) -> Marks {
        Marks {
            from_peer: [from_peer, 0, 0, 0, 0],
            acks,
            stream_frames_sent: sent,
        }
    }

    #[test]
    fn acknowledged_data_is_progress_but_acknowledged_pings_are_not() {
        let before = marks(1, 10, 100);
        assert!(marks(2, 10, 100).moved_since(&before), "data from the peer");
        assert!(
            marks(1, 11, 101).moved_since(&before),
            "our data acknowledged"
        );
        assert!(
            !marks(1, 11, 100).moved_since(&before),
            "only pings acknowledged"
        );
        assert!(
            !marks(1, 10, 101).moved_since(&before),
            "sent into the void"
        );
    }
}
