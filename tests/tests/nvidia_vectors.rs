//! NVIDIA H100 / NVSwitch evidence from `../shared/vectors/nvidia`, checked
//! against the manifest's verdicts.

use cocoon_tests::read_vector;
use cocoon_verifier::nvidia::verify_device_chain;
use cocoon_verifier::{ReasonKind, UnixTime};

/// 2024-06-01T00:00:00Z: inside every device certificate's window.
const AT: UnixTime = UnixTime(1_717_200_000);

const DEVICE_CHAINS: [&str; 4] = [
    "nvidia/h100-nvtrust-sample/hopperCertChain.txt",
    "nvidia/h100-535-vbios-rim/hopperCertChain.txt",
    "nvidia/nvswitch-ls10/switchCertChain.txt",
    "nvidia/negative/hopperCertChainExpired.txt",
];

#[test]
fn every_device_chain_reaches_the_pinned_root() {
    for path in DEVICE_CHAINS {
        let n =
            verify_device_chain(&read_vector(path), AT).unwrap_or_else(|r| panic!("{path}: {r}"));
        assert_eq!(n, 5, "{path}");
    }
}

#[test]
fn device_chain_before_its_window_is_expired() {
    // 2022-02-28: one day before every device certificate's not_before.
    let r =
        verify_device_chain(&read_vector(DEVICE_CHAINS[0]), UnixTime(1_646_006_400)).unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
}

#[test]
fn a_device_chain_missing_a_link_is_refused() {
    let text = String::from_utf8(read_vector(DEVICE_CHAINS[0])).unwrap();
    let certs = cocoon_tests::pem::certificates(&text);
    // Drop the BROM certificate: the leaf is then not issued by the next one.
    let broken = cocoon_tests::pem::to_pem(&[
        certs[0].clone(),
        certs[2].clone(),
        certs[3].clone(),
        certs[4].clone(),
    ]);
    let r = verify_device_chain(broken.as_bytes(), AT).unwrap_err();
    assert!(r.has(ReasonKind::Chain), "{r}");
    // An RIM-hierarchy chain is not a device chain.
    let rim_root = read_vector("nvidia/roots/verifier_RIM_root.pem");
    let mut other = certs[..4].iter().map(|d| d.to_vec()).collect::<Vec<_>>();
    other.extend(cocoon_tests::pem::certificates(
        std::str::from_utf8(&rim_root).unwrap(),
    ));
    let r = verify_device_chain(cocoon_tests::pem::to_pem(&other).as_bytes(), AT).unwrap_err();
    assert!(r.has(ReasonKind::Chain), "{r}");
}

use cocoon_attestation::nvidia::SpdmReport;
use cocoon_verifier::nvidia::{verify_device, DeviceExpectations, DeviceKind, GpuVerifier};

/// (report, chain) pairs of the single-device vectors that must verify.
const VALID: [(&str, &str); 3] = [
    (
        "nvidia/h100-nvtrust-sample/hopperAttestationReport.txt",
        "nvidia/h100-nvtrust-sample/hopperCertChain.txt",
    ),
    (
        "nvidia/h100-535-vbios-rim/hopperAttestationReport.txt",
        "nvidia/h100-535-vbios-rim/hopperCertChain.txt",
    ),
    (
        "nvidia/nvswitch-ls10/switchAttestationReport.txt",
        "nvidia/nvswitch-ls10/switchCertChain.txt",
    ),
];

fn entry(path: &str) -> serde_json::Value {
    cocoon_tests::manifest()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the manifest"))
        .clone()
}

fn report_bytes(path: &str) -> Vec<u8> {
    hex::decode(String::from_utf8(read_vector(path)).unwrap().trim()).unwrap()
}

fn nonce_of(e: &serde_json::Value) -> [u8; 32] {
    let n = cocoon_tests::unhex(&e["expected"]["fields"]["request"]["nonce"]);
    n.try_into().unwrap()
}

