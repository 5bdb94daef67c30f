//! `listen` and `send` as a user runs them: files arrive byte-identical, names
//! never clash or escape, broken input is refused with one line, and the
//! listener survives all of it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// An .npy file of two f32 values, every byte `fill`.
fn small_npy(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    write(dir, name, &npy_bytes(dict, &[fill; 8]))
}

fn assert_same(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

/// Every safetensors dtype (with whole-byte sizes), metadata, zero-size and 0-d
/// tensors, unicode names; npy in every version, byte order and layout.
fn varied_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let dtypes: &[(&str, usize)] = &[
        ("BOOL", 1),
        ("U8", 1),
        ("I8", 1),
        ("F8_E5M2", 1),
        ("F8_E4M3", 1),
        ("F8_E8M0", 1),
        ("I16", 2),
        ("U16", 2),
        ("F16", 2),
        ("BF16", 2),
        ("I32", 4),
        ("U32", 4),
        ("F32", 4),
        ("F64", 8),
        ("I64", 8),
        ("U64", 8),
    ];
    let datas: Vec<Vec<u8>> = dtypes
        .iter()
        .enumerate()
        .map(|(i, (dtype, size))| {
            let mut data = noise(6 * size, i as u64);
            if *dtype == "BOOL" {
                data.iter_mut().for_each(|b| *b &= 1);
            }
            data
        })
        .collect();
    let names: Vec<String> = dtypes
        .iter()
        .map(|(d, _)| format!("layer.{d}.wéight/ñ"))
        .collect();
    let mut tensors: Vec<(&str, &str, &[u64], &[u8])> = dtypes
        .iter()
        .zip(&datas)
        .zip(&names)
        .map(|(((dtype, _), data), name)| (name.as_str(), *dtype, &[2u64, 3][..], data.as_slice()))
        .collect();
    tensors.push(("empty", "F32", &[0, 4], &[]));
    tensors.push(("scalar", "F64", &[], &[1, 2, 3, 4, 5, 6, 7, 8]));
    tensors.push(("fp4", "F4", &[4], &[0x12, 0x34]));
    files.push(write(
        dir,
        "all-dtypes.safetensors",
        &safetensors_bytes(&tensors, Some(&[("format", "pt"), ("note", "ünïcode")])),
    ));
    files.push(write(
        dir,
        "empty.safetensors",
        &safetensors_bytes(&[], None),
    ));
    for (name, descr, item) in [
        ("b.npy", "|b1", 1),
        ("i1.npy", "|i1", 1),
        ("u1.npy", "|u1", 1),
        ("i2.npy", "<i2", 2),
        ("u2be.npy", ">u2", 2),
        ("i4.npy", "<i4", 4),
        ("u4.npy", "<u4", 4),
        ("i8be.npy", ">i8", 8),
        ("u8.npy", "<u8", 8),
        ("f2.npy", "<f2", 2),
        ("f4be.npy", ">f4", 4),
        ("f8.npy", "<f8", 8),
        ("c8.npy", "<c8", 8),
        ("c16be.npy", ">c16", 16),
    ] {
        let mut data = noise(6 * item, item as u64);
        if descr == "|b1" {
            data.iter_mut().for_each(|b| *b &= 1);
        }
        let dict = format!("{{'descr': '{descr}', 'fortran_order': True, 'shape': (2, 3), }}");
        files.push(write(dir, name, &npy_bytes(&dict, &data)));
    }
    files.push(write(
        dir,
        "zero-d.npy",
        &npy_bytes(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (), }",
            &[9; 8],
        ),
    ));
    files.push(write(
        dir,
        "zero-size.npy",
        &npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }",
            &[],
        ),
    ));
    for version in [2u8, 3] {
        let mut text = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }".to_string();
        while !(12 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.extend_from_slice(&[version, 0]);
        bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(&[1; 12]);
        files.push(write(dir, &format!("v{version}.npy"), &bytes));
    }
    files
}

