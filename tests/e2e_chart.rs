//! The Helm chart (`charts/dscc-token-operator`) against the pinned helm and a real API server:
//! it lints clean, its schema rejects bad values, what it renders is accepted and creates Pods
//! under the `restricted` Pod Security Standard, its CRD is the generated one, it passes the
//! operator only flags the operator knows, the operator works through every code path with
//! exactly the RBAC the chart grants in namespaced mode, and each verb of that RBAC is needed
//! (taken away, the API server refuses exactly that call).
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

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use support::cluster::{ExtraApiServer, cluster, repo};
use support::harness::{TestEnv, condition, suffix, wait_for_credential, wait_until};
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

/// The rules the operator needs in a namespace it works in (the contract of the chart): the
/// credential informer and a GET when it lags, server-side apply of the status, the Secret metadata watch with GETs,
/// POST creates, PUT replaces at the read resourceVersion and deletes (no patch), and
/// events.k8s.io Events. No `dscccredentials/finalizers`: the Secrets' owner reference sets no
/// `blockOwnerDeletion`, so OwnerReferencesPermissionEnforcement asks for nothing.
fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["dscc.io"], "resources": ["dscccredentials"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["dscc.io"], "resources": ["dscccredentials/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["get", "list", "watch", "create", "update", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// The rules of the leader-election Role: create (not restrictable by name), and get and patch
/// of the one Lease.
fn lease_rules(lease: &str) -> Value {
    json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": ["get", "patch"]},
    ])
}

