//! Failover groups: backends with their health and registration rate limit, ordered
//! groups of them (a CUCM Call Manager Group), and the rules that put a device in a group.
//! The table is read-mostly and shared by every event loop; health changes are atomic.
//!
//! Reloads keep every id valid. A [`BackendId`] or [`GroupId`] names one definition for
//! the life of the process: backends and groups live in append-only tables, and
//! [`Routing::reload`] keeps the slot of each backend whose definition is unchanged (its
//! health, its rate limiter and its bindings stay), adds a slot for each new or changed
//! definition, and retires the slots the config no longer has. Rules, the default group
//! and the list of live slots are swapped whole. Nothing that holds an id (bindings,
//! REGISTERs waiting for an answer, SCCP sessions, kernel entries) is rewritten under the
//! event loops' feet: a retired backend is in no group, so its phones move at their next
//! refresh, and a retired group answers for the slot that now has its name.

use std::{
    fmt,
    net::SocketAddr,
    ops::Index,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;

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

    /// Tokens per second.
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }

    /// A new rate from now on; what is stored is capped at one second of the new rate.
    pub fn set_rate(&mut self, rate: u32) {
        self.rate = rate as f64;
        self.tokens = self.tokens.min(self.rate);
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
    /// Honours Path; else contacts are rewritten to flow-token URIs (`[[backends]] path`).
    pub path: bool,
    /// Where this node talks to it from.
    pub link: Link,
    /// What the health checks say: `Up` or `Down`.
    state: AtomicU8,
    /// Drained by an operator: it takes no phones, whatever its health.
    drained: AtomicBool,
    /// No longer in the config (since a reload): in no group, not probed.
    retired: AtomicBool,
    limiter: Mutex<TokenBucket>,
}

/// Where this node talks to a backend from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Index in `[sip] listen` of the socket that faces the backend.
    pub listener: usize,
    /// That socket's address as the backend reaches it.
    pub facing: SocketAddr,
}

impl Link {
    /// The first `[sip] listen` address of the backend's family, as written (a wildcard
    /// stays one: resolving it is the caller's job); `None` when there is none.
    pub fn first_of_family(config: &Config, backend: &BackendConfig) -> Option<Link> {
        let (listener, facing) =
            config.sip.listen.iter().enumerate().find(|(_, l)| l.is_ipv4() == backend.address.is_ipv4())?;
        Some(Link { listener, facing: *facing })
    }
}

impl Backend {
    fn new(config: &BackendConfig, link: Link) -> Self {
        Self {
            name: config.name.clone(),
            address: config.address,
            protocol: config.protocol,
            transport: config.transport,
            path: config.path,
            link,
            state: AtomicU8::new(BackendState::Up as u8),
            drained: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            limiter: Mutex::new(TokenBucket::new(config.max_register_rate)),
        }
    }

    /// What phones see: `Down` when the health checks say so, else `Draining` when an
    /// operator drained it, else `Up`.
    pub fn state(&self) -> BackendState {
        match BackendState::from_u8(self.state.load(Ordering::Relaxed)) {
            BackendState::Down => BackendState::Down,
            _ if self.drained.load(Ordering::Relaxed) => BackendState::Draining,
            _ => BackendState::Up,
        }
    }

    /// What the health checks say, drained or not: `Up` or `Down`.
    pub fn health(&self) -> BackendState {
        match BackendState::from_u8(self.state.load(Ordering::Relaxed)) {
            BackendState::Down => BackendState::Down,
            _ => BackendState::Up,
        }
    }

    /// Sets the health (`Up`, `Down`) or drains (`Draining`); returns the previous
    /// [`Backend::state`]. Health changes leave a drain in place.
    pub fn set_state(&self, state: BackendState) -> BackendState {
        let previous = self.state();
        match state {
            BackendState::Draining => self.drained.store(true, Ordering::Relaxed),
            health => self.state.store(health as u8, Ordering::Relaxed),
        }
        previous
    }

    /// Drains (`true`) or enables (`false`) the backend; returns whether it was drained.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed)
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Whether a reload took it out of the config.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Forwarded REGISTERs per second at most.
    pub fn max_register_rate(&self) -> u32 {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner()).rate()
    }

    /// Whether `config` defines this backend: everything but the rate limit, which a
    /// reload changes in place.
    fn is_defined_by(&self, config: &BackendConfig) -> bool {
        self.name == config.name
            && self.address == config.address
            && self.protocol == config.protocol
            && self.transport == config.transport
            && self.path == config.path
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
    /// The slot that answers for this group: itself while the config has it as it is,
    /// the slot of the same name after a reload changed it, [`NO_GROUP`] once the name
    /// is gone.
    current: AtomicUsize,
}

