//! Intel TCB level evaluation for TDX, written from Intel's rules: the TCB
//! step of our DCAP core ([`crate::tdx_core`]).
//!
//! Owns: reading the TCB info (v3, `id` = "TDX") and QE identity (v2,
//! `id` = "TD_QE") JSON, picking the platform TCB level (first level whose 16
//! SGX components and PCESVN are met by the PCK certificate and whose 16 TDX
//! components are met by TEE_TCB_SVN, skipping components 0 and 1 when a
//! TDX module version is present), the TDX module identity level
//! (`TDX_<TEE_TCB_SVN[1] as hex>`, matched on `TEE_TCB_SVN[0]`), the QE level
//! (first level with isvsvn ≤ the QE's), and converging them as Intel's QVL
//! does (module or QE OutOfDate makes UpToDate OutOfDate; Revoked wins; a TD
//! 1.5 whose current TCB is better than its launch TCB is "relaunch
//! advised"). It checks no signature and no date: it only computes a status,
//! used by the core after the signatures, and to report one even when
//! collateral is incomplete.

use std::borrow::Cow;

use cocoon_attestation::tdx::{PckExtensions, TdReport};
use serde::Deserialize;

use crate::policy::TcbStatus;

/// A computed TCB status with its advisories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbEvaluation {
    /// Converged status.
    pub status: TcbStatus,
    /// Advisory IDs of every level that contributed.
    pub advisory_ids: Vec<String>,
}

// The parts of Intel's JSON this module reads (PCS API: TCB info v3, QE
// identity v2). Typed and borrowed: unknown members are ignored here because
// the signature over the whole text is checked by the verifier.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfo<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    version: u32,
    #[serde(borrow)]
    fmspc: Cow<'a, str>,
    #[serde(borrow)]
    pce_id: Cow<'a, str>,
    #[serde(default, borrow)]
    tdx_module_identities: Vec<ModuleIdentity<'a>>,
    #[serde(borrow)]
    tcb_levels: Vec<PlatformLevel<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlatformLevel<'a> {
    tcb: PlatformTcb,
    #[serde(borrow)]
    tcb_status: Cow<'a, str>,
    #[serde(default, rename = "advisoryIDs", borrow)]
    advisory_ids: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PlatformTcb {
    sgxtcbcomponents: Vec<Component>,
    pcesvn: u16,
    #[serde(default)]
    tdxtcbcomponents: Vec<Component>,
}

