//! The observation: a pure translation of what the operator fetched or knows (the credential,
//! the facts about its Secrets, its own last writes, the token group) into [`Observed`], the
//! one value the planner decides from.
//!
//! Nothing here does I/O, and nothing here decides what to do. Secrets stay in redacting
//! types: an `Observed` can be printed with `{:?}` without revealing anything.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use url::Url;

use crate::api::{
    AttemptInputs, AuthMethod, ClientSecretRef, DsccCredential, DsccCredentialStatus,
    REFRESH_ANNOTATION,
};
use crate::reason::Reason;
use crate::schedule::{RefreshBefore, RetryPolicy, jitter_seed, parse_duration, renewal_time};
use crate::secret_index::{Absence, Known, SecretFacts};
use crate::target_secret::{self, TokenRecord};
use crate::token::ClientCredentials;

/// Settings of the operator that shape decisions.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Spacing of retries after failures.
    pub retry: RetryPolicy,
    /// Whether plain http token and API URLs are allowed (development only).
    pub allow_insecure_http: bool,
    /// No token is renewed sooner than this after it was issued.
    pub min_renewal_interval: SignedDuration,
    /// Whether credentials with identical token requests share one token.
    pub share_tokens: bool,
    /// How often a credential is looked at when nothing else brings it back.
    pub resync: SignedDuration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            allow_insecure_http: false,
            min_renewal_interval: SignedDuration::from_secs(30),
            share_tokens: true,
            resync: SignedDuration::from_mins(30),
        }
    }
}

/// Everything the decision depends on.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The current time.
    pub now: Timestamp,
    /// The credential, as cached.
    pub credential: Arc<DsccCredential>,
    /// Facts derived from its spec.
    pub spec: SpecFacts,
    /// The client Secret.
    pub client: ClientState,
    /// The target Secret.
    pub target: TargetState,
    /// The operator-only Secret holding a refresh token.
    pub refresh: RefreshState,
    /// The subject of a token exchange, when the spec asks for one.
    pub subject: Option<SubjectState>,
    /// The failure bookkeeping: the later of the status's and the operator's own memory.
    pub failure: Option<FailureRecord>,
    /// Whether the caches still lag behind the operator's own last writes.
    pub lag: Lag,
    /// What the operator remembers of its own writes.
    pub memo: Option<Memo>,
    /// The token group's latest token, once consulted.
    pub group: GroupState,
    /// The operator's settings.
    pub policy: Policy,
}

/// What the spec says, checked and parsed.
#[derive(Clone, Debug)]
pub struct SpecFacts {
    /// `namespace/name`.
    pub key: String,
    /// The namespace.
    pub namespace: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// [`crate::api::DsccCredentialSpec::issuance_hash`].
    pub spec_hash: String,
    /// The manual refresh annotation, if set.
    pub refresh_requested_at: Option<String>,
    /// The renewal setting.
    pub refresh_before: RefreshBefore,
    /// A problem the API server could not reject (a plain http URL, say).
    pub problem: Option<String>,
    /// The token URL, when it is usable.
    pub token_url: Option<Url>,
    /// The target Secret's name.
    pub target_name: String,
    /// The refresh-token Secret's name.
    pub refresh_secret_name: String,
    /// Whether the credential is being deleted.
    pub deleting: bool,
    /// Seed of the renewal jitter: stable per credential and token.
    pub jitter_uid: String,
}

/// What is known about the client Secret.
#[derive(Clone, Debug)]
pub enum ClientState {
    /// The spec names none (a token exchange authenticated by the subject token alone).
    NotNeeded,
    /// Not known without a GET.
    Unknown {
        /// Its name.
        name: String,
    },
    /// No Secret of that name in the namespace.
    Missing {
        /// Its name.
        name: String,
    },
    /// The Secret lacks a key, or its value is empty.
    KeyMissing {
        /// Its name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// Both keys are there.
    Present {
        /// A one-way fingerprint of the client id and secret.
        fingerprint: String,
        /// The client id (not secret).
        client_id: String,
        /// The credentials, when they were read in this reconcile (needed to send a request).
        credentials: Option<ClientCredentials>,
    },
}

impl ClientState {
    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientState::NotNeeded => "NotNeeded",
            ClientState::Unknown { .. } => "Unknown",
            ClientState::Missing { .. } => "Missing",
            ClientState::KeyMissing { .. } => "KeyMissing",
            ClientState::Present { .. } => "Present",
        }
    }

    /// The fingerprint of the client credentials, if known.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            ClientState::Present { fingerprint, .. } => Some(fingerprint),
            _ => None,
        }
    }
}

