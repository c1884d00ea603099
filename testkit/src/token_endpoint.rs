//! A fault-injecting OAuth 2.0 token endpoint that answers like HPE GreenLake's, for tests
//! and the demo. It listens on 127.0.0.1 only.
//!
//! Self-contained (std, tokio, axum, futures, serde_json, base64, rand, httpdate) so it can be
//! included with `#[path]` from examples and from several test binaries.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The token path of GreenLake's classic endpoint.
pub const TOKEN_PATH: &str = "/as/token.oauth2";
/// RFC 8693's grant type.
const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// How a 429 tells the client when to come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: N`.
    Seconds(u64),
    /// `Retry-After: <HTTP date>`, this far from now.
    HttpDate(Duration),
    /// `ratelimit-reset: N` (no `Retry-After`).
    RateLimitReset(u64),
}

/// A misbehaviour to inject into one response (or all, when sticky).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer with this status and a small HTML body.
    Status(u16),
    /// Answer 429.
    RateLimited { retry_after: RetryAfter },
    /// Answer 200 with a body that is not JSON.
    MalformedJson,
    /// Answer 200 with a body of this many bytes, streamed without a Content-Length.
    Oversized(usize),
    /// Answer 200 with a body of this many bytes and a matching Content-Length.
    OversizedDeclared(usize),
    /// Never answer (until the endpoint shuts down).
    Hang,
    /// Answer 401 `invalid_client`.
    InvalidClient,
    /// Answer 400 `unauthorized_client`.
    UnauthorizedClient,
    /// Answer 400 `invalid_scope`.
    InvalidScope,
    /// Answer 401 `invalid_client` with an `error_description` that echoes the client
    /// secret and Authorization header the client sent, like a careless server would.
    EchoCredentials,
    /// Answer normally but without `expires_in`, with a JWT or an opaque token.
    NoExpiresIn { jwt: bool },
    /// Answer normally but with `"token_type":"bearer"`.
    LowercaseBearer,
    /// Start a response and break the connection before it completes.
    ResetConnection,
    /// Answer with this status, `Content-Type: application/json` and exactly this body (for
    /// hostile answers: garbage in any field, a secret as the error code, ...).
    Body(u16, String),
    /// Answer 400 `invalid_grant` (a spent refresh token, a subject token refused).
    InvalidGrant,
}

/// How the client authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// No client credentials at all.
    None,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Post => "post",
            Self::Basic => "basic",
            Self::None => "none",
        })
    }
}

/// One request as the endpoint saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// When it arrived (monotonic).
    pub received_at: Instant,
    /// When it arrived (wall clock).
    pub received_at_system: SystemTime,
    /// The client id it presented, if any.
    pub client_id: Option<String>,
    /// How the client authenticated.
    pub auth: ClientAuth,
    /// The `grant_type` form field.
    pub grant_type: Option<String>,
    /// The `scope` form field.
    pub scope: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The `Accept` header.
    pub accept: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The fault injected into the answer, if any.
    pub fault: Option<Fault>,
    /// The workspace of a workspace-scoped (or MSP exchange) URL, if the request used one.
    pub workspace: Option<String>,
    /// For a token exchange: the subject token presented.
    pub subject_token: Option<String>,
    /// For a refresh grant: the refresh token presented.
    pub refresh_token: Option<String>,
    /// It arrived while the endpoint had announced a pause (a 429 with Retry-After).
    pub during_pause: bool,
    /// The status answered; `None` while pending or when the endpoint hung up.
    pub status: Option<u16>,
    /// The access token issued, if any.
    pub token: Option<String>,
}

struct Controls {
    clients: HashMap<String, String>,
    lifetime: Duration,
    include_expires_in: bool,
    opaque_tokens: bool,
    token_type: String,
    faults: VecDeque<Fault>,
    sticky: Option<Fault>,
    rate_limit: Option<u32>,
    rate_limit_pause: Duration,
    window: (u64, u32),
    paused_until: Option<Instant>,
    pauses: Vec<(Instant, Duration)>,
    refresh_tokens: bool,
    valid_refresh: HashMap<String, String>,
    accepted_subjects: HashMap<String, Instant>,
    log: Vec<RecordedRequest>,
    log_to_stderr: bool,
}

