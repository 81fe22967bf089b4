//! The SGX extensions (OID 1.2.840.113741.1.13.1) that Intel puts in every
//! PCK leaf certificate: PPID, TCB (16 SGX TCB component SVNs, PCESVN,
//! CPUSVN), PCE-ID, FMSPC, SGX type and, for the Platform CA, the platform
//! instance ID. Source: *Intel SGX PCK Certificate and Certificate
//! Revocation List Profile Specification*, section "SGX Extensions". Decoded
//! from the `extnValue` bytes the caller took out of the certificate; no
//! X.509 here.

use crate::bytes::{DerError, Reader};

/// OID of the SGX extensions in PCK certificates.
pub const SGX_EXTENSIONS_OID: &str = "1.2.840.113741.1.13.1";

/// DER contents of [`SGX_EXTENSIONS_OID`]; each extension's OID is this
/// plus one arc, each TCB component's this plus `.2.<n>`.
const SGX_EXT_OID: [u8; 9] = [0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x01, 0x0D, 0x01];

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_ENUMERATED: u8 = 0x0A;
const TAG_SEQUENCE: u8 = 0x30;

/// Why the bytes of an SGX extensions value are not what the PCK
/// certificate profile defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PckExtensionsError {
    /// Not well-formed DER.
    #[error("malformed DER in {what} at offset {offset}: {reason}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// Offset within the extension value.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An element of the wrong type.
    #[error("{what} at offset {offset}: expected DER tag {expected:#04x}, found {found:#04x}")]
    UnexpectedTag {
        /// What was being read.
        what: &'static str,
        /// Offset within the extension value.
        offset: usize,
        /// Tag the profile defines.
        expected: u8,
        /// Tag found.
        found: u8,
    },
    /// A fixed-size value of the wrong size.
    #[error("{what} is {found} bytes, expected {expected}")]
    WrongLength {
        /// The value.
        what: &'static str,
        /// Size the profile defines.
        expected: usize,
        /// Size found.
        found: usize,
    },
    /// An integer that is negative, not minimally encoded, or too large.
    #[error("{what} is not an integer in range: {reason}")]
    BadInteger {
        /// The value.
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A required extension or TCB component is absent.
    #[error("SGX extension {0} is missing")]
    Missing(&'static str),
    /// An extension or TCB component appears twice.
    #[error("SGX extension {0} appears more than once")]
    Duplicate(&'static str),
}

/// Not well-formed DER, where the shared reader found it.
impl From<DerError> for PckExtensionsError {
    fn from(e: DerError) -> Self {
        PckExtensionsError::Malformed {
            what: e.what,
            offset: e.offset,
            reason: e.reason,
        }
    }
}

/// The next element of `r`, which must have tag `expected`.
fn expect<'a>(
    r: &mut Reader<'a>,
    expected: u8,
    what: &'static str,
) -> Result<Reader<'a>, PckExtensionsError> {
    let offset = r.offset();
    let (found, element) = r.der(what)?;
    if found != expected {
        return Err(PckExtensionsError::UnexpectedTag {
            what,
            offset,
            expected,
            found,
        });
    }
    Ok(element)
}

/// An element's contents as a fixed-size OCTET STRING.
fn octets<const N: usize>(
    tag: u8,
    value: &Reader<'_>,
    what: &'static str,
) -> Result<[u8; N], PckExtensionsError> {
    if tag != TAG_OCTET_STRING {
        return Err(PckExtensionsError::UnexpectedTag {
            what,
            offset: value.offset(),
            expected: TAG_OCTET_STRING,
            found: tag,
        });
    }
    <[u8; N]>::try_from(value.rest()).map_err(|_| PckExtensionsError::WrongLength {
        what,
        expected: N,
        found: value.rest().len(),
    })
}

