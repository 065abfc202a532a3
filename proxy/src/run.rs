//! `regedge run`: wires config, fast path, event loops and metrics together, then waits
//! for SIGINT/SIGTERM and shuts down in order (loops, a last registry snapshot, metrics,
//! then the XDP program, which detaches when dropped unless it is pinned).
//!
//! Start-up order, so that a restart loses nothing: config → routing and registrar (with
//! the saved flow-token key) → registry snapshot restored → fast path loaded, adopting the
//! pinned maps and links of the previous run → the pinned `BINDINGS` reconciled with the
//! restored registry (the kernel answered refreshes meanwhile; entries nobody owns are
//! removed) → kernel mirror (rewrites the entry of every binding) → event loops.

use std::sync::Arc;

use anyhow::Context as _;
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use crate::{
    config::{BackendTransport, Config, FastpathMode},
    datapath::{AnswerSettings, DatapathError, Fastpath, mirror::MirrorThread, pin, sccp::SccpOffload},
    engine::Engine,
    failover::Routing,
    health::HealthChecker,
    io::workers::{Shared, Workers},
    local_names::{self, LocalNames},
    metrics::{MetricsCollector, MetricsServer},
    registrar::{Node, Policy, Registrar},
    registry::Transport,
    sccp::{
        edge::{KeepaliveOffload, SccpEdge, SccpShared},
        session::SessionPolicy,
    },
    sip::stateless::ToTag,
    snapshot::{SnapshotWriter, StateDir},
};

pub fn run(config: Config) -> anyhow::Result<()> {
    let interface_addrs = if config.sip.listen.iter().any(|a| a.ip().is_unspecified()) {
        local_interface_addresses()?
    } else {
        Vec::new()
    };
    let names = LocalNames::new(&config.sip.local_names, &config.sip.listen, &interface_addrs);
    let tag = ToTag::for_node(&config.node.name);

    let workers = match config.node.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let routing = Arc::new(Routing::from_config(&config));
    let backend_listener = backend_listeners(&config)?;
    let state = (!routing.is_empty()).then(|| open_state(&config.node.state_dir)).flatten();
    let registrar = (!routing.is_empty()).then(|| {
        let backend_facing = backend_listener
            .iter()
            .zip(&config.backends)
            .map(|((_, facing), backend)| {
                let transport = match backend.transport {
                    BackendTransport::Udp => Transport::Udp,
                    BackendTransport::Tcp => Transport::Tcp,
                };
                (transport, *facing)
            })
            .collect();
        let token_key = state.as_ref().map_or_else(crate::snapshot::random_u64, StateDir::token_key);
        let node = Node { to_tag: tag, backend_facing, token_key };
        Registrar::new(Arc::clone(&routing), Policy::from(&config.registration), node)
    });
    if let (Some(state), Some(registrar)) = (&state, &registrar) {
        restore_bindings(state, registrar);
    }
    let answer = AnswerSettings { register: registrar.is_some(), date_header: config.registration.date_header };
    let mut fastpath = start_fastpath(&config, &names, tag, answer)?;
    let mirror = match (&mut fastpath, &registrar) {
        (Some(fastpath), Some(registrar)) => Some(start_mirror(fastpath, registrar)?),
        _ => None,
    };
    let shared = Arc::new(Shared::new(Engine::new(names, tag, registrar)));
    let (health_tx, health_rx) = crossbeam_channel::unbounded();
    let workers_running = Workers::start(
        &config.sip.listen,
        workers,
        Arc::clone(&shared),
        backend_listener.iter().map(|(index, _)| *index).collect(),
        Some(health_rx),
    )?;
    let sccp = start_sccp(&config, &routing, workers)?;
    let snapshot = match (state, &shared.engine.registrar) {
        (Some(state), Some(_)) => Some(start_snapshots(state, &shared, mirror.as_ref(), &config.node.name)?),
        _ => None,
    };
    let waker = workers_running.timekeeper_waker();
    let health = HealthChecker::start(&routing, &config.health, health_tx, move || {
        let _ = waker.wake();
    })
    .context("starting health checks")?;

    let attached = fastpath.as_ref().map_or_else(Vec::new, |f| {
        ["native", "generic"]
            .map(|mode| (mode, f.attached().iter().filter(|(_, m)| m.label() == mode).count() as i64))
            .to_vec()
    });
    let collector = MetricsCollector {
        shared,
        kernel: fastpath.as_ref().map(Fastpath::counters),
        mirror: mirror.as_ref().map(|m| Arc::clone(&m.stats)),
        sccp: sccp.as_ref().map(|(_, shared)| Arc::clone(shared)),
        attached,
    };
    let metrics = MetricsServer::start(config.metrics.listen, collector)
        .with_context(|| format!("starting the metrics endpoint on {}", config.metrics.listen))?;

    tracing::info!(
        node = %config.node.name,
        sip = ?config.sip.listen,
        sccp = ?config.sccp.listen,
        workers,
        backends = routing.backends.len(),
        groups = routing.groups.len(),
        metrics = %format!("http://{}/metrics", metrics.local_addr),
        fastpath = %describe(fastpath.as_ref()),
        "regedge running"
    );
    let signal = wait_for_shutdown()?;
    tracing::info!(signal, "shutting down");
    drop(health);
    drop(workers_running);
    drop(sccp);
    // After the loops: the last snapshot has every change they made.
    drop(snapshot);
    drop(metrics);
    drop(mirror);
    if let Some(fastpath) = fastpath {
        stop_fastpath(fastpath);
    }
    Ok(())
}

