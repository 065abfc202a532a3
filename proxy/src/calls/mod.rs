//! Calls through the edge: every request that is not a REGISTER or a keepalive, both
//! ways, proxied statelessly (RFC 3261 §16.11). No I/O: a request and the flow it came
//! on go in, the forwarded bytes and where they go come out.
//!
//! Where a request goes, in this order:
//! 1. Route values naming this node (host one of `LocalNames`, port one of the listen
//!    ports) are removed. A flow token in one of them (Path, Record-Route) names a flow:
//!    the last token that is not the sender's own flow is where the request goes. A token
//!    this node did not issue, or a TCP flow whose connection is gone, gets 430 Flow Failed
//!    (RFC 5626 §5.3).
//! 2. Else, if a Route remains, the next hop is that Route: a configured SIP backend, or
//!    403 (the edge relays to its backends only).
//! 3. Else a Request-URI naming this node with a token for its user (a contact rewritten
//!    for a backend that does not honour Path) names the flow; the Request-URI becomes
//!    the phone's own contact again.
//! 4. Else, from a registered phone: the backend that holds its registration (the group's
//!    active backend if that one is not up). From a backend: 404 (nothing names a phone).
//!    From anyone else: 403 Not Registered.
//!
//! A request that starts a dialog toward a phone whose binding lapsed gets 480; a
//! Max-Forwards of 0 gets 483. ACK is never answered: one that cannot be routed is
//! dropped. CANCEL and the ACK of a non-2xx carry the INVITE's Via branch and Route, so
//! they take the INVITE's path and get its branch downstream (the branch is a hash of the
//! incoming branch, Call-ID, CSeq number and destination — not the method).
//!
//! Each forwarded request gets our Via with `rgf=<token of the sender's flow>`; a response
//! that comes back with it on top loses it and goes to that flow. A request that starts a
//! dialog gets Record-Route entries carrying the phone's token: one, or two when the
//! address or transport facing each side differs (double Record-Route), so in-dialog
//! requests from either side come back through this node and reach the phone's flow.

pub mod token;

use std::net::SocketAddr;

use dashmap::DashMap;

use crate::{
    config::BackendProtocol,
    failover::{BackendId, BackendState},
    local_names::LocalNames,
    registrar::{Destination, Held, Registrar, Send},
    registry::{Binding, ConnectionId, Flow, Transport},
    sip::{
        HeaderName, Message, StartLine,
        contact::{self, Contact},
        forward::{self, ProxiedRequest, TooManyHops},
        message::trim,
        uri::SipUri,
    },
};

/// Branches of requests this node proxies start with this (after the magic cookie);
/// REGISTERs the registrar forwards use `z9hG4bK-rg`.
pub const BRANCH_PREFIX: &str = "z9hG4bK-rp";
/// The Via parameter naming the flow a response goes back over.
const RETURN_PARAM: &[u8] = b"rgf";

/// Which way a request went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toward {
    /// To a call server.
    Backend,
    /// To a phone's flow.
    Phone,
}

impl Toward {
    pub const ALL: [Self; 2] = [Self::Backend, Self::Phone];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Backend => "backend",
            Self::Phone => "phone",
        }
    }
}

/// Request methods as a metric label (a fixed set; anything else is `other`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodLabel(usize);

impl MethodLabel {
    pub const LABELS: [&'static str; 15] = [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "UPDATE",
        "PRACK",
        "INFO",
        "REFER",
        "NOTIFY",
        "SUBSCRIBE",
        "MESSAGE",
        "OPTIONS",
        "PUBLISH",
        "REGISTER",
        "other",
    ];

    pub fn of(method: &[u8]) -> Self {
        let last = Self::LABELS.len() - 1;
        Self(Self::LABELS[..last].iter().position(|l| l.as_bytes() == method).unwrap_or(last))
    }

    pub const fn index(self) -> usize {
        self.0
    }

    pub const fn label(self) -> &'static str {
        Self::LABELS[self.0]
    }
}

