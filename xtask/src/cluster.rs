//! A local Terrace cluster for load and chaos runs: the Google simulator and
//! Terrace instances as real processes on loopback, on one throwaway
//! Postgres. Every process is killed when its handle drops; logs go to files
//! under the run's folder.

use crate::postgres::TestPostgres;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const JWT_SECRET: &str = "terrace-local-cluster-secret-0123456789";
const MAPS_KEY: &str = "cluster-maps-key";
const GEMINI_KEY: &str = "cluster-gemini-key";

/// Builds the release binaries the cluster runs.
pub fn build() -> Result<PathBuf> {
    crate::cmd("cargo", &["build", "--release", "--locked", "-p", "terrace", "-p", "terrace-simulator"])?;
    Ok(PathBuf::from("target/release"))
}

/// A child process, killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program` with `env`, its output in `log`, and waits (at most
    /// 60 s) for it to print `listening on ADDR`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Result<Proc> {
        let out = std::fs::File::create(&log)?;
        // Many connections at once: lift the open-file limit where allowed.
        // `TERRACE_CLUSTER_WRAP` runs Terrace instances under a tool (for
        // example `valgrind --tool=massif`), to profile them under load.
        let wrap = match std::env::var("TERRACE_CLUSTER_WRAP") {
            Ok(w) if name.starts_with("terrace") => format!("{w} "),
            _ => String::new(),
        };
        let mut line = format!(
            "ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); exec {wrap}'{}'",
            program.display()
        );
        for a in args {
            line.push_str(&format!(" '{a}'"));
        }
        let child = Command::new("sh")
            .args(["-c", &line])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut p = Proc { name: name.to_owned(), child, addr: String::new(), log };
        p.addr = p.wait_for_address(Duration::from_secs(60))?;
        Ok(p)
    }

    fn wait_for_address(&mut self, bound: Duration) -> Result<String> {
        let start = Instant::now();
        while start.elapsed() < bound {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(rest) = text.split("listening on ").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
                    .collect();
                if !addr.is_empty() {
                    return Ok(addr);
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before listening; see {}", self.name, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not print its address within {bound:?}; see {}", self.name, self.log.display())
    }

    /// Starts `program` with `env`, its output in `log`, for a program that
    /// does not print its address (HAProxy): waits (at most `bound`) until
    /// `addr` accepts connections.
    pub fn start_at(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
        addr: &str,
        bound: Duration,
    ) -> Result<Proc> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut p = Proc { name: name.to_owned(), child, addr: addr.to_owned(), log };
        let start = Instant::now();
        while start.elapsed() < bound {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("{name} exited ({status}) before listening; see {}", p.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{name} did not listen on {addr} within {bound:?}; see {}", p.log.display())
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits at most `bound` for the exit. Returns whether it
    /// exited in time.
    pub fn terminate(&mut self, bound: Duration) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < bound {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Resident memory now and at its peak, in bytes (from /proc).
    pub fn memory(&self) -> (u64, u64) {
        (proc_status_bytes(self.pid(), "VmRSS:"), proc_status_bytes(self.pid(), "VmHWM:"))
    }
}

/// A memory field of `/proc/PID/status` (given in kB there), in bytes; 0 when
/// it cannot be read.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Credits `amount` tokens to `user` through the admin API, once per run.
pub async fn grant(
    http: &reqwest::Client,
    base: &str,
    user: uuid::Uuid,
    amount: u64,
    run: &str,
) -> Result<()> {
    let body = terrace_client::wire::GrantRequest {
        user_id: user.to_string(),
        amount: i64::try_from(amount)?,
        reference: format!("{run}-{user}"),
    };
    let r = http
        .post(format!("{base}/v1/admin/credits"))
        .bearer_auth(token(uuid::Uuid::nil(), true))
        .header("content-type", "application/json")
        .body(serde_json::to_string(&body)?)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("granting credits failed: {}", r.status());
    }
    Ok(())
}

/// How a failed create is counted in a report: `STATUS code`, or the error.
pub fn error_key(e: &terrace_client::ClientError) -> String {
    match e {
        terrace_client::ClientError::Api { status, code, .. } => format!("{status} {code}"),
        other => other.to_string(),
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the simulator process.
pub fn simulator(bin: &Path, dir: &Path) -> Result<Proc> {
    let env = vec![
        ("TERRACE_SIM_PORT".to_owned(), "0".to_owned()),
        ("GOOGLE_MAPS_API_KEY".to_owned(), MAPS_KEY.to_owned()),
        ("GEMINI_API_KEY".to_owned(), GEMINI_KEY.to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    Proc::start("simulator", &bin.join("terrace-simulator"), &[], &env, dir.join("simulator.log"))
}

/// The environment of a Terrace instance on `pg` with the simulator at `sim`.
pub fn server_env(pg: &TestPostgres, sim: &Proc, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("DATABASE_URL", pg.url()),
        ("TERRACE_BIND", "127.0.0.1:0".to_owned()),
        ("TERRACE_JWT_SECRET", JWT_SECRET.to_owned()),
        ("TERRACE_BLOB_URL", "memory://".to_owned()),
        ("GOOGLE_MAPS_API_KEY", MAPS_KEY.to_owned()),
        ("GEMINI_API_KEY", GEMINI_KEY.to_owned()),
        ("TERRACE_MAPS_BASE_URL", sim.url()),
        ("TERRACE_GEMINI_BASE_URL", sim.url()),
        // The simulator speaks HTTP/2 with prior knowledge, as Google speaks
        // HTTP/2: designs in flight share a few connections.
        ("TERRACE_GOOGLE_HTTP", "http2".to_owned()),
        // `listening on` is an info line of the binary.
        ("RUST_LOG", "warn,terrace=info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// Applies the migrations with `terrace migrate`, as an operator would.
pub fn migrate(bin: &Path, env: &[(String, String)]) -> Result<()> {
    let status = Command::new(bin.join("terrace"))
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .status()
        .context("running terrace migrate")?;
    if !status.success() {
        bail!("terrace migrate failed ({status})");
    }
    Ok(())
}

/// Starts one Terrace instance.
pub fn server(bin: &Path, dir: &Path, name: &str, env: &[(String, String)]) -> Result<Proc> {
    Proc::start(name, &bin.join("terrace"), &["serve"], env, dir.join(format!("{name}.log")))
}

/// An HS256 token for `user`, valid for a day.
pub fn token(user: uuid::Uuid, admin: bool) -> String {
    let exp = chrono::Utc::now().timestamp() + 86_400;
    let mut claims = serde_json::json!({"sub": user.to_string(), "exp": exp});
    if admin {
        claims["role"] = "service_role".into();
    }
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
        .expect("HS256 signing cannot fail")
}

/// Runs one SQL query with psql and returns its single value.
pub fn sql(pg: &TestPostgres, query: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([&pg.url(), "-XAtqc", query])
        .output()
        .context("running psql (install the Postgres client)")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The ledger's state after a run, from the database itself.
#[derive(Debug, Clone, Default)]
pub struct LedgerCheck {
    pub generations: u64,
    pub unfinished: u64,
    pub open_holds: u64,
    /// Accounts whose counters disagree with their entries, or whose credited
    /// total is not available + held + captured.
    pub conservation_violations: u64,
    /// Generations that ended later than deadline + slack.
    pub late: u64,
}

impl LedgerCheck {
    /// Reads the checks; `slack` is how far past its deadline a generation
    /// may end (lease TTL + sweep interval).
    pub fn read(pg: &TestPostgres, slack: Duration) -> Result<Self> {
        let n = |q: &str| -> Result<u64> { Ok(sql(pg, q)?.parse().unwrap_or(u64::MAX)) };
        Ok(Self {
            generations: n("SELECT count(*) FROM generations")?,
            unfinished: n("SELECT count(*) FROM generations WHERE status IN ('pending', 'processing')")?,
            open_holds: n("SELECT count(*) FROM generation_areas WHERE hold_state = 'held'")?,
            conservation_violations: n(CONSERVATION)?,
            late: n(&format!(
                "SELECT count(*) FROM generations WHERE completed_at > deadline_at + interval '{} milliseconds'",
                slack.as_millis()
            ))?,
        })
    }

    pub fn ok(&self) -> bool {
        self.unfinished == 0 && self.open_holds == 0 && self.conservation_violations == 0 && self.late == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "generations": self.generations,
            "unfinished": self.unfinished,
            "open_holds": self.open_holds,
            "conservation_violations": self.conservation_violations,
            "late": self.late,
        })
    }
}

const CONSERVATION: &str = "SELECT count(*) FROM accounts a LEFT JOIN (
    SELECT user_id,
           sum(amount) FILTER (WHERE kind = 'credit') AS credited,
           sum(amount) FILTER (WHERE kind = 'hold') AS held,
           sum(amount) FILTER (WHERE kind = 'capture') AS captured,
           sum(amount) FILTER (WHERE kind = 'void') AS voided
    FROM ledger_entries GROUP BY user_id) e USING (user_id)
  WHERE coalesce(e.credited, 0) <> a.trial_credits + a.token_balance + a.held + a.captured
     OR a.held <> coalesce(e.held, 0) - coalesce(e.captured, 0) - coalesce(e.voided, 0)
     OR a.captured <> coalesce(e.captured, 0)";

/// Reads one unlabelled gauge or counter from a `/metrics` page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Percentiles of a set of durations, in milliseconds.
pub fn percentiles(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    serde_json::json!({"count": samples.len(), "p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)})
}
