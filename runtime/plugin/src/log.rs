//! What a plugin may write to the host's log through `host.log` (either contract version, and
//! the native [`Env::log`](sextant_builtins::Env::log)): each line cut at 1 KiB, and per
//! plugin (by name, shared by all its instances and versions on this host) a budget of lines
//! and bytes per second ([`HostConfig::log_lines_per_sec`](crate::HostConfig),
//! `log_bytes_per_sec`), a token bucket holding one second's worth. A line over the budget is
//! dropped and counted ([`LogDrops`], exported as `plugin_log_dropped_*`); the next line let
//! through is preceded by one line saying how many were dropped. stdout and stderr have their
//! own cap (`wasi.rs`).
//!
//! Without it, one plugin logging in `pick` wrote 852 MB to a gateway's log in 8 s.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;
use sextant_builtins::Level;

/// The longest line written; the rest is cut (at a character boundary).
pub(crate) const LINE_MAX: usize = 1024;

/// One plugin's log budget on this host.
#[derive(Debug)]
pub(crate) struct LogBudget {
    lines_per_sec: f64,
    bytes_per_sec: f64,
    bucket: Mutex<Bucket>,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    lines: f64,
    bytes: f64,
    at: Instant,
    /// Lines and bytes dropped since the last line let through.
    since: (u64, u64),
}

/// What a plugin's log budget dropped on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDrops {
    /// The plugin's name.
    pub plugin: String,
    /// Lines dropped.
    pub lines: u64,
    /// Bytes dropped.
    pub bytes: u64,
}

impl LogBudget {
    pub(crate) fn new(lines_per_sec: u32, bytes_per_sec: u32, now: Instant) -> Self {
        let (lines, bytes) = (f64::from(lines_per_sec), f64::from(bytes_per_sec));
        Self {
            lines_per_sec: lines,
            bytes_per_sec: bytes,
            bucket: Mutex::new(Bucket { lines, bytes, at: now, since: (0, 0) }),
            dropped_lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Whether a line of `len` bytes may be written at `now`: `Ok(dropped)` with what was
    /// dropped since the last line let through, or `Err(())` when it is over the budget (and
    /// then counted).
    pub(crate) fn admit(&self, len: usize, now: Instant) -> Result<(u64, u64), ()> {
        let mut b = self.bucket.lock();
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now.max(b.at);
        b.lines = (b.lines + elapsed * self.lines_per_sec).min(self.lines_per_sec);
        b.bytes = (b.bytes + elapsed * self.bytes_per_sec).min(self.bytes_per_sec);
        let size = len as f64;
        if b.lines >= 1.0 && b.bytes >= size {
            b.lines -= 1.0;
            b.bytes -= size;
            Ok(std::mem::take(&mut b.since))
        } else {
            b.since.0 += 1;
            b.since.1 += len as u64;
            drop(b);
            self.dropped_lines.fetch_add(1, Relaxed);
            self.dropped_bytes.fetch_add(len as u64, Relaxed);
            Err(())
        }
    }

    /// Writes `message` (cut at [`LINE_MAX`]) for `label` if the budget allows.
    pub(crate) fn write(&self, label: &str, level: Level, message: &str) {
        let mut end = message.len().min(LINE_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let Ok((lines, bytes)) = self.admit(message.len(), Instant::now()) else {
            return;
        };
        if lines > 0 {
            tracing::warn!(
                plugin = label,
                dropped_lines = lines,
                dropped_bytes = bytes,
                "the plugin logged past its budget; lines dropped"
            );
        }
        match level {
            Level::Trace => tracing::trace!(plugin = label, "{message}"),
            Level::Debug => tracing::debug!(plugin = label, "{message}"),
            Level::Info => tracing::info!(plugin = label, "{message}"),
            Level::Warn => tracing::warn!(plugin = label, "{message}"),
            Level::Error => tracing::error!(plugin = label, "{message}"),
        }
    }

    /// Lines and bytes dropped so far.
    pub(crate) fn dropped(&self) -> (u64, u64) {
        (self.dropped_lines.load(Relaxed), self.dropped_bytes.load(Relaxed))
    }
}

/// The plugin a store label names (`name` or `name#version`).
pub(crate) fn plugin_of(label: &str) -> &str {
    label.split_once('#').map_or(label, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The rates are per second.
    const WINDOW: Duration = Duration::from_secs(1);

    #[test]
    fn a_budget_lets_a_second_through_then_drops_and_counts() {
        let t0 = Instant::now();
        let b = LogBudget::new(10, 1000, t0);
        let passed = (0..100).filter(|_| b.admit(50, t0).is_ok()).count();
        assert_eq!(passed, 10, "ten lines a second, none refilled at the same instant");
        assert_eq!(b.dropped(), (90, 90 * 50));
        // Half a second refills five lines; the first says what was dropped before it.
        let t1 = t0 + WINDOW / 2;
        assert_eq!(b.admit(50, t1), Ok((90, 4500)));
        let more = (0..100).filter(|_| b.admit(50, t1).is_ok()).count();
        assert_eq!(more, 4);
    }

    #[test]
    fn bytes_bound_as_well_as_lines() {
        let t0 = Instant::now();
        let b = LogBudget::new(1000, 2048, t0);
        assert!(b.admit(1024, t0).is_ok());
        assert!(b.admit(1024, t0).is_ok());
        assert!(b.admit(1, t0).is_err(), "2 KiB a second");
        // A full second refills to the cap, not beyond it.
        let later = t0 + WINDOW * 10;
        assert!(b.admit(1024, later).is_ok());
        assert!(b.admit(1024, later).is_ok());
        assert!(b.admit(1024, later).is_err());
    }

    #[test]
    fn labels_name_their_plugin() {
        assert_eq!(plugin_of("rr#3"), "rr");
        assert_eq!(plugin_of("rr"), "rr");
    }
}
