//! `send T1 --to T2 ...`: the file leaves the sender about once and the
//! listeners pass it on among themselves, each admitting only the sender.
//! How fast is for `scripts/fanout.sh`; these check what a user relies on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    Listener, bin, json_lines, safetensors_file, signal, text, wait_until, wait_with_deadline,
};
use tensor_iroh::protocol::endpoint::parse_ticket;

/// A sender's key and its endpoint id, for listeners that admit only it.
struct Sender {
    key: PathBuf,
    id: String,
}

impl Sender {
    fn new(dir: &Path) -> Sender {
        let key = dir.join("sender.key");
        let output = common::run(&["id", "--key", key.to_str().unwrap()]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let id = text(&output.stdout).trim().to_string();
        Sender { key, id }
    }

    fn command(&self, tickets: &[&str], file: &Path) -> Command {
        let mut command = Command::new(bin());
        command
            .args(["send", "--relay", "disabled", "--json", "--timeout", "5"])
            .arg("--key")
            .arg(&self.key)
            .arg(tickets[0])
            .arg(file);
        for ticket in &tickets[1..] {
            command.args(["--to", ticket]);
        }
        command
    }
}

/// A listener with its own lasting key (so a restart keeps its ticket),
/// admitting only `sender`.
fn receiver(dir: &Path, name: &str, sender: &Sender) -> Listener {
    let out = dir.join(name);
    let key = dir.join(format!("{name}.key"));
    Listener::start(&[
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--allow",
        &sender.id,
    ])
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).ok() == std::fs::read(b).ok()
}

/// The `received` events a listener printed so far.
fn received(listener: &Listener) -> Vec<serde_json::Value> {
    listener
        .lines
        .try_iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter(|event| event["event"] == "received")
        .collect()
}

#[test]
fn a_file_for_three_listeners_leaves_the_sender_once_and_arrives_intact_at_each() {
    let dir = tempfile::tempdir().unwrap();
    let file = safetensors_file(&dir.path().join("w.safetensors"), 40 << 20, 3);
    let size = std::fs::metadata(&file).unwrap().len();
    let sender = Sender::new(dir.path());
    let listeners: Vec<Listener> = ["a", "b", "c"]
        .iter()
        .map(|name| receiver(dir.path(), name, &sender))
        .collect();
    let tickets: Vec<&str> = listeners.iter().map(|l| l.ticket.as_str()).collect();

    let output = sender.command(&tickets, &file).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));

    for name in ["a", "b", "c"] {
        let copy = dir.path().join(name).join("w.safetensors");
        assert!(same_bytes(&file, &copy), "{name}'s copy is the file");
    }
    let events = json_lines(&output);
    let files: Vec<_> = events.iter().filter(|e| e["event"] == "file").collect();
    assert_eq!(files.len(), 3, "one file event per listener: {events:?}");
    let summary = events.last().unwrap();
    assert_eq!(summary["files"], 3);
    let sent = summary["sent_bytes"].as_u64().unwrap();
    assert!(
        sent < size + size / 2,
        "the sender sent {sent} bytes for three copies of {size}: about one"
    );
    let from_listeners = listeners
        .iter()
        .flat_map(received)
        .filter(|event| event["peer"] != sender.id.as_str())
        .count();
    assert_eq!(
        from_listeners, 2,
        "two listeners got the file from another listener, not from the sender"
    );
}

/// The number of chunks recorded as checked in a partial file under `out`.
fn recorded_chunks(out: &Path) -> usize {
    std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .ends_with(".tensor-iroh-chunks")
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .map(|record| record.lines().count())
        .sum()
}

fn spawn(mut command: Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_forwarding_listener_is_named_the_others_finish_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = safetensors_file(&dir.path().join("w.safetensors"), 256 << 20, 5);
    let sender = Sender::new(dir.path());
    let names = ["a", "b", "c"];
    let mut listeners: Vec<Listener> = names
        .iter()
        .map(|name| receiver(dir.path(), name, &sender))
        .collect();
    let tickets: Vec<String> = listeners.iter().map(|l| l.ticket.clone()).collect();
    let ticket_refs: Vec<&str> = tickets.iter().map(String::as_str).collect();
    let middle_id = parse_ticket(&tickets[1]).unwrap().id.to_string();

    // The chain runs a, b, c: b gets the file from a and passes it on to c.
    let mut send = spawn(sender.command(&ticket_refs, &file));
    let b_out = dir.path().join("b");
    wait_until(Duration::from_secs(60), "b to check two chunks", || {
        recorded_chunks(&b_out) >= 2
    });
    signal(listeners[1].pid(), libc::SIGKILL);
    let status = wait_with_deadline(&mut send, Duration::from_secs(120)).expect("send ends");
    let output = send.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&middle_id[..10]),
        "the dead listener is named: {stderr}"
    );
    for name in ["a", "c"] {
        let copy = dir.path().join(name).join("w.safetensors");
        assert!(same_bytes(&file, &copy), "{name}'s copy is intact");
    }
    assert!(!b_out.join("w.safetensors").exists());

    listeners[1] = receiver(dir.path(), "b", &sender);
    assert_eq!(
        parse_ticket(&listeners[1].ticket).unwrap().id.to_string(),
        middle_id,
        "b is back under its key"
    );
    let rerun = sender.command(&ticket_refs, &file).output().unwrap();
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    for name in names {
        let copy = dir.path().join(name).join("w.safetensors");
        assert!(same_bytes(&file, &copy), "{name}'s copy is the file");
    }
}

#[test]
fn a_listener_that_keeps_no_copy_gets_its_own_upload_beside_the_fan_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = safetensors_file(&dir.path().join("w.safetensors"), 20 << 20, 9);
    let sender = Sender::new(dir.path());
    let stored = receiver(dir.path(), "a", &sender);
    let mut piped = Command::new(bin())
        .args(["listen", "--relay", "disabled", "--once", "--stdout"])
        .args(["--allow", &sender.id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = piped.stderr.take().unwrap();
    let piped_ticket = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .next()
        .unwrap()
        .unwrap();
    let mut stdout = piped.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).unwrap();
        bytes
    });

    let output = sender
        .command(&[&stored.ticket, &piped_ticket], &file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));

    let copy = dir.path().join("a").join("w.safetensors");
    assert!(same_bytes(&file, &copy), "the stored copy is the file");
    let status = wait_with_deadline(&mut piped, Duration::from_secs(20)).expect("--once exits");
    assert!(status.success());
    assert_eq!(
        reading.join().unwrap(),
        std::fs::read(&file).unwrap(),
        "the --stdout listener wrote the file"
    );
}
