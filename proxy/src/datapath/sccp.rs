//! SCCP KeepAlives answered in the kernel: the `sk_skb` stream-verdict program
//! `regedge_sccp_keepalive` (ebpf/regedge-ebpf/src/sccp.rs) on the phones' TCP sockets.
//!
//! The kernel answers a KeepAlive with a KeepAliveAck when the segment holds that one
//! KeepAlive and nothing else, and the socket was marked registered
//! ([`SccpOffload::mark_registered`]). Everything else reaches the socket as usual, so
//! userspace still answers the KeepAlives that share a segment with other PDUs, the
//! KeepAlives of standby connections (never marked: they get no KeepAliveAck), and all
//! of them on a socket the kernel lost track of ([`SccpOffload::out_of_sync`]).
//!
//! Use: [`SccpOffload::load`] once; per accepted phone connection [`SccpOffload::add`]
//! right after `accept` (the kernel follows the PDU boundaries from the first segment
//! that arrives after it), [`SccpOffload::mark_registered`] once the phone registered
//! here, [`SccpOffload::remove`] when the session ends (before or after the socket is
//! closed: the handle, not the socket, names it). Every method takes `&self`; the
//! offload can be shared between sessions behind an `Arc`.
//!
//! The program is loaded from the same object as the XDP program ([`super::OBJECT`]) but
//! on its own (its own copy of the maps, nothing pinned: the sockets die with the
//! process), so it works whether or not the XDP fast path is attached. Its answers are
//! counted in its own copy of `REPLIES` under [`ReplyKind::SccpKeepalive`]
//! ([`SccpOffload::kernel_keepalive_answers`]); the fast path's copy never counts them.
//!
//! Caveat: the kernel's KeepAliveAck enters the socket's send queue between whatever
//! userspace writes; userspace must write whole PDUs (a partial non-blocking write
//! followed by an Ack from the kernel would split a PDU).

use std::{
    net::{SocketAddr, TcpStream},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, SockHash},
    programs::{ProgramError, SkSkb},
};
use regedge_common::{
    ReplyKind, SCCP_PROGRAM,
    maps::{self, SCCP_OUT_OF_SYNC, SccpFraming, SccpSocketKey},
};

use super::OBJECT;

