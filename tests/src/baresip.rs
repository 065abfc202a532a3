//! Debian's baresip (package `baresip-core`) run inside a network namespace as one SIP
//! phone: a generated config dir (`-f`) with one account that registers through an
//! outbound proxy, no audio or video module loaded, no user interface (no stdin).
//!
//! Registration is detected in its output, one line per REGISTER result:
//! `alice@10.201.0.1: {0/UDP/v4} 200 OK (kamailio-regedge-test) [1 binding]`.
//! Stopped with SIGTERM by PID on drop: baresip then unregisters (Expires: 0) and exits.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{
    netns::NetNs,
    process::{TempDir, stop_child},
    sipp::Transport,
};

/// Where the modules of the Debian package are.
pub const MODULE_PATH: &str = "/usr/lib/baresip/modules";

/// One baresip account.
#[derive(Clone, Debug)]
pub struct BaresipOpts {
    pub user: String,
    /// The domain of the AOR `sip:user@domain`.
    pub domain: String,
    /// The outbound proxy every request goes to (the registrar, or regedge).
    pub proxy: SocketAddr,
    pub transport: Transport,
    /// The digest password, when the registrar challenges.
    pub password: Option<String>,
    /// Registration interval in seconds (Expires of its REGISTER).
    pub regint: u32,
    /// Answer incoming calls at once (`answermode=auto`).
    pub auto_answer: bool,
    /// A loopback TCP port for the `ctrl_tcp` module (commands such as `dial`, see
    /// [`Baresip::command`]); `None` loads no control module.
    pub control_port: Option<u16>,
}

impl BaresipOpts {
    pub fn new(user: &str, domain: &str, proxy: SocketAddr) -> Self {
        Self {
            user: user.to_owned(),
            domain: domain.to_owned(),
            proxy,
            transport: Transport::Udp,
            password: None,
            regint: 60,
            auto_answer: false,
            control_port: None,
        }
    }
}

/// A running baresip; stopped by PID on drop.
pub struct Baresip {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    user: String,
    /// Log lines already looked at by [`Baresip::wait_registered`].
    consumed: usize,
    /// The namespace and port of its `ctrl_tcp` module.
    control: Option<(String, u16)>,
    // Last: removed after the process is stopped.
    _dir: TempDir,
}

impl Baresip {
    /// Starts baresip inside `ns` with one account `sip:user@domain` registering over UDP
    /// through the outbound proxy `proxy`.
    pub fn start(ns: &NetNs, user: &str, domain: &str, proxy: SocketAddr) -> Self {
        Self::start_with(ns, &BaresipOpts::new(user, domain, proxy))
    }

