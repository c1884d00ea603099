//! Which credentials use which Secret, and what the metadata watch says about those Secrets.
//!
//! The operator watches the metadata of every Secret (it must notice a client Secret's change
//! or a stranger's Secret under a target name) but keeps only what concerns a credential:
//! - `users`: (namespace, Secret name) → the credentials that read or write it, kept by the
//!   credential watch, so a Secret event finds its credentials without scanning them all;
//! - `facts`: for those Secrets only, the resourceVersion, the controller owner and the
//!   operator's own `dscc.io/` annotations, plus the client fingerprint read by the last GET.
//!
//! No Secret data is ever kept here, and Secrets no credential refers to leave no trace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::DsccCredential;

/// A Secret in a namespace.
pub type SecretKey = (String, String);

/// How a credential uses a Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Use {
    /// It reads its client id and secret from it.
    Client,
    /// It writes its token into it.
    Target,
    /// It keeps its refresh token in it.
    Refresh,
    /// It exchanges the token in it (another credential's target).
    Subject,
}

/// What the operator knows about a Secret from its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretFacts {
    /// Its uid.
    pub uid: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// The uid of its controller owner, if any.
    pub controller: Option<String>,
    /// Its `dscc.io/` annotations (the operator's bookkeeping).
    pub annotations: BTreeMap<String, String>,
    /// The client fingerprint the last GET computed, with the version it was computed from.
    pub fingerprint: Option<KnownFingerprint>,
}

/// A client Secret's content as the last GET found it (one-way, never the values).
#[derive(Clone, Debug, PartialEq)]
pub struct KnownFingerprint {
    /// The resourceVersion it was read at.
    pub resource_version: String,
    /// The (client id key, client secret key) it was read with.
    pub keys: (String, String),
    /// The client id and fingerprint, or the key that was missing.
    pub result: Result<(String, String), String>,
}

impl SecretFacts {
    /// The facts in a Secret's metadata.
    pub fn of_metadata(metadata: &ObjectMeta) -> Self {
        Self {
            uid: metadata.uid.clone().unwrap_or_default(),
            resource_version: metadata.resource_version.clone().unwrap_or_default(),
            controller: metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| r.uid.clone()),
            annotations: metadata
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("dscc.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            fingerprint: None,
        }
    }

    /// Whether `credential` is its controller.
    pub fn is_controlled_by(&self, credential: &DsccCredential) -> bool {
        self.controller.is_some() && self.controller == credential.metadata.uid
    }
}

/// How the operator learned that a Secret does not exist.
#[derive(Clone, Debug, PartialEq)]
pub enum Absence {
    /// A GET answered 404: of unknown vintage against the watch (a write that followed it
    /// may not have reached the watch yet).
    NotFound,
    /// The watch saw it deleted, at this resourceVersion.
    Deleted(String),
    /// A full list of Secrets did not contain it.
    NotListed,
}

/// What is known about a Secret: that it is absent, or its facts. Unknown is `None`.
// Most entries are Present: boxing it would add an allocation to nearly every one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Known {
    /// It does not exist.
    Absent(Absence),
    /// It exists.
    Present(SecretFacts),
}

#[derive(Default)]
struct Inner {
    users: HashMap<SecretKey, Vec<(ObjectRef<DsccCredential>, Use)>>,
    uses: HashMap<ObjectRef<DsccCredential>, Vec<(SecretKey, Use)>>,
    /// Subject credential (namespace, name) → the credentials that exchange its token.
    exchangers: HashMap<SecretKey, HashSet<ObjectRef<DsccCredential>>>,
    facts: HashMap<SecretKey, Known>,
    /// During a relist, per watched namespace (`None`: all of them): the used Secrets seen
    /// so far. Each namespace has a watch of its own, and its relist says nothing about
    /// Secrets elsewhere.
    relisting: HashMap<Option<String>, HashSet<SecretKey>>,
}

/// The index; shared by the watches and the reconciles.
#[derive(Default)]
pub struct SecretIndex {
    inner: Mutex<Inner>,
}