/// What is known about the target Secret.
// One lives per reconcile: boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TargetState {
    /// Not known without a GET.
    Unknown,
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that this credential does not control.
    Foreign {
        /// Its name.
        name: String,
    },
    /// Ours, but changed since the operator last wrote it (or written by an earlier process):
    /// its content must be read to be trusted.
    Unverified,
    /// Ours, as the operator wrote it (checked by its hash, or unchanged since the write).
    Owned(OwnedTarget),
}

impl TargetState {
    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetState::Unknown => "Unknown",
            TargetState::Missing => "Missing",
            TargetState::Foreign { .. } => "Foreign",
            TargetState::Unverified => "Unverified",
            TargetState::Owned(_) => "Owned",
        }
    }
}

/// Our target Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTarget {
    /// Its uid.
    pub uid: String,
    /// Its resourceVersion: the precondition of the next write.
    pub resource_version: String,
    /// Its bookkeeping; `None` when missing, unreadable, implausible or edited.
    pub record: Option<TokenRecord>,
    /// Its `type`, when it was read (a change of type needs the Secret replaced).
    pub secret_type: Option<String>,
}

/// What is known about the refresh-token Secret.
#[allow(clippy::large_enum_variant)] // one per reconcile, as TargetState
#[derive(Clone, Debug)]
pub enum RefreshState {
    /// Not known without a GET.
    Unknown,
    /// There is none.
    Missing,
    /// A Secret of that name this credential does not control.
    Foreign,
    /// Ours; `value` once read. `for_token` is the hash of the token it came with.
    Held {
        /// Its uid.
        uid: String,
        /// Its resourceVersion.
        resource_version: String,
        /// The token hash of the response it came with.
        for_token: Option<String>,
        /// When it expires, if the endpoint said.
        expires_at: Option<Timestamp>,
        /// The refresh token, once read.
        value: Option<SecretString>,
    },
}

/// The subject credential of a token exchange.
#[derive(Clone, Debug)]
pub struct SubjectState {
    /// Its name.
    pub name: String,
    /// Its state.
    pub token: SubjectToken,
}

/// The subject's token.
#[derive(Clone, Debug)]
pub enum SubjectToken {
    /// No DsccCredential of that name in the namespace.
    NoSuchCredential,
    /// It has no valid token; why, in its own words.
    NotReady(String),
    /// It has a valid token in its target Secret `secret`, with this hash; `value` once read.
    Ready {
        /// The subject's target Secret.
        secret: String,
        /// The key of the raw token in it ("" when only the Authorization key is written).
        access_token_key: String,
        /// The key of the Authorization header value.
        authorization_key: String,
        /// The hash of its token data.
        hash: String,
        /// When it expires.
        expires_at: Timestamp,
        /// The token, once read.
        value: Option<SecretString>,
    },
}

impl SubjectState {
    /// The subject token's hash, when it has a valid token.
    pub fn hash(&self) -> Option<&str> {
        match &self.token {
            SubjectToken::Ready { hash, .. } => Some(hash),
            _ => None,
        }
    }
}

/// The token group's latest token, as far as the planner needs to know it.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupState {
    /// Not consulted yet (the group is known once the client fingerprint is).
    NotConsulted,
    /// Consulted: the group's latest token, if it has one.
    Consulted(Option<GroupToken>),
}

/// A token the group holds (in the operator's memory only).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupToken {
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// A one-way hash of it.
    pub token_hash: String,
    /// Whether it is the token this member last stored in its target Secret (issue times
    /// are whole seconds: a newer token may have the same one).
    pub stored_by_member: bool,
}

/// The failure bookkeeping kept in the status (and in the operator's memory).
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRecord {
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// When the last attempt failed.
    pub last_failure: Timestamp,
    /// When the next attempt is due.
    pub next_retry: Timestamp,
    /// The server asked for no request before this, whatever changes.
    pub not_before: Option<Timestamp>,
    /// What the failed attempt was made from.
    pub inputs: AttemptInputs,
    /// The reason that was reported; it says how it is retried.
    pub reason: Reason,
    /// The message that was reported.
    pub message: String,
}

/// The state of the token currently in the target Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenHealth {
    /// No usable token of ours.
    None,
    /// A token valid until `expires_at`; `current` when issued from the current spec and
    /// client credentials; `renewal` is when it is due for renewal.
    Valid {
        /// When it expires.
        expires_at: Timestamp,
        /// When it is due for renewal.
        renewal: Timestamp,
        /// Whether it was issued from the current spec and client credentials.
        current: bool,
    },
    /// A token that expired at `expired_at`.
    Expired {
        /// When it expired.
        expired_at: Timestamp,
    },
}

