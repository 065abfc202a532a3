//! The scenarios that need many phones against a fast backend: `memory` (RSS and kernel
//! map memory per binding), `failover` (a backend dies: detection, re-homing, the rate the
//! secondary sees) and `storm` (every phone registers at once behind a backend rate
//! limit). Each runs regedge (the measured release build, `workers = 1`, XDP native on
//! the phones' veth) in the refresh benchmark's topology ([`crate::refresh::Topology`]:
//! phones — proxy — backends, namespaces and veth pairs), with the AF_PACKET generator of
//! [`crate::refresh::generator`] as the phones and [`crate::fakebackend::FakeBackend`]s as
//! the call servers (they answer at once, so regedge is what is measured). Each writes
//! bench/report/<name>.md and returns what the main report needs.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::ensure;
use regedge_tests::process::{scrape, workspace_root};

use crate::{
    fakebackend::FakeBackend,
    plot::{self, Series},
    refresh::{
        BACKEND_IP, DOMAIN, METRICS, PROXY_IF, PROXY_IP, Regedge, SIP_PORT, Topology, WORKERS,
        generator::{self, Fleet, FleetSpec},
    },
};

const BACKEND2_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 12);
const FIRST_PORT: u16 = 20_000;

/// Phone source addresses 10.230.0.2 onwards, enough for `phones` at 45,000 ports each.
fn phone_ips(phones: usize) -> Vec<Ipv4Addr> {
    let n = phones.div_ceil(45_000).clamp(4, 200);
    (0..n).map(|i| Ipv4Addr::new(10, 230, 0, 2 + i as u8)).collect()
}

fn spec(tag: u8, phones: usize, net: &Topology) -> FleetSpec {
    FleetSpec {
        tag,
        phones,
        addrs: phone_ips(phones),
        first_port: FIRST_PORT,
        server: PROXY_IP,
        domain: DOMAIN.to_owned(),
        first_user: 300_000,
        expires: 3600,
        src_mac: net.phone_mac,
        dst_mac: net.proxy_mac,
    }
}

/// regedge's config: `backends` as (name, address, max_register_rate), one group in
/// that order, XDP native on the proxy's veth, health at the defaults.
fn config(backends: &[(&str, Ipv4Addr, u32)], phone_expires: u32, backend_expires: u32) -> String {
    let mut text = format!(
        "[node]\nname = \"bench\"\nworkers = {WORKERS}\nstate_dir = \"\"\n\n[sip]\nlisten = [\"{PROXY_IP}:{SIP_PORT}\"]\n\
         local_names = [\"{DOMAIN}\"]\n\n[fastpath]\ninterfaces = [\"{PROXY_IF}\"]\nmode = \"native\"\npin_path = \"\"\n\n\
         [registration]\nphone_expires = {phone_expires}\nbackend_expires = {backend_expires}\nexpires_jitter = 0\n\n\
         [health]\ninterval = \"2s\"\ntimeout = \"1s\"\ndown_after = 2\nup_after = 2\n\n\
         [metrics]\nlisten = \"{METRICS}\"\n\n[routing]\ndefault_group = \"default\"\n\n"
    );
    for (name, ip, rate) in backends {
        let _ = write!(
            text,
            "[[backends]]\nname = \"{name}\"\naddress = \"{ip}:{SIP_PORT}\"\nmax_register_rate = {rate}\n\n"
        );
    }
    let names: Vec<String> = backends.iter().map(|(n, _, _)| format!("\"{n}\"")).collect();
    let _ = writeln!(text, "[[groups]]\nname = \"default\"\nbackends = [{}]", names.join(", "));
    text
}

/// The value of the sample `series` (`name{labels}` exactly) in a /metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.trim().parse().ok())?
    })
}

fn metrics(net: &Topology) -> String {
    scrape(METRICS, Some(&net.proxy)).unwrap_or_default()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; its last answer.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// VmRSS of `pid`, bytes.
pub fn vm_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The BPF maps `pid` holds open: (map id, memlock bytes, max_entries), from
/// /proc/PID/fdinfo of every `anon_inode:bpf-map` descriptor, one row per map id.
pub fn bpf_maps(pid: u32) -> Vec<(u32, u64, u64)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut maps: Vec<(u32, u64, u64)> = Vec::new();
    for e in entries.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
        else {
            continue;
        };
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
        };
        let id = field("map_id:") as u32;
        if !maps.iter().any(|m| m.0 == id) {
            maps.push((id, field("memlock:"), field("max_entries:")));
        }
    }
    maps.sort();
    maps
}

