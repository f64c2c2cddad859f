//! Start-up: the operations flags every service flattens into its clap `Config`
//! ([`OpsArgs`]), `--check-config`, and [`start`], which a service's `main` calls first.
//!
//! [`run_main`] is the rest of `main` too: the runtime, the service, its exit code.
//!
//! `--check-config` parses flags and environment exactly as a real start would, runs the
//! service's own validation ([`ServiceConfig::validate`]) and checks `RUST_LOG`, then prints
//! the effective configuration (every setting, its value and where it came from; secrets
//! redacted) and exits 0, or prints why the configuration is invalid and exits 2. The
//! deploy checker runs each container's args and env through it.
//!
//! It does not define any service's settings.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::ArgMatches;

use crate::logging::{filter_from_env, init_tracing, LogFormat};

/// The operations flags of every service.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Log format: `text` or `json` (what is logged: RUST_LOG, default `info`).
    #[arg(long, env = "NATTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Validate the configuration (flags and environment), print it with secrets redacted,
    /// and exit: 0 when it is valid, 2 when not.
    #[arg(long)]
    pub check_config: bool,
}

/// A service's configuration as natter-ops sees it.
pub trait ServiceConfig: clap::Parser {
    /// The flattened [`OpsArgs`].
    fn ops(&self) -> &OpsArgs;

    /// What clap cannot check (lists, combinations, URLs). Nothing by default.
    fn validate(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }

    /// Ids (field names) of settings never printed. Passwords and tokens inside URLs are
    /// always redacted.
    fn secret_args() -> &'static [&'static str] {
        &[]
    }
}

/// What `main` should do after [`start`].
#[derive(Debug)]
pub enum Start<C> {
    /// Run the service with this configuration (logging is set up).
    Run(C),
    /// Exit now with this code (`--help`, `--version`, `--check-config`, or an invalid
    /// configuration, already reported).
    Exit(ExitCode),
}

/// Parse flags and environment into `C`, validate, then either handle `--check-config` or
/// set up logging and hand the configuration back. Messages go to stdout and stderr.
pub fn start<C: ServiceConfig>() -> Start<C> {
    let prepared = start_from::<C, _, _>(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    let Start::Run(config) = prepared else {
        return prepared;
    };
    if let Err(e) = init_tracing(config.ops().log_format) {
        eprintln!("{}: {e}", C::command().get_name());
        return Start::Exit(ExitCode::FAILURE);
    }
    Start::Run(config)
}

/// A service's whole `main`: [`start`], then `run(config)` to completion on a multi-threaded
/// Tokio runtime. A failure is logged (with its causes) and exits 1.
pub fn run_main<C, F, Fut, E>(run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let config = match start::<C>() {
        Start::Run(config) => config,
        Start::Exit(code) => return code,
    };
    let name = C::command().get_name().to_owned();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "{name}: cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}

/// [`start`] with explicit arguments and outputs, and without setting up logging.
pub fn start_from<C, I, T>(args: I, out: &mut impl Write, err: &mut impl Write) -> Start<C>
where
    C: ServiceConfig,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = C::command();
    let name = cmd.get_name().to_owned();
    let parsed = cmd
        .try_get_matches_from_mut(args)
        .and_then(|m| C::from_arg_matches(&m).map(|c| (c, m)));
    let (config, matches) = match parsed {
        Ok(x) => x,
        Err(e) => {
            // Help and version are "errors" that go to stdout and exit 0.
            let _ = e.print();
            return Start::Exit(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)));
        }
    };
    let valid = config
        .validate()
        .map_err(|e| e.to_string())
        .and_then(|()| filter_from_env().map(drop).map_err(|e| e.to_string()));
    if let Err(e) = valid {
        let _ = writeln!(err, "{name}: invalid configuration: {e}");
        return Start::Exit(ExitCode::from(2));
    }
    if config.ops().check_config {
        let _ = writeln!(out, "{name}: configuration is valid");
        for s in effective_config(&cmd, &matches, C::secret_args()) {
            let _ = writeln!(out, "{s}");
        }
        return Start::Exit(ExitCode::SUCCESS);
    }
    Start::Run(config)
}

/// One setting of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The flag, e.g. `--database-url`.
    pub flag: String,
    /// The value (redacted where secret), `(unset)` when absent.
    pub value: String,
    /// `default`, `flag`, or `env NAME`.
    pub source: String,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<34} {}  ({})", self.flag, self.value, self.source)
    }
}