impl Observed {
    /// The record of the token in the target Secret, if ours and intact.
    pub fn record(&self) -> Option<&TokenRecord> {
        match &self.target {
            TargetState::Owned(OwnedTarget {
                record: Some(record),
                ..
            }) => Some(record),
            _ => None,
        }
    }

    /// When `record`'s token is due for renewal under this credential's policy.
    pub fn renewal_of(&self, issued_at: Timestamp, expires_at: Timestamp) -> Timestamp {
        renewal_time(
            issued_at,
            expires_at,
            self.spec.refresh_before,
            jitter_seed(&self.spec.jitter_uid, issued_at),
            self.policy.min_renewal_interval,
        )
    }

    /// The state of the token in the target Secret.
    pub fn token_health(&self) -> TokenHealth {
        let Some(record) = self.record() else {
            return TokenHealth::None;
        };
        if self.now >= record.expires_at {
            return TokenHealth::Expired {
                expired_at: record.expires_at,
            };
        }
        TokenHealth::Valid {
            expires_at: record.expires_at,
            renewal: self.renewal_of(record.issued_at, record.expires_at),
            current: self.is_current(record),
        }
    }

    /// Whether `record` was issued from the current spec, client credentials and subject.
    pub fn is_current(&self, record: &TokenRecord) -> bool {
        let client_matches = match &self.client {
            ClientState::NotNeeded => record.credentials_fingerprint.is_empty(),
            ClientState::Present { fingerprint, .. } => {
                *fingerprint == record.credentials_fingerprint
            }
            _ => false,
        };
        let subject_matches = match &self.subject {
            None => true,
            Some(subject) => subject
                .hash()
                .is_none_or(|hash| record.subject_token_hash.as_deref() == Some(hash)),
        };
        record.spec_hash == self.spec.spec_hash && client_matches && subject_matches
    }

    /// What an attempt made now is made from.
    pub fn attempt_inputs(&self) -> AttemptInputs {
        AttemptInputs {
            spec_hash: self.spec.spec_hash.clone(),
            credentials_fingerprint: self.client.fingerprint().map(str::to_owned),
            refresh_requested_at: self.spec.refresh_requested_at.clone(),
            subject_token_hash: self
                .subject
                .as_ref()
                .and_then(|s| s.hash())
                .map(str::to_owned),
        }
    }

    /// The status as it is now.
    pub fn status(&self) -> Option<&DsccCredentialStatus> {
        self.credential.status.as_ref()
    }

    /// The token group of this credential's request, once the client is known.
    pub fn group_key(&self) -> Option<GroupKey> {
        let url = self.spec.token_url.as_ref()?;
        let spec = &self.credential.spec;
        let (client_id, fingerprint) = match &self.client {
            ClientState::Present {
                client_id,
                fingerprint,
                ..
            } => (client_id.as_str(), fingerprint.as_str()),
            ClientState::NotNeeded => ("", ""),
            _ => return None,
        };
        let mut scopes = spec.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let exchange = match (&spec.token_exchange, &self.subject) {
            (None, _) => String::new(),
            (Some(exchange), Some(subject)) => format!(
                "{}|{}",
                subject.hash()?,
                exchange.audience.as_deref().unwrap_or_default()
            ),
            (Some(_), None) => return None,
        };
        let auth = match spec.auth_method {
            AuthMethod::ClientSecretPost => "post",
            AuthMethod::ClientSecretBasic => "basic",
        };
        // The fingerprint is computed by the operator from the Secret in the credential's own
        // namespace: a credential can only join a group whose client secret it holds.
        let material =
            serde_json::json!([url.as_str(), client_id, fingerprint, auth, scopes, exchange,]);
        let digest = Sha256::digest(material.to_string().as_bytes());
        Some(GroupKey(hex::encode(&digest[..16])))
    }
}

/// Whether the caches lag behind the operator's own last writes, and since when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// The cached credential is older than the status the operator last wrote.
    pub credential: bool,
    /// The target Secret's facts are older than the operator's last write of it.
    pub target: bool,
    /// When a reconcile first found the caches behind (since then it has waited).
    pub since: Option<Timestamp>,
}

impl Lag {
    /// Whether any cache lags.
    pub fn any(&self) -> bool {
        self.credential || self.target
    }
}

