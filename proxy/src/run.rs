//! `regedge run`: wires config, fast path, event loops, metrics and the admin API
//! together, then serves signals: SIGHUP reloads the config file, SIGINT and SIGTERM shut
//! down.
//!
//! Start-up order, so that a restart loses nothing: config → routing and registrar (with
//! the saved flow-token key) → registry snapshot restored → fast path loaded, adopting the
//! pinned maps and links of the previous run → the pinned `BINDINGS` reconciled with the
//! restored registry (the kernel answered refreshes meanwhile; entries nobody owns are
//! removed) → kernel mirror (rewrites the entry of every binding) → event loops → health
//! checks, metrics, admin API.
//!
//! Reload (SIGHUP): the `--config` file is read and checked again. An invalid one is
//! rejected, each error logged with its file and line as `check-config` prints it, and
//! the running config stays. A valid one takes effect without dropping a binding:
//! backends, groups, rules and the default group (ids stay valid, see `failover`:
//! bindings keep their backend by name, and move at their next refresh when it is gone
//! or no longer their group's choice), `max_register_rate`, `[registration]` timing,
//! `[health]`, `[node] shutdown_timeout` and `[admin] token`. What is bound to sockets,
//! threads, the kernel or the disk (listen addresses, workers, `[fastpath]`, `[sccp]`,
//! the node's name and state_dir, `date_header`) is logged as needing a restart and keeps
//! its running value. `regedge_config_reloads_total{outcome}` counts both outcomes.
//!
//! Shutdown (SIGTERM, SIGINT): `/ready` answers 503 and REGISTERs that would go to a
//! backend are refused (503 with Retry-After); REGISTERs already forwarded get their
//! answers (for up to `transaction_timeout`, at most half the bound); then the loops
//! stop, the last registry snapshot is written, the admin API and metrics stop, and the
//! XDP program is detached, or left attached when pinned. All within `[node]
//! shutdown_timeout`: past it regedge logs what it was still waiting for and exits with
//! status 1.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{
    admin::{self, AdminServer, api::Readiness},
    cluster::{ClusterLink, store::StoreThread},
    config::{BackendConfig, BackendTransport, Config, ConfigErrors, FastpathMode},
    datapath::{AnswerSettings, DatapathError, Fastpath, mirror::MirrorThread, pin, sccp::SccpOffload},
    engine::Engine,
    failover::{Link, Routing},
    health::{HealthChecker, HealthEvent},
    io::workers::{Shared, Workers},
    limits::Limits,
    local_names::{self, LocalNames},
    metrics::{MetricsCollector, MetricsServer, ReloadCounters, ReloadOutcome},
    registrar::{Node, Policy, Registrar},
    registry::Transport,
    sccp::{
        edge::{KeepaliveOffload, SccpEdge, SccpShared},
        session::SessionPolicy,
    },
    sip::stateless::ToTag,
    snapshot::{SnapshotWriter, StateDir},
};

/// How `regedge run` was started.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The config file (`--config`), read again on SIGHUP. `None`: the embedded default
    /// config, which a SIGHUP cannot change.
    pub config_path: Option<PathBuf>,
}

/// Runs with the embedded default or an already loaded config, without a file to reload.
pub fn run(config: Config) -> anyhow::Result<()> {
    run_with(config, RunOptions::default())
}

