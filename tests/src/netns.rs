//! Network namespaces and veth pairs the tests create and remove themselves.
//!
//! Names carry the prefix `rgt-` and the creating process id, so leftovers of a killed
//! run are recognised and removed at the next start. Code runs inside a namespace on a
//! thread that joined it with setns(2); sockets made there keep belonging to it.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

const PREFIX: &str = "rgt-";
static SEQUENCE: AtomicU32 = AtomicU32::new(0);
static CLEANUP: Once = Once::new();

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Deletes namespaces left by test processes that no longer run.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(role: &str) -> Self {
        CLEANUP.call_once(remove_leftovers);
        let name = format!("{PREFIX}{}-{}-{role}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Joins this namespace to `other` with a veth pair: `local_if` here with
    /// `local_addr`, `other_if` there with `other_addr` (both `/prefix`), both up.
    pub fn link(&self, local_if: &str, local_addr: &str, other: &NetNs, other_if: &str, other_addr: &str, prefix: u8) {
        ip(&[
            "link",
            "add",
            local_if,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            other_if,
            "netns",
            &other.name,
        ]);
        for (ns, dev, addr) in [(self, local_if, local_addr), (other, other_if, other_addr)] {
            ns.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }
    }

    /// Routes `destination` (CIDR) via `gateway` in this namespace.
    pub fn route(&self, destination: &str, gateway: &str) {
        self.ip(&["route", "add", destination, "via", gateway]);
    }

    /// A command that runs inside the namespace (`ip netns exec`, which execs, so the
    /// child's PID is the program's own).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace fd for this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses:
/// `proxy` side `rgp0` = 10.201.<n>.1 / fd00:201:<n>::1, `phone` side `rgc0` = .2 / ::2.
pub struct VethPair {
    pub proxy: NetNs,
    pub phone: NetNs,
    pub proxy_v4: Ipv4Addr,
    pub phone_v4: Ipv4Addr,
    pub proxy_v6: Ipv6Addr,
    pub phone_v6: Ipv6Addr,
}

pub const PROXY_IF: &str = "rgp0";
pub const PHONE_IF: &str = "rgc0";

impl VethPair {
    pub fn new() -> Self {
        let proxy = NetNs::new("proxy");
        let phone = NetNs::new("phone");
        let n = (SEQUENCE.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        ip(&[
            "link",
            "add",
            PROXY_IF,
            "netns",
            &proxy.name,
            "type",
            "veth",
            "peer",
            "name",
            PHONE_IF,
            "netns",
            &phone.name,
        ]);
        let proxy_v4 = Ipv4Addr::new(10, 201, n, 1);
        let phone_v4 = Ipv4Addr::new(10, 201, n, 2);
        let proxy_v6: Ipv6Addr = format!("fd00:201:{n}::1").parse().unwrap();
        let phone_v6: Ipv6Addr = format!("fd00:201:{n}::2").parse().unwrap();
        for (ns, dev, v4, v6) in [(&proxy, PROXY_IF, proxy_v4, proxy_v6), (&phone, PHONE_IF, phone_v4, phone_v6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        Self { proxy, phone, proxy_v4, phone_v4, proxy_v6, phone_v6 }
    }
}

impl Default for VethPair {
    fn default() -> Self {
        Self::new()
    }
}
