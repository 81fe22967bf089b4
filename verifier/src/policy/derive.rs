//! A [`Policy`] derived from the releases a registry lists as active, and
//! the client's own rules.
//!
//! Owns the step from "these releases are active" (their reference values,
//! [`ReleaseReference`], made from release manifests whose hashes and
//! digests the registry lists) plus the client's [`LocalRules`] to a
//! [`DerivedPolicy`]: a verifier [`Policy`] and the exact set of accepted
//! measurement digests. No I/O, no clock: reading the registry and fetching
//! manifests are the client's business.
//!
//! The rules:
//!
//! * Measurements are the union of the given releases', per platform; a
//!   release that is not given (revoked, unknown) contributes nothing.
//! * A platform the client does not allow gets no section, so its evidence
//!   is refused. The simulated TEE counts only with
//!   [`LocalRules::allow_simulated`], which gives confidentiality away
//!   (the "enclave" is an ordinary process the provider can read); the
//!   derived notes say so.
//! * Minimum TCB: per release, the stricter of the release's and the
//!   client's, part by part. A client floor below a release's is ignored,
//!   with a note; a client floor above it wins. Never weaker than the
//!   release.
//! * A [`Policy`] holds one list of values per register, so it is a
//!   coarse filter: it admits every MRTD of any release and a TDX RTMR
//!   only where all releases agree, and the lowest of the releases' TCB
//!   floors. [`DerivedPolicy::check`] then requires the evidence's exact
//!   measurement digest (MRTD ‖ RTMR0..2 together, for TDX) to be one of an
//!   active release's, and that release's TCB floor. Use
//!   [`DerivedPolicy::verify`], which does both.

use cocoon_attestation::measurement::{
    self, MeasuredPlatform, MeasurementDigest, ReleaseReference, TdxRegisters,
};
use cocoon_attestation::snp::TcbParts;

use super::{
    Check, GpuPolicy, MinTcb, Policy, SimulatedTeePolicy, SnpPolicy, TcbStatus, TdxPolicy,
    DEFAULT_MAX_EVIDENCE_AGE_SECS,
};
use crate::enclave::{VerifiedEnclave, VerifiedPlatform};
use crate::{ReasonKind, Rejection, UnixTime};

/// An SEV-SNP TCB floor: each part at least this; `fmc` (Turin) only when
/// `Some`.
pub type SnpFloor = TcbParts<Option<u8>>;

/// What the client decides for itself, whatever the releases say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRules {
    /// Accept AMD SEV-SNP evidence.
    pub snp: bool,
    /// Accept Intel TDX evidence.
    pub tdx: bool,
    /// DANGEROUS: accept the simulated TEE, which is NOT confidential (no
    /// hardware isolation: the provider can read every prompt and answer).
    /// For tests and demos only; default false.
    pub allow_simulated: bool,
    /// The client's own SEV-SNP TCB floor: applied only where stricter than
    /// a release's.
    pub snp_min_tcb: Option<SnpFloor>,
    /// The client's own TDX TEE TCB SVN floor: applied only where stricter
    /// than a release's, component by component.
    pub tdx_min_tee_tcb_svn: Option<[u8; 16]>,
    /// How old evidence may be (the policy's `max_evidence_age`).
    pub max_evidence_age: Check<u64>,
    /// SEV-SNP revocation through AMD's CRL (the host attaches it).
    pub snp_revocation: Check<()>,
    /// TDX TCB statuses accepted (`Revoked` is never accepted).
    pub tdx_tcb_statuses: Vec<TcbStatus>,
    /// Oldest acceptable TDX collateral, seconds.
    pub tdx_max_collateral_age_secs: Check<u64>,
    /// What GPUs must meet (`None`: enclaves with GPU evidence are refused).
    pub gpu: Option<GpuPolicy>,
}

impl Default for LocalRules {
    /// SNP and TDX, no simulated TEE, no own TCB floors, evidence at most an
    /// hour old, SNP revocation required, TDX `UpToDate` only with
    /// collateral at most 30 days old, no GPUs.
    fn default() -> LocalRules {
        LocalRules {
            snp: true,
            tdx: true,
            allow_simulated: false,
            snp_min_tcb: None,
            tdx_min_tee_tcb_svn: None,
            max_evidence_age: Check::Require(DEFAULT_MAX_EVIDENCE_AGE_SECS),
            snp_revocation: Check::Require(()),
            tdx_tcb_statuses: vec![TcbStatus::UpToDate],
            tdx_max_collateral_age_secs: Check::Require(30 * 86_400),
            gpu: None,
        }
    }
}

