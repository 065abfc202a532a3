//! `regedge demo`: the whole system in one command, without a config.
//!
//! It runs the real proxy (this same binary, `regedge run --config <file>`, as a child
//! process stopped by PID with SIGTERM at the end), two simulated SIP call servers and two
//! simulated SCCP call servers (one failover group of two each), and a fleet of simulated
//! phones — SIP over UDP and over TCP, and SCCP — that register, refresh and keep alive.
//! A third of the way through it kills both primaries (a crash: sockets closed, state
//! lost), and brings them back past the middle; a live view reads the proxy's /metrics
//! and the call servers' own counts, and a summary ends it.
//!
//! As root it builds a pair of network namespaces of its own joined by a veth pair, runs
//! the proxy in one with its XDP program attached to the veth (generic mode) and the
//! phones and call servers in the other, so that keepalives and refreshes are answered in
//! the kernel; without root (or when that fails) everything runs on loopback addresses
//! and the proxy answers in userspace, which the view says.
//!
//! - [`config`]: the embedded config and the addresses.
//! - [`netns`]: the namespaces and threads placed in them.
//! - [`sip_server`], [`sccp_server`]: the call servers.
//! - [`phones`]: the phone fleet.
//! - [`view`], [`summary`]: what is shown while it runs and at the end.

pub mod config;
pub mod metrics_text;
pub mod netns;
pub mod phones;
pub mod sccp_server;
pub mod sip_server;
pub mod sip_text;
pub mod summary;
pub mod view;

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use self::{
    config::{Layout, SCCP_BACKENDS, SCCP_SERVER_KEEPALIVE_SECS, SIP_BACKENDS},
    metrics_text::Metrics,
    netns::{Namespaces, Place},
    phones::{Fleet, PhoneKind, Targets},
    sccp_server::SccpServer,
    sip_server::SipServer,
    summary::{Sample, Summary, Tracker},
};
use crate::metrics::names;

/// What `regedge demo` was asked.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long the demo runs.
    pub duration: Duration,
    /// Use the XDP fast path (namespaces and a veth pair) when running as root.
    pub xdp: bool,
    /// Phones of each kind, in [`PhoneKind::ALL`] order.
    pub phones: [usize; 3],
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self { duration: Duration::from_secs(60), xdp: true, phones: [12, 6, 6] }
    }
}

/// Shortest demo that still shows a failover and a fallback.
pub const MIN_DURATION: Duration = Duration::from_secs(15);

/// Reads `20s`, `90s`, `2m`, `1500ms`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 20s or 2m"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    if duration < MIN_DURATION {
        return Err(format!("{text:?}: the demo needs at least {}s", MIN_DURATION.as_secs()));
    }
    Ok(duration)
}

/// How a demo run ended.
pub enum Outcome {
    /// Ran for the whole duration.
    Completed(Summary),
    /// Stopped early by SIGINT/SIGTERM.
    Interrupted(Summary),
}

/// When the scenario kills the primaries and brings them back, as fractions of the
/// duration.
const KILL_AT: f64 = 0.3;
const REVIVE_AT: f64 = 0.6;
/// How often the demo samples (the view redraws every [`REDRAW`]).
const SAMPLE: Duration = Duration::from_millis(250);
const REDRAW: Duration = Duration::from_secs(1);

