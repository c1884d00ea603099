//! Secret writes the API server refuses, and inputs that used to be refused: every one ends
//! in a status that says what to fix, and the token endpoint sees one request, not one per
//! retry (the token already minted is written again when the refusal is lifted).

use dscc_testkit as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::harness::{TestEnv, condition, wait_for_credential};

/// How long the token requests are counted while a write is refused.
const WINDOW: Duration = Duration::from_secs(120);

/// Token requests the endpoint of `env` got from `client_id`.
fn requests_from(env: &TestEnv, client_id: &str) -> usize {
    env.endpoint
        .requests()
        .iter()
        .filter(|r| r.client_id.as_deref() == Some(client_id))
        .count()
}

/// Waits until `name` is not Ready because its Secret write was refused, with `words` in the
/// message and a retry pending.
async fn refused(env: &TestEnv, name: &str, words: &[&str]) {
    let credential = env
        .wait_for_condition(
            name,
            "Ready",
            "False",
            Some("TargetSecretRejected"),
            Duration::from_secs(30),
        )
        .await;
    let message = condition(&credential, "Ready").expect("Ready").message;
    for word in words {
        assert!(message.contains(word), "{name}: {word:?} not in {message}");
    }
    assert!(
        condition(&credential, "Reconciling").is_some_and(|c| c.status == "True"),
        "{name}: retried by itself: {:?}",
        credential.status
    );
}

