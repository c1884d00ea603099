//! The token client: exchanges OAuth 2.0 client credentials for a bearer token.
//!
//! This is the only place that talks to the token endpoint. It owns the safety rules of that
//! conversation: refuse plain http unless allowed, wait on a per-host rate limiter, cap the
//! response size, time out, and classify every failure so the controller knows whether to
//! back off briefly (transient) or wait for the user to fix something (permanent). No error
//! message it produces contains the client secret or a token.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::jiff::Timestamp;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

pub use crate::api::AuthMethod;

/// The `User-Agent` sent to the token endpoint.
pub const USER_AGENT: &str = concat!("dscc-token-operator/", env!("CARGO_PKG_VERSION"));

/// RFC 6749 error codes that mean the request or the credentials are wrong, not the server.
const CREDENTIAL_ERROR_CODES: [&str; 6] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_request",
];

/// Longest `error_description` kept in an error message, in characters.
const MAX_DESCRIPTION_CHARS: usize = 200;
/// Longest transport error detail kept in an error message, in characters.
const MAX_DETAIL_CHARS: usize = 300;
/// A server may not park a credential for longer than this with `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Lifetimes beyond this are clamped, so a bogus `expires_in` cannot overflow the clock.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Values of `ratelimit-reset` at or above this are Unix times, not delays.
const EPOCH_SECONDS_THRESHOLD: u64 = 1_000_000_000;
/// Unbroken runs of token characters at least this long are treated as possible tokens.
const TOKEN_LIKE_MIN_CHARS: usize = 40;
/// The placeholder for anything scrubbed from server-provided text.
const REDACTED: &str = "<redacted>";

/// An OAuth 2.0 client secret. `Debug` is redacted and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a client secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself; call only where it must be sent or stored.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// A bearer access token. `Debug` is redacted and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps an access token.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token itself; call only where it must be sent or stored.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(<redacted>, {} bytes)", self.0.len())
    }
}

/// A client id and its secret, as read from the client Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The OAuth 2.0 client id (not secret).
    pub client_id: String,
    /// The OAuth 2.0 client secret.
    pub client_secret: ClientSecret,
}

/// One token request: where to send it, with which credentials and how.
#[derive(Debug)]
pub struct TokenRequest<'a> {
    /// The token endpoint, e.g. `https://sso.common.cloud.hpe.com/as/token.oauth2`.
    pub token_url: &'a Url,
    /// The client credentials to exchange.
    pub credentials: &'a ClientCredentials,
    /// How the client authenticates: form body or HTTP Basic.
    pub auth_method: AuthMethod,
    /// Scopes to request; sent space-separated, omitted when empty.
    pub scopes: &'a [String],
}

/// Settings of the token client, shared by every request it sends.
#[derive(Clone, Debug)]
pub struct TokenClientConfig {
    /// Limit for establishing a TCP and TLS connection.
    pub connect_timeout: Duration,
    /// Limit for a whole request, from sending to the last byte of the response.
    pub request_timeout: Duration,
    /// Responses larger than this fail with [`TokenError::ResponseTooLarge`].
    pub max_response_bytes: usize,
    /// Token lifetime when neither `expires_in` nor a JWT `exp` claim says otherwise.
    pub default_lifetime: Duration,
    /// Extra PEM CA certificates to trust, e.g. for a TLS-inspecting proxy.
    pub extra_root_certificates_pem: Option<Vec<u8>>,
    /// Accept plain `http://` token URLs (development only).
    pub allow_insecure_http: bool,
    /// Requests per second sent to one host; `None` disables the limit.
    pub requests_per_second_per_host: Option<NonZeroU32>,
}

impl Default for TokenClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 64 * 1024,
            default_lifetime: Duration::from_secs(60 * 60),
            extra_root_certificates_pem: None,
            allow_insecure_http: false,
            requests_per_second_per_host: NonZeroU32::new(10),
        }
    }
}

/// Where the lifetime of an issued token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeSource {
    /// The `expires_in` field of the token response.
    ExpiresIn,
    /// The `exp` claim of the JWT access token.
    JwtExpiry,
    /// Neither was present: the configured default lifetime.
    Default,
}

/// A token the endpoint issued, with what is known about its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: AccessToken,
    /// The token type as sent (e.g. `Bearer` or `bearer`); `Bearer` if absent.
    pub token_type: String,
    /// When the token was issued: the `now` given to [`TokenClient::exchange`].
    pub issued_at: Timestamp,
    /// When the token expires.
    pub expires_at: Timestamp,
    /// Where `expires_at` came from.
    pub lifetime_source: LifetimeSource,
    /// The `scope` field of the response, if any.
    pub scope: Option<String>,
    /// The decoded (unverified) JWT payload, if the token is a JWT.
    pub claims: Option<Map<String, Value>>,
}

impl IssuedToken {
    /// The time between issue and expiry.
    pub fn lifetime(&self) -> Duration {
        let seconds = self.expires_at.duration_since(self.issued_at);
        Duration::try_from(seconds).unwrap_or(Duration::ZERO)
    }
}

