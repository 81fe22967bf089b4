//! The fixed layouts of a quote: sizes, type codes, and the `repr(C)`
//! structs that mirror the tables of the *Intel TDX DCAP Quoting Library
//! API*, appendix "Quote Format" ("Quote Header", "TD Quote Body", "TD
//! Quote Body Descriptor", "TD Quote Body v1.5", "Enclave Report Body"),
//! with every offset asserted at compile time. No reading happens here.

use core::mem::{offset_of, size_of};

/// Size in bytes of the quote header.
pub const HEADER_SIZE: usize = 48;
/// Size in bytes of the version 5 body descriptor.
pub const BODY_DESCRIPTOR_SIZE: usize = 6;
/// Size in bytes of an SGX enclave report (the SGX quote body and the QE report).
pub const ENCLAVE_REPORT_SIZE: usize = 384;
/// Size in bytes of a TD 1.0 quote body.
pub const TD10_BODY_SIZE: usize = 584;
/// Size in bytes of a TD 1.5 quote body.
pub const TD15_BODY_SIZE: usize = 648;
/// Size in bytes of an ECDSA P-256 signature (`r ‖ s`).
pub const ECDSA_P256_SIGNATURE_SIZE: usize = 64;
/// Size in bytes of a raw P-256 public key (`x ‖ y`, no SEC1 prefix).
pub const ECDSA_P256_KEY_SIZE: usize = 64;

/// Quote versions this module parses: 3 (SGX only), 4 and 5.
pub const SUPPORTED_VERSIONS: [u16; 3] = [3, 4, 5];
/// Attestation key type 2: ECDSA-256-with-P-256 curve, the only one in use.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// TEE type of an SGX quote.
pub const TEE_TYPE_SGX: u32 = 0x00;
/// TEE type of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Version 5 body type: SGX enclave report.
pub const BODY_TYPE_SGX: u16 = 1;
/// Version 5 body type: TD report for TDX 1.0.
pub const BODY_TYPE_TD10: u16 = 2;
/// Version 5 body type: TD report for TDX 1.5.
pub const BODY_TYPE_TD15: u16 = 3;
/// Certification data type 5: the PCK leaf certificate, its issuing CA and
/// the root CA, PEM, leaf first.
pub const CERT_DATA_PCK_CERT_CHAIN: u16 = 5;
/// Certification data type 6: QE report certification data (QE report, its
/// signature, QE authentication data and the PCK certification data).
pub const CERT_DATA_QE_REPORT: u16 = 6;
/// The QE vendor ID of Intel's quoting enclaves.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// The quote header ("Quote Header" table). Every field is a byte array, so
/// the struct has alignment 1 and no padding; size and offsets are checked at
/// compile time below.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// 0: quote format version (3, 4 or 5).
    pub version: [u8; 2],
    /// 2: attestation key type (2 = ECDSA-256-with-P-256).
    pub att_key_type: [u8; 2],
    /// 4: TEE type (0x00 SGX, 0x81 TDX); reserved (zero) in version 3.
    pub tee_type: [u8; 4],
    /// 8: QE SVN in version 3. Versions 4 and 5 reserve these bytes (Intel's
    /// `sgx_quote4_header_t` calls bytes 8..12 `reserved`); the TD QE's SVN
    /// is in the QE report.
    pub qe_svn: [u8; 2],
    /// 10: PCE SVN in version 3; reserved from version 4 on, as `qe_svn`.
    pub pce_svn: [u8; 2],
    /// 12: QE vendor ID ([`INTEL_QE_VENDOR_ID`] for Intel's QE).
    pub qe_vendor_id: [u8; 16],
    /// 28: custom data of the attestation key owner (the platform's QE ID
    /// for Intel's QE).
    pub user_data: [u8; 20],
}

/// The version 5 "TD Quote Body Descriptor".
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBodyDescriptor {
    /// 0: body type (1 SGX, 2 TD 1.0, 3 TD 1.5).
    pub body_type: [u8; 2],
    /// 2: body size in bytes.
    pub body_size: [u8; 4],
}

