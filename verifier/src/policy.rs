//! Reference values a client requires of evidence.
//!
//! Owns the policy types and their TOML form. Every reference value is a
//! [`Check`]: either required ([`Check::Require`]) or explicitly skipped
//! ([`Check::Skip`]); there is no "unset means anything". Safety switches
//! (debug, migration agent) default to the strict side and must be turned
//! off by name. This module compares nothing: `snp` does.
//!
//! TOML form (every reference key must be present; `"skip"` skips it):
//!
//! ```toml
//! [snp]
//! measurements = ["<96 hex digits>", "..."]    # or "skip"
//! min_tcb = { fmc = "skip", bootloader = 4, tee = 0, snp = 22, microcode = 213 }  # fmc: Turin's FMC level or "skip"; or "skip"
//! vmpl = 0                                     # or "skip"
//! report_data = "<128 hex digits>"             # or "skip"
//! host_data = "<64 hex digits>"                # or "skip"
//! id_key_digests = ["<96 hex digits>"]         # or "skip"
//! author_key_digests = ["<96 hex digits>"]     # or "skip"
//! smt = "allowed"                              # or "forbidden"
//! revocation = "required"                      # AMD's CRL must come along; or "skip"
//! allow_debug = false                          # optional, default false
//! allow_migration_agent = false                # optional, default false
//! ```

use core::fmt;

use cocoon_attestation::snp::{FmcLevel, TcbParts, TCB_SPLS};

/// A reference value that is either required or explicitly skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check<T> {
    /// The evidence must match this value.
    Require(T),
    /// The policy author chose not to check this field.
    Skip,
}

impl<T> Check<T> {
    /// The required value, if any.
    pub fn required(&self) -> Option<&T> {
        match self {
            Check::Require(v) => Some(v),
            Check::Skip => None,
        }
    }
}

/// Minimum security patch levels, compared with the report's `reported_tcb`
/// (the TCB the signing key was derived for) by [`TcbParts::shortfalls`].
/// The FMC level (Turin) is required or explicitly skipped like every other
/// reference value; Milan and Genoa have no FMC, so a required value has
/// nothing to compare with there.
pub type MinTcb = TcbParts<Check<u8>>;

impl FmcLevel for Check<u8> {
    fn level(&self) -> Option<u8> {
        self.required().copied()
    }
    fn write_fmc(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Require(fmc) => write!(f, "fmc={fmc} "),
            Check::Skip => write!(f, "fmc=skip "),
        }
    }
}

/// Whether the platform may run with simultaneous multithreading enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtRule {
    /// SMT may be on.
    Allowed,
    /// The platform must report SMT disabled.
    Forbidden,
}

/// What a client requires of an SEV-SNP report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpPolicy {
    /// Allowed launch measurements.
    pub measurements: Check<Vec<[u8; 48]>>,
    /// Minimum reported TCB.
    pub min_tcb: Check<MinTcb>,
    /// Required VMPL.
    pub vmpl: Check<u32>,
    /// Exact expected report data.
    pub report_data: Check<[u8; 64]>,
    /// Exact expected host data.
    pub host_data: Check<[u8; 32]>,
    /// Allowed ID key digests.
    pub id_key_digests: Check<Vec<[u8; 48]>>,
    /// Allowed author key digests.
    pub author_key_digests: Check<Vec<[u8; 48]>>,
    /// SMT rule.
    pub smt: SmtRule,
    /// Revocation through AMD's CRL, carried as collateral: required, or
    /// explicitly skipped.
    pub revocation: Check<()>,
    /// Accept guests whose policy lets the host debug them. Never in production.
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent.
    pub allow_migration_agent: bool,
}

impl SnpPolicy {
    /// A strict policy pinned to the given measurements: VMPL 0, debug and
    /// migration agent forbidden, SMT allowed, and every other reference
    /// value (revocation included) explicitly skipped. Callers tighten it
    /// field by field.
    pub fn pinned_to_measurements(measurements: Vec<[u8; 48]>) -> SnpPolicy {
        SnpPolicy {
            measurements: Check::Require(measurements),
            min_tcb: Check::Skip,
            vmpl: Check::Require(0),
            report_data: Check::Skip,
            host_data: Check::Skip,
            id_key_digests: Check::Skip,
            author_key_digests: Check::Skip,
            smt: SmtRule::Allowed,
            revocation: Check::Skip,
            allow_debug: false,
            allow_migration_agent: false,
        }
    }

