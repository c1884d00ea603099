//! The token endpoint as a shared resource: one gate per host that every request to it passes.
//!
//! - a rate limit (governor's GCRA), which adapts: halved after a 429 and raised again slowly
//!   while the host answers without complaint;
//! - a pause of the whole host when a 429 (or a 503 with `Retry-After`) says how long to wait,
//!   so no credential sends anything to that host before then;
//! - a cap on requests in flight, so that a host that never answers cannot hold every
//!   reconcile slot.
//!
//! Admission never waits long: a wait beyond [`GateConfig::inline_wait`] is handed back to the
//! caller, which requeues the credential for then and frees its slot for others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// How the gate behaves.
#[derive(Clone, Debug)]
pub struct GateConfig {
    /// The highest rate per host, in requests per second (`--token-requests-per-second`).
    pub max_rate: NonZeroU32,
    /// The rate never falls below this after 429s.
    pub min_rate: NonZeroU32,
    /// Requests in flight per host at most.
    pub max_in_flight: usize,
    /// After this long without a 429 the rate goes up a step again.
    pub recovery_interval: Duration,
    /// Waits up to this long are waited out at once; longer ones are handed back.
    pub inline_wait: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            max_rate: NonZeroU32::new(10).expect("non-zero"),
            min_rate: NonZeroU32::new(1).expect("non-zero"),
            max_in_flight: 4,
            recovery_interval: Duration::from_secs(30),
            inline_wait: Duration::from_secs(1),
        }
    }
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Host<C: Clock> {
    rate: u32,
    limiter: Arc<Limiter<C>>,
    paused_until: Option<C::Instant>,
    in_flight: usize,
    /// When the rate last went down or up.
    last_change: C::Instant,
}

/// What a host said about a request, as far as the gate cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAnswer {
    /// A normal answer (success or an ordinary error).
    Normal,
    /// 429, or 503 with a retry hint: pause the host this long and slow down.
    Throttled(Duration),
}

/// The per-host gate. Cheap to share (`Arc`).
pub struct HostGate<C: Clock + Clone = DefaultClock> {
    config: GateConfig,
    clock: C,
    hosts: Mutex<HashMap<String, Host<C>>>,
}

/// Permission to send one request to a host; dropping it frees the in-flight place.
pub struct Permit<C: Clock + Clone = DefaultClock> {
    gate: Arc<HostGate<C>>,
    host: String,
}

impl<C: Clock + Clone> Drop for Permit<C> {
    fn drop(&mut self) {
        let mut hosts = self.gate.lock();
        if let Some(host) = hosts.get_mut(&self.host) {
            host.in_flight = host.in_flight.saturating_sub(1);
        }
    }
}

/// Why a request cannot go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotNow {
    /// The host asked for a pause; it ends in this long.
    Paused(Duration),
    /// The rate limit allows the next request in this long.
    RateLimited(Duration),
    /// Too many requests to this host are in flight; try again in a moment.
    Busy,
}

impl NotNow {
    /// How long to wait before asking again.
    pub fn wait(self) -> Duration {
        match self {
            NotNow::Paused(wait) | NotNow::RateLimited(wait) => wait,
            NotNow::Busy => Duration::from_secs(1),
        }
    }
}

