//! Intel TCB level evaluation for TDX, written from Intel's rules, as an
//! independent second opinion next to `dcap-qvl`.
//!
//! Owns: reading the TCB info (v3, `id` = "TDX") and QE identity (v2,
//! `id` = "TD_QE") JSON, picking the platform TCB level (first level whose 16
//! SGX components and PCESVN are met by the PCK certificate and whose 16 TDX
//! components are met by TEE_TCB_SVN, skipping components 0 and 1 when a
//! TDX module version is present), the TDX module identity level
//! (`TDX_<TEE_TCB_SVN[1] as hex>`, matched on TEE_TCB_SVN[0]), the QE level
//! (first level with isvsvn ≤ the QE's), and converging them as Intel's QVL
//! does (module or QE OutOfDate makes UpToDate OutOfDate; Revoked wins; a TD
//! 1.5 whose current TCB is better than its launch TCB is "relaunch
//! advised"). It checks no signature and no date: it only computes a status,
//! used to report one even when collateral is incomplete and to cross-check
//! `dcap-qvl`'s verdict.

use cocoon_attestation::tdx::{PckExtensions, TdReport};
use serde_json::Value;

use crate::policy::TcbStatus;

/// A computed TCB status with its advisories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbEvaluation {
    /// Converged status.
    pub status: TcbStatus,
    /// Advisory IDs of every level that contributed.
    pub advisory_ids: Vec<String>,
}

fn svns(v: &Value, key: &str) -> Result<Vec<u8>, String> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or(format!("tcb level has no {key}"))?
        .iter()
        .map(|c| {
            c.get("svn")
                .and_then(Value::as_u64)
                .and_then(|s| u8::try_from(s).ok())
                .ok_or(format!("{key} entry has no svn"))
        })
        .collect()
}

fn status_of(level: &Value) -> Result<TcbStatus, String> {
    let s = level
        .get("tcbStatus")
        .and_then(Value::as_str)
        .ok_or("tcb level has no tcbStatus")?;
    TcbStatus::from_name(s).ok_or(format!("unknown tcbStatus {s:?}"))
}

fn advisories(level: &Value) -> Vec<String> {
    level
        .get("advisoryIDs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    info: &Value,
    pck: &PckExtensions,
    tee_tcb_svn: &[u8; 16],
) -> Result<TcbEvaluation, String> {
    let levels = info
        .get("tcbLevels")
        .and_then(Value::as_array)
        .ok_or("TCB info has no tcbLevels")?;
    let skip = if tee_tcb_svn[1] > 0 { 2 } else { 0 };
    for level in levels {
        let tcb = level.get("tcb").ok_or("tcb level has no tcb")?;
        let sgx = svns(tcb, "sgxtcbcomponents")?;
        let tdx = svns(tcb, "tdxtcbcomponents")?;
        let pcesvn = tcb
            .get("pcesvn")
            .and_then(Value::as_u64)
            .ok_or("tcb level has no pcesvn")?;
        if sgx.len() != 16 || tdx.len() != 16 {
            return Err("a TCB level does not have 16 SGX and 16 TDX components".into());
        }
        let sgx_ok = pck
            .sgx_tcb_comp_svn
            .iter()
            .zip(&sgx)
            .all(|(have, need)| have >= need);
        let tdx_ok = tee_tcb_svn
            .iter()
            .zip(&tdx)
            .skip(skip)
            .all(|(have, need)| have >= need);
        if sgx_ok && tdx_ok && u64::from(pck.pcesvn) >= pcesvn {
            let mut eval = TcbEvaluation {
                status: status_of(level)?,
                advisory_ids: advisories(level),
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
    info: &Value,
    tee_tcb_svn: &[u8; 16],
) -> Result<Option<(TcbStatus, Vec<String>)>, String> {
    if tee_tcb_svn[1] == 0 {
        return Ok(None);
    }
    let id = format!("TDX_{:02X}", tee_tcb_svn[1]);
    let identity = info
        .get("tdxModuleIdentities")
        .and_then(Value::as_array)
        .and_then(|ids| {
            ids.iter().find(|m| {
                m.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.eq_ignore_ascii_case(&id))
            })
        })
        .ok_or(format!("TCB info has no TDX module identity {id}"))?;
    let levels = identity
        .get("tcbLevels")
        .and_then(Value::as_array)
        .ok_or("module identity has no tcbLevels")?;
    for level in levels {
        let need = level
            .get("tcb")
            .and_then(|t| t.get("isvsvn"))
            .and_then(Value::as_u64)
            .ok_or("module level has no isvsvn")?;
        if u64::from(tee_tcb_svn[0]) >= need {
            return Ok(Some((status_of(level)?, advisories(level))));
        }
    }
    Err(format!(
        "TDX module {id} SVN {} is below every module TCB level",
        tee_tcb_svn[0]
    ))
}

fn qe_level(qe_identity: &Value, qe_isvsvn: u16) -> Result<(TcbStatus, Vec<String>), String> {
    let levels = qe_identity
        .get("tcbLevels")
        .and_then(Value::as_array)
        .ok_or("QE identity has no tcbLevels")?;
    for level in levels {
        let need = level
            .get("tcb")
            .and_then(|t| t.get("isvsvn"))
            .and_then(Value::as_u64)
            .ok_or("QE level has no isvsvn")?;
        if u64::from(qe_isvsvn) >= need {
            return Ok((status_of(level)?, advisories(level)));
        }
    }
    Err(format!(
        "QE ISVSVN {qe_isvsvn} is below every QE identity level"
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
    let info: Value =
        serde_json::from_str(tcb_info_json).map_err(|e| format!("TCB info is not JSON: {e}"))?;
    if info.get("id").and_then(Value::as_str) != Some("TDX")
        || info
            .get("version")
            .and_then(Value::as_u64)
            .is_none_or(|v| v < 3)
    {
        return Err("TCB info is not a TDX TCB info (id \"TDX\", version 3 or later)".into());
    }
    let fmspc = info
        .get("fmspc")
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok());
    if fmspc.as_deref() != Some(&pck.fmspc[..]) {
        return Err(format!(
            "TCB info is for FMSPC {}, the PCK certificate says {}",
            info.get("fmspc").and_then(Value::as_str).unwrap_or("?"),
            hex::encode(pck.fmspc)
        ));
    }
    let pce_id = info
        .get("pceId")
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok());
    if pce_id.as_deref() != Some(&pck.pceid[..]) {
        return Err("TCB info is for another PCE ID".into());
    }
    let qe: Value = serde_json::from_str(qe_identity_json)
        .map_err(|e| format!("QE identity is not JSON: {e}"))?;
    if qe.get("id").and_then(Value::as_str) != Some("TD_QE") {
        return Err("QE identity is not the TD QE's (id \"TD_QE\")".into());
    }

    let launch_svn = *td.tee_tcb_svn().components();
    let mut eval = platform_level(&info, pck, &launch_svn)?;
    let (qe_status, qe_adv) = qe_level(&qe, qe_isvsvn)?;
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
