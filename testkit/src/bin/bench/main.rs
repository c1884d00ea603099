//! `make bench`: how the operator does with many credentials, measured from outside.
//!
//! ```text
//! cargo build --release -p dscc-token-operator -p dscc-testkit
//! cargo run --release -p dscc-testkit --bin bench -- --credentials 1000
//! ```
//!
//! Starts its own local control plane (`testenv/cluster.sh`, stopped at the end and by a
//! watchdog if this process dies), an in-process fake token endpoint, and the release operator
//! as its own process. Then, in phases:
//! 0. the limit: before the operator runs, the bench itself does the physical minimum per
//!    credential on the same API server and token endpoint, with the operator's concurrency
//!    (one token request; one target Secret create and one status patch);
//! 1. creates N credentials with their client Secrets and times them to Ready (a ratio to
//!    the limit), sampling CPU, memory and the Ready count on the way (plotted);
//! 2. watches the quiet operator;
//! 3. renews short-lived tokens;
//! 4. restarts the operator with and without many unrelated Secrets;
//! 5. a cold start: N credentials created while the operator is stopped, then the operator
//!    started and timed until all are Ready (like for like with the limit).
//!
//! Prints a table and writes JSON and the plot (`cluster`, `phases`, `measure`, `report`).

mod cluster;
mod measure;
mod operator;
mod phases;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use dscc_testkit::token_endpoint::TokenEndpoint;
use dscc_token_operator::schedule::parse_duration;

use cluster::{ControlPlane, SYSTEM_NS};
use measure::{Probe, Timeline, Tracker, cpus, loadavg, memory_breakdown};
use operator::{OperatorProcess, settle};
use phases::{LIMIT_NS, UNRELATED_NS};
use report::{Plot, Results, limit_factor, plot_svg};

/// The label on every credential the bench creates for the operator.
pub const SET_LABEL: &str = "bench.dscc.io/set";
const CREATE_NS: &str = "bench-create";
const RENEW_NS: &str = "bench-renew";
const COLD_NS: &str = "bench-cold";
pub const MIB: f64 = 1024.0 * 1024.0;

