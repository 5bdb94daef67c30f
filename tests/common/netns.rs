//! Two network namespaces, a sender's and a listener's, each joined to the
//! caller's namespace by a veth pair and to nothing else: whatever the caller
//! relays between 10.201.0.1 and 10.202.0.1 is the only way from one to the
//! other, so iroh cannot find a cleaner path around it.

use std::process::{Command, Stdio};

/// Two namespaces, each joined to this one by a veth pair, removed on drop.
pub struct Namespaces {
    pub sender: String,
    pub listener: String,
}

impl Namespaces {
    /// Namespaces for a test, or None where this machine cannot make them,
    /// which the test then says it skipped.
    pub fn for_test() -> Option<Namespaces> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces need root");
            return None;
        }
        let namespaces = Namespaces::create(std::process::id() % 100_000);
        if namespaces.is_none() {
            eprintln!("skipped: `ip netns` is not available here");
        }
        namespaces
    }

    /// None where namespaces cannot be made (no root, no `ip netns`).
    pub fn create(tag: u32) -> Option<Namespaces> {
        let namespaces = Namespaces {
            sender: format!("ti-s{tag}"),
            listener: format!("ti-l{tag}"),
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
        let ok = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stderr(Stdio::null())
            .status();
        if ok.is_ok_and(|s| s.success()) {
            Some(namespaces)
        } else {
            drop(namespaces);
            None
        }
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