    /// Read the `[snp]` table of a policy file.
    pub fn from_toml(text: &str) -> Result<SnpPolicy, PolicyError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| PolicyError::Toml(e.to_string()))?;
        let snp = match doc.get("snp") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(PolicyError::Invalid("snp".into(), "must be a table".into())),
            None => return Err(PolicyError::Missing("snp".into())),
        };
        Self::from_table(snp, "snp")
    }

    /// Read an SNP policy from a TOML table; `prefix` names it in errors.
    pub fn from_table(t: &toml::Table, prefix: &str) -> Result<SnpPolicy, PolicyError> {
        const KEYS: [&str; 11] = [
            "measurements",
            "min_tcb",
            "vmpl",
            "report_data",
            "host_data",
            "id_key_digests",
            "author_key_digests",
            "smt",
            "revocation",
            "allow_debug",
            "allow_migration_agent",
        ];
        if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(PolicyError::UnknownKey(format!("{prefix}.{k}")));
        }
        let key = |k: &str| format!("{prefix}.{k}");
        let smt = match t.get("smt").map(|v| v.as_str()) {
            Some(Some("allowed")) => SmtRule::Allowed,
            Some(Some("forbidden")) => SmtRule::Forbidden,
            Some(_) => {
                return Err(PolicyError::Invalid(
                    key("smt"),
                    "must be \"allowed\" or \"forbidden\"".into(),
                ))
            }
            None => return Err(PolicyError::Missing(key("smt"))),
        };
        Ok(SnpPolicy {
            measurements: check(t, &key("measurements"), "measurements", hex_list::<48>)?,
            min_tcb: check(t, &key("min_tcb"), "min_tcb", min_tcb)?,
            vmpl: check(t, &key("vmpl"), "vmpl", |v| {
                v.as_integer()
                    .and_then(|i| u32::try_from(i).ok())
                    .filter(|i| *i <= 3)
                    .ok_or_else(|| "must be an integer 0..=3".to_string())
            })?,
            report_data: check(t, &key("report_data"), "report_data", hex_value::<64>)?,
            host_data: check(t, &key("host_data"), "host_data", hex_value::<32>)?,
            id_key_digests: check(t, &key("id_key_digests"), "id_key_digests", hex_list::<48>)?,
            author_key_digests: check(
                t,
                &key("author_key_digests"),
                "author_key_digests",
                hex_list::<48>,
            )?,
            smt,
            revocation: check(t, &key("revocation"), "revocation", |v| {
                if v.as_str() == Some("required") {
                    Ok(())
                } else {
                    Err(
                        "must be \"required\" (AMD's CRL must come with the evidence) or \"skip\""
                            .into(),
                    )
                }
            })?,
            allow_debug: flag(t, &key("allow_debug"), "allow_debug")?,
            allow_migration_agent: flag(t, &key("allow_migration_agent"), "allow_migration_agent")?,
        })
    }
}

/// Why a policy file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not TOML.
    #[error("policy is not valid TOML: {0}")]
    Toml(String),
    /// A reference value is neither given nor skipped.
    #[error("policy key {0} is missing: give a value or write \"skip\" to skip it explicitly")]
    Missing(String),
    /// A key the policy format does not define (probably a typo).
    #[error("policy key {0} is not known")]
    UnknownKey(String),
    /// A value of the wrong shape.
    #[error("policy key {0}: {1}")]
    Invalid(String, String),
}

fn check<T>(
    t: &toml::Table,
    full: &str,
    k: &str,
    parse: impl Fn(&toml::Value) -> Result<T, String>,
) -> Result<Check<T>, PolicyError> {
    match t.get(k) {
        None => Err(PolicyError::Missing(full.to_string())),
        Some(toml::Value::String(s)) if s == "skip" => Ok(Check::Skip),
        Some(v) => parse(v)
            .map(Check::Require)
            .map_err(|e| PolicyError::Invalid(full.to_string(), e)),
    }
}

fn flag(t: &toml::Table, full: &str, k: &str) -> Result<bool, PolicyError> {
    match t.get(k) {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(PolicyError::Invalid(
            full.to_string(),
            "must be true or false".into(),
        )),
    }
}

/// Decode exactly `N` bytes of hex.
pub fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| format!("must be {} hex digits, got {:?}", 2 * N, s))?;
    Ok(out)
}

fn hex_value<const N: usize>(v: &toml::Value) -> Result<[u8; N], String> {
    v.as_str()
        .ok_or_else(|| format!("must be a string of {} hex digits", 2 * N))
        .and_then(parse_hex::<N>)
}

fn hex_list<const N: usize>(v: &toml::Value) -> Result<Vec<[u8; N]>, String> {
    let arr = v
        .as_array()
        .ok_or_else(|| "must be a list of hex strings or \"skip\"".to_string())?;
    if arr.is_empty() {
        return Err("an empty list would reject everything; list values or write \"skip\"".into());
    }
    arr.iter().map(hex_value::<N>).collect()
}

fn min_tcb(v: &toml::Value) -> Result<MinTcb, String> {
    let t = v
        .as_table()
        .ok_or("must be a table {fmc, bootloader, tee, snp, microcode} or \"skip\"")?;
    if let Some(k) = t
        .keys()
        .find(|k| k.as_str() != "fmc" && !TCB_SPLS.iter().any(|(key, _)| key == k))
    {
        return Err(format!("unknown component {k}"));
    }
    let get = |k: &str| -> Result<Option<u8>, String> {
        t.get(k)
            .map(|v| {
                v.as_integer()
                    .and_then(|i| u8::try_from(i).ok())
                    .ok_or(format!("{k} must be 0..=255"))
            })
            .transpose()
    };
    let need = |k: &str| get(k)?.ok_or(format!("{k} is missing"));
    let fmc = match t.get("fmc") {
        None => {
            return Err("fmc is missing: give the minimum Turin FMC level or fmc = \"skip\" (Milan and Genoa have no FMC)".into())
        }
        Some(toml::Value::String(s)) if s == "skip" => Check::Skip,
        Some(_) => Check::Require(need("fmc")?),
    };
    let mut spls = [0u8; 4];
    for (level, (key, _)) in spls.iter_mut().zip(TCB_SPLS) {
        *level = need(key)?;
    }
    Ok(MinTcb::from_spls(fmc, spls))
}

/// A TCB status from Intel's TCB info, after converging the platform, TDX
/// module and QE levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TcbStatus {
    /// Fully patched.
    UpToDate,
    /// Patched, but software hardening is needed.
    SWHardeningNeeded,
    /// Platform configuration is needed.
    ConfigurationNeeded,
    /// Configuration and software hardening are needed.
    ConfigurationAndSWHardeningNeeded,
    /// A newer TCB exists.
    OutOfDate,
    /// Out of date and configuration needed.
    OutOfDateConfigurationNeeded,
    /// The TCB is revoked: never acceptable.
    Revoked,
    /// A TD 1.5 launched on an out-of-date TCB that has since been updated
    /// in place: relaunching the TD is advised.
    TDRelaunchAdvised,
    /// As [`TcbStatus::TDRelaunchAdvised`], with configuration needed.
    TDRelaunchAdvisedConfigurationNeeded,
}

