//! The decoded values of a quote: header, body descriptor, TD report
//! (TD 1.0 and 1.5), SGX enclave report, and the packed fields in them (TD
//! attributes, TEE TCB SVN). Accessors only; reading is `parse`'s.

use core::fmt;

use super::layout::*;

/// The trusted execution environment a quote is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TeeType {
    /// An SGX enclave (TEE type 0x00).
    Sgx,
    /// A TDX trust domain (TEE type 0x81).
    Tdx,
}

impl fmt::Display for TeeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TeeType::Sgx => "SGX",
            TeeType::Tdx => "TDX",
        })
    }
}

/// A parsed quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteHeader {
    pub(super) raw: RawHeader,
    pub(super) tee: TeeType,
}

impl QuoteHeader {
    /// The raw layout.
    pub fn raw(&self) -> &RawHeader {
        &self.raw
    }
    /// Quote format version (3, 4 or 5).
    pub fn version(&self) -> u16 {
        u16::from_le_bytes(self.raw.version)
    }
    /// Attestation key type (always [`ATT_KEY_TYPE_ECDSA_P256`] once parsed).
    pub fn att_key_type(&self) -> u16 {
        u16::from_le_bytes(self.raw.att_key_type)
    }
    /// The TEE type field as it was read.
    pub fn tee_type_raw(&self) -> u32 {
        u32::from_le_bytes(self.raw.tee_type)
    }
    /// The TEE the quote is for.
    pub fn tee_type(&self) -> TeeType {
        self.tee
    }
    /// QE SVN (version 3; reserved, normally zero, in versions 4 and 5).
    pub fn qe_svn(&self) -> u16 {
        u16::from_le_bytes(self.raw.qe_svn)
    }
    /// PCE SVN (version 3; reserved, normally zero, in versions 4 and 5).
    pub fn pce_svn(&self) -> u16 {
        u16::from_le_bytes(self.raw.pce_svn)
    }
    /// QE vendor ID.
    pub fn qe_vendor_id(&self) -> &[u8; 16] {
        &self.raw.qe_vendor_id
    }
    /// Attestation key owner's data.
    pub fn user_data(&self) -> &[u8; 20] {
        &self.raw.user_data
    }
}

/// The version 5 body descriptor, as read (and checked against the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDescriptor {
    /// Body type ([`BODY_TYPE_SGX`], [`BODY_TYPE_TD10`] or [`BODY_TYPE_TD15`]).
    pub body_type: u16,
    /// Body size in bytes.
    pub body_size: u32,
}

/// TD attributes (TDX Module ABI, "TD Attributes"): how the TD was
/// configured at creation. Bits 7:0 are the TD-under-debug (TUD) group; any
/// of them set means the host can inspect the TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TdAttributes(pub u64);

impl TdAttributes {
    /// Bit 0: the TD runs in debug mode; its memory and CPU state are not
    /// protected from the host.
    pub const DEBUG: u64 = 1 << 0;
    /// Bits 7:0: the TD-under-debug group (bit 0 DEBUG, bits 7:1 reserved).
    pub const TUD_MASK: u64 = 0xFF;
    /// Bit 28: EPT violations on pending private pages are not converted to
    /// #VE in the TD.
    pub const SEPT_VE_DISABLE: u64 = 1 << 28;
    /// Bit 29: the TD may be migrated (TDX 1.5).
    pub const MIGRATABLE: u64 = 1 << 29;
    /// Bit 30: the TD may use supervisor protection keys.
    pub const PKS: u64 = 1 << 30;
    /// Bit 31: the TD may use Key Locker.
    pub const KL: u64 = 1 << 31;
    /// Bit 63: the TD may use the host's performance monitoring.
    pub const PERFMON: u64 = 1 << 63;
    /// Every bit this type names.
    pub const KNOWN: u64 = Self::TUD_MASK
        | Self::SEPT_VE_DISABLE
        | Self::MIGRATABLE
        | Self::PKS
        | Self::KL
        | Self::PERFMON;

