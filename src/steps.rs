//! The vocabulary between the planner and the controller: each [`Step`] the planner asks for,
//! and the [`Outcome`] the controller reports back after carrying it out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use secrecy::SecretString;

use crate::api::{DsccCredentialStatus, RolloutRestartTarget};
use crate::minter::Minted;
use crate::observe::{GroupKey, GroupToken};
use crate::reason::Failure;
use crate::schedule::RefreshBefore;
use crate::token::Grant;
use crate::verify::Verification;

/// One thing the reconcile does next.
#[derive(Debug)]
pub enum Step {
    /// GET the credential itself (its cache lags too long behind the operator's writes).
    ReadCredential,
    /// GET the client Secret.
    ReadClientSecret,
    /// GET the target Secret.
    ReadTarget,
    /// GET the refresh-token Secret.
    ReadRefreshSecret,
    /// GET the token-exchange subject's target Secret.
    ReadSubjectToken,
    /// GET a Secret this credential may own (a previous target).
    ReadSecret {
        /// Its name.
        name: String,
    },
    /// Join the token group and learn its latest token.
    ConsultGroup(GroupKey),
    /// Take an acceptable token the group holds, or request one.
    ObtainToken(Box<TokenOrder>),
    /// Probe the DSCC API with the new token.
    Verify {
        /// The API base URL.
        api_url: String,
        /// The new token.
        token: SecretString,
    },
    /// Write a Secret: the target, or the refresh-token Secret.
    WriteSecret(Box<SecretWrite>),
    /// Delete a Secret this credential owns.
    DeleteSecret {
        /// Its name.
        name: String,
        /// Precondition: its uid.
        uid: String,
        /// Precondition: its resourceVersion.
        resource_version: String,
    },
    /// Restart a workload for a new token.
    RestartWorkload {
        /// The workload.
        target: RolloutRestartTarget,
        /// The token's stamp.
        stamp: String,
    },
    /// Publish an Event about the credential.
    PublishEvent(EventNote),
    /// Write the status.
    WriteStatus(Box<DsccCredentialStatus>),
    /// Nothing more to do in this reconcile.
    Done(Finish),
}

/// What the controller reports after a step.
#[derive(Debug)]
pub enum Outcome {
    /// A GET: the object, `None` when it does not exist, or the failure.
    Read(Result<Option<Secret>, Failure>),
    /// The GET of the credential.
    Credential(Result<Option<Box<crate::api::DsccCredential>>, Failure>),
    /// The group's latest token.
    Group(Option<GroupToken>),
    /// How obtaining a token went.
    Token(TokenOutcome),
    /// What the DSCC API said.
    Verified(Result<Verification, Failure>),
    /// A Secret write: the Secret as stored, or why not.
    Written(Result<Secret, WriteError>),
    /// A deletion.
    Deleted(Result<(), Failure>),
    /// A workload restart.
    Restarted(Result<Restart, Failure>),
    /// An Event was published (or could not be: Events are best effort).
    Published,
    /// The status write: the new resourceVersion, or the failure.
    StatusWritten(Result<String, Failure>),
    /// Nothing was done: this replica no longer holds the leader-election Lease.
    NotLeader,
}

/// What obtaining a token came to.
#[derive(Debug)]
pub enum TokenOutcome {
    /// A token: `requested` when the endpoint was asked, else one the group held.
    Obtained {
        /// The token.
        token: Arc<Minted>,
        /// Whether a request was sent for it.
        requested: bool,
    },
    /// The order allowed no request and the group had nothing better.
    NothingAcceptable,
    /// The request failed; `invalid_grant` when the grant itself was refused.
    Failed {
        /// What happened.
        failure: Failure,
        /// Whether the endpoint answered `invalid_grant`.
        invalid_grant: bool,
    },
    /// The host is paused, rate-limited or busy, or another member's request for the same
    /// token is in flight: nothing was sent; ask again after this long.
    NotNow(Duration),
    /// This replica no longer holds the leader-election Lease: nothing was sent.
    NotLeader,
}

