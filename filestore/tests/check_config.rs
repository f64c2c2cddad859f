//! `natter-filestore --check-config` as the deploy checker runs it: the real binary with
//! flags and environment, no NATS needed.

use std::process::Command;

use natter_testkit::bin_path;

fn check(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin_path("natter-filestore"))
        .arg("--check-config")
        .args(args)
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .output()
        .expect("run natter-filestore");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_configuration_is_printed() {
    let (code, out, err) = check(
        &["--image-types", "png,jpg"],
        &[("NATS_URL", "nats://filestore:pw@nats:4222")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration is valid"), "{out}");
    assert!(out.contains("nats://filestore:***@nats:4222"), "{out}");
    assert!(!out.contains(":pw@"), "{out}");
    let types = out
        .lines()
        .find(|l| l.starts_with("--image-types"))
        .unwrap_or("");
    assert!(
        types.contains("png,jpg") && types.ends_with("(flag)"),
        "{out}"
    );
}

#[test]
fn an_invalid_configuration_exits_non_zero_with_the_reason() {
    let (code, out, err) = check(&["--image-types", "png,tiff"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("tiff"), "{err}");
    let (code, _, err) = check(&[], &[("RUST_LOG", "info,natter=loud")]);
    assert_eq!(code, 2);
    assert!(err.contains("RUST_LOG"), "{err}");
    let (code, _, err) = check(&[], &[("NATTER_LOG_FORMAT", "xml")]);
    assert_eq!(code, 2);
    assert!(err.contains("xml"), "{err}");
}

#[test]
fn auth_settings_are_checked_and_the_secret_never_printed() {
    let secret = "a-check-config-secret-of-at-least-32-bytes";
    let (code, out, err) = check(
        &["--auth", "required", "--max-concurrent-uploads", "8"],
        &[("NATTER_AUTH_HS256_SECRET", secret)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(secret), "{out}");
    assert!(out.contains("--auth"), "{out}");
    // A mode that checks tokens needs a key; a short secret is refused.
    let (code, _, err) = check(&["--auth", "required"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a key"), "{err}");
    let (code, _, err) = check(&["--auth-hs256-secret", "short"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("32 bytes"), "{err}");
    // Not on loopback and no key: tokens would be required, so this is refused too.
    let (code, _, err) = check(&["--listen", "0.0.0.0:8090"], &[]);
    assert_eq!(code, 2, "{err}");
}
