//! End-to-end: the regedge binary in one network namespace with XDP on its veth, a phone
//! in another sending STUN, CRLF and OPTIONS from plain UDP sockets over IPv4 and IPv6.
//! Each reply is checked against what the userspace engine would send; /metrics must
//! count the keepalives in the kernel (XDP generic and native) or in userspace (off).

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use regedge::{
    datapath::{AttachMode, Fastpath},
    engine::Engine,
    local_names::LocalNames,
    sip::stateless::ToTag,
};
use regedge_common::ReplyKind;
use regedge_tests::{
    fixtures::{decode_stun_success, options_request, stun_request},
    netns::{PHONE_IF, PROXY_IF, VethPair},
    privilege::{require_program, require_root},
    process::{Regedge, TempDir, metric, scrape},
    tshark::{Capture, Captured, MALFORMED_FILTER},
};

const NODE: &str = "e2e";
const LOCAL_NAME: &str = "edge.test";
const METRICS: &str = "127.0.0.1:9100";
const REPLY_WAIT: Duration = Duration::from_secs(2);

struct Proxy {
    // Drop order: the process first, then the peer program, then the namespaces.
    regedge: Regedge,
    _peer_xdp: Option<Fastpath>,
    veth: VethPair,
    dir: TempDir,
    /// Where the phone sends: an IPv4 and an IPv6 address of the proxy, port 5060.
    targets: [SocketAddr; 2],
}

/// How regedge listens.
#[derive(Clone, Copy)]
enum Listen {
    /// On the veth's addresses.
    Addresses,
    /// On `0.0.0.0` and `[::]`; the veth gets a second address of each family and the
    /// phone sends to those.
    Wildcard,
}

impl Proxy {
    /// Starts regedge with `[fastpath] mode = <mode>`. Native XDP_TX on veth needs an XDP
    /// program on the peer too (EBPF-NOTES.md): regedge's own program with no listeners,
    /// which passes everything, serves.
    fn start(test: &str, mode: &str, peer_xdp: bool, listen: Listen) -> Self {
        let veth = VethPair::new();
        let peer_xdp = peer_xdp.then(|| {
            veth.phone.run(|| {
                let mut f = Fastpath::load().expect("load peer program");
                f.attach(PHONE_IF, AttachMode::Native).expect("attach peer program");
                f
            })
        });
        let (listen, targets): (Vec<String>, [SocketAddr; 2]) = match listen {
            Listen::Addresses => {
                let targets =
                    [SocketAddr::new(veth.proxy_v4.into(), 5060), SocketAddr::new(veth.proxy_v6.into(), 5060)];
                (targets.iter().map(ToString::to_string).collect(), targets)
            }
            Listen::Wildcard => {
                let [a, b, c, _] = veth.proxy_v4.octets();
                let second_v4 = std::net::Ipv4Addr::new(a, b, c, 3);
                let mut v6 = veth.proxy_v6.octets();
                v6[15] = 3;
                let second_v6 = std::net::Ipv6Addr::from(v6);
                veth.proxy.ip(&["addr", "add", &format!("{second_v4}/24"), "dev", PROXY_IF]);
                veth.proxy.ip(&["addr", "add", &format!("{second_v6}/64"), "dev", PROXY_IF, "nodad"]);
                (
                    vec!["0.0.0.0:5060".into(), "[::]:5060".into()],
                    [SocketAddr::new(second_v4.into(), 5060), SocketAddr::new(second_v6.into(), 5060)],
                )
            }
        };
        let dir = TempDir::new(test);
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"{NODE}\"\nworkers = 1\n\n[sip]\nlisten = [\"{}\", \"{}\"]\nlocal_names = [\"{LOCAL_NAME}\"]\n\n\
                 [fastpath]\ninterfaces = [\"{PROXY_IF}\"]\nmode = \"{mode}\"\npin_path = \"\"\n\n[metrics]\nlisten = \"{METRICS}\"\n",
                listen[0], listen[1]
            ),
        );
        let mut regedge = Regedge::start(Some(&veth.proxy), &config, dir.0.join("regedge.log"));
        if let Err(err) = regedge.wait_ready(METRICS.parse().unwrap(), Some(&veth.proxy), Duration::from_secs(20)) {
            panic!("{test}: {err}");
        }
        Self { regedge, _peer_xdp: peer_xdp, veth, dir, targets }
    }

    fn metrics(&self) -> String {
        scrape(METRICS.parse().unwrap(), Some(&self.veth.proxy)).expect("scrape /metrics")
    }

    /// What the userspace engine answers (the same bytes whichever side answers).
    fn engine(&self) -> Engine {
        Engine::new(LocalNames::new(&[LOCAL_NAME.to_owned()], &self.targets, &[]), ToTag::for_node(NODE), None)
    }

    /// Stops regedge with SIGTERM: it must exit 0 and leave no XDP program on its veth.
    fn stop(mut self) -> String {
        let status = self.regedge.terminate(Duration::from_secs(10)).expect("regedge exits after SIGTERM");
        let log = self.regedge.log();
        assert!(status.success(), "exit status {status}:\n{log}");
        let link =
            Command::new("ip").args(["-n", &self.veth.proxy.name, "link", "show", PROXY_IF]).output().expect("ip link");
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(!link.contains("xdp"), "XDP still attached after exit: {link}");
        log
    }
}

