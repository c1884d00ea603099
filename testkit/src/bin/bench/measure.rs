//! What the bench measures with: snapshots of the API server's request counters, the CPU
//! time of every process involved (from `/proc/<pid>/stat`), the operator's memory, the load
//! average, a watch of the credentials (when each became Ready, renewed) and a timeline
//! sampled during the creation phase.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dscc_testkit::token_endpoint::{RecordedRequest, TokenEndpoint};
use dscc_token_operator::api::DsccCredential;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::cluster::{self, Flows};
use crate::report::{round, summary};
use crate::{SET_LABEL, say};

/// Write verbs, as the FlowSchemas name them.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The processes whose CPU time each phase records.
#[derive(Clone, Debug, Default)]
pub struct Pids {
    /// The operator (0 while none runs).
    pub operator: u32,
    /// kube-apiserver, etcd, kube-controller-manager of the bench's control plane.
    pub control_plane: HashMap<&'static str, u32>,
}

impl Pids {
    fn cpu(&self) -> BTreeMap<&'static str, f64> {
        let mut cpu = BTreeMap::new();
        let of = |pid: u32| {
            if pid == 0 {
                0.0
            } else {
                cpu_seconds(pid).unwrap_or(0.0)
            }
        };
        cpu.insert("operator", of(self.operator));
        cpu.insert("bench", of(std::process::id()));
        for name in ["kube-apiserver", "etcd", "kube-controller-manager"] {
            cpu.insert(name, of(self.control_plane.get(name).copied().unwrap_or(0)));
        }
        cpu
    }
}

/// Takes snapshots of everything a phase is measured by.
pub struct Probe {
    pub admin: Client,
    pub flows: Flows,
    pub control_plane: HashMap<&'static str, u32>,
    /// Writes the bench itself made, by (verb, resource).
    bench_writes: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

/// Counters at one moment.
#[derive(Clone)]
pub struct Snapshot {
    at: Instant,
    load: String,
    /// The operator's requests by (verb, resource), from its FlowSchemas.
    operator: BTreeMap<(String, String), f64>,
    /// Every client's requests by (verb, resource), from apiserver_request_total.
    all: BTreeMap<(String, String), f64>,
    bench_writes: BTreeMap<(String, String), u64>,
    cpu: BTreeMap<&'static str, f64>,
    token_requests: Vec<usize>,
}

impl Snapshot {
    /// Counts this process as not yet started: its whole CPU time belongs to the phase.
    pub fn operator_not_started(&mut self) {
        self.cpu.insert("operator", 0.0);
    }
}

/// What happened between two snapshots.
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    pub load_start: String,
    pub load_end: String,
    /// Requests of the operator's identity, by (verb, resource).
    pub operator: BTreeMap<(String, String), f64>,
    /// CPU seconds by process.
    pub cpu: BTreeMap<&'static str, f64>,
    /// Token requests per endpoint (bulk, short-lived).
    pub token_requests: Vec<usize>,
    pub json: Value,
}

impl Phase {
    pub fn operator_writes(&self) -> f64 {
        self.operator
            .iter()
            .filter(|((verb, _), _)| WRITE_VERBS.contains(&verb.as_str()))
            .map(|(_, n)| n)
            .fold(0.0, |sum, n| sum + n)
    }

    /// Reads of resources (get, list, watch), not of /metrics and the like.
    pub fn operator_reads(&self) -> f64 {
        self.operator
            .iter()
            .filter(|((verb, resource), _)| {
                !WRITE_VERBS.contains(&verb.as_str()) && resource != "non-resource"
            })
            .map(|(_, n)| n)
            .fold(0.0, |sum, n| sum + n)
    }

    pub fn operator(&self, verb: &str, resource: &str) -> f64 {
        self.operator
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }

    pub fn cpu(&self, process: &str) -> f64 {
        self.cpu.get(process).copied().unwrap_or(0.0)
    }
}

impl Probe {
    pub fn new(admin: Client, flows: Flows, control_plane: HashMap<&'static str, u32>) -> Self {
        Self {
            admin,
            flows,
            control_plane,
            bench_writes: Arc::default(),
        }
    }

    /// The pids to account, with the operator's.
    pub fn pids(&self, operator: u32) -> Pids {
        Pids {
            operator,
            control_plane: self.control_plane.clone(),
        }
    }

    pub fn count_bench_write(&self, verb: &str, resource: &str, n: u64) {
        let mut writes = self.bench_writes.lock().unwrap_or_else(|p| p.into_inner());
        *writes
            .entry((verb.to_owned(), resource.to_owned()))
            .or_default() += n;
    }