/// Every setting of `cmd` as parsed into `matches`, in declaration order, without
/// `--help`, `--version` and `--check-config`.
pub fn effective_config(
    cmd: &clap::Command,
    matches: &ArgMatches,
    secret_args: &[&str],
) -> Vec<Setting> {
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "check_config") {
            continue;
        }
        let flag = arg
            .get_long()
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| id.to_owned());
        let raw: Option<Vec<String>> = matches.try_get_raw(id).ok().flatten().map(|vals| {
            vals.map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        });
        let value = match raw {
            None => "(unset)".to_owned(),
            Some(_) if secret_args.contains(&id) => "(redacted)".to_owned(),
            Some(v) => redact(&v.join(",")),
        };
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => arg
                .get_env()
                .map(|e| format!("env {}", e.to_string_lossy()))
                .unwrap_or_else(|| "env".to_owned()),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => "unset".to_owned(),
        };
        out.push(Setting {
            flag,
            value,
            source,
        });
    }
    out
}

/// Query parameters whose values are secrets.
const SECRET_PARAMS: [&str; 5] = ["password", "pass", "token", "secret", "sslpassword"];
/// URL schemes whose user-only userinfo is a token (`nats://TOKEN@host`).
const TOKEN_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

/// `value` with the passwords and tokens of any URLs in it (comma-separated) replaced by
/// `***`.
pub fn redact(value: &str) -> String {
    value
        .split(',')
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None if TOKEN_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
                format!("***@{host}")
            }
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                        format!("{k}=***")
                    }
                    _ => kv.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            match fragment {
                Some(f) => format!("{path}?{query}#{f}"),
                None => format!("{path}?{query}"),
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A service configuration like the real ones.
    #[derive(Debug, Parser)]
    #[command(name = "natter-test")]
    struct Config {
        #[arg(long, env = "NATTER_TEST_DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value_t = 2)]
        writers: u32,
        #[arg(long)]
        api_key: Option<String>,
        #[command(flatten)]
        ops: OpsArgs,
    }

    impl ServiceConfig for Config {
        fn ops(&self) -> &OpsArgs {
            &self.ops
        }
        fn validate(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            if self.writers > 10 {
                return Err("--writers must be at most 10".into());
            }
            Ok(())
        }
        fn secret_args() -> &'static [&'static str] {
            &["api_key"]
        }
    }

    fn run(args: &[&str]) -> (Start<Config>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let argv = std::iter::once("natter-test").chain(args.iter().copied());
        let s = start_from::<Config, _, _>(argv, &mut out, &mut err);
        (
            s,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn check_config_prints_the_effective_configuration_redacted() {
        let (s, out, err) = run(&[
            "--database-url",
            "postgres://natter:hunter2@db:5432/natter?sslmode=require&password=x",
            "--api-key",
            "k-123",
            "--check-config",
        ]);
        assert!(
            matches!(s, Start::Exit(c) if c == ExitCode::SUCCESS),
            "{err}"
        );
        assert!(
            out.starts_with("natter-test: configuration is valid\n"),
            "{out}"
        );
        assert!(!out.contains("hunter2") && !out.contains("k-123"), "{out}");
        assert!(out.contains("postgres://natter:***@db:5432/natter?sslmode=require&password=***"));
        assert!(out.contains("(redacted)"), "{out}");
        let writers = out.lines().find(|l| l.starts_with("--writers")).unwrap();
        assert!(
            writers.contains(" 2 ") && writers.ends_with("(default)"),
            "{out}"
        );
        assert!(out.contains("--log-format"), "{out}");
        assert!(!out.contains("--check-config"), "{out}");
    }

    #[test]
    fn invalid_configuration_exits_2_with_the_reason() {
        let (s, out, err) = run(&["--database-url", "x", "--writers", "11", "--check-config"]);
        assert!(matches!(s, Start::Exit(c) if c == ExitCode::from(2)));
        assert!(out.is_empty());
        assert!(
            err.contains("invalid configuration: --writers must be at most 10"),
            "{err}"
        );
        // Without --check-config an invalid configuration does not run either.
        let (s, _, _) = run(&["--database-url", "x", "--writers", "11"]);
        assert!(matches!(s, Start::Exit(c) if c == ExitCode::from(2)));
    }

    #[test]
    fn a_valid_configuration_runs() {
        let (s, out, _) = run(&["--database-url", "x", "--log-format", "json"]);
        let Start::Run(c) = s else {
            panic!("should run")
        };
        assert_eq!(c.ops.log_format, LogFormat::Json);
        assert!(out.is_empty());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact("nats://a:b@n1:4222,nats://tok@n2:4222"),
            "nats://a:***@n1:4222,nats://***@n2:4222"
        );
        assert_eq!(
            redact("postgres://natter@db/natter"),
            "postgres://natter@db/natter"
        );
        assert_eq!(redact("plain value"), "plain value");
    }
}