impl TcbStatus {
    /// Every status.
    pub const ALL: [TcbStatus; 9] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::Revoked,
        TcbStatus::TDRelaunchAdvised,
        TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
    ];
    /// The name Intel's collateral uses.
    pub fn name(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
            TcbStatus::TDRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TDRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
        }
    }
    /// Parse Intel's name.
    pub fn from_name(s: &str) -> Option<TcbStatus> {
        TcbStatus::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a client requires of an Intel TDX quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPolicy {
    /// Allowed MRTD values (the TD's initial contents: TDVF).
    pub mrtd: Check<Vec<[u8; 48]>>,
    /// Expected RTMR0..RTMR3.
    pub rtmr: [Check<[u8; 48]>; 4],
    /// Expected MRCONFIGID.
    pub mrconfigid: Check<[u8; 48]>,
    /// Expected MROWNER.
    pub mrowner: Check<[u8; 48]>,
    /// Expected MROWNERCONFIG.
    pub mrownerconfig: Check<[u8; 48]>,
    /// Expected TD attributes (8 bytes as in the report).
    pub td_attributes: Check<[u8; 8]>,
    /// Expected XFAM.
    pub xfam: Check<[u8; 8]>,
    /// Minimum TEE TCB SVN, component by component.
    pub min_tee_tcb_svn: Check<[u8; 16]>,
    /// Exact expected report data.
    pub report_data: Check<[u8; 64]>,
    /// TCB statuses accepted (never empty; `Revoked` is refused regardless).
    pub allowed_tcb_statuses: Vec<TcbStatus>,
    /// Oldest acceptable collateral, in seconds since the TCB info was issued.
    pub max_collateral_age_secs: Check<u64>,
    /// Accept TDs with the DEBUG attribute. Never in production.
    pub allow_debug: bool,
}

impl TdxPolicy {
    /// A strict policy pinned to the given MRTDs: UpToDate only, debug
    /// forbidden, every other reference value explicitly skipped.
    pub fn pinned_to_mrtd(mrtd: Vec<[u8; 48]>) -> TdxPolicy {
        TdxPolicy {
            mrtd: Check::Require(mrtd),
            rtmr: [Check::Skip, Check::Skip, Check::Skip, Check::Skip],
            mrconfigid: Check::Skip,
            mrowner: Check::Skip,
            mrownerconfig: Check::Skip,
            td_attributes: Check::Skip,
            xfam: Check::Skip,
            min_tee_tcb_svn: Check::Skip,
            report_data: Check::Skip,
            allowed_tcb_statuses: vec![TcbStatus::UpToDate],
            max_collateral_age_secs: Check::Skip,
            allow_debug: false,
        }
    }

    /// Read a TDX policy from a TOML table; `prefix` names it in errors.
    pub fn from_table(t: &toml::Table, prefix: &str) -> Result<TdxPolicy, PolicyError> {
        const KEYS: [&str; 14] = [
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "mrconfigid",
            "mrowner",
            "mrownerconfig",
            "td_attributes",
            "xfam",
            "min_tee_tcb_svn",
            "report_data",
            "allowed_tcb_statuses",
            "max_collateral_age_days",
        ];
        if let Some(k) = t
            .keys()
            .find(|k| !KEYS.contains(&k.as_str()) && k.as_str() != "allow_debug")
        {
            return Err(PolicyError::UnknownKey(format!("{prefix}.{k}")));
        }
        let key = |k: &str| format!("{prefix}.{k}");
        let statuses = match t.get("allowed_tcb_statuses") {
            None => return Err(PolicyError::Missing(key("allowed_tcb_statuses"))),
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| {
                    let s = v.as_str().unwrap_or_default();
                    match TcbStatus::from_name(s) {
                        Some(TcbStatus::Revoked) => Err(PolicyError::Invalid(
                            key("allowed_tcb_statuses"),
                            "Revoked can never be allowed".into(),
                        )),
                        Some(st) => Ok(st),
                        None => Err(PolicyError::Invalid(
                            key("allowed_tcb_statuses"),
                            format!("unknown TCB status {v:?}"),
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(PolicyError::Invalid(
                    key("allowed_tcb_statuses"),
                    "must be a non-empty list such as [\"UpToDate\"]".into(),
                ))
            }
        };
        let h48 = |k: &str| check(t, &key(k), k, hex_value::<48>);
        Ok(TdxPolicy {
            mrtd: check(t, &key("mrtd"), "mrtd", hex_list::<48>)?,
            rtmr: [h48("rtmr0")?, h48("rtmr1")?, h48("rtmr2")?, h48("rtmr3")?],
            mrconfigid: h48("mrconfigid")?,
            mrowner: h48("mrowner")?,
            mrownerconfig: h48("mrownerconfig")?,
            td_attributes: check(t, &key("td_attributes"), "td_attributes", hex_value::<8>)?,
            xfam: check(t, &key("xfam"), "xfam", hex_value::<8>)?,
            min_tee_tcb_svn: check(
                t,
                &key("min_tee_tcb_svn"),
                "min_tee_tcb_svn",
                hex_value::<16>,
            )?,
            report_data: check(t, &key("report_data"), "report_data", hex_value::<64>)?,
            allowed_tcb_statuses: statuses,
            max_collateral_age_secs: check(
                t,
                &key("max_collateral_age_days"),
                "max_collateral_age_days",
                |v| {
                    v.as_integer()
                        .and_then(|d| u64::try_from(d).ok())
                        .filter(|d| *d > 0)
                        .map(|d| d * 86_400)
                        .ok_or_else(|| "must be a positive number of days".to_string())
                },
            )?,
            allow_debug: flag(t, &key("allow_debug"), "allow_debug")?,
        })
    }
}

/// A dotted version ("550.90.07", "96.00.9F.00.01"), compared part by part
/// as numbers (decimal for drivers, hexadecimal for VBIOS versions, as
/// NVIDIA prints them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DottedVersion {
    text: String,
    parts: Vec<u64>,
}

impl DottedVersion {
    /// Parse a driver version (decimal parts).
    pub fn driver(s: &str) -> Result<DottedVersion, String> {
        Self::parse(s, 10)
    }
    /// Parse a VBIOS version (hexadecimal parts).
    pub fn vbios(s: &str) -> Result<DottedVersion, String> {
        Self::parse(s, 16)
    }
    fn parse(s: &str, radix: u32) -> Result<DottedVersion, String> {
        let parts = s
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 8 {
                    return Err(format!("{s:?} is not a dotted version"));
                }
                u64::from_str_radix(p, radix).map_err(|_| format!("{s:?} is not a dotted version"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DottedVersion {
            text: s.to_string(),
            parts,
        })
    }
    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// Whether `self` is at least `min` (missing parts count as 0).
    pub fn at_least(&self, min: &DottedVersion) -> bool {
        let n = self.parts.len().max(min.parts.len());
        for i in 0..n {
            let a = self.parts.get(i).copied().unwrap_or(0);
            let b = min.parts.get(i).copied().unwrap_or(0);
            if a != b {
                return a > b;
            }
        }
        true
    }
}

/// How revocation of NVIDIA certificates (device attestation keys and RIM
/// signers) is judged from OCSP responses carried as collateral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRule {
    /// A response without nextUpdate must be younger than this.
    pub max_age_secs: u64,
    /// Accept certificates on hold (OCSP `certificateHold`), which NVIDIA
    /// uses for certificates under investigation.
    pub allow_certificate_hold: bool,
}

/// What a client requires of the GPUs (and NVSwitches) of an enclave.
///
/// TOML form (every key must be present; `"skip"` skips it):
///
/// ```toml
/// [gpu]
/// gpus = 1                       # exact number of GPUs, or "skip"
/// switches = 0                   # exact number of NVSwitches, or "skip"
/// models = ["GH100"]             # or "skip"
/// min_driver = "550.90.07"       # or "skip"
/// min_vbios = "96.00.9F.00.01"   # or "skip"
/// cc_mode = "on"                 # or "skip"
/// rims = "required"              # measurements must match driver and VBIOS RIMs; or "skip"
/// revocation = { max_age_hours = 168, allow_certificate_hold = false }  # or "skip"
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuPolicy {
    /// Exact number of GPUs.
    pub gpus: Check<u32>,
    /// Exact number of NVSwitches.
    pub switches: Check<u32>,
    /// Allowed chip models (from the attestation key's certificate).
    pub models: Check<Vec<String>>,
    /// Minimum driver version.
    pub min_driver: Check<DottedVersion>,
    /// Minimum VBIOS version (GPUs; NVSwitch VBIOS versions are matched by
    /// their RIMs).
    pub min_vbios: Check<DottedVersion>,
    /// Confidential-computing mode on (and developer-tools mode off), as the
    /// measured enclave read it from the driver when it took the evidence.
    pub cc_mode: Check<()>,
    /// Every measurement must match the driver and VBIOS RIMs.
    pub rims: Check<()>,
    /// Revocation through OCSP responses.
    pub revocation: Check<RevocationRule>,
}

impl GpuPolicy {
    /// Every requirement skipped: carried GPU evidence is still checked for
    /// its signatures, chains and nonce, nothing more.
    pub fn integrity_only() -> GpuPolicy {
        GpuPolicy {
            gpus: Check::Skip,
            switches: Check::Skip,
            models: Check::Skip,
            min_driver: Check::Skip,
            min_vbios: Check::Skip,
            cc_mode: Check::Skip,
            rims: Check::Skip,
            revocation: Check::Skip,
        }
    }

    /// The strictest policy for `gpus` H100 GPUs without NVSwitches: CC mode
    /// on, RIMs and revocation required, versions skipped.
    pub fn h100(gpus: u32) -> GpuPolicy {
        GpuPolicy {
            gpus: Check::Require(gpus),
            switches: Check::Require(0),
            models: Check::Require(vec!["GH100".into()]),
            min_driver: Check::Skip,
            min_vbios: Check::Skip,
            cc_mode: Check::Require(()),
            rims: Check::Require(()),
            revocation: Check::Require(RevocationRule {
                max_age_secs: 7 * 86_400,
                allow_certificate_hold: false,
            }),
        }
    }

    /// Read a GPU policy from a TOML table; `prefix` names it in errors.
    pub fn from_table(t: &toml::Table, prefix: &str) -> Result<GpuPolicy, PolicyError> {
        const KEYS: [&str; 8] = [
            "gpus",
            "switches",
            "models",
            "min_driver",
            "min_vbios",
            "cc_mode",
            "rims",
            "revocation",
        ];
        if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(PolicyError::UnknownKey(format!("{prefix}.{k}")));
        }
        let key = |k: &str| format!("{prefix}.{k}");
        let count = |v: &toml::Value| {
            v.as_integer()
                .and_then(|i| u32::try_from(i).ok())
                .filter(|i| *i <= 64)
                .ok_or_else(|| "must be an integer 0..=64".to_string())
        };
        let word = |w: &'static str| {
            move |v: &toml::Value| {
                if v.as_str() == Some(w) {
                    Ok(())
                } else {
                    Err(format!("must be \"{w}\" or \"skip\""))
                }
            }
        };
        let version = |f: fn(&str) -> Result<DottedVersion, String>| {
            move |v: &toml::Value| {
                v.as_str()
                    .ok_or("must be a dotted version string".to_string())
                    .and_then(f)
            }
        };
        Ok(GpuPolicy {
            gpus: check(t, &key("gpus"), "gpus", count)?,
            switches: check(t, &key("switches"), "switches", count)?,
            models: check(t, &key("models"), "models", |v| {
                let arr = v
                    .as_array()
                    .ok_or("must be a list of model names or \"skip\"")?;
                if arr.is_empty() {
                    return Err(
                        "an empty list would reject everything; list models or write \"skip\""
                            .into(),
                    );
                }
                arr.iter()
                    .map(|m| {
                        m.as_str()
                            .map(str::to_string)
                            .ok_or("model names are strings".to_string())
                    })
                    .collect()
            })?,
            min_driver: check(
                t,
                &key("min_driver"),
                "min_driver",
                version(DottedVersion::driver),
            )?,
            min_vbios: check(
                t,
                &key("min_vbios"),
                "min_vbios",
                version(DottedVersion::vbios),
            )?,
            cc_mode: check(t, &key("cc_mode"), "cc_mode", word("on"))?,
            rims: check(t, &key("rims"), "rims", word("required"))?,
            revocation: check(t, &key("revocation"), "revocation", |v| {
                let r = v.as_table().ok_or(
                    "must be { max_age_hours = N, allow_certificate_hold = false } or \"skip\"",
                )?;
                if let Some(k) = r
                    .keys()
                    .find(|k| !["max_age_hours", "allow_certificate_hold"].contains(&k.as_str()))
                {
                    return Err(format!("unknown key {k}"));
                }
                let hours = r
                    .get("max_age_hours")
                    .and_then(toml::Value::as_integer)
                    .and_then(|h| u64::try_from(h).ok())
                    .filter(|h| (1..=24 * 365).contains(h))
                    .ok_or("max_age_hours must be 1..=8760")?;
                let hold = match r.get("allow_certificate_hold") {
                    None => false,
                    Some(toml::Value::Boolean(b)) => *b,
                    Some(_) => return Err("allow_certificate_hold must be true or false".into()),
                };
                Ok(RevocationRule {
                    max_age_secs: hours * 3600,
                    allow_certificate_hold: hold,
                })
            })?,
        })
    }

    /// The `[gpu]` table in TOML, as [`GpuPolicy::from_table`] reads it.
    pub fn to_toml(&self) -> String {
        format!(
            "[gpu]\ngpus = {}\nswitches = {}\nmodels = {}\nmin_driver = {}\nmin_vbios = {}\ncc_mode = {}\nrims = {}\nrevocation = {}\n",
            toml_check(&self.gpus, |n| n.to_string()),
            toml_check(&self.switches, |n| n.to_string()),
            toml_check(&self.models, |m| format!(
                "[{}]",
                m.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", ")
            )),
            toml_check(&self.min_driver, |v| format!("{:?}", v.as_str())),
            toml_check(&self.min_vbios, |v| format!("{:?}", v.as_str())),
            toml_check(&self.cc_mode, |()| "\"on\"".into()),
            toml_check(&self.rims, |()| "\"required\"".into()),
            toml_check(&self.revocation, |r| format!(
                "{{ max_age_hours = {}, allow_certificate_hold = {} }}",
                r.max_age_secs / 3600,
                r.allow_certificate_hold
            )),
        )
    }
}

