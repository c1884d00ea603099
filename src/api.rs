//! The `DsccCredential` API (`dscc.io/v1alpha1`): types, defaults and CEL rules.
//!
//! The CRD under `crds/` is generated from these types (`dscc-token-operator crd`), so every
//! doc comment here becomes a field description in `kubectl explain`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "dscc.io";
/// Annotation whose new value requests an immediate new token.
pub const REFRESH_ANNOTATION: &str = "dscc.io/refresh-requested-at";
/// Label naming the credential that owns a target Secret.
pub const CREDENTIAL_LABEL: &str = "dscc.io/credential";
/// Standard label marking objects this operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] and the field manager name for server-side apply.
pub const MANAGER: &str = "dscc-token-operator";
/// The GreenLake SSO token endpoint, the default `tokenUrl`.
pub const DEFAULT_TOKEN_URL: &str = "https://sso.common.cloud.hpe.com/as/token.oauth2";

// CEL building blocks. Kept as constants so that the same pattern is used for every field.
const KEY_RULE: &str = "self.size() <= 253 && self.matches('^[-._a-zA-Z0-9]+$')";
const DNS_SUBDOMAIN_RULE: &str = "self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
/// A label or annotation key: an optional DNS-subdomain prefix and a name of up to 63
/// characters (Kubernetes' qualified names).
const QUALIFIED_NAME_RULE: &str = "self.all(k, k.size() <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && (!k.contains('/') || k.split('/')[0].size() <= 253))";
const DURATION_RULE: &str =
    "self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$') && duration(self) > duration('0s')";

/// A request for an HPE GreenLake / DSCC API access token kept fresh in a Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dscc.io",
    version = "v1alpha1",
    kind = "DsccCredential",
    plural = "dscccredentials",
    singular = "dscccredential",
    shortname = "dscc",
    category = "all",
    namespaced,
    status = "DsccCredentialStatus",
    doc = "DsccCredential exchanges an OAuth 2.0 client id and secret for an HPE GreenLake / DSCC API access token, keeps it in a Secret and renews it before it expires.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the target Secret holds a valid token"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Why the credential is (not) ready", priority = 1),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName", description = "The Secret holding the token"),
    // Future times as "date" columns print as "<invalid>" (kubectl shows dates as ages), so
    // the expiry and the renewal are shown as RFC 3339 times.
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt", description = "When the current token expires"),
    printcolumn(name = "Renewal", type_ = "string", json_path = ".status.renewalTime", description = "When the token will be renewed"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.target) && has(self.spec.target.name) || self.metadata.name.size() <= 247").message("metadata.name is too long for the default target Secret name <name>-token: set spec.target.name")
)]
#[x_kube(
    validation = Rule::new("!(has(self.refreshBefore) && has(self.refreshBeforePercentage))").message("set at most one of refreshBefore and refreshBeforePercentage"),
    validation = Rule::new("!has(self.verify) || !self.verify || has(self.region) || has(self.apiUrl)").message("verify needs region or apiUrl: the DSCC API to probe"),
    validation = Rule::new("!has(self.rolloutRestartTargets) || self.rolloutRestartTargets.all(t, self.rolloutRestartTargets.exists_one(u, u.kind == t.kind && u.name == t.name))").message("rolloutRestartTargets must not list a workload twice"),
    validation = Rule::new("has(self.clientSecretRef) || has(self.tokenExchange)").message("set clientSecretRef (the API client), or tokenExchange to get the token by exchanging another DsccCredential's token")
)]
#[serde(rename_all = "camelCase")]
pub struct DsccCredentialSpec {
    /// The Secret, in the same namespace, that holds the OAuth 2.0 client id and client secret
    /// of a GreenLake API client. Required unless tokenExchange is set; with tokenExchange it
    /// authenticates the exchange (Keycloak requires that, GreenLake's MSP exchange does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<ClientSecretRef>,

    /// Get the token by RFC 8693 token exchange at tokenUrl, with the token of another
    /// DsccCredential in the same namespace as the subject token: how a GreenLake managed
    /// service provider gets tenant-workspace tokens from its MSP-workspace token
    /// (tokenUrl https://global.api.greenlake.hpe.com/authorization/v2/oauth2/<TENANT_WORKSPACE_ID>/token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,

