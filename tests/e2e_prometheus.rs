//! The chart's alerts in a real Prometheus: Debian's `prometheus` scrapes the operator every
//! second and evaluates the rules the chart renders (`testenv/prometheus/test-rules.sh
//! --render`, with a short `for`), and `DsccCredentialNotReady` fires for a credential whose
//! client the token endpoint rejects, then clears once its client Secret is fixed.
//!
//! A missing prometheus fails the test with instructions, it never skips it.

use dscc_testkit as support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::harness::{TestEnv, wait_until};
use support::{helm_binary, repo};

/// The whole test stays within this.
const TEST_BOUND: Duration = Duration::from_secs(120);
/// The scrape job: the chart's default `prometheusRule.jobSelector` for the release
/// `dscc-token-operator` that test-rules.sh renders is `job="dscc-token-operator-metrics"`.
const JOB: &str = "dscc-token-operator-metrics";
/// The alert under test.
const ALERT: &str = "DsccCredentialNotReady";

/// The prometheus binary: `PROMETHEUS`, else `prometheus` on PATH (Debian: /usr/bin). Panics
/// with the install instruction when it does not run.
fn prometheus_binary() -> String {
    let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let install = "prometheus is needed for this test and was not found: install it \
                   (Debian/Ubuntu: `apt-get install -y --no-install-recommends prometheus`) or \
                   set PROMETHEUS to a prometheus binary";
    match Command::new(&binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => binary,
        Ok(output) => panic!(
            "{install}\n`{binary} --version`: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("{install} ({binary}: {error})"),
    }
}

/// The chart's alert rules, rendered by test-rules.sh with `helm_args`, written to `out`.
fn render_rules(out: &Path, helm_args: &[&str]) {
    let script = repo().join("testenv/prometheus/test-rules.sh");
    let output = Command::new(&script)
        .arg("--render")
        .arg(out)
        .args(helm_args)
        .env("HELM", helm_binary())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "test-rules.sh --render failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A free port on the loopback interface.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A running Prometheus, stopped when dropped (SIGTERM, then SIGKILL) and killed with the
/// thread that started it (PR_SET_PDEATHSIG): start it from the test's own thread.
struct Prometheus {
    child: Option<Child>,
    url: String,
    log: PathBuf,
    _storage: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second as job [`JOB`] and evaluates `rules` every second.
    fn start(binary: &str, target: std::net::SocketAddr, rules: &Path, dir: &Path) -> Self {
        let storage = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir_in(dir)
            .expect("a storage folder");
        let config = dir.join("prometheus.yml");
        let text = serde_yaml::to_string(&json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{
                "job_name": JOB,
                "honor_labels": true,
                "static_configs": [{"targets": [target.to_string()]}],
            }],
        }))
        .expect("serialize the Prometheus config");
        std::fs::write(&config, text).expect("write the Prometheus config");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create the Prometheus log");
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file);
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start prometheus");
        Self {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
            _storage: storage,
        }
    }

    /// Whether the process still runs.
    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `GET <prometheus>/api/v1/<path>`: its `data`.
async fn api(http: &reqwest::Client, prometheus: &str, path: &str) -> Option<Value> {
    let answer = http
        .get(format!("{prometheus}/api/v1/{path}"))
        .send()
        .await
        .ok()?;
    let body: Value = answer.json().await.ok()?;
    (body["status"] == "success").then(|| body["data"].clone())
}

/// The active (pending or firing) [`ALERT`]s about credential `namespace`/`name`.
async fn active_alerts(
    http: &reqwest::Client,
    prometheus: &str,
    namespace: &str,
    name: &str,
) -> Option<Vec<Value>> {
    let data = api(http, prometheus, "alerts").await?;
    Some(
        data["alerts"]
            .as_array()?
            .iter()
            .filter(|a| {
                let labels = &a["labels"];
                labels["alertname"] == ALERT
                    && labels["namespace"] == namespace
                    && labels["name"] == name
            })
            .cloned()
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_not_ready_alert_fires_for_a_rejected_client_and_clears_once_it_is_fixed() {
    let started = Instant::now();
    let binary = prometheus_binary();
    let env = TestEnv::new("prometheus-alerts").await;
    let rules = env.log_dir.join("rules.yaml");
    render_rules(
        &rules,
        &["--set", "prometheusRule.alerts.credentialNotReady.for=5s"],
    );
    let rendered = std::fs::read_to_string(&rules).expect("read the rendered rules");
    assert!(
        rendered.contains(&format!("alert: {ALERT}")) && rendered.contains("for: 5s"),
        "the rendered rules lack {ALERT} with for: 5s:\n{rendered}"
    );

    // A client the token endpoint does not know: every token request is refused.
    env.put_secret(
        "greenlake-client",
        &[
            ("client_id", "client-nobody-registered"),
            ("client_secret", "not-the-secret"),
        ],
    )
    .await;
    let operator = env.start_operator(&[]);
    let metrics = operator.address("metrics_address");
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create the credential");
    let refused = env
        .wait_for_condition("reports", "Ready", "False", None, Duration::from_secs(30))
        .await;

    let mut prometheus = Prometheus::start(&binary, metrics, &rules, &env.log_dir);
    let url = prometheus.url.clone();
    let log = prometheus.log.display().to_string();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    wait_until(
        &format!("Prometheus at {url} to be ready (log {log})"),
        Duration::from_secs(30),
        || async {
            let answer = http.get(format!("{url}/-/ready")).send().await.ok()?;
            answer.status().is_success().then_some(())
        },
    )
    .await;
    assert!(prometheus.is_running(), "Prometheus exited; see {log}");
    // Its rules are the chart's, and it scrapes the operator.
    let groups = api(&http, &url, "rules").await.expect("the rules API");
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&ALERT), "Prometheus loaded {names:?}");
    wait_until(
        &format!("Prometheus to scrape the operator at {metrics} (log {log})"),
        Duration::from_secs(20),
        || async {
            let data = api(&http, &url, "targets").await?;
            data["activeTargets"]
                .as_array()?
                .iter()
                .any(|t| t["labels"]["job"] == JOB && t["health"] == "up")
                .then_some(())
        },
    )
    .await;

    // The alert fires for that credential (pending for 5 s first).
    let ns = env.namespace.clone();
    let alert = wait_until(
        &format!("{ALERT} to fire for {ns}/reports (Prometheus log {log})"),
        Duration::from_secs(40),
        || async {
            active_alerts(&http, &url, &ns, "reports")
                .await?
                .into_iter()
                .find(|a| a["state"] == "firing")
        },
    )
    .await;
    assert_eq!(alert["labels"]["severity"], "warning", "{alert:#}");
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("{ns}/reports")),
        "the summary names the credential: {alert:#}"
    );
    let reason = refused
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    eprintln!(
        "{ALERT} fired after {:.1?} (Ready=False, {reason})",
        started.elapsed()
    );

    // Fixing the client Secret makes the credential Ready, and the alert clears.
    env.put_client_secret("greenlake-client").await;
    env.wait_ready("reports").await;
    wait_until(
        &format!("{ALERT} for {ns}/reports to clear (Prometheus log {log})"),
        Duration::from_secs(30),
        || async {
            active_alerts(&http, &url, &ns, "reports")
                .await?
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert!(prometheus.is_running(), "Prometheus exited; see {log}");
    let took = started.elapsed();
    eprintln!("{ALERT} cleared; the test took {took:.1?}");
    assert!(took < TEST_BOUND, "the test took {took:?}");
    drop(operator);
}
