//! `make bench`: how the operator does with many credentials, measured from outside.
//!
//! ```text
//! cargo build --release --bin dscc-token-operator --example bench
//! cargo run --release --example bench -- --credentials 1000
//! ```
//!
//! Starts its own local control plane (`testenv/cluster.sh`, stopped at the end and by a
//! watchdog if this process dies), an in-process fake token endpoint, and the release operator
//! as its own process. Then, in phases: creates N credentials with their client Secrets and
//! times them to Ready; watches a quiet minute; renews short-lived tokens; restarts the
//! operator with and without many unrelated Secrets. Prints a table and writes JSON.
//!
//! How API requests are attributed: the operator runs as its own ServiceAccount, and one
//! FlowSchema per (verb, resource) matches only that ServiceAccount (priority level `exempt`,
//! so nothing is queued). `apiserver_flowcontrol_dispatched_requests_total{flow_schema}`
//! then counts exactly the operator's requests by verb and resource. The totals of
//! `apiserver_request_total` (every client) are recorded as well; minus the writes this bench
//! itself made (it counts them) they give a second figure for the operator's writes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use dscc_testkit::token_endpoint::TokenEndpoint;
use dscc_token_operator::api::DsccCredential;
use dscc_token_operator::schedule::parse_duration;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{Value, json};

const SET_LABEL: &str = "bench.dscc.io/set";
const CREATE_NS: &str = "bench-create";
const RENEW_NS: &str = "bench-renew";
const UNRELATED_NS: &str = "bench-unrelated";
const SYSTEM_NS: &str = "dscc-bench-system";
const OPERATOR_SA: &str = "dscc-token-operator";
const FLOW_PREFIX: &str = "dscc-bench-op-";
const MIB: f64 = 1024.0 * 1024.0;

/// Measures the operator at scale on a local control plane.
#[derive(Debug, Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Credentials (with one client Secret each) created at once.
    #[arg(long, default_value_t = 1000)]
    credentials: usize,
    /// Create requests the bench keeps in flight.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// The operator's --concurrency.
    #[arg(long, default_value_t = 32)]
    concurrency: u16,
    /// The operator's --token-requests-per-second.
    #[arg(long, default_value_t = 100)]
    token_requests_per_second: u32,
    /// Another flag for `dscc-token-operator run` (repeatable), e.g. --operator-arg=--log-level=warn.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// How long to watch the quiet operator after all are Ready (0s skips).
    #[arg(long, default_value = "60s", value_parser = duration)]
    steady: Duration,
    /// Credentials with short-lived tokens for the renewal phase (0 skips it).
    #[arg(long, default_value_t = 100)]
    renewal_credentials: usize,
    /// Token lifetime in the renewal phase.
    #[arg(long, default_value = "20s", value_parser = duration)]
    renewal_lifetime: Duration,
    /// How long renewals are observed.
    #[arg(long, default_value = "120s", value_parser = duration)]
    renewal_window: Duration,
    /// Unrelated Secrets for the memory comparison (0 skips it).
    #[arg(long, default_value_t = 20000)]
    unrelated_secrets: usize,
    /// Data bytes of each unrelated Secret.
    #[arg(long, default_value_t = 8192)]
    unrelated_secret_bytes: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// The operator binary; default: dscc-token-operator next to this example's directory.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Multiplies every timeout.
    #[arg(long, default_value_t = 1.0)]
    timeout_scale: f64,
}

