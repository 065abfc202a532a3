//! The SCCP codec against an independent decoder: every typed message (and two opaque
//! ones) is encoded by regedge, wrapped into TCP segments by text2pcap and dissected by
//! tshark's SKINNY dissector, which must see the same message ids, header versions,
//! lengths and fields, and report nothing malformed. The other way round, the TCP
//! payloads tshark reads back from the capture decode with regedge's stream decoder into
//! the very messages that were encoded.
//!
//! Wireshark's dissector (packet-skinny.c) reads some fields unconditionally, so the
//! capture only holds messages in the shape real peers send: an Unregister with its
//! reason code, a RegisterReject with its 32-byte text, a RegisterTokenReq with the
//! IPv4/IPv6 selector of header versions >= 0x11. It decodes the Register tails only when
//! `data_length` exceeds 52, 100 and 191; the expectations follow the same thresholds.
//! tshark 4.0 shows no field for the Unregister reason or the UnregisterAck status, so
//! those two are checked by message id and length only.

use std::{fmt::Write as _, process::Command};

use regedge::sccp::{
    Message, Register, RegisterAck, RegisterTokenReq, StreamDecoder,
    message::{DEVICE_NAME_LEN, register_tail},
};
use regedge_tests::{privilege::require_program, process::TempDir, tshark::MALFORMED_FILTER};

/// Who sends a segment: text2pcap's `-D` direction marker.
#[derive(Clone, Copy)]
enum Dir {
    /// Phone (10.0.0.2:40000) to server (10.0.0.1:2000).
    ToServer,
    /// Server to phone.
    ToPhone,
}

/// One TCP segment: one or more whole PDUs.
struct Segment {
    dir: Dir,
    pdus: Vec<(u32, Message)>,
}

fn device_name(name: &str) -> [u8; DEVICE_NAME_LEN] {
    let mut field = [0; DEVICE_NAME_LEN];
    field[..name.len()].copy_from_slice(name.as_bytes());
    field
}

/// Register tails up to `len` bytes with recognisable values (the layout of
/// packet-skinny.c, offsets from [`register_tail`]).
fn tail(len: usize, firmware: &str, stamp: &str) -> Vec<u8> {
    let mut t = vec![0u8; len.max(register_tail::THIRD_END)];
    t[register_tail::ACTIVE_STREAMS..][..4].copy_from_slice(&0u32.to_le_bytes());
    t[register_tail::PROTOCOL_VERSION] = 20;
    t[register_tail::PHONE_FEATURES..][..2].copy_from_slice(&0x8085u16.to_le_bytes());
    t[register_tail::MAX_CONFERENCES..][..4].copy_from_slice(&1u32.to_le_bytes());
    t[register_tail::MAC_ADDRESS..][..6].copy_from_slice(&[0x00, 0x24, 0x14, 0x2d, 0xdf, 0x24]);
    t[register_tail::MAX_LINES..][..4].copy_from_slice(&6u32.to_le_bytes());
    t[register_tail::FIRMWARE_LOAD_NAME..][..firmware.len()].copy_from_slice(firmware.as_bytes());
    t[register_tail::CONFIG_VERSION_STAMP..][..stamp.len()].copy_from_slice(stamp.as_bytes());
    t.truncate(len);
    t
}

fn register(name: &str, tail: Vec<u8>) -> Message {
    Message::Register(Register { max_streams: 5, tail, ..Register::new(name, [192, 0, 2, 7], 437) })
}

/// The conversation written to the capture.
fn conversation() -> Vec<Segment> {
    use Dir::{ToPhone, ToServer};
    let one = |dir, version, msg| Segment { dir, pdus: vec![(version, msg)] };
    vec![
        one(ToServer, 0, register("SEP0024142DDF24", Vec::new())),
        one(ToServer, 0x0A, register("SEP0024142DDF25", tail(register_tail::FIRST_END + 4, "", ""))),
        one(ToServer, 0x11, register("SEP0024142DDF26", tail(register_tail::SECOND_END, "SCCP75.9-4-2SR1S", ""))),
        // data_length 200 > 191: Wireshark reads the config version stamp too.
        one(
            ToServer,
            0x16,
            register("SEP0024142DDF27", tail(register_tail::THIRD_END + 24, "SIP88xx.12", "1700000000-ab12")),
        ),
        one(ToPhone, 0, Message::RegisterAck(RegisterAck::new(30, 60, 17))),
        one(
            ToPhone,
            0x11,
            Message::RegisterAck(RegisterAck {
                keepalive_interval: 15,
                date_template: *b"D.M.Y\0",
                padding: [0; 2],
                secondary_keepalive_interval: 45,
                max_protocol_version: 22,
                unknown: 0,
                features: 0x8000,
            }),
        ),
        one(ToPhone, 0, Message::CapabilitiesReq),
        one(ToServer, 0, Message::IpPort { port: 24_580 }),
        one(ToServer, 0, Message::KeepAlive),
        one(ToPhone, 0, Message::KeepAliveAck),
        // Two PDUs coalesced in one segment.
        Segment {
            dir: ToServer,
            pdus: vec![
                (0, Message::Other { message_id: 0x0006, payload: vec![1, 0, 0, 0, 0, 0, 0, 0] }),
                (0, Message::Other { message_id: 0x0003, payload: vec![5, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0] }),
            ],
        },
        one(ToServer, 0, Message::Unregister { reason: Some(0) }),
        one(ToPhone, 0, Message::UnregisterAck { status: 0 }),
        one(ToPhone, 0, Message::register_reject("No Authority: SEP0024142DDF28")),
        one(
            ToServer,
            0x11,
            Message::RegisterTokenReq(RegisterTokenReq {
                device_name: device_name("SEP0024142DDF29"),
                user_id: 0,
                instance: 1,
                station_ip: [192, 0, 2, 9],
                device_type: 30_006,
                // ipv4or6 = 0 (IPv4), then 16 bytes of address.
                rest: [vec![0; 4], vec![192, 0, 2, 9], vec![0; 12]].concat(),
            }),
        ),
        one(ToPhone, 0, Message::RegisterTokenReject { wait_time: 30 }),
        one(ToPhone, 0, Message::RegisterTokenAck),
    ]
}

