//! The admin API's requests and answers, without I/O: a request (method, target,
//! Authorization) and the node's state in, a status and a JSON body out. The HTTP shell
//! is in the parent module.

use std::sync::Arc;

use serde::Serialize;

use super::Node;
use crate::{
    failover::{BackendId, Routing},
    registrar::Registrar,
    registry::Binding,
};

/// Page size of `/bindings` when the request names none, and the largest allowed.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// An HTTP method, as far as the API cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    /// HEAD, PUT, DELETE...: refused with 405 where the path exists.
    Other,
}

/// What the shell answers.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    /// The methods the path takes, for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Reply {
    fn ok(body: impl Serialize) -> Self {
        Self { status: 200, body: serde_json::to_value(body).expect("API bodies serialize"), allow: None }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "error": message.into(), "status": status });
        Self { status, body, allow: None }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        Self { allow: Some(allow), ..Self::error(405, format!("method not allowed; use {allow}")) }
    }
}

/// Handles one request. `token` is the configured bearer token (`None`: no token);
/// `authorization` the request's Authorization header; `now_ms` CLOCK_MONOTONIC.
pub fn handle(
    node: &Node,
    method: Method,
    target: &str,
    authorization: Option<&str>,
    token: Option<&str>,
    now_ms: u64,
) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let get_only = |reply: Reply| if method == Method::Get { reply } else { Reply::method_not_allowed("GET") };
    let post_only =
        |reply: &dyn Fn() -> Reply| if method == Method::Post { reply() } else { Reply::method_not_allowed("POST") };
    if segments.as_slice() == ["live"] {
        return get_only(Reply::ok(serde_json::json!({ "live": true })));
    }
    if let Some(token) = token
        && !authorized(authorization, token)
    {
        return Reply::error(401, "missing or wrong bearer token (Authorization: Bearer <admin.token>)");
    }
    match segments.as_slice() {
        ["ready"] => {
            if method != Method::Get {
                return Reply::method_not_allowed("GET");
            }
            match node.readiness.check() {
                Ok(checks) => Reply::ok(serde_json::json!({ "ready": true, "checks": checks })),
                Err(reason) => {
                    Reply { status: 503, body: serde_json::json!({ "ready": false, "reason": reason }), allow: None }
                }
            }
        }
        ["bindings"] => get_only(match node.registrar() {
            Some(registrar) => list_bindings(registrar, query, now_ms),
            None => no_registration_edge(),
        }),
        ["bindings", device, "remove"] => post_only(&|| match node.registrar() {
            Some(registrar) => remove_binding(registrar, device, now_ms),
            None => no_registration_edge(),
        }),
        ["backends"] => get_only(Reply::ok(backends(node))),
        ["backends", name, action @ ("drain" | "enable")] => post_only(&|| set_drained(node, name, *action == "drain")),
        ["groups"] => get_only(Reply::ok(groups(&node.routing))),
        _ => Reply::error(404, format!("no such resource: {path}")),
    }
}

/// Compares the bearer token without stopping at the first difference.
fn authorized(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")).map(str::trim) else {
        return false;
    };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn no_registration_edge() -> Reply {
    Reply::error(404, "this node has no SIP registration edge (no [[groups]] at start)")
}

/// One binding as the API shows it.
#[derive(Debug, Serialize)]
pub struct BindingView {
    pub device: String,
    pub aor: String,
    pub contact: String,
    pub flow: FlowView,
    pub call_id: String,
    pub cseq: u32,
    pub group: String,
    pub backend: String,
    /// Seconds until the phone's registration runs out (negative: overdue, lapsing).
    pub phone_expires_in: i64,
    /// Seconds until the backend's registration runs out.
    pub backend_expires_in: i64,
    /// Seconds since the phone was last heard.
    pub last_seen_ago: i64,
    /// Where its refreshes are answered: `answering` (the kernel), `flagged` (in the
    /// kernel map, answered in userspace), `absent` (userspace only).
    pub kernel: &'static str,
}

#[derive(Debug, Serialize)]
pub struct FlowView {
    pub transport: &'static str,
    pub peer: String,
    pub local: String,
}

fn seconds_from(now_ms: u64, at_ms: u64) -> i64 {
    (at_ms as i64 - now_ms as i64).div_euclid(1000)
}

