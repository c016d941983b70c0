//! `--plugins DIR`: a directory of plugins, scanned every poll interval.
//!
//! Each `NAME.wasm` is a plugin named `NAME`; an optional `NAME.json` beside it says what it
//! is and where it goes: `{"kind": "balancer", "binding": "NS/GROUP/NAME", "config": {...}}`
//! (defaults: kind `balancer`, binding `*` — every service —, config `{}`). A new or changed
//! file (or sidecar) is loaded through the plugin manager exactly like `sextant plugin load`:
//! validated first, and a file that fails leaves the active plugin alone, is reported in
//! `plugin list` and the log, and is not retried until it changes again. Removing the file
//! deletes the record it loaded (unless the record was since replaced through the API); a
//! delete the store refuses is tried again at the next scan.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sextant_control::{ManagerError, PluginManager};
use sextant_core::store::Store;
use sextant_core::{PluginName, sha256_hex};

/// The sidecar `NAME.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    binding: Option<String>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// A file's (modified, length), to skip unchanged files cheaply.
type Stamp = Option<(SystemTime, u64)>;

/// What was last seen of one plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// Stamps of the `.wasm` and of the sidecar.
    stamp: (Stamp, Stamp),
    /// sha256 of the component that was loaded (none: the last attempt failed).
    loaded: Option<String>,
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Scans `dir` every `every` until `stop` resolves.
pub(crate) async fn watch<S: Store + Clone>(
    dir: PathBuf,
    every: Duration,
    manager: PluginManager<S>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => scan(&dir, &manager, &mut seen).await,
            () = &mut stop => return,
        }
    }
}

async fn scan<S: Store + Clone>(dir: &Path, manager: &PluginManager<S>, seen: &mut HashMap<String, Seen>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugin directory");
            return;
        }
    };
    let mut present = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        present.push(name.clone());
        let sidecar = path.with_extension("json");
        let now = (stamp(&path), stamp(&sidecar));
        if seen.get(&name).is_some_and(|s| s.stamp == now) {
            continue;
        }
        let loaded = load(manager, &name, &path, &sidecar).await;
        seen.insert(name, Seen { stamp: now, loaded });
    }
    let gone: Vec<String> = seen.keys().filter(|n| !present.contains(n)).cloned().collect();
    for name in gone {
        let Some(Seen { loaded: Some(sha), .. }) = seen.get(&name) else {
            seen.remove(&name);
            continue;
        };
        let Ok(plugin) = PluginName::new(name.as_str()) else {
            seen.remove(&name);
            continue;
        };
        let ours = manager.records().iter().any(|r| r.name == plugin && &r.sha256 == sha);
        if ours {
            match manager.delete(&plugin).await {
                Ok(revision) => tracing::info!(plugin = %name, %revision, "plugin file removed: unloaded"),
                Err(ManagerError::NotFound(_)) => {}
                Err(e) => {
                    // Kept: the next scan tries again (a store that did not answer in time).
                    tracing::warn!(plugin = %name, error = %e, "cannot unload removed plugin; retrying");
                    continue;
                }
            }
        }
        seen.remove(&name);
    }
}

/// Loads one file; the sha256 loaded, or none when it failed (already reported).
async fn load<S: Store + Clone>(manager: &PluginManager<S>, name: &str, path: &Path, sidecar: &Path) -> Option<String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            manager.report(name, "dir", &format!("{}: {e}", path.display()));
            return None;
        }
    };
    let side = match std::fs::read(sidecar) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Sidecar::default(),
        Err(e) => {
            manager.report(name, "dir", &format!("{}: {e}", sidecar.display()));
            return None;
        }
        Ok(text) => match serde_json::from_slice::<Sidecar>(&text) {
            Ok(s) => s,
            Err(e) => {
                manager.report(name, "dir", &format!("{}: {e}", sidecar.display()));
                return None;
            }
        },
    };
    let kind = side.kind.unwrap_or_else(|| "balancer".into());
    let binding = side.binding.unwrap_or_else(|| "*".into());
    let config = side.config.map(|c| c.to_string()).unwrap_or_default();
    let sha = sha256_hex(&bytes);
    match manager.load(name, &kind, &binding, &config, bytes, "dir").await {
        Ok(loaded) => {
            let (sha256, revision) = (&loaded.record.sha256, loaded.revision);
            let validated_on = loaded.validated.map(|v| format!("{} of {} services", v.services.len(), v.covered));
            tracing::info!(plugin = name, %kind, %binding, %sha256, %revision, ?validated_on, "plugin loaded from directory");
            Some(sha)
        }
        Err(_) => None,
    }
}
