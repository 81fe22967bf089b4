//! AMD SEV-SNP attestation reports.
//!
//! Owns the fixed byte layout of the `ATTESTATION_REPORT` structure and the
//! decoding of its packed fields (guest policy, platform info, key info, TCB
//! versions, the ECDSA signature). It does **not** decide whether a report is
//! genuine: signatures, certificate chains and policy live in
//! `cocoon-verifier`.
//!
//! Layout source: *SEV Secure Nested Paging Firmware ABI Specification*
//! (AMD publication #56860), §7.3 "Attestation", table "ATTESTATION_REPORT
//! Structure" (revision 1.55 for report version 2, 1.56 for version 3 which
//! adds the CPUID identification bytes, 1.57/1.58 for version 5 which adds the
//! launch and current mitigation vectors). TCB_VERSION layouts come from the
//! same specification's "TCB_VERSION Structure" tables (Milan/Genoa, and
//! Turin with the FMC SPL byte).

use core::fmt;
use core::mem::{offset_of, size_of};

use crate::bytes::{OutOfBounds, Reader};

/// Size in bytes of every SNP attestation report version this crate knows.
pub const REPORT_SIZE: usize = 0x4A0;

/// The report versions this crate parses. Version 4 was never shipped in a
/// released ABI with a distinct layout; anything else is refused.
pub const SUPPORTED_VERSIONS: [u32; 3] = [2, 3, 5];

/// The byte layout of `ATTESTATION_REPORT`, field for field as in the ABI
/// specification table (§7.3). Every field is a byte array, so the struct has
/// alignment 1, no padding, and its size and offsets are checked at compile
/// time below: a wrong offset fails the build.
///
/// Multi-byte integers are little-endian, as everywhere in the SNP ABI.
#[repr(C)]
#[derive(Clone, PartialEq, Eq)]
pub struct RawReport {
    /// 0x000: report format version.
    pub version: [u8; 4],
    /// 0x004: guest SVN from the ID block.
    pub guest_svn: [u8; 4],
    /// 0x008: guest policy the VM was launched with.
    pub policy: [u8; 8],
    /// 0x010: family ID from the ID block.
    pub family_id: [u8; 16],
    /// 0x020: image ID from the ID block.
    pub image_id: [u8; 16],
    /// 0x030: VMPL the report was requested from.
    pub vmpl: [u8; 4],
    /// 0x034: signature algorithm (1 = ECDSA P-384 with SHA-384).
    pub signature_algo: [u8; 4],
    /// 0x038: current platform TCB.
    pub current_tcb: [u8; 8],
    /// 0x040: platform information flags.
    pub platform_info: [u8; 8],
    /// 0x048: AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY (bits 4:2).
    pub key_info: [u8; 4],
    /// 0x04C: reserved, must be zero.
    pub reserved0: [u8; 4],
    /// 0x050: guest-provided data bound into the report.
    pub report_data: [u8; 64],
    /// 0x090: launch measurement.
    pub measurement: [u8; 48],
    /// 0x0C0: data provided by the hypervisor at launch.
    pub host_data: [u8; 32],
    /// 0x0E0: SHA-384 of the ID key that signed the ID block.
    pub id_key_digest: [u8; 48],
    /// 0x110: SHA-384 of the author key that certified the ID key.
    pub author_key_digest: [u8; 48],
    /// 0x140: report ID of this guest.
    pub report_id: [u8; 32],
    /// 0x160: report ID of the guest's migration agent.
    pub report_id_ma: [u8; 32],
    /// 0x180: TCB version used to derive the VCEK that signed the report.
    pub reported_tcb: [u8; 8],
    /// 0x188: CPUID family (extended + base), version 3 and later.
    pub cpuid_fam_id: [u8; 1],
    /// 0x189: CPUID model (extended + base), version 3 and later.
    pub cpuid_mod_id: [u8; 1],
    /// 0x18A: CPUID stepping, version 3 and later.
    pub cpuid_step: [u8; 1],
    /// 0x18B: reserved.
    pub reserved1: [u8; 21],
    /// 0x1A0: chip identifier (zero when MASK_CHIP_ID is set or a VLEK signs).
    pub chip_id: [u8; 64],
    /// 0x1E0: committed TCB.
    pub committed_tcb: [u8; 8],
    /// 0x1E8: current firmware build, minor, major, reserved.
    pub current_version: [u8; 4],
    /// 0x1EC: committed firmware build, minor, major, reserved.
    pub committed_version: [u8; 4],
    /// 0x1F0: TCB at the time the guest was launched or imported.
    pub launch_tcb: [u8; 8],
    /// 0x1F8: launch mitigation vector, version 5 and later.
    pub launch_mit_vector: [u8; 8],
    /// 0x200: current mitigation vector, version 5 and later.
    pub current_mit_vector: [u8; 8],
    /// 0x208: reserved.
    pub reserved2: [u8; 0x98],
    /// 0x2A0: signature over bytes 0x000..0x2A0 (see [`Signature`]).
    pub signature: [u8; 0x200],
}

