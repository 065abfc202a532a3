//! regedge benchmarks, one subcommand each, and `report`, which runs them all.
//!
//! `report [--quick]` (module [`report`]) runs every scenario in turn and writes
//! bench/report/README.md: the machine, the exact commands, the main table (every
//! comparison a ratio measured in that run) and the plots (module [`plot`]).
//!
//! `registration` (module [`registration`]) measures REGISTER throughput, backend load and
//! CPU through regedge and through Kamailio as edge proxies; see that module.
//!
//! `refresh` (module [`refresh`]) measures REGISTER refreshes, OPTIONS and STUN keepalives
//! per second answered by regedge with XDP native, XDP generic, in userspace, and by
//! Kamailio as the registrar and as a dispatcher edge; see that module.
//!
//! `sccp` (module [`sccp`]) measures SCCP KeepAlives per second answered by regedge's kernel
//! keepalive offload and in userspace, and regedge's memory per SCCP session; see that module.
//!
//! `memory`, `failover`, `storm` (module [`scenarios`]) run regedge against fast fake
//! backends ([`fakebackend`]): memory per binding, a backend's death, a registration storm.
//!
//! `cluster` (module [`cluster`]) runs two regedge nodes sharing their bindings through a
//! redis-server the benchmark starts: bytes per binding record in Redis, record writes per
//! second the store thread sustains, and how long a node takes to adopt a dead node's phones.
//!
//! `keepalive-cost` measures what one keepalive costs on each path:
//! the XDP program per frame (BPF_PROG_TEST_RUN, kernel-timed) beside the XDP_DROP floor
//! (a two-instruction `return XDP_DROP` program run on the same frame the same way), and
//! the userspace engine per datagram (the decision and reply only; socket syscalls come on
//! top). It prints a table and writes bench/report/keepalive-cost.md.
//!
//! BPF_PROG_TEST_RUN's `repeat` re-runs the program on the frame the previous run left
//! behind, so a fixture that is rewritten into a reply would be measured as "pass" after
//! the first run; every frame is therefore run once per call, many times.

mod cluster;
mod fakebackend;
mod measured;
mod plot;
mod refresh;
mod registration;
mod report;
mod sccp;
mod scenarios;

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use anyhow::{Context as _, bail};
use measured::command_output;
use regedge::{datapath::Fastpath, engine::Engine, local_names::LocalNames, sip::stateless::ToTag};
use regedge_tests::{
    fixtures::{crlf, options_request, stun_request},
    frames::{arp_frame, udp_frame},
    privilege::require_root,
    process::workspace_root,
};

const RUNS: usize = 20_000;
const ENGINE_RUNS: u32 = 200_000;
const NODE: &str = "bench";

struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    payload: Option<(Vec<u8>, SocketAddr)>,
}

fn fixtures(proxy_v4: SocketAddr, proxy_v6: SocketAddr) -> Vec<Fixture> {
    let p4: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let p6: SocketAddr = "[fd00::2]:40000".parse().unwrap();
    let udp = |name, phone: SocketAddr, proxy, payload: Vec<u8>| Fixture {
        name,
        frame: udp_frame(phone, proxy, &payload),
        payload: Some((payload, phone)),
    };
    let register = crlf(
        "REGISTER sip:edge.example.net SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-r\nMax-Forwards: 70\n\
         From: <sip:1001@edge.example.net>;tag=1\nTo: <sip:1001@edge.example.net>\nCall-ID: reg\nCSeq: 2 REGISTER\n\
         Contact: <sip:1001@10.0.0.2:40000>\nExpires: 120\nContent-Length: 0\n\n",
    );
    vec![
        Fixture { name: "non-IP frame, passed at the first check", frame: arp_frame(), payload: None },
        udp("pass: REGISTER (not a keepalive)", p4, proxy_v4, register),
        udp("STUN Binding Request, IPv4", p4, proxy_v4, stun_request(*b"bench-txn-01", &[])),
        udp("STUN Binding Request, IPv6", p6, proxy_v6, stun_request(*b"bench-txn-01", &[])),
        udp("CRLF keepalive, IPv4", p4, proxy_v4, b"\r\n\r\n".to_vec()),
        udp(
            "OPTIONS to the proxy, IPv4",
            p4,
            proxy_v4,
            options_request("sip:edge.example.net", p4, "bench-options", ""),
        ),
        udp(
            "OPTIONS to the proxy, IPv6",
            p6,
            proxy_v6,
            options_request("sip:edge.example.net", p6, "bench-options", ""),
        ),
    ]
}

pub struct Row {
    pub name: &'static str,
    bytes: usize,
    action: &'static str,
    pub kernel_median_ns: u32,
    kernel_p99_ns: u32,
    /// The trivial `return XDP_DROP` program on the same frame, measured the same way.
    pub floor_median_ns: u32,
    floor_p99_ns: u32,
    engine_ns: Option<f64>,
}

fn action_name(action: u32) -> &'static str {
    match action {
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        _ => "other",
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = match &args[1.min(args.len())..] {
        [] => false,
        [q] if q == "--quick" => true,
        _ => bail!("{USAGE}"),
    };
    match args.first().map(String::as_str) {
        Some("report") => report::run(quick),
        Some("keepalive-cost") => keepalive_cost(quick).map(|_| ()),
        Some("registration") => registration::run(&args[1..]),
        Some("refresh") => refresh::run(&args[1..]),
        Some("sccp") => sccp::run(&args[1..]),
        Some(name @ ("memory" | "failover" | "storm" | "cluster")) => {
            if !require_root(name) {
                bail!("{name} needs root (network namespaces, XDP, AF_PACKET)");
            }
            let (binary, build) = measured::regedge_binary()?;
            let command =
                format!("cargo run --release -p regedge-bench -- {name}{}", if quick { " --quick" } else { "" });
            match name {
                "memory" => scenarios::memory(quick, &command, &binary, &build).map(|_| ()),
                "failover" => scenarios::failover(quick, &command, &binary, &build).map(|_| ()),
                "cluster" => cluster::run(quick, &command, &binary, &build).map(|_| ()),
                _ => scenarios::storm(quick, &command, &binary, &build).map(|_| ()),
            }
        }
        _ => bail!("{USAGE}"),
    }
}

