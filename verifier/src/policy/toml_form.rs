//! The TOML form of a policy: which keys each table has, the shape of each
//! value, the error a person reads when one is wrong, and the writer.
//!
//! Owns the serde mirrors of the policy types (one struct per table, field
//! for field as the file spells it: `rtmr0`..`rtmr3`, days, hours, the
//! simulated TEE's opt-in), the value shapes they are made of (hex,
//! non-empty lists, bounded integers, fixed words) and the mapping of serde
//! errors to [`PolicyError`] with the key's dotted path. It must not hold
//! a rule about evidence: the parent module defines the types, `snp`,
//! `tdx` and `enclave` compare.

use core::fmt;
use core::marker::PhantomData;
use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    parse_hex, Check, DottedVersion, GpuPolicy, MinTcb, Policy, PolicyError, RevocationRule,
    SimulatedTeePolicy, SmtRule, SnpPolicy, TcbStatus, TdxPolicy, DEFAULT_MAX_EVIDENCE_AGE_SECS,
};

/// The word that skips a reference value.
const SKIP: &str = "skip";

impl<T: Serialize> Serialize for Check<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Check::Require(v) => v.serialize(s),
            Check::Skip => s.serialize_str(SKIP),
        }
    }
}

/// `"skip"`, or whatever `T` reads: the value is handed to `T` as it came,
/// so `T`'s own errors reach the reader.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Check<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Check<T>, D::Error> {
        d.deserialize_any(CheckVisitor(PhantomData))
    }
}

struct CheckVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for CheckVisitor<T> {
    type Value = Check<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value or \"skip\"")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Check<T>, E> {
        T::deserialize(v.into_deserializer()).map(Check::Require)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Check<T>, E> {
        T::deserialize(v.into_deserializer()).map(Check::Require)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Check<T>, E> {
        T::deserialize(v.into_deserializer()).map(Check::Require)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Check<T>, E> {
        T::deserialize(v.into_deserializer()).map(Check::Require)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Check<T>, E> {
        if v == SKIP {
            return Ok(Check::Skip);
        }
        T::deserialize(v.into_deserializer()).map(Check::Require)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Check<T>, A::Error> {
        T::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Check::Require)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Check<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Check::Require)
    }
}

// ---------------------------------------------------------------------------
// Value shapes.

/// Exactly `N` bytes, written as `2N` hex digits.
#[derive(Clone, Copy)]
pub(super) struct Hex<const N: usize>(pub [u8; N]);

impl<const N: usize> Serialize for Hex<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Hex<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hex<N>, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = Hex<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string of {} hex digits", 2 * N)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Hex<N>, E> {
                parse_hex::<N>(s).map(Hex).map_err(E::custom)
            }
        }
        d.deserialize_str(V::<N>)
    }
}

/// A list that may not be empty: an empty one would accept nothing.
#[derive(Clone)]
pub(super) struct List<T>(pub Vec<T>);

impl<T: Serialize> Serialize for List<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<List<T>, D::Error> {
        let v = Vec::<T>::deserialize(d)?;
        if v.is_empty() {
            return Err(de::Error::custom(
                "an empty list would reject everything; list values or write \"skip\"",
            ));
        }
        Ok(List(v))
    }
}

/// The largest integer TOML holds.
const TOML_MAX: u64 = i64::MAX as u64;

/// An integer in `LO..=HI` (`HI` at most [`TOML_MAX`]).
#[derive(Clone, Copy)]
pub(super) struct Int<const LO: u64, const HI: u64>(pub u64);

impl<const LO: u64, const HI: u64> Int<LO, HI> {
    /// `n`, or `HI` where `n` is larger: what a file can say.
    fn saturating(n: u64) -> Self {
        Int(n.min(HI))
    }
}

impl<const LO: u64, const HI: u64> Serialize for Int<LO, HI> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.min(TOML_MAX))
    }
}

impl<'de, const LO: u64, const HI: u64> Deserialize<'de> for Int<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const LO: u64, const HI: u64>;
        impl<const LO: u64, const HI: u64> V<LO, HI> {
            fn check<E: de::Error>(n: Option<u64>) -> Result<Int<LO, HI>, E> {
                n.filter(|n| (LO..=HI).contains(n))
                    .map(Int)
                    .ok_or_else(|| E::custom(format_args!("must be {}", V::<LO, HI>)))
            }
        }
        impl<const LO: u64, const HI: u64> fmt::Display for V<LO, HI> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if HI > 1_000_000 {
                    write!(f, "an integer of at least {LO}")
                } else {
                    write!(f, "an integer {LO}..={HI}")
                }
            }
        }
        impl<const LO: u64, const HI: u64> Visitor<'_> for V<LO, HI> {
            type Value = Int<LO, HI>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Int<LO, HI>, E> {
                Self::check(u64::try_from(n).ok())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Int<LO, HI>, E> {
                Self::check(Some(n))
            }
        }
        d.deserialize_u64(V::<LO, HI>)
    }
}

