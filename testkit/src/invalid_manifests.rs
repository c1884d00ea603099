//! DsccCredential specs the API server must refuse, each with the text its error message must
//! contain (the field it names). Shared by the end-to-end tests and the compatibility tests,
//! so every supported Kubernetes version is held to the same list.

use serde_json::{Value, json};

/// One spec the API server must reject.
pub struct InvalidManifest {
    /// What is wrong with it, for failure messages.
    pub description: &'static str,
    /// The whole `spec`.
    pub spec: Value,
    /// Text the server's error message must contain (usually the field path).
    pub expect_in_message: &'static str,
}

/// A valid spec that uses most fields; every invalid case is this with one thing broken.
pub fn base_spec() -> Value {
    json!({
        "clientSecretRef": {
            "name": "greenlake-client",
            "clientIdKey": "client_id",
            "clientSecretKey": "client_secret",
        },
        "tokenUrl": "https://sso.common.cloud.hpe.com/as/token.oauth2",
        "authMethod": "ClientSecretPost",
        "scopes": ["dscc.read", "openid"],
        "region": "eu1",
        "refreshBefore": "20m",
        "target": {
            "name": "array-reports-token",
            "type": "Opaque",
            "labels": {"team": "storage"},
            "annotations": {"example.com/owner": "storage"},
            "keys": {
                "accessToken": "access_token",
                "tokenType": "token_type",
                "expiresAt": "expires_at",
                "authorization": "authorization",
                "apiUrl": "api_url",
            },
        },
        "suspend": false,
    })
}

/// The base spec with `value` set at `path` (a list of object keys).
fn with(path: &[&str], value: Value) -> Value {
    set(base_spec(), path, value)
}

/// The base spec without the field at `path`.
fn without(path: &[&str]) -> Value {
    remove(base_spec(), path)
}

fn parent<'a>(spec: &'a mut Value, path: &[&str]) -> (&'a mut Value, String) {
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut object = spec;
    for key in parents {
        object = object
            .get_mut(*key)
            .unwrap_or_else(|| panic!("the base spec has no {key}"));
    }
    (object, (*last).to_owned())
}

fn set(mut spec: Value, path: &[&str], value: Value) -> Value {
    let (object, last) = parent(&mut spec, path);
    object[last] = value;
    spec
}

fn remove(mut spec: Value, path: &[&str]) -> Value {
    let (object, last) = parent(&mut spec, path);
    object
        .as_object_mut()
        .expect("an object")
        .remove(&last)
        .unwrap_or_else(|| panic!("the base spec has no {last}"));
    spec
}

fn case(
    description: &'static str,
    spec: Value,
    expect_in_message: &'static str,
) -> InvalidManifest {
    InvalidManifest {
        description,
        spec,
        expect_in_message,
    }
}

