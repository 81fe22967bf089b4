//! OCSP checks against a test PKI built with the RustCrypto encoders
//! (`x509-cert` and `x509-ocsp` builders, `p384`/`p256` signing keys): real
//! signatures throughout, no mocks.

use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use der::Encode;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use spki::AlgorithmIdentifierOwned;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::{CrlReason, ExtendedKeyUsage};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;
use x509_ocsp::builder::OcspResponseBuilder;
use x509_ocsp::{
    BasicOcspResponse, CertId, OcspGeneralizedTime, OcspResponse, ResponderId as XResponderId,
    ResponseData as XResponseData, RevokedInfo, SingleResponse, Version,
};

use super::*;

const NOW: u64 = 1_759_305_600; // 2025-10-01T08:00:00Z
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;
const MAX_AGE: u64 = 7 * DAY;
const LEAF_SERIAL: [u8; 9] = [0x00, 0x9a, 0x0b, 0x1c, 0x2d, 0x3e, 0x4f, 0x50, 0x61];

type P384Sk = p384::ecdsa::SigningKey;
type P256Sk = p256::ecdsa::SigningKey;

fn p384_key(seed: u8) -> P384Sk {
    P384Sk::from_slice(&[seed; 48]).unwrap()
}

fn p256_key(seed: u8) -> P256Sk {
    P256Sk::from_slice(&[seed; 32]).unwrap()
}

fn name(s: &str) -> Name {
    s.parse().unwrap()
}

fn gt(t: u64) -> OcspGeneralizedTime {
    OcspGeneralizedTime(GeneralizedTime::from_unix_duration(Duration::from_secs(t)).unwrap())
}

fn validity(from: u64, to: u64) -> Validity {
    let t = |s| Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(s)).unwrap());
    Validity {
        not_before: t(from),
        not_after: t(to),
    }
}

fn spki384(k: &P384Sk) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned::from_key(*k.verifying_key()).unwrap()
}

fn spki256(k: &P256Sk) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned::from_key(*k.verifying_key()).unwrap()
}

/// A certificate signed by `signer` (ecdsa-with-SHA384).
fn issue(
    profile: Profile,
    serial: &[u8],
    subject: &str,
    spki: SubjectPublicKeyInfoOwned,
    signer: &P384Sk,
    eku: Option<Vec<ObjectIdentifier>>,
    valid: Validity,
) -> Certificate {
    let mut b = CertificateBuilder::new(
        profile,
        SerialNumber::new(serial).unwrap(),
        valid,
        name(subject),
        spki,
        signer,
    )
    .unwrap();
    if let Some(eku) = eku {
        b.add_extension(&ExtendedKeyUsage(eku)).unwrap();
    }
    b.build::<p384::ecdsa::DerSignature>().unwrap()
}

fn leaf_profile(issuer: &str) -> Profile {
    Profile::Leaf {
        issuer: name(issuer),
        enable_key_agreement: false,
        enable_key_encipherment: false,
    }
}

const CA: &str = "CN=Test OCSP CA,O=Cocoon Test";
const OTHER_CA: &str = "CN=Other CA,O=Cocoon Test";

/// The test hierarchy: a CA, a leaf it issued, delegated responders.
struct Pki {
    ca_key: P384Sk,
    ca: Certificate,
    leaf: Certificate,
    /// P-384 responder with id-kp-OCSPSigning.
    responder_key: P384Sk,
    responder: Certificate,
}

fn pki() -> Pki {
    let ca_key = p384_key(1);
    let ca = issue(
        Profile::Root,
        &[1],
        CA,
        spki384(&ca_key),
        &ca_key,
        None,
        validity(NOW - 365 * DAY, NOW + 3650 * DAY),
    );
    let leaf = issue(
        leaf_profile(CA),
        &LEAF_SERIAL,
        "CN=GPU device,O=Cocoon Test",
        spki384(&p384_key(2)),
        &ca_key,
        None,
        validity(NOW - 30 * DAY, NOW + 3650 * DAY),
    );
    let responder_key = p384_key(3);
    let responder = issue(
        leaf_profile(CA),
        &[3],
        "CN=Test OCSP Responder,O=Cocoon Test",
        spki384(&responder_key),
        &ca_key,
        Some(vec![OID_KP_OCSP_SIGNING]),
        validity(NOW - DAY, NOW + 30 * DAY),
    );
    Pki {
        ca_key,
        ca,
        leaf,
        responder_key,
        responder,
    }
}

