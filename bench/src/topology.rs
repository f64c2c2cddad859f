//! The system under test: started here from the workspace's release binaries (real
//! nats-server, edges, optionally Postgres and the archiver), or given as URLs.

use natter_testkit::{NatsCluster, NatsServer, Postgres, Service};

/// How to build the topology.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Edges to start.
    #[arg(long, default_value_t = 2)]
    pub edges: usize,
    /// Use a 3-node NATS cluster with an R3 stream instead of one node.
    #[arg(long)]
    pub cluster: bool,
    /// Target these edge WebSocket URLs instead of starting anything (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// Extra flags for every edge started.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub edge_args: Vec<String>,
    /// Worker threads of each edge started (`TOKIO_WORKER_THREADS`); by default one per
    /// CPU, as for a pod without a CPU limit.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub edge_workers: Option<u16>,
    /// `RUST_LOG` of the edges and the archiver started (quiet by default: logging costs
    /// CPU the figures would count).
    #[arg(long, default_value = "warn")]
    pub service_log: String,
    /// Copy every started process's log (edges, archiver, NATS nodes) into this directory
    /// when the run ends, e.g. to see what a chaos run that lost messages went through.
    #[arg(long)]
    pub keep_logs: Option<std::path::PathBuf>,
}

pub struct Topology {
    pub nats: Option<NatsServer>,
    pub cluster: Option<NatsCluster>,
    pub edges: Vec<Service>,
    pub postgres: Option<Postgres>,
    pub archiver: Option<Service>,
    pub edge_args: Vec<Vec<String>>,
    target: Vec<String>,
    keep_logs: Option<std::path::PathBuf>,
}

impl Topology {
    pub async fn start(args: &TopologyArgs, with_archive: bool) -> Topology {
        if !args.target.is_empty() {
            return Topology {
                nats: None,
                cluster: None,
                edges: Vec::new(),
                postgres: None,
                archiver: None,
                edge_args: Vec::new(),
                target: args.target.clone(),
                keep_logs: None,
            };
        }
        let (nats, cluster, url, replicas) = if args.cluster {
            let c = NatsCluster::start(3).await;
            let u = c.url();
            (None, Some(c), u, "3")
        } else {
            let n = NatsServer::start().await;
            let u = n.url();
            (Some(n), None, u, "1")
        };
        let mut edges = Vec::new();
        let mut all_args = Vec::new();
        for i in 0..args.edges {
            let mut a: Vec<String> = vec![
                "--nats-url".into(),
                url.clone(),
                "--node-name".into(),
                format!("edge-{i}"),
                "--stream-replicas".into(),
                replicas.into(),
                "--rate-per-sec".into(),
                "100000".into(),
                "--rate-burst".into(),
                "100000".into(),
                "--max-connections".into(),
                "200000".into(),
                // Every simulated client comes from a few loopback addresses.
                "--max-connections-per-ip".into(),
                "200000".into(),
                // Joins queue behind thousands of connects in the large runs.
                "--join-timeout-secs".into(),
                "600".into(),
                "--drain-timeout-secs".into(),
                "5".into(),
            ];
            a.extend(args.edge_args.iter().filter(|s| !s.is_empty()).cloned());
            let mut env = vec![("RUST_LOG".to_string(), args.service_log.clone())];
            if let Some(n) = args.edge_workers {
                env.push(("TOKIO_WORKER_THREADS".into(), n.to_string()));
            }
            edges.push(Service::start("natter-edge", &a, &env).await);
            all_args.push(a);
        }
        let (postgres, archiver) = if with_archive {
            let pg = Postgres::start().await;
            let a = Service::start(
                "natter-archiver",
                &[
                    "--nats-url".into(),
                    url.clone(),
                    "--database-url".into(),
                    pg.url(),
                    "--stream-replicas".into(),
                    replicas.into(),
                ],
                &[("RUST_LOG".into(), args.service_log.clone())],
            )
            .await;
            (Some(pg), Some(a))
        } else {
            (None, None)
        };
        Topology {
            nats,
            cluster,
            edges,
            postgres,
            archiver,
            edge_args: all_args,
            target: Vec::new(),
            keep_logs: args.keep_logs.clone(),
        }
    }

    pub fn urls(&self) -> Vec<String> {
        if !self.target.is_empty() {
            return self.target.clone();
        }
        self.edges.iter().map(Service::ws_url).collect()
    }

    /// Server processes by name, for CPU accounting.
    pub fn processes(&mut self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        if let Some(n) = self.nats.as_mut() {
            if let Some(p) = n.proc().pid() {
                out.push(("nats".to_string(), p));
            }
        }
        if let Some(c) = self.cluster.as_mut() {
            for (i, n) in c.nodes.iter_mut().enumerate() {
                if let Some(p) = n.proc().pid() {
                    out.push((format!("nats-{i}"), p));
                }
            }
        }
        for (i, e) in self.edges.iter_mut().enumerate() {
            if let Some(p) = e.proc().pid() {
                out.push((format!("edge-{i}"), p));
            }
        }
        if let Some(a) = self.archiver.as_mut() {
            if let Some(p) = a.proc().pid() {
                out.push(("archiver".to_string(), p));
            }
        }
        // Postgres runs under runuser and forks a process per connection: its CPU is not
        // attributed here.
        out
    }
}

impl Drop for Topology {
    /// With `--keep-logs`, the logs outlive the processes' temporary directories.
    fn drop(&mut self) {
        let Some(dir) = self.keep_logs.as_ref() else {
            return;
        };
        let mut logs: Vec<(String, String)> = Vec::new();
        if let Some(n) = self.nats.as_ref() {
            logs.push(("nats".into(), n.log()));
        }
        if let Some(c) = self.cluster.as_ref() {
            for (i, n) in c.nodes.iter().enumerate() {
                logs.push((format!("nats-{i}"), n.log()));
            }
        }
        for (i, e) in self.edges.iter().enumerate() {
            logs.push((format!("edge-{i}"), e.log()));
        }
        if let Some(a) = self.archiver.as_ref() {
            logs.push(("archiver".into(), a.log()));
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("--keep-logs: cannot create {}: {e}", dir.display());
            return;
        }
        for (name, text) in logs {
            let path = dir.join(format!("{name}.log"));
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("--keep-logs: cannot write {}: {e}", path.display());
            }
        }
        eprintln!("logs kept in {}", dir.display());
    }
}
