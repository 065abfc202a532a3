//! Typed SCCP (Skinny) messages for registration and keepalive; every other message is
//! [`Message::Other`], kept as opaque bytes to relay.
//!
//! Layouts follow Wireshark's packet-skinny.c (all integers little-endian unless said
//! otherwise). Every decoded message encodes back to the very bytes it came from: fields
//! a decision does not need (padding, unknown bytes, the optional tails of a Register)
//! are kept verbatim.
//!
//! A typed message whose payload length does not fit its layout is a [`DecodeError`];
//! the frame itself is fine (the framing layer checked it), so the caller may still relay
//! its bytes or drop the connection, as its policy says.

use regedge_common::sccp::id;

use super::framing::encode_header;

/// Size of a device name field: `SEP` + 12 hex digits, NUL-padded.
pub const DEVICE_NAME_LEN: usize = 16;
/// Size of the text of a [`Message::RegisterReject`] the edge writes itself.
pub const REJECT_TEXT_LEN: usize = 32;

/// Why a payload does not fit its message's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is shorter or longer than the message's layout allows.
    #[error("SCCP message {message_id:#06x}: payload of {len} bytes does not fit its layout")]
    BadPayloadLength { message_id: u32, len: usize },
    /// A device name that is not printable ASCII up to its first NUL.
    #[error("SCCP message {message_id:#06x}: device name is not printable ASCII")]
    BadDeviceName { message_id: u32 },
}

impl DecodeError {
    /// Every error kind (with placeholder values), for pre-registering metrics.
    pub const ALL: [Self; 2] =
        [Self::BadPayloadLength { message_id: 0, len: 0 }, Self::BadDeviceName { message_id: 0 }];

    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::BadPayloadLength { .. } => "bad_payload_length",
            Self::BadDeviceName { .. } => "bad_device_name",
        }
    }
}

/// One Skinny message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// 0x0000, phone → server, empty.
    KeepAlive,
    /// 0x0001, phone → server.
    Register(Register),
    /// 0x0002, phone → server: the phone's RTP port.
    IpPort { port: u32 },
    /// 0x0027, phone → server; the reason code is absent in older protocol versions.
    Unregister { reason: Option<u32> },
    /// 0x0029, phone → server (SRST / token registration).
    RegisterTokenReq(RegisterTokenReq),
    /// 0x0081, server → phone.
    RegisterAck(RegisterAck),
    /// 0x009B, server → phone, empty.
    CapabilitiesReq,
    /// 0x009D, server → phone: the reason text, kept whole (NUL padding included).
    RegisterReject { text: Vec<u8> },
    /// 0x0100, server → phone, empty.
    KeepAliveAck,
    /// 0x0118, server → phone.
    UnregisterAck { status: u32 },
    /// 0x011A, server → phone, empty.
    RegisterTokenAck,
    /// 0x011B, server → phone: seconds to wait before the next RegisterTokenReq.
    RegisterTokenReject { wait_time: u32 },
    /// Any other message, relayed as opaque bytes.
    Other { message_id: u32, payload: Vec<u8> },
}

/// The Register message (0x0001).
///
/// Payload: `device_name[16]`, u32 `user_id` (Wireshark: reserved_for_future_use), u32
/// `instance`, `station_ip[4]` in network order, u32 `device_type`, u32 `max_streams`
/// (36 bytes), then optional tails whose presence depends on the length (Wireshark reads
/// them when `data_length` > 52, > 100, > 191). The tails are kept verbatim in
/// [`Register::tail`] and read by the accessors, which return `None` when the phone did
/// not send that far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register {
    pub device_name: [u8; DEVICE_NAME_LEN],
    pub user_id: u32,
    pub instance: u32,
    /// IPv4 address in network byte order.
    pub station_ip: [u8; 4],
    pub device_type: u32,
    pub max_streams: u32,
    /// Everything after `max_streams`, verbatim.
    pub tail: Vec<u8>,
}

