//! Interrupted transfers and hostile peers: a killed sender, a stopped
//! listener, a full disk and malformed frames never leave a file that looks
//! complete, and a rerun moves only what is missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tensor_iroh::protocol::endpoint::{self, EndpointOptions, Relay, parse_ticket};
use tensor_iroh::protocol::pool::Pool;
use tensor_iroh::protocol::wire::{Message, Offer, chunk_header};

const BIG: usize = 200 << 20;

fn big_file(dir: &Path) -> PathBuf {
    let path = dir.join("big.safetensors");
    let data = noise(BIG, 42);
    std::fs::write(
        &path,
        safetensors_bytes(&[("w", "U8", &[data.len() as u64], &data)], None),
    )
    .unwrap();
    path
}

/// Checked chunks the listener recorded for a file being received into `out`.
fn recorded_chunks(out: &Path) -> usize {
    files_below(out)
        .iter()
        .filter(|f| f.to_string_lossy().ends_with(".tensor-iroh-chunks"))
        .map(|f| {
            std::fs::read_to_string(out.join(f))
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}

fn spawn_send(ticket: &str, file: &Path, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(bin())
        .args(["send", "--relay", "disabled", ticket])
        .arg(file)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn summary(output: &std::process::Output) -> serde_json::Value {
    json_lines(output).pop().expect("a summary line")
}

#[test]
fn a_killed_sender_leaves_nothing_visible_and_its_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = big_file(dir.path());
    let size = std::fs::metadata(&file).unwrap().len();
    let total_chunks = size.div_ceil(8 << 20) as usize;
    let mut listener = Listener::start(&["--out", out.to_str().unwrap()]);

    let mut sender = spawn_send(&listener.ticket, &file, &[]);
    wait_until(Duration::from_secs(60), "40% of the chunks", || {
        recorded_chunks(&out) * 10 >= total_chunks * 4
    });
    sender.kill().unwrap();
    sender.wait().unwrap();
    assert!(
        !out.join("big.safetensors").exists(),
        "no file under the final name"
    );
    assert!(listener.is_running());

    let rerun = send(&listener.ticket, &[&file], &["--json"]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let summary = summary(&rerun);
    let moved = summary["sent_bytes"].as_u64().unwrap();
    assert!(
        moved * 4 <= size * 3,
        "the rerun moved {moved} of {size} bytes"
    );
    assert!(std::fs::read(&file).unwrap() == std::fs::read(out.join("big.safetensors")).unwrap());
    assert_eq!(
        files_below(&out),
        vec![PathBuf::from("big.safetensors")],
        "partial files are gone"
    );
}

#[test]
fn a_stopped_listener_keeps_the_partial_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let key = dir.path().join("listener.key");
    let file = big_file(dir.path());
    let size = std::fs::metadata(&file).unwrap().len();
    let args = [
        "--out",
        out.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let mut listener = Listener::start(&args);
    let ticket = listener.ticket.clone();

    let sender = spawn_send(&ticket, &file, &["--timeout", "10"]);
    wait_until(Duration::from_secs(60), "a third of the chunks", || {
        recorded_chunks(&out) >= 8
    });
    let status = listener.terminate();
    assert!(
        status.success(),
        "SIGTERM ends the listener cleanly: {status:?}"
    );
    let sent = sender.wait_with_output().unwrap();
    assert!(!sent.status.success());
    let stderr = text(&sent.stderr);
    assert!(
        stderr.contains("error:") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!out.join("big.safetensors").exists());
    assert!(
        recorded_chunks(&out) >= 8,
        "the partial file and its record are kept"
    );

    let restarted = Listener::start(&args);
    assert_eq!(restarted.ticket.len(), ticket.len());
    let id = |t: &str| parse_ticket(t).unwrap().id;
    assert_eq!(
        id(&restarted.ticket),
        id(&ticket),
        "--key keeps the endpoint id"
    );
    let rerun = send(&restarted.ticket, &[&file], &["--json"]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    assert!(summary(&rerun)["sent_bytes"].as_u64().unwrap() < size);
    assert!(std::fs::read(&file).unwrap() == std::fs::read(out.join("big.safetensors")).unwrap());
}

#[test]
fn keys_from_files_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let id = text(&run(&["id", "--key", key.to_str().unwrap()]).stdout)
        .trim()
        .to_string();
    let secret = std::fs::read_to_string(&key).unwrap().trim().to_string();
    assert_eq!(secret.len(), 64);
    let from_env = run_with(&["id"], &[("IROH_SECRET", &secret)]);
    assert_eq!(text(&from_env.stdout).trim(), id);
    let other = dir.path().join("other");
    let key_wins = run_with(
        &["id", "--key", other.to_str().unwrap()],
        &[("IROH_SECRET", &secret)],
    );
    assert_ne!(
        text(&key_wins.stdout).trim(),
        id,
        "--key wins over IROH_SECRET"
    );

    let out = dir.path().join("out");
    let listener = Listener::start_with(
        &["--out", out.to_str().unwrap(), "--json"],
        &[("IROH_SECRET", &secret)],
    );
    assert_eq!(parse_ticket(&listener.ticket).unwrap().id.to_string(), id);
}

#[test]
fn only_allowed_peers_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let (friend, stranger) = (
        dir.path().join("friend.key"),
        dir.path().join("stranger.key"),
    );
    let friend_id = text(&run(&["id", "--key", friend.to_str().unwrap()]).stdout)
        .trim()
        .to_uppercase();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap(), "--allow", &friend_id]);
    let file = dir.path().join("a.npy");
    std::fs::write(
        &file,
        npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        ),
    )
    .unwrap();

    let refused = send(
        &listener.ticket,
        &[&file],
        &["--key", stranger.to_str().unwrap()],
    );
    assert_one_line_error(&refused, "refused");
    assert!(files_below(&out).is_empty());
    let pulled = run(&[
        "pull",
        "--relay",
        "disabled",
        &listener.ticket,
        "--list",
        "--key",
        stranger.to_str().unwrap(),
    ]);
    assert_one_line_error(&pulled, "refused");
    let admitted = send(
        &listener.ticket,
        &[&file],
        &["--key", friend.to_str().unwrap()],
    );
    assert!(admitted.status.success(), "{}", text(&admitted.stderr));
    assert!(out.join("a.npy").exists());
}

