//! The Kubernetes wiring: watches, and a reconcile that gathers inputs, asks the planner and
//! carries out its plan.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};
use url::Url;

use crate::api::{
    AttemptInputs, CREDENTIAL_LABEL, ClientSecretRef, DsccCredential, DsccCredentialSpec,
    DsccCredentialStatus, MANAGED_BY_LABEL, MANAGER, REFRESH_ANNOTATION,
};
use crate::conditions::Reason;
use crate::dscc_api;
use crate::http::Readiness;
use crate::metrics::{CredentialLabels, Metrics};
use crate::planner::{
    self, ClientSecretState, Failure, IssueReason, Observed, Plan, Situation, TargetState,
    TokenHealth, TokenRecord,
};
use crate::rollout::{self, RestartOutcome};
use crate::schedule::{RefreshBefore, RetryPolicy, jitter_seed, parse_duration};
use crate::status::{self, StatusInputs};
use crate::target_secret;
use crate::token::{ClientCredentials, ClientSecret, TokenClient, TokenRequest};
use crate::{Error, KubeContext};

/// A source of the current time, replaceable in tests.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// How the controller behaves; set from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// How many credentials are reconciled at once.
    pub concurrency: u16,
    /// Spacing of retries after failed token requests.
    pub retry: RetryPolicy,
    /// Whether plain http token URLs are allowed (development only).
    pub allow_insecure_http: bool,
    /// How often a credential is looked at when nothing else brings it back.
    pub resync: Duration,
    /// Name of this operator instance in Events.
    pub instance: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: vec![],
            concurrency: 8,
            retry: RetryPolicy::default(),
            allow_insecure_http: false,
            resync: Duration::from_secs(30 * 60),
            instance: None,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    tokens: TokenClient,
    recorder: Recorder,
    clock: Arc<dyn Clock>,
    settings: Settings,
    metrics: Arc<Metrics>,
    own_status: OwnStatus,
}

/// The last status this operator wrote for each credential, with the resourceVersion it was
/// computed from, while the watch cache may not show it yet.
///
/// The cache lags behind our own writes: the watch event of the target Secret just written
/// often brings the credential back before the event of its new status does. A reconcile on
/// the old status wrote the same status again and listed Secrets again (about one extra
/// write and one extra LIST per token under load; see `make bench`). While the cache still
/// shows the version a written status was computed from, that status stands in for the
/// cached one.
#[derive(Default)]
struct OwnStatus(std::sync::Mutex<WrittenStatus>);

/// By credential uid: the resourceVersion a status was computed from, and the status.
type WrittenStatus = std::collections::HashMap<String, (String, DsccCredentialStatus)>;

impl OwnStatus {
    fn written(&self) -> std::sync::MutexGuard<'_, WrittenStatus> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `credential` with the status last written for it, if the cache has not caught up.
    fn overlay(&self, credential: Arc<DsccCredential>) -> Arc<DsccCredential> {
        let (Some(uid), Some(version)) = (
            credential.metadata.uid.as_deref(),
            credential.metadata.resource_version.as_deref(),
        ) else {
            return credential;
        };
        let mut written = self.written();
        match written.get(uid) {
            Some((from, status)) if from == version => {
                let mut current = (*credential).clone();
                current.status = Some(status.clone());
                Arc::new(current)
            }
            Some(_) => {
                // The cache has moved past the version the status was computed from.
                written.remove(uid);
                credential
            }
            None => credential,
        }
    }

    fn record(&self, credential: &DsccCredential, status: &DsccCredentialStatus) {
        if let (Some(uid), Some(version)) = (
            credential.metadata.uid.clone(),
            credential.metadata.resource_version.clone(),
        ) {
            self.written().insert(uid, (version, status.clone()));
        }
    }

    fn forget(&self, uid: &str) {
        self.written().remove(uid);
    }
}

