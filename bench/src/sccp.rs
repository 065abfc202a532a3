//! `sccp`: SCCP KeepAlives per second answered in the kernel (the `sk_skb` offload) versus
//! in userspace, and what one session costs regedge in memory.
//!
//! Topology: three network namespaces, phones (10.232.0.2) —veth— edge (regedge on
//! 10.232.0.1:2000, 10.233.0.1 toward the servers) —veth— servers (the simulated call
//! server [`regedge_tests::sccp_sim::CallServer`] on 10.233.0.11:2000). Built once; each
//! case starts its own regedge (release, `workers = 1`) and its own call server:
//!
//! - *kernel offload*: `[fastpath] mode = "auto"`, no XDP interfaces, `pin_path = ""`: the
//!   SCCP keepalive program is loaded and every registered phone socket is in its map;
//! - *userspace*: `[fastpath] mode = "off"`: regedge's worker answers every KeepAlive.
//!
//! Each case: N phones connect and register through regedge to the call server (every
//! one must get its RegisterAck and regedge must report N registered sessions); regedge's
//! VmRSS before the phones and at N sessions gives bytes per session. Then every phone
//! sends lone KeepAlives as fast as it can, one outstanding per connection (each its own
//! 12-byte write with TCP_NODELAY, so each arrives as a segment of its own that the kernel
//! may answer), the next one sent as soon as the KeepAliveAck of the last arrives. First
//! an unloaded window (one phone per generator thread active: latency without queueing),
//! then, after a warm-up, the measured window with every phone active. In each window:
//! KeepAliveAcks counted, each one's latency (write to the ack read in userspace) in an
//! HDR histogram, regedge's utime+stime (/proc/PID/stat),
//! the machine's softirq and busy time (/proc/stat), the generator's own CPU; regedge's
//! kernel and userspace keepalive counters (/metrics) around the whole load phase say
//! which path answered.
//!
//! The generator: [`generator`] (std TcpStreams, non-blocking, one epoll per thread, each
//! thread owning its share of the phones). It speaks only Register and KeepAlive with the
//! codec `regedge::sccp`; the simulator's [`regedge_tests::sccp_sim::PhoneFleet`] paces
//! keepalives per interval on one thread and cannot drive this load.

mod generator;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use crate::measured::{clock_ticks_per_second, command_output, regedge_binary};
use anyhow::{Context as _, bail, ensure};
use regedge_tests::{
    netns::NetNs,
    privilege::require_root,
    process::{Regedge as RegedgeProcess, TempDir, scrape, workspace_root},
    sccp_sim::{CallServer, CallServerOpts},
};

const PHONE_IP: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 2);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 1);
const EDGE_SERVER_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 11);
const SCCP_PORT: u16 = 2000;
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);
const WORKERS: u32 = 1;
/// Generator threads, each owning an equal share of the phones.
const THREADS: usize = 2;

struct Plan {
    quick: bool,
    phones: usize,
    light_window: Duration,
    warmup: Duration,
    window: Duration,
}

impl Plan {
    fn command(&self) -> &'static str {
        if self.quick {
            "cargo run --release -p regedge-bench -- sccp --quick"
        } else {
            "cargo run --release -p regedge-bench -- sccp"
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Kernel,
    Userspace,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Self::Kernel => "kernel offload (`mode = \"auto\"`)",
            Self::Userspace => "userspace (`mode = \"off\"`)",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Self::Kernel => "auto",
            Self::Userspace => "off",
        }
    }
}

struct CaseResult {
    case: Case,
    connected: usize,
    registered: usize,
    register_s: f64,
    sessions: u64,
    sessions_after: u64,
    rss_base: u64,
    rss_sessions: u64,
    light_wall_s: f64,
    light_regedge_cpu_s: f64,
    load: generator::LoadResult,
    wall_s: f64,
    regedge_cpu_s: f64,
    own_cpu_s: f64,
    /// kworker threads (the psock backlog work that sends redirected skbs runs there).
    kworker_s: f64,
    /// Context switches of regedge's threads in the window.
    regedge_switches: u64,
    /// ksoftirqd threads (softirq work deferred out of the interrupted context).
    ksoftirqd_s: f64,
    /// Every other process and kernel thread, kworkers and ksoftirqd included.
    others_s: f64,
    softirq_s: f64,
    busy_s: f64,
    kernel: u64,
    userspace: u64,
    notes: Vec<String>,
}

