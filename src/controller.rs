//! The Kubernetes wiring: the watches, and a reconcile that observes, asks the planner for
//! one step at a time, carries it out and hands the outcome back.
//!
//! Nothing here chooses what to do: [`reconcile`] runs the planner's steps and [`act`] maps
//! each step to its API call. The decisions are in `observe` and `planner`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{DsccCredential, MANAGER};
use crate::leader::Leadership;
use crate::lock;
use crate::metrics::{CredentialLabels, Metrics};
use crate::minter::Minter;
use crate::observe::{self, Inputs, Observed, Policy};
use crate::ops_server::Readiness;
use crate::own_writes::OwnWrites;
use crate::planner::{self, Reconcile};
use crate::reason::{Failure, Reason};
use crate::rollout::Restarter;
use crate::secret_index::{KnownFingerprint, SecretIndex, SecretKey};
use crate::steps::{Finish, Outcome, SecretWrite, Step, WriteError, WriteMode, Written};
use crate::{Error, verify};

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
    /// Only credentials with these labels (a label selector), to split credentials between
    /// several operator Deployments.
    pub label_selector: Option<String>,
    /// How many credentials are reconciled at once.
    pub concurrency: u16,
    /// What shapes the decisions.
    pub policy: Policy,
    /// Name of this operator instance in Events.
    pub instance: Option<String>,
    /// Restarts of one workload asked for within this window become one.
    pub rollout_batch_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: vec![],
            label_selector: None,
            concurrency: 8,
            policy: Policy::default(),
            instance: None,
            rollout_batch_window: Duration::from_secs(2),
        }
    }
}

/// Where a scope's controller is told to reconcile a credential again.
type Trigger = futures::channel::mpsc::UnboundedSender<ObjectRef<DsccCredential>>;

/// What every reconcile shares.
pub struct Context {
    client: Client,
    minter: Arc<Minter>,
    restarter: Arc<Restarter>,
    recorder: Recorder,
    clock: Arc<dyn Clock>,
    settings: Settings,
    metrics: Arc<Metrics>,
    index: Arc<SecretIndex>,
    own_writes: OwnWrites,
    stores: Mutex<Vec<Store<DsccCredential>>>,
    triggers: Mutex<Vec<(Option<String>, Trigger)>>,
    api_failures: Mutex<HashMap<ObjectRef<DsccCredential>, u32>>,
    leadership: Leadership,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        minter: Arc<Minter>,
        settings: Settings,
        metrics: Arc<Metrics>,
        leadership: Leadership,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: settings.instance.clone(),
        };
        let restarter = Restarter::new(
            client.clone(),
            settings.rollout_batch_window,
            metrics.clone(),
        );
        let ctx = Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            minter,
            restarter,
            clock,
            settings,
            metrics,
            index: Arc::new(SecretIndex::default()),
            own_writes: OwnWrites::default(),
            stores: Mutex::new(vec![]),
            triggers: Mutex::new(vec![]),
            api_failures: Mutex::new(HashMap::new()),
            leadership,
        });
        let weak = Arc::downgrade(&ctx);
        ctx.minter.set_notify(Arc::new(move |member| {
            if let Some(ctx) = weak.upgrade() {
                ctx.trigger(member);
            }
        }));
        ctx
    }

    /// Brings `credential` back for a reconcile.
    fn trigger(&self, credential: ObjectRef<DsccCredential>) {
        for (namespace, sender) in lock(&self.triggers).iter() {
            if namespace.is_none() || *namespace == credential.namespace {
                let _ = sender.unbounded_send(credential.clone());
            }
        }
    }

    fn cached(&self, reference: &ObjectRef<DsccCredential>) -> Option<Arc<DsccCredential>> {
        lock(&self.stores)
            .iter()
            .find_map(|store| store.get(reference))
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
    let synced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = scopes.len();
    let mut controllers = Vec::new();
    for namespace in scopes {
        let on_synced = {
            let synced = synced.clone();
            let readiness = readiness.clone();
            move || {
                if synced.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == total {
                    info!("watches synced; ready");
                    readiness.set(true);
                }
            }
        };
        controllers.push(scope(namespace, ctx.clone(), stop.clone(), on_synced));
    }
    let prune = {
        let ctx = ctx.clone();
        async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(60));
            loop {
                ticks.tick().await;
                ctx.minter.prune(ctx.clock.now());
            }
        }
    };
    tokio::select! {
        _ = futures::future::join_all(controllers) => {}
        () = prune => {}
        () = watch_clock(&ctx) => {}
    }
}

