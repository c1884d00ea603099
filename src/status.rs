//! The credential's status, computed purely from what the planner concluded.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{DsccCredentialStatus, RolloutRestartRecord};
use crate::conditions::{self, Situation};
use crate::observe::{FailureRecord, TokenHealth};
use crate::target_secret::TokenRecord;
use crate::verify::Verification;

/// Everything the next status is computed from.
pub struct StatusInputs<'a> {
    /// The status as it is now.
    pub current: Option<&'a DsccCredentialStatus>,
    /// `metadata.generation`.
    pub generation: i64,
    /// Name of the target Secret.
    pub secret_name: &'a str,
    /// The bookkeeping of the token in the target Secret, if ours and intact.
    pub record: Option<&'a TokenRecord>,
    /// The failure bookkeeping to keep (`None` after a success).
    pub failure: Option<&'a FailureRecord>,
    /// What to report.
    pub situation: &'a Situation,
    /// The token's state.
    pub token: TokenHealth,
    /// The current time.
    pub now: Timestamp,
    /// Remarks for the Ready message that do not change readiness.
    pub notes: &'a [String],
    /// The token group, when the token is shared.
    pub token_group: Option<&'a str>,
    /// The workloads restarted, and for which token.
    pub rollout_restarts: &'a [RolloutRestartRecord],
}

/// The status that describes `inputs`. Unchanged conditions keep their transition times, so
/// an unchanged world yields a status equal to the current one and nothing is written.
pub fn next(inputs: &StatusInputs<'_>) -> DsccCredentialStatus {
    let existing = inputs
        .current
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let mut desired = conditions::describe(inputs.situation, inputs.token);
    let mut notes: Vec<&str> = inputs.notes.iter().map(String::as_str).collect();
    if inputs
        .record
        .is_some_and(|r| r.verification == Some(Verification::Forbidden))
    {
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
    let failure = inputs.failure;
    DsccCredentialStatus {
        observed_generation: Some(inputs.generation),
        conditions: conditions::merge(existing, &desired, inputs.generation, inputs.now),
        secret_name: inputs.record.map(|_| inputs.secret_name.to_owned()),
        issued_at: inputs.record.map(|r| Time(r.issued_at)),
        expires_at: inputs.record.map(|r| Time(r.expires_at)),
        renewal_time,
        failed_attempts: failure.map_or(0, |f| i32::try_from(f.attempts).unwrap_or(i32::MAX)),
        last_failure_time: failure.map(|f| Time(f.last_failure)),
        last_failure_reason: failure.map(|f| f.reason.as_str().to_owned()),
        last_failure_message: failure.map(|f| f.message.clone()),
        next_retry_time: failure.map(|f| Time(f.next_retry)),
        last_failed_attempt: failure.map(|f| f.inputs.clone()),
        retry_after_time: failure.and_then(|f| f.not_before).map(Time),
        grant: inputs.record.and_then(|r| r.grant.clone()),
        token_group: inputs.token_group.map(str::to_owned),
        rollout_restarts: inputs.rollout_restarts.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AttemptInputs;
    use crate::observe::failure_from_status;
    use crate::reason::Reason;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn record() -> TokenRecord {
        TokenRecord {
            issued_at: at(0),
            expires_at: at(7200),
            spec_hash: "spec-1".into(),
            credentials_fingerprint: "fp".into(),
            refresh_requested_at: None,
            token_hash: "sha256:0123456789abcdef".into(),
            verification: None,
            grant: Some("ClientCredentials".into()),
            subject_token_hash: None,
        }
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
            not_before: Some(at(4815)),
            inputs: AttemptInputs {
                spec_hash: "spec-1".into(),
                credentials_fingerprint: Some("fp".into()),
                refresh_requested_at: None,
                subject_token_hash: None,
            },
            reason: Reason::RateLimited,
            message: "token endpoint answered 429".into(),
        }
    }

    fn inputs<'a>(
        record: Option<&'a TokenRecord>,
        failure: Option<&'a FailureRecord>,
        situation: &'a Situation,
    ) -> StatusInputs<'a> {
        StatusInputs {
            current: None,
            generation: 1,
            secret_name: "reports-token",
            record,
            failure,
            situation,
            token: valid(),
            now: at(10),
            notes: &[],
            token_group: None,
            rollout_restarts: &[],
        }
    }

    #[test]
    fn a_ready_status_names_the_secret_its_times_and_the_grant() {
        let record = record();
        let status = next(&inputs(Some(&record), None, &Situation::Ready));
        assert_eq!(status.secret_name.as_deref(), Some("reports-token"));
        assert_eq!(status.expires_at, Some(Time(at(7200))));
        assert_eq!(status.renewal_time, Some(Time(at(4800))));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.grant.as_deref(), Some("ClientCredentials"));
        assert_eq!(status.failed_attempts, 0);
    }

    #[test]
    fn the_failure_bookkeeping_round_trips_through_the_status() {
        let record = record();
        let failure = failure();
        let situation = Situation::Failing {
            reason: failure.reason,
            message: failure.message.clone(),
            next_retry: failure.next_retry,
        };
        let status = next(&inputs(Some(&record), Some(&failure), &situation));
        assert_eq!(failure_from_status(Some(&status)), Some(failure));
    }

    #[test]
    fn an_unchanged_world_gives_an_equal_status() {
        let record = record();
        let first = next(&inputs(Some(&record), None, &Situation::Ready));
        let mut later = inputs(Some(&record), None, &Situation::Ready);
        later.current = Some(&first);
        later.now = at(500);
        assert_eq!(next(&later), first);
    }

    #[test]
    fn a_forbidden_verification_and_notes_are_said_in_the_ready_message() {
        let mut record = record();
        record.verification = Some(Verification::Forbidden);
        let notes = ["rollout restart target Deployment reporter not found in storage".to_owned()];
        let mut inputs = inputs(Some(&record), None, &Situation::Ready);
        inputs.notes = &notes;
        let status = next(&inputs);
        let ready = &status.conditions[0];
        assert_eq!(
            ready.status, "True",
            "neither note makes the credential unready"
        );
        assert!(ready.message.contains("HTTP 403"), "{}", ready.message);
        assert!(ready.message.contains("Deployment reporter not found"));
    }
}