impl CaseResult {
    fn full(&self) -> &generator::Window {
        &self.load.windows[generator::FULL]
    }

    fn light(&self) -> &generator::Window {
        &self.load.windows[generator::LIGHT]
    }

    fn rate(&self) -> f64 {
        self.full().acks as f64 / self.wall_s.max(1e-9)
    }

    fn light_rate(&self) -> f64 {
        self.light().acks as f64 / self.light_wall_s.max(1e-9)
    }

    /// CPU-seconds per second per 100k keepalives per second.
    fn per_100k(&self, cpu_s: f64) -> f64 {
        let rate = self.rate();
        if rate <= 0.0 { f64::NAN } else { cpu_s / self.wall_s.max(1e-9) / (rate / 100_000.0) }
    }

    fn kernel_share(&self) -> f64 {
        let total = self.kernel + self.userspace;
        if total == 0 { 0.0 } else { self.kernel as f64 / total as f64 }
    }

    fn bytes_per_session(&self) -> Option<f64> {
        (self.sessions > 0).then(|| (self.rss_sessions as f64 - self.rss_base as f64) / self.sessions as f64)
    }

    fn busy_share(&self) -> f64 {
        self.busy_s / self.wall_s.max(1e-9) / cpus() as f64
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = match args {
        [] => false,
        [q] if q == "--quick" => true,
        _ => bail!("usage: regedge-bench sccp [--quick]"),
    };
    measure_all(quick).map(|_| ())
}

/// What the main report quotes, per case (kernel offload, userspace).
pub struct Summary {
    pub phones: usize,
    pub cases: Vec<SummaryCase>,
}

pub struct SummaryCase {
    pub label: &'static str,
    pub rate: f64,
    /// Unloaded latency, µs.
    pub p50_us: f64,
    pub p99_us: f64,
    pub bytes_per_session: Option<f64>,
    pub kernel_share: f64,
    /// regedge CPU per 100k keepalives/s.
    pub cpu_per_100k: f64,
}

/// Runs both cases and writes bench/report/sccp.md.
pub fn measure_all(quick: bool) -> anyhow::Result<Summary> {
    if !require_root("sccp") {
        bail!("sccp needs root (network namespaces, the eBPF keepalive program)");
    }
    let plan = if quick {
        Plan {
            quick,
            phones: 500,
            light_window: Duration::from_millis(500),
            warmup: Duration::from_millis(300),
            window: Duration::from_millis(1500),
        }
    } else {
        Plan {
            quick,
            phones: 2000,
            light_window: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(10),
        }
    };
    raise_nofile();
    let (binary, build) = regedge_binary()?;
    // The run's time, without the one-time build of regedge.
    let started = Instant::now();
    eprintln!("measuring {build}");

    let phones = NetNs::new("sc-phones");
    let edge = NetNs::new("sc-edge");
    let servers = NetNs::new("sc-servers");
    phones.link("scp0", &PHONE_IP.to_string(), &edge, "sce0", &EDGE_IP.to_string(), 24);
    edge.link("scb0", &EDGE_SERVER_SIDE_IP.to_string(), &servers, "scs0", &SERVER_IP.to_string(), 24);

    let mut results = Vec::new();
    for case in [Case::Kernel, Case::Userspace] {
        let result = run_case(&plan, case, &binary, &phones, &edge, &servers)
            .with_context(|| format!("case {}", case.label()))?;
        eprintln!(
            "{}: {:.0} keepalives/s, p50 {:.0} µs, p99 {:.0} µs (unloaded: {:.0}/s, p50 {:.0} µs), regedge {:.2} s, \
             generator {:.2} s, kworkers {:.2} s, softirq {:.2} s, busy {:.2} s of {:.2} s, kernel share {:.1}%",
            case.label(),
            result.rate(),
            result.full().percentile_us(0.5),
            result.full().percentile_us(0.99),
            result.light_rate(),
            result.light().percentile_us(0.5),
            result.regedge_cpu_s,
            result.own_cpu_s,
            result.kworker_s,
            result.softirq_s,
            result.busy_s,
            result.wall_s,
            result.kernel_share() * 100.0
        );
        results.push(result);
    }
    drop((phones, edge, servers));

    let report = render(&plan, &results, &build, started.elapsed());
    print!("{report}");
    let dir = workspace_root().join("bench").join("report");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("sccp.md");
    std::fs::write(&path, &report)?;
    eprintln!("wrote {}", path.display());
    Ok(Summary {
        phones: plan.phones,
        cases: results
            .iter()
            .map(|r| SummaryCase {
                label: match r.case {
                    Case::Kernel => "kernel offload",
                    Case::Userspace => "userspace",
                },
                rate: r.rate(),
                p50_us: r.light().percentile_us(0.5),
                p99_us: r.light().percentile_us(0.99),
                bytes_per_session: r.bytes_per_session(),
                kernel_share: r.kernel_share(),
                cpu_per_100k: r.per_100k(r.regedge_cpu_s),
            })
            .collect(),
    })
}

fn run_case(
    plan: &Plan,
    case: Case,
    binary: &std::path::Path,
    phones: &NetNs,
    edge: &NetNs,
    servers: &NetNs,
) -> anyhow::Result<CaseResult> {
    let server_addr = SocketAddr::new(SERVER_IP.into(), SCCP_PORT);
    let edge_addr = SocketAddr::new(EDGE_IP.into(), SCCP_PORT);
    let call_server = CallServer::start(
        servers,
        server_addr,
        CallServerOpts { keepalive_secs: 30, secondary_keepalive_secs: 60, call_states: true },
    );
    let regedge = Regedge::start(edge, binary, case, edge_addr, server_addr)?;
    let mut notes = Vec::new();
    let up = wait_for(Duration::from_secs(15), || {
        scrape(METRICS, Some(edge)).ok().and_then(|t| sample(&t, "regedge_backend_up{backend=\"cm1\"}")) == Some(1.0)
    });
    ensure!(up, "the call server never came up in regedge:\n{}", regedge.log_tail());
    let rss_base = vm_rss(regedge.pid);

    let fleet = generator::Fleet::start(phones, edge_addr, plan.phones, THREADS, 0x0022_3300_0000)?;
    let register_started = Instant::now();
    let all = fleet.wait_registered(Duration::from_secs(60));
    let register_s = register_started.elapsed().as_secs_f64();
    let (connected, registered) = (fleet.connected(), fleet.registered());
    if !all {
        notes.push(format!("only {registered} of {} phones registered ({connected} connected)", plan.phones));
    }
    let mut sessions = 0;
    wait_for(Duration::from_secs(10), || {
        sessions = sessions_registered(edge);
        sessions as usize >= registered
    });
    // Let allocations settle (the last RegisterAcks' buffers) before VmRSS.
    std::thread::sleep(Duration::from_millis(300));
    let rss_sessions = vm_rss(regedge.pid);

    let before_metrics = scrape(METRICS, Some(edge)).unwrap_or_default();
    // Unloaded latency: one KeepAlive outstanding per generator thread.
    fleet.load(1);
    std::thread::sleep(Duration::from_millis(300));
    fleet.set_window(Some(generator::LIGHT));
    let light_before = cpu_sample(regedge.pid);
    std::thread::sleep(plan.light_window);
    fleet.set_window(None);
    let light_after = cpu_sample(regedge.pid);
    // Throughput: every phone with one KeepAlive outstanding.
    fleet.load(usize::MAX);
    std::thread::sleep(plan.warmup);
    let before = cpu_sample(regedge.pid);
    fleet.set_window(Some(generator::FULL));
    std::thread::sleep(plan.window);
    fleet.set_window(None);
    let after = cpu_sample(regedge.pid);
    let after_metrics = scrape(METRICS, Some(edge)).unwrap_or_default();
    let sessions_after = sessions_registered(edge);
    let server_stats = call_server.stats();
    let load = fleet.stop();
    let delta = |name: &str| {
        (sample(&after_metrics, name).unwrap_or(0.0) as u64)
            .saturating_sub(sample(&before_metrics, name).unwrap_or(0.0) as u64)
    };
    let kernel = delta("regedge_fastpath_replies_total{kind=\"sccp_keepalive\"}");
    let userspace = delta("regedge_userspace_replies_total{kind=\"sccp_keepalive\"}");
    let hz = clock_ticks_per_second();
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / hz;
    let problems: Vec<String> = regedge
        .process
        .log()
        .lines()
        .filter(|l| ["WARN", "ERROR", "panicked"].iter().any(|w| l.contains(w)))
        .map(str::to_owned)
        .collect();
    if let Some(last) = problems.last() {
        notes.push(format!("regedge logged {} warning or error lines; the last: `{last}`", problems.len()));
    }
    if load.errors > 0 || load.closed > 0 {
        notes.push(format!("{} write errors, {} connections closed under the phones", load.errors, load.closed));
    }
    notes.push(format!(
        "the call server answered {} Registers and {} KeepAlives (regedge's own and its health probes'), held {} devices",
        server_stats.registrations,
        server_stats.keepalives,
        server_stats.registered.len()
    ));
    drop(regedge);
    drop(call_server);
    Ok(CaseResult {
        case,
        connected,
        registered,
        register_s,
        sessions,
        sessions_after,
        rss_base,
        rss_sessions,
        light_wall_s: light_after.at.duration_since(light_before.at).as_secs_f64(),
        light_regedge_cpu_s: d(light_after.regedge_ticks, light_before.regedge_ticks),
        load,
        wall_s: after.at.duration_since(before.at).as_secs_f64(),
        regedge_cpu_s: d(after.regedge_ticks, before.regedge_ticks),
        own_cpu_s: d(after.own_ticks, before.own_ticks),
        kworker_s: d(after.kworker_ticks, before.kworker_ticks),
        regedge_switches: after.regedge_switches.saturating_sub(before.regedge_switches),
        ksoftirqd_s: d(after.ksoftirqd_ticks, before.ksoftirqd_ticks),
        others_s: d(after.other_ticks, before.other_ticks),
        softirq_s: d(after.softirq, before.softirq),
        busy_s: d(after.total, before.total) - d(after.idle, before.idle),
        kernel,
        userspace,
        notes,
    })
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sessions_registered(edge: &NetNs) -> u64 {
    scrape(METRICS, Some(edge))
        .ok()
        .and_then(|t| sample(&t, "regedge_sccp_sessions{state=\"registered\"}"))
        .unwrap_or(0.0) as u64
}

/// The value of the sample whose `name{labels}` is `series` exactly.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.trim().parse().ok())?
    })
}

