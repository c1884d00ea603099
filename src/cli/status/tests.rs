use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().expect("an RFC 3339 time")
}

fn now() -> Timestamp {
    at("2026-11-25T10:00:30Z")
}

fn credential(status: Value) -> DsccCredential {
    serde_json::from_value(json!({
        "apiVersion": "dscc.io/v1alpha1",
        "kind": "DsccCredential",
        "metadata": {
            "name": "array-reports",
            "namespace": "storage",
            "uid": "uid-1",
            "generation": 3,
            "creationTimestamp": "2026-11-25T09:00:00Z",
        },
        "spec": {
            "clientSecretRef": {"name": "greenlake-client"},
            "rolloutRestartTargets": [{"kind": "Deployment", "name": "reporter"}],
        },
        "status": status,
    }))
    .expect("a credential")
}

fn ready() -> DsccCredential {
    credential(json!({
        "observedGeneration": 3,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "TokenIssued",
            "message": "Token valid until 2026-11-25T12:00:00Z, renewal at 2026-11-25T11:20:00Z",
            "lastTransitionTime": "2026-11-25T10:00:00Z",
        }],
        "secretName": "array-reports-token",
        "issuedAt": "2026-11-25T10:00:00Z",
        "expiresAt": "2026-11-25T12:00:00Z",
        "renewalTime": "2026-11-25T11:20:00Z",
        "grant": "ClientCredentials",
        "tokenGroup": "tg-5f2c9a",
        "rolloutRestarts": [
            {"kind": "Deployment", "name": "reporter", "token": "2026-11-25T10:00:00Z 1a2b3c4d"}
        ],
    }))
}

fn failing() -> DsccCredential {
    credential(json!({
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready", "status": "False", "reason": "InvalidClientCredentials",
                "message": "The token endpoint rejected the client: check client_id and client_secret; next attempt at 2026-11-25T10:10:00Z",
                "lastTransitionTime": "2026-11-25T10:00:00Z",
            },
            {
                "type": "Stalled", "status": "True", "reason": "InvalidClientCredentials",
                "message": "rejected", "lastTransitionTime": "2026-11-25T10:00:00Z",
            }
        ],
        "failedAttempts": 2,
        "lastFailureTime": "2026-11-25T10:00:10Z",
        "lastFailureReason": "InvalidClientCredentials",
        "lastFailureMessage": "The token endpoint rejected the client (invalid_client): check client_id and client_secret",
        "nextRetryTime": "2026-11-25T10:10:00Z",
        "retryAfterTime": "2026-11-25T10:01:00Z",
    }))
}

/// A JWT whose claims include a token-like value, as a careless issuer might put there.
fn jwt() -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = json!({
        "iss": "https://sso.example.com",
        "sub": "client-1",
        "client_id": "client-1",
        "iat": 1_795_600_800,
        "exp": 1_795_608_000,
        "session": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    });
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    format!("{header}.{payload}.c2lnbmF0dXJlLXNpZ25hdHVyZQ")
}

fn target_secret(data: &[(&str, String)], owner_uid: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": "array-reports-token",
            "namespace": "storage",
            "ownerReferences": [{
                "apiVersion": "dscc.io/v1alpha1", "kind": "DsccCredential",
                "name": "array-reports", "uid": owner_uid, "controller": true,
            }],
        },
        "type": "Opaque",
        "data": data.iter()
            .map(|(k, v)| (k.to_string(), Value::from(base64::engine::general_purpose::STANDARD.encode(v))))
            .collect::<serde_json::Map<_, _>>(),
    }))
    .expect("a Secret")
}

fn full_secret() -> Secret {
    let token = jwt();
    target_secret(
        &[
            ("access_token", token.clone()),
            ("authorization", format!("Bearer {token}")),
            ("expires_at", "2026-11-25T12:00:00Z".into()),
            ("token_type", "Bearer".into()),
        ],
        "uid-1",
    )
}

