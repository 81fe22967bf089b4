//! Prometheus metrics, written out by hand in the text exposition format
//! (version 0.0.4).
//!
//! Owns the counters, gauges and the one histogram the host exports, and
//! their rendering. Hand-written rather than the `prometheus-client` crate:
//! a dozen series with small fixed label sets need no registry, and a
//! dependency less is less to audit in a daemon that handles money (the
//! crate would add parking_lot, lock_api, dtoa and a derive crate).
//! `benches/metrics.rs` holds the same series in prometheus-client and
//! compares, side by side: the two expositions are byte for byte the
//! same, and ours renders and counts by label faster (see the bench for
//! the ratios); its single-bucket histogram update is why ours keeps
//! per-bucket counts and sums them when rendering. Labels
//! are only ever outcome names, reasons, status codes and the operator's
//! enclave addresses: never request or response content, never ciphertext,
//! never an account or request id (those go to logs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::ledger::LedgerStats;

/// How a `POST /v1/requests` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Outcome {
    /// The whole response, final chunk included, went out.
    Ok,
    /// Malformed request (`400`).
    BadRequest,
    /// Bad or missing account signature (`401`).
    Unauthorized,
    /// Evidence digest not served here, or no longer current (`409`).
    UnknownEvidence,
    /// A request id already in the ledger or in flight (`409`).
    Replayed,
    /// Body over the limit (`413`).
    TooLarge,
    /// Account over its rate or stream limit (`429`).
    RateLimited,
    /// No ready enclave, enclave busy, or draining (`503`).
    Unavailable,
    /// The enclave refused the request or failed before answering (`502`).
    EnclaveError,
    /// The enclave did not answer in time (`504`).
    Timeout,
    /// The response started but was cut: the final chunk was withheld or
    /// the enclave failed mid-stream.
    Truncated,
    /// The client went away before the end.
    ClientGone,
    /// A host-side failure (`500`).
    Internal,
    /// The offered prices are not acceptable (`412`).
    PriceRefused,
    /// No authorization, or its cap would be passed (`402`).
    PaymentRequired,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::UnknownEvidence => "unknown_evidence",
            Outcome::Replayed => "replayed",
            Outcome::TooLarge => "too_large",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unavailable => "unavailable",
            Outcome::EnclaveError => "enclave_error",
            Outcome::Timeout => "timeout",
            Outcome::Truncated => "truncated",
            Outcome::ClientGone => "client_gone",
            Outcome::Internal => "internal",
            Outcome::PriceRefused => "price_refused",
            Outcome::PaymentRequired => "payment_required",
        }
    }
}

