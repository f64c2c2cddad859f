//! Checking tokens: the keys a service trusts, the mode it runs in, and why a token is
//! refused.
//!
//! Why ~525 lines: ~225 of checking (one place for every refusal reason) and ~300 of unit
//! tests covering each reason, algorithm and leeway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use thiserror::Error;

use crate::args::{AuthArgs, AuthMode};
use crate::claims::Claims;

/// Shortest HS256 secret accepted, in bytes (the hash's output size; RFC 7518 §3.2).
pub const HS256_SECRET_MIN: usize = 32;
/// Longest token looked at; anything longer is refused unparsed.
pub const TOKEN_MAX: usize = 8 * 1024;

/// Why a token was refused. The messages are meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is signed with {0}, which this server does not accept")]
    Algorithm(String),
    #[error("the token has no {0} claim")]
    MissingClaim(String),
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

/// The auth flags do not make a usable configuration.
#[derive(Debug, Error)]
pub enum AuthConfigError {
    #[error(
        "--auth {0} needs a key: --auth-hs256-secret(-file) or --auth-public-key-file \
         (required is the default when --listen is not a loopback address; \
         --auth off is for local development only)"
    )]
    NoKey(AuthMode),
    #[error("give --auth-hs256-secret or --auth-hs256-secret-file, not both")]
    TwoSecrets,
    #[error(
        "the HS256 secret must be at least {HS256_SECRET_MIN} bytes (e.g. `openssl rand -hex 32`)"
    )]
    ShortSecret,
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is not a PEM RSA or Ed25519 public key")]
    PublicKey(PathBuf),
}

struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

struct Inner {
    mode: AuthMode,
    keys: Vec<Key>,
    leeway: u64,
}

/// Checks tokens against the configured keys. Cheap to clone.
#[derive(Clone)]
pub struct Verifier(Arc<Inner>);

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("mode", &self.0.mode)
            .field("algorithms", &self.algorithms())
            .field("leeway", &self.0.leeway)
            .finish()
    }
}

impl Verifier {
    /// The verifier the flags describe. Mode: the explicit `--auth`, else `required` when
    /// `listen` is not a loopback address, else `optional` when a key is configured, else
    /// `off` (nothing outside this machine can connect, and there is nothing to verify
    /// with). `required` and `optional` without any key are configuration errors.
    pub fn from_args(args: &AuthArgs, listen: SocketAddr) -> Result<Verifier, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = args.hs256_secret()? {
            keys.push(Key {
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(&secret),
            });
        }
        if let Some(path) = &args.auth_public_key_file {
            let pem = read(path)?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                Key {
                    alg: Algorithm::RS256,
                    key: k,
                }
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                Key {
                    alg: Algorithm::EdDSA,
                    key: k,
                }
            } else {
                return Err(AuthConfigError::PublicKey(path.clone()));
            };
            keys.push(key);
        }
        let mode = match args.auth {
            Some(m) => m,
            None if !listen.ip().is_loopback() => AuthMode::Required,
            None if !keys.is_empty() => AuthMode::Optional,
            None => AuthMode::Off,
        };
        if mode != AuthMode::Off && keys.is_empty() {
            return Err(AuthConfigError::NoKey(mode));
        }
        Ok(Verifier(Arc::new(Inner {
            mode,
            keys,
            leeway: args.auth_leeway_secs,
        })))
    }

    /// A verifier that ignores tokens (`--auth off`), for tools and tests.
    pub fn off() -> Verifier {
        Verifier(Arc::new(Inner {
            mode: AuthMode::Off,
            keys: Vec::new(),
            leeway: 0,
        }))
    }

    pub fn mode(&self) -> AuthMode {
        self.0.mode
    }

    /// The algorithms tokens may be signed with (for logs).
    pub fn algorithms(&self) -> Vec<&'static str> {
        self.0
            .keys
            .iter()
            .map(|k| match k.alg {
                Algorithm::HS256 => "HS256",
                Algorithm::RS256 => "RS256",
                Algorithm::EdDSA => "EdDSA",
                _ => "other",
            })
            .collect()
    }

    /// What the service's mode makes of a request that carries `token` (or none): `None`
    /// when the request goes unchecked (mode off, or optional without a token), the claims
    /// of a valid token, or why it is refused (a missing token in required mode included).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        match (self.mode(), token) {
            (AuthMode::Off, _) => Ok(None),
            (AuthMode::Required, None) => Err(AuthError::Missing),
            (AuthMode::Optional, None) => Ok(None),
            (_, Some(t)) => self.verify(t).map(Some),
        }
    }

    /// Check a token's signature, `exp` (required) and `nbf` (within the leeway), and read
    /// its claims. The mode is the caller's business: this checks whatever it is given.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > TOKEN_MAX {
            return Err(AuthError::Malformed(format!(
                "longer than {TOKEN_MAX} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token).map_err(map_error)?;
        let Some(key) = self.0.keys.iter().find(|k| k.alg == header.alg) else {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        };
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.0.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(map_error)?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Malformed("the sub claim is empty".into()));
        }
        Ok(data.claims)
    }
}

