//! SIP over TCP, end to end: RFC 5626 CRLF ping/pong, a request answered on its own
//! connection with the same bytes as over UDP, and a connection that breaks the framing
//! closed and counted.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use regedge::{engine::Engine, local_names::LocalNames, sip::stateless::ToTag};
use regedge_tests::{
    fixtures::options_request,
    netns::VethPair,
    privilege::require_root,
    process::{Regedge, TempDir, metric, scrape},
};

const METRICS: &str = "127.0.0.1:9100";

fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read the answer");
    buf
}

#[test]
fn tcp_keepalives_requests_and_broken_framing() {
    if !require_root("tcp_keepalives_requests_and_broken_framing") {
        return;
    }
    let veth = VethPair::new();
    let server = SocketAddr::new(veth.proxy_v4.into(), 5060);
    let dir = TempDir::new("tcp");
    let config = dir.write(
        "regedge.toml",
        &format!("[node]\nname = \"tcp\"\nworkers = 2\n[sip]\nlisten = [\"{server}\"]\nlocal_names = [\"edge.test\"]\n[fastpath]\nmode = \"off\"\n"),
    );
    let mut regedge = Regedge::start(Some(&veth.proxy), &config, dir.0.join("regedge.log"));
    regedge.wait_ready(METRICS.parse().unwrap(), Some(&veth.proxy), Duration::from_secs(20)).expect("regedge runs");
    let connect = || {
        let stream = veth.phone.run(|| TcpStream::connect_timeout(&server, Duration::from_secs(2))).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream
    };

    let mut stream = connect();
    let me = stream.local_addr().unwrap();
    stream.write_all(b"\r\n\r\n").unwrap();
    assert_eq!(read_exactly(&mut stream, 2), b"\r\n", "a double-CRLF ping gets a CRLF pong");

    // An OPTIONS split across writes, then a ping, in one connection.
    let request = options_request("sip:edge.test", me, "tcp-1", "");
    let request = String::from_utf8(request).unwrap().replace("SIP/2.0/UDP", "SIP/2.0/TCP").into_bytes();
    let (first, second) = request.split_at(40);
    stream.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(second).unwrap();
    stream.write_all(b"\r\n\r\n").unwrap();
    let engine = Engine::new(LocalNames::new(&["edge.test".to_owned()], &[server], &[]), ToTag::for_node("tcp"), None);
    let mut expected = Vec::new();
    engine.answer_datagram(&request, me, server, &mut expected);
    assert!(expected.starts_with(b"SIP/2.0 200 OK\r\n"));
    let answer = read_exactly(&mut stream, expected.len() + 2);
    assert_eq!(String::from_utf8_lossy(&answer[..expected.len()]), String::from_utf8_lossy(&expected));
    assert_eq!(&answer[expected.len()..], b"\r\n", "then the pong");

    // A request without Content-Length breaks stream framing: the connection is closed.
    let mut broken = connect();
    broken.write_all(b"OPTIONS sip:edge.test SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK-x\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let closed = broken.read_to_end(&mut rest);
    assert!(matches!(closed, Ok(0)), "the connection is closed without an answer: {closed:?} {rest:?}");
    // The first connection is unaffected.
    stream.write_all(b"\r\n\r\n").unwrap();
    assert_eq!(read_exactly(&mut stream, 2), b"\r\n");

    let metrics = scrape(METRICS.parse().unwrap(), Some(&veth.proxy)).expect("scrape");
    assert_eq!(
        metric(&metrics, "regedge_sip_tcp_closed_total", "reason", "missing_content_length"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "regedge_userspace_replies_total", "kind", "crlf"), Some(3), "{metrics}");
    assert_eq!(metric(&metrics, "regedge_userspace_replies_total", "kind", "options"), Some(1), "{metrics}");
    let status = regedge.terminate(Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{}", regedge.log());
}

/// A backend reached over TCP: regedge opens a connection per event loop, forwards full
/// registrations on it, relays the answers and absorbs the refreshes.
#[test]
fn registrations_reach_a_tcp_backend() {
    use regedge_tests::{
        kamailio::{Kamailio, KamailioOpts},
        privilege::require_program,
        sipp::{FleetOpts, Sipp, Transport},
    };
    let test = "registrations_reach_a_tcp_backend";
    if !require_root(test) || !require_program(test, "kamailio") || !require_program(test, "sipp") {
        return;
    }
    let veth = VethPair::new();
    let server = SocketAddr::new(veth.proxy_v4.into(), 5060);
    let [a, b, c, _] = veth.proxy_v4.octets();
    let backend_ip = std::net::Ipv4Addr::new(a, b, c, 5);
    veth.proxy.ip(&["addr", "add", &format!("{backend_ip}/24"), "dev", regedge_tests::netns::PROXY_IF]);
    let kamailio = Kamailio::start(&veth.proxy, backend_ip, KamailioOpts::default());
    let dir = TempDir::new("tcp-backend");
    let config = dir.write(
        "regedge.toml",
        &format!(
            "[node]\nname = \"tcp-backend\"\nworkers = 2\nstate_dir = \"\"\n[sip]\nlisten = [\"{server}\"]\n[fastpath]\nmode = \"off\"\n\
             [[backends]]\nname = \"cm1\"\naddress = \"{backend_ip}:5060\"\ntransport = \"tcp\"\nmax_register_rate = 1000\n\
             [[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n"
        ),
    );
    let mut regedge = Regedge::start(Some(&veth.proxy), &config, dir.0.join("regedge.log"));
    regedge.wait_ready(METRICS.parse().unwrap(), Some(&veth.proxy), Duration::from_secs(20)).expect("regedge runs");
    let users = 100;
    let opts = FleetOpts {
        users,
        transport: Transport::Udp,
        expires: 120,
        refreshes: 2,
        refresh_interval: Duration::from_millis(500),
        rate: 200,
        timeout: Duration::from_secs(30),
        ..FleetOpts::default()
    };
    let summary = Sipp::register_fleet(&veth.phone, veth.phone_v4.into(), server, &opts);
    assert!(summary.all_ok(users), "{summary:?}\n{}", regedge.log());
    let contacts = kamailio.contacts();
    assert_eq!(contacts.len(), users as usize, "every phone registered at the TCP backend");
    assert!(
        contacts.iter().all(|c| c.path.as_deref().is_some_and(|p| p.contains(&server.ip().to_string()))),
        "{contacts:?}"
    );
    let received = kamailio.stat("core:rcv_requests_register");
    assert_eq!(received, users as u64, "refreshes were absorbed: the backend saw one REGISTER per phone");
    let metrics = scrape(METRICS.parse().unwrap(), Some(&veth.proxy)).expect("scrape");
    assert_eq!(metric(&metrics, "regedge_backend_up", "backend", "cm1"), Some(1), "{metrics}");
    let status = regedge.terminate(Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{}", regedge.log());
}
