//! Revocation of AMD SEV-SNP chains through AMD's CRL, with chains and CRLs
//! this test signs itself: a test ARK and ASK (RSA-4096, RSASSA-PSS/SHA-384
//! exactly as AMD signs; keys in `tests/data/snp-test-roots/`, made for this
//! project), a P-384 VCEK with AMD's extensions, a report signed by it, and
//! CRLs signed by the test ARK. The verifier trusts the test ARK only
//! through `SnpVerifier::with_test_roots` (feature `test-roots`, test-only).
//!
//! Run: `cargo test -p cocoon-verifier --features test-roots --test snp_crl`.
//! The end of the file checks the real AMD roots refuse a test-signed CRL
//! (library, bundle and `cocoon-verify snp --crl`).

use std::process::Command;
use std::time::Duration;

use cocoon_attestation::bundle::{Claims, EvidenceBundle, PlatformEvidence};
use cocoon_attestation::snp::{Product, FIELD_RANGES, REPORT_SIZE, SIGNED_LEN};
use cocoon_tests::vectors_dir;
use cocoon_verifier::policy::{Check, Policy};
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::snp_crl::{AmdCrl, CrlError, SnpRevocation};
use cocoon_verifier::{ReasonKind, Rejection, SnpPolicy, SnpVerifier, UnixTime, VerifiedSnp};
use der::asn1::{BitString, Ia5String, ObjectIdentifier, OctetString, UtcTime};
use der::{Decode, Encode};
use p384::ecdsa::signature::Signer as _;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

/// 2026-01-01T00:00:00Z.
const NOW: UnixTime = UnixTime(1_767_225_600);
const DAY: u64 = 86_400;
const MEASUREMENT: [u8; 48] = [0x5A; 48];

fn time(t: u64) -> Time {
    Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(t)).unwrap())
}

fn name(s: &str) -> Name {
    s.parse().unwrap()
}

fn rsa_key(file: &str) -> rsa::RsaPrivateKey {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/snp-test-roots")
        .join(file);
    rsa::RsaPrivateKey::from_pkcs8_der(&std::fs::read(path).unwrap()).unwrap()
}

/// AMD's own RSASSA-PSS/SHA-384/MGF1-SHA-384/salt-48 AlgorithmIdentifier,
/// taken from a pinned ARK so the test signs exactly as AMD does.
fn pss_alg() -> AlgorithmIdentifierOwned {
    let ark = include_bytes!("../roots/amd/ark_milan.der");
    Certificate::from_der(ark).unwrap().signature_algorithm
}

fn pss_sign(key: &rsa::RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
    let signer = rsa::pss::SigningKey::<sha2::Sha384>::new_with_salt_len(key.clone(), 48);
    signer.sign_with_rng(&mut rand_core::OsRng, msg).to_vec()
}

fn rsa_spki(key: &rsa::RsaPrivateKey) -> SubjectPublicKeyInfoOwned {
    let der = key.to_public_key().to_public_key_der().unwrap();
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).unwrap()
}

fn ext(oid: &str, critical: bool, value: Vec<u8>) -> Extension {
    Extension {
        extn_id: ObjectIdentifier::new_unwrap(oid),
        critical,
        extn_value: OctetString::new(value).unwrap(),
    }
}

fn int(n: u8) -> Vec<u8> {
    u32::from(n).to_der().unwrap()
}

fn sign_cert(tbs: TbsCertificate, key: &rsa::RsaPrivateKey) -> Vec<u8> {
    let sig = pss_sign(key, &tbs.to_der().unwrap());
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: pss_alg(),
        signature: BitString::from_bytes(&sig).unwrap(),
    }
    .to_der()
    .unwrap()
}

fn tbs(
    serial: &[u8],
    issuer: &str,
    subject: &str,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
) -> TbsCertificate {
    TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial).unwrap(),
        signature: pss_alg(),
        issuer: name(issuer),
        validity: Validity {
            not_before: time(NOW.0 - 365 * DAY),
            not_after: time(NOW.0 + 365 * DAY),
        },
        subject: name(subject),
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!extensions.is_empty()).then_some(extensions),
    }
}

const ARK_NAME: &str = "CN=ARK-Milan,O=Cocoon test roots";
const ASK_NAME: &str = "CN=SEV-Milan,O=Cocoon test roots";
const ASK_SERIAL: &[u8] = &[0x01, 0x02, 0x03];
const VCEK_SERIAL: &[u8] = &[0x42, 0x42];
/// Milan TCB: bootloader 3, TEE 0, SNP 8, microcode 115.
const TCB: [u8; 8] = [3, 0, 0, 0, 0, 0, 8, 115];
const HWID: [u8; 64] = [0xC1; 64];

