//! `refresh`: REGISTER refreshes and keepalives (OPTIONS to the proxy, STUN) per second
//! answered at the edge, one generator, one run.
//!
//! Topology: three network namespaces, phones (10.230.0.2–.5 on `rfc0`) — proxy
//! (10.230.0.1 on `rfp0`, 10.231.0.1 on `rfp1`) — backend (10.231.0.11, the harness's
//! Kamailio registrar, which regedge forwards full registrations to). The phones' veth
//! carries an XDP program in native mode in every case (regedge's own program with no
//! listener, which passes everything): native XDP_TX on veth needs one on the peer
//! (EBPF-NOTES.md), and every case keeps the same topology.
//!
//! Cases, one after the other, each with phones of its own (their own Call-IDs):
//! regedge with `[fastpath] mode = "native"`, `"generic"`, `"off"` (release build,
//! `workers = 1`, phone_expires 120, backend_expires 3600), then Kamailio as the
//! registrar itself on 10.230.0.1 (`tests/kamailio/registrar.cfg`, `-x tlsf`, one child,
//! debug 1), then Kamailio as a dispatcher edge on 10.230.0.1 in front of the same
//! registrar (`bench/kamailio/dispatcher-edge.cfg`). Each case registers every phone once
//! (full REGISTERs at a moderate rate, every phone must get its 200), then, for each kind
//! it answers (refreshes, OPTIONS; STUN for regedge only), measures: latency at a common
//! moderate rate, and an open-loop sweep of rising rates (halved when even the first
//! fails, bisected after the first failure). A step passes with less than 0.1% of its
//! requests without a success answer and the generator sending within 3% of the offered
//! rate.
//!
//! CPU per step: the server's utime + stime (/proc/PID/stat; Kamailio: its whole process
//! group), softirq and all busy time of the machine (/proc/stat), the generator's own.
//! The generator: [`generator`].

pub(crate) mod generator;
pub(crate) mod kernel_cost;
pub(crate) mod xdp_pass;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::ffi::OsStrExt as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::measured::{clock_ticks_per_second, command_output, parse_proc_stat, proc_stat, regedge_binary};
use anyhow::{Context as _, bail, ensure};
use generator::{Fleet, FleetSpec, Kind, StepResult};
use regedge_tests::{
    kamailio::{Kamailio, KamailioOpts},
    netns::NetNs,
    privilege::{require_program, require_root},
    process::{Regedge as RegedgeProcess, TempDir, scrape, workspace_root},
};
use xdp_pass::XdpPass;

pub(crate) const PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 230, 0, 1);
const PHONE_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 230, 0, 2),
    Ipv4Addr::new(10, 230, 0, 3),
    Ipv4Addr::new(10, 230, 0, 4),
    Ipv4Addr::new(10, 230, 0, 5),
];
pub(crate) const PROXY_BACKEND_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
pub(crate) const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 11);
/// Source MAC of the phones' frames (locally administered), see [`Topology::new`].
const PHONES_MAC: [u8; 6] = [0x02, 0x52, 0x46, 0x00, 0x00, 0x01];
pub(crate) const PROXY_IF: &str = "rfp0";
const PHONE_IF: &str = "rfc0";
pub(crate) const SIP_PORT: u16 = 5060;
pub(crate) const DOMAIN: &str = "edge.example.net";
pub(crate) const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);
/// regedge worker threads = Kamailio children.
pub(crate) const WORKERS: u32 = 1;
/// Generator threads that send (each paces its share of the rate); one more receives.
const SENDERS: usize = 2;
/// A failing step is run again (at most [`RETRIES`] times per sweep) when other processes used more
/// than this many CPUs during it: other work on the machine, not the server, may have
/// caused the loss.
const OTHERS_BUSY: f64 = 0.15;
const RETRIES: u32 = 2;
/// A step passes below this share of refreshes without a 200.
const MAX_LOSS: f64 = 0.001;
/// A step's generator must send at least this share of the offered rate.
const MIN_SEND_SHARE: f64 = 0.97;
/// Full REGISTERs per second while phones register.
const REGISTER_RATE: u64 = 4000;
/// Offered rates, per second, rising (bisection narrows the gap after the first failure).
const RATES: &[u64] =
    &[10_000, 20_000, 40_000, 80_000, 120_000, 160_000, 240_000, 320_000, 480_000, 640_000, 1_000_000];
const QUICK_RATES: &[u64] = &[20_000, 160_000];

struct Plan {
    quick: bool,
    /// Offered rates, per second, rising.
    rates: &'static [u64],
    phones: usize,
    step: Duration,
    latency_rate: u64,
    latency_window: Duration,
    /// Extra steps between the last passing and the first failing rate.
    bisections: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rates: QUICK_RATES,
                phones: 1000,
                step: Duration::from_millis(300),
                latency_rate: 10_000,
                latency_window: Duration::from_millis(300),
                bisections: 0,
            }
        } else {
            Self {
                quick,
                rates: RATES,
                phones: 20_000,
                step: Duration::from_secs(2),
                latency_rate: 10_000,
                latency_window: Duration::from_secs(2),
                bisections: 2,
            }
        }
    }

    fn command(&self) -> &'static str {
        if self.quick {
            "cargo run --release -p regedge-bench -- refresh --quick"
        } else {
            "cargo run --release -p regedge-bench -- refresh"
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    Native,
    Generic,
    Off,
    Kamailio,
    KamailioEdge,
}

impl Case {
    pub(crate) const ALL: [Self; 5] = [Self::Native, Self::Generic, Self::Off, Self::Kamailio, Self::KamailioEdge];

    /// What this server is measured on: Kamailio has no STUN server in these configs.
    pub(crate) fn kinds(self) -> &'static [Kind] {
        match self {
            Self::Kamailio | Self::KamailioEdge => &[Kind::Register, Kind::Options],
            _ => &Kind::ALL,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Native => "regedge, XDP native",
            Self::Generic => "regedge, XDP generic",
            Self::Off => "regedge, fast path off",
            Self::Kamailio => "Kamailio registrar",
            Self::KamailioEdge => "Kamailio dispatcher edge",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Native => b'n',
            Self::Generic => b'g',
            Self::Off => b'u',
            Self::Kamailio => b'k',
            Self::KamailioEdge => b'e',
        }
    }

    fn xdp(self) -> bool {
        matches!(self, Self::Native | Self::Generic)
    }
}