struct Shared {
    controls: Mutex<Controls>,
    started: Instant,
    issuer: String,
    bytes_streamed: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn controls(&self) -> MutexGuard<'_, Controls> {
        self.controls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn until_shutdown(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error means the sender is gone, which is a shutdown too.
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    }
}

/// A running fake token endpoint. Dropping it stops it.
pub struct TokenEndpoint {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl TokenEndpoint {
    /// Starts an endpoint on 127.0.0.1 with a port chosen by the OS.
    pub async fn start() -> Self {
        Self::start_on_port(0)
            .await
            .expect("bind the fake token endpoint to 127.0.0.1")
    }

    /// Starts an endpoint on 127.0.0.1:`port` (0 lets the OS choose).
    pub async fn start_on_port(port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            controls: Mutex::new(Controls {
                clients: HashMap::new(),
                lifetime: Duration::from_secs(7199),
                include_expires_in: true,
                opaque_tokens: false,
                token_type: "Bearer".to_owned(),
                faults: VecDeque::new(),
                sticky: None,
                rate_limit: None,
                rate_limit_pause: Duration::from_secs(1),
                window: (0, 0),
                paused_until: None,
                pauses: Vec::new(),
                refresh_tokens: false,
                valid_refresh: HashMap::new(),
                accepted_subjects: HashMap::new(),
                log: Vec::new(),
                log_to_stderr: false,
            }),
            started: Instant::now(),
            issuer: format!("http://{addr}"),
            bytes_streamed: AtomicU64::new(0),
            shutdown,
        });
        let app = Router::new()
            .route(TOKEN_PATH, post(token))
            .route(
                "/authorization/v2/oauth2/{workspace}/token",
                post(workspace_token),
            )
            .with_state(shared.clone());
        let graceful = {
            let shared = shared.clone();
            async move { shared.until_shutdown().await }
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await;
        });
        Ok(Self {
            addr,
            shared,
            stop,
            server: Some(server),
        })
    }

    /// The address the endpoint listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token URL, e.g. `http://127.0.0.1:PORT/as/token.oauth2`.
    pub fn url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr)
    }

    /// The workspace-scoped token URL of the newer GreenLake endpoint.
    pub fn workspace_url(&self, workspace: &str) -> String {
        format!(
            "http://{}/authorization/v2/oauth2/{workspace}/token",
            self.addr
        )
    }

    /// Adds a client or replaces its secret.
    pub fn set_client(&self, client_id: &str, client_secret: &str) {
        self.shared
            .controls()
            .clients
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    /// Removes a client; its requests get `invalid_client` from now on.
    pub fn remove_client(&self, client_id: &str) {
        self.shared.controls().clients.remove(client_id);
    }

    /// The lifetime of tokens issued from now on (whole seconds; at least 1 s).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.shared.controls().lifetime = lifetime;
    }

    /// Whether responses carry `expires_in` (default true).
    pub fn set_include_expires_in(&self, include: bool) {
        self.shared.controls().include_expires_in = include;
    }

    /// Issue opaque tokens instead of JWTs (default false).
    pub fn set_opaque_tokens(&self, opaque: bool) {
        self.shared.controls().opaque_tokens = opaque;
    }

    /// The `token_type` of successful responses (default `Bearer`).
    pub fn set_token_type(&self, token_type: &str) {
        self.shared.controls().token_type = token_type.to_owned();
    }

    /// Queues a fault for the next request that is not rate limited.
    pub fn push_fault(&self, fault: Fault) {
        self.shared.controls().faults.push_back(fault);
    }

    /// Applies a fault to every request (after queued ones) until cleared with `None`.
    pub fn set_sticky_fault(&self, fault: Option<Fault>) {
        self.shared.controls().sticky = fault;
    }

    /// Drops queued faults and the sticky fault.
    pub fn clear_faults(&self) {
        let mut controls = self.shared.controls();
        controls.faults.clear();
        controls.sticky = None;
    }

    /// Answers 429 (`Retry-After: 1`) to requests beyond `per_second` in a second.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.set_rate_limit_with_pause(per_second, Duration::from_secs(1));
    }

    /// Answers 429 with `Retry-After: <pause>` to requests beyond `per_second` in a second,
    /// and to every request inside a pause it announced; records each pause.
    pub fn set_rate_limit_with_pause(&self, per_second: Option<u32>, pause: Duration) {
        let mut controls = self.shared.controls();
        controls.rate_limit = per_second;
        controls.rate_limit_pause = pause;
    }

    /// Every pause announced by the rate limit: when, and how long.
    pub fn pauses(&self) -> Vec<(Instant, Duration)> {
        self.shared.controls().pauses.clone()
    }

    /// Whether successful client-credentials answers carry a refresh token (default false).
    /// Each refresh token works once: a refresh answer carries a new one.
    pub fn set_refresh_tokens(&self, offer: bool) {
        self.shared.controls().refresh_tokens = offer;
    }

    /// Makes every refresh token issued so far invalid (`invalid_grant` from now on).
    pub fn invalidate_refresh_tokens(&self) {
        self.shared.controls().valid_refresh.clear();
    }

    /// Accepts `token` as the subject of a token exchange (RFC 8693) until `valid_for` ends,
    /// besides the tokens this endpoint issued itself.
    pub fn accept_subject_token(&self, token: &str, valid_for: Duration) {
        self.shared
            .controls()
            .accepted_subjects
            .insert(token.to_owned(), Instant::now() + valid_for);
    }

    /// Logs each request (client id, auth method, outcome; never secrets) to stderr.
    pub fn set_log_to_stderr(&self, enabled: bool) {
        self.shared.controls().log_to_stderr = enabled;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.controls().log.clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.shared.controls().log.len()
    }

    /// Every access token issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .controls()
            .log
            .iter()
            .filter_map(|request| request.token.clone())
            .collect()
    }

    /// Body bytes handed to the connection by `Oversized` faults so far.
    pub fn oversized_bytes_streamed(&self) -> u64 {
        self.shared.bytes_streamed.load(Ordering::Relaxed)
    }

    /// Stops the endpoint and waits (briefly) until it has stopped.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn workspace_token(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(workspace): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(shared, Some(workspace), headers, body).await
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(shared, None, headers, body).await
}

