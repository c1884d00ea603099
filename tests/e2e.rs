//! End-to-end tests of every behaviour, against a real control plane (see testkit/).
//! Each test has its own namespace, token endpoint and operator process.

use dscc_testkit as support;

use std::collections::BTreeMap;
use std::time::Duration;

use dscc_token_operator::api::DsccCredential;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::harness::{
    TestEnv, assert_renewed_in_time, parse_time, sample_every, suffix, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_credential_gets_a_token_secret_and_becomes_ready() {
    let env = TestEnv::new("create").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create the credential");

    let credential = env.wait_ready("reports").await;
    let status = credential.status.clone().expect("a status");
    assert_eq!(status.secret_name.as_deref(), Some("reports-token"));
    assert_eq!(status.observed_generation, credential.meta().generation);
    let expires_at = status.expires_at.expect("expiresAt").0;
    let renewal = status.renewal_time.expect("renewalTime").0;
    assert!(
        renewal < expires_at,
        "renewal {renewal} must come before expiry {expires_at}"
    );

    let secret = env
        .secret("reports-token")
        .await
        .expect("the target Secret");
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "dscc-token-operator"
    );
    assert_eq!(labels["dscc.io/credential"], "reports");
    let owner = &secret.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(owner.kind, "DsccCredential");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(Some(&owner.uid), credential.meta().uid.as_ref());

    let issued = env.endpoint.issued_tokens();
    assert_eq!(issued.len(), 1, "exactly one token request");
    let token = env
        .secret_value("reports-token", "access_token")
        .await
        .unwrap();
    assert_eq!(token, issued[0]);
    assert_eq!(
        env.secret_value("reports-token", "authorization")
            .await
            .unwrap(),
        format!("Bearer {token}")
    );
    assert_eq!(
        env.secret_value("reports-token", "token_type")
            .await
            .unwrap(),
        "Bearer"
    );
    let written_expiry = env
        .secret_value("reports-token", "expires_at")
        .await
        .unwrap();
    assert_eq!(parse_time(&written_expiry), expires_at);

    let wait = env.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "dscccredential/reports",
        "--timeout=10s",
    ]);
    assert!(wait.status.success(), "kubectl wait failed: {wait:?}");
    let _: Option<DsccCredential> = None;
    let _ = Duration::ZERO;
}

/// Creates a credential `name` with `spec`, waits for Ready and returns its token.
async fn ready_credential(env: &TestEnv, name: &str, spec: Value) -> String {
    env.create_credential(name, spec)
        .await
        .unwrap_or_else(|e| panic!("create the credential {name}: {e}"));
    env.wait_ready(name).await;
    env.secret_value(&format!("{name}-token"), "access_token")
        .await
        .expect("the target Secret holds a token")
}

/// Asserts that the endpoint received `expected` requests so far, and still has after a
/// short quiet window (so no late duplicate is on its way).
async fn assert_requests_settle_at(env: &TestEnv, expected: usize, what: &str) {
    assert_eq!(
        env.endpoint.request_count(),
        expected,
        "token requests {what}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.endpoint.request_count(),
        expected,
        "token requests {what}, after a quiet window"
    );
}

/// Asserts that Secret `name` holds `token` as the endpoint issued it, under the default keys.
async fn assert_secret_holds(env: &TestEnv, name: &str, token: &str) {
    let secret = env.secret(name).await.expect("the target Secret");
    let data: BTreeMap<String, String> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8")))
        .collect();
    assert_eq!(data["access_token"], token);
    assert_eq!(data["authorization"], format!("Bearer {token}"));
    assert_eq!(data["token_type"], "Bearer");
    let expires_at = parse_time(&data["expires_at"]);
    assert!(
        expires_at > Timestamp::now(),
        "the written token is already expired"
    );
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "dscc-token-operator"
    );
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "DsccCredential" && o.controller == Some(true)),
        "the Secret has no controller owner reference: {owners:?}"
    );
}

