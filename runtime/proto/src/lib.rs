//! # sextant-proto: the discovery protocol, without IO
//!
//! Owns everything about the wire that does not need a socket (the quinn-proto way):
//! - [`frame`]: length-prefixed JSON frames with a maximum size, decoded incrementally;
//! - [`message`]: every request and response, the protocol version, error codes;
//! - [`acl`]: tokens with per-namespace read / write / admin rights;
//! - [`server`]: a connection's server-side session (handshake, authorization, the
//!   connection-bound lease), turning frames into commands for the registry;
//! - [`client`]: a client's session (what to re-register and re-subscribe after a reconnect,
//!   the local view per subscription, empty-push protection).
//!
//! Does not own: QUIC, TLS, tasks and timers (`sextant-quic`), the registry (`sextant-store`).
//! `docs/protocol.md` is the specification; this crate is its reference implementation.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod acl;
pub mod client;
pub mod frame;
pub mod message;
pub mod server;

pub use frame::{FrameDecoder, FrameError, MAX_FRAME_LEN, encode};
pub use message::{
    ALPN, ARTIFACT_CHUNK, Binding, BindingSummary, ErrorCode, FailedGroup, FaultDecision, GATEWAY_METRICS_KEY,
    HostReport, IgnoredFault, MAX_COMPONENT_LEN, MAX_INLINE_COMPONENT_LEN, MAX_TRIED, PLUGIN_REPORT_PREFIX,
    PROTOCOL_VERSION, PluginFailure, REQUEST_TYPES, ROLLOUT_REPORT_PREFIX, Request, RequestError, ResetAssembler,
    Response, RolloutAction, RolloutHostReport, SlotView, SubscriptionFrame, Validation, decode_chunk,
    decode_component, encode_component, event_frames, host_reports, rollout_reports, upload_chunk,
};