impl Context {
    /// A context with the system clock.
    pub fn new(
        client: Client,
        tokens: TokenClient,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: settings.instance.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            tokens,
            clock: Arc::new(SystemClock),
            settings,
            metrics,
            own_status: OwnStatus::default(),
        }
    }
}

/// Runs the controller until `stop` turns true; marks `readiness` once every watch has
/// synced.
pub async fn run(
    ctx: Arc<Context>,
    stop: tokio::sync::watch::Receiver<bool>,
    readiness: Readiness,
) {
    let scopes: Vec<Option<String>> = if ctx.settings.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for namespace in scopes {
        let (store, controller) = scope(namespace, ctx.clone(), stop.clone());
        stores.push(store);
        controllers.push(controller);
    }
    let synced = async move {
        let waits = stores.iter().map(|store| store.wait_until_ready());
        if futures::future::try_join_all(waits).await.is_ok() {
            info!("watches synced; ready");
            readiness.set(true);
        }
    };
    futures::future::join(synced, futures::future::join_all(controllers)).await;
}

fn api_in<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One controller for one namespace (or all of them): its store, and the future that runs it.
fn scope(
    namespace: Option<String>,
    ctx: Arc<Context>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Store<DsccCredential>, impl std::future::Future<Output = ()>) {
    let ns = namespace.as_deref();
    let credentials: Api<DsccCredential> = api_in(&ctx.client, ns);
    // One metadata-only watch of Secrets, streamed and not cached: it maps each Secret event
    // by name to the credentials that read it (client Secret) or write it (target Secret),
    // foreign Secrets under a target name included. Secret data is only ever read by a GET
    // of the few Secrets a reconcile needs.
    let secret_meta: Api<PartialObjectMeta<Secret>> = api_in(&ctx.client, ns);
    // The controller never sees a credential once it is gone, so deletions are watched
    // separately (metadata only) to drop the credential's metric series and written status.
    let deletions = forget_deleted(api_in(&ctx.client, ns), ctx.clone());

    let controller = Controller::new(credentials, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency))
        .trigger_backoff(watch_backoff());
    let store = controller.store();
    let mapper_store = store.clone();
    info!(
        namespace = ns.unwrap_or("<all>"),
        "watching DsccCredentials"
    );
    let mut stop = stop;
    let run = controller
        .watches(
            secret_meta,
            watcher::Config::default().any_semantic(),
            move |secret| credentials_reading(&mapper_store, &secret),
        )
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(credential = %object, "reconciled"),
                Err(error) => debug!(%error, "reconcile did not complete"),
            }
        });
    let run = async move {
        let deletions = tokio::spawn(deletions);
        run.await;
        deletions.abort();
    };
    (store, run)
}

/// The pause of the watches after an error: doubling from 500 ms up to 5 s, reset by the next
/// event. kube's default (up to 30 s, one step more per error of any of the watches, which
/// share it) left the operator deaf to every change for over a minute after a 10-second
/// kube-apiserver outage: the resumed watches answer 410 Gone, each one more pause. A retry
/// every 5 s of a handful of watches is no burden to a struggling API server.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .into()
}

/// Drops the metric series and the remembered status of each credential that is deleted.
async fn forget_deleted(api: Api<PartialObjectMeta<DsccCredential>>, ctx: Arc<Context>) {
    let events = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        if let Ok(watcher::Event::Delete(object)) = event {
            if let Some(uid) = object.metadata.uid.as_deref() {
                ctx.own_status.forget(uid);
            }
            ctx.metrics.forget_credential(&CredentialLabels {
                namespace: object.namespace().unwrap_or_default(),
                name: object.name_any(),
            });
        }
    }
}

