//! End-to-end tests against a real OAuth 2.0 server: panva's oidc-provider (npm) from
//! testenv/oauth-server, over TLS with its own CA, and the operator run as it would be in
//! production: no insecure-URL flag, the CA given with --extra-ca-file.
//!
//! Node.js and npm are required; without them these tests fail and say how to get them.

use dscc_testkit as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dscc_token_operator::api::DsccCredential;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use support::cluster::repo;
use support::harness::{TestEnv, parse_time, suffix, wait_until};

/// Generous for a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running oidc-provider; dropping it runs stop.sh.
struct OAuthServer {
    dir: PathBuf,
    issuer: String,
    token_endpoint: String,
}

/// One client registered with the server.
struct Client {
    id: String,
    secret: String,
}

/// Fails, saying how to get it, unless `tool version_flag` runs.
fn require(tool: &str, version_flag: &str) {
    let found = Command::new(tool)
        .arg(version_flag)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "`{tool}` is not on PATH. The real OAuth 2.0 server tests run panva's oidc-provider \
         (testenv/oauth-server/README.md) and need Node.js (v20.20 or later, v22 LTS \
         recommended) with npm, and openssl. Install them, for example with \
         `apt-get install nodejs npm openssl` (Debian/Ubuntu) or from https://nodejs.org/en/download; \
         the first run then fetches the pinned packages with `npm ci` into ~/.cache."
    );
}

