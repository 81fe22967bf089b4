//! GPU evidence at boot: the nonce bound to this enclave's keys, the
//! evidence every GPU signs for it, and the collateral carried beside it.
//!
//! The nonce is `SHA-256("cocoon-gpu-nonce-v1" || hpke_public_key ||
//! epoch)` ([`session_nonce`]): the HPKE key is made at this boot and never
//! leaves the VM, so the evidence cannot be replayed into another enclave
//! or epoch. The evidence set's SHA-256 goes into the claims, and the claims
//! into the hardware report, so a client that verifies the bundle knows the
//! GPUs that will see its data.

use std::sync::Arc;

use cocoon_attestation::bundle::GpuBundle;
use cocoon_attestation::nvidia::{session_nonce, DeviceEvidence, GpuCollateral, GpuEvidence};
use cocoon_gpu_evidence::{GpuEvidenceError, GpuEvidenceProvider, NvmlProvider};

use crate::config::{GpuConfig, GpuEvidenceSource};

/// Why GPU evidence could not be set up or taken.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The driver interface failed.
    #[error("GPU evidence: {0}")]
    Provider(#[from] GpuEvidenceError),
    /// A collateral file could not be read.
    #[error("GPU collateral {path}: {source}")]
    Collateral {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The driver returned no GPU.
    #[error("GPU evidence: the driver reports no GPU, but the configuration has a [gpu] table")]
    NoGpu,
    /// The GPUs are not in confidential-computing mode, or developer-tools
    /// mode is on: no model may run on them.
    #[error(
        "GPU evidence: the driver reports confidential-computing mode {cc} and developer-tools mode {devtools}; \
         the enclave runs models only on GPUs with CC mode on and developer tools off (set them with NVIDIA's \
         gpu-admin-tools on the host and reboot the VM)"
    )]
    NotConfidential {
        /// "on" or "off".
        cc: &'static str,
        /// "on" or "off".
        devtools: &'static str,
    },
}

/// A GPU evidence source with the collateral to carry.
#[derive(Clone)]
pub struct GpuSetup {
    provider: Arc<dyn GpuEvidenceProvider>,
    collateral: GpuCollateral,
}

impl std::fmt::Debug for GpuSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSetup")
            .field("provider", &self.provider.name())
            .field("rims", &self.collateral.rims.len())
            .field("ocsp", &self.collateral.ocsp.len())
            .finish()
    }
}

impl GpuSetup {
    /// Open the configured provider and read the collateral files.
    pub fn from_config(c: &GpuConfig) -> Result<GpuSetup, GpuError> {
        let provider: Arc<dyn GpuEvidenceProvider> = match c.evidence {
            GpuEvidenceSource::Nvml => Arc::new(match &c.library {
                Some(path) => NvmlProvider::open_path(std::path::Path::new(path))?,
                None => NvmlProvider::open()?,
            }),
        };
        let read = |p: &String| {
            std::fs::read(p).map_err(|source| GpuError::Collateral {
                path: p.clone(),
                source,
            })
        };
        let collateral = GpuCollateral {
            rims: c.rims.iter().map(read).collect::<Result<_, _>>()?,
            ocsp: c.ocsp.iter().map(read).collect::<Result<_, _>>()?,
        };
        Ok(GpuSetup {
            provider,
            collateral,
        })
    }

    /// A setup over any provider (tests, other drivers).
    pub fn new(provider: Arc<dyn GpuEvidenceProvider>, collateral: GpuCollateral) -> GpuSetup {
        GpuSetup {
            provider,
            collateral,
        }
    }

    /// The provider's name, for logs.
    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    /// Take evidence for the session nonce of (`hpke_public_key`, `epoch`)
    /// and return the bundle section and its digest for the claims.
    pub fn take(
        &self,
        hpke_public_key: &[u8],
        epoch: u64,
    ) -> Result<(GpuBundle, [u8; 32]), GpuError> {
        let nonce = session_nonce(hpke_public_key, epoch);
        let e = self.provider.collect(nonce)?;
        if e.devices.is_empty() {
            return Err(GpuError::NoGpu);
        }
        // The driver's word is informational for a verifier (the client
        // checks the signed reports), but the enclave itself refuses to
        // boot on GPUs that say they are not confidential.
        if !e.cc_enabled || e.dev_tools_mode {
            let on_off = |b: bool| if b { "on" } else { "off" };
            return Err(GpuError::NotConfidential {
                cc: on_off(e.cc_enabled),
                devtools: on_off(e.dev_tools_mode),
            });
        }
        let set = GpuEvidence {
            nonce,
            cc_enabled: e.cc_enabled,
            devtools: e.dev_tools_mode,
            devices: e
                .devices
                .into_iter()
                .map(|d| DeviceEvidence {
                    report: d.report,
                    cert_chain: d.cert_chain,
                })
                .collect(),
        };
        let digest = set.digest();
        Ok((
            GpuBundle {
                evidence_cbor: set.to_cbor(),
                collateral: self.collateral.clone(),
            },
            digest,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_gpu_evidence::{
        CcEnvironment, DeviceArch, DeviceEvidence as DriverDevice, GpuEvidence as DriverEvidence,
    };

    /// Answers with one device and the CC state it was made with.
    struct Driver {
        cc: bool,
        devtools: bool,
    }

    impl GpuEvidenceProvider for Driver {
        fn name(&self) -> &str {
            "unit-test driver state"
        }

        fn collect(&self, nonce: [u8; 32]) -> Result<DriverEvidence, GpuEvidenceError> {
            Ok(DriverEvidence {
                nonce,
                cc_enabled: self.cc,
                dev_tools_mode: self.devtools,
                environment: CcEnvironment::Production,
                devices: vec![DriverDevice {
                    index: 0,
                    arch: DeviceArch::Hopper,
                    report: vec![0; 8],
                    cert_chain: Vec::new(),
                    driver_version: "550.90.07".into(),
                    vbios_version: "96.00.9F.00.01".into(),
                }],
            })
        }
    }

    #[test]
    fn gpus_that_are_not_confidential_refuse_the_boot() {
        let setup = |cc, devtools| {
            GpuSetup::new(Arc::new(Driver { cc, devtools }), GpuCollateral::default())
        };
        assert!(setup(true, false).take(&[1; 32], 1).is_ok());
        for (cc, devtools) in [(false, false), (true, true), (false, true)] {
            let e = setup(cc, devtools).take(&[1; 32], 1).unwrap_err();
            assert!(matches!(e, GpuError::NotConfidential { .. }), "{e}");
            assert!(e.to_string().contains("CC mode on and developer tools off"));
        }
    }
}
