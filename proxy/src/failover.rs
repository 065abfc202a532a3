//! Failover groups: backends with their health and registration rate limit, ordered
//! groups of them (a CUCM Call Manager Group), and the rules that put a device in a group.
//! The table is read-mostly and shared by every event loop; health changes are atomic.

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

use crate::{
    config::{BackendConfig, BackendProtocol, BackendTransport, Config, RuleMatcher},
    registrar::request::Device,
};

/// Index of a backend in [`Routing::backends`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub usize);

/// Index of a group in [`Routing::groups`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId(pub usize);

/// A backend's state as the health checker (or an operator) sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    Up = 0,
    Down = 1,
    /// Takes no new phones; existing ones move at their next refresh.
    Draining = 2,
}

impl BackendState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Up,
            1 => Self::Down,
            _ => Self::Draining,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Draining => "draining",
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `rate` stored (one second of burst).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated_ms: u64,
}

impl TokenBucket {
    pub fn new(rate: u32) -> Self {
        Self { rate: rate as f64, tokens: rate as f64, updated_ms: 0 }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: BackendProtocol,
    pub transport: BackendTransport,
    state: AtomicU8,
    limiter: Mutex<TokenBucket>,
}

impl Backend {
    fn new(config: &BackendConfig) -> Self {
        Self {
            name: config.name.clone(),
            address: config.address,
            protocol: config.protocol,
            transport: config.transport,
            state: AtomicU8::new(BackendState::Up as u8),
            limiter: Mutex::new(TokenBucket::new(config.max_register_rate)),
        }
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the state; returns the previous one.
    pub fn set_state(&self, state: BackendState) -> BackendState {
        BackendState::from_u8(self.state.swap(state as u8, Ordering::Relaxed))
    }

    /// One forwarded REGISTER's worth of the rate limit.
    pub fn try_admit(&self, now_ms: u64) -> bool {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner()).try_take(now_ms)
    }
}

#[derive(Debug)]
pub struct Group {
    pub name: String,
    /// Priority order.
    pub backends: Vec<BackendId>,
    /// What every backend of the group speaks (validated: one protocol per group).
    pub protocol: BackendProtocol,
}

/// Backends, groups and the rules that map devices to groups.
#[derive(Debug)]
pub struct Routing {
    pub backends: Vec<Backend>,
    pub groups: Vec<Group>,
    rules: Vec<(RuleMatcher, GroupId)>,
    default_group: Option<GroupId>,
}

impl Routing {
    /// Built from a validated config (every name it references exists).
    pub fn from_config(config: &Config) -> Self {
        let backends: Vec<Backend> = config.backends.iter().map(Backend::new).collect();
        let backend_id =
            |name: &str| BackendId(config.backends.iter().position(|b| b.name == name).expect("validated"));
        let groups: Vec<Group> = config
            .groups
            .iter()
            .map(|g| {
                let members: Vec<BackendId> = g.backends.iter().map(|b| backend_id(b)).collect();
                let protocol = members.first().map_or(BackendProtocol::Sip, |b| backends[b.0].protocol);
                Group { name: g.name.clone(), backends: members, protocol }
            })
            .collect();
        let group_id = |name: &str| config.groups.iter().position(|g| g.name == name).map(GroupId);
        let rules = config.rules.iter().filter_map(|r| Some((r.matcher(), group_id(&r.group)?))).collect();
        Self { backends, groups, rules, default_group: group_id(&config.routing.default_group) }
    }

    /// Whether any group is configured (else there is no registration edge).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.0]
    }

    /// The group of a device for `protocol`: the first matching rule whose group speaks
    /// it, else the default group if it does. A SIP phone and an SCCP phone with the same
    /// device name can so be matched by one rule set.
    pub fn group_for_protocol(&self, device: &Device, protocol: BackendProtocol) -> Option<GroupId> {
        let speaks = |g: &GroupId| self.groups[g.0].protocol == protocol;
        self.rules
            .iter()
            .filter(|(_, g)| speaks(g))
            .find(|(m, _)| matches(m, device))
            .map(|(_, g)| *g)
            .or(self.default_group.filter(speaks))
    }

    /// The backend a group's phones register with now: the first one that is up.
    pub fn active_backend(&self, group: GroupId) -> Option<BackendId> {
        self.groups[group.0].backends.iter().copied().find(|b| self.backend(*b).state() == BackendState::Up)
    }
}

