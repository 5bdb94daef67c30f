//! Sixteen senders at once, two files each, into one listener: every file
//! arrives whole under its own name and the listener's memory stays bounded.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

const SENDERS: usize = 16;
const MEMORY_LIMIT_MIB: u64 = 256;

/// The process's anonymous resident memory in KiB, while it runs.
fn rss_anon_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|line| line.starts_with("RssAnon:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn sixteen_senders_at_once_all_arrive_intact_with_bounded_listener_memory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);

    // Each sender has a file of its own (one chunk, streamed at once) and a
    // copy of one shared file (two chunks, offered first), so the listener
    // also sorts out sixteen uploads of the same name.
    let shared = safetensors_file(&dir.path().join("shared.safetensors"), 9 << 20, 1000);
    let own: Vec<PathBuf> = (0..SENDERS)
        .map(|i| {
            let sender_dir = dir.path().join(format!("sender{i}"));
            std::fs::create_dir(&sender_dir).unwrap();
            safetensors_file(
                &sender_dir.join(format!("own{i}.safetensors")),
                3 << 20,
                i as u64,
            )
        })
        .collect();

    let peak_kib = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak_kib, samples, done, pid) = (
            peak_kib.clone(),
            samples.clone(),
            done.clone(),
            listener.pid(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_anon_kib(pid) {
                    peak_kib.fetch_max(kib, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let senders: Vec<_> = own
        .iter()
        .map(|own| {
            let (ticket, own, shared) = (listener.ticket.clone(), own.clone(), shared.clone());
            std::thread::spawn(move || send(&ticket, &[&own, &shared], &[]))
        })
        .collect();
    let outputs: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    for (i, output) in outputs.iter().enumerate() {
        assert!(
            output.status.success(),
            "sender {i} failed: {}",
            text(&output.stderr)
        );
    }
    // Uploads of the shared file that finish after another stored it find it
    // already there; the ones that overlap store copies under new names.
    let stored = files_below(&out);
    let mut expected: BTreeMap<PathBuf, &Path> = own
        .iter()
        .map(|f| (PathBuf::from(f.file_name().unwrap()), f.as_path()))
        .collect();
    expected.insert("shared.safetensors".into(), &shared);
    for name in &stored {
        let name = name.to_string_lossy();
        if name.starts_with("shared.") {
            expected.insert(PathBuf::from(name.as_ref()), &shared);
        }
    }
    assert_eq!(
        stored,
        expected.keys().cloned().collect::<Vec<_>>(),
        "every file under a distinct name, the shared one at least once, and nothing else"
    );
    assert!(
        stored.iter().all(|name| {
            let name = name.to_string_lossy();
            !name.starts_with("shared.")
                || name == "shared.safetensors"
                || name
                    .strip_prefix("shared.")
                    .and_then(|rest| rest.strip_suffix(".safetensors"))
                    .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n < SENDERS))
        }),
        "copies are numbered in order: {stored:?}"
    );
    for (name, source) in &expected {
        assert!(
            std::fs::read(out.join(name)).unwrap() == std::fs::read(source).unwrap(),
            "{} differs from {}",
            name.display(),
            source.display()
        );
    }

    assert!(
        samples.load(Ordering::Relaxed) > 0,
        "the listener's memory was sampled"
    );
    let peak_mib = peak_kib.load(Ordering::Relaxed) / 1024;
    assert!(
        peak_mib < MEMORY_LIMIT_MIB,
        "the listener's anonymous memory peaked at {peak_mib} MiB"
    );
}
