//! The Secrets the operator writes: the target Secret that workloads read, and the
//! operator-only Secret that keeps a refresh token. Building them, and reading their
//! bookkeeping back.
//!
//! Besides the token keys the user configured, the target Secret carries bookkeeping
//! annotations (when the token was issued and expires, which spec, client and grant it came
//! from). They make the decision restart-safe: a new operator process reads them and knows
//! the token is still good. `dscc.io/data-hash` seals the token data and the bookkeeping
//! together, so an edit of either (an `expires-at` moved into the future, say) reads as an
//! edited Secret and is repaired with a new token.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::api::{CREDENTIAL_LABEL, DsccCredential, MANAGED_BY_LABEL, MANAGER, TargetKeys};
use crate::token::ClientCredentials;
use crate::verify::Verification;

/// Annotation: when the token was issued (RFC 3339).
pub const ISSUED_AT: &str = "dscc.io/issued-at";
/// Annotation: when the token expires (RFC 3339).
pub const EXPIRES_AT: &str = "dscc.io/expires-at";
/// Annotation: the issuance hash of the spec the token was issued for.
pub const SPEC_HASH: &str = "dscc.io/spec-hash";
/// Annotation: one-way fingerprint of the client credentials the token came from.
pub const CREDENTIALS_HASH: &str = "dscc.io/credentials-hash";
/// Annotation: hash of the token data and the bookkeeping as written, to notice edits.
pub const DATA_HASH: &str = "dscc.io/data-hash";
/// Annotation: the manual refresh request this token answered.
pub const REFRESH_ANSWERED: &str = "dscc.io/refresh-requested-at";
/// Annotation: what the DSCC API said about the token (with `spec.verify`).
pub const VERIFIED: &str = "dscc.io/verified";
/// Annotation: the grant that produced the token.
pub const GRANT: &str = "dscc.io/grant";
/// Annotation: the hash of the subject token a token exchange was made with.
pub const SUBJECT_TOKEN_HASH: &str = "dscc.io/subject-token-hash";
/// Annotation (refresh-token Secret): the data hash of the token it came with.
pub const REFRESH_FOR: &str = "dscc.io/refresh-for";
/// Key of the refresh token in the refresh-token Secret.
pub const REFRESH_TOKEN_KEY: &str = "refresh_token";

/// The bookkeeping annotations, in the order the seal covers them.
const SEALED: [&str; 8] = [
    ISSUED_AT,
    EXPIRES_AT,
    SPEC_HASH,
    CREDENTIALS_HASH,
    REFRESH_ANSWERED,
    VERIFIED,
    GRANT,
    SUBJECT_TOKEN_HASH,
];

/// Lifetimes beyond this are implausible bookkeeping, not tokens.
const MAX_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 366 * 10);

/// The bookkeeping the operator writes on the target Secret with each token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    /// When the token was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The issuance hash of the spec it was issued for.
    pub spec_hash: String,
    /// Fingerprint of the client credentials it was issued with ("" for none).
    pub credentials_fingerprint: String,
    /// The manual refresh request it answered, if any.
    pub refresh_requested_at: Option<String>,
    /// The seal: a one-way hash of the token data and the bookkeeping as written. It tells
    /// two tokens apart, even two issued in the same second.
    pub token_hash: String,
    /// What the DSCC API said about the token, when `spec.verify` is on.
    pub verification: Option<Verification>,
    /// The grant that produced it.
    pub grant: Option<String>,
    /// The hash of the subject token of a token exchange.
    pub subject_token_hash: Option<String>,
}

/// A one-way fingerprint of a client id and secret, safe to store and compare.
pub fn credentials_fingerprint(credentials: &ClientCredentials) -> String {
    let digest = Sha256::new()
        .chain_update(credentials.client_id.as_bytes())
        .chain_update([0u8])
        .chain_update(credentials.client_secret.expose_secret().as_bytes())
        .finalize();
    format!("sha256:{}", hex::encode(&digest[..16]))
}

/// What a new target Secret is made of.
pub struct NewToken<'a> {
    /// The access token.
    pub access_token: &'a SecretString,
    /// Its type as the endpoint sent it.
    pub token_type: &'a str,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The client fingerprint ("" for none).
    pub credentials_fingerprint: &'a str,
    /// The manual refresh request it answers.
    pub refresh_answered: Option<&'a str>,
    /// What the DSCC API said about it.
    pub verification: Option<Verification>,
    /// The grant that produced it.
    pub grant: &'a str,
    /// The subject token hash of an exchange.
    pub subject_token_hash: Option<&'a str>,
}

