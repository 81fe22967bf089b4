//! The replay memory: every request id the enclave served, kept until that
//! request's expiry, and the enclave's clock that decides expiry.
//!
//! Owns the bounded id memory ([`ReplayMemory`]) and the non-decreasing
//! clock ([`EnclaveClock`]). The server decides *when* an id enters (only
//! once the request passed every check and will be served); this module
//! makes sure that a request is served at most once per enclave boot,
//! whatever the host sends:
//!
//! * A request carries a client-chosen expiry inside its signed,
//!   AEAD-bound billing metadata
//!   ([`cocoon_protocol::seal::BillingMeta::check_lifetime`]). The enclave
//!   refuses one that has expired or whose expiry lies further ahead than
//!   its measured maximum lifetime.
//! * An id is remembered until its expiry. Once forgotten, the request has
//!   expired by the enclave's clock, and that clock never goes back, so it
//!   is refused as expired forever after.
//! * When the memory is full, new requests are refused (fail closed) until
//!   ids expire; nothing is ever forgotten early. The host cannot push a
//!   real id out by flooding the enclave with its own requests.
//!
//! # What the enclave's clock is worth
//!
//! The guest's wall clock comes from the host on both platforms: on SEV-SNP
//! the host sets the initial time (kvmclock / the emulated RTC) and, without
//! Secure TSC, can scale and offset the TSC the guest counts with; on TDX
//! the TSC is virtualised by the TDX module at a fixed frequency the host
//! cannot change after launch, but the wall-clock starting point is again
//! the host's. So the host can start the enclave's clock wherever it likes
//! and, on SNP, make it run fast or slow. [`EnclaveClock`] only guarantees
//! that the enclave's notion of "now" never decreases: it is the highest
//! time the enclave has read since boot. What follows for the rule above:
//!
//! * The host cannot make a request be served twice: moving the clock
//!   forward makes ids expire early, but then the requests are expired too,
//!   and moving it back afterwards does not lower the enclave's "now".
//! * The host can delay the clock so a request stays acceptable past the
//!   wall-clock time its client chose, and can race the clock ahead so
//!   every request looks expired. Both are denial or delay of service,
//!   which a host can always do; neither bills anything twice, and a client
//!   that wants a short window chooses a short expiry (the default is 5
//!   minutes, the enclave's default maximum 10).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use cocoon_protocol::RequestId;

/// The enclave's time in Unix seconds: the system clock, but never lower
/// than any time read before (see the module docs for what it is worth).
#[derive(Debug, Default)]
pub(crate) struct EnclaveClock {
    high_water: AtomicU64,
}

impl EnclaveClock {
    /// Now, in Unix seconds, never less than a previous call returned.
    pub(crate) fn now(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.advance(wall)
    }

    /// Take `wall` into account and return the non-decreasing time.
    fn advance(&self, wall: u64) -> u64 {
        self.high_water.fetch_max(wall, Ordering::SeqCst).max(wall)
    }
}

/// Why an id cannot enter the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It is there already: the request was served.
    Replayed,
    /// The memory holds `capacity` unexpired ids.
    Full {
        /// The configured capacity.
        capacity: usize,
    },
}

/// Request ids served since boot, each until its expiry; at most
/// `capacity` at once.
#[derive(Debug)]
pub(crate) struct ReplayMemory {
    expiry: HashMap<RequestId, u64>,
    by_expiry: BinaryHeap<Reverse<(u64, RequestId)>>,
    capacity: usize,
}

impl ReplayMemory {
    /// An empty memory for at most `capacity` ids (at least one).
    pub(crate) fn new(capacity: usize) -> ReplayMemory {
        ReplayMemory {
            expiry: HashMap::new(),
            by_expiry: BinaryHeap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Remember `id` until `expires_at`, at enclave time `now` (the caller
    /// has checked `now < expires_at`). Ids that expired at or before `now`
    /// are forgotten first.
    pub(crate) fn insert(
        &mut self,
        id: RequestId,
        expires_at: u64,
        now: u64,
    ) -> Result<(), Refused> {
        self.forget_expired(now);
        if self.expiry.contains_key(&id) {
            return Err(Refused::Replayed);
        }
        if self.expiry.len() >= self.capacity {
            return Err(Refused::Full {
                capacity: self.capacity,
            });
        }
        self.expiry.insert(id, expires_at);
        self.by_expiry.push(Reverse((expires_at, id)));
        Ok(())
    }

    /// Ids remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.expiry.len()
    }

    fn forget_expired(&mut self, now: u64) {
        while let Some(Reverse((at, id))) = self.by_expiry.peek().copied() {
            if at > now {
                break;
            }
            self.by_expiry.pop();
            self.expiry.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> RequestId {
        RequestId([n; 32])
    }

    #[test]
    fn ids_are_kept_until_their_expiry_and_never_forgotten_early() {
        let mut m = ReplayMemory::new(3);
        assert_eq!(m.insert(id(1), 110, 100), Ok(()));
        assert_eq!(m.insert(id(2), 120, 100), Ok(()));
        assert_eq!(m.insert(id(1), 110, 101), Err(Refused::Replayed));
        assert_eq!(m.insert(id(3), 130, 101), Ok(()));
        // Full: the oldest is not evicted, the newcomer is refused.
        assert_eq!(
            m.insert(id(4), 140, 105),
            Err(Refused::Full { capacity: 3 })
        );
        assert_eq!(m.insert(id(1), 110, 109), Err(Refused::Replayed));
        assert_eq!(m.len(), 3);
        // Once 1 expired, there is room, and 1 is gone (the server refuses
        // it as expired: its expiry is not after now).
        assert_eq!(m.insert(id(4), 140, 110), Ok(()));
        assert_eq!(m.len(), 3);
        assert_eq!(m.insert(id(2), 120, 111), Err(Refused::Replayed));
        assert_eq!(m.insert(id(5), 150, 130), Ok(()));
        assert_eq!(m.len(), 2, "2 and 3 expired");
        assert!(m.expiry.len() == m.by_expiry.len());
    }

    #[test]
    fn the_clock_never_goes_back() {
        let c = EnclaveClock::default();
        assert_eq!(c.advance(100), 100);
        assert_eq!(c.advance(90), 100);
        assert_eq!(c.advance(150), 150);
        assert_eq!(c.advance(0), 150);
        assert!(c.now() >= 150);
    }
}
