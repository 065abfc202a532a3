//! A scale-out lab (issue 11): two regedge nodes behind one shared address, a direct
//! server return load balancer, a Kamailio registrar and a redis-server binding store.
//!
//! Five namespaces, joined by veth pairs through the balancer, which also routes:
//!
//! ```text
//!  phones 10.98.1.2 ─── 10.98.1.1 ┐
//!                                  lb ── 10.98.2.1 ─── 10.98.2.2 node1 (+ VIP on lo)
//!                                  │ ─── 10.98.3.1 ─── 10.98.3.2 node2 (+ VIP on lo)
//!                                  └──── 10.98.4.1 ─── 10.98.4.2 cm (Kamailio :5060, redis :6379)
//! ```
//!
//! With [`LabOpts::redis_cluster`], the store is a Redis Cluster instead: three masters
//! on 10.98.4.2:7001-7003 (no replicas), and every node's `[cluster] store` lists them.
//!
//! The shared address (VIP) 10.98.0.100 sits on each node's loopback. In `lb`, an
//! nftables prerouting rule marks every packet for the VIP by a hash of its source
//! address and port (`jhash ip saddr . th sport mod 2 seed ... map { 0 : 1, 1 : 2 }`),
//! and `ip rule fwmark N table 10N` routes it to node N. Nodes answer from the VIP
//! directly; their answers cross `lb` as an ordinary router (no NAT). Removing a node
//! rewrites the map so that every hash value goes to the survivors, as a health-checking
//! balancer would. Named counters (`to_n1`, `to_n2`) count the packets sent to each
//! node, which [`ClusterLab::node_for`] uses to learn where a source port lands.
//!
//! The nodes reach Kamailio and the store from their own addresses (listed first in
//! `[sip] listen`); the XDP program is attached in generic mode to each node's veth.
//!
//! Labs in one test process run one at a time (a process-wide lock), since every lab
//! uses the same addresses and several at once would overload small machines.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    admin::Admin,
    kamailio::{Kamailio, KamailioOpts},
    netns::NetNs,
    process::{MetricsText, Regedge, TempDir, scrape},
    redis::{RedisCluster, RedisServer},
    sipp::{FleetOpts, Sipp},
};

/// The shared address, on every node's loopback.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 100);
pub const PHONE_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 1, 2);
pub const CM_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 4, 2);
pub const SIP_PORT: u16 = 5060;
pub const STORE_PORT: u16 = 6379;
/// The masters of the Redis Cluster store ([`LabOpts::redis_cluster`]).
pub const CLUSTER_STORE_PORTS: [u16; 3] = [7001, 7002, 7003];
pub const METRICS_PORT: u16 = 9100;
pub const ADMIN_PORT: u16 = 9101;
/// Each node's veth toward the balancer (where XDP attaches).
pub const NODE_IF: &str = "rgnl0";
/// The nodes' shared flow-token secret.
pub const SECRET: &str = "cluster-lab-secret-5f0c2a9e71d4";
/// The store's binding records: one Redis hash per binding.
pub const RECORDS: &str = "regedge:b:*";
/// The number of nodes the lab builds.
pub const NODES: usize = 2;
const TABLE: &str = "rglb";
const CHAIN: &str = "pre";
const SEED: &str = "0x5eed";

static SERIAL: Mutex<()> = Mutex::new(());

/// How a lab is set up.
#[derive(Clone, Debug)]
pub struct LabOpts {
    /// Start redis-server and give the nodes a `[cluster]` section; `false`: independent
    /// nodes (no store), for checking the plumbing.
    pub store: bool,
    /// With `store`: the store is a Redis Cluster of three masters
    /// ([`CLUSTER_STORE_PORTS`]), listed in `[cluster] store`, instead of one redis-server.
    pub redis_cluster: bool,
    /// `[cluster] lease`.
    pub lease: &'static str,
    /// `[registration] phone_expires`.
    pub phone_expires: u32,
    /// `[registration] backend_expires`.
    pub backend_expires: u32,
    /// `[node] shutdown_timeout`.
    pub shutdown_timeout: &'static str,
    /// XDP in generic mode on each node's veth; else `mode = "off"`.
    pub xdp: bool,
    /// Kamailio's worker processes.
    pub kamailio_children: u32,
}

impl Default for LabOpts {
    fn default() -> Self {
        Self {
            store: true,
            redis_cluster: false,
            lease: "6s",
            phone_expires: 10,
            backend_expires: 600,
            shutdown_timeout: "10s",
            xdp: true,
            kamailio_children: 2,
        }
    }
}

