//! TDX event logs and their replay into RTMR0..3.
//!
//! Owns parsing event logs from untrusted bytes (the TCG crypto-agile log a
//! TDVF writes into the CCEL area, and dstack's JSON log), the replay
//! `RTMR[i] = SHA-384(RTMR[i] ‖ digest)`, and checking each event's digest
//! against its data where the event type defines the digest as a hash of
//! the data. It does not decide whether a log is acceptable: replaying a log
//! and comparing with a quote's RTMRs is what proves the log is the one the
//! TD measured.
//!
//! Formats:
//! * ACPI CCEL table (ACPI 6.5 §5.2.34, "CC Event Log ACPI Table"): 36-byte
//!   ACPI header with signature `CCEL`, then `u8` CC type (2 = Intel TDX),
//!   `u8` CC subtype, `u16` reserved, `u64` LAML (log area minimum length),
//!   `u64` LASA (log area start address).
//! * The log (TCG PC Client Platform Firmware Profile, §10.2 "Event Logging"):
//!   a first `TCG_PCR_EVENT` (SHA-1 format: `u32` index, `u32` type = EV_NO_ACTION,
//!   20-byte digest, `u32` size, data) whose data is the `TCG_EfiSpecIdEvent`
//!   ("Spec ID Event03", with the list of algorithm IDs and digest sizes),
//!   then `TCG_PCR_EVENT2` records: `u32` index, `u32` type, `u32` digest
//!   count, per digest `u16` algorithm ID and its digest, `u32` size, data.
//!   The log ends at a record header of all 0xFF or all 0x00 bytes, or at the
//!   end of the area.
//! * Index mapping (UEFI 2.10 §38, `EFI_CC_MEASUREMENT_PROTOCOL`, TDX): the
//!   record's index is the CC MR index: 0 = MRTD (never extended at run
//!   time), 1..4 = RTMR0..3. EV_NO_ACTION records are not extended.
//! * dstack JSON: a list of `{"imr", "event_type", "digest", "event",
//!   "event_payload"}` where `imr` is the RTMR number 0..3 directly.

use serde::Deserialize;

use crate::{le, sha384, Measurement};

/// EV_NO_ACTION: logged, never extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// EV_SEPARATOR.
pub const EV_SEPARATOR: u32 = 0x4;
/// EV_ACTION.
pub const EV_ACTION: u32 = 0x5;
/// EV_EFI_VARIABLE_DRIVER_CONFIG.
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// EV_EFI_VARIABLE_BOOT.
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
/// EV_EFI_BOOT_SERVICES_APPLICATION.
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// EV_EFI_GPT_EVENT.
pub const EV_EFI_GPT_EVENT: u32 = 0x8000_0006;
/// EV_EFI_ACTION.
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
/// EV_EFI_VARIABLE_AUTHORITY.
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;
/// EV_EVENT_TAG (the Linux EFI stub's tagged events).
pub const EV_EVENT_TAG: u32 = 0x6;
/// dstack's runtime event type (RTMR3).
pub const DSTACK_RUNTIME_EVENT: u32 = 0x0800_0001;

/// TPM_ALG_SHA384.
pub const TPM_ALG_SHA384: u16 = 0x000c;
/// Most records read from one log.
pub const MAX_EVENTS: usize = 100_000;

/// Why an event log cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventLogError {
    /// The CCEL table is not one.
    #[error("CCEL table: {0}")]
    CcelTable(String),
    /// The log area is shorter than the table says.
    #[error(
        "CCEL log area file has {got} bytes but the table's LAML is {laml}: the log is truncated"
    )]
    TruncatedArea {
        /// LAML from the table.
        laml: u64,
        /// Bytes given.
        got: usize,
    },
    /// Malformed record.
    #[error("event log record {index} at byte {offset}: {reason}")]
    Record {
        /// Record number (0 = the Spec ID event).
        index: usize,
        /// Byte offset in the log area.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// Malformed Spec ID event.
    #[error("event log header (Spec ID event): {0}")]
    SpecId(String),
    /// dstack JSON that is not the expected shape.
    #[error("dstack event log JSON: {0}")]
    Json(String),
    /// Too many records.
    #[error("event log has more than {MAX_EVENTS} records")]
    TooManyEvents,
}

