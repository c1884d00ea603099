//! The decision: given what is stored in the cluster and the clock, what to do next.
//!
//! Nothing here does I/O. The controller gathers an [`Observed`], calls [`plan`], and carries
//! out the [`Plan`]; after a failed token request it calls [`after_failure`]. Because the
//! inputs come from the cluster (the target Secret's annotations and the credential's
//! status), an operator restart reaches the same decision and never re-issues a valid token.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};

use crate::api::AttemptInputs;
use crate::conditions::Reason;
use crate::dscc_api::Verification;
use crate::schedule::{RefreshBefore, RetryPolicy, renewal_time};

/// Everything the decision depends on.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The current time.
    pub now: Timestamp,
    /// `metadata.generation` of the credential.
    pub generation: i64,
    /// [`crate::api::DsccCredentialSpec::issuance_hash`] of the current spec.
    pub spec_hash: String,
    /// `spec.suspend`.
    pub suspend: bool,
    /// The value of the manual refresh annotation, if set.
    pub refresh_requested_at: Option<String>,
    /// The renewal setting, already parsed.
    pub refresh_before: RefreshBefore,
    /// A problem with the spec that the API server could not reject (for example a plain
    /// http token URL while insecure URLs are not allowed).
    pub spec_problem: Option<String>,
    /// The client Secret.
    pub client: ClientSecretState,
    /// The target Secret.
    pub target: TargetState,
    /// Whether the status says a token was ever issued.
    pub ever_issued: bool,
    /// The failure bookkeeping from the status.
    pub failure: Option<FailureRecord>,
    /// Seed for the renewal jitter of the current token.
    pub jitter_seed: u64,
}

/// What is known about the client Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientSecretState {
    /// No Secret of that name in the namespace.
    Missing { name: String },
    /// The Secret lacks a key, or its value is empty.
    KeyMissing { name: String, key: String },
    /// Both keys are there.
    Present {
        /// A one-way fingerprint of the client id and secret (never the values).
        fingerprint: String,
        /// The Secret's resourceVersion.
        version: String,
    },
}

/// What is known about the target Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetState {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that this credential does not control.
    Foreign { name: String },
    /// Our Secret; `None` when its bookkeeping annotations are missing or unreadable.
    Owned(Option<TokenRecord>),
}

/// The bookkeeping the operator writes on the target Secret with each token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    /// When the token was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The issuance hash of the spec it was issued for.
    pub spec_hash: String,
    /// Fingerprint of the client credentials it was issued with.
    pub credentials_fingerprint: String,
    /// The manual refresh request it answered, if any.
    pub refresh_requested_at: Option<String>,
    /// Whether the token data is still as written (not edited by someone else).
    pub data_intact: bool,
    /// A one-way hash of the token data as written: tells two tokens apart, even two issued
    /// in the same second.
    pub token_hash: String,
    /// What the DSCC API said about the token, when `spec.verify` is on.
    pub verification: Option<Verification>,
}

/// The failure bookkeeping kept in the status.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRecord {
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// When the last attempt failed.
    pub last_failure: Timestamp,
    /// When the next attempt is due.
    pub next_retry: Timestamp,
    /// What the failed attempt was made from.
    pub inputs: AttemptInputs,
    /// The reason that was reported.
    pub reason: Reason,
    /// The message that was reported.
    pub message: String,
    /// Whether the failure was permanent.
    pub permanent: bool,
}

/// Why a new token is requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// The credential never had a token.
    FirstToken,
    /// The token is inside its renewal window.
    RenewalDue,
    /// The token has expired.
    Expired,
    /// The credential's spec changed.
    SpecChanged,
    /// The client id or secret changed.
    ClientSecretChanged,
    /// The target Secret is gone.
    TargetMissing,
    /// The target Secret's token data was changed by someone else.
    TargetEdited,
    /// The manual refresh annotation has a new value.
    RefreshRequested,
    /// A retry after a failure is due.
    Retry,
}

impl fmt::Display for IssueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IssueReason::FirstToken => "no token has been issued yet",
            IssueReason::RenewalDue => "the token is due for renewal",
            IssueReason::Expired => "the token has expired",
            IssueReason::SpecChanged => "the spec changed",
            IssueReason::ClientSecretChanged => "the client credentials changed",
            IssueReason::TargetMissing => "the target Secret is missing",
            IssueReason::TargetEdited => "the target Secret was edited",
            IssueReason::RefreshRequested => "a refresh was requested",
            IssueReason::Retry => "retrying after a failure",
        })
    }
}

