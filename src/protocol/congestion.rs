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
//! loopback. The BBR kept is tuned for random loss and paces a little above
//! its estimate ([`TunedBbr`]).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh::endpoint::{Controller, ControllerFactory, ControllerMetrics, RttEstimator};
use noq_proto::congestion::{Bbr3Config, CubicConfig};

/// The round trip below which a path counts as short: a LAN or loopback.
pub const SHORT_PATH_RTT: Duration = Duration::from_millis(4);
/// Acknowledged packets after which a path's controller is chosen.
const DECIDING_ACKS: u32 = 32;

/// How much faster than its bandwidth estimate BBR paces (see [`TunedBbr`]).
const PACING_BOOST: f64 = 1.1;
/// A recent loss rate above which every loss counts as congestion: no link
/// meant to carry data loses this much at random.
const RANDOM_LOSS_CEILING: f64 = 0.15;
/// How far the loss rate behind a queue must stand above the rate without one
/// for its losses to count as congestion.
const CONGESTION_EXCESS: f64 = 0.01;
/// Packets sent behind a queue before its loss rate is judged.
const MIN_QUEUED_SAMPLE: u64 = 200;
/// Sent packets over which a recent loss rate is taken (halved each time).
const LOSS_WINDOW: u64 = 2_000;

/// Builds a [`PerPath`] controller for every new path.
#[derive(Debug, Default)]
pub struct PerPathConfig {
    bbr: Arc<Bbr3Config>,
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for PerPathConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(PerPath {
            bbr: Some(Box::new(TunedBbr::new(
                self.bbr.clone().build(now, current_mtu),
            ))),
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

/// BBRv3 told only of the losses that look like congestion, and pacing a
/// little above its estimate.
///
/// BBRv3 takes a round with more than 2 % of its packets lost as a full queue
/// and cuts its rate by 30 %. Random loss (Wi-Fi, a long path's noise) is not
/// a queue: at 1 % it held a 100 Mbit/s, 50 ms path to 58 %, and at 3 % it
/// fell to a tenth of the link within seconds. Random loss strikes whether or
/// not a queue has built up; a full queue adds losses of its own. So losses
/// are tallied apart while the round trip stands above the path's smallest by
/// a quarter of it (2 ms at least: a queue) and while it does not, and a loss
/// counts as congestion only when the rate behind a queue exceeds the rate
/// without one by [`CONGESTION_EXCESS`], or when more than
/// [`RANDOM_LOSS_CEILING`] of recent packets were lost. (Counting every loss
/// behind a queue was not enough: BBR's own start-up and its paced-up probes
/// build queues, and one send in 13 at 1 % loss fell to 60 % of the link.)
/// Other losses are still resent by QUIC; BBR just does not slow down for
/// them, and paces at the rate it measures delivered.
///
/// That measured rate runs low: pacing at it, BBR never once filled a 100 ms
/// bottleneck queue and left 12–18 % of a 100 Mbit/s, 50 ms link idle (81–83 %
/// with 0–0.1 % loss, where CUBIC reached 90 %). It paces at
/// [`PACING_BOOST`] times its estimate instead (88 %, and 84–87 % at 1–3 %
/// loss); its congestion window, twice the path's bandwidth-delay product,
/// still bounds what waits in a queue.
#[derive(Debug)]
pub struct TunedBbr {
    bbr: Box<dyn Controller>,
    queueing: bool,
    /// Every packet; those sent while no queue stood; those sent behind one.
    all: Tally,
    calm: Tally,
    queued: Tally,
}

impl TunedBbr {
    pub fn new(bbr: Box<dyn Controller>) -> TunedBbr {
        TunedBbr {
            bbr,
            queueing: false,
            all: Tally::default(),
            calm: Tally::default(),
            queued: Tally::default(),
        }
    }

    /// The tally of packets sent or lost now.
    fn current(&mut self) -> &mut Tally {
        if self.queueing {
            &mut self.queued
        } else {
            &mut self.calm
        }
    }

    fn loss_is_congestion(&self) -> bool {
        let behind_queue = self.queueing
            && self.queued.sent >= MIN_QUEUED_SAMPLE
            && self.queued.rate() > self.calm.rate() + CONGESTION_EXCESS;
        behind_queue || self.all.rate() > RANDOM_LOSS_CEILING
    }
}

/// Packets sent and lost, both halved as they grow, so the rate follows the
/// recent past.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    sent: u64,
    lost: u64,
}

impl Tally {
    fn sent(&mut self) {
        self.sent += 1;
        if self.sent >= LOSS_WINDOW {
            self.sent /= 2;
            self.lost /= 2;
        }
    }

    fn rate(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }
}

impl Controller for TunedBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, largest_pn: u64) {
        self.bbr.on_sent(now, bytes, largest_pn);
    }

    fn on_packet_sent(&mut self, now: Instant, bytes: u16, pn: u64) {
        self.all.sent();
        self.current().sent();
        self.bbr.on_packet_sent(now, bytes, pn);
    }

