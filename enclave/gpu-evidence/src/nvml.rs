//! The NVML provider: `dlopen` of `libnvidia-ml.so.1` and the calls listed
//! in the crate documentation.
//!
//! Struct layouts, constants and signatures follow NVIDIA's public `nvml.h`
//! (as vendored in NVIDIA/go-nvml, `gen/nvml/nvml.h`, NVML API version 13):
//! `nvmlConfComputeSystemState_t`, `nvmlConfComputeGpuCertificate_t`,
//! `nvmlConfComputeGpuAttestationReport_t`, `nvmlReturn_t`, and the
//! `NVML_*_SIZE` constants. Each struct's size and field offsets are
//! asserted at compile time below.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, OsStr};
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::sync::Mutex;

use crate::{
    spdm_request_nonce, CcEnvironment, DeviceArch, DeviceEvidence, GpuEvidence, GpuEvidenceError,
    GpuEvidenceProvider, NONCE_LEN,
};

/// The library name `NvmlProvider::open` loads (the driver's soname).
const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

// ---- nvml.h ----------------------------------------------------------------

/// `nvmlReturn_t` (a C enum: `int`).
type NvmlReturn = c_int;
/// `nvmlDevice_t`: `struct nvmlDevice_st*`, opaque.
type NvmlDevice = *mut c_void;

const NVML_SUCCESS: NvmlReturn = 0;

/// `NVML_GPU_CERT_CHAIN_SIZE`.
const NVML_GPU_CERT_CHAIN_SIZE: usize = 0x1000;
/// `NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE`.
const NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE: usize = 0x1400;
/// `NVML_CC_GPU_CEC_NONCE_SIZE`.
const NVML_CC_GPU_CEC_NONCE_SIZE: usize = 0x20;
/// `NVML_CC_GPU_ATTESTATION_REPORT_SIZE`.
const NVML_CC_GPU_ATTESTATION_REPORT_SIZE: usize = 0x2000;
/// `NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE`.
const NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE: usize = 0x1000;
/// `NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE`.
const NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE: usize = 80;
/// `NVML_DEVICE_VBIOS_VERSION_BUFFER_SIZE`.
const NVML_DEVICE_VBIOS_VERSION_BUFFER_SIZE: usize = 32;
/// `NVML_CC_SYSTEM_FEATURE_ENABLED`.
const NVML_CC_SYSTEM_FEATURE_ENABLED: c_uint = 1;
/// `NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF`.
const NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF: c_uint = 0;

const _: () = assert!(NVML_CC_GPU_CEC_NONCE_SIZE == NONCE_LEN);

/// `nvmlConfComputeSystemState_t`.
#[repr(C)]
#[derive(Default)]
struct ConfComputeSystemState {
    environment: c_uint,
    cc_feature: c_uint,
    dev_tools_mode: c_uint,
}

/// `nvmlConfComputeGpuCertificate_t`.
#[repr(C)]
struct ConfComputeGpuCertificate {
    cert_chain_size: c_uint,
    attestation_cert_chain_size: c_uint,
    cert_chain: [u8; NVML_GPU_CERT_CHAIN_SIZE],
    attestation_cert_chain: [u8; NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE],
}

/// `nvmlConfComputeGpuAttestationReport_t`. `nonce` is the input; the rest
/// is output.
#[repr(C)]
struct ConfComputeGpuAttestationReport {
    is_cec_attestation_report_present: c_uint,
    attestation_report_size: c_uint,
    cec_attestation_report_size: c_uint,
    nonce: [u8; NVML_CC_GPU_CEC_NONCE_SIZE],
    attestation_report: [u8; NVML_CC_GPU_ATTESTATION_REPORT_SIZE],
    cec_attestation_report: [u8; NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE],
}

