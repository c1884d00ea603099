//! The operator under test, run as its own process (the released binary, not a library call),
//! so that restarts, kills and its log output are real.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The operator binary: `DSCC_OPERATOR_BIN`, else `dscc-token-operator` in the target
/// directory of the running test (cargo builds it for the integration tests).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("DSCC_OPERATOR_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("dscc-token-operator"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no dscc-token-operator binary near {}; build it (cargo build) or set DSCC_OPERATOR_BIN",
                exe.display()
            )
        })
}

/// A running `dscc-token-operator run`.
pub struct Operator {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    starts: u32,
}

/// Flags that make the operator quick enough to test: plain http to the local endpoint and
/// short retry delays.
pub fn test_flags() -> Vec<String> {
    [
        "--allow-insecure-token-url",
        "--retry-initial-delay=1s",
        "--retry-max-delay=8s",
        "--permanent-retry-delay=1m",
        // Test tokens live seconds; the production floor (30 s) would outlast them.
        "--min-renewal-interval=2s",
        // Restarts of a workload asked for together are batched over a short window.
        "--rollout-restart-batch-window=300ms",
        "--log-format=json",
        "--log-level=info,dscc_token_operator=debug",
        // Several operators run side by side; each binds free loopback ports and logs them.
        "--metrics-address=127.0.0.1:0",
        "--health-address=127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec()
}

impl Operator {
    /// Starts `dscc-token-operator run <args>` with `kubeconfig`; output goes to `log`.
    pub fn start(kubeconfig: &Path, args: Vec<String>, log: PathBuf) -> Self {
        Self::start_with_env(
            vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
            args,
            log,
        )
    }

    /// Starts it with an explicit environment (beyond the inherited one).
    pub fn start_with_env(env: Vec<(String, String)>, args: Vec<String>, log: PathBuf) -> Self {
        let mut operator = Self {
            child: None,
            args,
            env,
            log,
            starts: 0,
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open operator log");
        let mut command = Command::new(binary());
        command
            .arg("run")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // If the test process dies, the operator must not outlive it.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("start dscc-token-operator"));
    }

    /// Stops it with SIGTERM and waits (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again after a stop or kill.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the operator is still running");
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything it has logged so far, across restarts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of its `/metrics` (or `/healthz` with `"health_address"`), read from its
    /// start-up log line; waits up to 20 s for it.
    pub fn address(&self, field: &str) -> std::net::SocketAddr {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .logs()
                .lines()
                .rev()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find_map(|line| line.get(field)?.as_str()?.parse().ok());
            if let Some(address) = found {
                return address;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the operator logged no {field}; log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where its log is.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}