fn der_of(c: &Certificate) -> Vec<u8> {
    c.to_der().unwrap()
}

impl Pki {
    fn ca_der(&self) -> Vec<u8> {
        der_of(&self.ca)
    }
    fn leaf_der(&self) -> Vec<u8> {
        der_of(&self.leaf)
    }
    fn cert_id<D: sha2::Digest + der::oid::AssociatedOid>(&self) -> CertId {
        CertId::from_cert::<D>(&self.ca, &self.leaf).unwrap()
    }
    fn check(&self, response: &[u8]) -> Result<OcspVerdict, Rejection> {
        self.check_at(response, NOW)
    }
    fn check_at(&self, response: &[u8], now: u64) -> Result<OcspVerdict, Rejection> {
        check_ocsp(
            &self.leaf_der(),
            &self.ca_der(),
            response,
            UnixTime(now),
            MAX_AGE,
        )
    }
}

/// Who signs, and with which hash.
enum Signer<'a> {
    P384(&'a P384Sk, EcdsaHash),
    P256(&'a P256Sk, EcdsaHash),
}

fn digest(hash: EcdsaHash, msg: &[u8]) -> Vec<u8> {
    match hash {
        EcdsaHash::Sha256 => sha256(msg).to_vec(),
        EcdsaHash::Sha384 => sha384(msg).to_vec(),
    }
}

/// A successful OCSPResponse over `data`, signed by `signer`.
fn signed(data: &XResponseData, signer: Signer<'_>, certs: Option<Vec<Certificate>>) -> Vec<u8> {
    let tbs = data.to_der().unwrap();
    let (hash, sig) = match signer {
        Signer::P384(k, hash) => {
            let s: p384::ecdsa::Signature = k.sign_prehash(&digest(hash, &tbs)).unwrap();
            (hash, s.to_der().as_bytes().to_vec())
        }
        Signer::P256(k, hash) => {
            let s: p256::ecdsa::Signature = k.sign_prehash(&digest(hash, &tbs)).unwrap();
            (hash, s.to_der().as_bytes().to_vec())
        }
    };
    let oid = match hash {
        EcdsaHash::Sha256 => OID_ECDSA_SHA256,
        EcdsaHash::Sha384 => OID_ECDSA_SHA384,
    };
    let basic = BasicOcspResponse {
        tbs_response_data: data.clone(),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid,
            parameters: None,
        },
        signature: BitString::from_bytes(&sig).unwrap(),
        certs,
    };
    OcspResponse::successful(basic).unwrap().to_der().unwrap()
}

fn response_data(
    responder: XResponderId,
    singles: Vec<SingleResponse>,
    extensions: Option<Vec<Extension>>,
) -> XResponseData {
    XResponseData {
        version: Version::V1,
        responder_id: responder,
        produced_at: gt(NOW - HOUR),
        responses: singles,
        response_extensions: extensions,
    }
}

fn single(id: CertId, status: x509_ocsp::CertStatus) -> SingleResponse {
    SingleResponse::new(id, status, gt(NOW - HOUR)).with_next_update(gt(NOW + DAY))
}

fn by_ca_name() -> XResponderId {
    XResponderId::ByName(name(CA))
}

/// A good response about the leaf, signed by the CA with SHA-384.
fn good_by_ca(p: &Pki) -> Vec<u8> {
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::good(),
        )],
        None,
    );
    signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None)
}

fn reject_kind(r: Result<OcspVerdict, Rejection>, kind: ReasonKind, needle: &str) {
    match r {
        Ok(v) => panic!("accepted, expected {kind:?} containing {needle:?}: {v:?}"),
        Err(e) => {
            assert!(e.has(kind), "expected {kind:?}, got {e}");
            assert!(
                e.to_string().contains(needle),
                "expected a message containing {needle:?}, got {e}"
            );
        }
    }
}

