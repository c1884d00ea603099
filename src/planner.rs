//! The decision. Given an [`Observed`] it names the next [`Step`] of the reconcile, and after
//! each step it takes the [`Outcome`] back ([`Reconcile::record`]): every answer, refused
//! write and failure passes through here, so none can make the operator act sooner than its
//! backoff allows.
//!
//! Nothing here does I/O. Because the inputs come from the cluster (the target Secret's
//! bookkeeping and the credential's status) an operator restart reaches the same decision and
//! never re-issues a valid token.
//!
//! A reconcile runs in this order; each part asks for the reads it needs first:
//! 1. observe: complete the observation (GET the client or target Secret when the caches
//!    cannot vouch for them, consult the token group);
//! 2. decide ([`decide`]): blocked, suspended, failing (waiting for a retry), ready, or issue;
//! 3. issue: obtain a token (from the group or the endpoint), verify it, write the target
//!    Secret (create, or update at the observed resourceVersion), keep a refresh token;
//! 4. housekeeping for a good token: delete a previous target, restart workloads once per
//!    token;
//! 5. report: Events, the status (only when it changed), and when to look again.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};

use crate::api::{RolloutRestartRecord, RolloutRestartTarget};
use crate::conditions::{self, Situation};
use crate::observe::{
    self, ClientState, FailureRecord, GroupState, Memo, Observed, OwnedTarget, RefreshState,
    SubjectToken, TargetState, TokenHealth,
};
use crate::reason::{Failure, Reason};
use crate::status::{self, StatusInputs};
use crate::steps::{
    Acceptance, EventNote, Finish, Outcome, Restart, SecretWrite, Step, TokenOrder, TokenOutcome,
    WriteError, WriteMode, Written,
};
use crate::target_secret::{self, NewToken, TokenRecord};
use crate::token::{Grant, GrantKind};
use crate::verify::Verification;

/// How long a reconcile waits for a lagging watch before it reads the object itself.
const LAG_PATIENCE: SignedDuration = SignedDuration::from_secs(2);
/// More steps than any reconcile needs: a bug, stopped rather than looped.
const MAX_STEPS: u32 = 64;
/// Bookkeeping that claims a token issued further in the future than this is an edit.
const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(300);

/// Why a new token is requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// The credential never had a token.
    FirstToken,
    /// The token is inside its renewal window.
    RenewalDue,
    /// The token has expired.
    Expired,
    /// A spec field the token or its Secret is made from changed.
    SpecChanged,
    /// The client id or secret changed.
    ClientSecretChanged,
    /// The token-exchange subject has a new token.
    SubjectTokenChanged,
    /// The target Secret is gone.
    TargetMissing,
    /// The target Secret's token data or bookkeeping was changed by someone else.
    TargetEdited,
    /// The manual refresh annotation has a new value.
    RefreshRequested,
    /// Another credential of the token group obtained a newer token.
    GroupTokenNewer,
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
            IssueReason::SubjectTokenChanged => "the token-exchange subject has a new token",
            IssueReason::TargetMissing => "the target Secret is missing",
            IssueReason::TargetEdited => "the target Secret was edited",
            IssueReason::RefreshRequested => "a refresh was requested",
            IssueReason::GroupTokenNewer => "its token group has a newer token",
            IssueReason::Retry => "retrying after a failure",
        })
    }
}

/// The decision once the observation is complete.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Something the user must fix; nothing is requested until it changes.
    Blocked {
        /// Why.
        reason: Reason,
        /// What to fix.
        message: String,
    },
    /// `spec.suspend`.
    Suspended,
    /// A failed attempt waits for its retry time.
    Failing(FailureRecord),
    /// Nothing to request.
    Ready,
    /// Get a new token.
    Issue(IssueReason),
}

/// The decision for a complete observation (every fact known; the group consulted if it is
/// to be).
pub fn decide(o: &Observed) -> Decision {
    if let Some(problem) = &o.spec.problem {
        return blocked(Reason::InvalidSpec, problem.clone());
    }
    if o.credential.spec.suspend {
        return Decision::Suspended;
    }
    if let TargetState::Foreign { name } = &o.target {
        return blocked(
            Reason::TargetSecretConflict,
            format!(
                "Secret {name} already exists and is not controlled by this DsccCredential; \
                 delete or rename it, or set spec.target.name to another name"
            ),
        );
    }
    if let RefreshState::Foreign = o.refresh {
        return blocked(
            Reason::TargetSecretConflict,
            format!(
                "Secret {} (where this DsccCredential keeps its refresh token) already exists \
                 and is not controlled by it; delete or rename that Secret",
                o.spec.refresh_secret_name
            ),
        );
    }
    match &o.client {
        ClientState::Missing { name } => {
            return blocked(
                Reason::ClientSecretNotFound,
                format!(
                    "client Secret {name} not found; create it with the keys of spec.clientSecretRef"
                ),
            );
        }
        ClientState::KeyMissing { name, key } => {
            return blocked(
                Reason::ClientSecretKeyMissing,
                format!(
                    "client Secret {name} has no key {key} (or it is empty); add it or change \
                     spec.clientSecretRef"
                ),
            );
        }
        _ => {}
    }
    let Some(wanted) = issue_reason(o) else {
        return Decision::Ready;
    };
    if let Some(subject) = &o.subject {
        let why = match &subject.token {
            SubjectToken::NoSuchCredential => Some(format!(
                "the token-exchange subject DsccCredential {} does not exist in this namespace; \
                 create it or fix spec.tokenExchange.subjectCredentialRef",
                subject.name
            )),
            SubjectToken::NotReady(why) => Some(format!(
                "the token-exchange subject DsccCredential {} has no valid token ({why}); this \
                 credential gets its token once it has",
                subject.name
            )),
            SubjectToken::Ready { .. } => None,
        };
        if let Some(message) = why {
            return blocked(Reason::SubjectNotReady, message);
        }
    }
    match &o.failure {
        Some(failure)
            if failure.reason.concerns_the_token() && wanted != IssueReason::GroupTokenNewer =>
        {
            let inputs_changed = failure.inputs != o.attempt_inputs();
            let server_hold = failure.not_before.is_some_and(|t| o.now < t);
            if server_hold || (!inputs_changed && o.now < failure.next_retry) {
                Decision::Failing(failure.clone())
            } else if inputs_changed {
                Decision::Issue(wanted)
            } else {
                Decision::Issue(IssueReason::Retry)
            }
        }
        _ => Decision::Issue(wanted),
    }
}

