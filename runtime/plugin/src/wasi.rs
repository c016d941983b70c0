//! The WASI plugins get: a small deterministic subset, so that components built by real
//! toolchains (Rust's std, CPython, JavaScript engines) start and run, and nothing that
//! reaches outside the host.
//!
//! Provided (every `0.2.x` version a component imports):
//! - `wasi:cli/environment`: no variables, no arguments, no working directory;
//! - `wasi:cli/exit`: a fault (the call traps, saying so);
//! - `wasi:cli/stdin` and the `input-stream` of `wasi:io/streams` (`read`, `blocking-read`,
//!   `skip`, `blocking-skip`, `subscribe`): an empty stream, closed at once (StarlingMonkey
//!   opens stdin before it prints an exception);
//! - `wasi:cli/stdout`, `wasi:cli/stderr` and the `output-stream` of `wasi:io/streams`
//!   (`check-write`, `write`, `blocking-write-and-flush`, `flush`, `blocking-flush`,
//!   `subscribe`, and `wasi:io/poll` on what it returns: always ready): to the
//!   host log, a line at a time, tagged with the plugin, at most [`LOG_CAP`] bytes per
//!   instance; the last [`TAIL`] bytes are kept and added to the reason of a trap (a Rust
//!   panic's message, a Python traceback);
//! - `wasi:random/random`, `insecure`, `insecure-seed`: the instance's seeded generator (the
//!   one behind `host.random`), so a seeded run repeats;
//! - `wasi:clocks/monotonic-clock` (`now`, `resolution`: nanoseconds since the instance
//!   started) and `wasi:clocks/wall-clock` (`now`, `resolution`: the host's clock);
//! - `wasi:filesystem/preopens`: no directories. Without a directory no file can be named,
//!   so `wasi:filesystem/types` may be imported (CPython and StarlingMonkey import it for
//!   their standard streams) but none of its functions can be reached with a descriptor:
//!   they trap if called.
//!
//! The other functions of those interfaces (subscribing to a clock, terminals)
//! trap when called. A component that imports anything of `wasi:sockets`, `wasi:http` or
//! another package is refused at load, naming the import.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, Resource, ResourceType, Val};

use crate::LoadError;

/// Bytes of stdout and stderr one instance may put in the log; the rest is counted, not logged.
pub(crate) const LOG_CAP: usize = 64 * 1024;
/// Bytes of recent output kept for the reason of a trap.
pub(crate) const TAIL: usize = 2048;
/// A line longer than this is logged in pieces.
const LINE_MAX: usize = 1024;
/// The most random bytes one call may ask for.
const RANDOM_MAX: u64 = 1 << 20;

/// WASI packages a plugin may import; anything else is refused at load.
const PROVIDED: [&str; 5] = ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/"];

/// `wasi:io/streams`' `output-stream` (rep 1: stdout, 2: stderr).
struct OutputStream;
/// `wasi:io/streams`' `input-stream`: stdin, empty (every read answers `closed`).
struct InputStream;
/// `wasi:io/error`'s `error` (never handed out: streams do not fail).
struct IoError;

const STDOUT: u32 = 1;
const STDERR: u32 = 2;

/// What the subset needs of a store's state (the plugin host's `HostState`).
pub(crate) trait WasiState: Send + 'static {
    /// The next number of the instance's seeded generator.
    fn next_random(&mut self) -> u64;
    /// When the instance started (the monotonic clock's zero).
    fn started(&self) -> Instant;
    /// Takes what the plugin wrote to `stream` (1: stdout, 2: stderr).
    fn write_output(&mut self, stream: u32, bytes: &[u8]);
}

/// Whether a WASI import is refused: its package is not one the host provides.
pub(crate) fn refused(import: &str) -> bool {
    import.starts_with("wasi:") && !PROVIDED.iter().any(|p| import.starts_with(p))
}

/// What a plugin instance wrote to stdout and stderr.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// The line being written, per stream (stdout, stderr).
    lines: [Vec<u8>; 2],
    logged: usize,
    dropped: u64,
    tail: VecDeque<u8>,
}