/// The ACPI CCEL table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcelTable {
    /// CC type (2 = Intel TDX).
    pub cc_type: u8,
    /// CC subtype.
    pub cc_subtype: u8,
    /// Log area minimum length.
    pub laml: u64,
    /// Log area start address (guest physical).
    pub lasa: u64,
}

impl CcelTable {
    /// Parse and check the table: signature, length, checksum, TDX type.
    pub fn parse(b: &[u8]) -> Result<CcelTable, EventLogError> {
        let err = |s: String| EventLogError::CcelTable(s);
        if b.len() < 56 {
            return Err(err(format!("{} bytes, needs 56", b.len())));
        }
        if &b[..4] != b"CCEL" {
            return Err(err(format!("signature {:?}, expected \"CCEL\"", &b[..4])));
        }
        let len = le::u32_at(b, 4).unwrap_or_default() as usize;
        if len < 56 || len > b.len() {
            return Err(err(format!(
                "length field {len} does not fit the {}-byte file",
                b.len()
            )));
        }
        if b[..len].iter().fold(0u8, |a, x| a.wrapping_add(*x)) != 0 {
            return Err(err(
                "checksum does not sum to zero: the table is corrupted".into()
            ));
        }
        let t = CcelTable {
            cc_type: b[36],
            cc_subtype: b[37],
            laml: le::u64_at(b, 40).unwrap_or_default(),
            lasa: le::u64_at(b, 48).unwrap_or_default(),
        };
        if t.cc_type != 2 {
            return Err(err(format!(
                "CC type {} is not Intel TDX (2): RTMR replay is for TDX logs",
                t.cc_type
            )));
        }
        Ok(t)
    }

    /// The log area inside `data` (the bytes at LASA): its first LAML bytes.
    pub fn log_area<'a>(&self, data: &'a [u8]) -> Result<&'a [u8], EventLogError> {
        usize::try_from(self.laml)
            .ok()
            .and_then(|n| data.get(..n))
            .ok_or(EventLogError::TruncatedArea {
                laml: self.laml,
                got: data.len(),
            })
    }
}

/// One logged measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// The RTMR (0..3) it was extended into; `None` for EV_NO_ACTION.
    pub rtmr: Option<usize>,
    /// Event type.
    pub event_type: u32,
    /// The SHA-384 digest extended.
    pub digest: [u8; 48],
    /// The event data (dstack: the payload).
    pub data: Vec<u8>,
    /// dstack's event name (empty for TCG logs).
    pub name: String,
}

/// Whether an event's digest is what its data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestCheck {
    /// The event type defines the digest as a hash of the data, and it is.
    Matches,
    /// The event type defines the digest as a hash of the data, and it is not.
    Mismatch,
    /// The digest is of something not in the log (an image, a table).
    NotCheckable,
}

/// The source format of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// TCG crypto-agile (CCEL).
    Tcg,
    /// dstack JSON.
    DstackJson,
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// Where it came from.
    pub format: LogFormat,
    /// Records after the Spec ID event, in log order.
    pub events: Vec<LoggedEvent>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).and_then(|s| le::u16_at(s, 0))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|s| le::u32_at(s, 0))
    }
}

/// Algorithms and digest sizes of a Spec ID event.
fn parse_spec_id(data: &[u8]) -> Result<Vec<(u16, u16)>, EventLogError> {
    let err = |s: &str| EventLogError::SpecId(s.to_string());
    let mut r = Reader { b: data, at: 0 };
    let sig = r.take(16).ok_or_else(|| err("too short"))?;
    if sig != b"Spec ID Event03\0" {
        return Err(err(
            "signature is not \"Spec ID Event03\": not a crypto-agile log",
        ));
    }
    r.take(4 + 4).ok_or_else(|| err("too short"))?; // platform class, version, errata, uintn size
    let n = r.u32().ok_or_else(|| err("too short"))?;
    if n == 0 || n > 16 {
        return Err(err("number of algorithms must be 1..16"));
    }
    let mut algs = Vec::new();
    for _ in 0..n {
        let id = r.u16().ok_or_else(|| err("algorithm list cut short"))?;
        let size = r.u16().ok_or_else(|| err("algorithm list cut short"))?;
        if size == 0 || size > 64 || algs.iter().any(|(a, _)| *a == id) {
            return Err(err("bad or repeated algorithm entry"));
        }
        algs.push((id, size));
    }
    let vendor = r.u8().ok_or_else(|| err("vendor info size missing"))?;
    r.take(usize::from(vendor))
        .ok_or_else(|| err("vendor info cut short"))?;
    if !algs.contains(&(TPM_ALG_SHA384, 48)) {
        return Err(err("the log has no SHA-384 bank (TDX RTMRs are SHA-384)"));
    }
    Ok(algs)
}