/// A quota that allows no more Secrets than exist.
async fn quota_for_one_secret(env: &TestEnv) {
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "secrets"},
        "spec": {"hard": {"count/secrets": "1"}},
    }))
    .expect("a quota");
    env.api::<ResourceQuota>()
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the quota");
    // The quota controller must have counted the existing Secret before the test relies on it.
    support::harness::wait_until(
        "the quota to be counted",
        Duration::from_secs(30),
        || async {
            let quota = env.api::<ResourceQuota>().get("secrets").await.ok()?;
            let used = quota.status?.used?;
            used.get("count/secrets").map(|_| ())
        },
    )
    .await;
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A ValidatingAdmissionPolicy (a webhook's job done by the API server's CEL) that refuses
/// the Secret `name` in `env`'s namespace.
async fn deny_secret(env: &TestEnv, name: &str) -> (String, String) {
    let policy_name = format!("deny-{}", env.namespace);
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["secrets"],
            }]},
            "validations": [{
                "expression": format!("object.metadata.name != '{name}'"),
                "message": format!("Secrets named {name} are not allowed in this namespace by policy"),
            }],
        },
    }))
    .expect("a policy");
    let binding: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.namespace}}},
        },
    }))
    .expect("a binding");
    let policies: Api<DynamicObject> = Api::all_with(
        env.client.clone(),
        &resource(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
        ),
    );
    let bindings: Api<DynamicObject> = Api::all_with(
        env.client.clone(),
        &resource(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
        ),
    );
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the policy");
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create the binding");
    // The policy takes effect once the API server has loaded it: wait until it denies.
    let probe: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a Secret");
    support::harness::wait_until("the policy to deny", Duration::from_secs(30), || async {
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        env.api::<Secret>()
            .create(&dry_run, &probe)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    (policy_name.clone(), policy_name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_secret_writes_end_in_a_reason_and_one_request_and_recover_when_lifted() {
    // Three namespaces, one refusal each, one operator for all of them.
    let quota = TestEnv::new("refused-quota").await;
    let policy = TestEnv::new("refused-policy").await;
    let immutable = TestEnv::new("refused-immutable").await;
    let (quota_client, _) = quota.put_own_client_secret("client").await;
    let (policy_client, _) = policy.put_own_client_secret("client").await;
    let (immutable_client, _) = immutable.put_own_client_secret("client").await;
    let _operator = quota.start_operator(&[
        &format!("--namespace={}", policy.namespace),
        &format!("--namespace={}", immutable.namespace),
    ]);

    // 1. A ResourceQuota that forbids the target Secret.
    quota_for_one_secret(&quota).await;
    quota
        .create_credential("reports", quota.spec("client"))
        .await
        .expect("create");
    // 2. An admission policy (webhook-style) that denies it.
    let (policy_name, binding_name) = deny_secret(&policy, "reports-token").await;
    policy
        .create_credential("reports", policy.spec("client"))
        .await
        .expect("create");
    // 3. A target someone made immutable, then a renewal is asked for.
    immutable
        .create_credential("reports", immutable.spec("client"))
        .await
        .expect("create");
    immutable.wait_ready("reports").await;
    immutable
        .api::<Secret>()
        .patch(
            "reports-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"immutable": true})),
        )
        .await
        .expect("make the target immutable");
    immutable
        .patch_credential(
            "reports",
            json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "now"}}}),
        )
        .await;

    refused(&quota, "reports", &["exceeded quota", "reports-token"]).await;
    refused(
        &policy,
        "reports",
        &["not allowed in this namespace by policy"],
    )
    .await;
    // Its old token is still valid and current: Ready stays True, the refusal is reported.
    let renewing = immutable
        .wait_for_condition(
            "reports",
            "Reconciling",
            "True",
            Some("TargetSecretRejected"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        condition(&renewing, "Ready").map(|c| c.status),
        Some("True".into())
    );
    let message = condition(&renewing, "Reconciling")
        .expect("Reconciling")
        .message;
    assert!(message.contains("immutable"), "{message}");

    // While refused for two minutes, each endpoint saw one request (the first token; the
    // immutable case: the first token and the renewal asked for).
    tokio::time::sleep(WINDOW).await;
    assert_eq!(
        requests_from(&quota, &quota_client),
        1,
        "quota: requests in {WINDOW:?}"
    );
    assert_eq!(
        requests_from(&policy, &policy_client),
        1,
        "policy: requests in {WINDOW:?}"
    );
    assert_eq!(
        requests_from(&immutable, &immutable_client),
        2,
        "immutable: requests in {WINDOW:?}"
    );
    for env in [&quota, &policy, &immutable] {
        let credential = env.credential("reports").await;
        let status = credential.status.expect("a status");
        assert!(
            status.failed_attempts >= 3,
            "{}: retried with backoff: {status:?}",
            env.namespace
        );
    }

    // Lifting each refusal recovers within seconds, with the token already minted.
    quota
        .api::<ResourceQuota>()
        .delete("secrets", &DeleteParams::default())
        .await
        .expect("delete the quota");
    let bindings: Api<DynamicObject> = Api::all_with(
        policy.client.clone(),
        &resource(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
        ),
    );
    bindings
        .delete(&binding_name, &DeleteParams::default())
        .await
        .expect("delete the binding");
    immutable
        .api::<Secret>()
        .delete("reports-token", &DeleteParams::default())
        .await
        .expect("delete the immutable Secret");
    for env in [&quota, &policy, &immutable] {
        env.wait_for_condition("reports", "Ready", "True", None, Duration::from_secs(20))
            .await;
        assert!(
            env.secret("reports-token").await.is_some(),
            "{}",
            env.namespace
        );
    }
    assert_eq!(
        requests_from(&quota, &quota_client),
        1,
        "quota: the held token was written"
    );
    assert_eq!(
        requests_from(&policy, &policy_client),
        1,
        "policy: the held token was written"
    );
    let policies: Api<DynamicObject> = Api::all_with(
        policy.client.clone(),
        &resource(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
        ),
    );
    let _ = policies
        .delete(&policy_name, &DeleteParams::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_name_and_a_changed_secret_type_are_written_without_a_loop() {
    let env = TestEnv::new("formerly-refused").await;
    let (long_client, _) = env.put_own_client_secret("long-client").await;
    let (typed_client, _) = env.put_own_client_secret("typed-client").await;
    let _operator = env.start_operator(&[]);

    // 70 characters: longer than a label value may be. The label carries a shortened name
    // with a hash; the owner reference is the real link.
    let long = format!("a-credential-with-a-long-name-{}", "x".repeat(40));
    assert_eq!(long.len(), 70);
    env.create_credential(&long, env.spec("long-client"))
        .await
        .expect("create");
    let credential = env.wait_ready(&long).await;
    let secret = env
        .secret(&format!("{long}-token"))
        .await
        .expect("its target Secret");
    let label = &secret.labels()["dscc.io/credential"];
    assert!(
        label.len() <= 63 && label.starts_with("a-credential-with"),
        "{label}"
    );
    assert!(dscc_token_operator::target_secret::is_controlled_by(
        &secret,
        &credential
    ));

    // A type change of an existing target: the Secret is replaced, its data kept valid.
    env.create_credential("typed", env.spec("typed-client"))
        .await
        .expect("create");
    env.wait_ready("typed").await;
    let before = env
        .secret("typed-token")
        .await
        .expect("the target")
        .metadata
        .uid;
    env.patch_credential(
        "typed",
        json!({"spec": {"target": {"type": "example.com/dscc-token"}}}),
    )
    .await;
    let replaced = support::harness::wait_until(
        "the Secret to be replaced",
        Duration::from_secs(20),
        || async {
            let secret = env.secret("typed-token").await?;
            (secret.type_.as_deref() == Some("example.com/dscc-token")).then_some(secret)
        },
    )
    .await;
    assert_ne!(
        replaced.metadata.uid, before,
        "a new Secret (the type is immutable)"
    );
    wait_for_credential(
        &env,
        "typed",
        "Ready for the new spec",
        Duration::from_secs(20),
        |c| {
            condition(c, "Ready").is_some_and(|r| {
                r.status == "True" && r.observed_generation == c.metadata.generation
            })
        },
    )
    .await;

    // No loop: a window after both are Ready adds no request.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        requests_from(&env, &long_client),
        1,
        "the long name: one token"
    );
    assert_eq!(
        requests_from(&env, &typed_client),
        1,
        "the type change needs no new token"
    );
}
