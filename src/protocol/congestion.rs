//! The congestion controller of each network path, chosen from its round trip.
//!
//! BBRv3 paces at the bottleneck rate it measures, so random loss does not cut
//! its rate the way it cuts a loss-based controller's (CUBIC: about
//! 1/(RTT·√loss), 0.3 MB/s at 50 ms and 1 %). But on a path of a millisecond
//! or less (loopback, a LAN), where both ends are busy on the CPU and
//! acknowledgements come in bursts, its estimates of the round trip and the
//! rate are noise, and it sent 1 GiB over loopback at a third of CUBIC's speed.
//! There loss costs CUBIC little, since its rate scales with 1/RTT. So a path
//! starts with both controllers fed the same events (following CUBIC's slow
//! start, which BBR's startup matches) and, after [`DECIDING_ACKS`]
//! acknowledgements, keeps BBR where the smallest round trip seen is
//! [`SHORT_PATH_RTT`] or more, CUBIC where it is less. One sample would not do:
//! the handshake's round trip on a busy machine can be several milliseconds on
//! loopback.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh::endpoint::{Controller, ControllerFactory, ControllerMetrics, RttEstimator};
use noq_proto::congestion::{Bbr3Config, CubicConfig};

/// The round trip below which a path counts as short: a LAN or loopback.
pub const SHORT_PATH_RTT: Duration = Duration::from_millis(4);
/// Acknowledged packets after which a path's controller is chosen.
const DECIDING_ACKS: u32 = 32;

/// Builds a [`PerPath`] controller for every new path.
#[derive(Debug, Default)]
pub struct PerPathConfig {
    bbr: Arc<Bbr3Config>,
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for PerPathConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(PerPath {
            bbr: Some(self.bbr.clone().build(now, current_mtu)),
            cubic: Some(self.cubic.clone().build(now, current_mtu)),
            acks: 0,
        })
    }
}

/// BBR or CUBIC; both until [`DECIDING_ACKS`] acknowledgements decide.
#[derive(Debug)]
struct PerPath {
    bbr: Option<Box<dyn Controller>>,
    cubic: Option<Box<dyn Controller>>,
    acks: u32,
}

impl PerPath {
    /// The controller whose window and rate the path follows.
    fn leading(&self) -> &dyn Controller {
        match (&self.cubic, &self.bbr) {
            (Some(cubic), _) => cubic.as_ref(),
            (None, Some(bbr)) => bbr.as_ref(),
            (None, None) => unreachable!("a path keeps one controller"),
        }
    }

    fn each(&mut self, mut event: impl FnMut(&mut dyn Controller)) {
        for controller in [&mut self.bbr, &mut self.cubic].into_iter().flatten() {
            event(controller.as_mut());
        }
    }

    /// Keeps one controller once the path's round trip is known.
    fn decide(&mut self, rtt: &RttEstimator) {
        if self.bbr.is_none() || self.cubic.is_none() {
            return;
        }
        self.acks += 1;
        if self.acks < DECIDING_ACKS {
            return;
        }
        if rtt.min() >= SHORT_PATH_RTT {
            self.cubic = None;
        } else {
            self.bbr = None;
        }
    }
}

impl Controller for PerPath {
    fn on_sent(&mut self, now: Instant, bytes: u64, largest_pn: u64) {
        self.each(|c| c.on_sent(now, bytes, largest_pn));
    }

    fn on_packet_sent(&mut self, now: Instant, bytes: u16, pn: u64) {
        self.each(|c| c.on_packet_sent(now, bytes, pn));
    }

    fn on_cwnd_limited(&mut self) {
        self.each(|c| c.on_cwnd_limited());
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        pn: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.decide(rtt);
        self.each(|c| c.on_ack(now, sent, bytes, pn, app_limited, rtt));
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.each(|c| c.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked));
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        is_ecn: bool,
        lost_bytes: u64,
        largest_lost_pn: u64,
    ) {
        self.each(|c| {
            c.on_congestion_event(
                now,
                sent,
                is_persistent_congestion,
                is_ecn,
                lost_bytes,
                largest_lost_pn,
            )
        });
    }

    fn on_packet_lost(&mut self, lost_bytes: u16, pn: u64, now: Instant) {
        self.each(|c| c.on_packet_lost(lost_bytes, pn, now));
    }

    fn on_spurious_congestion_event(&mut self) {
        self.each(|c| c.on_spurious_congestion_event());
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.each(|c| c.on_mtu_update(new_mtu));
    }

    fn on_ack_frequency_update(
        &mut self,
        ack_eliciting_threshold: u64,
        requested_max_ack_delay: Duration,
    ) {
        self.each(|c| c.on_ack_frequency_update(ack_eliciting_threshold, requested_max_ack_delay));
    }

    fn window(&self) -> u64 {
        self.leading().window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.leading().metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(PerPath {
            bbr: self.bbr.as_ref().map(|c| c.clone_box()),
            cubic: self.cubic.as_ref().map(|c| c.clone_box()),
            acks: self.acks,
        })
    }

    fn initial_window(&self) -> u64 {
        self.leading().initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