/// The lab. Drop order: the nodes (SIGTERM), Kamailio, redis-server (or the Redis Cluster's
/// servers), the scratch dir, the namespaces, then the lock that lets the next lab start.
pub struct ClusterLab {
    pub nodes: Vec<Option<Regedge>>,
    pub kamailio: Kamailio,
    pub redis: Option<RedisServer>,
    /// The store when it is a Redis Cluster ([`LabOpts::redis_cluster`]).
    pub redis_cluster: Option<RedisCluster>,
    pub dir: TempDir,
    pub opts: LabOpts,
    pub test: String,
    pub phones: NetNs,
    pub lb: NetNs,
    pub node_namespaces: Vec<NetNs>,
    /// Where Kamailio and redis-server run.
    pub cm: NetNs,
    _serial: MutexGuard<'static, ()>,
}

impl ClusterLab {
    /// The lab with both nodes started.
    pub fn start(test: &str, opts: LabOpts) -> Self {
        let mut lab = Self::new(test, opts);
        for i in 0..NODES {
            lab.start_node(i);
        }
        lab
    }

    /// The namespaces, the balancer, Kamailio and (with `opts.store`) redis-server or the
    /// Redis Cluster; no node started (see [`ClusterLab::start_node`]).
    pub fn new(test: &str, opts: LabOpts) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let phones = NetNs::new("phones");
        let lb = NetNs::new("lb");
        let node_namespaces: Vec<NetNs> = (0..NODES).map(|i| NetNs::new(&format!("node{}", i + 1))).collect();
        let cm = NetNs::new("cm");
        phones.link("rgph0", &PHONE_IP.to_string(), &lb, "rglp0", "10.98.1.1", 24);
        phones.route("default", "10.98.1.1");
        for (i, ns) in node_namespaces.iter().enumerate() {
            let lb_side = Self::gateway(i);
            lb.link(&format!("rgl{}", i + 1), &lb_side.to_string(), ns, NODE_IF, &Self::node_ip(i).to_string(), 24);
            ns.route("default", &lb_side.to_string());
            ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        }
        lb.link("rglc0", "10.98.4.1", &cm, "rgcm0", &CM_IP.to_string(), 24);
        cm.route("default", "10.98.4.1");
        sysctl(&lb, "net.ipv4.ip_forward", "1");
        let lb_ifs: Vec<String> =
            ["rglp0", "rglc0"].into_iter().map(str::to_owned).chain((1..=NODES).map(|n| format!("rgl{n}"))).collect();
        rp_filter_off(&lb, &lb_ifs);
        for ns in &node_namespaces {
            rp_filter_off(ns, &[NODE_IF.to_owned(), "lo".to_owned()]);
        }
        let dir = TempDir::new(test);
        let rules = format!(
            "table ip {TABLE} {{\n{}  chain {CHAIN} {{\n    type filter hook prerouting priority mangle; policy accept;\n  }}\n}}\n",
            (1..=NODES).map(|n| format!("  counter to_n{n} {{}}\n")).collect::<String>()
        );
        nft(&lb, &dir, &rules);
        for n in 1..=NODES {
            let table = (100 + n).to_string();
            lb.ip(&["rule", "add", "fwmark", &n.to_string(), "table", &table]);
            lb.ip(&["route", "add", &format!("{VIP}/32"), "via", &Self::node_ip(n - 1).to_string(), "table", &table]);
        }
        let kamailio =
            Kamailio::start(&cm, CM_IP, KamailioOpts { children: opts.kamailio_children, ..KamailioOpts::default() });
        let redis = (opts.store && !opts.redis_cluster)
            .then(|| RedisServer::start(&cm, SocketAddr::new(CM_IP.into(), STORE_PORT), &format!("{test}-redis")));
        let redis_cluster = (opts.store && opts.redis_cluster)
            .then(|| RedisCluster::start(&cm, CM_IP.into(), &CLUSTER_STORE_PORTS, &format!("{test}-redis")));
        let lab = Self {
            nodes: (0..NODES).map(|_| None).collect(),
            kamailio,
            redis,
            redis_cluster,
            dir,
            opts,
            test: test.to_owned(),
            phones,
            lb,
            node_namespaces,
            cm,
            _serial: serial,
        };
        lab.restore_nodes();
        lab
    }

    /// Node `i`'s own address (0-based: node1 is 10.98.2.2).
    pub fn node_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 98, i as u8 + 2, 2)
    }

    /// The balancer's address toward node `i`.
    fn gateway(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 98, i as u8 + 2, 1)
    }

    pub fn node_ns(&self, i: usize) -> &NetNs {
        &self.node_namespaces[i]
    }

    /// The shared SIP address.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(VIP.into(), SIP_PORT)
    }

    pub fn metrics_addr(i: usize) -> SocketAddr {
        SocketAddr::new(Self::node_ip(i).into(), METRICS_PORT)
    }

    /// Node `i`'s admin API: on its namespace's loopback (reached from inside it).
    pub fn admin_addr(_i: usize) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ADMIN_PORT)
    }

    /// Node `i`'s admin API (no token).
    pub fn admin(&self, i: usize) -> Admin<'_> {
        Admin { ns: self.node_ns(i), addr: Self::admin_addr(i), token: None }
    }

    /// The store.
    pub fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("the lab has a store")
    }

    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("the lab has a store")
    }

    /// The Redis Cluster store ([`LabOpts::redis_cluster`]).
    pub fn redis_cluster(&self) -> &RedisCluster {
        self.redis_cluster.as_ref().expect("the lab has a Redis Cluster store")
    }

    /// The binding records in the store (on all masters of a Redis Cluster); `None` when
    /// it (or one master) does not answer.
    pub fn records(&self) -> Option<u64> {
        match &self.redis_cluster {
            Some(cluster) => cluster.count_keys(RECORDS),
            None => self.redis().count_keys(RECORDS),
        }
    }

    /// `[cluster] store`: the URL of the redis-server, or the list of the Redis Cluster's masters.
    fn store_setting(&self) -> String {
        match &self.redis_cluster {
            Some(cluster) => {
                format!("[{}]", cluster.urls().iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "))
            }
            None => format!("\"redis://{CM_IP}:{STORE_PORT}\""),
        }
    }

    /// Node `i`'s config.
    pub fn config_text(&self, i: usize) -> String {
        let own = Self::node_ip(i);
        let state_dir = self.dir.0.join(format!("state-n{}", i + 1));
        std::fs::create_dir_all(&state_dir).expect("create state dir");
        let fastpath = if self.opts.xdp {
            format!("[fastpath]\ninterfaces = [\"{NODE_IF}\"]\nmode = \"generic\"\npin_path = \"\"\n")
        } else {
            "[fastpath]\nmode = \"off\"\n".to_owned()
        };
        let cluster = if self.opts.store {
            format!(
                "[cluster]\nstore = {}\nadvertise = \"{}\"\nlease = \"{}\"\nsecret = \"{SECRET}\"\n\n",
                self.store_setting(),
                self.vip(),
                self.opts.lease
            )
        } else {
            String::new()
        };
        format!(
            "[node]\nname = \"n{}\"\nworkers = 2\nstate_dir = \"{}\"\nshutdown_timeout = \"{}\"\n\n\
             [sip]\nlisten = [\"{own}:{SIP_PORT}\", \"{}\"]\n\n{fastpath}\n\
             [registration]\nphone_expires = {}\nbackend_expires = {}\nexpires_jitter = 0.1\n\n\
             [health]\ninterval = \"1s\"\ntimeout = \"500ms\"\ndown_after = 2\nup_after = 2\n\n\
             [metrics]\nlisten = \"{}\"\n\n[admin]\nlisten = \"{}\"\n\n{cluster}\
             [routing]\ndefault_group = \"default\"\n\n\
             [[backends]]\nname = \"cm\"\naddress = \"{}\"\nmax_register_rate = 2000\n\n\
             [[groups]]\nname = \"default\"\nbackends = [\"cm\"]\n",
            i + 1,
            state_dir.display(),
            self.opts.shutdown_timeout,
            self.vip(),
            self.opts.phone_expires,
            self.opts.backend_expires,
            Self::metrics_addr(i),
            Self::admin_addr(i),
            self.kamailio.sip_addr(),
        )
    }

    /// Writes node `i`'s config and starts it (again); returns once /metrics answers.
    pub fn start_node(&mut self, i: usize) {
        if let Some(mut old) = self.nodes[i].take() {
            old.terminate(Duration::from_secs(15));
        }
        let config = self.dir.write(&format!("n{}.toml", i + 1), &self.config_text(i));
        let log = self.dir.0.join(format!("n{}.log", i + 1));
        // Keep the logs of earlier runs of this node.
        if log.exists() {
            let _ = std::fs::rename(&log, self.dir.0.join(format!("n{}.{}.log", i + 1, std::process::id())));
        }
        let mut regedge = Regedge::start(Some(self.node_ns(i)), &config, log);
        if let Err(err) = regedge.wait_ready(Self::metrics_addr(i), Some(self.node_ns(i)), Duration::from_secs(20)) {
            panic!("{}: node n{}: {err}", self.test, i + 1);
        }
        self.nodes[i] = Some(regedge);
    }

    pub fn node(&mut self, i: usize) -> &mut Regedge {
        self.nodes[i].as_mut().unwrap_or_else(|| panic!("node n{} does not run", i + 1))
    }

    /// SIGKILL to node `i` (a crash); waits for its exit.
    pub fn kill_node(&mut self, i: usize) {
        let status = self.node(i).kill();
        assert!(status.is_some(), "node n{} did not die of SIGKILL", i + 1);
    }

    /// SIGTERM to node `i` (a drain when it has a store); its exit status, `None` when it
    /// did not exit within `timeout`.
    pub fn terminate_node(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.node(i).terminate(timeout)
    }

    /// Whether an XDP program is attached to node `i`'s veth (`ip link` says `xdp`): it
    /// stays after a SIGKILL when regedge's link outlives the process.
    pub fn xdp_attached(&self, i: usize) -> bool {
        let out = self.node_ns(i).command("ip").args(["link", "show", NODE_IF]).output().expect("run ip link");
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }

    /// The end of node `i`'s log (all of it when it ran once).
    pub fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.dir.0.join(format!("n{}.log", i + 1))).unwrap_or_default();
        let skip = text.chars().count().saturating_sub(6000);
        text.chars().skip(skip).collect()
    }

    /// The end of every node's log, for assertion messages.
    pub fn logs(&self) -> String {
        (0..NODES).map(|i| format!("--- node n{} log (end):\n{}\n", i + 1, self.log(i))).collect()
    }

    /// Node `i`'s /metrics; `None` when it does not answer.
    pub fn try_metrics(&self, i: usize) -> Option<MetricsText> {
        scrape(Self::metrics_addr(i), Some(self.node_ns(i))).ok().map(MetricsText)
    }

    /// Node `i`'s /metrics; panics when it does not answer.
    pub fn metrics(&self, i: usize) -> MetricsText {
        self.try_metrics(i)
            .unwrap_or_else(|| panic!("{}: node n{} /metrics does not answer\n{}", self.test, i + 1, self.logs()))
    }

    /// Node `i`'s SIP bindings (`regedge_bindings{protocol="sip"}`), 0 when it does not answer.
    pub fn bindings(&self, i: usize) -> u64 {
        self.try_metrics(i).and_then(|m| m.get("regedge_bindings", &[("protocol", "sip")])).unwrap_or(0)
    }

    /// The bindings of the nodes that run.
    pub fn total_bindings(&self) -> u64 {
        (0..NODES).filter(|&i| self.nodes[i].is_some()).map(|i| self.bindings(i)).sum()
    }

    /// One sample of node `i`, 0 when it (or the node) is missing.
    pub fn sample(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.try_metrics(i).and_then(|m| m.get(name, labels)).unwrap_or(0)
    }

    /// Kamailio's count of REGISTER requests received.
    pub fn kamailio_registers(&self) -> u64 {
        self.kamailio.stat("core:rcv_requests_register")
    }

    /// Writes the balancer's rule: hash value `v` goes to node `targets[v]` (0-based).
    fn set_map(&self, targets: [usize; 2]) {
        let rules = format!(
            "flush chain ip {TABLE} {CHAIN}\n\
             add rule ip {TABLE} {CHAIN} ip daddr {VIP} meta mark set jhash ip saddr . th sport mod 2 seed {SEED} \
             map {{ 0 : {}, 1 : {} }}\n{}",
            targets[0] + 1,
            targets[1] + 1,
            (1..=NODES)
                .map(|n| format!("add rule ip {TABLE} {CHAIN} ip daddr {VIP} meta mark {n} counter name \"to_n{n}\"\n"))
                .collect::<String>()
        );
        nft(&self.lb, &self.dir, &rules);
    }

    /// The balancer stops sending to node `i` (0-based): every hash value maps to the other.
    pub fn remove_node(&self, i: usize) {
        let survivor = (i + 1) % NODES;
        self.set_map([survivor, survivor]);
    }

    /// The balancer sends to both nodes again, by the hash.
    pub fn restore_nodes(&self) {
        self.set_map([0, 1]);
    }

    /// The packets the balancer sent to each node so far.
    pub fn balancer_counts(&self) -> [u64; NODES] {
        let mut counts = [0; NODES];
        for (n, count) in counts.iter_mut().enumerate() {
            let out = self
                .lb
                .command("nft")
                .args(["list", "counter", "ip", TABLE, &format!("to_n{}", n + 1)])
                .output()
                .expect("run nft");
            assert!(out.status.success(), "nft list counter: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            *count = text
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no packet count in {text}"));
        }
        counts
    }

    /// Which node (0-based) the balancer sends packets from the phones' `port` to: one
    /// probe datagram to the VIP's port 9 (nothing listens there), seen in the counters.
    /// Only meaningful while no other traffic goes to the VIP.
    pub fn node_for(&self, port: u16) -> usize {
        let socket = self
            .phones
            .run(|| UdpSocket::bind((PHONE_IP, port)))
            .unwrap_or_else(|e| panic!("bind {PHONE_IP}:{port} in the phones' namespace: {e}"));
        for _attempt in 0..3 {
            let before = self.balancer_counts();
            socket.send_to(b"probe", (VIP, 9)).expect("send a probe to the VIP");
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let after = self.balancer_counts();
                let grew: Vec<usize> = (0..NODES).filter(|&n| after[n] > before[n]).collect();
                if let [n] = grew.as_slice() {
                    return *n;
                }
                if grew.len() > 1 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("{}: could not tell which node the balancer sends port {port} to", self.test);
    }

    /// `per_node` source ports for each node, from `first` up: `ports[n]` land on node n.
    pub fn ports_by_node(&self, per_node: usize, first: u16) -> [Vec<u16>; NODES] {
        let mut ports: [Vec<u16>; NODES] = Default::default();
        let mut port = first;
        while ports.iter().any(|p| p.len() < per_node) {
            assert!(port < first + 2000, "{}: the hash sends too few ports to one node", self.test);
            let n = self.node_for(port);
            if ports[n].len() < per_node {
                ports[n].push(port);
            }
            port += 1;
        }
        ports
    }

    /// A sipp fleet from the phones' namespace to the VIP.
    pub fn spawn_fleet(&self, opts: &FleetOpts) -> Sipp {
        Sipp::spawn_fleet(&self.phones, IpAddr::V4(PHONE_IP), self.vip(), opts)
    }

    /// One fleet per port of `ports`, `per_port` phones each (their own source port, so
    /// the balancer spreads them by port), numbered from `base.first_user` on.
    pub fn spawn_fleets(&self, ports: &[u16], per_port: u32, base: &FleetOpts) -> Vec<Sipp> {
        ports
            .iter()
            .enumerate()
            .map(|(k, &port)| {
                let opts = FleetOpts {
                    users: per_port,
                    first_user: base.first_user + k as u32 * per_port,
                    local_port: port,
                    ..base.clone()
                };
                self.spawn_fleet(&opts)
            })
            .collect()
    }

    /// Polls `check` every 100 ms until it holds or `timeout` passes; how long it took.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !check() {
            if started.elapsed() > timeout {
                panic!("{}: {what}: not after {timeout:?}\n{}", self.test, self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    }
}

/// `sysctl -w key=value` inside `ns`.
fn sysctl(ns: &NetNs, key: &str, value: &str) {
    let out = ns.command("sysctl").args(["-qw", &format!("{key}={value}")]).output().expect("run sysctl");
    assert!(out.status.success(), "sysctl {key}={value} in {}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
}

/// Reverse-path filtering off (all, default and `interfaces`): replies from the VIP
/// cross the balancer, which has no route back to it.
fn rp_filter_off(ns: &NetNs, interfaces: &[String]) {
    for name in ["all", "default"].into_iter().map(str::to_owned).chain(interfaces.iter().cloned()) {
        sysctl(ns, &format!("net.ipv4.conf.{name}.rp_filter"), "0");
    }
}

/// Loads `rules` with `nft -f` inside `ns` (one transaction).
fn nft(ns: &NetNs, dir: &TempDir, rules: &str) {
    let path = dir.write("balancer.nft", rules);
    let out = ns.command("nft").arg("-f").arg(&path).output().expect("run nft");
    assert!(out.status.success(), "nft -f in {}: {}\n{rules}", ns.name, String::from_utf8_lossy(&out.stderr));
}
