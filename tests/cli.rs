//! What a user sees of the command line itself: help, version, exit codes,
//! and completion scripts that match the binary.

use std::process::Command;

fn tensor_iroh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tensor-iroh"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn committed_completions_match_the_binary() {
    let scripts = [
        ("bash", "tensor-iroh.bash"),
        ("zsh", "_tensor-iroh"),
        ("fish", "tensor-iroh.fish"),
        ("elvish", "tensor-iroh.elv"),
        ("powershell", "_tensor-iroh.ps1"),
    ];
    for (shell, file) in scripts {
        let generated = tensor_iroh(&["completions", shell]);
        assert!(generated.status.success());
        let committed = std::fs::read(format!("{}/completions/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_default();
        assert!(
            generated.stdout == committed,
            "completions/{file} is stale: run `tensor-iroh completions {shell} > completions/{file}`"
        );
    }
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for command in ["listen", "send", "pull", "bench", "id", "completions"] {
        let help = tensor_iroh(&[command, "--help"]);
        assert!(help.status.success());
        let text = String::from_utf8(help.stdout).unwrap();
        assert!(
            text.contains("Examples:"),
            "`{command} --help` shows no example"
        );
        assert!(
            text.contains(&format!("tensor-iroh {command}")),
            "`{command} --help` example does not use the command"
        );
    }
}

#[test]
fn version_and_exit_codes() {
    let version = tensor_iroh(&["--version"]);
    assert!(version.status.success());
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .contains(env!("CARGO_PKG_VERSION"))
    );

    for misuse in [
        &["send"][..],
        &["send", "t", "a.npy", "b.npy", "--name", "c.npy"],
        &["listen", "--stdout", "--json"],
        &["listen", "--stdout", "--out", "x"],
        &["bench", "--iters", "0"],
        &["bench", "--concurrency", "0"],
        &["send", "--timeout", "0", "t", "a.npy"],
        &["pull", "t", "--stdout", "--list"],
    ] {
        let usage = tensor_iroh(misuse);
        assert_eq!(
            usage.status.code(),
            Some(2),
            "a usage error exits 2: {misuse:?}"
        );
        let stderr = String::from_utf8(usage.stderr).unwrap();
        assert!(stderr.starts_with("error: "), "{misuse:?}: {stderr}");
    }

    let runtime = tensor_iroh(&["send", "not-a-ticket", "missing.npy"]);
    assert_eq!(runtime.status.code(), Some(1), "a runtime error exits 1");
    let stderr = String::from_utf8(runtime.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: invalid ticket"), "{stderr}");

    let coloured = tensor_iroh(&["--color", "always", "send", "not-a-ticket", "missing.npy"]);
    let stderr = String::from_utf8(coloured.stderr).unwrap();
    assert!(
        stderr.starts_with("\x1b[31m\x1b[1merror:\x1b[0m invalid ticket"),
        "error: is red and bold like warning: is yellow: {stderr:?}"
    );
}

#[test]
fn id_needs_a_key_and_prints_a_stable_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let key = key.to_str().unwrap();
    let first = tensor_iroh(&["id", "--key", key]);
    let second = tensor_iroh(&["id", "--key", key]);
    assert!(first.status.success());
    let id = String::from_utf8(first.stdout.clone()).unwrap();
    assert_eq!(id.trim().len(), 64);
    assert!(
        id.trim()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(
        first.stdout, second.stdout,
        "the same key gives the same id"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
}