#[test]
fn every_dtype_and_layout_arrives_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let files = varied_files(dir.path());
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let refs: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    let sent = send(&listener.ticket, &refs, &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    for file in &files {
        assert_same(file, &out.join(file.file_name().unwrap()));
    }
    assert!(
        files_below(&out)
            .iter()
            .all(|f| !f.to_string_lossy().starts_with('.')),
        "no partial files are left: {:?}",
        files_below(&out)
    );
}

#[test]
fn files_written_by_numpy_and_safetensors_round_trip_and_load() {
    let dir = tempfile::tempdir().unwrap();
    python(
        r#"
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(7)
np.save("c.npy", rng.standard_normal((3, 5)).astype(np.float32))
np.save("f.npy", np.asfortranarray(rng.standard_normal((4, 6))))
np.save("big_endian.npy", np.arange(10, dtype=">i4"))
np.save("cplx.npy", (rng.standard_normal(4) + 1j).astype(np.complex64))
save_file({
    "w": rng.standard_normal((16, 8)).astype(np.float16),
    "i": np.arange(5, dtype=np.int64),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "phase": (rng.standard_normal(3) + 1j).astype(np.complex64),
}, "model.safetensors", metadata={"format": "pt", "step": "100"})
"#,
        dir.path(),
    );
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let names = [
        "c.npy",
        "f.npy",
        "big_endian.npy",
        "cplx.npy",
        "model.safetensors",
    ];
    let paths: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let sent = send(&listener.ticket, &refs, &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    for name in names {
        assert_same(&dir.path().join(name), &out.join(name));
    }
    python(
        r#"
import numpy as np
from safetensors import safe_open
for name in ["c.npy", "f.npy", "big_endian.npy", "cplx.npy"]:
    a, b = np.load(name), np.load("out/" + name)
    assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
with safe_open("model.safetensors", "np") as a, safe_open("out/model.safetensors", "np") as b:
    assert a.metadata() == b.metadata() == {"format": "pt", "step": "100"}
    for key in a.keys():
        x, y = a.get_tensor(key), b.get_tensor(key)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key
"#,
        dir.path(),
    );
}

#[test]
fn numpys_own_test_files_arrive_byte_identical_or_are_refused_as_object_arrays() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/numpy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "npy"))
        .collect();
    files.sort();
    // numpy decides which are numeric: those it loads without unpickling.
    let numeric = python(
        r#"
import os, numpy as np
for name in sorted(os.listdir(".")):
    if name.endswith(".npy"):
        try:
            np.load(name, allow_pickle=False)
            print(name)
        except ValueError:
            pass
"#,
        &fixtures,
    );
    let numeric: Vec<&str> = numeric.lines().collect();
    assert!(numeric.contains(&"win64python2.npy"), "{numeric:?}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let sent = send(&listener.ticket, &[file], &[]);
        if numeric.contains(&name) {
            assert!(sent.status.success(), "{name}: {}", text(&sent.stderr));
            assert_same(file, &out.join(name));
        } else {
            assert_one_line_error(
                &sent,
                "object arrays hold pickled Python objects and are not supported",
            );
        }
    }
    python(
        r#"
import numpy as np
a = np.load("out/win64python2.npy")
assert a.dtype == np.float64 and a.shape == (2,) and (a == 1).all(), a
"#,
        dir.path(),
    );
}

