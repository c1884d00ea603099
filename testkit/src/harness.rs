//! One end-to-end test's world: its own namespace on the shared control plane, its own token
//! endpoint, client credentials, and helpers to create objects and wait for outcomes.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dscc_token_operator::api::DsccCredential;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use super::cluster::{Cluster, cluster};
use super::operator::{Operator, test_flags};
use super::token_endpoint::TokenEndpoint;

/// What one end-to-end test works with.
pub struct TestEnv {
    /// A client with admin rights on the cluster.
    pub client: Client,
    /// The test's own namespace.
    pub namespace: String,
    /// The fault-injecting token endpoint, with one client registered.
    pub endpoint: TokenEndpoint,
    /// The registered client id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Where this test's logs go.
    pub log_dir: PathBuf,
    /// The shared control plane.
    pub cluster: &'static Cluster,
}

/// A short random suffix for names.
pub fn suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// A kube client for the cluster (admin).
pub async fn admin_client(cluster: &Cluster) -> Client {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig to config");
    Client::try_from(config).expect("kube client")
}

impl TestEnv {
    /// A fresh namespace named after the test, a token endpoint and a client Secret.
    pub async fn new(test: &str) -> Self {
        let cluster = cluster();
        let client = admin_client(cluster).await;
        let short: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let namespace = format!("{}-{}", short.trim_matches('-'), suffix());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(namespace.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .expect("create the test namespace");
        let endpoint = TokenEndpoint::start().await;
        let client_id = format!("client-{}", suffix());
        let client_secret = format!("client-secret-{}-{}", suffix(), suffix());
        endpoint.set_client(&client_id, &client_secret);
        let log_dir = crate::tmp_dir().join("e2e-logs").join(&namespace);
        std::fs::create_dir_all(&log_dir).expect("create the log folder");
        Self {
            client,
            namespace,
            endpoint,
            client_id,
            client_secret,
            log_dir,
            cluster,
        }
    }

    /// A namespaced API in the test namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Starts an operator that watches only this test's namespace, with the test flags and
    /// `extra` flags; an extra `--flag=value` replaces the test flag of that name.
    pub fn start_operator(&self, extra: &[&str]) -> Operator {
        let replaced: Vec<&str> = extra
            .iter()
            .filter_map(|flag| flag.split_once('=').map(|(name, _)| name))
            .filter(|name| *name != "--namespace")
            .collect();
        let mut args = test_flags();
        args.retain(|flag| {
            flag.split_once('=')
                .is_none_or(|(name, _)| !replaced.contains(&name))
        });
        args.push(format!("--namespace={}", self.namespace));
        args.extend(extra.iter().map(|s| s.to_string()));
        Operator::start(
            &self.cluster.kubeconfig,
            args,
            self.log_dir.join(format!("operator-{}.log", suffix())),
        )
    }

    /// An operator for this namespace as it runs in production: https only (the test flag
    /// that allows plain http is dropped), plus `ca` as an extra trusted CA.
    pub fn start_operator_https_only(&self, ca: Option<&std::path::Path>) -> Operator {
        let mut args: Vec<String> = test_flags()
            .into_iter()
            .filter(|flag| flag != "--allow-insecure-token-url")
            .collect();
        assert!(
            !args.iter().any(|flag| flag.contains("insecure")),
            "{args:?}"
        );
        args.push(format!("--namespace={}", self.namespace));
        if let Some(ca) = ca {
            args.push(format!("--extra-ca-file={}", ca.display()));
        }
        Operator::start(
            &self.cluster.kubeconfig,
            args,
            self.log_dir.join(format!("operator-{}.log", suffix())),
        )
    }

    /// Creates or replaces the Secret `name` with string data.
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        // A replace, not a merge: keys left out of `data` must disappear.
        let api: Api<Secret> = self.api();
        if api.get_opt(name).await.expect("read Secret").is_some() {
            api.replace(name, &PostParams::default(), &secret)
                .await
                .expect("replace Secret");
        } else {
            api.create(&PostParams::default(), &secret)
                .await
                .expect("create Secret");
        }
    }