#[test]
fn single_device_reports_verify_with_the_manifest_fields() {
    for (report, chain) in VALID {
        let e = entry(report);
        let fields = &e["expected"]["fields"];
        let bytes = report_bytes(report);
        let parsed = SpdmReport::parse(&bytes).unwrap();
        assert_eq!(
            bytes.len() as u64,
            fields["decoded_length"].as_u64().unwrap()
        );
        assert_eq!(
            parsed.blocks().len() as u64,
            fields["response"]["number_of_blocks"].as_u64().unwrap()
        );
        assert_eq!(
            parsed.record_len() as u64,
            fields["response"]["measurement_record_length"]
                .as_u64()
                .unwrap()
        );
        assert_eq!(
            hex::encode(parsed.responder_nonce()),
            fields["response"]["responder_nonce"].as_str().unwrap()
        );
        assert_eq!(
            parsed.opaque_data().len() as u64,
            fields["response"]["opaque_data_length"].as_u64().unwrap()
        );
        let nonce = nonce_of(&e);
        let expect = DeviceExpectations {
            nonce: Some(&nonce),
            golden: None,
        };
        let v = verify_device(&bytes, &read_vector(chain), &expect, AT)
            .unwrap_or_else(|r| panic!("{report}: {r}"));
        assert_eq!(v.nonce(), &nonce);
        assert_eq!(v.blocks(), parsed.blocks().len());
        let opaque = &fields["opaque"];
        if let Some(driver) = opaque["driver_version"].as_str() {
            assert_eq!(v.kind(), DeviceKind::Gpu);
            assert_eq!(v.driver_version(), Some(driver));
            assert_eq!(v.vbios_version(), opaque["vbios_version_str"].as_str());
            assert_eq!(v.model(), "GH100");
        } else {
            assert_eq!(v.kind(), DeviceKind::Switch);
            assert_eq!(v.model(), "LS_10");
        }
    }
}

#[test]
fn the_invalid_signature_vector_is_rejected_for_its_signature() {
    let report = "nvidia/negative/hopperAttestationReportInvalidSignature.txt";
    let e = entry(report);
    let nonce = nonce_of(&e);
    let expect = DeviceExpectations {
        nonce: Some(&nonce),
        golden: None,
    };
    let r = verify_device(
        &report_bytes(report),
        &read_vector("nvidia/negative/hopperCertChainExpired.txt"),
        &expect,
        AT,
    )
    .unwrap_err();
    assert!(r.has(ReasonKind::Signature), "{r}");
    // The report also names an FWID that is not the one in this chain's
    // leaf: it was not produced by this device's firmware. Nothing else
    // (chain, nonce, structure) is wrong.
    assert!(
        r.reasons()
            .iter()
            .all(|x| matches!(x.kind, ReasonKind::Signature | ReasonKind::KeyBinding)),
        "{r}"
    );
}

#[test]
fn a_wrong_nonce_is_a_nonce_mismatch() {
    let (report, chain) = VALID[1];
    let zero = [0u8; 32];
    let expect = DeviceExpectations {
        nonce: Some(&zero),
        golden: None,
    };
    let r = verify_device(&report_bytes(report), &read_vector(chain), &expect, AT).unwrap_err();
    assert!(
        r.reasons()
            .iter()
            .any(|x| x.message.contains("nonce mismatch")),
        "{r}"
    );
}

#[test]
fn manifest_mutations_are_rejected() {
    for (report, chain) in VALID.iter().chain(
        [(
            "nvidia/negative/hopperAttestationReportInvalidSignature.txt",
            "nvidia/negative/hopperCertChainExpired.txt",
        )]
        .iter(),
    ) {
        let e = entry(report);
        let nonce = nonce_of(&e);
        let expect = DeviceExpectations {
            nonce: Some(&nonce),
            golden: None,
        };
        let good = report_bytes(report);
        let chain = read_vector(chain);
        for m in e["expected"]["negative_mutations"].as_array().unwrap() {
            let offset = m["offset"].as_str().unwrap();
            if offset == "text" {
                let text = read_vector(report);
                for extra in [&b"0"[..], b"g"] {
                    let mut t = text.trim_ascii().to_vec();
                    t.extend_from_slice(extra);
                    assert!(
                        SpdmReport::parse_hex(&t).is_err(),
                        "{report}: appended {extra:?}"
                    );
                }
                continue;
            }
            let at: usize = offset
                .trim_start_matches("byte ")
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let mut bad = good.clone();
            bad[at] ^= 1;
            let r = verify_device(&bad, &chain, &expect, AT).unwrap_err();
            assert!(r.has(ReasonKind::Signature), "{report} byte {at}: {r}");
            if at == 4 {
                assert!(
                    r.reasons()
                        .iter()
                        .any(|x| x.message.contains("nonce mismatch")),
                    "{r}"
                );
            }
        }
    }
}

