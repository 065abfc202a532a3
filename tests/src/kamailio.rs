//! A real Kamailio registrar (Debian package `kamailio`) run inside a network namespace:
//! usrloc in memory, Path stored and used (RFC 3327), OPTIONS without a user answered
//! 200, REGISTER accepted without authentication unless [`KamailioOpts::with_auth`].
//!
//! The config is written from the template `tests/kamailio/registrar.cfg`. Kamailio runs
//! in the foreground (`-DD -E`) with the TLSF allocator, its own runtime dir and control
//! sockets in a [`TempDir`], stderr to a log file. It forks children that stay in its
//! process group (it is started as a group leader), so [`Kamailio::kill`] signals the
//! group: SIGKILL to the main process alone leaves the children answering SIP.
//!
//! Counters come from `kamcmd stats.get_statistics all`; bindings from `ul.dump` over
//! JSON-RPC on a FIFO, because kamcmd cannot read a reply over 64 KB (about 80 contacts).

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::OpenOptionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    netns::NetNs,
    process::{TempDir, workspace_root},
};

/// The SIP port Kamailio listens on, UDP and TCP.
pub const SIP_PORT: u16 = 5060;

static RPC_SEQUENCE: AtomicU32 = AtomicU32::new(0);
/// How Kamailio is run.
#[derive(Clone, Debug)]
pub struct KamailioOpts {
    /// Require digest authentication of every REGISTER, with this password for every user
    /// (`pv_www_authenticate`/`www_challenge` of the auth module; the authentication user
    /// must equal the To user). `None`: REGISTER is accepted without authentication.
    pub password: Option<String>,
    /// Worker processes per listening socket (`-n`; also the TCP workers).
    pub children: u32,
    /// Shared memory in MB (`-m`).
    pub shm_mb: u32,
    /// Private memory per process in MB (`-M`); must hold the largest RPC reply, which
    /// jsonrpcs builds in its own process: `ul.dump` needs about 2.5 KB per contact.
    pub pkg_mb: u32,
    /// Log level: 1 errors, 2 info, 3 debug. Benchmarks use 1 (BENCH-NOTES.md).
    pub debug: u8,
    /// How long [`Kamailio::start`] waits for the control socket to answer.
    pub ready_timeout: Duration,
    /// Ignore Path (`use_path` 0), as a call server without RFC 3327 support does: a
    /// request for a phone goes straight to the contact it stored.
    pub without_path: bool,
}

impl Default for KamailioOpts {
    fn default() -> Self {
        Self {
            password: None,
            children: 1,
            shm_mb: 256,
            pkg_mb: 64,
            debug: 2,
            ready_timeout: Duration::from_secs(10),
            without_path: false,
        }
    }
}

impl KamailioOpts {
    /// Requires digest authentication with `password` for every user.
    pub fn with_auth(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
}

/// One contact of one AOR, as `ul.dump` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// The address of record (the To user; usrloc runs without domains).
    pub aor: String,
    /// The Contact URI.
    pub contact: String,
    /// The stored Path (RFC 3327), `None` when the REGISTER had none.
    pub path: Option<String>,
    /// Seconds until the binding expires.
    pub expires: i64,
    pub call_id: String,
    pub cseq: u64,
    pub user_agent: String,
    /// The `+sip.instance` of the Contact, when given.
    pub instance: Option<String>,
    /// The received URI (set only when the config or Path asks for it).
    pub received: Option<String>,
    /// The local socket the REGISTER came in on, e.g. `udp:10.201.0.1:5060`.
    pub socket: String,
}

/// A running Kamailio registrar; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Kamailio {
    netns: String,
    address: Ipv4Addr,
    opts: KamailioOpts,
    config: PathBuf,
    ctl: PathBuf,
    fifo: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: u32,
    // Last: removed after the process is stopped.
    dir: TempDir,
}