/// How often the wall clock is compared with the monotonic one.
const CLOCK_CHECK: Duration = Duration::from_secs(5);

/// A difference between the two clocks over one check that counts as a step.
const CLOCK_STEP: SignedDuration = SignedDuration::from_secs(2);

/// How far the wall clock stepped while `monotonic` passed, if it stepped at all.
pub fn clock_step(wall: SignedDuration, monotonic: Duration) -> Option<SignedDuration> {
    let monotonic = SignedDuration::try_from(monotonic).unwrap_or(SignedDuration::MAX);
    let step = wall.checked_sub(monotonic)?;
    (step.abs() >= CLOCK_STEP).then_some(step)
}

/// Renewals wait on the monotonic clock, but are planned from the wall clock (expiry times
/// are wall-clock times). When the wall clock steps (a corrected host clock, a resumed VM),
/// the waits no longer match the plan: a step forward of an hour would leave tokens that
/// are now due waiting an hour more. Every credential is planned again after a step.
async fn watch_clock(ctx: &Context) {
    let mut ticks = tokio::time::interval(CLOCK_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut wall = ctx.clock.now();
    let mut monotonic = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        let (wall_now, monotonic_now) = (ctx.clock.now(), tokio::time::Instant::now());
        let stepped = clock_step(
            wall_now.duration_since(wall),
            monotonic_now.duration_since(monotonic),
        );
        (wall, monotonic) = (wall_now, monotonic_now);
        let Some(step) = stepped else { continue };
        let credentials: Vec<ObjectRef<DsccCredential>> = lock(&ctx.stores)
            .iter()
            .flat_map(|store| store.state())
            .map(|credential| ObjectRef::from_obj(&*credential))
            .collect();
        warn!(
            step_seconds = step.as_secs(),
            credentials = credentials.len(),
            "the wall clock stepped; planning every credential again"
        );
        for credential in credentials {
            ctx.trigger(credential);
        }
    }
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

/// The pause of the watches after an error: doubling from 500 ms up to 5 s, reset by the next
/// event. kube's default (up to 30 s) left the operator deaf to every change for over a
/// minute after a 10-second kube-apiserver outage: the resumed watches answer 410 Gone, each
/// one more pause. A retry every 5 s of a handful of watches is no burden to the API server.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .into()
}

/// The cached credential without what the operator never reads. kube's watcher-stream
/// `modify` is the smallest supported way to change objects before the reflector stores them
/// (it needs the controller's stream interface, `unstable-runtime`): managedFields and
/// kubectl's last-applied annotation are most of a credential's size.
pub fn strip(credential: &mut DsccCredential) {
    credential.managed_fields_mut().clear();
    credential
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// One controller for one namespace (or all of them).
fn scope(
    namespace: Option<String>,
    ctx: Arc<Context>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    on_synced: impl FnOnce() + Send + 'static,
) -> impl std::future::Future<Output = ()> {
    let ns = namespace.as_deref();
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &ctx.settings.label_selector {
        config = config.labels(selector);
    }
    let (reader, writer) = reflector::store();
    lock(&ctx.stores).push(reader.clone());
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    lock(&ctx.triggers).push((namespace.clone(), sender));

    // "Listed" is signalled from this stream: kube's Store::wait_until_ready wakes only one of
    // several concurrent waiters (its oneshot receiver keeps one waker), and the controller
    // itself is one of them.
    let (listed, listed_receiver) = tokio::sync::watch::channel(false);
    let events_ctx = ctx.clone();
    let credentials = watcher(api_in::<DsccCredential>(&ctx.client, ns), config)
        .backoff(watch_backoff())
        .modify(strip)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                credential_event(event, &events_ctx);
                if matches!(event, watcher::Event::InitDone) {
                    listed.send_replace(true);
                }
            }
        })
        .applied_objects();

    // The metadata of every Secret, streamed and never cached: the index keeps facts only of
    // the Secrets a credential uses. It starts once the credentials are listed, so that the
    // index knows every Secret name in use when the first Secret list arrives. It runs as a
    // task of its own that feeds the controller's trigger channel.
    let secrets_api: Api<PartialObjectMeta<Secret>> = api_in(&ctx.client, ns);
    let secret_watch = tokio::spawn(watch_secrets(
        secrets_api,
        namespace.clone(),
        listed_receiver,
        ctx.index.clone(),
        sender_of(&ctx, &namespace),
        on_synced,
    ));
    info!(
        namespace = ns.unwrap_or("<all>"),
        "watching DsccCredentials"
    );
    Controller::for_stream(credentials, reader)
        .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency))
        .reconcile_on(receiver)
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(credential = %object, "reconciled"),
                Err(error) => debug!(%error, "reconcile did not complete"),
            }
        })
        .then(move |()| async move { secret_watch.abort() })
}