/// Offsets of the Register tail fields, counted from the start of [`Register::tail`].
pub mod register_tail {
    /// u32 activeStreams.
    pub const ACTIVE_STREAMS: usize = 0;
    /// u8 protocolVer: the phone's highest protocol version.
    pub const PROTOCOL_VERSION: usize = 4;
    /// u16 phoneFeatures (after one unknown byte).
    pub const PHONE_FEATURES: usize = 6;
    /// u32 maxConferences.
    pub const MAX_CONFERENCES: usize = 8;
    /// End of the first tail (payload 48 bytes).
    pub const FIRST_END: usize = 12;
    /// u32 activeConferences.
    pub const ACTIVE_CONFERENCES: usize = 12;
    /// macAddress[6], then 6 bytes of padding.
    pub const MAC_ADDRESS: usize = 16;
    /// u32 ipV4AddressScope.
    pub const IPV4_SCOPE: usize = 28;
    /// u32 maxNumberOfLines.
    pub const MAX_LINES: usize = 32;
    /// stationIpV6Addr[16].
    pub const STATION_IPV6: usize = 36;
    /// u32 ipV6AddressScope.
    pub const IPV6_SCOPE: usize = 52;
    /// firmwareLoadName[32].
    pub const FIRMWARE_LOAD_NAME: usize = 56;
    /// End of the second tail (payload 124 bytes).
    pub const SECOND_END: usize = 88;
    /// configVersionStamp[48].
    pub const CONFIG_VERSION_STAMP: usize = 88;
    /// End of the third tail (payload 172 bytes).
    pub const THIRD_END: usize = 136;
}

/// Payload bytes of a Register before its tails.
const REGISTER_FIXED: usize = 36;

impl Register {
    /// A Register without tails.
    pub fn new(device_name: &str, station_ip: [u8; 4], device_type: u32) -> Self {
        Self {
            device_name: device_name_field(device_name),
            user_id: 0,
            instance: 1,
            station_ip,
            device_type,
            max_streams: 0,
            tail: Vec::new(),
        }
    }

    /// The device name up to its first NUL (printable ASCII, checked by decode).
    pub fn device_name(&self) -> &str {
        name_str(&self.device_name)
    }

    /// The MAC address a `SEP` + 12 hex digits device name carries.
    pub fn mac(&self) -> Option<[u8; 6]> {
        mac_of(self.device_name())
    }

    fn tail_bytes<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.tail.get(at..at + N).map(|b| b.try_into().expect("slice of N bytes"))
    }

    fn tail_u32(&self, at: usize) -> Option<u32> {
        self.tail_bytes::<4>(at).map(u32::from_le_bytes)
    }

    pub fn active_streams(&self) -> Option<u32> {
        self.tail_u32(register_tail::ACTIVE_STREAMS)
    }

    /// The highest protocol version the phone speaks.
    pub fn protocol_version(&self) -> Option<u8> {
        self.tail_bytes::<1>(register_tail::PROTOCOL_VERSION).map(|[v]| v)
    }

    pub fn phone_features(&self) -> Option<u16> {
        self.tail_bytes::<2>(register_tail::PHONE_FEATURES).map(u16::from_le_bytes)
    }

    pub fn max_conferences(&self) -> Option<u32> {
        self.tail_u32(register_tail::MAX_CONFERENCES)
    }

    pub fn active_conferences(&self) -> Option<u32> {
        self.tail_u32(register_tail::ACTIVE_CONFERENCES)
    }

    /// The MAC address field of the second tail (as opposed to [`Self::mac`]).
    pub fn reported_mac(&self) -> Option<[u8; 6]> {
        self.tail_bytes(register_tail::MAC_ADDRESS)
    }

    pub fn max_lines(&self) -> Option<u32> {
        self.tail_u32(register_tail::MAX_LINES)
    }

    pub fn station_ipv6(&self) -> Option<[u8; 16]> {
        self.tail_bytes(register_tail::STATION_IPV6)
    }

    /// The firmware load name, up to its first NUL (`None` if absent or not ASCII).
    pub fn firmware_load_name(&self) -> Option<&str> {
        self.tail_str(register_tail::FIRMWARE_LOAD_NAME, 32)
    }

    /// The config version stamp, up to its first NUL (`None` if absent or not ASCII).
    pub fn config_version_stamp(&self) -> Option<&str> {
        self.tail_str(register_tail::CONFIG_VERSION_STAMP, 48)
    }

    fn tail_str(&self, at: usize, len: usize) -> Option<&str> {
        let field = self.tail.get(at..at + len)?;
        let text = &field[..field.iter().position(|&b| b == 0).unwrap_or(len)];
        text.is_ascii().then(|| std::str::from_utf8(text).expect("ASCII is UTF-8"))
    }
}

