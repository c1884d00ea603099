//! A real Keycloak (testenv/keycloak: 26.7.3, `start-dev` over TLS on 127.0.0.1 with its own
//! CA), one per test binary, and what the tests need to judge its tokens: the JWT claims and
//! an RS256 signature check against the realm's published keys.
//!
//! The server is started on first use by `testenv/keycloak/start.sh` with `PARENT_PID` set to
//! this process, so its watchdog stops it about a second after the test binary exits, however
//! it exits. A missing prerequisite (Java 21+, or Maven for the first fetch) fails the tests
//! with the scripts' instructions; it never skips them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::repo;

/// The status the Keycloak scripts exit with when a tool is missing (sysexits EX_UNAVAILABLE).
const MISSING_PREREQUISITE: i32 = 69;

/// A running Keycloak with realm `dscc` and its five clients.
#[derive(Debug)]
pub struct Keycloak {
    /// Its state directory (certificates, database, `keycloak.log`).
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>/realms/dscc`, the `iss` of its tokens.
    pub issuer: String,
    /// The realm's token endpoint.
    pub token_endpoint: String,
    /// The realm's JWKS.
    pub jwks_uri: String,
    /// The CA that signed its server certificate (for `--extra-ca-file`).
    pub ca_file: PathBuf,
    /// The realm's access-token lifetime as configured at start.
    pub token_lifetime: Duration,
    /// How long `start.sh` took.
    pub started_in: Duration,
    clients: BTreeMap<String, KeycloakClient>,
}

/// A confidential client of realm `dscc`.
#[derive(Clone, Debug)]
pub struct KeycloakClient {
    /// Its client_id, such as `dscc-plain`.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
}

static KEYCLOAK: OnceLock<Result<Keycloak, String>> = OnceLock::new();

impl Keycloak {
    /// The Keycloak of this test binary, started on first use with access tokens that live
    /// `token_lifetime_seconds`. Every test of a binary must ask for the same lifetime.
    /// Panics with instructions when it cannot be started.
    pub fn shared(token_lifetime_seconds: u64) -> &'static Keycloak {
        let keycloak = match KEYCLOAK.get_or_init(|| start(token_lifetime_seconds)) {
            Ok(keycloak) => keycloak,
            Err(message) => panic!("{message}"),
        };
        assert_eq!(
            keycloak.token_lifetime,
            Duration::from_secs(token_lifetime_seconds),
            "one Keycloak per test binary: its tests must all ask for the same token lifetime"
        );
        keycloak
    }

    /// The client of `role` (plain, refresh, msp, tenant1 or tenant2).
    pub fn client(&self, role: &str) -> &KeycloakClient {
        self.clients
            .get(role)
            .unwrap_or_else(|| panic!("Keycloak has no client for role {role:?}"))
    }

    /// Runs `configure.sh DIR <args>` and returns its last stdout line.
    pub fn configure(&self, args: &[&str]) -> String {
        let script = repo().join("testenv/keycloak/configure.sh");
        let output = Command::new(&script)
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "configure.sh {} {args:?} failed ({}):\n{}",
            self.dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    /// Logs out every session of `role`'s service-account user: each refresh token it holds
    /// is then refused with `invalid_grant` ("Session not active"). Returns the script's JSON.
    pub fn revoke_refresh_tokens(&self, role: &str) -> Value {
        let line = self.configure(&["revoke-refresh-tokens", role]);
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("revoke-refresh-tokens printed {line:?}: {e}"))
    }

    /// An HTTP client that trusts only Keycloak's CA.
    pub fn http(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.ca_file).expect("read Keycloak's CA");
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("a PEM CA")])
            .build()
            .expect("an HTTP client")
    }

    /// The realm's signing keys (JWKS), fetched over TLS.
    pub async fn jwks(&self) -> Value {
        let response = self
            .http()
            .get(&self.jwks_uri)
            .send()
            .await
            .expect("GET the JWKS");
        assert!(
            response.status().is_success(),
            "JWKS: {}",
            response.status()
        );
        response.json().await.expect("JWKS JSON")
    }
}

fn start(token_lifetime_seconds: u64) -> Result<Keycloak, String> {
    let dir = crate::tmp_dir().join("keycloak").join(format!(
        "{}-{}",
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "e2e".into()),
        std::process::id()
    ));
    let script = repo().join("testenv/keycloak/start.sh");
    let started = Instant::now();
    let output = Command::new(&script)
        .arg(&dir)
        .env("PARENT_PID", std::process::id().to_string())
        .env(
            "KEYCLOAK_TOKEN_LIFETIME_SECONDS",
            token_lifetime_seconds.to_string(),
        )
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let started_in = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(MISSING_PREREQUISITE) {
        return Err(format!(
            "Keycloak cannot be started: a prerequisite is missing.\n{stderr}\n\
             The Keycloak end-to-end tests run a real Keycloak 26.7.3 (testenv/keycloak/README.md). \
             They need Java 21 or newer (for example `apt-get install temurin-21-jdk` from \
             packages.adoptium.net, or openjdk-21-jdk-headless; or set KEYCLOAK_JAVA_HOME to a \
             JDK 21+), and for the first run Maven 3 (`apt-get install maven`), which fetches \
             org.keycloak:keycloak-quarkus-dist:26.7.3 into ~/.cache/dscc-token-operator/keycloak \
             (or set KEYCLOAK_DIST_ZIP to a downloaded zip)."
        ));
    }
    if !output.status.success() {
        return Err(format!(
            "{} {} failed ({}) after {:.1}s:\n{stderr}\n(Keycloak log: {})",
            script.display(),
            dir.display(),
            output.status,
            started_in.as_secs_f64(),
            dir.join("keycloak.log").display()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let endpoint: Value = serde_json::from_str(line)
        .map_err(|e| format!("start.sh printed {line:?}, not the endpoint JSON: {e}"))?;
    let text = |key: &str| -> Result<String, String> {
        endpoint[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the endpoint JSON has no {key}: {line}"))
    };
    let mut clients = BTreeMap::new();
    for (role, client) in endpoint["clients"]
        .as_object()
        .ok_or_else(|| format!("the endpoint JSON has no clients: {line}"))?
    {
        clients.insert(
            role.clone(),
            KeycloakClient {
                client_id: client["client_id"].as_str().unwrap_or_default().to_owned(),
                client_secret: client["client_secret"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            },
        );
    }
    let keycloak = Keycloak {
        dir,
        issuer: text("issuer")?,
        token_endpoint: text("token_endpoint")?,
        jwks_uri: text("jwks_uri")?,
        ca_file: PathBuf::from(text("ca_file")?),
        token_lifetime: Duration::from_secs(
            endpoint["token_lifetime_seconds"].as_u64().ok_or_else(|| {
                format!("the endpoint JSON has no token_lifetime_seconds: {line}")
            })?,
        ),
        started_in,
        clients,
    };
    if !keycloak.token_endpoint.starts_with("https://127.0.0.1:") {
        return Err(format!(
            "Keycloak's token endpoint is not https on 127.0.0.1: {}",
            keycloak.token_endpoint
        ));
    }
    eprintln!(
        "Keycloak at {} started in {:.1}s (log {})",
        keycloak.issuer,
        started_in.as_secs_f64(),
        keycloak.dir.join("keycloak.log").display()
    );
    Ok(keycloak)
}

/// A decoded JWT (not yet verified: see [`Jwt::verify_rs256`]).
#[derive(Clone, Debug)]
pub struct Jwt {
    /// The JOSE header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

impl Jwt {
    /// Decodes a compact JWS; `None` unless it is three base64url parts with JSON header and
    /// claims.
    pub fn decode(token: &str) -> Option<Jwt> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let json = |part: &str| -> Option<Value> {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
        };
        Some(Jwt {
            header: json(header)?,
            claims: json(claims)?,
            signing_input: format!("{header}.{claims}"),
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
        })
    }

    /// A string claim.
    pub fn str(&self, claim: &str) -> Option<&str> {
        self.claims.get(claim)?.as_str()
    }

    /// A numeric claim (`iat`, `exp`).
    pub fn seconds(&self, claim: &str) -> Option<i64> {
        self.claims.get(claim)?.as_i64()
    }

    /// Whether the header says RS256 and the signature verifies with the RSA key of the
    /// header's `kid` in `jwks`.
    pub fn verify_rs256(&self, jwks: &Value) -> bool {
        if self.header["alg"] != "RS256" {
            return false;
        }
        let Some(kid) = self.header["kid"].as_str() else {
            return false;
        };
        let Some(key) = jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["kid"] == kid && k["kty"] == "RSA")
        else {
            return false;
        };
        let component = |name: &str| {
            key[name]
                .as_str()
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        };
        let (Some(n), Some(e)) = (component("n"), component("e")) else {
            return false;
        };
        let public_key = der_sequence(&[der_integer(&n), der_integer(&e)].concat());
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == rustls::SignatureScheme::RSA_PKCS1_SHA256)
            .is_some_and(|(_, algorithms)| {
                algorithms.iter().any(|algorithm| {
                    algorithm
                        .verify_signature(
                            &public_key,
                            self.signing_input.as_bytes(),
                            &self.signature,
                        )
                        .is_ok()
                })
            })
    }
}

/// DER length octets.
fn der_length(len: usize) -> Vec<u8> {
    match len {
        0..=0x7f => vec![len as u8],
        0x80..=0xff => vec![0x81, len as u8],
        _ => vec![0x82, (len >> 8) as u8, len as u8],
    }
}

/// A DER INTEGER from big-endian unsigned bytes.
fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    let mut content = bytes[start..].to_vec();
    if content[0] & 0x80 != 0 {
        content.insert(0, 0);
    }
    let mut out = vec![0x02];
    out.extend(der_length(content.len()));
    out.extend(content);
    out
}

/// A DER SEQUENCE of already encoded elements: with two INTEGERs n and e, the PKCS#1
/// RSAPublicKey the verifier expects.
fn der_sequence(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x30];
    out.extend(der_length(content.len()));
    out.extend_from_slice(content);
    out
}