fn blocked(reason: Reason, message: String) -> Decision {
    Decision::Blocked { reason, message }
}

/// Why a token is wanted now, or `None` while the current one is good.
fn issue_reason(o: &Observed) -> Option<IssueReason> {
    let ever_issued = o.status().is_some_and(|s| s.issued_at.is_some());
    let record = match &o.target {
        TargetState::Missing if ever_issued => return Some(IssueReason::TargetMissing),
        TargetState::Missing => return Some(IssueReason::FirstToken),
        TargetState::Unknown | TargetState::Unverified | TargetState::Foreign { .. } => {
            return None;
        }
        TargetState::Owned(OwnedTarget { record: None, .. }) => {
            return Some(IssueReason::TargetEdited);
        }
        TargetState::Owned(OwnedTarget {
            record: Some(record),
            ..
        }) => record,
    };
    let fingerprint = match &o.client {
        ClientState::NotNeeded => "",
        ClientState::Present { fingerprint, .. } => fingerprint.as_str(),
        _ => return None,
    };
    let subject_hash = o.subject.as_ref().and_then(|s| s.hash());
    let future = o.now.checked_add(MAX_CLOCK_SKEW).unwrap_or(Timestamp::MAX);
    let floor = record
        .issued_at
        .checked_add(o.policy.min_renewal_interval)
        .unwrap_or(record.issued_at);
    if record.issued_at > future {
        Some(IssueReason::TargetEdited)
    } else if record.spec_hash != o.spec.spec_hash {
        Some(IssueReason::SpecChanged)
    } else if record.credentials_fingerprint != fingerprint {
        Some(IssueReason::ClientSecretChanged)
    } else if subject_hash.is_some_and(|hash| record.subject_token_hash.as_deref() != Some(hash)) {
        Some(IssueReason::SubjectTokenChanged)
    } else if o.spec.refresh_requested_at.is_some()
        && o.spec.refresh_requested_at != record.refresh_requested_at
    {
        Some(IssueReason::RefreshRequested)
    } else if o.now < floor {
        // No renewal sooner than the floor after issue, expired or not: an endpoint that
        // issues tokens of a few seconds cannot make the operator ask in a loop.
        None
    } else if o.now >= record.expires_at {
        Some(IssueReason::Expired)
    } else if o.now >= o.renewal_of(record.issued_at, record.expires_at) {
        Some(IssueReason::RenewalDue)
    } else if group_has_newer(o, record) {
        Some(IssueReason::GroupTokenNewer)
    } else {
        None
    }
}

fn group_has_newer(o: &Observed, record: &TokenRecord) -> bool {
    match &o.group {
        GroupState::Consulted(Some(group)) => {
            (group.issued_at > record.issued_at
                || (group.issued_at == record.issued_at && !group.stored_by_member))
                && acceptance(o, None, false).accepts(group.issued_at, group.expires_at)
        }
        _ => false,
    }
}

fn acceptance(o: &Observed, issued_after: Option<Timestamp>, none: bool) -> Acceptance {
    Acceptance {
        issued_after,
        none,
        refresh_before: o.spec.refresh_before,
        jitter_uid: o.spec.jitter_uid.clone(),
        min_interval: o.policy.min_renewal_interval,
        now: o.now,
    }
}

/// What this reconcile has done so far.
#[derive(Debug, Default)]
struct Progress {
    steps: u32,
    /// Why the token of this reconcile was obtained.
    issue_reason: Option<IssueReason>,
    /// The token obtained in this reconcile.
    token: Option<std::sync::Arc<crate::minter::Minted>>,
    /// Whether the endpoint was asked for it.
    requested: bool,
    /// The grant of the last request.
    grant: Option<&'static str>,
    /// The refresh token was refused (invalid_grant): use client credentials.
    refresh_rejected: bool,
    obtain_attempts: u8,
    /// What verify said, once it ran (or was not needed).
    verification: Option<Option<Verification>>,
    target_writes: u8,
    /// The target Secret now holds the new token.
    written: bool,
    refresh_written: bool,
    /// A failure of an action in this reconcile (already recorded into the observation).
    failed: bool,
    /// Previous target: read and deleted (or found not ours).
    stale_read: Option<Option<Secret>>,
    stale_done: bool,
    /// Workloads restarted (or attempted) in this reconcile.
    restarts: Vec<(RolloutRestartTarget, String)>,
    restart_records: Option<Vec<RolloutRestartRecord>>,
    /// Remarks for the Ready message.
    notes: Vec<String>,
    /// Events to publish, and how many are out.
    events: Vec<EventNote>,
    published: usize,
    /// The status was written (or found unchanged), with the new resourceVersion.
    status_done: bool,
    /// The status written.
    status: Option<crate::api::DsccCredentialStatus>,
    /// The target Secret resourceVersion written, for the memo.
    target_version: Option<String>,
    status_version: Option<String>,
    /// A reconcile that ends early.
    finish: Option<Finish>,
    /// A read of the client Secret has been made in this reconcile.
    client_read: bool,
    target_read: u8,
}

