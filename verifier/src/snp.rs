//! AMD SEV-SNP report verification.
//!
//! Owns the AMD key hierarchy (pinned ARKs for Milan, Genoa and Turin, their
//! ASKs and ASVKs), chain building ARK → ASK/ASVK → VCEK/VLEK, the VCEK/VLEK
//! extension checks (product, TCB, hwID), the report signature, revocation
//! as the policy asks (AMD's CRL, judged by [`crate::snp_crl`]), and the
//! comparison of a report with an [`SnpPolicy`]. It reads no file and no
//! clock: certificates and CRLs come in as bytes, time as [`UnixTime`].
//!
//! Sources: *Versioned Chip Endorsement Key (VCEK) Certificate and KDS
//! Interface Specification* (AMD #57230) §3 for the certificate extensions,
//! and the SEV-SNP ABI specification (#56860) §7.3 for the report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cocoon_attestation::snp::{
    GuestPolicy, KeyInfo, PlatformInfo, Product, SigningKey, SnpReport, TcbParts, TcbVersion,
    SIG_ALGO_ECDSA_P384_SHA384,
};
use der::asn1::{Ia5StringRef, ObjectIdentifier};
use der::Decode;

use crate::crypto::sha256;
use crate::policy::{Check, SmtRule, SnpPolicy};
use crate::roots::PinnedCert;
use crate::snp_crl::{AmdCrl, ChainToJudge, Listable, SnpRevocation};
use crate::x509::{Cert, SubjectKey};
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// Which AMD key family signed: chip keys (VCEK, via the ASK) or loaded
/// cloud-provider keys (VLEK, via the ASVK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignerKind {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl core::fmt::Display for SignerKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SignerKind::Vcek => "VCEK",
            SignerKind::Vlek => "VLEK",
        })
    }
}

/// A bundled AMD certificate: the product and role it has.
struct Pinned {
    product: Product,
    role: Role,
    cert: PinnedCert,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Ark,
    Intermediate(SignerKind),
}

