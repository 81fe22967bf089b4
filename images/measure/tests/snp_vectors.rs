//! SEV-SNP (and SEV / SEV-ES) launch digests against the shared vectors:
//! every case of `measure/snp/sev_snp_measure_cases.json`, the dstack Milan
//! case (whose digest is also the MEASUREMENT of a real, signed report),
//! and bit flips in the OVMF footer and metadata.

use std::path::PathBuf;

use cocoon_measure::cpu::vcpu_signature;
use cocoon_measure::ovmf::{
    OvmfLayout, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SEV_METADATA_GUID,
};
use cocoon_measure::sev_hashes::KernelHashes;
use cocoon_measure::snp::{
    launch_digest, ovmf_pages_digest, sev_launch_digest, FirmwareStart, SevEsVcpus, SevMode,
    SnpError, SnpLaunch,
};
use cocoon_measure::vmsa::VmmType;
use cocoon_measure::Measurement;
use serde_json::Value;

fn snp_dir() -> PathBuf {
    cocoon_tests::vectors_dir().join("measure/snp")
}

fn read(name: &str) -> Vec<u8> {
    let p = snp_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read vector {}: {e}", p.display()))
}

fn cases() -> Vec<Value> {
    let doc: Value =
        serde_json::from_slice(&read("sev_snp_measure_cases.json")).expect("cases JSON");
    doc["cases"].as_array().expect("cases list").clone()
}

/// A case's file input: null = not given, "empty file (0 bytes)" = empty.
fn file_input(v: &Value, what: &str) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::String(s) if s == "empty file (0 bytes)" => Some(Vec::new()),
        other => panic!("{what}: unexpected case input {other}"),
    }
}

fn vmm(v: &Value) -> VmmType {
    VmmType::from_name(v.as_str().expect("vmm_type")).expect("known vmm_type")
}

fn hex_u64(v: &Value) -> u64 {
    let s = v.as_str().expect("hex string");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex number")
}

/// Run one case; `Ok(hex digest)` or the error.
fn run_case(c: &Value) -> Result<String, SnpError> {
    let image = read(c["ovmf_file"].as_str().expect("ovmf_file"));
    let layout = OvmfLayout::from_image(&image)?;
    let kernel = file_input(&c["kernel"], "kernel");
    let initrd = file_input(&c["initrd"], "initrd");
    let append = c["append"].as_str().filter(|s| !s.is_empty());
    let hashes = kernel
        .as_deref()
        .map(|k| KernelHashes::from_contents(k, initrd.as_deref(), append));
    let vcpu_type = c["vcpu_type"].as_str().expect("vcpu_type");
    let sig = vcpu_signature(vcpu_type).expect("known vCPU type");
    if let Some(s) = c.get("vcpu_sig") {
        assert_eq!(
            u64::from(sig),
            hex_u64(s),
            "{}: CPUID signature of {vcpu_type}",
            c["name"]
        );
    }
    let launch = SnpLaunch {
        vcpus: c["vcpus"].as_u64().expect("vcpus") as u32,
        vcpu_signature: sig,
        guest_features: hex_u64(&c["guest_features"]),
        vmm: vmm(&c["vmm_type"]),
        kernel: hashes,
    };
    let start = match c.get("ovmf_hash").and_then(Value::as_str) {
        Some(h) => FirmwareStart::Precomputed(Measurement::from_hex(h).expect("ovmf_hash")),
        None => FirmwareStart::Image(&image),
    };
    match c["mode"].as_str() {
        Some("SEV_SNP") => launch_digest(start, &layout, &launch).map(|d| d.to_string()),
        Some("SEV") | Some("SEV_ES") => {
            let mode = if c["mode"] == "SEV" {
                SevMode::Sev
            } else {
                SevMode::SevEs
            };
            let v = SevEsVcpus {
                vcpus: launch.vcpus,
                vcpu_signature: sig,
                vmm: launch.vmm,
            };
            sev_launch_digest(mode, &image, &layout, launch.kernel.as_ref(), v).map(hex::encode)
        }
        other => panic!("{}: unknown mode {other:?}", c["name"]),
    }
}

#[test]
fn every_case_of_the_vector_file() {
    let cases = cases();
    let (mut computed, mut refused) = (0, 0);
    for c in &cases {
        let name = c["name"].as_str().expect("name");
        match (c.get("expected_launch_digest"), c.get("expected_error")) {
            (Some(want), None) => {
                let got = run_case(c).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got, want.as_str().expect("hex"), "{name}");
                computed += 1;
            }
            (None, Some(msg)) => {
                let err = run_case(c).expect_err(name);
                // The only must-fail kind in the file: a kernel with an OVMF
                // that has no SNP_KERNEL_HASHES section.
                assert!(
                    msg.as_str().expect("message").contains("SNP_KERNEL_HASHES"),
                    "{name}: a new kind of must-fail case: {msg}"
                );
                assert_eq!(err, SnpError::KernelWithoutHashesSection, "{name}");
                assert!(err.to_string().contains("SNP_KERNEL_HASHES"), "{err}");
                refused += 1;
            }
            _ => panic!("{name}: neither expected_launch_digest nor expected_error"),
        }
    }
    assert_eq!(computed + refused, cases.len());
    assert!(
        computed >= 12 && refused >= 1,
        "{computed} computed, {refused} refused"
    );
}

