//! A private Postgres cluster for one test: initdb into a temp dir, listen on a free
//! 127.0.0.1 port, no Unix socket outside the dir. initdb refuses to run as root, so as root
//! the server runs as the `postgres` user (initdb through `runuser`, the server by uid/gid so
//! that kill -9 and restart reach the postmaster itself).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::proc::Proc;
use crate::{free_port, wait_for_port, WAIT};

/// Directory holding `initdb` and `postgres`: `$NATTER_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else whatever is on the PATH.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NATTER_PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn pg_tool(name: &str) -> PathBuf {
    pg_bin_dir()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A running private Postgres.
pub struct Postgres {
    pub port: u16,
    proc: Proc,
    dir: TempDir,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("natter-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let user = is_root().then_some("postgres");
        if user.is_some() {
            chown_postgres(dir.path());
        }
        let mut initdb = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(pg_tool("initdb"));
                c
            }
            None => Command::new(pg_tool("initdb")),
        };
        let out = initdb
            .args([
                "-D",
                &data.display().to_string(),
                "-U",
                "natter",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .expect("run initdb (is PostgreSQL installed? `just tools` installs it)");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let args = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-h".into(),
            "127.0.0.1".into(),
            "-k".into(),
            dir.path().display().to_string(),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "max_connections=200".into(),
        ];
        let log = dir.path().join("postgres.log");
        if user.is_some() {
            std::fs::write(&log, b"").expect("create log");
            chown_postgres(&log);
        }
        let proc = Proc::spawn_as("postgres", &pg_tool("postgres"), &args, &[], &log, user)
            .expect("spawn postgres");
        let pg = Postgres { port, proc, dir };
        pg.wait_ready().await;
        pg
    }

    async fn wait_ready(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            wait_for_port(addr, WAIT).await,
            "postgres did not listen:\n{}",
            self.proc.log()
        );
        // The port opens slightly before the server accepts logins.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    /// `postgres://natter@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://natter@127.0.0.1:{}/postgres", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    /// Start again on the same port and data (after [`Postgres::kill`] or a SIGTERM).
    pub async fn restart(&mut self) {
        self.proc.restart().expect("restart postgres");
        self.wait_ready().await;
    }
}

fn chown_postgres(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "postgres:postgres", &path.display().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "chown {} to postgres failed", path.display());
}