/// A test ARK → ASK → VCEK chain, and a report signed by the VCEK.
struct Pki {
    ark_key: rsa::RsaPrivateKey,
    ask_key: rsa::RsaPrivateKey,
    ark: Vec<u8>,
    ask: Vec<u8>,
    vcek: Vec<u8>,
    report: Vec<u8>,
}

fn field(name: &str) -> std::ops::Range<usize> {
    let (_, at, len) = FIELD_RANGES.iter().find(|(n, _, _)| *n == name).unwrap();
    *at..at + len
}

fn pki() -> &'static Pki {
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let ark_key = rsa_key("ark.pk8");
        let ask_key = rsa_key("ask.pk8");
        let ark = sign_cert(
            tbs(&[1], ARK_NAME, ARK_NAME, rsa_spki(&ark_key), vec![]),
            &ark_key,
        );
        let ask = sign_cert(
            tbs(ASK_SERIAL, ARK_NAME, ASK_NAME, rsa_spki(&ask_key), vec![]),
            &ark_key,
        );
        let vcek_key = p384::ecdsa::SigningKey::from_slice(&[0x17; 48]).unwrap();
        let point = vcek_key.verifying_key().to_encoded_point(false);
        let vcek_spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
                parameters: Some(
                    der::Any::encode_from(&ObjectIdentifier::new_unwrap("1.3.132.0.34")).unwrap(),
                ),
            },
            subject_public_key: BitString::from_bytes(point.as_bytes()).unwrap(),
        };
        // AMD's VCEK extensions (VCEK spec §3): SPLs as INTEGERs, the
        // product name as an IA5String, hwID as the raw chip ID.
        let vcek_ext = vec![
            ext("1.3.6.1.4.1.3704.1.1", false, int(0)),
            ext(
                "1.3.6.1.4.1.3704.1.2",
                false,
                Ia5String::new("Milan-B0").unwrap().to_der().unwrap(),
            ),
            ext("1.3.6.1.4.1.3704.1.3.1", false, int(TCB[0])),
            ext("1.3.6.1.4.1.3704.1.3.2", false, int(TCB[1])),
            ext("1.3.6.1.4.1.3704.1.3.3", false, int(TCB[6])),
            ext("1.3.6.1.4.1.3704.1.3.8", false, int(TCB[7])),
            ext("1.3.6.1.4.1.3704.1.4", false, HWID.to_vec()),
        ];
        let vcek = sign_cert(
            tbs(VCEK_SERIAL, ASK_NAME, "CN=SEV-VCEK", vcek_spki, vcek_ext),
            &ask_key,
        );
        let mut report = vec![0u8; REPORT_SIZE];
        report[field("version")].copy_from_slice(&2u32.to_le_bytes());
        report[field("policy")].copy_from_slice(&0x3_0000u64.to_le_bytes());
        report[field("signature_algo")].copy_from_slice(&1u32.to_le_bytes());
        report[field("measurement")].copy_from_slice(&MEASUREMENT);
        report[field("reported_tcb")].copy_from_slice(&TCB);
        report[field("chip_id")].copy_from_slice(&HWID);
        let sig: p384::ecdsa::Signature = vcek_key.sign(&report[..SIGNED_LEN]);
        let (r, s) = sig.split_bytes();
        let at = field("signature").start;
        for (i, b) in r.iter().rev().enumerate() {
            report[at + i] = *b;
        }
        for (i, b) in s.iter().rev().enumerate() {
            report[at + 72 + i] = *b;
        }
        Pki {
            ark_key,
            ask_key,
            ark,
            ask,
            vcek,
            report,
        }
    })
}

/// What a CRL says, before it is signed.
struct CrlSpec {
    issuer: &'static str,
    this_update: u64,
    next_update: Option<u64>,
    revoked: Vec<&'static [u8]>,
    extensions: Vec<Extension>,
}

impl Default for CrlSpec {
    fn default() -> Self {
        CrlSpec {
            issuer: ARK_NAME,
            this_update: NOW.0 - DAY,
            next_update: Some(NOW.0 + 7 * DAY),
            revoked: vec![],
            extensions: vec![],
        }
    }
}

