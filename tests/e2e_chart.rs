//! The Helm chart (`charts/dscc-token-operator`) against the pinned helm and a real API server:
//! it lints clean, its schema rejects bad values, what it renders is accepted and creates Pods
//! under the `restricted` Pod Security Standard, its CRD is the generated one, it passes the
//! operator only flags the operator knows, and the operator works with exactly the RBAC the
//! chart grants in namespaced mode, and with nothing more.
//!
//! helm is built from source by `testenv/build.sh helm` (cached); a missing helm fails the
//! tests with instructions, it never skips them.

use dscc_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use support::cluster::{cluster, repo};
use support::harness::{TestEnv, suffix, wait_until};
use support::operator::{Operator, test_flags};

/// Bound of one helm or kubectl command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of building helm from source on a cold cache.
const HELM_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The chart under test.
fn chart() -> PathBuf {
    repo().join("charts/dscc-token-operator")
}

/// Runs `command` (with `input` on stdin) and returns its output; panics after `timeout`.
fn run(mut command: Command, input: Option<&str>, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let writer = input.map(|text| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let text = text.to_owned();
        std::thread::spawn(move || {
            // A command that exits early closes its stdin; its exit status tells why.
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{description} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
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

/// The pinned helm, built from source by `testenv/build.sh helm` (a no-op when cached).
fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = repo().join("testenv/build.sh");
        let mut build = Command::new(&script);
        build.arg("helm");
        let output = run(build, None, HELM_BUILD_TIMEOUT);
        assert!(
            output.status.success(),
            "helm is needed for the chart tests and `testenv/build.sh helm` could not build it \
             (it needs Go 1.26 and the Go module proxy). Run `testenv/build.sh helm` (or \
             `make tools`) and fix what it reports.\n{}",
            printed(&output)
        );
        let mut print = Command::new(&script);
        print.args(["print-bin-dir", "helm"]);
        let output = run(print, None, COMMAND_TIMEOUT);
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let helm = PathBuf::from(dir).join("helm");
        assert!(
            helm.is_file(),
            "`testenv/build.sh helm` succeeded but {} does not exist; run it by hand",
            helm.display()
        );
        helm
    })
}

/// A helm command with its own home folders, so that the tests neither read nor write the
/// user's helm configuration.
fn helm() -> Command {
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let mut command = Command::new(helm_binary());
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    command
}

/// `helm template <release> <chart> -n <namespace> <args>`: the manifests, or helm's output
/// when it refuses.
fn template(release: &str, namespace: &str, args: &[&str]) -> Result<String, Output> {
    let mut command = helm();
    command
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", namespace])
        .args(args);
    let output = run(command, None, COMMAND_TIMEOUT);
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("utf-8 manifests"))
    } else {
        Err(output)
    }
}

/// Like [`template`], for values that must render.
fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    template(release, namespace, args)
        .unwrap_or_else(|output| panic!("helm template {args:?} failed:\n{}", printed(&output)))
}

