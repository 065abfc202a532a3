//! Debian's sipp (package `sip-tester`) run as a process inside a network namespace, as a
//! fleet of phones: each sipp call is one phone registering and refreshing
//! (`tests/sipp/register_refresh.xml`) or unregistering (`tests/sipp/unregister.xml`).
//!
//! Users come from an injection CSV the harness writes (`user;mac`): user names are
//! [`user_name`]`(first_user + i)`, MACs [`user_mac`] of the same number. One socket
//! serves all phones (`-t u1` / `-t t1`), so every Contact has the same address and port.
//! The summary is read from sipp's `-trace_stat` and `-trace_counts` CSV files.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{
    netns::NetNs,
    process::{TempDir, stop_child, workspace_root},
};

/// How the phones talk to the target: one socket for all phones either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `-t u1`: one UDP socket; sipp retransmits (T1 = 500 ms).
    Udp,
    /// `-t t1`: one TCP connection.
    Tcp,
}

impl Transport {
    fn sipp_mode(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }

    /// `udp` or `tcp`, as in a `transport=` URI parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// What the fleet does.
#[derive(Clone, Debug)]
pub struct FleetOpts {
    /// How many phones (sipp calls, `-m`); all may be open at once (`-l`).
    pub users: u32,
    /// The number of the first phone: phones are `first_user .. first_user + users`.
    pub first_user: u32,
    pub transport: Transport,
    /// The Expires header of every REGISTER.
    pub expires: u32,
    /// How many refreshes after the first registration (same Call-ID, CSeq + 1).
    pub refreshes: u32,
    /// The pause before each refresh (`-d`).
    pub refresh_interval: Duration,
    /// New phones per second (`-r`).
    pub rate: u32,
    /// The whole run is bounded by this (`-timeout`, an error when reached).
    pub timeout: Duration,
    /// Answer a 401 challenge with digest credentials: user = the phone's user name.
    pub password: Option<String>,
    /// The domain of the Request-URI, From and To; `None`: the target's IP address (in
    /// brackets for IPv6, as sipp's `[local_ip]` is).
    pub domain: Option<String>,
    /// The local port of sipp's socket (the Contact port). Two fleets in one namespace
    /// at the same time need different ports; an unregister fleet needs the port the
    /// registering fleet used, so its Contacts match.
    pub local_port: u16,
    /// A phone that waits this long for a response fails (`-recv_timeout`).
    pub response_timeout: Duration,
}

impl Default for FleetOpts {
    fn default() -> Self {
        Self {
            users: 100,
            first_user: 100_000,
            transport: Transport::Udp,
            expires: 3600,
            refreshes: 0,
            refresh_interval: Duration::from_secs(1),
            rate: 1000,
            timeout: Duration::from_secs(30),
            password: None,
            domain: None,
            local_port: 5060,
            response_timeout: Duration::from_secs(10),
        }
    }
}

/// What a sipp run did.
#[derive(Clone, Debug, Default)]
pub struct FleetSummary {
    /// Phones (calls) started.
    pub created: u64,
    /// Phones that went through the whole scenario.
    pub successful: u64,
    /// Phones that failed (timeout, unexpected message, transport error).
    pub failed: u64,
    /// Requests sent, first transmissions only.
    pub requests_sent: u64,
    /// UDP retransmissions of requests.
    pub retransmissions: u64,
    /// Responses received that the scenario expected.
    pub responses: u64,
    /// Responses that no step of the scenario expected.
    pub unexpected: u64,
    /// Receive steps that timed out.
    pub timeouts: u64,
    /// sipp's exit code: 0 every call succeeded, 1 some failed, 97 internal exit, 99 no
    /// call processed, 255/254 fatal error (e.g. a scenario error); `None` when it died
    /// of a signal.
    pub exit_code: Option<i32>,
    /// The harness killed it: it overran its own `-timeout` by 10 s.
    pub killed: bool,
    pub elapsed: Duration,
    /// The end of sipp's error log and stderr, for assertion messages.
    pub errors: String,
    /// Every message sent and received, when traced (calls).
    pub messages: String,
}

impl FleetSummary {
    /// Every phone started and succeeded, and sipp said so.
    pub fn all_ok(&self, users: u32) -> bool {
        self.exit_code == Some(0) && self.successful == u64::from(users) && self.failed == 0
    }
}

/// The user name of phone `n`.
pub fn user_name(n: u32) -> String {
    n.to_string()
}

/// The MAC of phone `n`: 12 upper-case hex digits, Cisco's OUI 00:24:14 then `n`.
/// The user names of phones `first .. first + count`.
pub fn user_names(first: u32, count: u32) -> std::collections::BTreeSet<String> {
    (first..first + count).map(user_name).collect()
}

pub fn user_mac(n: u32) -> String {
    format!("002414{:06X}", n & 0x00FF_FFFF)
}

/// One phone of a call (`call_uac.xml` or `call_uas.xml`): it registers, then calls
/// `callee` or answers.
#[derive(Clone, Debug)]
pub struct CallOpts {
    pub user: String,
    /// Whom to call; `None`: answer a call instead.
    pub callee: Option<String>,
    pub domain: String,
    pub transport: Transport,
    /// The local port (the Contact port).
    pub local_port: u16,
    /// The Call-ID of both phones' every request (see `call_uac.xml`).
    pub call_id: String,
    /// How long the caller holds the call between ACK and BYE.
    pub hold: Duration,
    pub timeout: Duration,
}

/// A running sipp; killed by PID on drop if it still runs.
pub struct Sipp {
    child: Option<Child>,
    pid: u32,
    started: Instant,
    limit: Duration,
    // Last: removed after the process is stopped.
    dir: TempDir,
}

impl Sipp {
    /// Runs `register_refresh.xml` for the fleet from `local_ip` (an address of `ns`) to
    /// `target` and waits for the end.
    pub fn register_fleet(ns: &NetNs, local_ip: IpAddr, target: SocketAddr, opts: &FleetOpts) -> FleetSummary {
        Self::spawn_fleet(ns, local_ip, target, opts).wait()
    }

