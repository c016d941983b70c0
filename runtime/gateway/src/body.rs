//! A response body that finishes its pick when the response really ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use crate::guard::PickGuard;
use crate::outcome::Outcome;

/// Wraps an upstream response body so the pick is finished when the body ends, not at the
/// response's headers: the latency a balancer weighs is then the whole response's.
///
/// - the body's end: the guard finishes with the outcome given (the response's status,
///   usually [`Outcome::from_response`]), the latency measured up to that moment;
/// - a body error: it finishes as a failure ([`Outcome::Failed`]);
/// - dropped before its end (the client went away): the guard is dropped unfinished, which
///   releases its in-flight place and records nothing.
#[derive(Debug)]
pub struct FinishOnEnd<B> {
    inner: B,
    guard: Option<PickGuard>,
    outcome: Option<Outcome>,
}

impl<B> FinishOnEnd<B> {
    /// `inner`, finishing `guard` with `outcome` at its end.
    #[must_use]
    pub fn new(inner: B, guard: PickGuard, outcome: Outcome) -> Self {
        Self { inner, guard: Some(guard), outcome: Some(outcome) }
    }

    fn finish(&mut self, failure: Option<Outcome>) {
        if let Some(guard) = self.guard.take() {
            guard.finish(failure.or_else(|| self.outcome.take()).unwrap_or(Outcome::Success));
        }
    }
}

impl<B: Body + Unpin> Body for FinishOnEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(None),
            Poll::Ready(Some(Err(_))) => this.finish(Some(Outcome::Failed("the response body failed".into()))),
            // A body that knows it has ended may not be polled again.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(None),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