/// One reconcile: the observation, and what has been done so far.
#[derive(Debug)]
pub struct Reconcile {
    /// What the decisions are made from; outcomes update it.
    pub observed: Observed,
    progress: Progress,
}

impl Reconcile {
    /// Starts a reconcile of `observed`.
    pub fn new(observed: Observed) -> Self {
        Self {
            observed,
            progress: Progress::default(),
        }
    }

    /// The status as it is after this reconcile.
    pub fn status(&self) -> Option<&crate::api::DsccCredentialStatus> {
        self.progress.status.as_ref().or(self.observed.status())
    }

    /// What the operator should remember after a reconcile that found the caches behind: only
    /// since when they lag (it decided nothing else).
    pub fn memo_after_lag(&self, before: Option<&Memo>) -> Memo {
        let mut memo = before.cloned().unwrap_or_default();
        memo.lag_since.get_or_insert(self.observed.now);
        memo
    }

    /// What the operator should remember of this reconcile's writes (see `own_writes`).
    pub fn memo(&self, before: Option<&Memo>) -> Memo {
        let mut memo = before.cloned().unwrap_or_default();
        memo.lag_since = None;
        if let Some(version) = &self.progress.status_version {
            memo.status_version = Some(version.clone());
        }
        if let Some(version) = &self.progress.target_version {
            memo.target = Some((self.observed.spec.target_name.clone(), version.clone()));
        }
        memo.failure = self.kept_failure().cloned();
        memo.decided_at = Some(self.observed.now);
        memo
    }

    /// The next step.
    pub fn next_step(&self) -> Step {
        let o = &self.observed;
        let p = &self.progress;
        if let Some(finish) = &p.finish {
            return Step::Done(finish.clone());
        }
        if p.steps >= MAX_STEPS {
            return Step::Done(Finish::ApiError(Failure::new(
                Reason::KubernetesApiUnavailable,
                "the reconcile took more steps than any should; stopped (a bug: please report it)",
            )));
        }
        // The caches lag behind this operator's own writes: the watch event is on its way, so
        // wait for it; when it takes longer than LAG_PATIENCE, read the lagging object live.
        if o.lag.any() {
            let patient = o
                .lag
                .since
                .is_none_or(|since| o.now.duration_since(since) < LAG_PATIENCE);
            return if patient {
                Step::Done(Finish::CacheLags)
            } else if o.lag.credential {
                Step::ReadCredential
            } else {
                Step::ReadTarget
            };
        }
        if o.spec.deleting {
            // The target Secret is garbage-collected through its owner reference.
            return Step::Done(Finish::At(None));
        }
        if let Some(step) = self.missing_fact() {
            return step;
        }
        if let Decision::Issue(reason) = decide(o)
            && !p.failed
            && !p.written
            && let Some(step) = self.issue_step(reason)
        {
            return step;
        }
        if let Some(step) = self.housekeeping_step() {
            return step;
        }
        self.report_step()
    }

    /// The read or lookup the decision still needs, if any.
    fn missing_fact(&self) -> Option<Step> {
        let o = &self.observed;
        let p = &self.progress;
        let target_unknown = matches!(o.target, TargetState::Unknown | TargetState::Unverified);
        if o.spec.problem.is_some() || (o.credential.spec.suspend && !target_unknown) {
            return None;
        }
        if target_unknown && p.target_read < 3 {
            return Some(Step::ReadTarget);
        }
        if let ClientState::Unknown { .. } = o.client
            && !o.credential.spec.suspend
        {
            return Some(Step::ReadClientSecret);
        }
        // A change of the Secret's (immutable) type needs its current type to write it.
        if let TargetState::Owned(OwnedTarget {
            secret_type: None,
            record: Some(record),
            ..
        }) = &o.target
            && record.spec_hash != o.spec.spec_hash
            && p.target_read < 3
        {
            return Some(Step::ReadTarget);
        }
        if o.policy.share_tokens
            && o.group == GroupState::NotConsulted
            && !p.written
            && let Some(key) = o.group_key()
        {
            let preliminary = decide(o);
            if !matches!(preliminary, Decision::Blocked { .. } | Decision::Suspended) {
                return Some(Step::ConsultGroup(key));
            }
        }
        None
    }

    /// The next step of getting and storing a new token, or `None` when that is over.
    fn issue_step(&self, reason: IssueReason) -> Option<Step> {
        let o = &self.observed;
        let p = &self.progress;
        let Some(token) = &p.token else {
            return self.obtain_step(reason);
        };
        if p.verification.is_none()
            && let (true, Some(api_url)) =
                (o.credential.spec.verify, o.credential.spec.dscc_api_url())
        {
            return Some(Step::Verify {
                api_url: api_url.to_owned(),
                token: token.token.access_token.clone(),
            });
        }
        if !p.written && p.target_writes < 3 {
            return Some(Step::WriteSecret(Box::new(self.target_write(token))));
        }
        None
    }