fn duration(text: &str) -> Result<Duration, String> {
    // "0s" (skip a phase) is not a duration the operator would accept.
    if text
        .trim_start_matches('0')
        .chars()
        .all(|c| c.is_ascii_alphabetic())
    {
        return Ok(Duration::ZERO);
    }
    let parsed = parse_duration(text).map_err(|e| e.to_string())?;
    Duration::try_from(parsed).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut guard = Guard::default();
    let result = runtime.block_on(async {
        tokio::select! {
            result = bench(&args, &mut guard) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Stop the operator and the control plane before the runtime goes (also on failure).
    guard.stop();
    drop(runtime);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What must be stopped however the bench ends.
#[derive(Default)]
struct Guard {
    operator: Option<OperatorProcess>,
    cluster_dir: Option<PathBuf>,
    keep_cluster_dir: bool,
}

impl Guard {
    fn stop(&mut self) {
        if let Some(mut operator) = self.operator.take() {
            operator.stop();
        }
        if let Some(dir) = self.cluster_dir.take() {
            say(&format!("stopping the control plane in {}", dir.display()));
            let _ = Command::new(repo().join("testenv/cluster.sh"))
                .arg("down")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status();
            if !self.keep_cluster_dir {
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                say(&format!(
                    "control plane logs kept in {}/logs",
                    dir.display()
                ));
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn repo() -> &'static Path {
    dscc_testkit::repo()
}

fn say(text: &str) {
    eprintln!("bench: {text}");
}

/// The whole benchmark.
async fn bench(args: &Args, guard: &mut Guard) -> anyhow::Result<()> {
    let started = Instant::now();
    let out_dir = args
        .out
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir)?;
    let operator_bin = match &args.operator {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot locate the target directory")?
            .join("dscc-token-operator"),
    };
    if !operator_bin.is_file() {
        bail!(
            "no operator binary at {}; run `cargo build --release --bin dscc-token-operator` \
             (make bench does)",
            operator_bin.display()
        );
    }
    let load_before = loadavg();
    say(&format!(
        "{} credentials, {} CPUs, load average {load_before}",
        args.credentials,
        cpus()
    ));

    // The control plane.
    let cache = std::env::var_os("DSCC_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/dscc-token-operator"));
    let cluster_dir = cache
        .join("bench")
        .join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&cluster_dir)?;
    guard.cluster_dir = Some(cluster_dir.clone());
    guard.keep_cluster_dir = true;
    say("starting the local control plane (testenv/cluster.sh up)");
    let up = Command::new(repo().join("testenv/cluster.sh"))
        .arg("up")
        .arg(&cluster_dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !up.status.success() {
        bail!(
            "the control plane did not start; see its logs in {}/logs",
            cluster_dir.display()
        );
    }
    let env = read_env(&cluster_dir.join("env"));
    let admin = client_from(&PathBuf::from(
        env.get("KUBECONFIG").context("no KUBECONFIG in env")?,
    ))
    .await?;

    // Namespaces, the operator's identity, and the FlowSchemas that count its requests.
    for ns in [SYSTEM_NS, CREATE_NS, RENEW_NS, UNRELATED_NS] {
        create_namespace(&admin, ns).await?;
    }
    let operator_kubeconfig = operator_identity(&admin, &env, &cluster_dir).await?;
    let flows = install_flow_schemas(&admin).await?;
    let operator_client = client_from(&operator_kubeconfig).await?;
    check_attribution(&admin, &operator_client).await?;
    drop(operator_client);

    // Token endpoints: long-lived tokens for the bulk, short-lived ones for renewals.
    let bulk = TokenEndpoint::start().await;
    let short = TokenEndpoint::start().await;
    short.set_lifetime(args.renewal_lifetime);
    for i in 0..args.credentials {
        bulk.set_client(&client_id("bulk", i), &client_secret(i));
    }
    for i in 0..args.renewal_credentials {
        short.set_client(&client_id("renew", i), &client_secret(i));
    }

    let probe = Probe {
        admin: admin.clone(),
        flows,
        cluster_dir: cluster_dir.clone(),
        bench_writes: Arc::new(Mutex::new(BTreeMap::new())),
    };
    let tracker = Tracker::start(admin.clone());
    let operator_flags = operator_flags(args);
    let mut results = Results::new(args, &operator_bin, &operator_flags, &load_before);

    // Phase 1: creation.
    let operator = OperatorProcess::start(
        &operator_bin,
        &operator_flags,
        &operator_kubeconfig,
        &out_dir.join("operator-1.log"),
    )?;
    let operator = guard.operator.insert(operator);
    operator
        .wait_ready(scaled(args, Duration::from_secs(60)))
        .await?;
    let ready_timeout = scaled(
        args,
        // Three times what the token rate limit allows, and at least 60 ms per credential: on
        // two cores the API server manages about 60 credentials a second at 1000, fewer at 10000.
        Duration::from_secs(90)
            + Duration::from_secs_f64(
                args.credentials as f64
                    * (3.0 / f64::from(args.token_requests_per_second)).max(0.06),
            ),
    );
    say(&format!(
        "phase 1: creating {} credentials and their client Secrets, {} at a time (timeout {}s)",
        args.credentials,
        args.create_concurrency,
        ready_timeout.as_secs()
    ));
    let before = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
    operator.reset_peak_rss();
    let creation = create_credentials(
        &admin,
        &probe,
        CREATE_NS,
        "bulk",
        args.credentials,
        &bulk.url(),
        args.create_concurrency,
    )
    .await?;
    let all_ready = tracker
        .wait_all_ready(CREATE_NS, args.credentials, ready_timeout)
        .await;
    let after = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
    let phase = probe.phase("create", &before, &after);
    let latencies = tracker.ready_latencies(CREATE_NS, &creation.started_at);
    results.creation(args, &creation, all_ready, &latencies, &phase);

    // Phase 2: steady state.
    settle(operator, scaled(args, Duration::from_secs(60))).await;
    if !args.steady.is_zero() {
        say(&format!(
            "phase 2: steady state, watching for {}s",
            args.steady.as_secs()
        ));
        let before = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
        tokio::time::sleep(args.steady).await;
        let after = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
        let phase = probe.phase("steady", &before, &after);
        results.steady(&phase);
    }

    // Phase 3: renewals.
    if args.renewal_credentials > 0 && !args.renewal_window.is_zero() {
        say(&format!(
            "phase 3: {} credentials with {}s tokens, renewals observed for {}s",
            args.renewal_credentials,
            args.renewal_lifetime.as_secs(),
            args.renewal_window.as_secs()
        ));
        let creation = create_credentials(
            &admin,
            &probe,
            RENEW_NS,
            "renew",
            args.renewal_credentials,
            &short.url(),
            args.create_concurrency,
        )
        .await?;
        let ready = tracker
            .wait_all_ready(
                RENEW_NS,
                args.renewal_credentials,
                scaled(args, Duration::from_secs(60)),
            )
            .await;
        if ready.is_none() {
            say("not all renewal credentials became Ready; the renewal figures are partial");
        }
        drop(creation);
        let before = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
        let window_start = Instant::now();
        tokio::time::sleep(args.renewal_window).await;
        let window_end = Instant::now();
        let after = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
        let phase = probe.phase("renewal", &before, &after);
        let renewals = tracker.renewals(RENEW_NS, window_start, window_end);
        let requests: Vec<_> = short
            .requests()
            .into_iter()
            .filter(|r| r.received_at >= window_start && r.received_at < window_end)
            .collect();
        let lateness = tracker.lateness(RENEW_NS, "renew", &requests);
        results.renewal(renewals, requests.len(), &lateness, &phase);
        // Stop the renewals so that they do not disturb the memory phase.
        let credentials: Api<DynamicObject> =
            Api::namespaced_with(admin.clone(), RENEW_NS, &credential_resource());
        credentials
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        probe.count_bench_write("deletecollection", "dscccredentials", 1);
        // The garbage collector deletes their target Secrets; let it finish first.
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), RENEW_NS);
        let selector = "app.kubernetes.io/managed-by=dscc-token-operator";
        let deadline = Instant::now() + scaled(args, Duration::from_secs(60));
        while Instant::now() < deadline {
            let left = secrets
                .list_metadata(&ListParams::default().labels(selector))
                .await?;
            if left.items.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    results.peak_rss_first_run(operator.peak_rss_bytes());

    // Phase 4: memory at start-up, without and with unrelated Secrets.
    if args.unrelated_secrets > 0 {
        let restart_timeout = scaled(
            args,
            Duration::from_secs(60) + Duration::from_millis(20 * args.credentials as u64),
        );
        say("phase 4a: operator restarted with no unrelated Secrets");
        let baseline = restart_and_measure(
            guard,
            &operator_bin,
            &operator_flags,
            &operator_kubeconfig,
            &out_dir.join("operator-2.log"),
            &probe,
            &[&bulk, &short],
            restart_timeout,
        )
        .await?;
        let operator = guard.operator.as_mut().context("operator gone")?;
        say(&format!(
            "phase 4b: creating {} unrelated Secrets of {} bytes, {} at a time",
            args.unrelated_secrets, args.unrelated_secret_bytes, args.create_concurrency
        ));
        operator.reset_peak_rss();
        let before = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
        let created = create_unrelated_secrets(
            &admin,
            &probe,
            args.unrelated_secrets,
            args.unrelated_secret_bytes,
            args.create_concurrency,
            scaled(
                args,
                Duration::from_secs(60) + Duration::from_millis(10 * args.unrelated_secrets as u64),
            ),
        )
        .await?;
        settle(operator, restart_timeout).await;
        let after = probe.snapshot(operator.pid(), &[&bulk, &short]).await?;
        let live = probe.phase("unrelated-live", &before, &after);
        let live_peak = operator.peak_rss_bytes();
        say("phase 4c: operator restarted with the unrelated Secrets in place");
        let loaded = restart_and_measure(
            guard,
            &operator_bin,
            &operator_flags,
            &operator_kubeconfig,
            &out_dir.join("operator-3.log"),
            &probe,
            &[&bulk, &short],
            restart_timeout,
        )
        .await?;
        results.memory(args, &baseline, created, &live, live_peak, &loaded);
    }

    results.finish(started.elapsed(), &loadavg());
    let table = results.table();
    println!("{table}");
    let json = serde_json::to_string_pretty(&results.json)?;
    std::fs::write(&args.out, json + "\n")?;
    say(&format!("results written to {}", args.out.display()));
    guard.keep_cluster_dir = false;
    Ok(())
}

fn scaled(args: &Args, timeout: Duration) -> Duration {
    timeout.mul_f64(args.timeout_scale.max(0.1))
}

fn operator_flags(args: &Args) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--allow-insecure-token-url",
        "--metrics-address=127.0.0.1:0",
        "--health-address=127.0.0.1:0",
        "--log-format=json",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--concurrency={}", args.concurrency));
    flags.push(format!(
        "--token-requests-per-second={}",
        args.token_requests_per_second
    ));
    flags.extend(args.operator_args.iter().cloned());
    flags
}

fn client_id(set: &str, i: usize) -> String {
    format!("{set}-client-{i:05}")
}

fn client_secret(i: usize) -> String {
    format!("bench-secret-{i:05}-x7Qp")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn credential_resource() -> ApiResource {
    ApiResource::erase::<DsccCredential>(&())
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

// ---- the operator's identity and the FlowSchemas that count its requests ------------------

/// A ServiceAccount for the operator (bound to cluster-admin: the bench measures load, not
/// RBAC) and a kubeconfig with a token for it.
async fn operator_identity(
    admin: &Client,
    env: &HashMap<String, String>,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), SYSTEM_NS);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": OPERATOR_SA}}))?;
    accounts.create(&PostParams::default(), &account).await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "dscc-bench-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": SYSTEM_NS}],
    }))?;
    bindings.create(&PostParams::default(), &binding).await?;
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 86400},
    });
    let answer: Value = accounts
        .create_subresource("token", OPERATOR_SA, &PostParams::default(), &request)
        .await?;
    let token = answer["status"]["token"]
        .as_str()
        .context("the TokenRequest returned no token")?;
    let server = env.get("APISERVER_URL").context("no APISERVER_URL")?;
    let ca = env.get("APISERVER_CA").context("no APISERVER_CA")?;
    let path = dir.join("operator.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n- name: operator\n  user:\n    token: {token}\n\
         contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: operator\n\
         current-context: bench\n"
    );
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())?;
    Ok(path)
}

