//! The adversarial suite: hostile input of three kinds fed to one running operator at once.
//! - specs the API server accepts,
//! - Secrets and annotations edited behind the operator's back,
//! - answers of a token endpoint.
//!
//! For every case: no panic, the operator keeps reconciling the others (a canary with
//! 10-second tokens renews throughout), the status names what to fix, the token endpoint
//! sees a bounded number of requests in a fixed window, the last valid token stays where
//! there was one, and no client secret or token appears in the logs, Events, statuses or
//! metrics.

use dscc_testkit as support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use dscc_token_operator::api::DsccCredential;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::harness::{TestEnv, condition, suffix};
use support::token_endpoint::{Fault, TokenEndpoint};

/// How long requests are counted after every case is set up.
const WINDOW: Duration = Duration::from_secs(60);

/// What a case must end in.
struct Expect {
    /// `Ready` status and reason (`None`: any reason).
    ready: (&'static str, Option<&'static str>),
    /// Token requests allowed during the window (the backoff's attempts, with margin).
    max_requests: usize,
    /// Whether the token it had before the hostile input must still be in place.
    keeps_token: bool,
}

/// How the case is set up: an endpoint of its own (for hostile answers), a client, a spec.
struct Case {
    name: String,
    kind: &'static str,
    what: &'static str,
    endpoint: TokenEndpoint,
    client_id: String,
    client_secret: String,
    expect: Expect,
    /// The token in its target before the hostile input, for `keeps_token`.
    token_before: Option<String>,
}

const fn expect(
    ready: &'static str,
    reason: Option<&'static str>,
    max_requests: usize,
    keeps_token: bool,
) -> Expect {
    Expect {
        ready: (ready, reason),
        max_requests,
        keeps_token,
    }
}

/// A case's world: its own endpoint and client, and a client Secret `<name>-client`.
async fn case(
    env: &TestEnv,
    name: &str,
    kind: &'static str,
    what: &'static str,
    expect: Expect,
) -> Case {
    let endpoint = TokenEndpoint::start().await;
    let client_id = format!("{name}-{}", suffix());
    let client_secret = format!("s3cret-{name}-{}-{}", suffix(), suffix());
    endpoint.set_client(&client_id, &client_secret);
    env.put_secret(
        &format!("{name}-client"),
        &[("client_id", &client_id), ("client_secret", &client_secret)],
    )
    .await;
    Case {
        name: name.to_owned(),
        kind,
        what,
        endpoint,
        client_id,
        client_secret,
        expect,
        token_before: None,
    }
}

fn spec_for(case: &Case) -> Value {
    json!({
        "clientSecretRef": {"name": format!("{}-client", case.name)},
        "tokenUrl": case.endpoint.url(),
    })
}

/// Creates the credential with `spec` merged over the case's default spec.
async fn create(env: &TestEnv, case: &Case, overrides: Value) {
    let mut spec = spec_for(case);
    merge(&mut spec, overrides);
    env.create_credential(&case.name, spec)
        .await
        .unwrap_or_else(|e| panic!("{}: the API server accepts this spec: {e}", case.name));
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                merge(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (into, from) => *into = from,
    }
}

/// Creates the credential and waits until it is Ready with a token; returns the token.
async fn ready_first(env: &TestEnv, case: &mut Case, overrides: Value) {
    create(env, case, overrides).await;
    env.wait_for_condition(&case.name, "Ready", "True", None, Duration::from_secs(60))
        .await;
    case.token_before = env
        .secret_value(&format!("{}-token", case.name), "access_token")
        .await;
}

async fn refresh(env: &TestEnv, name: &str, value: &str) {
    env.patch_credential(
        name,
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": value}}}),
    )
    .await;
}

