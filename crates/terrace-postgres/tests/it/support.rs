//! A fresh database per test, short policies, an admin session, and a TCP
//! proxy that can freeze its connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use terrace_domain::{DbPolicy, LeasePolicy, LockPolicy, Policies, RetryPolicy};
use terrace_ports::NoopObserver;
use terrace_postgres::PgStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

/// The superuser URL of the test server.
pub fn admin_url() -> String {
    std::env::var("TERRACE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TERRACE_TEST_DATABASE_URL is not set: run these tests with `cargo xtask test`, \
             which starts a throwaway Postgres and sets it"
        )
    })
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Policies with short bounds, so that every wait in a test is short.
pub fn policies() -> Policies {
    Policies {
        maps_timeout: Duration::from_secs(5),
        llm_connect_timeout: Duration::from_secs(5),
        llm_idle_timeout: Duration::from_secs(5),
        area_timeout: Duration::from_secs(60),
        generation_timeout: Duration::from_secs(60),
        area_concurrency: 2,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(1),
        },
        lock: LockPolicy::NoWait,
        db: DbPolicy {
            pool_size: 10,
            acquire_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(3),
            lock_timeout: Duration::from_secs(1),
            idle_in_transaction_timeout: Duration::from_secs(5),
            verify_idle_after: Duration::from_secs(5),
        },
        lease: LeasePolicy {
            ttl: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(500),
            sweep_interval: Duration::from_millis(500),
            max_running: 10,
            sweep_batch: 500,
        },
        shutdown_grace: Duration::from_secs(2),
        blob_timeout: Duration::from_secs(2),
        blob_retries: 2,
        settle_retry: RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(1),
        },
        idempotency_ttl: terrace_domain::policy::IDEMPOTENCY_TTL,
        trial_credits: 3,
    }
}

/// A session of its own, for the test to hold locks with. Its connection is
/// driven by a task that ends when the client is dropped.
pub async fn session(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, NoTls))
            .await
            .expect("connecting in time")
            .expect("connecting");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Makes every insert into `table` for which `when` holds fail, until
/// `DROP TRIGGER refuse ON <table>`.
pub async fn refuse_inserts(s: &tokio_postgres::Client, table: &str, when: &str) {
    s.batch_execute(&format!(
        "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF {when} THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'XX000'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
    ))
    .await
    .unwrap();
}

/// A fresh, migrated database, dropped by [`TestDb::drop_now`].
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let s = session(&admin).await;
        s.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("creating the test database");
        let url = with_database(&admin, &name);
        terrace_postgres::migrate(&url, &policies()).await.expect("migrating");
        TestDb { name, url }
    }

    pub async fn store(&self, policies: &Policies) -> PgStore {
        PgStore::connect(&self.url, policies, Arc::new(NoopObserver)).await.expect("connecting the store")
    }

    pub async fn drop_now(self) {
        let s = session(&admin_url()).await;
        let _ = s.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

/// A TCP proxy to the test server whose connections can stall: they stay
/// open but carry nothing more, as a broken network would.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    conns: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
    stall_on: Marker,
    tasks: JoinSet<()>,
}

type Marker = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let port = listener.local_addr().expect("address").port();
        let conns: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let stall_on: Marker = Arc::default();
        let (upstream, c, m) = (upstream.to_owned(), conns.clone(), stall_on.clone());
        tasks.spawn(async move {
            let mut pipes = JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(&upstream).await else { continue };
                let frozen = Arc::new(AtomicBool::new(false));
                c.lock().unwrap().push(frozen.clone());
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                pipes.spawn(pipe(dr, uw, frozen.clone(), Some(m.clone())));
                pipes.spawn(pipe(ur, dw, frozen, None));
            }
        });
        Proxy { port, conns, stall_on, tasks }
    }

    /// Freezes every connection open now; later ones pass.
    pub fn freeze(&self) {
        for f in self.conns.lock().unwrap().iter() {
            f.store(true, Ordering::SeqCst);
        }
    }

    /// Stalls any connection on which the client sends `marker` (a piece of
    /// SQL): that message reaches the server, nothing after it does, and no
    /// answer comes back.
    pub fn stall_on(&self, marker: &str) {
        *self.stall_on.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    stall_on: Option<Marker>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Swallow everything from now on: the peer hears nothing.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let marker = stall_on.as_ref().and_then(|m| m.lock().unwrap().clone());
        if marker.is_some_and(|m| buf[..n].windows(m.len()).any(|w| w == m.as_slice())) {
            frozen.store(true, Ordering::SeqCst);
        }
    }
}

/// The host:port of a postgres URL (for the proxy's upstream).
pub fn host_port(url: &str) -> String {
    let cfg: tokio_postgres::Config = url.parse().expect("a valid URL");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}
