//! The registrar's decision table, row by row, through its public API: REGISTERs in,
//! what goes to the backend and back to the phone out, with a scripted backend.

use std::sync::Arc;

use super::*;
use crate::{
    config::Config,
    failover::BackendState,
    registry::{Flow, Transport},
    sip::Message,
};

const CONFIG: &str = r#"
[registration]
phone_expires = 120
backend_expires = 3600
expires_jitter = 0.0
lapse_grace = "10s"
transaction_timeout = "4s"

[[backends]]
name = "cm1"
address = "10.0.0.11:5060"
max_register_rate = 5

[[backends]]
name = "cm2"
address = "10.0.0.12:5060"
max_register_rate = 5

[[groups]]
name = "default"
backends = ["cm1", "cm2"]
"#;

pub(crate) fn registrar_from(config_text: &str) -> Registrar {
    let config = Config::from_toml(config_text, "test").unwrap_or_else(|e| panic!("{e}"));
    let routing = Arc::new(Routing::from_config(&config));
    let facing = config.backends.iter().map(|_| (Transport::Udp, "10.0.0.1:5060".parse().unwrap())).collect();
    let node = Node { to_tag: ToTag::for_node("test"), backend_facing: facing, token_key: 7 };
    Registrar::new(routing, Policy::from(&config.registration), node)
        .with_limits(Arc::new(crate::limits::Limits::new(&config.limits)))
}

pub(super) fn flow(port: u16) -> Flow {
    Flow {
        transport: Transport::Udp,
        peer: format!("192.0.2.7:{port}").parse().unwrap(),
        local: "10.0.0.1:5060".parse().unwrap(),
        connection: None,
    }
}

/// A phone's REGISTER.
#[derive(Clone)]
pub(super) struct Phone {
    pub device: String,
    pub user: String,
    pub call_id: String,
    pub cseq: u32,
    pub port: u16,
    pub contact_host: String,
}

impl Phone {
    pub fn new(n: u32) -> Self {
        Self {
            device: format!("SEP{n:012X}"),
            user: format!("{}", 1000 + n),
            call_id: format!("call-{n}"),
            cseq: 1,
            port: 40000 + (n % 20000) as u16,
            contact_host: "192.0.2.7".into(),
        }
    }

    /// The REGISTER; its Via branch is derived from everything else in it, so a new
    /// request has a new branch and a repeated one (a retransmission) the same.
    pub fn register(&self, expires: u32, extra: &str) -> Vec<u8> {
        let branch = hash_of(&[
            self.call_id.as_bytes(),
            &self.cseq.to_be_bytes(),
            &self.port.to_be_bytes(),
            self.contact_host.as_bytes(),
            &expires.to_be_bytes(),
            extra.as_bytes(),
        ]);
        format!(
            "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:{port};branch=z9hG4bK-{branch:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@example.net>;tag=p{port}\r\nTo: <sip:{user}@example.net>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{host}:{port}>;+u.sip!devicename.ccm.cisco.com=\"{device}\"\r\n\
             Expires: {expires}\r\n{extra}Content-Length: 0\r\n\r\n",
            port = self.port,
            cseq = self.cseq,
            user = self.user,
            call_id = self.call_id,
            host = self.contact_host,
            device = self.device,
        )
        .into_bytes()
    }
}

pub(super) fn now(secs: u64) -> Now {
    Now { mono_ms: secs * 1000, unix_secs: 1_795_608_000 + secs }
}

/// What one REGISTER produced.
pub(super) struct Step {
    pub outcome: RegistrationOutcome,
    pub reply: String,
    pub sends: Vec<Send>,
}

pub(super) fn send(registrar: &Registrar, phone: &Phone, bytes: &[u8], at: Now) -> Step {
    let msg = Message::parse(bytes).unwrap();
    let (mut reply, mut sends) = (Vec::new(), Vec::new());
    let outcome = registrar.on_register(&msg, bytes, flow(phone.port), at, &mut reply, &mut sends);
    Step { outcome, reply: String::from_utf8(reply).unwrap(), sends }
}

