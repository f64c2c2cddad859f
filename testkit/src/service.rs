//! natter binaries (edge, archiver, filestore) run as real processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use crate::proc::Proc;
use crate::{eventually, free_port, http, WAIT};

/// Path of a workspace binary next to the running test executable
/// (`target/<profile>/<name>`); `just test` builds every binary first.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "NATTER_BIN_{}",
        name.replace('-', "_").to_uppercase()
    )) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Next to a binary (target/<profile>/<bin>), or one level up from a test executable
    // (target/<profile>/deps/<test>).
    let here = exe.parent().map(PathBuf::from).unwrap_or_default();
    let p = [
        here.join(name),
        here.parent().map(|d| d.join(name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| here.join(name));
    assert!(
        p.exists(),
        "{} not built: run `cargo build --bins` (just test does)",
        p.display()
    );
    p
}

/// Services with a public port beside their operations port: they take `--ops-listen`.
/// (The archiver's `--listen` is its operations port.)
const WITH_OPS_PORT: [&str; 2] = ["natter-edge", "natter-filestore"];

/// A running natter service.
pub struct Service {
    /// `--listen`: the public port (the edge's `/chat`, the filestore's `/images` and
    /// `/files`); the archiver's only port.
    pub addr: SocketAddr,
    /// The operations port (`/healthz`, `/readyz`, `/metrics`): `--ops-listen` where the
    /// service has one, else `addr`.
    pub ops_addr: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl Service {
    /// Start `binary` with `args`; `--listen 127.0.0.1:<free port>` is added, and
    /// `--ops-listen 127.0.0.1:<free port>` for the edge and the filestore. Waits until
    /// `/readyz` answers 200.
    pub async fn start(binary: &str, args: &[String], envs: &[(String, String)]) -> Service {
        let s = Service::spawn(binary, args, envs).await;
        s.wait_ready(WAIT).await;
        s
    }

    /// Like [`Service::start`], but waits only until the process answers `/healthz` (for a
    /// service that is expected not to become ready).
    pub async fn spawn(binary: &str, args: &[String], envs: &[(String, String)]) -> Service {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::Builder::new()
            .prefix(&format!("natter-{binary}-"))
            .tempdir()
            .expect("temp dir");
        let mut all_args = vec!["--listen".to_string(), addr.to_string()];
        let ops_addr = if WITH_OPS_PORT.contains(&binary) {
            let ops = SocketAddr::from(([127, 0, 0, 1], free_port()));
            all_args.extend(["--ops-listen".to_string(), ops.to_string()]);
            ops
        } else {
            addr
        };
        all_args.extend_from_slice(args);
        let mut all_envs = vec![("RUST_LOG".to_string(), "info,natter=debug".to_string())];
        all_envs.extend_from_slice(envs);
        let proc = Proc::spawn(
            &format!("{binary}-{port}"),
            &bin_path(binary),
            &all_args,
            &all_envs,
            &dir.path().join("service.log"),
        )
        .expect("spawn service");
        let s = Service {
            addr,
            ops_addr,
            proc,
            _dir: dir,
        };
        let alive = eventually(WAIT, || async move {
            matches!(http::get(ops_addr, "/healthz", &[]).await, Ok(r) if r.status == 200)
        })
        .await;
        assert!(
            alive,
            "{} does not answer /healthz:\n{}",
            s.proc.name(),
            s.proc.log()
        );
        s
    }

    /// Wait until `/readyz` answers 200; panics with the log otherwise.
    pub async fn wait_ready(&self, timeout: Duration) {
        let addr = self.ops_addr;
        let ok = eventually(timeout, || async move {
            matches!(http::get(addr, "/readyz", &[]).await, Ok(r) if r.status == 200)
        })
        .await;
        assert!(
            ok,
            "{} not ready within {timeout:?}:\n{}",
            self.proc.name(),
            self.proc.log()
        );
    }

    /// `ws://127.0.0.1:<port>/chat`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/chat", self.addr)
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The status of `GET path` on the operations port, or `None` when nothing answers.
    pub async fn status(&self, path: &str) -> Option<u16> {
        http::get(self.ops_addr, path, &[])
            .await
            .ok()
            .map(|r| r.status)
    }

    /// A metric's value from `/metrics` on the operations port (first sample whose line
    /// starts with `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let r = http::get(self.ops_addr, "/metrics", &[]).await.ok()?;
        r.text().lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
    }

    /// Restart the same command line and wait until ready.
    pub async fn restart(&mut self) {
        self.proc.restart().expect("restart service");
        self.wait_ready(WAIT).await;
    }
}