/// text2pcap input: one hex dump per segment, with its direction.
fn hexdump(segments: &[Segment]) -> (String, Vec<Vec<u8>>) {
    let mut text = String::new();
    let mut payloads = Vec::new();
    for segment in segments {
        let mut bytes = Vec::new();
        for (version, msg) in &segment.pdus {
            msg.encode(*version, &mut bytes);
        }
        let dir = match segment.dir {
            Dir::ToServer => 'I',
            Dir::ToPhone => 'O',
        };
        for (i, chunk) in bytes.chunks(16).enumerate() {
            let hex: Vec<_> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(text, "{dir} {:06x} {}", i * 16, hex.join(" ")).unwrap();
        }
        payloads.push(bytes);
    }
    (text, payloads)
}

/// The columns of `tshark -T fields` for `fields`, each split on the aggregator; one row
/// per frame.
fn tshark_fields(pcap: &std::path::Path, filter: &str, fields: &[&str]) -> Vec<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-d", "tcp.port==2000,skinny", "-Y", filter, "-T", "fields"]);
    cmd.args(["-E", "occurrence=a", "-E", "aggregator=|", "-E", "separator=/t"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark -r");
    assert!(out.status.success(), "tshark -r: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("tshark output is UTF-8")
        .lines()
        .map(|line| {
            line.split('\t')
                .map(|col| if col.is_empty() { Vec::new() } else { col.split('|').map(str::to_owned).collect() })
                .collect()
        })
        .collect()
}

/// Every value of column `col` over all frames, in order.
fn column(rows: &[Vec<Vec<String>>], col: usize) -> Vec<String> {
    rows.iter().flat_map(|row| row.get(col).cloned().unwrap_or_default()).collect()
}

fn data_length(version: u32, msg: &Message) -> u32 {
    u32::from_le_bytes(msg.to_bytes(version)[..4].try_into().unwrap())
}

#[test]
fn tshark_decodes_every_message_as_encoded() {
    const TEST: &str = "tshark_decodes_every_message_as_encoded";
    if !require_program(TEST, "text2pcap") || !require_program(TEST, "tshark") {
        return;
    }
    let segments = conversation();
    let (text, payloads) = hexdump(&segments);
    let dir = TempDir::new("sccp-codec");
    let input = dir.write("sccp.txt", &text);
    let pcap = dir.0.join("sccp.pcap");
    let status = Command::new("text2pcap")
        .args(["-q", "-D", "-4", "10.0.0.2,10.0.0.1", "-T", "40000,2000"])
        .arg(&input)
        .arg(&pcap)
        .status()
        .expect("run text2pcap");
    assert!(status.success(), "text2pcap failed");

    let malformed = tshark_fields(&pcap, MALFORMED_FILTER, &["frame.number", "_ws.expert.message"]);
    assert!(malformed.is_empty(), "tshark reports malformed packets or errors: {malformed:?}");

    let fields = [
        "skinny.messageId",
        "skinny.hdr_version",
        "skinny.data_length",
        "skinny.DeviceName",
        "skinny.keepAliveInterval",
        "skinny.secondaryKeepAliveInterval",
        "skinny.maxProtocolVer",
        "skinny.protocolVer",
        "skinny.firmwareLoadName",
        "skinny.configVersionStamp",
        "skinny.macAddress",
        "skinny.rtpMediaPort",
        "skinny.waitTimeBeforeNextReq",
        "skinny.text",
        "skinny.kpButton",
        "skinny.stationIpAddr",
        "skinny.deviceType",
        "skinny.maxStreams",
    ];
    let rows = tshark_fields(&pcap, "skinny", &fields);
    assert_eq!(rows.len(), segments.len(), "one skinny frame per segment: {rows:?}");

    let pdus: Vec<&(u32, Message)> = segments.iter().flat_map(|s| &s.pdus).collect();
    let mut want: Vec<Vec<String>> = vec![Vec::new(); fields.len()];
    for pdu in &pdus {
        let (version, msg) = (pdu.0, &pdu.1);
        let len = data_length(version, msg);
        want[0].push(msg.message_id().to_string());
        want[1].push(format!("{version:#010x}"));
        want[2].push(len.to_string());
        match msg {
            Message::Register(r) => {
                want[3].push(r.device_name().to_owned());
                if len > 52 {
                    want[7].push(r.protocol_version().unwrap().to_string());
                }
                if len > 100 {
                    want[8].push(r.firmware_load_name().unwrap().to_owned());
                    let mac = r.reported_mac().unwrap().map(|b| format!("{b:02x}"));
                    want[10].push(mac.join(":"));
                }
                if len > 191 {
                    want[9].push(r.config_version_stamp().unwrap().to_owned());
                }
                want[15].push(r.station_ip.map(|b| b.to_string()).join("."));
                want[16].push(format!("{:#010x}", r.device_type));
                want[17].push(r.max_streams.to_string());
            }
            Message::RegisterTokenReq(r) => {
                want[3].push(r.device_name().to_owned());
                // Wireshark reads this one little-endian, unlike the Register's.
                let ip = r.station_ip;
                want[15].push(format!("{}.{}.{}.{}", ip[3], ip[2], ip[1], ip[0]));
                want[16].push(format!("{:#010x}", r.device_type));
            }
            Message::RegisterAck(a) => {
                want[4].push(a.keepalive_interval.to_string());
                want[5].push(a.secondary_keepalive_interval.to_string());
                want[6].push(a.max_protocol_version.to_string());
            }
            Message::IpPort { port } => want[11].push(port.to_string()),
            Message::RegisterTokenReject { wait_time } => want[12].push(wait_time.to_string()),
            Message::RegisterReject { text } => {
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                want[13].push(String::from_utf8(text[..end].to_vec()).unwrap());
            }
            Message::Other { message_id: 0x0003, payload } => {
                want[14].push(format!("{:#010x}", u32::from_le_bytes(payload[..4].try_into().unwrap())));
            }
            _ => {}
        }
    }
    for (col, field) in fields.iter().enumerate() {
        assert_eq!(column(&rows, col), want[col], "{field} as tshark decodes it; rows: {rows:?}");
    }

    // The other way: the TCP payloads tshark reads from the capture, through regedge's
    // stream decoder, give back the messages and bytes that were encoded.
    let tcp = tshark_fields(&pcap, "tcp.len > 0", &["tcp.payload"]);
    let read: Vec<Vec<u8>> = column(&tcp, 0).iter().map(|hex| from_hex(hex)).collect();
    assert_eq!(read, payloads, "TCP payloads in the capture");
    let mut dec = StreamDecoder::new();
    let mut decoded = Vec::new();
    for payload in &read {
        dec.extend(payload);
        while let Some(pdu) = dec.next_pdu().expect("a Skinny stream") {
            let msg = Message::decode(pdu.header_version, pdu.message_id, pdu.payload())
                .unwrap_or_else(|e| panic!("decode {:?}: {e}", pdu.bytes));
            assert_eq!(msg.to_bytes(pdu.header_version), pdu.bytes, "re-encoding {msg:?}");
            decoded.push((pdu.header_version, msg));
        }
    }
    let sent: Vec<(u32, Message)> = pdus.into_iter().cloned().collect();
    assert_eq!(decoded, sent);
}

/// The check above can fail: a Register cut short (its `data_length` claims the tails,
/// the payload stops after the device name), is caught by the malformed filter.
#[test]
fn the_malformed_filter_catches_a_truncated_register() {
    const TEST: &str = "the_malformed_filter_catches_a_truncated_register";
    if !require_program(TEST, "text2pcap") || !require_program(TEST, "tshark") {
        return;
    }
    // data_length 12: a message id and 8 bytes, where Wireshark reads 36 and more.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&12u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(b"SEP00241");
    let hex: Vec<_> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = TempDir::new("sccp-malformed");
    let input = dir.write("bad.txt", &format!("000000 {}\n", hex.join(" ")));
    let pcap = dir.0.join("bad.pcap");
    let status = Command::new("text2pcap")
        .args(["-q", "-4", "10.0.0.2,10.0.0.1", "-T", "40000,2000"])
        .arg(&input)
        .arg(&pcap)
        .status()
        .expect("run text2pcap");
    assert!(status.success());
    let malformed = tshark_fields(&pcap, MALFORMED_FILTER, &["frame.number"]);
    assert_eq!(column(&malformed, 0), ["1"], "{malformed:?}");
}

fn from_hex(hex: &str) -> Vec<u8> {
    let hex: String = hex.chars().filter(char::is_ascii_hexdigit).collect();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}