    fn obtain_step(&self, reason: IssueReason) -> Option<Step> {
        let o = &self.observed;
        let p = &self.progress;
        if p.obtain_attempts >= 2 {
            return None;
        }
        let url = o.spec.token_url.clone()?;
        let key = o.group_key()?;
        // The credentials are needed to send anything but an exchange by subject token alone.
        let credentials = match &o.client {
            ClientState::NotNeeded => None,
            ClientState::Present {
                credentials: Some(credentials),
                ..
            } => Some(credentials.clone()),
            ClientState::Present {
                credentials: None, ..
            } if !p.client_read => {
                return Some(Step::ReadClientSecret);
            }
            _ => return None,
        };
        let spec = &o.credential.spec;
        let current = o.record().filter(|r| o.is_current(r));
        let kind = if let Some(exchange) = &spec.token_exchange {
            match o.subject.as_ref().map(|s| &s.token) {
                Some(SubjectToken::Ready {
                    value: Some(token), ..
                }) => GrantKind::TokenExchange {
                    subject_token: token.clone(),
                    audience: exchange.audience.clone(),
                },
                Some(SubjectToken::Ready { value: None, .. }) => {
                    return Some(Step::ReadSubjectToken);
                }
                _ => return None,
            }
        } else {
            match (&o.refresh, current) {
                // Read only when it could be used: a current token to renew.
                (RefreshState::Unknown, Some(_))
                    if !p.refresh_rejected && credentials.is_some() =>
                {
                    return Some(Step::ReadRefreshSecret);
                }
                (
                    RefreshState::Held {
                        value,
                        for_token,
                        expires_at,
                        ..
                    },
                    Some(record),
                ) if !p.refresh_rejected
                    && credentials.is_some()
                    && for_token.as_deref() == Some(record.token_hash.as_str())
                    && expires_at.is_none_or(|t| t > o.now) =>
                {
                    match value {
                        Some(token) => GrantKind::RefreshToken(token.clone()),
                        None => return Some(Step::ReadRefreshSecret),
                    }
                }
                _ => GrantKind::ClientCredentials,
            }
        };
        // A manual refresh asks for a new token; anything else (a Secret deleted, edited or
        // moved, a new member of the group) is served by a valid token the group holds.
        let none_acceptable = reason == IssueReason::RefreshRequested;
        let issued_after = current.map(|r| r.issued_at);
        let urgent = current.is_some_and(|r| {
            let margin =
                SignedDuration::from_secs(60).min(r.expires_at.duration_since(r.issued_at) / 10);
            o.now.checked_add(margin).is_ok_and(|t| t >= r.expires_at)
        });
        Some(Step::ObtainToken(Box::new(TokenOrder {
            key,
            grant: Grant {
                token_url: url,
                credentials,
                auth_method: spec.auth_method,
                scopes: spec.scopes.clone(),
                kind,
            },
            acceptance: acceptance(o, issued_after, none_acceptable),
            may_request: reason != IssueReason::GroupTokenNewer,
            urgent,
        })))
    }

    fn target_write(&self, token: &crate::minter::Minted) -> SecretWrite {
        let o = &self.observed;
        let p = &self.progress;
        let fingerprint = o.client.fingerprint().unwrap_or_default();
        let subject_hash = o.subject.as_ref().and_then(|s| s.hash());
        let issued = &token.token;
        let secret = target_secret::build(
            &o.credential,
            &NewToken {
                access_token: &issued.access_token,
                token_type: &issued.token_type,
                issued_at: issued.issued_at,
                expires_at: issued.expires_at,
                credentials_fingerprint: fingerprint,
                refresh_answered: o.spec.refresh_requested_at.as_deref(),
                verification: p.verification.flatten(),
                grant: token.grant,
                subject_token_hash: subject_hash,
            },
        );
        let wanted_type = secret.type_.clone();
        let mode = match &o.target {
            TargetState::Owned(owned)
                if owned.secret_type.is_some() && owned.secret_type != wanted_type =>
            {
                WriteMode::Replace {
                    uid: owned.uid.clone(),
                    resource_version: owned.resource_version.clone(),
                }
            }
            TargetState::Owned(owned) => WriteMode::Update {
                resource_version: owned.resource_version.clone(),
            },
            _ => WriteMode::Create,
        };
        SecretWrite {
            which: Written::Target,
            secret,
            mode,
            token_hash: Some(token.token_hash.clone()),
        }
    }