    /// Runs `unregister.xml` (Expires: 0 for each phone's Contact) and waits for the end.
    /// `opts` must name the same users, transport and local port as the registration.
    pub fn unregister_fleet(ns: &NetNs, local_ip: IpAddr, target: SocketAddr, opts: &FleetOpts) -> FleetSummary {
        Self::spawn(ns, local_ip, target, opts, "unregister.xml").wait()
    }

    /// Starts `register_refresh.xml` for the fleet without waiting (for tests that act
    /// while the phones register, e.g. kill the registrar).
    pub fn spawn_fleet(ns: &NetNs, local_ip: IpAddr, target: SocketAddr, opts: &FleetOpts) -> Sipp {
        Self::spawn(ns, local_ip, target, opts, "register_refresh.xml")
    }

    /// Starts one phone of a call through `target`: `call_uac.xml` when `opts.callee` is
    /// set, else `call_uas.xml`.
    pub fn spawn_call(ns: &NetNs, local_ip: IpAddr, target: SocketAddr, opts: &CallOpts) -> Sipp {
        let dir = TempDir::new("sipp-call");
        let scenario = scenario_path(if opts.callee.is_some() { "call_uac.xml" } else { "call_uas.xml" });
        let timeout_s = opts.timeout.as_secs().max(1);
        let mut cmd = ns.command("sipp");
        cmd.arg(target.to_string())
            .arg("-sf")
            .arg(&scenario)
            .args(["-key", "user", &opts.user])
            .args(["-key", "callee", opts.callee.as_deref().unwrap_or("")])
            .args(["-key", "domain", &opts.domain])
            .args(["-cid_str", &opts.call_id])
            .args(["-d", &opts.hold.as_millis().to_string()])
            .args(["-m", "1", "-l", "1"])
            .args(["-t", opts.transport.sipp_mode()])
            .args([
                "-i",
                &local_ip.to_string(),
                "-p",
                &opts.local_port.to_string(),
                "-mp",
                &(opts.local_port + 1000).to_string(),
            ])
            .args(["-recv_timeout", &(timeout_s * 1000).to_string()])
            .args(["-timeout", &format!("{timeout_s}s"), "-timeout_error"])
            .args(["-trace_msg", "-message_file"])
            .arg(dir.0.join("messages.log"));
        Self::start_traced(cmd, dir, opts.timeout)
    }