/// The documents of a multi-document YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| {
            let value = serde_yaml::Value::deserialize(document).expect("valid YAML");
            serde_json::to_value(value).expect("YAML that is also JSON")
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// The documents back as one YAML stream.
fn to_yaml(documents: &[&Value]) -> String {
    documents
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("serialize YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The documents of `kind`.
fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one document of `kind`.
fn one<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(documents, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, got {found:#?}");
    found[0]
}

/// The operator container's arguments in the rendered Deployment.
fn container_args(documents: &[Value]) -> Vec<String> {
    let deployment = one(documents, "Deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    serde_json::from_value(args.clone()).expect("container args are strings")
}

/// The flag name of an argument: `--log-level` of `--log-level=info`.
fn flag_name(arg: &str) -> &str {
    arg.split('=').next().unwrap_or(arg)
}

/// `kubectl <args>` against the test cluster, with `input` on stdin.
fn kubectl(args: &[&str], input: Option<&str>) -> Output {
    let mut command = cluster().kubectl_command();
    command.args(args);
    run(command, input, COMMAND_TIMEOUT)
}

/// Like [`kubectl`], for commands that must succeed.
fn kubectl_ok(args: &[&str], input: Option<&str>) -> String {
    let output = kubectl(args, input);
    assert!(
        output.status.success(),
        "kubectl {args:?} failed:\n{}",
        printed(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates a namespace with `labels`.
async fn create_namespace(client: &Client, name: &str, labels: BTreeMap<String, String>) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(labels),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Deletes the cluster-scoped objects of a rendered chart when the test ends, however it ends
/// (namespaced objects go with the test namespaces).
struct DeleteClusterScoped(String);

impl DeleteClusterScoped {
    fn of(documents: &[Value]) -> Self {
        let cluster_scoped: Vec<&Value> = documents
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
            .collect();
        Self(to_yaml(&cluster_scoped))
    }
}

impl Drop for DeleteClusterScoped {
    fn drop(&mut self) {
        if self.0.trim().is_empty() {
            return;
        }
        let mut command = cluster().kubectl_command();
        command.args(["delete", "--ignore-not-found", "--wait=false", "-f", "-"]);
        let output = run(command, Some(&self.0), COMMAND_TIMEOUT);
        if !output.status.success() && !std::thread::panicking() {
            panic!(
                "cleaning up the chart's ClusterRoles failed:\n{}",
                printed(&output)
            );
        }
    }
}

/// Two different free ports on the loopback interface.
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    // Both held at once, so they differ.
    let (first, second) = (bind(), bind());
    let port = |listener: &TcpListener| listener.local_addr().expect("a local address").port();
    (port(&first), port(&second))
}

#[test]
fn chart_lints_clean_with_default_and_namespaced_values() {
    for values in [
        &[][..],
        &[
            "--set",
            "rbac.namespaced=true",
            "--set",
            "watchNamespaces={team-a,team-b}",
        ][..],
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "podDisruptionBudget.enabled=true",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "extraCA.configMapName=corporate-ca",
        ][..],
    ] {
        let mut command = helm();
        command.args(["lint", "--strict"]).arg(chart()).args(values);
        let output = run(command, None, COMMAND_TIMEOUT);
        let text = printed(&output);
        assert!(
            output.status.success(),
            "helm lint --strict {values:?}:\n{text}"
        );
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm lint --strict {values:?} reported problems:\n{text}"
        );
        assert!(
            text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{text}"
        );
    }
}

#[test]
fn chart_crd_is_the_generated_crd_byte_for_byte() {
    let generated = repo().join("crds/dscc.io_dscccredentials.yaml");
    let in_chart = chart().join("crds/dscc.io_dscccredentials.yaml");
    let generated_bytes =
        std::fs::read(&generated).expect("read crds/dscc.io_dscccredentials.yaml");
    let chart_bytes = std::fs::read(&in_chart).unwrap_or_else(|e| {
        panic!("read {}: {e}", in_chart.display());
    });
    assert!(
        generated_bytes == chart_bytes,
        "{} differs from {}: copy it after regenerating the CRD \
         (cp crds/dscc.io_dscccredentials.yaml charts/dscc-token-operator/crds/)",
        in_chart.display(),
        generated.display()
    );
    let files: Vec<String> = std::fs::read_dir(chart().join("crds"))
        .expect("list the chart's crds/")
        .map(|entry| {
            entry
                .expect("a crds/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        files,
        ["dscc.io_dscccredentials.yaml"],
        "the chart installs one CRD"
    );

    // What helm itself will install: the same document.
    let mut command = helm();
    command.args(["show", "crds"]).arg(chart());
    let output = run(command, None, COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "helm show crds:\n{}",
        printed(&output)
    );
    let shown = documents(&String::from_utf8_lossy(&output.stdout));
    let expected = documents(&String::from_utf8_lossy(&generated_bytes));
    assert_eq!(
        shown, expected,
        "helm show crds must print the generated CRD"
    );
}

#[test]
fn values_schema_and_checks_reject_bad_values() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=abc"], "/replicaCount"),
        (&["--set", "logFormat=xml"], "/logFormat"),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (&["--set", "imagee.tag=dev"], "imagee"),
        (&["--set", "rbac.namespace=true"], "namespace"),
        (
            &["--set", "watchNamespaces={Not_A_Namespace}"],
            "/watchNamespaces/0",
        ),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
        (&["--set", "concurrency=0"], "/concurrency"),
        (&["--set", "extraArgs={run}"], "/extraArgs/0"),
        (&["--set", "image.digest=latest"], "/image/digest"),
        (&["--set", "rbac.namespaced=true"], "needs watchNamespaces"),
        (
            &[
                "--set",
                "replicaCount=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            "needs leaderElection.enabled=true",
        ),
        (
            &[
                "--set",
                "podDisruptionBudget.enabled=true",
                "--set",
                "podDisruptionBudget.minAvailable=1",
                "--set",
                "podDisruptionBudget.maxUnavailable=1",
            ],
            "not both",
        ),
        (
            &[
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "metrics.service.enabled=false",
            ],
            "needs metrics.service.enabled=true",
        ),
        (&["--set", "health.port=8080"], "must differ"),
    ];
    for (args, expected) in cases {
        match template("bad", "ops", args) {
            Ok(manifests) => panic!("helm template {args:?} must fail, it rendered:\n{manifests}"),
            Err(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(
                    stderr.contains(expected),
                    "helm template {args:?} failed without naming {expected:?}:\n{}",
                    printed(&output)
                );
            }
        }
    }
}

/// The keys of values.yaml documented with a `# --` comment, in order.
fn documented_values(values_yaml: &str) -> Vec<String> {
    let mut documented = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending = false;
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            pending = false;
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            pending |= comment.starts_with(" --");
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        if trimmed.starts_with('-') || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        stack.retain(|(level, _)| *level < indent);
        stack.push((indent, key.to_owned()));
        if pending {
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            documented.push(path.join("."));
        }
        pending = false;
    }
    documented
}

/// Every path of `value` that holds no further keys.
fn leaf_paths(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(&path, child, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_value_is_documented_in_the_schema_and_the_readme() {
    let values_yaml = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let values: Value = documents(&values_yaml)
        .pop()
        .expect("values.yaml has a document");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("values.schema.json")).expect("values.schema.json"),
    )
    .expect("values.schema.json is JSON");
    let readme = std::fs::read_to_string(chart().join("README.md")).expect("the chart README");

    let documented = documented_values(&values_yaml);
    let mut leaves = Vec::new();
    leaf_paths("", &values, &mut leaves);
    for leaf in &leaves {
        let covered = documented
            .iter()
            .any(|d| leaf == d || leaf.starts_with(&format!("{d}.")));
        assert!(covered, "values.yaml: `{leaf}` has no `# --` description");
    }

    let table: Vec<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(key, _)| key.to_owned()))
        .collect();
    assert_eq!(
        table, documented,
        "the README's values table must list exactly the documented values, in values.yaml order"
    );

    for path in &documented {
        let mut node = &schema;
        for key in path.split('.') {
            node = &node["properties"][key];
            assert!(
                node.is_object(),
                "values.schema.json does not describe `{path}`"
            );
        }
    }
    let in_schema: BTreeSet<&String> = schema["properties"]
        .as_object()
        .expect("schema properties")
        .keys()
        .filter(|key| key.as_str() != "global")
        .collect();
    let in_values: BTreeSet<&String> = values.as_object().expect("values map").keys().collect();
    assert_eq!(
        in_schema, in_values,
        "schema and values.yaml declare the same top-level keys"
    );
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown top-level values are errors"
    );
}

#[test]
fn chart_passes_the_operator_only_flags_it_knows() {
    let rendered = documents(&render(
        "flags",
        "ops",
        &[
            "--set",
            "watchNamespaces={team-a,team-b}",
            "--set",
            "extraCA.configMapName=corporate-ca",
        ],
    ));
    let args = container_args(&rendered);
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "the subcommand: {args:?}"
    );

    let mut command = Command::new(env!("CARGO_BIN_EXE_dscc-token-operator"));
    command.args(["run", "--help"]);
    let output = run(command, None, COMMAND_TIMEOUT);
    assert!(output.status.success(), "run --help:\n{}", printed(&output));
    let help = String::from_utf8_lossy(&output.stdout);
    let known: BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .collect();
    for arg in &args[1..] {
        assert!(
            known.contains(flag_name(arg)),
            "the chart passes {arg}, which `dscc-token-operator run` does not know \
             (known: {known:?})"
        );
    }
    for expected in [
        "--metrics-address=0.0.0.0:8080",
        "--health-address=0.0.0.0:8081",
        "--namespace=team-a,team-b",
        "--leader-election",
        "--leader-election-namespace=ops",
        "--leader-election-lease-name=flags-dscc-token-operator",
        "--extra-ca-file=/etc/dscc-token-operator/extra-ca/ca.crt",
        "--log-format=json",
    ] {
        assert!(
            args.iter().any(|a| a == expected),
            "{expected} missing from {args:?}"
        );
    }
}

