//! The kernel side seen from userspace: load the embedded XDP program, fill its maps
//! from the config, attach it to the configured interfaces, read its counters.
//!
//! Pinning (`[fastpath] pin_path`, see [`pin`]): the maps whose contents outlive a
//! process (`BINDINGS`, `ABSORBED`, and the `REPLIES`/`PASSES` counters) are pinned by
//! name in the pin directory, and each interface's XDP link as `link-<interface>`. The
//! kernel then keeps answering while regedge is stopped; the next start loads its program
//! against the same maps and swaps it into the pinned link atomically
//! (`bpf_link_update`), so there is no moment without a program. The maps that userspace
//! fills from the config at every start (`LISTENERS`, `LOCAL_NAMES`, `SETTINGS`) and the
//! per-CPU `SCRATCH` are not pinned: each program gets fresh ones, filled before it is
//! swapped in.

pub mod mirror;
pub mod pin;
pub mod sccp;
mod test_run;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use regedge_common::{
    PassReason, ReplyKind, XDP_PROGRAM,
    maps::{
        self, ANSWER_KEEPALIVES, ANSWER_REGISTER, BindingEntry, FastpathSettings, ListenerKey, ListenerValue,
        LocalNameKey, SETTING_DATE_HEADER,
    },
};

pub use test_run::{TestRun, test_run};

use crate::{config::FastpathMode, local_names::LocalNames, sip::stateless::ToTag};

/// The eBPF object built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/regedge-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the object has no program {XDP_PROGRAM}")]
    MissingProgram,
    #[error("the verifier rejected {XDP_PROGRAM}: {0}")]
    Verify(#[source] ProgramError),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("attaching XDP to {interface} in {mode} mode: {source}")]
    Attach { interface: String, mode: AttachMode, source: ProgramError },
    #[error("fastpath.pin_path {}: {message}", path.display())]
    PinPath { path: PathBuf, message: String },
    #[error("fastpath.pin_path {}: mounting a bpffs at {}: {source} (or mount it yourself: mount -t bpf bpf {})", path.display(), pin::BPFFS_ROOT, pin::BPFFS_ROOT)]
    PinMount { path: PathBuf, source: std::io::Error },
    #[error("fastpath.pin_path {}: cannot create it: {source}", path.display())]
    PinCreate { path: PathBuf, source: std::io::Error },
    #[error("pinning the XDP link of {interface} at {}: {message}", path.display())]
    PinLink { interface: String, path: PathBuf, message: String },
}

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (XDP native).
    Native,
    /// In the network stack (XDP generic, skb mode).
    Generic,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The loaded program with its maps filled. Dropping it detaches the program from every
/// interface, unless it was loaded with a pin directory ([`Fastpath::load_pinned`]): then
/// the pinned links keep it attached.
pub struct Fastpath {
    ebpf: Ebpf,
    /// Where the maps and links are pinned; `None`: nothing is.
    pin_dir: Option<PathBuf>,
    attached: Vec<(String, AttachMode)>,
    /// Interfaces whose pinned link was adopted from an earlier run (a subset of `attached`).
    adopted: Vec<String>,
    counters: Arc<KernelCounters>,
    verified_instructions: Option<u32>,
    bindings: Option<KernelBindings>,
    absorbed: Option<RingBuf<MapData>>,
}

/// The `BINDINGS` map: the kernel mirror of absorbable bindings.
pub struct KernelBindings {
    map: HashMap<MapData, u64, BindingEntry>,
    /// The map's kernel id, to open more handles on it ([`KernelBindings::reader`]).
    id: u32,
}

/// A read-only handle on `BINDINGS` that any thread may use: the registrar reads the CSeq
/// the kernel last answered for a binding before it judges a REGISTER the kernel passed.
pub struct KernelBindingsReader {
    map: HashMap<MapData, u64, BindingEntry>,
}

impl KernelBindingsReader {
    /// The CSeq of the last REGISTER accepted for the entry (by userspace or the kernel).
    pub fn cseq(&self, call_id_key: u64) -> Option<u32> {
        self.map.get(&call_id_key, 0).ok().map(|entry| entry.cseq)
    }
}

impl KernelBindings {
    pub fn upsert(&mut self, call_id_key: u64, entry: &BindingEntry) -> Result<(), MapError> {
        self.map.insert(call_id_key, entry, 0)
    }

    /// Removes the entry; a missing one is not an error.
    pub fn remove(&mut self, call_id_key: u64) -> Result<(), MapError> {
        match self.map.remove(&call_id_key) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }

