//! Ethernet frames for BPF_PROG_TEST_RUN: builders for UDP over IPv4 and IPv6 (and the
//! odd shapes the fast path must pass), and a parser that checks a reply frame.

use std::net::{IpAddr, SocketAddr};

pub const PHONE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const PROXY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// RFC 1071 checksum of `data` starting from `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u32 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    bytes.extend_from_slice(&[0, protocol]);
    bytes.extend_from_slice(&(len as u32).to_be_bytes()[if src.is_ipv4() { 2 } else { 0 }..]);
    bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum()
}

/// UDP checksum of a UDP header + payload whose checksum field is zero.
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let c = checksum(udp, pseudo_header_sum(src, dst, 17, udp.len()));
    if c == 0 { 0xffff } else { c }
}

/// Knobs for the frame shapes the fast path must pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    /// IPv4 header with 4 bytes of options (IHL 6).
    pub ipv4_options: bool,
    /// IPv4 more-fragments bit set.
    pub ipv4_fragment: bool,
    /// IPv6 hop-by-hop options header before UDP.
    pub ipv6_hop_by_hop: bool,
    /// IP protocol number instead of UDP (17).
    pub protocol: Option<u8>,
    /// 802.1Q tag.
    pub vlan: bool,
    /// Bytes removed from the end of the frame after the headers were written.
    pub truncate: usize,
}

/// An Ethernet frame carrying `payload` in UDP from `src` to `dst`.
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    shaped_udp_frame(src, dst, payload, Shape::default())
}

pub fn shaped_udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8], shape: Shape) -> Vec<u8> {
    let protocol = shape.protocol.unwrap_or(17);
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = udp_checksum(src.ip(), dst.ip(), &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());

    let mut frame = Vec::new();
    frame.extend_from_slice(&PROXY_MAC);
    frame.extend_from_slice(&PHONE_MAC);
    if shape.vlan {
        frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    }
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&[0x08, 0x00]);
            let options: &[u8] = if shape.ipv4_options { &[1, 1, 1, 0] } else { &[] };
            let header_len = 20 + options.len();
            let mut ip = vec![0u8; header_len];
            ip[0] = 0x40 | (header_len / 4) as u8;
            ip[2..4].copy_from_slice(&((header_len + udp.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            let frag: u16 = if shape.ipv4_fragment { 0x2000 } else { 0x4000 };
            ip[6..8].copy_from_slice(&frag.to_be_bytes());
            ip[8] = 64;
            ip[9] = protocol;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            ip[20..].copy_from_slice(options);
            let c = checksum(&ip, 0);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&[0x86, 0xdd]);
            let hop_by_hop: &[u8] = if shape.ipv6_hop_by_hop { &[protocol, 0, 1, 4, 0, 0, 0, 0] } else { &[] };
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&((hop_by_hop.len() + udp.len()) as u16).to_be_bytes());
            ip[6] = if shape.ipv6_hop_by_hop { 0 } else { protocol };
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            frame.extend_from_slice(&ip);
            frame.extend_from_slice(hop_by_hop);
        }
        _ => panic!("mixed address families"),
    }
    frame.extend_from_slice(&udp);
    frame.truncate(frame.len() - shape.truncate);
    frame
}

/// An ARP request frame (not IP).
pub fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&PHONE_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&PHONE_MAC);
    frame.extend_from_slice(&[10, 0, 0, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 0, 0, 1]);
    frame
}

/// A reply frame, checked: lengths consistent, IPv4 header checksum and UDP checksum
/// valid (and non-zero).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

pub fn parse_reply(frame: &[u8]) -> Result<Reply, String> {
    let eth_dst: [u8; 6] = frame[0..6].try_into().unwrap();
    let eth_src: [u8; 6] = frame[6..12].try_into().unwrap();
    let (src_ip, dst_ip, udp): (IpAddr, IpAddr, &[u8]) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let ip = &frame[14..34];
            if checksum(ip, 0) != 0 {
                return Err("bad IPv4 header checksum".into());
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if 14 + total != frame.len() {
                return Err(format!("IPv4 total length {total} but frame has {}", frame.len() - 14));
            }
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (s.into(), d.into(), &frame[34..])
        }
        0x86dd => {
            let ip = &frame[14..54];
            let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if 54 + payload_len != frame.len() {
                return Err(format!("IPv6 payload length {payload_len} but frame has {}", frame.len() - 54));
            }
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), &frame[54..])
        }
        other => return Err(format!("ethertype {other:#06x}")),
    };
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if udp_len != udp.len() {
        return Err(format!("UDP length {udp_len} but {} bytes", udp.len()));
    }
    let sent = u16::from_be_bytes([udp[6], udp[7]]);
    let mut zeroed = udp.to_vec();
    zeroed[6..8].fill(0);
    if sent == 0 || sent != udp_checksum(src_ip, dst_ip, &zeroed) {
        return Err(format!("bad UDP checksum {sent:#06x}"));
    }
    Ok(Reply {
        eth_dst,
        eth_src,
        src: SocketAddr::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..].to_vec(),
    })
}