/// The rules the operator needs in a namespace it works in (the contract of the chart).
fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["dscc.io"], "resources": ["dscccredentials"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["dscc.io"], "resources": ["dscccredentials/status"], "verbs": ["get", "patch", "update"]},
        {"apiGroups": ["dscc.io"], "resources": ["dscccredentials/finalizers"], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"],
         "verbs": ["get", "list", "patch"]},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_values_create_operator_pods_under_restricted_pod_security() {
    let env = TestEnv::new("chart-default").await;
    let release = format!("chart-{}", suffix());
    // A namespace that admits only Pods meeting the restricted Pod Security Standard.
    let namespace = format!("{}-restricted", env.namespace);
    let labels = [
        ("pod-security.kubernetes.io/enforce", "restricted"),
        ("pod-security.kubernetes.io/warn", "restricted"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    create_namespace(&env.client, &namespace, BTreeMap::from(labels)).await;

    let manifests = render(&release, &namespace, &[]);
    let rendered = documents(&manifests);
    let _cleanup = DeleteClusterScoped::of(&rendered);
    let fullname = format!("{release}-dscc-token-operator");

    // Cluster-wide mode: one ClusterRole with the operator's rules, bound to its ServiceAccount.
    let roles: Vec<&Value> = of_kind(&rendered, "ClusterRole")
        .into_iter()
        .filter(|r| r["metadata"]["name"] == fullname.as_str())
        .collect();
    assert_eq!(roles.len(), 1, "the operator's ClusterRole");
    assert_eq!(roles[0]["rules"], operator_rules());
    let binding = one(&rendered, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], fullname.as_str());
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": fullname, "namespace": namespace}])
    );
    // Leader election: a Role on Leases in the release namespace only.
    let lease_role = one(&rendered, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], namespace.as_str());
    assert_eq!(
        lease_role["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "create", "update", "patch"]}])
    );
    let service = one(&rendered, "Service");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
    assert!(of_kind(&rendered, "ServiceMonitor").is_empty());
    assert!(of_kind(&rendered, "PodDisruptionBudget").is_empty());

    let deployment = one(&rendered, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        "ghcr.io/dscc-token-operator/dscc-token-operator:0.1.0"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        container["resources"]["requests"],
        json!({"cpu": "50m", "memory": "64Mi"})
    );
    assert_eq!(container["resources"]["limits"], json!({"memory": "128Mi"}));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsUser"], 65532);
    let env_names: Vec<&Value> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| &e["name"])
        .collect();
    assert_eq!(env_names, [&json!("POD_NAME"), &json!("POD_NAMESPACE")]);
    let args = container_args(&rendered);
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "watches all: {args:?}"
    );

    // The API server accepts all of it, and warns about nothing.
    let output = kubectl(&["apply", "-f", "-"], Some(&manifests));
    let text = printed(&output);
    assert!(output.status.success(), "kubectl apply:\n{text}");
    assert!(!text.contains("Warning"), "the API server warned:\n{text}");

    // The Deployment's ReplicaSet creates a Pod, which the restricted namespace admits (it
    // stays Pending: there is no kubelet).
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &namespace);
    let selector = format!("app.kubernetes.io/instance={release}");
    let pod = wait_until(
        "the operator Pod to be created",
        Duration::from_secs(60),
        || async {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .expect("list Pods")
                .items
                .pop()
        },
    )
    .await;
    let spec = pod.spec.expect("a Pod spec");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(fullname.as_str())
    );

    // The check above can fail: a Pod that is not restricted is refused in that namespace.
    let privileged = render(
        &release,
        &namespace,
        &["--set", "securityContext.allowPrivilegeEscalation=true"],
    );
    let privileged = documents(&privileged);
    let deployment = one(&privileged, "Deployment");
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "not-restricted", "namespace": namespace},
        "spec": deployment["spec"]["template"]["spec"].clone(),
    });
    pod["spec"]["serviceAccountName"] = json!("default");
    let output = kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&to_yaml(&[&pod])),
    );
    assert!(
        !output.status.success() && printed(&output).contains("allowPrivilegeEscalation"),
        "a Pod allowing privilege escalation must be refused:\n{}",
        printed(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_values_grant_rights_only_in_the_listed_namespaces() {
    let env = TestEnv::new("chart-namespaced").await;
    let release = format!("chart-{}", suffix());
    let (team_a, team_b, system) = (
        format!("{}-a", env.namespace),
        format!("{}-b", env.namespace),
        format!("{}-sys", env.namespace),
    );
    for namespace in [&team_a, &team_b, &system] {
        create_namespace(&env.client, namespace, BTreeMap::new()).await;
    }
    let watch = format!("watchNamespaces={{{team_a},{team_b}}}");
    let manifests = render(
        &release,
        &system,
        &["--set", "rbac.namespaced=true", "--set", &watch],
    );
    let rendered = documents(&manifests);
    let fullname = format!("{release}-dscc-token-operator");

    // Nothing cluster-wide is bound to the operator; the only ClusterRoles are the aggregated
    // view/edit roles, which carry no Secret or Lease rights.
    assert!(of_kind(&rendered, "ClusterRoleBinding").is_empty());
    for role in of_kind(&rendered, "ClusterRole") {
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        assert!(name.ends_with("-view") || name.ends_with("-edit"), "{name}");
        for rule in role["rules"].as_array().expect("rules") {
            assert_eq!(rule["apiGroups"], json!(["dscc.io"]), "{name}: {rule}");
        }
    }
    let mut role_namespaces: Vec<String> = Vec::new();
    for role in of_kind(&rendered, "Role") {
        let namespace = role["metadata"]["namespace"].as_str().expect("namespaced");
        if role["metadata"]["name"] == format!("{fullname}-leader-election").as_str() {
            assert_eq!(namespace, system);
            continue;
        }
        assert_eq!(role["rules"], operator_rules(), "Role in {namespace}");
        role_namespaces.push(namespace.to_owned());
    }
    assert_eq!(role_namespaces, [team_a.clone(), team_b.clone()]);
    let bindings: Vec<(String, String)> = of_kind(&rendered, "RoleBinding")
        .iter()
        .map(|b| {
            assert_eq!(
                b["subjects"],
                json!([{"kind": "ServiceAccount", "name": fullname, "namespace": system}])
            );
            (
                b["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                b["roleRef"]["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(bindings.len(), 3, "{bindings:?}");
    let args = container_args(&rendered);
    let expected = format!("--namespace={team_a},{team_b}");
    assert!(args.contains(&expected), "{expected} missing from {args:?}");

    let output = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifests));
    let text = printed(&output);
    assert!(output.status.success(), "the API server refused:\n{text}");
    assert!(!text.contains("Warning"), "the API server warned:\n{text}");
}

/// A kubeconfig for the same cluster as `admin`, authenticated by `token` only.
fn token_kubeconfig(admin: &Path, token: &str) -> String {
    let admin: Value = documents(&std::fs::read_to_string(admin).expect("read kubeconfig"))
        .pop()
        .expect("a kubeconfig");
    let cluster = admin["clusters"][0].clone();
    assert!(cluster.is_object(), "the admin kubeconfig names a cluster");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
        "current-context": "operator",
    });
    serde_yaml::to_string(&config).expect("serialize kubeconfig")
}

/// `kubectl auth can-i <args>` as the identity of `kubeconfig`.
fn can_i(kubeconfig: &Path, args: &[&str]) -> bool {
    let mut command = Command::new(&cluster().kubectl);
    command
        .env("KUBECONFIG", kubeconfig)
        .args(["auth", "can-i"])
        .args(args);
    let output = run(command, None, COMMAND_TIMEOUT);
    match String::from_utf8_lossy(&output.stdout).trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {args:?}:\n{}", printed(&output)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_works_with_exactly_the_charts_namespaced_rbac() {
    let env = TestEnv::new("chart-rbac").await;
    let release = format!("chart-{}", suffix());
    let fullname = format!("{release}-dscc-token-operator");
    let (other, system) = (
        format!("{}-other", env.namespace),
        format!("{}-sys", env.namespace),
    );
    for namespace in [&other, &system] {
        create_namespace(&env.client, namespace, BTreeMap::new()).await;
    }
    let watch = format!("watchNamespaces={{{}}}", env.namespace);
    let rendered = documents(&render(
        &release,
        &system,
        &[
            "--set",
            "rbac.namespaced=true",
            "--set",
            &watch,
            "--set",
            "logLevel=info\\,dscc_token_operator=debug",
        ],
    ));
    let _cleanup = DeleteClusterScoped::of(&rendered);

    // Exactly the chart's ServiceAccount and RBAC, nothing else.
    let rbac: Vec<&Value> = rendered
        .iter()
        .filter(|d| {
            let kind = d["kind"].as_str().unwrap_or_default();
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ClusterRole",
                "ClusterRoleBinding",
            ]
            .contains(&kind)
        })
        .collect();
    kubectl_ok(&["apply", "-f", "-"], Some(&to_yaml(&rbac)));
    let token = kubectl_ok(
        &["create", "token", &fullname, "-n", &system, "--duration=1h"],
        None,
    );
    let kubeconfig = env.log_dir.join("operator-kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        token_kubeconfig(&cluster().kubeconfig, token.trim()),
    )
    .expect("write the ServiceAccount kubeconfig");

    // The operator with the chart's flags (its addresses moved to free loopback ports), the
    // test's faster retry flags, and the downward-API environment of the chart's Pod.
    let (metrics_port, health_port) = free_ports();
    let tests = test_flags();
    let overridden = |arg: &str| tests.iter().any(|t| flag_name(t) == flag_name(arg));
    let mut args: Vec<String> = Vec::new();
    for arg in container_args(&rendered).into_iter().skip(1) {
        match flag_name(&arg) {
            "--metrics-address" => args.push(format!("--metrics-address=127.0.0.1:{metrics_port}")),
            "--health-address" => args.push(format!("--health-address=127.0.0.1:{health_port}")),
            _ if overridden(&arg) => {}
            _ => args.push(arg),
        }
    }
    let addresses = ["--metrics-address", "--health-address"];
    args.extend(
        tests
            .iter()
            .filter(|t| !addresses.contains(&flag_name(t)))
            .cloned(),
    );
    let pod_name = format!("{fullname}-7d9f8b6c5-x2x4z");
    let operator = Operator::start_with_env(
        vec![
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            ("POD_NAME".into(), pod_name.clone()),
            ("POD_NAMESPACE".into(), system.clone()),
        ],
        args.clone(),
        env.log_dir.join(format!("operator-{}.log", suffix())),
    );

    // The probes the chart points the kubelet at answer.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    for (port, path) in [
        (health_port, "/healthz"),
        (health_port, "/readyz"),
        (metrics_port, "/metrics"),
    ] {
        let url = format!("http://127.0.0.1:{port}{path}");
        wait_until(
            &format!("{url} to answer 200"),
            Duration::from_secs(30),
            || async {
                let answer = http.get(&url).send().await.ok()?;
                answer.status().is_success().then_some(())
            },
        )
        .await;
    }

    // A workload to restart after the token: the chart's rights on apps must suffice.
    env.create_deployment("reporter").await;

    env.put_client_secret("greenlake-client").await;
    let mut spec = env.spec("greenlake-client");
    spec["rolloutRestartTargets"] = json!([{"kind": "Deployment", "name": "reporter"}]);
    env.create_credential("reports", spec)
        .await
        .expect("create the credential");
    env.wait_ready("reports").await;
    // The stamp's format is e2e_operations' business; here it only has to be written.
    let stamp = wait_until(
        "the Deployment to be restarted",
        Duration::from_secs(15),
        || env.restart_stamp("reporter"),
    )
    .await;
    assert!(!stamp.is_empty(), "an empty dscc.io/restartedAt");
    let token_in_secret = env
        .secret_value("reports-token", "access_token")
        .await
        .expect("the token Secret");
    assert!(env.endpoint.issued_tokens().contains(&token_in_secret));
    wait_until("a TokenIssued Event", Duration::from_secs(15), || async {
        env.events()
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("TokenIssued"))
    })
    .await;
    // Leader election works with the chart's Role: the Lease in the release namespace is held
    // by the Pod (POD_NAME from the downward API).
    assert!(args.iter().any(|a| a == "--leader-election"), "{args:?}");
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &system);
    let holder = wait_until(
        "the leader-election Lease to have a holder",
        Duration::from_secs(15),
        || async {
            let lease = leases.get_opt(&fullname).await.expect("read Lease")?;
            lease.spec?.holder_identity
        },
    )
    .await;
    assert_eq!(holder, pod_name);

    // The same identity may do nothing outside the listed namespace and the Lease.
    let ns = env.namespace.as_str();
    assert!(can_i(&kubeconfig, &["get", "secrets", "-n", ns]));
    assert!(can_i(&kubeconfig, &["patch", "deployments.apps", "-n", ns]));
    assert!(can_i(
        &kubeconfig,
        &["create", "leases.coordination.k8s.io", "-n", &system]
    ));
    assert!(!can_i(&kubeconfig, &["get", "secrets", "-n", &other]));
    assert!(!can_i(
        &kubeconfig,
        &["list", "secrets", "--all-namespaces"]
    ));
    assert!(!can_i(&kubeconfig, &["get", "secrets", "-n", &system]));
    assert!(!can_i(
        &kubeconfig,
        &["list", "dscccredentials.dscc.io", "-n", &other]
    ));
    assert!(!can_i(
        &kubeconfig,
        &["create", "leases.coordination.k8s.io", "-n", ns]
    ));
    assert!(!can_i(
        &kubeconfig,
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"]
    ));

    // And the API server says so to a direct read of a Secret that exists.
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("foreign".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "k".to_owned(),
            ByteString(b"v".to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(env.client.clone(), &other)
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create a Secret in the other namespace");
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).expect("read the ServiceAccount kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("ServiceAccount kubeconfig to config");
    let as_operator = Client::try_from(config).expect("a client as the operator");
    match Api::<Secret>::namespaced(as_operator, &other)
        .get("foreign")
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        answer => {
            panic!("reading a Secret outside the watched namespace must be forbidden: {answer:?}")
        }
    }

    let logs = operator.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the operator hit a permission it lacks with the chart's RBAC (log {}):\n{logs}",
        operator.log_path().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_and_uninstall_round_trip() {
    let env = TestEnv::new("chart-install").await;
    let release = format!("chart-{}", suffix());
    let fullname = format!("{release}-dscc-token-operator");
    let kubeconfig = cluster().kubeconfig.display().to_string();
    let helm_in = |args: &[&str]| {
        let mut command = helm();
        command
            .args(args)
            .args(["--namespace", &env.namespace, "--kubeconfig", &kubeconfig]);
        run(command, None, COMMAND_TIMEOUT)
    };

    // No --wait: the Pod stays Pending without a kubelet. The CRD exists already, and helm
    // leaves an existing CRD alone.
    let chart_path = chart().display().to_string();
    let output = helm_in(&["install", &release, &chart_path, "--timeout", "60s"]);
    assert!(
        output.status.success(),
        "helm install:\n{}",
        printed(&output)
    );
    let output = helm_in(&["status", &release, "--output", "json"]);
    assert!(
        output.status.success(),
        "helm status:\n{}",
        printed(&output)
    );
    let status: Value = serde_json::from_slice(&output.stdout).expect("helm status JSON");
    assert_eq!(status["info"]["status"], "deployed", "{status:#}");

    let ns = env.namespace.as_str();
    for object in [
        format!("deployment/{fullname}"),
        format!("serviceaccount/{fullname}"),
        format!("service/{fullname}-metrics"),
        format!("role/{fullname}-leader-election"),
        format!("rolebinding/{fullname}-leader-election"),
        format!("clusterrole/{fullname}"),
        format!("clusterrolebinding/{fullname}"),
    ] {
        kubectl_ok(&["get", "-n", ns, &object, "-o", "name"], None);
    }

    let output = helm_in(&["uninstall", &release, "--wait", "--timeout", "60s"]);
    assert!(
        output.status.success(),
        "helm uninstall:\n{}",
        printed(&output)
    );
    for object in [
        format!("deployment/{fullname}"),
        format!("clusterrole/{fullname}"),
        format!("clusterrolebinding/{fullname}"),
        format!("clusterrole/{fullname}-view"),
    ] {
        let remaining = kubectl_ok(
            &["get", "-n", ns, &object, "--ignore-not-found", "-o", "name"],
            None,
        );
        assert!(
            remaining.trim().is_empty(),
            "{object} outlived helm uninstall"
        );
    }
    // The CRD (and so every DsccCredential) stays.
    kubectl_ok(
        &["get", "crd", "dscccredentials.dscc.io", "-o", "name"],
        None,
    );
}