    /// Decode the 8 little-endian bytes of a TD report's `td_attributes`.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        TdAttributes(u64::from_le_bytes(b))
    }
    /// Bit 0: the TD is debuggable.
    pub fn debug(self) -> bool {
        self.0 & Self::DEBUG != 0
    }
    /// Bits 7:0, the TD-under-debug group.
    pub fn tud(self) -> u8 {
        self.0.to_le_bytes()[0]
    }
    /// Bit 28: SEPT #VE disabled.
    pub fn sept_ve_disable(self) -> bool {
        self.0 & Self::SEPT_VE_DISABLE != 0
    }
    /// Bit 29: migratable.
    pub fn migratable(self) -> bool {
        self.0 & Self::MIGRATABLE != 0
    }
    /// Bit 30: supervisor protection keys allowed.
    pub fn pks(self) -> bool {
        self.0 & Self::PKS != 0
    }
    /// Bit 31: Key Locker allowed.
    pub fn kl(self) -> bool {
        self.0 & Self::KL != 0
    }
    /// Bit 63: performance monitoring allowed.
    pub fn perfmon(self) -> bool {
        self.0 & Self::PERFMON != 0
    }
    /// Set bits this type does not name (reserved in the ABI revisions it
    /// follows, or defined by a later one).
    pub fn unknown_bits(self) -> u64 {
        self.0 & !Self::KNOWN
    }
}

/// The TEE TCB SVN of a TD report: one security version per TCB component
/// of the TDX module, compared component by component with the
/// `tdxtcbcomponents` of Intel's TCB info. Bytes 0 and 1 identify the TDX
/// module; when the TCB info lists TDX module identities, Intel's quote
/// verification judges them against those instead (the verifier's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TeeTcbSvn(pub [u8; 16]);

impl TeeTcbSvn {
    /// All sixteen components.
    pub fn components(&self) -> &[u8; 16] {
        &self.0
    }
    /// Byte 0: the TDX module's minor SVN, compared with the `isvsvn` of the
    /// module identity in Intel's TCB info.
    pub fn tdx_module_minor_svn(&self) -> u8 {
        self.0[0]
    }
    /// Byte 1: the TDX module's major SVN; Intel's TCB info names the module
    /// identity after it (`TDX_01`, `TDX_03`, ...).
    pub fn tdx_module_major_svn(&self) -> u8 {
        self.0[1]
    }
}

/// A TD report from a TDX quote body, TD 1.0 or TD 1.5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TdReport {
    /// TD 1.0 layout (every version 4 TDX quote, version 5 body type 2).
    Td10(RawTd10Body),
    /// TD 1.5 layout (version 5 body type 3).
    Td15(RawTd15Body),
}

impl TdReport {
    /// The TD 1.0 fields, which both layouts start with.
    pub fn td10(&self) -> &RawTd10Body {
        match self {
            TdReport::Td10(b) => b,
            TdReport::Td15(b) => &b.td10,
        }
    }
    /// TEE TCB SVN.
    pub fn tee_tcb_svn(&self) -> TeeTcbSvn {
        TeeTcbSvn(self.td10().tee_tcb_svn)
    }
    /// Measurement of the TDX module.
    pub fn mrseam(&self) -> &[u8; 48] {
        &self.td10().mrseam
    }
    /// Measurement of the TDX module's signer (zero for Intel's).
    pub fn mrsignerseam(&self) -> &[u8; 48] {
        &self.td10().mrsignerseam
    }
    /// TDX module attributes.
    pub fn seam_attributes(&self) -> &[u8; 8] {
        &self.td10().seam_attributes
    }
    /// TD attributes.
    pub fn td_attributes(&self) -> TdAttributes {
        TdAttributes::from_bytes(self.td10().td_attributes)
    }
    /// XFAM, as a little-endian integer.
    pub fn xfam(&self) -> u64 {
        u64::from_le_bytes(self.td10().xfam)
    }
    /// MRTD: measurement of the TD's initial contents.
    pub fn mrtd(&self) -> &[u8; 48] {
        &self.td10().mrtd
    }
    /// MRCONFIGID.
    pub fn mrconfigid(&self) -> &[u8; 48] {
        &self.td10().mrconfigid
    }
    /// MROWNER.
    pub fn mrowner(&self) -> &[u8; 48] {
        &self.td10().mrowner
    }
    /// MROWNERCONFIG.
    pub fn mrownerconfig(&self) -> &[u8; 48] {
        &self.td10().mrownerconfig
    }
    /// RTMR 0 to 3, in order.
    pub fn rtmrs(&self) -> [&[u8; 48]; 4] {
        let b = self.td10();
        [&b.rtmr0, &b.rtmr1, &b.rtmr2, &b.rtmr3]
    }
    /// Report data.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.td10().report_data
    }
    /// TEE TCB SVN 2 (TD 1.5 only).
    pub fn tee_tcb_svn_2(&self) -> Option<TeeTcbSvn> {
        match self {
            TdReport::Td10(_) => None,
            TdReport::Td15(b) => Some(TeeTcbSvn(b.tee_tcb_svn_2)),
        }
    }
    /// MRSERVICETD (TD 1.5 only).
    pub fn mrservicetd(&self) -> Option<&[u8; 48]> {
        match self {
            TdReport::Td10(_) => None,
            TdReport::Td15(b) => Some(&b.mrservicetd),
        }
    }
}