const USAGE: &str = "usage: regedge-bench (report | keepalive-cost | registration | refresh | sccp | memory | failover | storm | cluster) \
                     [--quick]";

/// Measures every fixture, writes bench/report/keepalive-cost.md, returns the rows.
pub fn keepalive_cost(quick: bool) -> anyhow::Result<Vec<Row>> {
    let runs = if quick { RUNS / 4 } else { RUNS };
    if !require_root("keepalive-cost") {
        bail!("keepalive-cost needs root (BPF_PROG_TEST_RUN)");
    }
    let proxy_v4: SocketAddr = "10.0.0.1:5060".parse()?;
    let proxy_v6: SocketAddr = "[fd00::1]:5060".parse()?;
    let listen = [proxy_v4, proxy_v6];
    let names = LocalNames::new(&["edge.example.net".to_owned()], &listen, &[]);
    let tag = ToTag::for_node(NODE);
    let mut fastpath = Fastpath::load().context("load the XDP program")?;
    fastpath.configure(&listen, &names, tag, Default::default())?;
    let engine = Engine::new(names, tag, None);
    let floor = refresh::xdp_pass::drop_program().context("load the XDP_DROP floor program")?;

    let mut rows = Vec::new();
    for fixture in fixtures(proxy_v4, proxy_v6) {
        let mut durations = Vec::with_capacity(runs);
        let mut floor_durations = Vec::with_capacity(runs);
        let mut action = 0;
        for _ in 0..runs {
            let run = fastpath.test_run(&fixture.frame, 1)?;
            action = run.action;
            durations.push(run.duration_ns);
            let run = regedge::datapath::test_run(std::os::fd::AsFd::as_fd(&floor), &fixture.frame, 1)?;
            floor_durations.push(run.duration_ns);
        }
        durations.sort_unstable();
        floor_durations.sort_unstable();
        let engine_ns = fixture.payload.as_ref().map(|(payload, phone)| {
            let mut out = Vec::with_capacity(2048);
            let start = Instant::now();
            for _ in 0..ENGINE_RUNS {
                std::hint::black_box(engine.answer_datagram(std::hint::black_box(payload), *phone, proxy_v4, &mut out));
            }
            start.elapsed().as_nanos() as f64 / ENGINE_RUNS as f64
        });
        rows.push(Row {
            name: fixture.name,
            bytes: fixture.frame.len(),
            action: action_name(action),
            kernel_median_ns: durations[runs / 2],
            kernel_p99_ns: durations[runs * 99 / 100],
            floor_median_ns: floor_durations[runs / 2],
            floor_p99_ns: floor_durations[runs * 99 / 100],
            engine_ns,
        });
    }

    let report = render(&rows, fastpath.verified_instructions(), runs, quick);
    print!("{report}");
    let dir = workspace_root().join("bench").join("report");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("keepalive-cost.md");
    std::fs::write(&path, &report)?;
    eprintln!("wrote {}", path.display());
    Ok(rows)
}

fn render(rows: &[Row], verified: Option<u32>, runs: usize, quick: bool) -> String {
    let cpu = crate::measured::cpu_model();
    let mut out = String::new();
    let _ = writeln!(out, "# Keepalive cost per packet\n");
    let _ = writeln!(
        out,
        "Command: `cargo run --release -p regedge-bench -- keepalive-cost{}` (as root; also part of `report`)\n",
        if quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        out,
        "Machine: {} cores, {cpu}, kernel {}. XDP program: {} verified instructions.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-r"]),
        verified.map_or("?".into(), |v| v.to_string())
    );
    let _ = writeln!(
        out,
        "Kernel: BPF_PROG_TEST_RUN, one run per call, {runs} calls, the kernel's own timing of each run. \
         *XDP_DROP floor*: a two-instruction program (`r0 = XDP_DROP; exit`, loaded with bpf(2) by the benchmark, \
         bench/src/refresh/xdp_pass.rs) run on the same frame with the same call (`regedge::datapath::test_run`, \
         repeat 1), interleaved run by run with regedge's program: the harness's own cost per packet (copying the \
         frame in and out, setting up the context), which every fixture pays too; *above floor* = regedge's median \
         minus the floor's. regedge's program itself drops nothing but CRLF keepalives (XDP_DROP: absorbed) and \
         passes what it does not answer. Userspace: the engine's decision and reply for the same payload, mean of \
         {ENGINE_RUNS} calls (no socket syscalls). Compare rows within one run; these machines are noisy.\n"
    );
    let _ = writeln!(
        out,
        "| fixture | frame bytes | kernel action | kernel median ns | kernel p99 ns | XDP_DROP floor median / p99 ns | \
         above floor ns | userspace engine ns |"
    );
    let _ = writeln!(out, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let engine = r.engine_ns.map_or("-".to_owned(), |ns| format!("{ns:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} / {} | {} | {engine} |",
            r.name,
            r.bytes,
            r.action,
            r.kernel_median_ns,
            r.kernel_p99_ns,
            r.floor_median_ns,
            r.floor_p99_ns,
            i64::from(r.kernel_median_ns) - i64::from(r.floor_median_ns)
        );
    }
    out
}