impl SecretIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    /// Records which Secrets `credential` uses (replacing what it used before); `subject`
    /// is the target Secret name of its token-exchange subject, if that credential exists.
    pub fn upsert(&self, credential: &DsccCredential, subject_target: Option<String>) {
        let reference = ObjectRef::from_obj(credential);
        let namespace = credential.namespace().unwrap_or_default();
        let mut wanted: Vec<(SecretKey, Use)> = vec![
            ((namespace.clone(), credential.target_name()), Use::Target),
            (
                (namespace.clone(), credential.refresh_secret_name()),
                Use::Refresh,
            ),
        ];
        if let Some(client) = &credential.spec.client_secret_ref {
            wanted.push(((namespace.clone(), client.name.clone()), Use::Client));
        }
        if let Some(name) = subject_target {
            wanted.push(((namespace.clone(), name), Use::Subject));
        }
        let mut inner = self.lock();
        if inner.uses.get(&reference) == Some(&wanted) {
            return;
        }
        remove_uses(&mut inner, &reference);
        for (key, use_) in &wanted {
            inner
                .users
                .entry(key.clone())
                .or_default()
                .push((reference.clone(), *use_));
        }
        if let Some(exchange) = &credential.spec.token_exchange {
            let subject = (namespace, exchange.subject_credential_ref.name.clone());
            inner
                .exchangers
                .entry(subject)
                .or_default()
                .insert(reference.clone());
        }
        inner.uses.insert(reference, wanted);
    }

    /// Forgets a deleted credential.
    pub fn remove(&self, credential: &ObjectRef<DsccCredential>) {
        let mut inner = self.lock();
        remove_uses(&mut inner, credential);
    }

    /// The credentials that use Secret `key`.
    pub fn users(&self, key: &SecretKey) -> Vec<ObjectRef<DsccCredential>> {
        let inner = self.lock();
        let mut found: Vec<_> = inner
            .users
            .get(key)
            .into_iter()
            .flatten()
            .map(|(r, _)| r.clone())
            .collect();
        found.dedup();
        found
    }

    /// The credentials that exchange the token of the credential `subject`.
    pub fn exchangers(&self, subject: &SecretKey) -> Vec<ObjectRef<DsccCredential>> {
        let inner = self.lock();
        inner
            .exchangers
            .get(subject)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// What is known about Secret `key` (`None`: unknown).
    pub fn facts(&self, key: &SecretKey) -> Option<Known> {
        self.lock().facts.get(key).cloned()
    }

    /// Records a Secret seen by the watch; returns the credentials that use it.
    pub fn secret_applied(&self, metadata: &ObjectMeta) -> Vec<ObjectRef<DsccCredential>> {
        let key = key_of(metadata);
        let mut inner = self.lock();
        if !inner.users.contains_key(&key) {
            return vec![];
        }
        for (scope, seen) in inner.relisting.iter_mut() {
            if in_scope(scope.as_deref(), &key) {
                seen.insert(key.clone());
            }
        }
        let mut facts = SecretFacts::of_metadata(metadata);
        // A known fingerprint stays attached while the version it was read at is current.
        if let Some(Known::Present(old)) = inner.facts.get(&key)
            && old
                .fingerprint
                .as_ref()
                .is_some_and(|f| f.resource_version == facts.resource_version)
        {
            facts.fingerprint = old.fingerprint.clone();
        }
        let newer = match inner.facts.get(&key) {
            Some(Known::Present(old)) => {
                !crate::observe::lags(Some(&facts.resource_version), Some(&old.resource_version))
            }
            _ => true,
        };
        if newer {
            inner.facts.insert(key.clone(), Known::Present(facts));
        }
        users_of(&inner, &key)
    }

    /// Records a Secret deleted; returns the credentials that use it.
    pub fn secret_deleted(&self, metadata: &ObjectMeta) -> Vec<ObjectRef<DsccCredential>> {
        let key = key_of(metadata);
        let mut inner = self.lock();
        if !inner.users.contains_key(&key) {
            return vec![];
        }
        let version = metadata.resource_version.clone().unwrap_or_default();
        inner
            .facts
            .insert(key.clone(), Known::Absent(Absence::Deleted(version)));
        users_of(&inner, &key)
    }

    /// The watch starts listing every Secret again (after a start or a lost watch).
    pub fn relist_started(&self, namespace: Option<&str>) {
        self.lock()
            .relisting
            .insert(namespace.map(str::to_owned), HashSet::new());
    }

    /// The relist is complete: a used Secret it did not bring does not exist. Returns the
    /// credentials whose Secrets vanished meanwhile.
    pub fn relist_done(&self, namespace: Option<&str>) -> Vec<ObjectRef<DsccCredential>> {
        let mut inner = self.lock();
        let Some(seen) = inner.relisting.remove(&namespace.map(str::to_owned)) else {
            return vec![];
        };
        let gone: Vec<SecretKey> = inner
            .users
            .keys()
            .filter(|key| in_scope(namespace, key) && !seen.contains(*key))
            .cloned()
            .collect();
        let mut affected = vec![];
        for key in gone {
            if matches!(inner.facts.get(&key), Some(Known::Present(_))) {
                affected.extend(users_of(&inner, &key));
            }
            inner.facts.insert(key, Known::Absent(Absence::NotListed));
        }
        affected
    }

    /// Records what a GET found, unless the watch already knows something newer.
    pub fn seed(&self, key: &SecretKey, known: Known) {
        let mut inner = self.lock();
        if !inner.users.contains_key(key) {
            return;
        }
        let keep_existing = match (inner.facts.get(key), &known) {
            (None, _) => false,
            (Some(Known::Present(old)), Known::Present(new)) => {
                crate::observe::lags(Some(&new.resource_version), Some(&old.resource_version))
            }
            // A 404 cannot say whether it is older than what the watch brought.
            (Some(Known::Present(_)), Known::Absent(_)) => true,
            (Some(Known::Absent(_)), _) => false,
        };
        if !keep_existing {
            inner.facts.insert(key.clone(), known);
        }
    }

    /// Records the client fingerprint a GET computed for Secret `key` at `resource_version`.
    pub fn remember_fingerprint(&self, key: &SecretKey, fingerprint: KnownFingerprint) {
        let mut inner = self.lock();
        if let Some(Known::Present(facts)) = inner.facts.get_mut(key)
            && facts.resource_version == fingerprint.resource_version
        {
            facts.fingerprint = Some(fingerprint);
        }
    }

    /// How many Secrets it knows facts of (for tests and metrics).
    pub fn known_secrets(&self) -> usize {
        self.lock().facts.len()
    }
}

