//! The embedded store: the core [`Engine`] made durable with redb.
//!
//! Layout of `DATA_DIR/sextant.redb`:
//! - table `records`: key path (`instances/NS/GROUP/SERVICE/ID`, `services/..`, `configs/..`,
//!   `plugins/NAME`) → the record's JSON. Only durable records: ephemeral instances live in
//!   memory and are not resurrected after a restart (their owners re-register).
//! - table `artifacts`: sha256 hex → plugin component bytes.
//! - table `meta`: `format` (1) and `revision_ceiling`.
//!
//! Revisions must never repeat across restarts, yet ephemeral writes do not touch the disk.
//! So the store reserves revisions in blocks: `revision_ceiling` is persisted before any
//! revision above the previous ceiling is handed out, and a restarted store starts at the
//! ceiling. Watchers from before a restart therefore always get a `Reset`.
//!
//! A write is acknowledged only after its redb transaction committed with
//! `Durability::Immediate` (fsync), so `kill -9` right after an acknowledgement loses nothing.
//!
//! **Group commit.** Durable writes (records that reach the disk, deletes, conditional
//! writes) queue, each with the channel its answer goes back on; the write that finds no
//! commit running starts one blocking task that commits everything queued, in one redb
//! transaction and one fsync, answers each member after it, and goes on while writes keep
//! arriving. Writes that arrive while a commit is in flight wait for the next one, together:
//! with many writers the disk sees one sync per group instead of one per write, and a waiting
//! writer holds no thread (its task sleeps on its answer; only it is woken by it). A group
//! holds one write per key (a second write to a key goes to the group after, so each is
//! validated against what the one before it left); a group the disk refuses is refused whole
//! and changes nothing. The state is let go while a group syncs: reads and lease upkeep go on,
//! and what takes a revision waits for the group to be applied (see `Shared::commit_group`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sextant_core::engine::{Engine, Op, Persist, Prepared};
use sextant_core::history::DEFAULT_CAPACITY;
use sextant_core::model::sha256_hex;
use sextant_core::store::{Store, StoreError, WatchStream};
use sextant_core::{Event, LeaseId, Millis, Record, RecordKey, Revision, Scope, StoreSnapshot};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::disk::{DiskFaults, FaultyFile};

const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("records");
/// Plugin components written whole (before components were stored in chunks); read only.
const ARTIFACTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("artifacts");
/// A stored component's size by sha256, written with its chunks (in one transaction).
const ARTIFACT_SIZES: TableDefinition<'_, &str, u64> = TableDefinition::new("artifact_sizes");
/// A stored component's chunks: (sha256, index) → at most [`ARTIFACT_CHUNK`] bytes.
const ARTIFACT_CHUNKS: TableDefinition<'_, (&str, u32), &[u8]> = TableDefinition::new("artifact_chunks");
/// Chunk size of stored components (no value is larger than this, whatever the component).
const ARTIFACT_CHUNK: usize = 1024 * 1024;
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;
/// Revisions reserved per durable ceiling bump.
const REVISION_BLOCK: u64 = 100_000;
/// The file inside the data directory.
pub const DB_FILE: &str = "sextant.redb";

