//! The authentication flags every service that checks tokens flattens into its
//! configuration (`#[command(flatten)] auth: AuthArgs`).

use std::path::PathBuf;

use crate::verify::{AuthConfigError, HS256_SECRET_MIN};

/// How strictly a service asks for tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Tokens are ignored (local development only: anyone may claim any userId).
    Off,
    /// A token is not needed, but one that is present is enforced.
    Optional,
    /// Every join (and every filestore request) needs a valid token.
    Required,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--auth*` flags, each with its environment twin. They are global, so a service's
/// subcommands (e.g. `natter-edge token`) take them too. `Debug` never shows the secret.
#[derive(Clone, clap::Args)]
pub struct AuthArgs {
    /// Token checking: `off` (local development only), `optional` (a token, when present,
    /// is enforced) or `required`. Unset: `required` when listening on a non-loopback
    /// address, else `optional` when a key is configured, else `off`.
    #[arg(long, env = "NATTER_AUTH", value_enum, global = true)]
    pub auth: Option<AuthMode>,

    /// Shared secret for HS256 tokens (at least 32 bytes). Prefer the file variant.
    #[arg(
        long,
        env = "NATTER_AUTH_HS256_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub auth_hs256_secret: Option<String>,

    /// File holding the HS256 shared secret (a trailing newline is ignored).
    #[arg(long, env = "NATTER_AUTH_HS256_SECRET_FILE", global = true)]
    pub auth_hs256_secret_file: Option<PathBuf>,

    /// PEM file with the public key for signed tokens: RSA → RS256, Ed25519 → EdDSA.
    #[arg(long, env = "NATTER_AUTH_PUBLIC_KEY_FILE", global = true)]
    pub auth_public_key_file: Option<PathBuf>,

    /// Clock leeway, in seconds, when checking `exp` and `nbf`.
    #[arg(
        long,
        env = "NATTER_AUTH_LEEWAY_SECS",
        default_value_t = 30,
        global = true
    )]
    pub auth_leeway_secs: u64,
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("auth", &self.auth)
            .field(
                "auth_hs256_secret",
                &self.auth_hs256_secret.as_ref().map(|_| "(redacted)"),
            )
            .field("auth_hs256_secret_file", &self.auth_hs256_secret_file)
            .field("auth_public_key_file", &self.auth_public_key_file)
            .field("auth_leeway_secs", &self.auth_leeway_secs)
            .finish()
    }
}

impl AuthArgs {
    /// Ids of the settings `--check-config` must never print
    /// (`natter_ops::ServiceConfig::secret_args`).
    pub const SECRET_ARGS: &'static [&'static str] = &["auth_hs256_secret"];

    /// The HS256 secret, from the flag or the file (without its trailing newline), checked
    /// for length; `None` when neither is given.
    pub fn hs256_secret(&self) -> Result<Option<Vec<u8>>, AuthConfigError> {
        let secret = match (&self.auth_hs256_secret, &self.auth_hs256_secret_file) {
            (Some(_), Some(_)) => return Err(AuthConfigError::TwoSecrets),
            (Some(s), None) => s.as_bytes().to_vec(),
            (None, Some(path)) => {
                let mut bytes =
                    std::fs::read(path).map_err(|e| AuthConfigError::Read(path.clone(), e))?;
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                bytes
            }
            (None, None) => return Ok(None),
        };
        if secret.len() < HS256_SECRET_MIN {
            return Err(AuthConfigError::ShortSecret);
        }
        Ok(Some(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let a = AuthArgs {
            auth: Some(AuthMode::Required),
            auth_hs256_secret: Some("very-secret-value-of-32-bytes-or-more".into()),
            auth_hs256_secret_file: None,
            auth_public_key_file: None,
            auth_leeway_secs: 30,
        };
        let shown = format!("{a:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
