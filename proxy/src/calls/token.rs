//! Flow tokens (RFC 5626 §5.2): the user part of the URIs regedge puts in Path, in
//! Record-Route and in its own Via, naming the flow a request must go back over — the
//! phone's UDP address and port or its TCP connection, and the local address it reached.
//!
//! A token is the flow in a fixed binary layout followed by a keyed hash of it, written
//! in lower-case hex (a valid URI user part and Via parameter value):
//!
//! ```text
//! kind(1) peer-ip(4|16) peer-port(2) local-ip(4|16) local-port(2) [connection(8)] mac(8)
//! ```
//!
//! `kind` holds the transport (bit 0: TCP) and the address families (bit 1: peer IPv6,
//! bit 2: local IPv6); the connection number is present for TCP only. The key is the
//! node's flow-token key (kept in `[node] state_dir`, so tokens outlive restarts), so a
//! token cannot be forged or altered without it.

use std::{
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::registry::{ConnectionId, Flow, Transport};

const TCP: u8 = 1;
const PEER_V6: u8 = 2;
const LOCAL_V6: u8 = 4;
const MAC_LEN: usize = 8;
/// Longest token in bytes before hex: two IPv6 ends, a connection, the MAC.
const MAX_RAW: usize = 1 + 18 + 18 + 8 + MAC_LEN;

/// Why a token names no flow (answered 430 Flow Failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a flow token")]
    Malformed,
    #[error("flow token not issued by this node")]
    Forged,
}

fn mac(key: u64, raw: &[u8]) -> [u8; MAC_LEN] {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    raw.hash(&mut hasher);
    hasher.finish().to_be_bytes()
}

fn push_addr(raw: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => raw.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => raw.extend_from_slice(&ip.octets()),
    }
    raw.extend_from_slice(&addr.port().to_be_bytes());
}

/// The token of `flow`, keyed with `key`.
pub fn encode(flow: &Flow, key: u64) -> String {
    let mut raw = Vec::with_capacity(MAX_RAW);
    let mut kind = 0;
    if flow.transport == Transport::Tcp {
        kind |= TCP;
    }
    if flow.peer.is_ipv6() {
        kind |= PEER_V6;
    }
    if flow.local.is_ipv6() {
        kind |= LOCAL_V6;
    }
    raw.push(kind);
    push_addr(&mut raw, flow.peer);
    push_addr(&mut raw, flow.local);
    if flow.transport == Transport::Tcp {
        raw.extend_from_slice(&flow.connection.map_or(0, |c| c.0).to_be_bytes());
    }
    let mac = mac(key, &raw);
    raw.extend_from_slice(&mac);
    let mut text = String::with_capacity(raw.len() * 2);
    for byte in raw {
        text.push(char::from(b"0123456789abcdef"[(byte >> 4) as usize]));
        text.push(char::from(b"0123456789abcdef"[(byte & 15) as usize]));
    }
    text
}

/// Whether `user` has the shape of a token (hex of a plausible length), so that a
/// Request-URI user such as `1001` is not mistaken for a damaged token.
pub fn looks_like_token(user: &[u8]) -> bool {
    user.len() >= 2 * (1 + 6 + 6 + MAC_LEN) && user.len() % 2 == 0 && user.iter().all(u8::is_ascii_hexdigit)
}

/// The flow `token` names, if this node issued it with `key`.
pub fn decode(token: &[u8], key: u64) -> Result<Flow, TokenError> {
    if token.len() % 2 != 0 || token.len() > 2 * MAX_RAW {
        return Err(TokenError::Malformed);
    }
    let mut raw = [0u8; MAX_RAW];
    let raw = &mut raw[..token.len() / 2];
    for (i, pair) in token.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        raw[i] = match (digit(pair[0]), digit(pair[1])) {
            (Some(high), Some(low)) => high << 4 | low,
            _ => return Err(TokenError::Malformed),
        };
    }
    let kind = *raw.first().ok_or(TokenError::Malformed)?;
    let addr_len = |v6: bool| if v6 { 18 } else { 6 };
    let tcp = kind & TCP != 0;
    let body_len = 1 + addr_len(kind & PEER_V6 != 0) + addr_len(kind & LOCAL_V6 != 0) + if tcp { 8 } else { 0 };
    if kind & !(TCP | PEER_V6 | LOCAL_V6) != 0 || raw.len() != body_len + MAC_LEN {
        return Err(TokenError::Malformed);
    }
    let (body, tag) = raw.split_at(body_len);
    if mac(key, body) != tag {
        return Err(TokenError::Forged);
    }
    let mut at = 1;
    let mut take_addr = |v6: bool| {
        let ip = if v6 {
            let octets: [u8; 16] = body[at..at + 16].try_into().expect("length checked");
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            let octets: [u8; 4] = body[at..at + 4].try_into().expect("length checked");
            IpAddr::V4(Ipv4Addr::from(octets))
        };
        let len = addr_len(v6);
        let port = u16::from_be_bytes([body[at + len - 2], body[at + len - 1]]);
        at += len;
        SocketAddr::new(ip, port)
    };
    let peer = take_addr(kind & PEER_V6 != 0);
    let local = take_addr(kind & LOCAL_V6 != 0);
    let connection =
        tcp.then(|| ConnectionId(u64::from_be_bytes(body[at..at + 8].try_into().expect("length checked"))));
    Ok(Flow { transport: if tcp { Transport::Tcp } else { Transport::Udp }, peer, local, connection })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows() -> [Flow; 3] {
        [
            Flow {
                transport: Transport::Udp,
                peer: "192.0.2.7:5062".parse().unwrap(),
                local: "192.0.2.1:5060".parse().unwrap(),
                connection: None,
            },
            Flow {
                transport: Transport::Tcp,
                peer: "[2001:db8::7]:40000".parse().unwrap(),
                local: "[2001:db8::1]:5060".parse().unwrap(),
                connection: Some(ConnectionId(77)),
            },
            Flow {
                transport: Transport::Tcp,
                peer: "192.0.2.8:1".parse().unwrap(),
                local: "[::1]:5060".parse().unwrap(),
                connection: Some(ConnectionId(u64::MAX)),
            },
        ]
    }

    #[test]
    fn tokens_round_trip_and_resist_tampering() {
        for flow in flows() {
            let token = encode(&flow, 42);
            assert!(looks_like_token(token.as_bytes()), "{token}");
            assert_eq!(decode(token.as_bytes(), 42), Ok(flow));
            assert_eq!(decode(token.as_bytes(), 43), Err(TokenError::Forged), "another node's key");
            // Every single-digit change is refused.
            for i in 0..token.len() {
                let mut bytes = token.clone().into_bytes();
                bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
                assert!(decode(&bytes, 42).is_err(), "{token} changed at {i}");
            }
            assert_eq!(decode(&token.as_bytes()[..token.len() - 2], 42), Err(TokenError::Malformed));
        }
        assert_eq!(decode(b"zz", 1), Err(TokenError::Malformed));
        assert_eq!(decode(b"", 1), Err(TokenError::Malformed));
        assert!(!looks_like_token(b"1001"));
    }
}
