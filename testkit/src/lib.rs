//! Test support of dscc-token-operator, shared by its integration tests (`tests/`), the
//! benchmark and the demo:
//! - [`cluster`]: the local control plane (`testenv/cluster.sh`), one per test binary;
//! - [`operator`]: the operator run as its own process;
//! - [`token_endpoint`]: a fault-injecting OAuth 2.0 token endpoint on 127.0.0.1;
//! - [`tls`]: test CAs and a TLS front for local servers;
//! - [`dscc_api`]: a stand-in for the DSCC API that the verify probe calls;
//! - [`harness`]: one end-to-end test's world (namespace, endpoint, helpers to wait);
//! - [`invalid_manifests`]: specs the API server must refuse, with the message it must give.
#![allow(missing_docs)]

pub mod cluster;
pub mod dscc_api;
pub mod harness;
pub mod invalid_manifests;
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
