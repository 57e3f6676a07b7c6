use serde_json::Value;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_api::Jwt;
use terrace_domain::UserId;
use terrace_simulator::{Simulator, SimulatorConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret";
const BIN: &str = env!("CARGO_BIN_EXE_terrace");

/// The environment every test server starts with: short bounds so faults end fast.
pub fn base_env(sim: &Simulator) -> Vec<(String, String)> {
    [
        ("TERRACE_BIND", "127.0.0.1:0".to_owned()),
        ("TERRACE_JWT_SECRET", SECRET.to_owned()),
        ("GOOGLE_MAPS_API_KEY", sim.maps_key().to_owned()),
        ("GEMINI_API_KEY", sim.gemini_key().to_owned()),
        ("TERRACE_MAPS_BASE_URL", sim.base_url()),
        ("TERRACE_GEMINI_BASE_URL", sim.base_url()),
        // As in dev mode and the cluster: HTTP/2 with prior knowledge.
        ("TERRACE_GOOGLE_HTTP", "http2".into()),
        ("TERRACE_MAPS_TIMEOUT", "1s".into()),
        ("TERRACE_LLM_IDLE_TIMEOUT", "1s".into()),
        ("TERRACE_LLM_CONNECT_TIMEOUT", "1s".into()),
        ("TERRACE_RETRY_MAX_ATTEMPTS", "2".into()),
        ("TERRACE_LEASE_TTL", "2s".into()),
        ("TERRACE_HEARTBEAT_INTERVAL", "500ms".into()),
        ("TERRACE_SWEEP_INTERVAL", "200ms".into()),
        ("TERRACE_SHUTDOWN_GRACE", "3s".into()),
        ("TERRACE_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

pub async fn simulator() -> Simulator {
    Simulator::start(SimulatorConfig::default()).await.expect("the simulator starts")
}

/// Runs the binary with `args` and `env` (nothing inherited) to its end.
pub async fn run_to_end(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the command ended")
        .expect("the binary runs")
}

/// A running `terrace serve`, killed when dropped.
pub struct Terrace {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    pub http: reqwest::Client,
    jwt: Jwt,
}

impl Terrace {
    pub async fn start(env: &[(String, String)]) -> Terrace {
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = Vec::new();
        for reader in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (logs, tx) = (logs.clone(), tx.clone());
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(i) = line.find("listening on ") {
                        let addr: String = line[i + "listening on ".len()..]
                            .chars()
                            .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                            .collect();
                        let _ = tx.send(addr);
                    }
                    logs.lock().unwrap().push(line);
                }
            }));
        }
        drop(tx);
        let addr = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(a)) => a.parse().expect("a socket address"),
            _ => panic!("terrace did not start listening:\n{}", logs.lock().unwrap().join("\n")),
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(8)).build().unwrap();
        Terrace { child, addr, logs, readers, http, jwt: Jwt::new(SECRET.as_bytes()) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn token(&self, user: UserId) -> String {
        format!("Bearer {}", self.jwt.mint(user, false, Duration::from_secs(600)))
    }

    pub fn admin_token(&self) -> String {
        format!("Bearer {}", self.jwt.mint(UserId::new_random(), true, Duration::from_secs(600)))
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let ok = std::process::Command::new("kill").args(["-s", sig, &pid]).status().unwrap().success();
        assert!(ok, "kill -s {sig} {pid} failed");
    }

    /// Waits for the process to exit, at most `within`.
    /// Waits for the process to exit, at most `within`, and for its output to be read.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(within, self.child.wait()).await.ok().map(|r| r.unwrap())?;
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
        Some(status)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).header("authorization", token).send().await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// POSTs JSON; returns the status, the Location header and the body.
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("authorization", token)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        let bytes = res.bytes().await.unwrap();
        (status, location, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn create(&self, token: &str, areas: &[(&str, &str)]) -> (u16, Value) {
        let (status, _, body) = self.post("/v1/generations", token, &request(areas), None).await;
        (status, body)
    }

    /// Polls the generation until `pred` holds (at most `within`).
    pub async fn wait_for(
        &self,
        id: &str,
        token: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let path = format!("/v1/generations/{id}");
        let found = tokio::time::timeout(within, async {
            loop {
                let (status, g) = self.get(&path, token).await;
                assert_eq!(status, 200, "{g}");
                if pred(&g) {
                    return g;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        match found {
            Ok(g) => g,
            Err(_) => {
                let (_, g) = self.get(&path, token).await;
                panic!("generation never matched within {within:?}: {g}\nlogs:\n{}", self.logs())
            }
        }
    }

    pub async fn wait_terminal(&self, id: &str, token: &str) -> Value {
        self.wait_for(id, token, Duration::from_secs(8), is_terminal).await
    }

    pub async fn account(&self, token: &str) -> Value {
        let (status, a) = self.get("/v1/account", token).await;
        assert_eq!(status, 200);
        a
    }
}

pub fn is_terminal(g: &Value) -> bool {
    matches!(g["status"].as_str(), Some("completed" | "partially_completed" | "failed" | "cancelled"))
}

pub fn request(areas: &[(&str, &str)]) -> Value {
    serde_json::json!({
        "address": "1600 Amphitheatre Parkway, Mountain View, CA",
        "areas": areas.iter().map(|(a, s)| serde_json::json!({"area": a, "style": s})).collect::<Vec<_>>(),
    })
}

/// Credits are conserved: what the account was given is available, held or captured.
pub fn assert_conserved(account: &Value, credited: u64) {
    let n = |k: &str| account[k].as_u64().unwrap();
    assert_eq!(n("trial_credits") + n("token_balance") + n("held") + n("captured"), credited, "{account}");
}

/// The test Postgres that `cargo xtask test` starts. A test that needs it
/// fails without it: a broken setup must not pass.
pub fn test_database_url() -> String {
    std::env::var("TERRACE_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        panic!(
            "TERRACE_TEST_DATABASE_URL is unset: run the tests with `cargo xtask test`, which starts Postgres"
        )
    })
}

/// A fresh database on the test Postgres, migrated by `terrace migrate`.
pub async fn fresh_database() -> String {
    let admin_url = test_database_url();
    let name = format!("terrace_e2e_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&admin_url, tokio_postgres::NoTls),
    )
    .await
    .expect("connecting to the test Postgres timed out")
    .expect("the test Postgres accepts connections");
    let conn = tokio::spawn(conn);
    tokio::time::timeout(Duration::from_secs(10), client.batch_execute(&format!("CREATE DATABASE {name}")))
        .await
        .expect("CREATE DATABASE timed out")
        .expect("CREATE DATABASE");
    drop(client);
    conn.abort();
    let mut url = url::Url::parse(&admin_url).expect("TERRACE_TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let out = run_to_end(&["migrate"], &[("DATABASE_URL".to_owned(), url.clone())]).await;
    assert!(
        out.status.success(),
        "terrace migrate failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    url
}

/// Where a test's server keeps its state.
#[derive(Debug, Clone)]
pub enum Backend {
    Memory,
    Postgres { url: String, blobs: String },
}

impl Backend {
    /// A fresh database on the test Postgres, and file blobs.
    pub async fn postgres() -> Backend {
        let url = fresh_database().await;
        let dir = std::env::temp_dir().join(format!("terrace-e2e-blobs-{}", uuid::Uuid::new_v4().simple()));
        Backend::Postgres { url, blobs: format!("file://{}", dir.display()) }
    }

    /// A fresh database reached through a [`Proxy`] the test can freeze.
    pub async fn postgres_behind_proxy() -> (Backend, Proxy) {
        let Backend::Postgres { url, blobs } = Backend::postgres().await else {
            unreachable!("a Postgres backend")
        };
        let mut parsed = url::Url::parse(&url).unwrap();
        let upstream = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap_or(5432));
        let proxy = Proxy::start(upstream).await;
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(proxy.addr.port())).unwrap();
        (Backend::Postgres { url: parsed.to_string(), blobs }, proxy)
    }

    pub fn apply(&self, env: &mut Vec<(String, String)>) {
        if let Backend::Postgres { url, blobs } = self {
            set(env, "DATABASE_URL", url);
            set(env, "TERRACE_BLOB_URL", blobs);
        }
    }
}

/// A TCP proxy to Postgres that a test can freeze: while frozen, bytes stop
/// flowing both ways (connections stay open), as with a stalled database.
pub struct Proxy {
    pub addr: SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let gate = frozen.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                conns.spawn(pump(cr, sw, gate.subscribe()));
                conns.spawn(pump(sr, cw, gate.subscribe()));
            }
        });
        Proxy { addr, frozen, task }
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
