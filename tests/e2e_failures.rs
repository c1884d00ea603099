//! End-to-end tests of what goes wrong: rejected credentials, an endpoint that is down, failing
//! or rate limiting, missing client Secrets and keys, a foreign target Secret, invalid specs,
//! secrets that must never leak, and namespaced operation. Real control plane, real operator
//! process, the fault-injecting token endpoint (see testkit/).

use dscc_testkit as support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Resource};
use serde_json::json;
use support::harness::{
    TestEnv, condition, has_condition, suffix, wait_for_credential, wait_until,
};
use support::token_endpoint::{Fault, RecordedRequest, RetryAfter, TokenEndpoint};
use tokio::task::JoinHandle;

/// Generous for a loaded 2-core machine: a first token normally takes well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the credential is Ready with nothing in progress and the target Secret holds a
/// token other than `old_token`; returns the new token.
async fn wait_for_recovery(env: &TestEnv, name: &str, old_token: &str) -> String {
    wait_for_credential(
        env,
        name,
        "Ready=True and no Reconciling",
        READY_TIMEOUT,
        |c| {
            has_condition(c, "Ready", "True", "TokenIssued")
                && condition(c, "Reconciling").is_none()
        },
    )
    .await;
    let target = format!("{name}-token");
    wait_until(
        "a new token in the target Secret",
        READY_TIMEOUT,
        || async {
            let token = env.secret_value(&target, "access_token").await?;
            (token != old_token).then_some(token)
        },
    )
    .await
}

/// The requests the endpoint answered with `status`, oldest first.
fn answered(requests: &[RecordedRequest], status: u16) -> Vec<RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.status == Some(status))
        .cloned()
        .collect()
}

/// The time between consecutive requests.
fn intervals(requests: &[RecordedRequest]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|pair| pair[1].received_at.duration_since(pair[0].received_at))
        .collect()
}

/// Keeps reading a Secret in the background and notes every moment it is missing or its data
/// differs from what it held at the start.
struct SecretWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, Vec<String>)>,
}

impl SecretWatch {
    fn start(api: Api<Secret>, name: &str, expected: BTreeMap<String, ByteString>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut reads = 0;
            let mut violations = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                let at = started.elapsed();
                match api.get_opt(&name).await {
                    Ok(Some(secret)) if secret.data.as_ref() == Some(&expected) => {}
                    Ok(Some(_)) => violations.push(format!("{at:?}: the data changed")),
                    Ok(None) => violations.push(format!("{at:?}: the Secret is gone")),
                    Err(error) => violations.push(format!("{at:?}: cannot read it: {error}")),
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (reads, violations)
        });
        Self { stop, task }
    }

    /// Stops watching; returns how often it looked and what went wrong.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the Secret watch task")
    }
}

/// Starts watching that the target Secret of `name` keeps the content it has now.
async fn watch_target(env: &TestEnv, name: &str) -> (String, SecretWatch) {
    let target = format!("{name}-token");
    let secret = env.secret(&target).await.expect("the target Secret");
    let data = secret.data.clone().expect("token data");
    let token = String::from_utf8(data["access_token"].0.clone()).expect("utf-8 token");
    (token, SecretWatch::start(env.api(), &target, data))
}

async fn assert_unchanged(watch: SecretWatch) {
    let (reads, violations) = watch.finish().await;
    assert!(reads > 10, "the target Secret was read only {reads} times");
    assert!(
        violations.is_empty(),
        "the last valid token must stay in place while the endpoint fails: {violations:#?}"
    );
}