#[derive(Deserialize)]
struct Component {
    svn: u8,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModuleIdentity<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    tcb_levels: Vec<SvnLevel<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SvnLevel<'a> {
    tcb: IsvSvn,
    #[serde(borrow)]
    tcb_status: Cow<'a, str>,
    #[serde(default, rename = "advisoryIDs", borrow)]
    advisory_ids: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct IsvSvn {
    isvsvn: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentity<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    tcb_levels: Vec<SvnLevel<'a>>,
}

fn status(s: &str) -> Result<TcbStatus, String> {
    TcbStatus::from_name(s).ok_or(format!("unknown tcbStatus {s:?}"))
}

fn owned(a: &[Cow<'_, str>]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn merge(into: &mut TcbEvaluation, component: TcbStatus, adv: Vec<String>) {
    use TcbStatus::*;
    into.status = match (component, into.status) {
        (Revoked, _) => Revoked,
        (OutOfDate, UpToDate | SWHardeningNeeded) => OutOfDate,
        (OutOfDate, ConfigurationNeeded | ConfigurationAndSWHardeningNeeded) => {
            OutOfDateConfigurationNeeded
        }
        (_, s) => s,
    };
    for a in adv {
        if !into.advisory_ids.contains(&a) {
            into.advisory_ids.push(a);
        }
    }
}

fn platform_level(
    info: &TcbInfo<'_>,
    pck: &PckExtensions,
    tee_tcb_svn: &[u8; 16],
) -> Result<TcbEvaluation, String> {
    let skip = if tee_tcb_svn[1] > 0 { 2 } else { 0 };
    for level in &info.tcb_levels {
        let tcb = &level.tcb;
        if tcb.sgxtcbcomponents.len() != 16 || tcb.tdxtcbcomponents.len() != 16 {
            return Err("a TCB level does not have 16 SGX and 16 TDX components".into());
        }
        let sgx_ok = pck
            .sgx_tcb_comp_svn
            .iter()
            .zip(&tcb.sgxtcbcomponents)
            .all(|(have, need)| *have >= need.svn);
        let tdx_ok = tee_tcb_svn
            .iter()
            .zip(&tcb.tdxtcbcomponents)
            .skip(skip)
            .all(|(have, need)| *have >= need.svn);
        if sgx_ok && tdx_ok && pck.pcesvn >= tcb.pcesvn {
            let mut eval = TcbEvaluation {
                status: status(&level.tcb_status)?,
                advisory_ids: owned(&level.advisory_ids),
            };
            if let Some((module_status, adv)) = module_level(info, tee_tcb_svn)? {
                merge(&mut eval, module_status, adv);
            }
            return Ok(eval);
        }
    }
    Err("no matching TCB level: the platform's SVNs are below every level in the TCB info".into())
}

fn module_level(
    info: &TcbInfo<'_>,
    tee_tcb_svn: &[u8; 16],
) -> Result<Option<(TcbStatus, Vec<String>)>, String> {
    if tee_tcb_svn[1] == 0 {
        return Ok(None);
    }
    let id = format!("TDX_{:02X}", tee_tcb_svn[1]);
    let identity = info
        .tdx_module_identities
        .iter()
        .find(|m| m.id.eq_ignore_ascii_case(&id))
        .ok_or(format!("TCB info has no TDX module identity {id}"))?;
    level_for_svn(&identity.tcb_levels, u16::from(tee_tcb_svn[0]))
        .map(Some)
        .map_err(|_| {
            format!(
                "TDX module {id} SVN {} is below every module TCB level",
                tee_tcb_svn[0]
            )
        })
}

fn level_for_svn(levels: &[SvnLevel<'_>], svn: u16) -> Result<(TcbStatus, Vec<String>), ()> {
    let level = levels.iter().find(|l| svn >= l.tcb.isvsvn).ok_or(())?;
    Ok((
        status(&level.tcb_status).map_err(|_| ())?,
        owned(&level.advisory_ids),
    ))
}

/// Compute the TCB status of a TD from its report, its PCK certificate's
/// SGX extensions, its QE's ISVSVN, and the (signed) TCB info and QE
/// identity JSON.
pub fn evaluate(
    td: &TdReport,
    pck: &PckExtensions,
    qe_isvsvn: u16,
    tcb_info_json: &str,
    qe_identity_json: &str,
) -> Result<TcbEvaluation, String> {
    let info: TcbInfo<'_> =
        serde_json::from_str(tcb_info_json).map_err(|e| format!("TCB info: {e}"))?;
    if info.id != "TDX" || info.version < 3 {
        return Err("TCB info is not a TDX TCB info (id \"TDX\", version 3 or later)".into());
    }
    if hex::decode(info.fmspc.as_ref()).ok().as_deref() != Some(&pck.fmspc[..]) {
        return Err(format!(
            "TCB info is for FMSPC {}, the PCK certificate says {}",
            info.fmspc,
            hex::encode(pck.fmspc)
        ));
    }
    if hex::decode(info.pce_id.as_ref()).ok().as_deref() != Some(&pck.pceid[..]) {
        return Err("TCB info is for another PCE ID".into());
    }
    let qe: QeIdentity<'_> =
        serde_json::from_str(qe_identity_json).map_err(|e| format!("QE identity: {e}"))?;
    if qe.id != "TD_QE" {
        return Err("QE identity is not the TD QE's (id \"TD_QE\")".into());
    }

    let launch_svn = *td.tee_tcb_svn().components();
    let mut eval = platform_level(&info, pck, &launch_svn)?;
    let (qe_status, qe_adv) = level_for_svn(&qe.tcb_levels, qe_isvsvn)
        .map_err(|_| format!("QE ISVSVN {qe_isvsvn} is below every QE identity level"))?;
    merge(&mut eval, qe_status, qe_adv);
    if let Some(current) = td.tee_tcb_svn_2() {
        let mut cur = platform_level(&info, pck, current.components())?;
        merge(&mut cur, qe_status, Vec::new());
        if cur.status == TcbStatus::Revoked {
            eval.status = TcbStatus::Revoked;
        }
        eval.status = relaunch(eval.status, cur.status);
    }
    Ok(eval)
}

fn relaunch(launch: TcbStatus, current: TcbStatus) -> TcbStatus {
    use TcbStatus::*;
    let config = |s| {
        matches!(
            s,
            ConfigurationNeeded
                | OutOfDateConfigurationNeeded
                | ConfigurationAndSWHardeningNeeded
                | TDRelaunchAdvisedConfigurationNeeded
        )
    };
    match (launch, current) {
        (
            OutOfDate | OutOfDateConfigurationNeeded,
            UpToDate | SWHardeningNeeded | ConfigurationNeeded | ConfigurationAndSWHardeningNeeded,
        ) => {
            if config(launch) || config(current) {
                TDRelaunchAdvisedConfigurationNeeded
            } else {
                TDRelaunchAdvised
            }
        }
        _ => launch,
    }
}
