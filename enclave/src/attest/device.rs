//! The device providers: `/dev/sev-guest` and `/dev/tdx_guest`, the
//! fallbacks for guests whose kernel has no configfs-tsm.
//!
//! The ioctls live in `cocoon-guest-device` (the only crate with `unsafe` on
//! this path); this module turns their answers into evidence with the same
//! checks as configfs-tsm ([`super::platform`]).

use std::path::Path;

use cocoon_attestation::bundle::PlatformEvidence;
use cocoon_guest_device::sev_guest::SevGuest;
use cocoon_guest_device::tdx_guest::TdxGuest;

use super::platform::snp_evidence;
use super::{AttestError, AttestationProvider};

/// SEV-SNP reports through `SNP_GET_EXT_REPORT` on `/dev/sev-guest`, with the
/// certificates the host supplies.
#[derive(Debug)]
pub struct SevGuestProvider {
    device: SevGuest,
    vmpl: u32,
}

impl SevGuestProvider {
    /// The provider's kind.
    pub const KIND: &'static str = "sev-guest";

    /// Open the device at `path` (normally
    /// [`cocoon_guest_device::sev_guest::DEVICE`]); reports are asked for at
    /// VMPL 0.
    pub fn open(path: &Path) -> Result<SevGuestProvider, AttestError> {
        let device = SevGuest::open_path(path).map_err(|e| AttestError::Platform {
            provider: Self::KIND,
            reason: e.to_string(),
        })?;
        Ok(SevGuestProvider { device, vmpl: 0 })
    }

    /// Ask for reports at this VMPL instead of 0.
    pub fn with_vmpl(mut self, vmpl: u32) -> SevGuestProvider {
        self.vmpl = vmpl;
        self
    }
}

impl AttestationProvider for SevGuestProvider {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestError> {
        let ext = self
            .device
            .get_ext_report(report_data, self.vmpl)
            .map_err(|e| AttestError::Platform {
                provider: Self::KIND,
                reason: e.to_string(),
            })?;
        snp_evidence(Self::KIND, ext.report, &ext.certs, report_data)
    }
}

/// `/dev/tdx_guest`: yields only a TDREPORT, which no one off this machine
/// can verify, so [`evidence`](AttestationProvider::evidence) always fails
/// and says why (after checking that the device answers, and with what
/// MRTD, which helps whoever debugs an image).
#[derive(Debug)]
pub struct TdxGuestProvider {
    device: TdxGuest,
}

impl TdxGuestProvider {
    /// The provider's kind.
    pub const KIND: &'static str = "tdx-guest";

    /// Open the device at `path` (normally
    /// [`cocoon_guest_device::tdx_guest::DEVICE`]).
    pub fn open(path: &Path) -> Result<TdxGuestProvider, AttestError> {
        let device = TdxGuest::open_path(path).map_err(|e| AttestError::Platform {
            provider: Self::KIND,
            reason: e.to_string(),
        })?;
        Ok(TdxGuestProvider { device })
    }
}

impl AttestationProvider for TdxGuestProvider {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestError> {
        const WHY: &str = "a TDREPORT is MAC'd with a key only this CPU holds, so no verifier can check it; a verifiable TDX quote needs configfs-tsm (Linux 6.7 or later, /sys/kernel/config/tsm/report): boot a newer guest kernel and use --tee configfs-tsm";
        let reason = match self.device.get_report0(report_data) {
            Ok(r) if r.report_data() == report_data => format!(
                "/dev/tdx_guest works (TDREPORT with MRTD {}) but upstream Linux has no ioctl that turns it into a quote: {WHY}",
                hex::encode(r.mrtd())
            ),
            Ok(_) => format!(
                "/dev/tdx_guest returned a TDREPORT with other report data than asked for; and in any case {WHY}"
            ),
            Err(e) => format!("{e}; and in any case {WHY}"),
        };
        Err(AttestError::Platform {
            provider: Self::KIND,
            reason,
        })
    }
}