/// Whether a watch of `namespace` (`None`: all) sees the Secret `key`.
fn in_scope(namespace: Option<&str>, key: &SecretKey) -> bool {
    namespace.is_none_or(|namespace| namespace == key.0)
}

fn key_of(metadata: &ObjectMeta) -> SecretKey {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

fn users_of(inner: &Inner, key: &SecretKey) -> Vec<ObjectRef<DsccCredential>> {
    let mut found: Vec<_> = inner
        .users
        .get(key)
        .into_iter()
        .flatten()
        .map(|(r, _)| r.clone())
        .collect();
    found.dedup();
    found
}

fn remove_uses(inner: &mut Inner, reference: &ObjectRef<DsccCredential>) {
    let Some(old) = inner.uses.remove(reference) else {
        return;
    };
    for (key, _) in old {
        let now_unused = match inner.users.get_mut(&key) {
            Some(users) => {
                users.retain(|(r, _)| r != reference);
                users.is_empty()
            }
            None => false,
        };
        if now_unused {
            inner.users.remove(&key);
            inner.facts.remove(&key);
        }
    }
    inner.exchangers.retain(|_, tenants| {
        tenants.remove(reference);
        !tenants.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DsccCredentialSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn credential(name: &str, client: &str) -> DsccCredential {
        let spec: DsccCredentialSpec = serde_json::from_value(serde_json::json!({
            "clientSecretRef": {"name": client},
        }))
        .expect("spec");
        let mut credential = DsccCredential::new(name, spec);
        credential.metadata.namespace = Some("storage".into());
        credential.metadata.uid = Some(format!("uid-{name}"));
        credential
    }

    fn secret(namespace: &str, name: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(format!("uid-secret-{name}")),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
    }

    fn names(refs: Vec<ObjectRef<DsccCredential>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_secret_event_finds_exactly_the_credentials_that_use_it() {
        let index = SecretIndex::default();
        index.upsert(&credential("a", "shared-client"), None);
        index.upsert(&credential("b", "shared-client"), None);
        index.upsert(&credential("c", "own-client"), None);
        assert_eq!(
            names(index.secret_applied(&secret("storage", "shared-client", "5"))),
            ["a", "b"]
        );
        assert_eq!(
            names(index.secret_applied(&secret("storage", "c-token", "6"))),
            ["c"]
        );
        assert!(
            index
                .secret_applied(&secret("other", "shared-client", "7"))
                .is_empty(),
            "another namespace"
        );
        assert!(
            index
                .secret_applied(&secret("storage", "unrelated", "8"))
                .is_empty()
        );
    }

    #[test]
    fn secrets_no_credential_uses_leave_no_trace() {
        let index = SecretIndex::default();
        index.upsert(&credential("a", "client"), None);
        for i in 0..1000 {
            index.secret_applied(&secret("storage", &format!("unrelated-{i}"), "9"));
        }
        index.secret_applied(&secret("storage", "client", "10"));
        assert_eq!(index.known_secrets(), 1);
    }

    #[test]
    fn a_changed_spec_moves_the_credential_to_its_new_secrets() {
        let index = SecretIndex::default();
        index.upsert(&credential("a", "old-client"), None);
        index.secret_applied(&secret("storage", "old-client", "3"));
        index.upsert(&credential("a", "new-client"), None);
        assert!(
            index
                .secret_applied(&secret("storage", "old-client", "4"))
                .is_empty()
        );
        assert_eq!(
            index.facts(&("storage".into(), "old-client".into())),
            None,
            "facts dropped"
        );
        assert_eq!(
            names(index.secret_applied(&secret("storage", "new-client", "5"))),
            ["a"]
        );
        index.remove(&ObjectRef::from_obj(&credential("a", "new-client")));
        assert!(
            index
                .secret_applied(&secret("storage", "new-client", "6"))
                .is_empty()
        );
    }

    #[test]
    fn keeps_the_owner_and_only_the_operators_annotations() {
        let index = SecretIndex::default();
        let owner = credential("a", "client");
        index.upsert(&owner, None);
        let mut meta = secret("storage", "a-token", "12");
        meta.owner_references = Some(vec![OwnerReference {
            uid: "uid-a".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        meta.annotations = Some(BTreeMap::from([
            (
                "dscc.io/expires-at".to_owned(),
                "2026-11-25T12:00:00Z".to_owned(),
            ),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "x".repeat(4000),
            ),
        ]));
        index.secret_applied(&meta);
        let Some(Known::Present(facts)) = index.facts(&("storage".into(), "a-token".into())) else {
            panic!("facts expected");
        };
        assert!(facts.is_controlled_by(&owner));
        assert_eq!(facts.annotations.len(), 1);
        assert_eq!(facts.resource_version, "12");
    }

    #[test]
    fn deletions_and_relists_tell_what_is_absent() {
        let index = SecretIndex::default();
        index.upsert(&credential("a", "client"), None);
        let key = ("storage".to_owned(), "client".to_owned());
        assert_eq!(
            index.facts(&key),
            None,
            "unknown before the watch said anything"
        );
        index.secret_applied(&secret("storage", "client", "3"));
        index.secret_deleted(&secret("storage", "client", "4"));
        assert_eq!(
            index.facts(&key),
            Some(Known::Absent(Absence::Deleted("4".into())))
        );
        index.secret_applied(&secret("storage", "client", "5"));
        index.relist_started(Some("storage"));
        index.secret_applied(&secret("storage", "a-token", "6"));
        assert_eq!(
            names(index.relist_done(Some("storage"))),
            ["a"],
            "the client Secret vanished meanwhile"
        );
        assert_eq!(index.facts(&key), Some(Known::Absent(Absence::NotListed)));
    }

    #[test]
    fn a_relist_of_one_namespace_says_nothing_about_another() {
        // With --namespace=a,b each namespace has its own Secret watch; the relist of one
        // must not declare the Secrets of the other absent.
        let index = SecretIndex::default();
        index.upsert(&credential("a", "client"), None);
        let key = ("storage".to_owned(), "client".to_owned());
        index.secret_applied(&secret("storage", "client", "3"));
        index.relist_started(Some("elsewhere"));
        index.secret_applied(&secret("elsewhere", "other", "4"));
        assert_eq!(
            names(index.relist_done(Some("elsewhere"))),
            Vec::<String>::new()
        );
        assert!(
            matches!(index.facts(&key), Some(Known::Present(_))),
            "the relist of another namespace kept the client Secret: {:?}",
            index.facts(&key)
        );
        index.relist_started(None);
        assert_eq!(
            names(index.relist_done(None)),
            ["a"],
            "a relist of all namespaces did not"
        );
    }

    #[test]
    fn a_get_never_overwrites_newer_facts_from_the_watch() {
        let index = SecretIndex::default();
        index.upsert(&credential("a", "client"), None);
        let key = ("storage".to_owned(), "client".to_owned());
        index.secret_applied(&secret("storage", "client", "20"));
        index.seed(
            &key,
            Known::Present(SecretFacts::of_metadata(&secret("storage", "client", "19"))),
        );
        index.seed(&key, Known::Absent(Absence::NotFound));
        assert!(matches!(index.facts(&key), Some(Known::Present(f)) if f.resource_version == "20"));
        index.seed(
            &key,
            Known::Present(SecretFacts::of_metadata(&secret("storage", "client", "21"))),
        );
        assert!(matches!(index.facts(&key), Some(Known::Present(f)) if f.resource_version == "21"));
    }

    #[test]
    fn a_fingerprint_is_kept_only_for_the_version_it_was_read_at() {
        let index = SecretIndex::default();
        index.upsert(&credential("a", "client"), None);
        let key = ("storage".to_owned(), "client".to_owned());
        index.secret_applied(&secret("storage", "client", "30"));
        let fingerprint = KnownFingerprint {
            resource_version: "30".into(),
            keys: ("client_id".into(), "client_secret".into()),
            result: Ok(("id".into(), "sha256:fp".into())),
        };
        index.remember_fingerprint(&key, fingerprint);
        index.secret_applied(&secret("storage", "client", "30"));
        assert!(matches!(index.facts(&key), Some(Known::Present(f)) if f.fingerprint.is_some()));
        index.secret_applied(&secret("storage", "client", "31"));
        assert!(matches!(index.facts(&key), Some(Known::Present(f)) if f.fingerprint.is_none()));
    }

    #[test]
    fn token_exchange_tenants_are_found_from_their_subject() {
        let index = SecretIndex::default();
        let mut tenant = credential("tenant-1", "client");
        tenant.spec.token_exchange = Some(
            serde_json::from_value(serde_json::json!({
                "subjectCredentialRef": {"name": "msp"}
            }))
            .unwrap(),
        );
        index.upsert(&tenant, Some("msp-token".into()));
        assert_eq!(
            names(index.exchangers(&("storage".into(), "msp".into()))),
            ["tenant-1"]
        );
        assert_eq!(
            names(index.secret_applied(&secret("storage", "msp-token", "3"))),
            ["tenant-1"]
        );
    }
}