#[test]
fn a_full_disk_is_refused_up_front_and_leaves_nothing() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&small)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            std::process::Command::new("umount")
                .arg(&self.0)
                .status()
                .ok();
        }
    }
    let _unmount = Unmount(small.clone());
    let data = noise(64 << 20, 9);
    let big = dir.path().join("big.safetensors");
    std::fs::write(
        &big,
        safetensors_bytes(&[("w", "U8", &[data.len() as u64], &data)], None),
    )
    .unwrap();
    let listener = Listener::start(&["--out", small.to_str().unwrap()]);
    let output = send(&listener.ticket, &[&big], &["--json"]);
    assert_one_line_error(&output, "space");
    assert!(files_below(&small).is_empty(), "{:?}", files_below(&small));
    let little = dir.path().join("little.npy");
    std::fs::write(
        &little,
        npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        ),
    )
    .unwrap();
    assert!(send(&listener.ticket, &[&little], &[]).status.success());
    assert!(small.join("little.npy").exists());
}

/// A hand-written client that says what an honest sender never would.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_are_refused_and_the_listener_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let addr = parse_ticket(&listener.ticket).unwrap();
    let endpoint = endpoint::bind(EndpointOptions {
        secret_key: iroh::SecretKey::generate(),
        relay: Relay::Disabled,
        bind: None,
        accept: false,
        allow: None,
    })
    .await
    .unwrap();
    let pool = Pool::new(endpoint, Duration::from_secs(5));
    let offer = |name: &str, size: u64| Offer {
        name: name.into(),
        format: "npy".into(),
        size,
        tensors: 1,
        identity: "00".into(),
        eager: true,
        discard: false,
    };

    let mut frames: Vec<Vec<Bytes>> = vec![
        vec![Bytes::from_static(&[1, 0xff, 0xff, 0xff, 0xff])],
        vec![Bytes::from_static(&[99, 1, 2, 3])],
        vec![Bytes::from_static(&[1, 3, 0, 0, 0, b'{', b'x', b'}'])],
        vec![
            Message::Upload.encode().into(),
            Message::Offer(offer("huge.npy", 1 << 60)).encode().into(),
        ],
        vec![
            Message::Upload.encode().into(),
            Message::Offer(offer(&"x".repeat(10_000), 4))
                .encode()
                .into(),
        ],
    ];
    // A chunk with the wrong index, then one whose hash is wrong.
    let mut wrong_index = vec![
        Message::Upload.encode().into(),
        Message::Offer(offer("index.npy", 4)).encode().into(),
    ];
    wrong_index.push(Bytes::copy_from_slice(&chunk_header(3, 4)));
    frames.push(wrong_index);
    let mut wrong_hash = vec![
        Message::Upload.encode().into(),
        Message::Offer(offer("hash.npy", 4)).encode().into(),
    ];
    wrong_hash.push(Bytes::copy_from_slice(&chunk_header(0, 4)));
    wrong_hash.push(Bytes::from_static(&[1, 2, 3, 4]));
    wrong_hash.push(Bytes::from_static(&[0; 32]));
    frames.push(wrong_hash);

    for stream in frames {
        let (mut writer, mut reader) = pool.open(&addr).await.unwrap();
        for frame in stream {
            if writer.write(frame).await.is_err() {
                break;
            }
        }
        writer.finish();
        // Whatever the listener answers (or not), it must not store anything.
        tokio::time::timeout(Duration::from_secs(10), reader.message())
            .await
            .ok();
    }
    // A peer that opens a stream and says nothing must not hold up others.
    let (_silent_writer, _silent_reader) = pool.open(&addr).await.unwrap();

    let (mut writer, mut reader) = pool.open(&addr).await.unwrap();
    for frame in [
        Message::Upload.encode(),
        Message::Offer(offer("hash2.npy", 4)).encode(),
    ] {
        writer.write(frame.into()).await.unwrap();
    }
    writer
        .write(Bytes::copy_from_slice(&chunk_header(0, 4)))
        .await
        .unwrap();
    writer
        .write(Bytes::from_static(&[1, 2, 3, 4]))
        .await
        .unwrap();
    writer.write(Bytes::from_static(&[7; 32])).await.unwrap();
    writer.finish();
    match tokio::time::timeout(Duration::from_secs(10), reader.message()).await {
        Ok(Ok(Message::Failed { reason })) => assert!(
            reason.contains("hash2.npy") && reason.contains("hash"),
            "{reason}"
        ),
        other => panic!("a corrupted chunk must be answered with Failed, got {other:?}"),
    }

    let stored: Vec<_> = files_below(&out)
        .into_iter()
        .filter(|f| !f.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        stored.is_empty(),
        "nothing is stored from malformed streams: {stored:?}"
    );
    let good = dir.path().join("good.npy");
    std::fs::write(
        &good,
        npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        ),
    )
    .unwrap();
    let ticket = listener.ticket.clone();
    let output = tokio::task::spawn_blocking(move || send(&ticket, &[&good], &[]))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(out.join("good.npy").exists());
    pool.close().await;
}

#[test]
fn sixteen_senders_at_once_with_bounded_listener_memory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let files: Vec<PathBuf> = (0..2)
        .map(|i| {
            let data = noise(6 << 20, i);
            let path = dir.path().join(format!("f{i}.safetensors"));
            std::fs::write(
                &path,
                safetensors_bytes(&[("w", "U8", &[data.len() as u64], &data)], None),
            )
            .unwrap();
            path
        })
        .collect();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), listener.pid());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kb) = status
                    .lines()
                    .find(|l| l.starts_with("RssAnon:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let (ticket, files) = (listener.ticket.clone(), files.clone());
            std::thread::spawn(move || {
                let refs: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
                send(&ticket, &refs, &[])
            })
        })
        .collect();
    for sender in senders {
        let output = sender.join().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let stored = files_below(&out);
    assert_eq!(stored.len(), 32, "{stored:?}");
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for file in stored {
        let bytes = std::fs::read(out.join(&file)).unwrap();
        assert!(
            originals.contains(&bytes),
            "{} is not one of the sent files",
            file.display()
        );
    }
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    assert!(
        peak_mib < 256,
        "listener anonymous memory peaked at {peak_mib} MiB"
    );
}
