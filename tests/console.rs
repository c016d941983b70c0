//! The web console (`/ui`) in a real browser (headless Chromium through ChromeDriver):
//! every page loads without a console error and shows what the registry holds; a change
//! made from the CLI appears without a reload; draining an instance in the console takes it
//! out of a running `sextant gateway`'s picks; bad input gets the API's typed error beside
//! the field and changes nothing; nothing a record holds runs as markup; without a token, or
//! with a reader's, nothing can be written; a plugin loaded from the browser reaches the
//! gateway, is rebound and deleted there, and one that is not a component is refused beside
//! the form; a gateway's live traffic per endpoint and its plugin versions' calls show; a
//! strategy benchmark's results show as tables and plots. Screenshots go to the target
//! directory's `console-screenshots`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sextant_gateway::backend::{Backend, Behavior};

use crate::browser::Browser;
use crate::gateway::Gateway;
use crate::support::{Server, free_port, http, instance, run, wait_until};

const SERVICE: &str = "shop/web/orders";

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The console's errors so far, but for the refused writes a test provoked on purpose
/// (Chromium logs every 4xx answer to a fetch).
fn errors(browser: &Browser, provoked: &[u16]) -> Vec<String> {
    browser
        .console()
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .map(|(_, message)| message)
        .filter(|m| !provoked.iter().any(|s| m.contains(&format!("status of {s}"))))
        .collect()
}

fn enabled(server: &Server, id: &str) -> Value {
    let (code, view) = server.get(&format!("/v1/services/{SERVICE}"));
    assert_eq!(code, 200, "{view}");
    view["instances"].as_array().unwrap().iter().find(|i| i["id"] == id).cloned().unwrap_or(Value::Null)
}

