//! End-to-end tests of what production operation relies on: metrics, leader election,
//! rollout restarts and verification, against the real control plane.

use dscc_testkit as support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use support::dscc_api::DsccApi;
use support::harness::{TestEnv, wait_until};
use support::operator::Operator;

const READY: Duration = Duration::from_secs(30);

/// The value of the metric line that starts with `series`, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

async fn scrape(operator: &Operator) -> String {
    let address = operator.address("metrics_address");
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("the metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_token_and_disappear_with_the_credential() {
    let env = TestEnv::new("metrics").await;
    env.put_client_secret("client").await;
    let operator = env.start_operator(&[]);
    env.create_credential("reports", env.spec("client"))
        .await
        .expect("create the credential");
    let credential = env.wait_ready("reports").await;
    let status = credential.status.expect("status");
    let expires_at = status.expires_at.expect("expiresAt").0;
    let renewal = status.renewal_time.expect("renewalTime").0;

    let labels = format!("{{namespace=\"{}\",name=\"reports\"", env.namespace);
    let text = scrape(&operator).await;
    let expiration = metric(
        &text,
        &format!("dscc_token_expiration_timestamp_seconds{labels}}}"),
    );
    assert_eq!(expiration, Some(expires_at.as_second() as f64), "{text}");
    let renewal_metric = metric(
        &text,
        &format!("dscc_token_renewal_timestamp_seconds{labels}}}"),
    );
    assert_eq!(
        renewal_metric,
        Some(renewal.as_millisecond() as f64 / 1000.0)
    );
    let ready_true = format!("dscc_credential_ready_status{labels},condition=\"True\"}}");
    assert_eq!(metric(&text, &ready_true), Some(1.0));
    let host = "host=\"127.0.0.1\",result=\"success\"";
    assert_eq!(
        metric(&text, &format!("dscc_token_requests_total{{{host}}}")),
        Some(1.0)
    );
    assert!(text.contains("dscc_reconcile_total{result=\"success\"}"));
    assert!(text.contains("dscc_build_info{version=\""));

    // A failure flips the one-hot ready gauge.
    env.put_secret("client", &[("client_id", &env.client_id)])
        .await;
    env.wait_for_condition(
        "reports",
        "Ready",
        "False",
        Some("ClientSecretKeyMissing"),
        READY,
    )
    .await;
    let ready_false = format!("dscc_credential_ready_status{labels},condition=\"False\"}}");
    wait_until("the ready gauge to flip", READY, || async {
        let text = scrape(&operator).await;
        (metric(&text, &ready_false) == Some(1.0) && metric(&text, &ready_true) == Some(0.0))
            .then_some(())
    })
    .await;

    env.api::<dscc_token_operator::api::DsccCredential>()
        .delete("reports", &DeleteParams::default())
        .await
        .expect("delete the credential");
    wait_until("the credential's series to disappear", READY, || async {
        let text = scrape(&operator).await;
        (!text.contains(&labels)).then_some(())
    })
    .await;
}

/// A TCP relay to kube-apiserver that holds every connection until it is opened: an API
/// server the operator can reach but that does not answer yet. Returns a kubeconfig that
/// goes through it and the switch that opens it.
async fn held_api_server(env: &TestEnv) -> (std::path::PathBuf, tokio::sync::watch::Sender<bool>) {
    let kubeconfig = std::fs::read_to_string(&env.cluster.kubeconfig).expect("the kubeconfig");
    let server = kubeconfig
        .lines()
        .find_map(|line| line.trim().strip_prefix("server: https://"))
        .expect("the API server address")
        .to_owned();
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let relayed = relay.local_addr().expect("the relay address");
    let (open, opened) = tokio::sync::watch::channel(false);
    let upstream = server.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            let (mut opened, server) = (opened.clone(), server.clone());
            tokio::spawn(async move {
                if opened.wait_for(|open| *open).await.is_err() {
                    return;
                }
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&server).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    let path = env.log_dir.join("held-kubeconfig");
    std::fs::write(
        &path,
        kubeconfig.replace(
            &format!("https://{upstream}"),
            &format!("https://{relayed}"),
        ),
    )
    .expect("write the kubeconfig");
    (path, open)
}

async fn readyz(address: std::net::SocketAddr) -> Option<u16> {
    let answer = reqwest::get(format!("http://{address}/readyz"))
        .await
        .ok()?;
    Some(answer.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_and_ready_follows_the_watches() {
    let env = TestEnv::new("health").await;
    let (kubeconfig, open) = held_api_server(&env).await;
    let mut args = support::operator::test_flags();
    args.push(format!("--namespace={}", env.namespace));
    let operator = Operator::start(&kubeconfig, args, env.log_dir.join("operator-health.log"));
    let address = operator.address("health_address");

    // Alive, but not ready while its watches have not listed anything.
    let healthz = reqwest::get(format!("http://{address}/healthz"))
        .await
        .expect("/healthz answers");
    assert_eq!(healthz.status(), 200);
    for _ in 0..10 {
        assert_eq!(
            readyz(address).await,
            Some(503),
            "/readyz must not say ready before the watches have synced"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The API server answers: the watches sync and /readyz follows.
    open.send_replace(true);
    wait_until("/readyz to answer 200", READY, || async {
        (readyz(address).await == Some(200)).then_some(())
    })
    .await;
    let healthz = reqwest::get(format!("http://{address}/healthz"))
        .await
        .expect("/healthz answers");
    assert_eq!(healthz.status(), 200);
}

/// How many token requests an operator has logged.
fn requested_tokens(operator: &Operator) -> usize {
    operator.logs().matches("requesting a token").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_requests_tokens_and_a_standby_takes_over() {
    let env = TestEnv::new("leader").await;
    env.endpoint.set_lifetime(Duration::from_secs(9));
    env.put_client_secret("client").await;
    let election = [
        "--leader-election",
        &format!("--leader-election-namespace={}", env.namespace),
        "--leader-election-lease-duration=4s",
    ];
    let mut first = env.start_operator(&election);
    wait_until("the first operator to lead", READY, || async {
        first.logs().contains("became leader").then_some(())
    })
    .await;
    let mut second = env.start_operator(&election);
    env.create_credential("reports", env.spec("client"))
        .await
        .expect("create the credential");
    env.wait_ready("reports").await;
    // Two renewals under the first leader.
    let token = env.wait_for_new_token("reports-token", None, READY).await;
    let token = env
        .wait_for_new_token("reports-token", Some(&token), READY)
        .await;
    assert!(requested_tokens(&first) >= 2);
    assert_eq!(
        requested_tokens(&second),
        0,
        "the standby must not request tokens"
    );
    assert!(second.logs().contains("waiting for leadership"));

    let lease: Lease = env.api::<Lease>().get("dscc-token-operator").await.unwrap();
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(!holder.is_empty(), "the Lease names its holder");

    // The leader dies without releasing the Lease: the standby takes over within the lease
    // duration, and renewals go on.
    first.kill();
    wait_until("the standby to take over", READY, || async {
        second.logs().contains("became leader").then_some(())
    })
    .await;
    let token = env
        .wait_for_new_token("reports-token", Some(&token), READY)
        .await;
    env.wait_for_new_token("reports-token", Some(&token), READY)
        .await;
    assert!(requested_tokens(&second) >= 2, "the new leader renews");

    // No double issue: never two token requests close together.
    let requests = env.endpoint.requests();
    for pair in requests.windows(2) {
        let gap = pair[1].received_at.duration_since(pair[0].received_at);
        assert!(
            gap > Duration::from_secs(2),
            "two token requests {gap:?} apart"
        );
    }

    // A leader that is stopped releases the Lease at once.
    second.stop();
    assert!(second.logs().contains("released the leader-election Lease"));
    let lease: Lease = env.api::<Lease>().get("dscc-token-operator").await.unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert!(
        holder.as_deref().is_none_or(str::is_empty),
        "released, got {holder:?}"
    );
}

async fn replica_sets(env: &TestEnv, app: &str) -> usize {
    env.api::<ReplicaSet>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list ReplicaSets")
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_is_rolled_out_once_per_new_token() {
    let env = TestEnv::new("rollout").await;
    env.put_client_secret("client").await;
    env.create_deployment("reporter").await;
    wait_until("the first ReplicaSet", READY, || async {
        (replica_sets(&env, "reporter").await == 1).then_some(())
    })
    .await;
    let mut operator = env.start_operator(&[]);
    let mut spec = env.spec("client");
    spec["rolloutRestartTargets"] = json!([
        {"kind": "Deployment", "name": "reporter"},
        {"kind": "StatefulSet", "name": "absent"}
    ]);
    env.create_credential("reports", spec)
        .await
        .expect("create the credential");
    let credential = env.wait_ready("reports").await;
    let issued_at = credential.status.unwrap().issued_at.unwrap().0.to_string();
    let first_hash = env
        .secret("reports-token")
        .await
        .and_then(|s| s.metadata.annotations?.get("dscc.io/data-hash").cloned())
        .expect("the token's hash");

    wait_until("a new ReplicaSet for the first token", READY, || async {
        (replica_sets(&env, "reporter").await == 2).then_some(())
    })
    .await;
    assert_eq!(
        env.restart_stamp("reporter").await,
        Some(format!(
            "{issued_at} {}",
            &first_hash["sha256:".len()..][..8]
        )),
        "the stamp names the token: its issue time and a piece of its hash"
    );

    // The missing target is reported without failing the token.
    let credential = env
        .wait_for_condition("reports", "Ready", "True", Some("TokenIssued"), READY)
        .await;
    let ready = credential.status.unwrap().conditions[0].message.clone();
    assert!(ready.contains("StatefulSet absent not found"), "{ready}");
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("RolloutRestartTargetNotFound"))
    );

    // A new token: exactly one more rollout.
    env.patch_credential(
        "reports",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "one"}}}),
    )
    .await;
    let old = env.endpoint.issued_tokens()[0].clone();
    env.wait_for_new_token("reports-token", Some(&old), READY)
        .await;
    wait_until("a new ReplicaSet for the second token", READY, || async {
        (replica_sets(&env, "reporter").await == 3).then_some(())
    })
    .await;
    let stamp = env.restart_stamp("reporter").await;

    // An operator restart restarts nothing.
    operator.restart();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(replica_sets(&env, "reporter").await, 3);
    assert_eq!(env.restart_stamp("reporter").await, stamp);
    assert_eq!(env.endpoint.request_count(), 2);
}

/// The Deployment `name`'s generation (it counts changes of its spec, a restart among them).
async fn generation(env: &TestEnv, name: &str) -> i64 {
    env.api::<Deployment>()
        .get(name)
        .await
        .expect("the Deployment")
        .metadata
        .generation
        .expect("a generation")
}

async fn restarts_counted(env: &TestEnv, operator: &Operator, name: &str) -> f64 {
    let series = format!(
        "dscc_rollout_restarts_total{{namespace=\"{}\",kind=\"Deployment\",name=\"{name}\"}}",
        env.namespace
    );
    metric(&scrape(operator).await, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_renewing_together_restart_once_and_a_gitops_revert_restarts_nothing() {
    let env = TestEnv::new("rollout-gitops").await;
    env.create_deployment("shared").await;
    // Three credentials of three clients (three tokens, three stamps) name one Deployment.
    let names = ["billing", "reports", "audit"];
    for name in names {
        let client_id = format!("{name}-{}", support::harness::suffix());
        env.endpoint.set_client(&client_id, "secret");
        env.put_secret(
            &format!("{name}-client"),
            &[("client_id", &client_id), ("client_secret", "secret")],
        )
        .await;
    }
    // The production batch window: renewals that land within 2 s of each other are one.
    let operator = env.start_operator(&["--rollout-restart-batch-window=2s"]);
    for name in names {
        let mut spec = env.spec(&format!("{name}-client"));
        spec["rolloutRestartTargets"] = json!([{"kind": "Deployment", "name": "shared"}]);
        env.create_credential(name, spec)
            .await
            .expect("create the credential");
    }
    for name in names {
        env.wait_ready(name).await;
    }
    wait_until("the first restart", READY, || async {
        env.restart_stamp("shared").await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (before, counted) = (
        generation(&env, "shared").await,
        restarts_counted(&env, &operator, "shared").await,
    );

    // All three renew at once: one restart, not three.
    let old: Vec<String> = env.endpoint.issued_tokens();
    futures::future::join_all(names.map(|name| {
        env.patch_credential(
            name,
            json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "together"}}}),
        )
    }))
    .await;
    for name in names {
        wait_until(&format!("{name} to hold a new token"), READY, || async {
            let token = env
                .secret_value(&format!("{name}-token"), "access_token")
                .await?;
            (!old.contains(&token)).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        generation(&env, "shared").await,
        before + 1,
        "three renewals together changed the pod template once"
    );
    assert_eq!(
        restarts_counted(&env, &operator, "shared").await,
        counted + 1.0,
        "dscc_rollout_restarts_total counts the one restart"
    );
    for name in names {
        let status = env.credential(name).await.status.expect("status");
        let restart = status
            .rollout_restarts
            .iter()
            .find(|restart| restart.name == "shared")
            .expect("the restart is recorded");
        assert!(
            !restart.token.is_empty(),
            "{name} records which token it restarted the Deployment for"
        );
    }

    // Argo CD self-heal puts the pod template back as Git has it: no annotation. The operator
    // restarts nothing for that, not now and not later, until the next new token.
    env.api::<Deployment>()
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "dscc.io/restartedAt": null,
            }}}}})),
        )
        .await
        .expect("revert the annotation");
    let reverted = generation(&env, "shared").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(env.restart_stamp("shared").await, None, "the revert stays");
    assert_eq!(
        generation(&env, "shared").await,
        reverted,
        "no restart loop"
    );
    assert_eq!(
        restarts_counted(&env, &operator, "shared").await,
        counted + 1.0
    );

    // The next new token restarts it again, once.
    env.patch_credential(
        "billing",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "after-revert"}}}),
    )
    .await;
    wait_until("a restart for the new token", READY, || async {
        env.restart_stamp("shared").await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(generation(&env, "shared").await, reverted + 1);
    assert_eq!(
        restarts_counted(&env, &operator, "shared").await,
        counted + 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_follows_what_the_dscc_api_says_about_the_token() {
    let env = TestEnv::new("verify").await;
    let api = DsccApi::start().await;
    env.put_client_secret("client").await;
    let _operator = env.start_operator(&[]);
    let mut spec = env.spec("client");
    spec["verify"] = json!(true);
    spec["apiUrl"] = json!(api.url());
    env.create_credential("reports", spec)
        .await
        .expect("create the credential");

    // 200: Ready, the probe saw the new token, and the Secret records it.
    env.wait_ready("reports").await;
    let first = env
        .secret_value("reports-token", "access_token")
        .await
        .unwrap();
    assert_eq!(api.tokens_seen(), std::slice::from_ref(&first));
    assert_eq!(
        env.secret_value("reports-token", "api_url").await,
        Some(api.url())
    );

    // 401: the new token is refused, the old one stays, Ready=False VerifyFailed.
    api.answer(401);
    env.patch_credential(
        "reports",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "r1"}}}),
    )
    .await;
    let credential = env
        .wait_for_condition("reports", "Ready", "False", Some("VerifyFailed"), READY)
        .await;
    let stalled = credential.status.unwrap().conditions;
    assert!(
        stalled
            .iter()
            .any(|c| c.type_ == "Stalled" && c.reason == "VerifyFailed")
    );
    assert_eq!(
        env.secret_value("reports-token", "access_token").await,
        Some(first.clone()),
        "the rejected token must not replace the old one"
    );

    // 403: valid token without that permission: Ready, with the reason in the message.
    api.answer(403);
    env.patch_credential(
        "reports",
        json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "r2"}}}),
    )
    .await;
    let credential = env
        .wait_for_condition("reports", "Ready", "True", Some("TokenIssued"), READY)
        .await;
    let message = credential.status.unwrap().conditions[0].message.clone();
    assert!(message.contains("HTTP 403"), "{message}");
    assert_ne!(
        env.secret_value("reports-token", "access_token").await,
        Some(first)
    );
}
