//! A UDP load generator for REGISTER refreshes, built to outrun a kernel fast path.
//!
//! Phones are flows: each has its own source address and port, Call-ID, AOR, Contact
//! (with `+sip.instance`) and CSeq. Frames are written whole (Ethernet, IPv4 with its
//! checksum, UDP with its checksum, a ~600-byte REGISTER) and sent with sendmmsg(2) on an
//! AF_PACKET socket bound to the phones' veth, so one socket sends every phone's flow in
//! batches and the phones' own UDP stack is not in the send path. Replies are read with
//! recvmmsg(2) on a second AF_PACKET socket (SOCK_DGRAM, ETH_P_IP) with a classic BPF
//! filter keeping UDP from port 5060, PACKET_IGNORE_OUTGOING. The frames carry a source
//! MAC that is not the phones' veth's, and the proxy's neighbour entries for the phones
//! point at it, so replies arrive as PACKET_OTHERHOST: the tap sees them, the phones' IP
//! stack drops them at its first check.
//!
//! Matching: the Call-ID carries the phone's index, the CSeq says which refresh; the send
//! time of each refresh sits in a small per-phone ring of slots indexed by CSeq, claimed
//! by the first reply (duplicates are counted apart). Latency goes into an HDR histogram
//! in nanoseconds.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;

/// Frames per sendmmsg / recvmmsg call.
pub const BATCH: usize = 64;
/// Refreshes of one phone that may be outstanding and still be matched to their send time.
const SLOTS: usize = 8;
const ETH_P_IP: u16 = 0x0800;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const SIP_PORT: u16 = 5060;
const RX_BUFFER: usize = 2048;

/// What the phones send in a step: REGISTER refreshes, or keepalives (OPTIONS to the
/// proxy itself, STUN Binding Requests). Every kind is matched to its reply by phone and
/// sequence number: OPTIONS by Call-ID and CSeq like a REGISTER, STUN by the transaction
/// id, which carries the fleet's tag, the phone's index and the sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Register,
    Options,
    Stun,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::Register, Self::Options, Self::Stun];

    pub fn label(self) -> &'static str {
        match self {
            Self::Register => "REGISTER refresh",
            Self::Options => "OPTIONS keepalive",
            Self::Stun => "STUN keepalive",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::Register => "refresh",
            Self::Options => "options",
            Self::Stun => "stun",
        }
    }

    fn index(self) -> u8 {
        match self {
            Self::Register => 0,
            Self::Options => 1,
            Self::Stun => 2,
        }
    }

    fn from_index(i: u8) -> Self {
        match i {
            1 => Self::Options,
            2 => Self::Stun,
            _ => Self::Register,
        }
    }
}

/// One phone's fixed texts: the REGISTER is `head`, branch digits, `middle`, CSeq, `tail`.
struct Phone {
    addr: Ipv4Addr,
    port: u16,
    head: Vec<u8>,
    middle: Vec<u8>,
    tail: Vec<u8>,
}

/// Where the phones live and whom they register with.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// A letter that starts every Call-ID of this fleet (one fleet per measured case).
    pub tag: u8,
    pub phones: usize,
    /// Source addresses, phones spread over them round-robin; ports from `first_port`.
    pub addrs: Vec<Ipv4Addr>,
    pub first_port: u16,
    pub server: Ipv4Addr,
    pub domain: String,
    pub first_user: u32,
    pub expires: u32,
    /// The MACs of the phones' veth and the proxy's.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// Counters of replies, reset per measured step.
#[derive(Default)]
pub struct ReplyCounters {
    /// 200 replies to a refresh of the current step, first per (phone, CSeq).
    pub ok: AtomicU64,
    /// Replies to the current step with another status.
    pub not_ok: AtomicU64,
    /// Replies whose send slot was gone (overwritten) or already claimed.
    pub unmatched: AtomicU64,
    /// Replies to an earlier step.
    pub late: AtomicU64,
    /// Datagrams that were not a parsable SIP reply of this fleet.
    pub foreign: AtomicU64,
}

