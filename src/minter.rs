//! One minter per client: the operator's token groups.
//!
//! Credentials whose token request would be identical (same token URL, client id, client
//! secret fingerprint, authentication and scopes; for an exchange the same subject token and
//! audience) form a group, in any namespaces. A group has one token at a time: the first
//! member due for renewal requests it, at most one request is in flight per group, and the
//! other members take it from here without a request. Minting a new token may invalidate the
//! previous one at GreenLake, so every member is told at once to write the new token.
//!
//! Sharing is safe across namespaces because a member's key contains the fingerprint of the
//! client secret it holds in its own namespace, computed by the operator: no credential can
//! join a group whose secret it does not have. Group tokens live in memory only; after a
//! restart a group forms again as its members are reconciled.
//!
//! Every request passes the per-host gate ([`crate::token::rate_limit`]) and the leadership
//! check: a replica that has lost its Lease sends nothing, and one that loses it while a
//! request is in flight drops the answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::api::DsccCredential;
use crate::leader::Leadership;
use crate::lock;
use crate::metrics::Metrics;
use crate::observe::{GroupKey, GroupToken, token_hash};
use crate::steps::{TokenOrder, TokenOutcome};
use crate::token::rate_limit::{HostAnswer, HostGate};
use crate::token::{Endpoint, ExposeSecret, IssuedToken, TokenClient};

/// A token the operator obtained, as the group holds it.
#[derive(Debug)]
pub struct Minted {
    /// The token and what came with it.
    pub token: IssuedToken,
    /// The grant that produced it.
    pub grant: &'static str,
    /// A one-way hash of the access token.
    pub token_hash: String,
}

#[derive(Default)]
struct Group {
    latest: Option<Arc<Minted>>,
    in_flight: bool,
    members: HashSet<ObjectRef<DsccCredential>>,
}

/// Where the minter tells credentials that their group has a new token.
pub type Notify = Arc<dyn Fn(ObjectRef<DsccCredential>) + Send + Sync>;

/// The token groups and the gate every request passes.
pub struct Minter {
    client: TokenClient,
    gate: Arc<HostGate>,
    groups: Mutex<HashMap<GroupKey, Group>>,
    membership: Mutex<HashMap<ObjectRef<DsccCredential>, GroupKey>>,
    /// Member → the hash of the token it last stored in its target Secret.
    stored: Mutex<HashMap<ObjectRef<DsccCredential>, String>>,
    notify: Mutex<Option<Notify>>,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    clock: Arc<dyn crate::controller::Clock>,
}

impl Minter {
    /// A minter sending with `client` through `gate`.
    pub fn new(
        client: TokenClient,
        gate: Arc<HostGate>,
        metrics: Arc<Metrics>,
        leadership: Leadership,
        clock: Arc<dyn crate::controller::Clock>,
    ) -> Self {
        Self {
            client,
            gate,
            groups: Mutex::new(HashMap::new()),
            membership: Mutex::new(HashMap::new()),
            stored: Mutex::new(HashMap::new()),
            notify: Mutex::new(None),
            metrics,
            leadership,
            clock,
        }
    }

    /// Sets where members are told of a new group token.
    pub fn set_notify(&self, notify: Notify) {
        *lock(&self.notify) = Some(notify);
    }

    /// The token client (its HTTP client also serves the verify probe).
    pub fn client(&self) -> &TokenClient {
        &self.client
    }

    /// Makes `member` a member of group `key` (leaving any other), and returns the group's
    /// latest token.
    pub fn consult(
        &self,
        key: &GroupKey,
        member: &ObjectRef<DsccCredential>,
    ) -> Option<GroupToken> {
        let previous = lock(&self.membership).insert(member.clone(), key.clone());
        let mut groups = lock(&self.groups);
        if let Some(previous) = previous.filter(|p| p != key) {
            leave_group(&mut groups, &previous, member);
        }
        let group = groups.entry(key.clone()).or_default();
        group.members.insert(member.clone());
        self.metrics.token_group(
            &member.namespace.clone().unwrap_or_default(),
            &member.name,
            key.id(),
        );
        let stored = lock(&self.stored).get(member).cloned();
        let latest = group.latest.as_ref().map(|m| GroupToken {
            issued_at: m.token.issued_at,
            expires_at: m.token.expires_at,
            token_hash: m.token_hash.clone(),
            stored_by_member: stored.as_deref() == Some(m.token_hash.as_str()),
        });
        drop(groups);
        self.publish_group_metrics();
        latest
    }

    /// Records that `member` stored the token `token_hash` in its target Secret: that token
    /// is its current one, never "a newer group token" for it.
    pub fn stored(&self, member: &ObjectRef<DsccCredential>, token_hash: &str) {
        lock(&self.stored).insert(member.clone(), token_hash.to_owned());
    }

