//! `cluster`: what sharing bindings through Redis costs and how fast a node takes over
//! another's phones (`[cluster]`, proxy/src/cluster/). One invocation, one topology, one
//! redis-server, three runs:
//!
//! 1. *Store cost and write rate*: node A (release regedge, `workers = 1`, XDP native on
//!    the phones' veth, `[cluster] store` = the bench's redis-server) registers the phones
//!    through a fake registrar; then the records' `MEMORY USAGE` (every record, `SAMPLES
//!    0`) and Redis's `used_memory` growth per binding. Then refreshes at high offered
//!    rates, answered in the kernel: each absorbed refresh moves the binding's CSeq and
//!    times, which the registry journals, so the store thread writes the record again
//!    (coalesced per flush). Measured: `regedge_store_ops_total{op="put",outcome="ok"}`
//!    per second, `regedge_store_queue_depth`, the store thread's and redis-server's CPU.
//! 2. *Adoption by sweeping*: node B runs in a namespace of its own (same store, secret
//!    and backend, no phones), node A holds the phones with a short lease; A is killed
//!    with SIGKILL; the time until B's `regedge_bindings` holds every phone (all swept),
//!    beside when the leases A last wrote ran out.
//! 3. *Adoption on sight*: node A holds the phones (a lease long enough that nothing is
//!    swept), A is killed, B starts on A's address (a balancer moving the address), and
//!    every phone refreshes at B: the time until every phone had its 200, the REGISTERs
//!    the backend saw meanwhile (none are expected: adoption sends nothing upstream).
//!
//! The topology is the refresh benchmark's ([`crate::refresh::Topology`]: phones — proxy —
//! backend namespaces, the AF_PACKET generator as the phones, a [`FakeBackend`] as the
//! call server) plus a namespace for node B linked to the backend namespace. redis-server
//! (Debian's, `--save "" --appendonly no`) runs in the backend namespace on the backend's
//! address; it is stopped by its PID at the end. Writes bench/report/cluster.md.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use regedge_tests::{
    netns::NetNs,
    process::{scrape, workspace_root},
    redis::{REDIS_SERVER, RedisServer, Reply},
};

use crate::{
    fakebackend::FakeBackend,
    measured::{clock_ticks_per_second, command_output, parse_proc_stat, proc_stat},
    refresh::{
        BACKEND_IP, DOMAIN, METRICS, PROXY_IF, PROXY_IP, Regedge, SIP_PORT, Topology, WORKERS,
        generator::{self, Fleet, FleetSpec, Kind},
    },
    scenarios::wait_until,
};

const REDIS_PORT: u16 = 6379;
/// Node B's namespace: `rfn0` (10.232.0.1) — `rfb2` (10.232.0.11) in the backend's.
const NODE_B_IF: &str = "rfn0";
const NODE_B_IP: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 1);
const BACKEND_B_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 11);
const SECRET: &str = "regedge-bench-cluster-secret";
const FIRST_PORT: u16 = 20_000;
/// Full REGISTERs per second while the phones register at node A.
const REGISTER_RATE: u64 = 5_000;
/// Leases: run 1 (long, so that at most one renewal round falls in the write-rate steps), run 2 (short:
/// the sweep is what is measured), run 3 (long: nothing is swept while phones are sighted).
const LEASE_WRITES: &str = "60s";
const LEASE_SWEEP: &str = "2s";
const LEASE_SIGHTED: &str = "30s";

struct Plan {
    quick: bool,
    phones: usize,
    /// Offered refresh rates of the write-rate steps.
    rates: &'static [u64],
    step: Duration,
    /// Offered rate of the refreshes at node B in run 3.
    sighted_rate: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self { quick, phones: 5_000, rates: &[20_000, 100_000], step: Duration::from_secs(1), sighted_rate: 10_000 }
        } else {
            Self {
                quick,
                phones: 10_000,
                rates: &[20_000, 40_000, 100_000],
                step: Duration::from_secs(5),
                sighted_rate: 10_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// results

/// What the records cost in Redis.
pub struct StoreCost {
    pub records: usize,
    /// `MEMORY USAGE key SAMPLES 0`, bytes: mean, min, max over every record.
    pub usage_mean: f64,
    pub usage_min: u64,
    pub usage_max: u64,
    /// `used_memory` after the records minus before, per record.
    pub used_memory_per_record: f64,
    /// Mean length of the `data` field (the binding as JSON).
    pub data_mean: f64,
    pub key_len: usize,
    /// The flow index (`regedge:f:{<flow>}` → device, a string with the record's expiry):
    /// keys, and `MEMORY USAGE` mean.
    pub flow_keys: usize,
    pub flow_usage_mean: f64,
    /// Every key in the store (`DBSIZE`).
    pub dbsize: u64,
    pub encoding: String,
    /// Keys with a TTL (`INFO keyspace` `expires`).
    pub expires: u64,
    pub registered_s: f64,
}

/// One write-rate step.
pub struct WriteStep {
    pub offered: u64,
    pub sent: u64,
    pub answered: u64,
    /// Seconds the generator sent.
    pub send_s: f64,
    /// Refreshes the XDP program answered during the step (`regedge_fastpath_replies_total{kind="register"}`).
    pub kernel_answers: u64,
    /// What else moved during the step: the XDP program's pass reasons and the
    /// registrations by outcome (`name{label} +delta`, nonzero only).
    pub other_counters: String,
    /// `put` ok while the generator sent, over the sampled interval; per second.
    pub puts_during: u64,
    pub put_rate: f64,
    /// `put` ok from the step's start until the counter stopped moving, and that time.
    pub puts_total: u64,
    pub settled_s: f64,
    pub put_errors: u64,
    pub renews: u64,
    pub max_queue: u64,
    /// CPUs used during the send window: the store thread, all of regedge, redis-server.
    pub store_cpu: f64,
    pub regedge_cpu: f64,
    pub redis_cpu: f64,
    /// redis-server's `total_commands_processed` per second during the step (+ settle).
    pub redis_commands_rate: f64,
    /// CPU µs per record written, from the step's start until the writes settled: the
    /// store thread's, redis-server's.
    pub store_us_per_put: f64,
    /// CPUs of the whole machine busy during the send window (/proc/stat), and how many it has.
    pub machine_busy: f64,
    pub redis_us_per_put: f64,
}

/// Run 2.
pub struct Sweep {
    pub lease_s: f64,
    /// Seconds from the kill until the leases A last wrote ran out: first and last.
    pub lapse_first_s: f64,
    pub lapse_last_s: f64,
    pub first_adopted_s: Option<f64>,
    pub all_adopted_s: Option<f64>,
    pub kernel_all_s: Option<f64>,
    pub swept: u64,
    pub bindings: u64,
    pub kernel_entries: u64,
    pub adopt_ok: u64,
    pub backend_registers: u64,
    /// (seconds since the kill, B's bindings).
    pub timeline: Vec<(f64, f64)>,
}

/// Run 3.
pub struct Sighted {
    /// Kill → B's /metrics answers; → B's store up with every record in its directory.
    pub start_s: f64,
    pub ready_s: f64,
    pub registered: usize,
    /// From B's first refresh sent until the last phone had its 200.
    pub all_answered_s: Option<f64>,
    pub send_s: f64,
    pub median_s: f64,
    pub sent: u64,
    pub retransmissions: u64,
    pub failures: u64,
    pub sighted: u64,
    pub swept: u64,
    pub bindings: u64,
    pub kernel_entries: u64,
    pub backend_registers: u64,
    /// A second round of refreshes at B: (sent, answered 200, answered by the XDP program).
    pub second: Option<(u64, u64, u64)>,
}

pub struct ClusterResult {
    pub phones: usize,
    pub redis_version: String,
    pub cost: Result<StoreCost, String>,
    pub writes: Result<Vec<WriteStep>, String>,
    pub sweep: Result<Sweep, String>,
    pub sighted: Result<Sighted, String>,
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// helpers

/// The value of `name{labels...}` in a /metrics text: the first sample of `name` carrying
/// every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let (n, rest) = key.split_once('{').unwrap_or((key, ""));
        if n != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.trim().parse().ok()
    })
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    sample(text, name, labels).unwrap_or(0.0) as u64
}