/// The Ready condition of a credential, if any.
fn ready_condition(credential: &DsccCredential) -> Option<Condition> {
    credential
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

/// Waits until the Ready condition has `reason`, whatever its status.
async fn wait_for_ready_reason(
    env: &TestEnv,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Condition {
    let description = format!("{}/{name} Ready reason {reason}", env.namespace);
    wait_until(&description, timeout, || async {
        ready_condition(&env.credential(name).await).filter(|c| c.reason == reason)
    })
    .await
}

/// Waits until the credential's status describes its current generation and Ready is True
/// with a freshly issued token (a Ready=True left over from before an edit does not count).
async fn wait_ready_for_current_generation(env: &TestEnv, name: &str) -> DsccCredential {
    let description = format!("{}/{name} Ready for its current generation", env.namespace);
    wait_until(&description, Duration::from_secs(30), || async {
        let credential = env.credential(name).await;
        let generation = credential.metadata.generation;
        let observed = credential.status.as_ref()?.observed_generation;
        let ready = ready_condition(&credential)?;
        (observed == generation
            && ready.observed_generation == generation
            && ready.status == "True"
            && ready.reason == "TokenIssued")
            .then_some(credential)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_short_lived_tokens_before_they_expire_with_one_request_per_renewal() {
    let env = TestEnv::new("renewal").await;
    let lifetime = Duration::from_secs(6);
    env.endpoint.set_lifetime(lifetime);
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    let tokens = env.watch_token("reports-token", Duration::from_millis(100));
    let credentials: Api<DsccCredential> = env.api();
    let readiness = sample_every(Duration::from_millis(250), move || {
        let credentials = credentials.clone();
        async move {
            let credential = credentials
                .get("reports")
                .await
                .expect("read the credential");
            ready_condition(&credential).map(|c| (c.status, c.reason))
        }
    });
    wait_until("three renewals", Duration::from_secs(60), || async {
        (env.endpoint.issued_tokens().len() >= 4).then_some(())
    })
    .await;
    let readings = tokens.stop().await;
    let readiness = readiness.stop().await;

    assert_renewed_in_time(&readings, &env.endpoint, lifetime);
    for sample in &readiness {
        assert_eq!(
            sample.as_ref().map(|(s, r)| (s.as_str(), r.as_str())),
            Some(("True", "TokenIssued")),
            "Ready must stay True through renewals; samples: {readiness:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_client_secret_gets_a_new_token_from_the_new_client() {
    let env = TestEnv::new("client-rotation").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let old = ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    let new_id = format!("rotated-{}", suffix());
    let new_secret = format!("rotated-secret-{}", suffix());
    env.endpoint.set_client(&new_id, &new_secret);
    env.put_secret(
        "greenlake-client",
        &[("client_id", &new_id), ("client_secret", &new_secret)],
    )
    .await;

    let token = env
        .wait_for_new_token("reports-token", Some(&old), Duration::from_secs(15))
        .await;
    let requests = env.endpoint.requests();
    assert_eq!(
        requests.len(),
        2,
        "one request for the first token, one after the change"
    );
    let last = requests.last().expect("a request");
    assert_eq!(last.client_id.as_deref(), Some(new_id.as_str()));
    assert_eq!(last.token.as_deref(), Some(token.as_str()));
    assert_secret_holds(&env, "reports-token", &token).await;
    wait_ready_for_current_generation(&env, "reports").await;
    assert_requests_settle_at(&env, 2, "after the client Secret changed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_target_secret_is_restored_without_a_new_request() {
    let env = TestEnv::new("target-deleted").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let old = ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    env.api::<Secret>()
        .delete("reports-token", &DeleteParams::default())
        .await
        .expect("delete the target Secret");

    // The operator still holds the valid token it wrote: it restores the Secret with it.
    let token = env
        .wait_for_new_token("reports-token", None, Duration::from_secs(15))
        .await;
    assert_eq!(token, old);
    assert_secret_holds(&env, "reports-token", &token).await;
    wait_ready_for_current_generation(&env, "reports").await;
    assert_requests_settle_at(&env, 1, "after the target Secret was deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_token_data_in_the_target_secret_is_repaired_without_a_new_request() {
    let env = TestEnv::new("target-edited").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let old = ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    env.api::<Secret>()
        .patch(
            "reports-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"access_token": "tampered"}})),
        )
        .await
        .expect("edit the target Secret");

    let token = env
        .wait_for_new_token("reports-token", Some("tampered"), Duration::from_secs(15))
        .await;
    assert_eq!(token, old, "the valid token it holds is written back");
    assert_secret_holds(&env, "reports-token", &token).await;
    wait_ready_for_current_generation(&env, "reports").await;
    assert_requests_settle_at(&env, 1, "after the token data was edited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_credential_garbage_collects_its_target_secret() {
    let env = TestEnv::new("credential-deleted").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    env.api::<DsccCredential>()
        .delete("reports", &DeleteParams::default())
        .await
        .expect("delete the credential");

    env.wait_for_secret_gone("reports-token", Duration::from_secs(60))
        .await;
    assert_eq!(
        env.endpoint.request_count(),
        1,
        "no token requests after the deletion"
    );
}

/// Stops the operator (SIGTERM, or SIGKILL when `crash`), starts it again and checks that
/// the valid tokens of several credentials are kept.
async fn restart_keeps_valid_tokens(test: &str, crash: bool) {
    let env = TestEnv::new(test).await;
    let mut operator = env.start_operator(&[]);
    let names = ["alpha", "beta", "gamma"];
    // A client each: credentials sharing one would share one token (token groups).
    for name in names {
        let client = format!("{name}-client");
        env.put_own_client_secret(&client).await;
        env.create_credential(name, env.spec(&client))
            .await
            .expect("create a credential");
    }
    let mut before = BTreeMap::new();
    for name in names {
        let credential = env.wait_ready(name).await;
        let token = env
            .secret_value(&format!("{name}-token"), "access_token")
            .await
            .expect("a token");
        let since = ready_condition(&credential)
            .expect("Ready")
            .last_transition_time;
        before.insert(name, (token, since));
    }
    assert_eq!(env.endpoint.request_count(), names.len());

    let credentials: Api<DsccCredential> = env.api();
    let readiness = sample_every(Duration::from_millis(250), move || {
        let credentials = credentials.clone();
        async move {
            let mut states = vec![];
            for name in names {
                let credential = credentials.get(name).await.expect("read a credential");
                states.push((name, ready_condition(&credential).map(|c| c.status)));
            }
            states
        }
    });

    let logged = operator.logs().len();
    if crash {
        operator.kill();
    } else {
        operator.stop();
    }
    operator.start_again();
    // The new process has looked at every credential (its initial list reconciles them all).
    wait_until(
        "the restarted operator to reconcile every credential",
        Duration::from_secs(30),
        || async {
            let logs = operator.logs();
            let since_restart = &logs[logged.min(logs.len())..];
            names
                .iter()
                .all(|name| {
                    since_restart.lines().any(|line| {
                        line.contains(r#""message":"reconciled""#)
                            && line.contains(&format!("dscc.io/{name}.{}\"", env.namespace))
                    })
                })
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let readiness = readiness.stop().await;

    assert_eq!(
        env.endpoint.request_count(),
        names.len(),
        "the restarted operator requested tokens although all were valid"
    );
    for name in names {
        let token = env
            .secret_value(&format!("{name}-token"), "access_token")
            .await
            .expect("a token");
        assert_eq!(token, before[name].0, "the token of {name} changed");
        let ready = ready_condition(&env.credential(name).await).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "TokenIssued")
        );
        assert_eq!(
            ready.last_transition_time, before[name].1,
            "Ready of {name} flipped"
        );
    }
    for sample in &readiness {
        for (name, status) in sample {
            assert_eq!(status.as_deref(), Some("True"), "Ready of {name} left True");
        }
    }

    // The restarted operator is alive, not merely idle: a manual refresh is answered.
    env.patch_credential(
        "alpha",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "after-restart"}}}),
    )
    .await;
    env.wait_for_new_token(
        "alpha-token",
        Some(&before["alpha"].0),
        Duration::from_secs(15),
    )
    .await;
    assert_requests_settle_at(&env, names.len() + 1, "after one manual refresh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_does_not_reissue_valid_tokens() {
    restart_keeps_valid_tokens("restart", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_and_started_again_does_not_reissue_valid_tokens() {
    restart_keeps_valid_tokens("crash", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_target_keys_replace_the_old_keys() {
    let env = TestEnv::new("keys-renamed").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let old = ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    env.patch_credential(
        "reports",
        json!({"spec": {"target": {"keys": {
            "accessToken": "TOKEN",
            "authorization": "AUTH_HEADER",
            "expiresAt": "",
        }}}}),
    )
    .await;

    let data = wait_until(
        "the Secret to use the new key names",
        Duration::from_secs(15),
        || async {
            let secret = env.secret("reports-token").await?;
            let data = secret.data?;
            data.contains_key("TOKEN").then_some(data)
        },
    )
    .await;
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["AUTH_HEADER", "TOKEN", "token_type"],
        "old keys must be gone"
    );
    let token = String::from_utf8(data["TOKEN"].0.clone()).expect("utf-8");
    // New key names need no new token: the valid one is written under them.
    assert_eq!(token, old);
    assert_eq!(
        String::from_utf8(data["AUTH_HEADER"].0.clone()).expect("utf-8"),
        format!("Bearer {token}")
    );
    wait_ready_for_current_generation(&env, "reports").await;
    assert_requests_settle_at(&env, 1, "after the key names changed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_target_name_moves_the_token_and_deletes_the_old_secret() {
    let env = TestEnv::new("target-renamed").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let old = ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    env.patch_credential(
        "reports",
        json!({"spec": {"target": {"name": "reports-moved"}}}),
    )
    .await;

    let token = env
        .wait_for_new_token("reports-moved", None, Duration::from_secs(15))
        .await;
    assert_eq!(token, old, "the token moves; nothing new is requested");
    assert_secret_holds(&env, "reports-moved", &token).await;
    env.wait_for_secret_gone("reports-token", Duration::from_secs(15))
        .await;
    let credential = wait_ready_for_current_generation(&env, "reports").await;
    let status = credential.status.expect("a status");
    assert_eq!(status.secret_name.as_deref(), Some("reports-moved"));
    assert_requests_settle_at(&env, 1, "after the target name changed").await;
    assert!(
        env.secret("reports-token").await.is_none(),
        "the old Secret came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_scopes_are_sent_with_the_next_token_request() {
    let env = TestEnv::new("scopes").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let old = ready_credential(&env, "reports", env.spec("greenlake-client")).await;
    assert_eq!(
        env.endpoint.requests()[0].scope,
        None,
        "no scopes, no scope parameter"
    );

    env.patch_credential(
        "reports",
        json!({"spec": {"scopes": ["dscc.read", "dscc.write"]}}),
    )
    .await;

    let token = env
        .wait_for_new_token("reports-token", Some(&old), Duration::from_secs(15))
        .await;
    let requests = env.endpoint.requests();
    let last = requests.last().expect("a request");
    assert_eq!(last.scope.as_deref(), Some("dscc.read dscc.write"));
    assert_eq!(last.token.as_deref(), Some(token.as_str()));
    wait_ready_for_current_generation(&env, "reports").await;
    assert_requests_settle_at(&env, 2, "after the scopes changed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_new_refresh_annotation_value_issues_exactly_one_token() {
    let env = TestEnv::new("manual-refresh").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    let first = ready_credential(&env, "reports", env.spec("greenlake-client")).await;
    let refresh =
        |value: &str| json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": value}}});

    env.patch_credential("reports", refresh("2026-11-25T10:00:00Z"))
        .await;
    let second = env
        .wait_for_new_token("reports-token", Some(&first), Duration::from_secs(15))
        .await;
    assert_requests_settle_at(&env, 2, "after the first refresh request").await;

    // The same value again, with another annotation so the credential does change and is
    // reconciled: nothing to do.
    env.patch_credential(
        "reports",
        json!({"metadata": {"annotations": {
            "dscc.io/refresh-requested-at": "2026-11-25T10:00:00Z",
            "example.com/touched": "yes",
        }}}),
    )
    .await;
    assert_requests_settle_at(&env, 2, "after the same refresh value was set again").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.secret_value("reports-token", "access_token")
            .await
            .as_deref(),
        Some(second.as_str())
    );

    env.patch_credential("reports", refresh("2026-11-25T10:05:00Z"))
        .await;
    let third = env
        .wait_for_new_token("reports-token", Some(&second), Duration::from_secs(15))
        .await;
    assert_eq!(env.endpoint.issued_tokens(), [first, second, third.clone()]);
    assert_secret_holds(&env, "reports-token", &third).await;
    wait_ready_for_current_generation(&env, "reports").await;
    assert_requests_settle_at(&env, 3, "after the second refresh request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_stops_renewals_until_resumed() {
    let env = TestEnv::new("suspend").await;
    let lifetime = Duration::from_secs(6);
    env.endpoint.set_lifetime(lifetime);
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    env.patch_credential("reports", json!({"spec": {"suspend": true}}))
        .await;
    let suspended =
        wait_for_ready_reason(&env, "reports", "Suspended", Duration::from_secs(15)).await;
    assert_eq!(
        suspended.status, "True",
        "a suspended credential whose token is still valid stays Ready"
    );
    let suspended_at = env.endpoint.request_count();
    let token = env
        .secret_value("reports-token", "access_token")
        .await
        .expect("a token");

    // Suspended past the token's expiry: no renewal, and Ready says why.
    let expired = wait_for_ready_reason(&env, "reports", "TokenExpired", lifetime * 3).await;
    assert_eq!(expired.status, "False", "an expired token is not Ready");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.endpoint.request_count(),
        suspended_at,
        "token requests while suspended"
    );
    assert_eq!(
        env.secret_value("reports-token", "access_token")
            .await
            .as_deref(),
        Some(token.as_str()),
        "the suspended token must stay in place"
    );

    env.patch_credential("reports", json!({"spec": {"suspend": false}}))
        .await;
    let resumed = env
        .wait_for_new_token("reports-token", Some(&token), Duration::from_secs(15))
        .await;
    wait_ready_for_current_generation(&env, "reports").await;
    assert_eq!(
        env.endpoint.request_count(),
        suspended_at + 1,
        "one request on resume"
    );
    // Renewals run again on their own.
    env.wait_for_new_token("reports-token", Some(&resumed), lifetime * 2)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_and_resuming_with_a_valid_token_issues_nothing() {
    let env = TestEnv::new("suspend-valid").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    env.patch_credential("reports", json!({"spec": {"suspend": true}}))
        .await;
    wait_for_ready_reason(&env, "reports", "Suspended", Duration::from_secs(15)).await;
    env.patch_credential(
        "reports",
        json!({"spec": {"suspend": false, "refreshBefore": "30m"}}),
    )
    .await;
    let ready =
        wait_for_ready_reason(&env, "reports", "TokenIssued", Duration::from_secs(15)).await;
    assert_eq!(ready.status, "True");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.endpoint.request_count(),
        1,
        "neither suspend nor refreshBefore is something a token is made from"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_describes_the_target_keys() {
    let env = TestEnv::new("explain").await;
    // The OpenAPI document of a new CRD is published a moment after it is established.
    let output = wait_until(
        "kubectl explain to answer",
        Duration::from_secs(30),
        || async {
            let output = env.kubectl(&["explain", "dscccredential.spec.target.keys"]);
            output.status.success().then_some(output)
        },
    )
    .await;
    let text = String::from_utf8_lossy(&output.stdout);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "Names of the keys written into the Secret",
        "accessToken",
        "Key for the raw access token",
        "authorization",
        "Key for a ready-made HTTP Authorization header value",
        "expiresAt",
        "Key for the expiry time (RFC 3339)",
        "tokenType",
        "apiUrl",
    ] {
        assert!(
            flat.contains(expected),
            "kubectl explain lacks {expected:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_dscc_shows_ready_secret_expires_and_renewal_columns() {
    let env = TestEnv::new("printer-columns").await;
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    ready_credential(&env, "reports", env.spec("greenlake-client")).await;

    let output = env.kubectl(&["get", "dscc"]);
    assert!(
        output.status.success(),
        "kubectl get dscc failed: {output:?}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SECRET", "EXPIRES", "RENEWAL", "AGE"]
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row.len(), header.len(), "every column has a value: {text}");
    assert_eq!(&row[..3], ["reports", "True", "reports-token"]);
    // The expiry and the renewal are in the future, so they are shown as times, not ages
    // (a future time in a date column prints as "<invalid>").
    let status = env.credential("reports").await.status.expect("a status");
    let expires = status.expires_at.expect("expiresAt").0;
    let renewal = status.renewal_time.expect("renewalTime").0;
    assert_eq!(
        parse_time(row[3]).as_second(),
        expires.as_second(),
        "{text}"
    );
    assert_eq!(
        parse_time(row[4]).as_second(),
        renewal.as_second(),
        "{text}"
    );

    let wide = env.kubectl(&["get", "dscc", "-o", "wide"]);
    let wide = String::from_utf8_lossy(&wide.stdout);
    assert!(
        wide.lines().next().is_some_and(|h| h.contains("REASON")),
        "{wide}"
    );
    assert!(wide.contains("TokenIssued"), "{wide}");
}