impl Kamailio {
    /// Writes the config and starts Kamailio inside `ns`, listening on `address` port 5060
    /// (UDP and TCP); returns once its control socket answers. Panics, with the log, when
    /// it exits or does not answer within `opts.ready_timeout`.
    pub fn start(ns: &NetNs, address: Ipv4Addr, opts: KamailioOpts) -> Self {
        let dir = TempDir::new("kamailio");
        let ctl = dir.0.join("ctl.sock");
        let fifo = dir.0.join("rpc.fifo");
        // sun_path holds 108 bytes.
        assert!(
            ctl.as_os_str().len() < 100,
            "control socket path too long for a unix socket: {} (set TMPDIR to a shorter directory)",
            ctl.display()
        );
        std::fs::create_dir_all(dir.0.join("run")).expect("create runtime dir");
        let config = dir.write("kamailio.cfg", &render_config(address, &ctl, &fifo, &dir.0, &opts));
        let log = dir.0.join("kamailio.log");
        let mut kamailio =
            Self { netns: ns.name.clone(), address, opts, config, ctl, fifo, log, child: None, pid: 0, dir };
        kamailio.spawn();
        kamailio
    }

    fn spawn(&mut self) {
        // Stale files of a killed run would answer nothing and confuse the readiness check.
        let _ = std::fs::remove_file(&self.ctl);
        let _ = std::fs::remove_file(&self.fifo);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open kamailio log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "kamailio", "-f"])
            .arg(&self.config)
            .args(["-DD", "-E", "-x", "tlsf", "-Y"])
            .arg(self.dir.0.join("run"))
            .args(["-m", &self.opts.shm_mb.to_string(), "-M", &self.opts.pkg_mb.to_string()])
            .args(["-n", &self.opts.children.to_string(), "-w"])
            .arg(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            // A group of its own: the children share it, and kill() signals them all.
            .process_group(0);
        let child = cmd.spawn().expect("spawn kamailio (is the kamailio package installed?)");
        self.pid = child.id();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if self.main_exited() {
                let status = self.reap_after_group_kill();
                panic!("kamailio exited with {status:?} before it was ready:\n{}", self.log());
            }
            if self.ctl.exists() && self.fifo.exists() && self.kamcmd(&["core.version"]).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("kamailio not ready after {:?}:\n{}", self.opts.ready_timeout, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the main process has exited. It is never reaped before its process group
    /// was signalled (see [`Kamailio::reap_after_group_kill`]), so while `child` is set
    /// its PID, which is the group id, cannot have been reused.
    fn main_exited(&self) -> bool {
        self.child.is_some() && exited_unreaped(self.pid as libc::pid_t)
    }

    /// SIGKILL to the process group (children that outlived the main process, or all of
    /// them), then reaps the main process and waits until the group is gone.
    fn reap_after_group_kill(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the process group we created; its leader is our unreaped
        // child, so the id is still ours.
        unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
        let status = child.wait().ok();
        wait_group_gone(self.pid, Duration::from_secs(5));
        status
    }

    /// The PID of the main process of the last start (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where it listens for SIP (UDP and TCP).
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address.into(), SIP_PORT)
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Everything Kamailio logged (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the main process is still running.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.main_exited()
    }

    /// Runs `kamcmd` on this Kamailio's control socket (see [`kamcmd`]).
    /// Replies over 64 KB fail ("reply too big"): use [`Kamailio::jsonrpc`] for those.
    pub fn kamcmd(&self, args: &[&str]) -> Result<String, String> {
        kamcmd(&self.ctl, args)
    }

    /// All counters, `group:name` → value (`core:rcv_requests_register`,
    /// `registrar:accepted_regs`, `usrloc:location_users`, `sl:401_replies`, ...).
    /// Panics when Kamailio does not answer.
    pub fn stats(&self) -> HashMap<String, u64> {
        let text = self.kamcmd(&["stats.get_statistics", "all"]).unwrap_or_else(|e| panic!("{e}"));
        parse_stats(&text)
    }

    /// One counter, 0 when Kamailio does not have it.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// Calls `method` (without parameters) over JSON-RPC on the FIFO; the pretty-printed
    /// JSON reply. No size limit, unlike kamcmd.
    pub fn jsonrpc(&self, method: &str, timeout: Duration) -> Result<String, String> {
        // jsonrpcs refuses reply names with a dot ("Forbidden reply fifo filename").
        let name = format!("reply_{}", RPC_SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let reply_path = self.dir.0.join(&name);
        let _ = std::fs::remove_file(&reply_path);
        let c_path = std::ffi::CString::new(reply_path.as_os_str().as_bytes()).expect("path without NUL");
        // SAFETY: mkfifo on a NUL-terminated path.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            return Err(format!("mkfifo {}: {}", reply_path.display(), std::io::Error::last_os_error()));
        }
        let result = (|| {
            // Open the reply FIFO first (non-blocking: there is no writer yet), then ask.
            let mut reply = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&reply_path)
                .map_err(|e| format!("open {}: {e}", reply_path.display()))?;
            let mut request = self.open_request_fifo(timeout)?;
            let line =
                format!("{{\"jsonrpc\": \"2.0\", \"method\": \"{method}\", \"reply_name\": \"{name}\", \"id\": 1}}\n");
            request.write_all(line.as_bytes()).map_err(|e| format!("write request: {e}"))?;
            drop(request);
            read_fifo_reply(&mut reply, timeout).map_err(|e| format!("jsonrpc {method}: {e}"))
        })();
        let _ = std::fs::remove_file(&reply_path);
        let text = result?;
        if text.contains("\"error\":") {
            return Err(format!("jsonrpc {method}: {text}"));
        }
        Ok(text)
    }

    /// Opens the JSON-RPC FIFO for writing, retrying while Kamailio has not created it or
    /// not opened it for reading yet (ENOENT, ENXIO).
    fn open_request_fifo(&self, timeout: Duration) -> Result<std::fs::File, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.fifo) {
                Ok(file) => return Ok(file),
                Err(e)
                    if Instant::now() < deadline
                        && self.is_running()
                        && (e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO)) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("open {} (is kamailio running?): {e}", self.fifo.display())),
            }
        }
    }

    /// Every contact of every AOR in the location table (`ul.dump`), with its Path.
    /// Panics when Kamailio does not answer.
    pub fn contacts(&self) -> Vec<Binding> {
        let text = self.jsonrpc("ul.dump", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
        parse_ul_dump(&text)
    }

    /// The distinct AORs that have at least one contact, sorted.
    pub fn registered_aors(&self) -> Vec<String> {
        let mut aors: Vec<String> = self.contacts().into_iter().map(|b| b.aor).collect();
        aors.sort();
        aors.dedup();
        aors
    }

    /// SIGKILL to Kamailio's whole process group (main process and children), as a crash
    /// would: no reply is sent any more, the location table is lost. Waits until the
    /// processes are gone.
    pub fn kill(&mut self) {
        self.reap_after_group_kill();
    }

    /// Stops it gracefully (SIGTERM to the main process, which stops its children; SIGKILL
    /// to the group after 5 s), and waits until its processes are gone.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let pid = self.pid as libc::pid_t;
        // SAFETY: signalling our own unreaped child by its PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !exited_unreaped(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Stragglers, or a main process that ignored SIGTERM.
        self.reap_after_group_kill();
    }

    /// Starts it again with the same config (after stopping it gracefully if it still
    /// runs); the location table starts empty (usrloc is in memory).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The config from the template, placeholders replaced.
