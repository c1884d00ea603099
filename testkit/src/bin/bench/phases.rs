//! The load the bench puts on the cluster: the limit (the physical minimum of work per
//! credential, done by the bench itself before the operator runs), creating credentials and
//! their client Secrets, unrelated Secrets, and restarts of the operator.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dscc_testkit::token_endpoint::TokenEndpoint;
use dscc_token_operator::api::{DsccCredential, MANAGER};
use dscc_token_operator::conditions::Situation;
use dscc_token_operator::observe::TokenHealth;
use dscc_token_operator::status::{self, StatusInputs};
use dscc_token_operator::target_secret::{self, NewToken};
use dscc_token_operator::token::{ClientCredentials, SecretString};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::measure::{Phase, Probe};
use crate::operator::{OperatorProcess, settle};
use crate::{SET_LABEL, client_id, client_secret, say};

/// Where the limit is measured; emptied before the operator starts.
pub const LIMIT_NS: &str = "bench-limit";
/// Where the unrelated Secrets go.
pub const UNRELATED_NS: &str = "bench-unrelated";

pub fn credential_resource() -> ApiResource {
    ApiResource::erase::<DsccCredential>(&())
}

// ---- the limit --------------------------------------------------------------------------

/// The physical minimum, measured on the same API server and token endpoint just before the
/// operator starts: per credential one token request, one Secret create and one status patch.
pub struct Limit {
    pub n: usize,
    pub concurrency: usize,
    /// The bench creating the N DsccCredentials (not part of the limit; informative).
    pub setup_seconds: f64,
    /// N token requests, `concurrency` in flight: how long they took, and the phase around.
    pub token_seconds: f64,
    pub tokens: Phase,
    /// The same at the operator's --max-requests-in-flight-per-host (informative).
    pub tokens_per_host_cap: Option<(usize, f64)>,
    /// N x (create the target Secret, patch the status), `concurrency` in flight.
    pub api_seconds: f64,
    pub api: Phase,
    /// Sizes of what was written, for comparison with the operator's objects.
    pub secret_bytes: usize,
    pub status_bytes: usize,
}

impl Limit {
    /// The limit: the slower of the two, in seconds for N credentials.
    pub fn seconds(&self) -> f64 {
        self.token_seconds.max(self.api_seconds)
    }

    /// Which of the two is the limit.
    pub fn bound_by(&self) -> &'static str {
        if self.api_seconds >= self.token_seconds {
            "API writes"
        } else {
            "token endpoint"
        }
    }
}

/// One token, as the endpoint answered.
struct Issued {
    access_token: String,
    token_type: String,
    expires_in: i64,
}