/// The token handler: records the request, applies a fault, else authenticates and issues.
async fn handle(
    shared: Arc<Shared>,
    workspace: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Instant::now();
    let form = parse_form(&body);
    let presented = Presented::from(&headers, &form);
    let header_text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let (index, verdict) = {
        let mut controls = shared.controls();
        let during_pause = controls
            .paused_until
            .is_some_and(|until| received_at < until);
        let verdict = if during_pause || over_rate_limit(&mut controls, shared.started, received_at)
        {
            if !during_pause {
                let pause = controls.rate_limit_pause;
                controls.paused_until = Some(received_at + pause);
                controls.pauses.push((received_at, pause));
            }
            Verdict::RateLimitedBySetting(controls.rate_limit_pause)
        } else {
            match controls
                .faults
                .pop_front()
                .or_else(|| controls.sticky.clone())
            {
                Some(fault) => Verdict::Fault(fault),
                None => Verdict::Normal,
            }
        };
        controls.log.push(RecordedRequest {
            received_at,
            received_at_system: SystemTime::now(),
            client_id: presented.client_id.clone(),
            auth: presented.auth,
            grant_type: form.get("grant_type").cloned(),
            scope: form.get("scope").cloned(),
            user_agent: header_text(header::USER_AGENT),
            accept: header_text(header::ACCEPT),
            content_type: header_text(header::CONTENT_TYPE),
            fault: match &verdict {
                Verdict::Fault(fault) => Some(fault.clone()),
                _ => None,
            },
            workspace: workspace.clone(),
            subject_token: form.get("subject_token").cloned(),
            refresh_token: form.get("refresh_token").cloned(),
            during_pause,
            status: None,
            token: None,
        });
        (controls.log.len() - 1, verdict)
    };

    let (response, token) = answer(&shared, verdict, &presented, &form, workspace.as_deref()).await;

    let mut controls = shared.controls();
    let status = response.status().as_u16();
    if let Some(entry) = controls.log.get_mut(index) {
        entry.status = Some(status);
        entry.token = token;
        if controls.log_to_stderr {
            let entry = &controls.log[index];
            eprintln!(
                "token_endpoint: client_id={} auth={} fault={} status={}",
                entry.client_id.as_deref().unwrap_or("-"),
                entry.auth,
                entry
                    .fault
                    .as_ref()
                    .map_or("none".to_owned(), |fault| format!("{fault:?}")),
                status,
            );
        }
    }
    response
}