#[test]
fn good_signed_by_the_issuer() {
    let p = pki();
    let v = p.check(&good_by_ca(&p)).unwrap();
    assert_eq!(v.status, CertStatus::Good);
    assert_eq!(v.this_update, UnixTime(NOW - HOUR));
    assert_eq!(v.next_update, Some(UnixTime(NOW + DAY)));
    assert_eq!(v.produced_at, UnixTime(NOW - HOUR));
    assert!(!v.delegated);
    assert!(v.responder.contains("Test OCSP CA"), "{}", v.responder);
}

#[test]
fn good_from_the_x509_ocsp_response_builder() {
    // The whole response encoded by x509-ocsp's own builder and signer.
    let p = pki();
    let resp = OcspResponseBuilder::new(by_ca_name())
        .with_single_response(single(
            p.cert_id::<sha1::Sha1>(),
            x509_ocsp::CertStatus::good(),
        ))
        .sign::<_, p384::ecdsa::DerSignature>(&mut p.ca_key.clone(), None, gt(NOW - HOUR))
        .unwrap()
        .to_der()
        .unwrap();
    assert_eq!(p.check(&resp).unwrap().status, CertStatus::Good);
}

#[test]
fn issuer_named_by_key_hash() {
    let p = pki();
    let key_hash = sha1(
        p.ca.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    );
    let data = response_data(
        XResponderId::ByKey(OctetString::new(key_hash.to_vec()).unwrap()),
        vec![single(
            p.cert_id::<sha2::Sha256>(),
            x509_ocsp::CertStatus::good(),
        )],
        None,
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    assert_eq!(p.check(&resp).unwrap().status, CertStatus::Good);
}

#[test]
fn issuer_signing_with_sha256() {
    let p = pki();
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::good(),
        )],
        None,
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha256), None);
    assert_eq!(p.check(&resp).unwrap().status, CertStatus::Good);
}

fn revoked(p: &Pki, reason: Option<CrlReason>) -> Vec<u8> {
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::revoked(RevokedInfo {
                revocation_time: gt(NOW - 10 * DAY),
                revocation_reason: reason,
            }),
        )],
        None,
    );
    signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None)
}

#[test]
fn revoked_with_reason() {
    let p = pki();
    let v = p
        .check(&revoked(&p, Some(CrlReason::KeyCompromise)))
        .unwrap();
    assert_eq!(
        v.status,
        CertStatus::Revoked {
            at: UnixTime(NOW - 10 * DAY),
            reason: Some(RevocationReason::KeyCompromise)
        }
    );
    let v = p
        .check(&revoked(&p, Some(CrlReason::CertificateHold)))
        .unwrap();
    let CertStatus::Revoked {
        reason: Some(reason),
        ..
    } = v.status
    else {
        panic!("{v:?}")
    };
    assert_eq!(reason, RevocationReason::CertificateHold);
    assert_eq!(reason.name(), "certificateHold");
    assert_eq!(reason.code(), 6);
}

#[test]
fn revoked_without_reason() {
    let p = pki();
    let v = p.check(&revoked(&p, None)).unwrap();
    assert_eq!(
        v.status,
        CertStatus::Revoked {
            at: UnixTime(NOW - 10 * DAY),
            reason: None
        }
    );
}

#[test]
fn unknown_status() {
    let p = pki();
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::unknown(),
        )],
        None,
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    assert_eq!(p.check(&resp).unwrap().status, CertStatus::Unknown);
}

#[test]
fn sha1_sha256_and_sha384_cert_ids() {
    let p = pki();
    for id in [
        p.cert_id::<sha1::Sha1>(),
        p.cert_id::<sha2::Sha256>(),
        p.cert_id::<sha2::Sha384>(),
    ] {
        let data = response_data(
            by_ca_name(),
            vec![single(id.clone(), x509_ocsp::CertStatus::good())],
            None,
        );
        let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
        assert_eq!(
            p.check(&resp).unwrap().status,
            CertStatus::Good,
            "{}",
            id.hash_algorithm.oid
        );
        // Without the NULL parameters as well.
        let mut bare = id.clone();
        bare.hash_algorithm.parameters = None;
        let data = response_data(
            by_ca_name(),
            vec![single(bare, x509_ocsp::CertStatus::good())],
            None,
        );
        let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
        assert_eq!(p.check(&resp).unwrap().status, CertStatus::Good);
    }
}