/// The backend's answer to a forwarded request: `status`, with the Via list, dialog
/// headers and (for 200) the contact granted `granted` seconds.
pub(super) fn backend_answer(forwarded: &[u8], status: &str, granted: u32) -> Vec<u8> {
    let msg = Message::parse(forwarded).unwrap();
    let mut out = format!("SIP/2.0 {status}\r\n");
    for h in msg.headers() {
        let name = String::from_utf8_lossy(h.name).to_ascii_lowercase();
        if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
            out.push_str(&String::from_utf8_lossy(h.raw));
        } else if name == "to" {
            out.push_str(&format!("{};tag=backend\r\n", String::from_utf8_lossy(&h.raw[..h.raw.len() - 2])));
        } else if name == "contact" && status.starts_with("200") {
            let contact = crate::sip::contact::Contact::parse(h.value).unwrap();
            out.push_str(&format!("Contact: <{}>;expires={granted}\r\n", String::from_utf8_lossy(contact.uri)));
        }
    }
    if status.starts_with("401") {
        out.push_str("WWW-Authenticate: Digest realm=\"example.net\", nonce=\"n-1\"\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Delivers the backend's answer to the one request in `sends`; returns what went to the phone.
pub(super) fn answer(registrar: &Registrar, sends: &[Send], status: &str, granted: u32, at: Now) -> String {
    assert_eq!(sends.len(), 1, "one request to the backend");
    let response = backend_answer(&sends[0].bytes, status, granted);
    let msg = Message::parse(&response).unwrap();
    let mut relayed = Vec::new();
    assert!(registrar.on_response(&msg, &response, at, &mut relayed), "the response matches a pending request");
    assert_eq!(relayed.len(), 1);
    String::from_utf8(relayed.pop().unwrap().bytes).unwrap()
}

fn registered(registrar: &Registrar, phone: &Phone, at: Now) {
    let step = send(registrar, phone, &phone.register(120, ""), at);
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded);
    let to_phone = answer(registrar, &step.sends, "200 OK", 3600, at);
    assert!(to_phone.starts_with("SIP/2.0 200 OK\r\n"), "{to_phone}");
}

fn backend_of(step: &Step) -> BackendId {
    match step.sends[0].to {
        Destination::Backend(b) => b,
        Destination::Phone(_) => panic!("sent to a phone"),
    }
}

#[test]
fn a_new_binding_is_forwarded_with_our_via_path_and_the_backend_expiry() {
    let r = registrar_from(CONFIG);
    let phone = Phone::new(1);
    let step = send(&r, &phone, &phone.register(120, ""), now(0));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded);
    assert!(step.reply.is_empty(), "no answer before the backend's");
    assert_eq!(backend_of(&step), BackendId(0));
    let forwarded = String::from_utf8(step.sends[0].bytes.clone()).unwrap();
    assert!(forwarded.contains("\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rg"), "{forwarded}");
    assert!(forwarded.contains("\r\nPath: <sip:") && forwarded.contains("@10.0.0.1:5060;lr;ob>\r\n"), "{forwarded}");
    assert!(
        forwarded.contains("\r\nExpires: 3600\r\n") && forwarded.contains("\r\nMax-Forwards: 69\r\n"),
        "{forwarded}"
    );
    let to_phone = answer(&r, &step.sends, "200 OK", 3600, now(0));
    assert!(
        to_phone.contains("\r\nContact: <sip:1001@192.0.2.7:40001>;expires=120\r\nExpires: 120\r\nDate: "),
        "{to_phone}"
    );
    assert!(!to_phone.contains("10.0.0.1"), "our Via is removed: {to_phone}");
    let binding = r.registry.get("dev:SEP000000000001").expect("stored on 200");
    assert_eq!((binding.backend_granted, binding.cseq), (3600, 1));
}

#[test]
fn decision_table() {
    let r = registrar_from(CONFIG);
    let base = Phone::new(2);
    registered(&r, &base, now(0));
    let next = |change: &dyn Fn(&mut Phone)| {
        let mut p = base.clone();
        p.cseq = 2;
        change(&mut p);
        p
    };
    let rows: Vec<(&str, Phone, &str, RegistrationOutcome)> = vec![
        ("same flow, Call-ID, contact, higher CSeq", next(&|_| {}), "", RegistrationOutcome::Absorbed),
        ("a new Call-ID", next(&|p| p.call_id = "other".into()), "", RegistrationOutcome::Forwarded),
        ("a new source port", next(&|p| p.port += 1), "", RegistrationOutcome::Forwarded),
        ("a changed contact", next(&|p| p.contact_host = "192.0.2.99".into()), "", RegistrationOutcome::Forwarded),
        (
            "new credentials",
            next(&|_| {}),
            "Authorization: Digest username=\"1002\", realm=\"example.net\", nonce=\"x\", response=\"y\"\r\n",
            RegistrationOutcome::Forwarded,
        ),
        ("a lower CSeq", next(&|p| p.cseq = 0), "", RegistrationOutcome::Rejected),
        ("the same CSeq again (retransmission)", next(&|_| {}), "", RegistrationOutcome::Absorbed),
        (
            "the same CSeq in another transaction (a replay)",
            next(&|_| {}),
            "X-Replay: 1\r\n",
            RegistrationOutcome::Rejected,
        ),
    ];
    for (name, phone, extra, want) in rows {
        let step = send(&r, &phone, &phone.register(120, extra), now(10));
        assert_eq!(step.outcome, want, "{name}");
        if want == RegistrationOutcome::Absorbed {
            assert!(
                step.reply.starts_with("SIP/2.0 200 OK\r\n")
                    && step.reply.contains(";expires=120\r\n")
                    && step.reply.contains("\r\nDate: "),
                "{name}: {}",
                step.reply
            );
            assert!(step.sends.is_empty(), "{name}: nothing to the backend");
        }
        if want == RegistrationOutcome::Rejected {
            assert!(step.reply.starts_with("SIP/2.0 400 CSeq Out Of Order\r\n"), "{name}: {}", step.reply);
        }
    }
    // None of the forwarded rows changed the cached binding (no 2xx came back).
    assert_eq!(r.registry.get("dev:SEP000000000002").unwrap().call_id, "call-2");
    // The kernel answered CSeq 3 (`fold_absorbed` moves the CSeq on and forgets the Via):
    // CSeq 3 again cannot be told from a replay here, so the backend judges it.
    r.registry.update("dev:SEP000000000002", |b| {
        b.cseq = 3;
        b.last_via = None;
    });
    let again = next(&|p| p.cseq = 3);
    let step = send(&r, &again, &again.register(120, ""), now(10));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded, "a CSeq the kernel answered, again");
    answer(&r, &step.sends, "200 OK", 3600, now(10));
    let step = send(&r, &again, &again.register(120, ""), now(10));
    assert_eq!(step.outcome, RegistrationOutcome::Absorbed, "once accepted upstream, its retransmission is known");

    // Expires 0 is forwarded and, once accepted, removes the binding.
    let mut phone = base.clone();
    phone.cseq = 5;
    let step = send(&r, &phone, &phone.register(0, ""), now(11));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded);
    assert!(String::from_utf8_lossy(&step.sends[0].bytes).contains("\r\nExpires: 0\r\n"));
    answer(&r, &step.sends, "200 OK", 0, now(11));
    assert!(r.registry.get("dev:SEP000000000002").is_none());
}