/// Why a token exchange failed. Messages say what to fix and never contain a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token URL uses plain http and insecure URLs are not allowed.
    #[error(
        "token URL {url} uses plain http, which would expose the client secret; use https \
         (plain http is accepted only when the operator runs with --allow-insecure-token-url, \
         for development)"
    )]
    InsecureUrl {
        /// The URL, without query or user info.
        url: String,
    },
    /// The token URL cannot be used at all.
    #[error("token URL {url} cannot be used: {problem}; fix spec.tokenUrl")]
    UnsupportedUrl {
        /// The URL, without query or user info.
        url: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The client could not be built from its configuration.
    #[error("cannot set up the token client: {detail}")]
    InvalidConfig {
        /// What is wrong.
        detail: String,
    },
    /// The endpoint rejected the request for a reason that retrying will not fix.
    #[error(
        "token endpoint {url} {} ({}): {}",
        rejection_phrase(.status, .error.as_deref()),
        http_summary(.status, .error.as_deref(), .description.as_deref()),
        rejection_hint(.status, .error.as_deref())
    )]
    Rejected {
        /// The token URL, without query or user info.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The RFC 6749 `error` code, if the body had one.
        error: Option<String>,
        /// The scrubbed, truncated `error_description`, if any.
        description: Option<String>,
    },
    /// The endpoint answered 429.
    #[error(
        "token endpoint {host} is rate limiting requests (HTTP 429); will retry {}",
        retry_phrase(.retry_after)
    )]
    RateLimited {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// How long the endpoint asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The endpoint answered with a 5xx status.
    #[error("token endpoint {host} answered {status}; will retry {}", retry_phrase(.retry_after))]
    ServerError {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The HTTP status code.
        status: u16,
        /// How long the endpoint asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// The endpoint answered with a status a token endpoint should not send.
    #[error(
        "token endpoint {url} answered with unexpected {}: {}; will retry",
        http_summary(.status, .error.as_deref(), .description.as_deref()),
        unexpected_status_hint(.status)
    )]
    UnexpectedStatus {
        /// The token URL, without query or user info.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The RFC 6749 `error` code, if the body had one.
        error: Option<String>,
        /// The scrubbed, truncated `error_description`, if any.
        description: Option<String>,
    },
    /// No answer within the configured time.
    #[error(
        "timed out after {} {} the token endpoint {host}; will retry",
        format_duration(.after),
        if *.connecting { "connecting to" } else { "waiting for" }
    )]
    Timeout {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The time limit that ran out.
        after: Duration,
        /// Whether the time ran out while connecting.
        connecting: bool,
    },
    /// The TCP connection could not be made.
    #[error("could not connect to the token endpoint {host}: {detail}; will retry")]
    Connect {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The underlying error.
        detail: String,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {host} failed: {detail}")]
    Tls {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// What the TLS layer reported.
        detail: String,
    },
    /// The connection broke while sending or receiving.
    #[error("request to the token endpoint {host} failed: {detail}; will retry")]
    Transport {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The underlying error.
        detail: String,
    },
    /// The response body was larger than allowed.
    #[error("token endpoint {host} answered with more than {limit} bytes")]
    ResponseTooLarge {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A successful answer that does not hold a usable token.
    #[error("token endpoint {host} sent an unusable token response: {problem}; will retry")]
    MalformedResponse {
        /// The endpoint host (and port, if not the default).
        host: String,
        /// What is wrong with it (never the body itself).
        problem: String,
    },
}

impl TokenError {
    /// Whether retrying without a change of spec or credentials is pointless.
    pub fn is_permanent(&self) -> bool {
        matches!(self.reason(), "InvalidClientCredentials" | "InvalidSpec")
    }

    /// How long the endpoint asked the client to wait before the next request, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::ServerError { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The status condition reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InsecureUrl { .. } | Self::UnsupportedUrl { .. } | Self::InvalidConfig { .. } => {
                "InvalidSpec"
            }
            Self::Rejected { .. } => "InvalidClientCredentials",
            Self::RateLimited { .. } => "RateLimited",
            Self::ServerError { .. }
            | Self::UnexpectedStatus { .. }
            | Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::Tls { .. }
            | Self::Transport { .. }
            | Self::ResponseTooLarge { .. }
            | Self::MalformedResponse { .. } => "TokenEndpointUnavailable",
        }
    }

    /// The HTTP status the endpoint answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Rejected { status, .. }
            | Self::ServerError { status, .. }
            | Self::UnexpectedStatus { status, .. } => Some(*status),
            Self::RateLimited { .. } => Some(429),
            _ => None,
        }
    }
}

fn rejection_phrase(status: &u16, error: Option<&str>) -> &'static str {
    match (error, *status) {
        (Some("unauthorized_client"), _) => "refused the client_credentials grant for this client",
        (Some("invalid_scope"), _) => "rejected the requested scopes",
        (Some("unsupported_grant_type"), _) => "does not support the client_credentials grant",
        (Some("invalid_request"), _) => "rejected the request as malformed",
        (None, 403) => "refused the request",
        _ => "rejected the client credentials",
    }
}

fn rejection_hint(status: &u16, error: Option<&str>) -> &'static str {
    match (error, *status) {
        (Some("unauthorized_client"), _) => {
            "check that the API client is allowed to use the client_credentials grant"
        }
        (Some("invalid_scope"), _) => "check spec.scopes",
        (Some("unsupported_grant_type"), _) => "check spec.tokenUrl",
        (Some("invalid_request"), _) => "check spec.tokenUrl and spec.authMethod",
        (None, 403) => {
            "check client_id and client_secret in the client Secret, and that the API client may use this endpoint"
        }
        _ => "check client_id and client_secret in the client Secret",
    }
}

fn unexpected_status_hint(status: &u16) -> &'static str {
    match *status {
        300..=399 => "redirects are not followed; check spec.tokenUrl",
        404 | 405 => "check spec.tokenUrl",
        _ => "the endpoint may be misbehaving",
    }
}

fn http_summary(status: &u16, error: Option<&str>, description: Option<&str>) -> String {
    let mut summary = format!("HTTP {status}");
    if let Some(error) = error {
        summary.push(' ');
        summary.push_str(error);
    }
    if let Some(description) = description {
        summary.push_str(": ");
        summary.push_str(description);
    }
    summary
}

fn retry_phrase(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("after {}", format_duration(wait)),
        None => "with backoff".to_owned(),
    }
}

/// Formats a duration the way people write timeouts: `30s`, `300ms`, `1.5s`.
fn format_duration(duration: &Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.as_secs() == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// Exchanges client credentials for tokens. Cheap to clone; clones share the rate limiter.
#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    shared: Arc<Shared>,
}

struct Shared {
    connect_timeout: Duration,
    request_timeout: Duration,
    max_response_bytes: usize,
    default_lifetime: Duration,
    allow_insecure_http: bool,
    limiter: Option<HostRateLimiter>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("request_timeout", &self.shared.request_timeout)
            .field("allow_insecure_http", &self.shared.allow_insecure_http)
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// Builds a client; fails only on an unusable configuration (e.g. an invalid CA bundle).
    pub fn new(config: TokenClientConfig) -> Result<Self, TokenError> {
        // Redirects are not followed: a POST would turn into a GET, and a token endpoint
        // that redirects is misconfigured. Proxies come from HTTPS_PROXY / NO_PROXY.
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &config.extra_root_certificates_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| {
                TokenError::InvalidConfig {
                    detail: "the extra CA bundle is not valid PEM".to_owned(),
                }
            })?;
            if certificates.is_empty() {
                return Err(TokenError::InvalidConfig {
                    detail: "the extra CA bundle contains no certificates".to_owned(),
                });
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder.build().map_err(|err| TokenError::InvalidConfig {
            detail: error_chain(&err, &[]),
        })?;
        Ok(Self {
            http,
            shared: Arc::new(Shared {
                connect_timeout: config.connect_timeout,
                request_timeout: config.request_timeout,
                max_response_bytes: config.max_response_bytes,
                default_lifetime: config.default_lifetime,
                allow_insecure_http: config.allow_insecure_http,
                limiter: config
                    .requests_per_second_per_host
                    .map(HostRateLimiter::new),
            }),
        })
    }