/// Why a Secret write failed.
#[derive(Debug)]
pub enum WriteError {
    /// A create found a Secret of that name.
    AlreadyExists,
    /// The Secret changed since it was read (the resourceVersion precondition failed).
    Conflict,
    /// Any other failure.
    Failed(Failure),
}

/// What a workload restart did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Its pod template was patched.
    Restarted,
    /// There is no such workload.
    NotFound,
}

/// An order for a token.
#[derive(Debug)]
pub struct TokenOrder {
    /// The group the token is for.
    pub key: GroupKey,
    /// What to send when nothing acceptable is held.
    pub grant: Grant,
    /// Which token the group holds would do instead.
    pub acceptance: Acceptance,
    /// Whether a request may be sent at all (false: only adopt a newer group token).
    pub may_request: bool,
    /// The current token expires before the end of a pause of its host: send anyway.
    pub urgent: bool,
}

/// Which token held by a group is acceptable to a credential.
#[derive(Clone, Debug)]
pub struct Acceptance {
    /// Only tokens issued no earlier than this (the credential's current token), if set.
    /// Issue times are whole seconds, so a token minted in the same second as the current
    /// one is acceptable; the minter tells the current token itself apart by its hash.
    pub issued_after: Option<Timestamp>,
    /// None at all (a manual refresh asks for a new token).
    pub none: bool,
    /// The credential's renewal policy: a token already due for renewal is not acceptable.
    pub refresh_before: RefreshBefore,
    /// Seed of the credential's jitter.
    pub jitter_uid: String,
    /// The floor under the renewal interval.
    pub min_interval: k8s_openapi::jiff::SignedDuration,
    /// The time of the decision.
    pub now: Timestamp,
}

impl Acceptance {
    /// Whether a token issued at `issued_at` and expiring at `expires_at` would do.
    pub fn accepts(&self, issued_at: Timestamp, expires_at: Timestamp) -> bool {
        if self.none || self.issued_after.is_some_and(|after| issued_at < after) {
            return false;
        }
        let renewal = crate::schedule::renewal_time(
            issued_at,
            expires_at,
            self.refresh_before,
            crate::schedule::jitter_seed(&self.jitter_uid, issued_at),
            self.min_interval,
        );
        renewal > self.now && expires_at > self.now
    }
}

/// Which of the credential's Secrets a write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The target Secret.
    Target,
    /// The refresh-token Secret.
    Refresh,
}

/// How a Secret is written, so that no one else's Secret is ever taken over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Create it; a Secret of that name appearing meanwhile makes it fail (AlreadyExists).
    Create,
    /// Update ours, only if it is still at this resourceVersion.
    Update {
        /// The precondition.
        resource_version: String,
    },
    /// Replace ours (its immutable type changed): delete it with these preconditions, then
    /// create it.
    Replace {
        /// Precondition: its uid.
        uid: String,
        /// Precondition: its resourceVersion.
        resource_version: String,
    },
}

/// A Secret to write. `Debug` shows the name and the keys, never the values.
pub struct SecretWrite {
    /// Which Secret.
    pub which: Written,
    /// The Secret as it should be.
    pub secret: Secret,
    /// How to write it.
    pub mode: WriteMode,
    /// For a target write: the one-way hash of the access token it stores.
    pub token_hash: Option<String>,
}

impl fmt::Debug for SecretWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&String> = self.secret.data.iter().flatten().map(|(k, _)| k).collect();
        f.debug_struct("SecretWrite")
            .field("which", &self.which)
            .field("name", &self.secret.metadata.name)
            .field("mode", &self.mode)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    /// Warning, or else Normal.
    pub warning: bool,
    /// The reason (CamelCase).
    pub reason: String,
    /// The message; never a secret.
    pub note: String,
}

/// How a reconcile ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// Look again at this time (`None`: at the resync interval, or on a change).
    At(Option<Timestamp>),
    /// The caches lag behind the operator's own writes: the watch brings the change soon.
    CacheLags,
    /// This replica is not the leader: stop.
    NotLeader,
    /// A Kubernetes API call failed; the controller's error policy backs off.
    ApiError(Failure),
}
