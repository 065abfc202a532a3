//! `registration`: REGISTER throughput and backend load through a registration edge,
//! regedge beside Kamailio, in one invocation, under the same sipp load.
//!
//! Topology: three network namespaces, phones (10.220.0.2) — proxy (10.220.0.1 toward
//! the phones, 10.221.0.1 toward the backend) — backend (10.221.0.11). The backend is
//! the harness's Kamailio registrar (usrloc in memory, one child, TLSF). The edge listens
//! on 10.220.0.1:5060 and sends to the backend from that socket, so the backend routes
//! the phone subnet back via 10.221.0.1. The edges run one after the other on the same
//! address: regedge (release binary, `workers = 1`), then Kamailio as an edge proxy
//! (`bench/kamailio/dispatcher-edge.cfg`: dispatcher algorithm 8 + tm + add_path() +
//! failure_route; `-x tlsf`, one child, debug 1, `-M 16` and `-m` sized for tm's
//! transactions at the top rate, see [`EDGE_SHM_MB`]). Each sweep (edge × scenario)
//! starts a fresh edge and a freshly restarted backend, so tables are empty at its start,
//! and every run registers phones of its own, the same phones for both edges.
//!
//! Load: sipp fleets over one UDP socket (`tests/sipp/register_refresh.xml`), two
//! scenarios. `new`: every phone registers once. `refresh`: every phone registers, then
//! refreshes [`REFRESHES`] times (same Call-ID and Contact, CSeq + 1) after a pause of
//! [`REFRESH_INTERVAL`] each. For an offered REGISTER rate X, sipp starts X / (1 + R) phones
//! per second for a fixed window, so in steady state X REGISTERs per second are offered.
//! Each scenario is swept over rising rates; a sweep stops after two rates in a row with
//! failed phones.
//!
//! Per run: REGISTERs sipp sent over its elapsed time (the window plus sipp's start and
//! the last refreshes), failed phones, the backend's `core:rcv_requests_register` delta,
//! and the CPU time (utime + stime from /proc/PID/stat, clock ticks) the edge used — for
//! Kamailio summed over its process group — and the backend used, per 1000 phone
//! REGISTERs; beside them the edge's own counters, UDP receive-buffer drops per namespace,
//! sipp's CPU and the machine's busy time. Per sweep: the edge's CPU with no load at its
//! start and after the sweep. It prints markdown and writes bench/report/registration.md.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::OpenOptions,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::measured::{ProcStat, clock_ticks_per_second, parse_proc_stat, proc_stat};
use anyhow::{Context as _, bail, ensure};
use regedge_tests::{
    kamailio::{Kamailio, KamailioOpts, parse_stats},
    netns::NetNs,
    privilege::{require_program, require_root},
    process::{TempDir, scrape, workspace_root},
    sipp::{FleetOpts, FleetSummary, Sipp, Transport},
};

const PHONE_IP: Ipv4Addr = Ipv4Addr::new(10, 220, 0, 2);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 220, 0, 1);
const EDGE_BACKEND_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 221, 0, 1);
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 221, 0, 11);
const SIP_PORT: u16 = 5060;
/// regedge's metrics endpoint, inside the proxy namespace.
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

/// regedge worker threads = Kamailio children (`-n`).
const WORKERS: u32 = 1;
/// Kamailio edge memory: shared MB (`-m`) and private MB per process (`-M`). tm keeps
/// each transaction (~15 KB of shm, BENCH-NOTES.md) until its wait timer (5 s) after the
/// final reply: `-m 256` ran out of shm here at 4000 REGISTERs/s ("could not allocate shared
/// memory from shm pool", 503s and failed probes), so the edge gets enough for the sweep.
const EDGE_SHM_MB: u32 = 2048;
const EDGE_PKG_MB: u32 = 16;
/// Refreshes per phone in the `refresh` scenario, and the pause before each.
const REFRESHES: u32 = 4;
const REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// A phone waiting this long for an answer fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each edge's CPU use is measured with no load, after its start.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// Stop a sweep after this many rates in a row with failures.
const FAILING_RATES_TO_STOP: usize = 2;

/// What one invocation runs.
struct Plan {
    quick: bool,
    /// Offered REGISTER rates, per second, rising.
    rates: &'static [u32],
    /// How long sipp starts new phones in each run.
    window: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self { quick, rates: &[2000], window: Duration::from_secs(1) }
        } else {
            Self { quick, rates: &[1000, 2000, 4000, 8000, 12000, 16000], window: Duration::from_secs(6) }
        }
    }

    /// How long each edge's CPU use is measured with no load.
    fn idle(&self) -> Duration {
        if self.quick { Duration::from_millis(500) } else { IDLE_WINDOW }
    }

    fn command(&self) -> &'static str {
        if self.quick {
            "cargo run --release -p regedge-bench -- registration --quick"
        } else {
            "cargo run --release -p regedge-bench -- registration"
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Every phone registers once: only new registrations.
    New,
    /// Every phone registers, then refreshes [`REFRESHES`] times.
    Refresh,
}

impl Scenario {
    const ALL: [Self; 2] = [Self::New, Self::Refresh];

    fn refreshes(self) -> u32 {
        match self {
            Self::New => 0,
            Self::Refresh => REFRESHES,
        }
    }