#[test]
fn taken_names_get_new_ones_and_force_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = write(
        dir.path(),
        "x.safetensors",
        &safetensors_bytes(&[("a", "U8", &[3], &[1, 2, 3])], None),
    );
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    assert!(send(&listener.ticket, &[&first], &[]).status.success());
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let second = write(
        &second_dir,
        "x.safetensors",
        &safetensors_bytes(&[("a", "U8", &[3], &[4, 5, 6])], None),
    );
    let sent = send(&listener.ticket, &[&second], &["--json"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let lines = json_lines(&sent);
    assert_eq!(lines[0]["stored_as"], "x.1.safetensors");
    assert_same(&first, &out.join("x.safetensors"));
    assert_same(&second, &out.join("x.1.safetensors"));

    let forced_dir = dir.path().join("forced");
    let forcing = Listener::start(&["--out", forced_dir.to_str().unwrap(), "--force", "--json"]);
    assert!(send(&forcing.ticket, &[&first], &[]).status.success());
    assert!(send(&forcing.ticket, &[&second], &[]).status.success());
    assert_same(&second, &forced_dir.join("x.safetensors"));
    assert_eq!(files_below(&forced_dir).len(), 1);
    let replaced: Vec<_> =
        std::iter::from_fn(|| forcing.lines.recv_timeout(Duration::from_secs(20)).ok())
            .map(|line| serde_json::from_str::<serde_json::Value>(&line).unwrap())
            .filter(|event| event["event"] == "received")
            .map(|event| event["replaced"].clone())
            .take(2)
            .collect();
    assert_eq!(
        replaced,
        [false, true],
        "the listener says what it overwrote"
    );
}

#[test]
fn simultaneous_files_of_one_name_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let mut sources = Vec::new();
    for i in 0..4u8 {
        let sub = dir.path().join(format!("s{i}"));
        std::fs::create_dir(&sub).unwrap();
        sources.push(write(
            &sub,
            "same.npy",
            &npy_bytes(
                "{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }",
                &[i; 4],
            ),
        ));
    }
    // Two of them identical, which must not make either transfer fail; the
    // listener keeps one copy of those or two, depending on which finished first.
    sources.push(sources[0].clone());
    let handles: Vec<_> = sources
        .iter()
        .map(|source| {
            let (ticket, source) = (listener.ticket.clone(), source.clone());
            std::thread::spawn(move || send(&ticket, &[&source], &[]))
        })
        .collect();
    for handle in handles {
        let output = handle.join().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    let stored = files_below(&out);
    assert!(
        stored.len() == 4 || stored.len() == 5,
        "four distinct files, the twin at most twice: {stored:?}"
    );
    let mut contents: Vec<Vec<u8>> = stored
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    contents.sort();
    contents.dedup();
    let mut expected: Vec<Vec<u8>> = sources.iter().map(|f| std::fs::read(f).unwrap()).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(contents, expected, "every file arrived, and nothing else");
}

#[test]
fn rename_and_directory_sends() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let file = small_npy(dir.path(), "a.npy", 0);
    assert!(
        send(&listener.ticket, &[&file], &["--name", "renamed.npy"])
            .status
            .success()
    );
    assert_same(&file, &out.join("renamed.npy"));

    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    let shard = write(
        &ckpt,
        "model-00001.safetensors",
        &safetensors_bytes(&[("w", "F32", &[1], &[0; 4])], None),
    );
    let index = write(
        &ckpt,
        "model.safetensors.index.json",
        br#"{"metadata":{},"weight_map":{"w":"model-00001.safetensors"}}"#,
    );
    write(&ckpt, "README.txt", b"not sent");
    let sent = send(&listener.ticket, &[&ckpt], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert_same(&shard, &out.join("ckpt/model-00001.safetensors"));
    assert_same(&index, &out.join("ckpt/model.safetensors.index.json"));
    assert!(!out.join("ckpt/README.txt").exists());
}

#[test]
fn once_stdout_writes_one_file_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    // Three chunks: a pipe must get them in order, so it takes them on one stream.
    let size = 20 << 20;
    let file = write(
        dir.path(),
        "w.safetensors",
        &safetensors_bytes(&[("w", "U8", &[size as u64], &noise(size, 3))], None),
    );
    let mut listener = std::process::Command::new(bin())
        .args(["listen", "--relay", "disabled", "--once", "--stdout"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A closed stderr must not matter to the listener: read the ticket, then hang up.
    let stderr = listener.stderr.take().unwrap();
    let ticket = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .next()
        .unwrap()
        .unwrap();
    assert!(
        ticket.starts_with("endpoint"),
        "the ticket is the first stderr line: {ticket}"
    );
    let mut stdout = listener.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).unwrap();
        bytes
    });
    // Two files would be joined into one stream: refused, nothing written.
    let other = small_npy(dir.path(), "v.npy", 7);
    let joined = send(&ticket, &[&file, &other], &[]);
    assert!(!joined.status.success());
    assert!(
        text(&joined.stderr).contains("takes a send of one file; this send has 2"),
        "{}",
        text(&joined.stderr)
    );
    let sent = send(&ticket, &[&file], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let status = wait_with_deadline(&mut listener, std::time::Duration::from_secs(20));
    assert!(status.expect("a --once listener exits").success());
    let output = std::process::Output {
        status: status.unwrap(),
        stdout: reading.join().unwrap(),
        stderr: Vec::new(),
    };
    assert!(
        output.stdout == std::fs::read(&file).unwrap(),
        "stdout holds exactly the file"
    );
}