/// The state of the token currently in the target Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenHealth {
    /// No usable token of ours.
    None,
    /// A token valid until `expires_at`; `current` when issued from the current spec and
    /// client credentials; `renewal` is when it is due for renewal.
    Valid {
        expires_at: Timestamp,
        renewal: Timestamp,
        current: bool,
    },
    /// A token that expired at `expired_at`.
    Expired { expired_at: Timestamp },
}

/// What the status should say when no token is requested.
#[derive(Clone, Debug, PartialEq)]
pub enum Situation {
    /// All is well.
    Ready,
    /// `spec.suspend` is set.
    Suspended,
    /// Something the user must fix; no request is made until it changes.
    Blocked { reason: Reason, message: String },
    /// A token request failed; the next one is due at `next_retry`.
    Failing {
        reason: Reason,
        message: String,
        permanent: bool,
        next_retry: Timestamp,
    },
}

/// The next step.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Request a new token now.
    Issue(IssueReason),
    /// Request nothing; report `situation` and look again at `requeue_at` (if any: otherwise
    /// only a change to the credential or its Secrets brings it back).
    Report {
        situation: Situation,
        token: TokenHealth,
        requeue_at: Option<Timestamp>,
    },
}

/// Decides the next step.
pub fn plan(observed: &Observed) -> Plan {
    let token = token_health(observed);
    let report = |situation: Situation, requeue_at: Option<Timestamp>| Plan::Report {
        situation,
        token,
        requeue_at: earliest(requeue_at, expiry_of(token)),
    };

    if let Some(problem) = &observed.spec_problem {
        let situation = Situation::Blocked {
            reason: Reason::InvalidSpec,
            message: problem.clone(),
        };
        return report(situation, None);
    }
    if observed.suspend {
        return report(Situation::Suspended, None);
    }
    if let TargetState::Foreign { name } = &observed.target {
        let message = format!(
            "Secret {name} already exists and is not controlled by this DsccCredential; \
             delete or rename it, or set spec.target.name to another name"
        );
        let situation = Situation::Blocked {
            reason: Reason::TargetSecretConflict,
            message,
        };
        return report(situation, None);
    }
    let (fingerprint, client_version) = match &observed.client {
        ClientSecretState::Missing { name } => {
            let message = format!(
                "client Secret {name} not found; create it with the keys of spec.clientSecretRef"
            );
            let situation = Situation::Blocked {
                reason: Reason::ClientSecretNotFound,
                message,
            };
            return report(situation, None);
        }
        ClientSecretState::KeyMissing { name, key } => {
            let message = format!(
                "client Secret {name} has no key {key} (or it is empty); add it or change \
                 spec.clientSecretRef"
            );
            let situation = Situation::Blocked {
                reason: Reason::ClientSecretKeyMissing,
                message,
            };
            return report(situation, None);
        }
        ClientSecretState::Present {
            fingerprint,
            version,
        } => (fingerprint, version),
    };

    let wanted = issue_reason(observed, fingerprint);

    if let Some(failure) = &observed.failure {
        let inputs = AttemptInputs {
            generation: observed.generation,
            client_secret_version: Some(client_version.clone()),
            refresh_requested_at: observed.refresh_requested_at.clone(),
        };
        let inputs_changed = inputs != failure.inputs;
        if wanted.is_some() && !inputs_changed && observed.now < failure.next_retry {
            let situation = Situation::Failing {
                reason: failure.reason,
                message: failure.message.clone(),
                permanent: failure.permanent,
                next_retry: failure.next_retry,
            };
            return report(situation, Some(failure.next_retry));
        }
        if wanted.is_some() {
            let reason = if inputs_changed {
                wanted.unwrap_or(IssueReason::Retry)
            } else {
                IssueReason::Retry
            };
            return Plan::Issue(reason);
        }
    }

    match wanted {
        Some(reason) => Plan::Issue(reason),
        None => {
            let renewal = match token {
                TokenHealth::Valid { renewal, .. } => Some(renewal),
                _ => None,
            };
            report(Situation::Ready, renewal)
        }
    }
}