/// One accepted measurement digest and the release it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedDigest {
    /// Platform and SHA-256(platform ‖ values).
    pub digest: MeasurementDigest,
    /// The release's name.
    pub release: String,
    /// The release manifest's hash (its registry key).
    pub manifest_hash: [u8; 32],
    /// The SNP floor for this release (the stricter of release and client).
    pub snp_floor: Option<SnpFloor>,
    /// The TDX TEE TCB SVN floor for this release.
    pub tdx_floor: Option<[u8; 16]>,
}

/// A policy derived from active releases, with the exact digests it
/// admits. Built only by [`from_releases`].
#[derive(Debug, Clone)]
pub struct DerivedPolicy {
    policy: Policy,
    accepted: Vec<AcceptedDigest>,
    notes: Vec<String>,
}

/// Why no policy could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeriveError {
    /// No release was given.
    #[error("no active release: the registry lists none, or none could be read; nothing can be verified")]
    NoReleases,
    /// Releases were given, but no platform is left to accept.
    #[error("no platform left to accept: {0}")]
    NothingAccepted(String),
    /// A TDX TCB status list that is empty or names `Revoked`.
    #[error("local rules: {0}")]
    Rules(String),
}

impl DerivedPolicy {
    /// The verifier policy (a coarse filter: see the module doc).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Every accepted digest, with its release.
    pub fn accepted(&self) -> &[AcceptedDigest] {
        &self.accepted
    }

    /// What the derivation decided and why, for a log or `--verbose`:
    /// platforms refused, client floors ignored as weaker than a release's,
    /// the simulated TEE accepted (NOT confidential).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether `enclave` (verified under [`Self::policy`]) is a launch of an
    /// active release: its measurement digest must be one of the accepted
    /// ones, and its TCB must meet that release's floor. Returns the
    /// matching entry.
    pub fn check(&self, enclave: &VerifiedEnclave) -> Result<&AcceptedDigest, Rejection> {
        let digest = evidence_digest(enclave);
        let mut matching = self
            .accepted
            .iter()
            .filter(|a| a.digest == digest)
            .peekable();
        if matching.peek().is_none() {
            return Err(Rejection::single(
                ReasonKind::Policy,
                format!(
                    "the enclave's {} measurement digest {} is not one of an active release's",
                    digest.0,
                    hex::encode(digest.1)
                ),
            ));
        }
        let mut shortfalls = Vec::new();
        for a in matching {
            match tcb_shortfalls(enclave, a) {
                None => return Ok(a),
                Some(s) => shortfalls.push(format!("release {}: {s}", a.release)),
            }
        }
        Err(Rejection::single(ReasonKind::Tcb, shortfalls.join("; ")))
    }

    /// Verify an encoded evidence bundle under [`Self::policy`] at `now`,
    /// then [`Self::check`] it.
    pub fn verify(
        &self,
        bundle: &[u8],
        now: UnixTime,
    ) -> Result<(VerifiedEnclave, AcceptedDigest), Rejection> {
        let v = crate::verify(bundle, &self.policy, now)?;
        let a = self.check(&v)?.clone();
        Ok((v, a))
    }
}

/// The measurement digest of verified evidence: SEV-SNP launch
/// measurement, TDX MRTD ‖ RTMR0..2, or the simulated measurement, under
/// [`cocoon_attestation::measurement`]'s formula.
pub fn evidence_digest(enclave: &VerifiedEnclave) -> MeasurementDigest {
    match enclave.platform() {
        VerifiedPlatform::Snp(v) => (
            MeasuredPlatform::Snp,
            measurement::snp_digest(v.report().measurement()),
        ),
        VerifiedPlatform::Tdx(v) => {
            let td = v.td_report();
            let [r0, r1, r2, _] = td.rtmrs();
            let regs = TdxRegisters {
                mrtd: *td.mrtd(),
                rtmr: [*r0, *r1, *r2],
            };
            (MeasuredPlatform::Tdx, measurement::tdx_digest(&regs))
        }
        VerifiedPlatform::Simulated(v) => (
            MeasuredPlatform::Simulated,
            measurement::simulated_digest(&v.report().measurement),
        ),
    }
}

