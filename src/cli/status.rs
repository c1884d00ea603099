//! `status`: what is known about credentials, gathered from the cluster, and its formatting:
//! a table for many, the full detail for one.
//!
//! Gathering reads the credential, its target Secret and the Events about it. The Secret's
//! values never leave [`SecretSummary::of`]: it keeps the key names, their sizes and the
//! token's displayable claims. The formatting is pure and takes `now`, so that it is tested
//! on fixed objects.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::renew::credentials_api;
use super::{KubeArgs, Scope};
use crate::api::{DsccCredential, TargetKeys};
use crate::conditions::{self, READY};
use crate::target_secret::is_controlled_by;
use crate::token::redact::scrub_text;
use crate::token::response::{decode_jwt_claims, displayable_claims};

/// How many Events the detail shows at most.
pub const MAX_EVENTS: usize = 10;
/// Width of the labels of the detail view.
const LABEL_WIDTH: usize = 18;
/// Longest message shown, in characters.
const MAX_MESSAGE_CHARS: usize = 600;
/// Claims whose values are Unix times.
const TIME_CLAIMS: [&str; 4] = ["exp", "iat", "nbf", "auth_time"];

/// What to show.
#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    /// The DsccCredential to show in full. Without it: a table of all of them.
    pub name: Option<String>,
}

/// `status NAME` of a credential that is not Ready: an error, so that the exit status is 1.
#[derive(Debug, thiserror::Error)]
#[error("DsccCredential {key} is not Ready ({reason})")]
pub struct NotReady {
    /// `namespace/name`.
    pub key: String,
    /// The Ready condition's reason.
    pub reason: String,
}

/// What `status` knows about the target Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetSecret {
    /// It was read.
    Present(SecretSummary),
    /// It does not exist.
    Missing {
        /// Its name.
        name: String,
    },
    /// Reading it failed (no permission, say).
    Unreadable {
        /// Its name.
        name: String,
        /// Why.
        problem: String,
    },
}

/// The shape of a target Secret, without any of its values.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretSummary {
    /// Its name.
    pub name: String,
    /// Its type.
    pub type_: String,
    /// Each key and the size of its value in bytes.
    pub keys: Vec<(String, usize)>,
    /// Whether the credential controls it (else the operator reports TargetSecretConflict).
    pub owned: bool,
    /// The token's claims.
    pub claims: Claims,
}

/// The claims of the token in the target Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum Claims {
    /// Decoded (not verified) and made displayable: names and scrubbed values.
    Decoded(Vec<(String, String)>),
    /// The token is not a JWT (an opaque token).
    NotAJwt,
    /// The Secret has no token under the configured keys.
    NoToken,
    /// The Secret is not the credential's: its token is not read.
    NotOwned,
}

impl SecretSummary {
    /// The summary of `secret`, the target of `credential`. The token is decoded here and
    /// dropped; only what [`displayable_claims`] lets through is kept.
    pub fn of(secret: &Secret, credential: &DsccCredential) -> Self {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let owned = is_controlled_by(secret, credential);
        let claims = if owned {
            token_claims(data, &credential.spec.target.keys)
        } else {
            Claims::NotOwned
        };
        Self {
            name: secret.name_any(),
            type_: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
            keys: data.iter().map(|(k, v)| (k.clone(), v.0.len())).collect(),
            owned,
            claims,
        }
    }
}

/// The claims of the token under the access token key, else under the Authorization key.
fn token_claims(data: &BTreeMap<String, ByteString>, keys: &TargetKeys) -> Claims {
    let text = |key: &str| {
        let value = data.get(key).filter(|_| !key.is_empty())?;
        std::str::from_utf8(&value.0).ok().map(str::trim)
    };
    let token = text(&keys.access_token).or_else(|| {
        text(&keys.authorization).map(|header| {
            header
                .split_once(' ')
                .map_or(header, |(_, token)| token.trim())
        })
    });
    match token {
        None | Some("") => Claims::NoToken,
        Some(token) => match decode_jwt_claims(token) {
            Some(claims) => Claims::Decoded(displayable_claims(&claims)),
            None => Claims::NotAJwt,
        },
    }
}

