//! Fuzz target `snp_cert_table`: see [`cocoon_fuzz::snp_cert_table`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::snp_cert_table(data));