/// Why a token is wanted now, or `None` while the current one is good.
fn issue_reason(observed: &Observed, fingerprint: &str) -> Option<IssueReason> {
    let record = match &observed.target {
        TargetState::Missing if observed.ever_issued => return Some(IssueReason::TargetMissing),
        TargetState::Missing | TargetState::Foreign { .. } => {
            return Some(IssueReason::FirstToken);
        }
        TargetState::Owned(None) => return Some(IssueReason::TargetEdited),
        TargetState::Owned(Some(record)) => record,
    };
    if !record.data_intact {
        Some(IssueReason::TargetEdited)
    } else if record.spec_hash != observed.spec_hash {
        Some(IssueReason::SpecChanged)
    } else if record.credentials_fingerprint != fingerprint {
        Some(IssueReason::ClientSecretChanged)
    } else if observed.refresh_requested_at.is_some()
        && observed.refresh_requested_at != record.refresh_requested_at
    {
        Some(IssueReason::RefreshRequested)
    } else if observed.now >= record.expires_at {
        Some(IssueReason::Expired)
    } else if observed.now >= renewal_of(record, observed) {
        Some(IssueReason::RenewalDue)
    } else {
        None
    }
}

fn renewal_of(record: &TokenRecord, observed: &Observed) -> Timestamp {
    renewal_time(
        record.issued_at,
        record.expires_at,
        observed.refresh_before,
        observed.jitter_seed,
    )
}

/// The state of the token in the target Secret.
pub fn token_health(observed: &Observed) -> TokenHealth {
    let TargetState::Owned(Some(record)) = &observed.target else {
        return TokenHealth::None;
    };
    if !record.data_intact {
        return TokenHealth::None;
    }
    if observed.now >= record.expires_at {
        return TokenHealth::Expired {
            expired_at: record.expires_at,
        };
    }
    let current = record.spec_hash == observed.spec_hash
        && matches!(&observed.client,
            ClientSecretState::Present { fingerprint, .. } if *fingerprint == record.credentials_fingerprint);
    TokenHealth::Valid {
        expires_at: record.expires_at,
        renewal: renewal_of(record, observed),
        current,
    }
}

fn expiry_of(token: TokenHealth) -> Option<Timestamp> {
    match token {
        TokenHealth::Valid { expires_at, .. } => Some(expires_at),
        _ => None,
    }
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A failed token request, as the planner needs to know it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The condition reason.
    pub reason: Reason,
    /// What happened and what to fix; never a secret.
    pub message: String,
    /// Whether retrying soon is pointless.
    pub permanent: bool,
    /// What the server asked us to wait, if anything.
    pub retry_after: Option<Duration>,
}