/// The credentials whose client Secret or target Secret is `secret`.
fn credentials_reading(
    store: &Store<DsccCredential>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DsccCredential>> {
    let namespace = secret.metadata.namespace.as_deref();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == namespace)
        .filter(|c| c.spec.client_secret_ref.name == name || c.target_name() == name)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

fn error_policy(credential: Arc<DsccCredential>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(credential = %credential.key(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Reads the credential's inputs, plans, and carries out the plan.
async fn reconcile(credential: Arc<DsccCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        namespace = credential.namespace().unwrap_or_default(),
        name = credential.name_any()
    );
    let started = std::time::Instant::now();
    let metrics = ctx.metrics.clone();
    let result = reconcile_credential(credential, ctx).instrument(span).await;
    let error = result.as_ref().err().map(Error::metric_label);
    metrics.reconciled(started.elapsed(), error);
    result
}

/// Publishes what `status` says about the credential's token as metrics.
fn observe(credential: &DsccCredential, status: &DsccCredentialStatus, ctx: &Context) {
    let ready = crate::conditions::find(&status.conditions, crate::conditions::READY)
        .map(|c| c.status == "True");
    ctx.metrics.observe_credential(
        &CredentialLabels {
            namespace: credential.namespace().unwrap_or_default(),
            name: credential.name_any(),
        },
        status.expires_at.as_ref().map(|t| t.0),
        status.renewal_time.as_ref().map(|t| t.0),
        ready,
    );
}

async fn reconcile_credential(
    credential: Arc<DsccCredential>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if credential.metadata.deletion_timestamp.is_some() {
        // The target Secret is garbage-collected through its owner reference.
        return Ok(Action::await_change());
    }
    let namespace = credential
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(credential.name_any()))?;
    let credential = ctx.own_status.overlay(credential);
    let mut gathered = gather(&credential, &namespace, &ctx).await?;
    let mut credential = credential;
    if let Plan::Issue(_) = gathered.plan {
        // The watch cache can lag behind our own last status write; a token request must
        // never be decided on stale bookkeeping, so look at the live object once more.
        let api: Api<DsccCredential> = Api::namespaced(ctx.client.clone(), &namespace);
        let live = api
            .get(&credential.name_any())
            .await
            .context(|| format!("reading DsccCredential {}", credential.key()))?;
        if live.resource_version() != credential.resource_version() {
            credential = Arc::new(live);
            gathered = gather(&credential, &namespace, &ctx).await?;
        }
    }
    match gathered.plan.clone() {
        Plan::Issue(reason) => issue(&credential, &namespace, gathered, reason, &ctx).await,
        Plan::Report {
            situation,
            token,
            requeue_at,
        } => {
            let notes = match (&situation, &gathered.observed.target) {
                (Situation::Ready, TargetState::Owned(Some(record))) => {
                    remove_stale_targets_if_renamed(&credential, &namespace, &ctx).await?;
                    restart_workloads(&credential, &namespace, record, &ctx).await
                }
                _ => vec![],
            };
            let report = Report {
                observed: &gathered.observed,
                situation: &situation,
                token,
                notes: &notes,
            };
            write_report(&credential, &namespace, report, &ctx).await?;
            Ok(requeue_at_or(requeue_at, &ctx))
        }
    }
}

/// What the status is computed from.
struct Report<'a> {
    observed: &'a Observed,
    situation: &'a Situation,
    token: TokenHealth,
    notes: &'a [String],
}

/// Computes the status, publishes it as metrics, and writes it when it changed.
async fn write_report(
    credential: &DsccCredential,
    namespace: &str,
    report: Report<'_>,
    ctx: &Context,
) -> Result<(), Error> {
    let next = status::next(&StatusInputs {
        current: credential.status.as_ref(),
        generation: report.observed.generation,
        secret_name: &credential.target_name(),
        target: &report.observed.target,
        failure: report.observed.failure.as_ref(),
        situation: report.situation,
        token: report.token,
        now: report.observed.now,
        notes: report.notes,
    });
    observe(credential, &next, ctx);
    if credential.status.as_ref() == Some(&next) {
        return Ok(());
    }
    announce_change(credential, report.situation, ctx).await;
    let api: Api<DsccCredential> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": "dscc.io/v1alpha1",
        "kind": "DsccCredential",
        "status": next,
    });
    api.patch_status(
        &credential.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .context(|| format!("writing status of DsccCredential {}", credential.key()))?;
    ctx.own_status.record(credential, &next);
    Ok(())
}

