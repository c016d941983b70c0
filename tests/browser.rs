//! A headless Chromium driven through ChromeDriver's WebDriver API (Debian's `chromium` and
//! `chromium-driver`, which `scripts/setup` installs): pages, clicks, scripts, the browser's
//! console log and screenshots, for the console's tests. A machine without them fails the
//! test, loudly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{free_port, http};

/// The WebDriver name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
}

pub(crate) struct Browser {
    driver: Child,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium (1400×900) with a fresh profile.
    pub(crate) fn start() -> Self {
        let chromedriver = on_path("chromedriver").expect("chromedriver not found: run `bash scripts/setup`");
        let chromium = on_path("chromium").expect("chromium not found: run `bash scripts/setup`");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Self { driver, base: format!("http://127.0.0.1:{port}"), _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http().get(&format!("{}/status", browser.base)).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let session = browser.call("POST", "/session", Some(&capabilities));
        let id = session["sessionId"].as_str().expect("a WebDriver session").to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|(status, value)| panic!("WebDriver {method} {path}: {status} {value}"))
    }

    /// Like `call`, but a WebDriver error is returned (status, body), not a panic.
    fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, (u16, Value)> {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut response = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            (_, Some(b)) => agent.post(&url).send_json(b),
            (_, None) => agent.post(&url).send_json(json!({})),
        }
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status().as_u16();
        let value: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null);
        if status >= 400 {
            return Err((status, value));
        }
        Ok(value.get("value").cloned().unwrap_or(value))
    }

    /// Runs `act` on the element `css` selects, looked up again when the page replaced it
    /// meanwhile (the console redraws a page when the registry moves on; an element that is
    /// stale, or detached for a moment, is found anew, up to 10 times).
    fn on_element(&self, css: &str, act: impl Fn(&str) -> Result<Value, (u16, Value)>) {
        let mut last = None;
        for _ in 0..10 {
            let id = self.element(css);
            match act(&id) {
                Ok(_) => return,
                Err((status, value)) => {
                    let error = value["value"]["error"].as_str().unwrap_or_default().to_owned();
                    if !matches!(error.as_str(), "stale element reference" | "element not interactable") {
                        panic!("WebDriver on {css}: {status} {value}");
                    }
                    last = Some(value);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("{css} kept being replaced: {last:?}");
    }

    /// Opens `url` (the page's script runs; waits for the document, not for its fetches).
    pub(crate) fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({"url": url})));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page: its return value.
    pub(crate) fn run(&self, script: &str, args: &[Value]) -> Value {
        self.call("POST", "/execute/sync", Some(&json!({"script": script, "args": args})))
    }

    /// Runs `script` in the page and waits for it to call its last argument: that value.
    pub(crate) fn run_async(&self, script: &str) -> Value {
        self.call("POST", "/execute/async", Some(&json!({"script": script, "args": []})))
    }

    /// Waits (20 s at most) until `script` returns true in the page.
    /// A script that throws (an element it reads is not drawn yet: a fetch still under way)
    /// is not true yet; the last error is shown if it never becomes true.
    pub(crate) fn wait(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let body = json!({"script": script, "args": []});
            let error = match self.try_call("POST", "/execute/sync", Some(&body)) {
                Ok(Value::Bool(true)) => return,
                Ok(_) => None,
                Err((status, value)) if value["value"]["error"] == "javascript error" => Some((status, value)),
                Err((status, value)) => panic!("WebDriver waiting for {what}: {status} {value}"),
            };
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} (last script error: {error:?}); it shows:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of the page's main area and banner.
    pub(crate) fn text(&self) -> String {
        let script = "return document.getElementById('banner').textContent + '\\n' + document.getElementById('main').textContent";
        self.run(script, &[]).as_str().unwrap_or_default().to_owned()
    }

    /// The WebDriver id of the element `css` selects (the first).
    fn element(&self, css: &str) -> String {
        let element = self.call("POST", "/element", Some(&json!({"using": "css selector", "value": css})));
        element[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {element}")).to_owned()
    }

    /// Clicks the element `css` selects (the first).
    pub(crate) fn click(&self, css: &str) {
        self.on_element(css, |id| self.try_call("POST", &format!("/element/{id}/click"), None));
    }

    /// Types `text` into the element `css` selects, after clearing it.
    pub(crate) fn fill(&self, css: &str, text: &str) {
        self.on_element(css, |id| {
            self.try_call("POST", &format!("/element/{id}/clear"), None)?;
            self.try_call("POST", &format!("/element/{id}/value"), Some(&json!({"text": text})))
        });
    }

    /// Chooses `paths` in the file input `css` selects (several: a `multiple` input).
    pub(crate) fn choose_files(&self, css: &str, paths: &[&Path]) {
        let text = paths.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>().join("\n");
        self.on_element(css, |id| self.try_call("POST", &format!("/element/{id}/value"), Some(&json!({"text": text}))));
    }

    /// The browser console's entries since the last call: (level, message).
    pub(crate) fn console(&self) -> Vec<(String, String)> {
        let entries = self.call("POST", "/se/log", Some(&json!({"type": "browser"})));
        entries
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| {
                        (e["level"].as_str().unwrap_or("").to_owned(), e["message"].as_str().unwrap_or("").to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the window to `path`.
    pub(crate) fn screenshot(&self, path: &Path) {
        let data = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http().delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