// Compile-time checks that the struct mirrors the specification table.
const _: () = {
    assert!(size_of::<RawReport>() == REPORT_SIZE);
    assert!(offset_of!(RawReport, vmpl) == 0x30);
    assert!(offset_of!(RawReport, key_info) == 0x48);
    assert!(offset_of!(RawReport, report_data) == 0x50);
    assert!(offset_of!(RawReport, measurement) == 0x90);
    assert!(offset_of!(RawReport, host_data) == 0xC0);
    assert!(offset_of!(RawReport, id_key_digest) == 0xE0);
    assert!(offset_of!(RawReport, author_key_digest) == 0x110);
    assert!(offset_of!(RawReport, report_id) == 0x140);
    assert!(offset_of!(RawReport, reported_tcb) == 0x180);
    assert!(offset_of!(RawReport, cpuid_fam_id) == 0x188);
    assert!(offset_of!(RawReport, chip_id) == 0x1A0);
    assert!(offset_of!(RawReport, committed_tcb) == 0x1E0);
    assert!(offset_of!(RawReport, current_version) == 0x1E8);
    assert!(offset_of!(RawReport, launch_tcb) == 0x1F0);
    assert!(offset_of!(RawReport, launch_mit_vector) == 0x1F8);
    assert!(offset_of!(RawReport, current_mit_vector) == 0x200);
    assert!(offset_of!(RawReport, signature) == SIGNED_LEN);
};

/// The report signature covers bytes `0x000..0x2A0`.
pub const SIGNED_LEN: usize = 0x2A0;

/// Byte ranges of each named field, for tools (mutation tests, `explain`)
/// that need to address a field in the raw bytes. Derived from the layout
/// struct, so it cannot drift from it.
pub const FIELD_RANGES: &[(&str, usize, usize)] = &[
    ("version", offset_of!(RawReport, version), 4),
    ("guest_svn", offset_of!(RawReport, guest_svn), 4),
    ("policy", offset_of!(RawReport, policy), 8),
    ("family_id", offset_of!(RawReport, family_id), 16),
    ("image_id", offset_of!(RawReport, image_id), 16),
    ("vmpl", offset_of!(RawReport, vmpl), 4),
    ("signature_algo", offset_of!(RawReport, signature_algo), 4),
    ("current_tcb", offset_of!(RawReport, current_tcb), 8),
    ("platform_info", offset_of!(RawReport, platform_info), 8),
    ("key_info", offset_of!(RawReport, key_info), 4),
    ("reserved0", offset_of!(RawReport, reserved0), 4),
    ("report_data", offset_of!(RawReport, report_data), 64),
    ("measurement", offset_of!(RawReport, measurement), 48),
    ("host_data", offset_of!(RawReport, host_data), 32),
    ("id_key_digest", offset_of!(RawReport, id_key_digest), 48),
    (
        "author_key_digest",
        offset_of!(RawReport, author_key_digest),
        48,
    ),
    ("report_id", offset_of!(RawReport, report_id), 32),
    ("report_id_ma", offset_of!(RawReport, report_id_ma), 32),
    ("reported_tcb", offset_of!(RawReport, reported_tcb), 8),
    ("cpuid_fam_id", offset_of!(RawReport, cpuid_fam_id), 1),
    ("cpuid_mod_id", offset_of!(RawReport, cpuid_mod_id), 1),
    ("cpuid_step", offset_of!(RawReport, cpuid_step), 1),
    ("reserved1", offset_of!(RawReport, reserved1), 21),
    ("chip_id", offset_of!(RawReport, chip_id), 64),
    ("committed_tcb", offset_of!(RawReport, committed_tcb), 8),
    ("current_version", offset_of!(RawReport, current_version), 4),
    (
        "committed_version",
        offset_of!(RawReport, committed_version),
        4,
    ),
    ("launch_tcb", offset_of!(RawReport, launch_tcb), 8),
    (
        "launch_mit_vector",
        offset_of!(RawReport, launch_mit_vector),
        8,
    ),
    (
        "current_mit_vector",
        offset_of!(RawReport, current_mit_vector),
        8,
    ),
    ("reserved2", offset_of!(RawReport, reserved2), 0x98),
    ("signature", offset_of!(RawReport, signature), 0x200),
];

/// Why a byte string is not an SNP attestation report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input is not exactly [`REPORT_SIZE`] bytes long.
    #[error("an SNP attestation report is exactly {expected} bytes, got {got}")]
    WrongLength {
        /// Required length.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The version field names a layout this crate does not know.
    #[error("SNP report version {0} is not supported (supported: 2, 3, 5)")]
    UnsupportedVersion(u32),
    /// Hex text that does not spell one report.
    #[error("hex text of an SNP report: {0}")]
    Hex(String),
}

/// Most bytes of hex text [`report_from_file`] reads (a report's digits with
/// generous room for line breaks).
pub const MAX_REPORT_TEXT: usize = 8 * REPORT_SIZE;

