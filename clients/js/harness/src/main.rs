//! `natter-js-harness`: the real stack for the JavaScript client's tests (`clients/js/test/`).
//!
//! Starts nats-server, Postgres, an archiver, a filestore and two edges (auth off) on free
//! 127.0.0.1 ports through `natter_testkit`, prints one JSON line with their addresses, then
//! reads commands on stdin, one per line, answering each with one JSON line:
//!
//! - `kill <i>`: kill -9 edge `i` (0 or 1);
//! - `term <i>`: SIGTERM edge `i` (drain) and wait for it to exit;
//! - `restart <i>`: start edge `i` again on the same ports and wait until it is ready.
//!
//! Everything stops when stdin closes (every process dies with its handle). It is not a
//! general-purpose launcher: `just up` is that.

use std::time::Duration;

use natter_testkit::{NatsServer, Postgres, Service};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

fn edge_args(nats: &NatsServer, i: usize) -> Vec<String> {
    [
        "--nats-url",
        &nats.url(),
        "--node-name",
        &format!("edge-{}", i + 1),
        "--tail-check-secs",
        "1",
        "--drain-timeout-secs",
        "4",
        "--auth",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::main]
async fn main() {
    let nats = NatsServer::start().await;
    let pg = Postgres::start().await;
    let files = tempfile::Builder::new()
        .prefix("natter-js-files-")
        .tempdir()
        .expect("temp dir");
    let archiver = Service::start(
        "natter-archiver",
        &[
            "--nats-url".into(),
            nats.url(),
            "--database-url".into(),
            pg.url(),
        ],
        &[],
    )
    .await;
    let filestore = Service::start(
        "natter-filestore",
        &[
            "--nats-url".into(),
            nats.url(),
            "--data-dir".into(),
            files.path().display().to_string(),
        ],
        &[],
    )
    .await;
    let mut edges = Vec::new();
    for i in 0..2 {
        edges.push(Service::start("natter-edge", &edge_args(&nats, i), &[]).await);
    }
    let ready = json!({
        "edges": edges.iter().map(|e| json!({"ws": e.ws_url(), "ops": format!("http://{}", e.ops_addr)})).collect::<Vec<_>>(),
        "filestore": format!("http://{}", filestore.addr),
        "archiver": format!("http://{}", archiver.addr),
        "nats": nats.url(),
    });
    println!("{ready}");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let (cmd, i) = (
            words.next().unwrap_or(""),
            words.next().and_then(|w| w.parse::<usize>().ok()),
        );
        let answer = match (cmd, i) {
            ("kill", Some(i)) if i < edges.len() => {
                edges[i].proc().kill9();
                json!({"ok": cmd, "edge": i})
            }
            ("term", Some(i)) if i < edges.len() => {
                edges[i].proc().term();
                let status = edges[i].proc().wait_exit(Duration::from_secs(20)).await;
                json!({"ok": cmd, "edge": i, "exited": status.map(|s| s.to_string())})
            }
            ("restart", Some(i)) if i < edges.len() => {
                edges[i].restart().await;
                json!({"ok": cmd, "edge": i})
            }
            ("", _) => continue,
            _ => json!({"error": format!("unknown command {line:?}")}),
        };
        println!("{answer}");
    }
    drop(edges);
    drop(filestore);
    drop(archiver);
}