// The layouts a C compiler gives these structs on every NVML platform
// (unsigned int is 4 bytes there): no padding anywhere.
const _: () = {
    assert!(size_of::<c_uint>() == 4);
    assert!(size_of::<ConfComputeSystemState>() == 12);
    assert!(offset_of!(ConfComputeSystemState, environment) == 0);
    assert!(offset_of!(ConfComputeSystemState, cc_feature) == 4);
    assert!(offset_of!(ConfComputeSystemState, dev_tools_mode) == 8);

    assert!(size_of::<ConfComputeGpuCertificate>() == 8 + 0x1000 + 0x1400);
    assert!(offset_of!(ConfComputeGpuCertificate, cert_chain_size) == 0);
    assert!(offset_of!(ConfComputeGpuCertificate, attestation_cert_chain_size) == 4);
    assert!(offset_of!(ConfComputeGpuCertificate, cert_chain) == 8);
    assert!(offset_of!(ConfComputeGpuCertificate, attestation_cert_chain) == 8 + 0x1000);

    assert!(size_of::<ConfComputeGpuAttestationReport>() == 12 + 0x20 + 0x2000 + 0x1000);
    assert!(
        offset_of!(
            ConfComputeGpuAttestationReport,
            is_cec_attestation_report_present
        ) == 0
    );
    assert!(offset_of!(ConfComputeGpuAttestationReport, attestation_report_size) == 4);
    assert!(offset_of!(ConfComputeGpuAttestationReport, cec_attestation_report_size) == 8);
    assert!(offset_of!(ConfComputeGpuAttestationReport, nonce) == 12);
    assert!(offset_of!(ConfComputeGpuAttestationReport, attestation_report) == 12 + 0x20);
    assert!(
        offset_of!(ConfComputeGpuAttestationReport, cec_attestation_report) == 12 + 0x20 + 0x2000
    );
};

type InitFn = unsafe extern "C" fn() -> NvmlReturn;
type ShutdownFn = unsafe extern "C" fn() -> NvmlReturn;
type ErrorStringFn = unsafe extern "C" fn(NvmlReturn) -> *const c_char;
type DeviceGetCountFn = unsafe extern "C" fn(*mut c_uint) -> NvmlReturn;
type DeviceGetHandleByIndexFn = unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> NvmlReturn;
type SystemGetConfComputeStateFn = unsafe extern "C" fn(*mut ConfComputeSystemState) -> NvmlReturn;
type DeviceGetConfComputeGpuAttestationReportFn =
    unsafe extern "C" fn(NvmlDevice, *mut ConfComputeGpuAttestationReport) -> NvmlReturn;
type DeviceGetConfComputeGpuCertificateFn =
    unsafe extern "C" fn(NvmlDevice, *mut ConfComputeGpuCertificate) -> NvmlReturn;
type SystemGetDriverVersionFn = unsafe extern "C" fn(*mut c_char, c_uint) -> NvmlReturn;
type DeviceGetVbiosVersionFn = unsafe extern "C" fn(NvmlDevice, *mut c_char, c_uint) -> NvmlReturn;
type DeviceGetArchitectureFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint) -> NvmlReturn;

/// More devices than this from `nvmlDeviceGetCount_v2` is taken as garbage.
const MAX_DEVICES: u32 = 256;

/// What an `nvmlReturn_t` means, worded for someone deploying the enclave.
/// `cc_call` selects the wording of `NVML_ERROR_NOT_SUPPORTED`.
fn meaning(code: NvmlReturn, cc_call: bool) -> &'static str {
    match code {
        0 => "success",
        1 => "NVML is not initialized (NVML_ERROR_UNINITIALIZED)",
        2 => "the driver refused an argument (NVML_ERROR_INVALID_ARGUMENT)",
        3 if cc_call => "CC attestation not supported by this driver/GPU (NVML_ERROR_NOT_SUPPORTED)",
        3 => "not supported by this driver/GPU (NVML_ERROR_NOT_SUPPORTED)",
        4 => "permission denied: this process may not use the GPU (NVML_ERROR_NO_PERMISSION)",
        5 => "NVML already initialized (NVML_ERROR_ALREADY_INITIALIZED)",
        6 => "not found (NVML_ERROR_NOT_FOUND)",
        7 => "buffer too small (NVML_ERROR_INSUFFICIENT_SIZE)",
        8 => "a GPU's external power cables are not attached (NVML_ERROR_INSUFFICIENT_POWER)",
        9 => "the NVIDIA kernel driver is not loaded (NVML_ERROR_DRIVER_NOT_LOADED)",
        10 => "timed out (NVML_ERROR_TIMEOUT)",
        11 => "the kernel driver detected an interrupt issue with a GPU (NVML_ERROR_IRQ_ISSUE)",
        12 => "NVML could not load a library it needs (NVML_ERROR_LIBRARY_NOT_FOUND)",
        13 => "this NVML does not implement the function: driver too old (NVML_ERROR_FUNCTION_NOT_FOUND)",
        14 => "the GPU's infoROM is corrupted (NVML_ERROR_CORRUPTED_INFOROM)",
        15 => "the GPU has fallen off the bus or is otherwise inaccessible (NVML_ERROR_GPU_IS_LOST)",
        16 => "the GPU needs a reset (NVML_ERROR_RESET_REQUIRED)",
        17 => "the operating system or cgroups block access to the GPU (NVML_ERROR_OPERATING_SYSTEM)",
        18 => "libnvidia-ml and the kernel driver are different versions (NVML_ERROR_LIB_RM_VERSION_MISMATCH)",
        19 => "the GPU is in use (NVML_ERROR_IN_USE)",
        20 => "out of memory (NVML_ERROR_MEMORY)",
        21 => "no data (NVML_ERROR_NO_DATA)",
        23 => "out of resources (NVML_ERROR_INSUFFICIENT_RESOURCES)",
        25 => "struct version not supported by this driver (NVML_ERROR_ARGUMENT_VERSION_MISMATCH)",
        26 => "deprecated (NVML_ERROR_DEPRECATED)",
        27 => "the system is not ready (NVML_ERROR_NOT_READY)",
        28 => "no GPU found (NVML_ERROR_GPU_NOT_FOUND)",
        29 => "the GPU is not in a state that allows this (NVML_ERROR_INVALID_STATE)",
        999 => "internal driver error (NVML_ERROR_UNKNOWN)",
        _ => "an nvmlReturn_t this crate does not know",
    }
}

