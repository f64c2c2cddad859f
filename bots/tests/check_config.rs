//! `natter-bots --check-config`: the effective configuration with secrets redacted (exit 0),
//! or why it is invalid (exit 2).

use std::process::Command;

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(natter_testkit::bin_path("natter-bots"))
        .arg("--check-config")
        .args(args)
        .env_clear()
        .output()
        .expect("run natter-bots");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn valid_invalid_and_redacted() {
    let secret = "a-very-secret-bots-key-of-32-bytes-or-more";
    let (code, text) = check(&["--auth", "required", "--auth-hs256-secret", secret]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("--ops-listen") && text.contains("9092"),
        "{text}"
    );
    assert!(!text.contains(secret), "the secret is printed: {text}");
    let (code, text) = check(&["--auth", "required"]);
    assert_eq!(code, 2, "required without a key: {text}");
    let (code, text) = check(&["--ack-wait-secs", "300"]);
    assert_ne!(code, 0, "an ack wait past the dedupe window: {text}");
    let (code, text) = check(&["--consumer", "a.b"]);
    assert_eq!(code, 2, "{text}");
    // Off loopback without a key: tokens are required and there is none.
    let (code, text) = check(&["--listen", "0.0.0.0:8092"]);
    assert_eq!(code, 2, "{text}");
}
