//! Plugins in Python, JavaScript and Rust, as an author makes them: `sextant plugin new`, the
//! build command the project's README gives (with the pinned toolchains `scripts/setup`
//! installs), `sextant plugin load` over QUIC into a running server (the Python and
//! JavaScript components are larger than a frame: they go up in chunks), picks checked
//! against the template's policy, then swapped Rust → Python → JavaScript → Rust while 8
//! threads pick. And what goes wrong: an exception in `init` is refused with its message, an
//! endless `init` at its deadline; the active plugin keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde_json::Value;

use crate::support::{Server, run, sextant_bin};

const SERVICE: &str = "shop/web/orders";

/// Where `scripts/plugin-toolchains` installed componentize-py and componentize-js.
fn tools() -> PathBuf {
    let dir = std::env::var_os("SEXTANT_PLUGIN_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sextant/plugin-tools"));
    for tool in ["py/bin/componentize-py", "js/node_modules/.bin/componentize-js"] {
        assert!(dir.join(tool).is_file(), "{} is missing: run `bash scripts/setup`", dir.join(tool).display());
    }
    dir
}

/// The channel `rust-toolchain.toml` pins.
fn pinned_toolchain() -> &'static str {
    include_str!("../rust-toolchain.toml")
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .map(|c| c.trim().trim_matches('"'))
        .expect("a channel in rust-toolchain.toml")
}

/// The shell command in the first ```sh block of a README that mentions `needle`.
fn readme_command(project: &Path, needle: &str) -> String {
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let mut in_block = false;
    for line in readme.lines() {
        match (in_block, line.trim()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, l) if l.contains(needle) => return l.to_owned(),
            _ => {}
        }
    }
    panic!("{}: no build command with {needle}:\n{readme}", project.display())
}

