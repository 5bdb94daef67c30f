//! Two network namespaces, a sender's and a listener's, each joined to the
//! caller's namespace by a veth pair and to nothing else: whatever the caller
//! relays between 10.201.0.1 and 10.202.0.1 is the only way from one to the
//! other, so iroh cannot find a cleaner path around it.
//!
//! Every pair uses those same addresses, so two pairs at once would route one
//! pair's datagrams into the other's namespaces: a pair holds a lock on a
//! file for as long as it exists, and the next one, in this process or any
//! other, waits for it.

use std::process::{Command, Stdio};

/// Two namespaces, each joined to this one by a veth pair, removed on drop.
pub struct Namespaces {
    pub sender: String,
    pub listener: String,
    tag: u32,
    /// Dropped after the namespaces are removed, which lets the next pair in.
    _lock: std::fs::File,
}

impl Namespaces {
    /// Namespaces for a bench, or None where this machine cannot make them,
    /// which the bench then says it skipped.
    pub fn for_test() -> Option<Namespaces> {
        Namespaces::make()
            .map_err(|reason| eprintln!("skipped: {reason}"))
            .ok()
    }

    /// Namespaces for a test, which fails (never passes unseen) where this
    /// machine cannot make them: such tests are `#[ignore]`d with the reason
    /// and run where root is (`scripts/test.sh` runs them there).
    #[allow(dead_code, reason = "the benches skip rather than fail")]
    pub fn required() -> Namespaces {
        Namespaces::make().unwrap_or_else(|reason| panic!("{reason}"))
    }

    fn make() -> Result<Namespaces, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        // One pair for each call: tests of one file run at once in one
        // process, and a second pair under the same names would fail (and
        // its drop would remove the first).
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
        Namespaces::create(std::process::id() % 100_000 * 100 + call)
    }

    /// Why not, where namespaces cannot be made (no root, no `ip netns`).
    fn create(tag: u32) -> Result<Namespaces, String> {
        let namespaces = Namespaces {
            sender: format!("ti-s{tag}"),
            listener: format!("ti-l{tag}"),
            tag,
            _lock: lock().ok_or("cannot lock the namespaces' lock file")?,
        };
        let script = format!(
            "set -e
             ip netns add {s}; ip netns add {l}
             ip link add tis{tag} type veth peer name tisp{tag}
             ip link add til{tag} type veth peer name tilp{tag}
             ip link set tisp{tag} netns {s}; ip link set tilp{tag} netns {l}
             ip addr add 10.201.0.1/24 dev tis{tag}; ip link set tis{tag} up
             ip addr add 10.202.0.1/24 dev til{tag}; ip link set til{tag} up
             ip -n {s} addr add 10.201.0.2/24 dev tisp{tag}; ip -n {s} link set tisp{tag} up; ip -n {s} link set lo up
             ip -n {l} addr add 10.202.0.2/24 dev tilp{tag}; ip -n {l} link set tilp{tag} up; ip -n {l} link set lo up",
            s = namespaces.sender,
            l = namespaces.listener,
        );
        let made = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output();
        match made {
            Ok(made) if made.status.success() => Ok(namespaces),
            Ok(made) => Err(format!(
                "`ip netns` could not make two namespaces joined by veth pairs: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            )),
            Err(err) => Err(format!("cannot run sh: {err}")),
        }
    }
}

/// The lock every pair holds (see the module's documentation), once it is
/// ours; None if the lock file cannot be opened.
fn lock() -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("tensor-iroh-netns.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    // SAFETY: flock on a file descriptor that `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "waiting for the namespaces in use to go ({} is locked)",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return None;
        }
    }
    Some(file)
}

impl Namespaces {
    /// Each namespace with the name of its end of its veth pair, sender's
    /// first: what leaves a namespace leaves through it (a qdisc there shapes
    /// what that side sends).
    pub fn inner_veths(&self) -> [(&str, String); 2] {
        [
            (&self.sender, format!("tisp{}", self.tag)),
            (&self.listener, format!("tilp{}", self.tag)),
        ]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.listener] {
            Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status()
                .ok();
        }
    }
}
