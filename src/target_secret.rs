//! The target Secret: what the operator writes, and what it reads back to decide.
//!
//! Besides the token keys the user configured, the Secret carries bookkeeping annotations
//! (when the token was issued and expires, which spec and which client credentials
//! it came from, a hash of the data as written). They make the decision restart-safe: a new
//! operator process reads them and knows the token is still good.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::api::{CREDENTIAL_LABEL, DsccCredential, MANAGED_BY_LABEL, MANAGER, TargetKeys};
use crate::dscc_api::Verification;
use crate::planner::{TargetState, TokenRecord};
use crate::token::{ClientCredentials, IssuedToken};

/// Annotation: when the token was issued (RFC 3339).
pub const ISSUED_AT: &str = "dscc.io/issued-at";
/// Annotation: when the token expires (RFC 3339).
pub const EXPIRES_AT: &str = "dscc.io/expires-at";
/// Annotation: the issuance hash of the spec the token was issued for.
pub const SPEC_HASH: &str = "dscc.io/spec-hash";
/// Annotation: one-way fingerprint of the client credentials the token came from.
pub const CREDENTIALS_HASH: &str = "dscc.io/credentials-hash";
/// Annotation: hash of the token data as written, to notice edits.
pub const DATA_HASH: &str = "dscc.io/data-hash";
/// Annotation: the manual refresh request this token answered.
pub const REFRESH_ANSWERED: &str = "dscc.io/refresh-requested-at";
/// Annotation: what the DSCC API said about the token (with `spec.verify`).
pub const VERIFIED: &str = "dscc.io/verified";

/// A one-way fingerprint of a client id and secret, safe to store and compare.
pub fn credentials_fingerprint(credentials: &ClientCredentials) -> String {
    let digest = Sha256::new()
        .chain_update(credentials.client_id.as_bytes())
        .chain_update([0u8])
        .chain_update(credentials.client_secret.expose_secret().as_bytes())
        .finalize();
    format!("sha256:{}", hex::encode(&digest[..16]))
}

/// The values written under the configured keys, in key order; keys set to "" are left out.
fn token_data(
    keys: &TargetKeys,
    token: &IssuedToken,
    api_url: Option<&str>,
) -> BTreeMap<String, String> {
    let secret = token.access_token.expose_secret();
    let entries = [
        (&keys.access_token, Some(secret.to_owned())),
        (&keys.token_type, Some(token.token_type.clone())),
        (&keys.expires_at, Some(token.expires_at.to_string())),
        (
            &keys.authorization,
            Some(format!(
                "{} {secret}",
                authorization_scheme(&token.token_type)
            )),
        ),
        (&keys.api_url, api_url.map(str::to_owned)),
    ];
    entries
        .into_iter()
        .filter(|(key, _)| !key.is_empty())
        .filter_map(|(key, value)| value.map(|v| (key.clone(), v)))
        .collect()
}

/// `Bearer` whatever the case the endpoint used: HTTP clients expect the canonical scheme.
fn authorization_scheme(token_type: &str) -> &str {
    if token_type.eq_ignore_ascii_case("bearer") {
        "Bearer"
    } else {
        token_type
    }
}

/// Hash over the configured keys and their values, missing keys included.
fn data_hash<'a>(keys: &TargetKeys, lookup: impl Fn(&str) -> Option<&'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for key in managed_keys(keys) {
        hasher.update(key.as_bytes());
        match lookup(key) {
            Some(value) => {
                hasher.update([1u8]);
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value);
            }
            None => hasher.update([0u8]),
        }
    }
    format!("sha256:{}", hex::encode(&hasher.finalize()[..16]))
}

fn managed_keys(keys: &TargetKeys) -> impl Iterator<Item = &str> {
    [
        &keys.access_token,
        &keys.token_type,
        &keys.expires_at,
        &keys.authorization,
        &keys.api_url,
    ]
    .into_iter()
    .map(String::as_str)
    .filter(|k| !k.is_empty())
}

/// The owner reference that makes the credential the Secret's controller.
pub fn owner_reference(credential: &DsccCredential) -> Option<OwnerReference> {
    credential.controller_owner_ref(&())
}