/// VmRSS of `pid`, bytes.
fn vm_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

struct CpuSample {
    at: Instant,
    regedge_ticks: u64,
    /// Context switches of regedge's threads, voluntary (sleeps: waits in epoll) and not.
    regedge_switches: u64,
    own_ticks: u64,
    kworker_ticks: u64,
    ksoftirqd_ticks: u64,
    other_ticks: u64,
    total: u64,
    idle: u64,
    softirq: u64,
}

fn cpu_sample(pid: u32) -> CpuSample {
    let values = crate::measured::proc_stat_cpu();
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    let (kworker_ticks, ksoftirqd_ticks, other_ticks) = other_ticks(pid);
    CpuSample {
        at: Instant::now(),
        regedge_ticks: crate::measured::proc_stat(pid).map_or(0, |s| s.ticks),
        regedge_switches: context_switches(pid),
        own_ticks: crate::measured::proc_stat(std::process::id()).map_or(0, |s| s.ticks),
        kworker_ticks,
        ksoftirqd_ticks,
        other_ticks,
        total: values.iter().take(8).sum(),
        idle: field(3) + field(4),
        softirq: field(6),
    }
}

/// utime + stime of the kworker threads, of the ksoftirqd threads, and of every process
/// and kernel thread but this one and `server` (both included), clock ticks.
fn other_ticks(server: u32) -> (u64, u64, u64) {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return (0, 0, 0) };
    let (mut kworkers, mut ksoftirqd, mut others) = (0, 0, 0);
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me || pid == server {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((head, rest)) = text.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let f = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ticks = f(11) + f(12);
        if head.contains("(kworker") {
            kworkers += ticks;
        } else if head.contains("(ksoftirqd") {
            ksoftirqd += ticks;
        }
        others += ticks;
    }
    (kworkers, ksoftirqd, others)
}

