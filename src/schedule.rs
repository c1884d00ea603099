//! When to renew a token and when to retry after a failure: pure arithmetic on times.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

/// How long before expiry a token is renewed, from the credential's spec.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RefreshBefore {
    /// Renew when a third of the lifetime remains.
    #[default]
    Default,
    /// Renew this long before expiry (falls back to the default if not shorter than the lifetime).
    Duration(SignedDuration),
    /// Renew when this percentage (1-99) of the lifetime remains.
    Percentage(u8),
}

/// At most this fraction of the lifetime is taken off the renewal time as jitter.
const JITTER_FRACTION: f64 = 0.05;

/// The time to request the next token for a token valid from `issued_at` to `expires_at`.
///
/// The jitter spreads renewals of many credentials over up to 5% of the lifetime, and only
/// ever moves the renewal earlier; the result is rounded down to a whole second. It is
/// derived from `jitter_seed`, so the same token gets the same renewal time after an operator
/// restart. No renewal comes sooner than `min_interval` after the token was issued: an
/// endpoint that issues tokens of a few seconds cannot make the operator ask in a loop.
/// The arithmetic is checked throughout: the times may come from an edited Secret.
pub fn renewal_time(
    issued_at: Timestamp,
    expires_at: Timestamp,
    refresh: RefreshBefore,
    jitter_seed: u64,
    min_interval: SignedDuration,
) -> Timestamp {
    let floor = issued_at.checked_add(min_interval).unwrap_or(issued_at);
    let lifetime = expires_at.duration_since(issued_at);
    if lifetime <= SignedDuration::ZERO {
        return expires_at.max(floor);
    }
    let default_before = lifetime / 3;
    let before = match refresh {
        RefreshBefore::Default => default_before,
        RefreshBefore::Duration(d) if d > SignedDuration::ZERO && d < lifetime => d,
        RefreshBefore::Duration(_) => default_before,
        RefreshBefore::Percentage(p) => lifetime.mul_f64(f64::from(p.clamp(1, 99)) / 100.0),
    };
    let jitter = lifetime.mul_f64(JITTER_FRACTION * unit_interval(jitter_seed));
    let renewal = expires_at
        .checked_sub(before)
        .and_then(|t| t.checked_sub(jitter))
        .unwrap_or(issued_at);
    // Whole seconds, rounded down (earlier is safe): Kubernetes times hold no fractions and
    // the status, the metrics and the requeue must agree. Never before the token was issued:
    // with refreshBeforePercentage 99 and full jitter the arithmetic could land there.
    let renewal = Timestamp::from_second(renewal.as_second()).unwrap_or(renewal);
    renewal.max(issued_at).max(floor)
}

