//! Compression on the way (`--compress`): files arrive byte for byte whatever
//! is coded, the JSON events say what the wire carried, and a resumed or a
//! pulled file is coded like any other.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Little-endian bf16 values spread like an initialised layer's weights.
fn bf16_weights(count: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut data = Vec::with_capacity(count * 2);
    for _ in 0..count {
        let (u, v) = (uniform().max(f64::MIN_POSITIVE), uniform());
        let normal = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        let bits = ((normal * 0.02) as f32).to_bits();
        data.extend_from_slice(&((bits >> 16) as u16).to_le_bytes());
    }
    data
}

/// A checkpoint of several chunks: bf16 layers, an f32 norm, integer ids and
/// fp8 weights, so every kind of region is coded (or not) on the way.
fn checkpoint(path: &Path, layers: usize, seed: u64) -> PathBuf {
    let layer_data: Vec<Vec<u8>> = (0..layers)
        .map(|layer| bf16_weights(3 << 20, seed + layer as u64))
        .collect();
    let norm: Vec<u8> = bf16_weights(4096, seed)
        .chunks(2)
        .flat_map(|bf16| [0, 0, bf16[0], bf16[1]])
        .collect();
    let ids: Vec<u8> = (0..512u64).flat_map(u64::to_le_bytes).collect();
    let fp8 = noise(1 << 20, seed);
    let names: Vec<String> = (0..layers)
        .map(|layer| format!("layers.{layer}.weight"))
        .collect();
    let mut tensors: Vec<(&str, &str, &[u64], &[u8])> = Vec::new();
    let layer_shape = [3u64 << 20];
    for (name, data) in names.iter().zip(&layer_data) {
        tensors.push((name, "BF16", &layer_shape, data));
    }
    tensors.push(("norm.weight", "F32", &[4096], &norm));
    tensors.push(("position_ids", "I64", &[512], &ids));
    tensors.push(("head.weight", "F8_E4M3", &[1 << 20], &fp8));
    std::fs::write(path, safetensors_bytes(&tensors, None)).unwrap();
    path.to_path_buf()
}

fn event<'a>(lines: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|line| line["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {lines:?}"))
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn a_coded_send_arrives_byte_for_byte_and_says_what_the_wire_carried() {
    let dir = tempfile::tempdir().unwrap();
    let file = checkpoint(&dir.path().join("model.safetensors"), 4, 1);
    let size = std::fs::metadata(&file).unwrap().len();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap(), "--json"]);

    let coded = send(&listener.ticket, &[&file], &["--compress", "on", "--json"]);
    assert!(coded.status.success(), "{}", text(&coded.stderr));
    assert!(same_bytes(&file, &out.join("model.safetensors")));
    let lines = json_lines(&coded);
    let sent = event(&lines, "file");
    let wire = sent["sent_bytes"].as_u64().unwrap();
    assert_eq!(sent["moved"], "all", "a coded file moved whole: {sent}");
    assert!(
        wire * 10 < size * 8,
        "bf16 weights went out in {wire} wire bytes for {size}"
    );
    let ratio = sent["compression"].as_f64().unwrap();
    assert!((ratio - size as f64 / wire as f64).abs() < 0.01, "{sent}");
    assert_eq!(event(&lines, "summary")["sent_bytes"], wire);
    let received = listener
        .lines
        .recv_timeout(Duration::from_secs(20))
        .expect("a received event");
    let received: serde_json::Value = serde_json::from_str(&received).unwrap();
    assert_eq!(received["received_bytes"], wire, "{received}");

    let plain = send(
        &listener.ticket,
        &[&file],
        &["--compress", "off", "--json", "--name", "plain.safetensors"],
    );
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert!(same_bytes(&file, &out.join("plain.safetensors")));
    let sent = event(&json_lines(&plain), "file").clone();
    assert_eq!(sent["sent_bytes"], size);
    assert_eq!(sent["compression"], 1.0);
}

#[test]
fn pulls_are_coded_by_the_listener_and_arrive_as_uncoded_ones_do() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let file = checkpoint(&served.join("model.safetensors"), 3, 2);
    let listener = Listener::start(&["--serve", served.to_str().unwrap()]);
    let pull = |pattern: &str, out: &Path, compress: &str| {
        run(&[
            "pull",
            "--relay",
            "disabled",
            &listener.ticket,
            pattern,
            "--out",
            out.to_str().unwrap(),
            "--compress",
            compress,
            "--json",
        ])
    };

    let whole = dir.path().join("whole");
    let output = pull("*", &whole, "on");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(same_bytes(&file, &whole.join("model.safetensors")));
    let summary = event(&json_lines(&output), "summary").clone();
    assert!(summary["compression"].as_f64().unwrap() > 1.2, "{summary}");

    let (coded, plain) = (dir.path().join("coded"), dir.path().join("plain"));
    for (out, compress) in [(&coded, "on"), (&plain, "off")] {
        let output = pull("layers.1.*", out, compress);
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    assert!(same_bytes(
        &coded.join("model.safetensors"),
        &plain.join("model.safetensors")
    ));

    let to_stdout = |compress: &str| {
        let output = run(&[
            "pull",
            "--relay",
            "disabled",
            &listener.ticket,
            "layers.0.*",
            "norm.*",
            "--stdout",
            "--compress",
            compress,
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        output.stdout
    };
    let streamed = to_stdout("on");
    assert!(streamed.len() > 6 << 20);
    assert_eq!(streamed, to_stdout("off"));
}

#[test]
fn a_coded_send_cut_short_resumes_and_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = checkpoint(&dir.path().join("model.safetensors"), 24, 3);
    let size = std::fs::metadata(&file).unwrap().len();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);

    let mut first = Command::new(bin())
        .args(["send", "--relay", "disabled", &listener.ticket])
        .arg(&file)
        .args(["--compress", "on"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "a few checked chunks", || {
        checked_chunks(&out) >= 2
    });
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.join("model.safetensors").exists());

    let rerun = send(&listener.ticket, &[&file], &["--compress", "on", "--json"]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let sent = event(&json_lines(&rerun), "file").clone();
    assert_eq!(sent["moved"], "rest", "the rerun resumed: {sent}");
    assert!(sent["sent_bytes"].as_u64().unwrap() < size);
    assert!(same_bytes(&file, &out.join("model.safetensors")));
}

/// Chunks the listener has checked into its partial file so far: a line each
/// in its record of them.
fn checked_chunks(out: &Path) -> usize {
    files_below(out)
        .into_iter()
        .filter(|file| file.to_string_lossy().ends_with(".tensor-iroh-chunks"))
        .map(|file| {
            std::fs::read_to_string(out.join(file))
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}