/// `"required"`, the one value of a check that has nothing to compare.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", expecting = "\"required\" or \"skip\"")]
pub(super) enum Required {
    Required,
}

/// `"on"`: confidential-computing mode must be on.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", expecting = "\"on\" or \"skip\"")]
pub(super) enum On {
    On,
}

/// A dotted version with decimal parts (a driver).
#[derive(Clone)]
pub(super) struct Driver(pub DottedVersion);
/// A dotted version with hexadecimal parts (a VBIOS).
#[derive(Clone)]
pub(super) struct Vbios(pub DottedVersion);

impl Serialize for Driver {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}
impl Serialize for Vbios {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}
impl<'de> Deserialize<'de> for Driver {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Driver, D::Error> {
        let s = String::deserialize(d)?;
        DottedVersion::driver(&s)
            .map(Driver)
            .map_err(de::Error::custom)
    }
}
impl<'de> Deserialize<'de> for Vbios {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Vbios, D::Error> {
        let s = String::deserialize(d)?;
        DottedVersion::vbios(&s)
            .map(Vbios)
            .map_err(de::Error::custom)
    }
}

/// The TCB statuses a TDX policy accepts: Intel's names, at least one,
/// never `Revoked`.
#[derive(Clone)]
pub(super) struct Statuses(pub Vec<TcbStatus>);

impl Serialize for Statuses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|t| t.name()))
    }
}

impl<'de> Deserialize<'de> for Statuses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Statuses, D::Error> {
        struct Status(TcbStatus);
        impl<'de> Deserialize<'de> for Status {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
                let s = String::deserialize(d)?;
                match TcbStatus::from_name(&s) {
                    Some(TcbStatus::Revoked) => {
                        Err(de::Error::custom("Revoked can never be allowed"))
                    }
                    Some(t) => Ok(Status(t)),
                    None => Err(de::Error::custom(format_args!("unknown TCB status {s:?}"))),
                }
            }
        }
        let v = Vec::<Status>::deserialize(d)?;
        if v.is_empty() {
            return Err(de::Error::custom(
                "must be a non-empty list such as [\"UpToDate\"]",
            ));
        }
        Ok(Statuses(v.into_iter().map(|s| s.0).collect()))
    }
}

/// `true`: the simulated TEE's opt-in, which nothing else satisfies.
#[derive(Clone, Copy)]
pub(super) struct OptIn;

const OPT_IN_REASON: &str = "must be true to accept simulated evidence, which is not confidential";

impl Serialize for OptIn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

impl<'de> Deserialize<'de> for OptIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OptIn, D::Error> {
        match bool::deserialize(d)? {
            true => Ok(OptIn),
            false => Err(de::Error::custom(OPT_IN_REASON)),
        }
    }
}

/// The image release a policy was written for: not empty.
#[derive(Clone)]
pub(super) struct Release(pub String);

impl Serialize for Release {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Release {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Release, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("must name the image release"));
        }
        Ok(Release(s))
    }
}

impl<T> Check<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Check<U> {
        match self {
            Check::Require(v) => Check::Require(f(v)),
            Check::Skip => Check::Skip,
        }
    }
}

fn hexes<const N: usize>(l: Check<List<Hex<N>>>) -> Check<Vec<[u8; N]>> {
    l.map(|l| l.0.into_iter().map(|h| h.0).collect())
}

fn to_hexes<const N: usize>(l: Check<Vec<[u8; N]>>) -> Check<List<Hex<N>>> {
    l.map(|l| List(l.into_iter().map(Hex).collect()))
}

// ---------------------------------------------------------------------------
// The tables.

/// `min_tcb = { .. }`: the file form of [`MinTcb`] (the attestation
/// crate's `TcbParts` over reference levels).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table {fmc, bootloader, tee, snp, microcode} or \"skip\""
)]
pub(super) struct MinTcbTable {
    fmc: Check<u8>,
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
}

impl From<MinTcbTable> for MinTcb {
    fn from(t: MinTcbTable) -> MinTcb {
        let MinTcbTable {
            fmc,
            bootloader,
            tee,
            snp,
            microcode,
        } = t;
        MinTcb {
            fmc,
            bootloader,
            tee,
            snp,
            microcode,
        }
    }
}