/// CPU counters at one moment.
#[derive(Clone, Copy, Default)]
struct CpuSample {
    at: Option<Instant>,
    server_ticks: u64,
    own_ticks: u64,
    /// Every other process (children's time included: builds run in short processes).
    other_ticks: u64,
    /// /proc/stat, all CPUs: total, idle + iowait, softirq.
    total: u64,
    idle: u64,
    softirq: u64,
}

/// One measured step with its CPU use.
pub(crate) struct Step {
    pub result: StepResult,
    wall_s: f64,
    pub server_cpu_s: f64,
    pub softirq_s: f64,
    busy_s: f64,
    pub own_cpu_s: f64,
    /// CPU seconds of every other process during the step.
    others_s: f64,
    rx_drops: u64,
    /// UDP datagrams the proxy namespace dropped for a full receive buffer (the server's
    /// socket): /proc/net/snmp `Udp: RcvbufErrors`.
    server_drops: u64,
}

impl Step {
    pub(crate) fn passed(&self) -> bool {
        self.result.loss() < MAX_LOSS && self.generator_kept_up()
    }

    /// CPUs other processes used during the step.
    fn others_busy(&self) -> f64 {
        self.others_s / self.wall_s.max(1e-9)
    }

    fn generator_kept_up(&self) -> bool {
        self.result.achieved_send_rate() >= MIN_SEND_SHARE * self.result.offered_rate as f64
    }

    /// Refreshes answered 200 per second of the step's wall time.
    pub(crate) fn answered_rate(&self) -> f64 {
        self.result.ok as f64 / self.result.send_elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU seconds per second, per 100k answered refreshes per second.
    pub(crate) fn per_100k(&self, cpu_s: f64) -> f64 {
        let rate = self.answered_rate();
        if rate <= 0.0 { f64::NAN } else { cpu_s / self.wall_s.max(1e-9) / (rate / 100_000.0) }
    }

    /// The server's cost: its process, plus softirq time when the kernel answers (XDP).
    pub(crate) fn server_cost_s(&self, case: Case) -> f64 {
        if case.xdp() { self.server_cpu_s + self.softirq_s } else { self.server_cpu_s }
    }
}

pub(crate) struct CaseResult {
    pub case: Case,
    pub kind: Kind,
    registered: usize,
    register_sent: u64,
    register_503: u64,
    register_s: f64,
    pub latency: Option<Step>,
    pub steps: Vec<Step>,
    /// Counters of the server over the whole case (deltas), as `name → value`.
    counters: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

impl CaseResult {
    pub(crate) fn best(&self) -> Option<&Step> {
        self.steps.iter().filter(|s| s.passed()).max_by_key(|s| s.result.offered_rate)
    }

    fn first_failure(&self) -> Option<&Step> {
        let best = self.best().map_or(0, |s| s.result.offered_rate);
        self.steps.iter().filter(|s| !s.passed() && s.result.offered_rate > best).min_by_key(|s| s.result.offered_rate)
    }