    /// Deleting a previous target, restarting workloads, keeping a refresh token.
    fn housekeeping_step(&self) -> Option<Step> {
        let o = &self.observed;
        let p = &self.progress;
        let TokenHealth::Valid { current: true, .. } = o.token_health() else {
            return None;
        };
        let record = o.record()?;
        if matches!(decide(o), Decision::Blocked { .. } | Decision::Suspended) {
            return None;
        }
        // The refresh token that came with a new token.
        if p.written
            && !p.refresh_written
            && let Some(token) = &p.token
            && let Some(refresh) = &token.token.refresh_token
        {
            let secret = target_secret::build_refresh(
                &o.credential,
                refresh,
                token.token.refresh_expires_at,
                &record.token_hash,
            );
            let mode = match &o.refresh {
                RefreshState::Held {
                    resource_version, ..
                } => WriteMode::Update {
                    resource_version: resource_version.clone(),
                },
                _ => WriteMode::Create,
            };
            return Some(Step::WriteSecret(Box::new(SecretWrite {
                which: Written::Refresh,
                secret,
                mode,
                token_hash: None,
            })));
        }
        // A previous target, named by the status, that this credential owns.
        if let Some(previous) = o.status().and_then(|s| s.secret_name.clone())
            && previous != o.spec.target_name
            && !p.stale_done
        {
            match &p.stale_read {
                None => return Some(Step::ReadSecret { name: previous }),
                Some(Some(secret)) if target_secret::is_controlled_by(secret, &o.credential) => {
                    return Some(Step::DeleteSecret {
                        name: previous,
                        uid: secret.metadata.uid.clone().unwrap_or_default(),
                        resource_version: secret
                            .metadata
                            .resource_version
                            .clone()
                            .unwrap_or_default(),
                    });
                }
                Some(_) => {}
            }
        }
        // Workloads restarted once per token: the status remembers which token each was
        // restarted for, so a revert of the annotation by a GitOps tool restarts nothing.
        let rollout_held = o
            .failure
            .as_ref()
            .is_some_and(|f| !f.reason.concerns_the_token() && o.now < f.next_retry && !p.written);
        if rollout_held {
            return None;
        }
        let stamp = crate::rollout::stamp(record);
        let records = self.restart_records();
        for target in &o.credential.spec.rollout_restart_targets {
            let done = records
                .iter()
                .any(|r| r.kind == target.kind && r.name == target.name && r.token == stamp);
            let attempted = p.restarts.iter().any(|(t, _)| t == target);
            if !done && !attempted {
                return Some(Step::RestartWorkload {
                    target: target.clone(),
                    stamp,
                });
            }
        }
        None
    }

    fn restart_records(&self) -> Vec<RolloutRestartRecord> {
        let o = &self.observed;
        match &self.progress.restart_records {
            Some(records) => records.clone(),
            None => o
                .status()
                .map(|s| s.rollout_restarts.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|r| {
                    o.credential
                        .spec
                        .rollout_restart_targets
                        .iter()
                        .any(|t| t.kind == r.kind && t.name == r.name)
                })
                .collect(),
        }
    }

    /// Events, then the status, then the end.
    fn report_step(&self) -> Step {
        let o = &self.observed;
        let p = &self.progress;
        let mut events = p.events.clone();
        let (situation, token) = self.situation();
        if let Some(event) = transition_event(o, &situation) {
            events.push(event);
        }
        if p.published < events.len() {
            return Step::PublishEvent(events[p.published].clone());
        }
        if !p.status_done {
            let next = self.next_status(&situation, token);
            if o.status() != Some(&next) {
                return Step::WriteStatus(Box::new(next));
            }
        }
        Step::Done(Finish::At(self.requeue_at(&situation, token)))
    }

    /// What the status should say, and the token it is about.
    fn situation(&self) -> (Situation, TokenHealth) {
        let o = &self.observed;
        let p = &self.progress;
        let token = o.token_health();
        let failing = |failure: &FailureRecord| Situation::Failing {
            reason: failure.reason,
            message: failure.message.clone(),
            next_retry: failure.next_retry,
        };
        let situation = match decide(o) {
            Decision::Blocked { reason, message } => Situation::Blocked { reason, message },
            Decision::Suspended => Situation::Suspended,
            Decision::Failing(failure) => failing(&failure),
            // The issue phase ended without a new token (its failure is recorded).
            Decision::Issue(_) => match &o.failure {
                Some(failure) if p.failed => failing(failure),
                _ => Situation::Ready,
            },
            // Ready: a failure of what follows the token (a restart) is still reported.
            Decision::Ready => match &o.failure {
                Some(failure) if !failure.reason.concerns_the_token() => failing(failure),
                _ => Situation::Ready,
            },
        };
        (situation, token)
    }

    /// The failure bookkeeping to keep: none once the credential is Ready with a good token
    /// (a failure recorded before is over), else the observed one.
    fn kept_failure(&self) -> Option<&FailureRecord> {
        let (situation, _) = self.situation();
        self.observed
            .failure
            .as_ref()
            .filter(|_| !matches!(situation, Situation::Ready))
    }

    fn next_status(
        &self,
        situation: &Situation,
        token: TokenHealth,
    ) -> crate::api::DsccCredentialStatus {
        let o = &self.observed;
        let record = o.record();
        let group = o.group_key().filter(|_| o.policy.share_tokens);
        let mut notes = self.progress.notes.clone();
        if let Some(record) = record {
            let lifetime = record.expires_at.duration_since(record.issued_at);
            if lifetime < o.policy.min_renewal_interval {
                notes.push(format!(
                    "the endpoint issues tokens that live only {}s, less than the operator's \
                     --min-renewal-interval ({}s): each is renewed only after that",
                    lifetime.as_secs(),
                    o.policy.min_renewal_interval.as_secs()
                ));
            }
        }
        status::next(&StatusInputs {
            current: o.status(),
            generation: o.spec.generation,
            secret_name: &o.spec.target_name,
            record,
            failure: self.kept_failure(),
            situation,
            token,
            now: o.now,
            notes: &notes,
            token_group: group.as_ref().map(|g| g.id()),
            rollout_restarts: &self.restart_records(),
        })
    }