fn crl(spec: CrlSpec, key: &rsa::RsaPrivateKey) -> Vec<u8> {
    let tbs = TbsCertList {
        version: Version::V2,
        signature: pss_alg(),
        issuer: name(spec.issuer),
        this_update: time(spec.this_update),
        next_update: spec.next_update.map(time),
        revoked_certificates: (!spec.revoked.is_empty()).then(|| {
            spec.revoked
                .iter()
                .map(|s| RevokedCert {
                    serial_number: SerialNumber::new(s).unwrap(),
                    revocation_date: time(NOW.0 - 30 * DAY),
                    crl_entry_extensions: None,
                })
                .collect()
        }),
        crl_extensions: (!spec.extensions.is_empty()).then_some(spec.extensions),
    };
    let sig = pss_sign(key, &tbs.to_der().unwrap());
    CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: pss_alg(),
        signature: BitString::from_bytes(&sig).unwrap(),
    }
    .to_der()
    .unwrap()
}

/// One verifier for the whole file (it caches the verified chain).
fn verifier() -> &'static SnpVerifier {
    static V: std::sync::OnceLock<SnpVerifier> = std::sync::OnceLock::new();
    V.get_or_init(|| SnpVerifier::with_test_roots(&[(Product::Milan, &pki().ark)]).unwrap())
}

fn policy(revocation: Check<()>) -> SnpPolicy {
    let mut p = SnpPolicy::pinned_to_measurements(vec![MEASUREMENT]);
    p.revocation = revocation;
    p
}

/// The test chain (ASK and ARK supplied as a PEM chain) with `crl`.
fn verify(crl: Option<&[u8]>, revocation: Check<()>) -> Result<VerifiedSnp, Rejection> {
    let p = pki();
    let chain = cocoon_tests::pem::to_pem(&[p.ask.clone(), p.ark.clone()]);
    verifier().verify(
        &p.report,
        SnpCertificates {
            vek: &p.vcek,
            chain: chain.as_bytes(),
            crl,
        },
        &policy(revocation),
        NOW,
    )
}

fn rejected_for(r: Result<VerifiedSnp, Rejection>, kind: ReasonKind, needle: &str) -> Rejection {
    let r = r.expect_err("accepted");
    assert!(
        r.reasons()
            .iter()
            .any(|x| x.kind == kind && x.message.contains(needle)),
        "expected a {kind:?} reason containing {needle:?}: {r}"
    );
    r
}

