//! `natter-js-harness`: the real stack for the JavaScript client's tests (`clients/js/test/`).
//!
//! Starts nats-server, Postgres, an archiver, a filestore and two edges (auth off) on free
//! 127.0.0.1 ports through `natter_testkit`, prints one JSON line with their addresses, then
//! reads commands on stdin, one per line, answering each with one JSON line:
//!
//! - `kill <i>`: kill -9 edge `i` (0 or 1);
//! - `term <i>`: SIGTERM edge `i` (drain) and wait for it to exit;
//! - `restart <i>`: start edge `i` again on the same ports and wait until it is ready;
//! - `token <userId> <userName> <room>`: a token (JWT) for that user, name and room (the
//!   room is the rest of the line), when the stack runs with `NATTER_JS_AUTH=required`.
//!
//! With `NATTER_JS_AUTH=required` the edges and the filestore check HS256 tokens (a fixed
//! test key); otherwise they run with `--auth off`.
//! Everything stops when stdin closes (every process dies with its handle). It is not a
//! general-purpose launcher: `just up` is that.

use std::time::Duration;

use natter_testkit::{NatsServer, Postgres, Service};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The test key of `NATTER_JS_AUTH=required` stacks (never used outside tests).
const TEST_SECRET: &str = "natter-js-harness-test-key-0123456789abcdef";

/// `--auth ...` flags for the edges and the filestore.
fn auth_args() -> Vec<String> {
    match std::env::var("NATTER_JS_AUTH").as_deref() {
        Ok("required") => vec![
            "--auth".into(),
            "required".into(),
            "--auth-hs256-secret".into(),
            TEST_SECRET.into(),
        ],
        _ => vec!["--auth".into(), "off".into()],
    }
}

/// A token minted by `natter-edge token` with the test key.
fn token(user: &str, name: &str, room: &str) -> Result<String, String> {
    let out = std::process::Command::new(natter_testkit::bin_path("natter-edge"))
        .args(["token", "--user", user, "--name", name, "--room", room])
        .args(["--auth", "required", "--auth-hs256-secret", TEST_SECRET])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn edge_args(nats: &NatsServer, i: usize) -> Vec<String> {
    let mut args: Vec<String> = [
        "--nats-url",
        &nats.url(),
        "--node-name",
        &format!("edge-{}", i + 1),
        "--tail-check-secs",
        "1",
        "--drain-timeout-secs",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(auth_args());
    args
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
    let mut filestore_args = vec![
        "--nats-url".into(),
        nats.url(),
        "--data-dir".into(),
        files.path().display().to_string(),
    ];
    filestore_args.extend(auth_args());
    let filestore = Service::start("natter-filestore", &filestore_args, &[]).await;
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
            ("token", _) => {
                let rest: Vec<&str> = line.split_whitespace().skip(1).collect();
                match rest.as_slice() {
                    [user, name, room @ ..] if !room.is_empty() => {
                        match token(user, name, &room.join(" ")) {
                            Ok(t) => json!({"ok": cmd, "token": t}),
                            Err(e) => json!({"error": e}),
                        }
                    }
                    _ => json!({"error": "usage: token <userId> <userName> <room>"}),
                }
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