fn puts_ok(m: &str) -> u64 {
    value(m, "regedge_store_ops_total", &[("op", "put"), ("outcome", "ok")])
}

fn bindings(m: &str) -> u64 {
    value(m, "regedge_bindings", &[("protocol", "sip")])
}

fn metrics(ns: &NetNs) -> String {
    scrape(METRICS, Some(ns)).unwrap_or_default()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// CPU ticks of the thread of `pid` named `comm`, and of the whole process.
fn thread_ticks(pid: u32, comm: &str) -> (u64, u64) {
    let mut thread = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if name.trim() == comm {
                thread += std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|s| parse_proc_stat(&s))
                    .map_or(0, |s| s.ticks);
            }
        }
    }
    (thread, proc_stat(pid).map_or(0, |s| s.ticks))
}

/// Busy ticks of all CPUs (/proc/stat: everything but idle and iowait).
fn machine_ticks() -> u64 {
    let values = crate::measured::proc_stat_cpu();
    let total: u64 = values.iter().take(8).sum();
    total.saturating_sub(values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0))
}

/// regedge's config for one node.
fn config(name: &str, listen: Ipv4Addr, interface: &str, store: &str, lease: &str) -> String {
    format!(
        "[node]\nname = \"{name}\"\nworkers = {WORKERS}\nstate_dir = \"\"\n\n[sip]\nlisten = [\"{listen}:{SIP_PORT}\"]\n\
         local_names = [\"{DOMAIN}\"]\n\n[fastpath]\ninterfaces = [\"{interface}\"]\nmode = \"native\"\npin_path = \"\"\n\n\
         [registration]\nphone_expires = 120\nbackend_expires = 3600\nexpires_jitter = 0\n\n\
         [metrics]\nlisten = \"{METRICS}\"\n\n[cluster]\nstore = \"{store}\"\nadvertise = \"{PROXY_IP}:{SIP_PORT}\"\nlease = \"{lease}\"\nsecret = \"{SECRET}\"\n\n\
         [routing]\ndefault_group = \"default\"\n\n\
         [[backends]]\nname = \"cm1\"\naddress = \"{BACKEND_IP}:{SIP_PORT}\"\nmax_register_rate = 1000000\n\n\
         [[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n"
    )
}

fn write_report(text: &str) -> anyhow::Result<()> {
    let dir = workspace_root().join("bench").join("report");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cluster.md"), text)?;
    eprintln!("wrote bench/report/cluster.md");
    Ok(())
}

/// Everything the three runs share.
struct Lab<'a> {
    plan: &'a Plan,
    net: &'a Topology,
    node_b_ns: &'a NetNs,
    backend: &'a FakeBackend,
    redis: &'a RedisServer,
    fleet: &'a Fleet,
    binary: &'a Path,
    notes: Mutex<Vec<String>>,
    /// Per registration of the phones at node A: (seconds, REGISTERs sent, retransmissions).
    registrations: Mutex<Vec<(f64, u64, u64)>>,
}

impl Lab<'_> {
    /// `FLUSHALL`.
    fn flushall(&self) -> anyhow::Result<()> {
        self.redis.flushall().map_err(anyhow::Error::msg)
    }

    /// The `regedge:b:*` records in the store (0 when redis does not answer).
    fn records(&self) -> usize {
        self.redis.count_keys("regedge:b:*").unwrap_or(0) as usize
    }

    /// Every key matching `pattern`.
    fn keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        self.redis.keys(pattern).with_context(|| format!("redis: SCAN MATCH {pattern}"))
    }

    /// `commands` pipelined over one connection; an error reply is an error.
    fn pipeline(&self, commands: &[Vec<String>]) -> anyhow::Result<Vec<Reply>> {
        let replies = self.redis.pipeline(commands).map_err(anyhow::Error::msg)?;
        if let Some(Reply::Error(e)) = replies.iter().find(|r| matches!(r, Reply::Error(_))) {
            bail!("redis: {e}");
        }
        Ok(replies)
    }

    /// An `INFO section` field as a number.
    fn info_u64(&self, section: &str, field: &str) -> anyhow::Result<u64> {
        let v = self.redis.info(section, field).with_context(|| format!("redis: INFO {section} has no {field}"))?;
        Ok(v.parse()?)
    }

    /// redis-server's CPU ticks.
    fn redis_ticks(&self) -> u64 {
        self.redis.pid().and_then(proc_stat).map_or(0, |s| s.ticks)
    }

    fn note(&self, note: String) {
        eprintln!("cluster: note: {note}");
        self.notes.lock().expect("notes lock").push(note);
    }

    /// Starts a node and waits for its store connection.
    fn node(&self, ns: &NetNs, name: &str, listen: Ipv4Addr, interface: &str, lease: &str) -> anyhow::Result<Regedge> {
        let node = Regedge::start_config(ns, self.binary, &config(name, listen, interface, &self.redis.url(), lease))?;
        let up = wait_until(Duration::from_secs(10), || {
            let m = metrics(ns);
            sample(&m, "regedge_store_up", &[]) == Some(1.0)
                && sample(&m, "regedge_backend_up", &[("backend", "cm1")]) == Some(1.0)
        });
        ensure!(up, "{name}: the store or the backend is not up after 10 s:\n{}", node.process.log());
        Ok(node)
    }

    /// Registers every phone through the node in the proxy namespace; waits until the
    /// store holds a record for each and the node's queue is empty. Returns the seconds.
    fn register_all(&self) -> anyhow::Result<f64> {
        let phones = self.plan.phones;
        let start = Instant::now();
        let deadline = Duration::from_secs(20) + Duration::from_secs_f64(phones as f64 / REGISTER_RATE as f64 * 3.0);
        let o = self.fleet.register_paced(0..phones, REGISTER_RATE, Duration::from_secs(1), deadline);
        ensure!(o.registered == phones, "only {} of {phones} phones registered", o.registered);
        let took = start.elapsed().as_secs_f64();
        self.registrations.lock().expect("registrations lock").push((took, o.sent, o.retransmissions));
        let stored = wait_until(Duration::from_secs(20), || {
            let m = metrics(&self.net.proxy);
            bindings(&m) == phones as u64
                && value(&m, "regedge_fastpath_bindings", &[]) == phones as u64
                && value(&m, "regedge_store_queue_depth", &[]) == 0
                && value(&m, "regedge_store_leases_held", &[]) == phones as u64
                && self.records() == phones
        });
        if !stored {
            let m = metrics(&self.net.proxy);
            let records = self.records();
            bail!(
                "the store did not hold {phones} records of node A within 20 s: records {records}, bindings {}, kernel \
                 entries {}, queue depth {}, leases held {}",
                bindings(&m),
                value(&m, "regedge_fastpath_bindings", &[]),
                value(&m, "regedge_store_queue_depth", &[]),
                value(&m, "regedge_store_leases_held", &[])
            );
        }
        Ok(took)
    }
}