    fn label(self) -> String {
        match self {
            Self::New => "new".to_owned(),
            Self::Refresh => format!("1 + {REFRESHES} refreshes"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EdgeKind {
    Regedge,
    Kamailio,
}

impl EdgeKind {
    const ALL: [Self; 2] = [Self::Regedge, Self::Kamailio];

    fn label(self) -> &'static str {
        match self {
            Self::Regedge => "regedge",
            Self::Kamailio => "Kamailio",
        }
    }
}

/// One edge's sweep of one scenario, from its start to its stop.
struct Block {
    edge: EdgeKind,
    scenario: Scenario,
    /// Edge CPU with no load, ms per second: after its start, and after the sweep.
    idle_start: f64,
    idle_end: Option<f64>,
    /// regedge's `regedge_bindings` after the sweep.
    bindings: Option<u64>,
    /// `skmem:(...)` of the edge's SIP socket after its start.
    socket: String,
}

/// One sipp run through one edge.
struct RunResult {
    edge: EdgeKind,
    scenario: Scenario,
    /// REGISTERs per second offered in steady state: phones per second × (1 + refreshes).
    offered: u32,
    phones: u32,
    summary: FleetSummary,
    backend_registers: u64,
    edge_cpu_s: f64,
    backend_cpu_s: f64,
    /// What the edge's own counters say it did, e.g. `forwarded 1000, absorbed 4000`.
    edge_counters: String,
    /// The edge process was still running after the run.
    edge_alive: bool,
    /// UDP datagrams dropped for a full receive buffer (RcvbufErrors), per namespace:
    /// phones, proxy, backend.
    udp_drops: [u64; 3],
    /// Share of all the machine's CPU time that was busy during the run, 0 to 1.
    machine_busy: f64,
    /// CPU seconds of sipp, and of the whole machine (all CPUs, not idle) during the run.
    sipp_cpu_s: f64,
    machine_busy_s: f64,
    /// CPU seconds in interrupts and softirqs (the veth pairs' packet processing, mostly).
    irq_cpu_s: f64,
}

impl RunResult {
    /// REGISTERs the phones sent, retransmissions included.
    fn phone_registers(&self) -> u64 {
        self.summary.requests_sent + self.summary.retransmissions
    }

    /// First transmissions over sipp's elapsed time.
    fn achieved(&self) -> f64 {
        self.summary.requests_sent as f64 / self.summary.elapsed.as_secs_f64().max(1e-9)
    }

    /// Phones that did not complete: sipp's failed calls, or more when sipp was stopped.
    fn failed(&self) -> u64 {
        self.summary.failed.max(u64::from(self.phones).saturating_sub(self.summary.successful))
    }

    fn clean(&self) -> bool {
        self.failed() == 0 && self.edge_alive && !self.summary.killed
    }

    /// Busy CPU time of the machine during the run not spent by the edge, the backend,
    /// sipp or in interrupts (this benchmark, other programs; approximate, the windows
    /// differ by a few tens of ms).
    fn rest_cpu_s(&self) -> f64 {
        (self.machine_busy_s - self.edge_cpu_s - self.backend_cpu_s - self.sipp_cpu_s - self.irq_cpu_s).max(0.0)
    }

    fn ratio(&self) -> f64 {
        self.backend_registers as f64 / (self.phone_registers() as f64).max(1.0)
    }

    /// CPU milliseconds per 1000 phone REGISTERs (= µs per REGISTER).
    fn per_1000(&self, cpu_s: f64) -> f64 {
        cpu_s * 1e6 / (self.phone_registers() as f64).max(1.0)
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => bail!("usage: regedge-bench registration [--quick]"),
    };
    measure_all(quick, false).map(|_| ())
}

/// What the main report quotes: per load, the highest clean rate of each edge, and at
/// the highest rate both served cleanly, their CPU per REGISTER and backend ratio.
pub struct Summary {
    pub rows: Vec<SummaryRow>,
}

pub struct SummaryRow {
    pub load: String,
    pub regedge_best: Option<u32>,
    pub kamailio_best: Option<u32>,
    /// (offered rate, regedge edge CPU µs per REGISTER, Kamailio's, regedge backend ratio, Kamailio's)
    pub common: Option<(u32, f64, f64, f64, f64)>,
}

/// Runs every sweep and writes bench/report/registration.md (and its plot when `plots`).
pub fn measure_all(quick: bool, plots: bool) -> anyhow::Result<Summary> {
    if !require_root("registration") {
        bail!("registration needs root (network namespaces)");
    }
    for program in ["ip", "kamailio", "kamcmd", "sipp"] {
        ensure!(require_program("registration", program), "{program} is not installed");
    }
    let plan = Plan::new(quick);
    let (binary, build) = crate::measured::regedge_binary()?;
    eprintln!("regedge: {} ({build})", binary.display());
    // The run's time, without the one-time build of regedge.
    let started = Instant::now();

    let net = Topology::new();
    let mut backend = Kamailio::start(
        &net.backend,
        BACKEND_IP,
        KamailioOpts { children: WORKERS, shm_mb: 1024, pkg_mb: 64, debug: 1, ..KamailioOpts::default() },
    );
    let mut results = Vec::new();
    let mut notes = Vec::new();
    let mut blocks = Vec::new();
    let mut backend_log_seen = backend.log().len();
    for (e, kind) in EdgeKind::ALL.into_iter().enumerate() {
        for (s, scenario) in Scenario::ALL.into_iter().enumerate() {
            // Each sweep starts from empty tables at the edge and the backend, and ends
            // before the first phones' registrations at regedge lapse (about 2 minutes).
            if e + s > 0 {
                backend.restart();
            }
            let mut edge = match kind {
                EdgeKind::Regedge => Edge::regedge(&net.proxy, &binary)?,
                EdgeKind::Kamailio => Edge::kamailio(&net.proxy)?,
            };
            eprintln!("{} {}: pid {}", kind.label(), scenario.label(), edge.pid);
            std::thread::sleep(if plan.quick { Duration::from_millis(200) } else { Duration::from_millis(500) });
            let idle_start = edge.idle_cpu_ms_per_s(plan.idle());
            let socket = socket_memory(&net.proxy);
            let mut failing = 0;
            for (r, &rate) in plan.rates.iter().enumerate() {
                if failing >= FAILING_RATES_TO_STOP {
                    notes.push(format!(
                        "{} {}: {rate}/s not run ({FAILING_RATES_TO_STOP} rates in a row had failures).",
                        kind.label(),
                        scenario.label()
                    ));
                    continue;
                }
                if !edge.alive() {
                    notes.push(format!(
                        "{} {}: {rate}/s not run (the edge had exited).",
                        kind.label(),
                        scenario.label()
                    ));
                    continue;
                }
                let first_user = 1_000_000 + (s as u32 * 10 + r as u32) * 200_000;
                let result = measure(&net, &backend, &mut edge, &plan, scenario, rate, first_user);
                eprintln!(
                    "{} {} {}/s: sent {} in {:.2}s, failed {}, backend {}, edge cpu {:.3}s ({})",
                    kind.label(),
                    scenario.label(),
                    result.offered,
                    result.summary.requests_sent,
                    result.summary.elapsed.as_secs_f64(),
                    result.failed(),
                    result.backend_registers,
                    result.edge_cpu_s,
                    result.edge_counters
                );
                if result.clean() {
                    failing = 0;
                    std::thread::sleep(if plan.quick {
                        Duration::from_millis(200)
                    } else {
                        Duration::from_millis(500)
                    });
                } else {
                    failing += 1;
                    if !result.summary.errors.is_empty() {
                        notes.push(format!(
                            "{} {} {}/s: sipp reported (end of its logs):\n\n```\n{}\n```",
                            kind.label(),
                            scenario.label(),
                            result.offered,
                            tail(&result.summary.errors, 600)
                        ));
                    }
                    // Transactions still open at the edge end within its 4 s timeout.
                    std::thread::sleep(if plan.quick { Duration::from_secs(1) } else { Duration::from_secs(5) });
                }
                results.push(result);
            }
            let (idle_end, bindings) = if edge.alive() {
                std::thread::sleep(if plan.quick { Duration::from_millis(300) } else { Duration::from_secs(1) });
                (Some(edge.idle_cpu_ms_per_s(plan.idle())), edge.bindings(&net.proxy))
            } else {
                notes.push(format!(
                    "{} {} exited during the runs; its log ends:\n\n```\n{}\n```",
                    kind.label(),
                    scenario.label(),
                    tail(&edge.log(), 2000)
                ));
                (None, None)
            };
            blocks.push(Block { edge: kind, scenario, idle_start, idle_end, bindings, socket });
            let problems = edge.log_problems();
            if !problems.is_empty() {
                notes.push(format!(
                    "{} {} logged {} warning or error lines; the last ones:\n\n```\n{}\n```",
                    kind.label(),
                    scenario.label(),
                    problems.len(),
                    problems.iter().rev().take(5).rev().cloned().collect::<Vec<_>>().join("\n")
                ));
            }
            edge.stop();
            // The backend's log covers all its starts: only what this sweep added.
            let log = backend.log();
            let errors: Vec<&str> =
                log.get(backend_log_seen..).unwrap_or("").lines().filter(|l| l.contains("ERROR")).collect();
            backend_log_seen = log.len();
            if !errors.is_empty() {
                notes.push(format!(
                    "The backend logged {} error lines behind {} {}; the last ones:\n\n```\n{}\n```",
                    errors.len(),
                    kind.label(),
                    scenario.label(),
                    errors.iter().rev().take(5).rev().copied().collect::<Vec<_>>().join("\n")
                ));
            }
        }
    }
    drop(backend);
    drop(net);

    let mut report = render(&plan, &results, &blocks, &notes, started.elapsed());
    report = report.replacen("\n\nMachine:", &format!("\n\nMeasured: {build}.\n\nMachine:"), 1);
    if plots {
        let mut series = Vec::new();
        for edge in EdgeKind::ALL {
            for scenario in Scenario::ALL {
                let points: Vec<(f64, f64)> = results
                    .iter()
                    .filter(|r| r.edge == edge && r.scenario == scenario)
                    .map(|r| (f64::from(r.offered), if r.clean() { r.achieved() } else { 0.0 }))
                    .collect();
                if !points.is_empty() {
                    series
                        .push(crate::plot::Series { name: format!("{} ({})", edge.label(), scenario.label()), points });
                }
            }
        }
        let file = "registration-throughput.svg";
        match crate::plot::lines(
            file,
            "Registrations through the edge: achieved against offered (0 = phones failed)",
            "offered REGISTERs/s",
            "achieved REGISTERs/s",
            &series,
            false,
        ) {
            Ok(()) => report.push_str(&format!("\n## Plot\n\n![achieved against offered]({file})\n")),
            Err(e) => report.push_str(&format!("\nPlot not drawn: {e:#}\n")),
        }
    }
    print!("{report}");
    let dir = workspace_root().join("bench").join("report");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("registration.md");
    std::fs::write(&path, &report)?;
    eprintln!("wrote {} after {:.0} s", path.display(), started.elapsed().as_secs_f64());
    let rows = Scenario::ALL
        .into_iter()
        .map(|scenario| {
            let common = plan.rates.iter().rev().find_map(|&rate| {
                let per_phone = 1 + scenario.refreshes();
                let offered = rate.div_ceil(per_phone) * per_phone;
                let g = find(&results, EdgeKind::Regedge, scenario, offered)?;
                let k = find(&results, EdgeKind::Kamailio, scenario, offered)?;
                (g.clean() && k.clean())
                    .then(|| (offered, g.per_1000(g.edge_cpu_s), k.per_1000(k.edge_cpu_s), g.ratio(), k.ratio()))
            });
            SummaryRow {
                load: scenario.label(),
                regedge_best: best(&results, EdgeKind::Regedge, scenario).map(|r| r.offered),
                kamailio_best: best(&results, EdgeKind::Kamailio, scenario).map(|r| r.offered),
                common,
            }
        })
        .collect();
    Ok(Summary { rows })
}

/// One sipp run at `rate` REGISTERs/s offered, with counters read around it.
fn measure(
    net: &Topology,
    backend: &Kamailio,
    edge: &mut Edge,
    plan: &Plan,
    scenario: Scenario,
    rate: u32,
    first_user: u32,
) -> RunResult {
    let per_phone = 1 + scenario.refreshes();
    let phones_per_s = rate.div_ceil(per_phone).max(1);
    let phones = (phones_per_s as f64 * plan.window.as_secs_f64()).round().max(1.0) as u32;
    let opts = FleetOpts {
        users: phones,
        first_user,
        transport: Transport::Udp,
        expires: 3600,
        refreshes: scenario.refreshes(),
        refresh_interval: REFRESH_INTERVAL,
        rate: phones_per_s,
        timeout: plan.window + Duration::from_secs(15),
        password: None,
        domain: None,
        local_port: SIP_PORT,
        response_timeout: RESPONSE_TIMEOUT,
    };
    let target = SocketAddr::new(EDGE_IP.into(), SIP_PORT);
    let backend_before = backend.stat("core:rcv_requests_register");
    let backend_cpu_before = group_ticks(backend.pid());
    let edge_before = edge.counters(&net.proxy);
    let edge_cpu_before = edge.cpu_ticks();

    let drops_before = net.udp_rcvbuf_errors();
    let machine_before = machine_cpu();
    let sipp = Sipp::spawn_fleet(&net.phones, PHONE_IP.into(), target, &opts);
    let (summary, sipp_ticks) = wait_counting_cpu(sipp);
    let machine_after = machine_cpu();
    // Answers in flight reach their counters.
    std::thread::sleep(Duration::from_millis(200));

    let edge_cpu = edge.cpu_ticks().saturating_sub(edge_cpu_before);
    let backend_cpu = group_ticks(backend.pid()).saturating_sub(backend_cpu_before);
    let edge_alive = edge.alive();
    let edge_after = if edge_alive { edge.counters(&net.proxy) } else { HashMap::new() };
    let backend_registers = backend.stat("core:rcv_requests_register").saturating_sub(backend_before);
    let drops_after = net.udp_rcvbuf_errors();
    let machine_total = machine_after.0.saturating_sub(machine_before.0);
    let machine_idle = machine_after.1.saturating_sub(machine_before.1);
    let hz = clock_ticks_per_second();
    RunResult {
        edge: edge.kind,
        scenario,
        offered: phones_per_s * per_phone,
        phones,
        summary,
        backend_registers,
        edge_cpu_s: edge_cpu as f64 / hz,
        backend_cpu_s: backend_cpu as f64 / hz,
        edge_counters: describe_counters(edge.kind, &edge_before, &edge_after),
        edge_alive,
        udp_drops: std::array::from_fn(|i| drops_after[i].saturating_sub(drops_before[i])),
        machine_busy: 1.0 - machine_idle as f64 / (machine_total as f64).max(1.0),
        sipp_cpu_s: sipp_ticks as f64 / hz,
        machine_busy_s: machine_total.saturating_sub(machine_idle) as f64 / hz,
        irq_cpu_s: machine_after.2.saturating_sub(machine_before.2) as f64 / hz,
    }
}

/// Waits for sipp, sampling its CPU ticks every 20 ms meanwhile (the last sample, taken
/// once it has exited and before it is reaped, or up to 20 ms before).
fn wait_counting_cpu(sipp: Sipp) -> (FleetSummary, u64) {
    let pid = sipp.pid();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let monitor = scope.spawn(|| {
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                // Until `ip netns exec` has exec'd, the process is still called "ip".
                let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if text.contains(" (sipp) ")
                    && let Some(stat) = parse_proc_stat(&text)
                {
                    last = stat.ticks;
                    if stat.state == 'Z' {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last
        });
        let summary = sipp.wait();
        done.store(true, Ordering::Relaxed);
        (summary, monitor.join().unwrap_or(0))
    })
}

/// All CPUs' jiffies since boot from /proc/stat: (total, idle + iowait, irq + softirq).
fn machine_cpu() -> (u64, u64, u64) {
    let values = crate::measured::proc_stat_cpu();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user.
    let total = values.iter().take(8).sum();
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    (total, field(3) + field(4), field(5) + field(6))
}

/// The edge's counters over one run, as text.
fn describe_counters(kind: EdgeKind, before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> String {
    if after.is_empty() {
        return "no counters (edge gone)".to_owned();
    }
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0).saturating_sub(before.get(name).copied().unwrap_or(0));
    match kind {
        EdgeKind::Regedge => {
            let mut parts = Vec::new();
            let mut names: Vec<&String> = after.keys().collect();
            names.sort();
            for name in names {
                let d = delta(name);
                if d > 0 || name == "forwarded" || name == "absorbed" {
                    parts.push(format!("{name} {d}"));
                }
            }
            parts.join(", ")
        }
        EdgeKind::Kamailio => {
            let mut parts = vec![format!("REGISTERs received {}", delta("core:rcv_requests_register"))];
            parts.push(format!(
                "shm peak since start {} MB",
                after.get("shmem:max_used_size").copied().unwrap_or(0) / (1024 * 1024)
            ));
            for (name, label) in [
                ("core:rcv_replies_2xx_reg", "2xx REGISTER replies received"),
                ("core:rcv_replies_4xx_reg", "4xx REGISTER replies received"),
                ("core:rcv_replies_5xx_reg", "5xx REGISTER replies received"),
                ("sl:sent_replies", "stateless replies"),
                ("core:drop_requests", "dropped requests"),
                ("core:err_requests", "request errors"),
            ] {
                let d = delta(name);
                if d > 0 || name == "core:rcv_replies_2xx_reg" {
                    parts.push(format!("{label} {d}"));
                }
            }
            parts.join(", ")
        }
    }
}

/// Three namespaces joined by two veth pairs; removed on drop.
struct Topology {
    phones: NetNs,
    proxy: NetNs,
    backend: NetNs,
}

impl Topology {
    fn new() -> Self {
        let phones = NetNs::new("phones");
        let proxy = NetNs::new("proxy");
        let backend = NetNs::new("backend");
        proxy.link("rbp0", &EDGE_IP.to_string(), &phones, "rbc0", &PHONE_IP.to_string(), 24);
        proxy.link("rbp1", &EDGE_BACKEND_SIDE_IP.to_string(), &backend, "rbb0", &BACKEND_IP.to_string(), 24);
        // The edge sends to the backend from its phone-side address; answers come back
        // through the proxy namespace's backend-side address.
        backend.route("10.220.0.0/24", &EDGE_BACKEND_SIDE_IP.to_string());
        Self { phones, proxy, backend }
    }

    /// `Udp: RcvbufErrors` of /proc/net/snmp in each namespace: phones, proxy, backend.
    fn udp_rcvbuf_errors(&self) -> [u64; 3] {
        [&self.phones, &self.proxy, &self.backend].map(|ns| {
            let out = ns.command("cat").arg("/proc/net/snmp").output().map(|o| o.stdout).unwrap_or_default();
            snmp_value(&String::from_utf8_lossy(&out), "Udp:", "RcvbufErrors").unwrap_or(0)
        })
    }
}

/// One counter of /proc/net/snmp: a header line and a value line share the prefix.
fn snmp_value(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let index = header.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// The edge under test, in the proxy namespace; stopped on drop.
pub(crate) struct Edge {
    kind: EdgeKind,
    child: Option<Child>,
    pid: u32,
    /// Kamailio's control socket (unused for regedge).
    ctl: PathBuf,
    log: PathBuf,
    // Last: removed after the process is stopped.
    _dir: TempDir,
}

impl Edge {
    fn regedge(ns: &NetNs, binary: &Path) -> anyhow::Result<Self> {
        let dir = TempDir::new("bench-regedge");
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"bench\"\nworkers = {WORKERS}\nstate_dir = \"\"\n\n[sip]\nlisten = [\"{EDGE_IP}:{SIP_PORT}\"]\n\n\
                 [registration]\nphone_expires = 120\nbackend_expires = 3600\n\n[metrics]\nlisten = \"{METRICS}\"\n\n\
                 [routing]\ndefault_group = \"default\"\n\n[[backends]]\nname = \"cm1\"\n\
                 address = \"{BACKEND_IP}:{SIP_PORT}\"\nmax_register_rate = 100000\n\n\
                 [[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n"
            ),
        );
        let log = dir.0.join("regedge.log");
        let mut cmd = ns.command(binary.to_str().context("binary path is not UTF-8")?);
        cmd.args(["run", "--config"])
            .arg(&config)
            // Warnings and errors only, as Kamailio's debug=1.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn().context("spawn regedge")?;
        let edge =
            Self { kind: EdgeKind::Regedge, pid: child.id(), child: Some(child), ctl: PathBuf::new(), log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !edge.alive() {
                bail!("regedge exited at start:\n{}", edge.log());
            }
            if scrape(METRICS, Some(ns)).is_ok() {
                return Ok(edge);
            }
            if Instant::now() > deadline {
                bail!("regedge not ready after 10 s:\n{}", edge.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kamailio(ns: &NetNs) -> anyhow::Result<Self> {
        Self::kamailio_at(ns, EDGE_IP, &[BACKEND_IP])
    }

    /// Kamailio as the edge on `edge_ip`, relaying to the registrars at `backends` (one
    /// dispatcher set, in priority order: the first while it is up).
    pub(crate) fn kamailio_at(ns: &NetNs, edge_ip: Ipv4Addr, backends: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let dir = TempDir::new("bench-kamedge");
        let ctl = dir.0.join("ctl.sock");
        // sun_path holds 108 bytes.
        ensure!(ctl.as_os_str().as_bytes().len() < 100, "control socket path too long: {}", ctl.display());
        std::fs::create_dir_all(dir.0.join("run"))?;
        let ds_list = dir.write(
            "dispatcher.list",
            &backends.iter().enumerate().fold("# setid destination flags priority\n".to_owned(), |text, (i, ip)| {
                text + &format!("1 sip:{ip}:{SIP_PORT} 0 {}\n", 10 - i.min(9))
            }),
        );
        let template_path = workspace_root().join("bench/kamailio/dispatcher-edge.cfg");
        let template =
            std::fs::read_to_string(&template_path).with_context(|| format!("read {}", template_path.display()))?;
        let text = template
            .replace("@ADDRESS@", &edge_ip.to_string())
            .replace("@CTL_SOCKET@", &ctl.display().to_string())
            .replace("@DS_LIST@", &ds_list.display().to_string())
            .replace("@DEBUG@", "1");
        if let Some(line) = text.lines().find(|l| !l.trim_start().starts_with('#') && l.contains('@')) {
            bail!("unreplaced placeholder in the Kamailio edge config: {line}");
        }
        let config = dir.write("kamailio-edge.cfg", &text);
        let log = dir.0.join("kamailio-edge.log");
        let log_file = OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = ns.command("kamailio");
        cmd.arg("-f")
            .arg(&config)
            .args(["-DD", "-E", "-x", "tlsf", "-Y"])
            .arg(dir.0.join("run"))
            .args(["-m", &EDGE_SHM_MB.to_string(), "-M", &EDGE_PKG_MB.to_string()])
            .args(["-n", &WORKERS.to_string(), "-w"])
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // A group of its own: its children share it, for CPU accounting and stop().
            .process_group(0);
        let child = cmd.spawn().context("spawn kamailio")?;
        let edge = Self { kind: EdgeKind::Kamailio, pid: child.id(), child: Some(child), ctl, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !edge.alive() {
                bail!("Kamailio edge exited at start:\n{}", edge.log());
            }
            if edge.ctl.exists() && edge.kamcmd(&["core.version"]).is_ok() {
                return Ok(edge);
            }
            if Instant::now() > deadline {
                bail!("Kamailio edge not ready after 10 s:\n{}", edge.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Lines of the log that report a warning or an error.
    pub(crate) fn log_problems(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| ["WARN", "ERROR", "CRITICAL", "BUG", "panicked"].iter().any(|w| l.contains(w)))
            .map(str::to_owned)
            .collect()
    }

    /// Whether the main process still runs. It is never reaped before stop(), so its PID
    /// (Kamailio's process group id) stays ours.
    pub(crate) fn alive(&self) -> bool {
        self.child.is_some() && proc_stat(self.pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
    }

    /// CPU clock ticks used so far: the regedge process (all threads), or every process
    /// of Kamailio's group.
    pub(crate) fn cpu_ticks(&self) -> u64 {
        match self.kind {
            EdgeKind::Regedge => proc_stat(self.pid).map_or(0, |s| s.ticks),
            EdgeKind::Kamailio => group_ticks(self.pid),
        }
    }

    /// CPU ms per second over `window` with no load.
    fn idle_cpu_ms_per_s(&self, window: Duration) -> f64 {
        let before = self.cpu_ticks();
        std::thread::sleep(window);
        let ticks = self.cpu_ticks().saturating_sub(before);
        ticks as f64 / clock_ticks_per_second() * 1000.0 / window.as_secs_f64()
    }

    /// regedge's `regedge_bindings` (phones registered through it); `None` for Kamailio.
    fn bindings(&self, ns: &NetNs) -> Option<u64> {
        if self.kind != EdgeKind::Regedge {
            return None;
        }
        let text = scrape(METRICS, Some(ns)).ok()?;
        text.lines()
            .filter(|l| l.starts_with("regedge_bindings{") || l.starts_with("regedge_bindings "))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .reduce(|a, b| a + b)
    }

    /// regedge: `regedge_registrations_total` by outcome; Kamailio: all its statistics.
    pub(crate) fn counters(&self, ns: &NetNs) -> HashMap<String, u64> {
        match self.kind {
            EdgeKind::Regedge => scrape(METRICS, Some(ns)).map(|text| registration_outcomes(&text)).unwrap_or_default(),
            EdgeKind::Kamailio => {
                self.kamcmd(&["stats.get_statistics", "all"]).map(|t| parse_stats(&t)).unwrap_or_default()
            }
        }
    }

    pub(crate) fn kamcmd(&self, args: &[&str]) -> Result<String, String> {
        regedge_tests::kamailio::kamcmd(&self.ctl, args)
    }

    /// SIGTERM to the main process; after 5 s SIGKILL (to Kamailio's whole group); reaps
    /// it, and waits until no process of Kamailio's group is left.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal("-TERM", &self.pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_stat(self.pid).is_some_and(|s| s.state != 'Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.kind {
            EdgeKind::Regedge => {
                if proc_stat(self.pid).is_some_and(|s| s.state != 'Z') {
                    let _ = child.kill();
                }
            }
            EdgeKind::Kamailio => {
                // The leader is not reaped yet, so the group id is still ours. Children
                // that outlived it, or all of them, go now.
                if group_members(self.pid) > 0 {
                    signal("-KILL", &format!("-{}", self.pid));
                }
            }
        }
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.kind == EdgeKind::Kamailio && group_members(self.pid) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kill <sig> -- <target>` (a PID, or `-PGID` for a process group we created).
fn signal(sig: &str, target: &str) {
    let _ = Command::new("kill").args([sig, "--", target]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// The `skmem:(...)` of the socket on port 5060 in `ns`, as `ss -uamn` prints it.
fn socket_memory(ns: &NetNs) -> String {
    let out = ns.command("ss").args(["-uamnH", "sport = :5060"]).output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().find(|w| w.starts_with("skmem:")).unwrap_or("?").to_owned()
}

/// `regedge_registrations_total{protocol="sip",outcome="X"} N` → X → N.
fn registration_outcomes(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("regedge_registrations_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            let outcome = labels.split(',').find_map(|l| l.strip_prefix("outcome=\""))?.trim_end_matches('"');
            Some((outcome.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Every process's stat.
fn all_procs() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .filter_map(|e| parse_proc_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?))
        .collect()
}

/// CPU ticks of every process of group `pgid` (zombies included: their time is final).
fn group_ticks(pgid: u32) -> u64 {
    all_procs().iter().filter(|p| p.pgrp == pgid).map(|p| p.ticks).sum()
}

/// Live (not zombie) processes in group `pgid`.
fn group_members(pgid: u32) -> usize {
    all_procs().iter().filter(|p| p.pgrp == pgid && p.state != 'Z' && p.state != 'X').count()
}

/// stdout of a command, or its stderr when stdout is empty (`kamailio -v` and `sipp -v`).
fn version_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
        .unwrap_or_default()
}

fn tail(text: &str, chars: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(chars)).collect::<String>().trim().to_owned()
}

/// The highest offered rate with no failure, for one edge and scenario.
fn best(results: &[RunResult], edge: EdgeKind, scenario: Scenario) -> Option<&RunResult> {
    results.iter().filter(|r| r.edge == edge && r.scenario == scenario && r.clean()).max_by_key(|r| r.offered)
}

fn find(results: &[RunResult], edge: EdgeKind, scenario: Scenario, offered: u32) -> Option<&RunResult> {
    results.iter().find(|r| r.edge == edge && r.scenario == scenario && r.offered == offered)
}

fn render(plan: &Plan, results: &[RunResult], blocks: &[Block], notes: &[String], runtime: Duration) -> String {
    let cpu = crate::measured::cpu_model();
    let kamailio = version_output("kamailio", &["-v"])
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .trim_start_matches("version: ")
        .to_owned();
    let sipp = version_output("sipp", &["-v"])
        .lines()
        .find(|l| l.contains("SIPp"))
        .unwrap_or("")
        .trim()
        .trim_end_matches('.')
        .to_owned();
    let mut out = String::new();
    let _ = writeln!(out, "# Registration through the edge: regedge and Kamailio\n");
    let _ =
        writeln!(out, "Command: `{}` (as root); the whole run took {:.0} s.\n", plan.command(), runtime.as_secs_f64());
    let _ = writeln!(
        out,
        "Machine: {} CPUs, {cpu}, kernel {}; {kamailio}; {sipp}. sipp, the edge and the backend share these CPUs.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version_output("uname", &["-r"]),
    );
    let _ = writeln!(
        out,
        "Setup: phones (sipp, one UDP socket) → edge at {EDGE_IP}:{SIP_PORT} → backend Kamailio registrar at \
         {BACKEND_IP}:{SIP_PORT} (usrloc in memory, 1 child, `-x tlsf`), three network \
         namespaces joined by veth pairs. Edges, one after the other: regedge (release build, `workers = {WORKERS}`, \
         phone_expires 120, backend_expires 3600) and Kamailio (`bench/kamailio/dispatcher-edge.cfg`: dispatcher algorithm 8, tm, \
         add_path(), failure_route; `-x tlsf -n {WORKERS} -m {EDGE_SHM_MB} -M {EDGE_PKG_MB}`, debug=1). Loads: \
         `new`, each phone registers once; `1 + {REFRESHES} refreshes`, each phone registers then refreshes \
         {REFRESHES} times (same Call-ID, CSeq + 1) {interval} ms apart. sipp starts phones for {window} s per run at \
         offered / (1 + refreshes) phones per second; a phone with no answer within {timeout} s fails.\n",
        interval = REFRESH_INTERVAL.as_millis(),
        window = plan.window.as_secs(),
        timeout = RESPONSE_TIMEOUT.as_secs(),
    );
    let _ = writeln!(
        out,
        "Columns: *phone REG* = REGISTERs sipp sent (first transmissions) and *retr* its retransmissions; \
         *achieved* = first transmissions / sipp's elapsed time (which includes sipp's start and the last refresh \
         pauses); *failed* = phones that did not complete; *backend REG* = the backend's `core:rcv_requests_register` \
         delta; *ratio* = backend REG / (phone REG + retr); *CPU ms/1000* = utime + stime from /proc/PID/stat (the \
         regedge process, or every process of Kamailio's group; {hz:.0} ticks/s) per 1000 phone REGISTERs, i.e. µs \
         per REGISTER; *machine busy* = share of all CPUs' time not idle during the sipp run (/proc/stat).\n",
        hz = clock_ticks_per_second()
    );
    let _ = writeln!(
        out,
        "| edge | load | offered REG/s | phones | phone REG | retr | achieved REG/s | failed | backend REG | ratio | \
         edge CPU ms/1000 | backend CPU ms/1000 | machine busy |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {}{} | {} | {:.3} | {:.1} | {:.1} | {:.0}% |",
            r.edge.label(),
            r.scenario.label(),
            r.offered,
            r.phones,
            r.summary.requests_sent,
            r.summary.retransmissions,
            r.achieved(),
            r.failed(),
            if r.edge_alive { "" } else { " (edge exited)" },
            r.backend_registers,
            r.ratio(),
            r.per_1000(r.edge_cpu_s),
            r.per_1000(r.backend_cpu_s),
            r.machine_busy * 100.0,
        );
    }

    let _ = writeln!(out, "\nHighest offered rate with no failed phone (sweep: {:?} REG/s):\n", plan.rates);
    let _ = writeln!(out, "| edge | load | offered REG/s | achieved REG/s | ratio | edge CPU ms/1000 |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: |");
    for edge in EdgeKind::ALL {
        for scenario in Scenario::ALL {
            match best(results, edge, scenario) {
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.0} | {:.3} | {:.1} |",
                        edge.label(),
                        scenario.label(),
                        r.offered,
                        r.achieved(),
                        r.ratio(),
                        r.per_1000(r.edge_cpu_s)
                    );
                }
                None => {
                    let _ = writeln!(out, "| {} | {} | none | - | - | - |", edge.label(), scenario.label());
                }
            }
        }
    }

    let _ = writeln!(
        out,
        "\nEach sweep ran against a freshly started edge and backend. Edge CPU with no load, in ms per second over \
         {} s: after the edge's start, and after the sweep (1 s after its last run), with the bindings regedge held \
         then (`regedge_bindings`):\n",
        plan.idle().as_secs_f64()
    );
    let _ = writeln!(out, "| edge | load | idle CPU at start | idle CPU after the sweep | bindings held |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: |");
    for b in blocks {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} |",
            b.edge.label(),
            b.scenario.label(),
            b.idle_start,
            b.idle_end.map_or("-".to_owned(), |v| format!("{v:.1}")),
            b.bindings.map_or("-".to_owned(), |v| v.to_string())
        );
    }
    let mut sockets: Vec<String> = Vec::new();
    for b in blocks {
        let text = format!("{} `{}`", b.edge.label(), b.socket);
        if !sockets.contains(&text) {
            sockets.push(text);
        }
    }
    let _ = writeln!(
        out,
        "\nThe edge's SIP socket as `ss -uamn` showed it after the start (rb = receive buffer, tb = send buffer, \
         bytes): {}. All namespaces keep the machine's socket buffer defaults (net.core.rmem_default {}), which \
         sipp's socket uses too (the harness passes no -buff_size; these sysctls cannot be written from a \
         non-initial namespace here); the last table counts datagrams each namespace dropped for a full receive \
         buffer.",
        sockets.join("; "),
        version_output("sysctl", &["-n", "net.core.rmem_default"]),
    );
    let _ = writeln!(
        out,
        "\nThe edges' own counters per run, receive-buffer drops (/proc/net/snmp `Udp: RcvbufErrors` in each \
         namespace), and where the machine's CPU time went during the sipp run (/proc/PID/stat of the edge, the \
         backend and sipp; /proc/stat for interrupts and softirqs, where the veth pairs' packets are processed; \
         *rest* = the machine's other busy time: this benchmark, other programs):\n"
    );
    let _ = writeln!(
        out,
        "| edge | load | offered REG/s | edge counters | UDP receive-buffer drops: phones / proxy / backend | \
         CPU s: edge / backend / sipp / irq+softirq / rest |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | --- | --- | --- |");
    for r in results {
        let [p, x, b] = r.udp_drops;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {p} / {x} / {b} | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} |",
            r.edge.label(),
            r.scenario.label(),
            r.offered,
            r.edge_counters,
            r.edge_cpu_s,
            r.backend_cpu_s,
            r.sipp_cpu_s,
            r.irq_cpu_s,
            r.rest_cpu_s()
        );
    }

    let _ = writeln!(out, "\n## Reading\n");
    let _ = writeln!(out, "{}", reading(plan, results, blocks));
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// One paragraph of what was measured, from the figures of this run only.
fn reading(plan: &Plan, results: &[RunResult], blocks: &[Block]) -> String {
    let mut text = String::new();
    let rate_text =
        |r: Option<&RunResult>| r.map_or("none of the swept rates".to_owned(), |r| format!("{}/s", r.offered));
    let _ = write!(
        text,
        "Highest offered rate without a failed phone, in a sweep up to {}/s: regedge {} (new) and {} (refresh), \
         Kamailio {} (new) and {} (refresh).",
        plan.rates.last().copied().unwrap_or(0),
        rate_text(best(results, EdgeKind::Regedge, Scenario::New)),
        rate_text(best(results, EdgeKind::Regedge, Scenario::Refresh)),
        rate_text(best(results, EdgeKind::Kamailio, Scenario::New)),
        rate_text(best(results, EdgeKind::Kamailio, Scenario::Refresh)),
    );
    for scenario in Scenario::ALL {
        // The highest rate both edges served without failure, for a like-for-like row.
        let common = plan
            .rates
            .iter()
            .rev()
            .filter_map(|&rate| {
                let offered = {
                    let per_phone = 1 + scenario.refreshes();
                    rate.div_ceil(per_phone) * per_phone
                };
                let g = find(results, EdgeKind::Regedge, scenario, offered)?;
                let k = find(results, EdgeKind::Kamailio, scenario, offered)?;
                (g.clean() && k.clean()).then_some((g, k))
            })
            .next();
        let Some((g, k)) = common else {
            let _ =
                write!(text, " With load `{}` there is no rate both edges served without failure.", scenario.label());
            continue;
        };
        let _ = write!(
            text,
            " With load `{}` at {}/s offered (the highest rate both served without failure), {:.0} and {:.0} REGISTERs/s \
             were achieved; the backend received {} REGISTERs for {} sent by phones through regedge (ratio {:.3}) and {} \
             for {} through Kamailio (ratio {:.3}); the edge used {:.1} ms of CPU per 1000 REGISTERs for regedge and \
             {:.1} for Kamailio, the backend {:.1} and {:.1}.",
            scenario.label(),
            g.offered,
            g.achieved(),
            k.achieved(),
            g.backend_registers,
            g.phone_registers(),
            g.ratio(),
            k.backend_registers,
            k.phone_registers(),
            k.ratio(),
            g.per_1000(g.edge_cpu_s),
            k.per_1000(k.edge_cpu_s),
            g.per_1000(g.backend_cpu_s),
            k.per_1000(k.backend_cpu_s),
        );
    }
    let first_failures: Vec<String> = EdgeKind::ALL
        .into_iter()
        .flat_map(|edge| Scenario::ALL.map(move |scenario| (edge, scenario)))
        .filter_map(|(edge, scenario)| {
            let r = results.iter().find(|r| r.edge == edge && r.scenario == scenario && !r.clean())?;
            let [p, x, b] = r.udp_drops;
            Some(format!(
                "{} `{}` at {}/s ({} failed phones, all CPUs {:.0}% busy, UDP receive-buffer drops phones/proxy/backend \
                 {p}/{x}/{b})",
                edge.label(),
                scenario.label(),
                r.offered,
                r.failed(),
                r.machine_busy * 100.0
            ))
        })
        .collect();
    if !first_failures.is_empty() {
        let _ = write!(text, " First rates with failures: {}.", first_failures.join("; "));
    }
    let idle: Vec<String> = blocks
        .iter()
        .filter_map(|b| {
            let end = b.idle_end?;
            let held = b.bindings.map_or(String::new(), |n| format!(", holding {n} bindings"));
            Some(format!(
                "{} {:.0} after its start and {end:.0} after the `{}` sweep{held}",
                b.edge.label(),
                b.idle_start,
                b.scenario.label()
            ))
        })
        .collect();
    if !idle.is_empty() {
        let _ = write!(text, " CPU with no load, in ms per second: {}.", idle.join("; "));
    }
    let _ = write!(
        text,
        " Achieved rates are below offered ones by sipp's start-up and, with refreshes, the last {} ms pauses, which \
         the elapsed time includes. CPU times have a resolution of one clock tick (10 ms at 100 ticks/s) per process.",
        u128::from(REFRESHES) * REFRESH_INTERVAL.as_millis()
    );
    text
}