/// The inputs of a decision and the decision itself.
struct Gathered {
    observed: Observed,
    plan: Plan,
    credentials: Option<ClientCredentials>,
    token_url: Option<Url>,
}

async fn gather(
    credential: &DsccCredential,
    namespace: &str,
    ctx: &Context,
) -> Result<Gathered, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let reference = &credential.spec.client_secret_ref;
    let client_secret = secrets
        .get_opt(&reference.name)
        .await
        .context(|| format!("reading client Secret {namespace}/{}", reference.name))?;
    let (client, credentials) = read_client_secret(client_secret.as_ref(), reference);
    let target_name = credential.target_name();
    let target = secrets
        .get_opt(&target_name)
        .await
        .context(|| format!("reading target Secret {namespace}/{target_name}"))?;
    let target = target_secret::observe(target.as_ref(), credential);
    let (token_url, spec_problem) = check_spec(&credential.spec, ctx.settings.allow_insecure_http);
    let now = ctx.clock.now();
    let status = credential.status.as_ref();
    let issued_at = match &target {
        TargetState::Owned(Some(record)) => record.issued_at,
        _ => now,
    };
    let observed = Observed {
        now,
        generation: credential.metadata.generation.unwrap_or_default(),
        spec_hash: credential.spec.issuance_hash(),
        suspend: credential.spec.suspend,
        refresh_requested_at: credential.annotations().get(REFRESH_ANNOTATION).cloned(),
        refresh_before: refresh_before(&credential.spec),
        spec_problem,
        client,
        target,
        ever_issued: status.is_some_and(|s| s.issued_at.is_some()),
        failure: status::failure_record(status),
        jitter_seed: jitter_seed(
            credential.metadata.uid.as_deref().unwrap_or_default(),
            issued_at,
        ),
    };
    let plan = planner::plan(&observed);
    Ok(Gathered {
        observed,
        plan,
        credentials,
        token_url,
    })
}

/// The client credentials in `secret`, or why they cannot be used.
fn read_client_secret(
    secret: Option<&Secret>,
    reference: &ClientSecretRef,
) -> (ClientSecretState, Option<ClientCredentials>) {
    let Some(secret) = secret else {
        let state = ClientSecretState::Missing {
            name: reference.name.clone(),
        };
        return (state, None);
    };
    // A trailing newline from `echo ... | kubectl create secret` is a classic mistake that
    // the token endpoint would reject, so surrounding white space is dropped.
    let value = |key: &str| {
        let bytes = secret.data.as_ref()?.get(key)?;
        let text = std::str::from_utf8(&bytes.0).ok()?.trim();
        (!text.is_empty()).then(|| text.to_owned())
    };
    let missing = |key: &String| ClientSecretState::KeyMissing {
        name: reference.name.clone(),
        key: key.clone(),
    };
    let Some(client_id) = value(&reference.client_id_key) else {
        return (missing(&reference.client_id_key), None);
    };
    let Some(client_secret) = value(&reference.client_secret_key) else {
        return (missing(&reference.client_secret_key), None);
    };
    let credentials = ClientCredentials {
        client_id,
        client_secret: ClientSecret::new(client_secret),
    };
    let state = ClientSecretState::Present {
        fingerprint: target_secret::credentials_fingerprint(&credentials),
        version: secret.resource_version().unwrap_or_default(),
    };
    (state, Some(credentials))
}

