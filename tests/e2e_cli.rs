//! `status` and `renew` against a real control plane with the operator running: as
//! `dscc-token-operator`, as `kubectl-dscc`, and through kubectl as `kubectl dscc`. Every
//! output is checked for tokens and secrets, and saved under `<target>/tmp/cli-status/`.

use dscc_testkit as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::harness::{TestEnv, suffix, wait_for_credential};

const READY: Duration = Duration::from_secs(30);

/// What one run of the command printed.
#[derive(Debug)]
struct Run {
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_success(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{} failed: {self:#?}", self.command);
        self
    }

    fn assert_line(&self, line: &str) -> &Self {
        assert!(
            self.stdout.lines().any(|l| l.trim_end() == line),
            "{}: no line {line:?} in\n{}",
            self.command,
            self.stdout
        );
        self
    }

    fn assert_contains(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text),
            "{}: no {text:?} in\n{}",
            self.command,
            self.stdout
        );
        self
    }
}

/// Runs `program args` with `env` off the async runtime (the token endpoint runs on it).
async fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let program = program.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(&program)
            .args(&args)
            .envs(env)
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        Run {
            command: format!(
                "{} {}",
                program.file_name().unwrap_or_default().to_string_lossy(),
                args.join(" ")
            ),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .expect("join the command")
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dscc-token-operator"))
}

/// A folder with the binary linked as `kubectl-dscc`, and a kubeconfig whose context's
/// namespace is `namespace` (as `kubectl config set-context --current --namespace` does).
struct PluginInstall {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl PluginInstall {
    fn new(env: &TestEnv) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::os::unix::fs::symlink(binary(), dir.path().join("kubectl-dscc"))
            .expect("link kubectl-dscc");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::copy(&env.cluster.kubeconfig, &kubeconfig).expect("copy the kubeconfig");
        let set = Command::new(&env.cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["config", "set-context", "--current", "--namespace"])
            .arg(&env.namespace)
            .output()
            .expect("run kubectl config set-context");
        assert!(set.status.success(), "kubectl config set-context: {set:?}");
        Self { dir, kubeconfig }
    }

    fn plugin(&self) -> PathBuf {
        self.dir.path().join("kubectl-dscc")
    }