/// The raw report in a file as tools store it: the [`REPORT_SIZE`] bytes
/// themselves, or hex text of them (several SDKs write reports that way):
/// hex digits in either case, optionally after `0x`, with ASCII whitespace
/// anywhere (line breaks) ignored. Any other input is returned unchanged,
/// for [`SnpReport::parse`] to refuse with its length.
pub fn report_from_file(bytes: &[u8]) -> Result<Vec<u8>, ParseError> {
    if bytes.len() == REPORT_SIZE {
        return Ok(bytes.to_vec());
    }
    let text = bytes.trim_ascii();
    let text = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
        .unwrap_or(text);
    let is_text = !text.is_empty()
        && text
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    if !is_text {
        return Ok(bytes.to_vec());
    }
    if bytes.len() > MAX_REPORT_TEXT {
        return Err(ParseError::Hex(format!(
            "{} bytes of text, more than the {MAX_REPORT_TEXT} read",
            bytes.len()
        )));
    }
    let digits: Vec<u8> = text.iter().copied().filter(u8::is_ascii_hexdigit).collect();
    if digits.len() != 2 * REPORT_SIZE {
        return Err(ParseError::Hex(format!(
            "{} hex digits, a report is {} ({REPORT_SIZE} bytes)",
            digits.len(),
            2 * REPORT_SIZE
        )));
    }
    hex::decode(&digits).map_err(|e| ParseError::Hex(e.to_string()))
}

/// AMD EPYC product lines whose SNP keys and TCB layouts differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Product {
    /// 3rd-generation EPYC (family 19h, models 00h-0Fh).
    Milan,
    /// 4th-generation EPYC, including Bergamo and Siena (family 19h, models 10h-1Fh and A0h-AFh).
    Genoa,
    /// 5th-generation EPYC (family 1Ah, models 00h-11h).
    Turin,
}

impl Product {
    /// All known products.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// Identify the product from the CPUID family and model that a version
    /// 3+ report carries. Unknown combinations give `None`.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }

