//! A balancer that misbehaves as its configuration says, for the plugin host's bad-input
//! tests: `{"fault": F, "after": N}` where F is one of `trap-init`, `trap-update`,
//! `trap-pick`, `loop-pick`, `loop-update`, `grow-update`, `grow-pick`, `out-of-range`,
//! `none`, `refuse-update`, `log-pick` (a 200-byte line through `host.log` at every pick),
//! `ring` and `maglev` (update answers a table of `"entries": N` entries, default 65536,
//! spread over the endpoints), `trap-new` (the resource constructor panics), `loop-new` (the
//! resource constructor spins until its deadline; with `"after_ms": M` only once M ms have
//! passed since the instance's `init`, so the constructors at load return; with
//! `"after_unix_ms": T` only once the wall clock passed T, so an instance started again after
//! a fault spins as well), `leak-new` (every
//! resource created keeps `leak_kib` KiB, default 1024, for the life of the instance: a
//! plugin that leaks per service), `use-wasi` (not a fault: at `init` it uses the WASI the host
//! provides, see `use_wasi`), `flood-init` (2 MiB to stdout at `init`), and the fault starts with the N-th call of that function
//! (default 0: the first). Before that it balances round robin. `refuse-below` with
//! `"endpoints": N` refuses every snapshot with 1 to N-1 endpoints (it passes the host's
//! self-test, whose snapshots have 8 and 0, and fails on a small real service).
use std::hint::black_box;

use sextant_plugin_sdk::{Balancer, Env, Level, Mode, Request, RingPoint, Snapshot, Table};

struct Misbehave {
    fault: String,
    after: u64,
    updates: u64,
    picks: u64,
    len: u32,
    next: u32,
    min_endpoints: usize,
    entries: u32,
    hoard: Vec<Vec<u8>>,
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

impl Misbehave {
    fn grow(&mut self) {
        loop {
            // Touch every page so the memory is really taken, then keep it.
            self.hoard.push(vec![1u8; 1 << 20]);
        }
    }
}

impl Balancer for Misbehave {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        self.updates += 1;
        if self.updates > self.after {
            match self.fault.as_str() {
                "trap-update" => panic!("trap-update: as configured"),
                "loop-update" => spin(),
                "grow-update" => self.grow(),
                "refuse-update" => return Err("refuse-update: as configured".into()),
                "refuse-below" if (1..self.min_endpoints).contains(&snapshot.endpoints.len()) => {
                    return Err(format!(
                        "refuse-below: {} endpoints, at least {} wanted",
                        snapshot.endpoints.len(),
                        self.min_endpoints
                    ));
                }
                _ => {}
            }
        }
        self.len = u32::try_from(snapshot.endpoints.len()).unwrap_or(u32::MAX);
        let len = self.len;
        // No endpoints: an empty table.
        let entries = if len == 0 { 0 } else { self.entries };
        match self.fault.as_str() {
            "ring" => Ok(Mode::Table(Table::Ring(
                (0..entries)
                    .map(|i| RingPoint { hash: u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15), endpoint: i % len })
                    .collect(),
            ))),
            "maglev" => Ok(Mode::Table(Table::Maglev((0..entries).map(|i| i % len).collect()))),
            _ => Ok(Mode::PerRequest),
        }
    }

    fn pick(&mut self, _request: &Request, env: &mut dyn Env) -> Option<u32> {
        self.picks += 1;
        if self.picks > self.after {
            match self.fault.as_str() {
                "log-pick" => env.log(Level::Info, &format!("log-pick {:>191}", self.picks)),
                "trap-pick" => panic!("trap-pick: as configured"),
                "loop-pick" => spin(),
                "grow-pick" => self.grow(),
                "out-of-range" => return Some(self.len + 7),
                "none" => return None,
                _ => {}
            }
        }
        if self.len == 0 {
            return None;
        }
        self.next = (self.next + 1) % self.len;
        Some(self.next)
    }
}