/// Runs the demo, drawing the view on stdout; the summary is for the caller to print.
pub fn run(options: &DemoOptions) -> anyhow::Result<Outcome> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted)).context("installing signal handlers")?;
    }
    let exe = std::env::current_exe().context("locating the regedge binary")?;
    let scratch = Scratch::new()?;

    // Where things run. The namespaces (when made) are dropped last, after everything in them.
    let mut notes = Vec::new();
    let namespaces = if options.xdp && is_root() {
        match Namespaces::create() {
            Ok(ns) => Some(ns),
            Err(error) => {
                notes.push(format!("no namespaces ({error}): everything on loopback"));
                None
            }
        }
    } else {
        None
    };
    let (mut layout, proxy_place, peer_place) = match &namespaces {
        Some(ns) => (
            Layout::namespaces(netns::EDGE_ADDR, netns::NET_ADDR, netns::EDGE_IF),
            Place::Netns(ns.edge.clone()),
            Place::Netns(ns.net.clone()),
        ),
        None => (Layout::loopback().context("choosing loopback addresses")?, Place::Host, Place::Host),
    };

    let mut sip_servers = SIP_BACKENDS
        .iter()
        .zip(layout.sip_servers)
        .map(|(name, addr)| {
            SipServer::start(name, addr, peer_place.clone()).with_context(|| format!("call server {name} on {addr}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut sccp_servers = SCCP_BACKENDS
        .iter()
        .zip(layout.sccp_servers)
        .map(|(name, addr)| {
            SccpServer::start(name, addr, peer_place.clone(), SCCP_SERVER_KEEPALIVE_SECS)
                .with_context(|| format!("call server {name} on {addr}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut proxy = match Proxy::start(&exe, &proxy_place, &layout, &scratch) {
        Ok(proxy) => proxy,
        Err(failure) if layout.xdp_interface.is_some() => {
            notes.push(format!("XDP unavailable ({}): answers in userspace", failure.reason));
            layout = layout.without_xdp();
            Proxy::start(&exe, &proxy_place, &layout, &scratch).map_err(|f| f.into_error(&scratch))?
        }
        Err(failure) => return Err(failure.into_error(&scratch)),
    };
    let first = proxy.scrape(&proxy_place).unwrap_or_default();
    let fastpath = describe_fastpath(&first, &layout, namespaces.as_ref(), &notes);
    let (metrics_url, admin) = match &namespaces {
        Some(ns) => (
            format!("{} (inside namespace {}: ip netns exec {} curl -s {0})", layout.metrics_url(), ns.edge, ns.edge),
            format!("ip netns exec {} regedge ctl --admin {} backends", ns.edge, layout.admin),
        ),
        None => (layout.metrics_url(), format!("regedge ctl --admin {} backends", layout.admin)),
    };

    let targets = Targets { sip: layout.sip, sccp: layout.sccp, local_ip: layout.phone_ip };
    let mut fleet = Fleet::start(&peer_place, targets, options.phones, Duration::from_secs(1))
        .context("starting the phone fleet")?;

    let started = Instant::now();
    let (kill_at, revive_at) = (options.duration.mul_f64(KILL_AT), options.duration.mul_f64(REVIVE_AT));
    let (mut killed, mut revived) = (false, false);
    let mut tracker = Tracker::default();
    tracker.event(Duration::ZERO, format!("regedge started (pid {}), {}", proxy.pid(), fastpath));
    let terminal = std::io::stdout().is_terminal();
    let mut next_draw = started;
    let mut printed = 0;
    let mut stdout = std::io::stdout();
    let mut proxy_died = None;
    while !interrupted.load(Ordering::Relaxed) {
        let at = started.elapsed();
        if at >= options.duration {
            break;
        }
        if !killed && at >= kill_at {
            killed = true;
            sip_servers[0].kill();
            sccp_servers[0].kill();
            tracker.event(at, format!("killed the primary call servers {} and {}", SIP_BACKENDS[0], SCCP_BACKENDS[0]));
        }
        if killed && !revived && at >= revive_at {
            revived = true;
            sip_servers[0].restart().context("restarting the SIP primary")?;
            sccp_servers[0].restart().context("restarting the SCCP primary")?;
            tracker.event(at, format!("{} and {} are back", SIP_BACKENDS[0], SCCP_BACKENDS[0]));
        }
        if let Some(status) = proxy.exited() {
            if !interrupted.load(Ordering::Relaxed) {
                proxy_died = Some(status);
            }
            break;
        }
        let sample = Sample {
            at,
            registered: [
                sip_servers[0].registered(),
                sip_servers[1].registered(),
                sccp_servers[0].registered(),
                sccp_servers[1].registered(),
            ],
            running: [
                sip_servers[0].is_running(),
                sip_servers[1].is_running(),
                sccp_servers[0].is_running(),
                sccp_servers[1].is_running(),
            ],
            phones: PhoneKind::ALL.map(|k| fleet.registered(k)),
            metrics: proxy.scrape(&proxy_place).ok().map(|text| Metrics::parse(&text)),
        };
        tracker.observe(sample);
        if Instant::now() >= next_draw {
            next_draw += REDRAW;
            let next = if !killed {
                format!("kill the primaries at {:.0}s", kill_at.as_secs_f64())
            } else if !revived {
                format!("bring them back at {:.0}s", revive_at.as_secs_f64())
            } else {
                format!("end at {:.0}s", options.duration.as_secs_f64())
            };
            let header = view::Header {
                duration: options.duration,
                proxy_pid: proxy.pid(),
                fastpath: &fastpath,
                metrics_url: &metrics_url,
                admin: &admin,
                next: &next,
            };
            let text = if terminal {
                view::screen(&header, &tracker)
            } else {
                let line = view::line(&tracker, printed);
                printed = tracker.events.len();
                line + "\n"
            };
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
        std::thread::sleep(SAMPLE.saturating_sub(started.elapsed().saturating_sub(at)));
    }
    let ran = started.elapsed();
    // The phones first (so that nothing is counted as a failure of the proxy), then the
    // proxy by PID, then the servers; the namespaces go last, when this returns.
    fleet.stop();
    let stopped = proxy.stop();
    tracker.event(ran, format!("regedge stopped with SIGTERM ({stopped})"));
    drop(sip_servers);
    drop(sccp_servers);
    if let Some(status) = proxy_died {
        let log = scratch.keep();
        anyhow::bail!("regedge exited during the demo ({status}); its log: {}\n{}", log.display(), tail(&log, 20));
    }
    let summary = tracker.summary(ran, &fastpath);
    drop(namespaces);
    Ok(if interrupted.load(Ordering::Relaxed) { Outcome::Interrupted(summary) } else { Outcome::Completed(summary) })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One line on how the proxy answers.
fn describe_fastpath(metrics: &str, layout: &Layout, ns: Option<&Namespaces>, notes: &[String]) -> String {
    let m = Metrics::parse(metrics);
    let attached =
        m.get(names::FASTPATH_ATTACHED, "mode", "generic") + m.get(names::FASTPATH_ATTACHED, "mode", "native");
    let mut text = match (&layout.xdp_interface, ns) {
        (Some(interface), Some(ns)) if attached > 0.0 => {
            format!(
                "XDP (generic) on {interface} in namespace {}: keepalives and refreshes answered in the kernel",
                ns.edge
            )
        }
        _ if is_root() => "no XDP: UDP keepalives and refreshes answered in userspace".to_owned(),
        _ => "userspace (not root: no XDP; run as root to see the kernel answer)".to_owned(),
    };
    for note in notes {
        text.push_str("; ");
        text.push_str(note);
    }
    text
}

/// The demo's scratch directory: the proxy's config and log. Removed at the end unless
/// [`Scratch::keep`] was called (the log of a failure).
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("regedge-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir, keep: false })
    }

    fn config(&self) -> PathBuf {
        self.dir.join("regedge.toml")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("regedge.log")
    }

    /// Keeps the directory; the log's path.
    fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.log()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The proxy did not come up.
struct StartFailure {
    /// Its last error line, for a one-line note.
    reason: String,
    error: anyhow::Error,
}

impl StartFailure {
    fn into_error(self, scratch: &Scratch) -> anyhow::Error {
        let log = scratch.log();
        self.error.context(format!("regedge did not start; its log ({}):\n{}", log.display(), tail(&log, 20)))
    }
}

/// The proxy as a child process, stopped by PID (SIGTERM, then SIGKILL) when dropped.
struct Proxy {
    child: Option<Child>,
    metrics: SocketAddr,
}

impl Proxy {
    /// Writes the config of `layout`, starts `regedge run` in `place` and waits for its
    /// /metrics to answer.
    fn start(exe: &Path, place: &Place, layout: &Layout, scratch: &Scratch) -> Result<Self, StartFailure> {
        let fail = |error: anyhow::Error| StartFailure { reason: format!("{error:#}"), error };
        std::fs::write(scratch.config(), layout.config_toml())
            .map_err(|e| fail(anyhow::Error::new(e).context("writing the demo config")))?;
        let log = std::fs::File::create(scratch.log())
            .map_err(|e| fail(anyhow::Error::new(e).context("creating the proxy log")))?;
        // Its own process group: a Ctrl-C at the terminal reaches the demo only, which then
        // stops the proxy itself, in order.
        let child = place
            .command(exe)
            .process_group(0)
            .args(["run", "--config"])
            .arg(scratch.config())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| fail(anyhow::Error::new(e).context("starting regedge run")))?;
        let mut proxy = Self { child: Some(child), metrics: layout.metrics };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = proxy.exited() {
                let reason = tail(&scratch.log(), 40)
                    .lines()
                    .rev()
                    .find(|l| l.contains("ERROR") || l.contains("Error") || l.contains("error"))
                    .map_or_else(|| format!("exited with {status}"), |l| l.trim().to_owned());
                return Err(StartFailure { reason, error: anyhow::anyhow!("regedge exited with {status}") });
            }
            if proxy.scrape(place).is_ok() {
                return Ok(proxy);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        proxy.stop();
        Err(fail(anyhow::anyhow!("regedge's /metrics did not answer within 20 s")))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// GET /metrics, from inside the proxy's namespace.
    fn scrape(&self, place: &Place) -> std::io::Result<String> {
        let addr = self.metrics;
        place.run(move || metrics_text::scrape(addr)).map_err(std::io::Error::other)?
    }

    /// The exit status, if the proxy exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM by PID, SIGKILL after 10 s; how it ended.
    fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else { return "not running".to_owned() };
        if let Ok(Some(status)) = child.try_wait() {
            return format!("had exited: {status}");
        }
        // SAFETY: signalling our own unreaped child by its PID.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        "killed after 10 s".to_owned()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `regedge demo`: runs it, prints the summary; the process exit code.
pub fn main(options: &DemoOptions) -> std::process::ExitCode {
    match run(options) {
        Ok(Outcome::Completed(summary)) => {
            println!("\n{summary}");
            std::process::ExitCode::SUCCESS
        }
        Ok(Outcome::Interrupted(summary)) => {
            println!("\ninterrupted\n{summary}");
            std::process::ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("regedge demo: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("20000ms"), Ok(Duration::from_secs(20)));
        assert!(parse_duration("5s").is_err(), "too short for the story");
        assert!(parse_duration("20h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