    fn requeue_at(&self, situation: &Situation, token: TokenHealth) -> Option<Timestamp> {
        let o = &self.observed;
        let mut at: Vec<Timestamp> = vec![];
        if let TokenHealth::Valid {
            expires_at,
            renewal,
            ..
        } = token
        {
            at.push(expires_at);
            if matches!(situation, Situation::Ready) {
                at.push(renewal);
            }
        }
        // An expired token (one that lived less than the renewal floor) is renewed at the floor.
        if let (TokenHealth::Expired { .. }, Some(record)) = (token, o.record()) {
            at.push(o.renewal_of(record.issued_at, record.expires_at));
        }
        if let Situation::Failing { next_retry, .. } = situation {
            at.push(*next_retry);
            if let Some(not_before) = o.failure.as_ref().and_then(|f| f.not_before) {
                at.push(not_before);
            }
        }
        at.into_iter()
            .filter(|t| *t > o.now || matches!(situation, Situation::Ready))
            .min()
    }

    /// Takes the outcome of `step` back, at time `now`.
    pub fn record(&mut self, step: &Step, outcome: Outcome, now: Timestamp) {
        self.progress.steps += 1;
        self.observed.now = now;
        match (step, outcome) {
            (Step::ReadClientSecret, Outcome::Read(Ok(secret))) => {
                self.progress.client_read = true;
                if let Some(reference) = &self.observed.credential.spec.client_secret_ref {
                    self.observed.client = observe::client_from_secret(secret.as_ref(), reference);
                }
            }
            (Step::ReadCredential, Outcome::Credential(Ok(Some(live)))) => {
                observe::with_live_credential(&mut self.observed, *live);
            }
            (Step::ReadCredential, Outcome::Credential(Ok(None))) => {
                // Deleted meanwhile: its Secrets are garbage-collected.
                self.progress.finish = Some(Finish::At(None));
            }
            (Step::ReadCredential, Outcome::Credential(Err(failure))) => {
                self.progress.finish = Some(Finish::ApiError(failure));
            }
            (Step::ReadTarget, Outcome::Read(Ok(secret))) => {
                self.progress.target_read += 1;
                self.observed.lag.target = false;
                self.observed.target =
                    observe::target_from_secret(secret.as_ref(), &self.observed.credential);
                // Read and found intact: remembered like a write, so it is not read again
                // while it stays at this version.
                if let TargetState::Owned(OwnedTarget {
                    record: Some(_),
                    resource_version,
                    ..
                }) = &self.observed.target
                {
                    self.progress.target_version = Some(resource_version.clone());
                }
            }
            (Step::ReadRefreshSecret, Outcome::Read(Ok(secret))) => {
                self.observed.refresh =
                    observe::refresh_from_secret(secret.as_ref(), &self.observed.credential);
            }
            (Step::ReadSubjectToken, Outcome::Read(Ok(secret))) => {
                if let Some(subject) = &mut self.observed.subject
                    && let SubjectToken::Ready {
                        value,
                        access_token_key,
                        authorization_key,
                        ..
                    } = &mut subject.token
                {
                    match observe::subject_token_value(
                        secret.as_ref(),
                        access_token_key,
                        authorization_key,
                    ) {
                        Some(token) => *value = Some(token),
                        None => {
                            subject.token =
                                SubjectToken::NotReady("its token Secret holds no token".into())
                        }
                    }
                }
            }
            (Step::ReadSecret { .. }, Outcome::Read(Ok(secret))) => {
                self.progress.stale_read = Some(secret);
            }
            (
                Step::ReadClientSecret
                | Step::ReadTarget
                | Step::ReadRefreshSecret
                | Step::ReadSubjectToken
                | Step::ReadSecret { .. },
                Outcome::Read(Err(failure)),
            ) => {
                self.progress.finish = Some(Finish::ApiError(failure));
            }
            (Step::ConsultGroup(_), Outcome::Group(group)) => {
                self.observed.group = GroupState::Consulted(group);
            }
            (Step::ObtainToken(order), Outcome::Token(outcome)) => {
                self.token_obtained(order, outcome)
            }
            (Step::Verify { .. }, Outcome::Verified(result)) => match result {
                Ok(verification) => self.progress.verification = Some(Some(verification)),
                Err(failure) => self.fail(failure),
            },
            (Step::WriteSecret(write), Outcome::Written(result)) => self.written(write, result),
            (Step::DeleteSecret { name, .. }, Outcome::Deleted(result)) => {
                self.progress.stale_done = true;
                if let Err(failure) = result {
                    self.progress.events.push(EventNote {
                        warning: true,
                        reason: "PreviousTargetNotDeleted".into(),
                        note: format!("could not delete Secret {name}, the previous target: {}; delete it by hand", failure.message),
                    });
                }
            }
            (Step::RestartWorkload { target, stamp }, Outcome::Restarted(result)) => {
                self.restarted(target, stamp, result);
            }
            (Step::PublishEvent(_), Outcome::Published) => self.progress.published += 1,
            (_, Outcome::NotLeader) => self.progress.finish = Some(Finish::NotLeader),
            (Step::WriteStatus(status), Outcome::StatusWritten(result)) => {
                self.progress.status_done = true;
                match result {
                    Ok(version) => {
                        self.progress.status_version = Some(version);
                        self.progress.status = Some((**status).clone());
                    }
                    Err(failure) => self.progress.finish = Some(Finish::ApiError(failure)),
                }
            }
            (step, outcome) => {
                let message = format!("step {step:?} got the unexpected outcome {outcome:?}");
                self.progress.finish = Some(Finish::ApiError(Failure::new(
                    Reason::KubernetesApiUnavailable,
                    message,
                )));
            }
        }
    }

