//! Cache poisoning and expiry for `GpuVerifier`'s two caches (verified
//! device certificate chains, verified RIMs): a cache hit needs the exact
//! same bytes, so an altered copy of a cached chain or RIM is verified from
//! scratch and refused; and a chain or RIM cached while valid is refused on
//! a cache hit at a time outside its certificates' windows. A warm verdict
//! equals the cold one.

use cocoon_attestation::nvidia::{GpuCollateral, SpdmReport};
use cocoon_tests::read_vector;
use cocoon_verifier::nvidia::gpus::{verify_gpus, DeviceInput};
use cocoon_verifier::nvidia::{verify_device, DeviceExpectations, GpuVerifier};
use cocoon_verifier::policy::GpuPolicy;
use cocoon_verifier::{ReasonKind, UnixTime};

/// 2024-06-01T00:00:00Z: inside every window of the H100 chain and the
/// VBIOS RIM's signing chain.
const AT: UnixTime = UnixTime(1_717_200_000);
const CHAIN: &str = "nvidia/h100-535-vbios-rim/hopperCertChain.txt";
const REPORT: &str = "nvidia/h100-535-vbios-rim/hopperAttestationReport.txt";
const VBIOS_RIM: &str = "nvidia/h100-535-vbios-rim/1010_0200_882_96005E0001_PROD.swidtag";

fn report() -> Vec<u8> {
    let text = String::from_utf8(read_vector(REPORT)).unwrap();
    hex::decode(text.trim()).unwrap()
}

fn nonce(report: &[u8]) -> [u8; 32] {
    SpdmReport::parse(report)
        .unwrap()
        .request_nonce()
        .try_into()
        .unwrap()
}

/// The earliest notAfter among the PEM certificates in `pem`.
fn earliest_not_after(pem: &str) -> u64 {
    use der::Decode;
    cocoon_tests::pem::certificates(pem)
        .iter()
        .map(|der| {
            x509_cert::Certificate::from_der(der)
                .unwrap()
                .tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs()
        })
        .min()
        .unwrap()
}

/// `pem` with one base64 character of its first certificate's body
/// changed (in the signature, near the end of the block).
fn altered_leaf(pem: &str) -> Vec<u8> {
    let end = pem.find("-----END CERTIFICATE-----").unwrap();
    // Skip the newline and the padding; pick a base64 letter.
    let at = pem[..end]
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_ascii_alphanumeric())
        .map(|(i, _)| i - 8)
        .unwrap();
    let mut bytes = pem.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    bytes
}

#[test]
fn a_cached_device_chain_serves_only_its_exact_bytes_and_only_inside_its_windows() {
    let report = report();
    let chain = read_vector(CHAIN);
    let nonce = nonce(&report);
    let expect = DeviceExpectations {
        nonce: Some(&nonce),
        golden: None,
    };
    let v = GpuVerifier::new();
    let cold = verify_device(&report, &chain, &expect, AT).unwrap();
    let warm1 = v.verify_device(&report, &chain, &expect, AT).unwrap();
    assert_eq!(v.cached().0, 1, "the verified chain is cached");
    let warm2 = v.verify_device(&report, &chain, &expect, AT).unwrap();
    assert_eq!(cold, warm1);
    assert_eq!(cold, warm2);

    // An altered copy of the cached chain is a miss, verified and refused
    // as a fresh verifier refuses it, and not cached.
    let pem = String::from_utf8(chain.clone()).unwrap();
    let bad = altered_leaf(&pem);
    let fresh = verify_device(&report, &bad, &expect, AT).unwrap_err();
    let cached = v.verify_device(&report, &bad, &expect, AT).unwrap_err();
    assert_eq!(fresh.to_string(), cached.to_string());
    assert!(
        cached.has(ReasonKind::Chain) || cached.has(ReasonKind::Certificate),
        "{cached}"
    );
    assert_eq!(v.cached().0, 1, "a chain that failed is not cached");

    // Past the earliest notAfter of the chain, the cache hit is refused.
    let later = UnixTime(earliest_not_after(&pem) + 1);
    let r = v
        .verify_device(&report, &chain, &expect, later)
        .unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
    assert_eq!(
        r.to_string(),
        verify_device(&report, &chain, &expect, later)
            .unwrap_err()
            .to_string(),
        "a cache hit refuses with the words a fresh check uses"
    );
    // Before the windows open, too.
    let r = v
        .verify_device(&report, &chain, &expect, UnixTime(1))
        .unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
    // And the entry still serves a valid time.
    assert_eq!(v.verify_device(&report, &chain, &expect, AT).unwrap(), cold);

    // A report that does not verify with the cached chain is still refused.
    let mut bad_report = report.clone();
    let last = bad_report.len() - 1;
    bad_report[last] ^= 1;
    let r = v
        .verify_device(&bad_report, &chain, &expect, AT)
        .unwrap_err();
    assert!(
        r.has(ReasonKind::Signature) || r.has(ReasonKind::Malformed),
        "{r}"
    );
}