/// Why the data directory could not be opened. Never answered by starting empty.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory cannot be created or is not a directory.
    #[error("data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// redb refused the file: not a redb file, damaged, locked by another process, ...
    #[error("cannot open {path}: {source} (is another sextant using this data directory, or is the file damaged?)")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: redb::Error,
    },
    /// The file was written by an incompatible sextant.
    #[error("{path} has data format {found}, this sextant reads format {FORMAT}")]
    Format {
        /// The database file.
        path: PathBuf,
        /// The format found.
        found: u64,
    },
    /// A stored record does not decode.
    #[error("{path}: record {key:?} is corrupt: {reason}")]
    Record {
        /// The database file.
        path: PathBuf,
        /// The key path.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Settings of an [`EmbeddedStore`].
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// Events kept for watchers to resume from.
    pub history_capacity: usize,
    /// How often expired leases are collected.
    pub reap_interval: Duration,
    /// Buffer of the live event channel; a watcher further behind is dropped with `Lagged`.
    pub watch_buffer: usize,
    /// Memory the database may keep of its file's pages. Every record is also held in memory
    /// and read from there, so the database reads its pages only to write: a small cache
    /// costs a write a page read from the OS's cache now and then, where redb's default
    /// (1 GiB) grew with the registry (about 1 KiB per persistent instance).
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_capacity: DEFAULT_CAPACITY,
            reap_interval: Duration::from_millis(100),
            watch_buffer: 64 * 1024,
            cache_bytes: 32 << 20,
        }
    }
}

/// The embedded, durable store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The database; none while it is being opened again after a failed write.
    db: RwLock<Option<Database>>,
    /// How it is opened (again).
    file: DbFile,
    /// Set when a write failed: the durable records on disk are compared with memory (and
    /// made to match it) before the next write, in case the failed commit reached the disk.
    resync: std::sync::atomic::AtomicBool,
    path: PathBuf,
    events: broadcast::Sender<Event>,
    origin: Instant,
    /// Durable writes (and what waits for a syncing group) queued for the next group commit.
    group: Group,
    /// Set (with the state held) while a group's transaction is being synced with the state
    /// let go: its writes have revisions but are not applied yet, so nothing else may take a
    /// revision until it is cleared (with the state held again).
    committing: std::sync::atomic::AtomicBool,
}

/// What durable writers share: the writes waiting for the next group commit, and whether a
/// commit task is running.
#[derive(Debug, Default)]
struct Group {
    queue: Mutex<GroupQueue>,
}

#[derive(Debug, Default)]
struct GroupQueue {
    waiting: Vec<Waiting>,
    leading: bool,
    stats: CommitStats,
}

/// A durable write's answer: its revision once its commit is durable, or why it was refused.
type Answer = Result<Revision, StoreError>;

/// Members' answers, each with the channel it goes back on.
type Answers = Vec<(oneshot::Sender<Answer>, Answer)>;

/// Sends each answer (a writer that stopped waiting is fine).
fn answer(answers: Answers) {
    for (to, answer) in answers {
        let _ = to.send(answer);
    }
}

/// Work in the queue, and where its answer goes.
#[derive(Debug)]
struct Waiting {
    work: Work,
    answer: oneshot::Sender<Answer>,
}

/// What a queued member asks for.
#[derive(Debug)]
enum Work {
    /// A write; conditional when `expect` is given (the revision its key must have been last
    /// written at; `Some(None)`: absent).
    Write { op: Op, expect: Option<Option<Revision>> },
    /// A lease's revocation (its instances are ephemeral: no record IO). It takes revisions,
    /// so while a group syncs it queues like a write, and is applied in its place.
    Revoke(LeaseId),
}

impl Waiting {
    /// The key a write writes (a revocation has none).
    fn key(&self) -> Option<RecordKey> {
        match &self.work {
            Work::Write { op, .. } => Some(op.key()),
            Work::Revoke(_) => None,
        }
    }
}

/// What the embedded store's group commit did since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable transactions committed for writes (one fsync each).
    pub commits: u64,
    /// Writes those transactions carried (acknowledged durable writes).
    pub writes: u64,
}

#[derive(Debug)]
struct State {
    engine: Engine,
    ceiling: u64,
    leases_expired: u64,
}

fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store's file is closed".into())
}

/// How the database file is opened, and with how much cache.
#[derive(Debug, Clone)]
struct DbFile {
    kind: DbKind,
    cache_bytes: usize,
}

/// Which file.
#[derive(Debug, Clone)]
enum DbKind {
    /// redb's own file, locked against a second process.
    Plain(PathBuf),
    /// Through a switch that can make the disk full ([`EmbeddedStore::open_on`]).
    Faulty(PathBuf, DiskFaults),
}

