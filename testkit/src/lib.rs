//! Test support of dscc-token-operator, shared by its integration tests (`tests/`), the
//! benchmark and the demo:
//! - [`cluster`]: the local control plane (`testenv/cluster.sh`), one per test binary;
//! - [`operator`]: the operator run as its own process;
//! - [`token_endpoint`]: a fault-injecting OAuth 2.0 token endpoint on 127.0.0.1;
//! - [`tls`]: test CAs and a TLS front for local servers;
//! - [`dscc_api`]: a stand-in for the DSCC API that the verify probe calls;
//! - [`harness`]: one end-to-end test's world (namespace, endpoint, helpers to wait);
//! - [`invalid_manifests`]: specs the API server must refuse, with the message it must give;
//! - [`keycloak`]: a real Keycloak (testenv/keycloak), one per test binary, and JWT checks.
#![allow(missing_docs)]

pub mod cluster;
pub mod dscc_api;
pub mod harness;
pub mod invalid_manifests;
pub mod keycloak;
pub mod operator;
pub mod tls;
pub mod token_endpoint;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the repository")
}

/// Cargo's target directory, found from the running executable (a test binary in
/// `<target>/<profile>/deps/`, or a tool in `<target>/<profile>/`).
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo().join("target"))
}

/// Where tests keep their logs and scratch files: `<target>/tmp`.
pub fn tmp_dir() -> PathBuf {
    let dir = target_dir().join("tmp");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The pinned helm, built from source by `testenv/build.sh helm` (a no-op when it is cached).
/// Panics with instructions when it cannot be built: a missing helm fails the tests, it never
/// skips them.
pub fn helm_binary() -> PathBuf {
    static HELM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELM.get_or_init(|| {
        let script = repo().join("testenv/build.sh");
        let run = |args: &[&str]| {
            std::process::Command::new(&script)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
        };
        let built = run(&["helm"]);
        assert!(
            built.status.success(),
            "helm is needed and `testenv/build.sh helm` could not build it (it needs Go 1.26 \
             and the Go module proxy). Run `testenv/build.sh helm` (or `make tools`) and fix \
             what it reports.\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let dir = run(&["print-bin-dir", "helm"]);
        let helm = PathBuf::from(String::from_utf8_lossy(&dir.stdout).trim()).join("helm");
        assert!(
            helm.is_file(),
            "`testenv/build.sh helm` succeeded but {} does not exist; run it by hand",
            helm.display()
        );
        helm
    })
    .clone()
}
