//! `cargo xtask e2e`: the web app in a real browser.
//!
//! Builds and starts `terrace` in dev mode on port 0 (memory store, the
//! in-process Google and Stripe simulators, a demo user), starts Debian's headless
//! `chromium` through `chromedriver`, and drives the page over WebDriver:
//! sign in, create three areas and watch them complete, open a design,
//! cancel a second generation mid-run (the simulator's Gemini is told to hang
//! through its control endpoint), see the validation messages, page and
//! filter the history, reopen a generation, buy a package and subscribe
//! through the in-process Stripe simulator's Checkout page, cancel the
//! subscription and open the billing portal. One path uses
//! the keyboard alone (Tab, Enter, Space and typing; no clicks); it runs at
//! 1280 px and the other steps at 375 px.
//!
//! Every wait polls a condition under a bound. Each step saves a screenshot
//! under `target/e2e/`. It prints the page weight of the first view and the
//! time from submitting the form to the first progress shown.
//!
//! WebDriver is spoken directly (JSON over the existing reqwest): the few
//! commands used here need no client library.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OUT: &str = "target/e2e";
const WIDE: u32 = 1280;
const NARROW: u32 = 375;
const ADDRESS: &str = "1600 Amphitheatre Parkway, Mountain View, CA";
/// Where the page's Sign in link goes; never visited.
const SUPABASE: &str = "https://project.supabase.invalid/auth/v1/authorize?provider=github";