#[test]
fn sha512_cert_id_is_not_matched() {
    let p = pki();
    let mut id = p.cert_id::<sha2::Sha384>();
    id.hash_algorithm.oid = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
    let data = response_data(
        by_ca_name(),
        vec![single(id, x509_ocsp::CertStatus::good())],
        None,
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    reject_kind(p.check(&resp), ReasonKind::Collateral, "unsupported hash");
}

#[test]
fn wrong_serial() {
    let p = pki();
    let id =
        CertId::from_issuer::<sha2::Sha384>(&p.ca, SerialNumber::new(&[0x42]).unwrap()).unwrap();
    let data = response_data(
        by_ca_name(),
        vec![single(id, x509_ocsp::CertStatus::good())],
        None,
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    reject_kind(
        p.check(&resp),
        ReasonKind::Collateral,
        "no SingleResponse is about serial 009a0b1c2d3e4f5061",
    );
}

#[test]
fn wrong_issuer_name_hash_or_key_hash() {
    let p = pki();
    for which in ["name", "key"] {
        let mut id = p.cert_id::<sha2::Sha256>();
        let field = if which == "name" {
            &mut id.issuer_name_hash
        } else {
            &mut id.issuer_key_hash
        };
        let mut bytes = field.as_bytes().to_vec();
        bytes[0] ^= 1;
        *field = OctetString::new(bytes).unwrap();
        let data = response_data(
            by_ca_name(),
            vec![single(id, x509_ocsp::CertStatus::good())],
            None,
        );
        let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
        reject_kind(p.check(&resp), ReasonKind::Collateral, "another issuer");
    }
}

#[test]
fn exactly_one_single_response_must_match() {
    let p = pki();
    let other =
        CertId::from_issuer::<sha2::Sha384>(&p.ca, SerialNumber::new(&[7]).unwrap()).unwrap();
    // Another certificate's answer beside ours is fine.
    let data = response_data(
        by_ca_name(),
        vec![
            single(
                other,
                x509_ocsp::CertStatus::revoked(RevokedInfo {
                    revocation_time: gt(NOW - DAY),
                    revocation_reason: None,
                }),
            ),
            single(p.cert_id::<sha2::Sha384>(), x509_ocsp::CertStatus::good()),
        ],
        None,
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    assert_eq!(p.check(&resp).unwrap().status, CertStatus::Good);
    // Two answers about ours (even under different hashes) are ambiguous.
    let data = response_data(
        by_ca_name(),
        vec![
            single(p.cert_id::<sha1::Sha1>(), x509_ocsp::CertStatus::good()),
            single(
                p.cert_id::<sha2::Sha384>(),
                x509_ocsp::CertStatus::unknown(),
            ),
        ],
        None,
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    reject_kind(
        p.check(&resp),
        ReasonKind::Collateral,
        "2 SingleResponses match",
    );
}

#[test]
fn flipped_signature_bit() {
    let p = pki();
    let good = good_by_ca(&p);
    // The signature BIT STRING is the last element when there are no certs:
    // flip a bit in its last byte (part of s).
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    reject_kind(p.check(&bad), ReasonKind::Signature, "does not verify");
}

/// The BasicOCSPResponse inside a successful response.
fn basic_of(resp: &[u8]) -> BasicOcspResponse {
    let outer = OcspResponse::from_der(resp).unwrap();
    BasicOcspResponse::from_der(outer.response_bytes.unwrap().response.as_bytes()).unwrap()
}

#[test]
fn signed_data_changed_after_signing() {
    // The good response's signature on a well-formed "revoked" and
    // "unknown" tbsResponseData.
    let p = pki();
    let good = basic_of(&good_by_ca(&p));
    for status in [
        x509_ocsp::CertStatus::unknown(),
        x509_ocsp::CertStatus::revoked(RevokedInfo {
            revocation_time: gt(NOW - DAY),
            revocation_reason: None,
        }),
    ] {
        let mut b = good.clone();
        b.tbs_response_data.responses[0].cert_status = status;
        let resp = OcspResponse::successful(b).unwrap().to_der().unwrap();
        reject_kind(p.check(&resp), ReasonKind::Signature, "does not verify");
    }
}

#[test]
fn signed_by_an_unrelated_key() {
    let p = pki();
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::good(),
        )],
        None,
    );
    let resp = signed(&data, Signer::P384(&p384_key(99), EcdsaHash::Sha384), None);
    reject_kind(p.check(&resp), ReasonKind::Signature, "does not verify");
}

fn by_responder(p: &Pki, responder: &Certificate) -> XResponseData {
    response_data(
        XResponderId::ByName(responder.tbs_certificate.subject.clone()),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::good(),
        )],
        None,
    )
}

