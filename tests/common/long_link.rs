//! A long link between the two namespaces of [`Namespaces`]: a relay in this
//! process that holds every datagram for half a round-trip time each way and
//! drops a share of them at random (tc netem is not available everywhere), a
//! rate cap on each namespace's way out (tc tbf), and one send or pull
//! across it all; or the same send or pull over plain loopback, to measure
//! against.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iroh::EndpointAddr;
use iroh_tickets::endpoint::EndpointTicket;

use super::netns::Namespaces;

/// How early the relay may let a datagram go rather than sleep for it.
const SLACK: Duration = Duration::from_micros(500);

/// The bottleneck's queue, as time at the capped rate (tbf's `latency`: its
/// byte limit is rate × this + burst). One bandwidth-delay product at the
/// longest round trip the bench measures by default (100 ms), the classic
/// router buffer: enough that a loss-based controller backing off after a
/// tail drop (Cubic to 0.7 of its window) still keeps the link busy, so what
/// the table shows is the controller and not a starved link; much more would
/// turn every capped cell into a bufferbloat test (the queue adds up to this
/// much to the round trip for a controller that fills it). At 4 Mbit/s it is
/// 50 kB, some 35 full datagrams.
const QUEUE: Duration = Duration::from_millis(100);

/// tbf's bucket never below this. A datagram larger than the bucket cannot
/// pass at all, and noq hands the kernel GSO batches of up to ten datagrams
/// (~15 kB), which tbf must cut into single datagrams when they exceed the
/// bucket: correct, but CPU this 2-core machine would rather spend on the
/// transfer. Above it, 2 ms of the rate: the burst a real link's shaper lets
/// through at line rate, small beside every round trip measured.
const MIN_BURST: u64 = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum How {
    Send,
    Pull,
}

/// The link a transfer crosses.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Each direction capped at this many Mbit/s (counting IP and UDP
    /// headers, so goodput tops out a few percent below); None leaves the
    /// relay's own ceiling (above 150 MB/s).
    pub rate_mbit: Option<f64>,
    /// Round-trip time the relay adds, half each way.
    pub rtt: Duration,
    /// Fraction of datagrams the relay drops, at random, independently in
    /// each direction (a fixed seed: the same run drops the same datagrams).
    pub loss: f64,
    /// Appended to the options of both the listener and the sender or puller,
    /// `--congestion cubic` for instance.
    pub extra_args: Vec<String>,
    /// Appended to the options of the sender or puller alone; a `--timeout`
    /// here replaces the 60 s it is otherwise given.
    pub sender_args: Vec<String>,
}

impl Link {
    /// An uncapped, lossless link with this round trip.
    pub fn delay(rtt: Duration) -> Link {
        Link {
            rate_mbit: None,
            rtt,
            loss: 0.0,
            extra_args: Vec::new(),
            sender_args: Vec::new(),
        }
    }
}

/// Datagrams let through and dropped, by the relay or by a bottleneck.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counts {
    pub passed: u64,
    pub dropped: u64,
}

impl Counts {
    /// Dropped as a percentage of all that came.
    pub fn dropped_percent(&self) -> f64 {
        let all = self.passed + self.dropped;
        if all == 0 {
            0.0
        } else {
            self.dropped as f64 * 100.0 / all as f64
        }
    }
}

