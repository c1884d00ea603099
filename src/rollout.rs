//! Rollout restarts of workloads that read the token only at start.
//!
//! Each target's pod template carries `dscc.io/restartedAt: <issue time of the token>`. A
//! target whose annotation already names the current token is left alone, so a workload is
//! restarted once per new token, and an operator restart restarts nothing.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{MANAGER, RolloutRestartTarget, WorkloadKind};

/// Pod template annotation that triggers and records a restart.
pub const RESTARTED_AT: &str = "dscc.io/restartedAt";

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
    fn each_kind_maps_to_its_apps_v1_resource() {
        assert_eq!(resource(WorkloadKind::Deployment).plural, "deployments");
        assert_eq!(resource(WorkloadKind::StatefulSet).plural, "statefulsets");
        assert_eq!(resource(WorkloadKind::DaemonSet).plural, "daemonsets");
    }
}
