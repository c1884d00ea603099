//! `make cluster-up` and `make cluster-down`, as a developer uses them from the shell.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn make(target: &str, cluster_dir: &Path) -> std::process::Output {
    Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg(target)
        .arg(format!("CLUSTER_DIR={}", cluster_dir.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run make")
}

/// Processes whose command line mentions `dir`.
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            path.file_name()?.to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(path.join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let state = std::fs::read_to_string(path.join("stat")).ok()?;
            let zombie = state.rsplit(") ").next()?.starts_with('Z');
            (!zombie && text.contains(&needle)).then_some(text)
        })
        .collect()
}

#[test]
fn cluster_up_prints_the_kubeconfig_and_cluster_down_leaves_nothing_running() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cluster-up-{}", std::process::id()));
    let up = make("cluster-up", &dir);
    assert!(up.status.success(), "make cluster-up failed");
    let stdout = String::from_utf8_lossy(&up.stdout);
    let kubeconfig = PathBuf::from(stdout.lines().last().expect("a last line").trim());
    assert!(
        kubeconfig.is_file(),
        "the last line is not a kubeconfig: {stdout}"
    );

    let env = std::fs::read_to_string(dir.join("env")).expect("the cluster's env file");
    let kubectl = env
        .lines()
        .find_map(|line| line.strip_prefix("KUBECTL="))
        .expect("KUBECTL in the env file");
    let version = Command::new(kubectl)
        .arg("version")
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("run kubectl version");
    let version_text = String::from_utf8_lossy(&version.stdout);
    let pinned = std::env::var("K8S_VERSION").unwrap_or_else(|_| "1.37.2".into());
    let down = make("cluster-down", &dir);
    assert!(
        version_text.contains(&format!("Server Version: v{pinned}")),
        "kubectl version: {version_text}"
    );
    assert!(down.status.success(), "make cluster-down failed");
    let left = processes_using(&dir);
    assert!(
        left.is_empty(),
        "still running after cluster-down: {left:#?}"
    );
}
