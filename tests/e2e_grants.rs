//! The token endpoint as a shared resource and every GreenLake grant, end to end: token
//! groups across namespaces, the refresh-token grant with its fallback, and the MSP token
//! exchange (RFC 8693) with a subject and two tenants.

use dscc_testkit as support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use dscc_token_operator::api::DsccCredential;
use dscc_token_operator::token::decode_jwt_claims;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::{Value, json};
use support::harness::{TestEnv, condition, wait_for_credential, wait_until};

/// The token of credential `name`'s target Secret, if any.
async fn token_of(env: &TestEnv, name: &str) -> Option<String> {
    env.secret_value(&format!("{name}-token"), "access_token")
        .await
}

fn grant(credential: &DsccCredential) -> Option<String> {
    credential.status.as_ref()?.grant.clone()
}

fn group(credential: &DsccCredential) -> Option<String> {
    credential.status.as_ref()?.token_group.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_credentials_in_three_namespaces_sharing_one_client_make_one_request_per_renewal() {
    let lifetime = Duration::from_secs(30);
    let a = TestEnv::new("group-a").await;
    let b = TestEnv::new("group-b").await;
    let c = TestEnv::new("group-c").await;
    // One endpoint and one API client for everyone: a's.
    a.endpoint.set_lifetime(lifetime);
    let url = a.endpoint.url();
    let spec = json!({"clientSecretRef": {"name": "greenlake-client"}, "tokenUrl": url});
    let client = [
        ("client_id", a.client_id.as_str()),
        ("client_secret", a.client_secret.as_str()),
    ];
    for env in [&a, &b, &c] {
        env.put_secret("greenlake-client", &client).await;
    }
    // The same id with a secret one character off: it must never get the group's token.
    let mut almost = a.client_secret.clone();
    almost.pop();
    almost.push('!');
    c.put_secret(
        "almost-client",
        &[("client_id", &a.client_id), ("client_secret", &almost)],
    )
    .await;
    let _operator = a.start_operator(&[
        &format!("--namespace={}", b.namespace),
        &format!("--namespace={}", c.namespace),
    ]);
    let members: Vec<(&TestEnv, String)> = [(&a, 4), (&b, 3), (&c, 3)]
        .into_iter()
        .flat_map(|(env, n)| (0..n).map(move |i| (env, format!("member-{i}"))))
        .collect();
    for (env, name) in &members {
        env.create_credential(name, spec.clone())
            .await
            .expect("create a member");
    }
    let mut odd = spec.clone();
    odd["clientSecretRef"]["name"] = json!("almost-client");
    c.create_credential("almost", odd)
        .await
        .expect("create the odd one");

    let mut groups = HashSet::new();
    for (env, name) in &members {
        groups.insert(group(&env.wait_ready(name).await).expect("a token group"));
    }
    assert_eq!(groups.len(), 1, "one group: {groups:?}");
    let odd = c
        .wait_for_condition(
            "almost",
            "Ready",
            "False",
            Some("InvalidClientCredentials"),
            Duration::from_secs(30),
        )
        .await;
    assert_ne!(
        group(&odd),
        groups.iter().next().cloned(),
        "a different secret is a different group"
    );
    assert!(
        c.secret("almost-token").await.is_none(),
        "no token for a secret it does not hold"
    );

    // Watch every target over two renewals of the group.
    let started = Instant::now();
    let mut seen: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    while started.elapsed() < lifetime * 2 {
        for (env, name) in &members {
            let key = format!("{}/{name}", env.namespace);
            if let Some(token) = token_of(env, name).await {
                seen.entry(key).or_default().insert(token);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let requests: Vec<_> = a
        .endpoint
        .requests()
        .into_iter()
        .filter(|r| r.client_id.as_deref() == Some(a.client_id.as_str()) && r.status == Some(200))
        .collect();
    // One request per renewal for the whole group: consecutive requests are a renewal
    // window apart (a third of the lifetime is left at renewal), never 10 at once.
    for pair in requests.windows(2) {
        let gap = pair[1].received_at.duration_since(pair[0].received_at);
        assert!(
            gap >= lifetime / 3,
            "two group requests {gap:?} apart: {} in all",
            requests.len()
        );
    }
    assert!(
        requests.len() >= 2,
        "the group renewed at least once: {}",
        requests.len()
    );
    let issued: HashSet<String> = a.endpoint.issued_tokens().into_iter().collect();
    for (member, tokens) in &seen {
        assert!(
            tokens.is_subset(&issued),
            "{member} held a token the endpoint never issued"
        );
        assert!(
            tokens.len() >= 2,
            "{member} got the renewed token: {tokens:?}"
        );
    }
    // A member added later takes the group's valid token: no request.
    let before = a.endpoint.request_count();
    b.create_credential("latecomer", spec.clone())
        .await
        .expect("create the latecomer");
    b.wait_ready("latecomer").await;
    let latecomer = token_of(&b, "latecomer").await.expect("its token");
    assert!(issued.contains(&latecomer) || a.endpoint.issued_tokens().contains(&latecomer));
    assert_eq!(
        a.endpoint.request_count(),
        before,
        "the latecomer cost no request"
    );
    // The odd one never asked more than its backoff allows, and never held a token.
    assert!(c.secret("almost-token").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_renews_and_a_refused_one_falls_back_to_client_credentials() {
    let env = TestEnv::new("refresh-grant").await;
    env.endpoint.set_lifetime(Duration::from_secs(15));
    env.endpoint.set_refresh_tokens(true);
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create");
    let credential = env.wait_ready("reports").await;
    assert_eq!(grant(&credential).as_deref(), Some("ClientCredentials"));

    // The refresh token is kept in a Secret of its own, owned and labelled like the target,
    // and never in the target that workloads read.
    let refresh = env
        .secret("reports-refresh")
        .await
        .expect("the refresh-token Secret");
    assert!(dscc_token_operator::target_secret::is_controlled_by(
        &refresh,
        &credential
    ));
    assert_eq!(
        refresh.labels()["app.kubernetes.io/managed-by"],
        "dscc-token-operator"
    );
    let kept =
        String::from_utf8(refresh.data.as_ref().unwrap()["refresh_token"].0.clone()).unwrap();
    assert!(kept.starts_with("rt-"));
    let target: Secret = env.secret("reports-token").await.expect("the target");
    for (key, value) in target.data.iter().flatten() {
        assert!(
            !String::from_utf8_lossy(&value.0).contains(&kept),
            "the refresh token is in {key}"
        );
    }

    // The renewal uses it.
    let renewed = wait_for_credential(
        &env,
        "reports",
        "renewed by the refresh grant",
        Duration::from_secs(30),
        |c| grant(c).as_deref() == Some("RefreshToken"),
    )
    .await;
    assert_eq!(
        condition(&renewed, "Ready").map(|c| c.status),
        Some("True".into())
    );
    let refresh_request = env
        .endpoint
        .requests()
        .into_iter()
        .find(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .expect("a refresh request");
    assert_eq!(
        refresh_request.refresh_token.as_deref(),
        Some(kept.as_str())
    );

    // A refresh token the endpoint no longer accepts: one invalid_grant, then client
    // credentials in the same reconcile; Ready stays True.
    env.endpoint.invalidate_refresh_tokens();
    let before = env.endpoint.request_count();
    let fallback = wait_for_credential(
        &env,
        "reports",
        "renewed by client credentials",
        Duration::from_secs(30),
        |c| {
            grant(c).as_deref() == Some("ClientCredentials")
                && c.status.as_ref().and_then(|s| s.issued_at.clone())
                    != renewed.status.as_ref().and_then(|s| s.issued_at.clone())
        },
    )
    .await;
    assert_eq!(
        condition(&fallback, "Ready").map(|c| c.status),
        Some("True".into())
    );
    assert!(condition(&fallback, "Stalled").is_none());
    let after: Vec<_> = env.endpoint.requests()[before..].to_vec();
    let grants: Vec<(Option<String>, Option<u16>)> = after
        .iter()
        .take(2)
        .map(|r| (r.grant_type.clone(), r.status))
        .collect();
    assert_eq!(
        grants,
        [
            (Some("refresh_token".into()), Some(400)),
            (Some("client_credentials".into()), Some(200))
        ]
    );
}

fn claims_of(token: &str) -> serde_json::Map<String, Value> {
    decode_jwt_claims(token).expect("a JWT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_msp_subject_and_two_tenants_exchange_and_follow_the_subject() {
    let env = TestEnv::new("msp-exchange").await;
    env.put_client_secret("msp-client").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("msp", env.spec("msp-client"))
        .await
        .expect("create the MSP credential");
    let tenant = |workspace: &str| {
        // GreenLake's MSP exchange: the subject token alone authenticates (no clientSecretRef).
        json!({
            "tokenUrl": env.endpoint.workspace_url(workspace),
            "tokenExchange": {"subjectCredentialRef": {"name": "msp"}},
        })
    };
    env.create_credential("tenant-1", tenant("workspace-1"))
        .await
        .expect("create tenant 1");
    env.create_credential("tenant-2", tenant("workspace-2"))
        .await
        .expect("create tenant 2");

    env.wait_ready("msp").await;
    let mut tokens = BTreeMap::new();
    for (name, workspace) in [("tenant-1", "workspace-1"), ("tenant-2", "workspace-2")] {
        let credential = env.wait_ready(name).await;
        assert_eq!(grant(&credential).as_deref(), Some("TokenExchange"));
        let token = token_of(&env, name).await.expect("a tenant token");
        assert_eq!(claims_of(&token)["workspace"], workspace);
        tokens.insert(name, token);
    }
    let msp_token = token_of(&env, "msp").await.expect("the MSP token");
    for request in env
        .endpoint
        .requests()
        .iter()
        .filter(|r| r.workspace.is_some())
    {
        assert_eq!(request.subject_token.as_deref(), Some(msp_token.as_str()));
    }

    // The subject's token changes: both tenants exchange the new one.
    env.patch_credential(
        "msp",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "rotate"}}}),
    )
    .await;
    let new_msp = env
        .wait_for_new_token("msp-token", Some(&msp_token), Duration::from_secs(20))
        .await;
    for name in ["tenant-1", "tenant-2"] {
        let old = tokens[name].clone();
        let renewed = env
            .wait_for_new_token(
                &format!("{name}-token"),
                Some(&old),
                Duration::from_secs(20),
            )
            .await;
        let request = env
            .endpoint
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.token.as_deref() == Some(renewed.as_str()))
            .expect("the exchange that issued it");
        assert_eq!(
            request.subject_token.as_deref(),
            Some(new_msp.as_str()),
            "{name}"
        );
    }

    // The subject fails: a tenant that needs a token says so, naming the subject.
    env.endpoint.remove_client(&env.client_id);
    env.patch_credential(
        "msp",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "broken"}}}),
    )
    .await;
    env.wait_for_condition(
        "msp",
        "Ready",
        "False",
        Some("InvalidClientCredentials"),
        Duration::from_secs(20),
    )
    .await;
    env.patch_credential(
        "tenant-1",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "now"}}}),
    )
    .await;
    let waiting = env
        .wait_for_condition(
            "tenant-1",
            "Ready",
            "False",
            Some("SubjectNotReady"),
            Duration::from_secs(20),
        )
        .await;
    let message = condition(&waiting, "Ready").expect("Ready").message;
    assert!(
        message.contains("msp") && message.contains("InvalidClientCredentials"),
        "{message}"
    );
    // Its last token stays in place.
    assert!(token_of(&env, "tenant-1").await.is_some());
    // Fixed, the subject renews and the tenant follows.
    env.endpoint.set_client(&env.client_id, &env.client_secret);
    env.patch_credential(
        "msp",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "fixed"}}}),
    )
    .await;
    env.wait_for_condition("tenant-1", "Ready", "True", None, Duration::from_secs(30))
        .await;
    wait_until(
        "tenant-1 to follow the fixed subject",
        Duration::from_secs(20),
        || async {
            let credential = env.credential("tenant-1").await;
            (grant(&credential).as_deref() == Some("TokenExchange")).then_some(())
        },
    )
    .await;
}
