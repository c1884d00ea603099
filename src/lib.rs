//! dscc-token-operator: keeps HPE GreenLake / DSCC API access tokens fresh in Kubernetes
//! Secrets.
//!
//! The modules, in the order a reconcile uses them:
//! - [`api`]: the `DsccCredential` custom resource (the CRD is generated from it).
//! - [`controller`]: the watches and the reconcile loop that carries out the planner's steps.
//! - [`secret_index`]: which credentials use which Secret, and the facts the metadata watch
//!   gives about those Secrets.
//! - [`own_writes`]: the operator's memory of its own last writes (the stale-cache answer).
//! - [`observe`]: the pure translation of what is known into an observation.
//! - [`planner`]: the decision, step by step, with every outcome fed back.
//! - [`steps`]: the steps the planner asks for and the outcomes the controller reports.
//! - [`reason`]: the one classification of failures and how each is retried.
//! - [`schedule`]: renewal times, jitter, retry backoff, durations.
//! - [`conditions`], [`status`]: `Ready` / `Reconciling` / `Stalled` and the status.
//! - [`target_secret`]: the Secrets the operator writes and their bookkeeping.
//! - [`minter`]: token groups (one token per identical request) and the per-host gate.
//! - [`token`]: the OAuth 2.0 client: grants, responses, redaction, the per-host rate limit.
//! - [`verify`]: the probe of the DSCC API that checks a new token.
//! - [`rollout`]: restarts of workloads after a new token, batched per workload.
//! - [`leader`]: leader election and the leadership every request checks.
//! - [`metrics`], [`ops_server`]: Prometheus metrics; the operator's own HTTP endpoints.
//! - [`cli`]: the `status` and `renew` commands (also installed as `kubectl-dscc`).

pub mod api;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod minter;
pub mod observe;
pub mod ops_server;
pub mod own_writes;
pub mod planner;
pub mod reason;
pub mod rollout;
pub mod schedule;
pub mod secret_index;
pub mod status;
pub mod steps;
pub mod target_secret;
pub mod token;
pub mod verify;

use reason::Failure;

/// Why a reconcile could not complete. Token endpoint failures are not among them: they are
/// outcomes the planner records in the status and retries on its own schedule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("{}", .0.message)]
    Api(Failure),
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api(failure) => failure.reason.as_str(),
        }
    }

    /// Whether retrying soon cannot help (the API server refuses for good, say RBAC).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Api(failure) => failure.reason.is_permanent(),
        }
    }
}

/// Locks `mutex`, also after a panic elsewhere poisoned it: every value kept behind one stays
/// consistent at each unlock, so a poisoned lock holds nothing half-written.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