#[test]
fn a_cached_rim_serves_only_its_exact_bytes_and_only_inside_its_windows() {
    let xml = read_vector(VBIOS_RIM);
    let v = GpuVerifier::new();
    let cold = cocoon_verifier::nvidia::rim::verify_rim(&xml, AT).unwrap();
    let warm = v.verify_rim(&xml, AT).unwrap();
    assert_eq!(v.cached().1, 1);
    let warm2 = v.verify_rim(&xml, AT).unwrap();
    assert_eq!(format!("{cold:?}"), format!("{warm:?}"));
    assert_eq!(format!("{cold:?}"), format!("{warm2:?}"));

    // One hex digit of a signed measurement changed: a miss, refused.
    let text = String::from_utf8(xml.clone()).unwrap();
    let at = text.find("Hash0=\"").unwrap() + "Hash0=\"".len() + 3;
    let mut bad = xml.clone();
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    let r = v.verify_rim(&bad, AT).unwrap_err();
    assert!(r.has(ReasonKind::Signature), "{r}");
    assert_eq!(v.cached().1, 1, "a RIM that failed is not cached");

    // The VBIOS RIM's signer expired on 2025-06-22: refused on a hit.
    let july_2025 = UnixTime(1_751_328_000);
    let r = v.verify_rim(&xml, july_2025).unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
    assert_eq!(
        r.to_string(),
        cocoon_verifier::nvidia::rim::verify_rim(&xml, july_2025)
            .unwrap_err()
            .to_string()
    );
    assert!(v.verify_rim(&xml, AT).is_ok());
}

#[test]
fn a_warm_hgx_set_gives_the_cold_verdict_and_expires_on_a_hit() {
    let load = |file: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        let items: Vec<serde_json::Value> = serde_json::from_slice(&read_vector(file)).unwrap();
        items
            .iter()
            .map(|i| {
                (
                    cocoon_tests::pem::decode_base64(i["evidence"].as_str().unwrap()),
                    cocoon_tests::pem::decode_base64(i["certificate"].as_str().unwrap()),
                )
            })
            .collect()
    };
    let mut set = load("nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json");
    set.extend(load("nvidia/hgx-8xh100-ppcie-nvtrust/switch_evidence.json"));
    let nonce = nonce(&set[0].0);
    let inputs: Vec<DeviceInput<'_>> = set
        .iter()
        .map(|(r, c)| DeviceInput {
            report: r,
            cert_chain: c,
        })
        .collect();
    let none = GpuCollateral::default();
    let policy = GpuPolicy::integrity_only();
    let v = GpuVerifier::new();
    let cold = verify_gpus(&inputs, &none, &policy, Some(&nonce), None, AT).unwrap();
    for _ in 0..2 {
        let warm = v
            .verify_gpus(&inputs, &none, &policy, Some(&nonce), None, AT)
            .unwrap();
        assert_eq!(warm.devices(), cold.devices());
    }
    assert_eq!(v.cached().0, 12);
    // A wrong nonce is still a nonce mismatch on every device.
    let other = [0x5a; 32];
    let r = v
        .verify_gpus(&inputs, &none, &policy, Some(&other), None, AT)
        .unwrap_err();
    assert_eq!(
        r.reasons()
            .iter()
            .filter(|x| x.message.contains("nonce mismatch"))
            .count(),
        12,
        "{r}"
    );
    // Past the earliest notAfter of any chain in the set: refused on a hit.
    let earliest = set
        .iter()
        .map(|(_, c)| earliest_not_after(std::str::from_utf8(c).unwrap()))
        .min()
        .unwrap();
    let r = v
        .verify_gpus(
            &inputs,
            &none,
            &policy,
            Some(&nonce),
            None,
            UnixTime(earliest + 1),
        )
        .unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
}
