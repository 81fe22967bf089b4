//! Turning what a guest driver returned into [`PlatformEvidence`], with the
//! checks every hardware provider owes its caller.
//!
//! Shared by the configfs-tsm and device providers: the SNP report and the
//! host's certificate table become `PlatformEvidence::Snp`; a TDX quote and
//! the configured collateral become `PlatformEvidence::Tdx`. Either way the
//! report data inside the hardware's answer must equal the 64 bytes asked
//! for, or the evidence is refused: a provider that returned someone else's
//! report would bind the wrong claims.
//!
//! Nothing here verifies signatures or certificates (that is
//! `cocoon-verifier`'s job, done by every client); the report data check is
//! the provider's own sanity check against a confused or hostile host.

use std::path::{Path, PathBuf};

use cocoon_attestation::bundle::PlatformEvidence;
use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::snp::{SigningKey, SnpReport};
use cocoon_attestation::snp_certs::{CertTable, Guid, ENTRY_SIZE};
use cocoon_attestation::tdx::Quote;

use super::AttestError;

/// Most bytes of a collateral file read.
const MAX_COLLATERAL_FILE: u64 = 4 << 20;

fn platform(provider: &'static str, reason: impl Into<String>) -> AttestError {
    AttestError::Platform {
        provider,
        reason: reason.into(),
    }
}

/// `PlatformEvidence::Snp` from a report and the host's certificate table.
///
/// The report must parse and carry `requested` as its REPORT_DATA. The VEK
/// is the certificate the report's SIGNING_KEY names (VCEK or VLEK). A
/// missing VCEK is left empty for the host agent to fetch from AMD's key
/// distribution service and attach (no verifier accepts the bundle
/// without one); a missing VLEK is an error. The
/// chain is the ASK (ASVK) and ARK from the table as PEM, in that order,
/// or empty when the host supplied neither (the verifier then uses the AMD
/// certificates it pins).
pub(crate) fn snp_evidence(
    provider: &'static str,
    report: Vec<u8>,
    cert_table: &[u8],
    requested: &[u8; 64],
) -> Result<PlatformEvidence, AttestError> {
    let parsed = SnpReport::parse(&report).map_err(|e| {
        platform(
            provider,
            format!(
                "the SEV-SNP report from the guest driver is malformed ({} bytes): {e}",
                report.len()
            ),
        )
    })?;
    if parsed.report_data() != requested {
        return Err(platform(
            provider,
            format!(
                "the SEV-SNP report carries report data {} but {} was asked for: refusing a report made for someone else",
                hex::encode(parsed.report_data()),
                hex::encode(requested)
            ),
        ));
    }
    // An empty auxblob is how the kernel says the host supplied nothing.
    const NO_TABLE: [u8; ENTRY_SIZE] = [0; ENTRY_SIZE];
    let cert_table = if cert_table.is_empty() {
        &NO_TABLE[..]
    } else {
        cert_table
    };
    let table = CertTable::parse(cert_table).map_err(|e| {
        platform(
            provider,
            format!("the host's certificate table (auxblob) is malformed: {e}"),
        )
    })?;
    let (guid, name) = match parsed.key_info().signing_key() {
        SigningKey::Vcek => (Guid::VCEK, "VCEK"),
        SigningKey::Vlek => (Guid::VLEK, "VLEK"),
        other => {
            return Err(platform(
                provider,
                format!("the SEV-SNP report is signed by key {other}, which no verifier accepts"),
            ))
        }
    };
    let vek = match (table.get(guid), name) {
        (Some(vek), _) => vek.to_vec(),
        // A VCEK is public: AMD's key distribution service serves it by
        // chip ID and TCB, and the host agent fetches and attaches it
        // (a verifier refuses a bundle that still has none). A VLEK is
        // issued to a cloud provider and must come with the report.
        (None, "VCEK") => {
            tracing::warn!(
                table = %table.describe(),
                "the host supplied no VCEK with the report; sending the evidence without one for the host agent to attach from AMD's key distribution service"
            );
            Vec::new()
        }
        (None, _) => {
            return Err(platform(
                provider,
                format!(
                    "the host supplied no {name} certificate with the report (its certificate table has {}); the verifier needs it: configure the host to serve the {name} (and ASK/ARK) to its guests, e.g. with `snphost import` or KVM's SNP certificate support",
                    table.describe()
                ),
            ))
        }
    };
    let mut chain = String::new();
    for (guid, label) in [(Guid::ASK, "ASK"), (Guid::ARK, "ARK")] {
        if let Some(der) = table.get(guid) {
            let pem = pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, der)
                .map_err(|e| {
                platform(
                    provider,
                    format!("cannot write the host's {label} as PEM: {e}"),
                )
            })?;
            chain.push_str(&pem);
        }
    }
    Ok(PlatformEvidence::Snp {
        report,
        vek,
        chain: chain.into_bytes(),
        // AMD's CRL is collateral the host attaches; the guest has none.
        crl: None,
    })
}