fn binding_view(registrar: &Registrar, device: &str, binding: &Binding, now_ms: u64) -> BindingView {
    let routing = &registrar.routing;
    BindingView {
        device: device.to_owned(),
        aor: binding.aor.clone(),
        contact: binding.contact.clone(),
        flow: FlowView {
            transport: binding.flow.transport.label(),
            peer: binding.flow.peer.to_string(),
            local: binding.flow.local.to_string(),
        },
        call_id: binding.call_id.clone(),
        cseq: binding.cseq,
        group: routing.groups.get(binding.group.0).map_or_else(String::new, |g| g.name.clone()),
        backend: routing.backends.get(binding.backend.0).map_or_else(String::new, |b| b.name.clone()),
        phone_expires_in: seconds_from(now_ms, binding.phone_expires_at_ms),
        backend_expires_in: seconds_from(now_ms, binding.backend_valid_until_ms),
        last_seen_ago: -seconds_from(now_ms, binding.last_seen_ms),
        kernel: registrar.kernel_mirror(device, binding).label(),
    }
}

/// What `/bindings` selects: every filter given must match.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BindingQuery {
    pub device: Option<String>,
    pub aor: Option<String>,
    pub flow: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

impl BindingQuery {
    /// Reads `device`, `aor`, `flow`, `offset`, `limit` (percent-decoded); anything else,
    /// a repeated parameter or a bad number is an error.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = Self { limit: DEFAULT_LIMIT, ..Self::default() };
        let mut seen = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| format!("{key}: invalid percent-encoding"))?;
            if seen.contains(&key) {
                return Err(format!("{key} given more than once"));
            }
            seen.push(key);
            let number = |value: &str| value.parse::<usize>().map_err(|_| format!("{key}={value:?} is not a number"));
            match key {
                "device" => parsed.device = Some(value),
                "aor" => parsed.aor = Some(value),
                "flow" => parsed.flow = Some(value),
                "offset" => parsed.offset = number(&value)?,
                "limit" => {
                    parsed.limit = number(&value)?;
                    if !(1..=MAX_LIMIT).contains(&parsed.limit) {
                        return Err(format!("limit={} is outside 1 to {MAX_LIMIT}", parsed.limit));
                    }
                }
                other => return Err(format!("unknown parameter {other:?} (device, aor, flow, offset, limit)")),
            }
        }
        Ok(parsed)
    }

    /// Whether the binding of `device` is selected. `device` matches the registry key
    /// (`dev:SEP...`, `mac:...`, `aor:...`) or what follows its prefix, ignoring case;
    /// `aor` the address of record, with or without `sip:`, ignoring case; `flow` the
    /// phone's address (`ip:port`), optionally after its transport (`udp:ip:port`).
    pub fn selects(&self, device: &str, binding: &Binding) -> bool {
        let device_ok = self.device.as_deref().is_none_or(|want| {
            device.eq_ignore_ascii_case(want)
                || device.split_once(':').is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(want))
        });
        let aor_ok = self.aor.as_deref().is_none_or(|want| {
            binding.aor.eq_ignore_ascii_case(want)
                || binding.aor.strip_prefix("sip:").is_some_and(|rest| rest.eq_ignore_ascii_case(want))
        });
        let flow_ok = self.flow.as_deref().is_none_or(|want| {
            let peer = binding.flow.peer.to_string();
            want == peer || want.eq_ignore_ascii_case(&format!("{}:{peer}", binding.flow.transport.label()))
        });
        device_ok && aor_ok && flow_ok
    }
}

/// `%XX` sequences and `+` (a space) decoded; `None` for a bad sequence or bytes that are
/// not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Serialize)]
struct BindingPage {
    total: usize,
    offset: usize,
    limit: usize,
    bindings: Vec<BindingView>,
}

/// The selected bindings, sorted by device key (a stable order for paging), one page.
fn list_bindings(registrar: &Registrar, query: &str, now_ms: u64) -> Reply {
    let query = match BindingQuery::parse(query) {
        Ok(query) => query,
        Err(problem) => return Reply::error(400, problem),
    };
    // Keys first: only the page's bindings are copied.
    let mut selected: Vec<String> = Vec::new();
    registrar.registry.for_each(|device, binding| {
        if query.selects(device, binding) {
            selected.push(device.to_owned());
        }
    });
    selected.sort_unstable();
    let total = selected.len();
    let bindings = selected
        .iter()
        .skip(query.offset)
        .take(query.limit)
        .filter_map(|device| Some(binding_view(registrar, device, &registrar.registry.get(device)?, now_ms)))
        .collect();
    Reply::ok(BindingPage { total, offset: query.offset, limit: query.limit, bindings })
}