fn event(reason: &str, note: &str, at: &str, uid: &str, count: Option<i32>) -> Event {
    let mut event = json!({
        "metadata": {"name": format!("e-{reason}-{at}"), "namespace": "storage"},
        "eventTime": at,
        "reason": reason,
        "note": note,
        "type": "Normal",
        "action": "Reconcile",
        "reportingController": "dscc-token-operator",
        "reportingInstance": "op-1",
        "regarding": {
            "apiVersion": "dscc.io/v1alpha1", "kind": "DsccCredential",
            "name": "array-reports", "namespace": "storage", "uid": uid,
        },
    });
    if let Some(count) = count {
        event["series"] = json!({"count": count, "lastObservedTime": at});
    }
    serde_json::from_value(event).expect("an Event")
}

#[test]
fn durations_read_like_kubectl_ages() {
    let cases = [
        (0, "0s"),
        (45, "45s"),
        (119, "119s"),
        (330, "5m30s"),
        (600, "10m"),
        (2_520, "42m"),
        (7_199, "1h59m"),
        (7_200, "2h"),
        (3 * 86_400 + 4 * 3600 + 59, "3d4h"),
        (9 * 86_400, "9d"),
    ];
    for (seconds, shown) in cases {
        assert_eq!(human_duration(SignedDuration::from_secs(seconds)), shown);
        assert_eq!(human_duration(SignedDuration::from_secs(-seconds)), shown);
    }
    assert_eq!(relative(at("2026-11-25T12:00:00Z"), now()), "in 1h59m");
    assert_eq!(relative(at("2026-11-25T09:55:30Z"), now()), "5m ago");
    assert_eq!(relative(now(), now()), "now");
}

#[test]
fn the_detail_of_a_ready_credential() {
    let credential = ready();
    let secret = TargetSecret::Present(SecretSummary::of(&full_secret(), &credential));
    let events = Ok(vec![
        EventLine::of(&event(
            "TokenIssued",
            "Issued a token valid until 2026-11-25T12:00:00Z",
            "2026-11-25T10:00:00.120000Z",
            "uid-1",
            None,
        )),
        EventLine::of(&event(
            "RolloutRestarted",
            "Restarted Deployment reporter",
            "2026-11-25T10:00:01.000000Z",
            "uid-1",
            Some(2),
        )),
    ]);
    let shown = format_details(&credential, &secret, &events, now());
    let expected = r#"Name:             storage/array-reports
Ready:            True (TokenIssued)
Message:          Token valid until 2026-11-25T12:00:00Z, renewal at 2026-11-25T11:20:00Z
Token:            expires 2026-11-25T12:00:00Z (in 1h59m), issued 2026-11-25T10:00:00Z (30s ago)
Renewal:          2026-11-25T11:20:00Z (in 1h19m)
Grant:            ClientCredentials
Token group:      tg-5f2c9a
Last failure:     none
Secret:           array-reports-token (Opaque)
                  access_token   290 bytes
                  authorization  297 bytes
                  expires_at     20 bytes
                  token_type     6 bytes
Claims:           (of the token in the Secret; signature not verified)
                  client_id  "client-1"
                  exp        1795608000 = 2026-11-25T12:00:00Z (in 1h59m)
                  iat        1795600800 = 2026-11-25T10:00:00Z (30s ago)
                  iss        "https://sso.example.com"
                  session    "<redacted>"
                  sub        "client-1"
Rollout restarts:
                  Deployment/reporter  for token 2026-11-25T10:00:00Z 1a2b3c4d
Events:           (newest last)
                  30s ago  Normal  TokenIssued            Issued a token valid until 2026-11-25T12:00:00Z
                  29s ago  Normal  RolloutRestarted (x2)  Restarted Deployment reporter
"#;
    assert_eq!(shown, expected, "\n{shown}");
}

