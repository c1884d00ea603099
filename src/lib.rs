//! dscc-token-operator: keeps HPE GreenLake / DSCC API access tokens fresh in Kubernetes
//! Secrets.
//!
//! The design in one line per module:
//! - [`api`]: the `DsccCredential` custom resource.
//! - [`token`]: the OAuth 2.0 client-credentials exchange.
//! - [`schedule`]: renewal times, jitter and retry backoff.
//! - [`planner`]: the pure decision of what to do next.
//! - [`conditions`]: `Ready` / `Reconciling` / `Stalled`.
//! - [`target_secret`]: the Secret the token is written to.
//! - [`controller`]: the Kubernetes wiring that gathers inputs and carries out the plan.
//! - [`metrics`], [`http`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`.
//! - [`dscc_api`]: the probe that verifies a new token; [`rollout`]: workload restarts.

pub mod api;
pub mod conditions;
pub mod controller;
pub mod dscc_api;
pub mod http;
pub mod metrics;
pub mod planner;
pub mod rollout;
pub mod schedule;
pub mod status;
pub mod target_secret;
pub mod token;

/// Errors at the Kubernetes API boundary of the controller.
///
/// Token endpoint failures are not errors of the reconciler: they are reported in the
/// status and retried on their own schedule. What remains are API calls that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call failed: {context}: {source}")]
    Kube {
        /// What the operator was doing.
        context: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The credential has no namespace (it is namespaced, so this means a broken object).
    #[error("DsccCredential {0} has no namespace")]
    MissingNamespace(String),
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::MissingNamespace(_) => "missing_namespace",
        }
    }
}

/// Attaches what the operator was doing to a Kubernetes API error.
pub(crate) trait KubeContext<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            context: context(),
            source: Box::new(source),
        })
    }
}