/// Requests through the gateway until a round of 20 reaches no drained backend; then 40
/// more must all reach `a`.
fn only_a_is_picked(gateway: &Gateway, a: &Backend, b: &Backend) {
    let send = |n: usize| {
        for _ in 0..n {
            let r = http().get(&format!("http://{}/orders", gateway.addr)).call().unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = b.served();
        send(20);
        if b.served() == before {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway still sends to the drained instance\n{}", gateway.log());
    }
    let (a_before, b_before) = (a.served(), b.served());
    send(40);
    assert_eq!((a.served() - a_before, b.served() - b_before), (40, 0), "every request to the instance left in");
}

/// Two backends, `a` and `b`, and a server where they are instances of [`SERVICE`]
/// (`shape` adds to each registration).
fn two_backends(
    dir: &std::path::Path,
    shape: impl Fn(&mut Value),
) -> (tokio::runtime::Runtime, Backend, Backend, Server) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let a = runtime.block_on(Backend::start("a", Behavior::default())).unwrap();
    let b = runtime.block_on(Backend::start("b", Behavior::default())).unwrap();
    let server = Server::start(&dir.join("data"));
    for (id, backend) in [("a", &a), ("b", &b)] {
        let mut body = instance(SERVICE, id, backend.addr().port(), false);
        shape(&mut body);
        assert_eq!(server.post("/v1/instances", &body).0, 200);
    }
    (runtime, a, b, server)
}

#[test]
fn the_console_shows_the_registry_live_and_its_drain_takes_an_instance_out_of_the_gateways_picks() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, a, b, server) = two_backends(dir.path(), |body| {
        body["zone"] = "zone-a".into();
        body["metadata"] =
            json!({"owner": "team-orders", "note": "<script>document.title='pwned'</script><img src=x>"});
    });
    assert_eq!(server.put_text("/v1/configs/shop/web/gateway.json", r#"{"balancer": "round-robin"}"#).0, 200);
    let config = dir.path().join("gateway.json");
    let document =
        json!({"gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}]}, "balancer": "round-robin"});
    std::fs::write(&config, document.to_string()).unwrap();
    let gateway = Gateway::spawn(&server, dir.path(), free_port(), &["--config", config.to_str().unwrap()]);
    wait_until("the gateway routes", || {
        http().get(&format!("http://{}/orders", gateway.addr)).call().is_ok_and(|r| r.status() == 200)
    });

    let browser = Browser::start();
    let shots = screenshots();
    let ui = |hash: &str| server.url(&format!("/ui#/{hash}"));
    let pages: [(&str, &str, &[&str]); 7] = [
        ("", "overview", &["Overview", "Gateways", "shop/edge/gateway"]),
        ("services", "services", &[SERVICE, "Healthy / routable"]),
        ("services/shop/web/orders", "service", &["team-orders", "zone-a", "persistent"]),
        ("gateways", "gateways", &["shop/edge/gateway", "zone-a"]),
        ("plugins", "plugins", &["Records", "What each host runs"]),
        ("configs", "configs", &["shop/web/gateway.json"]),
        ("configs/shop/web/gateway.json", "config", &["Version "]),
    ];
    for (hash, name, shows) in pages {
        browser.goto(&ui(hash));
        let wanted = serde_json::to_string(shows).unwrap();
        browser.wait(
            &format!("{name}: {shows:?}"),
            &format!(
                "const t = document.getElementById('main').textContent; return document.getElementById('banner').hidden && {wanted}.every(w => t.includes(w));"
            ),
        );
        browser.screenshot(&shots.join(format!("{name}.png")));
        let errors = errors(&browser, &[]);
        assert!(errors.is_empty(), "{name}: console errors {errors:?}");
    }
    assert_eq!(
        browser.run("return document.getElementById('token-form') !== null && document.title", &[]),
        "sextant console"
    );

    // A metadata value is text: shown as written, nothing of it runs or loads.
    browser.goto(&ui("services/shop/web/orders"));
    browser.wait("the service's instances", "return document.querySelector('tr[data-instance=\"b\"]') !== null");
    let zone = "const r = document.querySelector('tr[data-zone=\"zone-a\"]'); return r === null ? null : [r.children[1].textContent, r.children[2].textContent]";
    assert_eq!(browser.run(zone, &[]), json!(["2", "2"]), "the service's zones: {}", browser.text());
    assert!(browser.text().contains("note=<script>document.title='pwned'</script><img src=x>"), "{}", browser.text());
    assert_eq!(browser.run("return document.querySelectorAll('main script, main img').length", &[]), 0);
    assert_eq!(browser.run("return document.title", &[]), "sextant console");

    // An instance registered from the CLI appears on the open page, without a reload.
    browser.run("window.__same_page = true; return true", &[]);
    let out = run(&server, &["register", "--service", SERVICE, "--addr", "127.0.0.1:9", "--id", "c", "--persistent"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    browser.wait(
        "the instance registered from the CLI",
        "return document.querySelector('tr[data-instance=\"c\"]') !== null",
    );
    assert_eq!(browser.run("return window.__same_page === true", &[]), true, "no reload happened");
    let out = run(&server, &["deregister", "--service", SERVICE, "--id", "c"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    browser.wait("c gone", "return document.querySelector('tr[data-instance=\"c\"]') === null");

    // Drain `b` in the console: the registry has it disabled, the gateway stops picking it.
    browser.click("button[data-action=\"drain\"][data-instance=\"b\"]");
    wait_until("the registry has b drained", || enabled(&server, "b")["enabled"] == false);
    browser.wait(
        "b drained on the page",
        "return document.querySelector('button[data-action=\"enable\"][data-instance=\"b\"]') !== null",
    );
    browser.screenshot(&shots.join("service-drained.png"));
    only_a_is_picked(&gateway, &a, &b);
    let errors_so_far = errors(&browser, &[]);
    assert!(errors_so_far.is_empty(), "console errors {errors_so_far:?}");

    // A weight that is not a number: the API's typed error beside the field, nothing changed.
    browser.fill("tr[data-instance=\"a\"] input.weight", "lots");
    browser.click("tr[data-instance=\"a\"] button.ghost");
    browser.wait(
        "the weight's error",
        "const e = document.querySelector('tr[data-instance=\"a\"] .error'); return e !== null && e.textContent.startsWith('invalid: ');",
    );
    assert_eq!(enabled(&server, "a")["weight"], 100);
    // Out of range: refused by the same rule as every client's.
    browser.fill("tr[data-instance=\"a\"] input.weight", "20000");
    browser.click("tr[data-instance=\"a\"] button.ghost");
    browser.wait(
        "the range error",
        "const e = document.querySelector('tr[data-instance=\"a\"] .error'); return e !== null && e.textContent.includes('10000');",
    );
    assert_eq!(enabled(&server, "a")["weight"], 100);

    // A config entry edited in the console while someone else changed it: refused as a
    // conflict, beside the button; theirs stays. An oversized one: refused, nothing changed.
    browser.goto(&ui("configs/shop/web/gateway.json"));
    browser.wait(
        "the entry's content",
        "const t = document.querySelector('main textarea'); return t !== null && t.value.includes('round-robin');",
    );
    browser.fill("main textarea", r#"{"balancer": "maglev"}"#);
    let out = run(&server, &["config", "put", "shop/web/gateway.json", "--content", r#"{"balancer": "peak-ewma"}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    browser.click("main .row button");
    browser.wait("the conflict", "return document.querySelector('main .error').textContent.startsWith('conflict: ')");
    assert!(server.text("/v1/configs/shop/web/gateway.json").contains("peak-ewma"), "theirs stays");
    browser.screenshot(&shots.join("config-conflict.png"));

    // The history: the version the CLI replaced is listed, shown, and restored over the
    // current one, which then goes into the history in turn.
    let before = server.get("/v1/configs/shop/web/gateway.json").1;
    let replaced = before["history"][0]["version"].as_str().expect("the replaced version in the history").to_owned();
    // Away and back: the page drops the edit it kept.
    browser.goto(&ui("configs"));
    browser.wait(
        "the entries",
        "return document.querySelector('main a[href=\"#/configs/shop/web/gateway.json\"]') !== null",
    );
    browser.goto(&ui("configs/shop/web/gateway.json"));
    let row = format!("tr[data-version=\"{replaced}\"]");
    browser.wait("the history", &format!("return document.querySelector('{}') !== null", row.replace('\'', "\\'")));
    browser.click(&format!("{row} button[data-action=\"view\"]"));
    browser.wait(
        "the old version",
        "return document.querySelector('#old-version pre').textContent.includes('round-robin')",
    );
    browser.click(&format!("{row} button[data-action=\"restore\"]"));
    wait_until("the old version restored", || server.text("/v1/configs/shop/web/gateway.json").contains("round-robin"));
    let after = server.get("/v1/configs/shop/web/gateway.json").1;
    assert_eq!(after["version"], replaced.as_str());
    assert_eq!(after["history"][0]["version"], before["version"], "what was replaced is first in the history");
    browser.screenshot(&shots.join("config-history.png"));

    // Gray release from the page: a rule that matches everyone is refused beside the form;
    // a candidate for env=canary is served to that reader only, then promoted.
    let candidate = r#"{"balancer": "least-request"}"#;
    browser.wait("the candidate form", "return document.querySelector('#candidate textarea') !== null");
    browser.fill("#candidate textarea", candidate);
    browser.fill("#candidate input", "percent=100");
    browser.click("#candidate button[data-action=\"beta\"]");
    browser.wait(
        "the rule's error",
        "const e = document.querySelector('#candidate .error').textContent; return e.startsWith('invalid: ') && e.includes('1..=99')",
    );
    assert!(server.get("/v1/configs/shop/web/gateway.json").1["beta"].is_null(), "nothing written");
    browser.fill("#candidate textarea", candidate);
    browser.fill("#candidate input", "env=canary");
    browser.click("#candidate button[data-action=\"beta\"]");
    wait_until("the candidate written", || !server.get("/v1/configs/shop/web/gateway.json").1["beta"].is_null());
    let as_reader = |labels: &str| server.get(&format!("/v1/configs/shop/web/gateway.json?labels={labels}")).1;
    assert_eq!(as_reader("env=canary")["content"], candidate);
    assert_eq!(as_reader("env=prod")["content"], after["content"], "the other readers keep the stable version");
    browser.wait(
        "the candidate shown",
        "const c = document.querySelector('#candidate'); return c !== null && c.textContent.includes('env=canary') && c.querySelector('pre') !== null",
    );
    browser.screenshot(&shots.join("config-candidate.png"));
    browser.click("#candidate button[data-action=\"promote\"]");
    wait_until("the candidate promoted", || server.get("/v1/configs/shop/web/gateway.json").1["content"] == candidate);
    assert!(server.get("/v1/configs/shop/web/gateway.json").1["beta"].is_null());
    // The list page's form, by its labels (the entry's page has inputs of its own: a wait for
    // any input could pass before the list is drawn).
    browser.goto(&ui("configs"));
    let (key, content) = ("input[aria-label=\"new entry key\"]", "textarea[aria-label=\"new entry content\"]");
    browser.wait("the new-entry form", &format!("return document.querySelector('{key}') !== null"));
    let create = |name: &str, filler: &str| {
        browser.fill(key, name);
        browser.run(
            &format!("const t = document.querySelector('{content}'); t.value = {filler}; t.dispatchEvent(new Event('input')); return true"),
            &[],
        );
        browser.click("main .row button");
    };
    create("shop/web/huge", "'x'.repeat(1100000)");
    browser.wait("the size error", "return document.querySelector('main .error').textContent.startsWith('invalid: ')");
    assert_eq!(server.get("/v1/configs/shop/web/huge").0, 404, "nothing written");
    // A name the registry refuses: its rule beside the field.
    create("shop/web/no spaces", "'x'");
    browser.wait(
        "the name error",
        "const e = document.querySelector('main .error').textContent; return e.startsWith('invalid: ') && e.includes('no spaces')",
    );
    assert_eq!(server.get("/v1/configs/shop/web/gateway.json").1["content"], candidate, "nothing else written");
    let left = errors(&browser, &[400, 409]);
    assert!(left.is_empty(), "console errors beyond the refusals provoked: {left:?}");
    eprintln!("console: screenshots in {}", shots.display());
}

const ACL: &str = r#"{ "tokens": [
    { "name": "reader", "token": "read-all", "namespaces": { "*": "read" } },
    { "name": "ops", "token": "admin-all", "namespaces": { "*": "admin" } }
] }"#;

#[test]
fn with_an_access_file_the_console_needs_a_token_and_a_reader_cannot_write_nor_another_origin() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.json");
    std::fs::write(&acl, ACL).unwrap();
    let server = Server::try_start_with(&dir.path().join("data"), &["--acl", acl.to_str().unwrap()])
        .unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log));
    let ops = Some("admin-all");
    let (code, answer) = server.call("POST", "/v1/instances", ops, Some(&instance(SERVICE, "a", 9001, false)));
    assert_eq!(code, 200, "{answer}");

    let browser = Browser::start();
    browser.goto(&server.url("/ui#/services/shop/web/orders"));
    browser.wait(
        "the token banner",
        "return document.getElementById('banner').textContent.includes('needs an access token')",
    );
    assert_eq!(browser.run("return document.querySelector('tr[data-instance]') === null", &[]), true, "nothing shown");
    // The page's own origin, no token: refused.
    let status = browser.run_async(
        "const done = arguments[arguments.length - 1]; fetch('/v1/instances', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({})}).then(r => done(r.status));",
    );
    assert_eq!(status, 401);

    // A reader's token: the registry shows, a drain is refused beside the button.
    browser.fill("#token", "read-all");
    browser.click("#token-form button[type=submit]");
    browser.wait("the instance", "return document.querySelector('tr[data-instance=\"a\"]') !== null");
    browser.click("button[data-action=\"drain\"][data-instance=\"a\"]");
    browser.wait(
        "the refusal",
        "const e = document.querySelector('tr[data-instance=\"a\"] .error'); return e.textContent.startsWith('forbidden: ');",
    );
    let (_, view) = server.call("GET", "/v1/services/shop/web/orders", ops, None);
    assert_eq!(view["instances"][0]["enabled"], true, "nothing changed");
    browser.screenshot(&screenshots().join("reader-refused.png"));

    // Another origin cannot write, whatever token it holds.
    let response = http()
        .put(&server.url("/v1/configs/shop/web/x"))
        .header("Authorization", "Bearer admin-all")
        .header("Origin", "http://evil.example")
        .send("{}")
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(server.call("GET", "/v1/configs/shop/web/x", ops, None).0, 404, "nothing written");
}

fn plugin_record(server: &Server, name: &str) -> Option<Value> {
    let (code, list) = server.get("/v1/plugins");
    assert_eq!(code, 200, "{list}");
    list["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
}

#[test]
fn from_the_console_a_plugin_is_loaded_bound_and_deleted_a_gateways_traffic_shows_and_a_benchmark_reads() {
    let dir = tempfile::tempdir().unwrap();
    // In the gateway's zone (its default, zone-a): its traffic per zone is local.
    let (_runtime, a, _b, server) = two_backends(dir.path(), |body| body["zone"] = "zone-a".into());
    let config = dir.path().join("gateway.json");
    let document = json!({"gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}]}, "balancer": "weighted"});
    std::fs::write(&config, document.to_string()).unwrap();
    let gateway = Gateway::spawn(&server, dir.path(), free_port(), &["--config", config.to_str().unwrap()]);
    let send = |n: usize| {
        for _ in 0..n {
            let r = http().get(&format!("http://{}/orders", gateway.addr)).call().unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    wait_until("the gateway routes", || {
        http().get(&format!("http://{}/orders", gateway.addr)).call().is_ok_and(|r| r.status() == 200)
    });
    let browser = Browser::start();
    let shots = screenshots();
    let ui = |hash: &str| server.url(&format!("/ui#/{hash}"));

    // The plugins page afresh (from another page: the same address keeps the form's state).
    let open_plugins = || {
        browser.goto(&ui("configs"));
        browser.wait("the configs page", "return document.querySelector('#nav a.on[data-page=\"configs\"]') !== null");
        browser.goto(&ui("plugins"));
        browser.wait("the load form", "return document.getElementById('load-file') !== null");
    };

    // Something that is not a component: the API's refusal beside the form, nothing stored.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    open_plugins();
    browser.choose_files("#load-file", &[&junk]);
    browser.fill("#load-binding", SERVICE);
    browser.click("#load");
    browser.wait(
        "the refusal",
        "return document.getElementById('load-error').textContent.startsWith('plugin_rejected: ')",
    );
    assert_eq!(plugin_record(&server, "junk"), None, "nothing stored");

    // An invalid name, then a configuration that is not JSON: each refused beside the form.
    let artifact = std::path::Path::new(sextant_plugin_artifacts::path("round-robin").expect("artifact built"));
    for (name, config, says) in
        [("no spaces", "", "invalid: "), ("lb", "{not json", "invalid: plugin configuration is not JSON")]
    {
        open_plugins();
        browser.choose_files("#load-file", &[artifact]);
        browser.fill("#load-name", name);
        browser.fill("#load-binding", SERVICE);
        if !config.is_empty() {
            browser.fill("#load-config", config);
        }
        browser.click("#load");
        browser.wait(
            &format!("the refusal of {name:?} {config:?}"),
            &format!("return document.getElementById('load-error').textContent.startsWith({})", json!(says)),
        );
        assert_eq!(server.get("/v1/plugins").1["plugins"], json!([]), "nothing stored");
    }

    // The round-robin component, loaded and bound from the browser: the gateway runs it.
    open_plugins();
    browser.choose_files("#load-file", &[artifact]);
    browser.fill("#load-name", "lb");
    browser.fill("#load-binding", SERVICE);
    browser.click("#load");
    browser.wait("the record", "return document.querySelector('tr[data-plugin=\"lb\"]') !== null");
    let record = plugin_record(&server, "lb").expect("stored");
    assert_eq!((&record["kind"], &record["binding"]), (&Value::from("balancer"), &Value::from(SERVICE)));
    let sha = record["sha256"].as_str().unwrap().to_owned();
    wait_until("the gateway runs lb", || {
        let (_, list) = server.get("/v1/plugins");
        list["hosts"].as_array().unwrap().iter().any(|h| {
            h["plugin"] == "lb"
                && h["host"].as_str().is_some_and(|s| s.starts_with("shop/edge/gateway/"))
                && h["state"].as_str().is_some_and(|s| s.starts_with("active"))
        })
    });
    // Its calls on the gateway, per version, on the plugins page.
    send(20);
    open_plugins();
    browser.wait(
        "lb's calls on the gateway",
        &format!(
            "const r = document.querySelector('tr[data-version=\"{sha}\"]'); return r !== null && Number(r.children[4].textContent) > 0"
        ),
    );
    browser.screenshot(&shots.join("plugins-loaded.png"));

    // A second version rolled out from the form (a shadow step first): the page shows the
    // plan, the step, and the gateway's figures for both versions; aborted from its row.
    let candidate = std::path::Path::new(sextant_plugin_artifacts::path("ring-hash").expect("artifact built"));
    open_plugins();
    browser.choose_files("#load-file", &[candidate]);
    browser.fill("#load-name", "lb");
    browser.fill("#load-binding", SERVICE);
    browser.fill("#load-rollout", "shadow:10m,50%:10m");
    browser.click("#load");
    wait_until("the rollout runs", || plugin_record(&server, "lb").is_some_and(|r| r["rollout"]["state"] == "shadow"));
    let reported = "const r = document.querySelector('tr[data-host^=\"shop/edge/gateway/\"]'); return r !== null && Number(r.children[6].textContent) > 0";
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        send(10);
        if browser.run(reported, &[]) == true {
            break;
        }
        assert!(Instant::now() < deadline, "no shadow figures from the gateway: {}", browser.text());
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = browser.text();
    assert!(text.contains("shadow:10m") && text.contains("50%:10m"), "{text}");
    browser.screenshot(&shots.join("plugins-rollout.png"));
    browser.click("button[data-action=\"abort\"][data-plugin=\"lb\"]");
    wait_until("the rollout aborted", || {
        plugin_record(&server, "lb").is_some_and(|r| r["rollout"]["state"] == "aborted" && r["sha256"] == sha.as_str())
    });

    // Bound to the namespace instead, from its row.
    browser.fill("tr[data-plugin=\"lb\"] input.binding", "shop");
    browser.click("button[data-action=\"bind\"][data-plugin=\"lb\"]");
    wait_until("lb bound to the namespace", || plugin_record(&server, "lb").is_some_and(|r| r["binding"] == "shop"));

    // A gateway's live traffic: rates, quantiles and errors per endpoint, while traffic flows.
    browser.goto(&ui("gateways"));
    browser.wait("the gateway's link", "return document.querySelector('main a[href^=\"#/gateways/\"]') !== null");
    browser.click("main a[href^=\"#/gateways/\"]");
    let row = format!("tr[data-endpoint=\"{}\"]", a.addr());
    let rated = format!(
        "const r = document.querySelector('{}'); return r !== null && Number(r.children[3].textContent) > 0 && r.children[4].textContent.endsWith(' ms') && r.children[1].textContent === 'a'",
        row.replace('\'', "\\'")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        send(10);
        if browser.run(&rated, &[]) == true {
            break;
        }
        assert!(Instant::now() < deadline, "no live rate for a: {}", browser.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let zone = "const r = document.querySelector('tr[data-zone=\"zone-a\"]'); return r !== null && r.children[2].textContent === 'local' && Number(r.children[4].textContent) > 0";
    browser.wait("the gateway's traffic per zone", zone);
    browser.screenshot(&shots.join("gateway-traffic.png"));

    // Deleted: two clicks, and the gateway goes back to its configured balancer.
    browser.goto(&ui("plugins"));
    browser.wait(
        "lb's row",
        "return document.querySelector('button[data-action=\"delete\"][data-plugin=\"lb\"]') !== null",
    );
    browser.click("button[data-action=\"delete\"][data-plugin=\"lb\"]");
    assert!(plugin_record(&server, "lb").is_some(), "one click deletes nothing");
    browser.click("button[data-action=\"delete\"][data-plugin=\"lb\"]");
    wait_until("lb deleted", || plugin_record(&server, "lb").is_none());
    browser.wait("lb's row gone", "return document.querySelector('tr[data-plugin=\"lb\"]') === null");

    // A navigation while a render is under way is drawn after it, not dropped: the render of
    // the overview waits on its requests (held here), the lab is asked for meanwhile, then the
    // requests go. First the page catches up with the registry (the delete's revision), so no
    // change of revision redraws it afterwards.
    let revision = browser.run_async(
        "const done = arguments[arguments.length - 1]; \
         fetch('/status').then((r) => r.json()).then((s) => done(String(s.revision)));",
    );
    let revision = revision.as_str().expect("the revision").to_owned();
    browser.wait(
        "the page caught up with the registry",
        &format!("return document.body.dataset.revision === '{revision}'"),
    );
    browser.run(
        "window.__held = []; window.__fetch = window.fetch; \
         window.fetch = (...a) => new Promise((done) => window.__held.push(() => done(window.__fetch(...a)))); \
         location.hash = '#/overview'; return true;",
        &[],
    );
    browser.wait("the overview's render waiting on its requests", "return window.__held.length > 0");
    browser.run("location.hash = '#/lab'; return true;", &[]);
    browser.run("window.fetch = window.__fetch; window.__held.splice(0).forEach((go) => go()); return true;", &[]);
    browser.wait("the lab, asked for during a render", "return document.getElementById('lab-files') !== null");

    // A strategy benchmark's results, read by the page from the files the bench wrote.
    let out = dir.path().join("bench");
    let ran = std::process::Command::new(crate::support::sextant_bin())
        .args(["bench", "strategies", "--scenarios", "slow-node", "--strategies", "round-robin,peak-ewma"])
        .args(["--seeds", "1", "--scale", "0.05", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "svg"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("cdf-slow-node.svg")), "{files:?}");
    browser.goto(&ui("lab"));
    browser.wait("the lab", "return document.getElementById('lab-files') !== null");
    browser.choose_files("#lab-files", &files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    browser.wait(
        "the results",
        "return document.querySelector('tr[data-strategy=\"peak-ewma\"]') !== null && document.querySelector('tr[data-strategy=\"round-robin\"]') !== null",
    );
    browser.wait(
        "the plots drawn",
        "const i = [...document.querySelectorAll('img.plot')]; return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0)",
    );
    browser.screenshot(&shots.join("lab.png"));
    let left = errors(&browser, &[400, 422]);
    assert!(left.is_empty(), "console errors beyond the refusal provoked: {left:?}");
}
