//! End-to-end tests against a real Keycloak 26.7.3 (testenv/keycloak): client credentials
//! with post and basic authentication, renewal, refresh tokens obtained with client
//! credentials (and the fallback when Keycloak revokes them), and RFC 8693 token exchange for
//! the MSP/tenant case.
//!
//! One Keycloak per test binary (realm access tokens of 30 s, so that renewals happen within
//! the test), reached over TLS with its own CA; the operator runs as in production: no
//! insecure-URL flag, the CA given with --extra-ca-file. Each test has its own namespace and
//! operator process.
//!
//! Keycloak cannot be asked how many requests it answered, so the tests judge what it issued:
//! every token in a target Secret must be an RS256 JWT that verifies with the realm's JWKS,
//! from its issuer, for the expected client (`azp`). Keycloak 26 also tells in each access
//! token which grant produced it: its `jti` starts with six letters and a colon, and the last
//! two name the grant (`cc` client credentials, `rt` refresh token, `te` token exchange; seen
//! with 26.7.3 and curl as `trrtcc`/`onrtcc`, `onrtrt` and `trrtte`, where `tr`/`on` is a
//! transient or online session). `sid` names the session that a refresh token and the access
//! tokens obtained with it belong to. The operator's side is its
//! status (grant, issuedAt, renewalTime, conditions), the target Secret's bookkeeping and the
//! refresh-token Secret.
//!
//! Java 21+ is required (and Maven for the first fetch); without them these tests fail and
//! say how to get them.

use dscc_testkit as support;

use std::collections::BTreeMap;
use std::time::Duration;

use dscc_token_operator::api::DsccCredential;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use support::harness::{
    TestEnv, TokenReading, condition, has_condition, read_token, sample_every, suffix,
    wait_for_credential, wait_until,
};
use support::keycloak::{Jwt, Keycloak};

/// The realm's access-token lifetime for this binary.
const LIFETIME_SECONDS: u64 = 30;
/// Generous for a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest wait for a renewal: a whole lifetime (it comes after two thirds) and slack.
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(LIFETIME_SECONDS + 20);
/// The operator takes up to this fraction of the lifetime off the renewal time as jitter
/// (src/schedule.rs), and rounds the renewal time down to a whole second.
const JITTER_FRACTION: f64 = 0.05;

const DATA_HASH: &str = "dscc.io/data-hash";
const SUBJECT_TOKEN_HASH: &str = "dscc.io/subject-token-hash";
const REFRESH_FOR: &str = "dscc.io/refresh-for";
const REFRESH_ANNOTATION: &str = "dscc.io/refresh-requested-at";

/// Prints how long a test took (with --nocapture), including its share of the start-up.
struct Timer(&'static str, std::time::Instant);

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!("{} took {:.1}s", self.0, self.1.elapsed().as_secs_f64());
    }
}

/// Keycloak (started once for the binary, at the same time as the control plane) and the
/// test's namespace.
async fn setup(test: &str) -> (&'static Keycloak, TestEnv) {
    let keycloak = tokio::task::spawn_blocking(|| Keycloak::shared(LIFETIME_SECONDS));
    let env = TestEnv::new(test).await;
    let keycloak = match keycloak.await {
        Ok(keycloak) => keycloak,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    };
    (keycloak, env)
}

/// Writes client Secret `<name>-client` for Keycloak's client `role`.
async fn put_client(env: &TestEnv, name: &str, keycloak: &Keycloak, role: &str) {
    let client = keycloak.client(role);
    env.put_secret(
        &format!("{name}-client"),
        &[
            ("client_id", &client.client_id),
            ("client_secret", &client.client_secret),
        ],
    )
    .await;
}