    pub async fn snapshot(
        &self,
        operator_pid: u32,
        endpoints: &[&TokenEndpoint],
    ) -> anyhow::Result<Snapshot> {
        let text = cluster::apiserver_metrics(&self.admin).await?;
        let mut operator = BTreeMap::new();
        for (labels, value) in
            cluster::samples(&text, "apiserver_flowcontrol_dispatched_requests_total")
        {
            if let Some(key) = labels.get("flow_schema").and_then(|f| self.flows.get(f)) {
                *operator.entry(key.clone()).or_default() += value;
            }
        }
        let mut all = BTreeMap::new();
        for (labels, value) in cluster::samples(&text, "apiserver_request_total") {
            let resource = labels.get("resource").cloned().unwrap_or_default();
            if resource.is_empty() {
                continue;
            }
            let resource = match labels.get("subresource").map(String::as_str) {
                Some(sub) if !sub.is_empty() => format!("{resource}/{sub}"),
                _ => resource,
            };
            let verb = match labels.get("verb").map(String::as_str).unwrap_or_default() {
                "POST" => "create",
                "PUT" => "update",
                "PATCH" | "APPLY" => "patch",
                "DELETE" => "delete",
                "DELETECOLLECTION" => "deletecollection",
                "GET" => "get",
                "LIST" => "list",
                "WATCH" | "WATCHLIST" => "watch",
                other => other,
            }
            .to_lowercase();
            *all.entry((verb, resource)).or_default() += value;
        }
        Ok(Snapshot {
            at: Instant::now(),
            load: loadavg(),
            operator,
            all,
            bench_writes: self
                .bench_writes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            cpu: self.pids(operator_pid).cpu(),
            token_requests: endpoints.iter().map(|e| e.request_count()).collect(),
        })
    }