/// The values written under the configured keys, in key order; keys set to "" are left out.
fn token_data(
    keys: &TargetKeys,
    token: &NewToken<'_>,
    api_url: Option<&str>,
) -> BTreeMap<String, String> {
    let secret = token.access_token.expose_secret();
    let entries = [
        (&keys.access_token, Some(secret.to_owned())),
        (&keys.token_type, Some(token.token_type.to_owned())),
        (&keys.expires_at, Some(token.expires_at.to_string())),
        (&keys.authorization, Some(format!("Bearer {secret}"))),
        (&keys.api_url, api_url.map(str::to_owned)),
    ];
    entries
        .into_iter()
        .filter(|(key, _)| !key.is_empty())
        .filter_map(|(key, value)| value.map(|v| (key.clone(), v)))
        .collect()
}

/// The seal over the configured keys and their values (missing keys included) and the
/// bookkeeping annotations.
fn seal<'a>(
    keys: &TargetKeys,
    lookup: impl Fn(&str) -> Option<&'a [u8]>,
    annotations: &BTreeMap<String, String>,
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |name: &str, value: Option<&[u8]>| {
        hasher.update(name.as_bytes());
        match value {
            Some(value) => {
                hasher.update([1u8]);
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value);
            }
            None => hasher.update([0u8]),
        }
    };
    for key in managed_keys(keys) {
        field(key, lookup(key));
    }
    for name in SEALED {
        field(name, annotations.get(name).map(|v| v.as_bytes()));
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

fn metadata(
    credential: &DsccCredential,
    name: String,
    extra_labels: &BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut labels = extra_labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    labels.insert(CREDENTIAL_LABEL.into(), credential.label_value());
    ObjectMeta {
        name: Some(name),
        namespace: credential.metadata.namespace.clone(),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: owner_reference(credential).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Builds the target Secret holding `token` for `credential`.
pub fn build(credential: &DsccCredential, token: &NewToken<'_>) -> Secret {
    let spec = &credential.spec;
    let data = token_data(&spec.target.keys, token, spec.dscc_api_url());
    let mut annotations = spec.target.annotations.clone();
    annotations.insert(ISSUED_AT.into(), token.issued_at.to_string());
    annotations.insert(EXPIRES_AT.into(), token.expires_at.to_string());
    annotations.insert(SPEC_HASH.into(), spec.issuance_hash());
    annotations.insert(
        CREDENTIALS_HASH.into(),
        token.credentials_fingerprint.into(),
    );
    annotations.insert(GRANT.into(), token.grant.into());
    if let Some(value) = token.refresh_answered {
        annotations.insert(REFRESH_ANSWERED.into(), value.into());
    }
    if let Some(verification) = token.verification {
        annotations.insert(VERIFIED.into(), verification.as_str().into());
    }
    if let Some(hash) = token.subject_token_hash {
        annotations.insert(SUBJECT_TOKEN_HASH.into(), hash.into());
    }
    let hash = seal(
        &spec.target.keys,
        |k| data.get(k).map(|v| v.as_bytes()),
        &annotations,
    );
    annotations.insert(DATA_HASH.into(), hash);
    Secret {
        metadata: metadata(
            credential,
            credential.target_name(),
            &spec.target.labels,
            annotations,
        ),
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

/// Builds the operator-only Secret that keeps the refresh token of the token sealed by
/// `for_token` (the target Secret's data hash). Workloads never read it.
pub fn build_refresh(
    credential: &DsccCredential,
    refresh_token: &SecretString,
    expires_at: Option<Timestamp>,
    for_token: &str,
) -> Secret {
    let mut annotations = BTreeMap::new();
    annotations.insert(REFRESH_FOR.into(), for_token.to_owned());
    if let Some(expires_at) = expires_at {
        annotations.insert(EXPIRES_AT.into(), expires_at.to_string());
    }
    let data = BTreeMap::from([(
        REFRESH_TOKEN_KEY.to_owned(),
        ByteString(refresh_token.expose_secret().as_bytes().to_vec()),
    )]);
    Secret {
        metadata: metadata(
            credential,
            credential.refresh_secret_name(),
            &BTreeMap::new(),
            annotations,
        ),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The refresh token in a refresh-token Secret.
pub fn refresh_token_value(secret: &Secret) -> Option<SecretString> {
    let value = secret.data.as_ref()?.get(REFRESH_TOKEN_KEY)?;
    let text = std::str::from_utf8(&value.0).ok()?.trim();
    (!text.is_empty()).then(|| SecretString::from(text.to_owned()))
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

/// The bookkeeping of a target Secret, or `None` when it is missing, unreadable, implausible
/// or (when the data is at hand) no longer matches its seal. Without `secret` (metadata only)
/// the seal is taken as it stands: the caller knows the Secret is unchanged since the
/// operator wrote it.
pub fn read_record(
    annotations: &BTreeMap<String, String>,
    secret: Option<&Secret>,
    keys: &TargetKeys,
) -> Option<TokenRecord> {
    let timestamp = |key: &str| annotations.get(key)?.parse::<Timestamp>().ok();
    let issued_at = timestamp(ISSUED_AT)?;
    let expires_at = timestamp(EXPIRES_AT)?;
    // Bookkeeping that no token could have is an edit, not a token: arithmetic on it must
    // never run out of range.
    let lifetime = expires_at.duration_since(issued_at);
    if lifetime <= SignedDuration::ZERO || lifetime > MAX_LIFETIME {
        return None;
    }
    let token_hash = annotations.get(DATA_HASH)?.clone();
    if let Some(secret) = secret {
        let data = secret.data.as_ref();
        let actual = seal(keys, |k| data?.get(k).map(|v| v.0.as_slice()), annotations);
        if actual != token_hash {
            return None;
        }
    }
    Some(TokenRecord {
        issued_at,
        expires_at,
        spec_hash: annotations.get(SPEC_HASH)?.clone(),
        credentials_fingerprint: annotations.get(CREDENTIALS_HASH)?.clone(),
        refresh_requested_at: annotations.get(REFRESH_ANSWERED).cloned(),
        token_hash,
        verification: annotations
            .get(VERIFIED)
            .and_then(|v| Verification::parse(v)),
        grant: annotations.get(GRANT).cloned(),
        subject_token_hash: annotations.get(SUBJECT_TOKEN_HASH).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DsccCredentialSpec, TargetSpec};

    pub(crate) fn credential(target: TargetSpec) -> DsccCredential {
        let mut spec: DsccCredentialSpec = serde_json::from_value(serde_json::json!({
            "clientSecretRef": {"name": "greenlake-client"},
            "region": "eu1",
        }))
        .expect("spec");
        spec.target = target;
        let mut credential = DsccCredential::new("array-reports", spec);
        credential.metadata.namespace = Some("storage".into());
        credential.metadata.uid = Some("5b1c-uid".into());
        credential.metadata.generation = Some(3);
        credential
    }

    fn access_token() -> SecretString {
        SecretString::from("eyJ.secret-token.sig")
    }

    fn token(access_token: &SecretString) -> NewToken<'_> {
        NewToken {
            access_token,
            token_type: "bearer",
            issued_at: "2026-11-25T10:00:00Z".parse().unwrap(),
            expires_at: "2026-11-25T12:00:00Z".parse().unwrap(),
            credentials_fingerprint: "sha256:fp",
            refresh_answered: None,
            verification: None,
            grant: "ClientCredentials",
            subject_token_hash: None,
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

    fn read_back(secret: &Secret, credential: &DsccCredential) -> Option<TokenRecord> {
        read_record(
            secret.metadata.annotations.as_ref().unwrap(),
            Some(secret),
            &credential.spec.target.keys,
        )
    }

    #[test]
    fn writes_every_default_key_with_a_canonical_authorization_header() {
        let t = access_token();
        let secret = build(&credential(TargetSpec::default()), &token(&t));
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
            r#type: Some("example.com/token".into()),
            ..TargetSpec::default()
        };
        target.keys.access_token = "TOKEN".into();
        target.keys.authorization = "".into();
        target.keys.api_url = "".into();
        let t = access_token();
        let secret = build(&credential(target), &token(&t));
        assert_eq!(
            string_data(&secret).keys().collect::<Vec<_>>(),
            ["TOKEN", "expires_at", "token_type"]
        );
        assert_eq!(secret.metadata.name.as_deref(), Some("custom"));
        assert_eq!(secret.type_.as_deref(), Some("example.com/token"));
    }

    #[test]
    fn carries_the_operator_labels_the_user_labels_and_a_controller_owner_reference() {
        let target = TargetSpec {
            labels: [("team".to_string(), "storage".to_string())].into(),
            annotations: [("note".to_string(), "x".to_string())].into(),
            ..TargetSpec::default()
        };
        let t = access_token();
        let mut new = token(&t);
        new.refresh_answered = Some("r1");
        let secret = build(&credential(target), &new);
        let labels = secret.metadata.labels.clone().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], "dscc-token-operator");
        assert_eq!(labels[CREDENTIAL_LABEL], "array-reports");
        assert_eq!(labels["team"], "storage");
        let annotations = secret.metadata.annotations.clone().unwrap();
        assert_eq!(annotations["note"], "x");
        assert_eq!(annotations[REFRESH_ANSWERED], "r1");
        let owner = &secret.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("DsccCredential", "5b1c-uid")
        );
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn a_name_too_long_for_a_label_value_is_shortened_with_a_hash() {
        let mut long = credential(TargetSpec::default());
        long.metadata.name = Some("a".repeat(70));
        let t = access_token();
        let secret = build(&long, &token(&t));
        let value = &secret.metadata.labels.as_ref().unwrap()[CREDENTIAL_LABEL];
        assert_eq!(value.len(), 63, "{value}");
        let mut other = long.clone();
        other.metadata.name = Some(format!("{}b", "a".repeat(69)));
        assert_ne!(
            other.label_value(),
            long.label_value(),
            "distinct names stay distinct"
        );
    }

    #[test]
    fn reads_back_the_record_it_wrote() {
        let credential = credential(TargetSpec::default());
        let t = access_token();
        let mut new = token(&t);
        new.refresh_answered = Some("r1");
        new.verification = Some(Verification::Forbidden);
        let secret = build(&credential, &new);
        let record = read_back(&secret, &credential).expect("our own bookkeeping");
        assert_eq!(record.issued_at, new.issued_at);
        assert_eq!(record.expires_at, new.expires_at);
        assert_eq!(record.spec_hash, credential.spec.issuance_hash());
        assert_eq!(record.credentials_fingerprint, "sha256:fp");
        assert_eq!(record.refresh_requested_at.as_deref(), Some("r1"));
        assert_eq!(record.verification, Some(Verification::Forbidden));
        assert_eq!(record.grant.as_deref(), Some("ClientCredentials"));
    }

    #[test]
    fn edited_token_data_breaks_the_seal() {
        let credential = credential(TargetSpec::default());
        let t = access_token();
        let mut secret = build(&credential, &token(&t));
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("access_token".into(), ByteString(b"tampered".to_vec()));
        assert_eq!(read_back(&secret, &credential), None);
    }

    #[test]
    fn edited_bookkeeping_breaks_the_seal() {
        let credential = credential(TargetSpec::default());
        let t = access_token();
        for (annotation, value) in [
            (EXPIRES_AT, "2099-01-01T00:00:00Z"),
            (ISSUED_AT, "2026-11-25T11:59:00Z"),
            (CREDENTIALS_HASH, "sha256:other"),
            (SPEC_HASH, "sha256:other"),
        ] {
            let mut secret = build(&credential, &token(&t));
            secret
                .metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(annotation.into(), value.into());
            assert_eq!(read_back(&secret, &credential), None, "{annotation} edited");
        }
    }

    #[test]
    fn implausible_bookkeeping_is_refused_without_arithmetic_overflow() {
        let credential = credential(TargetSpec::default());
        for (issued, expires) in [
            ("-009999-01-01T00:00:00Z", "2026-11-25T12:00:00Z"),
            ("2026-11-25T12:00:00Z", "2026-11-25T10:00:00Z"),
            ("2026-11-25T12:00:00Z", "9999-12-31T00:00:00Z"),
        ] {
            let annotations = BTreeMap::from([
                (ISSUED_AT.to_owned(), issued.to_owned()),
                (EXPIRES_AT.to_owned(), expires.to_owned()),
                (SPEC_HASH.to_owned(), "x".to_owned()),
                (CREDENTIALS_HASH.to_owned(), "x".to_owned()),
                (DATA_HASH.to_owned(), "x".to_owned()),
            ]);
            assert_eq!(
                read_record(&annotations, None, &credential.spec.target.keys),
                None,
                "{issued} .. {expires}"
            );
        }
    }

    #[test]
    fn an_extra_key_added_by_someone_else_is_not_an_edit() {
        let credential = credential(TargetSpec::default());
        let t = access_token();
        let mut secret = build(&credential, &token(&t));
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        assert!(read_back(&secret, &credential).is_some());
    }

    #[test]
    fn the_refresh_token_secret_is_owned_labelled_and_read_back() {
        let credential = credential(TargetSpec::default());
        let refresh = SecretString::from("rt-value");
        let secret = build_refresh(&credential, &refresh, None, "sha256:tok");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("array-reports-refresh")
        );
        assert!(is_controlled_by(&secret, &credential));
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
            "dscc-token-operator"
        );
        assert_eq!(
            refresh_token_value(&secret)
                .map(|t| t.expose_secret().to_owned())
                .as_deref(),
            Some("rt-value")
        );
    }

    #[test]
    fn the_fingerprint_changes_with_the_secret_and_does_not_contain_it() {
        let fingerprint = |secret: &str| {
            credentials_fingerprint(&ClientCredentials {
                client_id: "id".into(),
                client_secret: SecretString::from(secret.to_owned()),
            })
        };
        assert_ne!(fingerprint("s3cret-value"), fingerprint("s3cret-valuf"));
        assert!(!fingerprint("s3cret-value").contains("s3cret"));
    }
}
