//! The results: one row per figure with its target and whether it was met, the same in
//! JSON with every phase's raw counts, a per-phase CPU table, and the plot of credentials
//! Ready over time.
//!
//! A time is judged only as a ratio to the limit measured in the same run; an absolute time
//! depends on what else the machine does and is reported as informative only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::measure::{Phase, Sample, WRITE_VERBS, cpus, marginal_cpu_per_ready};
use crate::phases::{Creation, Limit, Restart};
use crate::{Args, MIB};

pub fn round(x: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (x * factor).round() / factor
}

pub fn summary(requests: &BTreeMap<(String, String), f64>) -> String {
    requests
        .iter()
        .map(|((verb, resource), n)| format!("{verb} {resource} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// How much slower than the limit creation until all Ready may be for `n` credentials.
pub fn limit_factor(n: usize) -> f64 {
    if n <= 1000 { 1.3 } else { 1.5 }
}

/// The peak RSS target for `n` credentials, if the issue sets one.
fn rss_target_mib(n: usize) -> Option<f64> {
    match n {
        1000 => Some(24.0),
        10000 => Some(64.0),
        _ => None,
    }
}

/// One line of the per-phase CPU table.
struct PhaseCpu {
    name: String,
    seconds: f64,
    cpu: BTreeMap<&'static str, f64>,
    load_start: String,
    load_end: String,
}

struct Row {
    figure: String,
    value: String,
    target: String,
    met: Option<bool>,
    load: String,
}

/// Everything the bench reports.
pub struct Results {
    rows: Vec<Row>,
    pub json: Value,
    n: usize,
    phases: Vec<PhaseCpu>,
    limit_seconds: Option<f64>,
    /// Where the rows of a later phase that belong with the creation's go.
    creation_end: usize,
    /// While set, rows are inserted here rather than appended.
    insert_at: Option<usize>,
    /// Phase 1's creation until all Ready, seconds.
    creation_seconds: Option<f64>,
    /// kube-apiserver + etcd CPU seconds per credential: the limit's writes, phase 1.
    limit_server_cpu: Option<f64>,
    creation_server_cpu: Option<f64>,
}

impl Results {
    pub fn new(args: &Args, bin: &Path, flags: &[String], load: &str) -> Self {
        let json = json!({
            "started_at": Timestamp::try_from(SystemTime::now()).map(|t| t.to_string()).unwrap_or_default(),
            "machine": {"cpus": cpus(), "load_average_start": load},
            "config": {
                "credentials": args.credentials,
                "create_concurrency": args.create_concurrency,
                "concurrency": args.concurrency,
                "token_requests_per_second": args.token_requests_per_second,
                "max_requests_in_flight_per_host": args.max_requests_in_flight_per_host,
                "steady_seconds": args.steady.as_secs(),
                "renewal_credentials": args.renewal_credentials,
                "renewal_lifetime_seconds": args.renewal_lifetime.as_secs(),
                "renewal_window_seconds": args.renewal_window.as_secs(),
                "unrelated_secrets": args.unrelated_secrets,
                "unrelated_secret_bytes": args.unrelated_secret_bytes,
            },
            "operator": {"binary": bin.display().to_string(), "flags": flags},
            "attribution": "operator requests: apiserver_flowcontrol_dispatched_requests_total of \
                FlowSchemas matching only the operator's ServiceAccount, one per verb and resource; \
                operator_writes_by_subtraction: apiserver_request_total writes to secrets, \
                dscccredentials(/status) and events minus the bench's own",
            "phases": {},
            "figures": [],
        });
        Self {
            rows: vec![],
            json,
            n: args.credentials,
            phases: vec![],
            limit_seconds: None,
            creation_end: 0,
            insert_at: None,
            creation_seconds: None,
            limit_server_cpu: None,
            creation_server_cpu: None,
        }
    }

    fn row(
        &mut self,
        figure: &str,
        value: String,
        target: &str,
        met: Option<bool>,
        load: &str,
        raw: Value,
    ) {
        self.json["figures"]
            .as_array_mut()
            .expect("figures is an array")
            .push(
                json!({"figure": figure, "value": raw, "display": value, "target": target,
                         "met": met, "load_average": load}),
            );
        self.rows.push(Row {
            figure: figure.to_owned(),
            value,
            target: target.to_owned(),
            met,
            load: load.to_owned(),
        });
    }

    fn info(&mut self, figure: &str, value: String, load: &str, raw: Value) {
        self.row(figure, value, "", None, load, raw);
    }

    pub fn phase(&mut self, phase: &Phase) {
        self.json["phases"][phase.name] = phase.json.clone();
        self.phases.push(PhaseCpu {
            name: phase.name.to_owned(),
            seconds: phase.seconds,
            cpu: phase.cpu.clone(),
            load_start: phase.load_start.clone(),
            load_end: phase.load_end.clone(),
        });
    }

    pub fn limit(&mut self, limit: &Limit) {
        self.phase(&limit.tokens);
        self.phase(&limit.api);
        self.limit_seconds = Some(limit.seconds());
        self.limit_server_cpu =
            Some((limit.api.cpu("kube-apiserver") + limit.api.cpu("etcd")) / limit.n as f64);
        let n = limit.n as f64;
        let load = limit.api.load_end.clone();
        self.row(
            &format!(
                "limit for {} credentials (same run, {} in flight)",
                limit.n, limit.concurrency
            ),
            format!(
                "{:.1} s, bound by the {} ({:.0} credentials/s)",
                limit.seconds(),
                limit.bound_by(),
                n / limit.seconds()
            ),
            "measured",
            None,
            &load,
            json!(limit.seconds()),
        );
        let api_cores =
            (limit.api.cpu("kube-apiserver") + limit.api.cpu("etcd")) / limit.api_seconds;
        self.info(
            "  API: N x (create target Secret + patch status)",
            format!(
                "{:.1} s ({:.0}/s; {:.0} writes/s; kube-apiserver + etcd {api_cores:.2} cores, bench {:.2} cores)",
                limit.api_seconds,
                n / limit.api_seconds,
                limit.api.operator_writes() / limit.api_seconds,
                limit.api.cpu("bench") / limit.api_seconds
            ),
            &limit.api.load_end,
            json!({"seconds": limit.api_seconds, "writes": limit.api.operator_writes(),
                   "secret_bytes": limit.secret_bytes, "status_patch_bytes": limit.status_bytes}),
        );
        self.info(
            "  token endpoint: N requests",
            format!(
                "{:.1} s ({:.0}/s)",
                limit.token_seconds,
                n / limit.token_seconds
            ),
            &limit.tokens.load_end,
            json!(limit.token_seconds),
        );
        if let Some((cap, seconds)) = limit.tokens_per_host_cap {
            self.info(
                &format!("  token endpoint at {cap} in flight (operator's per-host cap)"),
                format!("{seconds:.1} s ({:.0}/s)", n / seconds),
                &limit.tokens.load_end,
                json!({"in_flight": cap, "seconds": seconds}),
            );
        }
        self.info(
            "  (bench creating the N DsccCredentials, not in the limit)",
            format!(
                "{:.1} s ({:.0}/s)",
                limit.setup_seconds,
                n / limit.setup_seconds
            ),
            &limit.api.load_start,
            json!(limit.setup_seconds),
        );
        self.json["limit"] = json!({
            "credentials": limit.n,
            "concurrency": limit.concurrency,
            "seconds": limit.seconds(),
            "bound_by": limit.bound_by(),
            "api_seconds": limit.api_seconds,
            "token_seconds": limit.token_seconds,
            "token_seconds_at_per_host_cap": limit.tokens_per_host_cap.map(|(_, s)| s),
            "setup_seconds": limit.setup_seconds,
            "secret_bytes": limit.secret_bytes,
            "status_patch_bytes": limit.status_bytes,
        });
    }

    /// `seconds` as a multiple of the limit measured in this run, when both are known.
    fn ratio_to_limit(&self, seconds: Option<f64>) -> Option<f64> {
        match (seconds, self.limit_seconds) {
            (Some(t), Some(l)) if l > 0.0 => Some(t / l),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn creation(
        &mut self,
        args: &Args,
        creation: &Creation,
        all_ready: Option<Instant>,
        latencies: &[f64],
        phase: &Phase,
        samples: &[Sample],
    ) {
        self.phase(phase);
        let n = args.credentials;
        let load = format!("{} -> {}", phase.load_start, phase.load_end);
        let total = all_ready.map(|at| at.duration_since(creation.started).as_secs_f64());
        let factor = limit_factor(n);
        let ratio = self.ratio_to_limit(total);
        self.row(
            &format!("{n} credentials: creation until all Ready"),
            match (total, ratio) {
                (None, _) => format!("not all Ready ({} of {n})", latencies.len()),
                (Some(t), Some(r)) => format!("{t:.1} s = {r:.2}x the limit"),
                (Some(t), None) => format!("{t:.1} s (no limit measured)"),
            },
            &format!("<= {factor}x the limit"),
            Some(ratio.is_some_and(|r| r <= factor)),
            &load,
            json!({"seconds": total, "ratio_to_limit": ratio}),
        );
        self.info(
            "  of which the bench submitting the creates (2 per credential)",
            format!("{:.1} s", creation.submitted.as_secs_f64()),
            &load,
            json!(creation.submitted.as_secs_f64()),
        );
        if let Some(t) = total {
            let tail = t - creation.submitted.as_secs_f64();
            self.info(
                "  last create submitted until all Ready",
                format!("{tail:.1} s"),
                &load,
                json!(tail),
            );
            self.info(
                "  (informative: absolute, the old target <= 30 s per 1000)",
                format!("{t:.1} s vs {:.0} s", 30.0 * n as f64 / 1000.0),
                &load,
                json!(t),
            );
        }
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            let value = percentile(latencies, q);
            self.info(
                &format!("creation->Ready {label} (per credential)"),
                value.map_or("-".into(), |v| format!("{v:.2} s")),
                &load,
                json!(value),
            );
        }
        let per = |x: f64| x / n as f64;
        let cpu = phase.cpu("operator");
        self.info(
            "operator CPU per issued credential",
            format!(
                "{:.2} ms ({cpu:.2} s in all, {:.2} cores)",
                1000.0 * per(cpu),
                cpu / phase.seconds
            ),
            &load,
            json!(per(cpu)),
        );
        // Linear: a credential costs as much when 0.85 N are cached as when 0.15 N are.
        let early = marginal_cpu_per_ready(samples, n, 0.1, 0.2);
        let late = marginal_cpu_per_ready(samples, n, 0.8, 0.9);
        let growth = match (early, late) {
            (Some(e), Some(l)) if e > 0.0 => Some(l / e),
            _ => None,
        };
        self.row(
            "operator CPU per credential at 80-90% Ready vs at 10-20% (same run)",
            match (early, late, growth) {
                (Some(e), Some(l), Some(g)) => {
                    format!("{:.2} vs {:.2} ms = {g:.2}x", 1000.0 * l, 1000.0 * e)
                }
                _ => "-".into(),
            },
            "<= 1.2x (linear; 20% for noise)",
            Some(growth.is_some_and(|g| g <= 1.2)),
            &load,
            json!({"early_seconds": early, "late_seconds": late, "ratio": growth}),
        );
        let server = phase.cpu("kube-apiserver") + phase.cpu("etcd");
        self.info(
            "  kube-apiserver + etcd CPU meanwhile",
            format!(
                "{server:.1} s ({:.2} cores; {:.1} ms per credential)",
                server / phase.seconds,
                1000.0 * per(server)
            ),
            &load,
            json!(server),
        );
        let reads = phase.operator_reads();
        self.row(
            "API reads per issued credential",
            format!(
                "{:.2} (get secrets {:.2}, get dscccredentials {:.2}, list/watch {:.3})",
                per(reads),
                per(phase.operator("get", "secrets")),
                per(phase.operator("get", "dscccredentials")),
                per(phase
                    .operator
                    .iter()
                    .filter(|((verb, _), _)| verb == "list" || verb == "watch")
                    .map(|(_, v)| v)
                    .fold(0.0, |sum, v| sum + v))
            ),
            "<= 2",
            Some(per(reads) <= 2.005),
            &load,
            json!(per(reads)),
        );
        self.info(
            "API writes per issued credential",
            format!("{:.2}", per(phase.operator_writes())),
            &load,
            json!(per(phase.operator_writes())),
        );
        let detail = phase
            .operator
            .iter()
            .filter(|((_, r), _)| r != "non-resource")
            .map(|((verb, resource), v)| format!("{verb} {resource} {:.2}", per(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        self.info("  by verb and resource", detail, &load, Value::Null);
        let tokens = phase.token_requests.first().copied().unwrap_or(0) as f64 / n as f64;
        self.row(
            "token requests per credential",
            format!("{tokens:.2}"),
            "1",
            Some((tokens - 1.0).abs() < 1e-9),
            &load,
            json!(tokens),
        );
        self.creation_end = self.rows.len();
        self.creation_seconds = total;
        self.creation_server_cpu = Some(server / n as f64);
        self.json["creation"] = json!({
            "credentials": n,
            "all_ready_seconds": total,
            "ratio_to_limit": ratio,
            "limit_seconds": self.limit_seconds,
            "submit_seconds": creation.submitted.as_secs_f64(),
            "ready_latency_p50_seconds": percentile(latencies, 0.5),
            "ready_latency_p99_seconds": percentile(latencies, 0.99),
            "ready_latency_max_seconds": latencies.last(),
            "ready_count": latencies.len(),
            "operator_cpu_per_credential_seconds": per(cpu),
            "timeline": samples.iter().map(|s| json!({
                "t": round(s.t, 2), "ready": s.ready, "load1": s.load1,
                "operator_rss_mib": round(s.rss as f64 / MIB, 1),
                "cpu_seconds": s.cpu.iter().map(|(k, v)| (k.to_string(), json!(round(*v, 2)))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
    }

    /// The cold start: credentials created while no operator ran, then the operator started.
    #[allow(clippy::too_many_arguments)]
    pub fn cold_start(
        &mut self,
        n: usize,
        setup: &Phase,
        bench_creates: Duration,
        spawned: Instant,
        synced: Instant,
        all_ready: Option<Instant>,
        phase: &Phase,
        peak_rss: u64,
        samples: &[Sample],
    ) {
        self.phase(setup);
        self.phase(phase);
        self.insert_at = Some(self.creation_end);
        let load = format!("{} -> {}", phase.load_start, phase.load_end);
        let total = all_ready.map(|at| at.duration_since(spawned).as_secs_f64());
        let factor = limit_factor(n);
        let ratio = self.ratio_to_limit(total);
        self.row(
            &format!("{n} credentials, cold start: operator start until all Ready"),
            match (total, ratio) {
                (None, _) => format!("not all Ready after {:.0} s", phase.seconds),
                (Some(t), Some(r)) => format!("{t:.1} s = {r:.2}x the limit"),
                (Some(t), None) => format!("{t:.1} s"),
            },
            &format!("<= {factor}x (like for like)"),
            ratio.map(|r| r <= factor),
            &load,
            json!({"seconds": total, "ratio_to_limit": ratio,
                   "synced_seconds": synced.duration_since(spawned).as_secs_f64()}),
        );
        let per = |x: f64| x / n as f64;
        self.info(
            "  cold start: operator CPU / API requests per credential",
            format!(
                "{:.2} ms / {:.2} reads + {:.2} writes ({})",
                1000.0 * per(phase.cpu("operator")),
                per(phase.operator_reads()),
                per(phase.operator_writes()),
                phase
                    .operator
                    .iter()
                    .filter(|((_, r), _)| r != "non-resource")
                    .map(|((verb, resource), v)| format!("{verb} {resource} {:.2}", per(*v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &load,
            json!({"cpu_per_credential_seconds": per(phase.cpu("operator")),
                   "reads_per_credential": per(phase.operator_reads()),
                   "writes_per_credential": per(phase.operator_writes()),
                   "peak_rss_mib": peak_rss as f64 / MIB}),
        );
        let server = phase.cpu("kube-apiserver") + phase.cpu("etcd");
        self.info(
            "  cold start: kube-apiserver + etcd CPU",
            format!(
                "{server:.1} s ({:.2} cores, {:.1} ms per credential)",
                server / phase.seconds,
                1000.0 * per(server)
            ),
            &load,
            json!(server),
        );
        // Where phase 1's API server time went, per credential: the minimum, the bench's own
        // creates, and what the operator did beyond the minimum.
        let server_of = |p: &Phase| (p.cpu("kube-apiserver") + p.cpu("etcd")) / n as f64;
        if let (Some(limit), Some(creation)) = (self.limit_server_cpu, self.creation_server_cpu) {
            let creates = server_of(setup);
            let extra = creation - limit - creates;
            self.info(
                "  API server + etcd CPU per credential: phase 1 = minimum + bench creates + rest",
                format!(
                    "{:.1} = {:.1} + {:.1} + {:.1} ms (rest: the operator's calls beyond the \
                     minimum, {:.0}% of the minimum)",
                    1000.0 * creation,
                    1000.0 * limit,
                    1000.0 * creates,
                    1000.0 * extra,
                    100.0 * extra / limit
                ),
                &load,
                json!({"phase1": creation, "minimum": limit, "bench_creates": creates,
                       "rest": extra}),
            );
        }
        if let (Some(creation), Some(limit)) = (self.creation_seconds, self.limit_seconds) {
            let estimate = bench_creates.as_secs_f64() + limit;
            self.info(
                "  (estimate) phase 1 vs the bench's own creates + the limit",
                format!(
                    "{creation:.1} s vs {:.1} + {limit:.1} s = {:.2}x",
                    bench_creates.as_secs_f64(),
                    creation / estimate
                ),
                &load,
                json!({"bench_creates_seconds": bench_creates.as_secs_f64(),
                       "ratio": creation / estimate}),
            );
        }
        self.json["cold_start"] = json!({
            "credentials": n,
            "all_ready_seconds": total,
            "ratio_to_limit": ratio,
            "bench_creates_seconds": bench_creates.as_secs_f64(),
            "timeline": samples.iter().map(|s| json!({
                "t": round(s.t, 2), "ready": s.ready, "load1": s.load1,
                "operator_rss_mib": round(s.rss as f64 / MIB, 1),
                "cpu_seconds": s.cpu.iter().map(|(k, v)| (k.to_string(), json!(round(*v, 2)))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
        self.insert_at = None;
    }

    /// What the operator's configured token rate alone allows.
    pub fn info_gate(&mut self, seconds: f64, rate: u32) {
        let bound = self.limit_seconds.is_some_and(|l| seconds > l);
        self.info(
            "  --token-requests-per-second alone needs",
            format!(
                "{seconds:.1} s at {rate}/s{}",
                if bound { " (MORE than the limit)" } else { "" }
            ),
            "",
            json!(seconds),
        );
    }

    /// Compares the CPU per credential with a run for another N (informative: another run).
    pub fn compare_with(&mut self, other: &Value, path: &Path) {
        let (Some(other_n), Some(other_cpu)) = (
            other["creation"]["credentials"].as_u64(),
            other["creation"]["operator_cpu_per_credential_seconds"].as_f64(),
        ) else {
            return;
        };
        let Some(cpu) = self.json["creation"]["operator_cpu_per_credential_seconds"].as_f64()
        else {
            return;
        };
        let other_load = other["phases"]["create"]["load_average_end"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        self.info(
            &format!(
                "  (informative, another run: CPU per credential at {} vs at {other_n})",
                self.n
            ),
            format!(
                "{:.2} vs {:.2} ms = {:.2}x ({}, its load {other_load})",
                1000.0 * cpu,
                1000.0 * other_cpu,
                cpu / other_cpu,
                path.display()
            ),
            "",
            json!({"other_credentials": other_n, "other_cpu_per_credential_seconds": other_cpu,
                   "ratio": cpu / other_cpu}),
        );
    }

    pub fn steady(&mut self, phase: &Phase) {
        self.phase(phase);
        let load = format!("{} -> {}", phase.load_start, phase.load_end);
        let writes = phase.operator_writes();
        let tokens: usize = phase.token_requests.iter().sum();
        let core = phase.cpu("operator") / phase.seconds;
        self.row(
            &format!(
                "steady state, all tokens valid ({:.0} s): writes / token requests / CPU",
                phase.seconds
            ),
            format!("{writes} / {tokens} / {:.2}% of a core", 100.0 * core),
            "0 / 0 / < 1%",
            Some(writes == 0.0 && tokens == 0 && core < 0.01),
            &load,
            json!({"writes": writes, "token_requests": tokens, "cpu_cores": core}),
        );
        self.info(
            "  steady state: API reads per minute",
            format!("{:.1}", phase.operator_reads() / (phase.seconds / 60.0)),
            &load,
            json!(phase.operator_reads() / (phase.seconds / 60.0)),
        );
    }

    pub fn renewal(&mut self, renewals: usize, requests: usize, lateness: &[f64], phase: &Phase) {
        self.phase(phase);
        let load = format!("{} -> {}", phase.load_start, phase.load_end);
        let per = |x: f64| {
            if renewals == 0 {
                f64::NAN
            } else {
                x / renewals as f64
            }
        };
        self.info(
            "renewals observed",
            format!("{renewals} in {:.0} s", phase.seconds),
            &load,
            json!(renewals),
        );
        let tokens = per(requests as f64);
        self.row(
            "token requests per renewal",
            format!("{tokens:.3}"),
            "<= 1",
            Some(tokens <= 1.005),
            &load,
            json!(tokens),
        );
        let writes = |resource: &str| {
            WRITE_VERBS
                .iter()
                .map(|verb| phase.operator(verb, resource))
                .sum::<f64>()
        };
        let events = per(writes("events"));
        let objects = per(phase.operator_writes() - writes("events"));
        self.row(
            "API writes per renewal",
            format!(
                "{objects:.2} object writes (Secret {:.2}, status {:.2}) + {events:.2} Events",
                per(writes("secrets")),
                per(writes("dscccredentials/status") + writes("dscccredentials"))
            ),
            "2 object writes + <= 1 Event",
            Some(objects <= 2.005 && events <= 1.005),
            &load,
            json!({"objects": objects, "events": events}),
        );
        let detail = phase
            .operator
            .iter()
            .filter(|((verb, _), _)| WRITE_VERBS.contains(&verb.as_str()))
            .map(|((verb, resource), v)| format!("{verb} {resource} {:.2}", per(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        self.info("  writes by verb and resource", detail, &load, Value::Null);
        self.info(
            "API reads per renewal",
            format!("{:.2}", per(phase.operator_reads())),
            &load,
            json!(per(phase.operator_reads())),
        );
        let p = |q| percentile(lateness, q);
        self.info(
            "renewal lateness (request - status.renewalTime) p50 / p99 / max",
            match (p(0.5), p(0.99), lateness.last()) {
                (Some(a), Some(b), Some(c)) => format!("{a:.2} / {b:.2} / {c:.2} s"),
                _ => "-".into(),
            },
            &load,
            json!({"p50": p(0.5), "p99": p(0.99), "max": lateness.last(), "min": lateness.first(),
                   "samples": lateness.len()}),
        );
        let early = lateness.iter().filter(|l| **l < 0.0).count();
        self.row(
            "renewals before their planned time",
            early.to_string(),
            "0",
            Some(early == 0),
            &load,
            json!(early),
        );
    }

    pub fn peak_rss_first_run(&mut self, bytes: u64, breakdown: Value, load: &str) {
        let mib = bytes as f64 / MIB;
        let target = rss_target_mib(self.n);
        self.row(
            &format!("peak RSS at {} credentials (phases 1-3)", self.n),
            format!(
                "{mib:.1} MiB (now: {} MiB anonymous, {} MiB file, {} threads)",
                breakdown["anonymous_mib"], breakdown["file_mib"], breakdown["threads"]
            ),
            &target.map_or(String::new(), |t| format!("<= {t:.0} MiB")),
            target.map(|t| mib <= t),
            load,
            json!({"peak_mib": mib, "breakdown_after": breakdown}),
        );
    }

    pub fn rss_after_creation(&mut self, breakdown: Value, load: &str) {
        self.info(
            "  RSS when all were Ready",
            format!(
                "{} MiB ({} MiB anonymous, {} MiB file; peak so far {} MiB)",
                breakdown["rss_mib"],
                breakdown["anonymous_mib"],
                breakdown["file_mib"],
                breakdown["peak_rss_mib"]
            ),
            load,
            breakdown,
        );
    }

    pub fn memory(
        &mut self,
        args: &Args,
        baseline: &Restart,
        created_in: Duration,
        live: &Phase,
        live_peak: u64,
        loaded: &Restart,
    ) {
        for phase in [&baseline.phase, live, &loaded.phase] {
            self.phase(phase);
        }
        let load = format!(
            "{} -> {}",
            baseline.phase.load_start, baseline.phase.load_end
        );
        let tokens: usize = baseline.phase.token_requests.iter().sum();
        let writes = baseline.phase.operator_writes();
        self.row(
            "restart: token requests / API writes",
            format!("{tokens} / {writes}"),
            "0 / 0",
            Some(tokens == 0 && writes == 0.0),
            &load,
            json!({"token_requests": tokens, "writes": writes,
                   "reads": baseline.phase.operator_reads(),
                   "seconds_to_ready": baseline.seconds_to_ready}),
        );
        self.info(
            "restart: API reads / operator CPU until settled",
            format!(
                "{} ({}) / {:.2} s; ready after {:.1} s",
                baseline.phase.operator_reads(),
                summary(
                    &baseline
                        .phase
                        .operator
                        .iter()
                        .filter(|((_, r), _)| r != "non-resource")
                        .map(|(k, v)| (k.clone(), *v))
                        .collect()
                ),
                baseline.phase.cpu("operator"),
                baseline.seconds_to_ready
            ),
            &load,
            json!(baseline.phase.cpu("operator")),
        );
        let base = baseline.peak_rss as f64 / MIB;
        let live_mib = live_peak as f64 / MIB;
        let loaded_mib = loaded.peak_rss as f64 / MIB;
        let m = args.unrelated_secrets;
        self.info(
            "peak RSS after restart, no unrelated Secrets",
            format!("{base:.1} MiB"),
            &load,
            json!(base),
        );
        let live_load = format!("{} -> {}", live.load_start, live.load_end);
        self.info(
            &format!("peak RSS while {m} unrelated Secrets are created"),
            format!(
                "{live_mib:.1} MiB (created in {:.0} s; operator CPU {:.2} s)",
                created_in.as_secs_f64(),
                live.cpu("operator")
            ),
            &live_load,
            json!(live_mib),
        );
        let loaded_load = format!("{} -> {}", loaded.phase.load_start, loaded.phase.load_end);
        self.info(
            &format!("peak RSS after restart with {m} unrelated Secrets"),
            format!("{loaded_mib:.1} MiB"),
            &loaded_load,
            json!(loaded_mib),
        );
        let added = live_mib.max(loaded_mib) - base;
        self.row(
            &format!(
                "unrelated Secrets ({m} x {} KiB) add",
                args.unrelated_secret_bytes / 1024
            ),
            format!("{added:.1} MiB"),
            "< 10 MiB",
            Some(added < 10.0),
            &loaded_load,
            json!(added),
        );
    }

    pub fn finish(&mut self, took: Duration, load: &str) {
        self.json["machine"]["load_average_end"] = json!(load);
        self.json["seconds"] = json!(round(took.as_secs_f64(), 1));
        self.json["table"] = json!(self.table());
    }

    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|r| r.figure.len()).max().unwrap_or(10);
        let value_width = self
            .rows
            .iter()
            .map(|r| r.value.len())
            .max()
            .unwrap_or(10)
            .min(70);
        let target_width = self
            .rows
            .iter()
            .map(|r| r.target.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = String::new();
        let flags = self.json["operator"]["flags"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = writeln!(out, "\noperator: dscc-token-operator run {flags}");
        let _ = writeln!(
            out,
            "machine: {} CPUs, load average {} at start, {} at end",
            self.json["machine"]["cpus"],
            self.json["machine"]["load_average_start"]
                .as_str()
                .unwrap_or(""),
            self.json["machine"]["load_average_end"]
                .as_str()
                .unwrap_or("")
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:width$}  {:value_width$}  {:target_width$}  {:7}  load average",
            "figure", "value", "target", "met?"
        );
        let _ = writeln!(
            out,
            "{}",
            "-".repeat(width + value_width + target_width + 34)
        );
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "NOT MET",
                None => "",
            };
            let _ = writeln!(
                out,
                "{:width$}  {:value_width$}  {:target_width$}  {met:7}  {}",
                row.figure, row.value, row.target, row.load
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:18} {:>7}  {:>20} {:>20} {:>20} {:>14} {:>12}  load average",
            "phase",
            "seconds",
            "operator CPU s (c)",
            "apiserver CPU s (c)",
            "etcd CPU s (c)",
            "kcm CPU s",
            "bench CPU s"
        );
        for PhaseCpu {
            name,
            seconds,
            cpu,
            load_start: start,
            load_end: end,
        } in &self.phases
        {
            let cell = |process: &str| {
                let s = cpu.get(process).copied().unwrap_or(0.0);
                format!("{s:.2} ({:.2})", s / seconds.max(1e-9))
            };
            let _ = writeln!(
                out,
                "{name:18} {seconds:>7.1}  {:>20} {:>20} {:>20} {:>14.2} {:>12.2}  {start} -> {end}",
                cell("operator"),
                cell("kube-apiserver"),
                cell("etcd"),
                cpu.get("kube-controller-manager").copied().unwrap_or(0.0),
                cpu.get("bench").copied().unwrap_or(0.0),
            );
        }
        out
    }
}

// ---- the plot ---------------------------------------------------------------------------

/// What the plot of one run shows.
pub struct Plot<'a> {
    pub n: usize,
    /// Seconds from the first create to each credential's create and Ready, sorted.
    pub created: &'a [f64],
    pub ready: &'a [f64],
    /// Seconds from the operator's start to each Ready of the cold start, sorted.
    pub cold_ready: &'a [f64],
    pub limit_seconds: Option<f64>,
    pub factor: f64,
    pub load: &'a str,
}

/// An SVG of credentials created and Ready over time, with the limit and the target.
pub fn plot_svg(plot: &Plot<'_>) -> String {
    let (width, height) = (760.0, 440.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 60.0);
    let last = plot.ready.last().copied().unwrap_or(0.0);
    let cold_last = plot.cold_ready.last().copied().unwrap_or(0.0);
    let deadline = plot.limit_seconds.map(|l| l * plot.factor).unwrap_or(0.0);
    let x_max = nice_ceiling(last.max(cold_last).max(deadline).max(1.0) * 1.05);
    let y_max = plot.n.max(1) as f64;
    let x = |t: f64| left + (width - left - right) * t / x_max;
    let y = |count: f64| height - bottom - (height - top - bottom) * count / y_max;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{} credentials: Ready over time (load average {} during creation)</text>"#,
        width / 2.0,
        plot.n,
        escape(plot.load)
    );
    // Axes and grid.
    let x_step = nice_step(x_max / 8.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#e0e0e0"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##,
            x(t),
            y(0.0),
            y(y_max),
            y(0.0) + 18.0,
            trim(t)
        );
        t += x_step;
    }
    let y_step = nice_step(y_max / 5.0);
    let mut c = 0.0;
    while c <= y_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#e0e0e0"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{5}</text>"##,
            x(0.0),
            y(c),
            x(x_max),
            x(0.0) - 6.0,
            y(c) + 4.0,
            trim(c)
        );
        c += y_step;
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="black"/><line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{3:.1}" stroke="black"/>"#,
        x(0.0),
        y(0.0),
        x(x_max),
        y(y_max)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the first create</text>"#,
        (left + width - right) / 2.0,
        height - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">credentials</text>"#,
        (top + height - bottom) / 2.0,
        (top + height - bottom) / 2.0
    );
    // The limit as a straight line, and the target.
    if let Some(limit) = plot.limit_seconds {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#2ca02c" stroke-width="1.5" stroke-dasharray="6 4"/>"##,
            x(0.0),
            y(0.0),
            x(limit),
            y(y_max)
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#d62728" stroke-width="1" stroke-dasharray="2 3"/>"##,
            x(deadline),
            y(0.0),
            y(y_max)
        );
    }
    let curve = |times: &[f64], color: &str, stroke: f64| {
        let step = (times.len() / 2000).max(1);
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (i, t) in times.iter().enumerate() {
            if i % step == 0 || i + 1 == times.len() {
                let _ = write!(points, " {:.1},{:.1}", x(*t), y((i + 1) as f64));
            }
        }
        format!(
            r#"<polyline points="{points}" fill="none" stroke="{color}" stroke-width="{stroke}"/>"#
        )
    };
    let _ = writeln!(svg, "{}", curve(plot.created, "#aaaaaa", 1.5));
    if !plot.cold_ready.is_empty() {
        let _ = writeln!(svg, "{}", curve(plot.cold_ready, "#9467bd", 2.0));
    }
    let _ = writeln!(svg, "{}", curve(plot.ready, "#1f77b4", 2.5));
    // Legend.
    let mut legend = vec![
        ("#1f77b4", "", format!("Ready: all after {last:.1} s")),
        ("#aaaaaa", "", "created (the bench's requests)".to_owned()),
    ];
    if !plot.cold_ready.is_empty() {
        legend.push((
            "#9467bd",
            "",
            format!("cold start (since the operator's start): all after {cold_last:.1} s"),
        ));
    }
    if let Some(limit) = plot.limit_seconds {
        legend.push((
            "#2ca02c",
            "6 4",
            format!("limit measured in this run: {limit:.1} s"),
        ));
        legend.push((
            "#d62728",
            "2 3",
            format!(
                "target {}x the limit: {deadline:.1} s (Ready at {:.2}x)",
                plot.factor,
                last / limit
            ),
        ));
    }
    // Bottom right: the curves rise from the bottom left to the top right.
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{:.1}" width="394" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#cccccc"/>"##,
        x(x_max) - 406.0,
        y(0.0) - 26.0 - 18.0 * (legend.len() - 1) as f64,
        18.0 * legend.len() as f64 + 6.0
    );
    for (i, (color, dash, label)) in legend.iter().enumerate() {
        let ly = y(0.0) - 12.0 - 18.0 * (legend.len() - 1 - i) as f64;
        let lx = x(x_max) - 400.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(label)
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.max(1e-9).log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn nice_ceiling(x: f64) -> f64 {
    let step = nice_step(x / 8.0);
    (x / step).ceil() * step
}

fn trim(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