impl DbFile {
    fn open(&self) -> Result<Database, redb::Error> {
        let mut builder = Database::builder();
        builder.set_cache_size(self.cache_bytes);
        Ok(match &self.kind {
            DbKind::Plain(path) if path.exists() => builder.open(path)?,
            DbKind::Plain(path) => builder.create(path)?,
            DbKind::Faulty(path, faults) => builder.create_with_backend(FaultyFile::open(path, faults.clone())?)?,
        })
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its lease reaper. Must be called
    /// inside a tokio runtime.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, OpenError> {
        Self::open_file(dir, options, DbKind::Plain)
    }

    /// [`EmbeddedStore::open`] with the database written through `disk`, a switch that can
    /// make the disk full: what a full disk does to registrations can be tried without
    /// filling one (the file is not locked against a second process).
    pub fn open_on(dir: &Path, options: EmbeddedOptions, disk: DiskFaults) -> Result<Self, OpenError> {
        Self::open_file(dir, options, |path| DbKind::Faulty(path, disk))
    }

    fn open_file(
        dir: &Path,
        options: EmbeddedOptions,
        kind: impl FnOnce(PathBuf) -> DbKind,
    ) -> Result<Self, OpenError> {
        let dir_err = |source| OpenError::Dir { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        if !dir.is_dir() {
            return Err(dir_err(std::io::Error::other("not a directory")));
        }
        let path = dir.join(DB_FILE);
        let db_err = |source: redb::Error| OpenError::Database { path: path.clone(), source };
        let file = DbFile { kind: kind(path.clone()), cache_bytes: options.cache_bytes };
        let db = file.open().map_err(db_err)?;
        let (start, records) = load(&db, &path)?;
        let ceiling = start + REVISION_BLOCK;
        write_txn(&db, [], Some(ceiling)).map_err(db_err)?;
        tracing::info!(path = %path.display(), revision = start, records = records.len(), "embedded store opened");
        let (events, _) = broadcast::channel(options.watch_buffer.max(16));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                engine: Engine::new(Revision(start), records, options.history_capacity),
                ceiling,
                leases_expired: 0,
            }),
            db: RwLock::new(Some(db)),
            file,
            resync: std::sync::atomic::AtomicBool::new(false),
            path,
            events,
            origin: Instant::now(),
            group: Group::default(),
            committing: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(reap(Arc::downgrade(&shared), options.reap_interval));
        Ok(Self { shared })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Current revision.
    #[must_use]
    pub fn revision(&self) -> Revision {
        self.shared.state.lock().engine.revision()
    }

    /// Live leases.
    #[must_use]
    pub fn lease_count(&self) -> usize {
        self.shared.state.lock().engine.lease_count()
    }

    /// Leases that expired since the store was opened.
    #[must_use]
    pub fn leases_expired(&self) -> u64 {
        self.shared.state.lock().leases_expired
    }

    /// What the group commit did since the store opened: durable transactions and the
    /// writes they carried (their ratio is the mean group size).
    #[must_use]
    pub fn commit_stats(&self) -> CommitStats {
        self.shared.group.queue.lock().stats
    }

    /// Durable writes (and what waits for a syncing commit) queued for the next group
    /// commit, not counting those of the commit in flight.
    #[must_use]
    pub fn writes_waiting(&self) -> usize {
        self.shared.group.queue.lock().waiting.len()
    }
}