#[test]
fn fan_out_reaches_every_listener_and_json_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (out1, out2) = (dir.path().join("one"), dir.path().join("two"));
    let data = noise(3 << 20, 11);
    let file = write(
        dir.path(),
        "w.safetensors",
        &safetensors_bytes(&[("w", "U8", &[data.len() as u64], &data)], None),
    );
    let one = Listener::start(&["--out", out1.to_str().unwrap(), "--json"]);
    let two = Listener::start(&["--out", out2.to_str().unwrap()]);
    let sent = send(&one.ticket, &[&file], &["--to", &two.ticket, "--json"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert_same(&file, &out1.join("w.safetensors"));
    assert_same(&file, &out2.join("w.safetensors"));
    let lines = json_lines(&sent);
    let b3sum = blake3::hash(&std::fs::read(&file).unwrap())
        .to_hex()
        .to_string();
    let files: Vec<_> = lines.iter().filter(|l| l["event"] == "file").collect();
    assert_eq!(files.len(), 2);
    assert!(files.iter().all(|f| f["blake3"] == b3sum.as_str()));
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary");
    for key in [
        "files",
        "bytes",
        "seconds",
        "mb_per_s",
        "sent_bytes",
        "error",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}");
    }
    assert_eq!(summary["files"], 2);
    assert!(summary["error"].is_null(), "{summary}");
    let received = one
        .lines
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let received: serde_json::Value = serde_json::from_str(&received).unwrap();
    assert_eq!(received["event"], "received");
    assert_eq!(received["blake3"], b3sum.as_str());

    // A listener named twice gets the file once.
    let twice = send(&two.ticket, &[&file], &["--to", &two.ticket, "--json"]);
    assert!(twice.status.success(), "{}", text(&twice.stderr));
    let summary = json_lines(&twice).pop().unwrap();
    assert_eq!(summary["files"], 1, "{summary}");
}

#[test]
fn broken_files_are_refused_and_the_listener_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let good = safetensors_bytes(&[("w", "F32", &[4], &[0; 16])], None);
    let overlapping = {
        let json = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json);
        bytes.extend_from_slice(&[0; 12]);
        bytes
    };
    let mut absurd_npy = npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
        &[0; 4],
    );
    absurd_npy[8] = 0xff;
    absurd_npy[9] = 0xff;
    let mut absurd_v2 = absurd_npy.clone();
    absurd_v2[6] = 2;
    absurd_v2.splice(8..10, [0xff, 0xff, 0xff, 0xff]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.safetensors", good[..good.len() - 3].to_vec()),
        ("bad-magic.npy", b"\x93NUMPX\x01\x00\x10\x00{}".to_vec()),
        (
            "absurd-header.safetensors",
            [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
        ),
        ("absurd-header.npy", absurd_npy),
        ("absurd-header-v2.npy", absurd_v2),
        ("overlap.safetensors", overlapping),
        (
            "short-data.npy",
            npy_bytes(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
                &[0; 16],
            ),
        ),
        (
            "bad-json.safetensors",
            [8u64.to_le_bytes().to_vec(), b"{\"a\":]  ".to_vec()].concat(),
        ),
        ("empty.npy", Vec::new()),
        (
            "object.npy",
            npy_bytes(
                "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                &[0; 8],
            ),
        ),
        (
            "structured.npy",
            npy_bytes(
                "{'descr': [('x', '<i4'), ('y', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                &[0; 8],
            ),
        ),
    ];
    for (name, bytes) in cases {
        let path = write(dir.path(), name, &bytes);
        let output = send(&listener.ticket, &[&path], &[]);
        assert_one_line_error(&output, name);
        assert!(
            files_below(&out).is_empty(),
            "{name} left {:?}",
            files_below(&out)
        );
    }
    let missing = dir.path().join("missing.npy");
    assert_one_line_error(&send(&listener.ticket, &[&missing], &[]), "missing.npy");
    // Opening a FIFO for reading would wait for a writer that never comes.
    let fifo = dir.path().join("fifo.npy");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let output = send(&listener.ticket, &[&fifo], &[]);
    assert_one_line_error(&output, "not a regular file");
    // One broken file among good ones: nothing at all is sent.
    let fine = write(dir.path(), "fine.safetensors", &good);
    let broken = dir.path().join("truncated.safetensors");
    assert_one_line_error(
        &send(&listener.ticket, &[&fine, &broken], &[]),
        "truncated.safetensors",
    );
    assert!(files_below(&out).is_empty());

    assert!(listener.is_running());
    assert!(send(&listener.ticket, &[&fine], &[]).status.success());
    assert_same(&fine, &out.join("fine.safetensors"));
}

