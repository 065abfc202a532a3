//! `regedge run`: wires config, fast path, event loops and metrics together, then waits
//! for SIGINT/SIGTERM and shuts down in order (loops, metrics, then the XDP program,
//! which detaches when dropped).

use std::sync::Arc;

use anyhow::Context as _;
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{
    config::{Config, FastpathMode},
    datapath::{DatapathError, Fastpath},
    engine::UdpEngine,
    io::udp::UdpWorkers,
    local_names::{self, LocalNames},
    metrics::{MetricsCollector, MetricsServer, UserspaceCounters},
    sip::stateless::ToTag,
};

pub fn run(config: Config) -> anyhow::Result<()> {
    let interface_addrs = if config.sip.listen.iter().any(|a| a.ip().is_unspecified()) {
        local_interface_addresses()?
    } else {
        Vec::new()
    };
    let names = LocalNames::new(&config.sip.local_names, &config.sip.listen, &interface_addrs);
    let tag = ToTag::for_node(&config.node.name);
    let fastpath = start_fastpath(&config, &names, tag)?;

    let workers = match config.node.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let userspace = Arc::new(UserspaceCounters::default());
    let engine = Arc::new(UdpEngine::new(names, tag));
    let udp = UdpWorkers::start(&config.sip.listen, workers, engine, Arc::clone(&userspace))?;

    let attached = fastpath.as_ref().map_or_else(Vec::new, |f| {
        ["native", "generic"]
            .map(|mode| (mode, f.attached().iter().filter(|(_, m)| m.label() == mode).count() as i64))
            .to_vec()
    });
    let collector = MetricsCollector { userspace, kernel: fastpath.as_ref().map(Fastpath::counters), attached };
    let metrics = MetricsServer::start(config.metrics.listen, collector)
        .with_context(|| format!("starting the metrics endpoint on {}", config.metrics.listen))?;

    tracing::info!(
        node = %config.node.name,
        sip = ?config.sip.listen,
        workers,
        metrics = %format!("http://{}/metrics", metrics.local_addr),
        fastpath = %describe(fastpath.as_ref()),
        "regedge running"
    );
    let signal = wait_for_shutdown()?;
    tracing::info!(signal, "shutting down");
    drop(udp);
    drop(metrics);
    if fastpath.is_some() {
        drop(fastpath);
        tracing::info!("XDP program detached");
    }
    Ok(())
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
fn start_fastpath(config: &Config, names: &LocalNames, tag: ToTag) -> anyhow::Result<Option<Fastpath>> {
    let fp = &config.fastpath;
    if fp.mode == FastpathMode::Off {
        tracing::info!("fast path off by config: keepalives answered in userspace");
        return Ok(None);
    }
    if fp.interfaces.is_empty() {
        tracing::info!("fast path off: [fastpath] interfaces is empty; keepalives answered in userspace");
        return Ok(None);
    }
    let attempt = || -> Result<Fastpath, DatapathError> {
        let mut fastpath = Fastpath::load()?;
        fastpath.configure(&config.sip.listen, names, tag)?;
        fastpath.attach_all(&fp.interfaces, fp.mode)?;
        Ok(fastpath)
    };
    match attempt() {
        Ok(fastpath) => Ok(Some(fastpath)),
        Err(err) if fp.mode == FastpathMode::Auto => {
            tracing::warn!(error = %err, "fast path unavailable (mode = \"auto\"): keepalives answered in userspace");
            Ok(None)
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!("[fastpath] mode = \"{}\"", fp.mode.label()))),
    }
}

fn wait_for_shutdown() -> anyhow::Result<&'static str> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    Ok(if signal == SIGINT { "SIGINT" } else { "SIGTERM" })
}