/// Acceptance of the simulated TEE, which is NOT confidential. Only a policy
/// file with a `[dangerous_simulated_tee]` table that sets
/// `i_understand_this_is_not_confidential = true` has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedTeePolicy {
    /// Allowed simulated measurements (self-reported digests).
    pub measurements: Check<Vec<[u8; 48]>>,
}

impl SimulatedTeePolicy {
    /// The TOML table name: meant to look alarming in a review.
    pub const TABLE: &'static str = "dangerous_simulated_tee";
    /// The key that must be `true`.
    pub const OPT_IN: &'static str = "i_understand_this_is_not_confidential";

    fn from_table(t: &toml::Table) -> Result<SimulatedTeePolicy, PolicyError> {
        let key = |k: &str| format!("{}.{k}", Self::TABLE);
        if let Some(k) = t
            .keys()
            .find(|k| ![Self::OPT_IN, "measurements"].contains(&k.as_str()))
        {
            return Err(PolicyError::UnknownKey(key(k)));
        }
        if t.get(Self::OPT_IN) != Some(&toml::Value::Boolean(true)) {
            return Err(PolicyError::Invalid(
                key(Self::OPT_IN),
                "must be true to accept simulated evidence, which is not confidential".into(),
            ));
        }
        Ok(SimulatedTeePolicy {
            measurements: check(t, &key("measurements"), "measurements", hex_list::<48>)?,
        })
    }