/// One Event about a credential, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct EventLine {
    /// When it was last seen.
    pub at: Option<Timestamp>,
    /// Normal or Warning.
    pub type_: String,
    /// Its reason.
    pub reason: String,
    /// Its note.
    pub note: String,
    /// How often it happened (a series).
    pub count: i32,
}

impl EventLine {
    /// The line of `event`.
    pub fn of(event: &Event) -> Self {
        let at = event
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(event.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .or(event.event_time.as_ref().map(|t| t.0))
            .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let count = event
            .series
            .as_ref()
            .map(|s| s.count)
            .or(event.deprecated_count)
            .unwrap_or(1)
            .max(1);
        Self {
            at,
            type_: event.type_.clone().unwrap_or_default(),
            reason: event.reason.clone().unwrap_or_default(),
            note: event.note.clone().unwrap_or_default(),
            count,
        }
    }
}

/// The Events among `events` whose `regarding` is `credential`, oldest first, the last
/// `limit` of them.
pub fn recent_events(
    events: &[Event],
    credential: &DsccCredential,
    limit: usize,
) -> Vec<EventLine> {
    let uid = credential.metadata.uid.as_deref();
    let mut lines: Vec<EventLine> = events
        .iter()
        .filter(|event| {
            event.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("DsccCredential")
                    && r.name == credential.metadata.name
                    && r.namespace == credential.metadata.namespace
                    && (uid.is_none() || r.uid.is_none() || r.uid.as_deref() == uid)
            })
        })
        .map(EventLine::of)
        .collect();
    lines.sort_by_key(|line| line.at);
    let skip = lines.len().saturating_sub(limit);
    lines.split_off(skip)
}

/// A duration the way kubectl shows ages: `45s`, `5m30s`, `42m`, `1h59m`, `3d4h`.
pub fn human_duration(duration: SignedDuration) -> String {
    let s = duration.as_secs().unsigned_abs();
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match s {
        0..120 => format!("{s}s"),
        120..600 if !s.is_multiple_of(60) => format!("{m}m{}s", s % 60),
        120..3600 => format!("{m}m"),
        3600..172_800 if !m.is_multiple_of(60) => format!("{h}h{}m", m % 60),
        3600..172_800 => format!("{h}h"),
        _ if !h.is_multiple_of(24) => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// `at` relative to `now`: `in 1h59m`, `5m ago` or `now`.
pub fn relative(at: Timestamp, now: Timestamp) -> String {
    // To the nearest second: an Event from 29.9 s ago was 30 s ago.
    let seconds = (at.duration_since(now).as_millis() as f64 / 1000.0).round() as i64;
    let ahead = SignedDuration::from_secs(seconds);
    match seconds {
        0 => "now".into(),
        1.. => format!("in {}", human_duration(ahead)),
        _ => format!("{} ago", human_duration(ahead)),
    }
}

/// `at` to the second, with the time relative to `now`.
fn when(at: Timestamp, now: Timestamp) -> String {
    let shown = Timestamp::from_second(at.as_second()).unwrap_or(at);
    format!("{shown} ({})", relative(at, now))
}

/// Server-provided text made safe to print: no token-like words, no control characters.
fn safe(text: &str) -> String {
    scrub_text(text, &[], MAX_MESSAGE_CHARS)
}

/// The Ready condition, if the credential has a status.
fn ready_condition(credential: &DsccCredential) -> Option<&Condition> {
    conditions::find(&credential.status.as_ref()?.conditions, READY)
}

/// Whether the credential's Ready condition is True.
pub fn is_ready(credential: &DsccCredential) -> bool {
    ready_condition(credential).is_some_and(|c| c.status == "True")
}

/// The Ready reason, or what stands in for it before the operator wrote a status.
fn ready_reason(credential: &DsccCredential) -> String {
    ready_condition(credential).map_or_else(|| "NoStatus".into(), |c| c.reason.clone())
}

/// The name of the target Secret: the one in the status, else the one the spec names.
pub fn secret_name(credential: &DsccCredential) -> String {
    credential
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| credential.target_name())
}

/// What to say when there is nothing to show in `scope`.
pub fn nothing_found(scope: &Scope) -> String {
    match scope {
        Scope::All => "No DsccCredentials found.".into(),
        Scope::Namespace(namespace) => {
            format!("No DsccCredentials found in namespace {namespace}.")
        }
    }
}

struct Detail {
    out: String,
}

impl Detail {
    fn field(&mut self, label: &str, value: impl std::fmt::Display) {
        let label = format!("{label}:");
        let line = format!("{label:<LABEL_WIDTH$}{value}");
        let _ = writeln!(self.out, "{}", line.trim_end());
    }

    fn more(&mut self, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{:LABEL_WIDTH$}{value}", "");
    }

    /// Rows of columns under the label, aligned.
    fn rows(&mut self, rows: &[Vec<String>]) {
        for line in align(rows, 2) {
            self.more(line);
        }
    }
}

/// Rows as lines, each column padded to its widest cell and `gap` spaces apart.
fn align(rows: &[Vec<String>], gap: usize) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}", width = widths[i] + gap);
                }
            }
            line
        })
        .collect()
}

