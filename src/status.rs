//! The credential's status: read the failure bookkeeping from it, and compute the next one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::DsccCredentialStatus;
use crate::conditions::{self, Reason};
use crate::dscc_api::Verification;
use crate::planner::{FailureRecord, Situation, TargetState, TokenHealth};

/// The failure bookkeeping stored in `status`, if the last attempt failed.
pub fn failure_record(status: Option<&DsccCredentialStatus>) -> Option<FailureRecord> {
    let status = status?;
    let attempts = u32::try_from(status.failed_attempts)
        .ok()
        .filter(|n| *n > 0)?;
    let reason = status
        .last_failure_reason
        .as_deref()
        .and_then(Reason::parse)
        .unwrap_or(Reason::TokenEndpointUnavailable);
    Some(FailureRecord {
        attempts,
        last_failure: status.last_failure_time.as_ref()?.0,
        next_retry: status.next_retry_time.as_ref()?.0,
        inputs: status.last_failed_attempt.clone().unwrap_or_default(),
        reason,
        message: status.last_failure_message.clone().unwrap_or_default(),
        // A permanent failure is the one that stalled the credential.
        permanent: conditions::find(&status.conditions, conditions::STALLED)
            .is_some_and(|c| c.reason == reason.as_str()),
    })
}

/// Everything the next status is computed from.
pub struct StatusInputs<'a> {
    /// The status as it is now.
    pub current: Option<&'a DsccCredentialStatus>,
    /// `metadata.generation`.
    pub generation: i64,
    /// Name of the target Secret.
    pub secret_name: &'a str,
    /// The target Secret as the planner saw it.
    pub target: &'a TargetState,
    /// The failure bookkeeping to keep (`None` after a success).
    pub failure: Option<&'a FailureRecord>,
    /// What to report.
    pub situation: &'a Situation,
    /// The token's state.
    pub token: TokenHealth,
    /// The current time.
    pub now: Timestamp,
    /// Remarks for the Ready message that do not change readiness (e.g. a missing rollout
    /// restart target).
    pub notes: &'a [String],
}

