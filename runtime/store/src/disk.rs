//! The file the embedded store writes through when a test (or an operator's drill) wants to
//! see what a failing disk does: a plain file whose writes, growth and syncs fail with
//! `ENOSPC` while [`DiskFaults::fill`] holds and work again after [`DiskFaults::free`], and
//! whose chosen sync fails once with `EIO` ([`DiskFaults::fail_sync`]), and whose syncs can
//! be held back ([`DiskFaults::hold_syncs`]) to see what arrives while a commit is in flight.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use redb::StorageBackend;

/// A switch that makes the store's disk full or free again (cheap to clone; the clones share
/// it). Give it to [`EmbeddedStore::open_on`](crate::EmbeddedStore::open_on).
#[derive(Debug, Clone, Default)]
pub struct DiskFaults(Arc<Switch>);

#[derive(Debug, Default)]
struct Switch {
    full: AtomicBool,
    /// The sync (counting from 1) that fails once; 0: none.
    failing_sync: AtomicU64,
    /// Whether syncs wait, and how many are waiting.
    held: parking_lot::Mutex<(bool, usize)>,
    released: parking_lot::Condvar,
}

impl DiskFaults {
    /// From now on the disk is full: writes, growth and syncs fail with `ENOSPC`.
    pub fn fill(&self) {
        self.0.full.store(true, SeqCst);
    }

    /// Space returns.
    pub fn free(&self) {
        self.0.full.store(false, SeqCst);
    }

    /// The `n`-th sync from now (1: the next) fails once with `EIO`, after the data it was to
    /// sync was written: a commit whose last step fails may still be on disk.
    pub fn fail_sync(&self, n: u64) {
        self.0.failing_sync.store(n, SeqCst);
    }

    /// From now on a sync waits (its data written, not yet synced) until
    /// [`DiskFaults::release_syncs`]: a commit stays in flight as long as the caller wants.
    pub fn hold_syncs(&self) {
        self.0.held.lock().0 = true;
    }

    /// Held syncs go on, and later ones do not wait.
    pub fn release_syncs(&self) {
        self.0.held.lock().0 = false;
        self.0.released.notify_all();
    }

    /// Syncs waiting for [`DiskFaults::release_syncs`].
    #[must_use]
    pub fn syncs_waiting(&self) -> usize {
        self.0.held.lock().1
    }

    fn wait_if_held(&self) {
        let mut held = self.0.held.lock();
        if held.0 {
            held.1 += 1;
            while held.0 {
                self.0.released.wait(&mut held);
            }
            held.1 -= 1;
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.0.full.load(SeqCst) { Err(io::Error::from_raw_os_error(ENOSPC)) } else { Ok(()) }
    }

    fn check_sync(&self) -> io::Result<()> {
        self.check()?;
        let due = self.0.failing_sync.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).unwrap_or(0);
        if due == 1 { Err(io::Error::from_raw_os_error(EIO)) } else { Ok(()) }
    }
}

/// `ENOSPC` ("No space left on device") on Linux.
const ENOSPC: i32 = 28;
/// `EIO` ("Input/output error") on Linux.
const EIO: i32 = 5;

/// The database file, behind the switch.
#[derive(Debug)]
pub(crate) struct FaultyFile {
    file: File,
    faults: DiskFaults,
}

impl FaultyFile {
    pub(crate) fn open(path: &Path, faults: DiskFaults) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Ok(Self { file, faults })
    }
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > self.len()? {
            self.faults.check()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.wait_if_held();
        self.faults.check_sync()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check()?;
        self.file.write_all_at(data, offset)
    }
}
