//! The choice rule and the failover rule, sans IO: which provider gets a
//! request, in which order the others are tried, and what an error means
//! for the next try. Time and randomness come from the caller
//! ([`Router::order`] takes `now` and a [`Rng`]), so tests are
//! deterministic.
//!
//! # The choice rule
//!
//! Candidates are the providers whose verified enclaves serve the model
//! and whose **worst case** for this request (`max_cost` at the price
//! sheet's current offer: every byte of the sealed request a prompt token,
//! plus slack, and all `max_tokens` completion tokens) is within the
//! client's per-request limit. Providers that are ejected or held
//! ([`crate::network::stats`]) are left out, unless every candidate is
//! ejected: then the ejected ones are tried in the order they come back
//! (a "panic mode", so that a client whose whole network failed at once
//! still tries). Held providers (`429`, `402`) are never tried.
//!
//! Each candidate `i` gets a weight
//!
//! ```text
//! w_i = s_i^2 / ( (c_i / c_min) · (l_i / l_min) )
//! ```
//!
//! * `c_i`: its worst case for this request, nanoton (`c_min` the lowest
//!   among the candidates); a provider twice as dear gets half the weight;
//! * `l_i`: the median latency (time to the first checked part) of its
//!   successes in the statistics window, at least 1 ms; a provider with no
//!   latency sample counts as the median of the others' (as 1 when no one
//!   has one); twice as slow, half the weight;
//! * `s_i = (successes + 2) / (outcomes + 2)` in the window.
//!
//! The exponents are [`RouteConfig::price_exponent`] (1),
//! [`RouteConfig::latency_exponent`] (1) and
//! [`RouteConfig::success_exponent`] (2). The first provider is drawn at
//! random with probability `w_i / Σw`, so load spreads in proportion to
//! the weights instead of everyone rushing to the single best provider;
//! the failover order is the rest drawn the same way without replacement.
//!
//! **Exploration**: with probability [`RouteConfig::explore_share`] (5 %)
//! the first provider is instead drawn uniformly among candidates with
//! fewer than [`RouteConfig::min_samples`] (3) outcomes in the window, when
//! there are any, so that new or long-unused providers get measured.
//!
//! # The failover rule ([`Decision`], [`decide`])
//!
//! A request is sealed to one enclave; trying another provider means
//! sealing it again to that provider's enclave (a new request id, a new
//! ciphertext), never resending the same bytes. Before the provider
//! answers `200` (before the answer starts streaming):
//!
//! | what happened | next provider? | counts against it |
//! |---|---|---|
//! | unreachable, connection broken before the answer | yes | failure |
//! | `5xx` | yes | failure |
//! | `409` that re-verifying did not explain (the SDK already re-verified and resealed once to the same provider when its evidence changed) | yes | failure |
//! | its evidence is unavailable or does not verify | yes | failure |
//! | an unusable price sheet (or one that contradicts the verified claims) | yes | failure |
//! | `429` | yes | held until `retry-after` (else 10 s) |
//! | `402` (no deposit, or not enough, in its payment contract) | yes, to a provider whose payment contract holds a deposit for this account | held for [`RouteConfig::no_deposit_hold`] |
//! | its exact worst case is over the limit, it does not serve the model | yes | no |
//! | other `4xx` (`400`, `401`, `403`, `413`, ...) | no: another provider would refuse the same request | no |
//! | the request itself is invalid, or cannot be sealed or signed | no | no |
//!
//! Once the provider has answered `200` the request has reached its
//! enclave and may be billed: an answer that then breaks, or fails a
//! check, is returned to the caller as an error and never restarted
//! elsewhere (that could bill it twice); it counts as a failure of that
//! provider. A verified answer that ends in the enclave's error is the
//! caller's too (it was served and billed).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::client::ClientError;
use crate::network::stats::{Health, ProviderStats, StatsConfig, StatsSnapshot};

/// Who a provider is: the registry's owner address (`wc:hex`) for a
/// provider found on chain, its URL for one named on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(pub String);

impl std::fmt::Display for ProviderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Settings of the choice rule.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The statistics window and ejection settings.
    pub stats: StatsConfig,
    /// Exponent of the price ratio (default 1).
    pub price_exponent: f64,
    /// Exponent of the latency ratio (default 1).
    pub latency_exponent: f64,
    /// Exponent of the smoothed success rate (default 2).
    pub success_exponent: f64,
    /// Share of first choices drawn among providers with few samples
    /// (default 0.05).
    pub explore_share: f64,
    /// Fewer outcomes than this in the window make a provider "unknown"
    /// for exploration (default 3).
    pub min_samples: u32,
    /// How long a provider that answered `402` is held (default 60 s).
    pub no_deposit_hold: Duration,
    /// How long a provider that answered `429` without `retry-after` is
    /// held (default 10 s).
    pub rate_limit_hold: Duration,
    /// Most providers one request is tried on (default 4).
    pub max_attempts: usize,
}