pub fn run_with(config: Config, options: RunOptions) -> anyhow::Result<()> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let interface_addrs = if config.sip.listen.iter().any(|a| a.ip().is_unspecified()) {
        local_interface_addresses()?
    } else {
        Vec::new()
    };
    // The advertised address is this node's too: requests routed to it name it.
    let our_addresses: Vec<SocketAddr> = config.sip.listen.iter().copied().chain(config.cluster.advertise).collect();
    let names = LocalNames::new(&config.sip.local_names, &our_addresses, &interface_addrs);
    let tag = ToTag::for_node(&config.node.name);

    let workers = match config.node.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let routing = Arc::new(
        Routing::from_config_linked(&config, |backend| link_backend(&config, backend)).context("[[backends]]")?,
    );
    // At the start, slot i is the config's backend i.
    let links: Vec<Link> = routing.live_backends().iter().map(|id| routing.backend(*id).link).collect();
    let state = (!routing.is_empty()).then(|| open_state(&config.node.state_dir)).flatten();
    let limits = Arc::new(Limits::new(&config.limits));
    let cluster = (config.cluster.is_shared() && !routing.is_empty()).then(|| {
        let (journal, journal_rx) = crossbeam_channel::unbounded();
        (ClusterLink::new(&config.node.name, config.cluster.lease), journal, journal_rx)
    });
    let registrar = (!routing.is_empty()).then(|| {
        let backend_facing = links
            .iter()
            .zip(&config.backends)
            .map(|(link, backend)| {
                let transport = match backend.transport {
                    BackendTransport::Udp => Transport::Udp,
                    BackendTransport::Tcp => Transport::Tcp,
                };
                (transport, link.facing)
            })
            .collect();
        // Nodes sharing a secret verify each other's flow tokens.
        let token_key = if config.cluster.secret.is_empty() {
            state.as_ref().map_or_else(crate::snapshot::random_u64, StateDir::token_key)
        } else {
            crate::cluster::token_key_from_secret(&config.cluster.secret)
        };
        let node = Node { to_tag: tag, backend_facing, token_key };
        let registrar = Registrar::new(Arc::clone(&routing), Policy::from(&config.registration), node)
            .with_limits(Arc::clone(&limits))
            .with_advertise(config.cluster.advertise);
        match &cluster {
            Some((link, journal, _)) => registrar.with_cluster(Arc::clone(link), journal.clone()),
            None => registrar,
        }
    });
    if let (Some(state), Some(registrar)) = (&state, &registrar) {
        restore_bindings(state, registrar);
    }
    let answer = AnswerSettings { register: registrar.is_some(), date_header: config.registration.date_header };
    let (mut fastpath, fastpath_readiness) = start_fastpath(&config, &names, tag, answer)?;
    let mirror = match (&mut fastpath, &registrar) {
        (Some(fastpath), Some(registrar)) => Some(start_mirror(fastpath, registrar)?),
        _ => None,
    };
    let shared = Arc::new(Shared::new(Engine::new(names, tag, registrar)).with_limits(Arc::clone(&limits)));
    let (health_tx, health_rx) = crossbeam_channel::unbounded();
    let workers_running = Workers::start(
        &config.sip.listen,
        workers,
        Arc::clone(&shared),
        links.iter().map(|link| link.listener).collect(),
        Some(health_rx),
    )?;
    let waker = workers_running.timekeeper_waker();
    let (sccp_edge, sccp_shared) = start_sccp(&config, &routing, workers, &limits)?.unzip();
    let cluster_link = cluster.as_ref().map(|(link, ..)| Arc::clone(link));
    let store = match cluster {
        Some((link, _, journal_rx)) => {
            let urls = &config.cluster.store;
            Some(StoreThread::start(urls, link, Arc::clone(&shared), journal_rx).context("starting the store thread")?)
        }
        None => None,
    };
    let snapshot = match (state, &shared.engine.registrar) {
        (Some(state), Some(_)) => Some(start_snapshots(state, &shared, mirror.as_ref(), &config.node.name)?),
        _ => None,
    };
    let health_wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let _ = waker.wake();
    });
    let health = HealthChecker::start(&routing, &config.health, health_tx.clone(), waking(&health_wake))
        .context("starting health checks")?;

    let attached = fastpath.as_ref().map_or_else(Vec::new, |f| {
        ["native", "generic"]
            .map(|mode| (mode, f.attached().iter().filter(|(_, m)| m.label() == mode).count() as i64))
            .to_vec()
    });
    let reloads = Arc::new(ReloadCounters::default());
    let collector = MetricsCollector {
        shared: Arc::clone(&shared),
        kernel: fastpath.as_ref().map(Fastpath::counters),
        mirror: mirror.as_ref().map(|m| Arc::clone(&m.stats)),
        sccp: sccp_shared.clone(),
        attached,
        reloads: Arc::clone(&reloads),
        cluster: cluster_link.clone(),
    };
    let metrics = MetricsServer::start(config.metrics.listen, collector)
        .with_context(|| format!("starting the metrics endpoint on {}", config.metrics.listen))?;

    let readiness = Arc::new(NodeReadiness {
        stopping: AtomicBool::new(false),
        sip: Mutex::new(Some(workers_running)),
        sccp: Mutex::new(sccp_edge),
        sccp_configured: !config.sccp.listen.is_empty(),
        fastpath: fastpath_readiness,
        cluster: cluster_link.clone(),
    });
    let admin_node = Arc::new(admin::Node {
        routing: Arc::clone(&routing),
        shared: Arc::clone(&shared),
        readiness: Arc::clone(&readiness) as Arc<dyn Readiness>,
        token: ArcSwap::from_pointee(config.admin.token.clone()),
    });
    let admin = match config.admin.listen {
        Some(listen) => Some(
            AdminServer::start(listen, Arc::clone(&admin_node))
                .with_context(|| format!("starting the admin API on {listen}"))?,
        ),
        None => None,
    };

    tracing::info!(
        node = %config.node.name,
        sip = ?config.sip.listen,
        sccp = ?config.sccp.listen,
        workers,
        backends = routing.live_backends().len(),
        groups = routing.live_groups().len(),
        metrics = %format!("http://{}/metrics", metrics.local_addr),
        admin = %admin.as_ref().map_or_else(|| "off".to_owned(), |a| format!("http://{}", a.local_addr)),
        fastpath = %describe(fastpath.as_ref()),
        "regedge running"
    );
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM]).context("installing signal handlers")?;
    let mut running = Running {
        config,
        options,
        routing,
        shared: Arc::clone(&shared),
        health: Some(health),
        health_tx,
        health_wake,
        admin: admin_node,
        reloads,
    };
    let signal = loop {
        match signals.forever().next() {
            Some(SIGHUP) => running.reload(),
            Some(SIGINT) => break "SIGINT",
            _ => break "SIGTERM",
        }
    };
    let bound = running.config.node.shutdown_timeout;
    let started = Instant::now();
    tracing::info!(signal, bound = ?bound, "shutting down: REGISTERs that would go to a backend are refused from now on");
    let stage = Arc::new(Mutex::new("refusing new registrations"));
    let watchdog = Watchdog::arm(bound, Arc::clone(&stage));
    readiness.stopping.store(true, Ordering::Relaxed);
    let set_stage = |what: &'static str| *stage.lock().unwrap_or_else(|p| p.into_inner()) = what;
    if let Some(registrar) = &shared.engine.registrar {
        registrar.begin_shutdown();
        set_stage("waiting for the answers to REGISTERs already forwarded");
        let wait = Duration::from_millis(registrar.policy().transaction_timeout_ms).min(bound / 2);
        let deadline = Instant::now() + wait;
        while registrar.pending_len() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if registrar.pending_len() > 0 {
            tracing::info!(pending = registrar.pending_len(), "forwarded REGISTERs left unanswered at shutdown");
        }
    }
    set_stage("stopping the health checks");
    drop(running.health.take());
    set_stage("stopping the SIP event loops");
    let sip_loops = readiness.sip.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(sip_loops);
    set_stage("stopping the SCCP edge");
    let sccp_loops = readiness.sccp.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(sccp_loops);
    if let Some(store) = store {
        // A drain: the last changes written, then the leases released, so that the nodes
        // the balancer moves these phones to take them over at once.
        set_stage("writing the last bindings to the store and releasing the leases");
        store.stop(true);
    }
    // After the loops: the last snapshot has every change they made.
    set_stage("writing the last registry snapshot");
    drop(snapshot);
    set_stage("stopping the admin API and metrics");
    drop(admin);
    drop(metrics);
    set_stage("stopping the kernel mirror");
    drop(mirror);
    set_stage("detaching the fast path");
    if let Some(fastpath) = fastpath {
        stop_fastpath(fastpath);
    }
    watchdog.disarm();
    tracing::info!(took = ?started.elapsed(), "regedge stopped");
    Ok(())
}