    fn counter(&self, key: &str) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => bail!("usage: regedge-bench refresh [--quick]"),
    };
    measure_all(quick).map(|_| ())
}

/// What the main report quotes: every (server, kind) result, the common latency rate.
pub(crate) struct Summary {
    pub results: Vec<CaseResult>,
    pub latency_rate: u64,
    pub kernel_cost: Result<(Vec<kernel_cost::CostRow>, Option<u32>), String>,
}

/// Runs every case and writes bench/report/refresh.md and its plots.
pub(crate) fn measure_all(quick: bool) -> anyhow::Result<Summary> {
    if !require_root("refresh") {
        bail!("refresh needs root (network namespaces, XDP, AF_PACKET)");
    }
    for program in ["ip", "kamailio", "kamcmd"] {
        ensure!(require_program("refresh", program), "{program} is not installed");
    }
    let plan = Plan::new(quick);
    let (binary, build_note) = regedge_binary()?;
    eprintln!("regedge: {} ({build_note})", binary.display());
    // The run's time, without the one-time build of regedge.
    let started = Instant::now();

    let net = Topology::new()?;
    let mut backend = Kamailio::start(
        &net.backend,
        BACKEND_IP,
        KamailioOpts { children: WORKERS, shm_mb: 512, pkg_mb: 64, debug: 1, ..KamailioOpts::default() },
    );
    let mut results = Vec::new();
    for (n, case) in Case::ALL.into_iter().enumerate() {
        if n > 0 && case != Case::Kamailio {
            backend.restart();
        }
        let case_results = run_case(&net, &binary, &plan, case)
            .with_context(|| format!("case {}", case.label()))
            .unwrap_or_else(|e| {
                case.kinds()
                    .iter()
                    .map(|&kind| CaseResult {
                        case,
                        kind,
                        registered: 0,
                        register_sent: 0,
                        register_503: 0,
                        register_s: 0.0,
                        latency: None,
                        steps: Vec::new(),
                        counters: BTreeMap::new(),
                        notes: vec![format!("failed: {e:#}")],
                    })
                    .collect()
            });
        results.extend(case_results);
    }
    drop(backend);
    drop(net);
    let payload = generator::refresh_payload(&fleet_spec(Case::Native, &plan, [0; 6], [0; 6]), 0, 2).0.len();

    let cost =
        kernel_cost::measure(&fleet_spec(Case::Native, &plan, [0; 6], [0; 6]), "bench").map_err(|e| format!("{e:#}"));
    let mut report = render(&plan, &results, &build_note, payload, &cost, started.elapsed());
    report.push_str(&plots(&plan, &results));
    print!("{report}");
    let dir = workspace_root().join("bench").join("report");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("refresh.md");
    std::fs::write(&path, &report)?;
    eprintln!("wrote {} after {:.0} s", path.display(), started.elapsed().as_secs_f64());
    Ok(Summary { results, latency_rate: plan.latency_rate, kernel_cost: cost })
}

/// Throughput against offered load and latency CDFs, one pair of SVGs per kind; the
/// markdown that links them.
fn plots(plan: &Plan, results: &[CaseResult]) -> String {
    let mut out = String::from("\n## Plots\n\n");
    for kind in Kind::ALL {
        let of_kind: Vec<&CaseResult> = results.iter().filter(|r| r.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let throughput: Vec<crate::plot::Series> = of_kind
            .iter()
            .map(|r| {
                // Per offered rate, its last step (a step run again replaces the earlier one).
                let mut by_rate: BTreeMap<u64, f64> = BTreeMap::new();
                for s in &r.steps {
                    by_rate.insert(s.result.offered_rate, s.answered_rate());
                }
                let points: Vec<(f64, f64)> = by_rate.into_iter().map(|(o, a)| (o as f64, a)).collect();
                crate::plot::Series { name: r.case.label().to_owned(), points }
            })
            .collect();
        let file = format!("refresh-throughput-{}.svg", kind.short());
        match crate::plot::lines(
            &file,
            &format!("{}: answered with success per second against offered (open loop)", kind.label()),
            "offered per second",
            "answered with success per second",
            &throughput,
            false,
        ) {
            Ok(()) => out.push_str(&format!("![{} throughput]({file})\n\n", kind.label())),
            Err(e) => out.push_str(&format!("{} throughput plot not drawn: {e:#}\n\n", kind.label())),
        }
        let cdfs: Vec<crate::plot::Series> = of_kind
            .iter()
            .filter_map(|r| {
                let l = r.latency.as_ref()?;
                Some(crate::plot::Series {
                    name: r.case.label().to_owned(),
                    points: crate::plot::cdf(&l.result.histogram),
                })
            })
            .collect();
        let file = format!("refresh-latency-{}.svg", kind.short());
        match crate::plot::lines(
            &file,
            &format!("{}: latency CDF at {}/s offered", kind.label(), fmt_rate(plan.latency_rate as f64)),
            "latency, µs (log scale)",
            "percentile",
            &cdfs,
            true,
        ) {
            Ok(()) => out.push_str(&format!("![{} latency CDF]({file})\n\n", kind.label())),
            Err(e) => out.push_str(&format!("{} latency plot not drawn: {e:#}\n\n", kind.label())),
        }
    }
    out
}

/// The phones of `case`.
fn fleet_spec(case: Case, plan: &Plan, src_mac: [u8; 6], dst_mac: [u8; 6]) -> FleetSpec {
    FleetSpec {
        tag: case.tag(),
        phones: plan.phones,
        addrs: PHONE_IPS.to_vec(),
        first_port: 20_000,
        server: PROXY_IP,
        domain: DOMAIN.to_owned(),
        first_user: 100_000,
        expires: 120,
        src_mac,
        dst_mac,
    }
}

/// One case: start the server, register the phones, then per kind a latency run and a
/// sweep; stop.
fn run_case(net: &Topology, binary: &std::path::Path, plan: &Plan, case: Case) -> anyhow::Result<Vec<CaseResult>> {
    let server = match case {
        Case::Kamailio => Server::Kamailio(Kamailio::start(
            &net.proxy,
            PROXY_IP,
            KamailioOpts { children: WORKERS, shm_mb: 512, pkg_mb: 64, debug: 1, ..KamailioOpts::default() },
        )),
        Case::KamailioEdge => {
            Server::KamailioEdge(crate::registration::Edge::kamailio_at(&net.proxy, PROXY_IP, &[BACKEND_IP])?)
        }
        _ => Server::Regedge(Regedge::start(&net.proxy, binary, case)?),
    };
    eprintln!("{}: pid {}", case.label(), server.pid());
    let quiet = wait_for_quiet(&server, if plan.quick { Duration::ZERO } else { Duration::from_secs(10) });
    let spec = fleet_spec(case, plan, net.phone_mac, net.proxy_mac);
    let sockets = net.phones.run(|| generator::open_sockets(net.phone_ifindex))?;
    let fleet = Fleet::new(spec, sockets)?;
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| -> anyhow::Result<Vec<CaseResult>> {
        let receiver = scope.spawn(|| fleet.receive(&stop));
        let result = (|| -> anyhow::Result<Vec<CaseResult>> {
            let reg_start = Instant::now();
            let deadline =
                Duration::from_secs(10) + Duration::from_secs_f64(plan.phones as f64 / REGISTER_RATE as f64 * 3.0);
            let (registered, register_sent, register_503) =
                fleet.register_all(REGISTER_RATE, Duration::from_millis(1000), deadline);
            let register_s = reg_start.elapsed().as_secs_f64();
            eprintln!(
                "{}: {registered}/{} phones registered in {register_s:.1} s ({register_sent} REGISTERs, {register_503} × 503)",
                case.label(),
                plan.phones
            );
            ensure!(registered == plan.phones, "only {registered} of {} phones registered", plan.phones);
            // regedge writes the kernel mirror after the 200 went out.
            std::thread::sleep(Duration::from_millis(if plan.quick { 200 } else { 500 }));
            let mut out = Vec::new();
            for &kind in case.kinds() {
                fleet.set_kind(kind);
                let mut notes = Vec::new();
                let counters_before = server.counters(&net.proxy);
                let latency = measure(net, &fleet, &server, plan.latency_rate, plan.latency_window, &stop);
                eprintln!("{} {}: latency run {}", case.label(), kind.label(), describe(&latency));
                let steps =
                    sweep(net, &fleet, &server, plan, &stop, &mut notes, &format!("{} {}", case.label(), kind.label()));
                let counters_after = server.counters(&net.proxy);
                let counters = counters_after
                    .iter()
                    .map(|(k, v)| (k.clone(), v.saturating_sub(counters_before.get(k).copied().unwrap_or(0))))
                    .filter(|(_, v)| *v > 0)
                    .collect();
                out.push(CaseResult {
                    case,
                    kind,
                    registered,
                    register_sent,
                    register_503,
                    register_s,
                    latency: Some(latency),
                    steps,
                    counters,
                    notes,
                });
                if !server.alive() {
                    break;
                }
            }
            Ok(out)
        })();
        stop.store(true, Ordering::Relaxed);
        let _ = receiver.join();
        result
    });
    let mut results = outcome?;
    let problems = server.log_problems();
    if let Some(first) = results.first_mut() {
        if let Err(busy) = quiet {
            first.notes.push(format!("other processes still used {busy:.2} CPUs when the case started"));
        }
        if !problems.is_empty() {
            first.notes.push(format!(
                "the server logged {} warning or error lines; the last: `{}`",
                problems.len(),
                problems.last().map(String::as_str).unwrap_or("")
            ));
        }
    }
    drop(server);
    Ok(results)
}

/// Rising rates until the failures allowed, then bisection between the last pass and the
/// first failure.
fn sweep(
    net: &Topology,
    fleet: &Fleet,
    server: &Server,
    plan: &Plan,
    stop: &AtomicBool,
    notes: &mut Vec<String>,
    label: &str,
) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut failures = 0;
    let mut retries = 0;
    let max_failures = if plan.quick { 1 } else { 2 };
    for &rate in plan.rates {
        if failures >= max_failures {
            break;
        }
        let mut step = measure(net, fleet, server, rate, plan.step, stop);
        eprintln!("{label}: {}", describe(&step));
        // At most RETRIES runs again per sweep (not per step), so that a busy machine
        // cannot stretch the run without bound.
        let max_retries = if plan.quick { 0 } else { RETRIES };
        while !step.passed() && step.others_busy() > OTHERS_BUSY && retries < max_retries && server.alive() {
            retries += 1;
            notes.push(format!("{rate}/s failed while other processes used {:.2} CPUs: run again", step.others_busy()));
            std::thread::sleep(Duration::from_secs(2));
            steps.push(step);
            step = measure(net, fleet, server, rate, plan.step, stop);
            eprintln!("{label}: again: {}", describe(&step));
        }
        let passed = step.passed();
        let kept_up = step.generator_kept_up();
        steps.push(step);
        if !server.alive() {
            notes.push(format!("the server exited during the {rate}/s step"));
            break;
        }
        if passed {
            failures = 0;
        } else {
            failures += 1;
            std::thread::sleep(Duration::from_millis(if plan.quick { 300 } else { 700 }));
            if !kept_up {
                // Higher rates would only measure the generator again.
                break;
            }
        }
    }
    // Nothing passed, the server (not the generator) being the limit: halve the lowest
    // rate, twice at most, so that a slow server still gets a figure.
    let mut low = plan.rates[0];
    for _ in 0..if plan.quick { 1 } else { 2 } {
        if steps.iter().any(Step::passed) || !steps.iter().all(Step::generator_kept_up) || !server.alive() {
            break;
        }
        low /= 2;
        std::thread::sleep(Duration::from_millis(if plan.quick { 300 } else { 700 }));
        let step = measure(net, fleet, server, low, plan.step, stop);
        eprintln!("{label}: {}", describe(&step));
        steps.push(step);
    }
    // Narrow the gap between the last passing and the first failing rate.
    for _ in 0..plan.bisections {
        let best = steps.iter().filter(|s| s.passed()).map(|s| s.result.offered_rate).max();
        let fail = steps
            .iter()
            .filter(|s| !s.passed() && s.generator_kept_up())
            .map(|s| s.result.offered_rate)
            .filter(|r| best.is_none_or(|b| *r > b))
            .min();
        let (Some(lo), Some(hi)) = (best, fail) else { break };
        let mid = (lo + hi) / 2 / 1000 * 1000;
        if mid <= lo || hi - lo < 10_000 || !server.alive() {
            break;
        }
        let step = measure(net, fleet, server, mid, plan.step, stop);
        eprintln!("{label}: {}", describe(&step));
        if !step.passed() {
            std::thread::sleep(Duration::from_millis(700));
        }
        steps.push(step);
    }
    steps
}

