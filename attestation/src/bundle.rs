//! The evidence bundle and the enclave's claims.
//!
//! Owns the wire form (CBOR) of what an enclave publishes: platform evidence
//! (an SNP report with its certificates, or a TDX quote with its collateral)
//! plus the claims the enclave makes about itself (its HPKE and receipt
//! keys, image, models, config, GPU evidence, epoch), and the binding of
//! those claims into the hardware report:
//!
//! ```text
//! report_data = SHA-512("cocoon-claims-v1" || claims_cbor)
//! ```
//!
//! where `claims_cbor` is the exact byte string carried in the bundle. The
//! verifier hashes those bytes, compares with the report, and only then
//! decodes them. Decoding is strict: unknown keys, wrong sizes, trailing
//! bytes and oversized inputs are errors.

use ciborium::Value;
use sha2::{Digest, Sha512};

use crate::cbor::{self, CborError, MapReader};
use crate::collateral::{CollateralError, TdxCollateral};
use crate::nvidia::GpuCollateral;

/// Domain separator of the claims binding.
pub const CLAIMS_DOMAIN: &[u8] = b"cocoon-claims-v1";
/// Most bytes of a bundle accepted.
pub const MAX_BUNDLE: usize = 2 << 20;
/// Most bytes of encoded claims accepted.
pub const MAX_CLAIMS: usize = 64 << 10;
/// Bundle format version.
pub const BUNDLE_VERSION: u64 = 1;

/// One model the enclave serves, named with the SHA-256 of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDigest {
    /// The name clients ask for.
    pub name: String,
    /// SHA-256 of the model file.
    pub sha256: [u8; 32],
    /// The model's version: with the name, its identity `name@version`.
    /// Wire key `version`, absent when `None`.
    pub version: Option<String>,
    /// SHA-256 of its tokenizer file. Wire key `tokenizer_sha256`, absent
    /// when `None`.
    pub tokenizer_sha256: Option<[u8; 32]>,
}

/// What the enclave says about itself, bound into the hardware report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// HPKE public key requests are sealed to.
    pub hpke_public_key: Vec<u8>,
    /// Public key (SEC1) that signs usage receipts.
    pub receipt_public_key: Vec<u8>,
    /// Image release the enclave believes it runs (the measurement proves it).
    pub image_id: String,
    /// Models served.
    pub model_digests: Vec<ModelDigest>,
    /// SHA-256 of the enclave's configuration.
    pub config_digest: [u8; 32],
    /// SHA-256 of the GPU evidence taken at this epoch, when a GPU is used.
    pub gpu_evidence_digest: Option<[u8; 32]>,
    /// The enclave's session: the Unix time (seconds) its keys were made at
    /// boot. Stays the same for every report of one boot; the GPU session
    /// nonce is derived from it and the HPKE key.
    pub epoch: u64,
    /// When this report was made (Unix seconds, the enclave's clock): the
    /// enclave re-attests on a timer and on a client's nonce, with the same
    /// keys, and a policy's `max_evidence_age` bounds how old it may be.
    pub issued_at: u64,
    /// Which report of this boot this is: 0 at boot, one more at every
    /// re-attestation on the timer (reports for a client nonce carry the
    /// counter of the newest timed one).
    pub refresh: u64,
    /// A nonce the client asked to be bound, if any.
    pub client_nonce: Option<Vec<u8>>,
    /// The dm-verity root hash of the disk the enclave's code and models
    /// were read from (the measured image's root disk), when it runs from
    /// one. Wire key `disk_verity_root`, absent when `None`.
    pub disk_verity_root: Option<[u8; 32]>,
    /// The provider's settings this enclave took at boot (canonical CBOR
    /// of `cocoon_protocol::settings::ProviderSettings`: base prices within
    /// the release's bounds, the payment contract), when the release takes
    /// them from the provider: not measured, so bound here, where a client
    /// sees what it will be charged. Wire key `provider_settings`, absent
    /// when `None`.
    pub provider_settings: Option<Vec<u8>>,
}

