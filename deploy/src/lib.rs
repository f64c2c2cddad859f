//! Support for natter's deploy check: run the service images with `docker` the way a
//! pod runs them, and read what the deploy files promise.
//!
//! - [`Images`]: the three image references under test (`NATTER_IMAGE_EDGE`, ...), set by
//!   `just deploy-check` after it built them. Missing variables or a missing `docker` are
//!   errors, never a reason to skip: a check that cannot run has failed.
//! - [`Container`]: one `docker run` on the host network (loopback addresses only, no bridge),
//!   read-only root file system, no capabilities, as the image's non-root user; removed when
//!   dropped, its log printed if the test is failing.
//! - [`metrics_promised`]: the `natter_*` metric names the Grafana dashboard and the alert
//!   rules use, so a test can hold the running services to them.
//!
//! It does not build images or start dockerd; `scripts/deploy-check.sh` does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The image references under test.
#[derive(Debug, Clone)]
pub struct Images {
    pub edge: String,
    pub archiver: String,
    pub filestore: String,
    pub bots: String,
}

impl Images {
    /// From `NATTER_IMAGE_EDGE`, `_ARCHIVER`, `_FILESTORE` and `_BOTS`; panics
    /// with how to get them when one is missing, and when `docker` cannot reach a daemon.
    pub fn from_env() -> Images {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run `just deploy-check`, which builds the images and sets it")
            })
        };
        let images = Images {
            edge: var("NATTER_IMAGE_EDGE"),
            archiver: var("NATTER_IMAGE_ARCHIVER"),
            filestore: var("NATTER_IMAGE_FILESTORE"),
            bots: var("NATTER_IMAGE_BOTS"),
        };
        let out = docker(&["version", "--format", "{{.Server.Version}}"]);
        assert!(
            out.status.success(),
            "docker cannot reach a daemon (DOCKER_HOST={:?}): {}",
            std::env::var("DOCKER_HOST").ok(),
            String::from_utf8_lossy(&out.stderr)
        );
        for image in [
            &images.edge,
            &images.archiver,
            &images.filestore,
            &images.bots,
        ] {
            let out = docker(&["image", "inspect", "--format", "{{.Id}}", image]);
            assert!(
                out.status.success(),
                "image {image} does not exist: build it with `just deploy-check`"
            );
        }
        images
    }
}

/// Run `docker args...` and wait for it.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
}

/// A running container, removed on drop.
pub struct Container {
    pub name: String,
}

/// Label on every container the check starts, so that a cleanup can find leftovers.
pub const LABEL: &str = "natter-deploy-check=1";

/// `docker run` arguments shared by [`Container::run`] and [`run_once`]: host network
/// (loopback only), read-only root, all capabilities dropped, no-new-privileges, the
/// image's own (non-root) user; `env` and `mounts` (host path, container path, which may
/// end in `:ro`) as given.
fn run_args(
    mode: &[&str],
    image: &str,
    args: &[String],
    env: &[(String, String)],
    mounts: &[(PathBuf, &str)],
) -> Vec<String> {
    let mut cmd: Vec<String> = mode.iter().map(|s| s.to_string()).collect();
    cmd.extend(
        [
            "--label",
            LABEL,
            "--network",
            "host",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--memory",
            "512m",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    for (k, v) in env {
        cmd.push("-e".into());
        cmd.push(format!("{k}={v}"));
    }
    for (host, inside) in mounts {
        cmd.push("-v".into());
        cmd.push(format!("{}:{inside}", host.display()));
    }
    cmd.push(image.into());
    cmd.extend_from_slice(args);
    cmd
}

/// Run `image` with `args` to completion (`docker run --rm`), as [`Container::run`] would
/// start it; its output.
pub fn run_once(
    image: &str,
    args: &[String],
    env: &[(String, String)],
    mounts: &[(PathBuf, &str)],
) -> Output {
    let cmd = run_args(&["run", "--rm"], image, args, env, mounts);
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    docker(&refs)
}

/// Whether the binary in `image` has `flag` (from its `--help`).
pub fn supports_flag(image: &str, flag: &str) -> bool {
    let out = run_once(image, &["--help".to_string()], &[], &[]);
    assert!(
        out.status.success(),
        "{image} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).contains(flag)
}

impl Container {
    /// `docker run -d` of `image` with `args` after the image's entrypoint, as a pod runs
    /// it (see [`run_args`]).
    pub fn run(
        name: &str,
        image: &str,
        args: &[String],
        env: &[(String, String)],
        mounts: &[(PathBuf, &str)],
    ) -> Container {
        let _ = docker(&["rm", "-f", name]);
        let cmd = run_args(&["run", "-d", "--name", name], image, args, env, mounts);
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = docker(&refs);
        assert!(
            out.status.success(),
            "docker run {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container { name: name.into() }
    }

    /// stdout and stderr of the container so far.
    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Whether the container is running.
    pub fn running(&self) -> bool {
        let out = docker(&["inspect", "--format", "{{.State.Running}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// The exit code once it stopped.
    pub fn exit_code(&self) -> Option<i64> {
        let out = docker(&["inspect", "--format", "{{.State.ExitCode}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// `docker exec` of `cmd` (exec form: the images have no shell) with the container's
    /// environment; its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        docker(&args)
    }

    /// Send a signal to the container's PID 1 (tini, which passes it on).
    pub fn signal(&self, sig: &str) {
        let out = docker(&["kill", "--signal", sig, &self.name]);
        assert!(
            out.status.success(),
            "docker kill {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of container {} ----\n{}", self.name, self.logs());
        }
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Every `natter_*` metric name the dashboard and the alert rules use (histogram series
/// names as written, e.g. `natter_edge_publish_seconds_bucket`).
pub fn metrics_promised() -> BTreeSet<String> {
    let dir = repo_root().join("k8s/base/observability");
    let mut names = BTreeSet::new();
    for file in ["natter-dashboard.json", "natter-alerts.yaml"] {
        let text =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        names.extend(metric_names(&text));
    }
    names
}

/// `natter_[a-z0-9_]+` words in `text`.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("natter_") {
        let start = i + pos;
        let boundary = start == 0 || !is_name_byte(bytes[start - 1]);
        let mut end = start + "natter_".len();
        while end < bytes.len() && is_name_byte(bytes[end]) {
            end += 1;
        }
        if boundary && end > start + "natter_".len() {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

/// The shared settings of `k8s/base/natter.env` (what the natter-config ConfigMap holds),
/// as (name, value) pairs.
pub fn shared_settings() -> Vec<(String, String)> {
    let path = repo_root().join("k8s/base/natter.env");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}
