//! Per-account admission: a token bucket (requests per second with a
//! burst) and a cap on concurrent streams.
//!
//! Owns the limiter state only; it reads no clock (callers pass `now`) and
//! knows nothing of HTTP. It is consulted after the account's signature
//! verified, so nobody can spend another account's allowance. Memory is
//! bounded: past `max_tracked_accounts`, accounts with a full bucket and no
//! open stream are forgotten (they would start full again anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_protocol::account::AccountId;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    active: u32,
}

/// Why an account was refused, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a retry can succeed (at least 1).
    pub retry_after_secs: u64,
    /// One-line reason.
    pub reason: String,
}

/// The per-account limiter.
#[derive(Debug)]
pub struct AccountLimiter {
    rate: f64,
    burst: f64,
    max_streams: u32,
    max_tracked: usize,
    accounts: Mutex<HashMap<AccountId, Bucket>>,
}

/// One admitted request: holds one of the account's stream slots until
/// dropped.
#[derive(Debug)]
pub struct AccountPermit {
    limiter: Arc<AccountLimiter>,
    account: AccountId,
}

impl Drop for AccountPermit {
    fn drop(&mut self) {
        if let Ok(mut m) = self.limiter.accounts.lock() {
            if let Some(b) = m.get_mut(&self.account) {
                b.active = b.active.saturating_sub(1);
            }
        }
    }
}

impl AccountLimiter {
    /// A limiter: `rate` requests per second sustained, `burst` at once,
    /// `max_streams` concurrent streams per account.
    pub fn new(rate: f64, burst: u32, max_streams: u32, max_tracked: usize) -> AccountLimiter {
        AccountLimiter {
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                1.0
            },
            burst: f64::from(burst.max(1)),
            max_streams: max_streams.max(1),
            max_tracked: max_tracked.max(1),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Admit one request of `account` at `now`, or say when to retry.
    pub fn admit(
        self: &Arc<Self>,
        account: AccountId,
        now: Instant,
    ) -> Result<AccountPermit, Limited> {
        let mut m = self.accounts.lock().map_err(|_| Limited {
            retry_after_secs: 1,
            reason: "rate limiter unavailable".into(),
        })?;
        if m.len() >= self.max_tracked && !m.contains_key(&account) {
            self.prune(&mut m, now);
        }
        let b = m.entry(account).or_insert(Bucket {
            tokens: self.burst,
            last: now,
            active: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.active >= self.max_streams {
            return Err(Limited {
                retry_after_secs: 1,
                reason: format!(
                    "account {account} already has {} streams open (limit {})",
                    b.active, self.max_streams
                ),
            });
        }
        if b.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - b.tokens) / self.rate);
            return Err(Limited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                reason: format!(
                    "account {account} is over its rate of {} requests/s (burst {})",
                    self.rate, self.burst
                ),
            });
        }
        b.tokens -= 1.0;
        b.active += 1;
        Ok(AccountPermit {
            limiter: self.clone(),
            account,
        })
    }

    /// Accounts tracked now.
    pub fn tracked(&self) -> usize {
        self.accounts.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn prune(&self, m: &mut HashMap<AccountId, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        m.retain(|_, b| {
            let tokens = b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate;
            b.active > 0 || tokens < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_concurrency() {
        let l = Arc::new(AccountLimiter::new(2.0, 3, 2, 10));
        let a = AccountId([1; 32]);
        let t0 = Instant::now();
        let p1 = l.admit(a, t0).unwrap();
        let p2 = l.admit(a, t0).unwrap();
        // Two streams open: the third is refused without spending a token.
        let e = l.admit(a, t0).unwrap_err();
        assert!(e.reason.contains("streams open"), "{e:?}");
        drop(p1);
        drop(p2);
        let _p3 = l.admit(a, t0).unwrap();
        drop(_p3);
        // Bucket of 3 spent; rate 2/s: half a second gives one token back.
        let e = l.admit(a, t0).unwrap_err();
        assert_eq!(e.retry_after_secs, 1);
        assert!(e.reason.contains("rate"), "{e:?}");
        assert!(l.admit(a, t0 + Duration::from_millis(400)).is_err());
        assert!(l.admit(a, t0 + Duration::from_millis(500)).is_ok());
        // Another account is not affected.
        assert!(l.admit(AccountId([2; 32]), t0).is_ok());
    }

    #[test]
    fn slow_rates_give_long_retry_after() {
        let l = Arc::new(AccountLimiter::new(0.1, 1, 5, 10));
        let a = AccountId([1; 32]);
        let t0 = Instant::now();
        drop(l.admit(a, t0).unwrap());
        assert_eq!(l.admit(a, t0).unwrap_err().retry_after_secs, 10);
    }

    #[test]
    fn idle_accounts_are_pruned() {
        let l = Arc::new(AccountLimiter::new(100.0, 1, 5, 2));
        let t0 = Instant::now();
        let held = l.admit(AccountId([1; 32]), t0).unwrap();
        drop(l.admit(AccountId([2; 32]), t0).unwrap());
        // Both buckets spent; a second later account 2 is full and idle.
        let later = t0 + Duration::from_secs(1);
        drop(l.admit(AccountId([3; 32]), later).unwrap());
        assert_eq!(l.tracked(), 2, "account 2 pruned, 1 kept (open stream)");
        drop(held);
    }
}