    fn on_cwnd_limited(&mut self) {
        self.bbr.on_cwnd_limited();
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
        self.queueing = queue_stands(rtt.get(), rtt.min());
        self.bbr.on_ack(now, sent, bytes, pn, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
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
        self.bbr.on_congestion_event(
            now,
            sent,
            is_persistent_congestion,
            is_ecn,
            lost_bytes,
            largest_lost_pn,
        );
    }

    fn on_packet_lost(&mut self, lost_bytes: u16, pn: u64, now: Instant) {
        self.all.lost += 1;
        self.current().lost += 1;
        if self.loss_is_congestion() {
            self.bbr.on_packet_lost(lost_bytes, pn, now);
        }
    }

    fn on_spurious_congestion_event(&mut self) {
        self.bbr.on_spurious_congestion_event();
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.bbr.on_mtu_update(new_mtu);
    }

    fn on_ack_frequency_update(
        &mut self,
        ack_eliciting_threshold: u64,
        requested_max_ack_delay: Duration,
    ) {
        self.bbr
            .on_ack_frequency_update(ack_eliciting_threshold, requested_max_ack_delay);
    }

    fn window(&self) -> u64 {
        self.bbr.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.bbr.metrics();
        metrics.pacing_rate = metrics
            .pacing_rate
            .map(|rate| (rate as f64 * PACING_BOOST) as u64);
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(TunedBbr {
            bbr: self.bbr.clone_box(),
            queueing: self.queueing,
            all: self.all,
            calm: self.calm,
            queued: self.queued,
        })
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The least standing queue, above the smallest round trip, that makes a loss
/// count as congestion.
const QUEUE_MIN: Duration = Duration::from_millis(2);

/// Whether a round trip of `smoothed` on a path whose smallest is `min` means
/// packets wait in a queue.
fn queue_stands(smoothed: Duration, min: Duration) -> bool {
    smoothed > min + (min / 4).max(QUEUE_MIN)
}

/// Builds a [`TunedBbr`] BBR for every new path.
#[derive(Debug, Default)]
pub struct TunedBbrConfig(Arc<Bbr3Config>);

impl ControllerFactory for TunedBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(TunedBbr::new(self.0.clone().build(now, current_mtu)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A controller that records the losses it is told of.
    #[derive(Debug, Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<u64>>>);

    impl Controller for Recorder {
        fn on_congestion_event(
            &mut self,
            _: Instant,
            _: Instant,
            _: bool,
            _: bool,
            _: u64,
            _: u64,
        ) {
        }
        fn on_packet_lost(&mut self, _: u16, pn: u64, _: Instant) {
            self.0.lock().unwrap().push(pn);
        }
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            14_720
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            14_720
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    /// Sends 1000 packets with no queue losing every `calm_every`-th, then
    /// 1000 in the given state losing every `every`-th, and returns how many
    /// of the latter losses BBR heard of.
    fn losses_heard(calm_every: u64, every: u64, queueing: bool) -> usize {
        let heard = Recorder::default();
        let mut tuned = TunedBbr::new(Box::new(heard.clone()));
        let now = Instant::now();
        let send = |tuned: &mut TunedBbr, from: u64, every: u64| {
            for pn in from..from + 1000 {
                tuned.on_packet_sent(now, 1200, pn);
                if (pn + 1) % every == 0 {
                    tuned.on_packet_lost(1200, pn, now);
                }
            }
        };
        send(&mut tuned, 0, calm_every);
        let before = heard.0.lock().unwrap().len();
        tuned.queueing = queueing;
        send(&mut tuned, 1000, every);
        heard.0.lock().unwrap().len() - before
    }

    #[test]
    fn random_loss_does_not_slow_bbr_queue_or_not() {
        assert_eq!(losses_heard(100, 100, false), 0, "1 % loss, no queue");
        assert_eq!(losses_heard(33, 33, false), 0, "3 % loss, no queue");
        assert_eq!(
            losses_heard(100, 100, true),
            0,
            "1 % loss, 1 % behind a queue"
        );
    }

    #[test]
    fn losses_a_queue_adds_or_too_many_count_as_congestion() {
        let heard = losses_heard(1000, 20, true);
        assert!(
            heard > 20,
            "5 % behind a queue where 0.1 % without: {heard} of 50"
        );
        assert!(losses_heard(4, 4, false) > 200, "25 % loss is congestion");
    }

    #[test]
    fn a_queue_is_a_quarter_of_the_round_trip_and_at_least_2_ms() {
        let ms = Duration::from_millis;
        assert!(!queue_stands(ms(60), ms(50)));
        assert!(queue_stands(ms(70), ms(50)));
        assert!(!queue_stands(ms(2), ms(1)), "2 ms at least on a short path");
        assert!(queue_stands(ms(4), ms(1)));
    }

    #[test]
    fn bbr_paces_above_its_estimate() {
        let tuned = TunedBbr::new(Arc::new(Bbr3Config::default()).build(Instant::now(), 1200));
        let plain = Arc::new(Bbr3Config::default()).build(Instant::now(), 1200);
        let (tuned, plain) = (tuned.metrics(), plain.metrics());
        assert_eq!(
            tuned.pacing_rate,
            plain
                .pacing_rate
                .map(|rate| (rate as f64 * PACING_BOOST) as u64)
        );
        assert_eq!(tuned.congestion_window, plain.congestion_window);
    }
}