#[test]
fn delegated_responder() {
    let p = pki();
    let data = by_responder(&p, &p.responder);
    let resp = signed(
        &data,
        Signer::P384(&p.responder_key, EcdsaHash::Sha384),
        Some(vec![p.responder.clone()]),
    );
    let v = p.check(&resp).unwrap();
    assert_eq!(v.status, CertStatus::Good);
    assert!(v.delegated);
    assert!(
        v.responder.contains("Test OCSP Responder"),
        "{}",
        v.responder
    );
    // Included beside its issuer, as some responders send it.
    let resp = signed(
        &data,
        Signer::P384(&p.responder_key, EcdsaHash::Sha384),
        Some(vec![p.responder.clone(), p.ca.clone()]),
    );
    assert!(p.check(&resp).unwrap().delegated);
}

#[test]
fn delegated_responder_named_by_key_hash() {
    let p = pki();
    let hash = sha1(
        p.responder
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    );
    let mut data = by_responder(&p, &p.responder);
    data.responder_id = XResponderId::ByKey(OctetString::new(hash.to_vec()).unwrap());
    let resp = signed(
        &data,
        Signer::P384(&p.responder_key, EcdsaHash::Sha384),
        Some(vec![p.responder.clone()]),
    );
    assert!(p.check(&resp).unwrap().delegated);
}

#[test]
fn delegated_p256_responder_with_sha256_and_sha384() {
    let p = pki();
    let key = p256_key(4);
    let responder = issue(
        leaf_profile(CA),
        &[4],
        "CN=P-256 Responder",
        spki256(&key),
        &p.ca_key,
        Some(vec![OID_KP_OCSP_SIGNING]),
        validity(NOW - DAY, NOW + 30 * DAY),
    );
    for hash in [EcdsaHash::Sha256, EcdsaHash::Sha384] {
        let data = by_responder(&p, &responder);
        let resp = signed(
            &data,
            Signer::P256(&key, hash),
            Some(vec![responder.clone()]),
        );
        let v = p.check(&resp).unwrap();
        assert_eq!(v.status, CertStatus::Good, "{hash:?}");
        // The P-256 signature does not verify under the other hash.
        let other = match hash {
            EcdsaHash::Sha256 => OID_ECDSA_SHA384,
            EcdsaHash::Sha384 => OID_ECDSA_SHA256,
        };
        let mut basic = basic_of(&resp);
        basic.signature_algorithm.oid = other;
        let swapped = OcspResponse::successful(basic).unwrap().to_der().unwrap();
        reject_kind(p.check(&swapped), ReasonKind::Signature, "does not verify");
    }
}

