//! The path report: which network path carried a transfer and how it
//! behaved, as `path` in the JSON events of `send`, `pull` and `bench`, and as
//! a `path to …` line on stderr with `-v`.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// A listener on loopback only, so the one path a peer can take is known.
fn loopback_listener(extra: &[&str]) -> Listener {
    Listener::start(&[&["--bind", "127.0.0.1:0"], extra].concat())
}

/// `path` is a direct path to the loopback listener on which packets went
/// out and a round trip was measured.
fn assert_loopback_path(path: &Value, what: &str) {
    assert!(path.is_object(), "{what}: no path report: {path}");
    assert_eq!(path["kind"], "direct", "{what}: {path}");
    let addr = path["addr"].as_str().unwrap_or_default();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "{what}: not the listener's address: {path}"
    );
    assert!(path["rtt_ms"].as_f64().unwrap() > 0.0, "{what}: {path}");
    let sent = path["sent_packets"].as_u64().unwrap();
    let lost = path["lost_packets"].as_u64().unwrap();
    assert!(sent > 0, "{what}: {path}");
    assert!(lost <= sent, "{what}: {path}");
    let loss = path["loss_percent"].as_f64().unwrap();
    assert!(
        (loss - lost as f64 / sent as f64 * 100.0).abs() < 1e-6,
        "{what}: {path}"
    );
    assert!(path["congestion_events"].is_u64(), "{what}: {path}");
    assert!(path["cwnd_bytes"].as_u64().unwrap() > 0, "{what}: {path}");
    assert!(path["mtu"].as_u64().unwrap() >= 1200, "{what}: {path}");
    // An estimate only where the congestion controller makes one.
    let estimate = &path["bandwidth_estimate_mbit"];
    assert!(
        estimate.is_null() || estimate.as_f64().unwrap() > 0.0,
        "{what}: {path}"
    );
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == event).collect()
}