impl HostGate<DefaultClock> {
    /// A gate on the system's monotonic clock.
    pub fn new(config: GateConfig) -> Arc<Self> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> HostGate<C> {
    /// A gate on `clock` (tests use a fake one).
    pub fn with_clock(config: GateConfig, clock: C) -> Arc<Self> {
        Arc::new(Self {
            config,
            clock,
            hosts: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Host<C>>> {
        crate::lock(&self.hosts)
    }

    fn limiter(&self, rate: u32) -> Arc<Limiter<C>> {
        let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
        Arc::new(RateLimiter::direct_with_clock(
            Quota::per_second(rate),
            self.clock.clone(),
        ))
    }

    /// Admits one request to `host` now, or says how long until it may go. An `urgent`
    /// request (a token about to expire) passes a pause, not the rate limit.
    pub fn try_admit(self: &Arc<Self>, host: &str, urgent: bool) -> Result<Permit<C>, NotNow> {
        let now = self.clock.now();
        let mut hosts = self.lock();
        let max_rate = self.config.max_rate.get();
        let host_state = hosts.entry(host.to_owned()).or_insert_with(|| Host {
            rate: max_rate,
            limiter: self.limiter(max_rate),
            paused_until: None,
            in_flight: 0,
            last_change: now,
        });
        if let Some(until) = host_state.paused_until {
            if until > now && !urgent {
                return Err(NotNow::Paused(until.duration_since(now).into()));
            }
            host_state.paused_until = None;
        }
        if host_state.in_flight >= self.config.max_in_flight {
            return Err(NotNow::Busy);
        }
        if let Err(not_until) = host_state.limiter.check() {
            return Err(NotNow::RateLimited(not_until.wait_time_from(now)));
        }
        host_state.in_flight += 1;
        Ok(Permit {
            gate: self.clone(),
            host: host.to_owned(),
        })
    }

    /// Admits one request to `host`, waiting out short waits; a long one is returned.
    pub async fn admit(self: &Arc<Self>, host: &str, urgent: bool) -> Result<Permit<C>, NotNow> {
        loop {
            match self.try_admit(host, urgent) {
                Ok(permit) => return Ok(permit),
                Err(NotNow::Busy) => return Err(NotNow::Busy),
                Err(not_now) if not_now.wait() <= self.config.inline_wait => {
                    tokio::time::sleep(not_now.wait()).await;
                }
                Err(not_now) => return Err(not_now),
            }
        }
    }

    /// Records what the host answered: a throttling answer pauses the host and halves its
    /// rate; a quiet period raises the rate a step.
    pub fn record(&self, host: &str, answer: HostAnswer) {
        let now = self.clock.now();
        let mut hosts = self.lock();
        let Some(state) = hosts.get_mut(host) else {
            return;
        };
        let since_change: Duration = now.duration_since(state.last_change).into();
        match answer {
            HostAnswer::Throttled(pause) => {
                let until = now + pause.into();
                state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
                // One burst of 429s is one signal: halve once per second, not per answer.
                if since_change >= Duration::from_secs(1)
                    || state.rate == self.config.max_rate.get()
                {
                    let rate = (state.rate / 2).max(self.config.min_rate.get());
                    if rate != state.rate {
                        tracing::info!(host, rate, "token endpoint throttles; slowing down");
                    }
                    state.rate = rate;
                    state.limiter = self.limiter(rate);
                    state.last_change = now;
                }
            }
            HostAnswer::Normal => {
                let max = self.config.max_rate.get();
                if state.rate < max && since_change >= self.config.recovery_interval {
                    state.rate = (state.rate + (state.rate / 4).max(1)).min(max);
                    state.limiter = self.limiter(state.rate);
                    state.last_change = now;
                }
            }
        }
    }

    /// The current rate of `host`, in requests per second.
    pub fn rate(&self, host: &str) -> u32 {
        self.lock()
            .get(host)
            .map_or(self.config.max_rate.get(), |h| h.rate)
    }

    /// How long `host` is still paused, if it is.
    pub fn paused_for(&self, host: &str) -> Option<Duration> {
        let now = self.clock.now();
        let until = self.lock().get(host)?.paused_until?;
        (until > now).then(|| until.duration_since(now).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn gate(rate: u32) -> (Arc<HostGate<FakeRelativeClock>>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = GateConfig {
            max_rate: NonZeroU32::new(rate).unwrap(),
            max_in_flight: 100,
            ..GateConfig::default()
        };
        (HostGate::with_clock(config, clock.clone()), clock)
    }

    fn admitted_within(gate: &Arc<HostGate<FakeRelativeClock>>, host: &str) -> usize {
        let mut permits = vec![];
        while let Ok(permit) = gate.try_admit(host, false) {
            permits.push(permit);
        }
        permits.len()
    }

    #[test]
    fn allows_a_burst_of_the_rate_then_spaces_requests() {
        let (gate, clock) = gate(2);
        assert_eq!(admitted_within(&gate, "a:443"), 2);
        assert!(
            matches!(gate.try_admit("a:443", false), Err(NotNow::RateLimited(wait)) if wait == Duration::from_millis(500))
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(admitted_within(&gate, "a:443"), 1);
        assert_eq!(
            admitted_within(&gate, "b:443"),
            2,
            "another host has its own budget"
        );
    }

    #[test]
    fn a_throttling_answer_pauses_the_whole_host_until_then() {
        let (gate, clock) = gate(10);
        let _first = gate.try_admit("a:443", false).unwrap();
        gate.record("a:443", HostAnswer::Throttled(Duration::from_secs(30)));
        assert_eq!(
            gate.try_admit("a:443", false).err(),
            Some(NotNow::Paused(Duration::from_secs(30)))
        );
        clock.advance(Duration::from_secs(29));
        assert!(matches!(
            gate.try_admit("a:443", false),
            Err(NotNow::Paused(_))
        ));
        assert!(
            gate.try_admit("a:443", true).is_ok(),
            "a token about to expire may pass"
        );
        clock.advance(Duration::from_secs(1));
        assert!(gate.try_admit("a:443", false).is_ok());
        assert!(
            gate.try_admit("b:443", false).is_ok(),
            "other hosts are not paused"
        );
    }

    #[test]
    fn the_rate_halves_after_throttling_and_recovers_slowly() {
        let (gate, clock) = gate(8);
        let _ = gate.try_admit("a:443", false);
        gate.record("a:443", HostAnswer::Throttled(Duration::ZERO));
        gate.record("a:443", HostAnswer::Throttled(Duration::ZERO));
        assert_eq!(gate.rate("a:443"), 4, "one burst of 429s halves once");
        clock.advance(Duration::from_secs(2));
        gate.record("a:443", HostAnswer::Throttled(Duration::ZERO));
        assert_eq!(gate.rate("a:443"), 2);
        clock.advance(Duration::from_secs(10));
        gate.record("a:443", HostAnswer::Normal);
        assert_eq!(gate.rate("a:443"), 2, "not before the recovery interval");
        let mut rates = vec![];
        for _ in 0..5 {
            clock.advance(Duration::from_secs(30));
            gate.record("a:443", HostAnswer::Normal);
            rates.push(gate.rate("a:443"));
        }
        assert_eq!(rates, [3, 4, 5, 6, 7]);
        for _ in 0..5 {
            clock.advance(Duration::from_secs(30));
            gate.record("a:443", HostAnswer::Normal);
        }
        assert_eq!(gate.rate("a:443"), 8, "never above the configured rate");
    }

    #[test]
    fn at_most_the_configured_requests_are_in_flight_per_host() {
        let clock = FakeRelativeClock::default();
        let config = GateConfig {
            max_in_flight: 2,
            ..GateConfig::default()
        };
        let gate = HostGate::with_clock(config, clock);
        let first = gate.try_admit("slow:443", false).unwrap();
        let _second = gate.try_admit("slow:443", false).unwrap();
        assert_eq!(gate.try_admit("slow:443", false).err(), Some(NotNow::Busy));
        assert!(
            gate.try_admit("fast:443", false).is_ok(),
            "other hosts are not held up"
        );
        drop(first);
        assert!(gate.try_admit("slow:443", false).is_ok());
    }
}
