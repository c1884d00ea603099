//! The release operator as its own process: started with the bench's flags and the
//! ServiceAccount kubeconfig, watched through its health and metrics endpoints.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cluster::samples;
use crate::measure::status_bytes;
use crate::say;

/// A running `dscc-token-operator run`.
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    pub fn start(
        bin: &Path,
        flags: &[String],
        kubeconfig: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)?;
        let mut command = Command::new(bin);
        command
            .arg("run")
            .args(flags)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // The operator must not outlive the bench.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        say(&format!(
            "operator pid {}: {} run {} (log {})",
            child.id(),
            bin.display(),
            flags.join(" "),
            log.display()
        ));
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of a listener it logged at start-up (`metrics_address`, `health_address`).
    fn address(&self, field: &str) -> Option<String> {
        std::fs::read_to_string(&self.log)
            .ok()?
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find_map(|line| line.get(field)?.as_str().map(str::to_owned))
    }

    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the operator exited ({status}); see {}", self.log.display());
            }
            if let Some(address) = self.address("health_address") {
                let url = format!("http://{address}/readyz");
                if let Ok(answer) = http.get(&url).send().await
                    && answer.status().is_success()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator was not ready within {}s; see {}",
                    timeout.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The sum of a counter on its /metrics.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let address = self.address("metrics_address")?;
        let text = reqwest::get(format!("http://{address}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(samples(&text, name).map(|(_, v)| v).sum())
    }

    /// Starts a new peak-RSS measurement (VmHWM) from the current RSS.
    pub fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    pub fn peak_rss_bytes(&self) -> u64 {
        status_bytes(self.pid(), "VmHWM:").unwrap_or(0)
    }

    pub fn stop(&mut self) {
        // SAFETY: a plain kill(2) of our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Waits until the operator's reconcile count stays put for 3 s (bounded by `timeout`).
pub async fn settle(operator: &OperatorProcess, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let now = operator.metric("dscc_reconcile_total").await;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say("the operator did not settle in time; measuring anyway");
}
