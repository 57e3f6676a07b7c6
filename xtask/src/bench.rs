//! `cargo xtask bench`: the request paths of one `api` instance measured
//! against what Postgres alone does with the same statements.
//!
//! One `terrace serve` (`TERRACE_ROLE=api`) on a fresh database of a
//! throwaway, durable Postgres (`fsync` and `synchronous_commit` on). The
//! server runs on one CPU; Postgres (every process: the postmaster is started
//! pinned and its children inherit) and the load driver share another. Each
//! path runs for a warm-up and then a measured window with C keep-alive
//! HTTP/1.1 connections, each sending its next request when the last answered:
//!
//! - `create`: `POST /v1/generations` with one area, users round-robin, every
//!   account credited beforehand through the admin grant;
//! - `status`: `GET /v1/generations/{id}` of generations created beforehand,
//!   spread over the users, each with its owner's token.
//!
//! Per path: requests per second, latency, errors by status, CPU seconds of
//! the server and of all Postgres processes over the window (from
//! `/proc/PID/stat`), how busy each CPU was and how much of that was other
//! processes' or stolen by the hypervisor (`/proc/stat`), how long ours
//! waited for a CPU (`/proc/PID/task/*/schedstat`), and the statements the
//! server sent with their calls per request (`pg_stat_statements`, reset at
//! the window's start, the bench's own queries in another database).
//!
//! **The ceiling.** After the window a few requests are sent one at a time
//! with `log_min_duration_statement = 0`; the log gives the statements of one
//! request in order, with their transaction boundaries, their parameter
//! values and the round trips `pg_stat_statements` does not count (empty
//! queries, prepares). They become a pgbench script with the server's own
//! statement text: a parameter that varies per request (ids) is computed per
//! transaction, every other one is bound (`-D`) with the captured value, so
//! that the statements are planned as the server's are. `pgbench -M prepared
//! -c C -j 1` replays it on the driver's CPU against the same database while
//! the server is idle. Its TPS is the path's ceiling: what the server would
//! reach if it cost nothing.
//!
//! **The Python stack's create.** After the create's ceiling, a create as
//! the Python service Terrace replaced sends it — eight round trips of one
//! statement each: `BEGIN`, the account's lock (`FOR UPDATE NOWAIT`), its
//! balance, the generation, its area and the hold's ledger entry inserted
//! one by one, the generation read back, `COMMIT` — is replayed by pgbench
//! the same way, on this schema (so the same constraints and indexes check
//! it), as a reference measured in the same window.
//!
//! The server runs with its own default pool unless `--pool` sets one; the
//! report gives the pool it reported (`terrace_db_pool_max`).
//!
//! Writes `report.json`, `report.md` and the pgbench scripts under `--out`.

use crate::cluster::{self, Proc, percentiles};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The database the server runs on. The bench's own queries run in
/// `postgres`, so that `pg_stat_statements` can leave them out by database.
const DB: &str = "terrace_bench";
/// Tokens credited to every user before the windows (the grant's maximum).
const GRANT: u64 = 100_000;
/// Requests captured, one at a time, to learn a path's statements.
const CAPTURED: usize = 8;
/// pgbench takes at most 128 scripts; the status replay spreads its reads
/// over this many generations, one script each.
const STATUS_SCRIPTS: usize = 64;
const CREATE_BODY: &str =
    r#"{"address":"1 Bench Street, Springfield","areas":[{"area":"front_yard","style":"japanese_zen"}]}"#;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Status,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Status => "status",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    connections: usize,
    /// The server's pool size (`TERRACE_DB_POOL_SIZE`); the server's own
    /// default if unset.
    pool: Option<usize>,
    seconds: u64,
    warmup: u64,
    users: usize,
    out: PathBuf,
    paths: Vec<Kind>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            connections: 32,
            pool: None,
            seconds: 20,
            warmup: 3,
            users: 1000,
            out: PathBuf::from("target/bench"),
            paths: vec![Kind::Create, Kind::Status],
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--connections" => o.connections = value.parse().context("--connections")?,
                "--pool" => o.pool = Some(value.parse().context("--pool")?),
                "--seconds" => o.seconds = value.parse().context("--seconds")?,
                "--warmup" => o.warmup = value.parse().context("--warmup")?,
                "--users" => o.users = value.parse().context("--users")?,
                "--out" => o.out = PathBuf::from(value),
                "--only" => {
                    o.paths = match value.as_str() {
                        "create" => vec![Kind::Create],
                        "status" => vec![Kind::Status],
                        other => bail!("--only {other}: use create or status"),
                    }
                }
                _ => bail!(
                    "unknown flag {flag}: use --connections C --pool P --seconds T --warmup S --users U \
                     --out DIR --only create|status"
                ),
            }
        }
        if o.connections == 0 || o.connections > 1000 {
            bail!("--connections must be 1..1000");
        }
        if o.pool.is_some_and(|p| p == 0 || p > 1000) {
            bail!("--pool must be 1..1000");
        }
        if o.seconds == 0 {
            bail!("--seconds must be at least 1");
        }
        if o.users == 0 || o.users > 1_000_000 {
            bail!("--users must be 1..1000000");
        }
        Ok(o)
    }
}

/// The user with index `k`: a fixed id, so that the replay can compute it.
fn user(k: usize) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{k:012}")).expect("a well-formed uuid")
}

/// The same id as an SQL expression of the pgbench variable `:u`.
const USER_SQL: &str = "('00000000-0000-4000-8000-' || lpad(:u::text, 12, '0'))";

fn bearer(user: Uuid) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {}", cluster::token(user, false))).expect("a token is ASCII")
}

pub fn run(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    let load_before_build = loadavg();
    let cpus = Cpus::detect()?;
    let bin = std::path::absolute(cluster::build()?)?;
    std::fs::create_dir_all(o.out.join("pgbench"))?;
    let load_start = loadavg();
    if let Some(p) = &cpus.pin {
        pin_self(p.other)?;
        eprintln!("xtask: server on CPU {}, Postgres and the load driver on CPU {}", p.server, p.other);
    } else {
        eprintln!(
            "xtask: {} CPU(s) available: fewer than 2, so nothing is pinned and the server, Postgres and the \
             load driver compete for the same CPU",
            cpus.allowed.len()
        );
    }

    // Its one worker thread inherits the driver's CPU.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let undo: Undo = Arc::default();
    on_interrupt(&rt, undo.clone());
    let pg = BenchPostgres::start(
        cpus.pin.as_ref().map(|p| p.other),
        2 * o.connections + 50,
        std::path::absolute(o.out.join("postgres-log.json"))?,
    )?;
    {
        let (mut stop, dir) = (pg.stop_command(), pg.dir.clone());
        undo.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(move || {
            let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
            let _ = std::fs::remove_dir_all(dir);
        }));
    }
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
    if pg.stat_statements {
        pg.psql("postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")?;
    } else {
        eprintln!(
            "xtask: pg_stat_statements is not installed: round trips and statements will not be measured"
        );
    }
    let mut env: Vec<(String, String)> = [
        ("DATABASE_URL", pg.url(DB)),
        ("TERRACE_ROLE", "api".to_owned()),
        ("TERRACE_BIND", "127.0.0.1:0".to_owned()),
        ("TERRACE_JWT_SECRET", cluster::JWT_SECRET.to_owned()),
        ("TERRACE_BLOB_URL", "memory://".to_owned()),
        // No generation may become overdue during the run: the sweep would
        // end it, and that work would land in a window.
        ("TERRACE_GENERATION_TIMEOUT", "2h".to_owned()),
        (
            "RUST_LOG",
            "warn,terrace=info,terrace_api=warn,terrace_engine=warn,terrace_postgres=warn,terrace_google=warn"
                .to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(pool) = o.pool {
        env.push(("TERRACE_DB_POOL_SIZE".to_owned(), pool.to_string()));
    }
    // Neither Google key is set: the server runs its in-process simulator,
    // which an api-only instance never calls.
    cluster::migrate(&bin, &env)?;
    let terrace = bin.join("terrace");
    let server = match &cpus.pin {
        Some(p) => {
            let cpu = p.server.to_string();
            let args = ["-c", &cpu, terrace.to_str().unwrap_or_default(), "serve"];
            Proc::start("server", Path::new("taskset"), &args, &env, o.out.join("server.log"))?
        }
        None => Proc::start("server", &terrace, &["serve"], &env, o.out.join("server.log"))?,
    };
    let server_pid = server.pid().to_string();
    undo.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(move || {
        let _ = Command::new("kill").args(["-KILL", &server_pid]).status();
    }));
    let bench = Bench {
        o: o.clone(),
        pg: &pg,
        base: server.url(),
        server_pid: server.pid(),
        postmaster: pg.postmaster_pid()?,
        rt,
        http: reqwest::Client::builder().pool_max_idle_per_host(o.connections).tcp_nodelay(true).build()?,
        tick: clk_tck(),
        pin: cpus.pin.as_ref().map(|p| p.other),
        cpu_ids: [cpus.allowed.first().copied().unwrap_or(0), cpus.allowed.get(1).copied().unwrap_or(0)],
    };
    let mut machine = json!({
        "cpus_online": cpus.online,
        "cpus_allowed": cpus.allowed,
        "pinned": cpus.pin.as_ref().map(|p| json!({"server": p.server, "postgres": p.other, "load_driver": p.other})),
        "postmaster_cpus": cpus_allowed_of(bench.postmaster),
        "server_cpus": cpus_allowed_of(bench.server_pid),
        "load_average_before_build": load_before_build,
        "load_average_start": load_start,
        "postgres_data_filesystem": filesystem(&pg.dir),
    });

    // The pool the server runs with, as it reports it.
    let pool = bench
        .metrics(Duration::from_secs(5))
        .and_then(|page| cluster::metric(&page, "terrace_db_pool_max"))
        .map(|v| v as u64);
    bench.grant_all()?;
    let mut paths = serde_json::Map::new();
    for path in &o.paths {
        eprintln!("xtask: path {}", path.name());
        let report = bench.path(*path)?;
        paths.insert(path.name().to_owned(), report);
    }
    machine["load_average_end"] = json!(loadavg());
    let report = json!({
        "options": {
            "connections": o.connections, "pool": o.pool, "seconds": o.seconds, "warmup_seconds": o.warmup,
            "users": o.users, "server_pool_size": pool,
        },
        "machine": machine,
        "postgres": {
            "version": pg.psql("postgres", "SHOW server_version").unwrap_or_default(),
            "settings": pg.settings.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "pg_stat_statements": pg.stat_statements,
        },
        "server_environment": env
            .iter()
            .filter(|(k, _)| k != "TERRACE_JWT_SECRET")
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "paths": paths,
    });
    drop(server);
    write_report(&o, &report)
}