impl OAuthServer {
    /// Starts a server issuing tokens valid `ttl_seconds` to `clients`
    /// (`(client, token_endpoint_auth_method)`).
    fn start(name: &str, ttl_seconds: u64, clients: &[(&Client, &str)]) -> Self {
        for (tool, version_flag) in [
            ("node", "--version"),
            ("npm", "--version"),
            ("openssl", "version"),
        ] {
            require(tool, version_flag);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("oauth-server")
            .join(format!("{name}-{}", suffix()));
        let clients: Vec<Value> = clients
            .iter()
            .map(|(client, method)| {
                json!({
                    "client_id": client.id,
                    "client_secret": client.secret,
                    "token_endpoint_auth_method": method,
                })
            })
            .collect();
        let script = repo().join("testenv/oauth-server/start.sh");
        let output = Command::new(&script)
            .arg(&dir)
            .env("PARENT_PID", std::process::id().to_string())
            .env("TOKEN_TTL_SECONDS", ttl_seconds.to_string())
            .env("CLIENTS_JSON", Value::from(clients).to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        // From here on the guard stops the server, whatever happens next.
        let mut server = Self {
            dir,
            issuer: String::new(),
            token_endpoint: String::new(),
        };
        assert!(
            output.status.success(),
            "{} failed ({}):\n{}\n(server log: {})",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            server.dir.join("server.log").display()
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let endpoint: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("start.sh printed {line:?}, not the endpoint JSON: {e}"));
        server.issuer = endpoint["issuer"].as_str().expect("issuer").to_owned();
        server.token_endpoint = endpoint["token_endpoint"]
            .as_str()
            .expect("token_endpoint")
            .to_owned();
        assert!(server.token_endpoint.starts_with("https://127.0.0.1:"));
        server
    }

    /// The CA that signed the server's certificate.
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Asks the server (RFC 7662 introspection) whether `token` is an active token of `client`.
    async fn is_active_token_of(&self, client: &Client, basic: bool, token: &str) -> bool {
        let ca = std::fs::read(self.ca()).expect("read the CA");
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("a PEM CA")])
            .build()
            .expect("an HTTP client");
        let url = format!("{}/token/introspection", self.issuer);
        let request = if basic {
            http.post(url)
                .basic_auth(&client.id, Some(&client.secret))
                .form(&[("token", token)])
        } else {
            http.post(url).form(&[
                ("token", token),
                ("client_id", &client.id),
                ("client_secret", &client.secret),
            ])
        };
        let response = request.send().await.expect("introspection request");
        assert!(
            response.status().is_success(),
            "introspection: {}",
            response.status()
        );
        let body: Value = response.json().await.expect("introspection JSON");
        body["active"] == json!(true) && body["client_id"] == json!(client.id)
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let status = Command::new(repo().join("testenv/oauth-server/stop.sh"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
        if !matches!(&status, Ok(s) if s.success()) {
            eprintln!("stop.sh {} failed: {status:?}", self.dir.display());
        }
    }
}

fn client(name: &str) -> Client {
    Client {
        id: format!("{name}-{}", suffix()),
        secret: format!("{name}-secret-{}-{}", suffix(), suffix()),
    }
}

/// Creates credential `name` for `client` against `server`.
async fn create(env: &TestEnv, name: &str, server: &OAuthServer, client: &Client, auth: &str) {
    let secret = format!("{name}-client");
    env.put_secret(
        &secret,
        &[("client_id", &client.id), ("client_secret", &client.secret)],
    )
    .await;
    env.create_credential(
        name,
        json!({
            "clientSecretRef": {"name": secret},
            "tokenUrl": server.token_endpoint,
            "authMethod": auth,
        }),
    )
    .await
    .expect("create the credential");
}

fn lifetime(credential: &DsccCredential) -> i64 {
    let status = credential.status.as_ref().expect("a status");
    let issued = status.issued_at.as_ref().expect("issuedAt").0;
    let expires = status.expires_at.as_ref().expect("expiresAt").0;
    expires.as_second() - issued.as_second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_tokens_from_a_real_oauth_server_with_post_and_basic_authentication() {
    let post = client("post");
    let basic = client("basic");
    let server = OAuthServer::start(
        "post-basic",
        3600,
        &[
            (&post, "client_secret_post"),
            (&basic, "client_secret_basic"),
        ],
    );
    let env = TestEnv::new("oauth-server-auth").await;
    let _operator = env.start_operator_https_only(Some(&server.ca()));
    create(&env, "post", &server, &post, "ClientSecretPost").await;
    create(&env, "basic", &server, &basic, "ClientSecretBasic").await;

    for (name, client, is_basic) in [("post", &post, false), ("basic", &basic, true)] {
        let credential = env
            .wait_for_condition(name, "Ready", "True", None, READY_TIMEOUT)
            .await;
        let target = format!("{name}-token");
        let token = env
            .secret_value(&target, "access_token")
            .await
            .expect("an access token");
        assert!(!token.is_empty());
        assert_eq!(
            env.secret_value(&target, "token_type").await.as_deref(),
            Some("Bearer"),
            "the token type as the server sends it"
        );
        assert_eq!(
            env.secret_value(&target, "authorization").await,
            Some(format!("Bearer {token}"))
        );
        let seconds = lifetime(&credential);
        assert!(
            (3599..=3600).contains(&seconds),
            "the lifetime comes from expires_in (3600): {seconds}"
        );
        assert!(
            server.is_active_token_of(client, is_basic, &token).await,
            "the server does not know the token of {name} as an active token of {}",
            client.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_tokens_from_a_real_oauth_server_before_they_expire() {
    let post = client("renewed");
    let server = OAuthServer::start("renewal", 6, &[(&post, "client_secret_post")]);
    let env = TestEnv::new("oauth-server-renewal").await;
    let _operator = env.start_operator_https_only(Some(&server.ca()));
    create(&env, "reports", &server, &post, "ClientSecretPost").await;

    let credential = env
        .wait_for_condition("reports", "Ready", "True", None, READY_TIMEOUT)
        .await;
    assert!(
        (5..=6).contains(&lifetime(&credential)),
        "{:?}",
        credential.status
    );
    let old_token = env
        .secret_value("reports-token", "access_token")
        .await
        .expect("a token");
    let old_expiry = parse_time(
        &env.secret_value("reports-token", "expires_at")
            .await
            .expect("expires_at"),
    );

    let (new_token, seen_at) = wait_until("a renewed token", Duration::from_secs(20), || async {
        let token = env.secret_value("reports-token", "access_token").await?;
        (token != old_token).then(|| (token, Timestamp::now()))
    })
    .await;
    assert!(
        seen_at < old_expiry,
        "the new token appeared at {seen_at}, after the old one expired at {old_expiry}"
    );
    let new_expiry = parse_time(
        &env.secret_value("reports-token", "expires_at")
            .await
            .expect("expires_at"),
    );
    assert!(new_expiry > old_expiry);
    assert!(server.is_active_token_of(&post, false, &new_token).await);
    env.wait_for_condition("reports", "Ready", "True", None, READY_TIMEOUT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_an_untrusted_certificate_as_token_endpoint_unavailable() {
    let post = client("untrusted");
    let server = OAuthServer::start("untrusted", 3600, &[(&post, "client_secret_post")]);
    let env = TestEnv::new("oauth-server-untrusted").await;
    let mut operator = env.start_operator_https_only(None);
    create(&env, "reports", &server, &post, "ClientSecretPost").await;

    let failing = env
        .wait_for_condition(
            "reports",
            "Ready",
            "False",
            Some("TokenEndpointUnavailable"),
            READY_TIMEOUT,
        )
        .await;
    let message = failing
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("TLS") && message.contains("certificate"),
        "the message must point at the certificate: {message}"
    );
    assert!(env.secret("reports-token").await.is_none());

    // With the CA, the same credential gets its token.
    operator.stop();
    drop(operator);
    let _operator = env.start_operator_https_only(Some(&server.ca()));
    env.wait_for_condition("reports", "Ready", "True", None, READY_TIMEOUT)
        .await;
    let token = env
        .secret_value("reports-token", "access_token")
        .await
        .expect("a token");
    assert!(server.is_active_token_of(&post, false, &token).await);
}