/// Sends `request` and waits for one reply (or none).
fn send_and_receive(socket: &UdpSocket, to: SocketAddr, request: &[u8], wait: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(wait)).unwrap();
    socket.send_to(request, to).expect("send");
    let mut buf = [0u8; 4096];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(from, to, "reply from the wrong address");
            Some(buf[..n].to_vec())
        }
        Err(_) => None,
    }
}

/// How many keepalives of each kind the phone sent.
#[derive(Debug, Default, PartialEq)]
struct Sent {
    stun: u64,
    crlf: u64,
    options: u64,
}

/// The phone's side of the exchange, over IPv4 and IPv6. Every reply is checked.
fn exchange(proxy: &Proxy) -> Sent {
    let engine = proxy.engine();
    let mut sent = Sent::default();
    let phone = &proxy.veth.phone;
    for (phone_ip, server) in
        [(proxy.veth.phone_v4.into(), proxy.targets[0]), (proxy.veth.phone_v6.into(), proxy.targets[1])]
    {
        let socket = phone.run(|| UdpSocket::bind(SocketAddr::new(phone_ip, 0))).expect("bind phone socket");
        let me = socket.local_addr().unwrap();

        let transaction = *b"e2e-stun-txn";
        let reply = send_and_receive(&socket, server, &stun_request(transaction, &[]), REPLY_WAIT)
            .unwrap_or_else(|| panic!("no STUN reply to {me}"));
        assert_eq!(decode_stun_success(&reply), Some((transaction, me)), "STUN reply to {me}");
        let mut expected = Vec::new();
        engine.answer_datagram(&stun_request(transaction, &[]), me, server, &mut expected);
        assert_eq!(reply, expected, "STUN reply differs from the userspace answer");
        sent.stun += 1;

        let host = regedge::local_names::uri_host(server.ip());
        for uri in [format!("sip:{LOCAL_NAME}"), format!("sip:{host}:5060;transport=udp")] {
            let request = options_request(&uri, me, &format!("opt-{}-{}", me.port(), sent.options), "");
            let reply = send_and_receive(&socket, server, &request, REPLY_WAIT)
                .unwrap_or_else(|| panic!("no reply to OPTIONS {uri} from {me}"));
            let mut expected = Vec::new();
            engine.answer_datagram(&request, me, server, &mut expected);
            assert_eq!(String::from_utf8_lossy(&reply), String::from_utf8_lossy(&expected), "OPTIONS {uri}");
            assert!(reply.starts_with(b"SIP/2.0 200 OK\r\n"));
            sent.options += 1;
        }

        assert_eq!(
            send_and_receive(&socket, server, b"\r\n\r\n", Duration::from_millis(300)),
            None,
            "a CRLF keepalive got a reply"
        );
        sent.crlf += 1;
    }
    sent
}

fn counted(metrics: &str, family: &str) -> Sent {
    let get = |kind: ReplyKind| {
        metric(metrics, family, "kind", kind.label())
            .unwrap_or_else(|| panic!("{family}{{kind={}}} missing:\n{metrics}", kind.label()))
    };
    Sent { stun: get(ReplyKind::Stun), crlf: get(ReplyKind::Crlf), options: get(ReplyKind::Options) }
}

/// The keepalives were counted in the kernel, none in userspace, and the program is
/// attached in `mode`.
fn assert_counted_in_kernel(proxy: &Proxy, sent: &Sent, mode: &str) {
    let metrics = proxy.metrics();
    assert_eq!(&counted(&metrics, "regedge_fastpath_replies_total"), sent, "kernel counters:\n{metrics}");
    assert_eq!(
        counted(&metrics, "regedge_userspace_replies_total"),
        Sent::default(),
        "userspace answered keepalives:\n{metrics}"
    );
    assert_eq!(metric(&metrics, "regedge_fastpath_attached", "mode", mode), Some(1), "{metrics}");
}

