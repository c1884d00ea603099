//! Rollout restarts of workloads that read the token only at start.
//!
//! A restart patches the pod template annotation `dscc.io/restartedAt` to the token's stamp.
//! The credential's status remembers which token each workload was restarted for, so a
//! workload is restarted once per new token, an operator restart restarts nothing, and a
//! GitOps tool that reverts the annotation (Argo CD self-heal) causes no restart loop.
//!
//! Restarts of one workload asked for within a short window (credentials that renew together)
//! are carried out as one patch, and a workload already restarted for a token is not patched
//! again for it (the members of a token group all ask with the same stamp).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::oneshot;

use crate::api::{MANAGER, RolloutRestartTarget, WorkloadKind};
use crate::lock;
use crate::metrics::Metrics;
use crate::reason::{Failure, Reason};
use crate::steps::Restart;
use crate::target_secret::TokenRecord;

/// Pod template annotation that triggers and records a restart.
pub const RESTARTED_AT: &str = "dscc.io/restartedAt";

/// The restart stamp of a token: its issue time, readable, and a short piece of its hash,
/// because two tokens can be issued within the same second.
pub fn stamp(record: &TokenRecord) -> String {
    let hash = record.token_hash.trim_start_matches("sha256:");
    format!("{} {}", record.issued_at, &hash[..hash.len().min(8)])
}

fn resource(kind: WorkloadKind) -> ApiResource {
    match kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    }
}

type Key = (String, WorkloadKind, String);
type Waiter = oneshot::Sender<Result<Restart, Failure>>;

struct Batch {
    stamp: String,
    waiters: Vec<Waiter>,
}

/// Carries out restarts, one patch per workload and window.
pub struct Restarter {
    client: Client,
    window: Duration,
    pending: Mutex<HashMap<Key, Batch>>,
    /// The stamp each workload was last restarted with by this process.
    done: Mutex<HashMap<Key, String>>,
    metrics: Arc<Metrics>,
}

impl Restarter {
    /// A restarter that gathers requests for `window` before it patches.
    pub fn new(client: Client, window: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            client,
            window,
            pending: Mutex::new(HashMap::new()),
            done: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Restarts `target` in `namespace` for the token with `stamp`; joins a restart of the
    /// same workload already waiting for its window.
    pub async fn restart(
        self: &Arc<Self>,
        namespace: &str,
        target: &RolloutRestartTarget,
        stamp: &str,
    ) -> Result<Restart, Failure> {
        let key = (namespace.to_owned(), target.kind, target.name.clone());
        let (sender, receiver) = oneshot::channel();
        let first = {
            let mut pending = lock(&self.pending);
            match pending.get_mut(&key) {
                Some(batch) => {
                    batch.stamp = batch.stamp.clone().max(stamp.to_owned());
                    batch.waiters.push(sender);
                    false
                }
                None => {
                    pending.insert(
                        key.clone(),
                        Batch {
                            stamp: stamp.to_owned(),
                            waiters: vec![sender],
                        },
                    );
                    true
                }
            }
        };
        if first {
            let this = self.clone();
            tokio::spawn(async move { this.run_batch(key).await });
        }
        receiver.await.unwrap_or_else(|_| {
            Err(Failure::new(
                Reason::RolloutRestartFailed,
                "the restart was abandoned (the operator is stopping)",
            ))
        })
    }

    async fn run_batch(self: Arc<Self>, key: Key) {
        tokio::time::sleep(self.window).await;
        let Some(batch) = lock(&self.pending).remove(&key) else {
            return;
        };
        let (namespace, kind, name) = &key;
        let already = lock(&self.done).get(&key) == Some(&batch.stamp);
        let result = if already {
            Ok(Restart::Restarted)
        } else {
            patch(&self.client, namespace, *kind, name, &batch.stamp).await
        };
        if !already && matches!(result, Ok(Restart::Restarted)) {
            lock(&self.done).insert(key.clone(), batch.stamp.clone());
            self.metrics.rollout_restarted(namespace, *kind, name);
            tracing::info!(
                namespace,
                ?kind,
                name,
                waiters = batch.waiters.len(),
                "restarted workload for a new token"
            );
        }
        for waiter in batch.waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Patches the workload's pod template annotation; a missing workload is `NotFound`.
async fn patch(
    client: &Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
    stamp: &str,
) -> Result<Restart, Failure> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource(kind));
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}});
    match api
        .patch(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Restart::Restarted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Restart::NotFound),
        Err(kube::Error::Api(status)) if status.code == 403 => Err(Failure::new(
            Reason::RolloutRestartFailed,
            format!(
                "the operator may not patch {kind:?} {namespace}/{name} ({}): enable rollout \
                 restarts in the Helm chart (rolloutRestart.enabled=true) or grant patch on \
                 it",
                status.message
            ),
        )),
        Err(error) => Err(Failure::from_kube(
            &error,
            Reason::RolloutRestartFailed,
            &format!("patching {kind:?} {namespace}/{name}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tokens_issued_in_the_same_second_get_different_stamps() {
        let record = |hash: &str| TokenRecord {
            issued_at: "2026-11-25T10:00:00Z".parse().unwrap(),
            expires_at: "2026-11-25T12:00:00Z".parse().unwrap(),
            spec_hash: "spec-1".into(),
            credentials_fingerprint: "sha256:fp".into(),
            refresh_requested_at: None,
            token_hash: hash.into(),
            verification: None,
            grant: None,
            subject_token_hash: None,
        };
        let first = stamp(&record("sha256:0a1b2c3d4e5f"));
        assert_eq!(first, "2026-11-25T10:00:00Z 0a1b2c3d");
        assert_ne!(first, stamp(&record("sha256:ffeeddccbbaa")));
    }

    #[test]
    fn each_kind_maps_to_its_apps_v1_resource() {
        assert_eq!(resource(WorkloadKind::Deployment).plural, "deployments");
        assert_eq!(resource(WorkloadKind::StatefulSet).plural, "statefulsets");
        assert_eq!(resource(WorkloadKind::DaemonSet).plural, "daemonsets");
    }
}