#[test]
fn refreshes_go_to_the_backend_once_its_registration_is_past_half_its_life() {
    let r = registrar_from(CONFIG);
    let mut phone = Phone::new(3);
    registered(&r, &phone, now(0));
    let mut forwarded_at = Vec::new();
    for t in (110..=3600).step_by(110) {
        phone.cseq += 1;
        let step = send(&r, &phone, &phone.register(120, ""), now(t));
        if step.outcome == RegistrationOutcome::Forwarded {
            forwarded_at.push(t);
            answer(&r, &step.sends, "200 OK", 3600, now(t));
        } else {
            assert_eq!(step.outcome, RegistrationOutcome::Absorbed, "at {t}s");
        }
    }
    // Valid until 3600 s; half life 1800 s; the refresh whose next one (120 s later)
    // would be past half life is forwarded: the first after 3600 - 1800 - 120 = 1680 s.
    assert_eq!(forwarded_at.first(), Some(&1760), "{forwarded_at:?}");
    assert_eq!(forwarded_at.len(), 2, "{forwarded_at:?}");
}

#[test]
fn the_backup_probe_is_answered_and_changes_nothing() {
    let r = registrar_from(CONFIG);
    let phone = Phone::new(4);
    registered(&r, &phone, now(0));
    let before = r.registry.get("dev:SEP000000000004").unwrap();
    let mut probe = phone.clone();
    probe.cseq = 9;
    let bytes = String::from_utf8(probe.register(0, "")).unwrap().replace(
        &format!("+u.sip!devicename.ccm.cisco.com=\"{}\"", probe.device),
        &format!("+u.sip!devicename.ccm.cisco.com=\"{}\";expires=0;cisco-keep-alive", probe.device),
    );
    let step = send(&r, &probe, bytes.as_bytes(), now(5));
    assert_eq!(step.outcome, RegistrationOutcome::BackupProbe);
    assert!(step.reply.starts_with("SIP/2.0 200 OK\r\n") && step.reply.contains("\r\nDate: "), "{}", step.reply);
    assert!(step.sends.is_empty(), "never forwarded as a de-registration");
    assert_eq!(r.registry.get("dev:SEP000000000004").unwrap(), before);
}

#[test]
fn challenges_pass_through_and_nothing_is_stored_without_a_2xx() {
    let r = registrar_from(CONFIG);
    let mut phone = Phone::new(5);
    let step = send(&r, &phone, &phone.register(120, ""), now(0));
    let to_phone = answer(&r, &step.sends, "401 Unauthorized", 0, now(0));
    assert!(
        to_phone.starts_with("SIP/2.0 401 Unauthorized\r\n") && to_phone.contains("WWW-Authenticate"),
        "{to_phone}"
    );
    assert!(r.registry.get("dev:SEP000000000005").is_none(), "nothing stored on 401");
    phone.cseq = 2;
    let auth = "Authorization: Digest username=\"1005\", realm=\"example.net\", nonce=\"n-1\", response=\"r\"\r\n";
    let step = send(&r, &phone, &phone.register(120, auth), now(1));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded, "the retry with credentials is forwarded");
    assert!(String::from_utf8_lossy(&step.sends[0].bytes).contains("Authorization: Digest"));
    answer(&r, &step.sends, "200 OK", 3600, now(1));
    // A refresh that repeats the accepted credentials (nonce reuse) is absorbed.
    phone.cseq = 3;
    assert_eq!(
        send(&r, &phone, &phone.register(120, &auth.replace("r\"", "r2\"")), now(60)).outcome,
        RegistrationOutcome::Absorbed
    );
    let stats = &r.stats.outcomes;
    assert_eq!(
        stats[RegistrationOutcome::ALL.iter().position(|o| *o == RegistrationOutcome::Challenged).unwrap()]
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// OpenSIPS #3193: a second device on the same AOR must not ride the first one's cache.
#[test]
fn opensips_3193_a_second_device_of_an_aor_is_not_absorbed() {
    let r = registrar_from(CONFIG);
    let first = Phone::new(6);
    registered(&r, &first, now(0));
    let mut second = Phone::new(7);
    second.user = first.user.clone();
    second.call_id = first.call_id.clone();
    let step = send(&r, &second, &second.register(120, ""), now(5));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded, "unknown device: the backend decides");
    answer(&r, &step.sends, "401 Unauthorized", 0, now(5));
    assert!(r.registry.get(&format!("dev:{}", second.device)).is_none());
}

/// OpenSIPS #2536: a contact must not be saved when the backend says 403.
#[test]
fn opensips_2536_nothing_is_saved_on_403_and_the_cache_is_dropped() {
    let r = registrar_from(CONFIG);
    let mut phone = Phone::new(8);
    let step = send(&r, &phone, &phone.register(120, ""), now(0));
    answer(&r, &step.sends, "403 Forbidden", 0, now(0));
    assert!(r.registry.get("dev:SEP000000000008").is_none());
    registered(&r, &phone, now(1));
    phone.call_id = "new".into();
    let step = send(&r, &phone, &phone.register(120, ""), now(2));
    answer(&r, &step.sends, "403 Forbidden", 0, now(2));
    assert!(r.registry.get("dev:SEP000000000008").is_none(), "a refused re-registration ends the cached binding");
}

