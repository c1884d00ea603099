//! The control plane the end-to-end tests run against: one per test binary.
//!
//! By default it is the local control plane of `testenv/cluster.sh` (etcd, kube-apiserver and
//! kube-controller-manager built from source), started on first use and stopped by its
//! watchdog when this test process exits, however it exits. With `E2E_USE_EXISTING_CLUSTER=1`
//! the tests use the cluster of `KUBECONFIG` instead (kind, for example).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A running control plane.
pub struct Cluster {
    /// Where its state and logs live (local control plane only).
    pub dir: Option<PathBuf>,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The kubectl matching the server.
    pub kubectl: PathBuf,
    /// The helper script, for stopping and starting parts (local control plane only).
    pub script: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

pub use crate::repo;

/// The shared control plane, started on first use. Panics with instructions when it cannot
/// be had: a missing prerequisite fails the tests, it never skips them.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(start) {
        Ok(cluster) => cluster,
        Err(message) => panic!("{message}"),
    }
}

fn start() -> Result<Cluster, String> {
    let script = repo().join("testenv/cluster.sh");
    if std::env::var("E2E_USE_EXISTING_CLUSTER").as_deref() == Ok("1") {
        return existing(script);
    }
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "e2e".into());
    let dir = crate::tmp_dir().join(format!("e2e-{binary}-{}", std::process::id()));
    let output = Command::new(&script)
        .arg("up")
        .arg(&dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "the local control plane did not start (see the lines above and {}/logs). \
             It is built from source on first use, which needs Go 1.26 and the Go module \
             proxy; `make tools` builds it, `make test` does everything.",
            dir.display()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let kubeconfig = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    let env = read_env(&dir.join("env"));
    let kubectl = env
        .get("KUBECTL")
        .map(PathBuf::from)
        .ok_or_else(|| format!("{}/env names no KUBECTL", dir.display()))?;
    Ok(Cluster {
        dir: Some(dir),
        kubeconfig,
        kubectl,
        script,
    })
}

fn existing(script: PathBuf) -> Result<Cluster, String> {
    let kubeconfig = std::env::var("KUBECONFIG").map_err(|_| {
        "E2E_USE_EXISTING_CLUSTER=1 needs KUBECONFIG to name the cluster's kubeconfig".to_owned()
    })?;
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let cluster = Cluster {
        dir: None,
        kubeconfig: PathBuf::from(kubeconfig),
        kubectl: PathBuf::from(kubectl),
        script,
    };
    let crds = repo().join("crds");
    let output = cluster
        .kubectl_command()
        .args(["apply", "--server-side", "-f"])
        .arg(&crds)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "installing the CRD into the existing cluster failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(cluster)
}

fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Cluster {
    /// A kubectl command against this cluster.
    pub fn kubectl_command(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null());
        command
    }

    /// Runs `cluster.sh <verb> <dir>`, e.g. `stop-apiserver`, for fault tests.
    pub fn control(&self, verb: &str) {
        let dir = self
            .dir
            .as_ref()
            .expect("stopping parts of the control plane needs the local control plane");
        let status = Command::new(&self.script)
            .arg(verb)
            .arg(dir)
            .stdin(Stdio::null())
            .status()
            .expect("run cluster.sh");
        assert!(status.success(), "cluster.sh {verb} failed");
    }
}
