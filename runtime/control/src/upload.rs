//! Components sent in chunks (`plugin_upload`) and held in memory until a `plugin_load` names
//! them by sha256: how a component larger than a frame reaches the server.
//!
//! Uploads are held by the server, not by a connection: a client that reconnects resumes at
//! the `received` count of its last answer. Bounded: at most [`HELD`] bytes over every upload in
//! progress, and an upload that gets no chunk for [`IDLE`] is dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sextant_proto::{ErrorCode, MAX_COMPONENT_LEN};

/// Bytes held over every upload in progress or complete and not loaded yet.
pub(crate) const HELD: usize = 2 * MAX_COMPONENT_LEN;
/// An upload without a chunk for this long is dropped.
pub(crate) const IDLE: Duration = Duration::from_secs(120);

struct Staged {
    size: usize,
    bytes: Vec<u8>,
    touched: Instant,
}

/// The uploads a server holds, by sha256.
#[derive(Default)]
pub(crate) struct Uploads {
    staged: Mutex<HashMap<String, Staged>>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads").field("uploads", &self.staged.lock().len()).finish()
    }
}

/// Why a chunk was refused: the answer's code and message. Nothing changed.
pub(crate) type Refusal = (ErrorCode, String);

fn invalid(message: String) -> Refusal {
    (ErrorCode::Invalid, message)
}

impl Uploads {
    /// Adds a chunk; answers how many bytes of the component the server holds (from 0,
    /// without gaps). The last byte checks the whole against `sha256`: a mismatch drops the
    /// upload.
    pub(crate) fn chunk(&self, sha256: &str, size: u64, offset: u64, data: &[u8]) -> Result<u64, Refusal> {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size == 0 || size > MAX_COMPONENT_LEN {
            return Err(invalid(format!("a component is 1 to {MAX_COMPONENT_LEN} bytes, not {size}")));
        }
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = offset.saturating_add(data.len());
        if end > size {
            return Err(invalid(format!("the chunk ends at byte {end}, past the component's {size} bytes")));
        }
        let now = Instant::now();
        let mut staged = self.staged.lock();
        staged.retain(|_, s| now.duration_since(s.touched) < IDLE);
        let held: usize = staged.iter().filter(|(k, _)| k.as_str() != sha256).map(|(_, s)| s.size).sum();
        let upload = match staged.get_mut(sha256) {
            Some(s) if s.size != size => {
                return Err(invalid(format!(
                    "the upload of {sha256} was started with size {}, this chunk says {size}",
                    s.size
                )));
            }
            Some(s) => s,
            None if offset != 0 => {
                return Err(invalid(format!(
                    "no upload of {sha256} is in progress (or it was idle {} s and dropped): start at offset 0",
                    IDLE.as_secs()
                )));
            }
            None if held + size > HELD => {
                return Err((
                    ErrorCode::Limited,
                    format!("uploads in progress hold {held} bytes; {size} more would pass the limit of {HELD}"),
                ));
            }
            None => staged.entry(sha256.to_owned()).or_insert(Staged { size, bytes: Vec::new(), touched: now }),
        };
        let received = upload.bytes.len();
        if offset > received {
            return Err(invalid(format!(
                "the chunk starts at byte {offset} but {received} bytes of {sha256} were received: a chunk is missing"
            )));
        }
        // A chunk resent (the answer was lost): the bytes already held must be the same.
        let overlap = received.min(end);
        if upload.bytes[offset..overlap] != data[..overlap - offset] {
            return Err(invalid(format!(
                "the chunk at byte {offset} differs from the bytes of {sha256} already received"
            )));
        }
        upload.bytes.extend_from_slice(&data[overlap - offset..]);
        upload.touched = now;
        let received = upload.bytes.len();
        if received == size {
            let actual = sextant_core::sha256_hex(&upload.bytes);
            if actual != sha256 {
                staged.remove(sha256);
                return Err(invalid(format!(
                    "the {size} bytes uploaded hash to {actual}, not {sha256}: the upload is dropped, nothing stored"
                )));
            }
        }
        Ok(received as u64)
    }

    /// The complete upload of `sha256`, taken out; `Ok(None)` when there is none; `Err` while
    /// it is incomplete.
    pub(crate) fn take(&self, sha256: &str) -> Result<Option<Vec<u8>>, String> {
        let mut staged = self.staged.lock();
        match staged.get(sha256) {
            None => Ok(None),
            Some(s) if s.bytes.len() < s.size => {
                Err(format!("the upload of {sha256} is incomplete: {} of {} bytes received", s.bytes.len(), s.size))
            }
            Some(_) => Ok(staged.remove(sha256).map(|s| s.bytes)),
        }
    }

