//! `report [--quick]`: every scenario in turn, one invocation, then bench/report/README.md
//! with the machine, the exact commands, the main table (every comparison a ratio of two
//! figures measured in this run) and links to the per-scenario files and plots.
//!
//! Scenarios, each writing its own markdown (and SVG plots) in bench/report/:
//! `keepalive-cost` (BPF_PROG_TEST_RUN per fixture beside an XDP_DROP floor),
//! `refresh` (refreshes, OPTIONS and STUN keepalives per second: XDP native, generic, off,
//! Kamailio registrar, Kamailio dispatcher edge), `registration` (full registrations
//! through regedge and Kamailio as edge), `sccp` (keepalives kernel against userspace,
//! memory per session), `memory`, `failover`, `storm` ([`crate::scenarios`]), `cluster`
//! (two nodes sharing bindings through Redis, [`crate::cluster`]). A scenario
//! that fails is reported as failed; the others still run.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use regedge_tests::{
    privilege::{require_program, require_root},
    process::workspace_root,
};

use crate::{
    cluster,
    measured::{command_output, cpu_model, regedge_binary},
    refresh::{self, Case, generator::Kind},
    registration, sccp, scenarios,
};

struct Timed<T> {
    name: &'static str,
    took: Duration,
    result: Result<T, String>,
}