impl ReplyCounters {
    fn reset(&self) {
        for c in [&self.ok, &self.not_ok, &self.unmatched, &self.late, &self.foreign] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The generator: phones, sockets, per-phone state shared by the sender and receiver.
pub struct Fleet {
    spec: FleetSpec,
    phones: Vec<Phone>,
    tx: OwnedFd,
    rx: OwnedFd,
    /// Per phone: the highest CSeq sent (the next refresh uses more).
    cseq: Vec<AtomicU32>,
    /// Per phone × SLOTS: the CSeq whose send time is in `sent_ns` (0: free or claimed).
    slot_cseq: Vec<AtomicU32>,
    slot_ns: Vec<AtomicU64>,
    /// The lowest CSeq of the step being measured (replies below it are late).
    step_base: AtomicU32,
    pub counters: ReplyCounters,
    /// Status code of the last reply per phone (registration step), and Retry-After.
    last_status: Vec<AtomicU32>,
    retry_after: Vec<AtomicU32>,
    histogram: Mutex<Histogram<u64>>,
    epoch: Instant,
    ip_id: AtomicU32,
    /// What [`Fleet::run_step`] sends ([`Kind`] index).
    kind: std::sync::atomic::AtomicU8,
    /// Per phone: OPTIONS texts (`head`, branch digits, `middle`, CSeq, `tail`), made on the
    /// first OPTIONS step.
    options: std::sync::OnceLock<Vec<[Vec<u8>; 3]>>,
}

/// What [`Fleet::register_paced`] saw.
#[derive(Clone, Debug, Default)]
pub struct RegisterOutcome {
    pub registered: usize,
    /// REGISTERs sent, retransmissions included.
    pub sent: u64,
    pub retransmissions: u64,
    /// 503 answers, and other final non-2xx answers.
    pub unavailable: u64,
    pub other_failures: u64,
    pub elapsed: Duration,
    /// Seconds from the start to each phone's 2xx, in the order they were seen.
    pub completions_s: Vec<f64>,
}

/// What one open-loop step did.
#[derive(Clone, Debug)]
pub struct StepResult {
    pub offered_rate: u64,
    pub sent: u64,
    /// Frames the veth refused at once (ENOBUFS): sent, and lost at the server's door.
    pub send_errors: u64,
    pub send_elapsed: Duration,
    pub ok: u64,
    pub not_ok: u64,
    pub unmatched: u64,
    pub histogram: Histogram<u64>,
}

impl StepResult {
    pub fn achieved_send_rate(&self) -> f64 {
        self.sent as f64 / self.send_elapsed.as_secs_f64().max(1e-9)
    }

    /// Refreshes sent without a 200 (lost, or answered otherwise).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - (self.ok.min(self.sent) as f64 / self.sent as f64)
    }

    pub fn percentile_us(&self, q: f64) -> f64 {
        if self.histogram.is_empty() { f64::NAN } else { self.histogram.value_at_quantile(q) as f64 / 1000.0 }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

impl Fleet {
    /// Builds the phones' texts. `sockets` must have been made inside the phones'
    /// namespace (see [`open_sockets`]).
    pub fn new(spec: FleetSpec, sockets: (OwnedFd, OwnedFd)) -> anyhow::Result<Self> {
        if spec.addrs.is_empty() || spec.phones == 0 {
            bail!("a fleet needs addresses and phones");
        }
        let per_addr = spec.phones.div_ceil(spec.addrs.len());
        if usize::from(spec.first_port) + per_addr > 65_000 {
            bail!("not enough ports for {} phones per address", per_addr);
        }
        let phones: Vec<Phone> = (0..spec.phones).map(|i| phone_texts(&spec, i)).collect();
        let n = spec.phones;
        Ok(Self {
            phones,
            tx: sockets.0,
            rx: sockets.1,
            cseq: (0..n).map(|_| AtomicU32::new(0)).collect(),
            slot_cseq: (0..n * SLOTS).map(|_| AtomicU32::new(0)).collect(),
            slot_ns: (0..n * SLOTS).map(|_| AtomicU64::new(0)).collect(),
            step_base: AtomicU32::new(1),
            counters: ReplyCounters::default(),
            last_status: (0..n).map(|_| AtomicU32::new(0)).collect(),
            retry_after: (0..n).map(|_| AtomicU32::new(0)).collect(),
            histogram: Mutex::new(new_histogram()),
            epoch: Instant::now(),
            ip_id: AtomicU32::new(1),
            kind: std::sync::atomic::AtomicU8::new(0),
            options: std::sync::OnceLock::new(),
            spec,
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// What [`Fleet::run_step`] sends from now on.
    pub fn set_kind(&self, kind: Kind) {
        if kind == Kind::Options {
            self.options.get_or_init(|| (0..self.phones.len()).map(|i| options_texts(&self.spec, i)).collect());
        }
        self.kind.store(kind.index(), Ordering::Release);
    }

    pub fn kind(&self) -> Kind {
        Kind::from_index(self.kind.load(Ordering::Acquire))
    }

    /// Writes phone `i`'s request of the current kind with `cseq` (REGISTER and OPTIONS:
    /// branch unique per CSeq; STUN: the transaction id carries it) into `out`.
    fn payload(&self, i: usize, cseq: u32, out: &mut Vec<u8>) {
        match self.kind() {
            Kind::Register => {
                let p = &self.phones[i];
                out.extend_from_slice(&p.head);
                push_decimal(out, u64::from(cseq));
                out.extend_from_slice(&p.middle);
                push_decimal(out, u64::from(cseq));
                out.extend_from_slice(&p.tail);
            }
            Kind::Options => {
                let [head, middle, tail] = &self.options.get().expect("set_kind made the OPTIONS texts")[i];
                out.extend_from_slice(head);
                push_decimal(out, u64::from(cseq));
                out.extend_from_slice(middle);
                push_decimal(out, u64::from(cseq));
                out.extend_from_slice(tail);
            }
            Kind::Stun => out.extend_from_slice(&stun_request(self.spec.tag, i, cseq)),
        }
    }

    /// Ethernet + IPv4 + UDP frame of phone `i`'s REGISTER with `cseq` into `frame`.
    fn frame(&self, i: usize, cseq: u32, frame: &mut Vec<u8>) {
        frame.clear();
        frame.extend_from_slice(&self.spec.dst_mac);
        frame.extend_from_slice(&self.spec.src_mac);
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        let ip_at = frame.len();
        frame.resize(ip_at + 28, 0);
        self.payload(i, cseq, frame);
        let p = &self.phones[i];
        let udp_len = (frame.len() - ip_at - 20) as u16;
        let total = udp_len + 20;
        let id = self.ip_id.fetch_add(1, Ordering::Relaxed) as u16;
        let src = p.addr.octets();
        let dst = self.spec.server.octets();
        {
            let ip = &mut frame[ip_at..ip_at + 20];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = 64;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&src);
            ip[16..20].copy_from_slice(&dst);
            let sum = !fold(sum16(ip, 0));
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        let udp_at = ip_at + 20;
        frame[udp_at..udp_at + 2].copy_from_slice(&p.port.to_be_bytes());
        frame[udp_at + 2..udp_at + 4].copy_from_slice(&SIP_PORT.to_be_bytes());
        frame[udp_at + 4..udp_at + 6].copy_from_slice(&udp_len.to_be_bytes());
        let mut pseudo = sum16(&src, 0);
        pseudo = sum16(&dst, pseudo);
        pseudo += 17 + u64::from(udp_len);
        let mut sum = !fold(sum16(&frame[udp_at..], pseudo));
        if sum == 0 {
            sum = 0xffff;
        }
        frame[udp_at + 6..udp_at + 8].copy_from_slice(&sum.to_be_bytes());
    }

    /// Sends frames for `(phone, cseq)` pairs with one sendmmsg each [`BATCH`]; returns
    /// (frames handed over, of which refused with ENOBUFS or EAGAIN).
    fn send_batch(&self, items: &[(usize, u32)], frames: &mut [Vec<u8>], record: bool) -> (u64, u64) {
        let n = items.len().min(frames.len());
        for (k, &(i, cseq)) in items[..n].iter().enumerate() {
            self.frame(i, cseq, &mut frames[k]);
        }
        let mut iov: Vec<libc::iovec> =
            frames[..n].iter_mut().map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: f.len() }).collect();
        // SAFETY: zeroed mmsghdr is valid; each points at one iovec that outlives the call.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut done = 0usize;
        let mut refused = 0u64;
        let now = self.now_ns();
        if record {
            for &(i, cseq) in &items[..n] {
                let slot = i * SLOTS + cseq as usize % SLOTS;
                self.slot_ns[slot].store(now, Ordering::Relaxed);
                self.slot_cseq[slot].store(cseq, Ordering::Release);
            }
        }
        while done < n {
            // SAFETY: msgs[done..n] are valid mmsghdrs; the socket is ours.
            let rc = unsafe {
                libc::sendmmsg(self.tx.as_raw_fd(), msgs[done..].as_mut_ptr(), (n - done) as libc::c_uint, 0)
            };
            if rc > 0 {
                done += rc as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                // The veth (or the backlog behind it) refused this frame: offered, lost.
                _ => {
                    refused += 1;
                    done += 1;
                }
            }
        }
        for &(i, cseq) in &items[..n] {
            self.cseq[i].fetch_max(cseq, Ordering::Relaxed);
        }
        (n as u64, refused)
    }

    /// Starts a measured step: every phone's next CSeq is above every CSeq sent so far,
    /// counters and the histogram start empty. Returns the step's base CSeq.
    fn begin_step(&self) -> u32 {
        let base = self.cseq.iter().map(|c| c.load(Ordering::Relaxed)).max().unwrap_or(0) + 1;
        self.step_base.store(base, Ordering::Release);
        self.counters.reset();
        *self.histogram.lock().expect("histogram lock") = new_histogram();
        base
    }

    /// Open loop: `rate` refreshes per second for `duration` from `senders` threads,
    /// phones round-robin (frame `k` of the step is phone `k % N` with CSeq `base + k / N`;
    /// thread `t` sends the frames `k ≡ t` mod `senders` at `rate / senders`), then waits
    /// up to `drain` for replies. Bounded: at most rate × duration frames, and sending
    /// stops at 1.2 × duration.
    pub fn run_step(
        &self,
        rate: u64,
        duration: Duration,
        senders: usize,
        drain: Duration,
        stop: &AtomicBool,
    ) -> StepResult {
        let base = self.begin_step();
        let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
        let senders = senders.max(1) as u64;
        let start = Instant::now();
        let per_thread: Vec<(u64, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..senders)
                .map(|t| {
                    let count = (total + senders - 1 - t) / senders;
                    let rate = rate as f64 / senders as f64;
                    scope.spawn(move || self.send_paced(t, senders, count, rate, base, start, duration, stop))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or((0, 0))).collect()
        });
        let send_elapsed = start.elapsed();
        let sent: u64 = per_thread.iter().map(|p| p.0).sum();
        let refused: u64 = per_thread.iter().map(|p| p.1).sum();
        let drain_until = Instant::now() + drain;
        while Instant::now() < drain_until && self.counters.ok.load(Ordering::Relaxed) + refused < sent {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Stragglers that were still on their way count as lost.
        let histogram = std::mem::replace(&mut *self.histogram.lock().expect("histogram lock"), new_histogram());
        let c = &self.counters;
        StepResult {
            offered_rate: rate,
            sent,
            send_errors: refused,
            send_elapsed,
            ok: c.ok.load(Ordering::Relaxed),
            not_ok: c.not_ok.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
            histogram,
        }
    }

    /// One sender thread of [`Fleet::run_step`]: `count` frames at `rate` per second.
    #[allow(clippy::too_many_arguments)]
    fn send_paced(
        &self,
        t: u64,
        senders: u64,
        count: u64,
        rate: f64,
        base: u32,
        start: Instant,
        duration: Duration,
        stop: &AtomicBool,
    ) -> (u64, u64) {
        // SAFETY: prctl on this thread only; a 1 µs timer slack makes short sleeps precise.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
        let n = self.phones.len() as u64;
        let mut frames: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
        let mut items = Vec::with_capacity(BATCH);
        let hard_stop = duration.mul_f64(1.2);
        let (mut sent, mut refused) = (0u64, 0u64);
        while sent < count && !stop.load(Ordering::Relaxed) {
            let elapsed = start.elapsed();
            if elapsed > hard_stop {
                break;
            }
            let due = ((rate * elapsed.as_secs_f64()) as u64).min(count);
            if due <= sent {
                // Sleep until the next frame is due, at least 50 µs (then send what is
                // due as one burst): senders never spin, so they leave the CPUs to the
                // server they measure.
                let next_ns = ((sent + 1) as f64 / rate * 1e9) as u64;
                let ahead = next_ns.saturating_sub(elapsed.as_nanos() as u64);
                std::thread::sleep(Duration::from_nanos(ahead.max(50_000)));
                continue;
            }
            let batch = (due - sent).min(BATCH as u64);
            items.clear();
            for j in sent..sent + batch {
                let k = t + j * senders;
                items.push(((k % n) as usize, base + (k / n) as u32));
            }
            let (s, r) = self.send_batch(&items, &mut frames, true);
            sent += s;
            refused += r;
        }
        (sent, refused)
    }

    /// Registers every phone once with a full REGISTER (CSeq 1, then +1 per new attempt)
    /// at `rate` per second: retransmits after `retransmit` with no answer, retries after
    /// Retry-After on 503, gives up after `deadline`. Returns (phones registered, REGISTERs
    /// sent, 503s seen).
    pub fn register_all(&self, rate: u64, retransmit: Duration, deadline: Duration) -> (usize, u64, u64) {
        let o = self.register_paced(0..self.phones.len(), rate, retransmit, deadline);
        (o.registered, o.sent, o.unavailable)
    }

    /// [`Fleet::register_all`] with everything it saw. Phones are sent in index order as
    /// `rate` allows (a very high rate: all at once, as fast as the socket takes them);
    /// only the phones waiting for an answer are looked at between sends, so a million
    /// phones cost no more per step than a thousand.
    pub fn register_paced(
        &self,
        phones: std::ops::Range<usize>,
        rate: u64,
        retransmit: Duration,
        deadline: Duration,
    ) -> RegisterOutcome {
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            New,
            Idle,
            Waiting { since: Instant, cseq: u32 },
            Done,
        }
        let n = self.phones.len();
        let phones = phones.start.min(n)..phones.end.min(n);
        let wanted = phones.len();
        let start = Instant::now();
        let mut state = vec![State::New; n];
        let mut inflight: Vec<usize> = Vec::new();
        let mut resend: Vec<usize> = Vec::new();
        let mut retry: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>> = Default::default();
        let mut frames: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
        let mut out = RegisterOutcome::default();
        let mut credit_at = start;
        let mut credits = 0f64;
        let mut next_new = phones.start;
        let mut last_harvest = start;
        let mut completions = Vec::with_capacity(wanted);
        self.set_kind(Kind::Register);
        self.step_base.store(1, Ordering::Release);
        for s in &self.last_status {
            s.store(0, Ordering::Relaxed);
        }
        while out.registered < wanted && start.elapsed() < deadline {
            let now = Instant::now();
            credits = (credits + now.duration_since(credit_at).as_secs_f64() * rate as f64).min(BATCH as f64);
            credit_at = now;
            if now.duration_since(last_harvest) >= Duration::from_millis(1) || credits < 1.0 {
                last_harvest = now;
                inflight.retain(|&i| {
                    let State::Waiting { since, cseq } = state[i] else { return false };
                    let status = self.last_status[i].load(Ordering::Acquire);
                    if status != 0 && status >> 16 == cseq & 0xffff {
                        self.last_status[i].store(0, Ordering::Relaxed);
                        let code = status & 0xffff;
                        if (200..300).contains(&code) {
                            state[i] = State::Done;
                            out.registered += 1;
                            completions.push(now.duration_since(start).as_secs_f64());
                        } else {
                            if code == 503 {
                                out.unavailable += 1;
                            } else {
                                out.other_failures += 1;
                            }
                            // As a phone does: back after Retry-After (regedge says 5 to 20 s).
                            let wait = u64::from(self.retry_after[i].load(Ordering::Relaxed).clamp(1, 120));
                            state[i] = State::Idle;
                            retry.push(std::cmp::Reverse((now + Duration::from_secs(wait), i)));
                        }
                        return false;
                    }
                    if now.duration_since(since) >= retransmit {
                        resend.push(i);
                    }
                    true
                });
            }
            let mut items = Vec::with_capacity(BATCH);
            while items.len() < credits as usize {
                if let Some(i) = resend.pop() {
                    // Listed once per harvest while waiting: only the first pop resends.
                    if let State::Waiting { since, cseq } = state[i]
                        && now.duration_since(since) >= retransmit
                    {
                        state[i] = State::Waiting { since: now, cseq };
                        out.retransmissions += 1;
                        items.push((i, cseq));
                    }
                    continue;
                }
                if let Some(&std::cmp::Reverse((due, i))) = retry.peek()
                    && due <= now
                {
                    retry.pop();
                    let cseq = self.cseq[i].load(Ordering::Relaxed) + 1;
                    state[i] = State::Waiting { since: now, cseq };
                    inflight.push(i);
                    items.push((i, cseq));
                    continue;
                }
                if next_new < phones.end {
                    let i = next_new;
                    next_new += 1;
                    let cseq = self.cseq[i].load(Ordering::Relaxed) + 1;
                    state[i] = State::Waiting { since: now, cseq };
                    inflight.push(i);
                    items.push((i, cseq));
                    continue;
                }
                break;
            }
            if items.is_empty() {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            credits -= items.len() as f64;
            let (s, _) = self.send_batch(&items, &mut frames, false);
            out.sent += s;
        }
        out.elapsed = start.elapsed();
        out.completions_s = completions;
        out
    }

    /// The receiver loop: recvmmsg until `stop`, matching replies. Run it on its own thread.
    pub fn receive(&self, stop: &AtomicBool) {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; RX_BUFFER]).collect();
        let mut iov: Vec<libc::iovec> =
            bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: a zeroed mmsghdr is valid.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut latencies = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: msgs point at our buffers; the socket has a receive timeout.
            let rc = unsafe {
                libc::recvmmsg(
                    self.rx.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if rc <= 0 {
                continue;
            }
            let now = self.now_ns();
            latencies.clear();
            for (k, m) in msgs[..rc as usize].iter().enumerate() {
                let len = m.msg_len as usize;
                if let Some(ns) = self.on_reply(&bufs[k][..len.min(RX_BUFFER)], now) {
                    latencies.push(ns);
                }
            }
            if !latencies.is_empty() {
                let mut h = self.histogram.lock().expect("histogram lock");
                for &ns in &latencies {
                    let _ = h.record(ns.max(1));
                }
            }
        }
    }

    /// One datagram (from its IPv4 header); the latency in ns when it matched a send.
    fn on_reply(&self, packet: &[u8], now: u64) -> Option<u64> {
        let c = &self.counters;
        let Some(reply) = parse_reply(packet, self.spec.tag) else {
            c.foreign.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if reply.phone >= self.phones.len() {
            c.foreign.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if reply.status >= 200 {
            self.retry_after[reply.phone].store(reply.retry_after, Ordering::Relaxed);
            self.last_status[reply.phone].store(((reply.cseq & 0xffff) << 16) | reply.status, Ordering::Release);
        }
        if reply.cseq < self.step_base.load(Ordering::Acquire) {
            c.late.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = reply.phone * SLOTS + reply.cseq as usize % SLOTS;
        let claimed = self.slot_cseq[slot].compare_exchange(reply.cseq, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        if !claimed {
            c.unmatched.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if reply.status == 200 {
            c.ok.fetch_add(1, Ordering::Relaxed);
            Some(now.saturating_sub(self.slot_ns[slot].load(Ordering::Relaxed)))
        } else {
            c.not_ok.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

struct Reply {
    status: u32,
    phone: usize,
    cseq: u32,
    retry_after: u32,
}

/// A STUN Binding Request (RFC 5389, no attributes) whose transaction id is the fleet's
/// `tag`, phone `i` (4 bytes) and `seq` (4 bytes), then three fixed bytes.
pub fn stun_request(tag: u8, i: usize, seq: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
    m[8] = tag;
    m[9..13].copy_from_slice(&(i as u32).to_be_bytes());
    m[13..17].copy_from_slice(&seq.to_be_bytes());
    m[17..20].copy_from_slice(b"rgb");
    m
}

/// A STUN Binding Success Response of fleet `tag` (status 200 in [`Reply`]).
fn parse_stun(udp_payload: &[u8], tag: u8) -> Option<Reply> {
    let h = udp_payload.get(..20)?;
    if h[0..2] != [0x01, 0x01] || h[4..8] != 0x2112_a442u32.to_be_bytes() || h[8] != tag || &h[17..20] != b"rgb" {
        return None;
    }
    let phone = u32::from_be_bytes(h[9..13].try_into().ok()?) as usize;
    let cseq = u32::from_be_bytes(h[13..17].try_into().ok()?);
    Some(Reply { status: 200, phone, cseq, retry_after: 0 })
}

/// A SIP reply (or a STUN success response) of fleet `tag` in an IPv4/UDP datagram.
fn parse_reply(packet: &[u8], tag: u8) -> Option<Reply> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.get(9) != Some(&17) {
        return None;
    }
    let sip = packet.get(ihl + 8..)?;
    if sip.first() == Some(&0x01) {
        return parse_stun(sip, tag);
    }
    let status_line = sip.strip_prefix(b"SIP/2.0 ")?;
    let status = parse_u32(status_line.get(..3)?)?;
    let call_id = header(sip, b"\nCall-ID:").or_else(|| header(sip, b"\ni:"))?;
    let rest = call_id.strip_prefix(&[tag][..])?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let phone = parse_u32(&rest[..digits])? as usize;
    let cseq_value = header(sip, b"\nCSeq:")?;
    let digits = cseq_value.iter().take_while(|b| b.is_ascii_digit()).count();
    let cseq = parse_u32(&cseq_value[..digits])?;
    let retry_after = if status == 200 {
        0
    } else {
        header(sip, b"\nRetry-After:")
            .and_then(|v| parse_u32(&v[..v.iter().take_while(|b| b.is_ascii_digit()).count()]))
            .unwrap_or(0)
    };
    Some(Reply { status, phone, cseq, retry_after })
}

/// The value of the first header line starting with `name` (which starts with `\n`),
/// leading whitespace trimmed. The name as written first (servers echo it), then any case.
fn header<'a>(sip: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(sip, name)
        .or_else(|| sip.windows(name.len()).position(|w| w.eq_ignore_ascii_case(name)))?;
    let value = &sip[at + name.len()..];
    let start = value.iter().position(|b| *b != b' ' && *b != b'\t')?;
    Some(&value[start..])
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Phone `i`'s REGISTER with `cseq` and the phone's address, without sockets (for the
/// report and the kernel cost fixture).
pub fn refresh_payload(spec: &FleetSpec, i: usize, cseq: u32) -> (Vec<u8>, std::net::SocketAddr) {
    let p = phone_texts(spec, i);
    let mut out = Vec::new();
    out.extend_from_slice(&p.head);
    push_decimal(&mut out, u64::from(cseq));
    out.extend_from_slice(&p.middle);
    push_decimal(&mut out, u64::from(cseq));
    out.extend_from_slice(&p.tail);
    (out, std::net::SocketAddr::new(p.addr.into(), p.port))
}

/// Phone `i`'s REGISTER texts: a refresh as a desk phone sends it (~600 bytes).
fn phone_texts(spec: &FleetSpec, i: usize) -> Phone {
    let addr = spec.addrs[i % spec.addrs.len()];
    let port = spec.first_port + (i / spec.addrs.len()) as u16;
    let user = spec.first_user + i as u32;
    let domain = &spec.domain;
    let tag = spec.tag as char;
    let mac = format!("0011{:08x}", i as u32 + (u32::from(spec.tag) << 24));
    let head = format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {addr}:{port};branch=z9hG4bK{tag}{i:06x}c"
    );
    let middle = format!(
        ";rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Phone {user}\" <sip:{user}@{domain}>;tag={mac}7e3a1c\r\n\
         To: \"Phone {user}\" <sip:{user}@{domain}>\r\n\
         Call-ID: {tag}{i}-4c1f9b2e7d05a3@{addr}\r\n\
         CSeq: "
    );
    let tail = format!(
        " REGISTER\r\n\
         Contact: <sip:{user}@{addr}:{port};transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-{mac}>\";expires={expires}\r\n\
         Expires: {expires}\r\n\
         User-Agent: Cisco-CP8865/14.2.1\r\n\
         Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, UPDATE, SUBSCRIBE, INFO\r\n\
         Allow-Events: kpml, dialog, presence\r\n\
         Content-Length: 0\r\n\r\n",
        expires = spec.expires
    );
    Phone { addr, port, head: head.into_bytes(), middle: middle.into_bytes(), tail: tail.into_bytes() }
}

/// Phone `i`'s OPTIONS keepalive to the proxy itself (Request-URI without a user part),
/// as `head`, branch digits, `middle`, CSeq, `tail`: the headers a desk phone sends.
fn options_texts(spec: &FleetSpec, i: usize) -> [Vec<u8>; 3] {
    let addr = spec.addrs[i % spec.addrs.len()];
    let port = spec.first_port + (i / spec.addrs.len()) as u16;
    let user = spec.first_user + i as u32;
    let domain = &spec.domain;
    let tag = spec.tag as char;
    let head = format!("OPTIONS sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {addr}:{port};branch=z9hG4bK{tag}{i:06x}o");
    let middle = format!(
        ";rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{domain}>;tag={i:08x}k\r\n\
         To: <sip:{domain}>\r\n\
         Call-ID: {tag}{i}-0ka11ve@{addr}\r\n\
         CSeq: "
    );
    let tail = format!(
        " OPTIONS\r\n\
         Contact: <sip:{user}@{addr}:{port}>\r\n\
         Accept: application/sdp\r\n\
         User-Agent: Cisco-CP8865/14.2.1\r\n\
         Content-Length: 0\r\n\r\n"
    );
    [head.into_bytes(), middle.into_bytes(), tail.into_bytes()]
}

/// Phone `i`'s OPTIONS keepalive with `cseq`, without sockets (for the report).
pub fn options_payload(spec: &FleetSpec, i: usize, cseq: u32) -> Vec<u8> {
    let [head, middle, tail] = options_texts(spec, i);
    let mut out = head;
    push_decimal(&mut out, u64::from(cseq));
    out.extend_from_slice(&middle);
    push_decimal(&mut out, u64::from(cseq));
    out.extend_from_slice(&tail);
    out
}

/// Opens the send and receive AF_PACKET sockets on `ifindex`. Call it on a thread inside
/// the phones' namespace.
pub fn open_sockets(ifindex: i32) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let bind = |fd: &OwnedFd, protocol: u16| -> anyhow::Result<()> {
        // SAFETY: a zeroed sockaddr_ll filled with family, protocol and interface.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: bind with a valid sockaddr_ll of its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    let socket = |kind: libc::c_int, protocol: u16| -> anyhow::Result<OwnedFd> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, kind | libc::SOCK_CLOEXEC, i32::from(protocol.to_be())) };
        if fd < 0 {
            bail!("socket AF_PACKET: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // Protocol 0: the send socket receives nothing.
    let tx = socket(libc::SOCK_RAW, 0)?;
    bind(&tx, 0)?;
    setsockopt(&tx, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20).context("SO_SNDBUFFORCE")?;

    let rx = socket(libc::SOCK_DGRAM, ETH_P_IP)?;
    // Classic BPF on the network header (SOCK_DGRAM): UDP (protocol 17) from port 5060
    // with a 20-byte IPv4 header.
    let filter = [
        libc::sock_filter { code: 0x30, jt: 0, jf: 0, k: 9 },  // ldb [9]
        libc::sock_filter { code: 0x15, jt: 0, jf: 3, k: 17 }, // jeq #17
        libc::sock_filter { code: 0x28, jt: 0, jf: 0, k: 20 }, // ldh [20]
        libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: u32::from(SIP_PORT) },
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0xffff }, // ret #65535
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 },      // ret #0
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: SO_ATTACH_FILTER with a valid sock_fprog.
    let rc = unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_ATTACH_FILTER: {}", std::io::Error::last_os_error());
    }
    bind(&rx, ETH_P_IP)?;
    setsockopt(&rx, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1).context("PACKET_IGNORE_OUTGOING")?;
    setsockopt(&rx, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20).context("SO_RCVBUFFORCE")?;
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
    // SAFETY: SO_RCVTIMEO with a timeval.
    let rc = unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok((tx, rx))
}

fn setsockopt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: setsockopt with an int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops of the receive socket since the last call (PACKET_STATISTICS: tp_drops).
pub fn rx_drops(fleet: &Fleet) -> u64 {
    let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: PACKET_STATISTICS into a tpacket_stats of its size.
    let rc = unsafe {
        libc::getsockopt(
            fleet.rx.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc != 0 { 0 } else { u64::from(stats.tp_drops) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_parsed() {
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17];
        packet.resize(28, 0);
        packet.extend_from_slice(
            b"SIP/2.0 503 Service Unavailable\r\nVia: x\r\nCall-ID: b42-4c1f@10.0.0.2\r\nCSeq: 17 REGISTER\r\nRetry-After: 3\r\n\r\n",
        );
        let r = parse_reply(&packet, b'b').expect("parsed");
        assert_eq!((r.status, r.phone, r.cseq, r.retry_after), (503, 42, 17, 3));
        assert!(parse_reply(&packet, b'c').is_none());
    }

    #[test]
    fn a_stun_answer_is_matched_to_its_phone_and_sequence() {
        let request = stun_request(b'g', 1234, 77);
        let mut answer = request.to_vec();
        answer[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        answer[2..4].copy_from_slice(&12u16.to_be_bytes());
        answer.extend_from_slice(&[0, 0x20, 0, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17];
        packet.resize(28, 0);
        packet.extend_from_slice(&answer);
        let r = parse_reply(&packet, b'g').expect("parsed");
        assert_eq!((r.status, r.phone, r.cseq), (200, 1234, 77));
        assert!(parse_reply(&packet, b'h').is_none());
    }

    #[test]
    fn an_options_keepalive_parses_and_names_the_proxy() {
        let spec = FleetSpec {
            tag: b'o',
            phones: 10,
            addrs: vec![Ipv4Addr::new(10, 0, 0, 2)],
            first_port: 20_000,
            server: Ipv4Addr::new(10, 0, 0, 1),
            domain: "edge.example.net".into(),
            first_user: 100,
            expires: 120,
            src_mac: [0; 6],
            dst_mac: [0; 6],
        };
        let text = options_payload(&spec, 3, 9);
        assert!(regedge::sip::Message::parse(&text).is_ok(), "regedge's parser takes it");
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("OPTIONS sip:edge.example.net SIP/2.0\r\n"));
        assert!(text.contains("\r\nCall-ID: o3-") && text.contains("\r\nCSeq: 9 OPTIONS\r\n"));
    }

    #[test]
    fn checksums_fold() {
        // RFC 1071 example.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&data, 0)), 0xddf2);
    }
}