enum Verdict {
    RateLimitedBySetting(Duration),
    Fault(Fault),
    Normal,
}

fn over_rate_limit(controls: &mut Controls, started: Instant, now: Instant) -> bool {
    let Some(limit) = controls.rate_limit else {
        return false;
    };
    let second = now.duration_since(started).as_secs();
    if controls.window.0 == second {
        controls.window.1 += 1;
    } else {
        controls.window = (second, 1);
    }
    controls.window.1 > limit
}

/// The client credentials a request presented.
struct Presented {
    client_id: Option<String>,
    client_secret: Option<String>,
    auth: ClientAuth,
    authorization: Option<String>,
}

impl Presented {
    fn from(headers: &HeaderMap, form: &HashMap<String, String>) -> Self {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let basic = authorization
            .as_deref()
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
            .and_then(|decoded| String::from_utf8(decoded).ok())
            .and_then(|decoded| {
                let (id, secret) = decoded.split_once(':')?;
                Some((form_decode(id), form_decode(secret)))
            });
        match basic {
            Some((id, secret)) => Self {
                client_id: Some(id),
                client_secret: Some(secret),
                auth: ClientAuth::Basic,
                authorization,
            },
            None => {
                let client_id = form.get("client_id").cloned();
                let auth = if client_id.is_some() {
                    ClientAuth::Post
                } else {
                    ClientAuth::None
                };
                Self {
                    client_id,
                    client_secret: form.get("client_secret").cloned(),
                    auth,
                    authorization,
                }
            }
        }
    }
}