/// `bpftool map show id ID` in one line (name and type), or empty.
fn map_name(id: u32) -> String {
    crate::measured::command_output("bpftool", &["map", "show", "id", &id.to_string()])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn write_report(name: &str, text: &str) -> anyhow::Result<()> {
    let dir = workspace_root().join("bench").join("report");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.md")), text)?;
    eprintln!("wrote bench/report/{name}.md");
    Ok(())
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------------------------------
// memory

pub struct MemoryRow {
    pub bindings: usize,
    pub registered_in_s: f64,
    pub rss: u64,
    pub map_memlock: u64,
    pub bindings_metric: u64,
    pub kernel_entries: u64,
}

pub struct MemoryResult {
    pub base_rss: u64,
    /// The `BINDINGS` map: (memlock bytes, max_entries).
    pub bindings_map: Option<(u64, u64)>,
    pub rows: Vec<MemoryRow>,
    pub notes: Vec<String>,
}

pub fn memory(quick: bool, command: &str, binary: &std::path::Path, build: &str) -> anyhow::Result<MemoryResult> {
    let counts: &[usize] = if quick { &[1_000, 5_000, 10_000] } else { &[10_000, 100_000, 1_000_000] };
    let rate: u64 = 15_000;
    let started = Instant::now();
    let max = *counts.last().unwrap_or(&0);
    let ips = phone_ips(max);
    let net = Topology::with(&ips, &[BACKEND_IP])?;
    let epoch = Instant::now();
    let backend = FakeBackend::start(&net.backend, SocketAddr::new(BACKEND_IP.into(), SIP_PORT), epoch)?;
    let regedge = Regedge::start_config(&net.proxy, binary, &config(&[("cm1", BACKEND_IP, 10_000_000)], 3600, 7200))?;
    std::thread::sleep(Duration::from_millis(500));
    let base_rss = vm_rss(regedge.pid);
    let base_maps = bpf_maps(regedge.pid);
    let base_memlock: u64 = base_maps.iter().map(|m| m.1).sum();
    let sockets = net.phones.run(|| generator::open_sockets(net.phone_ifindex))?;
    let fleet = Fleet::new(spec(b'm', max, &net), sockets)?;
    let stop = AtomicBool::new(false);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let receiver = scope.spawn(|| fleet.receive(&stop));
        let result = (|| -> anyhow::Result<()> {
            let mut from = 0;
            for &count in counts {
                let t = Instant::now();
                let deadline =
                    Duration::from_secs(30) + Duration::from_secs_f64((count - from) as f64 / rate as f64 * 4.0);
                let o = fleet.register_paced(from..count, rate, Duration::from_secs(1), deadline);
                let took = t.elapsed().as_secs_f64();
                eprintln!(
                    "memory: {} more phones registered in {took:.1} s ({} sent, {} retransmitted)",
                    o.registered, o.sent, o.retransmissions
                );
                ensure!(o.registered == count - from, "only {} of {} phones registered", o.registered, count - from);
                // The mirror writes the kernel entries after the 200s went out.
                let want = count as f64;
                let settled = wait_until(Duration::from_secs(20), || {
                    let m = metrics(&net);
                    metric(&m, "regedge_bindings{protocol=\"sip\"}") == Some(want)
                        && metric(&m, "regedge_fastpath_bindings") == Some(want)
                });
                if !settled {
                    notes.push(format!("at {count}: regedge's binding gauges did not reach {count} within 20 s"));
                }
                std::thread::sleep(Duration::from_millis(if quick { 300 } else { 1000 }));
                let m = metrics(&net);
                rows.push(MemoryRow {
                    bindings: count,
                    registered_in_s: took,
                    rss: vm_rss(regedge.pid),
                    map_memlock: bpf_maps(regedge.pid).iter().map(|m| m.1).sum(),
                    bindings_metric: metric(&m, "regedge_bindings{protocol=\"sip\"}").unwrap_or(0.0) as u64,
                    kernel_entries: metric(&m, "regedge_fastpath_bindings").unwrap_or(0.0) as u64,
                });
                from = count;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let _ = receiver.join();
        result
    })?;
    let mut bindings_map = None;
    let maps: Vec<String> = bpf_maps(regedge.pid)
        .iter()
        .map(|(id, memlock, max_entries)| {
            let name = map_name(*id);
            if name.contains(" BINDINGS ") {
                bindings_map = Some((*memlock, *max_entries));
            }
            format!("`{name}` (max_entries {max_entries}): memlock {}", mib(*memlock as f64))
        })
        .collect();
    let backend_distinct = backend.distinct_registered();
    drop(regedge);
    drop(backend);
    drop(fleet);
    drop(net);
    let result = MemoryResult { base_rss, bindings_map, rows, notes };

    let mut out = String::new();
    let _ = writeln!(out, "# Memory per binding: regedge's RSS and its kernel maps\n");
    let _ = writeln!(
        out,
        "Command: `{command}` (as root; this scenario is part of the report); it took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "Measured: {build}.\n");
    let _ = writeln!(
        out,
        "How the bindings were made: every phone *registered through regedge* (no snapshot): the AF_PACKET \
         generator sent each phone's full REGISTER (its own source address and port, Call-ID, AOR, Contact with \
         `+sip.instance`; {ips} source addresses) at {rate}/s, retransmitting after 1 s without an answer; regedge \
         (release, `workers = {WORKERS}`, XDP native on the phones' veth, phone_expires 3600 so no binding lapses \
         during the run) forwarded each to a fake registrar that answers 200 at once (bench/src/fakebackend.rs), and \
         mirrored each UDP binding into the XDP program's `BINDINGS` map. The counts are cumulative in one regedge \
         process: {counts:?}. After each count, regedge's `regedge_bindings{{protocol=\"sip\"}}` and \
         `regedge_fastpath_bindings` were waited for, then {settle} later: VmRSS (/proc/PID/status) and the memlock of \
         every BPF map regedge holds (/proc/PID/fdinfo of its `bpf-map` descriptors; what the kernel charges for the \
         map, the same figure `bpftool map show` prints). The fake backend accepted {backend_distinct} distinct \
         Call-IDs.\n",
        ips = ips.len(),
        settle = if quick { "0.3 s" } else { "1 s" },
    );
    let _ = writeln!(
        out,
        "| bindings | registered in s | regedge_bindings | kernel entries | VmRSS | RSS − RSS at 0 | RSS bytes per binding | \
         BPF map memlock | map bytes per binding |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let _ = writeln!(out, "| 0 | - | 0 | 0 | {} | 0 | - | {} | - |", mib(base_rss as f64), mib(base_memlock as f64));
    for r in &result.rows {
        let grown = r.rss as f64 - base_rss as f64;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} | {} | {:.0} | {} | {:.0} |",
            r.bindings,
            r.registered_in_s,
            r.bindings_metric,
            r.kernel_entries,
            mib(r.rss as f64),
            mib(grown),
            grown / r.bindings as f64,
            mib(r.map_memlock as f64),
            r.map_memlock as f64 / r.bindings as f64,
        );
    }
    let _ = writeln!(
        out,
        "\nThe maps regedge holds (at the end): {}. A map whose memlock does not move with the count is preallocated \
         (the kernel reserves every entry when the program loads): its bytes per binding shrink as bindings are \
         added, and it caps the bindings one node mirrors into the kernel at its max_entries.",
        maps.join("; ")
    );
    if let Some((memlock, entries)) = result.bindings_map {
        let _ = writeln!(
            out,
            "\nKernel bytes per binding: `BINDINGS` is preallocated, {} for {entries} entries = {:.0} B per entry, \
             whatever the count; userspace bytes per binding = the RSS column's growth per binding.",
            mib(memlock as f64),
            memlock as f64 / entries.max(1) as f64
        );
    }
    for n in &result.notes {
        let _ = writeln!(out, "\n- note: {n}");
    }
    write_report("memory", &out)?;
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// failover

/// The edge a failover is measured through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FailoverEdge {
    Regedge,
    Kamailio,
}

impl FailoverEdge {
    fn label(self) -> &'static str {
        match self {
            Self::Regedge => "regedge",
            Self::Kamailio => "Kamailio dispatcher edge",
        }
    }
}

pub struct FailoverVariant {
    pub edge: &'static str,
    pub detect_s: Option<f64>,
    pub rehome_s: Option<f64>,
    pub secondary_distinct: usize,
    pub peak_1s: f64,
    pub peak_5s: f64,
    pub peak_100ms: f64,
    /// REGISTERs the secondary received from the kill to the end of the window.
    pub secondary_registers: u64,
    pub window_s: f64,
    step: Option<generator::StepResult>,
    /// (seconds since the kill, phones the secondary accepted, primary up 1/0)
    timeline: Vec<(f64, f64, f64)>,
    buckets: Vec<u32>,
    killed_at_s: f64,
    problems: Vec<String>,
}

pub struct FailoverResult {
    pub phones: usize,
    pub limit: u32,
    pub refresh_period_s: f64,
    pub variants: Vec<FailoverVariant>,
}

/// Whether cm1 (`uri`) is active in `kamcmd dispatcher.list` output: its `FLAGS` start
/// with `A` (active; `I` inactive, `D` disabled, `P` probing follows).
fn dispatcher_active(list: &str, uri: &str) -> Option<bool> {
    let mut lines = list.lines().skip_while(|l| !l.contains(uri));
    lines.next()?;
    let flags = lines.find_map(|l| l.trim().strip_prefix("FLAGS:"))?.trim();
    Some(flags.starts_with('A'))
}

fn failover_variant(
    edge: FailoverEdge,
    phones: usize,
    period: f64,
    limit: u32,
    binary: &std::path::Path,
) -> anyhow::Result<FailoverVariant> {
    let net = Topology::with(&phone_ips(phones), &[BACKEND_IP, BACKEND2_IP])?;
    let epoch = Instant::now();
    let cm1 = FakeBackend::start(&net.backend, SocketAddr::new(BACKEND_IP.into(), SIP_PORT), epoch)?;
    let cm2 = FakeBackend::start(&net.backend, SocketAddr::new(BACKEND2_IP.into(), SIP_PORT), epoch)?;
    let (regedge, kamailio) = match edge {
        FailoverEdge::Regedge => {
            let r = Regedge::start_config(
                &net.proxy,
                binary,
                &config(&[("cm1", BACKEND_IP, 100_000), ("cm2", BACKEND2_IP, limit)], 120, 3600),
            )?;
            let up = wait_until(Duration::from_secs(10), || {
                let m = metrics(&net);
                metric(&m, "regedge_backend_up{backend=\"cm1\"}") == Some(1.0)
                    && metric(&m, "regedge_backend_up{backend=\"cm2\"}") == Some(1.0)
            });
            ensure!(up, "the fake backends never came up in regedge");
            (Some(r), None)
        }
        FailoverEdge::Kamailio => {
            let k = crate::registration::Edge::kamailio_at(&net.proxy, PROXY_IP, &[BACKEND_IP, BACKEND2_IP])?;
            std::thread::sleep(Duration::from_millis(500));
            (None, Some(k))
        }
    };
    let cm1_uri = format!("sip:{BACKEND_IP}:{SIP_PORT}");
    let primary_up = || -> Option<bool> {
        match (&regedge, &kamailio) {
            (Some(_), _) => metric(&metrics(&net), "regedge_backend_up{backend=\"cm1\"}").map(|v| v == 1.0),
            (_, Some(k)) => dispatcher_active(&k.kamcmd(&["dispatcher.list"]).ok()?, &cm1_uri),
            _ => None,
        }
    };
    let sockets = net.phones.run(|| generator::open_sockets(net.phone_ifindex))?;
    let fleet = Fleet::new(spec(b'f', phones, &net), sockets)?;
    let stop = AtomicBool::new(false);
    let rate = (phones as f64 / period).round() as u64;
    // Refreshing (answered at the edge) for a moment before cm1 dies.
    let lead_s = if period < 5.0 { 1.0 } else { 2.0 };
    let mut detect_s = None;
    let mut rehome_s = None;
    let mut killed_at_s = 0.0;
    let mut step = None;
    let mut timeline: Vec<(f64, f64, f64)> = Vec::new();
    let mut registers_at_kill = 0;
    // Phones refresh round-robin, each every `period`, for long enough to be re-homed.
    let window = Duration::from_secs_f64(lead_s + 5.0 + period * 2.0 + phones as f64 / f64::from(limit));
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let receiver = scope.spawn(|| fleet.receive(&stop));
        let result = (|| -> anyhow::Result<()> {
            let o = fleet.register_paced(0..phones, 5_000, Duration::from_secs(1), Duration::from_secs(60));
            ensure!(o.registered == phones, "only {} of {phones} phones registered", o.registered);
            ensure!(
                wait_until(Duration::from_secs(5), || cm1.distinct_registered() == phones),
                "cm1 holds {} of {phones} phones",
                cm1.distinct_registered()
            );
            let (fleet, stop) = (&fleet, &stop);
            let loop_handle = scope.spawn(move || fleet.run_step(rate, window, 2, Duration::from_millis(300), stop));
            std::thread::sleep(Duration::from_secs_f64(lead_s));
            let t0 = Instant::now();
            registers_at_kill = cm2.stats.registers.load(Ordering::Relaxed);
            cm1.kill();
            killed_at_s = epoch.elapsed().as_secs_f64();
            eprintln!("failover ({}): cm1 killed", edge.label());
            while t0.elapsed() < window {
                let t = t0.elapsed().as_secs_f64();
                let up = primary_up().unwrap_or(true);
                let on_cm2 = cm2.distinct_registered();
                timeline.push((t, on_cm2 as f64, if up { 1.0 } else { 0.0 }));
                if detect_s.is_none() && !up {
                    detect_s = Some(t);
                    eprintln!("failover ({}): cm1 down after {t:.2} s", edge.label());
                }
                if rehome_s.is_none() && on_cm2 >= phones {
                    rehome_s = Some(t);
                    eprintln!("failover ({}): every phone on cm2 after {t:.2} s", edge.label());
                }
                if rehome_s.is_some() && detect_s.is_some() {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            step = loop_handle.join().ok();
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let _ = receiver.join();
        result
    })?;
    let window_s = timeline.last().map_or(0.0, |t| t.0);
    let problems: Vec<String> = match (&regedge, &kamailio) {
        (Some(r), _) => r
            .process
            .log()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .map(str::to_owned)
            .collect(),
        (_, Some(k)) => {
            k.log_problems().into_iter().filter(|l| l.contains("ERROR") || l.contains("CRITICAL")).collect()
        }
        _ => Vec::new(),
    };
    let variant = FailoverVariant {
        edge: edge.label(),
        detect_s,
        rehome_s,
        secondary_distinct: cm2.distinct_registered(),
        peak_1s: cm2.peak_rate(10),
        peak_5s: cm2.peak_rate(50),
        peak_100ms: cm2.peak_rate(1),
        secondary_registers: cm2.stats.registers.load(Ordering::Relaxed).saturating_sub(registers_at_kill),
        window_s,
        step,
        timeline,
        buckets: cm2.buckets(),
        killed_at_s,
        problems,
    };
    drop((regedge, kamailio));
    drop((cm1, cm2, fleet, net));
    Ok(variant)
}

pub fn failover(quick: bool, command: &str, binary: &std::path::Path, build: &str) -> anyhow::Result<FailoverResult> {
    let (phones, period, limit): (usize, f64, u32) = if quick { (1_000, 1.0, 500) } else { (20_000, 10.0, 1_000) };
    let started = Instant::now();
    let mut variants = Vec::new();
    let mut failures = Vec::new();
    for edge in [FailoverEdge::Regedge, FailoverEdge::Kamailio] {
        match failover_variant(edge, phones, period, limit, binary) {
            Ok(v) => variants.push(v),
            Err(e) => {
                eprintln!("failover ({}) failed: {e:#}", edge.label());
                failures.push(format!("{}: {e:#}", edge.label()));
            }
        }
    }
    ensure!(!variants.is_empty(), "failover failed: {}", failures.join("; "));
    let result = FailoverResult { phones, limit, refresh_period_s: period, variants };

    // REGISTERs per second at the secondary over time (100 ms buckets), from the kill.
    let series = |v: &FailoverVariant| -> Vec<(f64, f64)> {
        v.buckets
            .iter()
            .enumerate()
            .map(|(i, &c)| ((i as f64 + 0.5) * 0.1 - v.killed_at_s, f64::from(c) * 10.0))
            .filter(|(t, _)| *t >= -2.0 && *t <= v.window_s + 1.0)
            .collect()
    };
    let end = result.variants.iter().map(|v| v.window_s).fold(0.0, f64::max);
    let mut rate_series: Vec<Series> = result
        .variants
        .iter()
        .map(|v| Series { name: format!("cm2 (secondary) behind {}", v.edge), points: series(v) })
        .collect();
    rate_series.push(Series {
        name: format!("cm2's max_register_rate in regedge ({limit}/s)"),
        points: vec![(-2.0, f64::from(limit)), (end, f64::from(limit))],
    });
    let plot_file = "failover-registers.svg";
    let plotted = plot::lines(
        plot_file,
        "Failover: REGISTERs per second arriving at the secondary (cm1 killed at 0 s)",
        "seconds since cm1 was killed",
        "REGISTERs/s (100 ms buckets)",
        &rate_series,
        false,
    )
    .and_then(|()| {
        let mut s = Vec::new();
        for v in &result.variants {
            s.push(Series {
                name: format!("phones cm2 accepted, behind {}", v.edge),
                points: v.timeline.iter().map(|(t, n, _)| (*t, *n)).collect(),
            });
        }
        for v in &result.variants {
            s.push(Series {
                name: format!("cm1 up in {}'s view × phones", v.edge),
                points: v.timeline.iter().map(|(t, _, up)| (*t, up * phones as f64)).collect(),
            });
        }
        plot::lines(
            "failover-rehomed.svg",
            "Failover: phones on the secondary, and the primary's health as each edge saw it",
            "seconds since cm1 was killed",
            "phones",
            &s,
            false,
        )
    });

    let mut out = String::new();
    let _ = writeln!(out, "# Failover: a backend dies\n");
    let _ = writeln!(
        out,
        "Command: `{command}` (as root; this scenario is part of the report); it took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "Measured: {build}.\n");
    let rate = (phones as f64 / period).round() as u64;
    let _ = writeln!(
        out,
        "Setup, the same for both edges, each in a topology of its own: {phones} phones (AF_PACKET generator, each \
         its own source address and port) register through the edge to two fake registrars (bench/src/fakebackend.rs, \
         200 at once), cm1 first and cm2 second in priority; every phone is on cm1 (cm1 accepted every Call-ID). Then \
         the phones refresh round-robin, each every {period:.0} s ({rate}/s); {lead:.0} s into that, cm1 stops answering \
         anything (its socket drops every datagram, as a dead host). *Detected* = the edge's own view of cm1 turned \
         down, read every 50 ms: regedge's `regedge_backend_up{{backend=\"cm1\"}}` (/metrics), Kamailio's \
         `dispatcher.list` flags (kamcmd). *Re-homed* = cm2 has accepted a REGISTER of every phone (distinct \
         Call-IDs at cm2).\n\n\
         - regedge (release, `workers = {WORKERS}`, XDP native): group `[cm1, cm2]`, `[health] interval = \"2s\" \
         timeout = \"1s\" down_after = 2` (the defaults), cm2's `max_register_rate = {limit}`. Refreshes are answered \
         at the edge (the XDP program) while cm1 is up; after the detection a phone's entry is flagged, its next \
         refresh goes to userspace and on to cm2 as a full registration, paced by cm2's limit (503 with \
         Retry-After beyond it). The refresh rate is above the limit on purpose: the pacing is what is measured. A \
         phone answered 503 here comes back at its next round-robin refresh (one period later).\n\
         - Kamailio (`bench/kamailio/dispatcher-edge.cfg`: dispatcher algorithm 8 over cm1 then cm2, OPTIONS \
         probes every 2 s, 2 failures mark a destination down, tm with a 4 s final-response timer and a \
         failure_route that marks the destination down and tries the next; `-x tlsf -n {WORKERS}`, debug=1): it \
         relays every refresh (it has no registration cache), so a phone moves at its first refresh after the \
         detection, unpaced.\n",
        lead = if period < 5.0 { 1.0 } else { 2.0 }
    );
    let fmt = |v: Option<f64>| v.map_or("not within the window".to_owned(), |s| format!("{s:.2} s"));
    let _ = writeln!(
        out,
        "| measure | {} |{}",
        result.variants.iter().map(|v| v.edge).collect::<Vec<_>>().join(" | "),
        if result.variants.len() == 2 { " regedge / Kamailio |" } else { "" }
    );
    let _ =
        writeln!(out, "| --- |{}", " ---: |".repeat(result.variants.len() + usize::from(result.variants.len() == 2)));
    let ratio = |f: &dyn Fn(&FailoverVariant) -> Option<f64>| -> String {
        match &result.variants[..] {
            [a, b] => match (f(a), f(b)) {
                (Some(x), Some(y)) if y > 0.0 => format!(" {:.2}× |", x / y),
                _ => " - |".to_owned(),
            },
            _ => String::new(),
        }
    };
    let mut line =
        |name: &str, cell: &dyn Fn(&FailoverVariant) -> String, num: &dyn Fn(&FailoverVariant) -> Option<f64>| {
            let cells: Vec<String> = result.variants.iter().map(cell).collect();
            let _ = writeln!(out, "| {name} | {} |{}", cells.join(" | "), ratio(num));
        };
    line("time to detect cm1's death", &|v| fmt(v.detect_s), &|v| v.detect_s);
    line("time until every phone was on cm2", &|v| fmt(v.rehome_s), &|v| v.rehome_s);
    line("phones cm2 accepted", &|v| v.secondary_distinct.to_string(), &|v| Some(v.secondary_distinct as f64));
    line("peak REGISTER rate at cm2, 1 s window", &|v| format!("{:.0}/s", v.peak_1s), &|v| Some(v.peak_1s));
    line("peak REGISTER rate at cm2, 5 s window", &|v| format!("{:.0}/s", v.peak_5s), &|v| Some(v.peak_5s));
    line("peak REGISTER rate at cm2, 100 ms bucket", &|v| format!("{:.0}/s", v.peak_100ms), &|v| Some(v.peak_100ms));
    line(
        "REGISTERs cm2 received from the kill to the end of the window (window length)",
        &|v| format!("{} ({:.1} s)", v.secondary_registers, v.window_s),
        &|v| Some(v.secondary_registers as f64),
    );
    line(
        "refreshes during the window: sent / answered 200 / other answers",
        &|v| v.step.as_ref().map_or("-".to_owned(), |s| format!("{} / {} / {}", s.sent, s.ok, s.not_ok)),
        &|_| None,
    );
    match plotted {
        Ok(()) => {
            let _ = writeln!(out, "\n![REGISTERs per second at the secondary]({plot_file})");
            let _ = writeln!(out, "\n![phones on the secondary over time](failover-rehomed.svg)");
        }
        Err(e) => {
            let _ = writeln!(out, "\nPlot not drawn: {e:#}");
        }
    }
    for v in &result.variants {
        if let Some(last) = v.problems.last() {
            let _ = writeln!(out, "\n- note: {} logged {} error lines; the last: `{last}`", v.edge, v.problems.len());
        }
    }
    for f in &failures {
        let _ = writeln!(out, "\n- failed: {f}");
    }
    write_report("failover", &out)?;
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// storm

/// One edge's storm.
pub struct StormVariant {
    pub edge: &'static str,
    pub registered: usize,
    pub all_registered_s: Option<f64>,
    pub sent: u64,
    pub retransmissions: u64,
    pub unavailable: u64,
    pub other_failures: u64,
    pub backend_distinct: usize,
    /// regedge's `regedge_bindings` after the storm (regedge only).
    pub bindings: Option<u64>,
    pub peak_1s: f64,
    pub peak_5s: f64,
    /// REGISTERs the backend received.
    pub backend_registers: u64,
    completions_s: Vec<f64>,
}

pub struct StormResult {
    pub phones: usize,
    pub limit: u32,
    /// regedge first, then Kamailio as dispatcher edge when it ran.
    pub variants: Vec<StormVariant>,
}

fn storm_variant(kamailio: bool, phones: usize, limit: u32, binary: &std::path::Path) -> anyhow::Result<StormVariant> {
    let net = Topology::with(&phone_ips(phones), &[BACKEND_IP])?;
    let epoch = Instant::now();
    let backend = FakeBackend::start(&net.backend, SocketAddr::new(BACKEND_IP.into(), SIP_PORT), epoch)?;
    let (regedge, kam) = if kamailio {
        let k = crate::registration::Edge::kamailio_at(&net.proxy, PROXY_IP, &[BACKEND_IP])?;
        std::thread::sleep(Duration::from_millis(500));
        (None, Some(k))
    } else {
        let r = Regedge::start_config(&net.proxy, binary, &config(&[("cm1", BACKEND_IP, limit)], 3600, 7200))?;
        let up = wait_until(Duration::from_secs(10), || {
            metric(&metrics(&net), "regedge_backend_up{backend=\"cm1\"}") == Some(1.0)
        });
        ensure!(up, "the fake backend never came up in regedge");
        (Some(r), None)
    };
    let sockets = net.phones.run(|| generator::open_sockets(net.phone_ifindex))?;
    let fleet = Fleet::new(spec(if kamailio { b'S' } else { b's' }, phones, &net), sockets)?;
    let stop = AtomicBool::new(false);
    // Every phone at once: as fast as the generator sends (offered far above any limit).
    let offered: u64 = 1_000_000;
    let deadline = Duration::from_secs_f64(40.0 + phones as f64 / f64::from(limit) * 3.0);
    let outcome = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| fleet.receive(&stop));
        let o = fleet.register_paced(0..phones, offered, Duration::from_secs(1), deadline);
        stop.store(true, Ordering::Relaxed);
        let _ = receiver.join();
        o
    });
    std::thread::sleep(Duration::from_millis(500));
    let bindings =
        regedge.as_ref().map(|_| metric(&metrics(&net), "regedge_bindings{protocol=\"sip\"}").unwrap_or(0.0) as u64);
    let variant = StormVariant {
        edge: if kamailio { "Kamailio dispatcher edge" } else { "regedge" },
        registered: outcome.registered,
        all_registered_s: (outcome.registered == phones)
            .then(|| outcome.completions_s.iter().copied().fold(0.0, f64::max)),
        sent: outcome.sent,
        retransmissions: outcome.retransmissions,
        unavailable: outcome.unavailable,
        other_failures: outcome.other_failures,
        backend_distinct: backend.distinct_registered(),
        bindings,
        peak_1s: backend.peak_rate(10),
        peak_5s: backend.peak_rate(50),
        backend_registers: backend.stats.registers.load(Ordering::Relaxed),
        completions_s: outcome.completions_s,
    };
    drop((regedge, kam));
    drop((backend, fleet, net));
    Ok(variant)
}

pub fn storm(quick: bool, command: &str, binary: &std::path::Path, build: &str) -> anyhow::Result<StormResult> {
    let (phones, limit): (usize, u32) = if quick { (3_000, 1_000) } else { (100_000, 5_000) };
    let started = Instant::now();
    let mut variants = vec![storm_variant(false, phones, limit, binary)?];
    let mut notes = Vec::new();
    match storm_variant(true, phones, limit, binary) {
        Ok(v) => variants.push(v),
        Err(e) => notes.push(format!("Kamailio dispatcher edge: failed: {e:#}")),
    }
    let result = StormResult { phones, limit, variants };

    let plot_file = "storm-registered.svg";
    let mut series: Vec<Series> = result
        .variants
        .iter()
        .map(|v| {
            let mut c = v.completions_s.clone();
            c.sort_by(f64::total_cmp);
            Series {
                name: format!("phones with a 200, through {}", v.edge),
                points: c.iter().enumerate().map(|(i, &t)| (t, (i + 1) as f64)).collect(),
            }
        })
        .collect();
    series.push(Series {
        name: format!("regedge's limit alone ({limit}/s)"),
        points: vec![(0.0, 0.0), (phones as f64 / f64::from(limit), phones as f64)],
    });
    let plotted = plot::lines(
        plot_file,
        &format!("Storm: {phones} phones register at once (regedge: backend limit {limit}/s)"),
        "seconds since the first REGISTER",
        "phones registered",
        &series,
        false,
    );
    let mut out = String::new();
    let _ = writeln!(out, "# Storm: every phone registers at once\n");
    let _ = writeln!(
        out,
        "Command: `{command}` (as root; this scenario is part of the report); it took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "Measured: {build}.\n");
    let _ = writeln!(
        out,
        "Setup: {phones} phones{} (AF_PACKET generator, each its own source address and port, Call-ID and AOR) send \
         their first REGISTER at once (as fast as the generator sends, one after the other) through the edge to a \
         fake registrar that answers 200 at once (bench/src/fakebackend.rs). A phone retransmits after 1 s without \
         an answer, and after a 503 comes back after its Retry-After, with a new CSeq. The same storm, each edge in a \
         topology of its own:\n\n\
         - regedge (release, `workers = {WORKERS}`, XDP native), the backend's `max_register_rate = {limit}`: beyond \
         it regedge answers 503 with a Retry-After spread over 5 to 20 s. Its limiter is a token bucket that starts \
         full and holds one second of the rate (`TokenBucket` in proxy/src/failover.rs): the first second can pass \
         up to twice the limit, a later 1 s window at most the limit plus what was saved.\n\
         - Kamailio (`bench/kamailio/dispatcher-edge.cfg`, `-x tlsf -n {WORKERS}`, debug=1) relays every REGISTER \
         statefully; it has no rate limit, so the backend takes the storm as it comes.\n\n\
         Rates at the backend are from 100 ms buckets of arrival times.\n",
        if quick { " (--quick)" } else { "" }
    );
    let cols = result.variants.iter().map(|v| v.edge).collect::<Vec<_>>().join(" | ");
    let _ = writeln!(out, "| measure | {cols} |");
    let _ = writeln!(out, "| --- |{}", " ---: |".repeat(result.variants.len()));
    let mut line = |name: &str, cell: &dyn Fn(&StormVariant) -> String| {
        let cells: Vec<String> = result.variants.iter().map(cell).collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    };
    line("phones registered (a 200 seen by the phone)", &|v| v.registered.to_string());
    line("time until all were registered", &|v| {
        v.all_registered_s.map_or("not all within the deadline".to_owned(), |s| format!("{s:.1} s"))
    });
    line("503s the phones received (other failures)", &|v| format!("{} ({})", v.unavailable, v.other_failures));
    line("REGISTERs sent by the phones (of which retransmissions)", &|v| format!("{} ({})", v.sent, v.retransmissions));
    line("distinct phones the backend accepted", &|v| v.backend_distinct.to_string());
    line("REGISTERs the backend received", &|v| v.backend_registers.to_string());
    line("regedge_bindings after the storm", &|v| v.bindings.map_or("-".to_owned(), |b| b.to_string()));
    line("peak REGISTER rate at the backend, 1 s window", &|v| format!("{:.0}/s", v.peak_1s));
    line("peak REGISTER rate at the backend, 5 s window", &|v| format!("{:.0}/s", v.peak_5s));
    let _ =
        writeln!(out, "\nThe limit alone would need {:.1} s for {phones} phones.", phones as f64 / f64::from(limit));
    for v in &result.variants {
        let lost = phones.saturating_sub(v.registered);
        let _ = writeln!(
            out,
            "\n{}: {}",
            v.edge,
            if lost == 0 && v.backend_distinct == phones && v.bindings.is_none_or(|b| b == phones as u64) {
                "none lost: every phone got its 200 and the backend holds every phone.".to_owned()
            } else {
                format!("{lost} phones without a 200 at the deadline; the backend holds {}.", v.backend_distinct)
            }
        );
    }
    match plotted {
        Ok(()) => {
            let _ = writeln!(out, "\n![phones registered over time]({plot_file})");
        }
        Err(e) => {
            let _ = writeln!(out, "\nPlot not drawn: {e:#}");
        }
    }
    for n in &notes {
        let _ = writeln!(out, "\n- note: {n}");
    }
    write_report("storm", &out)?;
    Ok(result)
}