    /// The HTTP client, with this client's CA trust, proxy and timeouts, for other calls
    /// made with a token (the DSCC API probe).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Runs one client credentials exchange; `now`, rounded down to a whole second, becomes
    /// the token's `issued_at`.
    ///
    /// The request may wait for the per-host rate limiter first, so the token is issued at or
    /// after `now`; an expiry computed from `now` therefore errs on the early side. Whole
    /// seconds, because Kubernetes times (the status) hold no fractions, and the Secret and
    /// the status must state the same expiry.
    pub async fn exchange(
        &self,
        request: &TokenRequest<'_>,
        now: Timestamp,
    ) -> Result<IssuedToken, TokenError> {
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let url = request.token_url;
        check_url(url, self.shared.allow_insecure_http)?;
        let endpoint = Endpoint::of(url);
        let client_id = request.credentials.client_id.as_str();
        let secret = request.credentials.client_secret.expose_secret();
        let scrubber = Scrubber::new(secret);

        if let Some(limiter) = &self.shared.limiter {
            limiter.until_ready(&endpoint.limiter_key).await;
        }

        let scope = join_scopes(request.scopes);
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &scope {
            form.push(("scope", scope));
        }
        let mut builder = self
            .http
            .post(url.clone())
            .header(header::ACCEPT, "application/json");
        match request.auth_method {
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret));
            }
            AuthMethod::ClientSecretBasic => {
                builder = builder.header(
                    header::AUTHORIZATION,
                    basic_authorization(client_id, secret),
                );
            }
        }
        tracing::debug!(host = %endpoint.host, client_id, "requesting a token");
        let response = builder
            .form(&form)
            .send()
            .await
            .map_err(|err| self.transport_error(&err, &endpoint, &scrubber))?;

        let status = response.status().as_u16();
        tracing::debug!(host = %endpoint.host, client_id, status, "token endpoint answered");
        let now_system = system_time(now);
        if status == 429 {
            return Err(TokenError::RateLimited {
                host: endpoint.host,
                retry_after: rate_limit_delay(response.headers(), now_system),
            });
        }
        if (500..=599).contains(&status) {
            return Err(TokenError::ServerError {
                host: endpoint.host,
                status,
                retry_after: header_str(response.headers(), header::RETRY_AFTER.as_str())
                    .and_then(|value| parse_retry_after(value, now_system)),
            });
        }

        let limit = self.shared.max_response_bytes;
        if (200..=299).contains(&status) {
            let body = match read_capped(response, limit).await {
                Ok(body) => body,
                Err(ReadError::TooLarge) => {
                    return Err(TokenError::ResponseTooLarge {
                        host: endpoint.host,
                        limit,
                    });
                }
                Err(ReadError::Http(err)) => {
                    return Err(self.transport_error(&err, &endpoint, &scrubber));
                }
            };
            return parse_success(
                &body,
                status,
                now,
                self.shared.default_lifetime,
                &endpoint,
                &scrubber,
            );
        }

        // An error body that is too large or broken is ignored: the status still classifies it.
        let body = read_capped(response, limit).await.unwrap_or_default();
        Err(classify_error_response(
            status,
            parse_oauth_error(&body, &scrubber),
            &endpoint,
        ))
    }

    fn transport_error(
        &self,
        err: &reqwest::Error,
        endpoint: &Endpoint,
        scrubber: &Scrubber,
    ) -> TokenError {
        let host = endpoint.host.clone();
        if let Some(tls) = rustls_error(err) {
            return TokenError::Tls {
                host,
                detail: describe_tls_failure(tls),
            };
        }
        if err.is_timeout() {
            let connecting = err.is_connect();
            let after = if connecting {
                self.shared.connect_timeout
            } else {
                self.shared.request_timeout
            };
            return TokenError::Timeout {
                host,
                after,
                connecting,
            };
        }
        let detail = error_chain(err, &scrubber.secrets);
        if err.is_connect() {
            return TokenError::Connect { host, detail };
        }
        TokenError::Transport { host, detail }
    }
}

/// How an endpoint is named in messages and keyed in the rate limiter.
struct Endpoint {
    /// The URL without query, fragment or user info.
    url: String,
    /// Host, plus the port when it is not the scheme's default.
    host: String,
    /// Host and effective port.
    limiter_key: String,
}

impl Endpoint {
    fn of(url: &Url) -> Self {
        let host_name = url.host_str().unwrap_or_default();
        let host = match url.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_owned(),
        };
        let limiter_key = format!("{host_name}:{}", url.port_or_known_default().unwrap_or(0));
        Self {
            url: display_url(url),
            host,
            limiter_key,
        }
    }
}

/// The URL as shown in messages: no user info, query or fragment.
fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // These fail only for URLs that cannot have user info, which then has none to remove.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn check_url(url: &Url, allow_insecure_http: bool) -> Result<(), TokenError> {
    let unsupported = |problem| TokenError::UnsupportedUrl {
        url: display_url(url),
        problem,
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => {
            return Err(TokenError::InsecureUrl {
                url: display_url(url),
            });
        }
        _ => return Err(unsupported("the scheme must be https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(unsupported("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(unsupported(
            "it must not contain a user name or password (credentials belong in the client Secret)",
        ));
    }
    Ok(())
}

fn join_scopes(scopes: &[String]) -> Option<String> {
    let joined = scopes
        .iter()
        .map(|scope| scope.trim())
        .filter(|scope| !scope.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!joined.is_empty()).then_some(joined)
}

/// The `Authorization` header value for `client_secret_basic` (RFC 6749 section 2.3.1:
/// id and secret are form-urlencoded before they are joined and base64-encoded).
fn basic_authorization(client_id: &str, secret: &str) -> HeaderValue {
    let mut value =
        HeaderValue::from_str(&format!("Basic {}", basic_credentials(client_id, secret)))
            .expect("base64 is always a valid header value");
    value.set_sensitive(true);
    value
}

fn basic_credentials(client_id: &str, secret: &str) -> String {
    STANDARD.encode(format!(
        "{}:{}",
        form_urlencode(client_id),
        form_urlencode(secret)
    ))
}

fn form_urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// Reads a body, giving up as soon as it exceeds `limit` bytes.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    let declared = response.content_length();
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let capacity = declared.map_or(1024, |length| length as usize).min(limit);
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An RFC 6749 section 5.2 error body, already scrubbed.
#[derive(Debug, Default, PartialEq, Eq)]
struct OAuthError {
    error: Option<String>,
    description: Option<String>,
}

fn parse_oauth_error(body: &[u8], scrubber: &Scrubber) -> Option<OAuthError> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    oauth_error_from(&object, scrubber)
}

