//! A registration-edge lab for operating tests (admin API, reload, shutdown): three
//! namespaces, phones —veth— proxy (regedge) —veth— backends (Kamailio cm1 and cm2 on two
//! addresses of one subnet), as in `e2e_registration`, with regedge's config written
//! from [`EdgeConfig`] and rewritable while it runs.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    admin::Admin,
    kamailio::{Kamailio, KamailioOpts},
    netns::NetNs,
    process::{MetricsText, Regedge, TempDir, scrape},
    sipp::{FleetOpts, Sipp},
};

pub const METRICS: &str = "127.0.0.1:9100";
pub const ADMIN: &str = "127.0.0.1:9101";
/// regedge's phone-side interface (where XDP attaches).
pub const EDGE_IF: &str = "rgpp0";
const SIP_PORT: u16 = 5060;

/// Picks the subnets of one lab: phones 10.222.<n>.0/24, backends 10.223.<n>.0/24.
static SUBNET: AtomicU32 = AtomicU32::new(0);

/// regedge's config in a lab.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// `(name, max_register_rate)`: `cm1` and `cm2` are the lab's two Kamailio.
    pub backends: Vec<(&'static str, u32)>,
    /// The default group's backends, in priority order.
    pub group: Vec<&'static str>,
    pub admin_token: Option<String>,
    pub shutdown_timeout: &'static str,
    pub phone_expires: u32,
    /// XDP in generic mode on the phone-side veth, nothing pinned; else `mode = "off"`.
    pub xdp: bool,
    /// Both Kamailio require digest authentication with this password
    /// ([`KamailioOpts::with_auth`]); `None`: none.
    pub backend_password: Option<String>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            backends: vec![("cm1", 2000), ("cm2", 2000)],
            group: vec!["cm1", "cm2"],
            admin_token: None,
            shutdown_timeout: "5s",
            phone_expires: 30,
            xdp: false,
            backend_password: None,
        }
    }
}

/// The namespaces, both registrars and (once started) regedge. Drop order: regedge, the
/// registrars, the scratch dir, then the namespaces.
pub struct EdgeLab {
    pub regedge: Option<Regedge>,
    pub cm1: Kamailio,
    pub cm2: Kamailio,
    pub dir: TempDir,
    pub phones: NetNs,
    pub proxy: NetNs,
    pub backends: NetNs,
    pub phone_ip: Ipv4Addr,
    /// regedge's SIP address (phone side).
    pub edge: SocketAddr,
    pub config_path: PathBuf,
    pub token: Option<String>,
}