    /// The table in TOML.
    pub fn to_toml(&self) -> String {
        format!(
            "# DANGER: accepts the simulated TEE. Nothing is confidential with it: the host\n# can read every prompt and answer. For demos and tests only.\n[{}]\n{} = true\nmeasurements = {}\n",
            Self::TABLE,
            Self::OPT_IN,
            toml_check(&self.measurements, |l| toml_hex_list(l)),
        )
    }
}

/// A whole policy file: the image release its reference values belong to,
/// and one section per platform the client accepts. A platform without a
/// section is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The image release the reference values were computed for.
    pub release: String,
    /// Requirements for SEV-SNP evidence, if SNP is accepted.
    pub snp: Option<SnpPolicy>,
    /// Requirements for TDX evidence, if TDX is accepted.
    pub tdx: Option<TdxPolicy>,
    /// Present only when the policy accepts the simulated TEE by name.
    pub simulated: Option<SimulatedTeePolicy>,
    /// Requirements for GPU evidence. Absent: the policy accepts only
    /// enclaves without GPU evidence (evidence with GPUs under a policy
    /// that says nothing about them is refused, naming the `[gpu]` table).
    pub gpu: Option<GpuPolicy>,
    /// `max_evidence_age` (seconds, or `"skip"`; required): how old a
    /// report (its claims' `issued_at`) may be. Enclaves re-attest on a
    /// timer with the same keys; `policy init` writes one hour.
    pub max_evidence_age: Check<u64>,
}