impl From<MinTcb> for MinTcbTable {
    fn from(m: MinTcb) -> MinTcbTable {
        let MinTcb {
            fmc,
            bootloader,
            tee,
            snp,
            microcode,
        } = m;
        MinTcbTable {
            fmc,
            bootloader,
            tee,
            snp,
            microcode,
        }
    }
}

/// `[snp]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct SnpTable {
    measurements: Check<List<Hex<48>>>,
    min_tcb: Check<MinTcbTable>,
    vmpl: Check<Int<0, 3>>,
    report_data: Check<Hex<64>>,
    host_data: Check<Hex<32>>,
    id_key_digests: Check<List<Hex<48>>>,
    author_key_digests: Check<List<Hex<48>>>,
    smt: SmtRule,
    revocation: Check<Required>,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default)]
    allow_migration_agent: bool,
}

impl From<SnpTable> for SnpPolicy {
    fn from(t: SnpTable) -> SnpPolicy {
        SnpPolicy {
            measurements: hexes(t.measurements),
            min_tcb: t.min_tcb.map(MinTcb::from),
            vmpl: t.vmpl.map(|v| v.0 as u32),
            report_data: t.report_data.map(|h| h.0),
            host_data: t.host_data.map(|h| h.0),
            id_key_digests: hexes(t.id_key_digests),
            author_key_digests: hexes(t.author_key_digests),
            smt: t.smt,
            revocation: t.revocation.map(|_| ()),
            allow_debug: t.allow_debug,
            allow_migration_agent: t.allow_migration_agent,
        }
    }
}

impl From<SnpPolicy> for SnpTable {
    fn from(p: SnpPolicy) -> SnpTable {
        SnpTable {
            measurements: to_hexes(p.measurements),
            min_tcb: p.min_tcb.map(MinTcbTable::from),
            vmpl: p.vmpl.map(|v| Int(v.into())),
            report_data: p.report_data.map(Hex),
            host_data: p.host_data.map(Hex),
            id_key_digests: to_hexes(p.id_key_digests),
            author_key_digests: to_hexes(p.author_key_digests),
            smt: p.smt,
            revocation: p.revocation.map(|()| Required::Required),
            allow_debug: p.allow_debug,
            allow_migration_agent: p.allow_migration_agent,
        }
    }
}

const DAY: u64 = 86_400;
const HOUR: u64 = 3600;

/// `[tdx]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct TdxTable {
    mrtd: Check<List<Hex<48>>>,
    rtmr0: Check<Hex<48>>,
    rtmr1: Check<Hex<48>>,
    rtmr2: Check<Hex<48>>,
    rtmr3: Check<Hex<48>>,
    mrconfigid: Check<Hex<48>>,
    mrowner: Check<Hex<48>>,
    mrownerconfig: Check<Hex<48>>,
    td_attributes: Check<Hex<8>>,
    xfam: Check<Hex<8>>,
    min_tee_tcb_svn: Check<Hex<16>>,
    report_data: Check<Hex<64>>,
    allowed_tcb_statuses: Statuses,
    max_collateral_age_days: Check<Int<1, { TOML_MAX / DAY }>>,
    #[serde(default)]
    allow_debug: bool,
}

impl From<TdxTable> for TdxPolicy {
    fn from(t: TdxTable) -> TdxPolicy {
        let h = |c: Check<Hex<48>>| c.map(|h| h.0);
        TdxPolicy {
            mrtd: hexes(t.mrtd),
            rtmr: [h(t.rtmr0), h(t.rtmr1), h(t.rtmr2), h(t.rtmr3)],
            mrconfigid: h(t.mrconfigid),
            mrowner: h(t.mrowner),
            mrownerconfig: h(t.mrownerconfig),
            td_attributes: t.td_attributes.map(|h| h.0),
            xfam: t.xfam.map(|h| h.0),
            min_tee_tcb_svn: t.min_tee_tcb_svn.map(|h| h.0),
            report_data: t.report_data.map(|h| h.0),
            allowed_tcb_statuses: t.allowed_tcb_statuses.0,
            max_collateral_age_secs: t.max_collateral_age_days.map(|d| d.0 * DAY),
            allow_debug: t.allow_debug,
        }
    }
}

