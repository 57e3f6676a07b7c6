//! `cargo xtask loadtest`: one Terrace instance on Postgres, the simulator
//! with a configurable model latency, and N concurrent generations from many
//! users through terrace-client. Writes `report.md` and `report.json`.

use crate::cluster::{self, LedgerCheck, Proc, metric, percentiles};
use crate::postgres::TestPostgres;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use terrace_client::{AreaSpec, Client, ClientConfig, CreateRequest, Generation};
use terrace_domain::{AreaKind, Style};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Options {
    pub generations: usize,
    pub users: usize,
    pub latency: Duration,
    pub concurrency: usize,
    pub poll: Poll,
    pub out: PathBuf,
}

/// How the status pollers follow each generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// As Terrace's own client polls when its event stream is gone: from
    /// 500 ms, doubling while nothing changes, up to 10 s; back to 500 ms on
    /// a change (`terrace_client::WatchOptions::standard`).
    Backoff,
    /// As fast as the 32 pollers go, 5 ms apart: the reads then fill
    /// whatever Postgres has left, and its CPU per generation measures the
    /// run's length more than the work of a generation.
    Closed,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            generations: 1000,
            users: 0,
            latency: Duration::from_secs(20),
            concurrency: 200,
            poll: Poll::Backoff,
            out: PathBuf::from("target/loadtest"),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--generations" => o.generations = value.parse()?,
                "--users" => o.users = value.parse()?,
                "--latency-ms" => o.latency = Duration::from_millis(value.parse()?),
                "--concurrency" => o.concurrency = value.parse()?,
                "--poll" => {
                    o.poll = match value.as_str() {
                        "backoff" => Poll::Backoff,
                        "closed" => Poll::Closed,
                        other => bail!("--poll {other}: use backoff or closed"),
                    }
                }
                "--out" => o.out = PathBuf::from(value),
                _ => bail!(
                    "unknown flag {flag}: use --generations N --users U --latency-ms L --concurrency C \
                     --poll backoff|closed --out DIR"
                ),
            }
        }
        if o.users == 0 {
            o.users = (o.generations / 10).max(1);
        }
        Ok(o)
    }
}

/// A generation the pollers follow, due for its next read at `due`.
struct Followed {
    due: Instant,
    /// Ties broken by arrival, so that equal times are first come first read.
    seq: u64,
    id: Uuid,
    created_at: Instant,
    who: usize,
    delay: Duration,
    last: Option<Generation>,
}

impl PartialEq for Followed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Followed {}
impl PartialOrd for Followed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Followed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The generations being followed, earliest due first.
#[derive(Default)]
struct Schedule {
    heap: BinaryHeap<Reverse<Followed>>,
    seq: u64,
}

impl Schedule {
    fn push(&mut self, mut f: Followed) {
        self.seq += 1;
        f.seq = self.seq;
        self.heap.push(Reverse(f));
    }

    /// The earliest generation if it is due, else how long until it is.
    fn take_due(&mut self, now: Instant) -> Result<Followed, Option<Duration>> {
        match self.heap.peek() {
            Some(Reverse(f)) if f.due <= now => self.heap.pop().map(|Reverse(f)| f).ok_or(None),
            Some(Reverse(f)) => Err(Some(f.due - now)),
            None => Err(None),
        }
    }
}

/// What the samplers saw.
#[derive(Default)]
struct Observed {
    create_latency: Mutex<Vec<Duration>>,
    status_latency: Mutex<Vec<Duration>>,
    to_terminal: Mutex<Vec<Duration>>,
    outcomes: Mutex<HashMap<String, u64>>,
    create_errors: Mutex<HashMap<String, u64>>,
    status_errors: AtomicU64,
    peak_in_flight: AtomicU64,
    peak_rss: AtomicU64,
    rss_at_peak_in_flight: AtomicU64,
}

fn area_request(i: usize) -> CreateRequest {
    let style = Style::ALL[i % Style::ALL.len()];
    CreateRequest::new(
        format!("{} Load Test Avenue, Springfield", 100 + i),
        vec![AreaSpec::new(AreaKind::Backyard, style)],
    )
}

