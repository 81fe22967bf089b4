//! The bodies of Cocoon's fuzz targets.
//!
//! Each function takes arbitrary bytes and must return normally for every
//! input: a panic is a bug in the crate under test (`cocoon-attestation`,
//! `cocoon-verifier`, `cocoon-protocol` or `cocoon-image`), or, for the
//! `assert!`s, a broken invariant of its public API (for `mux_billing`, a
//! billing invariant of the connection machines).
//! The `fuzz_targets/*.rs` binaries are one-line wrappers around these, so
//! the same code also runs as a plain test over the corpus
//! (`tests/replay.rs`) where cargo-fuzz is not available.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::OnceLock;

use cocoon_attestation::snp::{
    report_from_file, Explain, Product, SnpReport, TcbLayout, TcbVersion, FIELD_RANGES,
    REPORT_SIZE, SIGNED_LEN, SUPPORTED_VERSIONS,
};
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::snp_crl::AmdCrl;
use cocoon_verifier::{verify_snp, Rejection, SnpPolicy, UnixTime, VerifiedSnp};

mod evidence;
mod mux;
mod nvidia;
mod protocol;
mod registry;
mod tdx;
mod ton;
pub use evidence::{bundle, snp_cert_table, tdx_collateral};
pub use mux::mux_billing;
pub use nvidia::{gpu_evidence, rim, spdm_report};
pub use protocol::{
    api, frame_decoder, local_auth, message, provider_settings, receipt, release_manifest,
    sealed_request, settlement,
};
pub use registry::registry_results;
pub use tdx::tdx_quote;
pub use ton::ton_boc;