impl EventLog {
    /// Parse a TCG crypto-agile log (the CCEL log area, or the log file a
    /// guest exposes). Trailing filler after the last record is ignored.
    pub fn parse_tcg(area: &[u8]) -> Result<EventLog, EventLogError> {
        let mut r = Reader { b: area, at: 0 };
        let rec = |index: usize, offset: usize, reason: &str| EventLogError::Record {
            index,
            offset,
            reason: reason.to_string(),
        };
        // TCG_PCR_EVENT header of the Spec ID event.
        let _index = r
            .u32()
            .ok_or_else(|| rec(0, 0, "log is empty or shorter than a header"))?;
        let ty = r.u32().ok_or_else(|| rec(0, 4, "cut short"))?;
        if ty != EV_NO_ACTION {
            return Err(rec(
                0,
                4,
                "the first record must be EV_NO_ACTION (the Spec ID event)",
            ));
        }
        r.take(20).ok_or_else(|| rec(0, 8, "cut short"))?;
        let size = r.u32().ok_or_else(|| rec(0, 28, "cut short"))? as usize;
        let spec = r
            .take(size)
            .ok_or_else(|| rec(0, 32, "Spec ID event data cut short"))?;
        let algs = parse_spec_id(spec)?;

        let mut events = Vec::new();
        loop {
            let offset = r.at;
            let index = events.len() + 1;
            let rest = &area[offset..];
            let head = rest.get(..8);
            match head {
                None if rest.iter().all(|b| *b == 0 || *b == 0xff) => break,
                None => {
                    return Err(rec(
                        index,
                        offset,
                        "trailing bytes shorter than a record header",
                    ))
                }
                Some(h) if h.iter().all(|b| *b == 0xff) || h.iter().all(|b| *b == 0) => break,
                Some(_) => {}
            }
            if events.len() >= MAX_EVENTS {
                return Err(EventLogError::TooManyEvents);
            }
            let mr_index = r.u32().ok_or_else(|| rec(index, offset, "cut short"))?;
            let event_type = r.u32().ok_or_else(|| rec(index, offset, "cut short"))?;
            let count = r.u32().ok_or_else(|| rec(index, offset, "cut short"))?;
            if count == 0 || count as usize > algs.len() {
                return Err(rec(
                    index,
                    offset,
                    &format!("digest count {count} (the log has {} banks)", algs.len()),
                ));
            }
            let mut sha384_digest = None;
            for _ in 0..count {
                let alg = r
                    .u16()
                    .ok_or_else(|| rec(index, offset, "digests cut short"))?;
                let size = algs
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .map(|(_, s)| *s)
                    .ok_or_else(|| {
                        rec(
                            index,
                            offset,
                            &format!("digest algorithm {alg:#06x} is not in the Spec ID event"),
                        )
                    })?;
                let d = r
                    .take(usize::from(size))
                    .ok_or_else(|| rec(index, offset, "digest cut short"))?;
                if alg == TPM_ALG_SHA384 {
                    sha384_digest = d.try_into().ok();
                }
            }
            let digest: [u8; 48] =
                sha384_digest.ok_or_else(|| rec(index, offset, "no SHA-384 digest"))?;
            let size = r
                .u32()
                .ok_or_else(|| rec(index, offset, "event size missing"))?
                as usize;
            let data = r.take(size).ok_or_else(|| {
                rec(
                    index,
                    offset,
                    &format!("event data of {size} bytes runs past the end of the log"),
                )
            })?;
            let rtmr = if event_type == EV_NO_ACTION {
                None
            } else {
                match mr_index {
                    1..=4 => Some(mr_index as usize - 1),
                    0 => {
                        return Err(rec(
                            index,
                            offset,
                            "MR index 0 (MRTD) cannot be extended by an event",
                        ))
                    }
                    _ => {
                        return Err(rec(
                            index,
                            offset,
                            &format!("MR index {mr_index} is not an RTMR (1..4)"),
                        ))
                    }
                }
            };
            events.push(LoggedEvent {
                rtmr,
                event_type,
                digest,
                data: data.to_vec(),
                name: String::new(),
            });
        }
        Ok(EventLog {
            format: LogFormat::Tcg,
            events,
        })
    }

