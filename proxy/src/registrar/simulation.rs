//! Seeded simulation of the registrar: thousands of phones refreshing, backends that
//! die and return, lost answers, clock jumps. Invariants are checked at every step:
//! - no refresh is absorbed unless its backend is up and its registration there stays
//!   valid beyond the phone's next refresh;
//! - every device has one binding, on a backend of its group;
//! - forwarded REGISTERs per backend never exceed the token bucket's bound
//!   (`rate × window + rate` in any window);
//! - once the backends have been up for a while, every phone is registered.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, VecDeque},
};

use super::tests::{Phone, backend_answer, flow, registrar_from};
use super::*;
use crate::testing::Rng;
use crate::{failover::BackendState, sip::Message};

const CONFIG: &str = r#"
[registration]
phone_expires = 120
backend_expires = 3600
expires_jitter = 0.1
lapse_grace = "10s"
transaction_timeout = "4s"

[[backends]]
name = "cm1"
address = "10.0.0.11:5060"
max_register_rate = 40

[[backends]]
name = "cm2"
address = "10.0.0.12:5060"
max_register_rate = 40

[[backends]]
name = "cm3"
address = "10.0.0.13:5060"
max_register_rate = 40

[[groups]]
name = "default"
backends = ["cm1", "cm2", "cm3"]
"#;

const RATE: u64 = 40;
const PHONES: u32 = 1000;
const STEP_MS: u64 = 100;
const SIMULATED_MS: u64 = 3 * 3600 * 1000;
/// Time the health checker needs to notice a death or a return.
const DETECTION_MS: u64 = 4000;

struct SimPhone {
    phone: Phone,
    next_register_ms: u64,
    /// A REGISTER sent and not answered yet, and when.
    waiting_since: Option<u64>,
    registered_until_ms: u64,
}

struct SimBackend {
    alive: bool,
    /// When `alive` last changed.
    changed_ms: u64,
    /// Answers in flight: (due time, response bytes).
    answers: VecDeque<(u64, Vec<u8>)>,
    /// Device → registration valid until (the backend's own view).
    registrations: BTreeMap<String, u64>,
    forwards_per_second: BTreeMap<u64, u64>,
    received: u64,
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n").find_map(|l| l.strip_prefix(name).map(str::trim))
}

#[test]
fn seeded_simulation_keeps_its_invariants() {
    for seed in [1u64, 2] {
        simulate(seed);
    }
}

