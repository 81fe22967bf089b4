//! Fuzz target `settlement`: see [`cocoon_fuzz::settlement`] for what it
//! feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::settlement(data));