/// A seed for [`renewal_time`] that is stable for one token of one credential.
pub fn jitter_seed(credential_uid: &str, issued_at: Timestamp) -> u64 {
    let digest = Sha256::new()
        .chain_update(credential_uid.as_bytes())
        .chain_update(issued_at.as_second().to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// Maps a seed to [0, 1).
fn unit_interval(seed: u64) -> f64 {
    (seed >> 11) as f64 / (1u64 << 53) as f64
}

/// How retries after failed token requests are spaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// First delay after a transient failure (connect errors, timeouts, 5xx, 429).
    pub transient_initial: Duration,
    /// Longest delay between transient retries.
    pub transient_max: Duration,
    /// First delay after a permanent failure (rejected credentials, bad scope).
    pub permanent_initial: Duration,
    /// Longest delay between retries of a permanent failure.
    pub permanent_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            transient_initial: Duration::from_secs(5),
            transient_max: Duration::from_secs(5 * 60),
            permanent_initial: Duration::from_secs(10 * 60),
            permanent_max: Duration::from_secs(60 * 60),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt number `failed_attempts + 1`: exponential, with up to 20% of jitter
    /// taken off, and never shorter than the server's `Retry-After`.
    pub fn delay(
        &self,
        failed_attempts: u32,
        permanent: bool,
        retry_after: Option<Duration>,
        jitter_seed: u64,
    ) -> Duration {
        let (initial, max) = if permanent {
            (self.permanent_initial, self.permanent_max)
        } else {
            (self.transient_initial, self.transient_max)
        };
        let exponent = failed_attempts.saturating_sub(1).min(20);
        let backoff = initial.saturating_mul(1u32 << exponent).min(max);
        let jittered = backoff.mul_f64(1.0 - 0.2 * unit_interval(jitter_seed));
        match retry_after {
            Some(server) if server > jittered => server,
            _ => jittered,
        }
    }
}

/// Error for a duration string that is not of the form `1h30m`, `20m`, `90s`, `500ms`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0:?} is not a duration such as 20m, 90s or 1h30m")]
pub struct InvalidDuration(pub String);

/// Parses a Go-style duration (`1h30m`, `20m`, `1.5h`, `90s`, `250ms`), as Kubernetes does.
pub fn parse_duration(text: &str) -> Result<SignedDuration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_owned());
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    if !(total > 0.0 && total.is_finite()) {
        return Err(invalid());
    }
    SignedDuration::try_from_secs_f64(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    const TWO_HOURS: i64 = 7200;
    const FIFTEEN_MINUTES: i64 = 900;

    #[test]
    fn renews_a_third_of_the_lifetime_before_expiry_without_jitter() {
        let renewal = renewal_time(
            at(0),
            at(TWO_HOURS),
            RefreshBefore::Default,
            0,
            SignedDuration::ZERO,
        );
        assert_eq!(renewal, at(TWO_HOURS - 2400));
    }

    #[test]
    fn renews_fifteen_minute_tokens_after_ten_minutes_without_jitter() {
        let renewal = renewal_time(
            at(0),
            at(FIFTEEN_MINUTES),
            RefreshBefore::Default,
            0,
            SignedDuration::ZERO,
        );
        assert_eq!(renewal, at(600));
    }

    #[test]
    fn jitter_only_moves_renewal_earlier_and_by_at_most_five_percent() {
        for (lifetime, refresh) in [
            (TWO_HOURS, RefreshBefore::Default),
            (FIFTEEN_MINUTES, RefreshBefore::Default),
            (TWO_HOURS, RefreshBefore::Percentage(10)),
            (
                TWO_HOURS,
                RefreshBefore::Duration(SignedDuration::from_mins(20)),
            ),
        ] {
            let planned = renewal_time(at(0), at(lifetime), refresh, 0, SignedDuration::ZERO);
            let mut earliest = planned;
            for seed in (0..2000u64).map(|i| jitter_seed(&format!("uid-{i}"), at(0))) {
                let renewal =
                    renewal_time(at(0), at(lifetime), refresh, seed, SignedDuration::ZERO);
                assert!(renewal <= planned, "jitter moved renewal later");
                let earlier_by = planned.duration_since(renewal).as_secs_f64();
                // 5% of the lifetime, plus the rounding down to a whole second.
                assert!(earlier_by < lifetime as f64 * 0.05 + 1.0);
                assert_eq!(renewal.subsec_nanosecond(), 0);
                earliest = earliest.min(renewal);
            }
            // The spread is real: some seed moves it by more than 4% of the lifetime.
            assert!(planned.duration_since(earliest).as_secs_f64() > lifetime as f64 * 0.04);
        }
    }

    #[test]
    fn the_same_token_gets_the_same_renewal_time_after_a_restart() {
        let seed = jitter_seed("8d0c2f4e", at(5));
        assert_eq!(seed, jitter_seed("8d0c2f4e", at(5)));
        assert_ne!(seed, jitter_seed("8d0c2f4e", at(6)));
        assert_ne!(seed, jitter_seed("other", at(5)));
    }

    #[test]
    fn refresh_before_is_taken_as_is_when_shorter_than_the_lifetime() {
        let refresh = RefreshBefore::Duration(SignedDuration::from_mins(20));
        assert_eq!(
            renewal_time(at(0), at(TWO_HOURS), refresh, 0, SignedDuration::ZERO),
            at(TWO_HOURS - 1200)
        );
    }

    #[test]
    fn refresh_before_longer_than_the_lifetime_falls_back_to_a_third() {
        let refresh = RefreshBefore::Duration(SignedDuration::from_hours(3));
        assert_eq!(
            renewal_time(at(0), at(FIFTEEN_MINUTES), refresh, 0, SignedDuration::ZERO),
            at(600)
        );
    }

    #[test]
    fn refresh_before_percentage_is_the_share_of_the_lifetime_that_remains() {
        let renewal = renewal_time(
            at(0),
            at(TWO_HOURS),
            RefreshBefore::Percentage(25),
            0,
            SignedDuration::ZERO,
        );
        assert_eq!(renewal, at(5400));
    }

    #[test]
    fn renewal_is_never_before_issuance() {
        let renewal = renewal_time(
            at(0),
            at(100),
            RefreshBefore::Percentage(99),
            u64::MAX,
            SignedDuration::ZERO,
        );
        assert_eq!(renewal, at(0));
    }

    #[test]
    fn tokens_of_a_few_seconds_are_renewed_no_sooner_than_the_floor() {
        let floor = SignedDuration::from_secs(30);
        for lifetime in [1, 2, 3, 10] {
            let renewal = renewal_time(at(0), at(lifetime), RefreshBefore::Default, 0, floor);
            assert_eq!(renewal, at(30), "{lifetime}s tokens");
        }
        let two_hours = renewal_time(at(0), at(TWO_HOURS), RefreshBefore::Default, 0, floor);
        assert_eq!(
            two_hours,
            at(TWO_HOURS - 2400),
            "the floor does not touch normal tokens"
        );
    }

    #[test]
    fn extreme_times_never_overflow() {
        let earliest = Timestamp::MIN;
        let latest = Timestamp::MAX;
        for (issued, expires) in [(earliest, latest), (latest, earliest), (earliest, earliest)] {
            for refresh in [RefreshBefore::Percentage(99), RefreshBefore::Default] {
                let renewal = renewal_time(
                    issued,
                    expires,
                    refresh,
                    u64::MAX,
                    SignedDuration::from_secs(30),
                );
                assert!(renewal >= issued.min(expires));
            }
        }
    }

    #[test]
    fn transient_backoff_doubles_up_to_its_cap() {
        let policy = RetryPolicy::default();
        let delays: Vec<u64> = (1..=9)
            .map(|n| policy.delay(n, false, None, 0).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn permanent_failures_retry_slowly() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(1, true, None, 0), Duration::from_secs(600));
        assert_eq!(policy.delay(4, true, None, 0), Duration::from_secs(3600));
        assert_eq!(policy.delay(40, true, None, 0), Duration::from_secs(3600));
    }

    #[test]
    fn backoff_jitter_takes_off_at_most_a_fifth() {
        let policy = RetryPolicy::default();
        for seed in [0, 1, u64::MAX / 3, u64::MAX] {
            let delay = policy.delay(3, false, None, seed);
            assert!(delay <= Duration::from_secs(20) && delay >= Duration::from_secs(16));
        }
    }

    #[test]
    fn retry_after_from_the_server_is_honoured_when_longer() {
        let policy = RetryPolicy::default();
        let server = Some(Duration::from_secs(120));
        assert_eq!(policy.delay(1, false, server, 0), Duration::from_secs(120));
        let short = Some(Duration::from_secs(1));
        assert_eq!(policy.delay(1, false, short, 0), Duration::from_secs(5));
    }

    #[test]
    fn parses_kubernetes_style_durations() {
        assert_eq!(parse_duration("20m"), Ok(SignedDuration::from_mins(20)));
        assert_eq!(parse_duration("1h30m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("1.5h"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("90s"), Ok(SignedDuration::from_secs(90)));
        assert_eq!(
            parse_duration("250ms"),
            Ok(SignedDuration::from_millis(250))
        );
        for bad in ["", "20", "m", "1d", "-5m", "0s", "1h 30m", "1..5h"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }
}