impl EdgeLab {
    /// The namespaces and both registrars, regedge started with `config`.
    pub fn start(test: &str, config: &EdgeConfig) -> Self {
        let n = (SUBNET.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let phone_ip = Ipv4Addr::new(10, 222, n, 2);
        let edge_ip = Ipv4Addr::new(10, 222, n, 1);
        let edge_backend_side = Ipv4Addr::new(10, 223, n, 1);
        let cm1_ip = Ipv4Addr::new(10, 223, n, 11);
        let cm2_ip = Ipv4Addr::new(10, 223, n, 12);
        let phones = NetNs::new("phones");
        let proxy = NetNs::new("edge");
        let backends = NetNs::new("cms");
        phones.link("rgph0", &phone_ip.to_string(), &proxy, EDGE_IF, &edge_ip.to_string(), 24);
        proxy.link("rgpb0", &edge_backend_side.to_string(), &backends, "rgbk0", &cm1_ip.to_string(), 24);
        backends.ip(&["addr", "add", &format!("{cm2_ip}/24"), "dev", "rgbk0"]);
        // regedge forwards from its phone-side socket: answers come back through it.
        backends.route(&format!("10.222.{n}.0/24"), &edge_backend_side.to_string());
        let opts = KamailioOpts { children: 2, password: config.backend_password.clone(), ..KamailioOpts::default() };
        let cm1 = Kamailio::start(&backends, cm1_ip, opts.clone());
        let cm2 = Kamailio::start(&backends, cm2_ip, opts);
        let dir = TempDir::new(test);
        let config_path = dir.0.join("regedge.toml");
        let edge = SocketAddr::new(edge_ip.into(), SIP_PORT);
        let mut lab = Self {
            regedge: None,
            cm1,
            cm2,
            dir,
            phones,
            proxy,
            backends,
            phone_ip,
            edge,
            config_path,
            token: config.admin_token.clone(),
        };
        lab.write_config(config);
        let mut regedge = Regedge::start(Some(&lab.proxy), &lab.config_path, lab.dir.0.join("regedge.log"));
        if let Err(err) = regedge.wait_ready(METRICS.parse().unwrap(), Some(&lab.proxy), Duration::from_secs(20)) {
            panic!("{test}: {err}");
        }
        lab.regedge = Some(regedge);
        lab
    }

    /// The config text of `config` in this lab.
    pub fn config_text(&self, config: &EdgeConfig) -> String {
        let fastpath = if config.xdp {
            format!("[fastpath]\ninterfaces = [\"{EDGE_IF}\"]\nmode = \"generic\"\npin_path = \"\"\n")
        } else {
            "[fastpath]\nmode = \"off\"\n".to_owned()
        };
        let token = config.admin_token.as_deref().map_or_else(String::new, |t| format!("token = \"{t}\"\n"));
        let mut text = format!(
            "[node]\nname = \"lab\"\nworkers = 2\nstate_dir = \"\"\nshutdown_timeout = \"{}\"\n\n\
             [sip]\nlisten = [\"{}\"]\n\n{fastpath}\n\
             [registration]\nphone_expires = {}\nbackend_expires = 600\nexpires_jitter = 0.1\n\n\
             [health]\ninterval = \"1s\"\ntimeout = \"500ms\"\ndown_after = 2\nup_after = 2\n\n\
             [metrics]\nlisten = \"{METRICS}\"\n\n[admin]\nlisten = \"{ADMIN}\"\n{token}\n\
             [routing]\ndefault_group = \"default\"\n\n",
            config.shutdown_timeout, self.edge, config.phone_expires,
        );
        for (name, rate) in &config.backends {
            let address = match *name {
                "cm1" => self.cm1.sip_addr(),
                "cm2" => self.cm2.sip_addr(),
                other => panic!("the lab has no backend {other}"),
            };
            text.push_str(&format!(
                "[[backends]]\nname = \"{name}\"\naddress = \"{address}\"\nmax_register_rate = {rate}\n\n"
            ));
        }
        let members: Vec<String> = config.group.iter().map(|name| format!("\"{name}\"")).collect();
        text.push_str(&format!("[[groups]]\nname = \"default\"\nbackends = [{}]\n", members.join(", ")));
        text
    }

    /// Writes regedge's config file (read at start and at SIGHUP).
    pub fn write_config(&self, config: &EdgeConfig) {
        std::fs::write(&self.config_path, self.config_text(config)).expect("write regedge.toml");
    }

    pub fn regedge(&mut self) -> &mut Regedge {
        self.regedge.as_mut().expect("regedge runs")
    }

    /// Sends `signal` to regedge.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.regedge.as_ref().expect("regedge runs").pid();
        // SAFETY: signalling our own child by its PID.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0, "kill {pid}");
    }

    pub fn log(&self) -> String {
        let log = self.regedge.as_ref().map(Regedge::log).unwrap_or_default();
        let skip = log.chars().count().saturating_sub(6000);
        log.chars().skip(skip).collect()
    }

    pub fn metrics(&self) -> MetricsText {
        MetricsText(scrape(METRICS.parse().unwrap(), Some(&self.proxy)).expect("scrape /metrics"))
    }

    pub fn admin(&self) -> Admin<'_> {
        Admin { ns: &self.proxy, addr: ADMIN.parse().unwrap(), token: self.token.clone() }
    }

    pub fn spawn_fleet(&self, opts: &FleetOpts) -> Sipp {
        Sipp::spawn_fleet(&self.phones, IpAddr::V4(self.phone_ip), self.edge, opts)
    }

    /// Polls `check` every 100 ms until it holds or `timeout` passes; how long it took.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !check() {
            if started.elapsed() > timeout {
                panic!("{what}: not after {timeout:?}\nregedge log (end):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    }
}
