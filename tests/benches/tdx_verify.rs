//! One TDX quote verified with its collateral: ours (`verify_tdx`, which
//! wraps `dcap-qvl` and adds an independent quote parse, an independent TCB
//! evaluation and the policy) against `dcap-qvl` alone with its ring backend,
//! side by side in one run. Prints the ratio; the goal for a wrapper is that
//! our layer adds at most 10 %.
//!
//! `cargo bench -p cocoon-tests --bench tdx_verify`

use std::hint::black_box;
use std::time::Duration;

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_tests::bench::{interleaved, mode, ms};
use cocoon_tests::{read_vector, unhex};
use cocoon_verifier::tdx::verify_tdx;
use cocoon_verifier::{TdxPolicy, UnixTime};
use criterion::Criterion;

/// The vector's verification time (manifest: 2025-07-19T10:00:34Z).
const NOW: UnixTime = UnixTime(1_752_919_234);
const GOAL_OVERHEAD: f64 = 1.10;

struct Case {
    quote: Vec<u8>,
    ours: TdxCollateral,
    theirs: dcap_qvl::QuoteCollateralV3,
    policy: TdxPolicy,
    root: Vec<u8>,
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
    }
}

impl Case {
    fn ours(&self) -> bool {
        verify_tdx(black_box(&self.quote), &self.ours, &self.policy, NOW).is_ok()
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
        case.ours() && case.dcap_ring() && case.dcap_verifier() && case.dcap_rustcrypto(),
        "every path must accept the real quote"
    );
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("tdx_verify");
        g.bench_function("ours", |b| b.iter(|| case.ours()));
        g.bench_function("dcap-qvl ring", |b| b.iter(|| case.dcap_ring()));
        g.bench_function("dcap-qvl QuoteVerifier ring", |b| {
            b.iter(|| case.dcap_verifier())
        });
        g.bench_function("dcap-qvl rustcrypto", |b| b.iter(|| case.dcap_rustcrypto()));
        g.finish();
    }
    c.final_summary();
    if mode.rounds == 0 {
        return;
    }
    // Ours against each dcap-qvl entry point, interleaved pairwise; the
    // pure-Rust backend (4x slower) runs in its own loop so it does not
    // disturb the close comparison.
    let a = interleaved(
        mode.rounds,
        &mut [&mut || case.ours(), &mut || case.dcap_ring()],
    );
    let b = interleaved(
        mode.rounds,
        &mut [&mut || case.ours(), &mut || case.dcap_verifier()],
    );
    let rc = interleaved(mode.rounds.min(100), &mut [&mut || case.dcap_rustcrypto()])[0];
    println!();
    if !mode.measuring {
        println!(
            "(test mode: a smoke run of the ratio loop, not a measurement; use `cargo bench`)"
        );
    }
    println!(
        "TDX quote + collateral verification: medians of {} interleaved rounds, in two pairings",
        mode.rounds
    );
    println!(
        "  ours {} vs dcap-qvl verify::ring::verify {}: {:.3}x",
        ms(a[0]),
        ms(a[1]),
        a[0].as_secs_f64() / a[1].as_secs_f64()
    );
    println!(
        "  ours {} vs dcap-qvl QuoteVerifier::new(root).verify (ring) {}: {:.3}x",
        ms(b[0]),
        ms(b[1]),
        b[0].as_secs_f64() / b[1].as_secs_f64()
    );
    println!(
        "  dcap-qvl verify::rustcrypto::verify {} ({:.2}x ours)",
        ms(rc),
        rc.as_secs_f64() / a[0].as_secs_f64()
    );
    if mode.measuring {
        let overhead =
            (a[0].as_secs_f64() / a[1].as_secs_f64()).max(b[0].as_secs_f64() / b[1].as_secs_f64());
        let verdict = if overhead <= GOAL_OVERHEAD {
            "meets"
        } else {
            "MISSES"
        };
        println!(
            "  our layer adds at most {:.1} % ({verdict} the <= 10 % goal for a wrapper)",
            (overhead - 1.0) * 100.0
        );
    }
}
