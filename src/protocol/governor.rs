//! When `--compress auto` codes.
//!
//! Coding pays when the link, not the processor, sets the pace: on a
//! 100 Mbit/s link a third fewer bytes is a third less time, while on loopback
//! the cores are busy encrypting and copying and every core-second spent
//! coding is one the transfer waits for. The governor looks at what it can
//! measure while data goes out: the bytes the connections put on the wire per
//! second, how fast this machine codes, and how many cores sit idle. It codes
//! while coding at the current pace would take at most half of the idle cores
//! (counting those its own coding keeps busy as idle), or a quarter of a core,
//! which any machine can spare.
//!
//! The pace is read from the connections, not from the streams: a stream
//! takes its first megabytes into buffers at once, whatever the link, while
//! the wire only carries what the link does. Pieces are judged as they go out,
//! not as they are read ahead, so a verdict applies at once. It starts at
//! "code" and is first checked after [`FIRST_LOOK`]: a slow link then codes
//! from its first byte, loopback only for that moment.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iroh::endpoint::Connection;
use tokio::sync::{Semaphore, SemaphorePermit};

/// When the first verdict is checked, after the first piece: long enough for
/// a loopback connection to show a pace no slow link has.
const FIRST_LOOK: Duration = Duration::from_millis(10);
/// How often it is checked after that: long enough for the kernel's CPU
/// counters, which tick every 10 ms, to say something.
const WINDOW: Duration = Duration::from_millis(100);
/// The share of idle cores coding may take: the rest is left to the network
/// and to the receiver's decoding when both ends share a machine.
const IDLE_SHARE: f64 = 0.5;
/// Cores coding may take however busy the machine is: a quarter of a core
/// codes some 40 MB/s, three times a 100 Mbit/s link, and the scheduler gives
/// that much to any thread that asks.
const ALWAYS_AFFORDABLE: f64 = 0.25;
/// Bytes per second one core codes, assumed until the first pieces are timed
/// (about what bf16 weights take on a slow core).
const ASSUMED_CODING_RATE: f64 = 150e6;
/// File bytes per wire byte, assumed until the first pieces are coded.
const ASSUMED_RATIO: f64 = 1.5;

/// Measures what `auto` decides on, for every transfer of a command, since
/// they share the machine's cores.
pub struct Governor {
    code_now: AtomicBool,
    /// Bytes coded, what they were coded into, and the nanoseconds it took.
    coded_in: AtomicU64,
    coded_out: AtomicU64,
    coding_nanos: AtomicU64,
    /// Bytes the connections sent, summed over them as last read.
    wire: Mutex<Wire>,
    /// None until the first piece is judged: the first window starts with the
    /// data, not with the command (connecting takes time and sends nothing).
    window: Mutex<Option<Window>>,
    /// A permit per core: pieces coded at once.
    coding_slots: Semaphore,
}

/// The bytes each connection had sent when last read, by its id, and their
/// total growth.
#[derive(Default)]
struct Wire {
    sent: HashMap<usize, u64>,
    total: u64,
}

/// What the counters were at the start of the current window.
struct Window {
    started: Instant,
    length: Duration,
    wire: u64,
    coding_nanos: u64,
    cpu: Option<CpuTimes>,
}

impl Default for Governor {
    fn default() -> Governor {
        Governor {
            code_now: AtomicBool::new(true),
            coded_in: AtomicU64::new(0),
            coded_out: AtomicU64::new(0),
            coding_nanos: AtomicU64::new(0),
            wire: Mutex::default(),
            window: Mutex::new(None),
            coding_slots: Semaphore::new(cores() as usize),
        }
    }
}

impl Governor {
    /// Whether to code a piece going out now on `connection`.
    pub fn verdict(&self, connection: Option<&Connection>) -> bool {
        if let Some(connection) = connection {
            self.note_wire(connection);
        }
        self.look_again_if_due();
        self.code_now.load(Ordering::Relaxed)
    }

