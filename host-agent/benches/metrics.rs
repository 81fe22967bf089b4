//! The host's hand-written Prometheus exposition (`cocoon_host::metrics`)
//! against the `prometheus-client` crate holding the same series (same
//! names, labels, buckets), side by side in one run: rendering `/metrics`,
//! a plain counter, a labelled counter and a histogram observation. Prints
//! nanoseconds per operation and the ratio prometheus-client / ours
//! (medians over interleaved rounds, since these machines are shared).
//!
//! It also prints where the two expositions differ, line by line, which is
//! what adopting the crate would change for a scraper.
//!
//! `cargo bench -p cocoon-host --bench metrics`

use std::hint::black_box;
use std::time::{Duration, Instant};

use cocoon_host::ledger::LedgerStats;
use cocoon_host::metrics::{Metrics, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
mod common;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Interleaved rounds per measurement (one in a smoke test).
const ROUNDS: usize = 15;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

const OUTCOMES: [(Outcome, u16); 12] = [
    (Outcome::Ok, 200),
    (Outcome::BadRequest, 400),
    (Outcome::Unauthorized, 401),
    (Outcome::PaymentRequired, 402),
    (Outcome::UnknownEvidence, 409),
    (Outcome::Replayed, 409),
    (Outcome::PriceRefused, 412),
    (Outcome::TooLarge, 413),
    (Outcome::RateLimited, 429),
    (Outcome::Unavailable, 503),
    (Outcome::EnclaveError, 502),
    (Outcome::Timeout, 504),
];

const REASONS: [&str; 4] = [
    "bad_signature",
    "wrong_request",
    "tokens_over_limit",
    "missing",
];

const ENCLAVES: [&str; 4] = [
    "unix:/run/cocoon/e0.sock",
    "unix:/run/cocoon/e1.sock",
    "vsock:3:5000",
    "vsock:4:5000",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    outcome: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnclaveLabels {
    enclave: String,
}

/// The host's metrics held by prometheus-client. Help texts lose their
/// final full stop: the registry adds one.
struct Peer {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    receipts_refused: Family<ReasonLabels, Counter>,
    tabs: Family<ResultLabels, Counter>,
    deposit_reads: Family<ResultLabels, Counter>,
    deposit_refusals: Family<ReasonLabels, Counter>,
    in_flight: Gauge,
    utilisation: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
    receipts_appended: Counter,
    rate_limited: Counter,
    cancels: Counter,
    commit: Histogram,
    batches: Counter,
    failed_batches: Counter,
    connected: Family<EnclaveLabels, Gauge>,
    verified: Family<EnclaveLabels, Gauge>,
}

impl Peer {
    fn new() -> Peer {
        let mut registry = Registry::default();
        let p = Peer {
            requests: Family::default(),
            receipts_refused: Family::default(),
            tabs: Family::default(),
            deposit_reads: Family::default(),
            deposit_refusals: Family::default(),
            in_flight: Gauge::default(),
            utilisation: Gauge::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            receipts_appended: Counter::default(),
            rate_limited: Counter::default(),
            cancels: Counter::default(),
            commit: Histogram::new(BUCKETS),
            batches: Counter::default(),
            failed_batches: Counter::default(),
            connected: Family::default(),
            verified: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "cocoon_host_requests",
            "POST /v1/requests by outcome and HTTP status",
            p.requests.clone(),
        );
        r.register(
            "cocoon_host_in_flight_streams",
            "Requests forwarded to an enclave and not finished",
            p.in_flight.clone(),
        );
        r.register(
            "cocoon_host_utilisation_milli",
            "Smoothed utilisation (thousandths) the price multiplier follows",
            p.utilisation.clone(),
        );
        r.register(
            "cocoon_host_tabs",
            "Enclave-signed tabs received: stored, or rejected (bad signature or malformed update; the connection is closed)",
            p.tabs.clone(),
        );
        r.register(
            "cocoon_host_deposit_reads",
            "Reads of a client's deposit in the payment contract (get_client), by result",
            p.deposit_reads.clone(),
        );
        r.register(
            "cocoon_host_deposit_refusals",
            "Requests the deposit check refused, by reason (402 no_deposit or insufficient, 503 chain_unavailable, 500 ledger)",
            p.deposit_refusals.clone(),
        );
        r.register(
            "cocoon_host_request_bytes",
            "Sealed request bytes read from clients",
            p.bytes_in.clone(),
        );
        r.register(
            "cocoon_host_response_bytes",
            "Chunk record bytes forwarded to clients",
            p.bytes_out.clone(),
        );
        r.register(
            "cocoon_host_receipts_appended",
            "Receipts verified and durably committed to the ledger",
            p.receipts_appended.clone(),
        );
        r.register(
            "cocoon_host_receipts_refused",
            "Receipts refused (final chunk withheld), by reason",
            p.receipts_refused.clone(),
        );
        r.register(
            "cocoon_host_rate_limited",
            "Requests refused with 429",
            p.rate_limited.clone(),
        );
        r.register(
            "cocoon_host_cancels_sent",
            "Cancel frames sent to enclaves (client gone, stalled, refused)",
            p.cancels.clone(),
        );
        r.register(
            "cocoon_host_ledger_commit_seconds",
            "Time from a receipt append to its durable commit",
            p.commit.clone(),
        );
        r.register(
            "cocoon_host_ledger_batches",
            "Ledger transactions committed (group commit)",
            p.batches.clone(),
        );
        r.register(
            "cocoon_host_ledger_failed_batches",
            "Ledger transactions that failed to commit",
            p.failed_batches.clone(),
        );
        r.register(
            "cocoon_host_enclave_connected",
            "1 while the host holds a connection to the enclave",
            p.connected.clone(),
        );
        r.register(
            "cocoon_host_enclave_verified",
            "1 while the enclave's evidence is verified and it is served",
            p.verified.clone(),
        );
        Peer { registry, ..p }
    }

    fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry)
            .expect("encoding into a String");
        s
    }
}

