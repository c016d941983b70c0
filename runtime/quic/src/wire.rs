//! Frames over quinn streams.

use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sextant_proto::{FrameDecoder, FrameError, encode};

/// Why a stream could not carry a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// More than one frame, or bytes after the frame, where one request was expected.
    #[error("expected exactly one frame on the request stream")]
    TrailingData,
    /// The stream or connection failed while reading.
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream or connection failed while writing.
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Reads the single frame a request stream holds (the client finishes the stream after it)
/// and returns its payload. A length over the limit fails as soon as its 4 bytes are in;
/// bytes after the frame, or an end inside it, fail too.
pub async fn read_payload(recv: &mut RecvStream) -> Result<Vec<u8>, WireError> {
    let stream = WireError::Read;
    let mut decoder = FrameDecoder::new();
    let mut received = 0;
    let payload = loop {
        if let Some(payload) = decoder.payload()? {
            break payload;
        }
        // Never more than the frame still needs, so the prefix is checked once it is in.
        let want = decoder.wanted()?.max(1);
        match recv.read_chunk(want, true).await.map_err(stream)? {
            Some(chunk) => {
                received += chunk.bytes.len();
                decoder.push(&chunk.bytes);
            }
            None => return Err(FrameError::Truncated { buffered: received }.into()),
        }
    };
    match recv.read_chunk(1, true).await.map_err(stream)? {
        None => Ok(payload),
        Some(_) => Err(WireError::TrailingData),
    }
}

/// Reads a request stream's single frame and decodes it as `T`.
pub async fn read_one<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, WireError> {
    let payload = read_payload(recv).await?;
    Ok(serde_json::from_slice(&payload).map_err(FrameError::from)?)
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
        self.next_with(|payload| serde_json::from_slice(payload)).await
    }

    /// The next frame, decoded from its payload by `decode`; `None` at a clean end of stream.
    pub async fn next_with<T>(
        &mut self,
        mut decode: impl FnMut(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<Option<T>, WireError> {
        loop {
            if let Some(message) = self.decoder.decode_with(&mut decode)? {
                return Ok(Some(message));
            }
            // Never more than the frame still needs, so nothing past it is consumed; the
            // chunk is quinn's own buffer, not a copy into a scratch one.
            let want = self.decoder.wanted()?.max(1);
            match self.recv.read_chunk(want, true).await.map_err(WireError::Read)? {
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
    send.write_all(&frame).await.map_err(WireError::Write)
}