#[derive(Debug, thiserror::Error)]
pub enum SccpOffloadError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the object has no program {SCCP_PROGRAM}")]
    MissingProgram,
    #[error("the verifier rejected {SCCP_PROGRAM}: {0}")]
    Verify(#[source] ProgramError),
    #[error("attaching {SCCP_PROGRAM} to its socket map: {0}")]
    Attach(#[source] ProgramError),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("the socket has no IP addresses: {0}")]
    Address(#[source] std::io::Error),
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> SccpOffloadError {
    move |source| SccpOffloadError::Map { name, source }
}

/// A phone socket in the offload, named by its 4-tuple (returned by [`SccpOffload::add`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SccpSocket {
    key: SccpSocketKey,
}

impl SccpSocket {
    /// The handle of a connected socket with local address `local` and peer `peer`.
    pub fn new(local: SocketAddr, peer: SocketAddr) -> Self {
        Self { key: SccpSocketKey::new(local, peer) }
    }

    /// The handle of `stream` (its local and peer addresses).
    pub fn of(stream: &TcpStream) -> std::io::Result<Self> {
        Ok(Self::new(stream.local_addr()?, stream.peer_addr()?))
    }

    /// The map key.
    pub fn key(&self) -> SccpSocketKey {
        self.key
    }
}

struct Maps {
    sockets: SockHash<MapData, SccpSocketKey>,
    framing: HashMap<MapData, SccpSocketKey, SccpFraming>,
    registered: HashMap<MapData, SccpSocketKey, u32>,
}

/// The loaded and attached KeepAlive program with its maps. Dropping it detaches the
/// program (the sockets go back to plain TCP).
pub struct SccpOffload {
    maps: Mutex<Maps>,
    replies: PerCpuArray<MapData, u64>,
    verified_instructions: Option<u32>,
    /// Owns the program (and the link to `SCCP_SOCKETS`); last, so it is dropped last.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for SccpOffload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SccpOffload")
            .field("verified_instructions", &self.verified_instructions)
            .finish_non_exhaustive()
    }
}

/// A delete of a missing key is not an error (aya reports it as `KeyNotFound` for hash
/// maps, as the raw ENOENT for socket maps).
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl SccpOffload {
    /// Loads the program (the verifier runs here) and attaches it to its socket map.
    pub fn load() -> Result<Self, SccpOffloadError> {
        // The object's other maps belong to the XDP program; this copy of them is never
        // used, so the big ones are created at their smallest.
        // SAFETY: sysconf has no preconditions.
        let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::BINDINGS, 1)
            .map_max_entries(maps::ABSORBED, page)
            .load(OBJECT)
            .map_err(SccpOffloadError::Load)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(SccpOffloadError::Map { name, source: MapError::InvalidName { name: name.into() } })
        };
        let sockets: SockHash<MapData, SccpSocketKey> =
            SockHash::try_from(take(&mut ebpf, maps::SCCP_SOCKETS)?).map_err(map_error(maps::SCCP_SOCKETS))?;
        let framing = HashMap::try_from(take(&mut ebpf, maps::SCCP_FRAMING)?).map_err(map_error(maps::SCCP_FRAMING))?;
        let registered =
            HashMap::try_from(take(&mut ebpf, maps::SCCP_REGISTERED)?).map_err(map_error(maps::SCCP_REGISTERED))?;
        let replies = PerCpuArray::try_from(take(&mut ebpf, maps::REPLIES)?).map_err(map_error(maps::REPLIES))?;
        let program: &mut SkSkb = ebpf
            .program_mut(SCCP_PROGRAM)
            .ok_or(SccpOffloadError::MissingProgram)?
            .try_into()
            .map_err(SccpOffloadError::Verify)?;
        program.load().map_err(SccpOffloadError::Verify)?;
        let verified_instructions = program.info().ok().and_then(|i| i.verified_instruction_count());
        program.attach(sockets.fd()).map_err(SccpOffloadError::Attach)?;
        Ok(Self {
            maps: Mutex::new(Maps { sockets, framing, registered }),
            replies,
            verified_instructions,
            _ebpf: ebpf,
        })
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts an accepted phone connection under the program (not yet answering: see
    /// [`SccpOffload::mark_registered`]). Fails when the map is full
    /// ([`maps::SCCP_SOCKETS_MAX`]); the socket then simply stays userspace's alone.
    pub fn add(&self, stream: &TcpStream) -> Result<SccpSocket, SccpOffloadError> {
        let socket = SccpSocket::of(stream).map_err(SccpOffloadError::Address)?;
        self.add_fd(stream.as_fd(), socket)?;
        Ok(socket)
    }

    /// [`SccpOffload::add`] for any connected TCP socket `fd` (a tokio or mio stream),
    /// named by `socket` (its [`SccpSocket::new`] of local and peer address).
    pub fn add_fd(&self, fd: BorrowedFd<'_>, socket: SccpSocket) -> Result<(), SccpOffloadError> {
        let mut maps = self.maps();
        // Framing state first: the program ignores sockets without one.
        maps.framing.insert(socket.key, SccpFraming::default(), 0).map_err(map_error(maps::SCCP_FRAMING))?;
        let _ = ignore_missing(maps.registered.remove(&socket.key));
        if let Err(source) = maps.sockets.insert(socket.key, fd.as_raw_fd(), 0) {
            let _ = maps.framing.remove(&socket.key);
            return Err(SccpOffloadError::Map { name: maps::SCCP_SOCKETS, source });
        }
        Ok(())
    }

    /// From now on the kernel answers this phone's lone KeepAlives (call it once the
    /// phone registered here; never for a standby connection).
    pub fn mark_registered(&self, socket: SccpSocket) -> Result<(), SccpOffloadError> {
        self.maps().registered.insert(socket.key, 1, 0).map_err(map_error(maps::SCCP_REGISTERED))
    }

    /// Takes the socket out of the offload (a missing entry is not an error). The kernel
    /// drops a closed socket from the socket map by itself, but the state entries stay
    /// until this is called.
    pub fn remove(&self, socket: SccpSocket) -> Result<(), SccpOffloadError> {
        let mut maps = self.maps();
        let sockets = ignore_missing(maps.sockets.remove(&socket.key)).map_err(map_error(maps::SCCP_SOCKETS));
        let registered = ignore_missing(maps.registered.remove(&socket.key)).map_err(map_error(maps::SCCP_REGISTERED));
        let framing = ignore_missing(maps.framing.remove(&socket.key)).map_err(map_error(maps::SCCP_FRAMING));
        sockets.and(registered).and(framing)
    }

    /// Where the kernel stands in the socket's byte stream (`None`: not in the offload).
    pub fn framing(&self, socket: SccpSocket) -> Option<SccpFraming> {
        self.maps().framing.get(&socket.key, 0).ok()
    }

    /// Whether the kernel lost the PDU boundaries of this socket (it then passes
    /// everything, and userspace answers every KeepAlive).
    pub fn out_of_sync(&self, socket: SccpSocket) -> bool {
        self.framing(socket).is_some_and(|f| f.flags & SCCP_OUT_OF_SYNC != 0)
    }

    /// KeepAlives answered in the kernel since the load, summed over CPUs (the
    /// `kind="sccp_keepalive"` count of the kernel side).
    pub fn kernel_keepalive_answers(&self) -> u64 {
        self.replies.get(&(ReplyKind::SccpKeepalive as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }

    /// Instructions the verifier processed when loading the program.
    pub fn verified_instructions(&self) -> Option<u32> {
        self.verified_instructions
    }
}
