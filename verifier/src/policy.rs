//! Reference values a client requires of evidence.
//!
//! Owns the policy types and their TOML form. Every reference value is a
//! [`Check`]: either required ([`Check::Require`]) or explicitly skipped
//! ([`Check::Skip`]); there is no "unset means anything". Safety switches
//! (debug, migration agent) default to the strict side and must be turned
//! off by name. This module compares nothing: `snp` does. The file form
//! (keys, value shapes, errors, the writer) is `toml_form`'s.
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

use cocoon_attestation::snp::{FmcLevel, TcbParts};
use serde::{Deserialize, Serialize};

pub mod derive;
mod toml_form;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", expecting = "\"allowed\" or \"forbidden\"")]
pub enum SmtRule {
    /// SMT may be on.
    Allowed,
    /// The platform must report SMT disabled.
    Forbidden,
}

/// What a client requires of an SEV-SNP report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "toml_form::SnpTable", into = "toml_form::SnpTable")]
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

    /// Read the `[snp]` table of a policy file (its other keys are not
    /// read).
    pub fn from_toml(text: &str) -> Result<SnpPolicy, PolicyError> {
        toml_form::read::<toml_form::SnpDocument>(text).map(|d| d.snp)
    }

    /// The `[snp]` table in TOML, as [`SnpPolicy::from_toml`] reads it.
    pub fn to_toml(&self) -> String {
        toml_form::section("snp", self)
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

/// Decode exactly `N` bytes of hex.
pub fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| format!("must be {} hex digits, got {:?}", 2 * N, s))?;
    Ok(out)
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "toml_form::TdxTable", into = "toml_form::TdxTable")]
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

    /// The `[tdx]` table in TOML, as [`Policy::from_toml`] reads it.
    pub fn to_toml(&self) -> String {
        toml_form::section("tdx", self)
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "toml_form::GpuTable", into = "toml_form::GpuTable")]
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

    /// The `[gpu]` table in TOML, as [`Policy::from_toml`] reads it.
    pub fn to_toml(&self) -> String {
        toml_form::section("gpu", self)
    }
}

/// Acceptance of the simulated TEE, which is NOT confidential. Only a policy
/// file with a `[dangerous_simulated_tee]` table that sets
/// `i_understand_this_is_not_confidential = true` has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "toml_form::SimulatedTable", into = "toml_form::SimulatedTable")]
pub struct SimulatedTeePolicy {
    /// Allowed simulated measurements (self-reported digests).
    pub measurements: Check<Vec<[u8; 48]>>,
}

impl SimulatedTeePolicy {
    /// The TOML table name: meant to look alarming in a review.
    pub const TABLE: &'static str = "dangerous_simulated_tee";
    /// The key that must be `true`.
    pub const OPT_IN: &'static str = "i_understand_this_is_not_confidential";

    /// The table in TOML, under a comment saying what it gives away.
    pub fn to_toml(&self) -> String {
        format!(
            "{}{}",
            toml_form::DANGER,
            toml_form::section(Self::TABLE, self)
        )
    }
}