#[test]
fn ovmf_pages_digest_is_the_cases_ovmf_hash() {
    // The precomputed `ovmf_hash` of the cases is the digest of the suffix
    // file's page (upstream test_snp_ovmf_hash_full_default asserts it too).
    let image = read("ovmf_AmdSev_suffix.bin");
    let want = cases()
        .iter()
        .find_map(|c| {
            c.get("ovmf_hash")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .expect("a case with ovmf_hash");
    assert_eq!(ovmf_pages_digest(&image).unwrap().to_string(), want);
}

/// The dstack document: the OVMF layout without the image, digests of kernel
/// and initrd, and the command line.
#[test]
fn dstack_milan_case_gives_the_reports_measurement() {
    let text = String::from_utf8(read("dstack_milan_measurement_input.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let layout = OvmfLayout::from_json(&text).unwrap();
    let hashes = KernelHashes {
        kernel: cocoon_measure::parse_hex(doc["kernel_hash"].as_str().unwrap()).unwrap(),
        initrd: cocoon_measure::parse_hex(doc["initrd_hash"].as_str().unwrap()).unwrap(),
        cmdline: KernelHashes::cmdline_hash(Some(doc["base_cmdline"].as_str().unwrap().trim())),
    };
    let launch = SnpLaunch {
        vcpus: doc["vcpus"].as_u64().unwrap() as u32,
        vcpu_signature: vcpu_signature(doc["vcpu_type"].as_str().unwrap()).unwrap(),
        guest_features: doc["guest_features"].as_u64().unwrap(),
        vmm: VmmType::Qemu,
        kernel: Some(hashes),
    };
    let start = FirmwareStart::Precomputed(
        Measurement::from_hex(doc["ovmf_hash"].as_str().unwrap()).unwrap(),
    );
    let got = launch_digest(start, &layout, &launch).unwrap();

    let manifest = cocoon_tests::manifest();
    let entry = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "measure/snp/dstack_milan_measurement_input.json")
        .expect("manifest entry");
    assert_eq!(
        got.to_string(),
        entry["expected"]["expected_measurement"].as_str().unwrap()
    );

    // And it is the MEASUREMENT the AMD-signed report carries.
    let report = cocoon_tests::read_vector("snp/milan-v3-dstack/report.bin");
    let report = cocoon_attestation::snp::SnpReport::parse(&report).unwrap();
    assert_eq!(report.measurement(), got.as_bytes());
}

/// Figures from virtee/sev-snp-measure tests/test_guest.py (commit
/// 8f2b337e38bc83f87cd30f3253cdfe8e3e12cc3a) for modes the vector file does
/// not cover: GCE, SEV and SEV-ES, all with ovmf_AmdSev_suffix.bin and an
/// empty kernel and initrd.
#[test]
fn upstream_figures_for_gce_sev_and_sev_es() {
    let image = read("ovmf_AmdSev_suffix.bin");
    let layout = OvmfLayout::from_image(&image).unwrap();
    let empty = |append: Option<&str>| Some(KernelHashes::from_contents(b"", Some(b""), append));
    for (vcpus, want) in [
        (1, "5da7106cf14cf46b1725ebab123eb9e53bd46a1e9f400cd0c08e7827b04b688ea8b4e403c8404efed4397ea5d5d0722e"),
        (4, "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d"),
    ] {
        let l = SnpLaunch {
            vcpus,
            vcpu_signature: 0,
            guest_features: 1,
            vmm: VmmType::Gce,
            kernel: empty(None),
        };
        assert_eq!(launch_digest(FirmwareStart::Image(&image), &layout, &l).unwrap().to_string(), want);
    }
    let one = SevEsVcpus {
        vcpus: 1,
        vcpu_signature: 0x800f12,
        vmm: VmmType::Qemu,
    };
    let sev = |k: Option<KernelHashes>| {
        hex::encode(sev_launch_digest(SevMode::Sev, &image, &layout, k.as_ref(), one).unwrap())
    };
    assert_eq!(
        sev(empty(Some("console=ttyS0 loglevel=7"))),
        "82a3ee5d537c3620628270c292ae30cb40c3c878666a7890ee7ef2a08fb535ff"
    );
    assert_eq!(
        sev(Some(KernelHashes::from_contents(b"", None, None))),
        "77f613d7bbcdf12a73782ea9e88b0172aeda50d1a54201cb903594ff52846898"
    );
    let es = |vcpus| {
        let v = SevEsVcpus { vcpus, ..one };
        hex::encode(
            sev_launch_digest(SevMode::SevEs, &image, &layout, empty(None).as_ref(), v).unwrap(),
        )
    };
    assert_eq!(
        es(1),
        "13810ae661ea11e2bb205621f582fee268f0367c8f97bc297b7fadef3e12002c"
    );
    assert_eq!(
        es(4),
        "0dccbcaba8e90b261bd0d2e1863a2f9da714768b7b2a19363cd6ae35aa90de91"
    );

    // OvmfX64 has no hashes table: SEV and SEV-ES refuse a kernel.
    let x64 = read("ovmf_OvmfX64_suffix.bin");
    let x64_layout = OvmfLayout::from_image(&x64).unwrap();
    assert_eq!(
        sev_launch_digest(SevMode::SevEs, &x64, &x64_layout, empty(None).as_ref(), one),
        Err(SnpError::NoHashesTable)
    );
}

/// Byte ranges of the footer table entries: (GUID, start of the entry's
/// data, end of the entry including its trailer), and the table's extent.
fn footer_entries(image: &[u8]) -> (usize, Vec<([u8; 16], usize, usize)>) {
    let end = image.len() - 32 - 18;
    let table_len = u16::from_le_bytes([image[end], image[end + 1]]) as usize;
    let start = end + 18 - table_len;
    let mut at = end;
    let mut out = Vec::new();
    while at > start {
        let len = u16::from_le_bytes([image[at - 18], image[at - 17]]) as usize;
        let mut g = [0u8; 16];
        g.copy_from_slice(&image[at - 16..at]);
        out.push((g, at - len, at));
        at -= len;
    }
    (start, out)
}

/// Every bit flip in the footer table, the SEV metadata and the entries the
/// launch reads gives a clear error or a different digest — both when the
/// OVMF page is measured and when only its layout is used (precomputed
/// OVMF digest), where nothing else would catch a changed layout.
#[test]
fn bit_flips_in_footer_and_metadata_change_the_digest_or_fail() {
    let image = read("ovmf_AmdSev_suffix.bin");
    let (table_start, entries) = footer_entries(&image);
    let meta_entry = entries.iter().find(|e| e.0 == SEV_METADATA_GUID.0).unwrap();
    let meta_off =
        u32::from_le_bytes(image[meta_entry.1..meta_entry.1 + 4].try_into().unwrap()) as usize;
    let meta_start = image.len() - meta_off;
    let meta_len =
        u32::from_le_bytes(image[meta_start + 4..meta_start + 8].try_into().unwrap()) as usize;

    let launch = SnpLaunch {
        vcpus: 4,
        vcpu_signature: 0x800f12,
        guest_features: 0x21,
        vmm: VmmType::Qemu,
        kernel: Some(KernelHashes::from_contents(b"k", Some(b"i"), Some("c"))),
    };
    let seed = ovmf_pages_digest(&image).unwrap();
    let layout = OvmfLayout::from_image(&image).unwrap();
    let base_full = launch_digest(FirmwareStart::Image(&image), &layout, &launch).unwrap();
    let base_pre = launch_digest(FirmwareStart::Precomputed(seed), &layout, &launch).unwrap();
    assert_eq!(base_full, base_pre);

    // Bytes the layout uses: the footer, every entry's length, the SEV
    // metadata and the entries naming it, the SEV-ES reset block and the
    // hashes-table GPA. Not used: the entries it ignores (SEV secret block,
    // TDX metadata offset) apart from their lengths, and the size half of
    // the hashes-table entry.
    let used = |i: usize| {
        let in_entry = |g: [u8; 16], from: usize| {
            entries
                .iter()
                .any(|e| e.0 == g && (from..e.2).contains(&i) && i >= e.1)
        };
        (meta_start..meta_start + meta_len).contains(&i)
            || (image.len() - 32 - 18..image.len() - 32).contains(&i)
            // every entry's length field (it steers the walk)
            || entries.iter().any(|e| (e.2 - 18..e.2 - 16).contains(&i))
            || in_entry(SEV_METADATA_GUID.0, 0)
            || in_entry(SEV_ES_RESET_BLOCK_GUID.0, 0)
            || entries
                .iter()
                .any(|e| e.0 == SEV_HASH_TABLE_RV_GUID.0 && (e.1..e.1 + 4).contains(&i))
    };

    let mut checked = 0;
    for i in (table_start..image.len() - 32).chain(meta_start..meta_start + meta_len) {
        for bit in 0..8 {
            let mut img = image.clone();
            img[i] ^= 1 << bit;
            // A layout byte must change the digest even when the OVMF page
            // itself is not re-measured; any other byte changes the page.
            let start = if used(i) {
                checked += 1;
                FirmwareStart::Precomputed(seed)
            } else {
                FirmwareStart::Image(&img)
            };
            let parsed = OvmfLayout::from_image(&img);
            if let Ok(l) = &parsed {
                // A flipped size can ask for gigabytes of zero pages: a
                // longer record chain, so a different digest; not computed.
                if l.sections.iter().map(|s| s.size).sum::<u64>() > 64 << 20 {
                    assert_ne!(l, &layout, "byte {i:#x} bit {bit}");
                    continue;
                }
            }
            let got = parsed
                .map_err(SnpError::from)
                .and_then(|l| launch_digest(start, &l, &launch));
            assert_ne!(
                got.as_ref().ok(),
                Some(&base_full),
                "byte {i:#x} bit {bit}: same digest"
            );
        }
    }
    assert!(
        checked > 8 * 150,
        "only {checked} flips of layout bytes checked"
    );
}