fn render_config(address: Ipv4Addr, ctl: &Path, fifo: &Path, dir: &Path, opts: &KamailioOpts) -> String {
    let template_path = workspace_root().join("tests/kamailio/registrar.cfg");
    let template =
        std::fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
    let password = opts.password.as_deref().unwrap_or("");
    assert!(
        !password.contains(['"', '\\', '\n', '@']),
        "the Kamailio password must not contain quotes, backslashes, newlines or @"
    );
    let mut defines = String::new();
    if opts.password.is_some() {
        defines.push_str("#!define WITH_AUTH\n");
    }
    if opts.without_path {
        defines.push_str("#!define WITHOUT_PATH\n");
    }
    let text = template
        .replace("@DEFINES@", &defines)
        .replace("@ADDRESS@", &address.to_string())
        .replace("@CTL_SOCKET@", &ctl.display().to_string())
        .replace("@RPC_FIFO@", &fifo.display().to_string())
        .replace("@RPC_REPLY_DIR@", &dir.display().to_string())
        .replace("@DEBUG@", &opts.debug.to_string())
        .replace("@PASSWORD@", password);
    if let Some(line) = text.lines().find(|l| (l.starts_with("#!") || !l.starts_with('#')) && has_placeholder(l)) {
        panic!("unreplaced placeholder in the Kamailio config: {line}");
    }
    text
}