    /// Forgets a deleted credential.
    pub fn leave(&self, member: &ObjectRef<DsccCredential>) {
        lock(&self.stored).remove(member);
        if let Some(key) = lock(&self.membership).remove(member) {
            leave_group(&mut lock(&self.groups), &key, member);
        }
        self.metrics
            .forget_token_group(&member.namespace.clone().unwrap_or_default(), &member.name);
        self.publish_group_metrics();
    }

    fn publish_group_metrics(&self) {
        let groups = lock(&self.groups);
        let shared = groups.values().filter(|g| g.members.len() > 1).count();
        self.metrics.token_groups(groups.len(), shared);
    }

    /// The group `key`'s latest token, if acceptable to the order; else requests one (when
    /// allowed, the host lets it through, no other member is already asking, and this replica
    /// leads).
    pub async fn obtain(
        &self,
        order: &TokenOrder,
        member: &ObjectRef<DsccCredential>,
    ) -> TokenOutcome {
        let endpoint = Endpoint::of(&order.grant.token_url);
        let stored = lock(&self.stored).get(member).cloned();
        {
            let mut groups = lock(&self.groups);
            let group = groups.entry(order.key.clone()).or_default();
            group.members.insert(member.clone());
            // Issue times are whole seconds: a group token of the same second as the
            // member's current one is another token unless it is the one the member stored.
            let its_current = group.latest.as_ref().is_some_and(|latest| {
                order.acceptance.issued_after == Some(latest.token.issued_at)
                    && stored.as_deref() == Some(latest.token_hash.as_str())
            });
            if let Some(latest) = &group.latest
                && !its_current
                && order
                    .acceptance
                    .accepts(latest.token.issued_at, latest.token.expires_at)
            {
                return TokenOutcome::Obtained {
                    token: latest.clone(),
                    requested: false,
                };
            }
            if !order.may_request {
                return TokenOutcome::NothingAcceptable;
            }
            if group.in_flight {
                // Its answer comes to every member; look again shortly in any case.
                return TokenOutcome::NotNow(Duration::from_secs(2));
            }
            group.in_flight = true;
        }
        let _in_flight = InFlight {
            minter: self,
            key: &order.key,
        };
        let permit = match self.gate.admit(&endpoint.gate_key, order.urgent).await {
            Ok(permit) => permit,
            Err(not_now) => return TokenOutcome::NotNow(not_now.wait()),
        };
        if !self.leadership.is_leader() {
            return TokenOutcome::NotLeader;
        }
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let result = tokio::select! {
            result = self.client.exchange(&order.grant, now) => result,
            () = self.leadership.lost() => return TokenOutcome::NotLeader,
        };
        drop(permit);
        let outcome = match &result {
            Ok(_) => "success",
            Err(error) => error.reason().as_str(),
        };
        self.metrics
            .token_request(&endpoint.host_name, outcome, started.elapsed());
        match result {
            Ok(token) => {
                self.gate.record(&endpoint.gate_key, HostAnswer::Normal);
                let minted = Arc::new(Minted {
                    token_hash: token_hash(token.access_token.expose_secret()),
                    grant: order.grant.kind.name(),
                    token,
                });
                let others: Vec<_> = {
                    let mut groups = lock(&self.groups);
                    let group = groups.entry(order.key.clone()).or_default();
                    group.latest = Some(minted.clone());
                    group
                        .members
                        .iter()
                        .filter(|m| *m != member)
                        .cloned()
                        .collect()
                };
                if let Some(notify) = lock(&self.notify).clone() {
                    for other in others {
                        notify(other);
                    }
                }
                TokenOutcome::Obtained {
                    token: minted,
                    requested: true,
                }
            }
            Err(error) => {
                let answer = match error.pauses_host() {
                    Some(pause) => HostAnswer::Throttled(pause),
                    None => HostAnswer::Normal,
                };
                self.gate.record(&endpoint.gate_key, answer);
                TokenOutcome::Failed {
                    invalid_grant: error.is_invalid_grant(),
                    failure: error.to_failure(),
                }
            }
        }
    }

    /// Drops tokens that have expired, and groups without members.
    pub fn prune(&self, now: Timestamp) {
        lock(&self.groups).retain(|_, group| {
            if group
                .latest
                .as_ref()
                .is_some_and(|m| m.token.expires_at <= now)
            {
                group.latest = None;
            }
            !group.members.is_empty() || group.in_flight
        });
    }
}

fn leave_group(
    groups: &mut HashMap<GroupKey, Group>,
    key: &GroupKey,
    member: &ObjectRef<DsccCredential>,
) {
    if let Some(group) = groups.get_mut(key) {
        group.members.remove(member);
        if group.members.is_empty() && !group.in_flight {
            groups.remove(key);
        }
    }
}

/// Clears the group's in-flight mark however the request ends.
struct InFlight<'a> {
    minter: &'a Minter,
    key: &'a GroupKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(group) = lock(&self.minter.groups).get_mut(self.key) {
            group.in_flight = false;
        }
    }
}
