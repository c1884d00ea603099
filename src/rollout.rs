//! Rollout restarts of workloads that read the token only at start.
//!
//! Each target's pod template carries `dscc.io/restartedAt: <the token's stamp>`. A
//! target whose annotation already names the current token is left alone, so a workload is
//! restarted once per new token, and an operator restart restarts nothing.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{MANAGER, RolloutRestartTarget, WorkloadKind};
use crate::planner::TokenRecord;

/// Pod template annotation that triggers and records a restart.
pub const RESTARTED_AT: &str = "dscc.io/restartedAt";

/// The restart stamp of a token: its issue time, readable, and a short piece of its hash,
/// because two tokens can be issued within the same second.
pub fn stamp(record: &TokenRecord) -> String {
    let hash = record.token_hash.trim_start_matches("sha256:");
    format!("{} {}", record.issued_at, &hash[..hash.len().min(8)])
}

/// What happened to one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartOutcome {
    /// Its pod template was patched: a rollout follows.
    Restarted,
    /// It already runs with the current token.
    UpToDate,
    /// No such workload in the namespace.
    NotFound,
}

fn resource(kind: WorkloadKind) -> ApiResource {
    match kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    }
}

/// The restart stamp on a workload's pod template, if any.
fn current_stamp(workload: &DynamicObject) -> Option<&str> {
    workload.data["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT].as_str()
}

/// Restarts `target` unless it already carries `stamp`.
pub async fn restart(
    client: &Client,
    namespace: &str,
    target: &RolloutRestartTarget,
    stamp: &str,
) -> Result<RestartOutcome, kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource(target.kind));
    let Some(workload) = api.get_opt(&target.name).await? else {
        return Ok(RestartOutcome::NotFound);
    };
    if current_stamp(&workload) == Some(stamp) {
        return Ok(RestartOutcome::UpToDate);
    }
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}});
    api.patch(
        &target.name,
        &PatchParams::apply(MANAGER),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(RestartOutcome::Restarted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_from_the_pod_template() {
        let workload: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "reporter"},
            "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "2026-11-25T10:00:00Z"}}}}
        }))
        .unwrap();
        assert_eq!(current_stamp(&workload), Some("2026-11-25T10:00:00Z"));
        let bare: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "reporter"},
            "spec": {}
        }))
        .unwrap();
        assert_eq!(current_stamp(&bare), None);
    }

    #[test]
    fn two_tokens_issued_in_the_same_second_get_different_stamps() {
        let record = |hash: &str| TokenRecord {
            issued_at: "2026-11-25T10:00:00Z".parse().unwrap(),
            expires_at: "2026-11-25T12:00:00Z".parse().unwrap(),
            spec_hash: "spec-1".into(),
            credentials_fingerprint: "sha256:fp".into(),
            refresh_requested_at: None,
            data_intact: true,
            token_hash: hash.into(),
            verification: None,
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