// ---------------------------------------------------------------------------------------
// the scenario

pub fn run(quick: bool, command: &str, binary: &Path, build: &str) -> anyhow::Result<ClusterResult> {
    ensure!(Path::new(REDIS_SERVER).is_file(), "{REDIS_SERVER} is not installed (Debian package redis-server)");
    let plan = Plan::new(quick);
    let started = Instant::now();
    let ips: Vec<Ipv4Addr> =
        (0..plan.phones.div_ceil(45_000).clamp(4, 200)).map(|i| Ipv4Addr::new(10, 230, 0, 2 + i as u8)).collect();
    let net = Topology::with(&ips, &[BACKEND_IP])?;
    let node_b_ns = NetNs::new("rf-node-b");
    node_b_ns.link(NODE_B_IF, &NODE_B_IP.to_string(), &net.backend, "rfb2", &BACKEND_B_SIDE_IP.to_string(), 24);
    node_b_ns.route("10.231.0.0/24", &BACKEND_B_SIDE_IP.to_string());
    let backend = FakeBackend::start(&net.backend, SocketAddr::new(BACKEND_IP.into(), SIP_PORT), Instant::now())?;
    let redis = RedisServer::start(&net.backend, SocketAddr::new(BACKEND_IP.into(), REDIS_PORT), "bench-redis");
    let redis_version = command_output(REDIS_SERVER, &["--version"]);
    eprintln!("cluster: redis-server pid {:?} at {} ({redis_version})", redis.pid(), redis.url());
    let sockets = net.phones.run(|| generator::open_sockets(net.phone_ifindex))?;
    let spec = FleetSpec {
        tag: b'c',
        phones: plan.phones,
        addrs: ips.clone(),
        first_port: FIRST_PORT,
        server: PROXY_IP,
        domain: DOMAIN.to_owned(),
        first_user: 400_000,
        expires: 120,
        src_mac: net.phone_mac,
        dst_mac: net.proxy_mac,
    };
    let fleet = Fleet::new(spec, sockets)?;
    let lab = Lab {
        plan: &plan,
        net: &net,
        node_b_ns: &node_b_ns,
        backend: &backend,
        redis: &redis,
        fleet: &fleet,
        binary,
        notes: Mutex::new(Vec::new()),
        registrations: Mutex::new(Vec::new()),
    };
    let stop = AtomicBool::new(false);
    let (cost, writes, sweep, sighted) = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| fleet.receive(&stop));
        let (cost, writes) = match run_writes(&lab) {
            Ok((c, w)) => (Ok(c), w.map_err(|e| format!("{e:#}"))),
            Err(e) => (Err(format!("{e:#}")), Err("not run: run 1 failed".to_owned())),
        };
        let sweep = run_sweep(&lab).map_err(|e| format!("{e:#}"));
        let sighted = run_sighted(&lab).map_err(|e| format!("{e:#}"));
        stop.store(true, Ordering::Relaxed);
        let _ = receiver.join();
        (cost, writes, sweep, sighted)
    });
    let mut notes = std::mem::take(&mut *lab.notes.lock().expect("notes lock"));
    let registrations = std::mem::take(&mut *lab.registrations.lock().expect("registrations lock"));
    if !registrations.is_empty() {
        let runs: Vec<String> = registrations
            .iter()
            .map(|(s, sent, retr)| format!("{s:.1} s, {sent} REGISTERs sent of which {retr} retransmissions"))
            .collect();
        notes.insert(
            0,
            format!(
                "the phones' registrations at node A (runs in order; each phone retransmits after 1 s without an \
                 answer, and {REGISTER_RATE}/s alone takes {:.1} s): {}",
                plan.phones as f64 / REGISTER_RATE as f64,
                runs.join("; ")
            ),
        );
    }
    drop(lab);
    drop(fleet);
    drop(redis);
    drop(backend);
    drop(node_b_ns);
    drop(net);
    let result = ClusterResult { phones: plan.phones, redis_version, cost, writes, sweep, sighted, notes };
    let report = render(&plan, &result, command, build, started.elapsed());
    print!("{report}");
    write_report(&report)?;
    Ok(result)
}

