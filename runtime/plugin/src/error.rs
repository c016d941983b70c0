//! Typed errors of the plugin host.

use crate::kind::PluginKind;

/// Why the plugin host could not start (wasmtime could not set up its engine, for example the
/// pooling allocator could not reserve memory, or the epoch thread could not start).
#[derive(Debug, thiserror::Error)]
#[error("the plugin host could not start: {source}")]
pub struct HostError {
    /// What failed (wasmtime's error, or the OS's).
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl From<wasmtime::Error> for HostError {
    fn from(e: wasmtime::Error) -> Self {
        Self { source: e.into() }
    }
}

impl From<std::io::Error> for HostError {
    fn from(e: std::io::Error) -> Self {
        Self { source: Box::new(e) }
    }
}

/// Why a plugin could not be loaded. A failed load changes nothing: the active plugin of
/// every slot keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A candidate's canary share outside 1..=1000 thousandths.
    #[error("a canary share is 1 to 1000 thousandths of the picks, not {0}")]
    BadShare(u16),
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the \\0asm magic)")]
    NotWasm,
    /// A core wasm module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component did not compile.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The component exports no sextant plugin interface.
    #[error("the component exports no sextant plugin interface (it exports: {exports})")]
    NoPluginExport {
        /// What it does export.
        exports: String,
    },
    /// It speaks another version of the contract.
    #[error("the component exports {export}, but this host speaks sextant:plugin@{host}")]
    VersionMismatch {
        /// The export found.
        export: String,
        /// This host's contract version.
        host: &'static str,
    },
    /// It exports (or imports) interfaces of two contract versions: a component speaks one.
    #[error("the component speaks two contract versions ({first} and {second}): build it against one of them")]
    BothContracts {
        /// The first version found.
        first: String,
        /// The other.
        second: String,
    },
    /// Starting it would pass one of the host's limits.
    #[error("{what}: {used} of {limit} in use; {raise}")]
    Limit {
        /// The limit, named.
        what: &'static str,
        /// How many are in use.
        used: u64,
        /// The limit.
        limit: u64,
        /// How to raise it.
        raise: &'static str,
    },
    /// A plugin of another kind than the slot needs.
    #[error("a {found} plugin cannot go into a {expected} slot")]
    WrongKind {
        /// What the slot takes.
        expected: PluginKind,
        /// What the component is.
        found: PluginKind,
    },
    /// It imports something the host does not provide.
    #[error(
        "the component imports {0}, which the host does not provide (plugins get sextant:plugin/host and /load, and a WASI subset)"
    )]
    UnknownImport(String),
    /// It imports a WASI interface plugins may not use (files, sockets, HTTP, ...).
    #[error(
        "the component imports {0}, which plugins may not use: they get wasi:cli (empty environment, output to the host log), wasi:io streams, wasi:clocks, wasi:random and wasi:filesystem without directories, and no sockets or HTTP"
    )]
    DeniedImport(String),
    /// The export's functions do not have the contract's types.
    #[error("the component's {kind} export does not match the contract: {reason}")]
    Mismatch {
        /// The plugin kind.
        kind: PluginKind,
        /// wasmtime's explanation.
        reason: String,
    },
    /// Instantiating failed (resources exhausted, a start function trapped).
    #[error("instantiating the component failed: {0}")]
    Instantiate(String),
    /// `init` refused the configuration.
    #[error("the plugin refused its configuration: {0}")]
    Config(String),
    /// The self-test on a synthetic snapshot failed.
    #[error("self-test failed: {0}")]
    SelfTest(String),
    /// A built-in name that does not exist.
    #[error("{0}")]
    UnknownBuiltin(String),
}

/// Why a call into a plugin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFault {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline (epoch interruption).
    #[error("missed its deadline")]
    Deadline,
    /// The guest tried to grow its memory past the cap.
    #[error("exceeded its memory limit")]
    Memory,
    /// The call returned something the contract forbids (an index out of range, none while
    /// endpoints exist, weights of the wrong length).
    #[error("broke the contract: {0}")]
    Contract(String),
    /// The plugin returned an error for an update.
    #[error("refused the update: {0}")]
    Refused(String),
}

/// Errors of slot operations other than loading.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Nothing to roll back to.
    #[error("nothing to roll back to: the slot runs its first version")]
    NoPrevious,
    /// A load failed.
    #[error(transparent)]
    Load(#[from] LoadError),
}
