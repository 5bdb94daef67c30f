//! A large file across a link with a 30 ms round trip, where a file travels on
//! eight streams rather than four: sent, and pulled back, byte-identical.

mod common;

use std::time::Duration;

use common::long_link::{How, transfer_through_delay};
use common::netns::Namespaces;
use common::*;

#[test]
fn a_large_file_crosses_a_long_link_on_many_streams_sent_and_pulled() {
    let Some(namespaces) = Namespaces::for_test() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    // Twelve chunks of 8 MiB, and a short last one: every one of eight
    // streams carries at least one.
    let data = noise((12 << 23) - 12345, 11);
    let file = served.join("w.safetensors");
    std::fs::write(
        &file,
        safetensors_bytes(&[("w", "U8", &[data.len() as u64], &data)], None),
    )
    .unwrap();
    for how in [How::Send, How::Pull] {
        // Panics unless the copy under `out` is byte-identical.
        transfer_through_delay(
            std::path::Path::new(bin()),
            &namespaces,
            &file,
            &dir.path().join(format!("{how:?}")),
            Duration::from_millis(30),
            how,
        );
    }
}
