//! Attestation providers: the enclave's only way to obtain platform evidence.
//!
//! Owns the [`AttestationProvider`] trait (report data in, platform evidence
//! out), its implementations, and the choice among them ([`TeeChoice`],
//! [`open_hardware`]):
//!
//! * [`ConfigfsTsmProvider`] — Linux configfs-tsm
//!   (`/sys/kernel/config/tsm/report`, Linux 6.7+), for SEV-SNP and TDX. The
//!   preferred interface.
//! * [`SevGuestProvider`] — `SNP_GET_EXT_REPORT` on `/dev/sev-guest`, for
//!   SNP guests whose kernel lacks configfs-tsm.
//! * [`TdxGuestProvider`] — `/dev/tdx_guest`, which yields only a TDREPORT
//!   (not verifiable off the machine); it always refuses and says why.
//! * [`SimulatedProvider`] — **not confidential**: it signs its own report
//!   with a key it made at start-up, so its evidence only shows the report
//!   was not altered on the way. It is never chosen automatically.
//!
//! Every hardware provider checks that the report data inside the answer is
//! the 64 bytes it asked for, and builds SNP evidence from the report plus
//! the host's certificate table, or TDX evidence from the quote plus the
//! configured collateral ([`TdxCollateralSource`]). The device `ioctl`s live
//! in `cocoon-guest-device`; this crate stays free of `unsafe`.
//!
//! This module does not decide what goes into report data (the server binds
//! the claims with `claims_report_data`), and it never verifies evidence
//! (that is `cocoon-verifier`'s job).

use std::io::Read;
use std::path::Path;

use cocoon_attestation::bundle::PlatformEvidence;
use cocoon_attestation::simulated::{SimulatedReport, SIMULATED_LABEL};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha384};

mod configfs_tsm;
mod device;
mod platform;

pub use configfs_tsm::{ConfigfsTsmProvider, DEFAULT_ROOT as DEFAULT_TSM_ROOT};
pub use device::{SevGuestProvider, TdxGuestProvider};
pub use platform::TdxCollateralSource;

/// Why a provider cannot produce evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// A file or device the provider needs could not be read.
    #[error("attestation provider {provider}: cannot read {path}: {source}")]
    Io {
        /// The provider's kind.
        provider: &'static str,
        /// What it tried to read.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The platform refused or failed to produce a report.
    #[error("attestation provider {provider}: {reason}")]
    Platform {
        /// The provider's kind.
        provider: &'static str,
        /// What went wrong, in words an operator can act on.
        reason: String,
    },
}

/// Something that turns 64 bytes of report data into platform evidence.
///
/// Implementations must bind `report_data` verbatim into the evidence (the
/// hardware report's REPORT_DATA field), so the verifier can check it against
/// the claims. `evidence` may block (hardware providers talk to a device) and
/// is called at boot and whenever the evidence is refreshed.
pub trait AttestationProvider: Send + Sync {
    /// A short name for logs and errors: `"simulated"`, `"configfs-tsm"`,
    /// `"sev-guest"` or `"tdx-guest"`.
    fn kind(&self) -> &'static str;

    /// Platform evidence whose report data is exactly `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestError>;
}

/// Which provider the operator asked for (`--tee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TeeChoice {
    /// [`SimulatedProvider`]: NOT CONFIDENTIAL, only when named.
    Simulated,
    /// [`ConfigfsTsmProvider`].
    ConfigfsTsm,
    /// [`SevGuestProvider`].
    SevGuest,
    /// [`TdxGuestProvider`].
    TdxGuest,
    /// The first hardware interface present: configfs-tsm, then
    /// `/dev/sev-guest`, then `/dev/tdx_guest`. Never the simulator.
    Auto,
}

impl TeeChoice {
    /// Every name `--tee` accepts.
    pub const NAMES: &'static str = "configfs-tsm, sev-guest, tdx-guest, auto, simulated";
}

impl std::str::FromStr for TeeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<TeeChoice, String> {
        match s {
            "simulated" => Ok(TeeChoice::Simulated),
            "configfs-tsm" => Ok(TeeChoice::ConfigfsTsm),
            "sev-guest" => Ok(TeeChoice::SevGuest),
            "tdx-guest" => Ok(TeeChoice::TdxGuest),
            "auto" => Ok(TeeChoice::Auto),
            other => Err(format!(
                "unknown TEE provider {other:?} (choose one of: {})",
                TeeChoice::NAMES
            )),
        }
    }
}

/// Where the hardware providers look, and what they are configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareOptions {
    /// The configfs-tsm report root ([`DEFAULT_TSM_ROOT`]).
    pub tsm_root: std::path::PathBuf,
    /// The SEV guest device.
    pub sev_guest: std::path::PathBuf,
    /// The TDX guest device.
    pub tdx_guest: std::path::PathBuf,
    /// TDX collateral.
    pub tdx_collateral: TdxCollateralSource,
}