const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
const RESOURCES: [&str; 5] = [
    "secrets",
    "dscccredentials",
    "dscccredentials/status",
    "events",
    "leases",
];

/// FlowSchema name -> (verb, resource) of the operator's requests it counts.
type Flows = HashMap<String, (String, String)>;

async fn install_flow_schemas(admin: &Client) -> anyhow::Result<Flows> {
    let api: Api<FlowSchema> = Api::all(admin.clone());
    let subject = json!({"kind": "ServiceAccount",
                         "serviceAccount": {"name": OPERATOR_SA, "namespace": SYSTEM_NS}});
    let mut flows = Flows::new();
    let mut schemas = vec![];
    for verb in VERBS {
        for resource in RESOURCES.iter().copied().chain(["*"]) {
            let name = format!(
                "{FLOW_PREFIX}{verb}-{}",
                if resource == "*" {
                    "other".to_owned()
                } else {
                    resource.replace('/', "-")
                }
            );
            // Specific resources first; "*" catches the rest of the verb.
            let precedence = if resource == "*" { 21 } else { 20 };
            schemas.push(json!({
                "metadata": {"name": name},
                "spec": {
                    "priorityLevelConfiguration": {"name": "exempt"},
                    "matchingPrecedence": precedence,
                    "rules": [{"subjects": [subject], "resourceRules": [{
                        "verbs": [verb], "apiGroups": ["*"], "resources": [resource],
                        "clusterScope": true, "namespaces": ["*"]}]}],
                },
            }));
            let label = if resource == "*" { "other" } else { resource };
            flows.insert(name, (verb.to_owned(), label.to_owned()));
        }
    }
    let name = format!("{FLOW_PREFIX}nonresource");
    schemas.push(json!({
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": "exempt"},
            "matchingPrecedence": 21,
            "rules": [{"subjects": [subject],
                       "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}],
        },
    }));
    flows.insert(name, ("get".to_owned(), "non-resource".to_owned()));
    for schema in schemas {
        let schema: FlowSchema = serde_json::from_value(schema)?;
        api.create(&PostParams::default(), &schema).await?;
    }
    Ok(flows)
}

/// Waits until a request of the operator's identity shows up under its FlowSchema (the
/// API server applies new FlowSchemas asynchronously).
async fn check_attribution(admin: &Client, operator: &Client) -> anyhow::Result<()> {
    let flow = format!("{FLOW_PREFIX}get-secrets");
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), SYSTEM_NS);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = dispatched(admin, &flow).await?;
        let _ = secrets.get_opt("attribution-probe").await?;
        let after = dispatched(admin, &flow).await?;
        if after > before {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the operator's requests do not show up under FlowSchema {flow}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn dispatched(admin: &Client, flow: &str) -> anyhow::Result<f64> {
    let text = apiserver_metrics(admin).await?;
    Ok(
        samples(&text, "apiserver_flowcontrol_dispatched_requests_total")
            .filter(|(labels, _)| labels.get("flow_schema").map(String::as_str) == Some(flow))
            .map(|(_, value)| value)
            .sum(),
    )
}

