//! Identity and hostile peers: keys that keep a listener's ticket, an
//! allow-list that keeps strangers out, and hand-written clients that send
//! names and frames no honest sender would, none of which may write outside
//! `--out`, store a file that was not checked, or stop the listener.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::peer::{LibraryPeer, offer};
use common::*;
use tensor_iroh::catalog::whole_file_offer;
use tensor_iroh::codec::{Encoder, Kind, Region};
use tensor_iroh::formats::TensorFile;
use tensor_iroh::protocol::coding::Compress;
use tensor_iroh::protocol::endpoint::{self, parse_ticket};
use tensor_iroh::protocol::errors::ErrorCode;
use tensor_iroh::protocol::wire::{
    CHUNK_SIZE, Hash, MAX_REQUEST_TENSORS, Message, Offer, TensorRef, chunk_header,
    coded_block_header, end_frame, kept_frame,
};

fn tiny_npy(path: &Path) -> PathBuf {
    std::fs::write(
        path,
        npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ),
    )
    .unwrap();
    path.to_path_buf()
}

/// `tensor-iroh id --key FILE`, which must succeed.
fn endpoint_id_of(key: &Path) -> String {
    let output = run(&["id", "--key", key.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).trim().to_string()
}

/// The `listening` line of `listen --json ARGS`; the listener is then stopped.
fn listening_line(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut command = Command::new(bin());
    command
        .args(["listen", "--relay", "disabled", "--json"])
        .args(args)
        .env_remove(endpoint::SECRET_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).ok();
        tx.send(line).ok();
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    child.kill().ok();
    child.wait().ok();
    let line = line.expect("listen prints its listening line");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line:?}"))
}