fn load(db: &Database, path: &Path) -> Result<(u64, Vec<Record>), OpenError> {
    let db_err = |e: redb::Error| OpenError::Database { path: path.to_owned(), source: e };
    let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
    // Make sure every table exists so a read transaction can open them.
    let (format, ceiling) = {
        let mut meta = txn.open_table(META).map_err(|e| db_err(e.into()))?;
        txn.open_table(RECORDS).map_err(|e| db_err(e.into()))?;
        txn.open_table(ARTIFACTS).map_err(|e| db_err(e.into()))?;
        txn.open_table(ARTIFACT_SIZES).map_err(|e| db_err(e.into()))?;
        txn.open_table(ARTIFACT_CHUNKS).map_err(|e| db_err(e.into()))?;
        let format = meta.get("format").map_err(|e| db_err(e.into()))?.map(|v| v.value());
        let ceiling = meta.get("revision_ceiling").map_err(|e| db_err(e.into()))?.map_or(0, |v| v.value());
        if format.is_none() {
            meta.insert("format", FORMAT).map_err(|e| db_err(e.into()))?;
        }
        (format.unwrap_or(FORMAT), ceiling)
    };
    if format != FORMAT {
        return Err(OpenError::Format { path: path.to_owned(), found: format });
    }
    txn.commit().map_err(|e| db_err(e.into()))?;

    let read = db.begin_read().map_err(|e| db_err(e.into()))?;
    let table = read.open_table(RECORDS).map_err(|e| db_err(e.into()))?;
    let mut records = Vec::new();
    for item in table.iter().map_err(|e| db_err(e.into()))? {
        let (k, v) = item.map_err(|e| db_err(e.into()))?;
        let corrupt = |reason: String| OpenError::Record { path: path.to_owned(), key: k.value().to_owned(), reason };
        let key = RecordKey::parse_path(k.value()).map_err(|e| corrupt(e.to_string()))?;
        records.push(Record::from_value(&key, v.value()).map_err(|e| corrupt(e.to_string()))?);
    }
    Ok((ceiling, records))
}

/// One durable transaction: the record changes, in order, and, if given, a new revision
/// ceiling. None when there was nothing to write.
fn write_txn<'a>(
    db: &Database,
    persist: impl IntoIterator<Item = &'a Persist>,
    ceiling: Option<u64>,
) -> Result<Option<()>, redb::Error> {
    let mut changes = persist.into_iter().filter(|p| !matches!(p, Persist::Nothing)).peekable();
    if changes.peek().is_none() && ceiling.is_none() {
        return Ok(None);
    }
    let txn = db.begin_write()?;
    {
        let mut records = txn.open_table(RECORDS)?;
        for change in changes {
            match change {
                Persist::Nothing => {}
                Persist::Put { path, value } => {
                    records.insert(path.as_str(), value.as_slice())?;
                }
                Persist::Delete { path } => {
                    records.remove(path.as_str())?;
                }
            }
        }
        if let Some(c) = ceiling {
            txn.open_table(META)?.insert("revision_ceiling", c)?;
        }
    }
    txn.commit()?;
    Ok(Some(()))
}

