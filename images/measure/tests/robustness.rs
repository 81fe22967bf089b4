//! Untrusted inputs never panic: truncations and pseudo-random byte flips of
//! the real vectors through every parser give a value or a typed error.

use cocoon_measure::eventlog::EventLog;
use cocoon_measure::ovmf::OvmfLayout;
use cocoon_measure::pe::authenticode_sha384;
use cocoon_measure::tdvf::TdvfMetadata;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn vector(rel: &str) -> Vec<u8> {
    cocoon_tests::read_vector(rel)
}

/// `rounds` copies of `base` (keep it small), each with 1..=4 random bytes
/// overwritten inside `range`.
fn mutants(base: &[u8], range: std::ops::Range<usize>, rounds: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..rounds)
        .map(|_| {
            let mut m = base.to_vec();
            for _ in 0..=rng.below(4) {
                let at = range.start + rng.below(range.len());
                m[at] = rng.next() as u8;
            }
            m
        })
        .collect()
}

#[test]
fn firmware_parsers_survive_damage() {
    let suffix = vector("measure/snp/ovmf_AmdSev_suffix.bin");
    for cut in 0..suffix.len() {
        let _ = OvmfLayout::from_image(&suffix[..cut]);
        let _ = TdvfMetadata::from_image(&suffix[..cut]);
    }
    // The suffix placed at the end of a 4 MiB image, so that TDVF sections
    // fit; one buffer, its tail overwritten with each mutant.
    let mut full = vec![0u8; 0x400000];
    let tail = full.len() - suffix.len();
    full[tail..].copy_from_slice(&suffix);
    let base = TdvfMetadata::from_image(&full).unwrap();
    for m in mutants(&suffix, 0..suffix.len(), 2000, 0x5eed) {
        let _ = OvmfLayout::from_image(&m);
        full[tail..].copy_from_slice(&m);
        match TdvfMetadata::from_image(&full) {
            // Changed sections that pass validation are computable (the
            // small ones: a flipped size can ask for gigabytes of pages).
            Ok(meta)
                if meta != base
                    && meta
                        .sections
                        .iter()
                        .map(|s| s.memory_data_size)
                        .sum::<u64>()
                        < 64 << 20 =>
            {
                let _ = cocoon_measure::tdvf::mrtd(
                    &full,
                    &meta,
                    cocoon_measure::tdvf::PageAddOrder::TwoPass,
                );
            }
            _ => {}
        }
    }
}

#[test]
fn event_log_parsers_survive_damage() {
    let data = vector("measure/tdx/gtg-ccel/ccel_data.dat");
    let used = 18_200; // the log proper ends near byte 18101
    for cut in (0..used).step_by(7) {
        let _ = EventLog::parse_tcg(&data[..cut]);
    }
    for m in mutants(&data[..used], 0..used, 3000, 0xcce1) {
        if let Ok(l) = EventLog::parse_tcg(&m) {
            let _ = l.replay();
            let _ = l.check_digests();
        }
    }
    let table = vector("measure/tdx/gtg-ccel/ccel_table.dat");
    for m in mutants(&table, 0..table.len(), 500, 7) {
        let _ = EventLog::parse_ccel(&m, &data);
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&vector("measure/tdx/dstack-quote-report/quote-report.json"))
            .unwrap();
    let text = doc["event_log"].as_str().unwrap();
    for cut in (0..text.len()).step_by(13) {
        if text.is_char_boundary(cut) {
            let _ = EventLog::parse_dstack_json(&text[..cut]);
        }
    }
}

#[test]
fn pe_hash_survives_damage() {
    // The quote is not a PE; neither is anything cut from it.
    let q = vector("measure/tdx/gtg-ccel/cos-113-tdx-quote.dat");
    let mut pe = b"MZ".to_vec();
    pe.extend_from_slice(&q[2..]);
    for m in mutants(&pe, 0..512, 2000, 0x9e) {
        let _ = authenticode_sha384(&m);
    }
}