pub fn run(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    let bin = cluster::build()?;
    std::fs::create_dir_all(&o.out)?;
    // pg_stat_statements: the report says which statements took Postgres's time.
    let pg = TestPostgres::start_with_settings(false, "-c shared_preload_libraries=pg_stat_statements")?;
    let sim = cluster::simulator(&bin, &o.out)?;
    let max_running = o.generations.clamp(32, 10_000).to_string();
    // Images go to files, as they go to object storage in production: the
    // run measures what a generation in flight costs the server, not the
    // images an in-memory blob store would pile up.
    let blobs = std::path::absolute(o.out.join("blobs"))?;
    std::fs::create_dir_all(&blobs)?;
    let blob_url = format!("file://{}", blobs.display());
    let env = cluster::server_env(
        &pg,
        &sim,
        &[
            ("TERRACE_MAX_RUNNING", &max_running),
            ("TERRACE_BLOB_URL", &blob_url),
            ("TERRACE_DB_POOL_SIZE", "40"),
            ("TERRACE_MAX_CONCURRENT_REQUESTS", "8192"),
            ("TERRACE_LLM_IDLE_TIMEOUT", "200s"),
            // Warnings only (and the address line): a line per request would
            // spend the cores the run measures.
            (
                "RUST_LOG",
                "warn,terrace=info,terrace_api=warn,terrace_engine=warn,terrace_postgres=warn,terrace_google=warn",
            ),
        ],
    );
    cluster::migrate(&bin, &env)?;
    let server = cluster::server(&bin, &o.out, "terrace", &env)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut server = server;
    let mut report = rt.block_on(drive(&o, &sim, &server, &pg))?;
    report["cpu_seconds"] = json!({
        "terrace": cpu_seconds(&["-p", &server.pid().to_string()]),
        "simulator": cpu_seconds(&["-p", &sim.pid().to_string()]),
        "postgres": cpu_seconds(&["-u", "postgres"]),
        "load_driver": cpu_seconds(&["-p", &std::process::id().to_string()]),
    });
    // A graceful stop, as an operator's: it must drain in its grace period.
    report["stopped_within_grace"] = json!(server.terminate(Duration::from_secs(40)));
    let slack = Duration::from_secs(35);
    let ledger = LedgerCheck::read(&pg, slack)?;
    write_report(&o, report, &ledger)?;
    if !ledger.ok() {
        bail!("the ledger check failed: {:?}", ledger);
    }
    Ok(())
}