/// OpenSIPS #1156: a renewal carrying new credentials must reach the backend.
#[test]
fn opensips_1156_a_renewal_with_new_credentials_is_forwarded() {
    let r = registrar_from(CONFIG);
    let mut phone = Phone::new(9);
    let first = "Authorization: Digest username=\"1009\", realm=\"example.net\", nonce=\"a\", response=\"1\"\r\n";
    phone.cseq = 1;
    let step = send(&r, &phone, &phone.register(120, first), now(0));
    answer(&r, &step.sends, "200 OK", 3600, now(0));
    phone.cseq = 2;
    let renewed = first.replace("nonce=\"a\"", "nonce=\"b\"");
    assert_eq!(send(&r, &phone, &phone.register(120, &renewed), now(100)).outcome, RegistrationOutcome::Forwarded);
}

#[test]
fn phones_fail_over_at_their_next_refresh_and_fall_back() {
    let r = registrar_from(CONFIG);
    let mut phone = Phone::new(10);
    registered(&r, &phone, now(0));
    r.routing.backend(BackendId(0)).set_state(BackendState::Down);
    phone.cseq = 2;
    let step = send(&r, &phone, &phone.register(120, ""), now(100));
    assert_eq!(
        (step.outcome, backend_of(&step)),
        (RegistrationOutcome::Forwarded, BackendId(1)),
        "moved to the secondary"
    );
    answer(&r, &step.sends, "200 OK", 3600, now(100));
    assert_eq!(r.registry.get("dev:SEP00000000000A").unwrap().backend, BackendId(1));
    assert_eq!(r.stats.failovers.get("default").map(|c| *c), Some(1));
    phone.cseq = 3;
    assert_eq!(
        send(&r, &phone, &phone.register(120, ""), now(200)).outcome,
        RegistrationOutcome::Absorbed,
        "settled on the secondary"
    );
    r.routing.backend(BackendId(0)).set_state(BackendState::Up);
    phone.cseq = 4;
    let step = send(&r, &phone, &phone.register(120, ""), now(300));
    assert_eq!(
        (step.outcome, backend_of(&step)),
        (RegistrationOutcome::Forwarded, BackendId(0)),
        "falls back to the primary"
    );
    // Once the primary accepts it, the phone leaves the secondary.
    let response = backend_answer(&step.sends[0].bytes, "200 OK", 3600);
    let mut sends = Vec::new();
    assert!(r.on_response(&Message::parse(&response).unwrap(), &response, now(300), &mut sends));
    let to_secondary: Vec<_> = sends.iter().filter(|s| s.to == Destination::Backend(BackendId(1))).collect();
    assert_eq!(to_secondary.len(), 1, "a de-registration for the secondary");
    let dereg = String::from_utf8_lossy(&to_secondary[0].bytes);
    assert!(dereg.contains("\r\nExpires: 0\r\n") && dereg.contains("Call-ID: call-10\r\n"), "{dereg}");
    assert_eq!(r.registry.get("dev:SEP00000000000A").unwrap().backend, BackendId(0));
    // The secondary's 200 to that de-registration leaves the new binding alone.
    let response = backend_answer(&to_secondary[0].bytes, "200 OK", 0);
    assert!(r.on_response(&Message::parse(&response).unwrap(), &response, now(300), &mut Vec::new()));
    assert_eq!(r.registry.get("dev:SEP00000000000A").map(|b| b.backend), Some(BackendId(0)));
}

#[test]
fn forwarded_registers_are_rate_limited_per_backend() {
    let r = registrar_from(CONFIG);
    let outcomes: Vec<_> = (100..110)
        .map(|n| {
            let phone = Phone::new(n);
            let step = send(&r, &phone, &phone.register(120, ""), now(0));
            if step.outcome == RegistrationOutcome::RateLimited {
                assert!(
                    step.reply.starts_with("SIP/2.0 503 Registration Rate Limited\r\n")
                        && step.reply.contains("\r\nRetry-After: "),
                    "{}",
                    step.reply
                );
            }
            step.outcome
        })
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == RegistrationOutcome::Forwarded).count(),
        5,
        "max_register_rate = 5: {outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| **o == RegistrationOutcome::RateLimited).count(), 5);
}

#[test]
fn no_backend_up_is_a_503() {
    let r = registrar_from(CONFIG);
    for b in &r.routing.backends {
        b.set_state(BackendState::Down);
    }
    let phone = Phone::new(11);
    let step = send(&r, &phone, &phone.register(120, ""), now(0));
    assert_eq!(step.outcome, RegistrationOutcome::Rejected);
    assert!(
        step.reply.starts_with("SIP/2.0 503 No Backend Available\r\n") && step.reply.contains("Retry-After: "),
        "{}",
        step.reply
    );
}

#[test]
fn a_silent_phone_lapses_and_is_deregistered_at_its_backend() {
    let r = registrar_from(CONFIG);
    let phone = Phone::new(12);
    registered(&r, &phone, now(0));
    let mut sends = Vec::new();
    r.on_tick(now(125), &mut sends);
    assert!(sends.is_empty() && r.registry.get("dev:SEP00000000000C").is_some(), "still within the grace");
    r.on_tick(now(131), &mut sends);
    assert!(r.registry.get("dev:SEP00000000000C").is_none(), "lapsed at expiry + grace");
    assert_eq!(sends.len(), 1);
    let dereg = String::from_utf8(sends[0].bytes.clone()).unwrap();
    assert!(
        dereg.starts_with("REGISTER sip:example.net SIP/2.0\r\n")
            && dereg.contains("\r\nExpires: 0\r\n")
            && dereg.contains("Call-ID: call-12\r\nCSeq: 2 REGISTER"),
        "{dereg}"
    );
    let response = backend_answer(&sends[0].bytes, "200 OK", 0);
    let mut relayed = Vec::new();
    assert!(r.on_response(&Message::parse(&response).unwrap(), &response, now(131), &mut relayed));
    assert!(relayed.is_empty(), "the answer to our own de-registration goes nowhere");
}