/// The TD 1.0 report body ("TD Quote Body" table; Intel's
/// `sgx_report2_body_t`), the body of every TDX version 4 quote.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTd10Body {
    /// 0: TEE TCB SVN, see [`TeeTcbSvn`](super::TeeTcbSvn).
    pub tee_tcb_svn: [u8; 16],
    /// 16: measurement of the TDX module (SHA-384).
    pub mrseam: [u8; 48],
    /// 64: measurement of the TDX module's signer; zero for Intel's module.
    pub mrsignerseam: [u8; 48],
    /// 112: TDX module attributes; zero for TDX 1.0 and 1.5.
    pub seam_attributes: [u8; 8],
    /// 120: TD attributes, see [`TdAttributes`](super::TdAttributes).
    pub td_attributes: [u8; 8],
    /// 128: XSAVE feature set enabled for the TD (XFAM).
    pub xfam: [u8; 8],
    /// 136: measurement of the TD's initial contents (MRTD, SHA-384).
    pub mrtd: [u8; 48],
    /// 184: software-defined ID of the TD's non-owner configuration.
    pub mrconfigid: [u8; 48],
    /// 232: software-defined ID of the TD's owner.
    pub mrowner: [u8; 48],
    /// 280: software-defined ID of the owner-defined configuration.
    pub mrownerconfig: [u8; 48],
    /// 328: runtime-extendable measurement register 0 (firmware).
    pub rtmr0: [u8; 48],
    /// 376: RTMR 1 (OS loader and kernel).
    pub rtmr1: [u8; 48],
    /// 424: RTMR 2 (OS and applications).
    pub rtmr2: [u8; 48],
    /// 472: RTMR 3 (reserved for special usage).
    pub rtmr3: [u8; 48],
    /// 520: data the TD bound into the report.
    pub report_data: [u8; 64],
}

/// The TD 1.5 report body ("TD Quote Body v1.5"; Intel's
/// `sgx_report2_body_v1_5_t`): the TD 1.0 body followed by two fields.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTd15Body {
    /// 0: the TD 1.0 fields, unchanged.
    pub td10: RawTd10Body,
    /// 584: TEE TCB SVN of the TDX module the TD was migrated or
    /// TD-preserving-updated from (equals `tee_tcb_svn` otherwise).
    pub tee_tcb_svn_2: [u8; 16],
    /// 600: measurement of the service TD bound to this TD (zero if none).
    pub mrservicetd: [u8; 48],
}

/// The SGX enclave report ("Enclave Report Body"; SDM Vol. 3D `REPORT`):
/// the body of an SGX quote and the Quoting Enclave's own report.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEnclaveReport {
    /// 0: security version of the CPU.
    pub cpusvn: [u8; 16],
    /// 16: SSA frame extended feature set (MISCSELECT).
    pub miscselect: [u8; 4],
    /// 20: reserved.
    pub reserved1: [u8; 12],
    /// 32: ISV-assigned extended product ID (KSS).
    pub isvextprodid: [u8; 16],
    /// 48: enclave attributes: flags (8 bytes) then XFRM (8 bytes).
    pub attributes: [u8; 16],
    /// 64: measurement of the enclave (SHA-256).
    pub mrenclave: [u8; 32],
    /// 96: reserved.
    pub reserved2: [u8; 32],
    /// 128: hash of the enclave signer's public key.
    pub mrsigner: [u8; 32],
    /// 160: reserved.
    pub reserved3: [u8; 32],
    /// 192: configuration ID (KSS).
    pub configid: [u8; 64],
    /// 256: ISV product ID.
    pub isvprodid: [u8; 2],
    /// 258: ISV security version.
    pub isvsvn: [u8; 2],
    /// 260: configuration SVN (KSS).
    pub configsvn: [u8; 2],
    /// 262: reserved.
    pub reserved4: [u8; 42],
    /// 304: ISV-assigned family ID (KSS).
    pub isvfamilyid: [u8; 16],
    /// 320: data the enclave bound into the report.
    pub report_data: [u8; 64],
}