fn describe(s: &Step) -> String {
    let r = &s.result;
    format!(
        "{}/s offered: sent {} at {:.0}/s ({} refused), 200 {}, other {}, unmatched {}, loss {:.4}%, p50 {:.0} µs p99 {:.0} µs, \
         server {:.2} s, softirq {:.2} s, generator {:.2} s, others {:.2} s, busy {:.2} s of {:.2} s wall, rx drops {}, server socket drops {} → {}",
        r.offered_rate,
        r.sent,
        r.achieved_send_rate(),
        r.send_errors,
        r.ok,
        r.not_ok,
        r.unmatched,
        r.loss() * 100.0,
        r.percentile_us(0.5),
        r.percentile_us(0.99),
        s.server_cpu_s,
        s.softirq_s,
        s.own_cpu_s,
        s.others_s,
        s.busy_s,
        s.wall_s,
        s.rx_drops,
        s.server_drops,
        if s.passed() { "pass" } else { "FAIL" }
    )
}

/// `Udp: RcvbufErrors` of /proc/net/snmp in `ns`.
pub(crate) fn udp_rcvbuf_errors(ns: &NetNs) -> u64 {
    let out = ns.command("cat").arg("/proc/net/snmp").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(header), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    let Some(index) = header.split_whitespace().position(|h| h == "RcvbufErrors") else { return 0 };
    values.split_whitespace().nth(index).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Waits (at most `limit`) until other processes use less than [`OTHERS_BUSY`] CPUs over a
/// second; `Err` with what they used last when they never did.
fn wait_for_quiet(server: &Server, limit: Duration) -> Result<(), f64> {
    let hz = clock_ticks_per_second();
    let deadline = Instant::now() + limit;
    loop {
        let before = other_ticks(server);
        std::thread::sleep(Duration::from_secs(1));
        let busy = other_ticks(server).saturating_sub(before) as f64 / hz;
        if busy < OTHERS_BUSY {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(busy);
        }
        eprintln!("other processes use {busy:.2} CPUs: waiting");
    }
}

/// One open-loop step at `rate` with CPU counters read around it.
fn measure(net: &Topology, fleet: &Fleet, server: &Server, rate: u64, window: Duration, stop: &AtomicBool) -> Step {
    let drops_before = generator::rx_drops(fleet);
    let server_drops_before = udp_rcvbuf_errors(&net.proxy);
    let before = cpu_sample(server);
    let result = fleet.run_step(rate, window, SENDERS, Duration::from_millis(300), stop);
    let after = cpu_sample(server);
    let rx_drops = generator::rx_drops(fleet).saturating_sub(drops_before);
    let server_drops = udp_rcvbuf_errors(&net.proxy).saturating_sub(server_drops_before);
    let hz = clock_ticks_per_second();
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / hz;
    let step = Step {
        wall_s: after.at.zip(before.at).map_or(0.0, |(a, b)| a.duration_since(b).as_secs_f64()),
        server_cpu_s: d(after.server_ticks, before.server_ticks),
        softirq_s: d(after.softirq, before.softirq),
        busy_s: d(after.total, before.total) - d(after.idle, before.idle),
        own_cpu_s: d(after.own_ticks, before.own_ticks),
        others_s: d(after.other_ticks, before.other_ticks),
        rx_drops,
        server_drops,
        result,
    };
    // Let queues drain between steps.
    std::thread::sleep(Duration::from_millis(200));
    step
}

fn cpu_sample(server: &Server) -> CpuSample {
    let values = crate::measured::proc_stat_cpu();
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    CpuSample {
        at: Some(Instant::now()),
        server_ticks: server.cpu_ticks(),
        own_ticks: proc_stat(std::process::id()).map_or(0, |s| s.ticks),
        other_ticks: other_ticks(server),
        total: values.iter().take(8).sum(),
        idle: field(3) + field(4),
        softirq: field(6),
    }
}

/// Three namespaces, two veth pairs, the peer XDP program; removed on drop.
pub(crate) struct Topology {
    // Drop order: the peer program before the namespaces.
    _peer_xdp: XdpPass,
    pub phones: NetNs,
    pub proxy: NetNs,
    pub backend: NetNs,
    pub phone_ifindex: i32,
    pub phone_mac: [u8; 6],
    pub proxy_mac: [u8; 6],
}

impl Topology {
    fn new() -> anyhow::Result<Self> {
        Self::with(&PHONE_IPS, &[BACKEND_IP])
    }

    /// The topology with phones on `phone_ips` (10.230.0.0/24) and backends on
    /// `backend_ips` (10.231.0.0/24).
    pub(crate) fn with(phone_ips: &[Ipv4Addr], backend_ips: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let phones = NetNs::new("rf-phones");
        let proxy = NetNs::new("rf-proxy");
        let backend = NetNs::new("rf-backend");
        // As NetNs::link, with one queue per CPU on both ends (as a NIC with RSS has): each
        // queue has its own NAPI, so the XDP program can run on every CPU.
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
        regedge_tests::netns::ip(&[
            "link",
            "add",
            PROXY_IF,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "netns",
            &proxy.name,
            "type",
            "veth",
            "peer",
            "name",
            PHONE_IF,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "netns",
            &phones.name,
        ]);
        for (ns, dev, addr) in [(&proxy, PROXY_IF, PROXY_IP), (&phones, PHONE_IF, phone_ips[0])] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        for ip in &phone_ips[1..] {
            phones.ip(&["addr", "add", &format!("{ip}/24"), "dev", PHONE_IF]);
        }
        proxy.link("rfp1", &PROXY_BACKEND_SIDE_IP.to_string(), &backend, "rfb0", &backend_ips[0].to_string(), 24);
        for ip in &backend_ips[1..] {
            backend.ip(&["addr", "add", &format!("{ip}/24"), "dev", "rfb0"]);
        }
        backend.route("10.230.0.0/24", &PROXY_BACKEND_SIDE_IP.to_string());
        let (phone_ifindex, _) = link_info(&phones, PHONE_IF)?;
        let phone_mac = PHONES_MAC;
        let peer_xdp =
            phones.run(|| XdpPass::attach_native(phone_ifindex)).context("attach XDP_PASS to the phones' veth")?;
        let (_, proxy_mac) = link_info(&proxy, PROXY_IF)?;
        // The phones' MAC as the proxy knows it, up front and for good: not the veth's own
        // address, so every reply reaches the phones' veth as PACKET_OTHERHOST, which the
        // receiving AF_PACKET socket sees and the phones' IP stack drops at its first check
        // (no route lookup, no UDP lookup, no ICMP port unreachable per reply). The XDP
        // answers go there too: the program swaps the request's MACs.
        for &ip in phone_ips {
            let _ = proxy
                .command("ip")
                .args([
                    "neigh",
                    "replace",
                    &ip.to_string(),
                    "lladdr",
                    &mac_text(phone_mac),
                    "dev",
                    PROXY_IF,
                    "nud",
                    "permanent",
                ])
                .status();
        }
        Ok(Self { _peer_xdp: peer_xdp, phones, proxy, backend, phone_ifindex, phone_mac, proxy_mac })
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Interface index and MAC address of `dev` in `ns`.
fn link_info(ns: &NetNs, dev: &str) -> anyhow::Result<(i32, [u8; 6])> {
    let out = ns.command("ip").args(["-o", "link", "show", "dev", dev]).output().context("ip link show")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let index: i32 =
        text.split(':').next().unwrap_or("").trim().parse().with_context(|| format!("ifindex in {text}"))?;
    let mac_text = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("MAC address in {text}"))?;
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(mac_text.split(':')) {
        *slot = u8::from_str_radix(part, 16)?;
    }
    Ok((index, mac))
}

enum Server {
    Regedge(Regedge),
    Kamailio(Kamailio),
    KamailioEdge(crate::registration::Edge),
}

impl Server {
    fn pid(&self) -> u32 {
        match self {
            Self::Regedge(r) => r.pid,
            Self::Kamailio(k) => k.pid(),
            Self::KamailioEdge(e) => e.pid(),
        }
    }

    fn alive(&self) -> bool {
        match self {
            Self::Regedge(r) => r.alive(),
            Self::Kamailio(k) => k.is_running(),
            Self::KamailioEdge(e) => e.alive(),
        }
    }

    fn cpu_ticks(&self) -> u64 {
        match self {
            Self::Regedge(r) => proc_stat(r.pid).map_or(0, |s| s.ticks),
            Self::Kamailio(k) => group_ticks(k.pid()),
            Self::KamailioEdge(e) => e.cpu_ticks(),
        }
    }

    /// regedge: every sample of its counters; Kamailio: its statistics.
    fn counters(&self, proxy: &NetNs) -> BTreeMap<String, u64> {
        match self {
            Self::Regedge(_) => scrape(METRICS, Some(proxy)).map(|t| counter_samples(&t)).unwrap_or_default(),
            Self::Kamailio(k) => k
                .kamcmd(&["stats.get_statistics", "all"])
                .map(|t| regedge_tests::kamailio::parse_stats(&t).into_iter().collect())
                .unwrap_or_default(),
            Self::KamailioEdge(e) => e.counters(proxy).into_iter().collect(),
        }
    }

    fn log_problems(&self) -> Vec<String> {
        let log = match self {
            Self::Regedge(r) => r.process.log(),
            Self::Kamailio(k) => k.log(),
            Self::KamailioEdge(e) => e.log(),
        };
        log.lines()
            .filter(|l| ["WARN", "ERROR", "CRITICAL", "BUG", "panicked"].iter().any(|w| l.contains(w)))
            .map(str::to_owned)
            .collect()
    }
}

/// `name{labels} value` lines of counter families whose name ends in `_total`.
fn counter_samples(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let name = key.split('{').next()?;
            (name.ends_with("_total") || name.starts_with("regedge_mirror"))
                .then(|| Some((key.to_owned(), value.trim().parse::<f64>().ok()? as u64)))?
        })
        .collect()
}

