//! A fast fake SIP registrar for the scenarios that need many registrations quickly
//! (memory, failover, storm): one UDP socket in the backend namespace, one thread, every
//! REGISTER answered 200 OK at once (Via list, From, To with a tag, Call-ID, CSeq, the
//! request's Contact and Expires echoed), every OPTIONS answered 200 OK. It stores
//! nothing but what the benchmark counts: REGISTERs per 100 ms and the distinct Call-IDs
//! it accepted. "Killing" it makes it read and drop everything (a dead host's silence),
//! so regedge's health probes time out as they would against a crashed call server.

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use regedge_tests::netns::NetNs;

/// REGISTERs are counted per bucket of this length.
pub const BUCKET: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Stats {
    pub registers: AtomicU64,
    pub options: AtomicU64,
    /// REGISTERs per [`BUCKET`] since the benchmark's epoch.
    buckets: Mutex<Vec<u32>>,
    /// Hashes of the Call-IDs of the REGISTERs answered.
    call_ids: Mutex<HashSet<u64>>,
}

pub struct FakeBackend {
    pub stats: Arc<Stats>,
    alive: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Binds `addr` inside `ns` and answers from a thread; `epoch` is time zero of the
    /// REGISTER buckets.
    pub fn start(ns: &NetNs, addr: SocketAddr, epoch: Instant) -> anyhow::Result<Self> {
        let socket = ns.run(|| UdpSocket::bind(addr))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stats = Arc::new(Stats::default());
        let alive = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, alive, stop) = (stats.clone(), alive.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, &stats, &alive, &stop, epoch))
        };
        Ok(Self { stats, alive, stop, thread: Some(thread) })
    }

    /// From now on nothing is answered.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::Release);
    }

    pub fn distinct_registered(&self) -> usize {
        self.stats.call_ids.lock().map_or(0, |s| s.len())
    }

    /// REGISTERs per bucket, from the epoch.
    pub fn buckets(&self) -> Vec<u32> {
        self.stats.buckets.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The highest REGISTER rate over any window of `window` buckets, per second.
    pub fn peak_rate(&self, window: usize) -> f64 {
        let b = self.buckets();
        let window = window.max(1);
        if b.is_empty() {
            return 0.0;
        }
        let best = b.windows(window.min(b.len())).map(|w| w.iter().map(|&x| u64::from(x)).sum::<u64>()).max();
        best.unwrap_or(0) as f64 / (window.min(b.len()) as f64 * BUCKET.as_secs_f64())
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &UdpSocket, stats: &Stats, alive: &AtomicBool, stop: &AtomicBool, epoch: Instant) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Acquire) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
        if !alive.load(Ordering::Acquire) {
            continue;
        }
        let request = &buf[..len];
        let register = request.starts_with(b"REGISTER ");
        if !register && !request.starts_with(b"OPTIONS ") {
            continue;
        }
        out.clear();
        answer(request, register, &mut out);
        if register {
            stats.registers.fetch_add(1, Ordering::Relaxed);
            let bucket = (epoch.elapsed().as_nanos() / BUCKET.as_nanos()) as usize;
            if let Ok(mut b) = stats.buckets.lock() {
                if b.len() <= bucket {
                    b.resize(bucket + 1, 0);
                }
                b[bucket] += 1;
            }
            if let Some(call_id) = header_value(request, &[b"call-id", b"i"]) {
                let hash = call_id
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, &c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3));
                if let Ok(mut s) = stats.call_ids.lock() {
                    s.insert(hash);
                }
            }
        } else {
            stats.options.fetch_add(1, Ordering::Relaxed);
        }
        let _ = socket.send_to(&out, from);
    }
}

/// 200 OK to `request`: its Via lines, From, To (tagged), Call-ID, CSeq, and for a
/// REGISTER its Contact and Expires lines.
fn answer(request: &[u8], register: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
    let head_end = memchr::memmem::find(request, b"\r\n\r\n").unwrap_or(request.len());
    for line in request[..head_end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = line[..colon].trim_ascii().to_ascii_lowercase();
        let keep = match name.as_slice() {
            b"via" | b"v" | b"from" | b"f" | b"call-id" | b"i" | b"cseq" => true,
            b"contact" | b"m" | b"expires" => register,
            b"to" | b"t" => {
                out.extend_from_slice(line);
                if !line.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag=")) {
                    out.extend_from_slice(b";tag=fakebe");
                }
                out.extend_from_slice(b"\r\n");
                false
            }
            _ => false,
        };
        if keep {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

fn header_value<'a>(request: &'a [u8], names: &[&[u8]]) -> Option<&'a [u8]> {
    let head_end = memchr::memmem::find(request, b"\r\n\r\n").unwrap_or(request.len());
    request[..head_end].split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = line[..colon].trim_ascii();
        names.iter().any(|n| name.eq_ignore_ascii_case(n)).then(|| line[colon + 1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_is_answered_with_its_headers() {
        let req = b"REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b\r\nFrom: <sip:1@x>;tag=1\r\n\
                    To: <sip:1@x>\r\nCall-ID: c1\r\nCSeq: 2 REGISTER\r\nContact: <sip:1@y>\r\nExpires: 3600\r\nPath: <sip:p>\r\n\
                    Content-Length: 0\r\n\r\n";
        let mut out = Vec::new();
        answer(req, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b\r\n"));
        assert!(text.contains("To: <sip:1@x>;tag=fakebe\r\n") && text.contains("Expires: 3600\r\n"));
        assert!(!text.contains("Path"));
        assert_eq!(header_value(req, &[b"call-id", b"i"]), Some(&b"c1"[..]));
    }
}