/// AMD's root and intermediate keys as served by AMD's key distribution
/// service (`/vcek/v1/{product}/cert_chain`, `/vlek/v1/{product}/cert_chain`).
const PINNED: [Pinned; 9] = [
    Pinned {
        product: Product::Milan,
        role: Role::Ark,
        cert: PinnedCert::new(
            "AMD ARK-Milan",
            include_bytes!("../roots/amd/ark_milan.der"),
            "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        ),
    },
    Pinned {
        product: Product::Milan,
        role: Role::Intermediate(SignerKind::Vcek),
        cert: PinnedCert::new(
            "AMD ASK-Milan",
            include_bytes!("../roots/amd/ask_milan.der"),
            "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
        ),
    },
    Pinned {
        product: Product::Milan,
        role: Role::Intermediate(SignerKind::Vlek),
        cert: PinnedCert::new(
            "AMD ASVK-Milan",
            include_bytes!("../roots/amd/asvk_milan.der"),
            "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
        ),
    },
    Pinned {
        product: Product::Genoa,
        role: Role::Ark,
        cert: PinnedCert::new(
            "AMD ARK-Genoa",
            include_bytes!("../roots/amd/ark_genoa.der"),
            "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        ),
    },
    Pinned {
        product: Product::Genoa,
        role: Role::Intermediate(SignerKind::Vcek),
        cert: PinnedCert::new(
            "AMD ASK-Genoa",
            include_bytes!("../roots/amd/ask_genoa.der"),
            "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
        ),
    },
    Pinned {
        product: Product::Genoa,
        role: Role::Intermediate(SignerKind::Vlek),
        cert: PinnedCert::new(
            "AMD ASVK-Genoa",
            include_bytes!("../roots/amd/asvk_genoa.der"),
            "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
        ),
    },
    Pinned {
        product: Product::Turin,
        role: Role::Ark,
        cert: PinnedCert::new(
            "AMD ARK-Turin",
            include_bytes!("../roots/amd/ark_turin.der"),
            "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        ),
    },
    Pinned {
        product: Product::Turin,
        role: Role::Intermediate(SignerKind::Vcek),
        cert: PinnedCert::new(
            "AMD ASK-Turin",
            include_bytes!("../roots/amd/ask_turin.der"),
            "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
        ),
    },
    Pinned {
        product: Product::Turin,
        role: Role::Intermediate(SignerKind::Vlek),
        cert: PinnedCert::new(
            "AMD ASVK-Turin",
            include_bytes!("../roots/amd/asvk_turin.der"),
            "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
        ),
    },
];

struct Anchor {
    product: Product,
    cert: Cert,
}

struct Intermediate {
    product: Option<Product>,
    kind: SignerKind,
    cert: Cert,
    /// Already verified against its pinned ARK (supplied intermediates are
    /// checked on arrival).
    anchored: bool,
}

/// The AMD roots a verifier trusts. Only ARKs are trust anchors; ASKs and
/// ASVKs are bundled for convenience and are themselves checked against the
/// ARK on every cold verification.
pub struct TrustStore {
    arks: Vec<Anchor>,
    intermediates: Vec<Intermediate>,
}

impl TrustStore {
    /// AMD's production roots for Milan, Genoa and Turin, bundled in this
    /// crate and checked against their pinned fingerprints. A bundled
    /// certificate that fails its pin is left out, so the verifier fails
    /// closed.
    pub fn amd() -> &'static TrustStore {
        static STORE: OnceLock<TrustStore> = OnceLock::new();
        STORE.get_or_init(|| {
            let mut arks = Vec::new();
            let mut intermediates = Vec::new();
            for p in &PINNED {
                let Ok(cert) = p.cert.cert(Cert::from_der) else {
                    continue;
                };
                match p.role {
                    Role::Ark => arks.push(Anchor {
                        product: p.product,
                        cert,
                    }),
                    Role::Intermediate(kind) => intermediates.push(Intermediate {
                        product: Some(p.product),
                        kind,
                        cert,
                        anchored: false,
                    }),
                }
            }
            TrustStore {
                arks,
                intermediates,
            }
        })
    }

    /// How many pinned roots and intermediates loaded (9 when intact).
    pub fn len(&self) -> usize {
        self.arks.len() + self.intermediates.len()
    }

    /// Whether no certificate loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The certificates that come with a report: the VCEK or VLEK (DER or PEM),
/// and optionally the ASK/ASVK and ARK (PEM, or DER of one certificate).
/// An empty `chain` means "use the bundled ASK/ASVK"; a non-empty one is
/// used as given: its ASK/ASVK must be signed by a pinned ARK, and an ARK in
/// it must be byte-identical to a pinned one.
///
/// `crl` is AMD's CRL for the product (DER or PEM), the collateral a policy
/// with `revocation = "required"` needs.
///
/// `vek` may also be a PEM bundle of the VEK with its ASK/ASVK and ARK, in
/// any order (the shape cloud providers' certification endpoints and
/// several SDKs hand out): the one VEK is found by its name and AMD
/// extensions, and the others are treated exactly as certificates in
/// `chain` are.
#[derive(Debug, Clone, Copy)]
pub struct SnpCertificates<'a> {
    /// The VCEK or VLEK certificate.
    pub vek: &'a [u8],
    /// Optional ASK/ASVK and ARK certificates.
    pub chain: &'a [u8],
    /// AMD's CRL for the product, when one came with the evidence.
    pub crl: Option<&'a [u8]>,
}

/// TCB values and identity certified by a VCEK/VLEK.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VekClaims {
    product_name: String,
    tcb: TcbParts,
    hwid: Option<Vec<u8>>,
}

/// The time-independent result of checking a VEK chain; cached by the
/// verifier so a warm verification costs one ECDSA verify.
struct VerifiedVek {
    product: Product,
    kind: SignerKind,
    key: crate::crypto::P384Key,
    claims: VekClaims,
    /// (certificate name, not_before, not_after) for ARK, intermediate, VEK.
    windows: Vec<(String, UnixTime, UnixTime)>,
    fingerprint: [u8; 32],
    /// The pinned ARK the chain leads to: the only acceptable CRL signer.
    ark: &'static Cert,
    /// The ASK/ASVK and the VCEK/VLEK, as a CRL would list them.
    listed: Vec<Listable>,
}

/// A report that passed every check of a policy. Only this crate builds it.
#[derive(Debug, Clone)]
pub struct VerifiedSnp {
    report: SnpReport,
    product: Product,
    signer: SignerKind,
    vek_fingerprint: [u8; 32],
    revocation: SnpRevocation,
}

impl VerifiedSnp {
    /// The verified report.
    pub fn report(&self) -> &SnpReport {
        &self.report
    }
    /// The AMD product whose keys signed it.
    pub fn product(&self) -> Product {
        self.product
    }
    /// Whether a VCEK or a VLEK signed it.
    pub fn signer(&self) -> SignerKind {
        self.signer
    }
    /// SHA-256 of the signing certificate's DER.
    pub fn vek_fingerprint(&self) -> &[u8; 32] {
        &self.vek_fingerprint
    }
    /// Whether the chain was checked against AMD's CRL.
    pub fn revocation(&self) -> &SnpRevocation {
        &self.revocation
    }
    /// The reported TCB decoded for the product.
    pub fn reported_tcb(&self) -> TcbParts {
        self.report.reported_tcb().decode(self.product.tcb_layout())
    }
}

/// Verifies SNP reports against the bundled AMD roots, caching verified
/// VCEK/VLEK chains (bounded) so repeated reports from one machine cost one
/// signature check. Cheap to share between threads.
pub struct SnpVerifier {
    store: &'static TrustStore,
    cache: Mutex<HashMap<[u8; 32], Arc<VerifiedVek>>>,
}

/// Most chains a verifier keeps; past this the cache starts over.
const CACHE_CAPACITY: usize = 1024;

impl Default for SnpVerifier {
    fn default() -> Self {
        Self::new()
    }
}

/// Verify an SNP report with its certificates under `policy` at time `now`.
/// A one-shot convenience over [`SnpVerifier`] with nothing cached.
pub fn verify_snp(
    report: &[u8],
    certs: SnpCertificates<'_>,
    policy: &SnpPolicy,
    now: UnixTime,
) -> Result<VerifiedSnp, Rejection> {
    SnpVerifier::new().verify(report, certs, policy, now)
}

impl SnpVerifier {
    /// A verifier over the bundled AMD roots with an empty cache.
    pub fn new() -> Self {
        SnpVerifier {
            store: TrustStore::amd(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verify `report` (raw 1184 bytes) with its certificates under `policy`
    /// at time `now`. Every shortfall is listed in the rejection.
    pub fn verify(
        &self,
        report: &[u8],
        certs: SnpCertificates<'_>,
        policy: &SnpPolicy,
        now: UnixTime,
    ) -> Result<VerifiedSnp, Rejection> {
        let report = SnpReport::parse(report)
            .map_err(|e| Rejection::single(ReasonKind::Malformed, e.to_string()))?;
        let vek = self.vek(certs)?;
        let mut f = Findings::default();

        for (name, nb, na) in &vek.windows {
            if now < *nb {
                f.add(
                    ReasonKind::Expired,
                    format!(
                        "certificate {name} is not valid until {} (verification time {})",
                        fmt_time(*nb),
                        fmt_time(now)
                    ),
                );
            } else if now > *na {
                f.add(
                    ReasonKind::Expired,
                    format!(
                        "certificate {name} expired at {} (verification time {})",
                        fmt_time(*na),
                        fmt_time(now)
                    ),
                );
            }
        }
        check_report_structure(&report, &vek, &mut f);
        check_signature(&report, &vek, &mut f);
        check_key_binding(&report, &vek, &mut f);
        check_policy(&report, vek.product, policy, &mut f);
        let revocation = check_revocation(&vek, certs.crl, policy, now, &mut f);

        match revocation {
            Some(revocation) if f.is_empty() => Ok(VerifiedSnp {
                report,
                product: vek.product,
                signer: vek.kind,
                vek_fingerprint: vek.fingerprint,
                revocation,
            }),
            _ => Err(f.into_rejection()),
        }
    }

    /// TEST ONLY (cargo feature `test-roots`, never on by default, never in
    /// a release): a verifier that trusts the given self-signed ARKs
    /// *instead of* AMD's, with no bundled intermediates, so tests can sign
    /// their own ARK → ASK → VCEK chains and CRLs. Each ARK is checked as
    /// AMD's are (parses as RSASSA-PSS/SHA-384, self-signed). The trust
    /// store is leaked to give it the `'static` life AMD's has.
    #[cfg(feature = "test-roots")]
    pub fn with_test_roots(arks: &[(Product, &[u8])]) -> Result<SnpVerifier, crate::CertError> {
        let mut anchors = Vec::new();
        for (product, der) in arks {
            let cert = Cert::from_der(der)?;
            if !is_self_signed(&cert) {
                return Err(crate::CertError::Der(format!(
                    "test root {} is not self-signed",
                    cert.subject_cn
                )));
            }
            anchors.push(Anchor {
                product: *product,
                cert,
            });
        }
        let store: &'static TrustStore = Box::leak(Box::new(TrustStore {
            arks: anchors,
            intermediates: Vec::new(),
        }));
        Ok(SnpVerifier {
            store,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn vek(&self, certs: SnpCertificates<'_>) -> Result<Arc<VerifiedVek>, Rejection> {
        let mut h = Vec::with_capacity(certs.vek.len() + certs.chain.len() + 8);
        h.extend_from_slice(&(certs.vek.len() as u64).to_le_bytes());
        h.extend_from_slice(certs.vek);
        h.extend_from_slice(certs.chain);
        let key = sha256(&h);
        if let Ok(cache) = self.cache.lock() {
            if let Some(v) = cache.get(&key) {
                return Ok(Arc::clone(v));
            }
        }
        let verified = Arc::new(verify_chain(self.store, certs)?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&verified));
        }
        Ok(verified)
    }
}

pub(crate) fn fmt_time(t: UnixTime) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), so messages read as dates.
    let days = (t.0 / 86_400) as i64;
    let secs = t.0 % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

const OID_STRUCT_VERSION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

/// Read the AMD extensions of a VCEK/VLEK (VCEK spec §3, table "VCEK
/// Certificate Extensions").
fn vek_claims(vek: &Cert, product: Product, kind: SignerKind) -> Result<VekClaims, String> {
    let spl = |oid: &ObjectIdentifier, name: &str| -> Result<u8, String> {
        let v = vek
            .extension(oid)
            .ok_or(format!("{name} extension is missing"))?;
        let n = u32::from_der(v).map_err(|_| format!("{name} extension is not a DER INTEGER"))?;
        u8::try_from(n)
            .map_err(|_| format!("{name} extension value {n} does not fit a security patch level"))
    };
    if let Some(v) = vek.extension(&OID_STRUCT_VERSION) {
        let n = u32::from_der(v)
            .map_err(|_| "structVersion extension is not a DER INTEGER".to_string())?;
        if n > 1 {
            return Err(format!("structVersion {n} is not known"));
        }
    }
    let name = vek
        .extension(&OID_PRODUCT_NAME)
        .ok_or("productName extension is missing")?;
    let name = Ia5StringRef::from_der(name)
        .map_err(|_| "productName extension is not an IA5String".to_string())?
        .as_str()
        .to_owned();
    let base = name.split('-').next().unwrap_or_default();
    if base != product.name() {
        return Err(format!(
            "productName {name:?} does not match the {product} root that issued it"
        ));
    }
    let fmc = match product.tcb_layout() {
        cocoon_attestation::snp::TcbLayout::Turin => Some(spl(&OID_FMC_SPL, "fmcSPL")?),
        cocoon_attestation::snp::TcbLayout::MilanGenoa => None,
    };
    let tcb = TcbParts {
        fmc,
        bootloader: spl(&OID_BL_SPL, "blSPL")?,
        tee: spl(&OID_TEE_SPL, "teeSPL")?,
        snp: spl(&OID_SNP_SPL, "snpSPL")?,
        microcode: spl(&OID_UCODE_SPL, "ucodeSPL")?,
    };
    let hwid = match kind {
        SignerKind::Vcek => {
            let h = vek
                .extension(&OID_HWID)
                .ok_or("hwID extension is missing from the VCEK")?;
            let expected = match product {
                Product::Turin => 8,
                _ => 64,
            };
            if h.len() != expected {
                return Err(format!(
                    "hwID extension is {} bytes, expected {expected} for {product}",
                    h.len()
                ));
            }
            Some(h.to_vec())
        }
        SignerKind::Vlek => None,
    };
    Ok(VekClaims {
        product_name: name,
        tcb,
        hwid,
    })
}

/// The OIDs a VCEK/VLEK may mark critical (none, per AMD) plus the standard
/// ones a verifier understands.
fn unknown_critical(cert: &Cert) -> Option<ObjectIdentifier> {
    cert.extensions
        .iter()
        .find(|(oid, critical, _)| {
            *critical
                && !matches!(
                    oid.to_string().as_str(),
                    // basicConstraints, keyUsage
                    "2.5.29.19" | "2.5.29.15"
                )
        })
        .map(|(oid, _, _)| *oid)
}

/// Whether a certificate is a VCEK or VLEK rather than an AMD CA: AMD names
/// them SEV-VCEK / SEV-VLEK and only they carry the productName extension
/// (VCEK spec §3); ARKs, ASKs and ASVKs carry neither.
fn is_vek(c: &Cert) -> bool {
    matches!(c.subject_cn.as_str(), "SEV-VCEK" | "SEV-VLEK")
        || c.extension(&OID_PRODUCT_NAME).is_some()
}

fn is_self_signed(c: &Cert) -> bool {
    c.issuer == c.subject && c.signed_by(c)
}

fn verify_chain(
    store: &'static TrustStore,
    certs: SnpCertificates<'_>,
) -> Result<VerifiedVek, Rejection> {
    let bad_cert = |what: &str, e: crate::CertError| {
        Rejection::single(ReasonKind::Certificate, format!("{what}: {e}"))
    };
    let given = Cert::parse_many(certs.vek).map_err(|e| bad_cert("VCEK/VLEK certificate", e))?;
    // One certificate is the VEK; a bundle (VEK with its ASK/ASVK and ARK,
    // as cloud providers and SDKs hand them out) is split into the VEK and
    // the rest, which is then treated exactly like a supplied chain.
    let (mut veks, bundled): (Vec<Cert>, Vec<Cert>) = if given.len() == 1 {
        (given, Vec::new())
    } else {
        given.into_iter().partition(is_vek)
    };
    if veks.len() != 1 {
        return Err(Rejection::single(
            ReasonKind::Certificate,
            format!(
                "expected exactly one VCEK/VLEK certificate (named SEV-VCEK or SEV-VLEK, with AMD's productName extension), got {}",
                veks.len()
            ),
        ));
    }
    let vek = veks.remove(0);
    let SubjectKey::P384(_) = &vek.key else {
        return Err(Rejection::single(
            ReasonKind::Certificate,
            "the VCEK/VLEK does not carry a P-384 key",
        ));
    };
    if let Some(oid) = unknown_critical(&vek) {
        return Err(Rejection::single(
            ReasonKind::Certificate,
            format!("VCEK/VLEK has an unknown critical extension {oid}"),
        ));
    }

    // Supplied chain certificates: roots must be pinned, others are candidate intermediates.
    let mut supplied = bundled;
    if !certs.chain.is_empty() {
        supplied
            .extend(Cert::parse_many(certs.chain).map_err(|e| bad_cert("certificate chain", e))?);
    }
    let mut extra: Vec<Intermediate> = Vec::new();
    for c in supplied {
        if c.issuer == c.subject {
            let fp = sha256(&c.der);
            if !store.arks.iter().any(|a| sha256(&a.cert.der) == fp) {
                return Err(Rejection::single(
                    ReasonKind::Chain,
                    format!(
                        "supplied root {} (SHA-256 {}) is not one of the pinned AMD roots",
                        c.subject_cn,
                        hex::encode(fp)
                    ),
                ));
            }
            continue; // the pinned copy is used
        }
        let Some(ark) = store
            .arks
            .iter()
            .find(|a| a.cert.subject == c.issuer && c.signed_by(&a.cert))
        else {
            return Err(Rejection::single(
                ReasonKind::Chain,
                format!(
                    "supplied certificate {} is neither a pinned AMD root nor signed by one",
                    c.subject_cn
                ),
            ));
        };
        let kind = if c.subject_cn.starts_with("SEV-VLEK-") {
            SignerKind::Vlek
        } else {
            SignerKind::Vcek
        };
        extra.push(Intermediate {
            product: Some(ark.product),
            kind,
            cert: c,
            anchored: true,
        });
    }

    // A caller that supplies intermediates gets exactly those (anchored at a
    // pinned ARK); the bundled ones are used only when none are supplied.
    let pool: &[Intermediate] = if extra.is_empty() {
        &store.intermediates
    } else {
        &extra
    };
    let candidates = pool.iter().filter(|i| i.cert.subject == vek.issuer);
    let mut found = None;
    let mut issuer_seen = false;
    for inter in candidates {
        issuer_seen = true;
        if !vek.signed_by(&inter.cert) {
            continue;
        }
        let Some(ark) = store.arks.iter().find(|a| {
            a.cert.subject == inter.cert.issuer
                && (if inter.anchored {
                    inter.product == Some(a.product)
                } else {
                    inter.cert.signed_by(&a.cert)
                })
        }) else {
            continue;
        };
        if inter.product.is_some_and(|p| p != ark.product) {
            continue;
        }
        found = Some((inter, ark));
        break;
    }
    let Some((inter, ark)) = found else {
        let msg = if issuer_seen {
            format!("the {} certificate's signature does not verify with any AMD intermediate named as its issuer, or that intermediate does not chain to a pinned ARK", vek.subject_cn)
        } else {
            format!(
                "no AMD ASK/ASVK matches the issuer of the {} certificate",
                vek.subject_cn
            )
        };
        return Err(Rejection::single(ReasonKind::Chain, msg));
    };
    if !is_self_signed(&ark.cert) {
        return Err(Rejection::single(
            ReasonKind::Chain,
            format!("pinned root {} is not self-signed", ark.cert.subject_cn),
        ));
    }
    for (c, what) in [(&ark.cert, "ARK"), (&inter.cert, "ASK/ASVK")] {
        match &c.key {
            SubjectKey::Rsa(k) if k.bits() == 4096 => {}
            _ => {
                return Err(Rejection::single(
                    ReasonKind::Chain,
                    format!("{what} {} does not hold an RSA-4096 key", c.subject_cn),
                ));
            }
        }
    }
    let expected_cn = match inter.kind {
        SignerKind::Vcek => "SEV-VCEK",
        SignerKind::Vlek => "SEV-VLEK",
    };
    if vek.subject_cn != expected_cn {
        return Err(Rejection::single(
            ReasonKind::Certificate,
            format!(
                "certificate issued by {} is named {:?}, expected {expected_cn:?}",
                inter.cert.subject_cn, vek.subject_cn
            ),
        ));
    }
    let claims = vek_claims(&vek, ark.product, inter.kind).map_err(|e| {
        Rejection::single(ReasonKind::Certificate, format!("{}: {e}", vek.subject_cn))
    })?;
    let SubjectKey::P384(_) = &vek.key else {
        return Err(Rejection::single(
            ReasonKind::Certificate,
            "the VCEK/VLEK does not carry a P-384 key",
        ));
    };
    let windows = [&ark.cert, &inter.cert, &vek]
        .iter()
        .map(|c| (c.subject_cn.clone(), c.not_before, c.not_after))
        .collect();
    let fingerprint = sha256(&vek.der);
    let listed = vec![
        Listable {
            what: match inter.kind {
                SignerKind::Vcek => "ASK",
                SignerKind::Vlek => "ASVK",
            },
            cn: inter.cert.subject_cn.clone(),
            serial: inter.cert.serial.clone(),
        },
        Listable {
            what: match inter.kind {
                SignerKind::Vcek => "VCEK",
                SignerKind::Vlek => "VLEK",
            },
            cn: vek.subject_cn.clone(),
            serial: vek.serial.clone(),
        },
    ];
    let key = match vek.key {
        SubjectKey::P384(k) => k,
        SubjectKey::Rsa(_) | SubjectKey::P256(_) => {
            return Err(Rejection::single(
                ReasonKind::Certificate,
                "the VCEK/VLEK does not carry a P-384 key",
            ));
        }
    };
    Ok(VerifiedVek {
        product: ark.product,
        kind: inter.kind,
        key,
        claims,
        windows,
        fingerprint,
        ark: &ark.cert,
        listed,
    })
}

/// Revocation as the policy asks: with `revocation = "required"`, AMD's
/// CRL must come with the evidence, be signed by the chain's ARK, be
/// current, and list neither the ASK/ASVK nor the VCEK/VLEK. `None` when
/// that fell short (the reasons are in `f`).
fn check_revocation(
    vek: &VerifiedVek,
    crl: Option<&[u8]>,
    policy: &SnpPolicy,
    now: UnixTime,
    f: &mut Findings,
) -> Option<SnpRevocation> {
    if policy.revocation == Check::Skip {
        return Some(SnpRevocation::NotChecked);
    }
    let Some(bytes) = crl else {
        f.add(
            ReasonKind::Collateral,
            format!(
                "AMD's CRL for {} is missing, and the policy requires revocation checks (revocation = \"required\"): supply the CRL AMD's key distribution service publishes for {} (cocoon-verify snp --crl FILE; in a bundle, its SNP collateral), or write revocation = \"skip\"",
                vek.product, vek.product
            ),
        );
        return None;
    };
    let crl = match AmdCrl::parse(bytes) {
        Ok(c) => c,
        Err(e) => {
            f.add(ReasonKind::Collateral, format!("AMD CRL: {e}"));
            return None;
        }
    };
    crate::snp_crl::judge(
        &crl,
        &ChainToJudge {
            ark: vek.ark,
            listed: &vek.listed,
        },
        now,
        f,
    )
}

fn check_report_structure(r: &SnpReport, vek: &VerifiedVek, f: &mut Findings) {
    if r.signature_algo() != SIG_ALGO_ECDSA_P384_SHA384 {
        f.add(
            ReasonKind::UnknownValue,
            format!(
                "signature algorithm {} is not ECDSA P-384 with SHA-384 (1)",
                r.signature_algo()
            ),
        );
    }
    let key_info = r.key_info();
    if key_info.0 & KeyInfo::RESERVED_MASK != 0 {
        f.add(
            ReasonKind::UnknownValue,
            format!("reserved key-info bits are set ({:#x})", key_info.0),
        );
    }
    let policy = r.policy();
    if policy.0 & GuestPolicy::RESERVED_MASK != 0 {
        f.add(
            ReasonKind::UnknownValue,
            format!(
                "reserved guest policy bits 63:26 are set ({:#018x})",
                policy.0
            ),
        );
    }
    if policy.0 & GuestPolicy::MUST_BE_ONE == 0 {
        f.add(
            ReasonKind::UnknownValue,
            "guest policy bit 17 must be one and is zero",
        );
    }
    let pi = r.platform_info();
    if pi.0 & PlatformInfo::RESERVED_MASK != 0 {
        f.add(
            ReasonKind::UnknownValue,
            format!("reserved platform info bits are set ({:#018x})", pi.0),
        );
    }
    if r.vmpl() > 3 {
        f.add(
            ReasonKind::UnknownValue,
            format!("VMPL {} does not exist (0..=3)", r.vmpl()),
        );
    }
    let layout = vek.product.tcb_layout();
    for (name, tcb) in [
        ("reported", r.reported_tcb()),
        ("current", r.current_tcb()),
        ("committed", r.committed_tcb()),
        ("launch", r.launch_tcb()),
    ] {
        if tcb.0 & TcbVersion::reserved_mask(layout) != 0 {
            f.add(
                ReasonKind::UnknownValue,
                format!(
                    "{name} TCB {:#018x} sets bytes the {} layout reserves",
                    tcb.0, vek.product
                ),
            );
        }
    }
    for field in r.nonzero_reserved_fields() {
        f.add(
            ReasonKind::UnknownValue,
            format!("reserved field {field} is not zero"),
        );
    }
    if r.signature().reserved.iter().any(|b| *b != 0) {
        f.add(
            ReasonKind::UnknownValue,
            "reserved bytes of the signature area are not zero",
        );
    }
    if let Some((fam, model, _)) = r.cpuid() {
        match Product::from_cpuid(fam, model) {
            None => f.add(
                ReasonKind::UnknownValue,
                format!("CPUID family {fam:#04x} model {model:#04x} is not a known SNP product"),
            ),
            Some(p) if p != vek.product => f.add(
                ReasonKind::KeyBinding,
                format!(
                    "report says it comes from a {p} CPU but was signed by a {} key",
                    vek.product
                ),
            ),
            Some(_) => {}
        }
    }
}

fn check_signature(r: &SnpReport, vek: &VerifiedVek, f: &mut Findings) {
    match r.signature().to_p384_fixed() {
        None => f.add(
            ReasonKind::Signature,
            "report signature components do not fit P-384 (high bytes set)",
        ),
        Some(sig) => {
            if !vek.key.verify_fixed(r.signed_bytes(), &sig) {
                f.add(
                    ReasonKind::Signature,
                    format!("report signature does not verify with the {} key", vek.kind),
                );
            }
        }
    }
}

fn check_key_binding(r: &SnpReport, vek: &VerifiedVek, f: &mut Findings) {
    let ki = r.key_info();
    match (ki.signing_key(), vek.kind) {
        (SigningKey::Vcek, SignerKind::Vcek) | (SigningKey::Vlek, SignerKind::Vlek) => {}
        (SigningKey::None, _) => f.add(
            ReasonKind::Signature,
            "report says it is unsigned (SIGNING_KEY = 7)",
        ),
        (SigningKey::Reserved(v), _) => f.add(
            ReasonKind::UnknownValue,
            format!("SIGNING_KEY value {v} is reserved"),
        ),
        (said, used) => f.add(
            ReasonKind::KeyBinding,
            format!("report says it was signed by the {said} but the certificate is a {used}"),
        ),
    }
    let reported = r.reported_tcb().decode(vek.product.tcb_layout());
    if reported != vek.claims.tcb {
        f.add(
            ReasonKind::KeyBinding,
            format!(
                "reported TCB ({reported}) differs from the TCB the {} certifies ({})",
                vek.kind, vek.claims.tcb
            ),
        );
    }
    if let Some(hwid) = &vek.claims.hwid {
        if ki.mask_chip_key() {
            f.add(
                ReasonKind::KeyBinding,
                "chip ID is masked in the report, so it cannot be bound to the VCEK's hwID",
            );
        } else {
            let chip = r.chip_id();
            let (head, tail) = chip.split_at(hwid.len().min(chip.len()));
            if head != hwid.as_slice() || tail.iter().any(|b| *b != 0) {
                f.add(
                    ReasonKind::KeyBinding,
                    format!(
                        "chip ID {} does not match the VCEK's hwID {}",
                        hex::encode(chip),
                        hex::encode(hwid)
                    ),
                );
            }
        }
    }
    let _ = &vek.claims.product_name;
}

fn check_policy(r: &SnpReport, product: Product, p: &SnpPolicy, f: &mut Findings) {
    if let Check::Require(list) = &p.measurements {
        if !list.iter().any(|m| m == r.measurement()) {
            f.add(
                ReasonKind::Policy,
                format!(
                    "measurement not in policy: {}",
                    hex::encode(r.measurement())
                ),
            );
        }
    }
    if let Check::Require(min) = &p.min_tcb {
        let have = r.reported_tcb().decode(product.tcb_layout());
        for (name, h, need) in min.shortfalls(&have) {
            f.add(
                ReasonKind::Policy,
                format!("TCB {name}={h} below minimum {need}"),
            );
        }
    }
    if let Check::Require(v) = p.vmpl {
        if r.vmpl() != v {
            f.add(
                ReasonKind::Policy,
                format!(
                    "report comes from VMPL {}, policy requires VMPL {v}",
                    r.vmpl()
                ),
            );
        }
    }
    if let Check::Require(d) = &p.report_data {
        if d != r.report_data() {
            f.add(
                ReasonKind::Policy,
                format!(
                    "report_data {} is not the expected {}",
                    hex::encode(r.report_data()),
                    hex::encode(d)
                ),
            );
        }
    }
    if let Check::Require(d) = &p.host_data {
        if d != r.host_data() {
            f.add(
                ReasonKind::Policy,
                format!(
                    "host_data {} is not the expected {}",
                    hex::encode(r.host_data()),
                    hex::encode(d)
                ),
            );
        }
    }
    if let Check::Require(list) = &p.id_key_digests {
        if !list.iter().any(|d| d == r.id_key_digest()) {
            f.add(
                ReasonKind::Policy,
                format!(
                    "ID key digest {} is not in the policy",
                    hex::encode(r.id_key_digest())
                ),
            );
        }
    }
    if let Check::Require(list) = &p.author_key_digests {
        if !r.key_info().author_key_en() {
            f.add(
                ReasonKind::Policy,
                "policy requires an author key but the report has none (AUTHOR_KEY_EN = 0)",
            );
        } else if !list.iter().any(|d| d == r.author_key_digest()) {
            f.add(
                ReasonKind::Policy,
                format!(
                    "author key digest {} is not in the policy",
                    hex::encode(r.author_key_digest())
                ),
            );
        }
    }
    if p.smt == SmtRule::Forbidden && r.platform_info().smt_enabled() {
        f.add(
            ReasonKind::Policy,
            "SMT is enabled on the platform and the policy forbids it",
        );
    }
    let gp = r.policy();
    if gp.debug_allowed() && !p.allow_debug {
        f.add(
            ReasonKind::Policy,
            "debug bit set: the guest policy lets the host debug (read and write) guest memory",
        );
    }
    if gp.migrate_ma() && !p.allow_migration_agent {
        f.add(
            ReasonKind::Policy,
            "guest policy allows a migration agent, which the policy forbids",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_root_loads() {
        let store = TrustStore::amd();
        assert_eq!(store.arks.len(), 3);
        assert_eq!(store.intermediates.len(), 6);
        for a in &store.arks {
            assert!(
                is_self_signed(&a.cert),
                "{} self-signature",
                a.cert.subject_cn
            );
        }
        for i in &store.intermediates {
            let ark = store
                .arks
                .iter()
                .find(|a| Some(a.product) == i.product)
                .unwrap();
            assert!(
                i.cert.signed_by(&ark.cert),
                "{} signed by {}",
                i.cert.subject_cn,
                ark.cert.subject_cn
            );
        }
    }

    #[test]
    fn times_print_as_dates() {
        assert_eq!(fmt_time(UnixTime(1_759_305_600)), "2025-10-01T08:00:00Z");
        assert_eq!(fmt_time(UnixTime(0)), "1970-01-01T00:00:00Z");
    }
}