/// Requests the edge answers itself instead of routing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 430: a flow token this node did not issue, or a TCP flow that is gone.
    FlowFailed,
    /// 483: Max-Forwards reached 0.
    TooManyHops,
    /// 480: a request starting a dialog with a phone whose binding lapsed.
    BindingLapsed,
    /// 403: a request starting a dialog from a flow with no registration.
    NotRegistered,
    /// 403: the next hop is not one of this edge's backends.
    RouteNotAllowed,
    /// 404: a request from a backend that names no phone (no flow token).
    NoFlow,
    /// 503: the phone's group has no backend up.
    NoBackend,
}

impl Refusal {
    pub const ALL: [Self; 7] = [
        Self::FlowFailed,
        Self::TooManyHops,
        Self::BindingLapsed,
        Self::NotRegistered,
        Self::RouteNotAllowed,
        Self::NoFlow,
        Self::NoBackend,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::FlowFailed => "flow_failed",
            Self::TooManyHops => "too_many_hops",
            Self::BindingLapsed => "binding_lapsed",
            Self::NotRegistered => "not_registered",
            Self::RouteNotAllowed => "route_not_allowed",
            Self::NoFlow => "no_flow",
            Self::NoBackend => "no_backend",
        }
    }

    pub const fn status(self) -> (u16, &'static str) {
        match self {
            Self::FlowFailed => (430, "Flow Failed"),
            Self::TooManyHops => (483, "Too Many Hops"),
            Self::BindingLapsed => (480, "Temporarily Unavailable"),
            Self::NotRegistered => (403, "Not Registered"),
            Self::RouteNotAllowed => (403, "Next Hop Not A Backend"),
            Self::NoFlow => (404, "No Flow Token"),
            Self::NoBackend => (503, "No Backend Available"),
        }
    }
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    Forwarded(MethodLabel, Toward),
    Refused(Refusal),
    /// An ACK that could not be routed (never answered).
    AckDropped,
    /// A request for a phone of another node, dropped while the cluster store is asked
    /// about it (its retransmission is routed).
    AwaitingStore,
}

/// What routing reads: the registry and backends (through the registrar), the names that
/// mean this node, and which TCP connections are open.
pub struct Router<'a> {
    pub registrar: &'a Registrar,
    pub local_names: &'a LocalNames,
    /// Open TCP connections (see `Engine::connections`).
    pub connections: &'a DashMap<ConnectionId, usize>,
}

/// Who sent a request.
enum Sender {
    Phone(Binding),
    Backend,
    Unknown,
}

/// Where a request goes.
enum Target {
    Backend(BackendId),
    Flow(Flow),
}

fn has_to_tag(msg: &Message<'_>) -> bool {
    msg.headers_named(HeaderName::To).next().is_some_and(|h| crate::sip::stateless::has_tag(h.value))
}