    /// PATH with the plugin first, so that kubectl finds `kubectl-dscc`.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

/// Asserts that no output holds a token the endpoint issued (or a piece of one), a client
/// secret or an Authorization value.
fn assert_no_secrets(runs: &[&Run], issued: &[String], secrets: &[&str]) {
    assert!(!issued.is_empty(), "the endpoint issued tokens");
    for run in runs {
        let all = format!("{}\n{}", run.stdout, run.stderr);
        for token in issued {
            assert!(!all.contains(token.as_str()), "{}: a token", run.command);
            for part in token.split('.') {
                assert!(!all.contains(part), "{}: part of a token", run.command);
            }
        }
        for secret in secrets {
            assert!(!all.contains(secret), "{}: a client secret", run.command);
        }
        assert!(
            !all.contains("Bearer "),
            "{}: an Authorization value",
            run.command
        );
        assert!(!all.contains("eyJ"), "{}: something JWT-like", run.command);
    }
}

/// Keeps the output of `run` under `<target>/tmp/cli-status/<name>.txt` (for the README).
fn save(name: &str, run: &Run) {
    let dir = support::tmp_dir().join("cli-status");
    std::fs::create_dir_all(&dir).expect("create the output folder");
    let text = format!(
        "$ {}\n{}{}(exit status {})\n",
        run.command,
        run.stdout,
        run.stderr,
        run.code.map_or_else(|| "signal".into(), |c| c.to_string())
    );
    std::fs::write(dir.join(format!("{name}.txt")), text).expect("save the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_ready_failing_and_suspended_credentials_without_any_secret() {
    let env = TestEnv::new("cli-status").await;
    let (ready_id, ready_secret) = env.put_own_client_secret("ready-client").await;
    let (_, suspended_secret) = env.put_own_client_secret("suspended-client").await;
    let wrong_secret = format!("not-the-secret-{}", suffix());
    env.put_secret(
        "wrong-client",
        &[
            ("client_id", &env.client_id),
            ("client_secret", &wrong_secret),
        ],
    )
    .await;
    env.create_deployment("reporter").await;
    let _operator = env.start_operator(&[]);

    let mut spec = env.spec("ready-client");
    spec["rolloutRestartTargets"] = json!([{"kind": "Deployment", "name": "reporter"}]);
    env.create_credential("ready", spec)
        .await
        .expect("create ready");
    env.create_credential("suspended", env.spec("suspended-client"))
        .await
        .expect("create suspended");
    env.create_credential("failing", env.spec("wrong-client"))
        .await
        .expect("create failing");

    env.wait_ready("suspended").await;
    env.patch_credential("suspended", json!({"spec": {"suspend": true}}))
        .await;
    env.wait_for_condition("suspended", "Ready", "True", Some("Suspended"), READY)
        .await;
    env.wait_for_condition(
        "failing",
        "Ready",
        "False",
        Some("InvalidClientCredentials"),
        READY,
    )
    .await;
    let ready = wait_for_credential(&env, "ready", "Ready with a rollout restart", READY, |c| {
        support::harness::has_condition(c, "Ready", "True", "TokenIssued")
            && c.status
                .as_ref()
                .is_some_and(|s| !s.rollout_restarts.is_empty())
    })
    .await;
    let ready_status = ready.status.clone().expect("a status");
    let kubeconfig = env.cluster.kubeconfig.display().to_string();
    let ns = env.namespace.as_str();

    // The Ready one, in full.
    let with_kubeconfig = [("KUBECONFIG", kubeconfig.as_str())];
    let shown = run(&binary(), &["status", "-n", ns, "ready"], &with_kubeconfig).await;
    let expires_at = ready_status.expires_at.expect("expiresAt").0;
    let renewal = ready_status.renewal_time.expect("renewalTime").0;
    shown
        .assert_success()
        .assert_line(&format!("Name:             {ns}/ready"))
        .assert_line("Ready:            True (TokenIssued)")
        .assert_contains(&format!("\nToken:            expires {expires_at} (in "))
        .assert_contains(&format!("\nRenewal:          {renewal} (in "))
        .assert_line("Grant:            ClientCredentials")
        .assert_line("Last failure:     none")
        .assert_line("Secret:           ready-token (Opaque)")
        .assert_contains("Claims:           (of the token in the Secret; signature not verified)")
        .assert_contains(&format!("client_id  \"{ready_id}\""))
        .assert_contains("Deployment/reporter  for token ")
        .assert_contains("Events:           (newest last)")
        .assert_contains("Normal  TokenIssued");
    for key in ["access_token", "authorization", "expires_at", "token_type"] {
        let line = shown
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no line for key {key}:\n{}", shown.stdout));
        assert!(line.ends_with(" bytes"), "{line}");
    }
    let group = ready_status.token_group.expect("a token group");
    shown.assert_line(&format!("Token group:      {group}"));
    save("ready", &shown);

    // The failing one: the reason, the failure, the next retry, and exit status 1.
    let failing = run(
        &binary(),
        &["status", "-n", ns, "failing"],
        &with_kubeconfig,
    )
    .await;
    assert_eq!(failing.code, Some(1), "not Ready exits 1: {failing:#?}");
    failing
        .assert_line("Ready:            False (InvalidClientCredentials)")
        .assert_line("Stalled:          True (InvalidClientCredentials)")
        .assert_line("Token:            none issued")
        .assert_contains("Last failure:     InvalidClientCredentials, ")
        .assert_contains("\nNext retry:       ")
        .assert_line("Secret:           failing-token (not found)")
        .assert_contains("Warning  InvalidClientCredentials");
    assert!(
        failing.stderr.contains(&format!(
            "DsccCredential {ns}/failing is not Ready (InvalidClientCredentials)"
        )),
        "{failing:#?}"
    );
    save("failing", &failing);

    // The suspended one.
    let suspended = run(
        &binary(),
        &["status", "-n", ns, "suspended"],
        &with_kubeconfig,
    )
    .await;
    suspended
        .assert_success()
        .assert_line("Ready:            True (Suspended)")
        .assert_line("Suspended:        yes: renewals are stopped (spec.suspend)")
        .assert_line("Secret:           suspended-token (Opaque)")
        .assert_contains("Token:            expires ");
    save("suspended", &suspended);

    // The namespace: a table and why the failing one is not Ready; exit 0.
    let table = run(&binary(), &["status", "-n", ns], &with_kubeconfig).await;
    table.assert_success();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME "), "{}", table.stdout);
    for (name, ready, reason) in [
        ("failing", "False", "InvalidClientCredentials"),
        ("ready", "True", "TokenIssued"),
        ("suspended", "True", "Suspended"),
    ] {
        assert!(
            lines.iter().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.len() >= 3 && cells[..3] == [name, ready, reason]
            }),
            "no row for {name}:\n{}",
            table.stdout
        );
    }
    table
        .assert_line("Not Ready:")
        .assert_contains("\n  failing: InvalidClientCredentials: ");
    save("namespace", &table);

    // All namespaces: the namespace column.
    let all = run(&binary(), &["status", "-A"], &with_kubeconfig).await;
    all.assert_success()
        .assert_contains(&format!("\n  {ns}/failing: InvalidClientCredentials: "));
    assert!(all.stdout.starts_with("NAMESPACE "), "{}", all.stdout);