/// The endpoint id of a key file, creating the key.
fn id_of(key: &Path) -> String {
    let output = run(&["id", "--key", key.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).trim().to_string()
}

#[test]
fn send_reports_the_path_of_every_file_and_of_the_send() {
    let dir = tempfile::tempdir().unwrap();
    let listener = loopback_listener(&["--out", dir.path().join("out").to_str().unwrap()]);
    let a = safetensors_file(&dir.path().join("a.safetensors"), 3 << 20, 1);
    let b = safetensors_file(&dir.path().join("b.safetensors"), 4096, 2);
    let output = send(&listener.ticket, &[&a, &b], &["--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = json_lines(&output);

    let files = events(&lines, "file");
    assert_eq!(files.len(), 2, "{}", text(&output.stdout));
    for file in &files {
        assert_loopback_path(&file["path"], "file event");
    }
    let summary = events(&lines, "summary")[0];
    assert_loopback_path(&summary["path"], "summary");
    let paths = summary["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 1, "{summary}");
    assert_eq!(paths[0]["peer"], files[0]["peer"], "{summary}");
    assert_eq!(paths[0]["path"], summary["path"], "{summary}");
    // Counters cover the connection's life: the summary, taken last, has
    // seen at least as many packets as any file event, and a 3 MiB file
    // takes thousands of them.
    let sent = |value: &Value| value["sent_packets"].as_u64().unwrap();
    for file in &files {
        assert!(sent(&summary["path"]) >= sent(&file["path"]), "{summary}");
    }
    assert!(sent(&summary["path"]) > 2000, "{summary}");
    assert!(
        !text(&output.stderr).contains("path to"),
        "no human path line with --json: {}",
        text(&output.stderr)
    );
}

#[test]
fn a_send_to_two_listeners_reports_each_path_first_ticket_first() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [dir.path().join("one.key"), dir.path().join("two.key")];
    let ids = keys.each_ref().map(|key| id_of(key));
    let listeners = [0, 1].map(|i| {
        loopback_listener(&[
            "--key",
            keys[i].to_str().unwrap(),
            "--out",
            dir.path().join(format!("out{i}")).to_str().unwrap(),
        ])
    });
    let file = safetensors_file(&dir.path().join("w.safetensors"), 1 << 20, 3);
    let output = send(
        &listeners[0].ticket,
        &[&file],
        &["--to", &listeners[1].ticket, "--json"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = json_lines(&output);
    for file in events(&lines, "file") {
        assert_loopback_path(&file["path"], "file event");
    }
    let summary = events(&lines, "summary")[0];
    let paths = summary["paths"].as_array().unwrap();
    let peers: Vec<&str> = paths.iter().map(|p| p["peer"].as_str().unwrap()).collect();
    assert_eq!(peers, ids, "one entry per listener, in ticket order");
    for entry in paths {
        assert_loopback_path(&entry["path"], "summary paths");
    }
    assert_ne!(
        paths[0]["path"]["addr"], paths[1]["path"]["addr"],
        "each listener is on its own port"
    );
    assert_eq!(summary["path"], paths[0]["path"], "the first ticket's");
}

#[test]
fn verbose_send_prints_the_path_to_each_listener() {
    let dir = tempfile::tempdir().unwrap();
    let listener = loopback_listener(&["--out", dir.path().join("out").to_str().unwrap()]);
    let file = safetensors_file(&dir.path().join("w.safetensors"), 1 << 20, 4);
    let quiet = send(&listener.ticket, &[&file], &[]);
    assert!(quiet.status.success(), "{}", text(&quiet.stderr));
    assert!(
        !text(&quiet.stderr).contains("path to"),
        "only with -v: {}",
        text(&quiet.stderr)
    );

    let output = send(&listener.ticket, &[&file], &["-v"]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("path")).collect();
    assert_eq!(lines.len(), 1, "one line per listener: {stderr}");
    let line = lines[0];
    assert!(line.starts_with("path to "), "{line}");
    for part in [
        ": direct 127.0.0.1:",
        ", rtt ",
        " ms",
        "of packets sent",
        "cwnd",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
}

#[test]
fn pull_reports_the_path_to_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let served = safetensors_file(&dir.path().join("w.safetensors"), 2 << 20, 5);
    let listener = loopback_listener(&["--serve", served.to_str().unwrap()]);
    let out = dir.path().join("out");
    let pull = |extra: &[&str]| {
        run(&[
            &[
                "pull",
                "--relay",
                "disabled",
                &listener.ticket,
                "--out",
                out.to_str().unwrap(),
                "--force",
            ],
            extra,
        ]
        .concat())
    };
    let output = pull(&["--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = json_lines(&output);
    let files = events(&lines, "file");
    assert_eq!(files.len(), 1, "{}", text(&output.stdout));
    assert_loopback_path(&files[0]["path"], "pull file event");
    let summary = events(&lines, "summary")[0];
    assert_loopback_path(&summary["path"], "pull summary");
    assert_eq!(summary["paths"].as_array().unwrap().len(), 1, "{summary}");

    let verbose = pull(&["-v"]);
    let stderr = text(&verbose.stderr);
    assert!(verbose.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("path to ") && l.contains(": direct 127.0.0.1:")),
        "{stderr}"
    );
}

#[test]
fn bench_reports_the_path_with_every_size() {
    let output = run(&["bench", "--sizes", "4K,1M", "--iters", "3", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rows = json_lines(&output);
    assert_eq!(rows.len(), 2, "{}", text(&output.stdout));
    for row in &rows {
        assert_loopback_path(&row["path"], "bench size row");
    }
    let sent = |row: &Value| row["path"]["sent_packets"].as_u64().unwrap();
    assert!(
        sent(&rows[1]) > sent(&rows[0]),
        "counters grow over the run"
    );

    let dir = tempfile::tempdir().unwrap();
    let listener = loopback_listener(&["--out", dir.path().to_str().unwrap()]);
    let verbose = run(&[
        "bench",
        "--relay",
        "disabled",
        &listener.ticket,
        "--sizes",
        "64K",
        "--iters",
        "3",
        "-v",
    ]);
    let stderr = text(&verbose.stderr);
    assert!(verbose.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("path")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(": direct 127.0.0.1:"), "{}", lines[0]);
    assert!(
        text(&verbose.stdout).contains("p50"),
        "the table is still there: {}",
        text(&verbose.stdout)
    );
}

#[test]
fn a_send_stopped_midway_still_reports_its_path() {
    // The slow send a user gives up on is the one whose path matters most.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = loopback_listener(&["--out", out.to_str().unwrap()]);
    let big = safetensors_file(&dir.path().join("big.safetensors"), 300 << 20, 6);
    let mut sender = std::process::Command::new(bin())
        .args(["send", "--relay", "disabled", "--json", &listener.ticket])
        .arg(&big)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(std::time::Duration::from_secs(60), "data arriving", || {
        files_below(&out)
            .iter()
            .any(|f| f.to_string_lossy().ends_with("-partial"))
    });
    signal(sender.id() as i32, libc::SIGTERM);
    let status = wait_with_deadline(&mut sender, DEADLINE).expect("the sender stops");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut sender.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(143), "{stdout}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["error"], "interrupted by SIGTERM", "{summary}");
    assert_loopback_path(&summary["path"], "summary of a stopped send");
}