/// What the running node keeps for reloads.
struct Running {
    config: Config,
    options: RunOptions,
    routing: Arc<Routing>,
    shared: Arc<Shared>,
    health: Option<HealthChecker>,
    health_tx: crossbeam_channel::Sender<HealthEvent>,
    health_wake: Arc<dyn Fn() + Send + Sync>,
    admin: Arc<admin::Node>,
    reloads: Arc<ReloadCounters>,
}

impl Running {
    /// SIGHUP: reads the config file again and applies what can change live.
    fn reload(&mut self) {
        let Some(path) = self.options.config_path.clone() else {
            tracing::warn!("SIGHUP ignored: regedge runs the embedded default config (no --config file to read again)");
            self.reloads.count(ReloadOutcome::Rejected);
            return;
        };
        let file = path.display().to_string();
        tracing::info!(%file, "SIGHUP: reloading the config");
        let new = match Config::load_file(&path) {
            Ok(config) => config,
            Err(errors) => return self.reject(&file, &errors),
        };
        for warning in new.warnings() {
            tracing::warn!("{warning}");
        }
        let (effective, restart) = live_part(&self.config, new);
        if !restart.is_empty() {
            tracing::warn!(
                keys = %restart.join(", "),
                "config reload: these settings need a restart; their running values are kept"
            );
        }
        let changes = match self.routing.reload(&effective, |backend| link_backend(&effective, backend)) {
            Ok(changes) => changes,
            Err(error) => {
                tracing::error!(%file, %error, "config reload rejected: the running config is kept");
                self.reloads.count(ReloadOutcome::Rejected);
                return;
            }
        };
        let mut regrouped = 0;
        match &self.shared.engine.registrar {
            Some(registrar) => {
                registrar.set_policy(Policy::from(&effective.registration));
                regrouped = registrar.rejudge_bindings();
            }
            None if !self.routing.is_empty() => tracing::warn!(
                "config reload: regedge started without [[groups]], so without a SIP registration edge; \
                 starting one needs a restart"
            ),
            None => {}
        }
        let backends_changed = !(changes.backends_added.is_empty()
            && changes.backends_removed.is_empty()
            && changes.backends_redefined.is_empty());
        if backends_changed || effective.health != self.config.health {
            // The old checker stops (within a probe) before the new one starts from the
            // health each backend has now.
            drop(self.health.take());
            let wake = waking(&self.health_wake);
            match HealthChecker::start(&self.routing, &effective.health, self.health_tx.clone(), wake) {
                Ok(checker) => self.health = Some(checker),
                Err(error) => tracing::error!(%error, "restarting the health checks failed: backends keep their state"),
            }
        }
        self.admin.token.store(Arc::new(effective.admin.token.clone()));
        self.shared.limits.set(&effective.limits);
        self.config = effective;
        self.reloads.count(ReloadOutcome::Ok);
        tracing::info!(%file, %changes, regrouped, "config reloaded");
    }