const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";
const SPACE: &str = " ";
const RIGHT: &str = "\u{E014}";
const SHIFT: &str = "\u{E008}";

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most `bound`) for a line of `log` that contains `marker`, and
/// returns what follows it up to whitespace.
fn wait_for_log(log: &Path, marker: &str, bound: Duration, child: &mut Child) -> Result<String> {
    let start = Instant::now();
    while start.elapsed() < bound {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split(marker).nth(1) {
            let word: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
            if !word.is_empty() {
                return Ok(word.trim_end_matches('.').to_owned());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("{} exited ({status}) before printing {marker:?}; see {}", log.display(), log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{marker:?} did not appear in {} within {bound:?}", log.display())
}

fn start_terrace() -> Result<(Proc, String, String)> {
    let log = PathBuf::from(OUT).join("terrace.log");
    let out = std::fs::File::create(&log)?;
    let mut child = Command::new("target/debug/terrace")
        .env("TERRACE_BIND", "127.0.0.1:0")
        .env("TERRACE_TRIAL_CREDITS", "100")
        .env("TERRACE_LOG", "info")
        .env("TERRACE_LOG_FORMAT", "text")
        .env_remove("DATABASE_URL")
        .env_remove("TERRACE_JWT_SECRET")
        .env_remove("TERRACE_BLOB_URL")
        .env_remove("GOOGLE_MAPS_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env("TERRACE_SUPABASE_URL", SUPABASE)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting target/debug/terrace")?;
    let addr = wait_for_log(&log, "listening on ", Duration::from_secs(60), &mut child)?;
    // The in-process simulator logs its URL before the server listens.
    let text = std::fs::read_to_string(&log)?;
    let sim = text
        .lines()
        .find(|l| l.contains("simulator answers"))
        .and_then(|l| l.split("url=").nth(1))
        .map(|u| u.split_whitespace().next().unwrap_or_default().to_owned())
        .ok_or_else(|| anyhow!("the log does not name the simulator's URL"))?;
    Ok((Proc(child), format!("http://{addr}"), sim))
}

fn start_chromedriver() -> Result<(Proc, String)> {
    let log = PathBuf::from(OUT).join("chromedriver.log");
    let out = std::fs::File::create(&log)?;
    let mut child = Command::new("chromedriver")
        .arg("--port=0")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context(
            "starting chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run installs them)",
        )?;
    let port = wait_for_log(&log, "started successfully on port ", Duration::from_secs(20), &mut child)?;
    Ok((Proc(child), format!("http://127.0.0.1:{port}")))
}

/// One browser session over WebDriver.
struct Browser {
    http: reqwest::Client,
    session: String,
    app: String,
    shots: Vec<(String, String)>,
}

impl Browser {
    async fn new(http: reqwest::Client, driver: &str, app: &str, profile: &Path) -> Result<Self> {
        let mut options = json!({
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", format!("--window-size={WIDE},900"),
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 10_000, "pageLoad": 20_000, "implicit": 0},
        }}});
        let res = send(&http, reqwest::Method::POST, &format!("{driver}/session"), Some(caps)).await?;
        let id = res["sessionId"].as_str().ok_or_else(|| anyhow!("no session id in {res}"))?;
        Ok(Self { http, session: format!("{driver}/session/{id}"), app: app.to_owned(), shots: Vec::new() })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        send(&self.http, method, &format!("{}{path}", self.session), body).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Value) -> Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// Polls `script` until it returns something truthy, at most `bound`.
    async fn wait(&self, what: &str, bound: Duration, script: &str) -> Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.js(script, json!([])).await?;
            let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                && v != json!(0)
                && v.as_str().is_none_or(|s| !s.is_empty());
            if truthy {
                return Ok(v);
            }
            if start.elapsed() > bound {
                bail!("waited {bound:?} for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn goto(&self, path: &str) -> Result<()> {
        self.post("/url", json!({"url": format!("{}{path}", self.app)})).await?;
        Ok(())
    }

    /// Presses each key (down, then up) in turn.
    async fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({"type": "keyDown", "value": k}));
            actions.push(json!({"type": "keyUp", "value": k}));
        }
        self.post("/actions", json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}))
            .await?;
        Ok(())
    }

    async fn type_text(&self, text: &str) -> Result<()> {
        let chars: Vec<String> = text.chars().map(String::from).collect();
        self.keys(&chars.iter().map(String::as_str).collect::<Vec<_>>()).await
    }

    async fn shift_tab(&self) -> Result<()> {
        let actions = json!([
            {"type": "keyDown", "value": SHIFT}, {"type": "keyDown", "value": TAB},
            {"type": "keyUp", "value": TAB}, {"type": "keyUp", "value": SHIFT},
        ]);
        self.post("/actions", json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}))
            .await?;
        Ok(())
    }

    /// Presses Tab until the focused element matches `selector` (at most
    /// `max` presses), and checks that the focus can be seen.
    async fn tab_to(&self, selector: &str, max: usize) -> Result<()> {
        let check = "const el = document.activeElement; return el && el.matches(arguments[0]);";
        for _ in 0..=max {
            if self.js(check, json!([selector])).await? == json!(true) {
                let ring = self
                    .js(
                        "const s = getComputedStyle(document.activeElement);\
                         return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2;",
                        json!([]),
                    )
                    .await?;
                if ring != json!(true) {
                    bail!("the focus on {selector} has no visible outline");
                }
                return Ok(());
            }
            self.keys(&[TAB]).await?;
        }
        let at = self.js("return document.activeElement?.outerHTML.slice(0, 120)", json!([])).await?;
        bail!("{max} Tab presses did not reach {selector} (focus is on {at})")
    }

    async fn find(&self, selector: &str) -> Result<String> {
        let v = self.post("/element", json!({"using": "css selector", "value": selector})).await?;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no element {selector}"))
    }

    async fn click(&self, selector: &str) -> Result<()> {
        let el = self.find(selector).await?;
        self.post(&format!("/element/{el}/click"), json!({})).await?;
        Ok(())
    }

    async fn fill(&self, selector: &str, text: &str) -> Result<()> {
        let el = self.find(selector).await?;
        self.post(&format!("/element/{el}/clear"), json!({})).await?;
        self.post(&format!("/element/{el}/value"), json!({"text": text})).await?;
        Ok(())
    }

    /// Sets the viewport's width (CSS pixels).
    async fn width(&self, width: u32) -> Result<()> {
        let mut outer = width;
        for _ in 0..3 {
            self.post("/window/rect", json!({"width": outer, "height": 900})).await?;
            let inner = self.js("return window.innerWidth", json!([])).await?.as_u64().unwrap_or(0) as u32;
            if inner == width {
                return Ok(());
            }
            outer = (i64::from(outer) + i64::from(width) - i64::from(inner)).max(200) as u32;
        }
        bail!("could not set the viewport to {width} px")
    }

    /// Saves a full-page PNG as `target/e2e/NN-name.png`.
    async fn shot(&mut self, name: &str, what: &str) -> Result<()> {
        self.save(name, what, true).await
    }

    /// Saves what the viewport shows (for a modal dialog over the page).
    async fn shot_viewport(&mut self, name: &str, what: &str) -> Result<()> {
        self.save(name, what, false).await
    }

    async fn save(&mut self, name: &str, what: &str, full: bool) -> Result<()> {
        // Let pending images and layout settle: the next frame after load.
        self.wait(
            "images to load",
            Duration::from_secs(10),
            "return [...document.images].every(i => i.complete) && document.readyState === 'complete'",
        )
        .await?;
        let size = self
            .js(
                "return [document.documentElement.clientWidth, Math.max(document.documentElement.scrollHeight, innerHeight)]",
                json!([]),
            )
            .await?;
        let (w, h) = (size[0].as_f64().unwrap_or(1280.0), size[1].as_f64().unwrap_or(900.0).min(8000.0));
        let cdp = json!({"cmd": "Page.captureScreenshot", "params": {
            "format": "png", "captureBeyondViewport": true,
            "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
        }});
        let data = match full {
            true => self
                .post("/goog/cdp/execute", cdp)
                .await
                .ok()
                .and_then(|v| v["data"].as_str().map(str::to_owned)),
            false => None,
        };
        let data = match data {
            Some(d) => d,
            None => self
                .cmd(reqwest::Method::GET, "/screenshot", None)
                .await?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let png = base64::engine::general_purpose::STANDARD.decode(data).context("decoding a screenshot")?;
        let file = format!("{OUT}/{:02}-{name}.png", self.shots.len() + 1);
        std::fs::write(&file, png)?;
        println!("e2e: screenshot {file}: {what}");
        self.shots.push((file, what.to_owned()));
        Ok(())
    }

    /// The browser console's problems: script errors and refused content.
    async fn console_problems(&self) -> Vec<String> {
        let Ok(v) = self.post("/se/log", json!({"type": "browser"})).await else { return Vec::new() };
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| {
                ["Uncaught", "Content Security Policy", "Refused to", "TrustedHTML", "TrustedScript"]
                    .iter()
                    .any(|k| m.contains(k))
            })
            .map(str::to_owned)
            .collect()
    }

    async fn close(&self) {
        let _ = self.cmd(reqwest::Method::DELETE, "", None).await;
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut req = http.request(method.clone(), url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let res = req.send().await.with_context(|| format!("WebDriver {method} {url}"))?;
    let status = res.status();
    let bytes = res.bytes().await?;
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("WebDriver {method} {url}: {status}: {}", v["value"]["message"].as_str().unwrap_or_default());
    }
    Ok(v.get("value").cloned().unwrap_or(Value::Null))
}