/// Every invalid spec with what its rejection must say.
pub fn cases() -> Vec<InvalidManifest> {
    vec![
        case(
            "both refreshBefore and refreshBeforePercentage",
            with(&["refreshBeforePercentage"], json!(33)),
            "set at most one of refreshBefore and refreshBeforePercentage",
        ),
        case(
            "refreshBeforePercentage 0",
            set(
                without(&["refreshBefore"]),
                &["refreshBeforePercentage"],
                json!(0),
            ),
            "spec.refreshBeforePercentage",
        ),
        case(
            "refreshBeforePercentage 100",
            set(
                without(&["refreshBefore"]),
                &["refreshBeforePercentage"],
                json!(100),
            ),
            "spec.refreshBeforePercentage",
        ),
        case(
            "refreshBefore written out in words",
            with(&["refreshBefore"], json!("20 minutes")),
            "spec.refreshBefore",
        ),
        case(
            "negative refreshBefore",
            with(&["refreshBefore"], json!("-5m")),
            "spec.refreshBefore",
        ),
        case(
            "zero refreshBefore",
            with(&["refreshBefore"], json!("0s")),
            "spec.refreshBefore",
        ),
        case(
            "tokenUrl with an ftp scheme",
            with(&["tokenUrl"], json!("ftp://x")),
            "spec.tokenUrl",
        ),
        case(
            "tokenUrl that is not a URL",
            with(&["tokenUrl"], json!("not a url")),
            "spec.tokenUrl",
        ),
        case(
            "empty clientIdKey",
            with(&["clientSecretRef", "clientIdKey"], json!("")),
            "spec.clientSecretRef.clientIdKey",
        ),
        case(
            "clientSecretKey with a slash",
            with(
                &["clientSecretRef", "clientSecretKey"],
                json!("greenlake/secret"),
            ),
            "spec.clientSecretRef.clientSecretKey",
        ),
        case(
            "clientSecretRef.name that is not a DNS subdomain",
            with(&["clientSecretRef", "name"], json!("Greenlake_Client")),
            "spec.clientSecretRef.name",
        ),
        case(
            "neither clientSecretRef nor tokenExchange",
            without(&["clientSecretRef"]),
            "set clientSecretRef (the API client), or tokenExchange",
        ),
        case(
            "target name that is not a DNS subdomain",
            with(&["target", "name"], json!("Bad_Name")),
            "spec.target.name",
        ),
        case(
            "target key name with a slash",
            with(&["target", "keys", "accessToken"], json!("token/value")),
            "spec.target.keys.accessToken",
        ),
        case(
            "duplicate target key names",
            with(&["target", "keys", "tokenType"], json!("access_token")),
            "target.keys must be distinct",
        ),
        case(
            "both accessToken and authorization keys empty",
            with(
                &["target", "keys"],
                json!({"accessToken": "", "authorization": ""}),
            ),
            "keys.accessToken and keys.authorization cannot both be empty",
        ),
        case(
            "the operator's managed-by label in target.labels",
            with(
                &["target", "labels"],
                json!({"app.kubernetes.io/managed-by": "helm"}),
            ),
            "spec.target.labels",
        ),
        case(
            "the operator's annotation prefix in target.annotations",
            with(
                &["target", "annotations"],
                json!({"dscc.io/issued-at": "2026-01-01T00:00:00Z"}),
            ),
            "spec.target.annotations",
        ),
        case(
            "a scope with a space",
            with(&["scopes"], json!(["dscc.read dscc.write"])),
            "spec.scopes",
        ),
        case(
            "an empty scope",
            with(&["scopes"], json!([""])),
            "spec.scopes",
        ),
        case(
            "an unknown authMethod",
            with(&["authMethod"], json!("PrivateKeyJwt")),
            "spec.authMethod",
        ),
        case(
            "an unknown region",
            with(&["region"], json!("us2")),
            "spec.region",
        ),
        case(
            "an empty target type",
            with(&["target", "type"], json!("")),
            "spec.target.type",
        ),
        case(
            "a Secret type the operator cannot fill",
            with(&["target", "type"], json!("kubernetes.io/tls")),
            "target.type must be Opaque or a type of your own",
        ),
        case(
            "a target label value that no label may have",
            with(&["target", "labels"], json!({"team": "storage team!"})),
            "spec.target.labels.team",
        ),
        case(
            "a target label value longer than 63 characters",
            with(&["target", "labels"], json!({"team": "s".repeat(64)})),
            "spec.target.labels.team",
        ),
        case(
            "a target label key that is not a qualified name",
            with(&["target", "labels"], json!({"bad key": "x"})),
            "target.labels keys must be qualified names",
        ),
        case(
            "a target annotation key that is not a qualified name",
            with(&["target", "annotations"], json!({"-leading-dash": "x"})),
            "target.annotations keys must be qualified names",
        ),
        case(
            "a token exchange audience with spaces",
            with(
                &["tokenExchange"],
                json!({"subjectCredentialRef": {"name": "msp"}, "audience": "a b"}),
            ),
            "tokenExchange.audience",
        ),
    ]
}
