//! What a terminal user sees: progress bars (per file, with an ETA) on a
//! terminal only, never with --json, and colour that NO_COLOR turns off.
//! A pseudo-terminal comes from util-linux's `script`, so these run (and
//! fail where `script` is missing) with no terminal of their own, as in CI.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Runs a shell `command_line` on a pseudo-terminal; returns whether it
/// succeeded and everything drawn there (stdout and stderr together).
fn on_terminal_shell(command_line: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new("script");
    command
        .args([
            "--quiet",
            "--return",
            "--command",
            command_line,
            "/dev/null",
        ])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .expect("util-linux `script`, which gives these tests a terminal, runs");
    (output.status.success(), text(&output.stdout))
}

/// Runs `tensor-iroh ARGS` on a pseudo-terminal.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let command_line = std::iter::once(bin())
        .chain(args.iter().copied())
        .map(quoted)
        .collect::<Vec<_>>()
        .join(" ");
    on_terminal_shell(&command_line, env)
}

fn quoted(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[test]
fn progress_on_a_terminal_only_and_colour_follows_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let file = safetensors_file(&dir.path().join("big.safetensors"), 48 << 20, 5);
    let file = file.to_str().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap(), "--force"]);
    let send_args = ["send", "--relay", "disabled", &listener.ticket, file];
    let (sent, drawn) = on_terminal(&send_args, &[]);
    assert!(sent, "{drawn}");
    assert!(
        drawn.contains("big.safetensors") && drawn.contains("eta"),
        "a per-file bar with an ETA on a terminal: {drawn:?}"
    );
    assert!(drawn.contains("\x1b[1m"), "bold names on a terminal");

    let (sent, drawn) = on_terminal(&send_args, &[("NO_COLOR", "1")]);
    assert!(sent, "{drawn}");
    assert!(drawn.contains("eta"), "NO_COLOR keeps the progress bar");
    assert!(
        !drawn.contains("\x1b[1m") && !drawn.contains("\x1b[3"),
        "no colour or bold with NO_COLOR: {drawn:?}"
    );

    let mut json_args = send_args.to_vec();
    json_args.push("--json");
    let (sent, drawn) = on_terminal(&json_args, &[]);
    assert!(sent, "{drawn}");
    assert!(!drawn.contains("eta"), "no progress with --json: {drawn:?}");
    for line in drawn.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("only JSON lines with --json: {line:?}"));
        assert!(value.get("event").is_some(), "{line}");
    }

    let piped = send(&listener.ticket, &[Path::new(file)], &[]);
    assert!(piped.status.success());
    assert!(
        !text(&piped.stderr).contains("eta"),
        "no progress when stderr is not a terminal"
    );
}

#[test]
fn a_listener_on_a_terminal_shows_each_incoming_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = safetensors_file(&dir.path().join("big.safetensors"), 48 << 20, 5);
    let out = dir.path().join("out");
    let ticket_file = dir.path().join("ticket");
    let partial = dir.path().join("ticket.partial");
    // The listener draws on the terminal (stderr); its ticket goes through a
    // pipe to a file, from which the sender, an ordinary process, reads it.
    let command_line = format!(
        "{} listen --relay disabled --once --out {} | {{ head -n 1 > {}; mv {} {}; }}",
        quoted(bin()),
        quoted(out.to_str().unwrap()),
        quoted(partial.to_str().unwrap()),
        quoted(partial.to_str().unwrap()),
        quoted(ticket_file.to_str().unwrap()),
    );
    let listen = std::thread::spawn(move || on_terminal_shell(&command_line, &[]));
    wait_until(
        std::time::Duration::from_secs(20),
        "the listener's ticket",
        || ticket_file.exists(),
    );
    let ticket = std::fs::read_to_string(&ticket_file).unwrap();
    let sent = send(ticket.trim(), &[&file], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (listened, drawn) = listen.join().unwrap();
    assert!(listened, "{drawn}");
    assert!(
        drawn.contains("big.safetensors") && drawn.contains("eta"),
        "the listener draws a bar with an ETA for the incoming file: {drawn:?}"
    );
}