/// The observation with `live`, the credential as a GET found it, in place of the cached one.
pub fn with_live_credential(observed: &mut Observed, live: DsccCredential) {
    let live = Arc::new(live);
    observed.spec = spec_facts(&live, &observed.policy);
    let status_failure = failure_from_status(live.status.as_ref());
    observed.failure = supersede(status_failure, observed.memo.as_ref());
    observed.credential = live;
    observed.lag.credential = false;
}

/// The failure to act on: the operator's own last decision supersedes any failure recorded
/// in the status before it.
fn supersede(status_failure: Option<FailureRecord>, memo: Option<&Memo>) -> Option<FailureRecord> {
    match memo.and_then(|m| m.decided_at.map(|at| (at, m.failure.clone()))) {
        Some((decided_at, remembered)) => match status_failure {
            Some(recorded) if recorded.last_failure > decided_at => Some(recorded),
            _ => remembered,
        },
        None => status_failure,
    }
}

/// Identifies the credentials whose token request would be identical.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey(pub String);

impl GroupKey {
    /// The short id shown in the status and in metrics.
    pub fn id(&self) -> &str {
        &self.0[..12]
    }
}

/// What the operator remembers of its own writes for one credential (see `own_writes`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memo {
    /// resourceVersion of its last status write.
    pub status_version: Option<String>,
    /// The name and resourceVersion of its last target Secret write.
    pub target: Option<(String, String)>,
    /// The last failure it recorded, whether or not the status write that carried it
    /// succeeded (`None`: its last decision found no failure).
    pub failure: Option<FailureRecord>,
    /// When it last decided: a failure recorded in the status before then is superseded by
    /// `failure`, whatever the cache still shows.
    pub decided_at: Option<Timestamp>,
    /// When a reconcile first found the caches behind its writes (reset once they caught up).
    pub lag_since: Option<Timestamp>,
}

impl Memo {
    /// The resourceVersion the operator last wrote to the target Secret `name`, if it did.
    pub fn target_written(&self, name: &str) -> Option<&str> {
        self.target
            .as_ref()
            .filter(|(written, _)| written == name)
            .map(|(_, version)| version.as_str())
    }
}

/// Everything [`observe`] turns into an [`Observed`].
pub struct Inputs<'a> {
    /// The current time.
    pub now: Timestamp,
    /// The cached credential.
    pub credential: Arc<DsccCredential>,
    /// Facts about the client Secret (`None`: unknown).
    pub client: Option<Known>,
    /// Facts about the target Secret.
    pub target: Option<Known>,
    /// Facts about the refresh-token Secret.
    pub refresh: Option<Known>,
    /// The subject credential of a token exchange, if the spec names one and it exists.
    pub subject: Option<Arc<DsccCredential>>,
    /// Facts about the subject's target Secret.
    pub subject_target: Option<Known>,
    /// What the operator remembers of its own writes.
    pub memo: Option<&'a Memo>,
    /// The operator's settings.
    pub policy: &'a Policy,
}

/// Turns the cached and remembered facts into an observation.
pub fn observe(inputs: Inputs<'_>) -> Observed {
    let credential = inputs.credential;
    let spec = spec_facts(&credential, inputs.policy);
    let memo = inputs.memo;
    let client = match &credential.spec.client_secret_ref {
        None => ClientState::NotNeeded,
        Some(reference) => client_from_facts(inputs.client.as_ref(), reference),
    };
    let target = target_from_facts(
        inputs.target.as_ref(),
        &credential,
        memo.and_then(|m| m.target_written(&credential.target_name())),
    );
    let refresh = refresh_from_facts(inputs.refresh.as_ref(), &credential);
    let subject = credential.spec.token_exchange.as_ref().map(|exchange| {
        subject_state(
            &exchange.subject_credential_ref.name,
            inputs.subject.as_deref(),
            inputs.subject_target.as_ref(),
            inputs.now,
        )
    });
    let status_failure = failure_from_status(credential.status.as_ref());
    let failure = supersede(status_failure, memo);
    let written_target = memo.and_then(|m| m.target_written(&spec.target_name));
    let credential_lags = memo.is_some_and(|memo| {
        lags(
            credential.resource_version().as_deref(),
            memo.status_version.as_deref(),
        )
    });
    let target_lags = memo.is_some() && {
        match (inputs.target.as_ref(), written_target) {
            (Some(Known::Present(facts)), Some(written)) => {
                lags(Some(&facts.resource_version), Some(written))
            }
            // Our own 404 came before our write; a deletion the watch saw after it, or a
            // list without it, is the truth.
            (Some(Known::Absent(Absence::NotFound)), Some(_)) => true,
            (Some(Known::Absent(Absence::Deleted(at))), Some(written)) => {
                lags(Some(at), Some(written))
            }
            _ => false,
        }
    };
    let lag = Lag {
        credential: credential_lags,
        target: target_lags,
        since: memo
            .and_then(|m| m.lag_since)
            .filter(|_| credential_lags || target_lags),
    };
    Observed {
        now: inputs.now,
        credential,
        spec,
        client,
        target,
        refresh,
        subject,
        failure,
        lag,
        memo: memo.cloned(),
        group: GroupState::NotConsulted,
        policy: inputs.policy.clone(),
    }
}