const NO_GROUP: usize = usize::MAX;

impl Group {
    /// Whether a reload took it out of the config (or replaced it with a new definition).
    pub fn is_retired(&self, id: GroupId) -> bool {
        self.current.load(Ordering::Relaxed) != id.0
    }
}

/// An append-only table: an entry's index and its address never change, so ids and
/// references stay valid while a reload adds entries.
pub struct Table<T> {
    slots: boxcar::Vec<T>,
}

impl<T> Table<T> {
    fn new() -> Self {
        Self { slots: boxcar::Vec::new() }
    }

    /// Entries ever added (live and retired).
    pub fn len(&self) -> usize {
        self.slots.count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.slots.get(index)
    }

    /// Every entry, in index order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|(_, entry)| entry)
    }

    fn push(&self, entry: T) -> usize {
        self.slots.push(entry)
    }
}

impl<T> Index<usize> for Table<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        &self.slots[index]
    }
}

impl<'a, T> IntoIterator for &'a Table<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Map<boxcar::Iter<'a, T>, fn((usize, &'a T)) -> &'a T>;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.iter().map(|(_, entry)| entry)
    }
}

impl<T: fmt::Debug> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What the config says now: the live slots in config order, and the rules.
#[derive(Debug, Default)]
struct Live {
    backends: Vec<BackendId>,
    groups: Vec<GroupId>,
    rules: Vec<(RuleMatcher, GroupId)>,
    default_group: Option<GroupId>,
}

/// What a reload changed, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoutingChanges {
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    /// Same name, another address, protocol, transport or `path`: a new backend whose
    /// phones move to it (or elsewhere in their group) at their next refresh.
    pub backends_redefined: Vec<String>,
    /// `(backend, old rate, new rate)`.
    pub rates_changed: Vec<(String, u32, u32)>,
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
    /// Same name, other backends or order.
    pub groups_changed: Vec<String>,
    pub rules_changed: bool,
}

impl RoutingChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for RoutingChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, names) in [
            ("backends added", &self.backends_added),
            ("backends removed", &self.backends_removed),
            ("backends redefined", &self.backends_redefined),
            ("groups added", &self.groups_added),
            ("groups removed", &self.groups_removed),
            ("groups changed", &self.groups_changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what}: {}", names.join(", ")));
            }
        }
        if !self.rates_changed.is_empty() {
            let rates: Vec<String> =
                self.rates_changed.iter().map(|(name, old, new)| format!("{name} {old} -> {new}/s")).collect();
            parts.push(format!("max_register_rate: {}", rates.join(", ")));
        }
        if self.rules_changed {
            parts.push("rules or default group changed".to_owned());
        }
        if parts.is_empty() {
            return f.write_str("no routing change");
        }
        f.write_str(&parts.join("; "))
    }
}