/// What the API server's schema cannot check.
fn check_spec(
    spec: &DsccCredentialSpec,
    allow_insecure_http: bool,
) -> (Option<Url>, Option<String>) {
    let url = match Url::parse(&spec.token_url) {
        Ok(url) => url,
        Err(error) => {
            return (
                None,
                Some(format!("spec.tokenUrl is not a valid URL: {error}")),
            );
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => {
            let problem = "spec.tokenUrl uses plain http, which would expose the client secret; \
                           use https (plain http is only accepted when the operator runs with \
                           --allow-insecure-token-url, for development)";
            return (None, Some(problem.into()));
        }
        other => {
            return (
                None,
                Some(format!("spec.tokenUrl has scheme {other}; use https")),
            );
        }
    }
    if let Some(text) = &spec.refresh_before
        && let Err(error) = parse_duration(text)
    {
        return (Some(url), Some(format!("spec.refreshBefore: {error}")));
    }
    (Some(url), None)
}

fn refresh_before(spec: &DsccCredentialSpec) -> RefreshBefore {
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

/// Requests a token, verifies and writes it, or records the failure.
async fn issue(
    credential: &DsccCredential,
    namespace: &str,
    gathered: Gathered,
    reason: IssueReason,
    ctx: &Context,
) -> Result<Action, Error> {
    let Gathered {
        mut observed,
        credentials,
        token_url,
        ..
    } = gathered;
    let (
        Some(credentials),
        Some(token_url),
        ClientSecretState::Present {
            fingerprint,
            version,
        },
    ) = (credentials, token_url, observed.client.clone())
    else {
        unreachable!("the planner issues only with client credentials and a valid token URL");
    };
    let inputs = AttemptInputs {
        generation: observed.generation,
        client_secret_version: Some(version),
        refresh_requested_at: observed.refresh_requested_at.clone(),
    };
    let request = TokenRequest {
        token_url: &token_url,
        credentials: &credentials,
        auth_method: credential.spec.auth_method,
        scopes: &credential.spec.scopes,
    };
    info!(%reason, "requesting a token");
    let started = std::time::Instant::now();
    let result = ctx.tokens.exchange(&request, observed.now).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(error) => error.reason(),
    };
    let host = token_url.host_str().unwrap_or_default();
    ctx.metrics.token_request(host, outcome, started.elapsed());
    let token = match result {
        Ok(token) => token,
        Err(error) => {
            let failure = Failure {
                reason: Reason::parse(error.reason()).unwrap_or(Reason::TokenEndpointUnavailable),
                message: error.to_string(),
                permanent: error.is_permanent(),
                retry_after: error.retry_after(),
            };
            return record_failure(credential, namespace, observed, inputs, failure, ctx).await;
        }
    };

    let verification = match credential.spec.dscc_api_url() {
        Some(api_url) if credential.spec.verify => {
            match dscc_api::verify(ctx.tokens.http(), api_url, &token.access_token).await {
                Ok(verification) => Some(verification),
                Err(error) => {
                    let failure = Failure {
                        reason: Reason::VerifyFailed,
                        message: error.to_string(),
                        permanent: error.is_permanent(),
                        retry_after: None,
                    };
                    return record_failure(credential, namespace, observed, inputs, failure, ctx)
                        .await;
                }
            }
        }
        _ => None,
    };

    let secret = target_secret::build(
        credential,
        &token,
        &fingerprint,
        observed.refresh_requested_at.as_deref(),
        verification,
    );
    let target_name = credential.target_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    secrets
        .patch(
            &target_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .context(|| format!("writing target Secret {namespace}/{target_name}"))?;
    info!(expires_at = %token.expires_at, "token written to Secret {target_name}");
    let (event_reason, verb) = match reason {
        IssueReason::FirstToken => ("TokenIssued", "Issued"),
        _ => ("TokenRenewed", "Renewed"),
    };
    publish(
        credential,
        EventType::Normal,
        event_reason,
        format!(
            "{verb} a token valid until {} into Secret {target_name} ({reason})",
            token.expires_at
        ),
        ctx,
    )
    .await;
    remove_stale_targets_if_renamed(credential, namespace, ctx).await?;
    observed.target = target_secret::observe(Some(&secret), credential);
    let notes = match &observed.target {
        TargetState::Owned(Some(record)) => {
            restart_workloads(credential, namespace, record, ctx).await
        }
        _ => vec![],
    };
    observed.failure = None;
    observed.jitter_seed = jitter_seed(
        credential.metadata.uid.as_deref().unwrap_or_default(),
        token.issued_at,
    );
    observed.now = ctx.clock.now();
    report_after_attempt(credential, namespace, &observed, &notes, ctx).await
}

/// Writes what the planner makes of the world right after a token request. It answers
/// with a report: a token just written is fresh, and a failure just recorded waits for its
/// retry time.
async fn report_after_attempt(
    credential: &DsccCredential,
    namespace: &str,
    observed: &Observed,
    notes: &[String],
    ctx: &Context,
) -> Result<Action, Error> {
    match planner::plan(observed) {
        Plan::Report {
            situation,
            token,
            requeue_at,
        } => {
            let report = Report {
                observed,
                situation: &situation,
                token,
                notes,
            };
            write_report(credential, namespace, report, ctx).await?;
            Ok(requeue_at_or(requeue_at, ctx))
        }
        Plan::Issue(reason) => {
            // Never two requests in a row from one reconcile; look again in a moment.
            warn!(%reason, "the planner asked for another token right after an attempt");
            Ok(Action::requeue(Duration::from_secs(5)))
        }
    }
}

/// Records a failed attempt in the status, keeping the token in place.
async fn record_failure(
    credential: &DsccCredential,
    namespace: &str,
    mut observed: Observed,
    inputs: AttemptInputs,
    failure: Failure,
    ctx: &Context,
) -> Result<Action, Error> {
    // Backoff and Retry-After count from the answer, not from when the request was planned.
    observed.now = ctx.clock.now();
    let record = planner::after_failure(&observed, inputs, &failure, &ctx.settings.retry);
    warn!(
        reason = %failure.reason,
        attempts = record.attempts,
        next_retry = %record.next_retry,
        "token request failed: {}",
        failure.message
    );
    observed.failure = Some(record);
    let action = report_after_attempt(credential, namespace, &observed, &[], ctx).await?;
    publish(
        credential,
        EventType::Warning,
        failure.reason.as_str(),
        failure.message.clone(),
        ctx,
    )
    .await;
    Ok(action)
}

/// Restarts the credential's rollout restart targets that do not yet run with the token of
/// `record`; returns remarks for the Ready message about targets that could not be
/// restarted (they never fail the token).
async fn restart_workloads(
    credential: &DsccCredential,
    namespace: &str,
    record: &TokenRecord,
    ctx: &Context,
) -> Vec<String> {
    let stamp = rollout::stamp(record);
    let mut notes = vec![];
    for target in &credential.spec.rollout_restart_targets {
        let what = format!("{:?} {}", target.kind, target.name);
        let (note, event) = match rollout::restart(&ctx.client, namespace, target, &stamp).await {
            Ok(RestartOutcome::UpToDate) => continue,
            Ok(RestartOutcome::Restarted) => {
                info!("restarted {what} for the new token");
                let note = format!("Restarted {what} for the token issued at {stamp}");
                publish(credential, EventType::Normal, "RolloutRestarted", note, ctx).await;
                continue;
            }
            Ok(RestartOutcome::NotFound) => {
                let note = format!("rollout restart target {what} not found in {namespace}");
                (note, "RolloutRestartTargetNotFound")
            }
            Err(error) => {
                let note = format!("could not restart {what}: {error}");
                (note, "RolloutRestartFailed")
            }
        };
        let already_reported = credential
            .status
            .as_ref()
            .and_then(|s| crate::conditions::find(&s.conditions, crate::conditions::READY))
            .is_some_and(|c| c.message.contains(&note));
        if !already_reported {
            warn!("{note}");
            publish(credential, EventType::Warning, event, note.clone(), ctx).await;
        }
        notes.push(note);
    }
    notes
}

/// Tells in an Event what a status-only change means, once, when it first appears.
async fn announce_change(credential: &DsccCredential, situation: &Situation, ctx: &Context) {
    let current_reason = credential
        .status
        .as_ref()
        .and_then(|s| crate::conditions::find(&s.conditions, crate::conditions::READY))
        .map(|c| c.reason.clone());
    let (reason, message) = match situation {
        Situation::Blocked { reason, message } => (*reason, message.clone()),
        Situation::Suspended => (Reason::Suspended, "Renewals are suspended".to_owned()),
        _ => return,
    };
    if current_reason.as_deref() != Some(reason.as_str()) {
        let kind = if matches!(situation, Situation::Suspended) {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(credential, kind, reason.as_str(), message, ctx).await;
    }
}

/// Deletes Secrets this credential created under an earlier target name, when the status
/// does not yet name the current one (a first token, a new `spec.target.name`, or a crash
/// between writing the Secret and the status). Steady renewals skip the LIST.
async fn remove_stale_targets_if_renamed(
    credential: &DsccCredential,
    namespace: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let target_name = credential.target_name();
    let recorded = credential
        .status
        .as_ref()
        .and_then(|s| s.secret_name.as_deref());
    if recorded == Some(target_name.as_str()) {
        return Ok(());
    }
    remove_stale_targets(credential, namespace, &target_name, ctx).await
}

/// Deletes Secrets this credential created under an earlier target name.
async fn remove_stale_targets(
    credential: &DsccCredential,
    namespace: &str,
    current: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let secrets: Api<PartialObjectMeta<Secret>> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!(
        "{MANAGED_BY_LABEL}={MANAGER},{CREDENTIAL_LABEL}={}",
        credential.name_any()
    );
    let owned = secrets
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .context(|| format!("listing Secrets of {}", credential.key()))?;
    let uid = credential.metadata.uid.as_deref();
    for secret in owned.items {
        let ours = secret
            .owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid);
        let name = secret.name_any();
        if ours && name != current {
            info!("deleting Secret {name}, the previous target");
            secrets
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .context(|| format!("deleting previous target Secret {namespace}/{name}"))?;
        }
    }
    Ok(())
}

fn ignore_not_found(error: kube::Error) -> Result<(), kube::Error> {
    match &error {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        _ => Err(error),
    }
}

async fn publish(
    credential: &DsccCredential,
    type_: EventType,
    reason: &str,
    note: String,
    ctx: &Context,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx
        .recorder
        .publish(&event, &credential.object_ref(&()))
        .await
    {
        // Events are best effort; the status carries the same information.
        warn!(%error, "could not publish an Event");
    }
}

fn requeue_at_or(at: Option<Timestamp>, ctx: &Context) -> Action {
    let resync = ctx.settings.resync;
    let delay = match at {
        Some(at) => {
            let until = at.duration_since(ctx.clock.now());
            Duration::try_from(until)
                .unwrap_or(Duration::ZERO)
                .min(resync)
        }
        None => resync,
    };
    // A deadline that has just passed still needs a moment for clocks to agree.
    Action::requeue(delay.max(Duration::from_millis(200)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TargetSpec;

    fn spec(url: &str) -> DsccCredentialSpec {
        DsccCredentialSpec {
            client_secret_ref: ClientSecretRef {
                name: "client".into(),
                client_id_key: "client_id".into(),
                client_secret_key: "client_secret".into(),
            },
            token_url: url.into(),
            auth_method: Default::default(),
            scopes: vec![],
            region: None,
            refresh_before: None,
            refresh_before_percentage: None,
            target: TargetSpec::default(),
            api_url: None,
            verify: false,
            rollout_restart_targets: vec![],
            suspend: false,
        }
    }

    #[test]
    fn watches_pause_from_half_a_second_doubling_up_to_five_seconds_after_errors() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = watch_backoff();
        let pauses: Vec<u64> = backoff
            .by_ref()
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn a_status_just_written_stands_in_for_the_cached_one_until_the_cache_catches_up() {
        let mut cached = DsccCredential::new("reports", spec("https://x"));
        cached.metadata.uid = Some("uid-1".into());
        cached.metadata.resource_version = Some("10".into());
        let written = DsccCredentialStatus {
            secret_name: Some("reports-token".into()),
            ..Default::default()
        };
        let own = OwnStatus::default();
        own.record(&cached, &written);

        let seen = own.overlay(Arc::new(cached.clone()));
        assert_eq!(seen.status.as_ref(), Some(&written));

        cached.metadata.resource_version = Some("11".into());
        let seen = own.overlay(Arc::new(cached.clone()));
        assert_eq!(
            seen.status, None,
            "the cache has moved on; its status counts"
        );
        cached.metadata.resource_version = Some("10".into());
        assert_eq!(own.overlay(Arc::new(cached)).status, None, "forgotten");
    }

    #[test]
    fn plain_http_token_urls_are_refused_unless_allowed() {
        let (_, problem) = check_spec(&spec("http://127.0.0.1:8080/token"), false);
        assert!(problem.unwrap().contains("--allow-insecure-token-url"));
        let (url, problem) = check_spec(&spec("http://127.0.0.1:8080/token"), true);
        assert!(problem.is_none() && url.is_some());
        let (_, problem) = check_spec(
            &spec("https://sso.common.cloud.hpe.com/as/token.oauth2"),
            false,
        );
        assert!(problem.is_none());
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
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn neither_the_observation_nor_the_plan_carries_the_client_secret() {
        let reference = spec("https://x").client_secret_ref;
        let client_secret = secret(&[("client_id", "id"), ("client_secret", "s3cret-value-123")]);
        let (client, credentials) = read_client_secret(Some(&client_secret), &reference);
        let observed = Observed {
            now: Timestamp::now(),
            generation: 1,
            spec_hash: "spec".into(),
            suspend: false,
            refresh_requested_at: None,
            refresh_before: RefreshBefore::Default,
            spec_problem: None,
            client,
            target: TargetState::Foreign {
                name: "someone-elses".into(),
            },
            ever_issued: false,
            failure: None,
            jitter_seed: 0,
        };
        let plan = planner::plan(&observed);
        for text in [
            format!("{observed:?}"),
            format!("{plan:?}"),
            format!("{credentials:?}"),
        ] {
            assert!(!text.contains("s3cret-value-123"), "leaked in {text}");
        }
    }

    #[test]
    fn client_secret_values_are_trimmed_and_empty_ones_count_as_missing() {
        let reference = spec("https://x").client_secret_ref;
        let (state, credentials) = read_client_secret(
            Some(&secret(&[
                ("client_id", "id\n"),
                ("client_secret", " s3cret\n"),
            ])),
            &reference,
        );
        assert!(matches!(state, ClientSecretState::Present { ref version, .. } if version == "42"));
        let credentials = credentials.unwrap();
        assert_eq!(credentials.client_id, "id");
        assert_eq!(credentials.client_secret.expose_secret(), "s3cret");

        let (state, _) = read_client_secret(
            Some(&secret(&[("client_id", "id"), ("client_secret", "  ")])),
            &reference,
        );
        assert_eq!(
            state,
            ClientSecretState::KeyMissing {
                name: "client".into(),
                key: "client_secret".into()
            }
        );
        let (state, _) = read_client_secret(None, &reference);
        assert_eq!(
            state,
            ClientSecretState::Missing {
                name: "client".into()
            }
        );
    }
}