/// A spec for `env`'s endpoint that renews when 90% of the lifetime remains: with a 60 s token
/// the renewal is due 3-6 s after issue, and the token stays valid through the whole test.
fn early_renewal_spec(env: &TestEnv) -> serde_json::Value {
    let mut spec = env.spec("greenlake-client");
    spec["refreshBeforePercentage"] = json!(90);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_client_credentials_stall_quietly_until_the_client_secret_is_fixed() {
    let env = TestEnv::new("invalid-client").await;
    let wrong_secret = format!("not-the-secret-{}", suffix());
    env.put_secret(
        "greenlake-client",
        &[
            ("client_id", &env.client_id),
            ("client_secret", &wrong_secret),
        ],
    )
    .await;
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create the credential");

    let stalled = env
        .wait_for_condition(
            "reports",
            "Ready",
            "False",
            Some("InvalidClientCredentials"),
            READY_TIMEOUT,
        )
        .await;
    let first_failure = Instant::now();
    assert!(
        has_condition(&stalled, "Stalled", "True", "InvalidClientCredentials"),
        "a rejected client needs the user: Stalled=True, got {:?}",
        stalled.status
    );
    let ready = condition(&stalled, "Ready").expect("Ready");
    assert!(
        ready.message.contains("client_id and client_secret"),
        "the message must say what to fix: {}",
        ready.message
    );
    assert!(
        env.secret("reports-token").await.is_none(),
        "no token, no Secret"
    );

    // --permanent-retry-delay=1m: nothing more should reach the endpoint for a while.
    let after_first = env.endpoint.request_count();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(first_failure.elapsed())).await;
    let during_window = env.endpoint.request_count() - after_first;
    assert!(
        during_window <= 1,
        "{during_window} more token requests within 10 s of an invalid_client answer"
    );
    assert_eq!(
        env.endpoint.issued_tokens().len(),
        0,
        "nothing can have been issued to a wrong secret"
    );

    // The user fixes the client Secret: the operator tries again at once, not in a minute.
    let fixed_at = Instant::now();
    env.put_client_secret("greenlake-client").await;
    let ready = env
        .wait_for_condition("reports", "Ready", "True", None, Duration::from_secs(10))
        .await;
    assert!(
        fixed_at.elapsed() < Duration::from_secs(10),
        "recovery took {:?}",
        fixed_at.elapsed()
    );
    assert!(condition(&ready, "Stalled").is_none(), "{:?}", ready.status);
    let status = ready.status.expect("status");
    assert_eq!(
        status.failed_attempts, 0,
        "a success clears the failure count"
    );
    let token = env.secret_value("reports-token", "access_token").await;
    assert_eq!(token.as_ref(), env.endpoint.issued_tokens().last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_old_token_while_the_endpoint_is_down() {
    let env = TestEnv::new("endpoint-down").await;
    // An endpoint of its own, so it can be stopped and started again on the same port.
    let endpoint = TokenEndpoint::start().await;
    let port = endpoint.addr().port();
    endpoint.set_client(&env.client_id, &env.client_secret);
    // A 10 s token: renewal is due after about 6.5 s, and it expires during the outage.
    endpoint.set_lifetime(Duration::from_secs(10));
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let mut spec = env.spec("greenlake-client");
    spec["tokenUrl"] = json!(endpoint.url());
    env.create_credential("reports", spec)
        .await
        .expect("create the credential");
    env.wait_ready("reports").await;
    endpoint.shutdown().await;
    let (old_token, watch) = watch_target(&env, "reports").await;

    let old_expiry = env
        .credential("reports")
        .await
        .status
        .and_then(|s| s.expires_at)
        .map(|t| t.0.as_second())
        .expect("an expiry");
    // Watch the failure bookkeeping: each attempt's failure and retry times.
    let mut delays: BTreeMap<i32, i64> = BTreeMap::new();
    let mut retry_times: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let expired = loop {
        let credential = env.credential("reports").await;
        let status = credential.status.clone().unwrap_or_default();
        if let (Some(last), Some(next)) = (&status.last_failure_time, &status.next_retry_time) {
            delays.insert(
                status.failed_attempts,
                next.0.as_second() - last.0.as_second(),
            );
            retry_times.insert(
                status.failed_attempts,
                (last.0.as_second(), next.0.as_second()),
            );
        }
        let expired = has_condition(&credential, "Ready", "False", "TokenEndpointUnavailable");
        if expired && delays.keys().any(|attempt| *attempt >= 4) {
            break credential;
        }
        assert!(
            Instant::now() < deadline,
            "no Ready=False (TokenEndpointUnavailable) after 4 attempts in 40 s: {:?}, delays {delays:?}",
            credential.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_unchanged(watch).await;
    let retries: Vec<(i32, i64, i64)> = retry_times
        .iter()
        .map(|(attempt, (failed, next))| (*attempt, *failed, *next))
        .collect();
    assert!(
        has_condition(&expired, "Reconciling", "True", "TokenEndpointUnavailable"),
        "{:?}",
        expired.status
    );
    assert!(
        condition(&expired, "Stalled").is_none(),
        "an outage is not the user's to fix: {:?}",
        expired.status
    );
    let message = condition(&expired, "Ready").expect("Ready").message;
    assert!(
        message.contains("could not connect") && message.contains("expired"),
        "the message says what is wrong and that the token expired: {message}"
    );
    // The delays grow (1 s, 2 s, 4 s, 8 s less up to 20% of jitter, as whole seconds in the
    // status: up to 1 s more), except that a retry that would come after the token's expiry
    // is moved to just before it.
    // (Times are whole seconds: a retry within the last second may round up past it.)
    for (_, failed, next) in &retries {
        assert!(
            *failed >= old_expiry || *next <= old_expiry + 1,
            "a retry was planned after the token expired: {retries:?} (expiry {old_expiry})"
        );
    }
    let uncapped: Vec<i64> = retries
        .iter()
        .filter(|(_, failed, next)| *failed >= old_expiry || *next < old_expiry)
        .map(|(_, failed, next)| next - failed)
        .collect();
    assert!(
        uncapped.len() >= 3 && uncapped.windows(2).all(|w| w[0] < w[1]),
        "retry delays must grow: {retries:?} (expiry {old_expiry})"
    );
    assert!(
        delays.values().all(|delay| *delay <= 8 + 1),
        "retry delays are capped at --retry-max-delay=8s: {delays:?}"
    );

    let endpoint = TokenEndpoint::start_on_port(port)
        .await
        .expect("start the endpoint again on its port");
    endpoint.set_client(&env.client_id, &env.client_secret);
    endpoint.set_lifetime(Duration::from_secs(3600));
    let new_token = wait_for_recovery(&env, "reports", &old_token).await;
    assert_eq!(endpoint.issued_tokens(), vec![new_token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_off_with_growing_intervals_while_the_endpoint_answers_503() {
    let env = TestEnv::new("endpoint-503").await;
    env.endpoint.set_lifetime(Duration::from_secs(60));
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", early_renewal_spec(&env))
        .await
        .expect("create the credential");
    env.wait_ready("reports").await;
    env.endpoint.set_sticky_fault(Some(Fault::Status(503)));
    let (old_token, watch) = watch_target(&env, "reports").await;

    let failed = wait_until(
        "four renewals answered 503",
        Duration::from_secs(40),
        || async {
            let failed = answered(&env.endpoint.requests(), 503);
            (failed.len() >= 4).then_some(failed)
        },
    )
    .await;
    let credential = env.credential("reports").await;
    assert_unchanged(watch).await;

    // Backoff with --retry-initial-delay=1s: 1 s, 2 s, 4 s, each less up to 20% of jitter,
    // and the retry time rounded up to a whole second (plus a little time to act on it).
    let gaps = intervals(&failed[..4]);
    for (gap, backoff) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        let seconds = gap.as_secs_f64();
        assert!(
            seconds >= 0.8 * backoff && seconds < backoff + 1.5,
            "intervals between retries must follow 1 s, 2 s, 4 s: {gaps:?}"
        );
    }
    assert!(gaps[2] > gaps[0], "later retries wait longer: {gaps:?}");
    let reconciling = condition(&credential, "Reconciling").expect("Reconciling");
    assert_eq!(reconciling.status, "True");
    assert_eq!(reconciling.reason, "TokenEndpointUnavailable");
    assert!(
        reconciling.message.contains("503"),
        "{}",
        reconciling.message
    );
    let ready = condition(&credential, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "TokenIssued"),
        "the old token is still valid: {ready:?}"
    );
    assert!(
        ready.message.contains("renewal failed"),
        "{}",
        ready.message
    );

    env.endpoint.clear_faults();
    let new_token = wait_for_recovery(&env, "reports", &old_token).await;
    assert_eq!(env.endpoint.issued_tokens().last(), Some(&new_token));
}

/// Rate limited renewals with `retry_after`: every retry waits at least `wait`.
async fn rate_limited_renewals_wait(test: &str, retry_after: RetryAfter, wait: Duration) {
    let env = TestEnv::new(test).await;
    env.endpoint.set_lifetime(Duration::from_secs(60));
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", early_renewal_spec(&env))
        .await
        .expect("create the credential");
    env.wait_ready("reports").await;
    env.endpoint
        .set_sticky_fault(Some(Fault::RateLimited { retry_after }));
    let (old_token, watch) = watch_target(&env, "reports").await;

    let limited = wait_until(
        "three renewals answered 429",
        Duration::from_secs(40),
        || async {
            let limited = answered(&env.endpoint.requests(), 429);
            (limited.len() >= 3).then_some(limited)
        },
    )
    .await;
    let credential = env.credential("reports").await;
    assert_unchanged(watch).await;

    let gaps = intervals(&limited[..3]);
    assert!(
        gaps.iter().all(|gap| *gap >= wait),
        "the endpoint asked for {wait:?} between requests, got {gaps:?}"
    );
    let reconciling = condition(&credential, "Reconciling").expect("Reconciling");
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("True", "RateLimited"),
        "{reconciling:?}"
    );
    assert!(
        reconciling.message.contains("429"),
        "{}",
        reconciling.message
    );
    assert!(
        has_condition(&credential, "Ready", "True", "TokenIssued"),
        "the old token is still valid: {:?}",
        credential.status
    );

    env.endpoint.clear_faults();
    let new_token = wait_for_recovery(&env, "reports", &old_token).await;
    assert_eq!(env.endpoint.issued_tokens().last(), Some(&new_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_as_long_as_retry_after_says_when_rate_limited() {
    rate_limited_renewals_wait(
        "retry-after",
        RetryAfter::Seconds(3),
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_as_long_as_ratelimit_reset_says_when_rate_limited() {
    rate_limited_renewals_wait(
        "ratelimit-reset",
        RetryAfter::RateLimitReset(3),
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_a_missing_client_secret_then_a_missing_key_and_recovers() {
    let env = TestEnv::new("client-secret-missing").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create the credential");

    let missing = env
        .wait_for_condition(
            "reports",
            "Ready",
            "False",
            Some("ClientSecretNotFound"),
            READY_TIMEOUT,
        )
        .await;
    assert!(
        has_condition(&missing, "Stalled", "True", "ClientSecretNotFound"),
        "{:?}",
        missing.status
    );
    let message = condition(&missing, "Ready").expect("Ready").message;
    assert!(
        message.contains("greenlake-client"),
        "names the Secret: {message}"
    );

    env.put_secret("greenlake-client", &[("client_id", &env.client_id)])
        .await;
    let key_missing = env
        .wait_for_condition(
            "reports",
            "Ready",
            "False",
            Some("ClientSecretKeyMissing"),
            READY_TIMEOUT,
        )
        .await;
    assert!(
        has_condition(&key_missing, "Stalled", "True", "ClientSecretKeyMissing"),
        "{:?}",
        key_missing.status
    );
    let message = condition(&key_missing, "Ready").expect("Ready").message;
    assert!(
        message.contains("greenlake-client") && message.contains("client_secret"),
        "names the Secret and the key: {message}"
    );
    assert_eq!(
        env.endpoint.request_count(),
        0,
        "no token request without client credentials"
    );

    env.put_client_secret("greenlake-client").await;
    let ready = env.wait_ready("reports").await;
    assert!(condition(&ready, "Stalled").is_none(), "{:?}", ready.status);
    assert_eq!(
        env.secret_value("reports-token", "access_token")
            .await
            .as_ref(),
        env.endpoint.issued_tokens().first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_a_foreign_secret_alone_and_takes_the_name_once_it_is_gone() {
    let env = TestEnv::new("target-conflict").await;
    env.put_client_secret("greenlake-client").await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("reports-token".into()),
            labels: Some([("app".to_string(), "someone-else".to_string())].into()),
            annotations: Some([("note".to_string(), "not yours".to_string())].into()),
            ..Default::default()
        },
        data: Some(
            [(
                "access_token".to_string(),
                ByteString(b"a token someone else put here".to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let secrets: Api<Secret> = env.api();
    let before = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign Secret");
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create the credential");

    let conflict = env
        .wait_for_condition(
            "reports",
            "Ready",
            "False",
            Some("TargetSecretConflict"),
            READY_TIMEOUT,
        )
        .await;
    assert!(
        has_condition(&conflict, "Stalled", "True", "TargetSecretConflict"),
        "{:?}",
        conflict.status
    );
    let message = condition(&conflict, "Ready").expect("Ready").message;
    assert!(
        message.contains("reports-token"),
        "names the Secret: {message}"
    );

    // Give it a moment to do something it should not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = env
        .secret("reports-token")
        .await
        .expect("the foreign Secret");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the foreign Secret was written to"
    );
    assert_eq!(after.data, before.data);
    assert_eq!(after.metadata.labels, before.metadata.labels);
    assert_eq!(after.metadata.annotations, before.metadata.annotations);
    assert_eq!(after.metadata.owner_references, None);
    assert_eq!(after.type_, before.type_);
    assert_eq!(
        env.endpoint.request_count(),
        0,
        "no token is requested that could not be stored"
    );

    secrets
        .delete("reports-token", &DeleteParams::default())
        .await
        .expect("delete the foreign Secret");
    let ready = env.wait_ready("reports").await;
    assert!(condition(&ready, "Stalled").is_none(), "{:?}", ready.status);
    let ours = env
        .secret("reports-token")
        .await
        .expect("the operator's Secret");
    let owner = ours
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.controller == Some(true))
        .expect("a controller owner reference");
    assert_eq!(Some(&owner.uid), ready.meta().uid.as_ref());
    assert_eq!(
        env.secret_value("reports-token", "access_token")
            .await
            .as_ref(),
        env.endpoint.issued_tokens().first()
    );
}

/// What follows each "Basic " in `text`, unless it was redacted.
fn basic_header_values(text: &str) -> Vec<String> {
    text.match_indices("Basic ")
        .map(|(at, prefix)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "+/=<>".contains(*c))
                .collect::<String>()
        })
        .filter(|value| value != "<redacted>" && !value.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reveals_secrets_or_tokens_in_logs_events_or_status() {
    let env = TestEnv::new("no-leak").await;
    // Success and renewal (form body and HTTP Basic) on the harness endpoint: 8 s tokens.
    env.endpoint.set_lifetime(Duration::from_secs(8));
    env.put_client_secret("greenlake-client").await;
    // invalid_client: the right id with a wrong secret.
    let wrong_secret = format!("wrong-secret-{}-{}", suffix(), suffix());
    env.put_secret(
        "wrong-client",
        &[
            ("client_id", &env.client_id),
            ("client_secret", &wrong_secret),
        ],
    )
    .await;
    // 503, 429, malformed JSON, then an error_description echoing what was sent.
    let faulty = TokenEndpoint::start().await;
    let faulty_id = format!("faulty-{}", suffix());
    let faulty_secret = format!("faulty-secret-{}-{}", suffix(), suffix());
    faulty.set_client(&faulty_id, &faulty_secret);
    for fault in [
        Fault::Status(503),
        Fault::RateLimited {
            retry_after: RetryAfter::Seconds(1),
        },
        Fault::MalformedJson,
        Fault::EchoCredentials,
    ] {
        faulty.push_fault(fault);
    }
    env.put_secret(
        "faulty-client",
        &[("client_id", &faulty_id), ("client_secret", &faulty_secret)],
    )
    .await;
    // An echo of the HTTP Basic header.
    let echo = TokenEndpoint::start().await;
    let echo_id = format!("echo-{}", suffix());
    let echo_secret = format!("echo-secret-{}-{}", suffix(), suffix());
    echo.set_client(&echo_id, &echo_secret);
    echo.set_sticky_fault(Some(Fault::EchoCredentials));
    env.put_secret(
        "echo-client",
        &[("client_id", &echo_id), ("client_secret", &echo_secret)],
    )
    .await;
    // A client Secret without its secret key.
    env.put_secret("partial-client", &[("client_id", &env.client_id)])
        .await;
    // A foreign Secret under a target name.
    env.put_secret("conflict-token", &[("access_token", "someone else's")])
        .await;

    let operator = env.start_operator(&[]);
    let spec = |client: &str, url: String, auth: &str| {
        let mut spec = env.spec(client);
        spec["tokenUrl"] = json!(url);
        spec["authMethod"] = json!(auth);
        spec
    };
    let post = "ClientSecretPost";
    let basic = "ClientSecretBasic";
    let credentials = [
        (
            "renewed-post",
            spec("greenlake-client", env.endpoint.url(), post),
        ),
        (
            "renewed-basic",
            spec("greenlake-client", env.endpoint.url(), basic),
        ),
        ("rejected", spec("wrong-client", env.endpoint.url(), post)),
        ("faulty", spec("faulty-client", faulty.url(), post)),
        ("echo-basic", spec("echo-client", echo.url(), basic)),
        ("missing", spec("no-such-client", env.endpoint.url(), post)),
        ("partial", spec("partial-client", env.endpoint.url(), post)),
        (
            "conflict",
            spec("greenlake-client", env.endpoint.url(), post),
        ),
    ];
    for (name, spec) in &credentials {
        env.create_credential(name, spec.clone())
            .await
            .expect("create a credential");
    }

    let timeout = Duration::from_secs(40);
    for (name, reason) in [
        ("rejected", "InvalidClientCredentials"),
        ("faulty", "InvalidClientCredentials"),
        ("echo-basic", "InvalidClientCredentials"),
        ("missing", "ClientSecretNotFound"),
        ("partial", "ClientSecretKeyMissing"),
        ("conflict", "TargetSecretConflict"),
    ] {
        env.wait_for_condition(name, "Ready", "False", Some(reason), timeout)
            .await;
    }
    let faulty_statuses: Vec<Option<u16>> = faulty.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        faulty_statuses,
        [Some(503), Some(429), Some(200), Some(401)],
        "every fault was served once"
    );
    // Renewals: each of the two good credentials got at least a second token.
    wait_until("renewals of both good credentials", timeout, || async {
        let by_auth = |basic: bool| {
            env.endpoint
                .requests()
                .iter()
                .filter(|r| r.token.is_some())
                .filter(|r| (r.auth == support::token_endpoint::ClientAuth::Basic) == basic)
                .count()
        };
        (by_auth(false) >= 2 && by_auth(true) >= 2).then_some(())
    })
    .await;
    for name in ["renewed-post", "renewed-basic"] {
        env.wait_ready(name).await;
    }

    let mut secrets = vec![
        env.client_secret.clone(),
        wrong_secret.clone(),
        faulty_secret.clone(),
        echo_secret.clone(),
    ];
    for (id, secret) in [
        (&env.client_id, &env.client_secret),
        (&env.client_id, &wrong_secret),
        (&faulty_id, &faulty_secret),
        (&echo_id, &echo_secret),
    ] {
        secrets.push(STANDARD.encode(format!("{id}:{secret}")));
    }
    let mut tokens = env.endpoint.issued_tokens();
    tokens.extend(faulty.issued_tokens());
    tokens.extend(echo.issued_tokens());
    assert!(tokens.len() >= 4, "tokens were issued: {}", tokens.len());

    let logs = operator.logs();
    assert!(
        logs.contains("the token request failed"),
        "the failures were logged (else this test proves nothing)"
    );
    let events = serde_json::to_string(&env.events().await).expect("serialize Events");
    assert!(events.contains("InvalidClientCredentials") && events.contains("RateLimited"));
    let mut statuses = String::new();
    for (name, _) in &credentials {
        let credential = env.credential(name).await;
        statuses.push_str(&serde_json::to_string(&credential.status).expect("serialize"));
    }
    let mut leaks = Vec::new();
    for (place, text) in [
        ("operator log", &logs),
        ("Events", &events),
        ("status", &statuses),
    ] {
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                leaks.push(format!(
                    "{place} contains the client secret or Basic value {secret}"
                ));
            }
        }
        for token in &tokens {
            if text.contains(token.as_str()) {
                leaks.push(format!("{place} contains an issued token"));
            }
        }
        for value in basic_header_values(text) {
            leaks.push(format!(
                "{place} contains a Basic authorization value {value}"
            ));
        }
    }
    assert!(
        leaks.is_empty(),
        "{leaks:#?}\n(operator log: {})",
        operator.log_path().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignores_credentials_outside_its_namespace() {
    let watched = TestEnv::new("namespaced-watched").await;
    let other = TestEnv::new("namespaced-other").await;
    // The credential in the other namespace comes first: if the operator saw it at all, it
    // would have acted on it by the time the watched one is Ready.
    other.put_client_secret("greenlake-client").await;
    other
        .create_credential("reports", other.spec("greenlake-client"))
        .await
        .expect("create the credential in the other namespace");
    watched.put_client_secret("greenlake-client").await;
    let _operator = watched.start_operator(&[]);
    watched
        .create_credential("reports", watched.spec("greenlake-client"))
        .await
        .expect("create the credential in the watched namespace");

    watched.wait_ready("reports").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ignored = other.credential("reports").await;
    assert_eq!(
        ignored.status, None,
        "the other namespace's credential got a status"
    );
    assert!(
        other.secret("reports-token").await.is_none(),
        "a Secret was written in the other namespace"
    );
    assert_eq!(
        other.endpoint.request_count(),
        0,
        "a token was requested for the other namespace"
    );
    let events = other.events().await;
    assert!(
        events.is_empty(),
        "Events in the other namespace: {events:?}"
    );
}
