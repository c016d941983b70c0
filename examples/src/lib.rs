//! Runnable examples live in `examples/`; this library is empty.
#![forbid(unsafe_code)]