/// The RegisterTokenReq message (0x0029): the same station id as a Register, then the
/// station IP (fields after `device_type` depend on the protocol version and are kept
/// verbatim in `rest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterTokenReq {
    pub device_name: [u8; DEVICE_NAME_LEN],
    pub user_id: u32,
    pub instance: u32,
    /// As sent (Wireshark reads it little-endian here, unlike in Register).
    pub station_ip: [u8; 4],
    pub device_type: u32,
    /// Everything after `device_type`, verbatim.
    pub rest: Vec<u8>,
}

/// Payload bytes of a RegisterTokenReq before `rest`.
const TOKEN_REQ_FIXED: usize = 32;

impl RegisterTokenReq {
    /// The device name up to its first NUL.
    pub fn device_name(&self) -> &str {
        name_str(&self.device_name)
    }

    /// The MAC address a `SEP` + 12 hex digits device name carries.
    pub fn mac(&self) -> Option<[u8; 6]> {
        mac_of(self.device_name())
    }
}

/// The RegisterAck message (0x0081), 20 bytes of payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterAck {
    /// Seconds between KeepAlives to the primary server.
    pub keepalive_interval: u32,
    /// Date format shown by the phone, such as `M/D/YA`, NUL-padded.
    pub date_template: [u8; 6],
    /// Alignment padding, kept verbatim.
    pub padding: [u8; 2],
    /// Seconds between KeepAlives to a backup server.
    pub secondary_keepalive_interval: u32,
    /// The protocol version the server will use.
    pub max_protocol_version: u8,
    /// Unknown byte, kept verbatim.
    pub unknown: u8,
    /// phoneFeatures bits.
    pub features: u16,
}

const REGISTER_ACK_LEN: usize = 20;

impl RegisterAck {
    /// A RegisterAck with zero padding and no features.
    pub fn new(keepalive_interval: u32, secondary_keepalive_interval: u32, max_protocol_version: u8) -> Self {
        Self {
            keepalive_interval,
            date_template: *b"M/D/YA",
            padding: [0; 2],
            secondary_keepalive_interval,
            max_protocol_version,
            unknown: 0,
            features: 0,
        }
    }
}

impl Message {
    /// The message id on the wire.
    pub fn message_id(&self) -> u32 {
        match self {
            Self::KeepAlive => id::KEEP_ALIVE,
            Self::Register(_) => id::REGISTER,
            Self::IpPort { .. } => id::IP_PORT,
            Self::Unregister { .. } => id::UNREGISTER,
            Self::RegisterTokenReq(_) => id::REGISTER_TOKEN_REQ,
            Self::RegisterAck(_) => id::REGISTER_ACK,
            Self::CapabilitiesReq => id::CAPABILITIES_REQ,
            Self::RegisterReject { .. } => id::REGISTER_REJECT,
            Self::KeepAliveAck => id::KEEP_ALIVE_ACK,
            Self::UnregisterAck { .. } => id::UNREGISTER_ACK,
            Self::RegisterTokenAck => id::REGISTER_TOKEN_ACK,
            Self::RegisterTokenReject { .. } => id::REGISTER_TOKEN_REJECT,
            Self::Other { message_id, .. } => *message_id,
        }
    }

    /// A RegisterReject with `text` (cut to 31 bytes) NUL-padded to 32 bytes.
    pub fn register_reject(text: &str) -> Self {
        let mut field = vec![0; REJECT_TEXT_LEN];
        let n = text.len().min(REJECT_TEXT_LEN - 1);
        field[..n].copy_from_slice(&text.as_bytes()[..n]);
        Self::RegisterReject { text: field }
    }