/// The verification time every target uses: 2025-10-01T08:00:00Z.
pub const NOW: UnixTime = UnixTime(1_759_305_600);

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/<name>.rs` binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("snp_report", snp_report),
    ("snp_verify", snp_verify),
    ("certificates", certificates),
    ("tdx_quote", tdx_quote),
    ("tdx_collateral", tdx_collateral),
    ("bundle", bundle),
    ("frame_decoder", frame_decoder),
    ("sealed_request", sealed_request),
    ("receipt", receipt),
    ("message", message),
    ("api", api),
    ("local_auth", local_auth),
    ("provider_settings", provider_settings),
    ("release_manifest", release_manifest),
    ("spdm_report", spdm_report),
    ("gpu_evidence", gpu_evidence),
    ("ocsp", ocsp),
    ("rim", rim),
    ("snp_cert_table", snp_cert_table),
    ("initramfs", initramfs),
    ("settlement", settlement),
    ("snp_crl", snp_crl),
    ("mux_billing", mux_billing),
    ("ton_boc", ton_boc),
    ("registry_results", registry_results),
];

/// `snp_crl`: the input as an AMD CRL (DER or PEM): [`AmdCrl::parse`] and
/// every accessor. When the input starts with one complete DER SEQUENCE
/// followed by more bytes, that SEQUENCE is a VCEK/VLEK and the rest the
/// CRL, verified behind a report that always parses with revocation
/// required: with a real VCEK (the seeds) the chain verifies against the
/// bundled AMD roots, so the fuzzed CRL is judged against the real ARK
/// (issuer, RSASSA-PSS signature, dates, listed serials). Nothing can be
/// accepted: the report is a dummy.
pub fn snp_crl(data: &[u8]) {
    exercise_crl(data);
    if let Some(n) = der_element_len(data) {
        let (vek, crl) = data.split_at(n);
        if !crl.is_empty() {
            exercise_crl(crl);
            let mut p = policy().clone();
            p.revocation = cocoon_verifier::policy::Check::Require(());
            let certs = SnpCertificates {
                vek,
                chain: &[],
                crl: Some(crl),
            };
            match verify_snp(dummy_report(), certs, &p, NOW) {
                Ok(v) => accepted(&v),
                Err(r) => rejected(&r),
            }
        }
    }
}

/// Parse `data` as an AMD CRL and call every accessor.
pub(crate) fn exercise_crl(data: &[u8]) {
    match AmdCrl::parse(data) {
        Ok(c) => {
            assert_eq!(c.is_empty(), c.len() == 0, "is_empty agrees with len");
            black_box((
                c.issuer_cn(),
                c.this_update(),
                c.next_update(),
                format!("{c:?}"),
            ));
            black_box(c.revoked_at(&[0x01]));
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
}

/// `initramfs`: the input as a newc cpio archive (the guest image's
/// initramfs, as an auditor downloads it). When it parses, writing the
/// entries back must give an archive that parses to the same entries
/// (paths, kinds, contents, permissions).
pub fn initramfs(data: &[u8]) {
    let entries = match cocoon_image::read_newc(data) {
        Ok(e) => e,
        Err(e) => {
            std::hint::black_box(e.to_string());
            return;
        }
    };
    let plain: Vec<cocoon_image::Entry> = entries.into_iter().map(|r| r.entry).collect();
    // The writer refuses what the reader accepts but an image must not hold
    // (duplicates, unclean paths); it must not panic on it.
    let Ok(bytes) = cocoon_image::write_newc(plain.clone(), 0) else {
        return;
    };
    let back = cocoon_image::read_newc(&bytes).expect("what the writer wrote parses");
    let mut want: Vec<&cocoon_image::Entry> = plain.iter().collect();
    want.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    for w in want {
        let got = back
            .iter()
            .find(|r| r.entry.path == w.path)
            .expect("every entry is written back");
        assert_eq!(&got.entry, w, "entry {} changed on a round trip", w.path);
    }
}

/// `snp_report`: parse the input as an SNP report; when it parses, call every
/// accessor and render [`Explain`] under both TCB layouts. The input is
/// also read as a report file ([`report_from_file`]: raw bytes or hex
/// text); hex text that decodes must be exactly one report's bytes.
pub fn snp_report(data: &[u8]) {
    match report_from_file(data) {
        Ok(bytes) => {
            if bytes.as_slice() != data {
                assert_eq!(
                    bytes.len(),
                    REPORT_SIZE,
                    "hex text decoded to a wrong length"
                );
                if let Ok(r) = SnpReport::parse(&bytes) {
                    exercise_report(&r, &bytes);
                }
            }
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
    let report = match SnpReport::parse(data) {
        Ok(r) => r,
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    };
    exercise_report(&report, data);
}

/// `snp_verify`: the first [`REPORT_SIZE`] bytes are the report, the rest is
/// the VCEK/VLEK (DER or PEM); verified against the bundled AMD roots (no
/// supplied chain) under a policy pinned to an all-zero measurement.
pub fn snp_verify(data: &[u8]) {
    let (report, vek) = data.split_at(data.len().min(REPORT_SIZE));
    verify(report, vek, &[]);
}

/// `certificates`: the certificate parser and chain logic behind a report
/// that always parses (version 2, all other bytes zero).
///
/// 1. The whole input is the VCEK/VLEK (DER or PEM), with no chain.
/// 2. When the input starts with one complete DER SEQUENCE and has bytes
///    after it, that SEQUENCE is the VCEK/VLEK and the rest is the supplied
///    ASK/ARK chain (PEM or DER). The seeds put a real VCEK/VLEK first and a
///    real AMD chain after it, so this fuzzes the chain with a real VCEK.
pub fn certificates(data: &[u8]) {
    let report = dummy_report();
    verify(report, data, &[]);
    if let Some(n) = der_element_len(data) {
        let (vek, chain) = data.split_at(n);
        if !chain.is_empty() {
            verify(report, vek, chain);
        }
    }
}

/// `ocsp`: the input as an OCSP response (RFC 6960) about NVIDIA's Device
/// Identity CA, as if issued by itself, checked at [`NOW`]
/// ([`cocoon_verifier::nvidia::ocsp::check_ocsp`]). No input can be
/// accepted, whatever status it claims: that would need a signature by
/// NVIDIA's root key (or a responder it delegated to).
pub fn ocsp(data: &[u8]) {
    const ROOT: &[u8] = include_bytes!("../../verifier/roots/nvidia/device_identity_ca.der");
    match cocoon_verifier::nvidia::ocsp::check_ocsp(ROOT, ROOT, data, NOW, 7 * 86_400) {
        Ok(v) => panic!(
            "a fuzzed OCSP response was accepted (status {}, responder {}): signature or responder bypass",
            v.status, v.responder
        ),
        Err(r) => rejected(&r),
    }
}

/// A report that `SnpReport::parse` accepts: version 2, everything else zero.
fn dummy_report() -> &'static [u8] {
    static REPORT: OnceLock<Vec<u8>> = OnceLock::new();
    REPORT.get_or_init(|| {
        let mut r = vec![0u8; REPORT_SIZE];
        r[..4].copy_from_slice(&2u32.to_le_bytes());
        r
    })
}

fn policy() -> &'static SnpPolicy {
    static POLICY: OnceLock<SnpPolicy> = OnceLock::new();
    POLICY.get_or_init(|| SnpPolicy::pinned_to_measurements(vec![[0u8; 48]]))
}

fn verify(report: &[u8], vek: &[u8], chain: &[u8]) {
    let certs = SnpCertificates {
        vek,
        chain,
        crl: None,
    };
    match verify_snp(report, certs, policy(), NOW) {
        Ok(v) => accepted(&v),
        Err(r) => rejected(&r),
    }
}

fn accepted(v: &VerifiedSnp) {
    // The policy pins the measurement to all zeros and a fuzzer cannot forge
    // an AMD signature; no seed has a zero measurement. Acceptance therefore
    // means a signature or policy bypass: fail loudly.
    panic!(
        "verification accepted a fuzzed report (product {}, signer {}, measurement {}): signature or policy bypass",
        v.product(),
        v.signer(),
        hex_string(v.report().measurement())
    );
}

fn rejected(r: &Rejection) {
    // "Nothing fails open": every rejection must say why.
    assert!(!r.reasons().is_empty(), "a Rejection without reasons");
    for reason in r.reasons() {
        black_box(reason.kind);
        assert!(!reason.message.is_empty(), "a Reason with an empty message");
    }
    black_box(r.to_string());
}

/// Length of the DER TLV at the start of `data` when it is a SEQUENCE that
/// fits in `data`; `None` otherwise. Never panics.
fn der_element_len(data: &[u8]) -> Option<usize> {
    let (&tag, rest) = data.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2usize)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for &b in rest.get(..n)? {
            len = len.checked_mul(256)?.checked_add(usize::from(b))?;
        }
        (len, 2 + n)
    };
    let total = header.checked_add(len)?;
    (total <= data.len()).then_some(total)
}

fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The bytes [`FIELD_RANGES`] gives for `name`.
fn field<'a>(data: &'a [u8], name: &str) -> &'a [u8] {
    let (_, off, len) = FIELD_RANGES
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("FIELD_RANGES has no {name}"));
    data.get(*off..off + len)
        .unwrap_or_else(|| panic!("FIELD_RANGES {name} lies outside the report"))
}

fn exercise_tcb(tcb: TcbVersion) {
    for layout in [TcbLayout::MilanGenoa, TcbLayout::Turin] {
        let parts = tcb.decode(layout);
        black_box(parts.to_string());
        black_box(TcbVersion::reserved_mask(layout));
    }
}

fn exercise_report(r: &SnpReport, data: &[u8]) {
    // Invariants of a successful parse.
    assert_eq!(&r.as_bytes()[..], data, "as_bytes differs from the input");
    assert_eq!(r.signed_bytes(), &data[..SIGNED_LEN], "signed_bytes");
    assert!(
        SUPPORTED_VERSIONS.contains(&r.version()),
        "unsupported version accepted"
    );
    for (name, got) in [
        ("family_id", &r.family_id()[..]),
        ("image_id", &r.image_id()[..]),
        ("report_data", &r.report_data()[..]),
        ("measurement", &r.measurement()[..]),
        ("host_data", &r.host_data()[..]),
        ("id_key_digest", &r.id_key_digest()[..]),
        ("author_key_digest", &r.author_key_digest()[..]),
        ("report_id", &r.report_id()[..]),
        ("report_id_ma", &r.report_id_ma()[..]),
        ("chip_id", &r.chip_id()[..]),
        ("signature", &r.raw().signature[..]),
    ] {
        assert_eq!(
            got,
            field(data, name),
            "{name} accessor differs from FIELD_RANGES"
        );
    }
    assert_eq!(r.cpuid().is_some(), r.version() >= 3, "cpuid presence");
    assert_eq!(
        r.launch_mit_vector().is_some(),
        r.version() >= 5,
        "mit vector presence"
    );
    assert_eq!(
        r.current_mit_vector().is_some(),
        r.version() >= 5,
        "mit vector presence"
    );

    // Every accessor.
    black_box(r.raw().clone());
    black_box(r.guest_svn());
    let p = r.policy();
    black_box((
        p.abi_minor(),
        p.abi_major(),
        p.smt_allowed(),
        p.migrate_ma(),
        p.debug_allowed(),
        p.single_socket(),
        p.cxl_allowed(),
        p.mem_aes_256_xts(),
        p.rapl_disabled(),
        p.ciphertext_hiding(),
        p.page_swap_disabled(),
    ));
    black_box(r.vmpl());
    black_box(r.signature_algo());
    let pi = r.platform_info();
    black_box((
        pi.smt_enabled(),
        pi.tsme_enabled(),
        pi.ecc_enabled(),
        pi.rapl_disabled(),
        pi.ciphertext_hiding_enabled(),
        pi.alias_check_complete(),
        pi.tio_enabled(),
    ));
    let k = r.key_info();
    black_box((k.author_key_en(), k.mask_chip_key()));
    black_box(k.signing_key().to_string());
    for tcb in [
        r.current_tcb(),
        r.reported_tcb(),
        r.committed_tcb(),
        r.launch_tcb(),
    ] {
        exercise_tcb(tcb);
    }
    black_box(r.cpuid());
    if let Some(product) = r.product_from_cpuid() {
        black_box((product.name(), product.tcb_layout(), product.to_string()));
    }
    for product in Product::ALL {
        black_box(product.tcb_layout());
    }
    black_box(r.current_firmware().to_string());
    black_box(r.committed_firmware().to_string());
    black_box(r.launch_mit_vector());
    black_box(r.current_mit_vector());
    let sig = r.signature();
    if let Some(fixed) = sig.to_p384_fixed() {
        // r and s are little-endian in the report, big-endian in `fixed`.
        assert_eq!(fixed[47], sig.r[0], "r byte order");
        assert_eq!(fixed[95], sig.s[0], "s byte order");
    }
    black_box(r.nonzero_reserved_fields());
    black_box(format!("{r:?}"));
    black_box(r.clone() == *r);

    // The explanation under both layouts.
    let measurement = hex_string(r.measurement());
    for layout in [TcbLayout::MilanGenoa, TcbLayout::Turin] {
        let text = Explain { report: r, layout }.to_string();
        assert!(text.contains(&measurement), "Explain omits the measurement");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(der_element_len(&[0x30, 0x00]), Some(2));
        assert_eq!(der_element_len(&[0x30, 0x01, 0xAA, 0xBB]), Some(3));
        assert_eq!(der_element_len(&[0x30, 0x02, 0xAA]), None);
        assert_eq!(der_element_len(&[0x30, 0x81, 0x01, 0xAA]), Some(4));
        assert_eq!(der_element_len(&[0x30, 0x82, 0x00]), None);
        assert_eq!(der_element_len(&[0x30, 0x80]), None);
        assert_eq!(der_element_len(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(der_element_len(&[0x31, 0x00]), None);
        assert_eq!(der_element_len(&[]), None);
    }

    #[test]
    fn targets_survive_trivial_inputs() {
        for (_, f) in TARGETS {
            f(&[]);
            f(&[0x30]);
            f(dummy_report());
        }
        snp_report(dummy_report());
    }
}