impl From<TdxPolicy> for TdxTable {
    fn from(p: TdxPolicy) -> TdxTable {
        let [rtmr0, rtmr1, rtmr2, rtmr3] = p.rtmr.map(|c| c.map(Hex));
        TdxTable {
            mrtd: to_hexes(p.mrtd),
            rtmr0,
            rtmr1,
            rtmr2,
            rtmr3,
            mrconfigid: p.mrconfigid.map(Hex),
            mrowner: p.mrowner.map(Hex),
            mrownerconfig: p.mrownerconfig.map(Hex),
            td_attributes: p.td_attributes.map(Hex),
            xfam: p.xfam.map(Hex),
            min_tee_tcb_svn: p.min_tee_tcb_svn.map(Hex),
            report_data: p.report_data.map(Hex),
            allowed_tcb_statuses: Statuses(p.allowed_tcb_statuses),
            max_collateral_age_days: p.max_collateral_age_secs.map(|s| Int::saturating(s / DAY)),
            allow_debug: p.allow_debug,
        }
    }
}

/// `[gpu]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct GpuTable {
    gpus: Check<Int<0, 64>>,
    switches: Check<Int<0, 64>>,
    models: Check<List<String>>,
    min_driver: Check<Driver>,
    min_vbios: Check<Vbios>,
    cc_mode: Check<On>,
    rims: Check<Required>,
    revocation: Check<Revocation>,
}

/// `revocation = { max_age_hours = N, allow_certificate_hold = false }`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "{ max_age_hours = N, allow_certificate_hold = false } or \"skip\""
)]
struct Revocation {
    max_age_hours: Int<1, { 24 * 365 }>,
    #[serde(default)]
    allow_certificate_hold: bool,
}

impl From<GpuTable> for GpuPolicy {
    fn from(t: GpuTable) -> GpuPolicy {
        GpuPolicy {
            gpus: t.gpus.map(|n| n.0 as u32),
            switches: t.switches.map(|n| n.0 as u32),
            models: t.models.map(|l| l.0),
            min_driver: t.min_driver.map(|v| v.0),
            min_vbios: t.min_vbios.map(|v| v.0),
            cc_mode: t.cc_mode.map(|_| ()),
            rims: t.rims.map(|_| ()),
            revocation: t.revocation.map(|r| RevocationRule {
                max_age_secs: r.max_age_hours.0 * HOUR,
                allow_certificate_hold: r.allow_certificate_hold,
            }),
        }
    }
}

impl From<GpuPolicy> for GpuTable {
    fn from(p: GpuPolicy) -> GpuTable {
        GpuTable {
            gpus: p.gpus.map(|n| Int::saturating(n.into())),
            switches: p.switches.map(|n| Int::saturating(n.into())),
            models: p.models.map(List),
            min_driver: p.min_driver.map(Driver),
            min_vbios: p.min_vbios.map(Vbios),
            cc_mode: p.cc_mode.map(|()| On::On),
            rims: p.rims.map(|()| Required::Required),
            revocation: p.revocation.map(|r| Revocation {
                max_age_hours: Int::saturating(r.max_age_secs / HOUR),
                allow_certificate_hold: r.allow_certificate_hold,
            }),
        }
    }
}

/// `[dangerous_simulated_tee]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct SimulatedTable {
    i_understand_this_is_not_confidential: OptIn,
    measurements: Check<List<Hex<48>>>,
}

impl From<SimulatedTable> for SimulatedTeePolicy {
    fn from(t: SimulatedTable) -> SimulatedTeePolicy {
        SimulatedTeePolicy {
            measurements: hexes(t.measurements),
        }
    }
}

impl From<SimulatedTeePolicy> for SimulatedTable {
    fn from(p: SimulatedTeePolicy) -> SimulatedTable {
        SimulatedTable {
            i_understand_this_is_not_confidential: OptIn,
            measurements: to_hexes(p.measurements),
        }
    }
}

/// A whole policy file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a policy file")]
pub(super) struct PolicyFile {
    release: Release,
    max_evidence_age: Check<Int<1, TOML_MAX>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snp: Option<SnpPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tdx: Option<TdxPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dangerous_simulated_tee: Option<SimulatedTeePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpu: Option<GpuPolicy>,
}

impl TryFrom<PolicyFile> for Policy {
    type Error = PolicyError;

    fn try_from(f: PolicyFile) -> Result<Policy, PolicyError> {
        if f.snp.is_none() && f.tdx.is_none() && f.dangerous_simulated_tee.is_none() {
            return Err(PolicyError::Missing(
                "[snp] or [tdx] (a policy that accepts no platform accepts nothing)".into(),
            ));
        }
        Ok(Policy {
            release: f.release.0,
            snp: f.snp,
            tdx: f.tdx,
            simulated: f.dangerous_simulated_tee,
            gpu: f.gpu,
            max_evidence_age: f.max_evidence_age.map(|n| n.0),
        })
    }
}