/// Run 1: node A registers the phones (store cost), then refreshes at high rates (writes).
#[allow(clippy::type_complexity)]
fn run_writes(lab: &Lab<'_>) -> anyhow::Result<(StoreCost, anyhow::Result<Vec<WriteStep>>)> {
    let phones = lab.plan.phones;
    lab.flushall()?;
    let used_before = lab.info_u64("memory", "used_memory")?;
    let node = lab.node(&lab.net.proxy, "bench-a", PROXY_IP, PROXY_IF, LEASE_WRITES)?;
    eprintln!("cluster: run 1: node A pid {}", node.pid);
    let registered_s = lab.register_all()?;
    eprintln!("cluster: run 1: {phones} phones registered through node A in {registered_s:.1} s");
    let cost = {
        let used_after = lab.info_u64("memory", "used_memory")?;
        let keys = lab.keys("regedge:b:*")?;
        ensure!(keys.len() == phones, "SCAN found {} records, not {phones}", keys.len());
        let mut usages = Vec::with_capacity(keys.len());
        let mut data_len = 0u64;
        for chunk in keys.chunks(1000) {
            let commands: Vec<Vec<String>> = chunk
                .iter()
                .flat_map(|k| {
                    [
                        vec!["MEMORY".into(), "USAGE".into(), k.clone(), "SAMPLES".into(), "0".into()],
                        vec!["HSTRLEN".into(), k.clone(), "data".into()],
                    ]
                })
                .collect();
            let replies = lab.pipeline(&commands)?;
            for pair in replies.chunks(2) {
                usages.push(pair[0].as_int().context("MEMORY USAGE")? as u64);
                data_len += pair[1].as_int().unwrap_or(0) as u64;
            }
        }
        let encoding = lab.redis.query(&["OBJECT", "ENCODING", &keys[0]]).map_err(anyhow::Error::msg)?.text();
        let flow_keys = lab.keys("regedge:f:*")?;
        let mut flow_usage = 0u64;
        for chunk in flow_keys.chunks(1000) {
            let commands: Vec<Vec<String>> = chunk
                .iter()
                .map(|k| vec!["MEMORY".into(), "USAGE".into(), k.clone(), "SAMPLES".into(), "0".into()])
                .collect();
            for r in lab.pipeline(&commands)? {
                flow_usage += r.as_int().unwrap_or(0) as u64;
            }
        }
        let dbsize = lab.redis.dbsize().context("redis: DBSIZE")?;
        let keyspace = lab.redis.info("keyspace", "db0").unwrap_or_default();
        let expires =
            keyspace.split(',').find_map(|p| p.strip_prefix("expires=").and_then(|v| v.parse().ok())).unwrap_or(0);
        StoreCost {
            records: keys.len(),
            usage_mean: usages.iter().sum::<u64>() as f64 / usages.len() as f64,
            usage_min: usages.iter().copied().min().unwrap_or(0),
            usage_max: usages.iter().copied().max().unwrap_or(0),
            used_memory_per_record: (used_after as f64 - used_before as f64) / keys.len() as f64,
            data_mean: data_len as f64 / keys.len() as f64,
            key_len: keys.iter().map(String::len).sum::<usize>() / keys.len(),
            flow_keys: flow_keys.len(),
            flow_usage_mean: flow_usage as f64 / flow_keys.len().max(1) as f64,
            dbsize,
            encoding,
            expires,
            registered_s,
        }
    };
    eprintln!(
        "cluster: store cost: MEMORY USAGE mean {:.0} B (min {}, max {}), used_memory +{:.0} B per record, data {:.0} B, \
         {}",
        cost.usage_mean, cost.usage_min, cost.usage_max, cost.used_memory_per_record, cost.data_mean, cost.encoding
    );
    let writes = (|| {
        let mut steps = Vec::new();
        lab.fleet.set_kind(Kind::Register);
        for &rate in lab.plan.rates {
            let step = write_step(lab, &node, rate)?;
            eprintln!(
                "cluster: writes at {rate}/s offered: sent {} in {:.2} s, 200 {} ({} in the kernel), puts {} at {:.0}/s \
                 while sending, {} until settled in {:.2} s, max queue {}, store thread {:.2} CPU, regedge {:.2}, \
                 redis {:.2}, machine {:.2}, put errors {}, renews {}, CPU µs per put: store thread {:.1}, redis {:.1}; \
                 {}",
                step.sent,
                step.send_s,
                step.answered,
                step.kernel_answers,
                step.puts_during,
                step.put_rate,
                step.puts_total,
                step.settled_s,
                step.max_queue,
                step.store_cpu,
                step.regedge_cpu,
                step.redis_cpu,
                step.machine_busy,
                step.put_errors,
                step.renews,
                step.store_us_per_put,
                step.redis_us_per_put,
                step.other_counters
            );
            steps.push(step);
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(steps)
    })();
    let problems: Vec<String> =
        node.process.log().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned).collect();
    if let Some(last) = problems.last() {
        lab.note(format!("run 1: node A logged {} warnings or errors; the last: `{last}`", problems.len()));
    }
    drop(node);
    Ok((cost, writes))
}

/// One open-loop refresh step at node A with the store thread's writes sampled.
fn write_step(lab: &Lab<'_>, node: &Regedge, rate: u64) -> anyhow::Result<WriteStep> {
    let ns = &lab.net.proxy;
    let hz = clock_ticks_per_second();
    let before = metrics(ns);
    let commands_before = lab.info_u64("stats", "total_commands_processed")?;
    let ticks_before = (thread_ticks(node.pid, "regedge-store"), lab.redis_ticks());
    let busy_before = machine_ticks();
    let done = AtomicBool::new(false);
    // (since the step's start, put ok, queue depth)
    let samples: Mutex<Vec<(f64, u64, u64)>> = Mutex::new(Vec::new());
    let start = Instant::now();
    let (result, send_end, ticks_send_end, ticks_settled, busy_after) = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Bounded: the step's time plus 30 s.
            let limit = lab.plan.step + Duration::from_secs(30);
            while !done.load(Ordering::Relaxed) && start.elapsed() < limit {
                let m = metrics(ns);
                let at = start.elapsed().as_secs_f64();
                samples.lock().expect("samples").push((at, puts_ok(&m), value(&m, "regedge_store_queue_depth", &[])));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let result = lab.fleet.run_step(rate, lab.plan.step, 2, Duration::from_millis(300), &AtomicBool::new(false));
        let send_end = result.send_elapsed.as_secs_f64();
        let ticks = (thread_ticks(node.pid, "regedge-store"), lab.redis_ticks());
        let busy_after = machine_ticks();
        // Until the put counter stops moving (two samples 200 ms apart), 30 s at most.
        let mut last = puts_ok(&metrics(ns));
        for _ in 0..150 {
            std::thread::sleep(Duration::from_millis(200));
            let now = puts_ok(&metrics(ns));
            if now == last {
                break;
            }
            last = now;
        }
        done.store(true, Ordering::Relaxed);
        let settled = (thread_ticks(node.pid, "regedge-store"), lab.redis_ticks());
        (result, send_end, ticks, settled, busy_after)
    });
    let settled_s = start.elapsed().as_secs_f64();
    let after = metrics(ns);
    let commands_after = lab.info_u64("stats", "total_commands_processed")?;
    let samples = samples.into_inner().expect("samples");
    // The put rate over the samples inside the send window.
    let inside: Vec<&(f64, u64, u64)> = samples.iter().filter(|s| s.0 <= send_end).collect();
    let (puts_during, put_rate) = match (inside.first(), inside.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1, (b.1 - a.1) as f64 / (b.0 - a.0)),
        _ => (0, 0.0),
    };
    let ((store_a, regedge_a), redis_a) = ticks_before;
    let ((store_b, regedge_b), redis_b) = ticks_send_end;
    let cpu = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz / send_end.max(1e-9);
    let delta =
        |name: &str, labels: &[(&str, &str)]| value(&after, name, labels).saturating_sub(value(&before, name, labels));
    Ok(WriteStep {
        offered: rate,
        sent: result.sent,
        answered: result.ok,
        send_s: send_end,
        kernel_answers: delta("regedge_fastpath_replies_total", &[("kind", "register")]),
        other_counters: counter_deltas(
            &before,
            &after,
            &["regedge_fastpath_passed_total", "regedge_registrations_total"],
        ),
        puts_during,
        put_rate,
        puts_total: puts_ok(&after).saturating_sub(puts_ok(&before)),
        settled_s,
        put_errors: delta("regedge_store_ops_total", &[("op", "put"), ("outcome", "error")]),
        renews: delta("regedge_store_ops_total", &[("op", "renew"), ("outcome", "ok")]),
        max_queue: samples.iter().map(|s| s.2).max().unwrap_or(0),
        store_cpu: cpu(store_a, store_b),
        regedge_cpu: cpu(regedge_a, regedge_b),
        redis_cpu: cpu(redis_a, redis_b),
        redis_commands_rate: commands_after.saturating_sub(commands_before) as f64 / settled_s.max(1e-9),
        machine_busy: busy_after.saturating_sub(busy_before) as f64 / hz / send_end.max(1e-9),
        store_us_per_put: (ticks_settled.0.0.saturating_sub(store_a)) as f64 / hz * 1e6
            / puts_ok(&after).saturating_sub(puts_ok(&before)).max(1) as f64,
        redis_us_per_put: (ticks_settled.1.saturating_sub(redis_a)) as f64 / hz * 1e6
            / puts_ok(&after).saturating_sub(puts_ok(&before)).max(1) as f64,
    })
}