#[test]
fn no_value_of_the_secret_is_ever_shown() {
    let credential = ready();
    let secret = full_secret();
    let summary = SecretSummary::of(&secret, &credential);
    let shown = format_details(
        &credential,
        &TargetSecret::Present(summary.clone()),
        &Ok(vec![]),
        now(),
    );
    let token = jwt();
    let summary_debug = format!("{summary:?}");
    for (name, text) in [("the detail", &shown), ("the summary", &summary_debug)] {
        assert!(!text.contains(&token), "{name} holds the token");
        for part in token.split('.') {
            assert!(!text.contains(part), "{name} holds a part of the token");
        }
        assert!(
            !text.contains("Bearer "),
            "{name} holds the Authorization value"
        );
        assert!(
            !text.contains("eyJhbGciOiJIUzI1NiJ9"),
            "{name} holds the token-like claim"
        );
    }
}

#[test]
fn the_claims_come_from_the_authorization_key_when_the_access_token_key_is_omitted() {
    let mut credential = ready();
    credential.spec.target.keys.access_token = String::new();
    let secret = target_secret(&[("authorization", format!("Bearer {}", jwt()))], "uid-1");
    let Claims::Decoded(claims) = SecretSummary::of(&secret, &credential).claims else {
        panic!("the claims are decoded from the Authorization value");
    };
    assert!(claims.contains(&("sub".into(), "\"client-1\"".into())));

    let opaque = target_secret(&[("access_token", "opaque-token".into())], "uid-1");
    assert_eq!(SecretSummary::of(&opaque, &ready()).claims, Claims::NotAJwt);
    let empty = target_secret(&[("expires_at", "x".into())], "uid-1");
    assert_eq!(SecretSummary::of(&empty, &ready()).claims, Claims::NoToken);
}

#[test]
fn a_secret_the_credential_does_not_control_is_measured_but_its_token_not_read() {
    let summary = SecretSummary::of(&full_secret(), &credential(json!({})));
    assert!(summary.owned, "same uid");
    let foreign = target_secret(&[("access_token", jwt())], "someone-else");
    let summary = SecretSummary::of(&foreign, &ready());
    assert!(!summary.owned);
    assert_eq!(summary.claims, Claims::NotOwned);
    assert_eq!(summary.keys, [("access_token".to_owned(), jwt().len())]);
    let shown = format_details(
        &ready(),
        &TargetSecret::Present(summary),
        &Ok(vec![]),
        now(),
    );
    assert!(
        shown.contains(
            "Secret:           array-reports-token (Opaque, not created by this credential)"
        ),
        "{shown}"
    );
    assert!(shown.contains("Claims:           not read"), "{shown}");
}

#[test]
fn the_detail_of_a_failing_credential_names_the_failure_and_the_next_retry() {
    let shown = format_details(
        &failing(),
        &TargetSecret::Missing {
            name: "array-reports-token".into(),
        },
        &Err("events.events.k8s.io is forbidden".into()),
        now(),
    );
    let expected = r#"Name:             storage/array-reports
Ready:            False (InvalidClientCredentials)
Message:          The token endpoint rejected the client: check client_id and client_secret; next attempt at 2026-11-25T10:10:00Z
Stalled:          True (InvalidClientCredentials)
Token:            none issued
Renewal:          -
Grant:            -
Token group:      -
Last failure:     InvalidClientCredentials, 2 failed attempts, last 20s ago
                  The token endpoint rejected the client (invalid_client): check client_id and client_secret
Next retry:       2026-11-25T10:10:00Z (in 9m30s)
Retry after:      2026-11-25T10:01:00Z (in 30s) (asked by the endpoint)
Secret:           array-reports-token (not found)
Rollout restarts: none yet
Events:           cannot list: events.events.k8s.io is forbidden
"#;
    assert_eq!(shown, expected, "\n{shown}");
}