    /// The OAuth 2.0 token endpoint. Defaults to the GreenLake SSO endpoint; the
    /// workspace-scoped endpoint is
    /// https://global.api.greenlake.hpe.com/authorization/v2/oauth2/<WORKSPACE_ID>/token.
    /// Plain http is refused unless the operator runs with --allow-insecure-token-url.
    #[serde(default = "default_token_url")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http') && url(self).getHostname() != ''").message("tokenUrl must be an absolute http(s) URL, for example https://sso.common.cloud.hpe.com/as/token.oauth2"))]
    pub token_url: String,

    /// How the client authenticates to the token endpoint: ClientSecretPost sends the id and
    /// secret in the form body, ClientSecretBasic in an HTTP Basic Authorization header.
    #[serde(default)]
    pub auth_method: AuthMethod,

    /// OAuth 2.0 scopes to request; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[!#-\\\\[\\\\]-~]+$'))").message("each scope must be a non-empty RFC 6749 scope token: printable ASCII without spaces, quotes or backslashes"))]
    pub scopes: Vec<String>,

    /// DSCC region whose API URL is written into the target Secret (key apiUrl), for example
    /// us1 for https://us1.data.cloud.hpe.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,

    /// Renew this long before the token expires, as a duration such as 20m or 1h30m. Longer
    /// than the token lifetime falls back to the default. Default: when a third of the
    /// lifetime remains. Exclusive with refreshBeforePercentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("refreshBefore must be a positive duration such as 20m, 90s or 1h30m"))]
    pub refresh_before: Option<String>,

    /// Renew when this percentage of the token lifetime remains (1-99). Exclusive with
    /// refreshBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 99").message("refreshBeforePercentage must be between 1 and 99"))]
    pub refresh_before_percentage: Option<i32>,

    /// The Secret the token is written to.
    #[serde(default)]
    pub target: TargetSpec,

    /// DSCC API base URL, for private endpoints and tests; overrides region for the apiUrl
    /// key and for verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http') && url(self).getHostname() != ''").message("apiUrl must be an absolute http(s) URL, for example https://us1.data.cloud.hpe.com"))]
    pub api_url: Option<String>,

    /// Probe the DSCC API (GET /api/v1/audit-events?limit=1) with each new token before it
    /// replaces the old one: 401 keeps the old token and reports VerifyFailed; 403 means the
    /// token is valid but lacks that permission. Needs region or apiUrl.
    #[serde(default)]
    pub verify: bool,

    /// Workloads in the same namespace that read the token only at start: after each new
    /// token, their pod template annotation dscc.io/restartedAt is set to the token's issue
    /// time, which rolls them out once per token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,

    /// Stop renewing. The current token stays in place until it expires.
    #[serde(default)]
    pub suspend: bool,
}

/// A workload to restart after each new token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: WorkloadKind,
    /// Its name, in the credential's namespace.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message("rolloutRestartTargets[].name must be a valid object name (a DNS subdomain)"))]
    pub name: String,
}

/// Kinds of workload that can be restarted.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// Where a token exchange takes its subject token from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchange {
    /// The DsccCredential in the same namespace whose token is the subject token (for an MSP:
    /// the credential of the MSP workspace's API client).
    pub subject_credential_ref: SubjectCredentialRef,
    /// The RFC 8693 audience parameter, if the token endpoint needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.matches('^[!-~]+$')").message("tokenExchange.audience must be printable ASCII without spaces"))]
    pub audience: Option<String>,
}

/// A DsccCredential in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubjectCredentialRef {
    /// Its metadata.name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message("tokenExchange.subjectCredentialRef.name must be a valid object name (a DNS subdomain)"))]
    pub name: String,
}

impl DsccCredentialSpec {
    /// A fingerprint of the fields a token and its Secret are made from. A change to any of
    /// them asks for a new token; `suspend`, the refresh timing and the rollout restart
    /// targets are left out, so toggling `suspend` or tuning `refreshBefore` issues nothing.
    pub fn issuance_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let relevant = serde_json::json!({
            "clientSecretRef": self.client_secret_ref,
            "tokenExchange": self.token_exchange,
            "tokenUrl": self.token_url,
            "authMethod": self.auth_method,
            "scopes": self.scopes,
            "region": self.region,
            "apiUrl": self.api_url,
            "verify": self.verify,
            "target": self.target,
        });
        let digest = Sha256::digest(relevant.to_string().as_bytes());
        format!("sha256:{}", hex::encode(&digest[..16]))
    }

    /// The DSCC API base URL: `apiUrl`, else the region's.
    pub fn dscc_api_url(&self) -> Option<&str> {
        self.api_url
            .as_deref()
            .or_else(|| self.region.map(Region::api_url))
    }
}