/// What one transfer did.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Seconds for the whole sending or pulling command, or why it failed
    /// (its last line on stderr, as a rule).
    pub outcome: Result<f64, String>,
    /// Seconds the sending or pulling command ran, whether it succeeded,
    /// failed or was killed (0 if it never started).
    pub elapsed: f64,
    /// The relay's datagrams: toward the listener, toward the sender.
    pub relay: [Counts; 2],
    /// The rate caps' datagrams, where the link is capped: what the sender's
    /// namespace sent, what the listener's did (tbf counts GSO batches as
    /// one, so these are packets as the kernel saw them).
    pub bottleneck: Option<[Counts; 2]>,
    /// What the sending or pulling command wrote on stdout: its events, with
    /// `--json` among the link's `sender_args`.
    #[allow(dead_code, reason = "benches/wan.rs does not read it")]
    pub stdout: String,
    /// All the sending or pulling command, then the listener, wrote on
    /// stderr: what a failed run leaves to look into.
    #[allow(dead_code, reason = "benches/wan.rs does not read it")]
    pub stderr: [String; 2],
    /// The most anonymous memory (RssAnon, KiB) the sending or pulling
    /// command, then the listener, held while the transfer ran, sampled with
    /// each look at whether it has ended (every 10 ms).
    #[allow(dead_code, reason = "benches/wan.rs does not read it")]
    pub rss_anon_kib: [u64; 2],
}

/// One `send` of `file` (named `w.safetensors`) by `binary` to a listener, or
/// one `pull` of it from a listener serving it, across `link`; `out` is where
/// the copy lands, and is checked against `file`. A transfer that does not
/// end within ten times what its size takes at the capped rate (two minutes
/// at least) is killed and reported failed. Never panics on a failed transfer.
pub fn transfer(
    binary: &Path,
    namespaces: &Namespaces,
    file: &Path,
    out: &Path,
    link: &Link,
    how: How,
) -> Transfer {
    run(binary, Place::Namespaces(namespaces), file, out, link, how)
}

/// One transfer as [`transfer`] makes it, with both commands in this
/// namespace and nothing between them but loopback: no relay and no cap, so
/// of `link` only its arguments count (one with a rate, round trip or loss is
/// refused), and the deadline is that of 100 MB/s.
#[allow(dead_code, reason = "benches/wan.rs does not call it")]
pub fn transfer_on_loopback(
    binary: &Path,
    file: &Path,
    out: &Path,
    link: &Link,
    how: How,
) -> Transfer {
    assert!(
        link.rate_mbit.is_none() && link.rtt.is_zero() && link.loss == 0.0,
        "loopback cannot emulate {link:?}"
    );
    run(binary, Place::Loopback, file, out, link, how)
}

/// Where the two commands run.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// Each in its own namespace, the relay between them.
    Namespaces(&'a Namespaces),
    /// Both in this namespace, over loopback.
    Loopback,
}

impl Place<'_> {
    /// A command that runs `binary` on the listener's side, or the other.
    /// `ip netns exec` execs it in place, so the child's id is the binary's.
    fn command(self, binary: &Path, listener: bool) -> Command {
        match self {
            Place::Namespaces(namespaces) => {
                let namespace = if listener {
                    &namespaces.listener
                } else {
                    &namespaces.sender
                };
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(binary);
                command
            }
            Place::Loopback => Command::new(binary),
        }
    }
}

fn run(binary: &Path, place: Place, file: &Path, out: &Path, link: &Link, how: How) -> Transfer {
    let counts: Arc<[RelayCounts; 2]> = Arc::default();
    let mut moved = Transfer {
        outcome: Ok(0.0),
        elapsed: 0.0,
        relay: Default::default(),
        bottleneck: None,
        stdout: String::new(),
        stderr: Default::default(),
        rss_anon_kib: [0; 2],
    };
    moved.outcome = (|| {
        let bind = match place {
            Place::Namespaces(namespaces) => {
                shape(namespaces, link.rate_mbit)?;
                "10.202.0.2:0"
            }
            Place::Loopback => "127.0.0.1:0",
        };
        let bytes = std::fs::metadata(file)
            .map_err(|e| format!("the file: {e}"))?
            .len();
        let mut listener = place
            .command(binary, true)
            .args(["listen", "--relay", "disabled", "--bind", bind])
            .arg("--out")
            .arg(out)
            .arg("--serve")
            .arg(file.parent().ok_or("the file has no directory")?)
            .args(&link.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("listen does not start: {e}"))?;
        let listener_errors = all_of(listener.stderr.take());
        let result = across(
            binary,
            place,
            file,
            out,
            link,
            how,
            bytes,
            &counts,
            &mut listener,
            &mut moved,
        );
        listener.kill().ok();
        listener.wait().ok();
        moved.stderr[1] = listener_errors.join().unwrap_or_default();
        if let (Place::Namespaces(namespaces), Some(_)) = (place, link.rate_mbit) {
            moved.bottleneck = bottleneck_counts(namespaces);
        }
        match result {
            Err(reason) if reason.is_empty() => {
                Err(format!("listener: {}", gist(&moved.stderr[1])))
            }
            other => other,
        }
    })();
    moved.relay = [counts[0].get(), counts[1].get()];
    moved
}

