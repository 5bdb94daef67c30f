//! `listen --serve` and `pull`: listing, whole files, glob selections, one
//! safetensors stream on stdout, and clear errors for what does not exist.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A served directory: two safetensors shards with layer tensors and metadata,
/// an .npy file, and a big-endian Fortran .npy given on its own.
fn served(dir: &Path) -> (PathBuf, PathBuf) {
    let serve = dir.join("serve");
    std::fs::create_dir(&serve).unwrap();
    python(
        r#"
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(1)
save_file({f"model.layers.{i}.weight": rng.standard_normal((4, 4)).astype(np.float32) for i in range(0, 10)},
          "serve/shard-1.safetensors", metadata={"format": "pt"})
save_file({**{f"model.layers.{i}.weight": rng.standard_normal((2, 3)).astype(np.float16) for i in range(10, 20)},
           "weird[0]*": np.arange(3, dtype=np.int64), "a/b.c": np.ones(2, dtype=np.uint8)},
          "serve/shard-2.safetensors", metadata={"format": "pt", "shard": "2"})
np.save("serve/embed.npy", rng.standard_normal((5, 2)).astype(np.float32))
np.save("fortran.npy", np.asfortranarray(np.arange(12, dtype=">f8").reshape(3, 4)))
np.save("cplx.npy", (np.arange(3) + 1j).astype(">c8"))
np.save("cplx128.npy", np.ones(3, dtype=np.complex128))
"#,
        dir,
    );
    (serve, dir.join("fortran.npy"))
}

fn pull(ticket: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["pull", "--relay", "disabled", ticket];
    all.extend_from_slice(args);
    run(&all)
}

#[test]
fn lists_every_served_tensor_plain_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, fortran) = served(dir.path());
    python(
        r#"
import numpy as np
from safetensors.numpy import save_file
save_file({"two\nlines\x1b[31m\x7f\u009b\u202e": np.zeros(1, dtype=np.uint8)}, "odd.safetensors")
"#,
        dir.path(),
    );
    let odd = dir.path().join("odd.safetensors");
    let listener = Listener::start(&[
        "--serve",
        serve.to_str().unwrap(),
        "--serve",
        fortran.to_str().unwrap(),
        "--serve",
        odd.to_str().unwrap(),
    ]);
    let plain = pull(&listener.ticket, &["--list"]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let plain = text(&plain.stdout);
    assert_eq!(plain.lines().count(), 10 + 12 + 1 + 1 + 1, "{plain}");
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with("model.layers.3.weight\tF32\t[4, 4]\t64\tshard-1.safetensors")),
        "{plain}"
    );
    assert!(
        plain.contains(r"two\nlines\u{1b}[31m\u{7f}\u{9b}\u{202e}") && !plain.contains('\x1b'),
        "a name from the network is printed escaped, on one line: {plain}"
    );
    let some = pull(&listener.ticket, &["--list", "model.layers.1?.*"]);
    assert_eq!(
        text(&some.stdout).lines().count(),
        10,
        "--list takes patterns"
    );
    assert_one_line_error(&pull(&listener.ticket, &["--list", "nothing*"]), "nothing*");

    let json = pull(&listener.ticket, &["--list", "--json"]);
    // DEL, C1 and bidirectional controls, which JSON itself lets through,
    // are escaped too; a parser reads the name back exactly.
    let raw: Vec<char> = text(&json.stdout)
        .chars()
        .filter(|&c| c != '\n' && tensor_iroh::escape::is_unprintable(c))
        .collect();
    assert!(raw.is_empty(), "{raw:?} reached stdout raw");
    let lines = json_lines(&json);
    assert!(
        lines
            .iter()
            .any(|line| line["name"] == "two\nlines\x1b[31m\x7f\u{9b}\u{202e}"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 25);
    for line in &lines {
        assert_eq!(line["event"], "tensor");
        for key in ["name", "dtype", "shape", "bytes", "file"] {
            assert!(line.get(key).is_some(), "{line} lacks {key}");
        }
    }
    let fortran_entry = lines.iter().find(|l| l["file"] == "fortran.npy").unwrap();
    assert_eq!(fortran_entry["dtype"], "F64");
    assert_eq!(fortran_entry["shape"], serde_json::json!([3, 4]));
    assert_eq!(fortran_entry["name"], "fortran");
}