#[test]
fn unanswered_forwards_time_out() {
    let r = registrar_from(CONFIG);
    let phone = Phone::new(13);
    send(&r, &phone, &phone.register(120, ""), now(0));
    assert_eq!(r.pending_len(), 1);
    r.on_tick(now(5), &mut Vec::new());
    assert_eq!(r.pending_len(), 0);
    assert_eq!(r.stats.backend_timeouts.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn phone_retransmissions_of_a_waiting_register_take_no_token() {
    let r = registrar_from(CONFIG);
    let phone = Phone::new(14);
    let register = phone.register(120, "");
    assert_eq!(send(&r, &phone, &register, now(0)).outcome, RegistrationOutcome::Forwarded);
    let again = send(&r, &phone, &register, Now { mono_ms: 200, unix_secs: 0 });
    assert_eq!(again.outcome, RegistrationOutcome::Retransmission);
    assert!(again.sends.is_empty() && again.reply.is_empty(), "dropped within T1");
    let later = send(&r, &phone, &register, Now { mono_ms: 900, unix_secs: 0 });
    assert_eq!(later.outcome, RegistrationOutcome::Retransmission);
    assert_eq!(later.sends.len(), 1, "sent on again after T1, in case our copy was lost");
    // The backend's answer to either copy completes the one transaction.
    answer(&r, &later.sends, "200 OK", 3600, Now { mono_ms: 950, unix_secs: 0 });
    assert!(r.registry.get("dev:SEP00000000000E").is_some());
    assert_eq!(r.pending_len(), 0);
    // Only the first copy took a rate-limit token: four new phones still fit in the 5/s bucket.
    let admitted = (200..204)
        .filter(|n| {
            let p = Phone::new(*n);
            send(&r, &p, &p.register(120, ""), Now { mono_ms: 950, unix_secs: 0 }).outcome
                == RegistrationOutcome::Forwarded
        })
        .count();
    assert_eq!(admitted, 4);
}

/// Every update the kernel mirror has received so far.
fn mirror_updates(updates: &crossbeam_channel::Receiver<MirrorUpdate>) -> Vec<MirrorUpdate> {
    updates.try_iter().collect()
}

fn upserted(update: &MirrorUpdate) -> &regedge_common::maps::BindingEntry {
    match update {
        MirrorUpdate::Upsert { entry, .. } => entry,
        MirrorUpdate::Remove { .. } => panic!("expected an upsert, got {update:?}"),
    }
}

#[test]
fn the_kernel_mirror_follows_every_binding_change() {
    use regedge_common::maps::{BINDING_PASS, BINDING_TO_HAS_TAG, FAMILY_IPV4, NO_CONTACT_EXPIRES};
    let r = registrar_from(CONFIG);
    let (updates, absorbed) = r.connect_kernel();
    let mut phone = Phone::new(20);
    registered(&r, &phone, now(0));
    let key = regedge_common::hash::call_id_key(b"call-20");
    let first = mirror_updates(&updates);
    assert_eq!(first.len(), 1, "{first:?}");
    let MirrorUpdate::Upsert { device, key: k, entry } = &first[0] else { panic!("{first:?}") };
    assert_eq!((device.as_str(), *k), ("dev:SEP000000000014", key));
    assert_eq!((entry.family, entry.peer_addr[..4].to_vec(), entry.cseq), (FAMILY_IPV4, vec![192, 0, 2, 7], 1));
    assert_eq!(entry.peer_port_be, u16::from_ne_bytes(40020u16.to_be_bytes()));
    assert_eq!((entry.local_addr[..4].to_vec(), entry.grant_ceiling), (vec![10, 0, 0, 1], 120));
    assert_eq!(entry.absorb_until_ms, 3600 * 1000 - 1800 * 1000, "half the backend's grant");
    assert_eq!((entry.contact_expires, entry.flags & (BINDING_PASS | BINDING_TO_HAS_TAG)), (NO_CONTACT_EXPIRES, 0));
    let contact = "<sip:1020@192.0.2.7:40020>;+u.sip!devicename.ccm.cisco.com=\"SEP000000000014\"";
    assert_eq!((entry.contact_uri_off, entry.contact_uri_len), (1, "sip:1020@192.0.2.7:40020".len() as u16));
    let to_hash = regedge_common::hash::hash_bytes(b"<sip:1020@example.net>");
    let contact_hash = regedge_common::hash::hash_bytes(contact.as_bytes());
    assert_eq!(entry.identity, regedge_common::hash::identity(to_hash, contact_hash));

    // A refresh answered in userspace moves the entry's CSeq on.
    phone.cseq = 2;
    assert_eq!(send(&r, &phone, &phone.register(120, ""), now(100)).outcome, RegistrationOutcome::Absorbed);
    assert_eq!(upserted(&mirror_updates(&updates)[0]).cseq, 2);

    // A refresh answered in the kernel is folded into the registry at the next tick.
    absorbed.send(AbsorbedRefresh { call_id_key: key, seen_ms: 200_000, cseq: 3, grant: 120 }).unwrap();
    r.on_tick(now(200), &mut Vec::new());
    let binding = r.registry.get("dev:SEP000000000014").unwrap();
    assert_eq!((binding.cseq, binding.last_seen_ms, binding.phone_expires_at_ms), (3, 200_000, 320_000));

    // The backend goes down: the entry is flagged, and unflagged when it comes back.
    r.on_backend_state(BackendId(0), BackendState::Down);
    assert_ne!(upserted(&mirror_updates(&updates)[0]).flags & BINDING_PASS, 0);
    r.on_backend_state(BackendId(0), BackendState::Up);
    assert_eq!(upserted(&mirror_updates(&updates)[0]).flags & BINDING_PASS, 0);

    // The phone goes silent: the binding lapses and the entry goes.
    let mut sends = Vec::new();
    r.on_tick(now(200 + 120 + 11), &mut sends);
    assert!(r.registry.get("dev:SEP000000000014").is_none());
    assert_eq!(
        mirror_updates(&updates),
        vec![MirrorUpdate::Remove { device: "dev:SEP000000000014".into(), key }],
        "removed the moment the binding ended"
    );
}

#[test]
fn a_new_call_id_replaces_the_kernel_entry_and_a_deregistration_removes_it() {
    let r = registrar_from(CONFIG);
    let (updates, _absorbed) = r.connect_kernel();
    let mut phone = Phone::new(21);
    registered(&r, &phone, now(0));
    let old_key = regedge_common::hash::call_id_key(b"call-21");
    mirror_updates(&updates);
    phone.call_id = "call-21-rebooted".into();
    phone.cseq = 1;
    registered(&r, &phone, now(10));
    let new_key = regedge_common::hash::call_id_key(b"call-21-rebooted");
    let changes = mirror_updates(&updates);
    assert_eq!(changes[0], MirrorUpdate::Remove { device: "dev:SEP000000000015".into(), key: old_key });
    assert!(matches!(changes[1], MirrorUpdate::Upsert { key, .. } if key == new_key), "{changes:?}");
    phone.cseq = 2;
    let step = send(&r, &phone, &phone.register(0, ""), now(20));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded);
    answer(&r, &step.sends, "200 OK", 0, now(20));
    assert_eq!(
        mirror_updates(&updates),
        vec![MirrorUpdate::Remove { device: "dev:SEP000000000015".into(), key: new_key }]
    );
}

#[test]
fn seeds_only_for_registers_the_kernel_can_match() {
    use mirror::KernelSeed;
    let seed = |text: &str| KernelSeed::of(&Message::parse(text.as_bytes()).unwrap());
    let base = "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1\r\n\
                From: <sip:1@example.net>;tag=a\r\nTo: <sip:1@example.net>;tag=x\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n";
    let with = |contact: &str, extra: &str| format!("{base}{contact}{extra}Content-Length: 0\r\n\r\n");
    let s = seed(&with("m: \"Al\" <sip:1@192.0.2.7>;expires=60;q=0.5\r\n", "Authorization: Digest x\r\n")).unwrap();
    assert_eq!((s.contact_uri_off, s.contact_uri_len, s.contact_expires), (6, 15, 60));
    assert!(s.to_has_tag);
    assert_eq!(s.auth, regedge_common::hash::hash_bytes(b"Digest x"));
    assert!(seed(&with("Contact: sip:1@192.0.2.7\r\n", "")).is_none(), "a URI outside brackets");
    assert!(seed(&with("Contact: <sip:1@192.0.2.7>\r\nContact: <sip:2@192.0.2.7>\r\n", "")).is_none());
    assert!(seed(&with("Contact: <sip:1@192.0.2.7>;\r\n expires=60\r\n", "")).is_none(), "folded");
    assert!(seed(&with("Contact: <sip:1@192.0.2.7>;expires\r\n", "")).is_none(), "an empty expires");
}

/// Beyond `[limits] max_pending_registrations` a REGISTER that would be forwarded gets 503
/// with Retry-After (no rate-limit token taken), counted; refreshes of known phones are
/// still answered here; once answers free slots, forwarding resumes.
#[test]
fn pending_registrations_are_capped() {
    use crate::limits::Limit;
    let r = registrar_from(&format!("[limits]\nmax_pending_registrations = 3\n{CONFIG}"));
    let known = Phone::new(300);
    registered(&r, &known, now(0));
    let mut waiting = Vec::new();
    for n in 301..304 {
        let phone = Phone::new(n);
        let step = send(&r, &phone, &phone.register(120, ""), now(1));
        assert_eq!(step.outcome, RegistrationOutcome::Forwarded, "{}", step.reply);
        waiting.push(step);
    }
    assert_eq!(r.pending_len(), 3);
    for n in 304..306 {
        let phone = Phone::new(n);
        let step = send(&r, &phone, &phone.register(120, ""), now(1));
        assert_eq!(step.outcome, RegistrationOutcome::RateLimited);
        assert!(
            step.reply.starts_with("SIP/2.0 503 Too Many Pending Registrations\r\n")
                && step.reply.contains("\r\nRetry-After: "),
            "{}",
            step.reply
        );
        assert!(step.sends.is_empty());
    }
    assert_eq!(r.pending_len(), 3, "nothing more is held");
    assert_eq!(r.limits().refused(Limit::PendingRegistrations), 2);
    // A known phone's refresh is absorbed as before: the cap is on what goes upstream.
    let mut renewed = known.clone();
    renewed.cseq = 2;
    let step = send(&r, &renewed, &renewed.register(120, ""), now(2));
    assert_eq!(step.outcome, RegistrationOutcome::Absorbed, "{}", step.reply);
    // One answer frees a slot: the next new phone is forwarded again.
    answer(&r, &waiting[0].sends, "200 OK", 3600, now(2));
    let phone = Phone::new(306);
    assert_eq!(send(&r, &phone, &phone.register(120, ""), now(3)).outcome, RegistrationOutcome::Forwarded);
    // With the default caps nothing of this is refused.
    assert_eq!(registrar_from(CONFIG).limits().cap(Limit::PendingRegistrations), 10_000);
}

/// A slow backend answers after the phone's retransmission of the same REGISTER went to
/// the next backend (the slow one was marked down meanwhile) and was accepted there: the
/// late 2xx neither moves the binding back nor de-registers the phone where it is now; the
/// late backend is told to drop the contact it stored, and the phone gets no second answer.
#[test]
fn a_late_answer_from_a_backend_the_phone_left_changes_nothing() {
    let r = registrar_from(CONFIG);
    let phone = Phone::new(400);
    let request = phone.register(120, "");
    let to_cm1 = send(&r, &phone, &request, now(0));
    assert_eq!(to_cm1.outcome, RegistrationOutcome::Forwarded);
    let cm1 = backend_of(&to_cm1);
    r.routing.backend(cm1).set_state(BackendState::Down);
    let to_cm2 = send(&r, &phone, &request, now(2));
    assert_eq!(to_cm2.outcome, RegistrationOutcome::Forwarded, "the retransmission goes to the next backend");
    let cm2 = backend_of(&to_cm2);
    assert_ne!(cm1, cm2);
    let relayed = answer(&r, &to_cm2.sends, "200 OK", 3600, now(2));
    assert!(relayed.starts_with("SIP/2.0 200 OK\r\n"), "{relayed}");

    let late = backend_answer(&to_cm1.sends[0].bytes, "200 OK", 3600);
    let mut sends = Vec::new();
    assert!(r.on_response(&Message::parse(&late).unwrap(), &late, now(3), &mut sends));
    let binding = r.registry.get(&format!("dev:{}", phone.device)).expect("still registered");
    assert_eq!(binding.backend, cm2, "the late answer moved the binding back");
    assert_eq!(sends.len(), 1, "one request: the de-registration at the late backend, nothing to the phone");
    assert!(matches!(sends[0].to, Destination::Backend(b) if b == cm1));
    let dereg = String::from_utf8(sends[0].bytes.clone()).unwrap();
    assert!(dereg.contains("\r\nExpires: 0\r\n") && dereg.contains("CSeq: 2 REGISTER"), "{dereg}");
    // Its answer ends nothing at cm2.
    let ok = backend_answer(&sends[0].bytes, "200 OK", 0);
    assert!(r.on_response(&Message::parse(&ok).unwrap(), &ok, now(3), &mut Vec::new()));
    assert_eq!(r.registry.get(&format!("dev:{}", phone.device)).map(|b| b.backend), Some(cm2));
}

#[test]
fn a_cseq_the_kernel_answered_is_never_absorbed_again_before_its_ring_record_arrives() {
    let r = registrar_from(CONFIG);
    let base = Phone::new(31);
    registered(&r, &base, now(0));
    assert!(r.registry.get("dev:SEP00000000001F").unwrap().kernel.is_some(), "a binding the kernel can answer");
    // The kernel answered CSeq 2 and 3; the ring has not brought them back.
    r.read_kernel_cseq_with(Box::new(|_| Some(3)));
    let with_cseq = |cseq| {
        let mut p = base.clone();
        p.cseq = cseq;
        p
    };
    let replay = with_cseq(3);
    let step = send(&r, &replay, &replay.register(120, ""), now(10));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded, "CSeq 3 again: the backend judges it");
    let older = with_cseq(2);
    let step = send(&r, &older, &older.register(120, ""), now(10));
    assert!(step.reply.starts_with("SIP/2.0 400 CSeq Out Of Order\r\n"), "{}", step.reply);
    let next = with_cseq(4);
    assert_eq!(send(&r, &next, &next.register(120, ""), now(10)).outcome, RegistrationOutcome::Absorbed);
}

