//! GPU attestation evidence for the Cocoon enclave: the SPDM measurement
//! report and the attestation certificate chain of every NVIDIA GPU in the
//! confidential VM, asked for with a caller-chosen nonce.
//!
//! # Providers
//!
//! * [`NvmlProvider`] — the real one. It `dlopen`s (with `libloading`)
//!   NVIDIA's driver library, `libnvidia-ml.so.1` (NVML), or a path given
//!   explicitly, and asks the driver. The driver relays an SPDM `GET_MEASUREMENTS` request carrying
//!   the nonce to the GPU, which signs its answer with its device key.
//! * [`RecordedProvider`] — serves evidence recorded earlier, from a file in
//!   the format NVIDIA's nvtrust tools write. It is for tests and demos on
//!   machines without a GPU: its [`name`](GpuEvidenceProvider::name) says
//!   `recorded evidence (NOT LIVE)`, and it refuses any nonce other than the
//!   recorded one, since it cannot produce a fresh signature.
//!
//! # NVML calls, in order
//!
//! [`NvmlProvider::open`] loads the library and resolves every symbol below
//! up front, so that a driver that lacks one fails at start, not at the first
//! attestation. Each [`collect`](GpuEvidenceProvider::collect) then makes, under a
//! lock (one collection at a time per provider):
//!
//! 1. `nvmlInit_v2`
//! 2. `nvmlSystemGetConfComputeState` — environment, CC feature, dev-tools
//!    mode; reported in [`GpuEvidence`], never hidden
//! 3. `nvmlSystemGetDriverVersion`
//! 4. `nvmlDeviceGetCount_v2`
//! 5. for each index: `nvmlDeviceGetHandleByIndex_v2`,
//!    `nvmlDeviceGetArchitecture`, `nvmlDeviceGetVbiosVersion`,
//!    `nvmlDeviceGetConfComputeGpuCertificate`,
//!    `nvmlDeviceGetConfComputeGpuAttestationReport` (the nonce goes in the
//!    struct's `nonce` field)
//! 6. `nvmlShutdown` (also when a step above failed)
//!
//! `nvmlErrorString` is called only to word an error.
//!
//! # What is trusted
//!
//! Nothing here is trusted by the party that matters, the client: this crate
//! only carries bytes. The report's signature, the certificate chain up to
//! NVIDIA's root, the nonce and the measurements are checked by the client's
//! verifier. A compromised host or driver can at worst make collection fail
//! or hand over evidence that the client then rejects.
//!
//! Inside the enclave, `libnvidia-ml` is code this process runs (part of
//! the measured guest image), so its behaviour is trusted as far as any
//! library's is. What it returns is still checked before use, against bugs
//! and ABI mismatches (a driver built against another `nvml.h`): every
//! size is compared with the buffer it describes and refused (never
//! clamped) when larger; the device count is capped; version strings must
//! be NUL-terminated UTF-8 inside their buffer. The one structural check on
//! a report — that it begins with an SPDM `GET_MEASUREMENTS` request
//! carrying the caller's nonce — only turns a driver that ignored the nonce
//! into a clear error early; it is not a security check.
//!
//! # Not covered
//!
//! * NVSwitch evidence (LS10, protected-PCIe / multi-GPU systems) comes from
//!   a different library, NSCQ (`libnvidia-nscq.so`), and is not collected
//!   here. [`DeviceArch::Ls10`] exists so that recorded switch evidence can
//!   be carried, but [`NvmlProvider`] never produces it.
//! * The CEC attestation report (`cecAttestationReport`, Blackwell and
//!   later) is not returned; its presence flag and size are still checked.
//! * The "GPU ready" state (`nvmlSystemSetConfComputeGpusReadyState`) is not
//!   set: that is the caller's decision after verification.

use std::fmt;

mod nvml;
mod recorded;

pub use nvml::NvmlProvider;
pub use recorded::RecordedProvider;

