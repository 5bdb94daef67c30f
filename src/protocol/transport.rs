//! QUIC transport settings in one place: the congestion controller, stream
//! limits, and how long a connection that hears nothing stays open. The
//! choices are measured on the link grid of `benches/wan.rs`
//! (docs/performance.md).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use iroh::endpoint::QuicTransportConfig;
use noq_proto::congestion::{ControllerFactory, CubicConfig};

use super::congestion::{PerPathConfig, TunedBbrConfig};

/// Streams a peer may have open at once on one connection.
const MAX_STREAMS: u32 = 64;
/// The shortest QUIC idle timeout this side asks for. The connection closes
/// after hearing nothing for the smaller of both sides' values; a stalled
/// transfer is decided by [`super::liveness`], before that.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a connection decides how fast to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// BBRv3 on paths of a few milliseconds or more, CUBIC on shorter ones
    /// (see [`super::congestion`]).
    #[default]
    Auto,
    /// BBRv3 on every path: paces at the measured bottleneck rate, so random
    /// loss does not cut its rate as it does a loss-based controller's.
    Bbr,
    /// CUBIC on every path, QUIC's usual loss-based controller.
    Cubic,
}

impl FromStr for Congestion {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Congestion> {
        match text {
            "auto" => Ok(Congestion::Auto),
            "bbr" => Ok(Congestion::Bbr),
            "cubic" => Ok(Congestion::Cubic),
            other => bail!("unknown congestion controller {other:?}: auto, bbr or cubic"),
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Congestion::Auto => "auto",
            Congestion::Bbr => "bbr",
            Congestion::Cubic => "cubic",
        })
    }
}

/// What an endpoint's connections are set up with.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub congestion: Congestion,
    /// How long this side waits on a silent peer (`--timeout`); the QUIC idle
    /// timeout is never shorter, so liveness, not QUIC, decides a stall.
    pub patience: Duration,
}

impl Transport {
    pub fn config(&self) -> QuicTransportConfig {
        let idle = self.patience.max(MIN_IDLE_TIMEOUT);
        let builder = QuicTransportConfig::builder()
            .max_concurrent_bidi_streams(MAX_STREAMS.into())
            // Round-robin between the streams of a striped file cut every packet
            // into small frames the receiver copies back together: ~20 % slower.
            .send_fairness(false)
            .max_idle_timeout(idle.try_into().ok());
        let controller: Arc<dyn ControllerFactory + Send + Sync> = match self.congestion {
            Congestion::Auto => Arc::new(PerPathConfig::default()),
            Congestion::Bbr => Arc::new(TunedBbrConfig::default()),
            Congestion::Cubic => Arc::new(CubicConfig::default()),
        };
        builder.congestion_controller_factory(controller).build()
    }
}