impl Router<'_> {
    fn key(&self) -> u64 {
        self.registrar.node().token_key
    }

    fn names_us(&self, uri: &SipUri<'_>) -> bool {
        self.local_names.contains(uri.host) && self.local_names.has_port(uri.port_or_default())
    }

    /// A SIP backend at the host and port of `uri` (an IP literal).
    fn backend_at(&self, uri: &SipUri<'_>) -> Option<BackendId> {
        let host = std::str::from_utf8(uri.host).ok()?;
        let ip: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
        let wanted = SocketAddr::new(ip, uri.port_or_default());
        let routing = &self.registrar.routing;
        (0..routing.backends.len())
            .map(BackendId)
            .find(|&id| routing.backend(id).protocol == BackendProtocol::Sip && routing.backend(id).address == wanted)
    }

    fn sender(&self, flow: &Flow) -> Sender {
        if let Some((_, binding)) = self.registrar.binding_by_flow(flow) {
            return Sender::Phone(binding);
        }
        let routing = &self.registrar.routing;
        let from_backend = routing.backends.iter().any(|b| {
            b.protocol == BackendProtocol::Sip
                && b.address.ip() == flow.peer.ip()
                && (flow.transport == Transport::Tcp || b.address.port() == flow.peer.port())
        });
        if from_backend { Sender::Backend } else { Sender::Unknown }
    }

    /// The backend for a phone's request: its registration's, else its group's active one.
    fn backend_for(&self, binding: &Binding) -> Option<BackendId> {
        let routing = &self.registrar.routing;
        if routing.backend(binding.backend).state() == BackendState::Up {
            return Some(binding.backend);
        }
        routing.active_backend(binding.group)
    }

    /// Routes request `msg` (`raw`) from `flow`; the forwarded request goes to `sends`.
    pub fn route(&self, msg: &Message<'_>, raw: &[u8], flow: Flow, sends: &mut Vec<Send>) -> Routed {
        let StartLine::Request { method, uri: request_uri } = msg.start else { return Routed::AckDropped };
        let is_ack = method == b"ACK";
        let refuse = |refusal| if is_ack { Routed::AckDropped } else { Routed::Refused(refusal) };
        let in_dialog = has_to_tag(msg);
        let key = self.key();
        // RFC 3261 §16.3 step 3: a request that may go no further is answered first.
        if forward::max_forwards(msg) == Some(0) {
            return refuse(Refusal::TooManyHops);
        }

        // 1. Route values naming this node, and the flow tokens in them.
        let routes: Vec<&[u8]> = msg
            .headers()
            .filter(|h| h.name.eq_ignore_ascii_case(b"route"))
            .flat_map(|h| contact::split_values(h.value))
            .collect();
        let mut stripped = 0;
        let mut destination = None;
        for value in &routes {
            let Some(uri) = Contact::parse(value).and_then(|c| SipUri::parse(c.uri)) else { break };
            if !self.names_us(&uri) {
                break;
            }
            stripped += 1;
            if let Some(user) = uri.user.filter(|u| !u.is_empty()) {
                match token::decode(user, key) {
                    Ok(named) if named != flow => destination = Some(named),
                    Ok(_) => {}
                    Err(_) => return refuse(Refusal::FlowFailed),
                }
            }
        }
        let next_route = routes.get(stripped).and_then(|v| Contact::parse(v)).and_then(|c| SipUri::parse(c.uri));
        if stripped < routes.len() && next_route.is_none() {
            return refuse(Refusal::RouteNotAllowed);
        }

        // 3. A contact rewritten to this node for a backend that does not honour Path.
        let mut rewritten_contact = false;
        if destination.is_none()
            && next_route.is_none()
            && let Some(uri) = SipUri::parse(request_uri).filter(|u| self.names_us(u))
            && let Some(user) = uri.user.filter(|u| token::looks_like_token(u))
        {
            match token::decode(user, key) {
                Ok(named) => {
                    destination = Some(named);
                    rewritten_contact = true;
                }
                Err(_) => return refuse(Refusal::FlowFailed),
            }
        }

        let sender = self.sender(&flow);
        let starts_dialog = !in_dialog && method != b"CANCEL" && !is_ack;
        let mut new_request_uri = None;
        let target = match (destination, next_route) {
            (Some(phone), _) => {
                if phone.transport == Transport::Tcp
                    && !phone.connection.is_some_and(|c| self.connections.contains_key(&c))
                {
                    return refuse(Refusal::FlowFailed);
                }
                let binding = match self.registrar.find_by_flow(&phone) {
                    Held::Here(found) => Some(found),
                    // The cluster store is asked about a phone another node registered: a
                    // UDP sender's retransmission finds the answer.
                    Held::Asked if (starts_dialog || rewritten_contact) && flow.transport == Transport::Udp => {
                        return Routed::AwaitingStore;
                    }
                    Held::Asked | Held::Nowhere => None,
                };
                if (starts_dialog || rewritten_contact) && binding.is_none() {
                    return refuse(Refusal::BindingLapsed);
                }
                if rewritten_contact {
                    new_request_uri = binding.map(|(_, b)| b.contact);
                }
                Target::Flow(phone)
            }
            (None, Some(next)) => {
                if starts_dialog && matches!(sender, Sender::Unknown) {
                    return refuse(Refusal::NotRegistered);
                }
                match self.backend_at(&next) {
                    Some(backend) => Target::Backend(backend),
                    None => return refuse(Refusal::RouteNotAllowed),
                }
            }
            (None, None) => match sender {
                Sender::Phone(binding) => match self.backend_for(&binding) {
                    Some(backend) => Target::Backend(backend),
                    None => return refuse(Refusal::NoBackend),
                },
                Sender::Backend => return refuse(Refusal::NoFlow),
                Sender::Unknown => return refuse(Refusal::NotRegistered),
            },
        };

        // Our Via, facing the target, with a branch that CANCEL and ACK reproduce.
        let (transport, sent_by) = match target {
            Target::Backend(id) => self.registrar.backend_facing(id),
            Target::Flow(phone) => (phone.transport, phone.local),
        };
        let top_via = msg.headers_named(HeaderName::Via).next().map_or(&b""[..], |h| h.value);
        let top_via = contact::split_values(top_via).next().unwrap_or_default();
        let incoming_branch =
            forward::via_param(top_via, b"branch").filter(|b| b.starts_with(b"z9hG4bK")).unwrap_or(top_via);
        let call_id = msg.headers_named(HeaderName::CallId).next().map_or(&b""[..], |h| trim(h.value));
        let cseq_number = msg
            .headers_named(HeaderName::CSeq)
            .next()
            .and_then(|h| crate::sip::stateless::parse_cseq(h.value))
            .map_or(0, |(n, _)| n);
        let target_key = match target {
            Target::Backend(id) => format!("b{}", id.0),
            Target::Flow(phone) => token::encode(&phone, 0),
        };
        let branch = branch_hash(key, &[incoming_branch, call_id, &cseq_number.to_be_bytes(), target_key.as_bytes()]);
        let via = format!(
            "SIP/2.0/{} {sent_by};branch={BRANCH_PREFIX}{branch:016x};rgf={}",
            transport.via(),
            token::encode(&flow, key)
        );

        // Record-Route with the phone's token, facing the target and facing the sender.
        let mut record_route = Vec::new();
        if starts_dialog {
            let phone = match target {
                Target::Flow(phone) => phone,
                Target::Backend(_) => flow,
            };
            let phone_token = token::encode(&phone, key);
            let entry = |transport: Transport, at: SocketAddr| {
                let param = if transport == Transport::Tcp { ";transport=tcp" } else { "" };
                format!("<sip:{phone_token}@{at}{param};lr>")
            };
            // Facing a backend: the advertised address, which every node of a cluster answers.
            let at = match target {
                Target::Backend(id) => self.registrar.advertised_facing(id).1,
                Target::Flow(_) => sent_by,
            };
            record_route.push(entry(transport, at));
            let facing_sender = entry(flow.transport, flow.local);
            if facing_sender != record_route[0] {
                record_route.push(facing_sender);
            }
        }
        let how = ProxiedRequest {
            request_uri: new_request_uri.as_deref().map(str::as_bytes),
            via: &via,
            source: flow.peer,
            record_route: &record_route,
            strip_routes: stripped,
        };
        let mut bytes = Vec::with_capacity(raw.len() + 300);
        if forward::proxy_request(msg, raw, &how, &mut bytes) == Err(TooManyHops) {
            return refuse(Refusal::TooManyHops);
        }
        let (to, toward) = match target {
            Target::Backend(id) => (Destination::Backend(id), Toward::Backend),
            Target::Flow(phone) => (Destination::Phone(phone), Toward::Phone),
        };
        sends.push(Send { to, bytes });
        Routed::Forwarded(MethodLabel::of(method), toward)
    }

    /// Relays a response to a request this node proxied: our Via off, to the flow named
    /// in it. False when the response is not one (the caller drops it).
    pub fn relay_response(&self, msg: &Message<'_>, raw: &[u8], sends: &mut Vec<Send>) -> bool {
        let Some(top) = msg.headers_named(HeaderName::Via).next() else { return false };
        let top = contact::split_values(top.value).next().unwrap_or_default();
        if !forward::via_param(top, b"branch").is_some_and(|b| b.starts_with(BRANCH_PREFIX.as_bytes())) {
            return false;
        }
        let Some(flow) = forward::via_param(top, RETURN_PARAM).and_then(|t| token::decode(t, self.key()).ok()) else {
            return false;
        };
        let mut bytes = Vec::with_capacity(raw.len());
        forward::relay_response(msg, raw, &mut bytes);
        sends.push(Send { to: Destination::Phone(flow), bytes });
        true
    }
}

fn branch_hash(key: u64, parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests;