/// regedge in the proxy namespace (stopped with SIGTERM on drop), and its config dir.
pub(crate) struct Regedge {
    pub process: RegedgeProcess,
    pub pid: u32,
    _dir: TempDir,
}

impl Regedge {
    /// regedge with `config` (a whole TOML text; its metrics must listen on [`METRICS`]).
    pub(crate) fn start_config(ns: &NetNs, binary: &std::path::Path, config: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new("bench-scenario");
        let path = dir.write("regedge.toml", config);
        let mut process = RegedgeProcess::start_binary(binary, Some(ns), &path, dir.0.join("regedge.log"), "warn");
        process.wait_ready(METRICS, Some(ns), Duration::from_secs(20)).map_err(anyhow::Error::msg)?;
        Ok(Self { pid: process.pid(), process, _dir: dir })
    }

    fn start(ns: &NetNs, binary: &std::path::Path, case: Case) -> anyhow::Result<Self> {
        let mode = match case {
            Case::Native => "native",
            Case::Generic => "generic",
            _ => "off",
        };
        let interfaces = if case.xdp() { format!("[\"{PROXY_IF}\"]") } else { "[]".to_owned() };
        let dir = TempDir::new("bench-refresh");
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"bench\"\nworkers = {WORKERS}\nstate_dir = \"\"\n\n[sip]\nlisten = [\"{PROXY_IP}:{SIP_PORT}\"]\n\
                 local_names = [\"{DOMAIN}\"]\n\n[fastpath]\ninterfaces = {interfaces}\nmode = \"{mode}\"\npin_path = \"\"\n\n\
                 [registration]\nphone_expires = 120\nbackend_expires = 3600\n\n[metrics]\nlisten = \"{METRICS}\"\n\n\
                 [routing]\ndefault_group = \"default\"\n\n[[backends]]\nname = \"cm1\"\n\
                 address = \"{BACKEND_IP}:{SIP_PORT}\"\nmax_register_rate = 100000\n\n\
                 [[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n"
            ),
        );
        let mut process = RegedgeProcess::start_binary(binary, Some(ns), &config, dir.0.join("regedge.log"), "warn");
        process.wait_ready(METRICS, Some(ns), Duration::from_secs(20)).map_err(anyhow::Error::msg)?;
        Ok(Self { pid: process.pid(), process, _dir: dir })
    }

    pub(crate) fn alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
    }
}

