//! A bpffs of a test's own, mounted on a scratch directory (regedge's `[fastpath]
//! pin_path` goes inside), and reads of the maps regedge pins there, so a test can watch
//! the kernel while regedge is down.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use regedge_common::{
    ReplyKind,
    maps::{self, BindingEntry},
};

/// A bpffs mounted at `dir`; on drop every pin in it is removed (which detaches pinned
/// XDP links and frees pinned maps), then it is unmounted and the directory removed.
pub struct BpfFs {
    pub dir: PathBuf,
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

impl BpfFs {
    /// Mounts a fresh bpffs at `dir` (created if missing). Needs root.
    pub fn mount(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create bpffs mount point");
        let target = c_path(dir);
        // SAFETY: mount(2) with NUL-terminated strings.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "mount -t bpf bpf {}: {}", dir.display(), std::io::Error::last_os_error());
        Self { dir: dir.to_path_buf() }
    }

    /// Removes every pin under the mount (links first, so the program stops answering).
    pub fn unpin_all(&self) {
        fn remove(dir: &Path) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            // `link-*` first.
            paths.sort_by_key(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link-")));
            for path in paths {
                if path.is_dir() {
                    remove(&path);
                    let _ = std::fs::remove_dir(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        remove(&self.dir);
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        self.unpin_all();
        let target = c_path(&self.dir);
        // SAFETY: umount2(2) of the mount this guard made.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn pinned_map(pin_dir: &Path, name: &str) -> Option<Map> {
    Map::from_map_data(MapData::from_pin(pin_dir.join(name)).ok()?).ok()
}

/// The pinned `REPLIES` counter of `kind`, summed over CPUs.
pub fn replies(pin_dir: &Path, kind: ReplyKind) -> Option<u64> {
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(pinned_map(pin_dir, maps::REPLIES)?).ok()?;
    Some(map.get(&(kind as u32), 0).ok()?.iter().sum())
}

/// The entries of the pinned `BINDINGS` map.
pub fn binding_entries(pin_dir: &Path) -> Option<Vec<(u64, BindingEntry)>> {
    let map: HashMap<MapData, u64, BindingEntry> = HashMap::try_from(pinned_map(pin_dir, maps::BINDINGS)?).ok()?;
    Some(map.iter().filter_map(Result::ok).collect())
}