/// Sign `claims` with HS256 (development tokens, tests).
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Malformed(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|e| AuthConfigError::Read(path.to_owned(), e))
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm => AuthError::Algorithm("another algorithm".into()),
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        // The claims are deserialised before the spec claims are checked: a token without
        // `exp` or `sub` fails as JSON first.
        ErrorKind::Json(j) => match missing_field(&j.to_string()) {
            Some(field) => AuthError::MissingClaim(field),
            None => AuthError::Malformed(format!("its claims are not valid: {j}")),
        },
        _ => AuthError::Malformed(e.to_string()),
    }
}

/// The field of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.split_once("missing field `")?.1;
    Some(rest.split_once('`')?.0.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
    const LOOPBACK: &str = "127.0.0.1:8080";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn args() -> AuthArgs {
        AuthArgs {
            auth: None,
            auth_hs256_secret: None,
            auth_hs256_secret_file: None,
            auth_public_key_file: None,
            auth_leeway_secs: 30,
        }
    }

    fn hs() -> Verifier {
        let a = AuthArgs {
            auth_hs256_secret: Some(SECRET.into()),
            ..args()
        };
        Verifier::from_args(&a, LOOPBACK.parse().unwrap()).unwrap()
    }

    #[test]
    fn each_mode_decides_what_a_request_without_or_with_a_token_gets() {
        let with_mode = |mode| {
            let a = AuthArgs {
                auth: Some(mode),
                auth_hs256_secret: Some(SECRET.into()),
                ..args()
            };
            Verifier::from_args(&a, LOOPBACK.parse().unwrap()).unwrap()
        };
        let good = mint_hs256(SECRET.as_bytes(), &claims(now() + 600)).unwrap();
        let off = with_mode(AuthMode::Off);
        assert!(off.authenticate(None).unwrap().is_none());
        assert!(off.authenticate(Some("garbage")).unwrap().is_none());
        let optional = with_mode(AuthMode::Optional);
        assert!(optional.authenticate(None).unwrap().is_none());
        assert!(optional.authenticate(Some("garbage")).is_err());
        assert_eq!(
            optional.authenticate(Some(&good)).unwrap().unwrap().sub,
            "u1"
        );
        let required = with_mode(AuthMode::Required);
        assert!(matches!(
            required.authenticate(None),
            Err(AuthError::Missing)
        ));
        assert!(required.authenticate(Some("garbage")).is_err());
        assert!(required.authenticate(Some(&good)).unwrap().is_some());
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            exp,
            nbf: None,
            name: Some("Ann".into()),
            rooms: Some(vec!["Tests Room".into(), "team-*".into()]),
        }
    }

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name)
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &impl serde::Serialize) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    #[test]
    fn a_valid_hs256_token_round_trips() {
        let c = claims(now() + 600);
        let t = mint_hs256(SECRET.as_bytes(), &c).unwrap();
        assert_eq!(hs().verify(&t), Ok(c));
        assert_eq!(hs().mode(), AuthMode::Optional, "loopback with a key");
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let v = hs();
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(v.verify("  "), Err(AuthError::Missing));
        assert!(matches!(
            v.verify("not a jwt"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&"x".repeat(TOKEN_MAX + 1)),
            Err(AuthError::Malformed(_))
        ));
        let expired = mint_hs256(SECRET.as_bytes(), &claims(now() - 120)).unwrap();
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let early = Claims {
            nbf: Some(now() + 300),
            ..claims(now() + 600)
        };
        let early = mint_hs256(SECRET.as_bytes(), &early).unwrap();
        assert_eq!(v.verify(&early), Err(AuthError::NotYetValid));
        let forged = mint_hs256(
            b"another-secret-another-secret-another-secret",
            &claims(now() + 600),
        )
        .unwrap();
        assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
        // A tampered payload with the original signature.
        let good = mint_hs256(SECRET.as_bytes(), &claims(now() + 600)).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let other = mint_hs256(
            SECRET.as_bytes(),
            &Claims {
                sub: "admin".into(),
                ..claims(now() + 600)
            },
        )
        .unwrap();
        let other_payload = other.split('.').nth(1).unwrap();
        let tampered = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
        assert_eq!(v.verify(&tampered), Err(AuthError::BadSignature));
        // No exp at all.
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let no_exp = sign(
            Algorithm::HS256,
            &key,
            &serde_json_like::NoExp { sub: "u1" },
        );
        assert_eq!(
            v.verify(&no_exp),
            Err(AuthError::MissingClaim("exp".into()))
        );
        // alg none, and an algorithm with no configured key.
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(v.verify(&none).is_err());
        let hs512 = sign(Algorithm::HS512, &key, &claims(now() + 600));
        assert!(matches!(v.verify(&hs512), Err(AuthError::Algorithm(_))));
    }

    #[test]
    fn leeway_covers_small_clock_differences_only() {
        let v = hs();
        let just_expired = mint_hs256(SECRET.as_bytes(), &claims(now() - 10)).unwrap();
        assert!(v.verify(&just_expired).is_ok(), "10 s late is within 30 s");
        let soon = Claims {
            nbf: Some(now() + 10),
            ..claims(now() + 600)
        };
        let soon = mint_hs256(SECRET.as_bytes(), &soon).unwrap();
        assert!(v.verify(&soon).is_ok(), "10 s early is within 30 s");
        let strict = AuthArgs {
            auth_hs256_secret: Some(SECRET.into()),
            auth_leeway_secs: 0,
            ..args()
        };
        let strict = Verifier::from_args(&strict, LOOPBACK.parse().unwrap()).unwrap();
        assert_eq!(strict.verify(&just_expired), Err(AuthError::Expired));
        assert_eq!(strict.verify(&soon), Err(AuthError::NotYetValid));
    }

    #[test]
    fn rs256_and_eddsa_with_public_key_files() {
        let c = claims(now() + 600);
        for (private, public, alg) in [
            ("rsa_private.pem", "rsa_public.pem", Algorithm::RS256),
            (
                "ed25519_private.pem",
                "ed25519_public.pem",
                Algorithm::EdDSA,
            ),
        ] {
            let pem = std::fs::read(testdata(private)).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ed_pem(&pem).unwrap(),
            };
            let a = AuthArgs {
                auth: Some(AuthMode::Required),
                auth_public_key_file: Some(testdata(public)),
                ..args()
            };
            let v = Verifier::from_args(&a, LOOPBACK.parse().unwrap()).unwrap();
            assert_eq!(v.mode(), AuthMode::Required);
            assert_eq!(v.verify(&sign(alg, &key, &c)), Ok(c.clone()), "{alg:?}");
            // An HS256 token cannot pass where only a public key is trusted.
            let hs = mint_hs256(SECRET.as_bytes(), &c).unwrap();
            assert!(
                matches!(v.verify(&hs), Err(AuthError::Algorithm(_))),
                "{alg:?}"
            );
            let expired = sign(alg, &key, &claims(now() - 120));
            assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        }
        // Another RSA key's public half refuses the signature.
        let pem = std::fs::read(testdata("rsa_private.pem")).unwrap();
        let key = EncodingKey::from_rsa_pem(&pem).unwrap();
        let a = AuthArgs {
            auth_public_key_file: Some(testdata("rsa_other_public.pem")),
            ..args()
        };
        let v = Verifier::from_args(&a, LOOPBACK.parse().unwrap()).unwrap();
        assert_eq!(
            v.verify(&sign(Algorithm::RS256, &key, &c)),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn mode_resolution_and_config_errors() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = LOOPBACK.parse().unwrap();
        // No key: off on loopback, an error elsewhere or when a mode needs a key.
        assert_eq!(
            Verifier::from_args(&args(), local).unwrap().mode(),
            AuthMode::Off
        );
        assert!(matches!(
            Verifier::from_args(&args(), public),
            Err(AuthConfigError::NoKey(AuthMode::Required))
        ));
        for m in [AuthMode::Optional, AuthMode::Required] {
            let a = AuthArgs {
                auth: Some(m),
                ..args()
            };
            assert!(matches!(
                Verifier::from_args(&a, local),
                Err(AuthConfigError::NoKey(_))
            ));
        }
        let off = AuthArgs {
            auth: Some(AuthMode::Off),
            ..args()
        };
        assert_eq!(
            Verifier::from_args(&off, public).unwrap().mode(),
            AuthMode::Off
        );
        let keyed = AuthArgs {
            auth_hs256_secret: Some(SECRET.into()),
            ..args()
        };
        assert_eq!(
            Verifier::from_args(&keyed, public).unwrap().mode(),
            AuthMode::Required
        );
        let short = AuthArgs {
            auth_hs256_secret: Some("short".into()),
            ..args()
        };
        assert!(matches!(
            Verifier::from_args(&short, local),
            Err(AuthConfigError::ShortSecret)
        ));
        let both = AuthArgs {
            auth_hs256_secret: Some(SECRET.into()),
            auth_hs256_secret_file: Some(testdata("README.md")),
            ..args()
        };
        assert!(matches!(
            Verifier::from_args(&both, local),
            Err(AuthConfigError::TwoSecrets)
        ));
        let not_a_key = AuthArgs {
            auth_public_key_file: Some(testdata("README.md")),
            ..args()
        };
        assert!(matches!(
            Verifier::from_args(&not_a_key, local),
            Err(AuthConfigError::PublicKey(_))
        ));
        let missing = AuthArgs {
            auth_hs256_secret_file: Some(testdata("no-such-file")),
            ..args()
        };
        assert!(matches!(
            Verifier::from_args(&missing, local),
            Err(AuthConfigError::Read(..))
        ));
    }

    #[test]
    fn secret_file_ignores_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("natter-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let a = AuthArgs {
            auth_hs256_secret_file: Some(file),
            ..args()
        };
        let v = Verifier::from_args(&a, LOOPBACK.parse().unwrap()).unwrap();
        let t = mint_hs256(SECRET.as_bytes(), &claims(now() + 60)).unwrap();
        assert!(v.verify(&t).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn b64(s: &str) -> String {
        // Unpadded base64url of an ASCII string, enough for a hand-made header.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    mod serde_json_like {
        #[derive(serde::Serialize)]
        pub struct NoExp {
            pub sub: &'static str,
        }
    }
}