/// Context switches of every thread of `pid` (/proc/PID/task/*/status).
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
                .sum::<u64>()
        })
        .sum()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Soft RLIMIT_NOFILE up to the hard limit: the phones, the call server's connections
/// and (inherited) regedge's two sockets per session.
fn raise_nofile() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// regedge in the edge namespace (stopped with SIGTERM on drop), and its config dir.
struct Regedge {
    process: RegedgeProcess,
    pid: u32,
    _dir: TempDir,
}

impl Regedge {
    fn start(
        ns: &NetNs,
        binary: &std::path::Path,
        case: Case,
        listen: SocketAddr,
        server: SocketAddr,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("bench-sccp");
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"bench\"\nworkers = {WORKERS}\nstate_dir = \"\"\n\n\
                 [sccp]\nlisten = [\"{listen}\"]\nregister_timeout = \"10s\"\nkeepalive_interval = \"30s\"\n\n\
                 [fastpath]\ninterfaces = []\nmode = \"{mode}\"\npin_path = \"\"\n\n\
                 [health]\ninterval = \"500ms\"\ntimeout = \"250ms\"\ndown_after = 2\nup_after = 1\n\n\
                 [metrics]\nlisten = \"{METRICS}\"\n\n[routing]\ndefault_group = \"cms\"\n\n\
                 [[backends]]\nname = \"cm1\"\naddress = \"{server}\"\nprotocol = \"sccp\"\ntransport = \"tcp\"\n\
                 max_register_rate = 100000\n\n[[groups]]\nname = \"cms\"\nbackends = [\"cm1\"]\n",
                mode = case.mode(),
            ),
        );
        let mut process = RegedgeProcess::start_binary(binary, Some(ns), &config, dir.0.join("regedge.log"), "warn");
        process.wait_ready(METRICS, Some(ns), Duration::from_secs(20)).map_err(anyhow::Error::msg)?;
        Ok(Self { pid: process.pid(), process, _dir: dir })
    }

    fn log_tail(&self) -> String {
        let log = self.process.log();
        let skip = log.chars().count().saturating_sub(3000);
        log.chars().skip(skip).collect()
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1000.0 { format!("{:.1}k", r / 1000.0) } else { format!("{r:.0}") }
}