fn matches(matcher: &RuleMatcher, device: &Device) -> bool {
    match matcher {
        RuleMatcher::Device(pattern) => {
            device.name.as_deref().is_some_and(|n| glob_match(pattern.as_bytes(), n.as_bytes()))
        }
        RuleMatcher::MacPrefix(prefix) => device.mac.as_deref().is_some_and(|m| m.starts_with(prefix.as_str())),
        RuleMatcher::Domain(domain) => device.domain == *domain,
    }
}

/// `*` matches any run, `?` one character; letters compare case-insensitively.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((bp, bt)) => {
                    p = bp + 1;
                    t = bt + 1;
                    backtrack = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("SEP0011*", "SEP001122334455", true),
            ("sep0011*", "SEP001122334455", true),
            ("SEP0011*", "SEP0012", false),
            ("SEP????22*", "SEP00112233", true),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ] {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn rules_pick_groups_in_order_then_the_default() {
        let config = crate::config::Config::from_toml(
            r#"
            [routing]
            default_group = "main"
            [[backends]]
            name = "cm1"
            address = "10.0.0.11:5060"
            [[groups]]
            name = "main"
            backends = ["cm1"]
            [[groups]]
            name = "lab"
            backends = ["cm1"]
            [[groups]]
            name = "partner"
            backends = ["cm1"]
            [[rules]]
            group = "lab"
            device = "SEP0011*"
            [[rules]]
            group = "partner"
            mac_prefix = "AA:BB"
            [[rules]]
            group = "lab"
            domain = "lab.example.net"
            "#,
            "test",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let routing = Routing::from_config(&config);
        let device = |name: Option<&str>, mac: Option<&str>, domain: &str| Device {
            key: String::new(),
            name: name.map(str::to_owned),
            mac: mac.map(str::to_owned),
            domain: domain.to_owned(),
        };
        let group_name =
            |d: &Device| routing.groups[routing.group_for_protocol(d, BackendProtocol::Sip).unwrap().0].name.clone();
        assert_eq!(group_name(&device(Some("SEP001122334455"), Some("001122334455"), "example.net")), "lab");
        assert_eq!(group_name(&device(None, Some("aabbcc000001"), "example.net")), "partner");
        assert_eq!(group_name(&device(None, None, "lab.example.net")), "lab");
        assert_eq!(group_name(&device(Some("SEP999999999999"), None, "example.net")), "main");
    }

    #[test]
    fn sip_and_sccp_phones_of_one_rule_set_find_groups_of_their_protocol() {
        let config = crate::config::Config::from_toml(
            r#"
            [routing]
            default_group = "sip"
            [[backends]]
            name = "sip1"
            address = "10.0.0.11:5060"
            [[backends]]
            name = "skinny1"
            address = "10.0.0.12:2000"
            protocol = "sccp"
            transport = "tcp"
            [[groups]]
            name = "sip"
            backends = ["sip1"]
            [[groups]]
            name = "skinny"
            backends = ["skinny1"]
            [[rules]]
            group = "sip"
            device = "SEP*"
            [[rules]]
            group = "skinny"
            device = "SEP*"
            "#,
            "test",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let routing = Routing::from_config(&config);
        let phone =
            Device { key: String::new(), name: Some("SEP001122334455".into()), mac: None, domain: String::new() };
        let name = |g: Option<GroupId>| g.map(|g| routing.groups[g.0].name.clone());
        assert_eq!(name(routing.group_for_protocol(&phone, BackendProtocol::Sip)).as_deref(), Some("sip"));
        assert_eq!(name(routing.group_for_protocol(&phone, BackendProtocol::Sccp)).as_deref(), Some("skinny"));
        let other = Device { name: Some("ATA001122334455".into()), ..phone };
        assert_eq!(routing.group_for_protocol(&other, BackendProtocol::Sccp), None, "the default group speaks SIP");
    }

    #[test]
    fn token_bucket_paces() {
        let mut bucket = TokenBucket::new(10);
        let taken = (0..20).filter(|_| bucket.try_take(0)).count();
        assert_eq!(taken, 10, "one second of burst");
        assert!(!bucket.try_take(50));
        assert!(bucket.try_take(100), "one token per 100 ms");
        assert!(!bucket.try_take(100));
    }
}