    pub fn start_with(ns: &NetNs, opts: &BaresipOpts) -> Self {
        let dir = TempDir::new("baresip");
        // Calls need a codec (G.711) and an audio source: a sine tone, which ausine makes in stereo at
        // 48 kHz only (baresip resamples); nothing is played.
        let mut modules = String::from("module\t\t\tg711.so\nmodule\t\t\tausine.so\n");
        if let Some(port) = opts.control_port {
            modules.push_str(&format!(
                "module_app\t\tmenu.so\nmodule_app\t\tctrl_tcp.so\nctrl_tcp_listen\t\t127.0.0.1:{port}\n"
            ));
        }
        // No sip_listen: baresip binds ephemeral ports on the namespace's addresses, so
        // several instances can share a namespace. DNS stays on the namespace's loopback
        // (nothing is resolved: every address is an IP).
        dir.write(
            "config",
            &format!(
                "poll_method\t\tepoll\n\
                 module_path\t\t{MODULE_PATH}\n\
                 module_tmp\t\taccount.so\n\
                 dns_server\t\t127.0.0.1:53\n\
                 audio_player\t\tnone\n\
                 audio_source\t\tausine,440\n\
                 ausrc_srate\t\t48000\n\
                 ausrc_channels\t\t2\n\
                 audio_alert\t\tnone\n\
                 call_max_calls\t\t1\n\
                 {modules}"
            ),
        );
        let proxy = match opts.proxy {
            SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let transport = opts.transport.as_str();
        let mut account = format!(
            "<sip:{}@{};transport={transport}>;outbound=\"sip:{proxy};transport={transport}\";regint={}",
            opts.user, opts.domain, opts.regint
        );
        if let Some(password) = &opts.password {
            account.push_str(&format!(";auth_pass={password}"));
        }
        if opts.auto_answer {
            account.push_str(";answermode=auto");
        }
        dir.write("accounts", &format!("{account}\n"));
        let log = dir.0.join("baresip.log");
        let out = std::fs::File::create(&log).expect("create baresip log");
        let mut cmd = ns.command("baresip");
        cmd.arg("-f")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .current_dir(&dir.0);
        let child = cmd.spawn().expect("spawn baresip (is the baresip-core package installed?)");
        Self {
            pid: child.id(),
            child: Some(child),
            log,
            user: opts.user.clone(),
            consumed: 0,
            control: opts.control_port.map(|port| (ns.name.clone(), port)),
            _dir: dir,
        }
    }

    /// Runs a command through `ctrl_tcp` (a JSON object in a netstring), e.g.
    /// `command("dial", "sip:1002@example.net")`; returns baresip's reply.
    pub fn command(&self, ns: &NetNs, command: &str, params: &str) -> Result<String, String> {
        use std::io::{Read, Write};
        let (_, port) = self.control.as_ref().ok_or("baresip runs without ctrl_tcp")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        let body = format!("{{\"command\":\"{command}\",\"params\":\"{params}\",\"token\":\"t1\"}}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match ns.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() > deadline => return Err(format!("ctrl_tcp at {addr}: {err}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        stream.write_all(format!("{}:{body},", body.len()).as_bytes()).map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; 4096];
        let len = stream.read(&mut reply).map_err(|e| format!("ctrl_tcp reply: {e}"))?;
        Ok(String::from_utf8_lossy(&reply[..len]).into_owned())
    }

    /// Waits until the log has a line containing `needle` (e.g. `Call established`).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until `count` log lines contain `needle`; returns the last of them.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            let found: Vec<String> = log.lines().map(strip_ansi).filter(|l| l.contains(needle)).collect();
            if found.len() >= count {
                return Ok(found[count - 1].clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "baresip printed `{needle}` {} times, not {count}, in {timeout:?}\n--- baresip log:\n{log}",
                    found.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything baresip printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the next 200 OK to its REGISTER (one not returned by an earlier call,
    /// so after a failover a second call waits for the re-registration); returns that
    /// line. Fails when baresip exits or `timeout` passes, with the last failure line
    /// (e.g. `reg: sip:alice@10.201.0.1: 401 Unauthorized (...)`) and the log.
    pub fn wait_registered(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let ok_prefix = format!("{}@", self.user);
        loop {
            let log = self.log();
            let lines: Vec<String> = log.lines().map(strip_ansi).collect();
            for (i, line) in lines.iter().enumerate().skip(self.consumed) {
                if line.starts_with(&ok_prefix) && line.contains("} 200 ") && line.contains("binding") {
                    self.consumed = i + 1;
                    return Ok(line.clone());
                }
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let why = match exited {
                Some(status) => format!("baresip exited with {status}"),
                None if Instant::now() > deadline => format!("baresip not registered after {timeout:?}"),
                None => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let last = self.registration_failures().pop().unwrap_or_else(|| "none".into());
            return Err(format!("{why}; last registration failure: {last}\n--- baresip log:\n{log}"));
        }
    }

    /// The lines where baresip reported a failed REGISTER (a final error reply, a
    /// timeout), oldest first. baresip retries by itself; a wrong password gives a 401
    /// line about every half second.
    pub fn registration_failures(&self) -> Vec<String> {
        let prefix = format!("reg: sip:{}@", self.user);
        self.log().lines().map(strip_ansi).filter(|l| l.starts_with(&prefix)).collect()
    }

    /// SIGTERM by PID (baresip unregisters, then exits), SIGKILL after `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, timeout);
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// `line` without terminal colour sequences (baresip prints warnings in red).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