#[test]
fn every_measurement_block_and_every_signature_byte_is_covered() {
    let (report, chain) = VALID[0];
    let nonce = nonce_of(&entry(report));
    let expect = DeviceExpectations {
        nonce: Some(&nonce),
        golden: None,
    };
    let good = report_bytes(report);
    let chain = read_vector(chain);
    let parsed = SpdmReport::parse(&good).unwrap();
    // The flips touch the report only: one verifier with its chain cache
    // checks them, so each flip costs the report's own signature check,
    // not five chain signatures again (on the pure-Rust P-384 backend the
    // uncached loop took minutes). The cache hands back the same verdicts:
    // the good report verifies both ways first.
    let gv = GpuVerifier::new();
    verify_device(&good, &chain, &expect, AT).expect("the unaltered report verifies");
    gv.verify_device(&good, &chain, &expect, AT)
        .expect("the unaltered report verifies through the cache");
    let mut flips = 0;
    // Every byte of every measurement value, every byte of the opaque data
    // and of the signature: a flip is a signature failure (or a parse error
    // where the flip breaks the structure).
    let mut offsets: Vec<usize> = parsed
        .blocks()
        .iter()
        .flat_map(|b| b.value.clone())
        .collect();
    let sig_at = parsed.signed_bytes().len();
    offsets.extend(sig_at..good.len());
    let opaque_at = sig_at - parsed.opaque_data().len();
    offsets.extend(opaque_at..sig_at);
    for at in offsets {
        let mut bad = good.clone();
        bad[at] ^= 0x80;
        let r = gv.verify_device(&bad, &chain, &expect, AT).unwrap_err();
        assert!(
            r.has(ReasonKind::Signature) || r.has(ReasonKind::Malformed),
            "byte {at}: {r}"
        );
        flips += 1;
    }
    assert!(flips > 64 * 48);
    // Headers of every block: index, specification, sizes.
    for b in parsed.blocks() {
        for at in b.value.start - 7..b.value.start {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(
                gv.verify_device(&bad, &chain, &expect, AT).is_err(),
                "block {} header byte {at}",
                b.index
            );
        }
    }
}