#[test]
fn bad_tickets_and_unreachable_peers_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "a.npy",
        &npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        ),
    );
    assert_one_line_error(&send("garbage", &[&file], &[]), "invalid ticket");
    assert_one_line_error(&send("endpointaaaa", &[&file], &[]), "invalid ticket");

    let listener = Listener::start(&["--out", dir.path().join("out").to_str().unwrap()]);
    let ticket = listener.ticket.clone();
    drop(listener);
    let output = send(&ticket, &[&file], &["--timeout", "3"]);
    assert_one_line_error(&output, "could not reach");

    // Many files share one failed dial instead of each waiting out its own.
    let many: Vec<_> = (0..6)
        .map(|i| {
            let sub = dir.path().join(format!("m{i}"));
            std::fs::create_dir(&sub).unwrap();
            std::fs::copy(&file, sub.join("a.npy")).unwrap();
            sub.join("a.npy")
        })
        .collect();
    let refs: Vec<&Path> = many.iter().map(|p| p.as_path()).collect();
    let started = std::time::Instant::now();
    let output = send(&ticket, &refs, &["--timeout", "3"]);
    let waited = started.elapsed();
    assert_one_line_error(&output, "could not reach");
    assert!(
        waited < Duration::from_secs(6),
        "six files to an unreachable peer waited {waited:?}, more than one --timeout 3"
    );
}

#[test]
fn hostile_names_stay_inside_the_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let file = write(
        dir.path(),
        "a.npy",
        &npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        ),
    );
    for name in [
        "../evil.npy",
        "../../evil2.npy",
        "/tmp/abs-evil.npy",
        "a/b/c.npy",
        ".hidden.npy",
        "x\u{7}.npy",
        "notes.txt",
    ] {
        let output = send(&listener.ticket, &[&file], &["--name", name]);
        if output.status.success() {
            let stored = files_below(&out);
            assert!(!stored.is_empty(), "{name}: success but nothing stored");
        } else {
            assert_one_line_error(&output, "name");
        }
    }
    assert!(!dir.path().join("nested/evil.npy").exists());
    assert!(!dir.path().join("evil2.npy").exists());
    assert!(!Path::new("/tmp/abs-evil.npy").exists());
    for stored in files_below(&dir.path().join("nested")) {
        assert!(stored.starts_with("out"), "{} escaped", stored.display());
    }
}

