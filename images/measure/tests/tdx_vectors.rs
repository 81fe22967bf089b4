//! TDX against the shared vectors: CCEL and dstack event logs replay to the
//! RTMRs of the quotes captured with them; the direct-boot event structure
//! matches the dstack log; the TDVF metadata of the OVMF suffix files.

use std::path::PathBuf;

use cocoon_attestation::tdx::Quote;
use cocoon_measure::direct_boot::{
    load_options_digest, rtmr1_events, rtmr1_from_kernel_digest, rtmr2_from_digests,
};
use cocoon_measure::eventlog::{
    DigestCheck, EventLog, EventLogError, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EVENT_TAG,
};
use cocoon_measure::tdvf::{TdvfError, TdvfMetadata, TdvfSectionType, ATTR_MR_EXTEND};
use cocoon_measure::Measurement;
use serde_json::Value;

fn tdx_dir() -> PathBuf {
    cocoon_tests::vectors_dir().join("measure/tdx")
}

fn read(rel: &str) -> Vec<u8> {
    let p = tdx_dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read vector {}: {e}", p.display()))
}

/// RTMR0..3 of a quote, from the workspace's quote parser.
fn quote_rtmrs(bytes: &[u8]) -> [Measurement; 4] {
    let (q, _) = Quote::parse_prefix(bytes).expect("quote parses");
    q.td_report()
        .expect("TDX quote")
        .rtmrs()
        .map(|r| Measurement(*r))
}

/// RTMR0..3 as the manifest lists them for a file.
fn manifest_rtmrs(path: &str, fields: &str) -> [String; 4] {
    let m = cocoon_tests::manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("no manifest entry {path}"));
    let f = e["expected"]
        .pointer(fields)
        .unwrap_or_else(|| panic!("{path}: no {fields}"));
    [0, 1, 2, 3].map(|i| f[format!("rtmr{i}")].as_str().unwrap().to_string())
}

#[test]
fn ccel_replay_reproduces_the_cos_quote() {
    let log = EventLog::parse_ccel(
        &read("gtg-ccel/ccel_table.dat"),
        &read("gtg-ccel/ccel_data.dat"),
    )
    .unwrap();
    let replay = log.replay();
    assert_eq!(replay, quote_rtmrs(&read("gtg-ccel/cos-113-tdx-quote.dat")));
    let want = manifest_rtmrs("measure/tdx/gtg-ccel/cos-113-tdx-quote.dat", "/fields/body");
    assert_eq!(replay.map(|r| r.to_string()), want);
    let checks = log.check_digests();
    assert!(!checks.contains(&DigestCheck::Mismatch));
    assert!(
        checks
            .iter()
            .filter(|c| **c == DigestCheck::Matches)
            .count()
            >= 10
    );
}

#[test]
fn damaged_ccel_inputs_fail_or_stop_matching() {
    let table = read("gtg-ccel/ccel_table.dat");
    let data = read("gtg-ccel/ccel_data.dat");
    let quote = quote_rtmrs(&read("gtg-ccel/cos-113-tdx-quote.dat"));

    let mut t = table.clone();
    t[45] ^= 1; // LAML
    assert!(matches!(
        EventLog::parse_ccel(&t, &data),
        Err(EventLogError::CcelTable(_))
    ));
    assert!(matches!(
        EventLog::parse_ccel(&table, &data[..data.len() - 1]),
        Err(EventLogError::TruncatedArea { .. })
    ));
    assert!(matches!(
        EventLog::parse_ccel(&table[..40], &data),
        Err(EventLogError::CcelTable(_))
    ));

    // Flip one bit in each of the first records' SHA-384 digests: the
    // replay no longer matches the quote.
    let clean = EventLog::parse_ccel(&table, &data).unwrap();
    let spec_len = 32 + u32::from_le_bytes(data[28..32].try_into().unwrap()) as usize;
    let mut at = spec_len;
    for e in clean.events.iter().take(12) {
        let digest_at = at + 12 + 2;
        let mut d = data.clone();
        d[digest_at + 5] ^= 0x10;
        // A digest is opaque to the parser: the log still reads.
        let l = EventLog::parse_ccel(&table, &d).unwrap();
        assert_ne!(
            l.replay(),
            quote,
            "digest flip at {digest_at} went unnoticed"
        );
        at = digest_at + 48 + 4 + e.data.len();
    }
    // A cut record is an error, not a shorter log.
    let mut d = data.clone();
    d[spec_len + 8] = 9; // digest count of record 1
    assert!(EventLog::parse_ccel(&table, &d).is_err());
}