    /// Adds the statistics, counts and error traces to `cmd` (all in `dir`), starts it
    /// and allows it `timeout` plus 10 s before [`Sipp::wait`] kills it.
    fn start_traced(mut cmd: std::process::Command, dir: TempDir, timeout: Duration) -> Sipp {
        cmd.args(["-trace_stat", "-stf"])
            .arg(dir.0.join("stat.csv"))
            .args(["-fd", "1", "-trace_counts", "-trace_err", "-error_file"])
            .arg(dir.0.join("errors.log"))
            .arg("-nostdin")
            // Counts files land in the working directory.
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.0.join("screen.log")).expect("create sipp screen log"))
            .stderr(std::fs::File::create(dir.0.join("stderr.log")).expect("create sipp stderr log"));
        let child = cmd.spawn().expect("spawn sipp (is the sip-tester package installed?)");
        Sipp {
            pid: child.id(),
            child: Some(child),
            started: Instant::now(),
            limit: timeout + Duration::from_secs(10),
            dir,
        }
    }

    /// The messages sipp sent and received so far (`-trace_msg`), for assertion messages.
    pub fn messages(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("messages.log")).unwrap_or_default()
    }

    fn spawn(ns: &NetNs, local_ip: IpAddr, target: SocketAddr, opts: &FleetOpts, scenario: &str) -> Sipp {
        assert!(opts.users > 0, "a fleet needs at least one user");
        let dir = TempDir::new("sipp");
        let mut csv = String::from("SEQUENTIAL\n");
        for n in opts.first_user..opts.first_user + opts.users {
            csv.push_str(&format!("{};{};\n", user_name(n), user_mac(n)));
        }
        let users = dir.write("users.csv", &csv);
        let scenario = scenario_path(scenario);
        let domain = opts.domain.clone().unwrap_or_else(|| match target.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        });
        let timeout_s = opts.timeout.as_secs().max(1);
        let mut cmd = ns.command("sipp");
        cmd.arg(target.to_string()).arg("-sf").arg(&scenario);
        if scenario.ends_with("register_refresh.xml") {
            // A global the scenario declares: sipp refuses -set of a variable that no
            // scenario loaded before it (so after -sf) declares.
            cmd.args(["-set", "refreshes", &opts.refreshes.to_string()]);
        }
        cmd.arg("-inf")
            .arg(&users)
            .args(["-key", "expires", &opts.expires.to_string()])
            .args(["-key", "domain", &domain])
            .args(["-d", &opts.refresh_interval.as_millis().to_string()])
            .args(["-m", &opts.users.to_string(), "-l", &opts.users.to_string()])
            .args(["-r", &opts.rate.max(1).to_string(), "-rp", "1000"])
            .args(["-t", opts.transport.sipp_mode()])
            .args(["-i", &local_ip.to_string(), "-p", &opts.local_port.to_string()])
            .args(["-recv_timeout", &opts.response_timeout.as_millis().to_string()])
            .args(["-timeout", &format!("{timeout_s}s"), "-timeout_error"])
            // The digest uri is the Request-URI, not sipp's default remote_ip:remote_port.
            .args(["-auth_uri", &domain])
            .args(["-ap", opts.password.as_deref().unwrap_or("no-password-given")]);
        Self::start_traced(cmd, dir, opts.timeout)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether sipp has exited (or overran its own timeout), so that [`wait`](Self::wait)
    /// returns at once.
    pub fn is_done(&mut self) -> bool {
        let overran = Instant::now() > self.started + self.limit;
        overran || self.child.as_mut().is_none_or(|child| !matches!(child.try_wait(), Ok(None)))
    }

    /// Waits for sipp to end (killing it by PID when it overruns its own timeout by
    /// 10 s) and reads what it did.
    pub fn wait(mut self) -> FleetSummary {
        let mut child = self.child.take().expect("sipp child");
        let deadline = self.started + self.limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait sipp") {
                break Some(status);
            }
            if Instant::now() > deadline {
                stop_child(&mut child, Duration::from_secs(2));
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut summary = read_summary(&self.dir.0);
        summary.messages = self.messages();
        summary.exit_code = status.and_then(|s| s.code());
        summary.killed = status.is_none();
        summary.elapsed = self.started.elapsed();
        summary
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(2));
        }
    }
}

fn scenario_path(name: &str) -> PathBuf {
    let path = workspace_root().join("tests/sipp").join(name);
    assert!(path.is_file(), "missing sipp scenario {}", path.display());
    path
}

/// Reads the stat file (calls) and the counts file (messages) sipp left in `dir`.
fn read_summary(dir: &Path) -> FleetSummary {
    let mut summary = FleetSummary::default();
    if let Some(stat) = last_csv_row(&dir.join("stat.csv")) {
        let get = |name: &str| stat.get(name).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        summary.created = get("OutgoingCall(C)");
        summary.successful = get("SuccessfulCall(C)");
        summary.failed = get("FailedCall(C)");
    }
    let counts = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_counts.csv"));
    if let Some(row) = counts.as_deref().and_then(last_csv_row) {
        for (name, value) in &row {
            let Ok(value) = value.trim().parse::<u64>() else { continue };
            if name.ends_with("_Sent") {
                summary.requests_sent += value;
            } else if name.ends_with("_Retrans") {
                // Retransmissions of a request we sent; a `_Retrans` of a receive step
                // counts retransmitted responses, which are not ours.
                if is_send_column(&row, name) {
                    summary.retransmissions += value;
                }
            } else if name.ends_with("_Recv") {
                summary.responses += value;
            } else if name.ends_with("_Unexp") {
                summary.unexpected += value;
            } else if name.ends_with("_Timeout") {
                summary.timeouts += value;
            }
        }
    }
    let mut errors = String::new();
    for file in ["errors.log", "stderr.log"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let tail: String = text.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
        if !tail.trim().is_empty() {
            errors.push_str(&format!("--- sipp {file} (end):\n{tail}\n"));
        }
    }
    summary.errors = errors;
    summary
}

/// Whether the `<index>_<NAME>_Retrans` column belongs to a send step (one with a
/// `<index>_<NAME>_Sent` column).
fn is_send_column(row: &HashMap<String, String>, retrans: &str) -> bool {
    row.contains_key(&format!("{}_Sent", retrans.trim_end_matches("_Retrans")))
}

/// The header and the last row of a `;`-separated sipp CSV file, as name → value.
fn last_csv_row(path: &Path) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let (header, last) = match lines.as_slice() {
        [header, .., last] => (header, last),
        _ => return None,
    };
    Some(header.split(';').map(str::to_owned).zip(last.split(';').map(str::to_owned)).collect())
}
