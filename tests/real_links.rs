//! Links as users have them: a slow uplink, random loss on a long path. The
//! sender and the listener live in two network namespaces joined by a relay
//! that delays and drops datagrams, with each namespace's way out capped by
//! tc tbf. How fast is for `cargo bench --bench wan`; these check that such
//! links move files intact and never look like a dead peer.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::long_link::{How, Link, transfer};
use common::netns::Namespaces;
use common::*;

/// `w.safetensors`, the name the link harness serves and compares, in a
/// directory of its own for the listener to serve.
fn served_file(dir: &Path, len: usize, seed: u64) -> PathBuf {
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    safetensors_file(&served.join("w.safetensors"), len, seed)
}

/// A 1 MB/s uplink takes seconds for each 1 MiB piece a stream writes, and a
/// stream of a striped file waits behind its siblings for longer still: with
/// a 3 s timeout on each write, this send failed. The connection keeps
/// moving, so it is no stall.
#[test]
#[ignore = "needs root: network namespaces and tc"]
fn a_slow_uplink_is_never_taken_for_a_dead_peer() {
    let namespaces = Namespaces::required();
    let dir = tempfile::tempdir().unwrap();
    let file = served_file(dir.path(), (3 << 23) - 777, 21);
    let link = Link {
        rate_mbit: Some(8.0),
        rtt: Duration::from_millis(20),
        loss: 0.0,
        extra_args: Vec::new(),
        sender_args: vec!["--timeout".into(), "3".into()],
    };
    let moved = transfer(
        Path::new(bin()),
        &namespaces,
        &file,
        &dir.path().join("out"),
        &link,
        How::Send,
    );
    let seconds = moved
        .outcome
        .unwrap_or_else(|reason| panic!("the send over a slow uplink failed: {reason}"));
    assert!(
        seconds > 6.0,
        "25 MB at 1 MB/s took {seconds:.1} s: the cap was not in force"
    );
}

/// 1 % of datagrams lost each way on a 50 ms path: the file arrives intact,
/// sent and pulled, with the default congestion controller.
#[test]
#[ignore = "needs root: network namespaces and tc"]
fn a_lossy_long_link_moves_files_intact_both_ways() {
    let namespaces = Namespaces::required();
    let dir = tempfile::tempdir().unwrap();
    let file = served_file(dir.path(), 3 << 23, 22);
    let link = Link {
        rate_mbit: Some(100.0),
        rtt: Duration::from_millis(50),
        loss: 0.01,
        extra_args: Vec::new(),
        sender_args: Vec::new(),
    };
    for how in [How::Send, How::Pull] {
        let moved = transfer(
            Path::new(bin()),
            &namespaces,
            &file,
            &dir.path().join(format!("{how:?}")),
            &link,
            how,
        );
        if let Err(reason) = &moved.outcome {
            panic!("{how:?} over a lossy 50 ms link failed: {reason}");
        }
        let dropped = moved.relay[0].dropped_percent();
        assert!(
            (0.5..2.0).contains(&dropped),
            "the relay dropped {dropped:.2} % toward the listener, not about 1 %"
        );
    }
}
