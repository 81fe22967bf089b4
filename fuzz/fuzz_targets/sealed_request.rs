//! Fuzz target `sealed_request`: see [`cocoon_fuzz::sealed_request`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::sealed_request(data));