impl Default for HardwareOptions {
    fn default() -> Self {
        HardwareOptions {
            tsm_root: DEFAULT_TSM_ROOT.into(),
            sev_guest: cocoon_guest_device::sev_guest::DEVICE.into(),
            tdx_guest: cocoon_guest_device::tdx_guest::DEVICE.into(),
            tdx_collateral: TdxCollateralSource::none(),
        }
    }
}

/// What [`TeeChoice::Auto`] picks on this machine: the first of
/// configfs-tsm, `/dev/sev-guest`, `/dev/tdx_guest` that exists, or `None`.
pub fn detect_hardware(opts: &HardwareOptions) -> Option<TeeChoice> {
    if opts.tsm_root.is_dir() {
        Some(TeeChoice::ConfigfsTsm)
    } else if opts.sev_guest.exists() {
        Some(TeeChoice::SevGuest)
    } else if opts.tdx_guest.exists() {
        Some(TeeChoice::TdxGuest)
    } else {
        None
    }
}

/// Open the hardware provider `choice` names ([`TeeChoice::Auto`] resolved
/// by [`detect_hardware`]). [`TeeChoice::Simulated`] is refused here: the
/// simulator is made only where it is named, with [`SimulatedProvider::new`].
pub fn open_hardware(
    choice: TeeChoice,
    opts: &HardwareOptions,
) -> Result<std::sync::Arc<dyn AttestationProvider>, AttestError> {
    let choice = match choice {
        TeeChoice::Auto => detect_hardware(opts).ok_or_else(|| AttestError::Platform {
            provider: "auto",
            reason: format!(
                "no confidential-computing interface found (looked for {}, {} and {}): this is not an SEV-SNP or TDX guest, or its drivers are not loaded. The simulated TEE is never chosen automatically; name it with --tee simulated for tests (NOT confidential)",
                opts.tsm_root.display(),
                opts.sev_guest.display(),
                opts.tdx_guest.display()
            ),
        })?,
        c => c,
    };
    let provider: std::sync::Arc<dyn AttestationProvider> = match choice {
        TeeChoice::ConfigfsTsm => std::sync::Arc::new(ConfigfsTsmProvider::new(
            opts.tsm_root.clone(),
            opts.tdx_collateral.clone(),
        )?),
        TeeChoice::SevGuest => std::sync::Arc::new(SevGuestProvider::open(&opts.sev_guest)?),
        TeeChoice::TdxGuest => std::sync::Arc::new(TdxGuestProvider::open(&opts.tdx_guest)?),
        TeeChoice::Simulated | TeeChoice::Auto => {
            return Err(AttestError::Platform {
                provider: SimulatedProvider::KIND,
                reason: "the simulated TEE is not hardware; it is made only where named".into(),
            })
        }
    };
    Ok(provider)
}

/// The simulated TEE: a P-256 key made at start-up signs a
/// [`SimulatedReport`]. **NOT CONFIDENTIAL**: nothing isolates this process
/// from the host. For tests and demos only; the default verifier policy
/// refuses its evidence.
pub struct SimulatedProvider {
    key: SigningKey,
    public_key: Vec<u8>,
    measurement: [u8; 48],
}

impl std::fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProvider")
            .field("measurement", &hex::encode(self.measurement))
            .finish_non_exhaustive()
    }
}

impl SimulatedProvider {
    /// The provider's kind.
    pub const KIND: &'static str = "simulated";