impl From<Policy> for PolicyFile {
    fn from(p: Policy) -> PolicyFile {
        PolicyFile {
            release: Release(p.release),
            max_evidence_age: p.max_evidence_age.map(Int::saturating),
            snp: p.snp,
            tdx: p.tdx,
            dangerous_simulated_tee: p.simulated,
            gpu: p.gpu,
        }
    }
}

/// A file of which only the `[snp]` table is read.
#[derive(Deserialize)]
pub(super) struct SnpDocument {
    pub snp: SnpPolicy,
}

// ---------------------------------------------------------------------------
// Reading and writing.

/// Parse `text` and read it as `T`, naming the key of any error by its
/// dotted path.
pub(super) fn read<T: DeserializeOwned>(text: &str) -> Result<T, PolicyError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| PolicyError::Toml(e.to_string()))?;
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let mut key = String::new();
        let mut entry = None;
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key: k } => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(k);
                    entry = None;
                }
                serde_path_to_error::Segment::Seq { index } => entry = Some(*index),
                _ => {}
            }
        }
        classify(key, entry, e.inner().message())
    })
}

/// A serde error at `key` (in list entry `entry`, counted from 0) as a
/// [`PolicyError`]. serde words a missing field and an unknown one the
/// same way whatever the format; every other message is ours.
fn classify(key: String, entry: Option<usize>, message: &str) -> PolicyError {
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    if let Some(field) = quoted("missing field `") {
        let full = if key.is_empty() {
            field
        } else {
            format!("{key}.{field}")
        };
        return missing(full);
    }
    if message.starts_with("unknown field `") {
        return PolicyError::UnknownKey(key);
    }
    let message = match entry {
        Some(i) => format!("entry {} of the list: {message}", i + 1),
        None => message.to_string(),
    };
    PolicyError::Invalid(key, message)
}

/// The error for a missing `key`, with what to write instead where
/// "give a value or skip it" is not the whole story.
fn missing(key: String) -> PolicyError {
    let opt_in = format!(
        "{}.{}",
        SimulatedTeePolicy::TABLE,
        SimulatedTeePolicy::OPT_IN
    );
    if key == "max_evidence_age" {
        return PolicyError::Missing(format!(
            "{key} (seconds, or \"skip\"; policy init writes {DEFAULT_MAX_EVIDENCE_AGE_SECS})"
        ));
    }
    if key == "snp.min_tcb.fmc" {
        return PolicyError::Invalid(
            "snp.min_tcb".into(),
            "fmc is missing: give the minimum Turin FMC level or fmc = \"skip\" (Milan and Genoa have no FMC)".into(),
        );
    }
    if key == opt_in {
        return PolicyError::Invalid(key, OPT_IN_REASON.into());
    }
    // A part of an inline table (`min_tcb = { .. }`) is reported on the
    // table, the way the line is written.
    match key.rsplit_once('.') {
        Some((table, part)) if table.contains('.') => {
            PolicyError::Invalid(table.to_string(), format!("{part} is missing"))
        }
        _ => PolicyError::Missing(key),
    }
}

/// `value` (a struct of tables) as TOML: its tables as `[sections]`,
/// tables inside them inline, one key a line in declaration order.
fn document(value: &impl Serialize) -> toml_edit::DocumentMut {
    // Serializing a policy cannot fail: every integer is bounded to what
    // TOML holds and there is no `None` below the top.
    let mut doc = toml_edit::ser::to_document(value).unwrap_or_default();
    for (_, item) in doc.iter_mut() {
        if item.is_inline_table() {
            let inline = core::mem::take(item);
            *item = inline
                .into_table()
                .map(toml_edit::Item::Table)
                .unwrap_or_else(|i| i);
        }
    }
    doc
}

/// One table, `[name]` and its keys.
pub(super) fn section(name: &str, table: &impl Serialize) -> String {
    document(&BTreeMap::from([(name, table)])).to_string()
}

/// Written above the simulated TEE's table.
pub(super) const DANGER: &str = "# DANGER: accepts the simulated TEE. Nothing is confidential with it: the host\n# can read every prompt and answer. For demos and tests only.\n";

/// A whole policy file.
pub(super) fn policy(p: &Policy) -> String {
    let mut doc = document(&PolicyFile::from(p.clone()));
    if let Some(t) = doc
        .get_mut(SimulatedTeePolicy::TABLE)
        .and_then(toml_edit::Item::as_table_mut)
    {
        t.decor_mut().set_prefix(format!("\n{DANGER}"));
    }
    format!(
        "# Reference values for image release {}.\n# Each value is required, or \"skip\" to skip it on purpose.\n{doc}",
        p.release.escape_debug()
    )
}