fn sender_of(ctx: &Context, namespace: &Option<String>) -> Trigger {
    lock(&ctx.triggers)
        .iter()
        .find(|(ns, _)| ns == namespace)
        .map(|(_, sender)| sender.clone())
        .expect("registered above")
}

/// Watches Secret metadata once the credentials are listed; brings back the credentials a
/// Secret event concerns.
async fn watch_secrets(
    api: Api<PartialObjectMeta<Secret>>,
    namespace: Option<String>,
    mut listed: tokio::sync::watch::Receiver<bool>,
    index: Arc<SecretIndex>,
    trigger: Trigger,
    on_synced: impl FnOnce() + Send + 'static,
) {
    if listed.wait_for(|listed| *listed).await.is_err() {
        return;
    }
    debug!("credentials listed; watching Secrets");
    let mut on_synced = Some(on_synced);
    let events = watcher(api, watcher::Config::default().any_semantic()).backoff(watch_backoff());
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                for credential in secret_event(event, namespace.as_deref(), &index, &mut on_synced)
                {
                    let _ = trigger.unbounded_send(credential);
                }
            }
            Err(error) => debug!(%error, "Secret watch error; it resumes"),
        }
    }
}

/// Keeps the index, the token groups and the metrics in step with the credential watch.
fn credential_event(event: &watcher::Event<DsccCredential>, ctx: &Context) {
    match event {
        watcher::Event::Apply(credential) | watcher::Event::InitApply(credential) => {
            index_credential(credential, ctx);
            // Its exchangers learn its target name, and are told when it changes.
            let subject = (
                credential.namespace().unwrap_or_default(),
                credential.name_any(),
            );
            for tenant in ctx.index.exchangers(&subject) {
                if let Some(tenant) = ctx.cached(&tenant) {
                    index_credential(&tenant, ctx);
                }
                ctx.trigger(tenant);
            }
        }
        watcher::Event::Delete(credential) => {
            let reference = ObjectRef::from_obj(credential);
            ctx.index.remove(&reference);
            ctx.minter.leave(&reference);
            if let Some(uid) = credential.uid() {
                ctx.own_writes.forget(&uid);
            }
            lock(&ctx.api_failures).remove(&reference);
            ctx.metrics.forget_credential(&CredentialLabels {
                namespace: credential.namespace().unwrap_or_default(),
                name: credential.name_any(),
            });
            let subject = (
                credential.namespace().unwrap_or_default(),
                credential.name_any(),
            );
            for tenant in ctx.index.exchangers(&subject) {
                ctx.trigger(tenant);
            }
        }
        watcher::Event::Init => debug!("listing DsccCredentials"),
        watcher::Event::InitDone => debug!("DsccCredentials listed"),
    }
}

fn index_credential(credential: &DsccCredential, ctx: &Context) {
    let subject_target = credential
        .spec
        .token_exchange
        .as_ref()
        .and_then(|exchange| {
            let reference = ObjectRef::new(&exchange.subject_credential_ref.name)
                .within(&credential.namespace().unwrap_or_default());
            ctx.cached(&reference).map(|subject| subject.target_name())
        });
    ctx.index.upsert(credential, subject_target);
}

