//! `send` and `pull` across a link with a round-trip time, as between two data
//! centres.
//!
//!     cargo bench --bench wan              # 128 MiB at RTT 0, 20, 50 and 100 ms
//!     cargo bench --bench wan -- 50 200    # other RTTs, in ms
//!     TENSOR_IROH_BIN=path/to/tensor-iroh cargo bench --bench wan   # another build
//!
//! Needs root and `ip netns`. The sender and the listener run in two network
//! namespaces joined only by a relay in this process, which holds every
//! datagram for half the RTT each way (tc netem is not available everywhere).
//! Each line gives the speed and its ratio to RTT 0 through the same relay,
//! measured in the same run.

#[path = "../tests/common/netns.rs"]
mod netns;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::EndpointAddr;
use iroh_tickets::endpoint::EndpointTicket;

const FILE_BYTES: usize = 128 << 20;
/// How early the relay may let a datagram go rather than sleep for it.
const SLACK: Duration = Duration::from_micros(500);

fn main() {
    let rtts: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let rtts = if rtts.is_empty() {
        vec![0, 20, 50, 100]
    } else {
        rtts
    };
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("wan: skipped, network namespaces need root");
        return;
    }
    let Some(namespaces) = netns::Namespaces::create(std::process::id() % 100_000) else {
        eprintln!("wan: skipped, `ip netns` is not available here");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let served = dir.path().join("served");
    std::fs::create_dir(&served).expect("a served directory");
    let file = served.join("w.safetensors");
    write_safetensors(&file, FILE_BYTES);
    let mut baseline = None;
    for rtt in rtts {
        let mut rates = Vec::new();
        for how in [How::Send, How::Pull] {
            let seconds = transfer_through_delay(
                &namespaces,
                &file,
                &dir.path().join(format!("{how:?}-{rtt}")),
                Duration::from_millis(rtt),
                how,
            );
            rates.push(FILE_BYTES as f64 / 1e6 / seconds);
        }
        let ratio = match baseline {
            None if rtt == 0 => {
                baseline = Some(rates[0]);
                String::from("send baseline")
            }
            None => String::from("no RTT 0 baseline in this run"),
            Some(base) => format!("send {:.2}x of RTT 0", rates[0] / base),
        };
        println!(
            "rtt {rtt:>4} ms: {} MiB, send {:.1} MB/s, pull {:.1} MB/s ({ratio})",
            FILE_BYTES >> 20,
            rates[0],
            rates[1]
        );
    }
}

/// The build under test: this one, or the one `TENSOR_IROH_BIN` names, to
/// compare two builds on the same links.
fn binary() -> PathBuf {
    std::env::var_os("TENSOR_IROH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tensor-iroh")))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    Send,
    Pull,
}

/// Seconds for one `send` of `file` to a listener, or one `pull` of it from a
/// listener serving it, through a relay that delays each datagram by half of
/// `rtt`; `out` is where the copy lands.
fn transfer_through_delay(
    namespaces: &netns::Namespaces,
    file: &Path,
    out: &Path,
    rtt: Duration,
    how: How,
) -> f64 {
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &namespaces.listener])
        .arg(binary())
        .args(["listen", "--relay", "disabled", "--bind", "10.202.0.2:0"])
        .arg("--out")
        .arg(out)
        .arg("--serve")
        .arg(file.parent().expect("the file's directory"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("listen starts");
    let mut ticket_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.stdout.take().expect("stdout")),
        &mut ticket_line,
    )
    .expect("a ticket");
    let real: EndpointTicket = ticket_line.trim().parse().expect("a valid ticket");
    let target = *real
        .endpoint_addr()
        .ip_addrs()
        .next()
        .expect("the listener has an address");
    let outer =
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 201, 0, 1), 0)).expect("relay socket");
    let inner =
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 202, 0, 1), 0)).expect("relay socket");
    let ticket = EndpointTicket::new(
        EndpointAddr::new(real.endpoint_addr().id).with_ip_addr(outer.local_addr().unwrap()),
    );
    let stop = Arc::new(AtomicBool::new(false));
    delay_relay(outer, inner, target, rtt / 2, stop.clone());

    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &namespaces.sender])
        .arg(binary());
    match how {
        How::Send => command
            .args(["send", "--relay", "disabled", "--quiet", "--timeout", "60"])
            .arg(ticket.to_string())
            .arg(file),
        How::Pull => command
            .args(["pull", "--relay", "disabled", "--quiet", "--timeout", "60"])
            .arg(ticket.to_string())
            .arg("--out")
            .arg(out),
    };
    let started = Instant::now();
    let moved = command.status().expect("the transfer runs");
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    listener.kill().ok();
    listener.wait().ok();
    assert!(moved.success(), "{how:?} at RTT {rtt:?} failed");
    assert!(
        std::fs::read(out.join("w.safetensors")).ok() == std::fs::read(file).ok(),
        "the file arrived changed at RTT {rtt:?}"
    );
    seconds
}

/// Forwards datagrams between the sender (whoever writes to `outer`) and the
/// listener at `target`, each after `delay`, until `stop` is set. Plain threads
/// and blocking sockets: an async relay tops out below what it must carry.
fn delay_relay(
    outer: UdpSocket,
    inner: UdpSocket,
    target: SocketAddr,
    delay: Duration,
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
    let (outer, inner) = (Arc::new(outer), Arc::new(inner));
    // Datagrams from the sender go out of `inner` to the listener, and back.
    for toward_listener in [true, false] {
        let (from, to) = if toward_listener {
            (outer.clone(), inner.clone())
        } else {
            (inner.clone(), outer.clone())
        };
        let (queue, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        let (learned, stop) = (sender.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = from.recv_from(&mut buf) {
                    if toward_listener {
                        *learned.lock().unwrap() = Some(peer);
                    }
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

/// A safetensors file of one U8 tensor of `len` bytes that do not compress.
fn write_safetensors(path: &Path, len: usize) {
    let mut header =
        format!(r#"{{"w":{{"dtype":"U8","shape":[{len}],"data_offsets":[0,{len}]}}}}"#)
            .into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    bytes.extend((0..len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    std::fs::write(path, bytes).expect("the test file is written");
}