/// The failure bookkeeping after a failed attempt made from `inputs`.
pub fn after_failure(
    observed: &Observed,
    inputs: AttemptInputs,
    failure: &Failure,
    policy: &RetryPolicy,
) -> FailureRecord {
    let attempts = observed.failure.as_ref().map_or(0, |f| f.attempts) + 1;
    let delay = policy.delay(
        attempts,
        failure.permanent,
        failure.retry_after,
        observed.jitter_seed ^ u64::from(attempts),
    );
    let next_retry = observed.now + SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX);
    // The status keeps times in whole seconds and the next look at the credential reads the
    // retry time back from it: rounded down, a retry (and a server's Retry-After) would come
    // up to a second early.
    let next_retry = next_retry
        .round(
            TimestampRound::new()
                .smallest(Unit::Second)
                .mode(RoundMode::Ceil),
        )
        .unwrap_or(next_retry);
    FailureRecord {
        attempts,
        last_failure: observed.now,
        next_retry,
        inputs,
        reason: failure.reason,
        message: failure.message.clone(),
        permanent: failure.permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn record(issued: i64, lifetime: i64) -> TokenRecord {
        TokenRecord {
            issued_at: at(issued),
            expires_at: at(issued + lifetime),
            spec_hash: "spec-1".into(),
            credentials_fingerprint: "fp-1".into(),
            refresh_requested_at: None,
            data_intact: true,
            token_hash: "sha256:0123456789abcdef".into(),
            verification: None,
        }
    }

    /// A credential with a 2-hour token issued at 0, looked at `now` seconds later.
    fn observed(now: i64) -> Observed {
        Observed {
            now: at(now),
            generation: 1,
            spec_hash: "spec-1".into(),
            suspend: false,
            refresh_requested_at: None,
            refresh_before: RefreshBefore::Default,
            spec_problem: None,
            client: ClientSecretState::Present {
                fingerprint: "fp-1".into(),
                version: "100".into(),
            },
            target: TargetState::Owned(Some(record(0, 7200))),
            ever_issued: true,
            failure: None,
            jitter_seed: 0,
        }
    }

    fn inputs(o: &Observed) -> AttemptInputs {
        AttemptInputs {
            generation: o.generation,
            client_secret_version: Some("100".into()),
            refresh_requested_at: o.refresh_requested_at.clone(),
        }
    }

    fn transient() -> Failure {
        Failure {
            reason: Reason::TokenEndpointUnavailable,
            message: "token endpoint answered 503".into(),
            permanent: false,
            retry_after: None,
        }
    }

    fn permanent() -> Failure {
        Failure {
            reason: Reason::InvalidClientCredentials,
            message: "rejected: invalid_client".into(),
            permanent: true,
            retry_after: None,
        }
    }

    fn issues(o: &Observed) -> Option<IssueReason> {
        match plan(o) {
            Plan::Issue(reason) => Some(reason),
            Plan::Report { .. } => None,
        }
    }

    #[test]
    fn issues_the_first_token() {
        let mut o = observed(0);
        o.target = TargetState::Missing;
        o.ever_issued = false;
        assert_eq!(issues(&o), Some(IssueReason::FirstToken));
    }

    #[test]
    fn waits_until_the_renewal_time_while_the_token_is_fresh() {
        let plan = plan(&observed(60));
        let Plan::Report {
            situation,
            requeue_at,
            token,
        } = plan
        else {
            panic!("expected a report, got {plan:?}");
        };
        assert_eq!(situation, Situation::Ready);
        assert_eq!(requeue_at, Some(at(4800)));
        assert!(matches!(token, TokenHealth::Valid { current: true, .. }));
    }

    #[test]
    fn renews_once_a_third_of_the_lifetime_remains() {
        assert_eq!(issues(&observed(4799)), None);
        assert_eq!(issues(&observed(4800)), Some(IssueReason::RenewalDue));
    }

    #[test]
    fn renews_fifteen_minute_tokens_after_ten_minutes() {
        let mut o = observed(599);
        o.target = TargetState::Owned(Some(record(0, 900)));
        assert_eq!(issues(&o), None);
        o.now = at(600);
        assert_eq!(issues(&o), Some(IssueReason::RenewalDue));
    }

    #[test]
    fn jitter_moves_the_renewal_earlier_never_later() {
        let mut o = observed(4790);
        o.jitter_seed = u64::MAX;
        assert_eq!(issues(&o), Some(IssueReason::RenewalDue));
        o.now = at(4800 - 361);
        assert_eq!(issues(&o), None, "jitter is at most 5% of the lifetime");
    }

    #[test]
    fn issues_when_the_token_has_expired() {
        assert_eq!(issues(&observed(7200)), Some(IssueReason::Expired));
    }

    #[test]
    fn issues_when_the_spec_changed() {
        let mut o = observed(60);
        o.generation = 2;
        o.spec_hash = "spec-2".into();
        assert_eq!(issues(&o), Some(IssueReason::SpecChanged));
    }

    #[test]
    fn issues_when_the_client_credentials_changed() {
        let mut o = observed(60);
        o.client = ClientSecretState::Present {
            fingerprint: "fp-2".into(),
            version: "101".into(),
        };
        assert_eq!(issues(&o), Some(IssueReason::ClientSecretChanged));
    }

    #[test]
    fn a_client_secret_edit_that_keeps_the_credentials_issues_nothing() {
        let mut o = observed(60);
        o.client = ClientSecretState::Present {
            fingerprint: "fp-1".into(),
            version: "205".into(),
        };
        assert_eq!(issues(&o), None);
    }

    #[test]
    fn issues_when_the_target_secret_was_deleted() {
        let mut o = observed(60);
        o.target = TargetState::Missing;
        assert_eq!(issues(&o), Some(IssueReason::TargetMissing));
    }

    #[test]
    fn issues_when_the_target_secret_data_was_edited() {
        let mut o = observed(60);
        let mut edited = record(0, 7200);
        edited.data_intact = false;
        o.target = TargetState::Owned(Some(edited));
        assert_eq!(issues(&o), Some(IssueReason::TargetEdited));
        o.target = TargetState::Owned(None);
        assert_eq!(issues(&o), Some(IssueReason::TargetEdited));
    }

    #[test]
    fn a_manual_refresh_issues_once_per_new_annotation_value() {
        let mut o = observed(60);
        o.refresh_requested_at = Some("2026-11-25T10:00:00Z".into());
        assert_eq!(issues(&o), Some(IssueReason::RefreshRequested));
        let mut answered = record(0, 7200);
        answered.refresh_requested_at = o.refresh_requested_at.clone();
        o.target = TargetState::Owned(Some(answered));
        assert_eq!(issues(&o), None);
    }

    #[test]
    fn a_spec_edit_that_does_not_touch_the_token_issues_nothing() {
        // e.g. suspend toggled, refreshBefore tuned, a rollout target added
        let mut o = observed(60);
        o.generation = 5;
        assert_eq!(issues(&o), None);
        assert!(matches!(
            plan(&o),
            Plan::Report {
                token: TokenHealth::Valid { current: true, .. },
                ..
            }
        ));
    }

    #[test]
    fn suspend_stops_renewals_and_reports_it() {
        let mut o = observed(7000);
        o.suspend = true;
        let Plan::Report {
            situation,
            requeue_at,
            ..
        } = plan(&o)
        else {
            panic!("suspended credentials must not issue");
        };
        assert_eq!(situation, Situation::Suspended);
        assert_eq!(requeue_at, Some(at(7200)), "look again when it expires");
    }

    #[test]
    fn a_foreign_target_secret_is_a_conflict_and_nothing_is_issued() {
        let mut o = observed(60);
        o.target = TargetState::Foreign {
            name: "reports-token".into(),
        };
        let Plan::Report { situation, .. } = plan(&o) else {
            panic!("must not issue into a foreign Secret");
        };
        assert!(matches!(
            situation,
            Situation::Blocked {
                reason: Reason::TargetSecretConflict,
                ..
            }
        ));
    }

    #[test]
    fn a_missing_client_secret_or_key_blocks_with_its_own_reason() {
        let mut o = observed(60);
        o.client = ClientSecretState::Missing {
            name: "greenlake-client".into(),
        };
        assert!(matches!(
            plan(&o),
            Plan::Report {
                situation: Situation::Blocked {
                    reason: Reason::ClientSecretNotFound,
                    ..
                },
                ..
            }
        ));
        o.client = ClientSecretState::KeyMissing {
            name: "greenlake-client".into(),
            key: "client_secret".into(),
        };
        let Plan::Report {
            situation: Situation::Blocked { reason, message },
            ..
        } = plan(&o)
        else {
            panic!("expected blocked");
        };
        assert_eq!(reason, Reason::ClientSecretKeyMissing);
        assert!(message.contains("greenlake-client") && message.contains("client_secret"));
    }

    #[test]
    fn an_invalid_spec_blocks_before_anything_else() {
        let mut o = observed(60);
        o.spec_problem = Some("plain http token URLs are not allowed".into());
        o.target = TargetState::Missing;
        assert!(matches!(
            plan(&o),
            Plan::Report {
                situation: Situation::Blocked {
                    reason: Reason::InvalidSpec,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn a_transient_failure_waits_for_its_backoff_then_retries() {
        let mut o = observed(4800);
        let record = after_failure(&o, inputs(&o), &transient(), &RetryPolicy::default());
        assert_eq!(record.attempts, 1);
        assert_eq!(record.next_retry, at(4805));
        o.failure = Some(record);
        o.now = at(4803);
        assert!(matches!(
            plan(&o),
            Plan::Report { situation: Situation::Failing { permanent: false, .. }, requeue_at: Some(t), .. } if t == at(4805)
        ));
        o.now = at(4805);
        assert_eq!(issues(&o), Some(IssueReason::Retry));
    }

    #[test]
    fn backoff_grows_with_each_consecutive_failure() {
        let mut o = observed(4800);
        let policy = RetryPolicy::default();
        let mut delays = vec![];
        for _ in 0..4 {
            let record = after_failure(&o, inputs(&o), &transient(), &policy);
            delays.push(record.next_retry.duration_since(o.now).as_secs());
            o.now = record.next_retry;
            o.failure = Some(record);
        }
        assert_eq!(delays, [5, 10, 20, 40]);
    }

    #[test]
    fn a_permanent_failure_retries_slowly() {
        let mut o = observed(4800);
        let record = after_failure(&o, inputs(&o), &permanent(), &RetryPolicy::default());
        assert_eq!(record.next_retry, at(4800 + 600));
        o.failure = Some(record);
        o.now = at(4800 + 599);
        assert_eq!(issues(&o), None);
    }

    #[test]
    fn a_permanent_failure_retries_at_once_when_the_client_secret_changes() {
        let mut o = observed(4800);
        o.failure = Some(after_failure(
            &o,
            inputs(&o),
            &permanent(),
            &RetryPolicy::default(),
        ));
        o.now = at(4810);
        o.client = ClientSecretState::Present {
            fingerprint: "fp-2".into(),
            version: "101".into(),
        };
        assert_eq!(issues(&o), Some(IssueReason::ClientSecretChanged));
    }

    #[test]
    fn a_permanent_failure_retries_at_once_when_the_spec_changes() {
        let mut o = observed(4800);
        o.failure = Some(after_failure(
            &o,
            inputs(&o),
            &permanent(),
            &RetryPolicy::default(),
        ));
        o.now = at(4810);
        o.generation = 2;
        o.spec_hash = "spec-2".into();
        assert_eq!(issues(&o), Some(IssueReason::SpecChanged));
    }

    #[test]
    fn a_failed_manual_refresh_is_not_repeated_before_the_backoff() {
        let mut o = observed(60);
        o.refresh_requested_at = Some("now".into());
        o.failure = Some(after_failure(
            &o,
            inputs(&o),
            &transient(),
            &RetryPolicy::default(),
        ));
        o.now = at(62);
        assert_eq!(issues(&o), None);
    }

    #[test]
    fn retry_after_from_a_rate_limit_is_honoured() {
        let o = observed(4800);
        let limited = Failure {
            reason: Reason::RateLimited,
            message: "rate limited".into(),
            permanent: false,
            retry_after: Some(Duration::from_secs(90)),
        };
        let record = after_failure(&o, inputs(&o), &limited, &RetryPolicy::default());
        assert_eq!(record.next_retry, at(4890));
    }

    #[test]
    fn retry_times_are_whole_seconds_never_earlier_than_the_delay() {
        let mut o = observed(4800);
        o.now = at(4800) + SignedDuration::from_millis(300);
        let limited = Failure {
            reason: Reason::RateLimited,
            message: "rate limited".into(),
            permanent: false,
            retry_after: Some(Duration::from_secs(3)),
        };
        let policy = RetryPolicy {
            transient_initial: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let record = after_failure(&o, inputs(&o), &limited, &policy);
        assert_eq!(record.next_retry, at(4804));
    }

    #[test]
    fn a_failure_keeps_the_old_token_reported_as_valid_until_it_expires() {
        let mut o = observed(4800);
        o.failure = Some(after_failure(
            &o,
            inputs(&o),
            &transient(),
            &RetryPolicy::default(),
        ));
        o.now = at(4801);
        let Plan::Report { token, .. } = plan(&o) else {
            panic!("expected a report during backoff");
        };
        assert!(matches!(token, TokenHealth::Valid { current: true, .. }));
    }

    #[test]
    fn wakes_up_at_expiry_when_the_retry_is_later() {
        let mut o = observed(7100);
        let mut failure = after_failure(&o, inputs(&o), &permanent(), &RetryPolicy::default());
        failure.next_retry = at(9000);
        o.failure = Some(failure);
        assert!(matches!(plan(&o), Plan::Report { requeue_at: Some(t), .. } if t == at(7200)));
    }

    #[test]
    fn an_operator_restart_does_not_reissue_a_valid_token() {
        // A fresh process sees only what the cluster stores; with a valid, current token it
        // must plan nothing, whatever time within the token's fresh period it starts at.
        for now in [0, 1, 600, 3600, 4700] {
            assert_eq!(issues(&observed(now)), None, "at +{now}s");
        }
    }
}