/// Whether a cached object at `cached` is older than the version `written` by the operator.
/// resourceVersions of one resource are comparable integers (KEP-5504, GA in Kubernetes 1.35).
pub fn lags(cached: Option<&str>, written: Option<&str>) -> bool {
    match (
        cached.and_then(parse_version),
        written.and_then(parse_version),
    ) {
        (Some(cached), Some(written)) => cached < written,
        (None, Some(_)) => true,
        _ => false,
    }
}

fn parse_version(version: &str) -> Option<u128> {
    version.parse().ok().filter(|v| *v > 0)
}

fn spec_facts(credential: &DsccCredential, policy: &Policy) -> SpecFacts {
    let spec = &credential.spec;
    let (token_url, problem) = check_spec(credential, policy.allow_insecure_http);
    SpecFacts {
        key: credential.key(),
        namespace: credential.namespace().unwrap_or_default(),
        generation: credential.metadata.generation.unwrap_or_default(),
        spec_hash: spec.issuance_hash(),
        refresh_requested_at: credential.annotations().get(REFRESH_ANNOTATION).cloned(),
        refresh_before: refresh_before(credential),
        problem,
        token_url,
        target_name: credential.target_name(),
        refresh_secret_name: credential.refresh_secret_name(),
        deleting: credential.metadata.deletion_timestamp.is_some(),
        jitter_uid: credential.metadata.uid.clone().unwrap_or_default(),
    }
}

/// What the API server's schema cannot check: returns the usable token URL and any problem.
pub fn check_spec(
    credential: &DsccCredential,
    allow_insecure_http: bool,
) -> (Option<Url>, Option<String>) {
    let spec = &credential.spec;
    let url = match Url::parse(&spec.token_url) {
        Ok(url) => url,
        Err(error) => {
            return (
                None,
                Some(format!("spec.tokenUrl is not a valid URL: {error}")),
            );
        }
    };
    let insecure = |field: &str, what: &str| {
        format!(
            "spec.{field} uses plain http, which would expose {what}; use https (plain http is \
             only accepted when the operator runs with --allow-insecure-token-url, for \
             development)"
        )
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => return (None, Some(insecure("tokenUrl", "the client secret"))),
        other => {
            return (
                None,
                Some(format!("spec.tokenUrl has scheme {other}; use https")),
            );
        }
    }
    // verify sends the new token to the DSCC API as a bearer credential.
    if spec.verify
        && let Some(api_url) = spec.dscc_api_url()
        && api_url.starts_with("http://")
        && !allow_insecure_http
    {
        return (
            Some(url),
            Some(insecure("apiUrl", "the token to the verify probe")),
        );
    }
    if let Some(text) = &spec.refresh_before
        && let Err(error) = parse_duration(text)
    {
        return (Some(url), Some(format!("spec.refreshBefore: {error}")));
    }
    if let Some(exchange) = &spec.token_exchange
        && Some(exchange.subject_credential_ref.name.as_str())
            == credential.metadata.name.as_deref()
    {
        return (
            Some(url),
            Some("spec.tokenExchange.subjectCredentialRef names this credential itself; name another DsccCredential".into()),
        );
    }
    (Some(url), None)
}

fn refresh_before(credential: &DsccCredential) -> RefreshBefore {
    let spec = &credential.spec;
    if let Some(duration) = spec
        .refresh_before
        .as_deref()
        .and_then(|t| parse_duration(t).ok())
    {
        RefreshBefore::Duration(duration)
    } else if let Some(percentage) = spec.refresh_before_percentage {
        RefreshBefore::Percentage(percentage.clamp(1, 99) as u8)
    } else {
        RefreshBefore::Default
    }
}

