//! The `dscc-token-operator` command: `run`, `crd`, `token`, `status` and `renew`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dscc_token_operator::api::{AuthMethod, DsccCredential};
use dscc_token_operator::controller::{self, Context, Settings, SystemClock};
use dscc_token_operator::leader::{Election, Leadership, LeaseSettings};
use dscc_token_operator::metrics::Metrics;
use dscc_token_operator::minter::Minter;
use dscc_token_operator::observe::Policy;
use dscc_token_operator::ops_server::{self, Readiness};
use dscc_token_operator::schedule::{RetryPolicy, parse_duration};
use dscc_token_operator::token::rate_limit::{GateConfig, HostGate};
use dscc_token_operator::token::{
    ClientCredentials, ExposeSecret, Grant, GrantKind, SecretString, TokenClient, TokenClientConfig,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::CustomResourceExt;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "dscc-token-operator",
    version,
    about = "Keeps HPE GreenLake / DSCC API access tokens fresh in Kubernetes Secrets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinition YAML.
    Crd,
    /// Exchange a client id and secret for a token once and describe it.
    Token(TokenArgs),
    /// `status` and `renew` (also `kubectl dscc status|renew`, installed as `kubectl-dscc`).
    #[command(flatten)]
    Credentials(dscc_token_operator::cli::Command),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct LogArgs {
    /// Log filter, e.g. info or dscc_token_operator=debug,kube=warn.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Args)]
struct HttpArgs {
    /// Extra PEM CA bundle to trust for the token endpoint (e.g. a TLS-inspecting proxy).
    /// HTTPS_PROXY and NO_PROXY are honoured.
    #[arg(long, env = "EXTRA_CA_FILE")]
    extra_ca_file: Option<PathBuf>,
    /// Allow plain http token URLs. For development only: http exposes the client secret.
    #[arg(long, env = "ALLOW_INSECURE_TOKEN_URL")]
    allow_insecure_token_url: bool,
    /// Timeout for connecting to the token endpoint.
    #[arg(long, default_value = "10s", value_parser = duration)]
    connect_timeout: Duration,
    /// Timeout for a whole token request.
    #[arg(long, default_value = "30s", value_parser = duration)]
    request_timeout: Duration,
    /// Lifetime assumed for tokens that state none (no expires_in, not a JWT).
    #[arg(long, default_value = "1h", value_parser = duration)]
    default_token_lifetime: Duration,
}

#[derive(Args)]
struct RunArgs {
    /// Namespaces to watch (comma-separated or repeated). Default: all namespaces.
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// How many credentials are reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Token requests per second per token endpoint host, across all credentials: the
    /// highest rate; after a 429 it is halved and raised again slowly.
    #[arg(long, default_value_t = NonZeroU32::new(10).expect("non-zero"))]
    token_requests_per_second: NonZeroU32,
    /// Token requests in flight per token endpoint host at most, so that a host that never
    /// answers cannot hold every reconcile.
    #[arg(long, default_value_t = 4)]
    max_requests_in_flight_per_host: usize,
    /// No token is renewed sooner than this after it was issued (a floor for endpoints that
    /// issue tokens of a few seconds).
    #[arg(long, default_value = "30s", value_parser = duration)]
    min_renewal_interval: Duration,
    /// Credentials whose token request would be identical share one token (one request per
    /// renewal for the group). `--share-tokens=false` gives every credential its own.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    share_tokens: bool,
    /// Reconcile only DsccCredentials matching this label selector (e.g. `shard=a`), to
    /// split credentials between several operator Deployments.
    #[arg(long, env = "LABEL_SELECTOR")]
    label_selector: Option<String>,
    /// After SIGTERM, work in flight gets this long to finish before the process exits anyway
    /// (keep it below the Pod's terminationGracePeriodSeconds).
    #[arg(long, default_value = "10s", value_parser = duration)]
    shutdown_timeout: Duration,
    /// Restarts of one workload asked for within this window (credentials renewing together)
    /// become one rollout.
    #[arg(long, default_value = "2s", value_parser = duration)]
    rollout_restart_batch_window: Duration,
    /// First retry delay after a transient failure (doubles up to --retry-max-delay).
    #[arg(long, default_value = "5s", value_parser = duration)]
    retry_initial_delay: Duration,
    /// Longest delay between retries of transient failures.
    #[arg(long, default_value = "5m", value_parser = duration)]
    retry_max_delay: Duration,
    /// First retry delay after a permanent failure such as invalid_client (doubles up to 1h).
    #[arg(long, default_value = "10m", value_parser = duration)]
    permanent_retry_delay: Duration,
    /// How often every credential is looked at even when nothing changed.
    #[arg(long, default_value = "30m", value_parser = duration)]
    resync_interval: Duration,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, env = "HEALTH_ADDRESS", default_value = "0.0.0.0:8081")]
    health_address: SocketAddr,
    /// Reconcile only while holding a Lease, so that several replicas are safe.
    #[arg(long, env = "LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "dscc-token-operator")]
    leader_election_lease_name: String,
    /// How long a Lease is held without renewal; a new leader takes over within this time.
    #[arg(long, default_value = "15s", value_parser = duration)]
    leader_election_lease_duration: Duration,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct TokenArgs {
    /// The token endpoint.
    #[arg(long, env = "DSCC_TOKEN_URL", default_value = dscc_token_operator::api::DEFAULT_TOKEN_URL)]
    token_url: url::Url,
    /// The OAuth 2.0 client id.
    #[arg(long, env = "DSCC_CLIENT_ID")]
    client_id: String,
    /// The client secret. Prefer the environment variable or --client-secret-file: a flag
    /// is visible to other users in the process list.
    #[arg(
        long,
        env = "DSCC_CLIENT_SECRET",
        hide_env_values = true,
        conflicts_with = "client_secret_file"
    )]
    client_secret: Option<String>,
    /// A file holding the client secret.
    #[arg(long)]
    client_secret_file: Option<PathBuf>,
    /// Client authentication method.
    #[arg(long, value_enum, default_value = "client-secret-post")]
    auth_method: AuthMethodArg,
    /// A scope to request (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Also print the access token itself.
    #[arg(long)]
    print_token: bool,
    #[command(flatten)]
    http: HttpArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuthMethodArg {
    ClientSecretPost,
    ClientSecretBasic,
}

