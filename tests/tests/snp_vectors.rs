//! SEV-SNP verification over every real report in the shared vectors:
//! acceptance under a pinned policy, parsed fields against the manifest,
//! the manifest's negative mutations, a bit flip in every field and every
//! certificate, wrong chains, and time windows.

use cocoon_attestation::snp::{Product, SnpReport, FIELD_RANGES, REPORT_SIZE};
use cocoon_tests::{entries_of_kind, read_vector, unhex};
use cocoon_verifier::policy::{Check, MinTcb, SmtRule};
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::{ReasonKind, Rejection, SnpPolicy, SnpVerifier, UnixTime, VerifiedSnp};
use serde_json::Value;

/// One report vector with what verifies it.
struct Case {
    path: String,
    report: Vec<u8>,
    vek: Vec<u8>,
    chain: Vec<u8>,
    now: UnixTime,
    expected: Value,
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = entries_of_kind("snp-report")
        .into_iter()
        .map(|e| {
            let pairs: Vec<String> = e["pairs_with"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            let vek = pairs
                .iter()
                .find(|p| p.contains("vcek") || p.contains("vlek"))
                .expect("a VEK in pairs_with");
            let chain = pairs
                .iter()
                .find(|p| p.contains("amd-roots"))
                .expect("a chain in pairs_with");
            let expected = e["expected"].clone();
            Case {
                path: e["path"].as_str().unwrap().to_string(),
                report: read_vector(e["path"].as_str().unwrap()),
                vek: read_vector(vek),
                chain: read_vector(chain),
                now: UnixTime(expected["verification_time"]["unix"].as_u64().unwrap()),
                expected,
            }
        })
        .collect();
    assert!(
        cases.len() >= 6,
        "expected the six SNP report vectors, found {}",
        cases.len()
    );
    cases
}

fn hex48(v: &Value) -> [u8; 48] {
    unhex(v).try_into().unwrap()
}

/// A policy pinned to everything the manifest says about the report. Debug
/// is allowed only where the manifest says the report's guest policy allows
/// it, by name.
fn pinned_policy(c: &Case) -> SnpPolicy {
    let f = &c.expected["fields"];
    let tcb = &f["reported_tcb"];
    let n = |k: &str| tcb[k].as_u64().unwrap() as u8;
    SnpPolicy {
        measurements: Check::Require(vec![hex48(&f["measurement"])]),
        min_tcb: Check::Require(MinTcb {
            fmc: Check::Skip,
            bootloader: n("bootloader"),
            tee: n("tee"),
            snp: n("snp"),
            microcode: n("microcode"),
        }),
        vmpl: Check::Require(f["vmpl"].as_u64().unwrap() as u32),
        report_data: Check::Require(unhex(&f["report_data"]).try_into().unwrap()),
        host_data: Check::Require(unhex(&f["host_data"]).try_into().unwrap()),
        id_key_digests: Check::Require(vec![hex48(&f["id_key_digest"])]),
        author_key_digests: Check::Skip,
        smt: SmtRule::Allowed,
        // The vectors come without AMD's CRL (tests/snp_crl in the verifier
        // checks revocation with test-signed chains).
        revocation: Check::Skip,
        allow_debug: f["policy_decoded"]["debug_allowed"].as_bool().unwrap(),
        allow_migration_agent: false,
    }
}

fn verify(
    _case: &Case,
    report: &[u8],
    vek: &[u8],
    chain: &[u8],
    policy: &SnpPolicy,
    now: UnixTime,
) -> Result<VerifiedSnp, Rejection> {
    SnpVerifier::new().verify(
        report,
        SnpCertificates {
            vek,
            chain,
            crl: None,
        },
        policy,
        now,
    )
}

fn assert_tcb(
    path: &str,
    name: &str,
    got: cocoon_attestation::snp::TcbVersion,
    product: Product,
    want: &Value,
) {
    let raw = u64::from_str_radix(
        want["raw_u64_hex"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(got.0, raw, "{path}: {name} raw");
    let parts = got.decode(product.tcb_layout());
    for (k, v) in [
        ("bootloader", parts.bootloader),
        ("tee", parts.tee),
        ("snp", parts.snp),
        ("microcode", parts.microcode),
    ] {
        assert_eq!(
            u64::from(v),
            want[k].as_u64().unwrap(),
            "{path}: {name}.{k}"
        );
    }
}

#[test]
fn every_report_is_accepted_with_its_certificates_and_fields_match_the_manifest() {
    for c in cases() {
        let policy = pinned_policy(&c);
        // With the chain named in the manifest and with the bundled intermediates.
        for chain in [c.chain.as_slice(), &[]] {
            let v = verify(&c, &c.report, &c.vek, chain, &policy, c.now)
                .unwrap_or_else(|r| panic!("{} rejected: {r}", c.path));
            let f = &c.expected["fields"];
            let r = v.report();
            assert_eq!(
                v.product().name(),
                f["product"].as_str().unwrap(),
                "{}",
                c.path
            );
            assert_eq!(
                v.signer().to_string(),
                f["signing_key"].as_str().unwrap(),
                "{}",
                c.path
            );
            assert_eq!(u64::from(r.version()), f["version"].as_u64().unwrap());
            assert_eq!(u64::from(r.guest_svn()), f["guest_svn"].as_u64().unwrap());
            assert_eq!(
                format!("{:#018x}", r.policy().0),
                f["policy_hex"].as_str().unwrap()
            );
            let pd = &f["policy_decoded"];
            assert_eq!(
                u64::from(r.policy().abi_minor()),
                pd["abi_minor"].as_u64().unwrap()
            );
            assert_eq!(
                u64::from(r.policy().abi_major()),
                pd["abi_major"].as_u64().unwrap()
            );
            assert_eq!(
                r.policy().smt_allowed(),
                pd["smt_allowed"].as_bool().unwrap()
            );
            assert_eq!(r.policy().migrate_ma(), pd["migrate_ma"].as_bool().unwrap());
            assert_eq!(
                r.policy().debug_allowed(),
                pd["debug_allowed"].as_bool().unwrap()
            );
            assert_eq!(
                r.policy().single_socket(),
                pd["single_socket"].as_bool().unwrap()
            );
            assert_eq!(u64::from(r.vmpl()), f["vmpl"].as_u64().unwrap());
            assert_eq!(
                u64::from(r.signature_algo()),
                f["signature_algo"].as_u64().unwrap()
            );
            assert_eq!(
                u64::from(r.key_info().author_key_en()),
                f["author_key_en"].as_u64().unwrap()
            );
            for (name, got) in [
                ("report_data", &r.report_data()[..]),
                ("measurement", &r.measurement()[..]),
                ("host_data", &r.host_data()[..]),
                ("id_key_digest", &r.id_key_digest()[..]),
                ("author_key_digest", &r.author_key_digest()[..]),
                ("report_id", &r.report_id()[..]),
                ("chip_id", &r.chip_id()[..]),
                ("family_id", &r.family_id()[..]),
                ("image_id", &r.image_id()[..]),
            ] {
                assert_eq!(
                    hex::encode(got),
                    f[name].as_str().unwrap(),
                    "{}: {name}",
                    c.path
                );
            }
            for (name, got) in [
                ("reported_tcb", r.reported_tcb()),
                ("current_tcb", r.current_tcb()),
                ("committed_tcb", r.committed_tcb()),
                ("launch_tcb", r.launch_tcb()),
            ] {
                assert_tcb(&c.path, name, got, v.product(), &f[name]);
            }
            assert_eq!(
                format!("{:#018x}", r.platform_info().0),
                f["platform_info_hex"].as_str().unwrap()
            );
            assert_eq!(
                r.current_firmware().to_string(),
                f["current_fw"].as_str().unwrap()
            );
            match r.cpuid() {
                Some((fam, model, step)) => {
                    assert_eq!(u64::from(fam), f["cpuid_fam_id"].as_u64().unwrap());
                    assert_eq!(u64::from(model), f["cpuid_mod_id"].as_u64().unwrap());
                    assert_eq!(u64::from(step), f["cpuid_step"].as_u64().unwrap());
                }
                None => assert!(
                    f.get("cpuid_fam_id").is_none(),
                    "{}: v2 has no cpuid",
                    c.path
                ),
            }
            match r.launch_mit_vector() {
                Some(l) => assert_eq!(
                    format!("{l:#018x}"),
                    f["launch_mit_vector_hex"].as_str().unwrap()
                ),
                None => assert!(f.get("launch_mit_vector_hex").is_none()),
            }
            if let Some(cur) = r.current_mit_vector() {
                assert_eq!(
                    format!("{cur:#018x}"),
                    f["current_mit_vector_hex"].as_str().unwrap()
                );
            }
            // The VCEK/VLEK extension values the manifest extracted.
            let ext = &c.expected["vek_extensions"];
            let tcb = v.reported_tcb();
            assert_eq!(u64::from(tcb.bootloader), ext["blSPL"].as_u64().unwrap());
            assert_eq!(u64::from(tcb.snp), ext["snpSPL"].as_u64().unwrap());
            assert_eq!(u64::from(tcb.microcode), ext["ucodeSPL"].as_u64().unwrap());
        }
    }
}

fn reject(c: &Case, report: &[u8], what: &str) -> Rejection {
    match verify(c, report, &c.vek, &c.chain, &pinned_policy(c), c.now) {
        Ok(_) => panic!("{}: {what} was accepted", c.path),
        Err(r) => r,
    }
}

#[test]
fn manifest_negative_mutations_are_rejected() {
    let mut applied = 0;
    for c in cases() {
        let Some(muts) = c.expected["negative_mutations"].as_array() else {
            continue;
        };
        for m in muts {
            let change = m["change"].as_str().unwrap();
            let mut variants: Vec<Vec<u8>> = Vec::new();
            let hex_after = |s: &str, key: &str| -> usize {
                let rest = &s[s.find(key).unwrap() + key.len()..];
                let tok: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|ch| ch.is_ascii_alphanumeric())
                    .collect();
                usize::from_str_radix(tok.trim_start_matches("0x"), 16).unwrap()
            };
            if change.starts_with("xor byte ") {
                let off = hex_after(change, "xor byte ");
                let val = hex_after(change, " with ") as u8;
                let mut b = c.report.clone();
                b[off] ^= val;
                variants.push(b);
            } else if let Some(rest) = change.strip_prefix("set bit ") {
                let bit: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
                let off = hex_after(change, "of byte ");
                let mut b = c.report.clone();
                b[off] |= 1 << bit;
                variants.push(b);
            } else if let Some(rest) = change.strip_prefix("write u32 LE ") {
                let val: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
                let off = hex_after(change, " at ");
                let mut b = c.report.clone();
                b[off..off + 4].copy_from_slice(&val.to_le_bytes());
                variants.push(b);
            } else if change == "zero the whole signature area" {
                let mut b = c.report.clone();
                b[0x2A0..0x4A0].fill(0);
                variants.push(b);
            } else if change.starts_with("truncate to") {
                variants.push(c.report[..REPORT_SIZE - 1].to_vec());
                let mut b = c.report.clone();
                b.push(0);
                variants.push(b);
            } else {
                panic!(
                    "{}: mutation {change:?} is not understood by this test; teach it",
                    c.path
                );
            }
            for v in variants {
                if v == c.report {
                    // e.g. setting the debug bit of a report whose policy already has it.
                    continue;
                }
                let rej = reject(&c, &v, change);
                let expected_kind = if v.len() != REPORT_SIZE {
                    ReasonKind::Malformed
                } else {
                    ReasonKind::Signature
                };
                assert!(
                    rej.has(expected_kind),
                    "{}: {change}: expected a {expected_kind:?} reason, got {rej}",
                    c.path
                );
                applied += 1;
            }
        }
    }
    assert!(applied >= 50, "only {applied} manifest mutations applied");
}

#[test]
fn a_bit_flip_in_any_field_is_rejected_for_the_right_reason() {
    for c in cases() {
        for (name, off, len) in FIELD_RANGES {
            for at in [*off, off + len - 1] {
                let mut b = c.report.clone();
                b[at] ^= 0x01;
                let rej = reject(&c, &b, &format!("bit flip in {name} at {at:#x}"));
                if *name == "version" && SnpReport::parse(&b).is_err() {
                    assert!(rej.has(ReasonKind::Malformed), "{}: {name}: {rej}", c.path);
                } else if *name == "signature" && at >= 0x2A0 + 144 {
                    // Outside R and S: the signature still verifies, the reserved area does not.
                    assert!(
                        rej.has(ReasonKind::UnknownValue),
                        "{}: {name}@{at:#x}: {rej}",
                        c.path
                    );
                    assert!(
                        !rej.has(ReasonKind::Signature),
                        "{}: {name}@{at:#x}: {rej}",
                        c.path
                    );
                } else {
                    assert!(
                        rej.has(ReasonKind::Signature),
                        "{}: {name}@{at:#x}: {rej}",
                        c.path
                    );
                }
            }
        }
    }
}

#[test]
fn a_bit_flip_anywhere_in_a_certificate_is_rejected() {
    for c in cases() {
        let mut flips = 0;
        for at in (0..c.vek.len()).step_by(3) {
            let mut v = c.vek.clone();
            v[at] ^= 0x01;
            if verify(&c, &c.report, &v, &c.chain, &pinned_policy(&c), c.now).is_ok() {
                panic!("{}: VEK with bit flipped at {at} accepted", c.path);
            }
            flips += 1;
        }
        assert!(flips > 300);
        // The trustee upstream case: DER byte 42 += 1.
        let mut v = c.vek.clone();
        v[42] = v[42].wrapping_add(1);
        assert!(verify(&c, &c.report, &v, &c.chain, &pinned_policy(&c), c.now).is_err());
    }
    // Each certificate of a supplied chain (as DER inside PEM).
    let c = &cases()[0];
    let text = String::from_utf8(c.chain.clone()).unwrap();
    let ders = cocoon_tests::pem::certificates(&text);
    assert_eq!(ders.len(), 2);
    for idx in 0..2 {
        for at in (0..ders[idx].len()).step_by(5) {
            let mut d = ders.clone();
            d[idx][at] ^= 0x01;
            let chain = cocoon_tests::pem::to_pem(&d);
            let res = verify(
                c,
                &c.report,
                &c.vek,
                chain.as_bytes(),
                &pinned_policy(c),
                c.now,
            );
            let rej = res
                .err()
                .unwrap_or_else(|| panic!("chain cert {idx} flipped at {at} accepted"));
            assert!(
                rej.has(ReasonKind::Chain) || rej.has(ReasonKind::Certificate),
                "{rej}"
            );
        }
    }
}

#[test]
fn truncated_and_oversized_reports_are_rejected() {
    let c = &cases()[0];
    for len in [0, 1, 0x2A0, REPORT_SIZE - 1] {
        let rej = reject(c, &c.report[..len], "truncated report");
        assert!(rej.has(ReasonKind::Malformed), "{rej}");
    }
    let mut big = c.report.clone();
    big.extend_from_slice(&[0; 16]);
    assert!(reject(c, &big, "oversized report").has(ReasonKind::Malformed));
}

#[test]
fn a_report_whose_policy_allows_debug_is_rejected_by_default() {
    let c = cases()
        .into_iter()
        .find(|c| c.path.contains("milan-v2-gsg"))
        .unwrap();
    let mut policy = pinned_policy(&c);
    assert!(
        policy.allow_debug,
        "the gsg report's guest policy allows debug"
    );
    policy.allow_debug = false;
    let rej = verify(&c, &c.report, &c.vek, &c.chain, &policy, c.now).unwrap_err();
    assert_eq!(rej.reasons().len(), 1, "{rej}");
    assert_eq!(rej.reasons()[0].kind, ReasonKind::Policy);
    assert!(rej.reasons()[0].message.contains("debug"), "{rej}");
    // The constructor the CLI uses forbids debug too.
    let strict =
        SnpPolicy::pinned_to_measurements(vec![hex48(&c.expected["fields"]["measurement"])]);
    assert!(verify(&c, &c.report, &c.vek, &c.chain, &strict, c.now).is_err());
}

#[test]
fn wrong_product_chains_are_rejected() {
    let all = cases();
    let genoa = all.iter().find(|c| c.path.contains("genoa")).unwrap();
    let milan_chain = read_vector("snp/amd-roots/ask_ark_milan.pem");
    let rej = verify(
        genoa,
        &genoa.report,
        &genoa.vek,
        &milan_chain,
        &pinned_policy(genoa),
        genoa.now,
    )
    .unwrap_err();
    assert!(rej.has(ReasonKind::Chain), "{rej}");
    let vlek = all.iter().find(|c| c.path.contains("vlek")).unwrap();
    let rej = verify(
        vlek,
        &vlek.report,
        &vlek.vek,
        &milan_chain,
        &pinned_policy(vlek),
        vlek.now,
    )
    .unwrap_err();
    assert!(rej.has(ReasonKind::Chain), "{rej}");
    // A VCEK report presented with another machine's VCEK.
    let other = all
        .iter()
        .find(|c| c.path.contains("oak-oc-release"))
        .unwrap();
    let rej = verify(
        genoa,
        &genoa.report,
        &other.vek,
        &[],
        &pinned_policy(genoa),
        genoa.now,
    )
    .unwrap_err();
    assert!(
        rej.has(ReasonKind::Signature) || rej.has(ReasonKind::KeyBinding),
        "{rej}"
    );
    let milan = all
        .iter()
        .find(|c| c.path.contains("milan-v3-dstack"))
        .unwrap();
    let rej = verify(
        milan,
        &milan.report,
        &other.vek,
        &[],
        &pinned_policy(milan),
        milan.now,
    )
    .unwrap_err();
    assert!(rej.has(ReasonKind::Signature), "{rej}");
    assert!(
        rej.has(ReasonKind::KeyBinding),
        "hwID and TCB differ too: {rej}"
    );
}

#[test]
fn certificate_validity_follows_the_given_time() {
    let all = cases();
    let dstack = all.iter().find(|c| c.path.contains("dstack")).unwrap();
    let before = UnixTime(
        dstack.expected["cert_validity_window"]["not_before"]["unix"]
            .as_u64()
            .unwrap()
            - 1,
    );
    let rej = verify(
        dstack,
        &dstack.report,
        &dstack.vek,
        &dstack.chain,
        &pinned_policy(dstack),
        before,
    )
    .unwrap_err();
    assert!(rej.has(ReasonKind::Expired), "{rej}");
    assert_eq!(rej.reasons().len(), 1, "{rej}");
    let vlek = all.iter().find(|c| c.path.contains("vlek")).unwrap();
    let after = UnixTime(
        vlek.expected["cert_validity_window"]["not_after"]["unix"]
            .as_u64()
            .unwrap()
            + 1,
    );
    let rej = verify(
        vlek,
        &vlek.report,
        &vlek.vek,
        &vlek.chain,
        &pinned_policy(vlek),
        after,
    )
    .unwrap_err();
    assert!(rej.has(ReasonKind::Expired), "{rej}");
}

#[test]
fn policy_shortfalls_are_all_listed() {
    let c = cases()
        .into_iter()
        .find(|c| c.path.contains("oak-oc-release"))
        .unwrap();
    let mut p = pinned_policy(&c);
    p.measurements = Check::Require(vec![[0xAA; 48]]);
    p.min_tcb = Check::Require(MinTcb {
        fmc: Check::Skip,
        bootloader: 4,
        tee: 0,
        snp: 25,
        microcode: 220,
    });
    p.vmpl = Check::Require(2);
    p.report_data = Check::Require([0; 64]);
    p.host_data = Check::Require([1; 32]);
    p.smt = SmtRule::Forbidden;
    let rej = verify(&c, &c.report, &c.vek, &c.chain, &p, c.now).unwrap_err();
    let text = rej.to_string();
    for needle in [
        "measurement not in policy",
        "TCB SNP=24 below minimum 25",
        "TCB microcode=219 below minimum 220",
        "VMPL 0, policy requires VMPL 2",
        "report_data",
        "host_data",
        "SMT is enabled",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
    assert!(rej.reasons().iter().all(|r| r.kind == ReasonKind::Policy));
}

#[test]
fn warm_cache_gives_the_same_verdicts() {
    let verifier = SnpVerifier::new();
    for c in cases() {
        let p = pinned_policy(&c);
        for _ in 0..2 {
            verifier
                .verify(
                    &c.report,
                    SnpCertificates {
                        vek: &c.vek,
                        chain: &c.chain,
                        crl: None,
                    },
                    &p,
                    c.now,
                )
                .unwrap();
            let mut b = c.report.clone();
            b[0x90] ^= 1;
            assert!(verifier
                .verify(
                    &b,
                    SnpCertificates {
                        vek: &c.vek,
                        chain: &c.chain,
                        crl: None,
                    },
                    &p,
                    c.now
                )
                .is_err());
        }
        // Time still matters when the chain is cached.
        assert!(verifier
            .verify(
                &c.report,
                SnpCertificates {
                    vek: &c.vek,
                    chain: &c.chain,
                    crl: None,
                },
                &p,
                UnixTime(0)
            )
            .unwrap_err()
            .has(ReasonKind::Expired));
    }
}