fn client_from_facts(facts: Option<&Known>, reference: &ClientSecretRef) -> ClientState {
    let name = reference.name.clone();
    match facts {
        None => ClientState::Unknown { name },
        Some(Known::Absent(_)) => ClientState::Missing { name },
        // The fingerprint from an earlier read is good while the Secret is unchanged.
        Some(Known::Present(facts)) => match &facts.fingerprint {
            Some(known)
                if known.resource_version == facts.resource_version
                    && known.keys
                        == (
                            reference.client_id_key.clone(),
                            reference.client_secret_key.clone(),
                        ) =>
            {
                match &known.result {
                    Ok((client_id, fingerprint)) => ClientState::Present {
                        fingerprint: fingerprint.clone(),
                        client_id: client_id.clone(),
                        credentials: None,
                    },
                    Err(key) => ClientState::KeyMissing {
                        name,
                        key: key.clone(),
                    },
                }
            }
            _ => ClientState::Unknown { name },
        },
    }
}

/// The client credentials in `secret`, read: the state, and the credentials themselves.
pub fn client_from_secret(secret: Option<&Secret>, reference: &ClientSecretRef) -> ClientState {
    let name = reference.name.clone();
    let Some(secret) = secret else {
        return ClientState::Missing { name };
    };
    match read_credentials(secret, reference) {
        Ok(credentials) => ClientState::Present {
            fingerprint: target_secret::credentials_fingerprint(&credentials),
            client_id: credentials.client_id.clone(),
            credentials: Some(credentials),
        },
        Err(key) => ClientState::KeyMissing { name, key },
    }
}

/// The credentials in a client Secret, or the key that is missing or empty.
pub fn read_credentials(
    secret: &Secret,
    reference: &ClientSecretRef,
) -> Result<ClientCredentials, String> {
    // A trailing newline from `echo ... | kubectl create secret` is a classic mistake that
    // the token endpoint would reject, so surrounding white space is dropped.
    let value = |key: &str| {
        let bytes = secret.data.as_ref()?.get(key)?;
        let text = std::str::from_utf8(&bytes.0).ok()?.trim();
        (!text.is_empty()).then(|| text.to_owned())
    };
    let client_id =
        value(&reference.client_id_key).ok_or_else(|| reference.client_id_key.clone())?;
    let client_secret =
        value(&reference.client_secret_key).ok_or_else(|| reference.client_secret_key.clone())?;
    Ok(ClientCredentials {
        client_id,
        client_secret: SecretString::from(client_secret),
    })
}

fn target_from_facts(
    facts: Option<&Known>,
    credential: &DsccCredential,
    written: Option<&str>,
) -> TargetState {
    match facts {
        None => TargetState::Unknown,
        Some(Known::Absent(_)) => TargetState::Missing,
        Some(Known::Present(facts)) => {
            if !facts.is_controlled_by(credential) {
                return TargetState::Foreign {
                    name: credential.target_name(),
                };
            }
            // Unchanged since the operator wrote it: the bookkeeping it wrote is as written.
            if written == Some(facts.resource_version.as_str()) {
                TargetState::Owned(OwnedTarget {
                    uid: facts.uid.clone(),
                    resource_version: facts.resource_version.clone(),
                    record: target_secret::read_record(
                        &facts.annotations,
                        None,
                        &credential.spec.target.keys,
                    ),
                    secret_type: None,
                })
            } else {
                TargetState::Unverified
            }
        }
    }
}

