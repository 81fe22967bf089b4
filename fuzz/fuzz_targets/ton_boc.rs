//! Fuzz target `ton_boc`: see [`cocoon_fuzz::ton_boc`] for what it feeds
//! where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::ton_boc(data));
