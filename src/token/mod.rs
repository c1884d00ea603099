//! The token client: the one place that talks to an OAuth 2.0 token endpoint.
//!
//! It sends one grant (client credentials, a refresh token, or an RFC 8693 token exchange),
//! refuses plain http unless allowed, caps the response size, times out, and classifies every
//! failure ([`TokenError::reason`]). No error message it produces contains the client secret,
//! a token or a refresh token. The per-host gate in [`rate_limit`] is applied by the caller,
//! which decides what to do when a host is paused.

pub mod error;
pub mod rate_limit;
pub(crate) mod redact;
pub mod response;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::jiff::Timestamp;
use reqwest::header::{self, HeaderValue};
pub use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use url::Url;

pub use self::error::TokenError;
use self::redact::{Scrubber, form_urlencode, scrub_text};
pub use self::response::decode_jwt_claims;
use self::response::{
    classify_error_response, parse_oauth_error, parse_success, rate_limit_delay, retry_after,
    system_time,
};
pub use crate::api::AuthMethod;

/// The `User-Agent` sent to the token endpoint.
pub const USER_AGENT: &str = concat!("dscc-token-operator/", env!("CARGO_PKG_VERSION"));
/// RFC 8693 grant type of a token exchange.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `text` without any of `values` (for messages of other servers that may quote what the
/// operator sent, such as an admission webhook's denial of a Secret).
pub fn redact_values(text: &str, values: &[String]) -> String {
    let patterns: Vec<String> = values
        .iter()
        .filter(|v| v.len() >= 8)
        .map(|v| v.to_ascii_lowercase())
        .collect();
    scrub_text(text, &patterns, 1000)
}

/// Longest transport error detail kept in an error message, in characters.
const MAX_DETAIL_CHARS: usize = 300;

/// A client id and its secret, as read from the client Secret. `Debug` shows the id only.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    /// The OAuth 2.0 client id (not secret).
    pub client_id: String,
    /// The OAuth 2.0 client secret.
    pub client_secret: SecretString,
}

/// What the request is made from, besides the client's own authentication.
#[derive(Clone, Debug)]
pub enum GrantKind {
    /// `grant_type=client_credentials` (RFC 6749 section 4.4).
    ClientCredentials,
    /// `grant_type=refresh_token` (RFC 6749 section 6).
    RefreshToken(SecretString),
    /// RFC 8693 token exchange with `subject_token`, an access token.
    TokenExchange {
        /// The subject token.
        subject_token: SecretString,
        /// The `audience` parameter, if any.
        audience: Option<String>,
    },
}

impl GrantKind {
    /// The name of the grant as the status shows it.
    pub fn name(&self) -> &'static str {
        match self {
            GrantKind::ClientCredentials => "ClientCredentials",
            GrantKind::RefreshToken(_) => "RefreshToken",
            GrantKind::TokenExchange { .. } => "TokenExchange",
        }
    }
}

/// One token request: where to send it, who the client is, and the grant.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The token endpoint, e.g. `https://sso.common.cloud.hpe.com/as/token.oauth2`.
    pub token_url: Url,
    /// The client's credentials; `None` for a token exchange authenticated by the subject
    /// token alone (GreenLake's MSP exchange).
    pub credentials: Option<ClientCredentials>,
    /// How the client authenticates: form body or HTTP Basic.
    pub auth_method: AuthMethod,
    /// Scopes to request; sent space-separated, omitted when empty.
    pub scopes: Vec<String>,
    /// What the token is requested with.
    pub kind: GrantKind,
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
        }
    }
}

/// Where the lifetime of an issued token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeSource {
    /// The `expires_in` field of the token response.
    ExpiresIn,
    /// The `exp` claim of the JWT access token (absent or later `expires_in`).
    JwtExpiry,
    /// Neither was present: the configured default lifetime.
    Default,
}

/// A token the endpoint issued, with what is known about its lifetime.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: SecretString,
    /// The token type as sent (`Bearer` in any case); `Bearer` if absent.
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
    /// A refresh token, if the endpoint offered one.
    pub refresh_token: Option<SecretString>,
    /// When the refresh token expires, if the endpoint said.
    pub refresh_expires_at: Option<Timestamp>,
}

impl IssuedToken {
    /// The time between issue and expiry.
    pub fn lifetime(&self) -> Duration {
        Duration::try_from(self.expires_at.duration_since(self.issued_at)).unwrap_or(Duration::ZERO)
    }
}