impl Output {
    pub(crate) fn write(&mut self, label: &str, stream: u32, bytes: &[u8]) {
        let index = usize::from(stream == STDERR);
        for &b in bytes {
            if self.tail.len() == TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(b);
            if b == b'\n' {
                self.emit(label, index);
            } else {
                self.lines[index].push(b);
                if self.lines[index].len() >= LINE_MAX {
                    self.emit(label, index);
                }
            }
        }
    }

    fn emit(&mut self, label: &str, index: usize) {
        let line = std::mem::take(&mut self.lines[index]);
        if self.logged >= LOG_CAP {
            if self.dropped == 0 {
                tracing::warn!(
                    plugin = label,
                    cap = LOG_CAP,
                    "the plugin's output passed the cap; the rest is not logged"
                );
            }
            self.dropped += line.len() as u64 + 1;
            return;
        }
        self.logged += line.len() + 1;
        let text = String::from_utf8_lossy(&line);
        let stream = if index == 1 { "stderr" } else { "stdout" };
        tracing::info!(plugin = label, stream, "{text}");
    }

    /// Keeps `message` (a warning or error the plugin logged through the host) for the
    /// reason of a trap, as if it had been written.
    pub(crate) fn remember(&mut self, message: &str) {
        for &b in message.as_bytes().iter().chain(b"\n") {
            if self.tail.len() == TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(b);
        }
    }