    /// Writes the client Secret `name` with the registered client id and secret.
    pub async fn put_client_secret(&self, name: &str) {
        self.put_secret(
            name,
            &[
                ("client_id", &self.client_id),
                ("client_secret", &self.client_secret),
            ],
        )
        .await;
    }

    /// Registers a client of its own at the endpoint and writes it into Secret `name`, for
    /// credentials that must not share a token group.
    pub async fn put_own_client_secret(&self, name: &str) -> (String, String) {
        let client_id = format!("client-{name}-{}", suffix());
        let client_secret = format!("secret-{}-{}", suffix(), suffix());
        self.endpoint.set_client(&client_id, &client_secret);
        self.put_secret(
            name,
            &[("client_id", &client_id), ("client_secret", &client_secret)],
        )
        .await;
        (client_id, client_secret)
    }

    /// A credential spec pointing at this test's endpoint and client Secret `client`.
    pub fn spec(&self, client: &str) -> Value {
        json!({
            "clientSecretRef": {"name": client},
            "tokenUrl": self.endpoint.url(),
        })
    }

    /// Creates a DsccCredential from a raw spec (so tests can also send invalid ones).
    pub async fn create_credential(
        &self,
        name: &str,
        spec: Value,
    ) -> Result<DynamicObject, kube::Error> {
        self.create_credential_with(name, json!({}), spec).await
    }

    /// Like [`create_credential`], with extra metadata (labels, annotations).
    pub async fn create_credential_with(
        &self,
        name: &str,
        metadata: Value,
        spec: Value,
    ) -> Result<DynamicObject, kube::Error> {
        let mut object = json!({
            "apiVersion": "dscc.io/v1alpha1",
            "kind": "DsccCredential",
            "metadata": metadata,
            "spec": spec,
        });
        object["metadata"]["name"] = json!(name);
        object["metadata"]["namespace"] = json!(self.namespace);
        let object: DynamicObject = serde_json::from_value(object).expect("a DynamicObject");
        self.dynamic_credentials()
            .create(&PostParams::default(), &object)
            .await
    }

    /// Applies a JSON merge patch to the credential's spec or metadata.
    pub async fn patch_credential(&self, name: &str, patch: Value) {
        self.api::<DsccCredential>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch DsccCredential");
    }

    fn dynamic_credentials(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("dscc.io", "v1alpha1", "DsccCredential");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "dscccredentials");
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
    }

    /// The credential as stored now.
    pub async fn credential(&self, name: &str) -> DsccCredential {
        self.api::<DsccCredential>()
            .get(name)
            .await
            .expect("read DsccCredential")
    }

    /// The Secret `name`, if it exists.
    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.api::<Secret>()
            .get_opt(name)
            .await
            .expect("read Secret")
    }

    /// Waits until the credential's condition `type_` has `status` (and `reason`, if given).
    pub async fn wait_for_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> DsccCredential {
        let description = format!(
            "{}/{name} condition {type_}={status}{}",
            self.namespace,
            reason.map(|r| format!(" ({r})")).unwrap_or_default()
        );
        wait_until(&description, timeout, || async {
            let credential = self.credential(name).await;
            let condition = credential
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == type_)?
                .clone();
            let matches =
                condition.status == status && reason.is_none_or(|r| condition.reason == r);
            matches.then_some(credential)
        })
        .await
    }

    /// Waits for Ready=True.
    pub async fn wait_ready(&self, name: &str) -> DsccCredential {
        self.wait_for_condition(name, "Ready", "True", None, Duration::from_secs(30))
            .await
    }

    /// The string value of `key` in Secret `name`.
    pub async fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.secret(name).await?;
        let bytes = secret.data?.get(key)?.0.clone();
        Some(String::from_utf8(bytes).expect("utf-8 Secret value"))
    }

    /// Events about objects in the test namespace.
    pub async fn events(&self) -> Vec<Event> {
        self.api::<Event>()
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
    }

    /// Runs kubectl against the cluster in the test namespace.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.cluster
            .kubectl_command()
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .output()
            .expect("run kubectl")
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(description: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {description}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The expiry written under the `expires_at` key, parsed.
pub fn parse_time(text: &str) -> Timestamp {
    text.parse().expect("an RFC 3339 time")
}

/// A background task that calls a probe at a fixed interval and keeps every answer, for
/// properties that must hold at every moment (a token never expired, a Secret never missing).
pub struct Sampler<T> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<T>>,
}