    fn token_obtained(&mut self, order: &TokenOrder, outcome: TokenOutcome) {
        if let Decision::Issue(reason) = decide(&self.observed) {
            self.progress.issue_reason = Some(reason);
        }
        let p = &mut self.progress;
        p.obtain_attempts += 1;
        match outcome {
            TokenOutcome::Obtained { token, requested } => {
                p.requested = requested;
                p.grant = Some(token.grant);
                p.token = Some(token);
            }
            TokenOutcome::NothingAcceptable => {
                // Only a newer group token was wanted and there is none (any more).
                self.observed.group = GroupState::Consulted(None);
            }
            TokenOutcome::Failed {
                invalid_grant: true,
                ..
            } if matches!(order.grant.kind, GrantKind::RefreshToken(_)) => {
                // The refresh token is spent: fall back to client credentials at once.
                p.refresh_rejected = true;
            }
            TokenOutcome::Failed { failure, .. } => self.fail(failure),
            TokenOutcome::NotNow(wait) => {
                let at = self
                    .observed
                    .now
                    .checked_add(
                        SignedDuration::try_from(wait).unwrap_or(SignedDuration::from_secs(1)),
                    )
                    .ok();
                p.finish = Some(Finish::At(at));
            }
            TokenOutcome::NotLeader => p.finish = Some(Finish::NotLeader),
        }
    }

    fn written(&mut self, write: &SecretWrite, result: Result<Secret, WriteError>) {
        match (write.which, result) {
            (Written::Target, Ok(stored)) => {
                let p = &mut self.progress;
                p.written = true;
                p.target_writes += 1;
                p.target_version = stored.metadata.resource_version.clone();
                self.observed.target =
                    observe::target_from_secret(Some(&stored), &self.observed.credential);
                // Written as built: trust the bookkeeping even if the server added keys.
                if let TargetState::Owned(owned) = &mut self.observed.target
                    && owned.record.is_none()
                {
                    owned.record = target_secret::read_record(
                        write
                            .secret
                            .metadata
                            .annotations
                            .as_ref()
                            .unwrap_or(&Default::default()),
                        None,
                        &self.observed.credential.spec.target.keys,
                    );
                }
                self.observed.failure = self
                    .observed
                    .failure
                    .take()
                    .filter(|f| !f.reason.concerns_the_token());
                let reason = self.progress.issue_reason.unwrap_or(IssueReason::Retry);
                let (event, verb) = if reason == IssueReason::FirstToken {
                    ("TokenIssued", "Issued")
                } else {
                    ("TokenRenewed", "Renewed")
                };
                let how = if self.progress.requested {
                    ""
                } else {
                    " (shared by its token group)"
                };
                let expires = self
                    .observed
                    .record()
                    .map(|r| r.expires_at.to_string())
                    .unwrap_or_default();
                self.progress.events.push(EventNote {
                    warning: false,
                    reason: event.into(),
                    note: format!(
                        "{verb} a token valid until {expires} into Secret {} ({reason}){how}",
                        self.observed.spec.target_name
                    ),
                });
            }
            (Written::Target, Err(WriteError::AlreadyExists)) => {
                // Someone created a Secret of that name meanwhile: find out whose.
                self.progress.target_writes += 1;
                self.observed.target = TargetState::Unknown;
            }
            (Written::Target, Err(WriteError::Conflict)) => {
                // It changed since it was read: read it again and write once more (the token
                // in hand is reused, nothing is requested again).
                self.progress.target_writes += 1;
                if self.progress.target_writes >= 3 {
                    self.fail(Failure::new(
                        Reason::KubernetesApiUnavailable,
                        format!(
                            "Secret {} kept changing while the operator wrote it; will retry",
                            self.observed.spec.target_name
                        ),
                    ));
                } else {
                    self.observed.target = TargetState::Unverified;
                }
            }
            (Written::Target, Err(WriteError::Failed(failure))) => {
                self.progress.target_writes += 1;
                self.fail(failure);
            }
            (Written::Refresh, result) => {
                self.progress.refresh_written = true;
                match result {
                    Ok(stored) => {
                        self.observed.refresh =
                            observe::refresh_from_secret(Some(&stored), &self.observed.credential);
                    }
                    Err(error) => {
                        let why = match error {
                            WriteError::AlreadyExists => format!(
                                "Secret {} exists and is not this credential's",
                                self.observed.spec.refresh_secret_name
                            ),
                            WriteError::Conflict => "it changed meanwhile".to_owned(),
                            WriteError::Failed(failure) => failure.message,
                        };
                        self.progress.notes.push(format!("the refresh token could not be kept ({why}); the next renewal uses client credentials"));
                        self.progress.events.push(EventNote {
                            warning: true,
                            reason: "RefreshTokenNotKept".into(),
                            note: format!("could not keep the refresh token: {why}"),
                        });
                        self.observed.refresh = RefreshState::Missing;
                    }
                }
            }
        }
    }

