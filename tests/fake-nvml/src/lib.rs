//! # TEST DOUBLE — NOT NVIDIA's DRIVER
//!
//! A shared library that stands in for `libnvidia-ml.so.1` in tests of
//! `cocoon-gpu-evidence`, so that its real `dlopen`/FFI path runs on machines
//! without a GPU. It exports the NVML C functions that crate uses, with the
//! signatures and struct layouts of NVIDIA's public `nvml.h`, and replays
//! attestation evidence recorded on real H100s. It signs nothing and attests
//! nothing. Never install it where a real driver is expected.
//!
//! # Configuration (read at every `nvmlInit_v2`)
//!
//! * `COCOON_FAKE_NVML_EVIDENCE` — path of a recording in the nvtrust format
//!   (a JSON array; per device base64 `evidence`, base64 `certificate`, hex
//!   `nonce`, `arch`, `driver_version`, `vbios_version`). Unset:
//!   `nvmlInit_v2` returns `NVML_ERROR_DRIVER_NOT_LOADED`; unreadable or
//!   malformed: `NVML_ERROR_UNKNOWN`, with the reason on stderr.
//! * `COCOON_FAKE_NVML_MODE` — how to behave:
//!   * unset or `normal`: like a driver in production CC mode;
//!   * `oversize-report`: `attestationReportSize` one byte past its buffer;
//!   * `oversize-cert`: `attestationCertChainSize` one byte past its buffer;
//!   * `cc-off`: `ccFeature` disabled, and the CC device calls return
//!     `NVML_ERROR_NOT_SUPPORTED` (what this double assumes a driver with CC
//!     off answers);
//!   * `devtools`: CC on with `devToolsMode` on; evidence still served;
//!   * `not-supported`: every CC call returns `NVML_ERROR_NOT_SUPPORTED`;
//!   * `ignore-nonce`: serves the recorded report whatever nonce is asked
//!     for (a broken driver).
//!
//! The exported names are NVML's own (`#[no_mangle]`, C ABI): load this
//! library with `dlopen` in place of the driver's, never link it into a
//! program that also loads the real one.
//!
//! # Nonces
//!
//! A real driver puts the caller's nonce into the SPDM `GET_MEASUREMENTS`
//! request and the GPU signs the answer. This double cannot sign, so it
//! answers only the nonce its recording was made with and returns
//! `NVML_ERROR_INVALID_ARGUMENT` for any other (outside `ignore-nonce`).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::mem::{offset_of, size_of};
use std::sync::Mutex;

use base64::Engine as _;

type NvmlReturn = c_int;
type NvmlDevice = *mut c_void;

const NVML_SUCCESS: NvmlReturn = 0;
const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
const NVML_ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
const NVML_ERROR_UNKNOWN: NvmlReturn = 999;

const NVML_GPU_CERT_CHAIN_SIZE: usize = 0x1000;
const NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE: usize = 0x1400;
const NVML_CC_GPU_CEC_NONCE_SIZE: usize = 0x20;
const NVML_CC_GPU_ATTESTATION_REPORT_SIZE: usize = 0x2000;
const NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE: usize = 0x1000;
const NVML_DEVICE_ARCH_HOPPER: c_uint = 9;
const NVML_DEVICE_ARCH_UNKNOWN: c_uint = 0xffff_ffff;

/// `nvmlConfComputeSystemState_t`.
#[repr(C)]
pub struct ConfComputeSystemState {
    environment: c_uint,
    cc_feature: c_uint,
    dev_tools_mode: c_uint,
}

/// `nvmlConfComputeGpuCertificate_t`.
#[repr(C)]
pub struct ConfComputeGpuCertificate {
    cert_chain_size: c_uint,
    attestation_cert_chain_size: c_uint,
    cert_chain: [u8; NVML_GPU_CERT_CHAIN_SIZE],
    attestation_cert_chain: [u8; NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE],
}

