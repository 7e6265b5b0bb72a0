//! A real browser for the console's end-to-end tests: Debian's headless Chromium driven
//! over the W3C WebDriver protocol by its `chromedriver`, both installed by
//! `deploy/tools/install.sh`. Each [`Browser`] is its own chromedriver process on a free
//! port with a fresh profile, so tests share nothing.
//!
//! The client is the handful of WebDriver calls the tests need (open a page, find by CSS
//! selector, click, type, read text, run a script, take a screenshot), spoken with the
//! sandbox's own small HTTP client: no browser-automation framework in the build.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http;

/// The switches headless Chromium needs on these machines (no sandbox for root, no GPU,
/// nothing fetched in the background).
pub const CHROMIUM_ARGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The W3C element reference key.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A browser window with its own chromedriver and profile; dropping it closes both.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

fn find_binary(variable: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(variable) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for name in candidates {
        for dir in std::env::split_paths(&path).chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium window of `width`×`height`.
    /// Panics, saying what to install, when either is missing.
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver_path = find_binary("ROLLOUT_CHROMEDRIVER", &["chromedriver"]).expect(
            "chromedriver not found: run deploy/tools/install.sh (Debian's chromium-driver), or set ROLLOUT_CHROMEDRIVER",
        );
        let chromium = find_binary("ROLLOUT_CHROMIUM", &["chromium", "chromium-browser"]).expect(
            "chromium not found: run deploy/tools/install.sh (Debian's chromium), or set ROLLOUT_CHROMIUM",
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let port = rollout_testkit::free_port().expect("free port");
        let log =
            std::fs::File::create(profile.path().join("chromedriver.log")).expect("driver log");
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", driver_path.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        crate::wait_until("chromedriver to answer /status", || async move {
            let response =
                http::request(addr, "GET", "/status", &[], b"", Duration::from_secs(2)).await?;
            response.json()["value"]["ready"]
                .as_bool()
                .filter(|ready| *ready)
        })
        .await;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| (*arg).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ));
        args.push(format!("--window-size={width},{height}"));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", &capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver call; panics on an error answer, naming it.
    async fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        match self.try_call(method, path, body).await {
            Ok(value) => value,
            Err(error) => panic!("webdriver {method} {path}: {error}"),
        }
    }

    /// One WebDriver call: the answer's `value`, or the WebDriver error as text.
    async fn try_call(&self, method: &str, path: &str, body: &Value) -> Result<Value, String> {
        let bytes = if method == "GET" || method == "DELETE" {
            Vec::new()
        } else {
            serde_json::to_vec(body).expect("json")
        };
        let response = http::request(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            &bytes,
            CALL_TIMEOUT,
        )
        .await
        .ok_or_else(|| "no answer from chromedriver".to_owned())?;
        let value = response.json();
        if response.status != 200 {
            return Err(format!(
                "{} {}: {}",
                response.status,
                value["value"]["error"].as_str().unwrap_or("error"),
                value["value"]["message"].as_str().unwrap_or_default()
            ));
        }
        Ok(value["value"].clone())
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.call("POST", &self.path("/url"), &json!({"url": url}))
            .await;
    }

    /// Resizes the window.
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.path("/window/rect"),
            &json!({"width": width, "height": height}),
        )
        .await;
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .try_call(
                "POST",
                &self.path("/element"),
                &json!({"using": "css selector", "value": css}),
            )
            .await
            .ok()?;
        found[ELEMENT_KEY].as_str().map(str::to_owned)
    }

    /// Waits for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> String {
        crate::wait_until(&format!("an element matching {css:?}"), || self.find(css)).await
    }

    /// Clicks the element matching `css` (waiting for it).
    pub async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.call(
            "POST",
            &self.path(&format!("/element/{element}/click")),
            &json!({}),
        )
        .await;
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        self.call(
            "POST",
            &self.path(&format!("/element/{element}/clear")),
            &json!({}),
        )
        .await;
        self.call(
            "POST",
            &self.path(&format!("/element/{element}/value")),
            &json!({"text": text}),
        )
        .await;
    }

    /// Presses Enter on the element matching `css`, as a keyboard user does on a focused
    /// button or field.
    pub async fn press_enter(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.call(
            "POST",
            &self.path(&format!("/element/{element}/value")),
            &json!({"text": "\u{E007}"}),
        )
        .await;
    }

    /// The visible text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        let text = self
            .try_call(
                "GET",
                &self.path(&format!("/element/{element}/text")),
                &Value::Null,
            )
            .await
            .ok()?;
        text.as_str().map(str::to_owned)
    }

    /// Waits until the text of the element matching `css` satisfies `accept`; returns it.
    pub async fn wait_for_text(
        &self,
        css: &str,
        what: &str,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        crate::wait_until(&format!("{css:?} to show {what}"), || async {
            self.text(css).await.filter(|text| accept(text))
        })
        .await
    }

    /// An attribute (or property) of the first element matching `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let element = self.find(css).await?;
        let value = self
            .try_call(
                "GET",
                &self.path(&format!("/element/{element}/attribute/{name}")),
                &Value::Null,
            )
            .await
            .ok()?;
        value.as_str().map(str::to_owned)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return
    /// value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.path("/execute/sync"),
            &json!({"script": script, "args": args}),
        )
        .await
    }

    /// Runs `script` whose last argument is a callback to call with the result (for
    /// promises: `fetch(...).then(arguments[arguments.length - 1])`).
    pub async fn execute_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.path("/execute/async"),
            &json!({"script": script, "args": args}),
        )
        .await
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self
            .call("GET", &self.path("/screenshot"), &Value::Null)
            .await;
        let bytes = decode_base64(encoded.as_str().expect("screenshot is base64"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, bytes).expect("write screenshot");
    }

    /// The browser console's messages so far (errors a page script raised show here).
    pub async fn console_log(&self) -> Vec<String> {
        self.try_call("POST", &self.path("/se/log"), &json!({"type": "browser"}))
            .await
            .ok()
            .and_then(|value| value.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|entry| format!("{} {}", entry["level"], entry["message"]))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // closing the session ends Chromium; the driver goes with it
        let addr = self.addr;
        let path = format!("/session/{}", self.session);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(http::request(
                    addr,
                    "DELETE",
                    &path,
                    &[],
                    b"",
                    Duration::from_secs(5),
                ));
            }
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (what WebDriver screenshots are) without a dependency.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> Option<u32> {
        Some(match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut word = 0_u32;
        for (index, digit) in chunk.iter().enumerate() {
            word |= digit << (18 - 6 * index);
        }
        let [_, a, b, c] = word.to_be_bytes();
        bytes.push(a);
        if chunk.len() > 2 {
            bytes.push(b);
        }
        if chunk.len() > 3 {
            bytes.push(c);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::decode_base64("aGVsbG8="), b"hello");
        assert_eq!(super::decode_base64("aGVsbG8h"), b"hello!");
        assert_eq!(super::decode_base64("aGk="), b"hi");
    }
}
