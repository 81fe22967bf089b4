//! Where the host's time goes on one request: a monotonic timestamp at the
//! end of each stage of `POST /v1/requests`, kept per request and
//! published when the response completed.
//!
//! Owns the stages ([`Stage`]), the per-request `Timeline` (a
//! `std::time::Instant` per stage boundary: tens of nanoseconds each) and
//! the store of recent timelines ([`Timings`]) that the operator endpoint
//! `GET /admin/timings` lists (`admin`; `benches/sealed_path.rs` in the
//! tests reads it for its breakdown). A timeline holds durations only: no request id, account,
//! model or content; it is billing metadata the host has anyway.
//!
//! The stages, in the order a request meets them (the first timestamp is
//! taken when the handler starts, after hyper parsed the request head; the
//! HTTP head's parsing and writing, and the hops between tasks that no
//! stage covers, are therefore not in any stage):
//!
//! * `http` — the body read and the sealed request decoded;
//! * `account` — the account signature, expiry, prices, the replay check,
//!   payment, the account's rate and stream limits;
//! * `route` — the enclave by evidence digest, a stream on it, the
//!   forwarded request built and queued;
//! * `enclave` — waiting for the enclave's frames (not host work: the
//!   enclave's own time, and the host's reader delivering the frame);
//! * `relay` — response chunks turned into chunk records and handed to the
//!   HTTP body;
//! * `receipt` — the receipt verified under the attested key and checked
//!   against the request;
//! * `queue` — from the append's hand-over until the ledger's writer
//!   thread began its batch: the thread's wake-up, or the batch before
//!   still committing (its fsync: the group commit's wait);
//! * `commit` — the rest of the ledger append but its own `COMMIT`: the
//!   hand-over to the writer thread, the insert, the answer back;
//! * `fsync` — the `COMMIT` of the append's batch (WAL write and fsync),
//!   timed on the writer thread; a batch's appends each count all of it;
//! * `ack` — the acknowledgement queued to the enclave and the final chunk
//!   released;
//! * `release` — the final chunk forwarded, the request's bookkeeping, and
//!   the body ended.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A stage of a request through the host (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Body read and decoded.
    Http,
    /// Signature, expiry, prices, replay, payment, account limits.
    Account,
    /// Enclave chosen, stream taken, request queued to it.
    Route,
    /// Waiting for the enclave.
    Enclave,
    /// Chunk records to the HTTP body.
    Relay,
    /// Receipt verification.
    Receipt,
    /// Waiting for the ledger writer (the batch before it committing).
    Queue,
    /// Ledger append less its waiting and its `COMMIT`.
    Commit,
    /// The ledger's `COMMIT` (WAL write, fsync).
    Fsync,
    /// Acknowledgement queued, final chunk released.
    Ack,
    /// Final chunk forwarded, bookkeeping, body ended.
    Release,
}

impl Stage {
    /// Every stage, in request order.
    pub const ALL: [Stage; 11] = [
        Stage::Http,
        Stage::Account,
        Stage::Route,
        Stage::Enclave,
        Stage::Relay,
        Stage::Receipt,
        Stage::Queue,
        Stage::Commit,
        Stage::Fsync,
        Stage::Ack,
        Stage::Release,
    ];

    /// Its name (metrics label, JSON key prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Http => "http",
            Stage::Account => "account",
            Stage::Route => "route",
            Stage::Enclave => "enclave",
            Stage::Relay => "relay",
            Stage::Receipt => "receipt",
            Stage::Queue => "queue",
            Stage::Commit => "commit",
            Stage::Fsync => "fsync",
            Stage::Ack => "ack",
            Stage::Release => "release",
        }
    }
}

/// Stages of one request: time spent in each so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    start: Instant,
    last: Instant,
    spent: [Duration; Stage::ALL.len()],
}

impl Timeline {
    /// A timeline starting now.
    pub(crate) fn start() -> Timeline {
        let now = Instant::now();
        Timeline {
            start: now,
            last: now,
            spent: [Duration::ZERO; Stage::ALL.len()],
        }
    }

