//! The simulated TEE: evidence for demos and tests on machines without
//! SEV-SNP or TDX. It is **not confidential**: nothing isolates the
//! "enclave" from the host, and the signing key is made by the process
//! itself at start-up, so a signature only shows the report was not altered
//! in transit. Its report says so in its label, and the verifier refuses it
//! unless the policy names the dangerous opt-in.
//!
//! Owns the simulated report's CBOR form. Signing lives with the enclave's
//! attestation provider; verification in `cocoon-verifier`.

use ciborium::Value;

use crate::cbor::{self, CborError, MapReader};

/// The label every simulated report carries, verbatim.
pub const SIMULATED_LABEL: &str =
    "cocoon-simulated-tee-v1: NOT CONFIDENTIAL, NO HARDWARE ISOLATION";
/// Most bytes of a simulated report accepted.
pub const MAX_SIMULATED_REPORT: usize = 4096;

/// What a simulated enclave reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedReport {
    /// Always [`SIMULATED_LABEL`].
    pub label: String,
    /// A digest of the enclave binary and configuration, standing in for a
    /// launch measurement (computed by the enclave itself: proves nothing).
    pub measurement: [u8; 48],
    /// Report data, bound to the claims as for real TEEs.
    pub report_data: [u8; 64],
    /// The P-256 public key (SEC1) made at start-up that signs this report.
    pub public_key: Vec<u8>,
}

impl SimulatedReport {
    /// Encode as canonical CBOR (the bytes that are signed).
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![
            ("label", Value::Text(self.label.clone())),
            ("measurement", Value::Bytes(self.measurement.to_vec())),
            ("report_data", Value::Bytes(self.report_data.to_vec())),
            ("public_key", Value::Bytes(self.public_key.clone())),
        ]))
    }

    /// Decode strictly.
    pub fn from_cbor(bytes: &[u8]) -> Result<SimulatedReport, CborError> {
        let mut m = MapReader::new(
            cbor::decode(bytes, MAX_SIMULATED_REPORT)?,
            "simulated_report",
        )?;
        let r = SimulatedReport {
            label: m.text("label")?,
            measurement: m.array::<48>("measurement")?,
            report_data: m.array::<64>("report_data")?,
            public_key: m.bytes("public_key")?,
        };
        m.finish()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let r = SimulatedReport {
            label: SIMULATED_LABEL.into(),
            measurement: [1; 48],
            report_data: [2; 64],
            public_key: vec![4; 65],
        };
        let b = r.to_cbor();
        assert_eq!(SimulatedReport::from_cbor(&b).unwrap(), r);
        for cut in 0..b.len() {
            assert!(SimulatedReport::from_cbor(&b[..cut]).is_err());
        }
    }
}
