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
    // The folder is named after the test binary. Linux appends " (deleted)" to the path of
    // a running binary that a rebuild has replaced; cluster.sh refuses spaces.
    let binary: String = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .map(|name| name.trim_end_matches(" (deleted)").to_owned())
        .map(|name| {
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        })
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

/// The `KEY=value` lines of a file `cluster.sh` wrote (`env`, `ports`); empty when absent.
pub fn read_env(path: &Path) -> HashMap<String, String> {
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

/// A second kube-apiserver of the local control plane: the same etcd (so the same objects),
/// certificates, static tokens and ServiceAccount keys as the first, on a port of its own and
/// with extra flags, e.g. an admission plugin the first one does not run. Stopped (SIGTERM,
/// then SIGKILL) when dropped, and killed when the thread that started it ends
/// (PR_SET_PDEATHSIG): start it from a thread that outlives it, such as the test's own, not
/// from `tokio::task::spawn_blocking`, whose threads end when idle.
pub struct ExtraApiServer {
    child: Option<std::process::Child>,
    /// An admin kubeconfig for it.
    pub kubeconfig: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

impl Cluster {
    /// Starts an [`ExtraApiServer`] named `name` with the first one's flags plus `extra`, and
    /// waits (up to 90 s) until it is ready. Needs the local control plane.
    pub fn extra_apiserver(&self, name: &str, extra: &[&str]) -> ExtraApiServer {
        let dir = self.dir.as_ref().expect(
            "a second kube-apiserver needs the local control plane (not E2E_USE_EXISTING_CLUSTER)",
        );
        // cluster.sh records the command line quoted for bash (printf %q): let bash split it.
        let cmdline = dir.join("kube-apiserver.cmdline");
        let output = Command::new("bash")
            .args([
                "-c",
                r#"eval "cmd=($(<"$1"))" && printf '%s\0' "${cmd[@]}""#,
                "split",
            ])
            .arg(&cmdline)
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        assert!(
            output.status.success() && !output.stdout.is_empty(),
            "cannot read {}: {}",
            cmdline.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut args: Vec<String> = String::from_utf8(output.stdout)
            .expect("a UTF-8 command line")
            .split('\0')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let at = args
            .iter()
            .position(|a| a == "--secure-port")
            .expect("the recorded kube-apiserver command line has --secure-port");
        args[at + 1] = port.to_string();
        args.extend(extra.iter().map(|a| a.to_string()));

        let log = dir.join("logs").join(format!("kube-apiserver-{name}.log"));
        let log_file = std::fs::File::create(&log).expect("create the apiserver log");
        let mut command = Command::new(&args[0]);
        command
            .args(&args[1..])
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
        let child = command.spawn().expect("start the second kube-apiserver");

        let admin = std::fs::read_to_string(&self.kubeconfig).expect("read the kubeconfig");
        let first = read_env(&dir.join("ports"))
            .get("APISERVER_URL")
            .cloned()
            .expect("APISERVER_URL in the ports file");
        assert!(admin.contains(&first), "the kubeconfig names {first}");
        let kubeconfig = dir.join(format!("kubeconfig-{name}"));
        std::fs::write(
            &kubeconfig,
            admin.replace(&first, &format!("https://127.0.0.1:{port}")),
        )
        .expect("write the second kubeconfig");
        let mut server = ExtraApiServer {
            child: Some(child),
            kubeconfig,
            log,
        };

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let ready = Command::new(&self.kubectl)
                .env("KUBECONFIG", &server.kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return server;
            }
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "the second kube-apiserver did not get ready ({}); see {}",
                exited.map_or("timed out".to_owned(), |s| s.to_string()),
                server.log.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

impl Drop for ExtraApiServer {
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
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
