//! Status conditions: `Ready`, `Reconciling` and `Stalled`, following the kstatus conventions
//! that Flux, Argo CD and `kubectl wait` understand.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub use crate::observe::TokenHealth;
pub use crate::reason::Reason;

/// Condition type: the target Secret holds a valid token from the current spec and credentials.
pub const READY: &str = "Ready";
/// Condition type (kstatus): work is in progress, e.g. a retry is pending.
pub const RECONCILING: &str = "Reconciling";
/// Condition type (kstatus): progress needs a change by the user.
pub const STALLED: &str = "Stalled";

/// What the status should say, as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Situation {
    /// All is well (or a token is being requested: see [`describe`]).
    Ready,
    /// `spec.suspend` is set.
    Suspended,
    /// Something the user must fix; no request is made until it changes.
    Blocked {
        /// Why.
        reason: Reason,
        /// What to fix.
        message: String,
    },
    /// An action failed; the next attempt is due at `next_retry`.
    Failing {
        /// Why; it also says whether the failure is permanent.
        reason: Reason,
        /// What happened and what to fix.
        message: String,
        /// When the next attempt is due.
        next_retry: Timestamp,
    },
}

/// A condition before its bookkeeping fields are filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The condition type.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// Why.
    pub reason: Reason,
    /// For humans: what is going on and what to do.
    pub message: String,
}

fn desired(type_: &'static str, status: bool, reason: Reason, message: String) -> Desired {
    Desired {
        type_,
        status,
        reason,
        message,
    }
}

/// The conditions that describe `situation` with the token in `token`.
///
/// `Reconciling` and `Stalled` are only present while True, as kstatus recommends.
pub fn describe(situation: &Situation, token: TokenHealth) -> Vec<Desired> {
    let validity = match token {
        TokenHealth::Valid { expires_at, .. } => {
            format!("; the last token stays in place until it expires at {expires_at}")
        }
        TokenHealth::Expired { expired_at } => format!("; the last token expired at {expired_at}"),
        TokenHealth::None => String::new(),
    };
    let current_valid = match token {
        TokenHealth::Valid {
            expires_at,
            renewal,
            current: true,
        } => Some((expires_at, renewal)),
        _ => None,
    };
    match situation {
        Situation::Ready => match current_valid {
            Some((expires_at, renewal)) => vec![desired(
                READY,
                true,
                Reason::TokenIssued,
                format!("Token valid until {expires_at}, renewal at {renewal}"),
            )],
            // The planner issues in every other case; this only shows while it does.
            None => vec![
                desired(READY, false, Reason::Issuing, "Requesting a token".into()),
                desired(
                    RECONCILING,
                    true,
                    Reason::Issuing,
                    "Requesting a token".into(),
                ),
            ],
        },
        Situation::Suspended => match (current_valid, token) {
            (Some((expires_at, _)), _) => vec![desired(
                READY,
                true,
                Reason::Suspended,
                format!("Renewals are suspended; the token stays valid until {expires_at}"),
            )],
            (None, TokenHealth::Expired { expired_at }) => vec![desired(
                READY,
                false,
                Reason::TokenExpired,
                format!("The token expired at {expired_at} and renewals are suspended"),
            )],
            _ => vec![desired(
                READY,
                false,
                Reason::Suspended,
                format!("Renewals are suspended (spec.suspend){validity}"),
            )],
        },
        Situation::Blocked { reason, message } => vec![
            desired(READY, false, *reason, format!("{message}{validity}")),
            desired(STALLED, true, *reason, message.clone()),
        ],
        Situation::Failing {
            reason,
            message,
            next_retry,
        } => {
            let permanent = reason.is_permanent();
            let retry = format!("{message}; next attempt at {next_retry}");
            let progress = if permanent { STALLED } else { RECONCILING };
            let ready = match current_valid {
                // A failure of something after the token (a rollout restart) or a passing
                // failure of a renewal leaves a valid token in place: still Ready.
                Some((expires_at, _)) if !permanent || !reason.concerns_the_token() => desired(
                    READY,
                    true,
                    Reason::TokenIssued,
                    format!("Token valid until {expires_at}; renewal failed: {retry}"),
                ),
                _ => desired(READY, false, *reason, format!("{retry}{validity}")),
            };
            vec![ready, desired(progress, true, *reason, retry)]
        }
    }
}