/// The resolved entry points. Valid while the `Library` they came from is
/// loaded: `NvmlProvider` keeps both together and never hands these out.
struct Api {
    init: InitFn,
    shutdown: ShutdownFn,
    error_string: ErrorStringFn,
    device_get_count: DeviceGetCountFn,
    device_get_handle_by_index: DeviceGetHandleByIndexFn,
    system_get_conf_compute_state: SystemGetConfComputeStateFn,
    device_get_attestation_report: DeviceGetConfComputeGpuAttestationReportFn,
    device_get_certificate: DeviceGetConfComputeGpuCertificateFn,
    system_get_driver_version: SystemGetDriverVersionFn,
    device_get_vbios_version: DeviceGetVbiosVersionFn,
    device_get_architecture: DeviceGetArchitectureFn,
}

/// Live GPU evidence from NVIDIA's driver library (NVML).
///
/// See the crate documentation for the calls made. `Send + Sync`; collections
/// are serialized.
pub struct NvmlProvider {
    api: Api,
    name: String,
    lock: Mutex<()>,
    // Last: dropped after nothing can call into it any more (fields drop in
    // declaration order, and `api` holds plain pointers into it).
    _library: libloading::Library,
}

impl std::fmt::Debug for NvmlProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProvider")
            .field("name", &self.name)
            .finish()
    }
}

impl NvmlProvider {
    /// Load `libnvidia-ml.so.1` through the dynamic loader's search path and
    /// resolve the NVML functions this crate uses.
    pub fn open() -> Result<Self, GpuEvidenceError> {
        Self::load(OsStr::new(DEFAULT_LIBRARY), DEFAULT_LIBRARY.to_string())
    }

    /// Load NVML from `path` (a path with a `/` is opened as given; a bare
    /// file name is searched for like a library name).
    pub fn open_path(path: &Path) -> Result<Self, GpuEvidenceError> {
        Self::load(path.as_os_str(), path.display().to_string())
    }