/// Exchanges grants for tokens. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    config: std::sync::Arc<TokenClientConfig>,
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
            config: std::sync::Arc::new(config),
        })
    }

    /// The HTTP client, with this client's CA trust, proxy and timeouts, for other calls
    /// made with a token (the DSCC API probe).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Whether plain http URLs are accepted.
    pub fn allows_insecure_http(&self) -> bool {
        self.config.allow_insecure_http
    }

    /// Sends one grant; `now`, rounded down to a whole second, becomes the token's
    /// `issued_at`. Whole seconds, because Kubernetes times (the status) hold no fractions and
    /// the Secret and the status must state the same expiry.
    pub async fn exchange(&self, grant: &Grant, now: Timestamp) -> Result<IssuedToken, TokenError> {
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let url = &grant.token_url;
        check_url(url, self.config.allow_insecure_http)?;
        let endpoint = Endpoint::of(url);
        let client_id = grant.credentials.as_ref().map(|c| c.client_id.as_str());
        let secret = grant
            .credentials
            .as_ref()
            .map(|c| c.client_secret.expose_secret());
        let mut request_secrets: Vec<&str> = vec![];
        let mut form: Vec<(&str, &str)> = vec![];
        match &grant.kind {
            GrantKind::ClientCredentials => form.push(("grant_type", "client_credentials")),
            GrantKind::RefreshToken(token) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", token.expose_secret()));
                request_secrets.push(token.expose_secret());
            }
            GrantKind::TokenExchange {
                subject_token,
                audience,
            } => {
                form.push(("grant_type", TOKEN_EXCHANGE_GRANT));
                form.push(("subject_token", subject_token.expose_secret()));
                form.push(("subject_token_type", ACCESS_TOKEN_TYPE));
                form.push(("requested_token_type", ACCESS_TOKEN_TYPE));
                if let Some(audience) = audience {
                    form.push(("audience", audience));
                }
                request_secrets.push(subject_token.expose_secret());
            }
        }
        let scrubber = Scrubber::new(client_id.unwrap_or_default(), secret, &request_secrets);
        let scope = join_scopes(&grant.scopes);
        if let Some(scope) = &scope {
            form.push(("scope", scope));
        }
        let mut builder = self
            .http
            .post(url.clone())
            .header(header::ACCEPT, "application/json");
        match (client_id, secret, grant.auth_method) {
            (Some(id), Some(secret), AuthMethod::ClientSecretPost) => {
                form.push(("client_id", id));
                form.push(("client_secret", secret));
            }
            (Some(id), Some(secret), AuthMethod::ClientSecretBasic) => {
                builder = builder.header(header::AUTHORIZATION, basic_authorization(id, secret));
            }
            // A public client: RFC 6749 section 3.2.1 asks it to name itself.
            (Some(id), None, _) => form.push(("client_id", id)),
            (None, _, _) => {}
        }
        tracing::debug!(host = %endpoint.host, client_id, grant = grant.kind.name(), "requesting a token");
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
                retry_after: retry_after(response.headers(), now_system),
            });
        }

        let limit = self.config.max_response_bytes;
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
                self.config.default_lifetime,
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
                self.config.connect_timeout
            } else {
                self.config.request_timeout
            };
            return TokenError::Timeout {
                host,
                after,
                connecting,
            };
        }
        let detail = scrubber.scrub(&error_chain(err, &[]), MAX_DETAIL_CHARS);
        if err.is_connect() {
            return TokenError::Connect { host, detail };
        }
        TokenError::Transport { host, detail }
    }
}

/// How an endpoint is named in messages and keyed in the host gate.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The URL without query, fragment or user info.
    pub url: String,
    /// Host, plus the port when it is not the scheme's default: how messages name it.
    pub host: String,
    /// The host name alone: the `host` label of the request metrics.
    pub host_name: String,
    /// Host and effective port: the key of the per-host gate.
    pub gate_key: String,
}

impl Endpoint {
    /// The endpoint of `url`.
    pub fn of(url: &Url) -> Self {
        let host_name = url.host_str().unwrap_or_default();
        let host = match url.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_owned(),
        };
        let gate_key = format!("{host_name}:{}", url.port_or_known_default().unwrap_or(0));
        Self {
            url: display_url(url),
            host,
            host_name: host_name.to_owned(),
            gate_key,
        }
    }
}

/// The URL as shown in messages: no user info, query or fragment.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // These fail only for URLs that cannot have user info, which then has none to remove.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Refuses URLs the client must not send credentials to.
pub fn check_url(url: &Url, allow_insecure_http: bool) -> Result<(), TokenError> {
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

/// A reqwest error as text: its cause chain, without the URL, scrubbed.
pub(crate) fn error_chain(err: &reqwest::Error, patterns: &[String]) -> String {
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
    scrub_text(&parts.join(": "), patterns, MAX_DETAIL_CHARS)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_lose_query_and_user_info() {
        let url =
            Url::parse("https://user:pw@sso.example.com:8443/token?secret=x#frag").expect("url");
        assert_eq!(display_url(&url), "https://sso.example.com:8443/token");
        let endpoint = Endpoint::of(&url);
        assert_eq!(endpoint.host, "sso.example.com:8443");
        assert_eq!(endpoint.gate_key, "sso.example.com:8443");
        assert_eq!(
            Endpoint::of(&Url::parse("https://a.example/t").expect("url")).gate_key,
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
    }

    #[test]
    fn basic_auth_form_urlencodes_id_and_secret() {
        let encoded = basic_credentials("my client:1", "p@ss wörd:+/&=%");
        let decoded = String::from_utf8(STANDARD.decode(encoded).expect("base64")).expect("utf8");
        assert_eq!(decoded, "my+client%3A1:p%40ss+w%C3%B6rd%3A%2B%2F%26%3D%25");
        assert!(basic_authorization("id", "secret").is_sensitive());
    }

    #[test]
    fn credentials_show_the_client_id_but_never_the_secret() {
        let credentials = ClientCredentials {
            client_id: "client-4711".into(),
            client_secret: SecretString::from("s3cr3t-value"),
        };
        let debug = format!("{credentials:?}");
        assert!(debug.contains("client-4711"), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        let grant = GrantKind::RefreshToken(SecretString::from("refresh-value-1"));
        assert!(!format!("{grant:?}").contains("refresh-value-1"));
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

    #[test]
    fn invalid_ca_bundles_are_reported_as_invalid_configuration() {
        for pem in [b"not a certificate".to_vec(), Vec::new()] {
            let config = TokenClientConfig {
                extra_root_certificates_pem: Some(pem),
                ..TokenClientConfig::default()
            };
            let err = TokenClient::new(config).expect_err("invalid bundle");
            assert!(matches!(err, TokenError::InvalidConfig { .. }), "{err:?}");
        }
    }
}
