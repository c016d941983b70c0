//! A connection's subscriptions, served by one task.
//!
//! Every `subscribe` stream of a connection joins its connection's feed: one registry
//! [`Feed`] (one live receiver), one task. A change is matched against every member's scope
//! and written to every matching stream in one pass, so it wakes one task per connection, not
//! one per subscription, and quinn sends the connection's frames in full packets after the
//! pass instead of one packet per stream (what one task per subscription led to on a
//! multi-threaded runtime: the connection driver ran between the writes).
//!
//! A member that said who reads ([`Reader`]) is sent config entries with a candidate as the
//! version meant for it: such an event is encoded for that member alone.
//!
//! Writes never wait: each member keeps a queue of frames (shared `Arc`s; a `Reset` is its
//! own, in `reset_chunk` frames when it does not fit one) written as its stream accepts them. A member whose queue is full (a client that does
//! not read) stops taking events and, once its queue has drained, catches up from the
//! revision it had reached: the missed events of its scope, or a `Reset` if the history no
//! longer holds them. Nothing is skipped and nothing is sent twice.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use parking_lot::Mutex;
use quinn::SendStream;
use sextant_core::store::Store;
use sextant_core::{Change, Event, Reader, Revision, Scope};
use sextant_proto::Response;
use sextant_store::{Feed, Registry};
use tokio::sync::mpsc;

/// Frames, and bytes, a member may have waiting before it stops taking events and catches
/// up later.
const MAX_QUEUED: usize = 256;
const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// The `event` frame of the last change, encoded once for every subscriber of every
/// connection (a `Reset` is particular to its member's scope and is not shared).
#[derive(Debug, Default)]
pub(crate) struct FrameCache {
    last: Mutex<Option<(Revision, Arc<[u8]>)>>,
}

impl FrameCache {
    fn frame(&self, event: &Event) -> Option<Arc<[u8]>> {
        if let Some((r, frame)) = self.last.lock().as_ref()
            && *r == event.revision
        {
            return Some(frame.clone());
        }
        let frame = encode(event)?;
        *self.last.lock() = Some((event.revision, frame.clone()));
        Some(frame)
    }
}

enum Command {
    Join { id: u64, scope: Scope, from: Revision, reader: Option<Reader>, send: SendStream },
    Stopped(u64),
}

/// The handle a connection keeps; the feed task ends once it is dropped and every member's
/// stop watcher has reported.
#[derive(Debug)]
pub(crate) struct FeedHandle {
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Join { id, scope, from, reader, .. } => write!(f, "Join({id}, {scope:?}, {from}, {reader:?})"),
            Self::Stopped(id) => write!(f, "Stopped({id})"),
        }
    }
}

impl FeedHandle {
    /// Starts the feed task of one connection.
    pub(crate) fn start<S: Store + Clone>(registry: &Registry<S>, frames: Arc<FrameCache>) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let feed = registry.feed();
        let position = feed.position();
        let state = State { feed, frames, members: Vec::new(), position };
        tokio::spawn(run(state, rx));
        Self { commands, next_id: AtomicU64::new(0) }
    }

    /// Serves `scope` from `from` on `send`, as `reader` is served it, until the client stops
    /// the stream or the connection ends; `held` (the connection's watch place) is kept until
    /// then.
    pub(crate) fn join(
        &self,
        scope: Scope,
        from: Revision,
        reader: Option<Reader>,
        send: SendStream,
        held: impl Send + 'static,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Told when the client stops the stream (or the connection goes) even if nothing is
        // written to it again. Sent after the join, on the same channel, so never before it.
        let stopped = send.stopped();
        let _ = self.commands.send(Command::Join { id, scope, from, reader, send });
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let _ = stopped.await;
            let _ = commands.send(Command::Stopped(id));
            drop(held);
        });
    }
}

struct Member {
    id: u64,
    scope: Scope,
    /// Who reads: config entries with a candidate are tailored to it.
    reader: Option<Reader>,
    send: SendStream,
    queue: VecDeque<Arc<[u8]>>,
    /// Bytes in `queue`.
    queued: usize,
    /// Bytes of the front frame already written.
    written: usize,
    /// `Some(revision)`: not taking events (just joined, or its queue filled up); catches up
    /// from `revision` once its queue is empty.
    behind: Option<Revision>,
}

impl Member {
    /// `event` as this member is served it: `None` when it reads the same for everyone.
    fn own(&self, event: &Event) -> Option<Event> {
        self.reader.as_ref().and_then(|reader| event.for_reader(reader))
    }

    /// Queues `frame`, or, when the queue is full, stops taking events: the member has
    /// everything up to `reached` and catches up from there later.
    fn push(&mut self, frame: Arc<[u8]>, reached: Revision) {
        let full = self.queue.len() >= MAX_QUEUED || self.queued + frame.len() > MAX_QUEUED_BYTES;
        if full && !self.queue.is_empty() {
            self.behind = Some(reached);
        } else {
            self.queue_frame(frame);
        }
    }

    /// Queues the frames of one event (a `Reset` in chunks) whole, or none of them, as
    /// [`Member::push`] does for one.
    fn push_all(&mut self, frames: Vec<Arc<[u8]>>, reached: Revision) {
        let len: usize = frames.iter().map(|f| f.len()).sum();
        let full = self.queue.len() >= MAX_QUEUED || self.queued + len > MAX_QUEUED_BYTES;
        if full && !self.queue.is_empty() {
            self.behind = Some(reached);
        } else {
            for frame in frames {
                self.queue_frame(frame);
            }
        }
    }

    fn queue_frame(&mut self, frame: Arc<[u8]>) {
        self.queued += frame.len();
        self.queue.push_back(frame);
    }

