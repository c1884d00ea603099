//! `renew`: a manual refresh request, like `cmctl renew`. The annotation
//! `dscc.io/refresh-requested-at` gets the current time; the operator answers a new value with
//! one token request.

use clap::Args;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::{KubeArgs, Scope};
use crate::api::{DsccCredential, REFRESH_ANNOTATION};

/// What to renew.
#[derive(Args, Clone, Debug)]
pub struct RenewArgs {
    /// The DsccCredential to renew.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub name: Option<String>,
    /// Renew every DsccCredential of the namespace (of all namespaces with -A).
    #[arg(long)]
    pub all: bool,
}

/// The value of the refresh annotation for a request made at `now`: RFC 3339 with
/// milliseconds, so that two requests in the same second are still two requests.
pub fn request_value(now: Timestamp) -> String {
    now.round(Unit::Millisecond)
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The merge patch that requests a new token.
pub fn request_patch(value: &str) -> Value {
    json!({"metadata": {"annotations": {REFRESH_ANNOTATION: value}}})
}

/// What `renew` says it did for one credential.
pub fn describe_request(credential: &DsccCredential, value: &str) -> String {
    let mut line = format!(
        "Requested a new token for DsccCredential {} ({REFRESH_ANNOTATION}={value})",
        credential.key()
    );
    if credential.spec.suspend {
        line.push_str(
            "\n  note: it is suspended (spec.suspend): no token is issued until it is resumed",
        );
    }
    line
}

/// Runs `renew`.
pub async fn run(kube: &KubeArgs, args: &RenewArgs) -> anyhow::Result<()> {
    let (client, scope) = kube.connect().await?;
    let credentials = match (&args.name, &scope) {
        (Some(_), Scope::All) => {
            anyhow::bail!("a credential cannot be renewed by name across all namespaces: use -n")
        }
        (Some(name), Scope::Namespace(namespace)) => {
            let api: Api<DsccCredential> = Api::namespaced(client.clone(), namespace);
            match api.get_opt(name).await? {
                Some(credential) => vec![credential],
                None => anyhow::bail!("DsccCredential {namespace}/{name} not found"),
            }
        }
        (None, _) => {
            let api = credentials_api(&client, &scope);
            let list = api.list(&ListParams::default()).await?.items;
            if list.is_empty() {
                println!("{}", super::status::nothing_found(&scope));
                return Ok(());
            }
            list
        }
    };
    let mut failed = 0;
    for credential in &credentials {
        let value = request_value(Timestamp::now());
        let namespace = credential.namespace().unwrap_or_default();
        let api: Api<DsccCredential> = Api::namespaced(client.clone(), &namespace);
        match api
            .patch(
                &credential.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&request_patch(&value)),
            )
            .await
        {
            Ok(_) => println!("{}", describe_request(credential, &value)),
            Err(error) => {
                failed += 1;
                eprintln!(
                    "error: could not request a new token for {}: {error}",
                    credential.key()
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} renewals failed", credentials.len());
    }
    Ok(())
}

/// The credentials API of `scope`.
pub(crate) fn credentials_api(client: &Client, scope: &Scope) -> Api<DsccCredential> {
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(suspend: bool) -> DsccCredential {
        let mut spec: crate::api::DsccCredentialSpec =
            serde_json::from_value(json!({"clientSecretRef": {"name": "client"}})).expect("spec");
        spec.suspend = suspend;
        let mut credential = DsccCredential::new("reports", spec);
        credential.metadata.namespace = Some("storage".into());
        credential
    }

    #[test]
    fn the_request_is_an_rfc3339_time_that_differs_within_a_second() {
        let now: Timestamp = "2026-11-25T10:00:00.123456Z".parse().expect("time");
        let value = request_value(now);
        assert_eq!(value, "2026-11-25T10:00:00.123Z");
        assert_eq!(
            value.parse::<Timestamp>().ok(),
            now.round(Unit::Millisecond).ok()
        );
        let later = now + k8s_openapi::jiff::SignedDuration::from_millis(200);
        assert_ne!(request_value(later), value);
    }

    #[test]
    fn the_patch_sets_only_the_refresh_annotation() {
        assert_eq!(
            request_patch("2026-11-25T10:00:00.000Z"),
            json!({"metadata": {"annotations": {"dscc.io/refresh-requested-at": "2026-11-25T10:00:00.000Z"}}})
        );
    }

    #[test]
    fn renew_says_what_it_did_and_warns_about_a_suspended_credential() {
        let line = describe_request(&credential(false), "T");
        assert_eq!(
            line,
            "Requested a new token for DsccCredential storage/reports (dscc.io/refresh-requested-at=T)"
        );
        assert!(describe_request(&credential(true), "T").contains("suspended"));
    }
}