/// Everything about one credential.
pub fn format_details(
    credential: &DsccCredential,
    secret: &TargetSecret,
    events: &Result<Vec<EventLine>, String>,
    now: Timestamp,
) -> String {
    let mut d = Detail { out: String::new() };
    let default_status = Default::default();
    let status = credential.status.as_ref().unwrap_or(&default_status);
    d.field("Name", credential.key());
    match ready_condition(credential) {
        Some(ready) => {
            d.field("Ready", format!("{} ({})", ready.status, ready.reason));
            d.field("Message", safe(&ready.message));
        }
        None => d.field(
            "Ready",
            "Unknown (no status yet: is the operator running and watching this namespace?)",
        ),
    }
    if credential.spec.suspend {
        d.field("Suspended", "yes: renewals are stopped (spec.suspend)");
    }
    for condition in status.conditions.iter().filter(|c| c.type_ != READY) {
        d.field(
            &condition.type_,
            format!("{} ({})", condition.status, condition.reason),
        );
    }
    if let (Some(observed), Some(generation)) =
        (status.observed_generation, credential.metadata.generation)
        && observed < generation
    {
        d.field(
            "Observed",
            format!("generation {observed}; the spec is at {generation} (not reconciled yet)"),
        );
    }

    match &status.expires_at {
        Some(Time(expires_at)) => {
            let verb = if *expires_at > now {
                "expires"
            } else {
                "expired"
            };
            let mut line = format!("{verb} {}", when(*expires_at, now));
            if let Some(Time(issued_at)) = &status.issued_at {
                let _ = write!(line, ", issued {}", when(*issued_at, now));
            }
            d.field("Token", line);
        }
        None => d.field("Token", "none issued"),
    }
    match &status.renewal_time {
        Some(Time(renewal)) => d.field("Renewal", when(*renewal, now)),
        None => d.field("Renewal", "-"),
    }
    d.field("Grant", status.grant.as_deref().unwrap_or("-"));
    d.field("Token group", status.token_group.as_deref().unwrap_or("-"));

    match (&status.last_failure_reason, status.failed_attempts) {
        (None, 0) => d.field("Last failure", "none"),
        (reason, attempts) => {
            let mut line = format!(
                "{}, {attempts} failed attempt{}",
                reason.as_deref().unwrap_or("Unknown"),
                if attempts == 1 { "" } else { "s" }
            );
            if let Some(Time(at)) = &status.last_failure_time {
                let _ = write!(line, ", last {}", relative(*at, now));
            }
            d.field("Last failure", line);
            if let Some(message) = &status.last_failure_message {
                d.more(safe(message));
            }
        }
    }
    if let Some(Time(at)) = &status.next_retry_time {
        d.field("Next retry", when(*at, now));
    }
    if let Some(Time(at)) = &status.retry_after_time {
        d.field(
            "Retry after",
            format!("{} (asked by the endpoint)", when(*at, now)),
        );
    }

    format_secret(&mut d, secret, now);

    if status.rollout_restarts.is_empty() {
        let targets = &credential.spec.rollout_restart_targets;
        if targets.is_empty() {
            d.field("Rollout restarts", "none configured");
        } else {
            d.field("Rollout restarts", "none yet");
        }
    } else {
        d.field("Rollout restarts", "");
        let rows: Vec<Vec<String>> = status
            .rollout_restarts
            .iter()
            .map(|r| {
                vec![
                    format!("{:?}/{}", r.kind, r.name),
                    format!("for token {}", safe(&r.token)),
                ]
            })
            .collect();
        d.rows(&rows);
    }

    match events {
        Err(problem) => d.field("Events", format!("cannot list: {}", safe(problem))),
        Ok(events) if events.is_empty() => d.field("Events", "none"),
        Ok(events) => {
            d.field("Events", "(newest last)");
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    let at = e.at.map_or_else(|| "-".into(), |at| relative(at, now));
                    let reason = if e.count > 1 {
                        format!("{} (x{})", e.reason, e.count)
                    } else {
                        e.reason.clone()
                    };
                    vec![at, e.type_.clone(), reason, safe(&e.note)]
                })
                .collect();
            d.rows(&rows);
        }
    }
    d.out
}