/// A registrar sharing its bindings (`[cluster]`): the link the store thread would use and
/// the journal it would read.
fn clustered() -> (Registrar, Arc<crate::cluster::ClusterLink>, crossbeam_channel::Receiver<String>) {
    let link = crate::cluster::ClusterLink::new("n2", std::time::Duration::from_secs(15));
    let (journal, journal_rx) = crossbeam_channel::unbounded();
    (registrar_from(CONFIG).with_cluster(Arc::clone(&link), journal), link, journal_rx)
}

/// `device`'s binding on `from` as node n1's store thread writes it, read back at `at`.
fn shared_record(from: &Registrar, device: &str, at: Now) -> crate::cluster::DirectoryEntry {
    let clock = crate::cluster::WallClock::now(at.mono_ms);
    let binding = from.registry.get(device).expect("registered");
    let saved = crate::snapshot::SavedBinding::of(device, &binding, &from.routing, |t| clock.to_unix(t)).unwrap();
    crate::cluster::DirectoryEntry {
        owner: "n1".into(),
        lease_until_ms: clock.to_unix(at.mono_ms) + 15_000,
        binding: saved,
    }
}

/// `device`'s binding on `from`, written as if `from`'s time 0 were now (for look-ups that
/// read the real monotonic clock).
fn record_written_now(from: &Registrar, device: &str) -> crate::cluster::DirectoryEntry {
    let unix_now = crate::cluster::record::unix_ms();
    let binding = from.registry.get(device).expect("registered");
    let saved = crate::snapshot::SavedBinding::of(device, &binding, &from.routing, |t| unix_now + t).unwrap();
    crate::cluster::DirectoryEntry { owner: "n1".into(), lease_until_ms: unix_now + 15_000, binding: saved }
}