fn default_token_url() -> String {
    DEFAULT_TOKEN_URL.to_owned()
}

/// Where the client id and client secret are read from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretRef {
    /// Name of a Secret in the credential's namespace.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message("clientSecretRef.name must be a valid Secret name (a DNS subdomain)"))]
    pub name: String,

    /// Key of the client id in the Secret.
    #[serde(default = "default_client_id_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(KEY_RULE).message("clientIdKey must be a non-empty Secret key: letters, digits, '-', '_' or '.'"))]
    pub client_id_key: String,

    /// Key of the client secret in the Secret.
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(KEY_RULE).message("clientSecretKey must be a non-empty Secret key: letters, digits, '-', '_' or '.'"))]
    pub client_secret_key: String,
}

fn default_client_id_key() -> String {
    "client_id".to_owned()
}

fn default_client_secret_key() -> String {
    "client_secret".to_owned()
}

/// Client authentication method at the token endpoint (RFC 6749 section 2.3.1).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMethod {
    /// client_id and client_secret in the form body (client_secret_post).
    #[default]
    ClientSecretPost,
    /// HTTP Basic authentication (client_secret_basic).
    ClientSecretBasic,
}

/// DSCC regional API hosts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// https://us1.data.cloud.hpe.com
    Us1,
    /// https://eu1.data.cloud.hpe.com
    Eu1,
    /// https://jp1.data.cloud.hpe.com
    Jp1,
    /// https://uk1.data.cloud.hpe.com
    Uk1,
    /// https://uae1.data.cloud.hpe.com
    Uae1,
}

impl Region {
    /// The DSCC API base URL of the region.
    pub fn api_url(self) -> &'static str {
        match self {
            Region::Us1 => "https://us1.data.cloud.hpe.com",
            Region::Eu1 => "https://eu1.data.cloud.hpe.com",
            Region::Jp1 => "https://jp1.data.cloud.hpe.com",
            Region::Uk1 => "https://uk1.data.cloud.hpe.com",
            Region::Uae1 => "https://uae1.data.cloud.hpe.com",
        }
    }
}

/// The Secret the operator writes the token into.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Name of the Secret. Default: <metadata.name>-token. The operator never takes over a
    /// Secret it did not create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN_RULE).message("target.name must be a valid Secret name (a DNS subdomain)"))]
    pub name: Option<String>,

    /// Secret type. Default: Opaque. The built-in kubernetes.io/ types require keys the
    /// operator does not write, so only Opaque or a type of your own (such as
    /// example.com/dscc-token) is accepted. A change of type replaces the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self == 'Opaque' || (self.matches('^[A-Za-z0-9][-A-Za-z0-9_./]*$') && !self.startsWith('kubernetes.io/') && !self.startsWith('bootstrap.kubernetes.io/'))").message("target.type must be Opaque or a type of your own such as example.com/dscc-token: the kubernetes.io/ types need keys the operator does not write"))]
    pub r#type: Option<String>,

    /// Extra labels on the Secret. The labels app.kubernetes.io/managed-by and
    /// dscc.io/credential are the operator's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map")]
    #[x_kube(
        validation = Rule::new("!('app.kubernetes.io/managed-by' in self) && !('dscc.io/credential' in self)").message("target.labels must not set app.kubernetes.io/managed-by or dscc.io/credential: the operator owns them"),
        validation = Rule::new(QUALIFIED_NAME_RULE).message("target.labels keys must be qualified names: an optional DNS-subdomain prefix and '/', then up to 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit")
    )]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on the Secret. Annotations under dscc.io/ are the operator's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "annotation_map")]
    #[x_kube(
        validation = Rule::new("self.all(k, !k.startsWith('dscc.io/'))").message("target.annotations must not use the dscc.io/ prefix: the operator owns it"),
        validation = Rule::new(QUALIFIED_NAME_RULE).message("target.annotations keys must be qualified names: an optional DNS-subdomain prefix and '/', then up to 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit")
    )]
    pub annotations: BTreeMap<String, String>,

    /// Names of the keys written into the Secret; set a key to "" to leave it out.
    #[serde(default)]
    pub keys: TargetKeys,
}