/// Where the enclave finds Intel DCAP collateral for its TDX quotes.
///
/// A guest can produce only the quote; the collateral (PCK CRL, TCB info,
/// QE identity and their issuer chains) is published by Intel PCS and must
/// be fetched by the host and handed in, as a file in the `dcap-qvl` JSON
/// layout or our CBOR. The file is read at every attestation, so a host
/// that refreshes it before it expires keeps the enclave's evidence fresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TdxCollateralSource {
    path: Option<PathBuf>,
}

impl TdxCollateralSource {
    /// Collateral from the file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> TdxCollateralSource {
        TdxCollateralSource {
            path: Some(path.into()),
        }
    }

    /// No collateral configured: TDX evidence is refused.
    pub fn none() -> TdxCollateralSource {
        TdxCollateralSource { path: None }
    }

    /// The configured file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Read and parse the collateral.
    pub(crate) fn load(&self, provider: &'static str) -> Result<TdxCollateral, AttestError> {
        let Some(path) = &self.path else {
            return Err(platform(
                provider,
                "a TDX quote needs Intel DCAP collateral (PCK CRL, TCB info, QE identity) to be verified, and none is configured: set `[tdx] collateral = \"/path/to/collateral.json\"` in the enclave config to a file the host keeps fresh from Intel PCS (dcap-qvl JSON or CBOR)",
            ));
        };
        let io = |source| AttestError::Io {
            provider,
            path: path.display().to_string(),
            source,
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(io)?,
                MAX_COLLATERAL_FILE + 1,
            ),
            &mut bytes,
        )
        .map_err(io)?;
        if bytes.len() as u64 > MAX_COLLATERAL_FILE {
            return Err(platform(
                provider,
                format!(
                    "TDX collateral {} is larger than {MAX_COLLATERAL_FILE} bytes",
                    path.display()
                ),
            ));
        }
        let c = TdxCollateral::from_bytes(&bytes).map_err(|e| {
            platform(
                provider,
                format!("TDX collateral {} is not usable: {e}", path.display()),
            )
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match cocoon_attestation::pcs::valid_until(&c) {
            Some(until) if until > now => {}
            // Verifiers judge collateral at their own time; an enclave that
            // refused here could not even serve a verifier with a pinned
            // clock. Say so loudly instead.
            Some(until) => tracing::warn!(
                path = %path.display(),
                expired_at = until,
                "TDX collateral has expired: verifiers will reject this evidence until the host refreshes the file"
            ),
            None => tracing::warn!(
                path = %path.display(),
                "TDX collateral lacks a CRL or a nextUpdate: verifiers may reject this evidence"
            ),
        }
        Ok(c)
    }
}

/// `PlatformEvidence::Tdx` from a quote and the configured collateral.
///
/// The quote must parse as a TDX (not SGX) quote whose TD report carries
/// `requested`. Bytes after the quote's signature data (some quote paths pad
/// to a fixed size) are cut off: nothing signs them.
pub(crate) fn tdx_evidence(
    provider: &'static str,
    quote: &[u8],
    requested: &[u8; 64],
    collateral: &TdxCollateralSource,
) -> Result<PlatformEvidence, AttestError> {
    let (parsed, rest) = Quote::parse_prefix(quote).map_err(|e| {
        platform(
            provider,
            format!(
                "the TDX quote from the guest is malformed ({} bytes): {e}",
                quote.len()
            ),
        )
    })?;
    let Some(td) = parsed.td_report() else {
        return Err(platform(
            provider,
            "the guest returned an SGX quote, not a TDX quote",
        ));
    };
    if td.report_data() != requested {
        return Err(platform(
            provider,
            format!(
                "the TDX quote carries report data {} but {} was asked for: refusing a quote made for someone else",
                hex::encode(td.report_data()),
                hex::encode(requested)
            ),
        ));
    }
    let quote = quote[..quote.len() - rest.len()].to_vec();
    let collateral = collateral.load(provider)?;
    Ok(PlatformEvidence::Tdx { quote, collateral })
}