async fn apiserver_metrics(admin: &Client) -> anyhow::Result<String> {
    let request = axum::http::Request::get("/metrics").body(vec![])?;
    Ok(admin.request_text(request).await?)
}

/// The samples of metric `name` in Prometheus text: labels and value.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (HashMap<String, String>, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let end = rest.rfind('}')?;
            (parse_labels(&rest[..end]), rest[end + 1..].trim())
        } else if rest.starts_with(' ') {
            (HashMap::new(), rest.trim())
        } else {
            return None;
        };
        let value = value.split_whitespace().next()?.parse().ok()?;
        Some((labels, value))
    })
}

fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

// ---- measuring --------------------------------------------------------------------------

/// Takes snapshots of everything a phase is measured by.
struct Probe {
    admin: Client,
    flows: Flows,
    cluster_dir: PathBuf,
    /// Writes the bench itself made, by (verb, resource).
    bench_writes: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

#[derive(Clone)]
struct Snapshot {
    at: Instant,
    load: String,
    /// The operator's requests by (verb, resource), from its FlowSchemas.
    operator: BTreeMap<(String, String), f64>,
    /// Every client's requests by (verb, resource), from apiserver_request_total.
    all: BTreeMap<(String, String), f64>,
    bench_writes: BTreeMap<(String, String), u64>,
    cpu: BTreeMap<&'static str, f64>,
    token_requests: Vec<usize>,
}

/// What happened between two snapshots.
struct Phase {
    name: &'static str,
    seconds: f64,
    operator: BTreeMap<(String, String), f64>,
    cpu: BTreeMap<&'static str, f64>,
    token_requests: Vec<usize>,
    json: Value,
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

impl Phase {
    fn operator_writes(&self) -> f64 {
        self.operator
            .iter()
            .filter(|((verb, _), _)| WRITE_VERBS.contains(&verb.as_str()))
            .map(|(_, n)| n)
            .fold(0.0, |sum, n| sum + n)
    }

    fn operator_reads(&self) -> f64 {
        self.operator
            .iter()
            .filter(|((verb, resource), _)| {
                !WRITE_VERBS.contains(&verb.as_str()) && resource != "non-resource"
            })
            .map(|(_, n)| n)
            .fold(0.0, |sum, n| sum + n)
    }

    fn operator(&self, verb: &str, resource: &str) -> f64 {
        self.operator
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }
}

impl Probe {
    fn count_bench_write(&self, verb: &str, resource: &str, n: u64) {
        let mut writes = self.bench_writes.lock().unwrap_or_else(|p| p.into_inner());
        *writes
            .entry((verb.to_owned(), resource.to_owned()))
            .or_default() += n;
    }

    async fn snapshot(
        &self,
        operator_pid: u32,
        endpoints: &[&TokenEndpoint],
    ) -> anyhow::Result<Snapshot> {
        let text = apiserver_metrics(&self.admin).await?;
        let mut operator = BTreeMap::new();
        for (labels, value) in samples(&text, "apiserver_flowcontrol_dispatched_requests_total") {
            if let Some(key) = labels.get("flow_schema").and_then(|f| self.flows.get(f)) {
                *operator.entry(key.clone()).or_default() += value;
            }
        }
        let mut all = BTreeMap::new();
        for (labels, value) in samples(&text, "apiserver_request_total") {
            let resource = labels.get("resource").cloned().unwrap_or_default();
            if resource.is_empty() {
                continue;
            }
            let resource = match labels.get("subresource").map(String::as_str) {
                Some(sub) if !sub.is_empty() => format!("{resource}/{sub}"),
                _ => resource,
            };
            let verb = match labels.get("verb").map(String::as_str).unwrap_or_default() {
                "POST" => "create",
                "PUT" => "update",
                "PATCH" | "APPLY" => "patch",
                "DELETE" => "delete",
                "DELETECOLLECTION" => "deletecollection",
                "GET" => "get",
                "LIST" => "list",
                "WATCH" | "WATCHLIST" => "watch",
                other => other,
            }
            .to_lowercase();
            *all.entry((verb, resource)).or_default() += value;
        }
        let mut cpu = BTreeMap::new();
        cpu.insert("operator", cpu_seconds(operator_pid).unwrap_or(0.0));
        cpu.insert("bench", cpu_seconds(std::process::id()).unwrap_or(0.0));
        for (name, file) in [
            ("kube-apiserver", "kube-apiserver.pid"),
            ("etcd", "etcd.pid"),
            ("kube-controller-manager", "kube-controller-manager.pid"),
        ] {
            let pid = std::fs::read_to_string(self.cluster_dir.join(file))
                .ok()
                .and_then(|text| text.trim().parse().ok());
            cpu.insert(name, pid.and_then(cpu_seconds).unwrap_or(0.0));
        }
        Ok(Snapshot {
            at: Instant::now(),
            load: loadavg(),
            operator,
            all,
            bench_writes: self
                .bench_writes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            cpu,
            token_requests: endpoints.iter().map(|e| e.request_count()).collect(),
        })
    }