/// Length of the nonce the driver puts in the SPDM `GET_MEASUREMENTS`
/// request (`NVML_CC_GPU_CEC_NONCE_SIZE`, 0x20, in nvml.h).
pub const NONCE_LEN: usize = 32;

/// A device's architecture, as NVML (or the recording) names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceArch {
    /// Hopper (H100, H200): `NVML_DEVICE_ARCH_HOPPER` (9), recorded as `"HOPPER"`.
    Hopper,
    /// LS10 NVSwitch, recorded as `"LS10"`. Only recordings carry it: NVML
    /// does not enumerate switches (they are NSCQ's).
    Ls10,
    /// Anything else: the raw `nvmlDeviceArchitecture_t` value, or
    /// `u32::MAX` for a recording with an architecture name not known here.
    Other(u32),
}

impl DeviceArch {
    /// `NVML_DEVICE_ARCH_HOPPER` in nvml.h.
    pub const NVML_HOPPER: u32 = 9;

    /// From an `nvmlDeviceArchitecture_t` value.
    pub fn from_nvml(value: u32) -> Self {
        match value {
            Self::NVML_HOPPER => DeviceArch::Hopper,
            other => DeviceArch::Other(other),
        }
    }

    /// From the `arch` string of the nvtrust evidence format (`OTHER_<n>`
    /// is how [`RecordedProvider::record`] writes `Other(n)`).
    pub fn from_name(name: &str) -> Self {
        match name {
            "HOPPER" => DeviceArch::Hopper,
            "LS10" => DeviceArch::Ls10,
            other => DeviceArch::Other(
                other
                    .strip_prefix("OTHER_")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u32::MAX),
            ),
        }
    }
}

impl fmt::Display for DeviceArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceArch::Hopper => f.write_str("HOPPER"),
            DeviceArch::Ls10 => f.write_str("LS10"),
            DeviceArch::Other(v) => write!(f, "other({v})"),
        }
    }
}

/// The system's confidential-computing environment
/// (`nvmlConfComputeSystemState_t.environment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcEnvironment {
    /// `NVML_CC_SYSTEM_ENVIRONMENT_UNAVAILABLE` (0).
    Unavailable,
    /// `NVML_CC_SYSTEM_ENVIRONMENT_SIM` (1): a simulated environment.
    Simulation,
    /// `NVML_CC_SYSTEM_ENVIRONMENT_PROD` (2).
    Production,
    /// A value not defined in nvml.h when this was written.
    Other(u32),
    /// Not known: recorded evidence does not say.
    NotRecorded,
}

impl CcEnvironment {
    /// From the raw `environment` value.
    pub fn from_nvml(value: u32) -> Self {
        match value {
            0 => CcEnvironment::Unavailable,
            1 => CcEnvironment::Simulation,
            2 => CcEnvironment::Production,
            other => CcEnvironment::Other(other),
        }
    }
}

/// One device's evidence, as the driver returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEvidence {
    /// NVML device index (`nvmlDeviceGetHandleByIndex_v2`), or the position
    /// in the recording.
    pub index: u32,
    /// The device's architecture.
    pub arch: DeviceArch,
    /// The SPDM `GET_MEASUREMENTS` request followed by the signed response:
    /// `nvmlConfComputeGpuAttestationReport_t.attestationReport[..attestationReportSize]`.
    /// Bytes 4..36 are the request nonce (SPDM 1.1: version, code 0xE0,
    /// param1, param2, nonce\[32\], slot id).
    pub report: Vec<u8>,
    /// The device's attestation certificate chain, leaf first, as PEM text
    /// (`-----BEGIN CERTIFICATE-----` blocks, concatenated):
    /// `nvmlConfComputeGpuCertificate_t.attestationCertChain[..attestationCertChainSize]`.
    /// The driver returns PEM (NVIDIA's nvtrust local verifier,
    /// `verifier/nvml/gpu_cert_chains.py`, parses this field as PEM), and the
    /// nvtrust recordings carry PEM. Its last certificate is the device's
    /// own copy of NVIDIA's root; verifiers replace it with a pinned root.
    pub cert_chain: Vec<u8>,
    /// `nvmlSystemGetDriverVersion` (the same for every device); empty when
    /// a recording does not carry it.
    pub driver_version: String,
    /// `nvmlDeviceGetVbiosVersion`; empty when a recording does not carry it.
    pub vbios_version: String,
}