fn simulate(seed: u64) {
    let registrar = registrar_from(CONFIG);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut phones: Vec<SimPhone> = (1..=PHONES)
        .map(|n| SimPhone {
            phone: Phone::new(n),
            next_register_ms: rng.below(60_000) as u64,
            waiting_since: None,
            registered_until_ms: 0,
        })
        .collect();
    // Phones by due time (entries go stale when a phone's plans change; they are skipped).
    let mut schedule: BinaryHeap<(Reverse<u64>, usize)> =
        phones.iter().enumerate().map(|(i, p)| (Reverse(p.next_register_ms), i)).collect();
    let index_of: std::collections::HashMap<u16, usize> =
        phones.iter().enumerate().map(|(i, p)| (p.phone.port, i)).collect();
    let mut backends: Vec<SimBackend> = (0..3)
        .map(|_| SimBackend {
            alive: true,
            changed_ms: 0,
            answers: VecDeque::new(),
            registrations: BTreeMap::new(),
            forwards_per_second: BTreeMap::new(),
            received: 0,
        })
        .collect();
    let mut sent_by_phones = 0u64;
    // Messages for backends produced while handling answers, delivered the next step.
    let mut carried: Vec<Send> = Vec::new();
    let mut deaths = 0u64;
    let mut absorbed = 0u64;
    let mut now_ms = 0u64;
    let unix = |ms: u64| 1_795_608_000 + ms / 1000;

    // The last 15 minutes are quiet: every backend back, no clock jumps.
    let quiet_from = SIMULATED_MS - 900_000;
    while now_ms < SIMULATED_MS {
        // Chaos: a backend dies or returns now and then (never all three at once), and
        // once an hour the clock jumps forward.
        if now_ms >= quiet_from {
            for b in backends.iter_mut().filter(|b| !b.alive) {
                b.alive = true;
                b.changed_ms = now_ms;
            }
        } else if rng.below(20_000) == 0 {
            let b = rng.below(3);
            let alive_count = backends.iter().filter(|b| b.alive).count();
            if !backends[b].alive || alive_count > 1 {
                backends[b].alive = !backends[b].alive;
                deaths += u64::from(!backends[b].alive);
                backends[b].changed_ms = now_ms;
                if !backends[b].alive {
                    backends[b].answers.clear();
                    backends[b].registrations.clear(); // an in-memory registrar restarts empty
                }
            }
        }
        if now_ms < quiet_from && now_ms % 3_600_000 == 1_800_000 {
            now_ms += 30_000 + rng.below(60_000) as u64;
        }
        let now = Now { mono_ms: now_ms, unix_secs: unix(now_ms) };

        // The health checker's view, DETECTION_MS behind the truth.
        for (i, b) in backends.iter().enumerate() {
            if now_ms >= b.changed_ms + DETECTION_MS {
                registrar.routing.backend(BackendId(i)).set_state(if b.alive {
                    BackendState::Up
                } else {
                    BackendState::Down
                });
            }
        }

        let mut to_backends: Vec<Send> = std::mem::take(&mut carried);
        while schedule.peek().is_some_and(|(Reverse(due), _)| *due <= now_ms) {
            let (_, index) = schedule.pop().unwrap();
            let p = &mut phones[index];
            let timed_out = p.waiting_since.is_some_and(|t| now_ms >= t + 5_000);
            if (now_ms < p.next_register_ms || p.waiting_since.is_some()) && !timed_out {
                continue; // a stale schedule entry
            }
            p.phone.cseq += 1;
            let bytes = p.phone.register(120, "");
            let msg = Message::parse(&bytes).unwrap();
            let key = format!("dev:{}", p.phone.device);
            let before = registrar.registry.get(&key);
            let (mut reply, mut sends) = (Vec::new(), Vec::new());
            let outcome = registrar.on_register(&msg, &bytes, flow(p.phone.port), now, &mut reply, &mut sends);
            sent_by_phones += 1;
            match outcome {
                RegistrationOutcome::Absorbed => {
                    absorbed += 1;
                    let b = before.expect("absorbed without a binding");
                    let text = String::from_utf8_lossy(&reply);
                    let grant: u64 = header(&text, "Expires:").unwrap().parse().unwrap();
                    assert!((108..=120).contains(&grant), "grant {grant} outside phone_expires with 10% jitter");
                    assert_eq!(
                        registrar.routing.backend(b.backend).state(),
                        BackendState::Up,
                        "absorbed on a backend that is not up"
                    );
                    assert!(
                        b.backend_valid_until_ms > now_ms + grant * 1000,
                        "absorbed past the backend registration's validity"
                    );
                    p.next_register_ms = now_ms + grant * 900;
                    p.registered_until_ms = now_ms + grant * 1000;
                    p.waiting_since = None;
                }
                RegistrationOutcome::Forwarded => {
                    p.waiting_since = Some(now_ms);
                    to_backends.extend(sends);
                }
                RegistrationOutcome::RateLimited | RegistrationOutcome::Rejected => {
                    let text = String::from_utf8_lossy(&reply);
                    let retry: u64 = header(&text, "Retry-After:").map_or(5, |v| v.parse().unwrap());
                    p.next_register_ms = now_ms + retry * 1000;
                    p.waiting_since = None;
                }
                other => panic!("unexpected outcome {other:?}"),
            }
            let due = p.waiting_since.map_or(p.next_register_ms, |t| t + 5_000);
            schedule.push((Reverse(due), index));
        }
        if now_ms.is_multiple_of(1000) {
            let mut tick_sends = Vec::new();
            registrar.on_tick(now, &mut tick_sends);
            to_backends.extend(tick_sends);
        }

        for send in to_backends {
            let Destination::Backend(BackendId(b)) = send.to else { panic!("registrar sent to a phone directly") };
            let backend = &mut backends[b];
            backend.received += 1;
            *backend.forwards_per_second.entry(now_ms / 1000).or_insert(0) += 1;
            if !backend.alive || rng.below(100) == 0 {
                continue; // dead, or the answer is lost
            }
            let text = String::from_utf8_lossy(&send.bytes).into_owned();
            let expires: u32 = header(&text, "Expires:").unwrap().parse().unwrap();
            if let Some(device) = text.split("devicename.ccm.cisco.com=\"").nth(1).and_then(|s| s.split('"').next()) {
                if expires == 0 {
                    backend.registrations.remove(device);
                } else {
                    backend.registrations.insert(device.to_owned(), now_ms + expires as u64 * 1000);
                }
            }
            let delay = STEP_MS * rng.below(3) as u64;
            backend.answers.push_back((now_ms + delay, backend_answer(&send.bytes, "200 OK", expires)));
        }
        for backend in backends.iter_mut() {
            while backend.answers.front().is_some_and(|(due, _)| *due <= now_ms) {
                let (_, response) = backend.answers.pop_front().unwrap();
                let msg = Message::parse(&response).unwrap();
                let mut relayed = Vec::new();
                registrar.on_response(&msg, &response, now, &mut relayed);
                for send in relayed {
                    // A phone that moved is de-registered at its old backend: next step.
                    let Destination::Phone(to) = send.to else {
                        carried.push(send);
                        continue;
                    };
                    let p = &mut phones[index_of[&to.peer.port()]];
                    let text = String::from_utf8_lossy(&send.bytes);
                    if text.starts_with("SIP/2.0 200") && p.waiting_since.is_some() {
                        let grant: u64 = header(&text, "Expires:").unwrap().parse().unwrap();
                        p.next_register_ms = now_ms + grant * 900;
                        p.registered_until_ms = now_ms + grant * 1000;
                        p.waiting_since = None;
                        schedule.push((Reverse(p.next_register_ms), index_of[&to.peer.port()]));
                    }
                }
            }
        }

        // Every device once, on a backend of its group.
        if now_ms.is_multiple_of(60_000) {
            for (device, binding) in registrar.registry.snapshot() {
                assert!(
                    registrar.routing.groups[binding.group.0].backends.contains(&binding.backend),
                    "{device} off its group"
                );
            }
        }
        now_ms += STEP_MS;
    }

    // The token bucket bound, in 1 s and 10 s windows.
    for (i, b) in backends.iter().enumerate() {
        for (&second, &count) in &b.forwards_per_second {
            let window: u64 =
                (second.saturating_sub(9)..=second).map(|s| b.forwards_per_second.get(&s).copied().unwrap_or(0)).sum();
            assert!(count <= 2 * RATE, "backend {i}: {count} forwards in second {second}");
            assert!(window <= 10 * RATE + RATE, "backend {i}: {window} forwards in the 10 s to {second}");
        }
    }
    for p in &phones {
        let key = format!("dev:{}", p.phone.device);
        assert!(registrar.registry.get(&key).is_some(), "seed {seed}: {key} not registered after the quiet period");
        assert!(p.registered_until_ms > now_ms, "seed {seed}: {key}'s registration ran out");
    }
    let received: u64 = backends.iter().map(|b| b.received).sum();
    let ratio = received as f64 / sent_by_phones as f64;
    eprintln!(
        "seed {seed}: phones sent {sent_by_phones} REGISTERs, backends received {received} ({ratio:.3}), absorbed {absorbed}, \
         backend deaths {deaths}, failovers {}, bindings {}",
        registrar.stats.failovers.get("default").map_or(0, |c| *c),
        registrar.registry.len()
    );
    assert!(deaths > 0, "seed {seed}: the simulation must kill backends");
    assert!(ratio < 0.25, "throttling must keep most refreshes away from the backends: {ratio:.3}");
}