impl Claims {
    /// Encode as canonical CBOR (fixed key order).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut e = vec![
            (
                "hpke_public_key",
                Value::Bytes(self.hpke_public_key.clone()),
            ),
            (
                "receipt_public_key",
                Value::Bytes(self.receipt_public_key.clone()),
            ),
            ("image_id", Value::Text(self.image_id.clone())),
            (
                "model_digests",
                Value::Array(
                    self.model_digests
                        .iter()
                        .map(|m| {
                            let mut e = vec![
                                ("name", Value::Text(m.name.clone())),
                                ("sha256", Value::Bytes(m.sha256.to_vec())),
                            ];
                            if let Some(v) = &m.version {
                                e.push(("version", Value::Text(v.clone())));
                            }
                            if let Some(t) = &m.tokenizer_sha256 {
                                e.push(("tokenizer_sha256", Value::Bytes(t.to_vec())));
                            }
                            cbor::map(e)
                        })
                        .collect(),
                ),
            ),
            ("config_digest", Value::Bytes(self.config_digest.to_vec())),
            ("epoch", Value::Integer(self.epoch.into())),
            ("issued_at", Value::Integer(self.issued_at.into())),
            ("refresh", Value::Integer(self.refresh.into())),
        ];
        if let Some(d) = &self.gpu_evidence_digest {
            e.push(("gpu_evidence_digest", Value::Bytes(d.to_vec())));
        }
        if let Some(n) = &self.client_nonce {
            e.push(("client_nonce", Value::Bytes(n.clone())));
        }
        if let Some(r) = &self.disk_verity_root {
            e.push(("disk_verity_root", Value::Bytes(r.to_vec())));
        }
        if let Some(p) = &self.provider_settings {
            e.push(("provider_settings", Value::Bytes(p.clone())));
        }
        cbor::encode(&cbor::map(e))
    }

    /// Decode from CBOR, strictly.
    pub fn from_cbor(bytes: &[u8]) -> Result<Claims, CborError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_CLAIMS)?, "claims")?;
        let models = match m.take("model_digests")? {
            Value::Array(a) => a
                .into_iter()
                .map(|v| {
                    let mut mm = MapReader::new(v, "claims.model_digests[]")?;
                    let d = ModelDigest {
                        name: mm.text("name")?,
                        sha256: mm.array::<32>("sha256")?,
                        version: mm.text_opt("version")?,
                        tokenizer_sha256: opt32(
                            mm.bytes_opt("tokenizer_sha256")?,
                            "claims.model_digests[].tokenizer_sha256",
                        )?,
                    };
                    mm.finish()?;
                    Ok(d)
                })
                .collect::<Result<Vec<_>, CborError>>()?,
            _ => {
                return Err(CborError::Invalid(
                    "claims.model_digests".into(),
                    "expected an array".into(),
                ))
            }
        };
        let gpu = opt32(
            m.bytes_opt("gpu_evidence_digest")?,
            "claims.gpu_evidence_digest",
        )?;
        let c = Claims {
            hpke_public_key: m.bytes("hpke_public_key")?,
            receipt_public_key: m.bytes("receipt_public_key")?,
            image_id: m.text("image_id")?,
            model_digests: models,
            config_digest: m.array::<32>("config_digest")?,
            gpu_evidence_digest: gpu,
            epoch: m.u64("epoch")?,
            issued_at: m.u64("issued_at")?,
            refresh: m.u64("refresh")?,
            client_nonce: m.bytes_opt("client_nonce")?,
            disk_verity_root: opt32(m.bytes_opt("disk_verity_root")?, "claims.disk_verity_root")?,
            provider_settings: m.bytes_opt("provider_settings")?,
        };
        m.finish()?;
        Ok(c)
    }
}

/// An optional 32-byte field.
fn opt32(b: Option<Vec<u8>>, what: &str) -> Result<Option<[u8; 32]>, CborError> {
    b.map(|b| {
        <[u8; 32]>::try_from(b.as_slice())
            .map_err(|_| CborError::Invalid(what.into(), "expected 32 bytes".into()))
    })
    .transpose()
}

/// The report data that binds `claims_cbor`: SHA-512("cocoon-claims-v1" || claims_cbor).
pub fn claims_report_data(claims_cbor: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(CLAIMS_DOMAIN);
    h.update(claims_cbor);
    h.finalize().into()
}