/// The status that describes `inputs`. Unchanged conditions keep their transition times, so
/// an unchanged world yields a status equal to the current one and nothing is written.
pub fn next(inputs: &StatusInputs<'_>) -> DsccCredentialStatus {
    let existing = inputs
        .current
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let record = match inputs.target {
        TargetState::Owned(Some(record)) if record.data_intact => Some(record),
        _ => None,
    };
    let mut desired = conditions::describe(inputs.situation, inputs.token);
    let mut notes: Vec<&str> = inputs.notes.iter().map(String::as_str).collect();
    if record.is_some_and(|r| r.verification == Some(Verification::Forbidden)) {
        notes.push(
            "the DSCC API accepts the token but denied reading audit events (HTTP 403): the \
             API client lacks that permission",
        );
    }
    if let Some(ready) = desired.iter_mut().find(|d| d.type_ == conditions::READY)
        && !notes.is_empty()
    {
        ready.message = format!("{}; {}", ready.message, notes.join("; "));
    }
    let renewal_time = match (inputs.situation, inputs.token) {
        (Situation::Ready, TokenHealth::Valid { renewal, .. }) => Some(Time(renewal)),
        _ => None,
    };
    // Ready means the token is good for what is wanted now: a failure still in the inputs is
    // over. It comes from a status read before the success was written (the watch cache lags
    // behind our own write), and writing it back would keep it for good.
    let failure = inputs
        .failure
        .filter(|_| !matches!(inputs.situation, Situation::Ready));
    DsccCredentialStatus {
        observed_generation: Some(inputs.generation),
        conditions: conditions::merge(existing, &desired, inputs.generation, inputs.now),
        secret_name: record.map(|_| inputs.secret_name.to_owned()),
        issued_at: record.map(|r| Time(r.issued_at)),
        expires_at: record.map(|r| Time(r.expires_at)),
        renewal_time,
        failed_attempts: failure.map_or(0, |f| i32::try_from(f.attempts).unwrap_or(i32::MAX)),
        last_failure_time: failure.map(|f| Time(f.last_failure)),
        last_failure_reason: failure.map(|f| f.reason.as_str().to_owned()),
        last_failure_message: failure.map(|f| f.message.clone()),
        next_retry_time: failure.map(|f| Time(f.next_retry)),
        last_failed_attempt: failure.map(|f| f.inputs.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AttemptInputs;
    use crate::planner::TokenRecord;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn owned() -> TargetState {
        TargetState::Owned(Some(TokenRecord {
            issued_at: at(0),
            expires_at: at(7200),
            spec_hash: "spec-1".into(),
            credentials_fingerprint: "fp".into(),
            refresh_requested_at: None,
            data_intact: true,
            token_hash: "sha256:0123456789abcdef".into(),
            verification: None,
        }))
    }

    fn valid() -> TokenHealth {
        TokenHealth::Valid {
            expires_at: at(7200),
            renewal: at(4800),
            current: true,
        }
    }

    fn failure() -> FailureRecord {
        FailureRecord {
            attempts: 2,
            last_failure: at(4810),
            next_retry: at(4820),
            inputs: AttemptInputs {
                generation: 1,
                client_secret_version: Some("7".into()),
                refresh_requested_at: None,
            },
            reason: Reason::RateLimited,
            message: "token endpoint answered 429".into(),
            permanent: false,
        }
    }

    #[test]
    fn a_ready_status_names_the_secret_and_its_times() {
        let target = owned();
        let status = next(&StatusInputs {
            current: None,
            generation: 1,
            secret_name: "reports-token",
            target: &target,
            failure: None,
            situation: &Situation::Ready,
            token: valid(),
            now: at(10),
            notes: &[],
        });
        assert_eq!(status.secret_name.as_deref(), Some("reports-token"));
        assert_eq!(status.expires_at, Some(Time(at(7200))));
        assert_eq!(status.renewal_time, Some(Time(at(4800))));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.failed_attempts, 0);
    }

    #[test]
    fn the_failure_bookkeeping_round_trips_through_the_status() {
        let target = owned();
        let failure = failure();
        let situation = Situation::Failing {
            reason: failure.reason,
            message: failure.message.clone(),
            permanent: false,
            next_retry: failure.next_retry,
        };
        let status = next(&StatusInputs {
            current: None,
            generation: 1,
            secret_name: "reports-token",
            target: &target,
            failure: Some(&failure),
            situation: &situation,
            token: valid(),
            now: at(4810),
            notes: &[],
        });
        assert_eq!(failure_record(Some(&status)), Some(failure));
    }

    #[test]
    fn a_ready_status_drops_a_failure_read_from_a_stale_status() {
        let target = owned();
        let failure = failure();
        let status = next(&StatusInputs {
            current: None,
            generation: 1,
            secret_name: "reports-token",
            target: &target,
            failure: Some(&failure),
            situation: &Situation::Ready,
            token: valid(),
            now: at(4830),
            notes: &[],
        });
        assert_eq!(status.failed_attempts, 0);
        assert_eq!(status.last_failure_time, None);
        assert_eq!(status.next_retry_time, None);
        assert_eq!(failure_record(Some(&status)), None);
    }

    #[test]
    fn an_unchanged_world_gives_an_equal_status() {
        let target = owned();
        let inputs = |current| StatusInputs {
            current,
            generation: 1,
            secret_name: "reports-token",
            target: &target,
            failure: None,
            situation: &Situation::Ready,
            token: valid(),
            now: at(10),
            notes: &[],
        };
        let first = next(&inputs(None));
        let mut later = inputs(Some(&first));
        later.now = at(500);
        assert_eq!(next(&later), first);
    }

    #[test]
    fn a_forbidden_verification_and_notes_are_said_in_the_ready_message() {
        let TargetState::Owned(Some(mut record)) = owned() else {
            unreachable!()
        };
        record.verification = Some(Verification::Forbidden);
        let target = TargetState::Owned(Some(record));
        let notes = ["rollout restart target Deployment reporter not found in storage".to_owned()];
        let status = next(&StatusInputs {
            current: None,
            generation: 1,
            secret_name: "reports-token",
            target: &target,
            failure: None,
            situation: &Situation::Ready,
            token: valid(),
            now: at(10),
            notes: &notes,
        });
        let ready = &status.conditions[0];
        assert_eq!(
            ready.status, "True",
            "neither note makes the credential unready"
        );
        assert!(ready.message.contains("HTTP 403"), "{}", ready.message);
        assert!(ready.message.contains("Deployment reporter not found"));
    }
}