async fn answer(
    shared: &Arc<Shared>,
    verdict: Verdict,
    presented: &Presented,
    form: &HashMap<String, String>,
    workspace: Option<&str>,
) -> (Response, Option<String>) {
    let fault = match verdict {
        Verdict::RateLimitedBySetting(pause) => {
            return (
                rate_limited(&RetryAfter::Seconds(pause.as_secs().max(1))),
                None,
            );
        }
        Verdict::Fault(fault) => Some(fault),
        Verdict::Normal => None,
    };
    let mut shape = TokenShape::from(&shared.controls());
    match fault {
        None => {}
        Some(Fault::Delay(delay)) => {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.until_shutdown() => return (plain(503, "shutting down"), None),
            }
        }
        Some(Fault::Hang) => {
            shared.until_shutdown().await;
            return (plain(503, "shutting down"), None);
        }
        Some(Fault::Status(status)) => {
            return (
                plain(
                    status,
                    &format!("<html><body><h1>{status}</h1></body></html>"),
                ),
                None,
            );
        }
        Some(Fault::RateLimited { retry_after }) => return (rate_limited(&retry_after), None),
        Some(Fault::MalformedJson) => {
            return (
                response(
                    200,
                    "application/json",
                    Body::from(r#"{"access_token": "abc", "token_type": "#),
                ),
                None,
            );
        }
        Some(Fault::Oversized(size)) => return (oversized(shared, size, false), None),
        Some(Fault::OversizedDeclared(size)) => return (oversized(shared, size, true), None),
        Some(Fault::InvalidClient) => {
            return (
                oauth_error(
                    401,
                    "invalid_client",
                    "Invalid client or client credentials.",
                    presented,
                ),
                None,
            );
        }
        Some(Fault::UnauthorizedClient) => {
            return (
                oauth_error(
                    400,
                    "unauthorized_client",
                    "The client is not authorized to use the client_credentials grant type.",
                    presented,
                ),
                None,
            );
        }
        Some(Fault::InvalidScope) => {
            return (
                oauth_error(
                    400,
                    "invalid_scope",
                    "The requested scope is invalid.",
                    presented,
                ),
                None,
            );
        }
        Some(Fault::EchoCredentials) => {
            let description = format!(
                "client {} sent client_secret={} with Authorization: {}",
                presented.client_id.as_deref().unwrap_or("-"),
                presented.client_secret.as_deref().unwrap_or("-"),
                presented.authorization.as_deref().unwrap_or("-"),
            );
            return (
                oauth_error(401, "invalid_client", &description, presented),
                None,
            );
        }
        Some(Fault::Body(status, body)) => {
            return (response(status, "application/json", Body::from(body)), None);
        }
        Some(Fault::InvalidGrant) => {
            return (
                oauth_error(
                    400,
                    "invalid_grant",
                    "The grant is invalid or expired.",
                    presented,
                ),
                None,
            );
        }
        Some(Fault::NoExpiresIn { jwt }) => {
            shape.include_expires_in = false;
            shape.opaque = !jwt;
        }
        Some(Fault::LowercaseBearer) => shape.token_type = "bearer".to_owned(),
        Some(Fault::ResetConnection) => {
            let broken = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "fault injected: connection reset",
                ))
            });
            return (
                response(200, "application/json", Body::from_stream(broken)),
                None,
            );
        }
    }

    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    let known = {
        let controls = shared.controls();
        match (&presented.client_id, &presented.client_secret) {
            (Some(id), Some(secret)) => controls.clients.get(id) == Some(secret),
            _ => false,
        }
    };
    match grant {
        "client_credentials" => {}
        "refresh_token" => {
            let holder = form
                .get("refresh_token")
                .and_then(|token| shared.controls().valid_refresh.remove(token));
            if holder.is_none() || holder != presented.client_id || !known {
                return (
                    oauth_error(
                        400,
                        "invalid_grant",
                        "Refresh token is invalid or expired.",
                        presented,
                    ),
                    None,
                );
            }
        }
        EXCHANGE_GRANT => {
            let subject = form.get("subject_token").cloned().unwrap_or_default();
            let accepted = {
                let controls = shared.controls();
                let issued = controls
                    .log
                    .iter()
                    .any(|r| r.token.as_deref() == Some(subject.as_str()));
                let trusted = controls
                    .accepted_subjects
                    .get(&subject)
                    .is_some_and(|until| Instant::now() < *until);
                issued || trusted
            };
            let typed = form.get("subject_token_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:token-type:access_token");
            // An exchange is authenticated by the client, if it presents credentials, or
            // else by the subject token alone (GreenLake's MSP exchange).
            let client_ok = presented.client_secret.is_none() || known;
            if !accepted || !typed || !client_ok {
                return (
                    oauth_error(400, "invalid_grant", "Subject token is invalid.", presented),
                    None,
                );
            }
            let client_id = presented
                .client_id
                .clone()
                .unwrap_or_else(|| "msp-exchange".into());
            let token = shape.mint(&shared.issuer, &client_id, form.get("scope"), workspace);
            let mut body = json!({
                "access_token": token,
                "token_type": shape.token_type,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            });
            if shape.include_expires_in {
                body["expires_in"] = json!(shape.lifetime_seconds());
            }
            return (
                response(200, "application/json", Body::from(body.to_string())),
                Some(token),
            );
        }
        _ => {
            return (
                oauth_error(
                    400,
                    "unsupported_grant_type",
                    "Only client_credentials, refresh_token and token exchange are supported.",
                    presented,
                ),
                None,
            );
        }
    }
    if !known {
        return (
            oauth_error(
                401,
                "invalid_client",
                "Invalid client or client credentials.",
                presented,
            ),
            None,
        );
    }
    let client_id = presented.client_id.as_deref().unwrap_or_default();
    let token = shape.mint(&shared.issuer, client_id, form.get("scope"), workspace);
    let mut body = json!({"access_token": token, "token_type": shape.token_type});
    if shape.include_expires_in {
        body["expires_in"] = json!(shape.lifetime_seconds());
    }
    let offer_refresh = shared.controls().refresh_tokens;
    if offer_refresh {
        let refresh = format!("rt-{}", random_text(40));
        shared
            .controls()
            .valid_refresh
            .insert(refresh.clone(), client_id.to_owned());
        body["refresh_token"] = json!(refresh);
        body["refresh_expires_in"] = json!(1800);
    }
    (
        response(200, "application/json", Body::from(body.to_string())),
        Some(token),
    )
}