fn format_secret(d: &mut Detail, secret: &TargetSecret, now: Timestamp) {
    let summary = match secret {
        TargetSecret::Missing { name } => {
            d.field("Secret", format!("{name} (not found)"));
            return;
        }
        TargetSecret::Unreadable { name, problem } => {
            d.field("Secret", format!("{name} (cannot read: {})", safe(problem)));
            return;
        }
        TargetSecret::Present(summary) => summary,
    };
    let owner = if summary.owned {
        ""
    } else {
        ", not created by this credential"
    };
    d.field(
        "Secret",
        format!("{} ({}{owner})", summary.name, summary.type_),
    );
    let rows: Vec<Vec<String>> = summary
        .keys
        .iter()
        .map(|(key, size)| vec![key.clone(), format!("{size} bytes")])
        .collect();
    if rows.is_empty() {
        d.more("no keys");
    }
    d.rows(&rows);
    match &summary.claims {
        Claims::Decoded(claims) => {
            d.field(
                "Claims",
                "(of the token in the Secret; signature not verified)",
            );
            let rows: Vec<Vec<String>> = claims
                .iter()
                .map(|(name, value)| {
                    let mut shown = value.clone();
                    if TIME_CLAIMS.contains(&name.as_str())
                        && let Some(at) = value
                            .parse()
                            .ok()
                            .and_then(|s| Timestamp::from_second(s).ok())
                    {
                        let _ = write!(shown, " = {}", when(at, now));
                    }
                    vec![name.clone(), shown]
                })
                .collect();
            d.rows(&rows);
        }
        Claims::NotAJwt => d.field("Claims", "none (the token is not a JWT)"),
        Claims::NoToken => d.field("Claims", "none (no token under the configured keys)"),
        Claims::NotOwned => d.field("Claims", "not read (the Secret is not this credential's)"),
    }
}

