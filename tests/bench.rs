//! `bench` as a script uses it: one JSON object per size on stdout and nothing
//! else, with or without a ticket, and rows that survive a run failing later.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const KEYS: [&str; 8] = [
    "event",
    "size_bytes",
    "iters",
    "p50_us",
    "p99_us",
    "mb_per_s",
    "connect_ms",
    "tensors_per_s",
];

/// Asserts `output` is one well-formed size row per entry of `sizes`, in order.
fn assert_rows(output: &std::process::Output, sizes: &[u64], raw: bool) {
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rows = json_lines(output);
    assert_eq!(rows.len(), sizes.len(), "{}", text(&output.stdout));
    for (row, size) in rows.iter().zip(sizes) {
        for key in KEYS {
            assert!(row.get(key).is_some(), "no {key} in {row}");
        }
        assert_eq!(row["event"], "size");
        assert_eq!(row["size_bytes"], *size);
        assert_eq!(row["iters"], 3);
        assert_eq!(row["raw"], raw);
        let p50 = row["p50_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= row["p99_us"].as_f64().unwrap(), "{row}");
        assert!(row["mb_per_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["tensors_per_s"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["connect_ms"], rows[0]["connect_ms"], "run-wide");
    }
}

#[test]
fn json_rows_for_every_size_with_and_without_a_ticket() {
    let sizes = ["--sizes", "4K,1M", "--iters", "3", "--json"];
    let local = run(&[&["bench"], &sizes[..]].concat());
    assert_rows(&local, &[4096, 1 << 20], false);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let remote = run(&[
        &["bench", "--relay", "disabled", &listener.ticket],
        &sizes[..],
    ]
    .concat());
    assert_rows(&remote, &[4096, 1 << 20], false);
    let raw = run(&[
        &["bench", "--relay", "disabled", &listener.ticket, "--raw"],
        &sizes[..],
    ]
    .concat());
    assert_rows(&raw, &[4096, 1 << 20], true);
    assert!(
        files_below(&out).is_empty(),
        "the listener kept bench data: {:?}",
        files_below(&out)
    );
}

#[test]
fn rows_measured_before_a_failure_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&["--out", dir.path().to_str().unwrap()]);
    let mut bench = Command::new(bin())
        .args(["bench", "--relay", "disabled", &listener.ticket, "--json"])
        .args(["--sizes", "4K,1G", "--iters", "3", "--timeout", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(bench.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a row before the failure").unwrap();
    let row: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(row["size_bytes"], 4096);
    // The listener vanishes while the 1 GiB size runs.
    listener.child.kill().unwrap();
    listener.child.wait().unwrap();
    assert!(lines.next().is_none(), "no row for the size that failed");
    let status = wait_with_deadline(&mut bench, Duration::from_secs(60)).expect("bench ends");
    assert!(!status.success());
}