#[allow(clippy::too_many_arguments)]
pub async fn measure_limit(
    admin: &Client,
    operator_identity: &Client,
    probe: &Probe,
    endpoint: &TokenEndpoint,
    n: usize,
    concurrency: usize,
    per_host_cap: usize,
    create_concurrency: usize,
) -> anyhow::Result<Limit> {
    // The credentials, as the operator would find them (no client Secrets: the limit reads
    // nothing). Created by the admin, like the credentials of phase 1.
    say(&format!(
        "limit: creating {n} DsccCredentials in {LIMIT_NS}, {create_concurrency} at a time"
    ));
    let started = Instant::now();
    let credentials =
        create_bare_credentials(admin, LIMIT_NS, n, &endpoint.url(), create_concurrency).await?;
    probe.count_bench_write("create", "dscccredentials", n as u64);
    let setup_seconds = started.elapsed().as_secs_f64();
    say(&format!(
        "  created in {setup_seconds:.1}s ({:.0}/s)",
        n as f64 / setup_seconds
    ));

    say(&format!(
        "limit: {n} token requests, {concurrency} in flight"
    ));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(per_host_cap))
        .build()?;
    let before = probe.snapshot(0, &[endpoint]).await?;
    let started = Instant::now();
    let issued = request_tokens(&http, &endpoint.url(), n, concurrency).await?;
    let token_seconds = started.elapsed().as_secs_f64();
    let after = probe.snapshot(0, &[endpoint]).await?;
    let tokens = probe.phase("limit-tokens", &before, &after);

    let tokens_per_host_cap = if per_host_cap < concurrency {
        say(&format!(
            "limit (informative): {n} token requests, {per_host_cap} in flight \
             (the operator's --max-requests-in-flight-per-host)"
        ));
        let started = Instant::now();
        request_tokens(&http, &endpoint.url(), n, per_host_cap).await?;
        Some((per_host_cap, started.elapsed().as_secs_f64()))
    } else {
        None
    };

    say(&format!(
        "limit: {n} x (create the target Secret, patch the status) as the operator's \
         identity, {concurrency} in flight"
    ));
    let secrets: Api<Secret> = Api::namespaced(operator_identity.clone(), LIMIT_NS);
    let statuses: Api<DsccCredential> = Api::namespaced(operator_identity.clone(), LIMIT_NS);
    let sizes = Arc::new(Mutex::new((0usize, 0usize)));
    let work: Vec<(DsccCredential, Issued)> = credentials.into_iter().zip(issued).collect();
    let before = probe.snapshot(0, &[endpoint]).await?;
    let started = Instant::now();
    futures::stream::iter(work.into_iter().enumerate())
        .map(Ok::<_, anyhow::Error>)
        .try_for_each_concurrent(concurrency.max(1), |(i, (credential, issued))| {
            let secrets = secrets.clone();
            let statuses = statuses.clone();
            let sizes = sizes.clone();
            async move {
                let (secret, patch) = minimum_writes(&credential, &issued, i)?;
                if i == 0 {
                    *sizes.lock().unwrap_or_else(|p| p.into_inner()) = (
                        serde_json::to_vec(&secret)?.len(),
                        serde_json::to_vec(&patch)?.len(),
                    );
                }
                let params = PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..PostParams::default()
                };
                secrets.create(&params, &secret).await?;
                statuses
                    .patch_status(
                        &credential.name_any(),
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await?;
                Ok(())
            }
        })
        .await?;
    let api_seconds = started.elapsed().as_secs_f64();
    let after = probe.snapshot(0, &[endpoint]).await?;
    let api = probe.phase("limit-api", &before, &after);
    let (secret_bytes, status_bytes) = *sizes.lock().unwrap_or_else(|p| p.into_inner());

    // Empty the namespace, so that the operator starts on a cluster without these.
    say(&format!("limit: deleting what it created in {LIMIT_NS}"));
    empty_namespace(admin, probe, LIMIT_NS, Duration::from_secs(120)).await?;
    Ok(Limit {
        n,
        concurrency,
        setup_seconds,
        token_seconds,
        tokens,
        tokens_per_host_cap,
        api_seconds,
        api,
        secret_bytes,
        status_bytes,
    })
}

/// The target Secret and the status patch the operator writes for a new token, built with
/// the operator's own code.
fn minimum_writes(
    credential: &DsccCredential,
    issued: &Issued,
    i: usize,
) -> anyhow::Result<(Secret, serde_json::Value)> {
    let now = Timestamp::now();
    let expires_at = now.checked_add(SignedDuration::from_secs(issued.expires_in))?;
    let renewal = now.checked_add(SignedDuration::from_secs(issued.expires_in * 2 / 3))?;
    let fingerprint = target_secret::credentials_fingerprint(&ClientCredentials {
        client_id: client_id("bulk", i),
        client_secret: SecretString::from(client_secret(i)),
    });
    let access_token = SecretString::from(issued.access_token.clone());
    let secret = target_secret::build(
        credential,
        &NewToken {
            access_token: &access_token,
            token_type: &issued.token_type,
            issued_at: now,
            expires_at,
            credentials_fingerprint: &fingerprint,
            refresh_answered: None,
            verification: None,
            grant: "ClientCredentials",
            subject_token_hash: None,
        },
    );
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let record =
        target_secret::read_record(&annotations, Some(&secret), &credential.spec.target.keys)
            .context("the operator's own Secret has no readable record")?;
    let group = format!("{:012x}", i * 7919 + 1);
    let status = status::next(&StatusInputs {
        current: None,
        generation: credential.metadata.generation.unwrap_or(1),
        secret_name: &credential.target_name(),
        record: Some(&record),
        failure: None,
        situation: &Situation::Ready,
        token: TokenHealth::Valid {
            expires_at,
            renewal,
            current: true,
        },
        now,
        notes: &[],
        token_group: Some(&group),
        rollout_restarts: &[],
    });
    let patch = json!({
        "apiVersion": "dscc.io/v1alpha1",
        "kind": "DsccCredential",
        "status": status,
    });
    Ok((secret, patch))
}