/// Run 2: B sweeps A's phones after A's death.
fn run_sweep(lab: &Lab<'_>) -> anyhow::Result<Sweep> {
    let phones = lab.plan.phones as u64;
    lab.flushall()?;
    let b = lab.node(lab.node_b_ns, "bench-b", NODE_B_IP, NODE_B_IF, LEASE_SWEEP)?;
    let mut a = lab.node(&lab.net.proxy, "bench-a", PROXY_IP, PROXY_IF, LEASE_SWEEP)?;
    eprintln!("cluster: run 2: node A pid {}, node B pid {}, lease {LEASE_SWEEP}", a.pid, b.pid);
    let registered_s = lab.register_all()?;
    eprintln!("cluster: run 2: {phones} phones registered through node A in {registered_s:.1} s");
    let seen = wait_until(Duration::from_secs(10), || {
        let m = metrics(lab.node_b_ns);
        value(&m, "regedge_store_records_seen", &[]) == phones && bindings(&m) == 0
    });
    ensure!(seen, "node B's directory did not hold {phones} records within 10 s");
    // Let A renew at least once more, so that the leases are as fresh as in steady state.
    std::thread::sleep(Duration::from_millis(800));
    let keys = lab.keys("regedge:b:*")?;
    let backend_before = lab.backend.stats.registers.load(Ordering::Relaxed);
    let before_b = metrics(lab.node_b_ns);
    // The leases as they stand just before the kill (A renews a third of the lease apart).
    let mut leases = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let commands: Vec<Vec<String>> = chunk.iter().map(|k| vec!["HGET".into(), k.clone(), "lease".into()]).collect();
        for r in lab.pipeline(&commands)? {
            leases.push(r.text().parse().unwrap_or(0));
        }
    }
    let killed_unix = unix_ms();
    let killed = Instant::now();
    a.process.kill();
    eprintln!("cluster: run 2: node A killed (SIGKILL)");
    let lease_s: f64 = LEASE_SWEEP.trim_end_matches('s').parse().unwrap_or(2.0);
    let mut timeline = Vec::new();
    let (mut first, mut all, mut kernel_all) = (None, None, None);
    let limit = Duration::from_secs_f64(lease_s + 20.0);
    while killed.elapsed() < limit {
        let m = metrics(lab.node_b_ns);
        let t = killed.elapsed().as_secs_f64();
        let n = bindings(&m);
        timeline.push((t, n as f64));
        if n > 0 && first.is_none() {
            first = Some(t);
        }
        if n >= phones && all.is_none() {
            all = Some(t);
        }
        if value(&m, "regedge_fastpath_bindings", &[]) >= phones && kernel_all.is_none() {
            kernel_all = Some(t);
        }
        if all.is_some() && kernel_all.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = metrics(lab.node_b_ns);
    let delta =
        |name: &str, labels: &[(&str, &str)]| value(&m, name, labels).saturating_sub(value(&before_b, name, labels));
    let lapse = |l: u64| (l as f64 - killed_unix as f64) / 1000.0;
    let sweep = Sweep {
        lease_s,
        lapse_first_s: leases.iter().copied().min().map_or(f64::NAN, lapse),
        lapse_last_s: leases.iter().copied().max().map_or(f64::NAN, lapse),
        first_adopted_s: first,
        all_adopted_s: all,
        kernel_all_s: kernel_all,
        swept: delta("regedge_bindings_adopted_total", &[("how", "swept")]),
        bindings: bindings(&m),
        kernel_entries: value(&m, "regedge_fastpath_bindings", &[]),
        adopt_ok: delta("regedge_store_ops_total", &[("op", "adopt"), ("outcome", "ok")]),
        backend_registers: lab.backend.stats.registers.load(Ordering::Relaxed).saturating_sub(backend_before),
        timeline,
    };
    eprintln!(
        "cluster: run 2: leases ran out {:.2} to {:.2} s after the kill; B had its first binding after {}, all {phones} \
         after {}, in the kernel after {}; swept {}, backend REGISTERs meanwhile {}",
        sweep.lapse_first_s,
        sweep.lapse_last_s,
        fmt_s(sweep.first_adopted_s),
        fmt_s(sweep.all_adopted_s),
        fmt_s(sweep.kernel_all_s),
        sweep.swept,
        sweep.backend_registers
    );
    let problems: Vec<String> =
        b.process.log().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned).collect();
    if let Some(last) = problems.last() {
        lab.note(format!("run 2: node B logged {} warnings or errors; the last: `{last}`", problems.len()));
    }
    drop(a);
    drop(b);
    Ok(sweep)
}