/// Hardware evidence of one platform kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlatformEvidence {
    /// AMD SEV-SNP: the raw report, the VCEK/VLEK (DER or PEM), and
    /// optionally the ASK/ASVK + ARK (PEM; empty for the bundled ones) and
    /// AMD's CRL for the product.
    Snp {
        /// Raw 1184-byte report.
        report: Vec<u8>,
        /// VCEK or VLEK certificate.
        vek: Vec<u8>,
        /// Intermediate and root certificates, or empty.
        chain: Vec<u8>,
        /// AMD's CRL for the product (DER), signed by its ARK: collateral,
        /// not bound into the claims (its own signature makes it
        /// trustworthy, and the host refreshes it). Wire key `crl`, absent
        /// when `None` (bundles without it decode as before).
        crl: Option<Vec<u8>>,
    },
    /// The simulated TEE (NOT confidential): a CBOR
    /// [`SimulatedReport`](crate::simulated::SimulatedReport) and its ECDSA
    /// P-256/SHA-256 signature (r || s) by the key inside it.
    Simulated {
        /// CBOR of the simulated report (the signed bytes).
        report: Vec<u8>,
        /// 64-byte fixed-width signature.
        signature: Vec<u8>,
    },
    /// Intel TDX: the raw DCAP quote and its collateral.
    Tdx {
        /// Raw quote (v4 or v5).
        quote: Vec<u8>,
        /// Collateral for offline verification.
        collateral: TdxCollateral,
    },
}

/// Platform evidence plus the claims it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceBundle {
    /// The hardware evidence.
    pub platform: PlatformEvidence,
    /// CBOR of [`Claims`], exactly the bytes that were hashed into report_data.
    pub claims_cbor: Vec<u8>,
    /// GPU evidence, when the enclave uses GPUs.
    pub gpu: Option<GpuBundle>,
}

/// GPU evidence in a bundle: the exact bytes whose SHA-256 the claims carry,
/// plus NVIDIA-signed collateral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuBundle {
    /// CBOR of [`GpuEvidence`](crate::nvidia::GpuEvidence).
    pub evidence_cbor: Vec<u8>,
    /// RIMs and OCSP responses.
    pub collateral: GpuCollateral,
}