    /// A provider whose measurement covers this process's own executable
    /// (read from `/proc/self/exe`) and `config_bytes` (the canonical config,
    /// [`crate::EnclaveConfig::to_canonical_toml`]).
    pub fn new(
        config_bytes: &[u8],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<SimulatedProvider, AttestError> {
        let measurement = measure_file(Path::new("/proc/self/exe"), config_bytes)?;
        Ok(SimulatedProvider::with_measurement(measurement, rng))
    }

    /// A provider whose measurement covers `image` instead of the running
    /// executable (tests, and hosts that pin a fixed simulated image).
    pub fn with_image_bytes(
        image: &[u8],
        config_bytes: &[u8],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> SimulatedProvider {
        SimulatedProvider::with_measurement(simulated_measurement(image, config_bytes), rng)
    }

    fn with_measurement(
        measurement: [u8; 48],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> SimulatedProvider {
        let key = SigningKey::random(rng);
        let public_key = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        tracing::warn!(
            measurement = %hex::encode(measurement),
            "SIMULATED TEE: NOT CONFIDENTIAL. There is no hardware isolation: the host can read every prompt, response and key of this enclave. Use only for tests and demos."
        );
        SimulatedProvider {
            key,
            public_key,
            measurement,
        }
    }

    /// The measurement this provider reports (self-computed: proves
    /// nothing), for pinning in a test policy.
    pub fn measurement(&self) -> [u8; 48] {
        self.measurement
    }

    /// The SEC1 (uncompressed) public key that signs the reports.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }
}

impl AttestationProvider for SimulatedProvider {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestError> {
        let report = SimulatedReport {
            label: SIMULATED_LABEL.into(),
            measurement: self.measurement,
            report_data: *report_data,
            public_key: self.public_key.clone(),
        }
        .to_cbor();
        let signature: Signature =
            self.key
                .try_sign(&report)
                .map_err(|_| AttestError::Platform {
                    provider: Self::KIND,
                    reason: "ECDSA signing of the simulated report failed".into(),
                })?;
        Ok(PlatformEvidence::Simulated {
            report,
            signature: signature.to_bytes().to_vec(),
        })
    }
}

/// The simulated measurement: SHA-384(image ‖ config_bytes).
pub fn simulated_measurement(image: &[u8], config_bytes: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(image);
    h.update(config_bytes);
    h.finalize().into()
}

/// SHA-384(file contents ‖ config_bytes), read in pieces.
fn measure_file(path: &Path, config_bytes: &[u8]) -> Result<[u8; 48], AttestError> {
    let io = |source| AttestError::Io {
        provider: SimulatedProvider::KIND,
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha384::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
    }
    h.update(config_bytes);
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::VerifyingKey;

    #[test]
    fn report_is_signed_by_the_key_inside_and_carries_report_data() {
        let p = SimulatedProvider::with_image_bytes(b"image", b"config", &mut rand_core::OsRng);
        assert_eq!(p.kind(), "simulated");
        assert_eq!(p.measurement(), simulated_measurement(b"image", b"config"));
        assert_ne!(p.measurement(), simulated_measurement(b"image", b"config2"));
        let rd = [0x42; 64];
        let PlatformEvidence::Simulated { report, signature } = p.evidence(&rd).unwrap() else {
            panic!("not simulated evidence");
        };
        let r = SimulatedReport::from_cbor(&report).unwrap();
        assert_eq!(r.label, SIMULATED_LABEL);
        assert_eq!(r.report_data, rd);
        assert_eq!(r.measurement, p.measurement());
        assert_eq!(r.public_key, p.public_key());
        assert_eq!(signature.len(), 64);
        let key = VerifyingKey::from_sec1_bytes(&r.public_key).unwrap();
        let sig = Signature::from_slice(&signature).unwrap();
        key.verify(&report, &sig).unwrap();
        let mut tampered = report.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.verify(&tampered, &sig).is_err());
    }

    #[test]
    fn auto_picks_hardware_in_order_and_never_the_simulator() {
        let dir = std::env::temp_dir().join(format!("cocoon-detect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut opts = HardwareOptions {
            tsm_root: dir.join("tsm/report"),
            sev_guest: dir.join("sev-guest"),
            tdx_guest: dir.join("tdx_guest"),
            tdx_collateral: TdxCollateralSource::none(),
        };
        assert_eq!(detect_hardware(&opts), None);
        let e = open_hardware(TeeChoice::Auto, &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("never chosen automatically"), "{e}");
        std::fs::write(&opts.tdx_guest, b"").unwrap();
        assert_eq!(detect_hardware(&opts), Some(TeeChoice::TdxGuest));
        std::fs::write(&opts.sev_guest, b"").unwrap();
        assert_eq!(detect_hardware(&opts), Some(TeeChoice::SevGuest));
        std::fs::create_dir_all(&opts.tsm_root).unwrap();
        assert_eq!(detect_hardware(&opts), Some(TeeChoice::ConfigfsTsm));
        let p = open_hardware(TeeChoice::Auto, &opts).unwrap();
        assert_eq!(p.kind(), "configfs-tsm");
        assert!(open_hardware(TeeChoice::Simulated, &opts).is_err());
        opts.tsm_root = dir.join("absent");
        let e = open_hardware(TeeChoice::ConfigfsTsm, &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("Linux 6.7"), "{e}");
        for (name, choice) in [
            ("simulated", TeeChoice::Simulated),
            ("configfs-tsm", TeeChoice::ConfigfsTsm),
            ("sev-guest", TeeChoice::SevGuest),
            ("tdx-guest", TeeChoice::TdxGuest),
            ("auto", TeeChoice::Auto),
        ] {
            assert_eq!(name.parse::<TeeChoice>(), Ok(choice));
        }
        assert!("sgx"
            .parse::<TeeChoice>()
            .unwrap_err()
            .contains("configfs-tsm"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tdx_guest_device_always_refuses_and_says_why() {
        // /dev/null stands in for the device: the ioctl fails (ENOTTY), and
        // the refusal still explains that a quote needs configfs-tsm.
        let p = TdxGuestProvider::open(Path::new("/dev/null")).unwrap();
        let e = p.evidence(&[0; 64]).unwrap_err().to_string();
        assert!(e.contains("TDX_CMD_GET_REPORT0"), "{e}");
        assert!(e.contains("configfs-tsm (Linux 6.7 or later"), "{e}");
        let e = SevGuestProvider::open(Path::new("/dev/null"))
            .unwrap()
            .evidence(&[0; 64])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SNP_GET_EXT_REPORT on /dev/null"), "{e}");
    }

    #[test]
    fn measures_its_own_executable() {
        let p = SimulatedProvider::new(b"cfg", &mut rand_core::OsRng).unwrap();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(p.measurement(), simulated_measurement(&exe, b"cfg"));
        let missing = measure_file(Path::new("/nonexistent/cocoon"), b"");
        assert!(matches!(missing, Err(AttestError::Io { .. })));
    }
}
