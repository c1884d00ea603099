//! The compatibility subset: what must hold on every supported Kubernetes version. `make test`
//! runs it against the oldest supported control plane too (K8S_VERSION=1.35.4); the full
//! behaviour is covered by tests/e2e.rs on the default version.

use dscc_testkit as support;

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use support::harness::{TestEnv, assert_renewed_in_time, wait_until};
use support::invalid_manifests::{base_spec, cases};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_is_established_with_its_names_and_version() {
    let env = TestEnv::new("compat-crd").await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let crd = wait_until(
        "the CRD to be Established",
        Duration::from_secs(30),
        || async {
            let crd = crds
                .get("dscccredentials.dscc.io")
                .await
                .expect("read the CRD");
            let established = crd
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(crd)
        },
    )
    .await;
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "NamesAccepted" && c.status == "True"),
        "the CRD's names were not accepted: {conditions:?}"
    );
    assert_eq!(crd.spec.names.kind, "DsccCredential");
    assert_eq!(crd.spec.names.short_names, Some(vec!["dscc".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_rejected_with_a_message_naming_the_field() {
    let env = TestEnv::new("compat-validation").await;
    // The base of every invalid case is valid: each rejection is for the one broken field.
    env.create_credential("valid", base_spec())
        .await
        .expect("the base spec of the invalid cases is accepted");

    let cases = cases();
    assert!(cases.len() >= 12, "only {} cases", cases.len());
    let mut problems = vec![];
    for (i, case) in cases.into_iter().enumerate() {
        let name = format!("invalid-{i}");
        match env.create_credential(&name, case.spec.clone()).await {
            Ok(_) => problems.push(format!("{}: accepted", case.description)),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(case.expect_in_message) {
                    problems.push(format!(
                        "{}: answered {} {:?}, expected 422 naming {:?}",
                        case.description, status.code, status.message, case.expect_in_message
                    ));
                }
            }
            Err(error) => problems.push(format!("{}: {error}", case.description)),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_becomes_ready_and_renews_short_lived_tokens() {
    let env = TestEnv::new("compat-renewal").await;
    let lifetime = Duration::from_secs(6);
    env.endpoint.set_lifetime(lifetime);
    env.put_client_secret("greenlake-client").await;
    let _operator = env.start_operator(&[]);
    env.create_credential("reports", env.spec("greenlake-client"))
        .await
        .expect("create the credential");
    env.wait_ready("reports").await;

    let watch = env.watch_token("reports-token", Duration::from_millis(100));
    // Two renewals, the second one written: the endpoint issues a token before the Secret
    // holds it.
    wait_until(
        "two renewals in the Secret",
        Duration::from_secs(45),
        || async {
            let issued = env.endpoint.issued_tokens();
            let held = env.secret_value("reports-token", "access_token").await?;
            (issued.len() >= 3 && issued[2..].contains(&held)).then_some(())
        },
    )
    .await;
    let readings = watch.stop().await;

    assert_renewed_in_time(&readings, &env.endpoint, lifetime);
    let seen: HashSet<&String> = readings
        .iter()
        .filter_map(|r| r.access_token.as_ref())
        .collect();
    assert!(seen.len() >= 3, "the Secret showed fewer than three tokens");
    env.wait_for_condition(
        "reports",
        "Ready",
        "True",
        Some("TokenIssued"),
        Duration::from_secs(30),
    )
    .await;
}
