//! Where the demo's pieces run: on this host's loopback, or (as root) in a pair of
//! network namespaces of the demo's own, joined by a veth pair, so that the proxy can
//! attach its XDP program to the veth (generic mode) and the phones' keepalives and
//! refreshes are answered in the kernel.
//!
//! The namespaces are named `rgdemo-<pid>-edge` (the proxy) and `rgdemo-<pid>-net` (the
//! phones and call servers); leftovers of a demo that no longer runs are removed at start,
//! and [`Namespaces`] removes its own on drop. Nothing touches an interface outside them.

use std::{fs::File, io, net::Ipv4Addr, os::fd::AsRawFd, path::Path, process::Command, thread::JoinHandle};

/// Prefix of the demo's namespace names.
const PREFIX: &str = "rgdemo-";
/// The veth end in the proxy's namespace (the XDP attach point).
pub const EDGE_IF: &str = "rgd-edge";
/// The veth end in the phones' namespace.
pub const NET_IF: &str = "rgd-net";
/// Address of the proxy's veth end.
pub const EDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
/// Address of the phones' (and call servers') veth end.
pub const NET_ADDR: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);

/// Why the namespaces could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("running `ip {args}`: {source}")]
    Spawn { args: String, source: io::Error },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("joining network namespace {name}: {source}")]
    Join { name: String, source: io::Error },
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let joined = args.join(" ");
    let out =
        Command::new("ip").args(args).output().map_err(|source| NetnsError::Spawn { args: joined.clone(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Failed { args: joined, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// The demo's two namespaces and the veth pair between them; deleted on drop.
#[derive(Debug)]
pub struct Namespaces {
    /// The proxy's namespace.
    pub edge: String,
    /// The phones' and call servers' namespace.
    pub net: String,
}

impl Namespaces {
    /// Creates `rgdemo-<pid>-edge` and `rgdemo-<pid>-net`, loopback up in both, and the
    /// veth pair [`EDGE_IF`] ([`EDGE_ADDR`]/24) — [`NET_IF`] ([`NET_ADDR`]/24).
    pub fn create() -> Result<Self, NetnsError> {
        remove_leftovers();
        let pid = std::process::id();
        let (edge, net) = (format!("{PREFIX}{pid}-edge"), format!("{PREFIX}{pid}-net"));
        ip(&["netns", "add", &edge])?;
        // From here on, drop removes what exists.
        let made = Self { edge, net };
        ip(&["netns", "add", &made.net])?;
        for ns in [&made.edge, &made.net] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["link", "add", EDGE_IF, "netns", &made.edge, "type", "veth", "peer", "name", NET_IF, "netns", &made.net])?;
        for (ns, dev, addr) in [(&made.edge, EDGE_IF, EDGE_ADDR), (&made.net, NET_IF, NET_ADDR)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(made)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        for ns in [&self.edge, &self.net] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Deletes `rgdemo-<pid>-*` namespaces whose demo process no longer runs.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Where a thread of the demo runs: here, or inside a named namespace.
#[derive(Clone, Debug)]
pub enum Place {
    Host,
    Netns(String),
}

impl Place {
    /// Spawns `f` on a thread that has joined this place's namespace first (sockets it
    /// creates belong there).
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>, NetnsError> {
        let ns = match self {
            Place::Host => None,
            Place::Netns(ns) => {
                let file = File::open(format!("/run/netns/{ns}"))
                    .map_err(|source| NetnsError::Join { name: ns.clone(), source })?;
                Some((ns.clone(), file))
            }
        };
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Some((name, file)) = ns {
                    // SAFETY: setns(2) on a namespace fd, for this thread only.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        // The thread cannot do its work anywhere else: no socket is made on
                        // the host by mistake.
                        panic!("setns into {name}: {}", io::Error::last_os_error());
                    }
                }
                f()
            })
            .map_err(|source| NetnsError::Join { name: name.to_owned(), source })
    }

    /// Runs `f` on a thread in this place and waits for its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
        let handle = self.spawn("demo-netns", f)?;
        handle.join().map_err(|_| NetnsError::Join {
            name: format!("{self:?}"),
            source: io::Error::other("the namespace thread panicked"),
        })
    }

    /// A command that runs `program` in this place (`ip netns exec`, which execs, so the
    /// child's PID is the program's own).
    pub fn command(&self, program: &Path) -> Command {
        match self {
            Place::Host => Command::new(program),
            Place::Netns(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(program);
                cmd
            }
        }
    }
}