/// Records a Secret event in the index; returns the credentials it concerns.
fn secret_event(
    event: watcher::Event<PartialObjectMeta<Secret>>,
    namespace: Option<&str>,
    index: &SecretIndex,
    on_synced: &mut Option<impl FnOnce()>,
) -> Vec<ObjectRef<DsccCredential>> {
    let refs = secret_event_refs(event, namespace, index, on_synced);
    if !refs.is_empty() {
        debug!(credentials = refs.len(), "a Secret they use changed");
    }
    refs
}

fn secret_event_refs(
    event: watcher::Event<PartialObjectMeta<Secret>>,
    namespace: Option<&str>,
    index: &SecretIndex,
    on_synced: &mut Option<impl FnOnce()>,
) -> Vec<ObjectRef<DsccCredential>> {
    match event {
        watcher::Event::Init => {
            index.relist_started(namespace);
            vec![]
        }
        watcher::Event::InitApply(secret) | watcher::Event::Apply(secret) => {
            index.secret_applied(&secret.metadata)
        }
        watcher::Event::Delete(secret) => index.secret_deleted(&secret.metadata),
        watcher::Event::InitDone => {
            if let Some(on_synced) = on_synced.take() {
                on_synced();
            }
            index.relist_done(namespace)
        }
    }
}

/// Backs off after a reconcile that could not complete: what the user must fix slowly, a
/// passing API server problem exponentially, never in a flat loop.
fn error_policy(credential: Arc<DsccCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    let reference = ObjectRef::from_obj(credential.as_ref());
    let attempts = {
        let mut failures = lock(&ctx.api_failures);
        let attempts = failures.entry(reference).or_default();
        *attempts = attempts.saturating_add(1);
        *attempts
    };
    let permanent = error.is_permanent();
    let seed = crate::schedule::jitter_seed(&credential.uid().unwrap_or_default(), ctx.clock.now());
    let delay = ctx
        .settings
        .policy
        .retry
        .delay(attempts, permanent, None, seed);
    warn!(credential = %credential.key(), %error, attempts, retry_in = ?delay, "reconcile failed; backing off");
    Action::requeue(delay)
}

/// Observes, then carries out the planner's steps one by one.
async fn reconcile(credential: Arc<DsccCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        namespace = credential.namespace().unwrap_or_default(),
        name = credential.name_any()
    );
    let started = std::time::Instant::now();
    let result = run_steps(credential, &ctx).instrument(span).await;
    ctx.metrics.reconciled(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    result
}

async fn run_steps(credential: Arc<DsccCredential>, ctx: &Context) -> Result<Action, Error> {
    let reference = ObjectRef::from_obj(credential.as_ref());
    let uid = credential.uid().unwrap_or_default();
    let memo = ctx.own_writes.get(&uid);
    let mut reconcile = Reconcile::new(observe_cached(credential, memo.as_ref(), ctx));
    let finish = loop {
        match reconcile.next_step() {
            Step::Done(finish) => break finish,
            step => {
                debug!(?step, "step");
                let outcome = act(&step, &reconcile.observed, &reference, ctx).await;
                reconcile.record(&step, outcome, ctx.clock.now());
            }
        }
    };
    debug!(
        ?finish,
        target = reconcile.observed.target.kind(),
        client = reconcile.observed.client.kind(),
        cached_version = ?reconcile.observed.credential.resource_version(),
        written_status = ?memo.as_ref().and_then(|m| m.status_version.clone()),
        written_target = ?memo.as_ref().and_then(|m| m.target.clone()),
        "reconcile finished"
    );
    // A reconcile that found the caches behind decided nothing: it only notes since when.
    let remembered = match finish {
        Finish::CacheLags => reconcile.memo_after_lag(memo.as_ref()),
        _ => reconcile.memo(memo.as_ref()),
    };
    ctx.own_writes.put(&uid, remembered);
    publish_metrics(&reconcile, ctx);
    let resync =
        Duration::try_from(ctx.settings.policy.resync).unwrap_or(Duration::from_secs(1800));
    let action = match planner::requeue_after(&finish, ctx.clock.now(), resync) {
        Some(delay) => Action::requeue(delay),
        None => Action::await_change(),
    };
    match finish {
        Finish::ApiError(failure) => Err(Error::Api(failure)),
        _ => {
            lock(&ctx.api_failures).remove(&reference);
            Ok(action)
        }
    }
}

