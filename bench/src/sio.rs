//! The Socket.IO side of `peer` ([`crate::peer`]): the cluster a Node team would run for
//! a group chat (one real `redis-server`, N `node bench/peer/server.js` processes with the
//! official Redis adapter, all on 127.0.0.1 and killed on drop), and the versions of what
//! ran, for the report.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// Where server.js and its node_modules are.
pub fn peer_dir() -> PathBuf {
    std::env::var_os("NATTER_PEER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peer")))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait until something listens on 127.0.0.1:`port` (true), or `gone` says the process
/// that should listen there has exited (false); an error after 30 s.
async fn wait_port(port: u16, what: &str, mut gone: impl FnMut() -> bool) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if gone() {
            return Ok(false);
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{what} did not listen on 127.0.0.1:{port} within 30 s")
}

/// Start one `node server.js` on a free loopback port. A port picked free can be taken
/// before node listens on it (e.g. as the local port of a connection to redis), which ends
/// that process: then another port is tried, up to 5 times.
async fn start_node(dir: &std::path::Path, rport: u16) -> anyhow::Result<(Child, u16)> {
    for _attempt in 0..5 {
        let port = free_port()?;
        let mut child = Command::new("node")
            .arg(dir.join("server.js"))
            .args([port.to_string(), format!("redis://127.0.0.1:{rport}")])
            .current_dir(dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("start node server.js: {e}"))?;
        let gone = || matches!(child.try_wait(), Ok(Some(_)) | Err(_));
        if wait_port(port, "node server.js", gone).await? {
            return Ok((child, port));
        }
        eprintln!("node server.js on port {port} exited before listening; trying another port");
    }
    anyhow::bail!("node server.js exited 5 times before listening")
}

/// The Socket.IO cluster: redis-server and two node processes (killed on drop).
pub struct SioCluster {
    redis: Child,
    nodes: Vec<Child>,
    ports: Vec<u16>,
}

impl SioCluster {
    pub async fn start(nodes: usize) -> anyhow::Result<SioCluster> {
        let rport = free_port()?;
        let redis = Command::new("redis-server")
            .args(["--port", &rport.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("start redis-server: {e} (bench/peer/setup.sh)"))?;
        let mut c = SioCluster {
            redis,
            nodes: Vec::new(),
            ports: Vec::new(),
        };
        let redis_gone = || matches!(c.redis.try_wait(), Ok(Some(_)) | Err(_));
        if !wait_port(rport, "redis-server", redis_gone).await? {
            anyhow::bail!("redis-server exited before listening on 127.0.0.1:{rport}");
        }
        let dir = peer_dir();
        for _ in 0..nodes {
            let (child, port) = start_node(&dir, rport).await?;
            c.nodes.push(child);
            c.ports.push(port);
        }
        Ok(c)
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}"))
            .collect()
    }

    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((format!("node-{i}"), n.id()?)))
            .collect();
        if let Some(p) = self.redis.id() {
            out.push(("redis".into(), p));
        }
        out
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

fn npm_version(package: &str) -> String {
    let path = peer_dir()
        .join("node_modules")
        .join(package)
        .join("package.json");
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// What ran, for the report.
pub fn versions() -> Value {
    let nats = std::env::var("NATTER_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    json!({
        "natter": command_line("git", &["describe", "--always", "--dirty"]),
        "nats_server": command_line(&nats, &["--version"]),
        "node": command_line("node", &["--version"]),
        "socket.io": npm_version("socket.io"),
        "@socket.io/redis-adapter": npm_version("@socket.io/redis-adapter"),
        "redis (node client)": npm_version("redis"),
        "redis_server": command_line("redis-server", &["--version"])
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v=").map(str::to_string))
            .unwrap_or_else(|| "?".into()),
    })
}