#[test]
fn keepalives_answered_by_xdp_generic() {
    if !require_root("keepalives_answered_by_xdp_generic")
        || !require_program("keepalives_answered_by_xdp_generic", "tshark")
    {
        return;
    }
    let proxy = Proxy::start("generic", "generic", false, Listen::Addresses);
    let capture = Capture::start(
        &proxy.veth.phone,
        PHONE_IF,
        5060,
        proxy.dir.0.join("phone.pcapng"),
        proxy.veth.phone_v4.into(),
        proxy.veth.proxy_v4.into(),
    );
    let sent = exchange(&proxy);
    assert_counted_in_kernel(&proxy, &sent, "generic");
    let decoded = decode(&capture.finish());
    decoded.assert_clean(&sent);
    let log = proxy.stop();
    assert!(log.contains("XDP program detached"), "{log}");
}

#[test]
fn keepalives_answered_by_xdp_native() {
    if !require_root("keepalives_answered_by_xdp_native") {
        return;
    }
    let proxy = Proxy::start("native", "native", true, Listen::Addresses);
    let sent = exchange(&proxy);
    assert_counted_in_kernel(&proxy, &sent, "native");
    proxy.stop();
}

#[test]
fn keepalives_answered_in_userspace_when_fastpath_is_off() {
    if !require_root("keepalives_answered_in_userspace_when_fastpath_is_off") {
        return;
    }
    let proxy = Proxy::start("off", "off", false, Listen::Addresses);
    let sent = exchange(&proxy);
    let metrics = proxy.metrics();
    assert_eq!(counted(&metrics, "regedge_userspace_replies_total"), sent, "userspace counters:\n{metrics}");
    assert_eq!(counted(&metrics, "regedge_fastpath_replies_total"), Sent::default(), "{metrics}");
    let log = proxy.stop();
    assert!(log.contains("fast path off by config"), "{log}");
}

/// On `0.0.0.0` / `[::]`, replies leave from the address the phone sent to (userspace
/// through IP_PKTINFO, the kernel by swapping addresses), and an OPTIONS naming that
/// address is for the proxy. `send_and_receive` checks the source of every reply.
#[test]
fn wildcard_listeners_reply_from_the_address_that_was_called() {
    if !require_root("wildcard_listeners_reply_from_the_address_that_was_called") {
        return;
    }
    let proxy = Proxy::start("wildcard-off", "off", false, Listen::Wildcard);
    let sent = exchange(&proxy);
    assert_eq!(counted(&proxy.metrics(), "regedge_userspace_replies_total"), sent);
    proxy.stop();

    let proxy = Proxy::start("wildcard-generic", "generic", false, Listen::Wildcard);
    let sent = exchange(&proxy);
    assert_counted_in_kernel(&proxy, &sent, "generic");
    proxy.stop();
}

/// The decode check above can fail: a SIP request with a broken Content-Length, turned
/// into a capture by text2pcap, is caught by the same filter.
#[test]
fn the_malformed_filter_catches_a_broken_sip_message() {
    if !require_program("the_malformed_filter_catches_a_broken_sip_message", "text2pcap") {
        return;
    }
    let dir = TempDir::new("malformed-filter");
    let message = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: abc\r\n\r\n";
    let hex: String = message
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            format!("{:06x} {}\n", i * 16, c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        })
        .collect();
    let text = dir.write("bad.txt", &hex);
    let pcap = dir.0.join("bad.pcap");
    let status = Command::new("text2pcap")
        .args(["-q", "-u", "40000,5060", "-4", "10.0.0.2,10.0.0.1"])
        .arg(&text)
        .arg(&pcap)
        .status()
        .expect("run text2pcap");
    assert!(status.success());
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-Y", MALFORMED_FILTER, "-T", "fields", "-e", "frame.number"])
        .output()
        .expect("run tshark");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{}", String::from_utf8_lossy(&out.stderr));
}

fn decode(captured: &Captured) -> Decoded {
    Decoded {
        malformed: captured.malformed(),
        status_lines: captured.read("sip.Status-Line", &["sip.Status-Line"]),
        stun_responses: captured.read("stun.type == 0x0101", &["stun.att.ipv4-xord", "stun.att.ipv6-xord"]),
        frames: captured.frames(),
    }
}

struct Decoded {
    malformed: String,
    status_lines: String,
    stun_responses: String,
    frames: String,
}

impl Decoded {
    fn assert_clean(&self, sent: &Sent) {
        assert!(
            self.malformed.trim().is_empty(),
            "tshark reports malformed packets or errors:\n{}\nframes:\n{}",
            self.malformed,
            self.frames
        );
        let ok = self.status_lines.lines().filter(|l| l.trim() == "SIP/2.0 200 OK").count() as u64;
        assert_eq!(ok, sent.options, "200 OK decoded by tshark:\n{}", self.frames);
        assert_eq!(
            self.stun_responses.lines().count() as u64,
            sent.stun,
            "STUN responses decoded by tshark:\n{}",
            self.frames
        );
    }
}