    fn load(file: &OsStr, shown: String) -> Result<Self, GpuEvidenceError> {
        // SAFETY: loading a shared library runs its initializers. The library
        // is the NVIDIA driver's NVML (or a path the operator chose to stand
        // for it), part of the guest image, whose code this process is meant
        // to run; it is not attacker-supplied data.
        let library = unsafe { libloading::Library::new(file) }.map_err(|source| {
            GpuEvidenceError::LibraryLoad {
                path: shown.clone(),
                source,
            }
        })?;

        macro_rules! resolve {
            ($ty:ty, $name:literal) => {{
                // SAFETY: `$ty` is the C signature nvml.h declares for
                // `$name` (see the type aliases above). The function pointer
                // is copied out of the `Symbol`; it stays valid because the
                // provider keeps `library` loaded for as long as it holds it.
                let symbol = unsafe { library.get::<$ty>(concat!($name, "\0").as_bytes()) };
                *symbol.map_err(|source| GpuEvidenceError::MissingSymbol {
                    path: shown.clone(),
                    symbol: $name,
                    source,
                })?
            }};
        }

        let api = Api {
            init: resolve!(InitFn, "nvmlInit_v2"),
            shutdown: resolve!(ShutdownFn, "nvmlShutdown"),
            error_string: resolve!(ErrorStringFn, "nvmlErrorString"),
            device_get_count: resolve!(DeviceGetCountFn, "nvmlDeviceGetCount_v2"),
            device_get_handle_by_index: resolve!(
                DeviceGetHandleByIndexFn,
                "nvmlDeviceGetHandleByIndex_v2"
            ),
            system_get_conf_compute_state: resolve!(
                SystemGetConfComputeStateFn,
                "nvmlSystemGetConfComputeState"
            ),
            device_get_attestation_report: resolve!(
                DeviceGetConfComputeGpuAttestationReportFn,
                "nvmlDeviceGetConfComputeGpuAttestationReport"
            ),
            device_get_certificate: resolve!(
                DeviceGetConfComputeGpuCertificateFn,
                "nvmlDeviceGetConfComputeGpuCertificate"
            ),
            system_get_driver_version: resolve!(
                SystemGetDriverVersionFn,
                "nvmlSystemGetDriverVersion"
            ),
            device_get_vbios_version: resolve!(
                DeviceGetVbiosVersionFn,
                "nvmlDeviceGetVbiosVersion"
            ),
            device_get_architecture: resolve!(DeviceGetArchitectureFn, "nvmlDeviceGetArchitecture"),
        };
        Ok(NvmlProvider {
            api,
            name: format!("NVML live evidence ({shown})"),
            lock: Mutex::new(()),
            _library: library,
        })
    }

