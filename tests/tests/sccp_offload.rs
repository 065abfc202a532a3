//! SCCP KeepAlives answered in the kernel (`regedge_sccp_keepalive`, an `sk_skb` stream
//! verdict on the phone sockets): a TCP connection over loopback inside a network
//! namespace, the accepted socket in the offload, PDUs written by the "phone" one segment
//! at a time (TCP_NODELAY, a pause after each write).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use regedge::datapath::sccp::{SccpOffload, SccpSocket};
use regedge_common::sccp::id;
use regedge_tests::{netns::NetNs, privilege::require_root};

/// Verified-instruction budget of `regedge_sccp_keepalive`: 10,494 were measured when it
/// was set (kernel 6.18; the PDU walk is a `bpf_loop` callback, so the count does not grow
/// with `MAX_PDUS`); about 10% headroom. A change that grows the program past it fails here.
const VERIFIED_INSTRUCTIONS_BUDGET: u32 = 11_500;

/// Pause after each write, so that every write is a segment of its own and the kernel
/// has handled it before the next one.
const SEGMENT_GAP: Duration = Duration::from_millis(40);
/// How long a read waits for bytes that should (or should not) come.
const READ_WINDOW: Duration = Duration::from_millis(250);

/// Header version 17 (a protocol-17 phone, e.g. a 7945).
const VERSION: u32 = 0x11;

fn pdu(version: u32, id: u32, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + body.len());
    p.extend_from_slice(&(4 + body.len() as u32).to_le_bytes());
    p.extend_from_slice(&version.to_le_bytes());
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(body);
    p
}

fn keepalive() -> Vec<u8> {
    pdu(VERSION, id::KEEP_ALIVE, &[])
}

fn keepalive_ack() -> Vec<u8> {
    pdu(VERSION, id::KEEP_ALIVE_ACK, &[])
}

/// A RegisterReq-sized PDU: device name and the rest.
fn register() -> Vec<u8> {
    let mut body = b"SEP001122334455\0".to_vec();
    body.resize(56, 7);
    pdu(VERSION, id::REGISTER, &body)
}

/// Everything that arrives on `stream` within the read window.
fn read_window(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(READ_WINDOW)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    out
}

/// Whether poll(2) reports `stream` readable within the read window (what mio/epoll sees).
fn readable(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut fd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll(2) on one valid pollfd.
    let n = unsafe { libc::poll(&mut fd, 1, READ_WINDOW.as_millis() as i32) };
    n == 1 && fd.revents & libc::POLLIN != 0
}

/// A phone connection: `phone` is the client, `edge` the accepted socket in the offload.
struct Conn {
    phone: TcpStream,
    edge: TcpStream,
    socket: SccpSocket,
}

impl Conn {
    /// Connects over loopback (of the calling thread's namespace) and adds the accepted
    /// socket to `offload`.
    fn new(offload: &SccpOffload) -> Self {
        Self::between(offload, "127.0.0.1:0", "127.0.0.1")
    }

    /// Listens on `listen`, connects to `connect` at the listener's port.
    fn between(offload: &SccpOffload, listen: &str, connect: &str) -> Self {
        let listener = TcpListener::bind(listen).unwrap();
        let to: std::net::IpAddr = connect.parse().unwrap();
        let phone = TcpStream::connect((to, listener.local_addr().unwrap().port())).unwrap();
        let (edge, _) = listener.accept().unwrap();
        phone.set_nodelay(true).unwrap();
        edge.set_nodelay(true).unwrap();
        let socket = offload.add(&edge).expect("add the accepted socket");
        assert_eq!(socket, SccpSocket::of(&edge).unwrap());
        Self { phone, edge, socket }
    }

    /// Writes each chunk as a segment of its own.
    fn send(&mut self, chunks: &[&[u8]]) {
        for chunk in chunks {
            self.phone.write_all(chunk).unwrap();
            std::thread::sleep(SEGMENT_GAP);
        }
    }

    /// (bytes the phone got back, bytes userspace got on the accepted socket).
    fn received(&mut self) -> (Vec<u8>, Vec<u8>) {
        (read_window(&mut self.phone), read_window(&mut self.edge))
    }
}

/// Runs `f` with a fresh offload and a connection, inside a namespace of its own.
fn with_conn(test: &str, f: impl FnOnce(&SccpOffload, &mut Conn) + Send) {
    if !require_root(test) {
        return;
    }
    let offload = SccpOffload::load().expect("load and attach the SCCP program");
    let ns = NetNs::new("sccp");
    ns.run(|| {
        let mut conn = Conn::new(&offload);
        f(&offload, &mut conn);
        offload.remove(conn.socket).expect("remove");
        assert_eq!(offload.framing(conn.socket), None, "remove drops the framing state");
    });
}