impl Shared {
    fn now(&self) -> Millis {
        Millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// The new ceiling to persist if handing out `n` more revisions would pass the current one.
    fn ceiling_for(state: &State, n: usize) -> Option<u64> {
        let needed = state.engine.revision().0 + n as u64;
        (needed > state.ceiling).then_some(needed + REVISION_BLOCK)
    }

    /// Does `work` at once, with the state held throughout (an ephemeral write or a lease
    /// revocation: memory, and a rare ceiling bump); while a group commit is syncing it queues
    /// instead, and waits for its turn without holding a thread ([`Shared::queue`]).
    async fn now_or_queued(self: &Arc<Self>, work: Work) -> Answer {
        let work = {
            let mut state = self.state.lock();
            if !self.is_committing() {
                let (answer, _) = oneshot::channel();
                let mut answers = self.commit_group(&mut state, vec![Waiting { work, answer }], false);
                return answers.pop().map_or_else(|| Err(closed()), |(_, answer)| answer);
            }
            work
        };
        self.queue(work).await
    }

    fn is_committing(&self) -> bool {
        self.committing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `f` on the database. A database that failed a write (a full disk, an I/O error:
    /// redb refuses every later transaction then) is closed, and opened again before the
    /// next use ([`Shared::database`]), so the store takes writes again once the cause is
    /// gone, without a restart.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, redb::Error>) -> Result<T, StoreError> {
        let db = self.database()?;
        let result = f(db.as_ref().ok_or_else(closed)?);
        drop(db);
        result.map_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "the embedded store could not write; its file is opened again before the next use");
            // Each transaction is dropped when it fails: none of ours is open.
            self.db.write().take();
            self.resync.store(true, std::sync::atomic::Ordering::SeqCst);
            unavailable(e)
        })
    }

    /// The database, opened again first if a failed write closed it (`Unavailable` with the
    /// reason while it does not open).
    fn database(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        {
            let db = self.db.read();
            if db.is_some() {
                return Ok(db);
            }
        }
        let mut slot = self.db.write();
        if slot.is_none() {
            let db = self.file.open().map_err(|e| {
                StoreError::Unavailable(format!("{e} (opening {} again after a failed write)", self.path.display()))
            })?;
            tracing::info!(path = %self.path.display(), "the embedded store opened its file again");
            *slot = Some(db);
        }
        Ok(RwLockWriteGuard::downgrade(slot))
    }

    /// Queues `work` (a durable write, or what waits for a syncing group) and waits for its
    /// answer: the member that finds no commit running starts the task that leads them
    /// ([`Shared::lead_commits`]).
    async fn queue(self: &Arc<Self>, work: Work) -> Answer {
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut queue = self.group.queue.lock();
            queue.waiting.push(Waiting { work, answer });
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            let this = Arc::clone(self);
            // Its end is seen through the answers; a panic drops them (answered below).
            drop(tokio::task::spawn_blocking(move || Self::lead_commits(this)));
        }
        answered.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the write's commit was interrupted".into())))
    }

    /// Commits what is queued, group after group, until nothing is: each group in as few
    /// durable transactions as one write per key allows, the state let go while each syncs.
    /// A group's answers go out when the next group is taken, or, for the last one, once
    /// this task has let go of the store: a writer that drops its store once answered finds
    /// it closed (its file free to open again).
    fn lead_commits(shared: Arc<Self>) {
        let last = {
            let mut leading = Leading { shared: &shared, done: false };
            let mut answers = Answers::new();
            loop {
                let Some(members) = shared.take_queued() else { break };
                answer(std::mem::take(&mut answers));
                let mut state = shared.state.lock();
                answers = shared.commit_group(&mut state, members, true);
                // An expiry round the reaper put off while groups were syncing, if one is due.
                shared.expire_locked(&mut state);
            }
            leading.done = true;
            answers
        };
        drop(shared);
        answer(last);
    }

    /// What is queued, or `None` (and no commit running any more) if nothing is.
    fn take_queued(&self) -> Option<Vec<Waiting>> {
        let mut queue = self.group.queue.lock();
        if queue.waiting.is_empty() {
            queue.leading = false;
            None
        } else {
            Some(std::mem::take(&mut queue.waiting))
        }
    }

    /// Does `members` in order, the writes in as few durable transactions as one write per
    /// key per transaction allows (a revocation ends a transaction's writes and is applied in
    /// its place), and answers each. The state is held but while a transaction syncs when
    /// `let_go` (then `committing` is set: reads, lease keepalives and grants go on; what takes
    /// a revision queues, or, for an expiry round, is put off, until the group is applied).
    fn commit_group(&self, state: &mut MutexGuard<'_, State>, members: Vec<Waiting>, let_go: bool) -> Answers {
        let mut answers = Vec::with_capacity(members.len());
        let mut rest = members.into_iter().peekable();
        while rest.peek().is_some() {
            if self.resync.load(std::sync::atomic::Ordering::SeqCst)
                && let Err(e) = self.resync_disk(state)
            {
                answers.extend(rest.map(|w| (w.answer, Err(StoreError::Unavailable(e.to_string())))));
                break;
            }
            if let Some(Waiting { work: Work::Revoke(lease), .. }) = rest.peek() {
                let lease = *lease;
                let Some(w) = rest.next() else { break };
                let revoked = state.engine.lease_key_count(lease).map_err(StoreError::from).and_then(|attached| {
                    self.remove_leased(state, attached, |e| e.revoke_lease(lease).unwrap_or_default())
                });
                answers.push((w.answer, revoked));
                continue;
            }
            let now = self.now();
            let mut keys = std::collections::HashSet::new();
            let mut prepared: Vec<(oneshot::Sender<Answer>, Prepared)> = Vec::new();
            // Writes, up to the first revocation or the second write of a key.
            while let Some(w) = rest.next_if(|w| w.key().is_some_and(|k| !keys.contains(&k))) {
                let Work::Write { op, expect } = w.work else { unreachable!("next_if took a write") };
                let key = op.key();
                let checked = Self::check(state, &key, expect)
                    .and_then(|()| Ok(state.engine.prepare_in_group(now, op, prepared.len())?));
                keys.insert(key);
                match checked {
                    Ok(p) => prepared.push((w.answer, p)),
                    Err(e) => answers.push((w.answer, Err(e))),
                }
            }
            let ceiling = Self::ceiling_for(state, prepared.len());
            let sync = || self.with_db(|db| write_txn(db, prepared.iter().map(|(_, p)| p.persist()), ceiling));
            let written = if let_go {
                self.committing.store(true, std::sync::atomic::Ordering::SeqCst);
                MutexGuard::unlocked(state, sync)
            } else {
                sync()
            };
            match written {
                Ok(wrote) => {
                    if let Some(c) = ceiling {
                        state.ceiling = c;
                    }
                    if wrote.is_some() {
                        let mut queue = self.group.queue.lock();
                        queue.stats.commits += 1;
                        queue.stats.writes +=
                            prepared.iter().filter(|(_, p)| !matches!(p.persist(), Persist::Nothing)).count() as u64;
                    }
                    for (answer, p) in prepared {
                        let event = state.engine.commit(now, p);
                        answers.push((answer, Ok(event.revision)));
                        // No receivers is fine: nobody watches yet.
                        let _ = self.events.send(event);
                    }
                }
                Err(e) => {
                    answers.extend(prepared.into_iter().map(|(a, _)| (a, Err(StoreError::Unavailable(e.to_string())))));
                }
            }
            if let_go {
                self.end_committing();
            }
        }
        answers
    }

    /// Clears `committing`: revisions may be taken again.
    fn end_committing(&self) {
        self.committing.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// A conditional write's condition: `key` last written at `expect` (`Some(None)`: absent).
    fn check(state: &State, key: &RecordKey, expect: Option<Option<Revision>>) -> Result<(), StoreError> {
        let Some(expected) = expect else { return Ok(()) };
        let current = state.engine.get_with_revision(key).map(|(_, at)| at);
        if current == expected {
            Ok(())
        } else {
            Err(StoreError::Conflict { key: Box::new(key.clone()), expected, current })
        }
    }

    /// Makes the durable records on disk what memory holds (the acknowledged writes): a
    /// commit that failed may still have reached the disk, and its client was told it did
    /// not. Called with the state lock held, before the next write after a failed one.
    fn resync_disk(&self, state: &State) -> Result<(), StoreError> {
        let memory: std::collections::HashMap<String, Vec<u8>> = state
            .engine
            .snapshot(&Scope::All)
            .records
            .iter()
            .filter(|r| r.is_durable())
            .map(|r| (r.key().path(), r.to_value()))
            .collect();
        let fixed = self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut fixed = 0usize;
            {
                let mut table = txn.open_table(RECORDS)?;
                let mut on_disk = std::collections::HashSet::new();
                let mut stray = Vec::new();
                for item in table.iter()? {
                    let (k, v) = item?;
                    let path = k.value().to_owned();
                    if memory.get(&path).is_none_or(|m| m.as_slice() != v.value()) {
                        stray.push(path.clone());
                    }
                    on_disk.insert(path);
                }
                for path in stray {
                    fixed += 1;
                    match memory.get(&path) {
                        Some(value) => table.insert(path.as_str(), value.as_slice())?,
                        None => table.remove(path.as_str())?,
                    };
                }
                for (path, value) in memory.iter().filter(|(p, _)| !on_disk.contains(*p)) {
                    fixed += 1;
                    table.insert(path.as_str(), value.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(fixed)
        })?;
        self.resync.store(false, std::sync::atomic::Ordering::SeqCst);
        if fixed > 0 {
            tracing::warn!(path = %self.path.display(), records = fixed, "records on disk differed from the acknowledged ones after a failed write; written as acknowledged");
        }
        Ok(())
    }

    /// Removes what hangs on expired leases (or on `revoke`), reserving revisions first.
    fn remove_leased(
        &self,
        state: &mut State,
        removals: usize,
        take: impl FnOnce(&mut Engine) -> Vec<Event>,
    ) -> Result<Revision, StoreError> {
        if let Some(c) = Self::ceiling_for(state, removals) {
            self.with_db(|db| write_txn(db, [], Some(c)))?;
            state.ceiling = c;
        }
        for event in take(&mut state.engine) {
            let _ = self.events.send(event);
        }
        Ok(state.engine.revision())
    }

    /// The reaper's round: put off while a group syncs (expiring takes revisions, and the
    /// syncing group holds the next ones); the task leading the commits runs it after each
    /// group then, so expiry keeps up under a steady stream of durable writes.
    fn expire(&self) {
        let mut state = self.state.lock();
        if !self.is_committing() {
            self.expire_locked(&mut state);
        }
    }

    /// Removes the instances of the leases past their deadline, if any are.
    fn expire_locked(&self, state: &mut State) {
        let now = self.now();
        if state.engine.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let due = state.engine.due_removals(now);
        let before = state.engine.lease_count();
        match self.remove_leased(state, due, |e| e.expire(now)) {
            Ok(_) => {
                let expired = before - state.engine.lease_count();
                state.leases_expired += expired as u64;
                tracing::debug!(expired, removed = due, "leases expired");
            }
            Err(e) => tracing::error!(error = %e, "cannot reserve revisions for lease expiry; will retry"),
        }
    }
}

/// Held by the task leading the commits. Dropped before it is `done` only if a commit
/// panicked (a bug): then the writes still queued are answered (their channels dropped) and
/// the next write leads again, so nobody waits forever.
struct Leading<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.shared.group.queue.lock();
        queue.leading = false;
        queue.waiting.clear();
        drop(queue);
        self.shared.end_committing();
    }
}