#[test]
fn delegated_responder_without_the_eku() {
    let p = pki();
    for eku in [
        None,
        Some(vec![ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2")]),
    ] {
        let responder = issue(
            leaf_profile(CA),
            &[5],
            "CN=Not a Responder",
            spki384(&p.responder_key),
            &p.ca_key,
            eku,
            validity(NOW - DAY, NOW + 30 * DAY),
        );
        let resp = signed(
            &by_responder(&p, &responder),
            Signer::P384(&p.responder_key, EcdsaHash::Sha384),
            Some(vec![responder]),
        );
        reject_kind(p.check(&resp), ReasonKind::Chain, "id-kp-OCSPSigning");
    }
}

#[test]
fn delegated_responder_not_issued_by_the_issuer() {
    let p = pki();
    // Issued by another CA.
    let other_key = p384_key(7);
    let responder = issue(
        leaf_profile(OTHER_CA),
        &[6],
        "CN=Foreign Responder",
        spki384(&p.responder_key),
        &other_key,
        Some(vec![OID_KP_OCSP_SIGNING]),
        validity(NOW - DAY, NOW + 30 * DAY),
    );
    let resp = signed(
        &by_responder(&p, &responder),
        Signer::P384(&p.responder_key, EcdsaHash::Sha384),
        Some(vec![responder]),
    );
    reject_kind(p.check(&resp), ReasonKind::Chain, "is not issued by");
    // Naming our CA as issuer but signed by another key.
    let responder = issue(
        leaf_profile(CA),
        &[6],
        "CN=Forged Responder",
        spki384(&p.responder_key),
        &other_key,
        Some(vec![OID_KP_OCSP_SIGNING]),
        validity(NOW - DAY, NOW + 30 * DAY),
    );
    let resp = signed(
        &by_responder(&p, &responder),
        Signer::P384(&p.responder_key, EcdsaHash::Sha384),
        Some(vec![responder]),
    );
    reject_kind(p.check(&resp), ReasonKind::Chain, "is not issued by");
}

#[test]
fn delegated_responder_outside_its_validity() {
    let p = pki();
    let responder = issue(
        leaf_profile(CA),
        &[8],
        "CN=Expired Responder",
        spki384(&p.responder_key),
        &p.ca_key,
        Some(vec![OID_KP_OCSP_SIGNING]),
        validity(NOW - 30 * DAY, NOW - DAY),
    );
    let resp = signed(
        &by_responder(&p, &responder),
        Signer::P384(&p.responder_key, EcdsaHash::Sha384),
        Some(vec![responder]),
    );
    reject_kind(p.check(&resp), ReasonKind::Expired, "Expired Responder");
}

#[test]
fn responder_not_included() {
    let p = pki();
    let resp = signed(
        &by_responder(&p, &p.responder),
        Signer::P384(&p.responder_key, EcdsaHash::Sha384),
        None,
    );
    reject_kind(
        p.check(&resp),
        ReasonKind::Chain,
        "neither Test OCSP CA nor a certificate included",
    );
}

#[test]
fn delegated_responder_signature_by_another_key() {
    let p = pki();
    let resp = signed(
        &by_responder(&p, &p.responder),
        Signer::P384(&p.ca_key, EcdsaHash::Sha384),
        Some(vec![p.responder.clone()]),
    );
    reject_kind(p.check(&resp), ReasonKind::Signature, "Test OCSP Responder");
}

fn with_times(p: &Pki, this: u64, next: Option<u64>, produced: u64) -> Vec<u8> {
    let mut s = SingleResponse::new(
        p.cert_id::<sha2::Sha384>(),
        x509_ocsp::CertStatus::good(),
        gt(this),
    );
    if let Some(n) = next {
        s = s.with_next_update(gt(n));
    }
    let mut data = response_data(by_ca_name(), vec![s], None);
    data.produced_at = gt(produced);
    signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None)
}

#[test]
fn expired_next_update() {
    let p = pki();
    let resp = with_times(&p, NOW - 2 * DAY, Some(NOW - DAY), NOW - 2 * DAY);
    reject_kind(p.check(&resp), ReasonKind::Expired, "stale: nextUpdate");
    // nextUpdate equal to now is already stale.
    let resp = with_times(&p, NOW - DAY, Some(NOW), NOW - DAY);
    reject_kind(p.check(&resp), ReasonKind::Expired, "stale: nextUpdate");
    assert!(p.check_at(&resp, NOW - 1).is_ok());
}

#[test]
fn this_update_in_the_future() {
    let p = pki();
    let resp = with_times(&p, NOW + 1, Some(NOW + DAY), NOW - HOUR);
    reject_kind(p.check(&resp), ReasonKind::Expired, "thisUpdate");
    // thisUpdate == now is accepted (no skew, but not strict either).
    let resp = with_times(&p, NOW, Some(NOW + DAY), NOW);
    assert!(p.check(&resp).is_ok());
}

#[test]
fn produced_in_the_future() {
    let p = pki();
    let resp = with_times(&p, NOW - HOUR, Some(NOW + DAY), NOW + 60);
    reject_kind(p.check(&resp), ReasonKind::Expired, "producedAt");
}

#[test]
fn next_update_before_this_update() {
    let p = pki();
    let resp = with_times(&p, NOW - HOUR, Some(NOW - 2 * HOUR), NOW - HOUR);
    reject_kind(p.check(&resp), ReasonKind::Malformed, "before thisUpdate");
}

#[test]
fn missing_next_update_and_max_age() {
    let p = pki();
    let fresh = with_times(&p, NOW - MAX_AGE, None, NOW - MAX_AGE);
    let v = p.check(&fresh).unwrap();
    assert_eq!(v.next_update, None);
    let old = with_times(&p, NOW - MAX_AGE - 1, None, NOW - MAX_AGE - 1);
    reject_kind(p.check(&old), ReasonKind::Expired, "no nextUpdate");
}

#[test]
fn non_successful_statuses_are_named() {
    let p = pki();
    for (resp, name) in [
        (OcspResponse::try_later(), "tryLater"),
        (OcspResponse::malformed_request(), "malformedRequest"),
        (OcspResponse::internal_error(), "internalError"),
        (OcspResponse::sig_required(), "sigRequired"),
        (OcspResponse::unauthorized(), "unauthorized"),
    ] {
        reject_kind(
            p.check(&resp.to_der().unwrap()),
            ReasonKind::Collateral,
            name,
        );
    }
    // Status 4 is not defined.
    reject_kind(
        p.check(&[0x30, 0x03, 0x0a, 0x01, 0x04]),
        ReasonKind::UnknownValue,
        "not defined",
    );
    // successful without responseBytes.
    reject_kind(
        p.check(&[0x30, 0x03, 0x0a, 0x01, 0x00]),
        ReasonKind::Malformed,
        "no responseBytes",
    );
}

#[test]
fn response_type_must_be_basic() {
    let p = pki();
    let good = good_by_ca(&p);
    let mut outer = OcspResponse::from_der(&good).unwrap();
    let bytes = outer.response_bytes.as_mut().unwrap();
    bytes.response_type = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.99");
    reject_kind(
        p.check(&outer.to_der().unwrap()),
        ReasonKind::Collateral,
        "not id-pkix-ocsp-basic",
    );
}

#[test]
fn unsupported_signature_algorithms_are_named() {
    let p = pki();
    let basic = basic_of(&good_by_ca(&p));
    for (oid, name) in [
        ("1.2.840.113549.1.1.11", "sha256WithRSAEncryption"),
        ("1.2.840.10045.4.3.4", "ecdsa-with-SHA512"),
        ("1.3.101.112", "Ed25519"),
        ("1.2.3.4", "unrecognised"),
    ] {
        let mut b = basic.clone();
        b.signature_algorithm.oid = ObjectIdentifier::new_unwrap(oid);
        let resp = OcspResponse::successful(b).unwrap().to_der().unwrap();
        reject_kind(p.check(&resp), ReasonKind::Signature, name);
    }
    // ecdsa-with-SHA384 with (NULL) parameters.
    let mut b = basic.clone();
    b.signature_algorithm.parameters = Some(der::asn1::Null.into());
    let resp = OcspResponse::successful(b).unwrap().to_der().unwrap();
    reject_kind(p.check(&resp), ReasonKind::Signature, "parameters");
}

#[test]
fn extensions_nonce_ignored_unknown_critical_rejected() {
    let p = pki();
    let nonce = Extension {
        extn_id: OID_OCSP_NONCE,
        critical: false,
        extn_value: OctetString::new(vec![0x04, 0x02, 0xAB, 0xCD]).unwrap(),
    };
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::good(),
        )],
        Some(vec![nonce.clone()]),
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    assert_eq!(p.check(&resp).unwrap().status, CertStatus::Good);

    let strange = Extension {
        extn_id: ObjectIdentifier::new_unwrap("1.2.3.4.5"),
        critical: true,
        extn_value: OctetString::new(vec![0x05, 0x00]).unwrap(),
    };
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::good(),
        )],
        Some(vec![nonce, strange.clone()]),
    );
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    reject_kind(p.check(&resp), ReasonKind::UnknownValue, "1.2.3.4.5");

    let mut s = single(p.cert_id::<sha2::Sha384>(), x509_ocsp::CertStatus::good());
    s.single_extensions = Some(vec![strange.clone()]);
    let data = response_data(by_ca_name(), vec![s], None);
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    reject_kind(p.check(&resp), ReasonKind::UnknownValue, "singleExtension");

    // The same extension, not critical, is ignored.
    let mut s = single(p.cert_id::<sha2::Sha384>(), x509_ocsp::CertStatus::good());
    s.single_extensions = Some(vec![Extension {
        critical: false,
        ..strange
    }]);
    let data = response_data(by_ca_name(), vec![s], None);
    let resp = signed(&data, Signer::P384(&p.ca_key, EcdsaHash::Sha384), None);
    assert!(p.check(&resp).is_ok());
}