impl DeviceEvidence {
    /// The nonce inside the report's SPDM `GET_MEASUREMENTS` request (bytes
    /// 4..36), if the report is long enough and starts with that request
    /// (code 0xE0). Not verified: the client's verifier checks it against
    /// the signature.
    pub fn request_nonce(&self) -> Option<[u8; NONCE_LEN]> {
        spdm_request_nonce(&self.report)
    }
}

/// SPDM `GET_MEASUREMENTS` request code.
const SPDM_GET_MEASUREMENTS: u8 = 0xE0;

fn spdm_request_nonce(report: &[u8]) -> Option<[u8; NONCE_LEN]> {
    if report.len() < 4 + NONCE_LEN + 1 || report[1] != SPDM_GET_MEASUREMENTS {
        return None;
    }
    report[4..4 + NONCE_LEN].try_into().ok()
}

/// Evidence from every GPU, for one nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuEvidence {
    /// The nonce every report was asked for with.
    pub nonce: [u8; NONCE_LEN],
    /// `nvmlSystemGetConfComputeState`: `ccFeature` is
    /// `NVML_CC_SYSTEM_FEATURE_ENABLED`. False means the GPUs are not in
    /// confidential-computing mode: a verifier must refuse the evidence.
    pub cc_enabled: bool,
    /// `nvmlSystemGetConfComputeState`: `devToolsMode` is
    /// `NVML_CC_SYSTEM_DEVTOOLS_MODE_ON`. CC dev-tools mode lets debuggers
    /// and profilers see GPU state: not confidential, a verifier must
    /// refuse it in production. (The report's measurements show it too.)
    pub dev_tools_mode: bool,
    /// `nvmlSystemGetConfComputeState`: the environment.
    pub environment: CcEnvironment,
    /// One entry per device, in NVML index order.
    pub devices: Vec<DeviceEvidence>,
}

impl GpuEvidence {
    /// True when the driver says CC is on, dev-tools mode is off and the
    /// environment is production. Informational only (the driver is not
    /// trusted); the client decides from the signed measurements.
    pub fn claims_production_cc(&self) -> bool {
        self.cc_enabled && !self.dev_tools_mode && self.environment == CcEnvironment::Production
    }
}

/// A source of GPU evidence.
pub trait GpuEvidenceProvider: Send + Sync {
    /// What this provider is, for logs (the recorded one says `NOT LIVE`).
    fn name(&self) -> &str;
    /// Collect evidence from every GPU with a fresh `nonce` (the caller
    /// derives it from the session so it is bound).
    fn collect(&self, nonce: [u8; NONCE_LEN]) -> Result<GpuEvidence, GpuEvidenceError>;
}

