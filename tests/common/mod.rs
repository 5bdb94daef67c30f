//! A small harness for tests that run the real binary: listeners with their
//! tickets, commands with a deadline, and tensor files written by hand.
#![allow(dead_code)]

pub mod long_link;
pub mod netns;
pub mod peer;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Long enough for a slow CI machine, short enough that a hang fails the test.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tensor-iroh")
}

/// A running `tensor-iroh listen`, killed when dropped.
pub struct Listener {
    pub child: Child,
    pub ticket: String,
    /// Further stdout lines (after the ticket), as they come.
    pub lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Listener {
    /// Starts `listen --relay disabled ARGS` and waits for its ticket.
    pub fn start(args: &[&str]) -> Listener {
        Self::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Listener {
        let mut command = Command::new(bin());
        command
            .args(["listen", "--relay", "disabled"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("tensor-iroh starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no ticket from listen: {}", stderr.lock().unwrap()));
        let ticket = if first.starts_with('{') {
            let value: serde_json::Value = serde_json::from_str(&first).unwrap();
            value["ticket"].as_str().unwrap().to_string()
        } else {
            first
        };
        Listener {
            child,
            ticket,
            lines,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        wait_with_deadline(&mut self.child, Duration::from_secs(30))
            .expect("listener exits on SIGTERM")
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

pub fn signal(pid: i32, signal: i32) {
    // SAFETY: sending a signal to a child process we started.
    unsafe {
        libc::kill(pid, signal);
    }
}

pub fn wait_with_deadline(
    child: &mut Child,
    deadline: Duration,
) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs `tensor-iroh ARGS` to completion, failing the test if it takes longer than [`DEADLINE`].
pub fn run(args: &[&str]) -> Output {
    run_with(args, &[])
}

pub fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("tensor-iroh starts");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || read_all(stdout));
    let err = std::thread::spawn(move || read_all(stderr));
    let status = match wait_with_deadline(&mut child, DEADLINE) {
        Some(status) => status,
        None => {
            child.kill().ok();
            panic!("tensor-iroh {args:?} did not finish within {DEADLINE:?}");
        }
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn read_all(mut pipe: impl Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes).ok();
    bytes
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `send --relay disabled TICKET FILES...`, with extra flags after the files.
pub fn send(ticket: &str, files: &[&Path], extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "send".into(),
        "--relay".into(),
        "disabled".into(),
        ticket.into(),
    ];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

/// Asserts a command failed with exactly one `error: ...` line containing `expected`.
pub fn assert_one_line_error(output: &Output, expected: &str) {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "expected a failure, got success: {stderr}"
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "runtime errors exit 1: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].to_lowercase().contains(&expected.to_lowercase()),
        "error {:?} does not mention {expected:?}",
        errors[0]
    );
}

/// Every file below `dir`, hidden ones included, relative to it.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// A safetensors file from (name, dtype, shape, data) with optional metadata.
pub fn safetensors_bytes(
    tensors: &[(&str, &str, &[u64], &[u8])],
    metadata: Option<&[(&str, &str)]>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if let Some(metadata) = metadata {
        let map: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(map));
    }
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len() as u64]}),
        );
        offset += bytes.len() as u64;
        data.extend_from_slice(bytes);
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.extend_from_slice(&data);
    file
}

/// An .npy file (version 1.0) with the given header dict and data.
pub fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut text = dict.to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    file.extend_from_slice(&(text.len() as u16).to_le_bytes());
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(data);
    file
}

/// A valid safetensors file of one U8 tensor holding `data_len` noisy bytes.
pub fn safetensors_file(path: &Path, data_len: usize, seed: u64) -> PathBuf {
    let data = noise(data_len, seed);
    std::fs::write(
        path,
        safetensors_bytes(&[("w", "U8", &[data.len() as u64], &data)], None),
    )
    .unwrap();
    path.to_path_buf()
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Runs a Python script; panics with its output when it fails.
pub fn python(script: &str, cwd: &Path) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python failed (are numpy, safetensors and ml_dtypes installed? `bash scripts/test.sh` installs them):\n{}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Waits until `condition` holds, failing the test after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// The JSON objects on stdout, asserting every line is one.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    text(&output.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON on stdout: {line}"));
            assert!(value.get("event").is_some(), "no event key: {line}");
            value
        })
        .collect()
}