    fn reject(&self, file: &str, errors: &ConfigErrors) {
        for error in &errors.errors {
            match error.line {
                Some(line) => tracing::error!(%file, line, "{}:{line}: {}", errors.origin, error.kind),
                None => tracing::error!(%file, "{}: {}", errors.origin, error.kind),
            }
        }
        tracing::error!(%file, errors = errors.errors.len(), "config reload rejected: the running config is kept");
        self.reloads.count(ReloadOutcome::Rejected);
    }
}

/// A cloneable closure that calls `wake`.
fn waking(wake: &Arc<dyn Fn() + Send + Sync>) -> impl Fn() + Clone + Send + 'static {
    let wake = Arc::clone(wake);
    move || wake()
}

/// `new` with every setting that cannot change while running put back to its running
/// value (from `old`), and the names of those that differed.
fn live_part(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut restart = Vec::new();
    macro_rules! keep {
        ($($section:ident . $key:ident),+ $(,)?) => {$(
            if new.$section.$key != old.$section.$key {
                restart.push(concat!(stringify!($section), ".", stringify!($key)));
                new.$section.$key = old.$section.$key.clone();
            }
        )+};
    }
    keep!(
        node.name,
        node.workers,
        node.state_dir,
        sip.listen,
        sip.local_names,
        sccp.listen,
        sccp.register_timeout,
        sccp.keepalive_interval,
        fastpath.interfaces,
        fastpath.mode,
        fastpath.pin_path,
        fastpath.reply_rate_per_source,
        metrics.listen,
        admin.listen,
        registration.date_header,
        cluster.store,
        cluster.advertise,
        cluster.lease,
        cluster.secret,
    );
    (new, restart)
}