#[test]
fn a_current_crl_signed_by_the_ark_that_lists_neither_key_is_accepted() {
    let c = crl(CrlSpec::default(), &pki().ark_key);
    let v = verify(Some(&c), Check::Require(())).unwrap();
    assert_eq!(
        v.revocation(),
        &SnpRevocation::Checked {
            this_update: UnixTime(NOW.0 - DAY),
            next_update: UnixTime(NOW.0 + 7 * DAY),
            listed: 0,
        }
    );
    // Listing other serials changes nothing; PEM is read too.
    let other = crl(
        CrlSpec {
            revoked: vec![&[0x09], &[0x42, 0x43]],
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    let pem = der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, &other).unwrap();
    let v = verify(Some(pem.as_bytes()), Check::Require(())).unwrap();
    assert!(matches!(
        v.revocation(),
        SnpRevocation::Checked { listed: 2, .. }
    ));
}

#[test]
fn a_crl_listing_the_vcek_rejects_it_by_name() {
    let c = crl(
        CrlSpec {
            revoked: vec![VCEK_SERIAL],
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    let r = rejected_for(
        verify(Some(&c), Check::Require(())),
        ReasonKind::Revoked,
        "the VCEK certificate SEV-VCEK (serial 4242) is revoked",
    );
    assert_eq!(r.reasons().len(), 1, "{r}");
}

#[test]
fn a_crl_listing_the_ask_rejects_it() {
    let c = crl(
        CrlSpec {
            revoked: vec![ASK_SERIAL],
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    rejected_for(
        verify(Some(&c), Check::Require(())),
        ReasonKind::Revoked,
        "the ASK certificate SEV-Milan (serial 010203) is revoked",
    );
}

#[test]
fn a_stale_or_future_crl_is_rejected() {
    let stale = crl(
        CrlSpec {
            this_update: NOW.0 - 30 * DAY,
            next_update: Some(NOW.0 - 3600),
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    rejected_for(
        verify(Some(&stale), Check::Require(())),
        ReasonKind::Collateral,
        "is stale: its nextUpdate 2025-12-31T23:00:00Z",
    );
    let future = crl(
        CrlSpec {
            this_update: NOW.0 + 3600,
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    rejected_for(
        verify(Some(&future), Check::Require(())),
        ReasonKind::Collateral,
        "is not valid until",
    );
    let no_next = crl(
        CrlSpec {
            next_update: None,
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    rejected_for(
        verify(Some(&no_next), Check::Require(())),
        ReasonKind::Collateral,
        "no nextUpdate",
    );
}

#[test]
fn a_crl_signed_by_another_key_is_rejected() {
    // Named as the ARK's, signed with the ASK's key.
    let forged = crl(CrlSpec::default(), &pki().ask_key);
    rejected_for(
        verify(Some(&forged), Check::Require(())),
        ReasonKind::Collateral,
        "is not signed by ARK-Milan",
    );
    // Signed by the ARK but naming another issuer.
    let misnamed = crl(
        CrlSpec {
            issuer: ASK_NAME,
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    rejected_for(
        verify(Some(&misnamed), Check::Require(())),
        ReasonKind::Collateral,
        "is not signed by ARK-Milan",
    );
}

#[test]
fn a_missing_crl_is_rejected_by_name_when_revocation_is_required() {
    rejected_for(
        verify(None, Check::Require(())),
        ReasonKind::Collateral,
        "AMD's CRL for Milan is missing",
    );
    rejected_for(
        verify(Some(b"not a CRL"), Check::Require(())),
        ReasonKind::Collateral,
        "AMD CRL: not a DER X.509 CRL",
    );
}

#[test]
fn revocation_skip_accepts_without_a_crl_and_says_not_checked() {
    let v = verify(None, Check::Skip).unwrap();
    assert_eq!(v.revocation(), &SnpRevocation::NotChecked);
    // Skipped means skipped: a CRL given is not consulted.
    let listing = crl(
        CrlSpec {
            revoked: vec![VCEK_SERIAL],
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    let v = verify(Some(&listing), Check::Skip).unwrap();
    assert_eq!(v.revocation(), &SnpRevocation::NotChecked);
}

#[test]
fn critical_and_delta_crl_extensions_are_refused() {
    let critical = crl(
        CrlSpec {
            // issuingDistributionPoint, critical: it would scope the CRL.
            extensions: vec![ext("2.5.29.28", true, vec![0x30, 0x00])],
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    assert!(matches!(
        AmdCrl::parse(&critical),
        Err(CrlError::Critical("CRL", _))
    ));
    rejected_for(
        verify(Some(&critical), Check::Require(())),
        ReasonKind::Collateral,
        "critical CRL extension 2.5.29.28",
    );
    let delta = crl(
        CrlSpec {
            extensions: vec![ext("2.5.29.27", false, int(1))],
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    assert_eq!(AmdCrl::parse(&delta), Err(CrlError::Delta));
    // A CRL number (non-critical) is fine.
    let numbered = crl(
        CrlSpec {
            extensions: vec![ext("2.5.29.20", false, int(7))],
            ..CrlSpec::default()
        },
        &pki().ark_key,
    );
    assert!(verify(Some(&numbered), Check::Require(())).is_ok());
}

#[test]
fn every_byte_of_the_crl_is_covered() {
    // A CRL that lists nothing, each byte flipped in turn: never accepted
    // (parse error, algorithm, issuer, or the ARK's signature).
    let good = crl(CrlSpec::default(), &pki().ark_key);
    assert!(verify(Some(&good), Check::Require(())).is_ok());
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let r = verify(Some(&bad), Check::Require(())).expect_err("a flipped CRL was accepted");
        assert!(r.has(ReasonKind::Collateral), "byte {at}: {r}");
    }
    // Oversized input is refused before parsing.
    let big = vec![0x30; cocoon_verifier::snp_crl::MAX_CRL + 1];
    assert!(matches!(AmdCrl::parse(&big), Err(CrlError::TooLarge(_))));
}

#[test]
fn the_vcek_bundled_with_its_ask_and_ark_in_one_pem_verifies_with_its_crl() {
    let p = pki();
    let bundle = cocoon_tests::pem::to_pem(&[p.ark.clone(), p.vcek.clone(), p.ask.clone()]);
    let c = crl(CrlSpec::default(), &p.ark_key);
    let v = verifier()
        .verify(
            &p.report,
            SnpCertificates {
                vek: bundle.as_bytes(),
                chain: &[],
                crl: Some(&c),
            },
            &policy(Check::Require(())),
            NOW,
        )
        .unwrap();
    assert!(matches!(v.revocation(), SnpRevocation::Checked { .. }));
}

// The real AMD roots: a CRL signed by the test ARK is not AMD's.

const GENOA_AT: UnixTime = UnixTime(1_759_305_600);

fn genoa() -> (Vec<u8>, Vec<u8>) {
    let dir = vectors_dir().join("snp/genoa-v5-oak");
    (
        std::fs::read(dir.join("report.bin")).unwrap(),
        std::fs::read(dir.join("vcek.der")).unwrap(),
    )
}

fn genoa_crl() -> Vec<u8> {
    crl(
        CrlSpec {
            issuer: "CN=ARK-Genoa,O=Cocoon test roots",
            this_update: GENOA_AT.0 - DAY,
            next_update: Some(GENOA_AT.0 + DAY),
            ..CrlSpec::default()
        },
        &pki().ark_key,
    )
}

#[test]
fn amds_roots_refuse_a_test_signed_crl_in_the_library_and_the_bundle() {
    let (report, vcek) = genoa();
    let measurement = cocoon_attestation::snp::SnpReport::parse(&report)
        .unwrap()
        .measurement()
        .to_owned();
    let mut p = SnpPolicy::pinned_to_measurements(vec![measurement]);
    p.revocation = Check::Require(());
    let c = genoa_crl();
    let r = SnpVerifier::new()
        .verify(
            &report,
            SnpCertificates {
                vek: &vcek,
                chain: &[],
                crl: Some(&c),
            },
            &p,
            GENOA_AT,
        )
        .unwrap_err();
    assert!(r.to_string().contains("is not signed by ARK-Genoa"), "{r}");
    // The same CRL as the bundle's SNP collateral reaches the verifier.
    let claims = Claims {
        hpke_public_key: vec![1; 32],
        receipt_public_key: vec![2; 65],
        image_id: "t".into(),
        model_digests: vec![],
        config_digest: [0; 32],
        gpu_evidence_digest: None,
        epoch: 1,
        issued_at: 1,
        refresh: 0,
        client_nonce: None,
        disk_verity_root: None,
        provider_settings: None,
    };
    let bundle = |crl: Option<Vec<u8>>| {
        EvidenceBundle {
            platform: PlatformEvidence::Snp {
                report: report.clone(),
                vek: vcek.clone(),
                chain: vec![],
                crl,
            },
            claims_cbor: claims.to_cbor(),
            gpu: None,
        }
        .to_cbor()
    };
    let policy = Policy {
        release: "r".into(),
        snp: Some(p),
        tdx: None,
        simulated: None,
        gpu: None,
        max_evidence_age: cocoon_verifier::policy::Check::Skip,
    };
    let r = cocoon_verifier::verify(&bundle(Some(c)), &policy, GENOA_AT).unwrap_err();
    assert!(r.to_string().contains("is not signed by ARK-Genoa"), "{r}");
    let r = cocoon_verifier::verify(&bundle(None), &policy, GENOA_AT).unwrap_err();
    assert!(
        r.to_string().contains("AMD's CRL for Genoa is missing"),
        "{r}"
    );
}

#[test]
fn cocoon_verify_snp_takes_a_crl() {
    let dir = std::env::temp_dir().join(format!("cocoon-snp-crl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let crl_file = dir.join("genoa.crl");
    std::fs::write(&crl_file, genoa_crl()).unwrap();
    let genoa = vectors_dir().join("snp/genoa-v5-oak");
    let measurement = hex::encode(
        cocoon_attestation::snp::SnpReport::parse(&genoa_report())
            .unwrap()
            .measurement(),
    );
    let run = |crl: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_cocoon-verify"))
            .args(["snp", "--report"])
            .arg(genoa.join("report.bin"))
            .arg("--cert")
            .arg(genoa.join("vcek.der"))
            .arg("--crl")
            .arg(crl)
            .args([
                "--measurement",
                &measurement,
                "--at",
                "2025-10-01T08:00:00Z",
                "--json",
            ])
            .output()
            .unwrap()
    };
    // With --measurement, a CRL given is a CRL checked.
    let out = run(&crl_file);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{j}");
    assert!(
        j["reasons"][0]
            .as_str()
            .unwrap()
            .contains("is not signed by ARK-Genoa"),
        "{j}"
    );
    std::fs::write(&crl_file, b"junk").unwrap();
    let out = run(&crl_file);
    assert_eq!(out.status.code(), Some(1));
    // A CRL file that cannot be read is a usage error.
    assert_eq!(run(&dir.join("absent")).status.code(), Some(64));
    std::fs::remove_dir_all(&dir).ok();
}

fn genoa_report() -> Vec<u8> {
    genoa().0
}
