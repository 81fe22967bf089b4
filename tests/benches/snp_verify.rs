//! SEV-SNP report verification, cold and warm, beside the `sev` crate's own
//! verification of the same real reports in the same run.
//!
//! * ours cold: [`cocoon_verifier::verify_snp`] — a fresh verifier with an
//!   empty cache: ARK self-signature, ASK and VCEK signatures (RSA-PSS-4096),
//!   the report signature (ECDSA P-384) and every structural, key-binding and
//!   policy check.
//! * ours warm: one [`SnpVerifier`] reused, so the chain comes from its cache.
//! * sev cold: parse ARK, ASK and VCEK (DER) and the report with the `sev`
//!   API, then `(&Chain, &AttestationReport).verify()` (signatures only).
//! * sev warm: certificates parsed and the chain verified beforehand; parse
//!   the report and `(&vcek, &AttestationReport).verify()`.
//! * sev cold, roots pre-parsed: as sev cold but ARK and ASK parsed
//!   beforehand (our verifier's roots are parsed once per process too).
//!
//! After criterion's groups, an interleaved loop times every path in the same
//! run and prints medians and the ratios sev / ours. Run with
//! `cargo bench -p cocoon-tests --bench snp_verify`; add `-- --quick` for a
//! short run, `--no-default-features` for our pure-Rust backend.
//! `COCOON_BENCH_ROUNDS` sets the rounds of the ratio loop (default 300; 0
//! skips it). Under `cargo test --benches` every path runs once and the loop
//! runs two rounds as a smoke test.

use std::hint::black_box;
use std::time::Duration;

use cocoon_attestation::snp::Product;
use cocoon_tests::bench::{median, ms, time};
use cocoon_tests::read_vector;
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::{verify_snp, SnpPolicy, SnpVerifier, UnixTime};
use criterion::Criterion;
use sev::certs::snp::{ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

/// 2025-10-01T08:00:00Z, inside every certificate's validity window.
const NOW: UnixTime = UnixTime(1_759_305_600);

/// Which signature backend cocoon-verifier was built with: this crate's
/// `fast-crypto` feature (on by default) selects aws-lc-rs; without it the
/// verifier uses pure-Rust RustCrypto.
const BACKEND: &str = if cfg!(feature = "fast-crypto") {
    "aws-lc-rs backend"
} else {
    "pure-Rust backend"
};

/// One real report with what verifies it.
#[derive(Clone)]
struct Case {
    name: &'static str,
    product: Product,
    report: Vec<u8>,
    vcek: Vec<u8>,
    ark: Vec<u8>,
    ask: Vec<u8>,
    policy: SnpPolicy,
}

/// Split a PEM bundle into the DER of its certificates with sev's own API.
fn pem_bundle_der(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(pem).expect("PEM is UTF-8");
    let end = "-----END CERTIFICATE-----";
    text.split_inclusive(end)
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| {
            Certificate::from_pem(b.trim().as_bytes())
                .and_then(|c| c.to_der())
                .expect("PEM certificate")
        })
        .collect()
}

fn case(name: &'static str, product: Product, dir: &str, roots: &str) -> Case {
    let report = read_vector(&format!("snp/{dir}/report.bin"));
    let vcek = read_vector(&format!("snp/{dir}/vcek.der"));
    // The bundles hold the ASK first and the ARK second.
    let mut bundle = pem_bundle_der(&read_vector(&format!("snp/amd-roots/{roots}")));
    assert_eq!(bundle.len(), 2, "{roots}: ASK and ARK");
    let ark = bundle.pop().unwrap();
    let ask = bundle.pop().unwrap();
    let measurement: [u8; 48] = report[0x90..0xC0].try_into().unwrap();
    Case {
        name,
        product,
        report,
        vcek,
        ark,
        ask,
        policy: SnpPolicy::pinned_to_measurements(vec![measurement]),
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("genoa", Product::Genoa, "genoa-v5-oak", "ask_ark_genoa.pem"),
        case(
            "milan",
            Product::Milan,
            "milan-v3-oak-oc-release",
            "ask_ark_milan.pem",
        ),
    ]
}