fn dstack_report() -> (EventLog, Vec<u8>) {
    let doc: Value =
        serde_json::from_slice(&read("dstack-quote-report/quote-report.json")).unwrap();
    let log = EventLog::parse_dstack_json(doc["event_log"].as_str().unwrap()).unwrap();
    let quote = hex::decode(doc["quote"].as_str().unwrap()).unwrap();
    (log, quote)
}

#[test]
fn dstack_event_log_replay_reproduces_its_quote() {
    let (log, quote) = dstack_report();
    let replay = log.replay();
    assert_eq!(replay, quote_rtmrs(&quote));
    let want = manifest_rtmrs(
        "measure/tdx/dstack-quote-report/quote-report.json",
        "/fields_of_embedded_quote",
    );
    assert_eq!(replay.map(|r| r.to_string()), want);
    // Every runtime (RTMR3) event's digest is dstack's hash of its name and
    // payload; no event's digest contradicts its data.
    let checks = log.check_digests();
    assert!(!checks.contains(&DigestCheck::Mismatch));
    for (e, c) in log.events.iter().zip(&checks) {
        if e.rtmr == Some(3) {
            assert_eq!(*c, DigestCheck::Matches, "{}", e.name);
        }
    }
    // Dropping an event breaks the match.
    let mut cut = log.clone();
    cut.events.remove(5);
    assert_ne!(cut.replay(), replay);
}

/// The event sequence `direct_boot` computes RTMR1/RTMR2 from is the one a
/// real TDVF direct boot (dstack) logged: the fixed events have the logged
/// digests, and with the logged kernel and load-option digests the
/// composition gives the quote's RTMR1 and RTMR2. (The kernel and command
/// line themselves are not in the vector, so their digests are not checked.)
#[test]
fn direct_boot_event_structure_matches_the_dstack_log() {
    let (log, quote) = dstack_report();
    let q = quote_rtmrs(&quote);
    let rtmr1: Vec<_> = log.events.iter().filter(|e| e.rtmr == Some(1)).collect();
    assert_eq!(rtmr1.len(), 5);
    assert_eq!(rtmr1[0].event_type, EV_EFI_BOOT_SERVICES_APPLICATION);
    let ours = rtmr1_events(rtmr1[0].digest);
    for (i, e) in rtmr1.iter().enumerate() {
        assert_eq!(ours[i], e.digest, "RTMR1 event {i}");
    }
    assert_eq!(rtmr1_from_kernel_digest(rtmr1[0].digest), q[1]);

    let rtmr2: Vec<_> = log.events.iter().filter(|e| e.rtmr == Some(2)).collect();
    assert_eq!(rtmr2.len(), 2);
    assert!(rtmr2.iter().all(|e| e.event_type == EV_EVENT_TAG));
    assert!(String::from_utf8_lossy(&rtmr2[0].data).contains("LOADED_IMAGE::LoadOptions"));
    assert!(String::from_utf8_lossy(&rtmr2[1].data).contains("Linux initrd"));
    assert_eq!(
        rtmr2_from_digests(rtmr2[0].digest, Some(rtmr2[1].digest)),
        q[2]
    );
    // Not the digest of an empty command line.
    assert_ne!(load_options_digest("", true), rtmr2[0].digest);
}

/// The OVMF suffix files carry a TDVF metadata table: it parses, and the
/// MRTD is refused because the sections' raw data lie outside a 4 KiB file.
#[test]
fn tdvf_metadata_of_the_ovmf_suffix_files() {
    for name in ["ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin"] {
        let image =
            std::fs::read(cocoon_tests::vectors_dir().join("measure/snp").join(name)).unwrap();
        let err = TdvfMetadata::from_image(&image).unwrap_err();
        assert!(
            matches!(&err, TdvfError::BadSection { index: 0, reason } if reason.contains("outside")),
            "{name}: {err}"
        );
        // Padded in front to the size the sections expect (4 MiB ending at
        // 4 GiB), the metadata reads as the edk2 layout: BFV (MR.EXTEND),
        // CFV, TempMem, TempMem, TD_HOB, TempMem.
        let mut full = vec![0u8; 0x400000 - image.len()];
        full.extend_from_slice(&image);
        let meta = TdvfMetadata::from_image(&full).unwrap();
        let kinds: Vec<_> = meta.sections.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                TdvfSectionType::Bfv,
                TdvfSectionType::Cfv,
                TdvfSectionType::TempMem,
                TdvfSectionType::TempMem,
                TdvfSectionType::TdHob,
                TdvfSectionType::TempMem
            ],
            "{name}"
        );
        assert_eq!(meta.sections[0].attributes, ATTR_MR_EXTEND);
        assert_eq!(meta.sections[0].memory_address, 0xffc8_4000);
        assert_eq!(meta.sections[4].memory_address, 0x80_9000);
    }
}