/// The observation from what the caches and the operator's memory hold.
fn observe_cached(
    credential: Arc<DsccCredential>,
    memo: Option<&observe::Memo>,
    ctx: &Context,
) -> Observed {
    let namespace = credential.namespace().unwrap_or_default();
    let key = |name: &str| -> SecretKey { (namespace.clone(), name.to_owned()) };
    let client = credential
        .spec
        .client_secret_ref
        .as_ref()
        .and_then(|r| ctx.index.facts(&key(&r.name)));
    let subject = credential
        .spec
        .token_exchange
        .as_ref()
        .and_then(|exchange| {
            ctx.cached(&ObjectRef::new(&exchange.subject_credential_ref.name).within(&namespace))
        });
    let subject_target = subject
        .as_ref()
        .and_then(|s| ctx.index.facts(&key(&s.target_name())));
    observe::observe(Inputs {
        now: ctx.clock.now(),
        target: ctx.index.facts(&key(&credential.target_name())),
        refresh: ctx.index.facts(&key(&credential.refresh_secret_name())),
        client,
        subject,
        subject_target,
        memo,
        policy: &ctx.settings.policy,
        credential,
    })
}

fn publish_metrics(reconcile: &Reconcile, ctx: &Context) {
    let Some(status) = reconcile.status() else {
        return;
    };
    let o = &reconcile.observed;
    let ready = crate::conditions::find(&status.conditions, crate::conditions::READY)
        .map(|c| c.status == "True");
    ctx.metrics.observe_credential(
        &CredentialLabels {
            namespace: o.spec.namespace.clone(),
            name: o.credential.name_any(),
        },
        status.expires_at.as_ref().map(|t| t.0),
        status.renewal_time.as_ref().map(|t| t.0),
        ready,
    );
}

/// Whether a step changes anything outside the process (a replica that lost its Lease must
/// not take it).
fn has_effects(step: &Step) -> bool {
    matches!(
        step,
        Step::ObtainToken(_)
            | Step::WriteSecret(_)
            | Step::DeleteSecret { .. }
            | Step::RestartWorkload { .. }
            | Step::WriteStatus(_)
    )
}