/// The target Secret as read by a GET: whose it is, and its checked bookkeeping.
pub fn target_from_secret(secret: Option<&Secret>, credential: &DsccCredential) -> TargetState {
    let Some(secret) = secret else {
        return TargetState::Missing;
    };
    if !target_secret::is_controlled_by(secret, credential) {
        return TargetState::Foreign {
            name: secret.metadata.name.clone().unwrap_or_default(),
        };
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    TargetState::Owned(OwnedTarget {
        uid: secret.metadata.uid.clone().unwrap_or_default(),
        resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
        record: target_secret::read_record(
            &annotations,
            Some(secret),
            &credential.spec.target.keys,
        ),
        secret_type: Some(secret.type_.clone().unwrap_or_else(|| "Opaque".into())),
    })
}

fn refresh_from_facts(facts: Option<&Known>, credential: &DsccCredential) -> RefreshState {
    match facts {
        None => RefreshState::Unknown,
        Some(Known::Absent(_)) => RefreshState::Missing,
        Some(Known::Present(facts)) if !facts.is_controlled_by(credential) => RefreshState::Foreign,
        Some(Known::Present(facts)) => RefreshState::Held {
            uid: facts.uid.clone(),
            resource_version: facts.resource_version.clone(),
            for_token: facts.annotations.get(target_secret::REFRESH_FOR).cloned(),
            expires_at: facts
                .annotations
                .get(target_secret::EXPIRES_AT)
                .and_then(|t| t.parse().ok()),
            value: None,
        },
    }
}

/// The refresh-token Secret as read by a GET.
pub fn refresh_from_secret(secret: Option<&Secret>, credential: &DsccCredential) -> RefreshState {
    let Some(secret) = secret else {
        return RefreshState::Missing;
    };
    if !target_secret::is_controlled_by(secret, credential) {
        return RefreshState::Foreign;
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    RefreshState::Held {
        uid: secret.metadata.uid.clone().unwrap_or_default(),
        resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
        for_token: annotations.get(target_secret::REFRESH_FOR).cloned(),
        expires_at: annotations
            .get(target_secret::EXPIRES_AT)
            .and_then(|t| t.parse().ok()),
        value: target_secret::refresh_token_value(secret),
    }
}

fn subject_state(
    name: &str,
    subject: Option<&DsccCredential>,
    subject_target: Option<&Known>,
    now: Timestamp,
) -> SubjectState {
    let token = match subject {
        None => SubjectToken::NoSuchCredential,
        Some(subject) => subject_token(subject, subject_target, now),
    };
    SubjectState {
        name: name.to_owned(),
        token,
    }
}

fn subject_token(subject: &DsccCredential, target: Option<&Known>, now: Timestamp) -> SubjectToken {
    let ready = subject
        .status
        .as_ref()
        .and_then(|s| crate::conditions::find(&s.conditions, crate::conditions::READY))
        .filter(|c| c.status == "True");
    let Some(_) = ready else {
        let why = subject
            .status
            .as_ref()
            .and_then(|s| crate::conditions::find(&s.conditions, crate::conditions::READY))
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "it has no status yet".to_owned());
        return SubjectToken::NotReady(why);
    };
    let Some(Known::Present(facts)) = target else {
        return SubjectToken::NotReady("its token Secret is not there".into());
    };
    if !facts.is_controlled_by(subject) {
        return SubjectToken::NotReady("its token Secret is not its own".into());
    }
    let expires_at = facts
        .annotations
        .get(target_secret::EXPIRES_AT)
        .and_then(|t| t.parse::<Timestamp>().ok());
    let hash = facts.annotations.get(target_secret::DATA_HASH).cloned();
    match (expires_at, hash) {
        (Some(expires_at), Some(hash)) if expires_at > now => SubjectToken::Ready {
            secret: subject.target_name(),
            access_token_key: subject.spec.target.keys.access_token.clone(),
            authorization_key: subject.spec.target.keys.authorization.clone(),
            hash,
            expires_at,
            value: None,
        },
        (Some(expires_at), _) if expires_at <= now => {
            SubjectToken::NotReady(format!("its token expired at {expires_at}"))
        }
        _ => SubjectToken::NotReady("its token Secret has no readable bookkeeping".into()),
    }
}

/// The subject's token read from its target Secret.
pub fn subject_token_value(
    secret: Option<&Secret>,
    access_token_key: &str,
    authorization_key: &str,
) -> Option<SecretString> {
    let secret = secret?;
    let data = secret.data.as_ref()?;
    let text = |key: &str| -> Option<String> {
        if key.is_empty() {
            return None;
        }
        let value = data.get(key)?;
        std::str::from_utf8(&value.0)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    if let Some(token) = text(access_token_key).filter(|t| !t.is_empty()) {
        return Some(SecretString::from(token));
    }
    let header = text(authorization_key)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then(|| SecretString::from(token.to_owned()))
}

/// The failure bookkeeping stored in `status`, if the last attempt failed.
pub fn failure_from_status(status: Option<&DsccCredentialStatus>) -> Option<FailureRecord> {
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
        not_before: status.retry_after_time.as_ref().map(|t| t.0),
        inputs: status.last_failed_attempt.clone().unwrap_or_default(),
        reason,
        message: status.last_failure_message.clone().unwrap_or_default(),
    })
}

/// A one-way hash of a token, to tell two tokens apart without keeping them.
pub fn token_hash(token: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(&Sha256::digest(token.as_bytes())[..16])
    )
}