#[test]
fn registered_lone_keepalive_is_answered_in_kernel() {
    with_conn("registered_lone_keepalive_is_answered_in_kernel", |offload, conn| {
        offload.mark_registered(conn.socket).unwrap();
        conn.send(&[&keepalive()]);
        let (phone, edge) = conn.received();
        assert_eq!(phone, keepalive_ack(), "KeepAliveAck from the kernel");
        assert!(edge.is_empty(), "userspace saw {edge:?}");
        assert_eq!(offload.kernel_keepalive_answers(), 1);
        // The basic header version is answered with the basic version.
        conn.send(&[&pdu(0, id::KEEP_ALIVE, &[])]);
        let (phone, edge) = conn.received();
        assert_eq!(phone, pdu(0, id::KEEP_ALIVE_ACK, &[]));
        assert!(edge.is_empty());
        assert_eq!(offload.kernel_keepalive_answers(), 2);
        // Other PDUs still reach userspace, and userspace can still write.
        conn.send(&[&register()]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty());
        assert_eq!(edge, register());
        let ack = pdu(VERSION, id::REGISTER_ACK, &[0; 16]);
        conn.edge.write_all(&ack).unwrap();
        assert_eq!(read_window(&mut conn.phone), ack);
        assert!(!offload.out_of_sync(conn.socket));
    });
}

#[test]
fn standby_keepalive_goes_to_userspace() {
    with_conn("standby_keepalive_goes_to_userspace", |offload, conn| {
        assert!(!readable(&conn.edge));
        conn.send(&[&keepalive()]);
        assert!(readable(&conn.edge), "poll reports the passed KeepAlive");
        let (phone, edge) = conn.received();
        assert!(phone.is_empty(), "a standby connection gets no KeepAliveAck from the kernel: {phone:?}");
        assert_eq!(edge, keepalive(), "userspace reads the KeepAlive");
        assert_eq!(offload.kernel_keepalive_answers(), 0);
        // Once the phone registered, the kernel answers.
        offload.mark_registered(conn.socket).unwrap();
        conn.send(&[&keepalive()]);
        let (phone, edge) = conn.received();
        assert_eq!(phone, keepalive_ack());
        assert!(edge.is_empty());
        assert_eq!(offload.kernel_keepalive_answers(), 1);
    });
}

#[test]
fn keepalive_sharing_a_segment_goes_to_userspace() {
    with_conn("keepalive_sharing_a_segment_goes_to_userspace", |offload, conn| {
        offload.mark_registered(conn.socket).unwrap();
        let both = [keepalive(), register()].concat();
        conn.send(&[&both]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty(), "no kernel answer for a mixed segment: {phone:?}");
        assert_eq!(edge, both, "userspace reads both PDUs");
        // Two KeepAlives in one segment are not "exactly one KeepAlive" either.
        let two = [keepalive(), keepalive()].concat();
        conn.send(&[&two]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty());
        assert_eq!(edge, two);
        assert_eq!(offload.kernel_keepalive_answers(), 0);
        // Hundreds of PDUs in one segment (a registration burst) are followed too.
        let burst: Vec<u8> = (0..300u32).flat_map(|line| pdu(VERSION, 0x000B, &line.to_le_bytes())).collect();
        conn.send(&[&burst]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty());
        assert_eq!(edge, burst);
        // The framing followed: the next lone KeepAlive is answered.
        conn.send(&[&keepalive()]);
        let (phone, edge) = conn.received();
        assert_eq!(phone, keepalive_ack());
        assert!(edge.is_empty());
        assert_eq!(offload.kernel_keepalive_answers(), 1);
        assert!(!offload.out_of_sync(conn.socket));
    });
}

#[test]
fn pdu_split_across_segments_keeps_framing_in_sync() {
    with_conn("pdu_split_across_segments_keeps_framing_in_sync", |offload, conn| {
        offload.mark_registered(conn.socket).unwrap();
        // Split inside the body.
        let big = pdu(VERSION, id::REGISTER, &[9u8; 200]);
        conn.send(&[&big[..50], &big[50..]]);
        let framing = offload.framing(conn.socket).unwrap();
        assert_eq!((framing.owed, framing.header_have), (0, 0), "back at a boundary: {framing:?}");
        conn.send(&[&keepalive()]);
        let (phone, edge) = conn.received();
        assert_eq!(edge, big, "userspace reads the whole PDU");
        assert_eq!(phone, keepalive_ack(), "the following lone KeepAlive is answered in the kernel");
        assert_eq!(offload.kernel_keepalive_answers(), 1);

        // Split inside the header, a KeepAlive hidden in the body, and a KeepAlive-sized
        // tail: none of it is a KeepAlive at a boundary.
        let mut body = keepalive();
        body.extend_from_slice(&[1u8; 30]);
        let tricky = pdu(VERSION, 0x0097, &body);
        let tail_start = tricky.len() - 12;
        conn.send(&[&tricky[..3], &tricky[3..10], &tricky[10..tail_start], &tricky[tail_start..]]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty(), "nothing inside a PDU is answered: {phone:?}");
        assert_eq!(edge, tricky);
        // A KeepAlive whose header ends the previous segment's PDU... then a lone one.
        let pair = [register(), keepalive()].concat();
        let cut = register().len() + 5;
        conn.send(&[&pair[..cut], &pair[cut..], &keepalive()]);
        let (phone, edge) = conn.received();
        assert_eq!(edge, pair);
        assert_eq!(phone, keepalive_ack());
        assert_eq!(offload.kernel_keepalive_answers(), 2);
        assert!(!offload.out_of_sync(conn.socket));
    });
}

