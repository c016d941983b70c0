//! Paths of the wasm plugins, built from source by this crate's build script: the built-ins
//! (`plugins/wasm/*`) and the test plugins (`plugins/testing/*`: `noop`, the empty call;
//! `misbehave`, faults on demand; `bad-health`, a failing health policy; `wrong-version`, a
//! future contract version). Tests,
//! benches and examples depend on this crate to get real components; nothing is committed.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// The path of a plugin by its crate directory name (`round-robin`, `noop`, ...).
#[must_use]
pub fn path(name: &str) -> Option<&'static str> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// The embedded bytes of a built-in plugin (`round-robin`, `peak-ewma`, ...), for tools that
/// must run without the build tree.
#[must_use]
pub fn builtin_bytes(name: &str) -> Option<&'static [u8]> {
    BUILTIN_BYTES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
