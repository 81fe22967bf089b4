//! Fuzz target `local_auth`: see [`cocoon_fuzz::local_auth`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::local_auth(data));