    /// Parse the CCEL pair: the ACPI table and the log-area bytes.
    pub fn parse_ccel(table: &[u8], data: &[u8]) -> Result<EventLog, EventLogError> {
        let t = CcelTable::parse(table)?;
        Self::parse_tcg(t.log_area(data)?)
    }

    /// Parse dstack's JSON event log (a list of events).
    pub fn parse_dstack_json(text: &str) -> Result<EventLog, EventLogError> {
        let raw: Vec<DstackEvent> =
            serde_json::from_str(text).map_err(|e| EventLogError::Json(e.to_string()))?;
        if raw.len() > MAX_EVENTS {
            return Err(EventLogError::TooManyEvents);
        }
        let events = raw
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let bad = |s: String| EventLogError::Json(format!("event {i}: {s}"));
                if e.imr > 3 {
                    return Err(bad(format!("imr {} is not an RTMR (0..3)", e.imr)));
                }
                let digest =
                    crate::parse_hex::<48>(&e.digest).map_err(|x| bad(format!("digest: {x}")))?;
                let data = hex::decode(e.event_payload.trim())
                    .map_err(|_| bad("event_payload is not hex".into()))?;
                Ok(LoggedEvent {
                    rtmr: (e.event_type != EV_NO_ACTION).then_some(e.imr as usize),
                    event_type: e.event_type,
                    digest,
                    data,
                    name: e.event,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventLog {
            format: LogFormat::DstackJson,
            events,
        })
    }

    /// Replay the log: RTMR0..3 from zero, extended with each event's digest.
    pub fn replay(&self) -> [Measurement; 4] {
        let mut rtmr = [[0u8; 48]; 4];
        for e in &self.events {
            if let Some(i) = e.rtmr {
                let mut buf = [0u8; 96];
                buf[..48].copy_from_slice(&rtmr[i]);
                buf[48..].copy_from_slice(&e.digest);
                rtmr[i] = sha384(&buf);
            }
        }
        rtmr.map(Measurement)
    }

    /// Check every event's digest against its data where the type allows.
    pub fn check_digests(&self) -> Vec<DigestCheck> {
        self.events.iter().map(check_event).collect()
    }
}

/// The digest an event's data implies, if its type defines one.
pub fn expected_digest(e: &LoggedEvent) -> Option<[u8; 48]> {
    match e.event_type {
        EV_SEPARATOR
        | EV_ACTION
        | EV_EFI_ACTION
        | EV_EFI_VARIABLE_DRIVER_CONFIG
        | EV_EFI_GPT_EVENT
        | EV_EFI_VARIABLE_AUTHORITY => Some(sha384(&e.data)),
        // edk2 measures only the VariableData of boot variables.
        EV_EFI_VARIABLE_BOOT => {
            let name_len = usize::try_from(le::u64_at(&e.data, 16)?).ok()?;
            let data_len = usize::try_from(le::u64_at(&e.data, 24)?).ok()?;
            let start = name_len.checked_mul(2)?.checked_add(32)?;
            let var = e.data.get(start..start.checked_add(data_len)?)?;
            Some(sha384(var))
        }
        DSTACK_RUNTIME_EVENT => {
            let mut b = DSTACK_RUNTIME_EVENT.to_le_bytes().to_vec();
            b.push(b':');
            b.extend_from_slice(e.name.as_bytes());
            b.push(b':');
            b.extend_from_slice(&e.data);
            Some(sha384(&b))
        }
        _ => None,
    }
}

fn check_event(e: &LoggedEvent) -> DigestCheck {
    match expected_digest(e) {
        None => DigestCheck::NotCheckable,
        Some(d) if d == e.digest => DigestCheck::Matches,
        Some(_) => DigestCheck::Mismatch,
    }
}

#[derive(Deserialize)]
struct DstackEvent {
    imr: u32,
    event_type: u32,
    digest: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    event_payload: String,
}

/// A readable name for common event types.
pub fn event_type_name(t: u32) -> &'static str {
    match t {
        EV_NO_ACTION => "EV_NO_ACTION",
        EV_SEPARATOR => "EV_SEPARATOR",
        EV_ACTION => "EV_ACTION",
        EV_EVENT_TAG => "EV_EVENT_TAG",
        0xa => "EV_PLATFORM_CONFIG_FLAGS",
        0xd => "EV_IPL",
        EV_EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        EV_EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
        EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
        EV_EFI_GPT_EVENT => "EV_EFI_GPT_EVENT",
        EV_EFI_ACTION => "EV_EFI_ACTION",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        EV_EFI_VARIABLE_AUTHORITY => "EV_EFI_VARIABLE_AUTHORITY",
        DSTACK_RUNTIME_EVENT => "DSTACK_RUNTIME_EVENT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_id_event() -> Vec<u8> {
        let mut d = b"Spec ID Event03\0".to_vec();
        d.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
        d.extend_from_slice(&48u16.to_le_bytes());
        d.push(0);
        let mut e = 0u32.to_le_bytes().to_vec();
        e.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        e.extend_from_slice(&[0; 20]);
        e.extend_from_slice(&(d.len() as u32).to_le_bytes());
        e.extend_from_slice(&d);
        e
    }