/// Run 3: A dies, B starts on A's address, every phone refreshes at B.
fn run_sighted(lab: &Lab<'_>) -> anyhow::Result<Sighted> {
    let phones = lab.plan.phones;
    let ns = &lab.net.proxy;
    lab.flushall()?;
    let mut a = lab.node(ns, "bench-a", PROXY_IP, PROXY_IF, LEASE_SIGHTED)?;
    eprintln!("cluster: run 3: node A pid {}, lease {LEASE_SIGHTED}", a.pid);
    let registered_s = lab.register_all()?;
    eprintln!("cluster: run 3: {phones} phones registered through node A in {registered_s:.1} s");
    let killed = Instant::now();
    a.process.kill();
    drop(a);
    eprintln!("cluster: run 3: node A killed (SIGKILL); starting node B on its address");
    let b =
        Regedge::start_config(ns, lab.binary, &config("bench-b", PROXY_IP, PROXY_IF, &lab.redis.url(), LEASE_SIGHTED))?;
    let start_s = killed.elapsed().as_secs_f64();
    let ready = wait_until(Duration::from_secs(15), || {
        let m = metrics(ns);
        sample(&m, "regedge_store_up", &[]) == Some(1.0)
            && value(&m, "regedge_store_records_seen", &[]) == phones as u64
            && sample(&m, "regedge_backend_up", &[("backend", "cm1")]) == Some(1.0)
    });
    ensure!(ready, "node B was not ready (store up, {phones} records seen, backend up) within 15 s");
    let ready_s = killed.elapsed().as_secs_f64();
    eprintln!("cluster: run 3: node B pid {} ready {ready_s:.2} s after the kill", b.pid);
    let before = metrics(ns);
    let backend_before = lab.backend.stats.registers.load(Ordering::Relaxed);
    let rate = lab.plan.sighted_rate;
    let deadline = Duration::from_secs(20) + Duration::from_secs_f64(phones as f64 / rate as f64 * 3.0);
    let o = lab.fleet.register_paced(0..phones, rate, Duration::from_secs(1), deadline);
    let mut completions = o.completions_s.clone();
    completions.sort_by(f64::total_cmp);
    let backend_registers = lab.backend.stats.registers.load(Ordering::Relaxed).saturating_sub(backend_before);
    std::thread::sleep(Duration::from_millis(300));
    let m = metrics(ns);
    let delta = |m: &str, before: &str, name: &str, labels: &[(&str, &str)]| {
        value(m, name, labels).saturating_sub(value(before, name, labels))
    };
    // A second round at B: now answered in its kernel.
    lab.fleet.set_kind(Kind::Register);
    let second = {
        let before2 = metrics(ns);
        let window = Duration::from_secs_f64(phones as f64 / rate as f64);
        let r = lab.fleet.run_step(rate, window, 2, Duration::from_millis(300), &AtomicBool::new(false));
        let after2 = metrics(ns);
        Some((r.sent, r.ok, delta(&after2, &before2, "regedge_fastpath_replies_total", &[("kind", "register")])))
    };
    let sighted = Sighted {
        start_s,
        ready_s,
        registered: o.registered,
        all_answered_s: (o.registered == phones).then(|| completions.last().copied().unwrap_or(0.0)),
        send_s: phones as f64 / rate as f64,
        median_s: completions.get(completions.len() / 2).copied().unwrap_or(f64::NAN),
        sent: o.sent,
        retransmissions: o.retransmissions,
        failures: o.unavailable + o.other_failures,
        sighted: delta(&m, &before, "regedge_bindings_adopted_total", &[("how", "sighted")]),
        swept: delta(&m, &before, "regedge_bindings_adopted_total", &[("how", "swept")]),
        bindings: bindings(&m),
        kernel_entries: value(&m, "regedge_fastpath_bindings", &[]),
        backend_registers,
        second,
    };
    eprintln!(
        "cluster: run 3: B started {:.2} s and was ready {:.2} s after the kill; {}/{phones} phones answered 200 at B, \
         all after {} (offered {rate}/s: {:.2} s of sending), sighted {}, swept {}, backend REGISTERs {}; second round: \
         {:?} (sent, 200, in the kernel)",
        sighted.start_s,
        sighted.ready_s,
        sighted.registered,
        fmt_s(sighted.all_answered_s),
        sighted.send_s,
        sighted.sighted,
        sighted.swept,
        sighted.backend_registers,
        sighted.second
    );
    let problems: Vec<String> =
        b.process.log().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(str::to_owned).collect();
    if let Some(last) = problems.last() {
        lab.note(format!("run 3: node B logged {} warnings or errors; the last: `{last}`", problems.len()));
    }
    drop(b);
    Ok(sighted)
}

/// `name{labels} +delta` of every sample of the counters `names` that moved from `before` to `after`.
fn counter_deltas(before: &str, after: &str, names: &[&str]) -> String {
    let samples = |text: &str| -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| names.iter().any(|n| l.starts_with(&format!("{n}{{"))))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_owned(), value.trim().parse::<f64>().ok()? as u64))
            })
            .collect()
    };
    let before = samples(before);
    samples(after)
        .into_iter()
        .filter_map(|(key, v)| {
            let old = before.iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v);
            (v > old).then(|| format!("`{key}` +{}", v - old))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or("not within the window".to_owned(), |s| format!("{s:.2} s"))
}

// ---------------------------------------------------------------------------------------
// report