    /// Turn an `nvmlReturn_t` into `Ok` or an error naming `function`.
    fn check(
        &self,
        function: &'static str,
        cc_call: bool,
        code: NvmlReturn,
    ) -> Result<(), GpuEvidenceError> {
        if code == NVML_SUCCESS {
            return Ok(());
        }
        // SAFETY: nvmlErrorString takes any nvmlReturn_t and returns either
        // null or a pointer to a static NUL-terminated string owned by the
        // library (nvml.h); the library stays loaded while `self` lives, and
        // the text is copied out before returning.
        let driver_message = unsafe {
            let p = (self.api.error_string)(code);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Err(GpuEvidenceError::Nvml {
            function,
            code,
            meaning: meaning(code, cc_call),
            driver_message,
        })
    }

    fn collect_initialized(&self, nonce: [u8; NONCE_LEN]) -> Result<GpuEvidence, GpuEvidenceError> {
        let mut state = ConfComputeSystemState::default();
        // SAFETY: `state` is a live, writable nvmlConfComputeSystemState_t
        // (layout asserted above); the driver writes only inside it.
        let rc = unsafe { (self.api.system_get_conf_compute_state)(&mut state) };
        self.check("nvmlSystemGetConfComputeState", true, rc)?;
        let cc_enabled = state.cc_feature == NVML_CC_SYSTEM_FEATURE_ENABLED;
        let dev_tools_mode = state.dev_tools_mode != NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF;

        let mut driver_buf = [0u8; NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
        // SAFETY: the buffer is writable for the length passed; the driver
        // writes at most that many bytes (nvml.h: `length` is the buffer's).
        let rc = unsafe {
            (self.api.system_get_driver_version)(
                driver_buf.as_mut_ptr().cast(),
                driver_buf.len() as c_uint,
            )
        };
        self.check("nvmlSystemGetDriverVersion", false, rc)?;
        let driver_version = c_string(&driver_buf, "nvmlSystemGetDriverVersion")?;

        let mut count: c_uint = 0;
        // SAFETY: `count` is a live, writable unsigned int.
        let rc = unsafe { (self.api.device_get_count)(&mut count) };
        self.check("nvmlDeviceGetCount_v2", false, rc)?;
        if count == 0 {
            return Err(GpuEvidenceError::NoDevices);
        }
        if count > MAX_DEVICES {
            return Err(GpuEvidenceError::SizeOutOfRange {
                function: "nvmlDeviceGetCount_v2",
                field: "deviceCount",
                size: count,
                capacity: MAX_DEVICES as usize,
            });
        }

        let mut devices = Vec::with_capacity(count as usize);
        for index in 0..count {
            let device = self
                .device(index, nonce, driver_version.clone())
                .map_err(|e| {
                    if cc_enabled || !e.is_cc_call() {
                        e
                    } else {
                        GpuEvidenceError::CcOff {
                            cc_feature: state.cc_feature,
                            environment: state.environment,
                            source: Box::new(e),
                        }
                    }
                })?;
            devices.push(device);
        }
        Ok(GpuEvidence {
            nonce,
            cc_enabled,
            dev_tools_mode,
            environment: CcEnvironment::from_nvml(state.environment),
            devices,
        })
    }

    fn device(
        &self,
        index: u32,
        nonce: [u8; NONCE_LEN],
        driver_version: String,
    ) -> Result<DeviceEvidence, GpuEvidenceError> {
        let mut handle: NvmlDevice = std::ptr::null_mut();
        // SAFETY: `handle` is a live, writable nvmlDevice_t.
        let rc = unsafe { (self.api.device_get_handle_by_index)(index, &mut handle) };
        self.check("nvmlDeviceGetHandleByIndex_v2", false, rc)?;

        let mut arch: c_uint = 0;
        // SAFETY: `handle` came from nvmlDeviceGetHandleByIndex_v2 in this
        // initialized session; `arch` is a live, writable unsigned int.
        let rc = unsafe { (self.api.device_get_architecture)(handle, &mut arch) };
        self.check("nvmlDeviceGetArchitecture", false, rc)?;

        let mut vbios_buf = [0u8; NVML_DEVICE_VBIOS_VERSION_BUFFER_SIZE];
        // SAFETY: valid handle as above; the buffer is writable for the
        // length passed.
        let rc = unsafe {
            (self.api.device_get_vbios_version)(
                handle,
                vbios_buf.as_mut_ptr().cast(),
                vbios_buf.len() as c_uint,
            )
        };
        self.check("nvmlDeviceGetVbiosVersion", false, rc)?;
        let vbios_version = c_string(&vbios_buf, "nvmlDeviceGetVbiosVersion")?;

        let cert_chain = self.certificate(handle, index)?;
        let report = self.report(handle, index, nonce)?;

        match spdm_request_nonce(&report) {
            Some(found) if found == nonce => {}
            Some(found) => {
                return Err(GpuEvidenceError::ReportNonceMismatch {
                    index,
                    found: hex::encode(found),
                })
            }
            None => {
                return Err(GpuEvidenceError::ReportNonceMismatch {
                    index,
                    found: format!(
                        "no SPDM GET_MEASUREMENTS request: {} bytes starting {}",
                        report.len(),
                        hex::encode(&report[..report.len().min(8)])
                    ),
                })
            }
        }

        Ok(DeviceEvidence {
            index,
            arch: DeviceArch::from_nvml(arch),
            report,
            cert_chain,
            driver_version,
            vbios_version,
        })
    }

    fn certificate(&self, handle: NvmlDevice, index: u32) -> Result<Vec<u8>, GpuEvidenceError> {
        const F: &str = "nvmlDeviceGetConfComputeGpuCertificate";
        let mut cert = Box::new(ConfComputeGpuCertificate {
            cert_chain_size: 0,
            attestation_cert_chain_size: 0,
            cert_chain: [0; NVML_GPU_CERT_CHAIN_SIZE],
            attestation_cert_chain: [0; NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE],
        });
        // SAFETY: valid handle as above; `cert` is a live, writable
        // nvmlConfComputeGpuCertificate_t (layout asserted above).
        let rc = unsafe { (self.api.device_get_certificate)(handle, &mut *cert) };
        self.check(F, true, rc)?;
        bounded(
            F,
            "certChainSize",
            cert.cert_chain_size,
            cert.cert_chain.len(),
        )?;
        let n = bounded(
            F,
            "attestationCertChainSize",
            cert.attestation_cert_chain_size,
            cert.attestation_cert_chain.len(),
        )?;
        if n == 0 {
            return Err(GpuEvidenceError::Empty {
                function: F,
                field: "attestationCertChain",
                index,
            });
        }
        Ok(cert.attestation_cert_chain[..n].to_vec())
    }

    fn report(
        &self,
        handle: NvmlDevice,
        index: u32,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, GpuEvidenceError> {
        const F: &str = "nvmlDeviceGetConfComputeGpuAttestationReport";
        let mut report = Box::new(ConfComputeGpuAttestationReport {
            is_cec_attestation_report_present: 0,
            attestation_report_size: 0,
            cec_attestation_report_size: 0,
            nonce,
            attestation_report: [0; NVML_CC_GPU_ATTESTATION_REPORT_SIZE],
            cec_attestation_report: [0; NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE],
        });
        // SAFETY: valid handle as above; `report` is a live, writable
        // nvmlConfComputeGpuAttestationReport_t (layout asserted above) with
        // the nonce in its input field.
        let rc = unsafe { (self.api.device_get_attestation_report)(handle, &mut *report) };
        self.check(F, true, rc)?;
        bounded(
            F,
            "cecAttestationReportSize",
            report.cec_attestation_report_size,
            report.cec_attestation_report.len(),
        )?;
        let n = bounded(
            F,
            "attestationReportSize",
            report.attestation_report_size,
            report.attestation_report.len(),
        )?;
        if n == 0 {
            return Err(GpuEvidenceError::Empty {
                function: F,
                field: "attestationReport",
                index,
            });
        }
        Ok(report.attestation_report[..n].to_vec())
    }
}

impl GpuEvidenceError {
    /// An error from one of the per-device CC calls.
    fn is_cc_call(&self) -> bool {
        matches!(
            self,
            GpuEvidenceError::Nvml { function, .. }
                if *function == "nvmlDeviceGetConfComputeGpuCertificate"
                    || *function == "nvmlDeviceGetConfComputeGpuAttestationReport"
        )
    }
}

/// A driver-returned size, refused when larger than its buffer.
fn bounded(
    function: &'static str,
    field: &'static str,
    size: c_uint,
    capacity: usize,
) -> Result<usize, GpuEvidenceError> {
    match usize::try_from(size) {
        Ok(n) if n <= capacity => Ok(n),
        _ => Err(GpuEvidenceError::SizeOutOfRange {
            function,
            field,
            size,
            capacity,
        }),
    }
}

/// A NUL-terminated UTF-8 string inside `buf`.
fn c_string(buf: &[u8], function: &'static str) -> Result<String, GpuEvidenceError> {
    CStr::from_bytes_until_nul(buf)
        .ok()
        .and_then(|s| s.to_str().ok())
        .map(str::to_owned)
        .ok_or(GpuEvidenceError::BadString { function })
}

/// Calls `nvmlShutdown` when dropped (on every path out of a collection).
struct Session<'a>(&'a NvmlProvider);

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: paired with the successful nvmlInit_v2 that created this
        // session (NVML reference-counts init/shutdown). Its result is
        // ignored: the evidence is already collected or the error that ended
        // the collection is the one worth reporting.
        let _ = unsafe { (self.0.api.shutdown)() };
    }
}

