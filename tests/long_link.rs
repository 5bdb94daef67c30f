//! A large file across a link with a 30 ms round trip, where a file travels on
//! eight streams rather than four: sent, and pulled back, byte-identical.

mod common;

use std::time::Duration;

use common::long_link::{How, Link, transfer};
use common::netns::Namespaces;
use common::*;

#[test]
#[ignore = "needs root: network namespaces"]
fn a_large_file_crosses_a_long_link_on_many_streams_sent_and_pulled() {
    let namespaces = Namespaces::required();
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    // Twelve chunks of 8 MiB, and a short last one: every one of eight
    // streams carries at least one.
    let file = safetensors_file(&served.join("w.safetensors"), (12 << 23) - 12345, 11);
    let link = Link::delay(Duration::from_millis(30));
    for how in [How::Send, How::Pull] {
        // Ok only if the copy under `out` is byte-identical.
        let moved = transfer(
            std::path::Path::new(bin()),
            &namespaces,
            &file,
            &dir.path().join(format!("{how:?}")),
            &link,
            how,
        );
        if let Err(reason) = &moved.outcome {
            panic!("{how:?} at RTT 30 ms failed: {reason}");
        }
        assert!(
            moved
                .relay
                .iter()
                .all(|counts| counts.dropped == 0 && counts.passed > 0),
            "a lossless relay dropped or carried nothing: {:?}",
            moved.relay
        );
    }
}