    // As kubectl-dscc, with the namespace of the kubeconfig context.
    let install = PluginInstall::new(&env);
    let plugin_kubeconfig = install.kubeconfig.display().to_string();
    let plugin_ready = run(
        &install.plugin(),
        &["status", "ready"],
        &[("KUBECONFIG", &plugin_kubeconfig)],
    )
    .await;
    plugin_ready
        .assert_success()
        .assert_line("Ready:            True (TokenIssued)");
    let plugin_flags_first = run(
        &install.plugin(),
        &["--kubeconfig", &kubeconfig, "-n", ns, "status", "failing"],
        &[],
    )
    .await;
    assert_eq!(plugin_flags_first.code, Some(1), "{plugin_flags_first:#?}");
    plugin_flags_first.assert_line("Ready:            False (InvalidClientCredentials)");

    // Through kubectl: `kubectl dscc status` finds kubectl-dscc on the PATH.
    let path = install.path();
    let kubectl_env = [
        ("PATH", path.as_str()),
        ("KUBECONFIG", plugin_kubeconfig.as_str()),
    ];
    let via_kubectl = run(
        &env.cluster.kubectl,
        &["dscc", "status", "suspended"],
        &kubectl_env,
    )
    .await;
    via_kubectl
        .assert_success()
        .assert_line("Ready:            True (Suspended)");
    let via_kubectl_table = run(&env.cluster.kubectl, &["dscc", "status"], &kubectl_env).await;
    via_kubectl_table
        .assert_success()
        .assert_contains("\n  failing: InvalidClientCredentials: ");
    save("kubectl-dscc-namespace", &via_kubectl_table);
    let via_kubectl_failing = run(
        &env.cluster.kubectl,
        &["dscc", "status", "failing", "--namespace", ns],
        &kubectl_env,
    )
    .await;
    assert_eq!(
        via_kubectl_failing.code,
        Some(1),
        "kubectl passes the exit status on: {via_kubectl_failing:#?}"
    );
    let version = run(&env.cluster.kubectl, &["dscc", "--version"], &kubectl_env).await;
    version.assert_success().assert_contains("kubectl-dscc ");

    assert_no_secrets(
        &[
            &shown,
            &failing,
            &suspended,
            &table,
            &all,
            &plugin_ready,
            &plugin_flags_first,
            &via_kubectl,
            &via_kubectl_table,
            &via_kubectl_failing,
        ],
        &env.endpoint.issued_tokens(),
        &[
            &ready_secret,
            &suspended_secret,
            &wrong_secret,
            &env.client_secret,
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_gets_a_new_token_for_one_or_all_credentials() {
    let env = TestEnv::new("cli-renew").await;
    let (_, first_secret) = env.put_own_client_secret("first-client").await;
    let (_, second_secret) = env.put_own_client_secret("second-client").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("first", env.spec("first-client"))
        .await
        .expect("create first");
    env.create_credential("second", env.spec("second-client"))
        .await
        .expect("create second");
    env.wait_ready("first").await;
    env.wait_ready("second").await;
    let kubeconfig = env.cluster.kubeconfig.display().to_string();
    let ns = env.namespace.as_str();
    let install = PluginInstall::new(&env);

    let old = env
        .secret_value("first-token", "access_token")
        .await
        .expect("a token");
    let renewed = run(
        &install.plugin(),
        &["renew", "-n", ns, "first"],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await;
    renewed.assert_success().assert_contains(&format!(
        "Requested a new token for DsccCredential {ns}/first (dscc.io/refresh-requested-at="
    ));
    let first_new = env
        .wait_for_new_token("first-token", Some(&old), READY)
        .await;
    let annotation = env
        .credential("first")
        .await
        .metadata
        .annotations
        .and_then(|a| a.get("dscc.io/refresh-requested-at").cloned())
        .expect("the refresh annotation");
    assert!(
        annotation.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "an RFC 3339 time: {annotation}"
    );
    save("renew", &renewed);

    // --all, through kubectl, with the namespace of the kubeconfig context.
    let second_old = env
        .secret_value("second-token", "access_token")
        .await
        .expect("a token");
    let plugin_kubeconfig = install.kubeconfig.display().to_string();
    let path = install.path();
    let all = run(
        &env.cluster.kubectl,
        &["dscc", "renew", "--all"],
        &[("PATH", &path), ("KUBECONFIG", &plugin_kubeconfig)],
    )
    .await;
    all.assert_success()
        .assert_contains(&format!("DsccCredential {ns}/first ("))
        .assert_contains(&format!("DsccCredential {ns}/second ("));
    save("kubectl-dscc-renew-all", &all);
    env.wait_for_new_token("first-token", Some(&first_new), READY)
        .await;
    env.wait_for_new_token("second-token", Some(&second_old), READY)
        .await;

    let missing = run(
        &binary(),
        &["renew", "--kubeconfig", &kubeconfig, "-n", ns, "absent"],
        &[],
    )
    .await;
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert!(
        missing
            .stderr
            .contains(&format!("DsccCredential {ns}/absent not found")),
        "{missing:#?}"
    );
    assert_no_secrets(
        &[&renewed, &all, &missing],
        &env.endpoint.issued_tokens(),
        &[&first_secret, &second_secret, &env.client_secret],
    );
}
