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
//! min_tcb = { bootloader = 4, tee = 0, snp = 22, microcode = 213 }  # Turin adds fmc; or "skip"
//! vmpl = 0                                     # or "skip"
//! report_data = "<128 hex digits>"             # or "skip"
//! host_data = "<64 hex digits>"                # or "skip"
//! id_key_digests = ["<96 hex digits>"]         # or "skip"
//! author_key_digests = ["<96 hex digits>"]     # or "skip"
//! smt = "allowed"                              # or "forbidden"
//! allow_debug = false                          # optional, default false
//! allow_migration_agent = false                # optional, default false
//! ```

use core::fmt;

use cocoon_attestation::snp::TcbParts;

/// A reference value that is either required or explicitly skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
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
/// (the TCB the signing key was derived for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinTcb {
    /// Minimum FMC SPL (Turin); `None` means not checked on Turin and
    /// ignored on products without an FMC.
    pub fmc: Option<u8>,
    /// Minimum bootloader SPL.
    pub bootloader: u8,
    /// Minimum PSP OS (TEE) SPL.
    pub tee: u8,
    /// Minimum SNP firmware SPL.
    pub snp: u8,
    /// Minimum microcode SPL.
    pub microcode: u8,
}

impl MinTcb {
    /// The components that fall short, as `(name, have, need)`.
    pub fn shortfalls(&self, have: &TcbParts) -> Vec<(&'static str, u8, u8)> {
        let mut out = Vec::new();
        if let (Some(need), Some(h)) = (self.fmc, have.fmc) {
            if h < need {
                out.push(("FMC", h, need));
            }
        }
        for (name, h, need) in [
            ("bootloader", have.bootloader, self.bootloader),
            ("TEE", have.tee, self.tee),
            ("SNP", have.snp, self.snp),
            ("microcode", have.microcode, self.microcode),
        ] {
            if h < need {
                out.push((name, h, need));
            }
        }
        out
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
    /// Accept guests whose policy lets the host debug them. Never in production.
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent.
    pub allow_migration_agent: bool,
}

impl SnpPolicy {
    /// A strict policy pinned to the given measurements: VMPL 0, debug and
    /// migration agent forbidden, SMT allowed, and every other reference
    /// value explicitly skipped. Callers tighten it field by field.
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
        const KEYS: [&str; 10] = [
            "measurements",
            "min_tcb",
            "vmpl",
            "report_data",
            "host_data",
            "id_key_digests",
            "author_key_digests",
            "smt",
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
        .ok_or("must be a table {bootloader, tee, snp, microcode[, fmc]} or \"skip\"")?;
    if let Some(k) = t
        .keys()
        .find(|k| !["fmc", "bootloader", "tee", "snp", "microcode"].contains(&k.as_str()))
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
    Ok(MinTcb {
        fmc: get("fmc")?,
        bootloader: need("bootloader")?,
        tee: need("tee")?,
        snp: need("snp")?,
        microcode: need("microcode")?,
    })
}

impl fmt::Display for MinTcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[snp]
measurements = ["c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc"]
min_tcb = { bootloader = 10, tee = 0, snp = 25, microcode = 84 }
vmpl = 0
report_data = "skip"
host_data = "skip"
id_key_digests = "skip"
author_key_digests = "skip"
smt = "allowed"
"#;

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
