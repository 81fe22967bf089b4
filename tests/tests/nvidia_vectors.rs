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