/// Backends, groups and the rules that map devices to groups.
#[derive(Debug)]
pub struct Routing {
    /// Every backend definition since the start, live and retired; the config's are
    /// [`Routing::live_backends`].
    pub backends: Table<Backend>,
    /// Every group definition since the start, live and retired; the config's are
    /// [`Routing::live_groups`].
    pub groups: Table<Group>,
    live: ArcSwap<Live>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl Routing {
    /// Built from a validated config (every name it references exists). Each backend is
    /// talked to from the first `[sip] listen` address of its family, as written.
    pub fn from_config(config: &Config) -> Self {
        let fallback = Link { listener: 0, facing: SocketAddr::from(([0, 0, 0, 0], 0)) };
        Self::from_config_linked(config, |backend| Ok(Link::first_of_family(config, backend).unwrap_or(fallback)))
            .expect("linking cannot fail")
    }

    /// Built from a validated config, `link` saying where each backend is talked to from.
    pub fn from_config_linked(
        config: &Config,
        link: impl FnMut(&BackendConfig) -> std::io::Result<Link>,
    ) -> std::io::Result<Self> {
        let routing = Self {
            backends: Table::new(),
            groups: Table::new(),
            live: ArcSwap::from_pointee(Live::default()),
            reloading: Mutex::new(()),
        };
        routing.reload(config, link)?;
        Ok(routing)
    }

    /// Makes a new validated config the routing: backends whose definition is unchanged
    /// keep their slot (health, rate limiter, bindings) and take the new rate limit; new
    /// and changed definitions get new slots, linked by `link`, which is called for them
    /// only and before anything changes (an error leaves the routing as it was); what the
    /// config no longer has is retired (see the module documentation).
    pub fn reload(
        &self,
        config: &Config,
        mut link: impl FnMut(&BackendConfig) -> std::io::Result<Link>,
    ) -> std::io::Result<RoutingChanges> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live.load_full();
        let mut changes = RoutingChanges::default();
        let existing: Vec<Option<usize>> = config
            .backends
            .iter()
            .map(|wanted| (0..self.backends.len()).find(|&i| self.backends[i].is_defined_by(wanted)))
            .collect();
        let mut links = Vec::new();
        for (wanted, slot) in config.backends.iter().zip(&existing) {
            if slot.is_none() {
                links.push(link(wanted)?);
            }
        }
        let mut links = links.into_iter();
        let backend_ids: Vec<BackendId> = config
            .backends
            .iter()
            .zip(&existing)
            .map(|(wanted, slot)| match *slot {
                Some(index) => {
                    let backend = &self.backends[index];
                    let mut limiter = backend.limiter.lock().unwrap_or_else(|p| p.into_inner());
                    if limiter.rate() != wanted.max_register_rate {
                        changes.rates_changed.push((wanted.name.clone(), limiter.rate(), wanted.max_register_rate));
                        limiter.set_rate(wanted.max_register_rate);
                    }
                    BackendId(index)
                }
                None => BackendId(self.backends.push(Backend::new(wanted, links.next().expect("linked above")))),
            })
            .collect();
        let backend_id = |name: &str| {
            backend_ids[config.backends.iter().position(|b| b.name == name).expect("validated: groups name backends")]
        };
        let group_ids: Vec<GroupId> = config
            .groups
            .iter()
            .map(|wanted| {
                let members: Vec<BackendId> = wanted.backends.iter().map(|name| backend_id(name)).collect();
                let protocol = members.first().map_or(BackendProtocol::Sip, |b| self.backends[b.0].protocol);
                let slot = (0..self.groups.len()).find(|&i| {
                    let group = &self.groups[i];
                    group.name == wanted.name && group.backends == members && group.protocol == protocol
                });
                GroupId(slot.unwrap_or_else(|| {
                    let current = AtomicUsize::new(NO_GROUP);
                    self.groups.push(Group { name: wanted.name.clone(), backends: members, protocol, current })
                }))
            })
            .collect();
        let group_id = |name: &str| config.groups.iter().position(|g| g.name == name).map(|i| group_ids[i]);
        let rules: Vec<(RuleMatcher, GroupId)> =
            config.rules.iter().filter_map(|r| Some((r.matcher(), group_id(&r.group)?))).collect();
        let live = Live {
            default_group: group_id(&config.routing.default_group),
            backends: backend_ids,
            groups: group_ids,
            rules,
        };
        changes.rules_changed = live.rules != old.rules || live.default_group != old.default_group;
        self.describe_changes(&old, &live, &mut changes);
        let live = std::sync::Arc::new(live);
        self.live.store(std::sync::Arc::clone(&live));
        for (index, backend) in self.backends.iter().enumerate() {
            backend.retired.store(!live.backends.contains(&BackendId(index)), Ordering::Relaxed);
        }
        for group in &self.groups {
            let current =
                live.groups.iter().find(|id| self.groups[id.0].name == group.name).map_or(NO_GROUP, |id| id.0);
            group.current.store(current, Ordering::Relaxed);
        }
        Ok(changes)
    }