#[test]
fn the_8_gpu_and_4_switch_protected_pcie_sets_verify() {
    for (file, count, kind) in [
        (
            "nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json",
            8,
            DeviceKind::Gpu,
        ),
        (
            "nvidia/hgx-8xh100-ppcie-nvtrust/switch_evidence.json",
            4,
            DeviceKind::Switch,
        ),
    ] {
        let items: Vec<serde_json::Value> = serde_json::from_slice(&read_vector(file)).unwrap();
        assert_eq!(items.len(), count);
        let e = entry(file);
        let mut ids = std::collections::BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let report = cocoon_tests::pem::decode_base64(item["evidence"].as_str().unwrap());
            let chain = cocoon_tests::pem::decode_base64(item["certificate"].as_str().unwrap());
            let nonce: [u8; 32] = hex::decode(item["nonce"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let expect = DeviceExpectations {
                nonce: Some(&nonce),
                golden: None,
            };
            let v = verify_device(&report, &chain, &expect, AT)
                .unwrap_or_else(|r| panic!("{file}[{i}]: {r}"));
            assert_eq!(v.kind(), kind);
            let want = &e["expected"]["items"][i];
            assert_eq!(
                v.blocks() as u64,
                want["number_of_blocks"].as_u64().unwrap()
            );
            if kind == DeviceKind::Gpu {
                assert_eq!(v.driver_version(), want["json"]["driver_version"].as_str());
                assert_eq!(v.vbios_version(), want["json"]["vbios_version"].as_str());
                assert_eq!(
                    v.feature_mode(),
                    Some(cocoon_attestation::nvidia::FeatureMode::ProtectedPcie)
                );
            } else {
                assert_eq!(
                    v.vbios_version(),
                    want["opaque"]["vbios_version_ascii"].as_str()
                );
            }
            assert!(
                want["leaf_subject"]
                    .as_str()
                    .unwrap()
                    .contains(v.device_id()),
                "{}",
                v.device_id()
            );
            ids.insert(v.device_id().to_string());
            // Another device's chain does not verify this report.
            let other = &items[(i + 1) % items.len()];
            let other_chain =
                cocoon_tests::pem::decode_base64(other["certificate"].as_str().unwrap());
            let r = verify_device(&report, &other_chain, &expect, AT).unwrap_err();
            assert!(r.has(ReasonKind::Signature), "{r}");
        }
        assert_eq!(ids.len(), count, "every device has its own identity");
    }
}

mod rims {
    use super::*;
    use cocoon_attestation::nvidia::GpuCollateral;
    use cocoon_verifier::nvidia::gpus::{verify_gpus, DeviceInput};
    use cocoon_verifier::nvidia::rim::{parse_rim_unverified, verify_rim};
    use cocoon_verifier::nvidia::Golden;
    use cocoon_verifier::policy::{Check, GpuPolicy};

    const VBIOS_RIM: &str = "nvidia/h100-535-vbios-rim/1010_0200_882_96005E0001_PROD.swidtag";
    const MISMATCH_RIM: &str =
        "nvidia/h100-535-vbios-rim/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml";
    const SWITCH_RIM: &str =
        "nvidia/nvswitch-ls10/switchVBIOSRim_NV_SWITCH_BIOS_5612_0002_890_9610550001.xml";

    fn only_rims() -> GpuPolicy {
        GpuPolicy {
            rims: Check::Require(()),
            ..GpuPolicy::integrity_only()
        }
    }

    #[test]
    fn the_h100_report_matches_its_vbios_rim() {
        let rim = verify_rim(&read_vector(VBIOS_RIM), AT).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(rim.version(), "96.00.5E.00.01");
        let g = Golden::from_rim(&rim, "VBIOS RIM");
        assert!(!g.is_empty());
        let (report, chain) = VALID[1];
        let nonce = nonce_of(&entry(report));
        let expect = DeviceExpectations {
            nonce: Some(&nonce),
            golden: Some(&g),
        };
        let v = verify_device(&report_bytes(report), &read_vector(chain), &expect, AT)
            .unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(v.measurements_compared(), g.len());
        assert_eq!(v.vbios_version(), Some(rim.version()));
    }

    #[test]
    fn the_mismatch_vbios_rim_is_signed_but_does_not_match_the_report() {
        // The manifest guessed its XML signature would fail (content edited
        // upstream); it verifies: NVIDIA signed it (a later L3 GH100 002
        // chain), with other measurements for the same VBIOS version.
        let rim = verify_rim(&read_vector(MISMATCH_RIM), AT).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(rim.version(), "96.00.5E.00.01");
        // Parsed without the signature (as upstream's test does) it says the same.
        let info = parse_rim_unverified(&read_vector(MISMATCH_RIM)).unwrap();
        assert_eq!(info.measurements, rim.measurements());
        let g = Golden::from_rim(&rim, "mismatch VBIOS RIM");
        let (report, chain) = VALID[1];
        let nonce = nonce_of(&entry(report));
        let expect = DeviceExpectations {
            nonce: Some(&nonce),
            golden: Some(&g),
        };
        let r = verify_device(&report_bytes(report), &read_vector(chain), &expect, AT).unwrap_err();
        assert!(
            r.reasons()
                .iter()
                .any(|x| x.message.contains("measurement mismatch")),
            "{r}"
        );
        assert!(
            !r.has(ReasonKind::Signature),
            "only measurements are wrong: {r}"
        );
    }

    /// 2026-06-01T00:00:00Z: the LS10 RIM's L4 signer is valid 2026-05-20..2028-05-20.
    const AT_SWITCH: UnixTime = UnixTime(1_780_272_000);

    #[test]
    fn with_both_vbios_rims_the_matching_one_is_used() {
        let (report, chain) = VALID[1];
        let report = report_bytes(report);
        let chain = read_vector(chain);
        let devices = [DeviceInput {
            report: &report,
            cert_chain: &chain,
        }];
        // The mismatching RIM first: the matching one is still found; a
        // driver RIM for 535.86.09 is not in the vectors, so that stays the
        // only shortfall.
        let collateral = GpuCollateral {
            rims: vec![read_vector(MISMATCH_RIM), read_vector(VBIOS_RIM)],
            ocsp: vec![],
        };
        let r = verify_gpus(&devices, &collateral, &only_rims(), None, None, AT).unwrap_err();
        assert_eq!(r.reasons().len(), 1, "{r}");
        assert!(
            r.reasons()[0].message.contains("no verified driver RIM"),
            "{r}"
        );
        // Only the mismatching one: its mismatches are reported.
        let collateral = GpuCollateral {
            rims: vec![read_vector(MISMATCH_RIM)],
            ocsp: vec![],
        };
        let r = verify_gpus(&devices, &collateral, &only_rims(), None, None, AT).unwrap_err();
        assert!(
            r.reasons()
                .iter()
                .any(|x| x.message.contains("measurement mismatch")),
            "{r}"
        );
    }

    #[test]
    fn the_nvswitch_verifies_against_its_rim_through_the_policy() {
        let (report, chain) = VALID[2];
        let report = report_bytes(report);
        let chain = read_vector(chain);
        let devices = [DeviceInput {
            report: &report,
            cert_chain: &chain,
        }];
        let collateral = GpuCollateral {
            rims: vec![read_vector(SWITCH_RIM)],
            ocsp: vec![],
        };
        let v = verify_gpus(&devices, &collateral, &only_rims(), None, None, AT_SWITCH)
            .unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(
            v.rims_used(),
            &[("LS10".to_string(), "96.10.55.00.01".to_string())]
        );
        assert!(v.devices()[0].measurements_compared() > 0);
        // Before the RIM signer's window the RIM is unusable.
        let r = verify_gpus(&devices, &collateral, &only_rims(), None, None, AT).unwrap_err();
        assert!(r.to_string().contains("not at"), "{r}");
        // Without the RIM the same policy refuses it, naming what is missing.
        let r = verify_gpus(
            &devices,
            &GpuCollateral::default(),
            &only_rims(),
            None,
            None,
            AT_SWITCH,
        )
        .unwrap_err();
        assert!(r.has(ReasonKind::Collateral), "{r}");
    }

    #[test]
    fn a_gpu_needs_both_a_driver_and_a_vbios_rim() {
        // The 535 H100 with only its VBIOS RIM (and an unrelated driver RIM).
        let (report, chain) = VALID[1];
        let report = report_bytes(report);
        let chain = read_vector(chain);
        let devices = [DeviceInput {
            report: &report,
            cert_chain: &chain,
        }];
        let collateral = GpuCollateral {
            rims: vec![
                read_vector(VBIOS_RIM),
                read_vector("nvidia/rim/NV_GPU_DRIVER_GH100_550.144.03.xml"),
            ],
            ocsp: vec![],
        };
        let r = verify_gpus(&devices, &collateral, &only_rims(), None, None, AT).unwrap_err();
        assert_eq!(r.reasons().len(), 1, "{r}");
        assert!(
            r.reasons()[0]
                .message
                .contains("no verified driver RIM for GH100 535.86.09"),
            "{r}"
        );
    }

    #[test]
    fn negative_rims_are_rejected_for_their_reason() {
        let sig = verify_rim(
            &read_vector("nvidia/negative/incorrect_signature_driver_rim.xml"),
            AT,
        )
        .unwrap_err();
        assert!(sig.has(ReasonKind::Signature), "{sig}");
        let chain = verify_rim(
            &read_vector("nvidia/negative/incorrect_cert_chain_driver_rim.xml"),
            AT,
        )
        .unwrap_err();
        assert!(chain.has(ReasonKind::Chain), "{chain}");
    }
}

#[test]
fn required_revocation_without_ocsp_responses_names_every_certificate() {
    use cocoon_attestation::nvidia::GpuCollateral;
    use cocoon_verifier::nvidia::gpus::{verify_gpus, DeviceInput};
    use cocoon_verifier::policy::{Check, GpuPolicy, RevocationRule};
    let (report, chain) = VALID[0];
    let report = report_bytes(report);
    let chain = read_vector(chain);
    let devices = [DeviceInput {
        report: &report,
        cert_chain: &chain,
    }];
    let policy = GpuPolicy {
        revocation: Check::Require(RevocationRule {
            max_age_secs: 86_400,
            allow_certificate_hold: false,
        }),
        ..GpuPolicy::integrity_only()
    };
    let r = verify_gpus(&devices, &GpuCollateral::default(), &policy, None, None, AT).unwrap_err();
    // The leaf is made by the device at boot and has no OCSP status; the
    // three certificates above it (BROM, provisioner ICA, GH100 identity)
    // each need a response.
    assert_eq!(r.reasons().len(), 3, "{r}");
    assert!(
        r.reasons().iter().all(|x| x.kind == ReasonKind::Collateral),
        "{r}"
    );
    for cn in [
        "GH100 A01 GSP BROM",
        "NVIDIA GH100 Provisioner ICA 1",
        "NVIDIA GH100 Identity",
    ] {
        assert!(r.to_string().contains(cn), "{cn}: {r}");
    }
    // Garbage in place of a response is named as the problem.
    let junk = GpuCollateral {
        rims: vec![],
        ocsp: vec![vec![0x30, 0x03, 0x0a, 0x01, 0x03]],
    };
    let r = verify_gpus(&devices, &junk, &policy, None, None, AT).unwrap_err();
    assert!(r.to_string().contains("tryLater"), "{r}");
    // Skipped, the same evidence passes.
    assert!(verify_gpus(
        &devices,
        &GpuCollateral::default(),
        &GpuPolicy::integrity_only(),
        None,
        None,
        AT
    )
    .is_ok());
}

#[test]
fn a_link_verified_for_one_device_does_not_vouch_for_an_altered_copy() {
    use cocoon_attestation::nvidia::GpuCollateral;
    use cocoon_verifier::nvidia::gpus::{verify_gpus, DeviceInput};
    use cocoon_verifier::policy::GpuPolicy;
    // Two GPUs of the HGX set share their provisioner ICA and identity
    // certificates; alter the second one's ICA signature (last byte of its
    // DER): that device must fail although the first verified the link.
    let items: Vec<serde_json::Value> = serde_json::from_slice(&read_vector(
        "nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json",
    ))
    .unwrap();
    let report =
        |i: usize| cocoon_tests::pem::decode_base64(items[i]["evidence"].as_str().unwrap());
    let chain =
        |i: usize| cocoon_tests::pem::decode_base64(items[i]["certificate"].as_str().unwrap());
    let mut ders = cocoon_tests::pem::certificates(std::str::from_utf8(&chain(1)).unwrap());
    let last = ders[2].len() - 1;
    ders[2][last] ^= 1;
    let altered = cocoon_tests::pem::to_pem(&ders).into_bytes();
    let (r0, c0, r1) = (report(0), chain(0), report(1));
    let nonce: [u8; 32] = SpdmReport::parse(&r0)
        .unwrap()
        .request_nonce()
        .try_into()
        .unwrap();
    let devices = [
        DeviceInput {
            report: &r0,
            cert_chain: &c0,
        },
        DeviceInput {
            report: &r1,
            cert_chain: &altered,
        },
    ];
    let r = verify_gpus(
        &devices,
        &GpuCollateral::default(),
        &GpuPolicy::integrity_only(),
        Some(&nonce),
        None,
        AT,
    )
    .unwrap_err();
    assert!(
        r.reasons()
            .iter()
            .all(|x| x.message.starts_with("device 1:")),
        "{r}"
    );
    assert!(
        r.has(ReasonKind::Chain) || r.has(ReasonKind::Certificate),
        "{r}"
    );
}