/// The CPUs this process may run on, and how the run is pinned.
#[derive(Debug)]
struct Cpus {
    online: usize,
    allowed: Vec<usize>,
    pin: Option<Pin>,
}

#[derive(Debug)]
struct Pin {
    server: usize,
    other: usize,
}

impl Cpus {
    fn detect() -> Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim();
        let allowed = parse_cpu_list(list);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let online = cpuinfo.lines().filter(|l| l.starts_with("processor")).count().max(allowed.len());
        let pin = if allowed.len() >= 2 {
            let found = Command::new("taskset").arg("--version").output().is_ok_and(|o| o.status.success());
            if !found {
                bail!(
                    "taskset not found: it pins the server and Postgres to their CPUs (Debian: apt-get install util-linux)"
                );
            }
            Some(Pin { server: allowed[0], other: allowed[1] })
        } else {
            None
        };
        Ok(Cpus { online, allowed, pin })
    }
}

/// `0-3,6` → `[0, 1, 2, 3, 6]`.
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

fn cpus_allowed_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("?").trim().to_owned()
}

/// Pins this process (every thread it has; later ones inherit) to `cpu`.
fn pin_self(cpu: usize) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset could not pin the load driver to CPU {cpu} ({status})");
    }
    Ok(())
}

fn loadavg() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    json!(v)
}

fn filesystem(dir: &Path) -> String {
    let run = |c: &mut Command| {
        c.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    run(Command::new("findmnt").args(["-n", "-o", "FSTYPE", "-T"]).arg(dir))
        .or_else(|| run(Command::new("stat").args(["-f", "-c", "%T"]).arg(dir)))
        .unwrap_or_default()
}

/// What to undo if the run is interrupted (SIGINT, SIGTERM): destructors do
/// not run then, and Postgres, detached by pg_ctl, would outlive the run.
type Undo = Arc<std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>>;

fn on_interrupt(rt: &tokio::runtime::Runtime, undo: Undo) {
    rt.spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => drop(t.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        eprintln!("xtask: interrupted: stopping the server and Postgres");
        let steps = std::mem::take(&mut *undo.lock().unwrap_or_else(|p| p.into_inner()));
        for step in steps.into_iter().rev() {
            step();
        }
        std::process::exit(130);
    });
}

pub(crate) fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs `cmd` to its end, or kills it after `bound`.
fn output_within(mut cmd: Command, bound: Duration) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            bail!("{program} did not finish within {bound:?}; killed it")
        }
    }
}

// ---------------------------------------------------------------------------
// Postgres

/// A throwaway Postgres for measurements: durable (`fsync`,
/// `synchronous_commit` and `full_page_writes` on, unlike the tests'
/// [`crate::postgres::TestPostgres`]), `pg_stat_statements` loaded, its log
/// as JSON lines, and its postmaster started on one CPU so that every
/// process it forks stays there. Stopped and removed on drop.
struct BenchPostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres_user: bool,
    stat_statements: bool,
    settings: Vec<(String, String)>,
    /// Where the log is copied when Postgres stops.
    keep_log: PathBuf,
}

impl std::fmt::Debug for BenchPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchPostgres").field("port", &self.port).finish_non_exhaustive()
    }
}

fn pg_bin_dir() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    found.sort();
    if let Some(dir) = found.pop() {
        return Ok(dir);
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .find(|d| d.join("initdb").is_file())
        .context("initdb not found: install Postgres 15 (initdb, pg_ctl, postgres, pgbench)")
}

