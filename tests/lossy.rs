//! A transfer across a link that drops, duplicates, reorders and delays
//! datagrams. Sender and listener live in two network namespaces whose only
//! way to each other is a user-space UDP relay in this test, so iroh cannot
//! find a cleaner path around it.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::netns::Namespaces;
use common::*;
use iroh::EndpointAddr;
use iroh_tickets::endpoint::EndpointTicket;
use tokio::net::UdpSocket;

#[derive(Default)]
struct Faults {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

/// Forwards datagrams between the sender (whoever writes to `outer`) and the
/// listener at `target`, spoiling about 3% of them and reordering and
/// duplicating a few more.
async fn run_faulty_relay(
    outer: UdpSocket,
    inner: UdpSocket,
    target: SocketAddr,
    faults: Arc<Faults>,
) {
    let mut sender: Option<SocketAddr> = None;
    let mut held: Option<(Vec<u8>, bool)> = None;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut roll = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 1000
    };
    let (mut from_sender, mut from_listener) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        let (data, toward_listener) = tokio::select! {
            Ok((n, from)) = outer.recv_from(&mut from_sender) => {
                sender = Some(from);
                (from_sender[..n].to_vec(), true)
            }
            Ok((n, _)) = inner.recv_from(&mut from_listener) => (from_listener[..n].to_vec(), false),
        };
        let dice = roll();
        let send = |data: &[u8], toward_listener: bool| {
            let (socket, to) = if toward_listener {
                (&inner, Some(target))
            } else {
                (&outer, sender)
            };
            if let Some(to) = to {
                socket.try_send_to(data, to).ok();
            }
        };
        if dice < 30 {
            faults.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if dice < 45 && held.is_none() {
            faults.reordered.fetch_add(1, Ordering::Relaxed);
            held = Some((data, toward_listener));
            continue;
        }
        send(&data, toward_listener);
        faults.forwarded.fetch_add(1, Ordering::Relaxed);
        if dice < 60 {
            faults.duplicated.fetch_add(1, Ordering::Relaxed);
            send(&data, toward_listener);
        }
        if let Some((late, direction)) = held.take() {
            if dice % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            send(&late, direction);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: network namespaces"]
async fn files_arrive_intact_over_a_lossy_reordering_link() {
    let namespaces = Namespaces::required();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = noise(32 << 20, 3);
    let file = dir.path().join("w.safetensors");
    std::fs::write(
        &file,
        safetensors_bytes(&[("w", "U8", &[data.len() as u64], &data)], None),
    )
    .unwrap();

    let mut listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &namespaces.listener,
            bin(),
            "listen",
            "--relay",
            "disabled",
            "--bind",
            "10.202.0.2:0",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ticket_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.stdout.take().unwrap()),
        &mut ticket_line,
    )
    .unwrap();
    let real: EndpointTicket = ticket_line.trim().parse().unwrap();
    let target = *real
        .endpoint_addr()
        .ip_addrs()
        .next()
        .expect("the listener has an address");

    let outer = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 201, 0, 1), 0))
        .await
        .unwrap();
    let inner = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 202, 0, 1), 0))
        .await
        .unwrap();
    let relay_addr = outer.local_addr().unwrap();
    let faults = Arc::new(Faults::default());
    let relay = tokio::spawn(run_faulty_relay(outer, inner, target, faults.clone()));
    let through_relay =
        EndpointTicket::new(EndpointAddr::new(real.endpoint_addr().id).with_ip_addr(relay_addr));

    let sender_ns = namespaces.sender.clone();
    let (ticket, path) = (through_relay.to_string(), file.clone());
    let sent = tokio::task::spawn_blocking(move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &sender_ns,
                bin(),
                "send",
                "--relay",
                "disabled",
                "--timeout",
                "60",
                &ticket,
            ])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    relay.abort();
    listener.kill().ok();
    listener.wait().ok();
    assert!(
        sent.status.success(),
        "send over the lossy link failed: {}",
        text(&sent.stderr)
    );
    assert!(std::fs::read(out.join("w.safetensors")).unwrap() == std::fs::read(&file).unwrap());
    let (forwarded, dropped) = (
        faults.forwarded.load(Ordering::Relaxed),
        faults.dropped.load(Ordering::Relaxed),
    );
    assert!(
        forwarded > 20_000,
        "the data crossed the relay ({forwarded} datagrams)"
    );
    assert!(
        dropped * 100 >= forwarded * 2,
        "about 3% were dropped ({dropped} of {forwarded})"
    );
    assert!(
        faults.duplicated.load(Ordering::Relaxed) > 0
            && faults.reordered.load(Ordering::Relaxed) > 0
    );
}