fn oauth_error_from(object: &Map<String, Value>, scrubber: &Scrubber) -> Option<OAuthError> {
    let error = object
        .get("error")
        .and_then(Value::as_str)
        .map(sanitize_error_code);
    let description = object
        .get("error_description")
        .and_then(Value::as_str)
        .map(|text| scrubber.scrub(text, MAX_DESCRIPTION_CHARS))
        .filter(|text| !text.is_empty());
    (error.is_some() || description.is_some()).then_some(OAuthError { error, description })
}

/// Keeps an `error` code only if it looks like one; RFC 6749 codes are short ASCII words.
fn sanitize_error_code(code: &str) -> String {
    let code = code.trim();
    let plausible = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if plausible {
        code.to_owned()
    } else {
        "unrecognised_error_code".to_owned()
    }
}

/// Classifies a non-2xx, non-429, non-5xx answer (or a 2xx carrying an `error`).
fn classify_error_response(
    status: u16,
    body: Option<OAuthError>,
    endpoint: &Endpoint,
) -> TokenError {
    let OAuthError { error, description } = body.unwrap_or_default();
    let credential_error = error
        .as_deref()
        .is_some_and(|code| CREDENTIAL_ERROR_CODES.contains(&code));
    let rejected = matches!(status, 400 | 401 | 403)
        || (credential_error && ((400..=499).contains(&status) || (200..=299).contains(&status)));
    if rejected {
        TokenError::Rejected {
            url: endpoint.url.clone(),
            status,
            error,
            description,
        }
    } else {
        TokenError::UnexpectedStatus {
            url: endpoint.url.clone(),
            status,
            error,
            description,
        }
    }
}

fn parse_success(
    body: &[u8],
    status: u16,
    now: Timestamp,
    default_lifetime: Duration,
    endpoint: &Endpoint,
    scrubber: &Scrubber,
) -> Result<IssuedToken, TokenError> {
    let malformed = |problem: String| TokenError::MalformedResponse {
        host: endpoint.host.clone(),
        problem,
    };
    // serde_json's messages name a position, never the content, so they are safe to show.
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(malformed("the body is JSON but not an object".to_owned())),
        Err(err) => return Err(malformed(format!("the body is not valid JSON ({err})"))),
    };
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token,
        Some(Value::String(_)) => return Err(malformed("access_token is empty".to_owned())),
        Some(_) => return Err(malformed("access_token is not a string".to_owned())),
        None => {
            if let Some(oauth) = oauth_error_from(&object, scrubber).filter(|e| e.error.is_some()) {
                return Err(classify_error_response(status, Some(oauth), endpoint));
            }
            return Err(malformed("access_token is missing".to_owned()));
        }
    };
    // The token ends up in an Authorization header; anything that could split or fold a
    // header line is refused rather than written to a Secret.
    if !access_token.bytes().all(is_header_token_byte) {
        return Err(malformed(
            "access_token contains spaces or control characters".to_owned(),
        ));
    }
    let token_type = match object.get("token_type") {
        None | Some(Value::Null) => "Bearer".to_owned(),
        Some(Value::String(kind)) if !kind.is_empty() && kind.bytes().all(is_header_token_byte) => {
            kind.clone()
        }
        Some(_) => return Err(malformed("token_type is not a single word".to_owned())),
    };
    let claims = decode_jwt_claims(access_token);
    let (expires_at, lifetime_source) = select_expiry(
        object.get("expires_in"),
        claims.as_ref(),
        now,
        default_lifetime,
    )
    .map_err(malformed)?;
    let scope = object
        .get("scope")
        .and_then(Value::as_str)
        .map(|scope| scrubber.scrub(scope, 1024))
        .filter(|scope| !scope.is_empty());
    Ok(IssuedToken {
        access_token: AccessToken::new(access_token.clone()),
        token_type,
        issued_at: now,
        expires_at,
        lifetime_source,
        scope,
        claims,
    })
}

fn is_header_token_byte(byte: u8) -> bool {
    byte.is_ascii_graphic()
}

/// Chooses the expiry: `expires_in`, else the JWT `exp` claim, else the default lifetime.
fn select_expiry(
    expires_in: Option<&Value>,
    claims: Option<&Map<String, Value>>,
    now: Timestamp,
    default_lifetime: Duration,
) -> Result<(Timestamp, LifetimeSource), String> {
    let after = |lifetime: Duration| -> Result<Timestamp, String> {
        now.checked_add(lifetime.min(MAX_LIFETIME))
            .map_err(|_| "the token lifetime is out of range".to_owned())
    };
    let jwt_expiry = claims.and_then(|claims| claims.get("exp")).map(|exp| {
        let exp = exp
            .as_i64()
            .or_else(|| exp.as_f64().filter(|exp| exp.is_finite()).map(|exp| exp as i64))
            .ok_or_else(|| "the token's exp claim is not a number".to_owned())?;
        let max = now.checked_add(MAX_LIFETIME).unwrap_or(Timestamp::MAX);
        let expires_at = Timestamp::from_second(exp).unwrap_or(Timestamp::MAX).min(max);
        if expires_at <= now {
            return Err(format!(
                "the token's exp claim ({expires_at}) is not in the future; is this machine's clock right?"
            ));
        }
        Ok(expires_at)
    });

    match expires_in {
        None | Some(Value::Null) => {}
        Some(value) => {
            if let Some(lifetime) = parse_expires_in(value) {
                return Ok((after(lifetime)?, LifetimeSource::ExpiresIn));
            }
            // A broken expires_in is not the same as none: only a JWT exp may stand in for it.
            return match jwt_expiry {
                Some(Ok(expires_at)) => Ok((expires_at, LifetimeSource::JwtExpiry)),
                _ => Err("expires_in is not a positive number of seconds".to_owned()),
            };
        }
    }
    match jwt_expiry {
        Some(Ok(expires_at)) => Ok((expires_at, LifetimeSource::JwtExpiry)),
        Some(Err(problem)) => Err(problem),
        None => Ok((after(default_lifetime)?, LifetimeSource::Default)),
    }
}

/// Parses `expires_in`: a JSON number or a numeric string of seconds, greater than zero.
fn parse_expires_in(value: &Value) -> Option<Duration> {
    let seconds = match value {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 1.0)
                .map(|s| s as u64)
        }),
        Value::String(text) => {
            let text = text.trim();
            text.parse::<u64>().ok().or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 1.0)
                    .map(|s| s as u64)
            })
        }
        _ => None,
    }?;
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Decodes the payload of a JWS compact token without verifying it; `None` if not a JWT.
pub fn decode_jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        // Five parts is a JWE, whose payload is encrypted.
        return None;
    }
    let decode_object = |part: &str| -> Option<Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
        match serde_json::from_slice::<Value>(&bytes).ok()? {
            Value::Object(object) => Some(object),
            _ => None,
        }
    };
    decode_object(header)?;
    decode_object(payload)
}