/// `GET /metrics`'s value of `name`.
async fn metric(http: &reqwest::Client, app: &str, name: &str) -> Result<f64> {
    let text = http.get(format!("{app}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

async fn wait_metric(
    http: &reqwest::Client,
    app: &str,
    name: &str,
    want: f64,
    bound: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let v = metric(http, app, name).await?;
        if v == want {
            return Ok(());
        }
        if start.elapsed() > bound {
            bail!("{name} stayed {v}, not {want}, for {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sim(http: &reqwest::Client, sim: &str, path: &str, body: Value) -> Result<()> {
    let res = http.post(format!("{sim}{path}")).body(body.to_string()).send().await?;
    if !res.status().is_success() {
        bail!("simulator {path}: {}", res.status());
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("cargo xtask e2e takes no arguments (got {a})");
    }
    crate::cmd("cargo", &["build", "--locked", "-p", "terrace"])?;
    std::fs::create_dir_all(OUT)?;
    for entry in std::fs::read_dir(OUT)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "png") {
            std::fs::remove_file(p)?;
        }
    }
    let began = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(drive());
    println!("e2e: took {:.1} s", began.elapsed().as_secs_f64());
    result
}

async fn drive() -> Result<()> {
    let (_terrace, app, sim_url) = start_terrace()?;
    println!("e2e: terrace at {app}, its Google simulator at {sim_url}");
    let (_driver, driver) = start_chromedriver()?;
    let profile = std::env::temp_dir().join(format!("terrace-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut b = Browser::new(http.clone(), &driver, &app, &profile).await?;
    let outcome = steps(&mut b, &http, &app, &sim_url).await;
    if outcome.is_err() {
        let _ = b.shot("failed", "the page when the run failed").await;
        if let Ok(log) = std::fs::read_to_string(format!("{OUT}/terrace.log")) {
            eprintln!("e2e: the last lines of terrace.log:");
            for l in log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
    let problems = b.console_problems().await;
    b.close().await;
    let _ = std::fs::remove_dir_all(&profile);
    outcome?;
    if !problems.is_empty() {
        bail!("the browser console reported problems:\n  {}", problems.join("\n  "));
    }
    println!("e2e: passed; {} screenshots in {OUT}/", b.shots.len());
    Ok(())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn steps(b: &mut Browser, http: &reqwest::Client, app: &str, sim_url: &str) -> Result<()> {
    // 1. Dev mode signs the person in at once; the first view's weight.
    b.width(WIDE).await?;
    b.goto("/").await?;
    b.wait(
        "the create form and the balance",
        secs(15),
        "return document.querySelector('#cost')?.textContent.includes('You have')",
    )
    .await?;
    let signed = b.js("return document.querySelector('#session')?.textContent", json!([])).await?;
    if !signed.as_str().unwrap_or_default().contains("demo user") {
        bail!("not signed in as the demo user: {signed}");
    }
    page_weight(b).await?;
    stream_module(b).await?;
    b.shot(
        "signed-in-1280",
        "dev mode: signed in as the demo user at once; the create form with its cost and balance",
    )
    .await?;

    // 2. The keyboard path: three areas, typed and chosen with keys only.
    b.tab_to("#address", 30).await?;
    b.type_text(ADDRESS).await?;
    b.tab_to("fieldset.area-row:nth-of-type(1) select[name=style]", 5).await?;
    b.type_text("j").await?; // Japanese zen
    b.tab_to("fieldset.area-row:nth-of-type(1) textarea", 3).await?;
    b.type_text("Keep the old oak by the gate").await?;
    b.tab_to("button.secondary", 10).await?; // "Add another area"
    b.keys(&[ENTER]).await?;
    b.wait("a second area", secs(5), "return document.querySelectorAll('fieldset.area-row').length === 2")
        .await?;
    b.tab_to("fieldset.area-row:nth-of-type(2) select[name=style]", 3).await?;
    b.type_text("me").await?; // Mediterranean
    b.tab_to("fieldset.area-row:nth-of-type(2) input[type=range]", 4).await?;
    b.keys(&[RIGHT, RIGHT, RIGHT, RIGHT]).await?;
    b.tab_to("button.secondary:not([hidden])", 10).await?;
    b.keys(&[SPACE]).await?;
    b.wait("a third area", secs(5), "return document.querySelectorAll('fieldset.area-row').length === 3")
        .await?;
    let chosen = b
        .js(
            "return [...document.querySelectorAll('fieldset.area-row')].map(f => \
               f.querySelector('select[name=area]').value + ':' + f.querySelector('select[name=style]').value + \
               ':' + f.querySelector('input[type=range]').value)",
            json!([]),
        )
        .await?;
    let want =
        json!(["front_yard:japanese_zen:0.5", "backyard:mediterranean:0.7", "walkway:japanese_zen:0.5"]);
    if chosen != want {
        bail!("the keyboard chose {chosen}, not {want}");
    }
    b.shot(
        "form-1280",
        "three areas chosen with the keyboard; the cost (3 credits) and balance shown before submitting",
    )
    .await?;

    // Slow answers, so that progress can be seen on the way.
    sim(http, sim_url, "/_sim/latency", json!({"delay_ms": 700})).await?;
    b.tab_to("button[type=submit]", 40).await?;
    b.keys(&[ENTER]).await?;
    b.wait("the follow view", secs(15), "return location.pathname.startsWith('/app/generations/')").await?;
    b.wait(
        "progress past the queue",
        secs(20),
        "return [...document.querySelectorAll('.stage')].some(e => /Fetching|Drawing|Saving/.test(e.textContent))",
    )
    .await?;
    b.shot("progress-1280", "following live: each area's stage and progress from the event stream").await?;
    b.wait(
        "three designs",
        secs(60),
        "return document.querySelectorAll('.area-card[data-status=completed] .pair img').length === 6",
    )
    .await?;
    sim(http, sim_url, "/_sim/latency", json!({"delay_ms": 0})).await?;
    submit_to_progress(b, "simulator latency 700 ms per Google call").await?;
    b.shot("completed-1280", "all three designs, each beside the picture it was drawn from, with a download")
        .await?;

    // Open a design with the keyboard, and leave it with Escape: no trap.
    b.tab_to(".pictures button", 40).await?;
    b.keys(&[ENTER]).await?;
    b.wait("the design viewer", secs(5), "return document.querySelector('dialog.viewer')?.open").await?;
    b.shot_viewport("design-open-1280", "a design opened large (a modal dialog; Escape closes it)").await?;
    b.keys(&[ESCAPE]).await?;
    b.wait(
        "the viewer to close and the focus to return",
        secs(5),
        "return !document.querySelector('dialog.viewer').open && document.activeElement.matches('.pictures button')",
    )
    .await?;
    let downloads = b.js("return document.querySelectorAll('a[download]').length", json!([])).await?;
    if downloads != json!(3) {
        bail!("{downloads} download links, not 3");
    }

    // 3. A second generation that hangs in Gemini: leaving stops following, cancel ends it.
    b.width(NARROW).await?;
    sim(
        http,
        sim_url,
        "/_sim/script",
        json!({"endpoint": "gemini", "behaviour": {"kind": "hang_before_headers"}, "default": true}),
    )
    .await?;
    b.goto("/").await?;
    b.wait("the create form", secs(10), "return document.querySelector('#address')").await?;
    b.fill("#address", "221B Baker Street, London").await?;
    b.click("form.create button.secondary").await?;
    b.click("button[type=submit]").await?;
    b.wait(
        "a design being drawn",
        secs(20),
        "return [...document.querySelectorAll('.stage')].some(e => e.textContent.includes('Drawing'))",
    )
    .await?;
    submit_to_progress(b, "no simulator latency").await?;
    let running = b.js("return location.pathname", json!([])).await?.as_str().unwrap_or_default().to_owned();
    b.shot("running-375", "a generation in progress at phone width, with its cancel button").await?;
    wait_metric(http, app, "terrace_event_streams_active", 1.0, secs(5)).await?;
    b.click("nav.main a[href='/app/history']").await?;
    wait_metric(http, app, "terrace_event_streams_active", 0.0, secs(10))
        .await
        .context("following did not stop on leaving the view")?;
    b.goto(&running).await?;
    wait_metric(http, app, "terrace_event_streams_active", 1.0, secs(10)).await?;
    b.goto("/app/account").await?;
    wait_metric(http, app, "terrace_event_streams_active", 0.0, secs(10))
        .await
        .context("following did not stop when the page was left")?;
    println!("e2e: following stops on a route change and when the page is left (event streams 1 → 0)");
    b.goto(&running).await?;
    b.wait("the cancel button", secs(10), "return document.querySelector('button.danger:not([hidden])')")
        .await?;
    b.click("button.danger").await?;
    b.wait(
        "the cancellation",
        secs(15),
        "return document.querySelector('.gen-status')?.textContent.startsWith('Cancelled')",
    )
    .await?;
    sim(http, sim_url, "/_sim/reset", json!({})).await?;
    b.shot("cancelled-375", "the second generation cancelled mid-run; its credits returned").await?;

    // 4. The API's validation messages beside their fields.
    b.goto("/").await?;
    b.wait("the create form", secs(10), "return document.querySelector('#address')").await?;
    b.fill("#address", "x").await?;
    b.click("button[type=submit]").await?;
    b.wait(
        "the address's message",
        secs(10),
        "const e = document.querySelector('#address-error'); return !e.hidden && e.textContent.includes('5 to 200') \
         && document.activeElement.id === 'address' && document.querySelector('#address').getAttribute('aria-invalid')",
    )
    .await?;
    b.shot("validation-375", "the API's validation message beside the address, focus moved there").await?;

    let token = http.get(format!("{app}/app/config.json")).send().await?.json_value().await?["demo_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    sign_in_and_out(b, app, &token).await?;

    // Enough history for two pages.
    for i in 0..9 {
        let body = json!({"address": format!("{} Elm Street, Springfield", 10 + i),
                          "areas": [{"area": "patio", "style": "tropical_resort"}]});
        let res = http
            .post(format!("{app}/v1/generations"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        if res.status().as_u16() != 202 {
            bail!("creating history: {}", res.status());
        }
    }

    // 5. History with the keyboard, at desktop width: page, filter, reopen.
    b.width(WIDE).await?;
    b.goto("/").await?;
    b.wait("the page", secs(10), "return document.querySelector('#address')").await?;
    b.tab_to("nav.main a[href='/app/history']", 10).await?;
    b.keys(&[ENTER]).await?;
    b.wait("the first page", secs(10), "return document.querySelectorAll('.history-item').length === 10")
        .await?;
    b.tab_to("a[rel=next]", 40).await?;
    b.keys(&[ENTER]).await?;
    b.wait(
        "the second page",
        secs(10),
        "return document.querySelector('.history + .paging, .paging') && \
        document.querySelector('[role=status]')?.textContent.startsWith('Page 2')",
    )
    .await?;
    b.shot("history-page-2-1280", "the history's second page, reached with the keyboard").await?;
    b.tab_to("#status-filter", 20).await?;
    b.type_text("r").await?; // Ready
    b.tab_to(".filter button[type=submit]", 2).await?;
    b.keys(&[ENTER]).await?;
    b.wait(
        "the filtered history",
        secs(15),
        "const items = [...document.querySelectorAll('.history-item')]; \
         return location.search === '?status=completed' && items.length >= 5 && \
                items.every(i => i.dataset.status === 'completed')",
    )
    .await?;
    b.shot("history-filtered-1280", "the history filtered to finished designs").await?;
    b.tab_to(".history-item a", 10).await?;
    b.keys(&[ENTER]).await?;
    b.wait(
        "the reopened generation's designs",
        secs(15),
        "return document.querySelectorAll('.pair img').length >= 2",
    )
    .await?;
    b.shot("reopened-1280", "a past generation reopened from the history").await?;
    b.shift_tab().await?; // the keyboard goes backwards too

    // 6. The account, at both widths.
    b.width(NARROW).await?;
    b.goto("/app/account").await?;
    b.wait("the balance", secs(10), "return document.querySelector('#balance-available')").await?;
    b.wait("the transactions", secs(10), "return document.querySelectorAll('.tx tbody tr').length > 0")
        .await?;
    b.shot("account-375", "balance, billing and transactions at phone width").await?;
    b.width(WIDE).await?;
    b.goto("/").await?;
    b.wait("the page", secs(10), "return document.querySelector('#address')").await?;
    b.tab_to("nav.main a[href='/app/account']", 10).await?;
    b.keys(&[ENTER]).await?;
    b.wait("the balance", secs(10), "return document.querySelector('#balance-available')").await?;
    b.wait(
        "the billing section",
        secs(10),
        "return !document.querySelector('.billing p').textContent.startsWith('Loading')",
    )
    .await?;
    b.shot("account-1280", "the account page at desktop width").await?;

    // 7. Buying a package, when this server can take payments.
    billing(b, http, app, &token).await
}

/// Prints the time between the page's `terrace:submit` and
/// `terrace:first-progress` marks (User Timing).
async fn submit_to_progress(b: &Browser, note: &str) -> Result<()> {
    let ms = b
        .js(
            "const s = performance.getEntriesByName('terrace:submit').at(-1);\
             const p = performance.getEntriesByName('terrace:first-progress').at(-1);\
             return s && p ? p.startTime - s.startTime : null",
            json!([]),
        )
        .await?;
    let ms = ms.as_f64().ok_or_else(|| anyhow!("the page marked no submit or no first progress"))?;
    println!("e2e: submit to first progress shown: {ms:.0} ms ({note})");
    Ok(())
}

/// An unsigned JWT whose `exp` is `exp`: the page reads it, the API refuses it.
fn fake_token(exp: i64) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let payload = json!({"sub": "00000000-0000-4000-8000-000000000000", "exp": exp, "aud": "authenticated"});
    format!("{}.{}.c2lnbmF0dXJl", b64(json!({"alg": "HS256", "typ": "JWT"})), b64(payload))
}

/// Signing out; the Sign in link; a Supabase redirect's `#access_token=…`
/// taken and cleared from the address; a token the API refuses (401) and an
/// expired one, each ending in the sign-in view; then the demo user again.
async fn sign_in_and_out(b: &mut Browser, app: &str, demo: &str) -> Result<()> {
    b.click("#session button").await?;
    b.wait(
        "the sign-in view",
        secs(10),
        "return document.querySelector('h1')?.textContent === 'Sign in to Terrace'",
    )
    .await?;
    let href = b
        .js(
            "return [...document.querySelectorAll('a.button')].find(a => a.textContent === 'Sign in')?.href",
            json!([]),
        )
        .await?;
    let redirect = format!("redirect_to={}", form_encode(&format!("{app}/")));
    if !href.as_str().is_some_and(|h| h.starts_with(SUPABASE) && h.contains(&redirect)) {
        bail!("the Sign in link is {href}, not {SUPABASE} with {redirect}");
    }
    b.shot(
        "signed-out-375",
        "signed out: the Sign in link (TERRACE_SUPABASE_URL), the demo user, a pasted token",
    )
    .await?;

    b.goto(&format!("/app/history#access_token={demo}&expires_in=3600&token_type=bearer&type=magiclink"))
        .await?;
    b.wait(
        "the token from the fragment",
        secs(10),
        "return location.hash === '' && location.pathname === '/app/history' && \
         sessionStorage.getItem('terrace.token') && document.querySelector('#session')?.textContent.includes('Signed in') && \
         document.querySelectorAll('.history-item').length > 0",
    )
    .await?;
    println!(
        "e2e: a redirect's #access_token signs in, is kept in sessionStorage and cleared from the address"
    );

    let refused = fake_token(chrono::Utc::now().timestamp() + 3600);
    b.goto(&format!("/#access_token={refused}")).await?;
    b.wait(
        "the sign-out after a 401",
        secs(10),
        "return document.querySelector('[role=alert]')?.textContent.includes('session has ended') && \
         !sessionStorage.getItem('terrace.token')",
    )
    .await?;
    let expired = fake_token(chrono::Utc::now().timestamp() - 60);
    b.goto(&format!("/#access_token={expired}")).await?;
    b.wait(
        "the expired token's message",
        secs(10),
        "return document.querySelector('[role=alert]')?.textContent.includes('expired')",
    )
    .await?;
    b.shot("expired-375", "an expired access token: the sign-in view says so").await?;
    println!("e2e: a token the API refuses (401) and an expired token each end in the sign-in view");

    b.click("main button.primary").await?; // Continue as the demo user
    b.wait(
        "the demo user again",
        secs(10),
        "return document.querySelector('#session')?.textContent.includes('demo user')",
    )
    .await?;
    Ok(())
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => (c as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// The page's event-stream module in this browser: events split at awkward
/// places parse whole, and a stream that keeps ending without an event is
/// opened again a bounded number of times, then given up.
async fn stream_module(b: &Browser) -> Result<()> {
    let script = r#"
        const done = arguments[arguments.length - 1];
        const src = document.querySelector('script[type=module]').src.replace(/app\.js$/, 'sse.js');
        import(src).then(async ({ parseEvents, follow, MAX_ATTEMPTS }) => {
          const chunks = ['event: generation\r', '\ndata: {"a":', '1}\r\n\r\n: keepalive\n\n', 'data: x\ndata: y\n\n'];
          const enc = new TextEncoder();
          const body = new ReadableStream({ start(c) { chunks.forEach((t) => c.enqueue(enc.encode(t))); c.close(); } });
          const events = [];
          for await (const ev of parseEvents(body)) events.push(ev);
          const states = [];
          const end = await follow('/livez', {
            signal: new AbortController().signal, onEvent() {}, onStatus: (s) => states.push(s.state),
            isDone: () => false, firstBackoffMs: 5,
          });
          done({ events, end, max: MAX_ATTEMPTS,
                 opened: states.filter((s) => s === 'connecting').length,
                 waited: states.filter((s) => s === 'waiting').length });
        }).catch((e) => done({ error: String(e) }));
    "#;
    let v = b.post("/execute/async", json!({"script": script, "args": []})).await?;
    let want_events =
        json!([{"event": "generation", "data": "{\"a\":1}"}, {"event": "message", "data": "x\ny"}]);
    let max = v["max"].as_u64().unwrap_or(0);
    if v["events"] != want_events
        || v["end"] != "gave_up"
        || v["opened"] != json!(max + 1)
        || v["waited"] != json!(max)
    {
        bail!("the event-stream module misbehaved: {v}");
    }
    println!("e2e: a stream that keeps dropping is opened {} times, then given up", max + 1);
    Ok(())
}

async fn page_weight(b: &Browser) -> Result<()> {
    let v = b
        .js(
            "const nav = performance.getEntriesByType('navigation')[0];\
             const rs = performance.getEntriesByType('resource');\
             return {doc: [nav.transferSize, nav.decodedBodySize],\
                     res: rs.map(r => [new URL(r.name).pathname, r.transferSize, r.decodedBodySize, r.initiatorType])}",
            json!([]),
        )
        .await?;
    let (mut assets, mut assets_body, mut api, mut api_count) = (0u64, 0u64, 0u64, 0);
    let doc = v["doc"][0].as_u64().unwrap_or(0);
    let doc_body = v["doc"][1].as_u64().unwrap_or(0);
    let mut files = 0;
    for r in v["res"].as_array().into_iter().flatten() {
        let path = r[0].as_str().unwrap_or_default();
        let (sent, body) = (r[1].as_u64().unwrap_or(0), r[2].as_u64().unwrap_or(0));
        if path.starts_with("/app/assets/") {
            assets += sent;
            assets_body += body;
            files += 1;
        } else {
            api += sent;
            api_count += 1;
        }
    }
    println!(
        "e2e: page weight of the first view: {} bytes transferred — the page {doc} ({doc_body} body), \
         {files} scripts and styles {assets} ({assets_body} body), {api_count} API calls {api}",
        doc + assets + api
    );
    Ok(())
}

async fn billing(b: &mut Browser, http: &reqwest::Client, app: &str, token: &str) -> Result<()> {
    // The dev-mode server takes payments through its Stripe simulator: a
    // server that cannot is a failure here, not a skip.
    let packages = http.get(format!("{app}/v1/billing/packages")).send().await?;
    if !packages.status().is_success() {
        bail!("GET /v1/billing/packages answers {}", packages.status());
    }
    let before = account_tokens(http, app, token).await?;
    b.tab_to("button[data-package=package_10]", 30).await?;
    b.keys(&[ENTER]).await?;
    let check = format!(
        "if (!location.href.startsWith('{app}/')) return 'left'; \
         return document.querySelector('.billing.unavailable') ? 'unavailable' : null"
    );
    let outcome = b.wait("Checkout or a refusal", secs(20), &check).await?;
    if outcome == json!("unavailable") {
        let note = b.js("return document.querySelector('.billing p').textContent", json!([])).await?;
        b.shot("billing-unavailable-1280", "buying refused by the server; the billing section says so")
            .await?;
        bail!("the dev-mode server refused to take a payment: {}", note.as_str().unwrap_or_default());
    }
    b.shot("checkout-1280", "Stripe Checkout (the simulator's, in dev mode)").await?;
    // The simulator's Checkout page: its Pay button, with the keyboard.
    b.tab_to("button.pay", 10).await?;
    b.keys(&[ENTER]).await?;
    b.wait("the return to /billing/success", secs(30), "return location.pathname === '/billing/success'")
        .await?;
    let start = Instant::now();
    while account_tokens(http, app, token).await? <= before {
        if start.elapsed() > secs(30) {
            bail!("the balance did not grow within 30 s of paying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.wait(
        "the page to show the new balance",
        secs(30),
        "return document.querySelector('.balance-line')?.textContent.includes('bought')",
    )
    .await?;
    b.shot("billing-success-1280", "back from Checkout: the balance grew by the package's credits").await?;
    println!("e2e: bought package_10: tokens {before} → {}", account_tokens(http, app, token).await?);
    subscription(b, http, app, token).await
}

/// Subscribe through Checkout, cancel at the period's end, open the portal:
/// with the keyboard, when the server offers a plan.
async fn subscription(b: &mut Browser, http: &reqwest::Client, app: &str, token: &str) -> Result<()> {
    b.tab_to("a[href='/app/account']", 10).await?;
    b.keys(&[ENTER]).await?;
    b.wait("the billing section", secs(10), "return document.querySelector('#subscription-status')").await?;
    if b.js("return Boolean(document.querySelector('button[data-plan]'))", json!([])).await? != json!(true) {
        bail!("the dev-mode server offers no plan to subscribe to");
    }
    b.tab_to("button[data-plan]", 20).await?;
    b.keys(&[ENTER]).await?;
    let left = format!("return !location.href.startsWith('{app}/') && document.querySelector('button.pay')");
    b.wait("Checkout for the plan", secs(20), &left).await?;
    b.tab_to("button.pay", 10).await?;
    b.keys(&[ENTER]).await?;
    b.wait("the return to /billing/success", secs(30), "return location.pathname === '/billing/success'")
        .await?;
    let start = Instant::now();
    loop {
        let v = http
            .get(format!("{app}/v1/billing/subscription"))
            .bearer_auth(token)
            .send()
            .await?
            .json_value()
            .await?;
        if v["status"] == "active" {
            break;
        }
        if start.elapsed() > secs(30) {
            bail!("the subscription did not become active within 30 s of paying: {v}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.tab_to("a[href='/app/account']", 10).await?;
    b.keys(&[ENTER]).await?;
    b.wait(
        "the active subscription",
        secs(10),
        "return document.querySelector('#subscription-status')?.textContent.startsWith('Active')",
    )
    .await?;
    b.shot("subscribed-1280", "subscribed through Checkout: the subscription is active").await?;
    b.tab_to(".subscription button.secondary", 20).await?; // "Cancel the subscription"
    b.keys(&[ENTER]).await?;
    b.wait("the confirmation", secs(5), "return document.activeElement.textContent === 'Keep it'").await?;
    b.shift_tab().await?;
    b.keys(&[ENTER]).await?; // "Yes, cancel it"
    b.wait(
        "the cancellation at the period's end",
        secs(15),
        "return document.querySelector('#subscription-status')?.textContent.includes('ends on')",
    )
    .await?;
    b.shot("subscription-ending-1280", "the subscription cancelled at the end of its period").await?;
    b.tab_to(".billing .actions button", 20).await?; // "Manage billing and invoices"
    b.keys(&[ENTER]).await?;
    let portal = format!("return !location.href.startsWith('{app}/') && document.readyState === 'complete'");
    b.wait("the billing portal", secs(20), &portal).await?;
    b.shot("portal-1280", "the billing portal (the simulator's, in dev mode)").await?;
    println!("e2e: subscribed, cancelled at the period's end, opened the portal");
    Ok(())
}

async fn account_tokens(http: &reqwest::Client, app: &str, token: &str) -> Result<u64> {
    let v = http.get(format!("{app}/v1/account")).bearer_auth(token).send().await?.json_value().await?;
    Ok(v["token_balance"].as_u64().unwrap_or(0))
}

trait JsonValue {
    async fn json_value(self) -> Result<Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.bytes().await?)?)
    }
}
