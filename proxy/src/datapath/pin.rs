//! The pin directory (`[fastpath] pin_path`): making sure it is on a bpffs, which maps are
//! pinned there and with which layout, the pinned XDP links (`link-<interface>`), and the
//! mode a pinned link runs in.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use regedge_common::{
    PassReason, ReplyKind,
    maps::{self, BindingEntry},
};

use super::{AttachMode, DatapathError};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The one directory regedge mounts a bpffs on by itself (as Cilium does).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// A pinned map and the layout the program expects of it.
#[derive(Clone, Copy, Debug)]
pub struct MapLayout {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn layout<K, V>(name: &'static str, max_entries: u32) -> MapLayout {
    MapLayout { name, key_size: size_of::<K>() as u32, value_size: size_of::<V>() as u32, max_entries }
}

/// The maps pinned by name in the pin directory: the kernel's state and counters, which a
/// new program must share with the one it replaces.
pub const PINNED_MAPS: [MapLayout; 4] = [
    layout::<u64, BindingEntry>(maps::BINDINGS, maps::BINDINGS_MAX),
    // A ring buffer has no key or value; its size is `max_entries`.
    MapLayout { name: maps::ABSORBED, key_size: 0, value_size: 0, max_entries: maps::ABSORBED_RING_BYTES },
    layout::<u32, u64>(maps::REPLIES, ReplyKind::COUNT),
    layout::<u32, u64>(maps::PASSES, PassReason::COUNT),
];

/// Where the link of `interface` is pinned.
pub fn link_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link-{interface}"))
}

fn is_bpffs(path: &Path) -> std::io::Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs writes the struct it is given; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(dir: &Path) -> std::io::Result<()> {
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: plain mount(2) with NUL-terminated strings.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), c_dir.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes sure `dir` exists on a bpffs: when its parent is not on one, a bpffs is mounted
/// there if the parent is exactly `/sys/fs/bpf`; any other parent is an error that names
/// the fix. Then `dir` is created (mode 0700) if missing.
///
/// A bpffs mounted here lives in regedge's mount namespace: under `ip netns exec` (which
/// gives the process a private one with a fresh /sys) it, and the pins in it, go away
/// with the process. To survive a restart there, mount the bpffs outside first and point
/// `pin_path` at it.
pub fn prepare(dir: &Path) -> Result<(), DatapathError> {
    let failed = |message: String| DatapathError::PinPath { path: dir.to_path_buf(), message };
    if dir.is_dir() && is_bpffs(dir).unwrap_or(false) {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| failed("has no parent".into()))?;
    let parent_on_bpffs = is_bpffs(parent).map_err(|e| failed(format!("cannot stat {}: {e}", parent.display())))?;
    if !parent_on_bpffs {
        if parent != Path::new(BPFFS_ROOT) {
            return Err(failed(format!(
                "{} is not on a bpffs; mount one first: mount -t bpf bpf {}",
                parent.display(),
                parent.display()
            )));
        }
        mount_bpffs(parent).map_err(|source| DatapathError::PinMount { path: dir.to_path_buf(), source })?;
        tracing::info!(at = BPFFS_ROOT, "mounted a bpffs for the pinned fast path");
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(DatapathError::PinCreate { path: dir.to_path_buf(), source }),
    }
    if !is_bpffs(dir).unwrap_or(false) {
        return Err(failed(format!("is not on a bpffs; mount one first: mount -t bpf bpf {}", parent.display())));
    }
    Ok(())
}

