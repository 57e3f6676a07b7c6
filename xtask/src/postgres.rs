//! A throwaway Postgres for the tests: its own data folder and socket in a
//! temporary folder, a free loopback port, `fsync` off. Postgres refuses to
//! run as root, so as root the server runs as the `postgres` user, which owns
//! the folder. Stopped (immediately) and removed on drop.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct TestPostgres {
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
    pg_ctl: PathBuf,
}

fn find_tool(name: &str) -> Result<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().with_context(|| format!("{name} not found: install Postgres 15 (initdb, pg_ctl, postgres)"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl TestPostgres {
    /// A fast server for tests: commits are acknowledged before they reach
    /// the log (`synchronous_commit=off`), so a crash may lose the last ones.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// `durable`: commits are acknowledged only once in the log, as in
    /// production, so that a crash loses nothing that was acknowledged (the
    /// chaos run restarts the server).
    pub fn start_with(durable: bool) -> Result<Self> {
        Self::start_with_settings(durable, "")
    }

    /// As [`TestPostgres::start_with`], with more server settings
    /// (`-c name=value …`).
    pub fn start_with_settings(durable: bool, settings: &str) -> Result<Self> {
        let initdb = find_tool("initdb")?;
        let pg_ctl = find_tool("pg_ctl")?;
        let dir = std::env::temp_dir().join(format!("terrace-pg-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&dir)?;
        let as_postgres_user = is_root();
        if as_postgres_user {
            run(Command::new("chown").arg("-R").arg("postgres").arg(&dir))?;
        }
        let data = dir.join("data");
        let pg = Self { dir: dir.clone(), port: free_port()?, as_postgres_user, pg_ctl };
        pg.run_as(&initdb, &["-D", path(&data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .context("initdb")?;
        let opts = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {} -c max_connections=400 -c fsync=off \
             -c synchronous_commit={} -c full_page_writes=off -c shared_buffers=256MB {settings}",
            path(&dir),
            pg.port,
            if durable { "on" } else { "off" },
        );
        let log = dir.join("log");
        pg.run_as(&pg.pg_ctl, &["-D", path(&data), "-o", &opts, "-l", path(&log), "-w", "-t", "60", "start"])
            .with_context(|| format!("starting Postgres (log: {})", log.display()))?;
        eprintln!("xtask: Postgres listening on 127.0.0.1:{}", pg.port);
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's process id (every server process is its child).
    pub fn postmaster_pid(&self) -> Result<u32> {
        postmaster_pid(&self.dir.join("data"))
    }

    /// Restarts the server at once (`-m immediate`: in-flight sessions are
    /// cut, as in a crash), with the same options.
    pub fn restart(&self) -> Result<()> {
        let data = self.dir.join("data");
        self.run_as(
            &self.pg_ctl.clone(),
            &["-D", path(&data), "-m", "immediate", "-w", "-t", "60", "restart"],
        )
    }

    fn run_as(&self, tool: &Path, args: &[&str]) -> Result<()> {
        let mut c = if self.as_postgres_user {
            let mut line = shell_quote(path(tool));
            for a in args {
                line.push(' ');
                line.push_str(&shell_quote(a));
            }
            let mut c = Command::new("su");
            c.args(["-s", "/bin/sh", "postgres", "-c", &line]);
            c
        } else {
            let mut c = Command::new(tool);
            c.args(args);
            c
        };
        run(c.current_dir(&self.dir).stdout(Stdio::null()))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .run_as(&self.pg_ctl.clone(), &["-D", path(&data), "-m", "immediate", "-w", "-t", "30", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {:?}", c.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", c.get_program());
    }
    Ok(())
}

/// The process id of the postmaster of the data directory `data`, from its
/// `postmaster.pid`.
pub fn postmaster_pid(data: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).context("reading postmaster.pid")?;
    text.lines().next().and_then(|l| l.trim().parse().ok()).context("postmaster.pid has no pid")
}
