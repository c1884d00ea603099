//! The container image end to end: built from the current sources (`testenv/image/build.sh`,
//! unless `DSCC_IMAGE` names a prebuilt image) and run the way the Helm chart's Pod runs it
//! (`testenv/image/run.sh`: user 65532:65532, read-only root file system, every capability
//! dropped, no privilege escalation, no shell in the image), on the host network so that it
//! reaches the local control plane and the test's token endpoint on 127.0.0.1. A credential
//! becomes Ready with the endpoint's token, the health endpoints answer, there is no shell, the
//! process runs as 65532, and SIGTERM stops it within the operator's shutdown timeout.
//!
//! buildah and podman come from Debian (`testenv/image/standins.sh` or `make image` install
//! them); when they are missing the test fails with that instruction, it never skips. A build
//! after a source change takes minutes, so this test is `#[ignore]`d in `cargo test` and run by
//! `make image-test` (`cargo test --test e2e_image -- --ignored`).

use dscc_testkit as support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::harness::{TestEnv, suffix};

/// What `testenv/image/build.sh` builds and `run.sh` runs by default.
const DEFAULT_IMAGE: &str = "localhost/dscc-token-operator:dev";
/// The user and group of the image and of the chart's `securityContext`.
const NONROOT: u32 = 65532;
/// The operator's `--shutdown-timeout` default (src/main.rs): after SIGTERM it must be gone
/// within this, well inside the chart's `terminationGracePeriodSeconds` (30 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// What `podman stop` waits before SIGKILL: longer than the shutdown timeout, so that a kill
/// cannot pass for a clean exit.
const STOP_GRACE_SECONDS: u64 = 30;
/// A container start with vfs storage on a loaded 2-core machine takes a few seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn script(name: &str) -> PathBuf {
    support::repo().join("testenv/image").join(name)
}

/// A line for the person running the test, shown even though libtest captures the test's
/// output (`make image-test` prints the size and times without `--nocapture`).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "[e2e_image] {line}");
}

