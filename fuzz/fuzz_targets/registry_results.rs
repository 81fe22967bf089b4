//! Fuzz target `registry_results`: see [`cocoon_fuzz::registry_results`]
//! for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::registry_results(data));