/// Why evidence could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum GpuEvidenceError {
    /// `dlopen` failed.
    #[error("cannot load the NVML library {path}: {source}")]
    LibraryLoad {
        /// The path or name given to `dlopen`.
        path: String,
        /// The loader's error (dlerror text).
        source: libloading::Error,
    },
    /// The library lacks a function this crate needs (driver too old, or
    /// not NVML).
    #[error(
        "the NVML library {path} has no {symbol} (driver too old for CC attestation?): {source}"
    )]
    MissingSymbol {
        /// The library.
        path: String,
        /// The missing function.
        symbol: &'static str,
        /// The loader's error.
        source: libloading::Error,
    },
    /// An NVML function returned an error.
    #[error(
        "{function} failed: {meaning} (nvmlReturn_t {code}, driver says \"{driver_message}\")"
    )]
    Nvml {
        /// The NVML function.
        function: &'static str,
        /// The raw `nvmlReturn_t`.
        code: i32,
        /// What the code means here.
        meaning: &'static str,
        /// `nvmlErrorString(code)`, or empty when that returned nothing.
        driver_message: String,
    },
    /// A per-device CC call failed while the driver reports CC off: the
    /// cause is almost certainly the system state, so say it.
    #[error("confidential computing is off on this system (nvmlSystemGetConfComputeState: ccFeature={cc_feature}, environment={environment}): {source}")]
    CcOff {
        /// The raw `ccFeature`.
        cc_feature: u32,
        /// The raw `environment`.
        environment: u32,
        /// The failing call.
        source: Box<GpuEvidenceError>,
    },
    /// The driver returned a size larger than the buffer it describes.
    #[error(
        "{function} returned {field} = {size}, larger than its {capacity}-byte buffer: refused"
    )]
    SizeOutOfRange {
        /// The NVML function.
        function: &'static str,
        /// The size field.
        field: &'static str,
        /// The size the driver returned.
        size: u32,
        /// The buffer's capacity.
        capacity: usize,
    },
    /// The driver returned an empty report or certificate chain.
    #[error("{function} returned an empty {field} for device {index}")]
    Empty {
        /// The NVML function.
        function: &'static str,
        /// The field.
        field: &'static str,
        /// The device index.
        index: u32,
    },
    /// A version string was not NUL-terminated inside its buffer, or not UTF-8.
    #[error("{function} returned a malformed string")]
    BadString {
        /// The NVML function.
        function: &'static str,
    },
    /// The driver reports no GPU.
    #[error("nvmlDeviceGetCount_v2 reports no GPU: nothing to attest")]
    NoDevices,
    /// The report does not start with an SPDM `GET_MEASUREMENTS` request
    /// carrying the nonce asked for.
    #[error("device {index}: the report's SPDM GET_MEASUREMENTS request does not carry the nonce asked for (found {found})")]
    ReportNonceMismatch {
        /// The device index.
        index: u32,
        /// The nonce found, hex, or a description of what was found instead.
        found: String,
    },
    /// Recorded evidence: reading the file failed.
    #[error("cannot read recorded GPU evidence {path}: {source}")]
    RecordingIo {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Recorded evidence: the file is not in the expected format.
    #[error("recorded GPU evidence is malformed: {0}")]
    RecordingFormat(String),
    /// Recorded evidence: asked for a nonce other than the recorded one.
    #[error("recorded evidence (NOT LIVE) can only answer its recorded nonce {recorded}, not {requested}: a recording cannot be re-signed for a fresh nonce")]
    RecordedNonceMismatch {
        /// The recorded nonce, hex.
        recorded: String,
        /// The nonce asked for, hex.
        requested: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_nonce_is_read_only_from_a_get_measurements_request() {
        let mut report = vec![0x11, 0xE0, 0x01, 0xFF];
        report.extend([7u8; 32]);
        report.push(0);
        assert_eq!(spdm_request_nonce(&report), Some([7u8; 32]));
        assert_eq!(spdm_request_nonce(&report[..36]), None, "no slot id");
        report[1] = 0x60;
        assert_eq!(spdm_request_nonce(&report), None, "a response code");
    }

    #[test]
    fn architectures() {
        assert_eq!(DeviceArch::from_nvml(9), DeviceArch::Hopper);
        assert_eq!(DeviceArch::from_nvml(10), DeviceArch::Other(10));
        assert_eq!(DeviceArch::from_name("LS10"), DeviceArch::Ls10);
        assert_eq!(
            DeviceArch::from_name("BLACKWELL"),
            DeviceArch::Other(u32::MAX)
        );
        assert_eq!(CcEnvironment::from_nvml(2), CcEnvironment::Production);
    }
}
