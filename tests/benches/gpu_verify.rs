//! NVIDIA GPU evidence verification beside platform-only verification, in
//! the same run, as ratios of medians.
//!
//! Paths (each a full verification from bytes):
//! * platform: one SEV-SNP report (Genoa, `verify_snp`, cold: a fresh
//!   verifier, so the AMD chain is checked too) — what a client pays
//!   without GPUs.
//! * raw P-384: one bare ECDSA P-384/SHA-384 signature check of the same
//!   SPDM transcript, with `p384` (RustCrypto) and with `aws-lc-rs` (the
//!   backend our verifier uses natively): the primitive's cost.
//! * gpu: one H100 report with its 5-certificate chain (`verify_device`:
//!   parse, chain of four ECDSA P-384 links, the SPDM signature, nonce,
//!   FWID).
//! * gpu+rims: the H100 with its VBIOS RIM checked (XML signature, RIM
//!   chain) and its measurements compared (`verify_gpus`).
//! * hgx: the 8-GPU + 4-NVSwitch protected-PCIe set (`verify_gpus`).
//! * bundle 1 GPU / bundle hgx: platform then GPU set, as `verify_bundle`
//!   runs them.
//! * warm: one H100 and the HGX set through a [`GpuVerifier`] that has
//!   verified their chains before, against one raw aws-lc P-384 verify and
//!   the set's 12 report signatures alone (goals: <= 1.3x each).
//!
//! Run with `cargo bench -p cocoon-tests --bench gpu_verify`;
//! `COCOON_BENCH_ROUNDS` sets the rounds (default 100). Under
//! `cargo test --benches` each path runs twice as a smoke test.

use cocoon_attestation::nvidia::{GpuCollateral, SpdmReport};
use cocoon_tests::bench::{interleaved, mode, ms};
use cocoon_tests::read_vector;
use cocoon_verifier::nvidia::gpus::{verify_gpus, DeviceInput};
use cocoon_verifier::nvidia::rim::verify_rim;
use cocoon_verifier::nvidia::{verify_device, DeviceExpectations, Golden, GpuVerifier};
use cocoon_verifier::policy::GpuPolicy;
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::{verify_snp, SnpPolicy, UnixTime};

/// 2024-06-01T00:00:00Z: inside the windows of the SNP, device and RIM certificates.
const AT: UnixTime = UnixTime(1_717_200_000);