/// `nvmlConfComputeGpuAttestationReport_t`.
#[repr(C)]
pub struct ConfComputeGpuAttestationReport {
    is_cec_attestation_report_present: c_uint,
    attestation_report_size: c_uint,
    cec_attestation_report_size: c_uint,
    nonce: [u8; NVML_CC_GPU_CEC_NONCE_SIZE],
    attestation_report: [u8; NVML_CC_GPU_ATTESTATION_REPORT_SIZE],
    cec_attestation_report: [u8; NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE],
}

const _: () = {
    assert!(size_of::<ConfComputeSystemState>() == 12);
    assert!(size_of::<ConfComputeGpuCertificate>() == 0x2408);
    assert!(offset_of!(ConfComputeGpuCertificate, attestation_cert_chain) == 0x1008);
    assert!(size_of::<ConfComputeGpuAttestationReport>() == 0x302c);
    assert!(offset_of!(ConfComputeGpuAttestationReport, nonce) == 12);
    assert!(offset_of!(ConfComputeGpuAttestationReport, attestation_report) == 44);
    assert!(offset_of!(ConfComputeGpuAttestationReport, cec_attestation_report) == 44 + 0x2000);
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    OversizeReport,
    OversizeCert,
    CcOff,
    DevTools,
    NotSupported,
    IgnoreNonce,
}

struct Device {
    arch: c_uint,
    report: Vec<u8>,
    cert: Vec<u8>,
    vbios: String,
}

struct State {
    init_count: u32,
    mode: Mode,
    nonce: [u8; 32],
    driver_version: String,
    devices: Vec<Device>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Device handles are addresses inside this array: opaque to the caller,
/// checked on the way back in.
static HANDLES: [u8; 64] = [0; 64];

fn lock() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn load() -> Result<State, NvmlReturn> {
    let Some(path) = std::env::var_os("COCOON_FAKE_NVML_EVIDENCE") else {
        eprintln!("cocoon-fake-nvml (TEST DOUBLE): COCOON_FAKE_NVML_EVIDENCE is not set");
        return Err(NVML_ERROR_DRIVER_NOT_LOADED);
    };
    let fail = |why: String| {
        eprintln!(
            "cocoon-fake-nvml (TEST DOUBLE): {}: {why}",
            std::path::Path::new(&path).display()
        );
        NVML_ERROR_UNKNOWN
    };
    let mode = match std::env::var("COCOON_FAKE_NVML_MODE").as_deref() {
        Err(_) | Ok("") | Ok("normal") => Mode::Normal,
        Ok("oversize-report") => Mode::OversizeReport,
        Ok("oversize-cert") => Mode::OversizeCert,
        Ok("cc-off") => Mode::CcOff,
        Ok("devtools") => Mode::DevTools,
        Ok("not-supported") => Mode::NotSupported,
        Ok("ignore-nonce") => Mode::IgnoreNonce,
        Ok(other) => return Err(fail(format!("unknown COCOON_FAKE_NVML_MODE {other:?}"))),
    };
    let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))?;
    let items = json
        .as_array()
        .filter(|a| !a.is_empty() && a.len() <= HANDLES.len())
        .ok_or_else(|| fail("not a JSON array of 1 to 64 devices".into()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = |item: &serde_json::Value, name: &str| -> Result<String, NvmlReturn> {
        item[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("an item has no string {name:?}")))
    };
    let mut nonce = None;
    let mut driver_version = String::new();
    let mut devices = Vec::new();
    for item in items {
        let n: [u8; 32] = hex::decode(text(item, "nonce")?)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| fail("nonce is not 32 bytes of hex".into()))?;
        if *nonce.get_or_insert(n) != n {
            return Err(fail("items carry different nonces".into()));
        }
        driver_version = text(item, "driver_version")?;
        devices.push(Device {
            arch: match text(item, "arch")?.as_str() {
                "HOPPER" => NVML_DEVICE_ARCH_HOPPER,
                _ => NVML_DEVICE_ARCH_UNKNOWN,
            },
            report: b64
                .decode(text(item, "evidence")?)
                .map_err(|e| fail(e.to_string()))?,
            cert: b64
                .decode(text(item, "certificate")?)
                .map_err(|e| fail(e.to_string()))?,
            vbios: text(item, "vbios_version")?,
        });
    }
    Ok(State {
        init_count: 0,
        mode,
        nonce: nonce.unwrap_or_default(),
        driver_version,
        devices,
    })
}