    /// The time since the last boundary was spent in `stage`.
    pub(crate) fn lap(&mut self, stage: Stage) {
        let now = Instant::now();
        self.spent[stage as usize] += now.saturating_duration_since(self.last);
        self.last = now;
    }

    /// The time since the last boundary was spent in `stage`, but for
    /// `parts` (each at most what is left of it) spent in theirs.
    pub(crate) fn lap_split(&mut self, stage: Stage, parts: &[(Stage, Duration)]) {
        let now = Instant::now();
        let mut left = now.saturating_duration_since(self.last);
        for (part_stage, part) in parts {
            let part = (*part).min(left);
            self.spent[*part_stage as usize] += part;
            left -= part;
        }
        self.spent[stage as usize] += left;
        self.last = now;
    }

    fn total(&self) -> Duration {
        self.last.saturating_duration_since(self.start)
    }
}

/// Timelines kept for `GET /admin/timings`.
pub const KEPT: usize = 4096;

/// One completed request's timeline as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// 1, 2, 3, … in completion order (the paging cursor).
    pub seq: u64,
    /// Nanoseconds per stage, in [`Stage::ALL`] order.
    pub stages_ns: [u64; Stage::ALL.len()],
    /// Nanoseconds from the handler's start to the body's end.
    pub total_ns: u64,
}

impl Sample {
    /// One JSON object on one line: `seq`, `<stage>_ns` per stage,
    /// `total_ns`.
    pub fn to_json_line(&self) -> String {
        let mut s = String::with_capacity(256);
        let _ = write!(s, "{{\"seq\":{}", self.seq);
        for (stage, ns) in Stage::ALL.iter().zip(self.stages_ns) {
            let _ = write!(s, ",\"{}_ns\":{ns}", stage.as_str());
        }
        let _ = write!(s, ",\"total_ns\":{}}}", self.total_ns);
        s
    }
}

/// The most recent completed requests' timelines.
#[derive(Debug, Default)]
pub struct Timings {
    /// The last seq handed out, and the kept samples.
    recent: Mutex<(u64, VecDeque<Sample>)>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Timings {
    /// Store a completed request's timeline.
    pub(crate) fn record(&self, t: &Timeline) {
        let stages_ns = t.spent.map(nanos);
        if let Ok(mut g) = self.recent.lock() {
            let (next, list) = &mut *g;
            *next += 1;
            if list.len() == KEPT {
                list.pop_front();
            }
            list.push_back(Sample {
                seq: *next,
                stages_ns,
                total_ns: nanos(t.total()),
            });
        }
    }

    /// Kept samples with `seq > after`, oldest first.
    pub fn after(&self, after: u64) -> Vec<Sample> {
        self.recent
            .lock()
            .map(|g| g.1.iter().filter(|s| s.seq > after).copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_and_samples_page() {
        let mut t = Timeline::start();
        std::thread::sleep(Duration::from_millis(2));
        t.lap(Stage::Http);
        std::thread::sleep(Duration::from_millis(2));
        t.lap_split(Stage::Commit, &[(Stage::Fsync, Duration::from_millis(1))]);
        t.lap_split(
            Stage::Commit,
            &[
                (Stage::Queue, Duration::from_secs(9)),
                (Stage::Fsync, Duration::from_secs(9)),
            ],
        );
        let sum: Duration = t.spent.iter().sum();
        assert_eq!(sum, t.total());
        assert!(t.spent[Stage::Http as usize] >= Duration::from_millis(2));
        assert!(t.spent[Stage::Fsync as usize] >= Duration::from_millis(1));
        let store = Timings::default();
        for _ in 0..3 {
            store.record(&t);
        }
        let all = store.after(0);
        assert_eq!(all.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(store.after(2).len(), 1);
        let line = all[0].to_json_line();
        assert!(line.starts_with("{\"seq\":1,\"http_ns\":"), "{line}");
        assert!(line.contains("\"fsync_ns\":") && line.ends_with('}'));
    }
}