/// Converts a jiff timestamp without needing jiff's `std` feature.
fn system_time(at: Timestamp) -> SystemTime {
    let since_epoch = Duration::from_nanos(
        at.as_nanosecond()
            .unsigned_abs()
            .try_into()
            .unwrap_or(u64::MAX),
    );
    if at.as_second() >= 0 {
        SystemTime::UNIX_EPOCH + since_epoch
    } else {
        SystemTime::UNIX_EPOCH - since_epoch
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// How long a 429 asks to wait: `Retry-After`, else `ratelimit-reset`.
fn rate_limit_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    header_str(headers, header::RETRY_AFTER.as_str())
        .and_then(|value| parse_retry_after(value, now))
        .or_else(|| {
            ["ratelimit-reset", "x-ratelimit-reset"]
                .into_iter()
                .find_map(|name| header_str(headers, name))
                .and_then(|value| parse_ratelimit_reset(value, now))
        })
}

/// Parses `Retry-After`: delay seconds or an HTTP date (relative to `now`).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Parses `ratelimit-reset`: delay seconds, or (as some servers send) a Unix time.
fn parse_ratelimit_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let seconds = value.trim().parse::<u64>().ok()?;
    let delay = if seconds >= EPOCH_SECONDS_THRESHOLD {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        Duration::from_secs(seconds)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Removes secrets, token-like strings and control characters from text a server sent.
struct Scrubber {
    /// The client secret in the forms a server might echo it: raw, form-encoded, in Basic.
    secrets: Vec<String>,
}

impl Scrubber {
    fn new(client_secret: &str) -> Self {
        let mut secrets = Vec::new();
        if !client_secret.is_empty() {
            secrets.push(client_secret.to_owned());
            let encoded = form_urlencode(client_secret);
            if encoded != client_secret {
                secrets.push(encoded);
            }
        }
        Self { secrets }
    }

    fn scrub(&self, text: &str, max_chars: usize) -> String {
        scrub_text(text, &self.secrets, max_chars)
    }
}

/// Redacts `secrets` and anything that looks like a credential, drops control characters,
/// and truncates to `max_chars`. Redaction happens before truncation so that a cut can never
/// leave half a secret behind.
fn scrub_text(text: &str, secrets: &[String], max_chars: usize) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        text = text.replace(secret.as_str(), REDACTED);
    }
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut words: Vec<String> = Vec::new();
    let mut redact_next = false;
    for word in text.split_whitespace() {
        let bare = word.trim_matches(|c: char| !is_token_char(c));
        if !bare.is_empty() && (redact_next || looks_like_token(bare)) {
            words.push(word.replace(bare, REDACTED));
        } else {
            words.push(word.to_owned());
        }
        let lowered = bare.to_ascii_lowercase();
        redact_next = matches!(lowered.as_str(), "bearer" | "basic");
    }
    truncate_chars(&words.join(" "), max_chars)
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')
}

/// A JWT, or a long unbroken run of base64/token characters.
fn looks_like_token(word: &str) -> bool {
    if word.is_empty() || !word.chars().all(is_token_char) {
        return false;
    }
    let jwt = word.starts_with("eyJ") && word.matches('.').count() >= 2;
    jwt || word.len() >= TOKEN_LIKE_MIN_CHARS
}

fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A reqwest error as text: its cause chain, without the URL, scrubbed.
fn error_chain(err: &reqwest::Error, secrets: &[String]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their cause's message; keep each message once.
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.retain(|part| !text.contains(part.as_str()));
            parts.push(text);
        }
        source = cause.source();
    }
    // hyper's "client error (Connect)" wrapper adds nothing to the cause after it.
    if parts.len() > 1 {
        parts.retain(|part| !(part.starts_with("client error (") && part.ends_with(')')));
    }
    if parts.is_empty() {
        // Without a cause, reqwest's own message is all there is; it may name the URL.
        let mut text = err.to_string();
        if let Some(url) = err.url() {
            text = text.replace(url.as_str(), &display_url(url));
        }
        parts.push(text);
    }
    scrub_text(&parts.join(": "), secrets, MAX_DETAIL_CHARS)
}

/// The rustls error somewhere in a reqwest error's cause chain, if the TLS layer failed.
fn rustls_error(err: &reqwest::Error) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        // io::Error hides a custom inner error from `source()` (and hyper nests them), so
        // unwrap each layer explicitly.
        let mut layer: &(dyn std::error::Error + 'static) = cause;
        loop {
            if let Some(tls) = layer.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            match layer
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(inner) => layer = inner,
                None => break,
            }
        }
        source = cause.source();
    }
    None
}

/// Says what a TLS failure means for the person who has to fix it.
fn describe_tls_failure(err: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "certificate not trusted (is the CA in --extra-ca-file?)".to_owned()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the certificate is not valid for this host name; check spec.tokenUrl".to_owned(),
        Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!("the certificate is outside its validity period ({err}); check the clocks"),
        Error::InvalidCertificate(_) => {
            format!("certificate rejected: {err} (is the CA in --extra-ca-file?)")
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            "the server does not speak TLS on this port (plain http?); check spec.tokenUrl"
                .to_owned()
        }
        _ => err.to_string(),
    }
}

/// Spaces requests to each host: at most `rate` per second, with bursts of up to `rate`.
/// Callers wait for their slot instead of failing (generic cell rate algorithm).
struct HostRateLimiter {
    interval: Duration,
    burst: u32,
    /// Per host: the theoretical arrival time of the next request.
    next: Mutex<HashMap<String, Instant>>,
}

impl HostRateLimiter {
    /// Forget hosts once the table holds more than this many.
    const PRUNE_ABOVE: usize = 1024;

    fn new(rate: NonZeroU32) -> Self {
        Self {
            interval: Duration::from_secs(1) / rate.get(),
            burst: rate.get(),
            next: Mutex::new(HashMap::new()),
        }
    }

    /// Reserves the next slot for `host` and returns when it may be used.
    fn reserve(&self, host: &str, now: Instant) -> Instant {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let theoretical = next.get(host).copied().unwrap_or(now).max(now) + self.interval;
        let send_at = theoretical
            .checked_sub(self.interval * self.burst)
            .map_or(now, |at| at.max(now));
        if next.len() > Self::PRUNE_ABOVE {
            next.retain(|_, at| *at > now);
        }
        next.insert(host.to_owned(), theoretical);
        send_at
    }

