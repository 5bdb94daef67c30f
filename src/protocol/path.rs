//! Which network path a connection's data took and how it behaved there, from
//! iroh's path statistics: what answers "why is this slow?".

use iroh::endpoint::{Connection, PathStats};
use iroh::{EndpointId, TransportAddr};
use serde::Serialize;

use super::pool::Pool;

/// How the packets reach the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// UDP straight to one of the peer's IP addresses.
    Direct,
    /// Through a relay server.
    Relay,
    /// A custom iroh transport (tensor-iroh configures none).
    Custom,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
            PathKind::Custom => "custom",
        }
    }
}

/// One path of a connection: where it goes and what QUIC saw on it. The
/// counters cover the path's whole life within its connection (every request
/// on a pooled connection, not one file), and count what *this* side sent:
/// on a pull, whose data the listener sends, they are requests and
/// acknowledgements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathReport {
    pub kind: PathKind,
    /// `IP:PORT` of a direct path, the relay's URL for a relayed one.
    pub addr: String,
    /// The smoothed round-trip time.
    pub rtt_ms: f64,
    /// QUIC packets sent that ask for acknowledgement (probes included).
    pub sent_packets: u64,
    /// Packets declared lost; their data, if any, was sent again.
    pub lost_packets: u64,
    /// `lost_packets` in percent of `sent_packets`.
    pub loss_percent: f64,
    /// Times the congestion controller cut its window for a loss.
    pub congestion_events: u64,
    /// The congestion window: bytes allowed in flight.
    pub cwnd_bytes: u64,
    /// The controller's estimate of the path's sustainable rate, in megabits
    /// (10^6 bits) per second, where it gives one (BBR does; Cubic, NewReno
    /// do not).
    pub bandwidth_estimate_mbit: Option<f64>,
    /// The largest UDP payload the path currently takes.
    pub mtu: u16,
}

impl PathReport {
    /// The path `connection` sends on now, else (between selections, or after
    /// the selected one closed) the open path that carried the most bytes;
    /// `None` when it has no open path.
    pub fn of(connection: &Connection) -> Option<PathReport> {
        let paths = connection.paths();
        if let Some(selected) = paths.iter().find(|path| path.is_selected()) {
            return Some(PathReport::from_stats(
                selected.remote_addr(),
                &selected.stats(),
            ));
        }
        paths
            .iter()
            .map(|path| (path.stats(), path.remote_addr().clone()))
            .max_by_key(|(stats, _)| stats.udp_tx.bytes + stats.udp_rx.bytes)
            .map(|(stats, addr)| PathReport::from_stats(&addr, &stats))
    }

    /// The path of the pooled connection to `peer`; `None` when none is open.
    pub async fn to_peer(pool: &Pool, peer: &EndpointId) -> Option<PathReport> {
        PathReport::of(&pool.existing(peer).await?)
    }

    pub fn from_stats(addr: &TransportAddr, stats: &PathStats) -> PathReport {
        let (kind, addr) = match addr {
            TransportAddr::Ip(ip) => (PathKind::Direct, ip.to_string()),
            TransportAddr::Relay(url) => (PathKind::Relay, url.to_string()),
            other => (PathKind::Custom, other.to_string()),
        };
        let loss_percent = if stats.sent_packets == 0 {
            0.0
        } else {
            stats.lost_packets as f64 / stats.sent_packets as f64 * 100.0
        };
        PathReport {
            kind,
            addr,
            rtt_ms: stats.rtt.as_secs_f64() * 1e3,
            sent_packets: stats.sent_packets,
            lost_packets: stats.lost_packets,
            loss_percent,
            congestion_events: stats.congestion_events,
            cwnd_bytes: stats.cwnd,
            // noq gives bits per second.
            bandwidth_estimate_mbit: stats.bandwidth_estimate.map(|bits| bits as f64 / 1e6),
            mtu: stats.current_mtu,
        }
    }
}

/// A peer and the path to it, when known.
#[derive(Debug, Clone)]
pub struct PeerPath {
    pub peer: EndpointId,
    pub path: Option<PathReport>,
}

impl PeerPath {
    pub async fn of(pool: &Pool, peer: EndpointId) -> PeerPath {
        PeerPath {
            peer,
            path: PathReport::to_peer(pool, &peer).await,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    /// Statistics of a 50 ms path that lost about 1 % of its packets.
    pub(crate) fn stats() -> PathStats {
        let mut stats = PathStats::default();
        stats.rtt = Duration::from_micros(50_300);
        stats.sent_packets = 79_210;
        stats.lost_packets = 812;
        stats.congestion_events = 14;
        stats.cwnd = 1_200_000;
        stats.current_mtu = 1452;
        stats
    }

    #[test]
    fn a_direct_path_in_the_units_its_keys_name() {
        let addr = TransportAddr::Ip("10.0.0.2:4433".parse().unwrap());
        let mut stats = stats();
        stats.bandwidth_estimate = Some(96_400_000);
        let report = PathReport::from_stats(&addr, &stats);
        assert_eq!(report.kind, PathKind::Direct);
        assert_eq!(report.addr, "10.0.0.2:4433");
        assert!((report.rtt_ms - 50.3).abs() < 1e-9);
        assert!((report.loss_percent - 812.0 / 79_210.0 * 100.0).abs() < 1e-9);
        assert_eq!(report.bandwidth_estimate_mbit, Some(96.4));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["kind"], "direct");
        assert_eq!(json["cwnd_bytes"], 1_200_000);
        assert_eq!(json["mtu"], 1452);
    }

    #[test]
    fn a_relayed_path_without_an_estimate_and_nothing_sent() {
        let addr = TransportAddr::Relay("https://relay.example.org./".parse().unwrap());
        let report = PathReport::from_stats(&addr, &PathStats::default());
        assert_eq!(report.kind, PathKind::Relay);
        assert_eq!(report.addr, "https://relay.example.org./");
        assert_eq!(report.loss_percent, 0.0, "no division by zero");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["kind"], "relay");
        assert!(json["bandwidth_estimate_mbit"].is_null());
    }
}
