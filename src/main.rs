//! The `dscc-token-operator` command: `run`, `crd` and `token`.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dscc_token_operator::api::{AuthMethod, DsccCredential};
use dscc_token_operator::controller::{self, Context, Settings};
use dscc_token_operator::schedule::{RetryPolicy, parse_duration};
use dscc_token_operator::token::{
    ClientCredentials, ClientSecret, TokenClient, TokenClientConfig, TokenRequest,
};
use k8s_openapi::jiff::Timestamp;
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
    /// Token requests per second per token endpoint host, across all credentials.
    #[arg(long, default_value_t = NonZeroU32::new(10).expect("non-zero"))]
    token_requests_per_second: NonZeroU32,
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

fn token_client_config(
    http: &HttpArgs,
    requests_per_second: Option<NonZeroU32>,
) -> anyhow::Result<TokenClientConfig> {
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
        requests_per_second_per_host: requests_per_second,
        ..TokenClientConfig::default()
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log)?;
    let tokens = TokenClient::new(token_client_config(
        &args.http,
        Some(args.token_requests_per_second),
    )?)?;
    let client = kube::Client::try_default().await?;
    let settings = Settings {
        namespaces: args.namespaces,
        concurrency: args.concurrency,
        retry: RetryPolicy {
            transient_initial: args.retry_initial_delay,
            transient_max: args.retry_max_delay,
            permanent_initial: args.permanent_retry_delay,
            permanent_max: args.permanent_retry_delay.max(Duration::from_secs(3600)),
        },
        allow_insecure_http: args.http.allow_insecure_token_url,
        resync: args.resync_interval,
        instance: std::env::var("POD_NAME").ok(),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "starting dscc-token-operator"
    );
    controller::run(Arc::new(Context::new(client, tokens, settings))).await;
    tracing::info!("stopped");
    Ok(())
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
        client_secret: ClientSecret::new(secret.trim().to_owned()),
    };
    let client = TokenClient::new(token_client_config(&args.http, None)?)?;
    let request = TokenRequest {
        token_url: &args.token_url,
        credentials: &credentials,
        auth_method: args.auth_method.into(),
        scopes: &args.scopes,
    };
    let token = client.exchange(&request, Timestamp::now()).await?;
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
    match &token.claims {
        Some(claims) => {
            println!("JWT claims (signature not verified):");
            for (name, value) in claims {
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