/// Both sides with the same content: every outcome, reason and enclave
/// seen, some traffic.
fn populate(ours: &Metrics, ledger: &LedgerStats, peer: &Peer) {
    for (i, (o, status)) in OUTCOMES.iter().enumerate() {
        for _ in 0..=i {
            ours.request(*o, *status);
            peer.requests
                .get_or_create(&RequestLabels {
                    outcome: o.as_str(),
                    status: *status,
                })
                .inc();
            if *o == Outcome::RateLimited {
                peer.rate_limited.inc();
            }
        }
    }
    for r in REASONS {
        ours.receipt_refused(r);
        peer.receipts_refused
            .get_or_create(&ReasonLabels { reason: r })
            .inc();
    }
    for (i, e) in ENCLAVES.iter().enumerate() {
        ours.enclave_connected(e, true);
        ours.enclave_verified(e, i % 2 == 0);
        let l = EnclaveLabels {
            enclave: e.to_string(),
        };
        peer.connected.get_or_create(&l).set(1);
        peer.verified.get_or_create(&l).set(i64::from(i % 2 == 0));
    }
    for ms in [1, 3, 7, 20, 90, 400] {
        let d = Duration::from_millis(ms);
        ours.receipt_appended(d);
        peer.receipts_appended.inc();
        peer.commit.observe(d.as_secs_f64());
    }
    ours.tabs(5, true);
    ours.tabs(1, false);
    peer.tabs
        .get_or_create(&ResultLabels { result: "stored" })
        .inc_by(5);
    peer.tabs
        .get_or_create(&ResultLabels { result: "rejected" })
        .inc();
    for (result, n) in [("failed", 1), ("no_deposit", 2), ("ok", 7)] {
        for _ in 0..n {
            ours.deposit_read(result);
        }
        peer.deposit_reads
            .get_or_create(&ResultLabels { result })
            .inc_by(n);
    }
    use cocoon_host::deposits::DepositRefusal;
    for (refusal, reason) in [
        (
            DepositRefusal::ChainUnavailable("down".into()),
            "chain_unavailable",
        ),
        (
            DepositRefusal::Insufficient {
                balance: 1,
                pending: 0,
                owed: 0,
                in_flight: 0,
                available: 1,
                needed: 2,
            },
            "insufficient",
        ),
    ] {
        ours.deposit_refused(&refusal);
        peer.deposit_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
    ours.add_bytes_in(123_456);
    peer.bytes_in.inc_by(123_456);
    ours.add_bytes_out(654_321);
    peer.bytes_out.inc_by(654_321);
    ours.cancel_sent();
    peer.cancels.inc();
    ours.set_in_flight(3);
    peer.in_flight.set(3);
    ours.set_utilisation(250);
    peer.utilisation.set(250);
    ledger
        .batches
        .store(6, std::sync::atomic::Ordering::Relaxed);
    peer.batches.inc_by(6);
}

/// Nanoseconds per call of `f`, over `iters` calls.
fn per_call(iters: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleave `ours` and `peer` for [`ROUNDS`] rounds; print the medians
/// and the ratio peer / ours.
fn compare(what: &str, iters: u32, mut ours: impl FnMut(), mut peer: impl FnMut()) {
    per_call(iters / 10 + 1, &mut ours);
    per_call(iters / 10 + 1, &mut peer);
    let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let iters = common::scaled(iters, iters / 50 + 1);
    for _ in 0..common::scaled(ROUNDS, 1) {
        let x = per_call(iters, &mut ours);
        let y = per_call(iters, &mut peer);
        a.push(x);
        b.push(y);
        ratio.push(y / x);
    }
    println!(
        "{what:<34} ours {:>9.1} ns   prometheus-client {:>9.1} ns   ratio {:>5.2}",
        median(a),
        median(b),
        median(ratio)
    );
}

fn main() {
    let ours = Metrics::new(ENCLAVES.iter().map(|e| e.to_string()));
    let ledger = LedgerStats::default();
    let peer = Peer::new();
    populate(&ours, &ledger, &peer);

    let a = ours.render(&ledger);
    let b = peer.render();
    let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "exposition: ours {} bytes / {} samples, prometheus-client {} bytes / {} samples",
        a.len(),
        samples(&a),
        b.len(),
        samples(&b)
    );
    let mut only_ours: Vec<&str> = a.lines().filter(|l| !b.lines().any(|m| m == *l)).collect();
    let only_peer: Vec<&str> = b.lines().filter(|l| !a.lines().any(|m| m == *l)).collect();
    only_ours.truncate(12);
    println!("lines only in ours ({} shown):", only_ours.len());
    for l in &only_ours {
        println!("  {l}");
    }
    println!("lines only in prometheus-client's ({}):", only_peer.len());
    for l in only_peer.iter().take(12) {
        println!("  {l}");
    }
    println!();

    compare(
        "render /metrics",
        2_000,
        || {
            black_box(ours.render(&ledger));
        },
        || {
            black_box(peer.render());
        },
    );
    compare(
        "counter += n",
        2_000_000,
        || ours.add_bytes_in(black_box(17)),
        || {
            peer.bytes_in.inc_by(black_box(17));
        },
    );
    let labels = RequestLabels {
        outcome: Outcome::Ok.as_str(),
        status: 200,
    };
    compare(
        "labelled counter += 1 (outcome)",
        1_000_000,
        || ours.request(black_box(Outcome::Ok), black_box(200)),
        || {
            peer.requests.get_or_create(black_box(&labels)).inc();
        },
    );
    let d = Duration::from_micros(2_700);
    compare(
        "histogram observe (commit latency)",
        1_000_000,
        || ours.receipt_appended(black_box(d)),
        || {
            peer.receipts_appended.inc();
            peer.commit.observe(black_box(d).as_secs_f64());
        },
    );
}