/// The transfer itself, once the listener runs, filling in what `moved`
/// tells of the sending or pulling command: an empty error means "ask the
/// listener".
#[allow(clippy::too_many_arguments)]
fn across(
    binary: &Path,
    place: Place,
    file: &Path,
    out: &Path,
    link: &Link,
    how: How,
    bytes: u64,
    counts: &Arc<[RelayCounts; 2]>,
    listener: &mut Child,
    moved: &mut Transfer,
) -> Result<f64, String> {
    let ticket_line = first_line(listener.stdout.take(), Duration::from_secs(30));
    let real: EndpointTicket = ticket_line.trim().parse().map_err(|_| String::new())?;
    // Stops the relay, where there is one, however this function ends.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop;
    let ticket = match place {
        Place::Loopback => real,
        Place::Namespaces(_) => {
            let target = *real
                .endpoint_addr()
                .ip_addrs()
                .next()
                .ok_or("the listener's ticket has no address")?;
            let outer = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 201, 0, 1), 0))
                .map_err(|e| format!("relay socket: {e}"))?;
            let inner = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 202, 0, 1), 0))
                .map_err(|e| format!("relay socket: {e}"))?;
            let ticket = EndpointTicket::new(
                EndpointAddr::new(real.endpoint_addr().id)
                    .with_ip_addr(outer.local_addr().map_err(|e| e.to_string())?),
            );
            let stop = Arc::new(AtomicBool::new(false));
            _stop = Stop(stop.clone());
            relay(
                outer,
                inner,
                target,
                link.rtt / 2,
                link.loss,
                counts.clone(),
                stop,
            );
            ticket
        }
    };

    let mut command = place.command(binary, false);
    command.arg(match how {
        How::Send => "send",
        How::Pull => "pull",
    });
    command.args(["--relay", "disabled", "--quiet"]);
    if !link
        .sender_args
        .iter()
        .any(|arg| arg == "--timeout" || arg.starts_with("--timeout="))
    {
        command.args(["--timeout", "60"]);
    }
    command.args(&link.extra_args).args(&link.sender_args);
    match how {
        How::Send => command.arg(ticket.to_string()).arg(file),
        How::Pull => command.arg(ticket.to_string()).arg("--out").arg(out),
    };
    // Ten times what the file takes at the capped rate (or at 100 MB/s).
    let rate = link.rate_mbit.map_or(100e6, |mbit| mbit * 1e6 / 8.0);
    let deadline =
        Duration::from_secs_f64(bytes as f64 / rate * 10.0).max(Duration::from_secs(120));
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{how:?} does not start: {e}"))?;
    let (said, printed) = (all_of(child.stderr.take()), all_of(child.stdout.take()));
    let ids = [child.id(), listener.id()];
    let status = loop {
        for (peak, id) in moved.rss_anon_kib.iter_mut().zip(ids) {
            *peak = (*peak).max(rss_anon_kib(id));
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => break None,
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    moved.elapsed = seconds;
    if status.is_none() {
        child.kill().ok();
        child.wait().ok();
    }
    moved.stderr[0] = said.join().unwrap_or_default();
    moved.stdout = printed.join().unwrap_or_default();
    match status {
        None => Err(format!("no end after {} s, killed", deadline.as_secs())),
        Some(status) if !status.success() => Err(match gist(&moved.stderr[0]) {
            said if said.is_empty() => format!("{how:?}: {status}"),
            said => said,
        }),
        Some(_) if !same_contents(file, &out.join("w.safetensors")) => {
            Err(String::from("the copy differs from the file"))
        }
        Some(_) => Ok(seconds),
    }
}

/// The anonymous memory (RssAnon) process `id` holds, in KiB; 0 once it has
/// exited.
fn rss_anon_kib(id: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{id}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Caps what leaves each namespace at `rate_mbit` (or takes the cap off),
/// with a fresh qdisc whose counts are this transfer's alone.
///
/// The cap sits on each namespace's own way out, so the sender's socket sees
/// it first: it is a bottleneck that drops (like a router's full queue)
/// rather than one that pushes back, only because the socket's send buffer
/// holds more than tbf's queue. iroh asks for 7 MiB (the kernel allows 2 ×
/// `net.core.wmem_max`, 8 MiB here); a socket with the default 208 KiB was
/// made to wait by tbf, which then dropped nothing.
fn shape(namespaces: &Namespaces, rate_mbit: Option<f64>) -> Result<(), String> {
    for (namespace, device) in namespaces.inner_veths() {
        // Fails where there is no qdisc yet: nothing to take off.
        tc(namespace, &["qdisc", "del", "dev", &device, "root"]).ok();
        let Some(rate_mbit) = rate_mbit else { continue };
        let bytes_per_second = rate_mbit * 1e6 / 8.0;
        let burst = ((bytes_per_second * 0.002) as u64).max(MIN_BURST);
        tc(
            namespace,
            &[
                "qdisc",
                "add",
                "dev",
                &device,
                "root",
                "tbf",
                "rate",
                &format!("{}kbit", (rate_mbit * 1000.0).round() as u64),
                "burst",
                &burst.to_string(),
                "latency",
                &format!("{}ms", QUEUE.as_millis()),
            ],
        )?;
    }
    Ok(())
}

/// What tbf let through and dropped on each namespace's way out.
fn bottleneck_counts(namespaces: &Namespaces) -> Option<[Counts; 2]> {
    let mut both = [Counts::default(); 2];
    for ((namespace, device), counts) in namespaces.inner_veths().into_iter().zip(&mut both) {
        // " Sent 7781172 bytes 6266 pkt (dropped 605348, overlimits 624100 requeues 0)"
        let shown = tc(namespace, &["-s", "qdisc", "show", "dev", &device]).ok()?;
        let words: Vec<&str> = shown
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
            .filter(|word| !word.is_empty())
            .collect();
        let after = |key: &str| -> Option<u64> {
            let at = words.iter().position(|word| *word == key)?;
            words.get(at + 1)?.parse().ok()
        };
        counts.passed = words
            .iter()
            .position(|word| *word == "pkt")
            .and_then(|at| words[at - 1].parse().ok())?;
        counts.dropped = after("dropped")?;
    }
    Some(both)
}

/// `tc -n NAMESPACE ARGS`: its stdout, or its stderr as the error.
fn tc(namespace: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new("tc")
        .args(["-n", namespace])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("tc: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The first line `from` writes, or "" if none comes within `wait`; the rest
/// is read and thrown away, so the writer never meets a closed pipe.
fn first_line(from: Option<impl Read + Send + 'static>, wait: Duration) -> String {
    let Some(from) = from else {
        return String::new();
    };
    let (line, first) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(from).lines();
        line.send(lines.next().and_then(Result::ok).unwrap_or_default())
            .ok();
        lines.for_each(drop);
    });
    first.recv_timeout(wait).unwrap_or_default()
}

/// All `from` writes before it closes, read as it comes (so the writer never
/// blocks on a full pipe).
fn all_of(from: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut from) = from {
            from.read_to_end(&mut bytes).ok();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// What a command's stderr says, in a line: its last line that starts with
/// "error" (clap follows its own with a hint to try `--help`), or else its
/// last non-blank line.
fn gist(stderr: &str) -> String {
    let mut lines = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty());
    lines
        .clone()
        .rfind(|line| line.starts_with("error"))
        .or_else(|| lines.next_back())
        .unwrap_or_default()
        .to_string()
}

/// Whether two files hold the same bytes (false if either cannot be read).
fn same_contents(a: &Path, b: &Path) -> bool {
    let (Ok(a), Ok(b)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    if a.metadata().map(|m| m.len()).ok() != b.metadata().map(|m| m.len()).ok() {
        return false;
    }
    let (mut a, mut b) = (BufReader::new(a), BufReader::new(b));
    let (mut left, mut right) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let Ok(n) = a.read(&mut left) else {
            return false;
        };
        if n == 0 {
            return true;
        }
        if b.read_exact(&mut right[..n]).is_err() || left[..n] != right[..n] {
            return false;
        }
    }
}

/// The relay's counts in one direction, on a cache line of their own: each
/// direction's thread counts every datagram it reads.
#[derive(Default)]
#[repr(align(64))]
struct RelayCounts {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl RelayCounts {
    fn get(&self) -> Counts {
        Counts {
            passed: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Forwards datagrams between the sender (whoever writes to `outer`) and the
/// listener at `target`, each after `delay`, until `stop` is set, dropping a
/// `loss` share of them in each direction, counted in `counts` (toward the
/// listener, toward the sender). Plain threads and blocking sockets: an async
/// relay tops out below what it must carry.
fn relay(
    outer: UdpSocket,
    inner: UdpSocket,
    target: SocketAddr,
    delay: Duration,
    loss: f64,
    counts: Arc<[RelayCounts; 2]>,
    stop: Arc<AtomicBool>,
) {
    let sender: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    for socket in [&outer, &inner] {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // The default buffer overflowed under a window's burst, and the losses
        // it caused, not the delay, set the pace.
        let bytes: libc::c_int = 32 << 20;
        // SAFETY: setsockopt on an open socket with a pointer to a live c_int.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    // A datagram is dropped when a 53-bit draw falls below this.
    let threshold = (loss.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64;
    let (outer, inner) = (Arc::new(outer), Arc::new(inner));
    // Datagrams from the sender go out of `inner` to the listener, and back.
    for toward_listener in [true, false] {
        let (from, to) = if toward_listener {
            (outer.clone(), inner.clone())
        } else {
            (inner.clone(), outer.clone())
        };
        let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>();
        let (learned, stop, counts) = (sender.clone(), stop.clone(), counts.clone());
        std::thread::spawn(move || {
            let counts = &counts[usize::from(!toward_listener)];
            // xorshift64, its own fixed seed in each direction.
            let mut state = if toward_listener {
                0x2545_f491_4f6c_dd1d_u64
            } else {
                0x9e37_79b9_7f4a_7c15_u64
            };
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = from.recv_from(&mut buf) {
                    if toward_listener {
                        *learned.lock().unwrap() = Some(peer);
                    }
                    if threshold > 0 {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        if state >> 11 < threshold {
                            counts.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    counts.forwarded.fetch_add(1, Ordering::Relaxed);
                    queue.send((Instant::now() + delay, buf[..n].to_vec())).ok();
                }
            }
        });
        let sender = sender.clone();
        std::thread::spawn(move || {
            while let Ok((at, data)) = due.recv() {
                // A sleep overshoots by tens of microseconds: one per datagram
                // held the relay itself to ~20 MB/s. Datagrams due within the
                // slack go at once, a fraction of a millisecond early.
                let now = Instant::now();
                if at > now + SLACK {
                    std::thread::sleep(at - now);
                }
                let peer = if toward_listener {
                    Some(target)
                } else {
                    *sender.lock().unwrap()
                };
                if let Some(peer) = peer {
                    to.send_to(&data, peer).ok();
                }
            }
        });
    }
}
