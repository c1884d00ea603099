//! The token client against the fake token endpoint on 127.0.0.1.

use dscc_testkit as support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use dscc_token_operator::reason::Reason;
use dscc_token_operator::token::{
    AuthMethod, ClientCredentials, ExposeSecret, Grant, GrantKind, IssuedToken, LifetimeSource,
    SecretString, TokenClient, TokenClientConfig, TokenError, decode_jwt_claims,
};
use k8s_openapi::jiff::Timestamp;
use support::token_endpoint::{ClientAuth, Fault, RetryAfter, TokenEndpoint};
use url::Url;

const CLIENT_ID: &str = "reporting-client";
/// Distinctive, so a leak is easy to find.
const CLIENT_SECRET: &str = "s3cr3t-Th1s-Must-N3ver-Leak-7f9c2a";
/// Every test stays well inside this.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

fn config() -> TokenClientConfig {
    TokenClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        allow_insecure_http: true,
        ..TokenClientConfig::default()
    }
}

fn client() -> TokenClient {
    TokenClient::new(config()).expect("token client")
}

fn credentials(secret: &str) -> ClientCredentials {
    ClientCredentials {
        client_id: CLIENT_ID.to_owned(),
        client_secret: SecretString::from(secret.to_owned()),
    }
}

fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    Timestamp::new(
        i64::try_from(since_epoch.as_secs()).expect("seconds fit"),
        i32::try_from(since_epoch.subsec_nanos()).expect("nanoseconds fit"),
    )
    .expect("timestamp")
}

async fn endpoint() -> TokenEndpoint {
    let endpoint = TokenEndpoint::start().await;
    endpoint.set_client(CLIENT_ID, CLIENT_SECRET);
    endpoint
}

fn url_of(endpoint: &TokenEndpoint) -> Url {
    Url::parse(&endpoint.url()).expect("endpoint URL")
}

/// One exchange with the usual credentials, bounded by the test deadline.
async fn exchange_with(
    client: &TokenClient,
    url: &Url,
    credentials: &ClientCredentials,
    auth_method: AuthMethod,
    scopes: &[String],
) -> Result<IssuedToken, TokenError> {
    let grant = Grant {
        token_url: url.clone(),
        credentials: Some(credentials.clone()),
        auth_method,
        scopes: scopes.to_vec(),
        kind: GrantKind::ClientCredentials,
    };
    send(client, &grant).await
}

/// One grant, bounded by the test deadline.
async fn send(client: &TokenClient, grant: &Grant) -> Result<IssuedToken, TokenError> {
    tokio::time::timeout(TEST_DEADLINE, client.exchange(grant, now()))
        .await
        .expect("the exchange finishes in bounded time")
}