/// Reads a safetensors file with plain Python and ml_dtypes, for the dtypes
/// numpy itself lacks.
const ML_DTYPES_READER: &str = r#"
import json, numpy as np, ml_dtypes
DTYPES = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "F32": np.float32}
def read(path):
    blob = open(path, "rb").read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(blob[8 + n + a:8 + n + b], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out, meta
def write(path, tensors, metadata):
    header, offset, datas = {"__metadata__": metadata}, 0, []
    for name, dtype, array in tensors:
        data = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        datas.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    open(path, "wb").write(len(text).to_bytes(8, "little") + text + b"".join(datas))
"#;

#[test]
fn bf16_and_fp8_from_ml_dtypes_survive_send_and_pull() {
    let dir = tempfile::tempdir().unwrap();
    python(
        &format!(
            "{ML_DTYPES_READER}
rng = np.random.default_rng(3)
write('ml.safetensors', [
    ('bf', 'BF16', rng.standard_normal((8, 8)).astype(ml_dtypes.bfloat16)),
    ('e4m3', 'F8_E4M3', rng.standard_normal(16).astype(ml_dtypes.float8_e4m3fn)),
    ('e5m2', 'F8_E5M2', rng.standard_normal(16).astype(ml_dtypes.float8_e5m2)),
], {{'format': 'ml'}})
"
        ),
        dir.path(),
    );
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let sent = send(&listener.ticket, &[&dir.path().join("ml.safetensors")], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));

    let server = Listener::start(&[
        "--serve",
        dir.path().join("ml.safetensors").to_str().unwrap(),
    ]);
    let pulled = run(&[
        "pull",
        "--relay",
        "disabled",
        &server.ticket,
        "bf",
        "e5m2",
        "--stdout",
    ]);
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    std::fs::write(dir.path().join("pulled.safetensors"), &pulled.stdout).unwrap();
    python(
        &format!(
            "{ML_DTYPES_READER}
src, meta = read('ml.safetensors')
got, got_meta = read('out/ml.safetensors')
assert got_meta == meta == {{'format': 'ml'}}
for name, array in src.items():
    assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
    assert got[name].tobytes() == array.tobytes() and np.array_equal(got[name], array, equal_nan=True), name
part, part_meta = read('pulled.safetensors')
assert sorted(part) == ['bf', 'e5m2'] and part_meta == {{'format': 'ml'}}
assert np.array_equal(part['bf'], src['bf'])
"
        ),
        dir.path(),
    );
}

/// Every file of a send is reported before the send completes, and the sender
/// hears the listener's answer before a --once listener exits. Both raced once;
/// a few rounds make a regression show.
#[test]
fn a_once_listener_reports_every_file_and_lets_the_sender_finish() {
    let dir = tempfile::tempdir().unwrap();
    let first = small_npy(dir.path(), "a.npy", 0);
    let second = write(
        dir.path(),
        "b.safetensors",
        &safetensors_bytes(&[("w", "U8", &[16], &noise(16, 1))], None),
    );
    for round in 0..6 {
        let out = dir.path().join(format!("out{round}"));
        let mut listener = Listener::start(&["--out", out.to_str().unwrap(), "--once", "--json"]);
        let sent = send(&listener.ticket, &[&first, &second], &[]);
        assert!(
            sent.status.success(),
            "round {round}: {}",
            text(&sent.stderr)
        );
        let status = wait_with_deadline(&mut listener.child, Duration::from_secs(20))
            .expect("a --once listener exits");
        assert!(status.success(), "round {round}: {}", listener.stderr());
        let events: Vec<String> = listener
            .lines
            .iter()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                event["event"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            events,
            ["received", "received", "send_complete"],
            "round {round}"
        );
    }
}

#[test]
fn json_runs_that_fail_before_sending_still_end_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let good = small_npy(dir.path(), "good.npy", 0);
    let corrupt = write(dir.path(), "corrupt.npy", b"\x93NUMPY garbage");
    let bad_ticket = "endpointnotaticket";
    for (args, failed, reason) in [
        (
            vec!["send", "--relay", "disabled", "--json", &listener.ticket],
            2,
            "corrupt.npy",
        ),
        (
            vec!["send", "--relay", "disabled", "--json", bad_ticket],
            2,
            "invalid ticket",
        ),
        (
            vec!["pull", "--relay", "disabled", "--json", bad_ticket, "w*"],
            1,
            "invalid ticket",
        ),
    ] {
        let mut args = args;
        if args[0] == "send" {
            args.extend([good.to_str().unwrap(), corrupt.to_str().unwrap()]);
        }
        let output = run(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let lines = json_lines(&output);
        assert_eq!(lines.len(), 1, "only the summary on stdout: {lines:?}");
        let summary = &lines[0];
        assert_eq!(summary["event"], "summary");
        assert_eq!(summary["files"], 0);
        assert_eq!(summary["failed"], failed, "{summary}");
        let error = summary["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{args:?}: {summary}");
        assert_eq!(
            text(&output.stderr).trim_end(),
            format!("error: {error}"),
            "the summary's error is the one stderr gives"
        );
    }
    assert!(
        files_below(&out).is_empty(),
        "nothing was sent, so nothing arrived"
    );
}

