//! A listener of another protocol version, or of another protocol: the sender
//! must say which instead of failing with a bare handshake error.

use std::process::Command;
use std::time::Duration;

use iroh::endpoint::presets;
use iroh::{Endpoint, RelayMode};
use iroh_tickets::endpoint::EndpointTicket;
use tensor_iroh::protocol::liveness::Liveness;
use tensor_iroh::protocol::stream::{FrameReader, FrameWriter};
use tensor_iroh::protocol::wire::Message;
use tensor_iroh::protocol::{HELLO_ALPN, wire::PROTOCOL_VERSION};

const FUTURE_VERSION: u32 = PROTOCOL_VERSION + 1;

/// Accepts connections like a listener of `FUTURE_VERSION` would: it does not
/// speak our ALPN, only the version-neutral one, and answers hello with its version.
async fn future_listener() -> Endpoint {
    let future_alpn = format!("tensor-iroh/{FUTURE_VERSION}").into_bytes();
    let endpoint = Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .alpns(vec![future_alpn, HELLO_ALPN.to_vec()])
        .bind()
        .await
        .unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let Ok(connection) = incoming.await else {
                continue;
            };
            tokio::spawn(async move {
                let liveness = Liveness::new(connection.clone(), Duration::from_secs(10));
                while let Ok((send, recv)) = connection.accept_bi().await {
                    let mut writer = FrameWriter::new(send, liveness.clone());
                    let mut reader = FrameReader::new(recv, liveness.clone());
                    if let Ok(Message::Hello { .. }) = reader.message().await {
                        writer
                            .message(&Message::Hello {
                                version: FUTURE_VERSION,
                            })
                            .await
                            .ok();
                        writer.finish_and_flush().await;
                    }
                }
            });
        }
    });
    endpoint
}

/// A small valid `.npy` file in `dir`.
fn tiny_npy(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("x.npy");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(&[0; 8]);
    std::fs::write(&file, npy).unwrap();
    file
}

/// What `send` of a small file to the endpoint at `ticket` prints on stderr,
/// after checking it failed.
async fn failed_send(ticket: String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_npy(dir.path());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tensor-iroh"))
            .args(["send", "--relay", "disabled", "--timeout", "10", &ticket])
            .arg(&file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_of_another_version_is_named_with_both_versions() {
    let listener = future_listener().await;
    let stderr = failed_send(EndpointTicket::new(listener.addr()).to_string()).await;
    assert!(
        stderr.contains(&format!("protocol {FUTURE_VERSION}"))
            && stderr.contains(&format!("protocol {PROTOCOL_VERSION}")),
        "the error names both versions: {stderr}"
    );
    listener.close().await;
}

/// An iroh endpoint that speaks some other protocol altogether: its TLS
/// handshake finds no ALPN in common with ours.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_of_another_protocol_is_named_as_such() {
    let stranger = Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .alpns(vec![b"someone-else/1".to_vec()])
        .bind()
        .await
        .unwrap();
    let accepting = stranger.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            incoming.await.ok();
        }
    });
    let stderr = failed_send(EndpointTicket::new(stranger.addr()).to_string()).await;
    assert!(
        stderr.contains("does not speak the tensor-iroh protocol"),
        "{stderr}"
    );
    stranger.close().await;
}