/// CPU ticks (own and reaped children's) of every process but this one and the server's.
fn other_ticks(server: &Server) -> u64 {
    let me = std::process::id();
    let (pid, group) = match server {
        Server::Regedge(r) => (r.pid, None),
        Server::Kamailio(k) => (k.pid(), Some(k.pid())),
        Server::KamailioEdge(e) => (e.pid(), Some(e.pid())),
    };
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = parse_proc_stat(&text)?;
            if p == me || p == pid || Some(stat.pgrp) == group {
                return None;
            }
            let (_, rest) = text.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let children = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
            Some(stat.ticks + children)
        })
        .sum()
}

/// CPU ticks of every process of group `pgid`.
fn group_ticks(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .filter_map(|e| parse_proc_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?))
        .filter(|p| p.pgrp == pgid)
        .map(|p| p.ticks)
        .sum()
}

pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 1000.0 { format!("{:.1}k", r / 1000.0) } else { format!("{r:.0}") }
}

fn render(
    plan: &Plan,
    results: &[CaseResult],
    build: &str,
    payload: usize,
    cost: &Result<(Vec<kernel_cost::CostRow>, Option<u32>), String>,
    runtime: Duration,
) -> String {
    let cpu = crate::measured::cpu_model();
    let kamailio = command_output("kamailio", &["-v"])
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .trim_start_matches("version: ")
        .to_owned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# REGISTER refreshes and keepalives (OPTIONS, STUN) per second: XDP native, XDP generic, userspace, Kamailio\n"
    );
    let _ =
        writeln!(out, "Command: `{}` (as root); the whole run took {:.0} s.\n", plan.command(), runtime.as_secs_f64());
    let _ = writeln!(out, "Measured: {build}.\n");
    let _ = writeln!(
        out,
        "Machine: {} CPUs, {cpu}, kernel {}; {kamailio}. The generator, the server and the kernel's packet \
         processing share these CPUs.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-r"]),
    );
    let _ = writeln!(
        out,
        "Setup: {phones} phones (4 source addresses × {per} source ports, each its own Call-ID, AOR and Contact with \
         `+sip.instance`) in one namespace → 10.230.0.1:5060 in another, over a veth pair with one queue per CPU at \
         each end; the phones' veth carries a two-instruction XDP_PASS program in native mode in every case (native \
         XDP_TX on veth needs one on the peer). regedge \
         (release, `workers = {WORKERS}`, phone_expires 120, backend_expires 3600) forwards the first REGISTERs to a \
         Kamailio registrar in a third namespace; Kamailio as the registrar answers directly (`tests/kamailio/registrar.cfg`, \
         `-x tlsf -n {WORKERS}`, debug=1, usrloc in memory). Every phone registers once ({REGISTER_RATE}/s, all must \
         get a 200), then refreshes: same Call-ID, Contact and source port, CSeq + 1, {payload}-byte REGISTERs (Via with \
         branch and rport, Max-Forwards, From tag, To, Call-ID, CSeq, Contact with +sip.instance and expires, Expires, \
         User-Agent, Allow, Allow-Events, Content-Length: 0), phones round-robin.\n",
        phones = plan.phones,
        per = plan.phones / 4,
    );
    let options = generator::options_payload(&fleet_spec(Case::Native, plan, [0; 6], [0; 6]), 0, 1).len();
    let _ = writeln!(
        out,
        "Keepalives, after the refreshes, from the same phones and server: *OPTIONS keepalive* = {options}-byte OPTIONS          to the proxy itself (Request-URI `sip:{DOMAIN}`, no user part; Via with branch and rport, From tag, To,          Call-ID, CSeq, Contact, Accept, User-Agent), answered 200 by regedge (kernel or userspace) and by Kamailio's          `sl_send_reply` in both Kamailio configs; *STUN keepalive* = 20-byte Binding Request (RFC 5389, no          attributes), answered with a Binding Success Response with XOR-MAPPED-ADDRESS by regedge only (neither          Kamailio config runs a STUN server). *Kamailio dispatcher edge* = Kamailio as regedge's peer, an edge proxy          (`bench/kamailio/dispatcher-edge.cfg`: dispatcher, tm, add_path(), `-x tlsf -n {WORKERS}`, debug=1) in front          of the same Kamailio registrar: it relays every refresh to the registrar (it has no registration cache) and          answers OPTIONS to itself. The same open-loop steps and the same pass rule apply to every kind.\n"
    );
    let _ = writeln!(
        out,
        "Generator: full Ethernet frames (IPv4 and UDP checksums computed) sent open loop with sendmmsg on an AF_PACKET \
         socket bound to the phones' veth, {batch} a call at most, by {senders} threads that each pace their share \
         of the rate (sleeping, never spinning, at least 50 µs between bursts); replies read with recvmmsg on a second \
         AF_PACKET socket (classic BPF filter: UDP from port 5060) by a third thread, matched by Call-ID and CSeq, \
         latency (send call to the reply's arrival in userspace) in an HDR histogram. The frames' source MAC is not \
         the phones' veth's and the proxy's neighbour entries point at it, so replies reach the phones' namespace as \
         PACKET_OTHERHOST: the AF_PACKET tap sees them, the phones' IP stack drops them at once (no UDP lookup or \
         ICMP per reply). Steps of {step} s, rising; a step passes with < {loss}% of \
         refreshes without a 200 within 300 ms after the step and the generator sending ≥ {share:.0}% of the offered \
         rate. {bisect}\n",
        batch = generator::BATCH,
        senders = SENDERS,
        step = plan.step.as_secs_f64(),
        loss = MAX_LOSS * 100.0,
        share = MIN_SEND_SHARE * 100.0,
        bisect = if plan.bisections > 0 {
            format!("After the first failure, {} bisection steps between the last pass and it.", plan.bisections)
        } else {
            "No bisection (--quick).".to_owned()
        },
    );
    let _ = writeln!(
        out,
        "CPU: *server* = utime + stime of the regedge process (all threads) or of Kamailio's process group \
         (/proc/PID/stat); *softirq* = softirq time of all CPUs (/proc/stat), where XDP runs, and also the veth \
         receive work of both namespaces (the phones' side included); *server cost* = server + softirq for the XDP \
         cases, server alone otherwise, as CPU-seconds per second per 100k refreshes/s (1.0 = one core per 100k/s). \
         This kernel has no CONFIG_IRQ_TIME_ACCOUNTING: softirq time is sampled at the tick and also lands in the \
         stime of whichever process was running. /proc/stat is tick-sampled (HZ 250, NO_HZ_IDLE, in a VM): short \
         bursts between idle periods are rarely sampled, so *softirq* and *machine busy* undercount at moderate load \
         and are meaningful only near saturation (the highest rates). Process times come from the scheduler's runtime \
         and hold at every load: *generator + server CPU per 100k/s* (the generator's threads, in whose context the \
         veth's receive processing and the XDP program mostly run, plus the server process) is the figure that \
         compares the cases on this machine.\n"
    );

    let _ = writeln!(
        out,
        "Where the work runs: on a veth, a frame sent by the generator is received by the proxy's veth in softirq \
         on the sending CPU, so the XDP program (native: in the veth's NAPI; generic: in the receive path) runs in \
         the generator's threads' context, and so do the answer's way back and the phones' veth. Without \
         CONFIG_IRQ_TIME_ACCOUNTING that time is also charged to the generator's utime+stime: for the XDP cases \
         *generator CPU* holds most of the server's work, and a sweep stopped by \"generator\" means the two CPUs \
         were full with sending and answering together. *Other processes* is every process but this benchmark and \
         the server (other work on the machine, e.g. builds); a failed step with other processes above {others} \
         CPUs is run again, {retries} times at most per sweep (none with --quick), and each case first waits for a \
         quiet second (10 s at most; none with --quick).\n",
        others = OTHERS_BUSY,
        retries = RETRIES,
    );
    let _ = writeln!(out, "## Result\n");
    let _ = writeln!(
        out,
        "| case | highest rate < {loss}% loss | 200s/s at it | p50 / p99 µs at {lat}/s | p50 / p99 µs at the highest rate | \
         server CPU per 100k/s | softirq per 100k/s | server cost per 100k/s | generator + server CPU per 100k/s | \
         machine busy | answered by | what stopped the sweep |",
        loss = MAX_LOSS * 100.0,
        lat = fmt_rate(plan.latency_rate as f64),
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for r in results {
        let lat = r.latency.as_ref().map_or("-".to_owned(), |l| {
            format!("{:.0} / {:.0}", l.result.percentile_us(0.5), l.result.percentile_us(0.99))
        });
        match r.best() {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "| {} | {}/s | {} | {lat} | {:.0} / {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% | {} | {} |",
                    row_label(r),
                    fmt_rate(b.result.offered_rate as f64),
                    fmt_rate(b.answered_rate()),
                    b.result.percentile_us(0.5),
                    b.result.percentile_us(0.99),
                    b.per_100k(b.server_cpu_s),
                    b.per_100k(b.softirq_s),
                    b.per_100k(b.server_cost_s(r.case)),
                    b.per_100k(b.server_cpu_s + b.own_cpu_s),
                    b.busy_s
                        / b.wall_s.max(1e-9)
                        / std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
                        * 100.0,
                    answered_by(r),
                    limit(r),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | none | - | {lat} | - | - | - | - | - | - | {} | {} |",
                    row_label(r),
                    answered_by(r),
                    limit(r)
                );
            }
        }
    }
    let _ = writeln!(out, "\n{}\n", ratios(results));

    let _ = writeln!(out, "## Every step\n");
    let _ = writeln!(
        out,
        "| case | offered/s | sent | sent/s | refused at send | 200 | other replies | unmatched | loss % | p50 µs | p99 µs | p99.9 µs | \
         server CPU s | softirq s | busy s (all CPUs) | generator CPU s | other processes CPU s | wall s | generator rx drops | server socket drops | pass |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in results {
        for (label, s) in r.latency.iter().map(|l| ("latency run", l)).chain(r.steps.iter().map(|s| ("", s))) {
            let x = &s.result;
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {:.0} | {} | {} | {} | {} | {:.3} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                row_label(r),
                if label.is_empty() { String::new() } else { format!(" ({label})") },
                x.offered_rate,
                x.sent,
                x.achieved_send_rate(),
                x.send_errors,
                x.ok,
                x.not_ok,
                x.unmatched,
                x.loss() * 100.0,
                x.percentile_us(0.5),
                x.percentile_us(0.99),
                x.percentile_us(0.999),
                s.server_cpu_s,
                s.softirq_s,
                s.busy_s,
                s.own_cpu_s,
                s.others_s,
                s.wall_s,
                s.rx_drops,
                s.server_drops,
                if s.passed() { "yes" } else { "no" },
            );
        }
    }

    let _ = writeln!(out, "\n## Kernel cost of one refresh (BPF_PROG_TEST_RUN)\n");
    match cost {
        Ok((rows, verified)) => {
            let _ = writeln!(
                out,
                "The XDP program of the measured build loaded here ({} verified instructions), configured to answer \
                 REGISTER, with a `BINDINGS` entry for phone 0 written as the mirror writes it (rewritten before each \
                 run: the kernel moves its CSeq on). One run per call, {} calls, the kernel's timing of each.\n",
                verified.map_or("?".to_owned(), |v| v.to_string()),
                kernel_cost::RUNS
            );
            let _ = writeln!(out, "| frame | bytes | action | median ns | p99 ns |");
            let _ = writeln!(out, "| --- | ---: | --- | ---: | ---: |");
            for r in rows {
                let _ = writeln!(out, "| {} | {} | {} | {} | {} |", r.name, r.bytes, r.action, r.median_ns, r.p99_ns);
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}");
        }
    }

    let _ = writeln!(out, "\n## Registration and counters per case\n");
    for r in results {
        let _ = writeln!(
            out,
            "- **{}**: {} of {} phones registered in {:.1} s ({} REGISTERs sent, {} answered 503). Counters over the \
             measured steps (deltas): {}",
            row_label(r),
            r.registered,
            plan.phones,
            r.register_s,
            r.register_sent,
            r.register_503,
            describe_counters(r),
        );
        for note in &r.notes {
            let _ = writeln!(out, "  - note: {note}");
        }
    }
    out
}