#[test]
fn each_failed_file_is_named_and_the_rest_still_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let live = Listener::start(&["--out", out.to_str().unwrap()]);
    let gone = Listener::start(&["--out", dir.path().join("gone").to_str().unwrap()]);
    let gone_ticket = gone.ticket.clone();
    drop(gone);
    let a = small_npy(dir.path(), "a.npy", 1);
    let b = small_npy(dir.path(), "b.npy", 2);
    let output = send(
        &live.ticket,
        &[&a, &b],
        &["--to", &gone_ticket, "--timeout", "2", "--json"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_same(&a, &out.join("a.npy"));
    assert_same(&b, &out.join("b.npy"));
    let lines = json_lines(&output);
    let mut failed: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "file_failed")
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    failed.sort();
    assert_eq!(failed, ["a.npy", "b.npy"], "{lines:?}");
    for line in lines.iter().filter(|l| l["event"] == "file_failed") {
        assert!(
            line["peer"].as_str().is_some_and(|p| p.len() == 64),
            "{line}"
        );
        assert!(
            !line["error"].as_str().unwrap_or_default().is_empty(),
            "{line}"
        );
    }
    let summary = lines.last().unwrap();
    assert_eq!(
        (summary["files"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(summary["error"].is_string(), "{summary}");
}

#[test]
fn a_name_must_keep_the_format_and_out_must_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let file = small_npy(dir.path(), "w.npy", 1);
    for wrong in ["w.safetensors", "w.safetensors.index.json"] {
        let output = send(&listener.ticket, &[&file], &["--name", wrong]);
        assert_one_line_error(&output, "does not fit");
    }
    assert!(files_below(&out).is_empty(), "nothing was stored");

    // Removed under a running listener, the directory comes back with the file.
    std::fs::remove_dir_all(&out).unwrap();
    assert!(send(&listener.ticket, &[&file], &[]).status.success());
    assert_same(&file, &out.join("w.npy"));

    let not_a_dir = write(dir.path(), "plain.txt", b"text");
    let output = run(&[
        "listen",
        "--relay",
        "disabled",
        "--out",
        not_a_dir.to_str().unwrap(),
    ]);
    assert_one_line_error(&output, "is not a directory");

    // Not writable even for root: fails before a ticket goes out.
    let output = run(&["listen", "--relay", "disabled", "--out", "/sys/kernel"]);
    assert_one_line_error(&output, "cannot write to output directory /sys/kernel");
    assert!(output.stdout.is_empty(), "no ticket was printed");
}

#[test]
fn a_send_of_more_files_than_open_descriptors_allowed_still_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..200u8 {
        small_npy(&many, &format!("t{i:03}.npy"), i);
    }
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    // 64 descriptors: far fewer than files, as 1024 is for a large checkpoint.
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {} send --relay disabled {} {}",
            bin(),
            listener.ticket,
            many.display()
        ))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(files_below(&out.join("many")).len(), 200);
    assert_same(&many.join("t123.npy"), &out.join("many/t123.npy"));
}