#[test]
fn garbage_puts_the_socket_out_of_sync() {
    with_conn("garbage_puts_the_socket_out_of_sync", |offload, conn| {
        offload.mark_registered(conn.socket).unwrap();
        let garbage = pdu(0x99, id::KEEP_ALIVE, &[]);
        conn.send(&[&garbage]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty(), "a bad header version is not a KeepAlive: {phone:?}");
        assert_eq!(edge, garbage);
        assert!(offload.out_of_sync(conn.socket), "{:?}", offload.framing(conn.socket));
        // From now on nothing is answered: userspace gets the KeepAlives.
        conn.send(&[&keepalive(), &keepalive()]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty(), "{phone:?}");
        assert_eq!(edge, [keepalive(), keepalive()].concat());
        assert_eq!(offload.kernel_keepalive_answers(), 0);
    });
}

#[test]
fn unknown_socket_is_left_alone_and_remove_stops_answers() {
    with_conn("unknown_socket_is_left_alone_and_remove_stops_answers", |offload, conn| {
        offload.mark_registered(conn.socket).unwrap();
        // A second connection not in the offload: the program never sees it.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut phone2 = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut edge2, _) = listener.accept().unwrap();
        phone2.write_all(&keepalive()).unwrap();
        std::thread::sleep(SEGMENT_GAP);
        assert_eq!(read_window(&mut edge2), keepalive());
        assert!(read_window(&mut phone2).is_empty());
        // Removed: the socket is plain TCP again.
        offload.remove(conn.socket).unwrap();
        conn.send(&[&keepalive()]);
        let (phone, edge) = conn.received();
        assert!(phone.is_empty());
        assert_eq!(edge, keepalive());
        assert_eq!(offload.kernel_keepalive_answers(), 0);
    });
}

#[test]
fn phone_closing_reaches_userspace() {
    with_conn("phone_closing_reaches_userspace", |offload, conn| {
        offload.mark_registered(conn.socket).unwrap();
        let phone = conn.phone.try_clone().unwrap();
        conn.phone.write_all(&register()).unwrap();
        phone.shutdown(std::net::Shutdown::Both).unwrap();
        std::thread::sleep(SEGMENT_GAP);
        assert!(readable(&conn.edge));
        assert_eq!(read_window(&mut conn.edge), register(), "the data, then end of stream");
        assert_eq!(conn.edge.read(&mut [0u8; 16]).unwrap(), 0, "end of stream");
    });
}

#[test]
fn ipv6_and_dual_stack_sockets_are_answered() {
    with_conn("ipv6_and_dual_stack_sockets_are_answered", |offload, _| {
        // An IPv6 connection, and an IPv4 one accepted by a dual-stack listener (an IPv6
        // socket whose peer is an IPv4-mapped address).
        for (listen, connect) in [("[::1]:0", "::1"), ("[::]:0", "127.0.0.1")] {
            let mut conn = Conn::between(offload, listen, connect);
            offload.mark_registered(conn.socket).unwrap();
            let before = offload.kernel_keepalive_answers();
            conn.send(&[&keepalive()]);
            let (phone, edge) = conn.received();
            assert_eq!(phone, keepalive_ack(), "{listen} <- {connect}");
            assert!(edge.is_empty(), "{listen} <- {connect}: {edge:?}");
            assert_eq!(offload.kernel_keepalive_answers(), before + 1);
            offload.remove(conn.socket).unwrap();
        }
    });
}

#[test]
fn verified_instruction_count_stays_within_budget() {
    if !require_root("verified_instruction_count_stays_within_budget") {
        return;
    }
    let offload = SccpOffload::load().expect("load the SCCP program");
    let count = offload.verified_instructions().expect("kernel reports verified instructions");
    eprintln!("regedge_sccp_keepalive: {count} verified instructions (budget {VERIFIED_INSTRUCTIONS_BUDGET})");
    assert!(count <= VERIFIED_INSTRUCTIONS_BUDGET, "verified instructions {count} exceed the budget");
}