/// An element's contents as a non-negative DER INTEGER (or ENUMERATED,
/// which is encoded the same way).
fn unsigned(
    tag: u8,
    expected_tag: u8,
    value: &Reader<'_>,
    what: &'static str,
) -> Result<u64, PckExtensionsError> {
    if tag != expected_tag {
        return Err(PckExtensionsError::UnexpectedTag {
            what,
            offset: value.offset(),
            expected: expected_tag,
            found: tag,
        });
    }
    let bad = |reason| PckExtensionsError::BadInteger { what, reason };
    let digits = match value.rest() {
        [] => return Err(bad("empty encoding")),
        [first, ..] if first & 0x80 != 0 => return Err(bad("negative")),
        [0, second, ..] if second & 0x80 == 0 => return Err(bad("not minimally encoded")),
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    if digits.len() > 8 {
        return Err(bad("too large"));
    }
    Ok(digits.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
}

/// The arc after `prefix` when `oid` is `prefix` plus one arc below 128.
fn arc_below(oid: &[u8], prefix: &[u8]) -> Option<u8> {
    match oid.strip_prefix(prefix) {
        Some(&[arc]) if arc < 0x80 => Some(arc),
        _ => None,
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    name: &'static str,
) -> Result<(), PckExtensionsError> {
    if slot.is_some() {
        return Err(PckExtensionsError::Duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

/// The SGX type of the platform a PCK certificate was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SgxType {
    /// 0: Standard.
    Standard,
    /// 1: Scalable.
    Scalable,
    /// 2: Scalable with integrity.
    ScalableWithIntegrity,
    /// A value the profile does not define.
    Unknown(u64),
}

/// The SGX extensions (OID [`SGX_EXTENSIONS_OID`]) of a PCK certificate:
/// the platform's identity and the TCB level the certificate was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PckExtensions {
    /// PPID (`.1`): the platform provisioning ID, encrypted or not per the
    /// certificate's CA.
    pub ppid: [u8; 16],
    /// SGX TCB component SVNs 1 to 16 (`.2.1` to `.2.16`).
    pub sgx_tcb_comp_svn: [u8; 16],
    /// PCE SVN (`.2.17`).
    pub pcesvn: u16,
    /// CPU SVN (`.2.18`).
    pub cpusvn: [u8; 16],
    /// PCE-ID (`.3`).
    pub pceid: [u8; 2],
    /// FMSPC (`.4`): family, model, stepping and platform type; selects the
    /// TCB info.
    pub fmspc: [u8; 6],
    /// SGX type (`.5`).
    pub sgx_type: SgxType,
    /// Platform instance ID (`.6`), in certificates of the PCK Platform CA.
    pub platform_instance_id: Option<[u8; 16]>,
}

/// The TCB extension's components.
struct Tcb {
    comp_svn: [u8; 16],
    pcesvn: u16,
    cpusvn: [u8; 16],
}

impl PckExtensions {
    /// Decode the `extnValue` contents (the bytes inside the OCTET STRING)
    /// of a PCK certificate's SGX extensions. Extensions and TCB components
    /// this profile does not name (the Platform CA's Configuration, `.7`,
    /// for one) are checked for well-formed DER and otherwise skipped; the
    /// PPID, TCB (all 18 components), PCE-ID, FMSPC and SGX type are
    /// required, each exactly once.
    pub fn from_der(ext_value: &[u8]) -> Result<PckExtensions, PckExtensionsError> {
        let mut top = Reader::new(ext_value);
        let mut items = expect(&mut top, TAG_SEQUENCE, "SGX extensions")?;
        top.der_finish("SGX extensions")?;

        let mut ppid = None;
        let mut tcb = None;
        let mut pceid = None;
        let mut fmspc = None;
        let mut sgx_type = None;
        let mut platform_instance_id = None;
        while !items.is_empty() {
            let mut item = expect(&mut items, TAG_SEQUENCE, "SGX extension")?;
            let oid = expect(&mut item, TAG_OID, "SGX extension OID")?;
            let (tag, value) = item.der("SGX extension value")?;
            item.der_finish("SGX extension")?;
            match arc_below(oid.rest(), &SGX_EXT_OID) {
                Some(1) => set_once(&mut ppid, octets::<16>(tag, &value, "PPID")?, "PPID")?,
                Some(2) => set_once(&mut tcb, Self::tcb(tag, value)?, "TCB")?,
                Some(3) => set_once(&mut pceid, octets::<2>(tag, &value, "PCE-ID")?, "PCE-ID")?,
                Some(4) => set_once(&mut fmspc, octets::<6>(tag, &value, "FMSPC")?, "FMSPC")?,
                Some(5) => {
                    let v = unsigned(tag, TAG_ENUMERATED, &value, "SGX type")?;
                    let t = match v {
                        0 => SgxType::Standard,
                        1 => SgxType::Scalable,
                        2 => SgxType::ScalableWithIntegrity,
                        other => SgxType::Unknown(other),
                    };
                    set_once(&mut sgx_type, t, "SGX type")?;
                }
                Some(6) => set_once(
                    &mut platform_instance_id,
                    octets::<16>(tag, &value, "platform instance ID")?,
                    "platform instance ID",
                )?,
                _ => {}
            }
        }
        let tcb = tcb.ok_or(PckExtensionsError::Missing("TCB"))?;
        Ok(PckExtensions {
            ppid: ppid.ok_or(PckExtensionsError::Missing("PPID"))?,
            sgx_tcb_comp_svn: tcb.comp_svn,
            pcesvn: tcb.pcesvn,
            cpusvn: tcb.cpusvn,
            pceid: pceid.ok_or(PckExtensionsError::Missing("PCE-ID"))?,
            fmspc: fmspc.ok_or(PckExtensionsError::Missing("FMSPC"))?,
            sgx_type: sgx_type.ok_or(PckExtensionsError::Missing("SGX type"))?,
            platform_instance_id,
        })
    }

    /// The TCB extension: a SEQUENCE of (OID `.2.<n>`, value) pairs.
    fn tcb(tag: u8, mut value: Reader<'_>) -> Result<Tcb, PckExtensionsError> {
        if tag != TAG_SEQUENCE {
            return Err(PckExtensionsError::UnexpectedTag {
                what: "TCB",
                offset: value.offset(),
                expected: TAG_SEQUENCE,
                found: tag,
            });
        }
        const COMP_NAMES: [&str; 16] = [
            "TCB component 1",
            "TCB component 2",
            "TCB component 3",
            "TCB component 4",
            "TCB component 5",
            "TCB component 6",
            "TCB component 7",
            "TCB component 8",
            "TCB component 9",
            "TCB component 10",
            "TCB component 11",
            "TCB component 12",
            "TCB component 13",
            "TCB component 14",
            "TCB component 15",
            "TCB component 16",
        ];
        let mut tcb_prefix = [0u8; SGX_EXT_OID.len() + 1];
        if let Some((last, head)) = tcb_prefix.split_last_mut() {
            head.copy_from_slice(&SGX_EXT_OID);
            *last = 2;
        }
        let mut comps: [Option<u8>; 16] = [None; 16];
        let mut pcesvn = None;
        let mut cpusvn = None;
        while !value.is_empty() {
            let mut entry = expect(&mut value, TAG_SEQUENCE, "TCB component")?;
            let oid = expect(&mut entry, TAG_OID, "TCB component OID")?;
            let (t, v) = entry.der("TCB component value")?;
            entry.der_finish("TCB component")?;
            let Some(n) = arc_below(oid.rest(), &tcb_prefix) else {
                continue;
            };
            match n {
                1..=16 => {
                    let i = usize::from(n - 1);
                    let name = COMP_NAMES.get(i).copied().unwrap_or("TCB component");
                    let svn = unsigned(t, TAG_INTEGER, &v, name)?;
                    let svn = u8::try_from(svn).map_err(|_| PckExtensionsError::BadInteger {
                        what: name,
                        reason: "above 255",
                    })?;
                    if let Some(slot) = comps.get_mut(i) {
                        set_once(slot, svn, name)?;
                    }
                }
                17 => {
                    let svn = unsigned(t, TAG_INTEGER, &v, "PCESVN")?;
                    let svn = u16::try_from(svn).map_err(|_| PckExtensionsError::BadInteger {
                        what: "PCESVN",
                        reason: "above 65535",
                    })?;
                    set_once(&mut pcesvn, svn, "PCESVN")?;
                }
                18 => set_once(&mut cpusvn, octets::<16>(t, &v, "CPUSVN")?, "CPUSVN")?,
                _ => {}
            }
        }
        let mut comp_svn = [0u8; 16];
        for ((out, svn), name) in comp_svn.iter_mut().zip(comps).zip(COMP_NAMES) {
            *out = svn.ok_or(PckExtensionsError::Missing(name))?;
        }
        Ok(Tcb {
            comp_svn,
            pcesvn: pcesvn.ok_or(PckExtensionsError::Missing("PCESVN"))?,
            cpusvn: cpusvn.ok_or(PckExtensionsError::Missing("CPUSVN"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = contents.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend_from_slice(&[0x81, n as u8]);
        } else {
            out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(contents);
        out
    }

    fn oid(arcs: &[u8]) -> Vec<u8> {
        let mut o = SGX_EXT_OID.to_vec();
        o.extend_from_slice(arcs);
        tlv(TAG_OID, &o)
    }

    fn entry(arcs: &[u8], value: Vec<u8>) -> Vec<u8> {
        let mut c = oid(arcs);
        c.extend_from_slice(&value);
        tlv(TAG_SEQUENCE, &c)
    }

    fn int(v: &[u8]) -> Vec<u8> {
        tlv(TAG_INTEGER, v)
    }

    /// TCB components as (arc, encoded value), in order.
    fn tcb_components() -> Vec<(u8, Vec<u8>)> {
        let mut comps: Vec<(u8, Vec<u8>)> = (1..=16u8).map(|n| (n, int(&[n]))).collect();
        comps[4].1 = int(&[0x00, 0xFF]); // component 5 = 255, with its sign byte
        comps.push((17, int(&[0x00, 0x80, 0x01]))); // PCESVN 0x8001
        comps.push((18, tlv(TAG_OCTET_STRING, &[0xC5; 16])));
        comps
    }

    fn extension(tcb: &[(u8, Vec<u8>)], extra: &[Vec<u8>], skip: Option<u8>) -> Vec<u8> {
        let tcb_seq: Vec<u8> = tcb
            .iter()
            .flat_map(|(n, v)| entry(&[2, *n], v.clone()))
            .collect();
        let mut items = vec![
            (1, entry(&[1], tlv(TAG_OCTET_STRING, &[0xAB; 16]))),
            (2, entry(&[2], tlv(TAG_SEQUENCE, &tcb_seq))),
            (3, entry(&[3], tlv(TAG_OCTET_STRING, &[0, 0]))),
            (
                4,
                entry(&[4], tlv(TAG_OCTET_STRING, &[0x90, 0xC0, 0x6F, 0, 0, 0])),
            ),
            (5, entry(&[5], tlv(TAG_ENUMERATED, &[1]))),
        ];
        items.retain(|(n, _)| Some(*n) != skip);
        let mut body: Vec<u8> = items.into_iter().flat_map(|(_, e)| e).collect();
        for e in extra {
            body.extend_from_slice(e);
        }
        tlv(TAG_SEQUENCE, &body)
    }

    #[test]
    fn pck_extensions_decode() {
        let ext = extension(&tcb_components(), &[], None);
        let p = PckExtensions::from_der(&ext).unwrap();
        assert_eq!(p.ppid, [0xAB; 16]);
        assert_eq!(
            p.sgx_tcb_comp_svn,
            [1, 2, 3, 4, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
        );
        assert_eq!(p.pcesvn, 0x8001);
        assert_eq!(p.cpusvn, [0xC5; 16]);
        assert_eq!(p.pceid, [0, 0]);
        assert_eq!(p.fmspc, [0x90, 0xC0, 0x6F, 0, 0, 0]);
        assert_eq!(p.sgx_type, SgxType::Scalable);
        assert_eq!(p.platform_instance_id, None);

        // Platform CA certificates add .6 and .7; the latter is skipped.
        let extra = [
            entry(&[6], tlv(TAG_OCTET_STRING, &[0x66; 16])),
            entry(&[7], tlv(TAG_SEQUENCE, &entry(&[7, 1], tlv(0x01, &[0xFF])))),
        ];
        let p = PckExtensions::from_der(&extension(&tcb_components(), &extra, None)).unwrap();
        assert_eq!(p.platform_instance_id, Some([0x66; 16]));
    }

    #[test]
    fn pck_extensions_refuse_missing_duplicate_and_malformed_parts() {
        for (skip, name) in [
            (1, "PPID"),
            (2, "TCB"),
            (3, "PCE-ID"),
            (4, "FMSPC"),
            (5, "SGX type"),
        ] {
            assert_eq!(
                PckExtensions::from_der(&extension(&tcb_components(), &[], Some(skip))),
                Err(PckExtensionsError::Missing(name))
            );
        }
        let dup = [entry(&[4], tlv(TAG_OCTET_STRING, &[0; 6]))];
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb_components(), &dup, None)),
            Err(PckExtensionsError::Duplicate("FMSPC"))
        );
        let mut tcb = tcb_components();
        tcb.remove(7);
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::Missing("TCB component 8"))
        );
        let mut tcb = tcb_components();
        tcb.push((3, int(&[3])));
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::Duplicate("TCB component 3"))
        );
        let bad_ints: [(&[u8], &str); 5] = [
            (&[], "empty encoding"),
            (&[0x80], "negative"),
            (&[0x00, 0x05], "not minimally encoded"),
            (&[0x01, 0x00], "above 255"),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9], "too large"),
        ];
        for (v, reason) in bad_ints {
            let mut tcb = tcb_components();
            tcb[0].1 = int(v);
            assert_eq!(
                PckExtensions::from_der(&extension(&tcb, &[], None)),
                Err(PckExtensionsError::BadInteger {
                    what: "TCB component 1",
                    reason
                }),
                "{v:?}"
            );
        }
        let mut tcb = tcb_components();
        tcb[17].1 = tlv(TAG_OCTET_STRING, &[0; 15]);
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::WrongLength {
                what: "CPUSVN",
                expected: 16,
                found: 15
            })
        );
        let mut tcb = tcb_components();
        tcb[16].1 = tlv(TAG_OCTET_STRING, &[1]);
        assert!(matches!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::UnexpectedTag {
                what: "PCESVN",
                expected: TAG_INTEGER,
                found: TAG_OCTET_STRING,
                ..
            })
        ));
    }

    #[test]
    fn der_framing_is_strict() {
        let good = extension(&tcb_components(), &[], None);
        assert!(PckExtensions::from_der(&good).is_ok());
        // Every truncation fails; so does anything appended.
        for n in 0..good.len() {
            assert!(PckExtensions::from_der(&good[..n]).is_err(), "length {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            PckExtensions::from_der(&long),
            Err(PckExtensionsError::Malformed {
                reason: "unexpected data after the last element",
                ..
            })
        ));
        // The outer SEQUENCE uses a two-byte length; re-encode it badly.
        assert_eq!(good[1], 0x82);
        let mut indefinite = good.clone();
        indefinite[1] = 0x80;
        assert!(matches!(
            PckExtensions::from_der(&indefinite),
            Err(PckExtensionsError::Malformed {
                reason: "indefinite length",
                ..
            })
        ));
        let mut five = good.clone();
        five[1] = 0x85;
        assert!(matches!(
            PckExtensions::from_der(&five),
            Err(PckExtensionsError::Malformed {
                reason: "length too large",
                ..
            })
        ));
        // A short length in long form.
        let non_minimal = [0x30, 0x81, 0x05, 0x04, 0x03, 1, 2, 3];
        assert!(matches!(
            PckExtensions::from_der(&non_minimal),
            Err(PckExtensionsError::Malformed {
                reason: "length not minimally encoded",
                ..
            })
        ));
        let leading_zero = [0x30, 0x82, 0x00, 0x85];
        assert!(matches!(
            PckExtensions::from_der(&leading_zero),
            Err(PckExtensionsError::Malformed {
                reason: "length not minimally encoded",
                ..
            })
        ));
        assert!(matches!(
            PckExtensions::from_der(&[0x1F, 0x01, 0x00]),
            Err(PckExtensionsError::Malformed { .. })
        ));
        assert!(matches!(
            PckExtensions::from_der(&[0x31, 0x00]),
            Err(PckExtensionsError::UnexpectedTag {
                expected: TAG_SEQUENCE,
                found: 0x31,
                ..
            })
        ));
        // An empty SEQUENCE is well-formed but lacks everything.
        assert_eq!(
            PckExtensions::from_der(&[0x30, 0x00]),
            Err(PckExtensionsError::Missing("TCB"))
        );
    }
}
