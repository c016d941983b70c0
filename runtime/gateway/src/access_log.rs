//! The gateway's structured access log: one JSON line per request (time, client, method,
//! host, path, status, duration) with its [`Explanation`] (route, service, attempts, the
//! endpoints left out and why).
//!
//! Lines are handed to a writer thread through a bounded queue, so no request waits on the
//! disk: when the queue is full a line is dropped and counted, and the writer says how many
//! it lost in a line of its own (`{"ts_ms": …, "dropped": N}`) once it catches up. The
//! query string is never logged (it may carry secrets).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use serde::Serialize;

use crate::explain::Explanation;

/// Lines waiting for the writer at most.
pub const QUEUE: usize = 16_384;

/// One request as the access log records it.
#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    /// When it was answered, Unix ms.
    pub ts_ms: u64,
    /// The client's address.
    pub client: String,
    /// The method.
    pub method: &'a str,
    /// The `Host` header, if any.
    pub host: Option<&'a str>,
    /// The path (without the query string).
    pub path: &'a str,
    /// The status answered.
    pub status: u16,
    /// From the request's head to the response's head, ms.
    pub duration_ms: f64,
    /// What the gateway did with it (none: no route matched).
    #[serde(flatten)]
    pub why: Option<&'a Explanation>,
}

/// A running access log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    lines: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

/// Unix time in ms.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl AccessLog {
    /// Appends to the file at `path` (created if missing); `-` is standard output.
    ///
    /// # Errors
    /// The file cannot be opened, or the writer thread not started.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        Self::to_writer(out)
    }

    /// Writes to `out` (buffered; flushed whenever the queue runs empty).
    ///
    /// # Errors
    /// The writer thread could not be started.
    pub fn to_writer(out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let (lines, queue) = std::sync::mpsc::sync_channel(QUEUE);
        let (dropped, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (lost, done) = (Arc::clone(&dropped), Arc::clone(&written));
        std::thread::Builder::new()
            .name("sextant-access-log".into())
            .spawn(move || write_lines(&queue, out, &lost, &done))?;
        Ok(Self { lines, dropped, written })
    }

    /// Queues `entry`; dropped (and counted) when the queue is full.
    pub fn record(&self, entry: &AccessEntry<'_>) {
        let Ok(line) = serde_json::to_string(entry) else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.lines.try_send(line) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Lines dropped since start (the queue was full, or the file failed).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Lines written since start.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    /// Now, as an entry's `ts_ms`.
    #[must_use]
    pub fn now_ms() -> u64 {
        unix_ms()
    }
}

/// The writer thread: lines in order, a flush whenever the queue runs empty, and a line
/// saying how many were dropped since the last one that did.
fn write_lines(queue: &Receiver<String>, out: Box<dyn Write + Send>, dropped: &AtomicU64, written: &AtomicU64) {
    let mut out = std::io::BufWriter::new(out);
    let mut reported = 0u64;
    let mut failed = false;
    while let Ok(first) = queue.recv() {
        let mut line = Some(first);
        while let Some(l) = line.take().or_else(|| queue.try_recv().ok()) {
            if writeln!(out, "{l}").is_ok() {
                written.fetch_add(1, Relaxed);
            } else {
                dropped.fetch_add(1, Relaxed);
                failed = true;
            }
        }
        let lost = dropped.load(Relaxed);
        if lost > reported {
            let _ = writeln!(out, "{}", serde_json::json!({"ts_ms": unix_ms(), "dropped": lost - reported}));
            reported = lost;
        }
        if out.flush().is_err() && !failed {
            failed = true;
        }
        if failed {
            tracing::warn!("the access log cannot be written; lines are dropped");
            failed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_request_is_one_json_line_with_its_explanation() {
        let out = Shared::default();
        let log = AccessLog::to_writer(Box::new(out.clone())).unwrap();
        let mut why = Explanation::new("/api", "shop/web/orders");
        why.refused = Some("no endpoint".into());
        for status in [200, 503] {
            log.record(&AccessEntry {
                ts_ms: 1,
                client: "127.0.0.1".into(),
                method: "GET",
                host: Some("shop.example"),
                path: "/api/x",
                status,
                duration_ms: 0.5,
                why: (status == 503).then_some(&why),
            });
        }
        // Flushed once the queue ran empty.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let text = String::from_utf8(out.0.lock().clone()).unwrap();
            if text.lines().count() >= 2 {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "the writer wrote {text:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["status"], 200);
        assert!(lines[0].get("service").is_none());
        assert_eq!(lines[1]["service"], "shop/web/orders");
        assert_eq!(lines[1]["refused"], "no endpoint");
        assert_eq!(log.dropped(), 0);
    }
}