#[test]
fn certificate_not_issued_by_the_given_issuer() {
    let p = pki();
    let other_key = p384_key(7);
    let other_ca = issue(
        Profile::Root,
        &[9],
        OTHER_CA,
        spki384(&other_key),
        &other_key,
        None,
        validity(NOW - DAY, NOW + DAY),
    );
    let r = check_ocsp(
        &p.leaf_der(),
        &der_of(&other_ca),
        &good_by_ca(&p),
        UnixTime(NOW),
        MAX_AGE,
    );
    reject_kind(r, ReasonKind::Chain, "not issued by Other CA");
}

#[test]
fn unparsable_certificates() {
    let p = pki();
    let r = check_ocsp(b"junk", &p.ca_der(), &good_by_ca(&p), UnixTime(NOW), 0);
    reject_kind(r, ReasonKind::Certificate, "certificate");
    let r = check_ocsp(&p.leaf_der(), b"", &good_by_ca(&p), UnixTime(NOW), 0);
    reject_kind(r, ReasonKind::Certificate, "issuer");
}

#[test]
fn truncated_and_garbage_bytes_are_malformed() {
    let p = pki();
    let good = good_by_ca(&p);
    assert!(p.check(&good).is_ok());
    for len in 0..good.len() {
        reject_kind(p.check(&good[..len]), ReasonKind::Malformed, "not a DER");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    reject_kind(p.check(&trailing), ReasonKind::Malformed, "not a DER");
    for garbage in [&b"garbage"[..], &[0xff; 100], &[0x30, 0x80, 0x00, 0x00]] {
        reject_kind(p.check(garbage), ReasonKind::Malformed, "not a DER");
    }
    reject_kind(
        p.check(&vec![0x30; MAX_RESPONSE_LEN + 1]),
        ReasonKind::Malformed,
        "more than",
    );
}

#[test]
fn every_single_byte_change_is_rejected() {
    // Never a panic, and no change anywhere (wrappers, signed data,
    // algorithm, signature) is accepted. One bit in every third byte (each
    // check costs two ECDSA verifications in an unoptimised build); the
    // certificates are parsed once.
    let p = pki();
    let good = good_by_ca(&p);
    let leaf = Cert::from_der_ecdsa(&p.leaf_der()).unwrap();
    let ca = Cert::from_der_ecdsa(&p.ca_der()).unwrap();
    assert!(check_response(&leaf, &ca, &good, UnixTime(NOW), MAX_AGE).is_ok());
    for i in (0..good.len()).step_by(3) {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        if let Ok(v) = check_response(&leaf, &ca, &bad, UnixTime(NOW), MAX_AGE) {
            panic!("byte {i} ^ 0x01 still accepted: {v:?}");
        }
    }
}

#[test]
fn signature_is_over_the_received_bytes() {
    // The parser keeps tbsResponseData as received: the bytes the checker
    // hashes are exactly the input's slice.
    let p = pki();
    let good = good_by_ca(&p);
    let outer = parse_outer(&good).unwrap();
    let (_, basic_der) = outer.bytes.unwrap();
    let basic = parse_basic(basic_der).unwrap();
    let data = response_data(
        by_ca_name(),
        vec![single(
            p.cert_id::<sha2::Sha384>(),
            x509_ocsp::CertStatus::good(),
        )],
        None,
    );
    assert_eq!(basic.tbs, data.to_der().unwrap().as_slice());
    // A borrowed slice of the input, not a copy or re-encoding.
    let input = good.as_ptr_range();
    let tbs = basic.tbs.as_ptr_range();
    assert!(input.start <= tbs.start && tbs.end <= input.end);
}

#[test]
fn revocation_reason_codes_round_trip() {
    for code in 0..=255u8 {
        match RevocationReason::from_code(code) {
            Some(r) => assert_eq!(r.code(), code),
            None => assert!(code == 7 || code > 10),
        }
    }
}