/// Why bytes are not a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// CBOR structure problem.
    #[error("evidence bundle: {0}")]
    Cbor(#[from] CborError),
    /// Collateral problem.
    #[error("evidence bundle: {0}")]
    Collateral(#[from] CollateralError),
    /// A version or platform type this build does not know.
    #[error("evidence bundle: {0}")]
    Unsupported(String),
}

impl EvidenceBundle {
    /// Encode as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        let platform = match &self.platform {
            PlatformEvidence::Snp {
                report,
                vek,
                chain,
                crl,
            } => {
                let mut e = vec![
                    ("type", Value::Text("snp".into())),
                    ("report", Value::Bytes(report.clone())),
                    ("vek", Value::Bytes(vek.clone())),
                    ("chain", Value::Bytes(chain.clone())),
                ];
                if let Some(crl) = crl {
                    e.push(("crl", Value::Bytes(crl.clone())));
                }
                cbor::map(e)
            }
            PlatformEvidence::Simulated { report, signature } => cbor::map(vec![
                ("type", Value::Text("simulated".into())),
                ("report", Value::Bytes(report.clone())),
                ("signature", Value::Bytes(signature.clone())),
            ]),
            PlatformEvidence::Tdx { quote, collateral } => cbor::map(vec![
                ("type", Value::Text("tdx".into())),
                ("quote", Value::Bytes(quote.clone())),
                ("collateral", collateral.to_cbor_value()),
            ]),
        };
        let mut entries = vec![
            ("version", Value::Integer(BUNDLE_VERSION.into())),
            ("platform", platform),
            ("claims", Value::Bytes(self.claims_cbor.clone())),
        ];
        if let Some(g) = &self.gpu {
            entries.push((
                "gpu",
                cbor::map(vec![
                    ("evidence", Value::Bytes(g.evidence_cbor.clone())),
                    ("collateral", g.collateral.to_cbor_value()),
                ]),
            ));
        }
        cbor::encode(&cbor::map(entries))
    }

    /// Attach AMD's CRL as the SNP platform's collateral, replacing any
    /// earlier one: the host does this with the CRL it keeps current
    /// ([`crate::kds::CrlCache`]). The claims and the report are untouched
    /// (the CRL is not bound; the ARK's signature vouches for it). `false`
    /// for evidence of another platform, which is left as it is.
    pub fn attach_snp_crl(&mut self, crl: Vec<u8>) -> bool {
        match &mut self.platform {
            PlatformEvidence::Snp { crl: slot, .. } => {
                *slot = Some(crl);
                true
            }
            _ => false,
        }
    }

    /// Attach the VCEK (DER) the host fetched for an SNP report that came
    /// without one. Only an empty VEK slot is filled: a certificate the
    /// enclave sent is never replaced (the verifier judges it either way;
    /// its hwID and TCB extensions must match the report). `false` when
    /// nothing was attached.
    pub fn attach_snp_vek(&mut self, vek: Vec<u8>) -> bool {
        match &mut self.platform {
            PlatformEvidence::Snp { vek: slot, .. } if slot.is_empty() => {
                *slot = vek;
                true
            }
            _ => false,
        }
    }

    /// Put `collateral` into a TDX bundle's collateral slot, replacing what
    /// the enclave sent: the host does this with the collateral it keeps
    /// current ([`crate::pcs::CollateralCache`]) when the enclave's is
    /// incomplete or expires sooner (the host decides which). The quote and
    /// the claims are untouched (collateral is not bound; Intel's
    /// signatures vouch for it). `false` for evidence of another platform.
    pub fn attach_tdx_collateral(&mut self, collateral: TdxCollateral) -> bool {
        match &mut self.platform {
            PlatformEvidence::Tdx {
                collateral: slot, ..
            } => {
                *slot = collateral;
                true
            }
            _ => false,
        }
    }

    /// Decode from CBOR, strictly.
    pub fn from_cbor(bytes: &[u8]) -> Result<EvidenceBundle, BundleError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_BUNDLE)?, "bundle")?;
        let version = m.u64("version")?;
        if version != BUNDLE_VERSION {
            return Err(BundleError::Unsupported(format!(
                "bundle version {version} (this build reads {BUNDLE_VERSION})"
            )));
        }
        let mut p = MapReader::new(m.take("platform")?, "bundle.platform")?;
        let platform = match p.text("type")?.as_str() {
            "snp" => PlatformEvidence::Snp {
                report: p.bytes("report")?,
                vek: p.bytes("vek")?,
                chain: p.bytes("chain")?,
                crl: p.bytes_opt("crl")?,
            },
            "simulated" => PlatformEvidence::Simulated {
                report: p.bytes("report")?,
                signature: p.bytes("signature")?,
            },
            "tdx" => PlatformEvidence::Tdx {
                quote: p.bytes("quote")?,
                collateral: TdxCollateral::from_cbor_value(p.take("collateral")?)?,
            },
            other => return Err(BundleError::Unsupported(format!("platform type {other:?}"))),
        };
        p.finish()?;
        let claims_cbor = m.bytes("claims")?;
        let gpu = match m.take_opt("gpu") {
            None => None,
            Some(v) => {
                let mut g = MapReader::new(v, "bundle.gpu")?;
                let b = GpuBundle {
                    evidence_cbor: g.bytes("evidence")?,
                    collateral: GpuCollateral::from_cbor_value(g.take("collateral")?)?,
                };
                g.finish()?;
                Some(b)
            }
        };
        m.finish()?;
        Ok(EvidenceBundle {
            platform,
            claims_cbor,
            gpu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            hpke_public_key: vec![1; 32],
            receipt_public_key: vec![2; 65],
            image_id: "cocoon-image-2026.11".into(),
            model_digests: vec![ModelDigest {
                name: "minilm".into(),
                sha256: [3; 32],
                version: None,
                tokenizer_sha256: None,
            }],
            config_digest: [4; 32],
            gpu_evidence_digest: None,
            epoch: 7,
            issued_at: 607,
            refresh: 1,
            client_nonce: Some(vec![9; 16]),
            disk_verity_root: None,
            provider_settings: None,
        }
    }

    #[test]
    fn claims_round_trip_and_bind() {
        let c = claims();
        let bytes = c.to_cbor();
        assert_eq!(Claims::from_cbor(&bytes).unwrap(), c);
        assert_eq!(c.to_cbor(), bytes, "encoding is deterministic");
        let rd = claims_report_data(&bytes);
        let mut other = c.clone();
        other.epoch = 8;
        assert_ne!(claims_report_data(&other.to_cbor()), rd);
    }

    #[test]
    fn bundle_round_trip_and_strictness() {
        let b = EvidenceBundle {
            platform: PlatformEvidence::Snp {
                report: vec![0; 1184],
                vek: vec![1, 2],
                chain: vec![],
                crl: Some(vec![0x30, 0]),
            },
            claims_cbor: claims().to_cbor(),
            gpu: Some(GpuBundle {
                evidence_cbor: vec![0xA0],
                collateral: GpuCollateral {
                    rims: vec![b"<x/>".to_vec()],
                    ocsp: vec![vec![0x30, 0]],
                },
            }),
        };
        let bytes = b.to_cbor();
        assert_eq!(EvidenceBundle::from_cbor(&bytes).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(EvidenceBundle::from_cbor(&bytes[..cut]).is_err());
        }
        // Without a CRL the wire form has no `crl` key: bundles written
        // before the field existed decode the same.
        let mut without = b.clone();
        if let PlatformEvidence::Snp { crl, .. } = &mut without.platform {
            *crl = None;
        }
        let old = without.to_cbor();
        assert!(!old.windows(3).any(|w| w == b"crl"));
        assert_eq!(EvidenceBundle::from_cbor(&old).unwrap(), without);
        // The host attaches (or replaces) it without touching the claims.
        let mut attached = without.clone();
        assert!(attached.attach_snp_crl(vec![0x30, 0]));
        assert_eq!(attached, b);
        assert_eq!(attached.claims_cbor, without.claims_cbor);
        let mut sim = EvidenceBundle {
            platform: PlatformEvidence::Simulated {
                report: vec![],
                signature: vec![],
            },
            ..b.clone()
        };
        assert!(!sim.attach_snp_crl(vec![1]));
        assert!(!sim.attach_snp_vek(vec![1]));
        // A VEK fills an empty slot only.
        let mut no_vek = b.clone();
        assert!(!no_vek.attach_snp_vek(vec![9]));
        assert_eq!(no_vek, b);
        if let PlatformEvidence::Snp { vek, .. } = &mut no_vek.platform {
            vek.clear();
        }
        assert!(no_vek.attach_snp_vek(vec![1, 2]));
        assert_eq!(no_vek, b);
        // TDX collateral goes into the TDX slot, nowhere else.
        let c = TdxCollateral {
            pck_crl_issuer_chain: String::new(),
            root_ca_crl: None,
            pck_crl: None,
            tcb_info_issuer_chain: String::new(),
            tcb_info: String::new(),
            tcb_info_signature: vec![],
            qe_identity_issuer_chain: String::new(),
            qe_identity: String::new(),
            qe_identity_signature: vec![],
        };
        assert!(!sim.attach_tdx_collateral(c.clone()));
        let mut tdx = EvidenceBundle {
            platform: PlatformEvidence::Tdx {
                quote: vec![1],
                collateral: c.clone(),
            },
            ..b.clone()
        };
        let mut newer = c.clone();
        newer.pck_crl = Some(vec![0x30, 0]);
        assert!(tdx.attach_tdx_collateral(newer.clone()));
        assert!(
            matches!(&tdx.platform, PlatformEvidence::Tdx { collateral, .. } if *collateral == newer)
        );
        assert_eq!(tdx.claims_cbor, b.claims_cbor);
        // A `crl` that is not a byte string is refused.
        let bad = cbor::encode(&cbor::map(vec![
            ("version", Value::Integer(1.into())),
            (
                "platform",
                cbor::map(vec![
                    ("type", Value::Text("snp".into())),
                    ("report", Value::Bytes(vec![])),
                    ("vek", Value::Bytes(vec![])),
                    ("chain", Value::Bytes(vec![])),
                    ("crl", Value::Text("x".into())),
                ]),
            ),
            ("claims", Value::Bytes(vec![])),
        ]));
        assert!(EvidenceBundle::from_cbor(&bad).is_err());
        let unknown = cbor::encode(&cbor::map(vec![
            ("version", Value::Integer(1.into())),
            (
                "platform",
                cbor::map(vec![("type", Value::Text("sev-es".into()))]),
            ),
            ("claims", Value::Bytes(vec![])),
        ]));
        assert!(matches!(
            EvidenceBundle::from_cbor(&unknown),
            Err(BundleError::Unsupported(_))
        ));
    }
}