impl From<AuthMethodArg> for AuthMethod {
    fn from(arg: AuthMethodArg) -> Self {
        match arg {
            AuthMethodArg::ClientSecretPost => AuthMethod::ClientSecretPost,
            AuthMethodArg::ClientSecretBasic => AuthMethod::ClientSecretBasic,
        }
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    let parsed = parse_duration(text).map_err(|e| e.to_string())?;
    Duration::try_from(parsed).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Installed as `kubectl-dscc`, the binary is the kubectl plugin: `kubectl dscc status`.
    if let Some(code) = dscc_token_operator::cli::plugin_main() {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Crd => print_crd(),
            Command::Run(args) => run(args).await,
            Command::Token(args) => token(args).await,
            Command::Credentials(command) => command.run().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crd() -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(&DsccCredential::crd())?);
    Ok(())
}

fn init_logging(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn token_client_config(http: &HttpArgs) -> anyhow::Result<TokenClientConfig> {
    let extra_root_certificates_pem =
        match &http.extra_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read the CA bundle {}: {e}", path.display())
            })?),
            None => None,
        };
    Ok(TokenClientConfig {
        connect_timeout: http.connect_timeout,
        request_timeout: http.request_timeout,
        default_lifetime: http.default_token_lifetime,
        extra_root_certificates_pem,
        allow_insecure_http: http.allow_insecure_token_url,
        ..TokenClientConfig::default()
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log)?;
    let tokens = TokenClient::new(token_client_config(&args.http)?)?;
    let client = kube::Client::try_default().await?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let policy = Policy {
        retry: RetryPolicy {
            transient_initial: args.retry_initial_delay,
            transient_max: args.retry_max_delay,
            permanent_initial: args.permanent_retry_delay,
            permanent_max: args.permanent_retry_delay.max(Duration::from_secs(3600)),
        },
        allow_insecure_http: args.http.allow_insecure_token_url,
        min_renewal_interval: SignedDuration::try_from(args.min_renewal_interval)?,
        share_tokens: args.share_tokens,
        resync: SignedDuration::try_from(args.resync_interval)?,
    };
    let settings = Settings {
        namespaces: args.namespaces,
        label_selector: args.label_selector,
        concurrency: args.concurrency,
        policy,
        instance: Some(identity.clone()),
        rollout_batch_window: args.rollout_restart_batch_window,
    };
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let metrics_address = ops_server::serve_metrics(args.metrics_address, metrics.clone()).await?;
    let health_address = ops_server::serve_health(args.health_address, readiness.clone()).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %metrics_address,
        %health_address,
        "starting dscc-token-operator"
    );

    // `stop` turns true on SIGTERM or ctrl-c, and when leadership is lost.
    let (stop_sender, mut stop) = tokio::sync::watch::channel(false);
    let stop_sender = Arc::new(stop_sender);
    tokio::spawn({
        let stop_sender = stop_sender.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            stop_sender.send_replace(true);
        }
    });
    let gate = HostGate::new(GateConfig {
        max_rate: args.token_requests_per_second,
        max_in_flight: args.max_requests_in_flight_per_host.max(1),
        ..GateConfig::default()
    });
    let start_controller = |leadership: Leadership| {
        let minter = Arc::new(Minter::new(
            tokens.clone(),
            gate.clone(),
            metrics.clone(),
            leadership.clone(),
            Arc::new(SystemClock),
        ));
        Context::new(
            client.clone(),
            minter,
            settings.clone(),
            metrics.clone(),
            leadership,
            Arc::new(SystemClock),
        )
    };

    let shutdown_timeout = args.shutdown_timeout;
    let bounded = |ctx, stop: tokio::sync::watch::Receiver<bool>, readiness| {
        let mut stopped = stop.clone();
        async move {
            tokio::select! {
                () = controller::run(ctx, stop, readiness) => {}
                () = async {
                    let _ = stopped.wait_for(|stop| *stop).await;
                    tokio::time::sleep(shutdown_timeout).await;
                } => tracing::warn!(
                    timeout = ?shutdown_timeout,
                    "work in flight did not finish in time after the stop; exiting anyway"
                ),
            }
        }
    };

    if !args.leader_election {
        metrics.set_leader(true);
        let ctx = start_controller(Leadership::unconditional());
        bounded(ctx, stop, readiness).await;
        tracing::info!("stopped");
        return Ok(());
    }

    let lease = LeaseSettings {
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_lease_name.clone(),
        identity: identity.clone(),
        duration: args.leader_election_lease_duration,
        field_manager: dscc_token_operator::api::MANAGER.into(),
    };
    let mut election = Election::start(client.clone(), &lease).await?;
    metrics.set_leader(false);
    // A standby replica is healthy and ready; it just does not reconcile.
    readiness.set(true);
    tracing::info!(lease = %lease.name, namespace = %lease.namespace, %identity, "waiting for leadership");
    if !election.acquired(&mut stop).await? {
        election.release().await;
        tracing::info!("stopped before becoming leader");
        return Ok(());
    }
    tracing::info!("became leader; reconciling");
    metrics.set_leader(true);
    readiness.set(false);
    let leadership = election.leadership.clone();
    let lost_watch = tokio::spawn({
        let stop_sender = stop_sender.clone();
        let lost = leadership.lost();
        async move {
            lost.await;
            stop_sender.send_replace(true);
        }
    });
    let ctx = start_controller(leadership.clone());
    bounded(ctx, stop, readiness).await;
    let lost = !leadership.is_leader();
    lost_watch.abort();
    let _ = lost_watch.await;
    drop(leadership);
    metrics.set_leader(false);
    election.release().await;
    if lost {
        anyhow::bail!("lost leadership; exiting so that a fresh process can compete again");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match (&args.client_secret, &args.client_secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        (None, None) => {
            anyhow::bail!("no client secret: set DSCC_CLIENT_SECRET or pass --client-secret-file")
        }
    };
    let credentials = ClientCredentials {
        client_id: args.client_id.trim().to_owned(),
        client_secret: SecretString::from(secret.trim().to_owned()),
    };
    let client = TokenClient::new(token_client_config(&args.http)?)?;
    let grant = Grant {
        token_url: args.token_url.clone(),
        credentials: Some(credentials),
        auth_method: args.auth_method.into(),
        scopes: args.scopes.clone(),
        kind: GrantKind::ClientCredentials,
    };
    let token = client.exchange(&grant, Timestamp::now()).await?;
    println!("token type:  {}", token.token_type);
    println!(
        "lifetime:    {}s (from {:?})",
        token.lifetime().as_secs(),
        token.lifetime_source
    );
    println!("issued at:   {}", token.issued_at);
    println!("expires at:  {}", token.expires_at);
    if let Some(scope) = &token.scope {
        println!("scope:       {scope}");
    }
    if token.refresh_token.is_some() {
        println!("refresh token: offered (not printed)");
    }
    match &token.claims {
        Some(claims) => {
            println!("JWT claims (signature not verified):");
            for (name, value) in dscc_token_operator::token::response::displayable_claims(claims) {
                println!("  {name}: {value}");
            }
        }
        None => println!("the token is not a JWT"),
    }
    if args.print_token {
        println!("access token: {}", token.access_token.expose_secret());
    } else {
        println!("(pass --print-token to print the token itself)");
    }
    Ok(())
}