impl Case {
    fn certs(&self) -> SnpCertificates<'_> {
        SnpCertificates {
            vek: &self.vcek,
            chain: &[],
            crl: None,
        }
    }

    fn ours_cold(&self) -> bool {
        verify_snp(&self.report, self.certs(), &self.policy, NOW).is_ok()
    }

    fn ours_warm(&self, v: &SnpVerifier) -> bool {
        v.verify(&self.report, self.certs(), &self.policy, NOW)
            .is_ok()
    }

    fn sev_cold(&self) -> bool {
        let Ok(chain) = Chain::from_der(&self.ark, &self.ask, &self.vcek) else {
            return false;
        };
        let Ok(report) = AttestationReport::from_bytes(&self.report) else {
            return false;
        };
        (&chain, &report).verify().is_ok()
    }

    fn sev_cold_preparsed_roots(&self, roots: &ca::Chain) -> bool {
        let Ok(vek) = Certificate::from_der(&self.vcek) else {
            return false;
        };
        let chain = Chain {
            ca: roots.clone(),
            vek,
        };
        let Ok(report) = AttestationReport::from_bytes(&self.report) else {
            return false;
        };
        (&chain, &report).verify().is_ok()
    }

    fn sev_warm(&self, vcek: &Certificate) -> bool {
        let Ok(report) = AttestationReport::from_bytes(&self.report) else {
            return false;
        };
        (vcek, &report).verify().is_ok()
    }

    /// The sev chain, parsed and verified once (the state sev warm starts from).
    fn sev_verified_chain(&self) -> Chain {
        let chain =
            Chain::from_der(&self.ark, &self.ask, &self.vcek).expect("sev parses the chain");
        (&chain).verify().expect("sev verifies the chain");
        chain
    }

    /// Every path accepts the real report and rejects a one-bit change of
    /// its measurement, so no timing below measures a failing path.
    fn assert_paths(&self, warm: &SnpVerifier, chain: &Chain) {
        let ok = verify_snp(&self.report, self.certs(), &self.policy, NOW)
            .unwrap_or_else(|e| panic!("{}: ours rejects the real report: {e}", self.name));
        assert_eq!(ok.product(), self.product, "{}", self.name);
        assert!(self.ours_warm(warm), "{}: ours warm", self.name);
        assert!(self.ours_warm(warm), "{}: ours warm (cached)", self.name);
        assert!(self.sev_cold(), "{}: sev cold", self.name);
        assert!(
            self.sev_cold_preparsed_roots(&chain.ca),
            "{}: sev cold, roots pre-parsed",
            self.name
        );
        assert!(self.sev_warm(&chain.vek), "{}: sev warm", self.name);

        let mut bad = self.clone();
        bad.report[0x90] ^= 1;
        // Keep the policy satisfied, so only the signature can fail.
        bad.policy =
            SnpPolicy::pinned_to_measurements(vec![bad.report[0x90..0xC0].try_into().unwrap()]);
        let why = verify_snp(&bad.report, bad.certs(), &bad.policy, NOW)
            .expect_err("ours accepts a changed report");
        assert!(
            why.has(cocoon_verifier::ReasonKind::Signature),
            "{}: {why}",
            self.name
        );
        assert!(!bad.ours_warm(warm), "{}: ours warm, changed", self.name);
        assert!(!bad.sev_cold(), "{}: sev cold, changed", self.name);
        assert!(
            !bad.sev_warm(&chain.vek),
            "{}: sev warm, changed",
            self.name
        );
    }
}