    /// The complete upload of `sha256` goes back (its load failed before storing it), so a
    /// corrected `plugin_load` can name it again without sending it again.
    pub(crate) fn put_back(&self, sha256: &str, bytes: Vec<u8>) {
        let size = bytes.len();
        self.staged.lock().insert(sha256.to_owned(), Staged { size, bytes, touched: Instant::now() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(n: usize) -> (Vec<u8>, String) {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let sha = sextant_core::sha256_hex(&bytes);
        (bytes, sha)
    }

    #[test]
    fn chunks_in_order_complete_an_upload_that_load_takes_once() {
        let u = Uploads::default();
        let (bytes, sha) = component(2500);
        let size = bytes.len() as u64;
        assert_eq!(u.chunk(&sha, size, 0, &bytes[..1000]).unwrap(), 1000);
        assert!(u.take(&sha).unwrap_err().contains("1000 of 2500"), "incomplete: not loadable");
        // A resent chunk (same bytes) is accepted and changes nothing.
        assert_eq!(u.chunk(&sha, size, 0, &bytes[..1000]).unwrap(), 1000);
        // Overlapping the end of what was received.
        assert_eq!(u.chunk(&sha, size, 500, &bytes[500..2000]).unwrap(), 2000);
        assert_eq!(u.chunk(&sha, size, 2000, &bytes[2000..]).unwrap(), 2500);
        assert_eq!(u.take(&sha).unwrap().unwrap(), bytes);
        assert_eq!(u.take(&sha).unwrap(), None, "taken once");
    }

    #[test]
    fn bad_chunks_are_refused_naming_what_is_wrong_and_change_nothing() {
        let u = Uploads::default();
        let (bytes, sha) = component(3000);
        let size = bytes.len() as u64;
        let msg = |r: Result<u64, Refusal>| r.unwrap_err().1;
        assert!(msg(u.chunk(&sha, size, 1000, &bytes[1000..2000])).contains("start at offset 0"));
        u.chunk(&sha, size, 0, &bytes[..1000]).unwrap();
        // Out of order: a gap.
        assert!(msg(u.chunk(&sha, size, 2000, &bytes[2000..])).contains("a chunk is missing"));
        // Different bytes where some were received.
        let mut other = bytes[..1000].to_vec();
        other[10] ^= 1;
        assert!(msg(u.chunk(&sha, size, 0, &other)).contains("differs"));
        // Another size for the same upload, past the end, over the limit.
        assert!(msg(u.chunk(&sha, size + 1, 1000, &bytes[1000..2000])).contains("started with size 3000"));
        assert!(msg(u.chunk(&sha, size, 2500, &bytes[1000..2000])).contains("past the component"));
        assert!(msg(u.chunk(&sha, MAX_COMPONENT_LEN as u64 + 1, 0, &bytes)).contains("1 to"));
        // None of that changed the upload.
        assert_eq!(u.chunk(&sha, size, 1000, &bytes[1000..]).unwrap(), 3000);
        assert_eq!(u.take(&sha).unwrap().unwrap(), bytes);
    }

    #[test]
    fn a_sha256_mismatch_drops_the_upload() {
        let u = Uploads::default();
        let (bytes, _) = component(100);
        let wrong = sextant_core::sha256_hex(b"something else");
        let (code, message) = u.chunk(&wrong, 100, 0, &bytes).unwrap_err();
        assert_eq!(code, ErrorCode::Invalid);
        assert!(message.contains("hash to") && message.contains("nothing stored"), "{message}");
        assert_eq!(u.take(&wrong).unwrap(), None);
    }

    #[test]
    fn uploads_together_hold_at_most_the_limit() {
        let u = Uploads::default();
        let first = sextant_core::sha256_hex(b"a");
        let second = sextant_core::sha256_hex(b"b");
        let third = sextant_core::sha256_hex(b"c");
        u.chunk(&first, MAX_COMPONENT_LEN as u64, 0, b"x").unwrap();
        u.chunk(&second, MAX_COMPONENT_LEN as u64, 0, b"y").unwrap();
        let (code, message) = u.chunk(&third, 10, 0, b"z").unwrap_err();
        assert_eq!(code, ErrorCode::Limited);
        assert!(message.contains("limit"), "{message}");
    }
}
