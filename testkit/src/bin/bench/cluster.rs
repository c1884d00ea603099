//! The bench's own control plane: started and stopped with `testenv/cluster.sh`, its
//! processes found for CPU accounting, the operator's identity, and the FlowSchemas that
//! attribute API requests to the operator.
//!
//! Attribution: the operator runs as its own ServiceAccount, and one FlowSchema per (verb,
//! resource) matches only that ServiceAccount (priority level `exempt`, so nothing is queued).
//! `apiserver_flowcontrol_dispatched_requests_total{flow_schema}` then counts exactly the
//! operator's requests by verb and resource.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use crate::say;

/// The namespace of the operator's ServiceAccount.
pub const SYSTEM_NS: &str = "dscc-bench-system";
const OPERATOR_SA: &str = "dscc-token-operator";
const FLOW_PREFIX: &str = "dscc-bench-op-";

/// A running control plane of `testenv/cluster.sh`, stopped when dropped.
pub struct ControlPlane {
    /// Its state directory (pid files, logs, certificates).
    pub dir: PathBuf,
    /// What `cluster.sh` wrote to `<dir>/env`.
    pub env: HashMap<String, String>,
    /// Keep the directory (and so the logs) after stopping: set until the bench succeeds.
    pub keep_dir: bool,
    stopped: bool,
}

impl ControlPlane {
    /// Starts a control plane in `dir`, with a watchdog that stops it if this process dies.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        say("starting the local control plane (testenv/cluster.sh up)");
        let up = Command::new(dscc_testkit::repo().join("testenv/cluster.sh"))
            .arg("up")
            .arg(dir)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        // From here on the directory must be cleaned up, also when the start failed halfway.
        let mut plane = Self {
            dir: dir.to_path_buf(),
            env: HashMap::new(),
            keep_dir: true,
            stopped: false,
        };
        if !up.status.success() {
            bail!(
                "the control plane did not start; see its logs in {}/logs",
                dir.display()
            );
        }
        plane.env = dscc_testkit::cluster::read_env(&dir.join("env"));
        Ok(plane)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> anyhow::Result<PathBuf> {
        self.env
            .get("KUBECONFIG")
            .map(PathBuf::from)
            .context("no KUBECONFIG in the control plane's env file")
    }

    /// The pids of kube-apiserver, etcd and kube-controller-manager of this control plane.
    pub fn pids(&self) -> HashMap<&'static str, u32> {
        let mut pids = HashMap::new();
        for name in ["kube-apiserver", "etcd", "kube-controller-manager"] {
            if let Some(pid) = component_pid(&self.dir, name) {
                pids.insert(name, pid);
            }
        }
        pids
    }

    /// Stops it in order (`cluster.sh down`), removing its directory unless `keep_dir`.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        say(&format!(
            "stopping the control plane in {}",
            self.dir.display()
        ));
        let _ = Command::new(dscc_testkit::repo().join("testenv/cluster.sh"))
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if self.keep_dir {
            say(&format!(
                "control plane logs kept in {}/logs",
                self.dir.display()
            ));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pid of a component of the control plane in `dir`: the one its pid file names if that
/// process runs the component with this state directory, else found by its command line
/// (`--cert-dir <dir>/pki` for kube-apiserver, `--data-dir <dir>/etcd-data` for etcd, the
/// kubeconfig in `<dir>` for the controller manager).
fn component_pid(dir: &Path, name: &str) -> Option<u32> {
    let belongs = |pid: u32| {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let runs_it = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|f| f == name);
        let dir = dir.to_string_lossy();
        runs_it && args.iter().any(|a| a.contains(dir.as_ref()))
    };
    let recorded = std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|pid| belongs(*pid));
    recorded.or_else(|| {
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| belongs(*pid))
    })
}

/// A client for the identity of `kubeconfig`.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// A ServiceAccount for the operator (bound to cluster-admin: the bench measures load, not
/// RBAC) and a kubeconfig with a token for it.
pub async fn operator_identity(admin: &Client, plane: &ControlPlane) -> anyhow::Result<PathBuf> {
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
    let server = plane.env.get("APISERVER_URL").context("no APISERVER_URL")?;
    let ca = plane.env.get("APISERVER_CA").context("no APISERVER_CA")?;
    let path = plane.dir.join("operator.kubeconfig");
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
pub type Flows = HashMap<String, (String, String)>;

/// One FlowSchema per (verb, resource) for the operator's ServiceAccount, plus one per verb
/// for other resources and one for non-resource URLs.
pub async fn install_flow_schemas(admin: &Client) -> anyhow::Result<Flows> {
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
pub async fn check_attribution(admin: &Client, operator: &Client) -> anyhow::Result<()> {
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

/// kube-apiserver's /metrics.
pub async fn apiserver_metrics(admin: &Client) -> anyhow::Result<String> {
    let request = axum::http::Request::get("/metrics").body(vec![])?;
    Ok(admin.request_text(request).await?)
}

/// The samples of metric `name` in Prometheus text: labels and value.
pub fn samples<'a>(
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