/// What `/ready` says about the fast path, decided at the start.
#[derive(Clone, Debug)]
enum FastpathReadiness {
    /// Attached (interfaces and modes).
    Attached(String),
    /// Deliberately off (why).
    Off(&'static str),
    /// `mode = "auto"` could not attach it and fell back to userspace (the error).
    FellBack(String),
}

/// `/ready`: the config is loaded (this exists only then), every event loop runs, the
/// fast path is attached or deliberately off, and the node is not shutting down.
struct NodeReadiness {
    stopping: AtomicBool,
    sip: Mutex<Option<Workers>>,
    sccp: Mutex<Option<SccpEdge>>,
    sccp_configured: bool,
    fastpath: FastpathReadiness,
    /// `None` without a `[cluster] store`.
    cluster: Option<Arc<ClusterLink>>,
}

impl Readiness for NodeReadiness {
    fn check(&self) -> Result<serde_json::Value, String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".to_owned());
        }
        let sip_running = self.sip.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(Workers::running);
        if !sip_running {
            return Err("a SIP event loop has stopped".to_owned());
        }
        let sccp_running = self.sccp.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(SccpEdge::running);
        if self.sccp_configured && !sccp_running {
            return Err("an SCCP event loop has stopped".to_owned());
        }
        let fastpath = match &self.fastpath {
            FastpathReadiness::Attached(on) => format!("attached ({on})"),
            FastpathReadiness::Off(why) => format!("off ({why})"),
            FastpathReadiness::FellBack(error) => {
                return Err(format!("the XDP fast path is not attached (mode = \"auto\" fell back): {error}"));
            }
        };
        // A store outage does not make the node unready: it serves from local state (and
        // says it is degraded), as the other nodes do.
        let store = match &self.cluster {
            None => "none",
            Some(link) if link.stats.store_up.load(Ordering::Relaxed) => "up",
            Some(_) => "down (degraded: serving from local state, writes queued)",
        };
        Ok(serde_json::json!({
            "config": "loaded",
            "sip_loops": "running",
            "sccp_loops": if self.sccp_configured { "running" } else { "none" },
            "fastpath": fastpath,
            "store": store,
            "degraded": store.starts_with("down"),
        }))
    }
}

/// Ends the process if the shutdown outlives its bound, saying what it was doing.
struct Watchdog {
    disarm: crossbeam_channel::Sender<()>,
}

impl Watchdog {
    fn arm(bound: Duration, stage: Arc<Mutex<&'static str>>) -> Self {
        let (disarm, disarmed) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new().name("shutdown-watchdog".into()).spawn(move || {
            if disarmed.recv_timeout(bound) == Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                let stage = *stage.lock().unwrap_or_else(|p| p.into_inner());
                tracing::error!(
                    bound = ?bound,
                    waiting_for = stage,
                    "shutdown took longer than node.shutdown_timeout: exiting anyway"
                );
                std::process::exit(1);
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no shutdown watchdog: the shutdown is not bounded");
        }
        Self { disarm }
    }

    fn disarm(self) {
        let _ = self.disarm.send(());
    }
}

/// Starts the SCCP edge's loops when `[sccp] listen` has addresses.
fn start_sccp(
    config: &Config,
    routing: &Arc<Routing>,
    workers: usize,
    limits: &Arc<Limits>,
) -> anyhow::Result<Option<(SccpEdge, Arc<SccpShared>)>> {
    if config.sccp.listen.is_empty() {
        return Ok(None);
    }
    let policy = SessionPolicy {
        register_timeout_ms: config.sccp.register_timeout.as_millis() as u64,
        default_keepalive_ms: config.sccp.keepalive_interval.as_millis() as u64,
        backend_judgement_ms: (config.health.interval * (config.health.down_after + 1)).as_millis() as u64,
    };
    let offload: Option<Box<dyn KeepaliveOffload>> = if config.fastpath.mode == FastpathMode::Off {
        None
    } else {
        match SccpOffload::load() {
            Ok(offload) => Some(Box::new(offload)),
            Err(error) => {
                tracing::warn!(%error, "SCCP keepalive offload unavailable: keepalives answered in userspace");
                None
            }
        }
    };
    let shared = Arc::new(SccpShared {
        routing: Arc::clone(routing),
        policy,
        stats: Default::default(),
        offload,
        limits: Arc::clone(limits),
    });
    let edge = SccpEdge::start(&config.sccp.listen, workers, Arc::clone(&shared)).context("starting the SCCP edge")?;
    Ok(Some((edge, shared)))
}

/// Puts the bindings of the last snapshot back into the registry (nothing goes upstream).
fn restore_bindings(state: &StateDir, registrar: &Registrar) {
    let restored = registrar.restore(state.load(&registrar.routing));
    if restored > 0 {
        tracing::info!(restored, "bindings restored from the registry snapshot; none re-registered upstream");
    }
}

/// Starts the thread that keeps the registry snapshot current.
fn start_snapshots(
    state: StateDir,
    shared: &Arc<Shared>,
    mirror: Option<&MirrorThread>,
    node: &str,
) -> anyhow::Result<SnapshotWriter> {
    let stats = mirror.map(|m| Arc::clone(&m.stats));
    SnapshotWriter::start(state, Arc::clone(shared), stats, node.to_owned())
        .context("starting the registry snapshot writer")
}

/// Drops the fast path at shutdown: unpinned, the program detaches; pinned, it stays
/// attached and keeps answering until the next start adopts it (the upgrade path).
fn stop_fastpath(fastpath: Fastpath) {
    match fastpath.pin_dir().map(Path::to_path_buf) {
        Some(dir) => {
            drop(fastpath);
            tracing::info!(
                pin = %dir.display(),
                "XDP program left attached (pinned): it keeps answering until the next start adopts it; \
                 remove the pin directory to detach"
            );
        }
        None => {
            drop(fastpath);
            tracing::info!("XDP program detached");
        }
    }
}

/// The state directory of `[node] state_dir`; `None` when it is empty or cannot be made
/// (then nothing survives a restart, which is said once).
fn open_state(dir: &Path) -> Option<StateDir> {
    if dir.as_os_str().is_empty() {
        tracing::info!(
            "node.state_dir is empty: no registry snapshot; the flow-token key is new at every start unless \
             [cluster] secret sets it"
        );
        return None;
    }
    match StateDir::open(dir) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot use node.state_dir: bindings will not survive a restart");
            None
        }
    }
}