/// Builds the target Secret holding `token` for `credential`.
pub fn build(
    credential: &DsccCredential,
    token: &IssuedToken,
    credentials_fingerprint: &str,
    refresh_answered: Option<&str>,
    verification: Option<Verification>,
) -> Secret {
    let spec = &credential.spec;
    let api_url = spec.dscc_api_url();
    let data = token_data(&spec.target.keys, token, api_url);
    let hash = data_hash(&spec.target.keys, |k| data.get(k).map(|v| v.as_bytes()));

    let mut labels = spec.target.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    labels.insert(
        CREDENTIAL_LABEL.into(),
        credential.metadata.name.clone().unwrap_or_default(),
    );

    let mut annotations = spec.target.annotations.clone();
    annotations.insert(ISSUED_AT.into(), token.issued_at.to_string());
    annotations.insert(EXPIRES_AT.into(), token.expires_at.to_string());
    annotations.insert(SPEC_HASH.into(), credential.spec.issuance_hash());
    annotations.insert(CREDENTIALS_HASH.into(), credentials_fingerprint.into());
    annotations.insert(DATA_HASH.into(), hash);
    if let Some(value) = refresh_answered {
        annotations.insert(REFRESH_ANSWERED.into(), value.into());
    }
    if let Some(verification) = verification {
        annotations.insert(VERIFIED.into(), verification.as_str().into());
    }

    Secret {
        metadata: ObjectMeta {
            name: Some(credential.target_name()),
            namespace: credential.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner_reference(credential).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some(
            spec.target
                .r#type
                .clone()
                .unwrap_or_else(|| "Opaque".into()),
        ),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Whether `secret` is controlled by `credential`.
pub fn is_controlled_by(secret: &Secret, credential: &DsccCredential) -> bool {
    let uid = credential.metadata.uid.as_deref();
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// What the planner needs to know about the Secret found under the target name.
pub fn observe(secret: Option<&Secret>, credential: &DsccCredential) -> TargetState {
    let Some(secret) = secret else {
        return TargetState::Missing;
    };
    if !is_controlled_by(secret, credential) {
        return TargetState::Foreign {
            name: secret.metadata.name.clone().unwrap_or_default(),
        };
    }
    TargetState::Owned(read_record(secret, &credential.spec.target.keys))
}

fn read_record(secret: &Secret, keys: &TargetKeys) -> Option<TokenRecord> {
    let annotations = secret.metadata.annotations.as_ref()?;
    let timestamp = |key: &str| annotations.get(key)?.parse::<Timestamp>().ok();
    let data = secret.data.as_ref();
    let actual_hash = data_hash(keys, |k| data?.get(k).map(|v| v.0.as_slice()));
    Some(TokenRecord {
        issued_at: timestamp(ISSUED_AT)?,
        expires_at: timestamp(EXPIRES_AT)?,
        spec_hash: annotations.get(SPEC_HASH)?.clone(),
        credentials_fingerprint: annotations.get(CREDENTIALS_HASH)?.clone(),
        refresh_requested_at: annotations.get(REFRESH_ANSWERED).cloned(),
        data_intact: annotations.get(DATA_HASH) == Some(&actual_hash),
        token_hash: annotations.get(DATA_HASH)?.clone(),
        verification: annotations
            .get(VERIFIED)
            .and_then(|v| Verification::parse(v)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClientSecretRef, DsccCredentialSpec, Region, TargetSpec};
    use crate::token::{AccessToken, ClientSecret, LifetimeSource};

    fn credential(target: TargetSpec) -> DsccCredential {
        let mut credential = DsccCredential::new(
            "array-reports",
            DsccCredentialSpec {
                client_secret_ref: ClientSecretRef {
                    name: "greenlake-client".into(),
                    client_id_key: "client_id".into(),
                    client_secret_key: "client_secret".into(),
                },
                token_url: crate::api::DEFAULT_TOKEN_URL.into(),
                auth_method: Default::default(),
                scopes: vec![],
                region: Some(Region::Eu1),
                refresh_before: None,
                refresh_before_percentage: None,
                target,
                api_url: None,
                verify: false,
                rollout_restart_targets: vec![],
                suspend: false,
            },
        );
        credential.metadata.namespace = Some("storage".into());
        credential.metadata.uid = Some("5b1c-uid".into());
        credential.metadata.generation = Some(3);
        credential
    }

    fn token() -> IssuedToken {
        let issued_at: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        IssuedToken {
            access_token: AccessToken::new("eyJ.secret-token.sig".into()),
            token_type: "bearer".into(),
            issued_at,
            expires_at: "2026-11-25T12:00:00Z".parse().unwrap(),
            lifetime_source: LifetimeSource::ExpiresIn,
            scope: None,
            claims: None,
        }
    }

    fn string_data(secret: &Secret) -> BTreeMap<String, String> {
        secret
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect()
    }

    #[test]
    fn writes_every_default_key_with_a_canonical_authorization_header() {
        let secret = build(
            &credential(TargetSpec::default()),
            &token(),
            "sha256:fp",
            None,
            None,
        );
        let data = string_data(&secret);
        assert_eq!(data["access_token"], "eyJ.secret-token.sig");
        assert_eq!(data["token_type"], "bearer");
        assert_eq!(data["expires_at"], "2026-11-25T12:00:00Z");
        assert_eq!(data["authorization"], "Bearer eyJ.secret-token.sig");
        assert_eq!(data["api_url"], "https://eu1.data.cloud.hpe.com");
        assert_eq!(secret.metadata.name.as_deref(), Some("array-reports-token"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    }

    #[test]
    fn renamed_keys_are_used_and_empty_keys_left_out() {
        let mut target = TargetSpec {
            name: Some("custom".into()),
            r#type: Some("dscc.io/token".into()),
            ..TargetSpec::default()
        };
        target.keys.access_token = "TOKEN".into();
        target.keys.authorization = "".into();
        target.keys.api_url = "".into();
        let secret = build(&credential(target), &token(), "sha256:fp", None, None);
        let data = string_data(&secret);
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["TOKEN", "expires_at", "token_type"]
        );
        assert_eq!(secret.metadata.name.as_deref(), Some("custom"));
        assert_eq!(secret.type_.as_deref(), Some("dscc.io/token"));
    }

    #[test]
    fn carries_the_operator_labels_the_user_labels_and_a_controller_owner_reference() {
        let target = TargetSpec {
            labels: [("team".to_string(), "storage".to_string())].into(),
            annotations: [("note".to_string(), "x".to_string())].into(),
            ..TargetSpec::default()
        };
        let secret = build(&credential(target), &token(), "sha256:fp", Some("r1"), None);
        let labels = secret.metadata.labels.clone().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], "dscc-token-operator");
        assert_eq!(labels[CREDENTIAL_LABEL], "array-reports");
        assert_eq!(labels["team"], "storage");
        let annotations = secret.metadata.annotations.clone().unwrap();
        assert_eq!(annotations["note"], "x");
        assert_eq!(annotations[REFRESH_ANSWERED], "r1");
        let owner = &secret.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(owner.kind, "DsccCredential");
        assert_eq!(owner.api_version, "dscc.io/v1alpha1");
        assert_eq!(owner.uid, "5b1c-uid");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn reads_back_the_record_it_wrote() {
        let credential = credential(TargetSpec::default());
        let secret = build(&credential, &token(), "sha256:fp", Some("r1"), None);
        let TargetState::Owned(Some(record)) = observe(Some(&secret), &credential) else {
            panic!("our own Secret must read back as owned with a record");
        };
        assert_eq!(record.issued_at, token().issued_at);
        assert_eq!(record.expires_at, token().expires_at);
        assert_eq!(record.spec_hash, credential.spec.issuance_hash());
        assert_eq!(record.credentials_fingerprint, "sha256:fp");
        assert_eq!(record.refresh_requested_at.as_deref(), Some("r1"));
        assert!(record.data_intact);
        assert_eq!(record.verification, None);
    }

    #[test]
    fn reads_back_what_the_dscc_api_said_about_the_token() {
        let credential = credential(TargetSpec::default());
        let verification = Some(Verification::Forbidden);
        let secret = build(&credential, &token(), "sha256:fp", None, verification);
        assert!(matches!(
            observe(Some(&secret), &credential),
            TargetState::Owned(Some(r)) if r.verification == verification
        ));
    }

    #[test]
    fn notices_edited_token_data() {
        let credential = credential(TargetSpec::default());
        let mut secret = build(&credential, &token(), "sha256:fp", None, None);
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("access_token".into(), ByteString(b"tampered".to_vec()));
        let TargetState::Owned(Some(record)) = observe(Some(&secret), &credential) else {
            panic!("still ours");
        };
        assert!(!record.data_intact);
    }

    #[test]
    fn an_extra_key_added_by_someone_else_is_not_an_edit() {
        let credential = credential(TargetSpec::default());
        let mut secret = build(&credential, &token(), "sha256:fp", None, None);
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        assert!(
            matches!(observe(Some(&secret), &credential), TargetState::Owned(Some(r)) if r.data_intact)
        );
    }

    #[test]
    fn a_secret_without_our_controller_reference_is_foreign() {
        let credential = credential(TargetSpec::default());
        let mut secret = build(&credential, &token(), "sha256:fp", None, None);
        secret.metadata.owner_references = None;
        assert!(matches!(
            observe(Some(&secret), &credential),
            TargetState::Foreign { .. }
        ));
        assert_eq!(observe(None, &credential), TargetState::Missing);
    }

    #[test]
    fn the_fingerprint_changes_with_the_secret_and_does_not_contain_it() {
        let a = ClientCredentials {
            client_id: "id".into(),
            client_secret: ClientSecret::new("s3cret-value".into()),
        };
        let b = ClientCredentials {
            client_id: "id".into(),
            client_secret: ClientSecret::new("s3cret-valuf".into()),
        };
        assert_ne!(credentials_fingerprint(&a), credentials_fingerprint(&b));
        assert!(!credentials_fingerprint(&a).contains("s3cret"));
    }
}