/// The schema of `target.labels`: at most 64, each value a valid label value (checked by a
/// pattern, which costs the API server's CEL budget nothing).
fn label_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
        }
    })
}

/// The schema of `target.annotations`: at most 64 values of at most 4 KiB each.
fn annotation_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 4096}
    })
}

/// Key names in the target Secret. An empty name leaves that entry out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.accessToken != '' || self.authorization != ''").message("keys.accessToken and keys.authorization cannot both be empty: the token must be written somewhere"),
    validation = Rule::new("[self.accessToken, self.tokenType, self.expiresAt, self.authorization, self.apiUrl].filter(k, k != '').all(k, [self.accessToken, self.tokenType, self.expiresAt, self.authorization, self.apiUrl].filter(j, j == k).size() == 1)").message("target.keys must be distinct")
)]
pub struct TargetKeys {
    /// Key for the raw access token.
    #[serde(default = "default_access_token_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(OPTIONAL_KEY_RULE).message(OPTIONAL_KEY_MESSAGE))]
    pub access_token: String,
    /// Key for the token type as the endpoint sent it (usually Bearer).
    #[serde(default = "default_token_type_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(OPTIONAL_KEY_RULE).message(OPTIONAL_KEY_MESSAGE))]
    pub token_type: String,
    /// Key for the expiry time (RFC 3339).
    #[serde(default = "default_expires_at_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(OPTIONAL_KEY_RULE).message(OPTIONAL_KEY_MESSAGE))]
    pub expires_at: String,
    /// Key for a ready-made HTTP Authorization header value ("Bearer <token>").
    #[serde(default = "default_authorization_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(OPTIONAL_KEY_RULE).message(OPTIONAL_KEY_MESSAGE))]
    pub authorization: String,
    /// Key for the DSCC API base URL (only written when region or apiUrl is set).
    #[serde(default = "default_api_url_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(OPTIONAL_KEY_RULE).message(OPTIONAL_KEY_MESSAGE))]
    pub api_url: String,
}

const OPTIONAL_KEY_RULE: &str =
    "self == '' || (self.size() <= 253 && self.matches('^[-._a-zA-Z0-9]+$'))";
const OPTIONAL_KEY_MESSAGE: &str =
    "a Secret key may contain only letters, digits, '-', '_' and '.' (or be empty to omit it)";

impl Default for TargetKeys {
    fn default() -> Self {
        Self {
            access_token: default_access_token_key(),
            token_type: default_token_type_key(),
            expires_at: default_expires_at_key(),
            authorization: default_authorization_key(),
            api_url: default_api_url_key(),
        }
    }
}

fn default_access_token_key() -> String {
    "access_token".to_owned()
}
fn default_token_type_key() -> String {
    "token_type".to_owned()
}
fn default_expires_at_key() -> String {
    "expires_at".to_owned()
}
fn default_authorization_key() -> String {
    "authorization".to_owned()
}
fn default_api_url_key() -> String {
    "api_url".to_owned()
}

/// Observed state of a DsccCredential.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DsccCredentialStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled, following the kstatus conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Name of the Secret holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// When the current token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,

    /// When the current token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When the operator will request the next token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,

    /// Consecutive failed attempts since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: i32,

    /// When the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,

    /// The condition reason of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,

    /// What went wrong at the last failure and what to fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_message: Option<String>,

    /// When the next attempt after a failure is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Time>,

    /// What the last failed attempt was made from; a change to any of it retries at once
    /// (but never before retryAfterTime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_attempt: Option<AttemptInputs>,

    /// The token endpoint asked not to be called before this time (Retry-After); no request is
    /// made before it, whatever changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_time: Option<Time>,

    /// The grant that produced the current token: ClientCredentials, RefreshToken or
    /// TokenExchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,

    /// Credentials whose token request would be identical (same token URL, client, secret,
    /// authentication and scopes) share one token; this names the group (an opaque id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_group: Option<String>,

    /// The token each rollout restart target was last restarted for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_restarts: Vec<RolloutRestartRecord>,
}