    pub fn phase(&self, name: &'static str, a: &Snapshot, b: &Snapshot) -> Phase {
        let delta = |x: &BTreeMap<(String, String), f64>, y: &BTreeMap<(String, String), f64>| {
            y.iter()
                .map(|(k, v)| (k.clone(), v - x.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect::<BTreeMap<_, _>>()
        };
        let operator = delta(&a.operator, &b.operator);
        let all = delta(&a.all, &b.all);
        let bench: BTreeMap<(String, String), f64> = b
            .bench_writes
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (*v - a.bench_writes.get(k).copied().unwrap_or(0)) as f64,
                )
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let cpu: BTreeMap<&'static str, f64> = b
            .cpu
            .iter()
            .map(|(k, v)| (*k, (v - a.cpu.get(k).copied().unwrap_or(0.0)).max(0.0)))
            .collect();
        let token_requests: Vec<usize> = b
            .token_requests
            .iter()
            .zip(&a.token_requests)
            .map(|(b, a)| b.saturating_sub(*a))
            .collect();
        // The second figure: writes to the operator's resources by every client, minus the
        // bench's own (the controller manager writes none of these resources).
        let operator_resources = [
            "secrets",
            "dscccredentials",
            "dscccredentials/status",
            "events",
        ];
        let by_subtraction: f64 = all
            .iter()
            .filter(|((verb, resource), _)| {
                WRITE_VERBS.contains(&verb.as_str())
                    && operator_resources.contains(&resource.as_str())
            })
            .map(|(k, v)| v - bench.get(k).copied().unwrap_or(0.0))
            .fold(0.0, |sum, n| sum + n);
        let seconds = b.at.duration_since(a.at).as_secs_f64();
        let keyed = |m: &BTreeMap<(String, String), f64>| {
            m.iter()
                .map(|((verb, resource), v)| (format!("{verb} {resource}"), json!(v)))
                .collect::<serde_json::Map<_, _>>()
        };
        let mut phase = Phase {
            name,
            seconds,
            load_start: a.load.clone(),
            load_end: b.load.clone(),
            operator,
            cpu,
            token_requests,
            json: Value::Null,
        };
        phase.json = json!({
            "seconds": round(seconds, 2),
            "load_average_start": a.load,
            "load_average_end": b.load,
            "cpu_seconds": phase.cpu.iter().map(|(k, v)| (k.to_string(), json!(round(*v, 2)))).collect::<serde_json::Map<_, _>>(),
            "cpu_cores": phase.cpu.iter().map(|(k, v)| (k.to_string(), json!(round(*v / seconds.max(1e-9), 3)))).collect::<serde_json::Map<_, _>>(),
            "operator_requests": keyed(&phase.operator),
            "operator_writes": phase.operator_writes(),
            "operator_reads": phase.operator_reads(),
            "operator_writes_by_subtraction": by_subtraction,
            "all_clients_requests": keyed(&all),
            "bench_writes": keyed(&bench),
            "token_requests_bulk_endpoint": phase.token_requests.first(),
            "token_requests_short_lived_endpoint": phase.token_requests.get(1),
        });
        say(&format!(
            "  {name}: {:.1}s, CPU s: operator {:.2}, apiserver {:.2}, etcd {:.2}, bench {:.2}; \
             operator writes {} (by subtraction {by_subtraction}), reads {}, token requests {:?}; \
             load {} -> {}",
            seconds,
            phase.cpu("operator"),
            phase.cpu("kube-apiserver"),
            phase.cpu("etcd"),
            phase.cpu("bench"),
            phase.operator_writes(),
            phase.operator_reads(),
            phase.token_requests,
            a.load,
            b.load,
        ));
        say(&format!(
            "  operator-identity requests: {}",
            summary(&phase.operator)
        ));
        phase
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of the man page, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A field of /proc/PID/status in bytes (the kernel gives kB).
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Where a process's resident memory is, in MiB: RSS and peak, anonymous (heap, stacks),
/// file-backed (the binary's pages), and its threads.
pub fn memory_breakdown(pid: u32) -> Value {
    let mib = |field: &str| status_bytes(pid, field).map(|b| round(b as f64 / crate::MIB, 1));
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        });
    json!({
        "rss_mib": mib("VmRSS:"),
        "peak_rss_mib": mib("VmHWM:"),
        "anonymous_mib": mib("RssAnon:"),
        "file_mib": mib("RssFile:"),
        "shmem_mib": mib("RssShmem:"),
        "data_segment_mib": mib("VmData:"),
        "threads": threads,
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---- watching credentials ---------------------------------------------------------------

/// What the bench's watch saw of one credential, on its own clock.
#[derive(Default)]
struct Track {
    ready_at: Option<Instant>,
    /// Distinct status.issuedAt values, with when each was first seen.
    issued: Vec<(Timestamp, Instant)>,
    /// Distinct status.renewalTime values, with when each was first seen.
    renewal: Vec<(Timestamp, Instant)>,
}

/// A watch of every credential the bench creates (they carry SET_LABEL).
#[derive(Clone)]
pub struct Tracker {
    tracks: Arc<Mutex<HashMap<(String, String), Track>>>,
}

impl Tracker {
    pub fn start(admin: Client) -> Self {
        let tracker = Self {
            tracks: Arc::default(),
        };
        let tracks = tracker.tracks.clone();
        tokio::spawn(async move {
            let api: Api<DsccCredential> = Api::all(admin);
            let events =
                watcher(api, watcher::Config::default().labels(SET_LABEL)).default_backoff();
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let object = match event {
                    Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => object,
                    _ => continue,
                };
                let key = (object.namespace().unwrap_or_default(), object.name_any());
                let mut tracks = tracks.lock().unwrap_or_else(|p| p.into_inner());
                let track = tracks.entry(key).or_default();
                let Some(status) = &object.status else {
                    continue;
                };
                let ready = dscc_token_operator::conditions::find(&status.conditions, "Ready")
                    .is_some_and(|c| c.status == "True");
                if ready && track.ready_at.is_none() {
                    track.ready_at = Some(now);
                }
                if let Some(issued) = &status.issued_at
                    && track.issued.last().map(|(t, _)| *t) != Some(issued.0)
                {
                    track.issued.push((issued.0, now));
                }
                if let Some(renewal) = &status.renewal_time
                    && track.renewal.last().map(|(t, _)| *t) != Some(renewal.0)
                {
                    track.renewal.push((renewal.0, now));
                }
            }
        });
        tracker
    }

    pub fn ready_count(&self, namespace: &str) -> (usize, Option<Instant>) {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let mut count = 0;
        let mut last = None;
        for ((ns, _), track) in tracks.iter() {
            if ns == namespace
                && let Some(at) = track.ready_at
            {
                count += 1;
                last = last.max(Some(at));
            }
        }
        (count, last)
    }

    /// When the last of `count` credentials in `namespace` became Ready; `None` on timeout.
    pub async fn wait_all_ready(
        &self,
        namespace: &str,
        count: usize,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut reported = Instant::now();
        loop {
            let (ready, last) = self.ready_count(namespace);
            if ready >= count {
                return last;
            }
            if Instant::now() > deadline {
                say(&format!(
                    "  only {ready} of {count} Ready after {}s",
                    timeout.as_secs()
                ));
                return None;
            }
            if reported.elapsed() >= Duration::from_secs(10) {
                say(&format!("  {ready} of {count} Ready; load {}", loadavg()));
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When each credential in `namespace` became Ready, sorted.
    pub fn ready_times(&self, namespace: &str) -> Vec<Instant> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let mut times: Vec<Instant> = tracks
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|(_, t)| t.ready_at)
            .collect();
        times.sort();
        times
    }

    /// Creation to Ready of each credential, in seconds, sorted.
    pub fn ready_latencies(&self, namespace: &str, created: &HashMap<String, Instant>) -> Vec<f64> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let mut latencies: Vec<f64> = created
            .iter()
            .filter_map(|(name, at)| {
                let track = tracks.get(&(namespace.to_owned(), name.clone()))?;
                Some(track.ready_at?.saturating_duration_since(*at).as_secs_f64())
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        latencies
    }

    /// New tokens (status.issuedAt changes) first seen within the window.
    pub fn renewals(&self, namespace: &str, from: Instant, to: Instant) -> usize {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        tracks
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .flat_map(|(_, t)| t.issued.iter().skip(1))
            .filter(|(_, seen)| *seen >= from && *seen < to)
            .count()
    }

    /// For each token request: its time minus the renewal time the status announced before
    /// it, in seconds, sorted.
    pub fn lateness(&self, namespace: &str, set: &str, requests: &[RecordedRequest]) -> Vec<f64> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let mut lateness: Vec<f64> = requests
            .iter()
            .filter_map(|request| {
                let client = request.client_id.as_deref()?;
                let i = client.strip_prefix(&format!("{set}-client-"))?;
                let track = tracks.get(&(namespace.to_owned(), format!("{set}-{i}")))?;
                let planned = track
                    .renewal
                    .iter()
                    .rev()
                    .find(|(_, seen)| *seen < request.received_at)?
                    .0;
                let actual = Timestamp::try_from(request.received_at_system).ok()?;
                Some(actual.duration_since(planned).as_secs_f64())
            })
            .collect();
        lateness.sort_by(f64::total_cmp);
        lateness
    }
}

// ---- the timeline of a phase ------------------------------------------------------------

/// One sample of the timeline.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the timeline started.
    pub t: f64,
    /// Credentials Ready in the namespace watched.
    pub ready: usize,
    /// CPU seconds by process since the timeline started.
    pub cpu: BTreeMap<&'static str, f64>,
    /// The operator's resident memory, bytes.
    pub rss: u64,
    /// The 1-minute load average.
    pub load1: f64,
}

/// Samples CPU, memory, load and the Ready count every `interval` until stopped.
pub struct Timeline {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    pub fn start(
        pids: Pids,
        tracker: Tracker,
        namespace: &'static str,
        interval: Duration,
    ) -> Self {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let base = pids.cpu();
                let mut ticks = tokio::time::interval(interval);
                loop {
                    ticks.tick().await;
                    let cpu = pids
                        .cpu()
                        .into_iter()
                        .map(|(k, v)| (k, (v - base.get(k).copied().unwrap_or(0.0)).max(0.0)))
                        .collect();
                    let sample = Sample {
                        t: started.elapsed().as_secs_f64(),
                        ready: tracker.ready_count(namespace).0,
                        cpu,
                        rss: status_bytes(pids.operator, "VmRSS:").unwrap_or(0),
                        load1: loadavg()
                            .split_whitespace()
                            .next()
                            .and_then(|l| l.parse().ok())
                            .unwrap_or(0.0),
                    };
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sample);
                }
            })
        };
        Self { samples, task }
    }

    pub fn stop(self) -> Vec<Sample> {
        self.task.abort();
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The operator's CPU per credential that became Ready while the Ready count went from
/// `from` to `to` (fractions of `n`), in seconds; from the first samples at those counts.
pub fn marginal_cpu_per_ready(samples: &[Sample], n: usize, from: f64, to: f64) -> Option<f64> {
    let at = |fraction: f64| {
        let wanted = (fraction * n as f64).ceil() as usize;
        samples.iter().find(|s| s.ready >= wanted)
    };
    let (a, b) = (at(from)?, at(to)?);
    let credentials = b.ready.checked_sub(a.ready).filter(|d| *d > 0)?;
    let cpu = b.cpu.get("operator")? - a.cpu.get("operator")?;
    Some(cpu / credentials as f64)
}
