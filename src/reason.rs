//! Why a credential is (not) ready, and how each kind of failure is retried: the one
//! classification every boundary (token client, verify probe, Secret writer, rollout step,
//! the observation of the spec and Secrets) produces and the status stores.

use std::fmt;
use std::time::Duration;

/// How a reason is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Not a failure.
    None,
    /// Nothing can succeed until the user changes the credential or one of its Secrets;
    /// the operator acts on that change (and looks again at the resync interval).
    OnChange,
    /// The user has to fix something outside the cluster objects the operator watches (the
    /// client at the identity provider, an admission policy, a quota): retried slowly
    /// (`--permanent-retry-delay`, doubling), and at once when the spec or the client
    /// credentials change.
    Slow,
    /// A passing problem (network, an overloaded server): exponential backoff with jitter.
    Backoff,
}

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $retry:ident,)*) => {
        /// Why a condition has its status.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $name,)*
        }

        impl Reason {
            /// Every reason, for metrics and documentation.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The CamelCase name used in conditions, Events and metrics.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }

            /// How a failure with this reason is retried.
            pub fn retry(self) -> Retry {
                match self {
                    $(Reason::$name => Retry::$retry,)*
                }
            }
        }
    };
}

reasons! {
    /// A valid token is in place.
    TokenIssued => None,
    /// A token request is in progress.
    Issuing => None,
    /// Renewals are suspended.
    Suspended => None,
    /// The token expired while renewals were suspended.
    TokenExpired => None,
    /// The client Secret does not exist.
    ClientSecretNotFound => OnChange,
    /// The client Secret lacks a key, or it is empty.
    ClientSecretKeyMissing => OnChange,
    /// The target Secret (or the refresh-token Secret) exists and belongs to someone else.
    TargetSecretConflict => OnChange,
    /// The spec cannot be acted on (for example a plain http URL without the development flag).
    InvalidSpec => OnChange,
    /// The token exchange's subject credential has no valid token.
    SubjectNotReady => OnChange,
    /// The token endpoint rejected the client credentials or the request.
    InvalidClientCredentials => Slow,
    /// The token endpoint issued a token that cannot be used as a bearer token.
    UnsupportedTokenType => Slow,
    /// The DSCC API rejected the new token (HTTP 401).
    VerifyFailed => Slow,
    /// The API server refused to store the target Secret (quota, admission, validation).
    /// Retried with backoff: the fix (a quota, an admission policy) is outside what the
    /// operator watches, and a retry writes the token already held instead of requesting one.
    TargetSecretRejected => Backoff,
    /// A workload of spec.rolloutRestartTargets does not exist.
    RolloutRestartTargetNotFound => Slow,
    /// A workload of spec.rolloutRestartTargets could not be restarted (retried with backoff:
    /// a missing right or a passing API problem alike, up to the backoff's cap).
    RolloutRestartFailed => Backoff,
    /// The token endpoint could not be reached, failed or sent an unusable answer.
    TokenEndpointUnavailable => Backoff,
    /// The token endpoint answered 429.
    RateLimited => Backoff,
    /// The DSCC API could not be asked about the new token.
    VerifyUnavailable => Backoff,
    /// A write to the Kubernetes API failed for a passing reason (unavailable, timeout,
    /// conflict with a concurrent change).
    KubernetesApiUnavailable => Backoff,
}

impl Reason {
    /// Parses a name written by [`Reason::as_str`].
    pub fn parse(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == name)
    }

    /// Whether retrying soon cannot help: the user has to change something.
    pub fn is_permanent(self) -> bool {
        matches!(self.retry(), Retry::Slow | Retry::OnChange)
    }

    /// What failed, in words for a log line.
    pub fn action(self) -> &'static str {
        match self {
            Reason::VerifyFailed | Reason::VerifyUnavailable => "verifying the new token",
            Reason::TargetSecretRejected | Reason::KubernetesApiUnavailable => "storing the token",
            Reason::RolloutRestartFailed | Reason::RolloutRestartTargetNotFound => {
                "the rollout restart"
            }
            _ => "the token request",
        }
    }

    /// Whether a failure with this reason means no new token could be put in place (rather
    /// than a failure of something done after it, such as a rollout restart).
    pub fn concerns_the_token(self) -> bool {
        !matches!(
            self,
            Reason::RolloutRestartFailed | Reason::RolloutRestartTargetNotFound
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed action, as every boundary reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// What kind of failure it is; this also says how it is retried.
    pub reason: Reason,
    /// What happened and what to fix; never a secret.
    pub message: String,
    /// How long the server asked the operator to wait, if it did.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure without a server-given wait.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Classifies a failed write to the Kubernetes API: what the API server refuses for good
    /// (validation, admission, quota, RBAC) is `refused`; the rest is passing.
    pub fn from_kube(error: &kube::Error, refused: Reason, what: &str) -> Self {
        match error {
            kube::Error::Api(status) => {
                let message = format!(
                    "{what}: the API server answered {} {}: {}",
                    status.code, status.reason, status.message
                );
                let reason = match status.code {
                    400 | 403 | 404 | 405 | 413 | 415 | 422 => refused,
                    _ => Reason::KubernetesApiUnavailable,
                };
                Failure::new(reason, message)
            }
            other => Failure::new(Reason::KubernetesApiUnavailable, format!("{what}: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_names() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
    }

    #[test]
    fn each_failure_kind_has_one_retry_class() {
        use Reason::*;
        let table = [
            (InvalidClientCredentials, Retry::Slow),
            (VerifyFailed, Retry::Slow),
            (VerifyUnavailable, Retry::Backoff),
            (TargetSecretRejected, Retry::Backoff),
            (KubernetesApiUnavailable, Retry::Backoff),
            (TokenEndpointUnavailable, Retry::Backoff),
            (RateLimited, Retry::Backoff),
            (ClientSecretNotFound, Retry::OnChange),
            (TargetSecretConflict, Retry::OnChange),
            (TokenIssued, Retry::None),
        ];
        for (reason, retry) in table {
            assert_eq!(reason.retry(), retry, "{reason}");
        }
        assert!(VerifyFailed.is_permanent() && !VerifyUnavailable.is_permanent());
    }

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: "denied".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn refused_writes_are_told_from_passing_api_trouble() {
        for (code, expected) in [
            (422, Reason::TargetSecretRejected),
            (403, Reason::TargetSecretRejected),
            (400, Reason::TargetSecretRejected),
            (409, Reason::KubernetesApiUnavailable),
            (429, Reason::KubernetesApiUnavailable),
            (500, Reason::KubernetesApiUnavailable),
            (503, Reason::KubernetesApiUnavailable),
        ] {
            let failure = Failure::from_kube(
                &api_error(code, "Whatever"),
                Reason::TargetSecretRejected,
                "writing Secret storage/x",
            );
            assert_eq!(failure.reason, expected, "HTTP {code}");
            assert!(
                failure
                    .message
                    .starts_with("writing Secret storage/x: the API server answered")
            );
        }
    }
}