/// Run `f` on the state of an initialized library.
fn with_state(f: impl FnOnce(&State) -> NvmlReturn) -> NvmlReturn {
    match lock().as_ref() {
        Some(state) if state.init_count > 0 => f(state),
        _ => NVML_ERROR_UNINITIALIZED,
    }
}

/// The device a handle stands for.
fn device(state: &State, handle: NvmlDevice) -> Option<&Device> {
    let offset = (handle as usize).wrapping_sub(HANDLES.as_ptr() as usize);
    state.devices.get(offset)
}

/// Copy `s` and a NUL into the caller's `length`-byte buffer.
///
/// # Safety
/// `out` must be null or writable for `length` bytes.
unsafe fn write_c_string(s: &str, out: *mut c_char, length: c_uint) -> NvmlReturn {
    if out.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if s.len() + 1 > length as usize {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: `out` is writable for `length` bytes (the caller's contract)
    // and `s.len() + 1 <= length`; the source is a distinct Rust string.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), out.cast::<u8>(), s.len());
        *out.add(s.len()) = 0;
    }
    NVML_SUCCESS
}

/// `nvmlInit_v2`: (re)reads the configuration, then counts a reference.
#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    let mut guard = lock();
    match guard.as_mut() {
        Some(state) if state.init_count > 0 => state.init_count += 1,
        _ => match load() {
            Ok(mut state) => {
                state.init_count = 1;
                *guard = Some(state);
            }
            Err(rc) => return rc,
        },
    }
    NVML_SUCCESS
}

/// `nvmlShutdown`: drops a reference.
#[no_mangle]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    match lock().as_mut() {
        Some(state) if state.init_count > 0 => {
            state.init_count -= 1;
            NVML_SUCCESS
        }
        _ => NVML_ERROR_UNINITIALIZED,
    }
}

/// `nvmlErrorString`: a static string for any code.
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    let s: &'static CStr = match result {
        NVML_SUCCESS => c"Success",
        NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

/// `nvmlDeviceGetCount_v2`.
///
/// # Safety
/// `device_count` must be null or point to a writable `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> NvmlReturn {
    with_state(|state| {
        if device_count.is_null() {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        // SAFETY: non-null and writable (the caller's contract).
        unsafe { *device_count = state.devices.len() as c_uint };
        NVML_SUCCESS
    })
}

/// `nvmlDeviceGetHandleByIndex_v2`.
///
/// # Safety
/// `device` must be null or point to a writable `nvmlDevice_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    with_state(|state| {
        if device.is_null() || index as usize >= state.devices.len() {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        let handle = HANDLES.as_ptr().wrapping_add(index as usize) as NvmlDevice;
        // SAFETY: non-null and writable (the caller's contract).
        unsafe { *device = handle };
        NVML_SUCCESS
    })
}

/// `nvmlSystemGetConfComputeState`.
///
/// # Safety
/// `state_out` must be null or point to a writable
/// `nvmlConfComputeSystemState_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetConfComputeState(
    state_out: *mut ConfComputeSystemState,
) -> NvmlReturn {
    with_state(|state| {
        if state_out.is_null() {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        if state.mode == Mode::NotSupported {
            return NVML_ERROR_NOT_SUPPORTED;
        }
        let cc_off = state.mode == Mode::CcOff;
        let value = ConfComputeSystemState {
            environment: if cc_off { 0 } else { 2 },
            cc_feature: if cc_off { 0 } else { 1 },
            dev_tools_mode: (state.mode == Mode::DevTools) as c_uint,
        };
        // SAFETY: non-null and writable (the caller's contract).
        unsafe { state_out.write(value) };
        NVML_SUCCESS
    })
}

/// `nvmlSystemGetDriverVersion`: the recording's `driver_version`.
///
/// # Safety
/// `version` must be null or writable for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    // SAFETY: the caller's contract, passed on.
    with_state(|state| unsafe { write_c_string(&state.driver_version, version, length) })
}