#[test]
fn pulls_everything_byte_identical_and_globs_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, _) = served(dir.path());
    let listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    let all = dir.path().join("all");
    let output = pull(&listener.ticket, &["--out", all.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for name in ["shard-1.safetensors", "shard-2.safetensors", "embed.npy"] {
        assert!(
            std::fs::read(serve.join(name)).unwrap() == std::fs::read(all.join(name)).unwrap(),
            "{name}"
        );
    }

    let some = dir.path().join("some");
    let output = pull(
        &listener.ticket,
        &[
            "model.layers.1[0-5].*",
            "model.layers.2.*",
            "embed",
            "--out",
            some.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        std::fs::read(serve.join("embed.npy")).unwrap()
            == std::fs::read(some.join("embed.npy")).unwrap()
    );
    python(
        r#"
import numpy as np
from safetensors import safe_open
with safe_open("some/shard-1.safetensors", "np") as f, safe_open("serve/shard-1.safetensors", "np") as src:
    assert sorted(f.keys()) == ["model.layers.2.weight"], f.keys()
    assert f.metadata() == {"format": "pt"}
    assert np.array_equal(f.get_tensor("model.layers.2.weight"), src.get_tensor("model.layers.2.weight"))
with safe_open("some/shard-2.safetensors", "np") as f, safe_open("serve/shard-2.safetensors", "np") as src:
    assert sorted(f.keys()) == [f"model.layers.{i}.weight" for i in range(10, 16)], f.keys()
    assert f.metadata() == {"format": "pt", "shard": "2"}
    for k in f.keys():
        a, b = f.get_tensor(k), src.get_tensor(k)
        assert a.dtype == b.dtype == np.float16 and np.array_equal(a, b), k
"#,
        dir.path(),
    );

    // Patterns that select every tensor of a file bring the file itself.
    let every = dir.path().join("every");
    let output = pull(
        &listener.ticket,
        &["model.layers.[0-9].*", "--out", every.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        std::fs::read(serve.join("shard-1.safetensors")).unwrap()
            == std::fs::read(every.join("shard-1.safetensors")).unwrap(),
        "every tensor of shard-1 selected: the copy is byte-identical"
    );
}

#[test]
fn star_crosses_dots_and_slashes_and_exact_names_win() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, _) = served(dir.path());
    let listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    let out = dir.path().join("out");
    let output = pull(
        &listener.ticket,
        &["a*c", "weird[0]*", "--out", out.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    python(
        r#"
from safetensors import safe_open
with safe_open("out/shard-2.safetensors", "np") as f:
    assert sorted(f.keys()) == ["a/b.c", "weird[0]*"], f.keys()
"#,
        dir.path(),
    );
}

#[test]
fn stdout_is_one_loadable_safetensors_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, fortran) = served(dir.path());
    let cplx = dir.path().join("cplx.npy");
    let cplx128 = dir.path().join("cplx128.npy");
    let listener = Listener::start(&[
        "--serve",
        serve.to_str().unwrap(),
        "--serve",
        fortran.to_str().unwrap(),
        "--serve",
        cplx.to_str().unwrap(),
        "--serve",
        cplx128.to_str().unwrap(),
    ]);
    let output = pull(
        &listener.ticket,
        &["fortran", "embed", "model.layers.1?.*", "--stdout"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    std::fs::write(dir.path().join("stream.safetensors"), &output.stdout).unwrap();
    python(
        r#"
import numpy as np
from safetensors.numpy import load_file
d = load_file("stream.safetensors")
assert sorted(d) == sorted(["fortran", "embed"] + [f"model.layers.{i}.weight" for i in range(10, 20)]), sorted(d)
assert np.array_equal(d["fortran"], np.load("fortran.npy")) and d["fortran"].dtype == np.float64
assert np.array_equal(d["embed"], np.load("serve/embed.npy"))
"#,
        dir.path(),
    );
    // No pattern: every served tensor, in one stream.
    let whole = Listener::start(&["--serve", serve.to_str().unwrap()]);
    let everything = pull(&whole.ticket, &["--stdout"]);
    assert!(everything.status.success(), "{}", text(&everything.stderr));
    std::fs::write(
        dir.path().join("everything.safetensors"),
        &everything.stdout,
    )
    .unwrap();
    python(
        r#"
from safetensors.numpy import load_file
d = load_file("everything.safetensors")
assert len(d) == 23 and "embed" in d and "weird[0]*" in d, sorted(d)
"#,
        dir.path(),
    );
    // One safetensors file, all of it: the file itself, byte for byte.
    let shard = serve.join("shard-2.safetensors");
    let single = Listener::start(&["--serve", shard.to_str().unwrap()]);
    let all = pull(&single.ticket, &["--stdout"]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert!(
        all.stdout == std::fs::read(&shard).unwrap(),
        "not the served file"
    );
    let some = pull(&single.ticket, &["model.layers.1?.*", "--stdout"]);
    assert!(some.status.success(), "{}", text(&some.stderr));
    std::fs::write(dir.path().join("some.safetensors"), &some.stdout).unwrap();
    python(
        r#"
from safetensors.numpy import load_file
d = load_file("some.safetensors")
assert sorted(d) == sorted(f"model.layers.{i}.weight" for i in range(10, 20)), sorted(d)
"#,
        dir.path(),
    );

    let complex = pull(&listener.ticket, &["cplx", "--stdout"]);
    assert!(complex.status.success(), "{}", text(&complex.stderr));
    std::fs::write(dir.path().join("complex.safetensors"), &complex.stdout).unwrap();
    python(
        r#"
import numpy as np
from safetensors.numpy import load_file
d = load_file("complex.safetensors")
assert d["cplx"].dtype == np.complex64 and np.array_equal(d["cplx"], np.load("cplx.npy")), d
"#,
        dir.path(),
    );
    let complex = pull(&listener.ticket, &["cplx128", "--stdout"]);
    assert_one_line_error(&complex, "complex");
    assert!(
        complex.stdout.is_empty(),
        "nothing on stdout after a refusal"
    );
}

#[test]
fn non_native_npy_files_larger_than_a_chunk_stream_converted() {
    // Over a chunk each, so several stripes read them at once, and after
    // one another, so pieces cut through elements.
    let dir = tempfile::tempdir().unwrap();
    python(
        r#"
import numpy as np
rng = np.random.default_rng(7)
np.save("fortran.npy", np.asfortranarray(rng.standard_normal((1000, 1500))))
np.save("big_endian.npy", rng.standard_normal((3001, 1001)).astype(">f4"))
np.save("fortran_3d.npy", np.asfortranarray(rng.standard_normal((70, 90, 130)).astype(">c8")))
"#,
        dir.path(),
    );
    let served: Vec<String> = ["fortran", "big_endian", "fortran_3d"]
        .iter()
        .flat_map(|name| {
            let path = dir.path().join(format!("{name}.npy"));
            ["--serve".to_string(), path.to_str().unwrap().to_string()]
        })
        .collect();
    let served: Vec<&str> = served.iter().map(String::as_str).collect();
    let listener = Listener::start(&served);
    let output = pull(
        &listener.ticket,
        &["big_endian", "fortran", "fortran_3d", "--stdout"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    std::fs::write(dir.path().join("stream.safetensors"), &output.stdout).unwrap();
    python(
        r#"
import numpy as np
from safetensors.numpy import load_file
d = load_file("stream.safetensors")
for name in ["fortran", "big_endian", "fortran_3d"]:
    want = np.load(f"{name}.npy")
    assert d[name].shape == want.shape and np.array_equal(d[name], want), name
assert d["fortran"].dtype == np.float64 and d["big_endian"].dtype == np.float32
"#,
        dir.path(),
    );
}

#[test]
fn clashing_names_and_unmatched_patterns_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, _) = served(dir.path());
    let listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    let out = dir.path().join("out");
    let missing = pull(
        &listener.ticket,
        &["model.*", "no.such.*", "--out", out.to_str().unwrap()],
    );
    assert_one_line_error(&missing, "no.such.*");
    assert!(files_below(&out).is_empty());
    // The .npy tensor "embed" and a safetensors tensor of the same name cannot share a stream.
    let twin = serve.join("twin.safetensors");
    std::fs::write(
        &twin,
        safetensors_bytes(&[("embed", "U8", &[1], &[1])], None),
    )
    .unwrap();
    drop(listener);
    let listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    assert_one_line_error(&pull(&listener.ticket, &["embed", "--stdout"]), "embed");
}

#[test]
fn eight_pullers_at_once_and_collisions() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, _) = served(dir.path());
    let big = noise(20 << 20, 5);
    std::fs::write(
        serve.join("big.safetensors"),
        safetensors_bytes(&[("big", "U8", &[big.len() as u64], &big)], None),
    )
    .unwrap();
    let listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    // Half pull every file, half only the big one, which then travels on
    // several streams (more than the listener takes at once, so some get fewer).
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (ticket, out) = (listener.ticket.clone(), dir.path().join(format!("p{i}")));
            std::thread::spawn(move || {
                let out_arg = out.to_str().unwrap();
                let args: &[&str] = if i % 2 == 0 {
                    &["--out", out_arg]
                } else {
                    &["big", "--out", out_arg]
                };
                (pull(&ticket, args), out)
            })
        })
        .collect();
    for handle in handles {
        let (output, out) = handle.join().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(
            std::fs::read(out.join("big.safetensors")).unwrap()
                == std::fs::read(serve.join("big.safetensors")).unwrap()
        );
    }
    let again = dir.path().join("p0");
    let output = pull(
        &listener.ticket,
        &["embed", "--out", again.to_str().unwrap(), "--json"],
    );
    assert!(output.status.success());
    assert_eq!(
        json_lines(&output)[0]["stored_as"],
        "embed.npy",
        "an identical file already there is kept, not stored twice"
    );
    assert!(!again.join("embed.1.npy").exists());
    let forced = pull(
        &listener.ticket,
        &["embed", "--out", again.to_str().unwrap(), "--force"],
    );
    assert!(forced.status.success());
    assert!(!again.join("embed.1.npy").exists());
    // A file of several chunks already there does not cross again, and pull says so.
    let repeat = pull(&listener.ticket, &["--out", again.to_str().unwrap()]);
    assert!(repeat.status.success(), "{}", text(&repeat.stderr));
    assert!(
        text(&repeat.stderr)
            .contains("big.safetensors: 1 tensor, 20.00 MiB, already there: nothing received"),
        "{}",
        text(&repeat.stderr)
    );
}