// Compile-time checks that the structs mirror the specification tables.
const _: () = {
    assert!(size_of::<RawHeader>() == HEADER_SIZE);
    assert!(offset_of!(RawHeader, att_key_type) == 2);
    assert!(offset_of!(RawHeader, tee_type) == 4);
    assert!(offset_of!(RawHeader, qe_svn) == 8);
    assert!(offset_of!(RawHeader, pce_svn) == 10);
    assert!(offset_of!(RawHeader, qe_vendor_id) == 12);
    assert!(offset_of!(RawHeader, user_data) == 28);

    assert!(size_of::<RawBodyDescriptor>() == BODY_DESCRIPTOR_SIZE);
    assert!(offset_of!(RawBodyDescriptor, body_size) == 2);

    assert!(size_of::<RawTd10Body>() == TD10_BODY_SIZE);
    assert!(offset_of!(RawTd10Body, mrseam) == 16);
    assert!(offset_of!(RawTd10Body, mrsignerseam) == 64);
    assert!(offset_of!(RawTd10Body, seam_attributes) == 112);
    assert!(offset_of!(RawTd10Body, td_attributes) == 120);
    assert!(offset_of!(RawTd10Body, xfam) == 128);
    assert!(offset_of!(RawTd10Body, mrtd) == 136);
    assert!(offset_of!(RawTd10Body, mrconfigid) == 184);
    assert!(offset_of!(RawTd10Body, mrowner) == 232);
    assert!(offset_of!(RawTd10Body, mrownerconfig) == 280);
    assert!(offset_of!(RawTd10Body, rtmr0) == 328);
    assert!(offset_of!(RawTd10Body, rtmr1) == 376);
    assert!(offset_of!(RawTd10Body, rtmr2) == 424);
    assert!(offset_of!(RawTd10Body, rtmr3) == 472);
    assert!(offset_of!(RawTd10Body, report_data) == 520);

    assert!(size_of::<RawTd15Body>() == TD15_BODY_SIZE);
    assert!(offset_of!(RawTd15Body, tee_tcb_svn_2) == TD10_BODY_SIZE);
    assert!(offset_of!(RawTd15Body, mrservicetd) == 600);

    assert!(size_of::<RawEnclaveReport>() == ENCLAVE_REPORT_SIZE);
    assert!(offset_of!(RawEnclaveReport, miscselect) == 16);
    assert!(offset_of!(RawEnclaveReport, isvextprodid) == 32);
    assert!(offset_of!(RawEnclaveReport, attributes) == 48);
    assert!(offset_of!(RawEnclaveReport, mrenclave) == 64);
    assert!(offset_of!(RawEnclaveReport, mrsigner) == 128);
    assert!(offset_of!(RawEnclaveReport, configid) == 192);
    assert!(offset_of!(RawEnclaveReport, isvprodid) == 256);
    assert!(offset_of!(RawEnclaveReport, isvsvn) == 258);
    assert!(offset_of!(RawEnclaveReport, configsvn) == 260);
    assert!(offset_of!(RawEnclaveReport, isvfamilyid) == 304);
    assert!(offset_of!(RawEnclaveReport, report_data) == 320);
};

/// Fields of [`RawHeader`]: (name, offset within the header, length).
/// Derived from the layout struct, so it cannot drift from it.
pub const HEADER_FIELDS: &[(&str, usize, usize)] = &[
    ("version", offset_of!(RawHeader, version), 2),
    ("att_key_type", offset_of!(RawHeader, att_key_type), 2),
    ("tee_type", offset_of!(RawHeader, tee_type), 4),
    ("qe_svn", offset_of!(RawHeader, qe_svn), 2),
    ("pce_svn", offset_of!(RawHeader, pce_svn), 2),
    ("qe_vendor_id", offset_of!(RawHeader, qe_vendor_id), 16),
    ("user_data", offset_of!(RawHeader, user_data), 20),
];