#[test]
fn a_suspended_credential_and_a_lagging_status_say_so() {
    let mut credential = ready();
    credential.spec.suspend = true;
    credential.metadata.generation = Some(4);
    let shown = format_details(
        &credential,
        &TargetSecret::Unreadable {
            name: "array-reports-token".into(),
            problem: "secrets \"array-reports-token\" is forbidden".into(),
        },
        &Ok(vec![]),
        now(),
    );
    assert!(
        shown.contains("Suspended:        yes: renewals are stopped (spec.suspend)\n"),
        "{shown}"
    );
    assert!(
        shown.contains("Observed:         generation 3; the spec is at 4 (not reconciled yet)\n"),
        "{shown}"
    );
    assert!(
        shown.contains("(cannot read: secrets \"array-reports-token\" is forbidden)"),
        "{shown}"
    );
    assert!(shown.contains("Events:           none\n"), "{shown}");

    let mut unreconciled = ready();
    unreconciled.status = None;
    let shown = format_details(
        &unreconciled,
        &TargetSecret::Missing { name: "x".into() },
        &Ok(vec![]),
        now(),
    );
    assert!(
        shown.contains("Ready:            Unknown (no status yet"),
        "{shown}"
    );
    assert!(!is_ready(&unreconciled));
}

#[test]
fn the_events_are_the_credentials_own_newest_last_at_most_ten() {
    let credential = ready();
    let mut events: Vec<Event> = (0..12)
        .rev()
        .map(|i| {
            event(
                &format!("R{i:02}"),
                "n",
                &format!("2026-11-25T10:00:{i:02}.000000Z"),
                "uid-1",
                None,
            )
        })
        .collect();
    // An Event about an earlier credential of the same name, and one about another object.
    events.push(event(
        "Old",
        "n",
        "2026-11-25T10:00:59.000000Z",
        "uid-0",
        None,
    ));
    let mut other = event("Other", "n", "2026-11-25T10:00:58.000000Z", "uid-1", None);
    other.regarding.as_mut().unwrap().kind = Some("Secret".into());
    events.push(other);
    let lines = recent_events(&events, &credential, MAX_EVENTS);
    let reasons: Vec<&str> = lines.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "R02", "R03", "R04", "R05", "R06", "R07", "R08", "R09", "R10", "R11"
        ]
    );
}

#[test]
fn the_table_lists_every_credential_and_why_those_not_ready_are_not() {
    let mut other = failing();
    other.metadata.name = Some("billing".into());
    let table = format_table(&[other.clone(), ready()], false, now());
    let expected = "\
NAME            READY   REASON                     SECRET                EXPIRES    RENEWAL    AGE
billing         False   InvalidClientCredentials   -                     -          -          1h
array-reports   True    TokenIssued                array-reports-token   in 1h59m   in 1h19m   1h

Not Ready:
  billing: InvalidClientCredentials: The token endpoint rejected the client: check client_id and client_secret; next attempt at 2026-11-25T10:10:00Z
";
    assert_eq!(table, expected, "\n{table}");

    let table = format_table(&[other], true, now());
    assert!(table.starts_with("NAMESPACE   NAME      READY"), "{table}");
    assert!(
        table.contains("\n  storage/billing: InvalidClientCredentials: "),
        "{table}"
    );
}

#[test]
fn messages_are_scrubbed_of_anything_token_like() {
    let mut credential = failing();
    let status = credential.status.as_mut().unwrap();
    status.conditions[0].message = format!("rejected Bearer abc123 and {}", jwt());
    let shown = format_details(
        &credential,
        &TargetSecret::Missing { name: "x".into() },
        &Ok(vec![]),
        now(),
    );
    assert!(!shown.contains("abc123"), "{shown}");
    assert!(!shown.contains(&jwt()), "{shown}");
    let table = format_table(&[credential], false, now());
    assert!(
        !table.contains("abc123") && !table.contains(&jwt()),
        "{table}"
    );
}