/// A workload restarted for a token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartRecord {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
    /// The stamp of the token it was restarted for (the value of its dscc.io/restartedAt
    /// pod template annotation at that time).
    pub token: String,
}

/// The inputs an attempt was made from (none of them secret). A change of content counts,
/// not a new resourceVersion: a label added to the client Secret retries nothing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptInputs {
    /// The issuance hash of the spec (the fields a token is made from).
    #[serde(default)]
    pub spec_hash: String,
    /// One-way fingerprint of the client id and secret, if there was a client Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_fingerprint: Option<String>,
    /// Value of the dscc.io/refresh-requested-at annotation, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_requested_at: Option<String>,
    /// Hash of the subject token of a token exchange, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_token_hash: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// `text` if it has at most `max` characters, else its beginning, `-` and 10 hex digits of
/// its hash, `max` characters in all (distinct texts stay distinct).
fn shortened(text: &str, max: usize) -> String {
    use sha2::{Digest, Sha256};
    if text.len() <= max {
        return text.to_owned();
    }
    let hash = hex::encode(&Sha256::digest(text.as_bytes())[..5]);
    let keep = max - hash.len() - 1;
    let head = text[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

impl DsccCredential {
    /// Name of the target Secret: `spec.target.name`, else `<metadata.name>-token`.
    pub fn target_name(&self) -> String {
        match &self.spec.target.name {
            Some(name) => name.clone(),
            None => format!(
                "{}-token",
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The value of the `dscc.io/credential` label on the Secrets it owns: the name, or for
    /// names longer than a label value may be (63), a shortened name with a hash.
    pub fn label_value(&self) -> String {
        shortened(self.metadata.name.as_deref().unwrap_or_default(), 63)
    }

    /// Name of the operator-only Secret that keeps a refresh token: `<metadata.name>-refresh`,
    /// shortened with a hash when that would be longer than a Secret name may be.
    pub fn refresh_secret_name(&self) -> String {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let wanted = format!("{name}-refresh");
        if wanted.len() <= 253 {
            wanted
        } else {
            format!("{}-refresh", shortened(name, 245))
        }
    }

    /// `namespace/name`, for messages and logs.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DsccCredentialSpec {
        serde_json::from_value(serde_json::json!({"clientSecretRef": {"name": "client"}}))
            .expect("a minimal spec")
    }

    #[test]
    fn a_status_written_by_the_first_release_still_reads() {
        // The first release recorded resourceVersions in lastFailedAttempt.
        let credential: DsccCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "dscc.io/v1alpha1",
            "kind": "DsccCredential",
            "metadata": {"name": "reports", "namespace": "storage"},
            "spec": {"clientSecretRef": {"name": "client"}},
            "status": {
                "failedAttempts": 2,
                "lastFailureReason": "InvalidClientCredentials",
                "lastFailedAttempt": {"generation": 1, "clientSecretVersion": "4711"},
            },
        }))
        .expect("an old status deserializes");
        let status = credential.status.expect("status");
        assert_eq!(status.failed_attempts, 2);
        // An empty spec hash matches no spec: the next look retries once, as after a change.
        assert_eq!(status.last_failed_attempt, Some(AttemptInputs::default()));
    }

    #[test]
    fn the_issuance_hash_ignores_suspend_refresh_timing_and_restart_targets() {
        let base = spec().issuance_hash();
        let mut edited = spec();
        edited.suspend = true;
        edited.refresh_before = Some("20m".into());
        edited.rollout_restart_targets = vec![RolloutRestartTarget {
            kind: WorkloadKind::Deployment,
            name: "reporter".into(),
        }];
        assert_eq!(edited.issuance_hash(), base);
    }

    #[test]
    fn the_issuance_hash_changes_with_what_the_token_and_secret_are_made_from() {
        let base = spec().issuance_hash();
        let mut scopes = spec();
        scopes.scopes = vec!["read".into()];
        let mut keys = spec();
        keys.target.keys.access_token = "TOKEN".into();
        let mut url = spec();
        url.token_url =
            "https://global.api.greenlake.hpe.com/authorization/v2/oauth2/w/token".into();
        for changed in [scopes, keys, url] {
            assert_ne!(changed.issuance_hash(), base);
        }
    }
}