/// Carries out one step.
async fn act(
    step: &Step,
    o: &Observed,
    reference: &ObjectRef<DsccCredential>,
    ctx: &Context,
) -> Outcome {
    if has_effects(step) && !ctx.leadership.is_leader() {
        return Outcome::NotLeader;
    }
    let namespace = o.spec.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match step {
        Step::ReadClientSecret => {
            let Some(client) = &o.credential.spec.client_secret_ref else {
                return Outcome::Read(Ok(None));
            };
            let read = read_secret(&secrets, namespace, &client.name, "client", ctx).await;
            if let Ok(secret) = &read {
                let result = secret.as_ref().map(|secret| {
                    observe::read_credentials(secret, client).map(|credentials| {
                        let fingerprint =
                            crate::target_secret::credentials_fingerprint(&credentials);
                        (credentials.client_id, fingerprint)
                    })
                });
                if let (Some(secret), Some(result)) = (secret, result) {
                    ctx.index.remember_fingerprint(
                        &(namespace.to_owned(), client.name.clone()),
                        KnownFingerprint {
                            resource_version: secret.resource_version().unwrap_or_default(),
                            keys: (
                                client.client_id_key.clone(),
                                client.client_secret_key.clone(),
                            ),
                            result,
                        },
                    );
                }
            }
            Outcome::Read(read)
        }
        Step::ReadCredential => {
            let api: Api<DsccCredential> = Api::namespaced(ctx.client.clone(), namespace);
            let name = o.credential.name_any();
            Outcome::Credential(
                api.get_opt(&name)
                    .await
                    .map(|c| c.map(Box::new))
                    .map_err(|e| {
                        Failure::from_kube(
                            &e,
                            Reason::KubernetesApiUnavailable,
                            &format!("reading DsccCredential {namespace}/{name}"),
                        )
                    }),
            )
        }
        Step::ReadTarget => Outcome::Read(
            read_secret(&secrets, namespace, &o.spec.target_name, "target", ctx).await,
        ),
        Step::ReadRefreshSecret => Outcome::Read(
            read_secret(
                &secrets,
                namespace,
                &o.spec.refresh_secret_name,
                "refresh-token",
                ctx,
            )
            .await,
        ),
        Step::ReadSubjectToken => {
            let name = match o.subject.as_ref().map(|s| &s.token) {
                Some(observe::SubjectToken::Ready { secret, .. }) => secret.clone(),
                _ => return Outcome::Read(Ok(None)),
            };
            Outcome::Read(read_secret(&secrets, namespace, &name, "subject token", ctx).await)
        }
        Step::ReadSecret { name } => Outcome::Read(secrets.get_opt(name).await.map_err(|e| {
            Failure::from_kube(
                &e,
                Reason::KubernetesApiUnavailable,
                &format!("reading Secret {namespace}/{name}"),
            )
        })),
        Step::ConsultGroup(key) => Outcome::Group(ctx.minter.consult(key, reference)),
        Step::ObtainToken(order) => Outcome::Token(ctx.minter.obtain(order, reference).await),
        Step::Verify { api_url, token } => Outcome::Verified(
            verify::verify(
                ctx.minter.client().http(),
                api_url,
                token,
                ctx.settings.policy.allow_insecure_http,
            )
            .await
            .map_err(|e| e.to_failure()),
        ),
        Step::WriteSecret(write) => {
            let written = write_secret(&secrets, namespace, write).await;
            if written.is_ok()
                && let Some(hash) = &write.token_hash
            {
                ctx.minter.stored(reference, hash);
            }
            Outcome::Written(written)
        }
        Step::DeleteSecret {
            name,
            uid,
            resource_version,
        } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: Some(resource_version.clone()),
                }),
                ..DeleteParams::default()
            };
            info!("deleting Secret {name}, the previous target");
            Outcome::Deleted(match secrets.delete(name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(Failure::from_kube(
                    &e,
                    Reason::KubernetesApiUnavailable,
                    &format!("deleting Secret {namespace}/{name}"),
                )),
            })
        }
        Step::RestartWorkload { target, stamp } => {
            Outcome::Restarted(ctx.restarter.restart(namespace, target, stamp).await)
        }
        Step::PublishEvent(note) => {
            let event = Event {
                type_: if note.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: note.reason.clone(),
                note: Some(note.note.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(error) = ctx
                .recorder
                .publish(&event, &o.credential.object_ref(&()))
                .await
            {
                // Events are best effort; the status carries the same information.
                warn!(%error, "could not publish an Event");
            }
            Outcome::Published
        }
        Step::WriteStatus(status) => {
            let api: Api<DsccCredential> = Api::namespaced(ctx.client.clone(), namespace);
            let patch = json!({
                "apiVersion": "dscc.io/v1alpha1",
                "kind": "DsccCredential",
                "status": status,
            });
            let name = o.credential.name_any();
            Outcome::StatusWritten(
                api.patch_status(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map(|written| written.resource_version().unwrap_or_default())
                .map_err(|e| {
                    Failure::from_kube(
                        &e,
                        Reason::KubernetesApiUnavailable,
                        &format!("writing the status of DsccCredential {namespace}/{name}"),
                    )
                }),
            )
        }
        Step::Done(_) => Outcome::Published,
    }
}

/// A GET; what it finds goes into the index (unless the watch already knows better).
async fn read_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    what: &str,
    ctx: &Context,
) -> Result<Option<Secret>, Failure> {
    let secret = secrets.get_opt(name).await.map_err(|e| {
        Failure::from_kube(
            &e,
            Reason::KubernetesApiUnavailable,
            &format!("reading the {what} Secret {namespace}/{name}"),
        )
    })?;
    ctx.index.seed(
        &(namespace.to_owned(), name.to_owned()),
        observe::facts_of(secret.as_ref()),
    );
    Ok(secret)
}

