//! Frames over quinn streams.

use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sextant_proto::{FrameDecoder, FrameError, MAX_FRAME_LEN, encode};

/// Why a stream could not carry a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// More than one frame, or bytes after the frame, where one request was expected.
    #[error("expected exactly one frame on the request stream")]
    TrailingData,
    /// The peer sent more than a frame can hold.
    #[error("request stream exceeds {MAX_FRAME_LEN} bytes")]
    TooLong,
    /// The stream or connection failed.
    #[error("stream: {0}")]
    Stream(String),
}

/// Reads a whole request stream (the client finishes it after one frame) and decodes the
/// single frame it must hold.
pub async fn read_one<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, WireError> {
    let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.map_err(|e| match e {
        quinn::ReadToEndError::TooLong => WireError::TooLong,
        quinn::ReadToEndError::Read(e) => WireError::Stream(e.to_string()),
    })?;
    let mut decoder = FrameDecoder::new();
    decoder.push(&bytes);
    let Some(message) = decoder.decode()? else {
        return Err(FrameError::Truncated { buffered: bytes.len() }.into());
    };
    decoder.finish().map_err(|_| WireError::TrailingData)?;
    Ok(message)
}

/// Reads frames one at a time from a long-lived stream (subscriptions).
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Wraps `recv`.
    #[must_use]
    pub fn new(recv: RecvStream) -> Self {
        Self { recv, decoder: FrameDecoder::new() }
    }

    /// The next frame; `None` at a clean end of stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        loop {
            if let Some(message) = self.decoder.decode()? {
                return Ok(Some(message));
            }
            // Never more than the frame still needs, so nothing past it is consumed; the
            // chunk is quinn's own buffer, not a copy into a scratch one.
            let want = self.decoder.wanted()?.max(1);
            match self.recv.read_chunk(want, true).await.map_err(|e| WireError::Stream(e.to_string()))? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// Writes one frame.
pub async fn write<T: Serialize>(send: &mut SendStream, message: &T) -> Result<(), WireError> {
    let frame = encode(message)?;
    send.write_all(&frame).await.map_err(|e| WireError::Stream(e.to_string()))
}