/// Fields of [`RawBodyDescriptor`]: (name, offset, length).
pub const BODY_DESCRIPTOR_FIELDS: &[(&str, usize, usize)] = &[
    ("body_type", offset_of!(RawBodyDescriptor, body_type), 2),
    ("body_size", offset_of!(RawBodyDescriptor, body_size), 4),
];

/// Fields of [`RawTd10Body`]: (name, offset within the body, length).
pub const TD10_BODY_FIELDS: &[(&str, usize, usize)] = &[
    ("tee_tcb_svn", offset_of!(RawTd10Body, tee_tcb_svn), 16),
    ("mrseam", offset_of!(RawTd10Body, mrseam), 48),
    ("mrsignerseam", offset_of!(RawTd10Body, mrsignerseam), 48),
    (
        "seam_attributes",
        offset_of!(RawTd10Body, seam_attributes),
        8,
    ),
    ("td_attributes", offset_of!(RawTd10Body, td_attributes), 8),
    ("xfam", offset_of!(RawTd10Body, xfam), 8),
    ("mrtd", offset_of!(RawTd10Body, mrtd), 48),
    ("mrconfigid", offset_of!(RawTd10Body, mrconfigid), 48),
    ("mrowner", offset_of!(RawTd10Body, mrowner), 48),
    ("mrownerconfig", offset_of!(RawTd10Body, mrownerconfig), 48),
    ("rtmr0", offset_of!(RawTd10Body, rtmr0), 48),
    ("rtmr1", offset_of!(RawTd10Body, rtmr1), 48),
    ("rtmr2", offset_of!(RawTd10Body, rtmr2), 48),
    ("rtmr3", offset_of!(RawTd10Body, rtmr3), 48),
    ("report_data", offset_of!(RawTd10Body, report_data), 64),
];

/// The fields [`RawTd15Body`] adds after the TD 1.0 ones: (name, offset
/// within the body, length).
pub const TD15_EXTRA_FIELDS: &[(&str, usize, usize)] = &[
    ("tee_tcb_svn_2", offset_of!(RawTd15Body, tee_tcb_svn_2), 16),
    ("mrservicetd", offset_of!(RawTd15Body, mrservicetd), 48),
];

/// Fields of [`RawEnclaveReport`]: (name, offset within the report, length).
pub const ENCLAVE_REPORT_FIELDS: &[(&str, usize, usize)] = &[
    ("cpusvn", offset_of!(RawEnclaveReport, cpusvn), 16),
    ("miscselect", offset_of!(RawEnclaveReport, miscselect), 4),
    ("reserved1", offset_of!(RawEnclaveReport, reserved1), 12),
    (
        "isvextprodid",
        offset_of!(RawEnclaveReport, isvextprodid),
        16,
    ),
    ("attributes", offset_of!(RawEnclaveReport, attributes), 16),
    ("mrenclave", offset_of!(RawEnclaveReport, mrenclave), 32),
    ("reserved2", offset_of!(RawEnclaveReport, reserved2), 32),
    ("mrsigner", offset_of!(RawEnclaveReport, mrsigner), 32),
    ("reserved3", offset_of!(RawEnclaveReport, reserved3), 32),
    ("configid", offset_of!(RawEnclaveReport, configid), 64),
    ("isvprodid", offset_of!(RawEnclaveReport, isvprodid), 2),
    ("isvsvn", offset_of!(RawEnclaveReport, isvsvn), 2),
    ("configsvn", offset_of!(RawEnclaveReport, configsvn), 2),
    ("reserved4", offset_of!(RawEnclaveReport, reserved4), 42),
    ("isvfamilyid", offset_of!(RawEnclaveReport, isvfamilyid), 16),
    ("report_data", offset_of!(RawEnclaveReport, report_data), 64),
];