/// Creates credential `name` for Keycloak's client `role`, with `extra` spec fields.
async fn create(
    env: &TestEnv,
    name: &str,
    keycloak: &Keycloak,
    role: &str,
    auth: &str,
    extra: Value,
) {
    put_client(env, name, keycloak, role).await;
    let mut spec = json!({
        "clientSecretRef": {"name": format!("{name}-client")},
        "tokenUrl": keycloak.token_endpoint,
        "authMethod": auth,
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        spec[key] = value.clone();
    }
    env.create_credential(name, spec)
        .await
        .expect("create the credential");
}

/// Checks that `token` is a token Keycloak signed for `client_id` and returns it decoded.
fn keycloak_token(keycloak: &Keycloak, jwks: &Value, token: &str, client_id: &str) -> Jwt {
    let jwt = Jwt::decode(token).unwrap_or_else(|| panic!("not a JWT: {token:.40}..."));
    assert_eq!(jwt.header["alg"], "RS256", "header {}", jwt.header);
    assert!(
        jwt.verify_rs256(jwks),
        "the token's RS256 signature does not verify with Keycloak's JWKS; header {}",
        jwt.header
    );
    assert_eq!(
        jwt.str("iss"),
        Some(keycloak.issuer.as_str()),
        "{}",
        jwt.claims
    );
    assert_eq!(jwt.str("azp"), Some(client_id), "{}", jwt.claims);
    assert_eq!(jwt.str("typ"), Some("Bearer"), "{}", jwt.claims);
    assert_eq!(
        jwt.seconds("exp").unwrap() - jwt.seconds("iat").unwrap(),
        LIFETIME_SECONDS as i64,
        "Keycloak's tokens live the realm's lifetime: {}",
        jwt.claims
    );
    jwt
}

/// The grant Keycloak says it issued the token with: the last two letters of its jti prefix.
fn keycloak_grant(jwt: &Jwt) -> &str {
    let jti = jwt.str("jti").expect("a jti");
    let (prefix, _) = jti
        .split_once(':')
        .unwrap_or_else(|| panic!("jti {jti} has no grant prefix"));
    assert_eq!(prefix.len(), 6, "jti {jti}");
    &prefix[4..]
}

/// A merge patch that sets the refresh annotation to `value`.
fn refresh_request(value: &str) -> Value {
    json!({"metadata": {"annotations": {REFRESH_ANNOTATION: value}}})
}

fn status_grant(credential: &DsccCredential) -> Option<String> {
    credential.status.as_ref()?.grant.clone()
}

fn issued_at(credential: &DsccCredential) -> Option<Timestamp> {
    Some(credential.status.as_ref()?.issued_at.as_ref()?.0)
}

fn annotation(secret: &Secret, key: &str) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(key).cloned()
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn at_second(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("a time")
}

/// Waits until the target Secret `name` holds an access token other than `old`.
async fn wait_for_new_token(env: &TestEnv, name: &str, old: &str, timeout: Duration) -> String {
    wait_until(
        &format!("{}/{name} to hold a new token", env.namespace),
        timeout,
        || async {
            let token = env.secret_value(name, "access_token").await?;
            (token != old).then_some(token)
        },
    )
    .await
}

/// Reads the Ready condition and the token bookkeeping of the status, every 250 ms.
fn watch_readiness(
    env: &TestEnv,
    name: &str,
) -> support::harness::Sampler<Option<(String, String, Option<String>)>> {
    let credentials: Api<DsccCredential> = env.api();
    let name = name.to_owned();
    sample_every(Duration::from_millis(250), move || {
        let credentials = credentials.clone();
        let name = name.clone();
        async move {
            let credential = credentials.get(&name).await.ok()?;
            let ready = condition(&credential, "Ready")?;
            let stalled = condition(&credential, "Stalled").map(|c| c.reason);
            Some((ready.status, ready.reason, stalled))
        }
    })
}

/// Asserts that every readiness sample was Ready=True (TokenIssued) and never Stalled.
fn assert_always_ready(samples: &[Option<(String, String, Option<String>)>]) {
    assert!(!samples.is_empty());
    for sample in samples {
        let Some((status, reason, stalled)) = sample else {
            panic!("a sample without a Ready condition; samples: {samples:?}");
        };
        assert!(
            status == "True" && reason == "TokenIssued" && stalled.is_none(),
            "Ready must stay True (TokenIssued) and nothing Stalled; samples: {samples:?}"
        );
    }
}

/// The grants and answers of the operator's token requests for `client_id`, from line
/// `from` of its log on: `("RefreshToken", None)` for a request, `("", Some(400))` for an
/// answer.
fn token_requests_in_log(log: &str, from: usize, client_id: &str) -> Vec<(String, Option<u64>)> {
    log.lines()
        .skip(from)
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["client_id"] == client_id)
        .filter_map(|line| match line["message"].as_str()? {
            "requesting a token" => Some((line["grant"].as_str()?.to_owned(), None)),
            "token endpoint answered" => Some((String::new(), line["status"].as_u64())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_keycloak_tokens_with_client_secret_post_and_client_secret_basic() {
    let _timer = Timer(
        "gets_keycloak_tokens_with_client_secret_post_and_client_secret_basic",
        std::time::Instant::now(),
    );
    let (keycloak, env) = setup("keycloak-client-credentials").await;
    let _operator = env.start_operator_https_only(Some(&keycloak.ca_file));
    create(
        &env,
        "post",
        keycloak,
        "plain",
        "ClientSecretPost",
        json!({}),
    )
    .await;
    create(
        &env,
        "basic",
        keycloak,
        "plain",
        "ClientSecretBasic",
        json!({}),
    )
    .await;
    let jwks = keycloak.jwks().await;
    let plain = &keycloak.client("plain").client_id;

    let mut jtis = vec![];
    for name in ["post", "basic"] {
        let credential = env
            .wait_for_condition(name, "Ready", "True", Some("TokenIssued"), READY_TIMEOUT)
            .await;
        let status = credential.status.clone().expect("a status");
        assert_eq!(status.grant.as_deref(), Some("ClientCredentials"), "{name}");
        let target = format!("{name}-token");
        assert_eq!(status.secret_name.as_deref(), Some(target.as_str()));
        let secret = env.secret(&target).await.expect("the target Secret");
        let token = value(&secret, "access_token").expect("an access token");
        let jwt = keycloak_token(keycloak, &jwks, &token, plain);
        assert_eq!(keycloak_grant(&jwt), "cc", "{name}: {}", jwt.claims);
        assert_eq!(
            value(&secret, "token_type").as_deref(),
            Some("Bearer"),
            "{name}"
        );
        assert_eq!(
            value(&secret, "authorization"),
            Some(format!("Bearer {token}"))
        );
        assert_eq!(
            annotation(&secret, "dscc.io/grant").as_deref(),
            Some("ClientCredentials")
        );
        // The lifetime comes from Keycloak's expires_in, which is the lifetime or one second
        // less (Keycloak counts from its own clock).
        let issued = status.issued_at.expect("issuedAt").0;
        let expires = status.expires_at.expect("expiresAt").0;
        let lifetime = expires.as_second() - issued.as_second();
        let configured = LIFETIME_SECONDS as i64;
        assert!(
            (configured - 1..=configured).contains(&lifetime),
            "{name}: lifetime {lifetime}s, Keycloak issues {configured}s"
        );
        assert!(
            issued.as_second() <= jwt.seconds("iat").unwrap()
                && expires.as_second() <= jwt.seconds("exp").unwrap(),
            "{name}: the Secret's times ({issued}, {expires}) may not claim more than the \
             token's own ({})",
            jwt.claims
        );
        // Keycloak sends no refresh token to a client without use_refresh_token.
        assert!(
            env.secret(&format!("{name}-refresh")).await.is_none(),
            "{name}: a refresh-token Secret, but Keycloak sent no refresh token"
        );
        jtis.push(jwt.str("jti").unwrap().to_owned());
    }
    assert_ne!(
        jtis[0], jtis[1],
        "post and basic are separate requests (separate token groups) with separate tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_keycloak_tokens_in_the_last_third_of_their_lifetime_before_they_expire() {
    let _timer = Timer(
        "renews_keycloak_tokens_in_the_last_third_of_their_lifetime_before_they_expire",
        std::time::Instant::now(),
    );
    let (keycloak, env) = setup("keycloak-renewal").await;
    let _operator = env.start_operator_https_only(Some(&keycloak.ca_file));
    create(
        &env,
        "renewed",
        keycloak,
        "plain",
        "ClientSecretPost",
        json!({}),
    )
    .await;
    env.wait_for_condition("renewed", "Ready", "True", None, READY_TIMEOUT)
        .await;
    let jwks = keycloak.jwks().await;
    let plain = keycloak.client("plain").client_id.clone();

    // The Secret and the status, sampled through two renewals.
    let secrets: Api<Secret> = env.api();
    let tokens = sample_every(Duration::from_millis(200), move || {
        let secrets = secrets.clone();
        async move { read_token(&secrets, "renewed-token").await }
    });
    let credentials: Api<DsccCredential> = env.api();
    let statuses = sample_every(Duration::from_millis(250), move || {
        let credentials = credentials.clone();
        async move { credentials.get("renewed").await.ok() }
    });
    let first = env
        .secret_value("renewed-token", "access_token")
        .await
        .expect("a token");
    let second = wait_for_new_token(&env, "renewed-token", &first, RENEWAL_TIMEOUT).await;
    wait_for_new_token(&env, "renewed-token", &second, RENEWAL_TIMEOUT).await;
    // Until the status describes the third token too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let readings: Vec<TokenReading> = tokens.stop().await;
    let statuses: Vec<DsccCredential> = statuses.stop().await.into_iter().flatten().collect();

    // Never missing, never expired: by the Secret's own expiry and by the token's exp.
    // Each token in the order it appeared: when it was first seen, and its Secret's expiry.
    let mut order: Vec<(String, Timestamp, Timestamp)> = vec![];
    let mut decoded: BTreeMap<String, Jwt> = BTreeMap::new();
    for reading in &readings {
        let (token, expires_at) = support::harness::valid_token(reading);
        let jwt = decoded
            .entry(token.clone())
            .or_insert_with(|| keycloak_token(keycloak, &jwks, token, &plain));
        let exp = at_second(jwt.seconds("exp").unwrap());
        assert!(
            reading.read_at < exp,
            "the Secret held a token Keycloak says expired at {exp}, read at {}",
            reading.read_at
        );
        assert!(
            expires_at <= exp,
            "the Secret claims {expires_at}, the token {exp}"
        );
        if order.last().is_none_or(|(last, _, _)| last != token) {
            assert!(
                !order.iter().any(|(seen, _, _)| seen == token),
                "a token came back"
            );
            order.push((token.clone(), reading.read_at, expires_at));
        }
    }
    assert!(
        order.len() >= 3,
        "two renewals sampled: {} tokens",
        order.len()
    );

    let lifetime = LIFETIME_SECONDS as f64;
    for pair in order.windows(2) {
        let ((old, _, old_expiry), (new, seen_at, _)) = (&pair[0], &pair[1]);
        let (old_jwt, new_jwt) = (&decoded[old], &decoded[new]);
        assert_eq!(keycloak_grant(new_jwt), "cc");
        let old_iat = old_jwt.seconds("iat").unwrap();
        let old_exp = old_jwt.seconds("exp").unwrap();
        let new_iat = new_jwt.seconds("iat").unwrap();
        // In place before the old one expired.
        assert!(
            *seen_at < at_second(old_exp),
            "the new token appeared at {seen_at}, after the old one expired at {}",
            at_second(old_exp)
        );
        // Renewed in the last third of the lifetime (by Keycloak's clock): not before two
        // thirds had passed, less the operator's jitter (up to 5% earlier) and a second of
        // rounding.
        let elapsed = (new_iat - old_iat) as f64;
        let earliest = lifetime * (2.0 / 3.0 - JITTER_FRACTION) - 1.0;
        assert!(
            elapsed >= earliest && new_iat < old_exp,
            "the token of {} (exp {}) was renewed {elapsed}s after it was issued; expected \
             between {earliest:.1}s and {lifetime}s",
            at_second(old_iat),
            at_second(old_exp)
        );
        // The status announced that renewal time for the old token (a third of its
        // lifetime before its expiry, less the jitter), and the renewal did not come sooner.
        let old_status = statuses
            .iter()
            .filter_map(|c| c.status.as_ref())
            .find(|s| s.expires_at.as_ref().map(|t| t.0) == Some(*old_expiry))
            .expect("a status sample of the old token");
        let announced = old_status.renewal_time.as_ref().expect("renewalTime").0;
        let issued = old_status.issued_at.as_ref().expect("issuedAt").0;
        let span = old_expiry.as_second() - issued.as_second();
        let latest = old_expiry.as_second() as f64 - span as f64 / 3.0;
        let earliest = latest - JITTER_FRACTION * span as f64 - 1.0;
        assert!(
            (earliest..=latest).contains(&(announced.as_second() as f64)),
            "renewalTime {announced} for a token of {issued} to {old_expiry}: expected when a \
             third of the lifetime remains, at most 5% earlier"
        );
        assert!(
            new_iat >= announced.as_second(),
            "renewed at {} before the announced renewal time {announced}",
            at_second(new_iat)
        );
    }

    // Ready throughout, with client credentials.
    for credential in &statuses {
        assert!(
            has_condition(credential, "Ready", "True", "TokenIssued"),
            "Ready must stay True through renewals: {:?}",
            credential.status
        );
        assert_eq!(
            status_grant(credential).as_deref(),
            Some("ClientCredentials")
        );
    }
    eprintln!(
        "renewals after {:?} s of {LIFETIME_SECONDS} s",
        order
            .windows(2)
            .map(|p| decoded[&p[1].0].seconds("iat").unwrap()
                - decoded[&p[0].0].seconds("iat").unwrap())
            .collect::<Vec<_>>()
    );
}

/// Checks the refresh-token Secret of `credential` and returns the refresh token in it.
fn check_refresh_secret(refresh: &Secret, credential: &DsccCredential, target: &Secret) -> String {
    let owners = refresh
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    let owner = &owners[0];
    assert_eq!(owner.kind, "DsccCredential");
    assert_eq!(owner.api_version, "dscc.io/v1alpha1");
    assert_eq!(Some(&owner.name), credential.meta().name.as_ref());
    assert_eq!(Some(&owner.uid), credential.meta().uid.as_ref());
    assert_eq!(owner.controller, Some(true), "a controller owner reference");
    let labels = refresh.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("dscc-token-operator")
    );
    assert_eq!(
        labels.get("dscc.io/credential"),
        credential.meta().name.as_ref()
    );
    assert_eq!(
        annotation(refresh, REFRESH_FOR),
        annotation(target, DATA_HASH),
        "the refresh token is kept for the token in the target Secret"
    );
    let refresh_token = value(refresh, "refresh_token").expect("a refresh_token key");
    // Its expiry, from Keycloak's refresh_expires_in, agrees with the refresh token's exp.
    let jwt = Jwt::decode(&refresh_token).expect("Keycloak's refresh tokens are JWTs");
    let kept: Timestamp = annotation(refresh, "dscc.io/expires-at")
        .expect("the refresh token's expiry")
        .parse()
        .expect("an RFC 3339 time");
    let exp = jwt.seconds("exp").expect("exp");
    assert!(
        (exp - 2..=exp).contains(&kept.as_second()),
        "the refresh token expires at {}, the Secret says {kept}",
        at_second(exp)
    );
    refresh_token
}

/// Asserts that the refresh token appears nowhere in the target Secret or the status.
fn assert_not_exposed(refresh_token: &str, target: &Secret, credential: &DsccCredential) {
    assert!(refresh_token.len() > 100, "a refresh token JWT");
    let data = target.data.clone().unwrap_or_default();
    assert!(
        !data.contains_key("refresh_token"),
        "keys {:?}",
        data.keys()
    );
    for (key, value) in &data {
        assert!(
            !String::from_utf8_lossy(&value.0).contains(refresh_token),
            "the target Secret's {key} holds the refresh token"
        );
    }
    let metadata = serde_json::to_string(&target.metadata).unwrap();
    assert!(
        !metadata.contains(refresh_token),
        "the target Secret's metadata holds the refresh token"
    );
    let status = serde_json::to_string(&credential.status).unwrap();
    assert!(
        !status.contains(refresh_token),
        "the status holds the refresh token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_with_keycloak_refresh_tokens_and_falls_back_to_client_credentials_when_revoked() {
    let _timer = Timer(
        "renews_with_keycloak_refresh_tokens_and_falls_back_to_client_credentials_when_revoked",
        std::time::Instant::now(),
    );
    let (keycloak, env) = setup("keycloak-refresh").await;
    let operator = env.start_operator_https_only(Some(&keycloak.ca_file));
    create(
        &env,
        "rotating",
        keycloak,
        "refresh",
        "ClientSecretBasic",
        json!({}),
    )
    .await;
    let jwks = keycloak.jwks().await;
    let client_id = keycloak.client("refresh").client_id.clone();

    // The first token: client credentials, which with this client also give a refresh token.
    let credential = env
        .wait_for_condition("rotating", "Ready", "True", None, READY_TIMEOUT)
        .await;
    assert_eq!(
        status_grant(&credential).as_deref(),
        Some("ClientCredentials")
    );
    let target = env
        .secret("rotating-token")
        .await
        .expect("the target Secret");
    let first = value(&target, "access_token").expect("a token");
    let first_jwt = keycloak_token(keycloak, &jwks, &first, &client_id);
    assert_eq!(keycloak_grant(&first_jwt), "cc", "{}", first_jwt.claims);
    let first_session = first_jwt.str("sid").expect("a session id").to_owned();
    let refresh = env
        .secret("rotating-refresh")
        .await
        .expect("the refresh-token Secret rotating-refresh");
    let refresh_token = check_refresh_secret(&refresh, &credential, &target);
    let refresh_jwt = Jwt::decode(&refresh_token).expect("Keycloak's refresh tokens are JWTs");
    assert_eq!(
        refresh_jwt.str("typ"),
        Some("Refresh"),
        "{}",
        refresh_jwt.claims
    );
    assert_eq!(refresh_jwt.str("azp"), Some(client_id.as_str()));
    assert_eq!(refresh_jwt.str("sid"), Some(first_session.as_str()));
    assert_not_exposed(&refresh_token, &target, &credential);

    let readiness = watch_readiness(&env, "rotating");

    // The renewal uses the refresh token: same Keycloak session, refresh grant.
    let second = wait_for_new_token(&env, "rotating-token", &first, RENEWAL_TIMEOUT).await;
    let credential = wait_for_credential(
        &env,
        "rotating",
        "the status of the renewed token",
        Duration::from_secs(10),
        |c| issued_at(c) != issued_at(&credential) && condition(c, "Ready").is_some(),
    )
    .await;
    assert_eq!(
        status_grant(&credential).as_deref(),
        Some("RefreshToken"),
        "{:?}",
        credential.status
    );
    let second_jwt = keycloak_token(keycloak, &jwks, &second, &client_id);
    assert_eq!(keycloak_grant(&second_jwt), "rt", "{}", second_jwt.claims);
    assert_eq!(second_jwt.str("sid"), Some(first_session.as_str()));
    let target = env
        .secret("rotating-token")
        .await
        .expect("the target Secret");
    assert_eq!(
        annotation(&target, "dscc.io/grant").as_deref(),
        Some("RefreshToken")
    );
    // Keycloak answered with a refresh token too; it replaces the first.
    let (refresh, target) = wait_until(
        "the refresh-token Secret to follow the renewed token",
        Duration::from_secs(10),
        || async {
            let target = env.secret("rotating-token").await?;
            let refresh = env.secret("rotating-refresh").await?;
            (annotation(&refresh, REFRESH_FOR) == annotation(&target, DATA_HASH))
                .then_some((refresh, target))
        },
    )
    .await;
    let second_refresh_token = check_refresh_secret(&refresh, &credential, &target);
    assert_ne!(second_refresh_token, refresh_token);
    assert_not_exposed(&second_refresh_token, &target, &credential);

    // Keycloak ends the session: the refresh token is refused, client credentials take over.
    let log_mark = operator.logs().lines().count();
    let revoked = keycloak.revoke_refresh_tokens("refresh");
    assert!(
        revoked["sessions_removed"].as_u64() >= Some(1),
        "revoke-refresh-tokens removed no session: {revoked}"
    );
    let third = wait_for_new_token(&env, "rotating-token", &second, RENEWAL_TIMEOUT).await;
    let before = issued_at(&credential);
    let credential = wait_for_credential(
        &env,
        "rotating",
        "the status of the token after the revocation",
        Duration::from_secs(10),
        |c| issued_at(c) != before && condition(c, "Ready").is_some(),
    )
    .await;
    assert_eq!(
        status_grant(&credential).as_deref(),
        Some("ClientCredentials"),
        "{:?}",
        credential.status
    );
    assert!(
        has_condition(&credential, "Ready", "True", "TokenIssued"),
        "{:?}",
        credential.status
    );
    assert!(condition(&credential, "Stalled").is_none());
    let status = credential.status.clone().unwrap();
    assert_eq!(status.failed_attempts, 0, "{status:?}");
    assert_eq!(status.last_failure_reason, None, "{status:?}");
    let third_jwt = keycloak_token(keycloak, &jwks, &third, &client_id);
    assert_eq!(keycloak_grant(&third_jwt), "cc", "{}", third_jwt.claims);
    let new_session = third_jwt.str("sid").expect("a session id").to_owned();
    assert_ne!(new_session, first_session, "a new Keycloak session");
    // The operator asked with the refresh token, was refused, then used client credentials.
    let requests = token_requests_in_log(&operator.logs(), log_mark, &client_id);
    assert_eq!(
        requests,
        [
            ("RefreshToken".to_owned(), None),
            (String::new(), Some(400)),
            ("ClientCredentials".to_owned(), None),
            (String::new(), Some(200)),
        ],
        "the token requests after the revocation (log {})",
        operator.log_path().display()
    );
    // The refresh token of the new session is kept in its place.
    let (refresh, target) = wait_until(
        "the refresh-token Secret to follow the new token",
        Duration::from_secs(10),
        || async {
            let target = env.secret("rotating-token").await?;
            let refresh = env.secret("rotating-refresh").await?;
            (annotation(&refresh, REFRESH_FOR) == annotation(&target, DATA_HASH))
                .then_some((refresh, target))
        },
    )
    .await;
    let third_refresh_token = check_refresh_secret(&refresh, &credential, &target);
    let third_refresh_jwt = Jwt::decode(&third_refresh_token).expect("a JWT");
    assert_eq!(third_refresh_jwt.str("sid"), Some(new_session.as_str()));
    assert_not_exposed(&third_refresh_token, &target, &credential);

    // ... and used for the next renewal.
    let fourth = wait_for_new_token(&env, "rotating-token", &third, RENEWAL_TIMEOUT).await;
    let fourth_jwt = keycloak_token(keycloak, &jwks, &fourth, &client_id);
    assert_eq!(keycloak_grant(&fourth_jwt), "rt", "{}", fourth_jwt.claims);
    assert_eq!(fourth_jwt.str("sid"), Some(new_session.as_str()));
    let before = issued_at(&credential);
    let credential = wait_for_credential(
        &env,
        "rotating",
        "the status of the fourth token",
        Duration::from_secs(10),
        |c| issued_at(c) != before && condition(c, "Ready").is_some(),
    )
    .await;
    assert_eq!(status_grant(&credential).as_deref(), Some("RefreshToken"));

    assert_always_ready(&readiness.stop().await);
}

/// The target Secret `name`, once its token was exchanged with the subject's current token:
/// its `dscc.io/subject-token-hash` equals the subject Secret's `dscc.io/data-hash`.
async fn exchanged_with_current_subject(
    env: &TestEnv,
    name: &str,
    subject: &str,
    timeout: Duration,
) -> (Secret, Secret) {
    wait_until(
        &format!("{name} to hold a token exchanged with {subject}'s current token"),
        timeout,
        || async {
            let target = env.secret(name).await?;
            let subject = env.secret(subject).await?;
            let hash = annotation(&subject, DATA_HASH)?;
            (annotation(&target, SUBJECT_TOKEN_HASH) == Some(hash)).then_some((target, subject))
        },
    )
    .await
}

/// Checks a tenant's exchanged token: Keycloak issued it to `client_id` by token exchange, for
/// the subject's service account `subject_sub`.
fn check_exchanged(
    keycloak: &Keycloak,
    jwks: &Value,
    token: &str,
    client_id: &str,
    subject_sub: &str,
) -> Jwt {
    let jwt = keycloak_token(keycloak, jwks, token, client_id);
    assert_eq!(keycloak_grant(&jwt), "te", "{}", jwt.claims);
    assert_eq!(
        jwt.str("sub"),
        Some(subject_sub),
        "the exchanged token is for the subject's service account: {}",
        jwt.claims
    );
    assert_eq!(
        jwt.str("preferred_username"),
        Some("service-account-dscc-msp"),
        "{}",
        jwt.claims
    );
    jwt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_the_msp_token_for_tenant_tokens_and_follows_the_subject() {
    let _timer = Timer(
        "exchanges_the_msp_token_for_tenant_tokens_and_follows_the_subject",
        std::time::Instant::now(),
    );
    let (keycloak, env) = setup("keycloak-token-exchange").await;
    let _operator = env.start_operator_https_only(Some(&keycloak.ca_file));
    let jwks = keycloak.jwks().await;
    let msp_client = keycloak.client("msp").client_id.clone();
    let tenants = [
        (
            "tenant1",
            "ClientSecretBasic",
            keycloak.client("tenant1").client_id.clone(),
        ),
        (
            "tenant2",
            "ClientSecretPost",
            keycloak.client("tenant2").client_id.clone(),
        ),
    ];
    create(&env, "msp", keycloak, "msp", "ClientSecretBasic", json!({})).await;
    for (name, auth, _) in &tenants {
        create(
            &env,
            name,
            keycloak,
            name,
            auth,
            json!({"tokenExchange": {"subjectCredentialRef": {"name": "msp"}}}),
        )
        .await;
    }

    // The subject: the MSP client's own token, with both tenants in its audience.
    let msp = env
        .wait_for_condition("msp", "Ready", "True", None, READY_TIMEOUT)
        .await;
    assert_eq!(status_grant(&msp).as_deref(), Some("ClientCredentials"));
    let msp_token = env
        .secret_value("msp-token", "access_token")
        .await
        .expect("the MSP token");
    let msp_jwt = keycloak_token(keycloak, &jwks, &msp_token, &msp_client);
    let service_account = msp_jwt.str("sub").expect("a sub").to_owned();
    let audience = msp_jwt.claims["aud"].to_string();
    for (_, _, client_id) in &tenants {
        assert!(audience.contains(client_id.as_str()), "aud {audience}");
    }

    // Both tenants: Ready, with tokens Keycloak exchanged for them from the MSP's token.
    let mut tenant_tokens = BTreeMap::new();
    for (name, _, client_id) in &tenants {
        let tenant = env
            .wait_for_condition(name, "Ready", "True", None, READY_TIMEOUT)
            .await;
        assert_eq!(
            status_grant(&tenant).as_deref(),
            Some("TokenExchange"),
            "{name}: {:?}",
            tenant.status
        );
        let (target, _) = exchanged_with_current_subject(
            &env,
            &format!("{name}-token"),
            "msp-token",
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(
            annotation(&target, "dscc.io/grant").as_deref(),
            Some("TokenExchange")
        );
        let token = value(&target, "access_token").expect("a tenant token");
        assert_ne!(token, msp_token);
        check_exchanged(keycloak, &jwks, &token, client_id, &service_account);
        tenant_tokens.insert(name.to_string(), token);
    }

    // A new subject token (refresh requested on the MSP) is exchanged again by both tenants.
    // Requested right after an MSP renewal, so that its own next renewal is far off.
    let msp = env.credential("msp").await;
    let renewal = msp
        .status
        .as_ref()
        .unwrap()
        .renewal_time
        .as_ref()
        .unwrap()
        .0;
    if renewal.duration_since(Timestamp::now()).as_secs() < 10 {
        let before = issued_at(&msp);
        wait_for_credential(&env, "msp", "its next renewal", RENEWAL_TIMEOUT, |c| {
            issued_at(c) != before
        })
        .await;
    }
    let (_, msp_secret) =
        exchanged_with_current_subject(&env, "tenant1-token", "msp-token", Duration::from_secs(15))
            .await;
    exchanged_with_current_subject(&env, "tenant2-token", "msp-token", Duration::from_secs(15))
        .await;
    for (name, _, _) in &tenants {
        tenant_tokens.insert(
            name.to_string(),
            env.secret_value(&format!("{name}-token"), "access_token")
                .await
                .unwrap(),
        );
    }
    let old_hash = annotation(&msp_secret, DATA_HASH).expect("the MSP data hash");
    let requested = format!("exchange-{}", suffix());
    let requested_at = Timestamp::now();
    env.patch_credential("msp", refresh_request(&requested))
        .await;
    let msp_secret = wait_until(
        "the MSP to answer the refresh request",
        Duration::from_secs(15),
        || async {
            let secret = env.secret("msp-token").await?;
            (annotation(&secret, DATA_HASH) != Some(old_hash.clone())
                && annotation(&secret, REFRESH_ANNOTATION).as_deref() == Some(requested.as_str()))
            .then_some(secret)
        },
    )
    .await;
    let new_hash = annotation(&msp_secret, DATA_HASH).unwrap();
    let new_msp_jwt = keycloak_token(
        keycloak,
        &jwks,
        &value(&msp_secret, "access_token").unwrap(),
        &msp_client,
    );
    assert!(new_msp_jwt.seconds("iat").unwrap() >= requested_at.as_second() - 1);
    for (name, _, client_id) in &tenants {
        let target = wait_until(
            &format!("{name} to exchange the MSP's new token"),
            Duration::from_secs(15),
            || async {
                let target = env.secret(&format!("{name}-token")).await?;
                (annotation(&target, SUBJECT_TOKEN_HASH) == Some(new_hash.clone()))
                    .then_some(target)
            },
        )
        .await;
        let token = value(&target, "access_token").unwrap();
        assert_ne!(&token, &tenant_tokens[*name], "{name} kept its old token");
        let jwt = check_exchanged(keycloak, &jwks, &token, client_id, &service_account);
        assert!(
            jwt.seconds("iat").unwrap() >= new_msp_jwt.seconds("iat").unwrap(),
            "{name}'s token is older than the MSP token it was exchanged from"
        );
        let tenant = wait_for_credential(
            &env,
            name,
            "Ready with the re-exchanged token",
            Duration::from_secs(10),
            |c| {
                has_condition(c, "Ready", "True", "TokenIssued")
                    && c.status
                        .as_ref()
                        .and_then(|s| s.issued_at.as_ref())
                        .map(|t| t.0)
                        >= Some(at_second(jwt.seconds("iat").unwrap() - 1))
            },
        )
        .await;
        assert_eq!(status_grant(&tenant).as_deref(), Some("TokenExchange"));
        tenant_tokens.insert(name.to_string(), token);
    }

    // The subject breaks: a wrong client secret and a refresh request. Keycloak refuses it,
    // the MSP is no longer Ready; each tenant, once it needs a new token (its renewal), says
    // it waits for the subject instead of asking Keycloak.
    env.put_secret(
        "msp-client",
        &[
            ("client_id", &msp_client),
            ("client_secret", "not-the-msp-secret"),
        ],
    )
    .await;
    env.patch_credential("msp", refresh_request(&format!("broken-{}", suffix())))
        .await;
    let msp = env
        .wait_for_condition(
            "msp",
            "Ready",
            "False",
            Some("InvalidClientCredentials"),
            RENEWAL_TIMEOUT,
        )
        .await;
    assert_eq!(
        env.secret("msp-token")
            .await
            .and_then(|s| annotation(&s, DATA_HASH)),
        Some(new_hash.clone()),
        "the MSP's last token stays in place: {:?}",
        msp.status
    );
    // From now on the subject has no token to give; what the tenants hold stays.
    for (name, _, _) in &tenants {
        tenant_tokens.insert(
            name.to_string(),
            env.secret_value(&format!("{name}-token"), "access_token")
                .await
                .unwrap(),
        );
    }
    for (name, _, _) in &tenants {
        let tenant = env
            .wait_for_condition(
                name,
                "Ready",
                "False",
                Some("SubjectNotReady"),
                RENEWAL_TIMEOUT,
            )
            .await;
        let ready = condition(&tenant, "Ready").unwrap();
        assert!(
            ready.message.contains("DsccCredential msp"),
            "{name}: the message must name the subject: {}",
            ready.message
        );
        assert!(
            has_condition(&tenant, "Stalled", "True", "SubjectNotReady"),
            "{name}: {:?}",
            tenant.status
        );
        // Its last token stays until it expires.
        assert_eq!(
            env.secret_value(&format!("{name}-token"), "access_token")
                .await
                .as_ref(),
            Some(&tenant_tokens[*name]),
            "{name}"
        );
    }

    // The subject fixed: it gets a token again at once, and the tenants exchange it.
    put_client(&env, "msp", keycloak, "msp").await;
    env.wait_for_condition("msp", "Ready", "True", None, READY_TIMEOUT)
        .await;
    for (name, _, client_id) in &tenants {
        let tenant = env
            .wait_for_condition(name, "Ready", "True", None, READY_TIMEOUT)
            .await;
        assert!(
            condition(&tenant, "Stalled").is_none(),
            "{name}: {:?}",
            tenant.status
        );
        assert_eq!(status_grant(&tenant).as_deref(), Some("TokenExchange"));
        let (target, _) = exchanged_with_current_subject(
            &env,
            &format!("{name}-token"),
            "msp-token",
            Duration::from_secs(15),
        )
        .await;
        let token = value(&target, "access_token").unwrap();
        assert_ne!(&token, &tenant_tokens[*name]);
        check_exchanged(keycloak, &jwks, &token, client_id, &service_account);
    }

    // The subject deleted: a tenant asked for a new token says the subject does not exist.
    env.api::<DsccCredential>()
        .delete("msp", &DeleteParams::default())
        .await
        .expect("delete the MSP credential");
    env.patch_credential("tenant1", refresh_request(&format!("gone-{}", suffix())))
        .await;
    let tenant = env
        .wait_for_condition(
            "tenant1",
            "Ready",
            "False",
            Some("SubjectNotReady"),
            READY_TIMEOUT,
        )
        .await;
    let message = condition(&tenant, "Ready").unwrap().message;
    assert!(
        message.contains("DsccCredential msp") && message.contains("does not exist"),
        "{message}"
    );
}
