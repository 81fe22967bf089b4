//! The host's clock: wall time in Unix seconds for the rules that compare
//! against a signed time (a request's expiry, a signed query's skew, the
//! price sheet's validity, the age of evidence and its collateral), and
//! monotonic instants for the rules that measure intervals (per-account
//! rate limits, the load the price multiplier follows).
//!
//! The host reads no clock anywhere else: [`crate::HostConfig::clock`]
//! carries one into the service, the app state hands it to every decision,
//! and a test pins it ([`PinnedClock`]) to show a time-dependent rule
//! decided by the time it chose. Timers the runtime drives (tokio's
//! `sleep` and `timeout`) keep tokio's own clock; this module must not
//! start or cancel anything.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_verifier::UnixTime;

/// Where the host's time comes from: the system clock, or a pinned one
/// that moves only when a test moves it. Cheap to clone; clones share the
/// pinned time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    Pinned(Arc<Mutex<Pinned>>),
}

#[derive(Debug)]
struct Pinned {
    /// Wall time since the Unix epoch.
    unix: Duration,
    /// The monotonic origin (taken when the clock was pinned) ...
    origin: Instant,
    /// ... and how far the clock has been advanced since.
    elapsed: Duration,
}

impl Clock {
    /// The system clock (`SystemTime` and `Instant`).
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Seconds since the Unix epoch (0 if the system clock is set before
    /// it).
    pub fn unix_secs(&self) -> u64 {
        match &self.source {
            Source::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Source::Pinned(p) => lock(p).unix.as_secs(),
        }
    }

    /// The same time as the verifier takes it.
    pub fn unix_time(&self) -> UnixTime {
        UnixTime(self.unix_secs())
    }

    /// A monotonic instant, for intervals and rates.
    pub fn instant(&self) -> Instant {
        match &self.source {
            Source::System => Instant::now(),
            Source::Pinned(p) => {
                let p = lock(p);
                p.origin.checked_add(p.elapsed).unwrap_or(p.origin)
            }
        }
    }

    /// Whether this is a pinned clock.
    pub fn is_pinned(&self) -> bool {
        matches!(self.source, Source::Pinned(_))
    }
}

/// The handle that pins and moves a [`Clock`] (tests, simulations).
#[derive(Debug, Clone)]
pub struct PinnedClock(Arc<Mutex<Pinned>>);

impl PinnedClock {
    /// A clock that reads `unix_secs` until it is moved.
    pub fn at(unix_secs: u64) -> PinnedClock {
        PinnedClock(Arc::new(Mutex::new(Pinned {
            unix: Duration::from_secs(unix_secs),
            origin: Instant::now(),
            elapsed: Duration::ZERO,
        })))
    }

    /// The clock to hand to the host; it reads whatever this handle sets.
    pub fn clock(&self) -> Clock {
        Clock {
            source: Source::Pinned(self.0.clone()),
        }
    }

    /// Move both the wall time and the monotonic time forward by `by`
    /// (saturating).
    pub fn advance(&self, by: Duration) {
        let mut p = lock(&self.0);
        p.unix = p.unix.saturating_add(by);
        p.elapsed = p.elapsed.saturating_add(by);
    }

    /// Set the wall time only (a clock step); monotonic time stays.
    pub fn set_unix_secs(&self, unix_secs: u64) {
        lock(&self.0).unix = Duration::from_secs(unix_secs);
    }
}

fn lock(p: &Mutex<Pinned>) -> MutexGuard<'_, Pinned> {
    // The guarded data is plain numbers: a panic elsewhere cannot leave it
    // half-written.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_clock_moves_only_when_moved() {
        let pinned = PinnedClock::at(1_800_000_000);
        let clock = pinned.clock();
        assert!(clock.is_pinned());
        let t0 = clock.instant();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.unix_secs(), 1_800_000_000);
        assert_eq!(clock.instant(), t0);
        pinned.advance(Duration::from_millis(2_500));
        assert_eq!(clock.unix_time(), UnixTime(1_800_000_002));
        assert_eq!(clock.instant() - t0, Duration::from_millis(2_500));
        pinned.advance(Duration::from_millis(600));
        assert_eq!(clock.unix_secs(), 1_800_000_003);
        pinned.set_unix_secs(7);
        assert_eq!(clock.clone().unix_secs(), 7);
        assert_eq!(clock.instant() - t0, Duration::from_millis(3_100));
    }

    #[test]
    fn the_system_clock_reads_the_system() {
        let clock = Clock::system();
        assert!(!clock.is_pinned());
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = clock.unix_secs();
        assert!(t >= before && t <= before + 1);
        let a = clock.instant();
        assert!(clock.instant() >= a);
    }
}