    /// Another handle on the same map, for reading from other threads.
    pub fn reader(&self) -> Result<KernelBindingsReader, MapError> {
        let data = MapData::from_id(self.id)?;
        Ok(KernelBindingsReader { map: HashMap::try_from(aya::maps::Map::HashMap(data))? })
    }

    pub fn get(&self, call_id_key: u64) -> Option<BindingEntry> {
        self.map.get(&call_id_key, 0).ok()
    }

    /// Every entry (one syscall per key: for start-up reconciliation, not per packet).
    pub fn entries(&self) -> Vec<(u64, BindingEntry)> {
        self.map.iter().filter_map(Result::ok).collect()
    }
}

/// What the kernel answers beyond keepalives and how, from the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerSettings {
    /// Answer REGISTER refreshes of bindings in `BINDINGS` (and Cisco backup probes).
    pub register: bool,
    /// Put a Date header in answers to REGISTER.
    pub date_header: bool,
}

/// CLOCK_REALTIME minus CLOCK_TAI in nanoseconds (0 where the kernel keeps no TAI offset).
pub fn realtime_minus_tai_ns() -> i64 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
    };
    let tai = read(libc::CLOCK_TAI);
    let real = read(libc::CLOCK_REALTIME);
    // Whole milliseconds: the two reads are microseconds apart.
    (real - tai + 500_000).div_euclid(1_000_000) * 1_000_000
}

/// The per-CPU counter maps, shared with the metrics collector.
pub struct KernelCounters {
    replies: PerCpuArray<MapData, u64>,
    passes: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCounters").finish_non_exhaustive()
    }
}

impl KernelCounters {
    fn sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        map.get(&index, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }

    /// Replies of `kind` summed over CPUs.
    pub fn replies(&self, kind: ReplyKind) -> u64 {
        Self::sum(&self.replies, kind as u32)
    }

    /// Packets passed for `reason` summed over CPUs.
    pub fn passes(&self, reason: PassReason) -> u64 {
        Self::sum(&self.passes, reason as u32)
    }
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn missing(name: &'static str) -> DatapathError {
    DatapathError::Map { name, source: MapError::InvalidName { name: name.into() } }
}

impl Fastpath {
    /// Loads the object and runs the verifier; nothing is attached yet, nothing pinned.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(None)
    }

    /// Like [`Fastpath::load`], with the maps of [`pin::PINNED_MAPS`] pinned in `pin_dir`
    /// (a directory on bpffs, see [`pin::prepare`]): maps already pinned there are reused,
    /// so the kernel state of an earlier run carries over; one whose layout changed is
    /// replaced by a fresh one. Links made by [`Fastpath::attach_all`] are pinned there too.
    pub fn load_pinned(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with(Some(pin_dir))
    }

    fn load_with(pin_dir: Option<&Path>) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin_dir {
            pin::drop_incompatible_maps(dir);
            for layout in pin::PINNED_MAPS {
                loader.map_pin_path(layout.name, dir.join(layout.name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(DatapathError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(DatapathError::MissingProgram)?
            .try_into()
            .map_err(DatapathError::Verify)?;
        program.load().map_err(DatapathError::Verify)?;
        let verified_instructions = program.info().ok().and_then(|i| i.verified_instruction_count());
        let mut take_counter = |name: &'static str| {
            PerCpuArray::try_from(ebpf.take_map(name).ok_or_else(|| missing(name))?).map_err(map_error(name))
        };
        let counters =
            Arc::new(KernelCounters { replies: take_counter(maps::REPLIES)?, passes: take_counter(maps::PASSES)? });
        let bindings_map = ebpf.take_map(maps::BINDINGS).ok_or_else(|| missing(maps::BINDINGS))?;
        let bindings_id = match &bindings_map {
            aya::maps::Map::HashMap(data) => data.info().map_err(map_error(maps::BINDINGS))?.id(),
            _ => return Err(map_error(maps::BINDINGS)(MapError::InvalidMapType { map_type: 0 })),
        };
        let bindings = KernelBindings {
            map: HashMap::try_from(bindings_map).map_err(map_error(maps::BINDINGS))?,
            id: bindings_id,
        };
        let absorbed = RingBuf::try_from(ebpf.take_map(maps::ABSORBED).ok_or_else(|| missing(maps::ABSORBED))?)
            .map_err(map_error(maps::ABSORBED))?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf),
            attached: Vec::new(),
            adopted: Vec::new(),
            counters,
            verified_instructions,
            bindings: Some(bindings),
            absorbed: Some(absorbed),
        })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf.map_mut(name).ok_or_else(|| missing(name))
    }

