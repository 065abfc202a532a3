//! Prometheus metrics: names, the userspace counters, the collector that reads the
//! kernel's per-CPU counters at scrape time, and the /metrics HTTP endpoint.
//!
//! Counter names are given without `_total`: the OpenMetrics encoder appends it, so
//! `FASTPATH_REPLIES` is exposed as `regedge_fastpath_replies_total`. Label values come
//! only from fixed enums.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use regedge_common::{PassReason, ReplyKind};

use crate::{
    calls::{MethodLabel, Toward},
    datapath::{KernelCounters, mirror::MirrorStats},
    engine::{DropReason, Outcome, Rejection},
    failover::BackendState,
    io::{tcp::CloseReason, workers::Shared},
    limits::Limit,
    registrar::{RESPONSE_BUCKETS_MS, Registrar, RegistrationOutcome},
    sccp::{
        FramingError,
        edge::{STATE_LABELS, SccpShared},
        session::CloseReason as SccpCloseReason,
    },
};

/// Metric names.
pub mod names {
    /// `regedge_fastpath_replies_total{kind}`: keepalives answered (or absorbed) by the XDP program.
    pub const FASTPATH_REPLIES: &str = "regedge_fastpath_replies";
    /// `regedge_fastpath_passed_total{reason}`: packets the XDP program handed to the stack.
    pub const FASTPATH_PASSED: &str = "regedge_fastpath_passed";
    /// `regedge_fastpath_attached{mode}`: interfaces the XDP program is attached to.
    pub const FASTPATH_ATTACHED: &str = "regedge_fastpath_attached";
    /// `regedge_userspace_replies_total{kind}`: keepalives answered (or absorbed) in userspace.
    pub const USERSPACE_REPLIES: &str = "regedge_userspace_replies";
    /// `regedge_userspace_rejected_total{reason}`: error responses sent by userspace.
    pub const USERSPACE_REJECTED: &str = "regedge_userspace_rejected";
    /// `regedge_userspace_dropped_total{reason}`: datagrams userspace did not answer.
    pub const USERSPACE_DROPPED: &str = "regedge_userspace_dropped";
    /// `regedge_build_info{version}`: always 1.
    pub const BUILD_INFO: &str = "regedge_build_info";
    /// `regedge_registrations_total{protocol,outcome}`: REGISTERs by what became of them.
    pub const REGISTRATIONS: &str = "regedge_registrations";
    /// `regedge_bindings{protocol}`: phones registered through this node.
    pub const BINDINGS: &str = "regedge_bindings";
    /// `regedge_backend_up{backend}`: 1 when the backend is up, else 0.
    pub const BACKEND_UP: &str = "regedge_backend_up";
    /// `regedge_backend_bindings{backend}`: bindings held on each backend.
    pub const BACKEND_BINDINGS: &str = "regedge_backend_bindings";
    /// `regedge_failovers_total{group}`: phones moved off a backend that went down or drained.
    pub const FAILOVERS: &str = "regedge_failovers";
    /// `regedge_backend_response_seconds`: time from forwarding a REGISTER to its final answer.
    pub const BACKEND_RESPONSE: &str = "regedge_backend_response_seconds";
    /// `regedge_backend_timeouts_total`: forwarded REGISTERs that got no final answer in time.
    pub const BACKEND_TIMEOUTS: &str = "regedge_backend_timeouts";
    /// `regedge_sip_routed_requests_total{method,toward}`: requests proxied to a backend or a phone.
    pub const SIP_ROUTED_REQUESTS: &str = "regedge_sip_routed_requests";
    /// `regedge_sip_relayed_responses_total`: responses to proxied requests relayed back.
    pub const SIP_RELAYED_RESPONSES: &str = "regedge_sip_relayed_responses";
    /// `regedge_sip_tcp_connections`: open SIP TCP connections.
    pub const SIP_TCP_CONNECTIONS: &str = "regedge_sip_tcp_connections";
    /// `regedge_sip_tcp_closed_total{reason}`: SIP TCP connections closed, by reason.
    pub const SIP_TCP_CLOSED: &str = "regedge_sip_tcp_closed";
    /// `regedge_bindings_lapsed_total`: bindings whose phone stopped refreshing.
    pub const BINDINGS_LAPSED: &str = "regedge_bindings_lapsed";
    /// `regedge_fastpath_bindings`: bindings in the kernel mirror (refreshes answered in XDP).
    pub const FASTPATH_BINDINGS: &str = "regedge_fastpath_bindings";
    /// `regedge_fastpath_mirror_errors_total`: kernel mirror updates the map refused.
    pub const FASTPATH_MIRROR_ERRORS: &str = "regedge_fastpath_mirror_errors";
    /// `regedge_fastpath_absorbed_read_total`: answered refreshes userspace read back from the kernel.
    pub const FASTPATH_ABSORBED_READ: &str = "regedge_fastpath_absorbed_read";
    /// `regedge_sccp_sessions{state}`: SCCP phone connections by session state.
    pub const SCCP_SESSIONS: &str = "regedge_sccp_sessions";
    /// `regedge_sccp_sessions_closed_total{reason}`: SCCP sessions ended, by reason.
    pub const SCCP_SESSIONS_CLOSED: &str = "regedge_sccp_sessions_closed";
    /// `regedge_sccp_standby_keepalives_total`: keepalives of standby connections (not acked).
    pub const SCCP_STANDBY_KEEPALIVES: &str = "regedge_sccp_standby_keepalives";
    /// `regedge_sccp_framing_errors_total{reason}`: connections closed for bytes that are not Skinny.
    pub const SCCP_FRAMING_ERRORS: &str = "regedge_sccp_framing_errors";
    /// `regedge_store_up`: 1 while the cluster store answers, 0 while it does not.
    pub const STORE_UP: &str = "regedge_store_up";
    /// `regedge_store_ops_total{op,outcome}`: store operations (`put`, `renew`, `delete`,
    /// `release`, `adopt`, `scan`) that went `ok`, were `lost` to another node's lease, or
    /// met an `error`.
    pub const STORE_OPS: &str = "regedge_store_ops";
    /// `regedge_store_queue_depth`: binding records waiting to be written to the store.
    pub const STORE_QUEUE_DEPTH: &str = "regedge_store_queue_depth";
    /// `regedge_store_leases_held`: bindings whose record holds this node's lease.
    pub const STORE_LEASES_HELD: &str = "regedge_store_leases_held";
    /// `regedge_store_records_seen`: binding records of every node in the last scan.
    pub const STORE_RECORDS_SEEN: &str = "regedge_store_records_seen";
    /// `regedge_bindings_adopted_total{how}`: bindings taken over from another node,
    /// `sighted` (the phone showed up here) or `swept` (its owner's lease lapsed).
    pub const BINDINGS_ADOPTED: &str = "regedge_bindings_adopted";
    /// `regedge_config_reloads_total{outcome}`: SIGHUP reloads, `ok` or `rejected`.
    pub const CONFIG_RELOADS: &str = "regedge_config_reloads";
    /// `regedge_limit_refusals_total{limit}`: REGISTERs (503) and connections (closed at
    /// once) refused at a `[limits]` cap.
    pub const LIMIT_REFUSALS: &str = "regedge_limit_refusals";
    /// `regedge_pending_registrations`: REGISTERs forwarded to a backend and not yet answered.
    pub const PENDING_REGISTRATIONS: &str = "regedge_pending_registrations";
}