/// Merges `desired` into `existing`: the result has exactly the desired conditions, and a
/// condition whose status did not change keeps its `lastTransitionTime`.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: i64,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_owned(),
                status: status.to_owned(),
                reason: d.reason.as_str().to_owned(),
                message: d.message.clone(),
                observed_generation: Some(generation),
                last_transition_time,
            }
        })
        .collect()
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn valid(current: bool) -> TokenHealth {
        TokenHealth::Valid {
            expires_at: at(7200),
            renewal: at(4800),
            current,
        }
    }

    fn failing(permanent: bool) -> Situation {
        Situation::Failing {
            reason: if permanent {
                Reason::InvalidClientCredentials
            } else {
                Reason::TokenEndpointUnavailable
            },
            message: "boom".into(),
            next_retry: at(100),
        }
    }

    fn types(conditions: &[Desired]) -> Vec<(&str, bool, Reason)> {
        conditions
            .iter()
            .map(|c| (c.type_, c.status, c.reason))
            .collect()
    }

    #[test]
    fn ready_with_a_current_valid_token() {
        let conditions = describe(&Situation::Ready, valid(true));
        assert_eq!(types(&conditions), [(READY, true, Reason::TokenIssued)]);
        assert!(conditions[0].message.contains("renewal at"));
    }

    #[test]
    fn a_transient_failure_with_a_valid_token_stays_ready_and_reconciling() {
        let conditions = describe(&failing(false), valid(true));
        assert_eq!(
            types(&conditions),
            [
                (READY, true, Reason::TokenIssued),
                (RECONCILING, true, Reason::TokenEndpointUnavailable)
            ]
        );
    }

    #[test]
    fn a_transient_failure_without_a_current_token_is_not_ready() {
        let conditions = describe(&failing(false), valid(false));
        assert_eq!(conditions[0].reason, Reason::TokenEndpointUnavailable);
        assert!(!conditions[0].status);
        assert!(conditions[0].message.contains("stays in place"));
    }

    #[test]
    fn a_permanent_failure_is_stalled_and_not_ready() {
        let conditions = describe(&failing(true), valid(true));
        assert_eq!(
            types(&conditions),
            [
                (READY, false, Reason::InvalidClientCredentials),
                (STALLED, true, Reason::InvalidClientCredentials)
            ]
        );
    }

    #[test]
    fn suspended_and_expired_reports_token_expired() {
        let expired = TokenHealth::Expired {
            expired_at: at(7200),
        };
        let conditions = describe(&Situation::Suspended, expired);
        assert_eq!(types(&conditions), [(READY, false, Reason::TokenExpired)]);
        let conditions = describe(&Situation::Suspended, valid(true));
        assert_eq!(types(&conditions), [(READY, true, Reason::Suspended)]);
    }

    #[test]
    fn blocked_is_stalled_with_the_same_reason() {
        let situation = Situation::Blocked {
            reason: Reason::ClientSecretNotFound,
            message: "client Secret x not found".into(),
        };
        assert_eq!(
            types(&describe(&situation, TokenHealth::None)),
            [
                (READY, false, Reason::ClientSecretNotFound),
                (STALLED, true, Reason::ClientSecretNotFound)
            ]
        );
    }

    #[test]
    fn merge_keeps_the_transition_time_when_the_status_does_not_change() {
        let first = merge(&[], &describe(&Situation::Ready, valid(true)), 1, at(0));
        let again = merge(&first, &describe(&Situation::Ready, valid(true)), 2, at(50));
        assert_eq!(again[0].last_transition_time, Time(at(0)));
        assert_eq!(again[0].observed_generation, Some(2));
    }

    #[test]
    fn merge_moves_the_transition_time_when_the_status_changes() {
        let first = merge(&[], &describe(&Situation::Ready, valid(true)), 1, at(0));
        let failed = merge(&first, &describe(&failing(true), valid(true)), 1, at(50));
        assert_eq!(failed[0].last_transition_time, Time(at(50)));
        assert_eq!(failed[1].type_, STALLED);
        let recovered = merge(
            &failed,
            &describe(&Situation::Ready, valid(true)),
            1,
            at(90),
        );
        assert_eq!(
            recovered.len(),
            1,
            "Stalled disappears once it is no longer true"
        );
        assert_eq!(recovered[0].last_transition_time, Time(at(90)));
    }

    #[test]
    fn a_failed_rollout_restart_keeps_a_valid_token_ready() {
        let situation = Situation::Failing {
            reason: Reason::RolloutRestartFailed,
            message: "could not restart Deployment reporter".into(),
            next_retry: at(700),
        };
        assert_eq!(
            types(&describe(&situation, valid(true))),
            [
                (READY, true, Reason::TokenIssued),
                (RECONCILING, true, Reason::RolloutRestartFailed)
            ]
        );
    }
}