impl Default for RouteConfig {
    fn default() -> RouteConfig {
        RouteConfig {
            stats: StatsConfig::default(),
            price_exponent: 1.0,
            latency_exponent: 1.0,
            success_exponent: 2.0,
            explore_share: 0.05,
            min_samples: 3,
            no_deposit_hold: Duration::from_secs(60),
            rate_limit_hold: Duration::from_secs(10),
            max_attempts: 4,
        }
    }
}

/// A candidate for one request: a provider whose verified enclaves serve
/// the model, with its worst case for this request at its current offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The provider.
    pub id: ProviderId,
    /// The most the request can cost there, nanoton.
    pub worst_case: u128,
}

/// A small deterministic generator (SplitMix64, Steele, Lea & Flood,
/// "Fast splittable pseudorandom number generators", OOPSLA 2014). Load
/// spreading needs no cryptographic randomness; production seeds it from
/// the OS.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded by the operating system.
    pub fn from_os() -> Rng {
        let mut b = [0u8; 8];
        cocoon_protocol::rand_core::RngCore::fill_bytes(
            &mut cocoon_protocol::rand_core::OsRng,
            &mut b,
        );
        Rng(u64::from_le_bytes(b))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The routing state: every provider's statistics.
#[derive(Debug, Default)]
pub struct Router {
    config: RouteConfig,
    stats: HashMap<ProviderId, ProviderStats>,
}

impl Router {
    /// A router with these settings and no history.
    pub fn new(config: RouteConfig) -> Router {
        Router {
            config,
            stats: HashMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// Record a success with its latency.
    pub fn success(&mut self, id: &ProviderId, now: Instant, latency: Duration) {
        let cfg = self.config.stats.clone();
        self.stats
            .entry(id.clone())
            .or_default()
            .record_success(&cfg, now, latency);
    }

    /// Record a failure that counts against the provider.
    pub fn failure(&mut self, id: &ProviderId, now: Instant) {
        let cfg = self.config.stats.clone();
        self.stats
            .entry(id.clone())
            .or_default()
            .record_failure(&cfg, now);
    }

    /// Do not choose the provider before `until`.
    pub fn hold(&mut self, id: &ProviderId, until: Instant) {
        self.stats.entry(id.clone()).or_default().hold(until);
    }

    /// Whether the provider may be chosen at `now`.
    pub fn health(&self, id: &ProviderId, now: Instant) -> Health {
        self.stats
            .get(id)
            .map_or(Health::Admitted, |s| s.health(now))
    }

    /// The provider's window at `now` (empty when never used).
    pub fn snapshot(&self, id: &ProviderId, now: Instant) -> StatsSnapshot {
        self.stats
            .get(id)
            .cloned()
            .unwrap_or_default()
            .snapshot(&self.config.stats, now)
    }

    /// Forget providers not in `keep` (deregistered ones); the others'
    /// statistics survive.
    pub fn retain(&mut self, keep: &[ProviderId]) {
        self.stats.retain(|id, _| keep.contains(id));
    }

    /// The weights of the rule for `offers` at `now` (module docs), in
    /// the offers' order; `None` for one that is ejected or held.
    pub fn weights(&self, offers: &[Offer], now: Instant) -> Vec<Option<f64>> {
        let snaps: Vec<StatsSnapshot> = offers.iter().map(|o| self.snapshot(&o.id, now)).collect();
        let available: Vec<bool> = offers
            .iter()
            .map(|o| self.health(&o.id, now).is_available())
            .collect();
        let c_min = offers
            .iter()
            .zip(&available)
            .filter(|(_, a)| **a)
            .map(|(o, _)| o.worst_case)
            .min()
            .unwrap_or(1)
            .max(1) as f64;
        let mut known: Vec<f64> = snaps
            .iter()
            .zip(&available)
            .filter(|(_, a)| **a)
            .filter_map(|(s, _)| s.p50.map(latency_ms))
            .collect();
        known.sort_by(f64::total_cmp);
        let median = known.get(known.len().saturating_sub(1) / 2).copied();
        let l_of = |s: &StatsSnapshot| s.p50.map(latency_ms).or(median).unwrap_or(1.0);
        let l_min = snaps
            .iter()
            .zip(&available)
            .filter(|(_, a)| **a)
            .map(|(s, _)| l_of(s))
            .fold(f64::INFINITY, f64::min);
        offers
            .iter()
            .zip(&snaps)
            .zip(&available)
            .map(|((o, s), a)| {
                if !a {
                    return None;
                }
                let price = (o.worst_case.max(1) as f64 / c_min).powf(self.config.price_exponent);
                let lat = (l_of(s) / l_min).powf(self.config.latency_exponent);
                let ok = s.smoothed_success().powf(self.config.success_exponent);
                Some(ok / (price * lat))
            })
            .collect()
    }

    /// The probability that each offer is tried first at `now`, as the
    /// rule (with exploration) gives it: what [`Router::order`] draws
    /// from, for showing and for testing that the choices follow the
    /// rule. Zero for an offer that is ejected or held (and, in panic
    /// mode, one for the first to come back).
    pub fn first_choice_probabilities(&self, offers: &[Offer], now: Instant) -> Vec<f64> {
        let weights = self.weights(offers, now);
        let total: f64 = weights.iter().flatten().sum();
        if total <= 0.0 {
            let mut p = vec![0.0; offers.len()];
            let first = offers
                .iter()
                .enumerate()
                .filter_map(|(i, o)| match self.health(&o.id, now) {
                    Health::Ejected(u) => Some((u, i)),
                    _ => None,
                })
                .min();
            if let Some((_, i)) = first {
                p[i] = 1.0;
            }
            return p;
        }
        let unknown: Vec<bool> = offers
            .iter()
            .zip(&weights)
            .map(|(o, w)| {
                w.is_some() && self.snapshot(&o.id, now).samples < self.config.min_samples
            })
            .collect();
        let n_unknown = unknown.iter().filter(|u| **u).count();
        let explore = if n_unknown > 0 {
            self.config.explore_share
        } else {
            0.0
        };
        weights
            .iter()
            .zip(&unknown)
            .map(|(w, u)| {
                let Some(w) = w else { return 0.0 };
                let e = if *u { explore / n_unknown as f64 } else { 0.0 };
                e + (1.0 - explore) * w / total
            })
            .collect()
    }

    /// The order in which to try `offers` for one request (module docs):
    /// the first drawn by the rule (or by exploration), the rest as the
    /// failover order. Ejected providers appear only when no candidate is
    /// available, in the order they come back; held ones never.
    pub fn order(&self, offers: &[Offer], now: Instant, rng: &mut Rng) -> Vec<ProviderId> {
        let weights = self.weights(offers, now);
        let mut pool: Vec<(usize, f64)> = weights
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|w| (i, w)))
            .collect();
        if pool.is_empty() {
            let mut ejected: Vec<(Instant, usize)> = offers
                .iter()
                .enumerate()
                .filter_map(|(i, o)| match self.health(&o.id, now) {
                    Health::Ejected(u) => Some((u, i)),
                    _ => None,
                })
                .collect();
            ejected.sort();
            return ejected
                .into_iter()
                .map(|(_, i)| offers[i].id.clone())
                .collect();
        }
        let mut out = Vec::with_capacity(pool.len());
        if rng.next_f64() < self.config.explore_share {
            let unknown: Vec<usize> = pool
                .iter()
                .enumerate()
                .filter(|(_, (i, _))| {
                    self.snapshot(&offers[*i].id, now).samples < self.config.min_samples
                })
                .map(|(k, _)| k)
                .collect();
            if !unknown.is_empty() {
                let k = unknown[(rng.next_u64() % unknown.len() as u64) as usize];
                out.push(offers[pool.remove(k).0].id.clone());
            }
        }
        while !pool.is_empty() {
            let total: f64 = pool.iter().map(|(_, w)| w).sum();
            let mut x = rng.next_f64() * total;
            let mut k = pool.len() - 1;
            for (j, (_, w)) in pool.iter().enumerate() {
                if x < *w {
                    k = j;
                    break;
                }
                x -= w;
            }
            out.push(offers[pool.remove(k).0].id.clone());
        }
        out
    }
}

fn latency_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).max(1.0)
}