    /// The product name as AMD's key distribution service spells it.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// How this product packs its TCB_VERSION.
    pub fn tcb_layout(self) -> TcbLayout {
        match self {
            Product::Milan | Product::Genoa => TcbLayout::MilanGenoa,
            Product::Turin => TcbLayout::Turin,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The two TCB_VERSION encodings of the SNP ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcbLayout {
    /// Milan and Genoa: bootloader@0, tee@1, reserved 2..6, snp@6, microcode@7.
    MilanGenoa,
    /// Turin: fmc@0, bootloader@1, tee@2, snp@3, reserved 4..7, microcode@7.
    Turin,
}

/// A packed TCB_VERSION value as it appears in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcbVersion(pub u64);

/// The security patch levels every product's TCB_VERSION has ("TCB_VERSION
/// Structure" tables), in the order AMD lists them: (the key policies,
/// `Display` and KDS queries spell it with, the name messages use). The
/// fields of [`TcbParts`] and every list of them (a policy's TOML keys, a
/// shortfall's name) come from here; only Turin's FMC level is apart.
pub const TCB_SPLS: [(&str, &str); 4] = [
    ("bootloader", "bootloader"),
    ("tee", "TEE"),
    ("snp", "SNP"),
    ("microcode", "microcode"),
];

/// The security patch levels of a TCB_VERSION, decoded for one product; or,
/// with another `Fmc`, reference levels over them (the verifier's minimum
/// TCB is a `TcbParts<Check<u8>>`), so the parts are named once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcbParts<Fmc = Option<u8>> {
    /// FMC SPL (Turin and later only).
    pub fmc: Fmc,
    /// Bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
}

/// What a [`TcbParts`] holds in its FMC slot: a decoded level that only
/// Turin has (`Option<u8>`), or a reference level that may be skipped.
pub trait FmcLevel {
    /// The level to compare, if there is one.
    fn level(&self) -> Option<u8>;
    /// Write it for `Display`, with a trailing space (`"fmc=1 "`), or
    /// nothing when there is nothing to say.
    fn write_fmc(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl FmcLevel for Option<u8> {
    fn level(&self) -> Option<u8> {
        *self
    }
    fn write_fmc(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Some(fmc) => write!(f, "fmc={fmc} "),
            None => Ok(()),
        }
    }
}

impl<Fmc> TcbParts<Fmc> {
    /// The levels of [`TCB_SPLS`], in its order.
    pub fn spls(&self) -> [u8; 4] {
        [self.bootloader, self.tee, self.snp, self.microcode]
    }

    /// Levels from an FMC slot and the levels of [`TCB_SPLS`], in its order.
    pub fn from_spls(fmc: Fmc, [bootloader, tee, snp, microcode]: [u8; 4]) -> Self {
        TcbParts {
            fmc,
            bootloader,
            tee,
            snp,
            microcode,
        }
    }

    /// The same levels with the FMC slot mapped.
    pub fn map_fmc<G>(self, f: impl FnOnce(Fmc) -> G) -> TcbParts<G> {
        let spls = self.spls();
        TcbParts::from_spls(f(self.fmc), spls)
    }
}

impl<Fmc: FmcLevel> TcbParts<Fmc> {
    /// Read as minimum levels: the parts of `have` below them, as `(name,
    /// have, need)`. FMC is compared only where both sides have a level.
    pub fn shortfalls(&self, have: &TcbParts) -> Vec<(&'static str, u8, u8)> {
        let mut out = Vec::new();
        if let (Some(need), Some(h)) = (self.fmc.level(), have.fmc) {
            if h < need {
                out.push(("FMC", h, need));
            }
        }
        for (((_, name), h), need) in TCB_SPLS.iter().zip(have.spls()).zip(self.spls()) {
            if h < need {
                out.push((*name, h, need));
            }
        }
        out
    }
}

impl TcbVersion {
    /// Decode under the given layout.
    pub fn decode(self, layout: TcbLayout) -> TcbParts {
        let b = self.0.to_le_bytes();
        match layout {
            TcbLayout::MilanGenoa => TcbParts {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
            TcbLayout::Turin => TcbParts {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }

    /// The bytes this layout reserves (must be zero), as a mask over the u64.
    pub fn reserved_mask(layout: TcbLayout) -> u64 {
        match layout {
            TcbLayout::MilanGenoa => 0x0000_FFFF_FFFF_0000,
            TcbLayout::Turin => 0x00FF_FFFF_0000_0000,
        }
    }
}

impl<Fmc: FmcLevel> fmt::Display for TcbParts<Fmc> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmc.write_fmc(f)?;
        for (i, ((key, _), level)) in TCB_SPLS.iter().zip(self.spls()).enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{key}={level}")?;
        }
        Ok(())
    }
}

/// The guest policy (ABI §4.3 "Guest Policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Bits 63:26 are reserved and must be zero.
    pub const RESERVED_MASK: u64 = !((1 << 26) - 1);
    /// Bit 17 is reserved and must be one.
    pub const MUST_BE_ONE: u64 = 1 << 17;

    fn bit(self, n: u32) -> bool {
        self.0 >> n & 1 == 1
    }
    /// Minimum ABI minor version required to launch.
    pub fn abi_minor(self) -> u8 {
        self.0.to_le_bytes()[0]
    }
    /// Minimum ABI major version required to launch.
    pub fn abi_major(self) -> u8 {
        self.0.to_le_bytes()[1]
    }
    /// Bit 16: SMT may be enabled on the host.
    pub fn smt_allowed(self) -> bool {
        self.bit(16)
    }
    /// Bit 18: a migration agent may be associated with the guest.
    pub fn migrate_ma(self) -> bool {
        self.bit(18)
    }
    /// Bit 19: the host may debug the guest (read and write its memory).
    pub fn debug_allowed(self) -> bool {
        self.bit(19)
    }
    /// Bit 20: the guest may run on a single socket only.
    pub fn single_socket(self) -> bool {
        self.bit(20)
    }
    /// Bit 21: CXL may be populated with guest memory.
    pub fn cxl_allowed(self) -> bool {
        self.bit(21)
    }
    /// Bit 22: AES-256-XTS memory encryption required.
    pub fn mem_aes_256_xts(self) -> bool {
        self.bit(22)
    }
    /// Bit 23: running average power limit must be disabled.
    pub fn rapl_disabled(self) -> bool {
        self.bit(23)
    }
    /// Bit 24: ciphertext hiding must be enabled.
    pub fn ciphertext_hiding(self) -> bool {
        self.bit(24)
    }
    /// Bit 25: guest page swapping is disabled.
    pub fn page_swap_disabled(self) -> bool {
        self.bit(25)
    }
}

/// Platform information flags (ABI §7.3, PLATFORM_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlatformInfo(pub u64);

impl PlatformInfo {
    /// Bits 63:8 are reserved.
    pub const RESERVED_MASK: u64 = !0xFF;

    fn bit(self, n: u32) -> bool {
        self.0 >> n & 1 == 1
    }
    /// Bit 0: SMT is enabled in the system.
    pub fn smt_enabled(self) -> bool {
        self.bit(0)
    }
    /// Bit 1: transparent SME is enabled.
    pub fn tsme_enabled(self) -> bool {
        self.bit(1)
    }
    /// Bit 2: the platform uses ECC memory.
    pub fn ecc_enabled(self) -> bool {
        self.bit(2)
    }
    /// Bit 3: RAPL is disabled.
    pub fn rapl_disabled(self) -> bool {
        self.bit(3)
    }
    /// Bit 4: ciphertext hiding is enabled.
    pub fn ciphertext_hiding_enabled(self) -> bool {
        self.bit(4)
    }
    /// Bit 5: the memory alias check has completed.
    pub fn alias_check_complete(self) -> bool {
        self.bit(5)
    }
    /// Bit 7: SEV-TIO is enabled.
    pub fn tio_enabled(self) -> bool {
        self.bit(7)
    }
}

/// Which key signed the report (ABI §7.3, SIGNING_KEY bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key (per chip, per TCB).
    Vcek,
    /// Versioned Loaded Endorsement Key (per cloud provider).
    Vlek,
    /// No key: the report is unsigned.
    None,
    /// A value the specification reserves.
    Reserved(u8),
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningKey::Vcek => f.write_str("VCEK"),
            SigningKey::Vlek => f.write_str("VLEK"),
            SigningKey::None => f.write_str("none"),
            SigningKey::Reserved(v) => write!(f, "reserved({v})"),
        }
    }
}

