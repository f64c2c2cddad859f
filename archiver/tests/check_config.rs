//! `natter-archiver --check-config` as the deploy checker runs it: the real binary with
//! flags and environment, no NATS or Postgres needed.

use std::process::Command;

use natter_testkit::bin_path;

fn check(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin_path("natter-archiver"))
        .arg("--check-config")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .output()
        .expect("run natter-archiver");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_configuration_is_printed_with_its_password_redacted() {
    let (code, out, err) = check(
        &["--batch-size", "500"],
        &[
            ("DATABASE_URL", "postgres://natter:s3cret@db:5432/natter"),
            ("NATTER_LOG_FORMAT", "json"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration is valid"), "{out}");
    assert!(!out.contains("s3cret"), "the password leaked:\n{out}");
    assert!(
        out.contains("postgres://natter:***@db:5432/natter"),
        "{out}"
    );
    assert!(out.contains("(env DATABASE_URL)"), "{out}");
    let batch = out
        .lines()
        .find(|l| l.starts_with("--batch-size"))
        .unwrap_or("");
    assert!(batch.contains("500") && batch.ends_with("(flag)"), "{out}");
    let format = out
        .lines()
        .find(|l| l.starts_with("--log-format"))
        .unwrap_or("");
    assert!(format.contains("json"), "{out}");
}

#[test]
fn an_invalid_configuration_exits_non_zero_with_the_reason() {
    let (code, out, err) = check(&["--database-url", "mysql://db/natter"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("postgres://"), "{err}");
    let (code, _, err) = check(&[], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--database-url"), "{err}");
    let (code, _, err) = check(
        &[
            "--database-url",
            "postgres://db/natter",
            "--batch-size",
            "0",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("--batch-size"), "{err}");
}
