//! Real `nats-server` processes with JetStream, from the templates in `nats/conf/`.

use std::net::SocketAddr;
use std::path::PathBuf;

use tempfile::TempDir;

use crate::proc::Proc;
use crate::{free_port, wait_for_port, workspace_root, WAIT};

/// The nats-server binary: `$NATTER_NATS_SERVER`, else the one `just` installs under
/// `.tools/`, else `nats-server` on the PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATTER_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".tools/py/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// One JetStream node.
pub struct NatsServer {
    pub port: u16,
    pub http_port: u16,
    pub cluster_port: u16,
    proc: Proc,
    _dir: TempDir,
}

impl NatsServer {
    /// A single node on free ports with a fresh store.
    pub async fn start() -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("natter-bus-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let http_port = free_port();
        let conf = render(
            "single.conf.tmpl",
            &[
                ("NAME", format!("test-{port}")),
                ("PORT", port.to_string()),
                ("HTTP_PORT", http_port.to_string()),
                ("STORE_DIR", dir.path().join("js").display().to_string()),
            ],
        );
        Self::launch(dir, conf, port, http_port, 0).await
    }

    async fn launch(
        dir: TempDir,
        conf: String,
        port: u16,
        http_port: u16,
        cluster_port: u16,
    ) -> NatsServer {
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).expect("write nats.conf");
        let proc = Proc::spawn(
            &format!("nats-{port}"),
            &nats_server_bin(),
            &["-c".into(), conf_path.display().to_string()],
            &[],
            &dir.path().join("nats.log"),
        )
        .expect("spawn nats-server (run `just tools` to install it)");
        let s = NatsServer {
            port,
            http_port,
            cluster_port,
            proc,
            _dir: dir,
        };
        s.wait_ready().await;
        s
    }

    async fn wait_ready(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            wait_for_port(addr, WAIT).await,
            "nats-server did not listen on {addr}:\n{}",
            self.proc.log()
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    /// Start again on the same ports and store (after [`NatsServer::kill`]).
    pub async fn restart(&mut self) {
        self.proc.restart().expect("restart nats-server");
        self.wait_ready().await;
    }
}

/// A 3-node JetStream cluster on loopback.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start(size: usize) -> NatsCluster {
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, _, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut launches = Vec::new();
        for (i, (port, http, cport)) in ports.iter().copied().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix("natter-bus-")
                .tempdir()
                .expect("temp dir");
            let conf = render(
                "cluster.conf.tmpl",
                &[
                    ("NAME", format!("n{i}")),
                    ("PORT", port.to_string()),
                    ("HTTP_PORT", http.to_string()),
                    ("CLUSTER_PORT", cport.to_string()),
                    ("ROUTES", routes.clone()),
                    ("STORE_DIR", dir.path().join("js").display().to_string()),
                ],
            );
            launches.push(NatsServer::launch(dir, conf, port, http, cport));
        }
        let mut nodes = Vec::new();
        for l in launches {
            nodes.push(l.await);
        }
        NatsCluster { nodes }
    }

    /// A URL listing every node, for clients that fail over.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn render(template: &str, vars: &[(&str, String)]) -> String {
    let path = workspace_root().join("nats/conf").join(template);
    let mut s =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}