/// The KEY_INFO word at 0x48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyInfo(pub u32);

impl KeyInfo {
    /// Bits 31:5 are reserved.
    pub const RESERVED_MASK: u32 = !0x1F;
    /// AUTHOR_KEY_EN: the ID block was certified by an author key.
    pub fn author_key_en(self) -> bool {
        self.0 & 1 == 1
    }
    /// MASK_CHIP_KEY: the chip ID was masked (zeroed) in the report.
    pub fn mask_chip_key(self) -> bool {
        self.0 >> 1 & 1 == 1
    }
    /// The key that signed the report.
    pub fn signing_key(self) -> SigningKey {
        match (self.0 >> 2 & 0x7) as u8 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            v => SigningKey::Reserved(v),
        }
    }
}

/// A firmware version triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} build {}", self.major, self.minor, self.build)
    }
}

/// Signature algorithm 1: ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// The report signature (ABI appendix "Signature Formats", ECDSA P-384):
/// R and S each as 72 bytes, little-endian, zero-extended from 48 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    /// Little-endian R component.
    pub r: [u8; 72],
    /// Little-endian S component.
    pub s: [u8; 72],
    /// Reserved tail of the signature area (should be zero).
    pub reserved: [u8; 368],
}

// The signature area is exactly the three parts, in order.
const _: () = assert!(size_of::<Signature>() == size_of::<[u8; 0x200]>());

impl Signature {
    /// The signature as big-endian `r || s`, 48 bytes each, the fixed form
    /// ECDSA libraries take. `None` when either component does not fit in 48
    /// bytes (its high 24 bytes are not zero): such a value is no P-384 scalar.
    pub fn to_p384_fixed(&self) -> Option<[u8; 96]> {
        let mut out = [0u8; 96];
        for (part, dst) in [(&self.r, 0usize), (&self.s, 48usize)] {
            let (low, high) = part.split_at(48);
            if high.iter().any(|b| *b != 0) {
                return None;
            }
            for (i, b) in low.iter().rev().enumerate() {
                out[dst + i] = *b;
            }
        }
        Some(out)
    }
}

impl RawReport {
    /// Read the fields in table order. The caller checked the length, so
    /// this cannot run short; it still never panics.
    fn read(r: &mut Reader<'_>) -> Result<RawReport, OutOfBounds> {
        const WHAT: &str = "SNP report";
        Ok(RawReport {
            version: r.array(WHAT)?,
            guest_svn: r.array(WHAT)?,
            policy: r.array(WHAT)?,
            family_id: r.array(WHAT)?,
            image_id: r.array(WHAT)?,
            vmpl: r.array(WHAT)?,
            signature_algo: r.array(WHAT)?,
            current_tcb: r.array(WHAT)?,
            platform_info: r.array(WHAT)?,
            key_info: r.array(WHAT)?,
            reserved0: r.array(WHAT)?,
            report_data: r.array(WHAT)?,
            measurement: r.array(WHAT)?,
            host_data: r.array(WHAT)?,
            id_key_digest: r.array(WHAT)?,
            author_key_digest: r.array(WHAT)?,
            report_id: r.array(WHAT)?,
            report_id_ma: r.array(WHAT)?,
            reported_tcb: r.array(WHAT)?,
            cpuid_fam_id: r.array(WHAT)?,
            cpuid_mod_id: r.array(WHAT)?,
            cpuid_step: r.array(WHAT)?,
            reserved1: r.array(WHAT)?,
            chip_id: r.array(WHAT)?,
            committed_tcb: r.array(WHAT)?,
            current_version: r.array(WHAT)?,
            committed_version: r.array(WHAT)?,
            launch_tcb: r.array(WHAT)?,
            launch_mit_vector: r.array(WHAT)?,
            current_mit_vector: r.array(WHAT)?,
            reserved2: r.array(WHAT)?,
            signature: r.array(WHAT)?,
        })
    }
}

/// A parsed SNP attestation report. Holding one says nothing about whether
/// it is genuine; only the verifier's proof types say that.
#[derive(Clone, PartialEq, Eq)]
pub struct SnpReport {
    bytes: Box<[u8; REPORT_SIZE]>,
    raw: RawReport,
}

fn u32_le(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}
fn u64_le(b: [u8; 8]) -> u64 {
    u64::from_le_bytes(b)
}