/// Whether `line` still holds an `@NAME@` placeholder.
fn has_placeholder(line: &str) -> bool {
    let parts: Vec<&str> = line.split('@').collect();
    // Segments with an `@` on both sides.
    parts.len() > 2
        && parts[1..parts.len() - 1]
            .iter()
            .any(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
}

/// Reads a reply FIFO opened with O_NONBLOCK until the writer closes it.
fn read_fifo_reply(reply: &mut std::fs::File, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no complete reply after {timeout:?} ({} bytes read)", data.len()));
        }
        let mut pfd = libc::pollfd { fd: reply.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(100) as libc::c_int) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {err}"));
        }
        if n == 0 {
            continue;
        }
        // Linux reports POLLHUP on a FIFO only after a writer came and went, so EOF here
        // is the end of the reply, not "no writer yet".
        let hangup = pfd.revents & libc::POLLHUP != 0;
        loop {
            match reply.read(&mut buf) {
                Ok(0) => {
                    if hangup || !data.is_empty() {
                        return Ok(String::from_utf8_lossy(&data).into_owned());
                    }
                    break;
                }
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// Whether our child `pid` has exited, without reaping it (so its PID stays reserved).
fn exited_unreaped(pid: libc::pid_t) -> bool {
    // SAFETY: waitid with WNOWAIT only inspects; siginfo is zeroed first.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        rc == 0 && info.si_pid() == pid
    }
}

/// Waits until no live (non-zombie) process is left in process group `pgid`, so the
/// sockets are closed before a restart binds them again.
fn wait_group_gone(pgid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        if !name.as_bytes().iter().all(u8::is_ascii_digit) {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let group = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        group == Some(pgid) && state != "Z" && state != "X"
    })
}

/// `group:name = value` lines of `kamcmd stats.get_statistics all`.
pub fn parse_stats(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(" = ")?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The contacts in a pretty-printed JSON reply of `ul.dump` (one `"Key": value` a line).
pub fn parse_ul_dump(text: &str) -> Vec<Binding> {
    let mut bindings: Vec<Binding> = Vec::new();
    let mut aor = String::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix('"') else { continue };
        let Some((key, value)) = rest.split_once("\":") else { continue };
        let value = value.trim().trim_end_matches(',');
        if value.starts_with('{') || value.starts_with('[') {
            continue;
        }
        let value = json_string(value);
        let set = |v: String| if v == "[not set]" || v.is_empty() { None } else { Some(v) };
        match key {
            "AoR" => aor = value,
            "Address" => bindings.push(Binding { aor: aor.clone(), contact: value, ..Binding::default() }),
            _ => {
                let Some(b) = bindings.last_mut() else { continue };
                match key {
                    "Expires" => b.expires = value.parse().unwrap_or_default(),
                    "Call-ID" => b.call_id = value,
                    "CSeq" => b.cseq = value.parse().unwrap_or_default(),
                    "User-Agent" => b.user_agent = value,
                    "Path" => b.path = set(value),
                    "Received" => b.received = set(value),
                    "Instance" => b.instance = set(value),
                    "Socket" => b.socket = value,
                    _ => {}
                }
            }
        }
    }
    bindings
}

/// A JSON scalar as text: strings unquoted and unescaped, numbers as they are.
fn json_string(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Runs `kamcmd -s unix:<ctl> <args>`: its stdout, or what it said on failure.
pub fn kamcmd(ctl: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kamcmd")
        .arg("-s")
        .arg(format!("unix:{}", ctl.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run kamcmd: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("ERROR") || stdout.starts_with("error:") {
        return Err(format!("kamcmd {}: {}{}", args.join(" "), stderr.trim(), stdout.trim()));
    }
    Ok(stdout)
}