/// One client-credentials request per bulk client, `in_flight` at a time.
async fn request_tokens(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<Vec<Issued>> {
    let issued: Vec<Issued> = futures::stream::iter(0..n)
        .map(|i| {
            let http = http.clone();
            async move {
                let answer = http
                    .post(url)
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client_id("bulk", i).as_str()),
                        ("client_secret", client_secret(i).as_str()),
                    ])
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<serde_json::Value>()
                    .await?;
                Ok::<_, anyhow::Error>(Issued {
                    access_token: answer["access_token"]
                        .as_str()
                        .context("no access_token")?
                        .to_owned(),
                    token_type: answer["token_type"].as_str().unwrap_or("Bearer").to_owned(),
                    expires_in: answer["expires_in"].as_i64().unwrap_or(7199),
                })
            }
        })
        .buffered(in_flight.max(1))
        .try_collect()
        .await?;
    Ok(issued)
}

async fn create_bare_credentials(
    admin: &Client,
    namespace: &str,
    count: usize,
    token_url: &str,
    in_flight: usize,
) -> anyhow::Result<Vec<DsccCredential>> {
    let api: Api<DsccCredential> = Api::namespaced(admin.clone(), namespace);
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let credential: DsccCredential = serde_json::from_value(json!({
                    "apiVersion": "dscc.io/v1alpha1",
                    "kind": "DsccCredential",
                    "metadata": {"name": format!("limit-{i:05}")},
                    "spec": {
                        "clientSecretRef": {"name": format!("limit-client-{i:05}")},
                        "tokenUrl": token_url,
                    },
                }))?;
                Ok::<_, anyhow::Error>(api.create(&PostParams::default(), &credential).await?)
            }
        })
        .buffered(in_flight.max(1))
        .try_collect()
        .await
}

// ---- creating credentials ---------------------------------------------------------------

/// When each credential's create request was sent.
pub struct Creation {
    pub started: Instant,
    pub submitted: Duration,
    pub started_at: HashMap<String, Instant>,
}

pub async fn create_credentials(
    admin: &Client,
    probe: &Probe,
    namespace: &str,
    set: &'static str,
    count: usize,
    token_url: &str,
    in_flight: usize,
) -> anyhow::Result<Creation> {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let credentials: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &credential_resource());
    let started = Instant::now();
    let started_at = Arc::new(Mutex::new(HashMap::with_capacity(count)));
    futures::stream::iter(0..count)
        .map(Ok::<usize, anyhow::Error>)
        .try_for_each_concurrent(in_flight.max(1), |i| {
            let secrets = secrets.clone();
            let credentials = credentials.clone();
            let started_at = started_at.clone();
            async move {
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("{set}-client-{i:05}"), "labels": {SET_LABEL: set}},
                    "stringData": {"client_id": client_id(set, i), "client_secret": client_secret(i)},
                }))?;
                secrets.create(&PostParams::default(), &secret).await?;
                let name = format!("{set}-{i:05}");
                let credential: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "dscc.io/v1alpha1",
                    "kind": "DsccCredential",
                    "metadata": {"name": name, "labels": {SET_LABEL: set}},
                    "spec": {
                        "clientSecretRef": {"name": format!("{set}-client-{i:05}")},
                        "tokenUrl": token_url,
                    },
                }))?;
                let at = Instant::now();
                credentials.create(&PostParams::default(), &credential).await?;
                started_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, at);
                Ok(())
            }
        })
        .await?;
    probe.count_bench_write("create", "secrets", count as u64);
    probe.count_bench_write("create", "dscccredentials", count as u64);
    let started_at = std::mem::take(&mut *started_at.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Creation {
        started,
        submitted: started.elapsed(),
        started_at,
    })
}