impl SnpReport {
    /// Parse a report from untrusted bytes: exactly [`REPORT_SIZE`] bytes and
    /// a known version. Field semantics are judged by the verifier.
    pub fn parse(bytes: &[u8]) -> Result<SnpReport, ParseError> {
        let Ok(fixed) = <[u8; REPORT_SIZE]>::try_from(bytes) else {
            return Err(ParseError::WrongLength {
                expected: REPORT_SIZE,
                got: bytes.len(),
            });
        };
        let raw =
            RawReport::read(&mut Reader::new(&fixed)).map_err(|_| ParseError::WrongLength {
                expected: REPORT_SIZE,
                got: bytes.len(),
            })?;
        let version = u32_le(raw.version);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(ParseError::UnsupportedVersion(version));
        }
        Ok(SnpReport {
            bytes: Box::new(fixed),
            raw,
        })
    }

    /// The raw layout.
    pub fn raw(&self) -> &RawReport {
        &self.raw
    }
    /// The report as it was received.
    pub fn as_bytes(&self) -> &[u8; REPORT_SIZE] {
        &self.bytes
    }
    /// The bytes the signature covers (`0x000..0x2A0`).
    pub fn signed_bytes(&self) -> &[u8] {
        let (signed, _) = self.bytes.split_at(SIGNED_LEN);
        signed
    }
    /// Report format version (2, 3 or 5).
    pub fn version(&self) -> u32 {
        u32_le(self.raw.version)
    }
    /// Guest SVN.
    pub fn guest_svn(&self) -> u32 {
        u32_le(self.raw.guest_svn)
    }
    /// Guest policy.
    pub fn policy(&self) -> GuestPolicy {
        GuestPolicy(u64_le(self.raw.policy))
    }
    /// Family ID from the ID block.
    pub fn family_id(&self) -> &[u8; 16] {
        &self.raw.family_id
    }
    /// Image ID from the ID block.
    pub fn image_id(&self) -> &[u8; 16] {
        &self.raw.image_id
    }
    /// VMPL the report was requested from.
    pub fn vmpl(&self) -> u32 {
        u32_le(self.raw.vmpl)
    }
    /// Signature algorithm code.
    pub fn signature_algo(&self) -> u32 {
        u32_le(self.raw.signature_algo)
    }
    /// Current TCB.
    pub fn current_tcb(&self) -> TcbVersion {
        TcbVersion(u64_le(self.raw.current_tcb))
    }
    /// Platform info.
    pub fn platform_info(&self) -> PlatformInfo {
        PlatformInfo(u64_le(self.raw.platform_info))
    }
    /// Key info word.
    pub fn key_info(&self) -> KeyInfo {
        KeyInfo(u32_le(self.raw.key_info))
    }
    /// Guest-provided report data.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.raw.report_data
    }
    /// Launch measurement.
    pub fn measurement(&self) -> &[u8; 48] {
        &self.raw.measurement
    }
    /// Host data.
    pub fn host_data(&self) -> &[u8; 32] {
        &self.raw.host_data
    }
    /// ID key digest.
    pub fn id_key_digest(&self) -> &[u8; 48] {
        &self.raw.id_key_digest
    }
    /// Author key digest.
    pub fn author_key_digest(&self) -> &[u8; 48] {
        &self.raw.author_key_digest
    }
    /// Report ID.
    pub fn report_id(&self) -> &[u8; 32] {
        &self.raw.report_id
    }
    /// Report ID of the migration agent.
    pub fn report_id_ma(&self) -> &[u8; 32] {
        &self.raw.report_id_ma
    }
    /// The TCB the signing key was derived for.
    pub fn reported_tcb(&self) -> TcbVersion {
        TcbVersion(u64_le(self.raw.reported_tcb))
    }
    /// CPUID family, model and stepping (version 3 and later).
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then_some((
            self.raw.cpuid_fam_id[0],
            self.raw.cpuid_mod_id[0],
            self.raw.cpuid_step[0],
        ))
    }
    /// The product the CPUID bytes name (version 3 and later).
    pub fn product_from_cpuid(&self) -> Option<Product> {
        self.cpuid().and_then(|(f, m, _)| Product::from_cpuid(f, m))
    }
    /// Chip ID.
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.raw.chip_id
    }
    /// Committed TCB.
    pub fn committed_tcb(&self) -> TcbVersion {
        TcbVersion(u64_le(self.raw.committed_tcb))
    }
    /// Current firmware version.
    pub fn current_firmware(&self) -> FirmwareVersion {
        let [build, minor, major, _] = self.raw.current_version;
        FirmwareVersion {
            major,
            minor,
            build,
        }
    }
    /// Committed firmware version.
    pub fn committed_firmware(&self) -> FirmwareVersion {
        let [build, minor, major, _] = self.raw.committed_version;
        FirmwareVersion {
            major,
            minor,
            build,
        }
    }
    /// Launch TCB.
    pub fn launch_tcb(&self) -> TcbVersion {
        TcbVersion(u64_le(self.raw.launch_tcb))
    }
    /// Launch mitigation vector (version 5 and later).
    pub fn launch_mit_vector(&self) -> Option<u64> {
        (self.version() >= 5).then(|| u64_le(self.raw.launch_mit_vector))
    }
    /// Current mitigation vector (version 5 and later).
    pub fn current_mit_vector(&self) -> Option<u64> {
        (self.version() >= 5).then(|| u64_le(self.raw.current_mit_vector))
    }
    /// The signature, split into its components.
    pub fn signature(&self) -> Signature {
        // The parts add up to the signature area (asserted at compile
        // time), so no read runs short; zeros rather than a panic keep this
        // total regardless.
        let mut r = Reader::new(&self.raw.signature);
        Signature {
            r: r.array("signature r").unwrap_or([0; 72]),
            s: r.array("signature s").unwrap_or([0; 72]),
            reserved: r.array("signature reserved").unwrap_or([0; 368]),
        }
    }
    /// Names of reserved areas that are not zero. The verifier rejects such
    /// reports: a value the specification does not define is never trusted.
    pub fn nonzero_reserved_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.raw.reserved0 != [0; 4] {
            out.push("reserved0 (0x4C)");
        }
        if self.raw.reserved1 != [0; 21] {
            out.push("reserved1 (0x18B)");
        }
        if self.version() < 3
            && (self.raw.cpuid_fam_id[0] | self.raw.cpuid_mod_id[0] | self.raw.cpuid_step[0]) != 0
        {
            out.push("cpuid bytes (0x188, reserved before version 3)");
        }
        if self.version() < 5
            && (self.raw.launch_mit_vector != [0; 8] || self.raw.current_mit_vector != [0; 8])
        {
            out.push("mitigation vectors (0x1F8, reserved before version 5)");
        }
        if self.raw.reserved2.iter().any(|b| *b != 0) {
            out.push("reserved2 (0x208)");
        }
        out
    }
}

