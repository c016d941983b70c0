//! Framing: each frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
//!
//! A frame longer than [`MAX_FRAME_LEN`] is refused before it is buffered, so a peer cannot
//! make the decoder allocate without bound.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame payload accepted: 4 MiB (a 1 MiB config entry or snapshot pages fit).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// What is wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes left over.
        buffered: usize,
    },
    /// The payload is not JSON of a known message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Encodes `message` as one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(message)?;
    if json.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: json.len(), max: MAX_FRAME_LEN });
    }
    let mut out = Vec::with_capacity(4 + json.len());
    // Fits: checked against MAX_FRAME_LEN (< 2^32) above.
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Reassembles frames from bytes as they arrive.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder with the default limit.
    #[must_use]
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder refusing frames over `max` bytes.
    #[must_use]
    pub fn with_limit(max: usize) -> Self {
        Self { buf: Vec::new(), max }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// How many more bytes the next frame needs (at least 1 when incomplete, 0 when one is
    /// ready), so a reader never reads past a frame or buffers more than the limit.
    pub fn wanted(&self) -> Result<usize, FrameError> {
        match self.announced()? {
            None => Ok(4 - self.buf.len()),
            Some(len) => Ok((4 + len).saturating_sub(self.buf.len())),
        }
    }

    fn announced(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        Ok(Some(len))
    }

    /// The next complete frame decoded as `T`, or `None` if more bytes are needed.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.decode_with(|payload| serde_json::from_slice(payload))
    }

    /// The next complete frame decoded by `decode` from its payload (a caller that can answer
    /// some payloads without parsing them, such as a cache of the last one, passes its own), or
    /// `None` if more bytes are needed. The frame is consumed either way.
    pub fn decode_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<Option<T>, FrameError> {
        Ok(self.take(decode)?.transpose()?)
    }

    /// The payload of the next complete frame, undecoded, or `None` if more bytes are needed.
    pub fn payload(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        self.take(<[u8]>::to_vec)
    }

    /// Applies `f` to the next complete frame's payload and consumes the frame.
    fn take<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, FrameError> {
        let Some(len) = self.announced()? else { return Ok(None) };
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let out = f(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        Ok(Some(out))
    }

    /// Checks, at the end of a stream, that no partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() { Ok(()) } else { Err(FrameError::Truncated { buffered: self.buf.len() }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let msgs = vec![Request::Ping { nonce: 7 }, Request::Ping { nonce: 8 }];
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut d = FrameDecoder::new();
        let mut out = vec![];
        for b in bytes {
            assert!(d.wanted().unwrap() >= 1);
            d.push(&[b]);
            while let Some(m) = d.decode::<Request>().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
        d.finish().unwrap();
    }

    #[test]
    fn oversized_frames_are_refused_from_the_prefix() {
        let mut d = FrameDecoder::with_limit(16);
        d.push(&17u32.to_be_bytes());
        assert!(matches!(d.decode::<Request>(), Err(FrameError::TooLarge { len: 17, max: 16 })));
        assert!(matches!(d.wanted(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn malformed_truncated_and_unknown_frames_are_errors() {
        let mut d = FrameDecoder::new();
        d.push(&3u32.to_be_bytes());
        d.push(b"{x}");
        assert!(matches!(d.decode::<Request>(), Err(FrameError::Malformed(_))));
        let mut d = FrameDecoder::new();
        let unknown = br#"{"type":"launch_missiles"}"#;
        d.push(&u32::try_from(unknown.len()).unwrap().to_be_bytes());
        d.push(unknown);
        assert!(matches!(d.decode::<Request>(), Err(FrameError::Malformed(_))));
        let mut d = FrameDecoder::new();
        d.push(&encode(&Response::Pong { nonce: 1 }).unwrap()[..6]);
        assert!(d.decode::<Response>().unwrap().is_none());
        assert!(matches!(d.finish(), Err(FrameError::Truncated { buffered: 6 })));
    }
}
