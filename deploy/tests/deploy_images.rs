//! The images, run as a pod runs them, against real nats-server and Postgres.
//!
//! `just deploy-check` builds the images and sets `NATTER_IMAGE_*`; without them, or
//! without a docker daemon, this test fails (it never skips). Containers use the host's
//! network and listen on 127.0.0.1 only; their root file systems are read-only.
//!
//! One scenario, in order: two edges, an archiver and a filestore start with the shared
//! settings of `k8s/base/natter.env` (tokens required, the key mounted as in the pods); a
//! join without a token is refused; two clients with tokens from the image's `token`
//! command, on different edges, see each other's message with an `_id`; an image and a file are uploaded, announced and read back; the
//! archiver writes them to Postgres; every `natter_*` metric the dashboard and the alerts
//! use is served; logs are JSON; `natter-stream show` in the archiver container finds the
//! stream matching the shared settings; and SIGTERM reaches the edge through tini, which
//! drains its client and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use natter_deploy_check::{
    metric_names, metrics_promised, run_once, shared_settings, supports_flag, Container, Images,
};
use natter_testkit::client::msg_id;
use natter_testkit::{eventually, free_port, http, ChatClient, NatsServer, Postgres};
use serde_json::{json, Value};

const ROOM: &str = "deploy check room";
const DRAIN_SECS: u64 = 3;
/// The image's non-root user (Dockerfile).
const IMAGE_UID: u32 = 10001;
/// Where the pods mount the token key (k8s/base/edge/deployment.yaml).
const AUTH_DIR: &str = "/etc/natter/auth";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The natter-config settings (token checking `required` included), pointed at this
/// test's single NATS node, with the token key file where the pods have it.
fn settings(nats_url: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = shared_settings()
        .into_iter()
        .filter(|(k, _)| k != "NATS_URL" && k != "NATTER_STREAM_REPLICAS")
        .collect();
    env.push(("NATS_URL".into(), nats_url.into()));
    env.push(("NATTER_STREAM_REPLICAS".into(), "1".into()));
    env.push(("NATTER_DRAIN_TIMEOUT_SECS".into(), DRAIN_SECS.to_string()));
    env.push((
        "NATTER_AUTH_HS256_SECRET_FILE".into(),
        format!("{AUTH_DIR}/hs256-secret"),
    ));
    env
}

/// `--listen` on a free loopback port, and `--ops-listen` on another where the image's
/// binary has a separate operations address (as the pods give it): (args, public address,
/// operations address).
fn listen_args(image: &str) -> (Vec<String>, SocketAddr, SocketAddr) {
    let public = loopback(free_port());
    let mut args = vec!["--listen".to_string(), public.to_string()];
    if supports_flag(image, "--ops-listen") {
        let ops = loopback(free_port());
        args.extend(["--ops-listen".to_string(), ops.to_string()]);
        (args, public, ops)
    } else {
        (args, public, public)
    }
}

async fn wait_ready(c: &Container, addr: SocketAddr) {
    let ok = eventually(Duration::from_secs(40), || async move {
        matches!(http::get(addr, "/readyz", &[]).await, Ok(r) if r.status == 200)
    })
    .await;
    assert!(ok, "{} not ready on {addr}:\n{}", c.name, c.logs());
}