/// A table of credentials like `kubectl get`, and a line for each that is not Ready.
pub fn format_table(
    credentials: &[DsccCredential],
    all_namespaces: bool,
    now: Timestamp,
) -> String {
    let mut header = vec![
        "NAME", "READY", "REASON", "SECRET", "EXPIRES", "RENEWAL", "AGE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    let mut problems = Vec::new();
    for credential in credentials {
        let status = credential.status.as_ref();
        let ready = ready_condition(credential);
        let time = |t: Option<&Time>| t.map_or_else(|| "-".into(), |t| relative(t.0, now));
        let mut row = vec![
            credential.name_any(),
            ready.map_or_else(|| "Unknown".into(), |c| c.status.clone()),
            ready_reason(credential),
            status
                .and_then(|s| s.secret_name.clone())
                .unwrap_or_else(|| "-".into()),
            time(status.and_then(|s| s.expires_at.as_ref())),
            time(status.and_then(|s| s.renewal_time.as_ref())),
            credential
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or_else(|| "-".into(), |t| human_duration(now.duration_since(t.0))),
        ];
        if all_namespaces {
            row.insert(0, credential.namespace().unwrap_or_default());
        }
        rows.push(row);
        if !is_ready(credential) {
            let who = if all_namespaces {
                credential.key()
            } else {
                credential.name_any()
            };
            let message = ready.map_or_else(
                || "no status yet: is the operator running and watching this namespace?".into(),
                |c| safe(&c.message),
            );
            problems.push(format!("  {who}: {}: {message}", ready_reason(credential)));
        }
    }
    let mut out = String::new();
    for line in align(&rows, 3) {
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !problems.is_empty() {
        let _ = writeln!(out, "\nNot Ready:");
        for line in problems {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn api_problem(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

async fn gather_secret(client: &Client, credential: &DsccCredential) -> TargetSecret {
    let name = secret_name(credential);
    let namespace = credential.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    match api.get_opt(&name).await {
        Ok(Some(secret)) => TargetSecret::Present(SecretSummary::of(&secret, credential)),
        Ok(None) => TargetSecret::Missing { name },
        Err(error) => TargetSecret::Unreadable {
            name,
            problem: api_problem(&error),
        },
    }
}

async fn gather_events(
    client: &Client,
    credential: &DsccCredential,
) -> Result<Vec<EventLine>, String> {
    let namespace = credential.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let params = ListParams::default().fields(&format!(
        "regarding.kind=DsccCredential,regarding.name={}",
        credential.name_any()
    ));
    let events = api.list(&params).await.map_err(|e| api_problem(&e))?.items;
    Ok(recent_events(&events, credential, MAX_EVENTS))
}

/// Runs `status`.
pub async fn run(kube: &KubeArgs, args: &StatusArgs) -> anyhow::Result<()> {
    let (client, scope) = kube.connect().await?;
    match (&args.name, &scope) {
        (Some(_), Scope::All) => {
            anyhow::bail!("a credential cannot be shown by name across all namespaces: use -n")
        }
        (Some(name), Scope::Namespace(namespace)) => {
            let api: Api<DsccCredential> = Api::namespaced(client.clone(), namespace);
            let credential = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading DsccCredential {namespace}/{name}"))?
                .ok_or_else(|| anyhow::anyhow!("DsccCredential {namespace}/{name} not found"))?;
            let (secret, events) = futures::join!(
                gather_secret(&client, &credential),
                gather_events(&client, &credential)
            );
            print!(
                "{}",
                format_details(&credential, &secret, &events, Timestamp::now())
            );
            if !is_ready(&credential) {
                return Err(NotReady {
                    key: credential.key(),
                    reason: ready_reason(&credential),
                }
                .into());
            }
        }
        (None, _) => {
            let mut credentials = credentials_api(&client, &scope)
                .list(&ListParams::default())
                .await
                .context("listing DsccCredentials")?
                .items;
            if credentials.is_empty() {
                eprintln!("{}", nothing_found(&scope));
                return Ok(());
            }
            credentials.sort_by_key(|c| (c.namespace(), c.name_any()));
            print!(
                "{}",
                format_table(&credentials, scope == Scope::All, Timestamp::now())
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