fn render(plan: &Plan, r: &ClusterResult, command: &str, build: &str, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Cluster: bindings shared through Redis\n");
    let _ = writeln!(
        out,
        "Command: `{command}` (as root; this scenario is part of the report); it took {:.0} s.\n",
        took.as_secs_f64()
    );
    let _ = writeln!(out, "Measured: {build}; store: {}.\n", r.redis_version);
    let _ = writeln!(
        out,
        "Setup: the refresh benchmark's namespaces (phones — proxy — backend, veth pairs) plus one for node B, linked \
         to the backend's. {phones} phones{quick} (AF_PACKET generator, each its own source address and port, \
         Call-ID, AOR); a fake registrar that answers 200 at once (bench/src/fakebackend.rs); redis-server started by \
         the benchmark in the backend namespace (`--save \"\" --appendonly no`), stopped by its PID at the end. Nodes: \
         the release regedge, `workers = {WORKERS}`, XDP native on their veth, `phone_expires = 120`, `backend_expires = 3600`, the same \
         `[cluster] store`, `secret` and backend; node A listens on the phones' side ({PROXY_IP}), node B in its own \
         namespace ({NODE_B_IP}) in run 2 and on A's address after A's death in run 3 (the balancer moving the \
         address). Every run starts with `FLUSHALL` and the phones registering at node A at {REGISTER_RATE}/s.\n",
        phones = r.phones,
        quick = if plan.quick { " (--quick)" } else { "" },
    );

    let _ = writeln!(out, "## 1. Store cost per binding\n");
    match &r.cost {
        Ok(c) => {
            let _ = writeln!(
                out,
                "After {} phones registered through node A (in {:.1} s) and its store queue was empty: every record \
                 (`regedge:b:{{<device>}}`, a hash with `owner`, `lease`, `data`; a TTL until the backend's \
                 registration would run out), and every key of the flow index (`regedge:f:{{<flow>}}`, a string naming \
                 the device, with the same expiry; the store looks a phone up by it when a node misses it), measured \
                 with `MEMORY USAGE <key> SAMPLES 0`; and Redis's `used_memory` (INFO memory) after the bindings were \
                 written minus before, divided by the bindings.\n",
                c.records, c.registered_s
            );
            let _ = writeln!(out, "| measure | value |");
            let _ = writeln!(out, "| --- | ---: |");
            let _ = writeln!(
                out,
                "| binding records; flow index keys; keys in all (`DBSIZE`), of which with a TTL | {}; {}; {}, {} |",
                c.records, c.flow_keys, c.dbsize, c.expires
            );
            let _ = writeln!(
                out,
                "| `MEMORY USAGE` per record: mean (min / max) | {:.0} B ({} / {}) |",
                c.usage_mean, c.usage_min, c.usage_max
            );
            let _ = writeln!(
                out,
                "| `MEMORY USAGE` per flow index key, mean; record + flow key | {:.0} B; {:.0} B |",
                c.flow_usage_mean,
                c.usage_mean + c.flow_usage_mean
            );
            let _ =
                writeln!(out, "| `used_memory` growth per binding (all keys) | {:.0} B |", c.used_memory_per_record);
            let _ = writeln!(out, "| `data` field (the binding as JSON), mean | {:.0} B |", c.data_mean);
            let _ = writeln!(out, "| key length | {} B |", c.key_len);
            let _ = writeln!(
                out,
                "| hash encoding (`OBJECT ENCODING`) | {} (the `data` field is longer than `hash-max-listpack-value`, 64 \
                 by default) |",
                c.encoding
            );
            let _ = writeln!(
                out,
                "\n`used_memory` counts what `MEMORY USAGE` leaves out: the keyspace's and the expires table's \
                 entries and their growth; a million bindings take about {:.2} GiB of Redis memory at this figure.\n",
                c.used_memory_per_record * 1e6 / (1u64 << 30) as f64
            );
        }
        Err(e) => {
            let _ = writeln!(out, "Failed: {e}\n");
        }
    }

    let _ = writeln!(out, "## 2. Writes per second the store thread sustains\n");
    let _ = writeln!(
        out,
        "Node A (lease {LEASE_WRITES}, renewed every third of it: a renewal round that falls in a step is listed \
         below with the other counters) holding the {} phones; the \
         generator refreshes them round-robin, open loop, at each offered rate for {:.0} s (2 sender threads). The XDP \
         program answers the refreshes; each one it answered comes back through the `ABSORBED` ring and moves the \
         binding on, which the registry journals, so every absorbed refresh asks for a write of its record; the \
         store thread coalesces what arrived since its last flush into one write per binding (EVALSHA of the put \
         script and a SET of the flow index key, pipelined). *puts/s* = `regedge_store_ops_total{{op=\"put\",outcome=\"ok\"}}` over \
         /metrics samples 50 ms apart inside the send window; *until settled* = puts from the step's start until the \
         counter stood still for 200 ms; CPU = /proc/PID/task of the `regedge-store` thread, the whole regedge \
         process and redis-server over the send window (1.0 = one CPU). `regedge_store_queue_depth` counts the \
         records still waiting after a flush (the outage queue): the journal's backlog between flushes is not in it. \
         *machine busy* = CPUs of the whole machine not idle during the send window (/proc/stat): the generator, the \
         kernel's answers (softirq), regedge, redis-server and whatever else runs here share them. *CPU µs per \
         write* = CPU time of the store thread and of redis-server from the step's start until the writes settled, \
         over the records written in that time.\n",
        r.phones,
        plan.step.as_secs_f64()
    );
    match &r.writes {
        Ok(steps) => {
            let _ = writeln!(
                out,
                "| offered refreshes/s | sent | answered 200 (in the kernel) | puts ok while sending | puts/s | puts \
                 until settled (s) | put errors | max queue depth | store thread CPU | regedge CPU | redis-server CPU \
                 | redis commands/s | CPU µs per write: store thread / redis-server | machine busy (CPUs of {}) |",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
            let _ = writeln!(
                out,
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for s in steps {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ({}) | {} | {:.0} | {} ({:.1}) | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} / {:.1} | {:.2} |",
                    s.offered,
                    s.sent,
                    s.answered,
                    s.kernel_answers,
                    s.puts_during,
                    s.put_rate,
                    s.puts_total,
                    s.settled_s,
                    s.put_errors,
                    s.max_queue,
                    s.store_cpu,
                    s.regedge_cpu,
                    s.redis_cpu,
                    s.redis_commands_rate,
                    s.store_us_per_put,
                    s.redis_us_per_put,
                    s.machine_busy
                );
            }
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let busy: Vec<&WriteStep> = steps.iter().filter(|s| s.machine_busy >= 0.9 * cpus).collect();
            if !busy.is_empty() {
                let list =
                    |f: fn(&WriteStep) -> String, sep: &str| busy.iter().map(|s| f(s)).collect::<Vec<_>>().join(sep);
                let coalesced = busy.iter().all(|s| s.puts_total < s.answered);
                let _ = writeln!(
                    out,
                    "\nReading: the machine's {cpus:.0} CPUs were (nearly) all busy during the step{} at {}/s offered \
                     (the generator's sender and receiver threads, the XDP answers in softirq, and other work on this \
                     machine): record writes went {} while the store thread used {} of a CPU and redis-server {}.{} \
                     The measured rates are what this shared machine gave; the CPU per write is the figure that \
                     carries to another machine.",
                    if busy.len() > 1 { "s" } else { "" },
                    list(|s| s.offered.to_string(), ", "),
                    list(|s| format!("{:.0}/s at {}/s offered", s.put_rate, s.offered), ", "),
                    list(|s| format!("{:.2}", s.store_cpu), " / "),
                    list(|s| format!("{:.2}", s.redis_cpu), " / "),
                    if coalesced {
                        " Neither was short of work — bindings were refreshed again before their records were written \
                         (fewer writes than refreshes answered) — they were short of CPU time."
                    } else {
                        ""
                    },
                );
            }
            let _ = writeln!(out, "\nOther counters of node A that moved during each step (to the settled point):\n");
            for s in steps {
                let mut moved = s.other_counters.clone();
                if s.renews > 0 {
                    let renews = format!("`regedge_store_ops_total{{op=\"renew\",outcome=\"ok\"}}` +{}", s.renews);
                    moved = if moved.is_empty() { renews } else { format!("{moved}, {renews}") };
                }
                let moved = if moved.is_empty() { "none" } else { moved.as_str() };
                let _ = writeln!(out, "- {}/s: {moved}", s.offered);
            }
            if let Some(best) = steps.iter().max_by(|a, b| a.put_rate.total_cmp(&b.put_rate)) {
                let _ = writeln!(
                    out,
                    "\nHighest sustained: {:.0} record writes per second at {}/s offered ({:.2} record writes per \
                     refresh answered, from the step's start until the writes settled; the rest were coalesced: the \
                     same binding refreshed again before its record was written).\n",
                    best.put_rate,
                    best.offered,
                    best.puts_total as f64 / best.answered.max(1) as f64
                );
                let per = best.store_us_per_put + best.redis_us_per_put;
                if per > 0.0 {
                    let _ = writeln!(
                        out,
                        "CPU per record written at that step: {:.1} µs of the store thread, {:.1} µs of redis-server \
                         (from the step's start until the writes settled, over the puts in that time). The thread \
                         waits for each pipeline's answer before the next, so with a CPU each it could write about \
                         {:.0} records per second (1 s / the sum): an estimate, beside the measured rate above, which \
                         is what this load asked for and got.\n",
                        best.store_us_per_put,
                        best.redis_us_per_put,
                        1e6 / per
                    );
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Failed: {e}\n");
        }
    }

    let _ = writeln!(out, "## 3. Time for a node to adopt {} phones\n", r.phones);
    let _ = writeln!(out, "### By sweeping (node A killed, node B running)\n");
    match &r.sweep {
        Ok(s) => {
            let _ = writeln!(
                out,
                "Both nodes with `lease = \"{LEASE_SWEEP}\"` (renewed every third of it, scanned every third of it); \
                 node B running in its own namespace, no phone sending to it; node A holding the {} phones (every \
                 record A's, B's directory holding them all). Node A killed with SIGKILL; node B's /metrics read \
                 every 20 ms. The leases A last wrote, read from the store just before the kill, ran out {:.2} to \
                 {:.2} s after it: that much of the time is the lease, and nobody may adopt before it.\n",
                r.phones, s.lapse_first_s, s.lapse_last_s
            );
            let _ = writeln!(out, "| measure | value |");
            let _ = writeln!(out, "| --- | ---: |");
            let _ = writeln!(
                out,
                "| kill → the first lease ran out / the last | {:.2} s / {:.2} s |",
                s.lapse_first_s, s.lapse_last_s
            );
            let _ = writeln!(out, "| kill → B's first adopted binding | {} |", fmt_s(s.first_adopted_s));
            let _ = writeln!(out, "| kill → B's `regedge_bindings` = {} | {} |", r.phones, fmt_s(s.all_adopted_s));
            let _ = writeln!(out, "| kill → B's kernel entries = {} | {} |", r.phones, fmt_s(s.kernel_all_s));
            if let Some(all) = s.all_adopted_s {
                let _ = writeln!(
                    out,
                    "| of which after the last lease ran out (scan, adoption, loading) | {:.2} s |",
                    all - s.lapse_last_s
                );
            }
            let _ = writeln!(
                out,
                "| `regedge_bindings_adopted_total{{how=\"swept\"}}` at B; `adopt` ops ok | {}; {} |",
                s.swept, s.adopt_ok
            );
            let _ = writeln!(out, "| B's bindings; kernel entries at the end | {}; {} |", s.bindings, s.kernel_entries);
            let _ = writeln!(out, "| REGISTERs the backend received meanwhile | {} |", s.backend_registers);
            let file = "cluster-swept.svg";
            let series = [
                crate::plot::Series { name: "node B's regedge_bindings".to_owned(), points: s.timeline.clone() },
                crate::plot::Series {
                    name: "the last lease A wrote ran out".to_owned(),
                    points: vec![(s.lapse_last_s, 0.0), (s.lapse_last_s, r.phones as f64)],
                },
            ];
            match crate::plot::lines(
                file,
                &format!("Adoption by sweeping: node B's bindings after node A's kill (lease {LEASE_SWEEP})"),
                "seconds since node A was killed",
                "bindings at node B",
                &series,
                false,
            ) {
                Ok(()) => {
                    let _ = writeln!(out, "\n![node B's bindings after the kill]({file})");
                }
                Err(e) => {
                    let _ = writeln!(out, "\nPlot not drawn: {e:#}");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Failed: {e}\n");
        }
    }
    let _ = writeln!(out, "\n### On sight (node A killed, node B started on its address, every phone refreshes)\n");
    match &r.sighted {
        Ok(s) => {
            let _ = writeln!(
                out,
                "Both nodes with `lease = \"{LEASE_SIGHTED}\"` (nothing is swept during the run); node A holding the \
                 {phones} phones, killed with SIGKILL; node B then started in the proxy namespace on A's address \
                 (the XDP program of A went with its process). When B's store was up with every record in its \
                 directory, every phone sent its next refresh (the next CSeq, the same Call-ID) at {rate}/s ({:.2} s \
                 of sending), retransmitting after 1 s without an answer. B has no binding for them: each REGISTER \
                 reaches userspace, which adopts the record found in its directory, answers 200 and writes the kernel \
                 entry, sending nothing upstream.\n",
                s.send_s,
                phones = r.phones,
                rate = plan.sighted_rate
            );
            let _ = writeln!(out, "| measure | value |");
            let _ = writeln!(out, "| --- | ---: |");
            let _ = writeln!(out, "| kill → B's /metrics answers | {:.2} s |", s.start_s);
            let _ = writeln!(
                out,
                "| kill → B ready (store up, {} records in its directory) | {:.2} s |",
                r.phones, s.ready_s
            );
            let _ = writeln!(
                out,
                "| first refresh → every phone had its 200 at B (median phone) | {} ({:.2} s) |",
                fmt_s(s.all_answered_s),
                s.median_s
            );
            let _ = writeln!(
                out,
                "| phones answered 200; REGISTERs sent (retransmissions); failures | {}; {} ({}); {} |",
                s.registered, s.sent, s.retransmissions, s.failures
            );
            let _ = writeln!(
                out,
                "| `regedge_bindings_adopted_total{{how=\"sighted\"}}` (swept) at B | {} ({}) |",
                s.sighted, s.swept
            );
            let _ = writeln!(out, "| B's bindings; kernel entries | {}; {} |", s.bindings, s.kernel_entries);
            let _ = writeln!(out, "| REGISTERs the backend received during the refreshes | {} |", s.backend_registers);
            if let Some((sent, ok, kernel)) = s.second {
                let _ = writeln!(
                    out,
                    "| the next round at B: refreshes sent; answered 200; answered by B's XDP program | {sent}; {ok}; \
                     {kernel} |"
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Failed: {e}\n");
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "\n- note: {n}");
    }
    out
}