/// What `policy init` writes for `max_evidence_age`: one hour.
pub const DEFAULT_MAX_EVIDENCE_AGE_SECS: u64 = 3600;

impl Policy {
    /// Parse a policy file:
    ///
    /// ```toml
    /// release = "cocoon-image-2026.11.0"
    /// [snp]   # optional
    /// ...
    /// [tdx]   # optional
    /// ...
    /// ```
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| PolicyError::Toml(e.to_string()))?;
        if let Some(k) = doc.keys().find(|k| {
            ![
                "release",
                "max_evidence_age",
                "snp",
                "tdx",
                "gpu",
                SimulatedTeePolicy::TABLE,
            ]
            .contains(&k.as_str())
        }) {
            return Err(PolicyError::UnknownKey(k.clone()));
        }
        let release = match doc.get("release") {
            Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                return Err(PolicyError::Invalid(
                    "release".into(),
                    "must name the image release".into(),
                ))
            }
            None => return Err(PolicyError::Missing("release".into())),
        };
        let max_evidence_age = match doc.get("max_evidence_age") {
            Some(toml::Value::Integer(n)) if *n > 0 => Check::Require(*n as u64),
            Some(toml::Value::String(s)) if s == "skip" => Check::Skip,
            Some(_) => {
                return Err(PolicyError::Invalid(
                    "max_evidence_age".into(),
                    "must be a positive number of seconds, or \"skip\"".into(),
                ))
            }
            None => {
                return Err(PolicyError::Missing(
                    "max_evidence_age (seconds, or \"skip\"; policy init writes 3600)".into(),
                ))
            }
        };
        let table = |k: &str| -> Result<Option<&toml::Table>, PolicyError> {
            match doc.get(k) {
                None => Ok(None),
                Some(toml::Value::Table(t)) => Ok(Some(t)),
                Some(_) => Err(PolicyError::Invalid(k.into(), "must be a table".into())),
            }
        };
        let snp = table("snp")?
            .map(|t| SnpPolicy::from_table(t, "snp"))
            .transpose()?;
        let tdx = table("tdx")?
            .map(|t| TdxPolicy::from_table(t, "tdx"))
            .transpose()?;
        let simulated = table(SimulatedTeePolicy::TABLE)?
            .map(SimulatedTeePolicy::from_table)
            .transpose()?;
        let gpu = table("gpu")?
            .map(|t| GpuPolicy::from_table(t, "gpu"))
            .transpose()?;
        if snp.is_none() && tdx.is_none() && simulated.is_none() {
            return Err(PolicyError::Missing(
                "[snp] or [tdx] (a policy that accepts no platform accepts nothing)".into(),
            ));
        }
        Ok(Policy {
            release,
            snp,
            tdx,
            simulated,
            gpu,
            max_evidence_age,
        })
    }
}

fn toml_check<T>(c: &Check<T>, f: impl Fn(&T) -> String) -> String {
    match c {
        Check::Require(v) => f(v),
        Check::Skip => "\"skip\"".into(),
    }
}

fn toml_hex(b: &[u8]) -> String {
    format!("\"{}\"", hex::encode(b))
}

fn toml_hex_list<const N: usize>(l: &[[u8; N]]) -> String {
    format!(
        "[{}]",
        l.iter().map(|b| toml_hex(b)).collect::<Vec<_>>().join(", ")
    )
}

impl SnpPolicy {
    /// The `[snp]` table in TOML, as [`SnpPolicy::from_table`] reads it.
    pub fn to_toml(&self) -> String {
        let tcb = toml_check(&self.min_tcb, |t| {
            let mut table = format!("{{ fmc = {}", toml_check(&t.fmc, u8::to_string));
            for ((key, _), level) in TCB_SPLS.iter().zip(t.spls()) {
                table.push_str(&format!(", {key} = {level}"));
            }
            table + " }"
        });
        format!(
            "[snp]\nmeasurements = {}\nmin_tcb = {}\nvmpl = {}\nreport_data = {}\nhost_data = {}\nid_key_digests = {}\nauthor_key_digests = {}\nsmt = \"{}\"\nrevocation = {}\nallow_debug = {}\nallow_migration_agent = {}\n",
            toml_check(&self.measurements, |l| toml_hex_list(l)),
            tcb,
            toml_check(&self.vmpl, |v| v.to_string()),
            toml_check(&self.report_data, |b| toml_hex(b)),
            toml_check(&self.host_data, |b| toml_hex(b)),
            toml_check(&self.id_key_digests, |l| toml_hex_list(l)),
            toml_check(&self.author_key_digests, |l| toml_hex_list(l)),
            match self.smt {
                SmtRule::Allowed => "allowed",
                SmtRule::Forbidden => "forbidden",
            },
            toml_check(&self.revocation, |()| "\"required\"".into()),
            self.allow_debug,
            self.allow_migration_agent,
        )
    }
}