/// What a successful answer looks like.
struct TokenShape {
    lifetime: Duration,
    include_expires_in: bool,
    opaque: bool,
    token_type: String,
}

impl TokenShape {
    fn from(controls: &Controls) -> Self {
        Self {
            lifetime: controls.lifetime,
            include_expires_in: controls.include_expires_in,
            opaque: controls.opaque_tokens,
            token_type: controls.token_type.clone(),
        }
    }

    fn lifetime_seconds(&self) -> u64 {
        self.lifetime.as_secs().max(1)
    }

    /// A fresh token: a JWT-shaped string (or an opaque one) with a random component, so
    /// every value is unique and can be searched for in logs.
    fn mint(
        &self,
        issuer: &str,
        client_id: &str,
        scope: Option<&String>,
        workspace: Option<&str>,
    ) -> String {
        if self.opaque {
            return format!("opaque-{}", random_text(40));
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut claims = json!({
            "iss": issuer,
            "sub": client_id,
            "aud": "fake-greenlake",
            "client_id": client_id,
            "iat": iat,
            "exp": iat + self.lifetime_seconds(),
            "jti": random_text(32),
        });
        if let Some(scope) = scope {
            claims["scope"] = Value::from(scope.as_str());
        }
        if let Some(workspace) = workspace {
            claims["workspace"] = Value::from(workspace);
        }
        let header =
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"fake-token-endpoint","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signature = URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 32]>());
        format!("{header}.{payload}.{signature}")
    }
}

fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn response(status: u16, content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(status: u16, text: &str) -> Response {
    response(status, "text/html", Body::from(text.to_owned()))
}

fn oauth_error(status: u16, error: &str, description: &str, presented: &Presented) -> Response {
    let body = json!({"error": error, "error_description": description}).to_string();
    let mut response = response(status, "application/json", Body::from(body));
    if status == 401 && presented.auth == ClientAuth::Basic {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="fake-greenlake""#),
        );
    }
    response
}

fn rate_limited(retry_after: &RetryAfter) -> Response {
    let mut response = response(
        429,
        "application/json",
        Body::from(r#"{"error":"rate_limited","error_description":"Too many requests"}"#),
    );
    let (name, value) = match retry_after {
        RetryAfter::Seconds(seconds) => (header::RETRY_AFTER, seconds.to_string()),
        RetryAfter::HttpDate(after) => (
            header::RETRY_AFTER,
            httpdate::fmt_http_date(SystemTime::now() + *after),
        ),
        RetryAfter::RateLimitReset(seconds) => (
            header::HeaderName::from_static("ratelimit-reset"),
            seconds.to_string(),
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// A 200 whose body is `size` bytes of JSON-looking padding, produced lazily so that a client
/// that stops reading also stops the server from producing more. After the first chunks it
/// paces itself (1 ms per 64 KiB, so 10 MiB still takes well under a second): without that,
/// loopback socket buffers would swallow megabytes before the client's hang-up arrives, and
/// `oversized_bytes_streamed` could not tell a client that stopped early from one that did not.
fn oversized(shared: &Arc<Shared>, size: usize, declare_length: bool) -> Response {
    const CHUNK: usize = 64 * 1024;
    const UNPACED_BYTES: usize = 2 * CHUNK;
    let produced = shared.clone();
    let stream = futures::stream::unfold(0usize, move |sent| {
        let produced = produced.clone();
        async move {
            if sent >= size {
                return None;
            }
            if sent >= UNPACED_BYTES {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let len = CHUNK.min(size - sent);
            produced
                .bytes_streamed
                .fetch_add(len as u64, Ordering::Relaxed);
            Some((
                Ok::<Bytes, std::io::Error>(Bytes::from(vec![b' '; len])),
                sent + len,
            ))
        }
    });
    let mut response = response(200, "application/json", Body::from_stream(stream));
    if declare_length {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size as u64));
    }
    response
}

/// Parses an `application/x-www-form-urlencoded` body.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
        .collect()
}

/// Decodes one form-urlencoded component (`+` is a space, `%XX` a byte).
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        decoded.push(byte);
                        i += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