    async fn until_ready(&self, host: &str) {
        let at = self.reserve(host, Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        let url = Url::parse("https://sso.example.com/as/token.oauth2?debug=1").expect("url");
        Endpoint::of(&url)
    }

    fn jwt(payload: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("{header}.{payload}.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).expect("timestamp")
    }

    fn system(at: Timestamp) -> SystemTime {
        system_time(at)
    }

    #[test]
    fn retry_after_accepts_delay_seconds() {
        assert_eq!(
            parse_retry_after("30", system(now())),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(" 0 ", system(now())),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_accepts_an_http_date_relative_to_now() {
        let at = system(now()) + Duration::from_secs(90);
        let header = httpdate::fmt_http_date(at);
        assert_eq!(
            parse_retry_after(&header, system(now())),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn retry_after_in_the_past_means_now() {
        let at = system(now()) - Duration::from_secs(90);
        let header = httpdate::fmt_http_date(at);
        assert_eq!(
            parse_retry_after(&header, system(now())),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_ignores_garbage_and_caps_huge_delays() {
        assert_eq!(parse_retry_after("soon", system(now())), None);
        assert_eq!(parse_retry_after("-5", system(now())), None);
        assert_eq!(
            parse_retry_after("99999999", system(now())),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn ratelimit_reset_accepts_seconds_and_unix_times() {
        assert_eq!(
            parse_ratelimit_reset("12", system(now())),
            Some(Duration::from_secs(12))
        );
        let unix = (now().as_second() + 40).to_string();
        assert_eq!(
            parse_ratelimit_reset(&unix, system(now())),
            Some(Duration::from_secs(40))
        );
        assert_eq!(parse_ratelimit_reset("x", system(now())), None);
    }

    #[test]
    fn retry_after_wins_over_ratelimit_reset() {
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-reset", HeaderValue::from_static("20"));
        assert_eq!(
            rate_limit_delay(&headers, system(now())),
            Some(Duration::from_secs(20))
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        assert_eq!(
            rate_limit_delay(&headers, system(now())),
            Some(Duration::from_secs(5))
        );
        assert_eq!(rate_limit_delay(&HeaderMap::new(), system(now())), None);
    }

    fn oauth(error: &str) -> Option<OAuthError> {
        Some(OAuthError {
            error: Some(error.to_owned()),
            description: None,
        })
    }

    #[test]
    fn classifies_error_responses() {
        let cases: Vec<(u16, Option<OAuthError>, &str, bool)> = vec![
            (
                401,
                oauth("invalid_client"),
                "InvalidClientCredentials",
                true,
            ),
            (
                400,
                oauth("invalid_client"),
                "InvalidClientCredentials",
                true,
            ),
            (
                400,
                oauth("unauthorized_client"),
                "InvalidClientCredentials",
                true,
            ),
            (
                400,
                oauth("invalid_grant"),
                "InvalidClientCredentials",
                true,
            ),
            (
                400,
                oauth("unsupported_grant_type"),
                "InvalidClientCredentials",
                true,
            ),
            (
                400,
                oauth("invalid_scope"),
                "InvalidClientCredentials",
                true,
            ),
            (
                400,
                oauth("invalid_request"),
                "InvalidClientCredentials",
                true,
            ),
            (400, None, "InvalidClientCredentials", true),
            (401, None, "InvalidClientCredentials", true),
            (403, None, "InvalidClientCredentials", true),
            (
                403,
                oauth("access_denied"),
                "InvalidClientCredentials",
                true,
            ),
            (
                422,
                oauth("invalid_client"),
                "InvalidClientCredentials",
                true,
            ),
            (
                200,
                oauth("invalid_client"),
                "InvalidClientCredentials",
                true,
            ),
            (404, None, "TokenEndpointUnavailable", false),
            (302, None, "TokenEndpointUnavailable", false),
            (409, oauth("conflict"), "TokenEndpointUnavailable", false),
        ];
        for (status, body, reason, permanent) in cases {
            let err = classify_error_response(status, body, &endpoint());
            assert_eq!(err.reason(), reason, "HTTP {status}: {err}");
            assert_eq!(err.is_permanent(), permanent, "HTTP {status}: {err}");
            assert_eq!(err.status(), Some(status));
        }
    }

    #[test]
    fn classifies_every_variant() {
        let host = "h".to_owned();
        let transient = [
            TokenError::ServerError {
                host: host.clone(),
                status: 503,
                retry_after: None,
            },
            TokenError::Timeout {
                host: host.clone(),
                after: Duration::from_secs(1),
                connecting: false,
            },
            TokenError::Connect {
                host: host.clone(),
                detail: "refused".into(),
            },
            TokenError::Tls {
                host: host.clone(),
                detail: "bad".into(),
            },
            TokenError::Transport {
                host: host.clone(),
                detail: "reset".into(),
            },
            TokenError::ResponseTooLarge {
                host: host.clone(),
                limit: 1,
            },
            TokenError::MalformedResponse {
                host: host.clone(),
                problem: "x".into(),
            },
        ];
        for err in transient {
            assert_eq!(err.reason(), "TokenEndpointUnavailable", "{err}");
            assert!(!err.is_permanent(), "{err}");
        }
        let limited = TokenError::RateLimited {
            host: host.clone(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(limited.reason(), "RateLimited");
        assert!(!limited.is_permanent());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        for err in [
            TokenError::InsecureUrl {
                url: "http://h/".into(),
            },
            TokenError::UnsupportedUrl {
                url: "ftp://h/".into(),
                problem: "p",
            },
            TokenError::InvalidConfig { detail: "d".into() },
        ] {
            assert_eq!(err.reason(), "InvalidSpec", "{err}");
            assert!(err.is_permanent(), "{err}");
        }
    }

    #[test]
    fn messages_say_what_to_fix() {
        let err = TokenError::Rejected {
            url: endpoint().url,
            status: 401,
            error: Some("invalid_client".into()),
            description: Some("Bad client credentials".into()),
        };
        assert_eq!(
            err.to_string(),
            "token endpoint https://sso.example.com/as/token.oauth2 rejected the client credentials \
             (HTTP 401 invalid_client: Bad client credentials): check client_id and client_secret in the client Secret"
        );
        let err = TokenError::ServerError {
            host: "sso.example.com".into(),
            status: 503,
            retry_after: None,
        };
        assert_eq!(
            err.to_string(),
            "token endpoint sso.example.com answered 503; will retry with backoff"
        );
        let err = TokenError::ResponseTooLarge {
            host: "h".into(),
            limit: 65536,
        };
        assert_eq!(
            err.to_string(),
            "token endpoint h answered with more than 65536 bytes"
        );
        let err = TokenError::Timeout {
            host: "h".into(),
            after: Duration::from_secs(30),
            connecting: false,
        };
        assert_eq!(
            err.to_string(),
            "timed out after 30s waiting for the token endpoint h; will retry"
        );
        let err = TokenError::Timeout {
            host: "h".into(),
            after: Duration::from_millis(300),
            connecting: true,
        };
        assert_eq!(
            err.to_string(),
            "timed out after 300ms connecting to the token endpoint h; will retry"
        );
        let scope = classify_error_response(400, oauth("invalid_scope"), &endpoint());
        assert!(scope.to_string().ends_with("check spec.scopes"), "{scope}");
    }

    #[test]
    fn urls_in_messages_lose_query_and_user_info() {
        let url =
            Url::parse("https://user:pw@sso.example.com:8443/token?secret=x#frag").expect("url");
        assert_eq!(display_url(&url), "https://sso.example.com:8443/token");
        let endpoint = Endpoint::of(&url);
        assert_eq!(endpoint.host, "sso.example.com:8443");
        assert_eq!(endpoint.limiter_key, "sso.example.com:8443");
        assert_eq!(
            Endpoint::of(&Url::parse("https://a.example/t").expect("url")).limiter_key,
            "a.example:443"
        );
    }

    #[test]
    fn refuses_insecure_and_odd_urls() {
        let http = Url::parse("http://localhost:8080/token").expect("url");
        assert!(matches!(
            check_url(&http, false),
            Err(TokenError::InsecureUrl { .. })
        ));
        assert!(check_url(&http, true).is_ok());
        let ftp = Url::parse("ftp://example.com/token").expect("url");
        assert!(matches!(
            check_url(&ftp, true),
            Err(TokenError::UnsupportedUrl { .. })
        ));
        let userinfo = Url::parse("https://id:secret@example.com/token").expect("url");
        let err = check_url(&userinfo, false).expect_err("user info refused");
        assert!(!err.to_string().contains("secret@"), "{err}");
        assert!(
            check_url(
                &Url::parse("https://example.com/token").expect("url"),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn decodes_jwt_claims_without_verifying() {
        let token =
            jwt(&serde_json::json!({"sub": "abc", "exp": 1_700_000_100, "client_id": "id"}));
        let claims = decode_jwt_claims(&token).expect("claims");
        assert_eq!(claims["sub"], "abc");
        assert_eq!(claims["exp"], 1_700_000_100);
    }

    #[test]
    fn opaque_tokens_have_no_claims() {
        assert_eq!(decode_jwt_claims("opaque-token-value"), None);
        assert_eq!(decode_jwt_claims("a.b.c"), None);
        assert_eq!(decode_jwt_claims("a.b.c.d.e"), None);
        let not_object = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(b"[1,2]")
        );
        assert_eq!(decode_jwt_claims(&not_object), None);
    }

    #[test]
    fn padded_jwt_segments_decode_too() {
        let header = base64::engine::general_purpose::URL_SAFE.encode(br#"{"alg":"HS256"}"#);
        let payload = base64::engine::general_purpose::URL_SAFE.encode(br#"{"a":1}"#);
        let claims = decode_jwt_claims(&format!("{header}.{payload}.sig")).expect("claims");
        assert_eq!(claims["a"], 1);
    }

    fn claims(payload: Value) -> Map<String, Value> {
        decode_jwt_claims(&jwt(&payload)).expect("claims")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn lifetime_comes_from_expires_in_first() {
        let claims = claims(serde_json::json!({"exp": now().as_second() + 100}));
        let (at, source) =
            select_expiry(Some(&serde_json::json!(7199)), Some(&claims), now(), HOUR)
                .expect("expiry");
        assert_eq!(source, LifetimeSource::ExpiresIn);
        assert_eq!(at.as_second(), now().as_second() + 7199);
    }

    #[test]
    fn expires_in_may_be_a_numeric_string() {
        let (at, source) =
            select_expiry(Some(&serde_json::json!("900")), None, now(), HOUR).expect("expiry");
        assert_eq!(source, LifetimeSource::ExpiresIn);
        assert_eq!(at.as_second(), now().as_second() + 900);
    }

    #[test]
    fn lifetime_falls_back_to_the_jwt_exp_claim() {
        let claims = claims(serde_json::json!({"exp": now().as_second() + 120}));
        let (at, source) = select_expiry(None, Some(&claims), now(), HOUR).expect("expiry");
        assert_eq!(source, LifetimeSource::JwtExpiry);
        assert_eq!(at.as_second(), now().as_second() + 120);
    }

    #[test]
    fn lifetime_falls_back_to_the_default_without_expires_in_or_exp() {
        let claims = claims(serde_json::json!({"sub": "x"}));
        let (at, source) = select_expiry(None, Some(&claims), now(), HOUR).expect("expiry");
        assert_eq!(source, LifetimeSource::Default);
        assert_eq!(at.as_second(), now().as_second() + 3600);
        let (_, source) = select_expiry(Some(&Value::Null), None, now(), HOUR).expect("expiry");
        assert_eq!(source, LifetimeSource::Default);
    }

    #[test]
    fn unusable_lifetimes_are_errors_not_defaults() {
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!("soon"),
            serde_json::json!(true),
        ] {
            assert!(
                select_expiry(Some(&bad), None, now(), HOUR).is_err(),
                "{bad}"
            );
        }
        let expired = claims(serde_json::json!({"exp": now().as_second() - 1}));
        assert!(select_expiry(None, Some(&expired), now(), HOUR).is_err());
        let valid = claims(serde_json::json!({"exp": now().as_second() + 60}));
        let (_, source) =
            select_expiry(Some(&serde_json::json!(0)), Some(&valid), now(), HOUR).expect("expiry");
        assert_eq!(source, LifetimeSource::JwtExpiry);
    }

    #[test]
    fn absurd_lifetimes_are_clamped() {
        let (at, _) =
            select_expiry(Some(&serde_json::json!(u64::MAX)), None, now(), HOUR).expect("expiry");
        assert_eq!(at, now().checked_add(MAX_LIFETIME).expect("in range"));
    }

    #[test]
    fn basic_auth_form_urlencodes_id_and_secret() {
        let encoded = basic_credentials("my client:1", "p@ss wörd:+/&=%");
        let decoded = String::from_utf8(STANDARD.decode(encoded).expect("base64")).expect("utf8");
        assert_eq!(decoded, "my+client%3A1:p%40ss+w%C3%B6rd%3A%2B%2F%26%3D%25");
        assert_eq!(
            basic_authorization("id", "secret").to_str().expect("ascii"),
            format!("Basic {}", STANDARD.encode("id:secret"))
        );
        assert!(basic_authorization("id", "secret").is_sensitive());
    }

    #[test]
    fn secrets_and_tokens_have_redacting_debug() {
        let secret = ClientSecret::new("s3cr3t-value".into());
        assert_eq!(format!("{secret:?}"), "ClientSecret(<redacted>)");
        assert_eq!(secret.expose_secret(), "s3cr3t-value");
        let token = AccessToken::new("tok-value".into());
        assert_eq!(format!("{token:?}"), "AccessToken(<redacted>, 9 bytes)");
        let credentials = ClientCredentials {
            client_id: "id".into(),
            client_secret: secret,
        };
        let debug = format!("{credentials:?}");
        assert!(debug.contains("id") && !debug.contains("s3cr3t"), "{debug}");
    }

    #[test]
    fn scrubbing_removes_secrets_tokens_and_control_characters() {
        let secrets = Scrubber::new("p@ss word").secrets;
        let token = jwt(&serde_json::json!({"sub": "x"}));
        let text = format!(
            "bad secret p@ss word (p%40ss+word)\nAuthorization: Basic abc123 token {token}\u{7}; Bearer xyz"
        );
        let scrubbed = scrub_text(&text, &secrets, 500);
        assert!(!scrubbed.contains("p@ss"), "{scrubbed}");
        assert!(!scrubbed.contains("p%40ss"), "{scrubbed}");
        assert!(!scrubbed.contains("abc123"), "{scrubbed}");
        assert!(!scrubbed.contains(&token), "{scrubbed}");
        assert!(!scrubbed.contains("xyz"), "{scrubbed}");
        assert!(!scrubbed.chars().any(char::is_control), "{scrubbed}");
        assert!(scrubbed.starts_with("bad secret <redacted>"), "{scrubbed}");
    }

    #[test]
    fn scrubbing_keeps_client_ids_and_truncates_long_descriptions() {
        let id = "6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f";
        assert_eq!(
            scrub_text(&format!("unknown client {id}"), &[], 200),
            format!("unknown client {id}")
        );
        let long = "x ".repeat(300);
        let scrubbed = scrub_text(&long, &[], MAX_DESCRIPTION_CHARS);
        assert_eq!(scrubbed.chars().count(), MAX_DESCRIPTION_CHARS + 1);
        assert!(scrubbed.ends_with('…'));
    }

    #[test]
    fn error_codes_that_do_not_look_like_codes_are_replaced() {
        assert_eq!(sanitize_error_code("invalid_client"), "invalid_client");
        assert_eq!(
            sanitize_error_code("secret is hunter2"),
            "unrecognised_error_code"
        );
    }

    #[test]
    fn scopes_are_joined_by_single_spaces_and_omitted_when_empty() {
        assert_eq!(join_scopes(&[]), None);
        assert_eq!(join_scopes(&["".into(), " ".into()]), None);
        assert_eq!(
            join_scopes(&["a".into(), "b c".into()]),
            Some("a b c".into())
        );
    }

    fn parse(body: &str) -> Result<IssuedToken, TokenError> {
        parse_success(
            body.as_bytes(),
            200,
            now(),
            HOUR,
            &endpoint(),
            &Scrubber::new("secret"),
        )
    }

    #[test]
    fn parses_a_greenlake_token_response() {
        let token = jwt(&serde_json::json!({"client_id": "id", "exp": now().as_second() + 7200}));
        let issued = parse(&format!(
            r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":7199}}"#
        ))
        .expect("token");
        assert_eq!(issued.access_token.expose_secret(), token);
        assert_eq!(issued.token_type, "Bearer");
        assert_eq!(issued.issued_at, now());
        assert_eq!(issued.lifetime(), Duration::from_secs(7199));
        assert_eq!(issued.lifetime_source, LifetimeSource::ExpiresIn);
        assert_eq!(issued.claims.expect("claims")["client_id"], "id");
    }

    #[test]
    fn unusable_success_bodies_are_malformed_responses() {
        for body in [
            "not json",
            "[1]",
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":42}"#,
            r#"{"access_token":"a b"}"#,
            r#"{"access_token":"a\r\nX-Injected: 1"}"#,
            r#"{"access_token":"abc","token_type":"Bearer x"}"#,
        ] {
            let err = parse(body).expect_err(body);
            assert!(
                matches!(err, TokenError::MalformedResponse { .. }),
                "{body}: {err:?}"
            );
            assert!(!err.is_permanent());
        }
    }

    #[test]
    fn a_success_status_carrying_an_oauth_error_is_classified_by_its_code() {
        let err =
            parse(r#"{"error":"invalid_client","error_description":"nope"}"#).expect_err("error");
        assert_eq!(err.reason(), "InvalidClientCredentials");
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_spaces_requests() {
        let limiter = HostRateLimiter::new(NonZeroU32::new(2).expect("non-zero"));
        let start = Instant::now();
        let slots: Vec<Duration> = (0..5)
            .map(|_| limiter.reserve("a:443", start) - start)
            .collect();
        assert_eq!(
            slots,
            [0, 0, 500, 1000, 1500].map(Duration::from_millis).to_vec()
        );
        // Another host has its own budget.
        assert_eq!(limiter.reserve("b:443", start), start);
        // After a quiet period the burst is available again.
        let later = start + Duration::from_secs(10);
        assert_eq!(limiter.reserve("a:443", later), later);
        assert_eq!(limiter.reserve("a:443", later), later);
        assert_eq!(
            limiter.reserve("a:443", later),
            later + Duration::from_millis(500)
        );
    }

    #[test]
    fn default_config_matches_the_documented_values() {
        let config = TokenClientConfig::default();
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.max_response_bytes, 65536);
        assert_eq!(config.default_lifetime, HOUR);
        assert!(config.extra_root_certificates_pem.is_none());
        assert!(!config.allow_insecure_http);
        assert_eq!(config.requests_per_second_per_host, NonZeroU32::new(10));
    }

    #[test]
    fn invalid_ca_bundles_are_reported() {
        let config = TokenClientConfig {
            extra_root_certificates_pem: Some(b"not a certificate".to_vec()),
            ..TokenClientConfig::default()
        };
        let err = TokenClient::new(config).expect_err("invalid bundle");
        assert_eq!(err.reason(), "InvalidSpec");
    }
}