    fn record(mr: u32, ty: u32, data: &[u8]) -> Vec<u8> {
        let mut e = mr.to_le_bytes().to_vec();
        e.extend_from_slice(&ty.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
        e.extend_from_slice(&sha384(data));
        e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    #[test]
    fn replays_a_synthetic_log() {
        let mut log = spec_id_event();
        log.extend(record(
            2,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        ));
        log.extend(record(2, EV_SEPARATOR, &[0; 4]));
        log.extend(record(0, EV_NO_ACTION, b"ignored"));
        log.extend([0xff; 64]);
        let l = EventLog::parse_tcg(&log).unwrap();
        assert_eq!(l.events.len(), 3);
        assert!(l
            .check_digests()
            .iter()
            .take(2)
            .all(|c| *c == DigestCheck::Matches));
        let r = l.replay();
        let mut want = [0u8; 48];
        for d in [
            sha384(b"Calling EFI Application from Boot Option"),
            sha384(&[0; 4]),
        ] {
            want = sha384(&[want.as_slice(), d.as_slice()].concat());
        }
        assert_eq!(r[1].0, want);
        assert_eq!(r[0], Measurement::ZERO);
    }

    #[test]
    fn malformed_logs_are_errors() {
        let mut log = spec_id_event();
        log.extend(record(7, EV_SEPARATOR, &[0; 4]));
        assert!(matches!(
            EventLog::parse_tcg(&log),
            Err(EventLogError::Record { index: 1, .. })
        ));
        let mut log = spec_id_event();
        let mut r = record(1, EV_SEPARATOR, &[0; 4]);
        let n = r.len();
        r[n - 8..n - 4].copy_from_slice(&1000u32.to_le_bytes());
        log.extend(r);
        assert!(EventLog::parse_tcg(&log).is_err());
        let mut log = spec_id_event();
        log[32] = b'X';
        assert!(matches!(
            EventLog::parse_tcg(&log),
            Err(EventLogError::SpecId(_))
        ));
        assert!(EventLog::parse_tcg(&[]).is_err());
        assert!(EventLog::parse_dstack_json("{}").is_err());
        assert!(EventLog::parse_dstack_json(r#"[{"imr":4,"event_type":1,"digest":""}]"#).is_err());
    }

    #[test]
    fn ccel_table_checks() {
        let mut t = vec![0u8; 56];
        t[..4].copy_from_slice(b"CCEL");
        t[4..8].copy_from_slice(&56u32.to_le_bytes());
        t[36] = 2;
        t[40..48].copy_from_slice(&16u64.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        t[9] = 0u8.wrapping_sub(sum);
        let c = CcelTable::parse(&t).unwrap();
        assert_eq!(c.laml, 16);
        assert!(c.log_area(&[0; 15]).is_err());
        assert_eq!(c.log_area(&[0; 20]).unwrap().len(), 16);
        t[36] = 1;
        assert!(CcelTable::parse(&t).is_err(), "checksum and type");
    }
}
