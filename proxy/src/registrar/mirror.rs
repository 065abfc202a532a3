//! The kernel mirror of absorbable bindings: what the XDP program needs to answer a
//! phone's UDP REGISTER refresh exactly as [`Registrar::on_register`] would, and when it
//! may (`regedge_common::maps::BindingEntry`).
//!
//! The contract between the two sides:
//! - The entry's key is the hash of the trimmed Call-ID value; the entry holds the
//!   binding's UDP flow (both ends), the hashes of the trimmed To and Contact values and of
//!   the Authorization value last accepted, the CSeq last accepted, the grant ceiling, the
//!   contact's `expires` parameter and where the contact URI sits in the Contact value.
//! - The kernel answers only a refresh that matches all of it with a higher CSeq, asks for
//!   a non-zero expiry, and whose grant ends before `absorb_until_ms` — the moment the
//!   backend's registration would be past half its life (decision rule
//!   `BackendRefreshDue`). The grant is `min(requested, grant_ceiling)`, as
//!   [`Registrar::grant`] computes it.
//! - Userspace writes the entry when a binding becomes absorbable (a backend's 2xx, a
//!   refresh answered here), flags it (`BINDING_PASS`) when its backend stops being the
//!   group's active, healthy one, and removes it when the binding ends. The kernel writes
//!   back `cseq` and `last_seen_ms`, and posts each answer to the `ABSORBED` ring, which
//!   the registrar folds into its registry ([`Registrar::fold_absorbed`]).
//!
//! A REGISTER gets a [`KernelSeed`] only when the kernel can match it byte for byte later:
//! one unfolded To, Call-ID and Contact header, UTF-8 Call-ID and contact URI (bindings
//! keep them as strings), and a contact URI in angle brackets.

use regedge_common::{
    hash,
    maps::{BINDING_PASS, BINDING_TO_HAS_TAG, BindingEntry, FAMILY_IPV4, FAMILY_IPV6, NO_CONTACT_EXPIRES},
};

use crate::{
    registry::{Binding, Flow, Transport},
    sip::{HeaderName, Message, contact::Contact, message::trim},
};

/// What the kernel entry takes from the REGISTER a binding was last accepted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelSeed {
    pub call_id_key: u64,
    pub identity: u64,
    /// Hash of the Authorization (or Proxy-Authorization) value; 0 if there was none.
    pub auth: u64,
    pub contact_expires: u32,
    pub contact_uri_off: u16,
    pub contact_uri_len: u16,
    pub to_has_tag: bool,
}

fn is_contact(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"contact") || name.eq_ignore_ascii_case(b"m")
}

fn is_auth(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"proxy-authorization")
}

fn folded(value: &[u8]) -> bool {
    value.contains(&b'\r') || value.contains(&b'\n')
}

impl KernelSeed {
    /// The seed of a REGISTER, or `None` if the kernel could not match its refreshes.
    pub fn of(msg: &Message<'_>) -> Option<Self> {
        let mut to = None;
        let mut call_id = None;
        let mut contact = None;
        let mut auth = None;
        for header in msg.headers() {
            let slot = match HeaderName::of(header.name) {
                HeaderName::To => &mut to,
                HeaderName::CallId => &mut call_id,
                _ if is_contact(header.name) => &mut contact,
                _ if is_auth(header.name) => {
                    auth.get_or_insert(header.value);
                    continue;
                }
                _ => continue,
            };
            if slot.replace(header.value).is_some() {
                return None;
            }
        }
        let (to, call_id, contact) = (trim(to?), trim(call_id?), trim(contact?));
        if folded(to) || folded(call_id) || folded(contact) || std::str::from_utf8(call_id).is_err() {
            return None;
        }
        let parsed = Contact::parse(contact)?;
        let uri_off = (parsed.uri.as_ptr() as usize).checked_sub(contact.as_ptr() as usize)?;
        if uri_off == 0 || contact.get(uri_off - 1) != Some(&b'<') || std::str::from_utf8(parsed.uri).is_err() {
            return None;
        }
        // A parameter the registrar would reject (empty, not digits) gets no seed.
        let contact_expires = match parsed.param(b"expires").map(trim) {
            Some([]) => return None,
            Some(v) => {
                let n = v.iter().try_fold(0u64, |n, d| {
                    (d.is_ascii_digit() && n < 1_000_000_000).then(|| n * 10 + (d - b'0') as u64)
                })?;
                n.min(NO_CONTACT_EXPIRES as u64 - 1) as u32
            }
            None => NO_CONTACT_EXPIRES,
        };
        Some(Self {
            call_id_key: hash::call_id_key(call_id),
            identity: hash::identity(hash::hash_bytes(to), hash::hash_bytes(contact)),
            auth: auth.map_or(0, |a| hash::hash_bytes(trim(a))),
            contact_expires,
            contact_uri_off: u16::try_from(uri_off).ok()?,
            contact_uri_len: u16::try_from(parsed.uri.len()).ok()?,
            to_has_tag: to.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag=")),
        })
    }
}

/// The address bytes and port of a socket address as `BindingEntry` holds them.
fn wire(addr: std::net::SocketAddr) -> (u16, [u8; 16], u16) {
    let port_be = u16::from_ne_bytes(addr.port().to_be_bytes());
    match addr {
        std::net::SocketAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.ip().octets());
            (FAMILY_IPV4, bytes, port_be)
        }
        std::net::SocketAddr::V6(v6) => (FAMILY_IPV6, v6.ip().octets(), port_be),
    }
}

/// The kernel entry for a binding: `None` for a binding the kernel can never answer
/// (TCP, no seed, mixed address families).
pub fn entry(binding: &Binding, grant_ceiling: u32, absorbable: bool) -> Option<(u64, BindingEntry)> {
    let seed = binding.kernel?;
    if binding.flow.transport != Transport::Udp {
        return None;
    }
    let Flow { peer, local, .. } = binding.flow;
    let (family, peer_addr, peer_port_be) = wire(peer);
    let (local_family, local_addr, local_port_be) = wire(local);
    if family != local_family {
        return None;
    }
    let refresh_due_ms = binding.backend_granted as u64 * 1000 / 2;
    let mut flags = if seed.to_has_tag { BINDING_TO_HAS_TAG } else { 0 };
    if !absorbable {
        flags |= BINDING_PASS;
    }
    Some((
        seed.call_id_key,
        BindingEntry {
            identity: seed.identity,
            auth: seed.auth,
            absorb_until_ms: binding.backend_valid_until_ms.saturating_sub(refresh_due_ms),
            last_seen_ms: binding.last_seen_ms,
            peer_addr,
            local_addr,
            cseq: binding.cseq,
            grant_ceiling,
            contact_expires: seed.contact_expires,
            family,
            flags,
            peer_port_be,
            local_port_be,
            contact_uri_off: seed.contact_uri_off,
            contact_uri_len: seed.contact_uri_len,
        },
    ))
}

/// A change for the kernel mirror, applied in order by the mirror thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorUpdate {
    /// Insert or replace the entry of `device`.
    Upsert { device: String, key: u64, entry: BindingEntry },
    /// Remove the entry under `key` if it still belongs to `device`.
    Remove { device: String, key: u64 },
}