impl BenchPostgres {
    fn start(cpu: Option<usize>, max_connections: usize, keep_log: PathBuf) -> Result<Self> {
        let bin = pg_bin_dir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("terrace-bench-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("log"))?;
        let as_postgres_user =
            Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
        let libdir = Command::new(bin.join("pg_config"))
            .arg("--pkglibdir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_else(|| bin.with_file_name("lib"));
        let stat_statements = libdir.join("pg_stat_statements.so").is_file();
        let mut settings: Vec<(String, String)> = [
            ("listen_addresses", "'127.0.0.1'".to_owned()),
            ("port", port.to_string()),
            ("unix_socket_directories", format!("'{}'", dir.display())),
            ("max_connections", max_connections.to_string()),
            ("shared_buffers", "'512MB'".to_owned()),
            // Durable, as in production: a commit waits for its WAL flush.
            ("fsync", "on".to_owned()),
            ("synchronous_commit", "on".to_owned()),
            ("full_page_writes", "on".to_owned()),
            // No checkpoint in the middle of a window.
            ("max_wal_size", "'8GB'".to_owned()),
            ("checkpoint_timeout", "'30min'".to_owned()),
            ("logging_collector", "on".to_owned()),
            ("log_destination", "'jsonlog'".to_owned()),
            ("log_directory", format!("'{}'", dir.join("log").display())),
            ("log_filename", "'postgresql.log'".to_owned()),
            ("log_rotation_age", "0".to_owned()),
            ("log_rotation_size", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if stat_statements {
            settings.push(("shared_preload_libraries".into(), "'pg_stat_statements'".into()));
            settings.push(("pg_stat_statements.track_utility".into(), "on".into()));
            settings.push(("pg_stat_statements.max".into(), "10000".into()));
        }
        let pg = Self { dir, port, bin, as_postgres_user, stat_statements, settings, keep_log };
        if pg.as_postgres_user {
            let status = Command::new("chown").arg("-R").arg("postgres").arg(&pg.dir).status()?;
            if !status.success() {
                bail!("chown of the Postgres folder failed ({status})");
            }
        }
        let data = pg.dir.join("data");
        pg.run(
            &pg.tool(
                "initdb",
                &["-D", path(&data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            ),
            Duration::from_secs(120),
        )
        .context("initdb")?;
        let mut conf = String::from("\n# cargo xtask bench\n");
        for (k, v) in &pg.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let file = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&file).context("reading postgresql.conf")?;
        text.push_str(&conf);
        std::fs::write(&file, text)?;
        let log = pg.dir.join("startup.log");
        let mut start = pg.tool("pg_ctl", &["-D", path(&data), "-l", path(&log), "-w", "-t", "60", "start"]);
        if let Some(cpu) = cpu {
            // Pinned at its start: every backend and worker it forks inherits.
            let inner = start;
            start = Command::new("taskset");
            start.arg("-c").arg(cpu.to_string()).arg(inner.get_program()).args(inner.get_args());
        }
        pg.run(&start, Duration::from_secs(90))
            .with_context(|| format!("starting Postgres (log: {})", log.display()))?;
        eprintln!("xtask: Postgres listening on 127.0.0.1:{}", pg.port);
        Ok(pg)
    }

    fn stop_command(&self) -> Command {
        let data = self.dir.join("data");
        self.tool("pg_ctl", &["-D", path(&data), "-m", "immediate", "-w", "-t", "30", "stop"])
    }

    /// `tool` with `args`, as the `postgres` user when running as root.
    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let program = self.bin.join(tool);
        if self.as_postgres_user {
            let mut line = quote(path(&program));
            for a in args {
                line.push(' ');
                line.push_str(&quote(a));
            }
            let mut c = Command::new("su");
            c.args(["-s", "/bin/sh", "postgres", "-c", &line]);
            c
        } else {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    }

    fn run(&self, c: &Command, bound: Duration) -> Result<()> {
        let mut cmd = Command::new(c.get_program());
        cmd.args(c.get_args()).current_dir(&self.dir);
        let out = output_within(cmd, bound)?;
        if !out.status.success() {
            bail!("{:?} failed ({}): {}", c.get_program(), out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn postmaster_pid(&self) -> Result<u32> {
        crate::postgres::postmaster_pid(&self.dir.join("data"))
    }

    /// One query with psql; its output (unaligned, tuples only).
    fn psql(&self, db: &str, query: &str) -> Result<String> {
        let mut c = Command::new("psql");
        c.args([&self.url(db), "-XAtqc", query])
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGOPTIONS", "-c statement_timeout=60000");
        let out = output_within(c, Duration::from_secs(90))
            .context("running psql (install the Postgres client)")?;
        if !out.status.success() {
            bail!("psql failed on {query:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_owned())
    }

    /// Every JSON log line written so far.
    fn log_lines(&self) -> Vec<Value> {
        let mut lines = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            lines.extend(text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()));
        }
        lines
    }

    /// Statement logging on or off, for every session from its next command.
    fn log_statements(&self, on: bool) -> Result<()> {
        // Every message with its duration: unlike `log_statement`, this
        // shows empty queries and parses, which are round trips too.
        let set = if on {
            "ALTER SYSTEM SET log_min_duration_statement = 0"
        } else {
            "ALTER SYSTEM RESET log_min_duration_statement"
        };
        self.psql("postgres", set)?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        // The postmaster signals each backend; give them time to take it.
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }
}

impl Drop for BenchPostgres {
    fn drop(&mut self) {
        let _ = self.run(&self.stop_command(), Duration::from_secs(40));
        let log: Vec<String> = self.log_lines().iter().map(Value::to_string).collect();
        let _ = std::fs::write(&self.keep_log, log.join("\n"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------
// CPU time from /proc

/// utime, stime, cutime, cstime and the parent of a process, in clock ticks.
fn proc_stat(pid: u32) -> Option<(u32, [u64; 4])> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); ppid is field 4, utime..cstime fields 14..17.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((u32::try_from(n(1)).unwrap_or(0), [n(11), n(12), n(13), n(14)]))
}

/// CPU ticks of one process (all its threads).
pub(crate) fn ticks_of(pid: u32) -> u64 {
    proc_stat(pid).map_or(0, |(_, t)| t[0] + t[1])
}

/// CPU ticks of the postmaster and all its processes: those alive now, and
/// those that exited (counted in the postmaster's children's times).
pub(crate) fn postgres_ticks(postmaster: u32) -> u64 {
    let mut total = proc_stat(postmaster).map_or(0, |(_, t)| t.iter().sum());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some((ppid, t)) = proc_stat(pid) {
            if ppid == postmaster {
                total += t[0] + t[1];
            }
        }
    }
    total
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    server: u64,
    postgres: u64,
    driver: u64,
    driver_children: u64,
    /// Nanoseconds spent runnable but waiting for a CPU.
    server_wait: u64,
    postgres_wait: u64,
    driver_wait: u64,
    /// Per CPU: busy and stolen ticks, and all ticks (`/proc/stat`).
    cpus: [[u64; 3]; 2],
}

/// Run-queue wait of every thread of `pid`, in nanoseconds.
fn wait_ns(pid: u32) -> u64 {
    let field = |path: PathBuf| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| field(e.path().join("schedstat")))
        .sum()
}

/// Run-queue wait of the postmaster and its live children.
fn postgres_wait_ns(postmaster: u32) -> u64 {
    let mut total = wait_ns(postmaster);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if proc_stat(pid).is_some_and(|(ppid, _)| ppid == postmaster) {
            total += wait_ns(pid);
        }
    }
    total
}

/// Busy, stolen and all ticks of CPUs `ids` from `/proc/stat`.
fn cpu_ticks(ids: [usize; 2]) -> [[u64; 3]; 2] {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    ids.map(|id| {
        let name = format!("cpu{id}");
        let Some(line) = text.lines().find(|l| l.split_whitespace().next() == Some(name.as_str())) else {
            return [0; 3];
        };
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest is in user).
        let all: u64 = (0..8).map(at).sum();
        [all - at(3) - at(4), at(7), all]
    })
}

// ---------------------------------------------------------------------------
// The bench

struct Bench<'a> {
    o: Options,
    pg: &'a BenchPostgres,
    base: String,
    server_pid: u32,
    postmaster: u32,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    tick: f64,
    /// The CPU of Postgres and the load driver, when pinned.
    pin: Option<usize>,
    /// The server's CPU and the other one (the first two allowed, unpinned).
    cpu_ids: [usize; 2],
}

/// What one request of a window came to.
#[derive(Debug)]
struct Sample {
    start: Instant,
    latency: Duration,
    /// `None` for a 2xx; else `STATUS code` or the transport error.
    error: Option<String>,
}

/// The requests a window sends.
#[derive(Debug)]
enum Work {
    Create { url: String, tokens: Vec<HeaderValue> },
    Status { targets: Vec<(String, HeaderValue)> },
}

/// A generation created for the status path.
#[derive(Debug, Clone)]
struct Target {
    id: Uuid,
    user: usize,
}

/// One statement as the server sent it.
#[derive(Debug, Clone, PartialEq)]
struct Stmt {
    text: String,
    params: Vec<Option<String>>,
    /// Sent as a simple query (BEGIN, COMMIT, SET LOCAL), not prepared.
    simple: bool,
}

/// A path's statements, learnt from requests sent one at a time.
#[derive(Debug, Clone)]
struct Capture {
    sequence: Vec<Stmt>,
    /// How many captured requests sent exactly `sequence`.
    agreeing: usize,
    captured: usize,
    /// Empty queries per request (the pool's check of a connection before
    /// handing it out): round trips pg_stat_statements does not see.
    empty_queries: usize,
    /// Statements prepared during the request (none once every pooled
    /// connection has them cached): round trips pg_stat_statements does not
    /// count either.
    parses: usize,
    /// Values of the request `sequence` came from that the replay must vary:
    /// (value, what it is).
    values: Vec<(String, Token)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    User,
    Generation,
    RequestId,
}

/// Sends one request and reads its answer: `None` for a 2xx, else what went
/// wrong (`STATUS code`, `timeout`, `transport error`).
async fn send(req: reqwest::RequestBuilder) -> Option<String> {
    match req.timeout(REQUEST_TIMEOUT).send().await {
        Ok(resp) => {
            let status = resp.status();
            match resp.bytes().await {
                Ok(_) if status.is_success() => None,
                Ok(body) => Some(error_key(status, &body)),
                Err(_) => Some(format!("{} (body not read)", status.as_u16())),
            }
        }
        Err(e) if e.is_timeout() => Some("timeout".to_owned()),
        Err(_) => Some("transport error".to_owned()),
    }
}

fn error_key(status: reqwest::StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| v["code"].as_str().map(str::to_owned));
    match code {
        Some(c) => format!("{} {c}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Sends one request and returns its JSON answer; an error unless 2xx.
async fn send_json(req: reqwest::RequestBuilder) -> Result<Value> {
    let resp = req.timeout(REQUEST_TIMEOUT).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("{}", error_key(status, &body));
    }
    Ok(serde_json::from_slice(&body)?)
}

/// One connection's loop: the next request as soon as the last answered.
async fn drive(
    http: reqwest::Client,
    work: Arc<Work>,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicUsize>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let req = match &*work {
            Work::Create { url, tokens } => http
                .post(url)
                .header(AUTHORIZATION, tokens[i % tokens.len()].clone())
                .header(CONTENT_TYPE, "application/json")
                .body(CREATE_BODY),
            Work::Status { targets } => {
                let (url, token) = &targets[i % targets.len()];
                http.get(url).header(AUTHORIZATION, token.clone())
            }
        };
        let start = Instant::now();
        let error = send(req).await;
        out.push(Sample { start, latency: start.elapsed(), error });
    }
    out
}

/// What a window measured.
#[derive(Debug)]
struct Window {
    samples: Vec<Sample>,
    t0: Instant,
    t1: Instant,
    cpu0: CpuSample,
    cpu1: CpuSample,
    /// The server's counts of creates written together, at the window's
    /// start and end ([`Bench::together`]).
    together0: Option<Together>,
    together1: Option<Together>,
    statements: Vec<Value>,
}

/// `terrace_db_create_batches_total` and `terrace_db_batched_creates_total`.
type Together = (f64, f64);

impl Bench<'_> {
    fn cpu(&self) -> CpuSample {
        let me = proc_stat(std::process::id()).map_or([0; 4], |(_, t)| t);
        CpuSample {
            server: ticks_of(self.server_pid),
            postgres: postgres_ticks(self.postmaster),
            driver: me[0] + me[1],
            driver_children: me[2] + me[3],
            server_wait: wait_ns(self.server_pid),
            postgres_wait: postgres_wait_ns(self.postmaster),
            driver_wait: wait_ns(std::process::id()),
            cpus: cpu_ticks(self.cpu_ids),
        }
    }

    fn seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.tick
    }

    /// How much of the two CPUs others took, and how long ours waited for
    /// one, between two samples `secs` apart. `pgbench`: the driver's
    /// children (pgbench) ran on the Postgres CPU.
    fn contention(&self, a: &CpuSample, b: &CpuSample, secs: f64, pgbench: bool) -> Value {
        let d = |x: u64, y: u64| y.saturating_sub(x);
        let ours = [
            d(a.server, b.server),
            d(a.postgres, b.postgres)
                + d(a.driver, b.driver)
                + if pgbench { d(a.driver_children, b.driver_children) } else { 0 },
        ];
        let distinct = if self.cpu_ids[0] == self.cpu_ids[1] { 1 } else { 2 };
        let cpus: Vec<Value> = (0..distinct)
            .map(|i| {
                let all = d(a.cpus[i][2], b.cpus[i][2]).max(1) as f64;
                let busy = d(a.cpus[i][0], b.cpus[i][0]);
                let steal = d(a.cpus[i][1], b.cpus[i][1]);
                json!({
                    "cpu": self.cpu_ids[i],
                    "runs": if self.pin.is_none() { "everything" } else if i == 0 { "server" } else { "Postgres and the load driver" },
                    "busy_percent": 100.0 * busy as f64 / all,
                    "stolen_percent": 100.0 * steal as f64 / all,
                    "busy_not_ours_percent": self.pin.map(|_| 100.0 * busy.saturating_sub(ours[i]) as f64 / all),
                })
            })
            .collect();
        let ns = |x: u64, y: u64| d(x, y) as f64 / 1e9;
        // pgbench's backends have exited by the second sample, and their
        // waits with them: only the window's are known.
        let waited = |x: u64, y: u64| if pgbench { Value::Null } else { json!(ns(x, y)) };
        json!({
            "seconds": secs,
            "server_waited_for_a_cpu_seconds": waited(a.server_wait, b.server_wait),
            "postgres_waited_for_a_cpu_seconds": waited(a.postgres_wait, b.postgres_wait),
            "load_driver_waited_for_a_cpu_seconds": waited(a.driver_wait, b.driver_wait),
            "cpus": cpus,
        })
    }

    fn create_request(&self, user_index: usize, request_id: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(format!("{}/v1/generations", self.base))
            .header(AUTHORIZATION, bearer(user(user_index)))
            .header(CONTENT_TYPE, "application/json")
            .body(CREATE_BODY);
        if let Some(id) = request_id {
            r = r.header("x-request-id", id);
        }
        r
    }

    fn status_request(&self, t: &Target) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}/v1/generations/{}", self.base, t.id))
            .header(AUTHORIZATION, bearer(user(t.user)))
    }

    /// Credits every user's account through the admin API.
    fn grant_all(&self) -> Result<()> {
        let started = Instant::now();
        let (http, base) = (&self.http, self.base.as_str());
        self.rt.block_on(async {
            futures::stream::iter(0..self.o.users)
                .map(|k| cluster::grant(http, base, user(k), GRANT, "bench"))
                .buffer_unordered(32)
                .collect::<Vec<Result<()>>>()
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()
        })?;
        eprintln!(
            "xtask: credited {} users with {GRANT} tokens each in {:.1?}",
            self.o.users,
            started.elapsed()
        );
        Ok(())
    }

    /// Generations for the status path, spread over the users.
    fn create_targets(&self) -> Result<Vec<Target>> {
        let n = self.o.users.min(5000);
        let users = self.o.users;
        let results = self.rt.block_on(async {
            futures::stream::iter(0..n)
                .map(|k| {
                    let u = k * users / n;
                    async move { (u, send_json(self.create_request(u, None)).await) }
                })
                .buffer_unordered(self.o.connections)
                .collect::<Vec<_>>()
                .await
        });
        let mut targets = Vec::new();
        let mut failed: HashMap<String, u64> = HashMap::new();
        for (u, r) in results {
            match r.and_then(|v| {
                v["id"].as_str().and_then(|s| s.parse().ok()).context("an answer without an id")
            }) {
                Ok(id) => targets.push(Target { id, user: u }),
                Err(e) => *failed.entry(format!("{e:#}")).or_default() += 1,
            }
        }
        if targets.len() < n.div_ceil(2) {
            bail!("only {} of {n} generations for the status path were created: {failed:?}", targets.len());
        }
        targets.sort_by_key(|t| t.user);
        eprintln!("xtask: created {} generations for the status path", targets.len());
        Ok(targets)
    }

    fn mark(&self, path: Kind, k: usize) -> Result<()> {
        self.pg.psql("postgres", &format!("SELECT '{}'", marker(path, k))).map(drop)
    }

    /// Sends a few requests of `path` one at a time with statement logging
    /// on, and reads their statements from the log.
    fn capture(&self, path: Kind, targets: &[Target]) -> Result<Capture> {
        self.pg.log_statements(true)?;
        let sent = (|| -> Result<Vec<Vec<(String, Token)>>> {
            let mut values = Vec::new();
            for k in 0..CAPTURED {
                self.mark(path, k)?;
                match path {
                    Kind::Create => {
                        let rid = format!("terrace-bench-capture-{k}");
                        let u = k % self.o.users;
                        let v = self.rt.block_on(send_json(self.create_request(u, Some(&rid))))?;
                        let id = v["id"].as_str().context("a create answer without an id")?.to_owned();
                        values.push(vec![
                            (id, Token::Generation),
                            (user(u).to_string(), Token::User),
                            (rid, Token::RequestId),
                        ]);
                    }
                    Kind::Status => {
                        let t = &targets[k % targets.len()];
                        self.rt.block_on(send_json(self.status_request(t)))?;
                        values.push(vec![
                            (t.id.to_string(), Token::Generation),
                            (user(t.user).to_string(), Token::User),
                        ]);
                    }
                }
            }
            self.mark(path, CAPTURED)?;
            Ok(values)
        })();
        self.pg.log_statements(false)?;
        let values = sent?;
        let last = marker(path, CAPTURED);
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let lines = self.pg.log_lines();
            if lines.iter().any(|l| is_marker(l, &last)) {
                break lines;
            }
            if Instant::now() > deadline {
                bail!("the Postgres log did not show the capture's end within 10 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut segments: Vec<Vec<Stmt>> = vec![Vec::new(); CAPTURED];
        let mut parses = [0usize; CAPTURED];
        let mut bound: HashMap<u64, Vec<Option<String>>> = HashMap::new();
        let mut current: Option<usize> = None;
        for line in &lines {
            if let Some(k) = (0..=CAPTURED).find(|k| is_marker(line, &marker(path, *k))) {
                current = Some(k);
                continue;
            }
            let app = line["application_name"].as_str().unwrap_or("");
            if line["dbname"].as_str() != Some(DB) || app == "psql" || app.starts_with("pgbench") {
                continue;
            }
            let Some(k) = current.filter(|k| *k < CAPTURED) else { continue };
            let pid = line["pid"].as_u64().unwrap_or(0);
            match parse_logged(line) {
                Some(Logged::Stmt(mut stmt)) => {
                    if !stmt.simple && stmt.params.is_empty() {
                        stmt.params = bound.remove(&pid).unwrap_or_default();
                    }
                    segments[k].push(stmt);
                }
                Some(Logged::Bind(params)) => {
                    bound.insert(pid, params);
                }
                Some(Logged::Parse) => parses[k] += 1,
                None => {}
            }
        }
        // The sequence most requests sent (a background sweep may have
        // slipped into one of them).
        let key = |s: &[Stmt]| {
            s.iter().map(|x| format!("{}\u{1}{}", x.simple, x.text)).collect::<Vec<_>>().join("\u{2}")
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for s in &segments {
            *counts.entry(key(s)).or_default() += 1;
        }
        let (best, agreeing) =
            counts.into_iter().max_by_key(|(k, n)| (*n, std::cmp::Reverse(k.len()))).unwrap_or_default();
        let index = segments.iter().position(|s| key(s) == best).unwrap_or(0);
        let all = segments.swap_remove(index);
        if all.is_empty() {
            bail!("no statement of a {} request was found in the Postgres log", path.name());
        }
        let empty_queries = all.iter().filter(|s| s.simple && s.text.trim().is_empty()).count();
        let sequence: Vec<Stmt> =
            all.into_iter().filter(|s| !(s.simple && s.text.trim().is_empty())).collect();
        Ok(Capture {
            sequence,
            agreeing,
            captured: CAPTURED,
            empty_queries,
            parses: parses[index],
            values: values[index].clone(),
        })
    }

    /// A warm-up and a measured window of `work` on C connections.
    fn window(&self, work: Arc<Work>) -> Result<Window> {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..self.o.connections)
            .map(|_| self.rt.spawn(drive(self.http.clone(), work.clone(), stop.clone(), next.clone())))
            .collect();
        type Measured = (Instant, Instant, CpuSample, CpuSample, Option<Together>, Option<Together>);
        let measured = (|| -> Result<Measured> {
            std::thread::sleep(Duration::from_secs(self.o.warmup));
            if self.pg.stat_statements {
                self.pg.psql("postgres", "SELECT pg_stat_statements_reset()")?;
            }
            let together0 = self.together();
            let cpu0 = self.cpu();
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(self.o.seconds));
            let cpu1 = self.cpu();
            let t1 = Instant::now();
            let together1 = self.together();
            Ok((t0, t1, cpu0, cpu1, together0, together1))
        })();
        stop.store(true, Ordering::Relaxed);
        let bound = REQUEST_TIMEOUT + Duration::from_secs(30);
        let joined = self
            .rt
            .block_on(async { tokio::time::timeout(bound, futures::future::join_all(tasks)).await })
            .context("the load connections did not stop")?;
        let (t0, t1, cpu0, cpu1, together0, together1) = measured?;
        let mut samples = Vec::new();
        for r in joined {
            samples.extend(r.context("a load connection failed")?);
        }
        let statements = self.statements()?;
        Ok(Window { samples, t0, t1, cpu0, cpu1, together0, together1, statements })
    }

    /// The server's `/metrics` page, or `None` if it did not answer within
    /// `bound`. (The timeout is made inside the runtime: its timer needs one.)
    fn metrics(&self, bound: Duration) -> Option<String> {
        self.rt
            .block_on(async {
                let page =
                    async { self.http.get(format!("{}/metrics", self.base)).send().await?.text().await };
                tokio::time::timeout(bound, page).await
            })
            .ok()?
            .ok()
    }

    /// The server's counts of creates written together, from its `/metrics`
    /// (`None` if it did not answer within a second).
    fn together(&self) -> Option<Together> {
        let page = self.metrics(Duration::from_secs(1))?;
        Some((
            cluster::metric(&page, "terrace_db_create_batches_total")?,
            cluster::metric(&page, "terrace_db_batched_creates_total")?,
        ))
    }

    /// The server's statements since the last reset, most called first.
    fn statements(&self) -> Result<Vec<Value>> {
        if !self.pg.stat_statements {
            return Ok(Vec::new());
        }
        let q = format!(
            "SELECT coalesce(json_agg(json_build_object('query', s.query, 'calls', s.calls, \
             'total_ms', s.total_exec_time, 'rows', s.rows) ORDER BY s.calls DESC, s.query), '[]') \
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{DB}'"
        );
        let v: Value =
            serde_json::from_str(&self.pg.psql("postgres", &q)?).context("reading pg_stat_statements")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Capture, window and ceiling of one path.
    fn path(&self, path: Kind) -> Result<Value> {
        let targets = if path == Kind::Status { self.create_targets()? } else { Vec::new() };
        let work = match path {
            Kind::Create => Work::Create {
                url: format!("{}/v1/generations", self.base),
                tokens: (0..self.o.users).map(|k| bearer(user(k))).collect(),
            },
            Kind::Status => Work::Status {
                targets: targets
                    .iter()
                    .map(|t| (format!("{}/v1/generations/{}", self.base, t.id), bearer(user(t.user))))
                    .collect(),
            },
        };
        eprintln!(
            "xtask: {}: {} s warm-up, then {} s measured on {} connections",
            path.name(),
            self.o.warmup,
            self.o.seconds,
            self.o.connections
        );
        let w = self.window(Arc::new(work))?;
        let mut report = self.figures(&w);
        // After the window, so that the captured requests are the window's
        // steady state: their users known to the server, every pooled
        // connection with its statements prepared.
        let capture = self.capture(path, &targets);
        report["capture"] = match &capture {
            Ok(c) => {
                let unseen = c.empty_queries + c.parses;
                report["statements_per_request"] = json!(c.sequence.len() + unseen);
                report["round_trips_per_request"] = json!(round_trips(&c.sequence).len() + unseen);
                json!({
                    "requests": c.captured,
                    "agreeing": c.agreeing,
                    "empty_queries_per_request": c.empty_queries,
                    "parses_per_request": c.parses,
                    "sequence": c.sequence.iter().map(|s| json!({"query": s.text, "simple_query": s.simple, "parameters": s.params.len()})).collect::<Vec<_>>(),
                })
            }
            Err(e) => {
                eprintln!("xtask: could not capture the {} statements: {e:#}", path.name());
                json!({"error": format!("{e:#}")})
            }
        };
        let ceiling = match &capture {
            Ok(c) => {
                eprintln!("xtask: {}: ceiling with pgbench", path.name());
                self.ceiling(path, c, &targets).unwrap_or_else(|e| {
                    eprintln!("xtask: {}: no ceiling: {e:#}", path.name());
                    json!({"error": format!("{e:#}")})
                })
            }
            Err(e) => json!({"error": format!("the statements could not be captured: {e:#}")}),
        };
        if let Some(tps) = ceiling["tps"].as_f64() {
            report["throughput_over_ceiling"] = json!(report["ok_per_second"].as_f64().unwrap_or(0.0) / tps);
        }
        report["ceiling"] = ceiling;
        if path == Kind::Create {
            eprintln!("xtask: create: the Python stack's create, replayed with pgbench");
            report["python_shape"] = self.python_shape().unwrap_or_else(|e| {
                eprintln!("xtask: create: no replay of the Python stack's create: {e:#}");
                json!({"error": format!("{e:#}")})
            });
            if let Some(tps) = report["python_shape"]["tps"].as_f64() {
                report["throughput_over_python_shape"] =
                    json!(report["ok_per_second"].as_f64().unwrap_or(0.0) / tps);
            }
        }
        Ok(report)
    }

    fn figures(&self, w: &Window) -> Value {
        let secs = (w.t1 - w.t0).as_secs_f64();
        let in_window: Vec<&Sample> =
            w.samples.iter().filter(|s| s.start >= w.t0 && s.start < w.t1).collect();
        let requests = in_window.len();
        let mut ok: Vec<Duration> =
            in_window.iter().filter(|s| s.error.is_none()).map(|s| s.latency).collect();
        let mut errors: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for s in &in_window {
            if let Some(e) = &s.error {
                *errors.entry(e.clone()).or_default() += 1;
            }
        }
        let ok_count = ok.len();
        let server = self.seconds(w.cpu1.server.saturating_sub(w.cpu0.server));
        let postgres = self.seconds(w.cpu1.postgres.saturating_sub(w.cpu0.postgres));
        let driver = self.seconds(w.cpu1.driver.saturating_sub(w.cpu0.driver));
        let calls: u64 = w.statements.iter().filter_map(|s| s["calls"].as_u64()).sum();
        let per = |n: f64| if requests == 0 { 0.0 } else { n / requests as f64 };
        let statements: Vec<Value> = w
            .statements
            .iter()
            .map(|s| {
                let c = s["calls"].as_u64().unwrap_or(0);
                json!({
                    "query": s["query"],
                    "calls": c,
                    "per_request": per(c as f64),
                    "mean_ms": s["total_ms"].as_f64().unwrap_or(0.0) / (c.max(1) as f64),
                    "rows": s["rows"],
                    // Fewer than one call in a hundred requests: the
                    // server's background work (sweeps), not the path.
                    "background": per(c as f64) < 0.01,
                })
            })
            .collect();
        let path_calls: u64 = statements
            .iter()
            .filter(|s| s["background"] == json!(false))
            .filter_map(|s| s["calls"].as_u64())
            .sum();
        // Creates the server wrote in transactions of two or more, in the window.
        let together = match (w.together0, w.together1) {
            (Some((b0, c0)), Some((b1, c1))) => json!({
                "transactions": b1 - b0,
                "creates": c1 - c0,
                "per_transaction": if b1 > b0 { (c1 - c0) / (b1 - b0) } else { 0.0 },
                "share_of_requests": per(c1 - c0),
            }),
            _ => Value::Null,
        };
        json!({
            "seconds": secs,
            "requests": requests,
            "written_together": together,
            "requests_per_second": requests as f64 / secs,
            "ok_per_second": ok_count as f64 / secs,
            "latency_ok": percentiles(&mut ok),
            "errors": errors,
            "account_busy": errors.get("409 account_busy").copied().unwrap_or(0),
            "cpu": {
                "server_seconds": server,
                "server_percent": 100.0 * server / secs,
                "postgres_seconds": postgres,
                "postgres_percent": 100.0 * postgres / secs,
                "load_driver_seconds": driver,
                "load_driver_percent": 100.0 * driver / secs,
                "postgres_ms_per_request": 1000.0 * per(postgres),
                "server_ms_per_request": 1000.0 * per(server),
                "load_driver_ms_per_request": 1000.0 * per(driver),
            },
            "contention": self.contention(&w.cpu0, &w.cpu1, secs, false),
            // Executions pg_stat_statements saw: it counts a prepared BEGIN,
            // SET or COMMIT once per connection, so these undercount them.
            "statements_seen_per_request": self.pg.stat_statements.then(|| per(calls as f64)),
            "statements_seen_per_request_without_background": self.pg.stat_statements.then(|| per(path_calls as f64)),
            "statements": statements,
        })
    }

    /// The parameter types Postgres infers for `text`, as it does for the
    /// server's unnamed-type prepare.
    fn param_types(&self, text: &str) -> Result<Vec<String>> {
        let q = format!(
            "PREPARE terrace_bench_probe AS {text}; \
             SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY n), '') FROM pg_prepared_statements, \
             unnest(parameter_types) WITH ORDINALITY AS u(t, n) WHERE name = 'terrace_bench_probe'"
        );
        Ok(self.pg.psql(DB, &q)?.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
    }

    fn pgbench(
        &self,
        scripts: &[PathBuf],
        clients: usize,
        limit: &[String],
        bound: Duration,
    ) -> Result<Output> {
        let program = self.pg.bin.join("pgbench");
        let mut c = match &self.pin {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        c.args(["-M", "prepared", "-n", "-j", "1", "-c", &clients.to_string()]).args(limit);
        for s in scripts {
            c.arg("-f").arg(s);
        }
        c.arg(self.pg.url(DB)).env("PGCONNECT_TIMEOUT", "10");
        output_within(c, bound)
    }

    /// The path's statements replayed by pgbench against the same database,
    /// the server idle.
    fn ceiling(&self, path: Kind, c: &Capture, targets: &[Target]) -> Result<Value> {
        let mut types = Vec::new();
        for s in &c.sequence {
            let t = if s.params.is_empty() { Vec::new() } else { self.param_types(&s.text)? };
            if t.len() != s.params.len() {
                bail!(
                    "the log gave {} parameters for a statement Postgres infers {} for: {}",
                    s.params.len(),
                    t.len(),
                    s.text
                );
            }
            types.push(t);
        }
        let mut notes = vec![
            "the statements' text is the server's; each parameter that is the same for every request (address, \
             style, amounts, durations) is bound with the captured request's value (a pgbench -D variable, cast \
             to the type Postgres infers for the server's parameter); a NULL parameter is a literal NULL, which \
             the planner may fold where the server's custom plan would too"
                .to_owned(),
            "values the server computed for the captured request (balances written back, timestamps) are \
             replayed as captured"
                .to_owned(),
            "pgbench runs on Postgres's CPU, as the load driver does in the window, but it also does the client \
             side of the Postgres protocol there, which in the window the server does on its own CPU: where \
             Postgres's CPU is the bottleneck, the ceiling understates what Postgres can do and the ratio can \
             exceed 1 (compare Postgres's CPU per request and per transaction)"
                .to_owned(),
        ];
        if c.sequence.iter().any(|s| s.simple) {
            notes.push(
                "statements the server sent as simple queries (BEGIN, COMMIT, SET LOCAL) are sent as prepared \
                 statements"
                    .to_owned(),
            );
        }
        if round_trips(&c.sequence).len() < c.sequence.len() {
            notes.push(
                "the statements are grouped into round trips by rule, not observed: a round trip ends after a \
                 statement that takes a row lock, and at the end, as the server's store sends them \
                 (docs/POSTGRES.md); pgbench sends each round trip of several statements as one pipeline \
                 (\\startpipeline … \\endpipeline)"
                    .to_owned(),
            );
        }
        if c.empty_queries > 0 {
            notes.push(format!(
                "the server's {} empty quer{} per request (the pool checking a connection before handing it \
                 out) are not replayed: pgbench cannot send one",
                c.empty_queries,
                if c.empty_queries == 1 { "y" } else { "ies" }
            ));
        }
        if c.sequence.iter().any(|s| s.text.to_lowercase().contains("notify")) {
            notes.push(
                "pg_notify is replayed as sent; the idle server's listener connection receives those \
                 notifications, as in the window"
                    .to_owned(),
            );
        }
        if c.sequence.iter().any(|s| s.text.to_lowercase().contains("advisory")) {
            notes.push("advisory locks are replayed with the captured keys".to_owned());
        }
        let dir = std::path::absolute(self.o.out.join("pgbench"))?;
        let mut scripts = Vec::new();
        let mut vars = Vec::new();
        match path {
            Kind::Create => {
                let (users, clients) = (self.o.users, self.o.connections);
                if users < clients {
                    notes.push(format!(
                        "{clients} clients share {users} users: some contend for account rows"
                    ));
                }
                let header = create_header(users, clients);
                let (text, v) = script(
                    &header,
                    c,
                    &types,
                    |t| match t {
                        Token::Generation => "md5(:r::text)::uuid::text".to_owned(),
                        Token::User => USER_SQL.to_owned(),
                        Token::RequestId => "('bench-' || :r::text)".to_owned(),
                    },
                    "c",
                )?;
                vars.extend(v);
                notes.push(
                    "each transaction gets a fresh generation id (md5 of a random number) and request id, and one \
                     of its client's users; those parameters are SQL expressions of pgbench's integer variables \
                     rather than bound uuids and text"
                        .to_owned(),
                );
                let file = dir.join("create.sql");
                std::fs::write(&file, text)?;
                scripts.push(file);
            }
            Kind::Status => {
                let n = targets.len().min(STATUS_SCRIPTS);
                for j in 0..n {
                    let t = &targets[j * targets.len() / n];
                    let id = t.id.to_string();
                    let owner = user(t.user).to_string();
                    // This script's generation in place of the captured one:
                    // every parameter stays a bound constant.
                    let mut capture = Capture { values: Vec::new(), ..c.clone() };
                    for s in &mut capture.sequence {
                        for p in s.params.iter_mut().flatten() {
                            for (val, tok) in &c.values {
                                let by = match tok {
                                    Token::Generation => &id,
                                    Token::User => &owner,
                                    Token::RequestId => continue,
                                };
                                *p = p.replace(val.as_str(), by);
                            }
                        }
                    }
                    let (text, v) = script("", &capture, &types, |_| String::new(), &format!("s{j}"))?;
                    vars.extend(v);
                    let file = dir.join(format!("status-{j}.sql"));
                    std::fs::write(&file, text)?;
                    scripts.push(file);
                }
                notes.push(format!(
                    "reads spread over {n} existing generations (one pgbench script each, picked at random per \
                     transaction) rather than all {}",
                    targets.len()
                ));
            }
        }
        std::fs::write(
            dir.join(format!("{}.vars", path.name())),
            vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>(),
        )?;
        let mut r = self.replay(path.name(), &scripts, &vars)?;
        // (pg_stat_statements is no check here: it counts a prepared BEGIN,
        // SET or COMMIT once per connection.)
        r["statements_per_transaction"] = json!(c.sequence.len());
        r["round_trips_per_transaction"] = json!(round_trips(&c.sequence).len());
        r["command"] = json!(format!(
            "pgbench -M prepared -c {} -j 1 -T {} -n -D … ({} values, in pgbench/{}.vars) {}",
            self.o.connections,
            self.o.seconds,
            vars.len(),
            path.name(),
            if scripts.len() > 2 {
                format!("-f pgbench/{}-{{0..{}}}.sql", path.name(), scripts.len() - 1)
            } else {
                scripts
                    .iter()
                    .map(|s| format!("-f pgbench/{}", s.file_name().unwrap_or_default().to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        ));
        r["approximations"] = json!(notes);
        Ok(r)
    }

    /// A create as the Python stack that Terrace replaced sends it, replayed
    /// by pgbench on Terrace's schema in the same window: eight round trips
    /// of one statement each (`BEGIN`; the account's row lock, `FOR UPDATE
    /// NOWAIT`; its balance written; the generation, its area and the
    /// hold's ledger entry inserted one by one; the generation read back;
    /// `COMMIT`), every statement prepared. The same tables, constraints
    /// and indexes check it as check Terrace's own create.
    fn python_shape(&self) -> Result<Value> {
        let clients = self.o.connections;
        let g = "md5(:r::text)::uuid";
        let statements = format!(
            "BEGIN;\n\
             SELECT trial_credits, token_balance, held FROM accounts WHERE user_id = {USER_SQL}::uuid FOR UPDATE NOWAIT;\n\
             UPDATE accounts SET token_balance = token_balance - 1, held = held + 1, updated_at = now() WHERE user_id = {USER_SQL}::uuid;\n\
             INSERT INTO generations (id, user_id, request_id, status, address, deadline_at) VALUES ({g}, {USER_SQL}::uuid, 'python-' || :r::text, 'pending', '1600 Amphitheatre Parkway, Mountain View, CA', now() + interval '5 minutes');\n\
             INSERT INTO generation_areas (generation_id, position, area, style, preservation_strength, status, stage, hold_source, hold_state) VALUES ({g}, 0, 'backyard', 'modern_minimalist', 0.6, 'pending', 'queued', 'token', 'held');\n\
             INSERT INTO ledger_entries (user_id, kind, amount, source, generation_id, area) VALUES ({USER_SQL}::uuid, 'hold', 1, 'token', {g}, 'backyard');\n\
             SELECT * FROM generations WHERE id = {g};\n\
             COMMIT;\n"
        );
        let file = std::path::absolute(self.o.out.join("pgbench").join("python-create.sql"))?;
        std::fs::write(&file, create_header(self.o.users, clients) + &statements)?;
        let mut r = self.replay("python-create", &[file], &[])?;
        // One statement per line, each its own round trip.
        let sent = statements.lines().count();
        r["statements_per_transaction"] = json!(sent);
        r["round_trips_per_transaction"] = json!(sent);
        r["command"] = json!(format!(
            "pgbench -M prepared -c {clients} -j 1 -T {} -n -f pgbench/python-create.sql",
            self.o.seconds
        ));
        Ok(r)
    }

    /// Runs `scripts` with pgbench on the path's connection count: one
    /// transaction first (a replay that fails must say why, not report a
    /// figure), the warm-up, then the measured seconds, with each process's
    /// CPU. The output is kept as `pgbench/<name>.out`.
    fn replay(&self, name: &str, scripts: &[PathBuf], vars: &[(String, String)]) -> Result<Value> {
        let defines: Vec<String> =
            vars.iter().flat_map(|(k, v)| ["-D".to_owned(), format!("{k}={v}")]).collect();
        let args = |limit: &str, n: u64| {
            let mut a = defines.clone();
            a.extend([limit.to_owned(), n.to_string()]);
            a
        };
        let trial = self.pgbench(scripts, 1, &args("-t", 1), Duration::from_secs(60))?;
        let trial_err = String::from_utf8_lossy(&trial.stderr);
        if !trial.status.success() || trial_err.contains("aborted") {
            bail!("the replay fails on its first transaction: {}", first_lines(&trial_err, 4));
        }
        let clients = self.o.connections;
        if self.o.warmup > 0 {
            let t = Duration::from_secs(self.o.warmup);
            self.pgbench(scripts, clients, &args("-T", self.o.warmup), t + Duration::from_secs(120))?;
        }
        let cpu0 = self.cpu();
        let t0 = Instant::now();
        let bound = Duration::from_secs(self.o.seconds) + Duration::from_secs(120);
        let out = self.pgbench(scripts, clients, &args("-T", self.o.seconds), bound)?;
        let wall = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        let cpu1 = self.cpu();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let dir = self.o.out.join("pgbench");
        std::fs::write(dir.join(format!("{name}.out")), format!("{stdout}\n{stderr}"))?;
        if !out.status.success() || stderr.contains("aborted") {
            bail!("pgbench failed ({}): {}", out.status, first_lines(&stderr, 4));
        }
        let field = |prefix: &str| -> Option<f64> {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        let tps = field("tps = ").context("pgbench printed no tps")?;
        let transactions = field("number of transactions actually processed: ").unwrap_or(0.0);
        let postgres = self.seconds(cpu1.postgres.saturating_sub(cpu0.postgres));
        let pgbench_cpu = self.seconds(cpu1.driver_children.saturating_sub(cpu0.driver_children));
        let server = self.seconds(cpu1.server.saturating_sub(cpu0.server));
        Ok(json!({
            "tps": tps,
            "transactions": transactions,
            "latency_average_ms": field("latency average = "),
            "failed_transactions": field("number of failed transactions: "),
            "cpu": {
                "postgres_seconds": postgres,
                "postgres_percent": 100.0 * postgres / wall,
                "pgbench_seconds": pgbench_cpu,
                "pgbench_percent": 100.0 * pgbench_cpu / wall,
                "server_seconds": server,
                "postgres_ms_per_transaction": if transactions > 0.0 { 1000.0 * postgres / transactions } else { 0.0 },
                // pgbench runs on Postgres's CPU: its share of the protocol
                // work is done there, where the server's is on its own CPU.
                "pgbench_ms_per_transaction": if transactions > 0.0 { 1000.0 * pgbench_cpu / transactions } else { 0.0 },
            },
            "contention": self.contention(&cpu0, &cpu1, wall, true),
        }))
    }
}

/// The pgbench variables of a replayed create: `:r`, a fresh random number
/// per transaction (the generation's id and request id are made of it),
/// and `:u`, one of the client's own users, so that no two clients contend
/// for one account row (the window's round-robin does not); with fewer
/// users than clients, users are shared.
fn create_header(users: usize, clients: usize) -> String {
    let u = if users >= clients {
        format!(":client_id + {clients} * random(0, {})", users / clients - 1)
    } else {
        format!(":client_id % {users}")
    };
    format!("\\set r random(1, 9000000000000000000)\n\\set u {u}\n")
}

fn first_lines(s: &str, n: usize) -> String {
    s.lines().filter(|l| !l.trim().is_empty()).take(n).collect::<Vec<_>>().join(" / ")
}

fn marker(path: Kind, k: usize) -> String {
    format!("terrace-bench-mark {} {k}", path.name())
}

fn is_marker(line: &Value, marker: &str) -> bool {
    line["message"].as_str().is_some_and(|m| m.contains("statement: ") && m.contains(&format!("'{marker}'")))
}

/// What a line of `log_min_duration_statement = 0` says was sent.
#[derive(Debug, Clone, PartialEq)]
enum Logged {
    /// A statement run (a simple query, or the execute of a prepared one).
    Stmt(Stmt),
    /// A statement prepared: a round trip of its own.
    Parse,
    /// Parameters bound (the execute that follows may not repeat them).
    Bind(Vec<Option<String>>),
}

/// `duration: 0.1 ms  execute s1: SELECT …` with its parameters.
fn parse_logged(line: &Value) -> Option<Logged> {
    let msg = line["message"].as_str()?;
    let msg = match msg.strip_prefix("duration: ") {
        Some(rest) => rest.split_once(" ms  ")?.1,
        None => msg,
    };
    if let Some(text) = msg.strip_prefix("statement: ") {
        return Some(Logged::Stmt(Stmt { text: text.to_owned(), params: Vec::new(), simple: true }));
    }
    let params = || {
        line["detail"]
            .as_str()
            .and_then(|d| d.strip_prefix("parameters: ").or_else(|| d.strip_prefix("Parameters: ")))
            .map(parse_params)
            .unwrap_or_default()
    };
    if msg.starts_with("parse ") {
        return Some(Logged::Parse);
    }
    if msg.starts_with("bind ") {
        return Some(Logged::Bind(params()));
    }
    let (_, text) = msg.strip_prefix("execute ")?.split_once(": ")?;
    Some(Logged::Stmt(Stmt { text: text.to_owned(), params: params(), simple: false }))
}

/// `$1 = 'a''b', $2 = NULL` → `[Some("a'b"), None]`.
fn parse_params(s: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.starts_with('$') {
        let Some(eq) = rest.find(" = ") else { break };
        rest = &rest[eq + 3..];
        if let Some(r) = rest.strip_prefix("NULL") {
            out.push(None);
            rest = r;
        } else if let Some(mut r) = rest.strip_prefix('\'') {
            let mut v = String::new();
            loop {
                let Some(q) = r.find('\'') else { return out };
                v.push_str(&r[..q]);
                if r[q + 1..].starts_with('\'') {
                    v.push('\'');
                    r = &r[q + 2..];
                } else {
                    r = &r[q + 1..];
                    break;
                }
            }
            out.push(Some(v));
            rest = r;
        } else {
            break;
        }
        match rest.strip_prefix(", ") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// A string as an SQL literal pgbench leaves alone: pgbench takes `:name`
/// anywhere, inside literals too, for a variable, so colons are escaped.
fn literal(s: &str) -> String {
    let mut out = String::from("E'");
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            ':' => out.push_str("\\x3a"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// How a parameter is replayed: bound as the pgbench variable `name` (set
/// with `-D`, so that the statement stays parameterised as the server's was
/// and is planned the same way), or, when it holds a value that varies per
/// request, an SQL expression of type `ty` computing it from pgbench's
/// per-transaction variables. A NULL is a typed literal NULL (pgbench
/// variables cannot be NULL). Returns the SQL and the variable to define.
fn param_sql(
    value: Option<&str>,
    ty: &str,
    values: &[(String, Token)],
    expr: &impl Fn(Token) -> String,
    name: &str,
) -> (String, Option<(String, String)>) {
    let Some(mut v) = value else { return (format!("NULL::{ty}"), None) };
    if !values.iter().any(|(val, _)| v.contains(val.as_str())) {
        return (format!(":{name}::{ty}"), Some((name.to_owned(), v.to_owned())));
    }
    let mut parts = Vec::new();
    while !v.is_empty() {
        let next = values
            .iter()
            .filter_map(|(val, t)| v.find(val.as_str()).map(|at| (at, val, *t)))
            .min_by_key(|(at, _, _)| *at);
        match next {
            Some((at, val, t)) => {
                if at > 0 {
                    parts.push(literal(&v[..at]));
                }
                parts.push(expr(t));
                v = &v[at + val.len()..];
            }
            None => {
                parts.push(literal(v));
                v = "";
            }
        }
    }
    (format!("({})::{ty}", parts.join(" || ")), None)
}

/// A pgbench script of the captured sequence, and the variables it binds
/// (named `{prefix}_{statement}_{parameter}`).
fn script(
    header: &str,
    c: &Capture,
    types: &[Vec<String>],
    expr: impl Fn(Token) -> String,
    prefix: &str,
) -> Result<(String, Vec<(String, String)>)> {
    let mut s = header.to_owned();
    let mut vars = Vec::new();
    // Where each round trip of more than one statement starts and ends.
    let mut starts = std::collections::HashSet::new();
    let mut ends = std::collections::HashSet::new();
    let mut at = 0;
    for n in round_trips(&c.sequence) {
        if n > 1 {
            starts.insert(at);
            ends.insert(at + n - 1);
        }
        at += n;
    }
    for (i, (st, ty)) in c.sequence.iter().zip(types).enumerate() {
        if starts.contains(&i) {
            s.push_str("\\startpipeline\n");
        }
        let mut params = Vec::new();
        for (n, (v, t)) in st.params.iter().zip(ty).enumerate() {
            let (sql, var) = param_sql(v.as_deref(), t, &c.values, &expr, &format!("{prefix}_{i}_{}", n + 1));
            params.push(sql);
            vars.extend(var);
        }
        let sql = rewrite(&st.text, &params)?;
        let sql = sql.trim().trim_end_matches(';').trim_end();
        if !sql.is_empty() {
            s.push_str(sql);
            s.push_str(";\n");
        }
        if ends.contains(&i) {
            s.push_str("\\endpipeline\n");
        }
    }
    Ok((s, vars))
}

/// The round trips in which the server sends `sequence`, as statement
/// counts: it sends statements together and reads their answers only where
/// what it sends next depends on one, which for Terrace's paths is after a
/// statement that takes a row lock (the account's, a generation's) and at
/// the end (`docs/POSTGRES.md`, "Statements per request").
fn round_trips(sequence: &[Stmt]) -> Vec<usize> {
    let mut trips = Vec::new();
    let mut n = 0;
    for st in sequence {
        n += 1;
        if st.text.to_uppercase().contains("FOR UPDATE") {
            trips.push(n);
            n = 0;
        }
    }
    if n > 0 {
        trips.push(n);
    }
    trips
}

/// `text` with `$n` replaced by `params[n - 1]`, and what pgbench would take
/// for a variable (`:name`, in literals or out) spelt so that it does not;
/// comments dropped.
fn rewrite(text: &str, params: &[String]) -> Result<String> {
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let mut out: Vec<u8> = Vec::with_capacity(b.len() * 2);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let escaped = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e') && (i < 2 || !ident(b[i - 2]));
                let mut j = i + 1;
                let mut content = Vec::new();
                loop {
                    if j >= b.len() {
                        bail!("an unterminated literal in {text}");
                    }
                    if escaped && b[j] == b'\\' && j + 1 < b.len() {
                        content.extend_from_slice(&b[j..j + 2]);
                        j += 2;
                    } else if b[j] == b'\'' {
                        if j + 1 < b.len() && b[j + 1] == b'\'' {
                            content.extend_from_slice(b"''");
                            j += 2;
                        } else {
                            break;
                        }
                    } else {
                        content.push(b[j]);
                        j += 1;
                    }
                }
                if !content.contains(&b':') {
                    out.extend_from_slice(&b[i..=j]);
                } else if escaped {
                    out.push(b'\'');
                    for &ch in &content {
                        if ch == b':' { out.extend_from_slice(b"\\x3a") } else { out.push(ch) }
                    }
                    out.push(b'\'');
                } else {
                    let raw = String::from_utf8_lossy(&content).replace("''", "'");
                    out.extend_from_slice(literal(&raw).as_bytes());
                }
                i = j + 1;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() {
                    if b[j] == b'"' {
                        if b.get(j + 1) == Some(&b'"') {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                let end = j.min(b.len() - 1);
                if b[i..=end].contains(&b':') {
                    bail!("a quoted identifier with a colon cannot be written for pgbench: {text}");
                }
                out.extend_from_slice(&b[i..=end]);
                i = end + 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push(b' ');
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(b' ');
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && (i == 0 || !ident(b[i - 1])) => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let n: usize = text[i + 1..j].parse()?;
                let p =
                    params.get(n.wrapping_sub(1)).with_context(|| format!("${n} has no value in {text}"))?;
                out.push(b'(');
                out.extend_from_slice(p.as_bytes());
                out.push(b')');
                i = j;
            }
            b'$' if (i == 0 || !ident(b[i - 1]))
                && b.get(i + 1).is_some_and(|&c| c == b'$' || c.is_ascii_alphabetic() || c == b'_') =>
            {
                // A dollar-quoted literal: $tag$ … $tag$.
                let close = text[i + 1..].find('$').map(|p| i + 1 + p).context("a stray $")?;
                let tag = &text[i..=close];
                let body_end = text[close + 1..]
                    .find(tag)
                    .map(|p| close + 1 + p)
                    .with_context(|| format!("an unterminated {tag} literal"))?;
                let body = &text[close + 1..body_end];
                if body.contains(':') {
                    out.extend_from_slice(literal(body).as_bytes());
                } else {
                    out.extend_from_slice(&b[i..body_end + tag.len()]);
                }
                i = body_end + tag.len();
            }
            b':' => {
                let mut j = i;
                while j < b.len() && b[j] == b':' {
                    j += 1;
                }
                out.extend_from_slice(&b[i..j]);
                if j - i == 1 && j < b.len() && ident(b[j]) {
                    // `a[1:2]`: pgbench would read `:2` as a variable.
                    out.push(b' ');
                }
                i = j;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8(out)?)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

/// The round trips pg_stat_statements does not see, from the capture.
fn unseen(capture: &Value) -> String {
    let empty = capture["empty_queries_per_request"].as_u64().unwrap_or(0);
    let parses = capture["parses_per_request"].as_u64().unwrap_or(0);
    let mut parts = Vec::new();
    if empty > 0 {
        parts.push(format!(
            "{empty} empty quer{} (the pool checking a connection)",
            if empty == 1 { "y" } else { "ies" }
        ));
    }
    if parses > 0 {
        parts.push(format!("{parses} prepare{}", if parses == 1 { "" } else { "s" }));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(", plus per request {} that pg_stat_statements does not count", parts.join(" and "))
    }
}

fn contention_line(c: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("–".to_owned(), |x| format!("{x:.0}"));
    let cpus: Vec<String> = c["cpus"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            format!(
                "CPU {} ({}) busy {} % (not ours {} %, of which stolen by the hypervisor {} %)",
                x["cpu"],
                x["runs"].as_str().unwrap_or(""),
                f(&x["busy_percent"]),
                f(&x["busy_not_ours_percent"]),
                f(&x["stolen_percent"])
            )
        })
        .collect();
    let waited = match (
        c["server_waited_for_a_cpu_seconds"].as_f64(),
        c["postgres_waited_for_a_cpu_seconds"].as_f64(),
        c["load_driver_waited_for_a_cpu_seconds"].as_f64(),
    ) {
        (Some(s), Some(p), Some(d)) => format!(
            " Runnable but waiting for a CPU (summed over threads and processes): server {s:.2} s, Postgres \
             {p:.2} s, load driver {d:.2} s."
        ),
        _ => String::new(),
    };
    format!("Contention: {}.{waited}\n", cpus.join("; "))
}

fn write_report(o: &Options, report: &Value) -> Result<()> {
    std::fs::write(o.out.join("report.json"), serde_json::to_string_pretty(report)?)?;
    let f = |v: &Value, digits: usize| v.as_f64().map_or("–".to_owned(), |x| format!("{x:.digits$}"));
    let m = &report["machine"];
    let mut md = format!(
        "# Bench\n\n`cargo xtask bench --connections {c}{pool_flag} --seconds {t} --warmup {w} --users {u}`\n\n\
         One `terrace serve` (`TERRACE_ROLE=api`, pool of {pool}) on a durable Postgres {pv} \
         (fsync and synchronous_commit on, data on {fs}); {c} keep-alive HTTP/1.1 connections.\n\n\
         CPUs: {online} online, {allowed:?} allowed; pinning: {pin}. Load average (1, 5, 15 min) before the \
         build {lb}, at the start {ls}, at the end {le}.\n\n\
         | path | requests/s | ok/s | p50 ms | p99 ms | errors | server CPU | Postgres CPU | driver CPU | \
         others on the 2 CPUs | statements / round trips per request | ceiling TPS | throughput/ceiling |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        c = o.connections,
        pool_flag = o.pool.map(|p| format!(" --pool {p}")).unwrap_or_default(),
        pool = match (&report["options"]["server_pool_size"], o.pool) {
            (v, None) if v.is_u64() => format!("{v}, the server's default"),
            (v, _) if v.is_u64() => v.to_string(),
            (_, Some(p)) => p.to_string(),
            _ => "the server's default".to_owned(),
        },
        t = o.seconds,
        w = o.warmup,
        u = o.users,
        pv = report["postgres"]["version"].as_str().unwrap_or("?"),
        fs = m["postgres_data_filesystem"].as_str().unwrap_or("?"),
        online = m["cpus_online"],
        allowed = m["cpus_allowed"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<_>>())
            .unwrap_or_default(),
        pin = if m["pinned"].is_null() {
            "none (fewer than 2 CPUs)".to_owned()
        } else {
            format!(
                "server on CPU {}, Postgres and the load driver on CPU {} (postmaster allowed {}, server allowed {})",
                m["pinned"]["server"],
                m["pinned"]["postgres"],
                m["postmaster_cpus"].as_str().unwrap_or("?"),
                m["server_cpus"].as_str().unwrap_or("?")
            )
        },
        lb = m["load_average_before_build"],
        ls = m["load_average_start"],
        le = m["load_average_end"],
    );
    let paths = report["paths"].as_object().cloned().unwrap_or_default();
    for (name, p) in &paths {
        let errors: u64 = p["errors"].as_object().map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {errors} | {} % | {} % | {} % | {} | {} / {}{} | {} | {} |\n",
            f(&p["requests_per_second"], 0),
            f(&p["ok_per_second"], 0),
            f(&p["latency_ok"]["p50_ms"], 2),
            f(&p["latency_ok"]["p99_ms"], 2),
            f(&p["cpu"]["server_percent"], 0),
            f(&p["cpu"]["postgres_percent"], 0),
            f(&p["cpu"]["load_driver_percent"], 0),
            p["contention"]["cpus"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| format!("{} %", f(&c["busy_not_ours_percent"], 0)))
                .collect::<Vec<_>>()
                .join(" / "),
            f(&p["statements_per_request"], 0),
            f(&p["round_trips_per_request"], 0),
            match p["capture"]["empty_queries_per_request"].as_u64().unwrap_or(0)
                + p["capture"]["parses_per_request"].as_u64().unwrap_or(0)
            {
                0 => String::new(),
                n => format!(" (+{n} unseen)"),
            },
            f(&p["ceiling"]["tps"], 0),
            f(&p["throughput_over_ceiling"], 2),
        ));
    }
    for (name, p) in &paths {
        md.push_str(&format!(
            "\n## {name}\n\n{} requests in {} s; errors by status: {}; 409 account_busy: {}.\n\
             CPU seconds: server {}, Postgres {}, load driver {}; per request: Postgres {} ms, server {} ms, load \
             driver {} ms.\n\
             Statements per request: {}, in {} round trips{} (pg_stat_statements saw {} per request, {} without \
             the server's background statements: it counts a prepared BEGIN, SET or COMMIT once per \
             connection).\n\n",
            p["requests"],
            f(&p["seconds"], 1),
            p["errors"],
            p["account_busy"],
            f(&p["cpu"]["server_seconds"], 2),
            f(&p["cpu"]["postgres_seconds"], 2),
            f(&p["cpu"]["load_driver_seconds"], 2),
            f(&p["cpu"]["postgres_ms_per_request"], 3),
            f(&p["cpu"]["server_ms_per_request"], 3),
            f(&p["cpu"]["load_driver_ms_per_request"], 3),
            f(&p["statements_per_request"], 0),
            f(&p["round_trips_per_request"], 0),
            unseen(&p["capture"]),
            f(&p["statements_seen_per_request"], 2),
            f(&p["statements_seen_per_request_without_background"], 2),
        ));
        let together = &p["written_together"];
        if together["transactions"].as_f64().is_some_and(|t| t > 0.0) {
            md.push_str(&format!(
                "Written together (the server's `terrace_db_batched_creates_total` and \
                 `terrace_db_create_batches_total`): {} of the requests' creates, in {} transactions of {} \
                 creates on average; the statements above are each create's, and one transaction's `BEGIN` \
                 statement and `COMMIT` serve them all.\n\n",
                f(&(together["share_of_requests"].as_f64().unwrap_or(0.0) * 100.0).into(), 0) + " %",
                f(&together["transactions"], 0),
                f(&together["per_transaction"], 1),
            ));
        }
        md.push_str(&contention_line(&p["contention"]));
        md.push_str("Statements in the window (pg_stat_statements):\n\n| calls/request | mean ms | query |\n|---|---|---|\n");
        for s in p["statements"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "| {}{} | {} | `{}` |\n",
                f(&s["per_request"], 3),
                if s["background"] == json!(true) { " (background)" } else { "" },
                f(&s["mean_ms"], 3),
                one_line(s["query"].as_str().unwrap_or("")),
            ));
        }
        let ceiling = &p["ceiling"];
        if let Some(e) = ceiling["error"].as_str() {
            md.push_str(&format!("\nNo ceiling: {e}\n"));
        } else {
            md.push_str(&format!(
                "\nCeiling: `{}` replaying the {} statements of one request in {} round trips, as the server \
                 sends them ({} of {} captured requests sent exactly these): {} TPS, latency average {} ms, Postgres CPU {} % ({} ms \
                 per transaction), pgbench {} % ({} ms per transaction, on Postgres's CPU). Throughput/ceiling: \
                 {}.\n\n{}\nApproximations:\n",
                ceiling["command"].as_str().unwrap_or(""),
                ceiling["statements_per_transaction"],
                ceiling["round_trips_per_transaction"],
                p["capture"]["agreeing"],
                p["capture"]["requests"],
                f(&ceiling["tps"], 0),
                f(&ceiling["latency_average_ms"], 2),
                f(&ceiling["cpu"]["postgres_percent"], 0),
                f(&ceiling["cpu"]["postgres_ms_per_transaction"], 3),
                f(&ceiling["cpu"]["pgbench_percent"], 0),
                f(&ceiling["cpu"]["pgbench_ms_per_transaction"], 3),
                f(&p["throughput_over_ceiling"], 2),
                contention_line(&ceiling["contention"]),
            ));
            for n in ceiling["approximations"].as_array().into_iter().flatten() {
                md.push_str(&format!("- {}\n", n.as_str().unwrap_or("")));
            }
        }
        let py = &p["python_shape"];
        if let Some(e) = py["error"].as_str() {
            md.push_str(&format!("\nNo replay of the Python stack's create: {e}\n"));
        } else if py.is_object() {
            md.push_str(&format!(
                "\nThe Python stack's create (eight round trips of one statement each, on this schema), in the \
                 same window: `{}`: {} TPS, latency average {} ms, Postgres CPU {} % ({} ms per transaction). \
                 Throughput/that replay: {}.\n\n{}",
                py["command"].as_str().unwrap_or(""),
                f(&py["tps"], 0),
                f(&py["latency_average_ms"], 2),
                f(&py["cpu"]["postgres_percent"], 0),
                f(&py["cpu"]["postgres_ms_per_transaction"], 3),
                f(&p["throughput_over_python_shape"], 2),
                contention_line(&py["contention"]),
            ));
        }
    }
    std::fs::write(o.out.join("report.md"), &md)?;
    println!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_create_takes_a_user_of_its_client_s_own() {
        assert_eq!(
            create_header(1000, 32),
            "\\set r random(1, 9000000000000000000)\n\\set u :client_id + 32 * random(0, 30)\n"
        );
        assert!(create_header(8, 32).ends_with("\\set u :client_id % 8\n"));
    }

    #[test]
    fn logged_parameters_are_read_back() {
        assert_eq!(
            parse_params("$1 = 'a''b', $2 = NULL, $3 = '', $4 = 'x, $5 = y'"),
            vec![Some("a'b".to_owned()), None, Some(String::new()), Some("x, $5 = y".to_owned())]
        );
        assert!(parse_params("").is_empty());
    }

    #[test]
    fn statements_are_written_for_pgbench() {
        let params = vec!["E'x'::uuid".to_owned(), "NULL::text".to_owned()];
        let text = "SELECT a::int, '{\"k\":1}', $1, arr[1:2] FROM t WHERE b = $2 -- c :x\n AND $10x";
        let err = rewrite(text, &params).unwrap_err();
        assert!(err.to_string().contains("$10"), "{err}");
        let ok = rewrite("SELECT a::int, '{\"k\":1}', $1, arr[1:2] FROM \"t\" WHERE b = $2 -- :x", &params)
            .unwrap();
        assert_eq!(
            ok,
            "SELECT a::int, E'{\"k\"\\x3a1}', (E'x'::uuid), arr[1: 2] FROM \"t\" WHERE b = (NULL::text)  "
        );
        assert_eq!(rewrite("SELECT 'it''s'", &[]).unwrap(), "SELECT 'it''s'");
        assert_eq!(rewrite("SELECT $$a:b$$", &[]).unwrap(), "SELECT E'a\\x3ab'");
    }

    #[test]
    fn constants_are_bound_and_varied_values_computed() {
        let values = vec![("abc".to_owned(), Token::Generation), ("u1".to_owned(), Token::User)];
        let expr = |t: Token| if t == Token::Generation { "G".to_owned() } else { "U".to_owned() };
        let p = |v: Option<&str>, ty: &str| param_sql(v, ty, &values, &expr, "c_0_1");
        assert_eq!(p(Some("created abc"), "text"), ("(E'created ' || G)::text".to_owned(), None));
        assert_eq!(p(Some("abc"), "uuid"), ("(G)::uuid".to_owned(), None));
        assert_eq!(
            p(Some("{u1,abc}"), "uuid[]"),
            ("(E'{' || U || E',' || G || E'}')::uuid[]".to_owned(), None)
        );
        assert_eq!(
            p(Some("12:30"), "time"),
            (":c_0_1::time".to_owned(), Some(("c_0_1".to_owned(), "12:30".to_owned())))
        );
        assert_eq!(p(None, "bigint"), ("NULL::bigint".to_owned(), None));
    }

    #[test]
    fn cpu_lists_are_parsed() {
        assert_eq!(parse_cpu_list("0-2,5"), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("1"), vec![1]);
    }
}
