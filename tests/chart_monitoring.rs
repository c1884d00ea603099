//! The chart's monitoring: its alerts (`charts/dscc-token-operator/files/alerts.yaml`) pass
//! `promtool check rules` and the unit tests of `testenv/prometheus/alerts_test.yaml`, the
//! queries of its Grafana dashboard parse, and every metric name the alerts and the dashboard
//! use is one the operator exports.
//!
//! promtool comes from Debian's `prometheus` package; helm is built by `testenv/build.sh helm`
//! (cached). A missing promtool or helm fails the tests with instructions, it never skips them.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dscc_testkit::{helm_binary, repo};
use dscc_token_operator::api::WorkloadKind;
use dscc_token_operator::metrics::{CredentialLabels, Metrics};
use k8s_openapi::jiff::Timestamp;

/// How to get promtool, for failure messages.
const INSTALL_PROMTOOL: &str = "promtool is needed for the chart's alert tests and was not \
     found: install it (Debian/Ubuntu: `apt-get install -y --no-install-recommends \
     prometheus`) or set PROMTOOL to a promtool binary";

/// The promtool to use: `PROMTOOL`, else `promtool` on PATH. Panics with the install
/// instruction when it does not run.
fn promtool() -> String {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    match Command::new(&promtool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => promtool,
        Ok(output) => panic!(
            "{INSTALL_PROMTOOL}\n`{promtool} --version`:\n{}",
            printed(&output)
        ),
        Err(error) => panic!("{INSTALL_PROMTOOL} ({promtool}: {error})"),
    }
}

/// What a command printed, for assertion messages.
fn printed(output: &Output) -> String {
    format!(
        "exit status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a script of `testenv/prometheus/` with the pinned helm and promtool.
fn prometheus_script(name: &str, args: &[&str]) -> Output {
    let script = repo().join("testenv/prometheus").join(name);
    Command::new(&script)
        .args(args)
        .env("HELM", helm_binary())
        .env("PROMTOOL", promtool())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

#[test]
fn alerts_pass_promtool_and_their_unit_tests_and_the_dashboard_queries_parse() {
    let output = prometheus_script("test-rules.sh", &[]);
    let text = printed(&output);
    assert!(
        output.status.success(),
        "testenv/prometheus/test-rules.sh failed (rules: charts/dscc-token-operator/files/\
         alerts.yaml, tests: testenv/prometheus/alerts_test.yaml, dashboard: \
         charts/dscc-token-operator/files/dashboard.json):\n{text}"
    );
    // It did run each stage (a script that stopped early but exited 0 would pass otherwise).
    for stage in [
        "promtool check rules",
        "the dashboard's queries",
        "promtool test rules",
        "SUCCESS",
    ] {
        assert!(text.contains(stage), "no `{stage}` in:\n{text}");
    }
}

/// The metric names of the Prometheus text format `text` declares (`# TYPE`), as samples are
/// named: a counter `x` is exported as `x_total`, a histogram as `x_bucket`, `x_sum` and
/// `x_count`, an info metric as `x_info`, a gauge as `x`. (The operator has no summaries.)
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(declaration) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = declaration.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            panic!("a malformed TYPE line: {line}");
        };
        // prometheus_client declares a counter without `_total` and names its samples with it.
        let counter = name.strip_suffix("_total").unwrap_or(name);
        let exported: Vec<String> = match kind {
            "counter" => vec![format!("{counter}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .map(|suffix| format!("{name}{suffix}"))
                .to_vec(),
            "info" => vec![format!("{name}_info")],
            "gauge" | "unknown" => vec![name.to_owned()],
            other => panic!("unexpected metric type {other} in: {line}"),
        };
        names.extend(exported);
    }
    names
}

/// The names of the samples in `text` (the lines that are not comments).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// What the operator exports once every metric family has a series: the registry of
/// `Metrics::new()`, exercised the way the controller does.
fn operator_metrics() -> String {
    let metrics = Metrics::new();
    let credential = CredentialLabels {
        namespace: "storage".into(),
        name: "reports".into(),
    };
    let expires: Timestamp = "2026-11-25T12:00:00Z".parse().expect("a time");
    metrics.observe_credential(&credential, Some(expires), Some(expires), Some(false));
    metrics.token_request(
        "sso.common.cloud.hpe.com",
        "success",
        Duration::from_millis(120),
    );
    metrics.token_request(
        "sso.common.cloud.hpe.com",
        "InvalidClient",
        Duration::from_millis(30),
    );
    metrics.reconciled(Duration::from_millis(5), None);
    metrics.reconciled(Duration::from_millis(5), Some("KubernetesApi"));
    metrics.set_leader(true);
    metrics.rollout_restarted("storage", WorkloadKind::Deployment, "reporter");
    metrics.token_groups(1, 0);
    metrics.token_group("storage", "reports", "048796637b71");
    metrics.encode()
}

/// The names of `used` that are not in `exported`.
fn unknown(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.difference(exported).cloned().collect()
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exported_by_the_operator() {
    let text = operator_metrics();
    let exported = exported_names(&text);
    // The names derived from `# TYPE` are the names of real samples, and every family has one.
    let samples = sample_names(&text);
    assert_eq!(
        exported, samples,
        "the names derived from the TYPE lines differ from the samples' names:\n{text}"
    );

    let output = prometheus_script("metric-names.sh", &["--operator-only"]);
    assert!(
        output.status.success(),
        "testenv/prometheus/metric-names.sh --operator-only failed:\n{}",
        printed(&output)
    );
    let used: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    // The extraction found the names it must (the alerts use these two).
    for name in ["dscc_credential_ready_status", "dscc_token_requests_total"] {
        assert!(
            used.contains(name),
            "metric-names.sh did not find {name}: {used:?}"
        );
    }
    let missing = unknown(&used, &exported);
    assert!(
        missing.is_empty(),
        "the chart's alerts (files/alerts.yaml) or dashboard (files/dashboard.json) use metrics \
         the operator does not export: {missing:?}\nexported: {exported:?}"
    );

    // The comparison does catch a misspelt name, and a counter queried without `_total`.
    let mut wrong = used.clone();
    wrong.insert("dscc_token_request_total".into());
    wrong.insert("dscc_reconcile".into());
    assert_eq!(
        unknown(&wrong, &exported),
        ["dscc_reconcile", "dscc_token_request_total"]
    );
}