fn criterion_groups(c: &mut Criterion, cases: &[Case]) {
    for case in cases {
        let warm = SnpVerifier::new();
        let chain = case.sev_verified_chain();
        case.assert_paths(&warm, &chain);

        let mut g = c.benchmark_group(format!("snp_verify/{}", case.name));
        g.bench_function("ours_cold", |b| {
            b.iter(|| assert!(black_box(black_box(case).ours_cold())))
        });
        g.bench_function("sev_cold", |b| {
            b.iter(|| assert!(black_box(black_box(case).sev_cold())))
        });
        g.bench_function("sev_cold_preparsed_roots", |b| {
            b.iter(|| {
                assert!(black_box(
                    black_box(case).sev_cold_preparsed_roots(&chain.ca)
                ))
            })
        });
        g.bench_function("ours_warm", |b| {
            b.iter(|| assert!(black_box(black_box(case).ours_warm(&warm))))
        });
        g.bench_function("sev_warm", |b| {
            b.iter(|| assert!(black_box(black_box(case).sev_warm(&chain.vek))))
        });
        g.finish();
    }
}

/// The goal: our full verification at least this many times faster
/// than sev's signature checks, cold and warm.
const GOAL: f64 = 3.0;

/// Time every path in interleaved rounds (the order rotates each round, so
/// drift on a shared machine hits all paths alike) and print medians and
/// the ratios sev / ours.
fn ratio_table(cases: &[Case], rounds: usize, measuring: bool) {
    let ratio = |sev: Duration, ours: Duration| sev.as_secs_f64() / ours.as_secs_f64();
    let row = |name: &str, path: &str, ours: Duration, sev: Duration, pre: Option<Duration>| {
        println!(
            "{name:<7} {path:<5} {:>11} {:>11} {:>8.1}x {:>22} {:>9}",
            ms(ours),
            ms(sev),
            ratio(sev, ours),
            pre.map(ms).unwrap_or_default(),
            pre.map(|p| format!("{:.1}x", ratio(p, ours)))
                .unwrap_or_default(),
        )
    };
    let mut summary = Vec::new();
    println!();
    if !measuring {
        println!(
            "(test mode: a smoke run of the ratio loop, not a measurement; use `cargo bench`)"
        );
    }
    println!(
        "SNP verification: medians of {rounds} interleaved rounds; ours: {BACKEND}; sev 8: crypto_nossl (pure Rust)"
    );
    println!(
        "{:<7} {:<5} {:>11} {:>11} {:>9} {:>22} {:>9}",
        "report", "path", "ours", "sev", "sev/ours", "sev, roots pre-parsed", "sev/ours"
    );
    for case in cases {
        let warm = SnpVerifier::new();
        let chain = case.sev_verified_chain();
        case.assert_paths(&warm, &chain);

        let mut t: [Vec<Duration>; 5] = Default::default();
        for round in 0..rounds {
            for k in 0..5 {
                let path = (k + round) % 5;
                let d = match path {
                    0 => time(|| black_box(case).ours_cold()),
                    1 => time(|| black_box(case).sev_cold()),
                    2 => time(|| black_box(case).sev_cold_preparsed_roots(&chain.ca)),
                    3 => time(|| black_box(case).ours_warm(&warm)),
                    _ => time(|| black_box(case).sev_warm(&chain.vek)),
                };
                t[path].push(d);
            }
        }
        let [ours_cold, sev_cold, sev_cold_pre, ours_warm, sev_warm] =
            t.map(|mut v| median(&mut v));
        row(case.name, "cold", ours_cold, sev_cold, Some(sev_cold_pre));
        row(case.name, "warm", ours_warm, sev_warm, None);
        summary.push((case.name, "cold", ratio(sev_cold, ours_cold)));
        summary.push((case.name, "warm", ratio(sev_warm, ours_warm)));
    }
    if !measuring {
        return;
    }
    println!();
    for (name, path, r) in summary {
        let verdict = if r >= GOAL { "meets" } else { "MISSES" };
        println!("{name} {path}: sev / ours = {r:.1}x ({verdict} the {GOAL}x goal)");
    }
}

fn main() {
    let mode = cocoon_tests::bench::mode(300);
    let cases = cases();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    criterion_groups(&mut c, &cases);
    c.final_summary();
    if mode.rounds > 0 {
        ratio_table(&cases, mode.rounds, mode.measuring);
    }
}
