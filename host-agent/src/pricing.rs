//! The host's side of pricing and payment admission: the smoothed load the
//! multiplier follows, the price sheet (`GET /v1/prices`), the price check
//! before a request is forwarded, and the per-(enclave key, account) spend
//! against the client's authorization cap.
//!
//! The rule (also in the README and in [`cocoon_protocol::pricing`]):
//! utilisation = requests in flight ÷ (ready enclaves × streams per
//! enclave), sampled every second and smoothed exponentially with a 30 s
//! time constant. Each enclave's multiplier is
//! [`load_multiplier`]`(utilisation, its min, its max)`. A sheet is valid
//! for [`QUOTE_TTL`]: the host accepts a request whose multiplier is at
//! least the one the lowest utilisation published in that window gives, so
//! a client that read a sheet a few seconds ago is not refused because the
//! load rose meanwhile. The enclave enforces the bounds and the exact
//! prices; the host only decides the multiplier.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use cocoon_protocol::pricing::{load_multiplier, PriceSheet, SettlementInfo, SheetEntry};
use cocoon_protocol::seal::BillingMeta;
use cocoon_protocol::settlement::ContractAddress;

use crate::broker::ReadyEnclave;

/// How long a published sheet's multipliers are honoured.
pub const QUOTE_TTL: Duration = Duration::from_secs(60);
/// Time constant of the utilisation average.
pub const SMOOTHING: Duration = Duration::from_secs(30);
pub use cocoon_protocol::pricing::PROMPT_TOKEN_SLACK;

#[derive(Debug, Default)]
struct State {
    /// Smoothed utilisation, thousandths.
    ewma: f64,
    /// Published utilisations (Unix seconds, thousandths), newest last.
    published: VecDeque<(u64, u32)>,
}

/// Smoothed load and the recently published utilisations.
#[derive(Debug, Default)]
pub struct LoadPricing {
    state: Mutex<State>,
}

impl LoadPricing {
    /// A tracker at zero load.
    pub fn new() -> LoadPricing {
        LoadPricing::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fold in one sample taken `dt` after the previous one.
    pub fn sample(&self, in_flight: usize, capacity: usize, dt: Duration) {
        let u = if capacity == 0 {
            0.0
        } else {
            (in_flight as f64 * 1000.0 / capacity as f64).min(1000.0)
        };
        let alpha = 1.0 - (-dt.as_secs_f64() / SMOOTHING.as_secs_f64()).exp();
        let mut g = self.lock();
        g.ewma += alpha * (u - g.ewma);
    }

    /// The smoothed utilisation now, thousandths.
    pub fn utilisation(&self) -> u32 {
        self.lock().ewma.round().clamp(0.0, 1000.0) as u32
    }

    /// Publish the current utilisation at `now` and return it.
    pub fn publish(&self, now: u64) -> u32 {
        let u = self.utilisation();
        let mut g = self.lock();
        while g
            .published
            .front()
            .is_some_and(|&(t, _)| t + QUOTE_TTL.as_secs() < now)
        {
            g.published.pop_front();
        }
        if g.published.back().is_some_and(|&(t, v)| t == now && v == u) {
            return u;
        }
        if g.published.len() >= 4096 {
            g.published.pop_front();
        }
        g.published.push_back((now, u));
        u
    }

    /// The lowest utilisation published within [`QUOTE_TTL`] of `now`, or
    /// the current one if lower.
    pub fn floor(&self, now: u64) -> u32 {
        let current = self.utilisation();
        let g = self.lock();
        g.published
            .iter()
            .filter(|&&(t, _)| t + QUOTE_TTL.as_secs() >= now)
            .map(|&(_, u)| u)
            .min()
            .map_or(current, |m| m.min(current))
    }
}

/// The price sheet for these ready enclaves at `utilisation`.
pub fn sheet(
    enclaves: &[std::sync::Arc<ReadyEnclave>],
    utilisation: u32,
    now: u64,
    settlement: Option<ContractAddress>,
) -> PriceSheet {
    let entries = enclaves
        .iter()
        .map(|e| {
            let t = e.prices().clone();
            let m = load_multiplier(utilisation, t.min_multiplier_milli, t.max_multiplier_milli);
            SheetEntry {
                evidence_digest: e.digest().0,
                table: t,
                multiplier_milli: m,
            }
        })
        .collect();
    PriceSheet {
        quote_id: format!("q-{now}-{utilisation}"),
        issued_at: now,
        valid_until: now + QUOTE_TTL.as_secs(),
        utilisation_milli: utilisation,
        enclaves: entries,
        settlement: settlement.map(|c| SettlementInfo {
            contract: c.to_string(),
        }),
    }
}

/// Whether a request's prices are acceptable to the host: the enclave's
/// table accepts them, and the multiplier is not below what the lowest
/// recently published utilisation gives.
pub fn check_prices(
    ready: &ReadyEnclave,
    meta: &BillingMeta,
    floor_utilisation: u32,
) -> Result<(), String> {
    let t = ready.prices();
    t.accept(meta).map_err(|e| e.to_string())?;
    let least = load_multiplier(
        floor_utilisation,
        t.min_multiplier_milli,
        t.max_multiplier_milli,
    );
    if meta.multiplier_milli < least {
        return Err(format!(
            "multiplier {}/1000 is below the current {least}/1000; fetch /v1/prices again",
            meta.multiplier_milli
        ));
    }
    Ok(())
}

/// The most a request can cost at its prices
/// ([`cocoon_protocol::pricing::max_cost`], the rule the client applies
/// too) for a sealed request of `sealed_len` bytes.
pub fn max_cost(meta: &BillingMeta, sealed_len: usize) -> u128 {
    cocoon_protocol::pricing::max_cost(&meta.unit_price, sealed_len, meta.max_tokens)
}

/// Per (receipt key, account): nanoton spent or reserved.
type SpendMap = HashMap<(Vec<u8>, [u8; 32]), u128>;
/// Per (receipt key, account): the highest authorization cap stored.
type CapMap = HashMap<(Vec<u8>, [u8; 32]), u64>;

/// Spend per (receipt key, account): committed charges (loaded from the
/// ledger the first time) plus the worst-case cost of requests in flight,
/// so concurrent requests cannot together pass an authorization's cap.
#[derive(Debug, Default)]
pub struct Spend {
    accounts: Mutex<SpendMap>,
    caps: Mutex<CapMap>,
}

impl Spend {
    /// Nothing tracked yet.
    pub fn new() -> Spend {
        Spend::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpendMap> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest cap stored in the ledger for the pair, if known here.
    pub fn cap(&self, key: &[u8], account: &[u8; 32]) -> Option<u64> {
        let g = self.caps.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&(key.to_vec(), *account)).copied()
    }