/// Removes the pins of maps whose layout is not the one the program expects (an upgrade
/// changed it): the program gets a fresh map instead of failing to load or misreading one.
/// The program still running keeps the old map until it is replaced.
pub fn drop_incompatible_maps(dir: &Path) {
    for want in PINNED_MAPS {
        let path = dir.join(want.name);
        if !path.exists() {
            continue;
        }
        let found = MapInfo::from_pin(&path)
            .map(|info| (info.key_size(), info.value_size(), info.max_entries()))
            .map_err(|e| e.to_string());
        if found.as_ref().ok() != Some(&(want.key_size, want.value_size, want.max_entries)) {
            tracing::warn!(
                map = want.name,
                pin = %path.display(),
                ?found,
                want = ?(want.key_size, want.value_size, want.max_entries),
                "pinned map has another layout (key size, value size, max entries); starting it afresh"
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Removes (detaches) the pinned links in `dir` of interfaces not in `keep`.
pub fn remove_links_except(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(interface) = name.to_str().and_then(|n| n.strip_prefix("link-")) else { continue };
        if !keep.iter().any(|k| k == interface) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(%interface, "removed the pinned XDP link of an interface no longer configured")
                }
                Err(error) => tracing::warn!(%interface, %error, "cannot remove a pinned XDP link"),
            }
        }
    }
}

/// The mode the XDP program on `interface` runs in, asked of the kernel (rtnetlink
/// `IFLA_XDP_ATTACHED`); `None` if the question fails or no program is attached.
pub fn attached_mode(interface: &str) -> Option<AttachMode> {
    let c_name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return None;
    }
    netlink::xdp_attached(index as i32).and_then(|attached| match attached {
        netlink::XDP_ATTACHED_DRV | netlink::XDP_ATTACHED_HW => Some(AttachMode::Native),
        netlink::XDP_ATTACHED_SKB => Some(AttachMode::Generic),
        _ => None,
    })
}

mod netlink {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub const XDP_ATTACHED_DRV: u8 = 1;
    pub const XDP_ATTACHED_SKB: u8 = 2;
    pub const XDP_ATTACHED_HW: u8 = 3;
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_ATTACHED: u16 = 2;
    const NLA_TYPE_MASK: u16 = 0x3fff;

    /// `IFLA_XDP_ATTACHED` of interface `index`.
    pub fn xdp_attached(index: i32) -> Option<u8> {
        // SAFETY: socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        // nlmsghdr (16) + ifinfomsg (16).
        let mut request = [0u8; 32];
        request[0..4].copy_from_slice(&32u32.to_ne_bytes());
        request[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
        request[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        request[8..12].copy_from_slice(&1u32.to_ne_bytes());
        request[16] = libc::AF_UNSPEC as u8;
        request[20..24].copy_from_slice(&index.to_ne_bytes());
        // SAFETY: send(2) of a local buffer.
        let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if sent != request.len() as isize {
            return None;
        }
        let mut reply = vec![0u8; 64 * 1024];
        // SAFETY: recv(2) into a local buffer of that length.
        let got = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        let reply = reply.get(..usize::try_from(got).ok()?)?;
        let len = u32::from_ne_bytes(reply.get(0..4)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
        if kind != libc::RTM_NEWLINK {
            return None;
        }
        let attrs = reply.get(32..len.min(reply.len()))?;
        let xdp = find(attrs, IFLA_XDP)?;
        find(xdp, IFLA_XDP_ATTACHED)?.first().copied()
    }

    /// The payload of the first rtattr of type `want` in `attrs`.
    fn find(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
        while attrs.len() >= 4 {
            let len = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?) & NLA_TYPE_MASK;
            if len < 4 || len > attrs.len() {
                return None;
            }
            if kind == want {
                return Some(&attrs[4..len]);
            }
            attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_path_outside_a_bpffs_names_the_mount_command() {
        let dir = std::env::temp_dir().join(format!("regedge-pin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = prepare(&dir.join("regedge")).unwrap_err().to_string();
        assert!(error.contains(&format!("mount -t bpf bpf {}", dir.display())), "{error}");
        assert!(error.contains(&dir.join("regedge").display().to_string()), "{error}");
        assert!(!dir.join("regedge").exists(), "nothing is created outside a bpffs");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pinned_maps_are_the_kernel_state_and_counters() {
        let names: Vec<_> = PINNED_MAPS.iter().map(|m| m.name).collect();
        assert_eq!(names, [maps::BINDINGS, maps::ABSORBED, maps::REPLIES, maps::PASSES]);
        assert_eq!(link_path(Path::new("/sys/fs/bpf/regedge"), "eth0"), Path::new("/sys/fs/bpf/regedge/link-eth0"));
    }
}