#[test]
fn changed_served_files_are_served_as_they_are_now_or_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, _) = served(dir.path());
    let mut listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    std::fs::remove_file(serve.join("embed.npy")).unwrap();
    let bytes = std::fs::read(serve.join("shard-1.safetensors")).unwrap();
    std::fs::write(
        serve.join("shard-1.safetensors"),
        &bytes[..bytes.len() - 10],
    )
    .unwrap();
    // Saved again with other tensors, as a training job does.
    python(
        r#"
import numpy as np
from safetensors.numpy import save_file
save_file({"model.layers.12.weight": np.full((3, 3), 7, dtype=np.float32),
           "new.bias": np.arange(4, dtype=np.int32)},
          "serve/shard-2.safetensors")
"#,
        dir.path(),
    );
    let out = dir.path().join("out");
    // Gone, or no longer a valid file: no longer listed.
    assert_one_line_error(
        &pull(&listener.ticket, &["embed", "--out", out.to_str().unwrap()]),
        "no served tensor matches \"embed\"",
    );
    assert_one_line_error(
        &pull(
            &listener.ticket,
            &["model.layers.1.weight", "--out", out.to_str().unwrap()],
        ),
        "no served tensor matches \"model.layers.1.weight\"",
    );
    assert!(
        files_below(&out).iter().all(|f| !f.starts_with("embed")),
        "{:?}",
        files_below(&out)
    );
    assert!(listener.is_running());

    let listed = pull(&listener.ticket, &["--list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout) + &text(&listed.stderr);
    assert!(listed.contains("new.bias"), "{listed}");
    assert!(!listed.contains("model.layers.15"), "{listed}");
    let fresh = pull(
        &listener.ticket,
        &["model.layers.12.*", "new.*", "--out", out.to_str().unwrap()],
    );
    assert!(fresh.status.success(), "{}", text(&fresh.stderr));
    assert_eq!(
        std::fs::read(out.join("shard-2.safetensors")).unwrap(),
        std::fs::read(serve.join("shard-2.safetensors")).unwrap(),
        "the file as it is now, whole"
    );
}

#[test]
fn serving_listeners_take_uploads_only_with_out() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, fortran) = served(dir.path());
    let serving = Listener::start(&["--serve", serve.to_str().unwrap()]);
    assert_one_line_error(
        &send(&serving.ticket, &[&fortran], &[]),
        "only serves files",
    );
    let out = dir.path().join("uploads");
    let both = Listener::start(&[
        "--serve",
        serve.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(send(&both.ticket, &[&fortran], &[]).status.success());
    assert!(out.join("fortran.npy").exists());
}

#[test]
fn bad_tickets_and_unreachable_servers() {
    assert_one_line_error(&pull("nonsense", &["--list"]), "invalid ticket");
    let dir = tempfile::tempdir().unwrap();
    let (serve, _) = served(dir.path());
    let listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    let ticket = listener.ticket.clone();
    drop(listener);
    assert_one_line_error(
        &pull(&ticket, &["--list", "--timeout", "3"]),
        "could not reach",
    );
}

#[test]
fn a_served_name_that_would_drive_the_terminal_reaches_it_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let serve = dir.path().join("serve");
    std::fs::create_dir(&serve).unwrap();
    std::fs::write(
        serve.join("\u{1b}[31mred.safetensors"),
        safetensors_bytes(&[("w", "U8", &[2], &[1, 2])], None),
    )
    .unwrap();
    let listener = Listener::start(&["--serve", serve.to_str().unwrap()]);
    let out = dir.path().join("out");
    let pulled = pull(&listener.ticket, &["--out", out.to_str().unwrap()]);
    assert_one_line_error(&pulled, r"\u{1b}[31mred.safetensors");
    let error = text(&pulled.stderr);
    assert!(!error.contains('\u{1b}'), "{error:?}");
    wait_until(
        std::time::Duration::from_secs(20),
        "the listener's warning",
        || listener.stderr().contains("red.safetensors"),
    );
    let warning = listener.stderr();
    assert!(!warning.contains('\u{1b}'), "{warning:?}");
    assert!(files_below(&out).is_empty(), "{:?}", files_below(&out));
}