    /// The recent output (for the reason of a trap), emptied.
    pub(crate) fn take_tail(&mut self) -> String {
        let bytes: Vec<u8> = self.tail.drain(..).collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

/// `wasi:io/poll`'s `pollable` (an output stream's: always ready).
struct Pollable;
/// `wasi:filesystem/types`' `descriptor` (never handed out: there are no directories).
struct Descriptor;

/// The host type of a WASI resource, by name: the same in every instance that names it (an
/// interface that `use`s a resource re-exports it, and the types must agree).
fn resource_type(name: &str) -> ResourceType {
    match name {
        "output-stream" => ResourceType::host::<OutputStream>(),
        "input-stream" => ResourceType::host::<InputStream>(),
        "error" => ResourceType::host::<IoError>(),
        "pollable" => ResourceType::host::<Pollable>(),
        "descriptor" => ResourceType::host::<Descriptor>(),
        _ => ResourceType::host::<()>(),
    }
}

/// Defines the provided subset in `linker` under every name `component` imports it by.
pub(crate) fn define<T: WasiState>(
    linker: &mut Linker<T>,
    engine: &Engine,
    component: &Component,
) -> Result<(), LoadError> {
    let imports: Vec<(String, ComponentItem)> =
        component.component_type().imports(engine).map(|(name, item)| (name.to_owned(), item.ty)).collect();
    // The resources first, in every WASI instance that has them.
    for (name, item) in &imports {
        let ComponentItem::ComponentInstance(instance) = item else { continue };
        if !name.starts_with("wasi:") {
            continue;
        }
        let resources: Vec<String> = instance
            .exports(engine)
            .filter(|(_, item)| matches!(item.ty, ComponentItem::Resource(_)))
            .map(|(n, _)| n.to_owned())
            .collect();
        let defined = linker.instance(name).and_then(|mut i| {
            for r in &resources {
                i.resource(r, resource_type(r), |_, _| Ok(()))?;
            }
            Ok(())
        });
        defined.map_err(|e| LoadError::Instantiate(format!("providing {name}: {e:#}")))?;
    }
    for name in imports.into_iter().map(|(name, _)| name) {
        let iface = name.split_once('@').map_or(name.as_str(), |(i, _)| i);
        let defined = match iface {
            "wasi:cli/environment" => environment(linker.instance(&name)),
            "wasi:cli/exit" => exit(linker.instance(&name)),
            "wasi:cli/stdout" => std_stream(linker.instance(&name), "get-stdout", STDOUT),
            "wasi:cli/stderr" => std_stream(linker.instance(&name), "get-stderr", STDERR),
            "wasi:cli/stdin" => linker
                .instance(&name)
                .and_then(|mut i| i.func_wrap("get-stdin", |_, (): ()| Ok((Resource::<InputStream>::new_own(0),)))),
            "wasi:io/streams" => streams(linker.instance(&name)),
            "wasi:io/poll" => poll(linker.instance(&name)),
            "wasi:random/random" => random(linker.instance(&name), "get-random-bytes", "get-random-u64"),
            "wasi:random/insecure" => {
                random(linker.instance(&name), "get-insecure-random-bytes", "get-insecure-random-u64")
            }
            "wasi:random/insecure-seed" => linker.instance(&name).and_then(|mut i| {
                i.func_wrap("insecure-seed", |mut cx, (): ()| {
                    let state = cx.data_mut();
                    Ok(((state.next_random(), state.next_random()),))
                })
            }),
            "wasi:filesystem/preopens" => linker.instance(&name).and_then(|mut i| {
                // No directories: the plugin can open no file.
                i.func_wrap("get-directories", |_, (): ()| Ok((Vec::<(Resource<Descriptor>, String)>::new(),)))
            }),
            "wasi:clocks/monotonic-clock" => monotonic(linker.instance(&name)),
            "wasi:clocks/wall-clock" => wall(linker.instance(&name)),
            _ => Ok(()),
        };
        defined.map_err(|e| LoadError::Instantiate(format!("providing {name}: {e:#}")))?;
    }
    Ok(())
}

type Instance<'a, T> = wasmtime::Result<LinkerInstance<'a, T>>;

fn environment<T: WasiState>(i: Instance<'_, T>) -> wasmtime::Result<()> {
    let mut i = i?;
    i.func_wrap("get-environment", |_, (): ()| Ok((Vec::<(String, String)>::new(),)))?;
    i.func_wrap("get-arguments", |_, (): ()| Ok((Vec::<String>::new(),)))?;
    i.func_wrap("initial-cwd", |_, (): ()| Ok((None::<String>,)))
}

fn exit<T: WasiState>(i: Instance<'_, T>) -> wasmtime::Result<()> {
    let mut i = i?;
    i.func_wrap("exit", |_, (status,): (Result<(), ()>,)| -> wasmtime::Result<()> {
        let how = if status.is_ok() { "success" } else { "failure" };
        wasmtime::bail!("the plugin called wasi:cli/exit ({how}): a plugin may not exit")
    })
}

fn std_stream<T: WasiState>(i: Instance<'_, T>, function: &str, rep: u32) -> wasmtime::Result<()> {
    i?.func_wrap(function, move |_, (): ()| Ok((Resource::<OutputStream>::new_own(rep),)))
}

/// `wasi:io/streams`' `stream-error`, as the typed stream functions answer (`closed` for
/// stdin; the output streams never fail).
mod stream_error {
    // The component model's derives implement unsafe traits.
    #![allow(unsafe_code)]
    use wasmtime::component::{ComponentType, Lift, Lower, Resource};

    #[derive(ComponentType, Lift, Lower)]
    #[component(variant)]
    #[allow(dead_code)] // The type the contract names; the host never answers `last-operation-failed`.
    pub(super) enum StreamError {
        #[component(name = "last-operation-failed")]
        LastOperationFailed(Resource<super::IoError>),
        #[component(name = "closed")]
        Closed,
    }
}
use stream_error::StreamError;

/// The permit `check-write` gives (bytes a write may carry)...
const PERMIT: u64 = 4096;
/// ...and the most a write is allowed before it traps (toolchains that write without asking).
const WRITE_MAX: usize = 64 * 1024;

fn streams<T: WasiState>(i: Instance<'_, T>) -> wasmtime::Result<()> {
    let mut i = i?;
    type Answer<R> = wasmtime::Result<(Result<R, StreamError>,)>;
    i.func_wrap("[method]output-stream.check-write", |_, (_s,): (Resource<OutputStream>,)| -> Answer<u64> {
        Ok((Ok(PERMIT),))
    })?;
    for method in ["[method]output-stream.write", "[method]output-stream.blocking-write-and-flush"] {
        i.func_wrap(method, |mut cx, (s, bytes): (Resource<OutputStream>, Vec<u8>)| -> Answer<()> {
            if bytes.len() > WRITE_MAX {
                wasmtime::bail!("wrote {} bytes at once to a stream; check-write allows {PERMIT}", bytes.len());
            }
            cx.data_mut().write_output(s.rep(), &bytes);
            Ok((Ok(()),))
        })?;
    }
    // Writers wait for readiness before they write: a stream is always ready.
    i.func_wrap("[method]output-stream.subscribe", |_, (_stream,): (Resource<OutputStream>,)| {
        Ok((Resource::<Pollable>::new_own(0),))
    })?;
    for method in ["[method]output-stream.flush", "[method]output-stream.blocking-flush"] {
        i.func_wrap(method, |_, (_s,): (Resource<OutputStream>,)| -> Answer<()> { Ok((Ok(()),)) })?;
    }
    // Stdin is empty: closed at once.
    for method in ["[method]input-stream.read", "[method]input-stream.blocking-read"] {
        i.func_wrap(method, |_, (_s, _len): (Resource<InputStream>, u64)| -> Answer<Vec<u8>> {
            Ok((Err(StreamError::Closed),))
        })?;
    }
    for method in ["[method]input-stream.skip", "[method]input-stream.blocking-skip"] {
        i.func_wrap(method, |_, (_s, _len): (Resource<InputStream>, u64)| -> Answer<u64> {
            Ok((Err(StreamError::Closed),))
        })?;
    }
    i.func_wrap("[method]input-stream.subscribe", |_, (_stream,): (Resource<InputStream>,)| {
        Ok((Resource::<Pollable>::new_own(0),))
    })?;
    Ok(())
}

/// Pollables come from streams only, which are always ready.
fn poll<T: WasiState>(i: Instance<'_, T>) -> wasmtime::Result<()> {
    let mut i = i?;
    i.func_wrap("[method]pollable.ready", |_, (_p,): (Resource<Pollable>,)| Ok((true,)))?;
    i.func_wrap("[method]pollable.block", |_, (_p,): (Resource<Pollable>,)| Ok(()))?;
    i.func_wrap("poll", |_, (all,): (Vec<Resource<Pollable>>,)| {
        Ok(((0..u32::try_from(all.len()).unwrap_or(u32::MAX)).collect::<Vec<u32>>(),))
    })
}

fn random<T: WasiState>(i: Instance<'_, T>, bytes: &str, number: &str) -> wasmtime::Result<()> {
    let mut i = i?;
    i.func_wrap(bytes, |mut cx, (len,): (u64,)| {
        if len > RANDOM_MAX {
            wasmtime::bail!("{len} random bytes asked for; at most {RANDOM_MAX} per call");
        }
        let state = cx.data_mut();
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        while (out.len() as u64) < len {
            out.extend_from_slice(&state.next_random().to_le_bytes());
        }
        out.truncate(usize::try_from(len).unwrap_or(0));
        Ok((out,))
    })?;
    i.func_wrap(number, |mut cx, (): ()| Ok((cx.data_mut().next_random(),)))
}

fn monotonic<T: WasiState>(i: Instance<'_, T>) -> wasmtime::Result<()> {
    let mut i = i?;
    i.func_wrap("now", |cx, (): ()| {
        Ok((u64::try_from(cx.data().started().elapsed().as_nanos()).unwrap_or(u64::MAX),))
    })?;
    i.func_wrap("resolution", |_, (): ()| Ok((1u64,)))
}

fn datetime(seconds: u64, nanoseconds: u32) -> Val {
    Val::Record(vec![("seconds".into(), Val::U64(seconds)), ("nanoseconds".into(), Val::U32(nanoseconds))])
}

fn wall<T: WasiState>(i: Instance<'_, T>) -> wasmtime::Result<()> {
    let mut i = i?;
    i.func_new("now", |_, _, _, results| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        results[0] = datetime(now.as_secs(), now.subsec_nanos());
        Ok(())
    })?;
    i.func_new("resolution", |_, _, _, results| {
        results[0] = datetime(0, 1);
        Ok(())
    })
}