impl GpuEvidenceProvider for NvmlProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self, nonce: [u8; NONCE_LEN]) -> Result<GpuEvidence, GpuEvidenceError> {
        // A poisoned lock only means an earlier collection panicked; the
        // guarded state is NVML's own, which nvmlInit_v2 re-establishes.
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: nvmlInit_v2 takes no arguments; it may be called any number
        // of times (reference-counted) and from any thread.
        let rc = unsafe { (self.api.init)() };
        self.check("nvmlInit_v2", false, rc)?;
        let _session = Session(self);
        self.collect_initialized(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_their_buffer_are_refused() {
        assert_eq!(bounded("f", "n", 0x2000, 0x2000).unwrap(), 0x2000);
        assert_eq!(bounded("f", "n", 0, 0x2000).unwrap(), 0);
        for size in [0x2001, u32::MAX] {
            let err = bounded("f", "n", size, 0x2000).unwrap_err();
            assert!(matches!(err, GpuEvidenceError::SizeOutOfRange { size: s, .. } if s == size));
        }
    }

    #[test]
    fn version_strings_must_end_inside_their_buffer() {
        assert_eq!(c_string(b"590.12\0\0\0", "f").unwrap(), "590.12");
        assert!(c_string(b"590.12", "f").is_err());
        assert!(c_string(b"\xff\0", "f").is_err());
    }

    #[test]
    fn not_supported_is_worded_for_cc_calls() {
        assert_eq!(
            meaning(3, true),
            "CC attestation not supported by this driver/GPU (NVML_ERROR_NOT_SUPPORTED)"
        );
        assert!(meaning(12345, false).contains("does not know"));
    }
}
