//! Pulls from several sources: a listener's chunk hashes and chunk sets, and
//! `pull T1 T2` fetching one file from two listeners at once, also when one
//! of them is killed midway.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tensor_iroh::protocol::client;
use tensor_iroh::protocol::coding::Compress;
use tensor_iroh::protocol::endpoint::parse_ticket;
use tensor_iroh::protocol::errors::ErrorCode;
use tensor_iroh::protocol::pool::Pool;
use tensor_iroh::protocol::sources;
use tensor_iroh::protocol::stream::Frame;
use tensor_iroh::protocol::transfer::Progress;
use tensor_iroh::protocol::wire::{CHUNK_SIZE, Message, Offer, hash_hex};
use tensor_iroh::store::Store;

/// The pool of a hand-written peer (tests/common/peer.rs), which the
/// requests below use for any listener, not only `ticket`'s.
async fn pool(ticket: &str) -> Pool {
    let peer =
        peer::LibraryPeer::connect(iroh::SecretKey::generate(), ticket, Duration::from_secs(20))
            .await;
    peer.pool
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_gives_a_files_chunk_hashes_and_any_of_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = safetensors_file(
        &dir.path().join("w.safetensors"),
        2 * CHUNK_SIZE as usize + 100,
        7,
    );
    let bytes = std::fs::read(&path).unwrap();
    let listener = Listener::start(&["--serve", path.to_str().unwrap()]);
    let pool = pool(&listener.ticket).await;
    let addr = parse_ticket(&listener.ticket).unwrap();
    let size = bytes.len() as u64;

    let (offer, list) = client::hash_list(&pool, &addr, "w.safetensors", size)
        .await
        .unwrap();
    assert_eq!(list.file, *blake3::hash(&bytes).as_bytes());
    assert_eq!(list.chunks.len(), 3);
    assert_eq!((offer.name.as_str(), offer.size), ("w.safetensors", size));
    // Kept: asked again, the same list.
    let (_, again) = client::hash_list(&pool, &addr, "w.safetensors", size)
        .await
        .unwrap();
    assert_eq!(again, list);

    // Chunks in the order asked, each with its data and hash, then the end.
    let (mut writer, mut reader) = pool.open(&addr).await.unwrap();
    writer
        .message(&Message::FetchChunks {
            file: "w.safetensors".into(),
            hash: hash_hex(&list.file),
            chunks: vec![2, 0],
            compress: Compress::Off,
        })
        .await
        .unwrap();
    writer.finish();
    for index in [2u32, 0] {
        let Some(Frame::Chunk {
            index: got,
            len,
            coded: false,
        }) = reader.next().await.unwrap()
        else {
            panic!("expected chunk {index}");
        };
        assert_eq!(got, index);
        let start = index as usize * CHUNK_SIZE as usize;
        let mut data = Vec::new();
        reader.exact_into(&mut data, len as usize).await.unwrap();
        assert!(data == bytes[start..start + len as usize], "chunk {index}");
        assert_eq!(reader.hash().await.unwrap(), list.chunks[index as usize]);
    }
    assert!(reader.next().await.unwrap().is_none());

    // Rewritten, the file is not the one of that hash any more.
    safetensors_file(&path, 2 * CHUNK_SIZE as usize + 100, 8);
    let (mut writer, mut reader) = pool.open(&addr).await.unwrap();
    writer
        .message(&Message::FetchChunks {
            file: "w.safetensors".into(),
            hash: hash_hex(&list.file),
            chunks: vec![1],
            compress: Compress::Off,
        })
        .await
        .unwrap();
    writer.finish();
    match reader.message().await.unwrap() {
        Message::Refused { code, reason } => {
            assert_eq!(code, ErrorCode::SourceChanged, "{reason}");
            assert!(reason.contains("changed on disk"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_file_from_two_listeners_arrives_whole_with_a_share_from_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = safetensors_file(
        &dir.path().join("w.safetensors"),
        12 * CHUNK_SIZE as usize,
        3,
    );
    let bytes = std::fs::read(&path).unwrap();
    let a = Listener::start(&["--serve", path.to_str().unwrap()]);
    let b = Listener::start(&["--serve", path.to_str().unwrap()]);
    let pool = pool(&a.ticket).await;
    let sources = [
        parse_ticket(&a.ticket).unwrap(),
        parse_ticket(&b.ticket).unwrap(),
    ];
    let out = dir.path().join("out");
    let store = Store::open(&out, false).unwrap();
    let fetched = sources::fetch_from_all(
        &pool,
        &sources,
        "w.safetensors",
        bytes.len() as u64,
        Compress::Off,
        Duration::from_secs(20),
        &Progress::default(),
        async |offer: &Offer| {
            store
                .accept(offer, Arc::new(|| Box::pin(async { true })))
                .await
        },
    )
    .await
    .unwrap();
    assert!(std::fs::read(out.join("w.safetensors")).unwrap() == bytes);
    assert_eq!(
        fetched.received.as_ref().unwrap().hash,
        blake3::hash(&bytes).to_hex().to_string()
    );
    let shares: Vec<u64> = fetched.sources.iter().map(|s| s.bytes).collect();
    assert_eq!(shares.iter().sum::<u64>(), bytes.len() as u64, "{shares:?}");
    assert!(shares.iter().all(|&share| share > 0), "{shares:?}");
    pool.close().await;
}

/// Waits for the listener's next `served` JSON line.
fn next_served(listener: &Listener) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(60);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(line) = listener.lines.recv_timeout(left) else {
            break;
        };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "served" {
            return event;
        }
    }
    panic!("no served event from the listener: {}", listener.stderr());
}

/// The `source` events of a pull's JSON, by peer.
fn source_events(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events.iter().filter(|e| e["event"] == "source").collect()
}

fn endpoint_id(ticket: &str) -> String {
    parse_ticket(ticket).unwrap().id.to_string()
}

#[test]
fn pull_with_two_tickets_takes_a_file_both_serve_from_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = safetensors_file(
        &dir.path().join("w.safetensors"),
        12 * CHUNK_SIZE as usize,
        5,
    );
    let serve = path.to_str().unwrap();
    let a = Listener::start(&["--serve", serve, "--json"]);
    let b = Listener::start(&["--serve", serve, "--json"]);
    let out = dir.path().join("out");
    let pulled = run(&[
        "pull",
        "--relay",
        "disabled",
        &a.ticket,
        &b.ticket,
        "w*",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    assert!(std::fs::read(out.join("w.safetensors")).unwrap() == std::fs::read(&path).unwrap());

    let events = json_lines(&pulled);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["source", "source", "file", "summary"], "{events:?}");
    let sources = source_events(&events);
    let peers: Vec<&str> = sources
        .iter()
        .map(|s| s["peer"].as_str().unwrap())
        .collect();
    assert_eq!(peers, [endpoint_id(&a.ticket), endpoint_id(&b.ticket)]);
    for source in &sources {
        assert!(source["error"].is_null(), "{source}");
        assert!(source["bytes"].as_u64().unwrap() > 0, "{source}");
    }
    for listener in [&a, &b] {
        assert_eq!(next_served(listener)["name"], "w.safetensors");
    }

    // One listener's list or stream: several tickets are a usage error.
    for flag in ["--list", "--stdout"] {
        let refused = run(&["pull", &a.ticket, &b.ticket, flag]);
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
        let expected = format!("{flag} takes one ticket");
        assert!(
            text(&refused.stderr).contains(&expected),
            "{}",
            text(&refused.stderr)
        );
    }
}

#[test]
fn a_source_killed_midway_leaves_its_share_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = safetensors_file(&dir.path().join("w.safetensors"), 200 << 20, 9);
    let serve = path.to_str().unwrap();
    let a = Listener::start(&["--serve", serve, "--json"]);
    let b = Listener::start(&["--serve", serve, "--json"]);
    let out = dir.path().join("out");
    let mut puller = Command::new(bin())
        .args(["pull", "--relay", "disabled", "--timeout", "5", "--json"])
        .args([&a.ticket, &b.ticket, "--out", out.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    next_served(&a);
    signal(a.pid(), libc::SIGKILL);
    let status = wait_with_deadline(&mut puller, Duration::from_secs(120));
    let Some(status) = status else {
        puller.kill().ok();
        panic!("the pull did not finish");
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    puller
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    puller
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    assert!(status.success(), "{}", text(&stderr));
    assert!(std::fs::read(out.join("w.safetensors")).unwrap() == std::fs::read(&path).unwrap());

    let output = std::process::Output {
        status,
        stdout,
        stderr,
    };
    let events = json_lines(&output);
    let sources = source_events(&events);
    let killed = sources
        .iter()
        .find(|s| s["peer"] == endpoint_id(&a.ticket))
        .expect("a source event for the killed listener");
    assert!(killed["error"].is_string(), "{killed}");
    let other = sources
        .iter()
        .find(|s| s["peer"] == endpoint_id(&b.ticket))
        .expect("a source event for the other listener");
    assert!(other["error"].is_null(), "{other}");
    assert!(
        other["bytes"].as_u64().unwrap() > killed["bytes"].as_u64().unwrap(),
        "{sources:?}"
    );
}
