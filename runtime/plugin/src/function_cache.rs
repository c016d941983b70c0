//! Machine code of compiled functions, kept by what they compile from, so a component that
//! repeats another's functions compiles only what differs.
//!
//! A component built by componentize-py or componentize-js carries a whole interpreter
//! (CPython, SpiderMonkey): two versions of one Python plugin, or two plugins in one language,
//! share nearly every function, and compiling those is most of a load (seconds for each
//! such component). Cranelift's incremental cache asks this store for a function's code by a
//! key it derives from the function's IR, the target and the compiler's settings, and
//! compiles only on a miss; the code it finds is relocated for the component at hand, so a
//! hit gives the same machine code a compile would.
//!
//! The store is bounded in bytes: it forgets the oldest entries first. A hit costs a copy of
//! the entry (Cranelift takes the bytes by value).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use wasmtime::CacheStore;

/// What the function cache did since the host started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionCacheStats {
    /// Functions whose code was found (not compiled).
    pub hits: u64,
    /// Functions compiled (and kept, when they fit).
    pub misses: u64,
    /// Bytes held now (keys and code).
    pub bytes: u64,
    /// Entries held now.
    pub entries: u64,
}

#[derive(Default)]
struct Entries {
    code: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys, oldest first.
    order: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// Cranelift's incremental compilation store, in memory, at most `limit` bytes.
pub(crate) struct FunctionCache {
    entries: Mutex<Entries>,
    limit: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCache").field("limit", &self.limit).field("stats", &self.stats()).finish()
    }
}

impl FunctionCache {
    pub(crate) fn new(limit: usize) -> Self {
        Self { entries: Mutex::new(Entries::default()), limit, hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    pub(crate) fn stats(&self) -> FunctionCacheStats {
        let entries = self.entries.lock();
        FunctionCacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            bytes: entries.bytes as u64,
            entries: entries.code.len() as u64,
        }
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.entries.lock().code.get(key).cloned();
        match &found {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if size > self.limit {
            return false;
        }
        let mut entries = self.entries.lock();
        let entries = &mut *entries;
        if entries.code.contains_key(key) {
            return true;
        }
        while entries.bytes + size > self.limit {
            let Some(old) = entries.order.pop_front() else { break };
            if let Some(code) = entries.code.remove(&old) {
                entries.bytes -= old.len() + code.len();
            }
        }
        entries.bytes += size;
        entries.order.push_back(key.to_vec());
        entries.code.insert(key.to_vec(), value);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_fits_and_forgets_the_oldest_first() {
        let cache = FunctionCache::new(100);
        assert!(cache.insert(b"a", vec![0; 39]));
        assert!(cache.insert(b"b", vec![1; 39]));
        assert_eq!(cache.get(b"a").as_deref(), Some(&[0; 39][..]));
        assert_eq!(cache.stats().bytes, 80);
        // A third does not fit beside both: the oldest goes.
        assert!(cache.insert(b"c", vec![2; 39]));
        assert!(cache.get(b"a").is_none());
        assert_eq!(cache.get(b"b").as_deref(), Some(&[1; 39][..]));
        assert_eq!(cache.get(b"c").as_deref(), Some(&[2; 39][..]));
        // Larger than the whole store: refused, nothing forgotten.
        assert!(!cache.insert(b"d", vec![3; 100]));
        assert_eq!(cache.stats(), FunctionCacheStats { hits: 3, misses: 1, bytes: 80, entries: 2 });
        // The same key again changes nothing.
        assert!(cache.insert(b"b", vec![9; 39]));
        assert_eq!(cache.get(b"b").as_deref(), Some(&[1; 39][..]));
        assert_eq!(cache.stats().bytes, 80);
    }
}