fn main() {
    let m = mode(100);
    if m.rounds == 0 {
        return;
    }
    // Platform: Genoa SNP report, cold.
    let snp_report = read_vector("snp/genoa-v5-oak/report.bin");
    let vcek = read_vector("snp/genoa-v5-oak/vcek.der");
    let measurement = cocoon_attestation::snp::SnpReport::parse(&snp_report)
        .expect("report")
        .measurement()
        .to_owned();
    let snp_policy = SnpPolicy::pinned_to_measurements(vec![measurement]);
    // The SNP vector's VCEK is valid at this later time; the GPU paths use AT.
    let snp_at = UnixTime(1_759_305_600);
    let platform = || {
        verify_snp(
            &snp_report,
            SnpCertificates {
                vek: &vcek,
                chain: &[],
                crl: None,
            },
            &snp_policy,
            snp_at,
        )
        .is_ok()
    };

    // One H100 (the 535 driver sample, which has a matching VBIOS RIM).
    let h100 = hex::decode(
        String::from_utf8(read_vector(
            "nvidia/h100-535-vbios-rim/hopperAttestationReport.txt",
        ))
        .expect("text")
        .trim(),
    )
    .expect("hex");
    let h100_chain = read_vector("nvidia/h100-535-vbios-rim/hopperCertChain.txt");
    let parsed = SpdmReport::parse(&h100).expect("report");
    let nonce: [u8; 32] = parsed.request_nonce().try_into().expect("32 bytes");
    let expect = DeviceExpectations {
        nonce: Some(&nonce),
        golden: None,
    };
    let gpu = || verify_device(&h100, &h100_chain, &expect, AT).is_ok();

    // The bare primitive: one P-384 signature over the same transcript.
    let leaf_pem = String::from_utf8(h100_chain.clone()).expect("PEM");
    let leaf_der = cocoon_tests::pem::certificates(&leaf_pem).remove(0);
    let leaf_key = {
        use der::Decode;
        let cert = x509_cert::Certificate::from_der(&leaf_der).expect("leaf");
        p384::ecdsa::VerifyingKey::from_sec1_bytes(
            cert.tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        )
        .expect("P-384 key")
    };
    let sig = p384::ecdsa::Signature::from_slice(parsed.signature()).expect("signature");
    let leaf_point = leaf_key.to_encoded_point(false);
    let aws_key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        leaf_point.as_bytes(),
    );
    let raw_aws = || {
        aws_key
            .verify(parsed.signed_bytes(), parsed.signature())
            .is_ok()
    };
    let raw = || {
        use p384::ecdsa::signature::Verifier;
        leaf_key.verify(parsed.signed_bytes(), &sig).is_ok()
    };

    // The same H100 with its VBIOS RIM: the RIM verified (XML signature,
    // chain) and its active measurements compared. (verify_gpus with
    // rims = "required" would also want the driver RIM for 535.86.09,
    // which the vectors do not have.)
    let rim_xml = read_vector("nvidia/h100-535-vbios-rim/1010_0200_882_96005E0001_PROD.swidtag");
    let gpu_with_rim = || {
        let Ok(rim) = verify_rim(&rim_xml, AT) else {
            return false;
        };
        let golden = Golden::from_rim(&rim, "VBIOS RIM");
        let expect = DeviceExpectations {
            nonce: Some(&nonce),
            golden: Some(&golden),
        };
        verify_device(&h100, &h100_chain, &expect, AT)
            .is_ok_and(|v| v.measurements_compared() == golden.len())
    };

    // The HGX set: 8 GPUs and 4 NVSwitches.
    let load = |file: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&read_vector(file)).expect("JSON");
        items
            .iter()
            .map(|i| {
                (
                    cocoon_tests::pem::decode_base64(i["evidence"].as_str().expect("evidence")),
                    cocoon_tests::pem::decode_base64(
                        i["certificate"].as_str().expect("certificate"),
                    ),
                )
            })
            .collect()
    };
    let mut hgx = load("nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json");
    hgx.extend(load("nvidia/hgx-8xh100-ppcie-nvtrust/switch_evidence.json"));
    let hgx_nonce: [u8; 32] = SpdmReport::parse(&hgx[0].0)
        .expect("report")
        .request_nonce()
        .try_into()
        .expect("32");
    let hgx_inputs: Vec<DeviceInput<'_>> = hgx
        .iter()
        .map(|(r, c)| DeviceInput {
            report: r,
            cert_chain: c,
        })
        .collect();
    let none = GpuCollateral::default();
    let policy = GpuPolicy::integrity_only();
    let hgx_set = || verify_gpus(&hgx_inputs, &none, &policy, Some(&hgx_nonce), None, AT).is_ok();

    // Warm: one GpuVerifier that has seen these chains before (the reports
    // are verified in full every time; a new nonce would change only the
    // report, which is never cached, so the same report costs the same).
    let warm = GpuVerifier::new();
    let gpu_warm = || warm.verify_device(&h100, &h100_chain, &expect, AT).is_ok();
    let hgx_warm = || {
        warm.verify_gpus(&hgx_inputs, &none, &policy, Some(&hgx_nonce), None, AT)
            .is_ok()
    };
    // The floor of a warm HGX set: its 12 report signatures alone, with
    // aws-lc-rs, keys and transcripts prepared outside the loop.
    let hgx_sigs: Vec<_> = hgx
        .iter()
        .map(|(r, c)| {
            let report = SpdmReport::parse(r).expect("report");
            let pem = String::from_utf8(c.clone()).expect("PEM");
            let leaf = cocoon_tests::pem::certificates(&pem).remove(0);
            let point = {
                use der::Decode;
                x509_cert::Certificate::from_der(&leaf)
                    .expect("leaf")
                    .tbs_certificate
                    .subject_public_key_info
                    .subject_public_key
                    .raw_bytes()
                    .to_vec()
            };
            (
                report.signed_bytes().to_vec(),
                report.signature().to_vec(),
                point,
            )
        })
        .collect();
    let sigs_12 = || {
        hgx_sigs.iter().all(|(msg, sig, point)| {
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
                point,
            )
            .verify(msg, sig)
            .is_ok()
        })
    };

    let mut p_platform = platform;
    let mut p_raw = raw;
    let mut p_raw_aws = raw_aws;
    let mut p_gpu = gpu;
    let mut p_gpu_rims = gpu_with_rim;
    let mut p_hgx = hgx_set;
    let mut p_bundle_1 = || platform() && gpu_with_rim();
    let mut p_bundle_hgx = || platform() && hgx_set();
    let mut p_gpu_warm = gpu_warm;
    let mut p_hgx_warm = hgx_warm;
    let mut p_sigs_12 = sigs_12;
    // Every path must succeed before it is timed.
    for (name, ok) in [
        ("platform", p_platform()),
        ("raw", p_raw()),
        ("raw aws-lc", p_raw_aws()),
        ("gpu", p_gpu()),
        ("gpu+rim", p_gpu_rims()),
        ("hgx", p_hgx()),
        ("1 H100 warm", p_gpu_warm()),
        ("hgx warm", p_hgx_warm()),
        ("12 signatures", p_sigs_12()),
    ] {
        assert!(ok, "bench path {name} does not verify");
    }
    let t = interleaved(
        m.rounds,
        &mut [
            &mut p_platform,
            &mut p_raw,
            &mut p_gpu,
            &mut p_gpu_rims,
            &mut p_hgx,
            &mut p_bundle_1,
            &mut p_bundle_hgx,
            &mut p_raw_aws,
            &mut p_gpu_warm,
            &mut p_hgx_warm,
            &mut p_sigs_12,
        ],
    );
    let r = |a: usize, b: usize| t[a].as_secs_f64() / t[b].as_secs_f64();
    println!("gpu_verify ({} rounds, medians, one run):", m.rounds);
    for (i, name) in [
        "platform only (SNP, cold)",
        "raw P-384 verify of the SPDM transcript",
        "1 H100 (chain + SPDM signature)",
        "1 H100 + VBIOS RIM (XML signature, chain, 58 measurements)",
        "HGX: 8 H100 + 4 NVSwitch",
        "bundle: platform + 1 H100 with RIM",
        "bundle: platform + HGX set",
        "raw P-384 verify, aws-lc-rs",
        "1 H100 warm (GpuVerifier, chain cached)",
        "HGX warm (GpuVerifier, chains cached)",
        "HGX: its 12 report signatures alone (aws-lc-rs)",
    ]
    .iter()
    .enumerate()
    {
        println!("  {name:<60} {}", ms(t[i]));
    }
    println!("  ratio 1 H100 / platform only             {:.2}", r(2, 0));
    println!("  ratio 1 H100 / raw P-384 verify (p384)   {:.2}", r(2, 1));
    println!(
        "  ratio 1 H100 / raw P-384 verify (aws-lc) {:.2}  (5 signatures: 4 chain links + SPDM)",
        r(2, 7)
    );
    println!("  ratio 1 H100 + RIM / platform only       {:.2}", r(3, 0));
    println!("  ratio HGX set / platform only            {:.2}", r(4, 0));
    println!("  ratio bundle (1 H100 + RIM) / platform   {:.2}", r(5, 0));
    println!("  ratio bundle (HGX) / platform            {:.2}", r(6, 0));
    let verdict = |x: f64, goal: f64| if x <= goal { "meets" } else { "MISSES" };
    println!(
        "  ratio 1 H100 warm / raw P-384 (aws-lc)   {:.2}  ({} the <= 1.30 goal; cold {:.2})",
        r(8, 7),
        verdict(r(8, 7), 1.30),
        r(2, 7)
    );
    println!(
        "  ratio HGX warm / its 12 signatures       {:.2}  ({} the <= 1.30 goal; cold {:.2})",
        r(9, 10),
        verdict(r(9, 10), 1.30),
        r(4, 10)
    );
}