async fn reap(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        shared.expire();
    }
}

impl Store for EmbeddedStore {
    async fn put(&self, record: Record, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        let op = Op::Put { record, lease };
        if matches!(&op, Op::Put { record, .. } if record.is_durable()) {
            self.shared.queue(Work::Write { op, expect: None }).await
        } else {
            // Ephemeral: memory only (plus a rare ceiling bump), no need to leave the thread,
            // unless a group commit is syncing.
            self.shared.now_or_queued(Work::Write { op, expect: None }).await
        }
    }

    async fn get(&self, key: RecordKey) -> Result<Option<(Record, Revision)>, StoreError> {
        let state = self.shared.state.lock();
        Ok(state.engine.get_with_revision(&key).map(|(r, at)| (r.clone(), at)))
    }

    async fn put_if(&self, record: Record, expected: Option<Revision>) -> Result<Revision, StoreError> {
        self.shared.queue(Work::Write { op: Op::Put { record, lease: None }, expect: Some(expected) }).await
    }

    async fn delete(&self, key: RecordKey) -> Result<Revision, StoreError> {
        self.shared.queue(Work::Write { op: Op::Delete { key }, expect: None }).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut state = self.shared.state.lock();
        let now = self.shared.now();
        loop {
            // 53 bits, so ids survive JSON clients that read numbers as doubles; never 0.
            let id = LeaseId((rand::random::<u64>() >> 11) | 1);
            match state.engine.grant_lease(now, id, ttl) {
                Err(sextant_core::CoreError::LeaseExists(_)) => {}
                other => return other.map(|()| id).map_err(StoreError::from),
            }
        }
    }