    /// Decodes the payload (the bytes after the 12-byte header) of a message.
    /// `header_version` is accepted for the layouts that depend on it; none of the typed
    /// messages here do.
    ///
    /// # Errors
    /// A [`DecodeError`] when a typed message's payload does not fit its layout.
    pub fn decode(header_version: u32, message_id: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        let _ = header_version;
        let bad_len = DecodeError::BadPayloadLength { message_id, len: payload.len() };
        let empty = |msg: Self| if payload.is_empty() { Ok(msg) } else { Err(bad_len) };
        let one_u32 = || match payload {
            [a, b, c, d] => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => Err(bad_len),
        };
        Ok(match message_id {
            id::KEEP_ALIVE => empty(Self::KeepAlive)?,
            id::CAPABILITIES_REQ => empty(Self::CapabilitiesReq)?,
            id::KEEP_ALIVE_ACK => empty(Self::KeepAliveAck)?,
            id::REGISTER_TOKEN_ACK => empty(Self::RegisterTokenAck)?,
            id::IP_PORT => Self::IpPort { port: one_u32()? },
            id::UNREGISTER_ACK => Self::UnregisterAck { status: one_u32()? },
            id::REGISTER_TOKEN_REJECT => Self::RegisterTokenReject { wait_time: one_u32()? },
            id::UNREGISTER if payload.is_empty() => Self::Unregister { reason: None },
            id::UNREGISTER => Self::Unregister { reason: Some(one_u32()?) },
            id::REGISTER_REJECT => Self::RegisterReject { text: payload.to_vec() },
            id::REGISTER => {
                if payload.len() < REGISTER_FIXED {
                    return Err(bad_len);
                }
                let r = Reader(payload);
                Self::Register(Register {
                    device_name: device_name_checked(message_id, r.bytes(0))?,
                    user_id: r.u32(16),
                    instance: r.u32(20),
                    station_ip: r.bytes(24),
                    device_type: r.u32(28),
                    max_streams: r.u32(32),
                    tail: payload[REGISTER_FIXED..].to_vec(),
                })
            }
            id::REGISTER_TOKEN_REQ => {
                if payload.len() < TOKEN_REQ_FIXED {
                    return Err(bad_len);
                }
                let r = Reader(payload);
                Self::RegisterTokenReq(RegisterTokenReq {
                    device_name: device_name_checked(message_id, r.bytes(0))?,
                    user_id: r.u32(16),
                    instance: r.u32(20),
                    station_ip: r.bytes(24),
                    device_type: r.u32(28),
                    rest: payload[TOKEN_REQ_FIXED..].to_vec(),
                })
            }
            id::REGISTER_ACK => {
                if payload.len() != REGISTER_ACK_LEN {
                    return Err(bad_len);
                }
                let r = Reader(payload);
                Self::RegisterAck(RegisterAck {
                    keepalive_interval: r.u32(0),
                    date_template: r.bytes(4),
                    padding: r.bytes(10),
                    secondary_keepalive_interval: r.u32(12),
                    max_protocol_version: payload[16],
                    unknown: payload[17],
                    features: u16::from_le_bytes(r.bytes(18)),
                })
            }
            _ => Self::Other { message_id, payload: payload.to_vec() },
        })
    }

    /// Appends the whole PDU (12-byte header and payload) to `out`.
    pub fn encode(&self, header_version: u32, out: &mut Vec<u8>) {
        let header_at = out.len();
        encode_header(header_version, self.message_id(), 0, out);
        let payload_at = out.len();
        self.encode_payload(out);
        let data_length = u32::try_from(out.len() - payload_at + 4).expect("SCCP payload length fits a u32");
        out[header_at..header_at + 4].copy_from_slice(&data_length.to_le_bytes());
    }

    /// The whole PDU as a new vector.
    pub fn to_bytes(&self, header_version: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(header_version, &mut out);
        out
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        let put = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        match self {
            Self::KeepAlive | Self::CapabilitiesReq | Self::KeepAliveAck | Self::RegisterTokenAck => {}
            Self::IpPort { port: v }
            | Self::UnregisterAck { status: v }
            | Self::RegisterTokenReject { wait_time: v }
            | Self::Unregister { reason: Some(v) } => put(out, *v),
            Self::Unregister { reason: None } => {}
            Self::RegisterReject { text } => out.extend_from_slice(text),
            Self::Register(r) => {
                out.extend_from_slice(&r.device_name);
                put(out, r.user_id);
                put(out, r.instance);
                out.extend_from_slice(&r.station_ip);
                put(out, r.device_type);
                put(out, r.max_streams);
                out.extend_from_slice(&r.tail);
            }
            Self::RegisterTokenReq(r) => {
                out.extend_from_slice(&r.device_name);
                put(out, r.user_id);
                put(out, r.instance);
                out.extend_from_slice(&r.station_ip);
                put(out, r.device_type);
                out.extend_from_slice(&r.rest);
            }
            Self::RegisterAck(a) => {
                put(out, a.keepalive_interval);
                out.extend_from_slice(&a.date_template);
                out.extend_from_slice(&a.padding);
                put(out, a.secondary_keepalive_interval);
                out.push(a.max_protocol_version);
                out.push(a.unknown);
                out.extend_from_slice(&a.features.to_le_bytes());
            }
            Self::Other { payload, .. } => out.extend_from_slice(payload),
        }
    }
}