fn timed<T>(name: &'static str, f: impl FnOnce() -> anyhow::Result<T>) -> Timed<T> {
    eprintln!("=== {name}");
    let start = Instant::now();
    let result = f().map_err(|e| format!("{e:#}"));
    if let Err(e) = &result {
        eprintln!("=== {name} FAILED: {e}");
    }
    Timed { name, took: start.elapsed(), result }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    if !require_root("report") {
        bail!("report needs root (network namespaces, XDP, BPF_PROG_TEST_RUN)");
    }
    for program in ["ip", "kamailio", "kamcmd", "sipp", "bpftool"] {
        ensure!(require_program("report", program), "{program} is not installed: run ./.ci/setup first");
    }
    let command = format!("cargo run --release -p regedge-bench -- report{}", if quick { " --quick" } else { "" });
    let build_start = Instant::now();
    let (binary, build) = regedge_binary()?;
    let build_s = build_start.elapsed().as_secs_f64();
    // Every scenario measures this binary, even when proxy/ gets new commits meanwhile.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("REGEDGE_BIN", &binary) };
    let started = Instant::now();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);

    let cost = timed("keepalive-cost", || crate::keepalive_cost(quick));
    let refresh = timed("refresh", || refresh::measure_all(quick));
    let registration = timed("registration", || registration::measure_all(quick, true));
    let sccp = timed("sccp", || sccp::measure_all(quick));
    let memory = timed("memory", || scenarios::memory(quick, &command, &binary, &build));
    let failover = timed("failover", || scenarios::failover(quick, &command, &binary, &build));
    let storm = timed("storm", || scenarios::storm(quick, &command, &binary, &build));
    let cluster = timed("cluster", || cluster::run(quick, &command, &binary, &build));
    let total = started.elapsed();

    let mut out = String::new();
    let _ = writeln!(out, "# regedge benchmarks: side by side with Kamailio\n");
    let _ = writeln!(
        out,
        "Produced by one command, as root, on {date}{}:\n\n```sh\n./.ci/setup && {command}\n```\n",
        if quick { " (`--quick`: smaller counts and shorter steps, the same code paths)" } else { "" }
    );
    let _ = writeln!(
        out,
        "It took {:.0} s ({:.0} s more before that to check or build the measured regedge). Measured: {build}.\n",
        total.as_secs_f64(),
        build_s
    );
    let kamailio = command_output("kamailio", &["-v"])
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("version: ")
        .trim()
        .to_owned();
    let sipp = std::process::Command::new("sipp")
        .arg("-v")
        .output()
        .map(|o| {
            let t = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&t)
                .lines()
                .find(|l| l.contains("SIPp"))
                .unwrap_or("")
                .trim()
                .trim_end_matches('.')
                .to_owned()
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), {:.1} GiB of memory, kernel {}, {}; {kamailio}; {sipp}. Everything — load \
         generator, regedge or Kamailio, backends, and the kernel's packet processing — shares these CPUs; all \
         traffic runs over veth pairs between network namespaces the benchmark makes and removes.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        mem as f64 / 1024.0 / 1024.0,
        command_output("uname", &["-r"]),
        command_output("sh", &["-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    );
    let _ = writeln!(
        out,
        "Kamailio as the baseline, set up fairly (shared BENCH-NOTES): Debian's package, installed by `./.ci/setup`; \
         TLSF allocator (`-x tlsf`), one child (`-n 1`) as regedge runs one worker (`workers = 1`), debug=1, shared \
         memory sized for the load. As a registrar it runs the end-to-end tests' registrar config \
         (tests/kamailio/registrar.cfg, usrloc in memory), as an edge bench/kamailio/dispatcher-edge.cfg \
         (dispatcher, tm, add_path(), failure_route) in front of that registrar. The same phones, addresses and \
         generator drive both in the same invocation.\n"
    );
    let _ = writeln!(out, "Scenario run times: {}.\n", {
        let t = |name: &str, took: Duration, ok: bool| {
            format!("{name} {:.0} s{}", took.as_secs_f64(), if ok { "" } else { " (failed)" })
        };
        [
            t(cost.name, cost.took, cost.result.is_ok()),
            t(refresh.name, refresh.took, refresh.result.is_ok()),
            t(registration.name, registration.took, registration.result.is_ok()),
            t(sccp.name, sccp.took, sccp.result.is_ok()),
            t(memory.name, memory.took, memory.result.is_ok()),
            t(failover.name, failover.took, failover.result.is_ok()),
            t(storm.name, storm.took, storm.result.is_ok()),
            t(cluster.name, cluster.took, cluster.result.is_ok()),
        ]
        .join(", ")
    });

    // 1. Throughput table.
    let _ = writeln!(out, "## Main table\n");
    let _ = writeln!(
        out,
        "### 1. Keepalives and refreshes answered ([refresh.md](refresh.md))\n\nHighest offered rate with < 0.1% \
         of requests without a success answer (a rising open-loop sweep, then bisection), latency at a common rate \
         and at that highest rate, and CPU per 100k answers/s (generator + server process time: on a veth the XDP \
         program and the kernel's answer run in the sender's softirq, so this is the figure that compares the \
         variants; 1.0 = one core per 100k/s). *× Kamailio* = this rate / Kamailio registrar's rate for the same \
         kind, *× off* = this rate / regedge with the fast path off, both in this run.\n"
    );
    match &refresh.result {
        Ok(summary) => {
            let _ = writeln!(
                out,
                "| kind | server | highest rate < 0.1% loss | p50 / p99 µs at {} | p50 / p99 µs at the highest | \
                 CPU per 100k/s | × Kamailio registrar | × regedge off |",
                refresh::fmt_rate(summary.latency_rate as f64) + "/s"
            );
            let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            let best = |case: Case, kind: Kind| {
                summary
                    .results
                    .iter()
                    .find(|r| r.case == case && r.kind == kind)
                    .and_then(|r| r.best())
                    .map(|b| b.result.offered_rate as f64)
            };
            for kind in Kind::ALL {
                for r in summary.results.iter().filter(|r| r.kind == kind) {
                    let lat = r.latency.as_ref().map_or("-".to_owned(), |l| {
                        format!("{:.0} / {:.0}", l.result.percentile_us(0.5), l.result.percentile_us(0.99))
                    });
                    let (rate, top_lat, cpu) = match r.best() {
                        Some(b) => (
                            format!("{}/s", refresh::fmt_rate(b.result.offered_rate as f64)),
                            format!("{:.0} / {:.0}", b.result.percentile_us(0.5), b.result.percentile_us(0.99)),
                            format!("{:.2}", b.per_100k(b.server_cpu_s + b.own_cpu_s)),
                        ),
                        None if r.notes.iter().any(|n| n.starts_with("failed")) => {
                            ("failed".to_owned(), "-".to_owned(), "-".to_owned())
                        }
                        None => ("none passed".to_owned(), "-".to_owned(), "-".to_owned()),
                    };
                    let ratio = |other: Case| match (best(r.case, kind), best(other, kind)) {
                        (Some(a), Some(b)) if r.case != other => format!("{:.2}×", a / b),
                        _ => "-".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {rate} | {lat} | {top_lat} | {cpu} | {} | {} |",
                        kind.label(),
                        r.case.label(),
                        ratio(Case::Kamailio),
                        ratio(Case::Off)
                    );
                }
            }
            let _ = writeln!(
                out,
                "\nSTUN: neither Kamailio config runs a STUN server, so STUN compares regedge's paths only. \
                 Plots: throughput against offered load — [refreshes](refresh-throughput-refresh.svg), \
                 [OPTIONS](refresh-throughput-options.svg), [STUN](refresh-throughput-stun.svg); latency CDFs — \
                 [refreshes](refresh-latency-refresh.svg), [OPTIONS](refresh-latency-options.svg), \
                 [STUN](refresh-latency-stun.svg).\n"
            );
            let _ = writeln!(out, "![refresh throughput](refresh-throughput-refresh.svg)\n");
            let _ = writeln!(out, "![refresh latency](refresh-latency-refresh.svg)\n");
        }
        Err(e) => {
            let _ = writeln!(out, "Failed: {e}\n");
        }
    }

    // 2. Everything else: measure, regedge, baseline, ratio.
    let _ = writeln!(out, "### 2. The other scenarios\n");
    let _ = writeln!(out, "| scenario | measure | regedge | baseline (same run) | ratio |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: |");
    let mut row = |scenario: &str, measure: &str, a: String, b: String, ratio: String| {
        let _ = writeln!(out, "| {scenario} | {measure} | {a} | {b} | {ratio} |");
    };
    let dash = || "-".to_owned();
    match &cost.result {
        Ok(rows) => {
            for r in rows.iter().filter(|r| {
                r.name.starts_with("STUN Binding Request, IPv4") || r.name.starts_with("OPTIONS to the proxy, IPv4")
            }) {
                row(
                    "[kernel cost per packet](keepalive-cost.md)",
                    &format!("{}: BPF_PROG_TEST_RUN median ns", r.name),
                    format!("{} ns", r.kernel_median_ns),
                    format!("XDP_DROP floor {} ns", r.floor_median_ns),
                    format!("{:.1}×", f64::from(r.kernel_median_ns) / f64::from(r.floor_median_ns.max(1))),
                );
            }
        }
        Err(e) => row("[kernel cost per packet](keepalive-cost.md)", "failed", e.clone(), dash(), dash()),
    }
    if let Ok(summary) = &refresh.result
        && let Ok((rows, _)) = &summary.kernel_cost
        && let Some(r) = rows.iter().find(|r| r.action == "XDP_TX")
    {
        row(
            "[kernel cost per packet](refresh.md)",
            "REGISTER refresh answered in the kernel: median ns",
            format!("{} ns", r.median_ns),
            format!("{} ns: {}", rows[0].median_ns, rows[0].name),
            format!("{:.1}×", f64::from(r.median_ns) / f64::from(rows[0].median_ns.max(1))),
        );
    }
    match &registration.result {
        Ok(s) => {
            for r in &s.rows {
                let fmt = |v: Option<u32>| v.map_or("none".to_owned(), |v| format!("{v}/s"));
                let ratio = match (r.regedge_best, r.kamailio_best) {
                    (Some(a), Some(b)) => format!("{:.2}×", f64::from(a) / f64::from(b)),
                    _ => dash(),
                };
                row(
                    "[registrations through the edge](registration.md)",
                    &format!("`{}`: highest offered REGISTER rate with no failed phone", r.load),
                    fmt(r.regedge_best),
                    format!("Kamailio edge {}", fmt(r.kamailio_best)),
                    ratio,
                );
                if let Some((rate, g, k, gr, kr)) = r.common {
                    row(
                        "[registrations through the edge](registration.md)",
                        &format!("`{}` at {rate}/s: edge CPU µs per REGISTER", r.load),
                        format!("{g:.1} µs"),
                        format!("Kamailio edge {k:.1} µs"),
                        format!("{:.2}×", g / k.max(1e-9)),
                    );
                    row(
                        "[registrations through the edge](registration.md)",
                        &format!("`{}` at {rate}/s: REGISTERs reaching the backend per phone REGISTER", r.load),
                        format!("{gr:.3}"),
                        format!("Kamailio edge {kr:.3}"),
                        format!("{:.2}×", gr / kr.max(1e-9)),
                    );
                }
            }
        }
        Err(e) => row("[registrations through the edge](registration.md)", "failed", e.clone(), dash(), dash()),
    }
    match &memory.result {
        Ok(m) => {
            for r in &m.rows {
                let grown = r.rss as f64 - m.base_rss as f64;
                row(
                    "[memory](memory.md)",
                    &format!("{} bindings: RSS growth per binding; all BPF maps' memlock / bindings", r.bindings),
                    format!("{:.0} B", grown / r.bindings as f64),
                    format!("{:.0} B", r.map_memlock as f64 / r.bindings as f64),
                    dash(),
                );
            }
            if let Some((memlock, entries)) = m.bindings_map {
                row(
                    "[memory](memory.md)",
                    "kernel `BINDINGS` map: preallocated memlock / max_entries (bytes per kernel entry, any count)",
                    format!("{:.0} B", memlock as f64 / entries.max(1) as f64),
                    format!("{} MiB for {entries} entries", memlock >> 20),
                    dash(),
                );
            }
        }
        Err(e) => row("[memory](memory.md)", "failed", e.clone(), dash(), dash()),
    }
    match &failover.result {
        Ok(f) => {
            let s = |v: Option<f64>| v.map_or("not within the window".to_owned(), |v| format!("{v:.2} s"));
            let r = f.variants.iter().find(|v| v.edge == "regedge");
            let k = f.variants.iter().find(|v| v.edge != "regedge");
            let pair = |get: &dyn Fn(&scenarios::FailoverVariant) -> Option<f64>,
                        fmt: &dyn Fn(Option<f64>) -> String| {
                let a = r.and_then(get);
                let b = k.and_then(get);
                let ratio = match (a, b) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.2}×", x / y),
                    _ => "-".to_owned(),
                };
                (fmt(a), format!("Kamailio edge {}", fmt(b)), ratio)
            };
            let (a, b, c) = pair(&|v| v.detect_s, &s);
            row(
                "[failover](failover.md)",
                &format!("{} phones: time to detect the primary's death", f.phones),
                a,
                b,
                c,
            );
            let (a, b, c) = pair(&|v| v.rehome_s, &s);
            row(
                "[failover](failover.md)",
                &format!(
                    "time until every phone was on the secondary (each refreshes every {:.0} s; regedge paced at {}/s)",
                    f.refresh_period_s, f.limit
                ),
                a,
                b,
                c,
            );
            let rate = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}/s"));
            let (a, b, c) = pair(&|v| Some(v.peak_1s), &rate);
            row("[failover](failover.md)", "peak REGISTER rate at the secondary, 1 s window", a, b, c);
        }
        Err(e) => row("[failover](failover.md)", "failed", e.clone(), dash(), dash()),
    }
    match &storm.result {
        Ok(st) => {
            let r = st.variants.iter().find(|v| v.edge == "regedge");
            let k = st.variants.iter().find(|v| v.edge != "regedge");
            let kam = |f: &dyn Fn(&scenarios::StormVariant) -> String| {
                k.map_or("Kamailio edge: not run".to_owned(), |k| format!("Kamailio edge {}", f(k)))
            };
            if let Some(r) = r {
                let all = |v: &scenarios::StormVariant| {
                    v.all_registered_s.map_or(format!("{} registered", v.registered), |t| format!("{t:.1} s"))
                };
                row(
                    "[storm](storm.md)",
                    &format!(
                        "{} phones at once: time until all registered (regedge: backend limit {}/s, {:.1} s by the limit alone)",
                        st.phones,
                        st.limit,
                        st.phones as f64 / f64::from(st.limit)
                    ),
                    all(r),
                    kam(&all),
                    match (r.all_registered_s, k.and_then(|k| k.all_registered_s)) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                        _ => dash(),
                    },
                );
                let lost = |v: &scenarios::StormVariant| {
                    format!(
                        "{} / {}",
                        st.phones - v.registered.min(st.phones),
                        st.phones.saturating_sub(v.backend_distinct)
                    )
                };
                row(
                    "[storm](storm.md)",
                    "503s sent to phones; phones lost (no 200 / not at the backend)",
                    format!("{}; {}", r.unavailable, lost(r)),
                    kam(&|v| format!("{}; {}", v.unavailable, lost(v))),
                    dash(),
                );
                row(
                    "[storm](storm.md)",
                    "peak REGISTER rate at the backend, 1 s window (5 s window)",
                    format!("{:.0}/s ({:.0}/s)", r.peak_1s, r.peak_5s),
                    kam(&|v| format!("{:.0}/s ({:.0}/s)", v.peak_1s, v.peak_5s)),
                    k.map_or(dash(), |k| format!("{:.2}×", r.peak_1s / k.peak_1s.max(1e-9))),
                );
            }
        }
        Err(e) => row("[storm](storm.md)", "failed", e.clone(), dash(), dash()),
    }
    match &cluster.result {
        Ok(c) => {
            let link = "[cluster](cluster.md)";
            match &c.cost {
                Ok(cost) => row(
                    link,
                    &format!("{} bindings in Redis: bytes per binding record (`MEMORY USAGE`, mean)", cost.records),
                    format!("{:.0} B", cost.usage_mean),
                    format!("`used_memory` growth {:.0} B per record", cost.used_memory_per_record),
                    dash(),
                ),
                Err(e) => row(link, "store cost: failed", e.clone(), dash(), dash()),
            }
            match &c.writes {
                Ok(steps) => {
                    for s in steps {
                        row(
                            link,
                            &format!(
                                "record writes per second by the store thread, {} bindings refreshed at {}/s (in the kernel)",
                                c.phones, s.offered
                            ),
                            format!("{:.0}/s", s.put_rate),
                            format!(
                                "store thread {:.2} CPU, redis-server {:.2} CPU; max queue depth {}",
                                s.store_cpu, s.redis_cpu, s.max_queue
                            ),
                            dash(),
                        );
                    }
                }
                Err(e) => row(link, "store writes: failed", e.clone(), dash(), dash()),
            }
            let s = |v: Option<f64>| v.map_or("not within the window".to_owned(), |v| format!("{v:.2} s"));
            match &c.sweep {
                Ok(w) => row(
                    link,
                    &format!(
                        "kill -9 of the node holding {} phones → the other node holds them all, by sweeping (lease {:.0} s)",
                        c.phones, w.lease_s
                    ),
                    s(w.all_adopted_s),
                    format!("the last lease ran out after {:.2} s", w.lapse_last_s),
                    dash(),
                ),
                Err(e) => row(link, "adoption by sweeping: failed", e.clone(), dash(), dash()),
            }
            match &c.sighted {
                Ok(g) => row(
                    link,
                    &format!(
                        "{} phones refresh at a node started after the kill: first refresh → all answered 200 (adopted on sight)",
                        c.phones
                    ),
                    s(g.all_answered_s),
                    format!(
                        "{:.2} s of sending; kill → node ready {:.2} s; {} REGISTERs upstream",
                        g.send_s, g.ready_s, g.backend_registers
                    ),
                    dash(),
                ),
                Err(e) => row(link, "adoption on sight: failed", e.clone(), dash(), dash()),
            }
        }
        Err(e) => row("[cluster](cluster.md)", "failed", e.clone(), dash(), dash()),
    }
    match &sccp.result {
        Ok(s) => {
            if let [k, u] = &s.cases[..] {
                row(
                    "[SCCP](sccp.md)",
                    &format!("KeepAlives per second, {} phones, one outstanding each", s.phones),
                    format!("{} {:.0}/s ({:.0}% in the kernel)", k.label, k.rate, k.kernel_share * 100.0),
                    format!("{} {:.0}/s", u.label, u.rate),
                    format!("{:.2}×", k.rate / u.rate.max(1e-9)),
                );
                row(
                    "[SCCP](sccp.md)",
                    "regedge CPU per 100k KeepAlives/s",
                    format!("{:.2}", k.cpu_per_100k),
                    format!("{:.2}", u.cpu_per_100k),
                    format!("{:.2}×", k.cpu_per_100k / u.cpu_per_100k.max(1e-9)),
                );
                row(
                    "[SCCP](sccp.md)",
                    "KeepAlive → KeepAliveAck latency unloaded, p50 / p99 µs",
                    format!("{:.0} / {:.0}", k.p50_us, k.p99_us),
                    format!("{:.0} / {:.0}", u.p50_us, u.p99_us),
                    format!("{:.2}×", k.p50_us / u.p50_us.max(1e-9)),
                );
                if let Some(b) = k.bytes_per_session.or(u.bytes_per_session) {
                    row(
                        "[SCCP](sccp.md)",
                        "RSS bytes per session; sessions per GiB of RSS",
                        format!("{b:.0} B"),
                        format!("{:.0} sessions per GiB", (1u64 << 30) as f64 / b.max(1.0)),
                        dash(),
                    );
                }
            }
        }
        Err(e) => row("[SCCP](sccp.md)", "failed", e.clone(), dash(), dash()),
    }

    let _ = writeln!(out, "\n## Plots\n");
    for (file, what) in [
        ("refresh-throughput-refresh.svg", "REGISTER refreshes: answered against offered"),
        ("refresh-throughput-options.svg", "OPTIONS keepalives: answered against offered"),
        ("refresh-throughput-stun.svg", "STUN keepalives: answered against offered"),
        ("refresh-latency-refresh.svg", "REGISTER refreshes: latency CDF"),
        ("refresh-latency-options.svg", "OPTIONS keepalives: latency CDF"),
        ("refresh-latency-stun.svg", "STUN keepalives: latency CDF"),
        ("registration-throughput.svg", "full registrations through the edge: achieved against offered"),
        ("failover-registers.svg", "failover: REGISTERs per second at each backend"),
        ("failover-rehomed.svg", "failover: phones on the secondary over time"),
        ("storm-registered.svg", "storm: phones registered over time"),
        ("cluster-swept.svg", "cluster: a node's bindings after the other node's kill (adoption by sweeping)"),
    ] {
        if workspace_root().join("bench/report").join(file).is_file() {
            let _ = writeln!(out, "- [{what}]({file})");
        }
    }
    let _ = writeln!(out, "\n## How each scenario was measured\n");
    let _ = writeln!(
        out,
        "Each file below states its setup, its load, how CPU and latency were read, and every step it ran; each \
         names the subcommand that runs it alone (`cargo run --release -p regedge-bench -- <name> [--quick]`, as \
         root), which is the code `report` runs.\n\n\
         - [keepalive-cost.md](keepalive-cost.md): the XDP program's cost per fixture through BPF_PROG_TEST_RUN \
         beside a two-instruction XDP_DROP program run on the same frame the same way, and the userspace engine.\n\
         - [refresh.md](refresh.md): refreshes, OPTIONS and STUN keepalives per second; AF_PACKET generator \
         (sendmmsg/recvmmsg, thousands of phone flows with distinct source addresses and ports), open loop, HDR \
         histograms; regedge XDP native, generic, off; Kamailio registrar and dispatcher edge.\n\
         - [registration.md](registration.md): full registrations through regedge and through Kamailio as edge \
         (sipp phones, the same Kamailio registrar behind both).\n\
         - [sccp.md](sccp.md): SCCP KeepAlives answered by the sk_skb program against userspace; memory per session.\n\
         - [memory.md](memory.md): RSS and BPF map memory at rising binding counts, bindings made by registering \
         through regedge.\n\
         - [failover.md](failover.md): a backend stops answering under refreshing phones, through regedge and \
         through Kamailio as dispatcher edge (fast fake backends).\n\
         - [storm.md](storm.md): every phone registers at once, through regedge behind `max_register_rate` and \
         through Kamailio as dispatcher edge (no limit).\n\
         - [cluster.md](cluster.md): two regedge nodes sharing bindings through a redis-server the benchmark \
         starts: bytes per record, record writes per second, adoption of a killed node's phones by sweeping and \
         on sight.\n"
    );
    let failed: Vec<String> = [
        (cost.name, cost.result.as_ref().err()),
        (refresh.name, refresh.result.as_ref().err()),
        (registration.name, registration.result.as_ref().err()),
        (sccp.name, sccp.result.as_ref().err()),
        (memory.name, memory.result.as_ref().err()),
        (failover.name, failover.result.as_ref().err()),
        (storm.name, storm.result.as_ref().err()),
        (cluster.name, cluster.result.as_ref().err()),
    ]
    .into_iter()
    .filter_map(|(n, e)| e.map(|e| format!("- {n}: {e}")))
    .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "## Failed scenarios\n\n{}\n", failed.join("\n"));
    }
    let path = workspace_root().join("bench/report/README.md");
    std::fs::write(&path, &out)?;
    print!("{out}");
    eprintln!("wrote {} after {:.0} s", path.display(), total.as_secs_f64());
    Ok(())
}