/// Starts calling `probe` every `interval` until [`Sampler::stop`].
pub fn sample_every<T, F, Fut>(interval: Duration, mut probe: F) -> Sampler<T>
where
    T: Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
{
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            ticks.tick().await;
            samples.push(probe().await);
        }
        samples
    });
    Sampler { stop, task }
}

impl<T> Sampler<T> {
    /// Stops sampling and returns every sample, oldest first.
    pub async fn stop(self) -> Vec<T> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the sampling task panicked")
    }
}

/// One read of a target Secret by a [`TestEnv::watch_token`] sampler.
#[derive(Clone, Debug)]
pub struct TokenReading {
    /// The wall clock when the answer arrived.
    pub read_at: Timestamp,
    /// The access token, or `None` when the Secret (or the key) was missing.
    pub access_token: Option<String>,
    /// The `expires_at` key, parsed.
    pub expires_at: Option<Timestamp>,
    /// A failed read, as text.
    pub error: Option<String>,
}

impl TestEnv {
    /// Reads the target Secret `name` (default key names) every `interval` with a GET.
    pub fn watch_token(&self, name: &str, interval: Duration) -> Sampler<TokenReading> {
        let secrets: Api<Secret> = self.api();
        let name = name.to_owned();
        sample_every(interval, move || {
            let secrets = secrets.clone();
            let name = name.clone();
            async move { read_token(&secrets, &name).await }
        })
    }

    /// Waits until Secret `name` holds an `access_token` other than `old` that the endpoint
    /// issued, and returns it.
    pub async fn wait_for_new_token(
        &self,
        name: &str,
        old: Option<&str>,
        timeout: Duration,
    ) -> String {
        let description = format!("{}/{name} to hold a new token", self.namespace);
        wait_until(&description, timeout, || async {
            let token = self.secret_value(name, "access_token").await?;
            let issued = self.endpoint.issued_tokens().contains(&token);
            (Some(token.as_str()) != old && issued).then_some(token)
        })
        .await
    }

    /// Waits until the Secret `name` no longer exists.
    pub async fn wait_for_secret_gone(&self, name: &str, timeout: Duration) {
        let description = format!("Secret {}/{name} to be deleted", self.namespace);
        wait_until(&description, timeout, || async {
            self.secret(name).await.is_none().then_some(())
        })
        .await;
    }
}

/// One GET of the target Secret `name` (default key names), as a [`TokenReading`].
pub async fn read_token(secrets: &Api<Secret>, name: &str) -> TokenReading {
    let answer = secrets.get_opt(name).await;
    let read_at = Timestamp::now();
    let value = |secret: &Secret, key: &str| {
        let bytes = secret.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    };
    match answer {
        Ok(secret) => TokenReading {
            read_at,
            access_token: secret.as_ref().and_then(|s| value(s, "access_token")),
            expires_at: secret
                .as_ref()
                .and_then(|s| value(s, "expires_at"))
                .and_then(|text| text.parse().ok()),
            error: None,
        },
        Err(error) => TokenReading {
            read_at,
            access_token: None,
            expires_at: None,
            error: Some(error.to_string()),
        },
    }
}

/// The token and expiry of one [`TestEnv::watch_token`] reading; panics unless the Secret
/// was read, held a token and its expiry, and the token had not expired.
pub fn valid_token(reading: &TokenReading) -> (&String, Timestamp) {
    assert!(
        reading.error.is_none(),
        "reading the Secret failed: {reading:?}"
    );
    let (Some(token), Some(expires_at)) = (&reading.access_token, reading.expires_at) else {
        panic!("the Secret, its token or its expiry was missing: {reading:?}");
    };
    assert!(
        reading.read_at < expires_at,
        "the Secret held a token that expired at {expires_at}, read at {}",
        reading.read_at
    );
    (token, expires_at)
}