/// Upper bounds (seconds) of the ledger commit latency histogram.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket, not cumulative (one atomic add per
    /// observation; `render` sums them into Prometheus' cumulative form).
    buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Every metric the host exports.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(Outcome, u16), u64>>,
    receipts_refused: Mutex<BTreeMap<&'static str, u64>>,
    enclaves: Mutex<BTreeMap<String, (bool, bool)>>,
    in_flight: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    receipts_appended: AtomicU64,
    rate_limited: AtomicU64,
    cancels_sent: AtomicU64,
    commit: Histogram,
    utilisation_milli: AtomicU64,
    tabs_stored: AtomicU64,
    tabs_rejected: AtomicU64,
    deposit_reads: Mutex<BTreeMap<&'static str, u64>>,
    deposit_refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Empty metrics that list `enclaves` (as disconnected) from the start.
    pub fn new(enclaves: impl IntoIterator<Item = String>) -> Metrics {
        let m = Metrics::default();
        if let Ok(mut e) = m.enclaves.lock() {
            for label in enclaves {
                e.insert(label, (false, false));
            }
        }
        m
    }

    /// Count a finished request.
    pub fn request(&self, outcome: Outcome, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((outcome, status)).or_default() += 1;
        }
        if outcome == Outcome::RateLimited {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests counted so far with this outcome (any status).
    pub fn requests_with(&self, outcome: Outcome) -> u64 {
        self.requests
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|((o, _), _)| *o == outcome)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Count a receipt refused, by reason label.
    pub fn receipt_refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.receipts_refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Count a receipt appended, with the time from append to durable
    /// commit.
    pub fn receipt_appended(&self, commit_latency: Duration) {
        self.receipts_appended.fetch_add(1, Ordering::Relaxed);
        let secs = commit_latency.as_secs_f64();
        if let Some(i) = COMMIT_BUCKETS.iter().position(|le| secs <= *le) {
            self.commit.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.commit.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(commit_latency.as_micros()).unwrap_or(u64::MAX);
        self.commit.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Record whether the host holds a connection to an enclave.
    pub fn enclave_connected(&self, label: &str, connected: bool) {
        if let Ok(mut m) = self.enclaves.lock() {
            m.entry(label.to_string()).or_default().0 = connected;
        }
    }

    /// Record whether an enclave's evidence is verified and served.
    pub fn enclave_verified(&self, label: &str, verified: bool) {
        if let Ok(mut m) = self.enclaves.lock() {
            m.entry(label.to_string()).or_default().1 = verified;
        }
    }

    /// Request bytes read.
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Response bytes forwarded.
    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A `Cancel` sent to an enclave.
    pub fn cancel_sent(&self) {
        self.cancels_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Set the smoothed utilisation the price multiplier follows.
    pub fn set_utilisation(&self, milli: u32) {
        self.utilisation_milli
            .store(u64::from(milli), Ordering::Relaxed);
    }

    /// Count enclave-signed tabs stored (`ok`) or refused (bad signature,
    /// malformed update).
    pub fn tabs(&self, stored: usize, ok: bool) {
        let c = if ok {
            &self.tabs_stored
        } else {
            &self.tabs_rejected
        };
        c.fetch_add(stored as u64, Ordering::Relaxed);
    }

    /// Count a read of a client's deposit on chain: `ok`, `no_deposit`
    /// (the contract does not know the account) or `failed`.
    pub fn deposit_read(&self, result: &'static str) {
        if let Ok(mut m) = self.deposit_reads.lock() {
            *m.entry(result).or_default() += 1;
        }
    }

    /// Count a request the deposit check refused, by reason.
    pub fn deposit_refused(&self, why: &crate::deposits::DepositRefusal) {
        use crate::deposits::DepositRefusal as R;
        let reason = match why {
            R::NoDeposit { .. } => "no_deposit",
            R::Insufficient { .. } => "insufficient",
            R::ChainUnavailable(_) => "chain_unavailable",
            R::Ledger(_) => "ledger",
        };
        if let Ok(mut m) = self.deposit_refusals.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Set the in-flight stream gauge.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, ledger: &LedgerStats) -> String {
        let mut s = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let head = |s: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        head(
            &mut s,
            "cocoon_host_requests_total",
            "counter",
            "POST /v1/requests by outcome and HTTP status.",
        );
        if let Ok(m) = self.requests.lock() {
            for ((o, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "cocoon_host_requests_total{{outcome=\"{}\",status=\"{status}\"}} {n}",
                    o.as_str()
                );
            }
        }
        head(
            &mut s,
            "cocoon_host_in_flight_streams",
            "gauge",
            "Requests forwarded to an enclave and not finished.",
        );
        let _ = writeln!(s, "cocoon_host_in_flight_streams {}", get(&self.in_flight));
        head(
            &mut s,
            "cocoon_host_utilisation_milli",
            "gauge",
            "Smoothed utilisation (thousandths) the price multiplier follows.",
        );
        let _ = writeln!(
            s,
            "cocoon_host_utilisation_milli {}",
            get(&self.utilisation_milli)
        );
        head(
            &mut s,
            "cocoon_host_tabs_total",
            "counter",
            "Enclave-signed tabs received: stored, or rejected (bad signature or malformed update; the connection is closed).",
        );
        let _ = writeln!(
            s,
            "cocoon_host_tabs_total{{result=\"stored\"}} {}\ncocoon_host_tabs_total{{result=\"rejected\"}} {}",
            get(&self.tabs_stored),
            get(&self.tabs_rejected)
        );
        for (name, help, label, map) in [
            (
                "cocoon_host_deposit_reads_total",
                "Reads of a client's deposit in the payment contract (get_client), by result.",
                "result",
                &self.deposit_reads,
            ),
            (
                "cocoon_host_deposit_refusals_total",
                "Requests the deposit check refused, by reason (402 no_deposit or insufficient, 503 chain_unavailable, 500 ledger).",
                "reason",
                &self.deposit_refusals,
            ),
        ] {
            head(&mut s, name, "counter", help);
            if let Ok(m) = map.lock() {
                for (v, n) in m.iter() {
                    let _ = writeln!(s, "{name}{{{label}=\"{v}\"}} {n}");
                }
            }
        }
        head(
            &mut s,
            "cocoon_host_request_bytes_total",
            "counter",
            "Sealed request bytes read from clients.",
        );
        let _ = writeln!(s, "cocoon_host_request_bytes_total {}", get(&self.bytes_in));
        head(
            &mut s,
            "cocoon_host_response_bytes_total",
            "counter",
            "Chunk record bytes forwarded to clients.",
        );
        let _ = writeln!(
            s,
            "cocoon_host_response_bytes_total {}",
            get(&self.bytes_out)
        );
        head(
            &mut s,
            "cocoon_host_receipts_appended_total",
            "counter",
            "Receipts verified and durably committed to the ledger.",
        );
        let _ = writeln!(
            s,
            "cocoon_host_receipts_appended_total {}",
            get(&self.receipts_appended)
        );
        head(
            &mut s,
            "cocoon_host_receipts_refused_total",
            "counter",
            "Receipts refused (final chunk withheld), by reason.",
        );
        if let Ok(m) = self.receipts_refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    s,
                    "cocoon_host_receipts_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        head(
            &mut s,
            "cocoon_host_rate_limited_total",
            "counter",
            "Requests refused with 429.",
        );
        let _ = writeln!(
            s,
            "cocoon_host_rate_limited_total {}",
            get(&self.rate_limited)
        );
        head(
            &mut s,
            "cocoon_host_cancels_sent_total",
            "counter",
            "Cancel frames sent to enclaves (client gone, stalled, refused).",
        );
        let _ = writeln!(
            s,
            "cocoon_host_cancels_sent_total {}",
            get(&self.cancels_sent)
        );

        head(
            &mut s,
            "cocoon_host_ledger_commit_seconds",
            "histogram",
            "Time from a receipt append to its durable commit.",
        );
        let mut cumulative = 0u64;
        for (i, le) in COMMIT_BUCKETS.iter().enumerate() {
            cumulative = cumulative.saturating_add(get(&self.commit.buckets[i]));
            let _ = writeln!(
                s,
                "cocoon_host_ledger_commit_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = get(&self.commit.count);
        let _ = writeln!(
            s,
            "cocoon_host_ledger_commit_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "cocoon_host_ledger_commit_seconds_sum {}",
            get(&self.commit.sum_micros) as f64 / 1e6
        );
        let _ = writeln!(s, "cocoon_host_ledger_commit_seconds_count {count}");
        head(
            &mut s,
            "cocoon_host_ledger_batches_total",
            "counter",
            "Ledger transactions committed (group commit).",
        );
        let _ = writeln!(
            s,
            "cocoon_host_ledger_batches_total {}",
            get(&ledger.batches)
        );
        head(
            &mut s,
            "cocoon_host_ledger_failed_batches_total",
            "counter",
            "Ledger transactions that failed to commit.",
        );
        let _ = writeln!(
            s,
            "cocoon_host_ledger_failed_batches_total {}",
            get(&ledger.failed_batches)
        );

        head(
            &mut s,
            "cocoon_host_enclave_connected",
            "gauge",
            "1 while the host holds a connection to the enclave.",
        );
        let enclaves = self.enclaves.lock().map(|m| m.clone()).unwrap_or_default();
        for (label, (connected, _)) in &enclaves {
            let _ = writeln!(
                s,
                "cocoon_host_enclave_connected{{enclave=\"{}\"}} {}",
                escape_label(label),
                u8::from(*connected)
            );
        }
        head(
            &mut s,
            "cocoon_host_enclave_verified",
            "gauge",
            "1 while the enclave's evidence is verified and it is served.",
        );
        for (label, (_, verified)) in &enclaves {
            let _ = writeln!(
                s,
                "cocoon_host_enclave_verified{{enclave=\"{}\"}} {}",
                escape_label(label),
                u8::from(*verified)
            );
        }
        s
    }
}

/// Escape a label value (backslash, quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exposition() {
        let m = Metrics::new(["unix:/a\"b".to_string()]);
        m.request(Outcome::Ok, 200);
        m.request(Outcome::RateLimited, 429);
        m.receipt_refused("bad_signature");
        m.receipt_appended(Duration::from_millis(3));
        m.enclave_connected("unix:/a\"b", true);
        m.enclave_verified("unix:/a\"b", true);
        let t = m.render(&LedgerStats::default());
        assert!(t.contains("cocoon_host_requests_total{outcome=\"ok\",status=\"200\"} 1"));
        assert!(t.contains("cocoon_host_rate_limited_total 1"));
        assert!(t.contains("cocoon_host_receipts_refused_total{reason=\"bad_signature\"} 1"));
        assert!(t.contains("cocoon_host_ledger_commit_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(t.contains("cocoon_host_ledger_commit_seconds_bucket{le=\"0.005\"} 1"));
        // Buckets are cumulative: the 3 ms commit is in every bucket from
        // 5 ms up, a 3 s one only in +Inf.
        m.receipt_appended(Duration::from_secs(3));
        let t2 = m.render(&LedgerStats::default());
        assert!(t2.contains("cocoon_host_ledger_commit_seconds_bucket{le=\"0.005\"} 1"));
        assert!(t2.contains("cocoon_host_ledger_commit_seconds_bucket{le=\"2.5\"} 1"));
        assert!(t2.contains("cocoon_host_ledger_commit_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(t2.contains("cocoon_host_ledger_commit_seconds_count 2"));
        assert!(t.contains("cocoon_host_enclave_connected{enclave=\"unix:/a\\\"b\"} 1"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
