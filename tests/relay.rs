//! A transfer through a real iroh relay server running inside the test, with a
//! ticket that holds only the relay's URL: what a user behind NATs, with their
//! own relay, relies on.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use iroh::{EndpointAddr, RelayUrl};
use iroh_relay::server::{RelayConfig, Server, ServerConfig};
use iroh_tickets::endpoint::EndpointTicket;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tensor-iroh")
}

/// A safetensors file of one U8 tensor holding `data`.
fn safetensors_file(path: &std::path::Path, data: &[u8]) {
    let header = format!(
        r#"{{"t":{{"dtype":"U8","shape":[{}],"data_offsets":[0,{}]}}}}"#,
        data.len(),
        data.len()
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_through_an_in_process_relay_with_a_relay_only_ticket() {
    let mut config = ServerConfig::default();
    config.relay = Some(RelayConfig::new(([127, 0, 0, 1], 0)));
    let server = Server::spawn(config).await.expect("relay server starts");
    let relay_url = format!(
        "http://{}",
        server.http_addr().expect("relay has an HTTP address")
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = dir.path().join("w.safetensors");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    safetensors_file(&file, &data);

    let mut listener = KillOnDrop(
        Command::new(bin())
            .args(["listen", "--json", "--once", "--relay", &relay_url, "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut first_line = String::new();
    BufReader::new(listener.0.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let listening: serde_json::Value = serde_json::from_str(&first_line).unwrap();
    let ticket = EndpointTicket::from_str(listening["ticket"].as_str().unwrap()).unwrap();
    let relay = RelayUrl::from_str(&relay_url).unwrap();
    assert!(
        ticket.endpoint_addr().relay_urls().any(|url| *url == relay),
        "the listener's ticket names its relay"
    );

    let relay_only =
        EndpointTicket::new(EndpointAddr::new(ticket.endpoint_addr().id).with_relay_url(relay));
    let send = tokio::task::spawn_blocking({
        let (relay_url, ticket, file) = (relay_url.clone(), relay_only.to_string(), file.clone());
        move || {
            Command::new(bin())
                .args(["send", "--timeout", "30", "--relay", &relay_url, &ticket])
                .arg(&file)
                .output()
                .unwrap()
        }
    });
    let sent = tokio::time::timeout(Duration::from_secs(60), send)
        .await
        .expect("send finishes")
        .unwrap();
    assert!(
        sent.status.success(),
        "send through the relay failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("w.safetensors")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(status) = listener.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a --once listener exits after the send");
    assert!(status.success());
    server.shutdown().await.ok();
}