    /// Remember the cap the ledger now holds for the pair.
    pub fn set_cap(&self, key: &[u8], account: &[u8; 32], cap: u64) {
        let mut g = self.caps.lock().unwrap_or_else(|p| p.into_inner());
        g.insert((key.to_vec(), *account), cap);
    }

    /// Whether the pair is tracked yet.
    pub fn known(&self, key: &[u8], account: &[u8; 32]) -> bool {
        self.lock().contains_key(&(key.to_vec(), *account))
    }

    /// Start tracking with the ledger's committed sum (no-op when known).
    pub fn load(&self, key: &[u8], account: &[u8; 32], committed: u128) {
        self.lock()
            .entry((key.to_vec(), *account))
            .or_insert(committed);
    }

    /// Reserve `cost` if spend + cost stays within `cap`.
    pub fn reserve(
        &self,
        key: &[u8],
        account: &[u8; 32],
        cost: u128,
        cap: u64,
    ) -> Result<(), u128> {
        let mut g = self.lock();
        let spent = g.entry((key.to_vec(), *account)).or_insert(0);
        let after = spent.saturating_add(cost);
        if after > u128::from(cap) {
            return Err(*spent);
        }
        *spent = after;
        Ok(())
    }

    /// A request ended: replace its reservation by what it charged (0 when
    /// no receipt was committed).
    pub fn settle(&self, key: &[u8], account: &[u8; 32], reserved: u128, charged: u128) {
        let mut g = self.lock();
        if let Some(spent) = g.get_mut(&(key.to_vec(), *account)) {
            *spent = spent.saturating_sub(reserved).saturating_add(charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_and_floor() {
        let p = LoadPricing::new();
        assert_eq!(p.utilisation(), 0);
        for _ in 0..300 {
            p.sample(10, 10, Duration::from_secs(1));
        }
        assert!(p.utilisation() > 990);
        let low = LoadPricing::new();
        low.publish(100);
        for _ in 0..30 {
            low.sample(10, 10, Duration::from_secs(1));
        }
        let u = low.publish(130);
        assert!(u > 600, "{u}");
        // The zero published at 100 is still honoured at 130, not at 161.
        assert_eq!(low.floor(130), 0);
        assert_eq!(low.floor(161), u);
    }

    #[test]
    fn reservations_respect_the_cap() {
        let s = Spend::new();
        let (k, a) = (vec![4u8; 65], [1u8; 32]);
        s.load(&k, &a, 100);
        s.load(&k, &a, 5);
        assert!(s.reserve(&k, &a, 50, 200).is_ok());
        assert_eq!(s.reserve(&k, &a, 51, 200), Err(150));
        s.settle(&k, &a, 50, 20);
        assert!(s.reserve(&k, &a, 80, 200).is_ok());
        assert_eq!(s.reserve(&k, &a, 1, 200), Err(200));
    }
}