    /// Fills `changes` with the backends and groups that came, went or changed.
    fn describe_changes(&self, old: &Live, new: &Live, changes: &mut RoutingChanges) {
        let backend_names = |live: &Live| -> Vec<(String, BackendId)> {
            live.backends.iter().map(|id| (self.backends[id.0].name.clone(), *id)).collect()
        };
        let (before, after) = (backend_names(old), backend_names(new));
        for (name, id) in &after {
            match before.iter().find(|(n, _)| n == name) {
                None => changes.backends_added.push(name.clone()),
                Some((_, old_id)) if old_id != id => changes.backends_redefined.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.backends_removed =
            before.iter().filter(|(n, _)| !after.iter().any(|(a, _)| a == n)).map(|(n, _)| n.clone()).collect();
        let group_names = |live: &Live| -> Vec<(String, GroupId)> {
            live.groups.iter().map(|id| (self.groups[id.0].name.clone(), *id)).collect()
        };
        let (before, after) = (group_names(old), group_names(new));
        for (name, id) in &after {
            match before.iter().find(|(n, _)| n == name) {
                None => changes.groups_added.push(name.clone()),
                Some((_, old_id)) if old_id != id => changes.groups_changed.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.groups_removed =
            before.iter().filter(|(n, _)| !after.iter().any(|(a, _)| a == n)).map(|(n, _)| n.clone()).collect();
    }

    /// Whether any group is configured (else there is no registration edge).
    pub fn is_empty(&self) -> bool {
        self.live.load().groups.is_empty()
    }

    /// The backends of the config, in its order.
    pub fn live_backends(&self) -> Vec<BackendId> {
        self.live.load().backends.clone()
    }

    /// The groups of the config, in its order.
    pub fn live_groups(&self) -> Vec<GroupId> {
        self.live.load().groups.clone()
    }

    /// The backend of the config named `name`.
    pub fn backend_named(&self, name: &str) -> Option<BackendId> {
        self.live.load().backends.iter().copied().find(|id| self.backends[id.0].name == name)
    }

    /// The group of the config named `name`.
    pub fn group_named(&self, name: &str) -> Option<GroupId> {
        self.live.load().groups.iter().copied().find(|id| self.groups[id.0].name == name)
    }

    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.0]
    }

    /// The group of a device for `protocol`: the first matching rule whose group speaks
    /// it, else the default group if it does. A SIP phone and an SCCP phone with the same
    /// device name can so be matched by one rule set.
    pub fn group_for_protocol(&self, device: &Device, protocol: BackendProtocol) -> Option<GroupId> {
        let speaks = |g: &GroupId| self.groups[g.0].protocol == protocol;
        let live = self.live.load();
        live.rules
            .iter()
            .filter(|(_, g)| speaks(g))
            .find(|(m, _)| matches(m, device))
            .map(|(_, g)| *g)
            .or(live.default_group.filter(speaks))
    }

    /// The backend a group's phones register with now: the first one that is up. A
    /// group a reload changed answers with the group that has its name now; one whose
    /// name is gone has none.
    pub fn active_backend(&self, group: GroupId) -> Option<BackendId> {
        let current = self.groups.get(self.groups[group.0].current.load(Ordering::Relaxed))?;
        current.backends.iter().copied().find(|b| self.backend(*b).state() == BackendState::Up)
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

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    const TWO: &str = "[[backends]]\nname = \"cm1\"\naddress = \"10.0.0.11:5060\"\n\
                       [[backends]]\nname = \"cm2\"\naddress = \"10.0.0.12:5060\"\n\
                       [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\"]\n";

    fn unlinked(_: &BackendConfig) -> std::io::Result<Link> {
        Ok(Link { listener: 0, facing: "10.0.0.1:5060".parse().unwrap() })
    }

    #[test]
    fn a_reload_keeps_the_slot_health_and_drain_of_unchanged_backends_and_retires_the_others() {
        let routing = Routing::from_config(&config(TWO));
        routing.backend(BackendId(1)).set_state(BackendState::Down);
        routing.backend(BackendId(1)).set_drained(true);
        // cm1 moves to another address, cm2 stays (with a new rate), cm3 comes.
        let changes = routing
            .reload(
                &config(
                    "[[backends]]\nname = \"cm1\"\naddress = \"10.0.0.21:5060\"\n\
                     [[backends]]\nname = \"cm2\"\naddress = \"10.0.0.12:5060\"\nmax_register_rate = 7\n\
                     [[backends]]\nname = \"cm3\"\naddress = \"10.0.0.13:5060\"\n\
                     [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\", \"cm3\"]\n",
                ),
                unlinked,
            )
            .unwrap();
        assert_eq!(changes.backends_added, ["cm3"]);
        assert_eq!(changes.backends_redefined, ["cm1"]);
        assert!(changes.backends_removed.is_empty());
        assert_eq!(changes.rates_changed, [("cm2".to_owned(), 200, 7)]);
        assert_eq!(changes.groups_changed, ["default"]);
        let names: Vec<_> =
            routing.live_backends().iter().map(|id| (id.0, routing.backend(*id).name.clone())).collect();
        assert_eq!(names, [(2, "cm1".to_owned()), (1, "cm2".to_owned()), (3, "cm3".to_owned())]);
        assert!(routing.backend(BackendId(0)).is_retired(), "the old cm1 keeps its id, in no group");
        let cm2 = routing.backend(BackendId(1));
        assert_eq!((cm2.health(), cm2.is_drained(), cm2.max_register_rate()), (BackendState::Down, true, 7));
        assert_eq!(routing.backend(BackendId(3)).link.facing, "10.0.0.1:5060".parse().unwrap());
        // The old group answers for the new one of its name.
        let old_group = GroupId(0);
        assert!(routing.groups[0].is_retired(old_group));
        assert_eq!(routing.active_backend(old_group), Some(BackendId(2)));
        assert_eq!(routing.group_named("default"), Some(GroupId(1)));
        // A reload back to the first config finds the first slots again.
        let changes = routing.reload(&config(TWO), unlinked).unwrap();
        assert_eq!(changes.backends_removed, ["cm3"]);
        assert_eq!(routing.live_backends(), [BackendId(0), BackendId(1)]);
        assert_eq!(routing.group_named("default"), Some(GroupId(0)));
        assert_eq!(routing.groups.len(), 2);
        assert!(!routing.backend(BackendId(0)).is_retired() && routing.backend(BackendId(3)).is_retired());
    }

    #[test]
    fn a_removed_group_has_no_backend_and_rules_are_swapped_whole() {
        let with_lab = "[[backends]]\nname = \"cm1\"\naddress = \"10.0.0.11:5060\"\n\
                        [[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n\
                        [[groups]]\nname = \"lab\"\nbackends = [\"cm1\"]\n\
                        [[rules]]\ngroup = \"lab\"\ndevice = \"SEP0011*\"\n";
        let routing = Routing::from_config(&config(with_lab));
        let phone =
            Device { key: String::new(), name: Some("SEP001122334455".into()), mac: None, domain: String::new() };
        let lab = routing.group_for_protocol(&phone, BackendProtocol::Sip).unwrap();
        assert_eq!(routing.groups[lab.0].name, "lab");
        let changes = routing.reload(&config(TWO), unlinked).unwrap();
        assert!(changes.rules_changed);
        assert_eq!(changes.groups_removed, ["lab"]);
        assert_eq!(routing.active_backend(lab), None, "no group has its name any more");
        assert_eq!(routing.group_for_protocol(&phone, BackendProtocol::Sip), routing.group_named("default"));
        assert_eq!(routing.live_groups().len(), 1);
    }

    #[test]
    fn a_link_that_fails_leaves_the_routing_as_it_was() {
        let routing = Routing::from_config(&config(TWO));
        let error = routing
            .reload(
                &config(
                    "[[backends]]\nname = \"cm9\"\naddress = \"10.0.0.19:5060\"\n\
                         [[groups]]\nname = \"default\"\nbackends = [\"cm9\"]\n",
                ),
                |_| Err(std::io::Error::other("no route")),
            )
            .unwrap_err();
        assert_eq!(error.to_string(), "no route");
        assert_eq!(routing.live_backends(), [BackendId(0), BackendId(1)]);
        assert_eq!(routing.backends.len(), 2);
        assert_eq!(routing.active_backend(GroupId(0)), Some(BackendId(0)));
    }

    #[test]
    fn draining_is_kept_apart_from_health() {
        let routing = Routing::from_config(&config(TWO));
        let cm1 = routing.backend(BackendId(0));
        assert_eq!(cm1.set_state(BackendState::Draining), BackendState::Up);
        assert_eq!(routing.active_backend(GroupId(0)), Some(BackendId(1)));
        assert_eq!(cm1.set_state(BackendState::Down), BackendState::Draining);
        assert_eq!(cm1.set_state(BackendState::Up), BackendState::Down);
        assert_eq!(cm1.state(), BackendState::Draining, "health coming back does not enable it");
        cm1.set_drained(false);
        assert_eq!(routing.active_backend(GroupId(0)), Some(BackendId(0)));
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