fn remove_binding(registrar: &Registrar, device: &str, now_ms: u64) -> Reply {
    let Some(device) = percent_decode(device) else {
        return Reply::error(400, "device: invalid percent-encoding");
    };
    match registrar.remove_binding(&device) {
        Some(binding) => {
            tracing::info!(%device, "binding removed through the admin API");
            let mut view = binding_view(registrar, &device, &binding, now_ms);
            view.kernel = crate::registrar::operator::KernelMirror::Absent.label();
            Reply::ok(serde_json::json!({ "removed": view }))
        }
        None => Reply::error(404, format!("no binding for device {device:?} (use the key /bindings shows)")),
    }
}

#[derive(Debug, Serialize)]
struct BackendView {
    name: String,
    address: String,
    protocol: &'static str,
    transport: &'static str,
    /// `up`, `down` or `draining`.
    state: &'static str,
    /// What the health checks say: `up` or `down`.
    health: &'static str,
    drained: bool,
    /// Taken out of the config by a reload, still holding bindings until they move.
    retired: bool,
    max_register_rate: u32,
    bindings: usize,
}

/// The backends of the config in its order, then retired ones that still hold bindings.
fn backends(node: &Node) -> Vec<BackendView> {
    let routing = &node.routing;
    let counts = node.registrar().map(|r| r.registry.per_backend(routing.backends.len()));
    let count = |id: BackendId| counts.as_ref().map_or(0, |c| c.get(id.0).copied().unwrap_or(0));
    let live = routing.live_backends();
    let retired = (0..routing.backends.len()).map(BackendId).filter(|id| !live.contains(id) && count(*id) > 0);
    live.iter()
        .copied()
        .chain(retired)
        .map(|id| {
            let backend = routing.backend(id);
            BackendView {
                name: backend.name.clone(),
                address: backend.address.to_string(),
                protocol: backend.protocol.label(),
                transport: backend.transport.label(),
                state: backend.state().label(),
                health: backend.health().label(),
                drained: backend.is_drained(),
                retired: backend.is_retired(),
                max_register_rate: backend.max_register_rate(),
                bindings: count(id),
            }
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct GroupView {
    name: String,
    protocol: &'static str,
    /// Priority order.
    backends: Vec<String>,
    /// The backend its phones register with now (the first one up), if any.
    active: Option<String>,
}

fn groups(routing: &Routing) -> Vec<GroupView> {
    routing
        .live_groups()
        .into_iter()
        .map(|id| {
            let group = &routing.groups[id.0];
            GroupView {
                name: group.name.clone(),
                protocol: group.protocol.label(),
                backends: group.backends.iter().map(|b| routing.backend(*b).name.clone()).collect(),
                active: routing.active_backend(id).map(|b| routing.backend(b).name.clone()),
            }
        })
        .collect()
}

fn set_drained(node: &Node, name: &str, drain: bool) -> Reply {
    let Some(name) = percent_decode(name) else {
        return Reply::error(400, "backend name: invalid percent-encoding");
    };
    let Some(id) = node.routing.backend_named(&name) else {
        return Reply::error(404, format!("no backend named {name:?} in the config"));
    };
    let was = match node.registrar() {
        Some(registrar) => registrar.set_drained(id, drain),
        None => node.routing.backend(id).set_drained(drain),
    };
    let backend = node.routing.backend(id);
    tracing::info!(backend = %name, drained = drain, was_drained = was, "backend {} through the admin API", if drain { "drained" } else { "enabled" });
    Reply::ok(serde_json::json!({
        "backend": name,
        "drained": drain,
        "changed": was != drain,
        "state": backend.state().label(),
    }))
}

/// The state behind `/ready`: `Ok` with what was checked, or why not.
pub trait Readiness: Send + Sync {
    fn check(&self) -> Result<serde_json::Value, String>;
}

/// A readiness that is always what it was built with (tests).
pub struct Fixed(pub Result<(), String>);

impl Readiness for Fixed {
    fn check(&self) -> Result<serde_json::Value, String> {
        self.0.clone().map(|()| serde_json::json!({}))
    }
}

/// Shared between the shell and the handlers.
pub type SharedReadiness = Arc<dyn Readiness>;

#[cfg(test)]
mod tests {
    use arc_swap::ArcSwap;

    use super::*;
    use crate::{
        engine::Engine,
        failover::GroupId,
        io::workers::Shared,
        local_names::LocalNames,
        registrar::tests::registrar_from,
        registry::{Flow, Transport},
        sip::stateless::ToTag,
    };

    const CONFIG: &str = "[[backends]]\nname = \"cm1\"\naddress = \"10.0.0.11:5060\"\n\
                          [[backends]]\nname = \"cm2\"\naddress = \"10.0.0.12:5060\"\n\
                          [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\"]\n";
    const TOKEN: &str = "0123456789abcdef";
    const NOW_MS: u64 = 1_000_000;

    fn node(ready: Result<(), String>) -> Node {
        let registrar = registrar_from(CONFIG);
        for n in 1..=5u16 {
            let binding = Binding {
                aor: format!("sip:10{n}@example.net"),
                contact: format!("sip:10{n}@192.0.2.{n}:5060"),
                flow: Flow {
                    transport: Transport::Udp,
                    peer: format!("192.0.2.{n}:5060").parse().unwrap(),
                    local: "10.0.0.1:5060".parse().unwrap(),
                    connection: None,
                },
                call_id: format!("call-{n}"),
                cseq: 2,
                last_via: None,
                credentials: None,
                group: GroupId(0),
                backend: BackendId(usize::from(n % 2)),
                backend_granted: 3600,
                backend_valid_until_ms: NOW_MS + 3_000_000,
                phone_expires_at_ms: NOW_MS + 100_500,
                last_seen_ms: NOW_MS - 20_000,
                kernel: None,
            };
            registrar.registry.insert(format!("dev:SEP00241400000{n}"), binding);
        }
        let routing = Arc::clone(&registrar.routing);
        let names = LocalNames::new(&[], &["10.0.0.1:5060".parse().unwrap()], &[]);
        let shared = Arc::new(Shared::new(Engine::new(names, ToTag::for_node("test"), Some(registrar))));
        Node { routing, shared, readiness: Arc::new(Fixed(ready)), token: ArcSwap::from_pointee(TOKEN.to_owned()) }
    }

    fn get(node: &Node, target: &str) -> Reply {
        handle(node, Method::Get, target, Some(&format!("Bearer {TOKEN}")), Some(TOKEN), NOW_MS)
    }

    fn post(node: &Node, target: &str) -> Reply {
        handle(node, Method::Post, target, Some(&format!("Bearer {TOKEN}")), Some(TOKEN), NOW_MS)
    }

    fn devices(reply: &Reply) -> Vec<String> {
        reply.body["bindings"].as_array().unwrap().iter().map(|b| b["device"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn every_request_but_live_needs_the_token() {
        let node = node(Ok(()));
        assert_eq!(handle(&node, Method::Get, "/live", None, Some(TOKEN), NOW_MS).status, 200);
        for target in ["/ready", "/bindings", "/backends", "/groups"] {
            assert_eq!(handle(&node, Method::Get, target, None, Some(TOKEN), NOW_MS).status, 401, "{target}");
            let wrong = handle(&node, Method::Get, target, Some("Bearer 0123456789abcdeX"), Some(TOKEN), NOW_MS);
            assert_eq!(wrong.status, 401, "{target}");
            assert_eq!(get(&node, target).status, 200, "{target}");
        }
        assert_eq!(handle(&node, Method::Post, "/backends/cm1/drain", None, Some(TOKEN), NOW_MS).status, 401);
        assert!(!node.routing.backend(BackendId(0)).is_drained());
        assert_eq!(handle(&node, Method::Get, "/groups", None, None, NOW_MS).status, 200, "no token configured");
    }

    #[test]
    fn bindings_are_listed_in_device_order_a_page_at_a_time_and_looked_up() {
        let node = node(Ok(()));
        let page = get(&node, "/bindings?limit=2&offset=2");
        assert_eq!((page.status, page.body["total"].as_u64(), page.body["limit"].as_u64()), (200, Some(5), Some(2)));
        assert_eq!(devices(&page), ["dev:SEP002414000003", "dev:SEP002414000004"]);
        let first = &get(&node, "/bindings?limit=1").body["bindings"][0];
        assert_eq!(first["aor"], "sip:101@example.net");
        assert_eq!(first["flow"]["peer"], "192.0.2.1:5060");
        assert_eq!((first["group"].as_str(), first["backend"].as_str()), (Some("default"), Some("cm2")));
        assert_eq!(
            (first["phone_expires_in"].as_i64(), first["backend_expires_in"].as_i64(), first["last_seen_ago"].as_i64()),
            (Some(100), Some(3000), Some(20))
        );
        assert_eq!(first["kernel"], "absent");
        assert_eq!(devices(&get(&node, "/bindings?device=sep002414000002")), ["dev:SEP002414000002"]);
        assert_eq!(devices(&get(&node, "/bindings?aor=sip%3A103%40example.net")), ["dev:SEP002414000003"]);
        assert_eq!(devices(&get(&node, "/bindings?aor=104@example.net")), ["dev:SEP002414000004"]);
        assert_eq!(devices(&get(&node, "/bindings?flow=udp:192.0.2.5:5060")), ["dev:SEP002414000005"]);
        let none = get(&node, "/bindings?flow=192.0.2.9:5060");
        assert_eq!((none.status, none.body["total"].as_u64()), (200, Some(0)));
        for bad in [
            "/bindings?limit=0",
            "/bindings?limit=x",
            "/bindings?offset=-1",
            "/bindings?colour=red",
            "/bindings?aor=%zz",
        ] {
            let reply = get(&node, bad);
            assert_eq!(reply.status, 400, "{bad}");
            assert!(reply.body["error"].is_string(), "{bad}: {:?}", reply.body);
        }
    }

    #[test]
    fn mutations_take_post_only() {
        let node = node(Ok(()));
        for target in ["/backends/cm1/drain", "/backends/cm1/enable", "/bindings/dev:SEP002414000001/remove"] {
            let reply = get(&node, target);
            assert_eq!((reply.status, reply.allow), (405, Some("POST")), "{target}");
        }
        assert!(!node.routing.backend(BackendId(0)).is_drained());
        assert_eq!(node.registrar().unwrap().registry.len(), 5);
        let reply = post(&node, "/bindings");
        assert_eq!((reply.status, reply.allow), (405, Some("GET")));
        assert_eq!(get(&node, "/nothing").status, 404);
    }

    #[test]
    fn drain_enable_and_remove() {
        let node = node(Ok(()));
        let drained = post(&node, "/backends/cm1/drain");
        assert_eq!(
            (drained.status, drained.body["state"].as_str(), drained.body["changed"].as_bool()),
            (200, Some("draining"), Some(true))
        );
        assert_eq!(post(&node, "/backends/cm1/drain").body["changed"], false);
        let backends = get(&node, "/backends").body;
        assert_eq!(backends[0]["name"], "cm1");
        assert_eq!((backends[0]["state"].as_str(), backends[0]["health"].as_str()), (Some("draining"), Some("up")));
        assert_eq!((backends[0]["bindings"].as_u64(), backends[1]["bindings"].as_u64()), (Some(2), Some(3)));
        assert_eq!(get(&node, "/groups").body[0]["active"], "cm2");
        assert_eq!(post(&node, "/backends/cm1/enable").body["state"], "up");
        assert_eq!(get(&node, "/groups").body[0]["active"], "cm1");
        assert_eq!(post(&node, "/backends/cm9/drain").status, 404);

        let removed = post(&node, "/bindings/dev:SEP002414000001/remove");
        assert_eq!((removed.status, removed.body["removed"]["aor"].as_str()), (200, Some("sip:101@example.net")));
        assert_eq!(get(&node, "/bindings").body["total"], 4);
        assert_eq!(post(&node, "/bindings/dev:SEP002414000001/remove").status, 404);
    }

    #[test]
    fn ready_says_why_not() {
        assert_eq!(get(&node(Ok(())), "/ready").body["ready"], true);
        let not = get(&node(Err("shutting down".into())), "/ready");
        assert_eq!((not.status, not.body["reason"].as_str()), (503, Some("shutting down")));
    }
}