/// Measures the operator at scale on a local control plane.
#[derive(Debug, Parser)]
#[command(args_override_self = true)]
pub struct Args {
    /// Credentials (with one client Secret each) created at once.
    #[arg(long, default_value_t = 1000)]
    pub credentials: usize,
    /// Create requests the bench keeps in flight.
    #[arg(long, default_value_t = 32)]
    pub create_concurrency: usize,
    /// The operator's --concurrency; the limit is measured with as many in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// The operator's --token-requests-per-second. High by default, so that the configured
    /// rate is not what the creation phase measures (N / rate is reported).
    #[arg(long, default_value_t = 1000)]
    pub token_requests_per_second: u32,
    /// The operator's --max-requests-in-flight-per-host.
    #[arg(long, default_value_t = 4)]
    pub max_requests_in_flight_per_host: usize,
    /// Another flag for `dscc-token-operator run` (repeatable), e.g. --operator-arg=--log-level=warn.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    pub operator_args: Vec<String>,
    /// Skip measuring the limit (the creation time is then reported without a ratio).
    #[arg(long)]
    pub no_limit: bool,
    /// Skip the last phase: N credentials created while the operator is stopped, then the
    /// operator started (like for like with the limit: the creates are not in the time).
    #[arg(long)]
    pub no_cold_start: bool,
    /// How long to watch the quiet operator after all are Ready (0s skips).
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub steady: Duration,
    /// Credentials with short-lived tokens for the renewal phase (0 skips it).
    #[arg(long, default_value_t = 100)]
    pub renewal_credentials: usize,
    /// Token lifetime in the renewal phase.
    #[arg(long, default_value = "20s", value_parser = duration)]
    pub renewal_lifetime: Duration,
    /// How long renewals are observed.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub renewal_window: Duration,
    /// Unrelated Secrets for the memory comparison (0 skips it).
    #[arg(long, default_value_t = 20000)]
    pub unrelated_secrets: usize,
    /// Data bytes of each unrelated Secret.
    #[arg(long, default_value_t = 8192)]
    pub unrelated_secret_bytes: usize,
    /// Where the JSON results go; results-<N>.json and ready-<N>.svg are written next to it.
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
    /// The operator binary; default: dscc-token-operator next to this program.
    #[arg(long)]
    pub operator: Option<PathBuf>,
    /// Multiplies every timeout.
    #[arg(long, default_value_t = 1.0)]
    pub timeout_scale: f64,
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

/// What must be stopped however the bench ends, in this order.
#[derive(Default)]
struct Guard {
    operator: Option<OperatorProcess>,
    plane: Option<ControlPlane>,
}

impl Guard {
    fn stop(&mut self) {
        if let Some(mut operator) = self.operator.take() {
            operator.stop();
        }
        if let Some(mut plane) = self.plane.take() {
            plane.stop();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn say(text: &str) {
    eprintln!("bench: {text}");
}

pub fn client_id(set: &str, i: usize) -> String {
    format!("{set}-client-{i:05}")
}

pub fn client_secret(i: usize) -> String {
    format!("bench-secret-{i:05}-x7Qp")
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
        // The renewal phase's tokens live seconds; the production floor (30 s) would outlast
        // them, and every renewal would be an expiry.
        "--min-renewal-interval=2s",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--concurrency={}", args.concurrency));
    flags.push(format!(
        "--token-requests-per-second={}",
        args.token_requests_per_second
    ));
    flags.push(format!(
        "--max-requests-in-flight-per-host={}",
        args.max_requests_in_flight_per_host
    ));
    flags.extend(args.operator_args.iter().cloned());
    flags
}

fn operator_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.operator {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("cannot locate the directory of this program")?
            .join("dscc-token-operator"),
    };
    if !path.is_file() {
        bail!(
            "no operator binary at {}; run `cargo build --release -p dscc-token-operator \
             -p dscc-testkit` or pass --operator",
            path.display()
        );
    }
    Ok(path)
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Seconds from `start` to each instant, sorted.
fn seconds_since(start: Instant, times: impl IntoIterator<Item = Instant>) -> Vec<f64> {
    let mut seconds: Vec<f64> = times
        .into_iter()
        .map(|t| t.saturating_duration_since(start).as_secs_f64())
        .collect();
    seconds.sort_by(f64::total_cmp);
    seconds
}

/// The whole benchmark.
async fn bench(args: &Args, guard: &mut Guard) -> anyhow::Result<()> {
    let started = Instant::now();
    let n = args.credentials;
    let out_dir = args
        .out
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir)?;
    let operator_bin = operator_binary(args)?;
    let load_before = loadavg();
    say(&format!(
        "{n} credentials, {} CPUs, load average {load_before}",
        cpus()
    ));

    // The control plane, the operator's identity, and the FlowSchemas that count its requests.
    let cache = std::env::var_os("DSCC_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/dscc-token-operator"));
    let cluster_dir = cache
        .join("bench")
        .join(format!("run-{}", std::process::id()));
    let plane = guard.plane.insert(ControlPlane::start(&cluster_dir)?);
    let admin = cluster::client_from(&plane.kubeconfig()?).await?;
    for ns in [
        SYSTEM_NS,
        CREATE_NS,
        RENEW_NS,
        UNRELATED_NS,
        LIMIT_NS,
        COLD_NS,
    ] {
        cluster::create_namespace(&admin, ns).await?;
    }
    let operator_kubeconfig = cluster::operator_identity(&admin, plane).await?;
    let flows = cluster::install_flow_schemas(&admin).await?;
    let operator_client = cluster::client_from(&operator_kubeconfig).await?;
    cluster::check_attribution(&admin, &operator_client).await?;
    let pids = plane.pids();
    for name in ["kube-apiserver", "etcd"] {
        match pids.get(name) {
            Some(pid) => say(&format!("{name} pid {pid}")),
            None => bail!(
                "cannot find the {name} process of {}",
                cluster_dir.display()
            ),
        }
    }

    // Token endpoints: long-lived tokens for the bulk, short-lived ones for renewals.
    let bulk = TokenEndpoint::start().await;
    let short = TokenEndpoint::start().await;
    short.set_lifetime(args.renewal_lifetime);
    for i in 0..n {
        bulk.set_client(&client_id("bulk", i), &client_secret(i));
    }
    for i in 0..args.renewal_credentials {
        short.set_client(&client_id("renew", i), &client_secret(i));
    }
    let endpoints = [&bulk, &short];

    let probe = Probe::new(admin.clone(), flows, pids);
    let tracker = Tracker::start(admin.clone());
    let operator_flags = operator_flags(args);
    let mut results = Results::new(args, &operator_bin, &operator_flags, &load_before);

    // Phase 0: the limit, before the operator runs.
    let limit = if args.no_limit {
        None
    } else {
        let limit = phases::measure_limit(
            &admin,
            &operator_client,
            &probe,
            &bulk,
            n,
            usize::from(args.concurrency),
            args.max_requests_in_flight_per_host,
            args.create_concurrency,
        )
        .await?;
        say(&format!(
            "limit for {n}: {:.1} s (API {:.1} s, tokens {:.1} s)",
            limit.seconds(),
            limit.api_seconds,
            limit.token_seconds
        ));
        results.limit(&limit);
        Some(limit)
    };
    drop(operator_client);
    let gate_seconds = n as f64 / f64::from(args.token_requests_per_second.max(1));
    if let Some(limit) = &limit
        && gate_seconds > limit.seconds()
    {
        say(&format!(
            "warning: --token-requests-per-second={} alone needs {gate_seconds:.0} s for {n} \
             credentials, more than the limit",
            args.token_requests_per_second
        ));
    }

    // Phase 1: creation.
    let operator = guard.operator.insert(OperatorProcess::start(
        &operator_bin,
        &operator_flags,
        &operator_kubeconfig,
        &out_dir.join("operator-1.log"),
    )?);
    operator
        .wait_ready(scaled(args, Duration::from_secs(60)))
        .await?;
    let ready_timeout = scaled(
        args,
        // Three times what the token rate limit allows, and at least 60 ms per credential: on
        // two cores the API server manages about 60 credentials a second at 1000, fewer at 10000.
        Duration::from_secs(90)
            + Duration::from_secs_f64(
                n as f64 * (3.0 / f64::from(args.token_requests_per_second.max(1))).max(0.06),
            ),
    );
    say(&format!(
        "phase 1: creating {n} credentials and their client Secrets, {} at a time (timeout {}s)",
        args.create_concurrency,
        ready_timeout.as_secs()
    ));
    let before = probe.snapshot(operator.pid(), &endpoints).await?;
    operator.reset_peak_rss();
    let timeline = Timeline::start(
        probe.pids(operator.pid()),
        tracker.clone(),
        CREATE_NS,
        Duration::from_millis(250),
    );
    let creation = phases::create_credentials(
        &admin,
        &probe,
        CREATE_NS,
        "bulk",
        n,
        &bulk.url(),
        args.create_concurrency,
    )
    .await?;
    let all_ready = tracker.wait_all_ready(CREATE_NS, n, ready_timeout).await;
    let samples = timeline.stop();
    let after = probe.snapshot(operator.pid(), &endpoints).await?;
    let phase = probe.phase("create", &before, &after);
    let latencies = tracker.ready_latencies(CREATE_NS, &creation.started_at);
    results.creation(args, &creation, all_ready, &latencies, &phase, &samples);
    results.info_gate(gate_seconds, args.token_requests_per_second);
    results.rss_after_creation(memory_breakdown(operator.pid()), &phase.load_end);
    let created = seconds_since(creation.started, creation.started_at.values().copied());
    let ready = seconds_since(creation.started, tracker.ready_times(CREATE_NS));
    let creation_load = format!("{} -> {}", phase.load_start, phase.load_end);

    // Phase 2: steady state.
    settle(operator, scaled(args, Duration::from_secs(60))).await;
    if !args.steady.is_zero() {
        say(&format!(
            "phase 2: steady state, watching for {}s",
            args.steady.as_secs()
        ));
        let before = probe.snapshot(operator.pid(), &endpoints).await?;
        tokio::time::sleep(args.steady).await;
        let after = probe.snapshot(operator.pid(), &endpoints).await?;
        results.steady(&probe.phase("steady", &before, &after));
    }

    // Phase 3: renewals.
    if args.renewal_credentials > 0 && !args.renewal_window.is_zero() {
        say(&format!(
            "phase 3: {} credentials with {}s tokens, renewals observed for {}s",
            args.renewal_credentials,
            args.renewal_lifetime.as_secs(),
            args.renewal_window.as_secs()
        ));
        phases::create_credentials(
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
        let before = probe.snapshot(operator.pid(), &endpoints).await?;
        let window_start = Instant::now();
        tokio::time::sleep(args.renewal_window).await;
        let window_end = Instant::now();
        let after = probe.snapshot(operator.pid(), &endpoints).await?;
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
        phases::delete_credentials(
            &admin,
            &probe,
            RENEW_NS,
            scaled(args, Duration::from_secs(60)),
        )
        .await?;
    }
    results.peak_rss_first_run(
        operator.peak_rss_bytes(),
        memory_breakdown(operator.pid()),
        &loadavg(),
    );

    // Phase 4: memory at start-up, without and with unrelated Secrets.
    if args.unrelated_secrets > 0 {
        let restart_timeout = scaled(
            args,
            Duration::from_secs(60) + Duration::from_millis(20 * n as u64),
        );
        say("phase 4a: operator restarted with no unrelated Secrets");
        let baseline = phases::restart_and_measure(
            &mut guard.operator,
            "restart",
            &operator_bin,
            &operator_flags,
            &operator_kubeconfig,
            &out_dir.join("operator-2.log"),
            &probe,
            &endpoints,
            restart_timeout,
        )
        .await?;
        let operator = guard.operator.as_mut().context("operator gone")?;
        say(&format!(
            "phase 4b: creating {} unrelated Secrets of {} bytes, {} at a time",
            args.unrelated_secrets, args.unrelated_secret_bytes, args.create_concurrency
        ));
        operator.reset_peak_rss();
        let before = probe.snapshot(operator.pid(), &endpoints).await?;
        let created = phases::create_unrelated_secrets(
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
        let after = probe.snapshot(operator.pid(), &endpoints).await?;
        let live = probe.phase("unrelated-live", &before, &after);
        let live_peak = operator.peak_rss_bytes();
        say("phase 4c: operator restarted with the unrelated Secrets in place");
        let loaded = phases::restart_and_measure(
            &mut guard.operator,
            "restart-unrelated",
            &operator_bin,
            &operator_flags,
            &operator_kubeconfig,
            &out_dir.join("operator-3.log"),
            &probe,
            &endpoints,
            restart_timeout,
        )
        .await?;
        results.memory(args, &baseline, created, &live, live_peak, &loaded);
    }

    // Phase 5: a cold start, like for like with the limit.
    let mut cold_ready = vec![];
    if !args.no_cold_start {
        say(&format!(
            "phase 5: cold start: {n} credentials created while the operator is stopped"
        ));
        if let Some(mut operator) = guard.operator.take() {
            operator.stop();
        }
        let empty_timeout = scaled(
            args,
            Duration::from_secs(60) + Duration::from_millis(20 * n as u64),
        );
        phases::empty_namespace(&admin, &probe, CREATE_NS, empty_timeout).await?;
        let before_setup = probe.snapshot(0, &endpoints).await?;
        let setup = phases::create_credentials(
            &admin,
            &probe,
            COLD_NS,
            "bulk",
            n,
            &bulk.url(),
            args.create_concurrency,
        )
        .await?;
        say(&format!(
            "  the bench created {n} client Secrets and credentials in {:.1}s",
            setup.submitted.as_secs_f64()
        ));
        let mut before = probe.snapshot(0, &endpoints).await?;
        let setup_phase = probe.phase("cold-setup", &before_setup, &before);
        before.operator_not_started();
        let spawned = Instant::now();
        let operator = guard.operator.insert(OperatorProcess::start(
            &operator_bin,
            &operator_flags,
            &operator_kubeconfig,
            &out_dir.join("operator-4.log"),
        )?);
        let timeline = Timeline::start(
            probe.pids(operator.pid()),
            tracker.clone(),
            COLD_NS,
            Duration::from_millis(250),
        );
        operator.wait_ready(ready_timeout).await?;
        let synced = Instant::now();
        let all_ready = tracker.wait_all_ready(COLD_NS, n, ready_timeout).await;
        let samples = timeline.stop();
        let after = probe.snapshot(operator.pid(), &endpoints).await?;
        let phase = probe.phase("cold-start", &before, &after);
        results.cold_start(
            n,
            &setup_phase,
            setup.submitted,
            spawned,
            synced,
            all_ready,
            &phase,
            operator.peak_rss_bytes(),
            &samples,
        );
        cold_ready = seconds_since(spawned, tracker.ready_times(COLD_NS));
    }

    let plot = plot_svg(&Plot {
        n,
        created: &created,
        ready: &ready,
        cold_ready: &cold_ready,
        limit_seconds: limit.as_ref().map(|l| l.seconds()),
        factor: limit_factor(n),
        load: &creation_load,
    });
    let plot_path = out_dir.join(format!("ready-{n}.svg"));
    std::fs::write(&plot_path, plot)?;
    say(&format!("plot written to {}", plot_path.display()));

    // The CPU per credential of a run with another N, for comparison (informative).
    let other = if n == 1000 { 10000 } else { 1000 };
    let other_path = out_dir.join(format!("results-{other}.json"));
    if let Some(previous) = std::fs::read_to_string(&other_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
    {
        results.compare_with(&previous, &other_path);
    }

    results.finish(started.elapsed(), &loadavg());
    println!("{}", results.table());
    let json = serde_json::to_string_pretty(&results.json)? + "\n";
    std::fs::write(&args.out, &json)?;
    let per_n = out_dir.join(format!("results-{n}.json"));
    std::fs::write(&per_n, &json)?;
    say(&format!(
        "results written to {} and {}; plot {}",
        args.out.display(),
        per_n.display(),
        plot_path.display()
    ));
    if let Some(plane) = guard.plane.as_mut() {
        plane.keep_dir = false;
    }
    Ok(())
}