#[test]
fn a_phone_moved_from_another_node_is_adopted_on_sight_and_its_refresh_answered_here() {
    use crate::cluster::Adoption;
    let n1 = registrar_from(CONFIG);
    let (phone, gone) = (Phone::new(40), Phone::new(41));
    registered(&n1, &phone, now(0));
    registered(&n1, &gone, now(0));
    let (n2, link, journal) = clustered();
    link.directory.replace(vec![shared_record(&n1, "dev:SEP000000000028", now(30))]);
    let mut next = phone.clone();
    next.cseq = 2;
    let step = send(&n2, &next, &next.register(120, ""), now(30));
    assert_eq!(step.outcome, RegistrationOutcome::Absorbed, "{}", step.reply);
    assert!(step.sends.is_empty(), "nothing upstream: the backend's registration stands");
    assert_eq!(
        n2.registry.get("dev:SEP000000000028").unwrap().backend,
        n1.registry.get("dev:SEP000000000028").unwrap().backend
    );
    assert_eq!(link.stats.adopted(Adoption::Sighted), 1);
    assert!(link.is_takeover("dev:SEP000000000028"), "its next write takes the lease");
    assert!(journal.try_iter().any(|d| d == "dev:SEP000000000028"), "the adoption is written to the store");
    // A record whose phone registration ran out (lapse grace included) is of no use.
    link.directory.replace(vec![shared_record(&n1, "dev:SEP000000000029", now(200))]);
    let mut late = gone.clone();
    late.cseq = 2;
    let step = send(&n2, &late, &late.register(120, ""), now(200));
    assert_eq!(step.outcome, RegistrationOutcome::Forwarded, "a new registration");
    assert_eq!(link.stats.adopted(Adoption::Sighted), 1);
}

