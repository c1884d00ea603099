//! Prometheus metrics, named after cert-manager's (`certmanager_certificate_*`).
//!
//! Labels are bounded: a credential's namespace and name, the token endpoint host, a
//! condition reason. No label ever holds a token, a secret or a client id.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Identifies a credential.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One value of the one-hot ready gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    namespace: String,
    name: String,
    condition: &'static str,
}

/// A token request's endpoint host and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    host: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    namespace: String,
    kind: &'static str,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    namespace: String,
    name: String,
    group: String,
}

const READY_VALUES: [&str; 3] = ["True", "False", "Unknown"];

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    expiration: Family<CredentialLabels, Gauge<f64, AtomicU64>>,
    renewal: Family<CredentialLabels, Gauge<f64, AtomicU64>>,
    ready: Family<ReadyLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<HostLabels, Histogram>,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    leader: Gauge,
    restarts: Family<WorkloadLabels, Counter>,
    groups: Gauge,
    shared_groups: Gauge,
    membership: Family<GroupLabels, Gauge>,
    group_of: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let expiration = Family::<CredentialLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "dscc_token_expiration_timestamp_seconds",
            "When the token in the target Secret expires (Unix time)",
            expiration.clone(),
        );
        let renewal = Family::<CredentialLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "dscc_token_renewal_timestamp_seconds",
            "When the operator will request the next token (Unix time)",
            renewal.clone(),
        );
        let ready = Family::<ReadyLabels, Gauge>::default();
        registry.register(
            "dscc_credential_ready_status",
            "The Ready condition of each credential, one-hot over True, False and Unknown",
            ready.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "dscc_token_requests",
            "Token requests by endpoint host and result (success or the failure reason)",
            requests.clone(),
        );
        let request_duration = Family::<HostLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "dscc_token_request_duration_seconds",
            "Duration of token requests by endpoint host",
            request_duration.clone(),
        );
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "dscc_reconcile",
            "Reconciliations by result (success or error)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "dscc_reconcile_errors",
            "Reconciliations that failed, by kind of error",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]);
        registry.register(
            "dscc_reconcile_duration_seconds",
            "Duration of reconciliations",
            reconcile_duration.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("dscc_build_info", "The operator's version", build);
        let leader = Gauge::default();
        registry.register(
            "dscc_leader_election_is_leader",
            "1 on the replica that holds the leader-election Lease (or runs without election), 0 on standbys",
            leader.clone(),
        );
        let restarts = Family::<WorkloadLabels, Counter>::default();
        registry.register(
            "dscc_rollout_restarts",
            "Rollout restarts of workloads for new tokens, by workload",
            restarts.clone(),
        );
        let groups = Gauge::default();
        registry.register(
            "dscc_token_groups",
            "Token groups: credentials whose token request would be identical share one token",
            groups.clone(),
        );
        let shared_groups = Gauge::default();
        registry.register(
            "dscc_token_groups_shared",
            "Token groups with more than one credential",
            shared_groups.clone(),
        );
        let membership = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "dscc_credential_token_group",
            "1 for each credential and the token group it belongs to (an opaque id)",
            membership.clone(),
        );
        Self {
            registry,
            expiration,
            renewal,
            ready,
            requests,
            request_duration,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            restarts,
            groups,
            shared_groups,
            membership,
            group_of: Default::default(),
        }
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts a rollout restart of a workload.
    pub fn rollout_restarted(&self, namespace: &str, kind: crate::api::WorkloadKind, name: &str) {
        let kind = match kind {
            crate::api::WorkloadKind::Deployment => "Deployment",
            crate::api::WorkloadKind::StatefulSet => "StatefulSet",
            crate::api::WorkloadKind::DaemonSet => "DaemonSet",
        };
        self.restarts
            .get_or_create(&WorkloadLabels {
                namespace: namespace.to_owned(),
                kind,
                name: name.to_owned(),
            })
            .inc();
    }

    /// The number of token groups, and of those shared by several credentials.
    pub fn token_groups(&self, all: usize, shared: usize) {
        self.groups.set(i64::try_from(all).unwrap_or(i64::MAX));
        self.shared_groups
            .set(i64::try_from(shared).unwrap_or(i64::MAX));
    }

    /// Records the token group of a credential (replacing an earlier one).
    pub fn token_group(&self, namespace: &str, name: &str, group: &str) {
        self.forget_token_group(namespace, name);
        self.membership
            .get_or_create(&GroupLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                group: group.to_owned(),
            })
            .set(1);
        crate::lock(self.memberships())
            .insert((namespace.to_owned(), name.to_owned()), group.to_owned());
    }

    /// Removes the token group series of a credential.
    pub fn forget_token_group(&self, namespace: &str, name: &str) {
        let old = crate::lock(self.memberships()).remove(&(namespace.to_owned(), name.to_owned()));
        if let Some(group) = old {
            self.membership.remove(&GroupLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                group,
            });
        }
    }

    fn memberships(
        &self,
    ) -> &std::sync::Mutex<std::collections::HashMap<(String, String), String>> {
        &self.group_of
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Records a credential's token times and Ready status.
    pub fn observe_credential(
        &self,
        credential: &CredentialLabels,
        expires_at: Option<Timestamp>,
        renewal: Option<Timestamp>,
        ready: Option<bool>,
    ) {
        set_or_remove(&self.expiration, credential, expires_at);
        set_or_remove(&self.renewal, credential, renewal);
        let current = match ready {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        for condition in READY_VALUES {
            self.ready
                .get_or_create(&ReadyLabels {
                    namespace: credential.namespace.clone(),
                    name: credential.name.clone(),
                    condition,
                })
                .set(i64::from(condition == current));
        }
    }

    /// Removes every series of a deleted credential.
    pub fn forget_credential(&self, credential: &CredentialLabels) {
        self.forget_token_group(&credential.namespace, &credential.name);
        self.expiration.remove(credential);
        self.renewal.remove(credential);
        for condition in READY_VALUES {
            self.ready.remove(&ReadyLabels {
                namespace: credential.namespace.clone(),
                name: credential.name.clone(),
                condition,
            });
        }
    }

    /// Counts a token request to `host` with `result` (`success` or a condition reason).
    pub fn token_request(&self, host: &str, result: &'static str, duration: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                host: host.to_owned(),
                result,
            })
            .inc();
        self.request_duration
            .get_or_create(&HostLabels {
                host: host.to_owned(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Counts a reconciliation.
    pub fn reconciled(&self, duration: Duration, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { error })
                .inc();
        }
        self.reconcile_duration.observe(duration.as_secs_f64());
    }
}

fn set_or_remove(
    family: &Family<CredentialLabels, Gauge<f64, AtomicU64>>,
    labels: &CredentialLabels,
    value: Option<Timestamp>,
) {
    match value {
        Some(at) => {
            family
                .get_or_create(labels)
                .set(at.as_millisecond() as f64 / 1000.0);
        }
        None => {
            family.remove(labels);
        }
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> CredentialLabels {
        CredentialLabels {
            namespace: "storage".into(),
            name: "reports".into(),
        }
    }

    #[test]
    fn exposes_expiry_renewal_and_a_one_hot_ready_status() {
        let metrics = Metrics::new();
        let expires: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        metrics.observe_credential(&labels(), Some(expires), Some(expires), Some(true));
        let text = metrics.encode();
        let expected = format!(
            "dscc_token_expiration_timestamp_seconds{{namespace=\"storage\",name=\"reports\"}} {}.0",
            expires.as_second()
        );
        assert!(text.contains(&expected), "{text}");
        assert!(text.contains(
            "dscc_credential_ready_status{namespace=\"storage\",name=\"reports\",condition=\"True\"} 1"
        ));
        assert!(text.contains(
            "dscc_credential_ready_status{namespace=\"storage\",name=\"reports\",condition=\"False\"} 0"
        ));
    }

    #[test]
    fn the_ready_gauge_flips_on_failure() {
        let metrics = Metrics::new();
        metrics.observe_credential(&labels(), None, None, Some(true));
        metrics.observe_credential(&labels(), None, None, Some(false));
        let text = metrics.encode();
        assert!(text.contains("condition=\"False\"} 1"));
        assert!(text.contains("condition=\"True\"} 0"));
    }

    #[test]
    fn a_deleted_credential_leaves_no_series() {
        let metrics = Metrics::new();
        let expires: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        metrics.observe_credential(&labels(), Some(expires), Some(expires), Some(true));
        metrics.forget_credential(&labels());
        assert!(!metrics.encode().contains("name=\"reports\""));
    }

    #[test]
    fn counts_token_requests_by_host_and_result() {
        let metrics = Metrics::new();
        metrics.token_request(
            "sso.common.cloud.hpe.com",
            "success",
            Duration::from_millis(120),
        );
        metrics.token_request(
            "sso.common.cloud.hpe.com",
            "RateLimited",
            Duration::from_millis(5),
        );
        let text = metrics.encode();
        assert!(text.contains(
            "dscc_token_requests_total{host=\"sso.common.cloud.hpe.com\",result=\"success\"} 1"
        ));
        assert!(text.contains("result=\"RateLimited\"} 1"));
        assert!(text.contains(
            "dscc_token_request_duration_seconds_count{host=\"sso.common.cloud.hpe.com\"} 2"
        ));
        assert!(text.contains("dscc_build_info{version=\""));
    }
}