/// Names of the samples a `/metrics` page serves.
async fn served_metrics(addr: SocketAddr) -> Vec<String> {
    let r = http::get(addr, "/metrics", &[])
        .await
        .expect("GET /metrics");
    assert_eq!(r.status, 200, "/metrics on {addr}");
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

fn multipart(message: &Value, file_name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "natter-deploy-check-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{message}\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"files[]\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn params(user_id: &str, user_name: &str, uuid: &str) -> Value {
    json!({"userId": user_id, "userName": user_name, "roomName": ROOM, "uuid": uuid,
           "date": 1_700_000_000_000u64, "ack": false})
}

#[test]
fn metric_names_are_whole_words() {
    let names = metric_names(
        "rate(natter_edge_frames_out_total[1m]) / x_natter_no + natter_archiver_db_up==0 natter_",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["natter_archiver_db_up", "natter_edge_frames_out_total"]
    );
}

#[test]
fn the_deploy_files_promise_metrics_and_settings() {
    assert!(metrics_promised().contains("natter_archiver_consumer_lag"));
    assert!(shared_settings()
        .iter()
        .any(|(k, v)| k == "NATTER_STREAM_REPLICAS" && v == "3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_serve_chat_uploads_and_archive_and_drain_on_sigterm() {
    let images = Images::from_env();
    let nats = NatsServer::start().await;
    let pg = Postgres::start().await;
    let env = settings(&nats.url());
    let tag = std::process::id();

    // The upload volume, owned by the image's user as fsGroup would make it.
    let data = tempfile::Builder::new()
        .prefix("natter-deploy-check-files-")
        .tempdir()
        .expect("temp dir");
    std::os::unix::fs::chown(data.path(), Some(IMAGE_UID), Some(IMAGE_UID))
        .expect("chown the upload dir to the image's user (run as root)");
    let data_dir: PathBuf = data.path().to_path_buf();

    // The token key, as the Secret natter-auth puts it in the pods (readable by the
    // image's user).
    let auth = tempfile::Builder::new()
        .prefix("natter-deploy-check-auth-")
        .tempdir()
        .expect("temp dir");
    let key_file = auth.path().join("hs256-secret");
    std::fs::write(
        &key_file,
        format!("deploy-check-{tag}-0123456789abcdef0123456789"),
    )
    .expect("write the key");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o444),
    )
    .expect("chmod the key");
    let auth_mount = (auth.path().to_path_buf(), "/etc/natter/auth:ro");

    let (mut args, _, archiver_ops) = listen_args(&images.archiver);
    args.extend(["--database-url".to_string(), pg.url()]);
    let archiver = Container::run(
        &format!("natter-check-archiver-{tag}"),
        &images.archiver,
        &args,
        &env,
        &[],
    );
    let (mut args, fs, filestore_ops) = listen_args(&images.filestore);
    args.extend(["--data-dir".to_string(), "/data".to_string()]);
    let filestore = Container::run(
        &format!("natter-check-filestore-{tag}"),
        &images.filestore,
        &args,
        &env,
        &[(data_dir, "/data"), auth_mount.clone()],
    );
    let mut edges = Vec::new();
    let mut edge_addrs = Vec::new();
    for i in 0..2 {
        let (mut args, public, ops) = listen_args(&images.edge);
        args.extend(["--node-name".to_string(), format!("edge-{i}")]);
        edges.push(Container::run(
            &format!("natter-check-edge{i}-{tag}"),
            &images.edge,
            &args,
            &env,
            std::slice::from_ref(&auth_mount),
        ));
        edge_addrs.push((public, ops));
    }
    // The bots worker: started like the others, it must come up ready with the shared
    // settings and the key (its scripts are tested in bots/).
    let (args, _, bots_ops) = listen_args(&images.bots);
    let bots = Container::run(
        &format!("natter-check-bots-{tag}"),
        &images.bots,
        &args,
        &env,
        std::slice::from_ref(&auth_mount),
    );
    wait_ready(&archiver, archiver_ops).await;
    wait_ready(&bots, bots_ops).await;
    wait_ready(&filestore, filestore_ops).await;
    for (c, (_, ops)) in edges.iter().zip(&edge_addrs) {
        wait_ready(c, *ops).await;
    }

    // Tokens from the edge image's own `token` command, signed with the mounted key.
    let token = |user: &str, name: &str| {
        let out = run_once(
            &images.edge,
            &[
                "token".into(),
                "--user".into(),
                user.into(),
                "--name".into(),
                name.into(),
            ],
            &env,
            std::slice::from_ref(&auth_mount),
        );
        assert!(
            out.status.success(),
            "natter-edge token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (ann_token, bob_token) = (token("u-ann", "Ann"), token("u-bob", "Bob"));

    // NATTER_AUTH=required (natter-config): a join without a token is refused.
    let mut stranger = ChatClient::connect(&format!("ws://{}/chat", edge_addrs[0].0))
        .await
        .expect("connect to edge 0");
    let refused = stranger
        .join(ROOM, "u-eve", "Eve", None, false)
        .await
        .expect_err("a join without a token is refused");
    assert_eq!(refused["error"]["code"], json!(-32007), "{refused}");

    // Chat: clients on different edges see one message, with its _id.
    let mut ann = ChatClient::connect(&format!("ws://{}/chat?token={ann_token}", edge_addrs[0].0))
        .await
        .expect("connect to edge 0");
    let mut bob = ChatClient::connect(&format!("ws://{}/chat?token={bob_token}", edge_addrs[1].0))
        .await
        .expect("connect to edge 1");
    let welcome = ann
        .join(ROOM, "u-ann", "Ann", None, false)
        .await
        .expect("Ann joins");
    assert_eq!(welcome["params"]["node"], json!("edge-0"));
    bob.join(ROOM, "u-bob", "Bob", None, false)
        .await
        .expect("Bob joins");
    ann.send_message(
        ROOM,
        "u-ann",
        "Ann",
        "hello from a container",
        "deploy-text-1",
    )
    .await;
    for c in [&mut ann, &mut bob] {
        let got = c.room_messages(1, Duration::from_secs(15)).await;
        assert_eq!(got.len(), 1, "the text message reaches both edges' clients");
        assert_eq!(got[0]["params"]["uuid"], json!("deploy-text-1"));
        assert!(msg_id(&got[0]) > 0);
    }

    // Uploads through the filestore container, onto its volume, announced to the room.
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    png.extend((0u8..56).map(|i| i.wrapping_mul(37)));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let mut p = params("u-ann", "Ann", "deploy-img-1");
    p["base64ImgString"] = json!(b64);
    let image = json!({"jsonrpc": "2.0", "method": "imageMessage", "params": p, "id": 7});
    let ann_auth = format!("Bearer {ann_token}");
    let bob_auth = format!("Bearer {bob_token}");
    let r = http::request(
        fs,
        "POST",
        "/images",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &ann_auth),
        ],
        image.to_string().as_bytes(),
    )
    .await
    .expect("POST /images");
    assert_eq!(
        r.status,
        200,
        "POST /images: {}\n{}",
        r.text(),
        filestore.logs()
    );
    let r = http::get(fs, "/images/deploy-img-1", &[("Authorization", &ann_auth)])
        .await
        .expect("GET /images");
    assert_eq!(r.status, 200, "GET /images/deploy-img-1");
    let stored: Value = serde_json::from_slice(&r.body).expect("image JSON");
    assert_eq!(stored["params"]["base64ImgString"], json!(b64));

    let file_bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut p = params("u-bob", "Bob", "deploy-file-1");
    p["fileName"] = json!("notes.bin");
    p["fileSize"] = json!(file_bytes.len());
    p["fileType"] = json!("application/octet-stream");
    let msg = json!({"jsonrpc": "2.0", "method": "fileMessage", "params": p, "id": 8});
    let (content_type, body) = multipart(&msg, "notes.bin", &file_bytes);
    let r = http::request(
        fs,
        "POST",
        "/files",
        &[
            ("Content-Type", &content_type),
            ("Authorization", &bob_auth),
        ],
        &body,
    )
    .await
    .expect("POST /files");
    assert_eq!(
        r.status,
        200,
        "POST /files: {}\n{}",
        r.text(),
        filestore.logs()
    );
    let r = http::get(fs, "/files/deploy-file-1", &[("Authorization", &bob_auth)])
        .await
        .expect("GET /files");
    assert_eq!(r.status, 200, "GET /files/deploy-file-1");
    assert_eq!(r.body, file_bytes, "the file comes back byte for byte");
    for c in [&mut ann, &mut bob] {
        let got = c.room_messages(2, Duration::from_secs(15)).await;
        let methods: Vec<&Value> = got.iter().map(|m| &m["method"]).collect();
        assert_eq!(
            methods,
            [&json!("imageMessage"), &json!("fileMessage")],
            "{got:?}"
        );
        assert!(got.iter().all(|m| msg_id(m) > 0));
    }

    // The archiver container wrote all three to Postgres.
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&pg.url())
        .await
        .expect("connect to postgres");
    let archived = eventually(Duration::from_secs(20), || {
        let db = db.clone();
        async move {
            let n: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM messages WHERE room = $1 AND uuid IN ('deploy-text-1', 'deploy-img-1', 'deploy-file-1')",
            )
            .bind(ROOM)
            .fetch_one(&db)
            .await;
            matches!(n, Ok(3))
        }
    })
    .await;
    assert!(
        archived,
        "the archiver stored the messages:\n{}",
        archiver.logs()
    );

    // The operator's stream tool ships in the archiver image and, with the pod's own
    // settings, finds the stream as the services made it.
    let out = archiver.exec(&["natter-stream", "show"]);
    assert!(
        out.status.success(),
        "natter-stream show in the archiver container: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every natter_* metric the dashboard and the alert rules use is served.
    let mut served = Vec::new();
    for ops in [edge_addrs[0].1, archiver_ops, filestore_ops] {
        served.extend(served_metrics(ops).await);
    }
    let missing: Vec<String> = metrics_promised()
        .into_iter()
        .filter(|m| !served.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by k8s/base/observability but not served: {missing:?}"
    );

    // NATTER_LOG_FORMAT=json (natter-config): every service logs JSON lines.
    for c in edges.iter().chain([&archiver, &filestore, &bots]) {
        let logs = c.logs();
        let first = logs.lines().find(|l| !l.trim().is_empty());
        let parsed = first.and_then(|l| serde_json::from_str::<Value>(l).ok());
        assert!(
            parsed.is_some_and(|v| v.is_object()),
            "{} does not log JSON:\n{logs}",
            c.name
        );
    }

    // SIGTERM to the container reaches the edge through tini: it drains and exits 0.
    edges[0].signal("TERM");
    let drain = ann
        .next_matching(Duration::from_secs(10), |v| v["method"] == "reconnect")
        .await
        .unwrap_or_else(|| panic!("no drain request after SIGTERM:\n{}", edges[0].logs()));
    assert_eq!(drain["params"]["reason"], json!("draining"));
    assert!(drain.get("id").is_some(), "the drain request carries an id");
    let edge0 = &edges[0];
    let stopped = eventually(Duration::from_secs(DRAIN_SECS + 10), || async move {
        !edge0.running()
    })
    .await;
    assert!(
        stopped,
        "the edge did not exit after draining:\n{}",
        edge0.logs()
    );
    assert_eq!(
        edge0.exit_code(),
        Some(0),
        "exit code after drain:\n{}",
        edge0.logs()
    );
}