/// What real toolchains do as they start (CPython, JavaScript engines, Rust's std): read the
/// environment and arguments, both clocks and random numbers (a `HashMap`'s keys), stdin,
/// look for files, print.
#[allow(clippy::print_stdout)] // Printing is what is tested: stdout goes to the host log.
fn use_wasi() -> Result<(), String> {
    // Stdin is empty; there is no directory, so no file.
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line).map_err(|e| format!("use-wasi: stdin: {e}"))?;
    if read != 0 {
        return Err(format!("use-wasi: stdin gave {read} bytes"));
    }
    if std::fs::read_dir("/").is_ok() || std::fs::read("/etc/passwd").is_ok() {
        return Err("use-wasi: a file system is visible".into());
    }
    let vars = std::env::vars().count();
    let args = std::env::args().count();
    let started = std::time::Instant::now();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
    let mut keys = std::collections::HashMap::new();
    keys.insert("seeded", 1);
    println!("use-wasi: {vars} variables, {args} arguments, {} keys", keys.len());
    eprintln!("use-wasi: the wall clock says {} s, {:?} since start", wall.as_secs(), started.elapsed());
    if vars != 0 || args != 0 || wall.as_secs() < 1_600_000_000 {
        return Err(format!("use-wasi: unexpected environment ({vars} variables, {args} arguments, {wall:?})"));
    }
    Ok(())
}

/// Writes 2 MiB to stdout (the host logs a capped share of it).
#[allow(clippy::print_stdout)]
fn flood() {
    let line = "x".repeat(1023);
    for _ in 0..2048 {
        println!("{line}");
    }
}

thread_local! {
    /// How many times the factory ran in this instance: `init` once, then once per service's
    /// resource.
    static MADE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// When this instance's `init` ran.
    static STARTED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    /// What `leak-new` keeps.
    static LEAKED: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn make(config: &str) -> Result<Misbehave, String> {
    let made = MADE.get();
    MADE.set(made + 1);
    if made == 0 {
        STARTED.set(Some(std::time::Instant::now()));
    }
    let text = config.to_owned();
    let field = |name: &str| -> Option<String> {
        // A tiny reader for {"fault": "x", "after": 3}; the SDK user would use serde.
        let at = text.find(&format!("\"{name}\""))?;
        let rest = text[at + name.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"').to_owned())
    };
    let fault = field("fault").unwrap_or_default();
    if fault == "trap-init" {
        panic!("trap-init: as configured");
    }
    if fault == "use-wasi" {
        use_wasi()?;
    }
    if fault == "flood-init" {
        flood();
    }
    let after = field("after").map_or(Ok(0), |a| a.parse::<u64>().map_err(|e| e.to_string()))?;
    // `init` made the first (made == 0): constructors are the later ones.
    if fault == "trap-new" && made > after {
        panic!("trap-new: as configured (resource {made})");
    }
    if fault == "loop-new" && made > after {
        let after_ms = field("after_ms").map_or(Ok(0), |a| a.parse::<u128>().map_err(|e| e.to_string()))?;
        let after_unix_ms = field("after_unix_ms").map_or(Ok(0), |a| a.parse::<u128>().map_err(|e| e.to_string()))?;
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        if STARTED.get().is_none_or(|t| t.elapsed().as_millis() >= after_ms) && unix_ms >= after_unix_ms {
            spin();
        }
    }
    if fault == "leak-new" && made > 0 {
        let kib = field("leak_kib").map_or(Ok(1024), |a| a.parse::<usize>().map_err(|e| e.to_string()))?;
        LEAKED.with(|l| l.borrow_mut().push(vec![1u8; kib << 10]));
    }
    let min_endpoints = field("endpoints").map_or(Ok(0), |a| a.parse::<usize>().map_err(|e| e.to_string()))?;
    let entries = field("entries").map_or(Ok(65_536), |a| a.parse::<u32>().map_err(|e| e.to_string()))?;
    Ok(Misbehave { fault, after, updates: 0, picks: 0, len: 0, next: 0, min_endpoints, entries, hoard: Vec::new() })
}

sextant_plugin_sdk::export_balancer!(make);
