//! Fuzz target `tdx_quote`: see [`cocoon_fuzz::tdx_quote`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::tdx_quote(data));