/// A whole policy file: the image release its reference values belong to,
/// and one section per platform the client accepts. A platform without a
/// section is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml_form::PolicyFile", into = "toml_form::PolicyFile")]
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
        Policy::try_from(toml_form::read::<toml_form::PolicyFile>(text)?)
    }

    /// The whole policy file in TOML, as [`Policy::from_toml`] reads it.
    pub fn to_toml(&self) -> String {
        toml_form::policy(self)
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

    /// Every policy this module can express, as far as the file can say
    /// it (ages in whole days and hours).
    fn every_shape() -> Vec<Policy> {
        let full_snp = SnpPolicy {
            measurements: Check::Require(vec![[1; 48], [2; 48]]),
            min_tcb: Check::Require(MinTcb {
                fmc: Check::Skip,
                bootloader: 255,
                tee: 0,
                snp: 22,
                microcode: 213,
            }),
            vmpl: Check::Require(3),
            report_data: Check::Require([9; 64]),
            host_data: Check::Require([8; 32]),
            id_key_digests: Check::Require(vec![[7; 48]]),
            author_key_digests: Check::Require(vec![[6; 48]]),
            smt: SmtRule::Forbidden,
            revocation: Check::Require(()),
            allow_debug: true,
            allow_migration_agent: true,
        };
        let mut skipped_snp = SnpPolicy::pinned_to_measurements(vec![[3; 48]]);
        skipped_snp.measurements = Check::Skip;
        skipped_snp.vmpl = Check::Skip;
        let mut full_tdx = TdxPolicy::pinned_to_mrtd(vec![[4; 48]]);
        full_tdx.rtmr = [0, 1, 2, 3].map(|i| Check::Require([i; 48]));
        full_tdx.mrconfigid = Check::Require([5; 48]);
        full_tdx.mrowner = Check::Require([6; 48]);
        full_tdx.mrownerconfig = Check::Require([7; 48]);
        full_tdx.td_attributes = Check::Require([0, 0, 0, 0x10, 0, 0, 0, 0]);
        full_tdx.min_tee_tcb_svn = Check::Require([1; 16]);
        full_tdx.report_data = Check::Require([2; 64]);
        full_tdx.allowed_tcb_statuses = TcbStatus::ALL
            .into_iter()
            .filter(|t| *t != TcbStatus::Revoked)
            .collect();
        full_tdx.max_collateral_age_secs = Check::Require(86_400);
        full_tdx.allow_debug = true;
        let mut gpu = GpuPolicy::h100(8);
        gpu.models = Check::Require(vec!["GH100".into(), "GB100 \"x\"".into()]);
        gpu.min_driver = Check::Require(DottedVersion::driver("550.90.07").unwrap());
        gpu.min_vbios = Check::Require(DottedVersion::vbios("96.00.9F.00.01").unwrap());
        gpu.revocation = Check::Require(RevocationRule {
            max_age_secs: 3600,
            allow_certificate_hold: true,
        });
        let base = Policy {
            release: "r".into(),
            snp: None,
            tdx: None,
            simulated: None,
            gpu: None,
            max_evidence_age: Check::Skip,
        };
        vec![
            Policy {
                snp: Some(full_snp),
                tdx: Some(full_tdx),
                gpu: Some(gpu),
                max_evidence_age: Check::Require(i64::MAX as u64),
                release: "a 'quoted' \"release\"\nwith a line break".into(),
                ..base.clone()
            },
            Policy {
                snp: Some(skipped_snp),
                tdx: Some(TdxPolicy::pinned_to_mrtd(vec![[1; 48]])),
                gpu: Some(GpuPolicy::integrity_only()),
                ..base.clone()
            },
            Policy {
                simulated: Some(SimulatedTeePolicy {
                    measurements: Check::Require(vec![[0x5a; 48]]),
                }),
                max_evidence_age: Check::Require(1),
                ..base.clone()
            },
            Policy {
                simulated: Some(SimulatedTeePolicy {
                    measurements: Check::Skip,
                }),
                ..base
            },
        ]
    }

    #[test]
    fn every_policy_round_trips_through_toml() {
        for p in every_shape() {
            let text = p.to_toml();
            assert_eq!(Policy::from_toml(&text).as_ref(), Ok(&p), "{text}");
            // The sections alone read back as well.
            let mut sections = String::from("release = \"r\"\nmax_evidence_age = \"skip\"\n");
            for s in [
                p.snp.as_ref().map(SnpPolicy::to_toml),
                p.tdx.as_ref().map(TdxPolicy::to_toml),
                p.simulated.as_ref().map(SimulatedTeePolicy::to_toml),
                p.gpu.as_ref().map(GpuPolicy::to_toml),
            ]
            .into_iter()
            .flatten()
            {
                sections.push_str(&s);
            }
            let back = Policy::from_toml(&sections).unwrap();
            assert_eq!(
                (&back.snp, &back.tdx, &back.simulated, &back.gpu),
                (&p.snp, &p.tdx, &p.simulated, &p.gpu),
                "{sections}"
            );
            if let Some(snp) = &p.snp {
                assert_eq!(SnpPolicy::from_toml(&snp.to_toml()).as_ref(), Ok(snp));
            }
            // One key a line, inline tables inline: a reviewer reads every
            // reference value where it is named.
            if p.snp.as_ref().is_some_and(|s| s.min_tcb != Check::Skip) {
                assert!(
                    text.contains("\nmin_tcb = { fmc = \"skip\", bootloader = 255"),
                    "{text}"
                );
            }
            if let Some(sim) = &p.simulated {
                let table = format!(
                    "[{}]\n{} = true\n",
                    SimulatedTeePolicy::TABLE,
                    SimulatedTeePolicy::OPT_IN
                );
                assert!(
                    text.contains(&format!("{}{table}", toml_form::DANGER)),
                    "{text}"
                );
                assert!(sim.to_toml().starts_with(toml_form::DANGER));
            }
            // The header comment stays one comment, whatever the release says.
            assert!(text.lines().take(2).all(|l| l.starts_with("# ")), "{text}");
        }
    }

    #[test]
    fn errors_name_the_key_and_what_to_write() {
        let base = "release = \"x\"\nmax_evidence_age = \"skip\"\n";
        let sim = "[dangerous_simulated_tee]\ni_understand_this_is_not_confidential = true\nmeasurements = \"skip\"\n";
        let gpu = GpuPolicy::h100(1).to_toml();
        let cases: Vec<(String, &str)> = vec![
            (FULL.replace("vmpl = 0", "vmpl = 4"), "policy key snp.vmpl: must be an integer 0..=3"),
            (FULL.replace("vmpl = 0", "vmpl = \"0\""), "policy key snp.vmpl: invalid type: string \"0\", expected an integer 0..=3"),
            (FULL.replace("min_tcb = {", "min_tcb = { extra = 1,"), "policy key snp.min_tcb.extra is not known"),
            (FULL.replace("bootloader = 10, ", ""), "policy key snp.min_tcb: bootloader is missing"),
            (FULL.replace("smt = \"allowed\"", "smt = \"sometimes\""), "policy key snp.smt: unknown variant `sometimes`, expected `allowed` or `forbidden`"),
            (FULL.replace("vmpl = 0", "vmpl = 0\nallow_debug = 1"), "policy key snp.allow_debug: invalid type: integer `1`, expected a boolean"),
            (FULL.replace("c577", "zz77"), "policy key snp.measurements: entry 1 of the list: must be 96 hex digits, got \"zz7729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc\""),
            (FULL.replace("report_data = \"skip\"", "report_data = 5"), "policy key snp.report_data: invalid type: integer `5`, expected a string of 128 hex digits"),
            ("[snp]\nmeasurements = []\n".into(), "policy key snp.measurements: an empty list would reject everything; list values or write \"skip\""),
            ("snp = 1\n".into(), "policy key snp: invalid type: integer `1`, expected a table"),
            (format!("{sim}color = 1\n"), "policy key dangerous_simulated_tee.color is not known"),
            ("[dangerous_simulated_tee]\nmeasurements = \"skip\"\n".into(), "policy key dangerous_simulated_tee.i_understand_this_is_not_confidential: must be true to accept simulated evidence, which is not confidential"),
            (format!("{sim}{}", gpu.replace("gpus = 1", "gpus = 65")), "policy key gpu.gpus: must be an integer 0..=64"),
            (format!("{sim}{}", gpu.replace("cc_mode = \"on\"", "cc_mode = \"off\"")), "policy key gpu.cc_mode: unknown variant `off`, expected `on`"),
            (format!("{sim}{}", gpu.replace("max_age_hours = 168", "max_age_hours = 0")), "policy key gpu.revocation.max_age_hours: must be an integer 1..=8760"),
            (format!("{sim}{}", gpu.replace("max_age_hours = 168, ", "")), "policy key gpu.revocation: max_age_hours is missing"),
            (format!("{sim}{}", gpu.replace("skip", "5x.1")), "policy key gpu.min_driver: \"5x.1\" is not a dotted version"),
            (format!("{sim}{}", TdxPolicy::pinned_to_mrtd(vec![[1; 48]]).to_toml().replace("[\"UpToDate\"]", "[\"UpToDate\", \"Revoked\"]")), "policy key tdx.allowed_tcb_statuses: entry 2 of the list: Revoked can never be allowed"),
            (format!("{sim}{}", TdxPolicy::pinned_to_mrtd(vec![[1; 48]]).to_toml().replace("[\"UpToDate\"]", "[]")), "policy key tdx.allowed_tcb_statuses: must be a non-empty list such as [\"UpToDate\"]"),
            (format!("{sim}{}", TdxPolicy::pinned_to_mrtd(vec![[1; 48]]).to_toml().replace("max_collateral_age_days = \"skip\"", "max_collateral_age_days = 0")), "policy key tdx.max_collateral_age_days: must be an integer of at least 1"),
        ];
        for (body, want) in cases {
            let got = Policy::from_toml(&format!("{base}{body}")).unwrap_err();
            assert_eq!(got.to_string(), want, "{body}");
        }
        for (text, want) in [
            (format!("release = \"\"\nmax_evidence_age = 1\n{sim}"), "policy key release: must name the image release"),
            (format!("release = \"x\"\n{sim}"), "policy key max_evidence_age (seconds, or \"skip\"; policy init writes 3600) is missing: give a value or write \"skip\" to skip it explicitly"),
            (format!("release = \"x\"\nmax_evidence_age = 0\n{sim}"), "policy key max_evidence_age: must be an integer of at least 1"),
            (format!("{base}relase = 1\n{sim}"), "policy key relase is not known"),
            ("release = [".into(), "policy is not valid TOML"),
        ] {
            let got = Policy::from_toml(&text).unwrap_err().to_string();
            assert!(got.starts_with(want), "{got}\n{text}");
        }
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