/// Checks what a [`TestEnv::watch_token`] sampler saw while tokens of `lifetime` were renewed:
/// the Secret was never missing and never held an expired token, every token was renewed
/// well before it expired (a third of the lifetime remains at renewal; half of that is
/// allowed for a slow machine), and each renewal took exactly one token request.
pub fn assert_renewed_in_time(
    readings: &[TokenReading],
    endpoint: &TokenEndpoint,
    lifetime: Duration,
) {
    let mut expiry_of = std::collections::HashMap::new();
    for reading in readings {
        let (token, expires_at) = valid_token(reading);
        expiry_of.insert(token.clone(), expires_at);
    }

    let requests = endpoint.requests();
    let issued = endpoint.issued_tokens();
    assert_eq!(
        requests.len(),
        issued.len(),
        "every token request issued a token"
    );
    let distinct: std::collections::HashSet<&String> = issued.iter().collect();
    assert_eq!(
        distinct.len(),
        issued.len(),
        "the endpoint issued a token twice"
    );
    for token in expiry_of.keys() {
        assert!(
            issued.contains(token),
            "the Secret held a token the endpoint never issued"
        );
    }
    // A second request for the same renewal would replace its token within milliseconds,
    // before any reader could see it: every token but the newest must have been seen.
    for (i, token) in issued[..issued.len().saturating_sub(1)].iter().enumerate() {
        assert!(
            expiry_of.contains_key(token),
            "token #{i} never showed in the Secret"
        );
    }
    for pair in requests.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= lifetime / 3,
            "two token requests only {gap:?} apart: more than one request per renewal"
        );
        let Some(expires_at) = pair[0].token.as_ref().and_then(|t| expiry_of.get(t)) else {
            continue;
        };
        let renewed_at =
            Timestamp::try_from(pair[1].received_at_system).expect("a wall-clock time");
        let ahead = expires_at.duration_since(renewed_at);
        assert!(
            ahead.as_secs_f64() >= lifetime.as_secs_f64() / 6.0,
            "a token expiring at {expires_at} was renewed only {ahead:?} before (at {renewed_at})"
        );
    }
}

impl TestEnv {
    /// Creates a one-replica Deployment `name` whose Pods stay Pending (there is no kubelet).
    pub async fn create_deployment(&self, name: &str) {
        let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
                }
            }
        }))
        .expect("a Deployment");
        self.api::<k8s_openapi::api::apps::v1::Deployment>()
            .create(&PostParams::default(), &deployment)
            .await
            .expect("create the Deployment");
    }

    /// The `dscc.io/restartedAt` stamp on Deployment `name`'s pod template, if any.
    pub async fn restart_stamp(&self, name: &str) -> Option<String> {
        let deployment = self
            .api::<k8s_openapi::api::apps::v1::Deployment>()
            .get(name)
            .await
            .ok()?;
        deployment
            .spec?
            .template
            .metadata?
            .annotations?
            .get("dscc.io/restartedAt")
            .cloned()
    }
}

/// The condition `type_` of `credential`, if it has one.
pub fn condition(credential: &DsccCredential, type_: &str) -> Option<Condition> {
    credential
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Whether `credential` has condition `type_` with `status` and `reason`.
pub fn has_condition(credential: &DsccCredential, type_: &str, status: &str, reason: &str) -> bool {
    condition(credential, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// Waits until `check` holds for the credential `name`.
pub async fn wait_for_credential(
    env: &TestEnv,
    name: &str,
    description: &str,
    timeout: Duration,
    check: impl Fn(&DsccCredential) -> bool,
) -> DsccCredential {
    let description = format!("{}/{name}: {description}", env.namespace);
    wait_until(&description, timeout, || async {
        let credential = env.credential(name).await;
        check(&credential).then_some(credential)
    })
    .await
}
