//! A long link: a relay between the two namespaces of [`Namespaces`] that
//! holds every datagram for half a round-trip time each way (tc netem is not
//! available everywhere), and one send or pull across it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::EndpointAddr;
use iroh_tickets::endpoint::EndpointTicket;

use super::netns::Namespaces;

/// How early the relay may let a datagram go rather than sleep for it.
const SLACK: Duration = Duration::from_micros(500);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum How {
    Send,
    Pull,
}

/// Seconds for one `send` of `file` (named `w.safetensors`) by `binary` to a
/// listener, or one `pull` of it from a listener serving it, through a relay
/// that delays each datagram by half of `rtt`; `out` is where the copy lands.
/// Panics if the transfer fails or the copy differs.
pub fn transfer_through_delay(
    binary: &Path,
    namespaces: &Namespaces,
    file: &Path,
    out: &Path,
    rtt: Duration,
    how: How,
) -> f64 {
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &namespaces.listener])
        .arg(binary)
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
        .arg(binary);
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