/// Facts about a Secret from a GET, for the index: what the metadata watch would have said.
pub fn facts_of(secret: Option<&Secret>) -> Known {
    match secret {
        None => Known::Absent(Absence::NotFound),
        Some(secret) => Known::Present(SecretFacts::of_metadata(&secret.metadata)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DsccCredentialSpec;
    use k8s_openapi::ByteString;

    pub(crate) fn credential() -> DsccCredential {
        let spec: DsccCredentialSpec = serde_json::from_value(serde_json::json!({
            "clientSecretRef": {"name": "client"},
            "tokenUrl": "https://sso.example.com/as/token.oauth2",
        }))
        .expect("a spec");
        let mut credential = DsccCredential::new("reports", spec);
        credential.metadata.namespace = Some("storage".into());
        credential.metadata.uid = Some("uid-1".into());
        credential.metadata.resource_version = Some("10".into());
        credential.metadata.generation = Some(1);
        credential
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("client".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn client_secret_values_are_trimmed_and_empty_ones_count_as_missing() {
        let reference = credential().spec.client_secret_ref.unwrap();
        let state = client_from_secret(
            Some(&secret(&[
                ("client_id", "id\n"),
                ("client_secret", " s3cret\n"),
            ])),
            &reference,
        );
        let ClientState::Present {
            credentials: Some(credentials),
            ..
        } = state
        else {
            panic!("expected present credentials, got {state:?}");
        };
        assert_eq!(credentials.client_id, "id");
        use secrecy::ExposeSecret;
        assert_eq!(credentials.client_secret.expose_secret(), "s3cret");

        let state = client_from_secret(
            Some(&secret(&[("client_id", "id"), ("client_secret", "  ")])),
            &reference,
        );
        assert!(matches!(state, ClientState::KeyMissing { ref key, .. } if key == "client_secret"));
        assert!(matches!(
            client_from_secret(None, &reference),
            ClientState::Missing { .. }
        ));
    }

    #[test]
    fn an_observation_never_carries_the_client_secret_in_readable_form() {
        let reference = credential().spec.client_secret_ref.unwrap();
        let client = client_from_secret(
            Some(&secret(&[
                ("client_id", "id"),
                ("client_secret", "s3cret-value-123"),
            ])),
            &reference,
        );
        let observed = observe(Inputs {
            now: Timestamp::now(),
            credential: Arc::new(credential()),
            client: None,
            target: None,
            refresh: None,
            subject: None,
            subject_target: None,
            memo: None,
            policy: &Policy::default(),
        });
        let observed = Observed { client, ..observed };
        let text = format!("{observed:?}");
        assert!(!text.contains("s3cret-value-123"), "leaked in {text}");
        assert!(text.contains("fingerprint"), "{text}");
    }

    #[test]
    fn plain_http_urls_are_refused_unless_allowed_and_for_verify_too() {
        let mut http = credential();
        http.spec.token_url = "http://127.0.0.1:8080/token".into();
        let (_, problem) = check_spec(&http, false);
        assert!(problem.unwrap().contains("--allow-insecure-token-url"));
        assert!(check_spec(&http, true).1.is_none());

        let mut verify = credential();
        verify.spec.verify = true;
        verify.spec.api_url = Some("http://dscc.example.internal".into());
        let (_, problem) = check_spec(&verify, false);
        assert!(problem.expect("refused").contains("spec.apiUrl"));
        assert!(check_spec(&verify, true).1.is_none());
        verify.spec.verify = false;
        assert!(
            check_spec(&verify, false).1.is_none(),
            "without verify no token goes there"
        );
    }

    #[test]
    fn resource_versions_are_compared_as_numbers() {
        assert!(lags(Some("9"), Some("10")));
        assert!(!lags(Some("10"), Some("10")));
        assert!(!lags(Some("11"), Some("10")));
        assert!(lags(None, Some("10")));
        assert!(!lags(Some("10"), None));
    }

    #[test]
    fn a_cache_older_than_the_last_status_write_lags() {
        let memo = Memo {
            status_version: Some("11".into()),
            ..Memo::default()
        };
        let observed = observe(Inputs {
            now: Timestamp::now(),
            credential: Arc::new(credential()),
            client: None,
            target: None,
            refresh: None,
            subject: None,
            subject_target: None,
            memo: Some(&memo),
            policy: &Policy::default(),
        });
        assert!(observed.lag.credential && !observed.lag.target);
    }

    #[test]
    fn the_subject_token_is_read_from_the_access_token_or_the_authorization_key() {
        let mut s = secret(&[("access_token", "tok-1"), ("authorization", "Bearer tok-2")]);
        use secrecy::ExposeSecret;
        let token = |s: &Secret, a: &str| {
            subject_token_value(Some(s), a, "authorization").map(|t| t.expose_secret().to_owned())
        };
        assert_eq!(token(&s, "access_token").as_deref(), Some("tok-1"));
        assert_eq!(token(&s, "").as_deref(), Some("tok-2"));
        s.data
            .as_mut()
            .unwrap()
            .insert("authorization".into(), ByteString(b"Basic x".to_vec()));
        assert_eq!(token(&s, ""), None);
    }
}