/// Where this node talks to `backend` from: the first `[sip] listen` address of its
/// family, a wildcard resolved through the routing table to the address the backend sees.
fn link_backend(config: &Config, backend: &BackendConfig) -> std::io::Result<Link> {
    let Some(link) = Link::first_of_family(config, backend) else {
        return Err(std::io::Error::other(format!("backend {}: no [sip] listen address of its family", backend.name)));
    };
    if !link.facing.ip().is_unspecified() {
        return Ok(link);
    }
    let ip = source_address_toward(backend.address).map_err(|e| {
        std::io::Error::new(e.kind(), format!("backend {}: no route to {}: {e}", backend.name, backend.address))
    })?;
    Ok(Link { facing: SocketAddr::new(ip, link.facing.port()), ..link })
}

/// The local address the routing table picks to reach `target`.
fn source_address_toward(target: SocketAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr =
        if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

fn local_interface_addresses() -> anyhow::Result<Vec<std::net::IpAddr>> {
    local_names::interface_addresses().context("listing interface addresses for the wildcard listen address")
}

fn describe(fastpath: Option<&Fastpath>) -> String {
    match fastpath {
        None => "off (keepalives answered in userspace)".into(),
        Some(f) => f.attached().iter().map(|(i, m)| format!("{i}:{m}")).collect::<Vec<_>>().join(","),
    }
}

/// Loads and attaches the XDP program as `[fastpath]` says. `auto` falls back to
/// userspace with one warning; `native` and `generic` failing is a startup error.
fn start_fastpath(
    config: &Config,
    names: &LocalNames,
    tag: ToTag,
    answer: AnswerSettings,
) -> anyhow::Result<(Option<Fastpath>, FastpathReadiness)> {
    let fp = &config.fastpath;
    let pin_dir = (!fp.pin_path.as_os_str().is_empty()).then_some(fp.pin_path.as_path());
    if fp.mode == FastpathMode::Off {
        tracing::info!("fast path off by config: keepalives answered in userspace");
        detach_pinned(pin_dir);
        return Ok((None, FastpathReadiness::Off("[fastpath] mode = \"off\"")));
    }
    if fp.interfaces.is_empty() {
        tracing::info!("fast path off: [fastpath] interfaces is empty; keepalives answered in userspace");
        detach_pinned(pin_dir);
        return Ok((None, FastpathReadiness::Off("[fastpath] interfaces is empty")));
    }
    let attempt = || -> Result<Fastpath, DatapathError> {
        let mut fastpath = match pin_dir {
            Some(dir) => {
                pin::prepare(dir)?;
                Fastpath::load_pinned(dir)?
            }
            None => Fastpath::load()?,
        };
        fastpath.configure(&config.sip.listen, names, tag, answer)?;
        fastpath.set_reply_rate_per_source(fp.reply_rate_per_source)?;
        fastpath.attach_all(&fp.interfaces, fp.mode)?;
        Ok(fastpath)
    };
    match attempt() {
        Ok(fastpath) => {
            let attached = describe(Some(&fastpath));
            Ok((Some(fastpath), FastpathReadiness::Attached(attached)))
        }
        // A pin_path on no bpffs is a config problem whatever the mode (failing to mount
        // or create it, e.g. without privileges, is not: `auto` falls back).
        Err(err @ DatapathError::PinPath { .. }) => Err(anyhow::Error::new(err)),
        Err(err) if fp.mode == FastpathMode::Auto => {
            tracing::warn!(error = %err, "fast path unavailable (mode = \"auto\"): keepalives answered in userspace");
            detach_pinned(pin_dir);
            Ok((None, FastpathReadiness::FellBack(err.to_string())))
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!("[fastpath] mode = \"{}\"", fp.mode.label()))),
    }
}