fn sh(dir: &Path, command: &str, path: &Path) {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(path.to_owned()).chain(std::env::split_paths(&inherited));
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "`{command}` in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a project with `sextant plugin new`, lets `edit` change its source, builds it as
/// its README says, and returns the component.
fn build(root: &Path, name: &str, lang: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    build_kind(root, name, lang, "balancer", edit)
}

/// [`build`] for a plugin of `kind`.
fn build_kind(root: &Path, name: &str, lang: &str, kind: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let project = root.join(name);
    let out = Command::new(sextant_bin())
        .args(["plugin", "new", name, "--lang", lang, "--kind", kind, "--dir"])
        .arg(&project)
        .output()
        .expect("sextant plugin new");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    edit(&project);
    let tools = tools();
    match lang {
        "rust" => {
            // The template builds with cargo alone; one target directory for every run.
            let target = PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/sextant/template-target");
            let command = readme_command(&project, "cargo build");
            let out = Command::new("sh")
                .args(["-c", &command])
                .current_dir(&project)
                .env("CARGO_TARGET_DIR", &target)
                // The repository's pinned compiler: the one `scripts/setup` gave the
                // wasm32-wasip2 target (a project outside the repository would get the default).
                .env("RUSTUP_TOOLCHAIN", pinned_toolchain())
                .output()
                .expect("cargo");
            assert!(out.status.success(), "`{command}` failed:\n{}", String::from_utf8_lossy(&out.stderr));
            target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")))
        }
        "python" => {
            sh(&project, &readme_command(&project, "componentize-py"), &tools.join("py/bin"));
            project.join(format!("{name}.wasm"))
        }
        "js" => {
            // The README says `npm install && npm run build`; the install is the pinned
            // componentize-js already in the tool cache, so run the build script itself.
            let package: Value =
                serde_json::from_str(&std::fs::read_to_string(project.join("package.json")).unwrap()).unwrap();
            let script = package["scripts"]["build"].as_str().expect("a build script");
            sh(&project, script, &tools.join("js/node_modules/.bin"));
            project.join(format!("{name}.wasm"))
        }
        other => panic!("no language {other}"),
    }
}

/// Adds `added` after `line` in a template's source (which must have that line).
fn insert_after(file: &Path, line: &str, added: &str) {
    let source = std::fs::read_to_string(file).unwrap();
    assert!(source.contains(line), "{} has no line {line:?}", file.display());
    std::fs::write(file, source.replacen(line, &format!("{line}{added}"), 1)).unwrap();
}

fn load(server: &Server, file: &Path, name: &str, config: &str) -> std::process::Output {
    let file = file.to_str().unwrap();
    run(server, &["plugin", "load", file, "--name", name, "--bind", SERVICE, "--config", config])
}

fn loaded(server: &Server, file: &Path, name: &str, config: &str) {
    let out = load(server, file, name, config);
    assert!(
        out.status.success(),
        "loading {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn register(server: &Server, port: u16, weight: u32) {
    let (port, weight) = (port.to_string(), weight.to_string());
    let args = ["register", "--persistent", "--service", SERVICE, "--addr"];
    let addr = format!("127.0.0.1:{port}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&[&addr, "--weight", &weight]);
    let out = run(server, &all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `n` picks over one QUIC connection: how many landed on each port.
fn spread(client: &sextant_quic::client::Client, rt: &tokio::runtime::Runtime, n: usize) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let port = pick(client, rt).unwrap_or_else(|e| panic!("pick {i} of {n}: {e}"));
        *counts.entry(port).or_default() += 1;
    }
    counts
}

fn pick(client: &sextant_quic::client::Client, rt: &tokio::runtime::Runtime) -> Result<u16, String> {
    let request = sextant_proto::Request::Pick {
        service: sextant_core::ServiceKey::parse(SERVICE).unwrap(),
        hash_key: None,
        headers: Vec::new(),
        tried: Vec::new(),
    };
    match rt.block_on(client.request(request)) {
        Ok(sextant_proto::Response::Picked { instance: Some(i), .. }) => Ok(i.port),
        other => Err(format!("{other:?}")),
    }
}

fn connect(server: &Server) -> (sextant_quic::client::Client, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let options = sextant_quic::client::ClientOptions::new(vec![server.quic], server.data_dir.join("tls/ca.pem"));
    let client = rt.block_on(sextant_quic::client::Client::connect(options)).expect("QUIC client");
    (client, rt)
}

/// The balancer slot of SERVICE: (plugin, sha256, traps, fallbacks).
fn slot(server: &Server) -> (String, String, u64, u64) {
    let out = run(server, &["plugin", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("plugin list --json");
    let s = list["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == SERVICE && s["kind"] == "balancer").cloned())
        .unwrap_or_else(|| panic!("no balancer slot: {list}"));
    let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
    (text("plugin"), text("sha256"), s["traps"].as_u64().unwrap(), s["fallbacks"].as_u64().unwrap())
}

fn sha256(file: &Path) -> String {
    sextant_core::sha256_hex(&std::fs::read(file).unwrap())
}

#[test]
fn python_javascript_and_rust_balancers_from_the_templates_load_and_swap_under_picks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let rust = build(root, "least-rust", "rust", |_| {});
    let python = build(root, "least-python", "python", |_| {});
    let js = build(root, "least-js", "js", |_| {});
    for file in [&python, &js] {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(
            size > sextant_proto::ARTIFACT_CHUNK as u64,
            "{} is {size} bytes: not a chunked upload",
            file.display()
        );
    }

    let server = Server::start(&root.join("data"));
    // Weights 100, 300, 200: with nothing in flight (a server carries no traffic) the
    // template's per-request policy, fewest in flight per unit of weight, always picks the
    // heaviest; its table mode spreads by weight.
    for (port, weight) in [(9001, 100), (9002, 300), (9003, 200)] {
        register(&server, port, weight);
    }
    let (client, rt) = connect(&server);
    for (file, name) in [(&rust, "least-rust"), (&python, "least-python"), (&js, "least-js")] {
        loaded(&server, file, name, "{}");
        assert_eq!(spread(&client, &rt, 30), BTreeMap::from([(9002, 30)]), "{name}, per request: the heaviest");
        // (A server makes a service's slot on its first pick.)
        assert_eq!(slot(&server).1, sha256(file), "{name} is active");
        loaded(&server, file, name, r#"{"mode": "table"}"#);
        let counts = spread(&client, &rt, 60);
        assert_eq!(counts.len(), 3, "{name}, table mode: every endpoint: {counts:?}");
        assert!(counts[&9002] > counts[&9003] && counts[&9003] > counts[&9001], "{name}, table: by weight: {counts:?}");
        let out = run(&server, &["plugin", "delete", name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // The swap: one record, Rust → Python → JavaScript → Rust, while 8 threads pick.
    let stop = Arc::new(AtomicBool::new(false));
    let (picked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    loaded(&server, &rust, "lb", "{}");
    let pickers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, picked, failed) = (Arc::clone(&stop), Arc::clone(&picked), Arc::clone(&failed));
            let (client, rt) = connect(&server);
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Relaxed) {
                    match pick(&client, &rt) {
                        Ok(_) => picked.fetch_add(1, Relaxed),
                        Err(e) => {
                            errors.push(e);
                            failed.fetch_add(1, Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    let mut at_swap = Vec::new();
    for (file, plugin) in [(&python, "python"), (&js, "js"), (&rust, "rust")] {
        loaded(&server, file, "lb", "{}");
        at_swap.push(picked.load(Relaxed));
        assert_eq!(slot(&server).1, sha256(file), "{plugin} is active after its load");
    }
    // Picks continue on the last version too.
    let last = picked.load(Relaxed);
    crate::support::wait_until("picks on the last version", || picked.load(Relaxed) > last + 100);
    stop.store(true, Relaxed);
    let errors: Vec<String> = pickers.into_iter().flat_map(|p| p.join().unwrap()).collect();
    assert!(errors.is_empty(), "{} failed picks, the first: {:?}", errors.len(), errors.first());
    assert!(at_swap.windows(2).all(|w| w[1] > w[0]), "picks went on during every swap: {at_swap:?}");
    let (plugin, _, traps, fallbacks) = slot(&server);
    assert_eq!((plugin.as_str(), traps, fallbacks), ("lb", 0, 0), "no plugin call failed");
    eprintln!(
        "languages: {} picks by 8 threads, 0 failed, across Rust → Python → JavaScript → Rust",
        picked.load(Relaxed)
    );

    // An exception in init: refused, naming it; the active plugin keeps serving.
    let raising_python = build(root, "raising-python", "python", |p| {
        let line = "            mode = json.loads(config).get(\"mode\", \"per-request\")\n";
        insert_after(&p.join("app.py"), line, "            raise ValueError(\"no such thing as a free pick\")\n");
    });
    let raising_js = build(root, "raising-js", "js", |p| {
        let line = "      wanted = JSON.parse(config).mode ?? 'per-request';\n";
        insert_after(&p.join("plugin.js"), line, "      throw new RangeError('no such thing as a free pick');\n");
    });
    // A JavaScript init that never returns: stopped at its deadline.
    let looping_js = build(root, "looping-js", "js", |p| {
        insert_after(&p.join("plugin.js"), "    mode = wanted;\n", "    for (;;) {}\n");
    });
    let free_pick = ["no such thing as a free pick"].as_slice();
    for (file, expected) in [
        (&raising_python, [free_pick, &["ValueError"]].concat()),
        (&raising_js, [free_pick, &["RangeError"]].concat()),
        (&looping_js, vec!["init", "deadline"]),
    ] {
        let out = load(&server, file, "lb", "{}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "refused: {stderr}");
        assert!(expected.iter().all(|e| stderr.contains(e)), "{stderr}");
        assert_eq!(slot(&server).1, sha256(&rust), "the active plugin stays");
        assert_eq!(spread(&client, &rt, 5), BTreeMap::from([(9002, 5)]), "and serves");
    }
}

/// The health and scheduler templates of every language build with their README's command
/// and load as they are; each checks its configuration (a bad one is refused, naming it).
#[test]
fn health_and_scheduler_templates_of_every_language_load_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = Server::start(&root.join("data"));
    register(&server, 9001, 100);
    register(&server, 9002, 100);
    let mut names = Vec::new();
    for lang in ["rust", "python", "js"] {
        for (kind, bad_config, complaint) in [
            ("health", r#"{"unhealthy_after": 0}"#, "unhealthy_after must be a positive integer"),
            ("scheduler", r#"{"max_error_share": 2}"#, "max_error_share must be a number from 0 to 1"),
        ] {
            let name = format!("{kind}-{lang}");
            let file = build_kind(root, &name, lang, kind, |_| {});
            let path = file.to_str().unwrap();
            let args = ["plugin", "load", path, "--name", &name, "--kind", kind, "--bind", SERVICE];
            let bad = run(&server, &[&args[..], &["--config", bad_config]].concat());
            let stderr = String::from_utf8_lossy(&bad.stderr);
            assert_eq!(bad.status.code(), Some(5), "{name} with {bad_config}: {stderr}");
            assert!(stderr.contains(complaint), "{name}: {stderr}");
            let out = run(&server, &args);
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            names.push(name);
        }
    }
    let out = run(&server, &["plugin", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("plugin list --json");
    let mut stored: Vec<String> =
        list["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    stored.sort();
    names.sort();
    assert_eq!(stored, names);
}
