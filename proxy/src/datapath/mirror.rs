//! The thread that owns the kernel mirror: applies the registrar's updates to `BINDINGS`
//! in order, and drains the `ABSORBED` ring in batches back to the registrar (which folds
//! them into the registry on its next tick).

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use regedge_common::maps::AbsorbedRefresh;

use super::KernelBindings;
use crate::registrar::mirror::MirrorUpdate;

/// How long the thread waits for updates before it looks at the ring again.
const POLL: Duration = Duration::from_millis(50);

/// What the mirror thread reports to metrics.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Entries in `BINDINGS`.
    pub entries: AtomicU64,
    /// Updates the map refused (full, or a syscall error).
    pub errors: AtomicU64,
    /// Answered refreshes read from the ring.
    pub absorbed: AtomicU64,
}

/// The running mirror thread; dropping it stops and joins it.
pub struct MirrorThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<MirrorStats>,
}

impl MirrorThread {
    pub fn start(
        mut bindings: KernelBindings,
        mut absorbed: RingBuf<MapData>,
        updates: Receiver<MirrorUpdate>,
        folded: Sender<AbsorbedRefresh>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(MirrorStats::default());
        let mut present: HashSet<u64> = bindings.entries().into_iter().map(|(key, _)| key).collect();
        stats.entries.store(present.len() as u64, Relaxed);
        let thread = std::thread::Builder::new().name("regedge-mirror".into()).spawn({
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            move || {
                while !stop.load(Relaxed) {
                    match updates.recv_timeout(POLL) {
                        Ok(first) => {
                            for update in std::iter::once(first).chain(updates.try_iter()) {
                                apply(&mut bindings, &mut present, &stats, update);
                            }
                            stats.entries.store(present.len() as u64, Relaxed);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
                    }
                    while let Some(record) = absorbed.next() {
                        if record.len() < size_of::<AbsorbedRefresh>() {
                            continue;
                        }
                        // SAFETY: the kernel writes whole `AbsorbedRefresh` records (plain data).
                        let refresh = unsafe { record.as_ptr().cast::<AbsorbedRefresh>().read_unaligned() };
                        stats.absorbed.fetch_add(1, Relaxed);
                        let _ = folded.send(refresh);
                    }
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread), stats })
    }
}

fn apply(bindings: &mut KernelBindings, present: &mut HashSet<u64>, stats: &MirrorStats, update: MirrorUpdate) {
    let result = match &update {
        MirrorUpdate::Upsert { key, entry, .. } => bindings.upsert(*key, entry).map(|()| present.insert(*key)),
        MirrorUpdate::Remove { key, .. } => bindings.remove(*key).map(|()| present.remove(key)),
    };
    if let Err(error) = result {
        // Once per power of two, so a full map does not flood the log.
        let errors = stats.errors.fetch_add(1, Relaxed) + 1;
        if errors.is_power_of_two() {
            tracing::warn!(%error, errors, ?update, "kernel binding mirror update failed; userspace answers that phone");
        }
    }
}

impl Drop for MirrorThread {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