/// `nvmlDeviceGetVbiosVersion`: the recording's `vbios_version`.
///
/// # Safety
/// `version` must be null or writable for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVbiosVersion(
    device: NvmlDevice,
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    with_state(|state| match self::device(state, device) {
        // SAFETY: the caller's contract, passed on.
        Some(d) => unsafe { write_c_string(&d.vbios, version, length) },
        None => NVML_ERROR_INVALID_ARGUMENT,
    })
}

/// `nvmlDeviceGetArchitecture`.
///
/// # Safety
/// `arch` must be null or point to a writable `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: NvmlDevice,
    arch: *mut c_uint,
) -> NvmlReturn {
    with_state(|state| match self::device(state, device) {
        Some(d) if !arch.is_null() => {
            // SAFETY: non-null and writable (the caller's contract).
            unsafe { *arch = d.arch };
            NVML_SUCCESS
        }
        _ => NVML_ERROR_INVALID_ARGUMENT,
    })
}

/// `nvmlDeviceGetConfComputeGpuCertificate`: the recording's `certificate`
/// (PEM) in `attestationCertChain`; `certChain` is left empty.
///
/// # Safety
/// `gpu_cert` must be null or point to a writable
/// `nvmlConfComputeGpuCertificate_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuCertificate(
    device: NvmlDevice,
    gpu_cert: *mut ConfComputeGpuCertificate,
) -> NvmlReturn {
    with_state(|state| {
        let Some(d) = self::device(state, device) else {
            return NVML_ERROR_INVALID_ARGUMENT;
        };
        if gpu_cert.is_null() {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        if matches!(state.mode, Mode::NotSupported | Mode::CcOff) {
            return NVML_ERROR_NOT_SUPPORTED;
        }
        if d.cert.len() > NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE {
            return NVML_ERROR_UNKNOWN;
        }
        // SAFETY: non-null and points to a writable struct (the caller's
        // contract); the copy fits (checked above).
        let out = unsafe { &mut *gpu_cert };
        out.cert_chain_size = 0;
        out.attestation_cert_chain[..d.cert.len()].copy_from_slice(&d.cert);
        out.attestation_cert_chain_size = if state.mode == Mode::OversizeCert {
            NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE as c_uint + 1
        } else {
            d.cert.len() as c_uint
        };
        NVML_SUCCESS
    })
}

/// `nvmlDeviceGetConfComputeGpuAttestationReport`: the recording's
/// `evidence`, if `nonce` in the struct is the recorded nonce.
///
/// # Safety
/// `report` must be null or point to a writable
/// `nvmlConfComputeGpuAttestationReport_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuAttestationReport(
    device: NvmlDevice,
    report: *mut ConfComputeGpuAttestationReport,
) -> NvmlReturn {
    with_state(|state| {
        let Some(d) = self::device(state, device) else {
            return NVML_ERROR_INVALID_ARGUMENT;
        };
        if report.is_null() {
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        if matches!(state.mode, Mode::NotSupported | Mode::CcOff) {
            return NVML_ERROR_NOT_SUPPORTED;
        }
        // SAFETY: non-null and points to a writable struct (the caller's
        // contract).
        let out = unsafe { &mut *report };
        if out.nonce != state.nonce && state.mode != Mode::IgnoreNonce {
            // No recording for this nonce, and no key to sign a new one.
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        if d.report.len() > NVML_CC_GPU_ATTESTATION_REPORT_SIZE {
            return NVML_ERROR_UNKNOWN;
        }
        out.is_cec_attestation_report_present = 0;
        out.cec_attestation_report_size = 0;
        out.attestation_report[..d.report.len()].copy_from_slice(&d.report);
        out.attestation_report_size = if state.mode == Mode::OversizeReport {
            NVML_CC_GPU_ATTESTATION_REPORT_SIZE as c_uint + 1
        } else {
            d.report.len() as c_uint
        };
        NVML_SUCCESS
    })
}