/// Writes a Secret without ever taking over someone else's: a create fails if one appeared,
/// an update only applies to the version that was read.
async fn write_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    write: &SecretWrite,
) -> Result<Secret, WriteError> {
    let name = write.secret.metadata.name.clone().unwrap_or_default();
    let what = match write.which {
        Written::Target => format!("writing the target Secret {namespace}/{name}"),
        Written::Refresh => format!("writing the refresh-token Secret {namespace}/{name}"),
    };
    // A webhook's denial could quote the object: nothing of its data may reach a message.
    let values: Vec<String> = write
        .secret
        .data
        .iter()
        .flatten()
        .filter_map(|(_, v)| std::str::from_utf8(&v.0).ok().map(str::to_owned))
        .collect();
    let failed = |error: &kube::Error| {
        let mut failure = Failure::from_kube(error, Reason::TargetSecretRejected, &what);
        failure.message = crate::token::redact_values(&failure.message, &values);
        WriteError::Failed(failure)
    };
    let create = |secret: &Secret| {
        let secret = secret.clone();
        async move {
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            match secrets.create(&params, &secret).await {
                Ok(stored) => Ok(stored),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Err(WriteError::AlreadyExists)
                }
                Err(error) => Err(failed(&error)),
            }
        }
    };
    match &write.mode {
        WriteMode::Create => create(&write.secret).await,
        WriteMode::Update { resource_version } => {
            // A replace, not a merge: keys and annotations the spec no longer names go, and
            // the resourceVersion makes it apply only to the Secret as it was read.
            let mut secret = write.secret.clone();
            secret.metadata.resource_version = Some(resource_version.clone());
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            match secrets.replace(&name, &params, &secret).await {
                Ok(stored) => Ok(stored),
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                    Err(WriteError::Conflict)
                }
                Err(error) => Err(failed(&error)),
            }
        }
        WriteMode::Replace {
            uid,
            resource_version,
        } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: Some(resource_version.clone()),
                }),
                ..DeleteParams::default()
            };
            match secrets.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    return Err(WriteError::Conflict);
                }
                Err(error) => return Err(failed(&error)),
            }
            info!("replaced Secret {name}: its type changed");
            create(&write.secret).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_that_keeps_pace_has_not_stepped() {
        let five = Duration::from_secs(5);
        assert_eq!(clock_step(SignedDuration::from_secs(5), five), None);
        // Scheduling jitter and NTP slewing stay well under the threshold.
        assert_eq!(clock_step(SignedDuration::from_millis(6_500), five), None);
        assert_eq!(clock_step(SignedDuration::from_millis(3_500), five), None);
    }

    #[test]
    fn a_wall_clock_that_jumps_has_stepped_by_the_difference() {
        let five = Duration::from_secs(5);
        assert_eq!(
            clock_step(SignedDuration::from_secs(3_605), five),
            Some(SignedDuration::from_hours(1))
        );
        assert_eq!(
            clock_step(SignedDuration::from_secs(-55), five),
            Some(SignedDuration::from_secs(-60))
        );
        // Out of range on either side is no panic.
        assert_eq!(clock_step(SignedDuration::MIN, Duration::MAX), None);
    }

    #[test]
    fn the_cached_credential_keeps_neither_managed_fields_nor_last_applied() {
        let mut credential: DsccCredential = serde_json::from_value(json!({
            "apiVersion": "dscc.io/v1alpha1",
            "kind": "DsccCredential",
            "metadata": {
                "name": "reports",
                "namespace": "storage",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    "dscc.io/refresh-requested-at": "2026-12-01T10:00:00Z",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"clientSecretRef": {"name": "reports-client"}},
        }))
        .expect("a credential");
        strip(&mut credential);
        assert!(credential.managed_fields().is_empty());
        assert_eq!(
            credential.annotations().keys().collect::<Vec<_>>(),
            ["dscc.io/refresh-requested-at"],
            "only what the operator reads stays"
        );
        assert_eq!(credential.name_any(), "reports");
    }
}