/// Fixed-offset reads from a payload whose length was checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        self.0[at..at + N].try_into().expect("length checked")
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes(at))
    }
}

/// A device name field: printable ASCII up to the first NUL (bytes after it are kept
/// but not judged).
fn device_name_checked(message_id: u32, field: [u8; DEVICE_NAME_LEN]) -> Result<[u8; DEVICE_NAME_LEN], DecodeError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(DEVICE_NAME_LEN);
    if field[..end].iter().all(|b| b.is_ascii_graphic()) {
        Ok(field)
    } else {
        Err(DecodeError::BadDeviceName { message_id })
    }
}

/// `name` NUL-padded (cut to 15 bytes so one NUL always ends it).
fn device_name_field(name: &str) -> [u8; DEVICE_NAME_LEN] {
    let mut field = [0; DEVICE_NAME_LEN];
    let n = name.len().min(DEVICE_NAME_LEN - 1);
    field[..n].copy_from_slice(&name.as_bytes()[..n]);
    field
}

/// The name up to the first NUL; empty if it is not UTF-8 (decode only lets ASCII in).
fn name_str(field: &[u8; DEVICE_NAME_LEN]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(DEVICE_NAME_LEN);
    std::str::from_utf8(&field[..end]).unwrap_or("")
}

/// The MAC of `SEP` + 12 hex digits (either case), else `None`.
fn mac_of(name: &str) -> Option<[u8; 6]> {
    let hex = name.strip_prefix("SEP")?.as_bytes();
    if hex.len() != 12 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut mac = [0; 6];
    for (i, pair) in hex.chunks(2).enumerate() {
        mac[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use regedge_common::sccp::HEADER_LEN;

    use super::*;
    use crate::sccp::framing::StreamDecoder;

    /// A Register tail with all three parts, filled with recognisable values.
    fn full_tail() -> Vec<u8> {
        let mut t = vec![0u8; register_tail::THIRD_END];
        t[0..4].copy_from_slice(&2u32.to_le_bytes());
        t[4] = 20;
        t[5] = 0x71;
        t[6..8].copy_from_slice(&0x8085u16.to_le_bytes());
        t[8..12].copy_from_slice(&1u32.to_le_bytes());
        t[16..22].copy_from_slice(&[0x00, 0x24, 0x14, 0x2d, 0xdf, 0x24]);
        t[22..28].copy_from_slice(&[0xee; 6]);
        t[28..32].copy_from_slice(&1u32.to_le_bytes());
        t[32..36].copy_from_slice(&6u32.to_le_bytes());
        t[36..52].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        t[56..56 + 11].copy_from_slice(b"SCCP75.9-4-");
        t[88..88 + 20].copy_from_slice(b"1700000000-abcdef012");
        t
    }

    fn register(tail: Vec<u8>) -> Register {
        Register {
            user_id: 0,
            instance: 1,
            max_streams: 5,
            tail,
            ..Register::new("SEP0024142DDF24", [192, 0, 2, 7], 437)
        }
    }

    fn every_message() -> Vec<Message> {
        let mut other_tail = full_tail();
        other_tail.extend_from_slice(&[0xab; 9]);
        vec![
            Message::KeepAlive,
            Message::Register(register(Vec::new())),
            Message::Register(register(full_tail()[..register_tail::FIRST_END].to_vec())),
            Message::Register(register(full_tail()[..register_tail::SECOND_END].to_vec())),
            Message::Register(register(full_tail())),
            Message::Register(register(other_tail)),
            Message::Register(register(vec![1, 2, 3])),
            Message::IpPort { port: 20_000 },
            Message::Unregister { reason: None },
            Message::Unregister { reason: Some(3) },
            Message::RegisterTokenReq(RegisterTokenReq {
                device_name: device_name_field("SEP001122AABBCC"),
                user_id: 0,
                instance: 1,
                station_ip: [10, 1, 2, 3],
                device_type: 30_006,
                rest: vec![0, 0, 0, 0, 10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            }),
            Message::RegisterAck(RegisterAck::new(30, 60, 17)),
            Message::RegisterAck(RegisterAck {
                keepalive_interval: 15,
                date_template: *b"D.M.Y\0",
                padding: [0xaa, 0x55],
                secondary_keepalive_interval: 45,
                max_protocol_version: 22,
                unknown: 0xfe,
                features: 0x8f00,
            }),
            Message::CapabilitiesReq,
            Message::register_reject("No Authority: SEP0024142DDF24"),
            Message::RegisterReject { text: b"short".to_vec() },
            Message::KeepAliveAck,
            Message::UnregisterAck { status: 0 },
            Message::RegisterTokenAck,
            Message::RegisterTokenReject { wait_time: 30 },
            Message::Other { message_id: 0x0006, payload: vec![1, 0, 0, 0, 0, 0, 0, 0] },
            Message::Other { message_id: 0x0003, payload: vec![5, 0, 0, 0] },
            Message::Other { message_id: 0x8000, payload: Vec::new() },
        ]
    }

    fn parse(bytes: &[u8]) -> Result<Message, DecodeError> {
        let le = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(le(0) as usize, bytes.len() - 8, "data_length");
        Message::decode(le(4), le(8), &bytes[HEADER_LEN..])
    }

    #[test]
    fn every_message_round_trips() {
        for version in [0, 0x0A, 0x16] {
            for msg in every_message() {
                let bytes = msg.to_bytes(version);
                assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), version);
                assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), msg.message_id());
                let back = parse(&bytes).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
                assert_eq!(back, msg);
                assert_eq!(back.to_bytes(version), bytes, "{msg:?}");
            }
        }
    }

    #[test]
    fn known_bytes() {
        assert_eq!(Message::KeepAlive.to_bytes(0), [4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Message::KeepAliveAck.to_bytes(0x11), [4, 0, 0, 0, 0x11, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            Message::IpPort { port: 0x4e20 }.to_bytes(0),
            [8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0x20, 0x4e, 0, 0]
        );
        let ack = Message::RegisterAck(RegisterAck::new(30, 60, 17)).to_bytes(0);
        assert_eq!(ack.len(), 32);
        assert_eq!(&ack[..12], [24, 0, 0, 0, 0, 0, 0, 0, 0x81, 0, 0, 0]);
        assert_eq!(&ack[12..16], 30u32.to_le_bytes());
        assert_eq!(&ack[16..22], b"M/D/YA");
        assert_eq!(&ack[24..28], 60u32.to_le_bytes());
        assert_eq!(ack[28], 17);
        let reg = Message::Register(register(Vec::new())).to_bytes(0);
        assert_eq!(reg.len(), 12 + 36);
        assert_eq!(&reg[12..28], b"SEP0024142DDF24\0");
        assert_eq!(&reg[36..40], [192, 0, 2, 7]);
    }

    #[test]
    fn a_relayed_register_is_byte_identical() {
        // Tails of every length, odd ones included, and junk after the device name's NUL.
        let full = full_tail();
        for cut in 0..=full.len() {
            let mut msg = register(full[..cut].to_vec());
            msg.device_name[15] = 0;
            msg.device_name[14] = b'!';
            msg.device_name[13] = 0;
            let bytes = Message::Register(msg).to_bytes(0x11);
            let back = parse(&bytes).unwrap();
            assert_eq!(back.to_bytes(0x11), bytes, "tail of {cut} bytes");
        }
    }

    #[test]
    fn register_fields() {
        let Message::Register(r) = parse(&Message::Register(register(full_tail())).to_bytes(0)).unwrap() else {
            panic!("not a Register")
        };
        assert_eq!(r.device_name(), "SEP0024142DDF24");
        assert_eq!(r.mac(), Some([0x00, 0x24, 0x14, 0x2d, 0xdf, 0x24]));
        assert_eq!((r.user_id, r.instance, r.station_ip, r.device_type, r.max_streams), (0, 1, [192, 0, 2, 7], 437, 5));
        assert_eq!(r.active_streams(), Some(2));
        assert_eq!(r.protocol_version(), Some(20));
        assert_eq!(r.phone_features(), Some(0x8085));
        assert_eq!(r.max_conferences(), Some(1));
        assert_eq!(r.active_conferences(), Some(0));
        assert_eq!(r.reported_mac(), Some([0x00, 0x24, 0x14, 0x2d, 0xdf, 0x24]));
        assert_eq!(r.max_lines(), Some(6));
        assert_eq!(r.station_ipv6().map(|a| a[15]), Some(7));
        assert_eq!(r.firmware_load_name(), Some("SCCP75.9-4-"));
        assert_eq!(r.config_version_stamp(), Some("1700000000-abcdef012"));

        let short = register(full_tail()[..register_tail::FIRST_END].to_vec());
        assert_eq!(short.protocol_version(), Some(20));
        assert_eq!(short.max_conferences(), Some(1));
        assert_eq!(short.active_conferences(), None);
        assert_eq!(short.firmware_load_name(), None);
        let bare = register(Vec::new());
        assert_eq!((bare.active_streams(), bare.protocol_version(), bare.config_version_stamp()), (None, None, None));
    }

    #[test]
    fn device_names_and_macs() {
        let name = |s: &str| Register::new(s, [0; 4], 7);
        assert_eq!(name("SEPabcdef012345").mac(), Some([0xab, 0xcd, 0xef, 0x01, 0x23, 0x45]));
        assert_eq!(name("SEP0024142DDF2").mac(), None);
        assert_eq!(name("SEP0024142DDF2G").mac(), None);
        assert_eq!(name("ATA0024142DDF24").mac(), None);
        assert_eq!(name("ATA0024142DDF24").device_name(), "ATA0024142DDF24");
        assert_eq!(name("SEP0024142DDF24XYZ").device_name(), "SEP0024142DDF24");
        // A name filling all 16 bytes without a NUL.
        let mut r = name("");
        r.device_name = *b"SEP0024142DDF24X";
        assert_eq!(parse(&Message::Register(r.clone()).to_bytes(0)), Ok(Message::Register(r.clone())));
        assert_eq!(r.device_name(), "SEP0024142DDF24X");
    }

    #[test]
    fn bad_device_names() {
        for bad in [&b"SEP00 4142DDF24"[..], b"SEP\xff", b"\x01"] {
            let mut r = Register::new("", [0; 4], 7);
            r.device_name[..bad.len()].copy_from_slice(bad);
            let err = parse(&Message::Register(r).to_bytes(0)).unwrap_err();
            assert_eq!(err, DecodeError::BadDeviceName { message_id: id::REGISTER });
        }
    }

    #[test]
    fn payloads_that_do_not_fit() {
        let cases: &[(u32, usize)] = &[
            (id::KEEP_ALIVE, 4),
            (id::KEEP_ALIVE_ACK, 1),
            (id::CAPABILITIES_REQ, 8),
            (id::REGISTER_TOKEN_ACK, 4),
            (id::IP_PORT, 0),
            (id::IP_PORT, 8),
            (id::UNREGISTER, 2),
            (id::UNREGISTER, 8),
            (id::UNREGISTER_ACK, 3),
            (id::REGISTER_TOKEN_REJECT, 5),
            (id::REGISTER, 35),
            (id::REGISTER, 0),
            (id::REGISTER_TOKEN_REQ, 31),
            (id::REGISTER_ACK, 19),
            (id::REGISTER_ACK, 21),
        ];
        for &(message_id, len) in cases {
            let payload = vec![b'A'; len];
            assert_eq!(
                Message::decode(0, message_id, &payload),
                Err(DecodeError::BadPayloadLength { message_id, len }),
                "{message_id:#x} with {len} bytes"
            );
        }
        let labels: Vec<_> = DecodeError::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(labels, ["bad_payload_length", "bad_device_name"]);
    }

    #[test]
    fn register_reject_text() {
        let Message::RegisterReject { text } = Message::register_reject(&"x".repeat(40)) else { panic!() };
        assert_eq!(text.len(), REJECT_TEXT_LEN);
        assert_eq!(text[REJECT_TEXT_LEN - 1], 0);
    }

    #[test]
    fn through_the_stream_decoder() {
        let msgs = every_message();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.to_bytes(0x0F)).collect();
        let mut dec = StreamDecoder::new();
        let mut got = Vec::new();
        for byte in &stream {
            dec.extend(std::slice::from_ref(byte));
            while let Some(pdu) = dec.next_pdu().unwrap() {
                let msg = Message::decode(pdu.header_version, pdu.message_id, pdu.payload()).unwrap();
                assert_eq!(msg.to_bytes(pdu.header_version), pdu.bytes);
                got.push(msg);
            }
        }
        assert_eq!(got, msgs);
    }
}
