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

#[path = "../tests/common/long_link.rs"]
mod long_link;
#[path = "../tests/common/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::time::Duration;

use long_link::{How, transfer_through_delay};

const FILE_BYTES: usize = 128 << 20;

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
    let Some(namespaces) = netns::Namespaces::for_test() else {
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
                &binary(),
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