    /// Fills the maps: the listeners the program answers for, the names that mean this
    /// proxy, the node's To-tag and what it answers beyond keepalives.
    pub fn configure(
        &mut self,
        listen: &[SocketAddr],
        names: &LocalNames,
        tag: ToTag,
        answer: AnswerSettings,
    ) -> Result<(), DatapathError> {
        let answers = ANSWER_KEEPALIVES | if answer.register { ANSWER_REGISTER } else { 0 };
        let mut listeners: HashMap<_, ListenerKey, ListenerValue> =
            HashMap::try_from(self.map_mut(maps::LISTENERS)?).map_err(map_error(maps::LISTENERS))?;
        for addr in listen {
            listeners.insert(listener_key(*addr), ListenerValue { answers }, 0).map_err(map_error(maps::LISTENERS))?;
        }
        let mut local: HashMap<_, LocalNameKey, u8> =
            HashMap::try_from(self.map_mut(maps::LOCAL_NAMES)?).map_err(map_error(maps::LOCAL_NAMES))?;
        for key in names.keys() {
            local.insert(key, 1, 0).map_err(map_error(maps::LOCAL_NAMES))?;
        }
        let mut settings: Array<_, FastpathSettings> =
            Array::try_from(self.map_mut(maps::SETTINGS)?).map_err(map_error(maps::SETTINGS))?;
        let value = FastpathSettings {
            to_tag: tag.bytes(),
            flags: if answer.date_header { SETTING_DATE_HEADER } else { 0 },
            reply_rate_per_source: 0,
            realtime_minus_tai_ns: realtime_minus_tai_ns(),
        };
        settings.set(0, value, 0).map_err(map_error(maps::SETTINGS))
    }

    /// Sets how many replies per second (and in a burst) the kernel gives one source
    /// address (`[fastpath] reply_rate_per_source`; 0: no limit). Beyond, its requests go
    /// to userspace, counted as `PassReason::RateLimited`. After [`Fastpath::configure`].
    pub fn set_reply_rate_per_source(&mut self, rate: u32) -> Result<(), DatapathError> {
        let mut settings: Array<_, FastpathSettings> =
            Array::try_from(self.map_mut(maps::SETTINGS)?).map_err(map_error(maps::SETTINGS))?;
        let mut value = settings.get(&0, 0).map_err(map_error(maps::SETTINGS))?;
        value.reply_rate_per_source = rate;
        settings.set(0, value, 0).map_err(map_error(maps::SETTINGS))
    }

    /// The `BINDINGS` map, unless it was taken by [`Fastpath::take_bindings`].
    pub fn bindings_mut(&mut self) -> Option<&mut KernelBindings> {
        self.bindings.as_mut()
    }

    /// Hands the `BINDINGS` map to its owner (the mirror thread).
    pub fn take_bindings(&mut self) -> Option<KernelBindings> {
        self.bindings.take()
    }

    /// Hands the `ABSORBED` ring to its reader.
    pub fn take_absorbed(&mut self) -> Option<RingBuf<MapData>> {
        self.absorbed.take()
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(DatapathError::MissingProgram)?
            .try_into()
            .map_err(DatapathError::Verify)
    }

