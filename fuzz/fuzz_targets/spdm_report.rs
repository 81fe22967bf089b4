//! Fuzz target `spdm_report`: see [`cocoon_fuzz::spdm_report`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::spdm_report(data));