async fn drive(o: &Options, sim: &Proc, server: &Proc, pg: &TestPostgres) -> Result<serde_json::Value> {
    let postmaster = pg.postmaster_pid()?;
    let http = reqwest::Client::new();
    let script = json!({"endpoint": "gemini", "behaviour": {"kind": "latency", "delay_ms": o.latency.as_millis() as u64}, "default": true});
    let r = http.post(format!("{}/_sim/script", sim.url())).body(script.to_string()).send().await?;
    if !r.status().is_success() {
        bail!("could not script the simulator: {}", r.status());
    }
    let base = server.url();
    let (baseline_rss, _) = server.memory();

    // Users and their credits.
    let per_user = o.generations.div_ceil(o.users) as u64;
    let users: Vec<Uuid> = (0..o.users).map(|_| Uuid::new_v4()).collect();
    futures::stream::iter(users.iter())
        .map(|u| cluster::grant(&http, &base, *u, per_user, "loadtest"))
        .buffer_unordered(32)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    let clients: Vec<Client> = users
        .iter()
        .map(|u| Client::new(&base, &cluster::token(*u, false), ClientConfig::interactive()))
        .collect::<Result<_, _>>()?;

    // CPU from here to the last generation's end: what the generations cost
    // (creates, their work, the status reads that follow them), not the setup.
    let statements = cluster::sql(pg, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .and_then(|_| cluster::sql(pg, "SELECT pg_stat_statements_reset()"))
        .is_ok();
    let (postgres_t0, server_t0) =
        (crate::bench::postgres_ticks(postmaster), crate::bench::ticks_of(server.pid()));
    let seen = Arc::new(Observed::default());
    let queue: Arc<Mutex<Schedule>> = Arc::default();
    let watch = terrace_client::WatchOptions::standard();
    let first_delay = match o.poll {
        Poll::Backoff => watch.poll_initial,
        Poll::Closed => Duration::from_millis(5),
    };
    let created = Arc::new(AtomicUsize::new(0));
    let creates_done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();

    // The metrics sampler: in-flight count and memory, every 500 ms.
    let sampler = {
        let (seen, http, base, pid) = (seen.clone(), http.clone(), base.clone(), server.pid());
        tokio::spawn(async move {
            loop {
                if let Ok(Ok(page)) = tokio::time::timeout(Duration::from_secs(5), async {
                    http.get(format!("{base}/metrics")).send().await?.text().await
                })
                .await
                {
                    let active = metric(&page, "terrace_generation_tasks_active").unwrap_or(0.0) as u64;
                    let rss = cluster::proc_status_bytes(pid, "VmRSS:");
                    seen.peak_rss.fetch_max(rss, Ordering::Relaxed);
                    if active > seen.peak_in_flight.fetch_max(active, Ordering::Relaxed) {
                        seen.rss_at_peak_in_flight.store(rss, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Creators.
    let creators: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let (seen, queue, created, done, clients) =
                (seen.clone(), queue.clone(), created.clone(), creates_done.clone(), clients.clone());
            let total = o.generations;
            tokio::spawn(async move {
                loop {
                    let i = created.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let client = &clients[i % clients.len()];
                    let t = Instant::now();
                    match client.create(&area_request(i)).await {
                        Ok(g) => {
                            seen.create_latency.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed());
                            queue.lock().unwrap_or_else(|p| p.into_inner()).push(Followed {
                                due: Instant::now() + first_delay,
                                seq: 0,
                                id: g.id,
                                created_at: t,
                                who: i % clients.len(),
                                delay: first_delay,
                                last: None,
                            });
                        }
                        Err(e) => {
                            let key = cluster::error_key(&e);
                            *seen
                                .create_errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(key)
                                .or_default() += 1;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Status pollers: each takes the generation whose next read is due
    // soonest, reads it, and schedules the next read unless it is terminal
    // (`--poll`: as Terrace's client backs off, or 5 ms later).
    let (poll, poll_max) = (o.poll, watch.poll_max);
    let pollers: Vec<_> = (0..32)
        .map(|_| {
            let (seen, queue, done, clients) =
                (seen.clone(), queue.clone(), creates_done.clone(), clients.clone());
            let total = o.generations;
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).take_due(Instant::now());
                    let mut f = match next {
                        Ok(f) => f,
                        Err(wait) => {
                            if wait.is_none() && done.load(Ordering::SeqCst) >= total {
                                break;
                            }
                            let wait =
                                wait.unwrap_or(Duration::from_millis(20)).min(Duration::from_millis(20));
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    };
                    let t = Instant::now();
                    match clients[f.who].get(f.id).await {
                        Ok(g) => {
                            seen.status_latency.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed());
                            if g.status.is_terminal() {
                                finished(&seen, &g, f.created_at);
                                continue;
                            }
                            f.delay = match poll {
                                Poll::Closed => f.delay,
                                Poll::Backoff if f.last.as_ref() == Some(&g) => (f.delay * 2).min(poll_max),
                                Poll::Backoff => first_delay,
                            };
                            f.last = Some(g);
                        }
                        Err(_) => {
                            seen.status_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    f.due = Instant::now() + f.delay;
                    queue.lock().unwrap_or_else(|p| p.into_inner()).push(f);
                }
            })
        })
        .collect();

    for c in creators {
        c.await?;
    }
    let create_phase = start.elapsed();
    // Every generation ends within its deadline (5 min) plus a lease and a
    // sweep; the pollers stop once every one was seen terminal.
    let bound = Duration::from_secs(300 + 60);
    let waited = tokio::time::timeout(bound, futures::future::join_all(pollers)).await;
    sampler.abort();
    let total_time = start.elapsed();
    let tick = crate::bench::clk_tck();
    let postgres_cpu = crate::bench::postgres_ticks(postmaster).saturating_sub(postgres_t0) as f64 / tick;
    let server_cpu = crate::bench::ticks_of(server.pid()).saturating_sub(server_t0) as f64 / tick;
    // The statements that took the most of Postgres's time, per generation.
    let top = if statements {
        cluster::sql(
            pg,
            "SELECT round((total_exec_time / calls)::numeric, 3) || '|' || calls || '|' \
             || round(total_exec_time::numeric) || '|' || regexp_replace(left(query, 120), '\\s+', ' ', 'g') \
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15",
        )
        .unwrap_or_default()
    } else {
        String::new()
    };
    let top: Vec<serde_json::Value> = top
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '|');
            Some(json!({"mean_ms": f.next()?.parse::<f64>().ok()?, "calls": f.next()?.parse::<u64>().ok()?,
                        "total_ms": f.next()?.parse::<f64>().ok()?, "query": f.next()?}))
        })
        .collect();

    // Tasks still running at the end (must be 0).
    let page = http.get(format!("{base}/metrics")).send().await?.text().await?;
    let tasks_active_at_end = metric(&page, "terrace_generation_tasks_active").unwrap_or(-1.0);

    let created_ok = seen.create_latency.lock().unwrap_or_else(|p| p.into_inner()).len();
    let peak = seen.peak_in_flight.load(Ordering::Relaxed);
    let rss_peak_inflight = seen.rss_at_peak_in_flight.load(Ordering::Relaxed);
    let per_generation = rss_peak_inflight.saturating_sub(baseline_rss).checked_div(peak).unwrap_or(0);
    let mut create = seen.create_latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut status = seen.status_latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut terminal = seen.to_terminal.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(json!({
        "options": {"generations": o.generations, "users": o.users, "model_latency_ms": o.latency.as_millis() as u64, "create_concurrency": o.concurrency, "poll": format!("{:?}", o.poll).to_lowercase()},
        "created": created_ok,
        "create_errors": *seen.create_errors.lock().unwrap_or_else(|p| p.into_inner()),
        "creates_per_second": created_ok as f64 / create_phase.as_secs_f64(),
        "create_latency": percentiles(&mut create),
        "status_latency": percentiles(&mut status),
        "status_errors": seen.status_errors.load(Ordering::Relaxed),
        "time_to_terminal": percentiles(&mut terminal),
        "outcomes": *seen.outcomes.lock().unwrap_or_else(|p| p.into_inner()),
        "all_seen_terminal": waited.is_ok(),
        "peak_in_flight": peak,
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_bytes": seen.peak_rss.load(Ordering::Relaxed),
        "rss_per_in_flight_bytes": per_generation,
        "run_cpu_seconds": {"postgres": postgres_cpu, "terrace": server_cpu},
        "postgres_ms_per_generation": 1000.0 * postgres_cpu / created_ok.max(1) as f64,
        "terrace_ms_per_generation": 1000.0 * server_cpu / created_ok.max(1) as f64,
        "top_statements": top,
        "tasks_active_at_end": tasks_active_at_end,
        "create_phase_seconds": create_phase.as_secs_f64(),
        "total_seconds": total_time.as_secs_f64(),
    }))
}

fn finished(seen: &Observed, g: &Generation, created_at: Instant) {
    seen.to_terminal.lock().unwrap_or_else(|p| p.into_inner()).push(created_at.elapsed());
    *seen
        .outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(g.status.as_str().to_owned())
        .or_default() += 1;
}

/// CPU time (user + system) of the processes `ps` selects, in seconds.
fn cpu_seconds(select: &[&str]) -> f64 {
    let out = std::process::Command::new("ps").args(select).args(["-o", "times="]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace().filter_map(|t| t.parse::<f64>().ok()).sum()
}

fn write_report(o: &Options, mut report: serde_json::Value, ledger: &LedgerCheck) -> Result<()> {
    report["ledger"] = ledger.to_json();
    std::fs::write(o.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    let mb = |b: &serde_json::Value| b.as_f64().unwrap_or(0.0) / 1_048_576.0;
    let p = |k: &str, q: &str| report[k][q].as_f64().unwrap_or(0.0);
    let target = |ok: bool| if ok { "met" } else { "MISSED" };
    let peak = report["peak_in_flight"].as_u64().unwrap_or(0);
    let per_gen_kb = report["rss_per_in_flight_bytes"].as_f64().unwrap_or(0.0) / 1024.0;
    let md = format!(
        "# Load test\n\n\
         `cargo xtask loadtest --generations {g} --users {u} --latency-ms {l} --concurrency {c} --poll {poll}`\n\n\
         | figure | value | target |\n|---|---|---|\n\
         | generations created | {created} of {g} | |\n\
         | creates per second | {cps:.1} | |\n\
         | create p50 / p95 / p99 | {c50:.1} / {c95:.1} / {c99:.1} ms | |\n\
         | status p50 / p95 / p99 | {s50:.1} / {s95:.1} / {s99:.1} ms | p99 < 100 ms: {st} |\n\
         | time to terminal p50 / p95 / p99 | {t50:.0} / {t95:.0} / {t99:.0} ms | |\n\
         | peak generations in flight | {peak} | 10 000: {pt} |\n\
         | peak RSS | {rss:.1} MiB | |\n\
         | RSS per in-flight generation | {pg:.1} KiB | < 50 KB: {mt} |\n\
         | Postgres CPU per generation (all processes, from the first create to the last end) | {pgms:.2} ms | ≤ 10 ms: {pgt} |\n\
         | Terrace CPU per generation | {tms:.2} ms | |\n\
         | tasks active at the end | {tasks} | 0: {tt} |\n\
         | every generation terminal | {all} | |\n\
         | open holds / conservation violations / late | {oh} / {cv} / {late} | 0 / 0 / 0: {lt} |\n\n\
         Outcomes: {outcomes}. Create errors: {errors}.\n\n\
         CPU seconds used (2 cores, {total:.0} s of wall time): {cpu}.\n",
        g = o.generations,
        u = o.users,
        l = o.latency.as_millis(),
        c = o.concurrency,
        poll = if o.poll == Poll::Backoff { "backoff" } else { "closed" },
        created = report["created"],
        cps = report["creates_per_second"].as_f64().unwrap_or(0.0),
        c50 = p("create_latency", "p50_ms"),
        c95 = p("create_latency", "p95_ms"),
        c99 = p("create_latency", "p99_ms"),
        s50 = p("status_latency", "p50_ms"),
        s95 = p("status_latency", "p95_ms"),
        s99 = p("status_latency", "p99_ms"),
        st = target(p("status_latency", "p99_ms") < 100.0),
        t50 = p("time_to_terminal", "p50_ms"),
        t95 = p("time_to_terminal", "p95_ms"),
        t99 = p("time_to_terminal", "p99_ms"),
        pt = target(peak >= 10_000),
        rss = mb(&report["peak_rss_bytes"]),
        pg = per_gen_kb,
        mt = target(per_gen_kb * 1024.0 < 50_000.0),
        pgms = report["postgres_ms_per_generation"].as_f64().unwrap_or(0.0),
        pgt = target(report["postgres_ms_per_generation"].as_f64().is_some_and(|v| v <= 10.0)),
        tms = report["terrace_ms_per_generation"].as_f64().unwrap_or(0.0),
        tasks = report["tasks_active_at_end"],
        tt = target(report["tasks_active_at_end"].as_f64() == Some(0.0)),
        all = ledger.unfinished == 0,
        oh = ledger.open_holds,
        cv = ledger.conservation_violations,
        late = ledger.late,
        lt = target(ledger.ok()),
        outcomes = report["outcomes"],
        errors = report["create_errors"],
        total = report["total_seconds"].as_f64().unwrap_or(0.0),
        cpu = report["cpu_seconds"],
    );
    let mut md = md;
    if let Some(top) = report["top_statements"].as_array().filter(|t| !t.is_empty()) {
        let per = report["created"].as_f64().unwrap_or(1.0).max(1.0);
        md.push_str(
            "\nStatements by Postgres time (pg_stat_statements, execution only):\n\n\
             | calls per generation | mean ms | total s | query |\n|---|---|---|---|\n",
        );
        for t in top {
            md.push_str(&format!(
                "| {:.2} | {:.3} | {:.1} | `{}` |\n",
                t["calls"].as_f64().unwrap_or(0.0) / per,
                t["mean_ms"].as_f64().unwrap_or(0.0),
                t["total_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                t["query"].as_str().unwrap_or("").replace('|', "\\|"),
            ));
        }
    }
    std::fs::write(o.out.join("report.md"), &md)?;
    println!("{md}");
    Ok(())
}