pub async fn create_unrelated_secrets(
    admin: &Client,
    probe: &Probe,
    count: usize,
    bytes: usize,
    in_flight: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), UNRELATED_NS);
    let blob: Vec<u8> = (0..bytes).map(|i| (i * 7919 % 251) as u8).collect();
    let blob = k8s_openapi::ByteString(blob);
    let started = Instant::now();
    let work = futures::stream::iter(0..count)
        .map(Ok::<usize, anyhow::Error>)
        .try_for_each_concurrent(in_flight.max(1), |i| {
            let secrets = secrets.clone();
            let blob = blob.clone();
            async move {
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("unrelated-{i:06}")),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("blob".to_owned(), blob)])),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &secret).await?;
                Ok(())
            }
        });
    tokio::time::timeout(timeout, work)
        .await
        .context("creating the unrelated Secrets timed out")??;
    probe.count_bench_write("create", "secrets", count as u64);
    let took = started.elapsed();
    say(&format!(
        "  created {count} unrelated Secrets in {:.1}s ({:.0}/s)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    ));
    Ok(took)
}

/// Deletes every Secret and credential of `namespace` (the Secrets first, so that the garbage
/// collector has nothing to do) and waits until they are gone. Only with no operator running,
/// or it would write the targets again.
pub async fn empty_namespace(
    admin: &Client,
    probe: &Probe,
    namespace: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let credentials: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &credential_resource());
    secrets
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    credentials
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    probe.count_bench_write("deletecollection", "secrets", 1);
    probe.count_bench_write("deletecollection", "dscccredentials", 1);
    let deadline = Instant::now() + timeout;
    loop {
        let secrets_left = secrets
            .list_metadata(&ListParams::default().limit(1))
            .await?;
        let credentials_left = credentials
            .list_metadata(&ListParams::default().limit(1))
            .await?;
        if secrets_left.items.is_empty() && credentials_left.items.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the objects in {namespace} were not deleted within {} s",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes the credentials of `namespace` and waits until the garbage collector has deleted
/// their target Secrets.
pub async fn delete_credentials(
    admin: &Client,
    probe: &Probe,
    namespace: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let credentials: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &credential_resource());
    credentials
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    probe.count_bench_write("deletecollection", "dscccredentials", 1);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let selector = "app.kubernetes.io/managed-by=dscc-token-operator";
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let left = secrets
            .list_metadata(&ListParams::default().labels(selector))
            .await?;
        if left.items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

// ---- restarts ---------------------------------------------------------------------------

/// What a fresh operator process did until it settled.
pub struct Restart {
    pub peak_rss: u64,
    pub seconds_to_ready: f64,
    pub phase: Phase,
}

/// Stops the running operator, starts a new one and measures it until it settles.
#[allow(clippy::too_many_arguments)]
pub async fn restart_and_measure(
    slot: &mut Option<OperatorProcess>,
    name: &'static str,
    bin: &Path,
    flags: &[String],
    kubeconfig: &Path,
    log: &Path,
    probe: &Probe,
    endpoints: &[&TokenEndpoint],
    timeout: Duration,
) -> anyhow::Result<Restart> {
    if let Some(mut old) = slot.take() {
        old.stop();
    }
    let started = Instant::now();
    let mut before = probe.snapshot(0, endpoints).await?;
    let operator = slot.insert(OperatorProcess::start(bin, flags, kubeconfig, log)?);
    before.operator_not_started();
    operator.wait_ready(timeout).await?;
    let seconds_to_ready = started.elapsed().as_secs_f64();
    settle(operator, timeout).await;
    // A little longer, for anything that runs after the last reconcile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = probe.snapshot(operator.pid(), endpoints).await?;
    let phase = probe.phase(name, &before, &after);
    Ok(Restart {
        peak_rss: operator.peak_rss_bytes(),
        seconds_to_ready,
        phase,
    })
}