    /// Attaches to `interface` in `mode`; with a pin directory, the link is pinned there
    /// as `link-<interface>` (and outlives this process).
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        let program = self.program_mut()?;
        let link_id = program.attach(interface, mode.xdp_mode()).map_err(|source| DatapathError::Attach {
            interface: interface.to_owned(),
            mode,
            source,
        })?;
        if let Some(dir) = self.pin_dir.clone() {
            self.pin_link(interface, link_id, &pin::link_path(&dir, interface))?;
        }
        self.attached.push((interface.to_owned(), mode));
        Ok(())
    }

    /// Pins the link `link_id` at `path`: taken from the program (which would detach it
    /// when dropped) and pinned, it stays attached until the pin is removed.
    fn pin_link(&mut self, interface: &str, link_id: XdpLinkId, path: &Path) -> Result<(), DatapathError> {
        let failed = |message: String| DatapathError::PinLink {
            interface: interface.to_owned(),
            path: path.to_path_buf(),
            message,
        };
        let program = self.program_mut()?;
        let link = program.take_link(link_id).map_err(|e| failed(e.to_string()))?;
        let fd_link = FdLink::try_from(link)
            .map_err(|e| failed(format!("{e} (the kernel attached it without a bpf_link, which cannot be pinned)")))?;
        // A stale pin (a link to an interface that went away) is replaced.
        let _ = std::fs::remove_file(path);
        fd_link.pin(path).map_err(|e| failed(e.to_string()))?;
        Ok(())
    }

    /// Swaps this program into the link pinned at `path` (by an earlier run), atomically:
    /// the interface is never without a program. Returns the mode the link runs in. A link
    /// in another mode than an explicitly configured one is not adopted (an error: the
    /// caller removes the pin and attaches anew, in the configured mode).
    fn adopt_link(&mut self, interface: &str, path: &Path, configured: FastpathMode) -> Result<AttachMode, String> {
        let wanted = match configured {
            FastpathMode::Native => Some(AttachMode::Native),
            FastpathMode::Generic => Some(AttachMode::Generic),
            FastpathMode::Auto | FastpathMode::Off => None,
        };
        let found = pin::attached_mode(interface);
        if let (Some(wanted), Some(found)) = (wanted, found)
            && wanted != found
        {
            return Err(format!("the pinned link runs in {found} mode, the config asks for {wanted}"));
        }
        let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e: LinkError| e.to_string())?;
        let program = self.program_mut().map_err(|e| e.to_string())?;
        program.attach_to_link(link).map_err(|e| e.to_string())?;
        Ok(found.or(wanted).unwrap_or(AttachMode::Generic))
    }

    /// Attaches to every interface following the configured mode: `native` and
    /// `generic` must succeed; `auto` tries native, then generic, per interface. With a
    /// pin directory, an interface whose link an earlier run pinned gets this program
    /// swapped into that link instead (a stale pin is replaced by a new attachment), and
    /// pinned links of interfaces no longer configured are removed (detached).
    pub fn attach_all(&mut self, interfaces: &[String], mode: FastpathMode) -> Result<(), DatapathError> {
        if let Some(dir) = self.pin_dir.clone() {
            pin::remove_links_except(&dir, interfaces);
        }
        for interface in interfaces {
            if let Some(dir) = self.pin_dir.clone() {
                let path = pin::link_path(&dir, interface);
                if path.exists() {
                    match self.adopt_link(interface, &path, mode) {
                        Ok(attached) => {
                            tracing::info!(%interface, mode = %attached, pin = %path.display(), "adopted the pinned XDP link: new program swapped in");
                            self.attached.push((interface.clone(), attached));
                            self.adopted.push(interface.clone());
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%interface, pin = %path.display(), %error, "cannot adopt the pinned XDP link; attaching anew");
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
            }
            match mode {
                FastpathMode::Native => self.attach(interface, AttachMode::Native)?,
                FastpathMode::Generic => self.attach(interface, AttachMode::Generic)?,
                FastpathMode::Off => {}
                FastpathMode::Auto => {
                    if let Err(native) = self.attach(interface, AttachMode::Native) {
                        tracing::debug!(%interface, error = %native, "native XDP unavailable, trying generic");
                        self.attach(interface, AttachMode::Generic)?;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
    }

    /// Interfaces whose pinned link an earlier run left and this one adopted.
    pub fn adopted(&self) -> &[String] {
        &self.adopted
    }

    /// The pin directory, if the maps and links are pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    pub fn counters(&self) -> Arc<KernelCounters> {
        Arc::clone(&self.counters)
    }

    /// Instructions the verifier processed when loading the program.
    pub fn verified_instructions(&self) -> Option<u32> {
        self.verified_instructions
    }

    /// Runs the program once on `frame` through BPF_PROG_TEST_RUN (`repeat` times).
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> std::io::Result<TestRun> {
        let program: &Xdp = self
            .ebpf
            .program(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| std::io::Error::other("no XDP program"))?;
        let fd = program.fd().map_err(std::io::Error::other)?;
        test_run(std::os::fd::AsFd::as_fd(fd), frame, repeat)
    }
}

/// The `LISTENERS` key for a listen address (an unspecified address is the wildcard).
pub fn listener_key(addr: SocketAddr) -> ListenerKey {
    let port_be = u16::from_ne_bytes(addr.port().to_be_bytes());
    match addr {
        SocketAddr::V4(v4) => ListenerKey::ipv4(v4.ip().octets(), port_be),
        SocketAddr::V6(v6) => ListenerKey::ipv6(v6.ip().octets(), port_be),
    }
}
