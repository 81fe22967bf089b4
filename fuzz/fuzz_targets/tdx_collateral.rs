//! Fuzz target `tdx_collateral`: see [`cocoon_fuzz::tdx_collateral`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::tdx_collateral(data));