fn describe_counters(r: &CaseResult) -> String {
    let interesting = |k: &str| match r.case {
        Case::Kamailio | Case::KamailioEdge => {
            k.starts_with("core:rcv_requests_register")
                || k.starts_with("core:rcv_requests_options")
                || k.starts_with("core:fwd_requests")
                || k.starts_with("tm:")
                || k.starts_with("registrar:")
                || k.starts_with("sl:")
                || k.starts_with("core:drop")
                || k.starts_with("core:err")
        }
        _ => {
            k.starts_with("regedge_registrations_total")
                || k.starts_with("regedge_fastpath_replies_total")
                || k.starts_with("regedge_fastpath_passed_total")
                || k.starts_with("regedge_userspace")
                || k.starts_with("regedge_mirror")
                || k.starts_with("regedge_backend_timeouts")
        }
    };
    let parts: Vec<String> =
        r.counters.iter().filter(|(k, _)| interesting(k)).map(|(k, v)| format!("`{k}` {v}")).collect();
    if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
}

/// Which path answered the refreshes, from the server's counters.
fn answered_by(r: &CaseResult) -> String {
    match (r.case, r.kind) {
        (Case::Kamailio, Kind::Register) => {
            return format!("Kamailio save(): {} REGISTERs received", r.counter("core:rcv_requests_register"));
        }
        (Case::KamailioEdge, Kind::Register) => {
            return format!(
                "relayed to the registrar (tm): {} REGISTERs received",
                r.counter("core:rcv_requests_register")
            );
        }
        (Case::Kamailio | Case::KamailioEdge, _) => {
            return format!("Kamailio sl_send_reply: {} OPTIONS received", r.counter("core:rcv_requests_options"));
        }
        _ => {}
    }
    let key = match r.kind {
        Kind::Register => "register",
        Kind::Options => "options",
        Kind::Stun => "stun",
    };
    let kernel = r.counter(&format!("regedge_fastpath_replies_total{{kind=\"{key}\"}}"));
    if r.kind != Kind::Register {
        let user = r.counter(&format!("regedge_userspace_replies_total{{kind=\"{key}\"}}"));
        return format!("kernel {kernel}, userspace {user}");
    }
    let absorbed = r.counter("regedge_registrations_total{protocol=\"sip\",outcome=\"absorbed\"}");
    let forwarded = r.counter("regedge_registrations_total{protocol=\"sip\",outcome=\"forwarded\"}");
    format!("kernel {kernel}, userspace absorbed {absorbed}, forwarded {forwarded}")
}