/// With no fast path this run, a program an earlier run pinned would answer from a map
/// nobody updates any more: its links are removed (detached).
fn detach_pinned(pin_dir: Option<&Path>) {
    if let Some(dir) = pin_dir.filter(|d| d.is_dir()) {
        pin::remove_links_except(dir, &[]);
    }
}

/// Connects the registrar to the kernel mirror of bindings (refreshes answered in XDP).
/// Entries an earlier run left in a pinned map are reconciled with the restored registry
/// first: what the kernel answered meanwhile moves bindings on, entries no binding owns
/// are removed.
fn start_mirror(fastpath: &mut Fastpath, registrar: &Registrar) -> anyhow::Result<MirrorThread> {
    let (Some(mut bindings), Some(absorbed)) = (fastpath.take_bindings(), fastpath.take_absorbed()) else {
        anyhow::bail!("the kernel binding maps were taken already");
    };
    let entries = bindings.entries();
    if !entries.is_empty() {
        let orphans = registrar.adopt_kernel_entries(&entries);
        for key in &orphans {
            if let Err(error) = bindings.remove(*key) {
                tracing::warn!(key, %error, "cannot remove an orphan kernel binding entry");
            }
        }
        tracing::info!(
            entries = entries.len(),
            orphans = orphans.len(),
            "pinned kernel bindings adopted (orphans: no restored binding owns them, removed)"
        );
    }
    match bindings.reader() {
        Ok(reader) => registrar.read_kernel_cseq_with(Box::new(move |key| reader.cseq(key))),
        // Without it a REGISTER the kernel passed is judged on what the ring has brought
        // back so far (a CSeq it answered moments ago may look new).
        Err(error) => tracing::warn!(%error, "cannot open a second handle on the kernel binding map"),
    }
    let (updates, folded) = registrar.connect_kernel();
    MirrorThread::start(bindings, absorbed, updates, folded).context("starting the kernel mirror thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_what_needs_a_restart_and_takes_the_rest() {
        let old = Config::from_toml("[sip]\nlisten = [\"127.0.0.1:5060\"]\n", "old").unwrap();
        let new = Config::from_toml(
            "[node]\nworkers = 3\nshutdown_timeout = \"2s\"\n[sip]\nlisten = [\"127.0.0.1:5070\"]\n\
             [registration]\nphone_expires = 60\ndate_header = false\n[admin]\ntoken = \"0123456789abcdef\"\n\
             [health]\ninterval = \"3s\"\n",
            "new",
        )
        .unwrap();
        let (effective, restart) = live_part(&old, new);
        assert_eq!(restart, ["node.workers", "sip.listen", "registration.date_header"]);
        assert_eq!((effective.node.workers, effective.sip.listen.clone()), (0, old.sip.listen.clone()));
        assert!(effective.registration.date_header);
        assert_eq!(effective.registration.phone_expires, 60);
        assert_eq!(effective.node.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(effective.health.interval, Duration::from_secs(3));
        assert_eq!(effective.admin.token, "0123456789abcdef");
    }
}