impl fmt::Debug for SnpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnpReport")
            .field("version", &self.version())
            .field("measurement", &hex::encode(self.measurement()))
            .field("report_data", &hex::encode(self.report_data()))
            .field("policy", &format_args!("{:#018x}", self.policy().0))
            .field("vmpl", &self.vmpl())
            .finish_non_exhaustive()
    }
}

/// A person-readable rendering of every field, for `cocoon-verify explain`.
/// TCB values are decoded with `layout` (pass the product's layout; for a
/// version 2 report the product is not in the report itself).
pub struct Explain<'a> {
    /// The report.
    pub report: &'a SnpReport,
    /// How to decode TCB values.
    pub layout: TcbLayout,
}

impl fmt::Display for Explain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        let p = r.policy();
        let k = r.key_info();
        let pi = r.platform_info();
        writeln!(f, "SEV-SNP attestation report, version {}", r.version())?;
        writeln!(f, "  UNVERIFIED: this only shows what the bytes say; use `cocoon-verify snp` to judge them")?;
        writeln!(f, "  measurement        {}", hex::encode(r.measurement()))?;
        writeln!(f, "  report_data        {}", hex::encode(r.report_data()))?;
        writeln!(f, "  host_data          {}", hex::encode(r.host_data()))?;
        writeln!(
            f,
            "  policy             {:#018x} (abi {}.{}, smt {}, migration agent {}, debug {}, single socket {})",
            p.0,
            p.abi_major(),
            p.abi_minor(),
            allowed(p.smt_allowed()),
            allowed(p.migrate_ma()),
            allowed(p.debug_allowed()),
            if p.single_socket() { "required" } else { "not required" }
        )?;
        writeln!(f, "  vmpl               {}", r.vmpl())?;
        writeln!(f, "  guest_svn          {}", r.guest_svn())?;
        writeln!(f, "  signing key        {}", k.signing_key())?;
        writeln!(
            f,
            "  author key         {}, chip id {}",
            if k.author_key_en() {
                "enabled"
            } else {
                "not used"
            },
            if k.mask_chip_key() {
                "masked"
            } else {
                "present"
            }
        )?;
        writeln!(
            f,
            "  platform_info      {:#018x} (smt {}, tsme {}, ecc {}, ciphertext hiding {})",
            pi.0,
            on(pi.smt_enabled()),
            on(pi.tsme_enabled()),
            on(pi.ecc_enabled()),
            on(pi.ciphertext_hiding_enabled())
        )?;
        if let Some((fam, model, step)) = r.cpuid() {
            let product = Product::from_cpuid(fam, model).map_or("unknown product", Product::name);
            writeln!(
                f,
                "  cpuid              family {fam:#04x} model {model:#04x} stepping {step} ({product})"
            )?;
        }
        for (name, tcb) in [
            ("reported_tcb", r.reported_tcb()),
            ("current_tcb", r.current_tcb()),
            ("committed_tcb", r.committed_tcb()),
            ("launch_tcb", r.launch_tcb()),
        ] {
            writeln!(
                f,
                "  {name:<18} {:#018x} ({})",
                tcb.0,
                tcb.decode(self.layout)
            )?;
        }
        writeln!(f, "  current firmware   {}", r.current_firmware())?;
        writeln!(f, "  committed firmware {}", r.committed_firmware())?;
        if let (Some(l), Some(c)) = (r.launch_mit_vector(), r.current_mit_vector()) {
            writeln!(f, "  mitigation vectors launch {l:#018x} current {c:#018x}")?;
        }
        writeln!(f, "  family_id          {}", hex::encode(r.family_id()))?;
        writeln!(f, "  image_id           {}", hex::encode(r.image_id()))?;
        writeln!(f, "  id_key_digest      {}", hex::encode(r.id_key_digest()))?;
        writeln!(
            f,
            "  author_key_digest  {}",
            hex::encode(r.author_key_digest())
        )?;
        writeln!(f, "  report_id          {}", hex::encode(r.report_id()))?;
        writeln!(f, "  chip_id            {}", hex::encode(r.chip_id()))?;
        write!(f, "  signature_algo     {}", r.signature_algo())?;
        if r.signature_algo() == SIG_ALGO_ECDSA_P384_SHA384 {
            write!(f, " (ECDSA P-384 with SHA-384)")?;
        }
        Ok(())
    }
}