/// What an error before the answer started means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try the next provider; record a failure against this one.
    NextFailure,
    /// Try the next provider; hold this one for the given time (not a
    /// failure).
    NextHold(Duration),
    /// Try the next provider; nothing against this one.
    Next,
    /// Stop: the error is the caller's (another provider would refuse the
    /// same request).
    Stop,
}

/// The failover rule (module docs) for an error a provider gave before its
/// answer started streaming.
pub fn decide(e: &ClientError, config: &RouteConfig) -> Decision {
    match e {
        ClientError::Unreachable { .. } | ClientError::Http { .. } => Decision::NextFailure,
        ClientError::EvidenceUnavailable { .. }
        | ClientError::Verification(_)
        | ClientError::EvidenceNotServed { .. }
        | ClientError::Prices(_) => Decision::NextFailure,
        ClientError::RateLimited { retry_after, .. } => {
            Decision::NextHold(retry_after.unwrap_or(config.rate_limit_hold))
        }
        ClientError::Status { status: 402, .. } => Decision::NextHold(config.no_deposit_hold),
        ClientError::Status { status: 409, .. } => Decision::NextFailure,
        ClientError::Status { status, .. } if *status >= 500 => Decision::NextFailure,
        ClientError::Status { .. } => Decision::Stop,
        ClientError::OverPrice { .. } | ClientError::ModelNotServed { .. } => Decision::Next,
        // Before 200 these do not occur; if they do, the provider is at
        // fault and nothing was streamed.
        ClientError::Response(_) => Decision::NextFailure,
        ClientError::EnclaveFailed { .. } => Decision::Stop,
        ClientError::InvalidRequest(_) | ClientError::Seal(_) | ClientError::Account(_) => {
            Decision::Stop
        }
        ClientError::MalformedReceipts(_) | ClientError::BadLedgerReceipt { .. } => Decision::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ProviderId {
        ProviderId(s.into())
    }

    fn offer(s: &str, c: u128) -> Offer {
        Offer {
            id: id(s),
            worst_case: c,
        }
    }

    fn shares(router: &Router, offers: &[Offer], now: Instant, n: usize) -> Vec<f64> {
        let mut rng = Rng::seeded(7);
        let mut count = vec![0usize; offers.len()];
        for _ in 0..n {
            let first = router.order(offers, now, &mut rng)[0].clone();
            count[offers.iter().position(|o| o.id == first).unwrap()] += 1;
        }
        count.iter().map(|c| *c as f64 / n as f64).collect()
    }

    fn predicted(router: &Router, offers: &[Offer], now: Instant) -> Vec<f64> {
        router.first_choice_probabilities(offers, now)
    }

    /// One provider cheaper, one slower: the shares of first choices are
    /// those the documented rule predicts (0.6 / 0.3 / 0.1 here).
    #[test]
    fn shares_follow_the_rule_cheaper_and_slower() {
        let mut r = Router::new(RouteConfig::default());
        let now = Instant::now();
        for _ in 0..20 {
            r.success(&id("base"), now, Duration::from_millis(100));
            r.success(&id("cheap"), now, Duration::from_millis(100));
            r.success(&id("slow"), now, Duration::from_millis(300));
        }
        let offers = [
            offer("base", 2_000),
            offer("cheap", 1_000),
            offer("slow", 2_000),
        ];
        let p = predicted(&r, &offers, now);
        let s = shares(&r, &offers, now, 20_000);
        println!("shares (base, cheaper, slower): predicted {p:.3?}, observed {s:.3?}");
        for (want, got) in [0.3, 0.6, 0.1].iter().zip(&p) {
            assert!((want - got).abs() < 1e-9, "prediction {p:?}");
        }
        for (want, got) in p.iter().zip(&s) {
            assert!(
                (want - got).abs() < 0.015,
                "predicted {p:?}, observed {s:?}"
            );
        }
    }

    #[test]
    fn failures_lower_the_share_and_eject() {
        let mut r = Router::new(RouteConfig::default());
        let now = Instant::now();
        for _ in 0..8 {
            r.success(&id("a"), now, Duration::from_millis(50));
            r.success(&id("b"), now, Duration::from_millis(50));
        }
        r.failure(&id("b"), now);
        r.failure(&id("b"), now);
        let offers = [offer("a", 10), offer("b", 10)];
        let p = predicted(&r, &offers, now);
        // s_b = 10/12, squared; s_a = 1.
        let wb = (10.0f64 / 12.0).powi(2);
        assert!((p[1] - wb / (1.0 + wb)).abs() < 1e-9, "{p:?}");
        r.failure(&id("b"), now);
        assert!(matches!(r.health(&id("b"), now), Health::Ejected(_)));
        let mut rng = Rng::seeded(1);
        for _ in 0..100 {
            assert_eq!(r.order(&offers, now, &mut rng), vec![id("a")]);
        }
    }

    #[test]
    fn exploration_share_goes_to_unknown_providers() {
        let mut r = Router::new(RouteConfig::default());
        let now = Instant::now();
        for _ in 0..20 {
            r.success(&id("known"), now, Duration::from_millis(10));
        }
        // The newcomer has no latency: it counts as the median (10 ms), so
        // equal weights; exploration adds 5 % to it.
        let offers = [offer("known", 100), offer("new", 100)];
        let s = shares(&r, &offers, now, 20_000);
        let p = predicted(&r, &offers, now);
        println!("shares (known, new): {s:.3?}, predicted {p:.3?}");
        assert!((p[1] - 0.525).abs() < 1e-9, "{p:?}");
        assert!((s[1] - 0.525).abs() < 0.015, "{s:?}");
    }

    #[test]
    fn panic_mode_and_holds() {
        let mut r = Router::new(RouteConfig::default());
        let now = Instant::now();
        for _ in 0..3 {
            r.failure(&id("a"), now);
        }
        for _ in 0..3 {
            r.failure(&id("b"), now + Duration::from_secs(1));
        }
        r.hold(&id("c"), now + Duration::from_secs(60));
        let offers = [offer("c", 1), offer("b", 1), offer("a", 1)];
        let mut rng = Rng::seeded(3);
        // Everyone ejected or held: the ejected in the order they return.
        assert_eq!(
            r.order(&offers, now + Duration::from_secs(2), &mut rng),
            vec![id("a"), id("b")]
        );
        // After a's back-off it is on probation and the only candidate.
        assert_eq!(
            r.order(&offers, now + Duration::from_millis(5_500), &mut rng),
            vec![id("a")]
        );
        // Statistics survive for kept providers only.
        r.retain(&[id("a")]);
        assert_eq!(r.snapshot(&id("b"), now).total_failures, 0);
        assert_eq!(r.snapshot(&id("a"), now).total_failures, 3);
    }

    #[test]
    fn order_lists_each_available_provider_once() {
        let r = Router::new(RouteConfig::default());
        let offers: Vec<Offer> = (0..10).map(|i| offer(&format!("p{i}"), 1 + i)).collect();
        let mut rng = Rng::seeded(9);
        let mut o = r.order(&offers, Instant::now(), &mut rng);
        o.sort();
        let mut want: Vec<ProviderId> = offers.iter().map(|o| o.id.clone()).collect();
        want.sort();
        assert_eq!(o, want);
    }

    #[test]
    fn failover_decision_table() {
        use crate::provider::VerificationError;
        let cfg = RouteConfig::default();
        let st = |status: u16| ClientError::Status {
            status,
            reason: String::new(),
        };
        let cases: Vec<(ClientError, Decision)> = vec![
            (st(500), Decision::NextFailure),
            (st(502), Decision::NextFailure),
            (st(503), Decision::NextFailure),
            (st(409), Decision::NextFailure),
            (
                ClientError::EvidenceNotServed { reason: "x".into() },
                Decision::NextFailure,
            ),
            (
                ClientError::Verification(VerificationError::NoEvidence),
                Decision::NextFailure,
            ),
            (
                ClientError::EvidenceUnavailable {
                    status: 503,
                    reason: String::new(),
                },
                Decision::NextFailure,
            ),
            (ClientError::Prices("x".into()), Decision::NextFailure),
            (st(402), Decision::NextHold(cfg.no_deposit_hold)),
            (
                ClientError::RateLimited {
                    reason: String::new(),
                    retry_after: Some(Duration::from_secs(7)),
                },
                Decision::NextHold(Duration::from_secs(7)),
            ),
            (
                ClientError::RateLimited {
                    reason: String::new(),
                    retry_after: None,
                },
                Decision::NextHold(cfg.rate_limit_hold),
            ),
            (
                ClientError::OverPrice {
                    worst_case: 2,
                    limit: 1,
                },
                Decision::Next,
            ),
            (
                ClientError::ModelNotServed {
                    model: "m".into(),
                    available: vec![],
                },
                Decision::Next,
            ),
            (st(400), Decision::Stop),
            (st(401), Decision::Stop),
            (st(403), Decision::Stop),
            (st(413), Decision::Stop),
            (ClientError::InvalidRequest("x".into()), Decision::Stop),
        ];
        for (e, want) in cases {
            assert_eq!(decide(&e, &cfg), want, "{e}");
        }
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::seeded(42);
        let n = 100_000;
        let mean: f64 = (0..n).map(|_| rng.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01);
    }
}
