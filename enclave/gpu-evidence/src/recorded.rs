//! Recorded evidence, for tests and demos without a GPU.
//!
//! The file format is the one NVIDIA's nvtrust tools write (for example
//! `guest_tools/ppcie-verifier-sdk-cpp/tests/data/gpu_evidence.json`): a JSON
//! array, one object per device, in index order:
//!
//! ```json
//! [{"arch": "HOPPER", "nonce": "<64 hex>", "evidence": "<base64 report>",
//!   "certificate": "<base64 PEM chain>", "driver_version": "590.12",
//!   "vbios_version": "96.00.A5.00.01", "version": "1.0"}]
//! ```
//!
//! `driver_version` and `vbios_version` may be absent (switch recordings
//! have neither); every item must carry the same nonce.

use std::path::Path;

use base64::Engine as _;

use crate::{
    CcEnvironment, DeviceArch, DeviceEvidence, GpuEvidence, GpuEvidenceError, GpuEvidenceProvider,
    NONCE_LEN,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Serves evidence recorded earlier. NOT LIVE: its name says so, and it
/// answers only the nonce the recording was made with.
///
/// The nvtrust format records no system CC state. A GPU produces an
/// attestation report only in CC mode, so the evidence is reported with
/// `cc_enabled: true`, `dev_tools_mode: false` and
/// [`CcEnvironment::NotRecorded`]; [`with_cc_state`](Self::with_cc_state)
/// overrides that.
#[derive(Clone, Debug)]
pub struct RecordedProvider {
    evidence: GpuEvidence,
    name: String,
}

impl RecordedProvider {
    /// Read a recording from a file.
    pub fn from_file(path: &Path) -> Result<Self, GpuEvidenceError> {
        let bytes = std::fs::read(path).map_err(|source| GpuEvidenceError::RecordingIo {
            path: path.display().to_string(),
            source,
        })?;
        let mut provider = Self::from_json(&bytes)?;
        provider.name = format!("recorded evidence (NOT LIVE) from {}", path.display());
        Ok(provider)
    }

    /// Parse a recording.
    pub fn from_json(bytes: &[u8]) -> Result<Self, GpuEvidenceError> {
        let bad = |m: String| GpuEvidenceError::RecordingFormat(m);
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let items = value
            .as_array()
            .ok_or_else(|| bad("not a JSON array".into()))?;
        if items.is_empty() {
            return Err(bad("no devices".into()));
        }
        let mut nonce: Option<[u8; NONCE_LEN]> = None;
        let mut devices = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = |name: &str| -> Result<&str, GpuEvidenceError> {
                item[name]
                    .as_str()
                    .ok_or_else(|| bad(format!("item {i}: no string \"{name}\"")))
            };
            let optional = |name: &str| item[name].as_str().unwrap_or_default().to_owned();
            let item_nonce: [u8; NONCE_LEN] = hex::decode(field("nonce")?)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad(format!("item {i}: nonce is not 32 bytes of hex")))?;
            match nonce {
                None => nonce = Some(item_nonce),
                Some(n) if n == item_nonce => {}
                Some(_) => return Err(bad(format!("item {i}: a different nonce than item 0"))),
            }
            let report = B64
                .decode(field("evidence")?)
                .map_err(|e| bad(format!("item {i}: evidence is not base64: {e}")))?;
            let cert_chain = B64
                .decode(field("certificate")?)
                .map_err(|e| bad(format!("item {i}: certificate is not base64: {e}")))?;
            devices.push(DeviceEvidence {
                index: i as u32,
                arch: DeviceArch::from_name(field("arch")?),
                report,
                cert_chain,
                driver_version: optional("driver_version"),
                vbios_version: optional("vbios_version"),
            });
        }
        Ok(RecordedProvider {
            evidence: GpuEvidence {
                nonce: nonce.unwrap_or_default(),
                cc_enabled: true,
                dev_tools_mode: false,
                environment: CcEnvironment::NotRecorded,
                devices,
            },
            name: "recorded evidence (NOT LIVE)".into(),
        })
    }

    /// Report this CC state instead of the assumed one.
    pub fn with_cc_state(
        mut self,
        cc_enabled: bool,
        dev_tools_mode: bool,
        environment: CcEnvironment,
    ) -> Self {
        self.evidence.cc_enabled = cc_enabled;
        self.evidence.dev_tools_mode = dev_tools_mode;
        self.evidence.environment = environment;
        self
    }

    /// The nonce the recording was made with: the only one it answers.
    pub fn recorded_nonce(&self) -> [u8; NONCE_LEN] {
        self.evidence.nonce
    }

    /// Write `evidence` in the recording format (to record a live
    /// collection for later tests). The CC state is not part of the format.
    pub fn record(evidence: &GpuEvidence) -> String {
        let items: Vec<serde_json::Value> = evidence
            .devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "arch": match d.arch {
                        DeviceArch::Hopper => "HOPPER".to_string(),
                        DeviceArch::Ls10 => "LS10".to_string(),
                        DeviceArch::Other(v) => format!("OTHER_{v}"),
                    },
                    "nonce": hex::encode(evidence.nonce),
                    "evidence": B64.encode(&d.report),
                    "certificate": B64.encode(&d.cert_chain),
                    "driver_version": d.driver_version,
                    "vbios_version": d.vbios_version,
                    "version": "1.0",
                })
            })
            .collect();
        serde_json::to_string_pretty(&items).unwrap_or_default()
    }
}

impl GpuEvidenceProvider for RecordedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self, nonce: [u8; NONCE_LEN]) -> Result<GpuEvidence, GpuEvidenceError> {
        if nonce != self.evidence.nonce {
            return Err(GpuEvidenceError::RecordedNonceMismatch {
                recorded: hex::encode(self.evidence.nonce),
                requested: hex::encode(nonce),
            });
        }
        Ok(self.evidence.clone())
    }
}
