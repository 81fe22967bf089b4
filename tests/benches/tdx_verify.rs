//! One TDX quote verified with its collateral, side by side in one run,
//! interleaved round by round:
//!
//! * ours cold: `verify_tdx`, a new `TdxVerifier` per call (nothing cached:
//!   every collateral signature, CRL and chain is verified);
//! * ours warm: one `TdxVerifier` for every call, same collateral and the
//!   same quote (the vector set has one quote that verifies with its
//!   collateral, `tdx/dcap-qvl/tdx_quote`, so the PCK chain is a cache hit
//!   too; what is left per call is the quote and QE report signatures, the
//!   QE report binding, the dates, revocation, the TCB evaluation and the
//!   policy);
//! * `dcap-qvl` (`QuoteVerifier::new(root).verify`, ring backend), which
//!   caches nothing.
//!
//! Prints the ratios; the goal (issue 22) is ours at least 1.5x faster than
//! `dcap-qvl`, cold and warm.
//!
//! `cargo bench -p cocoon-tests --bench tdx_verify`

use std::hint::black_box;
use std::time::Duration;

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_tests::bench::{interleaved, mode, ms};
use cocoon_tests::{read_vector, unhex};
use cocoon_verifier::tdx::verify_tdx;
use cocoon_verifier::{TdxPolicy, TdxVerifier, UnixTime};
use criterion::Criterion;

/// The vector's verification time (manifest: 2025-07-19T10:00:34Z).
const NOW: UnixTime = UnixTime(1_752_919_234);
/// Issue 22: ours at least this much faster than dcap-qvl, cold and warm.
const GOAL_SPEEDUP: f64 = 1.5;

struct Case {
    quote: Vec<u8>,
    ours: TdxCollateral,
    theirs: dcap_qvl::QuoteCollateralV3,
    policy: TdxPolicy,
    root: Vec<u8>,
    warm: TdxVerifier,
}

fn case() -> Case {
    let quote = read_vector("tdx/dcap-qvl/tdx_quote");
    let ours = TdxCollateral::from_bytes(&read_vector("tdx/dcap-qvl/tdx_quote_collateral.json"))
        .expect("collateral");
    let theirs = dcap_qvl::QuoteCollateralV3 {
        pck_crl_issuer_chain: ours.pck_crl_issuer_chain.clone(),
        root_ca_crl: ours.root_ca_crl.clone().expect("root CRL"),
        pck_crl: ours.pck_crl.clone().expect("PCK CRL"),
        tcb_info_issuer_chain: ours.tcb_info_issuer_chain.clone(),
        tcb_info: ours.tcb_info.clone(),
        tcb_info_signature: ours.tcb_info_signature.clone(),
        qe_identity_issuer_chain: ours.qe_identity_issuer_chain.clone(),
        qe_identity: ours.qe_identity.clone(),
        qe_identity_signature: ours.qe_identity_signature.clone(),
        pck_certificate_chain: None,
    };
    let m = cocoon_tests::manifest();
    let e = m["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["path"] == "tdx/dcap-qvl/tdx_quote")
        .expect("entry");
    let mrtd: [u8; 48] = unhex(&e["expected"]["fields"]["body"]["mrtd"])
        .try_into()
        .expect("mrtd");
    Case {
        quote,
        ours,
        theirs,
        policy: TdxPolicy::pinned_to_mrtd(vec![mrtd]),
        root: read_vector("tdx/intel-root/TrustedRootCA.der"),
        warm: TdxVerifier::new(),
    }
}

impl Case {
    fn ours(&self) -> bool {
        verify_tdx(black_box(&self.quote), &self.ours, &self.policy, NOW).is_ok()
    }
    fn ours_warm(&self) -> bool {
        self.warm
            .verify(black_box(&self.quote), &self.ours, &self.policy, NOW)
            .is_ok()
    }
    fn dcap_ring(&self) -> bool {
        dcap_qvl::verify::ring::verify(black_box(&self.quote), &self.theirs, NOW.0)
            .is_ok_and(|r| r.status == "UpToDate")
    }
    fn dcap_verifier(&self) -> bool {
        dcap_qvl::verify::QuoteVerifier::new(self.root.clone())
            .verify(black_box(&self.quote), &self.theirs, NOW.0)
            .is_ok_and(|r| r.status == "UpToDate")
    }
    fn dcap_rustcrypto(&self) -> bool {
        dcap_qvl::verify::rustcrypto::verify(black_box(&self.quote), &self.theirs, NOW.0)
            .is_ok_and(|r| r.status == "UpToDate")
    }
}

fn main() {
    let mode = mode(300);
    let case = case();
    assert!(
        case.ours()
            && case.ours_warm()
            && case.dcap_ring()
            && case.dcap_verifier()
            && case.dcap_rustcrypto(),
        "every path must accept the real quote"
    );
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("tdx_verify");
        g.bench_function("ours cold", |b| b.iter(|| case.ours()));
        g.bench_function("ours warm", |b| b.iter(|| case.ours_warm()));
        g.bench_function("dcap-qvl QuoteVerifier ring", |b| {
            b.iter(|| case.dcap_verifier())
        });
        g.bench_function("dcap-qvl ring", |b| b.iter(|| case.dcap_ring()));
        g.bench_function("dcap-qvl rustcrypto", |b| b.iter(|| case.dcap_rustcrypto()));
        g.finish();
    }
    c.final_summary();
    if mode.rounds == 0 {
        return;
    }
    // Ours cold, ours warm and dcap-qvl interleaved round by round; the
    // pure-Rust dcap-qvl backend (several times slower) runs in its own loop
    // so it does not disturb the close comparison.
    let t = interleaved(
        mode.rounds,
        &mut [&mut || case.ours(), &mut || case.ours_warm(), &mut || {
            case.dcap_verifier()
        }],
    );
    let rc = interleaved(mode.rounds.min(100), &mut [&mut || case.dcap_rustcrypto()])[0];
    let (cold, warm, dcap) = (t[0], t[1], t[2]);
    let speedup = |ours: Duration| dcap.as_secs_f64() / ours.as_secs_f64();
    println!();
    if !mode.measuring {
        println!(
            "(test mode: a smoke run of the ratio loop, not a measurement; use `cargo bench`)"
        );
    }
    println!(
        "TDX quote + collateral verification: medians of {} interleaved rounds",
        mode.rounds
    );
    println!(
        "  ours cold (verify_tdx, new TdxVerifier per call)  {}: {:.2}x faster than dcap-qvl",
        ms(cold),
        speedup(cold)
    );
    println!(
        "  ours warm (one TdxVerifier, same collateral, same quote)  {}: {:.2}x faster than dcap-qvl",
        ms(warm),
        speedup(warm)
    );
    println!(
        "  dcap-qvl QuoteVerifier::new(root).verify (ring)  {}",
        ms(dcap)
    );
    println!(
        "  dcap-qvl verify::rustcrypto::verify {} ({:.2}x ours cold)",
        ms(rc),
        rc.as_secs_f64() / cold.as_secs_f64()
    );
    if mode.measuring {
        for (what, ours) in [("cold", cold), ("warm", warm)] {
            let verdict = if speedup(ours) >= GOAL_SPEEDUP {
                "meets"
            } else {
                "MISSES"
            };
            println!("  ours {what} {verdict} the goal of {GOAL_SPEEDUP}x dcap-qvl's speed");
        }
    }
}