async fn exchange(endpoint: &TokenEndpoint) -> Result<IssuedToken, TokenError> {
    exchange_with(
        &client(),
        &url_of(endpoint),
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
}

async fn failure_after(fault: Fault) -> TokenError {
    let endpoint = endpoint().await;
    endpoint.push_fault(fault.clone());
    exchange(&endpoint)
        .await
        .expect_err(&format!("{fault:?} makes the exchange fail"))
}

fn assert_close(actual: Option<Duration>, expected: Duration) {
    let actual = actual.expect("a retry delay");
    let difference = actual.abs_diff(expected);
    assert!(
        difference <= Duration::from_secs(1),
        "retry after {actual:?}, expected about {expected:?}"
    );
}

#[tokio::test]
async fn issues_a_token_with_client_secret_post() {
    let endpoint = endpoint().await;
    let before = now();

    let issued = exchange(&endpoint).await.expect("a token");

    assert_eq!(
        endpoint.issued_tokens(),
        [issued.access_token.expose_secret()]
    );
    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(issued.lifetime_source, LifetimeSource::ExpiresIn);
    assert_eq!(issued.lifetime(), Duration::from_secs(7199));
    // Issuance times are whole seconds, as Kubernetes times are, taken from `now`.
    assert_eq!(issued.issued_at.subsec_nanosecond(), 0);
    assert!(issued.issued_at.as_second() >= before.as_second());
    assert!(issued.issued_at <= now());
    let claims = issued.claims.expect("JWT claims");
    assert_eq!(claims["client_id"], CLIENT_ID);
    assert!(claims.contains_key("exp") && claims.contains_key("jti"));
    let request = &endpoint.requests()[0];
    assert_eq!(request.auth, ClientAuth::Post);
    assert_eq!(request.client_id.as_deref(), Some(CLIENT_ID));
    assert_eq!(request.grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(request.scope, None);
    assert_eq!(request.status, Some(200));
}

#[tokio::test]
async fn sends_form_content_type_json_accept_and_a_user_agent() {
    let endpoint = endpoint().await;

    exchange(&endpoint).await.expect("a token");

    let request = &endpoint.requests()[0];
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.accept.as_deref(), Some("application/json"));
    let user_agent = request.user_agent.as_deref().unwrap_or_default();
    assert!(
        user_agent.starts_with("dscc-token-operator/"),
        "{user_agent}"
    );
}

#[tokio::test]
async fn issues_a_token_with_client_secret_basic_and_special_characters() {
    let endpoint = TokenEndpoint::start().await;
    let id = "client id:with+symbols";
    let secret = "p@ss:wörd+/&=% ";
    endpoint.set_client(id, secret);
    let credentials = ClientCredentials {
        client_id: id.to_owned(),
        client_secret: SecretString::from(secret.to_owned()),
    };

    let issued = exchange_with(
        &client(),
        &url_of(&endpoint),
        &credentials,
        AuthMethod::ClientSecretBasic,
        &[],
    )
    .await
    .expect("a token");

    assert_eq!(issued.claims.expect("claims")["client_id"], id);
    let request = &endpoint.requests()[0];
    assert_eq!(request.auth, ClientAuth::Basic);
    assert_eq!(request.client_id.as_deref(), Some(id));
}

#[tokio::test]
async fn works_with_the_workspace_scoped_endpoint() {
    let endpoint = endpoint().await;
    let url = Url::parse(&endpoint.workspace_url("3f2a9c")).expect("url");

    let issued = exchange_with(
        &client(),
        &url,
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await;

    assert!(issued.is_ok(), "{issued:?}");
}

#[tokio::test]
async fn sends_scopes_separated_by_single_spaces() {
    let endpoint = endpoint().await;
    let scopes = ["dscc.read".to_owned(), "dscc.write".to_owned()];

    exchange_with(
        &client(),
        &url_of(&endpoint),
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &scopes,
    )
    .await
    .expect("a token");

    assert_eq!(
        endpoint.requests()[0].scope.as_deref(),
        Some("dscc.read dscc.write")
    );
}

#[tokio::test]
async fn each_exchange_gets_a_new_token() {
    let endpoint = endpoint().await;
    let client = client();
    let url = url_of(&endpoint);
    let credentials = credentials(CLIENT_SECRET);

    let mut tokens = Vec::new();
    for _ in 0..3 {
        let issued = exchange_with(
            &client,
            &url,
            &credentials,
            AuthMethod::ClientSecretPost,
            &[],
        )
        .await
        .expect("a token");
        tokens.push(issued.access_token.expose_secret().to_owned());
    }

    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 3);
    assert_eq!(endpoint.request_count(), 3);
}

#[tokio::test]
async fn a_wrong_secret_is_a_permanent_credentials_error() {
    let endpoint = endpoint().await;

    let err = exchange_with(
        &client(),
        &url_of(&endpoint),
        &credentials("not-the-secret"),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("rejected");

    assert_eq!(err.reason(), Reason::InvalidClientCredentials);
    assert!(err.reason().is_permanent());
    assert_eq!(err.status(), Some(401));
    let message = err.to_string();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(
        message.contains("check client_id and client_secret"),
        "{message}"
    );
}

/// Each kind of failed answer: the fault, the reason it is classified as, and words of the
/// message that say what to fix.
#[tokio::test]
async fn each_kind_of_failed_answer_is_classified_and_says_what_to_fix() {
    use Reason::{InvalidClientCredentials as Rejected, TokenEndpointUnavailable as Down};
    let cases: Vec<(Fault, Reason, &[&str])> = vec![
        (
            Fault::InvalidClient,
            Rejected,
            &["invalid_client", "check client_id and client_secret"],
        ),
        (
            Fault::UnauthorizedClient,
            Rejected,
            &["unauthorized_client", "allowed to use this grant"],
        ),
        (
            Fault::InvalidScope,
            Rejected,
            &["invalid_scope", "spec.scopes"],
        ),
        (Fault::InvalidGrant, Rejected, &["invalid_grant"]),
        (Fault::Status(400), Rejected, &["HTTP 400"]),
        (Fault::Status(401), Rejected, &["HTTP 401"]),
        (
            Fault::Status(403),
            Rejected,
            &["HTTP 403", "may use this endpoint"],
        ),
        (Fault::Status(500), Down, &["answered 500", "will retry"]),
        (Fault::Status(502), Down, &["answered 502"]),
        (Fault::Status(503), Down, &["answered 503"]),
        (Fault::MalformedJson, Down, &["not valid JSON"]),
        (
            Fault::ResetConnection,
            Down,
            &["request to the token endpoint", "failed"],
        ),
        (
            Fault::Body(200, r#"{"access_token":"abc","token_type":"DPoP"}"#.into()),
            Reason::UnsupportedTokenType,
            &["DPoP", "only Bearer tokens"],
        ),
        (
            Fault::Body(200, r#"{"access_token":"abc","expires_in":"soon"}"#.into()),
            Down,
            &["expires_in is not a positive number"],
        ),
    ];
    for (fault, reason, words) in cases {
        let err = failure_after(fault.clone()).await;
        assert_eq!(err.reason(), reason, "{fault:?}: {err}");
        for word in words {
            assert!(
                err.to_string().contains(word),
                "{fault:?}: {word:?} not in {err}"
            );
        }
        if matches!(fault, Fault::Status(_)) {
            assert!(err.status().is_some(), "{fault:?}");
        }
    }
}

#[tokio::test]
async fn an_error_code_that_is_the_client_secret_never_reaches_the_message() {
    // A careless or hostile server answers with the secret as its error code, raw or in
    // the encodings a client might have sent it in.
    let echoes = [
        CLIENT_SECRET.to_owned(),
        CLIENT_SECRET.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")),
    ];
    for echo in echoes {
        let body = serde_json::json!({"error": echo, "error_description": format!("bad {echo}")});
        let err = failure_after(Fault::Body(401, body.to_string())).await;
        let text = format!("{err} {err:?}");
        assert!(
            !text.to_lowercase().contains(&CLIENT_SECRET.to_lowercase()),
            "{text}"
        );
        assert!(!text.contains(&echo), "{text}");
        assert!(text.contains("unrecognised_error_code"), "{text}");
    }
}

#[tokio::test]
async fn a_wrong_path_is_transient_and_points_at_the_token_url() {
    let endpoint = endpoint().await;
    let url = Url::parse(&format!("http://{}/wrong/path", endpoint.addr())).expect("url");

    let err = exchange_with(
        &client(),
        &url,
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("404");

    assert_eq!(err.reason(), Reason::TokenEndpointUnavailable);
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("spec.tokenUrl"), "{err}");
}

#[tokio::test]
async fn rate_limited_with_retry_after_seconds() {
    let err = failure_after(Fault::RateLimited {
        retry_after: RetryAfter::Seconds(30),
    })
    .await;
    assert_eq!(err.reason(), Reason::RateLimited);
    assert!(!err.reason().is_permanent());
    assert_close(err.retry_after(), Duration::from_secs(30));
}

#[tokio::test]
async fn rate_limited_with_retry_after_http_date() {
    let err = failure_after(Fault::RateLimited {
        retry_after: RetryAfter::HttpDate(Duration::from_secs(120)),
    })
    .await;
    assert_eq!(err.reason(), Reason::RateLimited);
    assert_close(err.retry_after(), Duration::from_secs(120));
}

#[tokio::test]
async fn rate_limited_with_ratelimit_reset() {
    let err = failure_after(Fault::RateLimited {
        retry_after: RetryAfter::RateLimitReset(45),
    })
    .await;
    assert_eq!(err.reason(), Reason::RateLimited);
    assert_close(err.retry_after(), Duration::from_secs(45));
}

#[tokio::test]
async fn an_oversized_body_fails_without_reading_it_all() {
    const TEN_MIB: usize = 10 * 1024 * 1024;
    let endpoint = endpoint().await;
    endpoint.push_fault(Fault::Oversized(TEN_MIB));

    let err = exchange(&endpoint).await.expect_err("too large");

    assert_eq!(
        err,
        TokenError::ResponseTooLarge {
            host: endpoint.addr().to_string(),
            limit: 64 * 1024
        }
    );
    assert_eq!(err.reason(), Reason::TokenEndpointUnavailable);
    assert!(!err.reason().is_permanent());
    // A client that read everything would only return after the server produced it all.
    assert!(
        endpoint.oversized_bytes_streamed() < TEN_MIB as u64,
        "the server produced {} bytes",
        endpoint.oversized_bytes_streamed()
    );
}

#[tokio::test]
async fn an_oversized_content_length_fails_before_reading_the_body() {
    let err = failure_after(Fault::OversizedDeclared(10 * 1024 * 1024)).await;
    assert!(
        matches!(err, TokenError::ResponseTooLarge { limit: 65536, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_slow_endpoint_times_out_as_a_transient_error() {
    let endpoint = endpoint().await;
    endpoint.push_fault(Fault::Delay(Duration::from_secs(10)));
    let client = TokenClient::new(TokenClientConfig {
        request_timeout: Duration::from_millis(300),
        ..config()
    })
    .expect("client");

    let err = exchange_with(
        &client,
        &url_of(&endpoint),
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("timed out");

    assert!(
        matches!(
            err,
            TokenError::Timeout {
                connecting: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.reason(), Reason::TokenEndpointUnavailable);
    assert!(!err.reason().is_permanent());
    assert!(
        err.to_string().starts_with("timed out after 300ms"),
        "{err}"
    );
}

#[tokio::test]
async fn an_endpoint_that_never_answers_times_out() {
    let endpoint = endpoint().await;
    endpoint.set_sticky_fault(Some(Fault::Hang));
    let client = TokenClient::new(TokenClientConfig {
        request_timeout: Duration::from_millis(300),
        ..config()
    })
    .expect("client");

    let err = exchange_with(
        &client,
        &url_of(&endpoint),
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("timed out");

    assert!(matches!(err, TokenError::Timeout { .. }), "{err:?}");
    endpoint.shutdown().await;
}

#[tokio::test]
async fn without_expires_in_the_lifetime_comes_from_the_jwt_exp() {
    let endpoint = endpoint().await;
    endpoint.set_lifetime(Duration::from_secs(600));
    endpoint.push_fault(Fault::NoExpiresIn { jwt: true });

    let issued = exchange(&endpoint).await.expect("a token");

    assert_eq!(issued.lifetime_source, LifetimeSource::JwtExpiry);
    let claims = decode_jwt_claims(issued.access_token.expose_secret()).expect("claims");
    let exp = claims["exp"].as_i64().expect("numeric exp");
    assert_eq!(issued.expires_at.as_second(), exp);
    assert!(
        issued.lifetime().abs_diff(Duration::from_secs(600)) <= Duration::from_secs(2),
        "{:?}",
        issued.lifetime()
    );
}

#[tokio::test]
async fn without_expires_in_an_opaque_token_gets_the_default_lifetime() {
    let endpoint = endpoint().await;
    endpoint.push_fault(Fault::NoExpiresIn { jwt: false });

    let issued = exchange(&endpoint).await.expect("a token");

    assert_eq!(issued.lifetime_source, LifetimeSource::Default);
    assert_eq!(issued.lifetime(), Duration::from_secs(3600));
    assert_eq!(issued.claims, None);
}

#[tokio::test]
async fn short_lived_tokens_keep_their_lifetime() {
    let endpoint = endpoint().await;
    endpoint.set_lifetime(Duration::from_secs(2));

    let issued = exchange(&endpoint).await.expect("a token");

    assert_eq!(issued.lifetime(), Duration::from_secs(2));
}

#[tokio::test]
async fn a_lowercase_bearer_token_type_is_accepted_as_sent() {
    let endpoint = endpoint().await;
    endpoint.push_fault(Fault::LowercaseBearer);

    let issued = exchange(&endpoint).await.expect("a token");

    assert_eq!(issued.token_type, "bearer");
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let endpoint = endpoint().await;
    let strict = TokenClient::new(TokenClientConfig {
        allow_insecure_http: false,
        ..config()
    })
    .expect("client");

    let err = exchange_with(
        &strict,
        &url_of(&endpoint),
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("refused");

    assert!(matches!(err, TokenError::InsecureUrl { .. }), "{err:?}");
    assert_eq!(err.reason(), Reason::InvalidSpec);
    assert!(err.reason().is_permanent());
    assert_eq!(endpoint.request_count(), 0, "nothing was sent");
    assert!(exchange(&endpoint).await.is_ok(), "allowed when configured");
}

#[tokio::test]
async fn other_schemes_are_refused() {
    let url = Url::parse("ftp://127.0.0.1/as/token.oauth2").expect("url");
    let err = exchange_with(
        &client(),
        &url,
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, TokenError::UnsupportedUrl { .. }), "{err:?}");
    assert_eq!(err.reason(), Reason::InvalidSpec);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let url = Url::parse(&format!("http://{closed}/as/token.oauth2")).expect("url");

    let err = exchange_with(
        &client(),
        &url,
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("refused");

    assert!(matches!(err, TokenError::Connect { .. }), "{err:?}");
    assert_eq!(err.reason(), Reason::TokenEndpointUnavailable);
    assert!(!err.reason().is_permanent());
}

/// A test CA (valid 2020-2120) and a server certificate it signed for 127.0.0.1 and localhost.
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIBATAKBggqhkjOPQQDAjAmMSQwIgYDVQQDDBtkc2NjLXRv
a2VuLW9wZXJhdG9yIHRlc3QgQ0EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEw
MDAwMDBaMCYxJDAiBgNVBAMMG2RzY2MtdG9rZW4tb3BlcmF0b3IgdGVzdCBDQTBZ
MBMGByqGSM49AgEGCCqGSM49AwEHA0IABHWi3DIW+UIKtBkuqLjcNgaNkLHIj43v
Y+0s0VaOUFBgDi0T9UrFj5XQuNetSC+PHDU5oBiGXvWGBYts8c4cZgejQjBAMA8G
A1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBR6Vng0hyA+
1ZpLU1ewvG7T5984JTAKBggqhkjOPQQDAgNIADBFAiB5Ajh8TvQiruXAx+Fh61Zk
pCSo9eIv+2esgg2dVta9bwIhAMuOjMM15dWHUeNQ0wN2gF2UQYpnkDVxm2m33hY1
YFm4
-----END CERTIFICATE-----
";
const SERVER_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBvzCCAWSgAwIBAgIBAjAKBggqhkjOPQQDAjAmMSQwIgYDVQQDDBtkc2NjLXRv
a2VuLW9wZXJhdG9yIHRlc3QgQ0EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEw
MDAwMDBaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49
AwEHA0IABG2/E7a1gOuRH+XvXSIdcunwll4iW4n6imdvpL+EO1Mio8ZG0WrD/mBH
PntYdRSBuFgNUt7dnWvnPC9zUBW4xIyjgZIwgY8wGgYDVR0RBBMwEYcEfwAAAYIJ
bG9jYWxob3N0MAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQM
MAoGCCsGAQUFBwMBMB0GA1UdDgQWBBTAU+cvMWlSUs8N1+SpgS2YOKRxNzAfBgNV
HSMEGDAWgBR6Vng0hyA+1ZpLU1ewvG7T5984JTAKBggqhkjOPQQDAgNJADBGAiEA
wi/bn167io94td4QYsbhLlNv9xz2ZqAJKVGPw6CWgq8CIQDjZbdMnuW5oKYeHfmO
xMpmc9KZPCk1HjAjavxoDjldZg==
-----END CERTIFICATE-----
";
const SERVER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCux81JDumseirHU4
YmZZ2Xsr0zsNn+0swQR3gOUYWl+hRANCAARtvxO2tYDrkR/l710iHXLp8JZeIluJ
+opnb6S/hDtTIqPGRtFqw/5gRz57WHUUgbhYDVLe3Z1r5zwvc1AVuMSM
-----END PRIVATE KEY-----
";

/// Puts TLS in front of the fake endpoint: accepts TLS on a new loopback port and relays the
/// plain bytes to `backend`. Returns the https token URL.
async fn tls_front(backend: std::net::SocketAddr) -> Url {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certificates = vec![
        CertificateDer::from_pem_slice(SERVER_CERT_PEM.as_bytes()).expect("server certificate"),
    ];
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes()).expect("server key");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Handshake failures are what some tests are about; they just end the relay.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    Url::parse(&format!("https://{addr}/as/token.oauth2")).expect("url")
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error_that_names_the_ca_flag() {
    let endpoint = endpoint().await;
    let url = tls_front(endpoint.addr()).await;
    let strict = TokenClient::new(TokenClientConfig {
        allow_insecure_http: false,
        ..config()
    })
    .expect("client");

    let err = exchange_with(
        &strict,
        &url,
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("untrusted");

    assert!(matches!(err, TokenError::Tls { .. }), "{err:?}");
    assert_eq!(err.reason(), Reason::TokenEndpointUnavailable);
    assert!(!err.reason().is_permanent());
    let message = err.to_string();
    assert!(message.contains("certificate not trusted"), "{message}");
    assert!(message.contains("--extra-ca-file"), "{message}");
    assert_eq!(endpoint.request_count(), 0);
}

#[tokio::test]
async fn an_extra_ca_makes_the_endpoint_trusted() {
    let endpoint = endpoint().await;
    let url = tls_front(endpoint.addr()).await;
    let client = TokenClient::new(TokenClientConfig {
        allow_insecure_http: false,
        extra_root_certificates_pem: Some(TEST_CA_PEM.as_bytes().to_vec()),
        ..config()
    })
    .expect("client");

    let issued = exchange_with(
        &client,
        &url,
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretBasic,
        &[],
    )
    .await
    .expect("a token over TLS");

    assert_eq!(
        endpoint.issued_tokens(),
        [issued.access_token.expose_secret()]
    );
}

#[tokio::test]
async fn https_to_a_plain_http_port_is_a_tls_error() {
    let endpoint = endpoint().await;
    let url = Url::parse(&format!("https://{}/as/token.oauth2", endpoint.addr())).expect("url");

    let err = exchange_with(
        &client(),
        &url,
        &credentials(CLIENT_SECRET),
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect_err("not TLS");

    assert!(matches!(err, TokenError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("does not speak TLS"), "{err}");
}

/// Runs every failure scenario and checks that no secret reaches any message.
#[tokio::test]
async fn neither_the_secret_nor_a_token_appears_in_debug_output_or_errors() {
    let endpoint = endpoint().await;
    let url = url_of(&endpoint);
    let credentials = credentials(CLIENT_SECRET);
    let client = TokenClient::new(TokenClientConfig {
        request_timeout: Duration::from_millis(300),
        ..config()
    })
    .expect("client");

    let issued = exchange_with(
        &client,
        &url,
        &credentials,
        AuthMethod::ClientSecretPost,
        &[],
    )
    .await
    .expect("a token");
    let mut texts = vec![
        format!("{credentials:?}"),
        format!("{:?}", credentials.client_secret),
        format!("{:?}", issued.access_token),
        format!("{issued:?}"),
        format!("{client:?}"),
    ];

    let faults = [
        Fault::EchoCredentials,
        Fault::InvalidClient,
        Fault::UnauthorizedClient,
        Fault::InvalidScope,
        Fault::Status(401),
        Fault::Status(503),
        Fault::RateLimited {
            retry_after: RetryAfter::Seconds(3),
        },
        Fault::MalformedJson,
        Fault::Oversized(1024 * 1024),
        Fault::Delay(Duration::from_secs(5)),
        Fault::ResetConnection,
    ];
    let mut errors = Vec::new();
    for auth_method in [AuthMethod::ClientSecretPost, AuthMethod::ClientSecretBasic] {
        for fault in &faults {
            endpoint.push_fault(fault.clone());
            let err = exchange_with(&client, &url, &credentials, auth_method, &[])
                .await
                .expect_err(&format!("{fault:?} fails"));
            errors.push(err);
        }
    }
    let wrong = exchange_with(
        &client,
        &url,
        &self::credentials("wrong-s3cr3t-Also-Never-Leaks"),
        AuthMethod::ClientSecretBasic,
        &[],
    )
    .await
    .expect_err("rejected");
    errors.push(wrong);
    for err in &errors {
        texts.push(err.to_string());
        texts.push(format!("{err:?}"));
    }

    let echoed = endpoint.requests()[1].status;
    assert_eq!(echoed, Some(401), "the echoing endpoint answered");
    let mut secrets = vec![CLIENT_SECRET.to_owned(), "wrong-s3cr3t".to_owned()];
    secrets.extend(endpoint.issued_tokens());
    for text in &texts {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "leaked in: {text}");
        }
        assert!(
            !text.contains("Basic cmVw"),
            "Authorization header in: {text}"
        );
    }
    assert!(
        texts.iter().any(|text| text.contains("<redacted>")),
        "the echoed secret was redacted, not dropped silently"
    );
}

#[tokio::test]
async fn a_refresh_token_is_kept_and_renews_once_and_a_spent_one_is_invalid_grant() {
    let endpoint = endpoint().await;
    endpoint.set_refresh_tokens(true);
    let first = exchange(&endpoint).await.expect("a token");
    let refresh = first
        .refresh_token
        .clone()
        .expect("a refresh token was offered");
    assert!(first.refresh_expires_at.is_some());
    let grant = |token: &SecretString| Grant {
        token_url: url_of(&endpoint),
        credentials: Some(credentials(CLIENT_SECRET)),
        auth_method: AuthMethod::ClientSecretBasic,
        scopes: vec![],
        kind: GrantKind::RefreshToken(token.clone()),
    };
    let renewed = send(&client(), &grant(&refresh))
        .await
        .expect("renewed by refresh");
    assert_ne!(
        renewed.access_token.expose_secret(),
        first.access_token.expose_secret()
    );
    let request = endpoint.requests().pop().expect("the refresh request");
    assert_eq!(request.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(
        request.refresh_token.as_deref(),
        Some(refresh.expose_secret())
    );
    assert_eq!(
        request.auth,
        support::token_endpoint::ClientAuth::Basic,
        "the client authenticates"
    );

    let err = send(&client(), &grant(&refresh)).await.expect_err("spent");
    assert!(err.is_invalid_grant(), "{err:?}");
    assert!(!err.to_string().contains(refresh.expose_secret()), "{err}");
}

#[tokio::test]
async fn a_token_exchange_sends_the_subject_token_and_authenticates_as_asked() {
    let endpoint = endpoint().await;
    let subject = exchange(&endpoint).await.expect("the MSP token");
    for client_credentials in [Some(credentials(CLIENT_SECRET)), None] {
        let authenticated = client_credentials.is_some();
        let grant = Grant {
            token_url: Url::parse(&endpoint.workspace_url("tenant-7")).expect("url"),
            credentials: client_credentials,
            auth_method: AuthMethod::ClientSecretPost,
            scopes: vec![],
            kind: GrantKind::TokenExchange {
                subject_token: subject.access_token.clone(),
                audience: None,
            },
        };
        let exchanged = send(&client(), &grant).await.expect("a tenant token");
        let claims = decode_jwt_claims(exchanged.access_token.expose_secret()).expect("a JWT");
        assert_eq!(claims["workspace"], "tenant-7");
        let request = endpoint.requests().pop().expect("the exchange");
        assert_eq!(
            request.grant_type.as_deref(),
            Some("urn:ietf:params:oauth:grant-type:token-exchange")
        );
        assert_eq!(
            request.subject_token.as_deref(),
            Some(subject.access_token.expose_secret())
        );
        assert_eq!(request.workspace.as_deref(), Some("tenant-7"));
        let expected = if authenticated {
            support::token_endpoint::ClientAuth::Post
        } else {
            support::token_endpoint::ClientAuth::None
        };
        assert_eq!(request.auth, expected);
    }
    let bogus = Grant {
        token_url: Url::parse(&endpoint.workspace_url("tenant-7")).expect("url"),
        credentials: None,
        auth_method: AuthMethod::ClientSecretPost,
        scopes: vec![],
        kind: GrantKind::TokenExchange {
            subject_token: SecretString::from("not-a-token-it-issued".to_owned()),
            audience: None,
        },
    };
    let err = send(&client(), &bogus).await.expect_err("refused subject");
    assert!(err.is_invalid_grant(), "{err:?}");
    assert!(!err.to_string().contains("not-a-token-it-issued"), "{err}");
}
