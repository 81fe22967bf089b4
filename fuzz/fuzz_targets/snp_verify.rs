//! Fuzz target `snp_verify`: see [`cocoon_fuzz::snp_verify`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::snp_verify(data));