/// An SGX enclave report: the body of an SGX quote, or the Quoting
/// Enclave's report in the signature data (whose exact bytes the PCK key
/// signs, see [`EnclaveReport::as_bytes`]).
#[derive(Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    pub(super) raw: RawEnclaveReport,
}

impl EnclaveReport {
    /// The raw layout.
    pub fn raw(&self) -> &RawEnclaveReport {
        &self.raw
    }
    /// The 384 bytes as they were in the quote.
    pub fn as_bytes(&self) -> [u8; ENCLAVE_REPORT_SIZE] {
        self.raw.to_bytes()
    }
    /// CPU SVN.
    pub fn cpusvn(&self) -> &[u8; 16] {
        &self.raw.cpusvn
    }
    /// MISCSELECT.
    pub fn miscselect(&self) -> u32 {
        u32::from_le_bytes(self.raw.miscselect)
    }
    /// Attributes, 16 bytes: flags then XFRM.
    pub fn attributes(&self) -> &[u8; 16] {
        &self.raw.attributes
    }
    /// Attribute flags (the first 8 bytes of `attributes`).
    pub fn attribute_flags(&self) -> u64 {
        let (flags, _) = self.raw.attributes.split_at(8);
        let mut b = [0u8; 8];
        b.copy_from_slice(flags);
        u64::from_le_bytes(b)
    }
    /// Attribute flag bit 1: the enclave is a debug enclave.
    pub fn debug(&self) -> bool {
        self.attribute_flags() & 0b10 != 0
    }
    /// MRENCLAVE.
    pub fn mrenclave(&self) -> &[u8; 32] {
        &self.raw.mrenclave
    }
    /// MRSIGNER.
    pub fn mrsigner(&self) -> &[u8; 32] {
        &self.raw.mrsigner
    }
    /// ISV product ID.
    pub fn isvprodid(&self) -> u16 {
        u16::from_le_bytes(self.raw.isvprodid)
    }
    /// ISV SVN.
    pub fn isvsvn(&self) -> u16 {
        u16::from_le_bytes(self.raw.isvsvn)
    }
    /// CONFIGID.
    pub fn configid(&self) -> &[u8; 64] {
        &self.raw.configid
    }
    /// CONFIGSVN.
    pub fn configsvn(&self) -> u16 {
        u16::from_le_bytes(self.raw.configsvn)
    }
    /// ISVEXTPRODID.
    pub fn isvextprodid(&self) -> &[u8; 16] {
        &self.raw.isvextprodid
    }
    /// ISVFAMILYID.
    pub fn isvfamilyid(&self) -> &[u8; 16] {
        &self.raw.isvfamilyid
    }
    /// Report data.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.raw.report_data
    }
}

impl fmt::Debug for EnclaveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnclaveReport")
            .field("mrenclave", &hex::encode(self.mrenclave()))
            .field("mrsigner", &hex::encode(self.mrsigner()))
            .field("isvprodid", &self.isvprodid())
            .field("isvsvn", &self.isvsvn())
            .finish_non_exhaustive()
    }
}

/// The body of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a quote holds exactly one body; boxing the larger one saves nothing"
)]
pub enum QuoteBody {
    /// An SGX enclave report (TEE type SGX).
    Sgx(EnclaveReport),
    /// A TD report (TEE type TDX).
    Td(TdReport),
}
