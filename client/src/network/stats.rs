//! Per-provider statistics over a sliding window, and the ejection state
//! of each provider, sans IO: every method takes the time (`now`) from its
//! caller, so tests drive it with a made-up clock.
//!
//! # What is kept
//!
//! Each provider has a ring buffer of its last [`StatsConfig::capacity`]
//! outcomes (default 64), each with the time it was recorded and, for a
//! success, the latency (time to the first checked part of the answer).
//! Only outcomes younger than [`StatsConfig::window`] (default 5 minutes)
//! count: older ones are ignored, so the statistics decay with time — a
//! provider that was slow ten minutes ago and has not been used since is
//! "unknown" again, not "slow". A ring buffer, rather than an EWMA, gives
//! true percentiles (the median, not a mean pulled by one stall) and a
//! hard age limit.
//!
//! * success rate: successes ÷ outcomes in the window;
//! * latency: the median (and p90) of the successes' latencies in the
//!   window.
//!
//! # Ejection
//!
//! After [`StatsConfig::eject_after`] consecutive failures (default 3) a
//! provider is ejected for a back-off of `base_backoff × 2^(n-1)` (n = how
//! many times in a row it has been ejected; default 5 s, doubling, at most
//! [`StatsConfig::max_backoff`] = 5 minutes). When the back-off has run
//! out it is admitted again on probation: its next outcome decides — a
//! failure ejects it again at once with the doubled back-off, a success
//! clears the failure count and the back-off. This is the outlier
//! detection of serious load balancers (consecutive errors, growing
//! ejection time).
//!
//! A provider can also be *held* (not chosen, but not counted as failing):
//! after `429` until its `retry-after`, after `402` (no deposit there) for
//! a while. Holding says nothing about its health.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Settings of the statistics and of ejection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StatsConfig {
    /// Outcomes older than this are ignored (default 300 s).
    pub window: Duration,
    /// Most outcomes kept per provider (default 64).
    pub capacity: usize,
    /// Consecutive failures that eject a provider (default 3).
    pub eject_after: u32,
    /// The first ejection's length (default 5 s); each further ejection in
    /// a row doubles it.
    pub base_backoff: Duration,
    /// The longest ejection (default 300 s).
    pub max_backoff: Duration,
}

impl Default for StatsConfig {
    fn default() -> StatsConfig {
        StatsConfig {
            window: Duration::from_secs(300),
            capacity: 64,
            eject_after: 3,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    at: Instant,
    /// `Some(latency)` for a success.
    latency: Option<Duration>,
}

/// Whether a provider may be chosen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Chosen by the rule.
    Admitted,
    /// Back after an ejection: chosen by the rule; its next outcome
    /// decides.
    Probation,
    /// Ejected after consecutive failures, until the given time.
    Ejected(Instant),
    /// Held (429, 402) until the given time; not a failure.
    Held(Instant),
}

impl Health {
    /// Whether the rule may choose it.
    pub fn is_available(self) -> bool {
        matches!(self, Health::Admitted | Health::Probation)
    }
}

/// One provider's window of outcomes and its ejection state.
#[derive(Debug, Clone, Default)]
pub struct ProviderStats {
    outcomes: VecDeque<Outcome>,
    consecutive_failures: u32,
    /// Ejections in a row (reset by a success).
    ejections: u32,
    ejected_until: Option<Instant>,
    held_until: Option<Instant>,
    total_successes: u64,
    total_failures: u64,
}

/// A summary of one provider's window, for display and for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Outcomes in the window.
    pub samples: u32,
    /// Successes among them.
    pub successes: u32,
    /// Median latency of the successes in the window.
    pub p50: Option<Duration>,
    /// 90th percentile latency of the successes in the window.
    pub p90: Option<Duration>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Every success recorded, window or not.
    pub total_successes: u64,
    /// Every failure recorded, window or not.
    pub total_failures: u64,
}