/// Starts the SCCP edge's loops when `[sccp] listen` has addresses.
fn start_sccp(
    config: &Config,
    routing: &Arc<Routing>,
    workers: usize,
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
    let shared = Arc::new(SccpShared { routing: Arc::clone(routing), policy, stats: Default::default(), offload });
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
        tracing::info!("node.state_dir is empty: no registry snapshot, flow-token key new at every start");
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

/// For each backend: the index of the listen address that talks to it (the first of its
/// family), and that address as the backend reaches it (a wildcard resolved through the
/// routing table).
fn backend_listeners(config: &Config) -> anyhow::Result<Vec<(usize, SocketAddr)>> {
    config
        .backends
        .iter()
        .map(|backend| {
            let (index, listen) = config
                .sip
                .listen
                .iter()
                .enumerate()
                .find(|(_, l)| l.is_ipv4() == backend.address.is_ipv4())
                .with_context(|| format!("backend {}: no [sip] listen address of its family", backend.name))?;
            let ip = if listen.ip().is_unspecified() { source_address_toward(backend.address)? } else { listen.ip() };
            Ok((index, SocketAddr::new(ip, listen.port())))
        })
        .collect()
}

/// The local address the routing table picks to reach `target`.
fn source_address_toward(target: SocketAddr) -> anyhow::Result<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(target).with_context(|| format!("no route to backend {target}"))?;
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
) -> anyhow::Result<Option<Fastpath>> {
    let fp = &config.fastpath;
    let pin_dir = (!fp.pin_path.as_os_str().is_empty()).then_some(fp.pin_path.as_path());
    if fp.mode == FastpathMode::Off {
        tracing::info!("fast path off by config: keepalives answered in userspace");
        detach_pinned(pin_dir);
        return Ok(None);
    }
    if fp.interfaces.is_empty() {
        tracing::info!("fast path off: [fastpath] interfaces is empty; keepalives answered in userspace");
        detach_pinned(pin_dir);
        return Ok(None);
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
        fastpath.attach_all(&fp.interfaces, fp.mode)?;
        Ok(fastpath)
    };
    match attempt() {
        Ok(fastpath) => Ok(Some(fastpath)),
        // A pin_path on no bpffs is a config problem whatever the mode (failing to mount
        // or create it, e.g. without privileges, is not: `auto` falls back).
        Err(err @ DatapathError::PinPath { .. }) => Err(anyhow::Error::new(err)),
        Err(err) if fp.mode == FastpathMode::Auto => {
            tracing::warn!(error = %err, "fast path unavailable (mode = \"auto\"): keepalives answered in userspace");
            detach_pinned(pin_dir);
            Ok(None)
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
    let (updates, folded) = registrar.connect_kernel();
    MirrorThread::start(bindings, absorbed, updates, folded).context("starting the kernel mirror thread")
}

fn wait_for_shutdown() -> anyhow::Result<&'static str> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    Ok(if signal == SIGINT { "SIGINT" } else { "SIGTERM" })
}