impl TdxPolicy {
    /// The `[tdx]` table in TOML, as [`TdxPolicy::from_table`] reads it.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[tdx]\nmrtd = {}\n",
            toml_check(&self.mrtd, |l| toml_hex_list(l))
        );
        for (i, r) in self.rtmr.iter().enumerate() {
            s.push_str(&format!("rtmr{i} = {}\n", toml_check(r, |b| toml_hex(b))));
        }
        s.push_str(&format!(
            "mrconfigid = {}\nmrowner = {}\nmrownerconfig = {}\ntd_attributes = {}\nxfam = {}\nmin_tee_tcb_svn = {}\nreport_data = {}\nallowed_tcb_statuses = [{}]\nmax_collateral_age_days = {}\nallow_debug = {}\n",
            toml_check(&self.mrconfigid, |b| toml_hex(b)),
            toml_check(&self.mrowner, |b| toml_hex(b)),
            toml_check(&self.mrownerconfig, |b| toml_hex(b)),
            toml_check(&self.td_attributes, |b| toml_hex(b)),
            toml_check(&self.xfam, |b| toml_hex(b)),
            toml_check(&self.min_tee_tcb_svn, |b| toml_hex(b)),
            toml_check(&self.report_data, |b| toml_hex(b)),
            self.allowed_tcb_statuses.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", "),
            toml_check(&self.max_collateral_age_secs, |s| (s / 86_400).to_string()),
            self.allow_debug,
        ));
        s
    }
}