/// What became of a config reload (`regedge_config_reloads_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config is in force (settings that need a restart aside).
    Ok,
    /// The new config was invalid or could not be applied; the old one is kept.
    Rejected,
}

impl ReloadOutcome {
    pub const ALL: [Self; 2] = [Self::Ok, Self::Rejected];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
        }
    }
}

/// Config reloads by outcome.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    counts: [AtomicU64; ReloadOutcome::ALL.len()],
}

impl ReloadCounters {
    pub fn count(&self, outcome: ReloadOutcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: ReloadOutcome) -> u64 {
        self.counts[outcome as usize].load(Ordering::Relaxed)
    }
}

/// Counters the event loops bump; lock-free, summed at scrape time.
#[derive(Debug, Default)]
pub struct UserspaceCounters {
    replies: [AtomicU64; ReplyKind::COUNT as usize],
    rejected: [AtomicU64; Rejection::LABELS.len()],
    dropped: [AtomicU64; DropReason::ALL.len()],
    tcp_closed: [AtomicU64; CloseReason::LABELS.len()],
    routed: [[AtomicU64; Toward::ALL.len()]; MethodLabel::LABELS.len()],
    relayed_responses: AtomicU64,
}

impl UserspaceCounters {
    pub fn record(&self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Replied(kind) | Outcome::Absorbed(kind) => &self.replies[kind as usize],
            Outcome::Rejected(rejection) => &self.rejected[rejection.index()],
            Outcome::Dropped(reason) => &self.dropped[reason as usize],
            Outcome::Routed(method, toward) => &self.routed[method.index()][toward as usize],
            Outcome::RelayedResponse => &self.relayed_responses,
            // Counted by the registrar.
            Outcome::Registration(_) | Outcome::Relayed => return,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_tcp_close(&self, reason: CloseReason) {
        self.tcp_closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn replies(&self, kind: ReplyKind) -> u64 {
        self.replies[kind as usize].load(Ordering::Relaxed)
    }
}

/// Everything /metrics reports.
pub struct MetricsCollector {
    pub shared: Arc<Shared>,
    /// `None` when the fast path is off.
    pub kernel: Option<Arc<KernelCounters>>,
    /// `None` when no kernel mirror runs (fast path off, or no registrar).
    pub mirror: Option<Arc<MirrorStats>>,
    /// `None` when there is no SCCP edge.
    pub sccp: Option<Arc<SccpShared>>,
    /// Attached interfaces per mode label.
    pub attached: Vec<(&'static str, i64)>,
    /// Config reloads (SIGHUP).
    pub reloads: Arc<ReloadCounters>,
    /// `None` without a `[cluster] store`.
    pub cluster: Option<Arc<crate::cluster::ClusterLink>>,
}

fn encode_cluster(encoder: &mut DescriptorEncoder, cluster: &crate::cluster::ClusterLink) -> std::fmt::Result {
    use crate::cluster::{Adoption, StoreOp, StoreOutcome};
    let stats = &cluster.stats;
    let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| -> std::fmt::Result {
        ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
    };
    gauge(
        encoder,
        names::STORE_UP,
        "1 while the cluster store answers.",
        i64::from(stats.store_up.load(Ordering::Relaxed)),
    )?;
    let mut ops = encoder.encode_descriptor(
        names::STORE_OPS,
        "Cluster store operations, by operation and outcome (lost: another node holds the lease).",
        None,
        MetricType::Counter,
    )?;
    for op in StoreOp::ALL {
        for outcome in StoreOutcome::ALL {
            let labels = [("op", op.label()), ("outcome", outcome.label())];
            ConstCounter::new(stats.ops(op, outcome)).encode(ops.encode_family(&labels)?)?;
        }
    }
    gauge(
        encoder,
        names::STORE_QUEUE_DEPTH,
        "Binding records waiting to be written to the cluster store.",
        stats.queue_depth.load(Ordering::Relaxed) as i64,
    )?;
    gauge(
        encoder,
        names::STORE_LEASES_HELD,
        "Bindings whose store record holds this node's lease.",
        stats.leases_held.load(Ordering::Relaxed) as i64,
    )?;
    gauge(
        encoder,
        names::STORE_RECORDS_SEEN,
        "Binding records of every node in the store, as of the last scan.",
        cluster.directory.len() as i64,
    )?;
    encode_counter(
        encoder,
        names::BINDINGS_ADOPTED,
        "Bindings taken over from another node: sighted (the phone showed up here) or swept (its owner's lease lapsed).",
        "how",
        Adoption::ALL.map(|how| (how.label(), stats.adopted(how))),
    )
}

fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let build = [("version", env!("CARGO_PKG_VERSION"))];
        let mut info = encoder.encode_descriptor(names::BUILD_INFO, "Build information.", None, MetricType::Gauge)?;
        ConstGauge::new(1i64).encode(info.encode_family(&build)?)?;

        let kernel = self.kernel.as_deref();
        encode_counter(
            &mut encoder,
            names::FASTPATH_REPLIES,
            "Keepalives answered or absorbed by the XDP program.",
            "kind",
            ReplyKind::ALL.map(|k| {
                let sccp = match (k, self.sccp.as_ref().and_then(|s| s.offload.as_ref())) {
                    (ReplyKind::SccpKeepalive, Some(offload)) => offload.kernel_answers(),
                    _ => 0,
                };
                (k.label(), kernel.map_or(0, |c| c.replies(k)) + sccp)
            }),
        )?;
        encode_counter(
            &mut encoder,
            names::FASTPATH_PASSED,
            "Packets the XDP program handed to the network stack, by reason.",
            "reason",
            PassReason::ALL.map(|r| (r.label(), kernel.map_or(0, |c| c.passes(r)))),
        )?;
        let mut attached = encoder.encode_descriptor(
            names::FASTPATH_ATTACHED,
            "Interfaces the XDP program is attached to.",
            None,
            MetricType::Gauge,
        )?;
        for (mode, count) in &self.attached {
            ConstGauge::new(*count).encode(attached.encode_family(&[("mode", *mode)])?)?;
        }

        if let Some(mirror) = &self.mirror {
            let entries = encoder.encode_descriptor(
                names::FASTPATH_BINDINGS,
                "Bindings in the kernel mirror, whose refreshes the XDP program may answer.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(mirror.entries.load(Ordering::Relaxed) as i64).encode(entries)?;
            for (name, help, value) in [
                (names::FASTPATH_MIRROR_ERRORS, "Kernel mirror updates the map refused.", &mirror.errors),
                (
                    names::FASTPATH_ABSORBED_READ,
                    "Refreshes answered in the kernel and read back by userspace.",
                    &mirror.absorbed,
                ),
            ] {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value.load(Ordering::Relaxed)).encode(metric)?;
            }
        }

        let user = &self.shared.counters;
        encode_counter(
            &mut encoder,
            names::USERSPACE_REPLIES,
            "Keepalives answered or absorbed in userspace.",
            "kind",
            ReplyKind::ALL.map(|k| {
                let sccp = match (k, &self.sccp) {
                    (ReplyKind::SccpKeepalive, Some(sccp)) => sccp.stats.keepalives_answered.load(Ordering::Relaxed),
                    _ => 0,
                };
                (k.label(), user.replies(k) + sccp)
            }),
        )?;
        encode_counter(
            &mut encoder,
            names::USERSPACE_REJECTED,
            "Error responses sent by userspace, by reason.",
            "reason",
            Rejection::LABELS.into_iter().zip(&user.rejected).map(|(l, c)| (l, c.load(Ordering::Relaxed))),
        )?;
        encode_counter(
            &mut encoder,
            names::USERSPACE_DROPPED,
            "Datagrams userspace did not answer, by reason.",
            "reason",
            DropReason::ALL.iter().zip(&user.dropped).map(|(r, c)| (r.label(), c.load(Ordering::Relaxed))),
        )?;
        let mut routed = encoder.encode_descriptor(
            names::SIP_ROUTED_REQUESTS,
            "SIP requests proxied to a backend or a phone, by method.",
            None,
            MetricType::Counter,
        )?;
        for (method, per_toward) in MethodLabel::LABELS.iter().zip(&user.routed) {
            for (toward, count) in Toward::ALL.iter().zip(per_toward) {
                let labels = [("method", *method), ("toward", toward.label())];
                ConstCounter::new(count.load(Ordering::Relaxed)).encode(routed.encode_family(&labels)?)?;
            }
        }
        let relayed = encoder.encode_descriptor(
            names::SIP_RELAYED_RESPONSES,
            "Responses to proxied SIP requests relayed back to where the request came from.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(user.relayed_responses.load(Ordering::Relaxed)).encode(relayed)?;
        let connections = encoder.encode_descriptor(
            names::SIP_TCP_CONNECTIONS,
            "Open SIP TCP connections.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.shared.connections() as i64).encode(connections)?;
        encode_counter(
            &mut encoder,
            names::SIP_TCP_CLOSED,
            "SIP TCP connections closed, by reason.",
            "reason",
            CloseReason::LABELS.into_iter().zip(&user.tcp_closed).map(|(l, c)| (l, c.load(Ordering::Relaxed))),
        )?;
        if let Some(cluster) = &self.cluster {
            encode_cluster(&mut encoder, cluster)?;
        }
        encode_counter(
            &mut encoder,
            names::CONFIG_RELOADS,
            "Config reloads (SIGHUP), by outcome.",
            "outcome",
            ReloadOutcome::ALL.map(|o| (o.label(), self.reloads.get(o))),
        )?;
        encode_counter(
            &mut encoder,
            names::LIMIT_REFUSALS,
            "REGISTERs (503) and connections (closed at once) refused at a [limits] cap.",
            "limit",
            Limit::ALL.map(|l| (l.label(), self.shared.limits.refused(l))),
        )?;
        if let Some(registrar) = &self.shared.engine.registrar {
            let pending = encoder.encode_descriptor(
                names::PENDING_REGISTRATIONS,
                "REGISTERs forwarded to a backend and not yet answered.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(registrar.pending_len() as i64).encode(pending)?;
            encode_registrar(&mut encoder, registrar)?;
        }
        if let Some(sccp) = &self.sccp {
            encode_sccp(&mut encoder, sccp)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsCollector").finish_non_exhaustive()
    }
}

fn encode_sccp(encoder: &mut DescriptorEncoder, sccp: &SccpShared) -> std::fmt::Result {
    let stats = &sccp.stats;
    let mut sessions =
        encoder.encode_descriptor(names::SCCP_SESSIONS, "SCCP phone connections by state.", None, MetricType::Gauge)?;
    for (label, count) in STATE_LABELS.iter().zip(&stats.sessions) {
        ConstGauge::new(count.load(Ordering::Relaxed)).encode(sessions.encode_family(&[("state", *label)])?)?;
    }
    encode_counter(
        encoder,
        names::SCCP_SESSIONS_CLOSED,
        "SCCP sessions ended, by reason.",
        "reason",
        SccpCloseReason::ALL.iter().zip(&stats.closed).map(|(r, c)| (r.label(), c.load(Ordering::Relaxed))),
    )?;
    encode_counter(
        encoder,
        names::SCCP_FRAMING_ERRORS,
        "SCCP connections closed for bytes that are not Skinny, by reason.",
        "reason",
        FramingError::ALL.iter().zip(&stats.framing_errors).map(|(e, c)| (e.label(), c.load(Ordering::Relaxed))),
    )?;
    let standby = encoder.encode_descriptor(
        names::SCCP_STANDBY_KEEPALIVES,
        "Keepalives of standby SCCP connections (regedge as backup call manager), not acked.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(stats.standby_keepalives.load(Ordering::Relaxed)).encode(standby)
}

fn encode_registrar(encoder: &mut DescriptorEncoder, registrar: &Registrar) -> std::fmt::Result {
    let stats = &registrar.stats;
    let mut registrations = encoder.encode_descriptor(
        names::REGISTRATIONS,
        "REGISTERs by what became of them.",
        None,
        MetricType::Counter,
    )?;
    for (outcome, count) in RegistrationOutcome::ALL.iter().zip(&stats.outcomes) {
        let labels = [("protocol", "sip"), ("outcome", outcome.label())];
        ConstCounter::new(count.load(Ordering::Relaxed)).encode(registrations.encode_family(&labels)?)?;
    }
    let mut bindings =
        encoder.encode_descriptor(names::BINDINGS, "Phones registered through this node.", None, MetricType::Gauge)?;
    ConstGauge::new(registrar.registry.len() as i64).encode(bindings.encode_family(&[("protocol", "sip")])?)?;

    let routing = &registrar.routing;
    let per_backend = registrar.registry.per_backend(routing.backends.len());
    let mut up = encoder.encode_descriptor(names::BACKEND_UP, "1 when the backend is up.", None, MetricType::Gauge)?;
    // The config's backends; after a reload, the bindings still on a retired definition
    // count under its name (summed with a live one of the same name).
    let live = routing.live_backends();
    for backend in live.iter().map(|id| routing.backend(*id)) {
        let state = i64::from(backend.state() == BackendState::Up);
        ConstGauge::new(state).encode(up.encode_family(&[("backend", backend.name.as_str())])?)?;
    }
    let mut held = encoder.encode_descriptor(
        names::BACKEND_BINDINGS,
        "Bindings held on each backend.",
        None,
        MetricType::Gauge,
    )?;
    let mut held_by_name: Vec<(&str, usize)> = live.iter().map(|id| (routing.backend(*id).name.as_str(), 0)).collect();
    for (backend, count) in routing.backends.iter().zip(per_backend) {
        match held_by_name.iter_mut().find(|(name, _)| *name == backend.name) {
            Some((_, held)) => *held += count,
            None if count > 0 => held_by_name.push((backend.name.as_str(), count)),
            None => {}
        }
    }
    for (name, count) in held_by_name {
        ConstGauge::new(count as i64).encode(held.encode_family(&[("backend", name)])?)?;
    }
    let mut failovers = encoder.encode_descriptor(
        names::FAILOVERS,
        "Phones moved to another backend of their group.",
        None,
        MetricType::Counter,
    )?;
    for group in routing.live_groups().into_iter().map(|id| &routing.groups[id.0]) {
        let count = stats.failovers.get(&group.name).map_or(0, |c| *c);
        ConstCounter::new(count).encode(failovers.encode_family(&[("group", group.name.as_str())])?)?;
    }
    let timeouts = encoder.encode_descriptor(
        names::BACKEND_TIMEOUTS,
        "Forwarded REGISTERs without a final answer in time.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(stats.backend_timeouts.load(Ordering::Relaxed)).encode(timeouts)?;
    let lapsed = encoder.encode_descriptor(
        names::BINDINGS_LAPSED,
        "Bindings whose phone stopped refreshing.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(stats.lapsed.load(Ordering::Relaxed)).encode(lapsed)?;

    let counts: Vec<u64> = stats.response_ms.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let mut buckets: Vec<(f64, u64)> =
        RESPONSE_BUCKETS_MS.iter().zip(&counts).map(|(ms, c)| (*ms as f64 / 1000.0, *c)).collect();
    buckets.push((f64::MAX, counts[RESPONSE_BUCKETS_MS.len()]));
    let sum = stats.response_ms_sum.load(Ordering::Relaxed) as f64 / 1000.0;
    let mut histogram = encoder.encode_descriptor(
        names::BACKEND_RESPONSE,
        "Time from forwarding a REGISTER to its final answer.",
        None,
        MetricType::Histogram,
    )?;
    histogram.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
}

/// The /metrics endpoint on its own thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl MetricsServer {
    pub fn start(listen: SocketAddr, collector: MetricsCollector) -> std::io::Result<Self> {
        let server = Arc::new(tiny_http::Server::http(listen).map_err(std::io::Error::other)?);
        let local_addr =
            server.server_addr().to_ip().ok_or_else(|| std::io::Error::other("metrics listener is not IP"))?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || serve(&serving, &registry))?;
        Ok(Self { server, thread: Some(thread), local_addr })
    }
}

fn serve(server: &tiny_http::Server, registry: &Registry) {
    for request in server.incoming_requests() {
        let response = match (request.method(), request.url()) {
            (tiny_http::Method::Get, "/metrics") => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, registry) {
                    Ok(()) => tiny_http::Response::from_string(body).with_header(
                        tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE).expect("static header"),
                    ),
                    Err(_) => tiny_http::Response::from_string("encoding failed\n").with_status_code(500),
                }
            }
            (_, "/metrics") => tiny_http::Response::from_string("use GET\n").with_status_code(405),
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        if let Err(err) = request.respond(response) {
            tracing::debug!(error = %err, "metrics client went away");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