/// Whether `tool` is an executable on PATH or in /usr/sbin, /usr/bin, /sbin (runc is in
/// /usr/sbin, which a non-root PATH may lack; podman looks there itself).
fn installed(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .any(|dir| {
            std::fs::metadata(dir.join(tool)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// Fails (never skips) when the container tools are missing, saying how to get them.
fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !installed(t)).collect();
    assert!(
        missing.is_empty(),
        "this test builds and runs the container image with buildah and podman, and {} \
         not installed. Run `testenv/image/standins.sh` or `make image` (as root: they \
         apt-get install podman, buildah and runc from Debian), then run the test again.",
        match missing.as_slice() {
            [one] => format!("{one} is"),
            more => format!("{} are", more.join(", ")),
        }
    );
}

/// `testenv/image/podman.sh ARGS`: podman with the image scripts' store and configuration.
fn podman(image: &str, args: &[&str]) -> Output {
    Command::new(script("podman.sh"))
        .args(args)
        .env("IMAGE", image)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run testenv/image/podman.sh: {e}"))
}

/// Like [`podman`], and the command must succeed; returns its stdout, trimmed.
fn podman_ok(image: &str, args: &[&str]) -> String {
    let output = podman(image, args);
    assert!(
        output.status.success(),
        "podman {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `DSCC_IMAGE`, if set.
fn prebuilt_image() -> Option<String> {
    std::env::var("DSCC_IMAGE").ok().filter(|i| !i.is_empty())
}

/// The image to test: `DSCC_IMAGE` as it is, or the current sources built by
/// `testenv/image/build.sh` (a no-op when nothing changed). Reports its size.
fn image() -> String {
    if let Some(image) = prebuilt_image() {
        let exists = podman(&image, &["image", "exists", &image]);
        assert!(
            exists.status.success(),
            "DSCC_IMAGE={image}: no such image in testenv/image's store \
             (testenv/image/podman.sh images lists them; unset DSCC_IMAGE to build one)"
        );
        let bytes = podman_ok(
            &image,
            &["image", "inspect", "--format", "{{.Size}}", &image],
        );
        report(&format!(
            "image {image} (DSCC_IMAGE, not rebuilt): size {bytes} bytes ({:.1} MB)",
            bytes.parse::<f64>().unwrap_or(0.0) / 1e6
        ));
        return image;
    }
    let started = Instant::now();
    report("building the image from the current sources: testenv/image/build.sh");
    // Its progress (buildah's output) goes straight to the terminal; its summary to stdout.
    let output = Command::new(script("build.sh"))
        .env("IMAGE", DEFAULT_IMAGE)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run testenv/image/build.sh: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "testenv/image/build.sh failed ({}); its output is above.\n{stdout}",
        output.status
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    report(&format!(
        "image {}: size {}; built in {:.0} s (build.sh: {})",
        field("image:"),
        field("size:"),
        started.elapsed().as_secs_f64(),
        field("time:")
    ));
    DEFAULT_IMAGE.to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// A copy of `kubeconfig` that uid 65532 can read, and the files it names (CA, client
/// certificate and key, token file), copied too and mounted read-only at the absolute paths
/// the copy names. Returns the copy and the `-v` arguments for those files.
fn container_kubeconfig(kubeconfig: &Path, dir: &Path) -> (PathBuf, Vec<String>) {
    let text = std::fs::read_to_string(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("a YAML kubeconfig");
    let base = kubeconfig.parent().unwrap_or(Path::new("/"));
    let mut volumes = Vec::new();
    let mut copied = 0;
    for (list, entry, keys) in [
        ("clusters", "cluster", &["certificate-authority"][..]),
        (
            "users",
            "user",
            &["client-certificate", "client-key", "tokenFile"][..],
        ),
    ] {
        let Some(items) = config.get_mut(list).and_then(|l| l.as_sequence_mut()) else {
            continue;
        };
        for item in items {
            let Some(entry) = item.get_mut(entry).and_then(|e| e.as_mapping_mut()) else {
                continue;
            };
            for key in keys {
                let Some(named) = entry.get(*key).and_then(|v| v.as_str()) else {
                    continue;
                };
                let host = base.join(named);
                copied += 1;
                let file_name = host.file_name().map(|n| n.to_string_lossy().into_owned());
                let copy = dir.join(format!("{copied}-{}", file_name.unwrap_or_default()));
                std::fs::copy(&host, &copy).unwrap_or_else(|e| {
                    panic!("copy {} (named in the kubeconfig): {e}", host.display())
                });
                readable_by_nonroot(&copy);
                volumes.push(format!("{}:{}:ro", copy.display(), host.display()));
                entry.insert((*key).into(), host.display().to_string().into());
            }
        }
    }
    let copy = dir.join("kubeconfig");
    std::fs::write(
        &copy,
        serde_yaml::to_string(&config).expect("serialize the kubeconfig"),
    )
    .expect("write the kubeconfig copy");
    readable_by_nonroot(&copy);
    (copy, volumes)
}

/// Owned by 65532 and readable by it alone when the test runs as root (rootful podman maps
/// uids one to one), else readable by everyone. The folder around it stays 0700: the
/// container sees only the bind-mounted file.
fn readable_by_nonroot(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::chown(path, Some(NONROOT), Some(NONROOT)).expect("chown to 65532");
    }
    let mode = if root { 0o400 } else { 0o444 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A container started by `testenv/image/run.sh -d`, removed when dropped (also on a panic,
/// after printing its logs) and by a watchdog when the test process dies without unwinding.
struct Container {
    name: String,
    image: String,
    log: PathBuf,
    watchdog: Option<Child>,
}

impl Container {
    /// Starts `run.sh -d --rm=false --name NAME PODMAN_ARGS -- OPERATOR_ARGS`. `--rm=false`
    /// keeps the exited container until it is removed, for its exit code and logs.
    fn start(
        image: &str,
        log_dir: &Path,
        podman_args: &[String],
        operator_args: &[String],
    ) -> Self {
        let name = format!("dscc-e2e-image-{}", suffix());
        let log = log_dir.join(format!("{name}.log"));
        // Armed before the container exists: whatever happens next, it gets removed.
        let mut watchdog = Command::new("bash");
        watchdog
            .args([
                "-c",
                r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
                   exec "$2" rm --force --ignore --time 0 "$3""#,
                "watchdog",
            ])
            .arg(std::process::id().to_string())
            .arg(script("podman.sh"))
            .arg(&name)
            .env("IMAGE", image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own session: a ctrl-c that kills the test does not kill the watchdog.
        unsafe {
            use std::os::unix::process::CommandExt;
            watchdog.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let container = Self {
            name,
            image: image.to_owned(),
            log,
            watchdog: Some(watchdog.spawn().expect("start the container watchdog")),
        };
        let output = Command::new(script("run.sh"))
            .args(["-d", "--rm=false", "--name", &container.name])
            .args(podman_args)
            .arg("--")
            .args(operator_args)
            .env("IMAGE", image)
            .stdin(Stdio::null())
            .output()
            .expect("run testenv/image/run.sh");
        assert!(
            output.status.success(),
            "testenv/image/run.sh -d failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        container
    }

    fn podman(&self, args: &[&str]) -> Output {
        podman(&self.image, args)
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(&self.image, &["inspect", "--format", format, &self.name])
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// Everything the operator wrote to stdout and stderr (it can write no files).
    fn logs(&self) -> String {
        let output = self.podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Removes the container and checks that it is gone.
    fn remove(mut self) {
        self.cleanup();
        let left = self.podman(&[
            "ps",
            "--all",
            "--filter",
            &format!("name=^{}$", self.name),
            "--format",
            "{{.Names}}",
        ]);
        let left = String::from_utf8_lossy(&left.stdout);
        assert!(
            left.trim().is_empty(),
            "the container {} is left: {left}",
            self.name
        );
    }

    fn cleanup(&mut self) {
        let Some(mut watchdog) = self.watchdog.take() else {
            return;
        };
        let logs = self.logs();
        let _ = std::fs::write(&self.log, &logs);
        if std::thread::panicking() {
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!(
                "--- the operator container's last log lines (all in {}):",
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let removed = self.podman(&["rm", "--force", "--ignore", "--time", "0", &self.name]);
        if !removed.status.success() {
            eprintln!(
                "removing the container {} failed: {}",
                self.name,
                String::from_utf8_lossy(&removed.stderr)
            );
        }
        let _ = watchdog.kill();
        let _ = watchdog.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Waits until `http://ADDRESS/PATH` answers 200.
async fn wait_for_200(address: SocketAddr, path: &str) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let url = format!("http://{address}{path}");
    let mut last = String::new();
    let description = format!("{url} to answer 200");
    let answered = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match http.get(&url).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return,
                Ok(response) => last = format!("HTTP {}", response.status()),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "timed out waiting for {description}; last: {last}"
    );
}

/// Fields of /proc/PID/status, e.g. `Uid`.
fn proc_status(pid: &str) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"))
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// Asserts that a command that asked for `/bin/sh` failed because there is none: podman's
/// exit code 127, "command not found".
fn assert_no_shell(what: &str, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(127),
        "{what} must fail for want of a shell; it ended with {} (stdout: {}, stderr: {stderr})",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains("/bin/sh"), "{what}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds the container image (minutes after a source change): make image-test"]
async fn the_image_run_as_the_chart_runs_it_issues_a_token_and_stops_on_sigterm() {
    let started = Instant::now();
    match prebuilt_image() {
        Some(_) => require_tools(&["podman", "runc"]),
        None => require_tools(&["buildah", "podman", "runc"]),
    }
    // The build and the control plane's start at once; the build takes the longer.
    let image = tokio::task::spawn_blocking(image);
    let env = TestEnv::new("image").await;
    let image = image
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    env.put_client_secret("greenlake-client").await;
    let files = tempfile::Builder::new()
        .prefix("e2e-image-")
        .tempdir_in(support::tmp_dir())
        .expect("a scratch folder");
    let (kubeconfig, mut podman_args) = container_kubeconfig(&env.cluster.kubeconfig, files.path());
    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    podman_args = [
        "-v".to_owned(),
        format!("{}:/kubeconfig:ro", kubeconfig.display()),
        "-e".to_owned(),
        "KUBECONFIG=/kubeconfig".to_owned(),
        // What the chart's Pod gets from the downward API.
        "-e".to_owned(),
        "POD_NAME=dscc-token-operator-e2e-image".to_owned(),
        "-e".to_owned(),
        format!("POD_NAMESPACE={}", env.namespace),
    ]
    .into_iter()
    .chain(podman_args.into_iter().flat_map(|v| ["-v".to_owned(), v]))
    .collect();
    let operator_args = [
        "run".to_owned(),
        format!("--namespace={}", env.namespace),
        "--allow-insecure-token-url".to_owned(),
        "--metrics-address=127.0.0.1:0".to_owned(),
        format!("--health-address={health}"),
        "--log-format=json".to_owned(),
    ];
    let container = Container::start(&image, &env.log_dir, &podman_args, &operator_args);

    // A credential becomes Ready, and its Secret holds the token the endpoint issued.
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create the credential");
    env.wait_for_condition("reports", "Ready", "True", None, READY_TIMEOUT)
        .await;
    let issued = env.endpoint.issued_tokens();
    assert_eq!(issued.len(), 1, "exactly one token request: {issued:?}");
    let token = env
        .secret_value("reports-token", "access_token")
        .await
        .expect("the target Secret holds a token");
    assert_eq!(
        token, issued[0],
        "the Secret holds the token the endpoint issued"
    );
    assert_eq!(
        env.secret_value("reports-token", "authorization")
            .await
            .as_deref(),
        Some(format!("Bearer {token}").as_str())
    );

    // The kubelet's probes, on the host network.
    wait_for_200(health, "/healthz").await;
    wait_for_200(health, "/readyz").await;

    // No shell: neither next to the running operator nor as the entrypoint.
    assert!(container.running(), "the operator container is not running");
    let exec = container.podman(&["exec", &container.name, "/bin/sh", "-c", "true"]);
    assert_no_shell("podman exec <container> /bin/sh", &exec);
    let shell_name = format!("{}-sh", container.name);
    let entrypoint = Command::new(script("run.sh"))
        .args([
            "--name",
            &shell_name,
            "--entrypoint",
            "/bin/sh",
            "--",
            "-c",
            "true",
        ])
        .env("IMAGE", &image)
        .stdin(Stdio::null())
        .output()
        .expect("run testenv/image/run.sh");
    let _ = podman(
        &image,
        &["rm", "--force", "--ignore", "--time", "0", &shell_name],
    );
    assert_no_shell("run.sh --entrypoint /bin/sh", &entrypoint);

    // The process: uid and gid 65532 (real, effective, saved, file system), no capabilities,
    // no_new_privs, a read-only root file system.
    let top = podman_ok(
        &image,
        &[
            "top",
            &container.name,
            "pid",
            "huser",
            "hgroup",
            "user",
            "comm",
        ],
    );
    let row: Vec<&str> = top
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(1..4),
        Some(&["65532", "65532", "nonroot"][..]),
        "podman top: {top}"
    );
    let pid = container.inspect("{{.State.Pid}}");
    let status = proc_status(&pid);
    let ids = format!("{NONROOT} {NONROOT} {NONROOT} {NONROOT}");
    assert_eq!(status["Uid"], ids, "uids of pid {pid}");
    assert_eq!(status["Gid"], ids, "gids of pid {pid}");
    assert_eq!(
        status["CapEff"], "0000000000000000",
        "effective capabilities"
    );
    assert_eq!(
        status["CapPrm"], "0000000000000000",
        "permitted capabilities"
    );
    assert_eq!(status["CapBnd"], "0000000000000000", "bounding set");
    assert_eq!(status["NoNewPrivs"], "1");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mountinfo
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(4) == Some(&"/"))
        .expect("the root mount");
    assert!(
        root[5].split(',').any(|option| option == "ro"),
        "the root file system is mounted {}",
        root[5]
    );
    report(&format!(
        "container {}: pid {pid} ({}) uid/gid {NONROOT}, no capabilities, no_new_privs, root ro",
        container.name,
        row.get(4).unwrap_or(&"?")
    ));

    // SIGTERM, as the kubelet sends it: the operator exits on its own (code 0, not the
    // SIGKILL podman sends after the grace) within its shutdown timeout.
    let stop_name = container.name.clone();
    let stop_image = image.clone();
    let stopping = Instant::now();
    let stop = tokio::task::spawn_blocking(move || {
        podman(
            &stop_image,
            &[
                "stop",
                "--time",
                &STOP_GRACE_SECONDS.to_string(),
                &stop_name,
            ],
        )
    })
    .await
    .expect("podman stop");
    let took = stopping.elapsed();
    assert!(
        stop.status.success(),
        "podman stop failed: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let exit = container.inspect("{{.State.ExitCode}}");
    assert_eq!(
        exit, "0",
        "the operator's exit code after SIGTERM (137: it was killed)"
    );
    assert!(
        took < SHUTDOWN_TIMEOUT,
        "the operator took {took:?} to exit after SIGTERM; its shutdown timeout is {SHUTDOWN_TIMEOUT:?}"
    );
    let logs = container.logs();
    for message in ["shutting down", "stopped"] {
        assert!(
            logs.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .any(|line| line["message"] == message),
            "the operator did not log {message:?} (JSON on stdout)"
        );
    }
    report(&format!(
        "SIGTERM: exited with code 0 after {:.1} s",
        took.as_secs_f64()
    ));

    container.remove();
    report(&format!(
        "the whole test took {:.0} s",
        started.elapsed().as_secs_f64()
    ));
}