impl ProviderStats {
    fn push(&mut self, cfg: &StatsConfig, o: Outcome) {
        if self.outcomes.len() >= cfg.capacity.max(1) {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(o);
    }

    /// A request succeeded; `latency` is its time to the first checked
    /// part.
    pub fn record_success(&mut self, cfg: &StatsConfig, now: Instant, latency: Duration) {
        self.push(
            cfg,
            Outcome {
                at: now,
                latency: Some(latency),
            },
        );
        self.total_successes += 1;
        self.consecutive_failures = 0;
        self.ejections = 0;
        self.ejected_until = None;
    }

    /// A request failed in a way that counts against the provider
    /// (unreachable, 5xx, a broken answer, a verification failure).
    pub fn record_failure(&mut self, cfg: &StatsConfig, now: Instant) {
        self.push(
            cfg,
            Outcome {
                at: now,
                latency: None,
            },
        );
        self.total_failures += 1;
        let on_probation = self.ejections > 0 && self.ejected_until.is_some_and(|u| u <= now);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if on_probation || self.consecutive_failures >= cfg.eject_after.max(1) {
            let shift = self.ejections.min(20);
            let backoff = cfg
                .base_backoff
                .checked_mul(1u32 << shift)
                .unwrap_or(cfg.max_backoff)
                .min(cfg.max_backoff);
            self.ejections = self.ejections.saturating_add(1);
            self.ejected_until = Some(now + backoff);
        }
    }

    /// Do not choose the provider until `until` (429 retry-after, 402 no
    /// deposit); not a failure.
    pub fn hold(&mut self, until: Instant) {
        self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
    }

    /// Whether it may be chosen at `now`.
    pub fn health(&self, now: Instant) -> Health {
        if let Some(h) = self.held_until.filter(|h| *h > now) {
            return Health::Held(h);
        }
        match self.ejected_until {
            Some(u) if u > now => Health::Ejected(u),
            Some(_) => Health::Probation,
            None => Health::Admitted,
        }
    }

    /// The window's summary at `now`.
    pub fn snapshot(&self, cfg: &StatsConfig, now: Instant) -> StatsSnapshot {
        let live = self
            .outcomes
            .iter()
            .filter(|o| now.saturating_duration_since(o.at) < cfg.window);
        let mut samples = 0u32;
        let mut lat: Vec<Duration> = Vec::new();
        for o in live {
            samples += 1;
            if let Some(l) = o.latency {
                lat.push(l);
            }
        }
        lat.sort_unstable();
        StatsSnapshot {
            samples,
            successes: lat.len() as u32,
            p50: quantile(&lat, 50),
            p90: quantile(&lat, 90),
            consecutive_failures: self.consecutive_failures,
            total_successes: self.total_successes,
            total_failures: self.total_failures,
        }
    }
}

/// The nearest-rank `pct` percentile of sorted values.
fn quantile(sorted: &[Duration], pct: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

impl StatsSnapshot {
    /// The success rate the rule uses: `(successes + 2) / (samples + 2)`,
    /// two virtual successes so that a provider with no history is not
    /// punished and one failure among few samples is not fatal.
    pub fn smoothed_success(&self) -> f64 {
        (f64::from(self.successes) + 2.0) / (f64::from(self.samples) + 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn window_drops_old_outcomes_and_ring_keeps_capacity() {
        let cfg = StatsConfig {
            capacity: 4,
            ..StatsConfig::default()
        };
        let t0 = Instant::now();
        let mut s = ProviderStats::default();
        for i in 0..6u64 {
            s.record_success(&cfg, t0 + Duration::from_secs(i), ms(10 * (i + 1)));
        }
        let snap = s.snapshot(&cfg, t0 + Duration::from_secs(6));
        // Only the last 4 (30..60 ms) are kept.
        assert_eq!(snap.samples, 4);
        assert_eq!(snap.p50, Some(ms(40)));
        assert_eq!(snap.p90, Some(ms(60)));
        assert_eq!(snap.total_successes, 6);
        // Past the window every outcome is gone: the provider is unknown.
        let later = s.snapshot(&cfg, t0 + Duration::from_secs(6) + cfg.window);
        assert_eq!(later.samples, 0);
        assert_eq!(later.p50, None);
        assert_eq!(later.smoothed_success(), 1.0);
    }

    #[test]
    fn percentiles_and_success_rate() {
        let cfg = StatsConfig::default();
        let t0 = Instant::now();
        let mut s = ProviderStats::default();
        for l in [5, 1, 4, 2, 3, 100, 6, 7, 8, 9] {
            s.record_success(&cfg, t0, ms(l));
        }
        s.record_failure(&cfg, t0);
        s.record_failure(&cfg, t0);
        let snap = s.snapshot(&cfg, t0);
        assert_eq!((snap.samples, snap.successes), (12, 10));
        assert_eq!(snap.p50, Some(ms(5)));
        assert_eq!(snap.p90, Some(ms(9)));
        assert!((snap.smoothed_success() - 12.0 / 14.0).abs() < 1e-12);
    }

    #[test]
    fn ejection_backoff_doubles_and_success_readmits() {
        let cfg = StatsConfig::default();
        let t0 = Instant::now();
        let mut s = ProviderStats::default();
        s.record_failure(&cfg, t0);
        s.record_failure(&cfg, t0);
        assert_eq!(s.health(t0), Health::Admitted);
        s.record_failure(&cfg, t0);
        assert_eq!(s.health(t0), Health::Ejected(t0 + Duration::from_secs(5)));
        // Back on probation after 5 s; one failure ejects again for 10 s.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(s.health(t1), Health::Probation);
        s.record_failure(&cfg, t1);
        assert_eq!(s.health(t1), Health::Ejected(t1 + Duration::from_secs(10)));
        let t2 = t1 + Duration::from_secs(10);
        s.record_failure(&cfg, t2);
        assert_eq!(s.health(t2), Health::Ejected(t2 + Duration::from_secs(20)));
        // A success on probation clears everything.
        let t3 = t2 + Duration::from_secs(20);
        s.record_success(&cfg, t3, ms(3));
        assert_eq!(s.health(t3), Health::Admitted);
        s.record_failure(&cfg, t3);
        assert_eq!(s.health(t3), Health::Admitted);
    }

    #[test]
    fn backoff_is_capped() {
        let cfg = StatsConfig::default();
        let mut t = Instant::now();
        let mut s = ProviderStats::default();
        for _ in 0..40 {
            s.record_failure(&cfg, t);
            if let Health::Ejected(u) = s.health(t) {
                assert!(u - t <= cfg.max_backoff);
                t = u;
            }
        }
        assert_eq!(s.health(t), Health::Probation);
    }

    #[test]
    fn hold_is_not_a_failure() {
        let cfg = StatsConfig::default();
        let t0 = Instant::now();
        let mut s = ProviderStats::default();
        s.hold(t0 + Duration::from_secs(7));
        assert_eq!(s.health(t0), Health::Held(t0 + Duration::from_secs(7)));
        assert_eq!(s.health(t0 + Duration::from_secs(7)), Health::Admitted);
        assert_eq!(s.snapshot(&cfg, t0).samples, 0);
    }
}