    /// Writes what the stream accepts now; `false` if the stream is gone.
    fn flush(&mut self, cx: &mut Context<'_>) -> bool {
        while let Some(frame) = self.queue.front() {
            match Pin::new(&mut self.send).poll_write(cx, &frame[self.written..]) {
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    if self.written == frame.len() {
                        self.queued -= frame.len();
                        self.queue.pop_front();
                        self.written = 0;
                    }
                }
                Poll::Ready(Err(_)) => return false,
                Poll::Pending => return true,
            }
        }
        true
    }
}

struct State {
    feed: Feed,
    frames: Arc<FrameCache>,
    members: Vec<Member>,
    /// The revision the members being fed have reached.
    position: Revision,
}

impl State {
    /// Queues `events` (from the live receiver, in order) for the members being fed.
    fn dispatch(&mut self, events: Vec<Event>) {
        for event in events {
            let reached = self.position;
            self.position = event.revision;
            if let Change::Reset { snapshot } = &event.change {
                for m in self.members.iter_mut().filter(|m| m.behind.is_none()) {
                    let scoped = Event {
                        revision: event.revision,
                        change: Change::Reset { snapshot: Arc::new(snapshot.filtered(&m.scope)) },
                    };
                    let own = m.own(&scoped).unwrap_or(scoped);
                    match frames(&own) {
                        Some(frames) => m.push_all(frames, reached),
                        None => m.behind = Some(reached),
                    }
                }
                continue;
            }
            let Some(key) = event.key() else { continue };
            let mut frame = None;
            for m in self.members.iter_mut().filter(|m| m.behind.is_none() && m.scope.contains(&key)) {
                if let Some(own) = m.own(&event) {
                    match encode(&own) {
                        Some(f) => m.push(f, reached),
                        None => m.behind = Some(reached),
                    }
                    continue;
                }
                let f = match &frame {
                    Some(f) => Arc::clone(f),
                    None => match self.frames.frame(&event) {
                        Some(f) => frame.insert(f).clone(),
                        None => break,
                    },
                };
                m.push(f, reached);
            }
        }
    }

    /// Brings the members that are behind with an empty queue (new ones included) to the
    /// live position; `false` if there were none.
    fn catch_up(&mut self) -> bool {
        let joining: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].behind.is_some() && self.members[i].queue.is_empty())
            .collect();
        if joining.is_empty() {
            return false;
        }
        let scopes: Vec<(Scope, Revision)> = joining
            .iter()
            .map(|&i| (self.members[i].scope.clone(), self.members[i].behind.unwrap_or_default()))
            .collect();
        let refs: Vec<(&Scope, Revision)> = scopes.iter().map(|(s, r)| (s, *r)).collect();
        let synced = self.feed.sync(&refs);
        // The backlog goes to the members already fed (the joiners are still `behind`, and
        // their catch-up covers it).
        self.dispatch(synced.backlog);
        if synced.lagged {
            self.fall_behind();
        }
        self.position = self.feed.position();
        for (&i, events) in joining.iter().zip(synced.catch_up) {
            let m = &mut self.members[i];
            m.behind = None;
            for event in events {
                let event = m.own(&event).unwrap_or(event);
                let Some(frames) = frames(&event) else { break };
                for frame in frames {
                    m.queue_frame(frame);
                }
            }
        }
        true
    }

    /// The receiver lagged: every member being fed has missed events after the position.
    fn fall_behind(&mut self) {
        let reached = self.position;
        for m in self.members.iter_mut().filter(|m| m.behind.is_none()) {
            m.behind = Some(reached);
        }
    }

    /// Writes what every stream accepts; drops the members whose stream is gone.
    fn flush(&mut self, cx: &mut Context<'_>) {
        self.members.retain_mut(|m| m.flush(cx));
    }
}

/// The frames of one event: one, or a `Reset` too large for a frame in chunks
/// ([`sextant_proto::event_frames`]).
fn frames(event: &Event) -> Option<Vec<Arc<[u8]>>> {
    match sextant_proto::event_frames(event) {
        Ok(frames) => Some(frames.into_iter().map(Arc::from).collect()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            None
        }
    }
}

fn encode(event: &Event) -> Option<Arc<[u8]>> {
    match sextant_proto::encode(&Response::Event { event: event.clone() }) {
        Ok(frame) => Some(frame.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            None
        }
    }
}

async fn run(mut state: State, mut commands: mpsc::UnboundedReceiver<Command>) {
    std::future::poll_fn(|cx| poll(&mut state, &mut commands, cx)).await;
}

fn poll(state: &mut State, commands: &mut mpsc::UnboundedReceiver<Command>, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        match commands.poll_recv(cx) {
            Poll::Ready(Some(Command::Join { id, scope, from, reader, send })) => state.members.push(Member {
                id,
                scope,
                reader,
                send,
                queue: VecDeque::new(),
                queued: 0,
                written: 0,
                behind: Some(from),
            }),
            Poll::Ready(Some(Command::Stopped(id))) => state.members.retain(|m| m.id != id),
            // The connection is gone and every watcher has reported.
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending => break,
        }
    }
    loop {
        match state.feed.poll_recv(cx) {
            Poll::Ready(Some(received)) => {
                state.dispatch(received.events);
                if received.lagged {
                    state.fall_behind();
                }
            }
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending => break,
        }
    }
    // Write, then bring the members whose queue has drained (new ones included) up to date,
    // and write that: a few rounds, then yield and come back.
    for _ in 0..4 {
        state.flush(cx);
        if !state.catch_up() {
            return Poll::Pending;
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}