    fn restarted(
        &mut self,
        target: &RolloutRestartTarget,
        stamp: &str,
        result: Result<Restart, Failure>,
    ) {
        let what = format!("{:?} {}", target.kind, target.name);
        let mut records = self.restart_records();
        self.progress
            .restarts
            .push((target.clone(), stamp.to_owned()));
        match result {
            Ok(Restart::Restarted) => {
                records.retain(|r| !(r.kind == target.kind && r.name == target.name));
                records.push(RolloutRestartRecord {
                    kind: target.kind,
                    name: target.name.clone(),
                    token: stamp.to_owned(),
                });
                records.sort_by(|a, b| {
                    (format!("{:?}", a.kind), &a.name).cmp(&(format!("{:?}", b.kind), &b.name))
                });
                self.progress.restart_records = Some(records);
                self.progress.events.push(EventNote {
                    warning: false,
                    reason: "RolloutRestarted".into(),
                    note: format!("Restarted {what} for the token issued at {stamp}"),
                });
                if self
                    .observed
                    .failure
                    .as_ref()
                    .is_some_and(|f| !f.reason.concerns_the_token())
                {
                    self.observed.failure = None;
                }
            }
            Ok(Restart::NotFound) => {
                let message = format!(
                    "rollout restart target {what} not found in {}; create it or remove it from spec.rolloutRestartTargets",
                    self.observed.spec.namespace
                );
                self.progress.notes.push(message.clone());
                self.fail(Failure::new(Reason::RolloutRestartTargetNotFound, message));
            }
            Err(failure) => {
                let failure = Failure {
                    reason: Reason::RolloutRestartFailed,
                    message: format!("could not restart {what}: {}", failure.message),
                    retry_after: None,
                };
                self.progress.notes.push(failure.message.clone());
                self.fail(failure);
            }
        }
    }

    /// Records a failed action: the failure bookkeeping with its backoff, and a Warning.
    fn fail(&mut self, failure: Failure) {
        let o = &self.observed;
        let record = after_failure(o, &failure);
        self.progress.failed = failure.reason.concerns_the_token() || self.progress.failed;
        self.progress.events.push(EventNote {
            warning: true,
            reason: failure.reason.as_str().to_owned(),
            note: failure.message.clone(),
        });
        tracing::warn!(
            reason = %failure.reason,
            attempts = record.attempts,
            next_retry = %record.next_retry,
            "{} failed: {}",
            failure.reason.action(),
            failure.message
        );
        self.observed.failure = Some(record);
    }
}

/// An Event when the status turns to a reason the user should hear about once.
fn transition_event(o: &Observed, situation: &Situation) -> Option<EventNote> {
    let current = o
        .status()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| c.reason.clone());
    let (reason, message, warning) = match situation {
        Situation::Blocked { reason, message } => (*reason, message.clone(), true),
        Situation::Suspended => (
            Reason::Suspended,
            "Renewals are suspended".to_owned(),
            false,
        ),
        _ => return None,
    };
    (current.as_deref() != Some(reason.as_str())).then(|| EventNote {
        warning,
        reason: reason.as_str().to_owned(),
        note: message,
    })
}

/// The failure bookkeeping after a failed action, from its answer at `o.now`.
pub fn after_failure(o: &Observed, failure: &Failure) -> FailureRecord {
    let same_kind = o
        .failure
        .as_ref()
        .filter(|f| f.reason.concerns_the_token() == failure.reason.concerns_the_token());
    let attempts = same_kind.map_or(0, |f| f.attempts).saturating_add(1);
    let seed = crate::schedule::jitter_seed(&o.spec.jitter_uid, o.now) ^ u64::from(attempts);
    let delay = o.policy.retry.delay(
        attempts,
        failure.reason.is_permanent(),
        failure.retry_after,
        seed,
    );
    let mut next_retry = o
        .now
        .checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    let mut not_before = failure
        .retry_after
        .and_then(|wait| o.now.checked_add(SignedDuration::try_from(wait).ok()?).ok());
    // A wait that would outlast the current token is cut so that one retry still comes
    // before it expires: an expired token is worse than one early request.
    if let TokenHealth::Valid { expires_at, .. } = o.token_health()
        && let Some(record) = o.record()
    {
        let margin = SignedDuration::from_secs(60)
            .min(record.expires_at.duration_since(record.issued_at) / 10);
        let latest = expires_at
            .checked_sub(margin)
            .unwrap_or(expires_at)
            .max(o.now + SignedDuration::from_secs(1));
        next_retry = next_retry.min(latest);
        not_before = not_before.map(|t| t.min(latest));
    }
    // The status keeps times in whole seconds and the next look reads the retry time back
    // from it: rounded down, a retry (and a server's Retry-After) would come a second early.
    let ceil = |t: Timestamp| {
        t.round(
            TimestampRound::new()
                .smallest(Unit::Second)
                .mode(RoundMode::Ceil),
        )
        .unwrap_or(t)
    };
    FailureRecord {
        attempts,
        // Whole seconds, as the status stores it: a fraction would make every later status
        // differ from the stored one and be written again.
        last_failure: Timestamp::from_second(o.now.as_second()).unwrap_or(o.now),
        next_retry: ceil(next_retry),
        not_before: not_before.map(ceil),
        inputs: o.attempt_inputs(),
        reason: failure.reason,
        message: failure.message.clone(),
    }
}

/// How long a finished reconcile waits before the credential is looked at again.
pub fn requeue_after(finish: &Finish, now: Timestamp, resync: Duration) -> Option<Duration> {
    match finish {
        Finish::At(Some(at)) => {
            let until = at.duration_since(now);
            // A deadline that has just passed still needs a moment for clocks to agree.
            Some(
                Duration::try_from(until)
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(200), resync),
            )
        }
        Finish::At(None) => Some(resync),
        Finish::CacheLags => Some(Duration::from_secs(2)),
        Finish::NotLeader | Finish::ApiError(_) => None,
    }
}

#[cfg(test)]
mod tests;