    async fn keepalive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let now = self.shared.now();
        Ok(self.shared.state.lock().engine.keepalive(now, lease)?)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<Revision, StoreError> {
        self.shared.now_or_queued(Work::Revoke(lease)).await
    }

    async fn list(&self, scope: Scope) -> Result<StoreSnapshot, StoreError> {
        Ok(self.shared.state.lock().engine.snapshot(&scope))
    }

    async fn watch(&self, scope: Scope, from: Revision) -> Result<WatchStream, StoreError> {
        let (initial, mut live) = {
            let state = self.shared.state.lock();
            (state.engine.watch_from(from, &scope), self.shared.events.subscribe())
        };
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            for event in initial {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let item = match live.recv().await {
                    Ok(event) if event.key().is_some_and(|k| scope.contains(&k)) => Ok(event),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => Err(StoreError::Lagged),
                    Err(broadcast::error::RecvError::Closed) => Err(StoreError::Closed),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn put_artifact(&self, bytes: Vec<u8>) -> Result<String, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let sha = sha256_hex(&bytes);
            shared.with_db(|db| {
                let txn = db.begin_write()?;
                {
                    let mut sizes = txn.open_table(ARTIFACT_SIZES)?;
                    if sizes.get(sha.as_str())?.is_some() {
                        return Ok(());
                    }
                    let mut chunks = txn.open_table(ARTIFACT_CHUNKS)?;
                    for (i, chunk) in (0u32..).zip(bytes.chunks(ARTIFACT_CHUNK)) {
                        chunks.insert((sha.as_str(), i), chunk)?;
                    }
                    sizes.insert(sha.as_str(), bytes.len() as u64)?;
                }
                Ok(txn.commit()?)
            })?;
            Ok(sha)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    async fn get_artifact(&self, sha256: String) -> Result<Option<Vec<u8>>, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let db = shared.database()?;
            let read = db.as_ref().ok_or_else(closed)?.begin_read().map_err(unavailable)?;
            let size =
                read.open_table(ARTIFACT_SIZES).map_err(unavailable)?.get(sha256.as_str()).map_err(unavailable)?;
            let bytes = if let Some(size) = size.map(|v| v.value()) {
                let chunks = read.open_table(ARTIFACT_CHUNKS).map_err(unavailable)?;
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                for i in 0..u32::try_from(size.div_ceil(ARTIFACT_CHUNK as u64)).unwrap_or(u32::MAX) {
                    let chunk = chunks
                        .get((sha256.as_str(), i))
                        .map_err(unavailable)?
                        .ok_or_else(|| StoreError::Unavailable(format!("component {sha256}: chunk {i} is missing")))?;
                    bytes.extend_from_slice(chunk.value());
                }
                bytes
            } else {
                let whole = read.open_table(ARTIFACTS).map_err(unavailable)?;
                match whole.get(sha256.as_str()).map_err(unavailable)? {
                    Some(v) => v.value().to_vec(),
                    None => return Ok(None),
                }
            };
            if sha256_hex(&bytes) != sha256 {
                return Err(StoreError::Unavailable(format!("component {sha256}: the stored bytes do not match it")));
            }
            Ok(Some(bytes))
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}