impl Policy {
    /// The whole policy file in TOML, as [`Policy::from_toml`] reads it.
    pub fn to_toml(&self) -> String {
        let release = self.release.replace('\\', "\\\\").replace('"', "\\\"");
        let mut s = format!(
            "# Reference values for image release {release}.\n# Each value is required, or \"skip\" to skip it on purpose.\nrelease = \"{release}\"\nmax_evidence_age = {}\n",
            toml_check(&self.max_evidence_age, |n| n.to_string())
        );
        if let Some(p) = &self.snp {
            s.push('\n');
            s.push_str(&p.to_toml());
        }
        if let Some(p) = &self.tdx {
            s.push('\n');
            s.push_str(&p.to_toml());
        }
        if let Some(p) = &self.simulated {
            s.push('\n');
            s.push_str(&p.to_toml());
        }
        if let Some(p) = &self.gpu {
            s.push('\n');
            s.push_str(&p.to_toml());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[snp]
measurements = ["c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc"]
min_tcb = { fmc = "skip", bootloader = 10, tee = 0, snp = 25, microcode = 84 }
vmpl = 0
report_data = "skip"
host_data = "skip"
id_key_digests = "skip"
author_key_digests = "skip"
smt = "allowed"
revocation = "required"
"#;

    #[test]
    fn policies_round_trip_through_toml() {
        let mut snp = SnpPolicy::from_toml(FULL).unwrap();
        snp.min_tcb = Check::Require(MinTcb {
            fmc: Check::Require(1),
            bootloader: 2,
            tee: 3,
            snp: 4,
            microcode: 5,
        });
        snp.host_data = Check::Require([7; 32]);
        let mut tdx = TdxPolicy::pinned_to_mrtd(vec![[1; 48], [2; 48]]);
        tdx.rtmr[2] = Check::Require([3; 48]);
        tdx.xfam = Check::Require([0xe7, 0, 6, 0, 0, 0, 0, 0]);
        tdx.max_collateral_age_secs = Check::Require(30 * 86_400);
        tdx.allowed_tcb_statuses.push(TcbStatus::OutOfDate);
        let p = Policy {
            release: "cocoon-image \"test\" 1".into(),
            snp: Some(snp),
            tdx: Some(tdx),
            gpu: None,
            simulated: Some(SimulatedTeePolicy {
                measurements: Check::Skip,
            }),
            max_evidence_age: Check::Require(3600),
        };
        let text = p.to_toml();
        assert_eq!(Policy::from_toml(&text).unwrap(), p, "{text}");
        assert!(
            Policy::from_toml("release = \"x\"\nmax_evidence_age = \"skip\"\n").is_err(),
            "a policy accepting no platform"
        );
        assert!(
            Policy::from_toml(&text.replace("release = ", "# ")).is_err(),
            "release is required"
        );
    }

    #[test]
    fn revocation_is_required_or_skipped() {
        assert_eq!(
            SnpPolicy::from_toml(FULL).unwrap().revocation,
            Check::Require(())
        );
        let skip = FULL.replace("revocation = \"required\"", "revocation = \"skip\"");
        assert_eq!(SnpPolicy::from_toml(&skip).unwrap().revocation, Check::Skip);
        let missing = FULL.replace("revocation = \"required\"\n", "");
        assert_eq!(
            SnpPolicy::from_toml(&missing).unwrap_err(),
            PolicyError::Missing("snp.revocation".into())
        );
        let bad = FULL.replace("revocation = \"required\"", "revocation = true");
        assert!(matches!(
            SnpPolicy::from_toml(&bad),
            Err(PolicyError::Invalid(k, _)) if k == "snp.revocation"
        ));
    }

    #[test]
    fn turin_fmc_is_required_or_skipped() {
        let missing = FULL.replace("fmc = \"skip\", ", "");
        match SnpPolicy::from_toml(&missing) {
            Err(PolicyError::Invalid(k, why)) => {
                assert_eq!(k, "snp.min_tcb");
                assert!(why.contains("fmc is missing"), "{why}");
            }
            other => panic!("a min_tcb without fmc parsed: {other:?}"),
        }
        let bad = FULL.replace("fmc = \"skip\"", "fmc = \"any\"");
        assert!(matches!(
            SnpPolicy::from_toml(&bad),
            Err(PolicyError::Invalid(..))
        ));
        let set = FULL.replace("fmc = \"skip\"", "fmc = 3");
        let min = *SnpPolicy::from_toml(&set)
            .unwrap()
            .min_tcb
            .required()
            .unwrap();
        assert_eq!(min.fmc, Check::Require(3));
        let turin = |fmc| TcbParts {
            fmc: Some(fmc),
            bootloader: 10,
            tee: 0,
            snp: 25,
            microcode: 84,
        };
        assert_eq!(min.shortfalls(&turin(2)), vec![("FMC", 2, 3)]);
        assert!(min.shortfalls(&turin(3)).is_empty());
        // Milan and Genoa have no FMC: nothing to compare.
        let milan = TcbParts {
            fmc: None,
            ..turin(0)
        };
        assert!(min.shortfalls(&milan).is_empty());
        let skipped = *SnpPolicy::from_toml(FULL)
            .unwrap()
            .min_tcb
            .required()
            .unwrap();
        assert_eq!(skipped.fmc, Check::Skip);
        assert!(skipped.shortfalls(&turin(0)).is_empty());
    }

    #[test]
    fn full_policy_parses() {
        let p = SnpPolicy::from_toml(FULL).unwrap();
        assert_eq!(p.vmpl, Check::Require(0));
        assert!(!p.allow_debug);
        assert_eq!(p.min_tcb.required().unwrap().snp, 25);
        assert_eq!(p.report_data, Check::Skip);
    }

    #[test]
    fn missing_and_unknown_keys_are_errors() {
        let no_vmpl = FULL.replace("vmpl = 0\n", "");
        assert_eq!(
            SnpPolicy::from_toml(&no_vmpl).unwrap_err(),
            PolicyError::Missing("snp.vmpl".into())
        );
        let typo = FULL.replace("vmpl = 0", "vmpl = 0\nallow_debg = true");
        assert!(
            matches!(SnpPolicy::from_toml(&typo), Err(PolicyError::UnknownKey(k)) if k == "snp.allow_debg")
        );
        let short = FULL.replace("c577", "");
        assert!(
            matches!(SnpPolicy::from_toml(&short), Err(PolicyError::Invalid(k, _)) if k == "snp.measurements")
        );
        let empty = FULL.replace(
            "[\"c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc\"]",
            "[]",
        );
        assert!(SnpPolicy::from_toml(&empty).is_err());
    }
}

#[cfg(test)]
mod gpu_tests {
    use super::*;

    const BASE: &str = "release = \"r\"\nmax_evidence_age = \"skip\"\n[dangerous_simulated_tee]\ni_understand_this_is_not_confidential = true\nmeasurements = \"skip\"\n";

    #[test]
    fn gpu_policy_round_trips_and_every_key_is_required() {
        let mut g = GpuPolicy::h100(8);
        g.min_driver = Check::Require(DottedVersion::driver("550.90.07").unwrap());
        g.min_vbios = Check::Require(DottedVersion::vbios("96.00.9F.00.01").unwrap());
        let text = format!("{BASE}\n{}", g.to_toml());
        let p = Policy::from_toml(&text).unwrap();
        assert_eq!(p.gpu.as_ref(), Some(&g));
        assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p);
        let mut skipped = g.clone();
        skipped.revocation = Check::Skip;
        skipped.rims = Check::Skip;
        let p = Policy::from_toml(&format!("{BASE}\n{}", skipped.to_toml())).unwrap();
        assert_eq!(p.gpu, Some(skipped));
        for key in [
            "gpus",
            "switches",
            "models",
            "min_driver",
            "min_vbios",
            "cc_mode",
            "rims",
            "revocation",
        ] {
            let without: String = g
                .to_toml()
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(
                Policy::from_toml(&format!("{BASE}\n{without}")),
                Err(PolicyError::Missing(format!("gpu.{key}"))),
                "{key}"
            );
        }
        let typo = format!("{BASE}\n{}cc_mod = \"on\"\n", g.to_toml());
        assert!(matches!(
            Policy::from_toml(&typo),
            Err(PolicyError::UnknownKey(_))
        ));
        let bad = format!(
            "{BASE}\n{}",
            g.to_toml().replace("cc_mode = \"on\"", "cc_mode = \"off\"")
        );
        assert!(matches!(
            Policy::from_toml(&bad),
            Err(PolicyError::Invalid(..))
        ));
    }

    #[test]
    fn versions_compare_part_by_part() {
        let v = |s| DottedVersion::driver(s).unwrap();
        assert!(v("550.90.07").at_least(&v("550.90.07")));
        assert!(v("550.144.03").at_least(&v("550.90.07")));
        assert!(!v("535.86.09").at_least(&v("550.90.07")));
        assert!(v("590.12").at_least(&v("590.12.0")));
        let b = |s| DottedVersion::vbios(s).unwrap();
        assert!(b("96.00.A5.00.01").at_least(&b("96.00.9F.00.01")));
        assert!(!b("96.00.5E.00.01").at_least(&b("96.00.9F.00.01")));
        assert!(DottedVersion::driver("5x.1").is_err());
        assert!(DottedVersion::driver("").is_err());
        assert!(DottedVersion::driver("1..2").is_err());
    }
}