    fn phase(&self, name: &'static str, a: &Snapshot, b: &Snapshot) -> Phase {
        let delta = |x: &BTreeMap<(String, String), f64>, y: &BTreeMap<(String, String), f64>| {
            y.iter()
                .map(|(k, v)| (k.clone(), v - x.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect::<BTreeMap<_, _>>()
        };
        let operator = delta(&a.operator, &b.operator);
        let all = delta(&a.all, &b.all);
        let bench: BTreeMap<(String, String), f64> = b
            .bench_writes
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (*v - a.bench_writes.get(k).copied().unwrap_or(0)) as f64,
                )
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let cpu: BTreeMap<&'static str, f64> = b
            .cpu
            .iter()
            .map(|(k, v)| (*k, v - a.cpu.get(k).copied().unwrap_or(0.0)))
            .collect();
        let token_requests: Vec<usize> = b
            .token_requests
            .iter()
            .zip(&a.token_requests)
            .map(|(b, a)| b - a)
            .collect();
        // The second figure: writes to the operator's resources by every client, minus the
        // bench's own (the controller manager writes none of these resources).
        let operator_resources = [
            "secrets",
            "dscccredentials",
            "dscccredentials/status",
            "events",
        ];
        let by_subtraction: f64 = all
            .iter()
            .filter(|((verb, resource), _)| {
                WRITE_VERBS.contains(&verb.as_str())
                    && operator_resources.contains(&resource.as_str())
            })
            .map(|(k, v)| v - bench.get(k).copied().unwrap_or(0.0))
            .fold(0.0, |sum, n| sum + n);
        let seconds = b.at.duration_since(a.at).as_secs_f64();
        let keyed = |m: &BTreeMap<(String, String), f64>| {
            m.iter()
                .map(|((verb, resource), v)| (format!("{verb} {resource}"), json!(v)))
                .collect::<serde_json::Map<_, _>>()
        };
        let mut phase = Phase {
            name,
            seconds,
            operator,
            cpu,
            token_requests,
            json: Value::Null,
        };
        phase.json = json!({
            "seconds": round(seconds, 2),
            "load_average_start": a.load,
            "load_average_end": b.load,
            "cpu_seconds": phase.cpu.iter().map(|(k, v)| (k.to_string(), json!(round(*v, 2)))).collect::<serde_json::Map<_, _>>(),
            "operator_requests": keyed(&phase.operator),
            "operator_writes": phase.operator_writes(),
            "operator_reads": phase.operator_reads(),
            "operator_writes_by_subtraction": by_subtraction,
            "all_clients_requests": keyed(&all),
            "bench_writes": keyed(&bench),
            "token_requests_bulk_endpoint": phase.token_requests.first(),
            "token_requests_short_lived_endpoint": phase.token_requests.get(1),
        });
        say(&format!(
            "  {name}: {:.1}s, operator CPU {:.2}s (apiserver {:.2}s, etcd {:.2}s, bench {:.2}s), \
             operator writes {} (by subtraction {by_subtraction}), reads {}, token requests {:?}; load {}",
            seconds,
            phase.cpu["operator"],
            phase.cpu["kube-apiserver"],
            phase.cpu["etcd"],
            phase.cpu["bench"],
            phase.operator_writes(),
            phase.operator_reads(),
            phase.token_requests,
            b.load,
        ));
        say(&format!(
            "  operator requests: {}",
            summary(&phase.operator)
        ));
        phase
    }
}

fn summary(requests: &BTreeMap<(String, String), f64>) -> String {
    requests
        .iter()
        .map(|((verb, resource), n)| format!("{verb} {resource} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn round(x: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (x * factor).round() / factor
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of the man page, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A field of /proc/PID/status in bytes (the kernel gives kB).
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---- the operator process ---------------------------------------------------------------

struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    fn start(bin: &Path, flags: &[String], kubeconfig: &Path, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)?;
        let mut command = Command::new(bin);
        command
            .arg("run")
            .args(flags)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // The operator must not outlive the bench.
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        say(&format!(
            "operator pid {}: {} run {} (log {})",
            child.id(),
            bin.display(),
            flags.join(" "),
            log.display()
        ));
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of a listener it logged at start-up (`metrics_address`, `health_address`).
    fn address(&self, field: &str) -> Option<String> {
        std::fs::read_to_string(&self.log)
            .ok()?
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find_map(|line| line.get(field)?.as_str().map(str::to_owned))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the operator exited ({status}); see {}", self.log.display());
            }
            if let Some(address) = self.address("health_address") {
                let url = format!("http://{address}/readyz");
                if let Ok(answer) = http.get(&url).send().await
                    && answer.status().is_success()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator was not ready within {}s; see {}",
                    timeout.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The sum of a counter on its /metrics.
    async fn metric(&self, name: &str) -> Option<f64> {
        let address = self.address("metrics_address")?;
        let text = reqwest::get(format!("http://{address}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(samples(&text, name).map(|(_, v)| v).sum())
    }

    /// Starts a new peak-RSS measurement (VmHWM) from the current RSS.
    fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    fn peak_rss_bytes(&self) -> u64 {
        status_bytes(self.pid(), "VmHWM:").unwrap_or(0)
    }

    fn stop(&mut self) {
        // SAFETY: a plain kill(2) of our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the operator's reconcile count stays put for 3 s (bounded by `timeout`).
async fn settle(operator: &OperatorProcess, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let now = operator.metric("dscc_reconcile_total").await;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say("the operator did not settle in time; measuring anyway");
}

/// What a fresh operator process did until it settled.
struct Restart {
    peak_rss: u64,
    seconds_to_ready: f64,
    phase: Phase,
}

#[allow(clippy::too_many_arguments)]
async fn restart_and_measure(
    guard: &mut Guard,
    bin: &Path,
    flags: &[String],
    kubeconfig: &Path,
    log: &Path,
    probe: &Probe,
    endpoints: &[&TokenEndpoint],
    timeout: Duration,
) -> anyhow::Result<Restart> {
    if let Some(mut old) = guard.operator.take() {
        old.stop();
    }
    let started = Instant::now();
    let mut before = probe.snapshot(0, endpoints).await?;
    let operator = guard
        .operator
        .insert(OperatorProcess::start(bin, flags, kubeconfig, log)?);
    before.cpu.insert("operator", 0.0);
    operator.wait_ready(timeout).await?;
    let seconds_to_ready = started.elapsed().as_secs_f64();
    settle(operator, timeout).await;
    // A little longer, for anything that runs after the last reconcile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = probe.snapshot(operator.pid(), endpoints).await?;
    let phase = probe.phase(
        if log.ends_with("operator-2.log") {
            "restart"
        } else {
            "restart-unrelated"
        },
        &before,
        &after,
    );
    Ok(Restart {
        peak_rss: operator.peak_rss_bytes(),
        seconds_to_ready,
        phase,
    })
}

// ---- creating objects -------------------------------------------------------------------

/// When each credential's create request was sent.
struct Creation {
    started: Instant,
    submitted: Duration,
    started_at: HashMap<String, Instant>,
}

async fn create_credentials(
    admin: &Client,
    probe: &Probe,
    namespace: &str,
    set: &'static str,
    count: usize,
    token_url: &str,
    in_flight: usize,
) -> anyhow::Result<Creation> {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let credentials: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &credential_resource());
    let started = Instant::now();
    let started_at = Arc::new(Mutex::new(HashMap::with_capacity(count)));
    futures::stream::iter(0..count)
        .map(Ok::<usize, anyhow::Error>)
        .try_for_each_concurrent(in_flight.max(1), |i| {
            let secrets = secrets.clone();
            let credentials = credentials.clone();
            let started_at = started_at.clone();
            async move {
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("{set}-client-{i:05}"), "labels": {SET_LABEL: set}},
                    "stringData": {"client_id": client_id(set, i), "client_secret": client_secret(i)},
                }))?;
                secrets.create(&PostParams::default(), &secret).await?;
                let name = format!("{set}-{i:05}");
                let credential: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "dscc.io/v1alpha1",
                    "kind": "DsccCredential",
                    "metadata": {"name": name, "labels": {SET_LABEL: set}},
                    "spec": {
                        "clientSecretRef": {"name": format!("{set}-client-{i:05}")},
                        "tokenUrl": token_url,
                    },
                }))?;
                let at = Instant::now();
                credentials.create(&PostParams::default(), &credential).await?;
                started_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, at);
                Ok(())
            }
        })
        .await?;
    probe.count_bench_write("create", "secrets", count as u64);
    probe.count_bench_write("create", "dscccredentials", count as u64);
    let started_at = std::mem::take(&mut *started_at.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Creation {
        started,
        submitted: started.elapsed(),
        started_at,
    })
}

async fn create_unrelated_secrets(
    admin: &Client,
    probe: &Probe,
    count: usize,
    bytes: usize,
    in_flight: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), UNRELATED_NS);
    let blob: Vec<u8> = (0..bytes).map(|i| (i * 7919 % 251) as u8).collect();
    let blob = k8s_openapi::ByteString(blob);
    let started = Instant::now();
    let work = futures::stream::iter(0..count)
        .map(Ok::<usize, anyhow::Error>)
        .try_for_each_concurrent(in_flight.max(1), |i| {
            let secrets = secrets.clone();
            let blob = blob.clone();
            async move {
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("unrelated-{i:06}")),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("blob".to_owned(), blob)])),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &secret).await?;
                Ok(())
            }
        });
    tokio::time::timeout(timeout, work)
        .await
        .context("creating the unrelated Secrets timed out")??;
    probe.count_bench_write("create", "secrets", count as u64);
    let took = started.elapsed();
    say(&format!(
        "  created {count} unrelated Secrets in {:.1}s ({:.0}/s)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    ));
    Ok(took)
}

// ---- watching credentials ---------------------------------------------------------------

/// What the bench's watch saw of one credential, on its own clock.
#[derive(Default)]
struct Track {
    ready_at: Option<Instant>,
    /// Distinct status.issuedAt values, with when each was first seen.
    issued: Vec<(Timestamp, Instant)>,
    /// Distinct status.renewalTime values, with when each was first seen.
    renewal: Vec<(Timestamp, Instant)>,
}

#[derive(Clone)]
struct Tracker {
    tracks: Arc<Mutex<HashMap<(String, String), Track>>>,
}

impl Tracker {
    /// Watches every credential the bench creates (they carry SET_LABEL).
    fn start(admin: Client) -> Self {
        let tracker = Self {
            tracks: Arc::default(),
        };
        let tracks = tracker.tracks.clone();
        tokio::spawn(async move {
            let api: Api<DsccCredential> = Api::all(admin);
            let events =
                watcher(api, watcher::Config::default().labels(SET_LABEL)).default_backoff();
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let object = match event {
                    Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => object,
                    _ => continue,
                };
                let key = (object.namespace().unwrap_or_default(), object.name_any());
                let mut tracks = tracks.lock().unwrap_or_else(|p| p.into_inner());
                let track = tracks.entry(key).or_default();
                let Some(status) = &object.status else {
                    continue;
                };
                let ready = dscc_token_operator::conditions::find(&status.conditions, "Ready")
                    .is_some_and(|c| c.status == "True");
                if ready && track.ready_at.is_none() {
                    track.ready_at = Some(now);
                }
                if let Some(issued) = &status.issued_at
                    && track.issued.last().map(|(t, _)| *t) != Some(issued.0)
                {
                    track.issued.push((issued.0, now));
                }
                if let Some(renewal) = &status.renewal_time
                    && track.renewal.last().map(|(t, _)| *t) != Some(renewal.0)
                {
                    track.renewal.push((renewal.0, now));
                }
            }
        });
        tracker
    }

    fn ready_count(&self, namespace: &str) -> (usize, Option<Instant>) {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let ready: Vec<Instant> = tracks
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|(_, t)| t.ready_at)
            .collect();
        (ready.len(), ready.into_iter().max())
    }

    /// When the last of `count` credentials in `namespace` became Ready; `None` on timeout.
    async fn wait_all_ready(
        &self,
        namespace: &str,
        count: usize,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut reported = Instant::now();
        loop {
            let (ready, last) = self.ready_count(namespace);
            if ready >= count {
                return last;
            }
            if Instant::now() > deadline {
                say(&format!(
                    "  only {ready} of {count} Ready after {}s",
                    timeout.as_secs()
                ));
                return None;
            }
            if reported.elapsed() >= Duration::from_secs(10) {
                say(&format!("  {ready} of {count} Ready"));
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creation to Ready of each credential, in seconds.
    fn ready_latencies(&self, namespace: &str, created: &HashMap<String, Instant>) -> Vec<f64> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let mut latencies: Vec<f64> = created
            .iter()
            .filter_map(|(name, at)| {
                let track = tracks.get(&(namespace.to_owned(), name.clone()))?;
                Some(track.ready_at?.saturating_duration_since(*at).as_secs_f64())
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        latencies
    }

    /// New tokens (status.issuedAt changes) first seen within the window.
    fn renewals(&self, namespace: &str, from: Instant, to: Instant) -> usize {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        tracks
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .flat_map(|(_, t)| t.issued.iter().skip(1))
            .filter(|(_, seen)| *seen >= from && *seen < to)
            .count()
    }

    /// For each token request: its time minus the renewal time the status announced before
    /// it, in seconds.
    fn lateness(
        &self,
        namespace: &str,
        set: &str,
        requests: &[dscc_testkit::token_endpoint::RecordedRequest],
    ) -> Vec<f64> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let mut lateness: Vec<f64> = requests
            .iter()
            .filter_map(|request| {
                let client = request.client_id.as_deref()?;
                let i = client.strip_prefix(&format!("{set}-client-"))?;
                let track = tracks.get(&(namespace.to_owned(), format!("{set}-{i}")))?;
                let planned = track
                    .renewal
                    .iter()
                    .rev()
                    .find(|(_, seen)| *seen < request.received_at)?
                    .0;
                let actual = Timestamp::try_from(request.received_at_system).ok()?;
                Some(actual.duration_since(planned).as_secs_f64())
            })
            .collect();
        lateness.sort_by(f64::total_cmp);
        lateness
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

// ---- results ----------------------------------------------------------------------------

struct Row {
    figure: String,
    value: String,
    target: String,
    met: Option<bool>,
}

struct Results {
    rows: Vec<Row>,
    json: Value,
    n: usize,
}

impl Results {
    fn new(args: &Args, bin: &Path, flags: &[String], load: &str) -> Self {
        let json = json!({
            "started_at": Timestamp::try_from(SystemTime::now()).map(|t| t.to_string()).unwrap_or_default(),
            "machine": {"cpus": cpus(), "load_average_start": load},
            "config": {
                "credentials": args.credentials,
                "create_concurrency": args.create_concurrency,
                "steady_seconds": args.steady.as_secs(),
                "renewal_credentials": args.renewal_credentials,
                "renewal_lifetime_seconds": args.renewal_lifetime.as_secs(),
                "renewal_window_seconds": args.renewal_window.as_secs(),
                "unrelated_secrets": args.unrelated_secrets,
                "unrelated_secret_bytes": args.unrelated_secret_bytes,
            },
            "operator": {"binary": bin.display().to_string(), "flags": flags},
            "attribution": "operator requests: apiserver_flowcontrol_dispatched_requests_total of \
                FlowSchemas matching only the operator's ServiceAccount, one per verb and resource; \
                operator_writes_by_subtraction: apiserver_request_total writes to secrets, \
                dscccredentials(/status) and events minus the bench's own",
            "phases": {},
            "figures": [],
        });
        Self {
            rows: vec![],
            json,
            n: args.credentials,
        }
    }

    fn row(&mut self, figure: &str, value: String, target: &str, met: Option<bool>, raw: Value) {
        self.json["figures"]
            .as_array_mut()
            .expect("figures is an array")
            .push(json!({"figure": figure, "value": raw, "display": value, "target": target, "met": met}));
        self.rows.push(Row {
            figure: figure.to_owned(),
            value,
            target: target.to_owned(),
            met,
        });
    }

    fn phase(&mut self, phase: &Phase) {
        self.json["phases"][phase.name] = phase.json.clone();
    }

    fn creation(
        &mut self,
        args: &Args,
        creation: &Creation,
        all_ready: Option<Instant>,
        latencies: &[f64],
        phase: &Phase,
    ) {
        self.phase(phase);
        let n = args.credentials;
        let at_1000 = n == 1000;
        let total = all_ready.map(|at| at.duration_since(creation.started).as_secs_f64());
        let target = format!("<= {:.0} s", 30.0 * n as f64 / 1000.0);
        self.row(
            &format!("{n} credentials: creation until all Ready"),
            total.map_or_else(
                || format!("not all Ready ({} of {n})", latencies.len()),
                |t| format!("{t:.1} s"),
            ),
            &if at_1000 {
                target
            } else {
                format!("{target} (30 s per 1000, scaled)")
            },
            Some(total.is_some_and(|t| t <= 30.0 * n as f64 / 1000.0)),
            json!(total),
        );
        self.row(
            "  of which submitting the creates",
            format!("{:.1} s", creation.submitted.as_secs_f64()),
            "",
            None,
            json!(creation.submitted.as_secs_f64()),
        );
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            let value = percentile(latencies, q);
            self.row(
                &format!("creation->Ready {label} (per credential)"),
                value.map_or("-".into(), |v| format!("{v:.2} s")),
                "",
                None,
                json!(value),
            );
        }
        let cpu = phase.cpu["operator"];
        self.row(
            "operator CPU during creation",
            format!(
                "{cpu:.2} s ({:.1} ms per credential)",
                1000.0 * cpu / n as f64
            ),
            "",
            None,
            json!(cpu),
        );
        let server = phase.cpu["kube-apiserver"] + phase.cpu["etcd"];
        self.row(
            "  kube-apiserver + etcd CPU meanwhile",
            format!("{server:.1} s ({:.2} cores)", server / phase.seconds),
            "",
            None,
            json!(server),
        );
        let per = |x: f64| x / n as f64;
        self.row(
            "operator API requests per credential issued",
            format!(
                "{:.2} ({:.2} writes, {:.2} reads)",
                per(phase.operator_writes() + phase.operator_reads()),
                per(phase.operator_writes()),
                per(phase.operator_reads())
            ),
            "",
            None,
            json!(per(phase.operator_writes() + phase.operator_reads())),
        );
        let detail = phase
            .operator
            .iter()
            .filter(|((_, r), _)| r != "non-resource")
            .map(|((verb, resource), v)| format!("{verb} {resource} {:.2}", per(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        self.row("  by verb and resource", detail, "", None, Value::Null);
        let tokens = phase.token_requests.first().copied().unwrap_or(0) as f64 / n as f64;
        self.row(
            "token requests per credential",
            format!("{tokens:.2}"),
            "1",
            Some((tokens - 1.0).abs() < 1e-9),
            json!(tokens),
        );
        self.json["creation"] = json!({
            "credentials": n,
            "all_ready_seconds": total,
            "submit_seconds": creation.submitted.as_secs_f64(),
            "ready_latency_p50_seconds": percentile(latencies, 0.5),
            "ready_latency_p99_seconds": percentile(latencies, 0.99),
            "ready_latency_max_seconds": latencies.last(),
            "ready_count": latencies.len(),
        });
    }

    fn steady(&mut self, phase: &Phase) {
        self.phase(phase);
        let minutes = phase.seconds / 60.0;
        let writes = phase.operator_writes() / minutes;
        self.row(
            "steady state: operator API writes per minute",
            format!("{writes:.1}"),
            "0",
            Some(phase.operator_writes() == 0.0),
            json!(writes),
        );
        self.row(
            "steady state: operator API reads per minute",
            format!("{:.1}", phase.operator_reads() / minutes),
            "",
            None,
            json!(phase.operator_reads() / minutes),
        );
        let tokens: usize = phase.token_requests.iter().sum();
        self.row(
            "steady state: token requests",
            tokens.to_string(),
            "0",
            Some(tokens == 0),
            json!(tokens),
        );
        let cpu = phase.cpu["operator"];
        self.row(
            "steady state: operator CPU",
            format!("{:.3} s per minute", cpu / minutes),
            "",
            None,
            json!(cpu / minutes),
        );
    }

    fn renewal(&mut self, renewals: usize, requests: usize, lateness: &[f64], phase: &Phase) {
        self.phase(phase);
        let per = |x: f64| {
            if renewals == 0 {
                f64::NAN
            } else {
                x / renewals as f64
            }
        };
        self.row(
            "renewals observed",
            format!("{renewals} in {:.0} s", phase.seconds),
            "",
            None,
            json!(renewals),
        );
        let tokens = per(requests as f64);
        self.row(
            "token requests per renewal",
            format!("{tokens:.3}"),
            "<= 1",
            Some(tokens <= 1.005),
            json!(tokens),
        );
        let writes = per(phase.operator_writes());
        let events = per(phase.operator("create", "events") + phase.operator("patch", "events"));
        let token =
            per(phase.operator("patch", "secrets")
                + phase.operator("patch", "dscccredentials/status"));
        self.row(
            "operator API writes per renewal",
            format!("{writes:.2} (Secret + status {token:.2}, Events {events:.2})"),
            "<= 2",
            Some(writes <= 2.005),
            json!(writes),
        );
        let detail = phase
            .operator
            .iter()
            .filter(|((verb, _), _)| WRITE_VERBS.contains(&verb.as_str()))
            .map(|((verb, resource), v)| format!("{verb} {resource} {:.2}", per(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        self.row(
            "  writes by verb and resource",
            detail,
            "",
            None,
            Value::Null,
        );
        self.row(
            "operator API reads per renewal",
            format!("{:.2}", per(phase.operator_reads())),
            "",
            None,
            json!(per(phase.operator_reads())),
        );
        let p = |q| percentile(lateness, q);
        self.row(
            "renewal lateness (request - status.renewalTime) p50 / p99 / max",
            match (p(0.5), p(0.99), lateness.last()) {
                (Some(a), Some(b), Some(c)) => format!("{a:.2} / {b:.2} / {c:.2} s"),
                _ => "-".into(),
            },
            "",
            None,
            json!({"p50": p(0.5), "p99": p(0.99), "max": lateness.last(), "min": lateness.first(),
                   "samples": lateness.len()}),
        );
        let early = lateness.iter().filter(|l| **l < 0.0).count();
        self.row(
            "renewals before their planned time",
            early.to_string(),
            "0",
            Some(early == 0),
            json!(early),
        );
    }

    fn peak_rss_first_run(&mut self, bytes: u64) {
        let mib = bytes as f64 / MIB;
        let target = if self.n <= 1000 {
            "< 64 MiB"
        } else {
            "(64 MiB is for 1000)"
        };
        self.row(
            &format!("operator peak RSS, {} credentials (phases 1-3)", self.n),
            format!("{mib:.1} MiB"),
            target,
            (self.n <= 1000).then_some(mib < 64.0),
            json!(mib),
        );
    }

    fn memory(
        &mut self,
        args: &Args,
        baseline: &Restart,
        created_in: Duration,
        live: &Phase,
        live_peak: u64,
        loaded: &Restart,
    ) {
        for phase in [&baseline.phase, live, &loaded.phase] {
            self.phase(phase);
        }
        let tokens: usize = baseline.phase.token_requests.iter().sum();
        let writes = baseline.phase.operator_writes();
        self.row(
            "restart: token requests / API writes",
            format!("{tokens} / {writes}"),
            "0 / 0",
            Some(tokens == 0 && writes == 0.0),
            json!({"token_requests": tokens, "writes": writes,
                   "reads": baseline.phase.operator_reads(),
                   "seconds_to_ready": baseline.seconds_to_ready}),
        );
        self.row(
            "restart: operator CPU until settled",
            format!("{:.2} s", baseline.phase.cpu["operator"]),
            "",
            None,
            json!(baseline.phase.cpu["operator"]),
        );
        let base = baseline.peak_rss as f64 / MIB;
        let live_mib = live_peak as f64 / MIB;
        let loaded_mib = loaded.peak_rss as f64 / MIB;
        let m = args.unrelated_secrets;
        self.row(
            "peak RSS after restart, no unrelated Secrets",
            format!("{base:.1} MiB"),
            "",
            None,
            json!(base),
        );
        self.row(
            &format!("peak RSS while {m} unrelated Secrets are created"),
            format!(
                "{live_mib:.1} MiB (created in {:.0} s; operator CPU {:.2} s)",
                created_in.as_secs_f64(),
                live.cpu["operator"]
            ),
            "",
            None,
            json!(live_mib),
        );
        self.row(
            &format!("peak RSS after restart with {m} unrelated Secrets"),
            format!("{loaded_mib:.1} MiB"),
            "",
            None,
            json!(loaded_mib),
        );
        let added = live_mib.max(loaded_mib) - base;
        self.row(
            &format!(
                "unrelated Secrets ({m} x {} KiB) add",
                args.unrelated_secret_bytes / 1024
            ),
            format!("{added:.1} MiB"),
            "< 10 MiB",
            Some(added < 10.0),
            json!(added),
        );
    }

    fn finish(&mut self, took: Duration, load: &str) {
        self.json["machine"]["load_average_end"] = json!(load);
        self.json["seconds"] = json!(round(took.as_secs_f64(), 1));
        self.json["table"] = json!(self.table());
    }

    fn table(&self) -> String {
        let width = self.rows.iter().map(|r| r.figure.len()).max().unwrap_or(10);
        let value_width = self
            .rows
            .iter()
            .map(|r| r.value.len())
            .max()
            .unwrap_or(10)
            .min(60);
        let mut out = String::new();
        let flags = self.json["operator"]["flags"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = writeln!(out, "\noperator: dscc-token-operator run {flags}");
        let _ = writeln!(
            out,
            "machine: {} CPUs, load average {} at start, {} at end",
            self.json["machine"]["cpus"],
            self.json["machine"]["load_average_start"]
                .as_str()
                .unwrap_or(""),
            self.json["machine"]["load_average_end"]
                .as_str()
                .unwrap_or("")
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:width$}  {:value_width$}  {:24}  met?",
            "figure", "value", "target"
        );
        let _ = writeln!(out, "{}", "-".repeat(width + value_width + 34));
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            let _ = writeln!(
                out,
                "{:width$}  {:value_width$}  {:24}  {met}",
                row.figure, row.value, row.target
            );
        }
        out
    }
}