fn row_label(r: &CaseResult) -> String {
    format!("{}: {}", r.case.label(), r.kind.label())
}

fn limit(r: &CaseResult) -> String {
    if let Some(note) = r.notes.iter().find(|n| n.starts_with("failed")) {
        return note.clone();
    }
    let Some(f) = r.first_failure() else {
        let top = r.steps.iter().map(|s| s.result.offered_rate).max().unwrap_or(0);
        return format!("no failure up to {}/s (end of the rate list)", fmt_rate(top as f64));
    };
    let x = &f.result;
    let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let busy = f.busy_s / f.wall_s.max(1e-9) / cpus * 100.0;
    if !f.generator_kept_up() {
        format!(
            "generator: at {}/s offered it sent only {}/s (CPUs {busy:.0}% busy: generator {:.2}, softirq {:.2}, \
             server {:.2}, other processes {:.2} CPUs; loss {:.2}%)",
            fmt_rate(x.offered_rate as f64),
            fmt_rate(x.achieved_send_rate()),
            f.own_cpu_s / f.wall_s.max(1e-9),
            f.softirq_s / f.wall_s.max(1e-9),
            f.server_cpu_s / f.wall_s.max(1e-9),
            f.others_busy(),
            x.loss() * 100.0
        )
    } else {
        format!(
            "loss {:.2}% at {}/s ({} dropped at the server's full socket buffer; server {:.2} CPUs, softirq {:.2}, \
             other processes {:.2}, CPUs {busy:.0}% busy{})",
            x.loss() * 100.0,
            fmt_rate(x.offered_rate as f64),
            f.server_drops,
            f.server_cpu_s / f.wall_s.max(1e-9),
            f.softirq_s / f.wall_s.max(1e-9),
            f.others_busy(),
            if x.send_errors > 0 { format!(", {} refused at send", x.send_errors) } else { String::new() }
        )
    }
}

fn ratios(results: &[CaseResult]) -> String {
    let mut parts = Vec::new();
    for kind in Kind::ALL {
        let rate = |case: Case| {
            results
                .iter()
                .find(|r| r.case == case && r.kind == kind)
                .and_then(CaseResult::best)
                .map(|b| b.result.offered_rate as f64)
        };
        let pairs = [
            (Case::Native, Case::Off),
            (Case::Generic, Case::Off),
            (Case::Off, Case::Kamailio),
            (Case::Native, Case::Kamailio),
            (Case::Native, Case::KamailioEdge),
            (Case::Native, Case::Generic),
        ];
        for (a, b) in pairs {
            if let (Some(x), Some(y)) = (rate(a), rate(b)) {
                parts.push(format!("{}, {} / {}: {:.2}×", kind.label(), a.label(), b.label(), x / y));
            }
        }
    }
    if parts.is_empty() {
        "Ratios: not enough cases passed a step.".to_owned()
    } else {
        format!("Ratios of the highest rates within this run: {}.", parts.join("; "))
    }
}