/// The rules of the rollout-restart Role or ClusterRole: a merge patch of the workload.
fn rollout_restart_rules() -> Value {
    json!([
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"],
         "verbs": ["patch"]},
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
    assert_eq!(lease_role["rules"], lease_rules(&fullname));
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

/// Asserts what `kubectl auth can-i` answers for each `(verb and resource, namespace)`.
fn assert_can_i(kubeconfig: &Path, expected: bool, checks: &[(&str, &str)]) {
    for (what, namespace) in checks {
        let mut args: Vec<&str> = what.split(' ').collect();
        args.extend(["-n", namespace]);
        assert_eq!(
            can_i(kubeconfig, &args),
            expected,
            "kubectl auth can-i {what} -n {namespace} as the chart's ServiceAccount"
        );
    }
}

/// The kinds of the chart's ServiceAccount and RBAC objects.
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// The chart rendered in namespaced mode for one operator under test: it watches one
/// namespace, and its ServiceAccount and Lease are in `system`, the release namespace.
struct ChartOperator {
    fullname: String,
    system: String,
    rendered: Vec<Value>,
}

impl ChartOperator {
    /// Renders a new release watching `watched`, with the tests' log level and `extra` values.
    fn render(watched: &str, system: &str, extra: &[&str]) -> Self {
        let release = format!("chart-{}", suffix());
        let watch = format!("watchNamespaces={{{watched}}}");
        let mut args = vec![
            "--set",
            "rbac.namespaced=true",
            "--set",
            watch.as_str(),
            "--set",
            "logLevel=info\\,dscc_token_operator=debug",
        ];
        args.extend_from_slice(extra);
        Self {
            fullname: format!("{release}-dscc-token-operator"),
            system: system.to_owned(),
            rendered: documents(&render(&release, system, &args)),
        }
    }

    /// The ServiceAccount and every RBAC object of the release.
    fn rbac(&self) -> Vec<&Value> {
        self.rendered
            .iter()
            .filter(|d| RBAC_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
            .collect()
    }

    /// The rendered Role `name`.
    fn role_mut(&mut self, name: &str) -> &mut Value {
        self.rendered
            .iter_mut()
            .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Role {name} rendered"))
    }

    /// Creates the ServiceAccount and RBAC objects (server-side apply, as admin), then writes
    /// to `out` a kubeconfig for the API server of `server` authenticated only by a
    /// TokenRequest token of the ServiceAccount, as the operator's Pod would be.
    async fn apply_rbac_and_log_in(&self, client: &Client, server: &Path, out: &Path) {
        for object in self.rbac() {
            apply(client, object, &self.system).await;
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(client.clone(), &self.system)
            .create_token_request(&self.fullname, &PostParams::default(), &request)
            .await
            .expect("a TokenRequest token of the chart's ServiceAccount")
            .status
            .expect("a TokenRequest status")
            .token;
        std::fs::write(out, token_kubeconfig(server, &token))
            .expect("write the ServiceAccount kubeconfig");
    }

    /// The operator with the chart's flags (the addresses moved to the loopback `ports`, or to
    /// free ports it picks itself), the tests' faster retry flags, and the downward-API
    /// environment of the chart's Pod. Returns it, its arguments and its Pod name.
    fn start(
        &self,
        kubeconfig: &Path,
        ports: Option<(u16, u16)>,
        log: PathBuf,
    ) -> (Operator, Vec<String>, String) {
        let tests = test_flags();
        let overridden = |arg: &str| tests.iter().any(|t| flag_name(t) == flag_name(arg));
        let mut args: Vec<String> = Vec::new();
        for arg in container_args(&self.rendered).into_iter().skip(1) {
            match (flag_name(&arg), ports) {
                ("--metrics-address", Some((metrics, _))) => {
                    args.push(format!("--metrics-address=127.0.0.1:{metrics}"))
                }
                ("--health-address", Some((_, health))) => {
                    args.push(format!("--health-address=127.0.0.1:{health}"))
                }
                _ if overridden(&arg) => {}
                _ => args.push(arg),
            }
        }
        let addresses = ["--metrics-address", "--health-address"];
        args.extend(
            tests
                .iter()
                .filter(|t| ports.is_none() || !addresses.contains(&flag_name(t)))
                .cloned(),
        );
        let pod_name = format!("{}-7d9f8b6c5-x2x4z", self.fullname);
        let operator = Operator::start_with_env(
            vec![
                ("KUBECONFIG".into(), kubeconfig.display().to_string()),
                ("POD_NAME".into(), pod_name.clone()),
                ("POD_NAMESPACE".into(), self.system.clone()),
            ],
            args.clone(),
            log,
        );
        (operator, args, pod_name)
    }
}

/// Server-side applies one rendered object as admin.
async fn apply(client: &Client, object: &Value, default_namespace: &str) {
    let api_version = object["apiVersion"].as_str().expect("an apiVersion");
    let kind = object["kind"].as_str().expect("a kind");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let name = object["metadata"]["name"].as_str().expect("a name");
    let api: Api<DynamicObject> = if kind.starts_with("Cluster") {
        Api::all_with(client.clone(), &resource)
    } else {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(default_namespace);
        Api::namespaced_with(client.clone(), namespace, &resource)
    };
    api.patch(
        name,
        &PatchParams::apply("e2e-chart").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

/// A plain-HTTP front of the API server on 127.0.0.1 that relays every request as is and holds
/// back each chunk of DsccCredential watches by `delay`: the operator's credential cache then
/// lags behind its own status writes, and it reads the credential live (a GET). Stops when
/// dropped.
struct LaggingWatchProxy {
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LaggingWatchProxy {
    /// Relays to the API server of the admin kubeconfig `admin`.
    async fn start(admin: &Path, delay: Duration) -> Self {
        let config: Value = documents(&std::fs::read_to_string(admin).expect("read kubeconfig"))
            .pop()
            .expect("a kubeconfig");
        let server = &config["clusters"][0]["cluster"];
        let upstream = server["server"]
            .as_str()
            .expect("a server URL")
            .trim_end_matches('/')
            .to_owned();
        let ca = match (
            server["certificate-authority"].as_str(),
            server["certificate-authority-data"].as_str(),
        ) {
            (Some(file), _) => std::fs::read(file).expect("read the API server's CA"),
            (None, Some(data)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("base64 CA data")
            }
            (None, None) => panic!("the kubeconfig names no CA for {upstream}"),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("a PEM CA"))
            .build()
            .expect("an HTTP client for the API server");
        let relay = move |request: axum::extract::Request| {
            let (http, upstream) = (http.clone(), upstream.clone());
            async move { relay(&http, &upstream, request, delay).await }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let app = axum::Router::new().fallback(relay);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { address, task }
    }

    /// A kubeconfig naming only the proxy (no credentials, no TLS).
    fn kubeconfig(&self, path: &Path) {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lagging", "cluster": {"server": format!("http://{}", self.address)}}],
            "users": [{"name": "nobody", "user": {}}],
            "contexts": [{"name": "lagging", "context": {"cluster": "lagging", "user": "nobody"}}],
            "current-context": "lagging",
        });
        std::fs::write(
            path,
            serde_yaml::to_string(&config).expect("serialize kubeconfig"),
        )
        .expect("write the proxy kubeconfig");
    }
}

impl Drop for LaggingWatchProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one request to `upstream`; the answer to a DsccCredential watch comes `delay` late,
/// chunk by chunk.
async fn relay(
    http: &reqwest::Client,
    upstream: &str,
    request: axum::extract::Request,
    delay: Duration,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let lagging = parts.uri.path().contains("/dscccredentials")
        && parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let mut forwarded = http
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = match forwarded.send().await {
        Ok(answer) => answer,
        Err(error) => {
            return (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response();
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let chunks = futures::stream::unfold(answer, move |mut answer| async move {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                if lagging {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<_, std::io::Error>(chunk), answer))
            }
            Ok(None) => None,
            Err(error) => Some((Err(std::io::Error::other(error)), answer)),
        }
    });
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(chunks));
    *response.status_mut() = status;
    for (name, value) in &headers {
        let hop = [
            axum::http::header::CONTENT_LENGTH,
            axum::http::header::TRANSFER_ENCODING,
            axum::http::header::CONNECTION,
        ];
        if !hop.contains(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// Whether the operator's log shows a refused API call.
fn refused_calls(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|line| {
            let line = line.to_lowercase();
            line.contains("forbidden") || line.contains("answered 403")
        })
        .collect()
}

/// Every code path of the operator, run as the chart's ServiceAccount with exactly the rules
/// the chart renders (namespaced mode, rollout restarts on): the first token (create of the
/// target and the refresh-token Secret), renewals (replace of both), two rollout restarts in
/// one pass (the second Event is a patch of the first), a target rename (delete of the old
/// one), a type change (delete and create), Events, status writes, the Lease. Nothing is
/// refused, and what the chart no longer grants the ServiceAccount indeed cannot do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_works_with_exactly_the_charts_namespaced_rbac() {
    let env = TestEnv::new("chart-rbac").await;
    // Tokens of 8 s with a refresh token: renewals, by the refresh grant, come within seconds.
    env.endpoint.set_lifetime(Duration::from_secs(8));
    env.endpoint.set_refresh_tokens(true);
    let (other, system) = (
        format!("{}-other", env.namespace),
        format!("{}-sys", env.namespace),
    );
    for namespace in [&other, &system] {
        create_namespace(&env.client, namespace, BTreeMap::new()).await;
    }
    let chart = ChartOperator::render(
        &env.namespace,
        &system,
        &["--set", "rolloutRestart.enabled=true"],
    );
    let fullname = chart.fullname.clone();
    let _cleanup = DeleteClusterScoped::of(&chart.rendered);

    // The rules are the chart's contract.
    let roles: BTreeMap<String, (String, Value)> = of_kind(&chart.rendered, "Role")
        .into_iter()
        .map(|role| {
            (
                role["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                (
                    role["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    role["rules"].clone(),
                ),
            )
        })
        .collect();
    let expected = BTreeMap::from([
        (fullname.clone(), (env.namespace.clone(), operator_rules())),
        (
            format!("{fullname}-leader-election"),
            (system.clone(), lease_rules(&fullname)),
        ),
        (
            format!("{fullname}-rollout-restart"),
            (env.namespace.clone(), rollout_restart_rules()),
        ),
    ]);
    assert_eq!(roles, expected, "the rendered Roles");
    assert!(of_kind(&chart.rendered, "ClusterRoleBinding").is_empty());

    // Exactly the chart's ServiceAccount and RBAC, nothing else.
    let kubeconfig = env.log_dir.join("operator-kubeconfig.yaml");
    chart
        .apply_rbac_and_log_in(&env.client, &cluster().kubeconfig, &kubeconfig)
        .await;
    let (metrics_port, health_port) = free_ports();
    let (operator, args, pod_name) = chart.start(
        &kubeconfig,
        Some((metrics_port, health_port)),
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

    // Two workloads to restart after each token: the chart's patch on apps must suffice.
    env.create_deployment("reporter").await;
    env.create_deployment("archiver").await;
    env.put_client_secret("greenlake-client").await;
    let mut spec = env.spec("greenlake-client");
    spec["rolloutRestartTargets"] = json!([
        {"kind": "Deployment", "name": "reporter"},
        {"kind": "Deployment", "name": "archiver"},
    ]);
    env.create_credential("reports", spec)
        .await
        .expect("create the credential");
    // Status writes.
    env.wait_ready("reports").await;

    // The first token: the target and the refresh-token Secret are created.
    let first = env
        .wait_for_new_token("reports-token", None, Duration::from_secs(15))
        .await;
    let refresh_of = || async {
        let secret = env.secret("reports-refresh").await?;
        let value = secret.data?.get("refresh_token")?.0.clone();
        Some((secret.metadata.resource_version?, value))
    };
    let (refresh_version, refresh_token) = wait_until(
        "the refresh-token Secret reports-refresh",
        Duration::from_secs(15),
        refresh_of,
    )
    .await;

    // Both workloads restarted; the second RolloutRestarted Event of a pass is a patch of
    // the first (a series).
    for name in ["reporter", "archiver"] {
        let stamp = wait_until(
            &format!("Deployment {name} to be restarted"),
            Duration::from_secs(15),
            || env.restart_stamp(name),
        )
        .await;
        assert!(!stamp.is_empty(), "an empty dscc.io/restartedAt");
    }
    for (reason, count) in [("TokenIssued", 1), ("RolloutRestarted", 2)] {
        wait_until(
            &format!("a {reason} Event counted {count} times or more"),
            Duration::from_secs(15),
            || async {
                env.events().await.into_iter().find(|e| {
                    let series = e.series.as_ref().and_then(|s| s.count).unwrap_or(1);
                    e.reason.as_deref() == Some(reason) && series.max(e.count.unwrap_or(1)) >= count
                })
            },
        )
        .await;
    }

    // Renewal: both Secrets are replaced (PUT), the refresh token used.
    let renewed = env
        .wait_for_new_token("reports-token", Some(&first), Duration::from_secs(30))
        .await;
    wait_until(
        "a token request with the refresh grant",
        Duration::from_secs(30),
        || async {
            env.endpoint
                .requests()
                .iter()
                .any(|r| r.grant_type.as_deref() == Some("refresh_token"))
                .then_some(())
        },
    )
    .await;
    wait_until(
        "the refresh-token Secret to be replaced with a new refresh token",
        Duration::from_secs(30),
        || async {
            let (version, token) = refresh_of().await?;
            (version != refresh_version && token != refresh_token).then_some(())
        },
    )
    .await;

    // A new target name: the token moves, the old Secret is deleted.
    env.patch_credential(
        "reports",
        json!({"spec": {"target": {"name": "reports-moved"}}}),
    )
    .await;
    env.wait_for_new_token("reports-moved", None, Duration::from_secs(15))
        .await;
    env.wait_for_secret_gone("reports-token", Duration::from_secs(15))
        .await;
    // A new type: a Secret's type is immutable, so it is deleted and created again.
    let uid_of = |secret: &Secret| secret.metadata.uid.clone().unwrap_or_default();
    let moved = env.secret("reports-moved").await.expect("reports-moved");
    env.patch_credential(
        "reports",
        json!({"spec": {"target": {"type": "example.com/dscc-token"}}}),
    )
    .await;
    wait_until(
        "reports-moved to be created again with type example.com/dscc-token",
        Duration::from_secs(15),
        || async {
            let secret = env.secret("reports-moved").await?;
            let has_token = secret
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key("access_token"));
            (secret.type_.as_deref() == Some("example.com/dscc-token")
                && uid_of(&secret) != uid_of(&moved)
                && has_token)
                .then_some(())
        },
    )
    .await;
    wait_for_credential(
        &env,
        "reports",
        "Ready for the current generation",
        Duration::from_secs(30),
        |c| {
            let generation = c.metadata.generation;
            c.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == generation)
                && condition(c, "Ready").is_some_and(|r| r.status == "True")
        },
    )
    .await;
    assert_ne!(first, renewed);

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

    // What the chart grants, and what it no longer grants (removed rights are not needed:
    // everything above worked without them).
    let ns = env.namespace.as_str();
    let lease = format!("leases.coordination.k8s.io/{fullname}");
    assert_can_i(
        &kubeconfig,
        true,
        &[
            ("get dscccredentials.dscc.io", ns),
            ("list dscccredentials.dscc.io", ns),
            ("watch dscccredentials.dscc.io", ns),
            ("patch dscccredentials.dscc.io --subresource=status", ns),
            ("get secrets", ns),
            ("list secrets", ns),
            ("watch secrets", ns),
            ("create secrets", ns),
            ("update secrets", ns),
            ("delete secrets", ns),
            ("create events.events.k8s.io", ns),
            ("patch events.events.k8s.io", ns),
            ("patch deployments.apps", ns),
            ("patch statefulsets.apps", ns),
            ("patch daemonsets.apps", ns),
            ("create leases.coordination.k8s.io", &system),
            (&format!("get {lease}"), &system),
            (&format!("patch {lease}"), &system),
        ],
    );
    let other_lease = "leases.coordination.k8s.io/someone-elses-lease";
    assert_can_i(
        &kubeconfig,
        false,
        &[
            ("update dscccredentials.dscc.io", ns),
            ("patch dscccredentials.dscc.io", ns),
            ("get dscccredentials.dscc.io --subresource=status", ns),
            ("update dscccredentials.dscc.io --subresource=status", ns),
            (
                "update dscccredentials.dscc.io --subresource=finalizers",
                ns,
            ),
            ("patch secrets", ns),
            ("deletecollection secrets", ns),
            ("create events", ns),
            ("patch events", ns),
            ("get deployments.apps", ns),
            ("list deployments.apps", ns),
            ("watch deployments.apps", ns),
            ("update deployments.apps", ns),
            ("list statefulsets.apps", ns),
            ("list daemonsets.apps", ns),
            ("list leases.coordination.k8s.io", &system),
            ("watch leases.coordination.k8s.io", &system),
            (&format!("update {lease}"), &system),
            (&format!("delete {lease}"), &system),
            (&format!("get {other_lease}"), &system),
            (&format!("patch {other_lease}"), &system),
            ("create leases.coordination.k8s.io", ns),
            ("get secrets", &other),
            ("get secrets", &system),
            ("list dscccredentials.dscc.io", &other),
        ],
    );
    assert!(!can_i(
        &kubeconfig,
        &["list", "secrets", "--all-namespaces"]
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
    let refused = refused_calls(&logs);
    assert!(
        refused.is_empty(),
        "the operator hit a permission it lacks with the chart's RBAC (log {}):\n{}",
        operator.log_path().display(),
        refused.join("\n")
    );
}

/// The rendered Role a right comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FromRole {
    /// `<fullname>` in the watched namespace.
    Operator,
    /// `<fullname>-leader-election` in the release namespace.
    Lease,
    /// `<fullname>-rollout-restart`: its only right; taking it away is rendering the chart
    /// without `rolloutRestart.enabled`.
    RolloutRestart,
}

/// One verb of one rule of the chart.
#[derive(Clone, Copy, Debug)]
struct Right {
    from: FromRole,
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
}

impl Right {
    /// Takes the verb out of the rules of `role` (a rule left without verbs goes).
    fn remove_from(&self, role: &mut Value) {
        let rules = role["rules"].as_array_mut().expect("rules");
        let mut removed = false;
        for rule in rules.iter_mut() {
            let matches = rule["apiGroups"] == json!([self.group])
                && rule["resources"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!(self.resource)));
            if !matches {
                continue;
            }
            let verbs = rule["verbs"].as_array_mut().expect("verbs");
            let before = verbs.len();
            verbs.retain(|v| v != self.verb);
            removed |= verbs.len() < before;
        }
        rules.retain(|rule| rule["verbs"].as_array().is_some_and(|v| !v.is_empty()));
        assert!(removed, "{self:?} is not in the rendered Role: {role:#}");
    }

    /// What the API server answers a call the right would have allowed.
    fn forbidden(&self) -> String {
        format!(
            "cannot {} resource \"{}\" in API group \"{}\"",
            self.verb, self.resource, self.group
        )
    }
}

/// What a variant makes the operator do besides the first token.
#[derive(Clone, Copy, Debug, Default)]
struct Exercise {
    /// Tokens of 6 s, so that the target Secret is soon renewed (replaced).
    renewal: bool,
    /// A new target name once the first target exists.
    rename: bool,
    /// How many Deployments `spec.rolloutRestartTargets` lists.
    restarts: usize,
    /// Talk to the second API server, which runs the OwnerReferencesPermissionEnforcement
    /// admission plugin (as OpenShift does), and check that it enforces.
    owner_references: bool,
    /// Talk to the API server through a proxy that holds back DsccCredential watch events by
    /// 5 s, so that the credential cache lags behind the operator's status writes and it
    /// reads the credential live.
    lagging_watch: bool,
}

/// What must not have happened once the refusal is seen.
#[derive(Clone, Copy, Debug)]
enum Consequence {
    /// Nothing else checked (the refusal itself is the proof).
    None,
    /// The credential has no status.
    NoStatus,
    /// No target Secret was written.
    NoTarget,
    /// The target Secret still holds the first token.
    NotRenewed,
    /// The previous target Secret is still there next to the new one.
    OldTargetKept,
    /// No Event about the credential exists.
    NoEvents,
    /// The Deployment was not restarted.
    NotRestarted,
}

/// One run of the operator with one right of the chart taken away (or none: the control).
struct Variant {
    id: &'static str,
    removed: Option<Right>,
    exercise: Exercise,
    /// Text that must show in the operator's log, the credential's status or its Events.
    evidence: Option<String>,
    consequence: Consequence,
}

/// Every right the chart grants, each taken away in a variant of its own, and a control run
/// with all of them on the second API server (OwnerReferencesPermissionEnforcement).
fn variants() -> Vec<Variant> {
    use Consequence as C;
    use FromRole::{Lease, Operator, RolloutRestart};
    let first_token = Exercise::default();
    let mut variants: Vec<Variant> = [
        (
            "cred-get",
            Operator,
            "dscc.io",
            "dscccredentials",
            "get",
            Exercise {
                lagging_watch: true,
                ..first_token
            },
            C::None,
        ),
        (
            "cred-list",
            Operator,
            "dscc.io",
            "dscccredentials",
            "list",
            first_token,
            C::NoStatus,
        ),
        (
            "cred-watch",
            Operator,
            "dscc.io",
            "dscccredentials",
            "watch",
            first_token,
            C::None,
        ),
        (
            "status-patch",
            Operator,
            "dscc.io",
            "dscccredentials/status",
            "patch",
            first_token,
            C::NoStatus,
        ),
        (
            "secret-get",
            Operator,
            "",
            "secrets",
            "get",
            first_token,
            C::NoTarget,
        ),
        (
            "secret-list",
            Operator,
            "",
            "secrets",
            "list",
            first_token,
            C::None,
        ),
        (
            "secret-watch",
            Operator,
            "",
            "secrets",
            "watch",
            first_token,
            C::None,
        ),
        (
            "secret-create",
            Operator,
            "",
            "secrets",
            "create",
            first_token,
            C::NoTarget,
        ),
        (
            "secret-update",
            Operator,
            "",
            "secrets",
            "update",
            Exercise {
                renewal: true,
                ..first_token
            },
            C::NotRenewed,
        ),
        (
            "secret-delete",
            Operator,
            "",
            "secrets",
            "delete",
            Exercise {
                rename: true,
                ..first_token
            },
            C::OldTargetKept,
        ),
        (
            "event-create",
            Operator,
            "events.k8s.io",
            "events",
            "create",
            first_token,
            C::NoEvents,
        ),
        (
            "event-patch",
            Operator,
            "events.k8s.io",
            "events",
            "patch",
            Exercise {
                restarts: 2,
                ..first_token
            },
            C::None,
        ),
        (
            "lease-create",
            Lease,
            "coordination.k8s.io",
            "leases",
            "create",
            first_token,
            C::NoStatus,
        ),
        (
            "lease-get",
            Lease,
            "coordination.k8s.io",
            "leases",
            "get",
            first_token,
            C::NoStatus,
        ),
        (
            "lease-patch",
            Lease,
            "coordination.k8s.io",
            "leases",
            "patch",
            first_token,
            C::NoStatus,
        ),
        (
            "restart-patch",
            RolloutRestart,
            "apps",
            "deployments",
            "patch",
            Exercise {
                restarts: 1,
                ..first_token
            },
            C::NotRestarted,
        ),
    ]
    .into_iter()
    .map(|(id, from, group, resource, verb, exercise, consequence)| {
        let right = Right {
            from,
            group,
            resource,
            verb,
        };
        Variant {
            id,
            removed: Some(right),
            exercise,
            evidence: Some(right.forbidden()),
            consequence,
        }
    })
    .collect();
    variants.push(Variant {
        id: "lagging-watch",
        removed: None,
        exercise: Exercise {
            lagging_watch: true,
            ..first_token
        },
        evidence: None,
        consequence: C::None,
    });
    variants.push(Variant {
        id: "owner-references",
        removed: None,
        exercise: Exercise {
            owner_references: true,
            ..first_token
        },
        evidence: None,
        consequence: C::None,
    });
    variants
}

/// Quotes and backslashes gone: a JSON log line escapes the API server's quotes once or
/// twice (Display and Debug of the error).
fn unquoted(text: &str) -> String {
    text.chars().filter(|c| *c != '"' && *c != '\\').collect()
}

/// Runs one variant in namespaces of its own; panics unless the operator shows the refusal
/// (or, for the control, gets Ready without any).
async fn run_variant(variant: Variant, second: Option<Arc<ExtraApiServer>>) -> Duration {
    let started = Instant::now();
    let env = TestEnv::new(&format!("rbac-{}", variant.id)).await;
    let system = format!("{}-sys", env.namespace);
    create_namespace(&env.client, &system, BTreeMap::new()).await;
    let removed = variant.removed;
    let rollout = removed.is_none_or(|r| r.from != FromRole::RolloutRestart);
    let (watched, release_ns) = (env.namespace.clone(), system.clone());
    let mut chart = tokio::task::spawn_blocking(move || {
        let extra: &[&str] = if rollout {
            &["--set", "rolloutRestart.enabled=true"]
        } else {
            &[]
        };
        ChartOperator::render(&watched, &release_ns, extra)
    })
    .await
    .expect("render the chart");
    let fullname = chart.fullname.clone();
    match removed {
        Some(
            right @ Right {
                from: FromRole::Operator,
                ..
            },
        ) => right.remove_from(chart.role_mut(&fullname)),
        Some(
            right @ Right {
                from: FromRole::Lease,
                ..
            },
        ) => right.remove_from(chart.role_mut(&format!("{fullname}-leader-election"))),
        Some(Right {
            from: FromRole::RolloutRestart,
            ..
        }) => {
            assert!(
                !chart.rbac().iter().any(|d| d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-rollout-restart"))),
                "rollout-restart rights rendered without rolloutRestart.enabled"
            );
        }
        None => {}
    }
    assert!(of_kind(&chart.rendered, "ClusterRoleBinding").is_empty());

    let mut _proxy = None;
    let server = match (&second, variant.exercise.owner_references) {
        (Some(second), true) => second.kubeconfig.clone(),
        (None, true) => panic!("{}: needs the second API server", variant.id),
        _ if variant.exercise.lagging_watch => {
            let proxy =
                LaggingWatchProxy::start(&cluster().kubeconfig, Duration::from_secs(5)).await;
            let kubeconfig = env.log_dir.join("proxy-kubeconfig.yaml");
            proxy.kubeconfig(&kubeconfig);
            _proxy = Some(proxy);
            kubeconfig
        }
        _ => cluster().kubeconfig.clone(),
    };
    let kubeconfig = env.log_dir.join("operator-kubeconfig.yaml");
    chart
        .apply_rbac_and_log_in(&env.client, &server, &kubeconfig)
        .await;
    if variant.exercise.owner_references {
        assert_enforces_owner_references(&env, &kubeconfig).await;
    }
    if !rollout {
        // Without rolloutRestart.enabled the ServiceAccount may do nothing to workloads.
        let (kubeconfig, ns) = (kubeconfig.clone(), env.namespace.clone());
        tokio::task::spawn_blocking(move || {
            assert_can_i(
                &kubeconfig,
                false,
                &[
                    ("patch deployments.apps", &ns),
                    ("update deployments.apps", &ns),
                    ("get deployments.apps", &ns),
                    ("list deployments.apps", &ns),
                    ("patch statefulsets.apps", &ns),
                    ("patch daemonsets.apps", &ns),
                ],
            )
        })
        .await
        .expect("kubectl auth can-i");
    }

    if variant.exercise.renewal {
        env.endpoint.set_lifetime(Duration::from_secs(6));
    }
    let mut spec = env.spec("greenlake-client");
    let mut targets = Vec::new();
    for i in 0..variant.exercise.restarts {
        let name = format!("reporter-{i}");
        env.create_deployment(&name).await;
        targets.push(json!({"kind": "Deployment", "name": name}));
    }
    spec["rolloutRestartTargets"] = json!(targets);
    env.put_client_secret("greenlake-client").await;
    env.create_credential("reports", spec)
        .await
        .expect("create the credential");
    let (operator, _, _) = chart.start(&kubeconfig, None, env.log_dir.join("operator.log"));
    let log = operator.log_path().display().to_string();

    if variant.exercise.rename {
        env.wait_for_new_token("reports-token", None, Duration::from_secs(30))
            .await;
        env.patch_credential(
            "reports",
            json!({"spec": {"target": {"name": "reports-moved"}}}),
        )
        .await;
    }

    match &variant.evidence {
        Some(evidence) => {
            let wanted = unquoted(evidence);
            wait_until(
                &format!(
                    "{}: the refusal `{evidence}` in the operator's log ({log}), the \
                     credential's status or its Events",
                    variant.id
                ),
                Duration::from_secs(60),
                || async {
                    let mut seen = operator.logs();
                    let credential = env.credential("reports").await;
                    seen.push_str(&serde_json::to_string(&credential.status).unwrap_or_default());
                    for event in env.events().await {
                        seen.push_str(event.message.as_deref().unwrap_or_default());
                    }
                    unquoted(&seen).contains(&wanted).then_some(())
                },
            )
            .await;
        }
        None => {
            env.wait_ready("reports").await;
            let target = env
                .secret("reports-token")
                .await
                .expect("the target Secret");
            let blocking: Vec<_> = target
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.block_owner_deletion == Some(true))
                .collect();
            assert!(
                blocking.is_empty(),
                "{}: the operator set blockOwnerDeletion, which needs update on \
                 dscccredentials/finalizers under OwnerReferencesPermissionEnforcement: {blocking:?}",
                variant.id
            );
            if variant.exercise.lagging_watch {
                wait_until(
                    &format!(
                        "{}: a live read of the lagging credential (log {log})",
                        variant.id
                    ),
                    Duration::from_secs(30),
                    || async {
                        operator
                            .logs()
                            .contains("\"step\":\"ReadCredential\"")
                            .then_some(())
                    },
                )
                .await;
            }
            let logs = operator.logs();
            let refused = refused_calls(&logs);
            assert!(
                refused.is_empty(),
                "{}: refused calls with all of the chart's rights (log {log}):\n{}",
                variant.id,
                refused.join("\n")
            );
        }
    }

    let id = variant.id;
    match variant.consequence {
        Consequence::None => {}
        Consequence::NoStatus => assert!(
            env.credential("reports").await.status.is_none(),
            "{id}: the credential has a status (log {log})"
        ),
        Consequence::NoTarget => assert!(
            env.secret("reports-token").await.is_none(),
            "{id}: a target Secret was written (log {log})"
        ),
        Consequence::NotRenewed => {
            let first = env.endpoint.issued_tokens().first().cloned();
            assert_eq!(
                env.secret_value("reports-token", "access_token").await,
                first,
                "{id}: the target Secret was renewed (log {log})"
            );
        }
        Consequence::OldTargetKept => {
            assert!(
                env.secret("reports-token").await.is_some(),
                "{id}: the old target is gone (log {log})"
            );
            assert!(
                env.secret("reports-moved").await.is_some(),
                "{id}: the new target is missing (log {log})"
            );
        }
        Consequence::NoEvents => {
            let about: Vec<String> = env
                .events()
                .await
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some("reports"))
                .filter_map(|e| e.reason)
                .collect();
            assert!(about.is_empty(), "{id}: Events {about:?} (log {log})");
        }
        Consequence::NotRestarted => assert!(
            env.restart_stamp("reporter-0").await.is_none(),
            "{id}: the Deployment was restarted (log {log})"
        ),
    }
    tokio::task::spawn_blocking(move || drop(operator))
        .await
        .expect("stop the operator");
    started.elapsed()
}

/// The API server of `kubeconfig` (as the chart's ServiceAccount, which has no right on
/// `dscccredentials/finalizers`) refuses a Secret whose owner reference sets
/// `blockOwnerDeletion`: OwnerReferencesPermissionEnforcement is on, so a run that works there
/// shows the operator does not need that right.
async fn assert_enforces_owner_references(env: &TestEnv, kubeconfig: &Path) {
    let owner = env
        .create_credential("owner", json!({"clientSecretRef": {"name": "none"}, "tokenUrl": env.endpoint.url(), "suspend": true}))
        .await
        .expect("create a credential to own a Secret");
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).expect("read the ServiceAccount kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("ServiceAccount kubeconfig to config");
    let as_operator = Client::try_from(config).expect("a client as the operator");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "blocking-owner",
            "ownerReferences": [{
                "apiVersion": "dscc.io/v1alpha1",
                "kind": "DsccCredential",
                "name": "owner",
                "uid": owner.metadata.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
    }))
    .expect("a Secret");
    match Api::<Secret>::namespaced(as_operator, &env.namespace)
        .create(&PostParams::default(), &secret)
        .await
    {
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains("cannot set blockOwnerDeletion") => {}
        answer => panic!(
            "the second API server must refuse blockOwnerDeletion without update on \
             dscccredentials/finalizers (OwnerReferencesPermissionEnforcement): {answer:?}"
        ),
    }
}

/// The text of a panic.
fn panic_text(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into()),
        Err(error) => error.to_string(),
    }
}

/// Each right the chart grants is needed: the operator runs as the chart's ServiceAccount with
/// exactly the rendered rules less one verb, one variant per verb (each in namespaces of its
/// own, all at once), and each time the behaviour that verb serves fails with the API server's
/// refusal of exactly that verb, seen in the operator's log or reported on the credential.
/// And a right the chart does not grant is not needed even where it could be: with exactly
/// the chart's rules, the operator works against a second kube-apiserver of the control plane
/// that runs OwnerReferencesPermissionEnforcement (which demands update on
/// `dscccredentials/finalizers` for an owner reference with `blockOwnerDeletion`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_right_the_chart_grants_is_needed() {
    let started = Instant::now();
    let local = cluster().dir.is_some();
    let (on_second, on_first): (Vec<Variant>, Vec<Variant>) = variants()
        .into_iter()
        .partition(|v| v.exercise.owner_references);
    let mut tasks = Vec::new();
    for variant in on_first {
        tasks.push((variant.id, tokio::spawn(run_variant(variant, None))));
    }
    // Started from this thread, which outlives it (it dies with the thread that started it,
    // PR_SET_PDEATHSIG, so not from spawn_blocking's short-lived threads); the variants above
    // run on the runtime's workers meanwhile.
    let second = if local {
        Some(Arc::new(cluster().extra_apiserver(
            "owner-references",
            &["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"],
        )))
    } else {
        eprintln!(
            "NOTE: E2E_USE_EXISTING_CLUSTER: the OwnerReferencesPermissionEnforcement run needs \
             a second kube-apiserver of the local control plane; not run"
        );
        None
    };
    if second.is_some() {
        for variant in on_second {
            let server = second.clone();
            tasks.push((variant.id, tokio::spawn(run_variant(variant, server))));
        }
    }
    let mut failures = Vec::new();
    for (id, task) in tasks {
        match task.await {
            Ok(took) => eprintln!("{id}: proven in {took:.1?}"),
            Err(error) => failures.push(format!("{id}: {}", panic_text(error))),
        }
    }
    tokio::task::spawn_blocking(move || drop(second))
        .await
        .expect("stop the second kube-apiserver");
    assert!(
        failures.is_empty(),
        "rights of the chart not shown to be needed:\n{}",
        failures.join("\n\n")
    );
    eprintln!("every right proven needed in {:.1?}", started.elapsed());
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