fn allowed(b: bool) -> &'static str {
    if b {
        "allowed"
    } else {
        "forbidden"
    }
}
fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_SIZE];
        b[..4].copy_from_slice(&version.to_le_bytes());
        b
    }

    #[test]
    fn length_and_version_are_checked() {
        assert!(SnpReport::parse(&sample(2)).is_ok());
        assert_eq!(
            SnpReport::parse(&sample(2)[..100]),
            Err(ParseError::WrongLength {
                expected: REPORT_SIZE,
                got: 100
            })
        );
        assert_eq!(
            SnpReport::parse(&sample(4)),
            Err(ParseError::UnsupportedVersion(4))
        );
        assert_eq!(
            SnpReport::parse(&[]).unwrap_err().to_string(),
            "an SNP attestation report is exactly 1184 bytes, got 0"
        );
    }

    #[test]
    fn tcb_layouts_decode_per_product() {
        let t = TcbVersion(0x5419_0000_0000_000a);
        assert_eq!(
            t.decode(TcbLayout::MilanGenoa),
            TcbParts {
                fmc: None,
                bootloader: 10,
                tee: 0,
                snp: 25,
                microcode: 84
            }
        );
        let turin = TcbVersion(u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 9]));
        assert_eq!(
            turin.decode(TcbLayout::Turin),
            TcbParts {
                fmc: Some(1),
                bootloader: 2,
                tee: 3,
                snp: 4,
                microcode: 9
            }
        );
    }

    #[test]
    fn signature_components_must_fit_p384() {
        let mut b = sample(2);
        b[SIGNED_LEN] = 7; // r least significant byte
        b[SIGNED_LEN + 72 + 47] = 9; // s most significant byte
        let r = SnpReport::parse(&b).unwrap();
        let fixed = r.signature().to_p384_fixed().unwrap();
        assert_eq!(fixed[47], 7);
        assert_eq!(fixed[48], 9);
        b[SIGNED_LEN + 60] = 1; // beyond 48 bytes of r
        let r = SnpReport::parse(&b).unwrap();
        assert!(r.signature().to_p384_fixed().is_none());
    }

    #[test]
    fn reports_are_read_as_bytes_or_hex_text() {
        let mut raw = sample(2);
        raw[0x50] = 0xAB;
        assert_eq!(report_from_file(&raw).unwrap(), raw);
        let text = hex::encode(&raw);
        assert_eq!(report_from_file(text.as_bytes()).unwrap(), raw);
        let upper = format!("0X{}\n", text.to_uppercase());
        assert_eq!(report_from_file(upper.as_bytes()).unwrap(), raw);
        // Wrapped at 64 columns, CRLF.
        let wrapped: String = text
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(report_from_file(wrapped.as_bytes()).unwrap(), raw);
        // Hex text of another length, or an odd digit count, is an error.
        assert!(matches!(
            report_from_file(&text.as_bytes()[..200]),
            Err(ParseError::Hex(_))
        ));
        assert!(matches!(
            report_from_file(format!("{text}0").as_bytes()),
            Err(ParseError::Hex(_))
        ));
        // Oversized text is refused before it is scanned into digits.
        assert!(matches!(
            report_from_file(
                &vec![b' '; MAX_REPORT_TEXT]
                    .iter()
                    .chain(text.as_bytes())
                    .copied()
                    .collect::<Vec<u8>>()
            ),
            Err(ParseError::Hex(_))
        ));
        // Anything else passes through for the parser to refuse by length.
        assert_eq!(report_from_file(&raw[..100]).unwrap(), &raw[..100]);
        assert_eq!(report_from_file(b"").unwrap(), b"");
        assert_eq!(report_from_file(b"xyz").unwrap(), b"xyz");
    }

    #[test]
    fn field_ranges_tile_the_report() {
        let mut next = 0;
        for (name, off, len) in FIELD_RANGES {
            assert_eq!(*off, next, "field {name} does not follow its predecessor");
            next = off + len;
        }
        assert_eq!(next, REPORT_SIZE);
    }
}
