//! The file the embedded store writes through when a test (or an operator's drill) wants to
//! see what a full disk does: a plain file whose writes, growth and syncs fail with
//! `ENOSPC` while [`DiskFaults::fill`] holds, and work again after [`DiskFaults::free`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use redb::StorageBackend;

/// A switch that makes the store's disk full or free again (cheap to clone; the clones share
/// it). Give it to [`EmbeddedStore::open_on`](crate::EmbeddedStore::open_on).
#[derive(Debug, Clone, Default)]
pub struct DiskFaults(Arc<AtomicBool>);

impl DiskFaults {
    /// From now on the disk is full: writes, growth and syncs fail with `ENOSPC`.
    pub fn fill(&self) {
        self.0.store(true, SeqCst);
    }

    /// Space returns.
    pub fn free(&self) {
        self.0.store(false, SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(SeqCst) { Err(io::Error::from_raw_os_error(ENOSPC)) } else { Ok(()) }
    }
}

/// `ENOSPC` ("No space left on device") on Linux.
const ENOSPC: i32 = 28;

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
        self.faults.check()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check()?;
        self.file.write_all_at(data, offset)
    }
}