#[test]
fn a_request_for_a_phone_of_another_node_adopts_its_binding() {
    let n1 = registrar_from(CONFIG);
    let phone = Phone::new(42);
    registered(&n1, &phone, now(0));
    let (n2, link, _) = clustered();
    let record = record_written_now(&n1, "dev:SEP00000000002A");
    link.directory.replace(vec![record]);
    let (device, binding) = n2.binding_by_flow(&flow(phone.port)).expect("adopted by flow");
    assert_eq!(device, "dev:SEP00000000002A");
    assert_eq!(binding.call_id, phone.call_id);
    assert!(n2.registry.get(&device).is_some());
}

#[test]
fn a_binding_another_node_took_is_let_go_without_a_deregistration() {
    let (n2, link, journal) = clustered();
    let phone = Phone::new(43);
    registered(&n2, &phone, now(0));
    journal.try_iter().count();
    link.lost("dev:SEP00000000002B".into());
    let mut sends = Vec::new();
    n2.on_tick(now(1), &mut sends);
    assert!(sends.is_empty(), "no de-registration: the phone is served by the other node");
    assert!(n2.registry.get("dev:SEP00000000002B").is_none());
    assert!(link.was_handed_over("dev:SEP00000000002B"), "its record is not deleted");
}

#[test]
fn bindings_the_sweeper_took_over_are_loaded_on_the_next_tick() {
    use crate::cluster::Adoption;
    let n1 = registrar_from(CONFIG);
    let phone = Phone::new(44);
    registered(&n1, &phone, now(0));
    let (n2, link, _) = clustered();
    link.swept(shared_record(&n1, "dev:SEP00000000002C", now(5)).binding);
    let mut sends = Vec::new();
    n2.on_tick(now(5), &mut sends);
    assert!(sends.is_empty());
    assert_eq!(n2.registry.get("dev:SEP00000000002C").unwrap().call_id, phone.call_id);
    assert_eq!(link.stats.adopted(Adoption::Swept), 1);
}

#[test]
fn a_flow_unknown_here_is_asked_of_the_store_and_found_on_the_retransmission() {
    use crate::cluster::Adoption;
    let n1 = registrar_from(CONFIG);
    let phone = Phone::new(45);
    registered(&n1, &phone, now(0));
    let (n2, link, _) = clustered();
    // With the store down nothing waits: no binding.
    assert_eq!(n2.find_by_flow(&flow(phone.port)), Held::Nowhere);
    link.stats.store_up.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n2.find_by_flow(&flow(phone.port)), Held::Asked);
    assert_eq!(n2.find_by_flow(&flow(phone.port)), Held::Asked, "asked once");
    assert_eq!(link.take_lookups(), [flow(phone.port)]);
    link.answer(flow(phone.port), Some(record_written_now(&n1, "dev:SEP00000000002D")));
    let Held::Here((device, _)) = n2.find_by_flow(&flow(phone.port)) else { panic!("adopted from the answer") };
    assert_eq!(device, "dev:SEP00000000002D");
    assert_eq!(link.stats.adopted(Adoption::Sighted), 1);
    // A flow the store does not know: absent, and believed for a while.
    assert_eq!(n2.find_by_flow(&flow(9)), Held::Asked);
    for lookup in link.take_lookups() {
        link.answer(lookup, None);
    }
    assert_eq!(n2.find_by_flow(&flow(9)), Held::Nowhere);
    assert!(link.take_lookups().is_empty());
}