#[test]
fn a_key_file_keeps_the_endpoint_id_and_wins_over_iroh_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("listener.key");
    let id = endpoint_id_of(&key);
    assert!(
        id.len() == 64
            && id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "`id` prints a lowercase 64-hex endpoint id, got {id:?}"
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is private to its owner");
    let secret = std::fs::read_to_string(&key).unwrap().trim().to_string();
    assert!(secret.len() == 64 && secret.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(endpoint_id_of(&key), id, "an existing key file is reused");

    let key_arg = ["--key", key.to_str().unwrap()];
    let mut tickets = Vec::new();
    for _ in 0..2 {
        let listening = listening_line(&key_arg, &[]);
        assert_eq!(listening["endpoint_id"], id.as_str());
        let ticket = listening["ticket"].as_str().unwrap().to_string();
        assert_eq!(parse_ticket(&ticket).unwrap().id.to_string(), id);
        tickets.push(ticket);
    }
    assert_eq!(tickets[0], tickets[1], "a restart keeps the ticket");
    // The ticket from an earlier run reaches the restarted listener.
    let out = dir.path().join("out");
    let _listener = Listener::start(&[
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let file = tiny_npy(&dir.path().join("t.npy"));
    let sent = send(&tickets[0], &[&file], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(out.join("t.npy").exists());

    // A second listener with the key finds its port taken: it says so in a
    // plain warning and still serves, under another ticket.
    let second_out = dir.path().join("second");
    let second = Listener::start(&[
        "--key",
        key.to_str().unwrap(),
        "--out",
        second_out.to_str().unwrap(),
    ]);
    assert_ne!(second.ticket, tickets[0]);
    wait_until(Duration::from_secs(10), "the port warning", || {
        second.stderr().contains("listening as")
    });
    let warning = second.stderr();
    assert!(
        warning
            .lines()
            .any(|line| line.starts_with("warning: UDP port ")
                && line
                    .ends_with("(from this key) is taken; the ticket differs from earlier runs")),
        "{warning}"
    );
    let sent = send(&second.ticket, &[&file], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(second_out.join("t.npy").exists());

    let from_env = run_with(&["id"], &[(endpoint::SECRET_ENV, &secret)]);
    assert_eq!(
        text(&from_env.stdout).trim(),
        id,
        "IROH_SECRET is a key too"
    );
    let listening = listening_line(&[], &[(endpoint::SECRET_ENV, &secret)]);
    assert_eq!(listening["endpoint_id"], id.as_str());

    let other = dir.path().join("other.key");
    let other_id = endpoint_id_of(&other);
    assert_ne!(other_id, id);
    let both = run_with(
        &["id", "--key", other.to_str().unwrap()],
        &[(endpoint::SECRET_ENV, &secret)],
    );
    assert_eq!(
        text(&both.stdout).trim(),
        other_id,
        "--key wins over IROH_SECRET"
    );
    let listening = listening_line(
        &["--key", other.to_str().unwrap()],
        &[(endpoint::SECRET_ENV, &secret)],
    );
    assert_eq!(listening["endpoint_id"], other_id.as_str());

    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    assert_one_line_error(
        &run(&["id", "--key", garbage.to_str().unwrap()]),
        "garbage.key",
    );
    assert_one_line_error(
        &run_with(&["id"], &[(endpoint::SECRET_ENV, "abc")]),
        endpoint::SECRET_ENV,
    );
}

#[test]
fn only_peers_on_the_allow_list_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| dir.path().join(name);
    let (friend, colleague, stranger) =
        (key("friend.key"), key("colleague.key"), key("stranger.key"));
    let friend_id = endpoint_id_of(&friend);
    let colleague_id = endpoint_id_of(&colleague);
    let stranger_id = endpoint_id_of(&stranger);
    let out = dir.path().join("out");
    let listener = Listener::start(&[
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--allow",
        &friend_id.to_uppercase(),
        "--allow",
        &colleague_id,
    ]);
    let file = tiny_npy(&dir.path().join("a.npy"));

    let refused = send(
        &listener.ticket,
        &[&file],
        &["--key", stranger.to_str().unwrap(), "--json"],
    );
    // What the stranger can act on: whose list keeps it out.
    assert_one_line_error(&refused, "not on the listener's --allow list");
    let lines = json_lines(&refused);
    for event in ["file_failed", "summary"] {
        let line = lines
            .iter()
            .find(|line| line["event"] == event)
            .unwrap_or_else(|| panic!("no {event} in {lines:?}"));
        let error = line["error"].as_str().unwrap();
        assert!(
            error.contains("refused this endpoint") && error.contains("--allow"),
            "{event}: {error}"
        );
    }
    assert!(
        files_below(&out).is_empty(),
        "a refused sender wrote {:?}",
        files_below(&out)
    );
    // Each refused command is one `refused` event: the refusal is final, so
    // a command does not dial again to be refused twice.
    let refusals = || {
        let first = listener.lines.recv_timeout(Duration::from_secs(20));
        let rest = std::iter::from_fn(|| listener.lines.recv_timeout(Duration::from_secs(2)).ok());
        first
            .into_iter()
            .chain(rest)
            .map(|line| serde_json::from_str::<serde_json::Value>(&line).unwrap())
            .filter(|event| event["event"] == "refused")
            .map(|event| event["peer"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(refusals(), std::slice::from_ref(&stranger_id));
    let pulled = run(&[
        "pull",
        "--relay",
        "disabled",
        &listener.ticket,
        "--list",
        "--key",
        stranger.to_str().unwrap(),
    ]);
    assert_one_line_error(&pulled, "--allow");
    assert_eq!(refusals(), std::slice::from_ref(&stranger_id));
    let benched = run(&[
        "bench",
        "--relay",
        "disabled",
        &listener.ticket,
        "--sizes",
        "4K",
        "--key",
        stranger.to_str().unwrap(),
    ]);
    assert_one_line_error(&benched, "--allow");
    assert_eq!(refusals(), std::slice::from_ref(&stranger_id));

    let admitted = send(
        &listener.ticket,
        &[&file],
        &["--key", friend.to_str().unwrap()],
    );
    assert!(admitted.status.success(), "{}", text(&admitted.stderr));
    assert_eq!(
        std::fs::read(out.join("a.npy")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    let secret = std::fs::read_to_string(&colleague).unwrap();
    let by_env = run_with(
        &[
            "send",
            "--relay",
            "disabled",
            &listener.ticket,
            file.to_str().unwrap(),
            "--name",
            "b.npy",
        ],
        &[(endpoint::SECRET_ENV, secret.trim())],
    );
    assert!(by_env.status.success(), "{}", text(&by_env.stderr));
    assert!(out.join("b.npy").exists());
}

/// A client that frames whatever it is told to, under a fresh key.
async fn hostile_peer(ticket: &str, timeout: Duration) -> LibraryPeer {
    LibraryPeer::connect(iroh::SecretKey::generate(), ticket, timeout).await
}

fn upload(offer: Offer) -> Vec<Vec<u8>> {
    vec![Message::Upload.encode(), Message::Offer(offer).encode()]
}

/// `data` (one chunk) as an honest sender frames it after its offer.
fn chunk(index: u32, data: &[u8], hash: &Hash) -> Vec<Vec<u8>> {
    vec![
        chunk_header(index, data.len() as u32, false).to_vec(),
        data.to_vec(),
        hash.to_vec(),
    ]
}

/// A whole, well-framed upload of `data` under `name`.
fn honest_upload(name: &str, data: &[u8]) -> Vec<Vec<u8>> {
    let hash = *blake3::hash(data).as_bytes();
    let mut frames = upload(offer(name, data.len() as u64, true));
    frames.extend(chunk(0, data, &hash));
    frames.push(end_frame(&hash).to_vec());
    frames
}

/// A name short enough for a failure message.
fn shown(name: &str) -> String {
    format!("{:?}", name.chars().take(60).collect::<String>())
}

/// Files below `dir`, skipping the subtree `except`.
fn files_outside(dir: &Path, except: &Path) -> Vec<PathBuf> {
    files_below(dir)
        .into_iter()
        .filter(|f| !dir.join(f).starts_with(except))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn names_from_the_network_cannot_leave_the_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let out = root.join("deep/er/out");
    let outside = root.join("outside");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // Links a careless operator left in the output directory.
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    std::fs::write(outside.join("victim.npy"), b"precious").unwrap();
    std::os::unix::fs::symlink(outside.join("victim.npy"), out.join("victim.npy")).unwrap();
    let data = std::fs::read(tiny_npy(&root.join("data.npy"))).unwrap();
    let before_outside = files_outside(&root, &out);

    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let hostile = hostile_peer(&listener.ticket, Duration::from_secs(10)).await;
    let escape = format!("{}/escaped-{}.npy", outside.display(), std::process::id());
    let hostile_names = [
        "../../x.npy".to_string(),
        "../../../x.npy".into(),
        "/etc/passwd.npy".into(),
        escape.clone(),
        "a/b/c.npy".into(),
        "a/../../x.npy".into(),
        "..\\x.npy".into(),
        "..\\..\\x.npy".into(),
        "C:\\x.npy".into(),
        "link/x.npy".into(),
        "victim.npy".into(),
        "..".into(),
        "/".into(),
        "".into(),
        ".hidden.npy".into(),
        "nul\0.npy".into(),
        "new\nline.npy".into(),
        "tab\t.npy".into(),
        "esc\u{1b}[31m.npy".into(),
        "bidi\u{202e}ypn.npy".into(),
        format!("{}.npy", "x".repeat(10_000)),
        format!("{}.npy", "y".repeat(300)),
    ];

    let stored = hostile.exchange(&honest_upload("plain.npy", &data)).await;
    assert!(
        matches!(stored.as_slice(), [Message::Stored { name, .. }] if name == "plain.npy"),
        "an honest upload from this client is stored: {stored:?}"
    );
    for name in &hostile_names {
        let answers = hostile.exchange(&honest_upload(name, &data)).await;
        let name = shown(name);
        match answers.as_slice() {
            [
                Message::Stored {
                    name: stored_as, ..
                },
            ] => {
                let relative = Path::new(stored_as);
                assert!(
                    relative
                        .components()
                        .all(|c| matches!(c, Component::Normal(_))),
                    "{name} was stored as {stored_as:?}"
                );
                let path = out.join(relative).canonicalize().unwrap();
                assert!(path.starts_with(&out), "{name} landed at {path:?}");
                assert_eq!(std::fs::read(&path).unwrap(), data);
            }
            [Message::Refused { reason, .. }] => assert!(!reason.is_empty()),
            other => panic!("{name} got {other:?}; the listener stores or refuses"),
        }
    }

    assert_eq!(
        files_outside(&root, &out),
        before_outside,
        "nothing was written outside --out"
    );
    assert_eq!(
        std::fs::read(outside.join("victim.npy")).unwrap(),
        b"precious"
    );
    assert!(!Path::new("/etc/passwd.npy").exists());
    assert!(!Path::new(&escape).exists());
    for file in files_below(&out) {
        let name = file.to_string_lossy();
        assert!(
            !name.chars().any(tensor_iroh::escape::is_unprintable) && !name.starts_with('.'),
            "{name:?} in --out"
        );
    }

    let ticket = listener.ticket.clone();
    let good = tiny_npy(&root.join("good.npy"));
    let output = tokio::task::spawn_blocking(move || send(&ticket, &[&good], &[]))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the listener keeps serving: {}",
        text(&output.stderr)
    );
    assert!(out.join("good.npy").exists());
    hostile.pool.close().await;
}

fn refused_with(answers: &[Message], code: ErrorCode, words: &[&str]) -> bool {
    matches!(answers, [Message::Refused { code: said, reason }]
        if *said == code && words.iter().all(|w| reason.contains(w)))
}

fn failed_with(answers: &[Message], words: &[&str]) -> bool {
    matches!(answers.last(), Some(Message::Failed { reason, .. }) if words.iter().all(|w| reason.contains(w)))
}

/// Visible files in `out`: what a user would take for received files.
fn visible_files(out: &Path) -> Vec<PathBuf> {
    files_below(out)
        .into_iter()
        .filter(|f| !f.to_string_lossy().starts_with('.'))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_and_silent_peers_do_not_stop_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let hostile = hostile_peer(&listener.ticket, Duration::from_secs(10)).await;
    let data = [1u8, 2, 3, 4];
    let hash = *blake3::hash(&data).as_bytes();

    // Broken framing before any request: the listener drops the stream.
    for frames in [
        vec![vec![1, 0xff, 0xff, 0xff, 0xff]],
        vec![vec![99, 1, 2, 3]],
        vec![vec![1, 3, 0, 0, 0, b'{', b'x', b'}']],
        vec![
            Message::Ready {
                held: vec![],
                stripes: 1,
                transfer: 0,
            }
            .encode(),
        ],
        vec![
            Message::Stripe {
                transfer: 7,
                stripe: 1,
            }
            .encode(),
        ],
    ] {
        let answers = hostile.exchange(&frames).await;
        assert!(
            !answers.iter().any(|m| matches!(m, Message::Stored { .. })),
            "{answers:?}"
        );
    }

    // Offers that must be refused before any data moves.
    let answers = hostile
        .exchange(&upload(offer("huge.npy", 1 << 60, false)))
        .await;
    assert!(
        refused_with(&answers, ErrorCode::ProtocolViolation, &["out of bounds"]),
        "{answers:?}"
    );
    let answers = hostile
        .exchange(&upload(offer("vast.npy", 1 << 49, false)))
        .await;
    assert!(
        refused_with(&answers, ErrorCode::NoSpace, &["space"]),
        "{answers:?}"
    );
    let mut sneaky = offer("sneaky.npy", 4, true);
    sneaky.identity = "/../../../../tmp/x".into();
    let answers = hostile.exchange(&upload(sneaky)).await;
    assert!(
        refused_with(&answers, ErrorCode::ProtocolViolation, &["identity"]),
        "{answers:?}"
    );

    // Data that does not match its offer: the listener names the file.
    let mut wrong_index = upload(offer("index.npy", 4, true));
    wrong_index.extend(chunk(3, &data, &hash));
    let mut wrong_length = upload(offer("length.npy", 4, true));
    wrong_length.push(chunk_header(0, 5, false).to_vec());
    wrong_length.push(vec![0; 5]);
    let mut endless = upload(offer("endless.npy", 4, true));
    endless.push(chunk_header(0, u32::MAX, false).to_vec());
    let mut kept = upload(offer("kept.npy", 4, true));
    kept.push(kept_frame(0).to_vec());
    let mut early_end = upload(offer("early.npy", 4, true));
    early_end.push(end_frame(&hash).to_vec());
    let mut message_inside = upload(offer("inside.npy", 4, true));
    message_inside.push(Message::Upload.encode());
    for (frames, name) in [
        (wrong_index, "index.npy"),
        (wrong_length, "length.npy"),
        (endless, "endless.npy"),
        (kept, "kept.npy"),
        (early_end, "early.npy"),
        (message_inside, "inside.npy"),
    ] {
        let answers = hostile.exchange(&frames).await;
        assert!(failed_with(&answers, &[name]), "{name}: {answers:?}");
    }
    let mut corrupted = upload(offer("corrupted.npy", 4, true));
    corrupted.extend(chunk(0, &data, &[7; 32]));
    corrupted.push(end_frame(&hash).to_vec());
    let answers = hostile.exchange(&corrupted).await;
    assert!(
        failed_with(&answers, &["corrupted.npy", "hash"]),
        "{answers:?}"
    );
    assert!(
        matches!(
            answers.last(),
            Some(Message::Failed {
                code: ErrorCode::Corrupt,
                ..
            })
        ),
        "{answers:?}"
    );
    let mut bad_end = upload(offer("badend.npy", 4, true));
    bad_end.extend(chunk(0, &data, &hash));
    bad_end.push(end_frame(&[7; 32]).to_vec());
    let answers = hostile.exchange(&bad_end).await;
    assert!(
        failed_with(&answers, &["badend.npy", "hash"]),
        "{answers:?}"
    );

    // Coded chunks that lie: about their length, their coding or their data.
    for (frames, name, says) in coded_lies() {
        let answers = hostile.exchange(&frames).await;
        assert!(failed_with(&answers, &[name, says]), "{name}: {answers:?}");
    }

    // A striped upload whose sender opens the same stripe twice fails, and the
    // listener says why on the offer's stream.
    let mut two_chunks = offer("striped.npy", 2 * CHUNK_SIZE, false);
    two_chunks.stripes = 2;
    let (mut striped, mut striped_reader) = hostile.open().await.unwrap();
    for frame in upload(two_chunks) {
        striped.write(frame.into()).await.unwrap();
    }
    let ready = striped_reader.message().await;
    let Ok(Message::Ready {
        stripes: 2,
        transfer,
        ..
    }) = ready
    else {
        panic!("the listener takes a two-chunk file on two streams: {ready:?}");
    };
    let mut extra_streams = Vec::new();
    for _ in 0..2 {
        let (mut extra, extra_reader) = hostile.open().await.unwrap();
        extra
            .message(&Message::Stripe {
                transfer,
                stripe: 1,
            })
            .await
            .unwrap();
        extra_streams.push((extra, extra_reader));
    }
    let answer = striped_reader.message().await;
    assert!(
        matches!(&answer, Ok(Message::Failed { reason, .. }) if reason.contains("striped.npy") && reason.contains("stripe 1")),
        "{answer:?}"
    );
    assert!(
        visible_files(&out).is_empty(),
        "nothing unchecked is stored: {:?}",
        visible_files(&out)
    );

    // Silent peers: one stops in the middle of a frame, one holds the partial
    // file of the very file an honest sender is about to send, and one fills
    // every stream the listener allows on its connection.
    let held = dir.path().join("held.safetensors");
    let tensor = noise(9 << 20, 5);
    std::fs::write(
        &held,
        safetensors_bytes(&[("w", "U8", &[tensor.len() as u64], &tensor)], None),
    )
    .unwrap();
    let real_offer = whole_file_offer(&TensorFile::open(&held).unwrap(), "held.safetensors".into());
    let (mut mid_frame, _mid_frame_reader) = hostile.open().await.unwrap();
    mid_frame
        .write(Bytes::from_static(&[1, 200]))
        .await
        .unwrap();
    let (mut holder, mut holder_reader) = hostile.open().await.unwrap();
    for frame in upload(real_offer) {
        holder.write(frame.into()).await.unwrap();
    }
    assert!(
        matches!(holder_reader.message().await, Ok(Message::Ready { .. })),
        "the listener takes the hostile offer"
    );
    let crowd = hostile_peer(&listener.ticket, Duration::from_secs(3)).await;
    let mut crowding = Vec::new();
    while crowding.len() < 200 {
        let Ok((mut writer, reader)) = crowd.pool.open(&crowd.addr).await else {
            break;
        };
        if writer.write(Bytes::from_static(&[1])).await.is_err() {
            break;
        }
        crowding.push((writer, reader));
    }
    assert!(
        crowding.len() < 200,
        "a peer opened {} streams at once",
        crowding.len()
    );

    let ticket = listener.ticket.clone();
    let (good, held_path) = (tiny_npy(&dir.path().join("good.npy")), held.clone());
    let output = tokio::task::spawn_blocking(move || send(&ticket, &[&good, &held_path], &[]))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "an honest sender gets through: {}",
        text(&output.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("held.safetensors")).unwrap(),
        std::fs::read(&held).unwrap()
    );
    assert!(out.join("good.npy").exists());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), holder_reader.next())
            .await
            .is_err(),
        "the honest send did not wait for the silent peer to time out"
    );
    assert_eq!(
        visible_files(&out),
        vec![PathBuf::from("good.npy"), PathBuf::from("held.safetensors")]
    );
    hostile.pool.close().await;
    crowd.pool.close().await;
}

/// Uploads of one coded chunk that an honest sender never sends, the file
/// each names and what the listener's failure must say.
fn coded_lies() -> Vec<(Vec<Vec<u8>>, &'static str, &'static str)> {
    let data = vec![0u8; 4096];
    let hash = *blake3::hash(&data).as_bytes();
    let mut coded = Vec::new();
    let region = Region {
        len: data.len(),
        kind: Kind::General,
    };
    assert!(Encoder::new().unwrap().encode(&data, &[region], &mut coded));
    let coded_upload = |name: &str, block: Vec<Vec<u8>>, hash: &Hash| {
        let mut frames = upload(offer(name, data.len() as u64, true));
        frames.push(chunk_header(0, data.len() as u32, true).to_vec());
        frames.extend(block);
        frames.push(hash.to_vec());
        frames.push(end_frame(hash).to_vec());
        frames
    };
    let block = |len: u32, payload: &[u8]| {
        vec![
            coded_block_header(len, payload.len() as u32).to_vec(),
            payload.to_vec(),
        ]
    };
    let mut garbage = coded.clone();
    let middle = garbage.len() / 2;
    garbage[middle] ^= 0x55;
    let other = *blake3::hash(b"other").as_bytes();
    vec![
        (
            coded_upload("longer.npy", block(8192, &coded), &hash),
            "longer.npy",
            "block",
        ),
        (
            coded_upload("bomb.npy", block(64 << 20, &coded), &hash),
            "bomb.npy",
            "out of bounds",
        ),
        (
            coded_upload("garbled.npy", block(4096, &garbage), &hash),
            "garbled.npy",
            "corrupted",
        ),
        (
            coded_upload("forged.npy", block(4096, &coded), &other),
            "forged.npy",
            "hash",
        ),
        (
            coded_upload("inflated.npy", block(4096, &vec![0; 4096]), &hash),
            "inflated.npy",
            "out of bounds",
        ),
    ]
}

/// Asserts `shown` (what a command printed on stderr) holds no control or
/// bidirectional character but the line breaks between its lines.
fn assert_escaped(shown: &str, whose: &str) {
    let raw: Vec<char> = shown
        .chars()
        .filter(|&c| c != '\n' && tensor_iroh::escape::is_unprintable(c))
        .collect();
    assert!(raw.is_empty(), "{whose} printed {raw:?} raw: {shown:?}");
}

#[test]
fn names_and_reasons_from_a_peer_reach_the_terminal_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let file = tiny_npy(&dir.path().join("t.npy"));
    // Retitles the terminal and turns what follows red; forges a log line;
    // makes a name read backwards.
    for (name, escaped) in [
        (
            "\u{1b}]0;pwned\u{7}\u{1b}[31mx.npy",
            r"\u{1b}]0;pwned\u{7}\u{1b}[31mx.npy",
        ),
        ("x\nwarning: forged.npy", r"x\nwarning: forged.npy"),
        ("model\u{202e}ypn.npy", r"model\u{202e}ypn.npy"),
    ] {
        let sent = send(&listener.ticket, &[&file], &["--name", name]);
        assert_one_line_error(&sent, "control characters");
        let error = text(&sent.stderr);
        assert_escaped(&error, "send");
        assert!(error.contains(escaped), "{error}");
        wait_until(Duration::from_secs(20), "the listener's warning", || {
            listener.stderr().contains(escaped)
        });
    }
    let warnings = listener.stderr();
    assert_escaped(&warnings, "listen");
    assert!(
        !warnings
            .lines()
            .any(|line| line.starts_with("warning: forged")),
        "{warnings}"
    );
    assert!(
        visible_files(&out).is_empty(),
        "names with control characters are refused: {:?}",
        visible_files(&out)
    );
}

#[test]
fn a_refused_name_says_why_on_the_error_line_and_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let file = tiny_npy(&dir.path().join("t.npy"));

    let sent = send(
        &listener.ticket,
        &[&file],
        &["--name", "../t.npy", "--json"],
    );
    let why = r#"name "../t.npy" climbs out of the directory"#;
    assert_one_line_error(&sent, why);
    let failed = json_lines(&sent)
        .into_iter()
        .find(|line| line["event"] == "file_failed")
        .expect("a file_failed event");
    assert_eq!(failed["name"], "../t.npy");
    let error = failed["error"].as_str().unwrap();
    assert!(error.ends_with(why), "{error}");
    assert!(files_below(&out).is_empty(), "{:?}", files_below(&out));
}

#[test]
fn a_refused_directory_send_names_the_directory_as_the_sender_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let out = root.join("srv/in");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir(root.join("elsewhere")).unwrap();
    // A link an operator left where the send's directory would go.
    std::os::unix::fs::symlink(root.join("elsewhere"), out.join("ckpt")).unwrap();
    let ckpt = root.join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    tiny_npy(&ckpt.join("a.npy"));
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);

    let sent = send(&listener.ticket, &[&ckpt], &["--json"]);
    assert_one_line_error(&sent, "ckpt is not a plain directory");
    let error = text(&sent.stderr);
    let failed = json_lines(&sent)
        .into_iter()
        .find(|line| line["event"] == "file_failed")
        .expect("a file_failed event");
    let told = failed["error"].as_str().unwrap();
    for shown in [error.as_str(), told] {
        assert!(
            !shown.contains(out.to_str().unwrap()),
            "the listener's path reached the sender: {shown}"
        );
    }
    assert!(
        std::fs::read_dir(root.join("elsewhere"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_naming_too_many_tensors_is_refused_naming_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let served = tiny_npy(&dir.path().join("t.npy"));
    let listener = Listener::start(&["--serve", served.to_str().unwrap()]);
    let hostile = hostile_peer(&listener.ticket, Duration::from_secs(20)).await;
    let names = vec!["t".to_string(); MAX_REQUEST_TENSORS + 1];
    let refs = vec![
        TensorRef {
            file: "t.npy".into(),
            tensor: "t".into(),
        };
        MAX_REQUEST_TENSORS + 1
    ];
    for request in [
        Message::Fetch {
            file: "t.npy".into(),
            tensors: Some(names),
            compress: Compress::Off,
        },
        Message::FetchMerged {
            tensors: refs,
            compress: Compress::Off,
        },
    ] {
        let answers = hostile.exchange(&[request.encode()]).await;
        assert!(
            refused_with(
                &answers,
                ErrorCode::RequestTooLarge,
                &[&format!("at most {MAX_REQUEST_TENSORS} in one request")]
            ),
            "{answers:?}"
        );
    }
    let answers = hostile
        .exchange(&[Message::Fetch {
            file: "t.npy".into(),
            tensors: Some(vec!["t".into(); 3]),
            compress: Compress::Off,
        }
        .encode()])
        .await;
    assert!(
        matches!(answers.as_slice(), [Message::Offer(offer)] if offer.name == "t.npy"),
        "a request within the bound is served: {answers:?}"
    );
    hostile.pool.close().await;
}