/// What bounded the rate of one case, from its CPU figures.
fn limit(r: &CaseResult) -> String {
    let w = r.wall_s.max(1e-9);
    let busy = r.busy_share() * 100.0;
    let parts = format!(
        "generator {:.2} CPUs, regedge {:.2}, kworkers {:.2}, ksoftirqd {:.2}, other processes {:.2}, softirq \
         (sampled, also inside those) {:.2}; machine {busy:.0}% busy",
        r.own_cpu_s / w,
        r.regedge_cpu_s / w,
        r.kworker_s / w,
        r.ksoftirqd_s / w,
        (r.others_s - r.kworker_s - r.ksoftirqd_s).max(0.0) / w,
        r.softirq_s / w
    );
    if r.regedge_cpu_s / w >= 0.85 * WORKERS as f64 {
        format!("regedge's worker thread, a full CPU ({parts})")
    } else if busy >= 90.0 {
        format!("both CPUs full ({parts})")
    } else {
        format!("neither CPU full: round trips of one outstanding KeepAlive per phone ({parts})")
    }
}

fn render(plan: &Plan, results: &[CaseResult], build: &str, runtime: Duration) -> String {
    let cpu = crate::measured::cpu_model();
    let mut out = String::new();
    let _ = writeln!(out, "# SCCP KeepAlives per second: kernel offload versus userspace; memory per session\n");
    let _ = writeln!(
        out,
        "Command: `{}` (as root); the run took {:.0} s (building regedge aside).\n",
        plan.command(),
        runtime.as_secs_f64()
    );
    let _ = writeln!(out, "Measured: {build}.\n");
    let _ = writeln!(
        out,
        "Machine: {} CPUs, {cpu}, kernel {}. The generator (and the simulated call server, idle during the load), \
         regedge and the kernel's packet processing share these CPUs.\n",
        cpus(),
        command_output("uname", &["-r"]),
    );
    let _ = writeln!(
        out,
        "Setup: three network namespaces, phones (10.232.0.2) —veth— edge (regedge, 10.232.0.1:2000) —veth— servers \
         (the simulated call server `regedge_tests::sccp_sim::CallServer`, 10.233.0.11:2000, RegisterAck keepalive \
         30 s). regedge: release, `workers = {WORKERS}`, one SCCP backend (`protocol = \"sccp\"`, `transport = \"tcp\"`, \
         `max_register_rate = 100000`), `[node] state_dir = \"\"`, `[fastpath] interfaces = []`, `pin_path = \"\"`, \
         `mode = \"auto\"` (the kernel keepalive offload loaded) or `\"off\"` (keepalives in userspace). Each case \
         starts its own regedge and call server; {phones} phones (one TCP connection each, device names SEP…) \
         register through regedge, then every phone sends lone KeepAlives (12 bytes, each its own write, \
         TCP_NODELAY), one outstanding per connection, the next as soon as the KeepAliveAck arrives: first \
         *unloaded*, {light:.0} s with one phone per generator thread active ({THREADS} KeepAlives in flight: latency \
         without queueing), then every phone active, a {warm:.1} s warm-up and a {window:.0} s measured window \
         ({phones} in flight: throughput; its latency is mostly queueing, by Little's law {phones} / rate). Generator: {THREADS} threads in this benchmark's \
         process, each owning {per} phones with non-blocking sockets and one epoll; latency = the KeepAlive's write to \
         the KeepAliveAck's read, HDR histogram.\n",
        phones = plan.phones,
        warm = plan.warmup.as_secs_f64(),
        light = plan.light_window.as_secs_f64(),
        window = plan.window.as_secs_f64(),
        per = plan.phones / THREADS,
    );
    let _ = writeln!(
        out,
        "CPU: *regedge* = utime + stime of its process (/proc/PID/stat); *softirq* = softirq time of all CPUs \
         (/proc/stat, tick-sampled); per 100k/s = CPU-seconds per second per 100k keepalives/s (1.0 = one core per \
         100k/s). On a veth the receiving side's softirq runs in the sending thread's context: the kernel's answer to \
         a KeepAlive (the `sk_skb` verdict program on regedge's socket, the KeepAliveAck's transmit) is mostly charged \
         to the *generator*, not to regedge. *Kernel share* = `regedge_fastpath_replies_total{{kind=\"sccp_keepalive\"}}` \
         / (that + `regedge_userspace_replies_total{{kind=\"sccp_keepalive\"}}`), deltas over the load phase. Memory: \
         regedge's VmRSS before the phones and with every phone registered (`regedge_sccp_sessions{{state=\"registered\"}}`), \
         the difference per session (userspace memory only: the two sockets' kernel buffers per session are not in \
         VmRSS).\n"
    );
    let _ = writeln!(
        out,
        "How the kernel answers: the `sk_skb` stream-verdict program on regedge's phone socket rewrites a lone \
         KeepAlive into a KeepAliveAck and redirects it to the same socket's egress. The kernel sends a redirected skb \
         from the socket's psock backlog, a work item: the ack leaves from a *kworker* thread, not from the softirq that \
         received the KeepAlive (and softirq work that overflows goes to *ksoftirqd*). Those threads are counted \
         apart below; in the userspace case they stay near zero. regedge's \
         threads still wake while the kernel answers everything (*regedge context switches per KeepAlive* below); \
         the likely cause is the kernel's stream-verdict receive path, which signals the socket's readers after every \
         batch it hands to the program, redirected or not: regedge then finds nothing to read.\n"
    );
    let _ = writeln!(out, "## Result\n");
    let _ = writeln!(
        out,
        "| case | keepalives/s, {phones} outstanding | p50 / p99 / p99.9 µs at it | unloaded: keepalives/s, {THREADS} \
         outstanding | unloaded p50 / p99 µs | regedge CPU per 100k/s | generator CPU per 100k/s | kworkers per 100k/s \
         | softirq per 100k/s | machine busy per 100k/s | kernel share | sessions held | VmRSS before → at N | bytes \
         per session | what limited the rate |",
        phones = plan.phones,
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} / {:.0} / {:.0} | {} | {:.0} / {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1}% | \
             {} | {:.1} → {:.1} MiB | {} | {} |",
            r.case.label(),
            fmt_rate(r.rate()),
            r.full().percentile_us(0.5),
            r.full().percentile_us(0.99),
            r.full().percentile_us(0.999),
            fmt_rate(r.light_rate()),
            r.light().percentile_us(0.5),
            r.light().percentile_us(0.99),
            r.per_100k(r.regedge_cpu_s),
            r.per_100k(r.own_cpu_s),
            r.per_100k(r.kworker_s),
            r.per_100k(r.softirq_s),
            r.per_100k(r.busy_s),
            r.kernel_share() * 100.0,
            r.sessions,
            r.rss_base as f64 / 1048576.0,
            r.rss_sessions as f64 / 1048576.0,
            r.bytes_per_session().map_or("-".to_owned(), |b| format!("{b:.0}")),
            limit(r),
        );
    }
    let kernel = results.iter().find(|r| r.case == Case::Kernel);
    let user = results.iter().find(|r| r.case == Case::Userspace);
    if let (Some(k), Some(u)) = (kernel, user) {
        let _ = writeln!(
            out,
            "\nRatios within this run, kernel offload / userspace: keepalives/s **{:.2}×** (unloaded: {:.2}×); \
             regedge CPU per 100k/s {:.2}×; machine busy per 100k/s {:.2}×; p50 latency {:.2}× (unloaded: {:.2}×).\n",
            k.rate() / u.rate().max(1e-9),
            k.light_rate() / u.light_rate().max(1e-9),
            k.per_100k(k.regedge_cpu_s) / u.per_100k(u.regedge_cpu_s).max(1e-9),
            k.per_100k(k.busy_s) / u.per_100k(u.busy_s).max(1e-9),
            k.full().percentile_us(0.5) / u.full().percentile_us(0.5).max(1e-9),
            k.light().percentile_us(0.5) / u.light().percentile_us(0.5).max(1e-9),
        );
    }
    let _ = writeln!(out, "## Every figure\n");
    let _ = writeln!(
        out,
        "| case | phones connected / registered | register time s | sessions before / after the load | acks in window | \
         window s | regedge CPU s | regedge context switches per KeepAlive | softirq s | generator CPU s | kworkers CPU s | ksoftirqd CPU s | all other \
         processes CPU s | busy s (all CPUs) | unloaded: acks, window s, regedge CPU s | kernel answers | userspace answers |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} / {} | {:.2} | {} / {} | {} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {}, {:.2}, {:.2} | {} | {} |",
            r.case.label(),
            r.connected,
            r.registered,
            r.register_s,
            r.sessions,
            r.sessions_after,
            r.full().acks,
            r.wall_s,
            r.regedge_cpu_s,
            r.regedge_switches as f64 / r.full().acks.max(1) as f64,
            r.softirq_s,
            r.own_cpu_s,
            r.kworker_s,
            r.ksoftirqd_s,
            r.others_s,
            r.busy_s,
            r.light().acks,
            r.light_wall_s,
            r.light_regedge_cpu_s,
            r.kernel,
            r.userspace,
        );
    }
    let _ = writeln!(out);
    for r in results {
        for note in &r.notes {
            let _ = writeln!(out, "- {}: {note}", r.case.label());
        }
    }
    out
}
