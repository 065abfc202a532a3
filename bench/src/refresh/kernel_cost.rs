//! What one ~600-byte refresh costs the XDP program: BPF_PROG_TEST_RUN on the generator's
//! own refresh frame, with a `BINDINGS` entry that makes the kernel answer it (built as the
//! registrar's mirror builds it, from `KernelSeed::of` the phone's first REGISTER), beside
//! the program's cheapest pass (a non-IP frame) as the harness floor, and the same refresh
//! with an unknown Call-ID (passed after the lookup).
//!
//! The kernel writes the answered CSeq back into the entry, so the entry is written again
//! before each run, and each call runs the program once (`repeat` = 1; see main.rs on why
//! `repeat` re-runs the rewritten frame); the kernel's timing of each run is kept.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use regedge::{
    datapath::{AnswerSettings, Fastpath},
    local_names::LocalNames,
    registrar::mirror::KernelSeed,
    sip::{Message, stateless::ToTag},
};
use regedge_common::maps::{BINDING_TO_HAS_TAG, BindingEntry, FAMILY_IPV4};
use regedge_tests::frames::{arp_frame, udp_frame};

use super::generator::{FleetSpec, refresh_payload};

pub const RUNS: usize = 20_000;

pub struct CostRow {
    pub name: String,
    pub bytes: usize,
    pub action: &'static str,
    pub median_ns: u32,
    pub p99_ns: u32,
}

fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn action_name(action: u32) -> &'static str {
    match action {
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        _ => "other",
    }
}

fn v4(addr: SocketAddr) -> ([u8; 16], u16) {
    let mut bytes = [0u8; 16];
    if let SocketAddr::V4(a) = addr {
        bytes[..4].copy_from_slice(&a.ip().octets());
    }
    (bytes, u16::from_ne_bytes(addr.port().to_be_bytes()))
}

/// Measures the rows; `spec` gives the phones (the first one is used).
pub fn measure(spec: &FleetSpec, node: &str) -> anyhow::Result<(Vec<CostRow>, Option<u32>)> {
    let proxy = SocketAddr::new(spec.server.into(), 5060);
    let names = LocalNames::new(std::slice::from_ref(&spec.domain), &[proxy], &[]);
    let mut fastpath = Fastpath::load().context("load the XDP program")?;
    fastpath
        .configure(&[proxy], &names, ToTag::for_node(node), AnswerSettings { register: true, date_header: true })
        .context("configure the XDP program")?;
    let (first, phone) = refresh_payload(spec, 0, 1);
    let msg = Message::parse(&first).map_err(|e| anyhow::anyhow!("the REGISTER does not parse: {e:?}"))?;
    let Some(seed) = KernelSeed::of(&msg) else { bail!("the kernel cannot match this REGISTER (no seed)") };
    let (peer_addr, peer_port_be) = v4(phone);
    let (local_addr, local_port_be) = v4(proxy);
    let entry = |now: u64| BindingEntry {
        identity: seed.identity,
        auth: seed.auth,
        absorb_until_ms: now + 1_800_000,
        last_seen_ms: now,
        peer_addr,
        local_addr,
        cseq: 1,
        grant_ceiling: 120,
        contact_expires: seed.contact_expires,
        family: FAMILY_IPV4,
        flags: if seed.to_has_tag { BINDING_TO_HAS_TAG } else { 0 },
        peer_port_be,
        local_port_be,
        contact_uri_off: seed.contact_uri_off,
        contact_uri_len: seed.contact_uri_len,
    };
    let (refresh, _) = refresh_payload(spec, 0, 2);
    let refresh_frame = udp_frame(phone, proxy, &refresh);
    let unknown = {
        let mut other = spec.clone();
        other.tag = b'z';
        udp_frame(phone, proxy, &refresh_payload(&other, 0, 2).0)
    };
    let fixtures: [(String, Vec<u8>, bool); 3] = [
        ("floor: non-IP frame, passed at the first check".to_owned(), arp_frame(), false),
        (
            format!("REGISTER refresh ({} bytes of SIP), binding in BINDINGS: answered", refresh.len()),
            refresh_frame,
            true,
        ),
        ("the same refresh, unknown Call-ID: passed after the lookup".to_owned(), unknown, true),
    ];
    let mut rows = Vec::new();
    for (name, frame, needs_entry) in fixtures {
        let mut durations = Vec::with_capacity(RUNS);
        let mut action = 0;
        for _ in 0..RUNS {
            if needs_entry {
                let bindings = fastpath.bindings_mut().context("BINDINGS map")?;
                bindings.upsert(seed.call_id_key, &entry(monotonic_ms())).context("BINDINGS upsert")?;
            }
            let run = fastpath.test_run(&frame, 1)?;
            action = run.action;
            durations.push(run.duration_ns);
        }
        durations.sort_unstable();
        rows.push(CostRow {
            name,
            bytes: frame.len(),
            action: action_name(action),
            median_ns: durations[RUNS / 2],
            p99_ns: durations[RUNS * 99 / 100],
        });
    }
    Ok((rows, fastpath.verified_instructions()))
}