async fn annotate_target(env: &TestEnv, name: &str, annotation: &str, value: &str) {
    env.api::<Secret>()
        .patch(
            &format!("{name}-token"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {annotation: value}}})),
        )
        .await
        .expect("edit the target's bookkeeping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_specs_edits_and_answers_never_loop_leak_panic_or_take_over() {
    let env = TestEnv::new("hostile").await;
    // A canary with 10-second tokens: it must keep renewing whatever the others do.
    let canary_endpoint = TokenEndpoint::start().await;
    canary_endpoint.set_lifetime(Duration::from_secs(20));
    canary_endpoint.set_client(&env.client_id, &env.client_secret);
    env.put_client_secret("canary-client").await;
    // The test flags, but a renewal floor of 10 s: endpoints that issue 2-second tokens must
    // not make it ask every 2 seconds.
    let mut args: Vec<String> = support::operator::test_flags()
        .into_iter()
        .filter(|flag| !flag.starts_with("--min-renewal-interval"))
        .collect();
    args.extend([
        "--min-renewal-interval=10s".to_owned(),
        "--request-timeout=2s".to_owned(),
        "--connect-timeout=1s".to_owned(),
        format!("--namespace={}", env.namespace),
    ]);
    let mut operator = support::operator::Operator::start(
        &env.cluster.kubeconfig,
        args,
        env.log_dir.join("operator-hostile.log"),
    );
    let mut canary = env.spec("canary-client");
    canary["tokenUrl"] = json!(canary_endpoint.url());
    env.create_credential("canary", canary)
        .await
        .expect("create the canary");

    let mut cases: Vec<Case> = vec![];

    // ---- 1. Specs the API server accepts -------------------------------------------------
    let c = case(
        &env,
        "blackholed",
        "spec",
        "a token URL whose server never answers",
        expect("False", Some("TokenEndpointUnavailable"), 12, false),
    )
    .await;
    c.endpoint.set_sticky_fault(Some(Fault::Hang));
    create(&env, &c, json!({})).await;
    cases.push(c);

    let c = case(
        &env,
        "refused-port",
        "spec",
        "a token URL nobody listens on",
        expect("False", Some("TokenEndpointUnavailable"), 0, false),
    )
    .await;
    create(
        &env,
        &c,
        json!({"tokenUrl": format!("http://127.0.0.1:{}/as/token.oauth2", free_port())}),
    )
    .await;
    cases.push(c);

    let c = case(
        &env,
        "dns",
        "spec",
        "a token URL whose host name cannot be resolved",
        expect("False", Some("TokenEndpointUnavailable"), 0, false),
    )
    .await;
    // A label longer than 63 characters: the resolver refuses it without asking anyone.
    create(
        &env,
        &c,
        json!({"tokenUrl": format!("http://{}.test:8080/token", "x".repeat(64))}),
    )
    .await;
    cases.push(c);

    let c = case(
        &env,
        "own-client",
        "spec",
        "a target name that is its own client Secret",
        expect("False", Some("TargetSecretConflict"), 1, false),
    )
    .await;
    create(&env, &c, json!({"target": {"name": "own-client-client"}})).await;
    cases.push(c);

    let mut c = case(
        &env,
        "first-owner",
        "spec",
        "two credentials naming one target (the first)",
        expect("True", None, 1, true),
    )
    .await;
    ready_first(&env, &mut c, json!({"target": {"name": "contested"}})).await;
    cases.push(c);
    let c = case(
        &env,
        "second-owner",
        "spec",
        "two credentials naming one target (the second)",
        expect("False", Some("TargetSecretConflict"), 1, false),
    )
    .await;
    create(&env, &c, json!({"target": {"name": "contested"}})).await;
    cases.push(c);

    let foreign = serde_json::from_value::<Secret>(
        json!({"metadata": {"name": "someone-elses"}, "stringData": {"x": "untouched"}}),
    )
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &foreign)
        .await
        .expect("a foreign Secret");
    let c = case(
        &env,
        "takeover",
        "spec",
        "a target name of a Secret someone else made",
        expect("False", Some("TargetSecretConflict"), 1, false),
    )
    .await;
    create(&env, &c, json!({"target": {"name": "someone-elses"}})).await;
    cases.push(c);

    let c = case(
        &env,
        "tiny-lifetime",
        "spec",
        "an endpoint that issues 2-second tokens",
        expect("any", None, 8, false),
    )
    .await;
    c.endpoint.set_lifetime(Duration::from_secs(2));
    create(&env, &c, json!({"refreshBeforePercentage": 99})).await;
    cases.push(c);

    let c = case(
        &env,
        "refresh-before-huge",
        "spec",
        "refreshBefore longer than any token",
        expect("True", None, 1, false),
    )
    .await;
    create(&env, &c, json!({"refreshBefore": "100000h"})).await;
    cases.push(c);

    let c = case(
        &env,
        "many-scopes",
        "spec",
        "32 scopes of 256 characters",
        expect("True", None, 1, false),
    )
    .await;
    let scopes: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "s".repeat(254)))
        .collect();
    create(&env, &c, json!({"scopes": scopes})).await;
    cases.push(c);

    let c = case(
        &env,
        "self-subject",
        "spec",
        "a token exchange whose subject is itself",
        expect("False", Some("InvalidSpec"), 0, false),
    )
    .await;
    create(
        &env,
        &c,
        json!({"tokenExchange": {"subjectCredentialRef": {"name": "self-subject"}}}),
    )
    .await;
    cases.push(c);

    let c = case(
        &env,
        "cycle-a",
        "spec",
        "two token exchanges that are each other's subject",
        expect("False", Some("SubjectNotReady"), 0, false),
    )
    .await;
    create(
        &env,
        &c,
        json!({"tokenExchange": {"subjectCredentialRef": {"name": "cycle-b"}}}),
    )
    .await;
    cases.push(c);
    let c = case(
        &env,
        "cycle-b",
        "spec",
        "two token exchanges that are each other's subject",
        expect("False", Some("SubjectNotReady"), 0, false),
    )
    .await;
    create(
        &env,
        &c,
        json!({"tokenExchange": {"subjectCredentialRef": {"name": "cycle-a"}}}),
    )
    .await;
    cases.push(c);

    let c = case(
        &env,
        "no-workload",
        "spec",
        "a rollout restart target that does not exist",
        expect("True", Some("TokenIssued"), 1, false),
    )
    .await;
    create(
        &env,
        &c,
        json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "not-there"}]}),
    )
    .await;
    cases.push(c);

    let c = case(
        &env,
        "verify-blackhole",
        "spec",
        "verify against an API that never answers",
        expect("False", Some("VerifyUnavailable"), 12, false),
    )
    .await;
    let silent = TokenEndpoint::start().await;
    silent.set_sticky_fault(Some(Fault::Hang));
    create(
        &env,
        &c,
        json!({"verify": true, "apiUrl": format!("http://{}", silent.addr())}),
    )
    .await;
    cases.push(c);

    let c = case(
        &env,
        "huge-annotations",
        "spec",
        "target annotations near the size limit of an object",
        expect("False", Some("TargetSecretRejected"), 1, false),
    )
    .await;
    let annotations: BTreeMap<String, String> = (0..64)
        .map(|i| (format!("example.com/a{i}"), "v".repeat(4096)))
        .collect();
    create(&env, &c, json!({"target": {"annotations": annotations}})).await;
    cases.push(c);

    let long = format!("a{}", "b".repeat(240));
    let c = case(
        &env,
        "long-name",
        "spec",
        "a 241-character name",
        expect("True", None, 1, false),
    )
    .await;
    let mut spec = spec_for(&c);
    spec["target"] = json!({"name": "long-name-target"});
    env.create_credential(&long, spec)
        .await
        .expect("a long name");
    cases.push(Case {
        name: long.clone(),
        ..c
    });

    // ---- 2. Secrets and annotations edited behind its back -------------------------------
    let edits: [(&str, &str, &str); 4] = [
        ("far-expiry", "dscc.io/expires-at", "2199-01-01T00:00:00Z"),
        (
            "ancient-issue",
            "dscc.io/issued-at",
            "-009999-01-01T00:00:00Z",
        ),
        (
            "forged-seal",
            "dscc.io/data-hash",
            "sha256:00000000000000000000000000000000",
        ),
        (
            "forged-credentials",
            "dscc.io/credentials-hash",
            "sha256:forged",
        ),
    ];
    let descriptions = [
        "an expiry moved into the next century",
        "an issue time in the year -9999",
        "a forged seal",
        "a forged client fingerprint",
    ];
    for ((name, annotation, value), what) in edits.into_iter().zip(descriptions) {
        let mut c = case(&env, name, "edit", what, expect("True", None, 1, true)).await;
        ready_first(&env, &mut c, json!({"refreshBeforePercentage": 50})).await;
        annotate_target(&env, name, annotation, value).await;
        cases.push(c);
    }

    let mut c = case(
        &env,
        "orphaned",
        "edit",
        "the owner reference removed from the target",
        expect("False", Some("TargetSecretConflict"), 1, true),
    )
    .await;
    ready_first(&env, &mut c, json!({})).await;
    env.api::<Secret>()
        .patch(
            "orphaned-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
        )
        .await
        .expect("orphan the target");
    cases.push(c);

    let mut c = case(
        &env,
        "relabelled-client",
        "edit",
        "labels added to the client Secret ten times",
        expect("True", None, 1, true),
    )
    .await;
    ready_first(&env, &mut c, json!({})).await;
    for i in 0..10 {
        env.api::<Secret>()
            .patch(
                "relabelled-client-client",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"backup": format!("run-{i}")}}})),
            )
            .await
            .expect("label the client Secret");
    }
    cases.push(c);

    let c = case(
        &env,
        "binary-client",
        "edit",
        "a client Secret holding bytes that are not text",
        expect("False", Some("ClientSecretKeyMissing"), 0, false),
    )
    .await;
    let binary = Secret {
        data: Some(BTreeMap::from([
            (
                "client_id".to_owned(),
                ByteString(vec![0xff, 0xfe, 0x00, 0x81]),
            ),
            ("client_secret".to_owned(), ByteString(vec![0xc3, 0x28])),
        ])),
        ..serde_json::from_value(json!({"metadata": {"name": "binary-client-client"}})).unwrap()
    };
    env.api::<Secret>()
        .replace("binary-client-client", &PostParams::default(), &binary)
        .await
        .expect("binary client Secret");
    create(&env, &c, json!({})).await;
    cases.push(c);

    let mut c = case(
        &env,
        "replaced-target",
        "edit",
        "the target deleted and a stranger's Secret put in its place",
        expect("False", Some("TargetSecretConflict"), 1, false),
    )
    .await;
    ready_first(&env, &mut c, json!({})).await;
    env.api::<Secret>()
        .delete("replaced-target-token", &DeleteParams::default())
        .await
        .expect("delete");
    let stranger = serde_json::from_value::<Secret>(json!({"metadata": {"name": "replaced-target-token"}, "stringData": {"access_token": "a stranger's"}})).unwrap();
    // The operator may restore it first; the stranger then loses the race, which is fine.
    let _ = env
        .api::<Secret>()
        .create(&PostParams::default(), &stranger)
        .await;
    c.expect = expect("any", None, 1, false);
    cases.push(c);

    let mut c = case(
        &env,
        "refresh-storm",
        "edit",
        "twenty refresh requests in ten seconds",
        expect("True", None, 21, false),
    )
    .await;
    ready_first(&env, &mut c, json!({})).await;
    cases.push(c);

    // ---- 3. Token endpoint answers --------------------------------------------------------
    let answers: Vec<(&str, &str, Fault, &'static str)> = vec![
        (
            "blank-token",
            "an access token of spaces",
            Fault::Body(200, json!({"access_token": " ".repeat(100)}).to_string()),
            "TokenEndpointUnavailable",
        ),
        (
            "crlf-token",
            "an access token with a header injection",
            Fault::Body(
                200,
                json!({"access_token": "abc\r\nSet-Cookie: x=1"}).to_string(),
            ),
            "TokenEndpointUnavailable",
        ),
        (
            "negative-life",
            "a negative expires_in",
            Fault::Body(
                200,
                json!({"access_token": "abc", "expires_in": -3600}).to_string(),
            ),
            "TokenEndpointUnavailable",
        ),
        (
            "mac-token",
            "a MAC token",
            Fault::Body(
                200,
                json!({"access_token": "abc", "token_type": "mac"}).to_string(),
            ),
            "UnsupportedTokenType",
        ),
        (
            "html",
            "an HTML page with 200",
            Fault::Body(200, "<html><body>Login</body></html>".to_owned()),
            "TokenEndpointUnavailable",
        ),
        (
            "past-exp",
            "a JWT that expired an hour ago",
            Fault::Body(
                200,
                json!({"access_token": expired_jwt(), "expires_in": 3600}).to_string(),
            ),
            "TokenEndpointUnavailable",
        ),
        (
            "nested",
            "every field an object",
            Fault::Body(
                200,
                json!({"access_token": {"a": 1}, "token_type": [1], "expires_in": {"x": 2}})
                    .to_string(),
            ),
            "TokenEndpointUnavailable",
        ),
        (
            "redirect",
            "a redirect",
            Fault::Status(302),
            "TokenEndpointUnavailable",
        ),
        (
            "huge",
            "ten megabytes",
            Fault::Oversized(10 * 1024 * 1024),
            "TokenEndpointUnavailable",
        ),
        (
            "reset",
            "a connection reset mid-answer",
            Fault::ResetConnection,
            "TokenEndpointUnavailable",
        ),
    ];
    for (name, what, fault, reason) in answers {
        // A passing failure keeps the valid old token Ready (Reconciling says what failed);
        // a permanent one (a token type that cannot be used) is not Ready.
        let ready = if reason == "UnsupportedTokenType" {
            expect("False", Some("UnsupportedTokenType"), 2, true)
        } else {
            expect("True", Some("TokenIssued"), 12, true)
        };
        let mut c = case(&env, name, "answer", what, ready).await;
        ready_first(&env, &mut c, json!({})).await;
        c.endpoint.set_sticky_fault(Some(fault));
        refresh(&env, name, "hostile").await;
        cases.push(c);
    }
    // The server echoes the secret as its error code, in its description and in Basic form.
    for (name, body) in [
        ("echo-code", "code"),
        ("echo-description", "description"),
        ("echo-basic", "basic"),
    ] {
        let mut c = case(
            &env,
            name,
            "answer",
            "a rejection that quotes the client secret",
            expect("False", Some("InvalidClientCredentials"), 2, false),
        )
        .await;
        let echoed = match body {
            "code" => json!({"error": c.client_secret}),
            "description" => {
                json!({"error": "invalid_client", "error_description": format!("secret {} is wrong", c.client_secret)})
            }
            _ => {
                json!({"error": "invalid_client", "error_description": base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.client_id, c.client_secret))})
            }
        };
        c.endpoint
            .set_sticky_fault(Some(Fault::Body(401, echoed.to_string())));
        create(&env, &c, json!({})).await;
        c.token_before = None;
        cases.push(c);
    }
    // A spec whose answer is huge numbers.
    let c = case(
        &env,
        "forever-token",
        "answer",
        "an expires_in of 10^30 seconds",
        expect("True", None, 1, false),
    )
    .await;
    c.endpoint.set_sticky_fault(None);
    c.endpoint.push_fault(Fault::Body(
        200,
        r#"{"access_token":"abc-forever","expires_in":1e30}"#.to_owned(),
    ));
    create(&env, &c, json!({})).await;
    cases.push(c);

    assert!(cases.len() >= 30, "{} hostile inputs", cases.len());

    let counted_from: Vec<usize> = cases.iter().map(|c| c.endpoint.request_count()).collect();
    let canary_before = canary_endpoint.request_count();
    // The refresh storm, inside the window.
    for i in 0..20 {
        refresh(&env, "refresh-storm", &format!("storm-{i}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(WINDOW - Duration::from_secs(10)).await;

    // ---- the checks ------------------------------------------------------------------------
    let mut failures = vec![];
    assert!(operator.is_running(), "the operator died");
    let logs = operator.logs();
    assert!(!logs.contains("panicked"), "a panic in the operator log");
    let canary_renewals = canary_endpoint.request_count() - canary_before;
    assert!(
        canary_renewals >= 3,
        "the canary renewed only {canary_renewals} times in {WINDOW:?}"
    );
    let canary = env.credential("canary").await;
    assert_eq!(
        condition(&canary, "Ready").map(|c| c.status),
        Some("True".into()),
        "the canary"
    );

    for (case, from) in cases.iter().zip(counted_from) {
        let credential: DsccCredential = env.credential(&case.name).await;
        let ready = condition(&credential, "Ready");
        let (status, reason) = case.expect.ready;
        let shown = ready
            .as_ref()
            .map(|c| format!("{} {} {}", c.status, c.reason, c.message));
        if status != "any" && ready.as_ref().map(|c| c.status.as_str()) != Some(status) {
            failures.push(format!(
                "{} ({}): Ready {shown:?}, expected {status}",
                case.name, case.what
            ));
        }
        if let Some(reason) = reason
            && ready.as_ref().map(|c| c.reason.as_str()) != Some(reason)
        {
            failures.push(format!(
                "{} ({}): reason {shown:?}, expected {reason}",
                case.name, case.what
            ));
        }
        if ready
            .as_ref()
            .is_some_and(|c| c.status == "False" && c.message.len() < 20)
        {
            failures.push(format!(
                "{}: the message does not say what to fix: {shown:?}",
                case.name
            ));
        }
        let requests = case.endpoint.request_count() - from;
        if requests > case.expect.max_requests {
            failures.push(format!(
                "{} ({}): {requests} token requests in {WINDOW:?} (at most {})",
                case.name, case.what, case.expect.max_requests
            ));
        }
        if case.expect.keeps_token
            && let Some(before) = &case.token_before
        {
            let now = env
                .secret_value(&format!("{}-token", case.name), "access_token")
                .await;
            let issued: HashSet<String> = case.endpoint.issued_tokens().into_iter().collect();
            match now {
                Some(token) if issued.contains(&token) => {}
                other => failures.push(format!("{} ({}): the token in place is {other:?}, not one the endpoint issued (before: {})", case.name, case.what, before.len())),
            }
        }
    }
    // Nothing touched the Secrets that are not the operator's.
    let foreign = env
        .secret("someone-elses")
        .await
        .expect("the foreign Secret stays");
    assert_eq!(foreign.data.unwrap()["x"].0, b"untouched");
    let own_client = env
        .secret("own-client-client")
        .await
        .expect("the client Secret stays");
    assert!(
        own_client.metadata.owner_references.is_none(),
        "the client Secret was taken over"
    );

    // No secret anywhere.
    let mut secrets: Vec<String> = vec![env.client_secret.clone()];
    for case in &cases {
        secrets.push(case.client_secret.clone());
        secrets.push(
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", case.client_id, case.client_secret)),
        );
        secrets.extend(case.endpoint.issued_tokens());
    }
    secrets.extend(canary_endpoint.issued_tokens());
    let events = serde_json::to_string(&env.events().await).expect("Events");
    let mut statuses = String::new();
    for case in &cases {
        statuses
            .push_str(&serde_json::to_string(&env.credential(&case.name).await.status).unwrap());
    }
    let metrics = scrape(&operator).await;
    for (place, text) in [
        ("log", &logs),
        ("Events", &events),
        ("status", &statuses),
        ("metrics", &metrics),
    ] {
        for secret in &secrets {
            if secret.len() >= 8 && text.contains(secret.as_str()) {
                failures.push(format!(
                    "a secret or token in the {place}: {}…",
                    &secret[..8]
                ));
            }
        }
    }
    let mut table = String::new();
    for case in &cases {
        let credential = env.credential(&case.name).await;
        let ready = condition(&credential, "Ready")
            .map(|c| format!("{} {}", c.status, c.reason))
            .unwrap_or_default();
        table.push_str(&format!("| {} | {} | {} |\n", case.kind, case.what, ready));
    }
    println!("hostile inputs ({}):\n{table}", cases.len());
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn scrape(operator: &support::operator::Operator) -> String {
    let address = operator.address("metrics_address");
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn expired_jwt() -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = engine.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload =
        engine.encode(json!({"sub": "x", "iat": now - 7200, "exp": now - 3600}).to_string());
    format!("{header}.{payload}.c2lnbmF0dXJl")
}