#[test]
fn bind_addresses_give_a_working_ticket_or_fail_with_one_line() {
    let taken = std::net::UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(&["listen", "--relay", "disabled", "--bind", &addr]);
    assert_one_line_error(&output, &addr);
    assert!(output.stdout.is_empty(), "no ticket was printed");

    let output = run(&["listen", "--relay", "disabled", "--bind", "224.0.0.1:0"]);
    assert_one_line_error(&output, "multicast");

    // The IPv6 wildcard is "any", as on Linux: its ticket reaches it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let any = Listener::start(&["--out", out.to_str().unwrap(), "--bind", "[::]:0"]);
    let file = small_npy(dir.path(), "a.npy", 1);
    let sent = send(&any.ticket, &[&file], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert_same(&file, &out.join("a.npy"));
}

#[test]
fn sending_again_keeps_identical_files_and_moves_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let big = safetensors_file(&dir.path().join("big.safetensors"), 20 << 20, 3);
    let small = small_npy(dir.path(), "small.npy", 7);
    let first = send(&listener.ticket, &[&big, &small], &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));

    let again = send(&listener.ticket, &[&big, &small], &["--json"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let lines = json_lines(&again);
    for line in lines.iter().filter(|l| l["event"] == "file") {
        assert_eq!(line["stored_as"], line["name"], "{line}");
    }
    let big_line = lines
        .iter()
        .find(|l| l["name"] == "big.safetensors")
        .unwrap();
    assert_eq!(
        big_line["sent_bytes"], 0,
        "an identical large file is not sent again"
    );
    assert_eq!(big_line["moved"], "none", "{big_line}");
    let said = send(&listener.ticket, &[&big], &[]);
    assert!(
        text(&said.stderr).contains("already there: nothing sent"),
        "{}",
        text(&said.stderr)
    );
    assert_eq!(
        files_below(&out),
        [PathBuf::from("big.safetensors"), PathBuf::from("small.npy")],
        "no second copies"
    );

    // One chunk of the large file changes: only that chunk crosses, and the
    // changed file is stored beside the old one, whole.
    let mut changed = std::fs::read(&big).unwrap();
    let last = changed.len() - 100;
    changed[last] ^= 0xff;
    let changed_dir = dir.path().join("changed");
    std::fs::create_dir(&changed_dir).unwrap();
    let changed_path = write(&changed_dir, "big.safetensors", &changed);
    let third = send(&listener.ticket, &[&changed_path], &["--json"]);
    assert!(third.status.success(), "{}", text(&third.stderr));
    let line = &json_lines(&third)[0];
    assert_eq!(line["stored_as"], "big.1.safetensors");
    let sent = line["sent_bytes"].as_u64().unwrap();
    assert!(
        sent <= 8 << 20,
        "only the changed chunk crossed: {sent} bytes"
    );
    assert_eq!(line["moved"], "rest", "{line}");
    assert_same(&changed_path, &out.join("big.1.safetensors"));
    assert_same(&big, &out.join("big.safetensors"));

    // A file that differs from its first chunk on is sent whole.
    let mut other = std::fs::read(&big).unwrap();
    other[1000] ^= 0xff;
    let other_path = write(&changed_dir, "other.safetensors", &other);
    let fourth = send(
        &listener.ticket,
        &[&other_path],
        &["--json", "--name", "big.safetensors"],
    );
    assert!(fourth.status.success(), "{}", text(&fourth.stderr));
    let line = &json_lines(&fourth)[0];
    assert_eq!(line["stored_as"], "big.2.safetensors");
    assert_eq!(line["sent_bytes"].as_u64(), Some(other.len() as u64));
    assert_eq!(line["moved"], "all", "{line}");
    assert_same(&other_path, &out.join("big.2.safetensors"));
}

#[test]
fn a_checkpoint_index_arrives_after_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap(), "--json"]);
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    // The shards sort after the index by name, and the first is large enough to
    // still be on its way when the small ones are done.
    safetensors_file(&ckpt.join("model-00001.safetensors"), 24 << 20, 1);
    safetensors_file(&ckpt.join("model-00002.safetensors"), 1 << 10, 2);
    write(
        &ckpt,
        "model.safetensors.index.json",
        br#"{"metadata":{},"weight_map":{"a":"model-00001.safetensors","b":"model-00002.safetensors"}}"#,
    );
    let sent = send(&listener.ticket, &[&ckpt], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let received: Vec<String> = (0..3)
        .map(|_| {
            let line = listener
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap();
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(event["event"], "received", "{event}");
            event["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        received.last().map(String::as_str),
        Some("ckpt/model.safetensors.index.json"),
        "the index comes last: {received:?}"
    );
}