/// What `enclave`'s TCB lacks of `a`'s floor, or `None` when it meets it.
fn tcb_shortfalls(enclave: &VerifiedEnclave, a: &AcceptedDigest) -> Option<String> {
    match enclave.platform() {
        VerifiedPlatform::Snp(v) => {
            let floor = a.snp_floor.map(to_min_tcb)?;
            let s = floor.shortfalls(&v.reported_tcb());
            (!s.is_empty()).then(|| {
                s.iter()
                    .map(|(part, have, want)| format!("SNP {part} SPL {have} is below {want}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        }
        VerifiedPlatform::Tdx(v) => {
            let floor = a.tdx_floor?;
            let have = v.td_report().tee_tcb_svn();
            let low: Vec<String> = have
                .components()
                .iter()
                .zip(floor.iter())
                .enumerate()
                .filter(|(_, (h, m))| h < m)
                .map(|(i, (h, m))| format!("TEE TCB SVN component {i} is {h}, below {m}"))
                .collect();
            (!low.is_empty()).then(|| low.join(", "))
        }
        _ => None,
    }
}

fn to_min_tcb(f: SnpFloor) -> MinTcb {
    TcbParts {
        fmc: f.fmc.map_or(Check::Skip, Check::Require),
        bootloader: f.bootloader,
        tee: f.tee,
        snp: f.snp,
        microcode: f.microcode,
    }
}

fn max_opt(a: Option<u8>, b: Option<u8>) -> Option<u8> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) | (None, x) => x,
    }
}

/// The stricter of a release's SNP floor and the client's, part by part,
/// noting where the client's is weaker (and so ignored).
fn snp_floor(
    release: &str,
    ours: Option<SnpFloor>,
    theirs: Option<SnpFloor>,
    notes: &mut Vec<String>,
) -> Option<SnpFloor> {
    let (Some(l), Some(r)) = (ours, theirs) else {
        return ours.or(theirs);
    };
    let parts = [
        ("fmc", l.fmc, r.fmc),
        ("bootloader", Some(l.bootloader), Some(r.bootloader)),
        ("tee", Some(l.tee), Some(r.tee)),
        ("snp", Some(l.snp), Some(r.snp)),
        ("microcode", Some(l.microcode), Some(r.microcode)),
    ];
    for (name, mine, rel) in parts {
        if let (Some(m), Some(x)) = (mine, rel) {
            if m < x {
                notes.push(format!(
                    "local SNP min TCB {name} = {m} is below release {release}'s {x}: ignored, the release's floor applies"
                ));
            }
        }
    }
    Some(TcbParts {
        fmc: max_opt(l.fmc, r.fmc),
        bootloader: l.bootloader.max(r.bootloader),
        tee: l.tee.max(r.tee),
        snp: l.snp.max(r.snp),
        microcode: l.microcode.max(r.microcode),
    })
}

fn tdx_floor(
    release: &str,
    ours: Option<[u8; 16]>,
    theirs: Option<[u8; 16]>,
    notes: &mut Vec<String>,
) -> Option<[u8; 16]> {
    let (Some(l), Some(r)) = (ours, theirs) else {
        return ours.or(theirs);
    };
    let mut out = [0u8; 16];
    for i in 0..16 {
        if l[i] < r[i] {
            notes.push(format!(
                "local TDX min TEE TCB SVN component {i} = {} is below release {release}'s {}: ignored, the release's floor applies",
                l[i], r[i]
            ));
        }
        out[i] = l[i].max(r[i]);
    }
    Some(out)
}

/// The weakest of several floors, part by part (`None` if any is `None`):
/// what every release's floor implies, for the coarse policy.
fn lowest_snp(floors: &[Option<SnpFloor>]) -> Option<SnpFloor> {
    let mut it = floors.iter();
    let mut acc = (*it.next()?)?;
    for f in it {
        let f = (*f)?;
        acc = TcbParts {
            fmc: match (acc.fmc, f.fmc) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            },
            bootloader: acc.bootloader.min(f.bootloader),
            tee: acc.tee.min(f.tee),
            snp: acc.snp.min(f.snp),
            microcode: acc.microcode.min(f.microcode),
        };
    }
    Some(acc)
}

fn lowest_tdx(floors: &[Option<[u8; 16]>]) -> Option<[u8; 16]> {
    let mut it = floors.iter();
    let mut acc = (*it.next()?)?;
    for f in it {
        let f = (*f)?;
        for i in 0..16 {
            acc[i] = acc[i].min(f[i]);
        }
    }
    Some(acc)
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Derive the policy for `releases` (the active ones: a revoked release
/// must not be passed) under the client's `rules`. See the module doc for
/// the rules.
pub fn from_releases(
    releases: &[ReleaseReference],
    rules: &LocalRules,
) -> Result<DerivedPolicy, DeriveError> {
    if releases.is_empty() {
        return Err(DeriveError::NoReleases);
    }
    if rules.tdx_tcb_statuses.is_empty() || rules.tdx_tcb_statuses.contains(&TcbStatus::Revoked) {
        return Err(DeriveError::Rules(
            "tdx_tcb_statuses must be non-empty and never include Revoked".into(),
        ));
    }
    let mut notes = Vec::new();
    let mut accepted = Vec::new();
    let (mut snp_m, mut tdx_m, mut sim_m) = (Vec::new(), Vec::<TdxRegisters>::new(), Vec::new());
    let (mut snp_floors, mut tdx_floors) = (Vec::new(), Vec::new());
    let mut refused = Vec::new();
    for r in releases {
        let sf = snp_floor(&r.release, rules.snp_min_tcb, r.min_tcb.snp, &mut notes);
        let tf = tdx_floor(
            &r.release,
            rules.tdx_min_tee_tcb_svn,
            r.min_tcb.tdx_tee_tcb_svn,
            &mut notes,
        );
        for (platform, digest) in r.digests() {
            let allowed = match platform {
                MeasuredPlatform::Snp => rules.snp,
                MeasuredPlatform::Tdx => rules.tdx,
                MeasuredPlatform::Simulated => rules.allow_simulated,
            };
            if !allowed {
                push_unique(&mut refused, platform);
                continue;
            }
            accepted.push(AcceptedDigest {
                digest: (platform, digest),
                release: r.release.clone(),
                manifest_hash: r.manifest_hash,
                snp_floor: sf,
                tdx_floor: tf,
            });
        }
        if rules.snp && !r.snp.is_empty() {
            r.snp.iter().for_each(|m| push_unique(&mut snp_m, *m));
            snp_floors.push(sf);
        }
        if rules.tdx && !r.tdx.is_empty() {
            r.tdx.iter().for_each(|m| push_unique(&mut tdx_m, *m));
            tdx_floors.push(tf);
        }
        if rules.allow_simulated {
            r.simulated.iter().for_each(|m| push_unique(&mut sim_m, *m));
        }
    }
    for p in &refused {
        notes.push(match p {
            MeasuredPlatform::Simulated => "simulated TEE measurements in the releases are NOT accepted (they are not confidential; LocalRules::allow_simulated would accept them, for tests only)".to_string(),
            p => format!("{p} measurements in the releases are not accepted: the local rules do not allow {p}"),
        });
    }
    let snp = (!snp_m.is_empty()).then(|| {
        let mut p = SnpPolicy::pinned_to_measurements(snp_m);
        p.min_tcb = lowest_snp(&snp_floors).map_or(Check::Skip, |f| Check::Require(to_min_tcb(f)));
        p.revocation = rules.snp_revocation;
        p
    });
    let tdx = (!tdx_m.is_empty()).then(|| {
        let mut mrtds = Vec::new();
        tdx_m.iter().for_each(|r| push_unique(&mut mrtds, r.mrtd));
        let mut p = TdxPolicy::pinned_to_mrtd(mrtds);
        for i in 0..3 {
            let first = tdx_m[0].rtmr[i];
            if tdx_m.iter().all(|r| r.rtmr[i] == first) {
                p.rtmr[i] = Check::Require(first);
            }
        }
        p.min_tee_tcb_svn = lowest_tdx(&tdx_floors).map_or(Check::Skip, Check::Require);
        p.allowed_tcb_statuses = rules.tdx_tcb_statuses.clone();
        p.max_collateral_age_secs = rules.tdx_max_collateral_age_secs;
        p
    });
    let simulated = (!sim_m.is_empty()).then(|| {
        notes.push("DANGEROUS: the simulated TEE is accepted (LocalRules::allow_simulated). It is NOT confidential: no hardware isolates the enclave, the provider can read every prompt and answer. Tests only.".into());
        SimulatedTeePolicy {
            measurements: Check::Require(sim_m),
        }
    });
    if snp.is_none() && tdx.is_none() && simulated.is_none() {
        let why = if notes.is_empty() {
            "the releases list no measurements".to_string()
        } else {
            notes.join("; ")
        };
        return Err(DeriveError::NothingAccepted(why));
    }
    let names: Vec<&str> = releases.iter().map(|r| r.release.as_str()).collect();
    Ok(DerivedPolicy {
        policy: Policy {
            release: names.join(", "),
            snp,
            tdx,
            simulated,
            gpu: rules.gpu.clone(),
            max_evidence_age: rules.max_evidence_age,
        },
        accepted,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_attestation::measurement::ReleaseMinTcb;

    fn floor(bootloader: u8, snp: u8) -> SnpFloor {
        TcbParts {
            fmc: None,
            bootloader,
            tee: 0,
            snp,
            microcode: 200,
        }
    }

    fn release(name: &str, byte: u8) -> ReleaseReference {
        ReleaseReference {
            release: name.into(),
            manifest_hash: [byte; 32],
            snp: vec![[byte; 48]],
            tdx: vec![TdxRegisters {
                mrtd: [byte; 48],
                rtmr: [[1; 48], [byte; 48], [3; 48]],
            }],
            simulated: vec![[byte ^ 0xff; 48]],
            min_tcb: ReleaseMinTcb {
                snp: Some(floor(10, 23)),
                tdx_tee_tcb_svn: Some([2; 16]),
            },
        }
    }

    #[test]
    fn only_the_given_releases_measurements_are_in_the_policy() {
        let active = release("r-active", 0xa1);
        let revoked = release("r-revoked", 0xb2);
        let d = from_releases(std::slice::from_ref(&active), &LocalRules::default()).unwrap();
        let snp = d.policy().snp.as_ref().unwrap();
        assert_eq!(snp.measurements, Check::Require(vec![[0xa1; 48]]));
        assert_eq!(
            d.policy().tdx.as_ref().unwrap().mrtd,
            Check::Require(vec![[0xa1; 48]])
        );
        for a in d.accepted() {
            assert_eq!(a.release, "r-active");
        }
        let revoked_digests = revoked.digests();
        assert!(d
            .accepted()
            .iter()
            .all(|a| !revoked_digests.contains(&a.digest)));
        // Both active: the union, and RTMR1 (where they differ) left to
        // the exact digest check.
        let both = from_releases(&[active, revoked], &LocalRules::default()).unwrap();
        let tdx = both.policy().tdx.as_ref().unwrap();
        assert_eq!(tdx.mrtd, Check::Require(vec![[0xa1; 48], [0xb2; 48]]));
        assert_eq!(tdx.rtmr[0], Check::Require([1; 48]));
        assert_eq!(tdx.rtmr[1], Check::Skip);
        assert_eq!(tdx.rtmr[2], Check::Require([3; 48]));
        assert_eq!(tdx.rtmr[3], Check::Skip);
        assert_eq!(both.accepted().len(), 4, "2 releases x (snp, tdx)");
        assert_eq!(both.policy().release, "r-active, r-revoked");
    }

    #[test]
    fn a_stricter_local_floor_wins_and_a_weaker_one_is_ignored() {
        let r = release("r", 1);
        let stricter = LocalRules {
            snp_min_tcb: Some(floor(12, 23)),
            tdx_min_tee_tcb_svn: Some([3; 16]),
            ..LocalRules::default()
        };
        let d = from_releases(std::slice::from_ref(&r), &stricter).unwrap();
        let min = *d.policy().snp.as_ref().unwrap().min_tcb.required().unwrap();
        assert_eq!((min.bootloader, min.snp), (12, 23));
        assert_eq!(
            d.policy().tdx.as_ref().unwrap().min_tee_tcb_svn,
            Check::Require([3; 16])
        );
        assert!(
            !d.notes().iter().any(|n| n.contains("below")),
            "{:?}",
            d.notes()
        );

        let weaker = LocalRules {
            snp_min_tcb: Some(floor(2, 1)),
            tdx_min_tee_tcb_svn: Some([0; 16]),
            ..LocalRules::default()
        };
        let d = from_releases(std::slice::from_ref(&r), &weaker).unwrap();
        let min = *d.policy().snp.as_ref().unwrap().min_tcb.required().unwrap();
        assert_eq!((min.bootloader, min.snp), (10, 23), "never weaker");
        assert_eq!(min.fmc, Check::Skip);
        assert_eq!(d.accepted()[0].snp_floor, Some(floor(10, 23)));
        assert!(d
            .notes()
            .iter()
            .any(|n| n.contains("bootloader = 2 is below release r's 10: ignored")));
        assert!(d
            .notes()
            .iter()
            .any(|n| n.contains("component 0 = 0 is below release r's 2")));

        // Mixed: per part, the higher.
        let mixed = LocalRules {
            snp_min_tcb: Some(TcbParts {
                fmc: Some(4),
                ..floor(2, 30)
            }),
            ..LocalRules::default()
        };
        let d = from_releases(std::slice::from_ref(&r), &mixed).unwrap();
        let min = *d.policy().snp.as_ref().unwrap().min_tcb.required().unwrap();
        assert_eq!(
            (min.fmc, min.bootloader, min.snp),
            (Check::Require(4), 10, 30)
        );
    }

    #[test]
    fn the_coarse_floor_is_the_lowest_and_each_release_keeps_its_own() {
        let mut old = release("old", 1);
        old.min_tcb.snp = Some(floor(8, 25));
        let new = release("new", 2);
        let d = from_releases(&[old, new], &LocalRules::default()).unwrap();
        let min = *d.policy().snp.as_ref().unwrap().min_tcb.required().unwrap();
        assert_eq!((min.bootloader, min.snp), (8, 23));
        let by = |name: &str| {
            d.accepted()
                .iter()
                .find(|a| a.release == name && a.digest.0 == MeasuredPlatform::Snp)
                .unwrap()
                .snp_floor
        };
        assert_eq!(by("old"), Some(floor(8, 25)));
        assert_eq!(by("new"), Some(floor(10, 23)));
        // A release without a floor leaves the coarse policy without one.
        let mut bare = release("bare", 3);
        bare.min_tcb = ReleaseMinTcb::default();
        let d = from_releases(&[release("x", 4), bare], &LocalRules::default()).unwrap();
        assert_eq!(d.policy().snp.as_ref().unwrap().min_tcb, Check::Skip);
    }

    #[test]
    fn simulated_is_refused_by_default_and_named_when_allowed() {
        let r = release("r", 7);
        let d = from_releases(std::slice::from_ref(&r), &LocalRules::default()).unwrap();
        assert!(d.policy().simulated.is_none());
        assert!(d
            .accepted()
            .iter()
            .all(|a| a.digest.0 != MeasuredPlatform::Simulated));
        assert!(d
            .notes()
            .iter()
            .any(|n| n.contains("simulated TEE measurements in the releases are NOT accepted")));
        let only_sim = LocalRules {
            snp: false,
            tdx: false,
            ..LocalRules::default()
        };
        match from_releases(std::slice::from_ref(&r), &only_sim) {
            Err(DeriveError::NothingAccepted(why)) => {
                assert!(
                    why.contains("snp measurements in the releases are not accepted"),
                    "{why}"
                );
                assert!(why.contains("NOT accepted"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let dangerous = LocalRules {
            allow_simulated: true,
            ..only_sim
        };
        let d = from_releases(&[r], &dangerous).unwrap();
        assert_eq!(
            d.policy().simulated,
            Some(SimulatedTeePolicy {
                measurements: Check::Require(vec![[7 ^ 0xff; 48]])
            })
        );
        assert!(d.policy().snp.is_none() && d.policy().tdx.is_none());
        assert!(d
            .notes()
            .iter()
            .any(|n| n.starts_with("DANGEROUS") && n.contains("NOT confidential")));
        // The policy reads back through the verifier's own file form.
        assert_eq!(
            Policy::from_toml(&d.policy().to_toml()).unwrap(),
            *d.policy()
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            from_releases(&[], &LocalRules::default()).unwrap_err(),
            DeriveError::NoReleases
        );
        let bad = LocalRules {
            tdx_tcb_statuses: vec![TcbStatus::UpToDate, TcbStatus::Revoked],
            ..LocalRules::default()
        };
        assert!(matches!(
            from_releases(&[release("r", 1)], &bad),
            Err(DeriveError::Rules(_))
        ));
        let mut empty = release("r", 1);
        empty.snp.clear();
        empty.tdx.clear();
        empty.simulated.clear();
        assert!(matches!(
            from_releases(&[empty], &LocalRules::default()),
            Err(DeriveError::NothingAccepted(_))
        ));
    }
}