    /// Waits for a core to code on; none where the verdict turned to "do not
    /// code" meanwhile, so that pieces queued for a core go as they are.
    pub async fn coding_slot(&self, auto: bool) -> Option<SemaphorePermit<'_>> {
        let slot = self.coding_slots.acquire().await.ok()?;
        (!auto || self.code_now.load(Ordering::Relaxed)).then_some(slot)
    }

    /// Records that coding `len` bytes into `coded_len` took `elapsed`.
    pub fn coded(&self, len: usize, coded_len: usize, elapsed: Duration) {
        self.coded_in.fetch_add(len as u64, Ordering::Relaxed);
        self.coded_out
            .fetch_add(coded_len as u64, Ordering::Relaxed);
        self.coding_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    fn note_wire(&self, connection: &Connection) {
        let sent = connection.stats().udp_tx.bytes;
        let Ok(mut wire) = self.wire.lock() else {
            return;
        };
        let last = wire.sent.insert(connection.stable_id(), sent);
        wire.total += sent.saturating_sub(last.unwrap_or(sent));
    }

    fn look_again_if_due(&self) {
        let Ok(mut slot) = self.window.try_lock() else {
            return;
        };
        let window = slot.get_or_insert_with(|| Window {
            started: Instant::now(),
            length: FIRST_LOOK,
            wire: self.wire.lock().map_or(0, |wire| wire.total),
            coding_nanos: self.coding_nanos.load(Ordering::Relaxed),
            cpu: CpuTimes::read(),
        });
        let elapsed = window.started.elapsed();
        if elapsed < window.length {
            return;
        }
        let wire = self.wire.lock().map_or(window.wire, |wire| wire.total);
        let coding_nanos = self.coding_nanos.load(Ordering::Relaxed);
        let cpu = CpuTimes::read();
        let seconds = elapsed.as_secs_f64();
        let idle_cores = match (&window.cpu, &cpu) {
            (Some(before), Some(now)) => now.idle_cores_since(before),
            _ => cores(),
        };
        let coding_cores = (coding_nanos - window.coding_nanos) as f64 / 1e9 / seconds;
        let decision = Decision {
            wire_pace: (wire - window.wire) as f64 / seconds,
            ratio: self.ratio(),
            coding_rate: self.coding_rate(),
            spare_cores: idle_cores + coding_cores,
        };
        self.code_now.store(decision.pays(), Ordering::Relaxed);
        *window = Window {
            started: Instant::now(),
            length: WINDOW,
            wire,
            coding_nanos,
            cpu,
        };
    }

    /// Bytes per second one core codes, as measured so far.
    fn coding_rate(&self) -> f64 {
        let nanos = self.coding_nanos.load(Ordering::Relaxed);
        if nanos < 1_000_000 {
            return ASSUMED_CODING_RATE;
        }
        self.coded_in.load(Ordering::Relaxed) as f64 / (nanos as f64 / 1e9)
    }

    /// File bytes per wire byte of what was coded so far.
    fn ratio(&self) -> f64 {
        let out = self.coded_out.load(Ordering::Relaxed);
        if out == 0 {
            return ASSUMED_RATIO;
        }
        self.coded_in.load(Ordering::Relaxed) as f64 / out as f64
    }
}

/// One look at the figures `auto` decides on.
struct Decision {
    /// Bytes the connections put on the wire per second.
    wire_pace: f64,
    /// File bytes per wire byte where coded.
    ratio: f64,
    /// Bytes per second one core codes.
    coding_rate: f64,
    /// Cores idle or busy with this process's coding.
    spare_cores: f64,
}

impl Decision {
    fn pays(&self) -> bool {
        // Coded, the wire would carry `ratio` times the file bytes it does.
        let needed = self.wire_pace * self.ratio / self.coding_rate;
        needed <= (self.spare_cores * IDLE_SHARE).max(ALWAYS_AFFORDABLE)
    }
}

pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The machine's CPU time counters (Linux `/proc/stat`), in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    idle: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The first line of `/proc/stat`: `cpu user nice system idle iowait ...`.
    fn parse(stat: &str) -> Option<CpuTimes> {
        let mut fields = stat.lines().next()?.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields.map_while(|field| field.parse().ok()).collect();
        let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
        Some(CpuTimes {
            idle,
            total: ticks.iter().take(8).sum(),
        })
    }

    /// Cores idle on average since `before`.
    fn idle_cores_since(&self, before: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return cores();
        }
        cores() * self.idle.saturating_sub(before.idle) as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(wire_mb_per_s: f64, spare_cores: f64) -> Decision {
        Decision {
            wire_pace: wire_mb_per_s * 1e6,
            ratio: 1.5,
            coding_rate: 150e6,
            spare_cores,
        }
    }

    #[test]
    fn a_100_mbit_link_is_coded_on_an_idle_machine_and_a_busy_one() {
        assert!(decision(12.0, 1.8).pays());
        assert!(decision(12.0, 0.0).pays());
    }

    #[test]
    fn loopback_is_not() {
        assert!(!decision(300.0, 0.3).pays());
        assert!(!decision(300.0, 1.0).pays());
    }

    #[test]
    fn a_gigabit_link_is_coded_where_cores_are_idle() {
        assert!(decision(118.0, 6.0).pays());
        assert!(!decision(118.0, 1.0).pays());
    }

    #[test]
    fn proc_stat_reads() {
        let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(
            CpuTimes::parse(stat),
            Some(CpuTimes {
                idle: 820,
                total: 981
            })
        );
        assert_eq!(CpuTimes::parse("intr 1 2"), None);
    }
}
